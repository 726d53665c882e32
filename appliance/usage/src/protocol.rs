//! What nodes and global ops say to each other: enrollment tokens and
//! messages, usage reports, their ed25519 signatures, and acknowledgements.
//!
//! A report travels as an [`Envelope`]: the report's JSON text exactly as
//! signed, and the signature over those bytes. Ops verifies the bytes it
//! received, so no canonical JSON form is needed.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::accounting::{Gap, MemberUsage, Period};
use crate::month::Month;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not an enrollment token (it should be one long line from `appliance-ops token create`)")]
    BadToken,
    #[error("the signing key is damaged: {0}")]
    BadKey(String),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("malformed report: {0}")]
    BadReport(String),
}

/// What `appliance-ops token create` prints: everything a node needs to
/// enroll, including the fingerprint of ops's certificate, so the node
/// trusts ops without trusting on first use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Format version.
    pub v: u32,
    /// Ops's base URL, e.g. `https://ops.example:9443`.
    pub ops: String,
    /// SHA-256 fingerprint of ops's certificate (colon-separated hex).
    pub fp: String,
    /// The node name the token is for.
    pub node: String,
    /// The single-use secret.
    pub secret: String,
}

const TOKEN_PREFIX: &str = "apl1.";

impl Token {
    pub fn encode(&self) -> String {
        format!(
            "{TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a token serialises"))
        )
    }

    pub fn decode(s: &str) -> Result<Token, Error> {
        let body = s.trim().strip_prefix(TOKEN_PREFIX).ok_or(Error::BadToken)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| Error::BadToken)?;
        let t: Token = serde_json::from_slice(&bytes).map_err(|_| Error::BadToken)?;
        if t.v != 1 || t.secret.is_empty() || t.node.is_empty() {
            return Err(Error::BadToken);
        }
        Ok(t)
    }

    /// What ops stores instead of the secret.
    pub fn secret_hash(secret: &str) -> String {
        hex(&Sha256::digest(secret.as_bytes()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The node's request to enroll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub secret: String,
    pub node: String,
    /// The node's ed25519 public key, base64.
    pub public_key: String,
    pub version: String,
    /// Hardware facts: profile, DMI, CPUs, memory.
    pub facts: BTreeMap<String, String>,
}

/// Ops's answer to a successful enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub node_id: String,
    pub node: String,
    /// This enrollment's number for the node (1 for the first, one more
    /// for each re-enrollment, e.g. after a disk swap). Reports carry it:
    /// ops keys them by (node, epoch, sequence number), so a new box that
    /// counts from 1 again collides with nothing the old one sent.
    pub epoch: u64,
    /// How often ops wants a report.
    pub report_interval_secs: u64,
    /// Where reports go, relative to the ops URL.
    pub reports_path: String,
    /// Where the update repository is, once there is one.
    pub updates_url: Option<String>,
}

/// An error answer from ops: a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Longest member name or meeting id in a report, in bytes: ops refuses
/// longer ones, so the node cuts them at the source.
pub const MAX_NAME: usize = 256;

/// `s` cut to at most [`MAX_NAME`] bytes, on a character boundary.
pub fn clip_name(s: &str) -> &str {
    let mut end = s.len().min(MAX_NAME);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A member's line in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberLine {
    pub member: String,
    #[serde(flatten)]
    pub usage: MemberUsage,
}

/// Seconds of one main meeting within the report's period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingLine {
    /// BBB's internal meeting id.
    pub id: String,
    pub member: String,
    pub seconds: u64,
}

/// Resource figures over the period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_avg: Option<f64>,
    pub cpu_max: Option<f64>,
    /// Bytes in and out per uplink interface during the period.
    pub rx_bytes: BTreeMap<String, u64>,
    pub tx_bytes: BTreeMap<String, u64>,
    pub max_temperature: Option<f64>,
    pub disk_used_ratio_max: Option<f64>,
}

