//! Kernel I/O: the one module that reads and writes kernel files.
//!
//! Node-wide files (vm sysctls, meminfo, swaps, osrelease) are reached under a [`ProcRoot`],
//! so tests point it at a fake tree. Facts about processes always come from the real /proc,
//! because processes are always real (design.md).

use std::cell::RefCell;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use procfs_core::process::{LimitValue, Limits, Stat, Status};
use procfs_core::{FromRead, Meminfo};
use serde::Serialize;

use crate::model::{KernelVersion, Knob, Memory, Mode, Node, Tunables};

/// A kernel file that could not be read, parsed or written; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read {}: {source}{}", path.display(), missing_hint(source))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: expected {expected}, found {found:?}", path.display())]
    Parse {
        path: PathBuf,
        expected: &'static str,
        found: String,
    },
    #[error("cannot write {value} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: u64,
        #[source]
        source: io::Error,
    },
    #[error("{knob} holds {found} after writing: expected {expected}")]
    ReadBack {
        knob: String,
        expected: String,
        found: String,
    },
}

fn missing_hint(error: &io::Error) -> &'static str {
    if error.kind() == io::ErrorKind::NotFound {
        " (is the proc root a Linux /proc? containers may have no /proc/sys/vm)"
    } else {
        ""
    }
}

/// One swap device from /proc/swaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwapDevice {
    pub path: String,
    pub kind: String,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub priority: i64,
}

/// The directory laid out like /proc under which node-wide kernel files are read and written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRoot {
    root: PathBuf,
}

impl Default for ProcRoot {
    fn default() -> Self {
        ProcRoot::new("/proc")
    }
}

impl ProcRoot {
    pub fn new(root: impl Into<PathBuf>) -> ProcRoot {
        ProcRoot { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn knob_path(&self, knob: Knob) -> PathBuf {
        self.root.join("sys/vm").join(knob.file_name())
    }

    fn read(&self, relative: &str) -> Result<String, KernelError> {
        read_file(&self.root.join(relative))
    }

    /// Reads one vm sysctl as the signed integer the kernel prints.
    pub fn read_knob(&self, knob: Knob) -> Result<i64, KernelError> {
        let path = self.knob_path(knob);
        let text = read_file(&path)?;
        text.trim().parse().map_err(|_| KernelError::Parse {
            path,
            expected: "an integer",
            found: text.trim().to_string(),
        })
    }

    /// All eight vm knobs.
    pub fn read_tunables(&self) -> Result<Tunables, KernelError> {
        Kernel::read_tunables(self)
    }

    /// /proc/meminfo through the `procfs` parser, reduced to what the rules read.
    pub fn read_memory(&self) -> Result<Memory, KernelError> {
        let path = self.root.join("meminfo");
        parse_meminfo(&read_file(&path)?).map_err(|(expected, found)| KernelError::Parse {
            path,
            expected,
            found,
        })
    }

    /// /proc/swaps, with the kernel's octal escapes in paths undone.
    pub fn read_swaps(&self) -> Result<Vec<SwapDevice>, KernelError> {
        let path = self.root.join("swaps");
        let text = read_file(&path)?;
        parse_swaps(&text).map_err(|line| KernelError::Parse {
            path,
            expected: "`Filename Type Size Used Priority` rows",
            found: line,
        })
    }

    /// The kernel release string (/proc/sys/kernel/osrelease).
    pub fn read_release(&self) -> Result<String, KernelError> {
        Ok(self.read("sys/kernel/osrelease")?.trim().to_string())
    }

    /// Online CPUs, from the `cpuN` lines of /proc/stat; the host's count if it is absent.
    pub fn read_nr_cpus(&self) -> Result<u32, KernelError> {
        match self.read("stat") {
            Ok(text) => {
                let count = text
                    .lines()
                    .filter(|l| {
                        l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                    })
                    .count();
                Ok(u32::try_from(count).unwrap_or(u32::MAX).max(1))
            }
            Err(KernelError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(std::thread::available_parallelism()
                    .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)))
            }
            Err(e) => Err(e),
        }
    }

    /// The kernel command line (for `sysctl.vm.*=` boot parameters); empty if absent.
    pub fn read_cmdline(&self) -> String {
        self.read("cmdline").unwrap_or_default()
    }

    /// Everything the rules read, in one go.
    pub fn node(&self) -> Result<Node, KernelError> {
        self.node_and_release().map(|(node, _)| node)
    }

