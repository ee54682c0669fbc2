//! The event sources of the daemon's loop: the listening socket (with the connection caps,
//! counted at accept), client connections (with backpressure), lease holders' pidfds, and the
//! signalfd.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::rc::Rc;
use std::time::Duration;

use log::{debug, info, warn};
use nix::sys::epoll::EpollFlags;
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

use crate::auth::Peer;
use crate::lease::LeaseId;
use crate::protocol::{parse_request, ErrorCode, Reply, MAX_REQUEST_LINE};

use super::event_loop::{Context, Keep, Source};
use super::peer;
use super::server::{ClientInfo, PeerNames, Server};

/// Connections one uid may hold open at once (root is exempt).
pub const MAX_CLIENTS_PER_UID: usize = 64;
/// Connections root may open beyond `max_clients`, so that an admin gets in on a full daemon.
pub const ROOT_RESERVE: usize = 16;
/// Malformed lines tolerated on one connection.
const MAX_BAD_LINES: u32 = 8;
/// Requests answered per wake-up of one connection before the others get their turn.
const REQUESTS_PER_TURN: usize = 32;
/// How long to wait before accepting again after running out of file descriptors, at first
/// and at most.
const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(20);
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// Open connections, per uid and in all; shared by the listener (which admits) and the
/// connections (whose [`Permit`]s give their place back when they close).
#[derive(Debug)]
pub struct Connections {
    per_uid: HashMap<u32, usize>,
    total: usize,
    max_clients: usize,
}

impl Connections {
    pub fn new(max_clients: usize) -> Rc<RefCell<Connections>> {
        Rc::new(RefCell::new(Connections {
            per_uid: HashMap::new(),
            total: 0,
            max_clients,
        }))
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn max_clients(&self) -> usize {
        self.max_clients
    }
}

/// A connection's place in [`Connections`], given back when dropped.
pub struct Permit {
    registry: Rc<RefCell<Connections>>,
    uid: u32,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut registry = self.registry.borrow_mut();
        registry.total = registry.total.saturating_sub(1);
        if let Some(count) = registry.per_uid.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                registry.per_uid.remove(&self.uid);
            }
        }
    }
}

/// What the caps say about a new connection.
enum Admission {
    Admit(Permit),
    /// Admitted once the longest-idle connection is closed.
    AdmitEvicting(Permit),
    Refuse(String),
}

fn admit(registry: &Rc<RefCell<Connections>>, peer: &Peer) -> Admission {
    let mut r = registry.borrow_mut();
    let per_uid = r.per_uid.get(&peer.uid).copied().unwrap_or(0);
    if !peer.is_root() && per_uid >= MAX_CLIENTS_PER_UID {
        return Admission::Refuse(format!(
            "uid {} has {per_uid} connections open (at most {MAX_CLIENTS_PER_UID})",
            peer.uid
        ));
    }
    let cap = if peer.is_root() {
        r.max_clients + ROOT_RESERVE
    } else {
        r.max_clients
    };
    let evict = r.total >= cap;
    *r.per_uid.entry(peer.uid).or_default() += 1;
    r.total += 1;
    drop(r);
    let permit = Permit {
        registry: registry.clone(),
        uid: peer.uid,
    };
    if evict {
        Admission::AdmitEvicting(permit)
    } else {
        Admission::Admit(permit)
    }
}

/// The listening socket.
pub struct Listener {
    listener: UnixListener,
    client_timeout: Duration,
    registry: Rc<RefCell<Connections>>,
    /// Out of file descriptors: not accepting until then.
    paused_until: Option<Duration>,
    pause: Duration,
    starving: bool,
}

impl Listener {
    pub fn new(
        listener: UnixListener,
        client_timeout: Duration,
        registry: Rc<RefCell<Connections>>,
    ) -> io::Result<Listener> {
        listener.set_nonblocking(true)?;
        Ok(Listener {
            listener,
            client_timeout,
            registry,
            paused_until: None,
            pause: FIRST_ACCEPT_PAUSE,
            starving: false,
        })
    }

    fn fed(&mut self) {
        if self.starving {
            info!("accepting connections again");
            self.starving = false;
            self.pause = FIRST_ACCEPT_PAUSE;
        }
    }

