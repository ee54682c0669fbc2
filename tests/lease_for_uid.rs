//! `lease --for-uid UID` (root, on behalf of a job's user) and `--ttl-slurm TIME` against a
//! real daemon: the user's `[[access]]` rule decides with the user's NSS groups, the lease is
//! the user's (counted, listed, releasable by them) and records root, and a Slurm time limit
//! becomes a TTL capped by the rule.

mod common;

use common::{as_user, run, Daemon};
use serde_json::Value;

/// nobody (65534) and its group nogroup (65534), which every Debian system has: the rule
/// names the group, so only NSS can tell that nobody is in it.
fn config() -> String {
    format!(
        "{}\n[[access]]\ngroups = [65534]\nmodes = [\"always\"]\nmax_ttl = \"2h\"\nmax_leases = 1\n",
        common::HEURISTIC_CONFIG
    )
}

const NOBODY: u32 = 65534;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn lease_for(daemon: &Daemon, args: &[&str]) -> (i32, String, String) {
    run(daemon
        .ctl()
        .args(["--json", "lease", "--mode", "always"])
        .args(args))
}

fn ttl_of(out: &str) -> u64 {
    json(out)["lease"]["ttl_secs"].as_u64().unwrap()
}

#[test]
fn root_leases_for_a_user_by_that_users_rule_and_the_lease_is_theirs() {
    let daemon = Daemon::start("m1024-swap512-mode0", &config(), &[]);
    // A Slurm limit above the rule's max_ttl is shortened to it.
    let (code, out, err) = lease_for(
        &daemon,
        &[
            "--for-uid",
            "65534",
            "--ttl-slurm",
            "08:00:00",
            "--tag",
            "slurm-1",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let lease = &json(&out)["lease"];
    assert_eq!(
        (lease["owner_uid"].as_u64(), lease["requester_uid"].as_u64()),
        (Some(NOBODY.into()), Some(0))
    );
    assert!((7195..=7200).contains(&ttl_of(&out)), "{out}");
    assert_eq!(daemon.mode(), "1");
    let (_, text, _) = run(daemon.ctl().args(["leases"]));
    assert!(text.contains("(65534) by uid 0"), "{text}");
    assert!(
        daemon.log().contains("for_uid=65534"),
        "the audit record names both: {}",
        daemon.log()
    );

    // It counts against the user's max_leases (1).
    let (code, out, _) = lease_for(&daemon, &["--for-uid", "65534", "--ttl", "1h"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(json(&out)["error"]["code"], "limit");

    // The user may release it.
    let (code, _, err) =
        run(as_user(&mut daemon.ctl(), NOBODY, NOBODY, &[NOBODY])
            .args(["release", "--tag", "slurm-1"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(daemon.mode(), "0");

    // A short limit: the limit plus the grace (10 minutes by default), in decimal.
    let (code, out, err) = lease_for(
        &daemon,
        &[
            "--for-uid",
            "65534",
            "--ttl-slurm",
            "00:08:00",
            "--tag",
            "slurm-2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        (1075..=1080).contains(&ttl_of(&out)),
        "8 min + 10 min: {out}"
    );
    run(daemon.ctl().args(["release", "--tag", "slurm-2"]));
    // UNLIMITED: the longest the rule allows.
    let (code, out, err) = lease_for(
        &daemon,
        &[
            "--for-uid",
            "65534",
            "--ttl-slurm",
            "UNLIMITED",
            "--tag",
            "slurm-3",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!((7195..=7200).contains(&ttl_of(&out)), "{out}");
    run(daemon.ctl().args(["release", "--tag", "slurm-3"]));
    // Root's own lease with a Slurm limit: root has no rule to cap it.
    let (code, out, err) = lease_for(&daemon, &["--ttl-slurm", "1-09:05:00", "--tag", "own"]);
    assert_eq!(code, 0, "{err}");
    assert!((119_690..=119_700).contains(&ttl_of(&out)), "{out}");
    assert_eq!(json(&out)["lease"]["requester_uid"], Value::Null);
}

#[test]
fn the_users_rule_refuses_what_it_does_not_allow() {
    let daemon = Daemon::start("m1024-swap512-mode0", &config(), &[]);
    // A mode the rule does not give.
    let (code, out, _) = run(daemon.ctl().args([
        "--json",
        "lease",
        "--mode",
        "heuristic",
        "--for-uid",
        "65534",
        "--ttl",
        "1h",
    ]));
    assert_eq!(
        (code, json(&out)["error"]["code"].as_str()),
        (1, Some("denied"))
    );
    // A user without a rule (daemon, uid 1, is not in nogroup): no lease, root or not.
    let (code, out, _) = lease_for(&daemon, &["--for-uid", "1", "--ttl", "1h"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        json(&out)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("uid 1 is not in any [[access]] rule"),
        "{out}"
    );
    // A uid NSS does not know.
    let (code, out, _) = lease_for(&daemon, &["--for-uid", "3999999999", "--ttl", "1h"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not a user of this node"), "{out}");
    // Only root may ask for someone else, even for themselves by number.
    let (code, _, err) = run(as_user(&mut daemon.ctl(), NOBODY, NOBODY, &[NOBODY]).args([
        "lease",
        "--mode",
        "always",
        "--ttl",
        "1h",
        "--for-uid",
        "65534",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("only root may lease on behalf of another user"),
        "{err}"
    );
    assert_eq!(daemon.mode(), "0", "nothing was granted");
    // Bad Slurm times are refused before the daemon is asked.
    let (code, _, err) =
        run(daemon
            .ctl()
            .args(["lease", "--ttl-slurm", "08:0x", "--for-uid", "65534"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("expected M, M:S, H:M:S"), "{err}");
}
