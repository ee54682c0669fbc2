//! A real one-node Slurm cluster on loopback for the tests of contrib/slurm: munged, slurmctld
//! and slurmd (Debian's slurm-wlm and munge) started by pid in a temp dir, on free ports, with
//! the hooks a test names, and stopped (by pid) when dropped. Jobs are submitted with `srun`
//! and `sbatch` as other users, as Slurm does it for them.
//!
//! Needs Debian's slurmd, slurmctld, slurm-client and munge (scripts/test.sh installs them);
//! without them `start` records a skip (a failure with CI=true).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROGRAMS: &[&str] = &[
    "munged",
    "slurmctld",
    "slurmd",
    "srun",
    "sbatch",
    "scancel",
    "squeue",
    "sinfo",
    "scontrol",
];

pub fn find(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// What the cluster runs around jobs; each hook is a script, given to slurm.conf as is.
#[derive(Default)]
pub struct Hooks {
    pub prolog: Option<PathBuf>,
    pub epilog: Option<PathBuf>,
    pub task_prolog: Option<PathBuf>,
    /// More slurm.conf lines.
    pub extra: String,
}

/// A hook that runs the contrib script `NAME.sh` as slurmd would, with its settings file named
/// (OVERCOMMIT_SLURM_CONF), and its SLURM_ variables recorded in DIR/NAME-env.JOBID (where the
/// hook's user may write there).
pub fn wrapper(dir: &Path, name: &str, settings: &Path) -> PathBuf {
    let path = dir.join(format!("{name}-wrapper.sh"));
    fs::write(
        &path,
        format!(
            "#!/bin/sh
env | grep ^SLURM_ 2>/dev/null > {dir}/{name}-env.$SLURM_JOB_ID
OVERCOMMIT_SLURM_CONF={settings} exec {script}
",
            dir = dir.display(),
            settings = settings.display(),
            script = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("contrib/slurm")
                .join(format!("{name}.sh"))
                .display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The daemons of the cluster, stopped (by pid) when dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the cluster and waits for its node to be idle; `None` (after a recorded skip) when
/// Slurm or munge is missing. The test binary must hold only tests that use one cluster at a
/// time: this process becomes the subreaper of the daemons' helpers.
pub fn start(hooks: &Hooks) -> Option<Cluster> {
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| find(p).is_none())
        .collect();
    if !missing.is_empty() {
        super::skip::skip(&format!(
            "the real-Slurm tests need {missing:?} (Debian packages slurmd slurmctld slurm-client munge; scripts/test.sh installs them)"
        ));
        return None;
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // The job's users reach the munge socket and the job's files through it.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().to_path_buf();
    let path = |name: &str| root.join(name).display().to_string();
    for sub in ["state", "spool"] {
        fs::create_dir(dir.path().join(sub)).unwrap();
    }
    // Where jobs write their output, as any user.
    fs::create_dir(dir.path().join("out")).unwrap();
    fs::set_permissions(dir.path().join("out"), fs::Permissions::from_mode(0o1777)).unwrap();
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
    let hook = |key: &str, script: &Option<PathBuf>| {
        script
            .as_ref()
            .map_or(String::new(), |p| format!("{key}={}\n", p.display()))
    };
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
{prolog}{epilog}{task_prolog}{extra}
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
        prolog = hook("Prolog", &hooks.prolog),
        epilog = hook("Epilog", &hooks.epilog),
        task_prolog = hook("TaskProlog", &hooks.task_prolog),
        extra = hooks.extra,
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
        let state = cluster.node_state();
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

impl Cluster {
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The ends of the daemons' logs.
    pub fn logs(&self) -> String {
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

    /// A Slurm client command for this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("SLURM_CONF", self.conf())
            .env("PATH", "/usr/bin:/bin:/usr/sbin")
            .current_dir("/tmp");
        command
    }

    /// A Slurm client command run by the user `uid` (with the groups NSS gives them), as the
    /// user would run it: Slurm answers a waiting `srun` in the user's name.
    pub fn command_as(&self, program: &str, uid: u32) -> Command {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .unwrap()
            .unwrap_or_else(|| panic!("no user {uid}"));
        let name = std::ffi::CString::new(user.name).unwrap();
        let groups: Vec<u32> = nix::unistd::getgrouplist(&name, user.gid)
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut command = self.command(program);
        super::as_user(&mut command, uid, user.gid.as_raw(), &groups);
        command
    }

    /// `srun` as the user `uid` with `args`; (exit code, stdout, stderr).
    pub fn srun(&self, uid: u32, args: &[&str]) -> (i32, String, String) {
        super::run(
            self.command_as("srun", uid)
                .args(["--time", "5"])
                .args(args),
        )
    }

    /// `sbatch` as the user `uid`: the job's id. Its output goes to out/JOBID.out.
    pub fn sbatch(&self, uid: u32, args: &[&str]) -> u64 {
        let (code, out, err) = super::run(
            self.command_as("sbatch", uid)
                .arg("--parsable")
                .arg(format!("--output={}/out/%j.out", self.dir.path().display()))
                .args(args),
        );
        assert_eq!(code, 0, "sbatch {args:?}: {out}{err}\n{}", self.logs());
        out.trim()
            .split(';')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("sbatch printed {out:?}"))
    }

    /// The output of a batch job (empty until it writes).
    pub fn output(&self, job: u64) -> String {
        fs::read_to_string(self.path(&format!("out/{job}.out"))).unwrap_or_default()
    }

    pub fn scancel(&self, job: u64) {
        let (code, out, err) = super::run(self.command("scancel").arg(job.to_string()));
        assert_eq!(code, 0, "scancel {job}: {out}{err}");
    }

    /// A job's state (`RUNNING`, `COMPLETED`, `CANCELLED`, `TIMEOUT`, ...).
    pub fn job_state(&self, job: u64) -> String {
        let out = self
            .command("scontrol")
            .args(["show", "job", "-o", &job.to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.split_whitespace()
            .find_map(|w| w.strip_prefix("JobState="))
            .unwrap_or("UNKNOWN")
            .to_string()
    }

    /// Waits until `job` is in one of `states`; the state reached.
    pub fn wait_job(&self, job: u64, states: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.job_state(job);
            if states.contains(&state.as_str()) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "job {job} is {state}, not {states:?}, after {limit:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The node's state as sinfo says it (`idle`, `mixed`, `allocated`, `drained`, ...).
    pub fn node_state(&self) -> String {
        self.command("sinfo")
            .args(["-h", "-o", "%T"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// Panics when the node is drained or draining, or Slurm logged a failed hook.
    pub fn assert_not_drained(&self, after: &str) {
        let state = self.node_state();
        let ctld = fs::read_to_string(self.path("slurmctld.log")).unwrap_or_default();
        let slurmd = fs::read_to_string(self.path("slurmd.log")).unwrap_or_default();
        let failed = ctld.lines().chain(slurmd.lines()).find(|l| {
            l.contains("prolog failed") || l.contains("epilog failed") || l.contains("drain")
        });
        assert!(
            !state.contains("drain") && !state.contains("down") && failed.is_none(),
            "after {after}: node {state}, {failed:?}\n{}",
            self.logs()
        );
    }
}
