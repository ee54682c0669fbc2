//! How fast `overcommitctl top` reads a busy node: a test tree of 1,000 processes with 100
//! mappings each (smaps in the kernel's format, about 1 kB per mapping), then this machine's
//! real /proc. Prints figures; asserts nothing about time. Target: under 200 ms for the tree.
//!
//!     cargo bench --bench top

#[path = "../tests/common/proc_tree.rs"]
mod proc_tree;

use std::path::Path;
use std::time::{Duration, Instant};

use overcommit::charge::GroupBy;
use overcommit::ctl::TopReport;
use overcommit::kernel::ProcRoot;

const PROCESSES: i32 = 1000;
const MAPPINGS: usize = 100;
const RUNS: usize = 15;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let meminfo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kernels/m1024-swap512-mode2-ratio80/proc/meminfo");
    std::fs::copy(meminfo, root.join("meminfo")).expect("copy meminfo");
    let mut bytes = 0;
    for pid in 1000..1000 + PROCESSES {
        let process = proc_tree::FakeProcess::typical(pid, 1000 + (pid as u32 % 7), MAPPINGS);
        process.write(root);
        bytes += std::fs::metadata(root.join(pid.to_string()).join("smaps"))
            .expect("smaps written")
            .len();
    }
    println!(
        "test tree: {PROCESSES} processes x {MAPPINGS} mappings, {:.1} MB of smaps ({})",
        bytes as f64 / 1e6,
        root.display()
    );

    let tree = ProcRoot::new(root);
    let (times, report) = measure(&tree);
    assert_eq!(report.counts.processes_read, PROCESSES as usize);
    assert_eq!(report.counts.mappings_read, PROCESSES as usize * MAPPINGS);
    let median = times[times.len() / 2];
    println!(
        "top on the test tree:   median {:>6.1} ms   min {:>6.1} ms   max {:>6.1} ms   ({:.0} MB/s of smaps; n = {RUNS})",
        ms(median),
        ms(times[0]),
        ms(times[times.len() - 1]),
        bytes as f64 / 1e6 / median.as_secs_f64()
    );
    println!(
        "  target: 1,000 processes x 100 mappings in under 200 ms: {}",
        if median < Duration::from_millis(200) {
            "met"
        } else {
            "NOT met"
        }
    );

    let (times, report) = measure(&ProcRoot::default());
    println!(
        "top on this machine's /proc: {} processes, {} mappings, {} kernel threads skipped, {} unreadable: median {:.1} ms",
        report.counts.processes_read,
        report.counts.mappings_read,
        report.counts.kernel_threads,
        report.counts.processes_unreadable,
        ms(times[times.len() / 2])
    );
}

/// `top`'s whole gather (meminfo, every process, SysV, grouping), RUNS times after one warm-up.
fn measure(root: &ProcRoot) -> (Vec<Duration>, TopReport) {
    let gather = || TopReport::gather(root, None, GroupBy::Process, 20).expect("top");
    let mut report = gather();
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        report = gather();
        times.push(started.elapsed());
    }
    times.sort();
    (times, report)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
