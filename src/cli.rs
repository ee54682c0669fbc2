//! Command-line definitions of both programs, in one place so that man pages and shell
//! completions are generated from the same definitions the programs parse with.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::Mode;

pub const DEFAULT_CONFIG: &str = "/etc/overcommitd/overcommitd.toml";
pub const DEFAULT_SOCKET: &str = "/run/overcommitd/overcommitd.sock";
pub const DEFAULT_STATE_DIR: &str = "/run/overcommitd";

const CTL_AFTER_HELP: &str = "\
Sizes: bytes, or with K/M/G/T/P (powers of 1024, also KiB..PiB) or KB/MB/GB/TB/PB (powers of 1000).
Modes: heuristic (0), always (1), never (2).

Exit status: 0 ok / allowed / in line; 1 refused, borderline, drift or denied;
2 bad usage, configuration or input; 3 overcommitd unreachable.

Environment: OVERCOMMIT_PROC_ROOT, OVERCOMMIT_SYSCTL_ROOT, OVERCOMMIT_SOCKET, OVERCOMMIT_CONFIG
set the options of the same names; NO_COLOR turns colour off.

Examples:
  overcommitctl status
  overcommitctl check --shape 210000x210000 --dtype float64
  overcommitctl run --mode always -- python3 job.py
  overcommitctl lease --ttl 12h --tag slurm-$SLURM_JOB_ID     (prolog)
  overcommitctl release --tag slurm-$SLURM_JOB_ID             (epilog)
  overcommitctl apply hpc-strict --check --json              (config management)
  overcommitctl verify --json                                (node health checks)";

const DAEMON_AFTER_HELP: &str = "\
Signals: SIGHUP reloads the configuration (a broken one is refused and the running one stays);
SIGTERM and SIGINT end all leases, leave the baseline in force and exit.

