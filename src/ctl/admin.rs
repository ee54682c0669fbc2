//! Admin commands: `set`, `apply` (and `apply --check`), `verify`, `profiles`.
//!
//! overcommitd is the one source of truth when it runs: changes go through it, and
//! `apply --check`, `verify` and `profiles` read the profiles it has loaded (saying when the
//! file on disk differs: reload to apply). Without it, root may write the kernel directly, but
//! only when overcommitd is not expected on this node, or with `--direct`.

use serde::Serialize;

use crate::client::{self, Client, ClientError};
use crate::config::{Config, DaemonSettings, Profile};
use crate::lease::effective_policy;
use crate::model::{write_plan, Knob, Limit, Mode, Node, Policy, Tunables};
use crate::output::{paint, Section, BAD, DIM, GOOD, HEADING, WARN};
use crate::protocol::{
    BaselineChanged, BaselineInfo, DaemonStatus, ErrorCode, KernelPolicy, LeaseList, PolicyRequest,
    ProfileList, Request,
};
use crate::size::HumanBytes;

use super::overcommitd::{self, daemon_expected};
use super::{print_json, print_text, CtlError, Globals};

fn load_config(globals: &Globals) -> Result<Config, CtlError> {
    Ok(Config::load(&globals.config)?)
}

/// `set MODE [--ratio P | --kbytes K] [--force] [--direct]`.
pub fn set(
    globals: &Globals,
    policy: PolicyRequest,
    force: bool,
    direct: bool,
) -> Result<u8, CtlError> {
    let request = Request::Set {
        policy: policy.clone(),
        force,
    };
    change_baseline(globals, &request, force, direct, |kernel| {
        let keep = kernel.limit_clamped();
        let policy = Policy::from_options(policy.mode, policy.ratio, policy.kbytes, keep)?;
        Ok((policy, None))
    })
}

/// `apply PROFILE [--force] [--direct]`.
pub fn apply(globals: &Globals, name: &str, force: bool, direct: bool) -> Result<u8, CtlError> {
    let request = Request::Apply {
        profile: name.to_string(),
        force,
    };
    let result = change_baseline(globals, &request, force, direct, |kernel| {
        let profiles: Vec<Profile> = load_config(globals)?.profiles.into_values().collect();
        let profile = find_profile(&profiles, name)?;
        Ok((profile.policy(kernel.limit_clamped()), profile.swappiness))
    });
    match result {
        // An unknown profile is bad input (exit 2), with or without the daemon.
        Err(CtlError::Client(
            e @ ClientError::Daemon {
                code: ErrorCode::NotFound,
                ..
            },
        )) => {
            loaded_profiles(globals, Ask::Profiles)?.find(name)?;
            Err(e.into())
        }
        other => other,
    }
}

/// Asks the daemon to change the baseline. When it does not answer, root writes the policy
/// that `direct` gives (from the kernel's current values) itself, unless overcommitd is
/// expected on this node and `--direct` was not given.
fn change_baseline(
    globals: &Globals,
    request: &Request,
    force: bool,
    direct: bool,
    policy_for: impl FnOnce(&Tunables) -> Result<(Policy, Option<u64>), CtlError>,
) -> Result<u8, CtlError> {
    match client::call::<BaselineChanged>(&globals.socket, request) {
        Ok(changed) => report_change(globals, &changed),
        Err(source @ ClientError::Unreachable { .. }) => {
            let expected = daemon_expected(&globals.config, &globals.sysctl_root);
            if !expected.is_empty() && !direct {
                return Err(CtlError::DaemonExpected { expected, source });
            }
            if !nix::unistd::geteuid().is_root() {
                return Err(source.into());
            }
            let kernel = globals.proc_root().read_tunables()?;
            let (policy, swappiness) = policy_for(&kernel)?;
            write_directly(globals, &policy, swappiness, force, &expected)
        }
        Err(e) => Err(e.into()),
    }
}

/// How a baseline change was made.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Via {
    Daemon,
    Direct,
}

/// `set --json` and `apply --json`.
#[derive(Debug, Serialize)]
struct ChangeReport<'a> {
    via: Via,
    /// The daemon's new baseline; `None` when the kernel was written directly.
    baseline: Option<&'a BaselineInfo>,
    /// The policy the kernel holds now (with the daemon: the baseline or a lease's).
    effective: Policy,
    before: KernelPolicy,
    after: KernelPolicy,
}

