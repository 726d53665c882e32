//! Global ops's side of the repository: keys, the root (signed on an
//! offline machine), releases, timestamps, root rotation. Everything is
//! written with tough's editor and published so that a reader (a node, a
//! CDN) never sees a half-written state: targets first, then the versioned
//! metadata, `timestamp.json` last, each file written to a temporary name,
//! synced and renamed.
//!
//! Layout of a repository directory:
//! `metadata/{N.root.json, root.json, N.targets.json, N.snapshot.json,
//! timestamp.json}` and `targets/HASH.NAME` (consistent snapshots, so
//! nothing a reader may be fetching is ever overwritten).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use tough::editor::RepositoryEditor;
use tough::editor::signed::{PathExists, SignedRole};
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::key::Key;
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Signed, Target};
use tough::{ExpirationEnforcement, FilesystemTransport, IntoVec, RepositoryLoader, TargetName};

use crate::UpdateError;
use crate::manifest::{FORMAT, MANIFEST_TARGET, Manifest, Release};
use crate::repo::{RoleVersions, Source, write_atomically};

/// How long each role's signature holds unless told otherwise. The
/// timestamp is short (a node sitting offline over a long weekend still
/// checks fine) and is re-signed by a daily cron job; `timestamp`
/// renews snapshot and targets too when they come within
/// `RENEW_BEFORE` of expiry.
pub const TIMESTAMP_LIFETIME: SignedDuration = SignedDuration::from_hours(7 * 24);
pub const SNAPSHOT_LIFETIME: SignedDuration = SignedDuration::from_hours(30 * 24);
pub const TARGETS_LIFETIME: SignedDuration = SignedDuration::from_hours(30 * 24);
pub const ROOT_LIFETIME: SignedDuration = SignedDuration::from_hours(365 * 24);
pub const RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(14 * 24);

const SPEC_VERSION: &str = "1.0.0";

/// The public half of a key as root.json lists it, kept beside the private
/// key as `NAME.pub.json` so that the offline root ceremony never needs
/// the online roles' private keys.
pub fn public_key_path(private: &Path) -> PathBuf {
    private.with_extension("pub.json")
}

/// A new Ed25519 key: `path` (PKCS#8, 0600, never overwritten) and its
/// public half. Returns the key id.
pub fn generate_key(path: &Path) -> Result<String, UpdateError> {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| UpdateError::Repository("generating a key".into()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(UpdateError::io(format!(
            "creating {} (an existing key is never overwritten)",
            path.display()
        )))?;
    std::io::Write::write_all(&mut f, pkcs8.as_ref())
        .and_then(|()| f.sync_all())
        .map_err(UpdateError::io(format!("writing {}", path.display())))?;
    let key = key_of(pkcs8.as_ref())?;
    let pub_json = serde_json::to_vec_pretty(&key).expect("keys serialize");
    write_atomically(&public_key_path(path), &pub_json)?;
    Ok(hex::encode(key.key_id()?.as_ref()))
}

fn key_of(pkcs8: &[u8]) -> Result<Key, UpdateError> {
    let pair =
        Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| UpdateError::Repository("not an Ed25519 PKCS#8 key".into()))?;
    Ok(tough::sign::Sign::tuf_key(&pair))
}

/// Reads a public key file (`NAME.pub.json`) or, given a private key,
/// derives its public half.
pub fn read_public_key(path: &Path) -> Result<Key, UpdateError> {
    let bytes = std::fs::read(path).map_err(UpdateError::io(format!("reading {}", path.display())))?;
    if let Ok(k) = serde_json::from_slice::<Key>(&bytes) {
        return Ok(k);
    }
    key_of(&bytes).map_err(|_| {
        UpdateError::Repository(format!(
            "{} is neither a public key file nor an Ed25519 key",
            path.display()
        ))
    })
}

fn sources(keys: &[PathBuf]) -> Vec<Box<dyn KeySource>> {
    keys.iter()
        .map(|p| Box::new(LocalKeySource { path: p.clone() }) as Box<dyn KeySource>)
        .collect()
}

/// Who may sign each role, and how many of them must.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    pub keys: Vec<PathBuf>,
    pub threshold: u64,
}

#[derive(Debug, Clone)]
pub struct RootSpec {
    pub root: RoleSpec,
    pub targets: RoleSpec,
    pub snapshot: RoleSpec,
    pub timestamp: RoleSpec,
    pub expires: Timestamp,
}

