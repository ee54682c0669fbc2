//! Reads the commit charge of every process under a proc root (`DIR/[0-9]*`: `status`,
//! `smaps`, `cgroup`) and the SysV segments (`DIR/sysvipc/shm`), for `overcommitctl top`.
//!
//! Unlike the other facts about processes (kernel.rs reads those from the real /proc), these
//! come from the proc root: `top`'s rows must add up against the Committed_AS of the same tree,
//! and tests and the benchmark walk trees of their own. The default root is the real /proc.
//!
//! Kernel threads and zombies (no `VmSize` in status) are skipped before their smaps is opened.
//! A process that exits while it is read is counted as vanished, not as an error; one whose
//! smaps this user may not read (another user's, without root) is counted as unreadable.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::charge::{self, MappingTally, ProcessCharge, SharedObjects, SysvSegments};
use crate::kernel::KernelError;
use crate::smaps;

/// What a walk over the processes found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcessScan {
    pub processes: Vec<ProcessCharge>,
    pub shared: SharedObjects,
    pub counts: ScanCounts,
}

/// How many processes were read, skipped, or could not be seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScanCounts {
    /// Processes whose smaps was read.
    pub processes_read: usize,
    /// Their mappings.
    pub mappings_read: usize,
    pub kernel_threads: usize,
    pub zombies: usize,
    /// Processes whose smaps this user may not read (other users' processes, without root).
    pub processes_unreadable: usize,
    /// Processes that exited while being read.
    pub processes_vanished: usize,
}

/// The smaps read buffer: large enough that reads rarely split a mapping's block.
const SMAPS_BUFFER: usize = 64 * 1024;

/// Walks `root/[0-9]*`. Fails only when `root` itself cannot be listed.
pub fn scan_processes(root: &Path) -> Result<ProcessScan, KernelError> {
    let entries = fs::read_dir(root).map_err(|source| KernelError::Read {
        path: root.to_path_buf(),
        source,
    })?;
    let pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid > 0)
        .collect();

    let mut scan = ProcessScan {
        processes: Vec::with_capacity(pids.len()),
        ..ProcessScan::default()
    };
    let mut reader = Reader {
        path: PathBuf::new(),
        text: Vec::with_capacity(4096),
        smaps: vec![0; SMAPS_BUFFER],
    };
    for pid in pids {
        match reader.process(root, pid, &mut scan.shared) {
            Ok(Outcome::Process(process, mappings)) => {
                scan.counts.processes_read += 1;
                scan.counts.mappings_read += mappings;
                scan.processes.push(process);
            }
            Ok(Outcome::KernelThread) => scan.counts.kernel_threads += 1,
            Ok(Outcome::Zombie) => scan.counts.zombies += 1,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                scan.counts.processes_unreadable += 1
            }
            Err(_) => scan.counts.processes_vanished += 1,
        }
    }
    Ok(scan)
}

/// `root/sysvipc/shm`; no segments when the kernel has no SysV IPC (or the tree no file).
pub fn read_sysv_segments(root: &Path, page_size: u64) -> Result<SysvSegments, KernelError> {
    let path = root.join("sysvipc/shm");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(charge::parse_sysv_shm(&text, page_size)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SysvSegments::default()),
        Err(source) => Err(KernelError::Read { path, source }),
    }
}

/// What reading one process found.
enum Outcome {
    Process(ProcessCharge, usize),
    KernelThread,
    Zombie,
}

/// The buffers reused from one process to the next.
struct Reader {
    path: PathBuf,
    text: Vec<u8>,
    smaps: Vec<u8>,
}

impl Reader {
    fn open(&mut self, root: &Path, pid: i32, file: &str) -> io::Result<File> {
        self.path.clear();
        self.path.push(root);
        self.path.push(pid.to_string());
        self.path.push(file);
        File::open(&self.path)
    }

    fn read_text(&mut self, root: &Path, pid: i32, file: &str) -> io::Result<()> {
        let mut f = self.open(root, pid, file)?;
        self.text.clear();
        f.read_to_end(&mut self.text)?;
        Ok(())
    }

    fn process(
        &mut self,
        root: &Path,
        pid: i32,
        shared: &mut SharedObjects,
    ) -> io::Result<Outcome> {
        self.read_text(root, pid, "status")?;
        let status = parse_status(&self.text).ok_or(io::ErrorKind::InvalidData)?;
        if status.zombie {
            return Ok(Outcome::Zombie);
        }
        if !status.has_mm {
            return Ok(Outcome::KernelThread);
        }
        let (command, uid, ppid, rss_bytes) = (
            String::from_utf8_lossy(status.name).into_owned(),
            status.uid,
            status.ppid,
            status.rss_bytes,
        );

        let file = self.open(root, pid, "smaps")?;
        let mut tally = MappingTally::default();
        smaps::parse(file, &mut self.smaps, |m| tally.add(m, shared))?;
        if tally.mappings == 0 {
            // It had an address space a moment ago: it exited in between.
            return Err(io::ErrorKind::NotFound.into());
        }

        let cgroup = match self.read_text(root, pid, "cgroup") {
            Ok(()) => charge::cgroup_path(&String::from_utf8_lossy(&self.text)).to_string(),
            Err(_) => String::new(),
        };
        Ok(Outcome::Process(
            ProcessCharge {
                pid,
                ppid,
                uid,
                command,
                cgroup,
                charged_bytes: tally.charged_bytes,
                noreserve_bytes: tally.noreserve_bytes,
                rss_bytes,
            },
            tally.mappings,
        ))
    }
}

