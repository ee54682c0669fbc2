//! The engine driven through the traits with injected faults: failed reads and writes of the
//! kernel, a journal that cannot be saved, unsafe baselines, and a fake clock.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::*;
use crate::change::testing::FakeKernel;
use crate::journal::State;
use crate::model::{Knob, Limit};

/// A journal in memory whose saves can be made to fail.
#[derive(Clone, Default)]
struct FakeJournal {
    saved: Rc<RefCell<Option<State>>>,
    fail_saves: Rc<Cell<u32>>,
    /// A save failed: the next one must be a snapshot.
    snapshot_due: Rc<Cell<bool>>,
    /// Records since the last snapshot, and snapshots in all.
    records: Rc<Cell<u32>>,
    snapshots: Rc<Cell<u64>>,
    corrupt: Rc<Cell<bool>>,
    set_aside: Rc<Cell<u32>>,
}

impl FakeJournal {
    fn fail(&self) -> Result<(), JournalError> {
        let left = self.fail_saves.get();
        if left > 0 {
            self.fail_saves.set(left - 1);
            self.snapshot_due.set(true);
            return Err(JournalError::Io {
                path: "/fake".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        Ok(())
    }
}

impl JournalStore for FakeJournal {
    fn load(&mut self) -> Result<Option<State>, JournalError> {
        if self.corrupt.get() {
            return Err(JournalError::Unsafe {
                path: "/fake/state.json".into(),
                problem: "is not a regular file",
            });
        }
        Ok(self.saved.borrow().clone())
    }

    /// Applies the change to the saved state, as replaying the record would.
    fn record(&mut self, change: &JournalChange<'_>) -> Result<(), JournalError> {
        self.fail()?;
        self.records.set(self.records.get() + 1);
        self.saved
            .borrow_mut()
            .as_mut()
            .expect("a snapshot before any record")
            .apply(change);
        Ok(())
    }

    fn snapshot(&mut self, state: &Snapshot<'_>) -> Result<(), JournalError> {
        self.fail()?;
        self.snapshot_due.set(false);
        self.records.set(0);
        self.snapshots.set(self.snapshots.get() + 1);
        *self.saved.borrow_mut() = Some(State {
            version: crate::journal::JOURNAL_VERSION,
            generation: self.snapshots.get(),
            boot_id: state.boot_id.to_string(),
            admin_baseline: state.admin_baseline.cloned(),
            leases: state.leases.iter().map(|&l| l.clone()).collect(),
            effective: state.effective,
        });
        Ok(())
    }

    fn needs_snapshot(&self) -> bool {
        self.saved.borrow().is_none() || self.snapshot_due.get()
    }

    fn wants_compaction(&self) -> bool {
        self.records.get() >= 5
    }

    fn set_aside(&mut self, _why: &str) -> Result<String, JournalError> {
        self.corrupt.set(false);
        self.set_aside.set(self.set_aside.get() + 1);
        *self.saved.borrow_mut() = None;
        self.snapshot_due.set(true);
        Ok("state.json.unusable".into())
    }

    fn describe(&self) -> String {
        "fake".into()
    }
}

const CONFIG: &str = r#"
[daemon]
baseline = "default"
drift_interval = "0"

[profiles.default]
mode = "heuristic"

[profiles.strict]
mode = "never"
ratio = 80

[profiles.swappy]
mode = "heuristic"
swappiness = 10

[[access]]
users = [1000]
modes = ["always", "heuristic", "never"]
max_ttl = "1h"
"#;

fn config(text: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overcommitd.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

type TestEngine = Engine<FakeKernel, FakeJournal>;

const T0: Duration = Duration::from_secs(1000);

fn start_with(kernel: FakeKernel, journal: FakeJournal, text: &str) -> TestEngine {
    let config = config(text);
    let (authorizer, _) = Authorizer::new(&config);
    let options = StartOptions {
        config,
        authorizer,
        boot: Policy {
            mode: Mode::Heuristic,
            limit: Limit::Ratio(50),
        },
        boot_id: "boot".into(),
    };
    let (engine, watches) = Engine::start(kernel, journal, options, T0, |_| Some(()));
    assert!(watches.is_empty());
    engine
}

fn start(text: &str) -> TestEngine {
    start_with(FakeKernel::new(), FakeJournal::default(), text)
}

fn root() -> Peer {
    Peer {
        pid: 1,
        uid: 0,
        gid: 0,
        groups: vec![],
    }
}

fn user() -> Peer {
    Peer {
        pid: 2,
        uid: 1000,
        gid: 1000,
        groups: vec![],
    }
}

fn actor(peer: &Peer) -> Actor<'_> {
    Actor {
        peer,
        comm: "test",
        user: "tester",
    }
}

fn policy(mode: Mode, limit: Limit) -> Policy {
    Policy { mode, limit }
}

fn lease_request(mode: Mode, ttl: u64, tag: Option<&str>, reason: Option<&str>) -> LeaseRequest {
    LeaseRequest {
        policy: PolicyRequest {
            mode,
            ratio: None,
            kbytes: None,
        },
        ttl_secs: Some(ttl),
        tag: tag.map(String::from),
        reason: reason.map(String::from),
        hold: false,
        for_uid: None,
        clamp_ttl: false,
    }
}

fn lease(engine: &mut TestEngine, peer: &Peer, mode: Mode, ttl: u64, now: Duration) -> String {
    let request = lease_request(mode, ttl, None, None);
    let ask = engine.authorize(peer, request).unwrap();
    engine
        .grant(actor(peer), ask, None, now)
        .unwrap()
        .1
        .lease
        .id
}

/// Runs the engine's timer until `until`, as the event loop would; returns the time reached.
fn run_until(engine: &mut TestEngine, until: Duration) -> Duration {
    let mut now = T0;
    while let Some(at) = engine.next_deadline() {
        if at > until {
            break;
        }
        now = now.max(at);
        engine.on_time(now);
    }
    now
}

fn mode(engine: &TestEngine) -> Mode {
    engine.kernel().tunables().overcommit_memory
}

#[test]
fn a_lease_end_that_fails_to_write_is_retried_until_the_kernel_holds_the_baseline() {
    for drift in ["enforce", "warn", "adopt"] {
        let mut engine = start(&CONFIG.replace(
            "drift_interval = \"0\"",
            &format!("drift_interval = \"1s\"\ndrift = \"{drift}\""),
        ));
        let id = lease(&mut engine, &root(), Mode::Always, 3600, T0);
        assert_eq!(mode(&engine), Mode::Always);
        engine.kernel().faults.writes.set(5);
        let released = engine.release(actor(&root()), Some(id), None, T0).unwrap();
        let pending = released.pending_write.expect("the failed write is pending");
        assert_eq!(pending.target.mode, Mode::Heuristic);
        assert!(pending.last_error.contains("cannot write"), "{pending:?}");
        assert_eq!(
            released.effective.mode,
            Mode::Heuristic,
            "from the live table"
        );
        assert_eq!(mode(&engine), Mode::Always, "not yet");
        let status = engine.status(T0, 0).unwrap();
        assert_eq!(status.effective.mode, Mode::Heuristic);
        assert_eq!(status.leases, 0);
        assert!(status.pending_write.is_some());
        assert_eq!(status.drift_events, 0, "our own failed write is not drift");
        run_until(&mut engine, T0 + Duration::from_secs(30));
        assert_eq!(mode(&engine), Mode::Heuristic, "drift = {drift}");
        let status = engine.status(T0 + Duration::from_secs(30), 0).unwrap();
        assert!(status.pending_write.is_none());
        assert_eq!(status.baseline.name, "default", "adopt adopted nothing");
        assert_eq!(status.drift_events, 0);
    }
}

#[test]
fn an_unreadable_meminfo_at_expiry_is_retried() {
    let mut engine = start(CONFIG);
    lease(&mut engine, &root(), Mode::Always, 10, T0);
    engine.kernel().faults.reads.set(4);
    let now = run_until(&mut engine, T0 + Duration::from_secs(10));
    assert_eq!(
        engine.leases().leases.len(),
        0,
        "the lease ended at its TTL"
    );
    assert!(engine.status(now, 0).is_err() || mode(&engine) == Mode::Always);
    run_until(&mut engine, T0 + Duration::from_secs(60));
    assert_eq!(mode(&engine), Mode::Heuristic);
}

#[test]
fn retries_back_off_and_the_deadline_is_never_in_a_busy_loop() {
    let mut engine = start(CONFIG);
    lease(&mut engine, &root(), Mode::Always, 3600, T0);
    engine.kernel().faults.writes.set(u32::MAX);
    let _ = engine.release(actor(&root()), None, None, T0);
    let ids: Vec<String> = engine
        .leases()
        .leases
        .iter()
        .map(|l| l.id.clone())
        .collect();
    engine
        .release(actor(&root()), Some(ids[0].clone()), None, T0)
        .unwrap();
    let mut now = T0;
    let mut gaps = Vec::new();
    for _ in 0..12 {
        let at = engine.next_deadline().unwrap();
        gaps.push(at - now);
        now = at;
        engine.on_time(now);
    }
    assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
    assert_eq!(*gaps.last().unwrap(), MAX_RETRY);
    let attempts = engine
        .status(now, 0)
        .unwrap()
        .pending_write
        .unwrap()
        .attempts;
    assert_eq!(attempts, 13);
    engine.kernel().faults.writes.set(0);
    engine.on_time(now + MAX_RETRY);
    assert_eq!(mode(&engine), Mode::Heuristic);
}

#[test]
fn a_failed_grant_leaves_nothing_behind() {
    let mut engine = start(CONFIG);
    engine
        .kernel()
        .faults
        .knob
        .set(Some(Knob::OvercommitMemory));
    let request = lease_request(Mode::Always, 60, None, None);
    let ask = engine.authorize(&root(), request.clone()).unwrap();
    let e = engine.grant(actor(&root()), ask, None, T0).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Kernel);
    assert!(engine.leases().leases.is_empty());
    assert_eq!(
        engine
            .journal()
            .saved
            .borrow()
            .as_ref()
            .unwrap()
            .leases
            .len(),
        0
    );
    engine.kernel().faults.knob.set(None);
    // The journal full (ENOSPC): refused before the kernel is touched.
    engine.journal().fail_saves.set(1);
    let writes = engine.kernel().writes.get();
    let ask = engine.authorize(&root(), request).unwrap();
    let e = engine.grant(actor(&root()), ask, None, T0).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Internal);
    assert!(e.to_string().contains("No space left"), "{e}");
    assert_eq!(engine.kernel().writes.get(), writes);
    assert!(engine.status(T0, 0).unwrap().journal_error.is_none());
}

#[test]
fn a_journal_that_cannot_be_saved_at_a_lease_end_is_saved_later() {
    let mut engine = start(CONFIG);
    let id = lease(&mut engine, &root(), Mode::Always, 3600, T0);
    engine.journal().fail_saves.set(3);
    engine.release(actor(&root()), Some(id), None, T0).unwrap();
    assert_eq!(
        mode(&engine),
        Mode::Heuristic,
        "the kernel goes back at once"
    );
    assert!(engine.status(T0, 0).unwrap().journal_error.is_some());
    run_until(&mut engine, T0 + Duration::from_secs(5));
    assert!(engine.status(T0, 0).unwrap().journal_error.is_none());
    assert!(engine
        .journal()
        .saved
        .borrow()
        .as_ref()
        .unwrap()
        .leases
        .is_empty());
}

#[test]
fn an_apply_whose_swappiness_write_fails_changes_nothing() {
    let mut engine = start(CONFIG);
    engine.kernel().faults.knob.set(Some(Knob::Swappiness));
    let new = engine.profile_baseline("swappy").unwrap();
    let e = engine
        .change_baseline(actor(&root()), new, false, "apply", T0)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Kernel);
    assert_eq!(engine.status(T0, 0).unwrap().baseline.name, "default");
    assert_eq!(engine.kernel().tunables().swappiness, 60);
}

