//! What a command would run, for the job scope: the file `execvp` would execute, and whether
//! the dynamic loader will honour LD_PRELOAD in it.
//!
//! LD_PRELOAD works only in a dynamically linked program (one with a PT_INTERP header) of
//! this machine's ELF class and architecture, and the loader ignores it (for paths with a
//! slash) in a secure-execution program: setuid or setgid to another user or group, or with
//! file capabilities. For a script, what counts is its interpreter (`#!`), and for
//! `#!/usr/bin/env NAME` the program env runs.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, Gid, Uid};
use serde::Serialize;

/// glibc's execvp search path when PATH is not set.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// The kernel follows at most this many `#!` interpreters (BINPRM_MAX_RECURSION).
const MAX_INTERPRETERS: usize = 4;

/// Why a command cannot be run at all.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{name}: command not found (searched PATH {path})")]
    NotFound { name: String, path: String },
    #[error("{}: no such file", path.display())]
    NoSuchFile { path: PathBuf },
    #[error("{}: {why}", path.display())]
    CannotExecute { path: PathBuf, why: String },
}

impl ExecError {
    /// The shell's convention, which `run` follows: 127 not found, 126 found but not
    /// executable.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecError::NotFound { .. } | ExecError::NoSuchFile { .. } => 127,
            ExecError::CannotExecute { .. } => 126,
        }
    }
}

/// Resolves `name` the way execvp(3) does: a name with a slash as it is, else the first
/// executable regular file of that name in PATH (an empty entry is the current directory).
pub fn resolve(name: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, ExecError> {
    if name.is_empty() {
        return Err(ExecError::NoSuchFile {
            path: PathBuf::new(),
        });
    }
    if name.as_bytes().contains(&b'/') {
        let path = PathBuf::from(name);
        return executable(&path).map(|()| path);
    }
    let search = path_var.unwrap_or(OsStr::new(DEFAULT_PATH));
    let mut denied = None;
    for dir in search.as_bytes().split(|&b| b == b':') {
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        let candidate = dir.join(name);
        match executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e @ ExecError::CannotExecute { .. }) => {
                denied.get_or_insert(e);
            }
            Err(_) => {}
        }
    }
    Err(denied.unwrap_or_else(|| ExecError::NotFound {
        name: name.to_string_lossy().into_owned(),
        path: search.to_string_lossy().into_owned(),
    }))
}

/// Whether `path` exists and this process may execute it (a regular file, execute
/// permission for the effective ids).
fn executable(path: &Path) -> Result<(), ExecError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ExecError::NoSuchFile {
            path: path.to_path_buf(),
        },
        _ => ExecError::CannotExecute {
            path: path.to_path_buf(),
            why: e.to_string(),
        },
    })?;
    if meta.is_dir() {
        return Err(ExecError::CannotExecute {
            path: path.to_path_buf(),
            why: "is a directory".into(),
        });
    }
    if !meta.is_file() {
        return Err(ExecError::CannotExecute {
            path: path.to_path_buf(),
            why: "not a regular file".into(),
        });
    }
    nix::unistd::faccessat(
        nix::fcntl::AT_FDCWD,
        path,
        AccessFlags::X_OK,
        nix::fcntl::AtFlags::AT_EACCESS,
    )
    .map_err(|e| ExecError::CannotExecute {
        path: path.to_path_buf(),
        why: format!("not executable ({})", std::io::Error::from(e)),
    })
}

/// Whether the dynamic loader will honour LD_PRELOAD in a program, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Preload {
    Honoured,
    /// Statically linked: there is no dynamic loader.
    Static,
    /// setuid/setgid to other ids, or file capabilities: the loader ignores LD_PRELOAD.
    SecureExecution,
    /// Another ELF class or architecture than this machine's (e.g. a 32-bit program).
    ForeignArchitecture,
    /// It could not be read (execute-only, or vanished).
    Unreadable,
}

/// The answer for one command: which file will do the work, and the verdict on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The file execvp runs (the command resolved through PATH).
    pub command: PathBuf,
    /// The program that will run the job: the command itself, or the interpreter of a
    /// script (followed through `#!` lines and `env`).
    pub program: PathBuf,
    pub preload: Preload,
    /// A few words on the verdict, for people (e.g. "setuid to uid 0").
    pub detail: String,
    /// The command is neither an ELF program nor a `#!` script: execvp runs it with /bin/sh.
    pub via_shell: bool,
}

