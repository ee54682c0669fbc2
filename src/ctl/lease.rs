//! Lease commands: `lease` and `release` (for prolog/epilog scripts), and `leases`. (`run`,
//! which can hold a lease for the life of a command, is in run.rs.)

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::cli::{LeaseArgs, LeaseOptions};
use crate::client;
use crate::model::{Mode, Policy};
use crate::output::{paint, DIM, HEADING};
use crate::protocol::{
    LeaseGranted, LeaseInfo, LeaseList, LeaseRequest, PolicyRequest, Released, Request,
};
use crate::slurm::TimeLimit;

use super::{print_json, print_text, CtlError, Globals};

/// The lease request for `options`; a ratio or kbytes for a mode that has no commit limit is
/// refused here (the daemon would keep the baseline's limit, so the flag would do nothing).
pub(super) fn lease_request(options: &LeaseOptions, hold: bool) -> Result<Request, CtlError> {
    let mode = options.policy.mode.unwrap_or(Mode::Always);
    let flag = match (options.policy.ratio, options.policy.kbytes) {
        (Some(_), _) => Some("--ratio"),
        (None, Some(_)) => Some("--kbytes"),
        (None, None) => None,
    };
    if let (Some(flag), true) = (flag, mode != Mode::Never) {
        return Err(CtlError::Usage(format!(
            "{flag} has no effect on a lease for mode {mode}: only mode never has a commit limit (a {mode} lease keeps the baseline's); give --mode never with it, or leave it out"
        )));
    }
    Ok(Request::Lease(LeaseRequest {
        policy: PolicyRequest {
            mode,
            ratio: options.policy.ratio.map(i64::from),
            kbytes: options.policy.kbytes,
        },
        ttl_secs: options.ttl.map(|d| d.as_secs()),
        tag: options.tag.clone(),
        reason: options.reason.clone(),
        hold,
        for_uid: None,
        clamp_ttl: false,
    }))
}

pub(super) fn time_left(expires_at: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let left = std::time::Duration::from_secs(expires_at.saturating_sub(now));
    humantime::format_duration(left).to_string()
}

/// A lease in `--json` output (docs/json.md).
#[derive(Debug, Serialize)]
pub(super) struct LeaseView<'a> {
    id: &'a str,
    owner_uid: u32,
    owner: &'a str,
    /// The uid that asked for it when not the owner (root, on behalf of a job's user).
    requester_uid: Option<u32>,
    requester_pid: i32,
    requester_comm: &'a str,
    /// The lease's own policy (what it asked for).
    policy: Policy,
    holder_pid: Option<i32>,
    tag: Option<&'a str>,
    reason: Option<&'a str>,
    granted_at_unix_secs: u64,
    expires_at_unix_secs: u64,
    ttl_secs: u64,
}

impl<'a> From<&'a LeaseInfo> for LeaseView<'a> {
    fn from(l: &'a LeaseInfo) -> Self {
        LeaseView {
            id: &l.id,
            owner_uid: l.owner_uid,
            owner: &l.owner,
            requester_uid: l.requester_uid,
            requester_pid: l.requester_pid,
            requester_comm: &l.requester_comm,
            policy: l.policy,
            holder_pid: l.holder_pid,
            tag: l.tag.as_deref(),
            reason: l.reason.as_deref(),
            granted_at_unix_secs: l.granted_at,
            expires_at_unix_secs: l.expires_at,
            ttl_secs: l.expires_at.saturating_sub(l.granted_at),
        }
    }
}

/// `lease --json` and `run --json`'s record: the lease and what is in force on the node.
#[derive(Debug, Serialize)]
struct Grant<'a> {
    lease: LeaseView<'a>,
    /// The policy in force on the node now: the most permissive of the baseline and every
    /// live lease. A lease is node-wide: every process on the node runs under it.
    effective: Policy,
}

impl<'a> From<&'a LeaseGranted> for Grant<'a> {
    fn from(g: &'a LeaseGranted) -> Self {
        Grant {
            lease: LeaseView::from(&g.lease),
            effective: g.effective,
        }
    }
}

