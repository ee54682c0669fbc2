//! Boots a real Linux kernel under qemu with a busybox initramfs, runs a shell scenario in
//! it and hands back the serial console.
//!
//! Why a guest: the overcommit knobs are global and the machines that run these tests are
//! root, so writing the host's /proc/sys/vm would retune the machine itself. A throw-away
//! kernel is also the only way to learn what a real kernel answers.
//!
//! Layout of the cache ($OVERCOMMIT_VM_CACHE, default <repo>/target/vm-cache), filled by
//! scripts/setup-vm.sh:
//!   kernel/current/vmlinuz                      the guest kernel
//!   kernel/current/root/lib/modules/<ver>/...   its modules (virtio, not built in on Debian)
//!
//! Mind when writing scenarios: the initramfs is unpacked into a tmpfs root, and tmpfs pages
//! are charged to Committed_AS. Most of the guest's baseline Committed_AS (about 9 MB) is the
//! files in this archive, and in mode 2 writing files under / counts against CommitLimit
//! (ENOSPC at the limit).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Marker the epilogue prints once the scenario body has run; followed by `rc=<status>`.
const DONE_MARKER: &str = "OVERCOMMIT-VM-DONE";

/// Markers of `block TAG CMD...` in the guest (see [`Console::blocks`]).
const BLOCK_BEGIN: &str = "@@BEGIN ";
const BLOCK_END: &str = "@@END ";

/// Guests booted by this test process (whatever their outcome), for the suite's summary.
static BOOTS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Guests booted on this thread: a test's own count, whichever threads libtest uses.
    static THREAD_BOOTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many guests this test process has booted so far.
pub fn boots() -> usize {
    BOOTS.load(Ordering::SeqCst)
}

/// How many guests this thread has booted so far.
pub fn boots_on_this_thread() -> usize {
    THREAD_BOOTS.with(|n| n.get())
}

/// Counts one guest boot for the suite's summary. [`Vm::run`] calls it; a test that starts
/// qemu by other means calls it right before.
pub fn record_boot() {
    BOOTS.fetch_add(1, Ordering::SeqCst);
    THREAD_BOOTS.with(|n| n.set(n.get() + 1));
}

/// The virtio modules in dependency order (Debian ships no modules.dep in the package, and
/// busybox insmod does not resolve dependencies). Some kernels build a few of them in.
///
/// virtio-rng feeds the guest's CRNG from the host, as on a cloud VM (real hardware has
/// RDRAND). Without it the emulated CPU offers no entropy source and the CRNG stays
/// uninitialised until something calls getrandom(2) blocking: a program that only polls
/// /dev/random (the `getrandom` crate does, in a static glibc build, where its dlsym of
/// getrandom finds nothing) would wait forever.
pub const VIRTIO_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio-rng",
];

/// The unprivileged users the scenarios use: alice (1000) in group hpc (1000), bob (1001)
/// in his own group only.
const ETC_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
alice:x:1000:1000:alice:/home/alice:/bin/sh
bob:x:1001:1001:bob:/home/bob:/bin/sh
";
const ETC_GROUP: &str = "root:x:0:
hpc:x:1000:alice
bob:x:1001:
";

/// What the host must provide to boot a guest.
pub struct Host {
    pub repo: PathBuf,
    pub qemu: PathBuf,
    pub busybox: PathBuf,
    pub kernel: PathBuf,
    /// lib/modules/<version> of the guest kernel's package.
    pub modules: PathBuf,
    /// Whether to use KVM (opt-in: OVERCOMMIT_VM_KVM=1). KVM does not work on the
    /// project's own machines, so TCG is the default.
    pub kvm: bool,
}

/// The host's VM prerequisites, or None (after a loud message) when some are missing.
///
/// In CI (CI=true) a missing prerequisite is a failure, never a silent pass: the real-kernel
/// suite is the only check of the project's rules against a kernel.
pub fn host() -> Option<&'static Host> {
    static HOST: OnceLock<Result<Host, Vec<String>>> = OnceLock::new();
    match HOST.get_or_init(find_host) {
        Ok(host) => Some(host),
        Err(missing) => {
            let list = missing
                .iter()
                .map(|m| format!("  - {m}"))
                .collect::<Vec<_>>()
                .join("\n");
            crate::skip::skip(&format!(
                "the real-kernel (VM) tests cannot run: the host lacks\n{list}\n\
                 Install them with:  scripts/setup-vm.sh\n\
                 (only the guest kernel, no root needed:  scripts/setup-vm.sh --kernel)"
            ));
            None
        }
    }
}

