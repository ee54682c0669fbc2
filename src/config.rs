//! The daemon's configuration: `overcommitd.toml` plus `profiles.d/*.toml` beside it. Strict:
//! unknown keys, wrong types and values that make no sense are errors with file, line and column.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::model::{Limit, LimitError, Mode, Policy};

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is about the file as a whole.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// A source file being parsed, to turn byte spans into line and column.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let (line, column) = match span {
            Some(span) => {
                let before = &self.text[..span.start.min(self.text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                (line, column)
            }
            None => (0, 0),
        };
        ConfigError {
            file: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// What the daemon does when a knob changes behind its back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftAction {
    /// Write the expected policy back.
    #[default]
    Enforce,
    /// Log it, change nothing.
    Warn,
    /// Take the kernel's values as the new baseline.
    Adopt,
}

/// A named policy, as profiles define it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    pub description: Option<String>,
    pub mode: Mode,
    /// `None`: the profile keeps the ratio/kbytes of the node's boot policy.
    pub limit: Option<Limit>,
    pub swappiness: Option<u64>,
    /// `verify` reports drift when SwapTotal is below this (bytes).
    pub min_swap: Option<u64>,
    pub file: PathBuf,
}

impl From<&Profile> for crate::protocol::ProfileInfo {
    fn from(p: &Profile) -> Self {
        crate::protocol::ProfileInfo {
            name: p.name.clone(),
            description: p.description.clone(),
            mode: p.mode,
            limit: p.limit,
            swappiness: p.swappiness,
            min_swap: p.min_swap,
        }
    }
}

impl Profile {
    /// A profile as the daemon reported it, with the file it is read from (not on the wire).
    pub fn from_info(info: crate::protocol::ProfileInfo, file: PathBuf) -> Profile {
        Profile {
            name: info.name,
            description: info.description,
            mode: info.mode,
            limit: info.limit,
            swappiness: info.swappiness,
            min_swap: info.min_swap,
            file,
        }
    }

    /// The full policy, with `fallback` where the profile sets no limit.
    pub fn policy(&self, fallback: Limit) -> Policy {
        Policy {
            mode: self.mode,
            limit: self.limit.unwrap_or(fallback),
        }
    }
}

/// Who may lease what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessRule {
    pub users: Vec<Principal>,
    pub groups: Vec<Principal>,
    pub modes: Vec<Mode>,
    /// Highest ratio a mode-never lease may ask for.
    pub max_ratio: u32,
    /// Highest kbytes a mode-never lease may ask for; `None`: no kbytes leases.
    pub max_kbytes: Option<u64>,
    pub max_ttl: Duration,
    /// Live leases per user.
    pub max_leases: u32,
}

/// A user or group, by name or by number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Principal {
    Id(u32),
    Name(String),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Id(id) => write!(f, "{id}"),
            Principal::Name(name) => f.write_str(name),
        }
    }
}

/// The `[daemon]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonSettings {
    /// Profile in force when no lease is live; `None`: the node's boot policy.
    pub baseline: Option<String>,
    pub drift: DriftAction,
    /// `None`: never look.
    pub drift_interval: Option<Duration>,
    /// The lockout guard: CommitLimit must stay this far above Committed_AS (bytes).
    pub lockout_margin: u64,
    /// TTL of root's leases that name none.
    pub default_ttl: Duration,
    pub max_clients: usize,
    pub client_timeout: Duration,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            baseline: None,
            drift: DriftAction::Enforce,
            drift_interval: Some(Duration::from_secs(60)),
            lockout_margin: 64 << 20,
            default_ttl: Duration::from_secs(24 * 3600),
            max_clients: 512,
            client_timeout: Duration::from_secs(10),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub path: PathBuf,
    pub daemon: DaemonSettings,
    pub profiles: BTreeMap<String, Profile>,
    pub access: Vec<AccessRule>,
}

impl Config {
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// The baseline profile, if the config names one.
    pub fn baseline_profile(&self) -> Option<&Profile> {
        self.daemon
            .baseline
            .as_deref()
            .and_then(|name| self.profiles.get(name))
    }

    /// The directory profiles are read from.
    pub fn profiles_dir(path: &Path) -> PathBuf {
        path.parent().unwrap_or(Path::new(".")).join("profiles.d")
    }

