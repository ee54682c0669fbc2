//! Shared helpers of the process-level tests: fake proc roots made from real-kernel fixtures,
//! and the built binaries.
#![allow(dead_code)]

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

fn copy_dir(from: &Path, to: &Path) {
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
    let mut command = Command::new(env!("CARGO_BIN_EXE_overcommitctl"));
    for var in [
        "OVERCOMMIT_PROC_ROOT",
        "OVERCOMMIT_SYSCTL_ROOT",
        "OVERCOMMIT_SOCKET",
        "OVERCOMMIT_CONFIG",
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