/// Builds and signs a root: version 1, or the successor of `previous`
/// (then signed by a threshold of the previous root's keys as well, which
/// is what lets nodes follow the rotation). `signers` are the private keys
/// at hand; the result must meet every threshold it needs, or nothing is
/// written.
pub async fn sign_root(spec: &RootSpec, previous: Option<&[u8]>, signers: &[PathBuf]) -> Result<Vec<u8>, UpdateError> {
    let prev: Option<Signed<Root>> = previous
        .map(|b| serde_json::from_slice(b).map_err(|e| UpdateError::TrustedRoot(format!("the previous root: {e}"))))
        .transpose()?;
    let version = prev.as_ref().map_or(1, |p| p.signed.version.get() + 1);
    let mut keys = HashMap::new();
    let mut roles = HashMap::new();
    for (role, rs) in [
        (RoleType::Root, &spec.root),
        (RoleType::Targets, &spec.targets),
        (RoleType::Snapshot, &spec.snapshot),
        (RoleType::Timestamp, &spec.timestamp),
    ] {
        if rs.threshold == 0 || rs.threshold > rs.keys.len() as u64 {
            return Err(UpdateError::Repository(format!(
                "{role}: threshold {} with {} keys",
                rs.threshold,
                rs.keys.len()
            )));
        }
        let mut ids = Vec::new();
        for p in &rs.keys {
            let k = read_public_key(p)?;
            let id = k.key_id()?;
            if !ids.contains(&id) {
                ids.push(id.clone());
            }
            keys.insert(id, k);
        }
        if (ids.len() as u64) < rs.threshold {
            return Err(UpdateError::Repository(format!("{role}: the same key is listed twice")));
        }
        roles.insert(
            role,
            RoleKeys {
                keyids: ids,
                threshold: NonZeroU64::new(rs.threshold).expect("checked above"),
                _extra: HashMap::new(),
            },
        );
    }
    let root = Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: NonZeroU64::new(version).expect("at least 1"),
        expires: spec.expires,
        keys,
        roles,
        _extra: HashMap::new(),
    };
    let rng = SystemRandom::new();
    let signer_sources = sources(signers);
    let mut signed = SignedRole::new(root.clone(), &KeyHolder::Root(root.clone()), &signer_sources, &rng).await?;
    if let Some(p) = &prev {
        let old = SignedRole::new(root.clone(), &KeyHolder::Root(p.signed.clone()), &signer_sources, &rng).await?;
        signed = signed.add_old_signatures(old.signed().signatures.clone())?;
        p.signed
            .verify_role(signed.signed())
            .map_err(|e| UpdateError::Signature {
                role: "root".into(),
                detail: format!("not enough of version {}'s root keys signed: {e}", p.signed.version),
            })?;
    }
    root.verify_role(signed.signed()).map_err(|e| UpdateError::Signature {
        role: "root".into(),
        detail: format!("not enough of the new root keys signed: {e}"),
    })?;
    Ok(signed.buffer().clone())
}

/// A repository directory and the online keys that sign its targets,
/// snapshot and timestamp.
#[derive(Debug, Clone)]
pub struct Publisher {
    pub dir: PathBuf,
    pub keys: Vec<PathBuf>,
}

/// What `list` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Published {
    pub manifest: Manifest,
    pub versions: RoleVersions,
    pub expires: BTreeMap<String, Timestamp>,
    pub targets: BTreeMap<String, u64>,
}

impl Publisher {
    fn metadata(&self) -> PathBuf {
        self.dir.join("metadata")
    }
    fn targets(&self) -> PathBuf {
        self.dir.join("targets")
    }

    /// Starts a repository from a root signed offline: an empty manifest,
    /// targets, snapshot and timestamp at version 1.
    pub async fn init(&self, root_json: &[u8]) -> Result<Published, UpdateError> {
        let _lock = crate::repo::lock_dir(&self.dir)?;
        if self.metadata().join("timestamp.json").exists() {
            return Err(UpdateError::Repository(format!(
                "{} already holds a repository",
                self.dir.display()
            )));
        }
        let root: Signed<Root> =
            serde_json::from_slice(root_json).map_err(|e| UpdateError::TrustedRoot(e.to_string()))?;
        root.signed.verify_role(&root).map_err(|e| UpdateError::Signature {
            role: "root".into(),
            detail: e.to_string(),
        })?;
        for d in [self.metadata(), self.targets()] {
            std::fs::create_dir_all(&d).map_err(UpdateError::io(format!("creating {}", d.display())))?;
        }
        let n = root.signed.version.get();
        write_atomically(&self.metadata().join(format!("{n}.root.json")), root_json)?;
        write_atomically(&self.metadata().join("root.json"), root_json)?;
        let empty = Manifest {
            format: FORMAT,
            releases: vec![],
            max_version: BTreeMap::new(),
            os: BTreeMap::new(),
        };
        self.write(None, &empty, None, Timestamp::now()).await?;
        self.list().await
    }

