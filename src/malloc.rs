//! How a request to glibc's malloc (or calloc: NumPy, C, Fortran) reaches the kernel, so that
//! `check` answers for the allocation a program really makes, not only for one mmap.
//!
//! glibc's `sysmalloc()` (malloc/malloc.c), main arena, for a request whose chunk size `nb`
//! does not fit in the heap's free space:
//! 1. when `nb >= mmap_threshold` (128 KiB, raised dynamically up to 32 MiB) and mmap is not
//!    disabled, it maps `ALIGN_UP(nb + SIZE_SZ, page)` bytes;
//! 2. when that fails (or was not tried), it grows the heap with brk by
//!    `ALIGN_UP(nb + top_pad + MINSIZE - top_free, page)`, where `top_free` is the free space
//!    at the top of the heap and `top_pad` is M_TOP_PAD (128 KiB);
//! 3. when brk fails, it maps `max(that + top_free, 1 MiB)` as "mmap as morecore".
//!
//! Each step is one overcommit check of its own length. The brk step asks for less than the
//! mmap when the top of the heap has more than `top_pad` free, which is why a request a little
//! above RAM + swap can succeed in mode 0 although its mmap is refused. Pure: the process's
//! heap comes in as [`MallocState`] (from `kernel::process_heap` with `--pid`).

use serde::Serialize;

use crate::model::Node;
use crate::predict::{self, Note, Prediction, Process, Verdict};
use crate::size::HumanBytes;

/// SIZE_SZ, MALLOC_ALIGNMENT and MINSIZE of 64-bit glibc.
const SIZE_SZ: u64 = 8;
const MALLOC_ALIGNMENT: u64 = 16;
const MINSIZE: u64 = 32;
/// DEFAULT_MMAP_THRESHOLD_MIN and _MAX (64-bit): the dynamic threshold stays in between.
pub const MMAP_THRESHOLD_MIN: u64 = 128 << 10;
pub const MMAP_THRESHOLD_MAX: u64 = 32 << 20;
/// glibc's M_TOP_PAD default (measured: the first heap of a process is 132 KiB).
pub const DEFAULT_TOP_PAD: u64 = 128 << 10;
/// MMAP_AS_MORECORE_SIZE.
const MMAP_AS_MORECORE: u64 = 1 << 20;

/// Which allocation `check` asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Allocator {
    /// glibc's malloc/calloc.
    GlibcMalloc,
    /// One mmap of exactly the request.
    Mmap,
    /// The job scope's preload library: one MAP_NORESERVE mapping of its own.
    PreloadLibrary,
}

/// Where the allocation's memory comes from when it succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocPath {
    /// Free space malloc already holds: no system call, no overcommit check.
    Heap,
    /// A mapping of its own.
    Mmap,
    /// Growing the heap with brk, after the mmap was refused (or not tried).
    Brk,
    /// One or the other, depending on what is not known (the heap's free space, malloc's
    /// dynamic mmap threshold, the kernel's counter).
    Varies,
    /// Nothing succeeds.
    None,
}

/// What decides malloc's path in one process: its tunables and the state of its main heap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MallocState {
    /// M_TOP_PAD.
    pub top_pad_bytes: u64,
    /// Free bytes in the chunk at the top of the heap: the least and most it may be.
    pub top_free_min_bytes: u64,
    pub top_free_max_bytes: u64,
    /// The largest free chunk elsewhere in the heap (a request up to it needs no system call).
    pub largest_free_chunk_bytes: u64,
    /// The mmap threshold: the least and most it may be (dynamic unless set).
    pub mmap_threshold_min_bytes: u64,
    pub mmap_threshold_max_bytes: u64,
    /// M_MMAP_MAX is not 0.
    pub mmap_enabled: bool,
    /// Room between the heap's end and the next mapping, when known.
    pub brk_room_bytes: Option<u64>,
    /// Read from the process (`check --pid`), not assumed.
    pub from_process: bool,
}

impl MallocState {
    /// A process with glibc's default tunables whose heap is unknown: the top of its heap may
    /// hold anything from nothing to the largest trim threshold the dynamic adjustment sets
    /// (2 × 32 MiB): free() trims the heap whenever the top grows past it.
    pub fn glibc_defaults() -> MallocState {
        MallocState {
            top_pad_bytes: DEFAULT_TOP_PAD,
            top_free_min_bytes: 0,
            top_free_max_bytes: 2 * MMAP_THRESHOLD_MAX,
            largest_free_chunk_bytes: 0,
            mmap_threshold_min_bytes: MMAP_THRESHOLD_MIN,
            mmap_threshold_max_bytes: MMAP_THRESHOLD_MAX,
            mmap_enabled: true,
            brk_room_bytes: None,
            from_process: false,
        }
    }

