#!/bin/sh
# Writes overcommit gauges for node-exporter's textfile collector, atomically.
# Run it from the timer beside this file (or cron), every minute.
dir=${1:-/var/lib/prometheus/node-exporter}
tmp="$dir/.overcommit.prom.$$"
overcommitctl status --format prometheus > "$tmp" && mv "$tmp" "$dir/overcommit.prom" || rm -f "$tmp"
