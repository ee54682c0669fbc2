//! `status --format prometheus`: the node's policy and commit accounting, and overcommitd's
//! state when it answers, in the Prometheus text format for node-exporter's textfile
//! collector. Base units: bytes, ratios from 0 to 1, Unix seconds. Daemon series appear only
//! when the daemon answered; `overcommit_daemon_up` is always there, so that an alert can tell
//! a silent daemon from a node that has none.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::findings::Severity;
use crate::model::{Limit, Policy};
use crate::protocol::{escape, LeaseInfo, LeaseList};

use super::status::StatusReport;

/// Leases exported one by one at most; the rest are only counted (label cardinality).
pub const MAX_LEASE_SERIES: usize = 64;

/// A metric family being written: HELP and TYPE once, then its samples.
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP overcommit_{name} {help}");
        let _ = writeln!(self.text, "# TYPE overcommit_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: impl std::fmt::Display) {
        let _ = write!(self.text, "overcommit_{name}");
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label_value(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A family with one unlabelled sample.
    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

/// A label value in the text format: backslash, double quote and newline escaped; other
/// control and format characters (a hostile tag) shown escaped.
fn label_value(text: &str) -> String {
    escape(text)
}

/// A ratio 0..1 (Prometheus' base unit for percentages).
fn ratio(percent: i64) -> f64 {
    percent as f64 / 100.0
}

/// The labels of a policy: its mode, and ratio (0..1) or kbytes limit in bytes.
fn policy_labels(policy: &Policy) -> Vec<(&'static str, String)> {
    let (ratio_value, limit_bytes) = match policy.limit {
        Limit::Ratio(r) => (ratio(i64::from(r)).to_string(), "0".to_string()),
        Limit::Kbytes(k) => ("0".to_string(), k.saturating_mul(1024).to_string()),
    };
    vec![
        ("mode", policy.mode.name().to_string()),
        ("ratio", ratio_value),
        ("limit_bytes", limit_bytes),
    ]
}

/// The Slurm job a lease is for, from its tag (`slurm-<id>`, as contrib/slurm's prolog
/// tags it).
fn slurm_job_of(lease: &LeaseInfo) -> Option<u64> {
    lease.tag.as_deref()?.strip_prefix("slurm-")?.parse().ok()
}

/// Processes on this node that belong to each Slurm job: its slurmstepd processes (whose
/// title is `slurmstepd: [JOB.STEP]`, whatever the proctrack plugin) and the processes in a
/// `job_JOB` cgroup. Read from `proc` (the real /proc: processes are never faked).
pub fn slurm_job_processes(proc: &Path, jobs: &[u64]) -> BTreeMap<u64, u64> {
    let mut counts: BTreeMap<u64, u64> = jobs.iter().map(|&j| (j, 0)).collect();
    if jobs.is_empty() {
        return counts;
    }
    let Ok(entries) = std::fs::read_dir(proc) else {
        return counts;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = entry.path();
        let stepd = std::fs::read(dir.join("cmdline")).ok().and_then(|cmdline| {
            let title = String::from_utf8_lossy(&cmdline);
            let rest = title.strip_prefix("slurmstepd: [")?;
            rest.split(['.', ']']).next()?.parse::<u64>().ok()
        });
        let job = stepd.or_else(|| {
            let cgroup = std::fs::read_to_string(dir.join("cgroup")).ok()?;
            crate::charge::slurm_job(crate::charge::cgroup_path(&cgroup))
        });
        if let Some(count) = job.and_then(|j| counts.get_mut(&j)) {
            *count += 1;
        }
    }
    counts
}

impl StatusReport {
    /// The report in the Prometheus text format. `leases` is the daemon's lease list (when it
    /// answered); `job_processes` gives the processes of each Slurm job a lease is for.
    pub fn prometheus(
        &self,
        leases: Option<&LeaseList>,
        job_processes: impl FnOnce(&[u64]) -> BTreeMap<u64, u64>,
    ) -> String {
        let mut out = Exposition {
            text: String::new(),
        };
        out.gauge(
            "mode",
            "vm.overcommit_memory (0 heuristic, 1 always, 2 never).",
            self.mode_number,
        );
        out.gauge(
            "ratio",
            "vm.overcommit_ratio as a ratio (0.5 for 50%); sets CommitLimit unless kbytes does.",
            ratio(self.overcommit_ratio),
        );
        out.gauge(
            "limit_bytes",
            "vm.overcommit_kbytes in bytes (0: the ratio sets CommitLimit).",
            u128::from(self.overcommit_kbytes) * 1024,
        );
        for (name, help, value) in [
            (
                "commit_limit_bytes",
                "CommitLimit as the kernel reports it (enforced in mode 2 only).",
                i128::from(self.commit_limit_bytes),
            ),
            (
                "committed_as_bytes",
                "Committed_AS: the commit charge of the node.",
                i128::from(self.committed_as_bytes),
            ),
            (
                "headroom_bytes",
                "CommitLimit minus Committed_AS (enforced in mode 2 only; negative when over).",
                i128::from(self.headroom_bytes),
            ),
            (
                "mem_total_bytes",
                "MemTotal.",
                i128::from(self.mem_total_bytes),
            ),
            (
                "swap_total_bytes",
                "SwapTotal.",
                i128::from(self.swap_total_bytes),
            ),
            (
                "hugetlb_bytes",
                "Memory held by hugetlb pools.",
                i128::from(self.hugetlb_bytes),
            ),
        ] {
            out.gauge(name, help, value);
        }
        out.family(
            "largest_allocation_bytes",
            "gauge",
            "Largest single allocation that would succeed now (absent: only the address space limits it).",
        );
        for (privilege, bytes) in [
            ("root", self.largest_allocation.root_bytes),
            ("user", self.largest_allocation.user_bytes),
        ] {
            if let Some(bytes) = bytes {
                out.sample(
                    "largest_allocation_bytes",
                    &[("privilege", privilege.into())],
                    bytes,
                );
            }
        }
        out.family(
            "findings",
            "gauge",
            "Findings of `overcommitctl status` by severity.",
        );
        for (severity, name) in [
            (Severity::Critical, "critical"),
            (Severity::Warning, "warning"),
            (Severity::Info, "info"),
        ] {
            let count = self
                .findings
                .iter()
                .filter(|f| f.severity == severity)
                .count();
            out.sample("findings", &[("severity", name.into())], count);
        }
        self.daemon_series(&mut out, leases, job_processes);
        out.text
    }

    fn daemon_series(
        &self,
        out: &mut Exposition,
        leases: Option<&LeaseList>,
        job_processes: impl FnOnce(&[u64]) -> BTreeMap<u64, u64>,
    ) {
        out.gauge(
            "daemon_up",
            "1 when overcommitd answered on its socket.",
            u8::from(self.daemon.is_some()),
        );
        out.gauge(
            "daemon_expected",
            "1 when overcommitd is expected on this node (its configuration exists, or a unit of it is enabled or installed).",
            u8::from(self.daemon_expected),
        );
        let Some(daemon) = &self.daemon else {
            return;
        };
        out.family(
            "daemon_info",
            "gauge",
            "overcommitd's version and drift action.",
        );
        out.sample(
            "daemon_info",
            &[
                ("version", daemon.version.clone()),
                ("drift", daemon.drift.clone()),
            ],
            1,
        );
        out.family(
            "baseline_info",
            "gauge",
            "The baseline: the policy in force when no lease is live (source: config, admin or boot).",
        );
        let mut labels = vec![
            ("name", daemon.baseline.name.clone()),
            ("source", daemon.baseline.source.clone()),
        ];
        labels.extend(policy_labels(&daemon.baseline.policy));
        out.sample("baseline_info", &labels, 1);
        out.family(
            "effective_info",
            "gauge",
            "The effective policy: the most permissive of the baseline and the live leases.",
        );
        out.sample("effective_info", &policy_labels(&daemon.effective), 1);
        let kernel = crate::protocol::KernelPolicy {
            mode: daemon.kernel_mode,
            ratio: daemon.kernel_ratio,
            kbytes: daemon.kernel_kbytes,
        };
        let in_force = crate::model::Tunables {
            overcommit_memory: kernel.mode,
            overcommit_ratio: kernel.ratio,
            overcommit_kbytes: kernel.kbytes,
            admin_reserve_kbytes: 0,
            user_reserve_kbytes: 0,
            max_map_count: 0,
            swappiness: 0,
            nr_hugepages: 0,
        };
        let in_line = in_force.with_policy(&daemon.in_force) == in_force;
        out.gauge(
            "in_line",
            "1 when the kernel holds what overcommitd keeps in force.",
            u8::from(in_line),
        );
        out.family(
            "drift_events_total",
            "counter",
            "Changes found behind overcommitd's back since it started (sysctl -w).",
        );
        out.sample("drift_events_total", &[], daemon.drift_events);
        if let Some(drift) = &daemon.last_drift {
            out.gauge(
                "last_drift_timestamp_seconds",
                "When overcommitd last found drift (Unix seconds).",
                drift.at,
            );
        }
        out.gauge(
            "pending_write",
            "1 while a kernel write failed and is being retried.",
            u8::from(daemon.pending_write.is_some()),
        );
        out.gauge(
            "pending_write_attempts",
            "Failed attempts of the write being retried (0: none pending).",
            daemon.pending_write.as_ref().map_or(0, |p| p.attempts),
        );
        out.gauge(
            "guard_held",
            "1 while the lockout guard holds a safer policy than the effective one.",
            u8::from(daemon.held.is_some()),
        );
        out.gauge("leases", "Live leases (node-wide).", daemon.leases);
        let Some(list) = leases else {
            return;
        };
        let shown = &list.leases[..list.leases.len().min(MAX_LEASE_SERIES)];
        out.family(
            "lease_expiry_timestamp_seconds",
            "gauge",
            "When each live lease ends at the latest (Unix seconds).",
        );
        let lease_labels = |l: &LeaseInfo| {
            vec![
                ("id", l.id.chars().take(8).collect::<String>()),
                ("owner", l.owner.clone()),
                ("tag", l.tag.clone().unwrap_or_default()),
                ("mode", l.policy.mode.name().to_string()),
            ]
        };
        for lease in shown {
            out.sample(
                "lease_expiry_timestamp_seconds",
                &lease_labels(lease),
                lease.expires_at,
            );
        }
        let jobs: Vec<u64> = shown.iter().filter_map(slurm_job_of).collect();
        if jobs.is_empty() {
            return;
        }
        let counts = job_processes(&jobs);
        out.family(
            "lease_job_processes",
            "gauge",
            "For a lease tagged slurm-JOB: the job's processes on this node (its slurmstepd and the processes in its cgroup). 0 while the lease lives: it outlives its job.",
        );
        for lease in shown {
            if let Some(job) = slurm_job_of(lease) {
                let mut labels = lease_labels(lease);
                labels.push(("job", job.to_string()));
                out.sample(
                    "lease_job_processes",
                    &labels,
                    counts.get(&job).copied().unwrap_or(0),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_jobs_are_found_by_stepd_title_or_cgroup() {
        let proc = tempfile::tempdir().unwrap();
        let process = |pid: u32, cmdline: &[u8], cgroup: &str| {
            let dir = proc.path().join(pid.to_string());
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("cmdline"), cmdline).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        };
        process(10, b"slurmstepd: [42.batch]\0", "0::/\n");
        process(11, b"slurmstepd: [42.extern]\0", "0::/\n");
        process(
            12,
            b"python3\0job.py\0",
            "0::/system.slice/slurmstepd.scope/job_42/step_0\n",
        );
        process(13, b"slurmstepd: [7.0]\0", "0::/\n");
        process(14, b"sleep\0", "0::/user.slice\n");
        std::fs::create_dir(proc.path().join("self")).unwrap();
        let counts = slurm_job_processes(proc.path(), &[42, 7, 99]);
        assert_eq!(counts.get(&42), Some(&3));
        assert_eq!(counts.get(&7), Some(&1));
        assert_eq!(counts.get(&99), Some(&0), "a job with no process here");
    }

    #[test]
    fn label_values_cannot_break_the_line() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert!(!label_value("x\u{202E}y").contains('\u{202E}'));
    }
}
