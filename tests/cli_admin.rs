//! Admin commands as scripts and admins rely on them: no silent bypass of overcommitd (set and
//! apply refuse when it is expected but silent, unless --direct), one source of truth (the
//! profiles overcommitd has loaded, and a word when the file on disk differs), status's exit
//! status and advice that the tool accepts, and hints that say what is really wrong.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::cli::{ctl_with as with, CONFIG};
use common::{as_user, ctl, fixture_proc, proc_copy, run, Daemon};
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// A writable proc tree, a directory for the boot files and units, and a configuration path;
/// no daemon answers.
struct Node {
    proc_copy: tempfile::TempDir,
    root: tempfile::TempDir,
}

impl Node {
    fn new(fixture: &str) -> Node {
        Node {
            proc_copy: proc_copy(fixture),
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn proc_root(&self) -> std::path::PathBuf {
        self.proc_copy.path().join("proc")
    }

    fn config(&self) -> std::path::PathBuf {
        self.root.path().join("etc/overcommitd/overcommitd.toml")
    }

    fn write(&self, relative: &str, text: &str) {
        let path = self.root.path().join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn ctl(&self) -> Command {
        let mut command = ctl();
        command
            .arg("--proc-root")
            .arg(self.proc_root())
            .arg("--sysctl-root")
            .arg(self.root.path())
            .arg("--socket")
            .arg(self.root.path().join("run/overcommitd/overcommitd.sock"))
            .arg("--config")
            .arg(self.config());
        command
    }

    fn knob(&self, name: &str) -> String {
        fs::read_to_string(self.proc_root().join("sys/vm").join(name))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Sets a /proc/meminfo figure (kB).
    fn meminfo(&self, key: &str, kb: u64) {
        let path = self.proc_root().join("meminfo");
        let text = fs::read_to_string(&path).unwrap();
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{key}:")) {
                    format!("{key}: {kb} kB\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        fs::write(path, text).unwrap();
    }
}

#[test]
fn set_and_apply_refuse_when_overcommitd_is_expected_but_silent_unless_direct() {
    let node = Node::new("m1024-swap512-mode0");
    node.write("etc/overcommitd/overcommitd.toml", CONFIG);
    let (code, out, err) = run(node.ctl().args(["set", "always"]));
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("overcommitd is expected on this node")
            && err.contains("overcommitd.toml exists")
            && err.contains("--direct"),
        "{err}"
    );
    assert!(!err.contains("wrote"), "nothing was written: {err}");
    assert_eq!(node.knob("overcommit_memory"), "0");
    let (code, _, err) = run(node.ctl().args(["apply", "hpc-strict"]));
    assert_eq!(code, 3, "{err}");
    assert_eq!(node.knob("overcommit_memory"), "0");

    // --direct: the same guard, the write, and one line that says so.
    let (code, _, err) = run(node.ctl().args(["apply", "hpc-strict", "--direct"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (
            node.knob("overcommit_memory"),
            node.knob("overcommit_ratio")
        ),
        ("2".into(), "95".into())
    );
    assert_eq!(err.lines().count(), 1, "said once: {err}");
    assert!(
        err.contains("wrote the kernel directly") && err.contains("will see this as drift"),
        "{err}"
    );

    // The guard refuses before anything is written, and nothing claims a write.
    node.meminfo("Committed_AS", 2 << 20);
    let (code, _, err) = run(node
        .ctl()
        .args(["set", "never", "--ratio", "1", "--direct"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("lockout guard"), "{err}");
    assert!(
        !err.contains("directly"),
        "no 'wrote directly' when refused: {err}"
    );
    assert_eq!(node.knob("overcommit_ratio"), "95");
}

#[test]
fn an_installed_or_enabled_unit_means_overcommitd_is_expected() {
    let node = Node::new("m1024-swap512-mode0");
    node.write("lib/systemd/system/overcommitd.socket", "[Socket]\n");
    let (code, _, err) = run(node.ctl().args(["set", "always"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("overcommitd.socket is installed"), "{err}");

    let enabled = Node::new("m1024-swap512-mode0");
    let wants = enabled
        .root
        .path()
        .join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/lib/systemd/system/overcommitd.service",
        wants.join("overcommitd.service"),
    )
    .unwrap();
    let (code, _, err) = run(enabled.ctl().args(["set", "always"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("overcommitd.service is enabled"), "{err}");

    // Nothing says it runs here: root writes directly, and says nothing will restore it.
    let bare = Node::new("m1024-swap512-mode0");
    let (code, _, err) = run(bare.ctl().args(["set", "always"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing will restore it"), "{err}");
    assert_eq!(bare.knob("overcommit_memory"), "1");
}

/// A daemon on m1024-swap512-mode0 (ratio 50 found) with the test's CONFIG.
fn daemon() -> Daemon {
    Daemon::start("m1024-swap512-mode0", CONFIG, &[])
}

#[test]
fn apply_check_verify_and_profiles_use_what_overcommitd_has_loaded_and_say_when_the_file_differs() {
    let daemon = daemon();
    let config = daemon.path("etc/overcommitd.toml");
    // The profile is edited on disk; overcommitd is not reloaded.
    fs::write(
        &config,
        CONFIG.replace("ratio = 95", "ratio = 60") + "\n[profiles.new]\nmode = \"always\"\n",
    )
    .unwrap();

    let (code, out, _) = run(with(&daemon).args(["apply", "hpc-strict", "--check", "--json"]));
    assert_eq!(code, 1);
    let check = json(&out);
    assert_eq!(check["source"], "daemon");
    assert_eq!(
        check["baseline_policy"]["limit"]["ratio"], 95,
        "the loaded profile"
    );
    assert_eq!(check["config_on_disk"], "differs");
    let changes = check["changed_on_disk"].as_array().unwrap();
    assert!(changes
        .iter()
        .any(|c| c["profile"] == "hpc-strict" && c["change"] == "changed"));
    assert!(changes
        .iter()
        .any(|c| c["profile"] == "new" && c["change"] == "added"));
    let to_ratio = check["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "vm.overcommit_ratio")
        .map(|c| c["to"].clone());
    assert_eq!(to_ratio, Some(95.into()));
    let (_, text, _) = run(with(&daemon).args(["apply", "hpc-strict", "--check"]));
    assert!(
        text.contains("as overcommitd has it loaded")
            && text.contains("systemctl reload overcommitd"),
        "{text}"
    );

    // apply then writes what --check said, and verify agrees.
    assert_eq!(run(with(&daemon).args(["apply", "hpc-strict"])).0, 0);
    assert_eq!(daemon.knob("overcommit_ratio"), "95");
    let (code, out, _) = run(with(&daemon).args(["verify", "hpc-strict", "--json"]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["in_line"], true);

    // A profile only on disk is not there yet.
    let (code, _, err) = run(with(&daemon).args(["apply", "new", "--check"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("in the file on disk but overcommitd has not loaded it"),
        "{err}"
    );
    let (_, out, _) = run(with(&daemon).args(["profiles", "--json"]));
    let profiles = json(&out);
    assert_eq!(profiles["config_on_disk"], "differs");
    assert!(!profiles["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "new"));

    // After a reload, the file is what is loaded.
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let mut same = false;
    for _ in 0..200 {
        let (_, out, _) = run(with(&daemon).args(["profiles", "--json"]));
        if json(&out)["config_on_disk"] == "same" {
            same = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(same, "the reload was seen:\n{}", daemon.log());
    let (_, out, _) = run(with(&daemon).args(["apply", "hpc-strict", "--check", "--json"]));
    assert_eq!(json(&out)["baseline_policy"]["limit"]["ratio"], 60);
}

#[test]
fn apply_check_knows_the_limit_overcommitd_keeps_and_the_leases_in_force() {
    let daemon = daemon();
    assert_eq!(daemon.knob("overcommit_ratio"), "50");
    assert_eq!(run(with(&daemon).args(["apply", "hpc-strict"])).0, 0);
    assert_eq!(daemon.knob("overcommit_ratio"), "95");
    // `default` names no ratio: overcommitd puts back the one it found (50), not the one in force.
    let (code, out, _) = run(with(&daemon).args(["apply", "default", "--check", "--json"]));
    assert_eq!(code, 1);
    let check = json(&out);
    let changes: Vec<(String, i64, u64)> = check["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap().to_string(),
                c["from"].as_i64().unwrap(),
                c["to"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            ("vm.overcommit_memory".to_string(), 2, 0),
            ("vm.overcommit_ratio".to_string(), 95, 50)
        ]
    );
    assert_eq!(run(with(&daemon).args(["apply", "default"])).0, 0);
    assert_eq!(
        (
            daemon.knob("overcommit_memory"),
            daemon.knob("overcommit_ratio")
        ),
        ("0".into(), "50".into()),
        "apply wrote what --check said"
    );
    // With a lease for always, the kernel would keep always.
    run(with(&daemon).args(["lease", "--ttl", "10m"]));
    let (_, out, _) = run(with(&daemon).args(["apply", "hpc-strict", "--check", "--json"]));
    let check = json(&out);
    assert_eq!(check["effective_policy"]["mode"], "always");
    assert_eq!(check["baseline_policy"]["mode"], "never");
    assert_eq!(
        check["would_change"], true,
        "the ratio under the lease changes"
    );
}

#[test]
fn verify_profile_leaves_drift_visible() {
    let daemon = daemon();
    fs::write(daemon.path("proc/sys/vm/overcommit_memory"), "2\n").unwrap();
    let (code, out, _) = run(with(&daemon).args(["verify", "default", "--json"]));
    assert_eq!(
        code, 1,
        "drift is reported, not hidden by an enforcement: {out}"
    );
    let verify = json(&out);
    let mode = &verify["checks"][0];
    assert_eq!(
        (&mode["key"], &mode["expected"], &mode["actual"]),
        (&"vm.overcommit_memory".into(), &0.into(), &2.into())
    );
    let (_, text, _) = run(with(&daemon).args(["verify", "default"]));
    assert!(
        text.contains("expected heuristic (0)") && text.contains("differs"),
        "{text}"
    );
}

#[test]
fn status_exits_1_on_a_critical_finding_and_every_command_it_advises_is_accepted() {
    // Mode never, no swap, ratio 50 of 512 MiB, and more committed than the limit.
    let node = Node::new("m512-noswap-mode2-ratio50");
    let limit_kb = common::meminfo_bytes(&node.proc_root(), "CommitLimit") / 1024;
    node.meminfo("Committed_AS", limit_kb + 1024);
    let (code, out, _) = run(node.ctl().args(["status", "--json"]));
    assert_eq!(code, 1, "critical: exit 1");
    let status = json(&out);
    assert_eq!(status["worst_severity"], "critical");
    let (code, short, _) = run(node.ctl().args(["status", "--short"]));
    assert_eq!(code, 1);
    assert!(
        short.starts_with("never ratio=50 committed=")
            && short.contains("critical:commit_exhausted"),
        "{short}"
    );
    assert_eq!(run(node.ctl().args(["status"])).0, 1);
    assert_eq!(
        run(node.ctl().args(["status", "--format", "prometheus"])).0,
        1
    );
    // The textfile exporter keeps exporting: the figures are right, and say critical.
    let textfile = tempfile::tempdir().unwrap();
    let ctl_dir = Path::new(env!("CARGO_BIN_EXE_overcommitctl"))
        .parent()
        .unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus/overcommit-textfile.sh");
    let path = format!(
        "{}:{}",
        ctl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (code, _, err) = run(common::clean(script)
        .arg(textfile.path())
        .env("PATH", path)
        .env("OVERCOMMIT_PROC_ROOT", node.proc_root())
        .env("OVERCOMMIT_CONFIG", node.config())
        .env("OVERCOMMIT_SYSCTL_ROOT", node.root.path()));
    assert_eq!(code, 0, "{err}");
    let prom = fs::read_to_string(textfile.path().join("overcommit.prom")).unwrap();
    assert!(
        prom.contains("overcommit_findings{severity=\"critical\"} 1\n"),
        "{prom}"
    );
    let (code, short, _) = run(ctl()
        .arg("--proc-root")
        .arg(fixture_proc("m1024-swap512-mode0"))
        .args(["--sysctl-root", "/nonexistent", "--config", "/nonexistent"])
        .args(["status", "--short"]));
    assert_eq!(code, 0);
    assert!(
        short.starts_with("heuristic ratio=50 committed=") && short.ends_with(" ok\n"),
        "{short}"
    );

    // Every command advised, on nodes that need advice, is accepted now.
    let ratio_150 = Node::new("m512-noswap-mode0");
    fs::write(
        ratio_150.proc_root().join("sys/vm/overcommit_ratio"),
        "150\n",
    )
    .unwrap();
    let nearly = Node::new("m512-noswap-mode2-ratio50");
    nearly.meminfo("Committed_AS", limit_kb - limit_kb / 40);
    let mut advised = 0;
    for node in [
        node,
        ratio_150,
        nearly,
        Node::new("m512-noswap-mode1"),
        Node::new("m512-noswap-mode2-ratio50"),
    ] {
        let (_, out, _) = run(node.ctl().args(["status", "--json"]));
        for finding in json(&out)["findings"].as_array().unwrap() {
            let Some(command) = finding["command"].as_str() else {
                continue;
            };
            let words: Vec<&str> = command.split_whitespace().collect();
            assert_eq!(words[0], "overcommitctl", "{command}");
            let (code, _, err) = run(node.ctl().args(&words[1..]));
            assert_eq!(
                code, 0,
                "{} advises `{command}`, which fails: {err}",
                finding["code"]
            );
            advised += 1;
        }
    }
    assert!(advised >= 5, "advice with commands: {advised}");
}

#[test]
fn the_boot_finding_knows_when_overcommitd_applies_the_baseline() {
    let node = Node::new("m512-noswap-mode2-ratio50");
    node.write("etc/sysctl.d/90-site.conf", "vm.overcommit_memory = 0\n");
    // Without overcommitd: sysctl.d's value comes back at boot.
    let (_, out, _) = run(node.ctl().args(["status", "--json"]));
    let findings = json(&out)["findings"].clone();
    let boot: Vec<&Value> = findings
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "boot_differs")
        .collect();
    assert_eq!(boot.len(), 1, "{findings:#}");
    assert!(boot[0]["advice"]
        .as_str()
        .unwrap()
        .contains("reverts at the next boot"));

    // With overcommitd configured here, its baseline (never, 95) is what boot brings.
    node.write(
        "etc/overcommitd/overcommitd.toml",
        &CONFIG.replace("baseline = \"default\"", "baseline = \"hpc-strict\""),
    );
    let (_, out, _) = run(node.ctl().args(["status", "--json"]));
    let status = json(&out);
    assert_eq!(status["daemon_expected"], true);
    assert_eq!(
        status["boot"]["overcommitd_baseline"]["profile"],
        "hpc-strict"
    );
    let boot: Vec<&Value> = status["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "boot_differs")
        .collect();
    assert_eq!(
        boot.len(),
        1,
        "only the ratio differs from the baseline: {boot:#?}"
    );
    let message = boot[0]["message"].as_str().unwrap();
    assert!(
        message.contains("vm.overcommit_ratio is 50")
            && message.contains("overcommitd applies its baseline hpc-strict"),
        "{message}"
    );
    assert!(status["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["code"] == "daemon_unreachable"));
    let (_, text, _) = run(node.ctl().arg("status"));
    assert!(text.contains("baseline hpc-strict"), "{text}");
}

#[test]
fn unreachable_sockets_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let leases = |socket: &Path| {
        let mut command = ctl();
        command.arg("--socket").arg(socket).arg("leases");
        command
    };
    let (code, _, err) = run(&mut leases(&dir.path().join("gone/overcommitd.sock")));
    assert_eq!(code, 3);
    assert!(err.contains("gone does not exist"), "{err}");
    let (_, _, err) = run(&mut leases(&dir.path().join("overcommitd.sock")));
    assert!(err.contains("there is no socket there"), "{err}");
    // A socket left behind by a daemon that died.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let (code, _, err) = run(&mut leases(&stale));
    assert_eq!(code, 3);
    assert!(err.contains("nothing listens on it"), "{err}");
    let file = dir.path().join("file");
    fs::write(&file, "").unwrap();
    let (_, _, err) = run(&mut leases(&file));
    assert!(err.contains("is not a socket"), "{err}");
    assert!(!err.contains("is it running"), "{err}");

    // Permission denied, as another user: the directory's mode, then the socket's.
    let private = dir.path().join("private");
    fs::create_dir(&private).unwrap();
    let socket = private.join("overcommitd.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let (code, _, err) = run(as_user(&mut leases(&socket), 1000, 1000, &[]));
    assert_eq!(code, 3);
    assert!(
        err.contains("Permission denied")
            && err.contains("mode 0700, owner root:root")
            && err.contains("uid 1000"),
        "{err}"
    );
    fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).unwrap();
    let (_, _, err) = run(as_user(&mut leases(&socket), 1000, 1000, &[]));
    assert!(
        err.contains("the socket has mode 0600, owner root:root"),
        "{err}"
    );
}

#[test]
fn a_pid_that_does_not_exist_is_named_as_such() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id().to_string();
    child.wait().unwrap();
    let (code, _, err) = run(ctl().args(["check", "--pid", &pid, "1G"]));
    assert_eq!(code, 2);
    assert!(err.contains(&format!("no process with pid {pid}")), "{err}");
    assert!(!err.contains("proc root"), "{err}");
}
