//! The daemon's state and what it does with requests: one `match` over the request, one
//! function from errors to replies, and one path ([`Server::commit`]) by which the kernel is
//! changed: journal first, then write and read back, then an audit line.

use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{error, info, warn};

use crate::auth::{Authorizer, Denial, LeaseAsk, Peer};
use crate::config::{Config, ConfigError, DriftAction};
use crate::journal::{AdminBaseline, Journal, JournalError, State, JOURNAL_VERSION};
use crate::kernel::{self, KernelError, ProcRoot};
use crate::lease::{effective_policy, new_lease_id, Lease};
use crate::model::{Knob, Limit, LimitError, LockoutRisk, Node, Policy, Tunables};
use crate::protocol::{
    BaselineChanged, BaselineInfo, DaemonStatus, ErrorCode, KernelPolicy, LeaseGranted, LeaseInfo,
    LeaseList, LeaseRequest, PolicyRequest, ProfileList, Released, Reply, Request, MAX_REASON,
    MAX_TAG,
};

use super::peer::{self, boottime, HolderError};

/// Everything that can go wrong with a request or a change; [`error_reply`] maps each to a code.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("tag is longer than {MAX_TAG} characters or holds control characters")]
    BadTag,
    #[error("reason is longer than {MAX_REASON} characters or holds control characters")]
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
    NotOwner { id: String, owner: u32 },
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
    Holder(#[from] HolderError),
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
}

/// The one mapping from internal errors to protocol replies.
pub fn error_reply(error: &DaemonError) -> Reply {
    Reply::failure(error.code(), error.to_string())
}

/// Where the daemon's files are.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub proc_root: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
}

/// The connection a request came in on.
pub struct ClientInfo<'a> {
    pub peer: &'a Peer,
    /// SO_PEERPIDFD, when the kernel has it.
    pub pidfd: Option<&'a OwnedFd>,
    pub socket: BorrowedFd<'a>,
}

/// What a handled request produces: the reply, and a holder to watch if a lease was bound.
pub struct Handled {
    pub reply: Reply,
    pub watch: Option<(String, OwnedFd)>,
}

/// The resolved baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Baseline {
    name: String,
    policy: Policy,
    swappiness: Option<u64>,
    from_config: bool,
}

/// Who asked for a change, for the audit line.
struct Audit<'a> {
    op: &'a str,
    peer: Option<&'a Peer>,
    lease: Option<&'a str>,
    reason: Option<&'a str>,
}

