//! `overcommitctl`: each subcommand in its own module; this one dispatches and maps errors to
//! the exit codes of the contract (0 ok, 1 refused/drift/denied, 2 bad input, 3 unreachable).

mod admin;
mod check;
mod lease;
mod status;

use std::io::Write;

use crate::cli::{CtlCli, CtlCommand, GlobalArgs, PolicyArgs, StatusFormat};
use crate::client::ClientError;
use crate::config::ConfigError;
use crate::kernel::{KernelError, ProcRoot};
use crate::model::{LimitError, LockoutRisk};
use crate::protocol::PolicyRequest;
use crate::sysctl_d::SysctlSources;

pub use check::CheckReport;
pub use status::StatusReport;

/// The global options every command sees.
pub type Globals = GlobalArgs;

impl GlobalArgs {
    pub fn proc_root(&self) -> ProcRoot {
        ProcRoot::new(&self.proc_root)
    }
}

/// Why a command could not do its job. Each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Array(#[from] crate::dtype::ArrayError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no profile `{name}` (known: {known})")]
    NoProfile { name: String, known: String },
    #[error("the configuration names no baseline and overcommitd is not running: name a profile to verify against")]
    NothingToVerify,
    #[error(transparent)]
    Unsafe(#[from] LockoutRisk),
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("I/O error: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Client(e) => e.exit_code(),
            CtlError::Unsafe(_) => 1,
            CtlError::Spawn { .. } => 127,
            CtlError::Kernel(_)
            | CtlError::Array(_)
            | CtlError::Limit(_)
            | CtlError::Config(_)
            | CtlError::NoProfile { .. }
            | CtlError::NothingToVerify
            | CtlError::Usage(_)
            | CtlError::Output(_)
            | CtlError::Json(_) => 2,
        }
    }
}

fn policy_request(mode: crate::model::Mode, args: &PolicyArgs) -> PolicyRequest {
    PolicyRequest {
        mode,
        ratio: args.ratio.map(i64::from),
        kbytes: args.kbytes,
    }
}

/// Runs one `overcommitctl` invocation; returns the process exit code.
pub fn run(cli: CtlCli) -> Result<u8, CtlError> {
    let globals = &cli.global;
    let json = globals.json;
    match cli.command {
        CtlCommand::Status(args) => {
            let sysctl = SysctlSources::under(&globals.sysctl_root);
            let report = StatusReport::gather(&globals.proc_root(), &sysctl, &globals.socket)?;
            let format = if json {
                StatusFormat::Json
            } else {
                args.format
            };
            match format {
                StatusFormat::Json => print_json(&report)?,
                StatusFormat::Text => print_text(&report.render())?,
                StatusFormat::Prometheus => print_text(&report.prometheus())?,
            }
            Ok(0)
        }
        CtlCommand::Check(args) => {
            let report = CheckReport::gather(&globals.proc_root(), &args)?;
            if json {
                print_json(&report)?;
            } else {
                print_text(&report.render())?;
            }
            Ok(report.exit_code())
        }
        CtlCommand::Set(args) => {
            let policy = PolicyArgs {
                mode: Some(args.mode),
                ratio: args.ratio,
                kbytes: args.kbytes,
            };
            admin::set(globals, policy_request(args.mode, &policy), args.force)
        }
        CtlCommand::Apply(args) if args.check => admin::apply_check(globals, &args.profile),
        CtlCommand::Apply(args) => admin::apply(globals, &args.profile, args.force),
        CtlCommand::Verify(args) => admin::verify(globals, args.profile.as_deref()),
        CtlCommand::Profiles => admin::profiles(globals),
        CtlCommand::Run(args) => lease::run(globals, &args.lease, &args.command),
        CtlCommand::Lease(args) => lease::lease(globals, &args.lease),
        CtlCommand::Release(args) => lease::release(globals, args.id, args.tag),
        CtlCommand::Leases => lease::leases(globals),
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CtlError> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    quiet_on_closed_pipe(std::io::stdout().lock().write_all(text.as_bytes()))
}

fn print_text(text: &str) -> Result<(), CtlError> {
    let mut out = anstream::stdout().lock();
    quiet_on_closed_pipe(out.write_all(text.as_bytes()).and_then(|()| out.flush()))
}

/// `overcommitctl status | head` is not an error.
fn quiet_on_closed_pipe(result: std::io::Result<()>) -> Result<(), CtlError> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
