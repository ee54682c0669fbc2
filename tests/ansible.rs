//! contrib/ansible (the overcommit role and its example playbook) under the real
//! ansible-core and ansible-lint, installed from pip into target/tools/venv by
//! scripts/test.sh: syntax check, lint clean (profile production), and runs against
//! localhost (connection local) pointed at a real overcommitd on a fake proc root, with the
//! shipped configuration and profiles: the first run changes the node, the second changes
//! nothing, a run with a live lease changes nothing and verifies, `--check` shows pending
//! changes without making them, a baseline changed behind Ansible's back is put back, and a
//! configuration that does not validate is never installed.
//!
//! The package itself is not installed here: its postinst would start a daemon on this
//! machine's real kernel (the systemd guest of the VM suite installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, Daemon};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv with ansible-core and ansible-lint (scripts/test.sh makes it).
fn venv() -> Option<PathBuf> {
    let venv = std::env::var_os("OVERCOMMIT_TOOLS_VENV")
        .map_or_else(|| repo().join("target/tools/venv"), PathBuf::from);
    let found = ["ansible-playbook", "ansible-lint"]
        .iter()
        .all(|tool| venv.join("bin").join(tool).is_file());
    if !found {
        common::skip::skip(&format!(
            "ansible-core and ansible-lint are missing from {} (scripts/test.sh installs them with pip)",
            venv.display()
        ));
    }
    found.then_some(venv)
}

