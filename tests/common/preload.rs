//! The preload library and the job_probe example, for the job scope's tests (tests/preload.rs
//! and the VM suite's tests/vm/job_scope.rs).
//!
//! A plain `cargo test` does not build a cdylib, so the first test to need them builds the
//! library (beside overcommitctl, where `run` looks first) and the probe with the cargo that
//! runs the tests, in the same target dir and profile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub struct Built {
    pub library: PathBuf,
    pub probe: PathBuf,
}

pub fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_overcommitctl"))
            .parent()
            .expect("the binary's directory");
        let target_dir = bin_dir.parent().expect("the target dir");
        let release = bin_dir.file_name() == Some("release".as_ref());
        for what in [
            &["-p", "overcommit-preload"][..],
            &["-p", "overcommit", "--example", "job_probe"][..],
        ] {
            let mut cargo = Command::new(env!("CARGO"));
            cargo
                .args(["build", "--locked", "--quiet"])
                .args(what)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .env("CARGO_TARGET_DIR", target_dir)
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("CARGO_BUILD_TARGET");
            if release {
                cargo.arg("--release");
            }
            let status = cargo.status().expect("run cargo");
            assert!(status.success(), "cargo build {what:?} failed");
        }
        let built = Built {
            library: bin_dir.join("libovercommit_preload.so"),
            probe: bin_dir.join("examples/job_probe"),
        };
        assert!(built.library.is_file() && built.probe.is_file());
        built
    })
}

/// The key=value fields of the first `JOBPROBE <first>` line of job_probe's output (found
/// anywhere on a line: a guest's console may prefix it).
pub fn fields(text: &str, first: &str) -> std::collections::BTreeMap<String, String> {
    let line = text
        .lines()
        .find_map(|l| l.find(&format!("JOBPROBE {first}")).map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no JOBPROBE {first} line in:\n{text}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
