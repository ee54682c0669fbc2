//! contrib/slurm/prolog.sh and epilog.sh under a real one-node Slurm (tests/common/slurm.rs)
//! with a real overcommitd on a fake proc root. Jobs run as real users: nobody (in nogroup,
//! which the access rule names) and daemon (in no rule). The matrix: a job that asks for
//! nothing; leases with time limits 00:08:00, 08:00:00, 1-09:05:00 and UNLIMITED; a comment
//! with other words; scancel mid-run; a time-limit kill; a user with no access rule; the daemon
//! down; the daemon hung; leases only for exclusive jobs. Each job reads the kernel's mode and
//! the lease table from inside; after each, the node must not be drained, the lease must be
//! gone, and nothing may be left over.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::slurm::{self, Cluster, Hooks};
use common::Daemon;
use nix::sys::signal::Signal;
use serde_json::Value;

fn config() -> String {
    format!(
        "{}\n[[access]]\ngroups = [65534]\nmodes = [\"always\", \"heuristic\"]\nmax_ttl = \"24h\"\nmax_leases = 4\n",
        common::HEURISTIC_CONFIG
    )
}

/// nobody, in nogroup (65534): the rule's group, known only through NSS.
const ALLOWED: u32 = 65534;
/// daemon (1): no rule.
const NO_RULE: u32 = 1;
const DAY: u64 = 86400;
/// The hooks' grace: 10 minutes.
const GRACE: u64 = 600;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The test's world: the daemon, the hooks' settings file, and the cluster running them.
struct Site {
    daemon: Daemon,
    cluster: Cluster,
    settings: PathBuf,
}

fn start() -> Option<Site> {
    let daemon = Daemon::start("m1024-swap512-mode0", &config(), &[]);
    let settings = daemon.path("overcommit.default");
    let hooks = Hooks {
        prolog: Some(slurm::wrapper(daemon.dir.path(), "prolog", &settings)),
        epilog: Some(slurm::wrapper(daemon.dir.path(), "epilog", &settings)),
        // The time-limit kill within seconds of the limit.
        extra: "KillWait=2\nOverTimeLimit=0\n".into(),
        ..Hooks::default()
    };
    let cluster = slurm::start(&hooks)?;
    let site = Site {
        daemon,
        cluster,
        settings,
    };
    site.configure("");
    Some(site)
}

impl Site {
    /// Writes the hooks' settings: the shipped defaults, pointed at the test's programs, plus
    /// `more`.
    fn configure(&self, more: &str) {
        let shipped = fs::read_to_string(repo().join("contrib/slurm/overcommit.default")).unwrap();
        let text = format!(
            "{shipped}\nOVERCOMMITCTL={ctl}\nSQUEUE={squeue}\nOVERCOMMIT_SLURM_LOG={log}\n\
             OVERCOMMIT_SLURM_STATE={state}\n\
             export SLURM_CONF={conf} OVERCOMMIT_SOCKET={socket}\n{more}\n",
            ctl = env!("CARGO_BIN_EXE_overcommitctl"),
            squeue = slurm::find("squeue").unwrap().display(),
            log = self.hooks_log().display(),
            state = self.daemon.path("slurm-state").display(),
            conf = self.cluster.conf().display(),
            socket = self.daemon.socket().display(),
        );
        fs::write(&self.settings, text).unwrap();
    }

    fn hooks_log(&self) -> PathBuf {
        self.daemon.path("hooks.log")
    }

