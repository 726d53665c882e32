//! One test per attack on the update path, each against a freshly
//! generated repository (new keys every time) made hostile in one way.
//! Each asserts the specific refusal and that nothing the node keeps on
//! disk changed.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use appliance_update::UpdateError;
use appliance_update::download::{Downloader, Limits};
use appliance_update::manifest::Release;
use appliance_update::policy::{Decision, NodeView, Skip, plan};
use appliance_update::publish::{Publisher, RootSpec, generate_key, public_key_path, role, sign_root};
use appliance_update::repo::{Expiry, Source, Trust, Verified};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use jiff::{SignedDuration, Timestamp};
use semver::Version;
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::Timestamp as TufTimestamp;
use tough::schema::{DelegatedTargets, Hashes, KeyHolder, Metafile, Role, Root, Signature, Signed, Snapshot, Targets};

struct Lab {
    tmp: tempfile::TempDir,
    root_keys: Vec<PathBuf>,
    targets_keys: Vec<PathBuf>,
    snapshot_key: PathBuf,
    timestamp_key: PathBuf,
    publisher: Publisher,
    root_v1: Vec<u8>,
}

fn later() -> Timestamp {
    Timestamp::now() + SignedDuration::from_hours(24 * 365)
}

fn release(version: &str, channel: &str) -> Release {
    Release {
        version: version.parse().unwrap(),
        channel: channel.into(),
        target: format!("appliance-{version}.tar.gz"),
        min_from: None,
        waves: vec![],
        notes: String::new(),
    }
}

