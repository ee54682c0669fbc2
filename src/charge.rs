//! Who holds the commit charge: each process's share of Committed_AS, the shared memory that
//! is charged outside any process's mappings, and the rest, named, so that the rows add up to
//! Committed_AS.
//!
//! What the kernel charges to vm_committed_as (mm/mmap.c, mm/shmem.c, ipc/shm.c):
//! - every mapping with VM_ACCOUNT (smaps `ac`), its whole length: private writable mappings
//!   unless MAP_NORESERVE outside mode never, brk, the stack, and copies of them at fork;
//! - shmem objects: SysV segments and MAP_SHARED|MAP_ANONYMOUS objects in full when created
//!   (`shmem_acct_size`), tmpfs files, memfds and MAP_NORESERVE objects page by page as pages
//!   are allocated (`shmem_acct_blocks`), swapped-out pages included;
//! - nothing for hugetlb, read-only or shared file mappings.
//!
//! Pure: the caller reads /proc (see `process_scan`) and hands the facts in.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;

use crate::model::Memory;
use crate::smaps::{Backing, Mapping};

/// One process's commit charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessCharge {
    pub pid: i32,
    pub ppid: i32,
    /// Effective uid.
    pub uid: u32,
    /// The command name (`Name:` of /proc/PID/status).
    pub command: String,
    /// The cgroup v2 path, or the v1 memory controller's.
    pub cgroup: String,
    /// The lengths of its VM_ACCOUNT mappings.
    pub charged_bytes: u64,
    /// Private writable mappings that MAP_NORESERVE kept out of Committed_AS.
    pub noreserve_bytes: u64,
    pub rss_bytes: u64,
}

/// Adds up the mappings of one process; shared anonymous objects go to `SharedObjects`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MappingTally {
    pub charged_bytes: u64,
    pub noreserve_bytes: u64,
    pub mappings: usize,
}

impl MappingTally {
    pub fn add(&mut self, mapping: &Mapping, shared: &mut SharedObjects) {
        self.mappings += 1;
        if mapping.charged() {
            self.charged_bytes += mapping.size();
        } else if mapping.noreserve() {
            self.noreserve_bytes += mapping.size();
        }
        if mapping.backing == Backing::SharedAnonymous
            && mapping.flags.contains(crate::smaps::VmFlags::SHARED)
        {
            shared.add(mapping);
        }
    }
}

/// The shared anonymous objects (MAP_SHARED|MAP_ANONYMOUS) seen in any process, once each.
///
/// One is charged in full when created (mm/shmem.c: `shmem_zero_setup` ->
/// `shmem_kernel_file_setup(.., vma->vm_flags)` -> `shmem_acct_size`), unless it was mapped
/// with MAP_NORESERVE outside mode never (`nr`): then page by page, like tmpfs. Its resident
/// pages are also in /proc/meminfo's Shmem.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SharedObjects {
    /// (device, inode) -> the object.
    objects: BTreeMap<(u64, u64), SharedObject>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SharedObject {
    /// The furthest end of any mapping into it: its size, unless nobody maps its tail.
    size: u64,
    /// The most any one process has of it in memory.
    resident: u64,
    charged_in_full: bool,
}

impl SharedObjects {
    pub fn add(&mut self, mapping: &Mapping) {
        let object = self
            .objects
            .entry((mapping.device, mapping.inode))
            .or_default();
        object.size = object
            .size
            .max(mapping.offset.saturating_add(mapping.size()));
        object.resident = object.resident.max(mapping.rss_bytes);
        object.charged_in_full |= !mapping.flags.contains(crate::smaps::VmFlags::NORESERVE);
    }

