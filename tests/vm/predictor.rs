//! Issue 4, scenarios 1 and 2: `overcommitctl check` against what the real kernel does, and
//! `overcommitctl status` against the kernel's own figures, over a matrix of guests.
//!
//! One boot per guest hardware; in it, several policies one after the other (the knobs are
//! written from the guest shell, not by our tools). Per policy:
//! - status: `overcommitctl status --json` next to /proc/meminfo and /proc/sys/vm as the
//!   kernel shows them;
//! - predictor: for root and for alice (uid 1000), a list of sizes around the limit that
//!   applies to that user; for each size first `overcommitctl check SIZE --json --root|--user
//!   --vm-size V`, right after it `probe alloc SIZE`, the kernel's verdict.
//!
//! Same state for both. In mode 2 the verdict depends on Committed_AS at the moment of the
//! mmap, and the check process and the probe process are charged differently (each its own
//! writable mappings, stack and heap: a few hundred kB). So, per policy and user, the guest
//! first measures both in identical surroundings (output to an empty tmpfs file, which is not
//! charged yet when they read Committed_AS) and the probe then maps the difference as a pad
//! (`probe alloc --pad`) before it measures and allocates: check and probe read the same
//! Committed_AS. The probe's VmSize (pad included, it sets the user reserve) is measured the
//! same way and handed to check as --vm-size. Both readings are printed with every case and
//! compared here, so a case where the states differ fails as a harness problem rather than
//! passing for an agreement. No subshell, pipe or file stays alive around a case (each is
//! charged in mode 2); the guest's `block` helper prints between markers without any.
//!
//! What is left is the kernel's own uncertainty: in mode 2 it compares an approximate per-CPU
//! counter. `check` calls those cases borderline; they are counted and not compared.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::harness::{Console, Host, Probe, Vm};
use crate::tally::{Agreement, TestRun};

/// The guest hardware of one boot.
pub struct Hardware {
    pub name: &'static str,
    pub memory_mib: u64,
    pub cpus: u32,
    pub swap_mib: Option<u64>,
    pub hugepages: Option<u32>,
    /// vm.admin_reserve_kbytes and vm.user_reserve_kbytes, written once at the start (kB).
    pub reserves: Option<(u64, u64)>,
}

impl Hardware {
    pub fn vm(&self) -> Vm {
        let mut vm = Vm::new(self.name)
            .memory_mib(self.memory_mib)
            .cpus(self.cpus);
        if let Some(mib) = self.swap_mib {
            vm = vm.swap_mib(mib);
        }
        if let Some(pages) = self.hugepages {
            vm = vm.hugepages(pages);
        }
        vm
    }
}

/// The limit knob a policy writes.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    Ratio(u32),
    Kbytes(u64),
}

/// One policy a guest is put under, written with `echo > /proc/sys/vm/...`.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub name: &'static str,
    pub mode: u8,
    pub limit: Limit,
}

impl Policy {
    pub const fn new(name: &'static str, mode: u8, limit: Limit) -> Policy {
        Policy { name, mode, limit }
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            0 => "heuristic",
            1 => "always",
            _ => "never",
        }
    }

    /// Shell lines that put the policy in force: in mode 2 the limit first (so the mode never
    /// holds a limit it was not meant to have), else the mode first.
    fn write_script(&self) -> String {
        let limit = match self.limit {
            Limit::Ratio(r) => format!("echo {r} > /proc/sys/vm/overcommit_ratio"),
            Limit::Kbytes(k) => format!("echo {k} > /proc/sys/vm/overcommit_kbytes"),
        };
        let mode = format!("echo {} > /proc/sys/vm/overcommit_memory", self.mode);
        if self.mode == 2 {
            format!("{limit}\n{mode}\n")
        } else {
            format!("{mode}\n{limit}\n")
        }
    }
}

/// The users every case is asked and probed as: root and alice.
const UIDS: [u32; 2] = [0, 1000];

