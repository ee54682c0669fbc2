//! `job_probe`: exercises the allocator of the process it runs in, for the tests of the job
//! scope (tests/preload.rs, tests/vm/job_scope.rs). Dynamically linked, so that
//! libovercommit_preload.so (LD_PRELOAD) takes the allocator over when it is loaded.
//!
//! ```text
//! job_probe alloc KIND BYTES      one allocation through KIND: malloc calloc realloc
//!                                 reallocarray posix_memalign aligned_alloc memalign valloc
//!                                 pvalloc mmap mmap64; touches its first and last page
//! job_probe cross MIN             realloc across the threshold MIN both ways, data checked
//! job_probe stress THREADS ROUNDS MAX_BYTES
//!                                 mixed small and large allocations across threads, every
//!                                 block's contents checked before it is reused or freed
//! job_probe foreign               free/realloc/malloc_usable_size of the real allocator's
//!                                 pointers at every page offset the library looks at
//! job_probe fork BYTES            a forked child and an exec'd one each allocate BYTES
//! job_probe hold BYTES            allocate BYTES (malloc), report, wait to be killed
//! job_probe aligned COUNT BYTES   COUNT page-aligned posix_memalign blocks of BYTES kept
//!                                 live at once; reports how many succeeded and whether the
//!                                 first and the last are MAP_NORESERVE
//! job_probe bench THREADS OPS [LIVE_BYTES]
//!                                 OPS malloc/free pairs of 64 B to 64 KiB per thread (a
//!                                 ring of 64 live blocks), timed; with LIVE_BYTES, one block
//!                                 that large stays allocated meanwhile
//! ```
//!
//! Each command prints `JOBPROBE key=value ...` lines; `library=` is the preload library's
//! threshold in bytes when it is loaded, else `absent`; `noreserve=` tells whether the kernel
//! shows the mapping with the `nr` VmFlag (MAP_NORESERVE). Exit 0 when every check held, 1
//! when one failed (with a `JOBPROBE-FAIL` line), 2 on bad usage.

use std::ffi::c_void;
use std::process::exit;
use std::ptr::null_mut;

const USAGE: &str = "usage:
  job_probe alloc KIND BYTES
  job_probe cross MIN
  job_probe stress THREADS ROUNDS MAX_BYTES
  job_probe foreign
  job_probe fork BYTES
  job_probe hold BYTES
  job_probe aligned COUNT BYTES
  job_probe bench THREADS OPS [LIVE_BYTES]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["alloc", kind, bytes] => alloc(kind, number(bytes)),
        ["cross", min] => cross(number(min)),
        ["stress", threads, rounds, max] => stress(number(threads), number(rounds), number(max)),
        ["foreign"] => foreign(),
        ["fork", bytes] => fork(number(bytes)),
        ["hold", bytes] => hold(number(bytes)),
        ["aligned", count, bytes] => aligned(number(count), number(bytes)),
        ["bench", threads, ops] => bench(number(threads), number(ops), 0),
        ["bench", threads, ops, live] => bench(number(threads), number(ops), number(live)),
        _ => {
            eprintln!("job_probe: bad usage\n{USAGE}");
            exit(2);
        }
    }
}

fn number(text: &str) -> usize {
    text.parse().unwrap_or_else(|_| {
        eprintln!("job_probe: {text:?} is not a number\n{USAGE}");
        exit(2)
    })
}

fn fail(what: &str) -> ! {
    println!("JOBPROBE-FAIL {what}");
    exit(1)
}

/// The preload library's threshold, when it is loaded in this process.
fn library() -> Option<usize> {
    // SAFETY: a lookup by name in the global scope.
    let symbol =
        unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"overcommit_preload_min_size".as_ptr()) };
    if symbol.is_null() {
        return None;
    }
    // SAFETY: the library exports it as `extern "C" fn() -> usize`.
    let min_size: extern "C" fn() -> usize = unsafe { std::mem::transmute(symbol) };
    Some(min_size())
}

fn library_field() -> String {
    library().map_or("absent".into(), |m| m.to_string())
}

