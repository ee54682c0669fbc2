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

/// Logs one audit record. The message is put together piece by piece: an audit record comes
/// with every change, and `format!` machinery for its fifteen fields cost about as much as the
/// rest of a grant's work in the daemon (docs/performance.md).
pub fn record(audit: &Audit<'_>, before: &Tunables, after: &Tunables, leases: usize) {
    let (uid, user, pid, comm) = match &audit.actor {
        Some(actor) => (
            OrDash(Some(i64::from(actor.peer.uid))),
            actor.user,
            OrDash(Some(i64::from(actor.peer.pid))),
            actor.comm,
        ),
        None => (OrDash(None), "-", OrDash(None), "overcommitd"),
    };
    let lease = audit.lease.unwrap_or("-");
    let reason = audit.reason.unwrap_or("");
    let for_uid = OrDash(audit.for_uid.map(i64::from));
    let before = KernelPolicy::from(before);
    let after = KernelPolicy::from(after);
    let mut message = String::with_capacity(256);
    message.push_str("audit: op=");
    push_escaped(&mut message, audit.op);
    message.push_str(" uid=");
    uid.push_to(&mut message);
    message.push_str(" user=\"");
    push_escaped(&mut message, user);
    message.push_str("\" pid=");
    pid.push_to(&mut message);
    message.push_str(" comm=\"");
    push_escaped(&mut message, comm);
    message.push_str("\" lease=");
    push_escaped(&mut message, lease);
    message.push_str(" for_uid=");
    for_uid.push_to(&mut message);
    message.push_str(" reason=\"");
    push_escaped(&mut message, reason);
    message.push_str("\" before=\"");
    push_policy(&mut message, &before);
    message.push_str("\" after=\"");
    push_policy(&mut message, &after);
    message.push_str("\" leases=");
    push_number(&mut message, leases as i128);
    info!(
        target: AUDIT,
        op = audit.op,
        uid:% = uid,
        user = user,
        pid:% = pid,
        comm = comm,
        lease = lease,
        for_uid:% = for_uid,
        reason = reason,
        before:% = before,
        after:% = after,
        leases = leases;
        "{message}"
    );
}

/// A uid or pid, or `-` for the daemon's own changes.
struct OrDash(Option<i64>);

impl OrDash {
    fn push_to(&self, out: &mut String) {
        match self.0 {
            Some(id) => push_number(out, i128::from(id)),
            None => out.push('-'),
        }
    }
}

impl std::fmt::Display for OrDash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::new();
        self.push_to(&mut text);
        f.write_str(&text)
    }
}

/// Decimal digits, without `format!`.
fn push_number(out: &mut String, number: i128) {
    let mut digits = [0u8; 40];
    let mut at = digits.len();
    let mut rest = number.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if number < 0 {
        out.push('-');
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// What [`KernelPolicy`]'s `Display` says: `heuristic (0), ratio 50, kbytes 0`.
fn push_policy(out: &mut String, policy: &KernelPolicy) {
    out.push_str(policy.mode.name());
    out.push_str(" (");
    push_number(out, i128::from(policy.mode.number()));
    out.push_str("), ratio ");
    push_number(out, i128::from(policy.ratio));
    out.push_str(", kbytes ");
    push_number(out, i128::from(policy.kbytes));
}

/// Peer-derived text, escaped as [`escape`] does.
fn push_escaped(out: &mut String, text: &str) {
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'\\' && b != b'"';
    if text.bytes().all(plain) {
        out.push_str(text);
    } else {
        out.push_str(&escape(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_says_what_display_would() {
        for n in [
            0i128,
            7,
            -50,
            100,
            i128::from(u64::MAX),
            i128::from(i64::MIN),
        ] {
            let mut text = String::new();
            push_number(&mut text, n);
            assert_eq!(text, n.to_string());
        }
        let policy = KernelPolicy {
            mode: crate::model::Mode::Never,
            ratio: -3,
            kbytes: u64::MAX,
        };
        let mut text = String::new();
        push_policy(&mut text, &policy);
        assert_eq!(text, policy.to_string());
        let mut text = String::new();
        push_escaped(&mut text, "a\n<3>\"x\"");
        assert_eq!(text, escape("a\n<3>\"x\""));
        assert_eq!(OrDash(None).to_string(), "-");
        assert_eq!(OrDash(Some(1000)).to_string(), "1000");
    }
}
