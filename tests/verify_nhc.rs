//! `overcommitctl verify` as node health checks need it, and contrib/nhc/overcommit.nhc on top
//! of it, against a real daemon on a fake proc root: a live lease, drift the daemon enforced,
//! a dead daemon, a hung one.
//!
//! The NHC check runs in bash with NHC's shell settings (extglob) and two stand-ins for NHC's
//! own functions, with NHC's contract: `die RC MESSAGE` (here it prints the message; NHC logs
//! it and drains the node) and `nhc_cmd_with_timeout SECS CMD...` (here timeout(1) --preserve-status: SIGTERM
//! after SECS, SIGKILL a second later, the command's status or 143/137). LBNL NHC itself is
//! not packaged in Debian; the check was run under the real NHC by hand (see the report of
//! issue 10).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{run, Daemon};
use nix::sys::signal::Signal;
use serde_json::Value;

/// The heuristic baseline, and a strict profile that is not it.
fn config() -> String {
    format!(
        "{}\n[profiles.hpc-strict]\nmode = \"never\"\nratio = 95\n",
        common::HEURISTIC_CONFIG
    )
}

const FIXTURE: &str = "m1024-swap512-mode0";

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn root_lease(daemon: &Daemon, tag: &str) {
    let (code, _, err) = run(daemon
        .ctl()
        .args(["lease", "--mode", "always", "--ttl", "1h", "--tag", tag]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(daemon.mode(), "1");
}

#[test]
fn verify_against_a_profile_judges_the_baseline_while_leases_are_live() {
    let daemon = Daemon::start(FIXTURE, &config(), &[]);
    root_lease(&daemon, "slurm-7");
    let (code, out, _) = run(daemon.ctl().args(["verify", "default", "--json"]));
    let report = json(&out);
    assert_eq!(code, 0, "a lease is not drift: {out}");
    assert_eq!(report["baseline_check"]["ok"], true);
    assert_eq!(report["leases_in_force"][0]["tag"], "slurm-7");
    let (_, text, _) = run(daemon.ctl().args(["verify", "default"]));
    assert!(
        text.contains("leases in force (node-wide)") && text.contains("(tag slurm-7)"),
        "{text}"
    );

    // --strict: the kernel itself, which the lease holds at always.
    let (code, out, _) = run(daemon
        .ctl()
        .args(["verify", "default", "--strict", "--json"]));
    assert_eq!(code, 1, "{out}");
    let mode = &json(&out)["checks"][0];
    assert_eq!(
        (mode["expected"].as_i64(), mode["actual"].as_i64()),
        (Some(0), Some(1))
    );

    // Another profile is not the baseline, lease or not.
    let (code, out, _) = run(daemon.ctl().args(["verify", "hpc-strict", "--json"]));
    assert_eq!(code, 1, "{out}");
    let report = json(&out);
    assert_eq!(report["baseline_check"]["actual"], "default");
    assert_eq!(report["baseline_check"]["ok"], false);

    // Without a profile: the kernel holds what the daemon keeps in force.
    let (code, out, _) = run(daemon.ctl().args(["verify", "--json"]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["against"]["leases"], 1);
}

#[test]
fn verify_reports_drift_the_daemon_enforced_once_per_state_file() {
    let daemon = Daemon::start(FIXTURE, &config(), &[]);
    std::fs::write(daemon.path("proc/sys/vm/overcommit_memory"), "1\n").unwrap();
    // PROFILE: no status request, so the drift is seen as it is.
    let (code, _, _) = run(daemon.ctl().args(["verify", "default"]));
    assert_eq!(code, 1);
    let (code, text, _) = run(daemon.ctl().args(["verify"]));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("drift: overcommitd found the policy changed behind its back 1 time(s)")
            && text.contains("the kernel held always (1)"),
        "{text}"
    );
    assert_eq!(daemon.mode(), "0", "the daemon enforced it");
    let (code, out, _) = run(daemon.ctl().args(["verify", "--json"]));
    assert_eq!(code, 0, "reported once: {out}");
    assert_eq!(json(&out)["drift"]["events"], 1);
    assert_eq!(json(&out)["drift"]["since_last_verify"], 0);

    // Another state file (another health check) has not seen it yet.
    let other = daemon.path("other-drift");
    let (code, out, _) = run(daemon
        .ctl()
        .args(["verify", "--json", "--drift-state"])
        .arg(&other));
    assert_eq!(code, 1, "{out}");
    // "none" keeps no state: the count is shown, not judged.
    let (code, out, _) = run(daemon
        .ctl()
        .args(["verify", "--json", "--drift-state", "none"]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["drift"]["since_last_verify"], Value::Null);
}

#[test]
fn verify_exits_3_when_the_expected_daemon_is_dead_or_hung() {
    let mut daemon = Daemon::start(FIXTURE, &config(), &[]);
    daemon.signal(Signal::SIGSTOP);
    let started = Instant::now();
    let (code, out, _) = run(daemon
        .ctl()
        .args(["--timeout", "500ms", "verify", "--json"]));
    assert_eq!(code, 3, "{out}");
    assert_eq!(json(&out)["error"]["code"], "timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    daemon.signal(Signal::SIGCONT);
    daemon.signal(Signal::SIGKILL);
    daemon.wait();
    // Dead, its configuration still there: not in line, whatever the kernel holds.
    for args in [&["verify"][..], &["verify", "default"]] {
        let (code, _, err) = run(daemon.ctl().args(args));
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(
            err.contains("overcommitd is expected on this node") && err.contains("does not answer"),
            "{err}"
        );
    }
    // A node without the daemon's configuration: the configured baseline, from the file.
    let (code, out, err) = run(common::ctl()
        .arg("--proc-root")
        .arg(daemon.path("proc"))
        .args(["--config", "/nonexistent/overcommitd.toml", "--sysctl-root"])
        .arg(daemon.path("root"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["verify"]));
    assert_eq!(code, 2, "nothing to verify: {out}{err}");
}

/// `check_overcommit_policy ARGS` in bash, as NHC runs it: the code of the `die` it called
/// (or none) and the message.
fn nhc_check(daemon: &Daemon, args: &str) -> (Option<u32>, String, Duration) {
    let script = format!(
        r#"
set -f
shopt -s expand_aliases extglob
die() {{ local rc=$1; shift; echo "DIE $rc $*"; }}
nhc_cmd_with_timeout() {{ local secs=$1; shift; timeout --preserve-status --kill-after=1 "$secs" "$@"; }}
. '{check}'
check_overcommit_policy {args}
echo "RETURN $?"
"#,
        check = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib/nhc/overcommit.nhc")
            .display()
    );
    let started = Instant::now();
    let (_, out, err) = run(daemon
        .command("/bin/bash")
        .env("OVERCOMMIT_NHC_CTL", env!("CARGO_BIN_EXE_overcommitctl"))
        .env("OVERCOMMIT_NHC_DRIFT_STATE", daemon.path("nhc-drift"))
        .args(["-c", &script]));
    let elapsed = started.elapsed();
    let died = out
        .lines()
        .find_map(|l| l.strip_prefix("DIE "))
        .map(|rest| {
            let (rc, message) = rest.split_once(' ').unwrap_or((rest, ""));
            (rc.parse().unwrap(), message.to_string())
        });
    assert!(out.contains("RETURN"), "{out}{err}");
    match died {
        Some((rc, message)) => {
            assert!(out.contains("RETURN 1"), "a failed check returns 1: {out}");
            (Some(rc), message, elapsed)
        }
        None => {
            assert!(out.contains("RETURN 0"), "{out}{err}");
            (None, out, elapsed)
        }
    }
}

#[test]
fn the_nhc_check_passes_live_leases_and_fails_drift_dead_and_hung_daemons() {
    let mut daemon = Daemon::start(FIXTURE, &config(), &[]);
    assert_eq!(nhc_check(&daemon, "").0, None, "in line");
    assert_eq!(nhc_check(&daemon, "default").0, None);

    // A live lease: not drift for the baseline's profile; the kernel itself differs (-s).
    root_lease(&daemon, "slurm-42");
    assert_eq!(nhc_check(&daemon, "").0, None);
    assert_eq!(
        nhc_check(&daemon, "default").0,
        None,
        "the lease is expected"
    );
    let (rc, message, _) = nhc_check(&daemon, "-s default");
    assert_eq!(rc, Some(1));
    assert!(
        message.starts_with("check_overcommit_policy:  overcommit policy drift (profile default):")
            && message
                .contains("vm.overcommit_memory expected heuristic (0) kernel always (1) differs"),
        "{message}"
    );
    let (rc, message, _) = nhc_check(&daemon, "hpc-strict");
    assert_eq!(rc, Some(1));
    assert!(
        message.contains("baseline expected hpc-strict overcommitd default differs"),
        "{message}"
    );
    run(daemon.ctl().args(["release", "--tag", "slurm-42"]));

    // Drift enforced behind the check's back: reported once.
    std::fs::write(daemon.path("proc/sys/vm/overcommit_memory"), "2\n").unwrap();
    let (rc, message, _) = nhc_check(&daemon, "");
    assert_eq!(rc, Some(1));
    assert!(
        message.contains("drift: overcommitd found the policy changed behind its back 1 time(s) since the last verify; the last: the kernel held never (2)"),
        "{message}"
    );
    assert_eq!(nhc_check(&daemon, "").0, None, "the next run passes");

    // Hung: overcommitctl gives up after -t.
    daemon.signal(Signal::SIGSTOP);
    let (rc, message, took) = nhc_check(&daemon, "-t 1");
    assert_eq!(rc, Some(1));
    assert!(
        message.contains("overcommitd does not answer:")
            && message.contains("did not answer within 1s"),
        "{message}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    daemon.signal(Signal::SIGCONT);

    // Dead.
    daemon.signal(Signal::SIGKILL);
    daemon.wait();
    let (rc, message, _) = nhc_check(&daemon, "");
    assert_eq!(rc, Some(1));
    assert!(
        message.contains("overcommitd does not answer:")
            && message.contains("overcommitd is expected on this node"),
        "{message}"
    );
}

#[test]
fn the_nhc_check_kills_a_verify_that_hangs_and_refuses_bad_syntax() {
    let daemon = Daemon::start(FIXTURE, &config(), &[]);
    let stuck = daemon.path("stuck-overcommitctl");
    std::fs::write(&stuck, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&stuck, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = format!(
        "set -f; shopt -s extglob; die() {{ echo \"DIE $*\"; }}; \
         nhc_cmd_with_timeout() {{ local s=$1; shift; timeout --preserve-status --kill-after=1 \"$s\" \"$@\"; }}; \
         . '{}'; check_overcommit_policy -t 1",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib/nhc/overcommit.nhc")
            .display()
    );
    let started = Instant::now();
    let (_, out, _) = run(Command::new("/bin/bash")
        .env("OVERCOMMIT_NHC_CTL", &stuck)
        .args(["-c", &script]));
    assert!(
        out.contains("DIE 1 check_overcommit_policy:  overcommitctl verify did not finish within 3s and was killed"),
        "{out}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    for (args, says) in [
        ("-t x", "-t takes whole seconds"),
        ("-s", "-s needs a PROFILE"),
        ("-q", "unknown option -q"),
    ] {
        let (rc, message, _) = nhc_check(&daemon, args);
        assert_eq!(rc, Some(1), "{args}");
        assert!(message.contains(says), "{args}: {message}");
    }
}
