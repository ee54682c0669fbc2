//! The daemon's log, through the `log` facade: journald's native protocol where journald is
//! there (one datagram per record, structured fields, so no text can forge a record), else
//! the local syslog socket, else stderr. In text targets every control or format character of
//! a message is escaped: a message is always one line.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::protocol::is_format_char;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTarget {
    /// journald if stderr is connected to it, else syslog, else stderr.
    Auto,
    Journal,
    Syslog,
    Stderr,
}

/// journald's socket for the native protocol.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// For tests only: a socket to use instead of [`JOURNAL_SOCKET`].
pub const JOURNAL_SOCKET_ENV: &str = "OVERCOMMITD_JOURNAL_SOCKET";
/// The records filed at priority 2 (critical).
const CRITICAL_TARGET: &str = crate::daemon::audit::CRITICAL;

fn syslog_priority(record: &Record<'_>) -> u8 {
    if record.target() == CRITICAL_TARGET {
        return 2;
    }
    match record.level() {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// This process's id, as text: looked up once (getpid(2) is a system call each time).
fn pid() -> &'static str {
    static PID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PID.get_or_init(|| std::process::id().to_string())
}

/// `text` with control and format characters escaped: one line that shows what it holds.
pub fn one_line(text: &str) -> Cow<'_, str> {
    // Printable ASCII (nearly every line) needs no look at its characters one by one.
    if text.bytes().all(|b| (0x20..0x7f).contains(&b))
        || !text.chars().any(|c| c.is_control() || is_format_char(c))
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() || is_format_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A record in journald's native format: `KEY=value\n` fields, or, for values holding a
/// newline, `KEY\n` + the length as 64-bit little-endian + the value + `\n`.
pub fn journal_record(record: &Record<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut field = |key: &str, value: &[u8]| {
        out.extend_from_slice(key.as_bytes());
        if value.contains(&b'\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value);
        out.push(b'\n');
    };
    field("MESSAGE", record.args().to_string().as_bytes());
    field("PRIORITY", syslog_priority(record).to_string().as_bytes());
    field("SYSLOG_IDENTIFIER", b"overcommitd");
    field("SYSLOG_PID", pid().as_bytes());
    field("OVERCOMMIT_TARGET", record.target().as_bytes());
    struct Fields<'a, F: FnMut(&str, &[u8])>(&'a mut F);
    impl<'kvs, F: FnMut(&str, &[u8])> VisitSource<'kvs> for Fields<'_, F> {
        fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
            // Journal field names: upper-case letters, digits and underscores.
            let name: String = key
                .as_str()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            (self.0)(&format!("OVERCOMMIT_{name}"), value.to_string().as_bytes());
            Ok(())
        }
    }
    let _ = record.key_values().visit(&mut Fields(&mut field));
    out
}

/// journald's native protocol over its datagram socket.
struct JournalLogger {
    socket: UnixDatagram,
    path: PathBuf,
}

impl JournalLogger {
    fn connect() -> Option<JournalLogger> {
        let path = std::env::var_os(JOURNAL_SOCKET_ENV)
            .map_or_else(|| PathBuf::from(JOURNAL_SOCKET), PathBuf::from);
        let socket = UnixDatagram::unbound().ok()?;
        // journald discards an empty datagram: this only checks that someone listens.
        socket.send_to(&[], &path).ok()?;
        Some(JournalLogger { socket, path })
    }
}

impl Log for JournalLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if self
            .socket
            .send_to(&journal_record(record), &self.path)
            .is_err()
        {
            // journald is gone or the record too large: stderr still reaches someone.
            StderrLogger { prefixes: true }.log(record);
        }
    }

    fn flush(&self) {}
}

