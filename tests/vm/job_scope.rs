//! Issue 9: the job scope on a real kernel. One boot (512 MiB, no swap) with the dynamically
//! linked job_probe, the glibc it needs, and libovercommit_preload.so at its installed path.
//!
//! In mode 0, alice's job holds 352.8 GB in the job scope while plain processes (static and
//! dynamic) asking for the same are refused, and vm.overcommit_memory stays 0; `check
//! --scope job` agrees with the kernel; a static program is refused the job scope. Then in
//! mode 2 the job scope is refused with the explanation, and the library's MAP_NORESERVE is
//! shown to be ignored by the kernel (the mapping is charged, the seed refused).

#[path = "../common/preload.rs"]
mod preload_build;

use preload_build::fields;
use std::path::PathBuf;
use std::process::Command;

use crate::harness::{Host, Probe, Vm};
use crate::tally::TestRun;

const SEED: u64 = 352_800_000_000;
const LIBRARY: &str = "/usr/lib/overcommit/libovercommit_preload.so";

const BODY: &str = r#"
SEED=352800000000
MODE=/proc/sys/vm/overcommit_memory
LIB=/usr/lib/overcommit/libovercommit_preload.so
as_alice="probe runas 1000 1000 --"
out() { "$@" 2>&1; }

echo 0 > $MODE
# alice's job holds 352.8 GB (untouched) in the job scope...
$as_alice overcommitctl run --scope job -- /usr/bin/job_probe hold $SEED > /tmp/hold.out 2> /tmp/hold.err &
HOLDER=$!
i=0
until grep -q 'JOBPROBE hold' /tmp/hold.out 2> /dev/null; do
    i=$((i + 1))
    [ $i -gt 200 ] && break
    sleep 0.1
done
block hold cat /tmp/hold.out /tmp/hold.err
# ...while plain processes asking for the same are refused, and the node stays in mode 0.
block plain-static probe alloc --uid 1000 --gid 1000 $SEED
block plain-dynamic out $as_alice /usr/bin/job_probe alloc malloc $SEED
block mode-during cat $MODE
kill -TERM $HOLDER
wait $HOLDER
echo "HOLDER rc=$?"

block job-calloc out $as_alice overcommitctl run --scope job -- /usr/bin/job_probe alloc calloc $SEED
block job-auto out overcommitctl run --json -- /usr/bin/job_probe alloc malloc $SEED
block check-job overcommitctl check --json --scope job $SEED
block check-node overcommitctl check --json $SEED
block job-static out overcommitctl run --scope job -- probe alloc $SEED
block mode-after cat $MODE

# Mode 2 ignores MAP_NORESERVE: the job scope is refused, and the flag would change nothing.
echo 2 > $MODE
block never-job out $as_alice overcommitctl run --scope job -- /usr/bin/job_probe alloc malloc $SEED
block never-job-json out overcommitctl run --json --scope job -- /usr/bin/job_probe alloc malloc 1
block never-preloaded out env LD_PRELOAD=$LIB OVERCOMMIT_MIN_SIZE=1048576 /usr/bin/job_probe alloc malloc 67108864
block never-preloaded-seed out env LD_PRELOAD=$LIB OVERCOMMIT_MIN_SIZE=1048576 /usr/bin/job_probe alloc malloc $SEED
block never-check-job overcommitctl check --json --scope job $SEED
echo 0 > $MODE
"#;

/// The shared libraries `ldd` names for `binaries`, by path (the guest gets them at the same
/// paths).
fn shared_libraries(binaries: &[&PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for binary in binaries {
        let out = Command::new("ldd")
            .arg(binary)
            .output()
            .unwrap_or_else(|e| panic!("ldd {}: {e}", binary.display()));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no path.
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                let path = PathBuf::from(path);
                if !found.contains(&path) {
                    found.push(path);
                }
            }
        }
    }
    assert!(
        found
            .iter()
            .any(|p| p.to_string_lossy().contains("libc.so")),
        "ldd found no libc for {binaries:?}"
    );
    found
}