fn never(ratio: u32) -> Policy {
    policy(Mode::Never, Limit::Ratio(ratio))
}

#[test]
fn set_judges_the_new_baseline_even_while_a_lease_holds_more() {
    let mut engine = start(CONFIG);
    lease(&mut engine, &root(), Mode::Always, 3600, T0);
    let unsafe_set = PolicyRequest {
        mode: Mode::Never,
        ratio: Some(1),
        kbytes: None,
    };
    let new = engine.custom_baseline(&unsafe_set).unwrap();
    let e = engine
        .change_baseline(actor(&root()), new, false, "set", T0)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unsafe, "{e}");
    assert_eq!(engine.status(T0, 0).unwrap().baseline.name, "default");
    let new = engine.custom_baseline(&unsafe_set).unwrap();
    engine
        .change_baseline(actor(&root()), new, true, "set", T0)
        .unwrap();
    assert_eq!(mode(&engine), Mode::Always, "the lease still holds");
}

#[test]
fn a_baseline_that_became_unsafe_is_held_off_when_the_last_lease_ends() {
    let mut engine = start(CONFIG);
    let strict = engine.profile_baseline("strict").unwrap();
    engine
        .change_baseline(actor(&root()), strict, false, "apply", T0)
        .unwrap();
    assert_eq!(engine.kernel().policy(), never(80));
    let id = lease(&mut engine, &root(), Mode::Always, 3600, T0);
    // The job commits far more than the strict limit allows (16 GiB * 80% + 1 GiB swap).
    engine.kernel().node.borrow_mut().memory.committed_as = 15 << 30;
    engine.release(actor(&root()), Some(id), None, T0).unwrap();
    assert_eq!(
        mode(&engine),
        Mode::Always,
        "held: the node stays allocatable"
    );
    let status = engine.status(T0, 0).unwrap();
    let held = status.held.expect("shown in status");
    assert_eq!(held.wanted, never(80));
    assert_eq!(held.holding.mode, Mode::Always);
    assert_eq!(status.in_force.mode, Mode::Always);
    assert_eq!(status.effective, never(80));
    // Looked at again with backoff; the baseline comes back once it is safe.
    run_until(&mut engine, T0 + Duration::from_secs(10));
    assert_eq!(mode(&engine), Mode::Always);
    engine.kernel().node.borrow_mut().memory.committed_as = 2 << 30;
    run_until(&mut engine, T0 + Duration::from_secs(200));
    assert_eq!(engine.kernel().policy(), never(80));
    assert!(engine.status(T0, 0).unwrap().held.is_none());
}