    /// [`ProcRoot::node`], and the release string it was read from (for reports).
    pub fn node_and_release(&self) -> Result<(Node, String), KernelError> {
        let tunables = self.read_tunables()?;
        let memory = self.read_memory()?;
        let release = self.read_release()?;
        let node = Node {
            tunables,
            memory,
            kernel: KernelVersion::parse(&release),
            nr_cpus: self.read_nr_cpus()?,
            page_size: page_size(),
        };
        Ok((node, release))
    }

    /// Writes one vm sysctl: one write() of the whole value at offset 0, as the kernel wants.
    pub fn write_knob(&self, knob: Knob, value: u64) -> Result<(), KernelError> {
        let path = self.knob_path(knob);
        let file = open_regular(&path, true).map_err(|source| KernelError::Write {
            path: path.clone(),
            value,
            source,
        })?;
        write_value(&file, &path, value)?;
        // The kernel zeroes the other limit knob when one is written. A fake tree is plain
        // files, so do the kernel's part there, so that tests see what a kernel would hold.
        if let Some(other) = knob.zeroed_with().filter(|_| !self.is_procfs()) {
            let path = self.knob_path(other);
            let file = open_regular(&path, true).map_err(|source| KernelError::Write {
                path: path.clone(),
                value: 0,
                source,
            })?;
            write_value(&file, &path, 0)?;
        }
        Ok(())
    }

    /// True when the root is a real procfs (not a test tree).
    pub fn is_procfs(&self) -> bool {
        nix::sys::statfs::statfs(&self.root)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
    }
}

/// One write() of `value` at offset 0 (a file opened with O_TRUNC, or a procfs knob).
fn write_value(file: &fs::File, path: &Path, value: u64) -> Result<(), KernelError> {
    let text = format!("{value}\n");
    let error = |source| KernelError::Write {
        path: path.to_path_buf(),
        value,
        source,
    };
    let written = file.write_at(text.as_bytes(), 0).map_err(error)?;
    if written != text.len() {
        return Err(error(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write",
        )));
    }
    Ok(())
}

/// Parses the text of `knob` into its field of `tunables`; `path` names the file in an error.
fn set_knob(
    tunables: &mut Tunables,
    knob: Knob,
    text: &str,
    path: impl Fn() -> PathBuf,
) -> Result<(), KernelError> {
    let error = |expected| KernelError::Parse {
        path: path(),
        expected,
        found: text.trim().to_string(),
    };
    let unsigned = || parse_unsigned(text).ok_or_else(|| error("a non-negative integer"));
    match knob {
        Knob::OvercommitMemory => {
            tunables.overcommit_memory = text
                .trim()
                .parse()
                .ok()
                .and_then(Mode::from_number)
                .ok_or_else(|| error("0, 1 or 2"))?
        }
        Knob::OvercommitRatio => {
            tunables.overcommit_ratio = text.trim().parse().map_err(|_| error("an integer"))?
        }
        Knob::OvercommitKbytes => tunables.overcommit_kbytes = unsigned()?,
        Knob::AdminReserveKbytes => tunables.admin_reserve_kbytes = unsigned()?,
        Knob::UserReserveKbytes => tunables.user_reserve_kbytes = unsigned()?,
        Knob::MaxMapCount => tunables.max_map_count = unsigned()?,
        Knob::Swappiness => tunables.swappiness = unsigned()?,
        Knob::NrHugepages => tunables.nr_hugepages = unsigned()?,
    }
    Ok(())
}

/// The node-wide kernel state the daemon and `set` read and write: a [`ProcRoot`] for the
/// command line, [`ProcFiles`] (files kept open) for the daemon, fault-injecting stand-ins in
/// tests. Reads and writes one knob at a time, so that a caller reads only what it needs.
pub trait Kernel {
    /// Reads `knobs` into `into`, one read each; its other fields are left as they are.
    fn read_knobs(&self, knobs: &[Knob], into: &mut Tunables) -> Result<(), KernelError>;
    /// /proc/meminfo, reduced to what the rules read.
    fn read_memory(&self) -> Result<Memory, KernelError>;
    /// Everything the rules read (tunables, meminfo, release, CPUs).
    fn node(&self) -> Result<Node, KernelError>;
    fn write_knob(&self, knob: Knob, value: u64) -> Result<(), KernelError>;

    /// All eight vm knobs.
    fn read_tunables(&self) -> Result<Tunables, KernelError> {
        let mut tunables = Tunables::unread(Mode::Heuristic);
        self.read_knobs(&Knob::ALL, &mut tunables)?;
        Ok(tunables)
    }
}