    /// The objects charged in full (the others are charged as tmpfs is, within Shmem).
    pub fn totals(&self) -> SharedTotals {
        let full = self.objects.values().filter(|o| o.charged_in_full);
        SharedTotals {
            objects: full.clone().count(),
            charged_bytes: full.clone().map(|o| o.size).sum(),
            resident_bytes: full.map(|o| o.resident.min(o.size)).sum(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SharedTotals {
    pub objects: usize,
    pub charged_bytes: u64,
    pub resident_bytes: u64,
}

/// The SysV shared memory segments of /proc/sysvipc/shm.
///
/// ipc/shm.c `newseg` charges a segment's size, page-aligned, when it is created (SHM_NORESERVE
/// is honoured outside mode never only; /proc does not show it, so such a segment is counted in
/// full here). Its resident pages are also in Shmem.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SysvSegments {
    pub segments: usize,
    pub charged_bytes: u64,
    pub resident_bytes: u64,
    pub swapped_bytes: u64,
}

/// Parses /proc/sysvipc/shm (`key shmid perms size cpid lpid nattch uid gid cuid cgid atime
/// dtime ctime rss swap`; rss and swap in bytes). Rows that do not parse are skipped.
pub fn parse_sysv_shm(text: &str, page_size: u64) -> SysvSegments {
    let mut totals = SysvSegments::default();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let Some(size) = number(3) else { continue };
        totals.segments += 1;
        totals.charged_bytes += size.div_ceil(page_size.max(1)) * page_size.max(1);
        totals.resident_bytes += number(14).unwrap_or(0);
        totals.swapped_bytes += number(15).unwrap_or(0);
    }
    totals
}

/// What is charged outside the processes' own mappings, and what is left unexplained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remainder {
    /// Shmem not counted below: tmpfs (and /dev/shm, the initramfs), memfds, MAP_NORESERVE
    /// shared objects; resident pages only (swapped-out ones are in `not_visible_bytes`).
    pub shmem_bytes: u64,
    pub sysv: SysvSegments,
    pub shared_anonymous: SharedTotals,
    /// Committed_AS minus everything attributed: processes this PID namespace or user cannot
    /// see, swapped-out tmpfs pages, processes that changed while being read. Negative when
    /// more was attributed than is charged (a SysV segment made with SHM_NORESERVE).
    pub not_visible_bytes: i64,
    /// Hugetlb pools: never charged, shown for context.
    pub hugetlb_bytes: u64,
}

/// The rows that are not processes, given the processes' total charge.
pub fn remainder(
    memory: &Memory,
    processes_bytes: u64,
    shared: SharedTotals,
    sysv: SysvSegments,
) -> Remainder {
    let shmem_bytes = memory
        .shmem
        .saturating_sub(sysv.resident_bytes)
        .saturating_sub(shared.resident_bytes);
    let attributed = i128::from(processes_bytes)
        + i128::from(shmem_bytes)
        + i128::from(sysv.charged_bytes)
        + i128::from(shared.charged_bytes);
    let rest = i128::from(memory.committed_as) - attributed;
    Remainder {
        shmem_bytes,
        sysv,
        shared_anonymous: shared,
        not_visible_bytes: i64::try_from(rest).unwrap_or(if rest < 0 {
            i64::MIN
        } else {
            i64::MAX
        }),
        hugetlb_bytes: memory.hugetlb,
    }
}

/// How `top` groups processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Process,
    User,
    Cgroup,
    // The Slurm job (from the cgroup path), else the tag of a lease whose holder is the
    // process or an ancestor (see `jobs`).
    Job,
}

/// A process's job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Job {
    Slurm(u64),
    /// The tag (or id) of an overcommitd lease held by the process or an ancestor.
    Lease(String),
    None,
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Job::Slurm(id) => write!(f, "{id}"),
            Job::Lease(tag) => write!(f, "lease:{tag}"),
            Job::None => f.write_str("none"),
        }
    }
}

/// The Slurm job id in a cgroup path: `/system.slice/slurmstepd.scope/job_123/step_0/...`
/// (cgroup v2) or `/slurm/uid_1000/job_123/step_batch` (v1).
pub fn slurm_job(cgroup: &str) -> Option<u64> {
    cgroup
        .split('/')
        .filter_map(|part| part.strip_prefix("job_"))
        .find_map(|id| id.parse().ok())
}

