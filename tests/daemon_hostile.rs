//! The real `overcommitd` against hostile clients: oversized lines, slowloris, non-reading
//! pipeliners from a uid with no access rule, 10,000 idle connections, 100k-request floods,
//! connection caps, and large replies to slow readers. Asserts bounded memory, no dropped or
//! reordered reply, exact caps, and a well-behaved client served; prints the figures.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::Value;

const CONFIG: &str = r#"
[daemon]
baseline = "default"
drift_interval = "0"
client_timeout = "10s"

[profiles.default]
mode = "heuristic"
description = "the kernel's default"

[profiles.strict]
mode = "never"
ratio = 90

[[access]]
users = [1000]
modes = ["always"]
"#;

const FIXTURE: &str = "m1024-swap512-mode0";

fn start_with(config: &str) -> Daemon {
    Daemon::start(FIXTURE, config, &[])
}

/// Runs `f` on a thread whose effective uid and gid are `uid` (and no supplementary
/// groups): connections it opens carry those credentials (SO_PEERCRED), as a real user's do.
fn as_uid<T: Send + 'static>(uid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: raw syscalls change this thread's credentials only (glibc's wrappers would
        // change every thread's); the thread ends with `f`.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, u32::MAX, uid, u32::MAX),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, u32::MAX, uid, u32::MAX),
                0
            );
        }
        f()
    })
    .join()
    .unwrap()
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A connection of a well-behaved client.
struct Good {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Good {
    fn connect(daemon: &Daemon) -> Good {
        let writer = UnixStream::connect(daemon.socket()).unwrap();
        writer
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(writer.try_clone().unwrap());
        Good { writer, reader }
    }

    fn call(&mut self, line: &str) -> Value {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
        let mut reply = String::new();
        self.reader.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
    }

