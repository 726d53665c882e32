//! The ops database (SQLite): enrollment tokens, nodes, reports and the
//! usage rows they carry. Every report is stored in one transaction with
//! its rows, and committed with a full fsync before it is acknowledged, so
//! an acknowledged report is never lost and a resent one is never counted
//! twice (reports are unique per node and sequence number).

use std::collections::BTreeMap;
use std::path::Path;

use appliance_usage::protocol::{EnrollRequest, Envelope, Report};
use appliance_usage::{Ack, Token};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

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
    #[error("the report's signature does not verify with the key of node {0:?}")]
    BadSignature(String),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("report range {0}..={1} overlaps reports already stored")]
    Overlap(u64, u64),
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
    pub revoked: bool,
    pub last_report: Option<i64>,
    pub health: Option<String>,
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

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the kernel's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A unix time as people read it: `2026-11-02 14:30:00 UTC`.
pub fn utc(t: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// Unix seconds of the first instant of `YYYY-MM` and of the next month.
pub fn month_range(month: &str) -> Option<(i64, i64)> {
    let (y, m) = month.split_once('-')?;
    let (y, m): (i64, i64) = (y.parse().ok()?, m.parse().ok()?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || month.len() != 7 {
        return None;
    }
    let days = |y: i64, m: i64| {
        // Days from the epoch to the first of the month (civil calendar).
        let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * m + 2) / 5;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146097 + doe - 719468
    };
    let start = days(y, m) * 86400;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    Some((start, days(ny, nm) * 86400))
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, Refusal> {
        let db = Connection::open(path)?;
        // WAL for concurrent CLI reads while serving; FULL so a commit is on
        // disk before the report is acknowledged.
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;
             CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, node TEXT NOT NULL, created INTEGER NOT NULL, expires INTEGER NOT NULL, used INTEGER);
             CREATE TABLE IF NOT EXISTS nodes (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, public_key TEXT NOT NULL, enrolled INTEGER NOT NULL,
                 revoked INTEGER NOT NULL DEFAULT 0, version TEXT NOT NULL, facts TEXT NOT NULL, last_report INTEGER, health TEXT);
             CREATE TABLE IF NOT EXISTS reports (node_id TEXT NOT NULL REFERENCES nodes(id), seq_from INTEGER NOT NULL, seq_to INTEGER NOT NULL,
                 period_from INTEGER NOT NULL, period_to INTEGER NOT NULL, received INTEGER NOT NULL, body TEXT NOT NULL, signature TEXT NOT NULL,
                 PRIMARY KEY (node_id, seq_to));
             CREATE TABLE IF NOT EXISTS usage (node_id TEXT NOT NULL, seq_to INTEGER NOT NULL, member TEXT NOT NULL, period_from INTEGER NOT NULL,
                 meeting_seconds INTEGER NOT NULL, participant_seconds INTEGER NOT NULL, peak INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS usage_period ON usage (period_from);
             CREATE TABLE IF NOT EXISTS meetings (node_id TEXT NOT NULL, seq_to INTEGER NOT NULL, meeting_id TEXT NOT NULL, member TEXT NOT NULL,
                 period_from INTEGER NOT NULL, seconds INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS meetings_period ON meetings (period_from);
             CREATE TABLE IF NOT EXISTS gaps (node_id TEXT NOT NULL, seq_to INTEGER NOT NULL, gap_from INTEGER NOT NULL, gap_to INTEGER NOT NULL);",
        )?;
        Ok(Store { db })
    }

    /// Issues a single-use token for `node`; returns the secret.
    pub fn create_token(&self, node: &str, now: i64, ttl_secs: i64) -> Result<String, Refusal> {
        let secret = random_hex(32);
        self.db.execute(
            "INSERT INTO tokens (hash, node, created, expires) VALUES (?1, ?2, ?3, ?4)",
            params![Token::secret_hash(&secret), node, now, now + ttl_secs],
        )?;
        Ok(secret)
    }

    /// Enrolls (or re-enrolls, with a fresh token) a node.
    pub fn enroll(&mut self, req: &EnrollRequest, now: i64) -> Result<String, Refusal> {
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
        let existing: Option<(String, i64)> = tx
            .query_row("SELECT id, revoked FROM nodes WHERE name = ?1", params![node], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let facts = serde_json::to_string(&req.facts).unwrap_or_default();
        let id = match existing {
            Some((_, revoked)) if revoked != 0 => return Err(Refusal::Revoked(node)),
            // Re-enrollment (a replaced disk or box): the new key replaces
            // the old one, which can no longer sign reports.
            Some((id, _)) => {
                tx.execute(
                    "UPDATE nodes SET public_key = ?2, enrolled = ?3, version = ?4, facts = ?5 WHERE id = ?1",
                    params![id, req.public_key, now, req.version, facts],
                )?;
                id
            }
            None => {
                let id = random_hex(16);
                tx.execute(
                    "INSERT INTO nodes (id, name, public_key, enrolled, version, facts) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id, node, req.public_key, now, req.version, facts],
                )?;
                id
            }
        };
        tx.execute(
            "UPDATE tokens SET used = ?2 WHERE hash = ?1",
            params![Token::secret_hash(&req.secret), now],
        )?;
        tx.commit()?;
        Ok(id)
    }

    pub fn revoke(&self, node: &str) -> Result<bool, Refusal> {
        Ok(self
            .db
            .execute("UPDATE nodes SET revoked = 1 WHERE name = ?1", params![node])?
            > 0)
    }

    /// Verifies and stores a report exactly once.
    pub fn ingest(&mut self, env: &Envelope, now: i64) -> Result<Ack, Refusal> {
        let claimed = env.claimed_node().map_err(|e| Refusal::Malformed(e.to_string()))?;
        let tx = self.db.transaction()?;
        let node: Option<(String, i64)> = tx
            .query_row(
                "SELECT public_key, revoked FROM nodes WHERE id = ?1",
                params![claimed],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (key, revoked) = node.ok_or_else(|| Refusal::UnknownNode(claimed.clone()))?;
        if revoked != 0 {
            return Err(Refusal::Revoked(claimed));
        }
        let r: Report = env.open(&key).map_err(|e| match e {
            appliance_usage::protocol::Error::BadReport(m) => Refusal::Malformed(m),
            _ => Refusal::BadSignature(claimed.clone()),
        })?;
        let overlap: Option<(i64, i64)> = tx
            .query_row(
                "SELECT seq_from, seq_to FROM reports WHERE node_id = ?1 AND seq_from <= ?3 AND seq_to >= ?2 LIMIT 1",
                params![r.node_id, r.seq_from as i64, r.seq_to as i64],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        match overlap {
            Some((f, t)) if f as u64 == r.seq_from && t as u64 == r.seq_to => {
                return Ok(Ack {
                    acked: r.seq_to,
                    duplicate: true,
                });
            }
            Some(_) => return Err(Refusal::Overlap(r.seq_from, r.seq_to)),
            None => {}
        }
        tx.execute(
            "INSERT INTO reports (node_id, seq_from, seq_to, period_from, period_to, received, body, signature) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![r.node_id, r.seq_from as i64, r.seq_to as i64, r.from, r.to, now, env.report, env.signature],
        )?;
        for u in &r.usage {
            tx.execute(
                "INSERT INTO usage (node_id, seq_to, member, period_from, meeting_seconds, participant_seconds, peak) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    r.node_id,
                    r.seq_to as i64,
                    u.member,
                    r.from,
                    u.usage.meeting_seconds as i64,
                    u.usage.participant_seconds as i64,
                    u.usage.peak_participants as i64
                ],
            )?;
        }
        for m in &r.meetings {
            tx.execute(
                "INSERT INTO meetings (node_id, seq_to, meeting_id, member, period_from, seconds) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![r.node_id, r.seq_to as i64, m.id, m.member, r.from, m.seconds as i64],
            )?;
        }
        for g in &r.gaps {
            tx.execute(
                "INSERT INTO gaps (node_id, seq_to, gap_from, gap_to) VALUES (?1, ?2, ?3, ?4)",
                params![r.node_id, r.seq_to as i64, g.from, g.to],
            )?;
        }
        tx.execute(
            "UPDATE nodes SET last_report = ?2, health = ?3, version = ?4 WHERE id = ?1",
            params![r.node_id, now, r.health, r.firmware],
        )?;
        tx.commit()?;
        Ok(Ack {
            acked: r.seq_to,
            duplicate: false,
        })
    }

    pub fn nodes(&self) -> Result<Vec<NodeRow>, Refusal> {
        let mut q = self
            .db
            .prepare("SELECT id, name, version, enrolled, revoked, last_report, health FROM nodes ORDER BY name")?;
        let rows = q
            .query_map([], |r| {
                Ok(NodeRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    version: r.get(2)?,
                    enrolled: r.get(3)?,
                    revoked: r.get::<_, i64>(4)? != 0,
                    last_report: r.get(5)?,
                    health: r.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Usage per node and member organisation for the month [start, end).
    pub fn usage(&self, start: i64, end: i64) -> Result<Vec<UsageRow>, Refusal> {
        let mut rows: BTreeMap<(String, String), UsageRow> = BTreeMap::new();
        let mut q = self.db.prepare(
            "SELECT n.name, u.member, SUM(u.meeting_seconds), SUM(u.participant_seconds), MAX(u.peak)
             FROM usage u JOIN nodes n ON n.id = u.node_id WHERE u.period_from >= ?1 AND u.period_from < ?2 GROUP BY n.name, u.member",
        )?;
        let it = q.query_map(params![start, end], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        for row in it {
            let (node, member, ms, ps, peak) = row?;
            rows.insert(
                (node.clone(), member.clone()),
                UsageRow {
                    node,
                    member,
                    meetings: 0,
                    meeting_seconds: ms as u64,
                    participant_seconds: ps as u64,
                    peak_participants: peak as u64,
                    longest_meeting_seconds: 0,
                },
            );
        }
        let mut q = self.db.prepare(
            "SELECT n.name, m.member, COUNT(*), MAX(m.total) FROM
               (SELECT node_id, member, meeting_id, SUM(seconds) AS total FROM meetings WHERE period_from >= ?1 AND period_from < ?2
                GROUP BY node_id, member, meeting_id) m JOIN nodes n ON n.id = m.node_id GROUP BY n.name, m.member",
        )?;
        let it = q.query_map(params![start, end], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in it {
            let (node, member, count, longest) = row?;
            let e = rows.entry((node.clone(), member.clone())).or_insert_with(|| UsageRow {
                node,
                member,
                meetings: 0,
                meeting_seconds: 0,
                participant_seconds: 0,
                peak_participants: 0,
                longest_meeting_seconds: 0,
            });
            e.meetings = count as u64;
            e.longest_meeting_seconds = longest as u64;
        }
        Ok(rows.into_values().collect())
    }

    /// Gaps reported in the month, per node: (node, from, to).
    pub fn gaps(&self, start: i64, end: i64) -> Result<Vec<(String, i64, i64)>, Refusal> {
        let mut q = self.db.prepare(
            "SELECT n.name, g.gap_from, g.gap_to FROM gaps g JOIN nodes n ON n.id = g.node_id WHERE g.gap_from >= ?1 AND g.gap_from < ?2 ORDER BY n.name, g.gap_from",
        )?;
        let rows = q
            .query_map(params![start, end], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
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
    use appliance_usage::{MemberUsage, NodeKey};

    use super::*;

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
        }
    }

    #[test]
    fn month_ranges() {
        assert_eq!(month_range("1970-01"), Some((0, 31 * 86400)));
        assert_eq!(month_range("2024-02").map(|(a, b)| (b - a) / 86400), Some(29));
        assert_eq!(month_range("2026-12").map(|(a, b)| (b - a) / 86400), Some(31));
        assert_eq!(utc(month_range("2026-11").unwrap().0), "2026-11-01 00:00:00 UTC");
        for bad in ["2026-13", "2026-1", "26-11", "nov", "2026-00"] {
            assert_eq!(month_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn tokens_are_single_use_and_expire() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(&d.path().join("ops.db")).unwrap();
        let k = NodeKey::from_pkcs8(&NodeKey::generate().unwrap()).unwrap();
        let t = s.create_token("ams-1", 1000, 3600).unwrap();
        assert_eq!(
            s.enroll(&enroll_req("forged", "ams-1", &k), 1000),
            Err(Refusal::UnknownToken)
        );
        assert!(matches!(
            s.enroll(&enroll_req(&t, "rtm-1", &k), 1000),
            Err(Refusal::WrongNode { .. })
        ));
        let id = s.enroll(&enroll_req(&t, "ams-1", &k), 1001).unwrap();
        assert_eq!(
            s.enroll(&enroll_req(&t, "ams-1", &k), 1002),
            Err(Refusal::UsedToken(utc(1001)))
        );
        let old = s.create_token("ams-2", 1000, 10).unwrap();
        assert_eq!(
            s.enroll(&enroll_req(&old, "ams-2", &k), 1010),
            Err(Refusal::ExpiredToken(utc(1010)))
        );
        // Re-enrolling with a new token keeps the node id, replaces the key.
        let k2 = NodeKey::from_pkcs8(&NodeKey::generate().unwrap()).unwrap();
        let t2 = s.create_token("ams-1", 2000, 3600).unwrap();
        assert_eq!(s.enroll(&enroll_req(&t2, "ams-1", &k2), 2000).unwrap(), id);
        assert!(
            matches!(
                s.ingest(&k.seal(&report(&id, 1, 0, 300, "m")), 2001),
                Err(Refusal::BadSignature(_))
            ),
            "the old key is gone"
        );
        assert!(s.ingest(&k2.seal(&report(&id, 1, 0, 300, "m")), 2001).is_ok());
        assert!(s.revoke("ams-1").unwrap());
        assert_eq!(
            s.ingest(&k2.seal(&report(&id, 2, 300, 300, "m")), 2002),
            Err(Refusal::Revoked(id.clone()))
        );
        let t3 = s.create_token("ams-1", 3000, 3600).unwrap();
        assert_eq!(
            s.enroll(&enroll_req(&t3, "ams-1", &k2), 3000),
            Err(Refusal::Revoked("ams-1".into()))
        );
    }

    #[test]
    fn reports_are_stored_once_and_summed_by_month() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(&d.path().join("ops.db")).unwrap();
        let k = NodeKey::from_pkcs8(&NodeKey::generate().unwrap()).unwrap();
        let other = NodeKey::from_pkcs8(&NodeKey::generate().unwrap()).unwrap();
        let t = s.create_token("ams-1", 0, 3600).unwrap();
        let id = s.enroll(&enroll_req(&t, "ams-1", &k), 0).unwrap();
        let t2 = s.create_token("rtm-1", 0, 3600).unwrap();
        let id2 = s.enroll(&enroll_req(&t2, "rtm-1", &other), 0).unwrap();
        let (start, end) = month_range("2026-11").unwrap();
        let r1 = k.seal(&report(&id, 1, start, 600, "m1"));
        assert_eq!(
            s.ingest(&r1, start).unwrap(),
            Ack {
                acked: 1,
                duplicate: false
            }
        );
        assert_eq!(
            s.ingest(&r1, start).unwrap(),
            Ack {
                acked: 1,
                duplicate: true
            },
            "a resend is acknowledged, not stored"
        );
        s.ingest(&k.seal(&report(&id, 2, start + 300, 900, "m1")), start)
            .unwrap();
        s.ingest(&k.seal(&report(&id, 3, start + 600, 300, "m2")), start)
            .unwrap();
        // Another node presenting this node's id is refused.
        assert_eq!(
            s.ingest(&other.seal(&report(&id, 4, start + 900, 300, "m3")), start),
            Err(Refusal::BadSignature(id.clone()))
        );
        // December does not count in November.
        s.ingest(&k.seal(&report(&id, 5, end, 300, "m9")), start).unwrap();
        s.ingest(&other.seal(&report(&id2, 1, start, 300, "x")), start).unwrap();
        let u = s.usage(start, end).unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(
            u[0],
            UsageRow {
                node: "ams-1".into(),
                member: "coop-a".into(),
                meetings: 2,
                meeting_seconds: 900,
                participant_seconds: 1800,
                peak_participants: 3,
                longest_meeting_seconds: 600
            }
        );
        assert_eq!(s.report_count().unwrap(), 5);
        // A merged report overlapping stored ones is refused.
        let mut merged = report(&id, 2, start, 1, "m1");
        merged.seq_from = 2;
        merged.seq_to = 6;
        assert_eq!(s.ingest(&k.seal(&merged), start), Err(Refusal::Overlap(2, 6)));
        assert!(matches!(
            s.ingest(
                &Envelope {
                    report: "{}".into(),
                    signature: "x".into()
                },
                0
            ),
            Err(Refusal::Malformed(_))
        ));
    }
}
