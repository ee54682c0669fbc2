//! The packaged service under the real systemd: a Debian guest (debootstrap) boots with
//! systemd as PID 1, installs the .deb that `cargo deb` builds, and runs
//! tests/vm/systemd_guest.sh as a oneshot unit, which checks socket activation, Type=notify
//! with STATUS and the watchdog, the sandbox's write access to /proc/sys/vm, leases for an
//! allowed and a refused user, the packaged preload library (numpy in the job scope), a crash
//! and restart with a live lease, a refused reload and the journal. Each check ends in a `CHECK <name> PASS|FAIL <detail>` console line; the test
//! asserts that every expected check passed.
//!
//! What it needs besides the harness's prerequisites: cargo-deb, mkfs.ext4, and on the first
//! run (or after the cache is removed) root, debootstrap and a Debian mirror, which is taken at
//! run time from the machine's apt sources (or OVERCOMMIT_VM_MIRROR).
//!
//! Caches, under $OVERCOMMIT_VM_CACHE (default <repo>/target/vm-cache):
//!   debian-systemd/bookworm-<hash>/   the debootstrapped root file system, pruned (built
//!                                      into a temporary directory and renamed when complete)
//! and <repo>/target/deb-build for the release build behind the package (a target dir of its
//! own: the outer `cargo test` holds the lock of the normal one).
//!
//! Each run makes a fresh ext4 image of the cached tree with `mkfs.ext4 -d` (about a second,
//! no root or loop device); the per-run files (the .deb, the scenario, its unit) travel in the
//! busybox initrd, which copies them onto the mounted root before `switch_root /sbin/init`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::harness::{
    find_modules, host, pack_cpio, virtio_drive, Console, Host, Qemu, QemuRun, VIRTIO_MODULES,
};

/// The guest's release: the machine's own (the package is linked against its glibc).
const SUITE: &str = "bookworm";

/// Packages beyond debootstrap's minbase: systemd as init, what the scenario uses (numpy for
/// the seed, useradd and setpriv for the users) and nothing that starts a network.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "procps",
    "python3-numpy",
    "adduser",
    "passwd",
    "util-linux",
];

/// Bump when the preparation of the cached tree changes (it is part of the cache's name).
const ROOTFS_RECIPE: &str = "v1";

/// Runs in the guest, see its header.
const SCENARIO: &str = include_str!("systemd_guest.sh");

/// The unit that runs the scenario once the system is up, on the serial console.
const SCENARIO_UNIT: &str = "[Unit]
Description=overcommit systemd guest scenario (tests/vm/systemd_guest.sh)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/opt/overcommit-test/systemd_guest.sh
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
";

/// The checks the scenario must report, each with PASS.
const EXPECTED_CHECKS: &[&str] = &[
    "boot-policy",
    "install",
    "install-keeps-boot-policy",
    "runtime-policy-kept",
    "runtime-permissive-replaced",
    "units-enabled",
    "users",
    "baseline",
    "notify-status",
    "socket-activation",
    "sandbox-write",
    "seed-refused",
    "seed-lease",
    "job-scope-seed",
    "bob-denied",
    "status-current",
    "crash-restart",
    "holder-death",
    "reload-broken",
    "journal-audit",
    "journal-fields",
    "journal-priority",
    "watchdog",
    "textfile-unit",
    "el8-drop-in",
];

/// The node's boot policy: mode 2 from sysctl.d, applied by systemd-sysctl before the
/// package is installed (installing must leave it in force).
const BOOT_SYSCTL: &str = "# tests/vm/systemd_guest.rs: the node's own policy, set at boot\n\
vm.overcommit_ratio = 90\nvm.overcommit_memory = 2\n";

/// The last line of the scenario before it powers the guest off.
const DONE_MARKER: &str = "GUEST-TEST-DONE";

