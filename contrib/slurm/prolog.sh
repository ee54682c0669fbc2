#!/bin/sh
# Slurm Prolog (runs as root on each node of a job, before the job starts): takes an
# overcommit lease for jobs that ask for one, tagged slurm-$SLURM_JOB_ID, for at most the
# job's time limit. epilog.sh releases it; the TTL ends it even if the epilog never runs.
#
# slurm.conf:   Prolog=/usr/share/overcommit/contrib/slurm/prolog.sh
#               Epilog=/usr/share/overcommit/contrib/slurm/epilog.sh
# A job asks with its comment:   sbatch --comment=overcommit=always job.sh
# (or set OVERCOMMIT_DEFAULT_MODE=always below to lease for every job on these nodes).
#
# A failing prolog drains the node in Slurm, so this script never fails: problems are logged.

OVERCOMMIT_DEFAULT_MODE=${OVERCOMMIT_DEFAULT_MODE:-}
# Used when the job has no time limit (e.g. UNLIMITED).
OVERCOMMIT_MAX_TTL=${OVERCOMMIT_MAX_TTL:-7d}

log() { logger -t overcommit-prolog "job $SLURM_JOB_ID: $*" 2>/dev/null || true; }

[ -n "$SLURM_JOB_ID" ] || exit 0
job=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null)

mode=$(printf '%s\n' "$job" | sed -n 's/.*Comment=[^ ]*overcommit=\(always\|heuristic\|never\).*/\1/p' | head -n 1)
mode=${mode:-$OVERCOMMIT_DEFAULT_MODE}
[ -n "$mode" ] || exit 0

# TimeLimit=[days-]hours:minutes:seconds, or UNLIMITED / Partition_Limit.
limit=$(printf '%s\n' "$job" | sed -n 's/.*TimeLimit=\([0-9:-]*\).*/\1/p' | head -n 1)
ttl=$OVERCOMMIT_MAX_TTL
if [ -n "$limit" ]; then
    days=0
    case $limit in *-*) days=${limit%%-*}; limit=${limit#*-} ;; esac
    IFS=: read -r h m s <<EOT
$limit
EOT
    # Plus ten minutes for the epilog to run.
    ttl="$(( days * 86400 + ${h:-0} * 3600 + ${m:-0} * 60 + ${s:-0} + 600 ))s"
fi

if out=$(overcommitctl lease --mode "$mode" --ttl "$ttl" --tag "slurm-$SLURM_JOB_ID" \
        --reason "slurm job $SLURM_JOB_ID of uid ${SLURM_JOB_UID:-?}" 2>&1); then
    log "lease $out ($mode, ttl $ttl)"
else
    log "no lease: $out"
fi
exit 0