Files: /etc/overcommitd/overcommitd.toml and /etc/overcommitd/profiles.d/*.toml (configuration);
/run/overcommitd/overcommitd.sock (socket; or passed by systemd, LISTEN_FDS);
/run/overcommitd/state.json (journal of baseline and leases, re-read after a restart).

Exit status: 0 stopped cleanly or configuration valid; 1 could not start; 2 invalid configuration.

The wire protocol (one JSON object per line) is described in the project's docs/protocol.md.";

fn parse_size(text: &str) -> Result<u64, String> {
    crate::size::parse_size(text).map_err(|e| e.to_string())
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse()
        .map_err(|e: crate::model::ModeError| e.to_string())
}

fn parse_ratio(text: &str) -> Result<u32, String> {
    match text.trim().trim_end_matches('%').parse::<i64>() {
        Ok(r) if (0..=100).contains(&r) => Ok(r as u32),
        Ok(r) => Err(format!(
            "ratio {r} is out of range: expected a percentage from 0 to 100"
        )),
        Err(_) => Err(format!(
            "ratio `{text}` is not a number: expected a percentage from 0 to 100"
        )),
    }
}

fn parse_kbytes(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("kbytes 0 is not a limit (the kernel reads it as \"use the ratio\"): give --ratio instead".into()),
        Ok(k) => Ok(k),
        Err(_) => Err(format!("kbytes `{text}` is not a whole number of kB (1 or more)")),
    }
}

/// Parses durations such as `90s`, `30m`, `24h`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("duration `{text}` is not valid ({e}): expected e.g. 90s, 30m, 24h, 2h30m")
    })
}

/// Inspect, check, change and lease the kernel's memory-overcommit policy.
///
/// Exit codes: 0 ok / allowed / in line; 1 refused / borderline / drift / denied;
/// 2 bad usage, config or input; 3 daemon unreachable.
#[derive(Debug, Parser)]
#[command(name = "overcommitctl", version, max_term_width = 100, after_long_help = CTL_AFTER_HELP)]
pub struct CtlCli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Directory laid out like /proc where the node-wide kernel files are read (and written).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "OVERCOMMIT_PROC_ROOT",
        default_value = "/proc"
    )]
    pub proc_root: PathBuf,
    /// Root under which the sysctl.d directories and /etc/sysctl.conf are read.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "OVERCOMMIT_SYSCTL_ROOT",
        default_value = "/"
    )]
    pub sysctl_root: PathBuf,
    /// The daemon's socket.
    #[arg(long, global = true, value_name = "PATH", env = "OVERCOMMIT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The daemon's configuration (profiles are read from profiles.d/ beside it).
    #[arg(long, global = true, value_name = "FILE", env = "OVERCOMMIT_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Print one JSON object with exact figures (bytes) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Show the live policy, commit accounting, memory, boot configuration and findings.
    Status(StatusArgs),
    /// Will ONE allocation of SIZE (or of a NumPy array) succeed now, and if not, what would allow it?
    Check(CheckArgs),
    /// Change the node's baseline policy (root; through the daemon when it runs).
    Set(SetArgs),
    /// Make PROFILE the baseline (root), or with --check only say what would change.
    Apply(ApplyArgs),
    /// Compare the kernel with a profile (default: what the daemon or the config expects).
    Verify(VerifyArgs),
    /// List the configured profiles.
    Profiles,
    /// Run CMD under a temporary policy that ends when CMD ends, however it ends.
    Run(RunArgs),
    /// Take a lease that lives until its TTL or `release` (for prolog/epilog scripts).
    Lease(LeaseArgs),
    /// End a lease, by id or by tag.
    Release(ReleaseArgs),
    /// List the live leases.
    Leases,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
    /// For the node-exporter textfile collector.
    Prometheus,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format (--json is the same as --format json).
    #[arg(long, value_enum, default_value = "text")]
    pub format: StatusFormat,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("request").required(true).args(["size", "shape"]))]
pub struct CheckArgs {
    /// Bytes, or with K/M/G/T (powers of 1024, also KiB..TiB) or KB/MB/GB/TB (powers of 1000).
    #[arg(value_parser = parse_size)]
    pub size: Option<u64>,
    /// A NumPy array shape instead of SIZE, e.g. 210000x210000.
    #[arg(long, value_name = "DIMS")]
    pub shape: Option<String>,
    /// The array's dtype (NumPy names and codes: float64, f8, float32, int64, u1, complex128, ...).
    #[arg(
        long,
        value_name = "DTYPE",
        default_value = "float64",
        requires = "shape"
    )]
    pub dtype: String,
    #[command(flatten)]
    pub hypothetical: PolicyArgs,
    /// Assume this much swap in total.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub swap_total: Option<u64>,
    /// As an unprivileged process (the admin reserve applies). Default: as the caller.
    #[arg(long, conflicts_with = "root")]
    pub user: bool,
    /// As a process with CAP_SYS_ADMIN (exempt from the admin reserve).
    #[arg(long)]
    pub root: bool,
    /// As this process: its VmSize, RLIMIT_AS/RLIMIT_DATA, map count, privilege and cgroup.
    #[arg(long, value_name = "PID")]
    pub pid: Option<i32>,
    /// Assume the process's VmSize is this (it sets the user reserve in mode never).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub vm_size: Option<u64>,
}

/// A policy given on the command line.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Overcommit mode: heuristic (0), always (1) or never (2).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Mode-never limit as a percentage of RAM (0..=100).
    #[arg(long, value_name = "PERCENT", value_parser = parse_ratio, conflicts_with = "kbytes")]
    pub ratio: Option<u32>,
    /// Mode-never limit in kB.
    #[arg(long, value_name = "KB", value_parser = parse_kbytes)]
    pub kbytes: Option<u64>,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// heuristic (0), always (1) or never (2).
    #[arg(value_parser = parse_mode)]
    pub mode: Mode,
    /// Mode-never limit as a percentage of RAM (0..=100).
    #[arg(long, value_name = "PERCENT", value_parser = parse_ratio, conflicts_with = "kbytes")]
    pub ratio: Option<u32>,
    /// Mode-never limit in kB.
    #[arg(long, value_name = "KB", value_parser = parse_kbytes)]
    pub kbytes: Option<u64>,
    /// Apply even if the new CommitLimit would be below Committed_AS plus the safety margin.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    pub profile: String,
    /// Only say what would change: exit 0 if nothing, 1 if something would.
    #[arg(long)]
    pub check: bool,
    /// Apply even if the new CommitLimit would be below Committed_AS plus the safety margin.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub profile: Option<String>,
}

/// Options of a lease request.
#[derive(Debug, Clone, Args)]
pub struct LeaseOptions {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// How long the lease may live at most (e.g. 30m, 24h); default: the longest allowed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Why (shown in `leases` and in the audit log).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// A tag to release the lease by (e.g. slurm-$SLURM_JOB_ID).
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub lease: LeaseOptions,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LeaseArgs {
    #[command(flatten)]
    pub lease: LeaseOptions,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["id", "tag"]))]
pub struct ReleaseArgs {
    /// The lease id printed by `lease`.
    pub id: Option<String>,
    /// Release every lease of yours with this tag.
    #[arg(long)]
    pub tag: Option<String>,
}

/// The overcommit daemon: owns the node's overcommit policy and grants leases to jobs.
///
/// overcommitd applies the baseline profile at start, serves a Unix socket on which
/// unprivileged jobs ask for temporary, more permissive policies (leases), restores the
/// baseline when the last lease ends, and journals its intent so that a crash never leaves the
/// node wrong. Identity comes from the kernel (SO_PEERCRED); who may lease what is set by the
/// [[access]] rules of overcommitd.toml(5).
#[derive(Debug, Parser)]
#[command(name = "overcommitd", version, max_term_width = 100, after_long_help = DAEMON_AFTER_HELP)]
pub struct DaemonCli {
    /// Configuration file; profiles are also read from profiles.d/*.toml beside it.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Socket to listen on (unless systemd hands one over).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Directory for the crash-safe journal of baseline and leases.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Directory laid out like /proc where the node-wide kernel files are read and written.
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Validate the configuration and exit (0 valid, 2 invalid).
    #[arg(long)]
    pub check_config: bool,
    /// Where to log: journald when stderr is connected to it, else syslog, else stderr.
    #[arg(long, value_enum, default_value = "auto")]
    pub log: crate::logging::LogTarget,
    /// Log at debug level.
    #[arg(long, short)]
    pub verbose: bool,
}