fn find_host() -> Result<Host, Vec<String>> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cache = std::env::var_os("OVERCOMMIT_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/vm-cache"));
    let mut missing = Vec::new();

    let qemu = find_in_path("qemu-system-x86_64");
    if qemu.is_none() {
        missing.push("qemu-system-x86_64 (Debian package qemu-system-x86)".to_string());
    }

    // The guest has no libc: busybox must be the static build (busybox-static installs
    // /bin/busybox; a PATH entry may be the dynamic one from package busybox).
    let busybox = Some(PathBuf::from("/bin/busybox"))
        .filter(|p| p.is_file())
        .or_else(|| find_in_path("busybox"));
    match &busybox {
        None => missing.push("busybox (Debian package busybox-static)".to_string()),
        Some(path) if !is_static_elf(path) => missing.push(format!(
            "a static busybox: {} is dynamically linked (Debian package busybox-static)",
            path.display()
        )),
        Some(_) => {}
    }

    let current = cache.join("kernel/current");
    let kernel = current.join("vmlinuz");
    if !kernel.is_file() {
        missing.push(format!("the guest kernel {}", kernel.display()));
    }
    let modules = fs::read_dir(current.join("root/lib/modules"))
        .ok()
        .and_then(|dir| dir.flatten().map(|e| e.path()).find(|p| p.is_dir()));
    if modules.is_none() {
        missing.push(format!(
            "the guest kernel's modules {}",
            current.join("root/lib/modules/<version>").display()
        ));
    }

    match (qemu, busybox, modules) {
        (Some(qemu), Some(busybox), Some(modules)) if missing.is_empty() => Ok(Host {
            repo,
            qemu,
            busybox,
            kernel,
            modules,
            kvm: std::env::var("OVERCOMMIT_VM_KVM").as_deref() == Ok("1"),
        }),
        _ => Err(missing),
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// True for an x86-64 ELF executable without a PT_INTERP header (i.e. statically linked).
fn is_static_elf(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(data) = fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // ELF64, little endian.
    if data.get(0..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let entry = phoff as usize + i * phentsize as usize;
        u32_at(entry).is_some_and(|p_type| p_type != PT_INTERP)
    })
}

/// Static builds of the project's binaries, which run in the guest as they are.
pub struct GuestBins {
    pub overcommitctl: PathBuf,
    pub overcommitd: PathBuf,
    pub probe: PathBuf,
}

/// Builds the guest binaries once per test process.
///
/// A separate target dir: the outer `cargo test` holds the lock on the normal one. `--target`
/// is named so that only the target crates are linked statically, not build scripts or proc
/// macros. CARGO_ENCODED_RUSTFLAGS would take precedence over RUSTFLAGS, so it is removed.
pub fn guest_bins(host: &Host) -> &'static GuestBins {
    static BINS: OnceLock<GuestBins> = OnceLock::new();
    BINS.get_or_init(|| {
        const TARGET: &str = "x86_64-unknown-linux-gnu";
        let target_dir = host.repo.join("target/vm-build");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let started = Instant::now();
        let status = Command::new(&cargo)
            .args([
                "build",
                "--release",
                "--target",
                TARGET,
                "--bins",
                "--examples",
            ])
            .current_dir(&host.repo)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&cargo).display()));
        assert!(
            status.success(),
            "building the static guest binaries failed ({status}); \
             see the cargo output above"
        );
        eprintln!(
            "vm: static guest binaries ready in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let release = target_dir.join(TARGET).join("release");
        let bins = GuestBins {
            overcommitctl: release.join("overcommitctl"),
            overcommitd: release.join("overcommitd"),
            probe: release.join("examples/probe"),
        };
        for path in [&bins.overcommitctl, &bins.overcommitd, &bins.probe] {
            assert!(
                path.is_file(),
                "cargo build did not produce {}",
                path.display()
            );
        }
        bins
    })
}

/// One guest: its hardware, kernel command line and the files added to its initramfs.
pub struct Vm {
    name: String,
    memory_mib: u64,
    cpus: u32,
    swap_mib: Option<u64>,
    /// Whether /init runs `swapon` on the swap disk (else only `mkswap`).
    swapon_at_boot: bool,
    hugepages: Option<u32>,
    cmdline: Vec<String>,
    timeout: Duration,
    files: Vec<(String, FileSource)>,
}

