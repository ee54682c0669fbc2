//! The figures of docs/performance.md, each against an anchor measured in the same run:
//!
//! - a lease cycle (grant + release on one connection) against two round trips of a bare echo
//!   server that writes a file per request, of a minimal durable server doing the daemon's
//!   durable work (a journal record with fdatasync, the knob reads, write and read-back), and
//!   of Feral GameMode's register + unregister over D-Bus (when gamemoded can run here);
//! - a holder's SIGKILL until the baseline is written back, against a pidfd watcher that
//!   writes one file;
//! - a grant with 10,000 live leases against one with 10;
//! - a `leases` query with 10,000 idle connections open against the same query unloaded;
//! - the daemon's RSS idle against the echo server's, with 10,000 leases, and after they end;
//! - `overcommitctl status` and `check 352G` against `sysctl -n` of the same three keys, in
//!   paired runs.
//!
//! Every comparison is interleaved (one sample of each in turn), repeated, pinned to one CPU
//! and unpinned, with the state directory and the fake proc root on tmpfs as /run is in
//! production (and the lease cycle once more with both on disk). The anchors are this same
//! program started with `--anchor KIND`. Prints figures; asserts nothing about time.
//!
//!     cargo bench --bench latency
//!
//! Environment: OVERCOMMIT_BENCH_DIR (a tmpfs directory; default /run if it is tmpfs, else
//! /dev/shm), OVERCOMMIT_BENCH_DISK_DIR (default target/tmp), OVERCOMMIT_BENCH_CPU (the CPU
//! to pin to; default the last), OVERCOMMIT_BENCH_REPEATS (default 3),
//! OVERCOMMIT_BENCH_SCALE (a factor on the sample counts; default 1).

#[path = "../tests/common/mod.rs"]
mod common;

use std::ffi::{CStr, CString};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/kernels/m1024-swap512-mode0/proc"
);
const DAEMON: &str = env!("CARGO_BIN_EXE_overcommitd");
const CTL: &str = env!("CARGO_BIN_EXE_overcommitctl");

const CONFIG: &str = r#"
[daemon]
baseline = "default"
drift_interval = "0"
max_clients = 16384
client_timeout = "1h"

[profiles.default]
mode = "heuristic"
"#;

const GRANT: &str = "{\"v\":1,\"op\":\"lease\",\"mode\":\"always\",\"ttl_secs\":600}\n";
const HOLD: &str =
    "{\"v\":1,\"op\":\"lease\",\"mode\":\"always\",\"ttl_secs\":600,\"hold\":true}\n";
const LEASES: &str = "{\"v\":1,\"op\":\"leases\"}\n";

/// The sizes of the daemon's journal records and replies for a grant and a release of
/// [`GRANT`] (strace of the daemon): the minimal durable server writes and sends as many bytes.
const GRANT_RECORD: usize = 342;
const RELEASE_RECORD: usize = 80;
const GRANT_REPLY: usize = 347;
const RELEASE_REPLY: usize = 131;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--anchor") {
        anchors::run(&args[2..]);
        return;
    }
    let bench = Bench::new();
    bench.run();
}

// ---------------------------------------------------------------------------------------
// Statistics

#[derive(Debug, Clone, Copy, Default)]
struct Figure {
    p50: f64,
    p99: f64,
}

