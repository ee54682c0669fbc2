# Sourced by prolog.sh and epilog.sh (beside it; set HOOK first): a known PATH, no globbing,
# the site settings from /etc/default/overcommit (OVERCOMMIT_SLURM_CONF names another file)
# over their defaults, and log(). See overcommit.default for each setting.

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
OVERCOMMITCTL=/usr/bin/overcommitctl
SQUEUE=/usr/bin/squeue
OVERCOMMIT_SLURM_LOG=

# log MESSAGE: to syslog (tag overcommit-prolog or overcommit-epilog), and to
# OVERCOMMIT_SLURM_LOG when set. Never fails.
log() {
    logger -t "overcommit-$HOOK" "job ${SLURM_JOB_ID:-?}: $*" 2>/dev/null
    [ -n "$OVERCOMMIT_SLURM_LOG" ] &&
        echo "$(date '+%F %T') $HOOK job ${SLURM_JOB_ID:-?}: $*" >>"$OVERCOMMIT_SLURM_LOG" 2>/dev/null
    return 0
}

# The settings, tried in a subshell first: an error in a sourced file would end this shell,
# and a hook that fails drains the node.
conf=${OVERCOMMIT_SLURM_CONF:-/etc/default/overcommit}
if [ -r "$conf" ]; then
    # shellcheck disable=SC1090
    if (. "$conf") >/dev/null 2>&1; then
        . "$conf"
    else
        log "$conf has errors (sh says: $( (. "$conf") 2>&1 >/dev/null | head -n 1)): the defaults are used"
    fi
fi
