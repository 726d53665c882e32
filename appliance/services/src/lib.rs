//! Keeping a node's services healthy: the recipe format, health checks,
//! the restart policy (pure, table-tested), and the systemd backend over
//! D-Bus.

use std::path::PathBuf;

pub mod bbb_client;
pub mod checks;
pub mod policy;
pub mod recipe;
pub mod runtime;
pub mod systemd;

pub use recipe::{CheckKind, CheckSpec, PolicyConfig, Recipe, ServiceSpec};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {}{what}", path.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Recipe { path: PathBuf, key: String, what: String },
}
