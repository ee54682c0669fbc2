//! The packages as a site gets them, built the way scripts/build-deb.sh and scripts/build-rpm.sh
//! build them (release binaries in target/deb-build, shared with the VM suite's systemd guest),
//! and checked by the distributions' own tools: lintian on the .deb (no error, no warning),
//! rpm and rpmlint on the RPM for EL8/EL9 (its files, its %config(noreplace) files, no error
//! or warning under EL's settings), and the EL8 drop-in loaded by systemd with the unit.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::run;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The programs a test needs, or a recorded skip naming the missing ones.
fn have(programs: &[(&str, &str)]) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| common::slurm::find(program).is_none())
        .map(|(_, how)| *how)
        .collect();
    if !missing.is_empty() {
        common::skip::skip(&format!("the package checks need: {}", missing.join(", ")));
    }
    missing.is_empty()
}

/// Runs a build script with the shared release target dir; the path it prints.
fn build(script: &str) -> PathBuf {
    let (code, out, err) = run(Command::new(repo().join(script))
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", repo().join("target/deb-build"))
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET"));
    assert_eq!(code, 0, "{script}: {err}");
    let path = PathBuf::from(out.trim());
    assert!(path.is_file(), "{script} printed {out:?}");
    path
}

/// The two packages, built once per test process, one after the other (they share a build).
/// The process holds a lock on them until it exits: test processes running side by side
/// (nextest) would otherwise rewrite the files another one is reading.
fn packages() -> &'static (PathBuf, PathBuf) {
    type Held = nix::fcntl::Flock<std::fs::File>;
    static BUILT: OnceLock<(Held, (PathBuf, PathBuf))> = OnceLock::new();
    &BUILT
        .get_or_init(|| {
            let dir = repo().join("target/deb-build");
            std::fs::create_dir_all(&dir).unwrap();
            let lock = std::fs::File::create(dir.join(".packages.lock")).unwrap();
            let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .unwrap();
            let built = (build("scripts/build-deb.sh"), build("scripts/build-rpm.sh"));
            (held, built)
        })
        .1
}

const TOOLS: &[(&str, &str)] = &[
    ("cargo-deb", "cargo-deb (cargo install --locked cargo-deb)"),
    ("lintian", "lintian (apt-get install lintian)"),
    ("rpmbuild", "rpmbuild (apt-get install rpm)"),
    ("rpmlint", "rpmlint (apt-get install rpmlint)"),
];

#[test]
fn lintian_finds_no_error_and_no_warning_in_the_deb() {
    if !have(TOOLS) {
        return;
    }
    let (deb, _) = packages();
    let (code, out, err) = run(Command::new("lintian").arg(deb));
    let complaints: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    println!(
        "lintian {}: {} complaint(s)",
        deb.display(),
        complaints.len()
    );
    assert!(complaints.is_empty() && code == 0, "{out}{err}");
    let (_, contents, _) = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    for path in [
        "./usr/bin/overcommitctl",
        "./usr/sbin/overcommitd",
        "./usr/lib/overcommit/libovercommit_preload.so",
        "./etc/default/overcommit",
        "./usr/share/overcommit/contrib/prometheus/alerts.yml",
        "./usr/share/overcommit/contrib/ansible/roles/overcommit/tasks/main.yml",
        "./usr/share/overcommit/contrib/slurm/prolog.sh",
    ] {
        assert!(contents.contains(path), "{path} is not in the .deb");
    }
    let (_, conffiles, _) = run(Command::new("dpkg-deb")
        .args(["-I"])
        .arg(deb)
        .arg("conffiles"));
    for conffile in [
        "/etc/overcommitd/overcommitd.toml",
        "/etc/default/overcommit",
    ] {
        assert!(
            conffiles.contains(conffile),
            "{conffile} is not a conffile: {conffiles}"
        );
    }
}

