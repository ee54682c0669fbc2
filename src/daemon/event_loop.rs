//! One thread, one epoll: every event source (the listener, each client, each lease holder's
//! pidfd, the signalfd) is a [`Source`]: its fd, the events it wants, what to do when ready,
//! and an optional deadline. Deadlines sit in one ordered set and arm one CLOCK_BOOTTIME
//! timerfd, so the cost of an event does not grow with the number of connections, and an idle
//! daemon with no deadline sleeps without a single wake-up.
//!
//! The loop is generic over the service `S` the sources act on; it knows nothing of clients,
//! leases or requests.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use log::{debug, error};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use super::peer::boottime;

/// Whether a source stays in the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Yes,
    No,
}

/// A source's handle in the loop; never reused.
pub type Token = u64;

/// What the service and the sources may ask of the loop while they run.
pub struct Context<'a, S> {
    pub service: &'a mut S,
    /// The source being run (for the service: none).
    pub token: Option<Token>,
    pub now: Duration,
    spawned: Vec<(Token, Box<dyn Source<S>>)>,
    removed: Vec<Token>,
    next_token: &'a mut Token,
    /// Run this source again after the others, without waiting for an event.
    pub again: bool,
    /// Close this many sources with the nearest deadlines that may be evicted, to make room.
    pub evict: usize,
    /// Stop the loop (SIGTERM).
    pub stop: bool,
}

impl<'a, S> Context<'a, S> {
    fn new(
        service: &'a mut S,
        next_token: &'a mut Token,
        token: Option<Token>,
        now: Duration,
    ) -> Self {
        Context {
            service,
            token,
            now,
            spawned: Vec::new(),
            removed: Vec::new(),
            next_token,
            again: false,
            evict: 0,
            stop: false,
        }
    }

    /// Hands what was asked of the loop to the round; whether to run the source again.
    fn into_round(mut self, round: &mut Round<S>) -> bool {
        round.spawned.append(&mut self.spawned);
        round.removed.append(&mut self.removed);
        round.stop |= self.stop;
        round.evict += self.evict;
        self.again
    }

    /// Adds a source after this round; its token, to remove it later.
    pub fn spawn(&mut self, source: Box<dyn Source<S>>) -> Token {
        let token = *self.next_token;
        *self.next_token += 1;
        self.spawned.push((token, source));
        token
    }

    /// Removes a source (if it is still there) after this round.
    pub fn remove(&mut self, token: Token) {
        self.removed.push(token);
    }
}

/// An event source of the loop.
pub trait Source<S> {
    fn fd(&self) -> BorrowedFd<'_>;
    /// The epoll events it wants now (empty: none, for a while).
    fn interest(&self) -> EpollFlags;
    /// Its fd is ready with `events`, or (with none) it asked to run again.
    fn ready(&mut self, events: EpollFlags, cx: &mut Context<'_, S>) -> Keep;
    /// When [`Source::expired`] is due (CLOCK_BOOTTIME).
    fn deadline(&self) -> Option<Duration> {
        None
    }
    fn expired(&mut self, _cx: &mut Context<'_, S>) -> Keep {
        Keep::No
    }
    /// Whether the loop may close it early to make room ([`Context::evict`]).
    fn evictable(&self) -> bool {
        false
    }
    /// Whether its events go before the others' of the same round.
    fn urgent(&self) -> bool {
        false
    }
}

/// The service the sources act on: its own deadline and what to do at it.
/// Its methods reach the service through `cx.service`.
pub trait Service: Sized {
    fn next_deadline(&self) -> Option<Duration>;
    fn on_time(cx: &mut Context<'_, Self>);
    /// After each round: what the service needs of the loop (e.g. watches to drop).
    fn after_round(_cx: &mut Context<'_, Self>) {}
}

const TIMER: u64 = u64::MAX;

struct Slot<S> {
    source: Box<dyn Source<S>>,
    interest: EpollFlags,
    /// Whether the fd is in the epoll set (it is not while the interest is empty).
    registered: bool,
    deadline: Option<Duration>,
}

pub struct EventLoop<S> {
    epoll: Epoll,
    timer: TimerFd,
    armed: Option<Duration>,
    slots: HashMap<Token, Slot<S>>,
    deadlines: BTreeSet<(Duration, Token)>,
    again: VecDeque<Token>,
    next_token: Token,
}

/// What the runs of one round asked of the loop.
struct Round<S> {
    spawned: Vec<(Token, Box<dyn Source<S>>)>,
    removed: Vec<Token>,
    again: Vec<Token>,
    evict: usize,
    stop: bool,
}

impl<S> Default for Round<S> {
    fn default() -> Self {
        Round {
            spawned: Vec::new(),
            removed: Vec::new(),
            again: Vec::new(),
            evict: 0,
            stop: false,
        }
    }
}

impl<S: Service> EventLoop<S> {
    pub fn new() -> nix::Result<EventLoop<S>> {
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
            deadlines: BTreeSet::new(),
            again: VecDeque::new(),
            next_token: 0,
        })
    }

