//! `overcommitctl`: each subcommand in its own module; this one dispatches and maps errors to
//! the exit codes of the contract (0 ok, 1 refused/drift/denied, 2 bad input, 3 unreachable).

mod check;
mod status;

use std::io::Write;

use crate::cli::{CtlCli, CtlCommand, StatusFormat};
use crate::kernel::{KernelError, ProcRoot};
use crate::sysctl_d::SysctlSources;

pub use check::CheckReport;
pub use status::StatusReport;

/// Why a command could not do its job. Each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Array(#[from] crate::dtype::ArrayError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Kernel(_)
            | CtlError::Array(_)
            | CtlError::Usage(_)
            | CtlError::Json(_)
            | CtlError::Output(_) => 2,
        }
    }
}

/// Runs one `overcommitctl` invocation; returns the process exit code.
pub fn run(cli: CtlCli) -> Result<u8, CtlError> {
    let proc_root = ProcRoot::new(&cli.global.proc_root);
    let json = cli.global.json;
    match cli.command {
        CtlCommand::Status(args) => {
            let report =
                StatusReport::gather(&proc_root, &SysctlSources::under(&cli.global.sysctl_root))?;
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
            let report = CheckReport::gather(&proc_root, &args)?;
            if json {
                print_json(&report)?;
            } else {
                print_text(&report.render())?;
            }
            Ok(report.exit_code())
        }
        _ => Err(CtlError::Usage("not available yet".into())),
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CtlError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn print_text(text: &str) -> Result<(), CtlError> {
    let mut out = anstream::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
