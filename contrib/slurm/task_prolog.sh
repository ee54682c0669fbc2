#!/bin/sh
# Slurm TaskProlog: overcommit's job scope for the jobs that ask for it. Slurm runs it as the
# job's user before each task, with the task's environment, and puts every
# `export NAME=value` line it prints into the task's environment. With
# LD_PRELOAD=libovercommit_preload.so the task's large allocations are mapped with
# MAP_NORESERVE: that job overcommits (kernel modes 0 and 1) while every other job on a shared
# node keeps the node's policy. Nothing runs as root, no lease is taken, the node is never
# changed. (prolog.sh/epilog.sh take a node-wide lease instead; see the README.)
#
# slurm.conf:   TaskProlog=/usr/share/overcommit/contrib/slurm/task_prolog.sh
# A job asks with its comment:    sbatch --comment=overcommit=job job.sh
# or with its environment:        OVERCOMMIT_SCOPE=job sbatch job.sh
# The threshold is the library's default (half of MemTotal + SwapTotal) unless the job
# exports OVERCOMMIT_MIN_SIZE (bytes).
#
# It never fails a task: a problem becomes a line in the job's output (`print ...`).

LIBRARY=${OVERCOMMIT_PRELOAD_LIBRARY:-/usr/lib/overcommit/libovercommit_preload.so}
PROC=${OVERCOMMIT_PROC_ROOT:-/proc}

scope=${OVERCOMMIT_SCOPE:-}
if [ -z "$scope" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    scope=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null \
        | sed -n 's/.*Comment=[^ ]*overcommit=\(job\).*/\1/p' | head -n 1)
fi
[ "$scope" = job ] || exit 0

host=$(hostname 2>/dev/null)
if [ ! -r "$LIBRARY" ]; then
    echo "print overcommit: the job scope was asked for, but $LIBRARY is missing on $host"
    exit 0
fi
if [ "$(cat "$PROC/sys/vm/overcommit_memory" 2>/dev/null)" = 2 ]; then
    echo "print overcommit: the job scope has no effect on $host: the kernel is in mode never (2), which ignores MAP_NORESERVE"
    exit 0
fi
case " ${LD_PRELOAD:-} " in
    *" $LIBRARY "*) ;;
    *) echo "export LD_PRELOAD=$LIBRARY${LD_PRELOAD:+ $LD_PRELOAD}" ;;
esac
exit 0