impl<'a> Audit<'a> {
    fn system(op: &'a str) -> Audit<'a> {
        Audit {
            op,
            peer: None,
            lease: None,
            reason: None,
        }
    }
}

/// What the daemon started with: the server, and the holders of re-adopted leases to watch.
pub struct Startup {
    pub server: Server,
    pub watches: Vec<(String, OwnedFd)>,
}

pub struct Server {
    proc_root: ProcRoot,
    config: Config,
    authorizer: Authorizer,
    journal: Journal,
    boot_id: String,
    /// The kernel's values before the daemon's first write in this boot.
    original: Tunables,
    admin_baseline: Option<AdminBaseline>,
    leases: BTreeMap<String, Lease>,
    /// The policy the kernel is meant to hold.
    effective: Policy,
    /// The drifted kernel state already warned about (drift = "warn").
    warned_drift: Option<KernelPolicy>,
    next_drift_check: Option<Duration>,
    watchdog: Option<(Duration, Duration)>,
    /// Connections open now (kept by the event loop, reported by `status`).
    pub clients: usize,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

impl Server {
    /// Loads the config and the journal, re-adopts the leases whose holders still live and whose
    /// TTL has not passed, and puts the resulting policy in force.
    pub fn start(options: &ServerOptions) -> Result<Startup, DaemonError> {
        let config = Config::load(&options.config)?;
        let (authorizer, warnings) = Authorizer::new(&config);
        for warning in warnings {
            warn!("{}: {warning}", options.config.display());
        }
        let journal = Journal::open(&options.state_dir)?;
        let state = match journal.load() {
            Ok(state) => state,
            Err(e @ JournalError::Corrupt { .. }) => {
                let aside = journal.set_aside()?;
                error!("{e}; moved it aside as {aside} and starting from the kernel's values");
                None
            }
            Err(e) => return Err(e.into()),
        };
        // Lease ids need the kernel's random pool. Early in boot it may not be ready yet: wait
        // for it here, before READY, so that no later draw can stall the event loop.
        new_lease_id().map_err(DaemonError::Random)?;
        let proc_root = ProcRoot::new(&options.proc_root);
        let kernel_now = proc_root.read_tunables()?;
        let boot_id = peer::boot_id();
        let now = boottime();

        let mut server = Server {
            proc_root,
            config,
            authorizer,
            journal,
            boot_id: boot_id.clone(),
            original: kernel_now,
            admin_baseline: None,
            leases: BTreeMap::new(),
            effective: Policy {
                mode: kernel_now.overcommit_memory,
                limit: kernel_now.limit_clamped(),
            },
            warned_drift: None,
            next_drift_check: None,
            watchdog: None,
            clients: 0,
        };
        let mut watches = Vec::new();
        match state {
            Some(state) if state.boot_id == boot_id && state.version == JOURNAL_VERSION => {
                server.original = state.original;
                server.admin_baseline = state.admin_baseline;
                for lease in state.leases {
                    if lease.expires <= now {
                        info!(
                            "lease {} ended while the daemon was down: its TTL passed",
                            lease.id
                        );
                        continue;
                    }
                    if let Some(holder) = &lease.holder {
                        match peer::reopen_holder(holder) {
                            Some(pidfd) => watches.push((lease.id.clone(), pidfd)),
                            None => {
                                info!("lease {} ended while the daemon was down: holder pid {} is gone", lease.id, holder.pid);
                                continue;
                            }
                        }
                    }
                    info!(
                        "lease {} re-adopted (owner uid {}, {})",
                        lease.id, lease.owner_uid, lease.policy
                    );
                    server.leases.insert(lease.id.clone(), lease);
                }
            }
            Some(_) => info!("the journal is from another boot; starting from the kernel's values"),
            None => {}
        }
        server.next_drift_check = server.config.daemon.drift_interval.map(|i| now + i);
        server.commit(&Audit::system("start"))?;
        Ok(Startup { server, watches })
    }

    /// Sends WATCHDOG=1 every `interval` (half of WatchdogSec).
    pub fn enable_watchdog(&mut self, interval: Duration) {
        self.watchdog = Some((interval, boottime() + interval));
    }

    fn baseline(&self) -> Baseline {
        if let Some(admin) = &self.admin_baseline {
            return Baseline {
                name: admin.name.clone(),
                policy: admin.policy,
                swappiness: admin.swappiness,
                from_config: false,
            };
        }
        let fallback = self.original.limit_clamped();
        match self.config.baseline_profile() {
            Some(profile) => Baseline {
                name: profile.name.clone(),
                policy: profile.policy(fallback),
                swappiness: profile.swappiness,
                from_config: true,
            },
            None => Baseline {
                name: "found".into(),
                policy: Policy {
                    mode: self.original.overcommit_memory,
                    limit: fallback,
                },
                swappiness: None,
                from_config: true,
            },
        }
    }

    fn baseline_info(&self) -> BaselineInfo {
        let b = self.baseline();
        BaselineInfo {
            name: b.name,
            policy: b.policy,
            swappiness: b.swappiness,
            source: if b.from_config { "config" } else { "admin" }.into(),
        }
    }

    fn state(&self) -> State {
        State {
            version: JOURNAL_VERSION,
            boot_id: self.boot_id.clone(),
            original: self.original,
            admin_baseline: self.admin_baseline.clone(),
            leases: self.leases.values().cloned().collect(),
            effective: self.effective,
        }
    }

    fn target(&self, node: &Node) -> Policy {
        effective_policy(
            node,
            &self.baseline().policy,
            self.leases.values().map(|l| &l.policy),
        )
    }

