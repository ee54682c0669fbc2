//! Strict input: every bad value and every flag that would do nothing is refused with exit 2
//! and a message that names what was wrong and what would be valid; negative values reach our
//! own parsers; what the help promises is what happens; every dtype NumPy accepts is sized as
//! NumPy sizes it.

mod common;

use std::process::Command;

use common::{ctl, fixture_proc, run, Daemon};
use serde_json::Value;

/// overcommitctl on a fixture, with no daemon.
fn on(fixture: &str) -> Command {
    let mut command = ctl();
    command
        .arg("--proc-root")
        .arg(fixture_proc(fixture))
        .args(["--socket", "/nonexistent/overcommitd.sock"])
        .args(["--config", "/nonexistent/overcommitd.toml"])
        .args(["--sysctl-root", "/nonexistent"]);
    command
}

#[test]
fn each_bad_input_exits_2_with_a_message_that_says_what_is_wrong() {
    for (args, expect) in [
        // Fractions of a byte, and the full unit family.
        (vec!["check", "1.5"], "fraction of a byte"),
        (vec!["check", "1.0001K"], "fraction of a byte"),
        (vec!["check", "16E"], "18446744073709551615 bytes"),
        (vec!["check", "16EiB"], "18446744073709551615 bytes"),
        (vec!["check", "17ZB"], "KiB..EiB"),
        // Shapes with empty, negative or fractional dimensions.
        (vec!["check", "--shape", "10x"], "dimension 2 is empty"),
        (vec!["check", "--shape", "x10"], "dimension 1 is empty"),
        (vec!["check", "--shape", "10xx10"], "dimension 2 is empty"),
        (vec!["check", "--shape", "-3x4"], "`-3` is negative"),
        (vec!["check", "--shape", "2.5x4"], "not a whole number"),
        // Negative values reach our parsers.
        (vec!["check", "-5G"], "`-5G` is negative"),
        (
            vec!["check", "--mode", "never", "--ratio", "-5", "1G"],
            "ratio -5 is negative",
        ),
        (
            vec!["check", "--mode", "never", "--kbytes", "-5", "1G"],
            "`-5` is negative",
        ),
        (
            vec!["check", "--swap-total", "-1G", "1G"],
            "`-1G` is negative",
        ),
        (vec!["check", "--vm-size", "-1", "1G"], "`-1` is negative"),
        (vec!["check", "--pid", "-1", "1G"], "pid -1 is negative"),
        (vec!["lease", "--ttl", "-1h"], "`-1h` is negative"),
        (vec!["set", "-1"], "unknown mode `-1`"),
        // Unknown options are not taken for values.
        (vec!["check", "--bogus"], "unexpected option `--bogus`"),
        // TTLs: zero and fractions of a second.
        (vec!["lease", "--ttl", "0"], "a lease lives at least 1s"),
        (
            vec!["lease", "--ttl", "1500ms"],
            "not a whole number of seconds",
        ),
        // Flags that would do nothing where they are given.
        (
            vec!["check", "--dtype", "f4", "10G"],
            "--dtype describes the elements of --shape",
        ),
        (
            vec!["check", "10G", "--ratio", "50"],
            "--ratio has no effect in mode heuristic (the live mode)",
        ),
        (
            vec!["check", "10G", "--mode", "always", "--kbytes", "100"],
            "--kbytes has no effect in mode always (the mode given)",
        ),
        (
            vec!["check", "--mode", "always", "--swap-total", "1G", "10G"],
            "--swap-total has no effect in mode always",
        ),
        (
            vec!["lease", "--mode", "heuristic", "--ratio", "80"],
            "--ratio has no effect on a lease for mode heuristic",
        ),
        (
            vec!["lease", "--kbytes", "1000"],
            "--kbytes has no effect on a lease for mode always",
        ),
        (
            vec!["apply", "x", "--check", "--force"],
            "cannot be used with",
        ),
        (
            vec!["status", "--short", "--format", "prometheus"],
            "cannot be used with",
        ),
        // Dtypes NumPy refuses too.
        (
            vec!["check", "--shape", "10", "--dtype", "float65"],
            "unknown dtype `float65`",
        ),
        (
            vec!["check", "--shape", "10", "--dtype", "M8[s"],
            "unknown dtype `M8[s`",
        ),
    ] {
        let (code, out, err) = run(on("m512-noswap-mode0").args(&args));
        assert_eq!(code, 2, "{args:?} should exit 2:\n{out}{err}");
        assert!(
            err.contains(expect),
            "{args:?}: the error should say {expect:?}:\n{err}"
        );
        assert!(out.is_empty(), "{args:?}: nothing on stdout: {out}");
    }
    // `run` keeps its exit codes apart from its command's: its own bad usage is 125.
    let (code, out, err) = run(on("m512-noswap-mode0").args(["run", "--ttl", "0s", "--", "true"]));
    assert_eq!((code, out.as_str()), (125, ""), "{err}");
    assert!(err.contains("a lease lives at least 1s"), "{err}");
}

#[test]
fn what_the_kernel_accepts_in_context_is_accepted() {
    for args in [
        vec!["check", "15E"],
        vec!["check", "1.5K"],
        vec!["check", "--shape", "(10,)"],
        vec!["check", "--mode", "never", "--ratio", "50", "1G"],
        vec!["check", "--swap-total", "1G", "1G"],
    ] {
        let (code, _, err) = run(on("m512-noswap-mode0").args(&args));
        assert!(code == 0 || code == 1, "{args:?} is valid input: {err}");
    }
    // In mode never the ratio is the limit: no complaint.
    let (code, _, err) =
        run(on("m512-noswap-mode2-ratio50").args(["check", "--ratio", "90", "1G"]));
    assert!(code == 0 || code == 1, "{err}");
}

