//! Issue 4, scenario 4: our writes on a real kernel. One boot (512 MiB, a 256 MiB swap disk
//! formatted but off):
//! - ratio <-> kbytes through profiles (`apply` a ratio profile, a kbytes profile, the ratio
//!   one again), first written directly by `overcommitctl` (no daemon), then through
//!   overcommitd: /proc/sys/vm holds exactly the intended pair each time (the kernel zeroes
//!   the other knob) and /proc/meminfo's CommitLimit is the one that pair gives;
//! - the lockout guard refuses mode-2 profiles whose CommitLimit would be under Committed_AS
//!   (kbytes and ratio), both ways, and the kernel keeps its previous values;
//! - `swapon` mid-scenario: status and check follow SwapTotal and CommitLimit, and a request
//!   between RAM and RAM + swap flips from refused to allowed in mode 0, for check and for
//!   the kernel alike.

use std::collections::BTreeMap;

use crate::harness::{Console, Host, Probe, Vm};
use crate::tally::{Agreement, TestRun};

const SWAP_MIB: u64 = 256;
const STRICT_RATIO: u64 = 80;
const STRICT_KBYTES: u64 = 300_000;

const CONFIG: &str = r#"
[daemon]
baseline = "default"
drift_interval = "0"

[profiles.default]
mode = "heuristic"
ratio = 50

[profiles.strict-ratio]
mode = "never"
ratio = 80

[profiles.strict-kbytes]
mode = "never"
kbytes = 300000

# CommitLimit 4 MiB, 1% of RAM: both far below what the guest has committed.
[profiles.lockout-kbytes]
mode = "never"
kbytes = 4096

[profiles.lockout-ratio]
mode = "never"
ratio = 1
"#;

const BODY: &str = r#"
CONF=/etc/overcommitd/overcommitd.toml
S=/run/overcommitd/overcommitd.sock
kb() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
out() { "$@" 2>&1; }
vmstate() {
    echo "mode=$(cat /proc/sys/vm/overcommit_memory) ratio=$(cat /proc/sys/vm/overcommit_ratio) kbytes=$(cat /proc/sys/vm/overcommit_kbytes) mem_kb=$(kb MemTotal) swap_kb=$(kb SwapTotal) hugetlb_kb=$(kb Hugetlb) commit_limit_kb=$(kb CommitLimit) committed_kb=$(kb Committed_AS)"
}
# steps PREFIX CTL...: the profile round trip and the lockout guard, with `CTL apply ... $APPLY`.
steps() {
    p=$1; shift
    block $p-start vmstate
    block $p-apply-ratio out "$@" apply strict-ratio $APPLY
    block $p-ratio vmstate
    block $p-apply-kbytes out "$@" apply strict-kbytes $APPLY
    block $p-kbytes vmstate
    block $p-apply-ratio-again out "$@" apply strict-ratio $APPLY
    block $p-ratio-again vmstate
    block $p-verify out "$@" verify strict-ratio
    block $p-lockout-kbytes out "$@" apply lockout-kbytes $APPLY
    block $p-after-lockout-kbytes vmstate
    block $p-lockout-ratio out "$@" apply lockout-ratio $APPLY
    block $p-after-lockout-ratio vmstate
    block $p-apply-default out "$@" apply default $APPLY
    block $p-default vmstate
}

# Directly: no daemon at this socket, so root's overcommitctl writes the kernel itself (with
# --direct: the configuration exists, so overcommitd is expected here).
APPLY=--direct
steps direct overcommitctl --config $CONF --socket /run/no-daemon.sock
APPLY=

# Through overcommitd.
head -c 1 /dev/random > /dev/null
overcommitd --config $CONF --socket $S --state-dir /run/overcommitd --log stderr 2>> /tmp/overcommitd.log &
i=0
until overcommitctl --socket $S leases > /dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then echo "overcommitd did not answer"; cat /tmp/overcommitd.log; exit 1; fi
    sleep 0.1
done
steps daemon overcommitctl --config $CONF --socket $S

# Swap appears: mode 0 (the daemon's baseline), a request of RAM + half the swap disk.
SIZE=$(( ($(kb MemTotal) + @HALF_SWAP_KB@) * 1024 ))
echo "SWAPSIZE bytes=$SIZE"
block swapoff-state vmstate
block swapoff-status overcommitctl status --json
block swapoff-check overcommitctl check $SIZE --via mmap --json --root
block swapoff-alloc probe alloc $SIZE
swapon /dev/vda
block swapon-state vmstate
block swapon-status overcommitctl status --json
block swapon-swaps cat /proc/swaps
block swapon-check overcommitctl check $SIZE --via mmap --json --root
block swapon-alloc probe alloc $SIZE
# And in mode 2: the swap adds to CommitLimit.
block swapon-apply-ratio out overcommitctl --config $CONF --socket $S apply strict-ratio
block swapon-ratio vmstate
block swapon-ratio-status overcommitctl status --json
block swapon-apply-default out overcommitctl --config $CONF --socket $S apply default

