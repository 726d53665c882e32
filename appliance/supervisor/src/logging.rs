//! Logging: to the journal when systemd started us with our stderr
//! connected to it (JOURNAL_STREAM), to stderr otherwise; and always into
//! a small in-memory ring that the admin page's Logs page shows, so the
//! supervisor's own log is visible even where there is no journal.
//!
//! Nothing secret is ever logged (passwords, tokens, setup codes and the
//! BBB secret never reach a log call), so the ring holds nothing secret.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use appliance_api::LogLine;
use log::{LevelFilter, Log, Metadata, Record};

/// Lines kept in memory.
const RING: usize = 2000;

static LINES: Mutex<VecDeque<LogLine>> = Mutex::new(VecDeque::new());

struct Tee {
    inner: Box<dyn Log>,
}

impl Log for Tee {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.inner.enabled(m)
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        self.inner.log(r);
        let priority = match r.level() {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            log::Level::Debug | log::Level::Trace => 7,
        };
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut q = LINES.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= RING {
            q.pop_front();
        }
        q.push_back(LogLine {
            at,
            unit: "appliance".into(),
            priority,
            message: r.args().to_string(),
        });
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

pub fn init(level: LevelFilter) {
    // RUST_LOG, when set, overrides the config for a debugging session.
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(level);
    let inner: Box<dyn Log> = match systemd_journal_logger::JournalLog::new() {
        Ok(j) if systemd_journal_logger::connected_to_journal() => {
            Box::new(j.with_syslog_identifier("appliance".into()))
        }
        _ => Box::new(
            env_logger::Builder::new()
                .filter_level(level)
                .format_target(false)
                .target(env_logger::Target::Stderr)
                .build(),
        ),
    };
    if log::set_boxed_logger(Box::new(Tee { inner })).is_ok() {
        log::set_max_level(level);
    }
}

/// The supervisor's recent log lines, oldest first.
pub fn recent() -> Vec<LogLine> {
    LINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}
