#!/bin/sh
# Slurm Epilog (runs as root on each node after the job): releases the job's overcommit
# lease, if prolog.sh took one. Never fails (a failing epilog drains the node).
[ -n "$SLURM_JOB_ID" ] || exit 0
out=$(overcommitctl release --tag "slurm-$SLURM_JOB_ID" 2>&1)
case $? in
    0) logger -t overcommit-epilog "job $SLURM_JOB_ID: $out" 2>/dev/null ;;
    1) ;; # no lease for this job: nothing to do
    *) logger -t overcommit-epilog "job $SLURM_JOB_ID: $out" 2>/dev/null ;;
esac
exit 0
