//! Verify + apply of a downloaded target, against `sha256sum` of the same
//! file in the same run; and peak memory while applying a small and a
//! large target (it must not grow with the target).
//!
//! `cargo bench -p appliance-update --bench apply` (or `bench/update-apply`).
//! The targets are .tar.gz files holding one `appliance` of random bytes:
//! the worst case for size, a realistic one for speed (a binary hardly
//! compresses better than 2:1).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use appliance_update::download::hash_file;
use appliance_update::install::{Releases, State};
use jiff::Timestamp;
use semver::Version;

fn make_target(dir: &Path, mib: usize) -> std::path::PathBuf {
    let path = dir.join(format!("appliance-{mib}.tar.gz"));
    let f = std::fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut data = vec![0u8; mib << 20];
    aws_lc_rs::rand::fill(&mut data).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    tar.append_data(&mut h, "appliance", data.as_slice()).unwrap();
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    path
}

/// What a node does with a target on disk: verify length and SHA-256
/// against the signed values, unpack (synced), switch `current`.
fn verify_and_apply(target: &Path, releases_dir: &Path, length: u64, sha: [u8; 32]) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let got = rt.block_on(hash_file(target, length + 1)).unwrap();
    assert_eq!(got, (length, sha), "verification");
    let verified = t.elapsed().as_secs_f64();
    let releases = Releases::new(releases_dir);
    let old = Version::new(0, 1, 0);
    std::fs::create_dir_all(releases_dir.join("0.1.0")).unwrap();
    std::fs::write(releases_dir.join("0.1.0/appliance"), b"#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        releases_dir.join("0.1.0/appliance"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let _ = std::fs::remove_file(releases_dir.join("current"));
    std::os::unix::fs::symlink("0.1.0", releases_dir.join("current")).unwrap();
    let v = Version::new(0, 2, 0);
    let t = Instant::now();
    releases.unpack(target, &v).unwrap();
    releases.switch(&State::new(&old), &v, false, Timestamp::now()).unwrap();
    (verified, t.elapsed().as_secs_f64())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    // The child: apply one target and say how much memory that took.
    if let Ok(target) = std::env::var("APPLY_ONE") {
        let (len, sha) = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(hash_file(Path::new(&target), u64::MAX))
            .unwrap();
        let before = peak_rss_kib();
        let dir = std::env::var("APPLY_DIR").unwrap();
        verify_and_apply(Path::new(&target), Path::new(&dir), len, sha);
        println!("{before} {}", peak_rss_kib());
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tmp = tempfile::tempdir_in(option_env!("CARGO_TARGET_TMPDIR").unwrap_or("/var/tmp")).unwrap();
    let big = make_target(tmp.path(), 200);
    let size = std::fs::metadata(&big).unwrap().len();
    let (len, sha) = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(hash_file(&big, u64::MAX))
        .unwrap();
    let mb = size as f64 / 1e6;
    println!("verify + apply of a {mb:.0} MB target (page cache warm for both)");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..3 {
        let t = Instant::now();
        let out = Command::new("sha256sum").arg(&big).output().unwrap();
        theirs.push(t.elapsed().as_secs_f64());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&hex::encode(sha)));
        let releases = tmp.path().join(format!("releases-{round}"));
        let t = Instant::now();
        let (v, a) = verify_and_apply(&big, &releases, len, sha);
        ours.push(t.elapsed().as_secs_f64());
        println!(
            "  round {round}: verify {v:.3} s, unpack + sync + switch {a:.3} s, sha256sum {:.3} s",
            theirs[round]
        );
        std::fs::remove_dir_all(&releases).unwrap();
    }
    let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    let (o, s) = (best(&ours), best(&theirs));
    println!("  sha256sum              {:>7.3} s  {:>7.1} MB/s", s, mb / s);
    println!("  appliance verify+apply {:>7.3} s  {:>7.1} MB/s", o, mb / o);
    println!(
        "  ratio (ours / sha256sum throughput): {:.2} (target at least 0.80)",
        s / o
    );

    println!("peak resident memory while applying (a process of its own each):");
    let mut peaks = Vec::new();
    for mib in [10usize, 500] {
        let target = make_target(tmp.path(), mib);
        let dir = tmp.path().join(format!("rss-{mib}"));
        let out = Command::new(std::env::current_exe().unwrap())
            .env("APPLY_ONE", &target)
            .env("APPLY_DIR", &dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
        println!("  {mib:>4} MiB target: peak {:.1} MiB", v[1] as f64 / 1024.0);
        peaks.push(v[1]);
        std::fs::remove_file(&target).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let diff = (peaks[1] as f64 - peaks[0] as f64) / 1024.0;
    println!("  difference 500 MiB - 10 MiB: {diff:.2} MiB (target: within 2 MiB)");
}
