//! `overcommitd`: owns the node's overcommit policy, applies the baseline, and grants leases
//! to jobs through a Unix socket. [`server`] holds the state and answers requests;
//! [`event_loop`] and [`sources`] move bytes and events; [`peer`] asks the kernel who is who.

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

use crate::cli::DaemonCli;
use crate::config::Config;
use crate::logging;

pub use server::{DaemonError, Server, ServerOptions};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Server(#[from] DaemonError),
    #[error("socket {path}: {source}")]
    Socket { path: String, source: io::Error },
    #[error("another overcommitd is already listening on {0}")]
    AlreadyRunning(String),
    #[error("cannot set up signals or the event loop: {0}")]
    Setup(#[from] nix::Error),
}

impl StartError {
    /// 2 for configuration problems (as `--check-config`), 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Server(DaemonError::Config(_)) => 2,
            _ => 1,
        }
    }
}

/// Runs `overcommitd`; returns its exit code.
pub fn run(cli: DaemonCli) -> u8 {
    if cli.check_config {
        return match Config::load(&cli.config) {
            Ok(config) => {
                let (_, warnings) = crate::auth::Authorizer::new(&config);
                for warning in &warnings {
                    eprintln!("overcommitd: warning: {}: {warning}", cli.config.display());
                }
                println!(
                    "{}: valid ({} profiles, {} access rules, baseline {})",
                    cli.config.display(),
                    config.profiles.len(),
                    config.access.len(),
                    config.daemon.baseline.as_deref().unwrap_or("as found")
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

fn serve(cli: &DaemonCli) -> Result<(), StartError> {
    // Signals arrive through a signalfd, so they must not be delivered the usual way.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals.thread_block()?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    raise_fd_limit();

    let options = ServerOptions {
        proc_root: cli.proc_root.clone(),
        config: cli.config.clone(),
        state_dir: cli.state_dir.clone(),
    };
    let listener = listening_socket(&cli.socket)?;
    let server::Startup {
        mut server,
        watches,
    } = Server::start(&options)?;
    let settings = server.config().daemon.clone();
    let mut event_loop = event_loop::EventLoop::new(settings.max_clients)?;
    let listener = sources::Listener::new(listener, settings.client_timeout).map_err(|source| {
        StartError::Socket {
            path: cli.socket.display().to_string(),
            source,
        }
    })?;
    event_loop.add(Box::new(listener));
    event_loop.add(Box::new(sources::Signals { fd: signal_fd }));
    for (lease, pidfd) in watches {
        event_loop.add(Box::new(sources::HolderWatch { lease, pidfd }));
    }
    if let Some(interval) = sd_notify::watchdog_enabled() {
        server.enable_watchdog(interval / 2);
    }
    info!(
        "overcommitd {} ready on {} (journal {}): {}",
        env!("CARGO_PKG_VERSION"),
        cli.socket.display(),
        server.journal_path().display(),
        server.status_line()
    );
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&server.status_line()),
    ]);

    event_loop.run(&mut server);

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    server.shutdown();
    info!("stopped: {}", server.status_line());
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
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!("cannot raise the open-file limit: {e}");
            }
        }
    }
}
