//! The job scope on this machine's real kernel (mode 0 here; nothing is written to
//! /proc/sys): libovercommit_preload.so loaded into real programs (the job_probe example,
//! Debian's python3 with numpy), through `overcommitctl run --scope job` and LD_PRELOAD,
//! as root and as another uid, with no daemon. Large allocations are huge and untouched
//! (a byte per page at most in a few pages): the host is shared.
//!
//! The library and the probe are built by common::preload::built().

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::preload::{built, fields};
use common::{as_user, run, Daemon};
use serde_json::Value;

/// The seed: 210000² float64 = 352.8 GB in one calloc.
const SEED: &str = "import numpy; a = numpy.zeros((210000, 210000)); a[0, 0] = 1; a[-1, -1] = 2; print('allocated', a.nbytes, a[0, 0] + a[-1, -1])";
const PYTHON: &str = "/usr/bin/python3";
const NO_SOCKET: &str = "/nonexistent/overcommitd.sock";
const MIB: u64 = 1 << 20;

/// `overcommitctl` reading the real /proc, with no daemon to talk to.
fn ctl() -> Command {
    let mut command = common::ctl();
    command.env("OVERCOMMIT_SOCKET", NO_SOCKET);
    command
}

fn probe() -> Command {
    let mut command = common::clean(&built().probe);
    command
        .env_remove("LD_PRELOAD")
        .env_remove("OVERCOMMIT_MIN_SIZE");
    command
}

/// `run --scope job -- job_probe ARGS...`
fn probe_in_job(extra: &[&str], args: &[&str]) -> (i32, String, String) {
    run(ctl()
        .args(["run", "--scope", "job"])
        .args(extra)
        .arg("--")
        .arg(&built().probe)
        .args(args))
}

fn meminfo_bytes(key: &str) -> u64 {
    common::meminfo_bytes(Path::new("/proc"), key)
}

fn overcommit_memory() -> String {
    fs::read_to_string("/proc/sys/vm/overcommit_memory")
        .unwrap()
        .trim()
        .to_string()
}

/// Twice the RAM (and swap): refused by mode 0 unless MAP_NORESERVE.
fn beyond_ram() -> u64 {
    (2 * (meminfo_bytes("MemTotal") + meminfo_bytes("SwapTotal"))).next_multiple_of(4096) + 4096
}

/// The threshold the job scope uses by default: half of MemTotal + SwapTotal, in pages.
fn default_min_size() -> u64 {
    (meminfo_bytes("MemTotal") + meminfo_bytes("SwapTotal")) / 2 / 4096 * 4096
}

fn json_line(err: &str) -> Value {
    let line = err
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line on stderr:\n{err}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn require_numpy() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import numpy"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{PYTHON} cannot import numpy: install Debian's python3-numpy (scripts/test.sh does)"
    );
}

#[test]
fn numpy_seed_fails_plainly_and_runs_in_the_job_scope_for_an_unprivileged_user() {
    require_numpy();
    built();
    let mode_before = overcommit_memory();
    assert_eq!(mode_before, "0", "these tests expect the host in mode 0");
    let user = |command: &mut Command| {
        command.env("HOME", "/tmp").current_dir("/tmp");
    };

    let mut plain = common::clean(PYTHON);
    user(&mut plain);
    let (code, _, err) = run(as_user(&mut plain, 1000, 1000, &[]).args(["-c", SEED]));
    assert_ne!(code, 0, "the seed must fail without the job scope: {err}");
    assert!(
        err.contains("MemoryError") && err.contains("Unable to allocate 329. GiB"),
        "{err}"
    );

    // The default scope (auto) takes the job scope here; no daemon, no root.
    let mut job = ctl();
    user(&mut job);
    let (code, out, err) = run(as_user(&mut job, 1000, 1000, &[])
        .args(["run", "--json", "--", "python3", "-c", SEED])
        .env("PATH", "/usr/bin:/bin"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "allocated 352800000000 3.0");
    let record = json_line(&err);
    assert_eq!(record["schema_version"], 1);
    assert_eq!(record["scope"], "job", "{record}");
    assert_eq!(record["scope_reason"], "dynamic_program");
    assert_eq!(record["kernel_mode"], "heuristic");
    assert_eq!(record["command"], "/usr/bin/python3");
    assert_eq!(record["preload"], "honoured");
    assert_eq!(record["min_size_bytes"], default_min_size());
    assert_eq!(record["library"], built().library.to_str().unwrap());
    assert!(record["lease"].is_null());

    // In text, it says what it did and that the node is left alone.
    let mut job = ctl();
    user(&mut job);
    let (code, out, err) = run(as_user(&mut job, 1000, 1000, &[])
        .args(["run", "--scope", "job", "--", PYTHON, "-c", SEED]));
    assert_eq!(
        (code, out.trim()),
        (0, "allocated 352800000000 3.0"),
        "{err}"
    );
    assert!(
        err.contains("job scope (--scope job)")
            && err.contains("the node's policy stays heuristic (0)"),
        "{err}"
    );
    assert_eq!(
        overcommit_memory(),
        mode_before,
        "the node's policy is never written"
    );
}

const KINDS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    "mmap",
    "mmap64",
];