fn report_change(globals: &Globals, changed: &BaselineChanged) -> Result<u8, CtlError> {
    if globals.json {
        print_json(&ChangeReport {
            via: Via::Daemon,
            baseline: Some(&changed.baseline),
            effective: changed.effective,
            before: changed.before,
            after: changed.after,
        })?;
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

/// Without a daemon: the same lockout guard and write path; one line on stderr says it was
/// written directly, once the write is done (not when the guard refuses).
fn write_directly(
    globals: &Globals,
    policy: &Policy,
    swappiness: Option<u64>,
    force: bool,
    expected: &[overcommitd::Expectation],
) -> Result<u8, CtlError> {
    let proc_root = globals.proc_root();
    let margin = load_config(globals).map_or(DaemonSettings::default().lockout_margin, |c| {
        c.daemon.lockout_margin
    });
    let overridden = match proc_root.node()?.lockout_risk(policy, margin) {
        Some(_) if force => "; the lockout guard was overridden with --force",
        _ => "",
    };
    let (before, after) = crate::change::guarded_write(
        &proc_root, policy, swappiness, margin, force,
    )
    .map_err(|e| match e {
        crate::change::ChangeError::Unsafe(risk) => CtlError::from(risk),
        crate::change::ChangeError::Kernel(e) => CtlError::from(e),
    })?;
    let behind = if expected.is_empty() {
        "nothing will restore it".to_string()
    } else {
        format!(
            "--direct: overcommitd ({}) will see this as drift",
            overcommitd::describe(expected)
        )
    };
    eprintln!(
        "overcommitctl: overcommitd does not answer at {}: wrote the kernel directly ({behind}{overridden})",
        globals.socket.display()
    );
    let (before, after) = (KernelPolicy::from(&before), KernelPolicy::from(&after));
    if globals.json {
        print_json(&ChangeReport {
            via: Via::Direct,
            baseline: None,
            effective: *policy,
            before,
            after,
        })?;
    } else {
        print_text(&format!(
            "  kernel before  {before}\n  kernel after   {after}\n"
        ))?;
    }
    Ok(0)
}

/// Where the profiles came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Source {
    /// The profiles overcommitd has loaded.
    Daemon,
    /// The configuration file (overcommitd does not answer).
    ConfigFile,
}

/// How the configuration on disk compares with what overcommitd has loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum DiskState {
    /// The profiles on disk are those loaded.
    Same,
    /// They differ: `systemctl reload overcommitd` to apply them.
    Differs,
    /// The file does not load; overcommitd keeps what it has.
    Unreadable,
    /// The file itself was read: there is nothing to compare.
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Difference {
    Added,
    Removed,
    Changed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct DiskChange {
    profile: String,
    change: Difference,
}

/// The profiles as overcommitd has them (when it answers) or as the file says, and how the
/// file on disk compares.
struct Loaded {
    source: Source,
    /// The baseline's name: the daemon's current one, or the configured one.
    baseline: Option<String>,
    profiles: Vec<Profile>,
    disk: DiskState,
    changed_on_disk: Vec<DiskChange>,
    disk_error: Option<String>,
    daemon: Option<DaemonView>,
    /// Why overcommitd did not answer, when it did not.
    unreachable: Option<ClientError>,
}

/// What overcommitd says about itself when it answers (what the command asked for).
#[derive(Default)]
struct DaemonView {
    status: Option<DaemonStatus>,
    leases: Option<LeaseList>,
}

/// What a command asks overcommitd besides its profiles.
#[derive(Clone, Copy)]
enum Ask {
    /// Only the profiles: `status` would make the daemon look for drift and enforce it first,
    /// which `verify PROFILE` must see, not hide.
    Profiles,
    /// The profiles and the live leases (still no status: `verify PROFILE`).
    ProfilesAndLeases,
    /// Its status (drift is handled before it answers) and the live leases (what `apply` would leave in force).
    StatusAndLeases,
}

/// Asks overcommitd on one connection; `Err` with the failure when it does not answer.
fn ask_daemon(
    globals: &Globals,
    ask: Ask,
) -> Result<Result<(DaemonView, ProfileList), ClientError>, CtlError> {
    let mut client = match Client::connect(&globals.socket) {
        Ok(client) => client,
        Err(e @ ClientError::Unreachable { .. }) => return Ok(Err(e)),
        Err(e) => return Err(e.into()),
    };
    let mut view = DaemonView::default();
    if matches!(ask, Ask::StatusAndLeases) {
        view.status = Some(client.call(&Request::Status)?);
    }
    let profiles: ProfileList = client.call(&Request::Profiles)?;
    if matches!(ask, Ask::StatusAndLeases | Ask::ProfilesAndLeases) {
        view.leases = Some(client.call(&Request::Leases)?);
    }
    Ok(Ok((view, profiles)))
}

fn loaded_profiles(globals: &Globals, ask: Ask) -> Result<Loaded, CtlError> {
    let (view, list) = match ask_daemon(globals, ask)? {
        Ok(answer) => answer,
        Err(unreachable) => {
            let config = load_config(globals)?;
            return Ok(Loaded {
                source: Source::ConfigFile,
                baseline: config.daemon.baseline.clone(),
                profiles: config.profiles.into_values().collect(),
                disk: DiskState::Read,
                changed_on_disk: Vec::new(),
                disk_error: None,
                daemon: None,
                unreachable: Some(unreachable),
            });
        }
    };
    let on_disk = Config::load(&globals.config);
    // The wire carries no server paths: a profile's file is the one on disk of that name.
    let loaded: Vec<Profile> = list
        .profiles
        .into_iter()
        .map(|info| {
            let file = on_disk.as_ref().ok().and_then(|c| c.profile(&info.name));
            Profile::from_info(info, file.map(|p| p.file.clone()).unwrap_or_default())
        })
        .collect();
    let (disk, changed_on_disk, disk_error) = match on_disk {
        Ok(config) => {
            let changes = compare_profiles(&loaded, &config);
            let state = if changes.is_empty() {
                DiskState::Same
            } else {
                DiskState::Differs
            };
            (state, changes, None)
        }
        Err(e) => (DiskState::Unreadable, Vec::new(), Some(e.to_string())),
    };
    Ok(Loaded {
        source: Source::Daemon,
        baseline: list.baseline,
        profiles: loaded,
        disk,
        changed_on_disk,
        disk_error,
        daemon: Some(view),
        unreachable: None,
    })
}

/// What differs between the loaded profiles and those of `disk` (what a reload would change).
fn compare_profiles(loaded: &[Profile], disk: &Config) -> Vec<DiskChange> {
    let same = |a: &Profile, b: &Profile| {
        (a.mode, a.limit, a.swappiness, a.min_swap, &a.description)
            == (b.mode, b.limit, b.swappiness, b.min_swap, &b.description)
    };
    let mut changes = Vec::new();
    for profile in loaded {
        match disk.profile(&profile.name) {
            None => changes.push(DiskChange {
                profile: profile.name.clone(),
                change: Difference::Removed,
            }),
            Some(on_disk) if !same(profile, on_disk) => changes.push(DiskChange {
                profile: profile.name.clone(),
                change: Difference::Changed,
            }),
            Some(_) => {}
        }
    }
    for name in disk.profiles.keys() {
        if !loaded.iter().any(|p| &p.name == name) {
            changes.push(DiskChange {
                profile: name.clone(),
                change: Difference::Added,
            });
        }
    }
    changes
}

impl Loaded {
    fn find(&self, name: &str) -> Result<&Profile, CtlError> {
        find_profile(&self.profiles, name).map_err(|e| match e {
            CtlError::NoProfile { name, known, .. }
                if self
                    .changed_on_disk
                    .iter()
                    .any(|c| c.profile == name && c.change == Difference::Added) =>
            {
                CtlError::NoProfile {
                    name,
                    known,
                    note: ": it is in the file on disk but overcommitd has not loaded it (`systemctl reload overcommitd` to apply)".into(),
                }
            }
            other => other,
        })
    }

    /// One line about the file on disk, when it matters.
    fn disk_note(&self) -> Option<String> {
        match self.disk {
            DiskState::Differs => Some(format!(
                "the configuration on disk differs from what overcommitd has loaded ({}): `systemctl reload overcommitd` to apply",
                self.changed_on_disk
                    .iter()
                    .map(|c| format!(
                        "{} {}",
                        c.profile,
                        match c.change {
                            Difference::Added => "added",
                            Difference::Removed => "removed",
                            Difference::Changed => "changed",
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            DiskState::Unreadable => Some(format!(
                "the configuration on disk does not load ({}); overcommitd keeps what it has loaded",
                self.disk_error.as_deref().unwrap_or("?")
            )),
            DiskState::Same | DiskState::Read => None,
        }
    }

    fn with_note(&self, mut text: String) -> String {
        if let Some(note) = self.disk_note() {
            text.push_str(&format!("{} {note}\n", paint(WARN, "note:")));
        }
        text
    }
}

fn find_profile<'a>(profiles: &'a [Profile], name: &str) -> Result<&'a Profile, CtlError> {
    profiles
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| CtlError::NoProfile {
            name: name.to_string(),
            known: profiles
                .iter()
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
            note: String::new(),
        })
}

/// How a check compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Comparison {
    Equal,
    AtLeast,
}

/// One comparison of `verify`: a sysctl (or SwapTotal) as expected and as the kernel has it.
#[derive(Debug, Serialize)]
struct Check {
    key: &'static str,
    expected: i64,
    actual: i64,
    comparison: Comparison,
    ok: bool,
}

impl Check {
    fn equal(key: &'static str, expected: i64, actual: i64) -> Check {
        Check {
            key,
            expected,
            actual,
            comparison: Comparison::Equal,
            ok: expected == actual,
        }
    }

    /// The values for people: modes by name, sizes in binary units.
    fn show(&self, value: i64) -> String {
        match self.key {
            "vm.overcommit_memory" => {
                Mode::from_number(value).map_or(value.to_string(), |m| format!("{m} ({value})"))
            }
            "swap_total_bytes" => HumanBytes(value.max(0) as u64).to_string(),
            _ => value.to_string(),
        }
    }
}

/// What the kernel should hold.
struct Expected {
    /// `None`: the profile names no ratio/kbytes, so only the mode is compared.
    policy: Option<Policy>,
    mode: Mode,
    swappiness: Option<u64>,
    min_swap: Option<u64>,
}

impl Expected {
    fn of_profile(profile: &Profile) -> Expected {
        Expected {
            policy: profile.limit.map(|limit| Policy {
                mode: profile.mode,
                limit,
            }),
            mode: profile.mode,
            swappiness: profile.swappiness,
            min_swap: profile.min_swap,
        }
    }
}

/// Compares the kernel with what is expected.
fn compare(node: &Node, expected: &Expected) -> Vec<Check> {
    let t = &node.tunables;
    let number = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut checks = vec![Check::equal(
        "vm.overcommit_memory",
        i64::from(expected.mode.number()),
        i64::from(t.overcommit_memory.number()),
    )];
    if let Some(policy) = &expected.policy {
        let want = t.with_policy(policy);
        checks.push(Check::equal(
            "vm.overcommit_ratio",
            want.overcommit_ratio,
            t.overcommit_ratio,
        ));
        checks.push(Check::equal(
            "vm.overcommit_kbytes",
            number(want.overcommit_kbytes),
            number(t.overcommit_kbytes),
        ));
    }
    if let Some(value) = expected.swappiness {
        checks.push(Check::equal(
            "vm.swappiness",
            number(value),
            number(t.swappiness),
        ));
    }
    if let Some(min) = expected.min_swap {
        checks.push(Check {
            key: "swap_total_bytes",
            expected: number(min),
            actual: number(node.memory.swap_total),
            comparison: Comparison::AtLeast,
            ok: node.memory.swap_total >= min,
        });
    }
    checks
}

/// What `verify` compared the kernel with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum AgainstKind {
    /// A profile named on the command line.
    Profile,
    /// overcommitd's effective policy (its baseline and the live leases).
    Daemon,
    /// The baseline named in the configuration file (overcommitd does not answer).
    ConfiguredBaseline,
}

#[derive(Debug, Serialize)]
struct Against {
    kind: AgainstKind,
    /// The profile or baseline name.
    name: String,
    /// Live leases (when the daemon answered).
    leases: Option<usize>,
}

/// `verify PROFILE` while leases are live: is the daemon's baseline that profile?
#[derive(Debug, Serialize)]
struct BaselineCheck {
    expected: String,
    /// The daemon's baseline (a profile, `custom`, `adopted`, `found` or `boot`).
    actual: Option<String>,
    ok: bool,
}

/// A live lease as `verify` lists it: what keeps the kernel off the baseline.
#[derive(Debug, Serialize)]
struct LeaseInForce {
    id: String,
    owner: String,
    owner_uid: u32,
    tag: Option<String>,
    policy: Policy,
    expires_at_unix_secs: u64,
}

/// Drift overcommitd found (and enforced, warned about or adopted) behind its back.
#[derive(Debug, Serialize)]
struct DriftReport {
    /// The daemon's count since it started.
    events: u64,
    /// Events since the last verify that kept the same state file (`None`: no state file).
    since_last_verify: Option<u64>,
    last: Option<crate::protocol::DriftEvent>,
    /// The file that remembers what was reported.
    state_file: Option<String>,
}

#[derive(Debug, Serialize)]
struct VerifyReport {
    against: Against,
    source: Source,
    in_line: bool,
    /// `verify PROFILE --strict`: the kernel itself against the profile, leases or not.
    strict: bool,
    checks: Vec<Check>,
    baseline_check: Option<BaselineCheck>,
    leases_in_force: Vec<LeaseInForce>,
    drift: Option<DriftReport>,
    config_on_disk: DiskState,
    changed_on_disk: Vec<DiskChange>,
}

/// What `verify` remembers between runs: the drift it has reported.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
struct DriftSeen {
    events: u64,
    last_at: u64,
}

/// Where verify keeps what it reported: given, or root's default.
fn drift_state_file(given: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
    match given {
        Some(path) if path.as_os_str() == "none" => None,
        Some(path) => Some(path.to_path_buf()),
        None if nix::unistd::geteuid().is_root() => Some(DEFAULT_DRIFT_STATE.into()),
        None => None,
    }
}

/// Root's record of the drift `verify` has reported (tmpfs: gone at reboot, like the
/// daemon's count).
pub const DEFAULT_DRIFT_STATE: &str = "/run/overcommit/verify-drift";

/// Drift since the record in `file`, which is then brought up to date. A daemon restarted
/// since (its count went down) counts from zero.
fn drift_since(file: &std::path::Path, status: &DaemonStatus) -> u64 {
    let seen: DriftSeen = std::fs::read(file)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let last_at = status.last_drift.as_ref().map_or(0, |d| d.at);
    let new = if status.drift_events >= seen.events {
        status.drift_events - seen.events
    } else if last_at >= seen.last_at {
        // Restarted: its count began again.
        status.drift_events
    } else {
        0
    };
    let now = DriftSeen {
        events: status.drift_events,
        last_at,
    };
    let write = || -> std::io::Result<()> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&now).unwrap_or_default())?;
        std::fs::rename(&tmp, file)
    };
    if let Err(e) = write() {
        eprintln!(
            "overcommitctl: cannot record the drift reported in {}: {e} (the next verify reports it again)",
            file.display()
        );
    }
    new
}

