//! The library's own blocks: one MAP_NORESERVE mapping per large allocation, and how to tell
//! them from the real allocator's pointers.
//!
//! A block's header is the 64 bytes right before the pointer handed out:
//!
//! ```text
//! base (page aligned)                       p = the pointer handed out
//! |<- alignment slack ->|<- header (64 B) ->|<- at least the requested size ...->| base + len
//! ```
//!
//! It holds a magic word, `secret ^ mix(p)` (a per-process random secret bound to the
//! block's own address), the mapping's base and length, and a check word over all of them.
//! Recognising a pointer must never misread one of the real allocator's and never touch
//! unmapped memory:
//!
//! - Our pointers sit at a page offset that is a power of two from 64 to half a page, with
//!   the header in the same page. For any live pointer at such an offset, whoever allocated
//!   it, the 64 bytes before it lie in the same page as the pointer, which is mapped: reading
//!   them is safe. They are ours only if both words match, which real data does with
//!   probability 2^-128 (and a stale copy of a header never does: the magic is bound to the
//!   address, and a mapping freed here is unmapped, so its page comes back zeroed).
//! - Page-aligned pointers (alignments of a page or more) would have their header on the
//!   previous page, which a foreign pointer does not guarantee to be mapped: they are
//!   recognised by a lookup in a small registry instead, and only then is the header read.
//! - `free` and `realloc` first rule pointers out by their low bits, which are those of few
//!   of the real allocator's pointers; until this library has handed out anything, that is
//!   one load.

use core::ffi::c_void;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::setup::{mix, page, secret};
use crate::sys;

/// Bytes of header before every pointer; also the smallest alignment of our pointers.
pub const HEADER: usize = 64;

/// Page-aligned blocks (alignment of a page or more), by pointer; 0 = free slot.
const REGISTRY_SLOTS: usize = 1024;
static REGISTRY: [AtomicUsize; REGISTRY_SLOTS] = [const { AtomicUsize::new(0) }; REGISTRY_SLOTS];
static REGISTERED: AtomicUsize = AtomicUsize::new(0);

/// What this library has ever handed out, for the fast paths: bit `low >> 6` for the low 12
/// bits of each of its pointers (0 or a power of two from 64 to 2048, so bits 0, 1, 2, 4, 8,
/// 16 and 32), and [`ARENA`] once the bootstrap arena has handed out memory. Bits are set
/// before a pointer is handed out and never cleared: a superset of what is live, with no race
/// between the last free of a class and a new block of it.
static CLASSES: AtomicU64 = AtomicU64::new(0);
const ARENA: u64 = 1 << 63;
/// The class of pointers at offset [`HEADER`] (alignments up to 64).
const HEADER_CLASS: u64 = 1 << (HEADER >> 6);

/// A cheap test that `p` cannot be ours, for the fast paths: nothing was ever handed out
/// (one load), or its low bits are not those of any pointer we handed out and the bootstrap
/// arena was never used. With the usual blocks (malloc's alignment: low bits 64) about one in
/// 256 of the real allocator's pointers fails it and is looked at closely.
///
/// The low bits are tested with one comparison, not two branches: whether they match is data
/// the branch predictor cannot learn, and a mispredicted branch costs more than the test.
#[inline(always)]
pub fn surely_foreign(p: *mut c_void) -> bool {
    let classes = CLASSES.load(Ordering::Relaxed);
    if classes == 0 {
        return true;
    }
    let low = p as u64 & 4095;
    if classes == HEADER_CLASS {
        // Only blocks of malloc's alignment so far: the usual case, one comparison.
        return low != HEADER as u64;
    }
    // 0 exactly when the low bits are a multiple of 64 of a class handed out.
    let mismatch = (low & 63) | (((classes >> (low >> 6)) & 1) ^ 1);
    // Once the arena has been used (rarely: only if dlsym allocated), every pointer is
    // looked at closely.
    mismatch != 0 && classes & ARENA == 0
}