impl Kernel for ProcRoot {
    fn read_knobs(&self, knobs: &[Knob], into: &mut Tunables) -> Result<(), KernelError> {
        for &knob in knobs {
            let path = self.knob_path(knob);
            let text = read_knob_file(&path).map_err(|source| KernelError::Read {
                path: path.clone(),
                source,
            })?;
            set_knob(into, knob, &text, || path.clone())?;
        }
        Ok(())
    }

    fn read_memory(&self) -> Result<Memory, KernelError> {
        ProcRoot::read_memory(self)
    }

    fn node(&self) -> Result<Node, KernelError> {
        ProcRoot::node(self)
    }

    fn write_knob(&self, knob: Knob, value: u64) -> Result<(), KernelError> {
        ProcRoot::write_knob(self, knob, value)
    }
}

/// The daemon's kernel files: each vm knob and /proc/meminfo opened once and read with
/// pread(2) at offset 0 (no open, fstat and close per read, and no descriptor needed when the
/// daemon has none to spare); knobs written with one pwrite(2) through a descriptor of their
/// own, so that a read-only /proc/sys still reads. The release, CPU count and page size are
/// read once: they do not change while the system runs. A descriptor whose read or write
/// fails is closed, and opened again at its next use.
#[derive(Debug)]
pub struct ProcFiles {
    root: ProcRoot,
    /// Not procfs: a test tree, where writes do the kernel's part (truncate, zero the other
    /// limit knob).
    fake: bool,
    readers: [RefCell<Option<fs::File>>; Knob::ALL.len()],
    writers: [RefCell<Option<fs::File>>; Knob::ALL.len()],
    meminfo: RefCell<Option<fs::File>>,
    /// meminfo's text, read into the same buffer each time.
    buffer: RefCell<Vec<u8>>,
    kernel: Option<KernelVersion>,
    nr_cpus: u32,
    page_size: u64,
}

/// The most read from one knob file (a value is at most 20 digits and a newline).
const MAX_KNOB_TEXT: usize = 64;

impl ProcFiles {
    /// Opens what can be opened now (the rest at its first use).
    pub fn open(root: ProcRoot) -> ProcFiles {
        let files = ProcFiles {
            fake: !root.is_procfs(),
            readers: Default::default(),
            writers: Default::default(),
            meminfo: RefCell::new(None),
            buffer: RefCell::new(Vec::with_capacity(8192)),
            kernel: root
                .read_release()
                .ok()
                .and_then(|r| KernelVersion::parse(&r)),
            nr_cpus: root.read_nr_cpus().unwrap_or(1),
            page_size: page_size(),
            root,
        };
        for knob in Knob::ALL {
            let _ = files.reader(knob, |_| Ok(()));
        }
        // The knobs the daemon writes (where /proc/sys is writable).
        for knob in [
            Knob::OvercommitMemory,
            Knob::OvercommitRatio,
            Knob::OvercommitKbytes,
            Knob::Swappiness,
        ] {
            let path = || files.root.knob_path(knob);
            let _ = ProcFiles::with_file(&files.writers[knob as usize], path, true, |_| Ok(()));
        }
        let _ = files.with_meminfo(|_| Ok(()));
        files
    }

    pub fn root(&self) -> &ProcRoot {
        &self.root
    }

    /// Runs `use_file` on the kept descriptor in `slot` (opened first if needed); a failure
    /// closes it.
    fn with_file<T>(
        slot: &RefCell<Option<fs::File>>,
        path: impl FnOnce() -> PathBuf,
        write: bool,
        use_file: impl FnOnce(&fs::File) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut slot = slot.borrow_mut();
        let file = match slot.take() {
            Some(file) => file,
            // Kept, and so not truncated at open: a test tree's file keeps its value.
            None => open_checked(&path(), write, false)?,
        };
        let result = use_file(&file);
        if result.is_ok() {
            *slot = Some(file);
        }
        result
    }

    fn reader<T>(
        &self,
        knob: Knob,
        use_file: impl FnOnce(&fs::File) -> io::Result<T>,
    ) -> Result<T, KernelError> {
        let path = || self.root.knob_path(knob);
        ProcFiles::with_file(&self.readers[knob as usize], path, false, use_file).map_err(
            |source| KernelError::Read {
                path: self.root.knob_path(knob),
                source,
            },
        )
    }

    fn with_meminfo<T>(
        &self,
        use_file: impl FnOnce(&fs::File) -> io::Result<T>,
    ) -> Result<T, KernelError> {
        let path = || self.root.path().join("meminfo");
        ProcFiles::with_file(&self.meminfo, path, false, use_file).map_err(|source| {
            KernelError::Read {
                path: self.root.path().join("meminfo"),
                source,
            }
        })
    }