const GUEST_MEMORY_MIB: u64 = 1024;
/// Under TCG the guest runs for a little over a minute; a hung one is killed after this.
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// The test: builds (or reuses) the package and the root file system, boots the guest and
/// asserts every check of the scenario.
/// Returns false when it could not run (prerequisites missing outside CI; said loudly).
pub fn systemd_guest_runs_the_packaged_service() -> bool {
    let started = Instant::now();
    // Both are looked at before deciding, so that every missing piece is named at once:
    // host() reports what the harness lacks (or fails in CI), report_missing the rest.
    let extras = extra_prerequisites();
    let host = host();
    let extras = match extras {
        Ok(extras) => extras,
        Err(missing) => {
            report_missing(&missing);
            return false;
        }
    };
    let Some(host) = host else { return false };

    let deb = package(&host.repo);
    let deb_done = started.elapsed();
    let rootfs = rootfs(&extras);
    let rootfs_done = started.elapsed();
    let console = boot(host, &extras, &rootfs, deb);
    eprintln!(
        "systemd guest: package ready at {:.1}s, root file system at {:.1}s, guest powered off \
         after {:.1}s; test total {:.1}s",
        deb_done.as_secs_f64(),
        rootfs_done.as_secs_f64(),
        console.boot_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_checks(&console);
    true
}

/// What this test needs beyond the harness's Host.
struct Extras {
    cache: PathBuf,
    mkfs: PathBuf,
    /// Needed only to build the root file system (debootstrap and its mirror).
    debootstrap: Option<(PathBuf, String)>,
}

fn vm_cache(repo: &Path) -> PathBuf {
    std::env::var_os("OVERCOMMIT_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/vm-cache"))
}

fn rootfs_dir(cache: &Path) -> PathBuf {
    cache
        .join("debian-systemd")
        .join(format!("{SUITE}-{:016x}", recipe_hash()))
}

fn extra_prerequisites() -> Result<Extras, Vec<String>> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = vm_cache(repo);
    let mut missing = Vec::new();

    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let cargo_deb = find_program("cargo-deb").or_else(|| {
        cargo_home
            .map(|h| h.join("bin/cargo-deb"))
            .filter(|p| p.is_file())
    });
    if cargo_deb.is_none() {
        missing.push("cargo-deb (cargo install --locked cargo-deb)".to_string());
    }
    let mkfs = find_program("mkfs.ext4");
    if mkfs.is_none() {
        missing.push("mkfs.ext4 (Debian package e2fsprogs; scripts/setup-vm.sh)".to_string());
    }
    if find_program("gzip").is_none() {
        missing.push("gzip (Debian package gzip)".to_string());
    }

    // The root file system is built once; only then are debootstrap, root and a mirror needed.
    let mut debootstrap = None;
    if !rootfs_dir(&cache).is_dir() {
        let program = find_program("debootstrap");
        if program.is_none() {
            missing.push(
                "debootstrap, to build the guest's root file system once \
                 (Debian package debootstrap; scripts/setup-vm.sh)"
                    .to_string(),
            );
        }
        if !nix::unistd::geteuid().is_root() {
            missing.push(
                "root, to build the guest's root file system once with debootstrap".to_string(),
            );
        }
        let mirror = debian_mirror();
        if mirror.is_none() {
            missing.push(format!(
                "a Debian mirror for debootstrap: none of the apt sources \
                 (/etc/apt/sources.list.d/*.sources, /etc/apt/sources.list) names {SUITE}; \
                 set OVERCOMMIT_VM_MIRROR"
            ));
        }
        debootstrap = program.zip(mirror);
    }

    match mkfs {
        Some(mkfs) if missing.is_empty() => Ok(Extras {
            cache,
            mkfs,
            debootstrap,
        }),
        _ => Err(missing),
    }
}

