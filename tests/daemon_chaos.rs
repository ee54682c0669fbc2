//! Chaos: more than 1,000 lease operations (grants by tag with short TTLs, grants bound to
//! holder processes, releases, holder SIGKILLs, TTL expiries) against the real daemon, which
//! is itself SIGKILLed at random moments, more than 50 times, with requests in flight. After
//! every restart: the kernel holds effective(baseline, live leases), no lease of a dead holder
//! and none past its TTL is live, no acknowledged lease is lost and no acknowledged release
//! comes back. Prints the figures; asserts no violation.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Daemon;
use nix::sys::signal::Signal;
use serde_json::Value;

const CONFIG: &str = r#"
[daemon]
baseline = "strict"
drift_interval = "0"

[profiles.strict]
mode = "never"
ratio = 50
"#;

const FIXTURE: &str = "m1024-swap512-mode0";
const OPERATIONS: usize = 1100;
const DAEMON_KILLS: usize = 55;

/// xorshift64*: reproducible from the seed printed at the start.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A lease request's policy: mode and optional ratio.
fn policy_fields(rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => r#""mode":"always""#.into(),
        1 => r#""mode":"heuristic""#.into(),
        _ => format!(r#""mode":"never","ratio":{}"#, 55 + rng.below(40)),
    }
}

/// One request on a new connection; `None` when the daemon went away before replying.
fn call(daemon: &Daemon, line: &str) -> Option<Value> {
    let mut stream = UnixStream::connect(daemon.socket()).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream.write_all(line.as_bytes()).ok()?;
    stream.write_all(b"\n").ok()?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).ok()?;
    serde_json::from_str(&reply).ok()
}

/// A holder: socat holding a connection on which it asked for a lease bound to itself.
struct Holder {
    socat: Child,
    lease: Option<String>,
}

fn spawn_holder(daemon: &Daemon, fields: &str) -> Option<Holder> {
    let mut socat = Command::new("socat")
        .args(["-t", "100000", "-"])
        .arg(format!("UNIX-CONNECT:{}", daemon.socket().display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (package socat)");
    let line = format!("{{\"v\":1,\"op\":\"lease\",{fields},\"ttl_secs\":3600,\"hold\":true}}\n");
    let mut stdin = socat.stdin.take().unwrap();
    let _ = stdin.write_all(line.as_bytes());
    // Keep stdin open: socat (the holder) lives until it is killed.
    std::mem::forget(stdin);
    // socat keeps its output open when the daemon dies mid-grant: wait for the reply a while.
    let stdout = socat.stdout.take().unwrap();
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&stdout),
        nix::poll::PollFlags::POLLIN,
    )];
    let mut reply = String::new();
    if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(3000u16)).unwrap_or(0) > 0 {
        let _ = BufReader::new(stdout).read_line(&mut reply);
    }
    let lease = serde_json::from_str::<Value>(&reply)
        .ok()
        .and_then(|v| v["result"]["lease"]["id"].as_str().map(String::from));
    Some(Holder { socat, lease })
}

#[derive(Default)]
struct Tally {
    grants: usize,
    holder_grants: usize,
    releases: usize,
    holder_kills: usize,
    expiries: usize,
    daemon_kills: usize,
    in_flight_unknown: usize,
    violations: Vec<String>,
}

/// What the test knows of the leases.
#[derive(Default)]
struct Known {
    /// Acknowledged and not ended by us: id → expires_at (unix seconds).
    live: HashMap<String, u64>,
    /// Acknowledged releases and leases of killed holders: must never be listed again.
    gone: HashSet<String>,
    /// Releases cut by a kill: they may or may not have happened.
    maybe_gone: HashSet<String>,
}

