//! OS updates: a new root slot written to the slot the box is not running,
//! booted with systemd-boot's boot counting, kept when the node comes up
//! healthy, and left behind by the boot loader itself when it does not.
//!
//! The bundle (`image/build` writes it as `RECIPE.os.tar`) is a plain tar:
//! `os.json` (what it is), `vmlinuz`, `initrd.img`, then `root.img` (squashfs
//! with its dm-verity hash tree appended), last so it streams to the
//! partition. It reaches this module only after TUF verified its length and
//! SHA-256 (`download`), and the slot is checked once more against the root
//! hash before a boot entry names it.
//!
//! The order of writes is what makes a power cut harmless (docs/image.md):
//! the target slot's boot entry is removed first, then the kernel, initrd
//! and slot are written and read back, and only then is an entry with three
//! tries created. Until that last rename the boot loader knows only the
//! running slot.
//!
//! What a boot finds (`at_boot`), the entry names with their try counters
//! and the entry text are pure and unit-tested; `OsInstaller` is the thin
//! I/O around them.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::UpdateError;
use crate::install::{Outcome, Result_};
use crate::repo::write_atomically;

/// The bundle format this code reads.
pub const BUNDLE_FORMAT: u32 = 1;
/// Boots a new slot gets before systemd-boot gives up on it.
pub const TRIES: u32 = 3;
/// os.json, the kernel and the initrd are small; anything larger is not a
/// bundle of ours.
const MAX_SMALL_MEMBER: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s.trim() {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.letter().to_uppercase())
    }
}

/// `os.json` of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleInfo {
    pub format: u32,
    pub recipe: String,
    pub version: Version,
    /// dm-verity root hash of `root.img` (64 hex digits).
    pub roothash: String,
    /// Where the hash tree starts in `root.img`.
    pub hash_offset: u64,
    pub root_size: u64,
}

impl BundleInfo {
    fn check(&self, recipe: &str, version: &Version) -> Result<(), String> {
        if self.format != BUNDLE_FORMAT {
            return Err(format!(
                "bundle format {}, this node reads {BUNDLE_FORMAT}",
                self.format
            ));
        }
        if self.recipe != recipe {
            return Err(format!(
                "the bundle is for recipe {:?}, this node runs {recipe:?}",
                self.recipe
            ));
        }
        if self.version != *version {
            return Err(format!(
                "the bundle says version {}, the signed manifest {version}",
                self.version
            ));
        }
        let hex64 = self.roothash.len() == 64 && self.roothash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex64 {
            return Err("the root hash is not 64 lowercase hex digits".into());
        }
        if self.hash_offset == 0 || self.hash_offset % 4096 != 0 || self.hash_offset >= self.root_size {
            return Err(format!(
                "hash offset {} does not lie on a 4 KiB block inside the {}-byte slot image",
                self.hash_offset, self.root_size
            ));
        }
        Ok(())
    }
}

/// A boot entry's file name: `appliance-a.conf` (known good), or
/// `appliance-b+LEFT[-DONE].conf` while systemd-boot counts its tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryName {
    pub slot: Slot,
    /// Tries left and tries done, while counting.
    pub counter: Option<(u32, u32)>,
}

impl EntryName {
    pub fn parse(name: &str) -> Option<EntryName> {
        let stem = name.strip_prefix("appliance-")?.strip_suffix(".conf")?;
        let (slot, counter) = match stem.split_once('+') {
            None => (stem, None),
            Some((slot, c)) => {
                let (left, done) = match c.split_once('-') {
                    None => (c.parse().ok()?, 0),
                    Some((l, d)) => (l.parse().ok()?, d.parse().ok()?),
                };
                (slot, Some((left, done)))
            }
        };
        Some(EntryName {
            slot: Slot::parse(slot)?,
            counter,
        })
    }

    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("appliance-{}.conf", self.slot.letter()),
            Some((left, 0)) => format!("appliance-{}+{left}.conf", self.slot.letter()),
            Some((left, done)) => format!("appliance-{}+{left}-{done}.conf", self.slot.letter()),
        }
    }

    /// Out of tries: systemd-boot sorts it last and boots the other slot.
    pub fn exhausted(&self) -> bool {
        matches!(self.counter, Some((0, _)))
    }
}