#[test]
fn every_dtype_numpy_accepts_is_sized_as_numpy_sizes_it() {
    for (dtype, itemsize) in [
        ("float64", 8),
        ("datetime64[ns]", 8),
        ("M8[ns]", 8),
        ("<M8[us]", 8),
        ("m8", 8),
        ("timedelta64[10s]", 8),
        ("object", 8),
        ("O", 8),
        ("U", 4),
        ("S", 1),
        ("str", 4),
        ("bytes", 1),
        ("U10", 40),
        ("(2,3)f4", 24),
        ("f8,i4", 12),
    ] {
        let (code, out, err) =
            run(on("m512-noswap-mode0")
                .args(["check", "--json", "--shape", "1000", "--dtype", dtype]));
        assert_eq!(code, 0, "{dtype}: {err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["request_bytes"], 1000 * itemsize, "{dtype}");
    }
    // The default named in the help is the default.
    let (_, help, _) = run(ctl().args(["check", "--help"]));
    assert!(help.contains("[default: float64]"), "{help}");
    let (_, out, _) = run(on("m512-noswap-mode0").args(["check", "--json", "--shape", "1000"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["request_bytes"], 8000);
}

/// The dtype table against NumPy itself, when Debian's python3-numpy is installed (CI installs
/// it; elsewhere the test says loudly that it did not run).
#[test]
fn the_dtype_table_agrees_with_the_real_numpy() {
    let Some(python) = common::cli::python_with_numpy() else {
        return common::cli::not_run(
            "/usr/bin/python3 has no numpy (apt-get install python3-numpy)",
        );
    };
    let dtypes = [
        "?",
        "b",
        "B",
        "h",
        "H",
        "i",
        "I",
        "l",
        "L",
        "q",
        "Q",
        "p",
        "P",
        "e",
        "f",
        "d",
        "g",
        "F",
        "D",
        "G",
        "O",
        "M",
        "m",
        "U",
        "S",
        "a",
        "V",
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "float32",
        "float64",
        "float128",
        "complex64",
        "complex128",
        "complex256",
        "object",
        "str",
        "bytes",
        "int",
        "float",
        "complex",
        "datetime64",
        "timedelta64",
        "datetime64[ns]",
        "M8[ns]",
        "<M8[ns]",
        "m8[D]",
        "M8[10s]",
        "timedelta64[us]",
        "U0",
        "S0",
        "U10",
        "S10",
        "V16",
        "a5",
        "b1",
        "i1",
        "i2",
        "i4",
        "i8",
        "u1",
        "u2",
        "u4",
        "u8",
        "f2",
        "f4",
        "f8",
        "f16",
        "c8",
        "c16",
        "c32",
        "M8",
        "m8",
        "O8",
        "<f8",
        ">i4",
        "|b1",
        "=f8",
        "(2,3)f8",
        "(2,)U3",
        "3i4",
        "()f8",
        "f8,i4",
        "f8, i4",
        "i4,(2,)f8",
        "half",
        "single",
        "double",
        "longdouble",
        "byte",
        "ubyte",
        "short",
        "ushort",
        "intc",
        "uintc",
        "intp",
        "uintp",
        "longlong",
        "ulonglong",
        "csingle",
        "cdouble",
        "clongdouble",
        "void",
    ];
    let script = format!(
        "import numpy, warnings\nwarnings.simplefilter('ignore')\nfor d in {dtypes:?}:\n    print(numpy.zeros((7,), dtype=d).nbytes)"
    );
    let output = Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sizes = String::from_utf8(output.stdout).unwrap();
    for (dtype, numpy) in dtypes.iter().zip(sizes.lines()) {
        let numpy: u64 = numpy.parse().unwrap();
        assert_eq!(
            overcommit::dtype::array_bytes("7", dtype),
            Ok(numpy),
            "np.zeros((7,), dtype={dtype:?}).nbytes"
        );
    }
    assert_eq!(sizes.lines().count(), dtypes.len());
}

#[test]
fn help_and_behaviour_agree_on_lease_ttl_and_the_grant_shows_both_policies() {
    let config = r#"
[daemon]
baseline = "bigmem"
drift_interval = "0"
default_ttl = "2h"

[profiles.bigmem]
mode = "always"
"#;
    let daemon = Daemon::start("m1024-swap512-mode0", config, &[]);
    let (_, help, _) = run(ctl().args(["lease", "--help"]));
    assert!(
        help.contains("default: the") && help.contains("longest"),
        "{help}"
    );
    // No --ttl: the longest allowed (root: default_ttl).
    let (code, id, err) = run(daemon
        .ctl()
        .args(["lease", "--mode", "never", "--ratio", "60"]));
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(daemon.ctl().args(["leases", "--json"]));
    let leases: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(leases["leases"][0]["id"], id.trim());
    assert_eq!(leases["leases"][0]["ttl_secs"], 7200);
    // The grant line names the lease's own policy, and separately what is in force (the
    // baseline, always, is more permissive than the lease).
    assert!(err.contains("granted: never (2), ratio 60%"), "{err}");
    assert!(err.contains("in force on the node: always (1)"), "{err}");
}
