//! libovercommit_preload.so: the job scope of `overcommitctl run --scope job`.
//!
//! Loaded with LD_PRELOAD into a job (and inherited by its children), it maps the job's large
//! private anonymous allocations with MAP_NORESERVE. In overcommit modes 0 and 1 the kernel
//! does not charge such mappings to Committed_AS and so never refuses them under the
//! heuristic (mm/mmap.c sets VM_NORESERVE unless the mode is 2; such mappings are not
//! "accountable"): the job gets mode-1 behaviour for its big arrays while the node's policy
//! stays as it is. In mode 2 the kernel ignores the flag, so strict accounting still holds.
//!
//! What it replaces: the malloc family (malloc, calloc, realloc, reallocarray,
//! posix_memalign, aligned_alloc, memalign, valloc, pvalloc, free, malloc_usable_size) and
//! mmap/mmap64. Requests of at least the threshold (OVERCOMMIT_MIN_SIZE bytes, by default
//! half of MemTotal + SwapTotal; see setup.rs) become one MAP_NORESERVE mapping each
//! (block.rs); everything smaller goes to the real allocator untouched, found with
//! dlsym(RTLD_NEXT) (real.rs). Direct mmap calls of private anonymous writable mappings of at
//! least the threshold get the flag added.
//!
//! Rules this code keeps: no allocation anywhere (a global allocator that aborts proves it
//! in every test), no locks (so fork in any thread is safe and nothing can deadlock), no
//! panics (checked arithmetic), and our own system calls go straight to the kernel (sys.rs).
//! It is Rust: nothing here needed C.

// The exported functions have the contracts of malloc(3) and mmap(2), for C callers.
#![allow(clippy::missing_safety_doc)]

mod block;
mod real;
mod setup;
mod sys;

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::{c_int, c_void};
use core::mem::transmute;

use block::Owner;
use real::{AlignFn, CallocFn, FreeFn, MallocFn, PosixMemalignFn, ReallocFn, UsableFn};

/// Rust code in this library must never allocate: the process's allocator is the one being
/// replaced. Anything that tried would stop here, loudly, in the tests.
struct NoAllocation;

// SAFETY: it never hands out memory.
unsafe impl GlobalAlloc for NoAllocation {
    unsafe fn alloc(&self, _: Layout) -> *mut u8 {
        sys::die(b"internal error: a Rust allocation inside the allocator")
    }
    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {
        sys::die(b"internal error: a Rust deallocation inside the allocator")
    }
}

#[global_allocator]
static NO_ALLOCATION: NoAllocation = NoAllocation;

/// Resolves everything while the process is still single-threaded, so the lazy paths are
/// only a safety net.
#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;

extern "C" fn constructor() {
    setup::min_size();
    setup::secret();
    real::ready();
}

/// The threshold in force, for diagnostics and tests (`dlsym(RTLD_DEFAULT, ...)`).
#[no_mangle]
pub extern "C" fn overcommit_preload_min_size() -> usize {
    setup::min_size()
}

/// Sizes below this go straight to the real allocator; 0 until it is known.
#[inline(always)]
fn fast_limit() -> usize {
    real::fast_limit()
}

#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    if size < fast_limit() {
        return transmute::<usize, MallocFn>(real::MALLOC.get())(size);
    }
    allocate(size, 0)
}

#[no_mangle]
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    let Some(total) = count.checked_mul(size) else {
        sys::set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    };
    if total < fast_limit() {
        return transmute::<usize, CallocFn>(real::CALLOC.get())(count, size);
    }
    calloc_slow(count, size, total)
}

#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    let real_free = real::FREE.get();
    if real_free != 0 && block::surely_foreign(p) {
        return transmute::<usize, FreeFn>(real_free)(p);
    }
    free_slow(p)
}

#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if size < fast_limit() && block::surely_foreign(p) {
        return transmute::<usize, ReallocFn>(real::REALLOC.get())(p, size);
    }
    realloc_slow(p, size)
}

#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        Some(total) => realloc(p, total),
        None => {
            sys::set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    match block::owner(p) {
        Owner::Block(block) => block.usable(),
        Owner::Arena(size) => size,
        Owner::Real if p.is_null() || !real::ready() => 0,
        Owner::Real => transmute::<usize, UsableFn>(real::MALLOC_USABLE_SIZE.get())(p),
    }
}

#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    if size < fast_limit() {
        return transmute::<usize, PosixMemalignFn>(real::POSIX_MEMALIGN.get())(out, align, size);
    }
    let saved = sys::errno();
    let p = allocate(size, align);
    sys::set_errno(saved);
    if p.is_null() {
        return libc::ENOMEM;
    }
    *out = p;
    0
}

#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    aligned(&real::ALIGNED_ALLOC, align, size)
}

#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    aligned(&real::MEMALIGN, align, size)
}

#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    if size < fast_limit() {
        return transmute::<usize, MallocFn>(real::VALLOC.get())(size);
    }
    allocate(size, setup::page())
}

#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let Some(rounded) = size.checked_next_multiple_of(setup::page()) else {
        sys::set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    };
    if rounded < fast_limit() {
        return transmute::<usize, MallocFn>(real::PVALLOC.get())(size);
    }
    allocate(rounded, setup::page())
}

