//! The one way a policy reaches the kernel, for the daemon and for `overcommitctl set` alike:
//! the lockout guard, then the writes of [`write_plan`] in its order with read-back, and the
//! previous values put back if any step fails, so a change is never left half-applied.

use log::warn;

use crate::kernel::{Kernel, KernelError};
use crate::model::{write_plan, Knob, LockoutRisk, Node, Policy, Tunables};

/// Why a guarded change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Unsafe(#[from] LockoutRisk),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// The lockout guard for a policy about to be written: `Err` when it would make every new
/// allocation fail, unless `force`, in which case the overridden risk is returned to be logged.
pub fn guard(
    node: &Node,
    policy: &Policy,
    margin: u64,
    force: bool,
) -> Result<Option<LockoutRisk>, LockoutRisk> {
    match node.lockout_risk(policy, margin) {
        Some(risk) if !force => Err(risk),
        risk => Ok(risk),
    }
}

/// Puts `policy` (and `swappiness`, if given) in force and reads the knobs back. Returns the
/// tunables before and after. On any failure the values found before are written back (best
/// effort) and the first error is returned.
pub fn write_policy<K: Kernel + ?Sized>(
    kernel: &K,
    policy: &Policy,
    swappiness: Option<u64>,
) -> Result<(Tunables, Tunables), KernelError> {
    let before = kernel.read_tunables()?;
    write_policy_over(kernel, &before, policy, swappiness).map(|after| (before, after))
}

/// The knobs a policy is made of: what a change reads back.
pub const POLICY_KNOBS: [Knob; 3] = [
    Knob::OvercommitMemory,
    Knob::OvercommitRatio,
    Knob::OvercommitKbytes,
];

/// [`write_policy`] from `before`, the kernel's values just read (the policy knobs, and
/// swappiness when `swappiness` is given): writes what differs, reads back only what was
/// written to, and on failure puts `before` back. Returns the tunables after.
pub fn write_policy_over<K: Kernel + ?Sized>(
    kernel: &K,
    before: &Tunables,
    policy: &Policy,
    swappiness: Option<u64>,
) -> Result<Tunables, KernelError> {
    let result = write_and_check(kernel, before, policy, swappiness);
    if result.is_err() {
        if let Ok(previous) = before.policy() {
            // After a failed step the kernel may hold neither: plan from what it holds now.
            // Swappiness goes back only if it was to change (only then was it read).
            let old_swappiness = swappiness.map(|_| before.swappiness);
            let mut current = *before;
            let undo = kernel
                .read_knobs(&POLICY_KNOBS, &mut current)
                .and_then(|()| match old_swappiness {
                    Some(_) => kernel.read_knobs(&[Knob::Swappiness], &mut current),
                    None => Ok(()),
                })
                .and_then(|()| write_and_check(kernel, &current, &previous, old_swappiness));
            if let Err(e) = undo {
                warn!("could not put back {previous} after a failed write: {e}");
            }
        }
    }
    result
}

fn write_and_check<K: Kernel + ?Sized>(
    kernel: &K,
    current: &Tunables,
    policy: &Policy,
    swappiness: Option<u64>,
) -> Result<Tunables, KernelError> {
    for (knob, value) in write_plan(current, policy) {
        kernel.write_knob(knob, value)?;
    }
    if let Some(value) = swappiness.filter(|&s| s != current.swappiness) {
        kernel.write_knob(Knob::Swappiness, value)?;
    }
    let mut after = *current;
    kernel.read_knobs(&POLICY_KNOBS, &mut after)?;
    if swappiness.is_some() {
        kernel.read_knobs(&[Knob::Swappiness], &mut after)?;
    }
    let mut expected = current.with_policy(policy);
    if let Some(value) = swappiness {
        expected.swappiness = value;
    }
    let checks = [
        (
            Knob::OvercommitMemory,
            u64::from(expected.overcommit_memory.number()),
            u64::from(after.overcommit_memory.number()),
        ),
        (
            Knob::OvercommitRatio,
            expected.overcommit_ratio as u64,
            after.overcommit_ratio as u64,
        ),
        (
            Knob::OvercommitKbytes,
            expected.overcommit_kbytes,
            after.overcommit_kbytes,
        ),
        (Knob::Swappiness, expected.swappiness, after.swappiness),
    ];
    for (knob, want, found) in checks {
        if want != found {
            return Err(KernelError::ReadBack {
                knob: knob.sysctl_key(),
                expected: want.to_string(),
                found: found.to_string(),
            });
        }
    }
    Ok(after)
}

