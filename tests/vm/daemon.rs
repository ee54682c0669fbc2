//! Issue 4, scenario 3: overcommitd on a real kernel. One boot; the daemon runs in the guest
//! against the guest's real /proc (Linux 6.1 here: no SO_PEERPIDFD, so lease holders are
//! found with pidfd_open plus the start-time check, the fallback path).
//!
//! What is asserted is the kernel's state (/proc/sys/vm read with `cat`, or the kernel's answer
//! to an allocation), not only what our tools print. Times are measured in the guest by
//! `probe waitfor`, which polls the knob every millisecond, starting at the SIGKILL it sends.

use serde_json::Value;

use crate::harness::{Console, Host, Probe, Vm};
use crate::tally::TestRun;

const CONFIG: &str = r#"
[daemon]
baseline = "default"
drift_interval = "0"

[profiles.default]
mode = "heuristic"
ratio = 50

[[access]]
groups = [1000]
modes = ["always", "heuristic"]
max_ttl = "1h"
"#;

const SEED: u64 = 352_800_000_000;

const BODY: &str = r#"
S=/run/overcommitd/overcommitd.sock
MODE=/proc/sys/vm/overcommit_memory
# Word-split on use: `$as_alice $CTL run ...` (runas execs a program, not a shell function).
CTL="overcommitctl --socket $S"
# out CMD...: CMD's stderr too, inside a block.
out() { "$@" 2>&1; }
# Commands, not functions: a function sent to the background runs in a subshell, and $!
# would be that subshell rather than the lease holder.
as_alice="probe runas 1000 1000 --groups 1000 --"
as_bob="probe runas 1001 1001 --"
knobs() { echo "mode=$(cat /proc/sys/vm/overcommit_memory) ratio=$(cat /proc/sys/vm/overcommit_ratio) kbytes=$(cat /proc/sys/vm/overcommit_kbytes)"; }
start_daemon() {
    overcommitd --config /etc/overcommitd/overcommitd.toml --socket $S \
        --state-dir /run/overcommitd --log stderr 2>> /tmp/overcommitd.log &
    DAEMON=$!
    i=0
    until $CTL leases > /dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -gt 100 ]; then
            echo "overcommitd did not answer within 10 s"; cat /tmp/overcommitd.log; exit 1
        fi
        sleep 0.1
    done
    echo "DAEMON pid=$DAEMON"
}
# children PID: the children of PID (the `sleep` a `run` started), to tidy up after it.
children() { cat /proc/$1/task/$1/children 2>/dev/null; }

# The CRNG must be ready before the first lease id is drawn (see VIRTIO_MODULES in
# harness.rs): a blocking read waits for it, and returns at once when virtio-rng did its job.
head -c 1 /dev/random > /dev/null
# Something other than the baseline, so that applying it at start is visible.
echo 80 > /proc/sys/vm/overcommit_ratio
echo 2 > $MODE
block before-daemon knobs
start_daemon
block baseline knobs

# alice (group hpc) runs the seed allocation under a lease.
block alice-run out $as_alice $CTL run --mode always -- sh -c 'echo "mode in the job: $(cat /proc/sys/vm/overcommit_memory)"; probe alloc 352800000000'
block after-run knobs
block after-run-alloc probe alloc --uid 1000 --gid 1000 352800000000
block after-run-leases $CTL leases --json

# A holder SIGKILLed mid-lease.
$as_alice $CTL run --mode always -- sleep 100 &
H1=$!
block h1-up probe waitfor $MODE 1 5000
block h1-leases $CTL leases --json
echo "HOLDER name=h1 pid=$H1"
C1=$(children $H1)
block h1-killed probe waitfor --kill $H1 $MODE 0 5000
kill $C1
block h1-after knobs
block h1-gone-leases $CTL leases --json

# overcommitd SIGKILLed mid-lease, then restarted: the lease is re-adopted and ends with its
# holder.
$as_alice $CTL run --mode always -- sleep 100 &
H2=$!
block h2-up probe waitfor $MODE 1 5000
echo "HOLDER name=h2 pid=$H2"
C2=$(children $H2)
kill -9 $DAEMON
wait $DAEMON
sleep 0.5
block daemon-dead knobs
start_daemon
block h2-readopted-leases $CTL leases --json
block h2-readopted knobs
block h2-killed probe waitfor --kill $H2 $MODE 0 5000
kill $C2
block h2-after knobs
block h2-gone-leases $CTL leases --json

# bob (no [[access]] rule) is denied and the kernel is not touched.
block bob-before knobs
block bob-run out $as_bob $CTL run --mode always -- probe alloc 352800000000
block bob-lease out $as_bob $CTL lease --ttl 1h --mode always
block bob-after knobs

# A TTL lease (prolog style): outlives its client, only its owner or root releases it.
ID=$($as_alice $CTL lease --ttl 1h --mode always)
echo "LEASE id=$ID"
block ttl-lease knobs
block bob-release out $as_bob $CTL release "$ID"
block after-bob-release knobs
block alice-release out $as_alice $CTL release "$ID"
block after-alice-release knobs