/// The bootstrap arena handed out memory: from now on `free` must look for its pointers.
pub fn note_arena_in_use() {
    CLASSES.fetch_or(ARENA, Ordering::AcqRel);
}

/// One of our mappings.
#[derive(Clone, Copy)]
pub struct Block {
    pub base: usize,
    pub len: usize,
    /// The pointer handed out.
    pub ptr: usize,
}

impl Block {
    /// Bytes the caller may use: up to the end of the mapping.
    pub fn usable(&self) -> usize {
        self.base + self.len - self.ptr
    }

    fn magic(ptr: usize) -> u64 {
        secret() ^ mix(ptr as u64)
    }

    fn check(&self) -> u64 {
        mix(secret().rotate_left(32)
            ^ mix(self.base as u64)
            ^ (self.len as u64).rotate_left(21)
            ^ (self.ptr as u64).rotate_left(42))
    }

    fn header(ptr: usize) -> *mut [AtomicUsize; 4] {
        (ptr - HEADER) as *mut [AtomicUsize; 4]
    }

    /// SAFETY: the header's 64 bytes belong to this block's mapping.
    unsafe fn write_header(&self) {
        let words = &*Block::header(self.ptr);
        words[0].store(Block::magic(self.ptr) as usize, Ordering::Relaxed);
        words[1].store(self.base, Ordering::Relaxed);
        words[2].store(self.len, Ordering::Relaxed);
        words[3].store(self.check() as usize, Ordering::Release);
    }

    /// Reads and verifies the header before `ptr`.
    /// SAFETY: the 64 bytes before `ptr` are mapped (see the module's notes).
    unsafe fn read_header(ptr: usize) -> Option<Block> {
        let words = &*Block::header(ptr);
        if words[0].load(Ordering::Acquire) as u64 != Block::magic(ptr) {
            return None;
        }
        let block = Block {
            base: words[1].load(Ordering::Relaxed),
            len: words[2].load(Ordering::Relaxed),
            ptr,
        };
        let end = block.base.checked_add(block.len)?;
        let sane = words[3].load(Ordering::Relaxed) as u64 == block.check()
            && block.base % page() == 0
            && block.base + HEADER <= ptr
            && ptr < end;
        sane.then_some(block)
    }
}

/// What a pointer given to free/realloc/malloc_usable_size is.
pub enum Owner {
    /// The real allocator's (or null).
    Real,
    /// Ours.
    Block(Block),
    /// The bootstrap arena's, with its size.
    Arena(usize),
}

/// Who allocated `p`. `p` must be null or a live pointer of some allocator.
pub fn owner(p: *mut c_void) -> Owner {
    let p = p as usize;
    if p == 0 || CLASSES.load(Ordering::Acquire) == 0 {
        return Owner::Real;
    }
    if let Some(size) = crate::real::arena_block(p) {
        return Owner::Arena(size);
    }
    let offset = p & (page() - 1);
    let candidate = if offset == 0 {
        registered(p)
    } else {
        offset.is_power_of_two() && offset >= HEADER && offset <= page() / 2
    };
    if !candidate {
        return Owner::Real;
    }
    // SAFETY: at a non-zero page offset of 64 or more, the header lies in the pointer's own
    // page, which is mapped because the pointer is live; a page-aligned pointer got here only
    // through the registry, so it is ours and its header is in our mapping.
    match unsafe { Block::read_header(p) } {
        Some(block) => Owner::Block(block),
        None => Owner::Real,
    }
}

fn registered(p: usize) -> bool {
    REGISTERED.load(Ordering::Acquire) != 0
        && REGISTRY
            .iter()
            .any(|slot| slot.load(Ordering::Acquire) == p)
}

fn register(p: usize) -> bool {
    for slot in &REGISTRY {
        if slot
            .compare_exchange(0, p, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            REGISTERED.fetch_add(1, Ordering::AcqRel);
            return true;
        }
    }
    false
}