/// A usage report. `seq_from..=seq_to` is one sequence number, or the
/// range of several old reports merged while ops was unreachable. The
/// period `[from, to)` lies within one UTC month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub node_id: String,
    /// The enrollment the report belongs to (see [`EnrollResponse::epoch`]).
    /// 0: a report in the form of the release before enrollments were
    /// numbered (queued then, or a legacy period); ops takes it as
    /// enrollment 1's, billed to the month it starts in.
    #[serde(default)]
    pub epoch: u64,
    pub seq_from: u64,
    pub seq_to: u64,
    /// The period, unix seconds.
    pub from: i64,
    pub to: i64,
    pub firmware: String,
    pub usage: Vec<MemberLine>,
    pub meetings: Vec<MeetingLine>,
    /// Intervals nobody could account for, and why.
    pub gaps: Vec<Gap>,
    pub resources: Resources,
    /// The node's health when the report was made, and its services.
    pub health: String,
    pub services: String,
    /// Where the node stands with updates (absent from nodes without
    /// updates and from older firmware).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateReport>,
    /// The member organisations the node had when the report was made
    /// (slugs, sorted), so ops lists a member that used nothing. Absent
    /// from nodes without members and from older firmware.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

/// A node's update state as ops keeps it per node: what `appliance-ops
/// nodes` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateReport {
    pub channel: String,
    /// Its place in rollouts, 0 to 9999 (a wave of p % takes those below
    /// p * 100).
    pub position: u16,
    /// A version installed and not yet committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation: Option<String>,
    /// "VERSION RESULT[: reason]" of the last update (installed,
    /// rolled_back, failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// Why the last check or install failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The OS image (A/B root slots): "VERSION (slot X)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// An OS update written to the other slot and not yet settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_pending: Option<String>,
    /// "VERSION RESULT[: reason]" of the last OS update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_last_result: Option<String>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn from_period(
        node_id: &str,
        epoch: u64,
        seq: u64,
        firmware: &str,
        p: &Period,
        resources: Resources,
        health: String,
        services: String,
    ) -> Report {
        Report {
            node_id: node_id.to_string(),
            epoch,
            seq_from: seq,
            seq_to: seq,
            from: p.from,
            to: p.to,
            firmware: firmware.to_string(),
            usage: p
                .members
                .iter()
                .map(|(m, u)| MemberLine {
                    member: m.clone(),
                    usage: u.clone(),
                })
                .collect(),
            meetings: p
                .meetings
                .iter()
                .map(|(id, m)| MeetingLine {
                    id: id.clone(),
                    member: m.member.clone(),
                    seconds: m.seconds,
                })
                .collect(),
            gaps: p.gaps.clone(),
            resources,
            health,
            services,
            update: None,
            members: Vec::new(),
        }
    }

    /// The UTC month the report's usage belongs to.
    pub fn month(&self) -> Month {
        Month::of(self.from)
    }

    /// Whether `later` may be merged into this report: same node and
    /// enrollment, and the merged period still within one month (a merge
    /// across a month boundary would bill one month's usage to another).
    pub fn can_merge(&self, later: &Report) -> bool {
        self.node_id == later.node_id
            && self.epoch == later.epoch
            && self.seq_to < later.seq_from
            && self.to <= later.from
            && self.month() == later.month()
            && crate::month::within_one_month(self.from, later.to)
    }

    /// Merges a later report into this one (for a long offline time):
    /// sums, peaks and meeting seconds combine; nothing is dropped. Check
    /// [`Report::can_merge`] first.
    pub fn merge(&mut self, later: &Report) {
        self.seq_to = later.seq_to;
        self.to = later.to;
        self.firmware = later.firmware.clone();
        if later.update.is_some() {
            self.update = later.update.clone();
        }
        // Every member the node had at some point of the merged period.
        self.members.extend(later.members.iter().cloned());
        self.members.sort();
        self.members.dedup();
        for l in &later.usage {
            match self.usage.iter_mut().find(|u| u.member == l.member) {
                Some(u) => u.usage.add(&l.usage),
                None => self.usage.push(l.clone()),
            }
        }
        for m in &later.meetings {
            match self.meetings.iter_mut().find(|x| x.id == m.id && x.member == m.member) {
                Some(x) => x.seconds = x.seconds.saturating_add(m.seconds),
                None => self.meetings.push(m.clone()),
            }
        }
        for g in &later.gaps {
            crate::accounting::push_gap(&mut self.gaps, *g);
        }
        let r = &mut self.resources;
        let l = &later.resources;
        r.cpu_avg = match (r.cpu_avg, l.cpu_avg) {
            (Some(a), Some(b)) => Some((a + b) / 2.0),
            (a, b) => a.or(b),
        };
        r.cpu_max = match (r.cpu_max, l.cpu_max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for (k, v) in &l.rx_bytes {
            let e = r.rx_bytes.entry(k.clone()).or_default();
            *e = e.saturating_add(*v);
        }
        for (k, v) in &l.tx_bytes {
            let e = r.tx_bytes.entry(k.clone()).or_default();
            *e = e.saturating_add(*v);
        }
        r.max_temperature = match (r.max_temperature, l.max_temperature) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        r.disk_used_ratio_max = match (r.disk_used_ratio_max, l.disk_used_ratio_max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.health = later.health.clone();
        self.services = later.services.clone();
    }
}

/// A signed report as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The report's JSON text, exactly the bytes signed.
    pub report: String,
    /// ed25519 signature, base64.
    pub signature: String,
}

