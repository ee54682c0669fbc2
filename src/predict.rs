//! Will ONE private writable mapping of N bytes succeed right now? The checks of do_mmap() and
//! mmap_region() in the kernel's own order: address space, map count, RLIMIT_AS, RLIMIT_DATA,
//! then `__vm_enough_memory()` for the overcommit mode in force.
//!
//! Pure: takes a [`Node`] and a [`Process`] and answers with a [`Prediction`] that names the
//! deciding rule, the numbers on both sides, and what would change the verdict.

use serde::Serialize;

use crate::model::{KernelVersion, Mode, Node, RawLimit};

/// The process that would make the allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Process {
    /// CAP_SYS_ADMIN in the initial user namespace: exempt from the admin reserve.
    pub privileged: bool,
    /// VmSize (total_vm) before the mapping, bytes. `None`: unknown, so the user reserve
    /// (min(VmSize/32, user_reserve)) is anywhere from nothing to all of it.
    #[serde(rename = "vm_size_bytes")]
    pub vm_size: Option<u64>,
    /// VmData (data_vm), bytes, for RLIMIT_DATA.
    #[serde(rename = "data_size_bytes")]
    pub data_size: Option<u64>,
    /// RLIMIT_AS soft limit, bytes; `None` = unlimited.
    #[serde(rename = "rlimit_as_bytes")]
    pub rlimit_as: Option<u64>,
    /// RLIMIT_DATA soft limit, bytes; `None` = unlimited.
    #[serde(rename = "rlimit_data_bytes")]
    pub rlimit_data: Option<u64>,
    /// Number of mappings the process has now.
    pub map_count: Option<u64>,
    /// The tightest cgroup v2 memory.max above the process. The commit check ignores it;
    /// the OOM killer does not.
    #[serde(rename = "memory_max_bytes")]
    pub memory_max: Option<u64>,
    /// The largest hole between its mappings (from /proc/PID/maps): the biggest mapping that
    /// can still be placed. `None`: unknown.
    #[serde(rename = "largest_gap_bytes")]
    pub largest_gap: Option<u64>,
}

/// The answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Refused,
    /// Within the kernel's own uncertainty (the per-CPU Committed_AS counter, or a process
    /// size we do not know): the kernel may go either way.
    Borderline,
}

/// The kernel check that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Mode 1: no check.
    Always,
    /// Mode 0 (v5.2+): pages > totalram_pages + total_swap_pages is refused.
    Heuristic,
    /// Mode 0 before v5.2: an estimate of free + reclaimable memory.
    HeuristicPre52,
    /// Mode 2: Committed_AS + pages must stay below CommitLimit − reserves.
    CommitLimit,
    /// The request does not fit in the user address space at all.
    AddressSpace,
    /// The process already has vm.max_map_count mappings.
    MaxMapCount,
    RlimitAs,
    RlimitData,
    /// The job scope (`run --scope job`) in modes 0 and 1: the mapping is MAP_NORESERVE, so
    /// the overcommit check does not see it; only the address space and the process limits
    /// apply.
    NoReserve,
}

impl Rule {
    /// One line that says what the rule compares.
    pub fn describe(self) -> &'static str {
        match self {
            Rule::Always => "mode always (1): the kernel does not check",
            Rule::Heuristic => "mode heuristic (0): one request may not exceed MemTotal + SwapTotal",
            Rule::HeuristicPre52 => {
                "mode heuristic (0), kernel before 5.2: free + reclaimable memory + free swap (an estimate)"
            }
            Rule::CommitLimit => "mode never (2): Committed_AS + request must stay below CommitLimit - reserves",
            Rule::AddressSpace => "the address space: one mapping needs one free hole at least that large",
            Rule::MaxMapCount => "the process already has vm.max_map_count mappings",
            Rule::RlimitAs => "RLIMIT_AS (ulimit -v): the process's address-space limit",
            Rule::RlimitData => "RLIMIT_DATA (ulimit -d): the process's data-segment limit",
            Rule::NoReserve => {
                "the job scope: a MAP_NORESERVE mapping is not charged in modes 0 and 1; only the address space, map count, RLIMIT_AS and RLIMIT_DATA apply"
            }
        }
    }
}

