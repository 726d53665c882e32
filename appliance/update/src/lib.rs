//! Signed updates of the supervisor.
//!
//! - `manifest`: the release manifest (a TUF target), parsed into checked
//!   types.
//! - `policy`: which release a node should run (channel, version floor,
//!   signed ceiling, rollout waves, versions marked bad); pure.
//! - `window`: the daily maintenance window in the node's time zone; pure.
//! - `repo`: the node's side of TUF, through `tough`: the trusted metadata
//!   kept across restarts, a refresh that verifies everything and commits
//!   only what verified.
//! - `os`: OS updates: the root slot written to the slot not running, its
//!   boot entry with tries, what a boot finds.
//! - `publish`: global ops's side: keys, root, releases, timestamps,
//!   root rotation, written with `tough`'s editor.
//!
//! Nothing here trusts a byte before TUF has vouched for it: target
//! lengths and hashes come from signed targets metadata, and a target is
//! used only after its full length and SHA-256 matched.

pub mod download;
pub mod install;
pub mod manifest;
pub mod os;
pub mod policy;
pub mod publish;
pub mod repo;
pub mod transport;
pub mod updater;
pub mod window;

use tough::schema::RoleType;

/// Why an update check or install did not go ahead. The kinds are what a
/// test or the Updates page tells apart; the text is for people.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{role} metadata has expired (a freeze attack, or a repository nobody re-signed)")]
    Expired { role: String },
    #[error("{role} metadata is not signed by enough trusted keys: {detail}")]
    Signature { role: String, detail: String },
    #[error("{role} metadata is older than what this node already trusts (rollback): {detail}")]
    Rollback { role: String, detail: String },
    #[error("metadata does not match what the signed metadata above it lists: {0}")]
    Mismatch(String),
    #[error("more data than the signed metadata allows: {0}")]
    TooLarge(String),
    #[error("target {name}: {detail}")]
    Target { name: String, detail: String },
    #[error("unsafe target name {0:?}")]
    UnsafeName(String),
    #[error("the release manifest: {0}")]
    Manifest(#[from] manifest::ManifestError),
    #[error("the repository cannot be reached: {0}")]
    Unreachable(String),
    #[error("the system clock went back before a time this node already saw: {0}")]
    Clock(String),
    #[error("the trusted root this node ships with cannot be used: {0}")]
    TrustedRoot(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the repository: {0}")]
    Repository(String),
    #[error("another update is under way ({0} is locked); try again when it is done")]
    Busy(String),
}

impl UpdateError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpdateError {
        let what = what.into();
        move |source| UpdateError::Io { what, source }
    }

    /// A short stable name of the kind, for metrics labels and JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            UpdateError::Expired { .. } => "expired",
            UpdateError::Signature { .. } => "signature",
            UpdateError::Rollback { .. } => "rollback",
            UpdateError::Mismatch(_) => "mismatch",
            UpdateError::TooLarge(_) => "too_large",
            UpdateError::Target { .. } => "target",
            UpdateError::UnsafeName(_) => "unsafe_name",
            UpdateError::Manifest(_) => "manifest",
            UpdateError::Unreachable(_) => "unreachable",
            UpdateError::Clock(_) => "clock",
            UpdateError::TrustedRoot(_) => "trusted_root",
            UpdateError::Io { .. } => "io",
            UpdateError::Repository(_) => "repository",
            UpdateError::Busy(_) => "busy",
        }
    }
}

fn role_name(r: RoleType) -> String {
    r.to_string()
}

impl From<tough::schema::Error> for UpdateError {
    fn from(e: tough::schema::Error) -> UpdateError {
        UpdateError::Repository(e.to_string())
    }
}

/// tough's errors, sorted into the kinds above once, here.
impl From<tough::error::Error> for UpdateError {
    fn from(e: tough::error::Error) -> UpdateError {
        use tough::error::Error as E;
        let detail = e.to_string();
        // A hash or size check that fails while streaming reaches us
        // wrapped in a transport error; what counts is the check.
        if let E::Transport { source, .. } = &e {
            let mut inner: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(source);
            while let Some(err) = inner {
                match err.downcast_ref::<E>() {
                    Some(E::HashMismatch { .. }) => return UpdateError::Mismatch(detail),
                    Some(E::MaxSizeExceeded { .. }) => return UpdateError::TooLarge(detail),
                    _ => inner = err.source(),
                }
            }
        }
        match e {
            E::ExpiredMetadata { role, .. } => UpdateError::Expired { role: role_name(role) },
            E::VerifyMetadata { role, source, .. } => UpdateError::Signature {
                role: role_name(role),
                detail: source.to_string(),
            },
            E::VerifyRoleMetadata { role, source, .. } => UpdateError::Signature {
                role,
                detail: source.to_string(),
            },
            E::VerifyTrustedMetadata { .. } | E::ParseTrustedMetadata { .. } => UpdateError::TrustedRoot(detail),
            E::OlderMetadata { role, .. } => UpdateError::Rollback {
                role: role_name(role),
                detail,
            },
            E::OlderSnapshotInTimestamp { .. } => UpdateError::Rollback {
                role: "timestamp".into(),
                detail,
            },
            E::SnapshotRoleRollback { .. } | E::SnapshotRoleMissing { .. } => UpdateError::Rollback {
                role: "snapshot".into(),
                detail,
            },
            E::HashMismatch { .. } | E::VersionMismatch { .. } | E::MetaMissing { .. } => UpdateError::Mismatch(detail),
            E::MaxSizeExceeded { .. } | E::MaxUpdatesExceeded { .. } => UpdateError::TooLarge(detail),
            E::Transport { .. } => UpdateError::Unreachable(detail),
            E::SystemTimeSteppedBackward { .. } => UpdateError::Clock(detail),
            E::UnsafeTargetNameDotDot { .. }
            | E::UnsafeTargetNameEmpty { .. }
            | E::UnsafeTargetNameSlash { .. }
            | E::TargetNameResolve { .. }
            | E::TargetNameComponentsEmpty { .. }
            | E::TargetNameRootMissing { .. }
            | E::InvalidTargetName { .. } => UpdateError::UnsafeName(detail),
            _ => UpdateError::Repository(detail),
        }
    }
}
