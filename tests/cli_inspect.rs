//! `overcommitctl status` and `check` run as built binaries against fake proc roots made from
//! real-kernel snapshots, including every kind of bad input.

mod common;

use std::fs;

use common::{ctl, fixture_proc, meminfo_bytes, proc_copy, run};
use serde_json::Value;

const SEED: u64 = 352_800_000_000;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

#[test]
fn status_json_reports_the_kernel_figures_exactly() {
    let proc_root = fixture_proc("m1024-swap512-mode2-ratio80");
    let (code, out, _) = run(ctl()
        .arg("--proc-root")
        .arg(&proc_root)
        .args(["status", "--json"]));
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["mode"], "never");
    assert_eq!(v["mode_number"], 2);
    assert_eq!(v["overcommit_ratio"], 80);
    assert_eq!(v["limit_in_force"], "ratio");
    assert_eq!(v["mem_total_bytes"], meminfo_bytes(&proc_root, "MemTotal"));
    assert_eq!(
        v["swap_total_bytes"],
        meminfo_bytes(&proc_root, "SwapTotal")
    );
    assert_eq!(
        v["commit_limit_bytes"],
        meminfo_bytes(&proc_root, "CommitLimit")
    );
    assert_eq!(v["commit_limit_computed_bytes"], v["commit_limit_bytes"]);
    assert_eq!(v["swap_devices"][0]["path"], "/dev/vda");
    assert!(
        v["largest_allocation"]["root_bytes"].as_u64().unwrap()
            > v["largest_allocation"]["user_bytes"].as_u64().unwrap()
    );
}

