//! The event sources of the daemon's loop: the listening socket, client connections, lease
//! holders' pidfds, and the signalfd.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use log::{debug, info, warn};
use nix::sys::epoll::EpollFlags;
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

use crate::auth::Peer;
use crate::protocol::{parse_request, ErrorCode, Reply, MAX_REQUEST_LINE};

use super::event_loop::{Context, Keep, Source};
use super::peer;
use super::server::ClientInfo;

/// Connections one uid may hold open at once (root is exempt).
pub const MAX_CLIENTS_PER_UID: usize = 64;
/// Replies a client has not read yet, beyond which it is dropped.
const MAX_PENDING_OUTPUT: usize = 1 << 20;
/// Malformed lines tolerated on one connection.
const MAX_BAD_LINES: u32 = 8;

/// The listening socket.
pub struct Listener {
    listener: UnixListener,
    client_timeout: Duration,
}

impl Listener {
    pub fn new(listener: UnixListener, client_timeout: Duration) -> io::Result<Listener> {
        listener.set_nonblocking(true)?;
        Ok(Listener {
            listener,
            client_timeout,
        })
    }
}

impl Source for Listener {
    fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    fn interest(&self) -> EpollFlags {
        EpollFlags::EPOLLIN
    }

    fn ready(&mut self, _events: EpollFlags, cx: &mut Context<'_>) -> Keep {
        // Accept what is queued, within reason per wake-up so clients get served in between.
        for _ in 0..64 {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // EMFILE and friends: leave the connection queued and try again later.
                    warn!("accept failed: {e}");
                    break;
                }
            };
            match Client::new(stream, cx, self.client_timeout) {
                Ok(Some(client)) => cx.spawn.push(Box::new(client)),
                Ok(None) => {}
                Err(e) => debug!("dropping a connection that could not be set up: {e}"),
            }
        }
        Keep::Yes
    }
}

/// One connection: reads request lines, answers each with one reply line.
pub struct Client {
    stream: UnixStream,
    peer: Peer,
    pidfd: Option<OwnedFd>,
    input: Vec<u8>,
    output: Vec<u8>,
    last_active: Duration,
    timeout: Duration,
    /// Close once the output is written.
    closing: bool,
    bad_lines: u32,
}

impl Client {
    /// Sets up a client, or refuses it (with one reply line) if its uid has too many connections.
    fn new(
        stream: UnixStream,
        cx: &mut Context<'_>,
        timeout: Duration,
    ) -> io::Result<Option<Client>> {
        stream.set_nonblocking(true)?;
        let (peer, pidfd) = peer::identify(&stream)?;
        let per_uid = cx.clients_by_uid.get(&peer.uid).copied().unwrap_or(0);
        if !peer.is_root() && per_uid >= MAX_CLIENTS_PER_UID {
            let reply = Reply::failure(
                ErrorCode::Limit,
                format!(
                    "uid {} has {per_uid} connections open (at most {MAX_CLIENTS_PER_UID})",
                    peer.uid
                ),
            );
            // Best effort: the socket buffer of a new connection has room for one line.
            let _ = (&stream).write(&reply.to_line());
            return Ok(None);
        }
        if cx.clients >= cx.max_clients {
            cx.evict_idlest = true;
        }
        Ok(Some(Client {
            stream,
            peer,
            pidfd,
            input: Vec::new(),
            output: Vec::new(),
            last_active: cx.now,
            timeout,
            closing: false,
            bad_lines: 0,
        }))
    }

    fn queue(&mut self, reply: &Reply) {
        self.output.extend_from_slice(&reply.to_line());
    }