#[test]
fn every_allocation_function_gets_beyond_ram_in_the_job_scope_and_not_without() {
    let bytes = beyond_ram().to_string();
    for kind in KINDS {
        let (code, out, err) = run(probe().args(["alloc", kind, &bytes]));
        assert_eq!(code, 0, "{err}");
        let plain = fields(&out, "kind");
        assert_eq!(
            plain["result"], "ENOMEM",
            "{kind} without the library: {out}"
        );
        assert_eq!(plain["library"], "absent");

        let (code, out, err) = probe_in_job(&[], &["alloc", kind, &bytes]);
        assert_eq!(code, 0, "{kind}: {out}{err}");
        let job = fields(&out, "kind");
        assert_eq!(job["result"], "OK", "{kind} in the job scope: {out}");
        assert_eq!(job["noreserve"], "yes", "{kind}: {out}");
        assert_eq!(job["library"], default_min_size().to_string());
    }
}

#[test]
fn requests_below_the_threshold_go_to_the_real_allocator_untouched() {
    let min = 8 * MIB;
    let below = (min - 4096).to_string();
    let at = min.to_string();
    let min_arg = format!("{min}");
    let (_, out, err) = probe_in_job(&["--min-size", &min_arg], &["alloc", "malloc", &below]);
    let small = fields(&out, "kind");
    // glibc maps a block this size itself, without MAP_NORESERVE.
    assert_eq!(
        (small["result"].as_str(), small["noreserve"].as_str()),
        ("OK", "no"),
        "{out}{err}"
    );
    assert_eq!(small["library"], min.to_string());
    let (_, out, _) = probe_in_job(&["--min-size", "8M"], &["alloc", "calloc", &at]);
    assert_eq!(fields(&out, "kind")["noreserve"], "yes", "{out}");

    // Without OVERCOMMIT_MIN_SIZE the library computes the same default as `run`.
    let (_, out, _) = run(probe()
        .env("LD_PRELOAD", &built().library)
        .args(["alloc", "malloc", "100"]));
    assert_eq!(
        fields(&out, "kind")["library"],
        default_min_size().to_string()
    );
    // A broken value is refused loudly, and the default used.
    let (_, out, err) = run(probe()
        .env("LD_PRELOAD", &built().library)
        .env("OVERCOMMIT_MIN_SIZE", "12G")
        .args(["alloc", "malloc", "100"]));
    assert!(err.contains("ignoring OVERCOMMIT_MIN_SIZE=12G"), "{err}");
    assert_eq!(
        fields(&out, "kind")["library"],
        default_min_size().to_string()
    );
}

