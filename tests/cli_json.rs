//! The `--json` contract (docs/json.md): every command's object, and every failure's, checked
//! against the JSON Schemas of docs/schema/, with the exit status the text form has; and the
//! documentation checked to name every field of the schemas.

mod common;

use std::path::Path;
use std::process::Command;

use common::cli::{ctl_with as with, CONFIG};
use common::schema::{docs_schemas, Schemas};
use common::{as_user, ctl, fixture_proc, proc_copy, run, Daemon};
use serde_json::{json, Value};

/// overcommitctl on `proc_root`, with no daemon and none expected (`scratch` is an empty
/// directory standing in for the socket's, the configuration's and the boot files' places).
fn alone(proc_root: &Path, scratch: &Path) -> Command {
    let mut command = ctl();
    command
        .arg("--proc-root")
        .arg(proc_root)
        .arg("--sysctl-root")
        .arg(scratch)
        .arg("--socket")
        .arg(scratch.join("none.sock"))
        .arg("--config")
        .arg(scratch.join("none.toml"));
    command
}

#[test]
fn the_validator_catches_missing_extra_and_mistyped_fields() {
    let schemas = docs_schemas();
    let good = json!({"schema_version": 1, "released": ["a"], "effective": {"mode": "never", "limit": {"ratio": 95}}});
    assert!(schemas.check("release.json", &good).is_empty());
    let cases = [
        (
            json!({"schema_version": 1, "released": ["a"]}),
            "missing effective",
        ),
        (
            json!({"schema_version": 2, "released": [], "effective": good["effective"]}),
            "is not 1",
        ),
        (
            json!({"schema_version": 1, "released": [1], "effective": good["effective"]}),
            "is not of type",
        ),
        (
            json!({"schema_version": 1, "released": [], "effective": {"mode": "sometimes", "limit": {"ratio": 1}}}),
            "is not one of",
        ),
        (
            json!({"schema_version": 1, "released": [], "effective": {"mode": "never", "limit": {"ratio": 1, "kbytes": 2}}}),
            "matches 0 of the oneOf",
        ),
        (
            json!({"schema_version": 1, "released": [], "effective": good["effective"], "extra": true}),
            "not in the schema",
        ),
    ];
    for (value, problem) in cases {
        let problems = schemas.check("release.json", &value);
        assert!(
            problems.iter().any(|p| p.contains(problem)),
            "{value}: expected a problem with {problem:?}, got {problems:?}"
        );
    }
}

#[test]
fn docs_json_md_names_every_field_of_every_schema() {
    let schemas = docs_schemas();
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/json.md"))
        .unwrap();
    let sections: Vec<&str> = doc.split("\n## ").collect();
    let mut files = 0;
    for file in schemas.names() {
        files += 1;
        let section = sections
            .iter()
            .find(|s| {
                s.lines()
                    .next()
                    .is_some_and(|h| h.contains(&format!("schema/{file}")))
            })
            .unwrap_or_else(|| panic!("docs/json.md has no section for schema/{file}"));
        // schema_version is in every object; the conventions describe it once.
        let missing: Vec<String> = schemas
            .property_names(file)
            .into_iter()
            .filter(|n| n != "schema_version")
            .filter(|n| {
                !section.contains(&format!("`{n}`")) && !section.contains(&format!("\"{n}\""))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "docs/json.md's section for schema/{file} does not name {missing:?}"
        );
    }
    assert!(files >= 11, "the schemas of every command and error");
}

#[test]
fn status_json_matches_its_schema_on_every_fixture() {
    let schemas = docs_schemas();
    let scratch = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kernels");
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let (code, out, err) =
            run(alone(&fixture_proc(&name), scratch.path()).args(["status", "--json"]));
        let status = schemas.assert_valid("status.json", &out);
        let critical = status["worst_severity"] == "critical";
        assert_eq!(
            code,
            i32::from(critical),
            "{name}: exit 1 only for a critical finding {err}"
        );
        seen += 1;
    }
    assert!(seen >= 9);
}

