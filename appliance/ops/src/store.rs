//! The ops database (SQLite): enrollment tokens, nodes and their
//! enrollments (epochs), reports and the usage rows they carry.
//!
//! Every report is stored in one transaction with its rows, and committed
//! with a full fsync before it is acknowledged, so an acknowledged report
//! is never lost. Reports are unique per (node, epoch, sequence number):
//! each enrollment starts a new epoch, so a replaced box that numbers its
//! reports from 1 again collides with nothing the old one sent. A resend
//! that is byte for byte the stored report is acknowledged as a duplicate;
//! anything else that claims a stored number, or a stored stretch of time,
//! is refused.
//!
//! Monthly sums run per node and fail per node: one node's damaged rows
//! cannot make the month unreadable for the others.

use std::collections::BTreeMap;
use std::path::Path;

use appliance_usage::protocol::{EnrollRequest, Envelope, Report};
use appliance_usage::{Ack, GapReason, Month, Token};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::validate::{self, Implausible, Limits};

/// Why ops refused something; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown enrollment token: it was never issued by this ops")]
    UnknownToken,
    #[error("this enrollment token was already used (on {0}); create a new one with `appliance-ops token create`")]
    UsedToken(String),
    #[error("this enrollment token expired on {0}; create a new one with `appliance-ops token create`")]
    ExpiredToken(String),
    #[error("this enrollment token is for node {expected:?}, not {got:?}")]
    WrongNode { expected: String, got: String },
    #[error("node {0:?} is revoked at ops")]
    Revoked(String),
    #[error("unknown node {0:?}: enroll it first")]
    UnknownNode(String),
    #[error("node {node:?} has no enrollment {epoch}")]
    UnknownEpoch { node: String, epoch: u64 },
    #[error(
        "report of enrollment {epoch}, whose key was replaced when node {node:?} enrolled again: refused (a stolen key must not keep reporting)"
    )]
    RetiredEpoch { node: String, epoch: u64 },
    #[error("the report's signature does not verify with the key of node {0:?}")]
    BadSignature(String),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("report range {0}..={1} overlaps reports already stored")]
    Overlap(u64, u64),
    #[error(
        "report {seq} of enrollment {epoch} differs from the report {seq} stored before: refused, the stored one counts"
    )]
    Conflict { epoch: u64, seq: u64 },
    #[error("its period {} to {} does not start after stored report {seq} of enrollment {epoch} ({} to {}): that time was counted already", utc(*from), utc(*to), utc(*stored_from), utc(*stored_to))]
    PeriodOverlap {
        from: i64,
        to: i64,
        epoch: u64,
        seq: u64,
        stored_from: i64,
        stored_to: i64,
    },
    #[error("implausible report: {0}")]
    Implausible(#[from] Implausible),
    #[error("ops storage failed: {0}")]
    Storage(String),
}

impl From<rusqlite::Error> for Refusal {
    fn from(e: rusqlite::Error) -> Self {
        Refusal::Storage(e.to_string())
    }
}

pub struct Store {
    db: Connection,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// A node as `appliance-ops nodes` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    pub version: String,
    pub enrolled: i64,
    /// The current enrollment's number (1 + re-enrollments).
    pub epoch: u64,
    pub revoked: bool,
    pub last_report: Option<i64>,
    pub health: Option<String>,
    /// Reports refused so far, and the last reason.
    pub refusals: u64,
    pub last_refusal: Option<String>,
    pub last_refusal_at: Option<i64>,
    /// Channel, rollout position and last update result, from its latest
    /// report that carried them.
    pub update: Option<appliance_usage::UpdateReport>,
}

/// A line of the monthly usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub node: String,
    pub member: String,
    pub meetings: u64,
    pub meeting_seconds: u64,
    pub participant_seconds: u64,
    pub peak_participants: u64,
    pub longest_meeting_seconds: u64,
}

/// A month's usage: the rows, and the nodes whose stored rows could not be
/// summed (left out, with the reason).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthUsage {
    pub rows: Vec<UsageRow>,
    pub left_out: Vec<(String, String)>,
}

/// A gap a node reported: (node, from, to, why).
pub type GapRow = (String, i64, i64, GapReason);

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the kernel's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A unix time as people read it: `2026-11-02 14:30:00 UTC`.
pub fn utc(t: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.clamp(0, 253_402_300_799) as u64);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// Unix seconds of the first instant of `YYYY-MM` and of the next month.
pub fn month_range(month: &str) -> Option<(i64, i64)> {
    let m = Month::parse(month)?;
    (1970..=9999).contains(&m.year).then(|| (m.start(), m.end()))
}

/// The statements of `ingest`, prepared once per connection.
const SQL_EPOCH_KEY: &str = "SELECT public_key FROM epochs WHERE node_id = ?1 AND epoch = ?2";
const SQL_STORED_BY_SEQ: &str = "SELECT seq_from, seq_to, body FROM reports WHERE node_id = ?1 AND epoch = ?2 AND seq_from <= ?4 AND seq_to >= ?3 LIMIT 1";
const SQL_SAME_PERIOD: &str = "SELECT body FROM reports INDEXED BY reports_node_end WHERE node_id = ?1 AND period_to = ?3 AND period_from = ?2 LIMIT 1";
const SQL_INSERT_USAGE: &str =
    "INSERT INTO usage (node_id, epoch, seq_to, member, period_from, meeting_seconds, participant_seconds, peak)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
const SQL_NODE_REPORTED: &str = "UPDATE nodes SET last_report = ?2, health = ?3, version = ?4, update_state = COALESCE(?5, update_state) WHERE id = ?1";
const SQL_NODE_KEY: &str = "SELECT public_key, revoked FROM nodes WHERE id = ?1";

const SCHEMA_VERSION: i64 = 3;

/// The schema of the current version, for a new database.
const SCHEMA: &str = "
CREATE TABLE tokens (hash TEXT PRIMARY KEY, node TEXT NOT NULL, created INTEGER NOT NULL, expires INTEGER NOT NULL, used INTEGER);
CREATE TABLE nodes (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, public_key TEXT NOT NULL, enrolled INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0, version TEXT NOT NULL, facts TEXT NOT NULL, last_report INTEGER, health TEXT,
    epoch INTEGER NOT NULL DEFAULT 1, refusals INTEGER NOT NULL DEFAULT 0, last_refusal TEXT, last_refusal_at INTEGER,
    update_state TEXT);
CREATE TABLE epochs (node_id TEXT NOT NULL REFERENCES nodes(id), epoch INTEGER NOT NULL, public_key TEXT NOT NULL,
    enrolled INTEGER NOT NULL, PRIMARY KEY (node_id, epoch));
