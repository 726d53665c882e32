//! Which release a node should run, as a pure function of the verified
//! manifest, what the node runs, what it refuses, and `now`.
//!
//! Anti-rollback lives here: a node never moves to an older version than
//! its floor (the newest version it committed) unless the signed manifest
//! sets a ceiling for its channel below what it runs.

use std::collections::BTreeSet;

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, Release, Wave};

/// A node's place in every rollout: 0 to 9,999, drawn once at random and
/// kept, so that a wave of `p` % takes the nodes below `p * 100`.
pub const POSITIONS: u16 = 10_000;

#[derive(Debug, Clone)]
pub struct NodeView<'a> {
    pub running: &'a Version,
    /// The newest version this node committed; nothing older is installed
    /// unless the signed ceiling says so.
    pub floor: &'a Version,
    pub channel: &'a str,
    pub position: u16,
    /// Versions that failed here and are never retried.
    pub bad: &'a BTreeSet<Version>,
    pub now: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Nothing to install.
    UpToDate,
    /// This release is for this node, from `at` on.
    Waiting { release: Release, at: Timestamp },
    /// Install it now (a window and a quiet BBB permitting).
    Install { release: Release, downgrade: bool },
}

/// Why a release of the manifest was passed over; shown on the Updates
/// page and in `appliance update check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Skip {
    #[error("{version} is for channel {channel}, this node follows another")]
    OtherChannel { version: Version, channel: String },
    #[error("{version} is older than this node's version floor {floor}")]
    BelowFloor { version: Version, floor: Version },
    #[error("{version} may only be installed over {min_from} or newer")]
    TooOldToUpdateFrom { version: Version, min_from: Version },
    #[error("{version} failed on this node before and is not retried")]
    MarkedBad { version: Version },
    #[error("{version} is above the channel's signed ceiling {ceiling}")]
    AboveCeiling { version: Version, ceiling: Version },
    #[error("{version}: no wave of its rollout reaches this node")]
    NotInRollout { version: Version },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub decision: Decision,
    pub skipped: Vec<Skip>,
}

pub fn plan(m: &Manifest, node: &NodeView<'_>) -> Plan {
    let mut skipped = Vec::new();
    let ceiling = m.max_version.get(node.channel);
    let downgrade_ordered = ceiling.is_some_and(|c| node.running > c);
    let mut best: Option<&Release> = None;
    for r in &m.releases {
        if r.channel != node.channel {
            skipped.push(Skip::OtherChannel {
                version: r.version.clone(),
                channel: r.channel.clone(),
            });
            continue;
        }
        if let Some(c) = ceiling
            && r.version > *c
        {
            skipped.push(Skip::AboveCeiling {
                version: r.version.clone(),
                ceiling: c.clone(),
            });
            continue;
        }
        if r.version == *node.running {
            continue;
        }
        if node.bad.contains(&r.version) {
            skipped.push(Skip::MarkedBad {
                version: r.version.clone(),
            });
            continue;
        }
        if !downgrade_ordered && r.version < *node.floor {
            skipped.push(Skip::BelowFloor {
                version: r.version.clone(),
                floor: node.floor.clone(),
            });
            continue;
        }
        if !downgrade_ordered && r.version < *node.running {
            // Older than what runs but not below the floor: an operator
            // installed something newer by hand; nothing to do.
            continue;
        }
        if let Some(min) = &r.min_from
            && node.running < min
        {
            skipped.push(Skip::TooOldToUpdateFrom {
                version: r.version.clone(),
                min_from: min.clone(),
            });
            continue;
        }
        if best.is_none_or(|b| r.version > b.version) {
            best = Some(r);
        }
    }
    let decision = match best {
        None => Decision::UpToDate,
        Some(r) => match eligible_from(&r.waves, node.position) {
            None => {
                skipped.push(Skip::NotInRollout {
                    version: r.version.clone(),
                });
                Decision::UpToDate
            }
            Some(at) if at.is_some_and(|at| at > node.now) => Decision::Waiting {
                release: r.clone(),
                at: at.expect("checked above"),
            },
            Some(_) => Decision::Install {
                release: r.clone(),
                downgrade: r.version < *node.running,
            },
        },
    };
    Plan { decision, skipped }
}

