//! The node's side of TUF.
//!
//! tough verifies; this module decides what tough starts from and what is
//! kept. tough's own datastore writes files in place without fsync, and a
//! torn file there reads as "nothing trusted yet", which would quietly drop
//! the rollback checks after a power cut. So tough gets a scratch datastore
//! seeded from `trusted.json`, and only after a refresh verified end to end
//! (root chain, timestamp, snapshot, targets, the manifest) is the scratch
//! state written back as a new `trusted.json` (temporary file, fsync,
//! rename, fsync of the directory). A failed or interrupted refresh leaves
//! the trusted state as it was.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tough::{ExpirationEnforcement, IntoVec, Limits, RepositoryLoader, TargetName, Transport};
use url::Url;

use crate::UpdateError;
use crate::manifest::{MANIFEST_TARGET, MAX_MANIFEST_BYTES, Manifest, check_target_name};

/// The files tough keeps between runs, all small JSON documents.
const KEPT: [&str; 5] = [
    "root.json",
    "timestamp.json",
    "snapshot.json",
    "targets.json",
    "latest_known_time.json",
];

/// Metadata size limits: generous for a repository with a few hundred
/// releases and a dozen keys, small against endless data.
pub const LIMITS: Limits = Limits {
    max_root_size: 512 * 1024,
    max_targets_size: 4 * 1024 * 1024,
    max_timestamp_size: 64 * 1024,
    max_snapshot_size: 512 * 1024,
    max_root_updates: 256,
};

/// Where a repository is: two base URLs, `https://` or `file://` (a USB
/// stick holding a copy of the same repository).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub metadata: Url,
    pub targets: Url,
}

impl Source {
    /// The layout `appliance-ops release` writes: `metadata/` and
    /// `targets/` under one base.
    pub fn under(base: &Url) -> Result<Source, UpdateError> {
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let join = |p: &str| {
            base.join(p)
                .map_err(|e| UpdateError::Repository(format!("{base}{p}: {e}")))
        };
        Ok(Source {
            metadata: join("metadata/")?,
            targets: join("targets/")?,
        })
    }

    pub fn dir(dir: &Path) -> Result<Source, UpdateError> {
        let abs = std::path::absolute(dir).map_err(UpdateError::io(format!("{}", dir.display())))?;
        let url = Url::from_directory_path(&abs)
            .map_err(|()| UpdateError::Repository(format!("{} is not a usable directory", abs.display())))?;
        Source::under(&url)
    }
}

/// Whether expired metadata is refused. Only an operator installing from a
/// USB stick may say `Ignore`; signatures, hashes, lengths and the version
/// floor hold either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Enforce,
    Ignore,
}

/// A target as the signed targets metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    pub name: String,
    pub length: u64,
    #[serde(with = "hex_bytes")]
    pub sha256: [u8; 32],
    /// Where to fetch it (with consistent snapshots: `HASH.NAME`).
    pub url: Url,
}

/// What one refresh established.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    /// Every target a release of the manifest names.
    pub targets: BTreeMap<String, TargetFile>,
    pub versions: RoleVersions,
    /// The earliest expiry among the roles: after it, the next refresh
    /// must find newer metadata.
    pub expires: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleVersions {
    pub root: u64,
    pub timestamp: u64,
    pub snapshot: u64,
    pub targets: u64,
}

/// The trusted TUF state of one node, under `dir` (the state dir's
/// `update/tuf`).
#[derive(Debug, Clone)]
pub struct Trust {
    shipped_root: Vec<u8>,
    dir: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kept {
    files: BTreeMap<String, String>,
}

impl Trust {
    /// `shipped_root` is the root.json the node was built with; it is only
    /// the start of the chain: a rotated root found in the repository and
    /// verified against it is kept and used from then on.
    pub fn new(shipped_root: Vec<u8>, dir: impl Into<PathBuf>) -> Trust {
        Trust {
            shipped_root,
            dir: dir.into(),
        }
    }

    fn kept_path(&self) -> PathBuf {
        self.dir.join("trusted.json")
    }

