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

impl Repo {
    /// Publishes an OS bundle (`image/build`'s `RECIPE.os.tar`) with
    /// `appliance-ops release add-os`.
    pub fn add_os(&self, bundle: &Path) {
        let (repo, b) = (self.s("repo"), bundle.display().to_string());
        let mut args = vec!["release", "add-os", "--repo", &repo, "--bundle", &b];
        let keys = self.online();
        args.extend(keys.iter().map(String::as_str));
        ops(&args);
    }
}

/// A new OS bundle made from `bundle` (the image's own, from
/// `image/build`): its root tree with `os_version` set to `version` and
/// `edit` (a shell command run in the tree's directory) applied, packed
/// again the way `image/lib/disk.sh` packs a slot: squashfs, dm-verity hash
/// tree appended, `os.json` with the new root hash. Needs root (owners in
/// the tree) and squashfs-tools and cryptsetup-bin, which image/build
/// installs.
pub fn remaster_os_bundle(bundle: &Path, out: &Path, version: &str, edit: &str) {
    let dir = tempfile::tempdir_in(out.parent().unwrap()).unwrap();
    let script = r#"
set -euo pipefail
bundle="$1" out="$2" version="$3" edit="$4" d="$5"
tar -xf "$bundle" -C "$d"
unsquashfs -quiet -no-progress -d "$d/tree" "$d/root.img" >/dev/null
rm "$d/root.img"
sed -i "s/^os_version=.*/os_version=$version/" "$d/tree/usr/share/appliance/build-info"
(cd "$d/tree" && eval "$edit")
mksquashfs "$d/tree" "$d/root.img" -comp zstd -Xcompression-level 3 -noappend -quiet -no-progress >/dev/null
size=$(stat -c %s "$d/root.img")
if (( size % 4096 )); then truncate -s $(( (size / 4096 + 1) * 4096 )) "$d/root.img"; size=$(stat -c %s "$d/root.img"); fi
hash=$(veritysetup format "$d/root.img" "$d/root.img" --hash-offset="$size" --data-blocks=$((size / 4096)) | sed -n 's/^Root hash:[[:space:]]*//p')
python3 - "$d/os.json" "$version" "$hash" "$size" "$(stat -c %s "$d/root.img")" <<'PY'
import json, sys
p, version, roothash, offset, size = sys.argv[1:]
info = json.load(open(p))
info.update(version=version, roothash=roothash, hash_offset=int(offset), root_size=int(size))
json.dump(info, open(p, "w"), indent=2)
PY
tar -C "$d" --owner=0 --group=0 --numeric-owner -cf "$out" os.json vmlinuz initrd.img root.img
"#;
    let st = Command::new("bash")
        .args(["-c", script, "remaster"])
        .arg(bundle)
        .arg(out)
        .arg(version)
        .arg(edit)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "remastering {} as {version}", bundle.display());
}