#[test]
fn an_unsafe_configured_baseline_at_start_or_reload_is_held_off() {
    let kernel = FakeKernel::new();
    kernel.node.borrow_mut().memory.committed_as = 15 << 30;
    let unsafe_config = CONFIG.replace("baseline = \"default\"", "baseline = \"strict\"");
    let mut engine = start_with(kernel, FakeJournal::default(), &unsafe_config);
    assert_eq!(
        mode(&engine),
        Mode::Heuristic,
        "the kernel's safe policy is held"
    );
    assert!(engine.status(T0, 0).unwrap().held.is_some());

    let mut engine = start(CONFIG);
    engine.kernel().node.borrow_mut().memory.committed_as = 15 << 30;
    let new = config(&unsafe_config);
    let (authorizer, _) = Authorizer::new(&new);
    engine.reload(new, authorizer, T0);
    assert_eq!(mode(&engine), Mode::Heuristic);
    assert_eq!(
        engine.status(T0, 0).unwrap().held.unwrap().wanted,
        never(80)
    );
}

#[test]
fn an_unusable_journal_is_set_aside_and_the_baseline_never_comes_from_a_lease() {
    // The kernel holds a lease's policy; the journal that knew it is unusable.
    let kernel = FakeKernel::new();
    kernel.write_knob(Knob::OvercommitMemory, 1).unwrap();
    let journal = FakeJournal::default();
    journal.corrupt.set(true);
    let no_baseline = CONFIG.replace("baseline = \"default\"\n", "");
    let mut engine = start_with(kernel, journal.clone(), &no_baseline);
    assert_eq!(journal.set_aside.get(), 1);
    assert_eq!(
        mode(&engine),
        Mode::Heuristic,
        "the boot policy, not the kernel's"
    );
    assert_eq!(engine.status(T0, 0).unwrap().baseline.source, "boot");
}

