#!/bin/sh
# Slurm Prolog (slurmd runs it as root on each node of a job before the job starts): a lease of
# the mode the job asks for in its comment, on behalf of the job's user and judged by that
# user's [[access]] rule (overcommitctl lease --for-uid), tagged slurm-$SLURM_JOB_ID, for the
# job's time limit plus a grace. epilog.sh releases it; the TTL ends it if the epilog never
# runs. A lease is node-wide: see OVERCOMMIT_EXCLUSIVE_ONLY in /etc/default/overcommit, and the
# job scope (task_prolog.sh), which changes nothing on the node.
#
# For a job whose comment holds overcommit=job, it also writes the marker task_prolog.sh looks
# for (the TaskProlog runs as the user, without the comment): $OVERCOMMIT_SLURM_STATE/job-ID,
# 0644, in a root-owned directory it creates 0755. The words are independent: a job may ask for
# both, e.g. on a node whose baseline is mode 2 (where the job scope has no effect),
# `overcommit=heuristic overcommit=job` leases mode 0 and lets the job's large allocations
# overcommit in it. (Under a lease of mode 1, the job scope adds nothing.)
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

# mark_job_scope MARKER: writes the job scope's marker atomically (a temporary file renamed
# over it), in OVERCOMMIT_SLURM_STATE, created 0755 when missing (not its parents). A directory
# root does not own, or that others may write, is refused: root would write through their
# links, and their files would be markers.
mark_job_scope() {
    dir=$OVERCOMMIT_SLURM_STATE
    case $dir in
        /*) ;;
        *) log "OVERCOMMIT_SLURM_STATE=$dir is not an absolute path: no job scope"; return 0 ;;
    esac
    [ -d "$dir" ] || mkdir -m 0755 "$dir" 2>/dev/null
    if [ -z "$(find "$dir" -maxdepth 0 -type d -user 0 ! -perm /022 2>/dev/null)" ]; then
        log "$dir is not a directory of root's that only root may write: no job scope"
        return 0
    fi
    if ! err=$( {
        tmp=$(mktemp "$dir/.job-$SLURM_JOB_ID.XXXXXX") || exit 1
        { echo "overcommit=job uid=${SLURM_JOB_UID:-?}" >"$tmp" && chmod 0644 "$tmp" &&
            mv -f "$tmp" "$1"; } || { rm -f "$tmp"; exit 1; }
    } 2>&1); then
        log "cannot write $1 ($err): no job scope"
    fi
    return 0
}

main() {
    marker=$(job_scope_marker) || return 0

    # The comment, word by word: the last overcommit=MODE wins; overcommit=job, anywhere,
    # asks for the job scope as well.
    mode='' scope=
    for word in ${SLURM_JOB_COMMENT:-}; do
        case $word in
            overcommit=always | overcommit=heuristic | overcommit=never) mode=${word#overcommit=} ;;
            overcommit=job) scope=job ;;
            overcommit=*) log "ignored comment word '$word' (overcommit=always, heuristic, never or job)" ;;
        esac
    done
    if [ "$scope" = job ]; then
        mark_job_scope "$marker"
    else
        # One left by a job of the same id whose epilog never ran (job ids start again when
        # slurmctld loses its state).
        rm -f "$marker" 2>/dev/null
    fi

    mode=${mode:-$OVERCOMMIT_DEFAULT_MODE}
    [ -n "$mode" ] || return 0
    case ${SLURM_JOB_UID:-} in
        '' | *[!0-9]*) log "no SLURM_JOB_UID: no lease"; return 0 ;;
    esac

    # Only now ask Slurm (one squeue, bounded): the time limit and whether the job shares
    # its nodes. squeue's format prints these fields alone, whatever the job's name holds.
    limit=UNLIMITED
    if info=$(timeout -k 1 "$OVERCOMMIT_SLURM_TIMEOUT" "$SQUEUE" -h -j "$SLURM_JOB_ID" -o '%l %h' 2>&1); then
        # shellcheck disable=SC2086 # split on purpose: two fields
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