#[test]
fn realloc_crosses_the_threshold_both_ways_keeping_the_contents() {
    let (code, out, err) = probe_in_job(&["--min-size", "1M"], &["cross", &MIB.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    // Each step's size and whether it lives in a MAP_NORESERVE block of the library.
    assert_eq!(
        fields(&out, "cross")["steps"],
        "1000:false,1048576:true,3158073:true,2097152:true,1044480:false,100:false,1048577:true",
        "{out}"
    );
}

/// Page-aligned blocks are found through a registry of 1,024 slots; once every slot holds a
/// live block, further page-aligned requests are served by the real allocator (charged, as
/// without the library), never refused.
#[test]
fn page_aligned_blocks_beyond_the_registry_fall_back_to_the_real_allocator() {
    let (code, out, err) = probe_in_job(
        &["--min-size", "1M"],
        &["aligned", "1100", &(2 * MIB).to_string()],
    );
    assert_eq!(code, 0, "{out}{err}");
    let aligned = fields(&out, "aligned");
    assert_eq!(aligned["ok"], "1100", "{out}");
    assert_eq!(aligned["first_noreserve"], "yes", "{out}");
    assert_eq!(aligned["last_noreserve"], "no", "{out}");
}

#[test]
fn threads_mixing_small_and_large_blocks_keep_every_block_intact() {
    let (code, out, err) = probe_in_job(
        &["--min-size", "1M"],
        &["stress", "8", "20000", &(4 * MIB).to_string()],
    );
    assert_eq!(code, 0, "{out}{err}");
    let stress = fields(&out, "stress");
    assert_eq!(stress["operations"], "160000");
    assert!(stress["large"].parse::<u64>().unwrap() > 1000, "{out}");
    assert_eq!(stress["library"], MIB.to_string());
}

/// The real allocator's pointers at every page offset the library inspects are passed
/// through untouched: glibc's, and a hostile allocator's (tests/fixtures/hostile_malloc.c)
/// whose page-aligned pointers have no mapped page before them and whose other pointers
/// have garbage in front.
#[test]
fn foreign_pointers_are_never_misread() {
    let (code, out, err) = run(probe()
        .env("LD_PRELOAD", &built().library)
        .env("OVERCOMMIT_MIN_SIZE", MIB.to_string())
        .arg("foreign"));
    assert_eq!(code, 0, "with glibc: {out}{err}");
    assert_eq!(
        fields(&out, "foreign")["offsets"],
        "0:8,64:8,128:8,256:8,512:8,1024:8,2048:8",
        "{out}"
    );

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let hostile = dir.path().join("libhostile_malloc.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&hostile)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile_malloc.c"))
        .status()
        .expect("run cc (the C compiler Rust links with)");
    assert!(status.success());
    let preload = format!("{} {}", built().library.display(), hostile.display());
    for args in [
        &["foreign"][..],
        &["cross", "1048576"][..],
        &["stress", "4", "4000", "4194304"][..],
    ] {
        let (code, out, err) = run(probe()
            .env("LD_PRELOAD", &preload)
            .env("OVERCOMMIT_MIN_SIZE", MIB.to_string())
            .args(args));
        assert_eq!(code, 0, "with the hostile allocator, {args:?}: {out}{err}");
        assert!(out.contains(&format!("library={MIB}")), "{out}");
    }
}

#[test]
fn fork_and_exec_children_inherit_the_job_scope() {
    let bytes = beyond_ram().to_string();
    let (code, out, err) = probe_in_job(&[], &["fork", &bytes]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(fields(&out, "fork-child")["result"], "OK", "{out}");
    assert_eq!(fields(&out, "fork-child")["noreserve"], "true", "{out}");
    assert_eq!(
        fields(&out, "kind")["result"],
        "OK",
        "the exec'd child: {out}"
    );
    // Through a shell, as job scripts do.
    let script = format!("{} alloc calloc {bytes}", built().probe.display());
    let (code, out, err) = run(ctl().args(["run", "--scope", "job", "--", "sh", "-c", &script]));
    assert_eq!(
        (code, fields(&out, "kind")["result"].as_str()),
        (0, "OK"),
        "{err}"
    );
}

/// A minimal static x86-64 program: exit(42).
#[cfg(target_arch = "x86_64")]
fn static_program(path: &Path) {
    let code: &[u8] = &[
        0xbf, 42, 0, 0, 0, // mov edi, 42
        0xb8, 60, 0, 0, 0, // mov eax, 60 (exit)
        0x0f, 0x05, // syscall
    ];
    let size = (64 + 56 + code.len()) as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(0x400000u64 + 64 + 56).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 0, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for word in [0u64, 0x400000, 0x400000, size, size, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(code);
    fs::write(path, elf).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

#[cfg(target_arch = "x86_64")]
#[test]
fn programs_that_ignore_ld_preload_are_detected_and_reported() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = |name: &str| dir.path().join(name);
    static_program(&path("static"));
    let (code, _, _) = run(&mut Command::new(path("static")));
    assert_eq!(code, 42, "the static program runs");

    let script = |name: &str, text: &str| {
        fs::write(path(name), text).unwrap();
        fs::set_permissions(path(name), fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        "static-script",
        &format!("#!{}\n", path("static").display()),
    );
    script("env-script", "#!/usr/bin/env sh\nexit 7\n");
    script("no-shebang", "exit 9\n");
    let mut foreign = fs::read(path("static")).unwrap();
    foreign[4] = 1; // ELFCLASS32
    fs::write(path("foreign"), foreign).unwrap();
    fs::set_permissions(path("foreign"), fs::Permissions::from_mode(0o755)).unwrap();
    for (name, owner, mode) in [("setuid", "1001", 0o4755), ("setgid", ":1001", 0o2755)] {
        fs::copy("/usr/bin/true", path(name)).unwrap();
        let status = Command::new("chown")
            .arg(owner)
            .arg(path(name))
            .status()
            .unwrap();
        assert!(status.success());
        fs::set_permissions(path(name), fs::Permissions::from_mode(mode)).unwrap();
    }

    for (name, detail) in [
        ("static", "statically linked"),
        ("static-script", "statically linked"),
        ("foreign", "ELF class 1"),
        ("setuid", "setuid to uid 1001"),
        ("setgid", "setgid to gid 1001"),
    ] {
        let (code, _, err) = run(ctl().args(["run", "--scope", "job", "--"]).arg(path(name)));
        assert_eq!(code, 125, "{name}: CMD must not run: {err}");
        assert!(
            err.contains(detail)
                && err.contains("does not apply LD_PRELOAD")
                && err.contains("CMD was not run"),
            "{name}: {err}"
        );
        // auto takes a lease instead, and says why when it cannot.
        let (code, _, err) = run(ctl().args(["run", "--json", "--"]).arg(path(name)));
        assert_eq!(code, 125, "{name}: {err}");
        let failure = json_line(&err);
        assert_eq!(failure["error"]["code"], "unreachable", "{name}: {failure}");
        let message = failure["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("node scope (auto:") && message.contains(detail),
            "{message}"
        );
    }
    // Scripts run with their interpreter, found as the kernel and env find it.
    let (code, _, err) = run(ctl()
        .args(["run", "--json", "--"])
        .arg(path("env-script"))
        .env("PATH", "/usr/bin:/bin"));
    assert_eq!(code, 7, "{err}");
    assert_eq!(json_line(&err)["program"], "/usr/bin/sh");
    assert_eq!(json_line(&err)["scope"], "job");
    let (code, _, err) = run(ctl().args(["run", "--json", "--"]).arg(path("no-shebang")));
    assert_eq!(code, 9, "execvp runs it with /bin/sh: {err}");
    assert_eq!(json_line(&err)["program"], "/bin/sh");
}

#[test]
fn run_exits_with_the_commands_status_or_its_own_125_126_127() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let not_executable = dir.path().join("data.txt");
    fs::write(&not_executable, "x").unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec!["--".into(), "sh".into(), "-c".into(), "exit 3".into()],
            3,
            "",
        ),
        (
            vec![
                "--".into(),
                "sh".into(),
                "-c".into(),
                "kill -TERM $$".into(),
            ],
            143,
            "",
        ),
        (
            vec!["--".into(), "no-such-command-here".into()],
            127,
            "command not found",
        ),
        (
            vec![
                "--".into(),
                dir.path().join("missing").display().to_string(),
            ],
            127,
            "no such file",
        ),
        (
            vec!["--".into(), not_executable.display().to_string()],
            126,
            "not executable",
        ),
        (
            vec!["--".into(), dir.path().display().to_string()],
            126,
            "is a directory",
        ),
        (
            vec![
                "--bogus".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                touch.clone(),
            ],
            125,
            "unexpected argument",
        ),
        (
            vec![
                "--scope".into(),
                "job".into(),
                "--mode".into(),
                "always".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                touch.clone(),
            ],
            125,
            "--scope job takes none",
        ),
        (
            vec![
                "--scope".into(),
                "node".into(),
                "--min-size".into(),
                "1G".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                touch.clone(),
            ],
            125,
            "--min-size is the job scope's threshold",
        ),
        (
            vec![
                "--min-size".into(),
                "100".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                touch.clone(),
            ],
            125,
            "below one page",
        ),
        (
            vec![
                "--scope".into(),
                "node".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                touch.clone(),
            ],
            125,
            "cannot reach overcommitd",
        ),
    ];
    for (args, want, message) in cases {
        let (code, _, err) = run(ctl().arg("run").args(&args));
        assert_eq!(code, want, "run {args:?}: {err}");
        assert!(err.contains(message), "run {args:?}: {err}");
        // With --json the failure is one JSON object on stderr (stdout is CMD's).
        if (125..=127).contains(&want) {
            let (code, out, err) = run(ctl().args(["run", "--json"]).args(&args));
            assert_eq!((code, out.as_str()), (want, ""), "run --json {args:?}");
            let failure = json_line(&err);
            assert_eq!(failure["schema_version"], 1);
            assert!(
                failure["error"]["code"].is_string() && failure["error"]["message"].is_string(),
                "{failure}"
            );
        }
    }
    assert!(!marker.exists(), "no failed run may start CMD");
    // The help (and the man page generated from it) says so.
    let (_, help, _) = run(ctl().args(["run", "--help"]));
    assert!(
        help.contains(
            "125 bad usage, job scope impossible, lease refused, overcommitd unreachable"
        ) && help.contains("126 CMD found but cannot be executed; 127 CMD not found"),
        "{help}"
    );
}

#[test]
fn mode_never_refuses_the_job_scope_and_auto_asks_for_a_lease() {
    let proc = common::fixture_proc("m512-noswap-mode2-ratio50");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let marker = dir.path().join("ran");
    let (code, _, err) = run(ctl()
        .arg("--proc-root")
        .arg(&proc)
        .args(["run", "--scope", "job", "--", "touch"])
        .arg(&marker));
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("mode never (2), which ignores MAP_NORESERVE")
            && err.contains("CMD was not run"),
        "{err}"
    );
    assert!(!marker.exists());
    let (code, _, err) = run(ctl()
        .arg("--proc-root")
        .arg(&proc)
        .args(["run", "--json", "--", "touch"])
        .arg(&marker));
    assert_eq!(code, 125);
    let failure = json_line(&err);
    assert_eq!(failure["error"]["code"], "unreachable");
    assert!(
        failure["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mode never (2) ignores MAP_NORESERVE"),
        "{failure}"
    );
    assert!(!marker.exists());
}

#[test]
fn a_missing_library_is_a_clear_error_and_auto_falls_back_to_a_lease() {
    assert!(
        !Path::new("/usr/lib/overcommit/libovercommit_preload.so").exists(),
        "this test needs a host without the installed package"
    );
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ctl_copy = dir.path().join("overcommitctl");
    fs::copy(env!("CARGO_BIN_EXE_overcommitctl"), &ctl_copy).unwrap();
    let mut job = common::clean(&ctl_copy);
    job.env("OVERCOMMIT_SOCKET", NO_SOCKET);
    let (code, _, err) = run(job.args(["run", "--scope", "job", "--", "true"]));
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("libovercommit_preload.so")
            && err.contains(&dir.path().display().to_string())
            && err.contains("/usr/lib/overcommit/libovercommit_preload.so"),
        "{err}"
    );
    let mut auto = common::clean(&ctl_copy);
    auto.env("OVERCOMMIT_SOCKET", NO_SOCKET);
    let (code, _, err) = run(auto.args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains("node scope (auto: libovercommit_preload.so is not installed)"),
        "{err}"
    );
}

