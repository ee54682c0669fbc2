//! `check` against what glibc's malloc and this machine's kernel really do, for allocations
//! just around RAM + swap: malloc maps the request first; when the kernel refuses, it grows the
//! heap with brk by less than the request if the top of the heap has more free than M_TOP_PAD.
//!
//! The subjects are real processes: a small C program that shapes its heap on request
//! (tests/fixtures/malloc_probe.c, built with the system's cc) and, when Debian's numpy is
//! installed, python3 with numpy.zeros. `check --pid` reads each one's heap; where its answer
//! flips (the mmap's edge, the brk's edge), the process then really allocates, never touching
//! the memory. That is harmless only in mode 0, which counts nothing: in another mode the
//! allocations are not made (and with CI=true the test fails, as it then proves nothing).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::cli::{not_run, python_with_numpy};
use common::{ctl, run};
use serde_json::Value;

/// RAM + swap of this machine, when it is in mode 0; otherwise why not.
fn mode0_total() -> Result<u64, String> {
    let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap();
    if mode.trim() != "0" {
        return Err(format!("this machine is in mode {}, not 0", mode.trim()));
    }
    let root = Path::new("/proc");
    Ok(common::meminfo_bytes(root, "MemTotal") + common::meminfo_bytes(root, "SwapTotal"))
}

/// A process that allocates when told: `alloc N` answers `ok mmap|brk|heap` or `fail`.
struct Subject {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    pid: i32,
}

impl Subject {
    fn start(command: &mut Command) -> Subject {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let mut output = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        let pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the subject said {line:?}"));
        Subject {
            child,
            input,
            output,
            pid,
        }
    }

    fn say(&mut self, line: &str) -> String {
        writeln!(self.input, "{line}").unwrap();
        let mut answer = String::new();
        self.output.read_line(&mut answer).unwrap();
        answer.trim().to_string()
    }

    /// `check --json [--pid PID] BYTES` (with --pid: this process).
    fn check(&self, bytes: u64, with_pid: bool) -> Value {
        let mut command = ctl();
        command.args(["check", "--json", "--root"]);
        if with_pid {
            command.args(["--pid", &self.pid.to_string()]);
        }
        let (code, out, err) = run(command.arg(bytes.to_string()));
        assert!(code == 0 || code == 1, "check failed: {err}");
        serde_json::from_str(&out).unwrap()
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What check --pid says about `bytes` in `subject`: (allowed, path).
fn answer(subject: &Subject, bytes: u64) -> (bool, String) {
    let check = subject.check(bytes, true);
    assert_eq!(
        check["allocation"]["malloc"]["from_process"], true,
        "{check:#}"
    );
    assert_ne!(
        check["verdict"], "borderline",
        "exact with --pid: {check:#}"
    );
    (
        check["verdict"] == "allowed",
        check["allocation"]["path"].as_str().unwrap().to_string(),
    )
}

/// The largest size in `low..=high` for which `pred` holds (it holds at `low`, not at `high`).
fn last_true(mut low: u64, mut high: u64, pred: impl Fn(u64) -> bool) -> u64 {
    assert!(pred(low) && !pred(high), "no edge between {low} and {high}");
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if pred(mid) {
            low = mid;
        } else {
            high = mid;
        }
    }
    low
}

/// Finds the mmap's and the brk's edges by asking check, then has fresh subjects (shaped by
/// `start`) allocate at and just past each: the kernel and glibc must do what check said,
/// by the path it said. Returns the sizes tried, for the report.
fn edges_hold(total: u64, start: &dyn Fn() -> Subject) -> Vec<(u64, String)> {
    let probe = start();
    let top_free = probe.check(total, true)["allocation"]["malloc"]["top_free_min_bytes"]
        .as_u64()
        .unwrap();
    let window = (total - (1 << 20), total + top_free + (1 << 20));
    let mmap_edge = last_true(window.0, window.1, |b| {
        answer(&probe, b) == (true, "mmap".into())
    });
    let alloc_edge = last_true(window.0, window.1, |b| answer(&probe, b).0);
    drop(probe);
    let mut tried = Vec::new();
    for bytes in [mmap_edge, mmap_edge + 1, alloc_edge, alloc_edge + 1] {
        let mut subject = start();
        let (allowed, path) = answer(&subject, bytes);
        let said = if allowed {
            format!("ok {path}")
        } else {
            "fail".to_string()
        };
        let without_pid = subject.check(bytes, false)["verdict"].clone();
        let real = subject.say(&format!("alloc {bytes}"));
        assert_eq!(
            real,
            said,
            "malloc({bytes}) = total{:+} with {top_free} B free at the top of the heap",
            bytes as i64 - total as i64
        );
        // Without --pid the answer may be borderline, never wrong.
        let firm = match without_pid.as_str() {
            Some("allowed") => real.starts_with("ok"),
            Some("refused") => real == "fail",
            _ => true,
        };
        assert!(
            firm,
            "check without --pid said {without_pid} for {bytes}: {real}"
        );
        tried.push((bytes, real));
    }
    tried
}

fn c_probe() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let binary = dir.join("malloc_probe");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/malloc_probe.c");
    let built = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .is_ok_and(|s| s.success());
    built.then_some(binary)
}