    fn read_kept(&self) -> Result<Kept, UpdateError> {
        match std::fs::read(self.kept_path()) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                // Written only by `commit` (rename of a synced file), so a
                // damaged file is damage, not a torn write: say so rather
                // than start over and forget what was trusted.
                UpdateError::Repository(format!("{} is damaged: {e}", self.kept_path().display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Kept::default()),
            Err(e) => Err(UpdateError::Io {
                what: format!("reading {}", self.kept_path().display()),
                source: e,
            }),
        }
    }

    /// The versions this node trusts now (root version 0: none yet).
    pub fn trusted_versions(&self) -> Result<RoleVersions, UpdateError> {
        let kept = self.read_kept()?;
        let version = |f: &str| -> u64 {
            kept.files
                .get(f)
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                .and_then(|v| v["signed"]["version"].as_u64())
                .unwrap_or(0)
        };
        Ok(RoleVersions {
            root: version("root.json"),
            timestamp: version("timestamp.json"),
            snapshot: version("snapshot.json"),
            targets: version("targets.json"),
        })
    }

    /// Fetches and verifies the repository's metadata and manifest, and on
    /// success keeps the new metadata as trusted.
    pub async fn refresh<T>(&self, source: &Source, transport: T, expiry: Expiry) -> Result<Verified, UpdateError>
    where
        T: Transport + Send + Sync + 'static,
    {
        std::fs::create_dir_all(&self.dir).map_err(UpdateError::io(format!("creating {}", self.dir.display())))?;
        let kept = self.read_kept()?;
        let work = self.dir.join("work");
        match std::fs::remove_dir_all(&work) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(UpdateError::io(format!("clearing {}", work.display()))(e)),
        }
        std::fs::create_dir_all(&work).map_err(UpdateError::io(format!("creating {}", work.display())))?;
        for (name, text) in &kept.files {
            if KEPT.contains(&name.as_str()) {
                std::fs::write(work.join(name), text).map_err(UpdateError::io(format!("seeding {name}")))?;
            }
        }
        let root = kept
            .files
            .get("root.json")
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_else(|| self.shipped_root.clone());
        let enforcement = match expiry {
            Expiry::Enforce => ExpirationEnforcement::Safe,
            Expiry::Ignore => ExpirationEnforcement::Unsafe,
        };
        let repo = RepositoryLoader::new(&root, source.metadata.clone(), source.targets.clone())
            .transport(transport)
            .limits(LIMITS)
            .datastore(&work)
            .expiration_enforcement(enforcement)
            .load()
            .await?;

        let manifest_name = TargetName::new(MANIFEST_TARGET)?;
        let listed = repo
            .targets()
            .signed
            .targets
            .get(&manifest_name)
            .ok_or_else(|| UpdateError::Target {
                name: MANIFEST_TARGET.into(),
                detail: "not listed in the signed targets".into(),
            })?;
        if listed.length > MAX_MANIFEST_BYTES {
            return Err(UpdateError::TooLarge(format!(
                "{MANIFEST_TARGET} is listed at {} bytes, at most {MAX_MANIFEST_BYTES} are read",
                listed.length
            )));
        }
        let stream = repo
            .read_target(&manifest_name)
            .await?
            .ok_or_else(|| UpdateError::Target {
                name: MANIFEST_TARGET.into(),
                detail: "not in the repository".into(),
            })?;
        let bytes = stream.into_vec().await?;
        let manifest = Manifest::parse(&bytes)?;