impl Lab {
    /// Root 2-of-3, targets 2-of-2, snapshot and timestamp 1-of-1, one
    /// release 0.2.0 on stable.
    async fn new() -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let keys = tmp.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let key = |n: &str| {
            let p = keys.join(format!("{n}.pk8"));
            generate_key(&p).unwrap();
            p
        };
        let root_keys: Vec<PathBuf> = (1..=3).map(|i| key(&format!("root{i}"))).collect();
        let targets_keys: Vec<PathBuf> = (1..=2).map(|i| key(&format!("targets{i}"))).collect();
        let (snapshot_key, timestamp_key) = (key("snapshot"), key("timestamp"));
        let pubs = |ks: &[PathBuf]| ks.iter().map(|k| public_key_path(k)).collect::<Vec<_>>();
        let spec = RootSpec {
            root: role(&pubs(&root_keys), 2),
            targets: role(&pubs(&targets_keys), 2),
            snapshot: role(&pubs(std::slice::from_ref(&snapshot_key)), 1),
            timestamp: role(&pubs(std::slice::from_ref(&timestamp_key)), 1),
            expires: later(),
        };
        let root_v1 = sign_root(&spec, None, &root_keys[..2]).await.unwrap();
        let mut online = targets_keys.clone();
        online.push(snapshot_key.clone());
        online.push(timestamp_key.clone());
        let publisher = Publisher {
            dir: tmp.path().join("repo"),
            keys: online,
        };
        publisher.init(&root_v1).await.unwrap();
        let lab = Lab {
            tmp,
            root_keys,
            targets_keys,
            snapshot_key,
            timestamp_key,
            publisher,
            root_v1,
        };
        lab.add("0.2.0", "stable", b"the supervisor, version 0.2.0").await;
        lab
    }

    async fn add(&self, version: &str, channel: &str, content: &[u8]) {
        let tarball = self.tmp.path().join(format!("appliance-{version}.tar.gz"));
        std::fs::write(&tarball, content).unwrap();
        self.publisher
            .add_release(release(version, channel), &tarball, None)
            .await
            .unwrap();
    }

    fn node(&self, name: &str) -> Node {
        let dir = self.tmp.path().join(name);
        Node {
            trust: Trust::new(self.root_v1.clone(), dir.join("tuf")),
            dir,
            source: Source::dir(&self.publisher.dir).unwrap(),
        }
    }

    fn meta(&self, f: &str) -> PathBuf {
        self.publisher.dir.join("metadata").join(f)
    }

    fn read<T: serde::de::DeserializeOwned>(&self, f: &str) -> T {
        serde_json::from_slice(&std::fs::read(self.meta(f)).unwrap()).unwrap()
    }

    fn root(&self) -> Root {
        self.read::<Signed<Root>>("root.json").signed
    }

    fn timestamp(&self) -> Signed<TufTimestamp> {
        self.read("timestamp.json")
    }

    fn snapshot(&self) -> Signed<Snapshot> {
        let v = self.timestamp().signed.meta["snapshot.json"].version;
        self.read(&format!("{v}.snapshot.json"))
    }

    fn targets_version(&self) -> u64 {
        self.snapshot().signed.meta["targets.json"].version.get()
    }

    /// Signs `role` with the given keys as the current root allows (a key
    /// the root does not list for the role signs nothing).
    async fn sign<T: Role + serde::Serialize + Clone>(&self, role: T, keys: &[PathBuf]) -> Signed<T> {
        let sources: Vec<Box<dyn KeySource>> = keys
            .iter()
            .map(|p| Box::new(LocalKeySource { path: p.clone() }) as Box<dyn KeySource>)
            .collect();
        let _ = self.root();
        SignedRole::new(role, &KeyHolder::Root(self.root()), &sources, &SystemRandom::new())
            .await
            .unwrap()
            .signed()
            .clone()
    }

    /// What an attacker holding the snapshot and timestamp keys does after
    /// planting a targets file: a snapshot and a timestamp that vouch for
    /// exactly those bytes, at the next versions.
    async fn reseal(&self, targets_bytes: &[u8], targets_version: u64) {
        let mut snap = self.snapshot().signed;
        snap.version = NonZeroU64::new(snap.version.get() + 1).unwrap();
        snap.meta
            .insert("targets.json".into(), metafile(targets_bytes, targets_version));
        let snap = self.sign(snap, std::slice::from_ref(&self.snapshot_key)).await;
        let snap_bytes = serde_json::to_vec(&snap).unwrap();
        std::fs::write(
            self.meta(&format!("{}.snapshot.json", snap.signed.version)),
            &snap_bytes,
        )
        .unwrap();
        let mut ts = self.timestamp().signed;
        ts.version = NonZeroU64::new(ts.version.get() + 1).unwrap();
        ts.meta
            .insert("snapshot.json".into(), metafile(&snap_bytes, snap.signed.version.get()));
        let ts = self.sign(ts, std::slice::from_ref(&self.timestamp_key)).await;
        std::fs::write(self.meta("timestamp.json"), serde_json::to_vec(&ts).unwrap()).unwrap();
    }
}

/// Signs as an attacker would: each given key signs, whatever the root
/// says about thresholds (tough's editor refuses to go below one).
fn sign_raw<T: Role + serde::Serialize>(role: T, keys: &[PathBuf]) -> Signed<T> {
    let data = role.canonical_form().unwrap();
    let signatures = keys
        .iter()
        .map(|k| {
            let pair = Ed25519KeyPair::from_pkcs8(&std::fs::read(k).unwrap()).unwrap();
            let keyid = tough::sign::Sign::tuf_key(&pair).key_id().unwrap();
            Signature {
                keyid,
                sig: pair.sign(&data).as_ref().to_vec().into(),
            }
        })
        .collect();
    Signed {
        signed: role,
        signatures,
    }
}