/// Loud outside CI, a failure in CI (CI=true): never a silent pass.
fn report_missing(missing: &[String]) {
    let list = missing
        .iter()
        .map(|m| format!("  - {m}"))
        .collect::<Vec<_>>()
        .join("\n");
    crate::skip::skip(&format!(
        "the systemd guest test (the packaged service under real systemd) cannot run: the host lacks\n\
         {list}\n\
         scripts/setup-vm.sh installs qemu, busybox, debootstrap and e2fsprogs;\n\
         cargo install --locked cargo-deb installs cargo-deb."
    ));
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The mirror of the machine's own Debian sources: the first URI of a deb822 stanza (or a
/// one-line `deb` entry) whose suites include SUITE itself. OVERCOMMIT_VM_MIRROR overrides.
fn debian_mirror() -> Option<String> {
    if let Some(mirror) = std::env::var_os("OVERCOMMIT_VM_MIRROR") {
        return Some(mirror.to_string_lossy().into_owned());
    }
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for file in files
        .iter()
        .filter(|p| p.extension() == Some(OsStr::new("sources")))
    {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    (key.trim().eq_ignore_ascii_case(name)).then(|| value.trim().to_string())
                })
            };
            let has_suite =
                field("Suites").is_some_and(|suites| suites.split_whitespace().any(|s| s == SUITE));
            let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
            let enabled = field("Enabled").is_none_or(|e| e != "no");
            if has_suite && is_deb && enabled {
                if let Some(uri) = field("URIs").and_then(|u| {
                    u.split_whitespace()
                        .find(|u| u.starts_with("http"))
                        .map(String::from)
                }) {
                    return Some(uri);
                }
            }
        }
    }
    // One-line style: `deb [options] URI SUITE COMPONENTS...`.
    let mut lists = vec![PathBuf::from("/etc/apt/sources.list")];
    lists.extend(
        files
            .into_iter()
            .filter(|p| p.extension() == Some(OsStr::new("list"))),
    );
    for file in lists {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("deb") {
                continue;
            }
            let mut words = words.skip_while(|w| w.starts_with('['));
            // Options may hold spaces: `[ arch=amd64 ]`.
            let (Some(uri), Some(suite)) = (words.find(|w| w.contains("://")), words.next()) else {
                continue;
            };
            if suite == SUITE {
                return Some(uri.to_string());
            }
        }
    }
    None
}

/// FNV-1a over the recipe of the cached tree: the suite, the packages, the recipe version.
fn recipe_hash() -> u64 {
    let recipe = format!("{SUITE} {} {ROOTFS_RECIPE}", PACKAGES.join(","));
    recipe.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs a command to completion, panicking with `what` and its status on failure.
fn run_checked(cmd: &mut Command, what: &str) {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(status.success(), "{what} failed ({status})");
}

/// Builds the .deb once per test process, the way scripts/build-deb.sh does, in a target dir
/// of its own. cargo-deb maps the `target/release/...` assets of Cargo.toml to the target dir
/// in force; the generated man pages and completions are read from <repo>/target/assets.
fn package(repo: &Path) -> &'static PathBuf {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let started = Instant::now();
        let target_dir = repo.join("target/deb-build");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let cargo_cmd = || {
            let mut cmd = Command::new(&cargo);
            cmd.current_dir(repo)
                .env("CARGO_TARGET_DIR", &target_dir)
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("CARGO_BUILD_TARGET");
            cmd
        };
        run_checked(
            cargo_cmd().args([
                "run",
                "--release",
                "--locked",
                "--quiet",
                "--example",
                "package_assets",
                "--",
                "target/assets",
            ]),
            "generating the man pages and completions (cargo run --example package_assets)",
        );
        let output = cargo_cmd()
            .args(["deb", "--locked"])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo deb: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "cargo deb failed ({}):\n{stdout}",
            output.status
        );
        // cargo-deb prints the path of the package it wrote.
        let deb = stdout
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.ends_with(".deb"))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("cargo deb named no .deb:\n{stdout}"));
        assert!(deb.is_file(), "cargo deb did not write {}", deb.display());
        eprintln!(
            "systemd guest: {} built in {:.1}s",
            deb.display(),
            started.elapsed().as_secs_f64()
        );
        deb
    })
}

/// An exclusive flock on `path` for as long as the returned file lives.
fn lock(path: &Path) -> fs::File {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open the lock {}: {e}", path.display()));
    // SAFETY: flock on a descriptor this function owns; it only blocks.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    file
}