/// Inspects the file `command` (already resolved) as the kernel would execute it.
pub fn inspect(command: &Path, path_var: Option<&OsStr>) -> Inspection {
    let mut program = command.to_path_buf();
    let mut via_shell = false;
    for depth in 0..=MAX_INTERPRETERS {
        let head = match read_head(&program) {
            Ok(head) => head,
            Err(e) => {
                return Inspection {
                    command: command.to_path_buf(),
                    program,
                    preload: Preload::Unreadable,
                    detail: e.to_string(),
                    via_shell,
                }
            }
        };
        if let Some(script) = head.strip_prefix(b"#!") {
            match interpreter(script, path_var) {
                Some(next) => program = next,
                None => {
                    return Inspection {
                        command: command.to_path_buf(),
                        program,
                        preload: Preload::Unreadable,
                        detail: "its #! line names no interpreter that exists".into(),
                        via_shell,
                    }
                }
            }
            continue;
        }
        if !head.starts_with(b"\x7fELF") {
            // execvp runs a file the kernel cannot execute (ENOEXEC) with /bin/sh.
            via_shell |= depth == 0;
            program = PathBuf::from("/bin/sh");
            continue;
        }
        let (preload, detail) = match secure_execution(&program) {
            Some(detail) => (Preload::SecureExecution, detail),
            None => elf_kind(&head),
        };
        return Inspection {
            command: command.to_path_buf(),
            program,
            preload,
            detail,
            via_shell,
        };
    }
    Inspection {
        command: command.to_path_buf(),
        program,
        preload: Preload::Unreadable,
        detail: format!("more than {MAX_INTERPRETERS} nested #! interpreters"),
        via_shell,
    }
}

/// The first 4 KiB: the ELF and program headers of any normal executable, or a `#!` line.
fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(4096);
    File::open(path)?.take(4096).read_to_end(&mut head)?;
    Ok(head)
}

/// The program a `#!` line runs: its interpreter, or for `env NAME` the NAME env finds.
fn interpreter(line: &[u8], path_var: Option<&OsStr>) -> Option<PathBuf> {
    let line = line.split(|&b| b == b'\n').next()?;
    let mut words = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty());
    let interpreter = PathBuf::from(OsStr::from_bytes(words.next()?));
    let argument: Vec<&[u8]> = words.collect();
    if interpreter.file_name() == Some(OsStr::new("env")) {
        // `#!/usr/bin/env python3`: the kernel passes "python3" as one argument. With
        // options (`env -S ...`), env's own rules apply: judge env itself.
        if let [name] = argument.as_slice() {
            if !name.starts_with(b"-") && !name.contains(&b'=') {
                if let Ok(found) = resolve(OsStr::from_bytes(name), path_var) {
                    return Some(found);
                }
            }
        }
    }
    interpreter.exists().then_some(interpreter)
}

/// `Some(why)` when executing `path` turns on secure execution for this process.
fn secure_execution(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let nosuid = nix::sys::statvfs::statvfs(path)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID))
        .unwrap_or(false);
    if !nosuid {
        let mode = meta.mode();
        if mode & libc::S_ISUID != 0 && Uid::from_raw(meta.uid()) != Uid::effective() {
            return Some(format!("setuid to uid {}", meta.uid()));
        }
        if mode & libc::S_ISGID != 0
            && mode & libc::S_IXGRP != 0
            && Gid::from_raw(meta.gid()) != Gid::effective()
        {
            return Some(format!("setgid to gid {}", meta.gid()));
        }
    }
    has_file_capabilities(path).then(|| "file capabilities (security.capability)".to_string())
}

