//! The kernel's overcommit policy as data: modes, the ratio/kbytes limit, the tunables and the
//! memory figures the rules read, and `vm_commit_limit()` computed the way mm/util.c does.
//!
//! Pure: nothing here touches files. The kernel I/O module fills these types from a proc root;
//! the predictor and the findings read them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `vm.overcommit_memory`. Ordered here by name; use [`Mode::permissiveness`] to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// 0, OVERCOMMIT_GUESS: one request may not exceed RAM + swap.
    Heuristic,
    /// 1, OVERCOMMIT_ALWAYS: never refuse.
    Always,
    /// 2, OVERCOMMIT_NEVER: all commitments together stay under CommitLimit.
    Never,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Heuristic, Mode::Always, Mode::Never];

    /// The value written to `vm.overcommit_memory`.
    pub fn number(self) -> u8 {
        match self {
            Mode::Heuristic => 0,
            Mode::Always => 1,
            Mode::Never => 2,
        }
    }

    pub fn from_number(number: i64) -> Option<Mode> {
        match number {
            0 => Some(Mode::Heuristic),
            1 => Some(Mode::Always),
            2 => Some(Mode::Never),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Heuristic => "heuristic",
            Mode::Always => "always",
            Mode::Never => "never",
        }
    }

    /// never < heuristic < always: how much a mode lets a job allocate.
    pub fn permissiveness(self) -> u8 {
        match self {
            Mode::Never => 0,
            Mode::Heuristic => 1,
            Mode::Always => 2,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A mode name or number that is neither.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode `{0}`: expected heuristic (0), always (1) or never (2)")]
pub struct ModeError(pub String);

impl FromStr for Mode {
    type Err = ModeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "heuristic" | "guess" | "0" => Ok(Mode::Heuristic),
            "always" | "1" => Ok(Mode::Always),
            "never" | "strict" | "2" => Ok(Mode::Never),
            _ => Err(ModeError(text.to_string())),
        }
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mode: \"heuristic\", \"always\", \"never\" or 0, 1, 2")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Mode, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Mode, E> {
                Mode::from_number(v).ok_or_else(|| E::custom(ModeError(v.to_string())))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Mode, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// How the mode-2 CommitLimit is set: a share of RAM or a fixed size. Exactly one is in force
/// in the kernel: writing one zeroes the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Limit {
    /// `vm.overcommit_ratio`, percent of (RAM − hugetlb), 0..=100.
    Ratio(u32),
    /// `vm.overcommit_kbytes`, in kB, non-zero.
    Kbytes(u64),
}

/// A limit that the kernel would accept but that makes no sense to ask for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("ratio {0} is out of range: expected a percentage from 0 to 100")]
    RatioOutOfRange(i64),
    #[error("kbytes 0 is not a limit (the kernel reads it as \"use the ratio\"): give a ratio instead, or a size above 0")]
    ZeroKbytes,
    #[error("ratio and kbytes are exclusive (the kernel keeps only the one written last): give one of them")]
    Both,
}

impl Limit {
    pub fn ratio(percent: i64) -> Result<Limit, LimitError> {
        match u32::try_from(percent) {
            Ok(p) if p <= 100 => Ok(Limit::Ratio(p)),
            _ => Err(LimitError::RatioOutOfRange(percent)),
        }
    }

    pub fn kbytes(kbytes: u64) -> Result<Limit, LimitError> {
        if kbytes == 0 {
            Err(LimitError::ZeroKbytes)
        } else {
            Ok(Limit::Kbytes(kbytes))
        }
    }

    /// Builds a limit from optional `ratio` / `kbytes` options, refusing both at once.
    pub fn from_options(
        ratio: Option<i64>,
        kbytes: Option<u64>,
    ) -> Result<Option<Limit>, LimitError> {
        match (ratio, kbytes) {
            (Some(_), Some(_)) => Err(LimitError::Both),
            (Some(r), None) => Limit::ratio(r).map(Some),
            (None, Some(k)) => Limit::kbytes(k).map(Some),
            (None, None) => Ok(None),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Ratio(p) => write!(f, "ratio {p}%"),
            Limit::Kbytes(k) => write!(f, "kbytes {k}"),
        }
    }
}

