//! `overcommitctl status`: the live policy, what the kernel counts, what will happen at boot,
//! and what is worth attention.

use serde::Serialize;

use crate::client;
use crate::config::{Config, DaemonSettings};
use crate::findings::{self, BootBaseline, Finding, Severity};
use crate::kernel::{ProcRoot, SwapDevice};
use crate::model::{Knob, Mode, Node, RawLimit};
use crate::output::{paint, Section, BAD, DIM, GOOD, WARN};
use crate::predict::{self, Process, Rule};
use crate::protocol::{DaemonStatus, Request};
use crate::size::HumanBytes;
use crate::sysctl_d::{BootConfig, Origin, SysctlSources};

use super::{daemon_expected, CtlError, Globals};

/// Everything `status` reports; `--json` prints it as is (bytes, exact; docs/json.md).
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub proc_root: String,
    pub kernel_release: String,
    pub nr_cpus: u32,
    pub page_size_bytes: u64,
    pub mode: Mode,
    pub mode_number: u8,
    pub overcommit_ratio: i64,
    pub overcommit_kbytes: u64,
    /// "ratio" or "kbytes": which knob sets CommitLimit.
    pub limit_in_force: &'static str,
    pub commit_limit_bytes: u64,
    pub commit_limit_computed_bytes: u64,
    pub committed_as_bytes: u64,
    /// CommitLimit − Committed_AS; negative when over-committed. Enforced in mode never only.
    pub headroom_bytes: i64,
    pub mem_total_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_devices: Vec<SwapDevice>,
    pub hugetlb_bytes: u64,
    pub nr_hugepages: u64,
    pub admin_reserve_bytes: u64,
    pub user_reserve_bytes: u64,
    pub max_map_count: u64,
    pub swappiness: u64,
    pub largest_allocation: Largest,
    pub boot: BootView,
    pub findings: Vec<Finding>,
    /// The most severe finding (`None`: nothing to report); critical makes status exit 1.
    pub worst_severity: Option<Severity>,
    /// overcommitd's view (baseline, effective policy, leases), `None` when it does not answer.
    pub daemon: Option<DaemonStatus>,
    /// overcommitd is expected on this node (its configuration exists, or a unit of it is
    /// enabled or installed).
    pub daemon_expected: bool,
    pub socket: String,
    /// Under mode never with little headroom left: the three processes holding the most charge.
    pub commit_holders: Option<Vec<crate::charge::Holder>>,
}

/// The largest single allocation that would succeed now (user reserve counted in full).
#[derive(Debug, Serialize)]
pub struct Largest {
    pub rule: Rule,
    /// `None`: only the address space limits it (mode always).
    pub root_bytes: Option<u64>,
    pub user_bytes: Option<u64>,
}

/// What the next boot sets, per key: the sysctl.d setting that wins, and overcommitd's
/// baseline when it manages the node.
#[derive(Debug, Serialize)]
pub struct BootView {
    pub values: std::collections::BTreeMap<String, BootSetting>,
    /// Files that could not be read (the boot sources may be incomplete).
    pub problems: Vec<String>,
    /// overcommitd's configured baseline, applied whenever it starts (after sysctl.d at boot).
    pub overcommitd_baseline: Option<BootBaseline>,
}

/// The winning assignment of one key at boot.
#[derive(Debug, Serialize)]
pub struct BootSetting {
    /// The value as a number; `None` when the file's text is not one.
    pub value: Option<i64>,
    /// The value as written.
    pub text: String,
    pub file: String,
    pub line: usize,
    pub origin: Origin,
    /// Earlier assignments of the key that this one overrides.
    pub overrides: usize,
}