/// Whether the mapping that holds `addr` carries MAP_NORESERVE (VmFlags `nr` in smaps).
fn noreserve(addr: usize) -> Option<bool> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                inside = (start..end).contains(&addr);
                continue;
            }
        }
        if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return Some(flags.split_whitespace().any(|f| f == "nr"));
            }
        }
    }
    None
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn result_of(p: *mut c_void, error: i32) -> String {
    match (p.is_null(), error) {
        (false, _) => "OK".into(),
        (true, libc::ENOMEM) => "ENOMEM".into(),
        (true, e) => format!("E{e}"),
    }
}

/// Writes then reads back a byte in the first and the last page of [p, p + len).
fn touch(p: *mut c_void, len: usize, zeroed: bool) {
    let base = p as *mut u8;
    for offset in [0, len / 2, len - 1] {
        // SAFETY: inside the allocation just made.
        unsafe {
            if zeroed && base.add(offset).read_volatile() != 0 {
                fail(&format!("calloc memory at offset {offset} is not zero"));
            }
            base.add(offset).write_volatile(0x5a);
            if base.add(offset).read_volatile() != 0x5a {
                fail(&format!("byte {offset} does not read back"));
            }
        }
    }
}

/// `job_probe alloc KIND BYTES`
fn alloc(kind: &str, bytes: usize) {
    // SAFETY: each arm calls the C allocator with valid arguments and checks the result.
    let (p, error, zeroed) = unsafe {
        match kind {
            "malloc" => (libc::malloc(bytes), errno(), false),
            "calloc" => (libc::calloc(bytes / 8, 8), errno(), true),
            "realloc" => {
                // Grows a small block holding a pattern: the pattern must survive.
                let small = libc::malloc(4096) as *mut u8;
                for i in 0..4096 {
                    small.add(i).write((i % 251) as u8);
                }
                let p = libc::realloc(small as *mut c_void, bytes);
                let error = errno();
                if !p.is_null() {
                    let q = p as *const u8;
                    if (0..4096).any(|i| q.add(i).read() != (i % 251) as u8) {
                        fail("realloc lost the old contents");
                    }
                } else {
                    libc::free(small as *mut c_void);
                }
                (p, error, false)
            }
            "reallocarray" => (libc::reallocarray(null_mut(), bytes / 8, 8), errno(), false),
            "posix_memalign" => {
                let mut p = null_mut();
                let rc = libc::posix_memalign(&mut p, 4096, bytes);
                (if rc == 0 { p } else { null_mut() }, rc, false)
            }
            "aligned_alloc" => (libc::aligned_alloc(1 << 16, bytes), errno(), false),
            "memalign" => (libc::memalign(256, bytes), errno(), false),
            "valloc" => (valloc(bytes), errno(), false),
            "pvalloc" => (pvalloc(bytes), errno(), false),
            "mmap" | "mmap64" => {
                let prot = libc::PROT_READ | libc::PROT_WRITE;
                let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
                let p = if kind == "mmap" {
                    libc::mmap(null_mut(), bytes, prot, flags, -1, 0)
                } else {
                    libc::mmap64(null_mut(), bytes, prot, flags, -1, 0)
                };
                let error = errno();
                (
                    if p == libc::MAP_FAILED { null_mut() } else { p },
                    error,
                    true,
                )
            }
            other => {
                eprintln!("job_probe: unknown KIND {other:?}\n{USAGE}");
                exit(2);
            }
        }
    };
    let align = match kind {
        "posix_memalign" | "valloc" | "pvalloc" | "mmap" | "mmap64" => 4096,
        "aligned_alloc" => 1 << 16,
        "memalign" => 256,
        _ => 16,
    };
    let mut usable = String::from("-");
    let mut flag = String::from("-");
    if !p.is_null() {
        if p as usize % align != 0 {
            fail(&format!("{kind} returned {p:p}, not aligned to {align}"));
        }
        touch(p, bytes, zeroed);
        flag = match noreserve(p as usize) {
            Some(true) => "yes".into(),
            Some(false) => "no".into(),
            None => "unknown".into(),
        };
        if !kind.starts_with("mmap") {
            // SAFETY: a live block of the malloc family.
            let size = unsafe { libc::malloc_usable_size(p) };
            if size < bytes {
                fail(&format!("malloc_usable_size {size} < {bytes}"));
            }
            usable = size.to_string();
        }
    }
    println!(
        "JOBPROBE kind={kind} bytes={bytes} result={} noreserve={flag} usable={usable} library={}",
        result_of(p, error),
        library_field()
    );
    if !p.is_null() {
        // SAFETY: releases what was allocated above, the way it was allocated.
        unsafe {
            if kind.starts_with("mmap") {
                libc::munmap(p, bytes);
            } else {
                libc::free(p);
            }
        }
    }
}

