//! The real `overcommitd` when the node misbehaves: kernel files that vanish or cannot be
//! written for a while, file-descriptor exhaustion, unusable journals and state directories,
//! FIFOs where files should be, values at the edge of the kernel's range, unsafe baselines,
//! and the inputs and names a hostile user controls.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::Command;
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

[profiles.strict]
mode = "never"
ratio = 60

[profiles.roomy]
mode = "never"
ratio = 100

[[access]]
users = [1000]
modes = ["always", "heuristic"]
max_ttl = "1h"
"#;

const FIXTURE: &str = "m1024-swap512-mode0";

fn request(daemon: &Daemon, line: &str) -> Value {
    let mut stream = UnixStream::connect(daemon.socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(line.as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

fn status(daemon: &Daemon) -> Value {
    let reply = request(daemon, r#"{"v":1,"op":"status"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    reply["result"].clone()
}

fn lease_always(daemon: &Daemon) -> String {
    let reply = request(
        daemon,
        r#"{"v":1,"op":"lease","mode":"always","ttl_secs":3600}"#,
    );
    assert_eq!(reply["ok"], true, "{reply}");
    reply["result"]["lease"]["id"].as_str().unwrap().to_string()
}

fn release(daemon: &Daemon, id: &str) -> Value {
    request(daemon, &format!(r#"{{"v":1,"op":"release","id":"{id}"}}"#))
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{what}: not within {limit:?}");
}

#[test]
fn a_lease_end_while_meminfo_is_unreadable_is_retried_until_the_kernel_holds_the_baseline() {
    // A mode-never baseline: the lockout guard must read meminfo before it is written back.
    // The daemon keeps meminfo open and reads it with pread: what it reads is made
    // unparseable in place (a failed read takes the same path).
    for drift in ["enforce", "warn", "adopt"] {
        let daemon = Daemon::start(
            FIXTURE,
            &CONFIG
                .replace(
                    "drift_interval = \"0\"",
                    &format!("drift_interval = \"100ms\"\ndrift = \"{drift}\""),
                )
                .replace("baseline = \"default\"", "baseline = \"roomy\""),
            &[],
        );
        assert_eq!(daemon.mode(), "2");
        let id = lease_always(&daemon);
        assert_eq!(daemon.mode(), "1");
        let meminfo = daemon.path("proc/meminfo");
        let text = std::fs::read(&meminfo).unwrap();
        std::fs::write(&meminfo, "unreadable\n").unwrap();
        let released = release(&daemon, &id);
        assert_eq!(released["ok"], true, "the lease ended: {released}");
        assert!(
            released["result"]["pending_write"]["last_error"]
                .as_str()
                .unwrap()
                .contains("meminfo"),
            "{released}"
        );
        let s = status(&daemon);
        assert_eq!(s["leases"], 0);
        assert_eq!(s["effective"]["mode"], "never", "from the live table");
        assert!(s["pending_write"]["attempts"].as_u64().unwrap() >= 1, "{s}");
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(daemon.mode(), "1", "still unwritable");
        std::fs::write(&meminfo, &text).unwrap();
        let took = wait_for("the baseline back", Duration::from_secs(10), || {
            daemon.mode() == "2"
        });
        println!("drift = {drift}: the baseline was back {took:?} after meminfo was");
        let s = status(&daemon);
        assert!(s["pending_write"].is_null(), "{s}");
        assert_eq!(s["baseline"]["name"], "roomy", "nothing adopted: {s}");
        let log = daemon.log();
        assert_eq!(
            log.matches("retrying with backoff").count(),
            1,
            "one line per episode:\n{log}"
        );
        assert!(log.contains("holds never (2), ratio 100% again"), "{log}");
    }
}

#[test]
fn status_shows_a_pending_write_in_text_and_json() {
    let daemon = Daemon::start(FIXTURE, CONFIG, &[]);
    let id = lease_always(&daemon);
    let knob = daemon.path("proc/sys/vm/overcommit_memory");
    // A knob that cannot be read for a while (through the descriptor the daemon keeps).
    std::fs::write(&knob, "x\n").unwrap();
    assert_eq!(release(&daemon, &id)["ok"], true);
    std::fs::write(&knob, "1\n").unwrap();
    // Between the failure and the next retry, status shows it (retries back off to seconds).
    let (code, out, _) = run(daemon.ctl().args(["status", "--json"]));
    assert_eq!(code, 0);
    let json: Value = serde_json::from_str(&out).unwrap();
    let pending = &json["daemon"]["pending_write"];
    if !pending.is_null() {
        assert_eq!(pending["target"]["mode"], "heuristic", "{json}");
        assert!(pending["last_error"]
            .as_str()
            .unwrap()
            .contains("overcommit_memory"));
    }
    wait_for("converged", Duration::from_secs(10), || {
        daemon.mode() == "0"
    });
}

#[test]
fn file_descriptor_exhaustion_neither_spins_nor_leaves_a_lease_in_force() {
    let daemon = Daemon::start(FIXTURE, CONFIG, &[]);
    let id = lease_always(&daemon);
    // Other users' connections take every descriptor the daemon may have.
    let mut held = Vec::new();
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reading another process's limit into a valid struct.
    assert_eq!(
        unsafe {
            libc::prlimit(
                daemon.pid(),
                libc::RLIMIT_NOFILE,
                std::ptr::null(),
                &mut old,
            )
        },
        0
    );
    let limit = |n: u64| {
        let rl = libc::rlimit {
            rlim_cur: n.min(old.rlim_max),
            rlim_max: old.rlim_max,
        };
        // SAFETY: prlimit on another process of ours, with a valid rlimit.
        let rc =
            unsafe { libc::prlimit(daemon.pid(), libc::RLIMIT_NOFILE, &rl, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    };
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
            .unwrap()
            .count() as u64
    };
    let control = UnixStream::connect(daemon.socket()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    limit(open_fds() + 20);
    for _ in 0..100 {
        held.push(UnixStream::connect(daemon.socket()).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid())).unwrap();
        let fields: Vec<u64> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        fields[0] + fields[1]
    };
    let before = cpu();
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu() - before;
    // The lease ends on a connection opened before the exhaustion. The kernel files and the
    // journal are kept open: the lease end needs no new descriptor, and is written at once.
    let mut control = control;
    control
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    control
        .write_all(format!("{{\"v\":1,\"op\":\"release\",\"id\":\"{id}\"}}\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    BufReader::new(&control).read_line(&mut reply).unwrap();
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(reply["result"]["pending_write"].is_null(), "{reply}");
    assert_eq!(daemon.mode(), "0", "the baseline is back before the reply");
    limit(old.rlim_cur);
    drop(held);
    let log = daemon.log();
    println!(
        "fd exhaustion: {ticks} CPU ticks in 2 s; accept pauses logged: {}",
        log.matches("cannot accept").count()
    );
    assert!(ticks < 50, "the daemon spun: {ticks} ticks in 2 s");
    assert!(
        log.matches("cannot accept connections").count() <= 2,
        "{log}"
    );
    assert!(
        log.contains("Too many open files"),
        "the accept loop met the exhaustion:\n{log}"
    );
    assert_eq!(status(&daemon)["leases"], 0);
}

#[test]
fn an_unusable_journal_is_set_aside_and_the_daemon_starts_at_its_baseline() {
    type Make<'a> = &'a dyn Fn(&Path);
    let garbage: [(&str, Make); 3] = [
        ("invalid UTF-8", &|p: &Path| {
            std::fs::write(p, b"{\"version\":\xff}").unwrap()
        }),
        ("a FIFO", &|p: &Path| {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()
        }),
        ("truncated", &|p: &Path| {
            std::fs::write(p, "{\"version\":2,").unwrap()
        }),
    ];
    for (what, make) in garbage {
        let mut daemon = Daemon::start(FIXTURE, CONFIG, &[]);
        lease_always(&daemon);
        daemon.signal(Signal::SIGKILL);
        daemon.wait();
        assert_eq!(daemon.mode(), "1");
        let state = daemon.path("state/state.json");
        std::fs::remove_file(&state).unwrap();
        make(&state);
        daemon.spawn();
        assert_eq!(daemon.mode(), "0", "{what}: back at the baseline");
        let log = daemon.log();
        assert!(
            log.contains("set aside as state.json.unusable-"),
            "{what}: {log}"
        );
        assert_eq!(status(&daemon)["leases"], 0);
    }
}

#[test]
fn a_lost_journal_without_a_configured_baseline_gives_the_boot_policy_not_the_kernels() {
    let no_baseline = CONFIG.replace("baseline = \"default\"\n", "");
    let mut daemon = Daemon::prepare(FIXTURE, &no_baseline, &[]);
    // sysctl.d says strict 80 at boot; the kernel holds a lease's mode 1 and no journal.
    std::fs::create_dir_all(daemon.path("sysroot/etc/sysctl.d")).unwrap();
    std::fs::write(
        daemon.path("sysroot/etc/sysctl.d/60-overcommit.conf"),
        "vm.overcommit_memory = 2\nvm.overcommit_ratio = 80\n",
    )
    .unwrap();
    std::fs::write(daemon.path("proc/sys/vm/overcommit_memory"), "1\n").unwrap();
    daemon.args = vec![
        "--sysctl-root".into(),
        daemon.path("sysroot").display().to_string(),
    ];
    daemon.spawn();
    assert_eq!(
        (daemon.mode(), daemon.knob("overcommit_ratio")),
        ("2".into(), "80".into())
    );
    let s = status(&daemon);
    assert_eq!(
        (
            s["baseline"]["name"].as_str(),
            s["baseline"]["source"].as_str()
        ),
        (Some("boot"), Some("boot"))
    );

    // A baseline profile without a ratio takes the boot policy's, not a lease's left in the
    // kernel (here never at ratio 90, with the journal lost).
    let mut daemon = Daemon::prepare(FIXTURE, CONFIG, &[]);
    std::fs::write(daemon.path("proc/sys/vm/overcommit_memory"), "2\n").unwrap();
    std::fs::write(daemon.path("proc/sys/vm/overcommit_ratio"), "90\n").unwrap();
    daemon.args = vec![
        "--sysctl-root".into(),
        daemon.path("empty").display().to_string(),
    ];
    daemon.spawn();
    assert_eq!(
        (daemon.mode(), daemon.knob("overcommit_ratio")),
        ("0".into(), "50".into())
    );

    // Without sysctl.d: the kernel's defaults.
    let daemon = Daemon::prepare(FIXTURE, &no_baseline, &[]);
    std::fs::write(daemon.path("proc/sys/vm/overcommit_memory"), "1\n").unwrap();
    let mut daemon = daemon;
    daemon.args = vec![
        "--sysctl-root".into(),
        daemon.path("empty").display().to_string(),
    ];
    daemon.spawn();
    assert_eq!(daemon.mode(), "0");
}

#[test]
fn an_unsafe_state_directory_puts_the_baseline_back_before_exiting() {
    let mut daemon = Daemon::prepare(FIXTURE, CONFIG, &[]);
    std::fs::write(daemon.path("proc/sys/vm/overcommit_memory"), "1\n").unwrap();
    std::fs::create_dir(daemon.path("elsewhere")).unwrap();
    std::os::unix::fs::symlink(daemon.path("elsewhere"), daemon.path("state")).unwrap();
    let output = daemon
        .daemon_command("state")
        .args(["--log", "stderr"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(daemon.mode(), "0", "the baseline was put back: {err}");
    daemon.child = None;
}

#[test]
fn kbytes_across_the_kernels_unsigned_range_are_read_and_written() {
    let daemon = Daemon::prepare(FIXTURE, CONFIG, &[]);
    std::fs::write(
        daemon.path("proc/sys/vm/overcommit_kbytes"),
        "18446744073709551615\n",
    )
    .unwrap();
    let mut daemon = daemon;
    daemon.spawn();
    // Read at start (and replaced by the baseline's ratio), not a reason to fail.
    assert!(
        daemon
            .log()
            .contains("before=\"heuristic (0), ratio 50, kbytes 18446744073709551615\""),
        "{}",
        daemon.log()
    );
    assert_eq!(status(&daemon)["kernel_kbytes"], 0);
    let (code, _, err) =
        run(daemon
            .ctl()
            .args(["set", "never", "--kbytes", "18446744073709551614"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(daemon.knob("overcommit_kbytes"), "18446744073709551614");
    assert_eq!(run(daemon.ctl().args(["apply", "default"])).0, 0);
}

#[test]
fn a_fifo_as_config_or_journal_temp_file_does_not_hang_the_daemon() {
    let daemon = Daemon::prepare(FIXTURE, CONFIG, &[]);
    let config = daemon.path("etc/overcommitd.toml");
    std::fs::remove_file(&config).unwrap();
    nix::unistd::mkfifo(&config, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_overcommitd"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a regular file"));
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut daemon = Daemon::prepare(FIXTURE, CONFIG, &[]);
    std::fs::create_dir(daemon.path("state")).unwrap();
    std::fs::set_permissions(
        daemon.path("state"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    nix::unistd::mkfifo(
        &daemon.path("state/.state.json.tmp"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    daemon.spawn();
    lease_always(&daemon);
    assert_eq!(daemon.mode(), "1");
}

#[test]
fn config_values_check_config_accepts_cannot_crash_the_daemon_and_huge_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overcommitd.toml");
    let huge = "18446744073709551615s";
    for text in [
        format!("[daemon]\ndefault_ttl = \"{huge}\"\n"),
        format!("[daemon]\nclient_timeout = \"{huge}\"\n"),
        format!("[daemon]\ndrift_interval = \"{huge}\"\n"),
        format!("[[access]]\nusers = [1000]\nmax_ttl = \"{huge}\"\n"),
    ] {
        std::fs::write(&path, &text).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_overcommitd"))
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert!(err.contains("too long"), "{err}");
    }
    // The largest values accepted run: a lease without a TTL, a connection, the drift timer.
    let daemon = Daemon::start(
        FIXTURE,
        &CONFIG.replace(
            "drift_interval = \"0\"",
            "drift_interval = \"1day\"\ndefault_ttl = \"366days\"\nclient_timeout = \"1day\"",
        ),
        &[],
    );
    let reply = request(&daemon, r#"{"v":1,"op":"lease","mode":"always"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let (code, _, err) =
        run(as_user(&mut daemon.ctl(), 1000, 1000, &[])
            .args(["run", "--mode", "always", "--", "true"]));
    assert_eq!(code, 0, "{err}");
    assert!(!daemon.log().contains("panicked"));
}

#[test]
fn unknown_fields_and_hidden_characters_are_refused_on_the_wire() {
    let daemon = Daemon::start(FIXTURE, CONFIG, &[]);
    let reply = request(
        &daemon,
        r#"{"v":1,"op":"lease","mode":"always","ttl_secs":60,"tagg":"x"}"#,
    );
    assert_eq!(reply["error"]["code"], "invalid");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`tagg`"),
        "{reply}"
    );
    let reply = request(
        &daemon,
        "{\"v\":1,\"op\":\"lease\",\"mode\":\"always\",\"ttl_secs\":60,\"tag\":\"evil\u{202E}gat\"}",
    );
    assert_eq!(reply["error"]["code"], "invalid", "{reply}");
    assert_eq!(status(&daemon)["leases"], 0);
    assert_eq!(daemon.mode(), "0");
}

/// A process whose name holds a newline and a priority prefix, asking for a lease.
fn forged_name_lease(daemon: &Daemon) {
    let dir = daemon.path("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let forged = dir.join("a\n<3>FORGED");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_overcommitctl"), &forged).unwrap();
    let (code, _, err) = run(daemon
        .command(&forged)
        .args(["lease", "--ttl", "1h", "--mode", "always", "--tag", "t"]));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_forged_process_name_cannot_forge_a_log_line() {
    let daemon = Daemon::start(FIXTURE, CONFIG, &[]);
    forged_name_lease(&daemon);
    let log = daemon.log();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("audit: op=lease"))
        .collect();
    assert_eq!(audit.len(), 1, "{log}");
    assert!(audit[0].contains(r#"comm="a\n<3>FORGED""#), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.starts_with("<3>") || l.starts_with("FORGED")),
        "{log}"
    );
    let (_, out, _) = run(daemon.ctl().arg("leases"));
    assert!(
        out.contains(r"a\n<3>FORGED") || !out.contains("FORGED"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains("FORGED")).count(),
        out.matches("FORGED").count()
    );
}

#[test]
fn audit_records_reach_a_journal_socket_as_structured_fields() {
    let mut daemon = Daemon::prepare(FIXTURE, CONFIG, &[]);
    let socket_path = daemon.path("journal.sock");
    let journal = UnixDatagram::bind(&socket_path).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    daemon.log_target = "journal";
    daemon.envs.push((
        "OVERCOMMITD_JOURNAL_SOCKET".into(),
        socket_path.display().to_string(),
    ));
    daemon.spawn();
    forged_name_lease(&daemon);
    daemon.signal(Signal::SIGTERM);
    daemon.wait();
    let mut records = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    while let Ok(n) = journal.recv(&mut buffer) {
        if n > 0 {
            records.push(buffer[..n].to_vec());
        }
    }
    let field = |record: &[u8], key: &str| -> Option<Vec<u8>> {
        // KEY=value lines, or KEY\n<u64 le length><value>\n for values with a newline.
        let mut rest = record;
        while !rest.is_empty() {
            let end = rest.iter().position(|&b| b == b'=' || b == b'\n')?;
            let name = &rest[..end];
            let (value, next) = if rest[end] == b'=' {
                let nl = rest[end + 1..].iter().position(|&b| b == b'\n')?;
                (&rest[end + 1..end + 1 + nl], end + 2 + nl)
            } else {
                let len = u64::from_le_bytes(rest[end + 1..end + 9].try_into().ok()?) as usize;
                (&rest[end + 9..end + 9 + len], end + 10 + len)
            };
            if name == key.as_bytes() {
                return Some(value.to_vec());
            }
            rest = &rest[next..];
        }
        None
    };
    let audits: Vec<&Vec<u8>> = records
        .iter()
        .filter(|r| field(r, "OVERCOMMIT_OP").as_deref() == Some(b"lease"))
        .collect();
    assert_eq!(
        audits.len(),
        1,
        "one record per event ({} records)",
        records.len()
    );
    let audit = audits[0];
    assert_eq!(field(audit, "OVERCOMMIT_COMM").unwrap(), b"a\n<3>FORGED");
    assert_eq!(field(audit, "OVERCOMMIT_UID").unwrap(), b"0");
    assert_eq!(field(audit, "PRIORITY").unwrap(), b"6");
    assert_eq!(field(audit, "SYSLOG_IDENTIFIER").unwrap(), b"overcommitd");
    assert!(field(audit, "OVERCOMMIT_AFTER")
        .unwrap()
        .starts_with(b"always (1)"));
    assert!(
        !records.iter().any(|r| field(r, "MESSAGE")
            .is_some_and(|m| m.starts_with(b"FORGED") || m.starts_with(b"<3>"))),
        "no forged record"
    );
    assert!(records
        .iter()
        .any(|r| field(r, "OVERCOMMIT_OP").as_deref() == Some(b"stop")));
}

#[test]
fn an_unsafe_configured_baseline_is_held_off_with_one_critical_line() {
    // 996612 kB of RAM at 60% + 512 MiB of swap = 1.1 GiB; 1.2 GiB committed.
    let daemon = Daemon::prepare(
        FIXTURE,
        &CONFIG.replace("baseline = \"default\"", "baseline = \"strict\""),
        &[],
    );
    let meminfo = daemon.path("proc/meminfo");
    let text = std::fs::read_to_string(&meminfo).unwrap();
    let set_committed = |kb: u64| {
        let changed: String = text
            .lines()
            .map(|l| {
                if l.starts_with("Committed_AS:") {
                    format!("Committed_AS:   {kb} kB\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&meminfo, changed).unwrap();
    };
    set_committed(1_250_000);
    let mut daemon = daemon;
    daemon.args = vec![];
    daemon.spawn();
    assert_eq!(daemon.mode(), "0", "held: the node stays allocatable");
    let s = status(&daemon);
    assert_eq!(s["held"]["wanted"]["mode"], "never", "{s}");
    assert_eq!(s["in_force"]["mode"], "heuristic", "{s}");
    let (_, text_status, _) = run(daemon.ctl().arg("status"));
    assert!(text_status.contains("lockout guard holds"), "{text_status}");
    set_committed(100_000);
    wait_for("the baseline once safe", Duration::from_secs(10), || {
        daemon.mode() == "2"
    });
    assert_eq!(daemon.knob("overcommit_ratio"), "60");
    let log = daemon.log();
    assert_eq!(log.matches("critical: lockout guard").count(), 1, "{log}");
    assert!(status(&daemon)["held"].is_null());
}

#[test]
fn set_judges_the_new_baseline_while_a_lease_is_live() {
    let daemon = Daemon::start("m512-noswap-mode0", CONFIG, &[]);
    lease_always(&daemon);
    let (code, _, err) = run(daemon.ctl().args(["set", "never", "--ratio", "1"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("[unsafe]"), "{err}");
    assert_eq!(daemon.mode(), "1");
    assert_eq!(status(&daemon)["baseline"]["name"], "default");
}
