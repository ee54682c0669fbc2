//! The daemon's crash-safe journal: the intended state (baseline, leases, the values found
//! before the first write), written before the kernel is touched, atomically: write a
//! temporary file, fsync it, rename it over the old one, fsync the directory. The directory
//! must be root's own (or the daemon user's), 0700, and is never reached through a symlink.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode as FileMode;
use serde::{Deserialize, Serialize};

use crate::lease::Lease;
use crate::model::{Policy, Tunables};

const STATE_FILE: &str = "state.json";
const TEMP_FILE: &str = ".state.json.tmp";
/// The journal format; a file of another version is set aside, not guessed at.
pub const JOURNAL_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("state directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state directory {}: {problem}", path.display())]
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
}

/// A baseline set at run time (`set`, `apply`, or adopted drift), kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminBaseline {
    pub name: String,
    pub policy: Policy,
    pub swappiness: Option<u64>,
}

/// What the journal holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// /proc/sys/kernel/random/boot_id of the boot this state belongs to.
    pub boot_id: String,
    /// The kernel's values before the daemon's first write in this boot.
    pub original: Tunables,
    pub admin_baseline: Option<AdminBaseline>,
    pub leases: Vec<Lease>,
    /// The policy the kernel is meant to hold.
    pub effective: Policy,
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

    /// Reads the state, `None` if there is none yet.
    pub fn load(&self) -> Result<Option<State>, JournalError> {
        let file = match openat(
            self.dir.as_fd(),
            STATE_FILE,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            FileMode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => return Ok(None),
            Err(e) => return Err(self.io(e.into())),
        };
        let mut file = std::fs::File::from(file);
        if file.metadata().map_err(|e| self.io(e))?.uid() != nix::unistd::geteuid().as_raw() {
            return Err(JournalError::Unsafe {
                path: self.path.join(STATE_FILE),
                problem: "is owned by another user",
            });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(|e| self.io(e))?;
        let state: State = serde_json::from_str(&text).map_err(|source| JournalError::Corrupt {
            path: self.path.join(STATE_FILE),
            source,
        })?;
        Ok(Some(state))
    }

    /// Writes the state atomically and durably.
    pub fn save(&self, state: &State) -> Result<(), JournalError> {
        let mut text =
            serde_json::to_vec_pretty(state).map_err(|source| JournalError::Corrupt {
                path: self.path.join(STATE_FILE),
                source,
            })?;
        text.push(b'\n');
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_NOFOLLOW
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

    /// Moves an unreadable journal aside (kept for the admin), so the daemon can start.
    pub fn set_aside(&self) -> Result<String, JournalError> {
        let name = format!("state.json.corrupt-{}", std::process::id());
        renameat(
            self.dir.as_fd(),
            STATE_FILE,
            self.dir.as_fd(),
            name.as_str(),
        )
        .map_err(|e| self.io(e.into()))?;
        Ok(name)
    }

    fn io(&self, source: io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
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
            original: crate::model::testing::tunables(Mode::Heuristic, 50, 0),
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
        let journal = Journal::open(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(journal.load().unwrap(), None);
        journal.save(&state()).unwrap();
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
    fn a_corrupt_journal_is_reported_and_can_be_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = Journal::open(tmp.path()).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(tmp.path().join(STATE_FILE), "{ half").unwrap();
        assert!(matches!(journal.load(), Err(JournalError::Corrupt { .. })));
        let aside = journal.set_aside().unwrap();
        assert!(tmp.path().join(aside).exists());
        assert_eq!(journal.load().unwrap(), None);
    }
}
