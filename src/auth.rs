//! Who may do what. Identity comes from the kernel (SO_PEERCRED, SO_PEERGROUPS), never from
//! the message; root may do everything; others lease per the `[[access]]` rules.

use std::time::Duration;

use crate::config::{AccessRule, Config, Principal};
use crate::model::{Limit, Mode};

/// The process at the other end of a connection, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups at connect time.
    pub groups: Vec<u32>,
}

impl Peer {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// What a lease asks for, as far as authorization cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAsk {
    pub mode: Mode,
    /// The limit the lease names, if any (only mode never has one that matters).
    pub limit: Option<Limit>,
    pub ttl: Option<Duration>,
    /// A TTL above the rule's max_ttl is shortened to it instead of refused.
    pub clamp_ttl: bool,
}

/// Why a lease was refused. `TooMany` is a limit, the others a denial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("uid {uid} is not in any [[access]] rule of the daemon's configuration")]
    NoRule { uid: u32 },
    #[error("mode {mode} is not allowed for uid {uid} (allowed: {allowed})")]
    Mode {
        uid: u32,
        mode: Mode,
        allowed: String,
    },
    #[error("ratio {asked} is above this rule's max_ratio {max}")]
    Ratio { asked: u32, max: u32 },
    #[error("kbytes {asked} is above this rule's max_kbytes ({max})")]
    Kbytes { asked: u64, max: String },
    #[error("ttl {} is above this rule's max_ttl {}", humantime::format_duration(*asked), humantime::format_duration(*max))]
    Ttl { asked: Duration, max: Duration },
    #[error("uid {uid} already has {live} live lease(s) (max_leases {max})")]
    TooMany { uid: u32, live: usize, max: u32 },
    #[error("only root may {0}")]
    RootOnly(&'static str),
    #[error("uid {uid} is not a user of this node (NSS does not know it)")]
    UnknownUser { uid: u32 },
}

/// The user `uid` as a peer would be: primary group and supplementary groups from NSS (what
/// the user's own processes would carry after login). For root's leases on behalf of a job's
/// user, judged by that user's rule.
pub fn user_as_peer(uid: u32, pid: i32) -> Result<Peer, Denial> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .ok_or(Denial::UnknownUser { uid })?;
    let name =
        std::ffi::CString::new(user.name.as_bytes()).map_err(|_| Denial::UnknownUser { uid })?;
    let groups = nix::unistd::getgrouplist(&name, user.gid)
        .map_err(|_| Denial::UnknownUser { uid })?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    Ok(Peer {
        pid,
        uid,
        gid: user.gid.as_raw(),
        groups,
    })
}

/// An access rule with names resolved to numbers.
#[derive(Debug, Clone)]
struct ResolvedRule {
    uids: Vec<u32>,
    gids: Vec<u32>,
    rule: AccessRule,
}

/// The access rules, ready to answer.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    rules: Vec<ResolvedRule>,
}

impl Authorizer {
    /// Resolves user and group names through NSS. Names that do not resolve are returned as
    /// warnings and left out (a directory service may be down; a reload retries).
    pub fn new(config: &Config) -> (Authorizer, Vec<String>) {
        let mut warnings = Vec::new();
        let mut rules = Vec::new();
        for rule in &config.access {
            let uids = rule
                .users
                .iter()
                .filter_map(|p| match p {
                    Principal::Id(id) => Some(*id),
                    Principal::Name(name) => match nix::unistd::User::from_name(name) {
                        Ok(Some(user)) => Some(user.uid.as_raw()),
                        _ => {
                            warnings.push(format!(
                                "[[access]] user `{name}` does not resolve; it is left out"
                            ));
                            None
                        }
                    },
                })
                .collect();
            let gids = rule
                .groups
                .iter()
                .filter_map(|p| match p {
                    Principal::Id(id) => Some(*id),
                    Principal::Name(name) => match nix::unistd::Group::from_name(name) {
                        Ok(Some(group)) => Some(group.gid.as_raw()),
                        _ => {
                            warnings.push(format!(
                                "[[access]] group `{name}` does not resolve; it is left out"
                            ));
                            None
                        }
                    },
                })
                .collect();
            rules.push(ResolvedRule {
                uids,
                gids,
                rule: rule.clone(),
            });
        }
        (Authorizer { rules }, warnings)
    }

