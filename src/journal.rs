//! The daemon's crash-safe journal: the intended state (baseline, leases), durable before the
//! kernel is touched. Two files in the state directory:
//!
//! - `state.json`, a snapshot of the whole state with a generation number, written atomically
//!   (a fresh temporary file, fsync, rename over the old one, fsync the directory);
//! - `journal.log`, the changes since that snapshot: one record per change, appended with one
//!   write(2) and one fdatasync(2), so that a grant costs the same with 10 leases or 10,000.
//!
//! A record is one line, `LEN CRC JSON\n`: the length of the JSON in decimal, its CRC-32 in
//! hex, and the JSON, which names the generation of the snapshot it follows and its sequence
//! number. On load the records of the snapshot's generation are replayed in order. A crash can
//! only tear the last record: the first record that is cut short, fails its checksum or comes
//! out of sequence ends the log, and the bytes from it on are ignored (and cut off before the
//! next append), never read as a change. Records of an older generation (a snapshot was
//! written, then the daemon died before emptying the log) are skipped. When the log outgrows
//! the snapshot, the daemon compacts: a new snapshot (the next generation), then the log
//! emptied.
//!
//! On tmpfs (/run on most systems) fsync and fdatasync cost next to nothing and protect nothing
//! across a reboot, which the journal does not need (it belongs to one boot); they are called
//! all the same, so the order of the durable steps does not depend on the filesystem.
//!
//! The directory must be root's own (or the daemon user's), 0700, and is never reached through
//! a symlink; the files in it are opened without following symlinks or blocking, and anything
//! but a regular file of ours is refused. The daemon reaches it through [`JournalStore`], so
//! tests inject failures (ENOSPC, EIO).

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use log::warn;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode as FileMode;
use nix::unistd::UnlinkatFlags;
use serde::{Deserialize, Serialize};

use crate::lease::{Lease, LeaseId};
use crate::model::Policy;

const STATE_FILE: &str = "state.json";
const TEMP_FILE: &str = ".state.json.tmp";
const LOG_FILE: &str = "journal.log";
/// The largest snapshot or log read back (10,000 leases take about 4 MiB).
const MAX_JOURNAL: u64 = 64 << 20;
/// The log is compacted once it is larger than this and larger than the snapshot.
const COMPACT_AFTER: u64 = 1 << 20;
/// The snapshot format; a file of another version is set aside, not guessed at.
pub const JOURNAL_VERSION: u32 = 3;
/// Version 2 snapshots (before the log) are read as generation 0 with no records.
const OLDEST_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("state directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Unsafe {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("journal {}: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("journal {}: format version {found}, this daemon writes {JOURNAL_VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
}

/// A baseline set at run time (`set`, `apply`, or adopted drift), kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminBaseline {
    pub name: String,
    pub policy: Policy,
    pub swappiness: Option<u64>,
    /// Set with `force`: root overrode the lockout guard for it, which then stays off for it.
    #[serde(default)]
    pub forced: bool,
}

/// What the journal holds: a snapshot with the records after it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// The snapshot's generation: the records that follow it name it.
    #[serde(default)]
    pub generation: u64,
    /// /proc/sys/kernel/random/boot_id of the boot this state belongs to.
    pub boot_id: String,
    pub admin_baseline: Option<AdminBaseline>,
    pub leases: Vec<Lease>,
    /// The policy the kernel was meant to hold when the snapshot was written (for people).
    pub effective: Policy,
}

impl State {
    /// The state after `change`.
    pub fn apply(&mut self, change: &JournalChange<'_>) {
        match change {
            JournalChange::Granted(lease) => {
                self.leases.retain(|l| l.id != lease.id);
                self.leases.push(lease.as_ref().clone());
            }
            JournalChange::Ended(ids) => self.leases.retain(|l| !ids.contains(&l.id)),
            JournalChange::Baseline(baseline) => {
                self.admin_baseline = baseline.as_ref().map(|b| b.as_ref().clone())
            }
        }
    }
}

/// The whole state, borrowed from the daemon, for a snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    pub boot_id: &'a str,
    pub admin_baseline: Option<&'a AdminBaseline>,
    pub leases: Vec<&'a Lease>,
    pub effective: Policy,
}