/// `check --scope job` predicts what the kernel does with the job scope.
#[test]
fn check_predicts_the_job_scope() {
    let bytes = beyond_ram().to_string();
    let (code, out, _) = run(ctl().args(["check", &bytes]));
    assert_eq!(code, 1, "{out}");
    let first = out
        .lines()
        .skip_while(|l| !l.contains("What would allow it"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        first.contains("this job only: overcommitctl run --scope job -- CMD"),
        "{out}"
    );
    assert!(
        out.contains("for the whole node while the job runs"),
        "{out}"
    );

    let (code, out, _) = run(ctl().args(["check", "--json", "--scope", "job", &bytes]));
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["verdict"], "allowed");
    assert_eq!(report["rule"], "no_reserve");
    assert_eq!(report["scope"], "job");
    assert_eq!(report["min_size_bytes"], default_min_size());
    // The kernel agrees: the probe's calloc of that size succeeds in the job scope.
    let (_, out, _) = probe_in_job(&[], &["alloc", "calloc", &bytes]);
    assert_eq!(fields(&out, "kind")["result"], "OK");

    // The process's own limits still apply: with RLIMIT_AS the kernel refuses, and
    // `check --pid` of that process says so.
    let limited = format!("ulimit -v {}; exec \"$@\"", 4 * 1024 * 1024);
    let in_limits = |args: &[&str]| {
        let mut command = ctl();
        command
            .args(["run", "--scope", "job", "--", "sh", "-c", &limited, "sh"])
            .arg(&built().probe)
            .args(args);
        command
    };
    let (_, out, err) = run(&mut in_limits(&["alloc", "malloc", &bytes]));
    assert_eq!(fields(&out, "kind")["result"], "ENOMEM", "{err}");
    let mut holder = in_limits(&["hold", "4096"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let pid = fields(&line, "hold")["pid"].clone();
    let (code, out, _) =
        run(ctl().args(["check", "--json", "--scope", "job", "--pid", &pid, &bytes]));
    holder.kill().unwrap();
    holder.wait().unwrap();
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (code, report["rule"].as_str()),
        (1, Some("rlimit_as")),
        "{out}"
    );
}

/// Node scope: the lease held by `run` ends before the command; `run` says so at once and
/// the command runs on.
#[test]
fn a_lease_that_ends_before_the_command_is_reported_at_once() {
    let mut daemon = Daemon::start("m1024-swap512-mode0", common::HEURISTIC_CONFIG, &[]);
    // TTL: reported about a second after it passes.
    let started = Instant::now();
    let (code, _, err) = run(daemon.ctl().args([
        "run",
        "--scope",
        "node",
        "--ttl",
        "2s",
        "--",
        "sh",
        "-c",
        "sleep 4; exit 5",
    ]));
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("ended before the command: its TTL passed"),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_secs(4));

    // `run --json --scope node -- sleep SECS` in the background, holding its lease once it
    // returns; and the events it reports on stderr within `within` (once `count` have come).
    let holder = |daemon: &Daemon, name: &str, secs: &str| {
        let file = daemon.path(name);
        let child = daemon
            .ctl()
            .args([
                "run", "--json", "--scope", "node", "--mode", "always", "--", "sleep", secs,
            ])
            .stderr(fs::File::create(&file).unwrap())
            .spawn()
            .unwrap();
        // Granted once run has printed its record (the kernel is written before the reply).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !fs::read_to_string(&file)
            .unwrap()
            .contains("\"scope\":\"node\"")
        {
            assert!(
                Instant::now() < deadline,
                "no grant: {}",
                fs::read_to_string(&file).unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(daemon.mode(), "1");
        (child, file)
    };
    let events = |file: &Path, count: usize, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let text = fs::read_to_string(file).unwrap();
            let events: Vec<Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["event"].is_string())
                .collect();
            if events.len() >= count || Instant::now() > deadline {
                return (events, text);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // The daemon stops (ending every lease): reported while the command still runs.
    let (mut child, out_file) = holder(&daemon, "run.err", "3");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait();
    let (seen, text) = events(&out_file, 1, Duration::from_secs(2));
    assert_eq!(
        (
            seen.first().map(|e| e["event"].clone()),
            seen.first().map(|e| e["cause"].clone())
        ),
        (
            Some(Value::from("lease_ended")),
            Some(Value::from("daemon_unreachable"))
        ),
        "within 2 s of the daemon's exit: {text}"
    );
    assert!(child.try_wait().unwrap().is_none(), "the command runs on");
    assert_eq!(child.wait().unwrap().code(), Some(0));

    // Killed and restarted, the daemon re-adopts the lease of the living holder: run says it
    // lost the daemon, then that the lease still holds.
    daemon.spawn();
    let (mut child, out_file) = holder(&daemon, "run2.err", "5");
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait();
    std::thread::sleep(Duration::from_millis(300));
    daemon.spawn();
    let (seen, text) = events(&out_file, 2, Duration::from_secs(4));
    let names: Vec<&str> = seen.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names, ["lease_ended", "daemon_back"], "{text}");
    assert_eq!(daemon.mode(), "1", "the lease holds again");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        daemon.wait_mode("0", Duration::from_secs(5)).is_some(),
        "released at the end"
    );
}