/// A complete overcommit policy: the three knobs the kernel reads, as one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    pub limit: Limit,
}

impl Policy {
    /// The policy a request states: a mode with a ratio or kbytes, or neither, which keeps the
    /// limit `keep`. The one place the daemon and `overcommitctl` turn options into a policy.
    pub fn from_options(
        mode: Mode,
        ratio: Option<i64>,
        kbytes: Option<u64>,
        keep: Limit,
    ) -> Result<Policy, LimitError> {
        Ok(Policy {
            mode,
            limit: Limit::from_options(ratio, kbytes)?.unwrap_or(keep),
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}), {}", self.mode, self.mode.number(), self.limit)
    }
}

/// The vm sysctls as the kernel holds them, unvalidated except for the mode (the kernel
/// refuses any other value there). The ratio is a C `int` with no bounds in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunables {
    pub overcommit_memory: Mode,
    pub overcommit_ratio: i64,
    pub overcommit_kbytes: u64,
    pub admin_reserve_kbytes: u64,
    pub user_reserve_kbytes: u64,
    pub max_map_count: u64,
    pub swappiness: u64,
    pub nr_hugepages: u64,
}

impl Tunables {
    /// `mode` and every other knob 0: what knobs are read into, one at a time.
    pub fn unread(mode: Mode) -> Tunables {
        Tunables {
            overcommit_memory: mode,
            overcommit_ratio: 0,
            overcommit_kbytes: 0,
            admin_reserve_kbytes: 0,
            user_reserve_kbytes: 0,
            max_map_count: 0,
            swappiness: 0,
            nr_hugepages: 0,
        }
    }

    /// The limit in force: kbytes when non-zero, else the ratio (even an invalid one).
    pub fn limit_in_force(&self) -> RawLimit {
        if self.overcommit_kbytes != 0 {
            RawLimit::Kbytes(self.overcommit_kbytes)
        } else {
            RawLimit::Ratio(self.overcommit_ratio)
        }
    }

    /// The policy in force, if it is one a profile could express (ratio within 0..=100).
    pub fn policy(&self) -> Result<Policy, LimitError> {
        let limit = match self.limit_in_force() {
            RawLimit::Kbytes(k) => Limit::Kbytes(k),
            RawLimit::Ratio(r) => Limit::ratio(r)?,
        };
        Ok(Policy {
            mode: self.overcommit_memory,
            limit,
        })
    }

    /// The limit in force as a profile could state it: kbytes, or the ratio clamped into
    /// 0..=100. What a policy that names no limit keeps.
    pub fn limit_clamped(&self) -> Limit {
        match self.limit_in_force() {
            RawLimit::Kbytes(k) => Limit::Kbytes(k),
            RawLimit::Ratio(r) => Limit::Ratio(r.clamp(0, 100) as u32),
        }
    }

    /// These tunables after the kernel has taken `policy` (the other limit knob zeroed).
    pub fn with_policy(mut self, policy: &Policy) -> Tunables {
        self.overcommit_memory = policy.mode;
        match policy.limit {
            Limit::Ratio(p) => {
                self.overcommit_ratio = i64::from(p);
                self.overcommit_kbytes = 0;
            }
            Limit::Kbytes(k) => {
                self.overcommit_kbytes = k;
                self.overcommit_ratio = 0;
            }
        }
        self
    }
}

/// The limit knob in force, as the kernel holds it (the ratio may be out of range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawLimit {
    Ratio(i64),
    Kbytes(u64),
}

/// The /proc/meminfo figures the rules read, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Memory {
    pub mem_total: u64,
    pub swap_total: u64,
    /// `Hugetlb:` (all huge page sizes); falls back to HugePages_Total × Hugepagesize.
    pub hugetlb: u64,
    pub committed_as: u64,
    /// CommitLimit as the kernel reports it.
    pub commit_limit: u64,
    // For the pre-5.2 heuristic only:
    pub mem_free: u64,
    /// Buffers + Cached + SwapCached (NR_FILE_PAGES).
    pub file_pages: u64,
    pub shmem: u64,
    pub swap_free: u64,
    pub slab_reclaimable: u64,
}

