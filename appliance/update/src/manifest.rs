//! The release manifest: which supervisor versions exist, for which
//! channel, from which version each may be installed, and when each part of
//! the fleet may take it.
//!
//! It travels as the TUF target `manifest.json`, so its bytes are covered
//! by the targets role's signatures, the snapshot and the timestamp: the
//! manifest itself carries no signature of its own. It is parsed once,
//! here, into checked types; nothing downstream sees raw JSON.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};

/// The TUF target name the manifest is published under.
pub const MANIFEST_TARGET: &str = "manifest.json";
/// The manifest format this code reads and writes.
pub const FORMAT: u32 = 1;
/// A manifest larger than this is refused before it is read.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Fields this version does not know are ignored (a newer publisher may
/// add some); a change old nodes must not misread bumps `format`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    #[serde(default)]
    pub releases: Vec<Release>,
    /// A signed ceiling per channel: nodes of that channel running a newer
    /// version move down to the newest release at or below it. This is the
    /// only way a node ever installs an older version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_version: BTreeMap<String, Version>,
    /// OS images (the root slot bundle `image/build` writes), per recipe:
    /// a lab node never takes a BBB node's OS. Nodes that predate OS
    /// updates ignore this field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub os: BTreeMap<String, Vec<Release>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: Version,
    pub channel: String,
    /// The TUF target holding the supervisor (`.tar.gz`).
    pub target: String,
    /// The oldest running version this release may be installed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_from: Option<Version>,
    /// When each share of the fleet may install it; empty means everyone,
    /// at once (what a security fix wants).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Wave>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
}

/// From `start` on, nodes whose rollout position lies below
/// `fleet_percent` may install the release. Waves are cumulative: a later
/// wave has a later start and a larger share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub start: Timestamp,
    pub fleet_percent: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON of the expected shape: {0}")]
    Shape(String),
    #[error("manifest format {found}, this node reads format {FORMAT}")]
    Format { found: u32 },
    #[error("channel name {0:?}: use 1 to 32 of a-z, 0-9 and '-'")]
    Channel(String),
    #[error("target name {0:?}: use 1 to 128 of A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.'")]
    TargetName(String),
    #[error("recipe name {0:?}: use 1 to 32 of a-z, 0-9, '.' and '-'")]
    Recipe(String),
    #[error("release {version} of channel {channel} is listed twice")]
    Duplicate { channel: String, version: Version },
    #[error("release {version}: min_from {min_from} is newer than the release itself")]
    MinFrom { version: Version, min_from: Version },
    #[error(
        "release {version}: waves must start later and reach a larger share each (1 to 100 %), wave {index} does not"
    )]
    Waves { version: Version, index: usize },
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Shape(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        out.push(b'\n');
        out
    }

    /// Everything a publisher or a node relies on, checked in one place.
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(ManifestError::Format { found: self.format });
        }
        check_releases(&self.releases)?;
        for (recipe, releases) in &self.os {
            check_recipe(recipe)?;
            check_releases(releases)?;
        }
        for channel in self.max_version.keys() {
            check_channel(channel)?;
        }
        Ok(())
    }

    /// The OS releases of one recipe, as a manifest of their own (no
    /// ceiling), so the same policy chooses among them.
    pub fn os_view(&self, recipe: &str) -> Manifest {
        Manifest {
            format: self.format,
            releases: self.os.get(recipe).cloned().unwrap_or_default(),
            max_version: BTreeMap::new(),
            os: BTreeMap::new(),
        }
    }
}

fn check_releases(releases: &[Release]) -> Result<(), ManifestError> {
    {
        let mut seen = BTreeSet::new();
        for r in releases {
            check_channel(&r.channel)?;
            check_target_name(&r.target)?;
            if !seen.insert((r.channel.as_str(), &r.version)) {
                return Err(ManifestError::Duplicate {
                    channel: r.channel.clone(),
                    version: r.version.clone(),
                });
            }
            if let Some(m) = &r.min_from
                && *m > r.version
            {
                return Err(ManifestError::MinFrom {
                    version: r.version.clone(),
                    min_from: m.clone(),
                });
            }
            let mut last: Option<&Wave> = None;
            for (index, w) in r.waves.iter().enumerate() {
                let ordered = last.is_none_or(|l| w.start > l.start && w.fleet_percent > l.fleet_percent);
                if !ordered || w.fleet_percent == 0 || w.fleet_percent > 100 {
                    return Err(ManifestError::Waves {
                        version: r.version.clone(),
                        index,
                    });
                }
                last = Some(w);
            }
        }
        Ok(())
    }
}