fn figure(mut samples: Vec<Duration>) -> Figure {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    Figure {
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// One comparison's figures over the repeats.
#[derive(Default)]
struct Row {
    ours: Vec<Figure>,
    anchor: Vec<Figure>,
}

impl Row {
    fn push(&mut self, ours: Figure, anchor: Figure) {
        self.ours.push(ours);
        self.anchor.push(anchor);
    }

    fn ours(&self) -> Figure {
        Figure {
            p50: median(self.ours.iter().map(|f| f.p50).collect()),
            p99: median(self.ours.iter().map(|f| f.p99).collect()),
        }
    }

    fn anchor(&self) -> Figure {
        Figure {
            p50: median(self.anchor.iter().map(|f| f.p50).collect()),
            p99: median(self.anchor.iter().map(|f| f.p99).collect()),
        }
    }

    /// Ratios ours/anchor of the medians, and their range over the repeats.
    fn ratios(&self) -> (f64, f64, (f64, f64), (f64, f64)) {
        let per = |f: fn(&Figure) -> f64| -> Vec<f64> {
            self.ours
                .iter()
                .zip(&self.anchor)
                .map(|(o, a)| f(o) / f(a))
                .collect()
        };
        let range = |v: Vec<f64>| {
            (
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(0.0, f64::max),
            )
        };
        let (o, a) = (self.ours(), self.anchor());
        (
            o.p50 / a.p50,
            o.p99 / a.p99,
            range(per(|f| f.p50)),
            range(per(|f| f.p99)),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Processes: the daemons and anchors under test, their placement and memory

fn run_dir(dir: &Path) -> PathBuf {
    dir.join(format!("overcommit-bench-{}", std::process::id()))
}

fn fs_type(path: &Path) -> String {
    match nix::sys::statfs::statfs(path) {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC => "tmpfs".into(),
        Ok(s) if s.filesystem_type() == nix::sys::statfs::EXT4_SUPER_MAGIC => "ext4".into(),
        Ok(s) => format!("fs type {:#x}", s.filesystem_type().0),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Resident memory, KiB: in all, and the private part (RssAnon: heap, stack; the rest is
/// the binaries' and libraries' pages, shared with the page cache).
#[derive(Debug, Clone, Copy, Default)]
struct Rss {
    all: u64,
    anon: u64,
}

impl Rss {
    fn of(pid: u32) -> Rss {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Rss {
            all: field("VmRSS:"),
            anon: field("RssAnon:"),
        }
    }

    fn median(samples: &[Rss]) -> Rss {
        Rss {
            all: median(samples.iter().map(|r| r.all as f64).collect()) as u64,
            anon: median(samples.iter().map(|r| r.anon as f64).collect()) as u64,
        }
    }

    fn mib(kib: u64) -> f64 {
        kib as f64 / 1024.0
    }
}

/// What the memory rows report.
struct Memory {
    idle: Rss,
    echo: Rss,
    before: Rss,
    with: Rss,
    after: Rss,
    loaded: Rss,
    leases: usize,
}

/// Restricts every thread of `pid` to `cpus` (all CPUs when empty).
fn place(pid: u32, cpus: &[usize]) {
    let tasks: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for task in tasks {
        // SAFETY: a cpu_set_t filled with CPU_SET, passed with its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let all = online_cpus();
            let chosen: Vec<usize> = if cpus.is_empty() {
                (0..all).collect()
            } else {
                cpus.to_vec()
            };
            for &cpu in &chosen {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(task as i32, std::mem::size_of_val(&set), &set);
        }
    }
}

/// The CPUs online (not only those this process may run on now).
fn online_cpus() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .map_or(1, |n| n.max(1) as usize)
}

/// Which CPUs `pid` may run on and the one it ran on last.
fn placement(pid: u32) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let allowed = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let last = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(36))
        .unwrap_or("?")
        .to_string();
    format!("CPUs {allowed}, last on {last}")
}

/// A child process killed when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_socket(path: &Path, what: &str, child: &mut Child) {
    for _ in 0..1000 {
        if let Ok(mut s) = UnixStream::connect(path) {
            // An anchor that echoes, or the daemon: either answers a line.
            if what == "watcher" || s.write_all(LEASES.as_bytes()).is_ok() {
                if what != "watcher" {
                    let mut line = String::new();
                    let _ = BufReader::new(s).read_line(&mut line);
                }
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{what} did not come up at {}", path.display());
}

/// A daemon on its own fake proc root and state directory under `dir`.
struct Daemon {
    proc: Proc,
    dir: PathBuf,
}

impl Daemon {
    fn start(name: &str, dir: &Path) -> Daemon {
        let dir = dir.join(name);
        common::copy_dir(Path::new(FIXTURE), &dir.join("proc"));
        fs::write(dir.join("overcommitd.toml"), CONFIG).unwrap();
        let log = fs::File::create(dir.join("daemon.log")).unwrap();
        let mut child = Command::new(DAEMON)
            .arg("--config")
            .arg(dir.join("overcommitd.toml"))
            .arg("--socket")
            .arg(dir.join("sock"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--proc-root")
            .arg(dir.join("proc"))
            .args(["--log", "stderr"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_socket(&dir.join("sock"), name, &mut child);
        Daemon {
            proc: Proc {
                name: format!("overcommitd ({name})"),
                child,
            },
            dir,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }

    fn mode_file(&self) -> PathBuf {
        self.dir.join("proc/sys/vm/overcommit_memory")
    }
}

/// An anchor: this program with `--anchor KIND ARGS`.
fn anchor(kind: &str, args: &[&Path]) -> Proc {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--anchor")
        .arg(kind)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(args[0], kind, &mut child);
    Proc {
        name: format!("anchor: {kind}"),
        child,
    }
}

/// One connection, one request line and one reply line at a time.
struct Conn {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    line: String,
}

impl Conn {
    fn open(path: &Path) -> Conn {
        let writer = UnixStream::connect(path).unwrap();
        let reader = BufReader::new(writer.try_clone().unwrap());
        Conn {
            writer,
            reader,
            line: String::new(),
        }
    }

    fn call(&mut self, request: &str) -> &str {
        self.writer.write_all(request.as_bytes()).unwrap();
        self.line.clear();
        self.reader.read_line(&mut self.line).unwrap();
        &self.line
    }

    /// A grant then a release of it (to an anchor, two lines of the same shape).
    fn cycle(&mut self) -> Duration {
        let start = Instant::now();
        let reply = self.call(GRANT);
        let id = reply
            .split_once("\"id\":\"")
            .map_or("00000000000000000000000000000000", |(_, rest)| &rest[..32])
            .to_string();
        assert!(
            !reply.contains("\"ok\":false"),
            "the grant was refused: {reply}"
        );
        let release = format!("{{\"v\":1,\"op\":\"release\",\"id\":\"{id}\"}}\n");
        self.call(&release);
        start.elapsed()
    }

    fn timed(&mut self, request: &str) -> Duration {
        let start = Instant::now();
        let reply = self.call(request);
        assert!(!reply.contains("\"ok\":false"), "{reply}");
        start.elapsed()
    }
}

// ---------------------------------------------------------------------------------------
// GameMode, when it can run here

/// gamemoded on a private D-Bus session bus, and its client library.
struct GameMode {
    _bus: Proc,
    daemon: Proc,
    /// A process registered as a game for the whole run: the cycles measured register and
    /// unregister a second one, so GameMode stays active and its one-off activation work (a
    /// CPU governor change through pkexec) is not counted against it.
    _game: Proc,
    start: unsafe extern "C" fn() -> libc::c_int,
    end: unsafe extern "C" fn() -> libc::c_int,
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

impl GameMode {
    fn start(dir: &Path) -> Result<GameMode, String> {
        for program in ["gamemoded", "dbus-daemon"] {
            if !on_path(program) {
                return Err(format!(
                    "{program} is not installed (Debian: apt-get install gamemode dbus)"
                ));
            }
        }
        let name = CString::new("libgamemode.so.0").unwrap();
        // SAFETY: dlopen of a library by name; its symbols are looked up below.
        let lib = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW) };
        if lib.is_null() {
            // SAFETY: dlerror returns a C string describing the last failure.
            let why = unsafe { CStr::from_ptr(libc::dlerror()) };
            return Err(format!("libgamemode.so.0 cannot be loaded: {why:?}"));
        }
        let symbol = |name: &str| {
            let name = CString::new(name).unwrap();
            // SAFETY: dlsym on the handle just opened.
            let found = unsafe { libc::dlsym(lib, name.as_ptr()) };
            (!found.is_null())
                .then_some(found)
                .ok_or(format!("libgamemode has no {name:?}"))
        };
        type Request = unsafe extern "C" fn() -> libc::c_int;
        type RequestFor = unsafe extern "C" fn(libc::pid_t) -> libc::c_int;
        // SAFETY: libgamemode's client functions are `int f(void)` and `int f(pid_t)`.
        let (start, end, start_for) = unsafe {
            (
                std::mem::transmute::<*mut libc::c_void, Request>(symbol(
                    "real_gamemode_request_start",
                )?),
                std::mem::transmute::<*mut libc::c_void, Request>(symbol(
                    "real_gamemode_request_end",
                )?),
                std::mem::transmute::<*mut libc::c_void, RequestFor>(symbol(
                    "real_gamemode_request_start_for",
                )?),
            )
        };
        let mut bus = Command::new("dbus-daemon")
            .args(["--session", "--print-address=1", "--nofork", "--nopidfile"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("dbus-daemon: {e}"))?;
        let mut address = String::new();
        BufReader::new(bus.stdout.take().unwrap())
            .read_line(&mut address)
            .map_err(|e| format!("dbus-daemon: {e}"))?;
        let bus = Proc {
            name: "dbus-daemon".into(),
            child: bus,
        };
        let address = address.trim().to_string();
        if address.is_empty() {
            return Err("dbus-daemon printed no address".into());
        }
        std::env::set_var("DBUS_SESSION_BUS_ADDRESS", &address);
        let config = dir.join("gamemode-config");
        fs::create_dir_all(&config).unwrap();
        let daemon = Proc {
            name: "gamemoded".into(),
            child: Command::new("gamemoded")
                .env("XDG_CONFIG_HOME", &config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("gamemoded: {e}"))?,
        };
        let game = anchor_sleeper();
        let mut registered = -1;
        for _ in 0..200 {
            // SAFETY: the function looked up above, with a pid.
            registered = unsafe { start_for(game.pid() as libc::pid_t) };
            if registered == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if registered != 0 {
            return Err("gamemoded did not answer on the session bus".into());
        }
        Ok(GameMode {
            _bus: bus,
            daemon,
            _game: game,
            start,
            end,
        })
    }

    fn cycle(&self) -> Duration {
        let start = Instant::now();
        // SAFETY: libgamemode's request functions, no arguments.
        let (a, b) = unsafe { ((self.start)(), (self.end)()) };
        let took = start.elapsed();
        assert_eq!((a, b), (0, 0), "gamemode refused a request");
        took
    }
}

fn anchor_sleeper() -> Proc {
    Proc {
        name: "sleeper".into(),
        child: Command::new(std::env::current_exe().unwrap())
            .args(["--anchor", "sleep"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    }
}

// ---------------------------------------------------------------------------------------
// Holder death, seen as the write of the watched file

struct Inotify(OwnedFd);

impl Inotify {
    fn watch(path: &Path) -> Inotify {
        // SAFETY: plain system calls; the fd is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: the kernel just returned this fd to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), name.as_ptr(), libc::IN_MODIFY) };
        assert!(wd >= 0, "inotify_add_watch {}", path.display());
        Inotify(fd)
    }

    fn drain(&self) {
        let mut buffer = [0u8; 4096];
        // SAFETY: reading into a buffer of its size from our non-blocking fd.
        while unsafe { libc::read(self.0.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) }
            > 0
        {}
    }

    /// Blocks until the file is written to.
    fn wait(&self) {
        let mut fds = [nix::poll::PollFd::new(
            self.0.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap();
        assert_eq!(ready, 1, "the baseline was not written back within 5 s");
    }
}

/// Starts a holder (a process that asks `socket` for a lease bound to itself and waits), kills
/// it, and times its death until `watched` is written.
fn holder_death(socket: &Path, watched: &Inotify) -> Duration {
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args(["--anchor", "holder"])
        .arg(socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reply = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut reply)
        .unwrap();
    assert!(
        reply.starts_with("ok "),
        "the holder was not granted: {reply}"
    );
    // Let the grant's own writes land and the holder fall asleep.
    std::thread::sleep(Duration::from_millis(2));
    watched.drain();
    let start = Instant::now();
    holder.kill().unwrap();
    watched.wait();
    let took = start.elapsed();
    holder.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1));
    watched.drain();
    took
}

// ---------------------------------------------------------------------------------------
// Command-line wall time, in pairs

/// The wall time of a command that answers (exit status 0, or 1 for `check`'s "refused").
fn wall(command: &mut Command) -> Duration {
    let start = Instant::now();
    let status = command.status().unwrap();
    let took = start.elapsed();
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "{command:?}: {status}"
    );
    took
}

fn quiet(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for var in [
        "OVERCOMMIT_PROC_ROOT",
        "OVERCOMMIT_SYSCTL_ROOT",
        "OVERCOMMIT_SOCKET",
        "OVERCOMMIT_CONFIG",
    ] {
        command.env_remove(var);
    }
    command
}

/// `overcommitctl ARGS` against `sysctl -n` of the three keys, alternating which goes first:
/// the figures of each and the median of the per-pair ratios.
fn paired(ctl_args: &[&str], pairs: usize) -> (Figure, Figure, f64) {
    let sysctl = [
        "-n",
        "vm.overcommit_memory",
        "vm.overcommit_ratio",
        "vm.overcommit_kbytes",
    ];
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..pairs {
        let (o, t) = if i % 2 == 0 {
            let o = wall(&mut quiet(CTL, ctl_args));
            (o, wall(&mut quiet("sysctl", &sysctl)))
        } else {
            let t = wall(&mut quiet("sysctl", &sysctl));
            (wall(&mut quiet(CTL, ctl_args)), t)
        };
        ratios.push(o.as_secs_f64() / t.as_secs_f64());
        ours.push(o);
        theirs.push(t);
    }
    (figure(ours), figure(theirs), median(ratios))
}

// ---------------------------------------------------------------------------------------
// The run

struct Bench {
    dir: PathBuf,
    disk: PathBuf,
    cpu: usize,
    repeats: usize,
    scale: f64,
}

/// What one placement's repeats measured.
#[derive(Default)]
struct Results {
    echo: Row,
    durable: Row,
    renaming: Row,
    gamemode: Row,
    death: Row,
    grant: Row,
    idle: Row,
    status: Vec<(Figure, Figure, f64)>,
    check: Vec<(Figure, Figure, f64)>,
    placement: Vec<String>,
}

impl Bench {
    fn new() -> Bench {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let tmpfs = env("OVERCOMMIT_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                if fs_type(Path::new("/run")) == "tmpfs" {
                    PathBuf::from("/run")
                } else {
                    PathBuf::from("/dev/shm")
                }
            });
        let disk = env("OVERCOMMIT_BENCH_DISK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
        let cpus = online_cpus();
        Bench {
            dir: run_dir(&tmpfs),
            disk: run_dir(&disk),
            cpu: env("OVERCOMMIT_BENCH_CPU")
                .and_then(|c| c.parse().ok())
                .unwrap_or(cpus - 1),
            repeats: env("OVERCOMMIT_BENCH_REPEATS")
                .and_then(|c| c.parse().ok())
                .unwrap_or(3),
            scale: env("OVERCOMMIT_BENCH_SCALE")
                .and_then(|c| c.parse().ok())
                .unwrap_or(1.0),
        }
    }

    fn n(&self, count: usize) -> usize {
        ((count as f64 * self.scale) as usize).max(20)
    }

    fn run(&self) {
        fs::create_dir_all(&self.dir).unwrap();
        fs::create_dir_all(&self.disk).unwrap();
        raise_fd_limit();
        let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        println!("overcommit latency bench: overcommitd (release build) and its anchors, measured side by side");
        println!(
            "  machine: {} CPUs, Linux {}, load average {}",
            online_cpus(),
            release.trim(),
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "  state directories and fake proc roots: {} ({}); disk figure: {} ({})",
            self.dir.display(),
            fs_type(&self.dir),
            self.disk.display(),
            fs_type(&self.disk)
        );
        println!(
            "  {} repeats per placement, alternating pinned (CPU {}) and unpinned; samples interleaved",
            self.repeats, self.cpu
        );

        let main = Daemon::start("main", &self.dir);
        let ten = Daemon::start("ten", &self.dir);
        let many = Daemon::start("many", &self.dir);
        let loaded = Daemon::start("loaded", &self.dir);
        let disk = Daemon::start("disk", &self.disk);
        let knobs = self.dir.join("anchor-proc");
        common::copy_dir(Path::new(FIXTURE), &knobs);
        let disk_knobs = self.disk.join("anchor-proc");
        common::copy_dir(Path::new(FIXTURE), &disk_knobs);
        let echo = anchor(
            "echo",
            &[&self.dir.join("echo.sock"), &self.dir.join("echo.out")],
        );
        let durable = anchor(
            "durable",
            &[
                &self.dir.join("durable.sock"),
                &self.dir.join("durable"),
                &knobs,
            ],
        );
        let renaming = anchor(
            "renaming",
            &[
                &self.dir.join("renaming.sock"),
                &self.dir.join("renaming"),
                &knobs,
            ],
        );
        let durable_disk = anchor(
            "durable",
            &[
                &self.disk.join("durable.sock"),
                &self.disk.join("durable"),
                &disk_knobs,
            ],
        );
        let watched = self.dir.join("watched");
        fs::write(&watched, "1\n").unwrap();
        let watcher = anchor("watcher", &[&self.dir.join("watcher.sock"), &watched]);
        let gamemode = GameMode::start(&self.dir);

        // Live leases: 10 on one daemon, 10,000 on another, of the baseline's mode (so that a
        // grant of `always` still changes the kernel).
        let mut ten_conn = Conn::open(&ten.socket());
        let mut many_conn = Conn::open(&many.socket());
        for _ in 0..100 {
            many_conn.cycle();
        }
        let rss_before = Rss::of(many.proc.pid());
        for i in 0..10_000 {
            let line = format!(
                "{{\"v\":1,\"op\":\"lease\",\"mode\":\"heuristic\",\"ttl_secs\":86400,\"tag\":\"slurm-job-{i}\"}}\n"
            );
            many_conn.call(&line);
            if i < 10 {
                ten_conn.call(&line);
            }
        }
        // 10,000 idle connections on another.
        let idle: Vec<UnixStream> = (0..10_000)
            .map(|_| UnixStream::connect(loaded.socket()).unwrap())
            .collect();

        let mut conns = Conns {
            main: Conn::open(&main.socket()),
            echo: Conn::open(&self.dir.join("echo.sock")),
            durable: Conn::open(&self.dir.join("durable.sock")),
            renaming: Conn::open(&self.dir.join("renaming.sock")),
            disk: Conn::open(&disk.socket()),
            durable_disk: Conn::open(&self.disk.join("durable.sock")),
            ten: ten_conn,
            many: many_conn,
            loaded: Conn::open(&loaded.socket()),
        };
        // Warm up every path once.
        for _ in 0..self.n(300) {
            conns.main.cycle();
            conns.echo.cycle();
            conns.durable.cycle();
            conns.renaming.cycle();
            conns.loaded.timed(LEASES);
            conns.main.timed(LEASES);
        }
        // Resident memory varies from one look to the next (which page-cache folios of the
        // binaries get mapped): looked at after every repeat, the median reported.
        let (mut rss_main, mut rss_echo) = (Vec::new(), Vec::new());

        let mut procs: Vec<&Proc> = vec![
            &main.proc,
            &ten.proc,
            &many.proc,
            &loaded.proc,
            &disk.proc,
            &echo,
            &durable,
            &renaming,
            &durable_disk,
            &watcher,
        ];
        if let Ok(g) = &gamemode {
            procs.push(&g.daemon);
            procs.push(&g._bus);
        }
        let mut pinned = Results::default();
        let mut unpinned = Results::default();
        let mut disk_row = Row::default();
        for repeat in 0..self.repeats {
            for (cpus, results) in [(vec![self.cpu], &mut pinned), (vec![], &mut unpinned)] {
                for p in &procs {
                    place(p.pid(), &cpus);
                }
                place(std::process::id(), &cpus);
                self.repeat(
                    &mut conns,
                    &main,
                    &watcher,
                    &watched,
                    gamemode.as_ref().ok(),
                    results,
                );
                if repeat == 0 {
                    results.placement = procs
                        .iter()
                        .map(|p| format!("{}: {}", p.name, placement(p.pid())))
                        .chain([format!(
                            "bench and clients: {}",
                            placement(std::process::id())
                        )])
                        .collect();
                }
            }
            // The disk figure, pinned.
            for p in &procs {
                place(p.pid(), &[self.cpu]);
            }
            place(std::process::id(), &[self.cpu]);
            let (mut d, mut a) = (Vec::new(), Vec::new());
            for _ in 0..self.n(400) {
                d.push(conns.disk.cycle());
                a.push(conns.durable_disk.cycle());
            }
            disk_row.push(figure(d), figure(a));
            rss_main.push(Rss::of(main.proc.pid()));
            rss_echo.push(Rss::of(echo.pid()));
        }
        place(std::process::id(), &[]);

        // Memory: 10,000 leases, then all of them ended.
        let rss_with = Rss::of(many.proc.pid());
        let ids = lease_ids(&mut conns.many);
        for id in &ids {
            conns
                .many
                .call(&format!("{{\"v\":1,\"op\":\"release\",\"id\":\"{id}\"}}\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
        let rss_after = Rss::of(many.proc.pid());

        // Issue 8's case: the 10,000 idle connections and a client pipelining requests it
        // never reads, against the same query unloaded.
        let mut pipeliner = UnixStream::connect(loaded.socket()).unwrap();
        pipeliner.set_nonblocking(true).unwrap();
        let flood = "{\"v\":1,\"op\":\"profiles\"}\n".repeat(1000);
        for _ in 0..100 {
            if pipeliner.write_all(flood.as_bytes()).is_err() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut pipelined = Row::default();
        let (mut o, mut a) = (Vec::new(), Vec::new());
        for _ in 0..self.n(3000) {
            o.push(conns.loaded.timed(LEASES));
            a.push(conns.main.timed(LEASES));
        }
        pipelined.push(figure(o), figure(a));
        let rss_loaded = Rss::of(loaded.proc.pid());
        drop(idle);

        self.report(
            &pinned,
            &unpinned,
            &disk_row,
            &pipelined,
            &gamemode,
            &Memory {
                idle: Rss::median(&rss_main),
                echo: Rss::median(&rss_echo),
                before: rss_before,
                with: rss_with,
                after: rss_after,
                loaded: rss_loaded,
                leases: ids.len(),
            },
        );
        predictor_speed();
        drop(conns);
        drop(gamemode);
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(&self.disk);
    }

    /// One repeat in the current placement.
    fn repeat(
        &self,
        conns: &mut Conns,
        main: &Daemon,
        watcher: &Proc,
        watched: &Path,
        gamemode: Option<&GameMode>,
        results: &mut Results,
    ) {
        let _ = watcher;
        // Lease cycles, BLOCK of each in turn.
        let n = self.n(3000);
        let mut runs: Vec<Box<dyn FnMut() -> Duration + '_>> = vec![
            Box::new(|| conns.main.cycle()),
            Box::new(|| conns.echo.cycle()),
            Box::new(|| conns.durable.cycle()),
        ];
        if let Some(gm) = gamemode {
            runs.push(Box::new(|| gm.cycle()));
        }
        let mut samples = interleaved(n, &mut runs);
        drop(runs);
        let renaming = interleaved(
            n / 4,
            &mut [
                Box::new(|| conns.main.cycle()) as Box<dyn FnMut() -> Duration>,
                Box::new(|| conns.renaming.cycle()),
            ],
        );
        let ours = figure(samples.remove(0));
        results.echo.push(ours, figure(samples.remove(0)));
        results.durable.push(ours, figure(samples.remove(0)));
        if let Some(g) = samples.pop() {
            results.gamemode.push(ours, figure(g));
        }
        let [ours_then, renamed] = <[Vec<Duration>; 2]>::try_from(renaming).unwrap();
        results.renaming.push(figure(ours_then), figure(renamed));

        // Holder deaths.
        let daemon_file = Inotify::watch(&main.mode_file());
        let watcher_file = Inotify::watch(watched);
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for _ in 0..self.n(400) {
            ours.push(holder_death(&main.socket(), &daemon_file));
            floor.push(holder_death(
                &watched.with_file_name("watcher.sock"),
                &watcher_file,
            ));
        }
        results.death.push(figure(ours), figure(floor));

        // Grants with 10,000 and with 10 live leases.
        let [many, ten] = <[Vec<Duration>; 2]>::try_from(interleaved(
            self.n(2000),
            &mut [
                Box::new(|| conns.many.cycle()) as Box<dyn FnMut() -> Duration>,
                Box::new(|| conns.ten.cycle()),
            ],
        ))
        .unwrap();
        results.grant.push(figure(many), figure(ten));

        // `leases` with 10,000 idle connections open and unloaded.
        let [loaded, unloaded] = <[Vec<Duration>; 2]>::try_from(interleaved(
            self.n(3000),
            &mut [
                Box::new(|| conns.loaded.timed(LEASES)) as Box<dyn FnMut() -> Duration>,
                Box::new(|| conns.main.timed(LEASES)),
            ],
        ))
        .unwrap();
        results.idle.push(figure(loaded), figure(unloaded));

        // The command line.
        let pairs = self.n(100);
        results.status.push(paired(&["status"], pairs));
        results.check.push(paired(&["check", "352G"], pairs));
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        pinned: &Results,
        unpinned: &Results,
        disk: &Row,
        pipelined: &Row,
        gamemode: &Result<GameMode, String>,
        memory: &Memory,
    ) {
        let us = |f: Figure| format!("{:.1} / {:.1} µs", f.p50, f.p99);
        let times = |(a, b, (a0, a1), (b0, b1)): (f64, f64, (f64, f64), (f64, f64))| {
            format!("{a:.2}× / {b:.2}× (repeats {a0:.2}-{a1:.2} / {b0:.2}-{b1:.2})")
        };
        let faster = |row: &Row| {
            let (a, b, (a0, a1), (b0, b1)) = row.ratios();
            format!(
                "{:.1}× / {:.1}× faster (repeats {:.1}-{:.1} / {:.1}-{:.1})",
                1.0 / a,
                1.0 / b,
                1.0 / a1,
                1.0 / a0,
                1.0 / b1,
                1.0 / b0
            )
        };
        let cli = |runs: &[(Figure, Figure, f64)]| {
            let ours = Figure {
                p50: median(runs.iter().map(|r| r.0.p50).collect()),
                p99: median(runs.iter().map(|r| r.0.p99).collect()),
            };
            let theirs = Figure {
                p50: median(runs.iter().map(|r| r.1.p50).collect()),
                p99: median(runs.iter().map(|r| r.1.p99).collect()),
            };
            let ratios: Vec<f64> = runs.iter().map(|r| r.2).collect();
            (
                ours,
                theirs,
                median(ratios.clone()),
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            )
        };
        for (name, results) in [
            (format!("pinned to CPU {}", self.cpu), pinned),
            ("unpinned".to_string(), unpinned),
        ] {
            println!();
            println!("## {name}");
            println!();
            for line in &results.placement {
                println!("  placement: {line}");
            }
            println!();
            println!("| metric | overcommitd p50 / p99 | anchor in the same run p50 / p99 | ratio p50 / p99 | target |");
            println!("|---|---|---|---|---|");
            println!(
                "| lease cycle (grant + release, one connection) | {} | two echo round trips with one file write each: {} | {} | — |",
                us(results.echo.ours()),
                us(results.echo.anchor()),
                times(results.echo.ratios())
            );
            println!(
                "| same | {} | a minimal durable server doing the same durable work twice (record + fdatasync, 3 knob reads, knob write, read-back): {} | {} | ≤ 1.5× |",
                us(results.durable.ours()),
                us(results.durable.anchor()),
                times(results.durable.ratios())
            );
            match gamemode {
                Ok(_) => println!(
                    "| same | {} | GameMode register + unregister over D-Bus (gamemoded {}, measured here): {} | {} (the durable server itself: {:.1}× / {:.1}×) | ≥ 10× faster |",
                    us(results.gamemode.ours()),
                    gamemode_version(),
                    us(results.gamemode.anchor()),
                    faster(&results.gamemode),
                    results.gamemode.anchor().p50 / results.durable.anchor().p50,
                    results.gamemode.anchor().p99 / results.durable.anchor().p99,
                ),
                Err(why) => println!(
                    "| same | {} | GameMode register + unregister over D-Bus: 170 / 255 µs (issue 12's figure, not measured here: {why}) | {:.1}× / {:.1}× faster | ≥ 10× faster |",
                    us(results.echo.ours()),
                    170.0 / results.echo.ours().p50,
                    255.0 / results.echo.ours().p99
                ),
            }
            println!(
                "| (for scale) | {} | the same durable work with a whole-file journal (write, fsync, rename, directory fsync), as before: {} | {} | — |",
                us(results.renaming.ours()),
                us(results.renaming.anchor()),
                times(results.renaming.ratios())
            );
            println!(
                "| holder SIGKILL → baseline written back | {} | a pidfd watcher doing one write: {} | {} | p99 ≤ 1.3× |",
                us(results.death.ours()),
                us(results.death.anchor()),
                times(results.death.ratios())
            );
            println!(
                "| grant + release with 10,000 live leases | {} | the same with 10 live leases: {} | {} | ≤ 1.2× |",
                us(results.grant.ours()),
                us(results.grant.anchor()),
                times(results.grant.ratios())
            );
            println!(
                "| `leases` query with 10,000 idle connections open | {} | unloaded: {} | {} | p99 ≤ 1.3× |",
                us(results.idle.ours()),
                us(results.idle.anchor()),
                times(results.idle.ratios())
            );
            for (what, runs) in [("status", &results.status), ("check 352G", &results.check)] {
                let (ours, theirs, ratio, low, high) = cli(runs);
                println!(
                    "| `overcommitctl {what}` wall time, paired runs | {} | `sysctl -n` of the 3 overcommit keys: {} | {ratio:.2}× (median of pair ratios; repeats {low:.2}-{high:.2}) | ≤ 1.2× |",
                    us(ours),
                    us(theirs)
                );
            }
        }
        println!();
        println!("## memory (RSS)");
        println!();
        println!("| metric | overcommitd | anchor in the same run | ratio | target |");
        println!("|---|---|---|---|---|");
        let m = memory;
        println!(
            "| RSS idle (after the warm-up; median of the repeats) | {:.2} MiB (private {:.2}) | the bare echo server: {:.2} MiB (private {:.2}) | {:.2}× | ≤ 1.5× |",
            Rss::mib(m.idle.all),
            Rss::mib(m.idle.anon),
            Rss::mib(m.echo.all),
            Rss::mib(m.echo.anon),
            m.idle.all as f64 / m.echo.all as f64
        );
        println!(
            "| RSS with {} leases | {:.2} MiB (private {:.2}) | the same daemon before them: {:.2} MiB (private {:.2}) | {:.0} bytes of private memory per lease | ≤ 8 MiB |",
            m.leases,
            Rss::mib(m.with.all),
            Rss::mib(m.with.anon),
            Rss::mib(m.before.all),
            Rss::mib(m.before.anon),
            (m.with.anon.saturating_sub(m.before.anon) * 1024) as f64 / m.leases.max(1) as f64
        );
        println!(
            "| RSS once they ended | {:.2} MiB (private {:.2}) | with them: {:.2} MiB (private {:.2}) | {:.0}% of the private memory they took given back | returned |",
            Rss::mib(m.after.all),
            Rss::mib(m.after.anon),
            Rss::mib(m.with.all),
            Rss::mib(m.with.anon),
            100.0 * m.with.anon.saturating_sub(m.after.anon) as f64
                / m.with.anon.saturating_sub(m.before.anon).max(1) as f64
        );
        println!();
        println!("## on disk, and issue 8's case");
        println!();
        println!(
            "| lease cycle, state directory and fake proc root on {} ({}), pinned | {} | the minimal durable server on the same disk: {} | {} | — |",
            self.disk.display(),
            fs_type(&self.disk),
            us(disk.ours()),
            us(disk.anchor()),
            times(disk.ratios())
        );
        println!(
            "| `leases` query, 10,000 idle connections and a non-reading pipeliner, unpinned | {} | unloaded: {} | {} | p99 ≤ 2× (issue 8) |",
            us(pipelined.ours()),
            us(pipelined.anchor()),
            times(pipelined.ratios())
        );
        println!(
            "| RSS with them | {:.2} MiB (private {:.2}) | — | — | < 32 MiB (issue 8) |",
            Rss::mib(memory.loaded.all),
            Rss::mib(memory.loaded.anon)
        );
    }
}

struct Conns {
    main: Conn,
    echo: Conn,
    durable: Conn,
    renaming: Conn,
    disk: Conn,
    durable_disk: Conn,
    ten: Conn,
    many: Conn,
    loaded: Conn,
}

/// Samples taken in turn from each of `runs`, [`BLOCK`] at a time, `n` of each: the noise of a
/// shared machine falls on all alike, and each run finds its caches as its own last block left
/// them, not as the others did.
fn interleaved(n: usize, runs: &mut [Box<dyn FnMut() -> Duration + '_>]) -> Vec<Vec<Duration>> {
    const BLOCK: usize = 20;
    let mut samples: Vec<Vec<Duration>> = runs.iter().map(|_| Vec::with_capacity(n)).collect();
    while samples[0].len() < n {
        for (run, out) in runs.iter_mut().zip(&mut samples) {
            for _ in 0..BLOCK.min(n - out.len()) {
                out.push(run());
            }
        }
    }
    samples
}

/// How long `check`'s predictor takes for one allocation (no anchor: for scale).
fn predictor_speed() {
    use overcommit::kernel::ProcRoot;
    use overcommit::predict::{predict, Process, Verdict};
    let node = ProcRoot::new(FIXTURE.replace("mode0", "mode2-ratio80"))
        .node()
        .unwrap();
    let process = Process {
        vm_size: Some(1 << 30),
        ..Process::default()
    };
    let n = 1_000_000u64;
    let start = Instant::now();
    let allowed = (0..n)
        .filter(|i| predict(&node, &process, i << 12).verdict == Verdict::Allowed)
        .count();
    println!();
    println!(
        "predictor: {:.0} ns per prediction ({allowed} of {n} allowed)",
        start.elapsed().as_secs_f64() * 1e9 / n as f64
    );
}

/// The ids in a daemon's `leases` reply.
fn lease_ids(conn: &mut Conn) -> Vec<String> {
    let reply = conn.call(LEASES).to_string();
    reply
        .split("\"id\":\"")
        .skip(1)
        .map(|rest| rest[..32].to_string())
        .collect()
}

fn gamemode_version() -> String {
    Command::new("gamemoded")
        .arg("-v")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace("gamemode version: ", "")
        })
        .unwrap_or_default()
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

// ---------------------------------------------------------------------------------------
// The anchors: this program started with `--anchor KIND ARGS`

mod anchors {
    use super::*;

    pub fn run(args: &[String]) {
        let path = |i: usize| PathBuf::from(&args[i]);
        match args[0].as_str() {
            "echo" => echo(&path(1), &path(2)),
            "durable" => durable(&path(1), &path(2), &path(3), false),
            "renaming" => durable(&path(1), &path(2), &path(3), true),
            "watcher" => watcher(&path(1), &path(2)),
            "holder" => holder(&path(1)),
            "sleep" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            other => panic!("no anchor {other}"),
        }
    }

    fn listen(socket: &Path) -> UnixListener {
        let _ = fs::remove_file(socket);
        UnixListener::bind(socket).unwrap()
    }

    /// Serves one connection at a time, one line at a time, with `answer`.
    fn serve(socket: &Path, mut answer: impl FnMut(&[u8]) -> Vec<u8>) {
        let listener = listen(socket);
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if stream.write_all(&answer(&line)).is_err() {
                    break;
                }
            }
        }
    }

    /// The bare echo server: each line written to a file, and back.
    fn echo(socket: &Path, out: &Path) {
        let file = fs::File::create(out).unwrap();
        serve(socket, |line| {
            file.write_all_at(line, 0).unwrap();
            line.to_vec()
        });
    }

    /// The minimal durable server: per request the daemon's durable work and nothing else. A
    /// journal record (length, CRC-32, the line) appended with one write and one fdatasync,
    /// the three policy knobs read with pread, the mode written (1 for a lease, 0 for a
    /// release) and cut to length as the daemon does in a fake tree, and the knobs read back.
    /// With `renaming`, the record is a whole file written, fsynced and renamed into place,
    /// then the directory fsynced: the durable work of the whole-file journal before.
    fn durable(socket: &Path, dir: &Path, proc: &Path, renaming: bool) {
        fs::create_dir_all(dir).unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join("journal.log"))
            .unwrap();
        let directory = fs::File::open(dir).unwrap();
        let vm = proc.join("sys/vm");
        let open = |name: &str| fs::File::open(vm.join(name)).unwrap();
        let knobs = [
            open("overcommit_memory"),
            open("overcommit_ratio"),
            open("overcommit_kbytes"),
        ];
        let mode = fs::OpenOptions::new()
            .write(true)
            .open(vm.join("overcommit_memory"))
            .unwrap();
        let mut end = 0u64;
        let read_knobs = || {
            let mut buffer = [0u8; 64];
            let mut sum = 0usize;
            for knob in &knobs {
                sum += knob.read_at(&mut buffer, 0).unwrap();
            }
            sum
        };
        // Records and replies as long as the daemon's (a grant's, a release's), so that the
        // same bytes go to the log and over the socket.
        let sized = |length: usize, id: bool| {
            let mut text = if id {
                format!("{{\"v\":1,\"ok\":true,\"result\":{{\"lease\":{{\"id\":\"{:032x}\"}},\"pad\":\"", 0)
            } else {
                "{\"v\":1,\"ok\":true,\"result\":{\"pad\":\"".to_string()
            };
            text.push_str(&"x".repeat(length.saturating_sub(text.len() + 4)));
            text.push_str("\"}}\n");
            text.into_bytes()
        };
        let (grant_record, release_record) =
            (sized(GRANT_RECORD, false), sized(RELEASE_RECORD, false));
        let (grant_reply, release_reply) = (sized(GRANT_REPLY, true), sized(RELEASE_REPLY, false));
        let answer = |line: &[u8]| {
            read_knobs();
            let grant = line.windows(7).any(|w| w == b"\"lease\"");
            let payload = if grant {
                &grant_record
            } else {
                &release_record
            };
            let record = [
                format!("{} {:08x} ", payload.len(), crc32fast::hash(payload)).as_bytes(),
                payload,
            ]
            .concat();
            if renaming {
                let temp = dir.join(".state.json.tmp");
                let mut file = fs::File::create(&temp).unwrap();
                file.write_all(&record).unwrap();
                file.sync_all().unwrap();
                fs::rename(&temp, dir.join("state.json")).unwrap();
                directory.sync_all().unwrap();
            } else {
                log.write_all_at(&record, end).unwrap();
                log.sync_data().unwrap();
                end += record.len() as u64;
                if end > 1 << 20 {
                    log.set_len(0).unwrap();
                    end = 0;
                }
            }
            let value: &[u8] = if grant { b"1\n" } else { b"0\n" };
            mode.write_all_at(value, 0).unwrap();
            mode.set_len(value.len() as u64).unwrap();
            read_knobs();
            if grant {
                grant_reply.clone()
            } else {
                release_reply.clone()
            }
        };
        serve(socket, answer)
    }

    /// A pidfd watcher: each connecting process is watched through a pidfd; when it exits,
    /// one write to `target`.
    fn watcher(socket: &Path, target: &Path) {
        use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
        let listener = listen(socket);
        let file = fs::OpenOptions::new().write(true).open(target).unwrap();
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        epoll
            .add(listener.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0))
            .unwrap();
        let mut watched: std::collections::HashMap<u64, (OwnedFd, UnixStream)> =
            std::collections::HashMap::new();
        let mut next = 1u64;
        let mut events = [EpollEvent::empty(); 16];
        loop {
            let n = epoll.wait(&mut events, EpollTimeout::NONE).unwrap_or(0);
            for event in &events[..n] {
                if event.data() == 0 {
                    let Ok((mut stream, _)) = listener.accept() else {
                        continue;
                    };
                    let mut line = [0u8; 4096];
                    let _ = stream.read(&mut line);
                    let Ok(cred) = nix::sys::socket::getsockopt(
                        &stream,
                        nix::sys::socket::sockopt::PeerCredentials,
                    ) else {
                        continue;
                    };
                    // SAFETY: pidfd_open with a pid and no flags; the fd is owned below.
                    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, cred.pid(), 0) };
                    if fd < 0 {
                        continue;
                    }
                    // SAFETY: the kernel just returned this fd to us.
                    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
                    epoll
                        .add(pidfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, next))
                        .unwrap();
                    let _ = stream.write_all(b"{\"ok\":true}\n");
                    watched.insert(next, (pidfd, stream));
                    next += 1;
                } else if let Some((pidfd, _)) = watched.remove(&event.data()) {
                    file.write_all_at(b"0\n", 0).unwrap();
                    let _ = epoll.delete(pidfd.as_fd());
                }
            }
        }
    }

    /// A lease holder: asks for a lease bound to itself, says so, and waits to be killed.
    fn holder(socket: &Path) {
        let mut stream = UnixStream::connect(socket).unwrap();
        stream.write_all(HOLD.as_bytes()).unwrap();
        let mut reply = String::new();
        BufReader::new(stream.try_clone().unwrap())
            .read_line(&mut reply)
            .unwrap();
        let ok = if reply.contains("\"ok\":true") {
            "ok"
        } else {
            "refused"
        };
        println!("{ok} {}", reply.trim());
        std::io::stdout().flush().unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}
