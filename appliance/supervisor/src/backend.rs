//! What the admin page asks of the supervisor, answered from the shared
//! state, the service runtime and the journal.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use appliance_api::{ActionError, BoxFuture, LogLine, LogQuery, ServiceAction};
use appliance_monitor::history::Window;
use appliance_services::runtime::{Command, CommandError};
use tokio::sync::oneshot;

use crate::metrics;
use crate::state::{Shared, lock};

pub struct Backend(pub Arc<Shared>);

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl appliance_api::Backend for Backend {
    fn metrics(&self) -> String {
        metrics::render(&self.0.status(), metrics::ProcessStats::current())
    }

    fn alive(&self) -> bool {
        self.0.alive()
    }

    fn status(&self) -> appliance_api::Status {
        self.0.status()
    }

    fn series(&self) -> Vec<String> {
        lock(&self.0.history).names().map(str::to_string).collect()
    }

    fn history(&self, series: &str, window: Window) -> Vec<(u64, Option<f32>)> {
        lock(&self.0.history).query(series, window)
    }

    fn update_action(&self, action: appliance_api::UpdateAction) -> Result<String, ActionError> {
        crate::update::request(&self.0, action)
    }

    fn ssh(&self) -> appliance_api::SshView {
        crate::ssh::view(&self.0.state_dir)
    }

    fn ssh_action(&self, action: appliance_api::SshAction, by: String) -> BoxFuture<'_, Result<String, ActionError>> {
        Box::pin(async move { crate::ssh::act(&self.0.state_dir, action, &by).await })
    }

    fn members(&self) -> Vec<appliance_members::MemberView> {
        self.0.members.current().views(unix_now())
    }

    fn members_action(&self, action: appliance_members::Action) -> Result<appliance_members::Outcome, ActionError> {
        self.0.members.act(&action, unix_now())
    }

    fn service_action(&self, name: String, action: ServiceAction) -> BoxFuture<'_, Result<String, ActionError>> {
        Box::pin(async move { service_action(&self.0, name, action).await })
    }

    fn logs(&self, q: LogQuery) -> BoxFuture<'_, Result<Vec<LogLine>, ActionError>> {
        Box::pin(async move {
            match q.unit.as_deref() {
                None | Some("appliance") => Ok(filter(crate::logging::recent(), &q)),
                Some(unit) => {
                    let known = lock(&self.0.services)
                        .as_ref()
                        .is_some_and(|s| s.services.iter().any(|x| x.unit == unit));
                    if !known {
                        return Err(ActionError::NotFound(format!(
                            "{unit} is not a unit of this node's recipe"
                        )));
                    }
                    journal(unit, &q).await.map_err(ActionError::Unavailable)
                }
            }
        })
    }

    fn support_files(&self) -> Vec<(String, Vec<u8>)> {
        let s = &self.0;
        let status = s.status();
        let mut files = vec![
            ("README.txt".to_string(), b"Support bundle of a city node: status, services, hardware profile, the config with secrets redacted, recent supervisor log lines, metrics and the audit log. It holds no passwords, session tokens, setup codes or keys.\n".to_vec()),
            ("status.json".into(), serde_json::to_vec_pretty(&status).unwrap_or_default()),
            ("metrics.txt".into(), metrics::render(&status, metrics::ProcessStats::current()).into_bytes()),
            ("hw-profile.toml".into(), toml::to_string(&s.id.profile).unwrap_or_default().into_bytes()),
            ("version.txt".into(), format!("{}\n", s.id.version).into_bytes()),
        ];
        if let Some(sv) = &status.services {
            files.push((
                "services.json".into(),
                serde_json::to_vec_pretty(sv).unwrap_or_default(),
            ));
        }
        let config = fs::read_to_string(&s.config_path)
            .map(|t| appliance_admin::bundle::redact_toml(&t))
            .unwrap_or_else(|e| format!("# cannot read {}: {e}\n", s.config_path.display()));
        files.push(("config.toml".into(), config.into_bytes()));
        let log: String = crate::logging::recent()
            .iter()
            .map(|l| format!("{:.3} {} {}\n", l.at, l.priority, l.message))
            .collect();
        files.push(("supervisor.log".into(), log.into_bytes()));
        files
    }
    fn enroll(&self, ops: String, token: String) -> BoxFuture<'_, Result<String, ActionError>> {
        Box::pin(async move {
            let s = &self.0;
            s.reports
                .enroll(&s.state_dir, &ops, &token, true, &s.node_facts())
                .await
                .map_err(|e| e.action_error())
        })
    }

    fn install_certificate(&self, cert_pem: String, key_pem: String) -> Result<String, ActionError> {
        crate::certs::install(&self.0, &cert_pem, &key_pem)
    }

    fn certificate(&self) -> appliance_api::CertificateView {
        let c = lock(&self.0.cert).clone();
        appliance_api::CertificateView {
            fingerprint_sha256: c.fingerprint_sha256,
            not_after: c.not_after,
            generated: c.generated,
        }
    }
}

