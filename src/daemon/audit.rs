//! One audit record per change: who (uid, user, pid, command), what (operation, lease), why,
//! and the kernel's values before and after. Sent through `log` with structured fields (the
//! journald logger turns them into journal fields); every peer-derived string is escaped in
//! the message text, so a process named "a\n<3>FORGED" cannot forge a second record.

use log::info;

use crate::model::Tunables;
use crate::protocol::{escape, KernelPolicy};

use super::engine::Actor;

/// The log target of records that journald should file at priority 2 (critical).
pub const CRITICAL: &str = "overcommitd::critical";
/// The log target of audit records.
pub const AUDIT: &str = "overcommitd::audit";

/// What a change was and who asked for it.
pub struct Audit<'a> {
    pub op: &'a str,
    pub actor: Option<Actor<'a>>,
    pub lease: Option<&'a str>,
    pub reason: Option<&'a str>,
    /// The user a lease was granted to on root's request (`for_uid`).
    pub for_uid: Option<u32>,
}

impl<'a> Audit<'a> {
    /// A change the daemon made on its own (start, reload, drift, retry).
    pub fn system(op: &'a str) -> Audit<'a> {
        Audit {
            op,
            actor: None,
            lease: None,
            reason: None,
            for_uid: None,
        }
    }

    /// Leases the daemon ended on its own (TTL, holder exit, stop).
    pub fn lease_end(op: &'a str, lease: &'a str) -> Audit<'a> {
        Audit {
            lease: Some(lease),
            ..Audit::system(op)
        }
    }
}

/// A user's name for people, or the uid when it has none.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// Logs one audit record.
pub fn record(audit: &Audit<'_>, before: &Tunables, after: &Tunables, leases: usize) {
    let (uid, user, pid, comm) = match &audit.actor {
        Some(actor) => (
            actor.peer.uid.to_string(),
            user_name(actor.peer.uid),
            actor.peer.pid.to_string(),
            actor.comm.to_string(),
        ),
        None => ("-".into(), "-".into(), "-".into(), "overcommitd".into()),
    };
    let lease = audit.lease.unwrap_or("-");
    let reason = audit.reason.unwrap_or("");
    let for_uid = audit.for_uid.map_or("-".to_string(), |u| u.to_string());
    let before = KernelPolicy::from(before).to_string();
    let after = KernelPolicy::from(after).to_string();
    info!(
        target: AUDIT,
        op = audit.op,
        uid = uid.as_str(),
        user = user.as_str(),
        pid = pid.as_str(),
        comm = comm.as_str(),
        lease = lease,
        for_uid = for_uid.as_str(),
        reason = reason,
        before = before.as_str(),
        after = after.as_str(),
        leases = leases;
        "audit: op={} uid={uid} user=\"{}\" pid={pid} comm=\"{}\" lease={} for_uid={for_uid} reason=\"{}\" before=\"{before}\" after=\"{after}\" leases={leases}",
        escape(audit.op),
        escape(&user),
        escape(&comm),
        escape(lease),
        escape(reason),
    );
}
