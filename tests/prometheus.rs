//! The Prometheus integration against the real tools: `status --format prometheus` with and
//! without a real daemon (checked by promtool), the alerting rules of contrib/prometheus
//! (`promtool check rules` and `promtool test rules`), the textfile script's failures, and
//! the textfile unit's sandbox (systemd-analyze).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{run, Daemon};
use nix::sys::signal::Signal;

const CONFIG: &str = r#"
[daemon]
baseline = "hpc-strict"
drift_interval = "0"

[profiles.hpc-strict]
mode = "never"
ratio = 90
"#;

/// A fixture with room for mode 2 at ratio 90 (the lockout guard lets it be the baseline).
const FIXTURE: &str = "m1024-swap512-mode0";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn check_metrics(promtool: &str, text: &str) -> String {
    let (passed, said) = common::tools::check_metrics(promtool, text);
    assert!(
        passed || !said.trim().is_empty(),
        "promtool failed silently"
    );
    said
}

/// The value of the one sample of `series` (its name and labels as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn status(daemon: &Daemon) -> String {
    let (code, out, err) =
        run(daemon
            .ctl()
            .args(["--timeout", "2s", "status", "--format", "prometheus"]));
    assert!(code == 0 || code == 1, "{err}");
    out
}

#[test]
fn alerts_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = common::tools::promtool() else {
        return;
    };
    let (code, out, err) = run(Command::new(promtool)
        .args(["check", "rules"])
        .arg(repo().join("contrib/prometheus/alerts.yml")));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    let (code, out, err) = run(Command::new(promtool)
        .args(["test", "rules"])
        .arg(repo().join("tests/fixtures/prometheus/alerts_test.yml")));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn daemon_series_appear_only_while_the_daemon_answers() {
    let Some(promtool) = common::tools::promtool() else {
        return;
    };
    let mut daemon = Daemon::start(FIXTURE, CONFIG, &[]);
    // A lease for Slurm job 4242, and a "slurmstepd" of that job on this machine.
    let (code, _, err) = run(daemon.ctl().args([
        "lease",
        "--mode",
        "always",
        "--ttl",
        "1h",
        "--tag",
        "slurm-4242",
    ]));
    assert_eq!(code, 0, "{err}");
    let mut stepd = Command::new("/bin/bash")
        .args(["-c", "exec -a 'slurmstepd: [4242.batch]' sleep 60"])
        .spawn()
        .unwrap();
    // exec -a replaces the title once bash has exec'd.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read(format!("/proc/{}/cmdline", stepd.id()))
        .is_ok_and(|c| c.starts_with(b"slurmstepd"))
    {
        assert!(
            Instant::now() < deadline,
            "the stand-in slurmstepd did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = status(&daemon);
    let _ = stepd.kill();
    let _ = stepd.wait();
    assert_eq!(check_metrics(promtool, &text).trim(), "", "{text}");
    let meminfo = |key| common::meminfo_bytes(&daemon.path("proc"), key) as f64;
    for (series, value) in [
        ("overcommit_daemon_up", 1.0),
        ("overcommit_daemon_expected", 1.0),
        ("overcommit_mode", 1.0),
        ("overcommit_ratio", 0.9),
        ("overcommit_limit_bytes", 0.0),
        ("overcommit_leases", 1.0),
        ("overcommit_in_line", 1.0),
        ("overcommit_drift_events_total", 0.0),
        ("overcommit_pending_write", 0.0),
        ("overcommit_guard_held", 0.0),
        ("overcommit_commit_limit_bytes", meminfo("CommitLimit")),
        ("overcommit_mem_total_bytes", meminfo("MemTotal")),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}:\n{text}");
    }
    assert!(
        text.contains("overcommit_baseline_info{name=\"hpc-strict\",source=\"config\",mode=\"never\",ratio=\"0.9\",limit_bytes=\"0\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "overcommit_effective_info{mode=\"always\",ratio=\"0.9\",limit_bytes=\"0\"} 1\n"
        ),
        "{text}"
    );
    let lease_line = text
        .lines()
        .find(|l| l.starts_with("overcommit_lease_job_processes{"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        lease_line.contains("tag=\"slurm-4242\"")
            && lease_line.contains("owner=\"root\"")
            && lease_line.contains("job=\"4242\"")
            && lease_line.ends_with(" 1"),
        "{lease_line}"
    );
    assert!(
        text.contains("overcommit_lease_expiry_timestamp_seconds{"),
        "{text}"
    );
    // The job is gone: the lease outlives it.
    let text = status(&daemon);
    assert!(
        text.lines()
            .any(|l| l.starts_with("overcommit_lease_job_processes{") && l.ends_with(" 0")),
        "{text}"
    );

    // Drift behind the daemon's back: counted (and enforced before the answer).
    std::fs::write(daemon.path("proc/sys/vm/overcommit_memory"), "0\n").unwrap();
    let text = status(&daemon);
    assert_eq!(
        sample(&text, "overcommit_drift_events_total"),
        Some(1.0),
        "{text}"
    );
    assert!(sample(&text, "overcommit_last_drift_timestamp_seconds").is_some());
    assert_eq!(sample(&text, "overcommit_in_line"), Some(1.0));

    // Hung, then dead: only the node's series and daemon_up 0.
    daemon.signal(Signal::SIGSTOP);
    let text = status(&daemon);
    daemon.signal(Signal::SIGCONT);
    daemon.signal(Signal::SIGKILL);
    daemon.wait();
    let dead = status(&daemon);
    for text in [text, dead] {
        assert_eq!(check_metrics(promtool, &text).trim(), "", "{text}");
        assert_eq!(sample(&text, "overcommit_daemon_up"), Some(0.0), "{text}");
        assert_eq!(sample(&text, "overcommit_daemon_expected"), Some(1.0));
        assert!(sample(&text, "overcommit_mode").is_some());
        for absent in [
            "overcommit_leases",
            "overcommit_in_line",
            "overcommit_baseline_info",
        ] {
            assert!(!text.contains(absent), "{absent} without a daemon:\n{text}");
        }
    }
}

/// The textfile script with the built overcommitctl, writing into `dir`.
fn textfile(daemon: &Daemon, dir: &Path) -> (i32, String, Duration) {
    let started = Instant::now();
    let (code, _, err) = run(daemon
        .command(repo().join("contrib/prometheus/overcommit-textfile.sh"))
        .arg(dir)
        .env("OVERCOMMITCTL", env!("CARGO_BIN_EXE_overcommitctl"))
        .env("OVERCOMMIT_TIMEOUT", "1s"));
    (code, err, started.elapsed())
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_textfile_script_writes_atomically_and_leaves_no_stale_file() {
    let mut daemon = Daemon::start(FIXTURE, CONFIG, &[]);
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("overcommit.prom");
    let top = dir.path().join("overcommit-top.prom");
    let (code, err, _) = textfile(&daemon, dir.path());
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("overcommit_daemon_up 1\n"), "{text}");
    assert!(std::fs::read_to_string(&top)
        .unwrap()
        .contains("overcommit_"));
    assert_eq!(
        (mode_of(&prom), mode_of(&top)),
        (0o644, 0o644),
        "the collector reads them"
    );
    let leftovers: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &prom && p != &top)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A hung daemon costs one timeout; the figures are exported with daemon_up 0.
    daemon.signal(Signal::SIGSTOP);
    let (code, err, took) = textfile(&daemon, dir.path());
    daemon.signal(Signal::SIGCONT);
    assert_eq!(code, 0, "{err}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert!(std::fs::read_to_string(&prom)
        .unwrap()
        .contains("overcommit_daemon_up 0\n"));
    daemon.signal(Signal::SIGKILL);
    daemon.wait();

    // status fails (an unreadable proc root): the file goes, the script fails.
    let (code, _, err) = run(daemon
        .command(repo().join("contrib/prometheus/overcommit-textfile.sh"))
        .arg(dir.path())
        .env("OVERCOMMITCTL", env!("CARGO_BIN_EXE_overcommitctl"))
        .env("OVERCOMMIT_PROC_ROOT", "/nonexistent"));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("overcommit.prom removed"), "{err}");
    assert!(!prom.exists() && !top.exists(), "no stale figures");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // A directory it cannot write: a failure, said.
    let (code, err, _) = textfile(&daemon, Path::new("/nonexistent/textfile"));
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot create a file in /nonexistent/textfile"),
        "{err}"
    );
}