    /// The one way the kernel is changed: computes the effective policy, journals the intended
    /// state, writes the kernel (reads it back), and logs an audit line. If the write fails,
    /// the kernel's previous values are put back.
    fn commit(&mut self, audit: &Audit<'_>) -> Result<(Tunables, Tunables), DaemonError> {
        let node = self.proc_root.node()?;
        self.effective = self.target(&node);
        self.journal.save(&self.state())?;
        let (before, after) = match self.proc_root.write_policy(&self.effective) {
            Ok(pair) => pair,
            Err(e) => {
                if let Ok(previous) = node.tunables.policy() {
                    if let Err(restore) = self.proc_root.write_policy(&previous) {
                        error!("could not put back {previous} after a failed write: {restore}");
                    }
                }
                return Err(e.into());
            }
        };
        if let Some(swappiness) = self.baseline().swappiness {
            if before.swappiness != swappiness {
                self.proc_root.write_knob(Knob::Swappiness, swappiness)?;
            }
        }
        self.warned_drift = None;
        let who = match audit.peer {
            Some(p) => format!(
                "uid={} user={} pid={} comm={}",
                p.uid,
                user_name(p.uid),
                p.pid,
                kernel::process_comm(p.pid)
            ),
            None => "uid=- pid=- comm=overcommitd".into(),
        };
        info!(
            "audit: op={} {who} lease={} reason={:?} before=\"{}\" after=\"{}\" leases={}",
            audit.op,
            audit.lease.unwrap_or("-"),
            audit.reason.unwrap_or(""),
            KernelPolicy::from(&before),
            KernelPolicy::from(&after),
            self.leases.len()
        );
        // systemctl status shows the policy in force and the lease count.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&self.status_line())]);
        Ok((before, after))
    }

    /// Commits a change made by `apply`, undoing it with `undo` if the commit fails, so that the
    /// journal and the kernel never hold a half-applied change.
    fn transact(
        &mut self,
        audit: &Audit<'_>,
        undo: impl FnOnce(&mut Server),
    ) -> Result<(Tunables, Tunables), DaemonError> {
        match self.commit(audit) {
            Ok(pair) => Ok(pair),
            Err(e) => {
                undo(self);
                if let Ok(node) = self.proc_root.node() {
                    self.effective = self.target(&node);
                }
                if let Err(journal) = self.journal.save(&self.state()) {
                    error!("cannot journal the undone change: {journal}");
                }
                Err(e)
            }
        }
    }

    /// Handles one request from a client.
    pub fn handle(&mut self, client: &ClientInfo<'_>, request: Request) -> Handled {
        let result = match request {
            Request::Status => self.status().map(|s| Handled {
                reply: Reply::success(&s),
                watch: None,
            }),
            Request::Lease(lease) => self.grant(client, lease),
            Request::Release { id, tag } => self.release(client.peer, id, tag),
            Request::Leases => Ok(Handled {
                reply: Reply::success(&LeaseList {
                    leases: self.lease_infos(),
                }),
                watch: None,
            }),
            Request::Set { policy, force } => self.set(client.peer, policy, force),
            Request::Apply { profile, force } => self.apply(client.peer, &profile, force),
            Request::Profiles => Ok(Handled {
                reply: Reply::success(&ProfileList {
                    baseline: Some(self.baseline().name),
                    profiles: self.config.profiles.values().cloned().collect(),
                }),
                watch: None,
            }),
        };
        result.unwrap_or_else(|e| {
            if matches!(
                e.code(),
                ErrorCode::Denied | ErrorCode::Unsafe | ErrorCode::Kernel | ErrorCode::Internal
            ) {
                warn!(
                    "request from uid {} pid {} refused: {e}",
                    client.peer.uid, client.peer.pid
                );
            }
            Handled {
                reply: error_reply(&e),
                watch: None,
            }
        })
    }

    fn status(&mut self) -> Result<DaemonStatus, DaemonError> {
        let kernel = match self.check_drift() {
            Some(kernel) => kernel,
            None => self.proc_root.read_tunables()?,
        };
        Ok(DaemonStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            baseline: self.baseline_info(),
            effective: self.effective,
            kernel_mode: kernel.overcommit_memory,
            kernel_ratio: kernel.overcommit_ratio,
            kernel_kbytes: kernel.overcommit_kbytes,
            leases: self.leases.len(),
            drift: self.config.daemon.drift,
            clients: self.clients,
            found: Some(KernelPolicy::from(&self.original)),
        })
    }

