//! What the job scope's preload library costs small allocations: malloc/free pairs of 64 B
//! to 64 KiB (examples/job_probe.rs `bench`), single- and multithreaded, without and with the
//! library, also while a 2 GiB block is allocated (with the library it is one of its own, and
//! then every free looks at the pointer's low bits). Release builds; each thread's CPU time
//! (not the wall clock, which counts waiting for a CPU on a shared machine); the
//! configurations alternate, round after round; medians and minimums are compared. Prints
//! figures; asserts nothing about time.
//!
//!     cargo bench --bench preload_overhead

use std::path::{Path, PathBuf};
use std::process::Command;

const ROUNDS: usize = 15;
const OPS: usize = 4_000_000;

fn build() -> (PathBuf, PathBuf) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The bench binary runs from <target>/release/deps.
    let release = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    for what in [
        &["-p", "overcommit-preload"][..],
        &["-p", "overcommit", "--example", "job_probe"][..],
    ] {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--locked", "--quiet"])
            .args(what)
            .current_dir(manifest)
            .env("CARGO_TARGET_DIR", release.parent().unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "cargo build {what:?}");
    }
    (
        release.join("libovercommit_preload.so"),
        release.join("examples/job_probe"),
    )
}

/// One run of the workload; ns per malloc+free pair.
fn sample(probe: &Path, library: Option<&Path>, threads: usize, live: Option<u64>) -> f64 {
    let mut command = Command::new(probe);
    command
        .args(["bench", &threads.to_string(), &OPS.to_string()])
        .env_remove("LD_PRELOAD")
        .env_remove("OVERCOMMIT_MIN_SIZE");
    if let Some(live) = live {
        command.arg(live.to_string());
    }
    if let Some(library) = library {
        command
            .env("LD_PRELOAD", library)
            .env("OVERCOMMIT_MIN_SIZE", (1u64 << 30).to_string());
    }
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = text
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("ns_per_pair="))
        .unwrap_or_else(|| panic!("no figure in {text}"));
    field.parse().unwrap()
}

/// (median, minimum) of the samples.
fn summary(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

fn main() {
    let (library, probe) = build();
    println!(
        "preload library overhead: malloc+free pairs of 64 B..64 KiB, {OPS} per thread, {ROUNDS} alternating rounds ({} CPUs); CPU ns per pair, median (minimum)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // Each pair: without and with the library, the same workload; the second pair with a
    // 2 GiB block allocated meanwhile (the library's own, so that free looks at pointers).
    for threads in [1, 2, 4] {
        for live in [None, Some(2u64 << 30)] {
            let (mut without, mut with) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                without.push(sample(&probe, None, threads, live));
                with.push(sample(&probe, Some(&library), threads, live));
            }
            let (without, with) = (summary(without), summary(with));
            let diff = |a: f64, b: f64| (b - a) / a * 100.0;
            println!(
                "  {threads} thread(s), {:<18}: without {:6.2} ({:6.2})   with {:6.2} ({:6.2})   difference {:+.1}% ({:+.1}%)",
                if live.is_some() { "a 2 GiB block live" } else { "no large block" },
                without.0,
                without.1,
                with.0,
                with.1,
                diff(without.0, with.0),
                diff(without.1, with.1)
            );
        }
    }
}
