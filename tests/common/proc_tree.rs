//! Fake processes for `overcommitctl top`'s tests and benchmark: `PID/status`, `PID/cgroup`
//! and `PID/smaps` in the kernel's own format (Linux 6.x), under a fake proc root.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

/// VmFlags of the usual kinds of mapping.
pub const CHARGED: &str = "rd wr mr mw me ac";
pub const NORESERVE: &str = "rd wr mr mw me nr";
pub const READ_ONLY: &str = "rd mr mw me";
pub const CODE: &str = "rd ex mr mw me";
pub const SHARED: &str = "rd wr sh mr mw me ms";

/// One mapping: its length in 4 KiB pages, VmFlags, path (empty: anonymous) and Rss in kB.
#[derive(Debug, Clone)]
pub struct FakeMapping {
    pub pages: u64,
    pub flags: &'static str,
    pub path: String,
    pub inode: u64,
    pub rss_kb: u64,
}

impl FakeMapping {
    pub fn new(pages: u64, flags: &'static str, path: &str) -> FakeMapping {
        FakeMapping {
            pages,
            flags,
            path: path.to_string(),
            inode: if path.is_empty() { 0 } else { 1000 + pages },
            rss_kb: pages.min(16) * 4,
        }
    }

    pub fn inode(mut self, inode: u64) -> FakeMapping {
        self.inode = inode;
        self
    }

    pub fn rss_kb(mut self, kb: u64) -> FakeMapping {
        self.rss_kb = kb;
        self
    }
}

#[derive(Debug, Clone)]
pub struct FakeProcess {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub name: String,
    pub cgroup: String,
    pub mappings: Vec<FakeMapping>,
}

impl FakeProcess {
    pub fn new(pid: i32, uid: u32, name: &str) -> FakeProcess {
        FakeProcess {
            pid,
            ppid: 1,
            uid,
            name: name.to_string(),
            cgroup: "/user.slice".to_string(),
            mappings: Vec::new(),
        }
    }

    pub fn map(mut self, mapping: FakeMapping) -> FakeProcess {
        self.mappings.push(mapping);
        self
    }

    pub fn cgroup(mut self, cgroup: &str) -> FakeProcess {
        self.cgroup = cgroup.to_string();
        self
    }

    pub fn ppid(mut self, ppid: i32) -> FakeProcess {
        self.ppid = ppid;
        self
    }

    /// The bytes of its VM_ACCOUNT mappings.
    pub fn charged_bytes(&self) -> u64 {
        self.mappings
            .iter()
            .filter(|m| m.flags.split(' ').any(|f| f == "ac"))
            .map(|m| m.pages * 4096)
            .sum()
    }

    /// A process with `n` mappings the way a dynamically linked program has them: per shared
    /// library four (text, read-only data, relro, data), then heap, anonymous areas, stack.
    pub fn typical(pid: i32, uid: u32, n: usize) -> FakeProcess {
        let mut p = FakeProcess::new(pid, uid, &format!("worker{}", pid % 50));
        for i in 0..n * 6 / 10 / 4 {
            let lib = format!("/usr/lib/x86_64-linux-gnu/libexample{i}.so.1");
            p = p
                .map(FakeMapping::new(40, READ_ONLY, &lib))
                .map(FakeMapping::new(200, CODE, &lib))
                .map(FakeMapping::new(2, "rd mr mw me ac", &lib))
                .map(FakeMapping::new(3, CHARGED, &lib));
        }
        p = p.map(FakeMapping::new(33, CHARGED, "[heap]"));
        while p.mappings.len() + 3 < n {
            let pages = 256 + p.mappings.len() as u64;
            p = p.map(FakeMapping::new(pages, CHARGED, ""));
        }
        p.map(FakeMapping::new(33, CHARGED, "[stack]"))
            .map(FakeMapping::new(4, "rd mr pf io de dd sd", "[vvar]"))
            .map(FakeMapping::new(2, "rd ex mr mw me de sd", "[vdso]"))
    }