/// A kernel release, as far as the rules care (`6.1.0-26-cloud-amd64` → 6.1.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    /// v5.2 (commit 8c7829b04c52) made mode 0 a single RAM + swap comparison.
    pub const SIMPLE_HEURISTIC: KernelVersion = KernelVersion {
        major: 5,
        minor: 2,
        patch: 0,
    };
    /// v5.9 made Committed_AS in /proc/meminfo an exact sum.
    pub const EXACT_COMMITTED: KernelVersion = KernelVersion {
        major: 5,
        minor: 9,
        patch: 0,
    };

    pub fn parse(release: &str) -> Option<KernelVersion> {
        let mut numbers = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|part| part.parse::<u32>().ok());
        let major = numbers.next()??;
        let minor = numbers.next()??;
        let patch = numbers.next().flatten().unwrap_or(0);
        Some(KernelVersion {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Everything the rules read about a node at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub tunables: Tunables,
    pub memory: Memory,
    /// `None` when the release string did not parse; the modern rules are assumed.
    pub kernel: Option<KernelVersion>,
    pub nr_cpus: u32,
    pub page_size: u64,
}

impl Node {
    fn pages(&self, bytes: u64) -> u64 {
        bytes / self.page_size
    }

    /// kB (the unit of the vm sysctls and meminfo) to pages, as `kb >> (PAGE_SHIFT - 10)`.
    pub fn kb_to_pages(&self, kb: u64) -> u64 {
        kb / (self.page_size / 1024)
    }

    /// totalram_pages().
    pub fn ram_pages(&self) -> u64 {
        self.pages(self.memory.mem_total)
    }

    /// total_swap_pages.
    pub fn swap_pages(&self) -> u64 {
        self.pages(self.memory.swap_total)
    }

    /// hugetlb_total_pages(), in base pages.
    pub fn hugetlb_pages(&self) -> u64 {
        self.pages(self.memory.hugetlb)
    }

    pub fn committed_pages(&self) -> u64 {
        self.pages(self.memory.committed_as)
    }

    /// vm_commit_limit() in pages, for the given limit knob, in the kernel's own unsigned
    /// arithmetic (a negative ratio wraps, as it does in the kernel).
    pub fn commit_limit_pages(&self, limit: RawLimit) -> u64 {
        let allowed = match limit {
            RawLimit::Kbytes(kb) if kb != 0 => self.kb_to_pages(kb),
            RawLimit::Kbytes(_) => 0,
            RawLimit::Ratio(ratio) => {
                // (totalram - hugetlb) * (unsigned long)(int)ratio / 100
                let ratio = ratio as i32 as i64 as u64;
                self.ram_pages()
                    .wrapping_sub(self.hugetlb_pages())
                    .wrapping_mul(ratio)
                    / 100
            }
        };
        allowed.wrapping_add(self.swap_pages())
    }

    /// CommitLimit the model computes for the limit in force now.
    pub fn computed_commit_limit_pages(&self) -> u64 {
        self.commit_limit_pages(self.tunables.limit_in_force())
    }

    /// CommitLimit as the kernel reports it, in pages.
    pub fn reported_commit_limit_pages(&self) -> u64 {
        self.pages(self.memory.commit_limit)
    }

    /// vm_committed_as_batch for `mode` (mm_compute_batch in mm/util.c).
    pub fn committed_batch_pages(&self, mode: Mode) -> u64 {
        let cpus = u64::from(self.nr_cpus.max(1));
        let floor = (cpus * 2).max(32);
        let sized = match mode {
            Mode::Never => self.ram_pages() / cpus / 256,
            _ => self.ram_pages() / cpus / 4,
        };
        sized.min(i32::MAX as u64).max(floor)
    }

    /// How far the per-CPU counter the mode-2 check reads may be from the true Committed_AS.
    pub fn committed_error_pages(&self, mode: Mode) -> u64 {
        let error = u64::from(self.nr_cpus.max(1)) * self.committed_batch_pages(mode);
        match self.kernel {
            // Before 5.9 /proc/meminfo itself showed the approximate counter.
            Some(v) if v < KernelVersion::EXACT_COMMITTED => error * 2,
            _ => error,
        }
    }

    /// True when mode 0 uses the pre-5.2 free-memory estimate.
    pub fn uses_old_heuristic(&self) -> bool {
        matches!(self.kernel, Some(v) if v < KernelVersion::SIMPLE_HEURISTIC)
    }

    pub fn page_bytes(&self, pages: u64) -> u64 {
        pages.saturating_mul(self.page_size)
    }

    /// The same node with `policy` in force (what the kernel would hold after writing it).
    pub fn with_policy(&self, policy: &Policy) -> Node {
        let mut node = self.clone();
        node.tunables = node.tunables.with_policy(policy);
        node.memory.commit_limit = node.page_bytes(node.computed_commit_limit_pages());
        node
    }

    /// The same node with a different swap size (a hypothetical for `check --swap-total`).
    pub fn with_swap_total(&self, swap_total: u64) -> Node {
        let mut node = self.clone();
        node.memory.swap_total = swap_total;
        node.memory.swap_free = swap_total;
        node.memory.commit_limit = node.page_bytes(node.computed_commit_limit_pages());
        node
    }

    /// Orders two policies by how much they let a job allocate on this node:
    /// never < heuristic < always, and within never the larger CommitLimit.
    pub fn compare_permissiveness(&self, a: &Policy, b: &Policy) -> std::cmp::Ordering {
        a.mode
            .permissiveness()
            .cmp(&b.mode.permissiveness())
            .then_with(|| {
                if a.mode == Mode::Never {
                    let limit = |p: &Policy| self.with_policy(p).computed_commit_limit_pages();
                    limit(a).cmp(&limit(b))
                } else {
                    std::cmp::Ordering::Equal
                }
            })
    }
}

/// A policy that would lock the node out: its CommitLimit (kB) below what is already committed
/// plus the reserves plus a margin (kB), so every new allocation would fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "refused by the lockout guard: {policy} gives CommitLimit {limit_kb} kB, below Committed_AS plus the reserves and the margin ({required_kb} kB): every new allocation on the node would fail (root may override with --force)"
)]
pub struct LockoutRisk {
    pub policy: Policy,
    pub limit_kb: u64,
    pub required_kb: u64,
}