impl BootView {
    fn new(boot: &BootConfig, overcommitd_baseline: Option<BootBaseline>) -> BootView {
        BootView {
            values: boot
                .values
                .iter()
                .map(|(key, v)| {
                    let setting = BootSetting {
                        value: v.winner.value.trim().parse().ok(),
                        text: v.winner.value.clone(),
                        file: v.winner.file.display().to_string(),
                        line: v.winner.line,
                        origin: v.winner.origin,
                        overrides: v.overridden.len(),
                    };
                    (key.clone(), setting)
                })
                .collect(),
            problems: boot.problems.clone(),
            overcommitd_baseline,
        }
    }
}

impl StatusReport {
    pub fn gather(globals: &Globals, sysctl: &SysctlSources) -> Result<StatusReport, CtlError> {
        let proc_root = globals.proc_root();
        // Asked first: the daemon looks for drift (and may enforce) before it answers.
        let daemon = client::call::<DaemonStatus>(&globals.socket, &Request::Status).ok();
        let expectations = daemon_expected(&globals.config, &globals.sysctl_root);
        let expected = !expectations.is_empty();
        let (node, release) = proc_root.node_and_release()?;
        let swaps = proc_root.read_swaps()?;
        let keys: Vec<String> = [
            Knob::OvercommitMemory,
            Knob::OvercommitRatio,
            Knob::OvercommitKbytes,
        ]
        .map(Knob::sysctl_key)
        .to_vec();
        let boot = sysctl.boot_config(&proc_root.read_cmdline(), &keys);
        // The configuration decides the guard's margin (so advice passes it) and, when
        // overcommitd runs here, the baseline it applies at boot.
        let config = Config::load(&globals.config).ok();
        let margin = config
            .as_ref()
            .map_or(DaemonSettings::default().lockout_margin, |c| {
                c.daemon.lockout_margin
            });
        let managed = config
            .as_ref()
            .filter(|_| expected || daemon.is_some())
            .and_then(|c| {
                c.baseline_profile().map(|p| BootBaseline {
                    profile: p.name.clone(),
                    mode: p.mode,
                    limit: p.limit,
                    config: c.path.clone(),
                })
            });
        let mut report_findings = findings::assess(&node, margin);
        report_findings.extend(findings::boot_findings(&node, &boot, managed.as_ref()));
        if expected && daemon.is_none() {
            report_findings.push(Finding {
                severity: Severity::Warning,
                code: "daemon_unreachable",
                message: format!(
                    "overcommitd is expected on this node ({}) but does not answer at {}",
                    super::overcommitd::describe(&expectations),
                    globals.socket.display()
                ),
                advice: "leases cannot be granted and drift is not corrected: `systemctl status overcommitd`".into(),
                command: None,
            });
        }
        report_findings.extend(daemon.as_ref().and_then(found_at_start_finding));
        report_findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        let mut report = StatusReport::new(
            &node,
            &proc_root,
            release,
            swaps,
            BootView::new(&boot, managed),
            report_findings,
        );
        report.daemon = daemon;
        report.daemon_expected = expected;
        report.socket = globals.socket.display().to_string();
        if report
            .findings
            .iter()
            .any(|f| matches!(f.code, "commit_exhausted" | "commit_nearly_exhausted"))
        {
            report.commit_holders = super::top::largest_holders(&proc_root, 3);
        }
        Ok(report)
    }