/// `lease [--ttl D | --ttl-slurm TIME] [--for-uid UID] [...]`: prints the lease id (for
/// `release`).
pub fn lease(globals: &Globals, args: &LeaseArgs) -> Result<u8, CtlError> {
    let mut request = lease_request(&args.lease, false)?;
    if let Request::Lease(lease) = &mut request {
        lease.for_uid = args.for_uid;
        if let Some(limit) = args.ttl_slurm {
            lease.clamp_ttl = true;
            lease.ttl_secs = match limit {
                TimeLimit::Limit(limit) => {
                    Some(limit.saturating_add(args.ttl_grace).as_secs().max(1))
                }
                TimeLimit::Unlimited => None,
            };
        }
    }
    let granted: LeaseGranted = client::call(&globals.socket, &request)?;
    if globals.json {
        print_json(&Grant::from(&granted))?;
    } else {
        let lease = &granted.lease;
        println!("{}", lease.id);
        let in_force = if granted.effective == lease.policy {
            "in force on the whole node".to_string()
        } else {
            format!("in force on the node: {}", granted.effective)
        };
        eprintln!(
            "overcommitctl: lease {} granted: {} for {} ({}); {in_force}",
            lease.id,
            lease.policy,
            time_left(lease.expires_at),
            lease
                .tag
                .as_deref()
                .map_or("no tag".to_string(), |t| format!("tag {t}")),
        );
    }
    Ok(0)
}

/// `release ID | --tag TAG`.
pub fn release(globals: &Globals, id: Option<String>, tag: Option<String>) -> Result<u8, CtlError> {
    let released: Released = client::call(&globals.socket, &Request::Release { id, tag })?;
    if globals.json {
        print_json(&released)?;
    } else {
        print_text(&format!(
            "released {}; in force now: {}\n",
            released.released.join(", "),
            released.effective
        ))?;
    }
    Ok(0)
}

/// `leases`.
pub fn leases(globals: &Globals) -> Result<u8, CtlError> {
    let list: LeaseList = client::call(&globals.socket, &Request::Leases)?;
    if globals.json {
        #[derive(Serialize)]
        struct Leases<'a> {
            leases: Vec<LeaseView<'a>>,
        }
        print_json(&Leases {
            leases: list.leases.iter().map(LeaseView::from).collect(),
        })?;
        return Ok(0);
    }
    if list.leases.is_empty() {
        print_text("no live leases\n")?;
        return Ok(0);
    }
    let rows: Vec<[String; 7]> = list.leases.iter().map(row).collect();
    let headers = [
        "ID", "OWNER", "HOLDER", "POLICY", "ENDS IN", "TAG", "REASON",
    ];
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 7]| {
        let mut out = String::new();
        for (cell, width) in cells.iter().zip(&widths) {
            out.push_str(&format!("{cell:<width$}  "));
        }
        out.trim_end().to_string() + "\n"
    };
    let mut text = paint(HEADING, line(headers).trim_end()) + "\n";
    for r in &rows {
        text.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6]]));
    }
    text.push_str(&paint(DIM, format!("{} lease(s)\n", rows.len())));
    print_text(&text)?;
    Ok(0)
}

/// One table row; every string that came from a peer or a process is escaped.
fn row(lease: &LeaseInfo) -> [String; 7] {
    use crate::protocol::escape;
    [
        escape(&lease.id),
        match lease.requester_uid {
            Some(by) => format!("{} ({}) by uid {by}", escape(&lease.owner), lease.owner_uid),
            None => format!("{} ({})", escape(&lease.owner), lease.owner_uid),
        },
        lease.holder_pid.map_or("-".into(), |pid| {
            format!("{pid} ({})", escape(&lease.requester_comm))
        }),
        lease.policy.to_string(),
        time_left(lease.expires_at),
        lease.tag.as_deref().map_or_else(|| "-".into(), escape),
        lease.reason.as_deref().map_or_else(|| "-".into(), escape),
    ]
}