# A lease ends with its TTL.
block short-lease out $as_alice $CTL lease --ttl 2s --mode always
block short-expired probe waitfor $MODE 0 8000

# SIGTERM ends every lease and leaves the baseline.
$as_alice $CTL run --mode always -- sleep 100 &
H3=$!
block h3-up probe waitfor $MODE 1 5000
C3=$(children $H3)
kill -TERM $DAEMON
wait $DAEMON
echo "DAEMON-EXIT rc=$?"
block after-sigterm knobs
kill $C3

block daemon-log cat /tmp/overcommitd.log
"#;

/// Boots the daemon guest and checks every scenario.
pub fn run(test: &mut TestRun, host: &Host) {
    let console = Vm::new("daemon")
        .memory_mib(512)
        .file("/etc/overcommitd/overcommitd.toml", CONFIG)
        .run(host, BODY);
    let c = &console;
    let log = c.block("daemon-log").text;
    let context = |what: &str| format!("{what}\n--- overcommitd log ---\n{log}");
    // After holder `tag` was SIGKILLed: mode 0 within a second, no lease left; how long it took.
    let ended_by_kill = |tag: &str, why: &str| {
        let killed = waitfor(c, &format!("{tag}-killed"));
        assert_eq!(killed.result, "OK", "{}", context(why));
        assert!(
            killed.ms < 1000,
            "mode 0 came back {} ms after the SIGKILL",
            killed.ms
        );
        assert_eq!(
            knobs(c, &format!("{tag}-after")),
            "mode=0 ratio=50 kbytes=0"
        );
        assert_eq!(leases(c, &format!("{tag}-gone-leases")).len(), 0);
        killed.ms
    };

    test.scenario("daemon: applies the baseline at start", || {
        assert_eq!(knobs(c, "before-daemon"), "mode=2 ratio=80 kbytes=0");
        assert_eq!(
            knobs(c, "baseline"),
            "mode=0 ratio=50 kbytes=0",
            "{}",
            context("the baseline profile (heuristic, ratio 50) is not in the kernel")
        );
    });

    test.scenario(
        "daemon: alice's `run --mode always` allocates 352.8 GB",
        || {
            let run = c.block("alice-run");
            assert_eq!(run.rc, 0, "{}", context(&run.text));
            assert!(
                run.text.contains("mode in the job: 1"),
                "the job did not see mode 1:\n{}",
                context(&run.text)
            );
            let probe = probe_in(&run.text);
            assert_eq!(
                (probe.uid, probe.bytes, probe.result.as_str()),
                (1000, SEED, "OK"),
                "{}",
                context(&run.text)
            );
            // After the job: the baseline again, and the kernel refuses the same request.
            assert_eq!(knobs(c, "after-run"), "mode=0 ratio=50 kbytes=0");
            let alone = probe_in(&c.block("after-run-alloc").text);
            assert_eq!((alone.uid, alone.result.as_str()), (1000, "ENOMEM"));
            assert_eq!(leases(c, "after-run-leases").len(), 0);
        },
    );

    let h1 = test.scenario(
        "daemon: a SIGKILLed holder's lease ends within a second",
        || {
            let h1 = holder_pid(c, "h1");
            let up = waitfor(c, "h1-up");
            assert_eq!(up.result, "OK", "the lease never put mode 1 in force");
            let held = leases(c, "h1-leases");
            assert_eq!(held.len(), 1, "{held:?}");
            assert_eq!(held[0]["holder_pid"].as_i64(), Some(h1), "{held:?}");
            assert_eq!(held[0]["owner_uid"].as_u64(), Some(1000), "{held:?}");
            ended_by_kill(
                "h1",
                "the kernel did not go back to mode 0 after the holder died",
            )
        },
    );

    let h2 = test.scenario(
        "daemon: SIGKILLed and restarted, it re-adopts the lease, which ends with its holder",
        || {
            let h2 = holder_pid(c, "h2");
            assert_eq!(waitfor(c, "h2-up").result, "OK");
            assert_eq!(
                knobs(c, "daemon-dead"),
                "mode=1 ratio=50 kbytes=0",
                "the lease's policy should survive the daemon"
            );
            let adopted = leases(c, "h2-readopted-leases");
            assert_eq!(adopted.len(), 1, "{}", context(&format!("{adopted:?}")));
            assert_eq!(adopted[0]["holder_pid"].as_i64(), Some(h2), "{adopted:?}");
            assert_eq!(
                knobs(c, "h2-readopted"),
                "mode=1 ratio=50 kbytes=0",
                "{}",
                context("the restarted daemon did not keep the re-adopted lease in force")
            );
            assert!(
                log.contains("re-adopted"),
                "{}",
                context("no re-adoption in the log")
            );
            ended_by_kill(
                "h2",
                "the re-adopted lease did not end when its holder died",
            )
        },
    );

    test.scenario(
        "daemon: bob (no access rule) is denied; the kernel is untouched",
        || {
            let before = knobs(c, "bob-before");
            assert_eq!(before, "mode=0 ratio=50 kbytes=0");
            // `run` reports its own failures with 125, `lease` with 1.
            for (tag, rc) in [("bob-run", 125), ("bob-lease", 1)] {
                let b = c.block(tag);
                assert_eq!(b.rc, rc, "{tag}: expected exit {rc} (denied):\n{}", b.text);
                assert!(
                    b.text.contains("[denied]"),
                    "{tag}: expected the daemon's `denied` error:\n{}",
                    b.text
                );
                assert!(
                    !b.text.contains("PROBE "),
                    "{tag}: the command ran anyway:\n{}",
                    b.text
                );
            }
            assert_eq!(knobs(c, "bob-after"), before);
        },
    );

    test.scenario(
        "daemon: a TTL lease outlives its client; only its owner releases it",
        || {
            let id = c
                .marker_lines("LEASE id=")
                .first()
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            assert!(!id.is_empty(), "`lease` printed no id");
            assert_eq!(knobs(c, "ttl-lease"), "mode=1 ratio=50 kbytes=0");
            let bob = c.block("bob-release");
            assert_eq!(bob.rc, 1, "bob released alice's lease:\n{}", bob.text);
            assert_eq!(knobs(c, "after-bob-release"), "mode=1 ratio=50 kbytes=0");
            let alice = c.block("alice-release");
            assert_eq!(alice.rc, 0, "{}", alice.text);
            assert_eq!(knobs(c, "after-alice-release"), "mode=0 ratio=50 kbytes=0");
        },
    );

    let ttl = test.scenario("daemon: a 2 s lease ends with its TTL", || {
        let lease = c.block("short-lease");
        assert_eq!(lease.rc, 0, "{}", lease.text);
        let expired = waitfor(c, "short-expired");
        assert_eq!(expired.result, "OK", "the lease did not expire");
        // Measured from right after the grant: about 2 s, never much less.
        assert!(
            (1000..4000).contains(&expired.ms),
            "mode 0 came back {} ms after a 2 s lease was granted",
            expired.ms
        );
        expired.ms
    });

    test.scenario(
        "daemon: SIGTERM ends the leases and leaves the baseline",
        || {
            assert_eq!(waitfor(c, "h3-up").result, "OK");
            assert_eq!(
                c.marker_lines("DAEMON-EXIT rc=")
                    .first()
                    .map(|s| s.trim().to_string()),
                Some("0".to_string()),
                "{}",
                context("overcommitd did not exit 0 on SIGTERM")
            );
            assert_eq!(knobs(c, "after-sigterm"), "mode=0 ratio=50 kbytes=0");
        },
    );

    let ms = |v: Option<u64>| v.map_or("-".to_string(), |ms| format!("{ms} ms"));
    test.note(format!(
        "daemon: holder SIGKILLed -> baseline back in the kernel after {}; the same for a lease re-adopted after a daemon restart: {}; a 2 s TTL lease ended {} after its grant",
        ms(h1),
        ms(h2),
        ms(ttl)
    ));
}

