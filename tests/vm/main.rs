//! Real-kernel tests: each scenario boots a throw-away Linux guest under qemu (see
//! harness.rs) and checks what the kernel really does. Never the host's /proc/sys: it is
//! global and these machines are root.
//!
//! Run: `cargo test --test vm` (needs scripts/setup-vm.sh once).
//! Regenerate the real-kernel fixtures:
//! `cargo test --test vm -- --ignored generate_kernel_fixtures`.

mod fixtures;
mod harness;

use harness::{host, Vm};

/// Mode 0 (the default heuristic) refuses a request only when it alone exceeds
/// MemTotal + SwapTotal, for root and non-root alike.
#[test]
fn mode0_refuses_only_requests_above_ram_plus_swap() {
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
}

/// Boots the fixture matrix and rewrites tests/fixtures/kernels/ (see fixtures.rs).
#[test]
#[ignore = "writes tests/fixtures/kernels; run on purpose"]
fn generate_kernel_fixtures() {
    let Some(host) = host() else { return };
    fixtures::generate(host);
}