    /// Decides a lease: the TTL it gets, or why not. `live` is how many leases the peer holds.
    pub fn lease(
        &self,
        peer: &Peer,
        ask: &LeaseAsk,
        live: usize,
        root_default_ttl: Duration,
    ) -> Result<Duration, Denial> {
        if peer.is_root() {
            return Ok(ask.ttl.unwrap_or(root_default_ttl));
        }
        let matching: Vec<&ResolvedRule> = self
            .rules
            .iter()
            .filter(|r| r.uids.contains(&peer.uid) || r.gids.iter().any(|&g| peer.in_group(g)))
            .collect();
        let mut first_denial = None;
        for resolved in matching {
            match check_rule(&resolved.rule, peer, ask, live) {
                Ok(ttl) => return Ok(ttl),
                Err(denial) => {
                    first_denial.get_or_insert(denial);
                }
            }
        }
        Err(first_denial.unwrap_or(Denial::NoRule { uid: peer.uid }))
    }
}

fn check_rule(
    rule: &AccessRule,
    peer: &Peer,
    ask: &LeaseAsk,
    live: usize,
) -> Result<Duration, Denial> {
    if !rule.modes.contains(&ask.mode) {
        let allowed: Vec<&str> = rule.modes.iter().map(|m| m.name()).collect();
        return Err(Denial::Mode {
            uid: peer.uid,
            mode: ask.mode,
            allowed: allowed.join(", "),
        });
    }
    if ask.mode == Mode::Never {
        match ask.limit {
            Some(Limit::Ratio(r)) if r > rule.max_ratio => {
                return Err(Denial::Ratio {
                    asked: r,
                    max: rule.max_ratio,
                })
            }
            Some(Limit::Kbytes(k)) if rule.max_kbytes.is_none_or(|max| k > max) => {
                let max = rule
                    .max_kbytes
                    .map_or("none: kbytes leases are not allowed".to_string(), |m| {
                        m.to_string()
                    });
                return Err(Denial::Kbytes { asked: k, max });
            }
            _ => {}
        }
    }
    let ttl = match ask.ttl {
        Some(ttl) if ttl > rule.max_ttl && ask.clamp_ttl => rule.max_ttl,
        Some(ttl) => ttl,
        None => rule.max_ttl,
    };
    if ttl > rule.max_ttl {
        return Err(Denial::Ttl {
            asked: ttl,
            max: rule.max_ttl,
        });
    }
    if live >= rule.max_leases as usize {
        return Err(Denial::TooMany {
            uid: peer.uid,
            live,
            max: rule.max_leases,
        });
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn authorizer() -> Authorizer {
        let rule = |users: Vec<Principal>, groups: Vec<Principal>, modes: Vec<Mode>| AccessRule {
            users,
            groups,
            modes,
            max_ratio: 90,
            max_kbytes: None,
            max_ttl: Duration::from_secs(3600),
            max_leases: 2,
        };
        let config = Config {
            path: "/x".into(),
            daemon: Default::default(),
            profiles: BTreeMap::new(),
            access: vec![
                rule(
                    vec![],
                    vec![Principal::Id(1000)],
                    vec![Mode::Always, Mode::Heuristic],
                ),
                rule(vec![Principal::Id(2000)], vec![], vec![Mode::Never]),
            ],
        };
        let (auth, warnings) = Authorizer::new(&config);
        assert!(warnings.is_empty());
        auth
    }

    fn peer(uid: u32, gid: u32, groups: Vec<u32>) -> Peer {
        Peer {
            pid: 1,
            uid,
            gid,
            groups,
        }
    }

    fn ask(mode: Mode, limit: Option<Limit>, ttl: Option<u64>) -> LeaseAsk {
        LeaseAsk {
            mode,
            limit,
            ttl: ttl.map(Duration::from_secs),
            clamp_ttl: false,
        }
    }

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn root_may_do_everything_with_the_default_ttl() {
        let a = authorizer();
        assert_eq!(
            a.lease(&peer(0, 0, vec![]), &ask(Mode::Always, None, None), 99, DAY),
            Ok(DAY)
        );
    }

    #[test]
    fn group_members_get_their_rule_by_primary_or_supplementary_group() {
        let a = authorizer();
        assert_eq!(
            a.lease(
                &peer(1500, 1000, vec![]),
                &ask(Mode::Always, None, None),
                0,
                DAY
            ),
            Ok(Duration::from_secs(3600))
        );
        assert_eq!(
            a.lease(
                &peer(1500, 100, vec![5, 1000]),
                &ask(Mode::Always, None, Some(60)),
                0,
                DAY
            ),
            Ok(Duration::from_secs(60))
        );
    }

    #[test]
    fn others_are_denied_with_the_reason() {
        let a = authorizer();
        assert_eq!(
            a.lease(
                &peer(1500, 100, vec![]),
                &ask(Mode::Always, None, None),
                0,
                DAY
            ),
            Err(Denial::NoRule { uid: 1500 })
        );
        let e = a
            .lease(
                &peer(1500, 1000, vec![]),
                &ask(Mode::Never, Some(Limit::Ratio(50)), None),
                0,
                DAY,
            )
            .unwrap_err();
        assert!(matches!(e, Denial::Mode { .. }), "{e}");
        assert!(e.to_string().contains("always, heuristic"));
        assert!(matches!(
            a.lease(
                &peer(1500, 1000, vec![]),
                &ask(Mode::Always, None, Some(7200)),
                0,
                DAY
            ),
            Err(Denial::Ttl { .. })
        ));
        assert!(matches!(
            a.lease(
                &peer(1500, 1000, vec![]),
                &ask(Mode::Always, None, None),
                2,
                DAY
            ),
            Err(Denial::TooMany {
                live: 2,
                max: 2,
                ..
            })
        ));
        assert!(matches!(
            a.lease(
                &peer(2000, 2000, vec![]),
                &ask(Mode::Never, Some(Limit::Ratio(95)), None),
                0,
                DAY
            ),
            Err(Denial::Ratio { asked: 95, max: 90 })
        ));
        assert!(matches!(
            a.lease(
                &peer(2000, 2000, vec![]),
                &ask(Mode::Never, Some(Limit::Kbytes(5)), None),
                0,
                DAY
            ),
            Err(Denial::Kbytes { .. })
        ));
        assert!(a
            .lease(
                &peer(2000, 2000, vec![]),
                &ask(Mode::Never, Some(Limit::Ratio(90)), None),
                0,
                DAY
            )
            .is_ok());
    }

    #[test]
    fn a_clamped_ttl_is_shortened_to_the_rule_not_refused() {
        let a = authorizer();
        let long = LeaseAsk {
            clamp_ttl: true,
            ..ask(Mode::Always, None, Some(7 * 86400))
        };
        assert_eq!(
            a.lease(&peer(1500, 1000, vec![]), &long, 0, DAY),
            Ok(Duration::from_secs(3600))
        );
        let short = LeaseAsk {
            clamp_ttl: true,
            ..ask(Mode::Always, None, Some(60))
        };
        assert_eq!(
            a.lease(&peer(1500, 1000, vec![]), &short, 0, DAY),
            Ok(Duration::from_secs(60))
        );
        // The other limits still refuse.
        assert!(matches!(
            a.lease(&peer(1500, 1000, vec![]), &long, 2, DAY),
            Err(Denial::TooMany { .. })
        ));
        assert_eq!(
            a.lease(&peer(1500, 100, vec![]), &long, 0, DAY),
            Err(Denial::NoRule { uid: 1500 })
        );
    }

    #[test]
    fn a_user_as_a_peer_carries_the_groups_nss_gives() {
        let root = user_as_peer(0, 7).unwrap();
        assert_eq!((root.uid, root.gid, root.pid), (0, 0, 7));
        assert!(root.groups.contains(&0));
        assert_eq!(
            user_as_peer(4_000_000_000, 1),
            Err(Denial::UnknownUser { uid: 4_000_000_000 })
        );
    }
}
