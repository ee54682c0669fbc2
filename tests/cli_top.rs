//! `overcommitctl top` as a built binary: on fake proc trees (exact figures, grouping, the
//! rows that are not processes, Prometheus through the real promtool, --watch on a pipe and
//! on a terminal), on this machine's real /proc (real processes holding real mappings, as root
//! and as another uid, a lease holder's job through a real daemon), and the additions to
//! `status` and `check` under mode never.

mod common;
#[path = "common/proc_tree.rs"]
mod proc_tree;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::top_report::{assert_charged_more, holder, not_process, rows_sum};
use common::{as_user, ctl, run, Daemon};
use proc_tree::{FakeMapping, FakeProcess, CHARGED, CODE, NORESERVE, READ_ONLY, SHARED};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// `text` as the one JSON object the schema `file` of docs/schema/ describes.
fn valid(file: &str, text: &str) -> Value {
    common::schema::docs_schemas().assert_valid(file, text)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// Sets `Key:  N kB` lines of a tree's meminfo.
fn set_meminfo(proc: &Path, values: &[(&str, u64)]) {
    let path = proc.join("meminfo");
    let text = fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let key = line.split(':').next().unwrap_or("");
        match values.iter().find(|(k, _)| *k == key) {
            Some((_, kb)) => out.push_str(&format!("{key}:{kb:>16} kB\n")),
            None => out.push_str(&format!("{line}\n")),
        }
    }
    fs::write(path, out).unwrap();
}

/// A node (mode never, ratio 50, 470 MiB RAM) with five processes of three users, two Slurm
/// jobs, a kernel thread, a SysV segment and a shared anonymous object. Committed_AS is set
/// to what they hold plus 7 MiB of tmpfs and 3 MiB nobody here can see.
struct Node {
    dir: tempfile::TempDir,
}

const SYSV_SHM: &str = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
      1234          5  1600               8388608    10    10      1  1000  1000  1000  1000          0          0 1700000000               1048576                     0
";

impl Node {
    fn new() -> Node {
        let dir = common::proc_copy("m512-noswap-mode2-ratio50");
        let proc = dir.path().join("proc");
        let job = |id: u32, uid: u32| {
            format!("/system.slice/slurmstepd.scope/job_{id}/step_0/user/task_0-{uid}")
        };
        let processes = [
            FakeProcess::new(1, 0, "init")
                .cgroup("/init.scope")
                .ppid(0)
                .map(FakeMapping::new(30, CODE, "/sbin/init"))
                .map(FakeMapping::new(256, CHARGED, "[heap]")),
            FakeProcess::new(100, 1000, "python3")
                .cgroup(&job(7, 1000))
                .map(FakeMapping::new(300 * 256, CHARGED, ""))
                .map(FakeMapping::new(100 * 256, NORESERVE, ""))
                .map(
                    FakeMapping::new(2 * 256, SHARED, "/dev/zero (deleted)")
                        .inode(4242)
                        .rss_kb(1024),
                )
                .map(FakeMapping::new(2 * 256, SHARED, "/SYSV000004d2 (deleted)").inode(5)),
            FakeProcess::new(101, 1000, "python3")
                .cgroup(&job(7, 1000))
                .ppid(100)
                .map(FakeMapping::new(20 * 256, CHARGED, ""))
                .map(FakeMapping::new(2 * 256, SHARED, "/dev/zero (deleted)").inode(4242)),
            FakeProcess::new(200, 1001, "solver")
                .cgroup(&job(8, 1001))
                .map(FakeMapping::new(50 * 256, CHARGED, ""))
                .map(FakeMapping::new(64 * 256, READ_ONLY, "/data/input.bin")),
            FakeProcess::new(300, 0, "sshd")
                .cgroup("/system.slice/ssh.service")
                .map(FakeMapping::new(256, CHARGED, "")),
        ];
        let charged: u64 = processes.iter().map(FakeProcess::charged_bytes).sum();
        for p in &processes {
            p.write(&proc);
        }
        proc_tree::write_kernel_thread(&proc, 2, "kthreadd");
        fs::create_dir_all(proc.join("sysvipc")).unwrap();
        fs::write(proc.join("sysvipc/shm"), SYSV_SHM).unwrap();
        // Shmem: 1 MiB of the SysV segment, 1 MiB of the shared object (its Rss), 7 MiB tmpfs.
        let shmem = 9 * MIB;
        let committed = charged + 7 * MIB + 8 * MIB + 2 * MIB + 3 * MIB;
        set_meminfo(
            &proc,
            &[("Shmem", shmem / 1024), ("Committed_AS", committed / 1024)],
        );
        Node { dir }
    }