    /// Adds a source before the loop runs.
    pub fn add(&mut self, source: Box<dyn Source<S>>) -> Token {
        let token = self.next_token;
        self.next_token += 1;
        self.insert(token, source);
        token
    }

    fn insert(&mut self, token: Token, source: Box<dyn Source<S>>) {
        let interest = source.interest();
        let registered = !interest.is_empty();
        if registered {
            if let Err(e) = self
                .epoll
                .add(source.fd(), EpollEvent::new(interest, token))
            {
                error!("cannot watch a new event source: {e}");
                return;
            }
        }
        let deadline = source.deadline();
        if let Some(at) = deadline {
            self.deadlines.insert((at, token));
        }
        self.slots.insert(
            token,
            Slot {
                source,
                interest,
                registered,
                deadline,
            },
        );
    }

    fn remove(&mut self, token: Token) {
        if let Some(slot) = self.slots.remove(&token) {
            if slot.registered {
                let _ = self.epoll.delete(slot.source.fd());
            }
            if let Some(at) = slot.deadline {
                self.deadlines.remove(&(at, token));
            }
        }
    }

    /// Runs until a source or the service asks to stop.
    pub fn run(&mut self, service: &mut S) {
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            self.arm_timer(service);
            let timeout = if self.again.is_empty() {
                EpollTimeout::NONE
            } else {
                EpollTimeout::ZERO
            };
            let count = match self.epoll.wait(&mut events, timeout) {
                Ok(count) => count,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    error!("epoll_wait failed: {e}");
                    return;
                }
            };
            let mut round = Round::default();
            let mut timer_fired = false;
            let now = boottime();
            // Urgent sources first (a lease holder's exit: its process's socket hangs up in
            // the same round, and the baseline should not wait behind it), then the rest.
            for urgent in [true, false] {
                for event in &events[..count] {
                    if event.data() == TIMER {
                        if urgent {
                            timer_fired = true;
                            // Drain the expiration count; EAGAIN means it was already read.
                            let _ = self.timer.wait();
                        }
                        continue;
                    }
                    let is_urgent = self
                        .slots
                        .get(&event.data())
                        .is_some_and(|slot| slot.source.urgent());
                    if is_urgent != urgent {
                        continue;
                    }
                    let flags = event.events();
                    self.dispatch(event.data(), service, now, &mut round, |source, cx| {
                        source.ready(flags, cx)
                    });
                }
            }
            // Sources that asked to run again, in the order they asked, once per round.
            for _ in 0..self.again.len() {
                if let Some(token) = self.again.pop_front() {
                    self.dispatch(token, service, now, &mut round, |source, cx| {
                        source.ready(EpollFlags::empty(), cx)
                    });
                }
            }
            if timer_fired {
                // A one-shot timer that fired is disarmed: arm it again next time round.
                self.armed = None;
                let now = boottime();
                self.with_service(service, now, &mut round, S::on_time);
                while let Some(&(at, token)) = self.deadlines.first() {
                    if at > now {
                        break;
                    }
                    self.dispatch(token, service, now, &mut round, |source, cx| {
                        source.expired(cx)
                    });
                    // A source that stayed and did not move its deadline must not spin.
                    if self.deadlines.first() == Some(&(at, token)) {
                        self.deadlines.remove(&(at, token));
                        if let Some(slot) = self.slots.get_mut(&token) {
                            slot.deadline = None;
                        }
                    }
                }
            }
            self.with_service(service, now, &mut round, S::after_round);
            self.finish_round(round.evict, &mut round);
            if round.stop {
                return;
            }
        }
    }

    fn finish_round(&mut self, evict: usize, round: &mut Round<S>) {
        for _ in 0..evict {
            self.evict_one();
        }
        for token in round.removed.drain(..) {
            self.remove(token);
        }
        for (token, source) in round.spawned.drain(..) {
            self.insert(token, source);
        }
        for token in round.again.drain(..) {
            if self.slots.contains_key(&token) {
                self.again.push_back(token);
            }
        }
    }

    fn with_service(
        &mut self,
        service: &mut S,
        now: Duration,
        round: &mut Round<S>,
        call: impl FnOnce(&mut Context<'_, S>),
    ) {
        let mut cx = Context::new(service, &mut self.next_token, None, now);
        call(&mut cx);
        cx.into_round(round);
    }

    /// Runs `call` on the source of `token` with a fresh context, keeps or drops the source,
    /// updates its interest and deadline, and collects what it asked of the loop.
    fn dispatch(
        &mut self,
        token: Token,
        service: &mut S,
        now: Duration,
        round: &mut Round<S>,
        call: impl FnOnce(&mut dyn Source<S>, &mut Context<'_, S>) -> Keep,
    ) {
        let Some(slot) = self.slots.get_mut(&token) else {
            return;
        };
        let mut cx = Context::new(service, &mut self.next_token, Some(token), now);
        let keep = call(slot.source.as_mut(), &mut cx);
        if cx.into_round(round) && keep == Keep::Yes {
            round.again.push(token);
        }
        self.settle(token, keep);
    }

    /// Keeps or removes a source after it ran, and updates its interest and deadline.
    fn settle(&mut self, token: Token, keep: Keep) {
        if keep == Keep::No {
            self.remove(token);
            return;
        }
        let Some(slot) = self.slots.get_mut(&token) else {
            return;
        };
        let deadline = slot.source.deadline();
        if deadline != slot.deadline {
            if let Some(at) = slot.deadline {
                self.deadlines.remove(&(at, token));
            }
            if let Some(at) = deadline {
                self.deadlines.insert((at, token));
            }
            slot.deadline = deadline;
        }
        let wanted = slot.source.interest();
        if wanted == slot.interest {
            return;
        }
        slot.interest = wanted;
        let fd = slot.source.fd();
        let result = match (slot.registered, wanted.is_empty()) {
            (true, true) => {
                slot.registered = false;
                self.epoll.delete(fd)
            }
            (true, false) => self.epoll.modify(fd, &mut EpollEvent::new(wanted, token)),
            (false, false) => {
                slot.registered = true;
                self.epoll.add(fd, EpollEvent::new(wanted, token))
            }
            (false, true) => Ok(()),
        };
        if let Err(e) = result {
            debug!("cannot change the events of a source: {e}");
        }
    }

    /// Closes the evictable source whose deadline is nearest (the longest idle client).
    fn evict_one(&mut self) {
        let victim = self
            .deadlines
            .iter()
            .map(|&(_, token)| token)
            .find(|token| self.slots.get(token).is_some_and(|s| s.source.evictable()));
        if let Some(token) = victim {
            debug!("connection limit reached: closing the longest-idle client");
            self.remove(token);
        }
    }

    /// Arms the timer for the earliest deadline of the service and the sources (or earlier), or
    /// disarms it.
    fn arm_timer(&mut self, service: &S) {
        let next = self
            .deadlines
            .first()
            .map(|&(at, _)| at)
            .into_iter()
            .chain(service.next_deadline())
            .min();
        if next == self.armed {
            return;
        }
        // A deadline later than the one armed (a client that was just active): let the timer
        // fire early and arm it again then, one wake-up per idle timeout rather than a
        // timerfd_settime(2) per request. An earlier one, or none at all, is armed now.
        if matches!((next, self.armed), (Some(at), Some(armed)) if armed <= at) {
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