    /// Loads `path` and every `profiles.d/*.toml` beside it (in name order).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_profiles(path, &Config::profiles_dir(path))
    }

    /// Loads `path` and every `*.toml` of `dir` (in name order) as its profiles: a candidate
    /// file written elsewhere (config management's temporary file) checked with the profiles
    /// it will sit beside.
    pub fn load_with_profiles(path: &Path, dir: &Path) -> Result<Config, ConfigError> {
        let text = read(path)?;
        let dir = dir.to_path_buf();
        let mut files: Vec<PathBuf> = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(whole_file(
                    &dir,
                    format!("cannot read the profiles directory: {e}"),
                ))
            }
        };
        files.sort();
        let profiles = files
            .into_iter()
            .map(|file| read(&file).map(|text| (file, text)))
            .collect::<Result<Vec<_>, _>>()?;
        Config::parse(path, &text, &profiles)
    }

    /// The configuration in `text` (the file `path`) and the profile files `profiles` (path,
    /// text), in that order; no I/O. What [`Config::load`] and the fuzzer check.
    pub fn parse(
        path: &Path,
        text: &str,
        profiles: &[(PathBuf, String)],
    ) -> Result<Config, ConfigError> {
        let main = Source { path, text };
        let raw: RawConfig = parse(&main)?;
        let mut config = Config {
            path: path.to_path_buf(),
            daemon: DaemonSettings::default(),
            profiles: BTreeMap::new(),
            access: Vec::new(),
        };
        if let Some(daemon) = raw.daemon {
            config.daemon = daemon_settings(&main, daemon)?;
        }
        add_profiles(&mut config.profiles, &main, raw.profiles)?;
        for rule in raw.access {
            config.access.push(access_rule(&main, rule)?);
        }
        for (file, text) in profiles {
            let source = Source { path: file, text };
            let raw: RawProfilesFile = parse(&source)?;
            add_profiles(&mut config.profiles, &source, raw.profiles)?;
        }
        if let Some(baseline) = &raw_baseline_span(&main)? {
            if !config.profiles.contains_key(baseline.get_ref()) {
                let known: Vec<&str> = config.profiles.keys().map(String::as_str).collect();
                return Err(main.error(
                    Some(baseline.span()),
                    format!(
                        "baseline `{}` names no profile (known: {})",
                        baseline.get_ref(),
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(config)
    }
}

/// The largest configuration file read (a profile is a few lines).
const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Reads a configuration file: a regular file only (a FIFO or device is refused without
/// blocking on it), at most [`MAX_CONFIG_FILE`] bytes of UTF-8.
fn read(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let file = crate::kernel::open_regular(path, false)
        .map_err(|e| whole_file(path, format!("cannot read: {e}")))?;
    let mut text = String::new();
    file.take(MAX_CONFIG_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| whole_file(path, format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_CONFIG_FILE {
        return Err(whole_file(
            path,
            format!("larger than {MAX_CONFIG_FILE} bytes: not a configuration file"),
        ));
    }
    Ok(text)
}

fn whole_file(path: &Path, message: String) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        message,
    }
}

fn parse<T: serde::de::DeserializeOwned>(source: &Source<'_>) -> Result<T, ConfigError> {
    toml::from_str(source.text).map_err(|e| source.error(e.span(), e.message().trim().to_string()))
}

/// The baseline key with its span, read again for the cross-file check.
fn raw_baseline_span(source: &Source<'_>) -> Result<Option<Spanned<String>>, ConfigError> {
    #[derive(Deserialize)]
    struct Only {
        daemon: Option<OnlyDaemon>,
    }
    #[derive(Deserialize)]
    struct OnlyDaemon {
        baseline: Option<Spanned<String>>,
    }
    let only: Only = parse(source)?;
    Ok(only.daemon.and_then(|d| d.baseline))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: Option<RawDaemon>,
    #[serde(default)]
    profiles: BTreeMap<Spanned<String>, Spanned<RawProfile>>,
    #[serde(default)]
    access: Vec<Spanned<RawAccess>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfilesFile {
    #[serde(default)]
    profiles: BTreeMap<Spanned<String>, Spanned<RawProfile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    baseline: Option<String>,
    drift: Option<DriftAction>,
    drift_interval: Option<Spanned<String>>,
    lockout_margin: Option<Spanned<SizeValue>>,
    default_ttl: Option<Spanned<String>>,
    max_clients: Option<Spanned<i64>>,
    client_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    description: Option<String>,
    mode: Mode,
    ratio: Option<Spanned<i64>>,
    kbytes: Option<Spanned<i64>>,
    swappiness: Option<Spanned<i64>>,
    min_swap: Option<Spanned<SizeValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    #[serde(default)]
    users: Vec<Principal>,
    #[serde(default)]
    groups: Vec<Principal>,
    modes: Option<Vec<Mode>>,
    max_ratio: Option<Spanned<i64>>,
    max_kbytes: Option<Spanned<i64>>,
    max_ttl: Option<Spanned<String>>,
    max_leases: Option<Spanned<i64>>,
}

/// A size in a config file: bytes as a number, or a string with a unit (`"8G"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

fn size_value(source: &Source<'_>, value: Spanned<SizeValue>) -> Result<u64, ConfigError> {
    let span = value.span();
    match value.into_inner() {
        SizeValue::Bytes(b) => Ok(b),
        SizeValue::Text(t) => {
            crate::size::parse_size(&t).map_err(|e| source.error(Some(span), e.to_string()))
        }
    }
}

/// The longest TTL a configuration may give (as the protocol's `ttl_secs`).
pub const MAX_TTL: Duration = Duration::from_secs(366 * 86400);
/// The longest timeout or interval a configuration may give.
pub const MAX_INTERVAL: Duration = Duration::from_secs(86400);

fn duration_value(
    source: &Source<'_>,
    value: Spanned<String>,
    zero_means_never: bool,
    max: Duration,
) -> Result<Option<Duration>, ConfigError> {
    let span = value.span();
    let text = value.into_inner();
    if text.trim() == "0" && zero_means_never {
        return Ok(None);
    }
    let duration =
        crate::cli::parse_duration(&text).map_err(|e| source.error(Some(span.clone()), e))?;
    if duration.is_zero() && !zero_means_never {
        return Err(source.error(Some(span), "a duration of 0 is not allowed here"));
    }
    if duration > max {
        return Err(source.error(
            Some(span),
            format!(
                "{text} is too long: at most {} day(s)",
                max.as_secs() / 86400
            ),
        ));
    }
    Ok(if duration.is_zero() {
        None
    } else {
        Some(duration)
    })
}

fn bounded(
    source: &Source<'_>,
    value: &Spanned<i64>,
    what: &str,
    range: Range<i64>,
) -> Result<u64, ConfigError> {
    let v = *value.get_ref();
    if range.contains(&v) {
        Ok(v as u64)
    } else {
        Err(source.error(
            Some(value.span()),
            format!(
                "{what} {v} is out of range: expected {} to {}",
                range.start,
                range.end - 1
            ),
        ))
    }
}

fn daemon_settings(source: &Source<'_>, raw: RawDaemon) -> Result<DaemonSettings, ConfigError> {
    let mut settings = DaemonSettings {
        baseline: raw.baseline,
        ..DaemonSettings::default()
    };
    if let Some(drift) = raw.drift {
        settings.drift = drift;
    }
    if let Some(interval) = raw.drift_interval {
        settings.drift_interval = duration_value(source, interval, true, MAX_INTERVAL)?;
    }
    if let Some(margin) = raw.lockout_margin {
        settings.lockout_margin = size_value(source, margin)?;
    }
    if let Some(ttl) = raw.default_ttl {
        settings.default_ttl =
            duration_value(source, ttl, false, MAX_TTL)?.unwrap_or(settings.default_ttl);
    }
    if let Some(max) = raw.max_clients {
        settings.max_clients = bounded(source, &max, "max_clients", 1..65_537)? as usize;
    }
    if let Some(timeout) = raw.client_timeout {
        settings.client_timeout = duration_value(source, timeout, false, MAX_INTERVAL)?
            .unwrap_or(settings.client_timeout);
    }
    Ok(settings)
}

fn add_profiles(
    profiles: &mut BTreeMap<String, Profile>,
    source: &Source<'_>,
    raw: BTreeMap<Spanned<String>, Spanned<RawProfile>>,
) -> Result<(), ConfigError> {
    for (name, raw) in raw {
        let name_span = name.span();
        let name = name.into_inner();
        if let Some(existing) = profiles.get(&name) {
            return Err(source.error(
                Some(name_span),
                format!(
                    "profile `{name}` is already defined in {}",
                    existing.file.display()
                ),
            ));
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(source.error(
                Some(name_span),
                format!("profile name `{name}`: use letters, digits, - and _"),
            ));
        }
        let raw = raw.into_inner();
        let limit = match (&raw.ratio, &raw.kbytes) {
            (Some(_), Some(k)) => {
                return Err(source.error(Some(k.span()), LimitError::Both.to_string()))
            }
            (Some(r), None) => Some(
                Limit::ratio(*r.get_ref())
                    .map_err(|e| source.error(Some(r.span()), e.to_string()))?,
            ),
            (None, Some(k)) => {
                let kb = u64::try_from(*k.get_ref())
                    .map_err(|_| source.error(Some(k.span()), "kbytes must be positive"))?;
                Some(Limit::kbytes(kb).map_err(|e| source.error(Some(k.span()), e.to_string()))?)
            }
            (None, None) => None,
        };
        let swappiness = raw
            .swappiness
            .as_ref()
            .map(|s| bounded(source, s, "swappiness", 0..201))
            .transpose()?;
        let min_swap = raw.min_swap.map(|m| size_value(source, m)).transpose()?;
        profiles.insert(
            name.clone(),
            Profile {
                name,
                description: raw.description,
                mode: raw.mode,
                limit,
                swappiness,
                min_swap,
                file: source.path.to_path_buf(),
            },
        );
    }
    Ok(())
}

fn access_rule(source: &Source<'_>, raw: Spanned<RawAccess>) -> Result<AccessRule, ConfigError> {
    let span = raw.span();
    let raw = raw.into_inner();
    if raw.users.is_empty() && raw.groups.is_empty() {
        return Err(source.error(
            Some(span),
            "an [[access]] rule needs users or groups (root may always do everything)",
        ));
    }
    let max_ttl = match raw.max_ttl {
        Some(ttl) => {
            duration_value(source, ttl, false, MAX_TTL)?.unwrap_or(Duration::from_secs(24 * 3600))
        }
        None => Duration::from_secs(24 * 3600),
    };
    Ok(AccessRule {
        users: raw.users,
        groups: raw.groups,
        modes: raw
            .modes
            .unwrap_or_else(|| vec![Mode::Always, Mode::Heuristic]),
        max_ratio: raw
            .max_ratio
            .as_ref()
            .map(|r| bounded(source, r, "max_ratio", 0..101))
            .transpose()?
            .unwrap_or(100) as u32,
        max_kbytes: raw
            .max_kbytes
            .as_ref()
            .map(|k| bounded(source, k, "max_kbytes", 1..i64::MAX))
            .transpose()?,
        max_ttl,
        max_leases: raw
            .max_leases
            .as_ref()
            .map(|m| bounded(source, m, "max_leases", 0..10_001))
            .transpose()?
            .unwrap_or(4) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(
        main: &str,
        profiles: &[(&str, &str)],
    ) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("overcommitd.toml"), main).unwrap();
        if !profiles.is_empty() {
            fs::create_dir(dir.path().join("profiles.d")).unwrap();
        }
        for (name, text) in profiles {
            fs::write(dir.path().join("profiles.d").join(name), text).unwrap();
        }
        let result = Config::load(&dir.path().join("overcommitd.toml"));
        (dir, result)
    }

    const EXAMPLE: &str = r#"
[daemon]
baseline = "default"        # profile in force when no lease is live
drift = "enforce"
drift_interval = "60s"

[profiles.default]
mode = "heuristic"

[profiles.hpc-strict]
mode = "never"
ratio = 95
swappiness = 10
min_swap = "8G"

[[access]]
groups = ["hpc"]
users = ["alice", 1234]
modes = ["always", "heuristic"]
max_ratio = 100
max_ttl = "24h"
max_leases = 4
"#;

    #[test]
    fn the_documented_example_loads() {
        let (_dir, config) = load(
            EXAMPLE,
            &[("big.toml", "[profiles.bigmem]\nmode = \"always\"\n")],
        );
        let config = config.unwrap();
        assert_eq!(config.daemon.baseline.as_deref(), Some("default"));
        assert_eq!(config.daemon.drift_interval, Some(Duration::from_secs(60)));
        let strict = config.profile("hpc-strict").unwrap();
        assert_eq!(
            (
                strict.mode,
                strict.limit,
                strict.swappiness,
                strict.min_swap
            ),
            (Mode::Never, Some(Limit::Ratio(95)), Some(10), Some(8 << 30))
        );
        assert_eq!(config.profile("bigmem").unwrap().mode, Mode::Always);
        assert!(config
            .profile("bigmem")
            .unwrap()
            .file
            .ends_with("profiles.d/big.toml"));
        let rule = &config.access[0];
        assert_eq!(
            rule.users,
            vec![Principal::Name("alice".into()), Principal::Id(1234)]
        );
        assert_eq!(rule.max_ttl, Duration::from_secs(86400));
        assert_eq!(config.baseline_profile().unwrap().name, "default");
    }

    fn error(main: &str, profiles: &[(&str, &str)]) -> ConfigError {
        load(main, profiles).1.unwrap_err()
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_located() {
        let e = error("[profiles.a]\nmode = \"never\"\nratoi = 5\n", &[]);
        assert_eq!((e.line, e.column), (3, 1), "{e}");
        assert!(e.message.contains("ratoi"), "{e}");
        let e = error("[profiles.a]\nmode = \"never\"\nratio = \"high\"\n", &[]);
        assert_eq!(e.line, 3, "{e}");
        let e = error("[profiles.a]\nmode = \"sometimes\"\n", &[]);
        assert!(e.message.contains("heuristic (0)"), "{e}");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn bad_values_are_located() {
        let e = error("[profiles.a]\nmode = \"never\"\nratio = 150\n", &[]);
        assert_eq!((e.line, e.column), (3, 9), "{e}");
        assert!(e.message.contains("0 to 100"), "{e}");
        let e = error(
            "[profiles.a]\nmode = \"never\"\nratio = 50\nkbytes = 1000\n",
            &[],
        );
        assert_eq!(e.line, 4);
        assert!(e.message.contains("exclusive"), "{e}");
        let e = error(
            "[daemon]\nbaseline = \"nope\"\n[profiles.a]\nmode = 0\n",
            &[],
        );
        assert_eq!(e.line, 2, "{e}");
        assert!(
            e.message.contains("nope") && e.message.contains("known: a"),
            "{e}"
        );
        let e = error("[daemon]\ndrift_interval = \"soon\"\n", &[]);
        assert_eq!(e.line, 2, "{e}");
        let e = error("[[access]]\nmodes = [\"always\"]\n", &[]);
        assert!(e.message.contains("users or groups"), "{e}");
        let e = error("[profiles.a]\nmode = \"never\"\nswappiness = 300\n", &[]);
        assert!(e.message.contains("swappiness 300"), "{e}");
    }

    #[test]
    fn duplicate_profiles_across_files_name_both_files() {
        let e = error(
            "[profiles.fast]\nmode = \"always\"\n",
            &[("10-site.toml", "\n[profiles.fast]\nmode = \"heuristic\"\n")],
        );
        assert!(e.file.ends_with("profiles.d/10-site.toml"), "{e}");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("overcommitd.toml"), "{e}");
    }

    #[test]
    fn profiles_d_files_only_hold_profiles() {
        let e = error("", &[("x.toml", "[daemon]\nbaseline = \"a\"\n")]);
        assert!(e.message.contains("daemon"), "{e}");
    }

    #[test]
    fn drift_interval_zero_means_never_and_defaults_apply() {
        let (_d, config) = load("[daemon]\ndrift_interval = \"0\"\n", &[]);
        let config = config.unwrap();
        assert_eq!(config.daemon.drift_interval, None);
        assert_eq!(config.daemon.baseline, None);
        let (_d, config) = load("", &[]);
        assert_eq!(
            config.unwrap().daemon.drift_interval,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn durations_are_bounded_so_no_accepted_value_can_overflow_a_clock() {
        let huge = "18446744073709551615s";
        for (key, table) in [
            ("default_ttl", "daemon"),
            ("client_timeout", "daemon"),
            ("drift_interval", "daemon"),
        ] {
            let e = error(&format!("[{table}]\n{key} = \"{huge}\"\n"), &[]);
            assert!(e.message.contains("too long"), "{key}: {e}");
            assert_eq!(e.line, 2, "{e}");
        }
        let e = error(
            &format!("[[access]]\nusers = [1]\nmax_ttl = \"{huge}\"\n"),
            &[],
        );
        assert!(e.message.contains("at most 366 day(s)"), "{e}");
        let e = error("[daemon]\nclient_timeout = \"2days\"\n", &[]);
        assert!(e.message.contains("at most 1 day(s)"), "{e}");
        let (_d, ok) = load(
            "[daemon]\ndefault_ttl = \"366days\"\nclient_timeout = \"1day\"\n",
            &[],
        );
        ok.unwrap();
    }

    #[test]
    fn a_fifo_or_directory_as_config_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overcommitd.toml");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
        std::fs::remove_file(&path).unwrap();
        fs::write(&path, "").unwrap();
        fs::create_dir(dir.path().join("profiles.d")).unwrap();
        let profile = dir.path().join("profiles.d/x.toml");
        nix::unistd::mkfifo(&profile, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(
            e.file.ends_with("x.toml") && e.message.contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let e = Config::load(Path::new("/nonexistent/overcommitd.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/overcommitd.toml: cannot read"),
            "{e}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_text_is_a_located_error_or_a_config(text in "[\\[\\]a-z_=\" 0-9.\n-]{0,200}") {
            let (_dir, result) = load(&text, &[]);
            if let Err(e) = result {
                proptest::prop_assert!(!e.message.is_empty());
            }
        }
    }
}
