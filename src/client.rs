//! The reference client of the daemon's protocol: connect, send one request line, read one
//! reply line.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::protocol::{request_line, ErrorCode, Reply, Request, PROTOCOL_VERSION};

/// How long connecting, and then each reply, may take (milliseconds): the daemon answers in
/// microseconds, but a kernel write can stall, and a hung daemon must not hang its callers
/// (a Slurm prolog, a node health check). `--timeout` sets it.
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(30_000);

/// Sets how long connecting and each reply may take, for every later call of this process.
pub fn set_timeout(timeout: Duration) {
    let ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Shown with what the failure most likely means and what to do ([`unreachable_hint`],
    /// worked out only when shown: `status` asks the daemon and goes on without it).
    #[error("cannot reach overcommitd at {}: {}", path.display(), unreachable_hint(path, source))]
    Unreachable { path: PathBuf, source: io::Error },
    #[error("overcommitd at {} did not answer within {} (hung or overloaded; --timeout sets the wait)", path.display(), humantime::format_duration(*after))]
    Timeout { path: PathBuf, after: Duration },
    #[error("lost the connection to overcommitd: {0}")]
    Io(#[from] io::Error),
    #[error("overcommitd sent a reply this client cannot read: {0}")]
    BadReply(String),
    #[error("overcommitd: {message} [{}]", code_name(*code))]
    Daemon { code: ErrorCode, message: String },
}

/// The stable name of a protocol error code, as it is on the wire.
pub fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// Says why connecting to `path` failed with `error`, in words that fit the failure: no
/// socket, nothing listening, or not permitted (with the modes that decide it).
pub fn unreachable_hint(path: &Path, error: &io::Error) -> String {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = path.parent().unwrap_or(Path::new("/"));
    let owner = |meta: &std::fs::Metadata| {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
            .ok()
            .flatten()
            .map_or(meta.uid().to_string(), |u| u.name);
        let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(meta.gid()))
            .ok()
            .flatten()
            .map_or(meta.gid().to_string(), |g| g.name);
        format!("mode {:04o}, owner {user}:{group}", meta.mode() & 0o7777)
    };
    let socket_meta = || std::fs::symlink_metadata(path);
    match error.kind() {
        io::ErrorKind::NotFound if !dir.exists() => format!(
            "{error}: the directory {} does not exist (overcommitd has not run since boot, or --socket / OVERCOMMIT_SOCKET names another path; `systemctl status overcommitd`)",
            dir.display()
        ),
        io::ErrorKind::NotFound => format!(
            "{error}: there is no socket there (overcommitd is not running, or --socket / OVERCOMMIT_SOCKET names another path; `systemctl status overcommitd`)"
        ),
        io::ErrorKind::ConnectionRefused => match &socket_meta() {
            Ok(meta) if !meta.file_type().is_socket() => format!(
                "{error}: {} is not a socket (check --socket / OVERCOMMIT_SOCKET)",
                path.display()
            ),
            _ => format!(
                "{error}: the socket exists but nothing listens on it (overcommitd stopped or crashed and left it behind; `systemctl status overcommitd`)"
            ),
        },
        io::ErrorKind::PermissionDenied => {
            let socket = match &socket_meta() {
                Ok(meta) => format!("the socket has {}", owner(meta)),
                Err(_) => "the socket cannot even be looked at".to_string(),
            };
            let directory = match std::fs::metadata(dir) {
                Ok(meta) => format!("{} has {}", dir.display(), owner(&meta)),
                Err(e) => format!("{}: {e}", dir.display()),
            };
            format!(
                "{error}: {socket}; {directory}. This user (uid {}) may not connect: overcommitd's socket is normally mode 0666 in a directory everyone may enter, so ask an admin",
                nix::unistd::geteuid()
            )
        }
        _ => error.to_string(),
    }
}

impl ClientError {
    /// `overcommitctl`'s exit code for this error (3: daemon unreachable).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => 3,
            ClientError::Io(_) | ClientError::BadReply(_) => 3,
            ClientError::Daemon { code, .. } => code.exit_code(),
        }
    }
}

/// A connection to overcommitd.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: PathBuf,
}

/// Connects within `timeout`: a daemon that stopped accepting fills its listen backlog, and a
/// blocking connect would then wait forever.
fn connect_within(path: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let unreachable = |source: io::Error| ClientError::Unreachable {
        path: path.to_path_buf(),
        source,
    };
    let address = UnixAddr::new(path).map_err(|e| unreachable(e.into()))?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let deadline = Instant::now() + timeout;
    loop {
        use std::os::fd::AsRawFd;
        match connect(fd.as_raw_fd(), &address) {
            Ok(()) => break,
            // The backlog is full: the daemon is not accepting (yet).
            Err(nix::Error::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(nix::Error::EAGAIN) => {
                return Err(ClientError::Timeout {
                    path: path.to_path_buf(),
                    after: timeout,
                })
            }
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(unreachable(e.into())),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let timeout = timeout();
        let stream = connect_within(path, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
            path: path.to_path_buf(),
        })
    }

    /// A read or write that ran into the timeout is the daemon not answering.
    fn timed_out(&self, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                path: self.path.clone(),
                after: timeout(),
            },
            _ => ClientError::Io(e),
        }
    }

    /// Sends `request` and returns its result, or the daemon's error.
    pub fn call<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        // A daemon that refuses the connection (too many open) replies and closes at once: the
        // write may then fail, but its reply is still there to read.
        let written = self.writer.write_all(&request_line(request));
        let mut line = String::new();
        let read = self.reader.read_line(&mut line);
        if line.is_empty() {
            written.map_err(|e| self.timed_out(e))?;
        }
        if read.map_err(|e| self.timed_out(e))? == 0 {
            return Err(ClientError::BadReply(
                "the daemon closed the connection without a reply".into(),
            ));
        }
        let reply: Reply =
            serde_json::from_str(&line).map_err(|e| ClientError::BadReply(e.to_string()))?;
        if reply.v != PROTOCOL_VERSION {
            return Err(ClientError::BadReply(format!(
                "protocol version {} (this client speaks {PROTOCOL_VERSION})",
                reply.v
            )));
        }
        match (reply.ok, reply.result, reply.error) {
            (true, Some(result), _) => {
                serde_json::from_value(result).map_err(|e| ClientError::BadReply(e.to_string()))
            }
            (false, _, Some(error)) => Err(ClientError::Daemon {
                code: error.code,
                message: error.message,
            }),
            _ => Err(ClientError::BadReply(
                "neither a result nor an error".into(),
            )),
        }
    }
}

/// Connects and makes one call.
pub fn call<T: DeserializeOwned>(socket: &Path, request: &Request) -> Result<T, ClientError> {
    Client::connect(socket)?.call(request)
}
