//! What a site installs: the systemd units (checked by systemd's own tools), the shipped
//! configuration and profiles, the generated man pages and completions (rendered by man,
//! completed by bash), the Slurm hooks' settings file at its worst and the job scope's marker
//! files. (The hooks themselves run under a real Slurm in tests/slurm_leases.rs and
//! tests/slurm_job_scope.rs, the NHC check in tests/verify_nhc.rs, the Prometheus exporter in
//! tests/prometheus.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::run;

/// The profiles etc/overcommitd ships.
const SHIPPED_PROFILES: [&str; 5] = [
    "default",
    "kernel-default",
    "hpc-strict",
    "hpc-strict-swap",
    "bigmem",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn systemd_analyze_verify_is_clean() {
    let Some(analyze) = common::tools::systemd_analyze() else {
        return;
    };
    let dir = common::tools::daemon_units();
    let (code, out, err) = run(Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(dir.path().join("overcommitd.service"))
        .arg(dir.path().join("overcommitd.socket")));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        format!("{out}{err}").trim(),
        "",
        "systemd-analyze verify has complaints"
    );
}

#[test]
fn the_service_sandbox_rates_2_or_better() {
    let Some(analyze) = common::tools::systemd_analyze() else {
        return;
    };
    let (code, out, err) = run(Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(repo().join("systemd/overcommitd.service")));
    let text = format!("{out}{err}");
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    println!("systemd-analyze security: {}", line.trim());
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
    assert!(code == 0 || code == 1, "{text}");
}

#[test]
fn the_shipped_configuration_and_profiles_are_valid() {
    let output = Command::new(env!("CARGO_BIN_EXE_overcommitd"))
        .arg("--config")
        .arg(repo().join("etc/overcommitd/overcommitd.toml"))
        .arg("--check-config")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        out.contains("valid (5 profiles, 1 access rules, baseline the node's boot policy)"),
        "{out}"
    );
    let (code, out, _) = run(common::ctl()
        .arg("--config")
        .arg(repo().join("etc/overcommitd/overcommitd.toml"))
        .arg("--socket")
        .arg("/nonexistent/sock")
        .args(["profiles", "--json"]));
    assert_eq!(code, 0);
    let profiles: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = profiles["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in SHIPPED_PROFILES {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
}

