//! The daemon as the event loop's service: one `match` over the request, the holders' pidfds
//! watched for the leases that have them, and the engine behind it making every decision.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::rc::Rc;
use std::time::Duration;

use log::warn;

use crate::auth::{Authorizer, Peer};
use crate::config::Config;
use crate::journal::{AdminBaseline, Journal};
use crate::kernel::ProcFiles;
use crate::lease::LeaseId;
use crate::protocol::{ErrorCode, Reply, Request};

use super::engine::{Actor, DaemonError, Engine};
use super::event_loop::{Context, Service, Token};
use super::peer;
use super::sources::{Connections, HolderWatch};

/// The connection a request came in on.
pub struct ClientInfo<'a> {
    pub peer: &'a Peer,
    pub names: &'a mut PeerNames,
    pub socket: BorrowedFd<'a>,
}

/// The peer's command and user names, for audit records and leases: looked up once per
/// connection, when a change first needs them.
#[derive(Debug, Default)]
pub struct PeerNames {
    comm: Option<String>,
    user: Option<String>,
}

impl PeerNames {
    /// Who the peer is, for a change it asks for.
    pub fn actor<'a>(&'a mut self, peer: &'a Peer) -> Actor<'a> {
        let comm = self
            .comm
            .get_or_insert_with(|| crate::kernel::process_comm(peer.pid));
        let user = self
            .user
            .get_or_insert_with(|| super::audit::user_name(peer.uid));
        Actor { peer, comm, user }
    }
}

pub struct Server {
    pub engine: Engine<ProcFiles, Journal>,
    connections: Rc<RefCell<Connections>>,
    /// The holder watch of each lease that has one.
    watches: HashMap<LeaseId, Token>,
    watchdog: Option<(Duration, Duration)>,
    /// The most leases and connections held since memory was last given back.
    peak: usize,
}

/// Memory freed by this many leases or connections going away is given back to the system.
const GIVE_BACK_AFTER: usize = 1000;