/// `knobs` output of a block: `mode=M ratio=R kbytes=K`.
fn knobs(console: &Console, tag: &str) -> String {
    console.block(tag).value().to_string()
}

/// The one PROBE line in `text`.
fn probe_in(text: &str) -> Probe {
    let lines: Vec<Probe> = text
        .lines()
        .filter_map(|l| l.find("PROBE ").map(|i| &l[i + "PROBE ".len()..]))
        .filter_map(Probe::parse)
        .collect();
    assert_eq!(lines.len(), 1, "expected one PROBE line in:\n{text}");
    lines.into_iter().next().expect("one probe")
}

/// The `leases` of a `leases --json` block.
fn leases(console: &Console, tag: &str) -> Vec<Value> {
    let block = console.block(tag);
    assert_eq!(block.rc, 0, "{tag}: leases failed:\n{}", block.text);
    block.json()["leases"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{tag}: no leases array:\n{}", block.text))
}

fn holder_pid(console: &Console, name: &str) -> i64 {
    console
        .marker_lines("HOLDER ")
        .into_iter()
        .find_map(|rest| {
            let rest = rest.strip_prefix(&format!("name={name} pid="))?;
            rest.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no HOLDER line for {name}"))
}

/// What `probe waitfor` reported in a block.
pub struct Waited {
    pub ms: u64,
    pub result: String,
}

pub fn waitfor(console: &Console, tag: &str) -> Waited {
    let block = console.block(tag);
    let line = block
        .text
        .lines()
        .find_map(|l| l.find("WAITFOR ").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("{tag}: no WAITFOR line:\n{}", block.text));
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .unwrap_or_else(|| panic!("{tag}: no {key} in {line}"))
            .to_string()
    };
    Waited {
        ms: field("ms=")
            .parse()
            .unwrap_or_else(|_| panic!("{tag}: bad ms in {line}")),
        result: field("result="),
    }
}