#[test]
fn check_json_matches_its_schema_in_every_kind_of_answer() {
    let schemas = docs_schemas();
    let scratch = tempfile::tempdir().unwrap();
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id().to_string();
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "m1024-swap512-mode0",
            vec!["--shape", "210000x210000"],
            "refused",
        ),
        ("m1024-swap512-mode0", vec!["1G"], "allowed"),
        (
            "m1024-swap512-mode0",
            vec!["--via", "mmap", "1G"],
            "allowed",
        ),
        ("m512-noswap-mode1", vec!["10T"], "allowed"),
        (
            "m512-noswap-mode2-ratio50",
            vec!["--user", "64M"],
            "allowed",
        ),
        (
            "m512-noswap-mode2-ratio50",
            vec!["--mode", "never", "--ratio", "1", "1G"],
            "refused",
        ),
        (
            "m512-swap256-mode2-kbytes300000",
            vec!["--pid", &pid, "1M"],
            "allowed",
        ),
        (
            "m1024-swap512-mode0",
            vec!["--pid", &pid, "--shape", "(10,)", "--dtype", "M8[ns]"],
            "allowed",
        ),
        (
            "m512-noswap-mode0",
            vec!["--swap-total", "1G", "600M"],
            "allowed",
        ),
    ];
    for (fixture, args, verdict) in cases {
        let (code, out, err) = run(alone(&fixture_proc(fixture), scratch.path())
            .args(["check", "--json"])
            .args(&args));
        let check = schemas.assert_valid("check.json", &out);
        assert_eq!(check["verdict"], verdict, "{fixture} {args:?}: {err}");
        assert_eq!(code, i32::from(verdict != "allowed"), "{fixture} {args:?}");
    }
    // Just above RAM + swap in mode 0: a glibc malloc may get it through brk.
    let proc_root = fixture_proc("m512-noswap-mode0");
    let total = common::meminfo_bytes(&proc_root, "MemTotal");
    let (code, out, _) = run(alone(&proc_root, scratch.path())
        .args(["check", "--json"])
        .arg((total + 1).to_string()));
    let check = schemas.assert_valid("check.json", &out);
    assert_eq!((code, &check["verdict"]), (1, &json!("borderline")));
    assert_eq!(check["allocation"]["path"], "brk");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn every_daemon_command_matches_its_schema() {
    let schemas = docs_schemas();
    let daemon = Daemon::start("m1024-swap512-mode0", CONFIG, &[]);

    let (code, out, _) = run(with(&daemon).args(["status", "--json"]));
    let status = schemas.assert_valid("status.json", &out);
    assert_eq!(code, 0);
    assert_eq!(status["daemon"]["baseline"]["name"], "default");

    let (code, out, _) = run(with(&daemon).args(["profiles", "--json"]));
    let profiles = schemas.assert_valid("profiles.json", &out);
    assert_eq!((code, &profiles["source"]), (0, &json!("daemon")));
    assert_eq!(profiles["config_on_disk"], "same");

    let (code, out, _) = run(with(&daemon).args(["apply", "hpc-strict", "--check", "--json"]));
    let check = schemas.assert_valid("apply-check.json", &out);
    assert_eq!((code, &check["would_change"]), (1, &json!(true)));

    let (code, out, _) = run(with(&daemon).args(["apply", "hpc-strict", "--json"]));
    let change = schemas.assert_valid("change.json", &out);
    assert_eq!((code, &change["via"]), (0, &json!("daemon")));
    assert_eq!(change["after"]["mode"], "never");

    let (code, out, _) = run(with(&daemon).args(["set", "never", "--ratio", "90", "--json"]));
    let change = schemas.assert_valid("change.json", &out);
    assert_eq!((code, &change["baseline"]["name"]), (0, &json!("custom")));

    for (args, kind, in_line) in [
        (vec!["verify", "--json"], "daemon", true),
        (vec!["verify", "hpc-strict", "--json"], "profile", false),
        (vec!["verify", "swap", "--json"], "profile", false),
    ] {
        let (code, out, _) = run(with(&daemon).args(&args));
        let verify = schemas.assert_valid("verify.json", &out);
        assert_eq!(verify["against"]["kind"], kind, "{args:?}");
        assert_eq!(verify["in_line"], in_line, "{args:?}");
        assert_eq!(code, i32::from(!in_line));
    }

    let (code, out, _) = run(with(&daemon).args([
        "lease", "--mode", "always", "--ttl", "10m", "--tag", "job-1", "--json",
    ]));
    let lease = schemas.assert_valid("lease.json", &out);
    assert_eq!(code, 0);
    assert_eq!(lease["lease"]["ttl_secs"], 600);
    assert_eq!(lease["lease"]["policy"]["mode"], "always");

    let (code, out, _) = run(with(&daemon).args(["leases", "--json"]));
    let leases = schemas.assert_valid("leases.json", &out);
    assert_eq!((code, leases["leases"].as_array().unwrap().len()), (0, 1));

    let (code, out, _) = run(with(&daemon).args(["release", "--tag", "job-1", "--json"]));
    schemas.assert_valid("release.json", &out);
    assert_eq!(code, 0);

    // run: stdout is the command's; the record is one line on stderr. In the node scope it
    // holds a lease.
    let (code, out, err) =
        run(with(&daemon).args(["run", "--json", "--scope", "node", "--", "echo", "hello"]));
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    let record = err.lines().next().unwrap_or_default();
    let record = schemas.assert_valid("run.json", record);
    assert!(
        record["lease"]["holder_pid"].as_i64().is_some(),
        "run holds its lease"
    );
    // In the job scope (auto in mode 0, for a dynamic program) it has none.
    common::preload::built();
    let (code, out, err) = run(with(&daemon)
        .arg("--proc-root")
        .arg(fixture_proc("m512-noswap-mode0"))
        .args(["run", "--json", "--", "echo", "hello"]));
    assert_eq!((code, out.as_str()), (0, "hello\n"), "{err}");
    let record = schemas.assert_valid("run.json", err.lines().next().unwrap_or_default());
    assert_eq!(
        (&record["scope"], &record["lease"]),
        (&json!("job"), &Value::Null),
        "{record}"
    );
}