pub fn run(test: &mut TestRun, host: &Host) {
    let built = preload_build::built();
    let mut vm = Vm::new("job-scope")
        .memory_mib(512)
        .host_file("/usr/bin/job_probe", &built.probe)
        .host_file(LIBRARY, &built.library);
    for library in shared_libraries(&[&built.probe, &built.library]) {
        let guest = library.to_string_lossy().into_owned();
        vm = vm.host_file(&guest, &library);
    }
    let console = vm.run(host, BODY);
    let c = &console;
    let context = |what: &str| format!("{what}\n--- console ---\n{}", c.text);

    test.scenario(
        "job scope: alice's job holds 352.8 GB while plain processes are refused, mode stays 0",
        || {
            let hold = fields(&c.block("hold").text, "hold");
            assert_eq!(
                (hold["result"].as_str(), hold["noreserve"].as_str()),
                ("OK", "true"),
                "{}",
                context("the job scope's hold")
            );
            assert_eq!(hold["bytes"], SEED.to_string());
            let plain = c.block("plain-static");
            let probe = Probe::parse(plain.text.split("PROBE ").nth(1).unwrap_or_default())
                .unwrap_or_else(|| panic!("{}", context("no PROBE line")));
            assert_eq!((probe.uid, probe.result.as_str()), (1000, "ENOMEM"));
            let dynamic = fields(&c.block("plain-dynamic").text, "kind");
            assert_eq!(
                (dynamic["result"].as_str(), dynamic["library"].as_str()),
                ("ENOMEM", "absent")
            );
            assert_eq!(c.block("mode-during").value(), "0");
            assert_eq!(c.block("mode-after").value(), "0");
        },
    );

    test.scenario(
        "job scope: alice's calloc, and auto choosing the job scope",
        || {
            let calloc = c.block("job-calloc");
            assert_eq!(calloc.rc, 0, "{}", context(&calloc.text));
            let kind = fields(&calloc.text, "kind");
            assert_eq!(
                (kind["result"].as_str(), kind["noreserve"].as_str()),
                ("OK", "yes")
            );
            let auto = c.block("job-auto");
            assert_eq!(auto.rc, 0, "{}", context(&auto.text));
            let record = auto.json();
            assert_eq!(record["scope"], "job", "{record}");
            assert_eq!(record["scope_reason"], "dynamic_program");
            assert_eq!(record["library"], LIBRARY, "the installed path is found");
            assert_eq!(fields(&auto.text, "kind")["result"], "OK");
        },
    );

    test.scenario(
        "job scope: check --scope job agrees with the kernel",
        || {
            let job = c.block("check-job").json();
            assert_eq!(
                (job["verdict"].as_str(), job["rule"].as_str()),
                (Some("allowed"), Some("no_reserve"))
            );
            let node = c.block("check-node").json();
            assert_eq!(
                (node["verdict"].as_str(), node["rule"].as_str()),
                (Some("refused"), Some("heuristic"))
            );
            assert_eq!(node["remedies"][0]["kind"], "job_scope");
        },
    );

    test.scenario("job scope: a static program is refused, not run", || {
        let b = c.block("job-static");
        assert_eq!(b.rc, 125, "{}", context(&b.text));
        assert!(
            b.text.contains("statically linked") && !b.text.contains("PROBE "),
            "{}",
            b.text
        );
    });

    test.scenario("job scope in mode 2: refused with the explanation", || {
        let b = c.block("never-job");
        assert_eq!(b.rc, 125, "{}", context(&b.text));
        assert!(
            b.text
                .contains("mode never (2), which ignores MAP_NORESERVE")
                && !b.text.contains("JOBPROBE"),
            "{}",
            b.text
        );
        let failure = c.block("never-job-json").json();
        assert_eq!(
            failure["error"]["code"], "job_scope_unavailable",
            "{failure}"
        );
    });

    test.scenario(
        "job scope in mode 2: the kernel ignores MAP_NORESERVE",
        || {
            let small = fields(&c.block("never-preloaded").text, "kind");
            assert_eq!(
                (
                    small["result"].as_str(),
                    small["noreserve"].as_str(),
                    small["library"].as_str()
                ),
                ("OK", "no", "1048576"),
                "{}",
                context("64 MiB through the library in mode 2")
            );
            let seed = fields(&c.block("never-preloaded-seed").text, "kind");
            assert_eq!(seed["result"], "ENOMEM");
            let check = c.block("never-check-job").json();
            assert_eq!(
                (check["verdict"].as_str(), check["rule"].as_str()),
                (Some("refused"), Some("commit_limit"))
            );
        },
    );
}