    fn accept(&mut self, cx: &mut Context<'_, Server>) {
        self.paused_until = None;
        // Accept what is queued, within reason per wake-up so clients get served in between.
        for _ in 0..64 {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.fed();
                    break;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    // Leave the connections queued and stop listening for a pause, doubled
                    // while it lasts. One log line per episode, and one when it ends.
                    if self.starving {
                        self.pause = (self.pause * 2).min(MAX_ACCEPT_PAUSE);
                    } else {
                        warn!("cannot accept connections: {e}; pausing until a descriptor is free");
                        self.starving = true;
                    }
                    self.paused_until = Some(cx.now.saturating_add(self.pause));
                    return;
                }
                Err(e) => {
                    debug!("accept: {e}");
                    continue;
                }
            };
            self.fed();
            match Client::new(stream, &self.registry, cx.now, self.client_timeout) {
                Ok(Some((client, evict))) => {
                    cx.evict += usize::from(evict);
                    cx.spawn(Box::new(client));
                }
                Ok(None) => {}
                Err(e) => debug!("dropping a connection that could not be set up: {e}"),
            }
        }
    }
}

impl Source<Server> for Listener {
    fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    fn interest(&self) -> EpollFlags {
        if self.paused_until.is_some() {
            EpollFlags::empty()
        } else {
            EpollFlags::EPOLLIN
        }
    }

    fn ready(&mut self, _events: EpollFlags, cx: &mut Context<'_, Server>) -> Keep {
        self.accept(cx);
        Keep::Yes
    }

    fn deadline(&self) -> Option<Duration> {
        self.paused_until
    }

    fn expired(&mut self, cx: &mut Context<'_, Server>) -> Keep {
        self.accept(cx);
        Keep::Yes
    }
}

/// One connection: reads request lines and answers each with one reply line, in order, one
/// request at a time: while a reply is unread, nothing more is read from the connection, so a
/// client that does not read holds at most one reply and one request line.
pub struct Client {
    stream: UnixStream,
    peer: Peer,
    _permit: Permit,
    names: PeerNames,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// The last complete request, or the last reply bytes the client took.
    last_active: Duration,
    timeout: Duration,
    /// The client closed its end (its requests are still answered).
    eof: bool,
    /// Close once the output is written.
    closing: bool,
    bad_lines: u32,
}

impl Client {
    /// Sets up a client, or refuses it (with one reply line) when its uid has too many
    /// connections. `true` with it: the longest-idle connection must go to make room.
    fn new(
        stream: UnixStream,
        registry: &Rc<RefCell<Connections>>,
        now: Duration,
        timeout: Duration,
    ) -> io::Result<Option<(Client, bool)>> {
        stream.set_nonblocking(true)?;
        let peer = peer::identify(&stream)?;
        let (permit, evict) = match admit(registry, &peer) {
            Admission::Admit(p) => (p, false),
            Admission::AdmitEvicting(p) => (p, true),
            Admission::Refuse(why) => {
                // Best effort: the socket buffer of a new connection has room for one line.
                let _ = (&stream).write(&Reply::failure(ErrorCode::Limit, why).to_line());
                return Ok(None);
            }
        };
        Ok(Some((
            Client {
                stream,
                peer,
                _permit: permit,
                names: PeerNames::default(),
                input: Vec::new(),
                output: Vec::new(),
                written: 0,
                last_active: now,
                timeout,
                eof: false,
                closing: false,
                bad_lines: 0,
            },
            evict,
        )))
    }

    fn has_line(&self) -> bool {
        self.input.contains(&b'\n')
    }