#[test]
fn direct_writes_match_the_change_schema() {
    let schemas = docs_schemas();
    let scratch = tempfile::tempdir().unwrap();
    let copy = proc_copy("m1024-swap512-mode0");
    let (code, out, err) = run(alone(&copy.path().join("proc"), scratch.path())
        .args(["set", "never", "--ratio", "90", "--json"]));
    let change = schemas.assert_valid("change.json", &out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (&change["via"], &change["baseline"]),
        (&json!("direct"), &Value::Null)
    );
    assert_eq!(
        change["after"],
        json!({"mode": "never", "ratio": 90, "kbytes": 0})
    );
}

/// Runs `args` with and without `--json`: the same exit status; with it, one error object on
/// stdout (stderr for run) with `code`, and nothing else there.
fn error_case(schemas: &Schemas, command: impl Fn() -> Command, args: &[&str], code: &str) -> i32 {
    let (text_status, text_out, text_err) = run(command().args(args));
    assert!(
        text_out.is_empty() || args.contains(&"run"),
        "{args:?}: {text_out}"
    );
    assert!(
        !text_err.is_empty(),
        "{args:?}: an error says why on stderr"
    );
    let (status, out, err) = run(command().arg("--json").args(args));
    assert_eq!(
        status, text_status,
        "{args:?}: the same exit status with --json"
    );
    let channel = if args.contains(&"run") { &err } else { &out };
    let error = schemas.assert_valid("error.json", channel);
    assert_eq!(error["error"]["code"], code, "{args:?}: {error}");
    if !args.contains(&"run") {
        assert!(
            err.is_empty(),
            "{args:?}: nothing on stderr but warnings: {err}"
        );
    }
    status
}