/// The guard, then the write: what `overcommitctl set` does without a daemon.
pub fn guarded_write<K: Kernel + ?Sized>(
    kernel: &K,
    policy: &Policy,
    swappiness: Option<u64>,
    margin: u64,
    force: bool,
) -> Result<(Tunables, Tunables), ChangeError> {
    let node = kernel.node()?;
    if let Some(risk) = guard(&node, policy, margin, force)? {
        warn!("lockout guard overridden with --force: {risk}");
    }
    Ok(write_policy(kernel, policy, swappiness)?)
}

/// A kernel in memory whose reads and writes can be made to fail, for the tests of the
/// daemon's engine and of this module.
#[cfg(test)]
pub(crate) mod testing {
    use std::cell::{Cell, RefCell};
    use std::io;

    use super::*;
    use crate::model::{Mode, Node};

    /// What the fake kernel does on its next calls.
    #[derive(Debug, Default)]
    pub struct Faults {
        /// Fail this many reads (of tunables or the node) from now.
        pub reads: Cell<u32>,
        /// Fail this many knob writes from now.
        pub writes: Cell<u32>,
        /// Fail writes of this knob only (every time while set).
        pub knob: Cell<Option<Knob>>,
        /// The error the failures carry.
        pub errno: Cell<i32>,
    }

    pub struct FakeKernel {
        pub node: RefCell<Node>,
        pub faults: Faults,
        pub writes: Cell<u32>,
        /// Successful read calls (of knobs, memory or the node), and of memory alone.
        pub reads: Cell<u32>,
        pub memory_reads: Cell<u32>,
    }

    impl FakeKernel {
        /// A 16 GiB node with 1 GiB swap in mode heuristic, 2 GiB committed.
        pub fn new() -> FakeKernel {
            FakeKernel {
                node: RefCell::new(crate::model::testing::node(
                    16 << 30,
                    1 << 30,
                    Mode::Heuristic,
                    50,
                    0,
                    2 << 30,
                )),
                faults: Faults::default(),
                writes: Cell::new(0),
                reads: Cell::new(0),
                memory_reads: Cell::new(0),
            }
        }

        pub fn tunables(&self) -> Tunables {
            self.node.borrow().tunables
        }

        pub fn policy(&self) -> Policy {
            self.tunables().policy().unwrap()
        }

        fn fail(counter: &Cell<u32>, errno: i32) -> Option<io::Error> {
            let left = counter.get();
            (left > 0).then(|| {
                counter.set(left - 1);
                io::Error::from_raw_os_error(if errno == 0 { libc::EIO } else { errno })
            })
        }
    }