extern "C" {
    fn pvalloc(size: usize) -> *mut c_void;
    fn valloc(size: usize) -> *mut c_void;
}

/// A block's expected contents: a byte per position, from a seed.
fn pattern(seed: usize, i: usize) -> u8 {
    (seed.wrapping_mul(31).wrapping_add(i.wrapping_mul(7)) % 253) as u8
}

/// The positions checked in a block of `len` bytes: the first and last 256 and a few inside
/// (a large block is never touched in full).
fn positions(len: usize) -> impl Iterator<Item = usize> {
    let head = 0..len.min(256);
    let tail = len.saturating_sub(256).max(len.min(256))..len;
    let inside = (1..8).map(move |k| len / 8 * k).filter(move |&i| i < len);
    head.chain(tail).chain(inside)
}

/// SAFETY: p points to at least len writable bytes.
unsafe fn fill(p: *mut c_void, len: usize, seed: usize) {
    for i in positions(len) {
        (p as *mut u8).add(i).write(pattern(seed, i));
    }
}

/// Whether a block filled for `len` bytes still holds its pattern in its first `kept`
/// bytes (after a realloc to `kept`).
/// SAFETY: p points to at least min(len, kept) readable bytes.
unsafe fn kept(p: *const c_void, len: usize, keep: usize, seed: usize) -> bool {
    positions(len)
        .filter(|&i| i < keep)
        .all(|i| (p as *const u8).add(i).read() == pattern(seed, i))
}

/// SAFETY: p points to at least len readable bytes.
unsafe fn intact(p: *const c_void, len: usize, seed: usize) -> bool {
    kept(p, len, len, seed)
}

/// `job_probe cross MIN`: small → above MIN (into the library's block) → larger (mremap) →
/// below MIN (back to the real allocator) → free, the contents checked at each step.
fn cross(min: usize) {
    let steps = [
        1000,
        min,
        min * 3 + 12345,
        min * 2,
        min - 4096,
        100,
        min + 1,
    ];
    let mut p: *mut c_void = null_mut();
    let mut len = 0;
    let mut noreserve_seen = Vec::new();
    for (seed, &size) in steps.iter().enumerate() {
        // SAFETY: realloc of a live block (or null), then only within its new size.
        unsafe {
            let q = libc::realloc(p, size);
            if q.is_null() {
                fail(&format!("realloc to {size} failed"));
            }
            if !p.is_null() && !kept(q, len, size, seed - 1) {
                fail(&format!("realloc {len} -> {size} lost the contents"));
            }
            // Only the positions of the old length that survive are compared; start afresh.
            fill(q, size, seed);
            if libc::malloc_usable_size(q) < size {
                fail(&format!("malloc_usable_size < {size}"));
            }
            noreserve_seen.push(format!("{size}:{}", noreserve(q as usize) == Some(true)));
            p = q;
            len = size;
        }
    }
    // SAFETY: the last live block.
    unsafe { libc::free(p) };
    println!(
        "JOBPROBE cross min={min} steps={} library={}",
        noreserve_seen.join(","),
        library_field()
    );
}

/// A small xorshift generator: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One live block in the stress test.
#[derive(Clone, Copy)]
struct Live {
    p: usize,
    len: usize,
    seed: usize,
}