enum FileSource {
    Bytes(Vec<u8>, u32),
    Host(PathBuf),
}

impl Vm {
    /// A guest with 512 MiB, 1 CPU, no swap, no huge pages, 120 s timeout. `name` labels the
    /// boot in messages.
    pub fn new(name: &str) -> Self {
        Vm {
            name: name.to_string(),
            memory_mib: 512,
            cpus: 1,
            swap_mib: None,
            swapon_at_boot: true,
            hugepages: None,
            cmdline: Vec::new(),
            timeout: Duration::from_secs(120),
            files: Vec::new(),
        }
    }

    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// A swap disk of this size (sparse raw image on /dev/vda, mkswap + swapon in /init).
    pub fn swap_mib(mut self, mib: u64) -> Self {
        self.swap_mib = Some(mib);
        self.swapon_at_boot = true;
        self
    }

    /// A swap disk of this size, formatted (mkswap) but not in use: the scenario turns it on
    /// with `swapon /dev/vda` when it wants to see swap appear.
    pub fn swap_disk_mib(mut self, mib: u64) -> Self {
        self.swap_mib = Some(mib);
        self.swapon_at_boot = false;
        self
    }

    /// This many 2 MiB huge pages reserved at boot (kernel command line `hugepages=N`).
    pub fn hugepages(mut self, pages: u32) -> Self {
        self.hugepages = Some(pages);
        self
    }

    #[allow(dead_code)] // builder API for scenarios to come
    /// An extra kernel command line word.
    pub fn cmdline(mut self, word: &str) -> Self {
        self.cmdline.push(word.to_string());
        self
    }

    #[allow(dead_code)] // builder API for scenarios to come
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    #[allow(dead_code)] // builder API for scenarios to come
    /// A file with these contents at `guest_path` (absolute), mode 0644.
    pub fn file(self, guest_path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.file_mode(guest_path, contents, 0o644)
    }

    #[allow(dead_code)] // builder API for scenarios to come
    pub fn file_mode(mut self, guest_path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push((
            guest_path.to_string(),
            FileSource::Bytes(contents.into(), mode),
        ));
        self
    }

    #[allow(dead_code)] // builder API for scenarios to come
    /// A copy of a host file (keeping its mode) at `guest_path` (absolute).
    pub fn host_file(mut self, guest_path: &str, host_path: &Path) -> Self {
        self.files.push((
            guest_path.to_string(),
            FileSource::Host(host_path.to_path_buf()),
        ));
        self
    }

    /// A short description of the guest hardware, for messages and fixture READMEs.
    pub fn describe(&self, host: &Host) -> String {
        let mut parts = vec![
            format!("-accel {}", if host.kvm { "kvm" } else { "tcg" }),
            format!("-m {}", self.memory_mib),
            format!("-smp {}", self.cpus),
        ];
        parts.push(match self.swap_mib {
            Some(mib) if self.swapon_at_boot => format!("swap disk {mib} MiB"),
            Some(mib) => format!("swap disk {mib} MiB (off at boot)"),
            None => "no swap".to_string(),
        });
        parts.push(match self.hugepages {
            Some(n) => format!("hugepages={n} (2 MiB)"),
            None => "no huge pages".to_string(),
        });
        if !self.cmdline.is_empty() {
            parts.push(format!("cmdline +\"{}\"", self.cmdline.join(" ")));
        }
        parts.join(", ")
    }