/// Replaces `old` by `new` in the registry (`new` 0: removes it).
fn reregister(old: usize, new: usize) {
    for slot in &REGISTRY {
        if slot
            .compare_exchange(old, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            if new == 0 {
                REGISTERED.fetch_sub(1, Ordering::AcqRel);
            }
            return;
        }
    }
}

/// Where the pointer goes in a mapping at `base` for `align`, and how long the mapping must
/// be for `size` bytes there.
fn layout(size: usize, align: usize) -> Option<(usize, usize)> {
    let page = page();
    let align = align.max(HEADER);
    if align <= page / 2 {
        // Offset `align` in the first page: the header fits before it in that page.
        let len = align.checked_add(size)?.checked_next_multiple_of(page)?;
        Some((align, len))
    } else {
        // The pointer is placed at the first multiple of `align` at least a page in; the
        // mapping starts page aligned, so the slack before it is less than `align`.
        let align = align.checked_next_multiple_of(page)?;
        let len = align
            .checked_add(size.checked_next_multiple_of(page)?)?
            .checked_add(page)?;
        Some((align, len))
    }
}

/// A new zeroed block of at least `size` bytes at a multiple of `align` (a power of two),
/// or null with errno ENOMEM. `None` when a page-aligned block finds no free slot in the
/// registry: the caller then lets the real allocator serve the request (charged, exactly as
/// without the library) rather than failing it.
pub fn alloc(size: usize, align: usize) -> Option<*mut c_void> {
    let Some((offset, len)) = layout(size, align) else {
        sys::set_errno(libc::ENOMEM);
        return Some(core::ptr::null_mut());
    };
    let Some(base) = sys::map_noreserve(len) else {
        return Some(core::ptr::null_mut());
    };
    let ptr = if offset < page() {
        base + offset
    } else {
        let ptr = (base + page()).next_multiple_of(offset);
        if !register(ptr) {
            // SAFETY: our own fresh mapping.
            unsafe { sys::unmap(base, len) };
            return None;
        }
        ptr
    };
    let block = Block { base, len, ptr };
    CLASSES.fetch_or(1 << ((ptr & 4095) >> 6), Ordering::AcqRel);
    // SAFETY: the header lies in the mapping just made.
    unsafe { block.write_header() };
    Some(ptr as *mut c_void)
}

/// Unmaps a block.
pub fn free(block: Block) {
    // SAFETY: the block is ours and is being freed: nothing else may use it now.
    unsafe {
        (*Block::header(block.ptr))[0].store(0, Ordering::Release);
        if block.ptr % page() == 0 {
            reregister(block.ptr, 0);
        }
        sys::unmap(block.base, block.len);
    }
}

/// Grows or shrinks a block to at least `size` bytes, moving the mapping if it must (the
/// kernel moves the pages: nothing is copied or touched). Null with errno ENOMEM when the
/// kernel refuses; the block is then unchanged.
pub fn resize(block: Block, size: usize) -> *mut c_void {
    let offset = block.ptr - block.base;
    let Some(len) = offset
        .checked_add(size)
        .and_then(|l| l.checked_next_multiple_of(page()))
    else {
        sys::set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    };
    if len == block.len {
        return block.ptr as *mut c_void;
    }
    // SAFETY: our own mapping, resized as a whole.
    let Some(base) = (unsafe { sys::remap(block.base, block.len, len) }) else {
        return core::ptr::null_mut();
    };
    let moved = Block {
        base,
        len,
        ptr: base + offset,
    };
    // Page-aligned mappings keep the pointer's low bits; said again all the same.
    CLASSES.fetch_or(1 << ((moved.ptr & 4095) >> 6), Ordering::AcqRel);
    if moved.ptr % page() == 0 && moved.ptr != block.ptr {
        reregister(block.ptr, moved.ptr);
    }
    // SAFETY: the header moved with the mapping; it is rewritten for its new address.
    unsafe { moved.write_header() };
    moved.ptr as *mut c_void
}