impl Node {
    /// The lockout guard: only mode never can lock a node out; it does when CommitLimit would
    /// not exceed (be strictly greater than) Committed_AS + admin reserve + user reserve +
    /// `margin` bytes.
    pub fn lockout_risk(&self, policy: &Policy, margin: u64) -> Option<LockoutRisk> {
        if policy.mode != Mode::Never {
            return None;
        }
        let limit_kb = self
            .with_policy(policy)
            .computed_commit_limit_pages()
            .saturating_mul(self.page_size / 1024);
        let t = &self.tunables;
        let required_kb = (self.memory.committed_as / 1024)
            .saturating_add(t.admin_reserve_kbytes)
            .saturating_add(t.user_reserve_kbytes)
            .saturating_add(margin / 1024);
        // The limit must exceed what is required: at the boundary itself the next allocation fails.
        (limit_kb <= required_kb).then_some(LockoutRisk {
            policy: *policy,
            limit_kb,
            required_kb,
        })
    }
}

/// The writes that take the kernel from `current` to `target`, in an order that never passes
/// through a wrong limit: the limit is inert outside mode 2, so going into mode 2 the limit is
/// written first, and leaving it the mode is written first. Writing the ratio zeroes kbytes and
/// vice versa, so a limit change is always one write.
pub fn write_plan(current: &Tunables, target: &Policy) -> Vec<(Knob, u64)> {
    let limit_write = match target.limit {
        Limit::Ratio(p)
            if current.overcommit_kbytes != 0 || current.overcommit_ratio != i64::from(p) =>
        {
            Some((Knob::OvercommitRatio, u64::from(p)))
        }
        Limit::Kbytes(k) if current.overcommit_kbytes != k => Some((Knob::OvercommitKbytes, k)),
        _ => None,
    };
    let mode_write = (current.overcommit_memory != target.mode)
        .then_some((Knob::OvercommitMemory, u64::from(target.mode.number())));
    if target.mode == Mode::Never {
        limit_write.into_iter().chain(mode_write).collect()
    } else {
        mode_write.into_iter().chain(limit_write).collect()
    }
}

