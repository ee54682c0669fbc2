//! One thread, one epoll: every event source (the listener, each client, each lease holder's
//! pidfd, the signalfd) is a [`Source`]: its fd, the events it wants, what to do when ready.
//! Deadlines (lease TTLs, drift checks, idle clients, the watchdog) arm one CLOCK_BOOTTIME
//! timerfd, so an idle daemon with no deadline sleeps without a single wake-up.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use log::{debug, error};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use super::peer::boottime;
use super::server::Server;

/// Whether a source stays in the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Yes,
    No,
}

/// What sources may ask of the loop while they run.
pub struct Context<'a> {
    pub server: &'a mut Server,
    /// New sources to register (accepted clients, lease holders).
    pub spawn: Vec<Box<dyn Source>>,
    /// Stop the loop (SIGTERM).
    pub stop: bool,
    /// Open connections per uid, and in all.
    pub clients_by_uid: &'a HashMap<u32, usize>,
    pub clients: usize,
    pub max_clients: usize,
    /// Close the client that has been idle longest, to make room.
    pub evict_idlest: bool,
    pub now: Duration,
}

/// An event source of the loop.
pub trait Source {
    fn fd(&self) -> BorrowedFd<'_>;
    /// The epoll events it wants now.
    fn interest(&self) -> EpollFlags;
    fn ready(&mut self, events: EpollFlags, cx: &mut Context<'_>) -> Keep;
    /// When [`Source::expired`] is due (CLOCK_BOOTTIME).
    fn deadline(&self) -> Option<Duration> {
        None
    }
    fn expired(&mut self, _cx: &mut Context<'_>) -> Keep {
        Keep::No
    }
    /// For clients: the peer's uid and when it was last active.
    fn client(&self) -> Option<(u32, Duration)> {
        None
    }
    /// For lease holders: the lease whose end makes this source pointless.
    fn lease(&self) -> Option<&str> {
        None
    }
}

const TIMER: u64 = u64::MAX;

/// What the sources of one round asked of the loop.
#[derive(Default)]
struct Requests {
    spawn: Vec<Box<dyn Source>>,
    stop: bool,
    evict_idlest: bool,
}

struct Slot {
    source: Box<dyn Source>,
    interest: EpollFlags,
}

pub struct EventLoop {
    epoll: Epoll,
    timer: TimerFd,
    armed: Option<Duration>,
    slots: HashMap<u64, Slot>,
    next_token: u64,
    clients_by_uid: HashMap<u32, usize>,
    clients: usize,
    max_clients: usize,
}

impl EventLoop {
    pub fn new(max_clients: usize) -> nix::Result<EventLoop> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let timer = TimerFd::new(
            ClockId::CLOCK_BOOTTIME,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        epoll.add(timer.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, TIMER))?;
        Ok(EventLoop {
            epoll,
            timer,
            armed: None,
            slots: HashMap::new(),
            next_token: 0,
            clients_by_uid: HashMap::new(),
            clients: 0,
            max_clients,
        })
    }

    pub fn add(&mut self, source: Box<dyn Source>) {
        let token = self.next_token;
        self.next_token += 1;
        let interest = source.interest();
        if let Err(e) = self
            .epoll
            .add(source.fd(), EpollEvent::new(interest, token))
        {
            error!("cannot watch a new event source: {e}");
            return;
        }
        if let Some((uid, _)) = source.client() {
            *self.clients_by_uid.entry(uid).or_default() += 1;
            self.clients += 1;
        }
        self.slots.insert(token, Slot { source, interest });
    }

    fn remove(&mut self, token: u64) {
        if let Some(slot) = self.slots.remove(&token) {
            let _ = self.epoll.delete(slot.source.fd());
            if let Some((uid, _)) = slot.source.client() {
                self.clients -= 1;
                if let Some(count) = self.clients_by_uid.get_mut(&uid) {
                    *count -= 1;
                    if *count == 0 {
                        self.clients_by_uid.remove(&uid);
                    }
                }
            }
        }
    }

