//! `overcommitctl run [--scope auto|job|node] [--min-size SIZE] [lease options] -- CMD...`
//!
//! Two ways to let a job overcommit, and they differ in whom they affect:
//! - the job scope: CMD runs with the preload library (LD_PRELOAD, inherited by its
//!   children), which maps its allocations of at least the threshold with MAP_NORESERVE. The
//!   kernel honours the flag in modes 0 and 1, so only this job overcommits; no root, no
//!   daemon, the node's policy is never written.
//! - the node scope: a lease from overcommitd, held by this process, which changes the policy
//!   of the whole node, for every process on it, while CMD runs.
//!
//! `run` exits with CMD's status (128+N when signal N ended it). Its own failures exit 125
//! (bad usage, job scope impossible, lease refused, daemon unreachable), 126 (CMD cannot be
//! executed) or 127 (CMD not found), and CMD is not run. Everything `run` says goes to
//! stderr (stdout is CMD's): one line of text, or with --json one JSON object per line.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;
use serde::Serialize;

use crate::cli::{LeaseOptions, RunArgs, Scope};
use crate::client::{self, ClientError};
use crate::kernel::KernelError;
use crate::model::{Mode, Node, Policy};
use crate::predict::job_min_size;
use crate::program::{self, ExecError, Inspection, Preload};
use crate::protocol::{DaemonStatus, LeaseGranted, LeaseInfo, LeaseList, Released, Request};
use crate::size::HumanBytes;

use super::lease::{lease_request, time_left, LeaseView};
use super::{client_code, json_line, CtlError, ErrorSink, Globals};

/// The preload library's file name.
pub const LIBRARY_NAME: &str = "libovercommit_preload.so";
/// Where the packages install it.
pub const INSTALLED_LIBRARY: &str = "/usr/lib/overcommit/libovercommit_preload.so";
/// The library's threshold, in bytes (read by the library at start).
pub const MIN_SIZE_VAR: &str = "OVERCOMMIT_MIN_SIZE";

/// Why `run` could not run CMD.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("{0}")]
    JobScope(String),
    #[error("the job scope needs {LIBRARY_NAME}, which is neither beside {} nor at {INSTALLED_LIBRARY} (install the overcommit package, or `cargo build` the workspace)", beside.display())]
    LibraryMissing { beside: PathBuf },
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The lease of a node scope that `auto` chose: the reason for the choice matters.
    #[error("node scope ({why}): {source}")]
    Lease { why: String, source: ClientError },
    #[error(transparent)]
    Ctl(#[from] CtlError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl RunError {
    fn exit_code(&self) -> u8 {
        match self {
            RunError::Exec(e) => e.exit_code(),
            _ => 125,
        }
    }

    /// Its stable code for --json (docs/json.md).
    fn code(&self) -> String {
        match self {
            RunError::Usage(_) => "usage".into(),
            RunError::Exec(e) if e.exit_code() == 127 => "command_not_found".into(),
            RunError::Exec(_) => "cannot_execute".into(),
            RunError::JobScope(_) => "job_scope_unavailable".into(),
            RunError::LibraryMissing { .. } => "library_missing".into(),
            RunError::Kernel(_) => "proc".into(),
            RunError::Client(e) | RunError::Lease { source: e, .. } => client_code(e),
            RunError::Ctl(e) => e.code(),
            RunError::Io(_) => "io".into(),
        }
    }
}

/// Why `run` chose its scope (`scope_reason` in --json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum ScopeReason {
    /// --scope job or --scope node.
    Requested,
    /// auto: a lease option (--mode, --ratio, --kbytes, --ttl, --tag, --reason) was given.
    LeaseOptions,
    /// auto: the kernel honours MAP_NORESERVE and the program LD_PRELOAD.
    DynamicProgram,
    /// auto: mode 2 ignores MAP_NORESERVE.
    ModeNever,
    /// auto: the program does not honour LD_PRELOAD (see `preload`).
    ProgramIgnoresPreload,
    /// auto: the preload library is not installed.
    LibraryMissing,
}

/// `run --json`'s record of what it did, one line on stderr before CMD starts
/// (docs/json.md, schema/run.json).
#[derive(Debug, Serialize)]
struct RunRecord<'a> {
    scope: Scope,
    scope_reason: ScopeReason,
    kernel_mode: Mode,
    /// The file executed (CMD resolved through PATH).
    command: &'a Path,
    /// The program that does the work (a script's interpreter) and whether it honours
    /// LD_PRELOAD.
    program: &'a Path,
    preload: &'a Preload,
    library: Option<&'a Path>,
    min_size_bytes: Option<u64>,
    /// Node scope: the lease `run` holds, and the policy in force on the node.
    lease: Option<LeaseView<'a>>,
    effective: Option<Policy>,
}