    /// Loads the published repository as a node would, from its own
    /// newest root (expiry not enforced: the publisher must be able to
    /// repair an expired repository).
    async fn load(&self) -> Result<(tough::Repository, PathBuf), UpdateError> {
        let root_path = self.metadata().join("root.json");
        let root = std::fs::read(&root_path).map_err(UpdateError::io(format!("reading {}", root_path.display())))?;
        let source = Source::dir(&self.dir)?;
        let datastore = tempdir_in(&self.dir)?;
        let repo = RepositoryLoader::new(&root, source.metadata, source.targets)
            .transport(FilesystemTransport)
            .datastore(datastore.path())
            .expiration_enforcement(ExpirationEnforcement::Unsafe)
            .load()
            .await?;
        Ok((repo, root_path))
    }

    async fn manifest_of(repo: &tough::Repository) -> Result<Manifest, UpdateError> {
        let name = TargetName::new(MANIFEST_TARGET)?;
        match repo.read_target(&name).await? {
            Some(s) => Ok(Manifest::parse(&s.into_vec().await?)?),
            None => Err(UpdateError::Target {
                name: MANIFEST_TARGET.into(),
                detail: "missing from the repository".into(),
            }),
        }
    }

    pub async fn list(&self) -> Result<Published, UpdateError> {
        let (repo, _) = self.load().await?;
        let manifest = Self::manifest_of(&repo).await?;
        let targets = repo
            .targets()
            .signed
            .targets
            .iter()
            .map(|(n, t)| (n.raw().to_string(), t.length))
            .collect();
        Ok(Published {
            manifest,
            versions: RoleVersions {
                root: repo.root().signed.version.get(),
                timestamp: repo.timestamp().signed.version.get(),
                snapshot: repo.snapshot().signed.version.get(),
                targets: repo.targets().signed.version.get(),
            },
            expires: BTreeMap::from([
                ("root".to_string(), repo.root().signed.expires),
                ("timestamp".to_string(), repo.timestamp().signed.expires),
                ("snapshot".to_string(), repo.snapshot().signed.expires),
                ("targets".to_string(), repo.targets().signed.expires),
            ]),
            targets,
        })
    }

    /// Adds a release: the tarball as a target, the manifest with the new
    /// entry (and the channel ceiling, if given), all online roles re-signed.
    pub async fn add_release(
        &self,
        release: Release,
        tarball: &Path,
        ceiling: Option<semver::Version>,
    ) -> Result<Published, UpdateError> {
        // One publish at a time (the cron job's timestamp and a release).
        let _lock = crate::repo::lock_dir(&self.dir)?;
        let (repo, _) = self.load().await?;
        let mut manifest = Self::manifest_of(&repo).await?;
        if manifest
            .releases
            .iter()
            .any(|r| r.channel == release.channel && r.version == release.version)
        {
            return Err(UpdateError::Repository(format!(
                "release {} of channel {} is already published; publish a new version instead",
                release.version, release.channel
            )));
        }
        if let Some(c) = ceiling {
            manifest.max_version.insert(release.channel.clone(), c);
        }
        let target = release.target.clone();
        manifest.releases.push(release);
        manifest.check()?;
        self.write(
            Some(repo),
            &manifest,
            Some((target, tarball.to_path_buf())),
            Timestamp::now(),
        )
        .await?;
        self.list().await
    }

    /// Sets or clears a channel's signed ceiling (a deliberate fleet
    /// downgrade when set below what the channel runs).
    /// Publishes an OS bundle (`image/build`'s `RECIPE.os.tar`) for the
    /// nodes of `recipe`, beside the supervisor releases.
    pub async fn add_os_release(
        &self,
        recipe: &str,
        release: Release,
        bundle: &Path,
    ) -> Result<Published, UpdateError> {
        let _lock = crate::repo::lock_dir(&self.dir)?;
        let (repo, _) = self.load().await?;
        let mut manifest = Self::manifest_of(&repo).await?;
        let list = manifest.os.entry(recipe.to_string()).or_default();
        if list
            .iter()
            .any(|r| r.channel == release.channel && r.version == release.version)
        {
            return Err(UpdateError::Repository(format!(
                "OS {} of recipe {recipe}, channel {} is already published; publish a new version instead",
                release.version, release.channel
            )));
        }
        let target = release.target.clone();
        list.push(release);
        manifest.check()?;
        self.write(
            Some(repo),
            &manifest,
            Some((target, bundle.to_path_buf())),
            Timestamp::now(),
        )
        .await?;
        self.list().await
    }