/// An ansible command with its state kept in `home`, without colour.
fn ansible(venv: &Path, tool: &str, home: &Path) -> Command {
    let mut command = common::clean(venv.join("bin").join(tool));
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    command
        .current_dir(repo().join("contrib/ansible"))
        .env("PATH", path)
        .env("ANSIBLE_HOME", home)
        .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
        .env("ANSIBLE_REMOTE_TEMP", home.join("remote-tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("NO_COLOR", "1")
        .env_remove("ANSIBLE_CONFIG");
    command
}

#[test]
fn the_playbook_passes_the_syntax_check_and_ansible_lint() {
    let Some(venv) = venv() else { return };
    let home = tempfile::tempdir().unwrap();
    let (code, out, err) = run(ansible(&venv, "ansible-playbook", home.path()).args([
        "--syntax-check",
        "-i",
        "localhost,",
        "overcommit.yml",
    ]));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(ansible(&venv, "ansible-lint", home.path()).args([
        "--offline",
        "--profile",
        "production",
    ]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("Passed: 0 failure(s), 0 warning(s)"),
        "{out}{err}"
    );
}

/// A node as Ansible sees it: a daemon with the shipped configuration and profiles.
struct Node {
    daemon: Daemon,
    home: tempfile::TempDir,
    venv: PathBuf,
}

/// The PLAY RECAP counts of one run.
#[derive(Debug)]
struct Recap {
    ok: u32,
    changed: u32,
    failed: u32,
    output: String,
}

impl Node {
    fn new(venv: PathBuf) -> Node {
        let shipped = |p: &str| std::fs::read_to_string(repo().join(p)).unwrap();
        let profiles: Vec<(String, String)> =
            std::fs::read_dir(repo().join("etc/overcommitd/profiles.d"))
                .unwrap()
                .map(|e| {
                    let path = e.unwrap().path();
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    (name, std::fs::read_to_string(&path).unwrap())
                })
                .collect();
        let profiles: Vec<(&str, &str)> = profiles
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        let daemon = Daemon::start(
            "m1024-swap512-mode0",
            &shipped("etc/overcommitd/overcommitd.toml"),
            &profiles,
        );
        Node {
            daemon,
            home: tempfile::tempdir().unwrap(),
            venv,
        }
    }

    /// Runs the example playbook on localhost with the role pointed at this daemon.
    fn play(&self, extra: &[&str]) -> Recap {
        let d = &self.daemon;
        let vars = serde_json::json!({
            "overcommit_install": false,
            "overcommit_config_dir": d.path("etc"),
            "overcommit_ctl": env!("CARGO_BIN_EXE_overcommitctl"),
            "overcommit_daemon": env!("CARGO_BIN_EXE_overcommitd"),
            "overcommit_environment": {
                "OVERCOMMIT_SOCKET": d.socket(),
                "OVERCOMMIT_PROC_ROOT": d.path("proc"),
                "OVERCOMMIT_CONFIG": d.path("etc/overcommitd.toml"),
                "OVERCOMMIT_SYSCTL_ROOT": d.path("root"),
            },
            "overcommit_reload_command": ["kill", "-HUP", d.pid().to_string()],
            "ansible_become": false,
            "ansible_python_interpreter": self.venv.join("bin/python"),
        });
        let vars_file = self.home.path().join("vars.json");
        std::fs::write(&vars_file, vars.to_string()).unwrap();
        let inventory = self.home.path().join("inventory");
        std::fs::write(
            &inventory,
            "[compute]\nlocalhost ansible_connection=local\n",
        )
        .unwrap();
        let (_, out, err) = run(ansible(&self.venv, "ansible-playbook", self.home.path())
            .arg("-i")
            .arg(&inventory)
            .arg("-e")
            .arg(format!("@{}", vars_file.display()))
            .args(extra)
            .arg("overcommit.yml"));
        let line = out
            .lines()
            .find(|l| l.starts_with("localhost") && l.contains("changed="))
            .unwrap_or_else(|| panic!("no PLAY RECAP:\n{out}{err}"));
        let count = |key: &str| -> u32 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{key} in {line}"))
        };
        let recap = Recap {
            ok: count("ok"),
            changed: count("changed"),
            failed: count("failed"),
            output: format!("{out}{err}"),
        };
        println!(
            "ansible-playbook {extra:?}: ok={} changed={} failed={}",
            recap.ok, recap.changed, recap.failed
        );
        recap
    }

    fn config(&self) -> String {
        std::fs::read_to_string(self.daemon.path("etc/overcommitd.toml")).unwrap()
    }

    fn policy(&self) -> (String, String) {
        (self.daemon.mode(), self.daemon.knob("overcommit_ratio"))
    }
}

#[test]
fn the_role_converges_once_and_then_changes_nothing_leases_included() {
    let Some(venv) = venv() else { return };
    let node = Node::new(venv);
    let strict = ["-e", "overcommit_baseline=hpc-strict"];

    let first = node.play(&strict);
    assert_eq!(first.failed, 0, "{}", first.output);
    // The configuration, its reload, and (if the reload had not landed yet) the apply.
    assert!(first.changed >= 2, "{}", first.output);
    assert!(node.config().contains("baseline = \"hpc-strict\""));
    assert_eq!(node.policy(), ("2".into(), "95".into()));

    let second = node.play(&strict);
    assert_eq!((second.changed, second.failed), (0, 0), "{}", second.output);

    // A job's lease: the kernel is the lease's, the node is in line, nothing to change.
    let (code, _, err) = run(node.daemon.ctl().args([
        "lease", "--mode", "always", "--ttl", "1h", "--tag", "slurm-9",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.daemon.mode(), "1");
    let leased = node.play(&strict);
    assert_eq!((leased.changed, leased.failed), (0, 0), "{}", leased.output);
    assert_eq!(node.daemon.mode(), "1", "the lease stays in force");

    // --check: another baseline is pending, nothing is made.
    let before = node.config();
    let check = node.play(&["-e", "overcommit_baseline=default", "--check", "--diff"]);
    assert_eq!(check.failed, 0, "{}", check.output);
    assert!(
        check.changed >= 2,
        "the file and the baseline: {}",
        check.output
    );
    assert!(
        check.output.contains("+baseline = \"default\"")
            && check.output.contains("apply default would change"),
        "{}",
        check.output
    );
    assert_eq!(node.config(), before, "--check writes nothing");
    assert_eq!(node.daemon.mode(), "1");
    run(node.daemon.ctl().args(["release", "--tag", "slurm-9"]));
    assert_eq!(node.policy(), ("2".into(), "95".into()));

    // An admin's `apply` behind Ansible's back is put back, as one change.
    let (code, _, err) = run(node.daemon.ctl().args(["apply", "bigmem"]));
    assert_eq!(code, 0, "{err}");
    let back = node.play(&strict);
    assert_eq!((back.changed, back.failed), (1, 0), "{}", back.output);
    assert_eq!(node.policy(), ("2".into(), "95".into()));
}

#[test]
fn a_configuration_that_does_not_validate_is_never_installed() {
    let Some(venv) = venv() else { return };
    let node = Node::new(venv);
    let before = node.config();
    let bad =
        serde_json::json!({"overcommit_profiles": {"hpc-strict": {"mode": "never", "ratio": 90}}});
    let recap = node.play(&[
        "-e",
        &bad.to_string(),
        "-e",
        "overcommit_baseline=hpc-strict",
    ]);
    assert_eq!(recap.failed, 1, "{}", recap.output);
    assert!(
        recap.output.contains("failed to validate")
            && recap
                .output
                .contains("profile `hpc-strict` is already defined"),
        "{}",
        recap.output
    );
    assert_eq!(node.config(), before);
    assert_eq!(node.policy(), ("0".into(), "50".into()), "nothing changed");
    // A site profile of its own is fine.
    let good = serde_json::json!({"overcommit_profiles": {"hpc-site": {"mode": "never", "ratio": 90, "description": "site's"}}});
    let recap = node.play(&[
        "-e",
        &good.to_string(),
        "-e",
        "overcommit_baseline=hpc-site",
    ]);
    assert_eq!(recap.failed, 0, "{}", recap.output);
    assert_eq!(node.policy(), ("2".into(), "90".into()));
}
