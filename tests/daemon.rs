//! The real `overcommitd` on a real Unix socket, driven by the real `overcommitctl` and by raw
//! clients, as root and as other uids, against a writable fake proc root.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{as_user, run, Daemon};
use nix::sys::signal::Signal;
use serde_json::Value;

const CONFIG: &str = r#"
[daemon]
baseline = "default"
drift_interval = "0"

[profiles.default]
mode = "heuristic"

[profiles.hpc-strict]
mode = "never"
ratio = 95

[[access]]
users = [1000]
groups = [2000]
modes = ["always", "heuristic"]
max_ttl = "1h"
max_leases = 2
"#;

const FIXTURE: &str = "m1024-swap512-mode0";

fn start() -> Daemon {
    Daemon::start(FIXTURE, CONFIG, &[])
}

/// Sends raw bytes on a new connection and reads one reply line.
fn raw(daemon: &Daemon, bytes: &[u8]) -> Value {
    let mut stream = UnixStream::connect(daemon.socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply not JSON ({e}): {line:?}"))
}

/// `overcommitctl run --mode always -- sleep 60` as a lease holder, cleaned up (with its
/// child) when dropped.
struct Holder {
    run: std::process::Child,
    children: Vec<i32>,
}

impl Holder {
    fn start(daemon: &Daemon) -> Holder {
        let run = daemon
            .ctl()
            .args(["run", "--mode", "always", "--", "sleep", "60"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            daemon.wait_mode("1", Duration::from_secs(5)).is_some(),
            "lease granted:\n{}",
            daemon.log()
        );
        let pid = run.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        Holder { run, children }
    }

    fn pid(&self) -> u32 {
        self.run.id()
    }

    /// SIGKILL to the holder itself (its `sleep` lives on, orphaned).
    fn kill(&mut self) {
        self.run.kill().unwrap();
        self.run.wait().unwrap();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.run.kill();
        let _ = self.run.wait();
        for &child in &self.children {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGKILL);
        }
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

#[test]
fn run_holds_a_lease_for_the_life_of_the_command_and_exits_with_its_status() {
    let daemon = start();
    assert_eq!(daemon.mode(), "0");
    let mode_file = daemon.path("proc/sys/vm/overcommit_memory");
    let (code, out, err) = run(daemon
        .ctl()
        .args(["run", "--mode", "always", "--reason", "numpy job", "--"])
        .args(["sh", "-c", &format!("cat {}; exit 7", mode_file.display())]));
    assert_eq!(code, 7, "run exits with the command's status: {err}");
    assert_eq!(out.trim(), "1", "the command ran under mode always");
    // With --json the grant is one JSON line on stderr; stdout stays the command's.
    let (code, out, err) = run(daemon.ctl().args([
        "run",
        "--scope",
        "node",
        "--json",
        "--",
        "echo",
        "job output",
    ]));
    assert_eq!((code, out.as_str()), (0, "job output\n"));
    assert_eq!(
        json(err.lines().next().unwrap())["lease"]["policy"]["mode"],
        "always",
        "{err}"
    );
    assert_eq!(daemon.mode(), "0", "back to the baseline afterwards");
    let log = daemon.log();
    assert!(
        log.contains("audit: op=lease uid=0") && log.contains("numpy job"),
        "{log}"
    );
    assert!(log.contains("op=release"), "{log}");
}

#[test]
fn lease_and_release_by_id_and_by_tag() {
    let daemon = start();
    let (code, id, _) = run(daemon.ctl().args([
        "lease", "--ttl", "10m", "--tag", "slurm-42", "--mode", "always",
    ]));
    assert_eq!(code, 0);
    let id = id.trim().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(daemon.mode(), "1");
    let (_, out, _) = run(daemon.ctl().args(["leases", "--json"]));
    let leases = json(&out);
    assert_eq!(leases["leases"][0]["id"], id.as_str());
    assert_eq!(leases["leases"][0]["tag"], "slurm-42");
    let (_, out, _) = run(daemon.ctl().args(["status", "--json"]));
    let status = json(&out);
    assert_eq!(
        status["daemon"]["leases"], 1,
        "status shows the daemon's view"
    );
    assert_eq!(status["daemon"]["effective"]["mode"], "always");
    let (code, _, _) = run(daemon.ctl().args(["release", "--tag", "slurm-42"]));
    assert_eq!(code, 0);
    assert_eq!(daemon.mode(), "0");
    let (code, _, err) = run(daemon.ctl().args(["release", &id]));
    assert_eq!(code, 1, "already gone: not_found");
    assert!(err.contains("not_found"), "{err}");
    let (code, _, err) = run(daemon.ctl().args(["lease", "--mode", "always"]));
    assert_eq!(
        code, 0,
        "lease without --ttl lives as long as allowed: {err}"
    );
}

#[test]
fn a_holder_killed_with_sigkill_ends_its_lease_within_milliseconds() {
    let daemon = start();
    let mut holder = Holder::start(&daemon);
    let killed = Instant::now();
    holder.kill();
    let took = daemon
        .wait_mode("0", Duration::from_secs(5))
        .expect("back to baseline");
    println!(
        "policy back to baseline {:?} after SIGKILL of the holder",
        killed.elapsed().min(took)
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn a_lease_ends_when_its_ttl_passes() {
    let daemon = start();
    let asked = Instant::now();
    let (code, _, _) = run(daemon
        .ctl()
        .args(["lease", "--ttl", "1s", "--mode", "always"]));
    let granted = asked.elapsed();
    assert_eq!(code, 0);
    daemon
        .wait_mode("0", Duration::from_secs(5))
        .expect("expired");
    let lived = asked.elapsed();
    // Never before its TTL (counted from the grant), and promptly after.
    assert!(
        lived >= Duration::from_secs(1)
            && lived < Duration::from_secs(1) + granted + Duration::from_millis(1500),
        "{lived:?} (granted after {granted:?})"
    );
    // The audit line follows the write by a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !daemon.log().contains("op=expire") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(daemon.log().contains("op=expire"), "{}", daemon.log());
}

#[test]
fn a_daemon_killed_mid_lease_readopts_the_lease_and_ends_it_when_the_holder_dies() {
    let mut daemon = start();
    let mut holder = Holder::start(&daemon);
    // A tag lease whose holder-less TTL outlives the restart, and one that expires meanwhile.
    run(daemon.ctl().args([
        "lease",
        "--ttl",
        "1h",
        "--tag",
        "keep",
        "--mode",
        "heuristic",
    ]));
    run(daemon
        .ctl()
        .args(["lease", "--ttl", "1s", "--tag", "short", "--mode", "always"]));
    daemon.signal(Signal::SIGKILL);
    daemon.wait();
    assert_eq!(
        daemon.mode(),
        "1",
        "a crashed daemon leaves the lease's policy in force"
    );
    std::thread::sleep(Duration::from_millis(1100));
    daemon.spawn();
    let (_, out, _) = run(daemon.ctl().args(["leases", "--json"]));
    let leases = json(&out)["leases"].as_array().unwrap().clone();
    assert_eq!(
        leases.len(),
        2,
        "holder lease and the 1h tag lease re-adopted, the expired one ended: {leases:?}\n{}",
        daemon.log()
    );
    assert!(leases.iter().any(|l| l["holder_pid"] == holder.pid()));
    assert_eq!(daemon.mode(), "1");
    holder.kill();
    assert!(
        daemon.wait_mode("0", Duration::from_secs(2)).is_some(),
        "ended when the holder died:\n{}",
        daemon.log()
    );
}

#[test]
fn a_holder_that_died_while_the_daemon_was_down_is_noticed_at_restart() {
    let mut daemon = start();
    let mut holder = Holder::start(&daemon);
    daemon.signal(Signal::SIGKILL);
    daemon.wait();
    holder.kill();
    daemon.spawn();
    assert_eq!(
        daemon.mode(),
        "0",
        "restart ended the lease and wrote the baseline"
    );
    assert!(daemon.log().contains("is gone"), "{}", daemon.log());
}

#[test]
fn a_user_without_access_is_denied_and_nothing_changes() {
    let daemon = start();
    let (code, out, err) =
        run(as_user(&mut daemon.ctl(), 1001, 1001, &[])
            .args(["run", "--mode", "always", "--", "true"]));
    assert_eq!(
        code, 125,
        "run's own failure (denied) exits 125: {out}{err}"
    );
    assert!(err.contains("denied") && err.contains("uid 1001"), "{err}");
    assert_eq!(daemon.mode(), "0");
    let (code, _, err) = run(as_user(&mut daemon.ctl(), 1001, 1001, &[]).args(["set", "always"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("only root"), "{err}");
    assert_eq!(daemon.mode(), "0");
}

#[test]
fn users_with_access_get_leases_within_their_rule() {
    let daemon = start();
    let probe = daemon.path("proc/sys/vm/overcommit_memory");
    let (code, out, err) = run(as_user(&mut daemon.ctl(), 1000, 1000, &[])
        .args(["run", "--mode", "always", "--", "cat"])
        .arg(&probe));
    assert_eq!((code, out.trim()), (0, "1"), "{err}");
    // Through a supplementary group (SO_PEERGROUPS).
    let (code, out, err) = run(as_user(&mut daemon.ctl(), 1500, 1500, &[2000])
        .args(["run", "--mode", "always", "--", "cat"])
        .arg(&probe));
    assert_eq!((code, out.trim()), (0, "1"), "{err}");
    // Outside the rule: mode never, a TTL beyond max_ttl, more than max_leases.
    let user = || {
        let mut c = daemon.ctl();
        as_user(&mut c, 1000, 1000, &[]);
        c
    };
    let (code, _, err) =
        run(user().args(["lease", "--ttl", "10m", "--mode", "never", "--ratio", "90"]));
    assert_eq!(code, 1);
    assert!(err.contains("mode never is not allowed"), "{err}");
    let (code, _, err) = run(user().args(["lease", "--ttl", "2h"]));
    assert_eq!(code, 1);
    assert!(err.contains("max_ttl"), "{err}");
    assert_eq!(run(user().args(["lease", "--ttl", "10m"])).0, 0);
    assert_eq!(run(user().args(["lease", "--ttl", "10m"])).0, 0);
    let (code, _, err) = run(user().args(["lease", "--ttl", "10m"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("[limit]") && err.contains("max_leases 2"),
        "{err}"
    );
}

#[test]
fn only_the_owner_or_root_may_release_a_lease() {
    let daemon = start();
    let (_, id, _) =
        run(as_user(&mut daemon.ctl(), 1000, 1000, &[]).args(["lease", "--ttl", "10m"]));
    let id = id.trim();
    let (code, _, err) = run(as_user(&mut daemon.ctl(), 1500, 1500, &[2000]).args(["release", id]));
    assert_eq!(code, 1);
    assert!(
        err.contains("belongs to uid 1000") && err.contains("[denied]"),
        "{err}"
    );
    let (code, _, err) =
        run(as_user(&mut daemon.ctl(), 1500, 1500, &[2000]).args(["release", "--tag", "x"]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(daemon.mode(), "1");
    assert_eq!(run(daemon.ctl().args(["release", id])).0, 0, "root may");
    assert_eq!(daemon.mode(), "0");
}

#[test]
fn malformed_oversized_and_half_sent_messages_get_errors_and_harm_no_one() {
    let daemon = start();
    assert_eq!(raw(&daemon, b"hello\n")["error"]["code"], "invalid");
    assert_eq!(raw(&daemon, b"[1]\n")["error"]["code"], "invalid");
    assert_eq!(
        raw(&daemon, b"{\"op\":\"status\"}\n")["error"]["code"],
        "invalid"
    );
    assert_eq!(
        raw(&daemon, b"{\"v\":9,\"op\":\"status\"}\n")["error"]["code"],
        "version"
    );
    assert_eq!(
        raw(&daemon, b"{\"v\":1,\"op\":\"launch\"}\n")["error"]["code"],
        "invalid"
    );
    assert_eq!(
        raw(
            &daemon,
            b"{\"v\":1,\"op\":\"lease\",\"mode\":\"always\",\"ttl_secs\":0}\n"
        )["error"]["code"],
        "invalid"
    );
    assert_eq!(
        raw(
            &daemon,
            b"{\"v\":1,\"op\":\"lease\",\"mode\":\"never\",\"ratio\":-5}\n"
        )["error"]["code"],
        "invalid"
    );
    assert_eq!(
        raw(&daemon, b"{\"v\":1,\"op\":\"release\"}\n")["error"]["code"],
        "invalid"
    );
    let mut huge = vec![b'x'; 100_000];
    huge.push(b'\n');
    assert_eq!(raw(&daemon, &huge)["error"]["code"], "too_large");
    let nul = raw(
        &daemon,
        b"{\"v\":1,\"op\":\"lease\",\"mode\":\"always\",\"tag\":\"a\\u0000b\",\"ttl_secs\":5}\n",
    );
    assert_eq!(nul["error"]["code"], "invalid");

    // Half a message, then silence: the others are served meanwhile, and it is closed later.
    let mut half = UnixStream::connect(daemon.socket()).unwrap();
    half.write_all(b"{\"v\":1,\"op\":\"sta").unwrap();
    let status = raw(&daemon, b"{\"v\":1,\"op\":\"status\"}\n");
    assert_eq!(status["ok"], true);
    assert_eq!(status["result"]["baseline"]["name"], "default");
    // A vanished client mid-request.
    drop(UnixStream::connect(daemon.socket()).unwrap());
    // Several requests on one connection, answered in order.
    let many = b"{\"v\":1,\"op\":\"status\"}\n{\"v\":1,\"op\":\"leases\"}\n";
    let mut stream = UnixStream::connect(daemon.socket()).unwrap();
    stream.write_all(many).unwrap();
    let mut reader = BufReader::new(stream);
    let (mut first, mut second) = (String::new(), String::new());
    reader.read_line(&mut first).unwrap();
    reader.read_line(&mut second).unwrap();
    assert!(json(&first)["result"]["effective"].is_object());
    assert!(json(&second)["result"]["leases"].is_array());
    half.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut rest = Vec::new();
    let n = half.read_to_end(&mut rest).unwrap();
    assert_eq!(
        n, 0,
        "the idle half-sent connection was closed by the daemon"
    );
}

#[test]
fn hundreds_of_clients_do_not_stall_a_well_behaved_one() {
    let daemon = start();
    // 300 connections from root (no per-uid cap) that send nothing, and 40 that flood garbage.
    let idle: Vec<UnixStream> = (0..300)
        .map(|_| UnixStream::connect(daemon.socket()).unwrap())
        .collect();
    let flooders: Vec<std::thread::JoinHandle<()>> = (0..40)
        .map(|_| {
            let socket = daemon.socket();
            std::thread::spawn(move || {
                let Ok(mut s) = UnixStream::connect(socket) else {
                    return;
                };
                let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                let junk = vec![b'{'; 8192];
                for _ in 0..200 {
                    if s.write_all(&junk).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    for _ in 0..50 {
        let t = Instant::now();
        let status = raw(&daemon, b"{\"v\":1,\"op\":\"status\"}\n");
        worst = worst.max(t.elapsed());
        assert_eq!(status["ok"], true);
    }
    let (code, out, _) = run(daemon
        .ctl()
        .args(["run", "--mode", "always", "--", "cat"])
        .arg(daemon.path("proc/sys/vm/overcommit_memory")));
    assert_eq!((code, out.trim()), (0, "1"));
    println!(
        "50 status requests among 340 hostile connections: {:?} in all, slowest {worst:?}",
        start.elapsed()
    );
    for f in flooders {
        f.join().unwrap();
    }
    drop(idle);
    assert_eq!(daemon.mode(), "0");
}

#[test]
fn one_uid_cannot_take_all_the_connections() {
    let daemon = start();
    let socket = daemon.socket();
    // 70 connections as uid 1000, from a child process (the cap is 64 per uid).
    let script = format!(
        "import socket,time\nsocks=[]\nfor i in range(70):\n    s=socket.socket(socket.AF_UNIX); s.connect('{}'); socks.append(s)\nprint('open', flush=True)\ntime.sleep(30)\n",
        socket.display()
    );
    let mut hog = as_user(
        Command::new("python3").args(["-c", &script]),
        1000,
        1000,
        &[],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(hog.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "open");
    // The same uid is now refused a new connection, with a `limit` reply; others are not.
    let (code, _, err) = run(as_user(&mut daemon.ctl(), 1000, 1000, &[]).args(["leases"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("[limit]"), "{err}");
    let (code, _, err) = run(as_user(&mut daemon.ctl(), 1500, 1500, &[2000]).args(["leases"]));
    assert_eq!(code, 0, "{err}");
    hog.kill().unwrap();
    hog.wait().unwrap();
}

#[test]
fn sighup_reloads_a_good_config_and_keeps_the_old_one_on_a_bad_one() {
    let daemon = start();
    let config = daemon.path("etc/overcommitd.toml");
    std::fs::write(
        &config,
        CONFIG.replace("baseline = \"default\"", "baseline = \"hpc-strict\""),
    )
    .unwrap();
    daemon.signal(Signal::SIGHUP);
    assert!(
        daemon.wait_mode("2", Duration::from_secs(5)).is_some(),
        "new baseline applied:\n{}",
        daemon.log()
    );
    assert_eq!(daemon.knob("overcommit_ratio"), "95");
    std::fs::write(
        &config,
        "[profiles.broken]\nmode = \"never\"\nratio = 500\n",
    )
    .unwrap();
    daemon.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let log = daemon.log();
    assert!(
        log.contains("reload refused") && log.contains("ratio 500"),
        "{log}"
    );
    assert!(
        log.contains("overcommitd.toml:3:9"),
        "the error is located: {log}"
    );
    assert_eq!(daemon.mode(), "2", "the old config keeps running");
    let (_, out, _) = run(daemon.ctl().args(["profiles", "--json"]));
    assert_eq!(json(&out)["baseline"], "hpc-strict");
}

#[test]
fn the_lockout_guard_refuses_a_limit_below_committed_unless_forced() {
    // No swap: CommitLimit is only the ratio's share of RAM.
    let daemon = Daemon::start("m512-noswap-mode0", CONFIG, &[]);
    let (code, _, err) = run(daemon.ctl().args(["set", "never", "--ratio", "1"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("lockout guard") && err.contains("[unsafe]"),
        "{err}"
    );
    assert_eq!(daemon.mode(), "0");
    assert_eq!(daemon.knob("overcommit_ratio"), "50");
    let (code, _, err) = run(daemon
        .ctl()
        .args(["set", "never", "--ratio", "1", "--force"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (daemon.mode(), daemon.knob("overcommit_ratio")),
        ("2".into(), "1".into())
    );
    // kbytes then back to a ratio: the pair is written so the other knob is zeroed.
    let (code, _, _) = run(daemon.ctl().args(["set", "never", "--kbytes", "4000000"]));
    assert_eq!(code, 0);
    assert_eq!(
        (
            daemon.knob("overcommit_kbytes"),
            daemon.knob("overcommit_ratio")
        ),
        ("4000000".into(), "0".into())
    );
    assert_eq!(run(daemon.ctl().args(["apply", "default"])).0, 0);
    assert_eq!(daemon.mode(), "0");
}

#[test]
fn sigterm_ends_leases_and_leaves_the_baseline() {
    let mut daemon = start();
    assert_eq!(run(daemon.ctl().args(["apply", "hpc-strict"])).0, 0);
    run(daemon
        .ctl()
        .args(["lease", "--ttl", "1h", "--mode", "always"]));
    assert_eq!(daemon.mode(), "1");
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait(), Some(0));
    assert_eq!(
        (daemon.mode(), daemon.knob("overcommit_ratio")),
        ("2".into(), "95".into()),
        "baseline stays"
    );
    let state: Value = json(&std::fs::read_to_string(daemon.path("state/state.json")).unwrap());
    assert_eq!(state["leases"].as_array().unwrap().len(), 0);
    // Started again: the applied baseline survives a restart within the boot.
    daemon.spawn();
    let (_, out, _) = run(daemon.ctl().args(["verify", "--json"]));
    assert_eq!(json(&out)["in_line"], true);
    assert_eq!(daemon.mode(), "2");
}

#[test]
fn drift_is_enforced_at_the_next_event() {
    let daemon = start();
    std::fs::write(daemon.path("proc/sys/vm/overcommit_memory"), "1\n").unwrap();
    let (code, out, _) = run(daemon.ctl().args(["verify", "--json"]));
    // The status request behind verify enforced the baseline first, and verify says so once.
    assert_eq!(code, 1, "drift enforced since the last verify: {out}");
    assert_eq!(json(&out)["drift"]["since_last_verify"], 1, "{out}");
    assert_eq!(daemon.mode(), "0");
    let (code, out, _) = run(daemon.ctl().args(["verify", "--json"]));
    assert_eq!(code, 0, "reported once: {out}");
    assert!(
        daemon.log().contains("drift: the kernel holds always (1)"),
        "{}",
        daemon.log()
    );
}

#[test]
fn drift_is_noticed_by_the_timer_and_adopted_or_reported_per_config() {
    let adopt = Daemon::start(
        FIXTURE,
        &CONFIG.replace(
            "drift_interval = \"0\"",
            "drift_interval = \"200ms\"\ndrift = \"adopt\"",
        ),
        &[],
    );
    std::fs::write(adopt.path("proc/sys/vm/overcommit_memory"), "1\n").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        adopt.log().contains("adopting it as the baseline"),
        "{}",
        adopt.log()
    );
    assert_eq!(adopt.mode(), "1");
    let (_, out, _) = run(adopt.ctl().args(["profiles", "--json"]));
    assert_eq!(json(&out)["baseline"], "adopted");

    let warn = Daemon::start(
        FIXTURE,
        &CONFIG.replace(
            "drift_interval = \"0\"",
            "drift_interval = \"200ms\"\ndrift = \"warn\"",
        ),
        &[],
    );
    std::fs::write(warn.path("proc/sys/vm/overcommit_memory"), "2\n").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(warn.mode(), "2", "warn leaves it");
    assert_eq!(
        warn.log().matches("drift = \"warn\": left as is").count(),
        1,
        "warned once:\n{}",
        warn.log()
    );
    let (code, _, _) = run(warn.ctl().arg("verify"));
    assert_eq!(code, 1, "verify reports the drift");
}

#[test]
fn an_idle_daemon_does_not_wake_up() {
    let daemon = start();
    let switches = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("voluntary_ctxt_switches"))
            .unwrap()
            .to_string()
    };
    std::thread::sleep(Duration::from_millis(200));
    let before = switches();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        switches(),
        before,
        "no wake-ups while idle with drift_interval = 0"
    );
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let daemon = start();
    let output = daemon
        .daemon_command("state2")
        .args(["--log", "stderr"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("already listening"));
    assert_eq!(
        raw(&daemon, b"{\"v\":1,\"op\":\"status\"}\n")["ok"],
        true,
        "the first one still serves"
    );
}

#[test]
fn check_config_validates_and_locates_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overcommitd.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_overcommitd"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    std::fs::write(&path, "[daemon]\nbaseline = \"missing\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_overcommitd"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("overcommitd.toml:2:12") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn without_a_daemon_root_sets_directly_with_a_warning_and_others_get_exit_3() {
    let daemon = start();
    let mut gone = daemon.ctl();
    gone.env("OVERCOMMIT_SOCKET", daemon.path("run/nothing.sock"));
    let (code, _, err) = run(gone.args(["set", "always", "--direct"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("wrote the kernel directly"), "{err}");
    assert_eq!(daemon.mode(), "1");
    let mut user = daemon.ctl();
    user.env("OVERCOMMIT_SOCKET", daemon.path("run/nothing.sock"));
    let (code, _, err) = run(as_user(&mut user, 1000, 1000, &[]).args(["lease", "--ttl", "10m"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot reach overcommitd"), "{err}");
    // `run` keeps 3 for CMD: its own failures are 125.
    let mut user = daemon.ctl();
    user.env("OVERCOMMIT_SOCKET", daemon.path("run/nothing.sock"));
    let (code, _, err) =
        run(as_user(&mut user, 1000, 1000, &[]).args(["run", "--scope", "node", "--", "true"]));
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("cannot reach overcommitd"), "{err}");
}

#[test]
fn it_tells_systemd_it_is_ready_its_status_and_pings_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let mut daemon = Daemon::prepare(FIXTURE, CONFIG, &[]);
    let notify_path = daemon.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    daemon
        .envs
        .push(("NOTIFY_SOCKET".into(), notify_path.display().to_string()));
    daemon.envs.push(("WATCHDOG_USEC".into(), "200000".into()));
    daemon.spawn();
    daemon.envs.clear();
    // Reads messages until one contains `want`; all of them, joined.
    let mut seen = String::new();
    let mut wait_for = |want: &str| {
        let start = Instant::now();
        let mut buffer = [0u8; 4096];
        while start.elapsed() < Duration::from_secs(3) {
            let n = notify.recv(&mut buffer).unwrap();
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            seen.push_str(&message);
            seen.push('\n');
            if message.contains(want) {
                return seen.clone();
            }
        }
        panic!("no {want} among:\n{seen}");
    };
    let all = wait_for("READY=1");
    assert!(
        all.contains("STATUS=effective heuristic (0), ratio 50%; baseline default; 0 lease(s)"),
        "{all}"
    );
    wait_for("WATCHDOG=1");
    // STATUS= follows every change.
    assert_eq!(
        run(daemon
            .ctl()
            .args(["lease", "--ttl", "1h", "--mode", "always"]))
        .0,
        0
    );
    wait_for("STATUS=effective always (1), ratio 50%; baseline default; 1 lease(s)");
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait(), Some(0));
    wait_for("STOPPING=1");
}

#[test]
fn it_serves_a_socket_handed_over_by_systemd() {
    let daemon = Daemon::prepare(FIXTURE, CONFIG, &[]);
    let activated = daemon.path("activated.sock");
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&activated)
        .arg(env!("CARGO_BIN_EXE_overcommitd"))
        .arg("--config")
        .arg(daemon.path("etc/overcommitd.toml"))
        .arg("--socket")
        .arg(daemon.path("unused.sock"))
        .arg("--state-dir")
        .arg(daemon.path("state"))
        .arg("--proc-root")
        .arg(daemon.path("proc"))
        .args(["--log", "stderr"])
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !activated.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The first connection starts the daemon, which answers on the socket it was given.
    let mut stream = UnixStream::connect(&activated).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    assert_eq!(json(&line)["ok"], true, "{line}");
    assert!(
        !daemon.path("unused.sock").exists(),
        "it used the passed socket, not its own"
    );
    activator.kill().unwrap();
    activator.wait().unwrap();
}