/// Something that would turn a refusal into an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Remedy {
    /// Only this job, the node unchanged: `overcommitctl run --scope job -- CMD` (modes 0, 1).
    JobScope,
    /// A lease of this mode, for the whole node while the job runs
    /// (`overcommitctl run --scope node --mode M -- CMD`).
    Mode { mode: Mode },
    /// Mode never with at least this ratio.
    Ratio { ratio: u32 },
    /// Mode never with at least this many kB (the ratio would have to exceed 100).
    Kbytes { kbytes: u64 },
    /// At least this much swap in total (under the current mode).
    SwapTotal {
        #[serde(rename = "swap_total_bytes")]
        bytes: u64,
    },
    /// Raise this limit of the process to at least this many bytes.
    Rlimit {
        which: RlimitKind,
        #[serde(rename = "min_bytes")]
        bytes: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RlimitKind {
    As,
    Data,
}

/// The predictor's answer: the verdict, the deciding rule, and both sides of the comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Prediction {
    pub verdict: Verdict,
    pub rule: Rule,
    pub mode: Mode,
    pub request_bytes: u64,
    /// What the request is measured against (bytes): RAM + swap in mode 0, CommitLimit minus
    /// the reserves in mode 2, the rlimit for rlimit rules; `None` in mode 1.
    pub limit_bytes: Option<u64>,
    /// Mode 2: Committed_AS before the request (the other side is committed + request).
    pub committed_bytes: Option<u64>,
    /// Mode 2: the reserves taken off CommitLimit for this process (admin + user).
    pub reserve_bytes: Option<u64>,
    /// How far the kernel's reading may be off (mode 2 per-CPU counter error), bytes.
    pub uncertainty_bytes: Option<u64>,
    /// The largest single request this rule allows now (mode 2: for the process as given).
    pub largest_bytes: Option<u64>,
    /// What would allow it, when it is refused or borderline.
    pub remedies: Vec<Remedy>,
    /// Facts worth knowing even when allowed (cgroup limit, address-space layout, ...).
    pub notes: Vec<Note>,
}

/// A fact about a prediction, with a stable code for scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    pub code: &'static str,
    pub message: String,
}

impl Note {
    pub fn new(code: &'static str, message: impl Into<String>) -> Note {
        Note {
            code,
            message: message.into(),
        }
    }
}

/// x86-64 with 4-level paging: TASK_SIZE_MAX = 2^47 − one page.
#[cfg(target_arch = "x86_64")]
const TASK_SIZE: Option<u64> = Some((1 << 47) - 4096);
/// arm64 with 48-bit virtual addresses.
#[cfg(target_arch = "aarch64")]
const TASK_SIZE: Option<u64> = Some(1 << 48);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const TASK_SIZE: Option<u64> = None;

/// Predicts one private writable mapping of `bytes` made by `process` on `node`.
pub fn predict(node: &Node, process: &Process, bytes: u64) -> Prediction {
    let pages = bytes.div_ceil(node.page_size);
    let request_bytes = bytes;
    let mode = node.tunables.overcommit_memory;
    let mut notes = Vec::new();
    if let Some(max) = process.memory_max {
        if bytes > max {
            notes.push(Note::new(
                "cgroup_memory_max",
                format!("the process's cgroup memory.max is {max} bytes: the commit check ignores it, but touching more than that invokes the cgroup's OOM killer"),
            ));
        }
    }

    let base = Prediction {
        verdict: Verdict::Allowed,
        rule: Rule::Always,
        mode,
        request_bytes,
        limit_bytes: None,
        committed_bytes: None,
        reserve_bytes: None,
        uncertainty_bytes: None,
        largest_bytes: None,
        remedies: Vec::new(),
        notes,
    };

    if let Some(prediction) = process_limits(node, process, pages, &base) {
        return prediction;
    }
    let space = address_space(process);
    let prediction = match mode {
        Mode::Always => Prediction {
            largest_bytes: space.as_ref().map(|s| s.sure),
            ..base
        },
        Mode::Heuristic if node.uses_old_heuristic() => old_heuristic(node, process, pages, base),
        Mode::Heuristic => heuristic(node, pages, base),
        Mode::Never => commit_limit(node, process, pages, base),
    };
    // Between what surely fits and what may fit, the verdict depends on where the program and
    // its libraries are mapped, unless the overcommit check refuses anyway.
    match space {
        Some(space)
            if node.page_bytes(pages) > space.sure && prediction.verdict != Verdict::Refused =>
        {
            let mut prediction = Prediction {
                verdict: Verdict::Borderline,
                rule: Rule::AddressSpace,
                limit_bytes: Some(space.sure),
                largest_bytes: Some(space.sure),
                ..prediction
            };
            prediction.notes.push(Note::new(
                "address_space_layout",
                format!("a hole of {} is free in every process; whether a larger one is depends on where the program and its libraries are mapped (--pid reads that process's map)",
                crate::size::HumanBytes(space.sure)),
            ));
            prediction
        }
        _ => prediction,
    }
}

