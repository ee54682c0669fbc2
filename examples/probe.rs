//! `probe`: a tiny multi-call helper that runs inside the test guests (built static).
//!
//! It asks the real kernel for memory the way a big `malloc`/`np.zeros` does (one private,
//! writable, anonymous mapping, charged to Committed_AS in full) and reports the verdict
//! together with the two inputs the overcommit rules depend on, so a test can compare the
//! kernel's answer with the project's prediction.
//!
//! ```text
//! probe alloc [--uid U --gid G] [--pad BYTES] BYTES...
//!                                            one mmap per size, one PROBE line each
//! probe hold [--noreserve|--shared|--sysv] BYTES
//!                                            map BYTES (untouched) and wait to be killed
//! probe snapshot                             print /proc's files that `top` reads, at once
//! probe waitfor [--kill PID] FILE VALUE MS   until FILE holds VALUE (at most MS ms), timed
//! probe runas UID GID [--groups G1,G2,...] -- CMD ARGS...
//! ```
//!
//! `runas` exists because busybox `setpriv` has no `--reuid`.
//!
//! `--pad BYTES` first maps BYTES (charged, never touched) and keeps them for the whole run, so
//! the probe's own commit charge can be made equal to another program's: a test that asks
//! `overcommitctl check` about a size and then lets the probe allocate it wants both to see
//! the same Committed_AS (see tests/vm/predictor.rs). The pad counts in the reported VmSize.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::process::exit;

use nix::unistd::{self, Gid, Uid};

const USAGE: &str = "usage:
  probe alloc [--uid U --gid G] [--pad BYTES] BYTES...
  probe hold [--noreserve|--shared|--sysv] BYTES
  probe snapshot
  probe waitfor [--kill PID] FILE VALUE TIMEOUT_MS
  probe runas UID GID [--groups G1,G2,...] -- CMD ARGS...";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((cmd, rest)) => (cmd.as_str(), rest),
        None => usage_error("missing command"),
    };
    match cmd {
        "alloc" => alloc(rest),
        "hold" => hold(rest),
        "snapshot" => snapshot(),
        "waitfor" => waitfor(rest),
        "runas" => runas(rest),
        "-h" | "--help" => {
            println!("{USAGE}");
        }
        other => usage_error(&format!("unknown command {other:?}")),
    }
}

/// Bad command line: exit 2, like most tools, so a test can tell it from a runtime failure.
fn usage_error(msg: &str) -> ! {
    eprintln!("probe: {msg}\n{USAGE}");
    exit(2);
}

/// Runtime failure (I/O, privilege drop): a clear message and exit 1.
fn fail(msg: &str) -> ! {
    eprintln!("probe: {msg}");
    exit(1);
}

fn parse_num<T: std::str::FromStr>(what: &str, s: &str) -> T {
    match s.parse() {
        Ok(v) => v,
        Err(_) => usage_error(&format!("{what}: {s:?} is not a decimal number")),
    }
}