#[test]
fn the_rpm_for_el_has_the_files_sites_need_and_rpmlint_passes() {
    if !have(TOOLS) {
        return;
    }
    let (_, rpm) = packages();
    let query = |args: &[&str]| {
        let (code, out, err) = run(Command::new("rpm").args(args).arg(rpm));
        assert_eq!(code, 0, "rpm {args:?}: {err}");
        out
    };
    let files = query(&["-qlp"]);
    for path in [
        "/usr/bin/overcommitctl",
        "/usr/sbin/overcommitd",
        "/usr/lib/overcommit/libovercommit_preload.so",
        "/usr/lib/systemd/system/overcommitd.service",
        "/usr/lib/systemd/system/overcommitd.socket",
        "/usr/lib/systemd/system/overcommitd.service.d/10-el8-compat.conf",
        "/usr/share/man/man1/overcommitctl.1.gz",
        "/usr/share/man/man1/overcommitctl-verify.1.gz",
        "/usr/share/man/man5/overcommitd.toml.5.gz",
        "/usr/share/man/man8/overcommitd.8.gz",
        "/usr/share/bash-completion/completions/overcommitctl",
        "/usr/share/zsh/site-functions/_overcommitctl",
        "/usr/share/fish/vendor_completions.d/overcommitctl.fish",
        "/usr/share/overcommit/contrib/slurm/prolog.sh",
        "/usr/share/overcommit/contrib/nhc/overcommit.nhc",
        "/usr/share/overcommit/contrib/prometheus/alerts.yml",
        "/usr/share/overcommit/contrib/ansible/roles/overcommit/tasks/main.yml",
    ] {
        assert!(
            files.lines().any(|l| l == path),
            "{path} is not in the RPM:\n{files}"
        );
    }
    let config = query(&["-qp", "--configfiles"]);
    for path in [
        "/etc/overcommitd/overcommitd.toml",
        "/etc/overcommitd/profiles.d/20-hpc.toml",
        "/etc/default/overcommit",
    ] {
        assert!(
            config.lines().any(|l| l == path),
            "{path} is not %config:\n{config}"
        );
    }
    // %config(noreplace): the file's flags include noreplace ("n" in --dump's flags is not
    // shown; rpm prints it with --qf).
    let flags = query(&["-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]"]);
    let toml = flags
        .lines()
        .find(|l| l.starts_with("/etc/overcommitd/overcommitd.toml "))
        .unwrap_or_else(|| panic!("{flags}"));
    assert!(toml.ends_with(" cn"), "config(noreplace): {toml}");
    let scripts = query(&["-qp", "--scripts"]);
    // The group is made; nothing is started or restarted (a restart ends every lease).
    let commands: Vec<&str> = scripts
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(
        commands
            .iter()
            .any(|l| l.contains("groupadd -r overcommit"))
            && !commands.iter().any(|l| l.contains("restart")
                || l.contains(" start ")
                || l.contains("enable --now")),
        "{scripts}"
    );
    let requires = query(&["-qpR"]);
    let glibc = requires
        .lines()
        .filter_map(|l| l.strip_prefix("libc.so.6(GLIBC_")?.split(')').next())
        .max_by(|a, b| {
            let v = |s: &str| {
                s.split('.')
                    .map(|n| n.parse::<u32>().unwrap_or(0))
                    .collect::<Vec<_>>()
            };
            v(a).cmp(&v(b))
        })
        .unwrap_or("?")
        .to_string();
    println!("the RPM built here needs glibc {glibc} (EL8 has 2.28, EL9 2.34): build it on the release it is for");

    let (code, out, err) = run(Command::new("rpmlint")
        .arg("-c")
        .arg(repo().join("rpm/rpmlint.toml"))
        .arg(rpm));
    let summary = out
        .lines()
        .find(|l| l.contains("packages and"))
        .unwrap_or_default()
        .to_string();
    println!("rpmlint: {summary}");
    assert!(
        code == 0 && summary.contains("0 errors, 0 warnings"),
        "{out}{err}"
    );
}

#[test]
fn the_el8_drop_in_loads_with_the_unit_and_only_adds_restrictions() {
    let Some(analyze) = common::tools::systemd_analyze() else {
        return;
    };
    let dir = common::tools::daemon_units();
    let dropins = dir.path().join("overcommitd.service.d");
    std::fs::create_dir(&dropins).unwrap();
    std::fs::copy(
        repo().join("rpm/overcommitd-el8.conf"),
        dropins.join("10-el8-compat.conf"),
    )
    .unwrap();
    let (code, out, err) = run(Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(dir.path().join("overcommitd.service")));
    assert_eq!((code, format!("{out}{err}").trim()), (0, ""), "{out}{err}");
    // Every directive of the drop-in is one systemd 239 knows: the five it lacks are named
    // in comments only.
    let dropin = std::fs::read_to_string(repo().join("rpm/overcommitd-el8.conf")).unwrap();
    let directives: Vec<&str> = dropin
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap())
        .collect();
    for directive in &directives {
        assert!(
            ["InaccessiblePaths", "SystemCallFilter"].contains(directive),
            "{directive} is not one systemd 239 has"
        );
    }
    for later in [
        "ProtectHostname",
        "RestrictSUIDSGID",
        "ProtectKernelLogs",
        "ProtectClock",
        "PrivateIPC",
    ] {
        assert!(
            dropin.contains(later),
            "the drop-in says what stands for {later}"
        );
    }
}