block daemon-log cat /tmp/overcommitd.log
"#;

/// The `key=value` pairs of a `vmstate` block.
fn state(console: &Console, tag: &str) -> BTreeMap<String, u64> {
    let block = console.block(tag);
    block
        .value()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let value = v
                .parse()
                .unwrap_or_else(|_| panic!("{tag}: {k}={v} is not a number"));
            (k.to_string(), value)
        })
        .collect()
}

/// CommitLimit (kB) for the knobs in `s`, from the rules of kernel-overcommit.md.
fn expected_commit_limit_kb(s: &BTreeMap<String, u64>) -> u64 {
    let pages = |kb: u64| kb / 4;
    let allowed = if s["kbytes"] != 0 {
        pages(s["kbytes"])
    } else {
        (pages(s["mem_kb"]) - pages(s["hugetlb_kb"])) * s["ratio"] / 100
    };
    (allowed + pages(s["swap_kb"])) * 4
}

pub fn run(test: &mut TestRun, host: &Host) {
    let half_swap_kb = SWAP_MIB * 1024 / 2;
    let console = Vm::new("writes")
        .memory_mib(512)
        .swap_disk_mib(SWAP_MIB)
        .file("/etc/overcommitd/overcommitd.toml", CONFIG)
        .run(
            host,
            &BODY.replace("@HALF_SWAP_KB@", &half_swap_kb.to_string()),
        );
    let c = &console;
    let log = c.block("daemon-log").text;

    for (prefix, how) in [
        ("direct", "written by overcommitctl"),
        ("daemon", "through overcommitd"),
    ] {
        test.scenario(
            &format!("writes ({how}): ratio -> kbytes -> ratio leaves exactly the intended pair"),
            || {
                let start = state(c, &format!("{prefix}-start"));
                assert_eq!(
                    (start["mode"], start["ratio"], start["kbytes"]),
                    (0, 50, 0),
                    "{prefix}: the guest did not start from the default policy"
                );
                for (apply, after, want) in [
                    ("apply-ratio", "ratio", (2, STRICT_RATIO, 0)),
                    ("apply-kbytes", "kbytes", (2, 0, STRICT_KBYTES)),
                    ("apply-ratio-again", "ratio-again", (2, STRICT_RATIO, 0)),
                    ("apply-default", "default", (0, 50, 0)),
                ] {
                    let applied = c.block(&format!("{prefix}-{apply}"));
                    assert_eq!(
                        applied.rc, 0,
                        "{prefix}-{apply} failed:\n{}\n--- overcommitd log ---\n{log}",
                        applied.text
                    );
                    let s = state(c, &format!("{prefix}-{after}"));
                    assert_eq!(
                        (s["mode"], s["ratio"], s["kbytes"]),
                        want,
                        "{prefix}-{after}: /proc/sys/vm holds {s:?}"
                    );
                    assert_eq!(
                        s["commit_limit_kb"],
                        expected_commit_limit_kb(&s),
                        "{prefix}-{after}: the kernel's CommitLimit is not what mode/ratio/kbytes {want:?} give: {s:?}"
                    );
                }
                let verify = c.block(&format!("{prefix}-verify"));
                // Without the daemon its configuration expects, verify says the node is not
                // kept (exit 3), whatever the kernel holds; with it, the kernel is in line.
                let want_rc = if prefix == "direct" { 3 } else { 0 };
                assert_eq!(
                    verify.rc, want_rc,
                    "verify strict-ratio after applying it:\n{}",
                    verify.text
                );
            },
        );

        test.scenario(
            &format!("writes ({how}): the lockout guard refuses a CommitLimit under Committed_AS"),
            || {
                let before = state(c, &format!("{prefix}-ratio-again"));
                for profile in ["lockout-kbytes", "lockout-ratio"] {
                    let refused = c.block(&format!("{prefix}-{profile}"));
                    assert_eq!(
                        refused.rc, 1,
                        "{prefix}: apply {profile} should be refused (exit 1):\n{}",
                        refused.text
                    );
                    assert!(
                        refused.text.contains("lockout guard"),
                        "{prefix}: apply {profile}: no lockout-guard message:\n{}",
                        refused.text
                    );
                    if prefix == "daemon" {
                        assert!(
                            refused.text.contains("[unsafe]"),
                            "{prefix}: apply {profile}: expected the daemon's `unsafe` error code:\n{}",
                            refused.text
                        );
                    }
                    let after = state(c, &format!("{prefix}-after-{profile}"));
                    // The limit the refused profile would have set is really below what the
                    // kernel has committed: the guard refused a real lockout.
                    let would_be = {
                        let mut s = after.clone();
                        if profile == "lockout-kbytes" {
                            s.insert("kbytes".into(), 4096);
                        } else {
                            s.insert("kbytes".into(), 0);
                            s.insert("ratio".into(), 1);
                        }
                        expected_commit_limit_kb(&s)
                    };
                    assert!(
                        would_be < after["committed_kb"],
                        "{profile}: CommitLimit {would_be} kB would not be under Committed_AS {} kB",
                        after["committed_kb"]
                    );
                    for key in ["mode", "ratio", "kbytes", "commit_limit_kb"] {
                        assert_eq!(
                            after[key], before[key],
                            "{prefix}: after the refused {profile}, the kernel's {key} changed: {before:?} -> {after:?}"
                        );
                    }
                }
            },
        );
    }

    let mut agreement = Agreement::default();
    test.scenario(
        "writes: swapon changes what status and check report, and the kernel's verdict",
        || {
            let size: u64 = c
                .marker_lines("SWAPSIZE bytes=")
                .first()
                .and_then(|s| s.trim().parse().ok())
                .expect("SWAPSIZE line");
            let off = state(c, "swapoff-state");
            let on = state(c, "swapon-state");
            assert_eq!(off["swap_kb"], 0, "swap was on before swapon: {off:?}");
            // mkswap keeps the first page for its header.
            assert_eq!(
                on["swap_kb"],
                SWAP_MIB * 1024 - 4,
                "SwapTotal after swapon: {on:?}"
            );
            assert_eq!(
                on["commit_limit_kb"],
                off["commit_limit_kb"] + on["swap_kb"]
            );

            for (phase, s) in [("swapoff", &off), ("swapon", &on)] {
                let status = c.block(&format!("{phase}-status")).json();
                assert_eq!(status["swap_total_bytes"], s["swap_kb"] * 1024, "{phase}");
                assert_eq!(
                    status["commit_limit_bytes"],
                    s["commit_limit_kb"] * 1024,
                    "{phase}"
                );
                assert_eq!(
                    status["commit_limit_computed_bytes"],
                    s["commit_limit_kb"] * 1024,
                    "{phase}: the model's CommitLimit"
                );
            }
            let devices = c.block("swapon-status").json()["swap_devices"].clone();
            assert_eq!(devices[0]["path"], "/dev/vda", "swap_devices: {devices:#}");
            assert_eq!(devices[0]["size_bytes"], on["swap_kb"] * 1024);

            for (phase, verdict, kernel) in [
                ("swapoff", "refused", "ENOMEM"),
                ("swapon", "allowed", "OK"),
            ] {
                let check = c.block(&format!("{phase}-check")).json();
                let probe = probe_in(c, &format!("{phase}-alloc"));
                assert_eq!(probe.bytes, size);
                agreement.compared += 1;
                if check["verdict"] == verdict && probe.result == kernel {
                    agreement.agreed += 1;
                }
                assert_eq!(
                    (
                        check["verdict"].as_str().unwrap_or("?"),
                        probe.result.as_str()
                    ),
                    (verdict, kernel),
                    "{phase}: {size} bytes (RAM + half the swap disk): check said {check:#}"
                );
            }

            let strict = state(c, "swapon-ratio");
            assert_eq!(
                (strict["mode"], strict["ratio"], strict["kbytes"]),
                (2, STRICT_RATIO, 0)
            );
            assert_eq!(strict["commit_limit_kb"], expected_commit_limit_kb(&strict));
            let status = c.block("swapon-ratio-status").json();
            assert_eq!(
                status["commit_limit_computed_bytes"],
                strict["commit_limit_kb"] * 1024
            );
        },
    );
    test.agreement(agreement);
}

fn probe_in(console: &Console, tag: &str) -> Probe {
    let block = console.block(tag);
    block
        .text
        .lines()
        .find_map(|l| l.find("PROBE ").map(|i| &l[i + "PROBE ".len()..]))
        .and_then(Probe::parse)
        .unwrap_or_else(|| panic!("{tag}: no PROBE line:\n{}", block.text))
}