/// The job scope's default threshold: half of MemTotal + SwapTotal, in whole pages. Mode 0
/// refuses one request only above MemTotal + SwapTotal, so smaller ones need no help and stay
/// charged to Committed_AS (where admins and mode 2 see them); the half is a margin for swap
/// turned off or memory taken away while the job runs. The preload library computes the same
/// from /proc/meminfo when OVERCOMMIT_MIN_SIZE is not set.
pub fn job_min_size(node: &Node) -> u64 {
    let half = node.memory.mem_total.saturating_add(node.memory.swap_total) / 2;
    (half / node.page_size * node.page_size).max(node.page_size)
}

/// Predicts one MAP_NORESERVE mapping of `bytes`: what the job scope (`run --scope job`) makes
/// of an allocation of at least its threshold. In modes 0 and 1 the kernel does not charge it
/// (mm/mmap.c: VM_NORESERVE, not accountable), so the checks of do_mmap() before the
/// overcommit check decide alone: address space, map count, RLIMIT_AS, RLIMIT_DATA
/// (MAP_NORESERVE does not exempt a private writable mapping from it). Mode 2 ignores the
/// flag: the mapping is predicted as any other.
pub fn predict_noreserve(node: &Node, process: &Process, bytes: u64) -> Prediction {
    let mode = node.tunables.overcommit_memory;
    if mode == Mode::Never {
        return predict(node, process, bytes);
    }
    let unchecked = node.with_policy(&crate::model::Policy {
        mode: Mode::Always,
        limit: node.tunables.limit_clamped(),
    });
    let mut prediction = predict(&unchecked, process, bytes);
    prediction.mode = mode;
    if prediction.rule == Rule::Always {
        prediction.rule = Rule::NoReserve;
    }
    prediction
}

/// Where one mapping can go: at most `most` bytes fit; `sure` bytes fit whatever the layout.
struct AddressSpace {
    sure: u64,
    most: u64,
}

/// A position-independent program is loaded at 2/3 of the address space (ELF_ET_DYN_BASE),
/// which splits it: below that, from mmap_min_addr (64 KiB), every process has one free hole.
fn address_space(process: &Process) -> Option<AddressSpace> {
    let task_size = TASK_SIZE?;
    let left = task_size.saturating_sub(process.vm_size.unwrap_or(0));
    Some(match process.largest_gap {
        Some(gap) => AddressSpace {
            sure: gap.min(left),
            most: gap.min(left),
        },
        None => {
            let below_program = (task_size / 3 * 2) / 4096 * 4096 - 65536;
            AddressSpace {
                sure: below_program.min(left),
                most: left,
            }
        }
    })
}

/// The checks before the overcommit check, which apply in every mode.
fn process_limits(
    node: &Node,
    process: &Process,
    pages: u64,
    base: &Prediction,
) -> Option<Prediction> {
    let bytes = node.page_bytes(pages);
    let refuse = |rule, limit: u64, remedies| Prediction {
        verdict: Verdict::Refused,
        rule,
        limit_bytes: Some(limit),
        largest_bytes: None,
        remedies,
        ..base.clone()
    };
    // PAGE_ALIGN(len) wrapping to 0, or a length beyond TASK_SIZE.
    if pages.checked_mul(node.page_size).is_none() {
        return Some(refuse(
            Rule::AddressSpace,
            TASK_SIZE.unwrap_or(u64::MAX),
            Vec::new(),
        ));
    }
    if let Some(space) = address_space(process) {
        if bytes > space.most {
            return Some(refuse(Rule::AddressSpace, space.most, Vec::new()));
        }
    }
    if let Some(count) = process.map_count {
        if count >= node.tunables.max_map_count {
            return Some(refuse(
                Rule::MaxMapCount,
                node.tunables.max_map_count,
                Vec::new(),
            ));
        }
    }
    let vm_size = process.vm_size.unwrap_or(0);
    if let Some(limit) = process.rlimit_as {
        if vm_size.saturating_add(bytes) > limit {
            let needed = vm_size.saturating_add(bytes);
            return Some(refuse(
                Rule::RlimitAs,
                limit,
                vec![Remedy::Rlimit {
                    which: RlimitKind::As,
                    bytes: needed,
                }],
            ));
        }
    }
    if let Some(limit) = process.rlimit_data {
        let data = process.data_size.unwrap_or(0);
        if data.saturating_add(bytes) > limit {
            let needed = data.saturating_add(bytes);
            return Some(refuse(
                Rule::RlimitData,
                limit,
                vec![Remedy::Rlimit {
                    which: RlimitKind::Data,
                    bytes: needed,
                }],
            ));
        }
    }
    None
}