    fn proc(&self) -> PathBuf {
        self.dir.path().join("proc")
    }

    fn top(&self, args: &[&str]) -> (i32, String, String) {
        run(ctl()
            .arg("--proc-root")
            .arg(self.proc())
            .arg("--socket")
            .arg(self.dir.path().join("no-daemon.sock"))
            .arg("top")
            .args(args))
    }

    fn top_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (code, out, err) = self.top(&all);
        assert_eq!(code, 0, "{err}");
        valid("top.json", &out)
    }
}

#[test]
fn processes_are_charged_their_accounted_mappings_exactly() {
    let node = Node::new();
    let report = node.top_json(&["--limit", "0"]);
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["by"], "process");
    assert_eq!(report["mode"], "never");
    assert_eq!(report["processes_read"], 5);
    assert_eq!(report["kernel_threads"], 1);
    assert_eq!(report["processes_unreadable"], 0);
    assert!(report["elapsed_secs"].as_f64().unwrap() > 0.0);
    let holders = report["holders"].as_array().unwrap();
    let pids: Vec<i64> = holders.iter().map(|h| h["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids, [100, 200, 101, 1, 300], "largest first");
    let python = &holders[0];
    assert_eq!(python["charged_bytes"], 300 * MIB);
    assert_eq!(
        python["noreserve_bytes"],
        100 * MIB,
        "MAP_NORESERVE is not charged"
    );
    assert_eq!(python["command"], "python3");
    assert_eq!(python["uid"], 1000);
    assert_eq!(python["job"], "7");
    assert_eq!(
        holders[1]["charged_bytes"],
        50 * MIB,
        "read-only file mappings are free"
    );
    let committed = report["committed_as_bytes"].as_u64().unwrap();
    let share = 300.0 * MIB as f64 * 100.0 / committed as f64;
    assert!((python["committed_as_percent"].as_f64().unwrap() - share).abs() < 0.01);
}

#[test]
fn the_rows_that_are_not_processes_are_named_and_everything_adds_up() {
    let node = Node::new();
    let report = node.top_json(&["--limit", "2"]);
    let sysv = not_process(&report, "sysv_shm");
    assert_eq!(
        (sysv["objects"].as_u64(), sysv["charged_bytes"].as_u64()),
        (Some(1), Some(8 * MIB))
    );
    assert_eq!(sysv["resident_bytes"], MIB);
    let shared = not_process(&report, "shared_anonymous");
    assert_eq!(shared["objects"], 1, "one object, mapped by two processes");
    assert_eq!(shared["charged_bytes"], 2 * MIB);
    // Shmem 9 MiB less the resident pages of the two above.
    assert_eq!(not_process(&report, "shmem")["charged_bytes"], 7 * MIB);
    assert_eq!(
        not_process(&report, "not_visible")["charged_bytes"],
        3 * MIB
    );
    let hugetlb = not_process(&report, "hugetlb");
    assert_eq!(hugetlb["charged_bytes"], 0);

    // Two rows and "other" for the rest, and every row adds up to Committed_AS.
    let holders = report["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 3);
    assert_eq!(holders[2]["kind"], "other");
    assert_eq!(holders[2]["processes"], 3);
    assert_eq!(
        rows_sum(&report),
        report["committed_as_bytes"].as_i64().unwrap()
    );
    assert_eq!(
        report["processes_charged_bytes"].as_u64().unwrap(),
        holders
            .iter()
            .map(|h| h["charged_bytes"].as_u64().unwrap())
            .sum::<u64>()
    );
}

#[test]
fn holders_group_by_user_job_and_cgroup() {
    let node = Node::new();
    let rows = |by: &str, key: &str| -> Vec<(String, u64, u64)> {
        node.top_json(&["--by", by])["holders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h[key].as_str().unwrap_or("?").to_string(),
                    h["processes"].as_u64().unwrap(),
                    h["charged_bytes"].as_u64().unwrap() / MIB,
                )
            })
            .collect()
    };
    let cloudsdk_or_uid = |uid: u32| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or(uid.to_string(), |u| u.name)
    };
    assert_eq!(
        rows("user", "user"),
        [
            (cloudsdk_or_uid(1000), 2, 320),
            (cloudsdk_or_uid(1001), 1, 50),
            ("root".to_string(), 2, 2)
        ]
    );
    assert_eq!(
        rows("job", "job"),
        [
            ("7".to_string(), 2, 320),
            ("8".to_string(), 1, 50),
            ("none".to_string(), 2, 2)
        ]
    );
    let cgroups = rows("cgroup", "cgroup");
    assert_eq!(cgroups.len(), 4, "both python3 processes are in one cgroup");
    assert_eq!(
        cgroups[0].0,
        "/system.slice/slurmstepd.scope/job_7/step_0/user/task_0-1000"
    );
}