    fn log_of(&self, job: u64) -> String {
        fs::read_to_string(self.hooks_log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!(" job {job}: ")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The shell command a job runs: the kernel's mode, then the lease table as JSON.
    fn probe(&self, sleep: u32) -> String {
        format!(
            "cat {proc}/sys/vm/overcommit_memory; {ctl} --socket {socket} --timeout 2s --json leases; sleep {sleep}",
            proc = self.daemon.path("proc").display(),
            ctl = env!("CARGO_BIN_EXE_overcommitctl"),
            socket = self.daemon.socket().display(),
        )
    }

    /// Runs a job with srun; what it saw: (the mode, its own lease's TTL, the job id).
    fn srun(&self, uid: u32, args: &[&str]) -> (String, Option<u64>, u64) {
        let probe = self.probe(0);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["/bin/sh", "-c", &probe]);
        let (code, out, err) = self.cluster.srun(uid, &all);
        assert_eq!(
            code,
            0,
            "srun {args:?}: {out}{err}\n{}",
            self.cluster.logs()
        );
        let job = err
            .lines()
            .chain(out.lines())
            .find_map(|l| {
                l.split("job ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .or_else(|| self.last_job())
            .expect("the job id");
        let (mode, ttl) = seen(&out, job);
        assert!(
            !mode.is_empty(),
            "srun {args:?} printed nothing: {out}{err}"
        );
        (mode, ttl, job)
    }

    /// The highest job id Slurm knows.
    fn last_job(&self) -> Option<u64> {
        let out = self
            .cluster
            .command("scontrol")
            .args(["show", "job", "-o"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.strip_prefix("JobId=")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .max()
    }

    fn leases(&self) -> Vec<Value> {
        let (_, out, _) = common::run(self.daemon.ctl().args(["--json", "leases"]));
        serde_json::from_str::<Value>(&out).unwrap()["leases"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// After a job: its lease is gone, the kernel holds what the leases still live make (the
    /// baseline when none), the node is not drained.
    fn settled(&self, job: u64, what: &str) {
        let tag = format!("slurm-{job}");
        let mine = |leases: &[Value]| leases.iter().any(|l| l["tag"] == tag.as_str());
        let deadline = Instant::now() + Duration::from_secs(10);
        while mine(&self.leases()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let leases = self.leases();
        assert!(
            !mine(&leases),
            "{what}: its lease was left behind\n{}",
            self.log_of(job)
        );
        let expected = if leases.is_empty() { "0" } else { "1" };
        assert_eq!(self.daemon.mode(), expected, "{what}: {leases:?}");
        self.cluster.assert_not_drained(what);
    }
}

/// What a job printed: its first line (the mode) and the TTL of the lease tagged with its id.
fn seen(out: &str, job: u64) -> (String, Option<u64>) {
    let mut lines = out.lines();
    let mode = lines.next().unwrap_or_default().trim().to_string();
    let table: Value = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    let tag = format!("slurm-{job}");
    let ttl = table["leases"].as_array().and_then(|leases| {
        leases
            .iter()
            .find(|l| l["tag"] == tag.as_str())
            .and_then(|l| {
                assert_eq!(l["requester_uid"], 0, "root asked: {l}");
                l["ttl_secs"].as_u64()
            })
    });
    (mode, ttl)
}

#[test]
fn slurm_jobs_get_the_leases_their_users_rules_allow_and_never_drain_the_node() {
    let Some(site) = start() else { return };
    let started = Instant::now();
    let ask = "--comment=project42 overcommit=always";

    // A job killed at its time limit (1 minute), in the background while the others run.
    let timed = site
        .cluster
        .sbatch(ALLOWED, &["--time=1", ask, "--wrap", &site.probe(600)]);

    // No request: no lease of its own, no Slurm command run. The node is in mode 1 all the
    // same: the time-limited job's lease is node-wide (the shared-node effect).
    site.cluster
        .wait_job(timed, &["RUNNING"], Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while site.leases().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mode, ttl, job) = site.srun(ALLOWED, &["--comment=project42"]);
    assert_eq!((mode.as_str(), ttl), ("1", None), "{}", site.log_of(job));
    assert_eq!(
        site.log_of(job),
        "",
        "the prolog said nothing and asked nothing"
    );
    site.settled(job, "no request");

    // Leases, with the time limits that once drained nodes (08 and 09 read as octal).
    for (limit, expected) in [
        ("00:08:00", 8 * 60 + GRACE),
        ("08:00:00", 8 * 3600 + GRACE),
        ("1-09:05:00", DAY),
        ("UNLIMITED", DAY),
    ] {
        let (mode, ttl, job) = site.srun(ALLOWED, &[&format!("--time={limit}"), ask]);
        let env =
            fs::read_to_string(site.daemon.path(&format!("prolog-env.{job}"))).unwrap_or_default();
        assert_eq!(mode, "1", "{limit}\n{}\n{env}", site.log_of(job));
        let ttl =
            ttl.unwrap_or_else(|| panic!("{limit}: no lease seen\n{}\n{env}", site.log_of(job)));
        assert!(
            (expected.saturating_sub(30)..=expected).contains(&ttl),
            "{limit}: TTL {ttl}, expected about {expected}\n{}",
            site.log_of(job)
        );
        println!("time limit {limit}: lease TTL {ttl} s (expected {expected})");
        site.settled(job, limit);
        // The epilog logs once its release returned, just after the lease went.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !site.log_of(job).contains("epilog job") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            site.log_of(job).contains("epilog job"),
            "released by the epilog\n{}",
            site.log_of(job)
        );
    }

    // scancel mid-run: the epilog releases it.
    let job = site
        .cluster
        .sbatch(ALLOWED, &["--time=10", ask, "--wrap", &site.probe(300)]);
    site.cluster
        .wait_job(job, &["RUNNING"], Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !site.cluster.output(job).contains("\"leases\"") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mode, ttl) = seen(&site.cluster.output(job), job);
    assert_eq!(
        (mode.as_str(), ttl.is_some()),
        ("1", true),
        "{}",
        site.cluster.output(job)
    );
    site.cluster.scancel(job);
    site.cluster
        .wait_job(job, &["CANCELLED"], Duration::from_secs(30));
    site.settled(job, "scancel");

    // A user with no access rule: the prolog is refused, logs it, and the job runs anyway.
    let (_, ttl, job) = site.srun(NO_RULE, &[ask]);
    assert_eq!(ttl, None);
    assert!(
        site.log_of(job).contains("no lease (always for uid 1)")
            && site
                .log_of(job)
                .contains("uid 1 is not in any [[access]] rule"),
        "{}",
        site.log_of(job)
    );
    site.settled(job, "no access rule");

    // The time-limited job was killed at its limit; its lease went with it.
    let state = site
        .cluster
        .wait_job(timed, &["TIMEOUT"], Duration::from_secs(150));
    assert_eq!(state, "TIMEOUT");
    let (mode, ttl) = seen(&site.cluster.output(timed), timed);
    assert_eq!(
        (mode.as_str(), ttl.map(|t| t <= 60 + GRACE)),
        ("1", Some(true))
    );
    site.settled(timed, "time-limit kill");
    assert_eq!(site.leases(), Vec::<Value>::new());
    assert_eq!(site.daemon.mode(), "0");

    // Leases only for exclusive jobs.
    site.configure("OVERCOMMIT_EXCLUSIVE_ONLY=yes");
    let (mode, ttl, job) = site.srun(ALLOWED, &[ask]);
    assert_eq!((mode.as_str(), ttl), ("0", None), "{}", site.log_of(job));
    assert!(
        site.log_of(job).contains("may share its nodes"),
        "{}",
        site.log_of(job)
    );
    site.settled(job, "shared job, exclusive only");
    let (mode, ttl, job) = site.srun(ALLOWED, &["--exclusive", ask]);
    assert_eq!(
        (mode.as_str(), ttl.is_some()),
        ("1", true),
        "{}",
        site.log_of(job)
    );
    site.settled(job, "exclusive job");
    site.configure("");

    // The daemon hung: the prolog gives up after its timeout, the job runs, srun succeeds.
    site.daemon.signal(Signal::SIGSTOP);
    let before = Instant::now();
    let (code, out, err) = site.cluster.srun(
        ALLOWED,
        &[
            ask,
            "/bin/cat",
            &site
                .daemon
                .path("proc/sys/vm/overcommit_memory")
                .display()
                .to_string(),
        ],
    );
    let took = before.elapsed();
    site.daemon.signal(Signal::SIGCONT);
    assert_eq!(
        (code, out.trim()),
        (0, "0"),
        "{err}\n{}",
        site.cluster.logs()
    );
    assert!(took < Duration::from_secs(12), "srun took {took:?}");
    let job = site.last_job().unwrap();
    assert!(
        site.log_of(job).contains("did not answer within 3s"),
        "{}",
        site.log_of(job)
    );
    site.settled(job, "daemon hung");

    // The daemon down: the same, at once.
    let mut daemon_down = site;
    daemon_down.daemon.signal(Signal::SIGKILL);
    daemon_down.daemon.wait();
    let site = daemon_down;
    let (code, out, err) = site.cluster.srun(ALLOWED, &[ask, "/bin/true"]);
    assert_eq!(code, 0, "{out}{err}");
    let job = site.last_job().unwrap();
    assert!(
        site.log_of(job).contains("cannot reach overcommitd"),
        "{}",
        site.log_of(job)
    );
    site.cluster.assert_not_drained("daemon down");
    println!(
        "--- what the hooks logged ---\n{}",
        fs::read_to_string(site.hooks_log()).unwrap_or_default()
    );
    println!(
        "real Slurm: {} jobs, node never drained, in {:.1}s",
        job,
        started.elapsed().as_secs_f64()
    );
}
