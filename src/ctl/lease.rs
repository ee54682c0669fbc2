//! Lease commands: `run` (a lease held by itself for the life of a command), `lease` and
//! `release` (for prolog/epilog scripts), and `leases`.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;

use crate::cli::LeaseOptions;
use crate::client;
use crate::model::Mode;
use crate::output::{paint, DIM, HEADING};
use crate::protocol::{
    LeaseGranted, LeaseInfo, LeaseList, LeaseRequest, PolicyRequest, Released, Request,
};

use super::{print_json, print_text, CtlError, Globals};

fn lease_request(options: &LeaseOptions, hold: bool) -> Request {
    Request::Lease(LeaseRequest {
        policy: PolicyRequest {
            mode: options.policy.mode.unwrap_or(Mode::Always),
            ratio: options.policy.ratio.map(i64::from),
            kbytes: options.policy.kbytes,
        },
        ttl_secs: options.ttl.map(|d| d.as_secs().max(1)),
        tag: options.tag.clone(),
        reason: options.reason.clone(),
        hold,
    })
}

fn time_left(expires_at: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let left = std::time::Duration::from_secs(expires_at.saturating_sub(now));
    humantime::format_duration(left).to_string()
}

/// `run [lease options] -- CMD...`: takes a lease held by this process, runs CMD, forwards
/// the signals sent to us, releases, and exits with CMD's status.
pub fn run(globals: &Globals, options: &LeaseOptions, command: &[String]) -> Result<u8, CtlError> {
    let granted: LeaseGranted = client::call(&globals.socket, &lease_request(options, true))?;
    let lease = &granted.lease;
    // stdout belongs to the command: the grant goes to stderr, as one JSON line with --json.
    if globals.json {
        eprintln!("{}", serde_json::to_string(&granted)?);
    } else {
        eprintln!(
            "overcommitctl: running under {} (lease {}, ends with the command or in {})",
            granted.effective,
            lease.id,
            time_left(lease.expires_at)
        );
    }

    // Signals come through a signalfd; the child gets an unblocked mask back.
    let mut signals = SigSet::empty();
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        signals.add(signal);
    }
    signals.thread_block().map_err(std::io::Error::from)?;
    let signal_fd = SignalFd::new(&signals).map_err(std::io::Error::from)?;
    let mut child_command = Command::new(&command[0]);
    child_command.args(&command[1..]);
    // SAFETY: only async-signal-safe calls between fork and exec (sigprocmask).
    unsafe {
        child_command.pre_exec(move || {
            signals.thread_unblock().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = match child_command.spawn() {
        Ok(child) => child,
        Err(source) => {
            release_quietly(globals, &lease.id);
            return Err(CtlError::Spawn {
                command: command[0].clone(),
                source,
            });
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        match signal_fd.read_signal() {
            Ok(Some(info)) => {
                // A signal from the terminal reached the child's process group already;
                // one sent to us by a process (kill, a scheduler) is passed on.
                let from_process =
                    info.ssi_code == libc::SI_USER || info.ssi_code == libc::SI_QUEUE;
                if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                    if signal != Signal::SIGCHLD && from_process {
                        let _ = kill(pid, signal);
                    }
                }
            }
            Ok(None) => {}
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
    };
    release_quietly(globals, &lease.id);
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        _ => 1,
    })
}

/// Releases a lease this process holds. Failure is harmless: the daemon ends the lease when
/// this process exits anyway.
fn release_quietly(globals: &Globals, id: &str) {
    let request = Request::Release {
        id: Some(id.to_string()),
        tag: None,
    };
    if let Err(e) = client::call::<Released>(&globals.socket, &request) {
        eprintln!("overcommitctl: note: could not release lease {id} ({e}); it ends when this process exits");
    }
}

/// `lease --ttl D [...]`: prints the lease id (for `release`).
pub fn lease(globals: &Globals, options: &LeaseOptions) -> Result<u8, CtlError> {
    if options.ttl.is_none() {
        return Err(CtlError::Usage(
            "`lease` needs --ttl: a lease not bound to a process ends only by its TTL or `release`"
                .into(),
        ));
    }
    let granted: LeaseGranted = client::call(&globals.socket, &lease_request(options, false))?;
    if globals.json {
        print_json(&granted)?;
    } else {
        println!("{}", granted.lease.id);
        eprintln!(
            "overcommitctl: lease {} granted: {} in force for {}",
            granted.lease.id,
            granted.effective,
            time_left(granted.lease.expires_at)
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
        print_json(&list)?;
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

fn row(lease: &LeaseInfo) -> [String; 7] {
    [
        lease.id.clone(),
        format!("{} ({})", lease.owner, lease.owner_uid),
        lease.holder_pid.map_or("-".into(), |pid| {
            format!("{pid} ({})", lease.requester_comm)
        }),
        lease.policy.to_string(),
        time_left(lease.expires_at),
        lease.tag.clone().unwrap_or_else(|| "-".into()),
        lease.reason.clone().unwrap_or_else(|| "-".into()),
    ]
}