#[test]
fn leases_are_readopted_or_ended_at_start() {
    let journal = FakeJournal::default();
    let mut engine = start_with(FakeKernel::new(), journal.clone(), CONFIG);
    lease(&mut engine, &root(), Mode::Always, 3600, T0);
    lease(&mut engine, &root(), Mode::Always, 5, T0);
    let kernel = FakeKernel::new();
    kernel.write_knob(Knob::OvercommitMemory, 1).unwrap();
    let config = config(CONFIG);
    let (authorizer, _) = Authorizer::new(&config);
    let options = StartOptions {
        config,
        authorizer,
        boot: never(50),
        boot_id: "boot".into(),
    };
    let later = T0 + Duration::from_secs(10);
    let (engine, _) = Engine::start(kernel, journal, options, later, |_| Some(()));
    assert_eq!(engine.leases().leases.len(), 1, "the expired one ended");
    assert_eq!(mode(&engine), Mode::Always);
}

#[test]
fn durations_saturate_instead_of_overflowing() {
    let mut engine = start(CONFIG);
    let far = Duration::MAX - Duration::from_secs(1);
    let id = lease(&mut engine, &root(), Mode::Always, 366 * 86400, far);
    assert!(engine.next_deadline().is_some());
    engine.on_time(far);
    assert!(engine.leases().leases.iter().any(|l| l.id == id));
}