/// `job_probe stress THREADS ROUNDS MAX_BYTES`
fn stress(threads: usize, rounds: usize, max: usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let handed_over: Mutex<Vec<Live>> = Mutex::new(Vec::new());
    let large = AtomicUsize::new(0);
    let operations = AtomicUsize::new(0);
    let min = library().unwrap_or(usize::MAX);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let handed_over = &handed_over;
            let (large, operations) = (&large, &operations);
            scope.spawn(move || {
                let mut rng =
                    Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
                let mut slots: Vec<Option<Live>> = vec![None; 48];
                for round in 0..rounds {
                    let i = rng.below(slots.len());
                    let size = match rng.below(10) {
                        0..=6 => 1 + rng.below(4096),
                        7 | 8 => 4096 + rng.below(max / 4),
                        _ => max / 2 + rng.below(max / 2),
                    };
                    let seed = t * 1_000_003 + round;
                    // SAFETY: every block is used only within its length, by one thread at
                    // a time, and freed once.
                    unsafe {
                        match slots[i].take() {
                            None => {
                                let (p, zeroed, align) = match rng.below(5) {
                                    0 => (libc::calloc(1, size), true, 16),
                                    1 => {
                                        let mut p = null_mut();
                                        libc::posix_memalign(&mut p, 64 << rng.below(8), size);
                                        (p, false, 64)
                                    }
                                    2 => (libc::aligned_alloc(4096, size), false, 4096),
                                    3 => (libc::realloc(null_mut(), size), false, 16),
                                    _ => (libc::malloc(size), false, 16),
                                };
                                if p.is_null() || p as usize % align != 0 {
                                    fail(&format!("allocation of {size} gave {p:p}"));
                                }
                                if zeroed
                                    && positions(size).any(|k| (p as *const u8).add(k).read() != 0)
                                {
                                    fail(&format!("calloc of {size} is not zero"));
                                }
                                if size >= min {
                                    large.fetch_add(1, Ordering::Relaxed);
                                }
                                fill(p, size, seed);
                                slots[i] = Some(Live {
                                    p: p as usize,
                                    len: size,
                                    seed,
                                });
                            }
                            Some(live) => {
                                if !intact(live.p as *const c_void, live.len, live.seed) {
                                    fail(&format!("a block of {} bytes was overwritten", live.len));
                                }
                                if libc::malloc_usable_size(live.p as *mut c_void) < live.len {
                                    fail("malloc_usable_size shrank");
                                }
                                match rng.below(4) {
                                    0 => libc::free(live.p as *mut c_void),
                                    1 => {
                                        let q = libc::realloc(live.p as *mut c_void, size);
                                        if q.is_null() || !kept(q, live.len, size, live.seed) {
                                            fail(&format!(
                                                "realloc {} -> {size} lost the contents",
                                                live.len
                                            ));
                                        }
                                        fill(q, size, seed);
                                        slots[i] = Some(Live {
                                            p: q as usize,
                                            len: size,
                                            seed,
                                        });
                                    }
                                    // Freed or reallocated later by whichever thread takes it.
                                    2 => handed_over.lock().unwrap().push(live),
                                    _ => {
                                        let other = handed_over.lock().unwrap().pop();
                                        slots[i] = Some(live);
                                        if let Some(other) = other {
                                            if !intact(
                                                other.p as *const c_void,
                                                other.len,
                                                other.seed,
                                            ) {
                                                fail("a block handed over was overwritten");
                                            }
                                            libc::free(other.p as *mut c_void);
                                        }
                                    }
                                }
                            }
                        }
                    }
                    operations.fetch_add(1, Ordering::Relaxed);
                }
                for live in slots.into_iter().flatten() {
                    // SAFETY: the thread's remaining blocks.
                    unsafe {
                        if !intact(live.p as *const c_void, live.len, live.seed) {
                            fail("a block was overwritten");
                        }
                        libc::free(live.p as *mut c_void);
                    }
                }
            });
        }
    });
    for live in handed_over.into_inner().unwrap() {
        // SAFETY: the blocks no thread took.
        unsafe { libc::free(live.p as *mut c_void) };
    }
    println!(
        "JOBPROBE stress threads={threads} operations={} large={} library={}",
        operations.into_inner(),
        large.into_inner(),
        library_field()
    );
}

