//! Figures for the performance claims: how fast the daemon answers, what a lease costs (journal
//! fsync + kernel write + read-back), how much memory the daemon holds, and how fast the
//! predictor and `overcommitctl status` are. Prints numbers; asserts nothing about time.
//!
//!     cargo bench --bench latency

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use overcommit::kernel::ProcRoot;
use overcommit::predict::{predict, Process};

const CONFIG: &str = common::HEURISTIC_CONFIG;

struct Connection {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Connection {
    fn open(daemon: &common::Daemon) -> Connection {
        let writer = UnixStream::connect(daemon.socket()).unwrap();
        let reader = BufReader::new(writer.try_clone().unwrap());
        Connection { writer, reader }
    }

    fn call(&mut self, line: &str) -> String {
        self.writer.write_all(line.as_bytes()).unwrap();
        let mut reply = String::new();
        self.reader.read_line(&mut reply).unwrap();
        assert!(reply.contains("\"ok\":true"), "{reply}");
        reply
    }
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    format!(
        "mean {:>7.1} µs   p50 {:>7.1} µs   p99 {:>7.1} µs   max {:>8.1} µs   (n = {})",
        mean.as_secs_f64() * 1e6,
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        samples.last().unwrap().as_secs_f64() * 1e6,
        samples.len()
    )
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    let daemon = common::Daemon::start("m1024-swap512-mode0", CONFIG, &[]);
    println!("overcommitd (release build) round trips over its Unix socket, fake proc root in a temp dir:");

    let mut conn = Connection::open(&daemon);
    for _ in 0..200 {
        conn.call("{\"v\":1,\"op\":\"leases\"}\n");
    }
    let leases: Vec<Duration> = (0..10_000)
        .map(|_| {
            let t = Instant::now();
            conn.call("{\"v\":1,\"op\":\"leases\"}\n");
            t.elapsed()
        })
        .collect();
    println!("  leases (read-only)          {}", percentiles(leases));

    let status: Vec<Duration> = (0..5_000)
        .map(|_| {
            let t = Instant::now();
            conn.call("{\"v\":1,\"op\":\"status\"}\n");
            t.elapsed()
        })
        .collect();
    println!("  status (reads the vm knobs) {}", percentiles(status));

    let mut grant = Vec::new();
    let mut release = Vec::new();
    for i in 0..500 {
        let t = Instant::now();
        conn.call(&format!(
            "{{\"v\":1,\"op\":\"lease\",\"mode\":\"always\",\"ttl_secs\":600,\"tag\":\"b{i}\"}}\n"
        ));
        grant.push(t.elapsed());
        let t = Instant::now();
        conn.call(&format!(
            "{{\"v\":1,\"op\":\"release\",\"tag\":\"b{i}\"}}\n"
        ));
        release.push(t.elapsed());
    }
    println!("  lease  (journal + write)    {}", percentiles(grant));
    println!("  release (journal + write)   {}", percentiles(release));

    let idle = rss_kib(daemon.pid());
    for i in 0..1000 {
        conn.call(&format!("{{\"v\":1,\"op\":\"lease\",\"mode\":\"heuristic\",\"ttl_secs\":600,\"tag\":\"m{i}\"}}\n"));
    }
    let busy = rss_kib(daemon.pid());
    println!("  daemon memory: VmRSS {idle} KiB idle, {busy} KiB with 1000 live leases");

    let node = ProcRoot::new(common::fixture_proc("m1024-swap512-mode2-ratio80"))
        .node()
        .unwrap();
    let process = Process {
        vm_size: Some(1 << 30),
        ..Process::default()
    };
    let n = 1_000_000u64;
    let t = Instant::now();
    let mut allowed = 0u64;
    for i in 0..n {
        if predict(&node, &process, i << 12).verdict == overcommit::predict::Verdict::Allowed {
            allowed += 1;
        }
    }
    let per = t.elapsed() / n as u32;
    println!(
        "predictor: {:.0} ns per prediction ({allowed} of {n} allowed)",
        per.as_secs_f64() * 1e9
    );

    let runs: Vec<Duration> = (0..50)
        .map(|_| {
            let t = Instant::now();
            let out = common::ctl()
                .arg("--proc-root")
                .arg(common::fixture_proc("m1024-swap512-mode0"))
                .arg("status")
                .output()
                .unwrap();
            assert!(out.status.success());
            t.elapsed()
        })
        .collect();
    println!(
        "overcommitctl status, whole process:  {}",
        percentiles(runs)
    );
}
