//! The daemon's state engine: baseline, leases, the policy the kernel must hold, retries of
//! failed writes, the lockout guard and drift. Every decision is made here; the kernel and the
//! journal are reached only through the [`Kernel`] and [`JournalStore`] traits, so tests drive
//! it with injected faults, and the transport above it only moves requests and replies.
//!
//! The invariant it restores after anything fails: the kernel holds
//! `effective(baseline, live leases)`, or, while that policy would lock the node out (the
//! lockout guard), the last safe policy, re-evaluated with backoff.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, warn};

use crate::auth::{Authorizer, Denial, LeaseAsk, Peer};
use crate::change::{self, POLICY_KNOBS};
use crate::config::{Config, ConfigError, DriftAction};
use crate::journal::{AdminBaseline, JournalChange, JournalError, JournalStore, Snapshot};
use crate::kernel::{Kernel, KernelError};
use crate::lease::{effective_policy, Holder, Lease, LeaseId};
use crate::model::{Knob, Limit, LimitError, LockoutRisk, Mode, Node, Policy, Tunables};
use crate::protocol::{
    is_clean_text, BaselineChanged, BaselineInfo, DaemonStatus, DriftEvent, ErrorCode, FoundAction,
    FoundAtStart, GuardHold, KernelPolicy, LeaseGranted, LeaseInfo, LeaseList, LeaseRequest,
    PendingWrite, PolicyRequest, ProfileInfo, ProfileList, Released, Reply, MAX_REASON, MAX_TAG,
};

use super::audit::{self, Audit};

/// Everything that can go wrong with a request or a change; [`DaemonError::reply`] maps each to
/// a protocol error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("tag must be 1 to {MAX_TAG} characters without control or format characters")]
    BadTag,
    #[error("reason must be at most {MAX_REASON} characters without control or format characters")]
    BadReason,
    #[error("ttl must be from 1 second to 366 days")]
    BadTtl,
    #[error("give a lease id or a tag to release")]
    ReleaseWhat,
    #[error(transparent)]
    Denied(#[from] Denial),
    #[error("no live lease with id {0}")]
    NoLease(String),
    #[error("no live lease of yours with tag {0}")]
    NoTag(String),
    #[error("lease {id} belongs to uid {owner}: only its owner or root may release it")]
    NotOwner { id: LeaseId, owner: u32 },
    #[error("no profile `{name}` (known: {known})")]
    NoProfile { name: String, known: String },
    #[error(transparent)]
    Unsafe(#[from] LockoutRisk),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot watch the requesting process: {0}")]
    Holder(String),
    #[error("cannot draw a random lease id: {0}")]
    Random(getrandom::Error),
}

impl DaemonError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DaemonError::Limit(_)
            | DaemonError::BadTag
            | DaemonError::BadReason
            | DaemonError::BadTtl
            | DaemonError::ReleaseWhat
            | DaemonError::Config(_) => ErrorCode::Invalid,
            DaemonError::Denied(Denial::TooMany { .. }) => ErrorCode::Limit,
            DaemonError::Denied(_) | DaemonError::NotOwner { .. } => ErrorCode::Denied,
            DaemonError::NoLease(_) | DaemonError::NoTag(_) | DaemonError::NoProfile { .. } => {
                ErrorCode::NotFound
            }
            DaemonError::Unsafe(_) => ErrorCode::Unsafe,
            DaemonError::Kernel(_) => ErrorCode::Kernel,
            DaemonError::Journal(_) | DaemonError::Holder(_) | DaemonError::Random(_) => {
                ErrorCode::Internal
            }
        }
    }

    /// The one mapping from internal errors to protocol replies.
    pub fn reply(&self) -> Reply {
        Reply::failure(self.code(), self.to_string())
    }
}

/// The name of the baseline kept from the kernel at the first start in a boot.
pub const FOUND: &str = "found";

/// The first retry of a failed write comes after this; each further one waits twice as long,
/// up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// How often a held (unsafe) policy is looked at again, at first and at most.
const FIRST_REEVALUATION: Duration = Duration::from_secs(1);
const MAX_REEVALUATION: Duration = Duration::from_secs(60);

fn backoff(first: Duration, max: Duration, attempts: u32) -> Duration {
    first
        .checked_mul(1u32 << attempts.saturating_sub(1).min(16))
        .unwrap_or(max)
        .min(max)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where the baseline in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `[daemon] baseline` names a profile.
    Config,
    /// `set`, `apply` or adopted drift.
    Admin,
    /// No baseline configured: the node's boot policy.
    Boot,
}

/// The resolved baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Baseline<'a> {
    name: &'a str,
    policy: Policy,
    swappiness: Option<u64>,
    source: Source,
    forced: bool,
}

/// A kernel write that failed, retried until it holds.
#[derive(Debug, Clone)]
struct Pending {
    target: Policy,
    swappiness: Option<u64>,
    attempts: u32,
    last_error: String,
    since: u64,
}

/// The lockout guard holding a safe policy instead of the one wanted.
#[derive(Debug, Clone)]
struct Hold {
    wanted: Policy,
    holding: Policy,
    reason: String,
    since: u64,
    checks: u32,
    next: Duration,
}

/// A lease request that passed validation and authorization, waiting for its holder.
pub struct Authorized {
    request: LeaseRequest,
    policy: Policy,
    ttl: Duration,
    /// Whose lease it is: the peer's, or the user root asked for.
    owner_uid: u32,
}

impl Authorized {
    /// Whether the lease is to be bound to the requesting process.
    pub fn hold(&self) -> bool {
        self.request.hold
    }
}

/// Who asked for a change, for the audit record.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub peer: &'a Peer,
    /// The peer's command name, escaped by the audit record.
    pub comm: &'a str,
    /// The peer's user name (or uid), looked up once per connection.
    pub user: &'a str,
}

