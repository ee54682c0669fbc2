#!/bin/sh
# Slurm Prolog (slurmd runs it as root on each node of a job before the job starts): a lease of
# the mode the job asks for in its comment, on behalf of the job's user and judged by that
# user's [[access]] rule (overcommitctl lease --for-uid), tagged slurm-$SLURM_JOB_ID, for the
# job's time limit plus a grace. epilog.sh releases it; the TTL ends it if the epilog never
# runs. A lease is node-wide: see OVERCOMMIT_EXCLUSIVE_ONLY in /etc/default/overcommit, and the
# job scope (task_prolog.sh), which changes nothing on the node.
#
# slurm.conf:   Prolog=/usr/share/overcommit/contrib/slurm/prolog.sh
#               Epilog=/usr/share/overcommit/contrib/slurm/epilog.sh
# A job asks:   sbatch --comment="overcommit=always" job.sh   (one word among others)
# Settings:     /etc/default/overcommit (OVERCOMMIT_SLURM_CONF names another file)
#
# A prolog that fails drains the node, so this one always exits 0: problems are logged.

HOOK=prolog
# (A `.` of a missing file would end the shell with an error: looked at first.)
if [ ! -r "${0%/*}/hooks.sh" ]; then
    logger -t overcommit-prolog "${0%/*}/hooks.sh is missing: nothing done" 2>/dev/null
    exit 0
fi
# shellcheck source=contrib/slurm/hooks.sh
. "${0%/*}/hooks.sh"

main() {
    case ${SLURM_JOB_ID:-} in '' | *[!0-9]*) return 0 ;; esac
    case ${SLURM_JOB_UID:-} in
        '' | *[!0-9]*) log "no SLURM_JOB_UID: no lease"; return 0 ;;
    esac

    # The comment, word by word: the last overcommit=MODE wins.
    mode=
    for word in ${SLURM_JOB_COMMENT:-}; do
        case $word in
            overcommit=always | overcommit=heuristic | overcommit=never) mode=${word#overcommit=} ;;
            overcommit=job) ;; # the job scope: task_prolog.sh
            overcommit=*) log "ignored comment word '$word' (overcommit=always, heuristic or never)" ;;
        esac
    done
    mode=${mode:-$OVERCOMMIT_DEFAULT_MODE}
    [ -n "$mode" ] || return 0

    # Only now ask Slurm (one squeue, bounded): the time limit and whether the job shares
    # its nodes. squeue's format prints these fields alone, whatever the job's name holds.
    limit=UNLIMITED
    if info=$(timeout -k 1 "$OVERCOMMIT_SLURM_TIMEOUT" "$SQUEUE" -h -j "$SLURM_JOB_ID" -o '%l %h' 2>&1); then
        set -- $info
        limit=${1:-UNLIMITED}
        shares=${2:-}
    else
        log "squeue failed ($info): the time limit is unknown"
        shares=unknown
    fi
    case $OVERCOMMIT_EXCLUSIVE_ONLY in
        yes | true | 1)
            if [ "$shares" != NO ]; then
                log "no lease: the job may share its nodes (OverSubscribe=$shares) and OVERCOMMIT_EXCLUSIVE_ONLY=$OVERCOMMIT_EXCLUSIVE_ONLY"
                return 0
            fi
            ;;
    esac

    if out=$("$OVERCOMMITCTL" --timeout "$OVERCOMMIT_TIMEOUT" lease --mode "$mode" \
        --for-uid "$SLURM_JOB_UID" --ttl-slurm "$limit" --ttl-grace "$OVERCOMMIT_TTL_GRACE" \
        --tag "slurm-$SLURM_JOB_ID" --reason "slurm job $SLURM_JOB_ID" 2>&1); then
        log "lease ($mode, time limit $limit, for uid $SLURM_JOB_UID): $(echo "$out" | tail -n 1)"
    else
        log "no lease ($mode for uid $SLURM_JOB_UID): $out"
    fi
}

main
exit 0
