//! The real tools several test files check our output with, found or skipped the one way
//! (tests/common/skip.rs).

use std::path::Path;
use std::process::{Command, Stdio};

/// promtool, from Debian's prometheus package (scripts/test.sh installs it).
pub fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        super::skip::skip("promtool is missing (apt-get install prometheus)");
    }
    found.then_some("promtool")
}

/// `promtool check metrics` on `text`: (whether it passed, what it said).
pub fn check_metrics(promtool: &str, text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// systemd-analyze (part of the systemd tools every Debian system has).
pub fn systemd_analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        super::skip::skip(
            "systemd-analyze is missing (apt-get install systemd): the unit files were not checked",
        );
    }
    found.then_some("systemd-analyze")
}

/// overcommitd's units in a temp dir, with ExecStart pointing at the binary just built
/// (`systemd-analyze verify` checks that it exists).
pub fn daemon_units() -> tempfile::TempDir {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let service = std::fs::read_to_string(repo.join("systemd/overcommitd.service"))
        .unwrap()
        .replace("/usr/sbin/overcommitd", env!("CARGO_BIN_EXE_overcommitd"));
    std::fs::write(dir.path().join("overcommitd.service"), service).unwrap();
    std::fs::copy(
        repo.join("systemd/overcommitd.socket"),
        dir.path().join("overcommitd.socket"),
    )
    .unwrap();
    dir
}
