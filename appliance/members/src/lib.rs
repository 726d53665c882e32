//! Member organisations on a node and the BBB API gateway's decisions.
//!
//! Each member (an association, a co-op, a city department) runs its own
//! front end against the node's BBB with its own API secret. This crate
//! holds what is pure about that:
//! - [`Members`]: the list, its changes (add, set limits, rotate a secret
//!   with an overlap, revoke one, remove a member), validated, serde-able;
//! - [`gateway`]: who signed a request (checksums exactly as bbb-web
//!   checks them, compared in constant time), how a call is rewritten for
//!   bbb-web (meeting ids scoped per member, the member tag forced, limits
//!   capped) and how BBB's answer is rewritten back (ids unscoped, other
//!   members' meetings left out);
//! - [`limits`]: what a member's limits allow, as a pure decision over the
//!   live meetings.
//!
//! No I/O and no clock: `now` (unix seconds) is always an argument.

use serde::{Deserialize, Serialize};

pub mod gateway;
pub mod limits;

/// What a member pays for; each limit is optional (none: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Participants in all of the member's meetings at once (breakout
    /// rooms count toward their parent's member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participants: Option<u32>,
    /// Meetings (rooms) running at once; breakout rooms are not rooms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<u32>,
    /// Longest meeting, in minutes; BBB ends a meeting when it is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_minutes: Option<u32>,
}

/// One API secret of a member.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// Names the secret in lists and commands (1, 2, ...; never reused
    /// within a member).
    pub id: u32,
    pub value: String,
    /// Unix seconds it was made.
    pub created: i64,
    /// After a rotation: the end of the overlap, after which it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
}

impl std::fmt::Debug for Secret {
    // Secrets never reach a log through Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("id", &self.id)
            .field("created", &self.created)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Secret {
    pub fn valid_at(&self, now: i64) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Short, stable, lower case: what reports and meeting ids carry.
    pub slug: String,
    /// The organisation's name as people write it.
    pub name: String,
    #[serde(default)]
    pub limits: Limits,
    pub secrets: Vec<Secret>,
    /// The highest secret id handed out: ids are never reused, so an
    /// audit entry naming secret 2 always means the same one.
    pub last_secret_id: u32,
    /// Unix seconds it was added.
    pub added: i64,
}

impl Member {
    /// The secrets that verify a request at `now`.
    pub fn valid_secrets(&self, now: i64) -> impl Iterator<Item = &Secret> {
        self.secrets.iter().filter(move |s| s.valid_at(now))
    }
}

/// A member as lists show it: no secret values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub slug: String,
    pub name: String,
    pub limits: Limits,
    /// (id, created, expires) of each secret still valid.
    pub secrets: Vec<SecretView>,
    pub added: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretView {
    pub id: u32,
    pub created: i64,
    pub expires: Option<i64>,
}

/// Every member of the node. Empty: the gateway passes calls through to
/// BBB unchanged (one shared secret, members by the front ends' tags), as
/// nodes did before members existed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Members {
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "{0:?} is not a usable short name: use 2 to 32 lower-case letters, digits and dashes, starting with a letter"
    )]
    BadSlug(String),
    #[error("{0:?} is reserved for meetings no member claims")]
    ReservedSlug(String),
    #[error("the name must be 1 to 100 characters without control characters")]
    BadName,
    #[error("a member {0:?} exists already")]
    Exists(String),
    #[error("no member {0:?}")]
    NoMember(String),
    #[error("member {slug:?} has no secret {id}")]
    NoSecret { slug: String, id: u32 },
    #[error("member {0:?} would be left without a secret: rotate instead, or remove the member")]
    LastSecret(String),
    #[error("a limit of 0 would refuse everything: leave the limit out for none")]
    ZeroLimit,
    #[error("that secret is already another member's")]
    SecretInUse,
}

/// The slug meetings no member claims are reported under.
pub const UNASSIGNED: &str = "unassigned";

pub fn check_slug(slug: &str) -> Result<(), Error> {
    let ok = (2..=32).contains(&slug.len())
        && slug.starts_with(|c: char| c.is_ascii_lowercase())
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(Error::BadSlug(slug.to_string()));
    }
    if slug == UNASSIGNED {
        return Err(Error::ReservedSlug(slug.to_string()));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), Error> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 100 || n.chars().any(char::is_control) {
        return Err(Error::BadName);
    }
    Ok(())
}

