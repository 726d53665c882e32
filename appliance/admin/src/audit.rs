//! The audit log, and the failed-login log beside it.
//!
//! The audit log (`audit.jsonl`, 0600) holds what people who got in did:
//! setup, logins, logouts, every operator action and every refusal of a
//! logged-in user, with who, what, when and from where; one JSON line each,
//! appended and fsynced. Only such entries go in, so traffic from people
//! who did not get in can neither push an operator's action out of it nor
//! fill the disk; it is trimmed to its last entries past a bound that
//! only real use reaches, and rewritten with its mode.
//!
//! Failed logins and wrong setup codes (anyone on the network can make
//! them) go to the failed-login log (`failed-logins.json`, 0600): counted
//! per address and 10-minute window, with at most a few of the names
//! tried, and at most [`MAX_WINDOWS`] windows. It is rewritten at most
//! every few seconds.
//!
//! Every stored string is cut to [`MAX_FIELD`] bytes and has its control
//! characters escaped, so a name with a newline cannot forge a line in a
//! log, and a 2 MB name cannot grow one.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Entries kept when the audit log is trimmed (it is trimmed at twice this).
const KEEP: usize = 10_000;
/// The longest stored text, in bytes.
pub const MAX_FIELD: usize = 200;
/// Failed-login windows kept (the oldest go first).
pub const MAX_WINDOWS: usize = 2_000;
/// One window per address lasts this long.
pub const WINDOW_SECS: f64 = 600.0;
/// Names kept per window.
pub const NAMES_PER_WINDOW: usize = 5;
/// The failed-login file is rewritten at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// `s` as it may be stored and shown: control characters escaped (a
/// newline becomes `\n`), cut to [`MAX_FIELD`] bytes on a character
/// boundary (with `…` when cut).
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_FIELD));
    for c in s.chars() {
        let piece: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        if out.len() + piece.len() > MAX_FIELD {
            out.push('…');
            break;
        }
        out.push_str(&piece);
    }
    out
}

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

impl Entry {
    fn cleaned(&self) -> Entry {
        Entry {
            at: self.at,
            user: clean(&self.user),
            from: clean(&self.from),
            action: clean(&self.action),
            target: clean(&self.target),
            outcome: clean(&self.outcome),
        }
    }
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// Pass as `before` for the next (older) page; `None` on the last.
    pub next_before: Option<usize>,
    pub total: usize,
}