fn example(name: &str) -> PathBuf {
    // Examples are built by `cargo test` next to the test binaries' directory.
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

#[test]
fn man_pages_have_the_sections_a_sysadmin_looks_for_and_render_cleanly() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = run(Command::new(example("package_assets")).arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let read = |p: &str| {
        std::fs::read_to_string(out.path().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let ctl = read("man/overcommitctl.1");
    assert!(
        ctl.contains(".TH overcommitctl 1"),
        "{}",
        &ctl[..200.min(ctl.len())]
    );
    let subcommands = [
        "status", "check", "top", "run", "lease", "release", "leases", "set", "apply", "verify",
        "profiles",
    ];
    let mut pages = vec![
        "man/overcommitctl.1".to_string(),
        "man/overcommitd.8".into(),
    ];
    for sub in subcommands {
        assert!(ctl.contains(sub), "overcommitctl.1 lacks {sub}");
        pages.push(format!("man/overcommitctl-{sub}.1"));
    }
    for page in &pages {
        let text = read(page);
        for section in [
            ".SH \"EXIT STATUS\"",
            ".SH ENVIRONMENT",
            ".SH FILES",
            ".SH EXAMPLES",
            ".SH \"SEE ALSO\"",
        ] {
            assert!(text.contains(section), "{page} lacks {section}");
        }
    }
    assert!(read("man/overcommitctl-status.1").contains("OVERCOMMIT_PROC_ROOT"));
    assert!(read("man/overcommitctl-run.1").contains(".B 125"));
    let daemon = read("man/overcommitd.8");
    assert!(
        daemon.contains(".TH overcommitd 8")
            && daemon.contains("check\\-config")
            && daemon.contains("profiles\\-dir")
            && daemon.contains(".B SIGHUP")
    );
    let toml = read("man/overcommitd.toml.5");
    for section in [".SH FILES", ".SH EXAMPLES", ".SH \"SEE ALSO\""] {
        assert!(toml.contains(section), "overcommitd.toml.5 lacks {section}");
    }
    // man itself renders every page without a warning.
    for page in pages.iter().chain([&"man/overcommitd.toml.5".to_string()]) {
        let output = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(out.path().join(page))
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8")
            .output();
        match output {
            Ok(o) => {
                let warnings = String::from_utf8_lossy(&o.stderr);
                assert!(
                    o.status.success() && warnings.trim().is_empty(),
                    "{page}: {warnings}"
                );
                assert!(o.stdout.len() > 500, "{page} renders to nothing");
            }
            Err(e) => {
                return common::skip::skip(&format!(
                    "man cannot run ({e}): apt-get install man-db groff-base"
                ))
            }
        }
    }
}

/// What bash completes for the words of `line` (the last one being completed), with the
/// packaged completion script and the built overcommitctl first in PATH.
fn bash_completions(script: &Path, line: &[&str]) -> Vec<String> {
    let ctl_dir = Path::new(env!("CARGO_BIN_EXE_overcommitctl"))
        .parent()
        .unwrap();
    let words: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\n_overcommitctl overcommitctl '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words.join(" "),
        line.len() - 1,
        line[line.len() - 1],
        line[line.len() - 2],
    );
    let (code, out, err) = run(common::clean("/bin/bash")
        .args(["--norc", "-c", &program])
        .env("PATH", format!("{}:/usr/bin:/bin", ctl_dir.display()))
        .env(
            "OVERCOMMIT_CONFIG",
            repo().join("etc/overcommitd/overcommitd.toml"),
        )
        .env("OVERCOMMIT_SOCKET", "/nonexistent/overcommitd.sock"));
    assert_eq!(code, 0, "{err}");
    out.lines().map(String::from).collect()
}

#[test]
fn completions_offer_modes_profiles_and_dtypes_and_files_only_for_paths() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = run(Command::new(example("package_assets")).arg(out.path()));
    assert_eq!(code, 0, "{err}");
    let bash = out.path().join("completions/overcommitctl");
    let modes = bash_completions(&bash, &["overcommitctl", "check", "--mode", ""]);
    assert_eq!(modes, ["heuristic", "always", "never"]);
    assert_eq!(
        bash_completions(&bash, &["overcommitctl", "set", "n"]),
        ["never"],
        "set MODE"
    );
    let profiles = bash_completions(&bash, &["overcommitctl", "apply", ""]);
    for name in SHIPPED_PROFILES {
        assert!(
            profiles.iter().any(|p| p == name),
            "{name} not in {profiles:?}"
        );
    }
    assert_eq!(
        bash_completions(&bash, &["overcommitctl", "verify", "hpc-strict-"]),
        ["hpc-strict-swap"]
    );
    let dtypes = bash_completions(&bash, &["overcommitctl", "check", "--dtype", "float"]);
    assert_eq!(dtypes, ["float64", "float32", "float16"]);
    // A number is not a file name.
    assert_eq!(
        bash_completions(&bash, &["overcommitctl", "check", "--ratio", "9"]),
        ["9"]
    );
    assert!(
        !bash_completions(&bash, &["overcommitctl", "check", "--proc-root", "/pro"]).is_empty(),
        "a directory is completed"
    );
    let zsh = std::fs::read_to_string(out.path().join("completions/_overcommitctl")).unwrap();
    assert!(zsh.starts_with("#compdef overcommitctl"));
    assert!(
        zsh.contains("_overcommitctl_profiles() {")
            && zsh.contains("':profile:_overcommitctl_profiles'")
            && zsh.contains("(heuristic always never)"),
        "zsh"
    );
    let fish = std::fs::read_to_string(out.path().join("completions/overcommitctl.fish")).unwrap();
    assert!(
        fish.contains("-f -a \"(overcommitctl profiles --names 2>/dev/null)\"")
            && fish.contains("-l mode")
            && fish.contains("heuristic"),
        "fish"
    );
}

/// A settings file with an error (a shell error would end a sourcing shell and fail the hook):
/// the hooks exit 0 with their defaults and say why; the TaskProlog prints nothing but its own
/// lines (Slurm reads its output).
#[test]
fn hooks_survive_a_broken_settings_file() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("overcommit.default");
    let log = dir.path().join("hooks.log");
    let hook = |name: &str, job: &str, comment: &str| {
        let mut command = common::clean("/bin/sh");
        command
            .arg(repo().join("contrib/slurm").join(name))
            .env("OVERCOMMIT_SLURM_CONF", &settings)
            .env("SLURM_JOB_ID", job)
            .env("SLURM_JOB_UID", "65534")
            .env("SLURM_JOB_COMMENT", comment)
            .env_remove("OVERCOMMIT_SCOPE")
            .env_remove("LD_PRELOAD")
            // Whatever the defaults reach, never a real daemon.
            .env("OVERCOMMIT_SOCKET", "/nonexistent/overcommitd.sock");
        command
    };
    for broken in ["export 1x=y\n", "if then fi\n", "exit 7\n", "echo junk\n"] {
        std::fs::write(
            &settings,
            format!("OVERCOMMIT_SLURM_LOG={}\n{broken}", log.display()),
        )
        .unwrap();
        for name in ["prolog.sh", "epilog.sh"] {
            let (code, out, err) = run(&mut hook(name, "77", "overcommit=always"));
            assert_eq!(code, 0, "{name} with {broken:?}: {out}{err}");
        }
        let (code, out, err) = run(hook("task_prolog.sh", "77", "")
            .env("OVERCOMMIT_SCOPE", "job")
            .env("OVERCOMMIT_PRELOAD_LIBRARY", "/nonexistent/lib.so"));
        assert_eq!(
            (
                code,
                out.lines().count(),
                out.starts_with("print overcommit: ")
            ),
            (0, 1, true),
            "task_prolog.sh with {broken:?}: {out}{err}"
        );
    }
    // The log file was named in the broken file itself, so nothing of it applied: the
    // hooks logged to syslog only. With a good file, they log there.
    let state = dir.path().join("state");
    let good = format!(
        "OVERCOMMIT_SLURM_LOG={}\nOVERCOMMITCTL=/nonexistent/overcommitctl\nSQUEUE=/nonexistent/squeue\nOVERCOMMIT_SLURM_STATE={}\n",
        log.display(),
        state.display()
    );
    std::fs::write(&settings, &good).unwrap();
    let (code, _, _) = run(&mut hook("prolog.sh", "78", "x overcommit=always y"));
    assert_eq!(code, 0);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("prolog job 78: squeue failed")
            && logged.contains("prolog job 78: no lease (always for uid 65534)"),
        "{logged}"
    );
    assert!(!state.exists(), "no marker asked for, no directory made");
}

