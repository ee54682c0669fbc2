#!/bin/sh
# Writes overcommit gauges for node-exporter's textfile collector, atomically.
# Run it from the timer beside this file (or cron), every minute.
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