    /// Boots the guest, runs `body` (busybox sh, as root, after the standard prologue) and
    /// returns the console once the guest has powered off. Panics, with the console so far,
    /// when the guest times out, does not reach the end of the script, or the body exits
    /// non-zero.
    pub fn run(&self, host: &Host, body: &str) -> Console {
        let bins = guest_bins(host);
        let work = tempfile::Builder::new()
            .prefix("overcommit-vm-")
            .tempdir()
            .expect("temp dir for the guest");
        let initrd = work.path().join("initrd.gz");
        self.build_initramfs(host, bins, &work.path().join("root"), &initrd, body);

        let mut extra: Vec<std::ffi::OsString> = vec!["-device".into(), "virtio-rng-pci".into()];
        if let Some(mib) = self.swap_mib {
            let image = work.path().join("swap.img");
            // Sparse: costs no disk space until the guest writes to it.
            fs::File::create(&image)
                .and_then(|f| f.set_len(mib * 1024 * 1024))
                .expect("create the swap image");
            extra.push("-drive".into());
            extra.push(virtio_drive(&image));
        }
        let guest = Qemu {
            name: &self.name,
            memory_mib: self.memory_mib,
            cpus: self.cpus,
            cmdline: &self.kernel_cmdline(),
            extra: &extra,
            timeout: self.timeout,
        };
        let QemuRun {
            console,
            stderr: qemu_stderr,
            elapsed,
            exit,
        } = guest.boot(host, &initrd);
        eprintln!(
            "vm: {}: {} -> powered off in {:.1}s",
            self.name,
            self.describe(host),
            elapsed.as_secs_f64()
        );

        let report = |what: &str| -> ! {
            panic!(
                "vm {}: {what}\n--- console ---\n{console}\n--- qemu stderr ---\n{qemu_stderr}",
                self.name
            )
        };
        let Some(status) = exit else {
            report(&format!(
                "timed out after {}s (qemu killed)",
                self.timeout.as_secs()
            ));
        };
        let console = Console {
            text: console.clone(),
            boot_time: elapsed,
        };
        match console.marker_lines(DONE_MARKER).last() {
            None => report(&format!(
                "the guest did not reach the end of /init (qemu {status})"
            )),
            Some(rest) if rest.trim() != "rc=0" => {
                report(&format!("the scenario body failed ({})", rest.trim()))
            }
            Some(_) => {}
        }
        console
    }

    fn kernel_cmdline(&self) -> String {
        // panic=-1 reboots at once on a panic, and -no-reboot turns that into qemu exiting,
        // so a crashed guest ends the test instead of hanging until the timeout.
        let mut words = vec!["console=ttyS0", "panic=-1", "quiet"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        if let Some(n) = self.hugepages {
            words.push(format!("hugepages={n}"));
        }
        words.extend(self.cmdline.iter().cloned());
        words.join(" ")
    }

    fn build_initramfs(&self, host: &Host, bins: &GuestBins, root: &Path, out: &Path, body: &str) {
        let put = |guest_path: &str, source: &FileSource| {
            let dest = root.join(guest_path.trim_start_matches('/'));
            fs::create_dir_all(dest.parent().expect("guest path has a parent"))
                .expect("create initramfs dir");
            match source {
                FileSource::Host(path) => {
                    fs::copy(path, &dest).unwrap_or_else(|e| {
                        panic!("copy {} into the initramfs: {e}", path.display())
                    });
                }
                FileSource::Bytes(bytes, mode) => {
                    fs::write(&dest, bytes).expect("write initramfs file");
                    set_mode(&dest, *mode);
                }
            }
        };

        put("/bin/busybox", &FileSource::Host(host.busybox.clone()));
        put(
            "/bin/overcommitctl",
            &FileSource::Host(bins.overcommitctl.clone()),
        );
        put(
            "/bin/overcommitd",
            &FileSource::Host(bins.overcommitd.clone()),
        );
        put("/bin/probe", &FileSource::Host(bins.probe.clone()));

        let available = find_modules(&host.modules);
        let modules: Vec<&str> = VIRTIO_MODULES
            .iter()
            .copied()
            .filter(|name| match available.get(*name) {
                Some(path) => {
                    put(
                        &format!("/lib/modules/{name}.ko"),
                        &FileSource::Host(path.clone()),
                    );
                    true
                }
                // Not in the package: built into this kernel.
                None => false,
            })
            .collect();

        for (guest_path, source) in &self.files {
            put(guest_path, source);
        }
        put(
            "/init",
            &FileSource::Bytes(self.init_script(&modules, body).into_bytes(), 0o755),
        );
        pack_cpio(&host.busybox, root, out);
    }

    /// /init: the standard prologue, the scenario body in a subshell (so an `exit` in it
    /// still reaches the epilogue) and an epilogue that reports the body's status and
    /// powers off.
    fn init_script(&self, modules: &[&str], body: &str) -> String {
        let swap = match (self.swap_mib, self.swapon_at_boot) {
            // devtmpfs creates /dev/vda asynchronously once virtio_blk has probed the disk.
            (Some(_), true) => {
                "for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
if ! { mkswap /dev/vda >/dev/null && swapon /dev/vda; }; then
    echo 'init: swap setup on /dev/vda failed'
    poweroff -f
fi
"
            }
            (Some(_), false) => {
                "for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
if ! mkswap /dev/vda >/dev/null; then
    echo 'init: mkswap on /dev/vda failed'
    poweroff -f
fi
"
            }
            (None, _) => "",
        };
        format!(
            r#"#!/bin/busybox sh
# Generated by tests/vm/harness.rs.
/bin/busybox mkdir -p /proc /sys /dev /tmp /etc /root /sbin /usr/bin /usr/sbin /home/alice /home/bob
/bin/busybox mount -t devtmpfs devtmpfs /dev
# The archive was packed without root, so it has no /dev/console node of its own.
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# SeaBIOS leaves escape codes on the first console line: keep them off anything parsed.
echo
for m in {modules}; do
    insmod /lib/modules/$m.ko || echo "init: insmod $m failed (built in?)"
done
{swap}cat >/etc/passwd <<'EOF'
{passwd}EOF
cat >/etc/group <<'EOF'
{group}EOF
chown 1000:1000 /home/alice
chown 1001:1001 /home/bob
# dump FILE: print FILE between markers for Console::files().
dump() {{ echo "FILE-BEGIN $1"; cat "$1"; echo "FILE-END"; }}
# block TAG CMD...: CMD's output between markers and its exit status, for Console::blocks().
# No subshell, pipe or file: in mode 2 those would add to Committed_AS while CMD runs.
block() {{ _tag=$1; shift; echo "{begin}$_tag"; "$@"; echo "{end}$_tag rc=$?"; }}
(
{body}
# Not the body's last command: ash would exec that one in place of this subshell, and
# the subshell's own commit charge would vanish from Committed_AS just for it.
exit $?
)
echo "{done} rc=$?"
# exec: no fork needed, so the guest powers off even when a scenario exhausted its commit.
exec poweroff -f
"#,
            modules = modules.join(" "),
            passwd = ETC_PASSWD,
            group = ETC_GROUP,
            done = DONE_MARKER,
            begin = BLOCK_BEGIN,
            end = BLOCK_END,
        )
    }
}

/// name -> path of every `*.ko` under the kernel's module tree.
pub fn find_modules(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                stack.push(path);
            } else if path.extension() == Some(OsStr::new("ko")) {
                if let Some(stem) = path.file_stem().and_then(OsStr::to_str) {
                    found.insert(stem.to_string(), path.clone());
                }
            }
        }
    }
    found
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod initramfs file");
}

