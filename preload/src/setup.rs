//! What the library decides once per process: the page size, the threshold, and the secret
//! that marks its own blocks.
//!
//! Every value is computed without allocating and published with a compare-and-swap from 0,
//! so any thread may compute it (no thread ever waits for another, not even in a child forked
//! in the middle of it) and all of them then read the same value.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::sys;

/// The environment variable `overcommitctl run --scope job` sets: the threshold in bytes.
pub const MIN_SIZE_VAR: &core::ffi::CStr = c"OVERCOMMIT_MIN_SIZE";

/// Without the variable and without /proc/meminfo.
const FALLBACK_MIN_SIZE: usize = 1 << 30;

static PAGE: AtomicUsize = AtomicUsize::new(0);
static MIN_SIZE: AtomicUsize = AtomicUsize::new(0);
static SECRET: AtomicU64 = AtomicU64::new(0);

fn publish(cell: &AtomicUsize, value: usize) -> usize {
    match cell.compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => value,
        Err(winner) => winner,
    }
}

/// The page size (the kernel's, from the auxiliary vector).
#[inline]
pub fn page() -> usize {
    match PAGE.load(Ordering::Acquire) {
        0 => {
            // SAFETY: getauxval reads the auxiliary vector; it neither allocates nor fails.
            let page = unsafe { libc::getauxval(libc::AT_PAGESZ) } as usize;
            let page = if page.is_power_of_two() && page >= 4096 {
                page
            } else {
                4096
            };
            publish(&PAGE, page)
        }
        page => page,
    }
}

/// Allocations and mappings of at least this many bytes get MAP_NORESERVE.
#[inline]
pub fn min_size() -> usize {
    match MIN_SIZE.load(Ordering::Acquire) {
        0 => publish(&MIN_SIZE, compute_min_size()),
        size => size,
    }
}

/// The per-process secret of the block headers (never 0).
#[inline]
pub fn secret() -> u64 {
    match SECRET.load(Ordering::Acquire) {
        0 => {
            let value = sys::random_u64().unwrap_or_else(weak_random) | 1;
            match SECRET.compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => value,
                Err(winner) => winner,
            }
        }
        value => value,
    }
}

/// Only when getrandom has nothing yet (very early boot): addresses under ASLR, the clock,
/// the pid. A collision needs a foreign pointer's 8 bytes to match anyway.
fn weak_random() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the kernel (or the vDSO) fills `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let stack = &now as *const libc::timespec as u64;
    let code = weak_random as fn() -> u64 as usize as u64;
    mix(stack ^ code.rotate_left(17) ^ (now.tv_nsec as u64).rotate_left(33) ^ now.tv_sec as u64)
        ^ (sys::getpid() as u64).rotate_left(48)
}

/// A 64-bit finaliser (from splitmix64): every input bit reaches every output bit.
#[inline]
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// OVERCOMMIT_MIN_SIZE when set (decimal bytes, at least one page), else half of
/// MemTotal + SwapTotal: the heuristic (mode 0) refuses one request only above
/// MemTotal + SwapTotal, so smaller ones need no help and stay charged, and the margin of a
/// half covers swap turned off or memory taken away while the job runs.
fn compute_min_size() -> usize {
    // SAFETY: getenv returns a pointer into the environment or null; it does not allocate.
    let value = unsafe { libc::getenv(MIN_SIZE_VAR.as_ptr()) };
    if !value.is_null() {
        // SAFETY: the environment holds NUL-terminated strings.
        let text = unsafe { core::ffi::CStr::from_ptr(value) }.to_bytes();
        match parse_decimal(text) {
            Some(size) if size >= page() => return size,
            _ => sys::warn(&[
                b"libovercommit_preload: ignoring OVERCOMMIT_MIN_SIZE=",
                &text[..text.len().min(40)],
                b" (expected a number of bytes, at least one page); using half of MemTotal + SwapTotal",
            ]),
        }
    }
    node_min_size().unwrap_or(FALLBACK_MIN_SIZE)
}

fn node_min_size() -> Option<usize> {
    let mut buf = [0u8; 4096];
    let len = sys::read_file(c"/proc/meminfo", &mut buf)?;
    let text = buf.get(..len)?;
    let mem = meminfo_kb(text, b"MemTotal:")?;
    let swap = meminfo_kb(text, b"SwapTotal:").unwrap_or(0);
    let bytes = mem.checked_add(swap)?.checked_mul(1024)? / 2;
    let size = bytes / page() * page();
    (size >= page()).then_some(size)
}

/// The kB value of a `Key:   123 kB` line.
fn meminfo_kb(text: &[u8], key: &[u8]) -> Option<usize> {
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let (line, tail) = rest.split_at(end);
        rest = tail.get(1..).unwrap_or(&[]);
        if let Some(value) = line.strip_prefix(key) {
            let digits = value.trim_ascii_start();
            let end = digits
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(digits.len());
            return parse_decimal(digits.get(..end)?);
        }
    }
    None
}

fn parse_decimal(text: &[u8]) -> Option<usize> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0usize, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(usize::from(b - b'0'))
        } else {
            None
        }
    })
}