/// A snapshot as written: [`State`]'s fields, borrowed.
#[derive(Serialize)]
struct SnapshotFile<'a> {
    version: u32,
    generation: u64,
    boot_id: &'a str,
    admin_baseline: Option<&'a AdminBaseline>,
    leases: &'a [&'a Lease],
    effective: Policy,
}

/// Parses a snapshot's bytes (no I/O): what [`Journal::load`] and the fuzzer read.
pub fn parse_state(bytes: &[u8]) -> Result<State, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// One change, as a record of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum JournalChange<'a> {
    Granted(Cow<'a, Lease>),
    Ended(Cow<'a, [LeaseId]>),
    /// The baseline set at run time, or none (the configuration's again).
    Baseline(Option<Cow<'a, AdminBaseline>>),
}

/// A record's JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record<'a> {
    generation: u64,
    seq: u64,
    change: JournalChange<'a>,
}

/// The line of one record: `LEN CRC JSON\n`.
pub fn encode_record(generation: u64, seq: u64, change: &JournalChange<'_>) -> Vec<u8> {
    /// Room before the JSON for its header (20 digits, a space, 8 hex digits, a space).
    const HEADER: usize = 30;
    let record = Record {
        generation,
        seq,
        change: change.clone(),
    };
    let mut line = vec![b' '; HEADER];
    line.reserve(512);
    // Plain structs, enums and strings: serializing cannot fail.
    let _ = serde_json::to_writer(&mut line, &record);
    let json = &line[HEADER..];
    let header = format!("{} {:08x} ", json.len(), crc32fast::hash(json));
    line.push(b'\n');
    // The header right before the JSON, written in the room left for it; the rest cut off.
    let start = HEADER - header.len();
    line[start..HEADER].copy_from_slice(header.as_bytes());
    line.drain(..start);
    line
}

/// One record read back from a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub generation: u64,
    pub seq: u64,
    pub change: JournalChange<'static>,
    /// The bytes it takes, newline included.
    pub length: usize,
}

/// Reads the record at the start of `bytes` (no I/O; what the fuzzer calls), or says why it
/// is not a whole, good one.
pub fn decode(bytes: &[u8]) -> Result<Decoded, &'static str> {
    let (record, length) = decode_record(bytes)?;
    Ok(Decoded {
        generation: record.generation,
        seq: record.seq,
        change: record.change,
        length,
    })
}

/// Reads the record at the start of `bytes`: it and the bytes it takes, or why it is not one.
fn decode_record(bytes: &[u8]) -> Result<(Record<'static>, usize), &'static str> {
    let field = |from: usize, max: usize| -> Result<(&[u8], usize), &'static str> {
        let rest = bytes.get(from..).unwrap_or_default();
        let end = rest
            .iter()
            .take(max + 1)
            .position(|&b| b == b' ')
            .ok_or("a record cut short")?;
        Ok((&rest[..end], from + end + 1))
    };
    let (length, at) = field(0, 20)?;
    let (crc, at) = field(at, 8)?;
    let digits = |text: &[u8], radix| {
        std::str::from_utf8(text)
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|t| u64::from_str_radix(t, radix).ok())
    };
    let length = digits(length, 10)
        .filter(|&n| n <= MAX_JOURNAL)
        .ok_or("a record with a bad length")? as usize;
    let crc = digits(crc, 16)
        .filter(|_| crc.len() == 8)
        .ok_or("a record with a bad checksum field")?;
    let end = at + length;
    let json = bytes.get(at..end).ok_or("a record cut short")?;
    if bytes.get(end) != Some(&b'\n') {
        return Err("a record cut short");
    }
    if u64::from(crc32fast::hash(json)) != crc {
        return Err("a record whose checksum does not match");
    }
    let record: Record<'static> =
        serde_json::from_slice(json).map_err(|_| "a record that does not parse")?;
    Ok((record, end + 1))
}

/// What replaying a log did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Records applied.
    pub applied: u64,
    /// Where the next record goes: the end of the last good record.
    pub valid: usize,
    /// Why the bytes from `valid` on were ignored, if there are any.
    pub ignored: Option<&'static str>,
}