#[test]
fn tags_and_reasons_with_control_or_format_characters_are_refused() {
    let mut engine = start(CONFIG);
    for (tag, reason) in [
        (Some("a\u{202E}b"), None),
        (Some(""), None),
        (None, Some("line\nbreak")),
        (None, Some("zero\u{200B}width")),
    ] {
        let request = lease_request(Mode::Always, 60, tag, reason);
        let e = engine.authorize(&user(), request).err().unwrap();
        assert_eq!(e.code(), ErrorCode::Invalid, "{tag:?} {reason:?}");
    }
}

#[test]
fn drift_is_counted_and_the_last_one_recorded() {
    let mut engine = start(CONFIG);
    engine
        .kernel()
        .write_knob(Knob::OvercommitMemory, 1)
        .unwrap();
    let status = engine.status(T0, 0).unwrap();
    assert_eq!(status.drift_events, 1);
    let last = status.last_drift.unwrap();
    assert_eq!(
        (last.found.mode, last.expected.mode, last.action.as_str()),
        (Mode::Always, Mode::Heuristic, "enforced")
    );
    assert_eq!(mode(&engine), Mode::Heuristic);
    engine
        .kernel()
        .write_knob(Knob::OvercommitMemory, 2)
        .unwrap();
    assert_eq!(engine.status(T0, 0).unwrap().drift_events, 2);
}

#[test]
fn an_emfile_during_a_write_is_retried() {
    let mut engine = start(CONFIG);
    let id = lease(&mut engine, &root(), Mode::Always, 3600, T0);
    engine.kernel().faults.errno.set(libc::EMFILE);
    engine.kernel().faults.writes.set(2);
    let released = engine.release(actor(&root()), Some(id), None, T0).unwrap();
    assert!(released
        .pending_write
        .unwrap()
        .last_error
        .contains("Too many open files"));
    run_until(&mut engine, T0 + Duration::from_secs(2));
    assert_eq!(mode(&engine), Mode::Heuristic);
}