    fn write_one(&self, knob: Knob, value: u64) -> Result<(), KernelError> {
        let path = || self.root.knob_path(knob);
        let text = format!("{value}\n");
        let fake = self.fake;
        ProcFiles::with_file(&self.writers[knob as usize], path, true, |file| {
            let written = file.write_at(text.as_bytes(), 0)?;
            if written != text.len() {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
            }
            if fake {
                // A plain file keeps what was longer before: cut it where the kernel would.
                file.set_len(text.len() as u64)?;
            }
            Ok(())
        })
        .map_err(|source| KernelError::Write {
            path: self.root.knob_path(knob),
            value,
            source,
        })
    }
}

impl Kernel for ProcFiles {
    fn read_knobs(&self, knobs: &[Knob], into: &mut Tunables) -> Result<(), KernelError> {
        for &knob in knobs {
            let mut buffer = [0u8; MAX_KNOB_TEXT];
            let length = self.reader(knob, |file| loop {
                match file.read_at(&mut buffer, 0) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    result => return result,
                }
            })?;
            let text = String::from_utf8_lossy(&buffer[..length]);
            set_knob(into, knob, &text, || self.root.knob_path(knob))?;
        }
        Ok(())
    }

    fn read_memory(&self) -> Result<Memory, KernelError> {
        let mut buffer = self.buffer.borrow_mut();
        buffer.clear();
        self.with_meminfo(|file| read_whole_at(file, &mut buffer))?;
        let path = || self.root.path().join("meminfo");
        let text = std::str::from_utf8(&buffer).map_err(|_| KernelError::Parse {
            path: path(),
            expected: "UTF-8 text",
            found: String::from_utf8_lossy(&buffer).into_owned(),
        })?;
        parse_meminfo(text).map_err(|(expected, found)| KernelError::Parse {
            path: path(),
            expected,
            found,
        })
    }

    fn node(&self) -> Result<Node, KernelError> {
        Ok(Node {
            tunables: self.read_tunables()?,
            memory: self.read_memory()?,
            kernel: self.kernel,
            nr_cpus: self.nr_cpus,
            page_size: self.page_size,
        })
    }

    fn write_knob(&self, knob: Knob, value: u64) -> Result<(), KernelError> {
        self.write_one(knob, value)?;
        if let Some(other) = knob.zeroed_with().filter(|_| self.fake) {
            self.write_one(other, 0)?;
        }
        Ok(())
    }
}