/// The cgroup a process is accounted in, from /proc/PID/cgroup: the v2 path (`0::PATH`), else
/// the v1 memory controller's, else the first line's.
pub fn cgroup_path(text: &str) -> &str {
    fn path_of(line: &str) -> Option<&str> {
        line.splitn(3, ':').nth(2).map(str::trim_end)
    }
    text.lines()
        .find(|line| line.starts_with("0::"))
        .or_else(|| {
            text.lines().find(|line| {
                line.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == "memory"))
            })
        })
        .or_else(|| text.lines().next())
        .and_then(path_of)
        .unwrap_or("")
}

/// Each process's job: its Slurm job, else the lease of the nearest ancestor (or itself) that
/// holds one.
pub fn jobs(
    processes: &[ProcessCharge],
    lease_holders: &HashMap<i32, String>,
) -> HashMap<i32, Job> {
    let parents: HashMap<i32, i32> = processes.iter().map(|p| (p.pid, p.ppid)).collect();
    processes
        .iter()
        .map(|p| {
            let job = match slurm_job(&p.cgroup) {
                Some(id) => Job::Slurm(id),
                None => {
                    // Bounded: a pid namespace is a tree, but /proc read over time need not be.
                    let mut pid = p.pid;
                    let mut found = Job::None;
                    for _ in 0..256 {
                        if let Some(tag) = lease_holders.get(&pid) {
                            found = Job::Lease(tag.clone());
                            break;
                        }
                        match parents.get(&pid) {
                            Some(&parent) if parent > 0 && parent != pid => pid = parent,
                            _ => break,
                        }
                    }
                    found
                }
            };
            (p.pid, job)
        })
        .collect()
}

/// What a row of `top` stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HolderKind {
    Process,
    User,
    Cgroup,
    Job,
    /// The holders beyond the limit, summed.
    Other,
}

/// One row of `top`: a process or a group of processes, with its charge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Holder {
    pub kind: HolderKind,
    pub pid: Option<i32>,
    pub command: Option<String>,
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub cgroup: Option<String>,
    pub job: Option<String>,
    pub processes: usize,
    pub charged_bytes: u64,
    pub noreserve_bytes: u64,
    pub rss_bytes: u64,
    pub committed_as_percent: f64,
    pub commit_limit_percent: f64,
}

impl Holder {
    fn empty(kind: HolderKind) -> Holder {
        Holder {
            kind,
            pid: None,
            command: None,
            user: None,
            uid: None,
            cgroup: None,
            job: None,
            processes: 0,
            charged_bytes: 0,
            noreserve_bytes: 0,
            rss_bytes: 0,
            committed_as_percent: 0.0,
            commit_limit_percent: 0.0,
        }
    }

    fn add(&mut self, p: &ProcessCharge) {
        self.processes += 1;
        self.charged_bytes += p.charged_bytes;
        self.noreserve_bytes += p.noreserve_bytes;
        self.rss_bytes += p.rss_bytes;
    }

    fn absorb(&mut self, other: &Holder) {
        self.processes += other.processes;
        self.charged_bytes += other.charged_bytes;
        self.noreserve_bytes += other.noreserve_bytes;
        self.rss_bytes += other.rss_bytes;
    }

    /// What the row is called in text: command, user, cgroup, job or "other".
    pub fn label(&self) -> &str {
        let name = match self.kind {
            HolderKind::Process => &self.command,
            HolderKind::User => &self.user,
            HolderKind::Cgroup => &self.cgroup,
            HolderKind::Job => &self.job,
            HolderKind::Other => &None,
        };
        match name.as_deref() {
            None => "other",
            Some("") => "-",
            Some(name) => name,
        }
    }
}

/// `part` as a percentage of `whole` (0 when there is no whole).
pub fn percent(part: i128, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 100.0 / whole as f64 * 100.0).round() / 100.0
    }
}

