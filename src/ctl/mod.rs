//! `overcommitctl`: each subcommand in its own module; this one dispatches, prints, and maps
//! errors to the exit codes of the contract (0 ok, 1 refused/drift/denied, 2 bad input,
//! 3 unreachable) and to the stable error codes of `--json` (docs/json.md).

mod admin;
mod check;
mod lease;
pub mod overcommitd;
mod prometheus;
mod run;
mod status;
pub mod top;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use serde::Serialize;

use crate::cli::{CtlCli, CtlCommand, GlobalArgs, PolicyArgs, StatusFormat};
use crate::client::{self, ClientError};
use crate::config::ConfigError;
use crate::kernel::{KernelError, ProcRoot};
use crate::model::{LimitError, LockoutRisk};
use crate::protocol::{PolicyRequest, Request};
use crate::sysctl_d::SysctlSources;

pub use check::CheckReport;
pub use overcommitd::{daemon_expected, Expectation};
pub use status::StatusReport;
pub use top::TopReport;

/// The version of every `--json` object (docs/json.md). Bumped only for incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// The global options every command sees.
pub type Globals = GlobalArgs;

impl GlobalArgs {
    pub fn proc_root(&self) -> ProcRoot {
        ProcRoot::new(&self.proc_root)
    }
}

/// Why a command could not do its job. Each kind has its exit code and its `--json` code.
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
    #[error("{source}; overcommitd is expected on this node ({}), so nothing was changed: start it (`systemctl start overcommitd`), fix --socket, or pass --direct to write the kernel behind its back", overcommitd::describe(expected))]
    DaemonExpected {
        expected: Vec<Expectation>,
        source: ClientError,
    },
    #[error("{source}; overcommitd is expected on this node ({}) but does not answer: the node's policy is not being kept (no leases, no drift correction). `systemctl status overcommitd`", overcommitd::describe(expected))]
    DaemonSilent {
        expected: Vec<Expectation>,
        source: ClientError,
    },
    #[error("no profile `{name}` (known: {known}){note}")]
    NoProfile {
        name: String,
        known: String,
        note: String,
    },
    #[error("the configuration names no baseline and overcommitd is not running: name a profile to verify against")]
    NothingToVerify,
    #[error("no process with pid {0}: it has exited, or it is in another pid namespace")]
    NoProcess(i32),
    #[error(transparent)]
    Unsafe(#[from] LockoutRisk),
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
            CtlError::DaemonExpected { .. } | CtlError::DaemonSilent { .. } => 3,
            CtlError::Unsafe(_) => 1,
            CtlError::Kernel(KernelError::Write { .. } | KernelError::ReadBack { .. }) => 1,
            CtlError::Kernel(_)
            | CtlError::Array(_)
            | CtlError::Limit(_)
            | CtlError::Config(_)
            | CtlError::NoProfile { .. }
            | CtlError::NothingToVerify
            | CtlError::NoProcess(_)
            | CtlError::Usage(_)
            | CtlError::Output(_)
            | CtlError::Json(_) => 2,
        }
    }

    /// The stable code of `{"error": {"code": ...}}` (docs/json.md).
    pub fn code(&self) -> String {
        let code = match self {
            CtlError::DaemonExpected { .. } | CtlError::DaemonSilent { .. } => "unreachable",
            CtlError::Client(e) => return client_code(e),
            CtlError::Kernel(KernelError::Write { .. } | KernelError::ReadBack { .. }) => "kernel",
            CtlError::Kernel(_) => "proc",
            CtlError::Array(_) | CtlError::Limit(_) | CtlError::Usage(_) => "usage",
            CtlError::Config(_) => "config",
            CtlError::NoProfile { .. } => "no_profile",
            CtlError::NothingToVerify => "nothing_to_verify",
            CtlError::NoProcess(_) => "no_process",
            CtlError::Unsafe(_) => "unsafe",
            CtlError::Output(_) | CtlError::Json(_) => "io",
        };
        code.to_string()
    }
}

/// The `--json` code of a failure to talk with overcommitd.
fn client_code(error: &ClientError) -> String {
    match error {
        ClientError::Unreachable { .. } => "unreachable".into(),
        ClientError::Timeout { .. } => "timeout".into(),
        ClientError::Io(_) | ClientError::BadReply(_) => "protocol".into(),
        ClientError::Daemon { code, .. } => client::code_name(*code),
    }
}