    /// Reads what is there; false when the client is gone or broke a rule.
    fn read_input(&mut self) -> bool {
        let mut buffer = [0u8; 16 * 1024];
        // A bounded amount per wake-up: a flooding client cannot starve the others.
        for _ in 0..4 {
            match self.stream.read(&mut buffer) {
                Ok(0) => {
                    self.closing = true;
                    return true;
                }
                Ok(n) => self.input.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            if self.input.len() > MAX_REQUEST_LINE
                && !self.input[..MAX_REQUEST_LINE].contains(&b'\n')
            {
                return true;
            }
        }
        true
    }

    fn handle_lines(&mut self, cx: &mut Context<'_>) {
        while let Some(end) = self.input.iter().position(|&b| b == b'\n') {
            if self.output.len() > MAX_PENDING_OUTPUT {
                return; // Answer the rest when the client has read what it was sent.
            }
            let line: Vec<u8> = self.input.drain(..=end).collect();
            if line.len() > MAX_REQUEST_LINE {
                self.refuse_oversized();
                return;
            }
            let line = &line[..line.len() - 1];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_request(line) {
                Ok(request) => {
                    let info = ClientInfo {
                        peer: &self.peer,
                        pidfd: self.pidfd.as_ref(),
                        socket: self.stream.as_fd(),
                    };
                    let handled = cx.server.handle(&info, request);
                    self.queue(&handled.reply);
                    if let Some((lease, pidfd)) = handled.watch {
                        cx.spawn.push(Box::new(HolderWatch { lease, pidfd }));
                    }
                }
                Err(reply) => {
                    self.queue(&reply);
                    self.bad_lines += 1;
                    if self.bad_lines >= MAX_BAD_LINES {
                        self.closing = true;
                        return;
                    }
                }
            }
        }
        if self.input.len() > MAX_REQUEST_LINE {
            self.refuse_oversized();
        }
    }

    fn refuse_oversized(&mut self) {
        self.queue(&Reply::failure(
            ErrorCode::TooLarge,
            format!("request line longer than {MAX_REQUEST_LINE} bytes; closing the connection"),
        ));
        self.input.clear();
        self.closing = true;
    }

    /// Writes what it can; false when the client is gone.
    fn flush(&mut self) -> bool {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return false,
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }
}

impl Source for Client {
    fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    fn interest(&self) -> EpollFlags {
        let mut flags = EpollFlags::empty();
        // Stop reading from a client that does not read its replies.
        if !self.closing && self.output.len() <= MAX_PENDING_OUTPUT {
            flags |= EpollFlags::EPOLLIN;
        }
        if !self.output.is_empty() {
            flags |= EpollFlags::EPOLLOUT;
        }
        flags
    }

    fn ready(&mut self, events: EpollFlags, cx: &mut Context<'_>) -> Keep {
        self.last_active = cx.now;
        let readable =
            events.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
        if readable && !self.closing && !self.read_input() {
            return Keep::No;
        }
        self.handle_lines(cx);
        if !self.flush() || self.output.len() > 2 * MAX_PENDING_OUTPUT {
            return Keep::No;
        }
        if self.closing && self.output.is_empty() {
            return Keep::No;
        }
        if events.contains(EpollFlags::EPOLLHUP) && self.output.is_empty() {
            return Keep::No;
        }
        Keep::Yes
    }

    fn deadline(&self) -> Option<Duration> {
        Some(self.last_active + self.timeout)
    }

    fn expired(&mut self, _cx: &mut Context<'_>) -> Keep {
        debug!(
            "closing idle connection of uid {} pid {}",
            self.peer.uid, self.peer.pid
        );
        Keep::No
    }

    fn client(&self) -> Option<(u32, Duration)> {
        Some((self.peer.uid, self.last_active))
    }
}

/// A lease holder's pidfd: readable when the process exits, which ends the lease.
pub struct HolderWatch {
    pub lease: String,
    pub pidfd: OwnedFd,
}

impl Source for HolderWatch {
    fn fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    fn interest(&self) -> EpollFlags {
        EpollFlags::EPOLLIN
    }

    fn ready(&mut self, _events: EpollFlags, cx: &mut Context<'_>) -> Keep {
        info!("lease {}: its holder exited", self.lease);
        cx.server.holder_exited(&self.lease);
        Keep::No
    }

    fn lease(&self) -> Option<&str> {
        Some(&self.lease)
    }
}

/// SIGTERM/SIGINT stop the daemon, SIGHUP reloads its configuration.
pub struct Signals {
    pub fd: SignalFd,
}

impl Source for Signals {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn interest(&self) -> EpollFlags {
        EpollFlags::EPOLLIN
    }

    fn ready(&mut self, _events: EpollFlags, cx: &mut Context<'_>) -> Keep {
        while let Ok(Some(info)) = self.fd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGHUP) => {
                    info!("SIGHUP: reloading the configuration");
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                    cx.server.reload();
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                }
                Ok(signal @ (Signal::SIGTERM | Signal::SIGINT)) => {
                    info!("{signal}: ending leases and stopping");
                    cx.stop = true;
                }
                _ => {}
            }
        }
        Keep::Yes
    }
}