/// `busybox cpio -o -H newc -R 0:0 | gzip -1` over `root` (no root needed, and the host may
/// lack a cpio binary). Names are listed parents first: the kernel's unpacker does not create
/// missing directories.
pub fn pack_cpio(busybox: &Path, root: &Path, out: &Path) {
    let mut names = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut children: Vec<PathBuf> = fs::read_dir(root.join(&rel))
            .expect("read initramfs dir")
            .flatten()
            .map(|e| rel.join(e.file_name()))
            .collect();
        children.sort();
        for child in children.into_iter().rev() {
            if root.join(&child).is_dir() {
                stack.push(child.clone());
            }
            names.push(child);
        }
    }
    // Every directory is pushed to `names` before the stack hands out its children.
    let list: String = names.iter().map(|n| format!("{}\n", n.display())).collect();

    let out_file = fs::File::create(out).expect("create initrd");
    let mut cpio = Command::new(busybox)
        .args(["cpio", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null()) // it prints a block count
        .spawn()
        .expect("run busybox cpio");
    let gzip = Command::new("gzip")
        .arg("-1")
        .stdin(cpio.stdout.take().expect("cpio stdout"))
        .stdout(out_file)
        .spawn()
        .expect("run gzip (Debian package gzip)");
    cpio.stdin
        .take()
        .expect("cpio stdin")
        .write_all(list.as_bytes())
        .expect("feed the file list to cpio");
    let cpio_status = cpio.wait().expect("wait for cpio");
    let gzip_status = gzip.wait_with_output().expect("wait for gzip").status;
    assert!(
        cpio_status.success() && gzip_status.success(),
        "packing the initramfs failed: cpio {cpio_status}, gzip {gzip_status}"
    );
}

/// `file=PATH,if=virtio,format=raw`: a raw image as the guest's next /dev/vdX.
pub fn virtio_drive(image: &Path) -> std::ffi::OsString {
    let mut drive = std::ffi::OsString::from("file=");
    drive.push(image);
    drive.push(",if=virtio,format=raw");
    drive
}

