//! Shared helpers of the process-level tests: fake proc roots made from real-kernel fixtures,
//! and the built binaries.
#![allow(dead_code)]

pub mod cli;
pub mod preload;
pub mod schema;
pub mod skip;
pub mod slurm;
pub mod tools;
pub mod top_report;

/// A daemon configuration with one profile, heuristic, as the baseline; no drift timer.
pub const HEURISTIC_CONFIG: &str = r#"
[daemon]
baseline = "default"
drift_interval = "0"

[profiles.default]
mode = "heuristic"
"#;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The proc tree of a real-kernel fixture (read-only: copy it to change it).
pub fn fixture_proc(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kernels")
        .join(name)
        .join("proc")
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A writable copy of a fixture's proc tree in a temp dir; the tree is `dir.path()/proc`.
pub fn proc_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture_proc(name), &dir.path().join("proc"));
    dir
}

/// `overcommitctl` with a clean environment for the options it reads.
pub fn ctl() -> Command {
    clean(env!("CARGO_BIN_EXE_overcommitctl"))
}

/// `program` without the environment variables overcommitctl reads.
pub fn clean(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for var in [
        "OVERCOMMIT_PROC_ROOT",
        "OVERCOMMIT_SYSCTL_ROOT",
        "OVERCOMMIT_SOCKET",
        "OVERCOMMIT_CONFIG",
        "OVERCOMMIT_DRIFT_STATE",
        "OVERCOMMIT_TIMEOUT",
        "CLICOLOR_FORCE",
        "NO_COLOR",
    ] {
        command.env_remove(var);
    }
    command
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs and returns (exit code, stdout, stderr); asserts it did not panic.
pub fn run(command: &mut Command) -> (i32, String, String) {
    let output = command.output().expect("spawn");
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(!err.contains("panicked"), "the program panicked:\n{err}");
    (output.status.code().unwrap_or(-1), out, err)
}

/// Reads one `Key:  N kB` value of a meminfo file, in bytes.
pub fn meminfo_bytes(proc_root: &Path, key: &str) -> u64 {
    let text = fs::read_to_string(proc_root.join("meminfo")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Makes `command` run as another user: supplementary groups, gid, uid (in that order).
pub fn as_user<'a>(
    command: &'a mut Command,
    uid: u32,
    gid: u32,
    groups: &[u32],
) -> &'a mut Command {
    use std::os::unix::process::CommandExt;
    let groups: Vec<nix::unistd::Gid> = groups
        .iter()
        .map(|&g| nix::unistd::Gid::from_raw(g))
        .collect();
    // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            Ok(())
        });
    }
    command
}

/// A real `overcommitd` on a real socket, against a writable copy of a fixture's proc tree.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<std::process::Child>,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// `--log` target (default stderr, into daemon.log).
    pub log_target: &'static str,
}

impl Daemon {
    /// Writes `config` (and `profiles` into profiles.d), copies the fixture, starts the daemon.
    pub fn start(fixture: &str, config: &str, profiles: &[(&str, &str)]) -> Daemon {
        let mut daemon = Daemon::prepare(fixture, config, profiles);
        daemon.spawn();
        daemon
    }

    /// Like [`Daemon::start`], without starting it.
    pub fn prepare(fixture: &str, config: &str, profiles: &[(&str, &str)]) -> Daemon {
        use std::os::unix::fs::PermissionsExt;
        let dir = proc_copy(fixture);
        // Other users must reach the socket: the directory is traversable by all.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(dir.path().join("etc/profiles.d")).unwrap();
        fs::write(dir.path().join("etc/overcommitd.toml"), config).unwrap();
        for (name, text) in profiles {
            fs::write(dir.path().join("etc/profiles.d").join(name), text).unwrap();
        }
        Daemon {
            dir,
            child: None,
            args: Vec::new(),
            envs: Vec::new(),
            log_target: "stderr",
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("run/overcommitd.sock")
    }

    /// `overcommitd` with this daemon's config, socket and proc root, and `state_dir`.
    pub fn daemon_command(&self, state_dir: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_overcommitd"));
        command
            .arg("--config")
            .arg(self.path("etc/overcommitd.toml"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.path(state_dir))
            .arg("--proc-root")
            .arg(self.path("proc"));
        command
    }

    /// Starts (or restarts) the daemon process and waits for its socket to answer.
    pub fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))
            .unwrap();
        let child = self
            .daemon_command("state")
            .args(["--log", self.log_target, "--verbose"])
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    /// Ready means answering: the socket is bound before the daemon has applied its baseline.
    fn wait_ready(&mut self) {
        use std::io::{BufRead, BufReader, Write};
        for _ in 0..500 {
            if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(self.socket()) {
                let mut line = String::new();
                let answered = stream.write_all(b"{\"v\":1,\"op\":\"leases\"}\n").is_ok()
                    && BufReader::new(stream)
                        .read_line(&mut line)
                        .is_ok_and(|n| n > 0);
                if answered {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("overcommitd exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("overcommitd did not come up:\n{}", self.log());
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Waits for the daemon to exit; its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.take().unwrap().wait().unwrap().code()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// `overcommitctl` pointed at this daemon and its proc tree.
    pub fn ctl(&self) -> Command {
        self.command(env!("CARGO_BIN_EXE_overcommitctl"))
    }

    /// `program` with the environment that points overcommitctl at this daemon.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = clean(program);
        command
            .env("OVERCOMMIT_SOCKET", self.socket())
            .env("OVERCOMMIT_PROC_ROOT", self.path("proc"))
            .env("OVERCOMMIT_CONFIG", self.path("etc/overcommitd.toml"))
            .env("OVERCOMMIT_DRIFT_STATE", self.path("verify-drift"));
        command
    }

    /// A vm knob as the (fake) kernel holds it.
    pub fn knob(&self, name: &str) -> String {
        fs::read_to_string(self.path("proc/sys/vm").join(name))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn mode(&self) -> String {
        self.knob("overcommit_memory")
    }

    /// Waits up to `limit` for the mode to become `want`; how long it took.
    pub fn wait_mode(&self, want: &str, limit: std::time::Duration) -> Option<std::time::Duration> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if self.mode() == want {
                return Some(start.elapsed());
            }
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