/// `verify [PROFILE] [--strict]`: exit 0 in line, 1 drift, 3 when overcommitd is expected on
/// this node but does not answer.
pub fn verify(
    globals: &Globals,
    profile: Option<&str>,
    strict: bool,
    drift_state: Option<&std::path::Path>,
) -> Result<u8, CtlError> {
    let ask = match profile {
        Some(_) => Ask::ProfilesAndLeases,
        None => Ask::StatusAndLeases,
    };
    let loaded = loaded_profiles(globals, ask)?;
    if let Some(source) = loaded.unreachable {
        let expected = daemon_expected(&globals.config, &globals.sysctl_root);
        if !expected.is_empty() {
            return Err(CtlError::DaemonSilent { expected, source });
        }
        return verify_against_file(
            globals,
            profile,
            &Loaded {
                unreachable: None,
                ..loaded
            },
        );
    }
    let node = globals.proc_root().node()?;
    let view = loaded.daemon.as_ref();
    let live: Vec<&crate::protocol::LeaseInfo> = view
        .and_then(|v| v.leases.as_ref())
        .map(|l| l.leases.iter().collect())
        .unwrap_or_default();
    let leases_in_force = live
        .iter()
        .map(|l| LeaseInForce {
            id: l.id.clone(),
            owner: l.owner.clone(),
            owner_uid: l.owner_uid,
            tag: l.tag.clone(),
            policy: l.policy,
            expires_at_unix_secs: l.expires_at,
        })
        .collect();
    let status = view.and_then(|v| v.status.as_ref());
    let (against, expected, baseline_check, drift) = match (profile, status) {
        (Some(name), _) => {
            let found = loaded.find(name)?;
            let mut expected = Expected::of_profile(found);
            let mut baseline_check = None;
            if !live.is_empty() && !strict {
                // The leases keep the kernel off the profile: judge the baseline, and the
                // kernel against what the profile and the leases make together.
                let base = found.policy(node.tunables.limit_clamped());
                let effective = effective_policy(&node, &base, live.iter().map(|l| &l.policy));
                expected.policy = Some(effective);
                expected.mode = effective.mode;
                baseline_check = Some(BaselineCheck {
                    expected: name.to_string(),
                    actual: loaded.baseline.clone(),
                    ok: loaded.baseline.as_deref() == Some(name),
                });
            }
            let against = Against {
                kind: AgainstKind::Profile,
                name: name.to_string(),
                leases: Some(live.len()),
            };
            (against, expected, baseline_check, None)
        }
        (None, Some(status)) => {
            let state = drift_state_file(drift_state);
            let since = state.as_deref().map(|file| drift_since(file, status));
            let against = Against {
                kind: AgainstKind::Daemon,
                name: status.baseline.name.clone(),
                leases: Some(status.leases),
            };
            let expected = Expected {
                policy: Some(status.in_force),
                mode: status.in_force.mode,
                swappiness: status.baseline.swappiness,
                min_swap: None,
            };
            let drift = DriftReport {
                events: status.drift_events,
                since_last_verify: since,
                last: status.last_drift.clone(),
                state_file: state.map(|p| p.display().to_string()),
            };
            (against, expected, None, Some(drift))
        }
        (None, None) => return Err(CtlError::NothingToVerify),
    };
    let checks = compare(&node, &expected);
    let drifted = drift
        .as_ref()
        .is_some_and(|d| d.since_last_verify.is_some_and(|n| n > 0));
    let report = VerifyReport {
        in_line: checks.iter().all(|c| c.ok)
            && baseline_check.as_ref().is_none_or(|b| b.ok)
            && !drifted,
        against,
        source: loaded.source,
        strict,
        checks,
        baseline_check,
        leases_in_force,
        drift,
        config_on_disk: loaded.disk,
        changed_on_disk: loaded.changed_on_disk.clone(),
    };
    print_verify(globals, &loaded, &report)
}