/// Shell helpers of the predictor guests (after the harness's own prologue, which defines
/// `block`).
const SHELL_HELPERS: &str = r#"
kb() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
# ccheck UID ARGS...: overcommitctl check ARGS --json, as root (--root) or as UID (--user),
# about one mmap (what the probe makes), not glibc malloc's path.
ccheck() {
    _u=$1; shift
    if [ "$_u" = 0 ]; then overcommitctl check "$@" --via mmap --json --root
    else probe runas "$_u" "$_u" -- overcommitctl check "$@" --via mmap --json --user; fi
}
# calloc UID ARGS...: probe alloc ARGS as root or as UID.
calloc() {
    _u=$1; shift
    if [ "$_u" = 0 ]; then probe alloc "$@"
    else probe alloc --uid "$_u" --gid "$_u" "$@"; fi
}
# calibrate UID: PAD_KB, VMSIZE_KB and COMMITTED_KB for cases of UID under the policy in force.
# Each reading goes to an empty file, which tmpfs charges only once written, i.e. after the
# program has read Committed_AS: check and probe are measured in the same surroundings.
field() { sed -n "s/.*$1[\":= ]*\([0-9][0-9]*\).*/\1/p" /tmp/cal | head -n 1; }
calibrate() {
    ccheck "$1" 4096 --mode never > /tmp/cal
    _check_kb=$(( $(field committed_bytes) / 1024 ))
    rm /tmp/cal
    calloc "$1" 4096 > /tmp/cal
    _probe_kb=$(field committed_kb)
    rm /tmp/cal
    PAD_KB=$(( _check_kb - _probe_kb ))
    if [ "$PAD_KB" -lt 0 ]; then
        echo "calibration: the probe is charged more than check ($_probe_kb > $_check_kb kB)"
        exit 1
    fi
    calloc "$1" --pad $(( PAD_KB * 1024 )) 4096 > /tmp/cal
    VMSIZE_KB=$(field vmsize_kb)
    COMMITTED_KB=$(field committed_kb)
    rm /tmp/cal
    echo "CALIBRATION policy=$POLICY uid=$1 check_committed_kb=$_check_kb probe_committed_kb=$_probe_kb pad_kb=$PAD_KB padded_committed_kb=$COMMITTED_KB vmsize_kb=$VMSIZE_KB"
}
# case UID SIZE: ask check, then let the probe allocate, in the state calibrate measured.
case_() {
    block "check $POLICY $1 $2" ccheck "$1" "$2" --vm-size $(( VMSIZE_KB * 1024 ))
    block "alloc $POLICY $1 $2" calloc "$1" --pad $(( PAD_KB * 1024 )) "$2"
}
"#;

/// Sizes around the limits of the policy in force, for UID ($1), from the live kernel values
/// and the calibration (awk prints them; computed before the cases run).
const SIZES: &str = r#"
sizes() {
    awk -v mode="$(cat /proc/sys/vm/overcommit_memory)" -v uid="$1" \
        -v mem="$(kb MemTotal)" -v swap="$(kb SwapTotal)" -v limit="$(kb CommitLimit)" \
        -v committed="$COMMITTED_KB" -v vmsize="$VMSIZE_KB" \
        -v admin="$(cat /proc/sys/vm/admin_reserve_kbytes)" \
        -v user="$(cat /proc/sys/vm/user_reserve_kbytes)" '
function out(x) { if (x > 0) printf "%.0f\n", x }
function around(p, list,    n, i, off) { n = split(list, off, " "); for (i = 1; i <= n; i++) out(p + off[i]) }
BEGIN {
    MiB = 1048576; TiB = 1099511627776
    if (mode == 2) {
        # __vm_enough_memory: refused unless committed + pages < CommitLimit - admin reserve
        # (non-root) - min(VmSize/32, user reserve), all in pages: the first refused size.
        userdrop = int(int(vmsize / 4) / 32)
        if (userdrop > int(user / 4)) userdrop = int(user / 4)
        root = (limit - committed - userdrop * 4) * 1024
        unpriv = root - int(admin / 4) * 4096
        own = uid == 0 ? root : unpriv
        other = uid == 0 ? unpriv : root
        around(own, "-67108864 -16777216 -8388608 -4194304 -1048576 -4096 0 4096 1048576 4194304 8388608 16777216 67108864")
        around(other, "-4194304 0 4194304")
        out(64 * MiB); out(352800000000)
    } else if (mode == 0) {
        # One request alone against MemTotal + SwapTotal (pages: a byte more is a page more).
        total = (mem + swap) * 1024
        around(total, "-67108864 -1048576 -4096 -1 0 1 4096 1048576 67108864")
        out(64 * MiB); out(352800000000); out(TiB)
    } else {
        # No commit check: only the address space can refuse. 128 TiB exceeds it; 100 TiB
        # fits in its size but not in the hole a PIE or static-PIE process has (its program
        # or heap sits at 2/3 of the address space, leaving about 85 TiB below).
        total = (mem + swap) * 1024
        out(64 * MiB); out(total + 64 * MiB); out(352800000000)
        out(64 * TiB); out(100 * TiB); out(128 * TiB)
    }
}' | sort -n | uniq
}
"#;