/// The live leases' policies, summed up so that the effective policy and what a decision must
/// read are found without a walk over the lease table: counts per mode, and within mode never
/// the ratios and kbytes in order (the largest of each is the most permissive of its kind).
#[derive(Debug, Default)]
struct LeaseSummary {
    always: usize,
    heuristic: usize,
    never_ratios: BTreeMap<u32, usize>,
    never_kbytes: BTreeMap<u64, usize>,
    /// Live leases per owner uid, for `max_leases`.
    per_uid: HashMap<u32, usize>,
}

impl LeaseSummary {
    fn add(&mut self, lease: &Lease) {
        match (lease.policy.mode, lease.policy.limit) {
            (Mode::Always, _) => self.always += 1,
            (Mode::Heuristic, _) => self.heuristic += 1,
            (Mode::Never, Limit::Ratio(r)) => *self.never_ratios.entry(r).or_default() += 1,
            (Mode::Never, Limit::Kbytes(k)) => *self.never_kbytes.entry(k).or_default() += 1,
        }
        *self.per_uid.entry(lease.owner_uid).or_default() += 1;
    }

    fn remove(&mut self, lease: &Lease) {
        fn decrement<K: Ord>(map: &mut BTreeMap<K, usize>, key: K) {
            if let Some(count) = map.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&key);
                }
            }
        }
        match (lease.policy.mode, lease.policy.limit) {
            (Mode::Always, _) => self.always -= 1,
            (Mode::Heuristic, _) => self.heuristic -= 1,
            (Mode::Never, Limit::Ratio(r)) => decrement(&mut self.never_ratios, r),
            (Mode::Never, Limit::Kbytes(k)) => decrement(&mut self.never_kbytes, k),
        }
        if let Some(count) = self.per_uid.get_mut(&lease.owner_uid) {
            *count -= 1;
            if *count == 0 {
                self.per_uid.remove(&lease.owner_uid);
            }
        }
    }

    /// One policy per kind of lease present: the effective policy of these is the effective
    /// policy of all (the limit of an always or heuristic lease does not count).
    fn candidates(&self) -> [Option<Policy>; 4] {
        let any = Limit::Ratio(0);
        [
            (self.always > 0).then_some(Policy {
                mode: Mode::Always,
                limit: any,
            }),
            (self.heuristic > 0).then_some(Policy {
                mode: Mode::Heuristic,
                limit: any,
            }),
            self.never_ratios.last_key_value().map(|(&r, _)| Policy {
                mode: Mode::Never,
                limit: Limit::Ratio(r),
            }),
            self.never_kbytes.last_key_value().map(|(&k, _)| Policy {
                mode: Mode::Never,
                limit: Limit::Kbytes(k),
            }),
        ]
    }

    /// Whether a lease of a mode more permissive than never is live.
    fn beyond_never(&self) -> bool {
        self.always > 0 || self.heuristic > 0
    }
}

/// What one decision has read of the kernel: the node to decide on, and which of its parts
/// were read now (the rest is from the last read).
#[derive(Debug, Clone)]
struct Reading {
    node: Node,
    /// Memory figures and reserves (needed only while mode never is in play).
    memory: bool,
    /// Swappiness (needed only while the baseline sets one).
    swappiness: bool,
}

/// The engine over a kernel `K` and a journal `J`.
pub struct Engine<K: Kernel, J: JournalStore> {
    kernel: K,
    journal: J,
    config: Config,
    authorizer: Authorizer,
    boot_id: String,
    /// The node's boot policy (sysctl.d, else the kernel's defaults): the baseline when the
    /// configuration names none, and the limit of profiles that name none.
    boot: Policy,
    admin_baseline: Option<AdminBaseline>,
    /// Boxed: a tree node then moves ids and pointers, and a lease's memory goes back whole
    /// when it ends.
    leases: BTreeMap<LeaseId, Box<Lease>>,
    /// Lease deadlines in order, for the next timer without a scan.
    expiries: BTreeSet<(Duration, LeaseId)>,
    summary: LeaseSummary,
    /// What the engine last decided the kernel must hold.
    in_force: Policy,
    /// The last policy the kernel was seen or made to hold while it was safe (or forced).
    confirmed: Option<Policy>,
    pending: Option<Pending>,
    journal_error: Option<String>,
    retry_at: Option<Duration>,
    hold: Option<Hold>,
    drift_events: u64,
    last_drift: Option<DriftEvent>,
    warned_drift: Option<KernelPolicy>,
    next_drift_check: Option<Duration>,
    last_node: Option<Node>,
    /// Leases ended since the transport last asked (their holder watches can go).
    ended: Vec<LeaseId>,
    /// What the first start in this boot found in the kernel, when it was not the boot policy.
    found_at_start: Option<FoundAtStart>,
}

/// What [`Engine::start`] needs beyond the kernel and the journal.
pub struct StartOptions {
    pub config: Config,
    pub authorizer: Authorizer,
    pub boot: Policy,
    pub boot_id: String,
}