    impl FakeKernel {
        /// One read, failing while `faults.reads` says so.
        fn read(&self) -> Result<std::cell::Ref<'_, Node>, KernelError> {
            if let Some(source) = FakeKernel::fail(&self.faults.reads, self.faults.errno.get()) {
                return Err(KernelError::Read {
                    path: "/fake/meminfo".into(),
                    source,
                });
            }
            self.reads.set(self.reads.get() + 1);
            Ok(self.node.borrow())
        }
    }

    impl Kernel for FakeKernel {
        fn read_knobs(&self, knobs: &[Knob], into: &mut Tunables) -> Result<(), KernelError> {
            let node = self.read()?;
            let t = &node.tunables;
            for knob in knobs {
                match knob {
                    Knob::OvercommitMemory => into.overcommit_memory = t.overcommit_memory,
                    Knob::OvercommitRatio => into.overcommit_ratio = t.overcommit_ratio,
                    Knob::OvercommitKbytes => into.overcommit_kbytes = t.overcommit_kbytes,
                    Knob::AdminReserveKbytes => into.admin_reserve_kbytes = t.admin_reserve_kbytes,
                    Knob::UserReserveKbytes => into.user_reserve_kbytes = t.user_reserve_kbytes,
                    Knob::MaxMapCount => into.max_map_count = t.max_map_count,
                    Knob::Swappiness => into.swappiness = t.swappiness,
                    Knob::NrHugepages => into.nr_hugepages = t.nr_hugepages,
                }
            }
            Ok(())
        }

        fn read_memory(&self) -> Result<crate::model::Memory, KernelError> {
            let memory = self.read()?.memory;
            self.memory_reads.set(self.memory_reads.get() + 1);
            Ok(memory)
        }

        fn node(&self) -> Result<Node, KernelError> {
            Ok(self.read()?.clone())
        }

        fn write_knob(&self, knob: Knob, value: u64) -> Result<(), KernelError> {
            let error = |source| KernelError::Write {
                path: format!("/fake/sys/vm/{}", knob.file_name()).into(),
                value,
                source,
            };
            if self.faults.knob.get() == Some(knob) {
                return Err(error(io::Error::from_raw_os_error(libc::EIO)));
            }
            if let Some(source) = FakeKernel::fail(&self.faults.writes, self.faults.errno.get()) {
                return Err(error(source));
            }
            self.writes.set(self.writes.get() + 1);
            let mut node = self.node.borrow_mut();
            let t = &mut node.tunables;
            match knob {
                Knob::OvercommitMemory => {
                    t.overcommit_memory = Mode::from_number(value as i64)
                        .ok_or_else(|| error(io::Error::from_raw_os_error(libc::EINVAL)))?
                }
                Knob::OvercommitRatio => {
                    t.overcommit_ratio = value as i64;
                    t.overcommit_kbytes = 0;
                }
                Knob::OvercommitKbytes => {
                    t.overcommit_kbytes = value;
                    t.overcommit_ratio = 0;
                }
                Knob::Swappiness => t.swappiness = value,
                _ => return Err(error(io::Error::from_raw_os_error(libc::EPERM))),
            }
            let limit = node.computed_commit_limit_pages();
            node.memory.commit_limit = node.page_bytes(limit);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::FakeKernel;
    use super::*;
    use crate::model::{Limit, Mode};

    fn never(ratio: u32) -> Policy {
        Policy {
            mode: Mode::Never,
            limit: Limit::Ratio(ratio),
        }
    }

    #[test]
    fn writes_in_plan_order_and_reads_back() {
        let kernel = FakeKernel::new();
        let (before, after) = write_policy(&kernel, &never(80), Some(10)).unwrap();
        assert_eq!(before.overcommit_memory, Mode::Heuristic);
        assert_eq!(after.policy().unwrap(), never(80));
        assert_eq!(after.swappiness, 10);
    }

    #[test]
    fn a_failed_swappiness_write_puts_the_policy_back() {
        let kernel = FakeKernel::new();
        let old = kernel.policy();
        kernel.faults.knob.set(Some(Knob::Swappiness));
        let e = write_policy(&kernel, &never(80), Some(10)).unwrap_err();
        assert!(e.to_string().contains("swappiness"), "{e}");
        assert_eq!(kernel.policy(), old, "nothing half-applied");
    }

    #[test]
    fn a_failed_second_write_puts_the_first_back() {
        let kernel = FakeKernel::new();
        let old = kernel.policy();
        // The ratio is written first (into mode 2), then the mode: fail the mode.
        kernel.faults.knob.set(Some(Knob::OvercommitMemory));
        assert!(write_policy(&kernel, &never(80), None).is_err());
        kernel.faults.knob.set(None);
        assert_eq!(kernel.policy(), old);
    }

    #[test]
    fn the_guard_refuses_unless_forced() {
        let kernel = FakeKernel::new();
        let e = guarded_write(&kernel, &never(1), None, 64 << 20, false).unwrap_err();
        assert!(matches!(e, ChangeError::Unsafe(_)), "{e}");
        assert_eq!(kernel.writes.get(), 0);
        guarded_write(&kernel, &never(1), None, 64 << 20, true).unwrap();
        assert_eq!(kernel.policy(), never(1));
    }
}
