//! The audit log: every operator action (and every login, setup and
//! refusal) with who, what, when and from where, one JSON line each in
//! `audit.jsonl` in the state dir. Appended and fsynced; never rewritten
//! except to trim it to its last lines when it grows past a bound.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Entries kept when the file is trimmed.
const KEEP: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix seconds.
    pub at: f64,
    /// Account name, or "-" before login.
    pub user: String,
    pub from: String,
    pub action: String,
    pub target: String,
    /// "ok", or why it was refused or failed.
    pub outcome: String,
}

#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    lock: Mutex<usize>,
}

impl AuditLog {
    pub fn open(dir: &Path) -> AuditLog {
        let path = dir.join("audit.jsonl");
        let lines = fs::File::open(&path)
            .map(|f| BufReader::new(f).lines().count())
            .unwrap_or(0);
        AuditLog {
            path,
            lock: Mutex::new(lines),
        }
    }

    /// Appends an entry. A failure to write is logged, not fatal: the action
    /// itself has already happened or been refused.
    pub fn record(&self, e: &Entry) {
        let mut count = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let line = match serde_json::to_string(e) {
            Ok(l) => l,
            Err(err) => {
                log::error!("audit entry not serialisable: {err}");
                return;
            }
        };
        let res = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()).and_then(|_| f.sync_data()));
        match res {
            Ok(()) => *count += 1,
            Err(err) => log::error!("audit log {}: {err}", self.path.display()),
        }
        if *count > KEEP * 2 {
            let kept = self.tail(KEEP);
            let text: String = kept
                .iter()
                .filter_map(|e| serde_json::to_string(e).ok())
                .map(|l| l + "\n")
                .collect();
            let tmp = self.path.with_extension("tmp");
            if fs::write(&tmp, text).and_then(|_| fs::rename(&tmp, &self.path)).is_ok() {
                *count = kept.len();
            }
        }
        log::info!(
            "audit: {} from {} {} {}: {}",
            e.user,
            e.from,
            e.action,
            e.target,
            e.outcome
        );
    }

    /// The newest `n` entries, newest last.
    pub fn tail(&self, n: usize) -> Vec<Entry> {
        let Ok(f) = fs::File::open(&self.path) else {
            return Vec::new();
        };
        let all: Vec<Entry> = BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect();
        let skip = all.len().saturating_sub(n);
        all.into_iter().skip(skip).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(d.path());
        for i in 0..3 {
            log.record(&Entry {
                at: i as f64,
                user: "operator".into(),
                from: "192.0.2.1".into(),
                action: "restart".into(),
                target: format!("svc{i}"),
                outcome: "ok".into(),
            });
        }
        let t = log.tail(2);
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].target, "svc2");
        assert_eq!(AuditLog::open(d.path()).tail(10).len(), 3, "kept across restarts");
    }
}