/// The kernel command line of a slot (the initramfs reads `appliance.slot`
/// and `appliance.verity`; docs/image.md).
pub fn kernel_cmdline(slot: Slot, roothash: &str, hash_offset: u64) -> String {
    format!(
        "root=/dev/mapper/root rootfstype=squashfs ro appliance.slot={} appliance.verity={roothash}:{hash_offset} \
         console=tty0 console=ttyS0,115200 panic=10",
        slot.letter()
    )
}

/// A Boot Loader Specification entry. systemd-boot puts entries without
/// tries left last and, among entries with the same `sort-key`, boots the
/// highest `version` first; so the generation (one more for every OS
/// update) is the version: the slot written last boots first, and the
/// other one once its tries are used up.
pub fn entry_text(
    recipe: &str,
    os_version: &Version,
    slot: Slot,
    generation: u64,
    roothash: &str,
    hash_offset: u64,
    extra_params: &[String],
) -> String {
    let mut options = kernel_cmdline(slot, roothash, hash_offset);
    for p in extra_params {
        options.push(' ');
        options.push_str(p);
    }
    format!(
        "title   City node {os_version} ({recipe}, slot {slot})\nsort-key appliance\nversion {generation}\n\
         linux   /appliance/{l}/vmlinuz\ninitrd  /appliance/{l}/initrd.img\noptions {options}\n",
        l = slot.letter()
    )
}

/// An entry's text with `params` appended to its first `options` line,
/// those no `options` line has yet (systemd-boot joins them all); `None`
/// when nothing is missing, or there is no `options` line (no entry of
/// ours lacks one). Line endings are kept as they are.
pub fn with_params(entry: &str, params: &[String]) -> Option<String> {
    fn options(line: &str) -> Option<&str> {
        let rest = line.trim_start().strip_prefix("options")?;
        rest.starts_with([' ', '\t']).then_some(rest)
    }
    let have: Vec<&str> = entry
        .lines()
        .filter_map(options)
        .flat_map(str::split_whitespace)
        .collect();
    let missing: Vec<&String> = params.iter().filter(|p| !have.contains(&p.as_str())).collect();
    if missing.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(entry.len() + 64);
    let mut done = false;
    for line in entry.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        if !done && options(body).is_some() {
            out.push_str(body);
            for p in &missing {
                out.push(' ');
                out.push_str(p);
            }
            out.push_str(&line[body.len()..]);
            done = true;
        } else {
            out.push_str(line);
        }
    }
    done.then_some(out)
}

/// An OS update between its first write and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsPending {
    pub version: Version,
    pub from: Version,
    pub slot: Slot,
    pub step: Step,
    pub since: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The slot is being written; it has no boot entry.
    Writing,
    /// Written, checked, and its entry (with tries) is in place.
    Installed,
}

/// `state.json` of the OS updater (root's; readable by the supervisor).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsState {
    /// The newest OS version this node committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<Version>,
    #[serde(default)]
    pub bad: BTreeSet<Version>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<OsPending>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Outcome>,
}

/// What a boot finds of a pending OS update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtBoot {
    /// No update under way.
    Nothing,
    /// The write was cut short (power, a kill): the slot has no entry and
    /// the update is tried again later, not held against the version.
    Interrupted,
    /// Installed; the reboot into it has not happened yet.
    AwaitingReboot,
    /// This boot runs the new slot: commit it once healthy.
    Trial,
    /// The new slot used up its tries (or lost its entry) and the boot
    /// loader went back to the old one.
    FellBack,
}

pub fn at_boot(pending: Option<&OsPending>, booted: Slot, entries: &[EntryName]) -> AtBoot {
    let Some(p) = pending else { return AtBoot::Nothing };
    match p.step {
        Step::Writing => AtBoot::Interrupted,
        Step::Installed if booted == p.slot => AtBoot::Trial,
        Step::Installed => {
            let entry = entries.iter().find(|e| e.slot == p.slot);
            match entry {
                Some(e) if !e.exhausted() => AtBoot::AwaitingReboot,
                _ => AtBoot::FellBack,
            }
        }
    }
}