/// What `run` will do.
struct Plan {
    scope: Scope,
    reason: ScopeReason,
    node: Node,
    inspection: Inspection,
    /// Job scope: the library and the threshold.
    library: Option<PathBuf>,
    min_size: u64,
}

/// Runs `run`; returns the exit code (failures are reported here).
pub fn run(globals: &Globals, args: &RunArgs) -> u8 {
    let say = Say { json: globals.json };
    match plan(globals, args).and_then(|plan| execute(globals, args, plan, &say)) {
        Ok(code) => code,
        Err(error) => {
            say.failure(&error);
            error.exit_code()
        }
    }
}

fn lease_options_given(options: &LeaseOptions) -> bool {
    options.policy.mode.is_some()
        || options.policy.ratio.is_some()
        || options.policy.kbytes.is_some()
        || options.ttl.is_some()
        || options.tag.is_some()
        || options.reason.is_some()
}

fn plan(globals: &Globals, args: &RunArgs) -> Result<Plan, RunError> {
    let leasing = lease_options_given(&args.lease);
    match args.scope {
        Scope::Job if leasing => {
            return Err(RunError::Usage(
                "--mode, --ratio, --kbytes, --ttl, --tag and --reason configure a lease; --scope job takes none (drop them, or use --scope node)".into(),
            ))
        }
        Scope::Node if args.min_size.is_some() => {
            return Err(RunError::Usage(
                "--min-size is the job scope's threshold; --scope node takes a lease instead (drop it, or use --scope job)".into(),
            ))
        }
        _ => {}
    }
    let node = globals.proc_root().node()?;
    let min_size = match args.min_size {
        Some(size) if size < node.page_size => {
            return Err(RunError::Usage(format!(
                "--min-size {size} is below one page ({} bytes)",
                node.page_size
            )))
        }
        Some(size) => size,
        None => job_min_size(&node),
    };
    let path_var = std::env::var_os("PATH");
    let command = program::resolve(OsStr::new(&args.command[0]), path_var.as_deref())?;
    let inspection = program::inspect(&command, path_var.as_deref());
    let mode = node.tunables.overcommit_memory;
    let library = find_library();

    let (scope, reason) = match args.scope {
        Scope::Node => (Scope::Node, ScopeReason::Requested),
        Scope::Job => {
            if mode == Mode::Never {
                return Err(RunError::JobScope(format!(
                    "the job scope cannot work here: the kernel is in mode never (2), which ignores MAP_NORESERVE and charges every mapping (strict accounting); CMD was not run. A lease changes the policy of the whole node: overcommitctl run --scope node --mode always -- {}",
                    args.command[0]
                )));
            }
            if inspection.preload != Preload::Honoured {
                return Err(RunError::JobScope(format!(
                    "the job scope cannot reach {}: {}, so the dynamic loader does not apply LD_PRELOAD; CMD was not run. A lease changes the policy of the whole node: --scope node",
                    inspection.program.display(),
                    inspection.detail
                )));
            }
            (Scope::Job, ScopeReason::Requested)
        }
        Scope::Auto if leasing => (Scope::Node, ScopeReason::LeaseOptions),
        Scope::Auto if mode == Mode::Never => (Scope::Node, ScopeReason::ModeNever),
        Scope::Auto if inspection.preload != Preload::Honoured => {
            (Scope::Node, ScopeReason::ProgramIgnoresPreload)
        }
        Scope::Auto if library.is_err() => (Scope::Node, ScopeReason::LibraryMissing),
        Scope::Auto => (Scope::Job, ScopeReason::DynamicProgram),
    };
    let library = match scope {
        Scope::Job => Some(library?),
        _ => None,
    };
    Ok(Plan {
        scope,
        reason,
        node,
        inspection,
        library,
        min_size,
    })
}

/// The preload library: beside this program (a cargo-built tree), else where the packages
/// install it.
fn find_library() -> Result<PathBuf, RunError> {
    let exe = std::env::current_exe()?;
    let beside = exe
        .parent()
        .map(|dir| dir.join(LIBRARY_NAME))
        .unwrap_or_default();
    for candidate in [beside.clone(), PathBuf::from(INSTALLED_LIBRARY)] {
        if candidate.is_file() {
            // LD_PRELOAD separates entries by spaces and colons.
            if candidate.as_os_str().to_string_lossy().contains([' ', ':']) {
                return Err(RunError::JobScope(format!(
                    "the preload library's path {} holds a space or colon, which LD_PRELOAD cannot carry",
                    candidate.display()
                )));
            }
            return Ok(candidate);
        }
    }
    Err(RunError::LibraryMissing {
        beside: exe.parent().map(Path::to_path_buf).unwrap_or_default(),
    })
}