/// `probe alloc [--uid U --gid G] [--pad BYTES] BYTES...`
fn alloc(args: &[String]) {
    let mut uid: Option<u32> = None;
    let mut gid: Option<u32> = None;
    let mut pad: usize = 0;
    let mut sizes: Vec<usize> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--uid" => {
                let v = it
                    .next()
                    .unwrap_or_else(|| usage_error("--uid needs a value"));
                uid = Some(parse_num("--uid", v));
            }
            "--gid" => {
                let v = it
                    .next()
                    .unwrap_or_else(|| usage_error("--gid needs a value"));
                gid = Some(parse_num("--gid", v));
            }
            "--pad" => {
                let v = it
                    .next()
                    .unwrap_or_else(|| usage_error("--pad needs a value"));
                pad = parse_num("--pad", v);
            }
            s => sizes.push(parse_num("BYTES", s)),
        }
    }
    if sizes.is_empty() {
        usage_error("alloc needs at least one size");
    }
    match (uid, gid) {
        (Some(uid), Some(gid)) => drop_privileges(uid, gid, &[]),
        (None, None) => {}
        _ => usage_error("--uid and --gid go together"),
    }
    // After the privilege drop, which allocates; kept mapped until the process exits.
    if pad > 0 {
        if let Err(errno) = map_anonymous(pad) {
            fail(&format!(
                "--pad: mmap of {pad} bytes failed: {}",
                std::io::Error::from_raw_os_error(errno)
            ));
        }
    }

    let uid = unistd::getuid().as_raw();
    for bytes in sizes {
        // Read both inputs of the kernel's check immediately before the mmap so the line
        // describes the state the kernel decided on (VmSize is total_vm before the mapping).
        let vmsize_kb = proc_field_kb("/proc/self/status", "VmSize:");
        let committed_kb = proc_field_kb("/proc/meminfo", "Committed_AS:");
        let result = match map_anonymous(bytes) {
            Ok(addr) => {
                // SAFETY: addr/bytes are exactly what mmap returned; nothing references it.
                unsafe { libc::munmap(addr, bytes) };
                "OK".to_string()
            }
            Err(libc::ENOMEM) => "ENOMEM".to_string(),
            Err(errno) => format!("E{errno}"),
        };
        println!(
            "PROBE bytes={bytes} uid={uid} vmsize_kb={vmsize_kb} committed_kb={committed_kb} result={result}"
        );
    }
}

/// `probe hold [--noreserve|--shared|--sysv] BYTES`: commit memory without touching it
/// (raises Committed_AS only), then wait until killed so a test can measure the effect on
/// other allocations. `--noreserve` adds MAP_NORESERVE (not charged outside mode 2),
/// `--shared` maps MAP_SHARED|MAP_ANONYMOUS (a shmem object, charged once when created),
/// `--sysv` creates and attaches a SysV segment (charged when created).
fn hold(args: &[String]) {
    let (kind, bytes) = match args {
        [b] => ("", b),
        [kind, b] if ["--noreserve", "--shared", "--sysv"].contains(&kind.as_str()) => {
            (kind.as_str(), b)
        }
        _ => usage_error("hold takes [--noreserve|--shared|--sysv] and one size"),
    };
    let bytes: usize = parse_num("BYTES", bytes);
    let result = match kind {
        "--noreserve" => map(bytes, libc::MAP_PRIVATE | libc::MAP_NORESERVE),
        "--shared" => map(bytes, libc::MAP_SHARED),
        "--sysv" => attach_sysv(bytes),
        _ => map_anonymous(bytes),
    };
    if let Err(errno) = result {
        fail(&format!(
            "hold {kind} of {bytes} bytes failed: {}",
            std::io::Error::from_raw_os_error(errno)
        ));
    }
    println!("HOLDING bytes={bytes} pid={}", std::process::id());
    loop {
        unistd::pause();
    }
}