/// The current targets at the next version, changed by `edit` and signed
/// by `keys` only.
fn forged_targets(lab: &Lab, keys: &[PathBuf], repeat_first: bool) -> (Vec<u8>, u64) {
    let v = lab.targets_version();
    let current: Signed<Targets> = lab.read(&format!("{v}.targets.json"));
    let mut t = current.signed;
    t.version = NonZeroU64::new(v + 1).unwrap();
    t.expires = later();
    let signed = sign_raw(
        DelegatedTargets {
            name: "targets".into(),
            targets: t,
        },
        keys,
    );
    let mut out = Signed {
        signed: signed.signed.targets,
        signatures: signed.signatures,
    };
    if repeat_first {
        out.signatures.push(out.signatures[0].clone());
    }
    let bytes = serde_json::to_vec(&out).unwrap();
    std::fs::write(lab.meta(&format!("{}.targets.json", v + 1)), &bytes).unwrap();
    (bytes, v + 1)
}

fn metafile(bytes: &[u8], version: u64) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
                .as_ref()
                .to_vec()
                .into(),
            _extra: Default::default(),
        }),
        version: NonZeroU64::new(version).unwrap(),
        _extra: Default::default(),
    }
}

struct Node {
    trust: Trust,
    dir: PathBuf,
    source: Source,
}

impl Node {
    async fn refresh(&self) -> Result<Verified, UpdateError> {
        self.trust
            .refresh(&self.source, tough::FilesystemTransport, Expiry::Enforce)
            .await
    }

    /// Every file the node keeps, with its bytes (tough's scratch
    /// datastore aside: it is rebuilt from the trusted state each time).
    fn disk(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        walk(&self.dir, &mut out);
        out.retain(|p, _| !p.components().any(|c| c.as_os_str() == "work"));
        out
    }

    /// Refresh must fail; the node's files stay exactly as they were.
    async fn refused(&self) -> UpdateError {
        let before = self.disk();
        let e = self.refresh().await.expect_err("a hostile repository must be refused");
        assert_eq!(self.disk(), before, "a refused refresh changed the node's files ({e})");
        e
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
}

#[tokio::test]
async fn a_good_repository_verifies_and_its_versions_are_kept_across_a_restart() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    let v = node.refresh().await.unwrap();
    assert_eq!(v.manifest.releases.len(), 1);
    assert_eq!(v.manifest.releases[0].version, Version::new(0, 2, 0));
    let t = &v.targets["appliance-0.2.0.tar.gz"];
    assert_eq!(t.length, b"the supervisor, version 0.2.0".len() as u64);
    assert!(
        t.url
            .as_str()
            .ends_with(&format!("{}.appliance-0.2.0.tar.gz", hex::encode(t.sha256)))
    );
    // A restart: a new Trust over the same directory knows the versions.
    let again = lab.node("node");
    assert_eq!(again.trust.trusted_versions().unwrap(), v.versions);
    assert_eq!(v.versions.root, 1);
    assert!(v.versions.timestamp >= 2, "init and one release: {:?}", v.versions);
}

#[tokio::test]
async fn unsigned_metadata_is_refused() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    node.refresh().await.unwrap();
    lab.add("0.3.0", "stable", b"0.3.0").await;
    let mut ts = lab.timestamp();
    ts.signatures.clear();
    std::fs::write(lab.meta("timestamp.json"), serde_json::to_vec(&ts).unwrap()).unwrap();
    match node.refused().await {
        UpdateError::Signature { role, detail } => {
            assert_eq!(role, "timestamp");
            assert!(detail.contains("0 valid signatures"), "{detail}");
        }
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn metadata_signed_by_a_key_the_root_does_not_trust_is_refused() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    node.refresh().await.unwrap();
    // The attacker signs a newer timestamp with its own key and claims the
    // real timestamp key's id.
    let mut ts = lab.timestamp();
    ts.signed.version = NonZeroU64::new(ts.signed.version.get() + 1).unwrap();
    let attacker = Ed25519KeyPair::generate().unwrap();
    let sig = attacker.sign(&ts.signed.canonical_form().unwrap());
    let real_id = ts.signatures[0].keyid.clone();
    ts.signatures = vec![Signature {
        keyid: real_id,
        sig: sig.as_ref().to_vec().into(),
    }];
    std::fs::write(lab.meta("timestamp.json"), serde_json::to_vec(&ts).unwrap()).unwrap();
    match node.refused().await {
        UpdateError::Signature { role, detail } => {
            assert_eq!(role, "timestamp");
            assert!(detail.contains("0 valid signatures"), "{detail}");
        }
        e => panic!("{e:?}"),
    }
    let _ = attacker.public_key();
}

