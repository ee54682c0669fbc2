//! What the command-line tests share: a site configuration, overcommitctl pointed at a daemon
//! with no boot configuration, and the prerequisites that may be missing outside CI.

use std::path::Path;
use std::process::Command;

use super::Daemon;

/// A site's configuration: the kernel's heuristic as baseline, a strict profile and a strict
/// one that expects swap, and uid 1000 allowed to lease always or heuristic for an hour.
pub const CONFIG: &str = r#"
[daemon]
baseline = "default"
drift_interval = "0"

[profiles.default]
mode = "heuristic"

[profiles.hpc-strict]
description = "strict"
mode = "never"
ratio = 95
swappiness = 10

[profiles.swap]
mode = "never"
ratio = 80
min_swap = "16G"

[[access]]
users = [1000]
modes = ["always", "heuristic"]
max_ttl = "1h"
"#;

/// overcommitctl pointed at `daemon`, with an empty boot configuration (no sysctl.d, no units).
pub fn ctl_with(daemon: &Daemon) -> Command {
    let mut command = daemon.ctl();
    command.env("OVERCOMMIT_SYSCTL_ROOT", daemon.path("root"));
    command
}

/// Says loudly that a test did not run, and why; with CI=true it fails instead.
pub fn not_run(why: &str) {
    super::skip::skip(why);
}

/// Debian's python3 when it has numpy (python3-numpy; the default `python3` here may be
/// another one).
pub fn python_with_numpy() -> Option<&'static Path> {
    let python = Path::new("/usr/bin/python3");
    let has_numpy = python.exists()
        && Command::new(python)
            .args(["-c", "import numpy"])
            .status()
            .is_ok_and(|s| s.success());
    has_numpy.then_some(python)
}
