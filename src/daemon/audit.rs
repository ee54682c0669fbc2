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
}

impl<'a> Audit<'a> {
    /// A change the daemon made on its own (start, reload, drift, retry).
    pub fn system(op: &'a str) -> Audit<'a> {
        Audit {
            op,
            actor: None,
            lease: None,
            reason: None,
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
            actor.user,
            actor.peer.pid.to_string(),
            actor.comm,
        ),
        None => ("-".into(), "-", "-".into(), "overcommitd"),
    };
    let lease = audit.lease.unwrap_or("-");
    let reason = audit.reason.unwrap_or("");
    let before = KernelPolicy::from(before).to_string();
    let after = KernelPolicy::from(after).to_string();
    info!(
        target: AUDIT,
        op = audit.op,
        uid = uid.as_str(),
        user = user,
        pid = pid.as_str(),
        comm = comm,
        lease = lease,
        reason = reason,
        before = before.as_str(),
        after = after.as_str(),
        leases = leases;
        "audit: op={} uid={uid} user=\"{}\" pid={pid} comm=\"{}\" lease={} reason=\"{}\" before=\"{before}\" after=\"{after}\" leases={leases}",
        Escaped(audit.op),
        Escaped(user),
        Escaped(comm),
        Escaped(lease),
        Escaped(reason),
    );
}

/// Peer-derived text in the message, escaped as [`escape`] does, as it is formatted.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'\\' && b != b'"';
        if self.0.bytes().all(plain) {
            f.write_str(self.0)
        } else {
            f.write_str(&escape(self.0))
        }
    }
}