/// The /proc/sys/vm knobs the status scenario compares.
const KNOBS: &[&str] = &[
    "overcommit_memory",
    "overcommit_ratio",
    "overcommit_kbytes",
    "admin_reserve_kbytes",
    "user_reserve_kbytes",
    "nr_hugepages",
];

fn body(hw: &Hardware, policies: &[Policy]) -> String {
    let mut body = String::new();
    body.push_str(SHELL_HELPERS);
    body.push_str(SIZES);
    let knobs = KNOBS.join(" ");
    let _ = write!(
        body,
        r#"
snapshot() {{
    block "$POLICY status" overcommitctl status --json
    block "$POLICY meminfo" cat /proc/meminfo
    block "$POLICY swaps" cat /proc/swaps
    for k in {knobs}; do block "$POLICY $k" cat /proc/sys/vm/$k; done
}}
"#
    );
    if let Some((admin, user)) = hw.reserves {
        let _ = writeln!(body, "echo {admin} > /proc/sys/vm/admin_reserve_kbytes");
        let _ = writeln!(body, "echo {user} > /proc/sys/vm/user_reserve_kbytes");
    }
    for policy in policies {
        let _ = write!(
            body,
            "\nPOLICY={}\n{}snapshot\nfor u in {}; do\n    calibrate $u\n    for s in $(sizes $u); do case_ $u $s; done\ndone\n",
            policy.name,
            policy.write_script(),
            UIDS.map(|u| u.to_string()).join(" "),
        );
    }
    // Leave the guest able to power off whatever the last policy was.
    body.push_str("echo 1 > /proc/sys/vm/overcommit_memory\n");
    body
}

/// Boots `hw`, goes through `policies`, and checks status and predictor for each.
pub fn run(test: &mut TestRun, host: &Host, hw: &Hardware, policies: &[Policy]) {
    let console = hw.vm().run(host, &body(hw, policies));
    let blocks: BTreeMap<String, crate::harness::Block> = console
        .blocks()
        .into_iter()
        .map(|b| (b.tag.clone(), b))
        .collect();
    let mut max_state_gap_kb = 0u64;
    let mut brackets = Vec::new();
    for policy in policies {
        test.scenario(&format!("status {}/{}", hw.name, policy.name), || {
            check_status(&console, &blocks, hw, policy)
        });
        let mut agreement = Agreement::default();
        let found = test.scenario(&format!("predictor {}/{}", hw.name, policy.name), || {
            compare_cases(
                &console,
                &blocks,
                policy,
                &mut agreement,
                &mut max_state_gap_kb,
            )
        });
        if let Some(found) = found {
            brackets.extend(found);
        }
        test.agreement(agreement);
    }
    let within_a_page = brackets.iter().filter(|b| b.within_a_page()).count();
    let wider: Vec<String> = brackets
        .iter()
        .filter(|b| !b.within_a_page())
        .map(Bracket::to_string)
        .collect();
    test.note(format!(
        "{}: largest Committed_AS difference between what check read and what the probe read before its mmap: {max_state_gap_kb} kB; the kernel's limit found to within a page for {within_a_page} of {} policy x user{}",
        hw.name,
        brackets.len(),
        if wider.is_empty() {
            String::new()
        } else {
            format!(" (the others: {})", wider.join(", "))
        }
    ));
}