impl<K: Kernel, J: JournalStore> Engine<K, J> {
    /// Loads the journal (setting aside one that cannot be used), re-adopts the leases whose
    /// TTL has not passed and whose holders `reopen` finds alive (returning what it gave for
    /// each), and puts the resulting policy in force, retrying later if that fails. Never
    /// fails: a daemon that cannot write the kernel now keeps trying.
    pub fn start<W>(
        kernel: K,
        mut journal: J,
        options: StartOptions,
        now: Duration,
        mut reopen: impl FnMut(&Holder) -> Option<W>,
    ) -> (Engine<K, J>, Vec<(LeaseId, W)>) {
        let (state, set_aside) = match journal.load() {
            Ok(state) => (state, false),
            Err(e) => {
                match journal.set_aside("unusable") {
                    Ok(name) => error!("{e}; set aside as {name}: starting without it"),
                    Err(aside) => error!("{e}; cannot set it aside ({aside}): starting without it"),
                }
                (None, true)
            }
        };
        let mut engine = Engine {
            kernel,
            journal,
            config: options.config,
            authorizer: options.authorizer,
            boot_id: options.boot_id,
            boot: options.boot,
            admin_baseline: None,
            leases: BTreeMap::new(),
            expiries: BTreeSet::new(),
            summary: LeaseSummary::default(),
            in_force: options.boot,
            confirmed: None,
            pending: None,
            journal_error: None,
            retry_at: None,
            hold: None,
            drift_events: 0,
            last_drift: None,
            warned_drift: None,
            next_drift_check: None,
            last_node: None,
            ended: Vec::new(),
            found_at_start: None,
        };
        let mut watches = Vec::new();
        let of_this_boot = matches!(&state, Some(s) if s.boot_id == engine.boot_id);
        match state {
            Some(state) if state.boot_id == engine.boot_id => {
                engine.admin_baseline = state.admin_baseline;
                for mut lease in state.leases {
                    if lease.expires <= now {
                        info!(
                            "lease {} ended while the daemon was down: its TTL passed",
                            lease.id
                        );
                        continue;
                    }
                    if let Some(holder) = &lease.holder {
                        match reopen(holder) {
                            Some(watch) => watches.push((lease.id, watch)),
                            None => {
                                info!(
                                    "lease {} ended while the daemon was down: holder pid {} is gone",
                                    lease.id, holder.pid
                                );
                                continue;
                            }
                        }
                    }
                    info!(
                        "lease {} re-adopted (owner uid {}, {})",
                        lease.id, lease.owner_uid, lease.policy
                    );
                    if lease.owner.is_empty() {
                        lease.owner = audit::user_name(lease.owner_uid);
                    }
                    engine.insert(lease);
                }
            }
            Some(_) => info!("the journal is from another boot: starting from the baseline"),
            None => {}
        }
        if !of_this_boot && !set_aside && engine.config.daemon.baseline.is_none() {
            engine.keep_found_policy();
        }
        if let Ok(node) = engine.kernel.node() {
            engine.last_node = Some(node);
        }
        engine.schedule_drift_check(now);
        let _ = engine.persist(None);
        match engine.converge(now) {
            Ok((before, after)) => engine.audit(&Audit::system("start"), &before, &after),
            Err(e) => debug!("start: {e}"),
        }
        (engine, watches)
    }

    /// The first start in this boot (no journal of this boot, none set aside) with no baseline
    /// configured. Kernel values that differ from the boot policy were set at run time before
    /// the daemon ever ran in this boot (`sysctl -w`), not by a lease of ours, so installing
    /// the daemon must not change them: a policy no more permissive than the boot policy is
    /// kept as the baseline `found`. A more permissive one could still be a lease's, left by a
    /// journal lost in this boot (leases only ever make the node more permissive), so the boot
    /// policy is put back, loudly. Both are shown by `status`.
    fn keep_found_policy(&mut self) {
        let node = match self.kernel.node() {
            Ok(node) => node,
            Err(e) => {
                debug!("first start: cannot read the kernel ({e}); the boot policy applies");
                return;
            }
        };
        let kernel = node.tunables;
        if kernel.with_policy(&self.boot) == kernel {
            return;
        }
        let found = KernelPolicy::from(&kernel);
        let boot = KernelPolicy::from(&kernel.with_policy(&self.boot));
        let policy = match kernel.policy() {
            Ok(policy) if !node.compare_permissiveness(&policy, &self.boot).is_gt() => policy,
            _ => {
                error!(
                    target: audit::CRITICAL,
                    "first start in this boot, no baseline configured: the kernel holds {found}, more permissive than the node's boot policy {boot} (sysctl.d, else the kernel's defaults). It may be a lease's, left by a journal lost in this boot, so the boot policy is put back. To run under it, name a profile with it as `baseline` in {} or set it in /etc/sysctl.d",
                    self.config.path.display()
                );
                self.found_at_start = Some(FoundAtStart {
                    kernel: found,
                    action: FoundAction::Replaced,
                });
                return;
            }
        };
        warn!(
            "first start in this boot, no baseline configured: the kernel holds {found}, not the node's boot policy {boot}; it was set at run time before overcommitd ran, and is kept as the baseline `found` (lost at the next boot: set it in /etc/sysctl.d, or name a profile as `baseline` in {})",
            self.config.path.display()
        );
        self.admin_baseline = Some(AdminBaseline {
            name: FOUND.into(),
            policy,
            swappiness: None,
            forced: false,
        });
        self.found_at_start = Some(FoundAtStart {
            kernel: found,
            action: FoundAction::Kept,
        });
    }

    fn insert(&mut self, lease: Lease) {
        self.expiries.insert((lease.expires, lease.id));
        self.summary.add(&lease);
        if let Some(old) = self.leases.insert(lease.id, Box::new(lease)) {
            self.summary.remove(&old);
            self.expiries.remove(&(old.expires, old.id));
        }
    }

    fn remove(&mut self, id: &LeaseId) -> Option<Box<Lease>> {
        let lease = self.leases.remove(id)?;
        self.expiries.remove(&(lease.expires, lease.id));
        self.summary.remove(&lease);
        Some(lease)
    }

    fn schedule_drift_check(&mut self, now: Duration) {
        self.next_drift_check = self
            .config
            .daemon
            .drift_interval
            .and_then(|i| now.checked_add(i));
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn journal(&self) -> &J {
        &self.journal
    }

    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// Leases ended since the last call (their holder watches are no longer needed).
    pub fn take_ended(&mut self) -> Vec<LeaseId> {
        std::mem::take(&mut self.ended)
    }

    fn baseline(&self) -> Baseline<'_> {
        if let Some(admin) = &self.admin_baseline {
            return Baseline {
                name: &admin.name,
                policy: admin.policy,
                swappiness: admin.swappiness,
                source: Source::Admin,
                forced: admin.forced,
            };
        }
        match self.config.baseline_profile() {
            Some(profile) => Baseline {
                name: &profile.name,
                policy: profile.policy(self.boot.limit),
                swappiness: profile.swappiness,
                source: Source::Config,
                forced: false,
            },
            None => Baseline {
                name: "boot",
                policy: self.boot,
                swappiness: None,
                source: Source::Boot,
                forced: false,
            },
        }
    }

