#!/bin/bash
# The scenario of the systemd guest (tests/vm/systemd_guest.rs). It runs as a oneshot unit once
# a Debian guest has booted with the real systemd, installs the package the way a site would
# and checks the service under systemd: socket activation, Type=notify and the watchdog, the
# sandbox, leases for an allowed and a refused user, the job scope's packaged library,
# restart after a crash, a refused reload, the journal. Each check prints `CHECK-BEGIN <name>`, its evidence, and then one line
# `CHECK <name> PASS|FAIL <detail>` that the host parses. The last line is
# `GUEST-TEST-DONE failures=<n>`; then the guest powers off.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C.UTF-8 SYSTEMD_PAGER='' SYSTEMD_COLORS=0 DEBIAN_FRONTEND=noninteractive
cd /

# The package as `cargo deb` named it.
DEB=$(ls /opt/overcommit-test/overcommit_*.deb)
CONFIG=/etc/overcommitd/overcommitd.toml
# The unprivileged users, without PAM or a login session.
ALICE="setpriv --reuid=alice --regid=alice --init-groups --reset-env --"
BOB="setpriv --reuid=bob --regid=bob --init-groups --reset-env --"
SEED="import numpy; a = numpy.zeros((210000, 210000)); print('allocated', a.nbytes)"

failures=0
current=-
begin() {
    current=$1
    echo
    echo "CHECK-BEGIN $current (uptime $(cut -d' ' -f1 /proc/uptime) s)"
}
pass() { echo "CHECK $current PASS $*"; }
fail() {
    echo "CHECK $current FAIL $*"
    failures=$((failures + 1))
}
# verdict DETAIL EXPRESSION...: PASS when the `test` EXPRESSION (conditions joined with -a)
# holds, FAIL otherwise; DETAIL is the evidence on the CHECK line.
verdict() {
    local detail=$1
    shift
    if test "$@"; then pass "$detail"; else fail "$detail"; fi
}

# run CMD...: shows the command, its output and its exit status (60 s at most). Sets $out
# and $rc.
run() {
    echo "+ $*"
    out=$(timeout 60 "$@" 2>&1)
    rc=$?
    if [ -n "$out" ]; then printf '%s\n' "$out" | sed 's/^/  | /'; fi
    echo "  = exit $rc"
}

mode() { cat /proc/sys/vm/overcommit_memory; }
ratio() { cat /proc/sys/vm/overcommit_ratio; }
main_pid() { systemctl show -p MainPID --value overcommitd.service; }
prop() { systemctl show -p "$1" --value overcommitd.service; }
# wait_until SECONDS CMD...: polls CMD every 0.2 s; false when it never succeeded.
wait_until() {
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@"; do
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}
mode_is() { [ "$(mode)" = "$1" ]; }
journal() { journalctl -u overcommitd.service --no-pager -o cat "$@"; }
journal_has() { journal | grep -q -- "$1"; }
# lease_count: live leases as the daemon reports them (as root).
lease_count() {
    overcommitctl leases --json | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["leases"]))'
}

echo
echo "GUEST-TEST-START kernel $(uname -r), $(systemd --version | head -n 1), $(nproc) cpu, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
echo "uptime $(cut -d' ' -f1 /proc/uptime) s, system state: $(systemctl is-system-running)"

# --- the package, as a site installs it, on a node whose boot policy is mode 2 -------------
# /etc/sysctl.d/60-overcommit-test.conf (mode 2, ratio 90) came with the guest and
# systemd-sysctl applied it at boot: the node's own policy, which installing must not change.
begin boot-policy
run cat /etc/sysctl.d/60-overcommit-test.conf
verdict "before the package: overcommit_memory $(mode), overcommit_ratio $(ratio)" \
    "$(mode)/$(ratio)" = 2/90

begin install
# apt resolves the package's dependencies from what is installed (the guest has no network).
run apt-get install -y --no-install-recommends "$DEB"
apt_rc=$rc
run dpkg-query -W -f '${Status} ${Version}\n' overcommit
status=$out
run getent group overcommit
verdict "apt-get exit $apt_rc; dpkg: $status; group: $out" \
    "$apt_rc" = 0 -a "${status#install ok installed}" != "$status" -a -n "$out"

