//! Real-kernel tests: each scenario boots a throw-away Linux guest under qemu (see
//! harness.rs) and checks what the kernel really does. Never the host's /proc/sys: it is
//! global and these machines are root.
//!
//! Run: `cargo test --test vm` (needs scripts/setup-vm.sh once). Outside CI a host without
//! qemu, busybox or the guest kernel skips the suite with a loud message; with CI=true that
//! is a failure. OVERCOMMIT_VM_CONSOLE=1 shows every guest console (with --nocapture).
//! Regenerate the real-kernel fixtures:
//! `cargo test --test vm -- --ignored generate_kernel_fixtures`.
//!
//! What runs (issue 4), a boot per test, several scenarios per boot:
//! - predictor_*: `overcommitctl check` against the kernel's verdict for sizes around every
//!   limit, and `overcommitctl status` against /proc (predictor.rs), over a matrix of guests
//!   (512 MiB / 1 GiB, swap or not, huge pages, 1 or 2 CPUs, default or raised reserves) and
//!   policies (modes 0, 1, 2; ratios and kbytes); root and alice;
//! - daemon_leases_on_a_real_kernel: overcommitd's leases, holders that die, a daemon that
//!   dies, a user without access (daemon.rs);
//! - kernel_writes_profiles_lockout_swapon: ratio/kbytes switching, the lockout guard, swap
//!   appearing (writes.rs);
//! - top_attributes_the_commit_charge: who holds the commit charge, against the kernel's
//!   Committed_AS (top.rs);
//! - the mode-0 smoke test below, and the packaged service under systemd (systemd_guest.rs);
//! - job_scope_on_a_real_kernel: `run --scope job` and the preload library in modes 0 and 2
//!   (job_scope.rs).
//!
//! The summary: libtest runs tests on parallel threads (2 here, each boot a qemu process)
//! and hides what passing tests print. Every test goes through a `tally::TestRun`, which at
//! the test's end writes one line (boots, scenarios passed/failed, predictor agreement) to
//! the stderr handle itself, which libtest does not capture; the last of [`VM_TESTS`] to end
//! adds the suite's line:
//! `vm: N boots, M scenarios passed, F failed; predictor agreed with the kernel on A/C
//! (B borderline not compared)`. It works with any --test-threads; a filtered run prints
//! only its tests' own lines.

mod daemon;
mod fixtures;
mod harness;
mod job_scope;
mod predictor;
#[path = "../common/skip.rs"]
mod skip;
mod tally;
mod top;
#[path = "../common/top_report.rs"]
mod top_report;
mod writes;

use harness::{host, Vm};
use predictor::{Hardware, Limit, Policy};
use tally::TestRun;

/// Every non-ignored test of this binary. The suite's summary line is printed when all of
/// them have ended (see tally.rs); a new test must be added here.
pub const VM_TESTS: &[&str] = &[
    "mode0_refuses_only_requests_above_ram_plus_swap",
    "predictor_m512_noswap",
    "predictor_m1024_swap512",
    "predictor_m1024_huge64_2cpu",
    "predictor_m512_swap256_reserves",
    "daemon_leases_on_a_real_kernel",
    "kernel_writes_profiles_lockout_swapon",
    "systemd_guest_runs_the_packaged_service",
    "top_attributes_the_commit_charge",
    "job_scope_on_a_real_kernel",
];

/// Boots a predictor guest (see predictor.rs) under test `name`.
fn predictor_test(name: &'static str, hw: &Hardware, policies: &[Policy]) {
    let mut test = TestRun::start(name);
    if let Some(host) = host() {
        predictor::run(&mut test, host, hw, policies);
    }
    test.finish();
}

const MODE0: Policy = Policy::new("mode0-ratio50", 0, Limit::Ratio(50));
const MODE1: Policy = Policy::new("mode1-ratio50", 1, Limit::Ratio(50));

#[test]
fn predictor_m512_noswap() {
    predictor_test(
        "predictor_m512_noswap",
        &Hardware {
            name: "m512-noswap",
            memory_mib: 512,
            cpus: 1,
            swap_mib: None,
            hugepages: None,
            reserves: None,
        },
        &[
            MODE0,
            MODE1,
            Policy::new("mode2-ratio50", 2, Limit::Ratio(50)),
            Policy::new("mode2-kbytes300000", 2, Limit::Kbytes(300_000)),
        ],
    );
}

#[test]
fn predictor_m1024_swap512() {
    predictor_test(
        "predictor_m1024_swap512",
        &Hardware {
            name: "m1024-swap512",
            memory_mib: 1024,
            cpus: 1,
            swap_mib: Some(512),
            hugepages: None,
            reserves: None,
        },
        &[
            MODE0,
            Policy::new("mode2-ratio80", 2, Limit::Ratio(80)),
            Policy::new("mode2-kbytes700000", 2, Limit::Kbytes(700_000)),
            Policy::new("mode2-ratio100", 2, Limit::Ratio(100)),
        ],
    );
}

#[test]
fn predictor_m1024_huge64_2cpu() {
    predictor_test(
        "predictor_m1024_huge64_2cpu",
        &Hardware {
            name: "m1024-huge64-2cpu",
            memory_mib: 1024,
            cpus: 2,
            swap_mib: None,
            hugepages: Some(64),
            reserves: None,
        },
        &[
            MODE0,
            Policy::new("mode2-ratio60", 2, Limit::Ratio(60)),
            Policy::new("mode2-kbytes500000", 2, Limit::Kbytes(500_000)),
            MODE1,
        ],
    );
}

