//! Real-kernel fixtures: tests/fixtures/kernels/<name>/ holds, per guest of a matrix, a
//! snapshot of its /proc files and the verdicts the real kernel gave for a set of
//! allocations around its limits. Unit tests of the predictor replay them without a VM.
//!
//! Per fixture:
//!   proc/...    meminfo, swaps, stat, cpuinfo, sys/kernel/osrelease, sys/vm/* as the guest
//!               had them right before the probes (knobs already set)
//!   cases.tsv   bytes, uid, vmsize_kb, committed_kb, result (OK or ENOMEM), one row per mmap
//!   README      how it was generated

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::harness::{Console, Host, Probe, Vm};

struct Guest {
    name: &'static str,
    memory_mib: u64,
    cpus: u32,
    swap_mib: Option<u64>,
    hugepages: Option<u32>,
    /// vm sysctls written before the mode, in this order (writing overcommit_kbytes zeroes
    /// overcommit_ratio and the reverse, so only one of them is written).
    knobs: &'static [(&'static str, u64)],
    /// vm.overcommit_memory, written last: in mode 2 the limit must already be right.
    mode: u8,
}

const fn guest(name: &'static str, memory_mib: u64, mode: u8) -> Guest {
    Guest {
        name,
        memory_mib,
        cpus: 1,
        swap_mib: None,
        hugepages: None,
        knobs: &[],
        mode,
    }
}

const MATRIX: &[Guest] = &[
    guest("m512-noswap-mode0", 512, 0),
    Guest {
        swap_mib: Some(512),
        ..guest("m1024-swap512-mode0", 1024, 0)
    },
    guest("m512-noswap-mode1", 512, 1),
    Guest {
        knobs: &[("overcommit_ratio", 50)],
        ..guest("m512-noswap-mode2-ratio50", 512, 2)
    },
    Guest {
        swap_mib: Some(512),
        knobs: &[("overcommit_ratio", 80)],
        ..guest("m1024-swap512-mode2-ratio80", 1024, 2)
    },
    Guest {
        swap_mib: Some(256),
        knobs: &[("overcommit_kbytes", 300_000)],
        ..guest("m512-swap256-mode2-kbytes300000", 512, 2)
    },
    Guest {
        hugepages: Some(64),
        knobs: &[("overcommit_ratio", 60)],
        ..guest("m1024-huge64-mode2-ratio60", 1024, 2)
    },
    Guest {
        swap_mib: Some(256),
        knobs: &[
            ("overcommit_ratio", 70),
            ("admin_reserve_kbytes", 65536),
            ("user_reserve_kbytes", 262_144),
        ],
        ..guest("m1024-swap256-mode2-ratio70-reserves", 1024, 2)
    },
    Guest {
        cpus: 2,
        knobs: &[("overcommit_ratio", 90)],
        ..guest("m1024-2cpu-mode2-ratio90", 1024, 2)
    },
];

/// The /proc files a fixture keeps (the inputs of the rules and of the tool's report).
const PROC_FILES: &[&str] = &[
    "/proc/meminfo",
    "/proc/swaps",
    "/proc/stat",
    "/proc/cpuinfo",
    "/proc/sys/kernel/osrelease",
    "/proc/sys/vm/overcommit_memory",
    "/proc/sys/vm/overcommit_ratio",
    "/proc/sys/vm/overcommit_kbytes",
    "/proc/sys/vm/admin_reserve_kbytes",
    "/proc/sys/vm/user_reserve_kbytes",
    "/proc/sys/vm/max_map_count",
    "/proc/sys/vm/swappiness",
    "/proc/sys/vm/nr_hugepages",
];