fn has_file_capabilities(path: &Path) -> bool {
    let Ok(name) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: getxattr with a null buffer and size 0 only reports the value's size.
    let size = unsafe {
        libc::getxattr(
            name.as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    size > 0
}

/// This machine's ELF class and machine (e_machine).
#[cfg(target_arch = "x86_64")]
const NATIVE: (u8, u16) = (2, 62);
#[cfg(target_arch = "aarch64")]
const NATIVE: (u8, u16) = (2, 183);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NATIVE: (u8, u16) = (0, 0);

/// Dynamic (PT_INTERP present) or static, from the ELF and program headers.
fn elf_kind(head: &[u8]) -> (Preload, String) {
    const PT_INTERP: u32 = 3;
    let class = head.get(4).copied().unwrap_or(0);
    let little = head.get(5) == Some(&1);
    let u16_at = |o: usize| {
        head.get(o..o + 2).map(|b| [b[0], b[1]]).map(|b| {
            if little {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            }
        })
    };
    let u32_at = |o: usize| {
        head.get(o..o + 4).and_then(|b| b.try_into().ok()).map(|b| {
            if little {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            }
        })
    };
    let u64_at = |o: usize| {
        head.get(o..o + 8).and_then(|b| b.try_into().ok()).map(|b| {
            if little {
                u64::from_le_bytes(b)
            } else {
                u64::from_be_bytes(b)
            }
        })
    };
    let machine = u16_at(18).unwrap_or(0);
    if (class, machine) != NATIVE || !little {
        return (
            Preload::ForeignArchitecture,
            format!("ELF class {class}, machine {machine}: not this machine's"),
        );
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return (Preload::Unreadable, "truncated ELF header".into());
    };
    let mut dynamic = false;
    for i in 0..usize::from(phnum) {
        let entry = (phoff as usize).saturating_add(i * usize::from(phentsize));
        match u32_at(entry) {
            Some(PT_INTERP) => dynamic = true,
            Some(_) => {}
            None => {
                return (
                    Preload::Unreadable,
                    "program headers beyond its first 4 KiB".into(),
                )
            }
        }
    }
    if dynamic {
        (Preload::Honoured, "dynamically linked".into())
    } else {
        (Preload::Static, "statically linked".into())
    }
}

/// The LD_PRELOAD value that puts `library` first, keeping what was there.
pub fn ld_preload_with(library: &Path, existing: Option<&OsStr>) -> OsString {
    let mut value = OsString::from(library);
    if let Some(existing) = existing {
        let already = existing
            .as_bytes()
            .split(|&b| b == b' ' || b == b':')
            .any(|entry| entry == library.as_os_str().as_bytes());
        if already {
            return existing.to_os_string();
        }
        if !existing.is_empty() {
            value.push(" ");
            value.push(existing);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_follows_path_like_execvp() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::write(b.join("tool"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([&a, &b]).unwrap();
        // a/tool is not executable: execvp skips it (remembering EACCES) and takes b/tool.
        assert_eq!(
            resolve(OsStr::new("tool"), Some(&path)).unwrap(),
            b.join("tool")
        );
        let only_a = a.as_os_str();
        let e = resolve(OsStr::new("tool"), Some(only_a)).unwrap_err();
        assert_eq!(e.exit_code(), 126, "{e}");
        let e = resolve(OsStr::new("nothing-here"), Some(&path)).unwrap_err();
        assert_eq!(e.exit_code(), 127, "{e}");
        let e = resolve(dir.path().join("missing").as_os_str(), None).unwrap_err();
        assert_eq!(e.exit_code(), 127, "{e}");
        let e = resolve(a.as_os_str(), None).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn ld_preload_puts_the_library_first_once() {
        let lib = Path::new("/usr/lib/overcommit/libovercommit_preload.so");
        assert_eq!(ld_preload_with(lib, None), lib.as_os_str());
        assert_eq!(
            ld_preload_with(lib, Some(OsStr::new("/opt/libjemalloc.so"))),
            OsStr::new("/usr/lib/overcommit/libovercommit_preload.so /opt/libjemalloc.so")
        );
        let twice = OsStr::new("/x.so:/usr/lib/overcommit/libovercommit_preload.so");
        assert_eq!(ld_preload_with(lib, Some(twice)), twice);
        assert_eq!(ld_preload_with(lib, Some(OsStr::new(""))), lib.as_os_str());
    }

    #[test]
    fn elf_headers_decide_static_dynamic_and_foreign() {
        let mut elf = vec![0u8; 0x40 + 2 * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = NATIVE.0;
        elf[5] = 1;
        elf[18..20].copy_from_slice(&NATIVE.1.to_le_bytes());
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert_eq!(elf_kind(&elf).0, Preload::Static);
        elf[0x40 + 56..0x40 + 60].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert_eq!(elf_kind(&elf).0, Preload::Honoured);
        elf[4] = 1; // 32-bit
        assert_eq!(elf_kind(&elf).0, Preload::ForeignArchitecture);
        elf[4] = NATIVE.0;
        elf[0x38..0x3a].copy_from_slice(&200u16.to_le_bytes());
        assert_eq!(elf_kind(&elf).0, Preload::Unreadable);
    }
}