/// Without a daemon (none expected here): the kernel against a profile, or against the
/// configured baseline, from the configuration file.
fn verify_against_file(
    globals: &Globals,
    profile: Option<&str>,
    loaded: &Loaded,
) -> Result<u8, CtlError> {
    let node = globals.proc_root().node()?;
    let (kind, name) = match profile {
        Some(name) => (AgainstKind::Profile, name.to_string()),
        None => (
            AgainstKind::ConfiguredBaseline,
            loaded.baseline.clone().ok_or(CtlError::NothingToVerify)?,
        ),
    };
    let checks = compare(&node, &Expected::of_profile(loaded.find(&name)?));
    let report = VerifyReport {
        in_line: checks.iter().all(|c| c.ok),
        against: Against {
            kind,
            name,
            leases: None,
        },
        source: loaded.source,
        strict: false,
        checks,
        baseline_check: None,
        leases_in_force: Vec::new(),
        drift: None,
        config_on_disk: loaded.disk,
        changed_on_disk: loaded.changed_on_disk.clone(),
    };
    print_verify(globals, loaded, &report)
}

fn print_verify(globals: &Globals, loaded: &Loaded, report: &VerifyReport) -> Result<u8, CtlError> {
    if globals.json {
        print_json(report)?;
        return Ok(if report.in_line { 0 } else { 1 });
    }
    let verdict = if report.in_line {
        paint(GOOD, "in line")
    } else {
        paint(BAD, "DRIFT")
    };
    let leases = report.against.leases.unwrap_or(0);
    let against = match report.against.kind {
        AgainstKind::Profile if report.strict => {
            format!(
                "profile {} (--strict: the kernel itself)",
                report.against.name
            )
        }
        AgainstKind::Profile if report.baseline_check.is_some() => format!(
            "profile {} as the baseline, with the {leases} live lease(s)",
            report.against.name
        ),
        AgainstKind::Profile => format!("profile {}", report.against.name),
        AgainstKind::Daemon => format!(
            "overcommitd's effective policy (baseline {} and {leases} lease(s))",
            report.against.name
        ),
        AgainstKind::ConfiguredBaseline => format!(
            "the configured baseline {} (overcommitd is not running)",
            report.against.name
        ),
    };
    let mut text = format!("verify against {against}: {verdict}\n");
    let mut section = Section::new("");
    let mark = |ok: bool| {
        if ok {
            paint(GOOD, "ok")
        } else {
            paint(BAD, "differs")
        }
    };
    if let Some(b) = &report.baseline_check {
        section.row(
            "baseline",
            format!("expected {}", b.expected),
            format!(
                "overcommitd {}  {}",
                b.actual.as_deref().unwrap_or("none"),
                mark(b.ok)
            ),
        );
    }
    for c in &report.checks {
        let expected = match c.comparison {
            Comparison::Equal => format!("expected {}", c.show(c.expected)),
            Comparison::AtLeast => format!("expected >= {}", c.show(c.expected)),
        };
        section.row(
            c.key,
            expected,
            format!("kernel {}  {}", c.show(c.actual), mark(c.ok)),
        );
    }
    text.push_str(&section.to_string());
    if !report.leases_in_force.is_empty() {
        text.push_str("leases in force (node-wide):\n");
        for l in &report.leases_in_force {
            text.push_str(&format!(
                "  {} {} of {}{}, ends in {}\n",
                &l.id[..l.id.len().min(8)],
                l.policy,
                l.owner,
                l.tag
                    .as_deref()
                    .map(|t| format!(" (tag {t})"))
                    .unwrap_or_default(),
                super::lease::time_left(l.expires_at_unix_secs)
            ));
        }
    }
    if let Some(drift) = &report.drift {
        if let (Some(n), Some(last)) = (drift.since_last_verify.filter(|&n| n > 0), &drift.last) {
            text.push_str(&format!(
                "{} overcommitd found the policy changed behind its back {n} time(s) since the last verify; the last: the kernel held {}, expected {} ({})\n",
                paint(BAD, "drift:"),
                last.found,
                last.expected,
                last.action
            ));
        } else if drift.since_last_verify.is_none() && drift.events > 0 {
            text.push_str(&format!(
                "{} overcommitd has found drift {} time(s) since it started (run as root, or give --drift-state, to have it judged since the last verify)\n",
                paint(DIM, "note:"),
                drift.events
            ));
        }
    }
    print_text(&loaded.with_note(text))?;
    Ok(if report.in_line { 0 } else { 1 })
}