#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off_t,
) -> *mut c_void {
    sys::mmap(addr, len, prot, noreserve(len, prot, flags), fd, offset)
}

#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off64_t,
) -> *mut c_void {
    sys::mmap(addr, len, prot, noreserve(len, prot, flags), fd, offset)
}

/// The mapping type bits of mmap's flags (uapi mman-common.h).
const MAP_TYPE: c_int = 0x0f;

/// `flags` plus MAP_NORESERVE for a private anonymous writable mapping of at least the
/// threshold (not hugetlb, which has a reservation pool of its own).
fn noreserve(len: usize, prot: c_int, flags: c_int) -> c_int {
    let private_anonymous =
        flags & MAP_TYPE == libc::MAP_PRIVATE && flags & libc::MAP_ANONYMOUS != 0;
    if private_anonymous
        && prot & libc::PROT_WRITE != 0
        && flags & libc::MAP_HUGETLB == 0
        && len >= setup::min_size()
    {
        flags | libc::MAP_NORESERVE
    } else {
        flags
    }
}

/// memalign and aligned_alloc (the same function in glibc): a non-power-of-two alignment is
/// rounded up to the next power of two.
unsafe fn aligned(real_fn: &real::Symbol, align: usize, size: usize) -> *mut c_void {
    if size < fast_limit() {
        return transmute::<usize, AlignFn>(real_fn.get())(align, size);
    }
    match align.max(1).checked_next_power_of_two() {
        Some(align) => allocate(size, align),
        None => {
            sys::set_errno(libc::EINVAL);
            core::ptr::null_mut()
        }
    }
}

/// Everything that is not the fast path of an allocation: large requests become our blocks;
/// small ones go to the real allocator, or to the bootstrap arena while it is being found.
/// `align` 0: malloc's own alignment.
#[cold]
#[inline(never)]
unsafe extern "C" fn allocate(size: usize, align: usize) -> *mut c_void {
    if size >= setup::min_size() {
        if let Some(p) = block::alloc(size, align) {
            return p;
        }
        // Every registry slot holds a live page-aligned block: the real allocator serves this
        // one, charged as it would be without the library.
    }
    if !real::ready() {
        return real::arena_alloc(size, align);
    }
    if align == 0 {
        return transmute::<usize, MallocFn>(real::MALLOC.get())(size);
    }
    let mut p = core::ptr::null_mut();
    match transmute::<usize, PosixMemalignFn>(real::POSIX_MEMALIGN.get())(&mut p, align, size) {
        0 => p,
        error => {
            sys::set_errno(error);
            core::ptr::null_mut()
        }
    }
}

#[cold]
#[inline(never)]
unsafe extern "C" fn calloc_slow(count: usize, size: usize, total: usize) -> *mut c_void {
    if total < setup::min_size() && real::ready() {
        return transmute::<usize, CallocFn>(real::CALLOC.get())(count, size);
    }
    // Fresh mappings and never-used arena memory are zero already.
    allocate(total, 0)
}

#[cold]
#[inline(never)]
unsafe extern "C" fn free_slow(p: *mut c_void) {
    match block::owner(p) {
        Owner::Block(block) => block::free(block),
        // Arena memory is never reused.
        Owner::Arena(_) => {}
        Owner::Real if p.is_null() => {}
        Owner::Real if real::ready() => transmute::<usize, FreeFn>(real::FREE.get())(p),
        // Only while another thread is still looking the real free up: leak it.
        Owner::Real => {}
    }
}

/// What a moving realloc leaves behind.
enum Old {
    Block(block::Block),
    Arena,
    Real,
}

#[cold]
#[inline(never)]
unsafe extern "C" fn realloc_slow(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc(size);
    }
    let (old, old_usable) = match block::owner(p) {
        Owner::Block(block) if size == 0 => {
            // glibc's realloc(p, 0) frees p and returns null.
            block::free(block);
            return core::ptr::null_mut();
        }
        Owner::Block(block) if size >= setup::min_size() => return block::resize(block, size),
        // Shrinking across the threshold: back to the real allocator.
        Owner::Block(block) => (Old::Block(block), block.usable()),
        Owner::Arena(_) if size == 0 => return core::ptr::null_mut(),
        Owner::Arena(old_size) => (Old::Arena, old_size),
        // A real pointer implies the real functions were found.
        Owner::Real if !real::ready() => {
            sys::set_errno(libc::ENOMEM);
            return core::ptr::null_mut();
        }
        Owner::Real if size < setup::min_size() => {
            return transmute::<usize, ReallocFn>(real::REALLOC.get())(p, size);
        }
        // Growing across the threshold: into a block of our own.
        Owner::Real => (
            Old::Real,
            transmute::<usize, UsableFn>(real::MALLOC_USABLE_SIZE.get())(p),
        ),
    };
    let q = malloc(size);
    if q.is_null() {
        return q;
    }
    core::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, old_usable.min(size));
    match old {
        Old::Block(block) => block::free(block),
        Old::Real => transmute::<usize, FreeFn>(real::FREE.get())(p),
        // Arena memory is never reused.
        Old::Arena => {}
    }
    q
}
