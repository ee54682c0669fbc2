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

/// A lease's id: 128 random bits, unguessable; written as 32 lower-case hex digits. Kept as a
/// number, so that the lease table, its deadlines and the journal hold no string per id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(u128);

impl LeaseId {
    /// A new unguessable id, from the kernel's random pool. Drawn 32 ids' worth at a time (one
    /// getrandom(2) per 32 grants) and never handed out twice.
    pub fn new() -> Result<LeaseId, getrandom::Error> {
        thread_local! {
            static POOL: std::cell::RefCell<(usize, [u8; 512])> =
                const { std::cell::RefCell::new((512, [0; 512])) };
        }
        POOL.with_borrow_mut(|(used, bytes)| {
            if *used == bytes.len() {
                getrandom::fill(bytes)?;
                *used = 0;
            }
            let mut id = [0u8; 16];
            id.copy_from_slice(&bytes[*used..*used + 16]);
            // Wiped once taken: what is left in memory is only ids not yet handed out.
            bytes[*used..*used + 16].fill(0);
            *used += 16;
            Ok(LeaseId(u128::from_be_bytes(id)))
        })
    }
}

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 32];
        for (i, digit) in text.iter_mut().enumerate() {
            *digit = HEX[(self.0 >> (124 - 4 * i) & 15) as usize];
        }
        // ASCII hex digits.
        f.write_str(std::str::from_utf8(&text).map_err(|_| std::fmt::Error)?)
    }
}

impl std::fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for LeaseId {
    type Err = ();

    /// Exactly 32 hex digits (either case).
    fn from_str(text: &str) -> Result<LeaseId, ()> {
        if text.len() != 32 {
            return Err(());
        }
        text.bytes()
            .try_fold(0u128, |id, b| {
                let digit = (b as char).to_digit(16).ok_or(())?;
                Ok(id << 4 | u128::from(digit))
            })
            .map(LeaseId)
    }
}

impl Serialize for LeaseId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LeaseId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<LeaseId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse()
            .map_err(|()| serde::de::Error::custom("a lease id is 32 hex digits"))
    }
}

/// A granted lease, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// 128 random bits (hex on the wire): unguessable.
    pub id: LeaseId,
    /// Whose lease it is (counted against their rule's max_leases; they may release it).
    pub owner_uid: u32,
    /// The owner's user name (or uid), looked up once, at the grant.
    #[serde(default)]
    pub owner: String,
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
        let a = LeaseId::new().unwrap();
        let b = LeaseId::new().unwrap();
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert!(text.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(text.parse::<LeaseId>(), Ok(a));
        assert_eq!(text.to_uppercase().parse::<LeaseId>(), Ok(a));
        assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{text}\""));
        assert_eq!(
            serde_json::from_str::<LeaseId>(&format!("\"{text}\"")).unwrap(),
            a
        );
        for bad in [
            "",
            "0",
            &text[1..],
            &format!("{text}0"),
            &format!("+{}", &text[1..]),
        ] {
            assert!(bad.parse::<LeaseId>().is_err(), "{bad:?}");
        }
        assert_eq!(LeaseId(1).to_string(), format!("{:0>32}", "1"));
    }
}