        let consistent = repo.root().signed.consistent_snapshot;
        let mut targets = BTreeMap::new();
        // Supervisor releases and every recipe's OS releases.
        for r in manifest.releases.iter().chain(manifest.os.values().flatten()) {
            check_target_name(&r.target)?;
            let name = TargetName::new(r.target.as_str())?;
            let t = repo
                .targets()
                .signed
                .targets
                .get(&name)
                .ok_or_else(|| UpdateError::Target {
                    name: r.target.clone(),
                    detail: format!("release {} names it, the signed targets do not list it", r.version),
                })?;
            let sha256: [u8; 32] = t.hashes.sha256.as_ref().try_into().map_err(|_| UpdateError::Target {
                name: r.target.clone(),
                detail: "its sha256 is not 32 bytes".into(),
            })?;
            let file = if consistent {
                format!("{}.{}", hex::encode(sha256), r.target)
            } else {
                r.target.clone()
            };
            let url = source
                .targets
                .join(&file)
                .map_err(|e| UpdateError::UnsafeName(format!("{file}: {e}")))?;
            targets.insert(
                r.target.clone(),
                TargetFile {
                    name: r.target.clone(),
                    length: t.length,
                    sha256,
                    url,
                },
            );
        }

        let expires = [
            repo.root().signed.expires,
            repo.timestamp().signed.expires,
            repo.snapshot().signed.expires,
            repo.targets().signed.expires,
        ]
        .into_iter()
        .min()
        .expect("four roles");
        let versions = RoleVersions {
            root: repo.root().signed.version.get(),
            timestamp: repo.timestamp().signed.version.get(),
            snapshot: repo.snapshot().signed.version.get(),
            targets: repo.targets().signed.version.get(),
        };
        self.commit(&work, &repo)?;
        Ok(Verified {
            manifest,
            targets,
            versions,
            expires,
        })
    }

    /// Keeps what tough verified: the four roles as the repository object
    /// holds them (not re-read from the scratch directory, where a file
    /// could be missing), and tough's latest known time.
    fn commit(&self, work: &Path, repo: &tough::Repository) -> Result<(), UpdateError> {
        let json = |what: &str, r: Result<String, serde_json::Error>| {
            r.map_err(|e| UpdateError::Repository(format!("serializing {what}: {e}")))
        };
        let mut kept = Kept::default();
        kept.files
            .insert("root.json".into(), json("root", serde_json::to_string(repo.root()))?);
        kept.files.insert(
            "timestamp.json".into(),
            json("timestamp", serde_json::to_string(repo.timestamp()))?,
        );
        kept.files.insert(
            "snapshot.json".into(),
            json("snapshot", serde_json::to_string(repo.snapshot()))?,
        );
        kept.files.insert(
            "targets.json".into(),
            json("targets", serde_json::to_string(repo.targets()))?,
        );
        match std::fs::read_to_string(work.join("latest_known_time.json")) {
            Ok(text) => {
                kept.files.insert("latest_known_time.json".into(), text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(UpdateError::io("reading latest_known_time.json")(e)),
        }
        let bytes = serde_json::to_vec(&kept).expect("strings serialize");
        write_atomically(&self.kept_path(), &bytes)
    }

    /// One refresh or install at a time per node, whichever process (the
    /// supervisor, `appliance update`) runs it: held until dropped.
    pub fn lock(&self) -> Result<Lock, UpdateError> {
        lock_dir(&self.dir)
    }
}

/// An exclusive lock on a directory's `.lock` file, released when dropped.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

pub fn lock_dir(dir: &Path) -> Result<Lock, UpdateError> {
    std::fs::create_dir_all(dir).map_err(UpdateError::io(format!("creating {}", dir.display())))?;
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(UpdateError::io(format!("opening {}", path.display())))?;
    // Never wait: a second update while one runs is refused, not queued
    // (it would block an async worker, and the first one may take an hour).
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map(Lock)
        .map_err(|(_, e)| match e {
            nix::errno::Errno::EWOULDBLOCK => UpdateError::Busy(dir.display().to_string()),
            e => UpdateError::io(format!("locking {}", path.display()))(std::io::Error::from(e)),
        })
}

/// Temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().expect("a file in a directory");
    // A name of this process and call alone: two writers never share a
    // temporary file (the rename then decides who wins, whole either way).
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(UpdateError::io(format!("creating {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(UpdateError::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(UpdateError::io(format!("renaming to {}", path.display())))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(UpdateError::io(format!("syncing {}", dir.display())))
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("a sha256 is 32 bytes"))
    }
}