    pub async fn set_ceiling(&self, channel: &str, ceiling: Option<semver::Version>) -> Result<Published, UpdateError> {
        // One publish at a time (the cron job's timestamp and a release).
        let _lock = crate::repo::lock_dir(&self.dir)?;
        crate::manifest::check_channel(channel)?;
        let (repo, _) = self.load().await?;
        let mut manifest = Self::manifest_of(&repo).await?;
        match ceiling {
            Some(c) => manifest.max_version.insert(channel.to_string(), c),
            None => manifest.max_version.remove(channel),
        };
        self.write(Some(repo), &manifest, None, Timestamp::now()).await?;
        self.list().await
    }

    /// The cron job: a new timestamp; snapshot and targets are renewed
    /// too when they would expire within `RENEW_BEFORE`.
    pub async fn timestamp(&self, now: Timestamp) -> Result<Published, UpdateError> {
        // One publish at a time (the cron job's timestamp and a release).
        let _lock = crate::repo::lock_dir(&self.dir)?;
        let (repo, _) = self.load().await?;
        let soon = now + RENEW_BEFORE;
        if repo.snapshot().signed.expires < soon || repo.targets().signed.expires < soon {
            let manifest = Self::manifest_of(&repo).await?;
            self.write(Some(repo), &manifest, None, now).await?;
            return self.list().await;
        }
        let mut ts = repo.timestamp().signed.clone();
        ts.version = NonZeroU64::new(ts.version.get() + 1).expect("grows");
        ts.expires = now + TIMESTAMP_LIFETIME;
        let rng = SystemRandom::new();
        let signed = SignedRole::new(
            ts,
            &KeyHolder::Root(repo.root().signed.clone()),
            &sources(&self.keys),
            &rng,
        )
        .await?;
        repo.root()
            .signed
            .verify_role(signed.signed())
            .map_err(|e| UpdateError::Signature {
                role: "timestamp".into(),
                detail: format!("the online keys given do not meet the timestamp threshold: {e}"),
            })?;
        write_atomically(&self.metadata().join("timestamp.json"), signed.buffer())?;
        self.list().await
    }

    /// Publishes a root signed offline (`sign_root` with the previous root)
    /// and re-signs the online roles, with keys the new root may name.
    pub async fn rotate_root(&self, new_root: &[u8]) -> Result<Published, UpdateError> {
        // One publish at a time (the cron job's timestamp and a release).
        let _lock = crate::repo::lock_dir(&self.dir)?;
        let (repo, _) = self.load().await?;
        let next: Signed<Root> =
            serde_json::from_slice(new_root).map_err(|e| UpdateError::TrustedRoot(e.to_string()))?;
        let current = repo.root();
        if next.signed.version.get() != current.signed.version.get() + 1 {
            return Err(UpdateError::Repository(format!(
                "the new root is version {}, the repository's is {}: it must be exactly one more",
                next.signed.version, current.signed.version
            )));
        }
        for (who, verifier) in [("current", &current.signed), ("new", &next.signed)] {
            verifier.verify_role(&next).map_err(|e| UpdateError::Signature {
                role: "root".into(),
                detail: format!("the {who} root's keys: {e}"),
            })?;
        }
        let manifest = Self::manifest_of(&repo).await?;
        let n = next.signed.version.get();
        write_atomically(&self.metadata().join(format!("{n}.root.json")), new_root)?;
        write_atomically(&self.metadata().join("root.json"), new_root)?;
        self.write(Some(repo), &manifest, None, Timestamp::now()).await?;
        self.list().await
    }

    /// Signs targets (manifest + an optional new target), snapshot and
    /// timestamp at the next versions and publishes them in reader-safe
    /// order.
    async fn write(
        &self,
        current: Option<tough::Repository>,
        manifest: &Manifest,
        new_target: Option<(String, PathBuf)>,
        now: Timestamp,
    ) -> Result<(), UpdateError> {
        manifest.check()?;
        self.write_bytes(current, &manifest.to_json(), new_target, now).await
    }

