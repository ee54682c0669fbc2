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
#               Prolog=/usr/share/overcommit/contrib/slurm/prolog.sh
#               Epilog=/usr/share/overcommit/contrib/slurm/epilog.sh
# A job asks with its comment:    sbatch --comment="project42 overcommit=job" job.sh
# or with its environment:        OVERCOMMIT_SCOPE=job sbatch job.sh
# The environment decides when it names a scope (OVERCOMMIT_SCOPE=node: no job scope). Else
# the comment does, through the marker prolog.sh writes for the job
# ($OVERCOMMIT_SLURM_STATE/job-$SLURM_JOB_ID; the TaskProlog's environment has no comment),
# else through SLURM_JOB_COMMENT where the environment has it. No Slurm command is run: one
# per task would load slurmctld. Settings: /etc/default/overcommit, read as the job's user.
# The threshold is the library's default (half of MemTotal + SwapTotal) unless the job
# exports OVERCOMMIT_MIN_SIZE (bytes).
#
# It never fails a task: a problem becomes a line in the job's output (`print ...`) and in
# syslog (tag overcommit-task-prolog).

HOOK=task-prolog
# (A `.` of a missing file would end the shell with an error: looked at first.)
if [ ! -r "${0%/*}/hooks.sh" ]; then
    logger -t overcommit-task-prolog "${0%/*}/hooks.sh is missing: nothing done" 2>/dev/null
    exit 0
fi
# shellcheck source=contrib/slurm/hooks.sh
. "${0%/*}/hooks.sh"

LIBRARY=${OVERCOMMIT_PRELOAD_LIBRARY:-/usr/lib/overcommit/libovercommit_preload.so}
PROC=${OVERCOMMIT_PROC_ROOT:-/proc}

# The scope the job asked for: job, or nothing.
asked() {
    if [ -n "${OVERCOMMIT_SCOPE:-}" ]; then
        echo "$OVERCOMMIT_SCOPE"
        return 0
    fi
    if marker=$(job_scope_marker) && [ -e "$marker" ]; then
        echo job
        return 0
    fi
    for word in ${SLURM_JOB_COMMENT:-}; do
        [ "$word" = overcommit=job ] && echo job && return 0
    done
    return 0
}

main() {
    [ "$(asked)" = job ] || return 0
    host=$(hostname 2>/dev/null)
    if [ ! -r "$LIBRARY" ]; then
        log "the job scope was asked for, but $LIBRARY is missing"
        echo "print overcommit: the job scope was asked for, but $LIBRARY is missing on $host"
        return 0
    fi
    if [ "$(cat "$PROC/sys/vm/overcommit_memory" 2>/dev/null)" = 2 ]; then
        echo "print overcommit: the job scope has no effect on $host: the kernel is in mode never (2), which ignores MAP_NORESERVE"
        return 0
    fi
    case " ${LD_PRELOAD:-} " in
        *" $LIBRARY "*) ;;
        *) echo "export LD_PRELOAD=$LIBRARY${LD_PRELOAD:+ $LD_PRELOAD}" ;;
    esac
}

main
exit 0