    fn baseline_info(&self) -> BaselineInfo {
        let b = self.baseline();
        BaselineInfo {
            name: b.name.to_string(),
            policy: b.policy,
            swappiness: b.swappiness,
            source: match b.source {
                Source::Config => "config",
                Source::Admin => "admin",
                Source::Boot => "boot",
            }
            .into(),
        }
    }

    /// A node to order policies on: the last one read, or (before any read succeeded) one with
    /// no memory, on which kbytes order and ratios tie.
    fn ordering_node(&self) -> Node {
        self.last_node.clone().unwrap_or_else(|| Node {
            tunables: Tunables::unread(self.boot.mode),
            memory: Default::default(),
            kernel: None,
            nr_cpus: 1,
            page_size: 4096,
        })
    }

    /// The most permissive of the baseline and the live leases, from the lease table as it is.
    pub fn effective(&self) -> Policy {
        self.effective_on(&self.ordering_node())
    }

    fn effective_on(&self, node: &Node) -> Policy {
        let candidates = self.summary.candidates();
        effective_policy(node, &self.baseline().policy, candidates.iter().flatten())
    }

    /// Whether the effective policy is a mode-never one: only then do the memory figures
    /// matter (the lockout guard, and the order among never policies). Any other mode of the
    /// baseline or of a lease is more permissive than never.
    fn never_in_play(&self) -> bool {
        self.baseline().policy.mode == Mode::Never && !self.summary.beyond_never()
    }

    /// Reads what a decision needs, on top of what `prior` (this decision's earlier read)
    /// has: the policy knobs, swappiness while the baseline sets one, the memory figures and
    /// reserves while mode never is in play. The rest of the node is the last one read.
    fn read_kernel(&mut self, prior: Option<Reading>) -> Result<Reading, KernelError> {
        let mut reading = match prior {
            Some(reading) => reading,
            None => {
                let mut node = self.ordering_node();
                self.kernel.read_knobs(&POLICY_KNOBS, &mut node.tunables)?;
                Reading {
                    node,
                    memory: false,
                    swappiness: false,
                }
            }
        };
        if !reading.swappiness && self.baseline().swappiness.is_some() {
            self.kernel
                .read_knobs(&[Knob::Swappiness], &mut reading.node.tunables)?;
            reading.swappiness = true;
        }
        if !reading.memory && self.never_in_play() {
            self.kernel.read_knobs(
                &[Knob::AdminReserveKbytes, Knob::UserReserveKbytes],
                &mut reading.node.tunables,
            )?;
            reading.node.memory = self.kernel.read_memory()?;
            reading.memory = true;
        }
        self.last_node = Some(reading.node.clone());
        Ok(reading)
    }

    /// What the kernel must hold on `node`: the effective policy, unless the lockout guard
    /// finds it would make every new allocation fail; then the last safe policy (or mode
    /// heuristic), held and looked at again with backoff.
    fn desired(&mut self, node: &Node, now: Duration) -> (Policy, Option<u64>) {
        let Baseline {
            policy: baseline_policy,
            swappiness,
            forced,
            ..
        } = self.baseline();
        let target = self.effective_on(node);
        let margin = self.config.daemon.lockout_margin;
        let forced = forced && target == baseline_policy;
        let risk = if forced {
            None
        } else {
            node.lockout_risk(&target, margin)
        };
        let Some(risk) = risk else {
            if let Some(hold) = self.hold.take() {
                info!(
                    "lockout guard: {} is safe again; it replaces the held {}",
                    target, hold.holding
                );
            }
            return (target, swappiness);
        };
        let holding = self
            .confirmed
            .filter(|p| node.lockout_risk(p, margin).is_none())
            .unwrap_or(Policy {
                mode: Mode::Heuristic,
                limit: target.limit,
            });
        match &mut self.hold {
            Some(hold) if hold.wanted == target => {
                hold.checks += 1;
                hold.holding = holding;
                hold.reason = risk.to_string();
                hold.next =
                    now.saturating_add(backoff(FIRST_REEVALUATION, MAX_REEVALUATION, hold.checks));
            }
            _ => {
                error!(
                    target: audit::CRITICAL,
                    "lockout guard: the policy due now, {target} (baseline {}), would make every new allocation on the node fail ({risk}); holding {holding} and looking again with backoff",
                    self.baseline().name
                );
                self.hold = Some(Hold {
                    wanted: target,
                    holding,
                    reason: risk.to_string(),
                    since: unix_now(),
                    checks: 1,
                    next: now.saturating_add(FIRST_REEVALUATION),
                });
            }
        }
        (holding, swappiness)
    }

    /// Makes the kernel hold what [`Engine::desired`] says. On failure the write is retried
    /// with backoff until it holds (one log line per episode). Returns the tunables before
    /// and after.
    fn converge(&mut self, now: Duration) -> Result<(Tunables, Tunables), DaemonError> {
        self.converge_from(None, now)
    }

    /// [`Engine::converge`] on top of what this decision has read already.
    fn converge_from(
        &mut self,
        prior: Option<Reading>,
        now: Duration,
    ) -> Result<(Tunables, Tunables), DaemonError> {
        match self.try_converge(prior, now) {
            Ok(pair) => {
                if let Some(p) = self.pending.take() {
                    info!(
                        "the kernel holds {} again, after {} failed attempt(s)",
                        p.target, p.attempts
                    );
                }
                self.schedule_retry(now);
                Ok(pair)
            }
            Err(e) => {
                self.note_failure(&e, now);
                Err(e)
            }
        }
    }