/// The cached root file system, built first if missing.
fn rootfs(extras: &Extras) -> PathBuf {
    let final_dir = rootfs_dir(&extras.cache);
    if final_dir.is_dir() {
        return final_dir;
    }
    let parent = final_dir.parent().expect("cache dir has a parent");
    fs::create_dir_all(parent).expect("create the rootfs cache dir");
    // One builder at a time (another test process may be at it); leftovers of an interrupted
    // build are only ever `*.tmp` directories, never the final name.
    let _lock = lock(&parent.join(".lock"));
    if final_dir.is_dir() {
        return final_dir;
    }
    for entry in fs::read_dir(parent)
        .expect("read the rootfs cache dir")
        .flatten()
    {
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            remove_tree(&entry.path());
        }
    }
    let (debootstrap, mirror) = extras
        .debootstrap
        .as_ref()
        .expect("debootstrap was checked for when the cache was missing");
    let tmp = parent.join(format!(
        "{}.tmp",
        final_dir.file_name().unwrap().to_string_lossy()
    ));
    let started = Instant::now();
    eprintln!(
        "systemd guest: debootstrap {SUITE} from {mirror} into {} (once; about 1.5 min)",
        tmp.display()
    );
    let log = parent.join("debootstrap.log");
    let log_file = fs::File::create(&log).expect("create debootstrap.log");
    // timeout(1): debootstrap unmounts what it mounted in the tree on TERM.
    let status = Command::new("timeout")
        .args(["--kill-after=30", "1800"])
        .arg(debootstrap)
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&tmp)
        .arg(mirror)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("dup log"))
        .stderr(log_file)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", debootstrap.display()));
    if !status.success() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        remove_tree(&tmp);
        panic!(
            "debootstrap failed ({status}); the end of {}:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    prepare_rootfs(&tmp);
    assert!(
        mounts_below(&tmp).is_empty(),
        "debootstrap left mounts in {}",
        tmp.display()
    );
    fs::rename(&tmp, &final_dir)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), final_dir.display()));
    eprintln!(
        "systemd guest: root file system ready in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        final_dir.display()
    );
    final_dir
}

/// What is the same for every run: fewer bytes to copy into each image (apt's downloaded
/// packages and lists, documentation), a name, and nothing that runs apt or fstrim behind
/// the scenario's back.
fn prepare_rootfs(root: &Path) {
    for dir in [
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
    ] {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let keep = path
                .file_name()
                .is_some_and(|n| n == "partial" || n == "lock");
            if keep {
                continue;
            }
            if path.is_dir() && !path.is_symlink() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            }
            .unwrap_or_else(|e| panic!("prune {}: {e}", path.display()));
        }
    }
    for cache in ["pkgcache.bin", "srcpkgcache.bin"] {
        let _ = fs::remove_file(root.join("var/cache/apt").join(cache));
    }
    if let Ok(timers) = fs::read_dir(root.join("etc/systemd/system/timers.target.wants")) {
        for timer in timers.flatten() {
            let _ = fs::remove_file(timer.path());
        }
    }
    fs::write(root.join("etc/hostname"), "overcommit-guest\n").expect("write /etc/hostname");
    fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost\n127.0.1.1 overcommit-guest\n",
    )
    .expect("write /etc/hosts");
    fs::write(
        root.join("etc/fstab"),
        "/dev/vda / ext4 rw,errors=remount-ro 0 0\n",
    )
    .expect("write /etc/fstab");
}

/// Mount points at or below `dir` (from /proc/self/mountinfo), deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts
}

/// Removes a (possibly half-built) tree: first whatever an interrupted debootstrap left
/// mounted in it (its /proc, /sys), and never across a file system boundary.
fn remove_tree(dir: &Path) {
    for mount in mounts_below(dir) {
        let _ = Command::new("umount").arg("--lazy").arg(&mount).status();
    }
    let left = mounts_below(dir);
    assert!(
        left.is_empty(),
        "cannot remove {}: still mounted: {left:?}",
        dir.display()
    );
    run_checked(
        Command::new("rm")
            .args(["-rf", "--one-file-system", "--"])
            .arg(dir),
        &format!("rm -rf {}", dir.display()),
    );
}

