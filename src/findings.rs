//! What is worth an admin's attention in a node's overcommit policy, each with one line of advice.
//!
//! Pure: reads a [`Node`] (and the boot configuration) and returns [`Finding`]s.

use std::path::PathBuf;

use serde::Serialize;

use crate::model::{Knob, Limit, Mode, Node, Policy, RawLimit};
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
    /// A command that acts on the advice and that overcommitctl accepts now (the lockout
    /// guard included), when one does.
    pub command: Option<String>,
}

fn finding(
    severity: Severity,
    code: &'static str,
    message: String,
    advice: impl Into<String>,
    command: Option<String>,
) -> Finding {
    Finding {
        severity,
        code,
        message,
        advice: advice.into(),
        command,
    }
}

/// A mode-2 limit that leaves more than this share of RAM uncommittable is worth a warning.
const UNUSABLE_RAM_SHARE: f64 = 0.25;
/// Hugetlb above this share of RAM is worth a warning.
const HUGETLB_SHARE: f64 = 0.25;

/// The smallest ratio from `from` up to 100 that the lockout guard (with `margin` bytes)
/// accepts for mode never on `node`, as the command that sets it.
fn set_never_ratio(node: &Node, margin: u64, from: u32) -> Option<String> {
    (from..=100)
        .find(|&ratio| {
            let policy = Policy {
                mode: Mode::Never,
                limit: Limit::Ratio(ratio),
            };
            node.lockout_risk(&policy, margin).is_none()
        })
        .map(|ratio| format!("overcommitctl set never --ratio {ratio}"))
}

/// Assesses the live policy of `node`; `margin` is the lockout guard's margin (bytes), so that
/// the advice is a policy the guard accepts.
pub fn assess(node: &Node, margin: u64) -> Vec<Finding> {
    let mut out = Vec::new();
    let t = &node.tunables;
    let mode = t.overcommit_memory;
    let bytes = |pages: u64| HumanBytes(node.page_bytes(pages));
    let ratio_now = u32::try_from(t.overcommit_ratio.clamp(0, 100)).unwrap_or(0);

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
        let (advice, command) = if mode == Mode::Never {
            (
                "set a ratio from 0 to 100 that the lockout guard accepts, or use --kbytes for an exact limit",
                set_never_ratio(node, margin, 50)
                    .or_else(|| Some("overcommitctl set heuristic".to_string())),
            )
        } else {
            (
                "put the ratio back in 0..=100 (only mode never uses it, but a later switch to never would)",
                Some(format!("overcommitctl set {mode} --ratio 50")),
            )
        };
        out.push(finding(
            severity,
            "ratio_out_of_range",
            format!(
                "vm.overcommit_ratio is {}, outside 0..=100: {effect}",
                t.overcommit_ratio
            ),
            advice,
            command,
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
            None,
        ));
    }

    let committed = node.committed_pages();
    if mode == Mode::Never {
        if reported <= committed {
            let command = set_never_ratio(node, margin, ratio_now.saturating_add(1));
            let advice = if command.is_some() {
                "raise the limit now (the smallest ratio the lockout guard accepts), add swap, or switch to heuristic"
            } else {
                "no ratio up to 100 clears Committed_AS with the guard's margin: switch to heuristic now, then add swap or stop jobs"
            };
            out.push(finding(
                Severity::Critical,
                "commit_exhausted",
                format!(
                    "mode never with CommitLimit {} at or below Committed_AS {}: new allocations on this node are failing",
                    bytes(reported),
                    bytes(committed)
                ),
                advice,
                command.or_else(|| Some("overcommitctl set heuristic".to_string())),
            ));
        } else if (reported - committed) < reported / 20 {
            let command = set_never_ratio(node, margin, ratio_now.saturating_add(10).min(100))
                .filter(|_| ratio_now < 100 && t.overcommit_kbytes == 0);
            out.push(finding(
                Severity::Warning,
                "commit_nearly_exhausted",
                format!(
                    "only {} of CommitLimit is left uncommitted",
                    bytes(reported - committed)
                ),
                "large allocations will start failing soon: raise the ratio or add swap",
                command,
            ));
        }
        let ram = node.ram_pages();
        let usable = reported.min(ram);
        if node.swap_pages() == 0 && (ram - usable) as f64 > ram as f64 * UNUSABLE_RAM_SHARE {
            let command = set_never_ratio(node, margin, ratio_now.max(89) + 1);
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
                command,
            ));
        }
    }

    if mode == Mode::Always && node.swap_pages() == 0 {
        out.push(finding(
            Severity::Warning,
            "always_without_swap",
            "mode always with no swap: only the OOM killer stands between jobs and the node".to_string(),
            "go back to heuristic node-wide; a job that needs large allocations can have them alone with the job scope (`overcommitctl run --scope job -- CMD`: no root, the node unchanged), as a lease of always is node-wide too; or add swap",
            Some("overcommitctl set heuristic".to_string()),
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
            None,
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
            None,
        ));
    } else if node.kernel.is_none() {
        out.push(finding(
            Severity::Info,
            "unknown_kernel",
            "the kernel release did not parse; the v5.2+ rules are assumed".to_string(),
            "check /proc/sys/kernel/osrelease",
            None,
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
            None,
        ));
    }
    out
}

