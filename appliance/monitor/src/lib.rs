//! Hardware monitoring for the city node: what the box's kernel says about
//! CPU, memory, disks, network and temperatures, which hardware model it is,
//! when that deserves an alert, and the history behind the graphs.
//!
//! Parsing and policy ([`procfs`], [`counter`], [`alerts`], [`health`],
//! [`history`], [`profile`] matching) are pure; the thin readers in
//! [`sysfs`] and [`collector`] take their roots from the caller, so tests
//! feed recorded trees. This crate knows nothing about HTTP, systemd or
//! the config file.

use std::path::PathBuf;

pub mod alerts;
pub mod collector;
pub mod counter;
pub mod health;
pub mod history;
pub mod procfs;
pub mod profile;
pub mod sysfs;

pub use alerts::Severity;
pub use collector::{Collector, Roots, Snapshot, StatVfs};
pub use health::{Alert, AlertConfig, Alerts, Health};
pub use history::History;
pub use profile::{Detection, HwProfile};

/// A kernel file whose contents did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {what}")]
pub struct ParseError {
    pub file: &'static str,
    pub what: String,
}

impl ParseError {
    pub fn new(file: &'static str, what: impl Into<String>) -> ParseError {
        ParseError {
            file,
            what: what.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {}{what}", path.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Profile { path: PathBuf, key: String, what: String },
    #[error("no hardware profile named {0:?}")]
    UnknownProfile(String),
    #[error("no hardware profile matches this machine and there is no fallback profile (one with an empty [match])")]
    NoProfileMatched,
}

/// Durations in config files as people write them: "1s", "500ms", "5m".
pub mod serde_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. \"1s\", \"500ms\", \"5m\""
            ))
        })
    }
}