    /// Publishes manifest bytes as they are, unchecked: only for tests
    /// that need what a hostile publisher holding the online keys could
    /// write.
    #[doc(hidden)]
    pub async fn publish_unchecked(
        &self,
        manifest_json: &[u8],
        new_target: Option<(String, PathBuf)>,
    ) -> Result<(), UpdateError> {
        let _lock = crate::repo::lock_dir(&self.dir)?;
        let (repo, _) = self.load().await?;
        self.write_bytes(Some(repo), manifest_json, new_target, Timestamp::now())
            .await
    }

    async fn write_bytes(
        &self,
        current: Option<tough::Repository>,
        manifest_json: &[u8],
        new_target: Option<(String, PathBuf)>,
        now: Timestamp,
    ) -> Result<(), UpdateError> {
        let root_path = self.metadata().join("root.json");
        let (mut editor, next) = match current {
            Some(repo) => {
                let next = |v: NonZeroU64| NonZeroU64::new(v.get() + 1).expect("grows");
                let versions = (
                    next(repo.targets().signed.version),
                    next(repo.snapshot().signed.version),
                    next(repo.timestamp().signed.version),
                );
                (RepositoryEditor::from_repo(&root_path, repo).await?, versions)
            }
            None => {
                let one = NonZeroU64::MIN;
                (RepositoryEditor::new(&root_path).await?, (one, one, one))
            }
        };
        let scratch = tempdir_in(&self.dir)?;
        let manifest_path = scratch.path().join(MANIFEST_TARGET);
        std::fs::write(&manifest_path, manifest_json).map_err(UpdateError::io("writing the manifest"))?;
        let mut files: Vec<(TargetName, PathBuf)> = vec![(TargetName::new(MANIFEST_TARGET)?, manifest_path)];
        if let Some((name, path)) = new_target {
            files.push((TargetName::new(name)?, path));
        }
        for (name, path) in &files {
            let target = Target::from_path(path).await.map_err(|e| UpdateError::Target {
                name: name.raw().to_string(),
                detail: e.to_string(),
            })?;
            editor.add_target(name.clone(), target)?;
        }
        editor
            .targets_version(next.0)?
            .targets_expires(now + TARGETS_LIFETIME)?
            .snapshot_version(next.1)
            .snapshot_expires(now + SNAPSHOT_LIFETIME)
            .timestamp_version(next.2)
            .timestamp_expires(now + TIMESTAMP_LIFETIME);
        let signed = editor.sign(&sources(&self.keys)).await?;

        // Targets first: new hash-named files nobody references yet.
        for (name, path) in &files {
            signed
                .copy_target(path, &self.targets(), PathExists::Skip, Some(name))
                .await?;
        }
        sync_dir(&self.targets())?;
        // Then the versioned metadata, then the timestamp that points at it.
        let staged = scratch.path().join("metadata");
        signed.write(&staged).await?;
        let mut names: Vec<String> = std::fs::read_dir(&staged)
            .map_err(UpdateError::io("reading the staged metadata"))?
            .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
            .collect();
        // timestamp.json sorts last by rule, not by luck.
        names.sort_by_key(|n| (n == "timestamp.json", n.clone()));
        for n in names {
            if n.ends_with(".root.json") && self.metadata().join(&n).exists() {
                continue;
            }
            let bytes = std::fs::read(staged.join(&n)).map_err(UpdateError::io(format!("reading staged {n}")))?;
            write_atomically(&self.metadata().join(&n), &bytes)?;
        }
        Ok(())
    }
}

fn tempdir_in(dir: &Path) -> Result<tempfile::TempDir, UpdateError> {
    std::fs::create_dir_all(dir).map_err(UpdateError::io(format!("creating {}", dir.display())))?;
    tempfile::Builder::new()
        .prefix(".work-")
        .tempdir_in(dir)
        .map_err(UpdateError::io(format!("a scratch directory in {}", dir.display())))
}

fn sync_dir(d: &Path) -> Result<(), UpdateError> {
    std::fs::File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(UpdateError::io(format!("syncing {}", d.display())))
}

/// The role keys' public halves, for a root spec from key files.
pub fn role(keys: &[PathBuf], threshold: u64) -> RoleSpec {
    RoleSpec {
        keys: keys.to_vec(),
        threshold,
    }
}