/// Where the kernel's answers changed for one policy and user: the largest size it allowed
/// and the smallest it refused.
struct Bracket {
    policy: &'static str,
    uid: u32,
    largest_ok: Option<u64>,
    smallest_enomem: Option<u64>,
}

impl Bracket {
    fn within_a_page(&self) -> bool {
        matches!((self.largest_ok, self.smallest_enomem), (Some(ok), Some(no)) if no > ok && no - ok <= 4096)
    }
}

impl std::fmt::Display for Bracket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        write!(
            f,
            "{} uid {}: OK up to {}, ENOMEM from {}",
            self.policy,
            self.uid,
            show(self.largest_ok),
            show(self.smallest_enomem)
        )
    }
}

fn get<'a>(
    console: &Console,
    blocks: &'a BTreeMap<String, crate::harness::Block>,
    tag: &str,
) -> &'a crate::harness::Block {
    blocks.get(tag).unwrap_or_else(|| {
        panic!(
            "the guest printed no block {tag:?}\n--- console ---\n{}",
            console.text
        )
    })
}

/// A `Name:   123 kB` value of a meminfo dump, in kB.
pub fn meminfo_kb(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("meminfo has no {key}:\n{meminfo}"))
}

/// Scenario 2: status --json reports exactly what the kernel shows.
fn check_status(
    console: &Console,
    blocks: &BTreeMap<String, crate::harness::Block>,
    hw: &Hardware,
    policy: &Policy,
) {
    let p = policy.name;
    let status_block = get(console, blocks, &format!("{p} status"));
    assert_eq!(status_block.rc, 0, "status failed:\n{}", status_block.text);
    let status = status_block.json();
    let meminfo = &get(console, blocks, &format!("{p} meminfo")).text;
    let knob = |k: &str| -> u64 {
        get(console, blocks, &format!("{p} {k}"))
            .value()
            .parse()
            .unwrap_or_else(|_| panic!("/proc/sys/vm/{k} is not a number"))
    };
    let kib = |key| meminfo_kb(meminfo, key) * 1024;

    // The knobs hold what the guest wrote (the kernel zeroes the other limit knob).
    assert_eq!(knob("overcommit_memory"), u64::from(policy.mode));
    match policy.limit {
        Limit::Ratio(r) => {
            assert_eq!(
                (knob("overcommit_ratio"), knob("overcommit_kbytes")),
                (u64::from(r), 0)
            );
        }
        Limit::Kbytes(k) => {
            assert_eq!(
                (knob("overcommit_ratio"), knob("overcommit_kbytes")),
                (0, k)
            );
        }
    }

    let mut wrong = Vec::new();
    let mut expect = |what: &str, ours: &Value, kernel: Value| {
        if *ours != kernel {
            wrong.push(format!("{what}: status says {ours}, the kernel {kernel}"));
        }
    };
    expect(
        "mem_total_bytes",
        &status["mem_total_bytes"],
        kib("MemTotal").into(),
    );
    expect(
        "swap_total_bytes",
        &status["swap_total_bytes"],
        kib("SwapTotal").into(),
    );
    expect(
        "commit_limit_bytes",
        &status["commit_limit_bytes"],
        kib("CommitLimit").into(),
    );
    expect(
        "commit_limit_computed_bytes (the model)",
        &status["commit_limit_computed_bytes"],
        kib("CommitLimit").into(),
    );
    expect(
        "hugetlb_bytes",
        &status["hugetlb_bytes"],
        kib("Hugetlb").into(),
    );
    expect("mode", &status["mode"], policy.mode_name().into());
    expect(
        "mode_number",
        &status["mode_number"],
        knob("overcommit_memory").into(),
    );
    expect(
        "overcommit_ratio",
        &status["overcommit_ratio"],
        knob("overcommit_ratio").into(),
    );
    expect(
        "overcommit_kbytes",
        &status["overcommit_kbytes"],
        knob("overcommit_kbytes").into(),
    );
    expect(
        "limit_in_force",
        &status["limit_in_force"],
        (if knob("overcommit_kbytes") != 0 {
            "kbytes"
        } else {
            "ratio"
        })
        .into(),
    );
    expect(
        "admin_reserve_bytes",
        &status["admin_reserve_bytes"],
        (knob("admin_reserve_kbytes") * 1024).into(),
    );
    expect(
        "user_reserve_bytes",
        &status["user_reserve_bytes"],
        (knob("user_reserve_kbytes") * 1024).into(),
    );
    expect(
        "nr_hugepages",
        &status["nr_hugepages"],
        knob("nr_hugepages").into(),
    );
    expect("nr_cpus", &status["nr_cpus"], hw.cpus.into());
    let swaps = &get(console, blocks, &format!("{p} swaps")).text;
    let kernel_swaps: Vec<Value> = swaps
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            serde_json::json!({
                "path": f[0],
                "kind": f[1],
                "size_bytes": f[2].parse::<u64>().unwrap() * 1024,
            })
        })
        .collect();
    let ours: Vec<Value> = status["swap_devices"]
        .as_array()
        .unwrap_or_else(|| panic!("no swap_devices in {status:#}"))
        .iter()
        .map(|d| {
            serde_json::json!({
                "path": d["path"],
                "kind": d["kind"],
                "size_bytes": d["size_bytes"],
            })
        })
        .collect();
    expect(
        "swap_devices",
        &Value::from(ours),
        Value::from(kernel_swaps),
    );
    assert!(
        wrong.is_empty(),
        "status --json disagrees with the kernel under {p}:\n  {}\n--- status ---\n{}\n--- /proc/meminfo ---\n{meminfo}",
        wrong.join("\n  "),
        status_block.text
    );
}