/// The vm sysctls this tool reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Knob {
    OvercommitMemory,
    OvercommitRatio,
    OvercommitKbytes,
    AdminReserveKbytes,
    UserReserveKbytes,
    MaxMapCount,
    Swappiness,
    NrHugepages,
}

impl Knob {
    pub const ALL: [Knob; 8] = [
        Knob::OvercommitMemory,
        Knob::OvercommitRatio,
        Knob::OvercommitKbytes,
        Knob::AdminReserveKbytes,
        Knob::UserReserveKbytes,
        Knob::MaxMapCount,
        Knob::Swappiness,
        Knob::NrHugepages,
    ];

    /// The file name under /proc/sys/vm.
    pub fn file_name(self) -> &'static str {
        match self {
            Knob::OvercommitMemory => "overcommit_memory",
            Knob::OvercommitRatio => "overcommit_ratio",
            Knob::OvercommitKbytes => "overcommit_kbytes",
            Knob::AdminReserveKbytes => "admin_reserve_kbytes",
            Knob::UserReserveKbytes => "user_reserve_kbytes",
            Knob::MaxMapCount => "max_map_count",
            Knob::Swappiness => "swappiness",
            Knob::NrHugepages => "nr_hugepages",
        }
    }

    /// The limit knob the kernel zeroes when this one is written (the ratio/kbytes pair).
    pub fn zeroed_with(self) -> Option<Knob> {
        match self {
            Knob::OvercommitRatio => Some(Knob::OvercommitKbytes),
            Knob::OvercommitKbytes => Some(Knob::OvercommitRatio),
            _ => None,
        }
    }

    /// The sysctl key, as sysctl.d files spell it.
    pub fn sysctl_key(self) -> String {
        format!("vm.{}", self.file_name())
    }
}