/// What `top` reads from /proc/PID/status.
#[derive(Debug, PartialEq, Eq)]
struct StatusFacts<'a> {
    name: &'a [u8],
    uid: u32,
    ppid: i32,
    rss_bytes: u64,
    /// A `VmSize` line: it has an address space (kernel threads and zombies have none).
    has_mm: bool,
    zombie: bool,
}

fn parse_status(text: &[u8]) -> Option<StatusFacts<'_>> {
    let mut facts = StatusFacts {
        name: b"",
        uid: u32::MAX,
        ppid: 0,
        rss_bytes: 0,
        has_mm: false,
        zombie: false,
    };
    let number = |value: &[u8]| -> Option<u64> {
        let text = std::str::from_utf8(value).ok()?;
        text.split_whitespace().next()?.parse().ok()
    };
    for line in text.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (key, value) = (&line[..colon], &line[colon + 1..]);
        match key {
            b"Name" => facts.name = value.strip_prefix(b"\t").unwrap_or(value),
            b"State" => facts.zombie = value.trim_ascii_start().starts_with(b"Z"),
            b"PPid" => facts.ppid = number(value)? as i32,
            // Real, effective, saved, filesystem: the effective one, as ps shows.
            b"Uid" => {
                let text = std::str::from_utf8(value).ok()?;
                facts.uid = text.split_whitespace().nth(1)?.parse().ok()?;
            }
            b"VmSize" => facts.has_mm = true,
            b"VmRSS" => facts.rss_bytes = number(value)?.saturating_mul(1024),
            _ => {}
        }
    }
    (facts.uid != u32::MAX).then_some(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n\
        Pid:\t4242\nPPid:\t17\nUid:\t1000\t1001\t1000\t1000\nGid:\t100\t100\t100\t100\n\
        VmPeak:\t  400000 kB\nVmSize:\t  318000 kB\nVmRSS:\t    2048 kB\nThreads:\t1\n";

    #[test]
    fn status_gives_name_effective_uid_parent_and_rss() {
        let facts = parse_status(STATUS.as_bytes()).unwrap();
        assert_eq!(facts.name, b"python3");
        assert_eq!(facts.uid, 1001);
        assert_eq!(facts.ppid, 17);
        assert_eq!(facts.rss_bytes, 2048 * 1024);
        assert!(facts.has_mm && !facts.zombie);
    }

    #[test]
    fn kernel_threads_and_zombies_have_no_address_space() {
        let kthread =
            "Name:\tkworker/0:1\nState:\tI (idle)\nPPid:\t2\nUid:\t0\t0\t0\t0\nThreads:\t1\n";
        assert!(!parse_status(kthread.as_bytes()).unwrap().has_mm);
        let zombie = "Name:\tsh\nState:\tZ (zombie)\nPPid:\t1\nUid:\t0\t0\t0\t0\n";
        assert!(parse_status(zombie.as_bytes()).unwrap().zombie);
        assert_eq!(parse_status(b"garbage"), None);
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn a_tree_is_walked_and_kernel_threads_and_the_vanished_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("4242/status"), STATUS);
        write(
            &root.join("4242/smaps"),
            "7f0000000000-7f0012c00000 rw-p 00000000 00:00 0 \nRss: 8 kB\nVmFlags: rd wr mr mw me ac \n\
             7f0020000000-7f0020001000 rw-p 00000000 00:00 0 \nVmFlags: rd wr mr mw me nr \n",
        );
        write(&root.join("4242/cgroup"), "0::/slurm/job_9\n");
        write(
            &root.join("2/status"),
            "Name:\tkthreadd\nState:\tS\nPPid:\t0\nUid:\t0\t0\t0\t0\n",
        );
        // Status read, smaps gone: exited in between.
        write(&root.join("77/status"), STATUS);
        fs::create_dir_all(root.join("self")).unwrap();
        write(&root.join("meminfo"), "MemTotal: 1 kB\n");

        let scan = scan_processes(root).unwrap();
        assert_eq!(scan.processes.len(), 1);
        let p = &scan.processes[0];
        assert_eq!((p.pid, p.ppid, p.uid), (4242, 17, 1001));
        assert_eq!(p.command, "python3");
        assert_eq!(p.cgroup, "/slurm/job_9");
        assert_eq!(p.charged_bytes, 300 << 20);
        assert_eq!(p.noreserve_bytes, 4096);
        assert_eq!(p.rss_bytes, 2 << 20);
        assert_eq!(
            scan.counts,
            ScanCounts {
                processes_read: 1,
                mappings_read: 2,
                kernel_threads: 1,
                zombies: 0,
                processes_unreadable: 0,
                processes_vanished: 1,
            }
        );
        assert!(scan_processes(&root.join("missing")).is_err());
    }

    #[test]
    fn sysv_segments_are_optional() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read_sysv_segments(dir.path(), 4096).unwrap(),
            SysvSegments::default()
        );
    }
}