/// stderr, with `<N>` priority prefixes when journald reads it, plain text otherwise.
struct StderrLogger {
    prefixes: bool,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // The whole line in one write(2): stderr is unbuffered, and a line written in pieces
        // costs a system call per piece and may interleave with another writer's.
        let mut line = String::with_capacity(256);
        let priority = syslog_priority(record);
        let _ = if self.prefixes {
            write!(line, "<{priority}>")
        } else {
            let level = match (priority, record.level()) {
                (2, _) => "critical",
                (_, Level::Error) => "error",
                (_, Level::Warn) => "warn",
                (_, Level::Info) => "info",
                (_, Level::Debug) => "debug",
                (_, Level::Trace) => "trace",
            };
            write!(line, "overcommitd[{}]: {level}: ", pid())
        };
        let start = line.len();
        let _ = write!(line, "{}", record.args());
        if let Cow::Owned(escaped) = one_line(&line[start..]) {
            line.truncate(start);
            line.push_str(&escaped);
        }
        line.push('\n');
        // A failed log write has nowhere to be reported; the daemon carries on.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Any logger, with messages made one line first (syslog splits on nothing).
struct OneLine(Box<dyn Log>);

impl Log for OneLine {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        let text = record.args().to_string();
        let message = one_line(&text);
        self.0.log(
            &Record::builder()
                .args(format_args!("{message}"))
                .metadata(record.metadata().clone())
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// True when stderr is the stream systemd connected to journald (JOURNAL_STREAM=dev:ino).
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(stat.st_dev) && ino.parse::<u64>().ok() == Some(stat.st_ino)
}

fn syslog_logger() -> Option<Box<dyn Log>> {
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: "overcommitd".into(),
        pid: std::process::id(),
    };
    syslog::unix(formatter)
        .ok()
        .map(|logger| Box::new(OneLine(Box::new(syslog::BasicLogger::new(logger)))) as Box<dyn Log>)
}

fn journal_or_stderr() -> (Box<dyn Log>, LogTarget) {
    match JournalLogger::connect() {
        Some(logger) => (Box::new(logger), LogTarget::Journal),
        None => (
            Box::new(StderrLogger { prefixes: true }),
            LogTarget::Journal,
        ),
    }
}

/// Installs the logger; returns the target chosen. Call once.
pub fn init(target: LogTarget, verbose: bool) -> LogTarget {
    let stderr = || -> (Box<dyn Log>, LogTarget) {
        (
            Box::new(StderrLogger { prefixes: false }),
            LogTarget::Stderr,
        )
    };
    let (logger, chosen) = match target {
        LogTarget::Journal => journal_or_stderr(),
        LogTarget::Stderr => stderr(),
        LogTarget::Syslog => syslog_logger().map_or_else(stderr, |l| (l, LogTarget::Syslog)),
        LogTarget::Auto if stderr_is_journal() => journal_or_stderr(),
        LogTarget::Auto => syslog_logger().map_or_else(stderr, |l| (l, LogTarget::Syslog)),
    };
    log::set_max_level(if verbose {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    });
    // Fails only if a logger is already installed, which leaves that one in place.
    let _ = log::set_boxed_logger(logger);
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(mut bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut fields = Vec::new();
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n' || b == b'=').unwrap();
            let key = String::from_utf8(bytes[..end].to_vec()).unwrap();
            if bytes[end] == b'=' {
                let rest = &bytes[end + 1..];
                let nl = rest.iter().position(|&b| b == b'\n').unwrap();
                fields.push((key, rest[..nl].to_vec()));
                bytes = &rest[nl + 1..];
            } else {
                let len = u64::from_le_bytes(bytes[end + 1..end + 9].try_into().unwrap()) as usize;
                let value = bytes[end + 9..end + 9 + len].to_vec();
                assert_eq!(bytes[end + 9 + len], b'\n');
                fields.push((key, value));
                bytes = &bytes[end + 10 + len..];
            }
        }
        fields
    }

    #[test]
    fn a_forged_line_stays_inside_its_field() {
        let comm = "a\n<3>FORGED";
        let bytes = journal_record(
            &Record::builder()
                .args(format_args!("audit: comm={comm}"))
                .level(Level::Info)
                .target("overcommitd::audit")
                .key_values(&[("comm", comm), ("op", "lease")])
                .build(),
        );
        let fields = parse(&bytes);
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("MESSAGE").unwrap(), b"audit: comm=a\n<3>FORGED");
        assert_eq!(get("OVERCOMMIT_COMM").unwrap(), comm.as_bytes());
        assert_eq!(get("OVERCOMMIT_OP").unwrap(), b"lease");
        assert_eq!(get("PRIORITY").unwrap(), b"6");
        assert_eq!(fields.iter().filter(|(k, _)| k == "PRIORITY").count(), 1);
    }

    #[test]
    fn critical_records_get_priority_2() {
        let bytes = journal_record(
            &Record::builder()
                .args(format_args!("x"))
                .level(Level::Error)
                .target(CRITICAL_TARGET)
                .build(),
        );
        assert!(parse(&bytes).contains(&("PRIORITY".into(), b"2".to_vec())));
    }

    #[test]
    fn text_messages_are_one_line() {
        assert_eq!(one_line("plain \"quoted\""), "plain \"quoted\"");
        assert_eq!(one_line("a\n<3>FORGED"), "a\\n<3>FORGED");
        assert_eq!(one_line("r\u{202E}l"), "r\\u{202e}l");
    }
}