/// When a node at `position` may take a release: `Some(None)` at once (no
/// waves), `Some(Some(t))` from `t`, `None` never (outside every wave).
pub fn eligible_from(waves: &[Wave], position: u16) -> Option<Option<Timestamp>> {
    if waves.is_empty() {
        return Some(None);
    }
    waves
        .iter()
        .find(|w| u32::from(position) < u32::from(w.fleet_percent) * 100)
        .map(|w| Some(w.start))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::manifest::FORMAT;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }
    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }
    fn rel(ver: &str, channel: &str) -> Release {
        Release {
            version: v(ver),
            channel: channel.into(),
            target: format!("appliance-{ver}.tar.gz"),
            min_from: None,
            waves: vec![],
            notes: String::new(),
        }
    }

    struct Case {
        name: &'static str,
        releases: Vec<Release>,
        ceiling: Option<&'static str>,
        running: &'static str,
        floor: &'static str,
        position: u16,
        bad: &'static [&'static str],
        now: &'static str,
        want: Result<(&'static str, bool), Option<&'static str>>,
        skip: Option<&'static str>,
    }

    fn base(name: &'static str, releases: Vec<Release>) -> Case {
        Case {
            name,
            releases,
            ceiling: None,
            running: "0.2.0",
            floor: "0.2.0",
            position: 0,
            bad: &[],
            now: "2026-12-01T12:00:00Z",
            want: Err(None),
            skip: None,
        }
    }

    #[test]
    fn decisions() {
        let waves = vec![
            Wave {
                start: t("2026-12-01T00:00:00Z"),
                fleet_percent: 10,
            },
            Wave {
                start: t("2026-12-02T00:00:00Z"),
                fleet_percent: 50,
            },
        ];
        let cases = vec![
            Case {
                want: Ok(("0.3.0", false)),
                ..base(
                    "newest of the channel",
                    vec![rel("0.3.0", "stable"), rel("0.2.5", "stable"), rel("0.9.0", "beta")],
                )
            },
            Case {
                skip: Some("channel beta"),
                ..base("other channel only", vec![rel("0.9.0", "beta")])
            },
            Case {
                skip: Some("older than this node's version floor 0.2.0"),
                running: "0.2.0",
                ..base("below the floor", vec![rel("0.1.0", "stable")])
            },
            Case {
                skip: Some("version floor 0.2.5"),
                running: "0.2.0",
                floor: "0.2.5",
                ..base("floor above running (after a fall-back)", vec![rel("0.2.1", "stable")])
            },
            Case {
                skip: Some("failed on this node"),
                bad: &["0.3.0"],
                ..base("marked bad", vec![rel("0.3.0", "stable")])
            },
            Case {
                want: Ok(("0.2.5", false)),
                bad: &["0.3.0"],
                ..base(
                    "bad newest, next one taken",
                    vec![rel("0.3.0", "stable"), rel("0.2.5", "stable")],
                )
            },
            Case {
                skip: Some("only be installed over 0.2.3"),
                ..base(
                    "min_from",
                    vec![Release {
                        min_from: Some(v("0.2.3")),
                        ..rel("0.3.0", "stable")
                    }],
                )
            },
            Case {
                want: Ok(("0.2.5", false)),
                ..base(
                    "min_from: a stepping stone first",
                    vec![
                        Release {
                            min_from: Some(v("0.2.3")),
                            ..rel("0.3.0", "stable")
                        },
                        rel("0.2.5", "stable"),
                    ],
                )
            },
            Case {
                want: Ok(("0.1.5", true)),
                ceiling: Some("0.1.5"),
                ..base(
                    "signed ceiling below running: downgrade",
                    vec![rel("0.1.5", "stable"), rel("0.1.0", "stable"), rel("0.2.0", "stable")],
                )
            },
            Case {
                want: Err(None),
                ceiling: Some("0.2.0"),
                skip: Some("ceiling 0.2.0"),
                ..base("ceiling holds back newer", vec![rel("0.3.0", "stable")])
            },
            Case {
                want: Ok(("0.3.0", false)),
                position: 999,
                ..base(
                    "first wave, inside",
                    vec![Release {
                        waves: waves.clone(),
                        ..rel("0.3.0", "stable")
                    }],
                )
            },
            Case {
                want: Err(Some("2026-12-02T00:00:00Z")),
                position: 1000,
                ..base(
                    "second wave, not yet",
                    vec![Release {
                        waves: waves.clone(),
                        ..rel("0.3.0", "stable")
                    }],
                )
            },
            Case {
                want: Ok(("0.3.0", false)),
                position: 4999,
                now: "2026-12-02T00:00:00Z",
                ..base(
                    "second wave, at its start",
                    vec![Release {
                        waves: waves.clone(),
                        ..rel("0.3.0", "stable")
                    }],
                )
            },
            Case {
                skip: Some("no wave"),
                position: 5000,
                now: "2027-01-01T00:00:00Z",
                ..base(
                    "beyond the last wave",
                    vec![Release {
                        waves: waves.clone(),
                        ..rel("0.3.0", "stable")
                    }],
                )
            },
            Case {
                want: Err(None),
                ..base("running the newest", vec![rel("0.2.0", "stable")])
            },
        ];
        for c in cases {
            let m = Manifest {
                format: FORMAT,
                releases: c.releases,
                max_version: c
                    .ceiling
                    .map(|x| BTreeMap::from([("stable".to_string(), v(x))]))
                    .unwrap_or_default(),
                os: BTreeMap::new(),
            };
            let bad: BTreeSet<Version> = c.bad.iter().map(|b| v(b)).collect();
            let (running, floor) = (v(c.running), v(c.floor));
            let p = plan(
                &m,
                &NodeView {
                    running: &running,
                    floor: &floor,
                    channel: "stable",
                    position: c.position,
                    bad: &bad,
                    now: t(c.now),
                },
            );
            match (&c.want, &p.decision) {
                (Ok((ver, down)), Decision::Install { release, downgrade }) => {
                    assert_eq!(
                        (release.version.to_string().as_str(), *downgrade),
                        (*ver, *down),
                        "{}",
                        c.name
                    )
                }
                (Err(Some(at)), Decision::Waiting { at: got, .. }) => assert_eq!(got, &t(at), "{}", c.name),
                (Err(None), Decision::UpToDate) => {}
                (want, got) => panic!("{}: want {want:?}, got {got:?}", c.name),
            }
            if let Some(s) = c.skip {
                let text: Vec<String> = p.skipped.iter().map(|s| s.to_string()).collect();
                assert!(
                    text.iter().any(|x| x.contains(s)),
                    "{}: {text:?} should mention {s:?}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn waves_take_their_share_of_positions() {
        let waves = [
            Wave {
                start: t("2026-12-01T00:00:00Z"),
                fleet_percent: 1,
            },
            Wave {
                start: t("2026-12-02T00:00:00Z"),
                fleet_percent: 100,
            },
        ];
        let first = (0..POSITIONS)
            .filter(|p| eligible_from(&waves, *p) == Some(Some(waves[0].start)))
            .count();
        let all = (0..POSITIONS).filter(|p| eligible_from(&waves, *p).is_some()).count();
        assert_eq!((first, all), (100, 10_000));
    }
}
