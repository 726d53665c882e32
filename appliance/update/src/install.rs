//! Installed versions of the supervisor, and the switch between them.
//!
//! Layout of the releases directory:
//!
//! ```text
//! releases/
//!   0.2.0/appliance      one directory per version, complete before it has its name
//!   0.3.0/appliance
//!   current -> 0.3.0     what the unit runs (ExecStart=releases/current/appliance)
//!   previous -> 0.2.0    the known-good version a rollback returns to
//!   state.json           floor, versions marked bad, the pending trial, last result
//! ```
//!
//! Every step is a rename of something complete (a directory, a symlink,
//! `state.json`), synced with its directory, so a crash at any point
//! leaves `current` pointing at a complete version. The order of the steps
//! (`state.json` names the trial before `current` moves) lets the next
//! start tell a switch that happened from one that did not.
//!
//! The decisions (what a start means, what commit and rollback change) are
//! pure functions of `State`; this module's I/O only carries them out.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::UpdateError;
use crate::repo::write_atomically;

/// The supervisor's file inside a release.
pub const BINARY: &str = "appliance";
/// Bounds on what a release tarball may unpack to.
pub const MAX_UNPACKED_BYTES: u64 = 512 << 20;
pub const MAX_ENTRIES: usize = 64;
/// Starts of a trial version before it counts as failed without ever
/// reporting healthy (a loop breaker, as Mender's).
pub const MAX_TRIAL_STARTS: u32 = 3;

/// Unknown fields are ignored: after a rollback, the older version must
/// read what the newer one wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// This node's place in every rollout (see `policy::POSITIONS`), drawn
    /// once at random.
    #[serde(default = "random_position")]
    pub position: u16,
    /// Nothing older is installed unless the signed ceiling says so.
    pub floor: Option<Version>,
    #[serde(default)]
    pub bad: BTreeSet<Version>,
    #[serde(default)]
    pub pending: Option<Pending>,
    #[serde(default)]
    pub last: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub version: Version,
    pub from: Version,
    pub since: Timestamp,
    /// Starts of `version` so far.
    #[serde(default)]
    pub starts: u32,
    /// A deliberate downgrade (signed ceiling): the floor follows it down.
    #[serde(default)]
    pub downgrade: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub at: Timestamp,
    pub version: Version,
    pub result: Result_,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Result_ {
    /// Switched to and committed after its health checks passed.
    Installed,
    /// Switched to, failed, switched back; marked bad.
    RolledBack,
    /// Never switched to (download, verification, unpacking).
    Failed,
}

/// What `before_start` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeforeStart {
    /// No trial, or `current` is not the version on trial.
    Nothing,
    Counted {
        version: Version,
        starts: u32,
    },
    /// Too many starts: switch back before this one.
    RollBack {
        version: Version,
        reason: String,
    },
}

/// What a supervisor that just started should do about updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnStart {
    /// No trial going on.
    Normal,
    /// This is the trial: check health, then `commit` (or `rollback`).
    Trial { version: Version },
    /// The trial started too often without becoming healthy.
    RollBack { version: Version, reason: String },
    /// A switch was begun but did not happen (a crash in between).
    Interrupted { version: Version },
    /// The trial ran and the previous version runs again (a rollback
    /// that switched back but could not record it): now recorded, and
    /// the trial version marked bad.
    RolledBack { version: Version },
}

impl State {
    pub fn new(running: &Version) -> State {
        State {
            position: random_position(),
            floor: Some(running.clone()),
            bad: BTreeSet::new(),
            pending: None,
            last: None,
        }
    }

    pub fn floor_or<'a>(&'a self, running: &'a Version) -> &'a Version {
        self.floor.as_ref().unwrap_or(running)
    }

    /// Pure: what systemd starting `current` means, decided before it runs
    /// (`appliance update before-start`, the unit's `ExecStartPre=`, run by
    /// the image's own binary): the start of a version on trial is counted
    /// there, so that a release that cannot even run our code is counted
    /// too, and taken back after `MAX_TRIAL_STARTS` starts.
    pub fn before_start(&self, current: &Version) -> (State, BeforeStart) {
        let mut s = self.clone();
        let Some(p) = self.pending.clone() else {
            return (s, BeforeStart::Nothing);
        };
        if p.version != *current {
            return (s, BeforeStart::Nothing);
        }
        let starts = p.starts + 1;
        s.pending = Some(Pending { starts, ..p.clone() });
        if starts > MAX_TRIAL_STARTS {
            return (
                s,
                BeforeStart::RollBack {
                    version: p.version,
                    reason: format!("started {} times without passing its health checks", starts - 1),
                },
            );
        }
        (
            s,
            BeforeStart::Counted {
                version: p.version,
                starts,
            },
        )
    }