fn policy_request(mode: crate::model::Mode, args: &PolicyArgs) -> PolicyRequest {
    PolicyRequest {
        mode,
        ratio: args.ratio.map(i64::from),
        kbytes: args.kbytes,
    }
}

/// `overcommitctl`'s whole life: parse, run, print the outcome; the process exit status.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match CtlCli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            let sink = ErrorSink::from_args(&args);
            // `run`'s own failures exit 125: never a status its command could have returned.
            let status = if sink.on_stderr { 125 } else { 2 };
            match (sink.json, sink.on_stderr) {
                (true, _) => sink.report("usage", &clap_message(&e)),
                (false, true) => {
                    let _ = e.print();
                }
                (false, false) => e.exit(),
            }
            return ExitCode::from(status);
        }
    };
    let sink = ErrorSink::from_cli(&cli);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            sink.report(&error.code(), &error.to_string());
            ExitCode::from(error.exit_code())
        }
    }
}

/// clap's message without its `error: ` prefix and usage block.
fn clap_message(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let text = text.trim_start_matches("error: ");
    let first = text.split("\n\n").next().unwrap_or(text);
    first.trim().replace('\n', " ")
}

/// Where and how an error is told: text on stderr, or with `--json` one JSON object on stdout
/// (on stderr for `run`, whose stdout belongs to the command).
struct ErrorSink {
    json: bool,
    on_stderr: bool,
}

impl ErrorSink {
    fn from_cli(cli: &CtlCli) -> ErrorSink {
        let format_json =
            matches!(&cli.command, CtlCommand::Status(s) if s.format == StatusFormat::Json);
        ErrorSink {
            json: cli.global.json || format_json,
            on_stderr: matches!(cli.command, CtlCommand::Run(_)),
        }
    }

    /// For a command line clap refused: `--json` (or `--format json`) anywhere before `--`.
    fn from_args(args: &[OsString]) -> ErrorSink {
        let words: Vec<&str> = args
            .iter()
            .skip(1)
            .map(|a| a.to_str().unwrap_or(""))
            .take_while(|a| *a != "--")
            .collect();
        let json = words.iter().enumerate().any(|(i, w)| {
            *w == "--json"
                || *w == "--format=json"
                || (*w == "--format" && words.get(i + 1) == Some(&"json"))
        });
        let on_stderr = subcommand(&words) == Some("run");
        ErrorSink { json, on_stderr }
    }

    fn report(&self, code: &str, message: &str) {
        if !self.json {
            eprintln!("overcommitctl: {message}");
            return;
        }
        let report = ErrorReport {
            error: ErrorBody { code, message },
        };
        let line = json_line(&report).unwrap_or_default();
        if self.on_stderr {
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        } else {
            let _ = quiet_on_closed_pipe(std::io::stdout().lock().write_all(line.as_bytes()));
        }
    }
}

/// The first word that is not an option or the value of a global option.
fn subcommand<'a>(words: &[&'a str]) -> Option<&'a str> {
    const TAKES_VALUE: [&str; 4] = ["--proc-root", "--sysctl-root", "--socket", "--config"];
    let mut skip = false;
    for word in words {
        if skip {
            skip = false;
        } else if TAKES_VALUE.contains(word) {
            skip = true;
        } else if !word.starts_with('-') {
            return Some(word);
        }
    }
    None
}

#[derive(Serialize)]
struct ErrorReport<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

/// Every `--json` object: `schema_version` first, then the command's own fields.
#[derive(Serialize)]
struct Versioned<'a, T: Serialize> {
    schema_version: u32,
    #[serde(flatten)]
    body: &'a T,
}

/// `value` as one line of JSON with the schema version, newline included.
pub fn json_line(value: &impl Serialize) -> Result<String, serde_json::Error> {
    let mut line = serde_json::to_string(&Versioned {
        schema_version: SCHEMA_VERSION,
        body: value,
    })?;
    line.push('\n');
    Ok(line)
}