/// `job_probe foreign`: while blocks of the library live (one at a small page offset, one
/// page-aligned, so that both ways of recognising pointers are active), the real
/// allocator's pointers at each page offset the library looks at (0 and 64..=2048) are
/// resized, measured and freed. Needs a threshold of a few MiB at most.
fn foreign() {
    let min = library().unwrap_or_else(|| fail("the preload library is not loaded"));
    if min > 64 << 20 {
        fail("foreign needs OVERCOMMIT_MIN_SIZE of 64 MiB or less");
    }
    // SAFETY: allocations checked for null; every pointer used within its size.
    unsafe {
        let ours = libc::malloc(min);
        let ours_aligned = libc::aligned_alloc(1 << 20, min);
        if ours.is_null() || ours_aligned.is_null() || noreserve(ours as usize) != Some(true) {
            fail("the library's own blocks were not made");
        }
        let wanted = [0usize, 64, 128, 256, 512, 1024, 2048];
        let mut found = vec![0usize; wanted.len()];
        let mut parked = Vec::new();
        let mut checked = 0;
        for round in 0..200_000usize {
            let size = 16 + round % 3000;
            let p = match round % 4 {
                0 => libc::memalign(4096, size),
                1 => libc::memalign(64 << (round % 6), size),
                _ => libc::malloc(size),
            };
            if p.is_null() {
                fail("a small allocation failed");
            }
            let offset = p as usize % 4096;
            match wanted.iter().position(|&w| w == offset) {
                Some(k) if found[k] < 8 => {
                    found[k] += 1;
                    if noreserve(p as usize) == Some(true) && size < min {
                        fail("a small allocation went to the library");
                    }
                    fill(p, size, round);
                    if libc::malloc_usable_size(p) < size {
                        fail(&format!(
                            "malloc_usable_size of a real pointer at offset {offset}"
                        ));
                    }
                    let q = libc::realloc(p, size + 100);
                    if q.is_null() || !kept(q, size, size + 100, round) {
                        fail(&format!("realloc of a real pointer at offset {offset}"));
                    }
                    libc::free(q);
                    checked += 1;
                }
                // Kept for a while, so that later allocations land elsewhere.
                _ if round % 3 == 0 => parked.push(p),
                _ => libc::free(p),
            }
            if found.iter().all(|&n| n >= 8) {
                break;
            }
        }
        for p in parked {
            libc::free(p);
        }
        libc::free(ours);
        libc::free(ours_aligned);
        let coverage: Vec<String> = wanted
            .iter()
            .zip(&found)
            .map(|(w, n)| format!("{w}:{n}"))
            .collect();
        println!(
            "JOBPROBE foreign checked={checked} offsets={} library={}",
            coverage.join(","),
            library_field()
        );
    }
}

/// `job_probe fork BYTES`: a forked child allocates BYTES, then an exec'd copy of this
/// program does (`alloc malloc BYTES`).
fn fork(bytes: usize) {
    // SAFETY: the child only allocates, prints and exits.
    match unsafe { libc::fork() } {
        -1 => fail("fork failed"),
        0 => {
            // SAFETY: a plain malloc in the child.
            let p = unsafe { libc::malloc(bytes) };
            let result = result_of(p, errno());
            if !p.is_null() {
                touch(p, bytes, false);
            }
            println!(
                "JOBPROBE fork-child bytes={bytes} result={result} noreserve={} library={}",
                !p.is_null() && noreserve(p as usize) == Some(true),
                library_field()
            );
            // SAFETY: ends the child without running the parent's exit handlers twice.
            unsafe { libc::_exit(0) };
        }
        child => {
            let mut status = 0;
            // SAFETY: waits for the child just forked.
            unsafe { libc::waitpid(child, &mut status, 0) };
            if status != 0 {
                fail("the forked child failed");
            }
        }
    }
    let status = std::process::Command::new("/proc/self/exe")
        .args(["alloc", "malloc", &bytes.to_string()])
        .status()
        .unwrap_or_else(|e| fail(&format!("exec: {e}")));
    if !status.success() {
        fail("the exec'd child failed");
    }
}