/// Targets needs 2 of its 2 keys; an attacker holding one of them and the
/// online snapshot and timestamp keys publishes changed targets.
#[tokio::test]
async fn targets_signed_one_short_of_the_threshold_is_refused() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    node.refresh().await.unwrap();
    // Our own publishing tool will not even write it ...
    let short = Publisher {
        dir: lab.publisher.dir.clone(),
        keys: vec![
            lab.targets_keys[0].clone(),
            lab.snapshot_key.clone(),
            lab.timestamp_key.clone(),
        ],
    };
    let evil = lab.tmp.path().join("evil.tar.gz");
    std::fs::write(&evil, b"evil").unwrap();
    let e = short
        .add_release(release("9.0.0", "stable"), &evil, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("targets"), "{e}");
    // ... so the attacker signs by hand.
    let (bytes, v) = forged_targets(&lab, &lab.targets_keys[..1], false);
    lab.reseal(&bytes, v).await;
    match node.refused().await {
        UpdateError::Signature { role, detail } => {
            assert_eq!(role, "targets");
            assert!(
                detail.contains("threshold of 2") && detail.contains("(1 valid signatures)"),
                "{detail}"
            );
        }
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn a_signature_repeated_counts_once_and_does_not_meet_a_threshold() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    node.refresh().await.unwrap();
    let (bytes, v) = forged_targets(&lab, &lab.targets_keys[..1], true);
    lab.reseal(&bytes, v).await;
    match node.refused().await {
        UpdateError::Signature { role, detail } => {
            assert_eq!(role, "targets");
            assert!(detail.contains("Duplicate key ID"), "{detail}");
        }
        e => panic!("{e:?}"),
    }
    // Both signatures made by both keys pass: the forgery above failed on
    // the count alone.
    let (bytes, v) = forged_targets(&lab, &lab.targets_keys, false);
    lab.reseal(&bytes, v).await;
    node.refresh().await.unwrap();
}

#[tokio::test]
async fn an_expired_timestamp_is_refused_as_a_freeze() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    node.refresh().await.unwrap();
    let mut ts = lab.timestamp().signed;
    ts.version = NonZeroU64::new(ts.version.get() + 1).unwrap();
    ts.expires = Timestamp::now() - SignedDuration::from_hours(1);
    let ts = lab.sign(ts, std::slice::from_ref(&lab.timestamp_key)).await;
    std::fs::write(lab.meta("timestamp.json"), serde_json::to_vec(&ts).unwrap()).unwrap();
    match node.refused().await {
        UpdateError::Expired { role } => assert_eq!(role, "timestamp"),
        e => panic!("{e:?}"),
    }
    // The operator's override for a USB stick accepts the expiry, and
    // only the expiry.
    let ok = node
        .trust
        .refresh(&node.source, tough::FilesystemTransport, Expiry::Ignore)
        .await
        .unwrap();
    assert_eq!(ok.versions.timestamp, ts.signed.version.get());
}