/// Reads a whole file with pread(2) from offset 0 into `buffer`, up to [`MAX_KERNEL_FILE`].
fn read_whole_at(file: &fs::File, buffer: &mut Vec<u8>) -> io::Result<()> {
    loop {
        if buffer.len() == buffer.capacity() {
            if buffer.len() as u64 >= MAX_KERNEL_FILE {
                return Ok(());
            }
            buffer.reserve(buffer.capacity().max(4096));
        }
        let start = buffer.len();
        buffer.resize(buffer.capacity(), 0);
        match file.read_at(&mut buffer[start..], start as u64) {
            Ok(0) => {
                buffer.truncate(start);
                return Ok(());
            }
            Ok(n) => buffer.truncate(start + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buffer.truncate(start),
            Err(e) => {
                buffer.truncate(start);
                return Err(e);
            }
        }
    }
}

/// A vm sysctl value of the unsigned kind (`overcommit_kbytes` may be anything up to
/// `u64::MAX`).
pub fn parse_unsigned(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// /proc/meminfo text to the figures the rules read; on failure what was expected and found.
pub fn parse_meminfo(text: &str) -> Result<Memory, (&'static str, String)> {
    // The procfs parser slices field names by bytes and multiplies kB without a check: give it
    // only ASCII lines whose values cannot overflow (the kernel writes nothing else).
    const EXPECTED: &str = "ASCII meminfo lines with values that fit 64 bits in bytes";
    let overflows = |line: &str| {
        let mut fields = line.split_whitespace().skip(1);
        let value = fields.next().and_then(|v| v.parse::<u64>().ok());
        let shift = match fields.next() {
            Some(unit) if unit.starts_with(['k', 'K']) => 10,
            Some(unit) if unit.starts_with(['m', 'M']) => 20,
            Some(unit) if unit.starts_with(['g', 'G']) => 30,
            _ => 0,
        };
        value.is_some_and(|v| v > u64::MAX >> shift)
    };
    if let Some(line) = text
        .lines()
        .find(|line| !line.is_ascii() || overflows(line))
    {
        return Err((EXPECTED, line.to_string()));
    }
    // The parser's own errors speak of its internals: show the text's start instead.
    let info = Meminfo::from_read(text.as_bytes()).map_err(|_| {
        let start: String = text.chars().take(80).collect();
        (
            "meminfo lines such as `MemTotal: 16384 kB` (MemTotal, SwapTotal, Committed_AS, ...)",
            start,
        )
    })?;
    let hugetlb = info.hugetlb.unwrap_or_else(|| {
        info.hugepages_total
            .unwrap_or(0)
            .saturating_mul(info.hugepagesize.unwrap_or(0))
    });
    let commit_limit = info
        .commit_limit
        .ok_or(("a CommitLimit line", "none".to_string()))?;
    Ok(Memory {
        mem_total: info.mem_total,
        swap_total: info.swap_total,
        hugetlb,
        committed_as: info.committed_as,
        commit_limit,
        mem_free: info.mem_free,
        file_pages: info
            .buffers
            .saturating_add(info.cached)
            .saturating_add(info.swap_cached),
        shmem: info.shmem.unwrap_or(0),
        swap_free: info.swap_free,
        slab_reclaimable: info.s_reclaimable.unwrap_or(0),
    })
}

/// The most read from one kernel file (meminfo is a few KiB): a wrong tree cannot balloon us.
const MAX_KERNEL_FILE: u64 = 1 << 20;

/// Opens a kernel file without blocking and refuses anything but a regular file (procfs files
/// are regular; a FIFO or device planted in a test tree must not hang the daemon).
pub fn open_regular(path: &Path, write: bool) -> io::Result<fs::File> {
    open_checked(path, write, write)
}

fn open_checked(path: &Path, write: bool, truncate: bool) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .truncate(truncate)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

fn read_file(path: &Path) -> Result<String, KernelError> {
    // Room for a whole meminfo or stat from the start: one read(2) and the one that sees the
    // end, not a small probe and doublings (procfs files say they are empty to stat).
    let mut text = String::with_capacity(4096);
    open_regular(path, false)
        .and_then(|f| f.take(MAX_KERNEL_FILE).read_to_string(&mut text))
        .map_err(|source| KernelError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(text)
}

/// A knob's text: one read(2) of at most [`MAX_KNOB_TEXT`] bytes (a value is far shorter; a
/// file that fills the buffer does not parse). Opened without blocking; with one bounded read
/// a FIFO or a device planted in a test tree can neither hang nor flood the reader, so the
/// file type is not looked at (one system call fewer per knob).
fn read_knob_file(path: &Path) -> io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let mut buffer = [0u8; MAX_KNOB_TEXT];
    let length = loop {
        match file.read_at(&mut buffer, 0) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => break result?,
        }
    };
    Ok(String::from_utf8_lossy(&buffer[..length]).into_owned())
}

/// The base page size of this machine.
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())
        .filter(|&size| size >= 1024)
        .unwrap_or(4096)
}

/// Parses /proc/swaps; on a bad row returns that row.
pub fn parse_swaps(text: &str) -> Result<Vec<SwapDevice>, String> {
    text.lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |i: usize| fields.get(i).and_then(|f| f.parse::<i64>().ok());
            match (fields.len(), number(2), number(3), number(4)) {
                (5, Some(size), Some(used), Some(priority)) if size >= 0 && used >= 0 => {
                    Ok(SwapDevice {
                        path: unescape_octal(fields[0]),
                        kind: fields[1].to_string(),
                        size_bytes: (size as u64).saturating_mul(1024),
                        used_bytes: (used as u64).saturating_mul(1024),
                        priority,
                    })
                }
                _ => Err(line.to_string()),
            }
        })
        .collect()
}

/// Undoes seq_file's `\ooo` escapes (space, tab, newline, backslash) in a path.
fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the rules need to know about a real process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub comm: String,
    pub uid: u32,
    pub cap_sys_admin: bool,
    pub vm_size: u64,
    pub vm_data: u64,
    pub rlimit_as: Option<u64>,
    pub rlimit_data: Option<u64>,
    pub map_count: u64,
    /// The largest hole between its mappings, below TASK_SIZE and above mmap_min_addr.
    pub largest_gap: u64,
    /// Clock ticks after boot at which the process started; with the pid, its identity.
    pub start_time: u64,
    /// The tightest cgroup v2 memory.max on the way from its cgroup to the root.
    pub memory_max: Option<u64>,
    pub threads: u64,
}

const CAP_SYS_ADMIN: u32 = 21;