    /// Applies the process's malloc settings from its environment (`MALLOC_TOP_PAD_` etc. and
    /// `GLIBC_TUNABLES=glibc.malloc.top_pad=N:...`), which glibc reads when the process starts.
    /// Setting any of them turns the dynamic thresholds off, as mallopt() does.
    pub fn with_environment<'a>(
        mut self,
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> MallocState {
        let mut settings: Vec<(String, u64)> = Vec::new();
        for (name, value) in vars {
            if name == "GLIBC_TUNABLES" {
                for item in value.split(':') {
                    if let Some((key, v)) = item.split_once('=') {
                        if let (Some(key), Some(v)) =
                            (key.strip_prefix("glibc.malloc."), tunable_value(v))
                        {
                            settings.push((key.to_string(), v));
                        }
                    }
                }
            } else if let Some(key) = name
                .strip_prefix("MALLOC_")
                .and_then(|n| n.strip_suffix('_'))
            {
                if let Some(v) = tunable_value(value) {
                    settings.push((key.to_ascii_lowercase(), v));
                }
            }
        }
        let (mut fixed, mut trim) = (false, None);
        for (key, value) in settings {
            match key.as_str() {
                "top_pad" => self.top_pad_bytes = value,
                "mmap_threshold" => self.mmap_threshold_min_bytes = value.min(MMAP_THRESHOLD_MAX),
                "mmap_max" => self.mmap_enabled = value != 0,
                "trim_threshold" => trim = Some(value),
                _ => continue,
            }
            fixed = true;
        }
        if fixed {
            self.mmap_threshold_max_bytes = self.mmap_threshold_min_bytes;
            if !self.from_process {
                self.top_free_max_bytes = trim
                    .unwrap_or(MMAP_THRESHOLD_MIN)
                    .max(self.top_pad_bytes.saturating_add(MINSIZE + 4096));
            }
        }
        self
    }

    /// The heap as read from the process: exact free space at its top.
    pub fn with_heap(
        mut self,
        top_free: u64,
        largest_free_chunk: u64,
        brk_room: Option<u64>,
    ) -> MallocState {
        self.top_free_min_bytes = top_free;
        self.top_free_max_bytes = top_free;
        self.largest_free_chunk_bytes = largest_free_chunk;
        self.brk_room_bytes = brk_room;
        self.from_process = true;
        self
    }
}

/// `check`'s account of the allocation's path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Allocation {
    pub allocator: Allocator,
    pub path: AllocPath,
    /// The length of malloc's own mmap (the request, with its chunk header, in whole pages).
    pub mmap_bytes: u64,
    /// How much brk would grow the heap: the least and the most (glibc only).
    pub brk_min_bytes: Option<u64>,
    pub brk_max_bytes: Option<u64>,
    /// glibc only: the state that decides.
    pub malloc: Option<MallocState>,
}