/// One case: what check said and what the kernel did.
struct Case {
    uid: u32,
    bytes: u64,
    check: Value,
    check_rc: i32,
    probe: Probe,
}

/// Scenario 1: every firm verdict of check is what the kernel did.
fn compare_cases(
    console: &Console,
    blocks: &BTreeMap<String, crate::harness::Block>,
    policy: &Policy,
    agreement: &mut Agreement,
    max_state_gap_kb: &mut u64,
) -> Vec<Bracket> {
    let p = policy.name;
    let mut cases = Vec::new();
    for (tag, block) in blocks.range(format!("check {p} ")..) {
        let Some(rest) = tag.strip_prefix(&format!("check {p} ")) else {
            break;
        };
        let (uid, bytes) = rest
            .split_once(' ')
            .and_then(|(u, b)| Some((u.parse().ok()?, b.parse().ok()?)))
            .unwrap_or_else(|| panic!("bad case tag {tag:?}"));
        let alloc = get(console, blocks, &format!("alloc {p} {uid} {bytes}"));
        let probe = alloc
            .text
            .lines()
            .find_map(|l| l.find("PROBE ").map(|i| &l[i + "PROBE ".len()..]))
            .and_then(Probe::parse)
            .unwrap_or_else(|| panic!("no PROBE line for {tag}:\n{}", alloc.text));
        cases.push(Case {
            uid,
            bytes,
            check: block.json(),
            check_rc: block.rc,
            probe,
        });
    }
    for uid in UIDS {
        assert!(
            cases.iter().filter(|c| c.uid == uid).count() >= 5,
            "{p}: too few cases for uid {uid}\n--- console ---\n{}",
            console.text
        );
    }

    let mut problems = Vec::new();
    let mut kernel_said = BTreeMap::<&str, usize>::new();
    let mut borderline_seen = Vec::new();
    for case in &cases {
        let c = &case.check;
        let k = &case.probe;
        *kernel_said.entry(k.result.as_str()).or_default() += 1;
        let what = format!("{p} uid={} bytes={}", case.uid, case.bytes);
        if k.uid != case.uid || k.bytes != case.bytes {
            problems.push(format!("{what}: the probe reports {k:?}"));
            continue;
        }
        if k.result != "OK" && k.result != "ENOMEM" {
            problems.push(format!(
                "{what}: the probe got {} (not OK/ENOMEM)",
                k.result
            ));
            continue;
        }
        if c["request_bytes"].as_u64() != Some(case.bytes) || c["mode"] != policy.mode_name() {
            problems.push(format!("{what}: check answered another question: {c}"));
            continue;
        }
        // The same state for both (see the module doc).
        if c["process"]["vm_size_bytes"].as_u64() != Some(k.vmsize_kb * 1024) {
            problems.push(format!(
                "{what}: harness: check was told VmSize {} but the probe had {} kB",
                c["process"]["vm_size_bytes"], k.vmsize_kb
            ));
            continue;
        }
        if let Some(committed) = c["committed_bytes"].as_u64() {
            let gap = (committed / 1024).abs_diff(k.committed_kb);
            *max_state_gap_kb = (*max_state_gap_kb).max(gap);
            if gap > 64 {
                problems.push(format!(
                    "{what}: harness: check read Committed_AS {} kB, the probe {} kB right before its mmap",
                    committed / 1024,
                    k.committed_kb
                ));
                continue;
            }
        }
        let verdict = c["verdict"].as_str().unwrap_or("?");
        let expected_rc = if verdict == "allowed" { 0 } else { 1 };
        if case.check_rc != expected_rc {
            problems.push(format!(
                "{what}: check said {verdict} but exited {}",
                case.check_rc
            ));
        }
        let firm = match verdict {
            "allowed" => "OK",
            "refused" => "ENOMEM",
            "borderline" => {
                agreement.borderline += 1;
                borderline_seen.push(format!("{}:{}={}", case.uid, case.bytes, k.result));
                continue;
            }
            other => {
                problems.push(format!("{what}: check gave verdict {other:?}"));
                continue;
            }
        };
        agreement.compared += 1;
        if firm == k.result {
            agreement.agreed += 1;
        } else {
            problems.push(format!(
                "{what}: check said {verdict} (rule {}, limit_bytes {}, committed_bytes {}, reserve_bytes {}, uncertainty_bytes {}, largest_bytes {}), the kernel said {} (probe VmSize {} kB, Committed_AS {} kB before its mmap)",
                c["rule"],
                c["limit_bytes"],
                c["committed_bytes"],
                c["reserve_bytes"],
                c["uncertainty_bytes"],
                c["largest_bytes"],
                k.result,
                k.vmsize_kb,
                k.committed_kb
            ));
        }
    }
    // The sizes were chosen around the limits: where the kernel can refuse, both answers
    // must have occurred, or the case list missed the boundary.
    let ok = kernel_said.get("OK").copied().unwrap_or(0);
    let enomem = kernel_said.get("ENOMEM").copied().unwrap_or(0);
    if ok == 0 || enomem == 0 {
        problems.push(format!(
            "{p}: the kernel answered OK {ok} and ENOMEM {enomem} times: the sizes did not straddle a limit"
        ));
    }
    assert!(
        problems.is_empty(),
        "{p}: {} problem(s) (borderline cases, uid:bytes=kernel: {}):\n  {}\n--- calibration ---\n{}",
        problems.len(),
        borderline_seen.join(" "),
        problems.join("\n  "),
        console
            .marker_lines("CALIBRATION ")
            .into_iter()
            .filter(|l| l.contains(&format!("policy={p} ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    UIDS.iter()
        .map(|&uid| {
            let sizes = |result: &'static str| {
                cases
                    .iter()
                    .filter(move |c| c.uid == uid && c.probe.result == result)
                    .map(|c| c.bytes)
            };
            Bracket {
                policy: policy.name,
                uid,
                largest_ok: sizes("OK").max(),
                smallest_enomem: sizes("ENOMEM").min(),
            }
        })
        .collect()
}