    fn lease_info(lease: &Lease) -> LeaseInfo {
        LeaseInfo {
            id: lease.id.clone(),
            owner_uid: lease.owner_uid,
            owner: user_name(lease.owner_uid),
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

    fn lease_infos(&self) -> Vec<LeaseInfo> {
        let mut leases: Vec<LeaseInfo> = self.leases.values().map(Server::lease_info).collect();
        leases.sort_by_key(|l| (l.granted_at, l.id.clone()));
        leases
    }

    fn grant(
        &mut self,
        client: &ClientInfo<'_>,
        request: LeaseRequest,
    ) -> Result<Handled, DaemonError> {
        let peer = client.peer;
        let limit = Limit::from_options(request.policy.ratio, request.policy.kbytes)?;
        let valid_text = |text: &Option<String>, max: usize| {
            text.as_ref()
                .is_none_or(|t| t.chars().count() <= max && !t.chars().any(char::is_control))
        };
        if !valid_text(&request.tag, MAX_TAG) || request.tag.as_ref().is_some_and(String::is_empty)
        {
            return Err(DaemonError::BadTag);
        }
        if !valid_text(&request.reason, MAX_REASON) {
            return Err(DaemonError::BadReason);
        }
        let ttl = match request.ttl_secs {
            Some(secs) if secs == 0 || secs > 366 * 86400 => return Err(DaemonError::BadTtl),
            Some(secs) => Some(Duration::from_secs(secs)),
            None => None,
        };
        self.check_drift();
        let live = self
            .leases
            .values()
            .filter(|l| l.owner_uid == peer.uid)
            .count();
        let ask = LeaseAsk {
            mode: request.policy.mode,
            limit,
            ttl,
        };
        let ttl = self
            .authorizer
            .lease(peer, &ask, live, self.config.daemon.default_ttl)?;
        let (watch, holder) = if request.hold {
            let (pidfd, holder) = peer::holder(client.socket, peer, client.pidfd)?;
            (Some(pidfd), Some(holder))
        } else {
            (None, None)
        };
        let id = new_lease_id().map_err(DaemonError::Random)?;
        let now = boottime();
        let lease = Lease {
            id: id.clone(),
            owner_uid: peer.uid,
            requester_pid: peer.pid,
            requester_comm: kernel::process_comm(peer.pid),
            policy: Policy {
                mode: request.policy.mode,
                limit: limit.unwrap_or(self.baseline().policy.limit),
            },
            holder,
            tag: request.tag,
            reason: request.reason,
            granted_at: unix_now(),
            expires: now + ttl,
            expires_at: unix_now() + ttl.as_secs(),
        };
        let info = Server::lease_info(&lease);
        self.leases.insert(id.clone(), lease);
        let audit = Audit {
            op: "lease",
            peer: Some(peer),
            lease: Some(&id),
            reason: info.reason.as_deref(),
        };
        self.transact(&audit, |s| {
            s.leases.remove(&id);
        })?;
        Ok(Handled {
            reply: Reply::success(&LeaseGranted {
                lease: info,
                effective: self.effective,
            }),
            watch: watch.map(|fd| (id, fd)),
        })
    }

    fn release(
        &mut self,
        peer: &Peer,
        id: Option<String>,
        tag: Option<String>,
    ) -> Result<Handled, DaemonError> {
        let ids: Vec<String> = match (id, tag) {
            (Some(id), _) => {
                let lease = self
                    .leases
                    .get(&id)
                    .ok_or_else(|| DaemonError::NoLease(id.clone()))?;
                if lease.owner_uid != peer.uid && !peer.is_root() {
                    return Err(DaemonError::NotOwner {
                        id,
                        owner: lease.owner_uid,
                    });
                }
                vec![id]
            }
            (None, Some(tag)) => {
                let ids: Vec<String> = self
                    .leases
                    .values()
                    .filter(|l| {
                        l.tag.as_deref() == Some(tag.as_str())
                            && (l.owner_uid == peer.uid || peer.is_root())
                    })
                    .map(|l| l.id.clone())
                    .collect();
                if ids.is_empty() {
                    return Err(DaemonError::NoTag(tag));
                }
                ids
            }
            (None, None) => return Err(DaemonError::ReleaseWhat),
        };
        self.check_drift();
        let removed: Vec<Lease> = ids.iter().filter_map(|id| self.leases.remove(id)).collect();
        let joined = ids.join(",");
        let audit = Audit {
            op: "release",
            peer: Some(peer),
            lease: Some(&joined),
            reason: None,
        };
        self.transact(&audit, |s| {
            for lease in removed {
                s.leases.insert(lease.id.clone(), lease);
            }
        })?;
        Ok(Handled {
            reply: Reply::success(&Released {
                released: ids,
                effective: self.effective,
            }),
            watch: None,
        })
    }

    /// Ends leases the daemon itself decided to end (holder gone, TTL passed).
    fn end_leases(&mut self, ids: &[String], why: &str) {
        let mut ended = Vec::new();
        for id in ids {
            if self.leases.remove(id).is_some() {
                ended.push(id.as_str());
            }
        }
        if ended.is_empty() {
            return;
        }
        let joined = ended.join(",");
        let audit = Audit {
            op: why,
            peer: None,
            lease: Some(&joined),
            reason: None,
        };
        if let Err(e) = self.commit(&audit) {
            error!("lease(s) {joined} ended ({why}) but the policy could not be written: {e}; retrying at the next check");
        }
    }

    /// The holder of `id` exited.
    pub fn holder_exited(&mut self, id: &str) {
        self.end_leases(&[id.to_string()], "holder-exit");
    }

    pub fn has_lease(&self, id: &str) -> bool {
        self.leases.contains_key(id)
    }

    fn change_baseline(
        &mut self,
        peer: &Peer,
        new: AdminBaseline,
        force: bool,
        op: &str,
    ) -> Result<Handled, DaemonError> {
        if !peer.is_root() {
            return Err(Denial::RootOnly("change the baseline").into());
        }
        let node = self.proc_root.node()?;
        let previous = self.admin_baseline.clone();
        // The configured baseline again: follow the config from now on.
        let follows_config = self.config.daemon.baseline.as_deref() == Some(new.name.as_str())
            && self
                .config
                .baseline_profile()
                .map(|p| (p.policy(self.original.limit_clamped()), p.swappiness))
                == Some((new.policy, new.swappiness));
        self.admin_baseline = if follows_config { None } else { Some(new) };
        let target = self.target(&node);
        if let Some(risk) = node.lockout_risk(&target, self.config.daemon.lockout_margin) {
            if !force {
                self.admin_baseline = previous;
                return Err(risk.into());
            }
            warn!(
                "lockout guard overridden with --force by uid {}: {risk}",
                peer.uid
            );
        }
        let name = self.baseline().name;
        let audit = Audit {
            op,
            peer: Some(peer),
            lease: None,
            reason: Some(&name),
        };
        let (before, after) = self.transact(&audit, |s| s.admin_baseline = previous)?;
        Ok(Handled {
            reply: Reply::success(&BaselineChanged {
                baseline: self.baseline_info(),
                effective: self.effective,
                before: KernelPolicy::from(&before),
                after: KernelPolicy::from(&after),
            }),
            watch: None,
        })
    }

    fn set(
        &mut self,
        peer: &Peer,
        policy: PolicyRequest,
        force: bool,
    ) -> Result<Handled, DaemonError> {
        let limit = Limit::from_options(policy.ratio, policy.kbytes)?
            .unwrap_or(self.baseline().policy.limit);
        let new = AdminBaseline {
            name: "custom".into(),
            policy: Policy {
                mode: policy.mode,
                limit,
            },
            swappiness: None,
        };
        self.check_drift();
        self.change_baseline(peer, new, force, "set")
    }

    fn apply(&mut self, peer: &Peer, name: &str, force: bool) -> Result<Handled, DaemonError> {
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
        let new = AdminBaseline {
            name: profile.name.clone(),
            policy: profile.policy(self.original.limit_clamped()),
            swappiness: profile.swappiness,
        };
        self.check_drift();
        self.change_baseline(peer, new, force, "apply")
    }

    /// Notices a change made behind the daemon's back and enforces, adopts or reports it.
    /// Returns the kernel's tunables when they were read and are as expected.
    pub fn check_drift(&mut self) -> Option<Tunables> {
        let kernel = match self.proc_root.read_tunables() {
            Ok(kernel) => kernel,
            Err(e) => {
                error!("drift check: {e}");
                return None;
            }
        };
        // `with_policy` changes only mode, ratio and kbytes: equal means those are as expected.
        let expected = kernel.with_policy(&self.effective);
        if kernel == expected {
            self.warned_drift = None;
            return Some(kernel);
        }
        let found = KernelPolicy::from(&kernel);
        let wanted = KernelPolicy::from(&expected);
        match self.config.daemon.drift {
            DriftAction::Enforce => {
                warn!("drift: the kernel holds {found}, expected {wanted}: enforcing");
                if let Err(e) = self.commit(&Audit::system("drift-enforce")) {
                    error!("drift: cannot enforce {wanted}: {e}");
                }
            }
            DriftAction::Warn => {
                if self.warned_drift != Some(found) {
                    warn!("drift: the kernel holds {found}, expected {wanted} (drift = \"warn\": left as is)");
                    self.warned_drift = Some(found);
                }
            }
            DriftAction::Adopt => match kernel.policy() {
                Ok(policy) => {
                    warn!("drift: the kernel holds {found}, expected {wanted}: adopting it as the baseline");
                    self.admin_baseline = Some(AdminBaseline {
                        name: "adopted".into(),
                        policy,
                        swappiness: None,
                    });
                    if let Err(e) = self.commit(&Audit::system("drift-adopt")) {
                        error!("drift: cannot adopt {found}: {e}");
                    }
                }
                Err(e) => {
                    if self.warned_drift != Some(found) {
                        warn!("drift: the kernel holds {found}, which cannot be adopted ({e}); left as is");
                        self.warned_drift = Some(found);
                    }
                }
            },
        }
        None
    }

    /// The next time [`Server::on_time`] must run (CLOCK_BOOTTIME).
    pub fn next_deadline(&self) -> Option<Duration> {
        let leases = self.leases.values().map(|l| l.expires).min();
        [
            leases,
            self.next_drift_check,
            self.watchdog.map(|(_, next)| next),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Ends expired leases, checks for drift and pings the watchdog when due.
    pub fn on_time(&mut self, now: Duration) {
        let expired: Vec<String> = self
            .leases
            .values()
            .filter(|l| l.expires <= now)
            .map(|l| l.id.clone())
            .collect();
        self.end_leases(&expired, "expire");
        if let (Some(due), Some(interval)) =
            (self.next_drift_check, self.config.daemon.drift_interval)
        {
            if due <= now {
                self.check_drift();
                self.next_drift_check = Some(now + interval);
            }
        }
        if let Some((interval, due)) = self.watchdog {
            if due <= now {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                self.watchdog = Some((interval, now + interval));
            }
        }
    }

    /// Reloads the configuration (SIGHUP). A bad configuration keeps the old one running.
    pub fn reload(&mut self) {
        match Config::load(&self.config.path) {
            Ok(config) => {
                let (authorizer, warnings) = Authorizer::new(&config);
                for warning in warnings {
                    warn!("{}: {warning}", config.path.display());
                }
                self.config = config;
                self.authorizer = authorizer;
                self.next_drift_check = self.config.daemon.drift_interval.map(|i| boottime() + i);
                info!("configuration reloaded from {}", self.config.path.display());
                if let Err(e) = self.commit(&Audit::system("reload")) {
                    error!("after reload: {e}");
                }
            }
            Err(e) => error!("reload refused, keeping the running configuration: {e}"),
        }
    }

    /// Ends every lease and leaves the baseline in force (SIGTERM).
    pub fn shutdown(&mut self) {
        let ids: Vec<String> = self.leases.keys().cloned().collect();
        self.leases.clear();
        let joined = ids.join(",");
        let audit = Audit {
            op: "stop",
            peer: None,
            lease: Some(if ids.is_empty() { "-" } else { &joined }),
            reason: None,
        };
        if let Err(e) = self.commit(&audit) {
            error!("on stop: {e}");
        }
    }

    /// One line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        format!(
            "effective {}; baseline {}; {} lease(s)",
            self.effective,
            self.baseline().name,
            self.leases.len()
        )
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn journal_path(&self) -> &Path {
        self.journal.path()
    }
}
