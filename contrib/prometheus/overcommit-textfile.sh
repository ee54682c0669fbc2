#!/bin/sh
# Writes overcommit gauges for node-exporter's textfile collector, atomically.
# Run it from the timer beside this file (or cron), every minute.
# overcommit.prom: the policy and commit accounting (`status`).
# overcommit-top.prom: the commit charge of the 20 largest jobs and "other" (`top --by job`);
# it reads every process's smaps, so it runs as root (the unit does) to see them all.
dir=${1:-/var/lib/prometheus/node-exporter}
tmp="$dir/.overcommit.prom.$$"
overcommitctl status --format prometheus > "$tmp"
rc=$?
# status exits 1 when a finding is critical: the figures are still right, and worth exporting
# (overcommit_findings{severity="critical"} says so).
if [ "$rc" -le 1 ]; then
    mv "$tmp" "$dir/overcommit.prom"
else
    rm -f "$tmp"
    exit "$rc"
fi
tmp="$dir/.overcommit-top.prom.$$"
if overcommitctl top --format prometheus --by job --limit 20 > "$tmp"; then
    mv "$tmp" "$dir/overcommit-top.prom"
else
    rc=$?
    rm -f "$tmp"
    exit "$rc"
fi
