//! Logging: to the journal when systemd started us with our stderr
//! connected to it (JOURNAL_STREAM), to stderr otherwise.

use log::LevelFilter;

pub fn init(level: LevelFilter) {
    // RUST_LOG, when set, overrides the config for a debugging session.
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(level);
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            if j.with_syslog_identifier("appliance".into()).install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .format_target(false)
        .target(env_logger::Target::Stderr)
        .try_init();
}