fn listed(daemon: &Daemon) -> Option<Vec<Value>> {
    call(daemon, r#"{"v":1,"op":"leases"}"#)?["result"]["leases"]
        .as_array()
        .cloned()
}

/// The knobs effective(baseline never 50, leases) gives: mode, ratio.
fn expected_knobs(leases: &[Value]) -> (String, String) {
    let modes: Vec<&str> = leases
        .iter()
        .filter_map(|l| l["policy"]["mode"].as_str())
        .collect();
    if modes.contains(&"always") {
        return ("1".into(), "50".into());
    }
    if modes.contains(&"heuristic") {
        return ("0".into(), "50".into());
    }
    let ratio = leases
        .iter()
        .filter_map(|l| l["policy"]["limit"]["ratio"].as_u64())
        .chain([50])
        .max()
        .unwrap();
    ("2".into(), ratio.to_string())
}

fn verify(daemon: &Daemon, known: &mut Known, holders: &mut [Holder], tally: &mut Tally) {
    // The kernel against the daemon's own table, taken again if a TTL ended in between.
    let mut last = String::new();
    let mut leases = Vec::new();
    for attempt in 0..10 {
        leases = listed(daemon).expect("the restarted daemon answers");
        let want = expected_knobs(&leases);
        let have = (daemon.mode(), daemon.knob("overcommit_ratio"));
        if want == have && daemon.knob("overcommit_kbytes") == "0" {
            last.clear();
            break;
        }
        last = format!(
            "kernel {have:?}, effective of {} live leases {want:?}",
            leases.len()
        );
        std::thread::sleep(Duration::from_millis(10 * (attempt + 1)));
    }
    if !last.is_empty() {
        tally.violations.push(last);
    }
    let now = unix_now();
    let ids: HashSet<String> = leases
        .iter()
        .filter_map(|l| l["id"].as_str().map(String::from))
        .collect();
    for lease in &leases {
        let id = lease["id"].as_str().unwrap().to_string();
        if lease["expires_at"].as_u64().unwrap() + 1 < now {
            tally.violations.push(format!("lease {id} is past its TTL"));
        }
        if known.gone.contains(&id) {
            tally
                .violations
                .push(format!("lease {id} was ended but is live"));
        }
        if let Some(pid) = lease["holder_pid"].as_i64() {
            let alive = holders
                .iter_mut()
                .any(|h| h.socat.id() as i64 == pid && h.socat.try_wait().unwrap().is_none());
            if !alive {
                tally
                    .violations
                    .push(format!("lease {id} of dead holder {pid} is live"));
            }
        }
        // A grant in flight at a kill that did get journaled: track it from now on.
        if !known.live.contains_key(&id) && lease["holder_pid"].is_null() {
            known
                .live
                .insert(id.clone(), lease["expires_at"].as_u64().unwrap());
        }
    }
    // Nothing acknowledged is lost; what is missing must have expired.
    known.live.retain(|id, expires_at| {
        if ids.contains(id) {
            return true;
        }
        if known.maybe_gone.contains(id) {
            known.gone.insert(id.clone());
        } else if *expires_at > now + 1 {
            tally
                .violations
                .push(format!("acknowledged lease {id} was lost"));
        } else {
            tally.expiries += 1;
        }
        false
    });
    for holder in holders.iter_mut() {
        if let Some(id) = &holder.lease {
            if holder.socat.try_wait().unwrap().is_none() && !ids.contains(id) {
                tally.violations.push(format!("holder lease {id} was lost"));
            }
        }
    }
    let status = call(daemon, r#"{"v":1,"op":"status"}"#).unwrap();
    if !status["result"]["pending_write"].is_null() {
        tally
            .violations
            .push(format!("a write is pending: {status}"));
    }
}

#[test]
fn leases_survive_chaos_and_the_kernel_always_converges() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("chaos seed {seed}");
    let mut rng = Rng(seed);
    let mut daemon = Daemon::start(FIXTURE, CONFIG, &[]);
    let mut known = Known::default();
    let mut holders: Vec<Holder> = Vec::new();
    let mut tally = Tally::default();
    let mut tag = 0usize;
    let started = Instant::now();
    let mut operations = 0;
    let mut next_kill = 10 + rng.below(10) as usize;
    while operations < OPERATIONS || tally.daemon_kills < DAEMON_KILLS {
        // A kill at a random moment of the next few operations.
        let killer = (operations >= next_kill).then(|| {
            let pid = daemon.pid();
            let delay = Duration::from_micros(rng.below(4000));
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            })
        });
        for _ in 0..if killer.is_some() { 6 } else { 1 } {
            operations += 1;
            match rng.below(10) {
                0..=3 => {
                    tag += 1;
                    let ttl = 1 + rng.below(4);
                    let line = format!(
                        r#"{{"v":1,"op":"lease",{},"ttl_secs":{ttl},"tag":"chaos-{tag}"}}"#,
                        policy_fields(&mut rng)
                    );
                    match call(&daemon, &line) {
                        Some(reply) if reply["ok"] == true => {
                            let lease = &reply["result"]["lease"];
                            known.live.insert(
                                lease["id"].as_str().unwrap().into(),
                                lease["expires_at"].as_u64().unwrap(),
                            );
                            tally.grants += 1;
                        }
                        Some(reply) => tally.violations.push(format!("grant refused: {reply}")),
                        None => tally.in_flight_unknown += 1,
                    }
                }
                4..=5 if holders.len() < 6 => {
                    if let Some(holder) = spawn_holder(&daemon, &policy_fields(&mut rng)) {
                        match &holder.lease {
                            Some(_) => tally.holder_grants += 1,
                            None => tally.in_flight_unknown += 1,
                        }
                        holders.push(holder);
                    }
                }
                6..=7 if !known.live.is_empty() => {
                    let ids: Vec<&String> = known.live.keys().collect();
                    let id = ids[rng.below(ids.len() as u64) as usize].clone();
                    let line = format!(r#"{{"v":1,"op":"release","id":"{id}"}}"#);
                    match call(&daemon, &line) {
                        Some(reply) if reply["ok"] == true => {
                            known.live.remove(&id);
                            known.gone.insert(id);
                            tally.releases += 1;
                        }
                        // Expired meanwhile: found again at the next check.
                        Some(_) => {}
                        None => {
                            known.maybe_gone.insert(id);
                            tally.in_flight_unknown += 1;
                        }
                    }
                }
                _ if !holders.is_empty() => {
                    let i = rng.below(holders.len() as u64) as usize;
                    let mut holder = holders.swap_remove(i);
                    let _ = holder.socat.kill();
                    let _ = holder.socat.wait();
                    if let Some(id) = holder.lease {
                        known.gone.insert(id);
                    }
                    tally.holder_kills += 1;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        if let Some(killer) = killer {
            killer.join().unwrap();
            daemon.wait();
            tally.daemon_kills += 1;
            next_kill = operations + 10 + rng.below(20) as usize;
            daemon.spawn();
            verify(&daemon, &mut known, &mut holders, &mut tally);
        }
        // Holders whose socat ended on its own (a grant cut by a kill) are gone.
        holders.retain_mut(|h| h.socat.try_wait().unwrap().is_none());
    }
    verify(&daemon, &mut known, &mut holders, &mut tally);
    for mut holder in holders {
        let _ = holder.socat.kill();
        let _ = holder.socat.wait();
    }
    println!(
        "chaos: {operations} lease operations ({} grants by tag, {} bound to holders, {} releases, {} holder SIGKILLs, {} TTL expiries seen, {} cut by a kill), {} daemon SIGKILLs, {} violations, in {:?}",
        tally.grants,
        tally.holder_grants,
        tally.releases,
        tally.holder_kills,
        tally.expiries,
        tally.in_flight_unknown,
        tally.daemon_kills,
        tally.violations.len(),
        started.elapsed()
    );
    assert!(
        tally.violations.is_empty(),
        "{:#?}\n{}",
        tally.violations,
        daemon.log()
    );
    assert!(operations >= 1000 && tally.daemon_kills >= 50);
}