/// A size_t setting as glibc reads it: decimal or 0x-hex; -1 (and any negative) is the largest.
fn tunable_value(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(magnitude) = text.strip_prefix('-') {
        return magnitude.parse::<u64>().ok().map(|_| u64::MAX);
    }
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn align_up(value: u64, to: u64) -> Option<u64> {
    value.checked_add(to - 1).map(|v| v / to * to)
}

/// glibc's request2size(): the chunk that holds `request` bytes.
fn chunk_size(request: u64) -> Option<u64> {
    let padded = request.checked_add(SIZE_SZ + MALLOC_ALIGNMENT - 1)?;
    Some(if padded < MINSIZE {
        MINSIZE
    } else {
        padded & !(MALLOC_ALIGNMENT - 1)
    })
}

/// One way things may be: how much is free at the top of the heap, and whether the request
/// is at or above the mmap threshold.
fn outcome(
    kernel: &impl Fn(u64) -> Verdict,
    state: &MallocState,
    nb: u64,
    top_free: u64,
    mmap_first: bool,
    page: u64,
) -> (Verdict, AllocPath) {
    if nb.saturating_add(MINSIZE) <= top_free || nb <= state.largest_free_chunk_bytes {
        return (Verdict::Allowed, AllocPath::Heap);
    }
    let brk_len = brk_length(nb, state.top_pad_bytes, top_free, page);
    let brk = match (brk_len, state.brk_room_bytes) {
        (Some(len), Some(room)) if len > room => Verdict::Refused,
        (Some(len), _) => kernel(len),
        (None, _) => Verdict::Refused,
    };
    if mmap_first {
        let mmap = mmap_length(nb, page).map_or(Verdict::Refused, kernel);
        first_then(mmap, AllocPath::Mmap, brk, AllocPath::Brk)
    } else {
        // The heap first; when brk fails, a mapping of at least 1 MiB instead.
        let fallback = brk_len
            .and_then(|len| align_up(len.checked_add(top_free)?, page))
            .map_or(Verdict::Refused, |len| kernel(len.max(MMAP_AS_MORECORE)));
        first_then(brk, AllocPath::Brk, fallback, AllocPath::Mmap)
    }
}

/// The outcome of trying `first`, then `second` when it fails.
fn first_then(
    first: Verdict,
    first_path: AllocPath,
    second: Verdict,
    second_path: AllocPath,
) -> (Verdict, AllocPath) {
    use Verdict::*;
    match (first, second) {
        (Allowed, _) => (Allowed, first_path),
        (Refused, Allowed) => (Allowed, second_path),
        (Borderline, Allowed) => (Allowed, AllocPath::Varies),
        (Refused, Refused) => (Refused, AllocPath::None),
        (Borderline, Refused) => (Borderline, first_path),
        (Refused, Borderline) => (Borderline, second_path),
        (Borderline, Borderline) => (Borderline, AllocPath::Varies),
    }
}

fn mmap_length(nb: u64, page: u64) -> Option<u64> {
    align_up(nb.checked_add(SIZE_SZ)?, page)
}

fn brk_length(nb: u64, top_pad: u64, top_free: u64, page: u64) -> Option<u64> {
    align_up(
        nb.checked_add(top_pad)?
            .checked_add(MINSIZE)?
            .saturating_sub(top_free),
        page,
    )
}

/// Predicts `malloc(request)` by `process` on `node`: every way malloc's path may go (the
/// extremes of the heap's free space and of the mmap threshold) is checked against the
/// kernel's rules; the answer is firm only when they all agree.
pub fn predict_malloc(
    node: &Node,
    process: &Process,
    request: u64,
    state: &MallocState,
) -> (Prediction, Allocation) {
    let page = node.page_size;
    let kernel = |bytes: u64| predict::predict(node, process, bytes).verdict;
    let Some(nb) = chunk_size(request) else {
        // Larger than any chunk: malloc fails before asking the kernel.
        let mut prediction = predict::predict(node, process, request);
        prediction.verdict = Verdict::Refused;
        return (
            prediction,
            Allocation {
                allocator: Allocator::GlibcMalloc,
                path: AllocPath::None,
                mmap_bytes: request,
                brk_min_bytes: None,
                brk_max_bytes: None,
                malloc: Some(state.clone()),
            },
        );
    };
    let mut mmap_first = Vec::new();
    if state.mmap_enabled && nb >= state.mmap_threshold_min_bytes {
        mmap_first.push(true);
    }
    if !state.mmap_enabled || nb < state.mmap_threshold_max_bytes {
        mmap_first.push(false);
    }
    let mut outcomes = Vec::new();
    for &first in &mmap_first {
        for top_free in [state.top_free_min_bytes, state.top_free_max_bytes] {
            outcomes.push(outcome(&kernel, state, nb, top_free, first, page));
        }
    }
    let verdict = if outcomes.iter().all(|o| o.0 == Verdict::Allowed) {
        Verdict::Allowed
    } else if outcomes.iter().all(|o| o.0 == Verdict::Refused) {
        Verdict::Refused
    } else {
        Verdict::Borderline
    };
    let mut paths = outcomes
        .iter()
        .filter(|o| o.1 != AllocPath::None)
        .map(|o| o.1);
    let path = match paths.next() {
        None => AllocPath::None,
        Some(first) if paths.all(|p| p == first) => first,
        Some(_) => AllocPath::Varies,
    };
    let mmap_bytes = mmap_length(nb, page).unwrap_or(u64::MAX);
    let brk_min = brk_length(nb, state.top_pad_bytes, state.top_free_max_bytes, page);
    let brk_max = brk_length(nb, state.top_pad_bytes, state.top_free_min_bytes, page);
    // The figures shown are those of the step that decides: brk's when it surely succeeds
    // after a refused mmap, the mmap's otherwise.
    let decisive = match (verdict, path, brk_max) {
        (Verdict::Allowed, AllocPath::Brk, Some(brk)) => brk,
        _ => mmap_bytes,
    };
    let mut prediction = predict::predict(node, process, decisive);
    prediction.verdict = verdict;
    prediction.request_bytes = request;
    if let (Some(low), Some(high)) = (brk_min, brk_max) {
        if verdict == Verdict::Borderline || path == AllocPath::Brk {
            prediction.notes.push(Note::new(
                "malloc_brk_fallback",
                format!(
                    "glibc's malloc maps {} first; when that is refused it grows the heap with brk by {}{}, depending on the free space at the top of the process's heap ({}){}",
                    HumanBytes(mmap_bytes),
                    HumanBytes(low),
                    if low == high { String::new() } else { format!(" to {}", HumanBytes(high)) },
                    if state.from_process {
                        format!("{} free, read from the process", HumanBytes(state.top_free_min_bytes))
                    } else {
                        format!("anything up to {} in a process not given with --pid", HumanBytes(state.top_free_max_bytes))
                    },
                    if state.from_process { "" } else { "; --pid reads it" },
                ),
            ));
        }
    }
    (
        prediction,
        Allocation {
            allocator: Allocator::GlibcMalloc,
            path,
            mmap_bytes,
            brk_min_bytes: brk_min,
            brk_max_bytes: brk_max,
            malloc: Some(state.clone()),
        },
    )
}

/// Under the job scope, a request of at least its threshold: the preload library maps it
/// with MAP_NORESERVE, a header and the request in whole pages (preload/src/block.rs).
pub fn predict_preloaded(node: &Node, process: &Process, request: u64) -> (Prediction, Allocation) {
    const HEADER: u64 = 64;
    let length = request
        .checked_add(HEADER)
        .and_then(|l| align_up(l, node.page_size))
        .unwrap_or(u64::MAX);
    let mut prediction = predict::predict_noreserve(node, process, length);
    prediction.request_bytes = request;
    one_mapping(prediction, Allocator::PreloadLibrary, length)
}

/// Predicts one mmap of exactly `request` bytes.
pub fn predict_mmap(node: &Node, process: &Process, request: u64) -> (Prediction, Allocation) {
    one_mapping(
        predict::predict(node, process, request),
        Allocator::Mmap,
        request,
    )
}

/// One mapping of `length` bytes, as `prediction` judged it.
fn one_mapping(
    prediction: Prediction,
    allocator: Allocator,
    length: u64,
) -> (Prediction, Allocation) {
    let path = match prediction.verdict {
        Verdict::Refused => AllocPath::None,
        _ => AllocPath::Mmap,
    };
    let allocation = Allocation {
        allocator,
        path,
        mmap_bytes: length,
        brk_min_bytes: None,
        brk_max_bytes: None,
        malloc: None,
    };
    (prediction, allocation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::node;
    use crate::model::Mode;

    const GIB: u64 = 1 << 30;

    fn user() -> Process {
        Process {
            vm_size: Some(1 << 20),
            ..Process::default()
        }
    }

    /// 4 GiB RAM, no swap, mode 0: the limit is exactly 4 GiB of pages.
    fn heuristic() -> Node {
        node(4 * GIB, 0, Mode::Heuristic, 50, 0, 0)
    }

    #[test]
    fn sizes_follow_glibc() {
        assert_eq!(chunk_size(0), Some(32));
        assert_eq!(chunk_size(24), Some(32));
        assert_eq!(chunk_size(25), Some(48));
        assert_eq!(chunk_size(4 * GIB), Some(4 * GIB + 16));
        assert_eq!(chunk_size(u64::MAX), None);
        // malloc(4 GiB) maps one page more than 4 GiB: its chunk header does not fit.
        assert_eq!(mmap_length(4 * GIB + 16, 4096), Some(4 * GIB + 4096));
        // The first heap of a process: 1 byte + 128 KiB top pad = 132 KiB.
        assert_eq!(brk_length(32, DEFAULT_TOP_PAD, 0, 4096), Some(132 << 10));
    }

    #[test]
    fn below_the_limit_the_mmap_succeeds_and_far_above_nothing_does() {
        let n = heuristic();
        let state = MallocState::glibc_defaults();
        let (p, a) = predict_malloc(&n, &user(), GIB, &state);
        assert_eq!((p.verdict, a.path), (Verdict::Allowed, AllocPath::Mmap));
        let (p, a) = predict_malloc(&n, &user(), 4 * GIB + 128 * (1 << 20), &state);
        assert_eq!((p.verdict, a.path), (Verdict::Refused, AllocPath::None));
    }

    #[test]
    fn just_above_the_mmap_limit_brk_decides_by_the_free_space_at_the_top_of_the_heap() {
        let n = heuristic();
        // A request whose mmap is one page too big (its header), and a little more.
        let request = 4 * GIB + 40_000;
        let (p, a) = predict_malloc(&n, &user(), request, &MallocState::glibc_defaults());
        assert_eq!(p.verdict, Verdict::Borderline, "unknown heap: either way");
        assert_eq!(a.path, AllocPath::Brk);
        assert!(p.notes.iter().any(|n| n.code == "malloc_brk_fallback"));
        let read = |top_free| MallocState::glibc_defaults().with_heap(top_free, 0, None);
        // brk grows by request + 16 + 128 KiB + 32 - top_free, in pages: it fits in 4 GiB
        // when the top holds at least 40,000 + 16 + 131,104 bytes.
        let needed = 40_000 + 16 + DEFAULT_TOP_PAD + MINSIZE;
        let (p, a) = predict_malloc(&n, &user(), request, &read(needed));
        assert_eq!((p.verdict, a.path), (Verdict::Allowed, AllocPath::Brk));
        assert_eq!(a.brk_max_bytes, Some(4 * GIB));
        let (p, a) = predict_malloc(&n, &user(), request, &read(needed - 4096 - 16));
        assert_eq!((p.verdict, a.path), (Verdict::Refused, AllocPath::None));
    }

    #[test]
    fn a_request_that_fits_in_the_heap_asks_the_kernel_nothing() {
        let n = node(GIB, 0, Mode::Never, 0, 0, 0);
        let state = MallocState::glibc_defaults().with_heap(1 << 20, 0, None);
        let (p, a) = predict_malloc(&n, &user(), 512 << 10, &state);
        assert_eq!((p.verdict, a.path), (Verdict::Allowed, AllocPath::Heap));
    }

    #[test]
    fn the_environment_sets_the_tunables() {
        let state = MallocState::glibc_defaults().with_environment([
            ("MALLOC_TOP_PAD_", "0"),
            ("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0:glibc.rtld.x=1"),
            ("PATH", "/bin"),
        ]);
        assert_eq!(state.top_pad_bytes, 0);
        assert!(!state.mmap_enabled);
        assert_eq!(
            state.mmap_threshold_min_bytes,
            state.mmap_threshold_max_bytes
        );
        // No mmap at all: brk first, then the 1 MiB-or-more mapping.
        let n = heuristic();
        let (p, a) = predict_malloc(&n, &user(), GIB, &state);
        assert_eq!((p.verdict, a.path), (Verdict::Allowed, AllocPath::Brk));
    }

    proptest::proptest! {
        #[test]
        fn a_firm_malloc_verdict_never_contradicts_an_mmap_of_the_request(
            mem in (1u64 << 28)..(1 << 36),
            swap in 0u64..(1 << 32),
            strict in proptest::bool::ANY,
            ratio in 0i64..=100,
            committed in 0u64..(1 << 34),
            offset in 0u64..(96 << 20),
            below in proptest::bool::ANY,
        ) {
            let mode = if strict { Mode::Never } else { Mode::Heuristic };
            let n = node(mem & !4095, swap & !4095, mode, ratio, 0, committed & !4095);
            let total = n.memory.mem_total + n.memory.swap_total;
            let request = if below { total.saturating_sub(offset) } else { total + offset };
            let (p, _) = predict_malloc(&n, &user(), request, &MallocState::glibc_defaults());
            let raw = predict::predict(&n, &user(), request).verdict;
            // The heap may hold up to 64 MiB: a refused malloc means an mmap of the request
            // minus that would be refused too; an allowed malloc (by its own mmap, one page
            // more) means the raw mmap is allowed.
            if p.verdict == Verdict::Allowed && request > 64 << 20 {
                proptest::prop_assert_ne!(raw, Verdict::Refused);
            }
            if p.verdict == Verdict::Refused {
                proptest::prop_assert_ne!(raw, Verdict::Allowed);
            }
        }
    }
}