begin install-keeps-boot-policy
# postinst started the daemon with the shipped configuration, which names no baseline.
run overcommitctl status --json
source_=$(printf '%s\n' "$out" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(s["daemon"]["baseline"]["source"], s["daemon"]["baseline"]["name"])' 2>&1)
run overcommitctl verify
verify_rc=$rc
verdict "after install: overcommit_memory $(mode), overcommit_ratio $(ratio); baseline: $source_; verify exit $verify_rc" \
    "$(mode)/$(ratio)" = 2/90 -a "$source_" = "boot boot" -a "$verify_rc" = 0

# What a node would be if mode 2 had been set at run time (sysctl -w) and never in sysctl.d,
# with overcommitd starting for the first time in this boot: no sysctl.d file, no journal.
# The daemon keeps it, and says so.
first_start() {
    systemctl stop overcommitd.socket overcommitd.service
    rm -f /run/overcommitd/state.json /run/overcommitd/journal.log
    "$@"
    systemctl start overcommitd.socket overcommitd.service
    # Socket activation: the first request starts the daemon.
    overcommitctl leases >/dev/null 2>&1
}
status_of() {
    overcommitctl status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
d = s["daemon"] or {}
found = (d.get("found_at_start") or {}).get("action", "-")
codes = ",".join(f["code"] for f in s["findings"] if f["code"] in ("baseline_found", "boot_policy_restored"))
print(d.get("baseline", {}).get("name"), found, codes or "-")' 2>&1
}
begin runtime-policy-kept
rm /etc/sysctl.d/60-overcommit-test.conf
echo "+ (daemon stopped, journal removed) sysctl -w vm.overcommit_memory=2 vm.overcommit_ratio=90"
first_start sysctl -q -w vm.overcommit_ratio=90 vm.overcommit_memory=2
kept=$(status_of)
run overcommitctl status
wait_until 10 journal_has "kept as the baseline \`found\`"
logged=$(journal | grep -c "kept as the baseline \`found\`")
verdict "overcommit_memory $(mode), overcommit_ratio $(ratio); baseline, first-start action, finding: $kept; logged: $logged" \
    "$(mode)/$(ratio)" = 2/90 -a "$kept" = "found kept baseline_found" -a "$logged" -ge 1

begin runtime-permissive-replaced
# Mode 1 could be a lease's left by a lost journal: the boot policy (now the kernel's
# defaults) is put back, at priority critical.
echo "+ (daemon stopped, journal removed) sysctl -w vm.overcommit_memory=1"
first_start sysctl -q -w vm.overcommit_memory=1
replaced=$(status_of)
run journalctl -u overcommitd.service --no-pager -o cat -p crit
critical=$(printf '%s\n' "$out" | grep -c "more permissive than the node's boot policy")
verdict "overcommit_memory $(mode), overcommit_ratio $(ratio); baseline, first-start action, finding: $replaced; critical lines: $critical" \
    "$(mode)/$(ratio)" = 0/50 -a "$replaced" = "boot replaced boot_policy_restored" -a "$critical" -ge 1

begin units-enabled
run systemctl is-enabled overcommitd.service overcommitd.socket
enabled=${out//$'\n'/ }
run systemctl is-active overcommitd.socket overcommitd.service
active=${out//$'\n'/ }
verdict "is-enabled: $enabled; is-active: $active" \
    "$enabled" = "enabled enabled" -a "$active" = "active active"

begin users
run useradd --create-home --groups overcommit alice
run useradd --create-home bob
run id alice
alice_id=$out
run id bob
bob_id=$out
ALICE_UID=$(id -u alice)
verdict "alice: $alice_id; bob: $bob_id" \
    "${alice_id#*(overcommit)}" != "$alice_id" -a "${bob_id#*(overcommit)}" = "$bob_id"

# --- the baseline, and what systemd knows of the daemon --------------------------------------
begin baseline
run overcommitctl verify
verify_rc=$rc
run systemctl is-active overcommitd.service
active=$out
run overcommitctl status
verdict "overcommit_memory=$(mode); verify exit $verify_rc; overcommitd $active" \
    "$(mode)" = 0 -a "$verify_rc" = 0 -a "$active" = active

begin notify-status
run systemctl show -p Type,NotifyAccess,WatchdogUSec,StatusText,MainPID overcommitd.service
run systemctl status --no-pager --lines=0 overcommitd.service
status_line=$(printf '%s\n' "$out" | grep 'Status: "' | sed 's/^ *//')
verdict "Type=$(prop Type) NotifyAccess=$(prop NotifyAccess) WatchdogUSec=$(prop WatchdogUSec); $status_line" \
    "$(prop Type)" = notify -a "$(prop WatchdogUSec)" = 30s -a -n "$status_line"

# --- socket activation ------------------------------------------------------------------------
begin socket-activation
run systemctl stop overcommitd.service
run systemctl is-active overcommitd.service
stopped=$out
run systemctl is-active overcommitd.socket
socket=$out
run ls -l /run/overcommitd/overcommitd.sock
# The first connection starts the service; alice's request is answered by it.
run $ALICE overcommitctl leases
leases_rc=$rc
run systemctl is-active overcommitd.service
restarted=$out
run journalctl -u overcommitd.service --no-pager -o cat -n 3
verdict "after stop: service $stopped, socket $socket; alice's leases exit $leases_rc; service $restarted" \
    "$stopped" = inactive -a "$socket" = active -a "$leases_rc" = 0 -a "$restarted" = active

# --- the sandbox lets the daemon write /proc/sys/vm -----------------------------------------
begin sandbox-write
run overcommitctl apply hpc-strict
apply_rc=$rc
apply_out=$out
strict="$(mode)/$(ratio)"
run overcommitctl verify
verify_rc=$rc
run overcommitctl apply default
default_rc=$rc
# `apply` writes the kernel itself only when the daemon is unreachable: not the case here.
direct=no
case "$apply_out" in *"directly"*) direct=yes ;; esac
verdict "apply hpc-strict exit $apply_rc -> mode/ratio $strict (direct write: $direct), verify exit $verify_rc; apply default exit $default_rc -> mode $(mode)" \
    "$apply_rc" = 0 -a "$strict" = 2/95 -a "$direct" = no -a "$verify_rc" = 0 \
    -a "$default_rc" = 0 -a "$(mode)" = 0

# --- the seed: alice's numpy array ------------------------------------------------------------
begin seed-refused
run $ALICE python3 -c "import numpy; numpy.zeros((210000, 210000))"
memerr=no
case "$out" in *MemoryError*) memerr=yes ;; esac
verdict "mode $(mode): python exit $rc, MemoryError: $memerr" "$rc" != 0 -a "$memerr" = yes

begin seed-lease
run $ALICE overcommitctl run --mode always -- python3 -c "$SEED"
lease_rc=$rc
allocated=$(printf '%s\n' "$out" | grep -o 'allocated [0-9]*')
after=$(mode)
verdict "run exit $lease_rc, '$allocated', overcommit_memory afterwards $after" \
    "$lease_rc" = 0 -a "$allocated" = "allocated 352800000000" -a "$after" = 0

begin job-scope-seed
# The packaged preload library: alice's array in the job scope (run's default, auto, takes it
# in mode 0), with no lease and the node's policy unchanged.
run $ALICE overcommitctl run --json -- python3 -c "$SEED"
job_rc=$rc
allocated=$(printf '%s\n' "$out" | grep -o 'allocated [0-9]*')
scope=$(printf '%s\n' "$out" | grep '^{' | head -n 1 | python3 -c '
import json, sys
record = json.load(sys.stdin)
print(record["scope"], record["library"])' 2>&1)
verdict "run exit $job_rc, '$allocated', scope and library: $scope; overcommit_memory $(mode), leases $(lease_count)" \
    "$job_rc" = 0 -a "$allocated" = "allocated 352800000000" \
    -a "$scope" = "job /usr/lib/overcommit/libovercommit_preload.so" \
    -a "$(mode)" = 0 -a "$(lease_count)" = 0

begin bob-denied
run $BOB overcommitctl run --mode always -- true
# run's own failures (a lease refused) exit 125.
verdict "bob's run exit $rc, overcommit_memory $(mode)" "$rc" = 125 -a "$(mode)" = 0

# --- STATUS= follows the daemon's state -----------------------------------------------------
begin status-current
# A lease held by a running command (kept for the crash below).
echo "+ $ALICE overcommitctl run --mode always -- sleep 300 &"
$ALICE overcommitctl run --mode always -- sleep 300 >/tmp/holder.log 2>&1 &
holder=$!
disown "$holder"
wait_until 20 mode_is 1
held=$(mode)
run overcommitctl leases
run systemctl status --no-pager --lines=0 overcommitd.service
status_text=$(prop StatusText)
verdict "overcommit_memory $held with alice's lease live; StatusText: '$status_text'" \
    "$held" = 1 -a "${status_text#*effective always (1)}" != "$status_text" \
    -a "${status_text#*; 1 lease(s)}" != "$status_text"

# --- a crashed daemon is restarted and re-adopts the live lease -------------------------------
begin crash-restart
pid_before=$(main_pid)
restarts_before=$(prop NRestarts)
run systemctl kill -s KILL overcommitd.service
new_daemon() {
    local pid
    pid=$(main_pid)
    [ "$pid" != 0 ] && [ "$pid" != "$pid_before" ] && systemctl is-active -q overcommitd.service
}
wait_until 30 new_daemon
run systemctl show -p ActiveState,SubState,Result,NRestarts,MainPID,StatusText overcommitd.service
run overcommitctl leases --json
adopted=$(printf '%s\n' "$out" | python3 -c '
import json, sys
leases = json.load(sys.stdin)["leases"]
print(" ".join("uid=%s,holder=%s" % (l["owner_uid"], l["holder_pid"]) for l in leases) or "none")' 2>&1)
run journalctl -u overcommitd.service --no-pager -o cat -n 6
verdict "mode before kill $held; daemon pid $pid_before -> $(main_pid), NRestarts $restarts_before -> $(prop NRestarts), $(systemctl is-active overcommitd.service); leases: $adopted (holder $holder); mode $(mode)" \
    "$held" = 1 -a "$(main_pid)" != "$pid_before" -a "$(prop NRestarts)" = $((restarts_before + 1)) \
    -a "$adopted" = "uid=$ALICE_UID,holder=$holder" -a "$(mode)" = 1

begin holder-death
run kill -KILL "$holder"
wait_until 20 mode_is 0
restored=$(mode)
# The command it ran is left behind by the SIGKILL: not a lease holder.
pkill -KILL -u alice -x sleep
run overcommitctl leases
count=$(lease_count)
run cat /tmp/holder.log
verdict "holder killed: overcommit_memory $restored, live leases $count" "$restored" = 0 -a "$count" = 0

# --- a broken configuration is refused on reload ---------------------------------------------
begin reload-broken
cp "$CONFIG" /root/overcommitd.toml.good
printf '\n[profiles.broken]\nmode = "never"\nratio = 500\n' >>"$CONFIG"
run overcommitd --check-config
check_rc=$rc
pid_before=$(main_pid)
run systemctl reload overcommitd.service
reload_rc=$rc
wait_until 10 journal_has "reload refused"
refusal=$(journal | grep -- "reload refused" | tail -n 1)
run journalctl -u overcommitd.service --no-pager -n 4
run systemctl is-active overcommitd.service
active=$out
run overcommitctl profiles --json
profiles=$(printf '%s\n' "$out" | python3 -c '
import json, sys
p = json.load(sys.stdin)
print("baseline=%s %s" % (p["baseline"], ",".join(x["name"] for x in p["profiles"])))' 2>&1)
run overcommitctl verify
verify_rc=$rc
listed_broken=no
case "$profiles" in *broken*) listed_broken=yes ;; esac
verdict "check-config exit $check_rc; reload exit $reload_rc; log: '$refusal'; $active, pid $pid_before -> $(main_pid); profiles: $profiles; verify exit $verify_rc" \
    "$check_rc" = 2 -a "$reload_rc" = 0 -a -n "$refusal" -a "$active" = active \
    -a "$(main_pid)" = "$pid_before" -a "$listed_broken" = no \
    -a "${profiles#baseline=default }" != "$profiles" -a "$verify_rc" = 0
cp /root/overcommitd.toml.good "$CONFIG"
run systemctl reload overcommitd.service
wait_until 10 journal_has "configuration reloaded"

# --- the journal ------------------------------------------------------------------------------
begin journal-audit
run sh -c "journalctl -u overcommitd.service --no-pager -o cat | grep 'audit: '"
lease_line=$(printf '%s\n' "$out" | grep "op=lease .*uid=$ALICE_UID " | head -n 1)
verdict "alice (uid $ALICE_UID): ${lease_line:-no op=lease line}" -n "$lease_line"

begin journal-fields
# Audit records reach journald through its native protocol, as structured fields a query can
# match (a text line could not be matched this way, nor forged into one).
run journalctl -u overcommitd.service --no-pager -o cat OVERCOMMIT_OP=lease "OVERCOMMIT_UID=$ALICE_UID"
fields=$(printf '%s\n' "$out" | grep -c "op=lease")
verdict "records with OVERCOMMIT_OP=lease OVERCOMMIT_UID=$ALICE_UID: $fields" "$fields" -ge 1

begin journal-priority
# The daemon talks to journald through stderr with sd-daemon <N> prefixes: journald must have
# turned them into priorities, not kept them as text.
run sh -c "journalctl -u overcommitd.service --no-pager -o cat | grep -c '^<[0-7]>'"
raw=${out:-0}
run journalctl -u overcommitd.service --no-pager -o cat -p err
errors=$(printf '%s\n' "$out" | grep -c "reload refused")
verdict "lines with a literal <N> prefix: $raw; 'reload refused' at priority err: $errors" \
    "$raw" = 0 -a "$errors" -ge 1

# --- the watchdog -------------------------------------------------------------------------
begin watchdog
# systemd stamps WatchdogTimestamp at readiness and at each WATCHDOG=1; the daemon pings
# every WatchdogSec/2 = 15 s.
stamp=$(prop WatchdogTimestampMonotonic)
run systemctl show -p WatchdogUSec,WatchdogTimestamp,WatchdogTimestampMonotonic overcommitd.service
pinged() { [ "$(prop WatchdogTimestampMonotonic)" != "$stamp" ]; }
wait_until 25 pinged
run systemctl show -p WatchdogTimestamp,WatchdogTimestampMonotonic,NRestarts overcommitd.service
timeouts=$(journalctl --no-pager -o cat | grep -c 'Watchdog timeout')
verdict "WatchdogTimestampMonotonic $stamp -> $(prop WatchdogTimestampMonotonic); 'Watchdog timeout' in the journal: $timeouts; NRestarts $(prop NRestarts)" \
    "$(prop WatchdogTimestampMonotonic)" != "$stamp" -a "$timeouts" = 0 -a "$(prop NRestarts)" = 1

# --- the Prometheus textfile unit, sandboxed, under systemd ----------------------------------
begin textfile-unit
mkdir -p /var/lib/prometheus/node-exporter
run systemctl link /usr/share/overcommit/contrib/prometheus/overcommit-textfile.service
run systemctl start overcommit-textfile.service
start_rc=$rc
run systemctl show -p Result,ExecMainStatus overcommit-textfile.service
result=$(systemctl show -p Result --value overcommit-textfile.service)
prom=/var/lib/prometheus/node-exporter
up=$(grep -c '^overcommit_daemon_up 1$' $prom/overcommit.prom 2>/dev/null)
jobs=$(grep -c '^overcommit_job_charged_bytes\|^overcommit_.*charged' $prom/overcommit-top.prom 2>/dev/null)
run ls -l $prom
verdict "start exit $start_rc, Result=$result; overcommit_daemon_up 1: $up; charge lines in overcommit-top.prom: $jobs" \
    "$start_rc" = 0 -a "$result" = success -a "$up" = 1 -a "$jobs" -ge 1

# --- the EL8 drop-in of the RPM does not get in the daemon's way ------------------------------
begin el8-drop-in
run install -D -m 0644 /opt/overcommit-test/overcommitd-el8.conf /etc/systemd/system/overcommitd.service.d/10-el8-compat.conf
run systemctl daemon-reload
run systemctl restart overcommitd.service
restart_rc=$rc
run systemctl show -p DropInPaths,InaccessiblePaths overcommitd.service
dropin=$(systemctl show -p DropInPaths --value overcommitd.service)
run $ALICE overcommitctl run --scope node --mode always -- cat /proc/sys/vm/overcommit_memory
lease_rc=$rc
leased=$(printf '%s\n' "$out" | tail -n 1)
verdict "restart exit $restart_rc with $dropin; alice's leased command saw overcommit_memory $leased (exit $lease_rc); afterwards $(mode)" \
    "$restart_rc" = 0 -a -n "$dropin" -a "$lease_rc" = 0 -a "$leased" = 1 -a "$(mode)" = 0
rm -rf /etc/systemd/system/overcommitd.service.d
systemctl daemon-reload

echo
echo "--- systemctl --failed ---"
systemctl --failed --no-legend --no-pager
echo "--- journalctl -u overcommitd ---"
journal -o short-monotonic | tail -n 60
echo "---"
echo "GUEST-TEST-DONE failures=$failures uptime $(cut -d' ' -f1 /proc/uptime) s"
sync
systemctl poweroff --force --force