#[tokio::test]
async fn an_older_timestamp_after_a_newer_one_is_refused_across_a_restart() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    let old_ts = std::fs::read(lab.meta("timestamp.json")).unwrap();
    node.refresh().await.unwrap();
    lab.add("0.3.0", "stable", b"0.3.0").await;
    let newer = node.refresh().await.unwrap();
    // The supervisor restarts; the mirror serves yesterday's timestamp.
    let node = lab.node("node");
    std::fs::write(lab.meta("timestamp.json"), &old_ts).unwrap();
    match node.refused().await {
        UpdateError::Rollback { role, detail } => {
            assert_eq!(role, "timestamp");
            assert!(detail.contains(&newer.versions.timestamp.to_string()), "{detail}");
        }
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn an_older_snapshot_under_a_newer_timestamp_is_refused_across_a_restart() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    let old_snapshot = lab.snapshot();
    let old_bytes = serde_json::to_vec(&old_snapshot).unwrap();
    lab.add("0.3.0", "stable", b"0.3.0").await;
    node.refresh().await.unwrap();
    let node = lab.node("node");
    // A compromised timestamp key: a newer timestamp pointing at the old
    // snapshot (which still verifies: its signature is genuine).
    let mut ts = lab.timestamp().signed;
    ts.version = NonZeroU64::new(ts.version.get() + 1).unwrap();
    ts.meta.insert(
        "snapshot.json".into(),
        metafile(&old_bytes, old_snapshot.signed.version.get()),
    );
    let ts = lab.sign(ts, std::slice::from_ref(&lab.timestamp_key)).await;
    std::fs::write(lab.meta("timestamp.json"), serde_json::to_vec(&ts).unwrap()).unwrap();
    match node.refused().await {
        UpdateError::Rollback { role, .. } => assert_eq!(role, "timestamp"),
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn a_snapshot_mixed_with_another_targets_file_is_refused() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    let v = lab.targets_version();
    let older = std::fs::read(lab.meta(&format!("{v}.targets.json"))).unwrap();
    lab.add("0.3.0", "stable", b"0.3.0").await;
    let v2 = lab.targets_version();
    // The mirror serves the older (validly signed) targets under the name
    // the current snapshot points at.
    std::fs::write(lab.meta(&format!("{v2}.targets.json")), &older).unwrap();
    match node.refused().await {
        UpdateError::Mismatch(detail) => assert!(detail.contains("targets"), "{detail}"),
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn a_target_name_with_dotdot_is_refused() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    node.refresh().await.unwrap();
    // A publisher with every online key (or a bug in ours) names a target
    // that would land outside the staging directory.
    let evil = lab.tmp.path().join("evil");
    std::fs::write(&evil, b"#!/bin/sh\n").unwrap();
    let manifest =
        br#"{"format":1,"releases":[{"version":"9.0.0","channel":"stable","target":"../../usr/bin/appliance"}]}"#;
    lab.publisher
        .publish_unchecked(manifest, Some(("evil".into(), evil)))
        .await
        .unwrap();
    match node.refused().await {
        UpdateError::Manifest(e) => assert!(e.to_string().contains("../../usr/bin/appliance"), "{e}"),
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn releases_of_another_channel_or_below_the_floor_are_passed_over() {
    let lab = Lab::new().await;
    lab.add("0.9.0", "beta", b"beta").await;
    lab.add("0.1.0", "stable", b"old").await;
    let node = lab.node("node");
    let v = node.refresh().await.unwrap();
    let (running, floor) = (Version::new(0, 2, 0), Version::new(0, 2, 0));
    let bad = BTreeSet::new();
    let p = plan(
        &v.manifest,
        &NodeView {
            running: &running,
            floor: &floor,
            channel: "stable",
            position: 0,
            bad: &bad,
            now: Timestamp::now(),
        },
    );
    assert_eq!(p.decision, Decision::UpToDate);
    assert!(p.skipped.contains(&Skip::OtherChannel {
        version: Version::new(0, 9, 0),
        channel: "beta".into()
    }));
    assert!(p.skipped.contains(&Skip::BelowFloor {
        version: Version::new(0, 1, 0),
        floor: floor.clone()
    }));
}

#[tokio::test]
async fn the_root_rotates_from_1_to_2_to_3_and_a_rotation_short_of_the_old_threshold_is_refused() {
    let lab = Lab::new().await;
    let keys = lab.tmp.path().join("keys");
    let node = lab.node("node");
    node.refresh().await.unwrap();
    let pubs = |ks: &[PathBuf]| ks.iter().map(|k| public_key_path(k)).collect::<Vec<_>>();
    let fresh = |n: &str| {
        let p = keys.join(format!("{n}.pk8"));
        generate_key(&p).unwrap();
        p
    };
    // 2: a new timestamp key (the old one leaked).
    let ts2 = fresh("timestamp2");
    let spec2 = RootSpec {
        root: role(&pubs(&lab.root_keys), 2),
        targets: role(&pubs(&lab.targets_keys), 2),
        snapshot: role(&pubs(std::slice::from_ref(&lab.snapshot_key)), 1),
        timestamp: role(&pubs(std::slice::from_ref(&ts2)), 1),
        expires: later(),
    };
    let v2 = sign_root(&spec2, Some(&lab.root_v1), &lab.root_keys[1..])
        .await
        .unwrap();
    let mut online = lab.targets_keys.clone();
    online.extend([lab.snapshot_key.clone(), ts2.clone()]);
    let publisher = Publisher {
        dir: lab.publisher.dir.clone(),
        keys: online,
    };
    publisher.rotate_root(&v2).await.unwrap();
    // 3: all new root keys, signed by two old and two new.
    let new_root: Vec<PathBuf> = (4..=6).map(|i| fresh(&format!("root{i}"))).collect();
    let spec3 = RootSpec {
        root: role(&pubs(&new_root), 2),
        ..spec2.clone()
    };
    let signers: Vec<PathBuf> = [&lab.root_keys[..2], &new_root[..2]].concat();
    let v3 = sign_root(&spec3, Some(&v2), &signers).await.unwrap();
    publisher.rotate_root(&v3).await.unwrap();

    let v = node.refresh().await.unwrap();
    assert_eq!(v.versions.root, 3);
    // After a restart the node starts from root 3, not the shipped root 1.
    let node = lab.node("node");
    assert_eq!(node.trust.trusted_versions().unwrap().root, 3);
    assert_eq!(node.refresh().await.unwrap().versions.root, 3);

    // 4, signed by one old root key only: our tool refuses to make it ...
    let spec4 = RootSpec {
        root: role(&pubs(&lab.root_keys), 2),
        ..spec3.clone()
    };
    let e = sign_root(
        &spec4,
        Some(&v3),
        &[new_root[0].clone(), lab.root_keys[0].clone(), lab.root_keys[1].clone()],
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("version 3's root keys"), "{e}");
    // ... and a node refuses one made by hand.
    let good4 = sign_root(
        &spec4,
        Some(&v3),
        &[
            new_root[0].clone(),
            new_root[1].clone(),
            lab.root_keys[0].clone(),
            lab.root_keys[1].clone(),
        ],
    )
    .await
    .unwrap();
    let mut short: Signed<Root> = serde_json::from_slice(&good4).unwrap();
    let v3_root: Signed<Root> = serde_json::from_slice(&v3).unwrap();
    let v3_ids: Vec<_> = v3_root.signed.roles[&tough::schema::RoleType::Root].keyids.clone();
    let mut dropped = false;
    short.signatures.retain(|s| {
        if !dropped && v3_ids.contains(&s.keyid) {
            dropped = true;
            false
        } else {
            true
        }
    });
    std::fs::write(lab.meta("4.root.json"), serde_json::to_vec(&short).unwrap()).unwrap();
    match node.refused().await {
        UpdateError::Signature { role, .. } => assert_eq!(role, "root"),
        e => panic!("{e:?}"),
    }
}

// --- targets: the bytes themselves --------------------------------------

async fn fetch_current(lab: &Lab, node: &Node, name: &str) -> (Result<PathBuf, UpdateError>, PathBuf) {
    let v = node.refresh().await.unwrap();
    let t = v.targets[name].clone();
    let staging = node.dir.join("staging");
    let d = Downloader::new(
        reqwest::Client::new(),
        Limits {
            deadline: std::time::Duration::from_secs(5),
            backoff: std::time::Duration::from_millis(10),
            ..Limits::default()
        },
    );
    let _ = lab;
    (d.fetch(&t, &staging, &|_| {}).await, staging)
}

fn target_file(lab: &Lab, name: &str) -> PathBuf {
    std::fs::read_dir(lab.publisher.dir.join("targets"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&format!(".{name}")))
        .unwrap()
}

fn staged(staging: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(staging)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn a_good_target_is_fetched_and_verified() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    let (r, staging) = fetch_current(&lab, &node, "appliance-0.2.0.tar.gz").await;
    let path = r.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"the supervisor, version 0.2.0");
    assert_eq!(staged(&staging).len(), 1);
    assert!(staged(&staging)[0].ends_with(".verified"));
}

#[tokio::test]
async fn a_tampered_target_is_discarded() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    let f = target_file(&lab, "appliance-0.2.0.tar.gz");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[3] ^= 0x20;
    std::fs::write(&f, &bytes).unwrap();
    let (r, staging) = fetch_current(&lab, &node, "appliance-0.2.0.tar.gz").await;
    match r {
        Err(UpdateError::Target { detail, .. }) => assert!(detail.contains("discarded"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        staged(&staging),
        Vec::<String>::new(),
        "nothing unverified is kept under a usable name"
    );
}

#[tokio::test]
async fn a_target_of_the_wrong_length_is_discarded() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    let f = target_file(&lab, "appliance-0.2.0.tar.gz");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 4]).unwrap();
    let (r, staging) = fetch_current(&lab, &node, "appliance-0.2.0.tar.gz").await;
    match r {
        Err(UpdateError::Target { detail, .. }) => assert!(detail.contains("signed length"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert!(
        staged(&staging).iter().all(|n| !n.ends_with(".verified")),
        "{:?}",
        staged(&staging)
    );
}

#[tokio::test]
async fn endless_data_stops_at_the_signed_length() {
    let lab = Lab::new().await;
    let node = lab.node("node");
    let f = target_file(&lab, "appliance-0.2.0.tar.gz");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes.extend(std::iter::repeat_n(b'x', 8 << 20));
    std::fs::write(&f, &bytes).unwrap();
    let (r, staging) = fetch_current(&lab, &node, "appliance-0.2.0.tar.gz").await;
    match r {
        Err(UpdateError::TooLarge(detail)) => assert!(detail.contains("more than the 29 signed bytes"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(staged(&staging), Vec::<String>::new());
}

#[tokio::test]
async fn os_releases_are_published_per_recipe_and_verified_like_the_supervisor() {
    let lab = Lab::new().await;
    let bundle = lab.tmp.path().join("os-lab-0.5.0.tar");
    std::fs::write(&bundle, b"an OS bundle of the lab recipe").unwrap();
    let mut r = release("0.5.0", "stable");
    r.target = "os-lab-0.5.0.tar".into();
    lab.publisher.add_os_release("lab", r.clone(), &bundle).await.unwrap();
    // The same version of the same recipe twice is refused.
    let again = lab.publisher.add_os_release("lab", r, &bundle).await.unwrap_err();
    assert!(again.to_string().contains("already published"), "{again}");
    let v = lab.node("node").refresh().await.unwrap();
    assert_eq!(v.manifest.os["lab"][0].version, Version::new(0, 5, 0));
    assert!(
        v.manifest.os_view("bbb-3.0").releases.is_empty(),
        "another recipe sees none"
    );
    let t = &v.targets["os-lab-0.5.0.tar"];
    assert_eq!(t.length, b"an OS bundle of the lab recipe".len() as u64);
    // The supervisor's release is still there beside it.
    assert!(v.targets.contains_key("appliance-0.2.0.tar.gz"));
}