    fn try_converge(
        &mut self,
        prior: Option<Reading>,
        now: Duration,
    ) -> Result<(Tunables, Tunables), DaemonError> {
        let node = match self.read_kernel(prior) {
            Ok(reading) => reading.node,
            Err(e) => {
                // Keep the target current for `status`, from the last node seen.
                let node = self.ordering_node();
                self.in_force = self.desired(&node, now).0;
                return Err(e.into());
            }
        };
        let (policy, swappiness) = self.desired(&node, now);
        self.in_force = policy;
        let kernel = node.tunables;
        if kernel.with_policy(&policy) == kernel
            && swappiness.is_none_or(|s| s == kernel.swappiness)
        {
            self.confirmed = Some(policy);
            return Ok((kernel, kernel));
        }
        let after = change::write_policy_over(&self.kernel, &kernel, &policy, swappiness)?;
        if let Some(last) = &mut self.last_node {
            last.tunables = after;
        }
        self.confirmed = Some(policy);
        // systemctl status shows the policy in force.
        if under_systemd() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&self.status_line())]);
        }
        Ok((kernel, after))
    }

    fn note_failure(&mut self, e: &DaemonError, now: Duration) {
        let swappiness = self.baseline().swappiness;
        match &mut self.pending {
            Some(p) => {
                p.attempts += 1;
                p.target = self.in_force;
                p.swappiness = swappiness;
                p.last_error = e.to_string();
                debug!("retry {} of writing {}: {e}", p.attempts, p.target);
            }
            None => {
                error!(
                    "cannot put {} in force: {e}; retrying with backoff until the kernel holds it",
                    self.in_force
                );
                self.pending = Some(Pending {
                    target: self.in_force,
                    swappiness,
                    attempts: 1,
                    last_error: e.to_string(),
                    since: unix_now(),
                });
            }
        }
        self.schedule_retry(now);
    }

    fn retry_attempts(&self) -> u32 {
        let pending = self.pending.as_ref().map_or(0, |p| p.attempts);
        pending.max(u32::from(self.journal_error.is_some()))
    }

    fn schedule_retry(&mut self, now: Duration) {
        let attempts = self.retry_attempts();
        self.retry_at =
            (attempts > 0).then(|| now.saturating_add(backoff(FIRST_RETRY, MAX_RETRY, attempts)));
    }

    /// Saves `change` (one record), or, with `None`, after a failed save, or when the journal
    /// asks for it, the whole state (a snapshot). A failure is remembered (shown by `status`,
    /// logged once) and a snapshot retried with the kernel writes.
    fn persist(&mut self, change: Option<JournalChange<'_>>) -> Result<(), JournalError> {
        let result = match change {
            Some(change) if self.journal_error.is_none() && !self.journal.needs_snapshot() => {
                self.journal.record(&change)
            }
            _ => {
                let snapshot = Snapshot {
                    boot_id: &self.boot_id,
                    admin_baseline: self.admin_baseline.as_ref(),
                    leases: self.leases.values().map(|l| l.as_ref()).collect(),
                    effective: self.in_force,
                };
                self.journal.snapshot(&snapshot)
            }
        };
        match result {
            Ok(()) => {
                if self.journal_error.take().is_some() {
                    info!("journal {} saved again", self.journal.describe());
                }
                Ok(())
            }
            Err(e) => {
                if self.journal_error.is_none() {
                    error!("cannot save the journal: {e}; retrying");
                }
                self.journal_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The journal record of the baseline set at run time, as it is now.
    fn baseline_change(&self) -> JournalChange<'static> {
        JournalChange::Baseline(self.admin_baseline.clone().map(Cow::Owned))
    }

    /// Compacts the journal when its records have outgrown its snapshot: after the replies,
    /// off the requests' path. Whether it did.
    pub fn compact_journal(&mut self, now: Duration) -> bool {
        if self.journal_error.is_some() || !self.journal.wants_compaction() {
            return false;
        }
        if self.persist(None).is_err() {
            self.schedule_retry(now);
        }
        true
    }

    /// Live leases.
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    fn audit(&self, record: &Audit<'_>, before: &Tunables, after: &Tunables) {
        audit::record(record, before, after, self.leases.len());
    }

    /// Validates and authorizes a lease request; the holder is resolved after this.
    pub fn authorize(
        &mut self,
        peer: &Peer,
        request: LeaseRequest,
    ) -> Result<Authorized, DaemonError> {
        let keep = self.baseline().policy.limit;
        let policy = Policy::from_options(
            request.policy.mode,
            request.policy.ratio,
            request.policy.kbytes,
            keep,
        )?;
        let limit = crate::model::Limit::from_options(request.policy.ratio, request.policy.kbytes)?;
        if request
            .tag
            .as_ref()
            .is_some_and(|t| t.is_empty() || !is_clean_text(t, MAX_TAG))
        {
            return Err(DaemonError::BadTag);
        }
        if request
            .reason
            .as_ref()
            .is_some_and(|r| !is_clean_text(r, MAX_REASON))
        {
            return Err(DaemonError::BadReason);
        }
        let ttl = match request.ttl_secs {
            Some(secs) if secs == 0 || secs > crate::config::MAX_TTL.as_secs() => {
                return Err(DaemonError::BadTtl)
            }
            Some(secs) => Some(Duration::from_secs(secs)),
            None => None,
        };
        // Root may ask on behalf of a job's user: then that user's rule decides, with that
        // user's groups, and the lease counts and belongs as theirs.
        let subject = match request.for_uid {
            None => peer.clone(),
            Some(_) if !peer.is_root() => {
                return Err(Denial::RootOnly("lease on behalf of another user (for_uid)").into())
            }
            Some(uid) => crate::auth::user_as_peer(uid, peer.pid)?,
        };
        let live = self.summary.per_uid.get(&subject.uid).copied().unwrap_or(0);
        let ask = LeaseAsk {
            mode: request.policy.mode,
            limit,
            ttl,
            clamp_ttl: request.clamp_ttl,
        };
        let ttl = self
            .authorizer
            .lease(&subject, &ask, live, self.config.daemon.default_ttl)?
            .min(crate::config::MAX_TTL);
        Ok(Authorized {
            request,
            policy,
            ttl,
            owner_uid: subject.uid,
        })
    }

    /// Grants an authorized lease: journaled, then the kernel written and read back; the
    /// reply is only good once the kernel holds it. On failure nothing of it remains. Returns
    /// the new lease's id with the reply.
    pub fn grant(
        &mut self,
        actor: Actor<'_>,
        ask: Authorized,
        holder: Option<Holder>,
        now: Duration,
    ) -> Result<(LeaseId, LeaseGranted), DaemonError> {
        let reading = self.check_drift(now);
        let id = LeaseId::new().map_err(DaemonError::Random)?;
        let granted_at = unix_now();
        let lease = Lease {
            id,
            owner_uid: ask.owner_uid,
            owner: if ask.owner_uid == actor.peer.uid {
                actor.user.to_string()
            } else {
                audit::user_name(ask.owner_uid)
            },
            requester_uid: (ask.owner_uid != actor.peer.uid).then_some(actor.peer.uid),
            requester_pid: actor.peer.pid,
            requester_comm: actor.comm.to_string(),
            policy: ask.policy,
            holder,
            tag: ask.request.tag,
            reason: ask.request.reason,
            granted_at,
            expires: now.saturating_add(ask.ttl),
            expires_at: granted_at.saturating_add(ask.ttl.as_secs()),
        };
        let info = lease_info(&lease);
        self.insert(lease.clone());
        let journal_before = self.journal_error.clone();
        if let Err(e) = self.persist(Some(JournalChange::Granted(Cow::Borrowed(&lease)))) {
            self.remove(&id);
            self.journal_error = journal_before;
            return Err(e.into());
        }
        match self.converge_from(reading, now) {
            Ok((before, after)) => {
                let record = Audit {
                    op: "lease",
                    actor: Some(actor),
                    lease: Some(&info.id),
                    reason: info.reason.as_deref(),
                    for_uid: info.requester_uid.map(|_| info.owner_uid),
                };
                self.audit(&record, &before, &after);
                let effective = self.effective();
                Ok((
                    id,
                    LeaseGranted {
                        lease: info,
                        effective,
                    },
                ))
            }
            Err(e) => {
                self.remove(&id);
                let ended = [id];
                self.undo(JournalChange::Ended(Cow::Borrowed(&ended)), now);
                Err(e)
            }
        }
    }

    /// After a refused change: journal and kernel back to the state without it (retried
    /// until they hold if that fails too).
    fn undo(&mut self, change: JournalChange<'_>, now: Duration) {
        let _ = self.persist(Some(change));
        if let Err(e) = self.converge(now) {
            debug!("undo: {e}");
        }
    }

    /// Ends leases by id or tag for their owner (or root).
    pub fn release(
        &mut self,
        actor: Actor<'_>,
        id: Option<String>,
        tag: Option<String>,
        now: Duration,
    ) -> Result<Released, DaemonError> {
        let peer = actor.peer;
        let ids: Vec<LeaseId> = match (id, tag) {
            (Some(text), _) => {
                let lease = text
                    .parse()
                    .ok()
                    .and_then(|id| self.leases.get(&id))
                    .ok_or(DaemonError::NoLease(text))?;
                let id = lease.id;
                if lease.owner_uid != peer.uid && !peer.is_root() {
                    return Err(DaemonError::NotOwner {
                        id,
                        owner: lease.owner_uid,
                    });
                }
                vec![id]
            }
            (None, Some(tag)) => {
                let ids: Vec<LeaseId> = self
                    .leases
                    .values()
                    .filter(|l| {
                        l.tag.as_deref() == Some(tag.as_str())
                            && (l.owner_uid == peer.uid || peer.is_root())
                    })
                    .map(|l| l.id)
                    .collect();
                if ids.is_empty() {
                    return Err(DaemonError::NoTag(tag));
                }
                ids
            }
            (None, None) => return Err(DaemonError::ReleaseWhat),
        };
        let reading = self.check_drift(now);
        let joined = join_ids(&ids);
        let record = Audit {
            op: "release",
            actor: Some(actor),
            lease: Some(&joined),
            reason: None,
            for_uid: None,
        };
        self.end(&ids, &record, reading, now);
        Ok(Released {
            released: ids.iter().map(LeaseId::to_string).collect(),
            effective: self.effective(),
            pending_write: self.pending_write(now),
        })
    }

    /// Ends leases: they are gone from the table at once, whatever happens to the writes,
    /// which are retried until the kernel holds the policy without them.
    fn end(&mut self, ids: &[LeaseId], record: &Audit<'_>, prior: Option<Reading>, now: Duration) {
        let ended: Vec<LeaseId> = ids
            .iter()
            .filter(|id| self.remove(id).is_some())
            .copied()
            .collect();
        if ended.is_empty() {
            return;
        }
        let _ = self.persist(Some(JournalChange::Ended(Cow::Borrowed(&ended))));
        self.ended.extend(ended);
        if let Ok((before, after)) = self.converge_from(prior, now) {
            self.audit(record, &before, &after);
        }
    }

    /// The holder of `id` exited.
    pub fn holder_exited(&mut self, id: LeaseId, now: Duration) {
        if self.leases.contains_key(&id) {
            debug!("lease {id}: its holder exited");
            let text = id.to_string();
            self.end(&[id], &Audit::lease_end("holder-exit", &text), None, now);
        }
    }

    /// The baseline a `set` request names (the limit kept from the baseline if none given).
    pub fn custom_baseline(&self, policy: &PolicyRequest) -> Result<AdminBaseline, DaemonError> {
        let keep = self.baseline().policy.limit;
        Ok(AdminBaseline {
            name: "custom".into(),
            policy: Policy::from_options(policy.mode, policy.ratio, policy.kbytes, keep)?,
            swappiness: None,
            forced: false,
        })
    }

    /// The baseline an `apply` request names.
    pub fn profile_baseline(&self, name: &str) -> Result<AdminBaseline, DaemonError> {
        let profile = self
            .config
            .profile(name)
            .ok_or_else(|| DaemonError::NoProfile {
                name: name.to_string(),
                known: self
                    .config
                    .profiles
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok(AdminBaseline {
            name: profile.name.clone(),
            policy: profile.policy(self.boot.limit),
            swappiness: profile.swappiness,
            forced: false,
        })
    }

    /// `set` and `apply`: the lockout guard judges the new baseline itself (whatever leases
    /// hold now, it is what the node falls back to), then it is journaled and written.
    pub fn change_baseline(
        &mut self,
        actor: Actor<'_>,
        mut new: AdminBaseline,
        force: bool,
        op: &str,
        now: Duration,
    ) -> Result<BaselineChanged, DaemonError> {
        if !actor.peer.is_root() {
            return Err(Denial::RootOnly("change the baseline").into());
        }
        self.check_drift(now);
        let node = self.kernel.node()?;
        let margin = self.config.daemon.lockout_margin;
        if let Some(risk) = change::guard(&node, &new.policy, margin, force)? {
            warn!(
                "lockout guard overridden with force by uid {}: {risk}",
                actor.peer.uid
            );
            new.forced = true;
        }
        let follows_config = !new.forced
            && self.config.daemon.baseline.as_deref() == Some(new.name.as_str())
            && self
                .config
                .baseline_profile()
                .map(|p| (p.policy(self.boot.limit), p.swappiness))
                == Some((new.policy, new.swappiness));
        let previous = std::mem::replace(
            &mut self.admin_baseline,
            if follows_config { None } else { Some(new) },
        );
        let journal_before = self.journal_error.clone();
        if let Err(e) = self.persist(Some(self.baseline_change())) {
            self.admin_baseline = previous;
            self.journal_error = journal_before;
            return Err(e.into());
        }
        match self.converge(now) {
            Ok((before, after)) => {
                let name = self.baseline().name.to_string();
                let record = Audit {
                    op,
                    actor: Some(actor),
                    lease: None,
                    reason: Some(&name),
                    for_uid: None,
                };
                self.audit(&record, &before, &after);
                Ok(BaselineChanged {
                    baseline: self.baseline_info(),
                    effective: self.effective(),
                    before: KernelPolicy::from(&before),
                    after: KernelPolicy::from(&after),
                })
            }
            Err(e) => {
                self.admin_baseline = previous;
                self.undo(self.baseline_change(), now);
                Err(e)
            }
        }
    }

    /// Notices a change made behind the daemon's back and enforces, adopts or reports it.
    /// Returns what it read when the kernel is as it was (as expected, or drift only warned
    /// about), for the decision that follows to build on. A kernel that differs while a write
    /// of ours is pending is our own unfinished business, not drift: the retry handles it, and
    /// `adopt` never adopts what a failed write left.
    fn check_drift(&mut self, now: Duration) -> Option<Reading> {
        if self.pending.is_some() {
            return None;
        }
        let reading = match self.read_kernel(None) {
            Ok(reading) => reading,
            Err(e) => {
                debug!("drift check: {e}");
                return None;
            }
        };
        let kernel = reading.node.tunables;
        let expected = kernel.with_policy(&self.in_force);
        if kernel == expected {
            self.warned_drift = None;
            return Some(reading);
        }
        let found = KernelPolicy::from(&kernel);
        let wanted = KernelPolicy::from(&expected);
        let action = match self.config.daemon.drift {
            DriftAction::Enforce => {
                warn!("drift: the kernel holds {found}, expected {wanted}: enforcing");
                match self.converge(now) {
                    Ok((before, after)) => {
                        self.audit(&Audit::system("drift-enforce"), &before, &after);
                        "enforced"
                    }
                    Err(_) => "enforce_failed",
                }
            }
            DriftAction::Warn if self.warned_drift == Some(found) => return Some(reading),
            DriftAction::Warn => {
                warn!("drift: the kernel holds {found}, expected {wanted} (drift = \"warn\": left as is)");
                self.warned_drift = Some(found);
                "warned"
            }
            DriftAction::Adopt => match kernel.policy() {
                Ok(policy) => {
                    warn!("drift: the kernel holds {found}, expected {wanted}: adopting it as the baseline");
                    self.admin_baseline = Some(AdminBaseline {
                        name: "adopted".into(),
                        policy,
                        swappiness: None,
                        forced: false,
                    });
                    let _ = self.persist(Some(self.baseline_change()));
                    if let Ok((before, after)) = self.converge(now) {
                        self.audit(&Audit::system("drift-adopt"), &before, &after);
                    }
                    "adopted"
                }
                Err(_) if self.warned_drift == Some(found) => return Some(reading),
                Err(e) => {
                    warn!("drift: the kernel holds {found}, which cannot be adopted ({e}); left as is");
                    self.warned_drift = Some(found);
                    "ignored"
                }
            },
        };
        self.drift_events += 1;
        self.last_drift = Some(DriftEvent {
            found,
            expected: wanted,
            action: action.into(),
            at: unix_now(),
        });
        // Warned or ignored: the kernel is as read. Enforced or adopted: read it again.
        matches!(action, "warned" | "ignored").then_some(reading)
    }

    /// The next time [`Engine::on_time`] must run (CLOCK_BOOTTIME).
    pub fn next_deadline(&self) -> Option<Duration> {
        [
            self.expiries.first().map(|(at, _)| *at),
            self.retry_at,
            self.hold.as_ref().map(|h| h.next),
            self.next_drift_check,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Ends expired leases, retries failed writes, looks again at a held policy, and checks
    /// for drift, as each falls due.
    pub fn on_time(&mut self, now: Duration) {
        let expired: Vec<LeaseId> = self
            .expiries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|&(_, id)| id)
            .collect();
        if !expired.is_empty() {
            let joined = join_ids(&expired);
            self.end(&expired, &Audit::lease_end("expire", &joined), None, now);
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            if self.journal_error.is_some() {
                let _ = self.persist(None);
            }
            match self.converge(now) {
                Ok((before, after)) if before != after => {
                    self.audit(&Audit::system("retry"), &before, &after)
                }
                _ => {}
            }
        }
        if self.hold.as_ref().is_some_and(|h| h.next <= now) {
            match self.converge(now) {
                Ok((before, after)) if before != after => {
                    self.audit(&Audit::system("guard-recheck"), &before, &after)
                }
                _ => {}
            }
        }
        if self.next_drift_check.is_some_and(|at| at <= now) {
            self.check_drift(now);
            self.schedule_drift_check(now);
        }
    }

    /// A new configuration (SIGHUP): the configured baseline is judged by the guard like any.
    pub fn reload(&mut self, config: Config, authorizer: Authorizer, now: Duration) {
        self.config = config;
        // A baseline named in the configuration now replaces the policy kept at first start.
        if self.config.daemon.baseline.is_some()
            && self
                .admin_baseline
                .as_ref()
                .is_some_and(|b| b.name == FOUND)
        {
            self.admin_baseline = None;
        }
        self.authorizer = authorizer;
        self.schedule_drift_check(now);
        info!("configuration reloaded from {}", self.config.path.display());
        let _ = self.persist(Some(self.baseline_change()));
        if let Ok((before, after)) = self.converge(now) {
            self.audit(&Audit::system("reload"), &before, &after);
        }
    }

    /// Ends every lease and leaves the baseline in force (SIGTERM).
    pub fn shutdown(&mut self, now: Duration) {
        let ids: Vec<LeaseId> = self.leases.keys().copied().collect();
        for id in &ids {
            self.remove(id);
        }
        let joined = join_ids(&ids);
        let _ = self.persist(None);
        let record = Audit::lease_end("stop", if ids.is_empty() { "-" } else { &joined });
        match self.converge(now) {
            Ok((before, after)) => self.audit(&record, &before, &after),
            Err(e) => error!("on stop, the baseline could not be put back: {e}"),
        }
    }

    fn pending_write(&self, now: Duration) -> Option<PendingWrite> {
        self.pending.as_ref().map(|p| PendingWrite {
            target: p.target,
            swappiness: p.swappiness,
            attempts: p.attempts,
            last_error: p.last_error.clone(),
            since: p.since,
            next_attempt_ms: self
                .retry_at
                .map_or(0, |at| at.saturating_sub(now).as_millis() as u64),
        })
    }

    /// The daemon's view, for `status`; the daemon looks for drift first.
    pub fn status(&mut self, now: Duration, clients: usize) -> Result<DaemonStatus, DaemonError> {
        let kernel = match self.check_drift(now) {
            Some(reading) => reading.node.tunables,
            None => {
                let mut tunables = self.ordering_node().tunables;
                self.kernel.read_knobs(&POLICY_KNOBS, &mut tunables)?;
                tunables
            }
        };
        Ok(DaemonStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            baseline: self.baseline_info(),
            effective: self.effective(),
            in_force: self.in_force,
            kernel_mode: kernel.overcommit_memory,
            kernel_ratio: kernel.overcommit_ratio,
            kernel_kbytes: kernel.overcommit_kbytes,
            leases: self.leases.len(),
            drift: match self.config.daemon.drift {
                DriftAction::Enforce => "enforce",
                DriftAction::Warn => "warn",
                DriftAction::Adopt => "adopt",
            }
            .into(),
            clients,
            pending_write: self.pending_write(now),
            held: self.hold.as_ref().map(|h| GuardHold {
                wanted: h.wanted,
                holding: h.holding,
                reason: h.reason.clone(),
                since: h.since,
            }),
            drift_events: self.drift_events,
            last_drift: self.last_drift.clone(),
            journal_error: self.journal_error.clone(),
            found: Some(KernelPolicy::from(
                &self.ordering_node().tunables.with_policy(&self.boot),
            )),
            found_at_start: self.found_at_start.clone(),
        })
    }

    pub fn leases(&self) -> LeaseList {
        let mut leases: Vec<&Lease> = self.leases.values().map(|l| l.as_ref()).collect();
        leases.sort_by_key(|l| (l.granted_at, l.id));
        let leases = leases.into_iter().map(lease_info).collect();
        LeaseList { leases }
    }

    pub fn profiles(&self) -> ProfileList {
        ProfileList {
            baseline: Some(self.baseline().name.to_string()),
            profiles: self
                .config
                .profiles
                .values()
                .map(ProfileInfo::from)
                .collect(),
        }
    }

    /// One line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let mut line = format!(
            "effective {}; baseline {}; {} lease(s)",
            self.effective(),
            self.baseline().name,
            self.leases.len()
        );
        if let Some(hold) = &self.hold {
            line.push_str(&format!("; guard holds {}", hold.holding));
        }
        if let Some(p) = &self.pending {
            line.push_str(&format!("; write pending ({} attempts)", p.attempts));
        }
        line
    }
}

/// Whether systemd listens for status updates (NOTIFY_SOCKET, looked at once).
fn under_systemd() -> bool {
    static NOTIFY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NOTIFY.get_or_init(|| std::env::var_os("NOTIFY_SOCKET").is_some())
}

/// Ids for an audit record, comma-separated.
fn join_ids(ids: &[LeaseId]) -> String {
    ids.iter()
        .map(LeaseId::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn lease_info(lease: &Lease) -> LeaseInfo {
    LeaseInfo {
        id: lease.id.to_string(),
        owner_uid: lease.owner_uid,
        owner: lease.owner.clone(),
        requester_uid: lease.requester_uid,
        requester_pid: lease.requester_pid,
        requester_comm: lease.requester_comm.clone(),
        policy: lease.policy,
        holder_pid: lease.holder.map(|h| h.pid),
        tag: lease.tag.clone(),
        reason: lease.reason.clone(),
        granted_at: lease.granted_at,
        expires_at: lease.expires_at,
    }
}

#[cfg(test)]
mod tests;