CREATE TABLE reports (node_id TEXT NOT NULL REFERENCES nodes(id), epoch INTEGER NOT NULL, seq_from INTEGER NOT NULL,
    seq_to INTEGER NOT NULL, period_from INTEGER NOT NULL, period_to INTEGER NOT NULL, received INTEGER NOT NULL,
    body TEXT NOT NULL, signature TEXT NOT NULL, PRIMARY KEY (node_id, epoch, seq_to));
CREATE TABLE usage (node_id TEXT NOT NULL, seq_to INTEGER NOT NULL, member TEXT NOT NULL, period_from INTEGER NOT NULL,
    meeting_seconds INTEGER NOT NULL, participant_seconds INTEGER NOT NULL, peak INTEGER NOT NULL, epoch INTEGER NOT NULL DEFAULT 1);
CREATE TABLE meetings (node_id TEXT NOT NULL, seq_to INTEGER NOT NULL, meeting_id TEXT NOT NULL, member TEXT NOT NULL,
    period_from INTEGER NOT NULL, seconds INTEGER NOT NULL, epoch INTEGER NOT NULL DEFAULT 1);
CREATE TABLE gaps (node_id TEXT NOT NULL, seq_to INTEGER NOT NULL, gap_from INTEGER NOT NULL, gap_to INTEGER NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 1, reason TEXT NOT NULL DEFAULT 'no_answer');
CREATE TABLE members (node_id TEXT NOT NULL, month INTEGER NOT NULL, member TEXT NOT NULL,
    PRIMARY KEY (node_id, month, member));
";

/// Indexes of version 1 (made after a migration too).
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS reports_node_end ON reports (node_id, period_to);
CREATE INDEX IF NOT EXISTS usage_node_period ON usage (node_id, period_from);
CREATE INDEX IF NOT EXISTS meetings_node_period ON meetings (node_id, period_from);
CREATE INDEX IF NOT EXISTS gaps_from ON gaps (gap_from);
";

/// From the first release's schema (no epochs, no refusals, gaps without a
/// reason): its reports become enrollment 1 of their nodes.
const MIGRATE_0_TO_1: &str = "
ALTER TABLE nodes ADD COLUMN epoch INTEGER NOT NULL DEFAULT 1;
ALTER TABLE nodes ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN last_refusal TEXT;
ALTER TABLE nodes ADD COLUMN last_refusal_at INTEGER;
CREATE TABLE epochs (node_id TEXT NOT NULL REFERENCES nodes(id), epoch INTEGER NOT NULL, public_key TEXT NOT NULL,
    enrolled INTEGER NOT NULL, PRIMARY KEY (node_id, epoch));
INSERT INTO epochs (node_id, epoch, public_key, enrolled) SELECT id, 1, public_key, enrolled FROM nodes;
ALTER TABLE reports RENAME TO reports_v0;
CREATE TABLE reports (node_id TEXT NOT NULL REFERENCES nodes(id), epoch INTEGER NOT NULL, seq_from INTEGER NOT NULL,
    seq_to INTEGER NOT NULL, period_from INTEGER NOT NULL, period_to INTEGER NOT NULL, received INTEGER NOT NULL,
    body TEXT NOT NULL, signature TEXT NOT NULL, PRIMARY KEY (node_id, epoch, seq_to));
INSERT INTO reports (node_id, epoch, seq_from, seq_to, period_from, period_to, received, body, signature)
    SELECT node_id, 1, seq_from, seq_to, period_from, period_to, received, body, signature FROM reports_v0;
DROP TABLE reports_v0;
ALTER TABLE usage ADD COLUMN epoch INTEGER NOT NULL DEFAULT 1;
ALTER TABLE meetings ADD COLUMN epoch INTEGER NOT NULL DEFAULT 1;
ALTER TABLE gaps ADD COLUMN epoch INTEGER NOT NULL DEFAULT 1;
ALTER TABLE gaps ADD COLUMN reason TEXT NOT NULL DEFAULT 'no_answer';
DROP INDEX IF EXISTS usage_period;
DROP INDEX IF EXISTS meetings_period;
";

/// From version 1: nodes' update state (channel, rollout position, last
/// result), from the reports that carry it.
const MIGRATE_1_TO_2: &str = "ALTER TABLE nodes ADD COLUMN update_state TEXT;";

/// From version 2: the member organisations the nodes' reports name, once
/// per node and month (reports come every few minutes), so a month lists
/// the members that used nothing.
const MIGRATE_2_TO_3: &str = "
CREATE TABLE members (node_id TEXT NOT NULL, month INTEGER NOT NULL, member TEXT NOT NULL,
    PRIMARY KEY (node_id, month, member));
";

fn reason_text(r: GapReason) -> &'static str {
    match r {
        GapReason::NoAnswer => "no_answer",
        GapReason::NotPolled => "not_polled",
    }
}

fn reason_from(s: &str) -> GapReason {
    match s {
        "not_polled" => GapReason::NotPolled,
        _ => GapReason::NoAnswer,
    }
}

/// Whether two reports bill the same: period, members, meetings and gaps
/// (what a re-signed copy keeps; numbers, enrollment and signature differ).
fn same_usage(a: &Report, b: &Report) -> bool {
    a.from == b.from && a.to == b.to && a.usage == b.usage && a.meetings == b.meetings && a.gaps == b.gaps
}