/// Runs an operator's service action through the service runtime.
pub async fn service_action(s: &Shared, name: String, action: ServiceAction) -> Result<String, ActionError> {
    let Some(tx) = s.service_commands.clone() else {
        return Err(ActionError::NotFound(
            "no recipe is configured on this node ([services] recipe)".into(),
        ));
    };
    let (reply, rx) = oneshot::channel();
    let cmd = match action {
        ServiceAction::Restart => Command::Restart { name, reply },
        ServiceAction::Reset => Command::Reset { name, reply },
    };
    let gone = || ActionError::Unavailable("the service runtime is not running".into());
    tx.send(cmd).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?.map_err(|e| match e {
        CommandError::UnknownService { .. } => ActionError::NotFound(e.to_string()),
        CommandError::Busy(_) => ActionError::Conflict(e.to_string()),
        CommandError::Failed(_) => ActionError::Failed(e.to_string()),
        CommandError::NotRunning(_) => ActionError::Unavailable(e.to_string()),
    })
}

fn filter(lines: Vec<LogLine>, q: &LogQuery) -> Vec<LogLine> {
    let needle = q.contains.as_deref().map(str::to_lowercase);
    let mut out: Vec<LogLine> = lines
        .into_iter()
        .filter(|l| needle.as_deref().is_none_or(|n| l.message.to_lowercase().contains(n)))
        .collect();
    let skip = out.len().saturating_sub(q.limit);
    out.drain(..skip);
    out
}

/// A unit's journal through `journalctl -o json` (the journal files have
/// no stable library format; journalctl is the supported reader).
async fn journal(unit: &str, q: &LogQuery) -> Result<Vec<LogLine>, String> {
    let mut cmd = tokio::process::Command::new("journalctl");
    // A journalctl that outlives its timeout is killed, not left running.
    cmd.kill_on_drop(true);
    cmd.args(["--no-pager", "-o", "json", "-u", unit, "-n"])
        .arg(q.limit.to_string());
    if let Some(c) = &q.contains {
        cmd.args(["--grep", c, "--case-sensitive=false"]);
    }
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .map_err(|_| "journalctl did not answer within 10 s".to_string())?
        .map_err(|e| format!("the journal is not available here (journalctl: {e})"))?;
    if !out.status.success() && out.stdout.is_empty() {
        let err = String::from_utf8_lossy(&out.stderr);
        // --grep finding nothing exits 1 with no output.
        if err.trim().is_empty() {
            return Ok(vec![]);
        }
        return Err(format!("journalctl: {}", err.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| parse_journal_line(unit, l))
        .collect())
}

/// One line of `journalctl -o json`.
pub fn parse_journal_line(unit: &str, line: &str) -> Option<LogLine> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let message = match &v["MESSAGE"] {
        serde_json::Value::String(s) => s.clone(),
        // Non-UTF-8 messages come as arrays of bytes.
        serde_json::Value::Array(b) => {
            String::from_utf8_lossy(&b.iter().filter_map(|x| x.as_u64().map(|n| n as u8)).collect::<Vec<_>>())
                .into_owned()
        }
        _ => return None,
    };
    let at = v["__REALTIME_TIMESTAMP"]
        .as_str()
        .and_then(|t| t.parse::<f64>().ok())
        .map(|us| us / 1e6)
        .unwrap_or(0.0);
    let priority = v["PRIORITY"].as_str().and_then(|p| p.parse().ok()).unwrap_or(6);
    Some(LogLine {
        at,
        unit: unit.to_string(),
        priority,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_and_filters() {
        let l = parse_journal_line(
            "nginx.service",
            r#"{"MESSAGE":"started","__REALTIME_TIMESTAMP":"1700000000123456","PRIORITY":"4"}"#,
        )
        .unwrap();
        assert_eq!(
            (l.at, l.priority, l.message.as_str()),
            (1700000000.123456, 4, "started")
        );
        let b = parse_journal_line("x", r#"{"MESSAGE":[104,105],"__REALTIME_TIMESTAMP":"1"}"#).unwrap();
        assert_eq!(b.message, "hi");
        assert!(parse_journal_line("x", "not json").is_none());
        let lines: Vec<LogLine> = (0..5)
            .map(|i| LogLine {
                at: i as f64,
                unit: "a".into(),
                priority: 6,
                message: format!("line {i}"),
            })
            .collect();
        let q = LogQuery {
            unit: None,
            contains: Some("LINE".into()),
            limit: 2,
        };
        assert_eq!(
            filter(lines.clone(), &q)
                .iter()
                .map(|l| l.message.as_str())
                .collect::<Vec<_>>(),
            ["line 3", "line 4"]
        );
        let q = LogQuery {
            unit: None,
            contains: Some("3".into()),
            limit: 10,
        };
        assert_eq!(filter(lines, &q).len(), 1);
    }
}