fn execute(globals: &Globals, args: &RunArgs, plan: Plan, say: &Say) -> Result<u8, RunError> {
    let mode = plan.node.tunables.overcommit_memory;
    let mut command = command_for(&plan.inspection, &args.command);
    let status = match &plan.library {
        Some(library) => {
            command
                .env(
                    "LD_PRELOAD",
                    program::ld_preload_with(library, std::env::var_os("LD_PRELOAD").as_deref()),
                )
                .env(MIN_SIZE_VAR, plan.min_size.to_string());
            say.record(&record(&plan, None, None), || {
                format!(
                    "job scope ({}): {} and its children map allocations of {} or more with MAP_NORESERVE; the node's policy stays {mode} ({})",
                    why(&plan, mode),
                    plan.inspection.program.display(),
                    HumanBytes(plan.min_size),
                    mode.number()
                )
            });
            let child = spawn(&mut command, &plan.inspection)?;
            supervise(child, None)?
        }
        None => {
            let granted: LeaseGranted =
                client::call(&globals.socket, &lease_request(&args.lease, true)?).map_err(
                    |source| match plan.reason {
                        ScopeReason::Requested => RunError::Client(source),
                        _ => RunError::Lease {
                            why: why(&plan, mode),
                            source,
                        },
                    },
                )?;
            let lease = &granted.lease;
            say.record(&record(&plan, Some(lease), Some(&granted.effective)), || {
                format!(
                    "node scope ({}): lease {} holds {} for every process on the node until the command ends (at most {}); in force: {}",
                    why(&plan, mode),
                    lease.id,
                    lease.policy,
                    time_left(lease.expires_at),
                    granted.effective
                )
            });
            let mut watch = LeaseWatch::new(&globals.socket, lease, say);
            let child = match spawn(&mut command, &plan.inspection) {
                Ok(child) => child,
                Err(e) => {
                    release_quietly(globals, &lease.id, say);
                    return Err(e);
                }
            };
            let status = supervise(child, Some(&mut watch))?;
            if !watch.ended {
                release_quietly(globals, &lease.id, say);
            }
            status
        }
    };
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        _ => 125,
    })
}

fn record<'a>(
    plan: &'a Plan,
    lease: Option<&'a LeaseInfo>,
    effective: Option<&'a Policy>,
) -> RunRecord<'a> {
    RunRecord {
        scope: plan.scope,
        scope_reason: plan.reason,
        kernel_mode: plan.node.tunables.overcommit_memory,
        command: &plan.inspection.command,
        program: &plan.inspection.program,
        preload: &plan.inspection.preload,
        library: plan.library.as_deref(),
        min_size_bytes: (plan.scope == Scope::Job).then_some(plan.min_size),
        lease: lease.map(LeaseView::from),
        effective: effective.copied(),
    }
}

/// Why this scope, for people.
fn why(plan: &Plan, mode: Mode) -> String {
    let program = plan.inspection.program.display();
    match plan.reason {
        ScopeReason::Requested => format!(
            "--scope {}",
            if plan.scope == Scope::Job {
                "job"
            } else {
                "node"
            }
        ),
        ScopeReason::LeaseOptions => "auto: lease options were given".into(),
        ScopeReason::DynamicProgram => format!(
            "auto: mode {mode} ({}) honours MAP_NORESERVE and {program} is {}",
            mode.number(),
            plan.inspection.detail
        ),
        ScopeReason::ModeNever => {
            "auto: mode never (2) ignores MAP_NORESERVE, so only a lease can help".into()
        }
        ScopeReason::ProgramIgnoresPreload => format!(
            "auto: {program} does not honour LD_PRELOAD: {}",
            plan.inspection.detail
        ),
        ScopeReason::LibraryMissing => format!("auto: {LIBRARY_NAME} is not installed"),
    }
}

/// CMD as execvp would run it: the resolved file with argv[0] as given, or through /bin/sh
/// when it is neither an ELF program nor a `#!` script.
fn command_for(inspection: &Inspection, argv: &[String]) -> Command {
    if inspection.via_shell {
        let mut command = Command::new("/bin/sh");
        command.arg(&inspection.command).args(&argv[1..]);
        command
    } else {
        let mut command = Command::new(&inspection.command);
        command.arg0(&argv[0]).args(&argv[1..]);
        command
    }
}

