//! A signed update repository made with the real `appliance-ops release`
//! commands, as docs/updates.md walks global ops through it: for the
//! update tests and the VM test.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::bin;

/// A release "binary": a script, padded with letters that do not
/// compress, so that its target is about `pad` bytes and a throttled
/// download of it takes long enough to be killed in the middle.
pub fn release_binary(version: &str, pad: usize) -> Vec<u8> {
    let mut b = format!("#!/bin/sh\necho 'the supervisor, version {version}'\nexit 0\n# ").into_bytes();
    let mut x: u32 = 0x9e37_79b9;
    b.extend((0..pad).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"[(x >> 26) as usize]
    }));
    b.push(b'\n');
    b
}

pub fn ops(args: &[&str]) -> Output {
    let out = Command::new(bin("appliance-ops")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "appliance-ops {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn s(&self, rel: &str) -> String {
        self.p(rel).display().to_string()
    }

    /// Keys, an offline-signed root, an initialized repository: what
    /// docs/updates.md walks global ops through.
    pub fn new() -> Repo {
        let r = Repo {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(r.p("keys")).unwrap();
        for k in ["root", "targets", "snapshot", "timestamp"] {
            let out = ops(&["release", "keygen", "--out", &r.s(&format!("keys/{k}.pk8"))]);
            assert!(String::from_utf8_lossy(&out.stdout).starts_with("key "));
        }
        ops(&[
            "release",
            "sign-root",
            "--out",
            &r.s("root.json"),
            "--root-key",
            &r.s("keys/root.pub.json"),
            "--targets-key",
            &r.s("keys/targets.pub.json"),
            "--snapshot-key",
            &r.s("keys/snapshot.pub.json"),
            "--timestamp-key",
            &r.s("keys/timestamp.pub.json"),
            "--sign",
            &r.s("keys/root.pk8"),
        ]);
        let (keys, repo, root) = (r.online(), r.s("repo"), r.s("root.json"));
        let mut args = vec!["release", "init", "--repo", &repo, "--root", &root];
        args.extend(keys.iter().map(String::as_str));
        ops(&args);
        r
    }

    pub fn target_len(&self, name: &str) -> u64 {
        fs::read_dir(self.p("repo/targets"))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(name))
            .unwrap()
            .metadata()
            .unwrap()
            .len()
    }

    pub fn online(&self) -> Vec<String> {
        ["targets", "snapshot", "timestamp"]
            .iter()
            .flat_map(|k| ["--key".to_string(), self.s(&format!("keys/{k}.pk8"))])
            .collect()
    }

    /// Publishes `binary` as the release's `appliance`.
    pub fn add(&self, version: &str, binary: &[u8]) {
        self.add_files(version, &[("appliance", binary, 0o755)]);
    }
}

impl Default for Repo {
    fn default() -> Repo {
        Repo::new()
    }
}

impl Repo {
    /// Publishes a tarball holding `files` (name, bytes, mode) as `version`.
    pub fn add_files(&self, version: &str, files: &[(&str, &[u8], u32)]) {
        let tarball = self.p(&format!("appliance-{version}.tar.gz"));
        let gz = flate2::write::GzEncoder::new(fs::File::create(&tarball).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, bytes, mode) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(*mode);
            h.set_cksum();
            tar.append_data(&mut h, name, *bytes).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
        self.publish(version, &tarball);
    }

    fn publish(&self, version: &str, tarball: &Path) {
        let (repo, tb) = (self.s("repo"), tarball.display().to_string());
        let mut args = vec![
            "release",
            "add",
            "--repo",
            &repo,
            "--version",
            version,
            "--tarball",
            &tb,
        ];
        let keys = self.online();
        args.extend(keys.iter().map(String::as_str));
        ops(&args);
    }
}