#[test]
fn status_text_is_aligned_plain_when_piped_and_coloured_only_when_forced() {
    let proc_root = fixture_proc("m512-noswap-mode1");
    let (code, out, _) = run(ctl().arg("--proc-root").arg(&proc_root).arg("status"));
    assert_eq!(code, 0);
    assert!(
        !out.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    assert!(out.contains("always (1)"));
    assert!(
        out.contains("only the OOM killer"),
        "mode 1 without swap is a finding:\n{out}"
    );
    let (_, forced, _) = run(ctl()
        .env("CLICOLOR_FORCE", "1")
        .arg("--proc-root")
        .arg(&proc_root)
        .arg("status"));
    assert!(forced.contains('\x1b'));
    let (_, no_color, _) = run(ctl()
        .env("CLICOLOR_FORCE", "1")
        .env("NO_COLOR", "1")
        .arg("--proc-root")
        .arg(&proc_root)
        .arg("status"));
    assert!(!no_color.contains('\x1b'), "NO_COLOR wins");
}

#[test]
fn status_names_the_sysctl_d_file_and_line_that_sets_the_boot_value() {
    let sysctl = tempfile::tempdir().unwrap();
    fs::create_dir_all(sysctl.path().join("etc/sysctl.d")).unwrap();
    fs::create_dir_all(sysctl.path().join("usr/lib/sysctl.d")).unwrap();
    fs::write(
        sysctl.path().join("usr/lib/sysctl.d/50-vendor.conf"),
        "vm.overcommit_memory = 0\n",
    )
    .unwrap();
    fs::write(
        sysctl.path().join("etc/sysctl.d/90-hpc.conf"),
        "# site\n\nvm.overcommit_memory = 2\n",
    )
    .unwrap();
    let (code, out, _) = run(ctl()
        .arg("--proc-root")
        .arg(fixture_proc("m512-noswap-mode0"))
        .arg("--sysctl-root")
        .arg(sysctl.path())
        .args(["status", "--json"]));
    assert_eq!(code, 0);
    let v = json(&out);
    let winner = &v["boot"]["values"]["vm.overcommit_memory"];
    assert_eq!(winner["value"], 2);
    assert_eq!(winner["text"], "2");
    assert_eq!(winner["line"], 3);
    assert_eq!(winner["overrides"], 1, "it overrides the vendor file");
    assert!(winner["file"]
        .as_str()
        .unwrap()
        .ends_with("etc/sysctl.d/90-hpc.conf"));
    let codes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(
        codes.contains(&"boot_differs"),
        "live mode 0 vs boot mode 2: {codes:?}"
    );
}

#[test]
fn status_prometheus_format_has_the_gauges() {
    let (code, out, _) = run(ctl()
        .arg("--proc-root")
        .arg(fixture_proc("m512-noswap-mode2-ratio50"))
        .args(["status", "--format", "prometheus"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("# TYPE overcommit_mode gauge\novercommit_mode 2\n"),
        "{out}"
    );
    assert!(
        out.contains("overcommit_ratio 0.5\n"),
        "a ratio, 0..1: {out}"
    );
    assert!(
        out.contains("overcommit_limit_bytes 0\n"),
        "kbytes in bytes: {out}"
    );
    assert!(out.contains("overcommit_largest_allocation_bytes{privilege=\"user\"}"));
}

#[test]
fn check_explains_the_seed_refused_under_heuristic_and_allowed_under_always() {
    let proc_root = fixture_proc("m1024-swap512-mode0");
    let (code, out, _) = run(ctl().arg("--proc-root").arg(&proc_root).args([
        "check",
        "--shape",
        "210000x210000",
        "--dtype",
        "float64",
        "--json",
    ]));
    assert_eq!(code, 1, "refused exits 1");
    let v = json(&out);
    assert_eq!(v["verdict"], "refused");
    assert_eq!(v["mode"], "heuristic");
    assert_eq!(v["rule"], "heuristic");
    assert_eq!(v["request_bytes"], SEED);
    let total = meminfo_bytes(&proc_root, "MemTotal") + meminfo_bytes(&proc_root, "SwapTotal");
    assert_eq!(v["limit_bytes"], total);
    assert!(v["remedies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "mode" && r["mode"] == "always"));

    let (code, text, _) = run(ctl().arg("--proc-root").arg(&proc_root).args([
        "check",
        "--shape",
        "210000x210000",
        "--mode",
        "always",
    ]));
    assert_eq!(code, 0, "allowed exits 0");
    assert!(
        text.contains("ALLOWED") && text.contains("hypothetical"),
        "{text}"
    );

    let (_, text, _) = run(ctl()
        .arg("--proc-root")
        .arg(&proc_root)
        .args(["check", "352.8GB"]));
    assert!(
        text.contains("352,800,000,000 bytes") && text.contains("REFUSED"),
        "{text}"
    );
    assert!(
        text.contains("this job only: overcommitctl run --scope job -- CMD")
            && text.contains("overcommitctl run --scope node --mode always -- CMD"),
        "names what would allow it, the job scope first:\n{text}"
    );
}

#[test]
fn check_in_mode_never_is_borderline_near_the_limit_and_exits_1() {
    let proc_root = fixture_proc("m512-noswap-mode2-ratio50");
    let (_, out, _) = run(ctl()
        .arg("--proc-root")
        .arg(&proc_root)
        .args(["status", "--json"]));
    let status = json(&out);
    let headroom = status["headroom_bytes"].as_u64().unwrap();
    let (code, out, _) = run(ctl()
        .arg("--proc-root")
        .arg(&proc_root)
        .args(["check", "--root", "--vm-size", "0", "--json"])
        .arg(headroom.to_string()));
    assert_eq!(code, 1);
    assert_eq!(json(&out)["verdict"], "borderline");
    let (code, out, _) = run(ctl()
        .arg("--proc-root")
        .arg(&proc_root)
        .args(["check", "--user", "--json", "64M"]));
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["rule"], "commit_limit");
    assert_eq!(v["verdict"], "allowed");
    assert!(v["committed_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn check_hypotheticals_change_the_answer() {
    let proc_root = fixture_proc("m512-noswap-mode0");
    let mem = meminfo_bytes(&proc_root, "MemTotal");
    let request = (mem + (256 << 20)).to_string();
    let (code, _, _) = run(ctl()
        .arg("--proc-root")
        .arg(&proc_root)
        .args(["check", &request]));
    assert_eq!(code, 1);
    let (code, out, _) = run(ctl().arg("--proc-root").arg(&proc_root).args([
        "check",
        "--swap-total",
        "512M",
        "--json",
        &request,
    ]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["hypothetical"], true);
    let (code, out, _) = run(ctl().arg("--proc-root").arg(&proc_root).args([
        "check", "--mode", "never", "--ratio", "50", "--json", "300M",
    ]));
    assert_eq!(code, 1);
    assert_eq!(json(&out)["rule"], "commit_limit");
}

#[test]
fn check_pid_reads_the_real_process() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let (code, out, _) = run(ctl()
        .arg("--proc-root")
        .arg(fixture_proc("m512-noswap-mode2-ratio50"))
        .args(["check", "--json", "--pid"])
        .arg(child.id().to_string())
        .arg("1M"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(code, 0, "{out}");
    let v = json(&out);
    assert!(v["process"]["vm_size_bytes"].as_u64().unwrap() > 0);
    assert!(v["process"]["map_count"].as_u64().unwrap() > 0);
}

#[test]
fn bad_sizes_and_dtypes_exit_2_with_a_message_naming_the_input() {
    let proc_root = fixture_proc("m512-noswap-mode0");
    for (args, expect) in [
        (vec!["check", "12Q"], "12Q"),
        (vec!["check", "--", "-5G"], "-5G"),
        (vec!["check", "1e400"], "1e400"),
        (
            vec!["check", "--shape", "10x10", "--dtype", "float65"],
            "float65",
        ),
        (vec!["check", "--shape", "10xfoo"], "10xfoo"),
        (vec!["check", "--mode", "sometimes", "1G"], "sometimes"),
        (
            vec!["check", "--mode", "never", "--ratio", "150", "1G"],
            "150",
        ),
        (
            vec!["check", "--ratio", "50", "--kbytes", "100", "1G"],
            "cannot be used with",
        ),
        (vec!["check"], "required"),
    ] {
        let (code, out, err) = run(ctl().arg("--proc-root").arg(&proc_root).args(&args));
        assert_eq!(code, 2, "{args:?} should exit 2:\n{out}{err}");
        assert!(
            err.contains(expect),
            "{args:?}: the error should mention {expect}:\n{err}"
        );
    }
}

#[test]
fn missing_or_unparsable_proc_files_exit_2_naming_the_file() {
    // A container without /proc/sys/vm.
    let no_vm = proc_copy("m512-noswap-mode0");
    fs::remove_dir_all(no_vm.path().join("proc/sys/vm")).unwrap();
    let (code, _, err) = run(ctl()
        .arg("--proc-root")
        .arg(no_vm.path().join("proc"))
        .arg("status"));
    assert_eq!(code, 2);
    assert!(
        err.contains("sys/vm/overcommit_memory") && err.contains("containers"),
        "{err}"
    );

    let garbage = proc_copy("m512-noswap-mode0");
    fs::write(
        garbage.path().join("proc/sys/vm/overcommit_ratio"),
        "fifty\n",
    )
    .unwrap();
    let (code, _, err) = run(ctl()
        .arg("--proc-root")
        .arg(garbage.path().join("proc"))
        .args(["check", "1G"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("overcommit_ratio") && err.contains("fifty"),
        "{err}"
    );

    let bad_mode = proc_copy("m512-noswap-mode0");
    fs::write(bad_mode.path().join("proc/sys/vm/overcommit_memory"), "7\n").unwrap();
    let (code, _, err) = run(ctl()
        .arg("--proc-root")
        .arg(bad_mode.path().join("proc"))
        .arg("status"));
    assert_eq!(code, 2);
    assert!(err.contains("0, 1 or 2"), "{err}");

    let no_meminfo = proc_copy("m512-noswap-mode0");
    fs::write(no_meminfo.path().join("proc/meminfo"), "MemTotal: lots\n").unwrap();
    let (code, _, err) = run(ctl()
        .arg("--proc-root")
        .arg(no_meminfo.path().join("proc"))
        .arg("status"));
    assert_eq!(code, 2);
    assert!(err.contains("meminfo"), "{err}");

    let (code, _, err) = run(ctl().args(["--proc-root", "/nonexistent/proc", "status"]));
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/proc"), "{err}");
}

#[test]
fn the_proc_root_can_come_from_the_environment() {
    let (code, out, _) = run(ctl()
        .env("OVERCOMMIT_PROC_ROOT", fixture_proc("m512-noswap-mode1"))
        .args(["status", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["mode"], "always");
}