/// Signals `run` passes on to CMD (and SIGCHLD, to learn that it ended), through a signalfd.
fn forwarded_signals() -> SigSet {
    let mut signals = SigSet::empty();
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        signals.add(signal);
    }
    signals
}

fn spawn(command: &mut Command, inspection: &Inspection) -> Result<Child, RunError> {
    let signals = forwarded_signals();
    signals.thread_block().map_err(std::io::Error::from)?;
    // SAFETY: only async-signal-safe calls between fork and exec (sigprocmask).
    unsafe {
        command.pre_exec(move || {
            signals.thread_unblock().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    command.spawn().map_err(|source| {
        let path = inspection.command.clone();
        RunError::Exec(match source.kind() {
            std::io::ErrorKind::NotFound => ExecError::NoSuchFile { path },
            _ => ExecError::CannotExecute {
                path,
                why: source.to_string(),
            },
        })
    })
}

/// Waits for CMD, passing on the signals sent to `run`, and watching the lease if there is
/// one.
fn supervise(mut child: Child, mut watch: Option<&mut LeaseWatch>) -> Result<ExitStatus, RunError> {
    let signal_fd = SignalFd::with_flags(&forwarded_signals(), SfdFlags::SFD_NONBLOCK)
        .map_err(std::io::Error::from)?;
    let pid = Pid::from_raw(child.id() as i32);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let timeout =
            watch
                .as_deref()
                .and_then(LeaseWatch::timeout)
                .map_or(PollTimeout::NONE, |t| {
                    PollTimeout::try_from(t.as_millis().min(i32::MAX as u128) as i32)
                        .unwrap_or(PollTimeout::MAX)
                });
        let (signal_ready, watch_ready) = {
            let watched = watch.as_deref().and_then(|w| w.stream.as_ref());
            let mut fds = vec![PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN)];
            if let Some(stream) = watched {
                fds.push(PollFd::new(stream.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(std::io::Error::from(e).into()),
            }
            let ready =
                |fd: Option<&PollFd>| fd.and_then(PollFd::revents).is_some_and(|r| !r.is_empty());
            (ready(fds.first()), ready(fds.get(1)))
        };
        if signal_ready {
            while let Ok(Some(info)) = signal_fd.read_signal() {
                // A signal from the terminal reached the child's process group already; one
                // sent to us by a process (kill, a scheduler) is passed on.
                let from_process =
                    info.ssi_code == libc::SI_USER || info.ssi_code == libc::SI_QUEUE;
                if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                    if signal != Signal::SIGCHLD && from_process {
                        let _ = kill(pid, signal);
                    }
                }
            }
        }
        if let Some(watch) = watch.as_deref_mut() {
            if watch_ready {
                watch.on_readable();
            } else if watch.timeout() == Some(Duration::ZERO) {
                watch.check();
            }
        }
    }
}

/// Releases a lease this process holds. Failure is harmless: the daemon ends the lease when
/// this process exits anyway.
fn release_quietly(globals: &Globals, id: &str, say: &Say) {
    let request = Request::Release {
        id: Some(id.to_string()),
        tag: None,
    };
    if let Err(e) = client::call::<Released>(&globals.socket, &request) {
        say.event(
            "release_failed",
            id,
            None,
            &format!("note: could not release lease {id} ({e}); it ends when this process exits"),
        );
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Notices, while CMD runs, that the lease ended before it: its TTL passed, or overcommitd
/// stopped or restarted without it. It keeps a connection to the daemon open: the daemon
/// closing it (when it exits, or when the connection has been idle for its client timeout)
/// is the moment to ask whether the lease still lives. Its TTL is a timer.
struct LeaseWatch<'a> {
    socket: PathBuf,
    id: String,
    expires_at: u64,
    stream: Option<UnixStream>,
    /// When to ask next without an event (the TTL, or a retry while the daemon is away).
    next_check: Option<SystemTime>,
    retry: Duration,
    unreachable_reported: bool,
    ended: bool,
    say: &'a Say,
}

impl<'a> LeaseWatch<'a> {
    fn new(socket: &Path, lease: &LeaseInfo, say: &'a Say) -> LeaseWatch<'a> {
        let mut watch = LeaseWatch {
            socket: socket.to_path_buf(),
            id: lease.id.clone(),
            expires_at: lease.expires_at,
            stream: None,
            next_check: None,
            retry: Duration::from_secs(1),
            unreachable_reported: false,
            ended: false,
            say,
        };
        watch.connect();
        watch.arm_ttl();
        if watch.stream.is_none() {
            // The daemon answered a moment ago and now refuses a connection: ask at once.
            watch.next_check = Some(SystemTime::now());
        }
        watch
    }

    fn connect(&mut self) {
        self.stream = UnixStream::connect(&self.socket).ok();
    }

    /// The TTL's end (a second late: the daemon ends the lease at its deadline).
    fn arm_ttl(&mut self) {
        self.next_check = Some(UNIX_EPOCH + Duration::from_secs(self.expires_at.saturating_add(1)));
    }

    /// How long until the next check; None when only an event can tell.
    fn timeout(&self) -> Option<Duration> {
        if self.ended {
            return None;
        }
        let at = self.next_check?;
        Some(
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }

    fn on_readable(&mut self) {
        let mut buf = [0u8; 512];
        let closed = match self.stream.as_mut().map(|s| s.read(&mut buf)) {
            Some(Ok(0)) | Some(Err(_)) | None => true,
            Some(Ok(_)) => false, // the daemon sends nothing unasked; ignore
        };
        if closed {
            self.stream = None;
            self.check();
        }
    }

    /// Asks the daemon whether the lease still lives, and says so once when it does not.
    fn check(&mut self) {
        let request = Request::Leases;
        match client::call::<LeaseList>(&self.socket, &request) {
            Ok(list) if list.leases.iter().any(|l| l.id == self.id) => {
                if self.unreachable_reported {
                    self.say.event(
                        "daemon_back",
                        &self.id,
                        None,
                        &format!(
                            "overcommitd answers again and lease {} still holds",
                            self.id
                        ),
                    );
                }
                self.unreachable_reported = false;
                self.connect();
                self.arm_ttl();
                if self.stream.is_none() {
                    self.next_check = Some(SystemTime::now() + self.retry);
                    self.retry = (self.retry * 2).min(Duration::from_secs(30));
                } else {
                    self.retry = Duration::from_secs(1);
                }
                if unix_now() > self.expires_at {
                    // The clocks disagree by a little: look again shortly.
                    self.next_check = Some(SystemTime::now() + Duration::from_secs(1));
                }
            }
            Ok(_) => {
                let cause = if unix_now() >= self.expires_at {
                    "ttl"
                } else {
                    "gone"
                };
                let why = if cause == "ttl" {
                    "its TTL passed".to_string()
                } else {
                    "overcommitd restarted without it, or it was released".to_string()
                };
                let effective = client::call::<DaemonStatus>(&self.socket, &Request::Status)
                    .map(|s| s.effective.to_string())
                    .unwrap_or_else(|_| "unknown".into());
                self.say.event("lease_ended", &self.id, Some(cause), &format!(
                    "lease {} ended before the command: {why}; the command keeps running under the node's policy, now {effective}",
                    self.id
                ));
                self.ended = true;
                self.stream = None;
            }
            Err(e) => {
                if !self.unreachable_reported {
                    self.say.event("lease_ended", &self.id, Some("daemon_unreachable"), &format!(
                        "lost overcommitd ({e}): lease {} may have ended with it; the command keeps running",
                        self.id
                    ));
                    self.unreachable_reported = true;
                }
                self.next_check = Some(SystemTime::now() + self.retry);
                self.retry = (self.retry * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Where and how `run` speaks: stderr, text or JSON lines (docs/json.md).
struct Say {
    json: bool,
}

/// Something `run` noticed about its lease while CMD ran (--json).
#[derive(Serialize)]
struct JsonEvent<'a> {
    /// `lease_ended`, `daemon_back` or `release_failed`.
    event: &'a str,
    lease_id: &'a str,
    /// For `lease_ended`: `ttl`, `gone` (restarted without it, or released) or
    /// `daemon_unreachable`; else null.
    cause: Option<&'a str>,
}

impl Say {
    fn line(&self, value: &impl Serialize) {
        match json_line(value) {
            Ok(line) => eprint!("{line}"),
            Err(e) => eprintln!("overcommitctl: cannot encode JSON: {e}"),
        }
    }

    fn record(&self, record: &RunRecord, text: impl FnOnce() -> String) {
        if self.json {
            self.line(record);
        } else {
            eprintln!("overcommitctl: {}", text());
        }
    }

    fn failure(&self, error: &RunError) {
        ErrorSink {
            json: self.json,
            on_stderr: true,
        }
        .report(&error.code(), &error.to_string());
    }

    /// An event about the lease: a JSON line, or `message` as text.
    fn event(&self, event: &str, lease_id: &str, cause: Option<&str>, message: &str) {
        if self.json {
            self.line(&JsonEvent {
                event,
                lease_id,
                cause,
            });
        } else {
            eprintln!("overcommitctl: {message}");
        }
    }
}
