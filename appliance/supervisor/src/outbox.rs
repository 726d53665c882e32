//! The durable outbox of usage reports: one file per signed report,
//! named by its last sequence number, written with fsync (file, then
//! directory) before it counts as written. Reports leave in order and are
//! deleted only once ops has acknowledged them.
//!
//! Bounded: past `max_reports`, the oldest reports after the head are
//! merged pairwise (sums add, peaks take the larger, every meeting and gap
//! is kept), never dropped. The head is left alone because it is the only
//! one that may have reached ops unacknowledged; a merged report carries
//! the range of the sequence numbers it replaces.

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

    /// A crash between writing a merged report and deleting the ones it
    /// replaced leaves both: the ones inside a merged range go.
    fn drop_contained(&self) -> std::io::Result<()> {
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

    /// Merges old reports until at most `max` remain (the head untouched).
    /// Returns how many merges were made.
    pub fn bound(&self, max: usize, key: &NodeKey) -> std::io::Result<usize> {
        let mut merges = 0;
        loop {
            if self.len() <= max.max(2) {
                return Ok(merges);
            }
            let all = self.list();
            if all.len() <= max.max(2) {
                return Ok(merges);
            }
            let (a, b) = (&all[1], &all[2]);
            let mut ra: Report = serde_json::from_str(&a.envelope.report).map_err(std::io::Error::other)?;
            let rb: Report = serde_json::from_str(&b.envelope.report).map_err(std::io::Error::other)?;
            ra.merge(&rb);
            let env = key.seal(&ra);
            // Replace b (same name: the range ends at b's number), then drop a.
            let data = serde_json::to_vec(&env).map_err(std::io::Error::other)?;
            write_durable(&b.path, &data)?;
            fs::remove_file(&a.path)?;
            sync_dir(&self.dir)?;
            merges += 1;
        }
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
}
