#!/bin/sh
# Slurm Epilog (slurmd runs it as root on each node after the job): releases the job's lease,
# if prolog.sh took one. Settings: /etc/default/overcommit (see prolog.sh). A failing epilog
# drains the node, so this one always exits 0: problems are logged. A lease it could not
# release ends at its TTL (the job's time limit plus a grace).

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
IFS='
	 '
set -f

OVERCOMMIT_TIMEOUT=3s
OVERCOMMITCTL=/usr/bin/overcommitctl
OVERCOMMIT_SLURM_LOG=
conf=${OVERCOMMIT_SLURM_CONF:-/etc/default/overcommit}
# shellcheck disable=SC1090
[ -r "$conf" ] && . "$conf"

log() {
    logger -t overcommit-epilog "job ${SLURM_JOB_ID:-?}: $*" 2>/dev/null
    [ -n "$OVERCOMMIT_SLURM_LOG" ] &&
        echo "$(date '+%F %T') epilog job ${SLURM_JOB_ID:-?}: $*" >>"$OVERCOMMIT_SLURM_LOG" 2>/dev/null
    return 0
}

main() {
    case ${SLURM_JOB_ID:-} in '' | *[!0-9]*) return 0 ;; esac
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