    /// Pure: what a start of `running` means, and the state to write
    /// before doing anything else. `counted`: `before_start` already
    /// counted this start (under systemd); otherwise it is counted here.
    pub fn on_start(&self, running: &Version, counted: bool, now: Timestamp) -> (State, OnStart) {
        let mut s = self.clone();
        let Some(p) = self.pending.clone() else {
            return (s, OnStart::Normal);
        };
        if *running != p.version {
            if *running == p.from && p.starts > 0 {
                let s = self.rolled_back(
                    running,
                    &format!(
                        "{} stopped before passing its health checks; {running} runs again",
                        p.version
                    ),
                    now,
                );
                return (s, OnStart::RolledBack { version: p.version });
            }
            s.pending = None;
            s.last = Some(Outcome {
                at: now,
                version: p.version.clone(),
                result: Result_::Failed,
                reason: format!("the switch to {} was interrupted; {running} kept running", p.version),
            });
            return (s, OnStart::Interrupted { version: p.version });
        }
        if counted {
            return (s, OnStart::Trial { version: p.version });
        }
        let starts = p.starts + 1;
        s.pending = Some(Pending { starts, ..p.clone() });
        if starts > MAX_TRIAL_STARTS {
            return (
                s,
                OnStart::RollBack {
                    version: p.version,
                    reason: format!("started {} times without passing its health checks", starts - 1),
                },
            );
        }
        (s, OnStart::Trial { version: p.version })
    }

    /// Pure: the trial passed. Only the version on trial, running, can
    /// be committed.
    pub fn committed(&self, running: &Version, now: Timestamp) -> State {
        let mut s = self.clone();
        if s.pending.as_ref().is_some_and(|p| p.version == *running)
            && let Some(p) = s.pending.take()
        {
            s.floor = Some(match (&self.floor, p.downgrade) {
                (Some(f), false) if *f > p.version => f.clone(),
                _ => p.version.clone(),
            });
            s.last = Some(Outcome {
                at: now,
                version: p.version,
                result: Result_::Installed,
                reason: String::new(),
            });
        }
        s
    }

    /// Pure: the trial failed; back to `from`, never again `version`.
    /// `by` is the version deciding it: the trial itself or, after it, the
    /// one it came from.
    pub fn rolled_back(&self, by: &Version, reason: &str, now: Timestamp) -> State {
        let mut s = self.clone();
        if s.pending.as_ref().is_some_and(|p| p.version == *by || p.from == *by)
            && let Some(p) = s.pending.take()
        {
            s.bad.insert(p.version.clone());
            s.last = Some(Outcome {
                at: now,
                version: p.version,
                result: Result_::RolledBack,
                reason: reason.to_string(),
            });
        }
        s
    }
}

fn random_position() -> u16 {
    let mut b = [0u8; 2];
    aws_lc_rs::rand::fill(&mut b).expect("the system's random source");
    u16::from_le_bytes(b) % crate::policy::POSITIONS
}

/// Crash-test hook: the process aborts at the named step when
/// `APPLIANCE_UPDATE_CRASH_AT` names it. Only the crash matrix sets it.
pub fn crash_point(step: &str) {
    if std::env::var("APPLIANCE_UPDATE_CRASH_AT").is_ok_and(|s| s == step) {
        eprintln!("crash test: aborting at {step}");
        std::process::abort();
    }
}

/// The steps `crash_point` knows, in order.
pub const CRASH_STEPS: &[&str] = &[
    "unpack-started",
    "unpack-written",
    "unpacked",
    "pending-written",
    "previous-switched",
    "current-switched",
];

#[derive(Debug, Clone)]
pub struct Releases {
    dir: PathBuf,
}