fn check_limits(l: &Limits) -> Result<(), Error> {
    if [l.participants, l.rooms, l.duration_minutes].contains(&Some(0)) {
        return Err(Error::ZeroLimit);
    }
    Ok(())
}

impl Members {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn get(&self, slug: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.slug == slug)
    }

    fn get_mut(&mut self, slug: &str) -> Result<&mut Member, Error> {
        self.members
            .iter_mut()
            .find(|m| m.slug == slug)
            .ok_or_else(|| Error::NoMember(slug.to_string()))
    }

    fn secret_taken(&self, value: &str) -> bool {
        self.members.iter().flat_map(|m| &m.secrets).any(|s| s.value == value)
    }

    pub fn views(&self, now: i64) -> Vec<MemberView> {
        self.members
            .iter()
            .map(|m| MemberView {
                slug: m.slug.clone(),
                name: m.name.clone(),
                limits: m.limits,
                secrets: m
                    .valid_secrets(now)
                    .map(|s| SecretView {
                        id: s.id,
                        created: s.created,
                        expires: s.expires,
                    })
                    .collect(),
                added: m.added,
            })
            .collect()
    }

    /// Adds a member with its first secret (made by the caller from the
    /// kernel's randomness; shown once).
    pub fn add(&mut self, slug: &str, name: &str, limits: Limits, secret: String, now: i64) -> Result<(), Error> {
        check_slug(slug)?;
        check_name(name)?;
        check_limits(&limits)?;
        if self.get(slug).is_some() {
            return Err(Error::Exists(slug.to_string()));
        }
        if self.secret_taken(&secret) {
            return Err(Error::SecretInUse);
        }
        self.members.push(Member {
            slug: slug.to_string(),
            name: name.trim().to_string(),
            limits,
            secrets: vec![Secret {
                id: 1,
                value: secret,
                created: now,
                expires: None,
            }],
            last_secret_id: 1,
            added: now,
        });
        self.members.sort_by(|a, b| a.slug.cmp(&b.slug));
        Ok(())
    }

    /// Changes a member's name or limits; returns the member as it is now.
    pub fn set(&mut self, slug: &str, name: Option<&str>, limits: Option<Limits>) -> Result<&Member, Error> {
        if let Some(n) = name {
            check_name(n)?;
        }
        if let Some(l) = &limits {
            check_limits(l)?;
        }
        let m = self.get_mut(slug)?;
        if let Some(n) = name {
            m.name = n.trim().to_string();
        }
        if let Some(l) = limits {
            m.limits = l;
        }
        Ok(m)
    }

    /// A new secret for a member; the ones it has keep working for
    /// `overlap_secs` more (0: they stop at once), so its front end can be
    /// switched over without a failed call. Returns the new secret's id.
    pub fn rotate(&mut self, slug: &str, secret: String, overlap_secs: i64, now: i64) -> Result<u32, Error> {
        if self.secret_taken(&secret) {
            return Err(Error::SecretInUse);
        }
        let m = self.get_mut(slug)?;
        let end = now.saturating_add(overlap_secs.max(0));
        m.secrets.retain(|s| s.valid_at(now));
        for s in &mut m.secrets {
            s.expires = Some(s.expires.map_or(end, |e| e.min(end)));
        }
        if overlap_secs <= 0 {
            m.secrets.clear();
        }
        m.last_secret_id += 1;
        let id = m.last_secret_id;
        m.secrets.push(Secret {
            id,
            value: secret,
            created: now,
            expires: None,
        });
        m.secrets.sort_by_key(|s| s.id);
        Ok(id)
    }

    /// Revokes one secret at once (e.g. a leaked one during an overlap).
    pub fn revoke(&mut self, slug: &str, id: u32, now: i64) -> Result<(), Error> {
        let m = self.get_mut(slug)?;
        let Some(pos) = m.secrets.iter().position(|s| s.id == id && s.valid_at(now)) else {
            return Err(Error::NoSecret {
                slug: slug.to_string(),
                id,
            });
        };
        if m.valid_secrets(now).count() == 1 {
            return Err(Error::LastSecret(slug.to_string()));
        }
        m.secrets.remove(pos);
        Ok(())
    }

    pub fn remove(&mut self, slug: &str) -> Result<Member, Error> {
        let pos = self
            .members
            .iter()
            .position(|m| m.slug == slug)
            .ok_or_else(|| Error::NoMember(slug.to_string()))?;
        Ok(self.members.remove(pos))
    }
}