/// Mode 0 since v5.2: `pages > totalram_pages() + total_swap_pages` is refused; nothing else
/// (not Committed_AS, not free memory, not root) enters.
fn heuristic(node: &Node, pages: u64, base: Prediction) -> Prediction {
    let total = node.ram_pages() + node.swap_pages();
    let allowed = pages <= total;
    let mut remedies = Vec::new();
    if !allowed {
        remedies.push(Remedy::JobScope);
        remedies.push(Remedy::Mode { mode: Mode::Always });
        remedies.push(Remedy::SwapTotal {
            bytes: node.page_bytes(pages - node.ram_pages()),
        });
    }
    Prediction {
        verdict: if allowed {
            Verdict::Allowed
        } else {
            Verdict::Refused
        },
        rule: Rule::Heuristic,
        limit_bytes: Some(node.page_bytes(total)),
        largest_bytes: Some(node.page_bytes(total)),
        remedies,
        ..base
    }
}

/// Mode 0 before v5.2: free + page cache − shmem + free swap + reclaimable slab − the zones'
/// reserves − (non-root) the admin reserve must exceed the request. The kernel's
/// totalreserve_pages is not in /proc, so a band around the answer is borderline.
fn old_heuristic(node: &Node, process: &Process, pages: u64, mut base: Prediction) -> Prediction {
    let m = &node.memory;
    let free_bytes =
        (m.mem_free + m.file_pages + m.swap_free + m.slab_reclaimable).saturating_sub(m.shmem);
    let mut free = free_bytes / node.page_size;
    if !process.privileged {
        free = free.saturating_sub(node.kb_to_pages(node.tunables.admin_reserve_kbytes));
    }
    // totalreserve_pages is typically a few percent of RAM.
    let uncertainty = node.ram_pages() / 32;
    let verdict = if pages + uncertainty < free {
        Verdict::Allowed
    } else if pages >= free + uncertainty {
        Verdict::Refused
    } else {
        Verdict::Borderline
    };
    if verdict != Verdict::Allowed {
        base.remedies.push(Remedy::JobScope);
        base.remedies.push(Remedy::Mode { mode: Mode::Always });
    }
    base.notes.push(Note::new(
        "heuristic_pre_5_2",
        format!(
            "kernel {} is older than {}: mode 0 there compares with free memory, an estimate from /proc/meminfo",
            node.kernel.map(|v| v.to_string()).unwrap_or_default(),
            KernelVersion::SIMPLE_HEURISTIC
        ),
    ));
    Prediction {
        verdict,
        rule: Rule::HeuristicPre52,
        limit_bytes: Some(node.page_bytes(free)),
        uncertainty_bytes: Some(node.page_bytes(uncertainty)),
        largest_bytes: Some(node.page_bytes(free.saturating_sub(uncertainty + 1))),
        ..base
    }
}

/// The reserves `__vm_enough_memory()` takes off CommitLimit for `process`, as a range of
/// pages: (least, most). They differ only when the process size is unknown.
pub fn reserve_pages(node: &Node, process: &Process) -> (u64, u64) {
    let admin = if process.privileged {
        0
    } else {
        node.kb_to_pages(node.tunables.admin_reserve_kbytes)
    };
    let user_reserve = node.kb_to_pages(node.tunables.user_reserve_kbytes);
    match process.vm_size {
        Some(size) => {
            let user = (size / node.page_size / 32).min(user_reserve);
            (admin + user, admin + user)
        }
        None => (admin, admin + user_reserve),
    }
}

