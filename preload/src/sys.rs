//! The system calls the library makes itself, straight to the kernel: none of them may come
//! back into the allocator we replace, and `mmap` here must not be our own interposed one.

use core::ffi::{c_int, c_void};

/// `mmap(2)` as the kernel sees it; sets errno on failure like the libc wrapper.
pub unsafe fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off_t,
) -> *mut c_void {
    libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, offset) as *mut c_void
}

/// A fresh private anonymous read-write mapping that the kernel does not charge to
/// Committed_AS (modes 0 and 1). `None` with errno set when the kernel refuses.
pub fn map_noreserve(len: usize) -> Option<usize> {
    // SAFETY: a new mapping at an address of the kernel's choosing aliases nothing.
    let addr = unsafe {
        mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (addr != libc::MAP_FAILED).then_some(addr as usize)
}

/// Unmaps a range this library mapped.
pub unsafe fn unmap(addr: usize, len: usize) {
    libc::syscall(libc::SYS_munmap, addr, len);
}

/// Grows or shrinks a mapping this library made, moving it if it must; the flags of the
/// mapping (MAP_NORESERVE) move with it. `None` with errno set (the old mapping is intact).
pub unsafe fn remap(addr: usize, old_len: usize, new_len: usize) -> Option<usize> {
    let moved = libc::syscall(
        libc::SYS_mremap,
        addr,
        old_len,
        new_len,
        libc::MREMAP_MAYMOVE,
        0usize,
    );
    (moved as *mut c_void != libc::MAP_FAILED).then_some(moved as usize)
}

pub fn set_errno(value: c_int) {
    // SAFETY: errno is this thread's own.
    unsafe { *libc::__errno_location() = value };
}

pub fn errno() -> c_int {
    // SAFETY: errno is this thread's own.
    unsafe { *libc::__errno_location() }
}

/// Reads the whole of a small file into `buf` (what fits); the number of bytes read.
pub fn read_file(path: &core::ffi::CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: plain system calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return None;
        }
        let mut len = 0;
        while len < buf.len() {
            let rest = &mut buf[len..];
            let n = libc::syscall(libc::SYS_read, fd, rest.as_mut_ptr(), rest.len());
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        libc::syscall(libc::SYS_close, fd);
        Some(len)
    }
}

/// 8 random bytes from the kernel without blocking (early boot may not have them).
pub fn random_u64() -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: the kernel writes at most 8 bytes into `value`.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getrandom,
            &mut value as *mut u64,
            8usize,
            libc::GRND_NONBLOCK,
        )
    };
    (n == 8).then_some(value)
}

pub fn getpid() -> i64 {
    // SAFETY: no arguments, no memory.
    unsafe { libc::syscall(libc::SYS_getpid) }
}

/// Writes `parts` to stderr as one line (best effort: a message must never fail a program).
pub fn warn(parts: &[&[u8]]) {
    let mut line = [0u8; 512];
    let mut len = 0;
    for part in parts.iter().copied().chain([b"\n".as_slice()]) {
        let take = part.len().min(line.len() - len);
        line[len..len + take].copy_from_slice(&part[..take]);
        len += take;
    }
    // SAFETY: writes bytes this function owns.
    unsafe { libc::syscall(libc::SYS_write, 2, line.as_ptr(), len) };
}

/// The end of the road for an internal error: a message, then SIGABRT.
pub fn die(message: &[u8]) -> ! {
    warn(&[b"libovercommit_preload: ", message]);
    // SAFETY: abort never returns.
    unsafe { libc::abort() }
}