#[test]
fn text_shows_the_table_and_names_every_row() {
    let node = Node::new();
    let (code, out, err) = node.top(&["--limit", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\x1b'), "no colour on a pipe:\n{out}");
    assert!(out.contains("mode never (2)"), "{out}");
    let python = out
        .lines()
        .find(|l| l.contains(" 100 "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        python.contains("python3") && python.contains("300.0 MiB") && python.contains("100.0 MiB"),
        "{python}"
    );
    for row in [
        "other (2 processes)",
        "shared memory (tmpfs, memfd)",
        "SysV shared memory (1 segment)",
        "shared anonymous (1 object)",
        "not visible from here",
        "hugetlb (not charged)",
        "Committed_AS",
    ] {
        assert!(out.contains(row), "missing {row:?}:\n{out}");
    }
    assert!(out.contains("read 5 processes (11 mappings)"), "{out}");
}

#[test]
fn prometheus_output_is_bounded_and_passes_promtool() {
    let node = Node::new();
    for by in ["process", "user", "job", "cgroup"] {
        let (code, out, err) = node.top(&["--format", "prometheus", "--by", by, "--limit", "2"]);
        assert_eq!(code, 0, "{err}");
        let metric = format!("overcommit_{by}_charged_bytes{{");
        let series: Vec<&str> = out.lines().filter(|l| l.starts_with(&metric)).collect();
        assert_eq!(series.len(), 3, "two holders and other:\n{out}");
        assert!(series[2].contains("=\"other\""), "{out}");
        assert!(
            out.contains("overcommit_not_process_charged_bytes{kind=\"not_visible\"} 3145728"),
            "{out}"
        );
        assert!(
            out.contains("overcommit_top_processes{state=\"read\"} 5"),
            "{out}"
        );
        if by == "job" {
            assert!(
                series[0].starts_with("overcommit_job_charged_bytes{job_id=\"7\"} 335544320"),
                "{out}"
            );
        }
        let Some(promtool) = common::tools::promtool() else {
            return;
        };
        let (passed, said) = common::tools::check_metrics(promtool, &out);
        assert!(passed, "promtool check metrics (--by {by}):\n{said}\n{out}");
    }
}

#[test]
fn label_values_are_escaped() {
    let dir = common::proc_copy("m512-noswap-mode0");
    let proc = dir.path().join("proc");
    FakeProcess::new(5, 0, "we\\ird\"name")
        .map(FakeMapping::new(1, CHARGED, ""))
        .write(&proc);
    let (code, out, err) =
        run(ctl()
            .arg("--proc-root")
            .arg(&proc)
            .args(["top", "--format", "prometheus"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#"command="we\\ird\"name""#), "{out}");
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let node = Node::new();
    for (args, needle) in [
        (vec!["--watch", "0"], "0.1 to 86400"),
        (vec!["--watch", "soon"], "interval `soon`"),
        (vec!["--by", "team"], "team"),
        (vec!["--limit", "-1"], "-1"),
    ] {
        let (code, _, err) = node.top(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let (code, _, err) = run(ctl().args(["--proc-root", "/nonexistent/proc", "top"]));
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/proc/meminfo"), "{err}");
}

#[test]
fn watch_on_a_pipe_prints_one_report_after_another_and_ends_on_sigint() {
    let node = Node::new();
    let mut child = ctl()
        .arg("--proc-root")
        .arg(node.proc())
        .args(["top", "--watch", "0.2", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        let line = lines.next().unwrap().unwrap();
        assert_eq!(json(&line)["processes_read"], 5, "one object per line");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGINT ends --watch cleanly");
}

/// A pseudo-terminal: (master, slave path).
fn open_pty() -> (fs::File, PathBuf) {
    use std::ffi::CStr;
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc calls on a descriptor this function owns; ptsname's buffer is copied
    // before any other call could reuse it.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let name = CStr::from_ptr(libc::ptsname(master))
            .to_string_lossy()
            .into_owned();
        let size = libc::winsize {
            ws_row: 18,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        libc::ioctl(master, libc::TIOCSWINSZ, &size);
        (fs::File::from_raw_fd(master), PathBuf::from(name))
    }
}

#[test]
fn watch_on_a_terminal_redraws_in_place_without_clearing_the_screen_again() {
    let node = Node::new();
    let (mut master, slave) = open_pty();
    let tty = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave)
        .unwrap();
    let mut child = ctl()
        .arg("--proc-root")
        .arg(node.proc())
        .args(["top", "--watch", "0.2"])
        .stdout(tty.try_clone().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(tty);
    // Collect what the terminal receives for a second: about five frames.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || sender.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1100) {
        if let Ok(chunk) = receiver.recv_timeout(Duration::from_millis(50)) {
            screen.extend(chunk);
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    while let Ok(chunk) = receiver.recv_timeout(Duration::from_millis(200)) {
        screen.extend(chunk);
    }
    let text = String::from_utf8_lossy(&screen);
    let count = |needle: &str| text.matches(needle).count();
    assert_eq!(
        count("\x1b[2J"),
        1,
        "the screen is cleared once, at the start"
    );
    let frames = count("\x1b[H");
    assert!(frames >= 3, "{frames} frames in a second at 0.2 s");
    assert_eq!(
        count("\x1b[?2026h"),
        frames,
        "each frame is one synchronized update"
    );
    assert!(
        count("\x1b[K") > frames * 10,
        "each line clears only its own rest"
    );
    assert!(
        text.starts_with("\x1b[?25l"),
        "cursor hidden while watching"
    );
    assert!(
        text.ends_with("\x1b[?25h\r\n"),
        "and shown again at the end: {:?}",
        &text[text.len().saturating_sub(40)..]
    );
    assert!(text.contains("python3"), "{text}");
    // An 80 x 18 terminal: 3 holders and "other" fit, and no line wraps or scrolls it.
    for frame in text.split("\x1b[H").skip(1) {
        let frame = frame.split("\x1b[J").next().unwrap();
        assert!(frame.matches('\n').count() < 18, "{frame}");
        assert!(frame.contains("other (2 processes)"), "{frame}");
        for line in frame.split("\x1b[K") {
            let plain: String = {
                let (mut out, mut esc) = (String::new(), false);
                for c in line.chars() {
                    match (esc, c) {
                        (false, '\x1b') => esc = true,
                        (true, 'm' | 'h' | 'l') => esc = false,
                        (true, _) => {}
                        (false, '\r' | '\n') => {}
                        (false, c) => out.push(c),
                    }
                }
                out
            };
            assert!(plain.chars().count() <= 80, "{plain:?}");
        }
    }
}

// Snapshots of a real guest's /proc (tests/fixtures/top, written by tests/vm/top.rs).

fn guest_fixture(name: &str) -> (PathBuf, Value, std::collections::BTreeMap<String, i64>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/top")
        .join(name);
    let holders = fs::read_to_string(dir.join("holders"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    let proc = dir.join("proc");
    let (code, out, err) = run(ctl()
        .arg("--proc-root")
        .arg(&proc)
        .args(["top", "--json", "--limit", "0"]));
    assert_eq!(code, 0, "{err}");
    (proc, valid("top.json", &out), holders)
}

#[test]
fn real_guest_snapshots_are_attributed_to_the_byte() {
    for (name, noreserve_probe) in [("guest-mode0", "noreserve0"), ("guest-mode2", "noreserve2")] {
        let (_, report, pids) = guest_fixture(name);
        let probe = |name: &str| holder(&report, pids[name]).expect("every probe is listed");
        let mode = if name == "guest-mode2" {
            "never"
        } else {
            "heuristic"
        };
        assert_eq!(report["mode"], mode, "{name}");
        // The snapshot was read by one process that allocated nothing meanwhile: exact.
        assert_eq!(
            rows_sum(&report),
            report["committed_as_bytes"].as_i64().unwrap()
        );
        assert_eq!(
            not_process(&report, "not_visible")["charged_bytes"],
            0,
            "{name}"
        );
        assert_charged_more(probe("charged"), probe("shared"), 300 << 20, 8192);
        let noreserve = if name == "guest-mode2" { 300 << 20 } else { 0 };
        assert_charged_more(probe(noreserve_probe), probe("shared"), noreserve, 8192);
        assert_eq!(not_process(&report, "sysv_shm")["charged_bytes"], 16 * MIB);
        assert_eq!(
            not_process(&report, "shared_anonymous")["charged_bytes"],
            16 * MIB
        );
        assert!(report["kernel_threads"].as_u64().unwrap() > 10);
    }
}

// Real processes on this machine's /proc.

/// Re-runs this test binary as a process holding `bytes` of one private writable anonymous
/// mapping (MAP_NORESERVE when asked), until its stdin closes.
struct Hold {
    child: std::process::Child,
}

impl Hold {
    fn start(bytes: u64, noreserve: bool) -> Hold {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hold_memory_helper",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("TOP_TEST_HOLD", format!("{bytes},{noreserve}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("HOLDING") => break,
                Some(Ok(_)) => continue,
                other => panic!("the helper did not start: {other:?}"),
            }
        }
        Hold { child }
    }

    fn pid(&self) -> i64 {
        i64::from(self.child.id())
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "a helper process for the real-/proc tests, run by them"]
fn hold_memory_helper() {
    let Ok(spec) = std::env::var("TOP_TEST_HOLD") else {
        return;
    };
    let (bytes, noreserve) = spec.split_once(',').unwrap();
    let bytes: usize = bytes.parse().unwrap();
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    if noreserve == "true" {
        flags |= libc::MAP_NORESERVE;
    }
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED);
    println!("HOLDING {bytes}");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

fn real_top(command: &mut Command) -> Value {
    let (code, out, err) =
        run(command.args(["--proc-root", "/proc", "top", "--json", "--limit", "0"]));
    assert_eq!(code, 0, "{err}");
    valid("top.json", &out)
}

/// The host runs in mode 0 (heuristic): MAP_NORESERVE is honoured there.
#[test]
fn on_this_machine_a_process_is_charged_what_it_maps_and_noreserve_is_not() {
    let mode = fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap();
    assert_ne!(
        mode.trim(),
        "2",
        "this test expects a host outside mode never"
    );
    let charged = Hold::start(64 * MIB, false);
    let free = Hold::start(64 * MIB, true);
    let report = real_top(&mut ctl());
    let a = holder(&report, charged.pid()).expect("the holder is listed");
    let b = holder(&report, free.pid()).expect("the noreserve holder is listed");
    // The same program otherwise: the difference is the one mapping, give or take its heap.
    assert_charged_more(a, b, (64 * MIB) as i64, MIB as i64);
    assert!(b["noreserve_bytes"].as_u64().unwrap() >= 64 * MIB, "{b}");
    assert!(a["noreserve_bytes"].as_u64().unwrap() < 64 * MIB, "{a}");
    let committed = report["committed_as_bytes"].as_u64().unwrap();
    assert!(report["processes_charged_bytes"].as_u64().unwrap() <= committed + 256 * MIB);
}

#[test]
fn another_user_sees_only_their_processes_and_is_told_how_much_is_hidden() {
    let hold = Hold::start(32 * MIB, false);
    let report = real_top(as_user(&mut ctl(), 65534, 65534, &[]));
    assert!(
        report["processes_unreadable"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert!(
        holder(&report, hold.pid()).is_none(),
        "root's process is not readable"
    );
    for h in report["holders"].as_array().unwrap() {
        assert_eq!(h["uid"], 65534, "{h}");
    }
    let not_visible = not_process(&report, "not_visible")["charged_bytes"]
        .as_i64()
        .unwrap();
    assert!(
        not_visible >= (32 * MIB) as i64,
        "the hidden 32 MiB is in 'not visible': {not_visible}"
    );
    let (code, out, _) =
        run(as_user(&mut ctl(), 65534, 65534, &[]).args(["--proc-root", "/proc", "top"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("could not be read (permission denied"),
        "{out}"
    );
}

#[test]
fn a_lease_holder_and_its_command_are_one_job() {
    const CONFIG: &str = "[daemon]\nbaseline = \"default\"\ndrift_interval = \"0\"\n\n[profiles.default]\nmode = \"heuristic\"\n";
    let daemon = Daemon::start("m1024-swap512-mode0", CONFIG, &[]);
    let mut run_holder = daemon
        .ctl()
        .args([
            "run", "--mode", "always", "--tag", "exp-42", "--", "sleep", "60",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        daemon.wait_mode("1", Duration::from_secs(5)).is_some(),
        "{}",
        daemon.log()
    );
    let sleeper = {
        let pid = run_holder.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let children =
                fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            if let Some(child) = children.split_whitespace().next() {
                break child.parse::<i64>().unwrap();
            }
            assert!(Instant::now() < deadline, "run did not start its command");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let by_process = real_top(&mut daemon.ctl());
    for pid in [i64::from(run_holder.id()), sleeper] {
        let row = holder(&by_process, pid).unwrap_or_else(|| panic!("{pid} listed"));
        assert_eq!(row["job"], "lease:exp-42", "{row}");
    }
    let (code, out, err) = run(daemon.ctl().args([
        "--proc-root",
        "/proc",
        "top",
        "--json",
        "--by",
        "job",
        "--limit",
        "0",
    ]));
    assert_eq!(code, 0, "{err}");
    let by_job = valid("top.json", &out);
    let job = by_job["holders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["job"] == "lease:exp-42")
        .unwrap_or_else(|| panic!("{by_job:#}"));
    assert_eq!(job["processes"], 2);
    let _ = run_holder.kill();
    let _ = run_holder.wait();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sleeper as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

// status and check under mode never.

/// The test node with Committed_AS `committed_kb` (CommitLimit is 240648 kB).
fn node_committed(committed_kb: u64) -> Node {
    let node = Node::new();
    set_meminfo(&node.proc(), &[("Committed_AS", committed_kb)]);
    node
}

#[test]
fn status_names_the_three_largest_holders_when_headroom_is_low() {
    let node = node_committed(235_000);
    let (code, out, err) = run(ctl()
        .arg("--proc-root")
        .arg(node.proc())
        .args(["status", "--json"]));
    assert_eq!(code, 0, "{err}");
    let report = valid("status.json", &out);
    let holders: Vec<i64> = report["commit_holders"]
        .as_array()
        .unwrap_or_else(|| panic!("{report:#}"))
        .iter()
        .map(|h| h["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(holders, [100, 200, 101]);
    let (_, text, _) = run(ctl().arg("--proc-root").arg(node.proc()).arg("status"));
    let section = text
        .split("Largest commit holders")
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        section.contains("100 python3") && section.contains("300.0 MiB"),
        "{text}"
    );

    // With room to spare, status does not read the processes at all.
    let roomy = node_committed(100_000);
    let (_, out, _) = run(ctl()
        .arg("--proc-root")
        .arg(roomy.proc())
        .args(["status", "--json"]));
    assert!(valid("status.json", &out)["commit_holders"].is_null());
}

#[test]
fn check_names_who_holds_the_charge_when_mode_never_refuses() {
    let node = node_committed(200_000);
    let check = |size: &str| {
        let (code, out, err) = run(ctl()
            .arg("--proc-root")
            .arg(node.proc())
            .args(["check", size, "--root", "--via", "mmap", "--json"]));
        (code, valid("check.json", &out), err)
    };
    let (code, refused, err) = check("100M");
    assert_eq!(
        (code, refused["verdict"].as_str()),
        (1, Some("refused")),
        "{err}"
    );
    let first = &refused["commit_holders"][0];
    assert_eq!(
        (first["pid"].as_i64(), first["charged_bytes"].as_u64()),
        (Some(100), Some(300 * MIB))
    );
    assert_eq!(refused["commit_holders"].as_array().unwrap().len(), 3);
    let (code, allowed, _) = check("4K");
    assert_eq!(code, 0);
    assert!(allowed["commit_holders"].is_null());
    let (_, text, _) = run(ctl()
        .arg("--proc-root")
        .arg(node.proc())
        .args(["check", "100M", "--root", "--via", "mmap"]));
    assert!(text.contains("Who holds the charge in the way"), "{text}");
}