/// Mode 2: `percpu_counter_read_positive(&vm_committed_as) < allowed`, with the request
/// already charged, where allowed = CommitLimit − admin reserve (non-root) − min(VmSize/32,
/// user reserve). The counter read is approximate by up to nr_cpus × batch pages.
fn commit_limit(node: &Node, process: &Process, pages: u64, base: Prediction) -> Prediction {
    let commit_limit = node.reported_commit_limit_pages() as i128;
    let (reserve_low, reserve_high) = reserve_pages(node, process);
    // `long allowed` in the kernel: signed.
    let allowed_high = commit_limit - reserve_low as i128;
    let allowed_low = commit_limit - reserve_high as i128;
    let committed = node.committed_pages() as i128;
    let after = committed + pages as i128;
    let error = node.committed_error_pages(Mode::Never) as i128;

    let verdict = if after + error < allowed_low {
        Verdict::Allowed
    } else if after - error >= allowed_high {
        Verdict::Refused
    } else {
        Verdict::Borderline
    };
    let mut remedies = Vec::new();
    if verdict != Verdict::Allowed {
        if pages <= node.ram_pages() + node.swap_pages() {
            remedies.push(Remedy::Mode {
                mode: Mode::Heuristic,
            });
        }
        remedies.push(Remedy::Mode { mode: Mode::Always });
        remedies.extend(strict_limit_remedy(node, process, pages));
        // Swap raises CommitLimit page for page.
        let short = (after + error + 1 - allowed_low).max(0) as u64;
        remedies.push(Remedy::SwapTotal {
            bytes: node.page_bytes(node.swap_pages() + short),
        });
    }
    let pages_to_bytes = |p: i128| node.page_bytes(p.max(0) as u64);
    Prediction {
        verdict,
        rule: Rule::CommitLimit,
        limit_bytes: Some(pages_to_bytes(allowed_low)),
        committed_bytes: Some(node.memory.committed_as),
        reserve_bytes: Some(node.page_bytes(reserve_high)),
        uncertainty_bytes: Some(pages_to_bytes(error)),
        // Largest request that is surely allowed: committed + pages + error < allowed.
        largest_bytes: Some(pages_to_bytes(allowed_low - committed - error - 1)),
        remedies,
        ..base
    }
}

