//! Where a vm setting comes from at boot: the sysctl.d file and line that sets it, found with
//! systemd-sysctl's precedence, so an admin can see which source wins instead of guessing.
//!
//! systemd-sysctl reads `*.conf` from /etc/sysctl.d, /run/sysctl.d, /usr/local/lib/sysctl.d,
//! /usr/lib/sysctl.d (and /lib/sysctl.d); a file name in an earlier directory hides the same name
//! in later ones, a link to /dev/null or an empty file masks it, and the files are applied in
//! the order of their names, later settings winning. `sysctl --system` (procps) also reads
//! /etc/sysctl.conf last. Before all of them, the kernel applies `sysctl.KEY=VALUE` from its
//! command line (v5.8+).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The directories systemd-sysctl reads, highest precedence first, relative to the root.
pub const SYSCTL_DIRS: [&str; 5] = [
    "etc/sysctl.d",
    "run/sysctl.d",
    "usr/local/lib/sysctl.d",
    "usr/lib/sysctl.d",
    "lib/sysctl.d",
];

/// Where boot-time sysctl settings are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlSources {
    /// The root the directories are read under (`/` on a live system).
    pub root: PathBuf,
    /// The sysctl.d directories, relative to `root`, highest precedence first.
    pub dirs: Vec<PathBuf>,
    /// procps's /etc/sysctl.conf, relative to `root`, read last by `sysctl --system`.
    pub sysctl_conf: Option<PathBuf>,
}

impl SysctlSources {
    pub fn under(root: impl Into<PathBuf>) -> SysctlSources {
        SysctlSources {
            root: root.into(),
            dirs: SYSCTL_DIRS.iter().map(PathBuf::from).collect(),
            sysctl_conf: Some(PathBuf::from("etc/sysctl.conf")),
        }
    }
}

/// Which mechanism applies a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `sysctl.KEY=VALUE` on the kernel command line.
    KernelCmdline,
    /// A sysctl.d file, applied by systemd-sysctl (and `sysctl --system`).
    SysctlD,
    /// /etc/sysctl.conf, applied only by `sysctl --system` unless linked from sysctl.d.
    SysctlConf,
}

/// One assignment of a key at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub file: PathBuf,
    pub line: usize,
    pub origin: Origin,
}

/// The assignment that wins at boot for one key, and the ones it overrides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootValue {
    pub winner: Setting,
    pub overridden: Vec<Setting>,
}

/// The boot configuration of the requested keys, and any file that could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BootConfig {
    pub values: BTreeMap<String, BootValue>,
    pub problems: Vec<String>,
}

impl SysctlSources {
    /// The files systemd-sysctl would apply, in the order it applies them, each with its
    /// metadata (through any symlink) when it can be looked at.
    pub fn files(&self, problems: &mut Vec<String>) -> Vec<(PathBuf, Option<fs::Metadata>)> {
        let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dir in &self.dirs {
            let dir = self.root.join(dir);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    problems.push(format!("cannot read {}: {e}", dir.display()));
                    continue;
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".conf") {
                    by_name.entry(name).or_insert_with(|| entry.path());
                }
            }
        }
        // One stat each, through any symlink: whether the file is masked (a link to /dev/null
        // or an empty file: both have no length), and which file it is.
        by_name
            .into_values()
            .filter_map(|path| match fs::metadata(&path) {
                Ok(meta) if meta.len() == 0 => None,
                Ok(meta) => Some((path, Some(meta))),
                // Reported when it is read.
                Err(_) => Some((path, None)),
            })
            .collect()
    }

    /// Finds the boot-time assignment of each of `keys` (dotted form, e.g. `vm.overcommit_memory`),
    /// `cmdline` being the kernel command line.
    pub fn boot_config(&self, cmdline: &str, keys: &[String]) -> BootConfig {
        let mut config = BootConfig::default();
        let mut settings: Vec<Setting> = cmdline_settings(cmdline);
        let files = self.files(&mut config.problems);
        // Which files these are (device and inode, through any symlink).
        let identity = |meta: &fs::Metadata| (meta.dev(), meta.ino());
        let mut seen: Vec<(u64, u64)> = files
            .iter()
            .filter_map(|(_, meta)| meta.as_ref())
            .map(identity)
            .collect();
        let mut sources: Vec<(PathBuf, Origin, u64)> = files
            .into_iter()
            .map(|(f, meta)| (f, Origin::SysctlD, meta.map_or(0, |m| m.len())))
            .collect();
        if let Some(conf) = &self.sysctl_conf {
            let conf = self.root.join(conf);
            // Debian links it from sysctl.d as 99-sysctl.conf: then it is already read.
            match fs::metadata(&conf) {
                Ok(meta) if !seen.contains(&identity(&meta)) => {
                    seen.push(identity(&meta));
                    sources.push((conf, Origin::SysctlConf, meta.len()));
                }
                _ => {}
            }
        }
        for (path, origin, length) in sources {
            match read_text(&path, length) {
                Ok(text) => settings.extend(parse_file(&text, &path, origin)),
                Err(e) => config
                    .problems
                    .push(format!("cannot read {}: {e}", path.display())),
            }
        }
        for key in keys {
            let mut matching = settings
                .iter()
                .filter(|s| key_matches(&s.key, key))
                .cloned()
                .map(|mut s| {
                    s.key = key.clone();
                    s
                });
            if let Some(first) = matching.next() {
                let mut all: Vec<Setting> = std::iter::once(first).chain(matching).collect();
                let winner = all.pop().expect("at least one setting");
                all.reverse();
                config.values.insert(
                    key.clone(),
                    BootValue {
                        winner,
                        overridden: all,
                    },
                );
            }
        }
        config
    }
}