/// Gives the allocator's free memory back to the system: glibc keeps what it freed in the
/// middle of its heap until asked (malloc_trim releases free pages anywhere in it).
pub fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Server {
    pub fn new(engine: Engine<ProcFiles, Journal>, connections: Rc<RefCell<Connections>>) -> Self {
        Server {
            engine,
            connections,
            watches: HashMap::new(),
            watchdog: None,
            peak: 0,
        }
    }

    /// Records the watch of a lease's holder, to drop it when the lease ends otherwise.
    pub fn watching(&mut self, lease: LeaseId, token: Token) {
        self.watches.insert(lease, token);
    }

    /// Sends WATCHDOG=1 every `interval` (half of WatchdogSec).
    pub fn enable_watchdog(&mut self, interval: Duration, now: Duration) {
        self.watchdog = Some((interval, now.saturating_add(interval)));
    }

    /// Handles one request from a client; the reply line to send.
    pub fn handle(
        cx: &mut Context<'_, Server>,
        client: ClientInfo<'_>,
        request: Request,
    ) -> Vec<u8> {
        let (uid, pid) = (client.peer.uid, client.peer.pid);
        let result = match request {
            Request::Lease(request) => Server::grant(cx, client, request),
            other => cx.service.answer(client, other, cx.now),
        };
        result.unwrap_or_else(|e| {
            if matches!(
                e.code(),
                ErrorCode::Denied | ErrorCode::Unsafe | ErrorCode::Kernel | ErrorCode::Internal
            ) {
                warn!("request from uid {uid} pid {pid} refused: {e}");
            }
            e.reply().to_line()
        })
    }

    /// Every request but `lease` (which may add a holder watch to the loop).
    fn answer(
        &mut self,
        client: ClientInfo<'_>,
        request: Request,
        now: Duration,
    ) -> Result<Vec<u8>, DaemonError> {
        let peer = client.peer;
        let engine = &mut self.engine;
        match request {
            Request::Status => {
                let clients = self.connections.borrow().total();
                engine.status(now, clients).map(|s| Reply::success_line(&s))
            }
            Request::Leases => Ok(Reply::success_line(&engine.leases())),
            Request::Profiles => Ok(Reply::success_line(&engine.profiles())),
            Request::Release { id, tag } => {
                let actor = client.names.actor(peer);
                engine
                    .release(actor, id, tag, now)
                    .map(|r| Reply::success_line(&r))
            }
            Request::Set { policy, force } => {
                let new = engine.custom_baseline(&policy);
                Server::change_baseline(engine, client, new, force, "set", now)
            }
            Request::Apply { profile, force } => {
                let new = engine.profile_baseline(&profile);
                Server::change_baseline(engine, client, new, force, "apply", now)
            }
            Request::Lease(_) => unreachable!("handled by Server::grant"),
        }
    }

    fn change_baseline(
        engine: &mut Engine<ProcFiles, Journal>,
        client: ClientInfo<'_>,
        new: Result<AdminBaseline, DaemonError>,
        force: bool,
        op: &str,
        now: Duration,
    ) -> Result<Vec<u8>, DaemonError> {
        let new = new?;
        let actor = client.names.actor(client.peer);
        engine
            .change_baseline(actor, new, force, op, now)
            .map(|c| Reply::success_line(&c))
    }

    fn grant(
        cx: &mut Context<'_, Server>,
        client: ClientInfo<'_>,
        request: crate::protocol::LeaseRequest,
    ) -> Result<Vec<u8>, DaemonError> {
        let now = cx.now;
        let engine = &mut cx.service.engine;
        let ask = engine.authorize(client.peer, request)?;
        let (pidfd, holder) = if ask.hold() {
            let (fd, holder) = peer::holder(client.socket, client.peer)
                .map_err(|e| DaemonError::Holder(e.to_string()))?;
            (Some(fd), Some(holder))
        } else {
            (None, None)
        };
        let actor = client.names.actor(client.peer);
        let (lease, granted) = engine.grant(actor, ask, holder, now)?;
        if let Some(pidfd) = pidfd {
            let token = cx.spawn(Box::new(HolderWatch { lease, pidfd }));
            cx.service.watching(lease, token);
        }
        Ok(Reply::success_line(&granted))
    }

    /// The holder of `id` exited.
    pub fn holder_exited(&mut self, id: LeaseId, now: Duration) {
        self.watches.remove(&id);
        self.engine.holder_exited(id, now);
    }

    /// Reloads the configuration (SIGHUP). A bad configuration keeps the old one running.
    pub fn reload(&mut self, now: Duration) {
        let path = self.engine.config().path.clone();
        match Config::load(&path) {
            Ok(config) => {
                let (authorizer, warnings) = Authorizer::new(&config);
                for warning in warnings {
                    warn!("{}: {warning}", path.display());
                }
                self.engine.reload(config, authorizer, now);
            }
            Err(e) => log::error!("reload refused, keeping the running configuration: {e}"),
        }
    }
}

impl Service for Server {
    fn next_deadline(&self) -> Option<Duration> {
        [
            self.engine.next_deadline(),
            self.watchdog.map(|(_, next)| next),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_time(cx: &mut Context<'_, Self>) {
        let now = cx.now;
        let server = &mut *cx.service;
        server.engine.on_time(now);
        if let Some((interval, due)) = server.watchdog {
            if due <= now {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                server.watchdog = Some((interval, now.saturating_add(interval)));
            }
        }
    }

    /// Drops the watches of leases that ended otherwise (TTL, release): nothing left to watch;
    /// compacts the journal when it is due, after the round's replies have gone.
    fn after_round(cx: &mut Context<'_, Self>) {
        let server = &mut *cx.service;
        let compacted = server.engine.compact_journal(cx.now);
        let held = server.engine.lease_count() + server.connections.borrow().total();
        server.peak = server.peak.max(held);
        if compacted || server.peak - held >= GIVE_BACK_AFTER {
            give_back_memory();
            server.peak = held;
        }
        for id in cx.service.engine.take_ended() {
            if let Some(token) = cx.service.watches.remove(&id) {
                cx.remove(token);
            }
        }
    }
}