/// The smallest mode-2 limit (ratio, else kbytes) under which `pages` would surely fit.
fn strict_limit_remedy(node: &Node, process: &Process, pages: u64) -> Option<Remedy> {
    let (_, reserve) = reserve_pages(node, process);
    let error = node.committed_error_pages(Mode::Never);
    // CommitLimit must exceed committed + pages + reserves + error.
    let needed = node.committed_pages() + pages + reserve + error + 1;
    let ratio =
        (0..=100u32).find(|&r| node.commit_limit_pages(RawLimit::Ratio(i64::from(r))) >= needed);
    match ratio {
        Some(ratio) => Some(Remedy::Ratio { ratio }),
        None => {
            let kb_per_page = node.page_size / 1024;
            let kbytes = needed
                .saturating_sub(node.swap_pages())
                .saturating_mul(kb_per_page);
            (kbytes > 0).then_some(Remedy::Kbytes { kbytes })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::node;
    use crate::model::{Limit, Policy};
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn user(vm_size: u64) -> Process {
        Process {
            vm_size: Some(vm_size),
            ..Process::default()
        }
    }

    #[test]
    fn the_seed_is_refused_under_heuristic_on_128_gib_and_allowed_under_always() {
        let n = node(128 * GIB, 2 * GIB, Mode::Heuristic, 50, 0, 10 * GIB);
        let p = predict(&n, &user(GIB), 352_800_000_000);
        assert_eq!(p.verdict, Verdict::Refused);
        assert_eq!(p.rule, Rule::Heuristic);
        assert_eq!(p.limit_bytes, Some(130 * GIB));
        assert!(p.remedies.contains(&Remedy::Mode { mode: Mode::Always }));
        let always = n.with_policy(&Policy {
            mode: Mode::Always,
            limit: Limit::Ratio(50),
        });
        assert_eq!(
            predict(&always, &user(GIB), 352_800_000_000).verdict,
            Verdict::Allowed
        );
    }

    #[test]
    fn heuristic_boundary_is_exactly_ram_plus_swap_in_pages() {
        let n = node(GIB, GIB / 2, Mode::Heuristic, 50, 0, 0);
        let total = GIB + GIB / 2;
        assert_eq!(predict(&n, &user(0), total).verdict, Verdict::Allowed);
        assert_eq!(predict(&n, &user(0), total + 1).verdict, Verdict::Refused);
        // Root and Committed_AS do not matter in mode 0.
        let mut busy = n.clone();
        busy.memory.committed_as = 100 * GIB;
        let root = Process {
            privileged: true,
            ..user(0)
        };
        assert_eq!(predict(&busy, &root, total).verdict, Verdict::Allowed);
        assert_eq!(
            predict(&busy, &root, total + 4096).verdict,
            Verdict::Refused
        );
    }

    #[test]
    fn heuristic_remedies_name_the_swap_that_would_be_enough() {
        let n = node(GIB, 0, Mode::Heuristic, 50, 0, 0);
        let p = predict(&n, &user(0), 3 * GIB);
        assert!(
            p.remedies.contains(&Remedy::SwapTotal { bytes: 2 * GIB }),
            "{:?}",
            p.remedies
        );
        let bigger = n.with_swap_total(2 * GIB);
        assert_eq!(
            predict(&bigger, &user(0), 3 * GIB).verdict,
            Verdict::Allowed
        );
    }

    #[test]
    fn never_compares_committed_plus_request_with_limit_minus_reserves() {
        // 4 GiB RAM, ratio 50, no swap: CommitLimit 2 GiB; 1 GiB committed.
        let n = node(4 * GIB, 0, Mode::Never, 50, 0, GIB);
        let error = n.page_bytes(n.committed_error_pages(Mode::Never));
        let root = Process {
            privileged: true,
            vm_size: Some(0),
            ..Process::default()
        };
        // Root, tiny process: allowed iff 1 GiB + request < 2 GiB (beyond the counter error).
        assert_eq!(
            predict(&n, &root, GIB - error - 8192).verdict,
            Verdict::Allowed
        );
        assert_eq!(predict(&n, &root, GIB + error).verdict, Verdict::Refused);
        assert_eq!(predict(&n, &root, GIB).verdict, Verdict::Borderline);
        // A user loses the admin reserve (8 MiB): what is borderline for root is refused.
        let request = GIB - 8 * 1024 * 1024 + error;
        assert_eq!(predict(&n, &root, request).verdict, Verdict::Borderline);
        let p = predict(&n, &user(0), request);
        assert_eq!(p.verdict, Verdict::Refused);
        assert_eq!(p.limit_bytes, Some(2 * GIB - 8 * 1024 * 1024));
        assert_eq!(p.committed_bytes, Some(GIB));
    }

    #[test]
    fn never_user_reserve_is_min_of_vm_size_over_32_and_the_reserve() {
        let n = node(4 * GIB, 0, Mode::Never, 50, 0, 0);
        let root_small = Process {
            privileged: true,
            vm_size: Some(32 * 4096 * 10),
            ..Process::default()
        };
        let (low, high) = reserve_pages(&n, &root_small);
        assert_eq!((low, high), (10, 10));
        let root_huge = Process {
            privileged: true,
            vm_size: Some(64 * GIB),
            ..Process::default()
        };
        assert_eq!(reserve_pages(&n, &root_huge), (32768, 32768));
        let unknown = Process::default();
        assert_eq!(reserve_pages(&n, &unknown), (2048, 2048 + 32768));
    }

    #[test]
    fn an_unknown_process_size_makes_the_reserve_band_borderline() {
        let n = node(4 * GIB, 0, Mode::Never, 50, 0, 0);
        let error = n.page_bytes(n.committed_error_pages(Mode::Never));
        // In the 128 MiB user-reserve band, beyond the counter error on both sides.
        let request = 2 * GIB - 8 * 1024 * 1024 - 64 * 1024 * 1024;
        assert!(64 * 1024 * 1024 > error);
        assert_eq!(
            predict(&n, &Process::default(), request).verdict,
            Verdict::Borderline
        );
        assert_eq!(predict(&n, &user(0), request).verdict, Verdict::Allowed);
        assert_eq!(
            predict(&n, &user(64 * GIB), request).verdict,
            Verdict::Refused
        );
    }

    #[test]
    fn never_remedies_give_a_ratio_that_works() {
        let n = node(8 * GIB, 0, Mode::Never, 50, 0, GIB);
        let p = predict(&n, &user(0), 5 * GIB);
        assert_eq!(p.verdict, Verdict::Refused);
        let ratio = p.remedies.iter().find_map(|r| match r {
            Remedy::Ratio { ratio } => Some(*ratio),
            _ => None,
        });
        let ratio = ratio.expect("a ratio remedy");
        let fixed = n.with_policy(&Policy {
            mode: Mode::Never,
            limit: Limit::Ratio(ratio),
        });
        assert_eq!(predict(&fixed, &user(0), 5 * GIB).verdict, Verdict::Allowed);
        let one_less = n.with_policy(&Policy {
            mode: Mode::Never,
            limit: Limit::Ratio(ratio - 1),
        });
        assert_ne!(
            predict(&one_less, &user(0), 5 * GIB).verdict,
            Verdict::Allowed
        );
    }

    #[test]
    fn beyond_ratio_100_the_remedy_is_kbytes() {
        let n = node(8 * GIB, 0, Mode::Never, 50, 0, 0);
        let p = predict(&n, &user(0), 20 * GIB);
        let kbytes = p.remedies.iter().find_map(|r| match r {
            Remedy::Kbytes { kbytes } => Some(*kbytes),
            _ => None,
        });
        let fixed = n.with_policy(&Policy {
            mode: Mode::Never,
            limit: Limit::Kbytes(kbytes.expect("kbytes")),
        });
        assert_eq!(
            predict(&fixed, &user(0), 20 * GIB).verdict,
            Verdict::Allowed
        );
    }

    #[test]
    fn rlimits_and_address_space_come_before_the_mode() {
        let n = node(GIB, 0, Mode::Always, 50, 0, 0);
        let limited = Process {
            rlimit_as: Some(GIB),
            vm_size: Some(100 << 20),
            ..Process::default()
        };
        let p = predict(&n, &limited, GIB);
        assert_eq!((p.verdict, p.rule), (Verdict::Refused, Rule::RlimitAs));
        let data = Process {
            rlimit_data: Some(GIB),
            data_size: Some(0),
            ..Process::default()
        };
        assert_eq!(predict(&n, &data, GIB + 1).rule, Rule::RlimitData);
        assert_eq!(predict(&n, &data, GIB).verdict, Verdict::Allowed);
        if TASK_SIZE.is_some() {
            let p = predict(&n, &user(0), 200 << 40);
            assert_eq!((p.verdict, p.rule), (Verdict::Refused, Rule::AddressSpace));
            // Above the hole below a PIE program (85.3 TiB on x86-64): depends on the layout.
            let p = predict(&n, &user(0), 100 << 40);
            assert_eq!(
                (p.verdict, p.rule),
                (Verdict::Borderline, Rule::AddressSpace)
            );
            assert_eq!(predict(&n, &user(0), 80 << 40).verdict, Verdict::Allowed);
            // With the process's map known, its largest hole decides.
            let mapped = Process {
                largest_gap: Some(1 << 40),
                ..user(0)
            };
            assert_eq!(predict(&n, &mapped, 1 << 40).verdict, Verdict::Allowed);
            let p = predict(&n, &mapped, (1 << 40) + 4096);
            assert_eq!((p.verdict, p.rule), (Verdict::Refused, Rule::AddressSpace));
            // A refusal by the mode stands whatever the address space.
            let heuristic = node(GIB, 0, Mode::Heuristic, 50, 0, 0);
            assert_eq!(
                predict(&heuristic, &user(0), 100 << 40).rule,
                Rule::Heuristic
            );
        }
        let p = predict(&n, &user(0), u64::MAX);
        assert_eq!((p.verdict, p.rule), (Verdict::Refused, Rule::AddressSpace));
    }

    #[test]
    fn a_cgroup_limit_is_a_note_not_a_refusal() {
        let n = node(64 * GIB, 0, Mode::Heuristic, 50, 0, 0);
        let capped = Process {
            memory_max: Some(8 * GIB),
            ..user(0)
        };
        let p = predict(&n, &capped, 16 * GIB);
        assert_eq!(p.verdict, Verdict::Allowed);
        assert!(p.notes.iter().any(|n| n.code == "cgroup_memory_max"));
    }

    #[test]
    fn the_job_scope_lifts_the_heuristic_but_not_the_process_limits_or_mode_never() {
        let n = node(128 * GIB, 2 * GIB, Mode::Heuristic, 50, 0, 10 * GIB);
        assert_eq!(job_min_size(&n), 65 * GIB);
        let seed = 352_800_000_000;
        let plain = predict(&n, &user(GIB), seed);
        assert_eq!(plain.remedies.first(), Some(&Remedy::JobScope));
        let job = predict_noreserve(&n, &user(GIB), seed);
        assert_eq!(
            (job.verdict, job.rule, job.mode),
            (Verdict::Allowed, Rule::NoReserve, Mode::Heuristic)
        );
        // RLIMIT_AS, RLIMIT_DATA and the address space still apply.
        let limited = Process {
            rlimit_data: Some(100 * GIB),
            data_size: Some(0),
            ..user(GIB)
        };
        let p = predict_noreserve(&n, &limited, seed);
        assert_eq!((p.verdict, p.rule), (Verdict::Refused, Rule::RlimitData));
        if TASK_SIZE.is_some() {
            let p = predict_noreserve(&n, &user(GIB), 200 << 40);
            assert_eq!((p.verdict, p.rule), (Verdict::Refused, Rule::AddressSpace));
        }
        // Mode 2 ignores MAP_NORESERVE: the same verdict as without, and no job scope offered.
        let strict = node(8 * GIB, 0, Mode::Never, 50, 0, GIB);
        let p = predict_noreserve(&strict, &user(0), 6 * GIB);
        assert_eq!(p, predict(&strict, &user(0), 6 * GIB));
        assert_eq!(p.verdict, Verdict::Refused);
        assert!(!p.remedies.contains(&Remedy::JobScope));
    }

    #[test]
    fn the_old_heuristic_uses_free_memory() {
        let mut n = node(8 * GIB, 0, Mode::Heuristic, 50, 0, 0);
        n.kernel = KernelVersion::parse("4.18.0");
        n.memory.mem_free = 2 * GIB;
        n.memory.file_pages = GIB;
        assert_eq!(predict(&n, &user(0), GIB).verdict, Verdict::Allowed);
        assert_eq!(predict(&n, &user(0), 4 * GIB).verdict, Verdict::Refused);
        assert_eq!(predict(&n, &user(0), GIB).rule, Rule::HeuristicPre52);
    }

    proptest! {
        #[test]
        fn mode_1_allows_every_size_that_fits_in_any_address_space(bytes in 0u64..(1 << 46), mem in 1u64..(1 << 40)) {
            let n = node(mem & !4095, 0, Mode::Always, 50, 0, 0);
            prop_assert_eq!(predict(&n, &user(0), bytes).verdict, Verdict::Allowed);
        }

        #[test]
        fn in_modes_0_and_2_a_refused_size_stays_refused_when_it_grows(
            mem in (1u64 << 20)..(1 << 40),
            swap in 0u64..(1 << 36),
            committed in 0u64..(1 << 38),
            ratio in 0i64..=100,
            strict in any::<bool>(),
            privileged in any::<bool>(),
            bytes in 0u64..(1 << 42),
            growth in 0u64..(1 << 42),
        ) {
            let mode = if strict { Mode::Never } else { Mode::Heuristic };
            let n = node(mem & !4095, swap & !4095, mode, ratio, 0, committed & !4095);
            let process = Process { privileged, vm_size: Some(1 << 30), ..Process::default() };
            let small = predict(&n, &process, bytes).verdict;
            let large = predict(&n, &process, bytes + growth).verdict;
            if small == Verdict::Refused {
                prop_assert_eq!(large, Verdict::Refused);
            }
            if large == Verdict::Allowed {
                prop_assert_eq!(small, Verdict::Allowed);
            }
        }

        #[test]
        fn ratio_and_kbytes_are_exclusive(ratio in 0u32..=100, kbytes in 1u64..(1 << 40)) {
            let n = node(1 << 34, 0, Mode::Never, 50, 0, 0);
            let by_kbytes = n.with_policy(&Policy { mode: Mode::Never, limit: Limit::Kbytes(kbytes) });
            prop_assert_eq!(by_kbytes.tunables.overcommit_ratio, 0);
            prop_assert_eq!(by_kbytes.computed_commit_limit_pages(), kbytes / 4);
            let by_ratio = by_kbytes.with_policy(&Policy { mode: Mode::Never, limit: Limit::Ratio(ratio) });
            prop_assert_eq!(by_ratio.tunables.overcommit_kbytes, 0);
            prop_assert_eq!(by_ratio.computed_commit_limit_pages(), (1u64 << 22) * u64::from(ratio) / 100);
        }

        #[test]
        fn growing_the_ratio_never_refuses_what_a_smaller_one_allowed(low in 0u32..100, bytes in 0u64..(1 << 36)) {
            let n = node(1 << 36, 0, Mode::Never, 50, 0, 1 << 30);
            let with = |r| n.with_policy(&Policy { mode: Mode::Never, limit: Limit::Ratio(r) });
            if predict(&with(low), &user(0), bytes).verdict == Verdict::Allowed {
                prop_assert_eq!(predict(&with(low + 1), &user(0), bytes).verdict, Verdict::Allowed);
            }
        }
    }
}
