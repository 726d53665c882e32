//! The node's member organisations, kept in `members.json` in the state
//! dir (mode 0600: it holds their API secrets, which the gateway needs in
//! clear to check BBB checksums). One owner: [`Store`] changes them only
//! through [`Store::act`], which writes the file before the change takes
//! effect, so a change the caller was told about survives a crash.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use appliance_api::ActionError;
use appliance_members::{Action, Members, Outcome};

use crate::state::lock;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a members file ({source}); fix or move it away, nothing was changed")]
    Parse { path: PathBuf, source: serde_json::Error },
}

#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    current: Mutex<Arc<Members>>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("members.json")
}

/// Reads the members file; no file is no members.
pub fn load(state_dir: &Path) -> Result<Members, StoreError> {
    let path = path(state_dir);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| StoreError::Parse { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Members::default()),
        Err(source) => Err(StoreError::Read { path, source }),
    }
}

/// 48 hex digits from the kernel's randomness: as long as BBB's own
/// secrets, and safe in a URL or a config file.
pub fn new_secret() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).expect("the kernel's random source is available");
    hex::encode(b)
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            path: path(state_dir),
            current: Mutex::new(Arc::new(load(state_dir)?)),
        })
    }

    pub fn current(&self) -> Arc<Members> {
        lock(&self.current).clone()
    }

    pub fn act(&self, action: &Action, now: i64) -> Result<Outcome, ActionError> {
        // Held through the write, so two changes never interleave.
        let mut cur = lock(&self.current);
        let mut next = (**cur).clone();
        let out = next.apply(action, new_secret, now).map_err(|e| match e {
            appliance_members::Error::NoMember(_) | appliance_members::Error::NoSecret { .. } => {
                ActionError::NotFound(e.to_string())
            }
            appliance_members::Error::Exists(_) => ActionError::Conflict(e.to_string()),
            _ => ActionError::Invalid(e.to_string()),
        })?;
        let text = serde_json::to_vec_pretty(&next).map_err(|e| ActionError::Failed(e.to_string()))?;
        appliance_certs::write_atomic(&self.path, &text, 0o600)
            .map_err(|e| ActionError::Failed(format!("nothing was changed: {e}")))?;
        *cur = Arc::new(next);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn changes_are_on_disk_before_they_count_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(s.current().is_empty());
        let out = s
            .act(
                &Action::Add {
                    slug: "coop-a".into(),
                    name: "Co-op A".into(),
                    limits: Default::default(),
                },
                100,
            )
            .unwrap();
        let secret = out.secret.unwrap();
        assert_eq!(secret.len(), 48);
        let mode = std::fs::metadata(path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.current().members[0].secrets[0].value, secret);
        assert!(matches!(
            s.act(&Action::Remove { slug: "nobody".into() }, 1),
            Err(ActionError::NotFound(_))
        ));
        // A file that cannot be written: refused, nothing changed.
        std::fs::remove_file(path(dir.path())).unwrap();
        std::fs::create_dir(path(dir.path())).unwrap();
        let r = s.act(&Action::Remove { slug: "coop-a".into() }, 2);
        assert!(matches!(r, Err(ActionError::Failed(_))), "{r:?}");
        assert_eq!(s.current().members.len(), 1);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"{\"members\": [").unwrap();
        let e = Store::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("members.json is not a members file"), "{e}");
    }
}
