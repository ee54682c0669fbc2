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
Sizes: bytes, or with K/M/G/T/P/E (powers of 1024, also KiB..EiB) or KB/MB/GB/TB/PB/EB (powers
of 1000); a fraction must come out as whole bytes (1.5K = 1536).
Modes: heuristic (0), always (1), never (2).

Exit status: 0 ok / allowed / in line; 1 refused, borderline, drift, denied, or a critical
finding (status); 2 bad usage, configuration or input; 3 overcommitd unreachable (or expected
on this node but not answering: set/apply refuse unless --direct). `run` exits with CMD's
status (128+N if a signal N ended it); its own failures are 125 (bad usage, job scope
impossible, lease refused, overcommitd unreachable), 126 (CMD cannot be executed), 127 (CMD
not found).

JSON: with --json every command prints one JSON object on stdout with \"schema_version\": 1
(run prints its record on stderr: stdout is the command's). Errors are one object too,
{\"schema_version\":1,\"error\":{\"code\":...,\"message\":...}}, with the same exit status.
The objects are documented in docs/json.md (/usr/share/doc/overcommit/json.md).

Environment: OVERCOMMIT_PROC_ROOT, OVERCOMMIT_SYSCTL_ROOT, OVERCOMMIT_SOCKET, OVERCOMMIT_CONFIG
set the options of the same names; NO_COLOR turns colour off.

Examples:
  overcommitctl status
  overcommitctl status --short                               (prompts, scripts)
  overcommitctl check --shape 210000x210000 --dtype float64
  sudo overcommitctl top --by job                            (who holds the commit charge)
  overcommitctl run -- python3 job.py                         (this job only if possible)
  overcommitctl run --scope node --mode always -- python3 job.py  (a lease: the whole node)
  overcommitctl lease --ttl 12h --tag slurm-$SLURM_JOB_ID     (prolog)
  overcommitctl release --tag slurm-$SLURM_JOB_ID             (epilog)
  overcommitctl apply hpc-strict --check --json              (config management)
  overcommitctl verify --json                                (node health checks)";

const RUN_AFTER_HELP: &str = "\
Scopes:
  job   Only CMD and its children overcommit. CMD runs with LD_PRELOAD=libovercommit_preload.so
        (beside overcommitctl, else /usr/lib/overcommit/), which maps their allocations of at
        least --min-size bytes (OVERCOMMIT_MIN_SIZE in CMD's environment; default half of
        MemTotal + SwapTotal) with MAP_NORESERVE. The kernel honours the flag in modes
        heuristic (0) and always (1): no root, no daemon, the node's policy unchanged; pages
        are taken when written and the OOM killer stays the backstop. Mode never (2) ignores
        it, so run refuses there, and for programs the dynamic loader does not preload into
        (static, setuid/setgid, file capabilities, another architecture).
  node  A lease from overcommitd, held by run: the policy of the whole node, for every process
        on it, until CMD ends or the lease's TTL passes. If the lease ends first (TTL,
        overcommitd stopped or restarted without it) run says so at once; CMD runs on.
  auto  The default: job when the kernel is in mode 0 or 1, the program (for a script, its
        #! interpreter) honours LD_PRELOAD and no lease option is given; node otherwise.
        run says on stderr which scope it took and why.

Output: stdin and stdout are CMD's. Before CMD starts run writes one line on stderr; with --json
one JSON object (schema_version, scope, scope_reason, kernel_mode, command, program, preload,
library, min_size_bytes, lease, effective). Its own failures go to stderr too; with --json one
JSON object (schema_version, code, message). Lease events while CMD runs, with --json:
{schema_version, event: lease_ended|daemon_back|release_failed, lease_id, cause}.

Exit status: CMD's, or 128+N when signal N ended it. run's own failures, CMD not run:
125 bad usage, job scope impossible, lease refused, overcommitd unreachable;
126 CMD found but cannot be executed; 127 CMD not found.";

const DAEMON_AFTER_HELP: &str = "\
Signals: SIGHUP reloads the configuration (a broken one is refused and the running one stays);
SIGTERM and SIGINT end all leases, leave the baseline in force and exit.

Files: /etc/overcommitd/overcommitd.toml and /etc/overcommitd/profiles.d/*.toml (configuration);
/run/overcommitd/overcommitd.sock (socket; or passed by systemd, LISTEN_FDS);
/run/overcommitd/state.json and journal.log (journal of baseline and leases: a snapshot and the
changes since, re-read after a restart).

Exit status: 0 stopped cleanly or configuration valid; 1 could not start; 2 invalid configuration.

The wire protocol (one JSON object per line) is described in the project's docs/protocol.md.";

/// A value that starts like an option is an option clap did not know (values may start with
/// `-` so that negative numbers reach our parsers and get a "negative" message).
fn not_an_option(text: &str) -> Result<(), String> {
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some('-'), Some(c)) if !(c.is_ascii_digit() || c == '.') => Err(format!(
            "unexpected option `{text}` (see --help; a value that starts with - goes after --)"
        )),
        _ => Ok(()),
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    not_an_option(text)?;
    crate::size::parse_size(text).map_err(|e| e.to_string())
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    not_an_option(text)?;
    text.parse()
        .map_err(|e: crate::model::ModeError| e.to_string())
}

/// Parses a mode like [`parse_mode`] and offers the mode names to shell completions (the
/// numbers are accepted too, but not offered).
#[derive(Clone)]
struct ModeParser;

impl clap::builder::TypedValueParser for ModeParser {
    type Value = Mode;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Mode, clap::Error> {
        let parse: fn(&str) -> Result<Mode, String> = parse_mode;
        clap::builder::TypedValueParser::parse_ref(&parse, cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            [Mode::Heuristic, Mode::Always, Mode::Never]
                .into_iter()
                .map(|m| clap::builder::PossibleValue::new(m.name())),
        ))
    }
}

/// Any dtype string (checked by [`crate::dtype`]); the common ones are offered to shell
/// completions.
#[derive(Clone)]
struct DtypeHints;

/// The dtypes offered to completions: NumPy's names and their one-letter codes.
const COMMON_DTYPES: &[&str] = &[
    "float64",
    "float32",
    "float16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint64",
    "uint32",
    "uint16",
    "uint8",
    "complex128",
    "complex64",
    "bool",
    "object",
    "f8",
    "f4",
    "f2",
    "i8",
    "i4",
    "i2",
    "i1",
    "u8",
    "u4",
    "u2",
    "u1",
    "c16",
    "c8",
    "datetime64[ns]",
    "timedelta64[ns]",
];

impl clap::builder::TypedValueParser for DtypeHints {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        value
            .to_str()
            .map(String::from)
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidUtf8).with_cmd(cmd))
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            COMMON_DTYPES
                .iter()
                .map(|d| clap::builder::PossibleValue::new(*d)),
        ))
    }
}

fn parse_ratio(text: &str) -> Result<u32, String> {
    not_an_option(text)?;
    match text.trim().trim_end_matches('%').parse::<i64>() {
        Ok(r) if (0..=100).contains(&r) => Ok(r as u32),
        Ok(r) if r < 0 => Err(format!(
            "ratio {r} is negative: expected a percentage from 0 to 100"
        )),
        Ok(r) => Err(format!(
            "ratio {r} is out of range: expected a percentage from 0 to 100"
        )),
        Err(_) => Err(format!(
            "ratio `{text}` is not a whole number: expected a percentage from 0 to 100"
        )),
    }
}

fn parse_kbytes(text: &str) -> Result<u64, String> {
    not_an_option(text)?;
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!(
            "kbytes `{text}` is negative: expected a whole number of kB, 1 or more"
        ));
    }
    match text.parse::<u64>() {
        Ok(0) => Err("kbytes 0 is not a limit (the kernel reads it as \"use the ratio\"): give --ratio instead".into()),
        Ok(k) => Ok(k),
        Err(_) => Err(format!("kbytes `{text}` is not a whole number of kB (1 or more)")),
    }
}

fn parse_pid(text: &str) -> Result<i32, String> {
    not_an_option(text)?;
    match text.trim().parse::<i64>() {
        Ok(pid) if pid <= 0 => Err(format!(
            "pid {pid} is {}: expected a process id (1 or more)",
            if pid < 0 { "negative" } else { "not a process" }
        )),
        Ok(pid) => i32::try_from(pid).map_err(|_| format!("pid {pid} is out of range")),
        Err(_) => Err(format!("pid `{text}` is not a whole number")),
    }
}

/// Parses durations such as `90s`, `30m`, `24h`, `1h 30m` (configuration values).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("duration `{text}` is not valid ({e}): expected e.g. 90s, 30m, 24h, 2h30m")
    })
}

/// Parses a lease's time to live: whole seconds, at least one (`90s`, `30m`, `24h`, `1h 30m`).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    not_an_option(text)?;
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(format!(
            "ttl `{trimmed}` is negative: expected a duration such as 90s, 30m, 24h or 2h30m"
        ));
    }
    let duration = humantime::parse_duration(trimmed).map_err(|e| {
        format!("ttl `{trimmed}` is not a duration ({e}): expected e.g. 90s, 30m, 24h, 2h30m")
    })?;
    if duration.is_zero() {
        return Err(format!(
            "ttl `{trimmed}` is zero: a lease lives at least 1s (e.g. 30m, 24h)"
        ));
    }
    if duration.subsec_nanos() != 0 {
        return Err(format!(
            "ttl `{trimmed}` is not a whole number of seconds: leases are timed in seconds"
        ));
    }
    Ok(duration)
}

/// Inspect, check, change and lease the kernel's memory-overcommit policy.
///
/// Exit codes: 0 ok / allowed / in line; 1 refused / borderline / drift / denied / a critical
/// finding; 2 bad usage, config or input; 3 daemon unreachable. --json: docs/json.md.
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
    /// Root under which the boot configuration is read: the sysctl.d directories,
    /// /etc/sysctl.conf, and systemd's unit directories (is overcommitd enabled?).
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
    /// Print one JSON object (docs/json.md) with exact figures instead of text; errors too.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for overcommitd, to connect and for each reply (e.g. 5s); a daemon
    /// that does not answer in time counts as unreachable (exit 3).
    #[arg(long, global = true, value_name = "DURATION", env = "OVERCOMMIT_TIMEOUT", value_parser = parse_timeout, default_value = "30s")]
    pub timeout: Duration,
}

/// A client timeout: from 1 ms to an hour.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    not_an_option(text)?;
    let duration = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("timeout `{text}` is not a duration ({e}): expected e.g. 500ms, 5s, 1m")
    })?;
    if duration < Duration::from_millis(1) || duration > Duration::from_secs(3600) {
        return Err(format!("timeout `{text}` is out of range: from 1ms to 1h"));
    }
    Ok(duration)
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Show the live policy, commit accounting, memory, boot configuration and findings
    /// (exit 1 when a finding is critical).
    Status(StatusArgs),
    /// Will ONE allocation of SIZE (or of a NumPy array) succeed now, and if not, what would allow it?
    Check(CheckArgs),
    /// Change the node's baseline policy (root; through the daemon when it runs).
    Set(SetArgs),
    /// Make PROFILE the baseline (root), or with --check only say what would change.
    Apply(ApplyArgs),
    /// Compare the kernel with a profile (default: what the daemon or the config expects).
    Verify(VerifyArgs),
    /// List the profiles (those overcommitd has loaded when it runs).
    Profiles(ProfilesArgs),
    /// Run CMD with overcommit for CMD alone (job scope) or under a node-wide lease that ends
    /// when CMD ends, however it ends.
    Run(RunArgs),
    /// Take a node-wide lease that lives until its TTL or `release` (for prolog/epilog scripts).
    Lease(LeaseArgs),
    /// End a lease, by id or by tag.
    Release(ReleaseArgs),
    /// List the live leases.
    Leases,
    /// Who holds the commit charge: per process, user, cgroup or job, and what no process holds.
    ///
    /// Adds up each process's mappings that the kernel charged to Committed_AS (VmFlags `ac` in
    /// /proc/PID/smaps) and names the rest: shared memory, SysV segments, and what is not
    /// visible from here. Processes are read under --proc-root, like Committed_AS, so that the
    /// rows add up. Root sees every process; other users see their own and are told how many
    /// they could not read.
    Top(TopArgs),
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
    /// One line for scripts and prompts: MODE LIMIT committed=USED/LIMIT STATE, where STATE is
    /// `ok` or the codes of the warnings and critical findings.
    #[arg(long, conflicts_with = "format")]
    pub short: bool,
}

/// Which allocation `check` asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AllocVia {
    /// glibc's malloc/calloc (NumPy, C, Fortran): mmap first, then brk when mmap fails.
    Malloc,
    /// One mmap of exactly SIZE bytes.
    Mmap,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("request").required(true).args(["size", "shape"]))]
pub struct CheckArgs {
    /// Bytes, or with K/M/G/T/P/E (powers of 1024, also KiB..EiB) or KB/MB/GB/TB/PB/EB (powers of 1000).
    #[arg(value_parser = parse_size, allow_hyphen_values = true)]
    pub size: Option<u64>,
    /// A NumPy array shape instead of SIZE, e.g. 210000x210000 or "(210000, 210000)".
    #[arg(
        long,
        value_name = "DIMS",
        conflicts_with = "size",
        allow_hyphen_values = true
    )]
    pub shape: Option<String>,
    /// The array's dtype, with --shape (any np.dtype string: float64, f8, int32, u1, complex128,
    /// object, datetime64[ns], U10, S, ...) [default: float64].
    #[arg(long, value_name = "DTYPE", value_parser = DtypeHints, hide_possible_values = true)]
    pub dtype: Option<String>,
    /// How the program allocates: malloc (glibc's malloc or calloc, as NumPy does) or one mmap.
    #[arg(long, value_enum, value_name = "HOW", default_value = "malloc")]
    pub via: AllocVia,
    #[command(flatten)]
    pub hypothetical: PolicyArgs,
    /// Assume this much swap in total.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    pub swap_total: Option<u64>,
    /// As an unprivileged process (the admin reserve applies). Default: as the caller.
    #[arg(long, conflicts_with = "root")]
    pub user: bool,
    /// As a process with CAP_SYS_ADMIN (exempt from the admin reserve).
    #[arg(long)]
    pub root: bool,
    /// As this process: its VmSize, RLIMIT_AS/RLIMIT_DATA, map count, privilege, cgroup, and
    /// (with --via malloc) the free space at the top of its heap.
    #[arg(long, value_name = "PID", value_parser = parse_pid, allow_hyphen_values = true)]
    pub pid: Option<i32>,
    /// Assume the process's VmSize is this (it sets the user reserve in mode never).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    pub vm_size: Option<u64>,
    /// Predict for a plain process (node, the default) or under `run --scope job`, where
    /// allocations of at least --min-size are MAP_NORESERVE (modes 0 and 1).
    #[arg(long, value_enum, value_name = "SCOPE")]
    pub scope: Option<CheckScope>,
    /// With --scope job: the job scope's threshold (default: half of MemTotal + SwapTotal).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    pub min_size: Option<u64>,
}

/// Whom `check` predicts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckScope {
    /// A process under the node's policy as it is.
    Node,
    /// A process under `overcommitctl run --scope job`.
    Job,
}

/// Where `run` makes overcommit apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The job scope where the kernel (modes 0, 1) and CMD (dynamically linked, not setuid)
    /// allow it and no lease option is given; else the node scope. Says which and why.
    Auto,
    /// Only CMD and its children, through a preload library that maps their large allocations
    /// with MAP_NORESERVE: no root, no daemon, the node's policy unchanged. Modes 0 and 1.
    Job,
    /// A lease from overcommitd: the policy of the whole node, for every process, while CMD runs.
    Node,
}

/// A policy given on the command line.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Overcommit mode: heuristic (0), always (1) or never (2).
    #[arg(long, value_name = "MODE", value_parser = ModeParser, hide_possible_values = true, allow_hyphen_values = true)]
    pub mode: Option<Mode>,
    /// Mode-never limit as a percentage of RAM (0..=100); mode never only.
    #[arg(long, value_name = "PERCENT", value_parser = parse_ratio, conflicts_with = "kbytes", allow_hyphen_values = true)]
    pub ratio: Option<u32>,
    /// Mode-never limit in kB; mode never only.
    #[arg(long, value_name = "KB", value_parser = parse_kbytes, allow_hyphen_values = true)]
    pub kbytes: Option<u64>,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// heuristic (0), always (1) or never (2).
    #[arg(value_parser = ModeParser, hide_possible_values = true, allow_hyphen_values = true)]
    pub mode: Mode,
    /// Mode-never limit as a percentage of RAM (0..=100).
    #[arg(long, value_name = "PERCENT", value_parser = parse_ratio, conflicts_with = "kbytes", allow_hyphen_values = true)]
    pub ratio: Option<u32>,
    /// Mode-never limit in kB.
    #[arg(long, value_name = "KB", value_parser = parse_kbytes, allow_hyphen_values = true)]
    pub kbytes: Option<u64>,
    /// Apply even if the new CommitLimit would be below Committed_AS plus the safety margin.
    #[arg(long)]
    pub force: bool,
    /// Write the kernel directly although overcommitd is expected on this node but does not
    /// answer (it will not know; the lockout guard still applies).
    #[arg(long)]
    pub direct: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    pub profile: String,
    /// Only say what would change: exit 0 if nothing, 1 if something would.
    #[arg(long, conflicts_with_all = ["force", "direct"])]
    pub check: bool,
    /// Apply even if the new CommitLimit would be below Committed_AS plus the safety margin.
    #[arg(long)]
    pub force: bool,
    /// Write the kernel directly although overcommitd is expected on this node but does not
    /// answer (it will not know; the lockout guard still applies).
    #[arg(long)]
    pub direct: bool,
}

#[derive(Debug, Args)]
pub struct ProfilesArgs {
    /// Only the names, one per line (for scripts and shell completion).
    #[arg(long, conflicts_with = "json")]
    pub names: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Compare with this profile. While leases are live, the daemon's baseline must be it and
    /// the kernel what it and the leases make (the leases are listed); see --strict.
    pub profile: Option<String>,
    /// With PROFILE: compare the kernel itself with the profile, whatever leases hold.
    #[arg(long, requires = "profile")]
    pub strict: bool,
    /// Without PROFILE: where to remember the drift already reported, so that drift the daemon
    /// found and enforced since the last verify is reported once ("none": do not). Default
    /// for root: /run/overcommit/verify-drift. Not used with PROFILE.
    #[arg(long, value_name = "FILE", env = "OVERCOMMIT_DRIFT_STATE")]
    pub drift_state: Option<PathBuf>,
}

/// Options of a lease request.
#[derive(Debug, Clone, Args)]
pub struct LeaseOptions {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// How long the lease may live at most, in whole seconds (e.g. 90s, 30m, 24h); default: the
    /// longest your [[access]] rule allows (root: the daemon's default_ttl).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, allow_hyphen_values = true)]
    pub ttl: Option<Duration>,
    /// Why (shown in `leases` and in the audit log).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// A tag to release the lease by (e.g. slurm-$SLURM_JOB_ID).
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_long_help = RUN_AFTER_HELP)]
pub struct RunArgs {
    /// auto, job (CMD and its children only) or node (a lease: every process on the node).
    #[arg(long, value_enum, default_value = "auto", value_name = "SCOPE")]
    pub scope: Scope,
    /// Job scope: allocations of at least SIZE are mapped with MAP_NORESERVE (default: half of
    /// MemTotal + SwapTotal; mode 0 refuses only single requests above MemTotal + SwapTotal).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    pub min_size: Option<u64>,
    /// Node scope: the lease's policy and options.
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
    /// Root only: a lease on behalf of this user (a job's: $SLURM_JOB_UID), judged by that
    /// user's [[access]] rule with that user's groups (modes, ratio, TTL, count). The lease is
    /// theirs (counted, listed, releasable by them); root is recorded as the requester.
    #[arg(long, value_name = "UID", value_parser = parse_uid, allow_hyphen_values = true)]
    pub for_uid: Option<u32>,
    /// The TTL from a Slurm time limit (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, UNLIMITED,
    /// INFINITE, NOT_SET) plus --ttl-grace. The rule's max_ttl shortens it rather than refuse
    /// it, and an unlimited job gets the longest the rule allows.
    #[arg(long, value_name = "TIME", conflicts_with = "ttl", value_parser = crate::slurm::parse_time_limit, allow_hyphen_values = true)]
    pub ttl_slurm: Option<crate::slurm::TimeLimit>,
    /// With --ttl-slurm: time added to the job's limit, for the epilog to release the lease.
    #[arg(long, value_name = "DURATION", requires = "ttl_slurm", value_parser = parse_duration, default_value = "10m")]
    pub ttl_grace: Duration,
}

fn parse_uid(text: &str) -> Result<u32, String> {
    not_an_option(text)?;
    text.trim()
        .parse()
        .map_err(|_| format!("uid `{text}` is not a user id (a whole number, 0 to 4294967295)"))
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

/// Seconds between refreshes of `top --watch`: 0.1 up to a day.
fn parse_interval(text: &str) -> Result<Duration, String> {
    match text.trim().trim_end_matches('s').parse::<f64>() {
        Ok(secs) if (0.1..=86400.0).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "interval `{text}` is not valid: expected seconds from 0.1 to 86400, e.g. 2 or 0.5"
        )),
    }
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Group by process, user, cgroup, or job (Slurm job id from the cgroup, else the tag of a
    /// lease held by the process or an ancestor).
    #[arg(long, value_enum, default_value = "process")]
    pub by: crate::charge::GroupBy,
    /// Show the N largest holders and sum the rest in one row (0: all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// Refresh every SECS seconds, in place on a terminal, until interrupted.
    #[arg(long, value_name = "SECS", value_parser = parse_interval)]
    pub watch: Option<Duration>,
    /// Output format (--json is the same as --format json).
    #[arg(long, value_enum, default_value = "text")]
    pub format: StatusFormat,
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
    /// Root under which the sysctl.d directories are read (the node's boot policy).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub sysctl_root: PathBuf,
    /// Validate the configuration and exit (0 valid, 2 invalid).
    #[arg(long)]
    pub check_config: bool,
    /// With --check-config: read the profiles from DIR instead of profiles.d beside --config
    /// (to check a candidate file written elsewhere, such as Ansible's `validate:` copy).
    #[arg(long, value_name = "DIR", requires = "check_config")]
    pub profiles_dir: Option<PathBuf>,
    /// Where to log: journald when stderr is connected to it, else syslog, else stderr.
    #[arg(long, value_enum, default_value = "auto")]
    pub log: crate::logging::LogTarget,
    /// Log at debug level.
    #[arg(long, short)]
    pub verbose: bool,
}