/// Nodes and tunables for the tests of the pure modules.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Kernel-default reserves and limits with the given policy knobs.
    pub fn tunables(mode: Mode, ratio: i64, kbytes: u64) -> Tunables {
        Tunables {
            overcommit_memory: mode,
            overcommit_ratio: ratio,
            overcommit_kbytes: kbytes,
            admin_reserve_kbytes: 8192,
            user_reserve_kbytes: 131072,
            max_map_count: 65530,
            swappiness: 60,
            nr_hugepages: 0,
        }
    }

    /// A 2-CPU v6.1 node with `mem` bytes of RAM and `swap` of swap, `committed` bytes
    /// committed, and CommitLimit as the kernel would report it.
    pub fn node(mem: u64, swap: u64, mode: Mode, ratio: i64, kbytes: u64, committed: u64) -> Node {
        let memory = Memory {
            mem_total: mem,
            swap_total: swap,
            committed_as: committed,
            ..Memory::default()
        };
        let mut node = Node {
            tunables: tunables(mode, ratio, kbytes),
            memory,
            kernel: KernelVersion::parse("6.1.0"),
            nr_cpus: 2,
            page_size: 4096,
        };
        node.memory.commit_limit = node.page_bytes(node.computed_commit_limit_pages());
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node of `mem_gib` GiB RAM and `swap_gib` GiB swap, 4 CPUs.
    fn node(mem_gib: u64, swap_gib: u64, mode: Mode, ratio: i64, kbytes: u64) -> Node {
        let mut node = testing::node(mem_gib << 30, swap_gib << 30, mode, ratio, kbytes, 0);
        node.nr_cpus = 4;
        node
    }

    #[test]
    fn mode_names_and_numbers_round_trip() {
        for mode in Mode::ALL {
            assert_eq!(mode.name().parse::<Mode>(), Ok(mode));
            assert_eq!(mode.number().to_string().parse::<Mode>(), Ok(mode));
            assert_eq!(Mode::from_number(i64::from(mode.number())), Some(mode));
        }
        assert!("3".parse::<Mode>().is_err());
        assert!("sometimes"
            .parse::<Mode>()
            .unwrap_err()
            .to_string()
            .contains("heuristic (0)"));
    }

    #[test]
    fn ratio_limit_is_ram_minus_hugetlb_times_ratio_plus_swap() {
        let mut n = node(16, 2, Mode::Never, 50, 0);
        assert_eq!(n.computed_commit_limit_pages(), (16 << 18) / 2 + (2 << 18));
        n.memory.hugetlb = 4 << 30;
        assert_eq!(n.computed_commit_limit_pages(), (12 << 18) / 2 + (2 << 18));
    }

    #[test]
    fn ratio_arithmetic_truncates_like_the_kernel() {
        // 1000 pages * 33 / 100 = 330 (integer division of the product, not of the ratio).
        let mut n = node(0, 0, Mode::Never, 33, 0);
        n.memory.mem_total = 1000 * 4096;
        assert_eq!(n.computed_commit_limit_pages(), 330);
    }

    #[test]
    fn kbytes_replace_the_ratio_and_ignore_hugetlb() {
        let mut n = node(16, 1, Mode::Never, 0, 1_048_576);
        n.memory.hugetlb = 4 << 30;
        assert_eq!(n.computed_commit_limit_pages(), (1 << 18) + (1 << 18));
    }

    #[test]
    fn zero_ratio_and_zero_kbytes_leave_only_swap() {
        let n = node(16, 1, Mode::Never, 0, 0);
        assert_eq!(n.computed_commit_limit_pages(), 1 << 18);
    }

    #[test]
    fn a_negative_ratio_wraps_to_a_huge_limit_as_in_the_kernel() {
        let n = node(16, 0, Mode::Never, -1, 0);
        let expected = (16u64 << 18).wrapping_mul(u64::MAX) / 100;
        assert_eq!(n.computed_commit_limit_pages(), expected);
    }

    #[test]
    fn batch_follows_mm_compute_batch() {
        let n = node(16, 0, Mode::Never, 50, 0);
        // 16 GiB = 4 Mi pages / 4 cpus / 256 = 4096.
        assert_eq!(n.committed_batch_pages(Mode::Never), 4096);
        assert_eq!(n.committed_batch_pages(Mode::Heuristic), (4 << 20) / 4 / 4);
        let tiny = node(0, 0, Mode::Never, 50, 0);
        assert_eq!(tiny.committed_batch_pages(Mode::Never), 32);
    }

    #[test]
    fn limits_validate_their_range() {
        assert_eq!(Limit::ratio(0), Ok(Limit::Ratio(0)));
        assert_eq!(Limit::ratio(100), Ok(Limit::Ratio(100)));
        assert_eq!(Limit::ratio(101), Err(LimitError::RatioOutOfRange(101)));
        assert_eq!(Limit::ratio(-5), Err(LimitError::RatioOutOfRange(-5)));
        assert_eq!(Limit::kbytes(0), Err(LimitError::ZeroKbytes));
        assert_eq!(
            Limit::from_options(Some(50), Some(10)),
            Err(LimitError::Both)
        );
        assert_eq!(Limit::from_options(None, None), Ok(None));
    }

    #[test]
    fn write_plan_orders_limit_and_mode_safely() {
        let t = node(16, 0, Mode::Heuristic, 50, 0).tunables;
        // Into mode 2: limit first.
        let into = write_plan(
            &t,
            &Policy {
                mode: Mode::Never,
                limit: Limit::Ratio(80),
            },
        );
        assert_eq!(
            into,
            vec![(Knob::OvercommitRatio, 80), (Knob::OvercommitMemory, 2)]
        );
        // Out of mode 2: mode first.
        let strict = t.with_policy(&Policy {
            mode: Mode::Never,
            limit: Limit::Kbytes(1000),
        });
        let out = write_plan(
            &strict,
            &Policy {
                mode: Mode::Always,
                limit: Limit::Ratio(50),
            },
        );
        assert_eq!(
            out,
            vec![(Knob::OvercommitMemory, 1), (Knob::OvercommitRatio, 50)]
        );
        // Nothing to do.
        assert!(write_plan(
            &t,
            &Policy {
                mode: Mode::Heuristic,
                limit: Limit::Ratio(50)
            }
        )
        .is_empty());
        // Same ratio number but kbytes in force: the ratio must be written to take effect.
        let kb = t.with_policy(&Policy {
            mode: Mode::Never,
            limit: Limit::Kbytes(7),
        });
        let back = write_plan(
            &kb,
            &Policy {
                mode: Mode::Never,
                limit: Limit::Ratio(0),
            },
        );
        assert_eq!(back, vec![(Knob::OvercommitRatio, 0)]);
    }

    #[test]
    fn permissiveness_orders_modes_then_commit_limits() {
        use std::cmp::Ordering::*;
        let n = node(16, 0, Mode::Heuristic, 50, 0);
        let never = |limit| Policy {
            mode: Mode::Never,
            limit,
        };
        let heuristic = Policy {
            mode: Mode::Heuristic,
            limit: Limit::Ratio(50),
        };
        let always = Policy {
            mode: Mode::Always,
            limit: Limit::Ratio(50),
        };
        assert_eq!(n.compare_permissiveness(&always, &heuristic), Greater);
        assert_eq!(
            n.compare_permissiveness(&never(Limit::Ratio(100)), &heuristic),
            Less
        );
        assert_eq!(
            n.compare_permissiveness(&never(Limit::Ratio(90)), &never(Limit::Ratio(80))),
            Greater
        );
        // 16 GiB * 50% = 8 GiB < 9 GiB of kbytes.
        assert_eq!(
            n.compare_permissiveness(&never(Limit::Ratio(50)), &never(Limit::Kbytes(9 << 20))),
            Less
        );
    }

    #[test]
    fn the_lockout_guard_only_trips_in_mode_never_below_committed_plus_reserves() {
        let mut n = node(4, 0, Mode::Heuristic, 50, 0);
        n.memory.committed_as = 1 << 30;
        let never = |ratio| Policy {
            mode: Mode::Never,
            limit: Limit::Ratio(ratio),
        };
        // 4 GiB × 25% = 1 GiB: not above 1 GiB committed.
        let risk = n.lockout_risk(&never(25), 0).unwrap();
        assert_eq!(risk.limit_kb, 1 << 20);
        assert_eq!(risk.required_kb, (1 << 20) + 8192 + 131072);
        assert!(n.lockout_risk(&never(50), 64 << 20).is_none());
        // Exactly at the boundary is refused: the limit must exceed what is required.
        let at = |kb: u64| Policy {
            mode: Mode::Never,
            limit: Limit::Kbytes(kb),
        };
        let required = (1 << 20) + 8192 + 131072;
        assert!(n.lockout_risk(&at(required), 0).is_some());
        assert!(n.lockout_risk(&at(required + 4), 0).is_none());
        // kbytes across the kernel's whole unsigned range do not overflow the guard.
        assert!(n.lockout_risk(&at(u64::MAX), 0).is_none());
        assert!(n.lockout_risk(&at(1), u64::MAX).is_some());
        assert!(
            n.lockout_risk(&never(29), 64 << 20).is_some(),
            "1.16 GiB < 1 GiB + 136 MiB + 64 MiB"
        );
        assert!(n
            .lockout_risk(
                &Policy {
                    mode: Mode::Always,
                    limit: Limit::Ratio(0)
                },
                0
            )
            .is_none());
    }

    #[test]
    fn kernel_versions_parse_from_release_strings() {
        assert_eq!(
            KernelVersion::parse("6.1.0-26-cloud-amd64"),
            Some(KernelVersion {
                major: 6,
                minor: 1,
                patch: 0
            })
        );
        assert_eq!(
            KernelVersion::parse("5.15"),
            Some(KernelVersion {
                major: 5,
                minor: 15,
                patch: 0
            })
        );
        assert_eq!(
            KernelVersion::parse("4.18.0-553.el8_10.x86_64").map(|v| v.minor),
            Some(18)
        );
        assert_eq!(KernelVersion::parse("garbage"), None);
    }
}
