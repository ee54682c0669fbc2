//! What the job scope's preload library costs small allocations: malloc/free pairs of 64 B
//! to 64 KiB (examples/job_probe.rs `bench`), single- and multithreaded, without the library,
//! with it, and with it while one large block of its own is live (then every free looks at
//! the pointer's page offset). Release builds; the configurations alternate, round after
//! round, and the median of each is compared. Prints figures; asserts nothing about time.
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (library, probe) = build();
    println!(
        "preload library overhead: malloc+free pairs of 64 B..64 KiB, {OPS} per thread, median of {ROUNDS} alternating rounds ({} CPUs)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for threads in [1, 2, 4] {
        let (mut plain, mut with, mut live) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            plain.push(sample(&probe, None, threads, None));
            with.push(sample(&probe, Some(&library), threads, None));
            live.push(sample(&probe, Some(&library), threads, Some(2 << 30)));
        }
        let (plain, with, live) = (median(plain), median(with), median(live));
        let diff = |x: f64| (x - plain) / plain * 100.0;
        println!(
            "  {threads} thread(s): without {plain:6.2} ns   with {with:6.2} ns ({:+.1}%)   with a 2 GiB block live {live:6.2} ns ({:+.1}%)",
            diff(with),
            diff(live)
        );
    }
}