/// Where the slots and the ESP are. On a box: the partitions named root-a
/// and root-b on the boot disk and the ESP mounted on /efi; in tests:
/// plain files and a directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub esp: PathBuf,
    pub slots: [PathBuf; 2],
    /// Check the written slot against its root hash with `veritysetup
    /// verify` (what the initramfs will do at boot).
    pub veritysetup: Option<PathBuf>,
}

impl Layout {
    pub fn slot(&self, s: Slot) -> &Path {
        match s {
            Slot::A => &self.slots[0],
            Slot::B => &self.slots[1],
        }
    }

    /// The boot disk's partitions, from what the initramfs left in
    /// `run_dir` (`/run/appliance`) and `/sys/class/block`.
    pub fn of_boot_disk(run_dir: &Path, sys_block: &Path, esp: &Path) -> Result<Layout, UpdateError> {
        let disk = read_trimmed(&run_dir.join("boot-disk"))?;
        let slot = |name: &str| -> Result<PathBuf, UpdateError> {
            let entries = fs::read_dir(sys_block.join(&disk))
                .map_err(UpdateError::io(format!("reading {}/{disk}", sys_block.display())))?;
            for e in entries.flatten() {
                let uevent = fs::read_to_string(e.path().join("uevent")).unwrap_or_default();
                if uevent.lines().any(|l| l == format!("PARTNAME={name}")) {
                    return Ok(PathBuf::from("/dev").join(e.file_name()));
                }
            }
            Err(UpdateError::Repository(format!(
                "no partition named {name} on the boot disk {disk}"
            )))
        };
        Ok(Layout {
            esp: esp.to_path_buf(),
            slots: [slot("root-a")?, slot("root-b")?],
            veritysetup: Some(PathBuf::from("/usr/sbin/veritysetup")),
        })
    }
}

fn read_trimmed(p: &Path) -> Result<String, UpdateError> {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(UpdateError::io(format!("reading {}", p.display())))
}

/// The booted slot, as the initramfs recorded it.
pub fn booted_slot(run_dir: &Path) -> Result<Slot, UpdateError> {
    let s = read_trimmed(&run_dir.join("boot-slot"))?;
    Slot::parse(&s).ok_or_else(|| UpdateError::Repository(format!("boot-slot {s:?} is neither a nor b")))
}

#[derive(Debug, Clone)]
pub struct OsInstaller {
    pub layout: Layout,
    /// Root's directory for `state.json`.
    pub state_dir: PathBuf,
    pub recipe: String,
    pub running: Version,
    pub booted: Slot,
    /// Bytes per second when writing the slot (None: as fast as the disk
    /// takes it). A knob for slow disks, and for a test to catch a write
    /// in the middle.
    pub write_rate: Option<u64>,
    /// The hardware profile's kernel parameters, for the new slot's entry.
    pub kernel_params: Vec<String>,
}