    /// Reads one chunk; false when the connection failed.
    fn read_input(&mut self) -> bool {
        // One buffer for every connection (a connection keeps only what it has not answered).
        thread_local! {
            static BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; 16 * 1024]);
        }
        BUFFER.with_borrow_mut(|buffer| loop {
            match self.stream.read(buffer) {
                Ok(0) => {
                    self.eof = true;
                    return true;
                }
                Ok(n) => {
                    self.input.extend_from_slice(&buffer[..n]);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        })
    }

    /// Answers buffered requests while their replies leave at once, up to a turn's worth.
    fn answer(&mut self, cx: &mut Context<'_, Server>) {
        for _ in 0..REQUESTS_PER_TURN {
            if !self.output.is_empty() || self.closing {
                return;
            }
            let Some(end) = self.input.iter().position(|&b| b == b'\n') else {
                break;
            };
            if end >= MAX_REQUEST_LINE {
                self.refuse_oversized();
                return;
            }
            let line = &self.input[..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                self.consume(end);
                continue;
            }
            self.last_active = cx.now;
            let parsed = parse_request(line);
            self.consume(end);
            let reply = match parsed {
                Ok(request) => {
                    let info = ClientInfo {
                        peer: &self.peer,
                        names: &mut self.names,
                        socket: self.stream.as_fd(),
                    };
                    Server::handle(cx, info, request)
                }
                Err(reply) => {
                    self.bad_lines += 1;
                    if self.bad_lines >= MAX_BAD_LINES {
                        self.closing = true;
                    }
                    reply.to_line()
                }
            };
            self.output = reply;
            self.written = 0;
            if !self.flush(cx.now) {
                self.closing = true;
                self.eof = true;
                return;
            }
        }
        if !self.has_line() && self.input.len() >= MAX_REQUEST_LINE {
            self.refuse_oversized();
        }
    }

    /// Drops the line ending at `end` (its newline) from the input.
    fn consume(&mut self, end: usize) {
        if end + 1 == self.input.len() {
            // Nothing left: an idle connection keeps no buffer.
            self.input = Vec::new();
        } else {
            self.input.drain(..=end);
        }
    }

    fn refuse_oversized(&mut self) {
        self.output = Reply::failure(
            ErrorCode::TooLarge,
            format!("request line longer than {MAX_REQUEST_LINE} bytes; closing the connection"),
        )
        .to_line();
        self.written = 0;
        self.input = Vec::new();
        self.closing = true;
    }

    /// Writes what the socket takes; false when the client is gone.
    fn flush(&mut self, now: Duration) -> bool {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return false,
                Ok(n) => {
                    self.written += n;
                    // A reader that takes its reply, however slowly, is not idle.
                    self.last_active = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        self.output = Vec::new();
        self.written = 0;
        true
    }
}

impl Source<Server> for Client {
    fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    fn interest(&self) -> EpollFlags {
        if !self.output.is_empty() {
            // Backpressure: nothing more is read until the reply is taken.
            EpollFlags::EPOLLOUT
        } else if self.eof || self.closing || self.has_line() {
            EpollFlags::empty()
        } else {
            EpollFlags::EPOLLIN
        }
    }

    fn ready(&mut self, events: EpollFlags, cx: &mut Context<'_, Server>) -> Keep {
        if !self.output.is_empty() && !self.flush(cx.now) {
            return Keep::No;
        }
        let readable =
            events.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
        if readable && self.output.is_empty() && !self.eof && !self.has_line() && !self.read_input()
        {
            return Keep::No;
        }
        self.answer(cx);
        if self.output.is_empty() {
            if self.closing || (self.eof && !self.has_line()) {
                return Keep::No;
            }
            if self.has_line() {
                cx.again = true;
            }
        }
        Keep::Yes
    }

    fn deadline(&self) -> Option<Duration> {
        Some(self.last_active.saturating_add(self.timeout))
    }

    fn expired(&mut self, _cx: &mut Context<'_, Server>) -> Keep {
        debug!(
            "closing idle connection of uid {} pid {}",
            self.peer.uid, self.peer.pid
        );
        Keep::No
    }

    fn evictable(&self) -> bool {
        true
    }
}

/// A lease holder's pidfd: readable when the process exits, which ends the lease.
pub struct HolderWatch {
    pub lease: LeaseId,
    pub pidfd: OwnedFd,
}

impl Source<Server> for HolderWatch {
    fn fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    fn interest(&self) -> EpollFlags {
        EpollFlags::EPOLLIN
    }

    fn ready(&mut self, _events: EpollFlags, cx: &mut Context<'_, Server>) -> Keep {
        cx.service.holder_exited(self.lease, cx.now);
        Keep::No
    }

    /// A holder's exit puts the baseline back before anything else of its round is handled.
    fn urgent(&self) -> bool {
        true
    }
}

/// SIGTERM/SIGINT stop the daemon, SIGHUP reloads its configuration.
pub struct Signals {
    pub fd: SignalFd,
}

impl Source<Server> for Signals {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn interest(&self) -> EpollFlags {
        EpollFlags::EPOLLIN
    }

    fn ready(&mut self, _events: EpollFlags, cx: &mut Context<'_, Server>) -> Keep {
        while let Ok(Some(info)) = self.fd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGHUP) => {
                    info!("SIGHUP: reloading the configuration");
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                    cx.service.reload(cx.now);
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