    /// 1 when a finding is critical (the node is failing allocations or about to), else 0.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.worst_severity == Some(Severity::Critical))
    }

    /// One line for scripts and prompts: `MODE LIMIT committed=USED/LIMIT STATE`.
    pub fn short(&self) -> String {
        let limit = match self.limit_in_force {
            "kbytes" => format!("kbytes={}", self.overcommit_kbytes),
            _ => format!("ratio={}", self.overcommit_ratio),
        };
        let compact = |bytes: u64| HumanBytes(bytes).to_string().replace(' ', "");
        let flagged: Vec<String> = self
            .findings
            .iter()
            .filter(|f| f.severity >= Severity::Warning)
            .map(|f| {
                let severity = match f.severity {
                    Severity::Critical => "critical",
                    _ => "warning",
                };
                format!("{severity}:{}", f.code)
            })
            .collect();
        let state = if flagged.is_empty() {
            "ok".to_string()
        } else {
            flagged.join(",")
        };
        format!(
            "{} {limit} committed={}/{} {state}\n",
            self.mode,
            compact(self.committed_as_bytes),
            compact(self.commit_limit_bytes)
        )
    }

    fn new(
        node: &Node,
        proc_root: &ProcRoot,
        kernel_release: String,
        swap_devices: Vec<SwapDevice>,
        boot: BootView,
        findings: Vec<Finding>,
    ) -> StatusReport {
        let t = &node.tunables;
        let m = &node.memory;
        let largest_for = |privileged| {
            // A process big enough that the whole user reserve applies: the safe figure.
            let process = Process {
                privileged,
                vm_size: Some(t.user_reserve_kbytes * 1024 * 32),
                ..Process::default()
            };
            predict::predict(node, &process, 0)
        };
        let (root, user) = (largest_for(true), largest_for(false));
        StatusReport {
            proc_root: proc_root.path().display().to_string(),
            kernel_release,
            nr_cpus: node.nr_cpus,
            page_size_bytes: node.page_size,
            mode: t.overcommit_memory,
            mode_number: t.overcommit_memory.number(),
            overcommit_ratio: t.overcommit_ratio,
            overcommit_kbytes: t.overcommit_kbytes,
            limit_in_force: match t.limit_in_force() {
                RawLimit::Ratio(_) => "ratio",
                RawLimit::Kbytes(_) => "kbytes",
            },
            commit_limit_bytes: m.commit_limit,
            commit_limit_computed_bytes: node.page_bytes(node.computed_commit_limit_pages()),
            committed_as_bytes: m.committed_as,
            headroom_bytes: i64::try_from(i128::from(m.commit_limit) - i128::from(m.committed_as))
                .unwrap_or(i64::MIN),
            mem_total_bytes: m.mem_total,
            swap_total_bytes: m.swap_total,
            swap_devices,
            hugetlb_bytes: m.hugetlb,
            nr_hugepages: t.nr_hugepages,
            admin_reserve_bytes: t.admin_reserve_kbytes * 1024,
            user_reserve_bytes: t.user_reserve_kbytes * 1024,
            max_map_count: t.max_map_count,
            swappiness: t.swappiness,
            largest_allocation: Largest {
                rule: root.rule,
                root_bytes: root.largest_bytes,
                user_bytes: user.largest_bytes,
            },
            boot,
            worst_severity: findings.iter().map(|f| f.severity).max(),
            findings,
            daemon: None,
            daemon_expected: false,
            socket: String::new(),
            commit_holders: None,
        }
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}\n\n",
            paint(
                DIM,
                format!(
                    "overcommit status  ·  kernel {}  ·  {} CPUs  ·  proc root {}",
                    self.kernel_release, self.nr_cpus, self.proc_root
                )
            )
        );
        let mode_style = match self.mode {
            Mode::Heuristic => GOOD,
            Mode::Always => WARN,
            Mode::Never => GOOD,
        };
        let mut policy = Section::new("Policy");
        policy.row(
            "mode",
            paint(mode_style, format!("{} ({})", self.mode, self.mode_number)),
            mode_summary(self.mode),
        );
        let ratio_note = match (self.mode, self.limit_in_force) {
            (Mode::Never, "ratio") => "in force: CommitLimit = (RAM - hugetlb) x ratio + swap",
            (_, "ratio") => "only mode never uses it",
            _ => "not in force: overcommit_kbytes is set",
        };
        policy.row("ratio", format!("{}%", self.overcommit_ratio), ratio_note);
        let kbytes_note = match (self.mode, self.limit_in_force) {
            (Mode::Never, "kbytes") => "in force: CommitLimit = kbytes + swap",
            (_, "kbytes") => "set, but only mode never uses it",
            _ => "0: the ratio is in force",
        };
        policy.row("kbytes", self.overcommit_kbytes, kbytes_note);
        match &self.daemon {
            Some(d) => {
                let mut note = format!(
                    "baseline {} ({}), {} lease(s) (node-wide), effective {}",
                    d.baseline.name, d.baseline.source, d.leases, d.effective
                );
                if let Some(p) = &d.pending_write {
                    note.push_str(&paint(
                        BAD,
                        format!(
                            "; write of {} pending ({} attempt(s), last error: {})",
                            p.target, p.attempts, p.last_error
                        ),
                    ));
                }
                if let Some(h) = &d.held {
                    note.push_str(&paint(
                        BAD,
                        format!("; lockout guard holds {} instead", h.holding),
                    ));
                }
                policy.row("overcommitd", paint(GOOD, "running"), note)
            }
            None => policy.row(
                "overcommitd",
                "not running",
                format!("no answer on {}", self.socket),
            ),
        };
        out.push_str(&policy.to_string());

        let mut commit = Section::new("Commit accounting");
        let agreement = if self.commit_limit_bytes == self.commit_limit_computed_bytes {
            "kernel; the rules give the same".to_string()
        } else {
            paint(
                BAD,
                format!(
                    "kernel; the rules give {}",
                    HumanBytes(self.commit_limit_computed_bytes)
                ),
            )
        };
        commit.row(
            "CommitLimit",
            HumanBytes(self.commit_limit_bytes),
            agreement,
        );
        commit.row("Committed_AS", HumanBytes(self.committed_as_bytes), "");
        let headroom = if self.headroom_bytes >= 0 {
            HumanBytes(self.headroom_bytes as u64).to_string()
        } else {
            paint(
                BAD,
                format!("-{}", HumanBytes(self.headroom_bytes.unsigned_abs())),
            )
        };
        let headroom_note = if self.mode == Mode::Never {
            "what new allocations may still commit"
        } else {
            "enforced only in mode never"
        };
        commit.row("headroom", headroom, headroom_note);
        out.push('\n');
        out.push_str(&commit.to_string());
        if let Some(holders) = &self.commit_holders {
            out.push('\n');
            out.push_str(&super::top::holders_section(
                "Largest commit holders",
                holders,
            ));
        }

        let mut memory = Section::new("Memory");
        memory.row("MemTotal", HumanBytes(self.mem_total_bytes), "");
        let swap_note = if self.swap_devices.is_empty() {
            "no swap devices".to_string()
        } else {
            String::new()
        };
        memory.row("SwapTotal", HumanBytes(self.swap_total_bytes), swap_note);
        for swap in &self.swap_devices {
            memory.row(
                format!("  {}", swap.path),
                HumanBytes(swap.size_bytes),
                format!(
                    "{}, used {}, priority {}",
                    swap.kind,
                    HumanBytes(swap.used_bytes),
                    swap.priority
                ),
            );
        }
        memory.row(
            "Hugetlb",
            HumanBytes(self.hugetlb_bytes),
            format!("nr_hugepages {}", self.nr_hugepages),
        );
        memory.row(
            "reserves",
            format!("admin {}", HumanBytes(self.admin_reserve_bytes)),
            format!(
                "user {} (mode never only)",
                HumanBytes(self.user_reserve_bytes)
            ),
        );
        out.push('\n');
        out.push_str(&memory.to_string());

        let mut largest = Section::new("Largest single allocation now");
        let show = |bytes: Option<u64>| {
            bytes.map_or("no limit".to_string(), |b| HumanBytes(b).to_string())
        };
        let rule_note = match self.largest_allocation.rule {
            Rule::Heuristic => "MemTotal + SwapTotal",
            Rule::CommitLimit => "CommitLimit - Committed_AS - reserves",
            Rule::Always => "only the address space limits it",
            _ => "",
        };
        largest.row("root", show(self.largest_allocation.root_bytes), rule_note);
        largest.row("user", show(self.largest_allocation.user_bytes), "");
        out.push('\n');
        out.push_str(&largest.to_string());

        let mut boot = Section::new("Boot configuration");
        for knob in [
            Knob::OvercommitMemory,
            Knob::OvercommitRatio,
            Knob::OvercommitKbytes,
        ] {
            let key = knob.sysctl_key();
            match self.boot.values.get(&key) {
                Some(value) => {
                    let overridden = if value.overrides == 0 {
                        String::new()
                    } else {
                        format!("overrides {} earlier setting(s)", value.overrides)
                    };
                    boot.row(
                        &key,
                        format!("{}  ({}:{})", value.text, value.file, value.line),
                        overridden,
                    );
                }
                None => {
                    boot.row(&key, "not set", "the kernel default applies at boot");
                }
            }
        }
        if let Some(baseline) = &self.boot.overcommitd_baseline {
            let limit = baseline
                .limit
                .map_or("the limit it finds".to_string(), |l| l.to_string());
            boot.row(
                "overcommitd",
                format!("baseline {}", baseline.profile),
                format!(
                    "{} ({}), {limit}: applied whenever overcommitd starts, after sysctl.d",
                    baseline.mode,
                    baseline.mode.number()
                ),
            );
        }
        out.push('\n');
        out.push_str(&boot.to_string());

        out.push('\n');
        out.push_str(&paint(crate::output::HEADING, "Findings"));
        out.push('\n');
        if self.findings.is_empty() {
            out.push_str(&format!("  {}\n", paint(GOOD, "nothing to report")));
        }
        for finding in &self.findings {
            let label = match finding.severity {
                Severity::Critical => paint(BAD, "critical"),
                Severity::Warning => paint(WARN, "warning "),
                Severity::Info => paint(DIM, "info    "),
            };
            out.push_str(&format!(
                "  {label}  {}\n            {}\n",
                finding.message,
                paint(DIM, &finding.advice)
            ));
            if let Some(command) = &finding.command {
                out.push_str(&format!(
                    "            {}\n",
                    paint(crate::output::HEADING, command)
                ));
            }
        }
        out
    }
}