impl OsInstaller {
    fn state_path(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    pub fn read_state(&self) -> Result<OsState, UpdateError> {
        read_state(&self.state_dir)
    }

    pub fn write_state(&self, s: &OsState) -> Result<(), UpdateError> {
        fs::create_dir_all(&self.state_dir)
            .map_err(UpdateError::io(format!("creating {}", self.state_dir.display())))?;
        write_atomically(
            &self.state_path(),
            &serde_json::to_vec_pretty(s).expect("state serializes"),
        )
    }

    /// The floor: nothing older than this is installed without a signed
    /// ceiling.
    pub fn floor(&self, s: &OsState) -> Version {
        s.floor
            .clone()
            .filter(|f| *f > self.running)
            .unwrap_or_else(|| self.running.clone())
    }

    pub fn entries(&self) -> Result<Vec<(String, EntryName)>, UpdateError> {
        let dir = self.layout.esp.join("loader/entries");
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(UpdateError::io(format!("reading {}", dir.display()))(e)),
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = EntryName::parse(&name) {
                out.push((name, n));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Adds the hardware profile's kernel parameters to the running slot's
    /// boot entry where it lacks them (name, and so try counters,
    /// unchanged). Returns the entries rewritten; the parameters take
    /// effect at the next start. The other slot's entry is left alone: it
    /// is the way back when something goes wrong, and a new parameter that
    /// stops the boot must not be written into both.
    pub fn add_kernel_params(&self, params: &[String]) -> Result<Vec<String>, UpdateError> {
        let dir = self.layout.esp.join("loader/entries");
        let mut changed = Vec::new();
        for (name, _) in self.entries()?.into_iter().filter(|(_, e)| e.slot == self.booted) {
            let path = dir.join(&name);
            let text = fs::read_to_string(&path).map_err(UpdateError::io(format!("reading {}", path.display())))?;
            if let Some(new) = with_params(&text, params) {
                write_atomically(&path, new.as_bytes())?;
                changed.push(name);
            }
        }
        if !changed.is_empty() {
            sync_fs(&self.layout.esp)?;
        }
        Ok(changed)
    }

    fn generation_of(&self, file: &str) -> u64 {
        fs::read_to_string(self.layout.esp.join("loader/entries").join(file))
            .ok()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("version")?.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Writes the verified bundle to the slot not running and gives it a
    /// boot entry with `TRIES` tries. Returns the slot written.
    pub fn install(&self, bundle: &Path, version: &Version, now: Timestamp) -> Result<Slot, UpdateError> {
        let target = self.booted.other();
        let mut state = self.read_state()?;
        if let Some(p) = &state.pending
            && p.step == Step::Installed
            && p.slot == target
        {
            return Err(UpdateError::Repository(format!(
                "OS {} is installed in slot {} and waits for its reboot",
                p.version, p.slot
            )));
        }
        let bad = |detail: String| UpdateError::Target {
            name: bundle.display().to_string(),
            detail,
        };
        let file = File::open(bundle).map_err(UpdateError::io(format!("opening {}", bundle.display())))?;
        let mut archive = tar::Archive::new(file);
        let mut members = archive.entries().map_err(UpdateError::io("reading the OS bundle"))?;
        let mut next = |want: &str| -> Result<tar::Entry<'_, File>, UpdateError> {
            let e = members
                .next()
                .ok_or_else(|| bad(format!("ends before {want}")))?
                .map_err(UpdateError::io("reading the OS bundle"))?;
            let path = e.path().map_err(UpdateError::io("reading the OS bundle"))?.into_owned();
            if path != Path::new(want) || e.header().entry_type() != tar::EntryType::Regular {
                return Err(bad(format!("expected the file {want}, found {}", path.display())));
            }
            Ok(e)
        };

        let mut info_bytes = Vec::new();
        next("os.json")?
            .take(64 * 1024)
            .read_to_end(&mut info_bytes)
            .map_err(UpdateError::io("reading os.json"))?;
        let info: BundleInfo = serde_json::from_slice(&info_bytes).map_err(|e| bad(format!("os.json: {e}")))?;
        info.check(&self.recipe, version).map_err(bad)?;
        let slot_dev = self.layout.slot(target);
        let capacity = device_size(slot_dev)?;
        if info.root_size > capacity {
            return Err(bad(format!(
                "the slot image is {} bytes, slot {target} holds {capacity}",
                info.root_size
            )));
        }

        // 1. The slot loses its entry before a byte of it changes.
        for (name, e) in self.entries()? {
            if e.slot == target {
                let p = self.layout.esp.join("loader/entries").join(&name);
                fs::remove_file(&p).map_err(UpdateError::io(format!("removing {}", p.display())))?;
            }
        }
        sync_dir(&self.layout.esp.join("loader/entries"))?;
        sync_fs(&self.layout.esp)?;
        state.pending = Some(OsPending {
            version: version.clone(),
            from: self.running.clone(),
            slot: target,
            step: Step::Writing,
            since: now,
        });
        self.write_state(&state)?;
        crash_point("cleared");

        // 2. Kernel and initrd beside the slot's entry.
        let boot_dir = self.layout.esp.join("appliance").join(target.letter());
        fs::create_dir_all(&boot_dir).map_err(UpdateError::io(format!("creating {}", boot_dir.display())))?;
        for name in ["vmlinuz", "initrd.img"] {
            let mut e = next(name)?;
            if e.size() > MAX_SMALL_MEMBER {
                return Err(bad(format!("{name} is {} bytes", e.size())));
            }
            let tmp = boot_dir.join(format!("{name}.new"));
            let mut out = File::create(&tmp).map_err(UpdateError::io(format!("creating {}", tmp.display())))?;
            std::io::copy(&mut e, &mut out)
                .and_then(|_| out.sync_all())
                .map_err(UpdateError::io(format!("writing {}", tmp.display())))?;
            fs::rename(&tmp, boot_dir.join(name)).map_err(UpdateError::io(format!("renaming {}", tmp.display())))?;
        }
        sync_dir(&boot_dir)?;
        sync_fs(&self.layout.esp)?;

        // 3. The slot, streamed, then read back from the disk.
        let mut root = next("root.img")?;
        if root.size() != info.root_size {
            return Err(bad(format!(
                "root.img is {} bytes, os.json says {}",
                root.size(),
                info.root_size
            )));
        }
        let written = self.write_slot(&mut root, slot_dev, info.root_size)?;
        crash_point("written");
        let read_back = hash_prefix(slot_dev, info.root_size)?;
        if read_back != written {
            return Err(UpdateError::Mismatch(format!(
                "slot {target} ({}) reads back differently from what was written",
                slot_dev.display()
            )));
        }
        if let Some(vs) = &self.layout.veritysetup {
            let out = Command::new(vs)
                .arg("verify")
                .arg(slot_dev)
                .arg(slot_dev)
                .arg(&info.roothash)
                .arg(format!("--hash-offset={}", info.hash_offset))
                .output()
                .map_err(UpdateError::io(format!("running {}", vs.display())))?;
            if !out.status.success() {
                return Err(UpdateError::Mismatch(format!(
                    "slot {target} does not match its root hash: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }

        // 4. The entry, with its tries: from here on the boot loader may
        // pick the new slot.
        let generation = self
            .entries()?
            .iter()
            .map(|(name, _)| self.generation_of(name))
            .max()
            .unwrap_or(0)
            + 1;
        let entry = EntryName {
            slot: target,
            counter: Some((TRIES, 0)),
        };
        let text = entry_text(
            &self.recipe,
            version,
            target,
            generation,
            &info.roothash,
            info.hash_offset,
            &self.kernel_params,
        );
        write_atomically(
            &self.layout.esp.join("loader/entries").join(entry.file_name()),
            text.as_bytes(),
        )?;
        sync_fs(&self.layout.esp)?;
        if let Some(p) = state.pending.as_mut() {
            p.step = Step::Installed;
        }
        self.write_state(&state)?;
        Ok(target)
    }

    fn write_slot(&self, src: &mut impl Read, dev: &Path, size: u64) -> Result<[u8; 32], UpdateError> {
        let mut out = OpenOptions::new()
            .write(true)
            .open(dev)
            .map_err(UpdateError::io(format!("opening {}", dev.display())))?;
        let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        let started = std::time::Instant::now();
        while done < size {
            let n = src
                .read(&mut buf)
                .map_err(UpdateError::io("reading root.img from the bundle"))?;
            if n == 0 {
                return Err(UpdateError::Target {
                    name: "root.img".into(),
                    detail: format!("ends after {done} of {size} bytes"),
                });
            }
            out.write_all(&buf[..n])
                .map_err(UpdateError::io(format!("writing {}", dev.display())))?;
            hasher.update(&buf[..n]);
            done += n as u64;
            if let Some(rate) = self.write_rate.filter(|r| *r > 0) {
                let due = std::time::Duration::from_secs_f64(done as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        out.sync_all()
            .map_err(UpdateError::io(format!("syncing {}", dev.display())))?;
        // Read-back below must come from the disk, not the page cache.
        let _ = nix::fcntl::posix_fadvise(&out, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        Ok(hasher.finish().as_ref().try_into().expect("sha256 is 32 bytes"))
    }

    /// What this boot finds; records a fall-back or an interrupted write.
    pub fn boot_check(&self, now: Timestamp) -> Result<AtBoot, UpdateError> {
        let mut state = self.read_state()?;
        let entries: Vec<EntryName> = self.entries()?.into_iter().map(|(_, e)| e).collect();
        let verdict = at_boot(state.pending.as_ref(), self.booted, &entries);
        match verdict {
            AtBoot::Interrupted => {
                let p = state.pending.take().expect("pending");
                state.last = Some(Outcome {
                    at: now,
                    version: p.version,
                    result: Result_::Failed,
                    reason: format!("writing slot {} was cut short; it is tried again", p.slot),
                });
                self.write_state(&state)?;
            }
            AtBoot::FellBack => {
                let p = state.pending.take().expect("pending");
                state.bad.insert(p.version.clone());
                state.last = Some(Outcome {
                    at: now,
                    version: p.version,
                    result: Result_::RolledBack,
                    reason: format!(
                        "slot {} did not come up healthy in {TRIES} boots; the boot loader went back to slot {}",
                        p.slot, self.booted
                    ),
                });
                self.write_state(&state)?;
            }
            AtBoot::Nothing | AtBoot::AwaitingReboot | AtBoot::Trial => {}
        }
        Ok(verdict)
    }

    /// The trial boot passed its health checks: the new OS is the floor.
    pub fn commit(&self, now: Timestamp) -> Result<Option<Version>, UpdateError> {
        let mut state = self.read_state()?;
        let Some(p) = state.pending.clone() else {
            return Ok(None);
        };
        if p.step != Step::Installed || p.slot != self.booted {
            return Ok(None);
        }
        state.pending = None;
        state.floor = Some(p.version.clone());
        state.last = Some(Outcome {
            at: now,
            version: p.version.clone(),
            result: Result_::Installed,
            reason: format!("slot {} came up healthy", p.slot),
        });
        self.write_state(&state)?;
        Ok(Some(p.version))
    }
}

/// `os.json` of a bundle file (what `appliance-ops release add-os` checks
/// before publishing it).
pub fn read_bundle_info(bundle: &Path) -> Result<BundleInfo, UpdateError> {
    let bad = |detail: String| UpdateError::Target {
        name: bundle.display().to_string(),
        detail,
    };
    let file = File::open(bundle).map_err(UpdateError::io(format!("opening {}", bundle.display())))?;
    let mut archive = tar::Archive::new(file);
    let mut members = archive.entries().map_err(UpdateError::io("reading the OS bundle"))?;
    let first = members
        .next()
        .ok_or_else(|| bad("is empty".into()))?
        .map_err(UpdateError::io("reading the OS bundle"))?;
    if first.path().ok().as_deref() != Some(Path::new("os.json")) {
        return Err(bad(
            "does not start with os.json: not an OS bundle of image/build".into()
        ));
    }
    let mut bytes = Vec::new();
    first
        .take(64 * 1024)
        .read_to_end(&mut bytes)
        .map_err(UpdateError::io("reading os.json"))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("os.json: {e}")))
}

pub fn read_state(dir: &Path) -> Result<OsState, UpdateError> {
    let p = dir.join("state.json");
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| UpdateError::Repository(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(OsState::default()),
        Err(e) => Err(UpdateError::io(format!("reading {}", p.display()))(e)),
    }
}

fn device_size(p: &Path) -> Result<u64, UpdateError> {
    let mut f = File::open(p).map_err(UpdateError::io(format!("opening {}", p.display())))?;
    f.seek(SeekFrom::End(0))
        .map_err(UpdateError::io(format!("sizing {}", p.display())))
}

fn hash_prefix(p: &Path, size: u64) -> Result<[u8; 32], UpdateError> {
    let f = File::open(p).map_err(UpdateError::io(format!("opening {}", p.display())))?;
    let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < size {
        let want = (size - done).min(CHUNK as u64) as usize;
        let n = f
            .read_at(&mut buf[..want], done)
            .map_err(UpdateError::io(format!("reading back {}", p.display())))?;
        if n == 0 {
            return Err(UpdateError::Mismatch(format!(
                "{} ends after {done} bytes",
                p.display()
            )));
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(hasher.finish().as_ref().try_into().expect("sha256 is 32 bytes"))
}

fn sync_dir(d: &Path) -> Result<(), UpdateError> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(UpdateError::io(format!("syncing {}", d.display())))
}

/// Syncs the whole file system `p` is on. On the ESP (FAT) a replaced
/// file's freed clusters are table updates that belong to no file still
/// there, so neither the new file's nor the directory's fsync writes them:
/// a power cut afterwards left a table that the kernel refused later (seen
/// in the VM test). syncfs writes everything.
fn sync_fs(p: &Path) -> Result<(), UpdateError> {
    let f = File::open(p).map_err(UpdateError::io(format!("opening {}", p.display())))?;
    nix::unistd::syncfs(&f)
        .map_err(|e| UpdateError::io(format!("syncing the file system of {}", p.display()))(e.into()))
}

/// `APPLIANCE_OS_CRASH_AT=STEP` aborts the process there: the crash tests'
/// stand-in for a power cut.
fn crash_point(step: &str) {
    if std::env::var("APPLIANCE_OS_CRASH_AT").is_ok_and(|s| s == step) {
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_carry_the_try_counter() {
        let cases = [
            ("appliance-a.conf", Some((Slot::A, None))),
            ("appliance-b+3.conf", Some((Slot::B, Some((3, 0))))),
            ("appliance-b+2-1.conf", Some((Slot::B, Some((2, 1))))),
            ("appliance-a+0-3.conf", Some((Slot::A, Some((0, 3))))),
            ("appliance-c.conf", None),
            ("appliance-a+x.conf", None),
            ("other.conf", None),
            ("appliance-a.conf.new", None),
        ];
        for (name, want) in cases {
            let got = EntryName::parse(name);
            assert_eq!(got.map(|e| (e.slot, e.counter)), want, "{name}");
            if let Some(e) = got {
                assert_eq!(e.file_name(), name, "round trip");
            }
        }
        assert!(EntryName::parse("appliance-a+0-3.conf").unwrap().exhausted());
        assert!(!EntryName::parse("appliance-a+1-2.conf").unwrap().exhausted());
        assert!(!EntryName::parse("appliance-a.conf").unwrap().exhausted());
    }

    fn pending(step: Step, slot: Slot) -> OsPending {
        OsPending {
            version: "0.2.0".parse().unwrap(),
            from: "0.1.0".parse().unwrap(),
            slot,
            step,
            since: "2026-12-01T02:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn what_a_boot_finds() {
        let e = |s: &str| EntryName::parse(s).unwrap();
        let installed_b = pending(Step::Installed, Slot::B);
        type Case = (&'static str, Option<OsPending>, Slot, Vec<EntryName>, AtBoot);
        let cases: Vec<Case> = vec![
            (
                "nothing pending",
                None,
                Slot::A,
                vec![e("appliance-a.conf")],
                AtBoot::Nothing,
            ),
            (
                "cut short while writing",
                Some(pending(Step::Writing, Slot::B)),
                Slot::A,
                vec![e("appliance-a.conf")],
                AtBoot::Interrupted,
            ),
            (
                "installed, not rebooted yet",
                Some(installed_b.clone()),
                Slot::A,
                vec![e("appliance-a.conf"), e("appliance-b+3.conf")],
                AtBoot::AwaitingReboot,
            ),
            (
                "booted the new slot",
                Some(installed_b.clone()),
                Slot::B,
                vec![e("appliance-a.conf"), e("appliance-b+2-1.conf")],
                AtBoot::Trial,
            ),
            (
                "back on the old slot with the new one out of tries",
                Some(installed_b.clone()),
                Slot::A,
                vec![e("appliance-a.conf"), e("appliance-b+0-3.conf")],
                AtBoot::FellBack,
            ),
            (
                "back on the old slot and the new entry gone",
                Some(installed_b.clone()),
                Slot::A,
                vec![e("appliance-a.conf")],
                AtBoot::FellBack,
            ),
            (
                "an old slot's leftover exhausted entry does not matter",
                Some(pending(Step::Installed, Slot::A)),
                Slot::B,
                vec![e("appliance-b.conf"), e("appliance-a+3.conf")],
                AtBoot::AwaitingReboot,
            ),
        ];
        for (name, p, booted, entries, want) in cases {
            assert_eq!(at_boot(p.as_ref(), booted, &entries), want, "{name}");
        }
    }

    #[test]
    fn the_entry_text_is_what_the_initramfs_reads() {
        let t = entry_text(
            "lab",
            &"1.2.3".parse().unwrap(),
            Slot::B,
            7,
            &"ab".repeat(32),
            8192,
            &[],
        );
        assert_eq!(
            t,
            format!(
                "title   City node 1.2.3 (lab, slot B)\nsort-key appliance\nversion 7\nlinux   /appliance/b/vmlinuz\ninitrd  /appliance/b/initrd.img\n\
                 options root=/dev/mapper/root rootfstype=squashfs ro appliance.slot=b appliance.verity={}:8192 \
                 console=tty0 console=ttyS0,115200 panic=10\n",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn hardware_params_join_the_options_line_once() {
        let params = vec!["nowatchdog".to_string(), "acpi_enforce_resources=lax".to_string()];
        let slot_a = |extra: &[String]| {
            entry_text(
                "lab",
                &"1.2.3".parse().unwrap(),
                Slot::A,
                1,
                &"ab".repeat(32),
                8192,
                extra,
            )
        };
        let t = slot_a(&params);
        let options = t.lines().find(|l| l.starts_with("options ")).unwrap();
        assert!(
            options.ends_with(" panic=10 nowatchdog acpi_enforce_resources=lax"),
            "{options}"
        );
        // Written already: nothing to do.
        assert_eq!(with_params(&t, &params), None);
        let bare = slot_a(&[]);
        assert_eq!(with_params(&bare, &params).as_deref(), Some(t.as_str()));
        // One of two present: only the other is added; other lines untouched.
        let half = bare.replace("panic=10", "panic=10 nowatchdog");
        assert_eq!(with_params(&half, &params).as_deref(), Some(t.as_str()));
        // A parameter is a whole word: "nowatchdogs" is not "nowatchdog".
        let near = bare.replace("panic=10", "panic=10 nowatchdogs");
        let fixed = with_params(&near, &params).unwrap();
        assert!(fixed.contains("nowatchdogs nowatchdog acpi"), "{fixed}");
        // No options line: left as it is; no last newline: none added.
        assert_eq!(with_params("title x\nlinux /k", &params), None);
        assert_eq!(
            with_params("options a", &params).as_deref(),
            Some("options a nowatchdog acpi_enforce_resources=lax")
        );
        // Two options lines (systemd-boot joins them): the first gets what
        // neither has; CRLF endings stay.
        assert_eq!(
            with_params("options a nowatchdog\r\noptions\tb\r\n", &params).as_deref(),
            Some("options a nowatchdog acpi_enforce_resources=lax\r\noptions\tb\r\n")
        );
        assert_eq!(
            with_params("  options a\noptions nowatchdog acpi_enforce_resources=lax\n", &params),
            None
        );
    }

    #[test]
    fn bundle_info_is_checked() {
        let good = BundleInfo {
            format: 1,
            recipe: "lab".into(),
            version: "0.2.0".parse().unwrap(),
            roothash: "0f".repeat(32),
            hash_offset: 4096 * 10,
            root_size: 4096 * 12,
        };
        let v: Version = "0.2.0".parse().unwrap();
        assert_eq!(good.check("lab", &v), Ok(()));
        let mut b = good.clone();
        b.recipe = "bbb-3.0".into();
        assert!(b.check("lab", &v).unwrap_err().contains("recipe \"bbb-3.0\""));
        assert!(
            good.check("lab", &"0.3.0".parse().unwrap())
                .unwrap_err()
                .contains("signed manifest 0.3.0")
        );
        let mut b = good.clone();
        b.roothash = "0F".repeat(32);
        assert!(b.check("lab", &v).is_err());
        let mut b = good.clone();
        b.hash_offset = 4097;
        assert!(b.check("lab", &v).is_err());
        let mut b = good;
        b.format = 2;
        assert!(b.check("lab", &v).unwrap_err().contains("format 2"));
    }
}