/// A file's text, `length` long when the caller looked at it: read with room for that and the
/// read that sees the end, and no second stat.
fn read_text(path: &Path, length: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::with_capacity(usize::try_from(length).map_or(0, |n| n.min(1 << 20)) + 1);
    fs::File::open(path)?
        .take(u64::MAX)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// systemd's sysctl_normalize(): if the first separator is a slash, slashes and dots swap.
fn normalize_key(key: &str) -> String {
    let key = key.trim().trim_start_matches('/');
    match key.find(['.', '/']) {
        Some(i) if key.as_bytes()[i] == b'/' => key
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                other => other,
            })
            .collect(),
        _ => key.to_string(),
    }
}

fn parse_file(text: &str, path: &Path, origin: Origin) -> Vec<Setting> {
    text.lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let line = line.trim();
            if line.is_empty() || line.starts_with(['#', ';']) {
                return None;
            }
            let (key, value) = line.split_once('=')?;
            // A leading '-' only says "ignore failure to set it".
            let key = normalize_key(key.trim().trim_start_matches('-'));
            Some(Setting {
                key,
                value: value.trim().to_string(),
                file: path.to_path_buf(),
                line: index + 1,
                origin,
            })
        })
        .collect()
}

fn cmdline_settings(cmdline: &str) -> Vec<Setting> {
    cmdline
        .split_whitespace()
        .filter_map(|word| {
            let (key, value) = word.strip_prefix("sysctl.")?.split_once('=')?;
            Some(Setting {
                key: normalize_key(key),
                value: value.to_string(),
                file: PathBuf::from("/proc/cmdline"),
                line: 1,
                origin: Origin::KernelCmdline,
            })
        })
        .collect()
}

