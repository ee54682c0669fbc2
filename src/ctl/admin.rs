//! Admin commands: `set`, `apply` (and `apply --check`), `verify`, `profiles`. Changes go
//! through the daemon when it runs; without it, root may change the kernel directly.

use serde::Serialize;

use crate::client::{self, ClientError};
use crate::config::{Config, DaemonSettings, Profile};
use crate::model::{write_plan, Knob, Limit, Node, Policy, Tunables};
use crate::output::{paint, Section, BAD, DIM, GOOD, HEADING, WARN};
use crate::protocol::{
    BaselineChanged, DaemonStatus, KernelPolicy, PolicyRequest, ProfileList, Request,
};
use crate::size::HumanBytes;

use super::{print_json, print_text, CtlError, Globals};

fn load_config(globals: &Globals) -> Result<Config, CtlError> {
    Ok(Config::load(&globals.config)?)
}

fn find_profile<'a>(config: &'a Config, name: &str) -> Result<&'a Profile, CtlError> {
    config.profile(name).ok_or_else(|| CtlError::NoProfile {
        name: name.to_string(),
        known: config
            .profiles
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// `set MODE [--ratio P | --kbytes K] [--force]`.
pub fn set(globals: &Globals, policy: PolicyRequest, force: bool) -> Result<u8, CtlError> {
    let request = Request::Set {
        policy: policy.clone(),
        force,
    };
    change_baseline(globals, &request, force, |kernel| {
        let limit =
            Limit::from_options(policy.ratio, policy.kbytes)?.unwrap_or(kernel.limit_clamped());
        Ok((
            Policy {
                mode: policy.mode,
                limit,
            },
            None,
        ))
    })
}

/// `apply PROFILE [--force]`.
pub fn apply(globals: &Globals, name: &str, force: bool) -> Result<u8, CtlError> {
    let request = Request::Apply {
        profile: name.to_string(),
        force,
    };
    change_baseline(globals, &request, force, |kernel| {
        let config = load_config(globals)?;
        let profile = find_profile(&config, name)?;
        Ok((profile.policy(kernel.limit_clamped()), profile.swappiness))
    })
}

/// Asks the daemon to change the baseline; without a daemon, root writes the policy that
/// `direct` gives (policy and swappiness, from the kernel's current values) itself.
fn change_baseline(
    globals: &Globals,
    request: &Request,
    force: bool,
    direct: impl FnOnce(&Tunables) -> Result<(Policy, Option<u64>), CtlError>,
) -> Result<u8, CtlError> {
    match client::call::<BaselineChanged>(&globals.socket, request) {
        Ok(changed) => report_change(globals, &changed),
        Err(ClientError::Unreachable { .. }) if nix::unistd::geteuid().is_root() => {
            let kernel = globals.proc_root().read_tunables()?;
            let (policy, swappiness) = direct(&kernel)?;
            write_directly(globals, &policy, swappiness, force)
        }
        Err(e) => Err(e.into()),
    }
}

fn report_change(globals: &Globals, changed: &BaselineChanged) -> Result<u8, CtlError> {
    if globals.json {
        print_json(changed)?;
    } else {
        let mut text = format!(
            "baseline is now {} ({}): {}\n",
            paint(HEADING, &changed.baseline.name),
            changed.baseline.source,
            changed.baseline.policy
        );
        text.push_str(&format!(
            "  kernel before  {}\n  kernel after   {}\n",
            changed.before, changed.after
        ));
        if changed.effective != changed.baseline.policy {
            text.push_str(&format!(
                "  {}\n",
                paint(
                    DIM,
                    format!("leases keep {} in force until they end", changed.effective)
                )
            ));
        }
        print_text(&text)?;
    }
    Ok(0)
}

/// Without a daemon: the same lockout guard and write path, with a warning.
fn write_directly(
    globals: &Globals,
    policy: &Policy,
    swappiness: Option<u64>,
    force: bool,
) -> Result<u8, CtlError> {
    eprintln!(
        "overcommitctl: warning: overcommitd is not reachable at {}; writing the kernel directly (nothing will restore it)",
        globals.socket.display()
    );
    let proc_root = globals.proc_root();
    let node = proc_root.node()?;
    let margin = load_config(globals).map_or(DaemonSettings::default().lockout_margin, |c| {
        c.daemon.lockout_margin
    });
    if let Some(risk) = node.lockout_risk(policy, margin) {
        if !force {
            return Err(risk.into());
        }
        eprintln!("overcommitctl: warning: lockout guard overridden with --force");
    }
    let (before, after) = proc_root.write_policy(policy)?;
    if let Some(value) = swappiness {
        proc_root.write_knob(Knob::Swappiness, value)?;
    }
    let changed = DirectChange {
        policy: *policy,
        before: KernelPolicy::from(&before),
        after: KernelPolicy::from(&after),
    };
    if globals.json {
        print_json(&changed)?;
    } else {
        print_text(&format!(
            "  kernel before  {}\n  kernel after   {}\n",
            changed.before, changed.after
        ))?;
    }
    Ok(0)
}

#[derive(Serialize)]
struct DirectChange {
    policy: Policy,
    before: KernelPolicy,
    after: KernelPolicy,
}

/// One comparison of `verify` or one change of `apply --check`.
#[derive(Debug, Serialize)]
pub struct Check {
    pub item: String,
    pub expected: String,
    pub actual: String,
    pub ok: bool,
}

/// Compares the kernel with what a profile (or the daemon) expects.
fn compare(
    node: &Node,
    policy: Option<&Policy>,
    swappiness: Option<u64>,
    min_swap: Option<u64>,
    mode_only: Option<crate::model::Mode>,
) -> Vec<Check> {
    let t = &node.tunables;
    let mut checks = Vec::new();
    let mut check = |item: &str, expected: String, actual: String| {
        let ok = expected == actual;
        checks.push(Check {
            item: item.into(),
            expected,
            actual,
            ok,
        });
    };
    let mode = policy.map(|p| p.mode).or(mode_only);
    if let Some(mode) = mode {
        check(
            "vm.overcommit_memory",
            format!("{} ({})", mode, mode.number()),
            format!("{} ({})", t.overcommit_memory, t.overcommit_memory.number()),
        );
    }
    if let Some(policy) = policy {
        let expected = t.with_policy(policy);
        check(
            "vm.overcommit_ratio",
            expected.overcommit_ratio.to_string(),
            t.overcommit_ratio.to_string(),
        );
        check(
            "vm.overcommit_kbytes",
            expected.overcommit_kbytes.to_string(),
            t.overcommit_kbytes.to_string(),
        );
    }
    if let Some(value) = swappiness {
        check("vm.swappiness", value.to_string(), t.swappiness.to_string());
    }
    if let Some(min) = min_swap {
        let ok = node.memory.swap_total >= min;
        checks.push(Check {
            item: "SwapTotal".into(),
            expected: format!(">= {}", HumanBytes(min)),
            actual: HumanBytes(node.memory.swap_total).to_string(),
            ok,
        });
    }
    checks
}

#[derive(Debug, Serialize)]
struct VerifyReport {
    /// What the kernel was compared with.
    against: String,
    in_line: bool,
    checks: Vec<Check>,
}

/// `verify [PROFILE]`: exit 0 in line, 1 drift.
pub fn verify(globals: &Globals, profile: Option<&str>) -> Result<u8, CtlError> {
    // The daemon is asked first: it looks for drift (and may enforce) before it answers.
    let daemon = match profile {
        Some(_) => None,
        None => match client::call::<DaemonStatus>(&globals.socket, &Request::Status) {
            Ok(status) => Some(status),
            Err(ClientError::Unreachable { .. }) => None,
            Err(e) => return Err(e.into()),
        },
    };
    let node = globals.proc_root().node()?;
    let (against, checks) = match profile {
        Some(name) => {
            let config = load_config(globals)?;
            let profile = find_profile(&config, name)?;
            let policy = profile.limit.map(|limit| Policy {
                mode: profile.mode,
                limit,
            });
            (
                format!("profile {name}"),
                compare(
                    &node,
                    policy.as_ref(),
                    profile.swappiness,
                    profile.min_swap,
                    Some(profile.mode),
                ),
            )
        }
        None => match daemon {
            Some(status) => (
                format!(
                    "overcommitd's effective policy (baseline {} and {} lease(s))",
                    status.baseline.name, status.leases
                ),
                compare(
                    &node,
                    Some(&status.effective),
                    status.baseline.swappiness,
                    None,
                    None,
                ),
            ),
            None => {
                let config = load_config(globals)?;
                let profile = config.baseline_profile().ok_or(CtlError::NothingToVerify)?;
                let policy = profile.limit.map(|limit| Policy {
                    mode: profile.mode,
                    limit,
                });
                (
                    format!(
                        "the configured baseline {} (overcommitd is not running)",
                        profile.name
                    ),
                    compare(
                        &node,
                        policy.as_ref(),
                        profile.swappiness,
                        profile.min_swap,
                        Some(profile.mode),
                    ),
                )
            }
        },
    };
    let report = VerifyReport {
        in_line: checks.iter().all(|c| c.ok),
        against,
        checks,
    };
    if globals.json {
        print_json(&report)?;
    } else {
        let verdict = if report.in_line {
            paint(GOOD, "in line")
        } else {
            paint(BAD, "DRIFT")
        };
        let mut text = format!("verify against {}: {verdict}\n", report.against);
        let mut section = Section::new("");
        for c in &report.checks {
            let mark = if c.ok {
                paint(GOOD, "ok")
            } else {
                paint(BAD, "differs")
            };
            section.row(
                &c.item,
                format!("expected {}", c.expected),
                format!("kernel {}  {mark}", c.actual),
            );
        }
        text.push_str(&section.to_string());
        print_text(&text)?;
    }
    Ok(if report.in_line { 0 } else { 1 })
}

#[derive(Debug, Serialize)]
struct ApplyCheck {
    profile: String,
    would_change: bool,
    changes: Vec<Change>,
}

#[derive(Debug, Serialize)]
struct Change {
    key: String,
    from: i64,
    to: u64,
}

/// `apply PROFILE --check`: what applying would write; exit 0 nothing, 1 changes.
pub fn apply_check(globals: &Globals, name: &str) -> Result<u8, CtlError> {
    let config = load_config(globals)?;
    let profile = find_profile(&config, name)?;
    let kernel = globals.proc_root().read_tunables()?;
    let policy = profile.policy(kernel.limit_clamped());
    let current = |knob: Knob| match knob {
        Knob::OvercommitMemory => i64::from(kernel.overcommit_memory.number()),
        Knob::OvercommitRatio => kernel.overcommit_ratio,
        Knob::OvercommitKbytes => kernel.overcommit_kbytes as i64,
        Knob::Swappiness => kernel.swappiness as i64,
        _ => 0,
    };
    let mut changes: Vec<Change> = write_plan(&kernel, &policy)
        .into_iter()
        .map(|(knob, to)| Change {
            key: knob.sysctl_key(),
            from: current(knob),
            to,
        })
        .collect();
    if let Some(swappiness) = profile.swappiness.filter(|&s| s != kernel.swappiness) {
        changes.push(Change {
            key: Knob::Swappiness.sysctl_key(),
            from: kernel.swappiness as i64,
            to: swappiness,
        });
    }
    let report = ApplyCheck {
        profile: name.to_string(),
        would_change: !changes.is_empty(),
        changes,
    };
    if globals.json {
        print_json(&report)?;
    } else if report.changes.is_empty() {
        print_text(&format!(
            "apply {name}: {}\n",
            paint(GOOD, "nothing to change")
        ))?;
    } else {
        let mut text = format!(
            "apply {name} {} (in this order):\n",
            paint(WARN, "would write")
        );
        for change in &report.changes {
            text.push_str(&format!(
                "  {}  {} -> {}\n",
                change.key, change.from, change.to
            ));
        }
        print_text(&text)?;
    }
    Ok(if report.would_change { 1 } else { 0 })
}

/// `profiles`: the configured profiles (as the daemon has them when it runs).
pub fn profiles(globals: &Globals) -> Result<u8, CtlError> {
    let list = match client::call::<ProfileList>(&globals.socket, &Request::Profiles) {
        Ok(list) => list,
        Err(ClientError::Unreachable { .. }) => {
            let config = load_config(globals)?;
            ProfileList {
                baseline: config.daemon.baseline.clone(),
                profiles: config.profiles.into_values().collect(),
            }
        }
        Err(e) => return Err(e.into()),
    };
    if globals.json {
        print_json(&list)?;
        return Ok(0);
    }
    let mut section = Section::new("Profiles");
    for p in &list.profiles {
        let name = if list.baseline.as_deref() == Some(p.name.as_str()) {
            format!("{} {}", p.name, paint(GOOD, "(baseline)"))
        } else {
            p.name.clone()
        };
        let mut policy = format!("{} ({})", p.mode, p.mode.number());
        if let Some(limit) = p.limit {
            policy.push_str(&format!(", {limit}"));
        }
        if let Some(s) = p.swappiness {
            policy.push_str(&format!(", swappiness {s}"));
        }
        if let Some(m) = p.min_swap {
            policy.push_str(&format!(", min_swap {}", HumanBytes(m)));
        }
        section.row(name, policy, p.description.clone().unwrap_or_default());
    }
    print_text(&section.to_string())?;
    Ok(0)
}
