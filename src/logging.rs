//! The daemon's log, through the `log` facade: journald when stderr is connected to it
//! (priority prefixes it parses, sd-daemon(3)), else the local syslog socket, else stderr.

use std::io::Write;
use std::os::fd::AsFd;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTarget {
    /// journald if stderr is connected to it, else syslog, else stderr.
    Auto,
    Journal,
    Syslog,
    Stderr,
}

/// stderr, with `<N>` priority prefixes when journald reads it, plain text otherwise.
struct StderrLogger {
    journal: bool,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut err = std::io::stderr().lock();
        // A failed log write has nowhere to be reported; the daemon carries on.
        let _ = if self.journal {
            let priority = match record.level() {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            writeln!(err, "<{priority}>{}", record.args())
        } else {
            writeln!(
                err,
                "overcommitd[{}]: {}: {}",
                std::process::id(),
                record.level().as_str().to_lowercase(),
                record.args()
            )
        };
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
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
        .map(|logger| Box::new(syslog::BasicLogger::new(logger)) as Box<dyn Log>)
}

/// Installs the logger; returns the target chosen. Call once.
pub fn init(target: LogTarget, verbose: bool) -> LogTarget {
    let (logger, chosen): (Box<dyn Log>, LogTarget) = match target {
        LogTarget::Journal => (Box::new(StderrLogger { journal: true }), LogTarget::Journal),
        LogTarget::Stderr => (Box::new(StderrLogger { journal: false }), LogTarget::Stderr),
        LogTarget::Syslog => match syslog_logger() {
            Some(logger) => (logger, LogTarget::Syslog),
            None => (Box::new(StderrLogger { journal: false }), LogTarget::Stderr),
        },
        LogTarget::Auto if stderr_is_journal() => {
            (Box::new(StderrLogger { journal: true }), LogTarget::Journal)
        }
        LogTarget::Auto => match syslog_logger() {
            Some(logger) => (logger, LogTarget::Syslog),
            None => (Box::new(StderrLogger { journal: false }), LogTarget::Stderr),
        },
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