#[derive(Debug, Serialize)]
struct ApplyCheck {
    profile: String,
    source: Source,
    would_change: bool,
    /// overcommitd's baseline now (`None` without a daemon).
    current_baseline: Option<String>,
    /// overcommitd's baseline is not this profile (by name, policy or swappiness): applying
    /// changes it even while a lease keeps the kernel where it is.
    baseline_would_change: bool,
    /// The baseline the profile makes (with the limit it keeps when it names none).
    baseline_policy: Policy,
    /// What the kernel would hold: the baseline, or a live lease's more permissive policy.
    effective_policy: Policy,
    changes: Vec<Change>,
    config_on_disk: DiskState,
    changed_on_disk: Vec<DiskChange>,
}

#[derive(Debug, Serialize)]
struct Change {
    key: String,
    from: i64,
    to: u64,
}

/// `apply PROFILE --check`: what applying would write; exit 0 nothing, 1 changes.
pub fn apply_check(globals: &Globals, name: &str) -> Result<u8, CtlError> {
    let loaded = loaded_profiles(globals, Ask::StatusAndLeases)?;
    let profile = loaded.find(name)?;
    let node = globals.proc_root().node()?;
    let kernel = node.tunables;
    let (baseline, effective) = match &loaded.daemon {
        Some(view) => {
            // overcommitd keeps the limit it found at its start, and leases stay in force.
            let found = view.status.as_ref().and_then(|s| s.found);
            let fallback = found.map_or(kernel.limit_clamped(), |found| {
                Tunables {
                    overcommit_ratio: found.ratio,
                    overcommit_kbytes: found.kbytes,
                    ..kernel
                }
                .limit_clamped()
            });
            let baseline = profile.policy(fallback);
            let leases = view
                .leases
                .iter()
                .flat_map(|l| &l.leases)
                .map(|l| &l.policy);
            (baseline, effective_policy(&node, &baseline, leases))
        }
        None => {
            let baseline = profile.policy(kernel.limit_clamped());
            (baseline, baseline)
        }
    };
    let current = |knob: Knob| match knob {
        Knob::OvercommitMemory => i64::from(kernel.overcommit_memory.number()),
        Knob::OvercommitRatio => kernel.overcommit_ratio,
        Knob::OvercommitKbytes => kernel.overcommit_kbytes as i64,
        Knob::Swappiness => kernel.swappiness as i64,
        _ => 0,
    };
    let mut changes: Vec<Change> = write_plan(&kernel, &effective)
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
    let current = loaded
        .daemon
        .as_ref()
        .and_then(|v| v.status.as_ref())
        .map(|s| &s.baseline);
    let baseline_would_change = current.is_some_and(|b| {
        (b.name.as_str(), b.policy, b.swappiness) != (name, baseline, profile.swappiness)
    });
    let report = ApplyCheck {
        profile: name.to_string(),
        source: loaded.source,
        would_change: !changes.is_empty() || baseline_would_change,
        current_baseline: current.map(|b| b.name.clone()),
        baseline_would_change,
        baseline_policy: baseline,
        effective_policy: effective,
        changes,
        config_on_disk: loaded.disk,
        changed_on_disk: loaded.changed_on_disk.clone(),
    };
    if globals.json {
        print_json(&report)?;
    } else {
        let from = match loaded.source {
            Source::Daemon => "as overcommitd has it loaded",
            Source::ConfigFile => "from the configuration file; overcommitd does not answer",
        };
        let mut text = if !report.would_change {
            format!(
                "apply {name} ({from}): {}\n",
                paint(GOOD, "nothing to change")
            )
        } else if report.changes.is_empty() {
            format!(
                "apply {name} ({from}) {} the baseline {} -> {name}; the kernel stays as it is while leases keep {effective} in force\n",
                paint(WARN, "would change"),
                report.current_baseline.as_deref().unwrap_or("?"),
            )
        } else {
            let mut text = format!(
                "apply {name} ({from}) {} (in this order):\n",
                paint(WARN, "would write")
            );
            for change in &report.changes {
                text.push_str(&format!(
                    "  {}  {} -> {}\n",
                    change.key, change.from, change.to
                ));
            }
            text
        };
        if effective != baseline {
            text.push_str(&format!(
                "  {}\n",
                paint(
                    DIM,
                    format!("baseline {baseline}; leases keep {effective} in force until they end")
                )
            ));
        }
        print_text(&loaded.with_note(text))?;
    }
    Ok(if report.would_change { 1 } else { 0 })
}

