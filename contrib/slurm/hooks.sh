# Sourced by prolog.sh, epilog.sh and task_prolog.sh (beside it; set HOOK first): a known PATH,
# no globbing, the site settings from /etc/default/overcommit (OVERCOMMIT_SLURM_CONF names
# another file) over their defaults, and log(). See overcommit.default for each setting.
# The TaskProlog runs as the job's user and everything it prints to stdout goes to Slurm
# (`export`, `print`): nothing here prints there.

# shellcheck disable=SC2034 # the settings are used by the hooks that source this file
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
IFS='
	 '
set -f

OVERCOMMIT_EXCLUSIVE_ONLY=no
OVERCOMMIT_DEFAULT_MODE=
OVERCOMMIT_TTL_GRACE=10m
OVERCOMMIT_TIMEOUT=3s
OVERCOMMIT_SLURM_TIMEOUT=4
OVERCOMMIT_SLURM_STATE=/run/overcommit-slurm
OVERCOMMITCTL=/usr/bin/overcommitctl
SQUEUE=/usr/bin/squeue
OVERCOMMIT_SLURM_LOG=

# log MESSAGE: to syslog (tag overcommit-prolog, overcommit-epilog or overcommit-task-prolog),
# and to OVERCOMMIT_SLURM_LOG when set; the TaskProlog, which runs as the job's user, only
# appends to that file when it exists and the user may write it. Never fails.
log() {
    logger -t "overcommit-$HOOK" "job ${SLURM_JOB_ID:-?}: $*" 2>/dev/null
    if [ -n "$OVERCOMMIT_SLURM_LOG" ] && { [ "$HOOK" != task-prolog ] || [ -w "$OVERCOMMIT_SLURM_LOG" ]; }; then
        echo "$(date '+%F %T') $HOOK job ${SLURM_JOB_ID:-?}: $*" 2>/dev/null >>"$OVERCOMMIT_SLURM_LOG"
    fi
    return 0
}

# The job scope's marker (prolog.sh writes it for a job whose comment holds overcommit=job,
# epilog.sh removes it, task_prolog.sh looks for it), or nothing when SLURM_JOB_ID is not a
# job id (it becomes part of a path).
job_scope_marker() {
    case ${SLURM_JOB_ID:-} in
        '' | *[!0-9]*) return 1 ;;
        *) echo "$OVERCOMMIT_SLURM_STATE/job-$SLURM_JOB_ID" ;;
    esac
}

# The settings, tried in a subshell first: an error in a sourced file would end this shell,
# and a hook that fails drains the node.
conf=${OVERCOMMIT_SLURM_CONF:-/etc/default/overcommit}
if [ -r "$conf" ]; then
    # shellcheck disable=SC1090
    if (. "$conf") >/dev/null 2>&1; then
        . "$conf" >/dev/null
    else
        log "$conf has errors (sh says: $( (. "$conf") 2>&1 >/dev/null | head -n 1)): the defaults are used"
    fi
fi
