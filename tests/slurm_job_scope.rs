//! contrib/slurm/task_prolog.sh under the real Slurm: a one-node cluster on loopback (munged,
//! slurmctld and slurmd started here, in a temp dir, on free ports), jobs submitted with
//! `srun` as an unprivileged user. A job with `--comment=overcommit=job` gets the job scope
//! from the TaskProlog (its calloc beyond the RAM and the numpy seed succeed), a job without
//! it does not, and the node's overcommit_memory is never written.
//!
//! Needs Debian's slurmd, slurmctld, slurm-client and munge (scripts/test.sh installs them);
//! without them the test says so loudly, and with CI=true it fails.

mod common;

use std::fs;
use std::path::Path;

use common::preload::{built, fields};
use common::slurm::{self, Hooks};

const SEED: &str = "import numpy; a = numpy.zeros((210000, 210000)); print('allocated', a.nbytes)";
/// The job's user: nobody, whom every Debian system has.
const JOB_UID: u32 = 65534;

#[test]
fn slurm_jobs_that_ask_get_the_job_scope_from_the_task_prolog() {
    let hooks = Hooks {
        task_prolog: Some(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/slurm/task_prolog.sh"),
        ),
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

    let (code, out, err) = cluster.srun(
        JOB_UID,
        &[
            &library,
            "--comment=overcommit=job",
            probe,
            "alloc",
            "calloc",
            &bytes,
        ],
    );
    assert_eq!(code, 0, "{out}{err}\n{}", cluster.logs());
    let asked = fields(&out, "kind");
    assert_eq!(
        (asked["result"].as_str(), asked["noreserve"].as_str()),
        ("OK", "yes"),
        "a job that asked: {out}{err}"
    );
    let (_, out, err) = cluster.srun(JOB_UID, &[&library, probe, "alloc", "calloc", &bytes]);
    let plain = fields(&out, "kind");
    assert_eq!(
        (plain["result"].as_str(), plain["library"].as_str()),
        ("ENOMEM", "absent"),
        "a job that did not ask: {out}{err}"
    );
    // The seed, through the job's environment instead of its comment.
    let (code, out, err) = cluster.srun(
        JOB_UID,
        &[
            &format!("{library},OVERCOMMIT_SCOPE=job"),
            "/usr/bin/python3",
            "-c",
            SEED,
        ],
    );
    assert_eq!((code, out.trim()), (0, "allocated 352800000000"), "{err}");
    assert_eq!(
        fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap(),
        mode_before,
        "the node's policy is never written"
    );
}
