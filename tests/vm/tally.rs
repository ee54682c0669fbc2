//! Counts for the suite's summary line, shared by the tests of this binary.
//!
//! libtest runs the tests on parallel threads and captures what they print unless they fail,
//! so:
//! - every test opens a [`TestRun`] and runs its checks as named scenarios through it; a
//!   failing scenario does not stop the others of the same boot, and the test fails at the
//!   end with all of their messages;
//! - when a test ends (passed or failed) it writes its own line straight to the stderr handle,
//!   which libtest does not capture, so it reaches a plain `cargo test` log and CI;
//! - the test that ends last (all of [`crate::VM_TESTS`] done) also writes the summary:
//!   `vm: N boots, M scenarios passed, F failed; predictor agreed with the kernel on A/C ...`.
//!   A filtered run (`cargo test --test vm NAME`) prints only the lines of the tests it ran.

use std::any::Any;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Instant;

use crate::harness;

#[derive(Default)]
struct Totals {
    tests_done: Vec<&'static str>,
    passed: usize,
    failed: usize,
    agreed: usize,
    compared: usize,
    borderline: usize,
}

static TOTALS: Mutex<Totals> = Mutex::new(Totals {
    tests_done: Vec::new(),
    passed: 0,
    failed: 0,
    agreed: 0,
    compared: 0,
    borderline: 0,
});

fn totals() -> std::sync::MutexGuard<'static, Totals> {
    // A panic while holding the lock cannot leave the counts inconsistent: keep going.
    TOTALS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Predictor-versus-kernel comparisons of one scenario.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// Cases where `check` gave a firm verdict and the kernel did the same.
    pub agreed: usize,
    /// Cases where `check` gave a firm verdict (allowed or refused).
    pub compared: usize,
    /// Cases `check` called borderline (not compared).
    pub borderline: usize,
}

impl std::ops::AddAssign for Agreement {
    fn add_assign(&mut self, other: Agreement) {
        self.agreed += other.agreed;
        self.compared += other.compared;
        self.borderline += other.borderline;
    }
}

/// One #[test] of the VM suite: its scenarios, counts and final line.
pub struct TestRun {
    name: &'static str,
    started: Instant,
    boots_at_start: usize,
    passed: usize,
    failures: Vec<String>,
    agreement: Agreement,
    notes: Vec<String>,
}

impl TestRun {
    /// Starts the bookkeeping of test `name` (one of [`crate::VM_TESTS`]).
    pub fn start(name: &'static str) -> TestRun {
        assert!(
            crate::VM_TESTS.contains(&name),
            "test {name} is missing from VM_TESTS in tests/vm/main.rs (the summary waits for every test listed there)"
        );
        TestRun {
            name,
            started: Instant::now(),
            boots_at_start: harness::boots_on_this_thread(),
            passed: 0,
            failures: Vec::new(),
            agreement: Agreement::default(),
            notes: Vec::new(),
        }
    }

    /// Runs one named scenario: a panic inside (a failed assertion) is recorded as its
    /// failure and the test goes on with the next scenario.
    pub fn scenario<R>(&mut self, name: &str, body: impl FnOnce() -> R) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(body)) {
            Ok(value) => {
                self.passed += 1;
                Some(value)
            }
            Err(payload) => {
                self.failures.push(format!(
                    "scenario {name} FAILED: {}",
                    panic_message(&*payload)
                ));
                None
            }
        }
    }

    /// Adds predictor-versus-kernel counts (whether or not the scenario passed).
    pub fn agreement(&mut self, agreement: Agreement) {
        self.agreement += agreement;
    }

    /// The last scenario could not run: it is not counted as passed.
    pub fn skipped(&mut self, why: &str) {
        self.passed = self.passed.saturating_sub(1);
        self.notes.push(format!("SKIPPED: {why}"));
    }

    /// A line shown in this test's report (a measurement worth seeing in CI logs).
    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Ends the test: panics with every failed scenario's message if there was one.
    pub fn finish(self) {
        if !self.failures.is_empty() {
            let report = self.failures.join("\n\n");
            panic!(
                "{}: {} of {} scenario(s) failed:\n\n{report}",
                self.name,
                self.failures.len(),
                self.failures.len() + self.passed
            );
        }
    }
}

impl Drop for TestRun {
    fn drop(&mut self) {
        // A panic outside every scenario (a boot that timed out, a script that failed) fails
        // the test as a whole: one failed scenario for the count.
        let failed = if self.failures.is_empty() && std::thread::panicking() {
            1
        } else {
            self.failures.len()
        };
        let boots = harness::boots_on_this_thread() - self.boots_at_start;
        let a = self.agreement;
        let mut line = format!(
            "vm: {}: {boots} boot(s), {} scenario(s) passed, {failed} failed",
            self.name, self.passed
        );
        if a.compared + a.borderline > 0 {
            line.push_str(&format!(
                "; predictor agreed with the kernel on {}/{} ({} borderline not compared)",
                a.agreed, a.compared, a.borderline
            ));
        }
        line.push_str(&format!(" [{:.1}s]", self.started.elapsed().as_secs_f64()));
        for note in &self.notes {
            line.push_str(&format!("\nvm:   {note}"));
        }

        let mut t = totals();
        t.tests_done.push(self.name);
        t.passed += self.passed;
        t.failed += failed;
        t.agreed += a.agreed;
        t.compared += a.compared;
        t.borderline += a.borderline;
        let all_done = crate::VM_TESTS.iter().all(|n| t.tests_done.contains(n));
        if all_done {
            line.push_str(&format!(
                "\nvm: {} boots, {} scenarios passed, {} failed; predictor agreed with the kernel on {}/{} ({} borderline not compared)",
                harness::boots(),
                t.passed,
                t.failed,
                t.agreed,
                t.compared,
                t.borderline
            ));
        }
        // Straight to the handle: libtest captures eprintln! of passing tests. The leading
        // newline: with one test thread libtest has already written `test NAME ... ` (or a
        // progress dot) on the current line, and these lines must start their own.
        let _ = writeln!(std::io::stderr(), "\n{line}");
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "(a panic without a message)".to_string()
    }
}
