//! What is worth an admin's attention in a node's overcommit policy, each with one line of advice.
//!
//! Pure: reads a [`Node`] (and the boot configuration) and returns [`Finding`]s.

use serde::Serialize;

use crate::model::{Knob, Mode, Node, RawLimit};
use crate::size::HumanBytes;
use crate::sysctl_d::BootConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// One observation about the policy, with a stable code for scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub advice: String,
}

fn finding(
    severity: Severity,
    code: &'static str,
    message: String,
    advice: impl Into<String>,
) -> Finding {
    Finding {
        severity,
        code,
        message,
        advice: advice.into(),
    }
}

/// A mode-2 limit that leaves more than this share of RAM uncommittable is worth a warning.
const UNUSABLE_RAM_SHARE: f64 = 0.25;
/// Hugetlb above this share of RAM is worth a warning.
const HUGETLB_SHARE: f64 = 0.25;

/// Assesses the live policy of `node`.
pub fn assess(node: &Node) -> Vec<Finding> {
    let mut out = Vec::new();
    let t = &node.tunables;
    let mode = t.overcommit_memory;
    let bytes = |pages: u64| HumanBytes(node.page_bytes(pages));

    if !(0..=100).contains(&t.overcommit_ratio) {
        let in_force = t.overcommit_kbytes == 0;
        let severity = if in_force && mode == Mode::Never {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let effect = if t.overcommit_ratio < 0 {
            "a negative ratio wraps to a huge CommitLimit in the kernel's unsigned arithmetic"
        } else {
            "CommitLimit exceeds RAM + swap"
        };
        out.push(finding(
            severity,
            "ratio_out_of_range",
            format!("vm.overcommit_ratio is {}, outside 0..=100: {effect}", t.overcommit_ratio),
            "set a ratio from 0 to 100 (`overcommitctl set never --ratio 80`), or use --kbytes for an exact limit",
        ));
    }

    let computed = node.computed_commit_limit_pages();
    let reported = node.reported_commit_limit_pages();
    if computed != reported {
        out.push(finding(
            Severity::Warning,
            "commit_limit_mismatch",
            format!(
                "the kernel reports CommitLimit {} but the rules give {} (RAM or swap changed while reading, or a kernel with different rules)",
                bytes(reported),
                bytes(computed)
            ),
            "run status again; if it persists, trust the kernel's figure and report the kernel version",
        ));
    }

    let committed = node.committed_pages();
    if mode == Mode::Never {
        if reported <= committed {
            out.push(finding(
                Severity::Critical,
                "commit_exhausted",
                format!(
                    "mode never with CommitLimit {} at or below Committed_AS {}: new allocations on this node are failing",
                    bytes(reported),
                    bytes(committed)
                ),
                "raise the limit now (`overcommitctl set never --ratio 100`, add swap) or switch to heuristic",
            ));
        } else if (reported - committed) < reported / 20 {
            out.push(finding(
                Severity::Warning,
                "commit_nearly_exhausted",
                format!(
                    "only {} of CommitLimit is left uncommitted",
                    bytes(reported - committed)
                ),
                "large allocations will start failing soon: raise the ratio or add swap",
            ));
        }
        let ram = node.ram_pages();
        let usable = reported.min(ram);
        if node.swap_pages() == 0 && (ram - usable) as f64 > ram as f64 * UNUSABLE_RAM_SHARE {
            out.push(finding(
                Severity::Warning,
                "ram_unusable",
                format!(
                    "mode never with no swap and CommitLimit {} leaves {} of {} RAM that can never be committed",
                    bytes(reported),
                    bytes(ram - usable),
                    bytes(ram)
                ),
                "raise vm.overcommit_ratio towards 100 (minus what the kernel needs), or add swap",
            ));
        }
    }

    if mode == Mode::Always && node.swap_pages() == 0 {
        out.push(finding(
            Severity::Warning,
            "always_without_swap",
            "mode always with no swap: only the OOM killer stands between jobs and the node".to_string(),
            "grant `always` per job (`overcommitctl run --mode always -- CMD`) instead of node-wide, or add swap",
        ));
    }

    let hugetlb = node.hugetlb_pages();
    if hugetlb > 0 && hugetlb as f64 > node.ram_pages() as f64 * HUGETLB_SHARE {
        let advice = match (mode, t.limit_in_force()) {
            (Mode::Never, RawLimit::Ratio(_)) => {
                "hugetlb pages are taken off RAM before the ratio applies: size the ratio for what is left, or use kbytes"
            }
            (Mode::Heuristic, _) => {
                "mode 0 still counts hugetlb pages as RAM: a single request can pass the check and not fit"
            }
            _ => "make sure normal allocations still fit beside the huge page pool",
        };
        out.push(finding(
            Severity::Warning,
            "hugetlb_large",
            format!(
                "hugetlb holds {} of {} RAM",
                bytes(hugetlb),
                bytes(node.ram_pages())
            ),
            advice,
        ));
    }

    if node.uses_old_heuristic() {
        out.push(finding(
            Severity::Info,
            "old_kernel",
            format!(
                "kernel {} is older than 5.2: mode 0 compares requests with free memory, not RAM + swap",
                node.kernel.map(|v| v.to_string()).unwrap_or_default()
            ),
            "predictions for mode 0 on this kernel are estimates; borderline cases say so",
        ));
    } else if node.kernel.is_none() {
        out.push(finding(
            Severity::Info,
            "unknown_kernel",
            "the kernel release did not parse; the v5.2+ rules are assumed".to_string(),
            "check /proc/sys/kernel/osrelease",
        ));
    }

    if t.overcommit_kbytes != 0 && mode != Mode::Never {
        out.push(finding(
            Severity::Info,
            "limit_inert",
            format!(
                "vm.overcommit_kbytes is {} but only mode never uses it",
                t.overcommit_kbytes
            ),
            "nothing to do unless you meant mode never",
        ));
    }
    out
}

/// Compares the live values with what the boot configuration will set at the next boot.
pub fn boot_findings(node: &Node, boot: &BootConfig) -> Vec<Finding> {
    let t = &node.tunables;
    let live = [
        (
            Knob::OvercommitMemory,
            i64::from(t.overcommit_memory.number()),
        ),
        (Knob::OvercommitRatio, t.overcommit_ratio),
        (Knob::OvercommitKbytes, t.overcommit_kbytes as i64),
    ];
    let mut out = Vec::new();
    for (knob, value) in live {
        let key = knob.sysctl_key();
        if let Some(boot_value) = boot.values.get(&key) {
            if boot_value.winner.value.trim().parse::<i64>().ok() != Some(value) {
                out.push(finding(
                    Severity::Info,
                    "boot_differs",
                    format!(
                        "{key} is {value} now but {}:{} sets {} at boot",
                        boot_value.winner.file.display(),
                        boot_value.winner.line,
                        boot_value.winner.value
                    ),
                    "the live value reverts at the next boot; change that file to keep it",
                ));
            }
        }
    }
    out.extend(boot.problems.iter().map(|p| {
        finding(
            Severity::Info,
            "boot_config_unreadable",
            p.clone(),
            "boot sources may be incomplete",
        )
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KernelVersion;

    const GIB: u64 = 1 << 30;

    fn node(mode: Mode, ratio: i64, swap: u64, committed: u64) -> Node {
        crate::model::testing::node(16 * GIB, swap, mode, ratio, 0, committed)
    }

    fn codes(findings: &[Finding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.code).collect()
    }

    #[test]
    fn a_default_node_has_nothing_to_report() {
        assert!(assess(&node(Mode::Heuristic, 50, GIB, GIB)).is_empty());
    }

    #[test]
    fn ratio_out_of_range_is_reported_and_critical_when_in_force_in_mode_2() {
        let f = assess(&node(Mode::Never, -10, GIB, GIB));
        let ratio = f.iter().find(|f| f.code == "ratio_out_of_range").unwrap();
        assert_eq!(ratio.severity, Severity::Critical);
        assert!(
            codes(&assess(&node(Mode::Heuristic, 150, GIB, GIB))).contains(&"ratio_out_of_range")
        );
    }

    #[test]
    fn mode_2_at_or_below_committed_is_critical() {
        let f = assess(&node(Mode::Never, 50, 0, 8 * GIB));
        assert!(codes(&f).contains(&"commit_exhausted"), "{f:?}");
        let ok = assess(&node(Mode::Never, 95, GIB, GIB));
        assert!(!codes(&ok).contains(&"commit_exhausted"));
    }

    #[test]
    fn mode_2_with_low_ratio_and_no_swap_leaves_ram_unusable() {
        assert!(codes(&assess(&node(Mode::Never, 50, 0, GIB))).contains(&"ram_unusable"));
        assert!(!codes(&assess(&node(Mode::Never, 90, 0, GIB))).contains(&"ram_unusable"));
    }

    #[test]
    fn mode_1_without_swap_is_a_warning() {
        assert!(codes(&assess(&node(Mode::Always, 50, 0, GIB))).contains(&"always_without_swap"));
        assert!(!codes(&assess(&node(Mode::Always, 50, GIB, GIB))).contains(&"always_without_swap"));
    }

    #[test]
    fn large_hugetlb_and_old_kernels_and_mismatches_are_noticed() {
        let mut n = node(Mode::Never, 90, GIB, GIB);
        n.memory.hugetlb = 8 * GIB;
        n.memory.commit_limit = n.page_bytes(n.computed_commit_limit_pages());
        assert!(codes(&assess(&n)).contains(&"hugetlb_large"));
        let mut old = node(Mode::Heuristic, 50, GIB, GIB);
        old.kernel = KernelVersion::parse("4.18.0");
        assert!(codes(&assess(&old)).contains(&"old_kernel"));
        let mut odd = node(Mode::Heuristic, 50, GIB, GIB);
        odd.memory.commit_limit += 4096;
        assert!(codes(&assess(&odd)).contains(&"commit_limit_mismatch"));
    }

    #[test]
    fn a_boot_value_different_from_the_live_one_is_reported() {
        use crate::sysctl_d::{BootValue, Origin, Setting};
        let n = node(Mode::Always, 50, GIB, GIB);
        let mut boot = BootConfig::default();
        let setting = Setting {
            key: "vm.overcommit_memory".into(),
            value: "0".into(),
            file: "/etc/sysctl.d/90-hpc.conf".into(),
            line: 3,
            origin: Origin::SysctlD,
        };
        boot.values.insert(
            "vm.overcommit_memory".into(),
            BootValue {
                winner: setting,
                overridden: vec![],
            },
        );
        let f = boot_findings(&n, &boot);
        assert_eq!(codes(&f), vec!["boot_differs"]);
        assert!(f[0].message.contains("90-hpc.conf:3"));
    }
}