/// The sender a report names: its node and enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Claim {
    pub node_id: String,
    #[serde(default)]
    pub epoch: u64,
}

/// Ops's answer to a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The `seq_to` of the report now stored (or stored before).
    pub acked: u64,
    /// Whether it had been stored before (a resend).
    pub duplicate: bool,
}

/// The node's signing key.
#[derive(Debug)]
pub struct NodeKey {
    pair: aws_lc_rs::signature::Ed25519KeyPair,
}

impl NodeKey {
    /// A new key as PKCS#8 bytes, to store (0600) and load with [`NodeKey::from_pkcs8`].
    pub fn generate() -> Result<Vec<u8>, Error> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|e| Error::BadKey(e.to_string()))
    }

    pub fn from_pkcs8(b: &[u8]) -> Result<NodeKey, Error> {
        aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(b)
            .map(|pair| NodeKey { pair })
            .map_err(|e| Error::BadKey(e.to_string()))
    }

    /// The public key, base64.
    pub fn public_key(&self) -> String {
        use aws_lc_rs::signature::KeyPair;
        STANDARD.encode(self.pair.public_key().as_ref())
    }

    pub fn seal(&self, report: &Report) -> Envelope {
        self.seal_text(serde_json::to_string(report).expect("a report serialises"))
    }

    /// Signs a report's JSON text exactly as given.
    pub fn seal_text(&self, text: String) -> Envelope {
        let sig = self.pair.sign(text.as_bytes());
        Envelope {
            report: text,
            signature: STANDARD.encode(sig.as_ref()),
        }
    }
}

