use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ExitCode::from(overcommit::daemon::run(overcommit::cli::DaemonCli::parse()))
}
