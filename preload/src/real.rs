//! The real allocator (the next definition of each symbol after this library: glibc's, or
//! another preloaded allocator's), found with `dlsym(RTLD_NEXT, ...)`.
//!
//! dlsym itself may call malloc or calloc (glibc's dlerror machinery), which lands back here
//! before the real functions are known. Those calls, and any other thread's during the few
//! microseconds of the lookup, are served from a static arena: nothing waits, so nothing can
//! deadlock on the dynamic loader's lock, and nothing recurses. Arena blocks are never
//! reused; freeing one is a no-op.

use core::cell::UnsafeCell;
use core::ffi::{c_int, c_void, CStr};
use core::sync::atomic::{AtomicI64, AtomicU8, AtomicUsize, Ordering};

use crate::sys;

pub type MallocFn = unsafe extern "C" fn(usize) -> *mut c_void;
pub type CallocFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
pub type ReallocFn = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
pub type FreeFn = unsafe extern "C" fn(*mut c_void);
pub type PosixMemalignFn = unsafe extern "C" fn(*mut *mut c_void, usize, usize) -> c_int;
pub type AlignFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
pub type UsableFn = unsafe extern "C" fn(*mut c_void) -> usize;

/// One real function: its address once known, 0 before.
pub struct Symbol {
    name: &'static CStr,
    address: AtomicUsize,
}

impl Symbol {
    const fn new(name: &'static CStr) -> Symbol {
        Symbol {
            name,
            address: AtomicUsize::new(0),
        }
    }

    /// The address, or 0 while the lookup has not finished.
    #[inline(always)]
    pub fn get(&self) -> usize {
        self.address.load(Ordering::Acquire)
    }
}

pub static MALLOC: Symbol = Symbol::new(c"malloc");
pub static CALLOC: Symbol = Symbol::new(c"calloc");
pub static REALLOC: Symbol = Symbol::new(c"realloc");
pub static FREE: Symbol = Symbol::new(c"free");
pub static POSIX_MEMALIGN: Symbol = Symbol::new(c"posix_memalign");
pub static ALIGNED_ALLOC: Symbol = Symbol::new(c"aligned_alloc");
pub static MEMALIGN: Symbol = Symbol::new(c"memalign");
pub static VALLOC: Symbol = Symbol::new(c"valloc");
pub static PVALLOC: Symbol = Symbol::new(c"pvalloc");
pub static MALLOC_USABLE_SIZE: Symbol = Symbol::new(c"malloc_usable_size");

/// Every symbol looked up.
static ALL: [&Symbol; 10] = [
    &MALLOC,
    &CALLOC,
    &REALLOC,
    &FREE,
    &MALLOC_USABLE_SIZE,
    &POSIX_MEMALIGN,
    &ALIGNED_ALLOC,
    &MEMALIGN,
    &VALLOC,
    &PVALLOC,
];

const UNRESOLVED: u8 = 0;
const RESOLVING: u8 = 1;
const RESOLVED: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNRESOLVED);
/// The process that started resolving: a child forked meanwhile takes over.
static RESOLVER_PID: AtomicI64 = AtomicI64::new(0);

/// True once the real functions are known; resolves them on the first call. False while
/// they are being resolved (by this thread's dlsym or another thread): use the arena.
#[inline]
pub fn ready() -> bool {
    match STATE.load(Ordering::Acquire) {
        RESOLVED => true,
        _ => resolve(),
    }
}

#[cold]
fn resolve() -> bool {
    let pid = sys::getpid();
    let mut claimed = STATE
        .compare_exchange(UNRESOLVED, RESOLVING, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    if claimed {
        RESOLVER_PID.store(pid, Ordering::Release);
    } else {
        match STATE.load(Ordering::Acquire) {
            RESOLVED => return true,
            // A fork in the middle of another thread's lookup: that thread does not exist here.
            _ => {
                let resolver = RESOLVER_PID.load(Ordering::Acquire);
                claimed = resolver != 0
                    && resolver != pid
                    && RESOLVER_PID
                        .compare_exchange(resolver, pid, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok();
            }
        }
    }
    if !claimed {
        return false;
    }
    for symbol in ALL {
        // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT searches the objects loaded
        // after this library.
        let address = unsafe { libc::dlsym(libc::RTLD_NEXT, symbol.name.as_ptr()) } as usize;
        if address == 0 {
            sys::die(b"cannot find the real malloc family (dlsym RTLD_NEXT)");
        }
        symbol.address.store(address, Ordering::Release);
    }
    STATE.store(RESOLVED, Ordering::Release);
    FAST_LIMIT.store(crate::setup::min_size(), Ordering::Release);
    true
}

/// Requests below this go straight to the real functions: the threshold once they are
/// known, 0 before (so that every request takes the slow path that finds them).
static FAST_LIMIT: AtomicUsize = AtomicUsize::new(0);

#[inline(always)]
pub fn fast_limit() -> usize {
    FAST_LIMIT.load(Ordering::Acquire)
}

const ARENA_SIZE: usize = 256 * 1024;
/// Each arena block starts with its size, in the 16 bytes before the pointer.
const ARENA_HEADER: usize = 16;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);
// SAFETY: blocks are handed out by an atomic bump pointer; each is written only by its owner.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_SIZE]));
static ARENA_USED: AtomicUsize = AtomicUsize::new(0);

fn arena_start() -> usize {
    ARENA.0.get() as usize
}

/// A zeroed block from the arena (memory that was never handed out is zero), or null with
/// ENOMEM when it is used up.
pub fn arena_alloc(size: usize, align: usize) -> *mut c_void {
    let align = align.max(ARENA_HEADER);
    let mut used = ARENA_USED.load(Ordering::Relaxed);
    while let Some(start) = used
        .checked_add(ARENA_HEADER)
        .and_then(|s| s.checked_next_multiple_of(align))
    {
        let Some(end) = start.checked_add(size).filter(|&e| e <= ARENA_SIZE) else {
            break;
        };
        match ARENA_USED.compare_exchange_weak(used, end, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => {
                crate::block::note_arena_in_use();
                let p = arena_start() + start;
                // SAFETY: [p - 16, p + size) lies inside the arena and belongs to this call.
                unsafe { *((p - ARENA_HEADER) as *mut usize) = size };
                return p as *mut c_void;
            }
            Err(now) => used = now,
        }
    }
    sys::set_errno(libc::ENOMEM);
    core::ptr::null_mut()
}

/// The size of an arena block, or None when `p` is not one.
pub fn arena_block(p: usize) -> Option<usize> {
    let offset = p.wrapping_sub(arena_start());
    if (ARENA_HEADER..ARENA_SIZE).contains(&offset) {
        // SAFETY: inside the arena, written by arena_alloc before `p` was handed out.
        Some(unsafe { *((p - ARENA_HEADER) as *const usize) })
    } else {
        None
    }
}
