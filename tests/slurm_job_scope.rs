//! contrib/slurm/task_prolog.sh under the real Slurm: a one-node cluster on loopback (munged,
//! slurmctld and slurmd started here, in a temp dir, on free ports), with the shipped prolog,
//! epilog and TaskProlog, their settings file naming a temp dir for the job scope's markers
//! (OVERCOMMIT_SLURM_STATE), and a real overcommitd (on a fake proc root) for the epilog's
//! release. Jobs are submitted with `srun` as an unprivileged user. A job whose comment holds
//! `overcommit=job` among other words gets the job scope from the TaskProlog through the
//! prolog's marker (its calloc beyond the RAM succeeds, and the numpy seed through the
//! environment), a job without it does not, each marker is gone once its job has ended, no
//! lease is taken, and the node's overcommit_memory is never written.
//!
//! Needs Debian's slurmd, slurmctld, slurm-client and munge (scripts/test.sh installs them);
//! without them the test says so loudly, and with CI=true it fails.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::preload::{built, fields};
use common::slurm::{self, Cluster, Hooks};
use common::Daemon;

const SEED: &str = "import numpy; a = numpy.zeros((210000, 210000)); print('allocated', a.nbytes)";
/// The job's user: nobody, whom every Debian system has.
const JOB_UID: u32 = 65534;

/// What a job says before its command: its id and the mode and owner of its marker.
const SAY_MARKER: &str = "echo job=$SLURM_JOB_ID; echo marker=$(stat -c '%a:%u' \"$STATE/job-$SLURM_JOB_ID\" 2>/dev/null || echo none); exec \"$@\"";

/// Runs `command` as a job of nobody's with `args` for srun; (job id, its marker as the job saw
/// it, its output). Asserts that it succeeded and that its marker is gone once it has ended.
fn job(
    cluster: &Cluster,
    state: &Path,
    args: &[&str],
    command: &[&str],
) -> (String, String, String) {
    let mut all = args.to_vec();
    let script = format!("STATE={}; {SAY_MARKER}", state.display());
    all.extend(["/bin/sh", "-c", &script, "job"]);
    all.extend(command);
    let (code, out, err) = cluster.srun(JOB_UID, &all);
    assert_eq!(code, 0, "srun {all:?}: {out}{err}\n{}", cluster.logs());
    let said = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {out}{err}"))
            .to_string()
    };
    let (id, marker) = (said("job="), said("marker="));
    cluster.wait_job(id.parse().unwrap(), &["COMPLETED"], Duration::from_secs(30));
    assert!(
        !state.join(format!("job-{id}")).exists(),
        "job {id}'s marker is left after the job"
    );
    (id, marker, out)
}

#[test]
fn slurm_jobs_that_ask_get_the_job_scope_from_the_task_prolog() {
    let daemon = Daemon::start("m1024-swap512-mode0", common::HEURISTIC_CONFIG, &[]);
    let dir = daemon.dir.path();
    let (settings, state, log) = (
        daemon.path("overcommit.default"),
        daemon.path("slurm-state"),
        daemon.path("hooks.log"),
    );
    let shipped = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/slurm/overcommit.default"),
    )
    .unwrap();
    fs::write(
        &settings,
        format!(
            "{shipped}\nOVERCOMMITCTL={ctl}\nOVERCOMMIT_SLURM_STATE={state}\nOVERCOMMIT_SLURM_LOG={log}\nexport OVERCOMMIT_SOCKET={socket}\n",
            ctl = env!("CARGO_BIN_EXE_overcommitctl"),
            state = state.display(),
            log = log.display(),
            socket = daemon.socket().display(),
        ),
    )
    .unwrap();
    let hooks = Hooks {
        prolog: Some(slurm::wrapper(dir, "prolog", &settings)),
        epilog: Some(slurm::wrapper(dir, "epilog", &settings)),
        task_prolog: Some(slurm::wrapper(dir, "task_prolog", &settings)),
        ..Hooks::default()
    };
    let Some(cluster) = slurm::start(&hooks) else {
        return;
    };
    let mode_before = fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap();
    let built = built();
    let bytes = (2 * common::meminfo_bytes(Path::new("/proc"), "MemTotal")).to_string();
    let library = format!(
        "--export=ALL,OVERCOMMIT_PRELOAD_LIBRARY={}",
        built.library.display()
    );
    let probe = built.probe.to_str().unwrap();
    let calloc = [probe, "alloc", "calloc", &bytes];

    // Asked among other words: the prolog marked it (root's, 0644), the TaskProlog found the
    // marker.
    let (id, marker, out) = job(
        &cluster,
        &state,
        &[&library, "--comment=project42 overcommit=job"],
        &calloc,
    );
    let asked = fields(&out, "kind");
    assert_eq!(
        (
            marker.as_str(),
            asked["result"].as_str(),
            asked["noreserve"].as_str()
        ),
        ("644:0", "OK", "yes"),
        "a job that asked: {out}\n{}",
        cluster.logs()
    );
    let meta = fs::metadata(&state).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o755, 0));
    let logged = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains(&format!("epilog job {id}: removed the job scope's marker")),
        "{logged}"
    );

    let (_, marker, out) = job(
        &cluster,
        &state,
        &[&library, "--comment=project42"],
        &calloc,
    );
    let plain = fields(&out, "kind");
    assert_eq!(
        (
            marker.as_str(),
            plain["result"].as_str(),
            plain["library"].as_str()
        ),
        ("none", "ENOMEM", "absent"),
        "a job that did not ask: {out}"
    );

    // The seed, through the job's environment instead of its comment.
    let (_, marker, out) = job(
        &cluster,
        &state,
        &[&format!("{library},OVERCOMMIT_SCOPE=job")],
        &["/usr/bin/python3", "-c", SEED],
    );
    assert_eq!(marker, "none");
    assert!(out.contains("\nallocated 352800000000\n"), "{out}");

    let (_, leases, _) = common::run(daemon.ctl().args(["--json", "leases"]));
    let table: serde_json::Value = serde_json::from_str(&leases).unwrap();
    assert_eq!(table["leases"], serde_json::json!([]), "no lease");
    cluster.assert_not_drained("the jobs");
    assert_eq!(
        fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap(),
        mode_before,
        "the node's policy is never written"
    );
}