/// overcommitd's configured baseline, which it applies whenever it starts (at boot too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootBaseline {
    pub profile: String,
    pub mode: Mode,
    /// `None`: the profile keeps the limit the daemon finds (the sysctl.d value at boot).
    pub limit: Option<Limit>,
    /// The configuration file that names it.
    pub config: PathBuf,
}

/// Compares the live values with what the next boot will set: the sysctl.d files, and after
/// them overcommitd's configured baseline when overcommitd runs on this node.
pub fn boot_findings(
    node: &Node,
    boot: &BootConfig,
    managed: Option<&BootBaseline>,
) -> Vec<Finding> {
    let t = &node.tunables;
    let live = [
        (
            Knob::OvercommitMemory,
            i64::from(t.overcommit_memory.number()),
        ),
        (Knob::OvercommitRatio, t.overcommit_ratio),
        (Knob::OvercommitKbytes, t.overcommit_kbytes as i64),
    ];
    // What overcommitd writes at its start, knob by knob (None: it keeps what it finds).
    let daemon_value = |knob: Knob| -> Option<i64> {
        let baseline = managed?;
        match knob {
            Knob::OvercommitMemory => Some(i64::from(baseline.mode.number())),
            _ => {
                let tunables = t.with_policy(&Policy {
                    mode: baseline.mode,
                    limit: baseline.limit?,
                });
                Some(match knob {
                    Knob::OvercommitRatio => tunables.overcommit_ratio,
                    _ => tunables.overcommit_kbytes as i64,
                })
            }
        }
    };
    let mut out = Vec::new();
    for (knob, value) in live {
        let key = knob.sysctl_key();
        if let (Some(baseline), Some(at_boot)) = (managed, daemon_value(knob)) {
            if at_boot != value {
                out.push(finding(
                    Severity::Info,
                    "boot_differs",
                    format!(
                        "{key} is {value} now but overcommitd applies its baseline {} ({key} = {at_boot}) whenever it starts, at boot too",
                        baseline.profile
                    ),
                    format!(
                        "the live value lasts until overcommitd restarts or the node reboots; to keep it, make a profile with it the baseline in {}",
                        baseline.config.display()
                    ),
                    None,
                ));
            }
            continue;
        }
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
                    None,
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
            None,
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

    const MARGIN: u64 = 64 << 20;

    fn assess_default(node: &Node) -> Vec<Finding> {
        assess(node, MARGIN)
    }

    fn codes(findings: &[Finding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.code).collect()
    }

    #[test]
    fn a_default_node_has_nothing_to_report() {
        assert!(assess_default(&node(Mode::Heuristic, 50, GIB, GIB)).is_empty());
    }

    #[test]
    fn ratio_out_of_range_is_reported_and_critical_when_in_force_in_mode_2() {
        let f = assess_default(&node(Mode::Never, -10, GIB, GIB));
        let ratio = f.iter().find(|f| f.code == "ratio_out_of_range").unwrap();
        assert_eq!(ratio.severity, Severity::Critical);
        assert!(
            codes(&assess_default(&node(Mode::Heuristic, 150, GIB, GIB)))
                .contains(&"ratio_out_of_range")
        );
    }

    #[test]
    fn mode_2_at_or_below_committed_is_critical() {
        let f = assess_default(&node(Mode::Never, 50, 0, 8 * GIB));
        assert!(codes(&f).contains(&"commit_exhausted"), "{f:?}");
        let ok = assess_default(&node(Mode::Never, 95, GIB, GIB));
        assert!(!codes(&ok).contains(&"commit_exhausted"));
    }

    /// The ratio a finding's command sets.
    fn commanded_ratio(finding: &Finding) -> u32 {
        let command = finding.command.as_deref().expect("a command");
        let ratio = command.strip_prefix("overcommitctl set never --ratio ");
        ratio.expect(command).parse().unwrap()
    }

    fn guard_accepts(n: &Node, ratio: u32) -> bool {
        let policy = Policy {
            mode: Mode::Never,
            limit: Limit::Ratio(ratio),
        };
        n.lockout_risk(&policy, MARGIN).is_none()
    }

    #[test]
    fn exhausted_commit_advises_the_smallest_ratio_the_lockout_guard_accepts() {
        // 16 GiB RAM, no swap, ratio 50 (8 GiB), 9 GiB committed.
        let n = node(Mode::Never, 50, 0, 9 * GIB);
        let f = assess_default(&n);
        let exhausted = f.iter().find(|f| f.code == "commit_exhausted").unwrap();
        let ratio = commanded_ratio(exhausted);
        assert!(guard_accepts(&n, ratio), "the guard accepts ratio {ratio}");
        assert!(!guard_accepts(&n, ratio - 1), "and it is the smallest");
        // Beyond what any ratio clears: switch to heuristic.
        let full = node(Mode::Never, 50, 0, 16 * GIB);
        let f = assess_default(&full);
        let exhausted = f.iter().find(|f| f.code == "commit_exhausted").unwrap();
        assert_eq!(
            exhausted.command.as_deref(),
            Some("overcommitctl set heuristic")
        );
    }

    #[test]
    fn advice_for_an_inert_ratio_keeps_the_mode() {
        let f = assess_default(&node(Mode::Heuristic, 150, GIB, GIB));
        let ratio = f.iter().find(|f| f.code == "ratio_out_of_range").unwrap();
        assert_eq!(
            ratio.command.as_deref(),
            Some("overcommitctl set heuristic --ratio 50")
        );
    }

    #[test]
    fn mode_2_with_low_ratio_and_no_swap_leaves_ram_unusable() {
        assert!(codes(&assess_default(&node(Mode::Never, 50, 0, GIB))).contains(&"ram_unusable"));
        assert!(!codes(&assess_default(&node(Mode::Never, 90, 0, GIB))).contains(&"ram_unusable"));
    }

    #[test]
    fn mode_1_without_swap_is_a_warning() {
        assert!(codes(&assess_default(&node(Mode::Always, 50, 0, GIB)))
            .contains(&"always_without_swap"));
        assert!(!codes(&assess_default(&node(Mode::Always, 50, GIB, GIB)))
            .contains(&"always_without_swap"));
    }

    #[test]
    fn large_hugetlb_and_old_kernels_and_mismatches_are_noticed() {
        let mut n = node(Mode::Never, 90, GIB, GIB);
        n.memory.hugetlb = 8 * GIB;
        n.memory.commit_limit = n.page_bytes(n.computed_commit_limit_pages());
        assert!(codes(&assess_default(&n)).contains(&"hugetlb_large"));
        let mut old = node(Mode::Heuristic, 50, GIB, GIB);
        old.kernel = KernelVersion::parse("4.18.0");
        assert!(codes(&assess_default(&old)).contains(&"old_kernel"));
        let mut odd = node(Mode::Heuristic, 50, GIB, GIB);
        odd.memory.commit_limit += 4096;
        assert!(codes(&assess_default(&odd)).contains(&"commit_limit_mismatch"));
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
        let f = boot_findings(&n, &boot, None);
        assert_eq!(codes(&f), vec!["boot_differs"]);
        assert!(f[0].message.contains("90-hpc.conf:3"));
        assert!(f[0].advice.contains("reverts at the next boot"));

        // With overcommitd managing the node, its baseline is what the next boot brings.
        let managed = BootBaseline {
            profile: "hpc-strict".into(),
            mode: Mode::Always,
            limit: None,
            config: "/etc/overcommitd/overcommitd.toml".into(),
        };
        assert!(
            boot_findings(&n, &boot, Some(&managed)).is_empty(),
            "live mode 1 is what overcommitd applies at boot, whatever sysctl.d says"
        );
        let strict = BootBaseline {
            mode: Mode::Never,
            limit: Some(Limit::Ratio(95)),
            ..managed
        };
        let f = boot_findings(&n, &boot, Some(&strict));
        assert_eq!(codes(&f), vec!["boot_differs", "boot_differs"], "{f:?}");
        assert!(f.iter().all(|f| f
            .message
            .contains("overcommitd applies its baseline hpc-strict")));
        assert!(!f
            .iter()
            .any(|f| f.advice.contains("reverts at the next boot")));
    }
}