    pub fn write(&self, root: &Path) {
        let dir = root.join(self.pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        let rss_kb: u64 = self.mappings.iter().map(|m| m.rss_kb).sum();
        let size_kb: u64 = self.mappings.iter().map(|m| m.pages * 4).sum();
        fs::write(
            dir.join("status"),
            format!(
                "Name:\t{name}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\nNgid:\t0\n\
                 Pid:\t{pid}\nPPid:\t{ppid}\nTracerPid:\t0\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n\
                 Gid:\t{uid}\t{uid}\t{uid}\t{uid}\nFDSize:\t64\nGroups:\t\n\
                 VmPeak:\t{size_kb:>8} kB\nVmSize:\t{size_kb:>8} kB\nVmLck:\t       0 kB\n\
                 VmPin:\t       0 kB\nVmHWM:\t{rss_kb:>8} kB\nVmRSS:\t{rss_kb:>8} kB\n\
                 RssAnon:\t{rss_kb:>8} kB\nVmData:\t{size_kb:>8} kB\nVmStk:\t     132 kB\n\
                 Threads:\t1\nSigQ:\t0/95317\nCapEff:\t0000000000000000\n\
                 voluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t1\n",
                name = self.name,
                pid = self.pid,
                ppid = self.ppid,
                uid = self.uid,
            ),
        )
        .unwrap();
        fs::write(dir.join("cgroup"), format!("0::{}\n", self.cgroup)).unwrap();
        fs::write(dir.join("smaps"), smaps_text(&self.mappings)).unwrap();
    }
}

/// A kernel thread: a status without VmSize and an empty smaps.
pub fn write_kernel_thread(root: &Path, pid: i32, name: &str) {
    let dir = root.join(pid.to_string());
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("status"),
        format!("Name:\t{name}\nState:\tI (idle)\nTgid:\t{pid}\nPid:\t{pid}\nPPid:\t2\nUid:\t0\t0\t0\t0\nThreads:\t1\n"),
    )
    .unwrap();
    fs::write(dir.join("smaps"), "").unwrap();
    fs::write(dir.join("cgroup"), "0::/\n").unwrap();
}

/// smaps text for `mappings`, laid out one after another from 0x7f0000000000.
pub fn smaps_text(mappings: &[FakeMapping]) -> String {
    let mut out = String::new();
    let mut start: u64 = 0x7f00_0000_0000;
    for m in mappings {
        let end = start + m.pages * 4096;
        let perms = if m.flags.contains("wr") {
            if m.flags.contains("sh") {
                "rw-s"
            } else {
                "rw-p"
            }
        } else if m.flags.contains("ex") {
            "r-xp"
        } else {
            "r--p"
        };
        let dev = if m.path.is_empty() || m.path.starts_with('[') {
            "00:00"
        } else if m.path.ends_with(" (deleted)") {
            "00:01"
        } else {
            "fe:00"
        };
        let inode = if dev == "00:00" { 0 } else { m.inode };
        let head = format!("{start:x}-{end:x} {perms} 00000000 {dev} {inode}");
        let _ = writeln!(out, "{head:<73}{}", m.path);
        let size = m.pages * 4;
        let rss = m.rss_kb;
        for (key, value) in [
            ("Size", size),
            ("KernelPageSize", 4),
            ("MMUPageSize", 4),
            ("Rss", rss),
            ("Pss", rss),
            ("Pss_Dirty", 0),
            ("Shared_Clean", 0),
            ("Shared_Dirty", 0),
            ("Private_Clean", 0),
            ("Private_Dirty", rss),
            ("Referenced", rss),
            ("Anonymous", rss),
            ("KSM", 0),
            ("LazyFree", 0),
            ("AnonHugePages", 0),
            ("ShmemPmdMapped", 0),
            ("FilePmdMapped", 0),
            ("Shared_Hugetlb", 0),
            ("Private_Hugetlb", 0),
            ("Swap", 0),
            ("SwapPss", 0),
            ("Locked", 0),
        ] {
            let _ = writeln!(out, "{:<16}{value:>8} kB", format!("{key}:"));
        }
        let _ = writeln!(out, "THPeligible:           0\nVmFlags: {} ", m.flags);
        start = end + 4096;
    }
    out
}