fn mode_summary(mode: Mode) -> &'static str {
    match mode {
        Mode::Heuristic => "one request may not exceed MemTotal + SwapTotal",
        Mode::Always => "every request succeeds; pages are taken when touched",
        Mode::Never => "all commitments together stay below CommitLimit",
    }
}

/// What overcommitd's first start in this boot found in the kernel, when the configuration
/// names no baseline and it was not the node's boot policy: kept (lost at the next boot), or
/// put back because it was more permissive (it could have been a lease's).
fn found_at_start_finding(daemon: &DaemonStatus) -> Option<Finding> {
    use crate::protocol::FoundAction;
    let boot = daemon.found?;
    let kept = daemon.baseline.name == crate::daemon::engine::FOUND;
    let advice = "to keep a policy across boots, set it in /etc/sysctl.d/ or name a profile as `baseline` in overcommitd.toml (then `systemctl reload overcommitd`)";
    match daemon.found_at_start.as_ref().map(|f| (f.action, f.kernel)) {
        Some((FoundAction::Replaced, found)) => Some(Finding {
            severity: Severity::Warning,
            code: "boot_policy_restored",
            message: format!(
                "at its first start in this boot overcommitd found {found}, more permissive than the node's boot policy {boot}, and put the boot policy back (with no journal it cannot tell a run-time sysctl from a lease left behind)"
            ),
            advice: advice.into(),
            command: None,
        }),
        _ if kept => Some(Finding {
            severity: Severity::Warning,
            code: "baseline_found",
            message: format!(
                "overcommitd keeps {} as its baseline: the kernel held it when overcommitd first started in this boot, set at run time; the node's boot policy is {boot}, which the next boot brings back",
                daemon.baseline.policy
            ),
            advice: advice.into(),
            command: None,
        }),
        _ => None,
    }
}
