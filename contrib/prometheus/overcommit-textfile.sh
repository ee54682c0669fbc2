#!/bin/sh
# Writes overcommit's gauges for node-exporter's textfile collector: run by
# overcommit-textfile.timer every minute (or by cron), as root so that `top` sees every job.
#
#   overcommit-textfile.sh [DIR]      DIR: the collector's directory
#                                     (default /var/lib/prometheus/node-exporter)
#
# overcommit.prom      the policy, the commit accounting and overcommitd's state
#                      (`status --format prometheus`; daemon series only while it answers,
#                      overcommit_daemon_up always);
# overcommit-top.prom  the commit charge of the 20 largest jobs and "other" (`top --by job`).
#
# Each file is written to a temporary name in DIR and renamed: the collector never reads half
# a file. When a command fails, its file is removed (no stale figures stay served: alert on
# their absence) and the script exits non-zero, so that the timer's unit shows the failure.
# `status` exiting 1 is not a failure: it means a critical finding, which the figures show.
# OVERCOMMITCTL names the program (default: overcommitctl in PATH); OVERCOMMIT_TIMEOUT bounds
# each wait for overcommitd (default 10s).
set -u
PATH=${PATH:-/usr/sbin:/usr/bin:/sbin:/bin}
dir=${1:-/var/lib/prometheus/node-exporter}
ctl=${OVERCOMMITCTL:-overcommitctl}
timeout=${OVERCOMMIT_TIMEOUT:-10s}
status=0

# export NAME MAX_OK CMD...: CMD's output becomes DIR/NAME when CMD exits 0..MAX_OK.
export_file() {
    name=$1 max_ok=$2
    shift 2
    if ! tmp=$(mktemp "$dir/.$name.XXXXXX"); then
        echo "overcommit-textfile: cannot create a file in $dir" >&2
        rm -f "$dir/$name"
        status=1
        return
    fi
    "$@" >"$tmp"
    rc=$?
    if [ "$rc" -le "$max_ok" ] && chmod 0644 "$tmp" && mv -f "$tmp" "$dir/$name"; then
        return
    fi
    echo "overcommit-textfile: $* failed (exit $rc): $dir/$name removed" >&2
    rm -f "$tmp" "$dir/$name"
    status=$((rc > 1 ? rc : 1))
}

export_file overcommit.prom 1 "$ctl" --timeout "$timeout" status --format prometheus
export_file overcommit-top.prom 0 "$ctl" --timeout "$timeout" top --format prometheus --by job --limit 20
exit "$status"