/// The holders of the charge grouped `by`, largest first, the first `limit` of them (0: all)
/// and one `other` row for the rest. `user_name` names a uid; `jobs` is from [`jobs`].
pub fn holders(
    processes: &[ProcessCharge],
    by: GroupBy,
    memory: &Memory,
    limit: usize,
    user_name: &mut dyn FnMut(u32) -> String,
    jobs: &HashMap<i32, Job>,
) -> Vec<Holder> {
    let job_of = |pid: i32| jobs.get(&pid).cloned().unwrap_or(Job::None);
    let mut rows: Vec<Holder> = match by {
        GroupBy::Process => processes
            .iter()
            .map(|p| {
                let mut row = Holder::empty(HolderKind::Process);
                row.pid = Some(p.pid);
                row.command = Some(p.command.clone());
                row.user = Some(user_name(p.uid));
                row.uid = Some(p.uid);
                row.cgroup = Some(p.cgroup.clone());
                row.job = Some(job_of(p.pid).to_string());
                row.add(p);
                row
            })
            .collect(),
        GroupBy::User => group(
            processes,
            |p| p.uid,
            |uid| {
                let mut row = Holder::empty(HolderKind::User);
                row.user = Some(user_name(*uid));
                row.uid = Some(*uid);
                row
            },
        ),
        GroupBy::Cgroup => group(
            processes,
            |p| p.cgroup.clone(),
            |cgroup| {
                let mut row = Holder::empty(HolderKind::Cgroup);
                row.cgroup = Some(cgroup.clone());
                row
            },
        ),
        GroupBy::Job => group(
            processes,
            |p| job_of(p.pid),
            |job| {
                let mut row = Holder::empty(HolderKind::Job);
                row.job = Some(job.to_string());
                row
            },
        ),
    };
    rows.sort_by(|a, b| {
        b.charged_bytes
            .cmp(&a.charged_bytes)
            .then(b.rss_bytes.cmp(&a.rss_bytes))
            .then(a.pid.cmp(&b.pid))
            .then_with(|| a.label().cmp(b.label()))
    });
    if limit > 0 && rows.len() > limit {
        let mut other = Holder::empty(HolderKind::Other);
        for row in rows.drain(limit..) {
            other.absorb(&row);
        }
        rows.push(other);
    }
    for row in &mut rows {
        row.committed_as_percent = percent(row.charged_bytes.into(), memory.committed_as);
        row.commit_limit_percent = percent(row.charged_bytes.into(), memory.commit_limit);
    }
    rows
}