/// The format of `status` and `top`: --json is --format json, and conflicts with prometheus.
fn output_format(json: bool, format: StatusFormat) -> Result<StatusFormat, CtlError> {
    match (json, format) {
        (false, format) => Ok(format),
        (true, StatusFormat::Text | StatusFormat::Json) => Ok(StatusFormat::Json),
        (true, StatusFormat::Prometheus) => Err(CtlError::Usage(
            "--json and --format prometheus are two formats: give one".into(),
        )),
    }
}

/// Runs one `overcommitctl` invocation; returns the process exit code.
pub fn run(cli: CtlCli) -> Result<u8, CtlError> {
    let globals = &cli.global;
    client::set_timeout(globals.timeout);
    let json = globals.json;
    match cli.command {
        CtlCommand::Status(args) => {
            let format = output_format(json, args.format)?;
            if args.short && json {
                return Err(CtlError::Usage(
                    "--short and --json are two formats: give one".into(),
                ));
            }
            let sysctl = SysctlSources::under(&globals.sysctl_root);
            let report = StatusReport::gather(globals, &sysctl)?;
            match format {
                _ if args.short => print_text(&report.short())?,
                StatusFormat::Json => print_json(&report)?,
                StatusFormat::Text => print_text(&report.render())?,
                StatusFormat::Prometheus => {
                    // The leases too, when the daemon answered (one more request).
                    let leases = report
                        .daemon
                        .as_ref()
                        .and_then(|_| client::call(&globals.socket, &Request::Leases).ok());
                    print_text(&report.prometheus(leases.as_ref(), |jobs| {
                        prometheus::slurm_job_processes(std::path::Path::new("/proc"), jobs)
                    }))?
                }
            }
            Ok(report.exit_code())
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
            admin::set(
                globals,
                policy_request(args.mode, &policy),
                args.force,
                args.direct,
            )
        }
        CtlCommand::Apply(args) if args.check => admin::apply_check(globals, &args.profile),
        CtlCommand::Apply(args) => admin::apply(globals, &args.profile, args.force, args.direct),
        CtlCommand::Verify(args) => admin::verify(
            globals,
            args.profile.as_deref(),
            args.strict,
            args.drift_state.as_deref(),
        ),
        CtlCommand::Profiles(args) => admin::profiles(globals, args.names),
        CtlCommand::Run(args) => Ok(run::run(globals, &args)),
        CtlCommand::Lease(args) => lease::lease(globals, &args),
        CtlCommand::Release(args) => lease::release(globals, args.id, args.tag),
        CtlCommand::Leases => lease::leases(globals),
        CtlCommand::Top(args) => top::top(globals, &args),
    }
}

fn print_json(value: &impl Serialize) -> Result<(), CtlError> {
    let line = json_line(value)?;
    quiet_on_closed_pipe(std::io::stdout().lock().write_all(line.as_bytes()))
}

/// One write(2) for the whole text, its colours stripped where anstream would strip them.
fn print_text(text: &str) -> Result<(), CtlError> {
    let stdout = std::io::stdout();
    let stripped;
    let text = match anstream::AutoStream::choice(&stdout) {
        anstream::ColorChoice::Never => {
            stripped = anstream::adapter::strip_str(text).to_string();
            &stripped
        }
        _ => text,
    };
    let mut out = stdout.lock();
    quiet_on_closed_pipe(out.write_all(text.as_bytes()).and_then(|()| out.flush()))
}

/// `overcommitctl status | head` is not an error.
fn quiet_on_closed_pipe(result: std::io::Result<()>) -> Result<(), CtlError> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subcommand_is_found_past_global_options_and_their_values() {
        assert_eq!(
            subcommand(&["--socket", "run", "--json", "run", "--mode"]),
            Some("run")
        );
        assert_eq!(
            subcommand(&["--proc-root=/x", "check", "1G"]),
            Some("check")
        );
        assert_eq!(subcommand(&["--json"]), None);
    }

    #[test]
    fn json_lines_carry_the_schema_version_first() {
        #[derive(Serialize)]
        struct Body {
            answer: u8,
        }
        assert_eq!(
            json_line(&Body { answer: 42 }).unwrap(),
            "{\"schema_version\":1,\"answer\":42}\n"
        );
    }
}
