//! Leases: temporary policies for jobs, and the effective policy they make together with the
//! baseline. Pure: the daemon owns the process watching and the kernel writes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{Mode, Node, Policy};

/// The process whose exit ends a lease: a pid is only an identity together with its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: i32,
    /// Clock ticks after boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
}

/// A granted lease, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// 128 random bits, hex: unguessable.
    pub id: String,
    /// Whose lease it is (counted against their rule's max_leases; they may release it).
    pub owner_uid: u32,
    /// The uid that asked for it, when not the owner (root's `for_uid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_uid: Option<u32>,
    pub requester_pid: i32,
    pub requester_comm: String,
    pub policy: Policy,
    pub holder: Option<Holder>,
    pub tag: Option<String>,
    pub reason: Option<String>,
    /// Unix seconds, for people.
    pub granted_at: u64,
    /// CLOCK_BOOTTIME at which it ends (does not jump with the wall clock; counts suspend).
    pub expires: Duration,
    /// Unix seconds, for people.
    pub expires_at: u64,
}

/// A new unguessable lease id.
pub fn new_lease_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The most permissive of the baseline and the leases: never < heuristic < always, and within
/// never the larger CommitLimit. The ratio/kbytes pair stays the baseline's unless a mode-never
/// policy wins, so that a lease for `always` does not change the strict limit behind it.
pub fn effective_policy<'a>(
    node: &Node,
    baseline: &Policy,
    leases: impl IntoIterator<Item = &'a Policy>,
) -> Policy {
    let winner = leases.into_iter().fold(*baseline, |best, candidate| {
        if node.compare_permissiveness(candidate, &best).is_gt() {
            *candidate
        } else {
            best
        }
    });
    if winner.mode == Mode::Never {
        winner
    } else {
        Policy {
            mode: winner.mode,
            limit: baseline.limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Limit;

    fn node() -> Node {
        crate::model::testing::node(16 << 30, 1 << 30, Mode::Heuristic, 50, 0, 0)
    }

    fn p(mode: Mode, limit: Limit) -> Policy {
        Policy { mode, limit }
    }

    #[test]
    fn no_leases_means_the_baseline() {
        let base = p(Mode::Never, Limit::Ratio(80));
        assert_eq!(effective_policy(&node(), &base, []), base);
    }

    #[test]
    fn the_most_permissive_wins_and_keeps_the_baselines_limit() {
        let base = p(Mode::Never, Limit::Ratio(80));
        let always = p(Mode::Always, Limit::Ratio(50));
        let heuristic = p(Mode::Heuristic, Limit::Ratio(50));
        assert_eq!(
            effective_policy(&node(), &base, [&heuristic, &always]),
            p(Mode::Always, Limit::Ratio(80))
        );
        assert_eq!(
            effective_policy(&node(), &base, [&heuristic]),
            p(Mode::Heuristic, Limit::Ratio(80))
        );
    }

    #[test]
    fn within_never_the_larger_commit_limit_wins() {
        let base = p(Mode::Never, Limit::Ratio(50));
        let ratio90 = p(Mode::Never, Limit::Ratio(90));
        let kbytes = p(Mode::Never, Limit::Kbytes(20 << 20));
        assert_eq!(effective_policy(&node(), &base, [&ratio90]), ratio90);
        assert_eq!(
            effective_policy(&node(), &base, [&ratio90, &kbytes]),
            kbytes
        );
        let lower = p(Mode::Never, Limit::Ratio(10));
        assert_eq!(
            effective_policy(&node(), &base, [&lower]),
            base,
            "a stricter lease changes nothing"
        );
        let heuristic_base = p(Mode::Heuristic, Limit::Ratio(50));
        assert_eq!(
            effective_policy(&node(), &heuristic_base, [&ratio90]),
            heuristic_base
        );
    }

    #[test]
    fn lease_ids_are_random_128_bit_hex() {
        let a = new_lease_id().unwrap();
        let b = new_lease_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