pub fn check_channel(c: &str) -> Result<(), ManifestError> {
    let ok = (1..=32).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ManifestError::Channel(c.to_string()))
    }
}

/// Recipe names as `recipes/NAME.toml` has them ("lab", "bbb-3.0").
pub fn check_recipe(r: &str) -> Result<(), ManifestError> {
    let ok = (1..=32).contains(&r.len())
        && !r.starts_with('.')
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ManifestError::Recipe(r.to_string()))
    }
}

/// Target names become file names on the node: no separators, no
/// traversal, nothing hidden.
pub fn check_target_name(t: &str) -> Result<(), ManifestError> {
    let ok = (1..=128).contains(&t.len())
        && !t.starts_with('.')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ManifestError::TargetName(t.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(v: &str) -> Release {
        Release {
            version: v.parse().unwrap(),
            channel: "stable".into(),
            target: format!("appliance-{v}.tar.gz"),
            min_from: None,
            waves: vec![],
            notes: String::new(),
        }
    }

    fn manifest(releases: Vec<Release>) -> Manifest {
        Manifest {
            format: FORMAT,
            releases,
            max_version: BTreeMap::new(),
            os: BTreeMap::new(),
        }
    }

    #[test]
    fn a_good_manifest_round_trips() {
        let mut r = release("0.2.0");
        r.min_from = Some("0.1.0".parse().unwrap());
        r.waves = vec![
            Wave {
                start: "2026-12-01T02:00:00Z".parse().unwrap(),
                fleet_percent: 10,
            },
            Wave {
                start: "2026-12-03T02:00:00Z".parse().unwrap(),
                fleet_percent: 100,
            },
        ];
        let m = manifest(vec![r, release("0.1.0")]);
        assert_eq!(Manifest::parse(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn what_a_publisher_can_get_wrong_is_refused_with_the_reason() {
        let wave = |s: &str, p| Wave {
            start: s.parse().unwrap(),
            fleet_percent: p,
        };
        let cases: Vec<(Manifest, &str)> = vec![
            (manifest(vec![release("0.1.0"), release("0.1.0")]), "listed twice"),
            (
                manifest(vec![Release {
                    target: "../appliance".into(),
                    ..release("0.1.0")
                }]),
                "target name",
            ),
            (
                manifest(vec![Release {
                    target: "a/b.tar.gz".into(),
                    ..release("0.1.0")
                }]),
                "target name",
            ),
            (
                manifest(vec![Release {
                    channel: "Stable".into(),
                    ..release("0.1.0")
                }]),
                "channel name",
            ),
            (
                manifest(vec![Release {
                    min_from: Some("0.3.0".parse().unwrap()),
                    ..release("0.2.0")
                }]),
                "min_from",
            ),
            (
                manifest(vec![Release {
                    waves: vec![wave("2026-12-02T00:00:00Z", 50), wave("2026-12-01T00:00:00Z", 100)],
                    ..release("0.2.0")
                }]),
                "wave 1",
            ),
            (
                manifest(vec![Release {
                    waves: vec![wave("2026-12-01T00:00:00Z", 101)],
                    ..release("0.2.0")
                }]),
                "wave 0",
            ),
            (
                manifest(vec![Release {
                    waves: vec![wave("2026-12-01T00:00:00Z", 50), wave("2026-12-02T00:00:00Z", 50)],
                    ..release("0.2.0")
                }]),
                "wave 1",
            ),
            (
                Manifest {
                    format: 2,
                    ..manifest(vec![])
                },
                "format 2",
            ),
        ];
        for (m, want) in cases {
            let e = Manifest::parse(&m.to_json()).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
        // A newer publisher's extra fields are ignored, not fatal: the
        // fleet must still be able to receive the release that fixes it.
        let m = Manifest::parse(br#"{"format":1,"releases":[],"surprise":1}"#).unwrap();
        assert!(m.releases.is_empty());
        let e = Manifest::parse(br#"{"format":1,"releases":[{"version":"one","channel":"stable","target":"a"}]}"#)
            .unwrap_err();
        assert!(matches!(e, ManifestError::Shape(_)), "{e}");
    }
}