    /// Runs until a source asks to stop.
    pub fn run(&mut self, server: &mut Server) {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            self.arm_timer(server);
            let count = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(count) => count,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    error!("epoll_wait failed: {e}");
                    return;
                }
            };
            let mut requests = Requests::default();
            let mut timer_fired = false;
            for event in &events[..count] {
                if event.data() == TIMER {
                    timer_fired = true;
                    // Drain the expiration count; EAGAIN just means it was already read.
                    let _ = self.timer.wait();
                    continue;
                }
                let flags = event.events();
                self.dispatch(
                    event.data(),
                    server,
                    boottime(),
                    &mut requests,
                    |source, cx| source.ready(flags, cx),
                );
            }
            if timer_fired {
                // A one-shot timer that fired is disarmed: arm it again next time round.
                self.armed = None;
                let now = boottime();
                server.on_time(now);
                let due: Vec<u64> = self
                    .slots
                    .iter()
                    .filter(|(_, s)| s.source.deadline().is_some_and(|d| d <= now))
                    .map(|(t, _)| *t)
                    .collect();
                for token in due {
                    self.dispatch(token, server, now, &mut requests, |source, cx| {
                        source.expired(cx)
                    });
                }
            }
            if requests.evict_idlest {
                self.evict_idlest();
            }
            for source in requests.spawn {
                self.add(source);
            }
            self.drop_orphaned_holders(server);
            server.clients = self.clients;
            if requests.stop {
                return;
            }
        }
    }

    /// Runs `call` on the source of `token` with a fresh context, keeps or drops the source,
    /// and collects what it asked of the loop.
    fn dispatch(
        &mut self,
        token: u64,
        server: &mut Server,
        now: Duration,
        requests: &mut Requests,
        call: impl FnOnce(&mut dyn Source, &mut Context<'_>) -> Keep,
    ) {
        let clients = self.clients;
        let Some(slot) = self.slots.get_mut(&token) else {
            return;
        };
        let mut cx = Context {
            server,
            spawn: Vec::new(),
            stop: false,
            clients_by_uid: &self.clients_by_uid,
            clients,
            max_clients: self.max_clients,
            evict_idlest: false,
            now,
        };
        let keep = call(slot.source.as_mut(), &mut cx);
        requests.spawn.append(&mut cx.spawn);
        requests.stop |= cx.stop;
        requests.evict_idlest |= cx.evict_idlest;
        self.settle(token, keep);
    }

    /// Keeps or removes a source after it ran, and updates its interest.
    fn settle(&mut self, token: u64, keep: Keep) {
        if keep == Keep::No {
            self.remove(token);
            return;
        }
        if let Some(slot) = self.slots.get_mut(&token) {
            let wanted = slot.source.interest();
            if wanted != slot.interest {
                slot.interest = wanted;
                if let Err(e) = self
                    .epoll
                    .modify(slot.source.fd(), &mut EpollEvent::new(wanted, token))
                {
                    debug!("cannot change the events of a source: {e}");
                }
            }
        }
    }

    fn evict_idlest(&mut self) {
        let idlest = self
            .slots
            .iter()
            .filter_map(|(token, slot)| slot.source.client().map(|(_, active)| (active, *token)))
            .min();
        if let Some((_, token)) = idlest {
            debug!("connection limit reached: closing the longest-idle client");
            self.remove(token);
        }
    }

    /// Holder watches whose lease ended otherwise (TTL, release) have nothing left to watch.
    fn drop_orphaned_holders(&mut self, server: &Server) {
        let orphans: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.source.lease().is_some_and(|id| !server.has_lease(id)))
            .map(|(token, _)| *token)
            .collect();
        for token in orphans {
            self.remove(token);
        }
    }

    /// Arms the timer for the earliest deadline of the server and the sources, or disarms it.
    fn arm_timer(&mut self, server: &Server) {
        let next = self
            .slots
            .values()
            .filter_map(|s| s.source.deadline())
            .chain(server.next_deadline())
            .min();
        if next == self.armed {
            return;
        }
        self.armed = next;
        let result = match next {
            // An absolute time of 0 would disarm: fire at the earliest instant instead.
            Some(at) => self.timer.set(
                Expiration::OneShot(TimeSpec::from_duration(at.max(Duration::from_nanos(1)))),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            ),
            None => self.timer.unset(),
        };
        if let Err(e) = result {
            error!("cannot arm the timer: {e}");
        }
    }
}