/// Reads a real process's facts from /proc/PID (never from the proc root).
pub fn process_info(pid: i32) -> Result<ProcessInfo, KernelError> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let parse_error = |file: &str, e: procfs_core::ProcError| KernelError::Parse {
        path: dir.join(file),
        expected: "the kernel's format",
        found: e.to_string(),
    };
    let status = Status::from_read(read_file(&dir.join("status"))?.as_bytes())
        .map_err(|e| parse_error("status", e))?;
    let limits = Limits::from_read(read_file(&dir.join("limits"))?.as_bytes())
        .map_err(|e| parse_error("limits", e))?;
    let stat = Stat::from_read(read_file(&dir.join("stat"))?.as_bytes())
        .map_err(|e| parse_error("stat", e))?;
    let maps = read_file(&dir.join("maps"))?;
    let map_count = maps.lines().count() as u64;
    let soft = |value: &LimitValue| match value {
        LimitValue::Unlimited => None,
        LimitValue::Value(v) => Some(*v),
    };
    Ok(ProcessInfo {
        pid,
        comm: stat.comm,
        uid: status.euid,
        cap_sys_admin: status.capeff & (1 << CAP_SYS_ADMIN) != 0,
        vm_size: status.vmsize.unwrap_or(0) * 1024,
        vm_data: status.vmdata.unwrap_or(0) * 1024,
        rlimit_as: soft(&limits.max_address_space.soft_limit),
        rlimit_data: soft(&limits.max_data_size.soft_limit),
        map_count,
        largest_gap: largest_gap(&maps),
        start_time: stat.starttime,
        memory_max: cgroup_memory_max(pid),
        threads: status.threads,
    })
}

/// Which C library's malloc a process uses, as far as its map shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Libc {
    Glibc,
    Musl,
    /// Neither is mapped (a static or a Go program, for instance).
    Unknown,
}

/// What `check --pid` needs to know about a process's malloc: its C library, its main heap
/// (the brk area), and the malloc settings it started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessHeap {
    pub libc: Libc,
    /// The heap's start and end; `None` when the process has not used brk yet.
    pub heap: Option<(u64, u64)>,
    /// Bytes free between the heap's end and the next mapping above it.
    pub room_above: Option<u64>,
    /// From walking the heap's chunks; `None` when it cannot be read (permission) or does not
    /// look like glibc's.
    pub chunks: Option<HeapChunks>,
    /// The `MALLOC_*` variables and `GLIBC_TUNABLES` of the environment it started with.
    pub malloc_env: Vec<(String, String)>,
}

/// A snapshot of glibc's main heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapChunks {
    /// The size of the chunk at the top of the heap (its free space).
    pub top: u64,
    /// The largest free chunk below it.
    pub largest_free: u64,
}

/// Reads a real process's heap: the [heap] mapping from /proc/PID/maps, its chunks from
/// /proc/PID/mem (which needs the right to trace the process: root, or the same user), and
/// its malloc environment from /proc/PID/environ.
pub fn process_heap(pid: i32) -> Result<ProcessHeap, KernelError> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let maps = read_file(&dir.join("maps"))?;
    let mut ranges: Vec<(u64, u64, &str)> = maps
        .lines()
        .filter_map(|line| {
            let (range, _) = line.split_once(' ')?;
            let (start, end) = range.split_once('-')?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
                line.split_whitespace().nth(5).unwrap_or(""),
            ))
        })
        .collect();
    ranges.sort_unstable();
    let libc = if ranges
        .iter()
        .any(|r| r.2.contains("ld-musl") || r.2.contains("libc.musl"))
    {
        Libc::Musl
    } else if ranges
        .iter()
        .any(|r| r.2.ends_with("/libc.so.6") || r.2.contains("/libc-2."))
    {
        Libc::Glibc
    } else {
        Libc::Unknown
    };
    let heap = ranges
        .iter()
        .find(|r| r.2 == "[heap]")
        .map(|&(start, end, _)| (start, end));
    let room_above = heap.and_then(|(_, end)| {
        let next = ranges.iter().find(|r| r.0 >= end)?;
        // brk keeps one page clear of the next mapping.
        Some(next.0.saturating_sub(end).saturating_sub(page_size()))
    });
    let chunks = match heap {
        None => Some(HeapChunks {
            top: 0,
            largest_free: 0,
        }),
        Some((start, end)) => fs::File::open(dir.join("mem"))
            .ok()
            .and_then(|mem| walk_heap(&mem, start, end)),
    };
    let malloc_env = fs::read(dir.join("environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter_map(|var| {
            let var = String::from_utf8_lossy(var);
            let (name, value) = var.split_once('=')?;
            (name.starts_with("MALLOC_") || name == "GLIBC_TUNABLES")
                .then(|| (name.to_string(), value.to_string()))
        })
        .collect();
    Ok(ProcessHeap {
        libc,
        heap,
        room_above,
        chunks,
        malloc_env,
    })
}

