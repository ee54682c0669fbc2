//! `overcommitd`: owns the node's overcommit policy, applies the baseline, and grants leases
//! to jobs through a Unix socket. [`engine`] makes every decision; [`server`] answers requests
//! with it; [`event_loop`] and [`sources`] move bytes and events; [`peer`] asks the kernel who
//! is who; [`audit`] writes one record per change.

pub mod audit;
pub mod engine;
mod event_loop;
pub mod peer;
pub mod server;
mod sources;

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use log::{error, info, warn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::auth::Authorizer;
use crate::cli::DaemonCli;
use crate::config::{Config, ConfigError};
use crate::journal::{Journal, JournalError};
use crate::kernel::{ProcFiles, ProcRoot};
use crate::lease::LeaseId;
use crate::logging;
use crate::model::{Knob, Limit, Mode, Policy};
use crate::sysctl_d::{Origin, Setting, SysctlSources};

pub use engine::{DaemonError, Engine};
pub use server::Server;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    StateDir(#[from] JournalError),
    #[error("socket {path}: {source}")]
    Socket { path: String, source: io::Error },
    #[error("another overcommitd is already listening on {0}")]
    AlreadyRunning(String),
    #[error("cannot set up signals or the event loop: {0}")]
    Setup(#[from] nix::Error),
    #[error("cannot draw random lease ids: {0}")]
    Random(getrandom::Error),
}

impl StartError {
    /// 2 for configuration problems (as `--check-config`), 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// Runs `overcommitd`; returns its exit code.
pub fn run(cli: DaemonCli) -> u8 {
    if cli.check_config {
        let loaded = match &cli.profiles_dir {
            Some(dir) => Config::load_with_profiles(&cli.config, dir),
            None => Config::load(&cli.config),
        };
        return match loaded {
            Ok(config) => {
                let (_, warnings) = Authorizer::new(&config);
                for warning in &warnings {
                    eprintln!("overcommitd: warning: {}: {warning}", cli.config.display());
                }
                println!(
                    "{}: valid ({} profiles, {} access rules, baseline {})",
                    cli.config.display(),
                    config.profiles.len(),
                    config.access.len(),
                    config
                        .daemon
                        .baseline
                        .as_deref()
                        .unwrap_or("the node's boot policy")
                );
                0
            }
            Err(e) => {
                eprintln!("overcommitd: {e}");
                2
            }
        };
    }
    logging::init(cli.log, cli.verbose);
    match serve(&cli) {
        Ok(()) => 0,
        Err(e) => {
            error!("{e}");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!("failed: {e}"))]);
            e.exit_code()
        }
    }
}

/// The node's boot policy: what sysctl.d (and the kernel command line) set at boot, else the
/// kernel's defaults (heuristic, ratio 50). Never the kernel's current values, which may be a
/// lease's.
pub fn boot_policy(sources: &SysctlSources, cmdline: &str) -> Policy {
    let keys: Vec<String> = [
        Knob::OvercommitMemory,
        Knob::OvercommitRatio,
        Knob::OvercommitKbytes,
    ]
    .iter()
    .map(|k| k.sysctl_key())
    .collect();
    let boot = sources.boot_config(cmdline, &keys);
    let winner = |i: usize| boot.values.get(&keys[i]).map(|v| &v.winner);
    let mode = winner(0)
        .and_then(|s| s.value.parse::<Mode>().ok())
        .unwrap_or(Mode::Heuristic);
    let ratio = winner(1).and_then(|s| {
        let limit = s
            .value
            .trim()
            .parse()
            .ok()
            .and_then(|r| Limit::ratio(r).ok())?;
        Some((s, limit))
    });
    let kbytes = winner(2).and_then(|s| {
        let kb = crate::kernel::parse_unsigned(&s.value)?;
        Some((s, Limit::kbytes(kb).ok()?))
    });
    // Writing one of the pair zeroes the other: the one applied last wins.
    let applied = |s: &Setting| {
        let rank = match s.origin {
            Origin::KernelCmdline => 0,
            Origin::SysctlD => 1,
            Origin::SysctlConf => 2,
        };
        (rank, s.file.file_name().map(|n| n.to_owned()), s.line)
    };
    let limit = match (ratio, kbytes) {
        (Some((r, ratio)), Some((k, kbytes))) => {
            if applied(k) > applied(r) {
                kbytes
            } else {
                ratio
            }
        }
        (Some((_, limit)), None) | (None, Some((_, limit))) => limit,
        (None, None) => Limit::Ratio(50),
    };
    Policy { mode, limit }
}

/// The baseline the configuration names (or the boot policy), for the one write a daemon
/// that must exit makes first.
fn known_baseline(config: &Config, boot: Policy) -> (Policy, Option<u64>) {
    match config.baseline_profile() {
        Some(profile) => (profile.policy(boot.limit), profile.swappiness),
        None => (boot, None),
    }
}

