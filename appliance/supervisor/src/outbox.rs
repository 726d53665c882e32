//! The durable outbox of usage reports: one file per signed report,
//! named by its last sequence number, written with fsync (file, then
//! directory) before it counts as written. Reports leave in order and are
//! deleted only once ops has acknowledged them.
//!
//! Bounded: past `max_reports`, the oldest reports after the head are
//! merged pairwise (sums add, peaks take the larger, every meeting and gap
//! is kept), never dropped, and only within one UTC month and one
//! enrollment ([`Report::can_merge`]): a merge across the 1st would bill
//! one month's usage to another. The head is left alone because it is the
//! only one that may have reached ops unacknowledged; a merged report
//! carries the range of the sequence numbers it replaces.

use std::fs;
use std::path::{Path, PathBuf};

use appliance_usage::{Envelope, NodeKey, Report};

#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
}

/// A report in the outbox.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub seq_from: u64,
    pub seq_to: u64,
    pub envelope: Envelope,
}

/// Writes a file so that a crash leaves either nothing or all of it, and
/// it is on disk when this returns.
pub fn write_durable(path: &Path, data: &[u8]) -> std::io::Result<()> {
    appliance_certs::write_atomic(path, data, 0o600).map_err(std::io::Error::other)
}

/// A file's bytes, `None` when it does not exist; any other failure to read
/// it is an error (naming the file), never "absent".
pub fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl Outbox {
    pub fn open(dir: &Path) -> std::io::Result<Outbox> {
        fs::create_dir_all(dir)?;
        let o = Outbox { dir: dir.to_path_buf() };
        o.drop_contained()?;
        Ok(o)
    }

    /// Stores a signed report.
    pub fn put(&self, env: &Envelope, seq_to: u64) -> std::io::Result<()> {
        let data = serde_json::to_vec(env).map_err(std::io::Error::other)?;
        write_durable(&self.dir.join(format!("{seq_to:020}.json")), &data)
    }

    /// Every report, oldest first. Unreadable files are skipped (and kept).
    pub fn list(&self) -> Vec<Entry> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Entry> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|path| {
                let envelope: Envelope = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
                let r: Report = serde_json::from_str(&envelope.report).ok()?;
                Some(Entry {
                    path,
                    seq_from: r.seq_from,
                    seq_to: r.seq_to,
                    envelope,
                })
            })
            .collect();
        out.sort_by_key(|e| e.seq_to);
        out
    }

    /// Sequence numbers and paths from the file names alone (cheap: no
    /// file is read), oldest first.
    fn names(&self) -> Vec<(u64, PathBuf)> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<(u64, PathBuf)> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter_map(|p| {
                let n = p.file_name()?.to_str()?.strip_suffix(".json")?.parse::<u64>().ok()?;
                Some((n, p))
            })
            .collect();
        out.sort();
        out
    }

    /// The oldest report below `next` (the one to send), reading only it.
    pub fn head_below(&self, next: u64) -> Option<Entry> {
        for (n, path) in self.names().into_iter().take_while(|(n, _)| *n < next) {
            let Ok(b) = fs::read(&path) else { continue };
            let Ok(envelope) = serde_json::from_slice::<Envelope>(&b) else {
                continue;
            };
            let Ok(r) = serde_json::from_str::<Report>(&envelope.report) else {
                continue;
            };
            return Some(Entry {
                path,
                seq_from: r.seq_from,
                seq_to: n.max(r.seq_to),
                envelope,
            });
        }
        None
    }

    pub fn len(&self) -> usize {
        self.names().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The highest sequence number in the outbox, if any.
    pub fn max_seq(&self) -> Option<u64> {
        self.names().last().map(|(n, _)| *n)
    }

    /// Removes an acknowledged report.
    pub fn remove(&self, e: &Entry) -> std::io::Result<()> {
        fs::remove_file(&e.path)?;
        sync_dir(&self.dir)
    }

    /// Re-signs queued reports of another enrollment (or node id) as
    /// reports of this one, keeping their numbers: after the node enrolled
    /// again (a new key, another ops), reports of the old enrollment would
    /// be refused for good and hold up the queue. Ops takes a re-signed
    /// report it already has (same period, same figures) as a duplicate.
    /// Reports in the form from before enrollments were numbered (0) keep
    /// that form. Returns how many were re-signed.
    pub fn reseal(&self, key: &NodeKey, node_id: &str, epoch: u64) -> std::io::Result<usize> {
        let mut n = 0;
        for e in self.list() {
            let Ok(mut r) = serde_json::from_str::<Report>(&e.envelope.report) else {
                continue;
            };
            let stale = r.node_id != node_id || (r.epoch != 0 && r.epoch != epoch);
            // The signature is checked too: a key that changed makes every
            // queued report stale.
            if !stale && e.envelope.open(&key.public_key()).is_ok() {
                continue;
            }
            r.node_id = node_id.to_string();
            if r.epoch != 0 {
                r.epoch = epoch;
            }
            let data = serde_json::to_vec(&key.seal(&r)).map_err(std::io::Error::other)?;
            write_durable(&e.path, &data)?;
            n += 1;
        }
        Ok(n)
    }

    /// A crash (or a failed delete) between writing a merged report and
    /// deleting the ones it replaced leaves both: the ones inside a merged
    /// range go.
    pub fn drop_contained(&self) -> std::io::Result<()> {
        let all = self.list();
        for e in &all {
            if all.iter().any(|o| {
                o.path != e.path
                    && o.seq_from <= e.seq_from
                    && e.seq_to <= o.seq_to
                    && (o.seq_from, o.seq_to) != (e.seq_from, e.seq_to)
            }) {
                log::info!("outbox: {} is inside a merged report; removing it", e.path.display());
                fs::remove_file(&e.path)?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Merges old reports until at most `max` remain (the head untouched),
    /// as far as months and enrollments allow. Returns how many merges
    /// were made.
    pub fn bound(&self, max: usize, key: &NodeKey) -> std::io::Result<usize> {
        let max = max.max(2);
        if self.len() <= max {
            return Ok(0);
        }
        let mut all: Vec<(Entry, Report)> = self
            .list()
            .into_iter()
            .filter_map(|e| {
                let r: Report = serde_json::from_str(&e.envelope.report).ok()?;
                Some((e, r))
            })
            .collect();
        let mut merges = 0;
        let mut i = 1;
        while all.len() > max && i + 1 < all.len() {
            if !all[i].1.can_merge(&all[i + 1].1) {
                i += 1;
                continue;
            }
            let mut merged = all[i].1.clone();
            merged.merge(&all[i + 1].1);
            let env = key.seal(&merged);
            // Replace the later one (same name: the range ends at its
            // number), then drop the earlier one.
            let data = serde_json::to_vec(&env).map_err(std::io::Error::other)?;
            write_durable(&all[i + 1].0.path, &data)?;
            fs::remove_file(&all[i].0.path)?;
            sync_dir(&self.dir)?;
            let (e, _) = all.remove(i);
            let later = &mut all[i];
            later.0.seq_from = e.seq_from;
            later.0.envelope = env;
            later.1 = merged;
            merges += 1;
        }
        if all.len() > max {
            log::warn!(
                "outbox: {} reports wait, more than the {max} wanted; the rest cannot be merged without crossing a month",
                all.len()
            );
        }
        Ok(merges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_usage::MemberUsage;
    use appliance_usage::protocol::{MemberLine, Resources};

    fn report(seq: u64) -> Report {
        Report {
            node_id: "n".into(),
            epoch: 1,
            seq_from: seq,
            seq_to: seq,
            from: seq as i64 * 300,
            to: seq as i64 * 300 + 300,
            firmware: "0.1.0".into(),
            usage: vec![MemberLine {
                member: "a".into(),
                usage: MemberUsage {
                    meeting_seconds: 300,
                    participant_seconds: seq,
                    peak_participants: seq as u32,
                },
            }],
            meetings: vec![],
            gaps: vec![],
            resources: Resources::default(),
            health: "ok".into(),
            services: String::new(),
            update: None,
            members: vec![],
        }
    }

    #[test]
    fn bounded_by_merging_and_nothing_lost() {
        let d = tempfile::tempdir().unwrap();
        let o = Outbox::open(d.path()).unwrap();
        let k = NodeKey::from_pkcs8(&NodeKey::generate().unwrap()).unwrap();
        for s in 1..=10 {
            o.put(&k.seal(&report(s)), s).unwrap();
        }
        assert_eq!(o.len(), 10);
        let merges = o.bound(4, &k).unwrap();
        assert_eq!(merges, 6);
        let all = o.list();
        assert_eq!(
            all.iter().map(|e| (e.seq_from, e.seq_to)).collect::<Vec<_>>(),
            [(1, 1), (2, 8), (9, 9), (10, 10)]
        );
        let merged: Report = all[1].envelope.open(&k.public_key()).unwrap();
        assert_eq!(merged.usage[0].usage.participant_seconds, (2..=8).sum::<u64>());
        assert_eq!(merged.usage[0].usage.meeting_seconds, 7 * 300);
        assert_eq!(merged.usage[0].usage.peak_participants, 8);
        assert_eq!((merged.from, merged.to), (600, 2700));
        // A crash left a replaced report beside its merged one: it goes.
        o.put(&k.seal(&report(5)), 5).unwrap();
        let o = Outbox::open(d.path()).unwrap();
        assert_eq!(o.len(), 4);
        o.remove(&o.list()[0]).unwrap();
        assert_eq!(o.list()[0].seq_to, 8);
        // Garbage in the directory is ignored, not fatal.
        fs::write(d.path().join("junk.json"), "not json").unwrap();
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn merges_never_cross_a_month() {
        use appliance_usage::Month;
        let d = tempfile::tempdir().unwrap();
        let o = Outbox::open(d.path()).unwrap();
        let k = NodeKey::from_pkcs8(&NodeKey::generate().unwrap()).unwrap();
        // Reports 1-6 in October's last half hour, 7-12 in November's first.
        let b = Month::parse("2026-11").unwrap().start();
        for s in 1..=12u64 {
            let from = b - 1800 + (s as i64 - 1) * 300;
            o.put(
                &k.seal(&Report {
                    from,
                    to: from + 300,
                    ..report(s)
                }),
                s,
            )
            .unwrap();
        }
        o.bound(2, &k).unwrap();
        let all: Vec<Report> = o
            .list()
            .iter()
            .map(|e| e.envelope.open(&k.public_key()).unwrap())
            .collect();
        assert_eq!(
            all.iter()
                .map(|r| (r.seq_from, r.seq_to, r.month().to_string()))
                .collect::<Vec<_>>(),
            [
                (1, 1, "2026-10".to_string()),
                (2, 6, "2026-10".to_string()),
                (7, 12, "2026-11".to_string())
            ],
            "as few as the months allow, none across the 1st"
        );
        assert_eq!((all[1].from, all[1].to), (b - 1500, b));
        assert_eq!((all[2].from, all[2].to), (b, b + 1800));
        assert_eq!(all[2].usage[0].usage.meeting_seconds, 6 * 300);
    }

    #[test]
    fn queued_reports_follow_a_new_enrollment() {
        let d = tempfile::tempdir().unwrap();
        let o = Outbox::open(d.path()).unwrap();
        let old = NodeKey::from_pkcs8(&NodeKey::generate().unwrap()).unwrap();
        let new = NodeKey::from_pkcs8(&NodeKey::generate().unwrap()).unwrap();
        o.put(&old.seal(&report(1)), 1).unwrap();
        o.put(&old.seal(&Report { epoch: 0, ..report(2) }), 2).unwrap();
        assert_eq!(o.reseal(&old, "n", 1).unwrap(), 0, "nothing to do");
        assert_eq!(o.reseal(&new, "n", 2).unwrap(), 2);
        let all: Vec<Report> = o
            .list()
            .iter()
            .map(|e| e.envelope.open(&new.public_key()).unwrap())
            .collect();
        assert_eq!(
            all.iter().map(|r| (r.seq_to, r.epoch)).collect::<Vec<_>>(),
            [(1, 2), (2, 0)],
            "numbers kept; the old form stays the old form"
        );
        assert_eq!(all[0].usage, report(1).usage);
        assert_eq!(o.reseal(&new, "n", 2).unwrap(), 0, "once");
    }
}