/// Matches a sysctl.d key, which may be a glob (`vm.overcommit_*`), against a key.
fn key_matches(pattern: &str, key: &str) -> bool {
    fn glob(p: &[u8], k: &[u8]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(b'*'), _) => glob(&p[1..], k) || (!k.is_empty() && glob(p, &k[1..])),
            (Some(b'?'), Some(_)) => glob(&p[1..], &k[1..]),
            (Some(a), Some(b)) if a == b => glob(&p[1..], &k[1..]),
            _ => false,
        }
    }
    glob(pattern.as_bytes(), key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(root: &Path, relative: &str, text: &str) {
        let path = root.join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn keys() -> Vec<String> {
        vec![
            "vm.overcommit_memory".into(),
            "vm.overcommit_ratio".into(),
            "vm.overcommit_kbytes".into(),
        ]
    }

    #[test]
    fn later_file_names_win_and_etc_hides_usr_lib() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            "usr/lib/sysctl.d/50-default.conf",
            "vm.overcommit_memory = 0\n",
        );
        write(
            root,
            "usr/lib/sysctl.d/90-hpc.conf",
            "# vendor\nvm.overcommit_memory=2\nvm.overcommit_ratio = 80\n",
        );
        write(
            root,
            "etc/sysctl.d/90-hpc.conf",
            "vm.overcommit_memory = 1\n",
        );
        write(
            root,
            "run/sysctl.d/10-early.conf",
            "vm/overcommit_ratio=60\n",
        );
        let config = SysctlSources::under(root).boot_config("", &keys());
        let mode = &config.values["vm.overcommit_memory"];
        assert_eq!(mode.winner.value, "1");
        assert_eq!(mode.winner.file, root.join("etc/sysctl.d/90-hpc.conf"));
        assert_eq!(mode.winner.line, 1);
        assert_eq!(
            mode.overridden.len(),
            1,
            "the /usr/lib 90-hpc.conf is hidden, 50-default is overridden"
        );
        assert_eq!(
            mode.overridden[0].file,
            root.join("usr/lib/sysctl.d/50-default.conf")
        );
        let ratio = &config.values["vm.overcommit_ratio"];
        assert_eq!(ratio.winner.value, "60", "only the /run file sets it now");
        assert!(!config.values.contains_key("vm.overcommit_kbytes"));
    }

    #[test]
    fn masked_files_and_comments_do_not_count() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            "usr/lib/sysctl.d/80-site.conf",
            "vm.overcommit_memory = 2\n",
        );
        fs::create_dir_all(root.join("etc/sysctl.d")).unwrap();
        symlink("/dev/null", root.join("etc/sysctl.d/80-site.conf")).unwrap();
        write(
            root,
            "usr/lib/sysctl.d/70-x.conf",
            "; vm.overcommit_memory = 1\n# vm.overcommit_memory = 1\n",
        );
        let config = SysctlSources::under(root).boot_config("", &keys());
        assert!(config.values.is_empty(), "{config:?}");
    }

    #[test]
    fn sysctl_conf_comes_last_unless_linked_from_sysctl_d() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "etc/sysctl.conf", "vm.overcommit_memory=2\n");
        write(
            root,
            "etc/sysctl.d/50-site.conf",
            "-vm.overcommit_memory=1\n",
        );
        let config = SysctlSources::under(root).boot_config("", &keys());
        let mode = &config.values["vm.overcommit_memory"];
        assert_eq!(
            (mode.winner.value.as_str(), mode.winner.origin),
            ("2", Origin::SysctlConf)
        );

        symlink("../sysctl.conf", root.join("etc/sysctl.d/99-sysctl.conf")).unwrap();
        let config = SysctlSources::under(root).boot_config("", &keys());
        let mode = &config.values["vm.overcommit_memory"];
        assert_eq!(mode.winner.value, "2");
        assert_eq!(
            mode.winner.origin,
            Origin::SysctlD,
            "read once, through the link"
        );
        assert_eq!(mode.overridden.len(), 1);
    }

    #[test]
    fn kernel_cmdline_comes_first_and_globs_match() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "etc/sysctl.d/10-glob.conf", "vm.overcommit_* = 7\n");
        let config = SysctlSources::under(root)
            .boot_config("quiet sysctl.vm.overcommit_memory=1 ro", &keys());
        let mode = &config.values["vm.overcommit_memory"];
        assert_eq!(mode.winner.value, "7");
        assert_eq!(mode.overridden[0].origin, Origin::KernelCmdline);
        assert_eq!(config.values["vm.overcommit_kbytes"].winner.line, 1);
    }

    #[test]
    fn keys_normalize_like_systemd() {
        assert_eq!(
            normalize_key("vm/overcommit_memory"),
            "vm.overcommit_memory"
        );
        assert_eq!(
            normalize_key("net/ipv4/conf/eth0.100/rp_filter"),
            "net.ipv4.conf.eth0/100.rp_filter"
        );
        assert_eq!(
            normalize_key(" vm.overcommit_ratio "),
            "vm.overcommit_ratio"
        );
    }
}