fn serve(cli: &DaemonCli) -> Result<(), StartError> {
    // Signals arrive through a signalfd, so they must not be delivered the usual way.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals.thread_block()?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    // Large buffers (a snapshot read at start, a `leases` reply of MiBs) are mapped apart and
    // given back when freed; glibc would otherwise raise this threshold after the first one
    // and keep such memory in its heap.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes a setting of the allocator; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
    let open_files = raise_fd_limit();

    let config = Config::load(&cli.config)?;
    let (authorizer, warnings) = Authorizer::new(&config);
    for warning in warnings {
        warn!("{}: {warning}", cli.config.display());
    }
    let proc_root = ProcRoot::new(&cli.proc_root);
    let boot = boot_policy(
        &SysctlSources::under(&cli.sysctl_root),
        &proc_root.read_cmdline(),
    );
    // The socket first: by default it shares /run/overcommitd with the journal, and creates it
    // open to all (the journal would create it 0700).
    let listener = listening_socket(&cli.socket)?;
    let journal = match Journal::open(&cli.state_dir) {
        Ok(journal) => journal,
        Err(e) => {
            // Exiting with a lease's policy in force would leave it there: put the known
            // baseline back first (the lockout guard still applies).
            let (policy, swappiness) = known_baseline(&config, boot);
            let margin = config.daemon.lockout_margin;
            match crate::change::guarded_write(&proc_root, &policy, swappiness, margin, false) {
                Ok(_) => error!(
                    "cannot use the state directory; put the baseline {policy} back before exiting"
                ),
                Err(w) => error!(
                    "cannot use the state directory, nor put the baseline {policy} back: {w}"
                ),
            }
            return Err(e.into());
        }
    };
    // Lease ids need the kernel's random pool. Early in boot it may not be ready yet: wait
    // for it here, before READY, so that no later draw can stall the event loop.
    LeaseId::new().map_err(StartError::Random)?;

    let settings = config.daemon.clone();
    // Room for the kernel files, the journal, the log and the loop itself.
    const RESERVED_FDS: usize = 64;
    let max_clients = settings
        .max_clients
        .min(open_files.saturating_sub(RESERVED_FDS + sources::ROOT_RESERVE))
        .max(1);
    if max_clients < settings.max_clients {
        warn!(
            "max_clients {} does not fit the open-file limit {open_files}: serving at most {max_clients} connections",
            settings.max_clients
        );
    }
    let now = peer::boottime();
    let options = engine::StartOptions {
        config,
        authorizer,
        boot,
        boot_id: peer::boot_id(),
    };
    let kernel = ProcFiles::open(proc_root);
    let (engine, watches) = Engine::start(kernel, journal, options, now, peer::reopen_holder);
    // What loading the journal took.
    server::give_back_memory();
    let connections = sources::Connections::new(max_clients);
    let mut server = Server::new(engine, connections.clone());
    let mut event_loop = event_loop::EventLoop::new()?;
    let listener = sources::Listener::new(listener, settings.client_timeout, connections).map_err(
        |source| StartError::Socket {
            path: cli.socket.display().to_string(),
            source,
        },
    )?;
    event_loop.add(Box::new(listener));
    event_loop.add(Box::new(sources::Signals { fd: signal_fd }));
    for (lease, pidfd) in watches {
        let token = event_loop.add(Box::new(sources::HolderWatch { lease, pidfd }));
        server.watching(lease, token);
    }
    if let Some(interval) = sd_notify::watchdog_enabled() {
        server.enable_watchdog(interval / 2, now);
    }
    info!(
        "overcommitd {} ready on {} (journal {}): {}",
        env!("CARGO_PKG_VERSION"),
        cli.socket.display(),
        cli.state_dir.display(),
        server.engine.status_line()
    );
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&server.engine.status_line()),
    ]);

    event_loop.run(&mut server);

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    server.engine.shutdown(peer::boottime());
    info!("stopped: {}", server.engine.status_line());
    Ok(())
}

/// The socket handed over by systemd (LISTEN_FDS), or a new one bound at `path`, open to all
/// users: authorization is by peer credentials, not by file mode.
fn listening_socket(path: &Path) -> Result<UnixListener, StartError> {
    let socket_error = |source| StartError::Socket {
        path: path.display().to_string(),
        source,
    };
    if let Ok(mut fds) = sd_notify::listen_fds() {
        if let Some(fd) = fds.next() {
            // SAFETY: systemd passed this fd to us to own; LISTEN_FDS says it is ours.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            info!("using the socket passed by systemd");
            return Ok(UnixListener::from(owned));
        }
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(socket_error)?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(StartError::AlreadyRunning(path.display().to_string()));
            }
            fs::remove_file(path).map_err(socket_error)?;
        }
        Ok(_) => {
            return Err(socket_error(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(socket_error)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).map_err(socket_error)?;
    Ok(listener)
}

/// Room for max_clients connections plus pidfds: the soft fd limit up to the hard one.
/// Returns the limit in force.
fn raise_fd_limit() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard as usize,
            Err(e) => {
                warn!("cannot raise the open-file limit: {e}");
                soft as usize
            }
        },
        Ok((soft, _)) => soft as usize,
        Err(_) => 1024,
    }
}