impl Releases {
    pub fn new(dir: impl Into<PathBuf>) -> Releases {
        Releases { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn read_state(&self, running: &Version) -> Result<State, UpdateError> {
        match std::fs::read(self.state_path()) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                UpdateError::Repository(format!(
                    "{} is damaged ({e}); it is only ever replaced whole, so this is not a torn write",
                    self.state_path().display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::new(running)),
            Err(e) => Err(UpdateError::io(format!("reading {}", self.state_path().display()))(e)),
        }
    }

    pub fn write_state(&self, s: &State) -> Result<(), UpdateError> {
        std::fs::create_dir_all(&self.dir).map_err(UpdateError::io(format!("creating {}", self.dir.display())))?;
        let mut bytes = serde_json::to_vec_pretty(s).expect("state serializes");
        bytes.push(b'\n');
        write_atomically(&self.state_path(), &bytes)
    }

    /// The version a symlink (`current`, `previous`) points at.
    pub fn link(&self, name: &str) -> Option<Version> {
        let target = std::fs::read_link(self.dir.join(name)).ok()?;
        target.to_str()?.parse().ok()
    }

    pub fn binary(&self, v: &Version) -> PathBuf {
        self.dir.join(v.to_string()).join(BINARY)
    }

    /// Unpacks a verified tarball into `releases/VERSION/`, which appears
    /// under that name only once complete and synced.
    pub fn unpack(&self, tarball: &Path, version: &Version) -> Result<PathBuf, UpdateError> {
        crash_point("unpack-started");
        let final_dir = self.dir.join(version.to_string());
        if self.link("current").as_ref() == Some(version) {
            return Err(UpdateError::Repository(format!("{version} is the running version")));
        }
        let tmp = self.dir.join(format!(".unpack-{version}"));
        remove_all(&tmp)?;
        std::fs::create_dir_all(&tmp).map_err(UpdateError::io(format!("creating {}", tmp.display())))?;
        let f = std::fs::File::open(tarball).map_err(UpdateError::io(format!("opening {}", tarball.display())))?;
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::with_capacity(
            1 << 20,
            f,
        )));
        let bad = |why: String| UpdateError::Target {
            name: tarball.display().to_string(),
            detail: why,
        };
        let mut total = 0u64;
        let mut entries = 0usize;
        let mut has_binary = false;
        let mut written = Vec::new();
        for entry in ar.entries().map_err(|e| bad(format!("not a .tar.gz: {e}")))? {
            let mut entry = entry.map_err(|e| bad(format!("damaged archive: {e}")))?;
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(bad(format!("more than {MAX_ENTRIES} entries")));
            }
            let path = entry.path().map_err(|e| bad(format!("entry name: {e}")))?.into_owned();
            let rel: PathBuf = path.components().filter(|c| *c != Component::CurDir).collect();
            if rel.as_os_str().is_empty() {
                continue;
            }
            if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(bad(format!("entry {} leaves the release directory", path.display())));
            }
            let kind = entry.header().entry_type();
            let out = tmp.join(&rel);
            if kind.is_dir() {
                std::fs::create_dir_all(&out).map_err(UpdateError::io(format!("creating {}", out.display())))?;
                continue;
            }
            if !kind.is_file() {
                return Err(bad(format!("entry {} is not a plain file ({kind:?})", path.display())));
            }
            let size = entry.size();
            total += size;
            if total > MAX_UNPACKED_BYTES {
                return Err(bad(format!("unpacks to more than {MAX_UNPACKED_BYTES} bytes")));
            }
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent).map_err(UpdateError::io(format!("creating {}", parent.display())))?;
            }
            let file = std::fs::File::create(&out).map_err(UpdateError::io(format!("creating {}", out.display())))?;
            // `appliance` is always executable; other files as packed.
            let packed_exec = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
            let executable = rel == Path::new(BINARY);
            let mode = if executable || packed_exec { 0o755 } else { 0o644 };
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(UpdateError::io(format!("writing {}", out.display())))?;
            let copied =
                copy_synced(&mut entry, file, size).map_err(|e| bad(format!("unpacking {}: {e}", path.display())))?;
            if copied != size {
                return Err(bad(format!("entry {} is shorter than its header says", path.display())));
            }
            has_binary |= executable;
            written.push(out);
        }
        if !has_binary {
            return Err(bad(format!("no `{BINARY}` at the top of the archive")));
        }
        crash_point("unpack-written");
        for d in dirs_of(&tmp, &written) {
            sync(&d)?;
        }
        if final_dir.exists() {
            // Say, `previous` installed again (a signed downgrade): swap
            // the two in one step, so the name never points at nothing.
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &tmp,
                nix::fcntl::AT_FDCWD,
                &final_dir,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(|e| UpdateError::io(format!("swapping {}", final_dir.display()))(std::io::Error::from(e)))?;
            sync(&self.dir)?;
            remove_all(&tmp)?;
        } else {
            std::fs::rename(&tmp, &final_dir)
                .map_err(UpdateError::io(format!("renaming to {}", final_dir.display())))?;
        }
        sync(&self.dir)?;
        crash_point("unpacked");
        Ok(final_dir)
    }

    /// Moves `current` to `version` (unpacked before), keeping the old one
    /// as `previous`, with the trial named in `state.json` first.
    pub fn switch(
        &self,
        state: &State,
        version: &Version,
        downgrade: bool,
        now: Timestamp,
    ) -> Result<State, UpdateError> {
        if let Some(p) = &state.pending {
            return Err(UpdateError::Repository(format!(
                "{} is on probation; a new switch waits until it is committed or rolled back",
                p.version
            )));
        }
        let from = self
            .link("current")
            .ok_or_else(|| UpdateError::Repository(format!("{}/current is not a version link", self.dir.display())))?;
        if !is_executable(&self.binary(version)) {
            return Err(UpdateError::Repository(format!(
                "{} is not installed",
                self.binary(version).display()
            )));
        }
        let mut s = state.clone();
        s.pending = Some(Pending {
            version: version.clone(),
            from: from.clone(),
            since: now,
            starts: 0,
            downgrade,
        });
        self.write_state(&s)?;
        crash_point("pending-written");
        self.set_link("previous", &from)?;
        crash_point("previous-switched");
        self.set_link("current", version)?;
        crash_point("current-switched");
        Ok(s)
    }

    /// Back to the version the trial came from, marking the trial bad.
    /// `by` is the version running the rollback (see `State::rolled_back`).
    pub fn roll_back(&self, state: &State, by: &Version, reason: &str, now: Timestamp) -> Result<State, UpdateError> {
        let p = state
            .pending
            .as_ref()
            .ok_or_else(|| UpdateError::Repository("no version is on probation".into()))?;
        if !is_executable(&self.binary(&p.from)) {
            return Err(UpdateError::Repository(format!(
                "the version to go back to, {}, is missing ({})",
                p.from,
                self.binary(&p.from).display()
            )));
        }
        let s = state.rolled_back(by, reason, now);
        if s.pending.is_some() {
            return Err(UpdateError::Repository(format!(
                "{by} neither is on probation nor came before it ({})",
                p.version
            )));
        }
        // The link first: a crash after it and before the state leaves the
        // old version running with the trial still named, which `on_start`
        // reads as rolled back, never the bad version running as committed.
        self.set_link("current", &p.from)?;
        self.write_state(&s)?;
        Ok(s)
    }

    /// One change of the releases directory at a time, whichever process
    /// makes it; held until dropped.
    pub fn lock(&self) -> Result<crate::repo::Lock, UpdateError> {
        crate::repo::lock_dir(&self.dir)
    }

    /// Adopts a version installed some other way (the image, a package)
    /// as the first `current`.
    pub fn adopt(&self, version: &Version, binary: &Path) -> Result<(), UpdateError> {
        let dir = self.dir.join(version.to_string());
        if !is_executable(&dir.join(BINARY)) {
            let tmp = self.dir.join(format!(".adopt-{version}"));
            remove_all(&tmp)?;
            std::fs::create_dir_all(&tmp).map_err(UpdateError::io(format!("creating {}", tmp.display())))?;
            let out = tmp.join(BINARY);
            std::fs::copy(binary, &out).map_err(UpdateError::io(format!("copying {}", binary.display())))?;
            std::fs::File::open(&out)
                .and_then(|f| {
                    f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
                    f.sync_all()
                })
                .map_err(UpdateError::io(format!("writing {}", out.display())))?;
            sync(&tmp)?;
            remove_all(&dir)?;
            std::fs::rename(&tmp, &dir).map_err(UpdateError::io(format!("renaming to {}", dir.display())))?;
        }
        if self.link("current").is_none() {
            self.set_link("current", version)?;
        }
        Ok(())
    }

    /// Removes versions other than current and previous, and leftovers of
    /// interrupted unpacking.
    pub fn prune(&self) -> Result<Vec<String>, UpdateError> {
        let keep: Vec<String> = ["current", "previous"]
            .iter()
            .filter_map(|l| self.link(l).map(|v| v.to_string()))
            .collect();
        let mut removed = Vec::new();
        let rd = std::fs::read_dir(&self.dir).map_err(UpdateError::io(format!("reading {}", self.dir.display())))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_version = name.parse::<Version>().is_ok();
            let leftover = name.starts_with(".unpack-") || name.starts_with(".adopt-");
            if (is_version && !keep.contains(&name)) || leftover {
                remove_all(&e.path())?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    fn set_link(&self, name: &str, v: &Version) -> Result<(), UpdateError> {
        let tmp = self.dir.join(format!(".{name}.new"));
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(UpdateError::io(format!("removing {}", tmp.display()))(e)),
        }
        symlink(v.to_string(), &tmp).map_err(UpdateError::io(format!("creating {}", tmp.display())))?;
        std::fs::rename(&tmp, self.dir.join(name)).map_err(UpdateError::io(format!("switching {name}")))?;
        sync(&self.dir)
    }
}

