//! Issue 13: `overcommitctl top` against a real kernel. One boot (1 GiB, no swap), a guest
//! whose busybox init sees every process:
//! - mode 0: a probe holding 300 MiB private writable (untouched) is charged 300 MiB more than
//!   the same probe holding 300 MiB with MAP_NORESERVE, which is charged nothing for it; a
//!   MAP_SHARED|MAP_ANONYMOUS object and a SysV segment (16 MiB each) appear in their rows;
//! - mode 2 (ratio 100): a new MAP_NORESERVE probe is charged its 300 MiB (the kernel ignores
//!   the flag there);
//! - in both, the processes plus the named rows equal Committed_AS within 2% (the figures are
//!   printed in the test's report line);
//! - as alice, `top` shows alice's processes only, and how many it could not read;
//! - mode 2 with 2% headroom left: `status` names the largest holders, and `check` names them
//!   when it refuses.
//!
//! `cargo test --test vm -- --ignored generate_top_fixtures` writes the guest's /proc as `top`
//! read it (`probe snapshot`) to tests/fixtures/top/, for the tests that run without a VM.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::harness::{files_in, Console, Host, Vm};
use crate::tally::TestRun;
use crate::top_report::{assert_charged_more, bytes, not_process, row, rows_sum};

const MIB: i64 = 1 << 20;
const HOLD: i64 = 300 * MIB;
const SMALL: i64 = 16 * MIB;

const BODY: &str = r#"
kb() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
# ready PID TEXT: until /proc/PID/smaps shows TEXT (the probe has mapped).
ready() {
    i=0
    until grep -q "$2" /proc/$1/smaps 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 400 ]; then echo "probe $1 did not map $2"; exit 1; fi
        sleep 0.05
    done
}
echo 0 > /proc/sys/vm/overcommit_memory
block quiet overcommitctl top --json --limit 0

probe hold 314572800 &
CHARGED=$!
probe hold --noreserve 314572800 &
NORESERVE0=$!
probe hold --shared 16777216 &
SHARED=$!
probe hold --sysv 16777216 &
SYSV=$!
ready $CHARGED "307200 kB"
ready $NORESERVE0 "307200 kB"
ready $SHARED "16384 kB"
ready $SYSV "16384 kB"
echo "HOLDERS charged=$CHARGED noreserve0=$NORESERVE0 shared=$SHARED sysv=$SYSV"
block mode0 overcommitctl top --json --limit 0
block mode0-text overcommitctl top --limit 12
block mode0-alice probe runas 1000 1000 -- overcommitctl top --json --limit 0
block mode0-snapshot probe snapshot

echo 100 > /proc/sys/vm/overcommit_ratio
echo 2 > /proc/sys/vm/overcommit_memory
probe hold --noreserve 314572800 &
NORESERVE2=$!
ready $NORESERVE2 "307200 kB"
echo "HOLDERS noreserve2=$NORESERVE2"
block mode2 overcommitctl top --json --limit 0
block mode2-text overcommitctl top --limit 12
block mode2-snapshot probe snapshot

# 2% headroom: status and check name the holders.
echo $(( $(kb Committed_AS) * 102 / 100 )) > /proc/sys/vm/overcommit_kbytes
block low-status overcommitctl status --json
block low-status-text overcommitctl status
block low-check overcommitctl check 100M --root --via mmap --json
echo 50 > /proc/sys/vm/overcommit_ratio
echo 0 > /proc/sys/vm/overcommit_memory
kill $CHARGED $NORESERVE0 $SHARED $SYSV $NORESERVE2
"#;

fn boot(host: &Host) -> Console {
    Vm::new("top").memory_mib(1024).run(host, BODY)
}