/// One boot of the guest kernel with an initrd: TCG (KVM when the host opts in), stdin from
/// /dev/null, no network, `-no-reboot` (with `panic=-1` on the command line a crash ends
/// qemu), and killed after `timeout`.
pub struct Qemu<'a> {
    pub name: &'a str,
    pub memory_mib: u64,
    pub cpus: u32,
    pub cmdline: &'a str,
    /// Further qemu arguments (drives, devices).
    pub extra: &'a [std::ffi::OsString],
    pub timeout: Duration,
}

/// What a boot left: the serial console, qemu's stderr, how long it ran, and its exit
/// (`None`: timed out and killed).
pub struct QemuRun {
    pub console: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub exit: Option<std::process::ExitStatus>,
}

impl Qemu<'_> {
    pub fn boot(&self, host: &Host, initrd: &Path) -> QemuRun {
        let mut cmd = Command::new(&host.qemu);
        if host.kvm {
            cmd.args(["-accel", "kvm", "-cpu", "host"]);
        } else {
            cmd.args(["-accel", "tcg"]);
        }
        cmd.arg("-m")
            .arg(self.memory_mib.to_string())
            .arg("-smp")
            .arg(self.cpus.to_string())
            .arg("-kernel")
            .arg(&host.kernel)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(self.cmdline)
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .args(self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        record_boot();
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", host.qemu.display()));
        let stdout = capture(child.stdout.take());
        let stderr = capture(child.stderr.take());
        let exit = wait_with_timeout(&mut child, self.timeout);
        let run = QemuRun {
            console: normalize(&stdout.finish()),
            stderr: String::from_utf8_lossy(&stderr.finish()).into_owned(),
            elapsed: started.elapsed(),
            exit,
        };
        // Debugging aid: OVERCOMMIT_VM_CONSOLE=1 shows every console, not only failing ones.
        if std::env::var("OVERCOMMIT_VM_CONSOLE").as_deref() == Ok("1") {
            eprintln!(
                "--- console of {} ---\n{}\n--- end ---",
                self.name, run.console
            );
        }
        run
    }
}

/// A reader thread collecting a child's pipe, so qemu never blocks on a full pipe.
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

fn capture(pipe: Option<impl Read + Send + 'static>) -> Capture {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let thread = pipe.map(|mut pipe| {
        let buf = Arc::clone(&buf);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .expect("capture lock")
                    .extend_from_slice(&chunk[..n]);
            }
        })
    });
    Capture { buf, thread }
}

impl Capture {
    /// Everything read, once the child is gone (its pipe then reaches EOF).
    fn finish(mut self) -> Vec<u8> {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        std::mem::take(&mut *self.buf.lock().expect("capture lock"))
    }
}

/// The child's exit status, or None after killing it when `timeout` passed first.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for qemu") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Serial output uses CRLF; parsing wants plain lines.
fn normalize(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).replace('\r', "")
}

/// The guest's serial console after it powered off.
pub struct Console {
    pub text: String,
    /// From starting qemu to its exit.
    pub boot_time: Duration,
}