#[test]
fn errors_are_json_objects_with_stable_codes_and_the_same_exit_status() {
    let schemas = docs_schemas();
    let scratch = tempfile::tempdir().unwrap();
    let proc_root = fixture_proc("m1024-swap512-mode0");
    let here = || alone(&proc_root, scratch.path());
    let gone = {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid.to_string()
    };
    for (args, code, status) in [
        (vec!["check", "1.5"], "usage", 2),
        (vec!["check", "--bogus"], "usage", 2),
        (vec!["check", "--dtype", "f4", "10G"], "usage", 2),
        (vec!["check", "--pid", &gone, "1G"], "no_process", 2),
        (vec!["frobnicate"], "usage", 2),
        (vec!["apply", "nosuch", "--check"], "config", 2),
        (vec!["verify"], "config", 2),
        (vec!["leases"], "unreachable", 3),
        (vec!["lease", "--ttl", "0"], "usage", 2),
        (vec!["status", "--short", "--format", "text"], "usage", 2),
    ] {
        assert_eq!(error_case(&schemas, here, &args, code), status, "{args:?}");
    }
    let (_, _, err) = run(ctl().args(["--json", "--proc-root", "/nonexistent/proc", "status"]));
    assert!(err.is_empty());
    assert_eq!(
        error_case(
            &schemas,
            ctl,
            &["--proc-root", "/nonexistent/proc", "status"],
            "proc"
        ),
        2
    );

    let daemon = Daemon::start("m512-noswap-mode0", CONFIG, &[]);
    assert_eq!(
        error_case(
            &schemas,
            || with(&daemon),
            &["set", "never", "--ratio", "1"],
            "unsafe"
        ),
        1
    );
    assert_eq!(
        error_case(
            &schemas,
            || with(&daemon),
            &["release", "0123456789abcdef0123456789abcdef"],
            "not_found"
        ),
        1
    );
    assert_eq!(
        error_case(
            &schemas,
            || with(&daemon),
            &["apply", "nosuch"],
            "no_profile"
        ),
        2
    );
    let user = || {
        let mut c = with(&daemon);
        as_user(&mut c, 1000, 1000, &[]);
        c
    };
    assert_eq!(error_case(&schemas, user, &["set", "always"], "denied"), 1);
    assert_eq!(
        error_case(&schemas, user, &["lease", "--mode", "never"], "denied"),
        1
    );
    // run: its own errors go to stderr, as its record does, with its own exit codes.
    for (args, code, status) in [
        (
            &["run", "--mode", "heuristic", "--ratio", "50", "--", "true"][..],
            "usage",
            125,
        ),
        (
            &["run", "--", "no-such-command-here"][..],
            "command_not_found",
            127,
        ),
        (&["run", "--", "/etc/passwd"][..], "cannot_execute", 126),
        (
            &["run", "--scope", "node", "--min-size", "1G", "--", "true"][..],
            "usage",
            125,
        ),
    ] {
        assert_eq!(
            error_case(&schemas, || with(&daemon), args, code),
            status,
            "{args:?}"
        );
    }
    let strict = fixture_proc("m512-noswap-mode2-ratio50");
    let in_mode_2 = || {
        let mut c = with(&daemon);
        c.arg("--proc-root").arg(&strict);
        c
    };
    assert_eq!(
        error_case(
            &schemas,
            in_mode_2,
            &["run", "--scope", "job", "--", "true"],
            "job_scope_unavailable"
        ),
        125
    );
    // Expected here but silent: set refuses (exit 3) and says so as JSON.
    let mut silent = with(&daemon);
    silent.env("OVERCOMMIT_SOCKET", daemon.path("run/none.sock"));
    let (status, out, _) = run(silent.args(["--json", "set", "always"]));
    assert_eq!(status, 3);
    assert_eq!(
        schemas.assert_valid("error.json", &out)["error"]["code"],
        "unreachable"
    );
}

#[test]
fn the_help_and_so_the_man_pages_state_the_contract() {
    // The man pages are generated from the same clap definitions (examples/package_assets.rs).
    let help_of = |args: &[&str]| {
        let (_, help, _) = run(ctl().args(args));
        help.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let help = help_of(&["--help"]);
    for promise in [
        "\"schema_version\": 1",
        "docs/json.md",
        "a critical finding (status)",
        "expected on this node",
        "KiB..EiB",
    ] {
        assert!(
            help.contains(promise),
            "overcommitctl --help lacks {promise:?}:\n{help}"
        );
    }
    let help = help_of(&["set", "--help"]);
    assert!(help.contains("--direct"), "{help}");
    let help = help_of(&["status", "--help"]);
    assert!(
        help.contains("--short") && help.contains("exit 1 when a finding is critical"),
        "{help}"
    );
    let help = help_of(&["check", "--help"]);
    assert!(
        help.contains("--via") && help.contains("datetime64[ns]"),
        "{help}"
    );
}
