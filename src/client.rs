//! The reference client of the daemon's protocol: connect, send one request line, read one
//! reply line.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::protocol::{request_line, ErrorCode, Reply, Request, PROTOCOL_VERSION};

/// How long a reply may take: the daemon answers in microseconds, but a kernel write can stall.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach overcommitd at {}: {source} (is it running? try `systemctl status overcommitd`)", path.display())]
    Unreachable { path: PathBuf, source: io::Error },
    #[error("lost the connection to overcommitd: {0}")]
    Io(#[from] io::Error),
    #[error("overcommitd sent a reply this client cannot read: {0}")]
    BadReply(String),
    #[error("overcommitd: {message} [{}]", serde_json::to_value(code).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default())]
    Daemon { code: ErrorCode, message: String },
}

impl ClientError {
    /// `overcommitctl`'s exit code for this error (3: daemon unreachable).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } => 3,
            ClientError::Io(_) | ClientError::BadReply(_) => 3,
            ClientError::Daemon { code, .. } => code.exit_code(),
        }
    }
}

/// A connection to overcommitd.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Unreachable {
            path: path.to_path_buf(),
            source,
        })?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `request` and returns its result, or the daemon's error.
    pub fn call<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        // A daemon that refuses the connection (too many open) replies and closes at once: the
        // write may then fail, but its reply is still there to read.
        let written = self.writer.write_all(&request_line(request));
        let mut line = String::new();
        let read = self.reader.read_line(&mut line);
        if line.is_empty() {
            written?;
        }
        if read? == 0 {
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