impl Console {
    /// For every line containing `marker` (anywhere: escape codes or kernel messages may
    /// precede it), the rest of the line after the marker.
    pub fn marker_lines<'a>(&'a self, marker: &str) -> Vec<&'a str> {
        self.text
            .lines()
            .filter_map(|line| line.find(marker).map(|i| &line[i + marker.len()..]))
            .collect()
    }

    /// Files the guest printed with `dump FILE` (between `FILE-BEGIN <path>` and `FILE-END`
    /// lines), by guest path. Each line keeps its newline, as in the original file.
    pub fn files(&self) -> BTreeMap<String, String> {
        files_in(&self.text)
    }

    /// The output of every `block TAG CMD...` of the guest, in console order.
    ///
    /// The guest prints `@@BEGIN TAG`, CMD's output, then `@@END TAG rc=N`. Markers are found
    /// anywhere on a line (kernel messages or escape codes may precede them).
    pub fn blocks(&self) -> Vec<Block> {
        let mut blocks = Vec::new();
        let mut current: Option<Block> = None;
        for line in self.text.lines() {
            if let Some(i) = line.find(BLOCK_BEGIN) {
                current = Some(Block {
                    tag: line[i + BLOCK_BEGIN.len()..].trim().to_string(),
                    text: String::new(),
                    rc: -1,
                });
                continue;
            }
            if let Some(i) = line.find(BLOCK_END) {
                let rest = &line[i + BLOCK_END.len()..];
                if let Some(mut block) = current.take() {
                    let (tag, rc) = rest.rsplit_once(" rc=").unwrap_or((rest, "-1"));
                    if tag.trim() == block.tag {
                        block.rc = rc.trim().parse().unwrap_or(-1);
                        blocks.push(block);
                    }
                }
                continue;
            }
            if let Some(block) = current.as_mut() {
                block.text.push_str(line);
                block.text.push('\n');
            }
        }
        blocks
    }

    /// The one block tagged `tag`; panics (with the console) when there is none or several.
    pub fn block(&self, tag: &str) -> Block {
        let mut found: Vec<Block> = self.blocks().into_iter().filter(|b| b.tag == tag).collect();
        if found.len() != 1 {
            panic!(
                "expected one block {tag:?} in the console, found {}\n--- console ---\n{}",
                found.len(),
                self.text
            );
        }
        found.remove(0)
    }

    /// The `PROBE ...` lines of `probe alloc`, in order.
    pub fn probes(&self) -> Vec<Probe> {
        self.marker_lines("PROBE ")
            .into_iter()
            .map(|rest| {
                Probe::parse(rest).unwrap_or_else(|| {
                    panic!(
                        "malformed probe line {rest:?}\n--- console ---\n{}",
                        self.text
                    )
                })
            })
            .collect()
    }
}

/// What one `block TAG CMD...` printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub tag: String,
    /// CMD's stdout (and whatever else reached the console meanwhile), one `\n` per line.
    pub text: String,
    /// CMD's exit status (-1 if the end marker was garbled).
    pub rc: i32,
}

impl Block {
    /// The JSON object CMD printed (the first `{` line onwards; anything after the object
    /// is ignored). Panics with the block's text when there is none.
    pub fn json(&self) -> serde_json::Value {
        let mut offset = 0;
        let mut start = None;
        for line in self.text.split_inclusive('\n') {
            if line.starts_with('{') {
                start = Some(offset);
                break;
            }
            offset += line.len();
        }
        let parsed = start.and_then(|start| {
            serde_json::Deserializer::from_str(&self.text[start..])
                .into_iter::<serde_json::Value>()
                .next()
                .and_then(Result::ok)
        });
        parsed.unwrap_or_else(|| {
            panic!(
                "block {:?} (rc={}) holds no JSON object:\n{}",
                self.tag, self.rc, self.text
            )
        })
    }

    /// The block's text as one trimmed value (`cat /proc/sys/...`).
    pub fn value(&self) -> &str {
        self.text.trim()
    }
}

/// One allocation attempt reported by `probe alloc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub bytes: u64,
    pub uid: u32,
    /// VmSize of the probe right before the mmap (total_vm in the kernel's check).
    pub vmsize_kb: u64,
    /// Committed_AS right before the mmap.
    pub committed_kb: u64,
    /// `OK`, `ENOMEM` or `E<errno>`.
    pub result: String,
}

impl Probe {
    /// Parses what follows `PROBE ` on a probe line.
    pub fn parse(rest: &str) -> Option<Probe> {
        let fields: BTreeMap<&str, &str> = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        Some(Probe {
            bytes: fields.get("bytes")?.parse().ok()?,
            uid: fields.get("uid")?.parse().ok()?,
            vmsize_kb: fields.get("vmsize_kb")?.parse().ok()?,
            committed_kb: fields.get("committed_kb")?.parse().ok()?,
            result: fields.get("result")?.to_string(),
        })
    }
}

/// The files printed with `dump FILE` or `probe snapshot` (between `FILE-BEGIN <path>` and
/// `FILE-END` lines) in `text`, by guest path. Each line keeps its newline.
pub fn files_in(text: &str) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match current.as_mut() {
            Some((_, contents)) if line.trim() != "FILE-END" => {
                contents.push_str(line);
                contents.push('\n');
            }
            Some(_) => {
                let (path, contents) = current.take().expect("inside a file");
                files.insert(path, contents);
            }
            None => {
                if let Some(i) = line.find("FILE-BEGIN ") {
                    let path = line[i + "FILE-BEGIN ".len()..].trim().to_string();
                    current = Some((path, String::new()));
                }
            }
        }
    }
    files
}