/// Walks glibc's chunks from the heap's start (the main arena's first chunk) to its end: the
/// last chunk is the top. A chunk is free when the next one's PREV_INUSE bit is clear.
/// `None` when a size does not chain up to the end exactly.
fn walk_heap(mem: &fs::File, start: u64, end: u64) -> Option<HeapChunks> {
    const BLOCK: u64 = 1 << 16;
    let length = end.checked_sub(start)?;
    let mut block: Option<(u64, Vec<u8>)> = None;
    let mut word_at = |offset: u64| -> Option<u64> {
        let base = offset / BLOCK * BLOCK;
        if block.as_ref().map(|b| b.0) != Some(base) {
            let mut buffer = vec![0u8; BLOCK.min(length - base) as usize];
            mem.read_exact_at(&mut buffer, start + base).ok()?;
            block = Some((base, buffer));
        }
        let bytes = &block.as_ref()?.1;
        let at = usize::try_from(offset - base).ok()?;
        Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    let (mut chunk, mut largest_free) = (0u64, 0u64);
    loop {
        let size = word_at(chunk + 8)? & !7;
        if size < 16 || size % 16 != 0 {
            return None;
        }
        let next = chunk.checked_add(size)?;
        if next == length {
            return Some(HeapChunks {
                top: size,
                largest_free,
            });
        }
        if next + 16 > length {
            return None;
        }
        if word_at(next + 8)? & 1 == 0 {
            largest_free = largest_free.max(size);
        }
        chunk = next;
    }
}

/// The largest hole between the mappings of a /proc/PID/maps listing, from mmap_min_addr
/// (64 KiB) up to the last mapping of user space (the kernel's [vsyscall] page is not one).
fn largest_gap(maps: &str) -> u64 {
    const MMAP_MIN_ADDR: u64 = 65536;
    let mut ranges: Vec<(u64, u64)> = maps
        .lines()
        .filter_map(|line| {
            let (start, end) = line.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            ))
        })
        .filter(|&(start, _)| start < (1 << 63))
        .collect();
    ranges.sort_unstable();
    let mut previous_end = MMAP_MIN_ADDR;
    let mut largest = 0;
    for (start, end) in ranges {
        largest = largest.max(start.saturating_sub(previous_end));
        previous_end = previous_end.max(end);
    }
    largest
}

/// A process's start time in clock ticks after boot (field 22 of /proc/PID/stat).
pub fn process_start_time(pid: i32) -> Result<u64, KernelError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = read_file(&path)?;
    Stat::from_read(text.as_bytes())
        .map(|s| s.starttime)
        .map_err(|e| KernelError::Parse {
            path,
            expected: "the kernel's stat format",
            found: e.to_string(),
        })
}

/// The short command name of a process, for audit lines; `?` if it is gone.
pub fn process_comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_or_else(|_| "?".to_string(), |c| c.trim().to_string())
}