/// Applies to `state` the records of `log` that follow it (its generation, in sequence), up
/// to the first that is not whole and good. No I/O: what [`Journal::load`] and the fuzzer run.
pub fn replay(state: &mut State, log: &[u8]) -> Replay {
    let mut replay = Replay {
        applied: 0,
        valid: 0,
        ignored: None,
    };
    while replay.valid < log.len() {
        let (record, length) = match decode_record(&log[replay.valid..]) {
            Ok(decoded) => decoded,
            Err(why) => {
                replay.ignored = Some(why);
                break;
            }
        };
        if record.generation < state.generation && replay.applied == 0 {
            // Left from before the last snapshot, which holds it.
            replay.valid += length;
            continue;
        }
        if record.generation != state.generation || record.seq != replay.applied + 1 {
            replay.ignored = Some("a record out of sequence");
            break;
        }
        state.apply(&record.change);
        replay.applied += 1;
        replay.valid += length;
    }
    replay
}

/// Where the engine keeps its intended state.
pub trait JournalStore {
    /// The state saved last (the snapshot with the records after it), `None` if there is
    /// none. Any problem with it is an error.
    fn load(&mut self) -> Result<Option<State>, JournalError>;
    /// Makes one change durable before the kernel is touched.
    fn record(&mut self, change: &JournalChange<'_>) -> Result<(), JournalError>;
    /// Makes the whole state durable, in place of everything recorded before.
    fn snapshot(&mut self, state: &Snapshot<'_>) -> Result<(), JournalError>;
    /// True when a record cannot follow now (nothing saved yet, or the last save failed): save
    /// a snapshot instead.
    fn needs_snapshot(&self) -> bool;
    /// True when the records since the last snapshot are worth compacting into a new one.
    fn wants_compaction(&self) -> bool;
    /// Moves an unusable journal aside (kept for the admin); its new name.
    fn set_aside(&mut self, why: &str) -> Result<String, JournalError>;
    /// Where it lives, for log lines.
    fn describe(&self) -> String;
}

/// The state directory, opened once without following symlinks, and its log, kept open.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    dir: OwnedFd,
    log: Option<std::fs::File>,
    /// The generation of the last snapshot, which the records in the log follow.
    generation: u64,
    /// Records after that snapshot.
    records: u64,
    /// The end of the last good record: where the next one goes.
    log_end: u64,
    /// Bytes past `log_end` may hold a torn record: cut them off before appending.
    torn: bool,
    /// No snapshot written by this process yet, or a record may be lost.
    needs_snapshot: bool,
    snapshot_bytes: u64,
}

impl Journal {
    /// Opens (creating it 0700 if missing) the state directory, refusing a symlink, a
    /// directory owned by someone else, or one others can write to.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let io_error = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_error)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(e)),
        }
        let dir = nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
            FileMode::empty(),
        )
        .map_err(|e| match e {
            nix::Error::ELOOP | nix::Error::ENOTDIR => JournalError::Unsafe {
                path: path.to_path_buf(),
                problem: "is a symlink or not a directory",
            },
            e => io_error(e.into()),
        })?;
        let meta = nix::sys::stat::fstat(dir.as_fd()).map_err(|e| io_error(e.into()))?;
        if meta.st_uid != nix::unistd::geteuid().as_raw() {
            return Err(JournalError::Unsafe {
                path: path.to_path_buf(),
                problem: "is owned by another user",
            });
        }
        if meta.st_mode & 0o022 != 0 {
            return Err(JournalError::Unsafe {
                path: path.to_path_buf(),
                problem: "is writable by group or others",
            });
        }
        Ok(Journal {
            path: path.to_path_buf(),
            dir,
            log: None,
            generation: 0,
            records: 0,
            log_end: 0,
            torn: false,
            needs_snapshot: true,
            snapshot_bytes: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Opens a file of the directory without following a symlink or blocking, and refuses
    /// anything but a regular file of ours. `None` if it does not exist (and `create` is off).
    fn open_file(&self, name: &str, flags: OFlag) -> Result<Option<std::fs::File>, JournalError> {
        let path = self.path.join(name);
        let fd = match openat(
            self.dir.as_fd(),
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            FileMode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => return Ok(None),
            Err(nix::Error::ELOOP) => {
                return Err(JournalError::Unsafe {
                    path,
                    problem: "is a symlink",
                })
            }
            Err(e) => return Err(self.io(e.into())),
        };
        let file = std::fs::File::from(fd);
        let meta = file.metadata().map_err(|e| self.io(e))?;
        if !meta.file_type().is_file() {
            return Err(JournalError::Unsafe {
                path,
                problem: "is not a regular file",
            });
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(JournalError::Unsafe {
                path,
                problem: "is owned by another user",
            });
        }
        if meta.len() > MAX_JOURNAL {
            return Err(JournalError::Unsafe {
                path,
                problem: "is larger than 64 MiB",
            });
        }
        Ok(Some(file))
    }

    /// Empties the log (creating it if missing) after a snapshot of `generation`.
    fn reset_log(&mut self) -> Result<(), JournalError> {
        if self.log.is_none() {
            let log = match self.open_file(LOG_FILE, OFlag::O_RDWR)? {
                Some(log) => log,
                None => {
                    let log = self
                        .open_file(LOG_FILE, OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL)?
                        .ok_or_else(|| self.io(io::ErrorKind::NotFound.into()))?;
                    // Its name must outlive a crash before the first record counts on it.
                    nix::unistd::fsync(self.dir.as_fd()).map_err(|e| self.io(e.into()))?;
                    log
                }
            };
            self.log = Some(log);
        }
        let log = self.log.as_ref().expect("opened above");
        log.set_len(0).map_err(|e| self.io(e))?;
        log.sync_data().map_err(|e| self.io(e))?;
        self.log_end = 0;
        self.records = 0;
        self.torn = false;
        Ok(())
    }
}

impl JournalStore for Journal {
    fn load(&mut self) -> Result<Option<State>, JournalError> {
        let state_path = self.path.join(STATE_FILE);
        let Some(file) = self.open_file(STATE_FILE, OFlag::O_RDONLY)? else {
            if self.open_file(LOG_FILE, OFlag::O_RDONLY)?.is_some() {
                return Err(JournalError::Unsafe {
                    path: self.path.join(LOG_FILE),
                    problem: "has no state.json to follow",
                });
            }
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(MAX_JOURNAL)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io(e))?;
        let mut state = parse_state(&bytes).map_err(|source| JournalError::Corrupt {
            path: state_path.clone(),
            source,
        })?;
        if !(OLDEST_VERSION..=JOURNAL_VERSION).contains(&state.version) {
            return Err(JournalError::Version {
                path: state_path,
                found: state.version,
            });
        }
        self.generation = state.generation;
        self.snapshot_bytes = bytes.len() as u64;
        if let Some(log) = self.open_file(LOG_FILE, OFlag::O_RDWR)? {
            let mut text = Vec::new();
            (&log)
                .take(MAX_JOURNAL)
                .read_to_end(&mut text)
                .map_err(|e| self.io(e))?;
            let replay = replay(&mut state, &text);
            if let Some(why) = replay.ignored {
                warn!(
                    "journal {}: ignored {} bytes from offset {}: {why} (a write torn by a crash)",
                    self.path.join(LOG_FILE).display(),
                    text.len() - replay.valid,
                    replay.valid
                );
            }
            self.records = replay.applied;
            self.log_end = replay.valid as u64;
            self.torn = replay.valid < text.len();
            self.log = Some(log);
        }
        state.version = JOURNAL_VERSION;
        Ok(Some(state))
    }

    fn record(&mut self, change: &JournalChange<'_>) -> Result<(), JournalError> {
        let log_path = self.path.join(LOG_FILE);
        let Some(log) = self.log.as_ref().filter(|_| !self.needs_snapshot) else {
            return Err(JournalError::Unsafe {
                path: log_path,
                problem: "cannot take a record before a snapshot",
            });
        };
        let io = |source| JournalError::Io {
            path: log_path.clone(),
            source,
        };
        if self.torn {
            log.set_len(self.log_end).map_err(io)?;
            self.torn = false;
        }
        let line = encode_record(self.generation, self.records + 1, change);
        let written = log
            .write_all_at(&line, self.log_end)
            .and_then(|()| log.sync_data());
        if let Err(e) = written {
            // Take back what may have been written: the change is refused or saved later by a
            // snapshot, never replayed half.
            self.torn = log
                .set_len(self.log_end)
                .and_then(|()| log.sync_data())
                .is_err();
            self.needs_snapshot = true;
            return Err(io(e));
        }
        self.log_end += line.len() as u64;
        self.records += 1;
        Ok(())
    }

    fn snapshot(&mut self, state: &Snapshot<'_>) -> Result<(), JournalError> {
        let generation = self.generation + 1;
        let file = SnapshotFile {
            version: JOURNAL_VERSION,
            generation,
            boot_id: state.boot_id,
            admin_baseline: state.admin_baseline,
            leases: &state.leases,
            effective: state.effective,
        };
        // A fresh file every time: whatever sits at the temporary name (a stale file, a FIFO
        // that would block the open) is removed first, and O_EXCL makes sure it is ours.
        match nix::unistd::unlinkat(self.dir.as_fd(), TEMP_FILE, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(self.io(e.into())),
        }
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_EXCL
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let fd = openat(
            self.dir.as_fd(),
            TEMP_FILE,
            flags,
            FileMode::from_bits_truncate(0o600),
        )
        .map_err(|e| self.io(e.into()))?;
        // Streamed through a small buffer: 10,000 leases make a snapshot of some MiB, which
        // need not sit in memory whole.
        let mut out = io::BufWriter::with_capacity(64 << 10, std::fs::File::from(fd));
        serde_json::to_writer(&mut out, &file).map_err(|e| self.io(e.into()))?;
        out.write_all(b"\n").map_err(|e| self.io(e))?;
        let written = out.into_inner().map_err(|e| self.io(e.into_error()))?;
        written.sync_all().map_err(|e| self.io(e))?;
        let length = written.metadata().map_err(|e| self.io(e))?.len();
        drop(written);
        renameat(self.dir.as_fd(), TEMP_FILE, self.dir.as_fd(), STATE_FILE)
            .map_err(|e| self.io(e.into()))?;
        nix::unistd::fsync(self.dir.as_fd()).map_err(|e| self.io(e.into()))?;
        // The snapshot holds everything: the records before it are now stale, and skipped on
        // load even if emptying the log fails here.
        self.generation = generation;
        self.snapshot_bytes = length;
        self.needs_snapshot = true;
        self.reset_log()?;
        self.needs_snapshot = false;
        Ok(())
    }

    fn needs_snapshot(&self) -> bool {
        self.needs_snapshot
    }

    fn wants_compaction(&self) -> bool {
        self.log_end > COMPACT_AFTER.max(self.snapshot_bytes)
    }

    fn set_aside(&mut self, why: &str) -> Result<String, JournalError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let suffix = format!("{why}-{stamp}-{}", std::process::id());
        self.log = None;
        self.needs_snapshot = true;
        let mut moved = Vec::new();
        for name in [STATE_FILE, LOG_FILE] {
            let new = format!("{name}.{suffix}");
            match renameat(self.dir.as_fd(), name, self.dir.as_fd(), new.as_str()) {
                Ok(()) => moved.push(new),
                Err(nix::Error::ENOENT) => {}
                Err(e) => return Err(self.io(e.into())),
            }
        }
        Ok(moved.join(" and "))
    }

    fn describe(&self) -> String {
        self.path.join(STATE_FILE).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Limit, Mode};
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn policy() -> Policy {
        Policy {
            mode: Mode::Always,
            limit: Limit::Ratio(50),
        }
    }

    fn lease(n: u32) -> Lease {
        Lease {
            id: format!("{n:032x}").parse().unwrap(),
            owner_uid: 1000 + n,
            owner: format!("user{n}"),
            requester_uid: (n % 2 == 1).then_some(0),
            requester_pid: 42,
            requester_comm: "job".into(),
            policy: policy(),
            holder: None,
            tag: Some(format!("tag-{n}")),
            reason: Some("a \"quoted\" reason\nwith a newline".into()),
            granted_at: 1,
            expires: Duration::from_secs(3600),
            expires_at: 3601,
        }
    }

    fn snapshot_of(state: &State) -> Snapshot<'_> {
        Snapshot {
            boot_id: &state.boot_id,
            admin_baseline: state.admin_baseline.as_ref(),
            leases: state.leases.iter().collect(),
            effective: state.effective,
        }
    }

    fn empty(generation: u64) -> State {
        State {
            version: JOURNAL_VERSION,
            generation,
            boot_id: "b".into(),
            admin_baseline: None,
            leases: vec![],
            effective: policy(),
        }
    }

    fn private_dir() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        tmp
    }

    /// A journal with a snapshot of `leases` and `records` grants after it, and the state
    /// that should load.
    fn journal_with(dir: &Path, leases: u32, records: u32) -> (Journal, State) {
        let mut journal = Journal::open(dir).unwrap();
        let mut expected = empty(0);
        expected.leases = (0..leases).map(lease).collect();
        journal.snapshot(&snapshot_of(&expected)).unwrap();
        expected.generation = 1;
        for n in leases..leases + records {
            let change = JournalChange::Granted(Cow::Owned(lease(n)));
            journal.record(&change).unwrap();
            expected.apply(&change);
        }
        (journal, expected)
    }

    #[test]
    fn a_snapshot_and_the_records_after_it_load_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let mut journal = Journal::open(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(journal.load().unwrap(), None);
        assert!(journal.needs_snapshot());
        let (mut journal, mut expected) = journal_with(&dir, 2, 3);
        let ended = vec![lease(0).id, lease(3).id];
        journal
            .record(&JournalChange::Ended(Cow::Borrowed(&ended)))
            .unwrap();
        let admin = AdminBaseline {
            name: "custom".into(),
            policy: policy(),
            swappiness: Some(10),
            forced: false,
        };
        journal
            .record(&JournalChange::Baseline(Some(Cow::Borrowed(&admin))))
            .unwrap();
        expected.leases.retain(|l| !ended.contains(&l.id));
        expected.admin_baseline = Some(admin);
        assert!(!dir.join(TEMP_FILE).exists());
        let loaded = Journal::open(&dir).unwrap().load().unwrap().unwrap();
        assert_eq!(loaded, expected);
        assert_eq!(loaded.leases.len(), 3);
    }

    #[test]
    fn a_torn_last_record_is_ignored_and_cut_off_before_the_next() {
        let tmp = private_dir();
        let (_, expected) = journal_with(tmp.path(), 1, 2);
        let log_path = tmp.path().join(LOG_FILE);
        let whole = std::fs::read(&log_path).unwrap();
        let third = encode_record(1, 3, &JournalChange::Granted(Cow::Owned(lease(9))));
        // Every way the third record can be cut short, and one whose bytes are garbage.
        let mut garbled = third.clone();
        garbled[third.len() / 2] ^= 0x20;
        let tails: Vec<Vec<u8>> = (1..third.len())
            .map(|n| third[..n].to_vec())
            .chain([garbled, vec![0; 64]])
            .collect();
        for tail in tails {
            std::fs::write(&log_path, [whole.as_slice(), &tail].concat()).unwrap();
            let mut journal = Journal::open(tmp.path()).unwrap();
            assert_eq!(journal.load().unwrap().unwrap(), expected, "{tail:?}");
            // The next record goes where the torn one began.
            journal.needs_snapshot = false;
            let change = JournalChange::Ended(Cow::Owned(vec![lease(0).id]));
            journal.record(&change).unwrap();
            let mut after = expected.clone();
            after.apply(&change);
            assert_eq!(
                Journal::open(tmp.path()).unwrap().load().unwrap().unwrap(),
                after
            );
        }
    }

    #[test]
    fn records_left_from_before_the_last_snapshot_are_skipped() {
        let tmp = private_dir();
        let (mut journal, _) = journal_with(tmp.path(), 0, 3);
        let stale = std::fs::read(tmp.path().join(LOG_FILE)).unwrap();
        let now = empty(1);
        let mut state = now.clone();
        state.leases = (0..3).map(lease).collect();
        journal.snapshot(&snapshot_of(&state)).unwrap();
        assert_eq!(journal.generation, 2);
        assert_eq!(
            std::fs::metadata(tmp.path().join(LOG_FILE)).unwrap().len(),
            0
        );
        // As if the daemon died before emptying the log, then recorded after the snapshot.
        let change = JournalChange::Granted(Cow::Owned(lease(7)));
        let fresh = encode_record(2, 1, &change);
        std::fs::write(tmp.path().join(LOG_FILE), [stale, fresh].concat()).unwrap();
        state.apply(&change);
        state.generation = 2;
        assert_eq!(
            Journal::open(tmp.path()).unwrap().load().unwrap().unwrap(),
            state
        );
        // A record from a generation ahead of the snapshot, or out of order, ends the log.
        let mut base = empty(2);
        let skipped = [encode_record(3, 1, &change), encode_record(2, 2, &change)];
        for record in skipped {
            let replayed = replay(&mut base, &record);
            assert_eq!(replayed.applied, 0);
            assert_eq!(replayed.ignored, Some("a record out of sequence"));
        }
    }

    #[test]
    fn the_log_is_compacted_once_it_outgrows_the_snapshot() {
        let tmp = private_dir();
        let (mut journal, mut state) = journal_with(tmp.path(), 0, 0);
        let mut n = 0;
        while !journal.wants_compaction() {
            let change = JournalChange::Granted(Cow::Owned(lease(n)));
            journal.record(&change).unwrap();
            state.apply(&change);
            n += 1;
        }
        assert!(journal.log_end > COMPACT_AFTER);
        journal.snapshot(&snapshot_of(&state)).unwrap();
        assert!(!journal.wants_compaction());
        assert_eq!(
            std::fs::metadata(tmp.path().join(LOG_FILE)).unwrap().len(),
            0
        );
        state.generation = 2;
        let loaded = Journal::open(tmp.path()).unwrap().load().unwrap().unwrap();
        assert_eq!(loaded, state);
        assert_eq!(loaded.leases.len(), n as usize);
        // The next compaction waits for the log to outgrow this snapshot (or 1 MiB).
        let size = std::fs::metadata(tmp.path().join(STATE_FILE))
            .unwrap()
            .len();
        assert_eq!(journal.snapshot_bytes, size);
    }

    #[test]
    fn a_version_2_snapshot_loads_as_generation_0() {
        let tmp = private_dir();
        let mut old = serde_json::to_value(empty(0)).unwrap();
        old["version"] = 2.into();
        old.as_object_mut().unwrap().remove("generation");
        std::fs::write(tmp.path().join(STATE_FILE), old.to_string()).unwrap();
        let loaded = Journal::open(tmp.path()).unwrap().load().unwrap().unwrap();
        assert_eq!(loaded, empty(0));
    }

    #[test]
    fn refuses_symlinks_and_open_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            Journal::open(&link),
            Err(JournalError::Unsafe { .. })
        ));
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            Journal::open(&real),
            Err(JournalError::Unsafe { .. })
        ));
    }

    #[test]
    fn every_unusable_journal_is_an_error_and_can_be_set_aside() {
        let tmp = private_dir();
        let mut journal = Journal::open(tmp.path()).unwrap();
        let path = tmp.path().join(STATE_FILE);
        let log = tmp.path().join(LOG_FILE);
        let cases: [(&str, &dyn Fn()); 8] = [
            ("truncated", &|| std::fs::write(&path, "{ half").unwrap()),
            ("invalid UTF-8", &|| {
                std::fs::write(&path, b"{\"v\xff\": 1}").unwrap()
            }),
            ("a FIFO", &|| {
                nix::unistd::mkfifo(&path, FileMode::from_bits_truncate(0o600)).unwrap()
            }),
            ("a symlink", &|| {
                std::os::unix::fs::symlink("/etc/passwd", &path).unwrap()
            }),
            ("another version", &|| {
                let mut old = serde_json::to_value(empty(0)).unwrap();
                old["version"] = 1.into();
                std::fs::write(&path, old.to_string()).unwrap()
            }),
            ("a log without a snapshot", &|| {
                std::fs::write(
                    &log,
                    encode_record(0, 1, &JournalChange::Ended(Cow::Owned(vec![]))),
                )
                .unwrap()
            }),
            ("a FIFO as the log", &|| {
                std::fs::write(&path, serde_json::to_vec(&empty(0)).unwrap()).unwrap();
                nix::unistd::mkfifo(&log, FileMode::from_bits_truncate(0o600)).unwrap()
            }),
            ("a symlink as the log", &|| {
                std::fs::write(&path, serde_json::to_vec(&empty(0)).unwrap()).unwrap();
                std::os::unix::fs::symlink("/etc/passwd", &log).unwrap()
            }),
        ];
        for (what, make) in cases {
            make();
            assert!(journal.load().is_err(), "{what} is refused");
            let aside = journal.set_aside("unusable").unwrap();
            for name in aside.split(" and ") {
                assert!(tmp.path().join(name).symlink_metadata().is_ok(), "{what}");
            }
            assert_eq!(journal.load().unwrap(), None, "{what}");
            assert!(journal.needs_snapshot());
        }
    }

    #[test]
    fn a_fifo_at_the_temporary_name_does_not_block_a_snapshot() {
        let tmp = private_dir();
        let mut journal = Journal::open(tmp.path()).unwrap();
        nix::unistd::mkfifo(
            &tmp.path().join(TEMP_FILE),
            FileMode::from_bits_truncate(0o600),
        )
        .unwrap();
        journal.snapshot(&snapshot_of(&empty(0))).unwrap();
        assert_eq!(journal.load().unwrap(), Some(empty(1)));
    }

    #[test]
    fn a_record_needs_a_snapshot_first() {
        let tmp = private_dir();
        let mut journal = Journal::open(tmp.path()).unwrap();
        let change = JournalChange::Ended(Cow::Owned(vec![]));
        assert!(journal.record(&change).is_err());
        journal.snapshot(&snapshot_of(&empty(0))).unwrap();
        journal.record(&change).unwrap();
    }

    fn changes() -> impl Strategy<Value = Vec<JournalChange<'static>>> {
        let change = prop_oneof![
            (0u32..8).prop_map(|n| JournalChange::Granted(Cow::Owned(lease(n)))),
            proptest::collection::vec(0u32..8, 0..3).prop_map(|ns| {
                JournalChange::Ended(Cow::Owned(ns.into_iter().map(|n| lease(n).id).collect()))
            }),
            any::<bool>().prop_map(|set| {
                JournalChange::Baseline(set.then(|| {
                    Cow::Owned(AdminBaseline {
                        name: "x".into(),
                        policy: policy(),
                        swappiness: None,
                        forced: true,
                    })
                }))
            }),
        ];
        proptest::collection::vec(change, 0..12)
    }

    proptest! {
        /// A log cut anywhere (a crash mid-write) replays exactly the records it holds whole:
        /// a torn record is never read as a change.
        #[test]
        fn any_prefix_of_a_log_replays_the_records_it_holds_whole(
            changes in changes(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut log = Vec::new();
            let mut states = vec![empty(4)];
            let mut ends = vec![0];
            for (i, change) in changes.iter().enumerate() {
                log.extend(encode_record(4, i as u64 + 1, change));
                let mut next = states.last().unwrap().clone();
                next.apply(change);
                states.push(next);
                ends.push(log.len());
            }
            let cut = cut.index(log.len() + 1);
            let whole = ends.iter().filter(|&&end| end <= cut).count() - 1;
            let mut state = empty(4);
            let replayed = replay(&mut state, &log[..cut]);
            prop_assert_eq!(replayed.applied, whole as u64);
            prop_assert_eq!(replayed.valid, ends[whole]);
            prop_assert_eq!(&state, &states[whole]);
            // One flipped bit: what is applied is a prefix of the records, never a changed one.
            if !log.is_empty() {
                let at = flip.index(log.len());
                log[at] ^= 0x01;
                let mut state = empty(4);
                let replayed = replay(&mut state, &log);
                prop_assert!(replayed.valid <= at);
                prop_assert_eq!(&state, &states[replayed.applied as usize]);
            }
        }
    }
}