/// The job scope's marker for the TaskProlog: prolog.sh writes it for a job whose comment holds
/// overcommit=job among other words (a lease asked beside it is asked all the same), 0644 in a
/// directory it makes 0755, and never where others may write; epilog.sh removes it.
#[test]
fn the_slurm_prolog_marks_the_jobs_that_ask_for_the_job_scope() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let (settings, log, state) = (
        dir.path().join("overcommit.default"),
        dir.path().join("hooks.log"),
        dir.path().join("state"),
    );
    std::fs::write(
        &settings,
        format!(
            "OVERCOMMIT_SLURM_LOG={}\nOVERCOMMITCTL=/nonexistent/overcommitctl\nSQUEUE=/nonexistent/squeue\nOVERCOMMIT_SLURM_STATE={}\n",
            log.display(),
            state.display()
        ),
    )
    .unwrap();
    let hook = |name: &str, job: &str, comment: &str| {
        let (code, out, err) = run(common::clean("/bin/sh")
            .arg(repo().join("contrib/slurm").join(name))
            .env("OVERCOMMIT_SLURM_CONF", &settings)
            .env("SLURM_JOB_ID", job)
            .env("SLURM_JOB_UID", "65534")
            .env("SLURM_JOB_COMMENT", comment));
        assert_eq!((code, out.as_str()), (0, ""), "{name} job {job}: {err}");
    };
    let logged = |job: &str| -> String {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!(" job {job}: ")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mode = |path: &Path| std::fs::symlink_metadata(path).unwrap().mode() & 0o7777;

    hook(
        "prolog.sh",
        "80",
        "project42 overcommit=job overcommit=always",
    );
    let marker = state.join("job-80");
    assert_eq!((mode(&state), mode(&marker)), (0o755, 0o644));
    assert_eq!(std::fs::symlink_metadata(&marker).unwrap().uid(), 0);
    assert_eq!(
        std::fs::read_dir(&state).unwrap().count(),
        1,
        "no temporary file left"
    );
    assert!(
        logged("80").contains("no lease (always for uid 65534)"),
        "the lease was asked as well: {}",
        logged("80")
    );
    hook("epilog.sh", "80", "");
    assert!(!marker.exists(), "removed by the epilog");
    assert!(logged("80").contains("epilog job 80: removed the job scope's marker"));
    // The epilog of a job without one says nothing of it.
    hook("epilog.sh", "81", "");
    assert!(!logged("81").contains("marker"), "{}", logged("81"));

    // A marker of an earlier job of the same id (its epilog never ran) goes when the new job
    // did not ask; a job id that is not digits touches nothing.
    std::fs::write(state.join("job-82"), "").unwrap();
    hook("prolog.sh", "82", "project42");
    assert!(!state.join("job-82").exists());
    hook("prolog.sh", "x/../82", "overcommit=job");
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);

    // A directory others may write: no marker (root would follow their links), and it says so.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    hook("prolog.sh", "83", "overcommit=job");
    assert!(!state.join("job-83").exists());
    assert!(
        logged("83").contains("that only root may write: no job scope"),
        "{}",
        logged("83")
    );
}