/// Copies at most `size` bytes (one more is read, to notice an entry that
/// is longer than its header) from a decoder into `file`, synced. Writing
/// and syncing run in a thread of their own, syncing every 32 MiB, so the
/// disk works while the decoder does and the final sync finds little left.
fn copy_synced(from: &mut impl Read, file: std::fs::File, size: u64) -> std::io::Result<u64> {
    const CHUNK: usize = 1 << 20;
    const BUFFERS: usize = 3;
    const SYNC_EVERY: u64 = 32 << 20;
    std::thread::scope(|scope| {
        // A fixed set of buffers goes round between the two threads, so
        // memory is the same for a 10 MB and a 500 MB release.
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(BUFFERS);
        let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        for _ in 0..BUFFERS {
            empty_tx.send(vec![0u8; CHUNK]).expect("room for every buffer");
        }
        let writer = scope.spawn(move || -> std::io::Result<()> {
            let mut file = file;
            let mut since_sync = 0u64;
            for (buf, n) in full_rx {
                std::io::Write::write_all(&mut file, &buf[..n])?;
                since_sync += n as u64;
                if since_sync >= SYNC_EVERY {
                    file.sync_data()?;
                    since_sync = 0;
                }
                if empty_tx.send(buf).is_err() {
                    break;
                }
            }
            file.sync_all()
        });
        let mut total = 0u64;
        let mut limited = from.take(size + 1);
        let result = 'chunks: loop {
            let Ok(mut buf) = empty_rx.recv() else {
                break Ok(total);
            };
            let mut filled = 0;
            while filled < CHUNK {
                match limited.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break 'chunks Err(e),
                }
            }
            if filled == 0 {
                break Ok(total);
            }
            total += filled as u64;
            if full_tx.send((buf, filled)).is_err() {
                break Ok(total);
            }
        };
        drop(full_tx);
        writer.join().expect("the writer does not panic")?;
        result
    })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn remove_all(p: &Path) -> Result<(), UpdateError> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(UpdateError::io(format!("removing {}", p.display()))(e)),
    }
}