fn group<K: Ord>(
    processes: &[ProcessCharge],
    key: impl Fn(&ProcessCharge) -> K,
    mut new_row: impl FnMut(&K) -> Holder,
) -> Vec<Holder> {
    let mut groups: BTreeMap<K, Holder> = BTreeMap::new();
    for p in processes {
        groups
            .entry(key(p))
            .or_insert_with_key(|k| new_row(k))
            .add(p);
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smaps::VmFlags;

    fn memory(committed_mib: u64, shmem_mib: u64) -> Memory {
        Memory {
            mem_total: 1 << 30,
            swap_total: 0,
            hugetlb: 0,
            committed_as: committed_mib << 20,
            commit_limit: 512 << 20,
            mem_free: 0,
            file_pages: 0,
            shmem: shmem_mib << 20,
            swap_free: 0,
            slab_reclaimable: 0,
        }
    }

    fn process(pid: i32, ppid: i32, uid: u32, cgroup: &str, charged_mib: u64) -> ProcessCharge {
        ProcessCharge {
            pid,
            ppid,
            uid,
            command: format!("cmd{pid}"),
            cgroup: cgroup.to_string(),
            charged_bytes: charged_mib << 20,
            noreserve_bytes: 0,
            rss_bytes: 0,
        }
    }

    fn mapping(size: u64, flags: &str, backing: Backing, inode: u64) -> Mapping {
        Mapping {
            start: 0x1000_0000,
            end: 0x1000_0000 + size,
            offset: 0,
            device: 1,
            inode,
            backing,
            flags: VmFlags::parse(flags.as_bytes()),
            rss_bytes: size / 4,
        }
    }

    #[test]
    fn only_accounted_mappings_are_charged_and_noreserve_is_told_apart() {
        let mut shared = SharedObjects::default();
        let mut tally = MappingTally::default();
        for m in [
            mapping(300 << 20, "rd wr mr mw me ac", Backing::Anonymous, 0),
            mapping(100 << 20, "rd wr mr mw me nr", Backing::Anonymous, 0),
            mapping(1 << 20, "rd ex mr mw me", Backing::File, 9),
            mapping(8 << 20, "rd wr sh mr mw me ms", Backing::File, 10),
        ] {
            tally.add(&m, &mut shared);
        }
        assert_eq!(tally.charged_bytes, 300 << 20);
        assert_eq!(tally.noreserve_bytes, 100 << 20);
        assert_eq!(tally.mappings, 4);
        assert_eq!(shared.totals(), SharedTotals::default());
    }

    #[test]
    fn a_shared_anonymous_object_counts_once_however_many_map_it() {
        let mut shared = SharedObjects::default();
        let mut a = MappingTally::default();
        let mut b = MappingTally::default();
        let object = mapping(
            64 << 20,
            "rd wr sh mr mw me ms",
            Backing::SharedAnonymous,
            77,
        );
        a.add(&object, &mut shared);
        b.add(&object, &mut shared);
        // MAP_NORESERVE: charged page by page, so it stays within Shmem.
        let lazy = mapping(
            32 << 20,
            "rd wr sh mr mw me ms nr",
            Backing::SharedAnonymous,
            78,
        );
        a.add(&lazy, &mut shared);
        assert_eq!(a.charged_bytes, 0);
        assert_eq!(
            shared.totals(),
            SharedTotals {
                objects: 1,
                charged_bytes: 64 << 20,
                resident_bytes: 16 << 20,
            }
        );
    }

    #[test]
    fn sysv_segments_are_charged_page_aligned() {
        let text = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
         0          3  1600                 10000    80    80      1     0     0     0     0          0          0 1700000000                  8192                     0
      1234          4  1600              67108864    81     0      0     0     0     0     0          0          0 1700000000                     0               4194304
";
        let sysv = parse_sysv_shm(text, 4096);
        assert_eq!(sysv.segments, 2);
        assert_eq!(sysv.charged_bytes, 12288 + 67108864);
        assert_eq!(sysv.resident_bytes, 8192);
        assert_eq!(sysv.swapped_bytes, 4194304);
        assert_eq!(
            parse_sysv_shm("header only\n", 4096),
            SysvSegments::default()
        );
    }

    #[test]
    fn the_rows_add_up_to_committed_as() {
        let sysv = SysvSegments {
            segments: 1,
            charged_bytes: 10 << 20,
            resident_bytes: 2 << 20,
            swapped_bytes: 0,
        };
        let shared = SharedTotals {
            objects: 1,
            charged_bytes: 20 << 20,
            resident_bytes: 3 << 20,
        };
        let r = remainder(&memory(100, 9), 50 << 20, shared, sysv);
        // Shmem 9 MiB holds the resident parts of both: 4 MiB is tmpfs and the like.
        assert_eq!(r.shmem_bytes, 4 << 20);
        assert_eq!(r.not_visible_bytes, (100 - 50 - 4 - 10 - 20) << 20);
        let over = remainder(&memory(10, 0), 50 << 20, SharedTotals::default(), sysv);
        assert_eq!(over.not_visible_bytes, -(50 << 20));
    }

    #[test]
    fn slurm_jobs_come_from_the_cgroup_path() {
        assert_eq!(
            slurm_job("/system.slice/slurmstepd.scope/job_123/step_0/user/task_0"),
            Some(123)
        );
        assert_eq!(slurm_job("/slurm/uid_1000/job_77/step_batch"), Some(77));
        assert_eq!(
            slurm_job("/user.slice/user-1000.slice/session-2.scope"),
            None
        );
        assert_eq!(slurm_job("/job_x/job_9"), Some(9));
    }

    #[test]
    fn the_cgroup_is_the_v2_path_else_the_memory_controller() {
        assert_eq!(
            cgroup_path("0::/system.slice/x.service\n"),
            "/system.slice/x.service"
        );
        let v1 = "12:pids:/a\n4:cpu,memory:/slurm/uid_1/job_5/step_0\n1:name=systemd:/b\n";
        assert_eq!(cgroup_path(v1), "/slurm/uid_1/job_5/step_0");
        assert_eq!(cgroup_path("3:cpu:/c\n"), "/c");
        assert_eq!(cgroup_path(""), "");
    }

    #[test]
    fn a_lease_names_the_job_of_its_holder_and_descendants() {
        let processes = [
            process(1, 0, 0, "/", 1),
            process(10, 1, 1000, "/", 1),
            process(11, 10, 1000, "/", 1),
            process(
                12,
                11,
                1000,
                "/system.slice/slurmstepd.scope/job_5/step_0",
                1,
            ),
            process(20, 1, 1000, "/", 1),
        ];
        let holders = HashMap::from([(10, "exp-7".to_string())]);
        let jobs = jobs(&processes, &holders);
        assert_eq!(jobs[&10], Job::Lease("exp-7".into()));
        assert_eq!(jobs[&11], Job::Lease("exp-7".into()));
        assert_eq!(jobs[&12], Job::Slurm(5));
        assert_eq!(jobs[&20], Job::None);
        assert_eq!(jobs[&1], Job::None);
    }

    #[test]
    fn holders_are_grouped_sorted_and_cut_at_the_limit() {
        let processes = [
            process(1, 0, 0, "/init", 5),
            process(2, 1, 1000, "/slurm/uid_1000/job_1/step_0", 300),
            process(3, 1, 1000, "/slurm/uid_1000/job_1/step_0", 100),
            process(4, 1, 1001, "/slurm/uid_1001/job_2/step_0", 50),
            process(5, 1, 1002, "/", 1),
        ];
        let jobs = jobs(&processes, &HashMap::new());
        let mem = memory(1000, 0);
        let mut names = |uid: u32| format!("u{uid}");
        let by_process = holders(&processes, GroupBy::Process, &mem, 2, &mut names, &jobs);
        assert_eq!(by_process.len(), 3);
        assert_eq!(by_process[0].pid, Some(2));
        assert_eq!(by_process[0].committed_as_percent, 30.0);
        assert_eq!(by_process[0].job.as_deref(), Some("1"));
        assert_eq!(by_process[1].pid, Some(3));
        assert_eq!(by_process[2].kind, HolderKind::Other);
        assert_eq!(by_process[2].processes, 3);
        assert_eq!(by_process[2].charged_bytes, 56 << 20);

        let by_user = holders(&processes, GroupBy::User, &mem, 0, &mut names, &jobs);
        let users: Vec<_> = by_user
            .iter()
            .map(|h| (h.label().to_string(), h.processes, h.charged_bytes >> 20))
            .collect();
        assert_eq!(
            users,
            [
                ("u1000".to_string(), 2, 400),
                ("u1001".to_string(), 1, 50),
                ("u0".to_string(), 1, 5),
                ("u1002".to_string(), 1, 1)
            ]
        );

        let by_job = holders(&processes, GroupBy::Job, &mem, 0, &mut names, &jobs);
        let labels: Vec<_> = by_job.iter().map(|h| h.label().to_string()).collect();
        assert_eq!(labels, ["1", "2", "none"]);
        assert_eq!(by_job[2].processes, 2);

        let by_cgroup = holders(&processes, GroupBy::Cgroup, &mem, 1, &mut names, &jobs);
        assert_eq!(
            by_cgroup[0].cgroup.as_deref(),
            Some("/slurm/uid_1000/job_1/step_0")
        );
        assert_eq!(by_cgroup[1].kind, HolderKind::Other);
        assert_eq!(by_cgroup[1].processes, 3);
    }
}