#[test]
fn predictor_m512_swap256_reserves() {
    predictor_test(
        "predictor_m512_swap256_reserves",
        &Hardware {
            name: "m512-swap256-reserves",
            memory_mib: 512,
            cpus: 1,
            swap_mib: Some(256),
            hugepages: None,
            // admin 64 MiB, user 256 MiB (defaults here: 8 MiB and about 14 MiB)
            reserves: Some((65_536, 262_144)),
        },
        &[
            MODE0,
            Policy::new("mode2-ratio70", 2, Limit::Ratio(70)),
            Policy::new("mode2-kbytes400000", 2, Limit::Kbytes(400_000)),
        ],
    );
}

/// Mode 0 (the default heuristic) refuses a request only when it alone exceeds
/// MemTotal + SwapTotal, for root and non-root alike.
#[test]
fn mode0_refuses_only_requests_above_ram_plus_swap() {
    let mut test = TestRun::start("mode0_refuses_only_requests_above_ram_plus_swap");
    let Some(host) = host() else { return };
    let body = r#"
echo 0 > /proc/sys/vm/overcommit_memory
kb() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
# MemTotal and SwapTotal are whole pages, so this is already page aligned.
total=$(( ($(kb MemTotal) + $(kb SwapTotal)) * 1024 / 4096 * 4096 ))
sizes="$total $((total + 4096)) 352800000000"
probe alloc $sizes
probe alloc --uid 1000 --gid 1000 $sizes
"#;
    let console = Vm::new("smoke-mode0").memory_mib(512).run(host, body);
    test.scenario("smoke: mode 0 refuses only above RAM + swap", || {
        let probes = console.probes();
        assert_eq!(probes.len(), 6, "{}", console.text);

        let total = probes[0].bytes;
        for uid in [0, 1000] {
            let verdict = |bytes: u64| {
                probes
                    .iter()
                    .find(|p| p.uid == uid && p.bytes == bytes)
                    .map(|p| p.result.as_str())
                    .unwrap_or_else(|| panic!("no probe of {bytes} bytes as uid {uid}"))
            };
            assert_eq!(verdict(total), "OK", "uid {uid}: exactly RAM + swap");
            assert_eq!(verdict(total + 4096), "ENOMEM", "uid {uid}: one page more");
            assert_eq!(verdict(352_800_000_000), "ENOMEM", "uid {uid}: 352.8 GB");
        }
    });
    test.finish();
}

/// Boots the fixture matrix and rewrites tests/fixtures/kernels/ (see fixtures.rs).
#[test]
#[ignore = "writes tests/fixtures/kernels; run on purpose"]
fn generate_kernel_fixtures() {
    let Some(host) = host() else { return };
    fixtures::generate(host);
}

mod systemd_guest;

/// The Debian package under the real systemd: a debootstrapped guest installs the .deb and
/// checks socket activation, Type=notify, the sandbox, leases, a crash restart, a refused
/// reload and the journal (see systemd_guest.rs; the first run builds the root file system).
#[test]
fn systemd_guest_runs_the_packaged_service() {
    let mut test = TestRun::start("systemd_guest_runs_the_packaged_service");
    let ran = test.scenario(
        "systemd guest: the packaged service under systemd",
        systemd_guest::systemd_guest_runs_the_packaged_service,
    );
    if ran == Some(false) {
        test.skipped("prerequisites missing (see above)");
    }
    test.finish();
}

/// Scenario 3 of issue 4: overcommitd's leases on a real kernel (see daemon.rs).
#[test]
fn daemon_leases_on_a_real_kernel() {
    let mut test = TestRun::start("daemon_leases_on_a_real_kernel");
    if let Some(host) = host() {
        daemon::run(&mut test, host);
    }
    test.finish();
}

/// Scenario 4 of issue 4: our writes on a real kernel (see writes.rs).
#[test]
fn kernel_writes_profiles_lockout_swapon() {
    let mut test = TestRun::start("kernel_writes_profiles_lockout_swapon");
    if let Some(host) = host() {
        writes::run(&mut test, host);
    }
    test.finish();
}

/// Issue 13: `overcommitctl top` against the kernel's own accounting (see top.rs).
#[test]
fn top_attributes_the_commit_charge() {
    let mut test = TestRun::start("top_attributes_the_commit_charge");
    if let Some(host) = host() {
        top::run(&mut test, host);
    }
    test.finish();
}

/// Boots the `top` scenario and rewrites tests/fixtures/top/ (see top.rs).
#[test]
#[ignore = "writes tests/fixtures/top; run on purpose"]
fn generate_top_fixtures() {
    let Some(host) = host() else { return };
    top::generate(host);
}

/// Issue 9: the job scope (`run --scope job`, the preload library) on a real kernel, in
/// modes 0 and 2 (see job_scope.rs).
#[test]
fn job_scope_on_a_real_kernel() {
    let mut test = TestRun::start("job_scope_on_a_real_kernel");
    if let Some(host) = host() {
        job_scope::run(&mut test, host);
    }
    test.finish();
}
