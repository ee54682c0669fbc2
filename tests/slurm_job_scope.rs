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
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::preload::{built, fields};

const PROGRAMS: &[&str] = &["munged", "slurmctld", "slurmd", "srun", "sinfo"];
const SEED: &str = "import numpy; a = numpy.zeros((210000, 210000)); print('allocated', a.nbytes)";
/// The job's user: nobody, whom every Debian system has.
const JOB_UID: &str = "65534";

fn find(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The daemons of the cluster, stopped (by pid) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    daemons: Vec<(&'static str, Child)>,
}

impl Drop for Cluster {
    /// SIGTERM first, so that each daemon reaps its own helpers; SIGKILL after 5 s.
    fn drop(&mut self) {
        for (_, child) in self.daemons.iter_mut().rev() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // The daemons' own helpers (slurmstepd, slurmscriptd) were orphaned to this process,
        // a subreaper: reap them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(_) => {}
                Err(_) => break, // ECHILD: none left
            }
        }
    }
}

impl Cluster {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    fn logs(&self) -> String {
        ["munged.log", "slurmctld.log", "slurmd.log", "daemons.out"]
            .iter()
            .map(|name| {
                let text = fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {name} ---\n{}\n",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }

    fn spawn(&mut self, name: &'static str, command: &mut Command) {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemons.out"))
            .unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.daemons.push((name, child));
    }

    /// `srun` as the job's user with `args`, in the cluster.
    fn srun(&self, args: &[&str]) -> (i32, String, String) {
        common::run(
            Command::new("srun")
                .env("SLURM_CONF", self.conf())
                .env("PATH", "/usr/bin:/bin:/usr/sbin")
                .current_dir("/tmp")
                .args(["--uid", JOB_UID, "--time", "5"])
                .args(args),
        )
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_cluster() -> Option<Cluster> {
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| find(p).is_none())
        .collect();
    if !missing.is_empty() {
        let message = format!(
            "the real-Slurm test needs {missing:?} (Debian packages slurmd slurmctld slurm-client munge; scripts/test.sh installs them)"
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("\n======== SKIPPING {message} ========\n");
        return None;
    }
    // Helpers the daemons fork off and orphan become this process's children, to be reaped
    // (this test binary holds this one test only).
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // The job's user reaches the munge socket and the job's files through it.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().to_path_buf();
    let path = |name: &str| root.join(name).display().to_string();
    for sub in ["state", "spool"] {
        fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let key: Vec<u8> = (0..1024)
        .map(|i| (i * 131 % 251) as u8 ^ std::process::id() as u8)
        .collect();
    fs::write(dir.path().join("munge.key"), key).unwrap();
    fs::set_permissions(
        dir.path().join("munge.key"),
        fs::Permissions::from_mode(0o400),
    )
    .unwrap();

    // This machine as slurmd sees it, with less memory than it has (any job fits).
    let hardware = Command::new("slurmd")
        .arg("-C")
        .output()
        .expect("slurmd -C");
    let node = String::from_utf8_lossy(&hardware.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter(|w| !w.starts_with("RealMemory="))
        .collect::<Vec<_>>()
        .join(" ");
    let host = node
        .strip_prefix("NodeName=")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("slurmd -C: {node}"))
        .to_string();
    let task_prolog = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/slurm/task_prolog.sh");
    let conf = format!(
        "ClusterName=overcommit-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
AuthType=auth/munge
AuthInfo=socket={munge}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={ctld_pid}
SlurmdPidFile={slurmd_pid}
SlurmctldLogFile={ctld_log}
SlurmdLogFile={slurmd_log}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
TaskProlog={task_prolog}
{node} RealMemory=100 NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
",
        ctld = free_port(),
        slurmd = free_port(),
        munge = path("munge.sock"),
        state = path("state"),
        spool = path("spool"),
        ctld_pid = path("slurmctld.pid"),
        slurmd_pid = path("slurmd.pid"),
        ctld_log = path("slurmctld.log"),
        slurmd_log = path("slurmd.log"),
        task_prolog = task_prolog.display(),
    );
    fs::write(dir.path().join("slurm.conf"), conf).unwrap();

    let mut cluster = Cluster {
        dir,
        daemons: Vec::new(),
    };
    cluster.spawn(
        "munged",
        Command::new("munged").args([
            "--foreground".to_string(),
            "--force".to_string(),
            format!("--socket={}", path("munge.sock")),
            format!("--key-file={}", path("munge.key")),
            format!("--log-file={}", path("munged.log")),
            format!("--pid-file={}", path("munged.pid")),
            format!("--seed-file={}", path("munged.seed")),
        ]),
    );
    let conf = cluster.conf();
    cluster.spawn(
        "slurmctld",
        Command::new("slurmctld")
            .args(["-D", "-i", "-f"])
            .arg(&conf),
    );
    cluster.spawn(
        "slurmd",
        Command::new("slurmd").args(["-D", "-f"]).arg(&conf),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = Command::new("sinfo")
            .env("SLURM_CONF", &conf)
            .args(["-h", "-o", "%T"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if state == "idle" {
            return Some(cluster);
        }
        assert!(
            Instant::now() < deadline,
            "the Slurm node is not idle after 30 s (sinfo: {state:?})\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn slurm_jobs_that_ask_get_the_job_scope_from_the_task_prolog() {
    let Some(cluster) = start_cluster() else {
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

    let (code, out, err) = cluster.srun(&[
        &library,
        "--comment=overcommit=job",
        probe,
        "alloc",
        "calloc",
        &bytes,
    ]);
    assert_eq!(code, 0, "{out}{err}\n{}", cluster.logs());
    let asked = fields(&out, "kind");
    assert_eq!(
        (asked["result"].as_str(), asked["noreserve"].as_str()),
        ("OK", "yes"),
        "a job that asked: {out}{err}"
    );
    let (_, out, err) = cluster.srun(&[&library, probe, "alloc", "calloc", &bytes]);
    let plain = fields(&out, "kind");
    assert_eq!(
        (plain["result"].as_str(), plain["library"].as_str()),
        ("ENOMEM", "absent"),
        "a job that did not ask: {out}{err}"
    );
    // The seed, through the job's environment instead of its comment.
    let (code, out, err) = cluster.srun(&[
        &format!("{library},OVERCOMMIT_SCOPE=job"),
        "/usr/bin/python3",
        "-c",
        SEED,
    ]);
    assert_eq!((code, out.trim()), (0, "allocated 352800000000"), "{err}");
    assert_eq!(
        fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap(),
        mode_before,
        "the node's policy is never written"
    );
}