/// A stored integer column as u64 (sums of validated rows fit; anything
/// else is damage from before validation).
fn unsigned(v: i64, what: &str) -> Result<u64, String> {
    u64::try_from(v).map_err(|_| format!("stored {what} is negative ({v})"))
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, Refusal> {
        let mut db = Connection::open(path)?;
        // WAL for concurrent CLI reads while serving; FULL so a commit is on
        // disk before the report is acknowledged.
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;",
        )?;
        let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let has_nodes: bool = db.query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'nodes'",
            [],
            |r| r.get(0),
        )?;
        match (version, has_nodes) {
            (0, false) => {
                let tx = db.transaction()?;
                tx.execute_batch(SCHEMA)?;
                tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
                tx.commit()?;
            }
            (0, true) => {
                let tx = db.transaction()?;
                tx.execute_batch(MIGRATE_0_TO_1)?;
                tx.execute_batch(MIGRATE_1_TO_2)?;
                tx.execute_batch(MIGRATE_2_TO_3)?;
                tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
                tx.commit()?;
                log::info!(
                    "{}: migrated to schema {SCHEMA_VERSION} (reports now keyed by enrollment)",
                    path.display()
                );
            }
            (1, _) => {
                let tx = db.transaction()?;
                tx.execute_batch(MIGRATE_1_TO_2)?;
                tx.execute_batch(MIGRATE_2_TO_3)?;
                tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
                tx.commit()?;
                log::info!(
                    "{}: migrated to schema {SCHEMA_VERSION} (nodes' update state, members in reports)",
                    path.display()
                );
            }
            (2, _) => {
                let tx = db.transaction()?;
                tx.execute_batch(MIGRATE_2_TO_3)?;
                tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
                tx.commit()?;
                log::info!(
                    "{}: migrated to schema {SCHEMA_VERSION} (members in reports)",
                    path.display()
                );
            }
            (SCHEMA_VERSION, _) => {}
            (v, _) => {
                return Err(Refusal::Storage(format!(
                    "{}: schema version {v} is newer than this appliance-ops knows ({SCHEMA_VERSION}); use a newer appliance-ops",
                    path.display()
                )));
            }
        }
        db.execute_batch(INDEXES)?;
        Ok(Store { db })
    }

    /// Issues a single-use token for `node`; returns the secret.
    pub fn create_token(&self, node: &str, now: i64, ttl_secs: i64) -> Result<String, Refusal> {
        let secret = random_hex(32);
        self.db.execute(
            "INSERT INTO tokens (hash, node, created, expires) VALUES (?1, ?2, ?3, ?4)",
            params![Token::secret_hash(&secret), node, now, now.saturating_add(ttl_secs)],
        )?;
        Ok(secret)
    }

    /// Enrolls (or re-enrolls, with a fresh token) a node; returns its id
    /// and the number of this enrollment.
    pub fn enroll(&mut self, req: &EnrollRequest, now: i64) -> Result<(String, u64), Refusal> {
        let tx = self.db.transaction()?;
        let tok: Option<(String, i64, Option<i64>)> = tx
            .query_row(
                "SELECT node, expires, used FROM tokens WHERE hash = ?1",
                params![Token::secret_hash(&req.secret)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (node, expires, used) = tok.ok_or(Refusal::UnknownToken)?;
        if let Some(u) = used {
            return Err(Refusal::UsedToken(utc(u)));
        }
        if now >= expires {
            return Err(Refusal::ExpiredToken(utc(expires)));
        }
        if node != req.node {
            return Err(Refusal::WrongNode {
                expected: node,
                got: req.node.clone(),
            });
        }
        let existing: Option<(String, i64, i64)> = tx
            .query_row(
                "SELECT id, revoked, epoch FROM nodes WHERE name = ?1",
                params![node],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let facts = serde_json::to_string(&req.facts).unwrap_or_default();
        let (id, epoch) = match existing {
            Some((_, revoked, _)) if revoked != 0 => return Err(Refusal::Revoked(node)),
            // Re-enrollment (a replaced disk or box): a new epoch with the
            // new key. Earlier epochs whose key differs can no longer report.
            Some((id, _, epoch)) => {
                let epoch = epoch + 1;
                tx.execute(
                    "UPDATE nodes SET public_key = ?2, enrolled = ?3, version = ?4, facts = ?5, epoch = ?6 WHERE id = ?1",
                    params![id, req.public_key, now, req.version, facts, epoch],
                )?;
                (id, epoch)
            }
            None => {
                let id = random_hex(16);
                tx.execute(
                    "INSERT INTO nodes (id, name, public_key, enrolled, version, facts, epoch) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
                    params![id, node, req.public_key, now, req.version, facts],
                )?;
                (id, 1)
            }
        };
        tx.execute(
            "INSERT INTO epochs (node_id, epoch, public_key, enrolled) VALUES (?1, ?2, ?3, ?4)",
            params![id, epoch, req.public_key, now],
        )?;
        tx.execute(
            "UPDATE tokens SET used = ?2 WHERE hash = ?1",
            params![Token::secret_hash(&req.secret), now],
        )?;
        tx.commit()?;
        Ok((id, epoch as u64))
    }

    pub fn revoke(&self, node: &str) -> Result<bool, Refusal> {
        Ok(self
            .db
            .execute("UPDATE nodes SET revoked = 1 WHERE name = ?1", params![node])?
            > 0)
    }

    /// Verifies, checks and stores a report exactly once. A refusal of a
    /// report whose signature verified is counted against its node, so
    /// `appliance-ops nodes` shows it (unsigned garbage naming a node id
    /// cannot move that count).
    pub fn ingest(&mut self, env: &Envelope, now: i64, limits: Limits) -> Result<Ack, Refusal> {
        let claim = env.claim().map_err(|e| Refusal::Malformed(e.to_string()))?;
        let mut signed = false;
        let res = self.ingest_claimed(env, &claim.node_id, claim.epoch, now, limits, &mut signed);
        if let Err(r) = &res {
            if signed && !matches!(r, Refusal::Storage(_)) {
                let _ = self.db.execute(
                    "UPDATE nodes SET refusals = refusals + 1, last_refusal = ?2, last_refusal_at = ?3 WHERE id = ?1",
                    params![claim.node_id, r.to_string(), now],
                );
            }
        }
        res
    }

    fn ingest_claimed(
        &mut self,
        env: &Envelope,
        node_id: &str,
        epoch: u64,
        now: i64,
        limits: Limits,
        signed: &mut bool,
    ) -> Result<Ack, Refusal> {
        let tx = self.db.transaction()?;
        let node: Option<(String, i64)> = tx
            .prepare_cached(SQL_NODE_KEY)?
            .query_row(params![node_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (current_key, revoked) = node.ok_or_else(|| Refusal::UnknownNode(node_id.to_string()))?;
        // Reports in the form from before enrollments were numbered (0)
        // belong to enrollment 1, where the migration put their kind, and
        // are signed with the node's key.
        let stored_epoch = epoch.max(1);
        let epoch_i = i64::try_from(stored_epoch).map_err(|_| Refusal::UnknownEpoch {
            node: node_id.to_string(),
            epoch,
        })?;
        let key: String = if epoch == 0 {
            current_key.clone()
        } else {
            tx.prepare_cached(SQL_EPOCH_KEY)?
                .query_row(params![node_id, epoch_i], |r| r.get(0))
                .optional()?
                .ok_or_else(|| Refusal::UnknownEpoch {
                    node: node_id.to_string(),
                    epoch,
                })?
        };
        let r: Report = env.open(&key).map_err(|e| match e {
            appliance_usage::protocol::Error::BadReport(m) => {
                *signed = true;
                Refusal::Malformed(m)
            }
            _ => Refusal::BadSignature(node_id.to_string()),
        })?;
        *signed = true;
        if revoked != 0 {
            return Err(Refusal::Revoked(node_id.to_string()));
        }
        if key != current_key {
            return Err(Refusal::RetiredEpoch {
                node: node_id.to_string(),
                epoch,
            });
        }
        let (seq_from, seq_to) = match (i64::try_from(r.seq_from), i64::try_from(r.seq_to)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return Err(Refusal::Malformed("sequence number out of range".into())),
        };
        let stored: Option<(i64, i64, String)> = tx
            .prepare_cached(SQL_STORED_BY_SEQ)?
            .query_row(params![node_id, epoch_i, seq_from, seq_to], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        match stored {
            Some((f, t, body)) if (f, t) == (seq_from, seq_to) => {
                return if body == env.report {
                    Ok(Ack {
                        acked: r.seq_to,
                        duplicate: true,
                    })
                } else {
                    Err(Refusal::Conflict { epoch, seq: r.seq_to })
                };
            }
            Some(_) => return Err(Refusal::Overlap(r.seq_from, r.seq_to)),
            None => {}
        }
        // A report the node re-signed for a later enrollment after ops had
        // stored it (its acknowledgement lost): the same period with the
        // same figures is the same report.
        if r.from < r.to {
            let same: Option<String> = tx
                .prepare_cached(SQL_SAME_PERIOD)?
                .query_row(params![node_id, r.from, r.to], |row| row.get(0))
                .optional()?;
            if let Some(body) = same {
                if serde_json::from_str::<Report>(&body).is_ok_and(|s| same_usage(&s, &r)) {
                    return Ok(Ack {
                        acked: r.seq_to,
                        duplicate: true,
                    });
                }
            }
        }
        validate::check(&r, limits, now)?;
        // A node's time only moves forward: a report may not start before
        // the end of a period already stored for it (in any enrollment).
        // Empty, zero-length reports count nothing and anchor nothing.
        let latest: Option<(i64, i64, i64, i64)> = tx
            .prepare_cached(
                "SELECT epoch, seq_to, period_from, period_to FROM reports INDEXED BY reports_node_end
                 WHERE node_id = ?1 AND period_to > ?2 AND period_from < period_to
                 ORDER BY period_to DESC LIMIT 1",
            )?
            .query_row(params![node_id, r.from], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .optional()?;
        if let Some((e, s, f, t)) = latest {
            return Err(Refusal::PeriodOverlap {
                from: r.from,
                to: r.to,
                epoch: e as u64,
                seq: s as u64,
                stored_from: f,
                stored_to: t,
            });
        }
        // Validated figures are at most a month of seconds times the
        // participant cap: they fit in SQLite's i64.
        let int = |v: u64| i64::try_from(v).map_err(|_| Refusal::Malformed(format!("figure {v} out of range")));
        tx.prepare_cached(
            "INSERT INTO reports (node_id, epoch, seq_from, seq_to, period_from, period_to, received, body, signature)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            node_id,
            epoch_i,
            seq_from,
            seq_to,
            r.from,
            r.to,
            now,
            env.report,
            env.signature
        ])?;
        for u in &r.usage {
            tx.prepare_cached(SQL_INSERT_USAGE)?.execute(params![
                node_id,
                epoch_i,
                seq_to,
                u.member,
                r.from,
                int(u.usage.meeting_seconds)?,
                int(u.usage.participant_seconds)?,
                i64::from(u.usage.peak_participants)
            ])?;
        }
        for m in &r.meetings {
            tx.prepare_cached(
                "INSERT INTO meetings (node_id, epoch, seq_to, meeting_id, member, period_from, seconds)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                node_id,
                epoch_i,
                seq_to,
                m.id,
                m.member,
                r.from,
                int(m.seconds)?
            ])?;
        }
        for m in &r.members {
            tx.prepare_cached("INSERT OR IGNORE INTO members (node_id, month, member) VALUES (?1, ?2, ?3)")?
                .execute(params![node_id, appliance_usage::Month::of(r.from).start(), m])?;
        }
        for g in &r.gaps {
            tx.prepare_cached(
                "INSERT INTO gaps (node_id, epoch, seq_to, gap_from, gap_to, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![node_id, epoch_i, seq_to, g.from, g.to, reason_text(g.reason)])?;
        }
        let update = r.update.as_ref().map(|u| {
            // Node-supplied text: kept short, whatever the node sent.
            let clip = |s: &str| appliance_usage::protocol::clip_name(s).to_string();
            let u = appliance_usage::UpdateReport {
                channel: clip(&u.channel),
                position: u.position,
                probation: u.probation.as_deref().map(clip),
                last_result: u.last_result.as_deref().map(clip),
                error: u.error.as_deref().map(clip),
                os_version: u.os_version.as_deref().map(clip),
                os_pending: u.os_pending.as_deref().map(clip),
                os_last_result: u.os_last_result.as_deref().map(clip),
            };
            serde_json::to_string(&u).unwrap_or_default()
        });
        tx.prepare_cached(SQL_NODE_REPORTED)?
            .execute(params![node_id, now, r.health, r.firmware, update])?;
        tx.commit()?;
        Ok(Ack {
            acked: r.seq_to,
            duplicate: false,
        })
    }

    pub fn nodes(&self) -> Result<Vec<NodeRow>, Refusal> {
        let mut q = self.db.prepare(
            "SELECT id, name, version, enrolled, epoch, revoked, last_report, health, refusals, last_refusal, last_refusal_at,
                    update_state
             FROM nodes ORDER BY name",
        )?;
        let rows = q
            .query_map([], |r| {
                Ok(NodeRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    version: r.get(2)?,
                    enrolled: r.get(3)?,
                    epoch: r.get::<_, i64>(4)?.max(0) as u64,
                    revoked: r.get::<_, i64>(5)? != 0,
                    last_report: r.get(6)?,
                    health: r.get(7)?,
                    refusals: r.get::<_, i64>(8)?.max(0) as u64,
                    last_refusal: r.get(9)?,
                    last_refusal_at: r.get(10)?,
                    update: r
                        .get::<_, Option<String>>(11)?
                        .and_then(|j| serde_json::from_str(&j).ok()),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Usage per node and member organisation in `month` (UTC). Reports
    /// never span a month, so a report's rows belong to the month its
    /// period starts in. Each node is summed on its own: a node whose rows
    /// cannot be summed is left out with the reason, the others are exact.
    pub fn usage(&self, month: Month) -> Result<MonthUsage, Refusal> {
        let (start, end) = (month.start(), month.end());
        let mut q = self.db.prepare("SELECT id, name FROM nodes ORDER BY name")?;
        let nodes: Vec<(String, String)> = q
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = MonthUsage::default();
        for (id, name) in nodes {
            match self.node_usage(&id, &name, start, end) {
                Ok(rows) => out.rows.extend(rows),
                Err(e) => out.left_out.push((name, e)),
            }
        }
        Ok(out)
    }

    fn node_usage(&self, id: &str, name: &str, start: i64, end: i64) -> Result<Vec<UsageRow>, String> {
        let mut rows: BTreeMap<String, UsageRow> = BTreeMap::new();
        let row = |member: &str| UsageRow {
            node: name.to_string(),
            member: member.to_string(),
            meetings: 0,
            meeting_seconds: 0,
            participant_seconds: 0,
            peak_participants: 0,
            longest_meeting_seconds: 0,
        };
        // SQLite's integer SUM fails on overflow instead of wrapping: the
        // error stays with this node.
        let mut q = self
            .db
            .prepare_cached(
                "SELECT member, SUM(meeting_seconds), SUM(participant_seconds), MAX(peak) FROM usage
                 WHERE node_id = ?1 AND period_from >= ?2 AND period_from < ?3 GROUP BY member",
            )
            .map_err(|e| e.to_string())?;
        let it = q
            .query_map(params![id, start, end], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| e.to_string())?;
        for r in it {
            let (member, ms, ps, peak) = r.map_err(|e| e.to_string())?;
            let e = rows.entry(member.clone()).or_insert_with(|| row(&member));
            e.meeting_seconds = unsigned(ms, "meeting-seconds")?;
            e.participant_seconds = unsigned(ps, "participant-seconds")?;
            e.peak_participants = unsigned(peak, "peak")?;
        }
        let mut q = self
            .db
            .prepare_cached(
                "SELECT member, COUNT(*), MAX(total) FROM
                   (SELECT member, meeting_id, SUM(seconds) AS total FROM meetings
                    WHERE node_id = ?1 AND period_from >= ?2 AND period_from < ?3 GROUP BY member, meeting_id)
                 GROUP BY member",
            )
            .map_err(|e| e.to_string())?;
        let it = q
            .query_map(params![id, start, end], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
            .map_err(|e| e.to_string())?;
        for r in it {
            let (member, count, longest) = r.map_err(|e| e.to_string())?;
            let e = rows.entry(member.clone()).or_insert_with(|| row(&member));
            e.meetings = unsigned(count, "meeting count")?;
            e.longest_meeting_seconds = unsigned(longest, "meeting length")?;
        }
        // Members the node had that used nothing: a row of zeros, so the
        // bill shows them.
        let mut q = self
            .db
            .prepare_cached("SELECT member FROM members WHERE node_id = ?1 AND month >= ?2 AND month < ?3")
            .map_err(|e| e.to_string())?;
        let it = q
            .query_map(params![id, start, end], |r| r.get::<_, String>(0))
            .map_err(|e| e.to_string())?;
        for r in it {
            let member = r.map_err(|e| e.to_string())?;
            rows.entry(member.clone()).or_insert_with(|| row(&member));
        }
        Ok(rows.into_values().collect())
    }

    /// Gaps reported in `month`, per node.
    pub fn gaps(&self, month: Month) -> Result<Vec<GapRow>, Refusal> {
        let mut q = self.db.prepare(
            "SELECT n.name, g.gap_from, g.gap_to, g.reason FROM gaps g JOIN nodes n ON n.id = g.node_id
             WHERE g.gap_from >= ?1 AND g.gap_from < ?2 ORDER BY n.name, g.gap_from",
        )?;
        let rows = q
            .query_map(params![month.start(), month.end()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, reason_from(&r.get::<_, String>(3)?)))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// How many reports are stored (for tests and the benchmark).
    pub fn report_count(&self) -> Result<u64, Refusal> {
        Ok(self
            .db
            .query_row("SELECT COUNT(*) FROM reports", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use appliance_usage::protocol::{MeetingLine, MemberLine, Resources};
    use appliance_usage::{Gap, MemberUsage, NodeKey};

    use super::*;

    const LIMITS: Limits = Limits {
        max_participants: 1000,
        clock_skew: 600,
    };

    fn key() -> NodeKey {
        NodeKey::from_pkcs8(&NodeKey::generate().unwrap()).unwrap()
    }

    fn enroll_req(secret: &str, node: &str, key: &NodeKey) -> EnrollRequest {
        EnrollRequest {
            secret: secret.into(),
            node: node.into(),
            public_key: key.public_key(),
            version: "0.1.0".into(),
            facts: BTreeMap::new(),
        }
    }

    fn report(node_id: &str, seq: u64, from: i64, ps: u64, meeting: &str) -> Report {
        Report {
            node_id: node_id.into(),
            epoch: 1,
            seq_from: seq,
            seq_to: seq,
            from,
            to: from + 300,
            firmware: "0.1.0".into(),
            usage: vec![MemberLine {
                member: "coop-a".into(),
                usage: MemberUsage {
                    meeting_seconds: 300,
                    participant_seconds: ps,
                    peak_participants: (ps / 300) as u32,
                },
            }],
            meetings: vec![MeetingLine {
                id: meeting.into(),
                member: "coop-a".into(),
                seconds: 300,
            }],
            gaps: vec![],
            resources: Resources::default(),
            health: "ok".into(),
            services: "".into(),
            update: None,
            members: vec![],
        }
    }

    fn nov() -> Month {
        Month::parse("2026-11").unwrap()
    }

    /// A store with node `name` enrolled with `k`.
    fn with_node(name: &str, k: &NodeKey) -> (tempfile::TempDir, Store, String) {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(&d.path().join("ops.db")).unwrap();
        let t = s.create_token(name, 0, 3600).unwrap();
        let (id, epoch) = s.enroll(&enroll_req(&t, name, k), 0).unwrap();
        assert_eq!(epoch, 1);
        (d, s, id)
    }

    fn enroll_more(s: &mut Store, name: &str, k: &NodeKey) -> (String, u64) {
        let t = s.create_token(name, 0, 3600).unwrap();
        s.enroll(&enroll_req(&t, name, k), 0).unwrap()
    }

    #[test]
    fn a_nodes_update_state_comes_from_its_latest_report_that_carries_it() {
        let k = key();
        let (_d, mut s, id) = with_node("ams-1", &k);
        let start = nov().start();
        let mut r = report(&id, 1, start, 300, "m");
        r.update = Some(appliance_usage::UpdateReport {
            channel: "stable".into(),
            position: 4711,
            probation: None,
            last_result: Some(format!("0.3.0 rolled_back: {}", "x".repeat(5000))),
            error: None,
            os_version: None,
            os_pending: None,
            os_last_result: None,
        });
        s.ingest(&k.seal(&r), start + 300, LIMITS).unwrap();
        // A later report without it (older firmware) keeps what is known.
        s.ingest(&k.seal(&report(&id, 2, start + 300, 300, "m")), start + 600, LIMITS)
            .unwrap();
        let n = &s.nodes().unwrap()[0];
        let u = n.update.as_ref().expect("kept");
        assert_eq!((u.channel.as_str(), u.position), ("stable", 4711));
        let last = u.last_result.as_deref().unwrap();
        assert!(
            last.starts_with("0.3.0 rolled_back: x") && last.len() <= 256,
            "clipped: {}",
            last.len()
        );
    }

    #[test]
    fn a_version_1_database_gains_the_update_state() {
        let k = key();
        let (d, s, _id) = with_node("ams-1", &k);
        s.db.execute_batch("ALTER TABLE nodes DROP COLUMN update_state; DROP TABLE members; PRAGMA user_version = 1;")
            .unwrap();
        drop(s);
        let s = Store::open(&d.path().join("ops.db")).unwrap();
        let v: i64 = s.db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let n = s.nodes().unwrap();
        assert_eq!((n.len(), n[0].update.clone()), (1, None));
    }

    #[test]
    fn members_that_used_nothing_are_on_the_month_they_were_reported_in() {
        let k = key();
        let (d, s, id) = with_node("ams-1", &k);
        // A database of version 2 (no members table) gains it.
        s.db.execute_batch("DROP TABLE members; PRAGMA user_version = 2;")
            .unwrap();
        drop(s);
        let mut s = Store::open(&d.path().join("ops.db")).unwrap();
        let b = nov().start();
        let mut r = report(&id, 1, b, 600, "m1");
        r.members = vec!["coop-a".into(), "coop-z".into()];
        s.ingest(&k.seal(&r), b + 86_400, LIMITS).unwrap();
        let rows = s.usage(nov()).unwrap().rows;
        let got: Vec<(&str, u64, u64)> = rows
            .iter()
            .map(|r| (r.member.as_str(), r.participant_seconds, r.meetings))
            .collect();
        assert_eq!(got, [("coop-a", 600, 1), ("coop-z", 0, 0)]);
        assert!(s.usage(Month::parse("2026-12").unwrap()).unwrap().rows.is_empty());
        // Resent: acknowledged, not listed twice.
        let ack = s.ingest(&k.seal(&r), b + 86_400, LIMITS).unwrap();
        assert!(ack.duplicate);
        assert_eq!(s.usage(nov()).unwrap().rows.len(), 2);
        // The next report names them again: kept once per node and month,
        // however many reports a month brings.
        let mut next = report(&id, 2, b + 300, 300, "m1");
        next.members = r.members.clone();
        s.ingest(&k.seal(&next), b + 86_400, LIMITS).unwrap();
        let kept: i64 =
            s.db.query_row("SELECT COUNT(*) FROM members", [], |r| r.get(0))
                .unwrap();
        assert_eq!(kept, 2);
        assert_eq!(s.usage(nov()).unwrap().rows.len(), 2);
    }

    #[test]
    fn month_ranges() {
        assert_eq!(month_range("1970-01"), Some((0, 31 * 86400)));
        assert_eq!(month_range("2024-02").map(|(a, b)| (b - a) / 86400), Some(29));
        assert_eq!(month_range("2026-12").map(|(a, b)| (b - a) / 86400), Some(31));
        assert_eq!(utc(month_range("2026-11").unwrap().0), "2026-11-01 00:00:00 UTC");
        for bad in ["2026-13", "2026-1", "26-11", "nov", "2026-00", "0001-01"] {
            assert_eq!(month_range(bad), None, "{bad}");
        }
        assert_eq!(utc(i64::MAX), "9999-12-31 23:59:59 UTC");
    }

    #[test]
    fn tokens_are_single_use_and_expire() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(&d.path().join("ops.db")).unwrap();
        let k = key();
        let t = s.create_token("ams-1", 1000, 3600).unwrap();
        assert_eq!(
            s.enroll(&enroll_req("forged", "ams-1", &k), 1000),
            Err(Refusal::UnknownToken)
        );
        assert!(matches!(
            s.enroll(&enroll_req(&t, "rtm-1", &k), 1000),
            Err(Refusal::WrongNode { .. })
        ));
        let (id, _) = s.enroll(&enroll_req(&t, "ams-1", &k), 1001).unwrap();
        assert_eq!(
            s.enroll(&enroll_req(&t, "ams-1", &k), 1002),
            Err(Refusal::UsedToken(utc(1001)))
        );
        let old = s.create_token("ams-2", 1000, 10).unwrap();
        assert_eq!(
            s.enroll(&enroll_req(&old, "ams-2", &k), 1010),
            Err(Refusal::ExpiredToken(utc(1010)))
        );
        assert!(s.revoke("ams-1").unwrap());
        let t3 = s.create_token("ams-1", 3000, 3600).unwrap();
        assert_eq!(
            s.enroll(&enroll_req(&t3, "ams-1", &k), 3000),
            Err(Refusal::Revoked("ams-1".into()))
        );
        let start = nov().start();
        assert_eq!(
            s.ingest(&k.seal(&report(&id, 2, start, 300, "m")), start + 300, LIMITS),
            Err(Refusal::Revoked(id.clone()))
        );
    }

    #[test]
    fn a_replaced_box_starts_a_new_epoch_and_loses_nothing() {
        let old = key();
        let (_d, mut s, id) = with_node("ams-1", &old);
        let start = nov().start();
        let now = start + 86_400;
        for seq in 1..=3 {
            let r = report(&id, seq, start + (seq as i64 - 1) * 300, 600, "m1");
            assert!(!s.ingest(&old.seal(&r), now, LIMITS).unwrap().duplicate);
        }
        // The disk is swapped: a new key, a new enrollment, numbers from 1 again.
        let new = key();
        let (id2, epoch) = enroll_more(&mut s, "ams-1", &new);
        assert_eq!((id2.as_str(), epoch), (id.as_str(), 2), "same node, next epoch");
        for seq in 1..=3 {
            let mut r = report(&id, seq, start + 3600 + (seq as i64 - 1) * 300, 900, "m2");
            r.epoch = 2;
            assert_eq!(
                s.ingest(&new.seal(&r), now, LIMITS).unwrap(),
                Ack {
                    acked: seq,
                    duplicate: false
                },
                "report {seq} of the new box is stored, not taken for a duplicate"
            );
        }
        // The old key cannot report any more, in its own epoch or the new one.
        let r = report(&id, 4, start + 7200, 300, "m3");
        assert_eq!(
            s.ingest(&old.seal(&r), now, LIMITS),
            Err(Refusal::RetiredEpoch {
                node: id.clone(),
                epoch: 1
            })
        );
        let mut r2 = r.clone();
        r2.epoch = 2;
        assert_eq!(
            s.ingest(&old.seal(&r2), now, LIMITS),
            Err(Refusal::BadSignature(id.clone()))
        );
        r2.epoch = 3;
        assert_eq!(
            s.ingest(&new.seal(&r2), now, LIMITS),
            Err(Refusal::UnknownEpoch {
                node: id.clone(),
                epoch: 3
            })
        );
        let u = s.usage(nov()).unwrap();
        assert_eq!(u.rows.len(), 1);
        assert_eq!(
            u.rows[0],
            UsageRow {
                node: "ams-1".into(),
                member: "coop-a".into(),
                meetings: 2,
                meeting_seconds: 1800,
                participant_seconds: 3 * 600 + 3 * 900,
                peak_participants: 3,
                longest_meeting_seconds: 900,
            }
        );
        assert_eq!(s.nodes().unwrap().len(), 1, "listed once");
        assert_eq!(s.nodes().unwrap()[0].epoch, 2);
    }

    #[test]
    fn re_enrolling_with_the_same_key_keeps_the_queue_deliverable() {
        // `appliance enroll --force` on the same box: its outbox still holds
        // reports of the first enrollment, signed with the same key.
        let k = key();
        let (_d, mut s, id) = with_node("ams-1", &k);
        let (_, epoch) = enroll_more(&mut s, "ams-1", &k);
        assert_eq!(epoch, 2);
        let start = nov().start();
        let r = report(&id, 9, start, 300, "m");
        assert!(s.ingest(&k.seal(&r), start + 300, LIMITS).is_ok());
    }

    #[test]
    fn resends_are_acknowledged_only_when_identical() {
        let k = key();
        let (_d, mut s, id) = with_node("ams-1", &k);
        let start = nov().start();
        let r1 = k.seal(&report(&id, 1, start, 600, "m1"));
        assert!(!s.ingest(&r1, start + 300, LIMITS).unwrap().duplicate);
        assert_eq!(
            s.ingest(&r1, start + 300, LIMITS).unwrap(),
            Ack {
                acked: 1,
                duplicate: true
            },
            "a resend is acknowledged, not stored"
        );
        let other = k.seal(&report(&id, 1, start + 300, 900, "m1"));
        assert_eq!(
            s.ingest(&other, start + 600, LIMITS),
            Err(Refusal::Conflict { epoch: 1, seq: 1 })
        );
        // A merged report overlapping stored numbers is refused.
        let mut merged = report(&id, 1, start + 300, 300, "m1");
        merged.seq_to = 3;
        assert_eq!(
            s.ingest(&k.seal(&merged), start + 600, LIMITS),
            Err(Refusal::Overlap(1, 3))
        );
        // Another number for time already counted is refused.
        let again = k.seal(&report(&id, 2, start + 100, 300, "m1"));
        assert!(matches!(
            s.ingest(&again, start + 600, LIMITS),
            Err(Refusal::PeriodOverlap { epoch: 1, seq: 1, .. })
        ));
        // An empty report at the end of what is stored is fine; one inside
        // it (a peak for time already billed) is not.
        let beat = |at: i64| {
            let mut b = report(&id, 2, at, 0, "m1");
            b.to = b.from;
            b.usage[0].usage = MemberUsage {
                peak_participants: 9,
                ..MemberUsage::default()
            };
            b.meetings.clear();
            b
        };
        assert!(matches!(
            s.ingest(&k.seal(&beat(start + 100)), start + 600, LIMITS),
            Err(Refusal::PeriodOverlap { .. })
        ));
        assert!(s.ingest(&k.seal(&beat(start + 300)), start + 600, LIMITS).is_ok());
        // Empty reports anchor nothing: the next period may start at one.
        let r3 = report(&id, 3, start + 300, 300, "m1");
        assert!(s.ingest(&k.seal(&r3), start + 600, LIMITS).is_ok());
        assert_eq!(s.report_count().unwrap(), 3);
        let n = &s.nodes().unwrap()[0];
        assert_eq!(n.refusals, 4);
        assert!(
            n.last_refusal
                .as_deref()
                .unwrap()
                .contains("does not start after stored report 1"),
            "{n:?}"
        );
        // Unsigned garbage naming the node does not count against it.
        let mut forged = k.seal(&report(&id, 9, start + 900, 300, "m1"));
        forged.signature = "AAAA".into();
        assert_eq!(
            s.ingest(&forged, start + 1200, LIMITS),
            Err(Refusal::BadSignature(id.clone()))
        );
        assert_eq!(s.nodes().unwrap()[0].refusals, 4);
    }

    #[test]
    fn a_report_re_signed_for_a_new_enrollment_is_the_same_report() {
        // The node stored report 5 at ops but never heard so; it enrolled
        // again (new key) and re-signed its queue for enrollment 2.
        let old = key();
        let (_d, mut s, id) = with_node("ams-1", &old);
        let start = nov().start();
        let r = report(&id, 5, start, 600, "m");
        s.ingest(&old.seal(&r), start + 300, LIMITS).unwrap();
        let new = key();
        enroll_more(&mut s, "ams-1", &new);
        let mut again = r.clone();
        again.epoch = 2;
        again.health = "later".into();
        assert_eq!(
            s.ingest(&new.seal(&again), start + 600, LIMITS),
            Ok(Ack {
                acked: 5,
                duplicate: true
            })
        );
        // Other figures for that period are not.
        again.usage[0].usage.participant_seconds = 900;
        assert!(matches!(
            s.ingest(&new.seal(&again), start + 600, LIMITS),
            Err(Refusal::PeriodOverlap { .. })
        ));
        assert_eq!(s.report_count().unwrap(), 1);
    }

    #[test]
    fn reports_of_the_first_release_still_count() {
        // Queued on a node before it was upgraded: no enrollment number, a
        // period across the 1st (billed to the month it starts in, as then).
        let k = key();
        let (_d, mut s, id) = with_node("ams-1", &k);
        let b = nov().start();
        let mut r = report(&id, 3, b - 120, 600, "m");
        r.to = b + 180;
        let mut v = serde_json::to_value(&r).unwrap();
        v.as_object_mut().unwrap().remove("epoch");
        let env = k.seal_text(v.to_string());
        assert!(!s.ingest(&env, b + 600, LIMITS).unwrap().duplicate);
        assert!(s.ingest(&env, b + 600, LIMITS).unwrap().duplicate);
        let oct = s.usage(Month::parse("2026-10").unwrap()).unwrap().rows;
        assert_eq!(oct[0].participant_seconds, 600);
        // New reports of enrollment 1 go on after it.
        let next = report(&id, 4, b + 180, 300, "m");
        assert!(s.ingest(&k.seal(&next), b + 600, LIMITS).is_ok());
    }

    #[test]
    fn hostile_reports_are_refused_and_the_month_stays_readable() {
        let k = key();
        let (_d, mut s, id) = with_node("ams-1", &k);
        let honest = key();
        let (id2, _) = enroll_more(&mut s, "rtm-1", &honest);
        let start = nov().start();
        let now = start + 86_400;
        s.ingest(&honest.seal(&report(&id2, 1, start, 600, "x")), now, LIMITS)
            .unwrap();
        let before = s.usage(nov()).unwrap();
        let mut huge = report(&id, 1, start, 300, "m");
        huge.to = huge.from + 1;
        huge.usage[0].usage.meeting_seconds = i64::MAX as u64;
        huge.meetings[0].seconds = i64::MAX as u64;
        assert!(matches!(
            s.ingest(&k.seal(&huge), now, LIMITS),
            Err(Refusal::Implausible(Implausible::MeetingLongerThanPeriod { .. }))
        ));
        let mut future = report(&id, 1, now + 3600, 300, "m");
        future.gaps.push(Gap {
            from: future.from,
            to: future.from + 10,
            reason: GapReason::NotPolled,
        });
        assert!(matches!(
            s.ingest(&k.seal(&future), now, LIMITS),
            Err(Refusal::Implausible(Implausible::FutureDated { .. }))
        ));
        assert_eq!(s.usage(nov()).unwrap(), before, "nothing of them was stored");
        assert_eq!(s.nodes().unwrap()[0].refusals, 2);
    }

    #[test]
    fn damaged_rows_of_one_node_leave_the_others_readable() {
        // Rows as a release without validation could have stored them.
        let k = key();
        let (_d, mut s, id) = with_node("ams-1", &k);
        let honest = key();
        let (id2, _) = enroll_more(&mut s, "rtm-1", &honest);
        let start = nov().start();
        s.ingest(&honest.seal(&report(&id2, 1, start, 600, "x")), start + 300, LIMITS)
            .unwrap();
        for seq in [1, 2] {
            s.db.execute(
                "INSERT INTO usage (node_id, epoch, seq_to, member, period_from, meeting_seconds, participant_seconds, peak)
                 VALUES (?1, 1, ?2, 'coop-a', ?3, ?4, 1, 1)",
                params![id, seq, start, i64::MAX],
            )
            .unwrap();
        }
        let u = s.usage(nov()).unwrap();
        assert_eq!(u.rows.len(), 1);
        assert_eq!(u.rows[0].node, "rtm-1");
        assert_eq!(u.rows[0].participant_seconds, 600);
        assert_eq!(u.left_out.len(), 1);
        assert_eq!(u.left_out[0].0, "ams-1");
        assert!(u.left_out[0].1.contains("overflow"), "{:?}", u.left_out);
    }

    #[test]
    fn reports_are_summed_by_the_month_they_belong_to() {
        let k = key();
        let (_d, mut s, id) = with_node("ams-1", &k);
        let b = nov().start();
        let now = b + 86_400;
        // October's last 5 minutes, November's first 5: one meeting across.
        let mut oct = report(&id, 1, b - 300, 600, "m1");
        oct.usage[0].usage.peak_participants = 9;
        s.ingest(&k.seal(&oct), now, LIMITS).unwrap();
        s.ingest(&k.seal(&report(&id, 2, b, 900, "m1")), now, LIMITS).unwrap();
        let oct_rows = s.usage(Month::parse("2026-10").unwrap()).unwrap().rows;
        let nov_rows = s.usage(nov()).unwrap().rows;
        assert_eq!(
            (
                oct_rows[0].participant_seconds,
                oct_rows[0].peak_participants,
                oct_rows[0].meetings
            ),
            (600, 9, 1)
        );
        assert_eq!(
            (
                nov_rows[0].participant_seconds,
                nov_rows[0].peak_participants,
                nov_rows[0].meetings
            ),
            (900, 3, 1)
        );
        // A report spanning the boundary is refused.
        let across = report(&id, 3, b - 100, 300, "m1");
        assert!(matches!(
            s.ingest(&k.seal(&across), now, LIMITS),
            Err(Refusal::Implausible(Implausible::SpansMonths { .. }))
        ));
    }

    #[test]
    fn a_database_of_the_first_release_is_migrated() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ops.db");
        let k = key();
        let start = nov().start();
        {
            let db = Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE tokens (hash TEXT PRIMARY KEY, node TEXT NOT NULL, created INTEGER NOT NULL, expires INTEGER NOT NULL, used INTEGER);
                 CREATE TABLE nodes (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, public_key TEXT NOT NULL, enrolled INTEGER NOT NULL,
                     revoked INTEGER NOT NULL DEFAULT 0, version TEXT NOT NULL, facts TEXT NOT NULL, last_report INTEGER, health TEXT);
                 CREATE TABLE reports (node_id TEXT NOT NULL REFERENCES nodes(id), seq_from INTEGER NOT NULL, seq_to INTEGER NOT NULL,
                     period_from INTEGER NOT NULL, period_to INTEGER NOT NULL, received INTEGER NOT NULL, body TEXT NOT NULL, signature TEXT NOT NULL,
                     PRIMARY KEY (node_id, seq_to));
                 CREATE TABLE usage (node_id TEXT NOT NULL, seq_to INTEGER NOT NULL, member TEXT NOT NULL, period_from INTEGER NOT NULL,
                     meeting_seconds INTEGER NOT NULL, participant_seconds INTEGER NOT NULL, peak INTEGER NOT NULL);
                 CREATE INDEX usage_period ON usage (period_from);
                 CREATE TABLE meetings (node_id TEXT NOT NULL, seq_to INTEGER NOT NULL, meeting_id TEXT NOT NULL, member TEXT NOT NULL,
                     period_from INTEGER NOT NULL, seconds INTEGER NOT NULL);
                 CREATE INDEX meetings_period ON meetings (period_from);
                 CREATE TABLE gaps (node_id TEXT NOT NULL, seq_to INTEGER NOT NULL, gap_from INTEGER NOT NULL, gap_to INTEGER NOT NULL);",
            )
            .unwrap();
            db.execute(
                "INSERT INTO nodes (id, name, public_key, enrolled, version, facts) VALUES ('n1', 'ams-1', ?1, 0, '0.1.0', '{}')",
                params![k.public_key()],
            )
            .unwrap();
            db.execute(
                "INSERT INTO reports VALUES ('n1', 1, 1, ?1, ?2, 0, 'old body', 'sig')",
                params![start, start + 300],
            )
            .unwrap();
            db.execute(
                "INSERT INTO usage VALUES ('n1', 1, 'coop-a', ?1, 300, 600, 2)",
                params![start],
            )
            .unwrap();
            db.execute(
                "INSERT INTO meetings VALUES ('n1', 1, 'm1', 'coop-a', ?1, 300)",
                params![start],
            )
            .unwrap();
            db.execute(
                "INSERT INTO gaps VALUES ('n1', 1, ?1, ?2)",
                params![start + 10, start + 20],
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        let u = s.usage(nov()).unwrap();
        assert_eq!(
            (u.rows[0].participant_seconds, u.rows[0].meetings),
            (600, 1),
            "old rows kept"
        );
        assert_eq!(
            s.gaps(nov()).unwrap(),
            vec![("ams-1".to_string(), start + 10, start + 20, GapReason::NoAnswer)]
        );
        // The old reports are enrollment 1; the node reports on from there.
        let r = report("n1", 2, start + 300, 300, "m1");
        assert!(!s.ingest(&k.seal(&r), start + 600, LIMITS).unwrap().duplicate);
        let (_, epoch) = enroll_more(&mut s, "ams-1", &key());
        assert_eq!(epoch, 2);
        drop(s);
        assert!(Store::open(&path).is_ok(), "opens again without migrating twice");
    }
}
