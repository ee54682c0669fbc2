//! The daemon's crash-safe journal: the intended state (baseline, leases), written before the
//! kernel is touched, atomically: write a new temporary file, fsync it, rename it over the old
//! one, fsync the directory. The directory must be root's own (or the daemon user's), 0700, and
//! is never reached through a symlink; the files in it are opened without following symlinks
//! or blocking, and anything but a regular file of ours is refused.
//!
//! The daemon reaches it through [`JournalStore`], so tests inject failures (ENOSPC, EIO).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode as FileMode;
use nix::unistd::UnlinkatFlags;
use serde::{Deserialize, Serialize};

use crate::lease::Lease;
use crate::model::Policy;

const STATE_FILE: &str = "state.json";
const TEMP_FILE: &str = ".state.json.tmp";
/// The largest journal read back (10,000 leases take about 5 MiB).
const MAX_JOURNAL: u64 = 64 << 20;
/// The journal format; a file of another version is set aside, not guessed at.
pub const JOURNAL_VERSION: u32 = 2;

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

/// What the journal holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// /proc/sys/kernel/random/boot_id of the boot this state belongs to.
    pub boot_id: String,
    pub admin_baseline: Option<AdminBaseline>,
    pub leases: Vec<Lease>,
    /// The policy the kernel is meant to hold.
    pub effective: Policy,
}

/// Parses a journal's bytes (no I/O): what [`Journal::load`] and the fuzzer read.
pub fn parse_state(bytes: &[u8]) -> Result<State, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// What changed since the last save. The whole-file journal ignores it; an append-only one
/// records just this and compacts from the full state now and then.
#[derive(Debug, Clone, Copy)]
pub enum JournalChange<'a> {
    /// The state as found at start, or after a failed save: write it whole.
    Whole,
    Granted(&'a Lease),
    Ended(&'a [String]),
    Baseline,
}

/// Where the engine keeps its intended state.
pub trait JournalStore {
    /// The state saved last, `None` if there is none. Any problem with it is an error.
    fn load(&mut self) -> Result<Option<State>, JournalError>;
    /// Saves `state` durably before the kernel is touched.
    fn save(&mut self, state: &State, change: JournalChange<'_>) -> Result<(), JournalError>;
    /// Moves an unusable journal aside (kept for the admin); its new name.
    fn set_aside(&mut self, why: &str) -> Result<String, JournalError>;
    /// Where it lives, for log lines.
    fn describe(&self) -> String;
}

/// The state directory, opened once without following symlinks.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    dir: OwnedFd,
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
}

impl JournalStore for Journal {
    fn load(&mut self) -> Result<Option<State>, JournalError> {
        let state_path = self.path.join(STATE_FILE);
        let file = match openat(
            self.dir.as_fd(),
            STATE_FILE,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            FileMode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => return Ok(None),
            Err(nix::Error::ELOOP) => {
                return Err(JournalError::Unsafe {
                    path: state_path,
                    problem: "is a symlink",
                })
            }
            Err(e) => return Err(self.io(e.into())),
        };
        let file = std::fs::File::from(file);
        let meta = file.metadata().map_err(|e| self.io(e))?;
        if !meta.file_type().is_file() {
            return Err(JournalError::Unsafe {
                path: state_path,
                problem: "is not a regular file",
            });
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(JournalError::Unsafe {
                path: state_path,
                problem: "is owned by another user",
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_JOURNAL)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io(e))?;
        let state = parse_state(&bytes).map_err(|source| JournalError::Corrupt {
            path: state_path.clone(),
            source,
        })?;
        if state.version != JOURNAL_VERSION {
            return Err(JournalError::Version {
                path: state_path,
                found: state.version,
            });
        }
        Ok(Some(state))
    }

    fn save(&mut self, state: &State, _change: JournalChange<'_>) -> Result<(), JournalError> {
        let mut text =
            serde_json::to_vec_pretty(state).map_err(|source| JournalError::Corrupt {
                path: self.path.join(STATE_FILE),
                source,
            })?;
        text.push(b'\n');
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
        let mut file = std::fs::File::from(fd);
        file.write_all(&text).map_err(|e| self.io(e))?;
        file.sync_all().map_err(|e| self.io(e))?;
        drop(file);
        renameat(self.dir.as_fd(), TEMP_FILE, self.dir.as_fd(), STATE_FILE)
            .map_err(|e| self.io(e.into()))?;
        nix::unistd::fsync(self.dir.as_fd()).map_err(|e| self.io(e.into()))?;
        Ok(())
    }

    fn set_aside(&mut self, why: &str) -> Result<String, JournalError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!("state.json.{why}-{stamp}-{}", std::process::id());
        renameat(
            self.dir.as_fd(),
            STATE_FILE,
            self.dir.as_fd(),
            name.as_str(),
        )
        .map_err(|e| self.io(e.into()))?;
        Ok(name)
    }

    fn describe(&self) -> String {
        self.path.join(STATE_FILE).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Limit, Mode};
    use std::os::unix::fs::PermissionsExt;

    fn state() -> State {
        State {
            version: JOURNAL_VERSION,
            boot_id: "b".into(),
            admin_baseline: None,
            leases: vec![],
            effective: Policy {
                mode: Mode::Always,
                limit: Limit::Ratio(50),
            },
        }
    }

    #[test]
    fn saves_and_loads_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let mut journal = Journal::open(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(journal.load().unwrap(), None);
        journal.save(&state(), JournalChange::Whole).unwrap();
        assert_eq!(journal.load().unwrap(), Some(state()));
        assert!(!dir.join(TEMP_FILE).exists());
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
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut journal = Journal::open(tmp.path()).unwrap();
        let path = tmp.path().join(STATE_FILE);
        let cases: [(&str, &dyn Fn()); 5] = [
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
                let mut old = serde_json::to_value(state()).unwrap();
                old["version"] = 1.into();
                std::fs::write(&path, old.to_string()).unwrap()
            }),
        ];
        for (what, make) in cases {
            make();
            assert!(journal.load().is_err(), "{what} is refused");
            let aside = journal.set_aside("unusable").unwrap();
            assert!(tmp.path().join(aside).symlink_metadata().is_ok(), "{what}");
            assert_eq!(journal.load().unwrap(), None, "{what}");
        }
    }

    #[test]
    fn a_fifo_at_the_temporary_name_does_not_block_a_save() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut journal = Journal::open(tmp.path()).unwrap();
        nix::unistd::mkfifo(
            &tmp.path().join(TEMP_FILE),
            FileMode::from_bits_truncate(0o600),
        )
        .unwrap();
        journal.save(&state(), JournalChange::Whole).unwrap();
        assert_eq!(journal.load().unwrap(), Some(state()));
    }
}