    /// Round-trip times of `n` status requests; all must succeed.
    fn latencies(&mut self, n: usize) -> Vec<Duration> {
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let reply = self.call(r#"{"v":1,"op":"status"}"#);
                assert_eq!(reply["ok"], true, "{reply}");
                t.elapsed()
            })
            .collect()
    }
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Writes `line` until the socket would block or `max` lines are out; how many went.
fn pipeline(stream: &mut UnixStream, line: &[u8], max: usize) -> usize {
    stream.set_nonblocking(true).unwrap();
    let mut sent = 0;
    let mut partial = 0;
    while sent < max {
        match stream.write(&line[partial..]) {
            Ok(n) => {
                partial += n;
                if partial == line.len() {
                    partial = 0;
                    sent += 1;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if partial == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("pipeline: {e}"),
        }
    }
    stream.set_nonblocking(false).unwrap();
    sent
}

/// Reads replies until `expected` lines arrived; checks each is a success.
fn read_replies(stream: UnixStream, expected: usize) -> usize {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut count = 0;
    let mut line = String::new();
    while count < expected {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                assert!(line.starts_with(r#"{"v":1,"ok":true"#), "{line}");
                count += 1;
            }
        }
    }
    count
}

#[test]
fn a_line_of_16_kib_is_read_and_one_byte_more_is_refused() {
    let daemon = start_with(CONFIG);
    let request = |size: usize| {
        // A valid request padded with spaces to `size` bytes, newline included.
        let body = r#"{"v":1,"op":"status"}"#;
        let mut line = body.as_bytes().to_vec();
        line.resize(size - 1, b' ');
        line.push(b'\n');
        let mut stream = UnixStream::connect(daemon.socket()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(&line).unwrap();
        let mut reply = String::new();
        BufReader::new(&stream).read_line(&mut reply).unwrap();
        let mut rest = Vec::new();
        // Closed: end of file, or a reset (the daemon did not read the rest of the line).
        let closed = match stream.read_to_end(&mut rest) {
            Ok(0) => true,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        (serde_json::from_str::<Value>(&reply).unwrap(), closed)
    };
    let (reply, _) = request(16 * 1024);
    assert_eq!(reply["ok"], true, "{reply}");
    let (reply, closed) = request(16 * 1024 + 1);
    assert_eq!(reply["error"]["code"], "too_large", "{reply}");
    assert!(closed, "and the connection is closed");
}

#[test]
fn slowloris_is_closed_after_the_timeout_counted_from_the_last_complete_request() {
    let daemon = start_with(&CONFIG.replace("client_timeout = \"10s\"", "client_timeout = \"1s\""));
    let mut slow = UnixStream::connect(daemon.socket()).unwrap();
    let started = Instant::now();
    let mut closed_after = None;
    for byte in br#"{"v":1,"op":"status"}"#.iter().cycle().take(40) {
        if slow.write_all(&[*byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let closed_after = closed_after.expect("the daemon closed the slow connection");
    println!("slowloris (one byte every 150 ms) closed after {closed_after:?}");
    assert!(
        closed_after < Duration::from_millis(2500),
        "{closed_after:?}"
    );
}

#[test]
fn non_reading_pipeliners_from_a_uid_without_a_rule_are_bounded_and_lose_nothing() {
    let daemon = start_with(CONFIG);
    let pid = daemon.pid();
    let socket = daemon.socket();
    let mut good = Good::connect(&daemon);
    let unloaded = good.latencies(300);
    // 64 connections of uid 1001 (no access rule), each pipelining `profiles` as fast as the
    // socket takes them, reading nothing.
    const PER_CONNECTION: usize = 1500;
    let mut pipeliners: Vec<(UnixStream, usize)> = as_uid(1001, move || {
        (0..64)
            .map(|_| {
                let mut s = UnixStream::connect(&socket).unwrap();
                let sent = pipeline(&mut s, b"{\"v\":1,\"op\":\"profiles\"}\n", PER_CONNECTION);
                (s, sent)
            })
            .collect()
    });
    let mut peak = rss_kib(pid);
    let start = Instant::now();
    let mut loaded = Vec::new();
    while start.elapsed() < Duration::from_secs(3) {
        for (stream, sent) in pipeliners.iter_mut() {
            *sent += pipeline(
                stream,
                b"{\"v\":1,\"op\":\"profiles\"}\n",
                PER_CONNECTION - *sent,
            );
        }
        loaded.extend(good.latencies(20));
        peak = peak.max(rss_kib(pid));
    }
    let total: usize = pipeliners.iter().map(|(_, n)| n).sum();
    let answered: usize = pipeliners
        .into_iter()
        .map(|(s, sent)| {
            let got = read_replies(s, sent);
            assert_eq!(got, sent, "every pipelined request gets its reply");
            got
        })
        .sum();
    println!(
        "64 non-reading pipeliners (uid 1001): {total} requests, {answered} answered; daemon RSS peak {peak} KiB; good client p50 {} p99 {} loaded vs p50 {} p99 {} unloaded",
        micros(percentile(&loaded, 0.5)),
        micros(percentile(&loaded, 0.99)),
        micros(percentile(&unloaded, 0.5)),
        micros(percentile(&unloaded, 0.99)),
    );
    assert_eq!(answered, total);
    assert!(peak < 32 * 1024, "RSS {peak} KiB");
}

#[test]
fn ten_thousand_idle_connections_and_a_non_reading_pipeliner() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 10_200,
        "the test needs 10,200 descriptors (hard limit {hard})"
    );
    let daemon = start_with(&CONFIG.replace(
        "client_timeout = \"10s\"",
        "client_timeout = \"1day\"\nmax_clients = 10100",
    ));
    let pid = daemon.pid();
    let mut good = Good::connect(&daemon);
    good.latencies(200);
    let unloaded = good.latencies(1000);
    let idle_rss_before = rss_kib(pid);
    let idle: Vec<UnixStream> = (0..10_000)
        .map(|_| UnixStream::connect(daemon.socket()).unwrap())
        .collect();
    let mut pipeliner = UnixStream::connect(daemon.socket()).unwrap();
    let sent = pipeline(&mut pipeliner, b"{\"v\":1,\"op\":\"leases\"}\n", 100_000);
    std::thread::sleep(Duration::from_millis(300));
    let clients = good.call(r#"{"v":1,"op":"status"}"#)["result"]["clients"]
        .as_u64()
        .unwrap();
    let loaded = good.latencies(1000);
    let rss = rss_kib(pid);
    let (p99_unloaded, p99_loaded) = (percentile(&unloaded, 0.99), percentile(&loaded, 0.99));
    println!(
        "10,000 idle connections + 1 non-reading pipeliner ({sent} requests queued): {clients} clients open; daemon RSS {rss} KiB (idle {idle_rss_before} KiB); good client p50 {} p99 {} loaded, p50 {} p99 {} unloaded ({:.2}x)",
        micros(percentile(&loaded, 0.5)),
        micros(p99_loaded),
        micros(percentile(&unloaded, 0.5)),
        micros(p99_unloaded),
        p99_loaded.as_secs_f64() / p99_unloaded.as_secs_f64()
    );
    assert!(clients >= 10_002, "all held: {clients}");
    assert!(rss < 32 * 1024, "RSS {rss} KiB");
    assert_eq!(read_replies(pipeliner, sent), sent);
    drop(idle);
}

#[test]
fn a_flood_of_100k_requests_on_one_connection_gets_100k_replies_in_order() {
    let daemon = start_with(CONFIG);
    let stream = UnixStream::connect(daemon.socket()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    const N: usize = 100_000;
    let flood = std::thread::spawn(move || {
        let pair = b"{\"v\":1,\"op\":\"status\"}\n{\"v\":1,\"op\":\"leases\"}\n";
        for _ in 0..N / 2 {
            writer.write_all(pair).unwrap();
        }
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let started = Instant::now();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    for i in 0..N {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "reply {i} missing"
        );
        let reply: Value = serde_json::from_str(&line).unwrap();
        let key = if i % 2 == 0 { "effective" } else { "leases" };
        assert!(
            reply["result"][key].is_object() || reply["result"][key].is_array(),
            "reply {i} out of order: {line}"
        );
    }
    flood.join().unwrap();
    println!(
        "100,000 pipelined requests on one connection: all answered in order in {:?}",
        started.elapsed()
    );
}

#[test]
fn connection_caps_are_exact_per_uid_and_in_all() {
    let daemon = start_with(&CONFIG.replace(
        "drift_interval = \"0\"",
        "drift_interval = \"0\"\nmax_clients = 100",
    ));
    let socket = daemon.socket();
    // 100 connections of one uid at once: exactly 64 stay, 36 are refused with `limit`.
    let streams: Vec<UnixStream> = as_uid(1000, move || {
        (0..100)
            .map(|_| UnixStream::connect(&socket).unwrap())
            .collect()
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut refused = 0;
    let mut open = 0;
    for s in &streams {
        s.set_nonblocking(true).unwrap();
        let mut buffer = [0u8; 512];
        match (&*s).read(&mut buffer) {
            Ok(n) if n > 0 => {
                assert!(String::from_utf8_lossy(&buffer[..n]).contains("\"limit\""));
                refused += 1;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => open += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((open, refused), (64, 36));
    drop(streams);
    std::thread::sleep(Duration::from_millis(200));

    // In all: 3 uids open 50 each against max_clients 100; the longest-idle ones are closed to
    // make room, so never more than 100 are open.
    let mut all = Vec::new();
    for uid in [1000, 1001, 1002] {
        let socket = daemon.socket();
        all.extend(as_uid(uid, move || {
            (0..50)
                .map(|_| UnixStream::connect(&socket).unwrap())
                .collect::<Vec<_>>()
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut good = Good::connect(&daemon);
    let clients = good.call(r#"{"v":1,"op":"status"}"#)["result"]["clients"]
        .as_u64()
        .unwrap();
    let alive = all
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            matches!((&**s).read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
        })
        .count();
    println!("150 connections of 3 uids against max_clients 100: {alive} open, status counts {clients} (with root's)");
    assert_eq!(alive, 100);
    assert_eq!(
        clients, 101,
        "root's own connection is beyond the cap, in its reserve"
    );
}

#[test]
fn a_large_leases_reply_reaches_a_slow_reader_whole() {
    // 1,100 leases with long tags and reasons (written into the journal, re-adopted at start):
    // the `leases` reply is over 2 MiB.
    let mut daemon = Daemon::prepare(FIXTURE, CONFIG, &[]);
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let boottime = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).unwrap();
    let leases: Vec<Value> = (0..1100)
        .map(|i| {
            serde_json::json!({
                "id": format!("{i:032x}"),
                "owner_uid": 0,
                "requester_pid": 1,
                "requester_comm": "prolog",
                "policy": {"mode": "always", "limit": {"ratio": 50}},
                "holder": null,
                "tag": "标".repeat(128),
                "reason": "理".repeat(512),
                "granted_at": 1,
                "expires": {"secs": boottime.tv_sec() + 3600, "nanos": 0},
                "expires_at": 4_000_000_000u64,
            })
        })
        .collect();
    let state = serde_json::json!({
        "version": 2,
        "boot_id": boot_id.trim(),
        "admin_baseline": null,
        "leases": leases,
        "effective": {"mode": "always", "limit": {"ratio": 50}},
    });
    std::fs::create_dir(daemon.path("state")).unwrap();
    std::fs::set_permissions(
        daemon.path("state"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    std::fs::write(daemon.path("state/state.json"), state.to_string()).unwrap();
    daemon.spawn();
    let mut stream = UnixStream::connect(daemon.socket()).unwrap();
    stream.write_all(b"{\"v\":1,\"op\":\"leases\"}\n").unwrap();
    // Read late and slowly: 64 KiB every 20 ms.
    std::thread::sleep(Duration::from_millis(500));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reply = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while !reply.ends_with(b"\n") {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {} bytes", reply.len());
        reply.extend_from_slice(&chunk[..n]);
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "`leases` reply of {} bytes read whole by a slow reader",
        reply.len()
    );
    assert!(reply.len() > 2 << 20);
    let value: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(value["result"]["leases"].as_array().unwrap().len(), 1100);
}