/// The pids the guest printed on `HOLDERS name=pid ...` lines.
fn holders(console: &Console) -> BTreeMap<String, i64> {
    console
        .marker_lines("HOLDERS ")
        .into_iter()
        .flat_map(|rest| rest.split_whitespace())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Checks that every row adds up to Committed_AS and that what no row explains is within 2%;
/// returns the figures for the report.
fn adds_up(report: &Value, what: &str) -> String {
    let committed = bytes(report, "committed_as_bytes");
    assert_eq!(
        rows_sum(report),
        committed,
        "{what}: the rows are Committed_AS"
    );
    let gap = bytes(not_process(report, "not_visible"), "charged_bytes");
    assert!(
        gap.abs() * 50 <= committed,
        "{what}: {gap} bytes of Committed_AS {committed} not attributed (more than 2%): {report:#}"
    );
    format!(
        "{what}: Committed_AS {committed}, processes {}, shmem {}, sysv {}, shared anonymous {}, unattributed {gap} ({:+.3}%; Committed_AS moved {} during the read)",
        bytes(report, "processes_charged_bytes"),
        bytes(not_process(report, "shmem"), "charged_bytes"),
        bytes(not_process(report, "sysv_shm"), "charged_bytes"),
        bytes(not_process(report, "shared_anonymous"), "charged_bytes"),
        gap as f64 * 100.0 / committed as f64,
        bytes(report, "committed_as_change_bytes")
    )
}

pub fn run(test: &mut TestRun, host: &Host) {
    let console = boot(host);
    let c = &console;
    let pids = holders(c);
    let pid = |name: &str| {
        *pids
            .get(name)
            .unwrap_or_else(|| panic!("no {name} pid in the console:\n{}", c.text))
    };
    let mode0 = c.block("mode0").json();
    let mode2 = c.block("mode2").json();

    if let Some(figures) =
        test.scenario("top: the quiet guest's rows add up to Committed_AS", || {
            let quiet = c.block("quiet").json();
            assert_eq!(quiet["processes_unreadable"], 0);
            assert!(quiet["kernel_threads"].as_u64().unwrap() > 10, "{quiet:#}");
            adds_up(&quiet, "quiet guest, mode 0")
        })
    {
        test.note(figures);
    }

    test.scenario(
        "top: 300 MiB private writable is charged, MAP_NORESERVE not (mode 0)",
        || {
            let charged = row(&mode0, pid("charged"));
            let free = row(&mode0, pid("noreserve0"));
            assert_charged_more(charged, free, HOLD, 8192);
            assert_eq!(bytes(free, "noreserve_bytes"), HOLD, "{free}");
            assert_eq!(bytes(charged, "noreserve_bytes"), 0, "{charged}");
            assert_eq!(
                mode0["holders"][0]["pid"],
                pid("charged"),
                "the largest holder first"
            );
        },
    );

    test.scenario("top: MAP_NORESERVE is charged in mode 2", || {
        let mode0_free = row(&mode0, pid("noreserve0"));
        let strict = row(&mode2, pid("noreserve2"));
        assert_charged_more(strict, mode0_free, HOLD, 8192);
        assert_eq!(bytes(strict, "noreserve_bytes"), 0, "{strict}");
        // The one mapped in mode 0 keeps its flag.
        assert_eq!(
            bytes(row(&mode2, pid("noreserve0")), "noreserve_bytes"),
            HOLD
        );
    });

    test.scenario(
        "top: shared anonymous and SysV memory are their own rows",
        || {
            for report in [&mode0, &mode2] {
                let shared = not_process(report, "shared_anonymous");
                assert_eq!(
                    (shared["objects"].as_i64(), bytes(shared, "charged_bytes")),
                    (Some(1), SMALL)
                );
                let sysv = not_process(report, "sysv_shm");
                assert_eq!(
                    (sysv["objects"].as_i64(), bytes(sysv, "charged_bytes")),
                    (Some(1), SMALL)
                );
                // Their holders are not charged for them (they are not VM_ACCOUNT mappings).
                for name in ["shared", "sysv"] {
                    assert!(bytes(row(report, pid(name)), "charged_bytes") < 4 * MIB);
                }
            }
        },
    );

    let mut figures = Vec::new();
    test.scenario(
        "top: processes plus the named rows equal Committed_AS within 2%",
        || {
            figures.push(adds_up(&mode0, "mode 0 with the probes"));
            figures.push(adds_up(&mode2, "mode 2 with the probes"));
        },
    );
    for line in figures {
        test.note(line);
    }

    test.scenario("top: the text names every row", || {
        let text = c.block("mode0-text").text;
        for needle in [
            "300.0 MiB",
            "probe",
            "SysV shared memory (1 segment)",
            "shared anonymous (1 object)",
            "not visible from here",
            "Committed_AS",
        ] {
            assert!(text.contains(needle), "missing {needle:?}:\n{text}");
        }
    });

    test.scenario(
        "top: alice sees her processes only and is told what she cannot see",
        || {
            let alice = c.block("mode0-alice").json();
            assert!(bytes(&alice, "processes_unreadable") >= 5, "{alice:#}");
            for h in alice["holders"].as_array().unwrap() {
                assert_eq!(h["uid"], 1000, "{h}");
            }
            assert!(
                bytes(not_process(&alice, "not_visible"), "charged_bytes") >= HOLD,
                "{alice:#}"
            );
        },
    );

    test.scenario(
        "status and check name the holders when mode 2 runs short",
        || {
            let status = c.block("low-status").json();
            let names: Vec<i64> = status["commit_holders"]
                .as_array()
                .unwrap_or_else(|| panic!("no commit_holders: {status:#}"))
                .iter()
                .map(|h| h["pid"].as_i64().unwrap())
                .collect();
            assert_eq!(names.len(), 3);
            assert!(
                names[..2].contains(&pid("charged")) && names[..2].contains(&pid("noreserve2")),
                "{names:?}"
            );
            assert!(c
                .block("low-status-text")
                .text
                .contains("Largest commit holders"));
            let check = c.block("low-check");
            assert_eq!(check.rc, 1, "{}", check.text);
            let check = check.json();
            assert_eq!(check["verdict"], "refused");
            assert!(
                bytes(&check["commit_holders"][0], "charged_bytes") >= HOLD,
                "{check:#}"
            );
        },
    );
}

/// Boots the scenario and writes its two snapshots and the holders' pids to
/// tests/fixtures/top/ (see the module comment).
pub fn generate(host: &Host) {
    let console = boot(host);
    let out = host.repo.join("tests/fixtures/top");
    let pids = holders(&console);
    for (name, block, mode) in [
        ("guest-mode0", "mode0-snapshot", "mode 0 (heuristic)"),
        ("guest-mode2", "mode2-snapshot", "mode 2 (never), ratio 100"),
    ] {
        let dir = out.join(name);
        let _ = fs::remove_dir_all(&dir);
        let files = files_in(&console.block(block).text);
        assert!(
            files.contains_key("/proc/meminfo"),
            "no snapshot in {block}"
        );
        for (path, contents) in &files {
            let target = dir.join(path.trim_start_matches('/'));
            fs::create_dir_all(target.parent().unwrap()).unwrap();
            fs::write(&target, contents).unwrap();
        }
        let mut readme = format!(
            "The /proc of a 1 GiB guest (Linux {}) in {mode}, as `probe snapshot` read it in one go\n\
             (tests/vm/top.rs). Generated by `cargo test --test vm -- --ignored generate_top_fixtures`.\n\n\
             Probes holding memory (pids in `holders`):\n\
             - charged: 300 MiB private writable anonymous, untouched\n\
             - noreserve0: the same with MAP_NORESERVE, mapped in mode 0\n\
             - shared: 16 MiB MAP_SHARED|MAP_ANONYMOUS\n\
             - sysv: a 16 MiB SysV segment, attached\n",
            kernel_release(&host.modules),
        );
        if name == "guest-mode2" {
            readme.push_str("- noreserve2: 300 MiB with MAP_NORESERVE, mapped in mode 2\n");
        }
        fs::write(dir.join("README"), readme).unwrap();
        let mut list = String::new();
        for (k, v) in &pids {
            if name == "guest-mode2" || k != "noreserve2" {
                let _ = writeln!(list, "{k}={v}");
            }
        }
        fs::write(dir.join("holders"), list).unwrap();
        eprintln!("vm: wrote {} ({} files)", dir.display(), files.len());
    }
}

fn kernel_release(modules: &Path) -> String {
    modules
        .file_name()
        .map_or("?".into(), |n| n.to_string_lossy().into_owned())
}