/// A new private SysV segment of `bytes`, attached (and marked for removal, so it goes when
/// the probe does).
fn attach_sysv(bytes: usize) -> Result<*mut libc::c_void, i32> {
    let errno = || {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: plain SysV calls; the attached address is only kept, never dereferenced.
    unsafe {
        let id = libc::shmget(libc::IPC_PRIVATE, bytes, libc::IPC_CREAT | 0o600);
        if id < 0 {
            return Err(errno());
        }
        let addr = libc::shmat(id, std::ptr::null(), 0);
        if addr as isize == -1 {
            return Err(errno());
        }
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        Ok(addr)
    }
}

/// `probe snapshot`: /proc/meminfo, /proc/sysvipc/shm, the vm knobs and every process's
/// status, cgroup and smaps, read into memory first and then printed between `FILE-BEGIN
/// PATH` and `FILE-END` lines (tests/vm/harness.rs `files_in`). One process reads everything
/// at once, so the snapshot is as consistent as /proc allows. The probe is in it, so it
/// allocates all it needs before reading anything: its own charge does not change meanwhile.
fn snapshot() {
    const ARENA: usize = 32 << 20;
    const NODE_FILES: [&str; 5] = [
        "/proc/meminfo",
        "/proc/sysvipc/shm",
        "/proc/sys/vm/overcommit_memory",
        "/proc/sys/vm/overcommit_ratio",
        "/proc/sys/vm/overcommit_kbytes",
    ];
    const PROCESS_FILES: [&str; 3] = ["status", "cgroup", "smaps"];
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap_or_else(|e| fail(&format!("read /proc: {e}")))
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut arena = vec![0u8; ARENA];
    // (node file or pid, process file, range in the arena)
    let mut index: Vec<(usize, u32, usize, usize, usize)> =
        Vec::with_capacity(NODE_FILES.len() + pids.len() * PROCESS_FILES.len());
    let mut used = 0;
    let mut path = String::with_capacity(64);
    let mut read_into = |path: &str, used: &mut usize| -> Option<(usize, usize)> {
        let mut file = File::open(path).ok()?;
        let start = *used;
        loop {
            // In pieces: a sysctl read larger than KMALLOC_MAX_SIZE fails with ENOMEM.
            let end = (*used + 65536).min(ARENA);
            match file.read(&mut arena[*used..end]) {
                Ok(0) => return Some((start, *used)),
                Ok(n) => *used += n,
                Err(_) => return None,
            }
            if *used == ARENA {
                fail("snapshot: /proc holds more than the arena");
            }
        }
    };
    for (i, file) in NODE_FILES.iter().enumerate() {
        if let Some((start, end)) = read_into(file, &mut used) {
            index.push((i, 0, 0, start, end));
        }
    }
    for &pid in &pids {
        for (j, name) in PROCESS_FILES.iter().enumerate() {
            use std::fmt::Write as _;
            path.clear();
            let _ = write!(path, "/proc/{pid}/{name}");
            if let Some((start, end)) = read_into(&path, &mut used) {
                index.push((usize::MAX, pid, j, start, end));
            }
        }
    }
    let mut out = std::io::stdout().lock();
    for (node_file, pid, j, start, end) in index {
        use std::io::Write;
        let name = if node_file == usize::MAX {
            format!("/proc/{pid}/{}", PROCESS_FILES[j])
        } else {
            NODE_FILES[node_file].to_string()
        };
        let text = String::from_utf8_lossy(&arena[start..end]);
        let newline = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        let _ = write!(out, "FILE-BEGIN {name}\n{text}{newline}FILE-END\n");
    }
}

/// `probe waitfor [--kill PID] FILE VALUE TIMEOUT_MS`: polls FILE (every millisecond) until
/// its trimmed contents are VALUE, and prints how long that took, from the SIGKILL sent to
/// PID when `--kill` is given (so the time covers only what follows the kill), else from
/// the start. Exit 0 when VALUE was seen, 1 on timeout. A shell loop of `cat` and `sleep`
/// would measure the cost of its own forks under an emulated CPU.
fn waitfor(args: &[String]) {
    let (kill, rest) = match args {
        [flag, pid, rest @ ..] if flag == "--kill" => (Some(parse_num::<i32>("PID", pid)), rest),
        _ => (None, args),
    };
    let (path, value, timeout_ms) = match rest {
        [path, value, ms] => (path, value, parse_num::<u64>("TIMEOUT_MS", ms)),
        _ => usage_error("waitfor takes [--kill PID] FILE VALUE TIMEOUT_MS"),
    };
    let started = std::time::Instant::now();
    if let Some(pid) = kill {
        let pid = unistd::Pid::from_raw(pid);
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
            fail(&format!("kill -9 {pid}: {e}"));
        }
    }
    let timeout = std::time::Duration::from_millis(timeout_ms);
    let last = loop {
        let seen = std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("<{e}>"));
        if seen == *value || started.elapsed() >= timeout {
            break seen;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let ok = last == *value;
    println!(
        "WAITFOR file={path} value={value} seen={last} ms={} result={}",
        started.elapsed().as_millis(),
        if ok { "OK" } else { "TIMEOUT" }
    );
    exit(if ok { 0 } else { 1 });
}

/// `probe runas UID GID [--groups G1,G2,...] -- CMD ARGS...`
fn runas(args: &[String]) {
    let (uid, gid, rest) = match args {
        [uid, gid, rest @ ..] => (parse_num("UID", uid), parse_num("GID", gid), rest),
        _ => usage_error("runas needs UID and GID"),
    };
    let (groups, cmd) = match rest {
        [flag, list, dashdash, cmd @ ..] if flag == "--groups" && dashdash == "--" => {
            let groups: Vec<u32> = list
                .split(',')
                .filter(|g| !g.is_empty())
                .map(|g| parse_num("--groups", g))
                .collect();
            (groups, cmd)
        }
        [dashdash, cmd @ ..] if dashdash == "--" => (Vec::new(), cmd),
        _ => usage_error("runas: expected [--groups LIST] -- CMD"),
    };
    if cmd.is_empty() {
        usage_error("runas: missing CMD after --");
    }
    let cargs: Vec<CString> = cmd
        .iter()
        .map(|a| {
            CString::new(a.as_str())
                .unwrap_or_else(|_| usage_error("runas: argument contains a NUL byte"))
        })
        .collect();
    drop_privileges(uid, gid, &groups);
    let err = match unistd::execvp(&cargs[0], &cargs) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    fail(&format!("exec {}: {err}", cmd[0]));
}

/// Supplementary groups first, then the gid, then the uid: once the uid is gone the process
/// no longer has the right to change the other two. Checked afterwards so a silent partial
/// drop cannot make an "unprivileged" probe run as root.
fn drop_privileges(uid: u32, gid: u32, groups: &[u32]) {
    let groups: Vec<Gid> = groups.iter().map(|&g| Gid::from_raw(g)).collect();
    if let Err(e) = unistd::setgroups(&groups) {
        fail(&format!("setgroups: {e}"));
    }
    if let Err(e) = unistd::setgid(Gid::from_raw(gid)) {
        fail(&format!("setgid({gid}): {e}"));
    }
    if let Err(e) = unistd::setuid(Uid::from_raw(uid)) {
        fail(&format!("setuid({uid}): {e}"));
    }
    if unistd::getuid().as_raw() != uid || unistd::geteuid().as_raw() != uid {
        fail(&format!(
            "still uid {} / euid {} after setuid({uid})",
            unistd::getuid(),
            unistd::geteuid()
        ));
    }
    if unistd::getgid().as_raw() != gid || unistd::getegid().as_raw() != gid {
        fail(&format!("gid is not {gid} after setgid"));
    }
}

/// One private, writable, anonymous mapping: the kind the kernel charges to Committed_AS in
/// full at mmap time (VM_ACCOUNT). Returns the address or the errno.
fn map_anonymous(bytes: usize) -> Result<*mut libc::c_void, i32> {
    map(bytes, libc::MAP_PRIVATE)
}

/// One writable anonymous mapping with `flags` (MAP_ANONYMOUS added).
fn map(bytes: usize, flags: libc::c_int) -> Result<*mut libc::c_void, i32> {
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing cannot alias
    // anything this process uses.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(addr)
    }
}

/// The kB value of a `Name:   123 kB` line of a /proc file.
///
/// Reads into a stack buffer rather than a String: heap growth here would change VmSize
/// between the measurement and the mmap it describes.
fn proc_field_kb(path: &str, field: &str) -> u64 {
    let mut buf = [0u8; 8192];
    let mut len = 0;
    let mut file = File::open(path).unwrap_or_else(|e| fail(&format!("open {path}: {e}")));
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => fail(&format!("read {path}: {e}")),
        }
        if len == buf.len() {
            fail(&format!("{path} is larger than {} bytes", buf.len()));
        }
    }
    let text =
        std::str::from_utf8(&buf[..len]).unwrap_or_else(|_| fail(&format!("{path}: not UTF-8")));
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fail(&format!("{path}: no numeric {field} line")))
}