/// A change to the members, as the CLI and the admin page ask for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    Add {
        slug: String,
        name: String,
        #[serde(default)]
        limits: Limits,
    },
    /// Name and/or limits; `None` keeps what is there.
    Set {
        slug: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        limits: Option<Limits>,
    },
    RotateSecret {
        slug: String,
        /// How long the secrets it has keep working (seconds).
        overlap_secs: i64,
    },
    RevokeSecret {
        slug: String,
        id: u32,
    },
    Remove {
        slug: String,
    },
}

impl Action {
    pub fn slug(&self) -> &str {
        match self {
            Action::Add { slug, .. }
            | Action::Set { slug, .. }
            | Action::RotateSecret { slug, .. }
            | Action::RevokeSecret { slug, .. }
            | Action::Remove { slug } => slug,
        }
    }

    /// What the audit log calls it.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Add { .. } => "add member",
            Action::Set { .. } => "change member",
            Action::RotateSecret { .. } => "rotate member secret",
            Action::RevokeSecret { .. } => "revoke member secret",
            Action::Remove { .. } => "remove member",
        }
    }
}

/// What a change did: a sentence, and a new secret to show once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("message", &self.message)
            .field("secret", &self.secret.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

fn limits_text(l: &Limits) -> String {
    let part = |v: Option<u32>, unit: &str| v.map_or(format!("any {unit}"), |n| format!("{n} {unit}"));
    format!(
        "{} at once, {} at once, {} per meeting",
        part(l.participants, "participants"),
        part(l.rooms, "rooms"),
        l.duration_minutes
            .map_or("no time limit".to_string(), |m| format!("{m} minutes"))
    )
}

impl Members {
    /// Applies a change; `new_secret` makes a secret when one is needed.
    pub fn apply(&mut self, action: &Action, new_secret: impl FnOnce() -> String, now: i64) -> Result<Outcome, Error> {
        match action {
            Action::Add { slug, name, limits } => {
                let secret = new_secret();
                self.add(slug, name, *limits, secret.clone(), now)?;
                Ok(Outcome {
                    message: format!(
                        "member {slug} added ({}); its secret is shown once",
                        limits_text(limits)
                    ),
                    secret: Some(secret),
                })
            }
            Action::Set { slug, name, limits } => {
                let m = self.set(slug, name.as_deref(), *limits)?;
                Ok(Outcome {
                    message: format!("member {slug} ({}): {}", m.name, limits_text(&m.limits)),
                    secret: None,
                })
            }
            Action::RotateSecret { slug, overlap_secs } => {
                let secret = new_secret();
                let id = self.rotate(slug, secret.clone(), *overlap_secs, now)?;
                let until = if *overlap_secs > 0 {
                    format!("the older ones keep working for {overlap_secs} s")
                } else {
                    "the older ones stopped working".to_string()
                };
                Ok(Outcome {
                    message: format!("member {slug}: secret {id} made, {until}; it is shown once"),
                    secret: Some(secret),
                })
            }
            Action::RevokeSecret { slug, id } => {
                self.revoke(slug, *id, now)?;
                Ok(Outcome {
                    message: format!("member {slug}: secret {id} revoked"),
                    secret: None,
                })
            }
            Action::Remove { slug } => {
                self.remove(slug)?;
                Ok(Outcome {
                    message: format!("member {slug} removed; its secrets stopped working"),
                    secret: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_as_the_cli_and_the_page_send_them() {
        let a: Action = serde_json::from_str(
            r#"{"action":"add","slug":"coop-a","name":"Co-op A","limits":{"participants":50,"rooms":2}}"#,
        )
        .unwrap();
        let mut m = Members::default();
        let out = m.apply(&a, || "fresh".into(), 5).unwrap();
        assert_eq!(out.secret.as_deref(), Some("fresh"));
        assert_eq!(
            out.message,
            "member coop-a added (50 participants at once, 2 rooms at once, no time limit per meeting); its secret is shown once"
        );
        assert!(!format!("{out:?}").contains("fresh"));
        let r: Action =
            serde_json::from_str(r#"{"action":"rotate_secret","slug":"coop-a","overlap_secs":60}"#).unwrap();
        let out = m.apply(&r, || "fresher".into(), 10).unwrap();
        assert!(
            out.message.starts_with("member coop-a: secret 2 made"),
            "{}",
            out.message
        );
        assert!(serde_json::from_str::<Action>(r#"{"action":"remove","slug":"x","force":true}"#).is_err());
        let e = m
            .apply(&Action::Remove { slug: "nobody".into() }, String::new, 0)
            .unwrap_err();
        assert_eq!(e.to_string(), "no member \"nobody\"");
    }

    fn one() -> Members {
        let mut m = Members::default();
        m.add("coop-a", "Co-op A", Limits::default(), "s1".into(), 100).unwrap();
        m
    }

    #[test]
    fn slugs_names_and_limits_are_checked() {
        for (slug, ok) in [
            ("ab", true),
            ("city-hall-2", true),
            ("a", false),
            ("Ab", false),
            ("1ab", false),
            ("a_b", false),
            ("a.b", false),
            (&"a".repeat(33), false),
            ("unassigned", false),
        ] {
            assert_eq!(check_slug(slug).is_ok(), ok, "{slug}");
        }
        let mut m = one();
        assert_eq!(
            m.add("coop-a", "x", Limits::default(), "s2".into(), 1),
            Err(Error::Exists("coop-a".into()))
        );
        assert_eq!(
            m.add("coop-b", " ", Limits::default(), "s2".into(), 1),
            Err(Error::BadName)
        );
        assert_eq!(
            m.add("coop-b", "B", Limits::default(), "s1".into(), 1),
            Err(Error::SecretInUse)
        );
        let zero = Limits {
            rooms: Some(0),
            ..Limits::default()
        };
        assert_eq!(m.add("coop-b", "B", zero, "s2".into(), 1), Err(Error::ZeroLimit));
        assert_eq!(m.set("coop-a", None, Some(zero)), Err(Error::ZeroLimit));
        assert_eq!(m.set("nobody", Some("N"), None), Err(Error::NoMember("nobody".into())));
    }

    #[test]
    fn rotation_overlaps_then_the_old_secret_fails() {
        let mut m = one();
        let id = m.rotate("coop-a", "s2".into(), 3600, 1000).unwrap();
        assert_eq!(id, 2);
        let a = m.get("coop-a").unwrap();
        let at = |t| a.valid_secrets(t).map(|s| s.value.clone()).collect::<Vec<_>>();
        assert_eq!(at(1000), ["s1", "s2"]);
        assert_eq!(at(4599), ["s1", "s2"]);
        assert_eq!(at(4600), ["s2"], "the old one ends with the overlap");
        // Rotating again during the overlap never extends the first.
        m.rotate("coop-a", "s3".into(), 7200, 2000).unwrap();
        let a = m.get("coop-a").unwrap();
        let ends: Vec<_> = a.secrets.iter().map(|s| (s.id, s.expires)).collect();
        assert_eq!(ends, [(1, Some(4600)), (2, Some(9200)), (3, None)]);
        // No overlap: only the new one.
        m.rotate("coop-a", "s4".into(), 0, 3000).unwrap();
        let a = m.get("coop-a").unwrap();
        assert_eq!(a.valid_secrets(3000).map(|s| s.id).collect::<Vec<_>>(), [4]);
        assert_eq!(m.views(3000)[0].secrets.len(), 1);
    }

    #[test]
    fn revoking_keeps_one_secret_and_ids_are_not_reused() {
        let mut m = one();
        m.rotate("coop-a", "s2".into(), 3600, 1000).unwrap();
        m.revoke("coop-a", 2, 1001).unwrap();
        assert_eq!(m.revoke("coop-a", 1, 1001), Err(Error::LastSecret("coop-a".into())));
        assert_eq!(
            m.revoke("coop-a", 2, 1001),
            Err(Error::NoSecret {
                slug: "coop-a".into(),
                id: 2
            })
        );
        let id = m.rotate("coop-a", "s3".into(), 0, 1002).unwrap();
        assert_eq!(id, 3, "2 was revoked, not forgotten");
        assert!(format!("{:?}", m).contains("Secret") && !format!("{:?}", m).contains("s3"));
    }

    #[test]
    fn unknown_keys_are_refused_when_read() {
        let text = r#"{"members":[{"slug":"ab","name":"A","secrets":[],"last_secret_id":0,"added":0,"colour":"red"}]}"#;
        assert!(serde_json::from_str::<Members>(text).is_err());
    }
}