/// `job_probe hold BYTES`: allocate and wait, so that a test can look at the process.
fn hold(bytes: usize) {
    // SAFETY: a plain malloc, kept until the process is killed.
    let p = unsafe { libc::malloc(bytes) };
    let result = result_of(p, errno());
    println!(
        "JOBPROBE hold bytes={bytes} result={result} noreserve={} pid={} library={}",
        !p.is_null() && noreserve(p as usize) == Some(true),
        std::process::id(),
        library_field()
    );
    loop {
        std::thread::park();
    }
}

/// `job_probe aligned COUNT BYTES`: many live page-aligned blocks at once, more than the
/// library's registry of page-aligned blocks holds.
fn aligned(count: usize, bytes: usize) {
    let mut blocks = Vec::with_capacity(count);
    let mut failed = 0;
    for _ in 0..count {
        let mut p = null_mut();
        // SAFETY: a plain posix_memalign; the blocks are freed below.
        if unsafe { libc::posix_memalign(&mut p, 4096, bytes) } == 0 && p as usize % 4096 == 0 {
            blocks.push(p);
        } else {
            failed += 1;
        }
    }
    let flag = |p: Option<&*mut c_void>| match p.and_then(|p| noreserve(*p as usize)) {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    println!(
        "JOBPROBE aligned count={count} ok={} failed={failed} first_noreserve={} last_noreserve={} library={}",
        blocks.len(),
        flag(blocks.first()),
        flag(blocks.last()),
        library_field()
    );
    for p in blocks {
        // SAFETY: each came from posix_memalign above and is freed once.
        unsafe { libc::free(p) };
    }
    if failed > 0 {
        println!("JOBPROBE-FAIL {failed} of {count} page-aligned allocations failed");
        exit(1);
    }
}

/// The CPU time this thread has used: unlike the wall clock, it does not count the time the
/// thread waited for a CPU on a busy machine.
fn thread_cpu_time() -> std::time::Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the kernel fills `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// `job_probe bench THREADS OPS [LIVE_BYTES]`: the cost of small allocations, for
/// benches/preload_overhead.rs. Each thread keeps a ring of 64 live blocks and replaces the
/// oldest one OPS times: free, then malloc of the next size of 64 B, 128 B, ... 64 KiB,
/// writing one byte into it. Prints the CPU time per malloc+free pair of the slowest thread.
fn bench(threads: usize, ops: usize, live: usize) {
    // SAFETY: kept (or not) for the whole run, freed at the end.
    let big = if live > 0 {
        unsafe { libc::malloc(live) }
    } else {
        null_mut()
    };
    if live > 0 && big.is_null() {
        fail("the live block could not be allocated");
    }
    let start = std::sync::Barrier::new(threads + 1);
    let elapsed = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let start = &start;
                scope.spawn(move || {
                    let mut ring = [null_mut::<c_void>(); 64];
                    start.wait();
                    let t = thread_cpu_time();
                    for i in 0..ops {
                        let slot = &mut ring[i % 64];
                        // SAFETY: each block is freed once and written within its size.
                        unsafe {
                            libc::free(*slot);
                            let p = libc::malloc(64 << (i % 11));
                            if p.is_null() {
                                fail("malloc failed");
                            }
                            (p as *mut u8).write_volatile(i as u8);
                            *slot = p;
                        }
                    }
                    let elapsed = thread_cpu_time().saturating_sub(t);
                    for p in ring {
                        // SAFETY: the ring's last blocks.
                        unsafe { libc::free(p) };
                    }
                    elapsed
                })
            })
            .collect();
        start.wait();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| fail("a thread panicked")))
            .max()
            .unwrap_or_default()
    });
    // SAFETY: the live block, if any.
    unsafe { libc::free(big) };
    println!(
        "JOBPROBE bench threads={threads} ops={ops} ns_per_pair={:.2} library={}",
        elapsed.as_secs_f64() * 1e9 / ops as f64,
        library_field()
    );
}