#[test]
fn the_textfile_unit_is_sandboxed_to_2_or_better_and_verifies() {
    let Some(analyze) = common::tools::systemd_analyze() else {
        return;
    };
    let unit = repo().join("contrib/prometheus/overcommit-textfile.service");
    let (_, out, err) = run(Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit));
    let text = format!("{out}{err}");
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for overcommit-textfile.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    println!("overcommit-textfile.service exposure {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");

    // verify: the unit and its timer, with ExecStart pointing at the script.
    let dir = tempfile::tempdir().unwrap();
    let service = std::fs::read_to_string(&unit).unwrap().replace(
        "/usr/share/overcommit/contrib/prometheus/overcommit-textfile.sh",
        &repo()
            .join("contrib/prometheus/overcommit-textfile.sh")
            .display()
            .to_string(),
    );
    std::fs::write(dir.path().join("overcommit-textfile.service"), service).unwrap();
    std::fs::copy(
        repo().join("contrib/prometheus/overcommit-textfile.timer"),
        dir.path().join("overcommit-textfile.timer"),
    )
    .unwrap();
    let (code, out, err) = run(Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(dir.path().join("overcommit-textfile.service"))
        .arg(dir.path().join("overcommit-textfile.timer")));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        format!("{out}{err}").trim(),
        "",
        "systemd-analyze verify complains"
    );
}