/// Guest script: set the knobs, work out sizes around this guest's limits from its live
/// state, dump the /proc files, then probe every size as root and as alice (uid 1000).
///
/// The sizes are computed in the guest because the limits depend on the booted kernel's
/// memory map. A first, silent probe measures what a probe process sees right before its
/// mmap (Committed_AS including the probe's own mappings, and its VmSize), so the sizes land
/// on the kernel's exact boundaries rather than a few hundred kB off.
const BODY: &str = r#"
@KNOBS@
echo @MODE@ > /proc/sys/vm/overcommit_memory
kb() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
cal=$(probe alloc --uid 1000 --gid 1000 4096)
field() { echo "$cal" | sed -n "s/.* $1=\([0-9]*\).*/\1/p"; }
sizes=$(awk -v mode=@MODE@ -v mem="$(kb MemTotal)" -v swap="$(kb SwapTotal)" \
    -v limit="$(kb CommitLimit)" -v committed="$(field committed_kb)" \
    -v vmsize="$(field vmsize_kb)" -v admin="$(cat /proc/sys/vm/admin_reserve_kbytes)" \
    -v user="$(cat /proc/sys/vm/user_reserve_kbytes)" '
function out(x) { if (x > 0) printf "%.0f\n", x }
function around(p,    i) { for (i = 1; i <= n; i++) out(p + off[i]) }
BEGIN {
    MiB = 1048576
    if (mode == 2) {
        n = split("-268435456 -134217728 -67108864 -16777216 -4194304 -1048576 -4096 0 " \
                  "4096 1048576 4194304 16777216 67108864 134217728", off, " ")
        # __vm_enough_memory: allowed = CommitLimit - admin reserve (non-root only)
        #   - min(total_vm / 32, user reserve), in pages; refused unless committed + req < allowed.
        userdrop = int(int(vmsize / 4) / 32)
        if (userdrop > int(user / 4)) userdrop = int(user / 4)
        root = (limit - committed - userdrop * 4) * 1024
        around(root)
        around(root - int(admin / 4) * 4096)
        out(352800000000); out(64 * MiB)
    } else {
        n = split("-67108864 -1048576 -4096 0 4096 1048576 67108864", off, " ")
        around((mem + swap) * 1024)
        out(352800000000); out(1024 * MiB); out(64 * MiB)
    }
}' | sort -n | uniq)
if [ -z "$cal" ] || [ -z "$sizes" ]; then
    echo "fixture: no calibration probe ($cal) or no sizes"
    exit 1
fi
for f in @FILES@; do dump "$f"; done
probe alloc $sizes
probe alloc --uid 1000 --gid 1000 $sizes
"#;

pub fn generate(host: &Host) {
    let out = host.repo.join("tests/fixtures/kernels");
    let mut summary = String::new();
    for guest in MATRIX {
        let (ok, enomem, secs) = generate_one(host, guest, &out.join(guest.name));
        let _ = writeln!(
            summary,
            "  {:<40} OK {ok:>3}  ENOMEM {enomem:>3}  boot {secs:.1}s",
            guest.name
        );
    }
    eprintln!("fixtures written to {}:\n{summary}", out.display());
}

/// Boots one guest and writes its fixture; returns (OK rows, ENOMEM rows, boot seconds).
fn generate_one(host: &Host, guest: &Guest, dir: &Path) -> (usize, usize, f64) {
    let knobs: String = guest
        .knobs
        .iter()
        .map(|(knob, value)| format!("echo {value} > /proc/sys/vm/{knob}\n"))
        .collect();
    let body = BODY
        .replace("@KNOBS@", &knobs)
        .replace("@MODE@", &guest.mode.to_string())
        .replace("@FILES@", &PROC_FILES.join(" "));

    let mut vm = Vm::new(guest.name)
        .memory_mib(guest.memory_mib)
        .cpus(guest.cpus);
    if let Some(mib) = guest.swap_mib {
        vm = vm.swap_mib(mib);
    }
    if let Some(pages) = guest.hugepages {
        vm = vm.hugepages(pages);
    }
    let console = vm.run(host, &body);
    let files = console.files();
    let probes = console.probes();
    check(guest, &console, &probes);

    if dir.exists() {
        fs::remove_dir_all(dir).expect("remove the old fixture");
    }
    for path in PROC_FILES {
        let contents = files
            .get(*path)
            .unwrap_or_else(|| panic!("{}: the guest did not dump {path}", guest.name));
        let dest = dir.join(path.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().expect("parent")).expect("create fixture dir");
        fs::write(&dest, contents).expect("write fixture file");
    }

    let mut tsv = String::from("bytes\tuid\tvmsize_kb\tcommitted_kb\tresult\n");
    for p in &probes {
        let _ = writeln!(
            tsv,
            "{}\t{}\t{}\t{}\t{}",
            p.bytes, p.uid, p.vmsize_kb, p.committed_kb, p.result
        );
    }
    fs::write(dir.join("cases.tsv"), tsv).expect("write cases.tsv");

    let mut settings: Vec<String> = guest
        .knobs
        .iter()
        .map(|(knob, value)| format!("{knob}={value}"))
        .collect();
    settings.push(format!("overcommit_memory={}", guest.mode));
    let readme = format!(
        "Generated by `cargo test --test vm -- --ignored generate_kernel_fixtures` \
         (tests/vm/fixtures.rs): Linux {} under qemu-system-x86_64 {}; vm knobs written in \
         order: {}; cases probed as uid 0 and uid 1000.\n",
        files["/proc/sys/kernel/osrelease"].trim(),
        vm.describe(host),
        settings.join(" "),
    );
    fs::write(dir.join("README"), readme).expect("write README");

    report_rule_mismatches(guest, &files, &probes);
    let ok = probes.iter().filter(|p| p.result == "OK").count();
    (ok, probes.len() - ok, console.boot_time.as_secs_f64())
}

/// Refuses to write a fixture that would mislead: every file present, the knobs as set,
/// verdicts only OK/ENOMEM, and both verdicts present wherever the kernel can refuse.
fn check(guest: &Guest, console: &Console, probes: &[Probe]) {
    let files = console.files();
    let fail =
        |what: String| -> ! { panic!("{}: {what}\n--- console ---\n{}", guest.name, console.text) };
    let meminfo = files
        .get("/proc/meminfo")
        .unwrap_or_else(|| fail("no meminfo dump".into()));
    for key in [
        "MemTotal:",
        "MemFree:",
        "SwapTotal:",
        "CommitLimit:",
        "Committed_AS:",
        "HugePages_Total:",
        "Hugepagesize:",
        "Hugetlb:",
    ] {
        if !meminfo.lines().any(|l| l.starts_with(key)) {
            fail(format!("meminfo lacks {key}"));
        }
    }
    let knobs = guest
        .knobs
        .iter()
        .copied()
        .chain([("overcommit_memory", u64::from(guest.mode))]);
    for (knob, value) in knobs {
        let path = format!("/proc/sys/vm/{knob}");
        let got = files.get(&path).map(|s| s.trim());
        if got != Some(value.to_string().as_str()) {
            fail(format!("{path} is {got:?}, expected {value}"));
        }
    }
    if probes.is_empty() {
        fail("no PROBE lines".into());
    }
    let per_uid = |uid| probes.iter().filter(|p| p.uid == uid).count();
    if per_uid(0) != per_uid(1000) || per_uid(0) * 2 != probes.len() {
        fail("expected the same sizes probed as uid 0 and as uid 1000".into());
    }
    if let Some(p) = probes
        .iter()
        .find(|p| p.result != "OK" && p.result != "ENOMEM")
    {
        fail(format!("unexpected verdict {p:?}"));
    }
    let refused = probes.iter().filter(|p| p.result == "ENOMEM").count();
    if guest.mode != 1 && (refused == 0 || refused == probes.len()) {
        fail("expected both OK and ENOMEM rows".into());
    }
}

/// Prints (does not assert) the rows where the documented rule (kernel-overcommit.md)
/// disagrees with the real kernel. In mode 2 the kernel compares an approximate per-CPU
/// counter, so rows within a batch of the boundary may legitimately differ.
fn report_rule_mismatches(guest: &Guest, files: &BTreeMap<String, String>, probes: &[Probe]) {
    let meminfo = &files["/proc/meminfo"];
    let kb = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("meminfo lacks {key}"))
    };
    // The reserves as the guest had them (their defaults depend on its free memory).
    let sysctl = |name: &str| -> u64 {
        files[&format!("/proc/sys/vm/{name}")]
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("vm.{name} is not a number"))
    };
    let (total_pages, limit_pages) = (
        (kb("MemTotal:") + kb("SwapTotal:")) / 4,
        kb("CommitLimit:") / 4,
    );
    let mismatches: Vec<String> = probes
        .iter()
        .filter_map(|p| {
            let pages = p.bytes.div_ceil(4096);
            let refused = match guest.mode {
                0 => pages > total_pages,
                1 => false,
                _ => {
                    let admin = if p.uid == 0 {
                        0
                    } else {
                        sysctl("admin_reserve_kbytes") / 4
                    };
                    let user = (p.vmsize_kb / 4 / 32).min(sysctl("user_reserve_kbytes") / 4);
                    let allowed = limit_pages.saturating_sub(admin + user);
                    p.committed_kb / 4 + pages >= allowed
                }
            };
            let predicted = if refused { "ENOMEM" } else { "OK" };
            (predicted != p.result).then(|| {
                format!(
                    "    bytes={} uid={} committed_kb={}: rule says {predicted}, kernel said {}",
                    p.bytes, p.uid, p.committed_kb, p.result
                )
            })
        })
        .collect();
    if !mismatches.is_empty() {
        eprintln!(
            "{}: the documented rule disagrees with the kernel on {} row(s):\n{}",
            guest.name,
            mismatches.len(),
            mismatches.join("\n")
        );
    }
}
