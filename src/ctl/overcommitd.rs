//! Is overcommitd expected to answer on this node? When it is and does not, changing the kernel
//! behind its back would be silently undone (drift enforcement) or would silently undo it, so
//! `set`/`apply` refuse unless told `--direct`; `verify` can say the node is not as managed.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// One reason to expect overcommitd on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Expectation {
    /// Its configuration file exists.
    Config { path: PathBuf },
    /// One of its systemd units is enabled, or its socket unit is installed (connecting would
    /// start it).
    Unit { path: PathBuf },
}

/// systemd unit files that mean overcommitd runs here, relative to the root: the links
/// `systemctl enable` makes, and the socket unit wherever a package or an admin installs it.
const UNIT_FILES: [&str; 7] = [
    "etc/systemd/system/multi-user.target.wants/overcommitd.service",
    "etc/systemd/system/sockets.target.wants/overcommitd.socket",
    "etc/systemd/system/overcommitd.socket",
    "run/systemd/system/overcommitd.socket",
    "usr/local/lib/systemd/system/overcommitd.socket",
    "usr/lib/systemd/system/overcommitd.socket",
    "lib/systemd/system/overcommitd.socket",
];

/// Why overcommitd is expected on this node: its configuration `config` exists, or a unit of
/// it is enabled or installed under `root` (`/` on a live system). Empty: not expected. A unit
/// masked in /etc (a link to /dev/null) overrides the others.
pub fn daemon_expected(config: &Path, root: &Path) -> Vec<Expectation> {
    let masked = |unit: &str| {
        std::fs::read_link(root.join("etc/systemd/system").join(unit))
            .is_ok_and(|target| target == Path::new("/dev/null"))
    };
    let mut found = Vec::new();
    if config.is_file() {
        found.push(Expectation::Config {
            path: config.to_path_buf(),
        });
    }
    if masked("overcommitd.service") && masked("overcommitd.socket") {
        return found;
    }
    for relative in UNIT_FILES {
        let path = root.join(relative);
        let unit = Path::new(relative)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // The enable links are looked at, not followed: their targets are absolute paths
        // that may not be under `root`.
        let present = if relative.contains(".wants/") {
            std::fs::symlink_metadata(&path).is_ok()
        } else {
            path.is_file() && !masked(unit)
        };
        if present {
            found.push(Expectation::Unit { path });
        }
    }
    found
}

/// The reasons in one phrase: "its configuration /etc/... exists; ... is installed".
pub fn describe(expected: &[Expectation]) -> String {
    expected
        .iter()
        .map(|e| match e {
            Expectation::Config { path } => format!("its configuration {} exists", path.display()),
            Expectation::Unit { path } if path.to_string_lossy().contains(".wants/") => {
                format!("{} is enabled", path.display())
            }
            Expectation::Unit { path } => format!("{} is installed", path.display()),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_an_enabled_service_or_an_installed_socket_unit_means_expected() {
        let root = tempfile::tempdir().unwrap();
        let config = root.path().join("etc/overcommitd/overcommitd.toml");
        assert!(daemon_expected(&config, root.path()).is_empty());

        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, "").unwrap();
        assert_eq!(
            daemon_expected(&config, root.path()),
            vec![Expectation::Config {
                path: config.clone()
            }]
        );
        std::fs::remove_file(&config).unwrap();

        let wants = root
            .path()
            .join("etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink(
            "/lib/systemd/system/overcommitd.service",
            wants.join("overcommitd.service"),
        )
        .unwrap();
        let found = daemon_expected(&config, root.path());
        assert_eq!(found.len(), 1, "a dangling enable link still says enabled");
        assert!(describe(&found).contains("is enabled"));

        let lib = root.path().join("lib/systemd/system");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("overcommitd.socket"), "[Socket]\n").unwrap();
        assert_eq!(daemon_expected(&config, root.path()).len(), 2);
    }

    #[test]
    fn masked_units_do_not_count() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("usr/lib/systemd/system");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("overcommitd.socket"), "[Socket]\n").unwrap();
        let etc = root.path().join("etc/systemd/system");
        std::fs::create_dir_all(&etc).unwrap();
        for unit in ["overcommitd.service", "overcommitd.socket"] {
            std::os::unix::fs::symlink("/dev/null", etc.join(unit)).unwrap();
        }
        assert!(daemon_expected(Path::new("/nonexistent"), root.path()).is_empty());
    }
}