/// A profile in `profiles --json`.
#[derive(Debug, Serialize)]
struct ProfileView<'a> {
    name: &'a str,
    description: Option<&'a str>,
    mode: Mode,
    /// `None`: the profile keeps the limit overcommitd found.
    limit: Option<Limit>,
    swappiness: Option<u64>,
    min_swap_bytes: Option<u64>,
    file: String,
}

#[derive(Debug, Serialize)]
struct ProfilesReport<'a> {
    source: Source,
    baseline: Option<&'a str>,
    profiles: Vec<ProfileView<'a>>,
    config_on_disk: DiskState,
    changed_on_disk: &'a [DiskChange],
}

/// `profiles`: the profiles (as the daemon has them loaded when it runs).
pub fn profiles(globals: &Globals, names: bool) -> Result<u8, CtlError> {
    let loaded = loaded_profiles(globals, Ask::Profiles)?;
    if names {
        let mut text = String::new();
        for p in &loaded.profiles {
            text.push_str(&p.name);
            text.push('\n');
        }
        print_text(&text)?;
        return Ok(0);
    }
    if globals.json {
        print_json(&ProfilesReport {
            source: loaded.source,
            baseline: loaded.baseline.as_deref(),
            profiles: loaded
                .profiles
                .iter()
                .map(|p| ProfileView {
                    name: &p.name,
                    description: p.description.as_deref(),
                    mode: p.mode,
                    limit: p.limit,
                    swappiness: p.swappiness,
                    min_swap_bytes: p.min_swap,
                    file: p.file.display().to_string(),
                })
                .collect(),
            config_on_disk: loaded.disk,
            changed_on_disk: &loaded.changed_on_disk,
        })?;
        return Ok(0);
    }
    let title = match loaded.source {
        Source::Daemon => "Profiles (as overcommitd has them loaded)",
        Source::ConfigFile => "Profiles (from the configuration file; overcommitd does not answer)",
    };
    let mut section = Section::new(title);
    for p in &loaded.profiles {
        let name = if loaded.baseline.as_deref() == Some(p.name.as_str()) {
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
    print_text(&loaded.with_note(section.to_string()))?;
    Ok(0)
}
