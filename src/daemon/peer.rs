//! Who is on the other end of a connection, from the kernel, and pidfds to watch processes:
//! a holder's exit makes its pidfd readable at once, with no polling and no pid-reuse window.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt};

use crate::auth::Peer;
use crate::kernel;
use crate::lease::Holder;

/// SO_PEERGROUPS (Linux 4.13+): the peer's supplementary groups at connect time.
const SO_PEERGROUPS: libc::c_int = 59;

/// The peer's credentials (SO_PEERCRED, SO_PEERGROUPS), taken when the connection is
/// accepted. Its pidfd is only taken when a lease is bound to it ([`holder`]).
pub fn identify(stream: &UnixStream) -> io::Result<Peer> {
    let cred = getsockopt(stream, sockopt::PeerCredentials)?;
    Ok(Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
        groups: peer_groups(stream)?,
    })
}

fn peer_groups(stream: &UnixStream) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is valid for `len` bytes and the kernel writes at most that many.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            // The kernel says how much room it needs.
            Some(libc::ERANGE)
                if (len as usize) > groups.len() * std::mem::size_of::<libc::gid_t>() =>
            {
                groups.resize(len as usize / std::mem::size_of::<libc::gid_t>() + 1, 0);
            }
            Some(libc::ENOPROTOOPT) => return Ok(Vec::new()),
            _ => return Err(error),
        }
    }
}

/// pidfd_open(2).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments; the result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// True while the process behind `pidfd` has not exited.
pub fn is_alive(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

/// True while the client has not closed its end of the connection.
fn is_connected(stream: BorrowedFd<'_>) -> bool {
    // Only hang-ups are asked for (POLLHUP and POLLERR are always reported): any event is one.
    let mut fds = [PollFd::new(
        stream,
        PollFlags::from_bits_retain(libc::POLLRDHUP),
    )];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

/// Why the connecting process cannot be made a holder.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    #[error("cannot open a pidfd for pid {pid}: {source}")]
    Pidfd { pid: i32, source: io::Error },
    #[error("the requesting process {pid} is gone")]
    Gone { pid: i32 },
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
}

/// A pidfd on the connecting process and its identity (pid, start time), to bind a lease to.
/// With SO_PEERPIDFD (Linux 6.5+) the kernel names the process; without it, pidfd_open on the
/// peer's pid is trusted only while the client is still connected and alive.
pub fn holder(stream: BorrowedFd<'_>, peer: &Peer) -> Result<(OwnedFd, Holder), HolderError> {
    let pid = peer.pid;
    let peer_pidfd = getsockopt(&stream, sockopt::PeerPidfd).ok();
    let by_kernel = peer_pidfd.is_some();
    let pidfd = match peer_pidfd {
        Some(fd) => fd,
        None => pidfd_open(pid).map_err(|source| HolderError::Pidfd { pid, source })?,
    };
    let start_time = kernel::process_start_time(pid)?;
    // Alive after reading its start time: the stat we read was this process's.
    if !is_alive(pidfd.as_fd()) || (!by_kernel && !is_connected(stream)) {
        return Err(HolderError::Gone { pid });
    }
    Ok((pidfd, Holder { pid, start_time }))
}

/// Re-opens the holder of a journaled lease: `None` if that process is gone (its pid may now
/// belong to another process, which the start time tells apart).
pub fn reopen_holder(holder: &Holder) -> Option<OwnedFd> {
    let pidfd = pidfd_open(holder.pid).ok()?;
    let start_time = kernel::process_start_time(holder.pid).ok()?;
    (start_time == holder.start_time && is_alive(pidfd.as_fd())).then_some(pidfd)
}

/// CLOCK_BOOTTIME: monotonic, counts suspend; lease deadlines use it.
pub fn boottime() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map_or(Duration::ZERO, Duration::from)
}

/// The boot id of the running kernel (always the real one: processes are real).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map_or_else(|_| String::new(), |s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_turns_readable_when_the_process_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = pidfd_open(child.id() as i32).unwrap();
        assert!(is_alive(pidfd.as_fd()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_alive(pidfd.as_fd()));
    }

    #[test]
    fn peers_are_identified_by_the_kernel() {
        let (a, b) = UnixStream::pair().unwrap();
        let peer = identify(&a).unwrap();
        assert_eq!(peer.pid, std::process::id() as i32);
        assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
        let (fd, holder) = holder(a.as_fd(), &peer).unwrap();
        assert!(is_alive(fd.as_fd()));
        assert!(reopen_holder(&holder).is_some());
        assert!(reopen_holder(&Holder {
            start_time: holder.start_time + 1,
            ..holder
        })
        .is_none());
        assert!(is_connected(a.as_fd()));
        drop(b);
        assert!(!is_connected(a.as_fd()), "a closed peer is noticed");
    }
}