#[test]
fn each_change_is_one_record_and_the_journal_is_compacted_after_the_replies() {
    let journal = FakeJournal::default();
    let mut engine = start_with(FakeKernel::new(), journal.clone(), CONFIG);
    assert_eq!(journal.snapshots.get(), 1, "the state found at start");
    let ids: Vec<String> = (0..4)
        .map(|_| lease(&mut engine, &root(), Mode::Always, 3600, T0))
        .collect();
    engine
        .release(actor(&root()), Some(ids[0].clone()), None, T0)
        .unwrap();
    assert_eq!(journal.records.get(), 5);
    assert_eq!(
        journal.snapshots.get(),
        1,
        "no rewrite of the whole per change"
    );
    // The records replayed over the snapshot give the live table.
    let saved: Vec<String> = journal
        .saved
        .borrow()
        .as_ref()
        .unwrap()
        .leases
        .iter()
        .map(|l| l.id.to_string())
        .collect();
    let live: Vec<String> = engine
        .leases()
        .leases
        .iter()
        .map(|l| l.id.clone())
        .collect();
    assert_eq!(
        saved.iter().collect::<std::collections::BTreeSet<_>>(),
        live.iter().collect::<std::collections::BTreeSet<_>>()
    );
    assert_eq!(live.len(), 3);
    engine.compact_journal(T0);
    assert_eq!(journal.snapshots.get(), 2);
    assert_eq!(journal.records.get(), 0);
    // After a failed save the next one is a snapshot: a record must not follow a lost one.
    journal.fail_saves.set(1);
    engine
        .release(actor(&root()), Some(ids[1].clone()), None, T0)
        .unwrap();
    assert!(engine.status(T0, 0).unwrap().journal_error.is_some());
    lease(&mut engine, &root(), Mode::Always, 3600, T0);
    assert_eq!(journal.snapshots.get(), 3);
    assert_eq!(journal.saved.borrow().as_ref().unwrap().leases.len(), 3);
}

/// Read calls in all and of meminfo alone since `before`, and the counts now.
fn reads_since(engine: &TestEngine, before: (u32, u32)) -> ((u32, u32), (u32, u32)) {
    let kernel = engine.kernel();
    let now = (kernel.reads.get(), kernel.memory_reads.get());
    ((now.0 - before.0, now.1 - before.1), now)
}

#[test]
fn a_decision_reads_the_kernel_once_and_memory_only_while_mode_never_is_in_play() {
    let mut engine = start(CONFIG);
    let (_, counts) = reads_since(&engine, (0, 0));
    let id = lease(&mut engine, &root(), Mode::Always, 3600, T0);
    let (delta, _) = reads_since(&engine, counts);
    assert_eq!(
        delta,
        (2, 0),
        "the policy knobs before the write and read back after it"
    );
    engine.release(actor(&root()), Some(id), None, T0).unwrap();
    let never90 = LeaseRequest {
        policy: PolicyRequest {
            mode: Mode::Never,
            ratio: Some(90),
            kbytes: None,
        },
        ..lease_request(Mode::Never, 60, None, None)
    };
    // On the heuristic baseline a never lease changes nothing: memory does not matter.
    // On a mode-never baseline the guard reads meminfo, once per decision.
    let strict = CONFIG.replace("baseline = \"default\"", "baseline = \"strict\"");
    for (mut engine, expected, writes) in [(engine, (1, 0), 0), (start(&strict), (4, 1), 1)] {
        let (_, counts) = reads_since(&engine, (0, 0));
        let written = engine.kernel().writes.get();
        let ask = engine.authorize(&root(), never90.clone()).unwrap();
        engine.grant(actor(&root()), ask, None, T0).unwrap();
        let (delta, _) = reads_since(&engine, counts);
        assert_eq!(delta, expected, "knobs (, reserves, meminfo, read-back)");
        assert_eq!(engine.kernel().writes.get() - written, writes);
    }
}