#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    lock: Mutex<usize>,
    failed: FailedLogins,
    keep: usize,
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
            failed: FailedLogins::open(&dir.join("failed-logins.json")),
            keep: KEEP,
        }
    }

    /// Appends an entry of someone who got in (or a setup that succeeded).
    /// A failure to write is logged, not fatal: the action itself has
    /// already happened or been refused.
    pub fn record(&self, e: &Entry) {
        let e = e.cleaned();
        let mut count = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let line = match serde_json::to_string(&e) {
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
        if *count > self.keep * 2 {
            let kept = self.tail(self.keep);
            let text: String = kept
                .iter()
                .filter_map(|e| serde_json::to_string(e).ok())
                .map(|l| l + "\n")
                .collect();
            match appliance_certs::write_atomic(&self.path, text.as_bytes(), 0o600) {
                Ok(()) => *count = kept.len(),
                Err(err) => log::error!("trimming the audit log: {err}"),
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

    /// A failed login or a wrong setup code from `from`: counted in the
    /// failed-login log, never in the audit log.
    pub fn failed_login(&self, from: &str, user: &str, reason: &str, now: f64) {
        self.failed.record(from, user, reason, now);
    }

    /// The failed-login windows, newest first.
    pub fn failed_logins(&self) -> Vec<FailedWindow> {
        self.failed.windows()
    }

    /// The newest `n` entries, newest last.
    pub fn tail(&self, n: usize) -> Vec<Entry> {
        let all = self.all();
        let skip = all.len().saturating_sub(n);
        all.into_iter().skip(skip).collect()
    }

    /// Up to `limit` entries older than entry number `before` (all when
    /// `None`), newest first.
    pub fn page(&self, before: Option<usize>, limit: usize) -> Page {
        let all = self.all();
        let total = all.len();
        let end = before.unwrap_or(total).min(total);
        let start = end.saturating_sub(limit);
        Page {
            entries: all[start..end].iter().rev().cloned().collect(),
            next_before: (start > 0).then_some(start),
            total,
        }
    }

    fn all(&self) -> Vec<Entry> {
        let Ok(f) = fs::File::open(&self.path) else {
            return Vec::new();
        };
        BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }
}

/// Failed logins from one address in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedWindow {
    pub from: String,
    /// Unix seconds of the first and the last attempt.
    pub since: f64,
    pub last: f64,
    pub attempts: u64,
    /// The first few names tried (cleaned).
    pub users: Vec<String>,
    pub last_reason: String,
}

#[derive(Debug)]
struct FailedLogins {
    path: PathBuf,
    inner: Mutex<FailedInner>,
}

#[derive(Debug)]
struct FailedInner {
    windows: VecDeque<FailedWindow>,
    saved: Option<Instant>,
}

impl FailedLogins {
    fn open(path: &Path) -> FailedLogins {
        let windows = fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<VecDeque<FailedWindow>>(&b).ok())
            .unwrap_or_default();
        FailedLogins {
            path: path.to_path_buf(),
            inner: Mutex::new(FailedInner { windows, saved: None }),
        }
    }

    fn record(&self, from: &str, user: &str, reason: &str, now: f64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (from, user, reason) = (clean(from), clean(user), clean(reason));
        match g
            .windows
            .iter_mut()
            .rev()
            .find(|w| w.from == from && now - w.since < WINDOW_SECS)
        {
            Some(w) => {
                w.attempts += 1;
                w.last = now;
                w.last_reason = reason;
                if w.users.len() < NAMES_PER_WINDOW && !w.users.contains(&user) {
                    w.users.push(user);
                }
            }
            None => {
                log::warn!("failed login from {from} as {user}: {reason}");
                g.windows.push_back(FailedWindow {
                    from,
                    since: now,
                    last: now,
                    attempts: 1,
                    users: vec![user],
                    last_reason: reason,
                });
                while g.windows.len() > MAX_WINDOWS {
                    g.windows.pop_front();
                }
            }
        }
        if g.saved.is_none_or(|t| t.elapsed() >= SAVE_EVERY) {
            g.saved = Some(Instant::now());
            let data = serde_json::to_vec(&g.windows).unwrap_or_default();
            if let Err(e) = appliance_certs::write_atomic(&self.path, &data, 0o600) {
                log::error!("failed-login log: {e}");
            }
        }
    }

    fn windows(&self) -> Vec<FailedWindow> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.windows.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn entry(i: usize) -> Entry {
        Entry {
            at: i as f64,
            user: "operator".into(),
            from: "192.0.2.1".into(),
            action: "restart".into(),
            target: format!("svc{i}"),
            outcome: "ok".into(),
        }
    }

    #[test]
    fn appends_reads_back_and_pages() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(d.path());
        for i in 0..5 {
            log.record(&entry(i));
        }
        let t = log.tail(2);
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].target, "svc4");
        assert_eq!(AuditLog::open(d.path()).tail(10).len(), 5, "kept across restarts");
        let p = log.page(None, 2);
        assert_eq!(
            (
                p.entries.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
                p.next_before,
                p.total
            ),
            (vec!["svc4", "svc3"], Some(3), 5)
        );
        let p = log.page(Some(3), 2);
        assert_eq!(p.entries[0].target, "svc2");
        let p = log.page(Some(1), 2);
        assert_eq!((p.entries.len(), p.next_before), (1, None));
    }

    #[test]
    fn strings_are_escaped_and_cut() {
        assert_eq!(clean("x\nINFO forged line\r"), "x\\nINFO forged line\\r");
        assert_eq!(clean("\u{1b}[31mred"), "\\u{1b}[31mred");
        let long = clean(&"é".repeat(10_000));
        assert!(long.len() <= MAX_FIELD + '…'.len_utf8() && long.ends_with('…'));
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(d.path());
        log.record(&Entry {
            user: "a\nb".repeat(1000),
            ..entry(0)
        });
        let text = fs::read_to_string(d.path().join("audit.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.len() < 2 * MAX_FIELD + 200, "{}", text.len());
    }

    #[test]
    fn failed_logins_never_touch_the_audit_log_and_stay_bounded() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(d.path());
        log.record(&entry(1));
        // 20,000 failures with 10 KB names from 5,000 addresses.
        for i in 0..20_000u32 {
            let from = format!("10.0.{}.{}", (i % 5000) / 250, i % 250);
            log.failed_login(&from, &"x".repeat(10_000), "wrong user name or password", f64::from(i));
        }
        assert_eq!(
            log.tail(10),
            vec![entry(1)],
            "the operator's action is still there, alone"
        );
        let w = log.failed_logins();
        assert!(w.len() <= MAX_WINDOWS);
        assert!(w.iter().all(|w| w.users.len() <= NAMES_PER_WINDOW));
        let size = fs::metadata(d.path().join("failed-logins.json")).unwrap().len();
        assert!(size < 2 << 20, "{size} bytes");
        let mode = fs::metadata(d.path().join("failed-logins.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // One address, one window: one line with the count.
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(d.path());
        for i in 0..100 {
            log.failed_login("192.0.2.7", &format!("u{i}"), "wrong", f64::from(i));
        }
        let w = log.failed_logins();
        assert_eq!((w.len(), w[0].attempts, w[0].users.len()), (1, 100, NAMES_PER_WINDOW));
    }

    #[test]
    fn a_trimmed_audit_log_keeps_its_mode() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog {
            keep: 10,
            ..AuditLog::open(d.path())
        };
        for i in 0..21 {
            log.record(&entry(i));
        }
        let path = d.path().join("audit.jsonl");
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 10);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
