use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = overcommit::cli::CtlCli::parse();
    match overcommit::ctl::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("overcommitctl: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