/// The smallest memory.max from the process's cgroup (v2) up to the root.
fn cgroup_memory_max(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    let mut dir = PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let mut tightest: Option<u64> = None;
    loop {
        if let Ok(value) = fs::read_to_string(dir.join("memory.max")) {
            if let Ok(limit) = value.trim().parse::<u64>() {
                tightest = Some(tightest.map_or(limit, |t| t.min(limit)));
            }
        }
        if dir == Path::new("/sys/fs/cgroup") || !dir.pop() {
            return tightest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writable copy of a fixture's proc tree.
    fn tree() -> (tempfile::TempDir, ProcRoot) {
        fn copy(from: &Path, to: &Path) {
            fs::create_dir_all(to).unwrap();
            for entry in fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    copy(&entry.path(), &to.join(entry.file_name()));
                } else {
                    fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
                }
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        copy(
            Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/kernels/m1024-swap512-mode0/proc"
            )),
            tmp.path(),
        );
        let root = ProcRoot::new(tmp.path());
        (tmp, root)
    }

    #[test]
    fn kept_open_files_read_the_tree_and_write_as_the_kernel_would() {
        let (_tmp, root) = tree();
        let files = ProcFiles::open(root.clone());
        assert_eq!(files.node().unwrap(), root.node().unwrap());
        // A value changed in place is read through the descriptor kept open.
        fs::write(root.knob_path(Knob::OvercommitMemory), "1\n").unwrap();
        let mut tunables = root.read_tunables().unwrap();
        tunables.overcommit_memory = Mode::Never;
        files
            .read_knobs(&[Knob::OvercommitMemory], &mut tunables)
            .unwrap();
        assert_eq!(tunables.overcommit_memory, Mode::Always);
        // Writing one limit zeroes the other, and a shorter value leaves nothing behind.
        files.write_knob(Knob::OvercommitKbytes, u64::MAX).unwrap();
        assert_eq!(
            fs::read_to_string(root.knob_path(Knob::OvercommitRatio)).unwrap(),
            "0\n"
        );
        files.write_knob(Knob::OvercommitRatio, 50).unwrap();
        assert_eq!(
            fs::read_to_string(root.knob_path(Knob::OvercommitKbytes)).unwrap(),
            "0\n"
        );
        assert_eq!(
            files.read_tunables().unwrap(),
            root.read_tunables().unwrap()
        );
        // What does not parse is an error naming the file.
        fs::write(root.path().join("meminfo"), "garbage\n").unwrap();
        let e = files.read_memory().unwrap_err();
        assert!(e.to_string().contains("meminfo"), "{e}");
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_opened_again_at_its_next_use() {
        let (_tmp, root) = tree();
        let knob = root.knob_path(Knob::Swappiness);
        fs::remove_file(&knob).unwrap();
        fs::create_dir(&knob).unwrap();
        let files = ProcFiles::open(root.clone());
        let e = files.read_tunables().unwrap_err();
        assert!(e.to_string().contains("swappiness"), "{e}");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        fs::remove_dir(&knob).unwrap();
        fs::write(&knob, "10\n").unwrap();
        assert_eq!(files.read_tunables().unwrap().swappiness, 10);
    }

    #[test]
    fn swaps_parse_and_unescape_paths() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                    /dev/vda                                partition\t1048572\t\t0\t\t-2\n\
                    /var/swap\\040file\\134x                  file\t\t524284\t\t1024\t\t5\n";
        let swaps = parse_swaps(text).unwrap();
        assert_eq!(swaps.len(), 2);
        assert_eq!(swaps[0].path, "/dev/vda");
        assert_eq!(swaps[0].size_bytes, 1048572 * 1024);
        assert_eq!(swaps[0].priority, -2);
        assert_eq!(swaps[1].path, "/var/swap file\\x");
        assert_eq!(swaps[1].kind, "file");
        assert_eq!(swaps[1].used_bytes, 1024 * 1024);
    }

    #[test]
    fn bad_swap_rows_are_reported() {
        assert_eq!(
            parse_swaps("header\n/dev/x partition ten 0 -2\n"),
            Err("/dev/x partition ten 0 -2".into())
        );
        assert_eq!(
            parse_swaps("Filename Type Size Used Priority\n"),
            Ok(vec![])
        );
    }

    #[test]
    fn meminfo_that_would_trip_the_parser_is_an_error() {
        let good = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/kernels/m1024-swap512-mode0/proc/meminfo"
        ))
        .unwrap();
        assert!(parse_meminfo(&good).is_ok());
        // Found by fuzzing: a non-ASCII field name, and a value that overflows in kB.
        assert!(parse_meminfo(&good.replace("Active:", "Acti\u{fffd}\u{fffd}:")).is_err());
        let huge = good.replace(
            "MemTotal:         996612 kB",
            "MemTotal: 18446744073709551615 kB",
        );
        assert!(parse_meminfo(&huge).is_err());
    }

    #[test]
    fn octal_escapes_only_apply_to_three_octal_digits() {
        assert_eq!(unescape_octal("a\\011b"), "a\tb");
        assert_eq!(unescape_octal("a\\9b"), "a\\9b");
        assert_eq!(unescape_octal("end\\"), "end\\");
    }

    #[test]
    fn the_largest_gap_is_found_between_mappings() {
        let maps = "\
555555554000-555555556000 r-xp 00000000 08:01 1 /usr/bin/python3
555555556000-555555600000 rw-p 00000000 00:00 0 [heap]
7ffff7dd0000-7ffff7ff0000 r-xp 00000000 08:01 2 /usr/lib/libc.so.6
7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
";
        // Below the program (85.3 TiB) beats between the heap and libc (42.7 TiB).
        assert_eq!(largest_gap(maps), 0x555555554000 - 65536);
        assert_eq!(
            largest_gap("1000000-2000000 r-xp 0 0:0 0\n"),
            0x1000000 - 65536
        );
    }

    #[test]
    fn this_process_can_be_read() {
        let me = process_info(std::process::id() as i32).unwrap();
        assert!(me.vm_size > 0);
        assert!(me.map_count > 0);
        assert_eq!(process_start_time(me.pid).unwrap(), me.start_time);
    }
}