#[test]
fn glibc_malloc_edges_agree_with_a_real_process() {
    let total = match mode0_total() {
        Ok(total) => total,
        Err(why) => return not_run(&why),
    };
    let Some(probe) = c_probe() else {
        return not_run("cc cannot build tests/fixtures/malloc_probe.c");
    };
    for (top, env) in [
        (0, None),
        (1 << 20, None),
        (8 << 20, None),
        (1 << 20, Some(("MALLOC_TOP_PAD_", "0"))),
        (
            1 << 20,
            Some((
                "GLIBC_TUNABLES",
                "glibc.malloc.top_pad=0:glibc.malloc.trim_threshold=268435456",
            )),
        ),
    ] {
        let start = || {
            let mut command = Command::new(&probe);
            if let Some((name, value)) = env {
                // A set tunable freezes the thresholds: keep the heap's top untrimmed.
                command
                    .env(name, value)
                    .env("MALLOC_TRIM_THRESHOLD_", "268435456");
            }
            let mut subject = Subject::start(&mut command);
            assert_eq!(subject.say(&format!("top {top}")), "done");
            subject
        };
        let tried = edges_hold(total, &start);
        println!(
            "top {top} {env:?}: {}",
            tried
                .iter()
                .map(|(b, r)| format!("total{:+} {r}", *b as i64 - total as i64))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if top >= 1 << 20 {
            assert!(
                tried.iter().any(|(b, r)| *b > total && r == "ok brk"),
                "a request above RAM + swap succeeded through brk: {tried:?}"
            );
        }
    }
}

#[test]
fn numpy_zeros_edges_agree_with_check() {
    let total = match mode0_total() {
        Ok(total) => total,
        Err(why) => return not_run(&why),
    };
    let Some(python) = python_with_numpy() else {
        return not_run("/usr/bin/python3 has no numpy (apt-get install python3-numpy)");
    };
    // A mapped buffer freed raises malloc's thresholds; a smaller one then comes from the heap
    // and, freed, leaves its top with ~2 MB free: as in a Python session that has worked.
    const SCRIPT: &str = r#"
import os, sys, numpy
def heap():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = line.split()[0].split("-")
            return int(start, 16), int(end, 16)
    return 0, 0
x = bytearray(3 * 10**6); del x
y = bytearray(2 * 10**6); del y
print("ready", os.getpid(), flush=True)
for line in sys.stdin:
    n = int(line.split()[1])
    start, end = heap()
    try:
        a = numpy.zeros(n, dtype=numpy.uint8)
    except MemoryError:
        print("fail", flush=True)
        continue
    p = a.ctypes.data
    path = "brk" if heap()[1] != end else "heap" if start <= p < end else "mmap"
    print("ok " + path, flush=True)
    del a
"#;
    let tried = edges_hold(total, &|| {
        Subject::start(Command::new(python).args(["-c", SCRIPT]))
    });
    assert!(
        tried.iter().any(|(b, r)| *b > total && r == "ok brk"),
        "numpy.zeros above RAM + swap succeeded through brk: {tried:?}"
    );
    println!("numpy: {tried:?}");
}