#[test]
fn the_first_start_without_a_baseline_keeps_a_stricter_policy_set_at_run_time() {
    // `sysctl -w vm.overcommit_memory=2` before the daemon ever ran in this boot; no sysctl.d.
    let no_baseline = CONFIG.replace("baseline = \"default\"\n", "");
    let kernel = FakeKernel::new();
    kernel.write_knob(Knob::OvercommitRatio, 90).unwrap();
    kernel.write_knob(Knob::OvercommitMemory, 2).unwrap();
    let journal = FakeJournal::default();
    let mut engine = start_with(kernel, journal.clone(), &no_baseline);
    assert_eq!(
        engine.kernel().policy(),
        never(90),
        "installing changed nothing"
    );
    let status = engine.status(T0, 0).unwrap();
    assert_eq!(
        (status.baseline.name.as_str(), status.baseline.policy),
        (FOUND, never(90))
    );
    let found = status.found_at_start.expect("status says what it found");
    assert_eq!(
        (found.action, found.kernel.mode),
        (FoundAction::Kept, Mode::Never)
    );

    // A lease and its end come back to it; a restart in the same boot keeps it.
    let id = lease(&mut engine, &root(), Mode::Always, 60, T0);
    engine.release(actor(&root()), Some(id), None, T0).unwrap();
    assert_eq!(engine.kernel().policy(), never(90));
    let (engine, _) = Engine::start(
        FakeKernel::new(),
        journal,
        StartOptions {
            config: config(&no_baseline),
            authorizer: Authorizer::default(),
            boot: policy(Mode::Heuristic, Limit::Ratio(50)),
            boot_id: "boot".into(),
        },
        T0,
        |_| Some(()),
    );
    assert_eq!(
        engine.kernel().policy(),
        never(90),
        "the journal of this boot keeps the found baseline"
    );
}

#[test]
fn the_first_start_puts_the_boot_policy_back_over_a_more_permissive_kernel() {
    // Mode always could be a lease's whose journal was lost: never adopted.
    let no_baseline = CONFIG.replace("baseline = \"default\"\n", "");
    let kernel = FakeKernel::new();
    kernel.write_knob(Knob::OvercommitMemory, 1).unwrap();
    let mut engine = start_with(kernel, FakeJournal::default(), &no_baseline);
    assert_eq!(mode(&engine), Mode::Heuristic);
    let status = engine.status(T0, 0).unwrap();
    assert_eq!(status.baseline.source, "boot");
    let found = status.found_at_start.unwrap();
    assert_eq!(
        (found.action, found.kernel.mode),
        (FoundAction::Replaced, Mode::Always)
    );
}

#[test]
fn only_the_first_start_without_a_configured_baseline_keeps_what_it_found() {
    let strict_kernel = || {
        let kernel = FakeKernel::new();
        kernel.write_knob(Knob::OvercommitMemory, 2).unwrap();
        kernel
    };
    // A configured baseline is applied.
    let mut engine = start_with(strict_kernel(), FakeJournal::default(), CONFIG);
    assert_eq!(mode(&engine), Mode::Heuristic);
    assert!(engine.status(T0, 0).unwrap().found_at_start.is_none());
    // A journal of this boot (the daemon ran before) decides, not the kernel.
    let no_baseline = CONFIG.replace("baseline = \"default\"\n", "");
    let journal = FakeJournal::default();
    drop(start_with(FakeKernel::new(), journal.clone(), &no_baseline));
    let mut engine = start_with(strict_kernel(), journal, &no_baseline);
    assert_eq!(mode(&engine), Mode::Heuristic);
    assert!(engine.status(T0, 0).unwrap().found_at_start.is_none());
    // A journal set aside may have known a lease: nothing is kept.
    let journal = FakeJournal::default();
    journal.corrupt.set(true);
    let engine = start_with(strict_kernel(), journal, &no_baseline);
    assert_eq!(mode(&engine), Mode::Heuristic);
    // A baseline configured later and reloaded replaces the found one.
    let mut engine = start_with(strict_kernel(), FakeJournal::default(), &no_baseline);
    assert_eq!(mode(&engine), Mode::Never);
    let new = config(&CONFIG.replace("baseline = \"default\"", "baseline = \"swappy\""));
    let (authorizer, _) = Authorizer::new(&new);
    engine.reload(new, authorizer, T0);
    assert_eq!(mode(&engine), Mode::Heuristic);
    assert_eq!(engine.status(T0, 0).unwrap().baseline.name, "swappy");
}
