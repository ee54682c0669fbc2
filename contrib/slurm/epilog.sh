#!/bin/sh
# Slurm Epilog (slurmd runs it as root on each node after the job): removes the job scope's
# marker, if prolog.sh wrote one, and releases the job's lease, if prolog.sh took one.
# Settings: /etc/default/overcommit (see prolog.sh). A failing epilog drains the node, so this
# one always exits 0: problems are logged. A lease it could not release ends at its TTL (the
# job's time limit plus a grace); a marker it could not remove, at the next reboot (/run).

HOOK=epilog
# (A `.` of a missing file would end the shell with an error: looked at first.)
if [ ! -r "${0%/*}/hooks.sh" ]; then
    logger -t overcommit-epilog "${0%/*}/hooks.sh is missing: nothing done" 2>/dev/null
    exit 0
fi
# shellcheck source=contrib/slurm/hooks.sh
. "${0%/*}/hooks.sh"

main() {
    marker=$(job_scope_marker) || return 0
    if [ -e "$marker" ]; then
        if err=$(rm -f "$marker" 2>&1); then
            log "removed the job scope's marker"
        else
            log "cannot remove $marker: $err"
        fi
    fi
    out=$("$OVERCOMMITCTL" --timeout "$OVERCOMMIT_TIMEOUT" --json release --tag "slurm-$SLURM_JOB_ID" 2>&1)
    case $? in
        0) log "released: $out" ;;
        # No lease with this tag: the job had none.
        1) case $out in *'"not_found"'*) ;; *) log "release failed: $out" ;; esac ;;
        *) log "release failed (its TTL will end it): $out" ;;
    esac
}

main
exit 0