impl Envelope {
    /// Checks the signature with a node's public key and parses the report.
    pub fn open(&self, public_key_b64: &str) -> Result<Report, Error> {
        let pk = STANDARD
            .decode(public_key_b64)
            .map_err(|e| Error::BadKey(e.to_string()))?;
        let sig = STANDARD.decode(&self.signature).map_err(|_| Error::BadSignature)?;
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &pk)
            .verify(self.report.as_bytes(), &sig)
            .map_err(|_| Error::BadSignature)?;
        let r: Report = serde_json::from_str(&self.report).map_err(|e| Error::BadReport(e.to_string()))?;
        if r.seq_from > r.seq_to || r.from > r.to {
            return Err(Error::BadReport("ranges run backwards".into()));
        }
        Ok(r)
    }

    /// Who the report claims to come from, before any trust (to find the
    /// key to check it with).
    pub fn claim(&self) -> Result<Claim, Error> {
        serde_json::from_str::<Claim>(&self.report).map_err(|e| Error::BadReport(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64) -> Report {
        Report {
            node_id: "n1".into(),
            epoch: 1,
            seq_from: seq,
            seq_to: seq,
            from: 0,
            to: 300,
            firmware: "0.1.0".into(),
            usage: vec![MemberLine {
                member: "a".into(),
                usage: MemberUsage {
                    meeting_seconds: 300,
                    participant_seconds: 900,
                    peak_participants: 4,
                },
            }],
            meetings: vec![MeetingLine {
                id: "m".into(),
                member: "a".into(),
                seconds: 300,
            }],
            gaps: vec![],
            resources: Resources::default(),
            health: "ok".into(),
            services: "7 of 7 up".into(),
            update: None,
            members: vec![],
        }
    }

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        let t = Token {
            v: 1,
            ops: "https://ops:9443".into(),
            fp: "AA:BB".into(),
            node: "ams-1".into(),
            secret: "s3".into(),
        };
        let s = t.encode();
        assert!(s.starts_with("apl1.") && !s.contains(' '));
        assert_eq!(Token::decode(&format!("  {s}\n")).unwrap(), t);
        for bad in ["", "apl1.", "apl1.!!!", "xyz", &s[..s.len() - 4]] {
            assert_eq!(Token::decode(bad), Err(Error::BadToken), "{bad}");
        }
        assert_eq!(Token::secret_hash("s3").len(), 64);
    }

    #[test]
    fn signatures_bind_report_and_key() {
        let k = NodeKey::from_pkcs8(&NodeKey::generate().unwrap()).unwrap();
        let other = NodeKey::from_pkcs8(&NodeKey::generate().unwrap()).unwrap();
        let env = k.seal(&report(7));
        assert_eq!(env.open(&k.public_key()).unwrap(), report(7));
        assert_eq!(
            env.claim().unwrap(),
            Claim {
                node_id: "n1".into(),
                epoch: 1
            }
        );
        assert_eq!(
            env.open(&other.public_key()),
            Err(Error::BadSignature),
            "another node's key"
        );
        let mut tampered = env.clone();
        tampered.report = tampered.report.replace("900", "901");
        assert_eq!(tampered.open(&k.public_key()), Err(Error::BadSignature));
    }

    #[test]
    fn merging_adds_and_keeps_peaks() {
        let mut a = report(1);
        let mut b = report(2);
        b.usage[0].usage.peak_participants = 9;
        b.usage.push(MemberLine {
            member: "b".into(),
            usage: MemberUsage {
                meeting_seconds: 1,
                participant_seconds: 2,
                peak_participants: 1,
            },
        });
        b.from = 300;
        b.to = 600;
        a.members = vec!["a".into(), "gone".into()];
        b.members = vec!["a".into(), "b".into()];
        assert!(a.can_merge(&b));
        a.merge(&b);
        assert_eq!((a.seq_from, a.seq_to, a.from, a.to), (1, 2, 0, 600));
        assert_eq!(a.members, ["a", "b", "gone"], "every member the node had in the period");
        assert_eq!(
            a.usage[0].usage,
            MemberUsage {
                meeting_seconds: 600,
                participant_seconds: 1800,
                peak_participants: 9
            }
        );
        assert_eq!(a.usage.len(), 2);
        assert_eq!(
            a.meetings,
            vec![MeetingLine {
                id: "m".into(),
                member: "a".into(),
                seconds: 600
            }]
        );
    }

    #[test]
    fn merges_stay_within_a_month_and_an_enrollment() {
        let b = Month::parse("2026-11").unwrap().start();
        let at = |seq: u64, from: i64, to: i64| Report {
            from,
            to,
            ..report(seq)
        };
        // (earlier, later, may merge)
        let cases = [
            ("both in October", at(1, b - 600, b - 300), at(2, b - 300, b), true),
            ("October and November", at(1, b - 300, b), at(2, b, b + 300), false),
            ("both in November", at(1, b, b + 300), at(2, b + 300, b + 600), true),
            (
                "a zero-length November report after October",
                at(1, b - 300, b),
                at(2, b, b),
                false,
            ),
            (
                "other epoch",
                at(1, b, b + 300),
                Report {
                    epoch: 2,
                    ..at(2, b + 300, b + 600)
                },
                false,
            ),
            ("out of order", at(2, b, b + 300), at(1, b + 300, b + 600), false),
            ("periods overlapping", at(1, b, b + 300), at(2, b + 200, b + 600), false),
        ];
        for (name, a, later, want) in cases {
            assert_eq!(a.can_merge(&later), want, "{name}");
        }
    }

    #[test]
    fn names_are_clipped_on_character_boundaries() {
        assert_eq!(clip_name("coop-a"), "coop-a");
        let long = "é".repeat(200); // 400 bytes
        let c = clip_name(&long);
        assert!(c.len() <= MAX_NAME && c.len() >= MAX_NAME - 1);
        assert!(long.starts_with(c));
    }

    #[test]
    fn reports_from_before_enrollments_were_numbered_are_enrollment_0() {
        let mut v = serde_json::to_value(report(3)).unwrap();
        v.as_object_mut().unwrap().remove("epoch");
        let text = v.to_string();
        let r: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(r.epoch, 0);
        let env = Envelope {
            report: text,
            signature: String::new(),
        };
        assert_eq!(
            env.claim().unwrap(),
            Claim {
                node_id: "n1".into(),
                epoch: 0
            }
        );
    }
}