/// contrib/slurm/task_prolog.sh as slurmd runs it: as the job's user, with the task's
/// environment and the hooks' settings file; every `export NAME=value` line it prints goes into
/// the task's environment, `print` lines into the job's output. The job asks through its
/// environment, through the marker prolog.sh writes for it, or through SLURM_JOB_COMMENT.
#[test]
fn the_slurm_task_prolog_gives_the_job_scope_to_jobs_that_ask() {
    const USER: u32 = 1000;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    fs::create_dir(&state).unwrap();
    // The log files: root's (the user may not write it: the hook stays silent) and one the
    // site opened to all.
    let (root_log, open_log) = (dir.path().join("root.log"), dir.path().join("open.log"));
    fs::write(&root_log, "").unwrap();
    fs::write(&open_log, "").unwrap();
    fs::set_permissions(&open_log, fs::Permissions::from_mode(0o666)).unwrap();
    let settings = dir.path().join("overcommit.default");
    let configure = |log: &Path| {
        fs::write(
            &settings,
            format!(
                "OVERCOMMIT_SLURM_STATE={}\nOVERCOMMIT_SLURM_LOG={}\n",
                state.display(),
                log.display()
            ),
        )
        .unwrap()
    };
    configure(&root_log);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/slurm/task_prolog.sh");
    let prolog = |env: &[(&str, &str)]| -> String {
        let mut command = common::clean(&script);
        command
            .env_remove("LD_PRELOAD")
            .env_remove("OVERCOMMIT_SCOPE")
            .env_remove("SLURM_JOB_COMMENT")
            .env("PATH", "/usr/bin:/bin")
            .env("OVERCOMMIT_SLURM_CONF", &settings)
            .env("SLURM_JOB_ID", "42")
            .env("OVERCOMMIT_PRELOAD_LIBRARY", &built().library)
            .envs(env.iter().copied())
            .current_dir("/tmp");
        let (code, out, err) = run(as_user(&mut command, USER, USER, &[]));
        assert_eq!((code, err.as_str()), (0, ""), "a TaskProlog never fails");
        out
    };
    let library = built().library.display().to_string();
    let preload = format!("export LD_PRELOAD={library}\n");

    // The marker prolog.sh wrote for job 42 (root's, 0644, in a root-owned 0755 directory).
    let marker = state.join("job-42");
    fs::write(&marker, "overcommit=job uid=1000\n").unwrap();
    fs::set_permissions(&marker, fs::Permissions::from_mode(0o644)).unwrap();
    let out = prolog(&[]);
    assert_eq!(out, preload, "marked by the prolog");
    // What slurmd does with it: the task's big allocation succeeds, MAP_NORESERVE.
    let mut task = probe();
    for line in out.lines() {
        let (name, value) = line
            .strip_prefix("export ")
            .unwrap()
            .split_once('=')
            .unwrap();
        task.env(name, value);
    }
    let (_, out, _) = run(as_user(&mut task, USER, USER, &[]).args([
        "alloc",
        "calloc",
        &beyond_ram().to_string(),
    ]));
    let kind = fields(&out, "kind");
    assert_eq!(
        (kind["result"].as_str(), kind["noreserve"].as_str()),
        ("OK", "yes"),
        "{out}"
    );
    assert_eq!(
        prolog(&[("SLURM_JOB_ID", "43")]),
        "",
        "another job's marker is not this job's"
    );
    assert_eq!(
        prolog(&[("OVERCOMMIT_SCOPE", "node")]),
        "",
        "the environment decides first"
    );
    assert_eq!(
        prolog(&[("LD_PRELOAD", "libm.so.6")]),
        format!("export LD_PRELOAD={library} libm.so.6\n"),
        "the job's own preloads stay, after ours"
    );
    assert_eq!(
        prolog(&[("LD_PRELOAD", &format!("libm.so.6 {library}"))]),
        "",
        "preloaded once"
    );
    let mode2 = common::fixture_proc("m512-noswap-mode2-ratio50");
    let out = prolog(&[("OVERCOMMIT_PROC_ROOT", mode2.to_str().unwrap())]);
    assert!(
        out.starts_with("print ") && out.contains("mode never (2)") && !out.contains("export"),
        "{out}"
    );
    // A missing library: said in the job's output, and logged where the user may write.
    let missing = [("OVERCOMMIT_PRELOAD_LIBRARY", "/nonexistent/lib.so")];
    let out = prolog(&missing);
    assert!(
        out.starts_with("print ") && out.contains("/nonexistent/lib.so is missing"),
        "{out}"
    );
    assert_eq!(fs::read_to_string(&root_log).unwrap(), "", "root's log");
    configure(&open_log);
    prolog(&missing);
    let logged = fs::read_to_string(&open_log).unwrap();
    assert!(
        logged.contains(
            "task-prolog job 42: the job scope was asked for, but /nonexistent/lib.so is missing"
        ),
        "{logged}"
    );
    fs::remove_file(&marker).unwrap();

    // No marker: the comment, where the environment has it, word by word.
    assert_eq!(prolog(&[]), "", "a job that did not ask");
    assert_eq!(
        prolog(&[("SLURM_JOB_COMMENT", "project42 overcommit=job")]),
        preload,
        "a comment with a space"
    );
    for other in [
        "overcommit=always",
        "project42overcommit=job",
        "overcommit=jobs",
    ] {
        assert_eq!(prolog(&[("SLURM_JOB_COMMENT", other)]), "", "{other}");
    }
    assert_eq!(
        prolog(&[("OVERCOMMIT_SCOPE", "job")]),
        preload,
        "asked through the environment"
    );
    // A job id is digits before it becomes part of a path: this one would reach job 42's
    // marker through a directory named job-1.
    fs::write(&marker, "").unwrap();
    fs::create_dir(state.join("job-1")).unwrap();
    assert_eq!(prolog(&[("SLURM_JOB_ID", "1/../job-42")]), "");
    // No Slurm command: its code (not its comments) names none.
    let code = fs::read_to_string(&script).unwrap();
    let called: Vec<&str> = code
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter(|l| {
            ["scontrol", "squeue", "sacct", "srun", "sinfo"]
                .iter()
                .any(|c| l.contains(c))
        })
        .collect();
    assert!(called.is_empty(), "{called:?}");
}