fn put(root: &Path, guest_path: &str, contents: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let dest = root.join(guest_path.trim_start_matches('/'));
    fs::create_dir_all(dest.parent().expect("guest path has a parent")).expect("create dir");
    fs::write(&dest, contents).unwrap_or_else(|e| panic!("write {}: {e}", dest.display()));
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// /init of the initrd: load virtio, mount the disk, copy the per-run files onto it, wire the
/// scenario's unit in, and hand over to systemd.
fn init_script(modules: &[&str]) -> String {
    format!(
        r#"#!/bin/busybox sh
# Generated by tests/vm/systemd_guest.rs.
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t devtmpfs devtmpfs /dev
# Packed without root: no /dev/console node in the archive.
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# SeaBIOS leaves escape codes on the first console line.
echo
fail() {{ echo "initrd: $*"; poweroff -f; }}
for m in {modules}; do
    insmod /lib/modules/$m.ko || echo "initrd: insmod $m failed (built in?)"
done
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 -o rw /dev/vda /newroot || fail "cannot mount /dev/vda"
cp -a /payload/. /newroot/ || fail "cannot copy the payload"
cd /newroot/etc/systemd/system || fail "no /etc/systemd/system in the image"
# The scenario owns the serial console: no login prompt on it.
ln -sf /dev/null serial-getty@ttyS0.service
mkdir -p multi-user.target.wants
ln -sf /etc/systemd/system/overcommit-guest-test.service multi-user.target.wants/
cd /
umount /proc
umount /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"#,
        modules = modules.join(" ")
    )
}

/// Makes this run's disk and initrd, boots the guest and returns its console once it has
/// powered off. Panics with the console when it timed out or never finished the scenario.
fn boot(host: &Host, extras: &Extras, rootfs: &Path, deb: &Path) -> Console {
    let work = tempfile::Builder::new()
        .prefix("overcommit-systemd-guest-")
        .tempdir()
        .expect("temp dir for the guest");
    let image = work.path().join("root.ext4");
    let started = Instant::now();
    // Created first: mkfs.ext4 announces a file it has to create, even with -q.
    fs::File::create(&image).expect("create the disk image");
    run_checked(
        Command::new(&extras.mkfs)
            .args(["-q", "-F", "-t", "ext4", "-L", "overcommit-root", "-d"])
            .arg(rootfs)
            .arg(&image)
            .arg("1G"),
        "mkfs.ext4 -d (the guest's disk image)",
    );
    eprintln!(
        "systemd guest: disk image made in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let initrd_root = work.path().join("initrd");
    let busybox = fs::read(&host.busybox).expect("read busybox");
    put(&initrd_root, "/bin/busybox", &busybox, 0o755);
    let available = find_modules(&host.modules);
    let mut modules = Vec::new();
    for name in VIRTIO_MODULES {
        if let Some(path) = available.get(*name) {
            let ko = fs::read(path).expect("read module");
            put(&initrd_root, &format!("/lib/modules/{name}.ko"), &ko, 0o644);
            modules.push(*name);
        }
    }
    let payload = |path: &str| format!("/payload{path}");
    let deb_bytes = fs::read(deb).unwrap_or_else(|e| panic!("read {}: {e}", deb.display()));
    let deb_name = deb
        .file_name()
        .expect("the .deb has a name")
        .to_string_lossy();
    put(
        &initrd_root,
        &payload(&format!("/opt/overcommit-test/{deb_name}")),
        &deb_bytes,
        0o644,
    );
    put(
        &initrd_root,
        &payload("/opt/overcommit-test/systemd_guest.sh"),
        SCENARIO.as_bytes(),
        0o755,
    );
    put(
        &initrd_root,
        &payload("/etc/sysctl.d/60-overcommit-test.conf"),
        BOOT_SYSCTL.as_bytes(),
        0o644,
    );
    put(
        &initrd_root,
        &payload("/opt/overcommit-test/overcommitd-el8.conf"),
        &fs::read(host.repo.join("rpm/overcommitd-el8.conf"))
            .expect("read rpm/overcommitd-el8.conf"),
        0o644,
    );
    put(
        &initrd_root,
        &payload("/etc/systemd/system/overcommit-guest-test.service"),
        SCENARIO_UNIT.as_bytes(),
        0o644,
    );
    put(
        &initrd_root,
        "/init",
        init_script(&modules).as_bytes(),
        0o755,
    );
    let initrd = work.path().join("initrd.gz");
    pack_cpio(&host.busybox, &initrd_root, &initrd);

    let extra = vec![
        "-drive".into(),
        virtio_drive(&image),
        "-device".into(),
        "virtio-rng-pci".into(),
    ];
    let guest = Qemu {
        name: "systemd guest",
        memory_mib: GUEST_MEMORY_MIB,
        cpus: 1,
        // panic=-1 plus -no-reboot: a crashed guest ends qemu instead of hanging.
        cmdline:
            "console=ttyS0 panic=-1 quiet systemd.firstboot=off systemd.unit=multi-user.target",
        extra: &extra,
        timeout: GUEST_TIMEOUT,
    };
    let QemuRun {
        console: text,
        stderr: qemu_stderr,
        elapsed,
        exit: status,
    } = guest.boot(host, &initrd);
    eprintln!(
        "systemd guest: -accel {}, -m {GUEST_MEMORY_MIB}, -smp 1: powered off in {:.1}s",
        if host.kvm { "kvm" } else { "tcg" },
        elapsed.as_secs_f64()
    );
    let console = Console {
        text,
        boot_time: elapsed,
    };
    let problem = match status {
        None => Some(format!(
            "timed out after {}s (qemu killed)",
            GUEST_TIMEOUT.as_secs()
        )),
        Some(_) if console.marker_lines(DONE_MARKER).is_empty() => Some(format!(
            "the guest powered off (qemu {}) before the scenario's end",
            status.expect("exited")
        )),
        Some(_) => None,
    };
    if let Some(problem) = problem {
        let summary = check_summary(&console);
        panic!(
            "systemd guest: {problem}\n--- console ---\n{}\n--- qemu stderr ---\n{qemu_stderr}\n\
             --- checks so far ---\n{summary}",
            console.text
        );
    }
    console
}

/// name -> (passed, detail) of every CHECK line.
fn checks(console: &Console) -> BTreeMap<String, (bool, String)> {
    let mut found = BTreeMap::new();
    for rest in console.marker_lines("CHECK ") {
        let mut words = rest.splitn(3, ' ');
        let (Some(name), Some(verdict)) = (words.next(), words.next()) else {
            continue;
        };
        let detail = words.next().unwrap_or("").to_string();
        found.insert(name.to_string(), (verdict == "PASS", detail));
    }
    found
}

fn check_summary(console: &Console) -> String {
    checks(console)
        .iter()
        .map(|(name, (ok, detail))| {
            format!("{} {name}: {detail}\n", if *ok { "PASS" } else { "FAIL" })
        })
        .collect()
}

/// The console lines of one check: from its `CHECK-BEGIN` line to its verdict.
fn excerpt(console: &Console, name: &str) -> String {
    let begin = format!("CHECK-BEGIN {name} ");
    let verdict = format!("CHECK {name} ");
    let mut lines = Vec::new();
    let mut inside = false;
    for line in console.text.lines() {
        if line.contains(&begin) {
            inside = true;
        }
        if inside {
            lines.push(line);
            if line.contains(&verdict) {
                break;
            }
        }
    }
    lines.join("\n")
}

fn assert_checks(console: &Console) {
    let found = checks(console);
    eprint!("systemd guest checks:\n{}", check_summary(console));
    let mut failures = Vec::new();
    for name in EXPECTED_CHECKS {
        match found.get(*name) {
            Some((true, _)) => {}
            Some((false, detail)) => failures.push(format!(
                "check {name} FAILED: {detail}\n--- console of the check ---\n{}\n",
                excerpt(console, name)
            )),
            None => failures.push(format!("check {name} was not reported by the guest\n")),
        }
    }
    let unexpected: Vec<&String> = found
        .keys()
        .filter(|name| !EXPECTED_CHECKS.contains(&name.as_str()))
        .collect();
    if !unexpected.is_empty() {
        failures.push(format!(
            "the guest reported checks this test does not know: {unexpected:?}\n"
        ));
    }
    if !failures.is_empty() {
        let tail: Vec<&str> = console.text.lines().rev().take(80).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "systemd guest: {} of {} checks failed\n\n{}\n--- end of the console ---\n{}",
            failures.len(),
            EXPECTED_CHECKS.len(),
            failures.join("\n"),
            tail.join("\n")
        );
    }
}