fn sync(d: &Path) -> Result<(), UpdateError> {
    std::fs::File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(UpdateError::io(format!("syncing {}", d.display())))
}

/// `root` and every directory holding one of `files`, deepest first.
fn dirs_of(root: &Path, files: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for f in files {
        let mut p = f.parent();
        while let Some(d) = p {
            if !d.starts_with(root) {
                break;
            }
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    dirs.insert(root.to_path_buf());
    let mut v: Vec<PathBuf> = dirs.into_iter().collect();
    v.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }
    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }
    fn pending(ver: &str, from: &str, starts: u32) -> State {
        State {
            position: 0,
            floor: Some(v(from)),
            bad: BTreeSet::new(),
            pending: Some(Pending {
                version: v(ver),
                from: v(from),
                since: t("2026-12-01T02:00:00Z"),
                starts,
                downgrade: false,
            }),
            last: None,
        }
    }

    #[test]
    fn what_a_start_means() {
        let now = t("2026-12-01T02:05:00Z");
        let (s, a) = State::new(&v("0.2.0")).on_start(&v("0.2.0"), false, now);
        assert_eq!(a, OnStart::Normal);
        assert_eq!(s.floor, Some(v("0.2.0")));

        let (s, a) = pending("0.3.0", "0.2.0", 0).on_start(&v("0.3.0"), false, now);
        assert_eq!(a, OnStart::Trial { version: v("0.3.0") });
        assert_eq!(s.pending.unwrap().starts, 1);

        let (_, a) = pending("0.3.0", "0.2.0", MAX_TRIAL_STARTS).on_start(&v("0.3.0"), false, now);
        assert!(
            matches!(a, OnStart::RollBack { ref reason, .. } if reason.contains("started 3 times")),
            "{a:?}"
        );

        // Switched, never started: interrupted, not held against 0.3.0.
        let (s, a) = pending("0.3.0", "0.2.0", 0).on_start(&v("0.2.0"), false, now);
        assert_eq!(a, OnStart::Interrupted { version: v("0.3.0") });
        assert_eq!(s.pending, None);
        assert!(s.bad.is_empty());
        assert_eq!(s.last.unwrap().result, Result_::Failed);
        // Started, and now the old version runs: a rollback whose record
        // was lost; 0.3.0 is marked bad.
        let (s, a) = pending("0.3.0", "0.2.0", 1).on_start(&v("0.2.0"), false, now);
        assert_eq!(a, OnStart::RolledBack { version: v("0.3.0") });
        assert!(s.bad.contains(&v("0.3.0")) && s.pending.is_none());
        assert_eq!(s.last.unwrap().result, Result_::RolledBack);
    }

    #[test]
    fn starts_are_counted_before_they_happen_under_systemd() {
        let now = t("2026-12-01T02:05:00Z");
        let (s, b) = pending("0.3.0", "0.2.0", 0).before_start(&v("0.3.0"));
        assert_eq!(
            b,
            BeforeStart::Counted {
                version: v("0.3.0"),
                starts: 1
            }
        );
        // The supervisor that then runs does not count it again.
        let (s2, a) = s.on_start(&v("0.3.0"), true, now);
        assert_eq!(a, OnStart::Trial { version: v("0.3.0") });
        assert_eq!(s2.pending.unwrap().starts, 1);
        let (_, b) = pending("0.3.0", "0.2.0", MAX_TRIAL_STARTS).before_start(&v("0.3.0"));
        assert!(
            matches!(b, BeforeStart::RollBack { ref reason, .. } if reason.contains("started 3 times")),
            "{b:?}"
        );
        // Not the version on trial: nothing to count.
        let (_, b) = pending("0.3.0", "0.2.0", 1).before_start(&v("0.2.0"));
        assert_eq!(b, BeforeStart::Nothing);
        let (_, b) = State::new(&v("0.2.0")).before_start(&v("0.2.0"));
        assert_eq!(b, BeforeStart::Nothing);
    }

    #[test]
    fn commit_raises_the_floor_and_rollback_marks_bad() {
        let now = t("2026-12-01T02:10:00Z");
        let s = pending("0.3.0", "0.2.0", 1).committed(&v("0.3.0"), now);
        assert_eq!((s.floor.clone(), s.pending.clone()), (Some(v("0.3.0")), None));
        assert_eq!(s.last.unwrap().result, Result_::Installed);

        // Only the version on trial commits itself.
        assert_eq!(
            pending("0.3.0", "0.2.0", 1).committed(&v("0.2.0"), now),
            pending("0.3.0", "0.2.0", 1)
        );
        let s = pending("0.3.0", "0.2.0", 1).rolled_back(&v("0.3.0"), "health: bbb does not answer", now);
        assert_eq!(s.floor, Some(v("0.2.0")));
        assert!(s.bad.contains(&v("0.3.0")));
        let last = s.last.unwrap();
        assert_eq!(
            (last.result, last.reason.as_str()),
            (Result_::RolledBack, "health: bbb does not answer")
        );

        // A signed downgrade lowers the floor; an ordinary commit of an
        // older version (never planned, but) does not.
        let mut d = pending("0.1.5", "0.2.0", 1);
        d.pending.as_mut().unwrap().downgrade = true;
        assert_eq!(d.committed(&v("0.1.5"), now).floor, Some(v("0.1.5")));
        let o = pending("0.1.5", "0.2.0", 1);
        assert_eq!(o.committed(&v("0.1.5"), now).floor, Some(v("0.2.0")));
    }
}
