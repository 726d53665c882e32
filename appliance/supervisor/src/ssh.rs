//! SSH for operators: off unless an operator turns it on with a public key
//! from the admin page. The keys and the switch live in the supervisor's
//! state; sshd asks for them through `AuthorizedKeysCommand` (`appliance
//! ssh authorized-keys`), so no file under /root is written and turning SSH
//! off takes every key away at once. Parsing and the state's rules are
//! pure; `load`/`save` are the thin file adapters.

use std::fs;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Keys one box keeps: enough for a support team, few enough to review.
pub const MAX_KEYS: usize = 10;
/// RSA below this is refused (NIST SP 800-57: 2048 bits until 2030).
pub const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SshError {
    #[error("not an OpenSSH public key line (\"ssh-ed25519 AAAA... comment\"): {0}")]
    NotAKey(String),
    #[error(
        "key type {0:?} is not accepted (ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa of {MIN_RSA_BITS} bits or more, and their security-key forms are)"
    )]
    Type(String),
    #[error("this RSA key has {0} bits; at least {MIN_RSA_BITS} are needed")]
    WeakRsa(usize),
    #[error("options before the key (command=, from=, ...) are not accepted: the node sets its own")]
    Options,
    #[error("the key {0} is already there")]
    Duplicate(String),
    #[error("no key {0} here")]
    UnknownKey(String),
    #[error("at most {MAX_KEYS} keys; remove one first")]
    TooMany,
    #[error("SSH cannot be turned on without a key")]
    NoKey,
}

/// A parsed public key: type, the key blob, and its fingerprint as
/// `ssh-keygen -l` prints it (`SHA256:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kind: String,
    pub blob: Vec<u8>,
    pub comment: String,
    pub fingerprint: String,
}

const TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Reads one SSH wire string (u32 length, bytes) from the front of `b`.
fn wire_string<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let s = b.get(4..4 + len)?;
    *b = &b[4 + len..];
    Some(s)
}

fn rsa_bits(mut rest: &[u8]) -> Option<usize> {
    let _e = wire_string(&mut rest)?;
    let n = wire_string(&mut rest)?;
    let n: Vec<u8> = n.iter().copied().skip_while(|&x| x == 0).collect();
    let first = *n.first()?;
    Some((n.len() - 1) * 8 + (8 - first.leading_zeros() as usize))
}

/// Parses one line as `ssh-keygen` writes a `.pub` file. Checks that the
/// blob is what its type says (so a pasted private key, a certificate or a
/// truncated line is refused with a reason) and keeps a printable comment.
pub fn parse_public_key(line: &str) -> Result<PublicKey, SshError> {
    let line = line.trim();
    let mut words = line.split_whitespace();
    let kind = words
        .next()
        .ok_or_else(|| SshError::NotAKey("the line is empty".into()))?;
    if !TYPES.contains(&kind) {
        if line.contains("PRIVATE KEY") {
            return Err(SshError::NotAKey(
                "this is a private key; paste the .pub file instead".into(),
            ));
        }
        if words.any(|w| TYPES.contains(&w)) {
            return Err(SshError::Options);
        }
        return Err(SshError::Type(kind.chars().take(40).collect()));
    }
    let b64 = words
        .next()
        .ok_or_else(|| SshError::NotAKey("the key data after the type is missing".into()))?;
    let blob = STANDARD
        .decode(b64)
        .map_err(|_| SshError::NotAKey("the key data is not base64".into()))?;
    let mut rest = blob.as_slice();
    let inner = wire_string(&mut rest).ok_or_else(|| SshError::NotAKey("the key data is cut short".into()))?;
    if inner != kind.as_bytes() {
        return Err(SshError::NotAKey(format!(
            "the key data is of type {:?}, not {kind:?}",
            String::from_utf8_lossy(inner)
        )));
    }
    match kind {
        "ssh-ed25519" | "sk-ssh-ed25519@openssh.com" => {
            let k = wire_string(&mut rest).filter(|k| k.len() == 32);
            k.ok_or_else(|| SshError::NotAKey("an Ed25519 key has 32 bytes".into()))?;
        }
        "ssh-rsa" => {
            let bits = rsa_bits(rest).ok_or_else(|| SshError::NotAKey("the RSA key data is cut short".into()))?;
            if bits < MIN_RSA_BITS {
                return Err(SshError::WeakRsa(bits));
            }
        }
        _ => {
            let curve = wire_string(&mut rest).ok_or_else(|| SshError::NotAKey("the curve is missing".into()))?;
            if !kind.contains(std::str::from_utf8(curve).unwrap_or("?")) {
                return Err(SshError::NotAKey("the curve does not match the key type".into()));
            }
            wire_string(&mut rest).ok_or_else(|| SshError::NotAKey("the key point is missing".into()))?;
        }
    }
    let comment: String = words
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    let fingerprint = format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(&blob)));
    Ok(PublicKey {
        kind: kind.to_string(),
        blob,
        comment,
        fingerprint,
    })
}

/// A key as the node keeps it, with who added it and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshKey {
    pub kind: String,
    /// The key data, base64 as in the `.pub` file.
    pub data: String,
    pub comment: String,
    pub fingerprint: String,
    pub added_by: String,
    /// Unix seconds.
    pub added_at: u64,
}

/// `ssh.json` in the state directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshState {
    pub enabled: bool,
    #[serde(default)]
    pub keys: Vec<SshKey>,
}

impl SshState {
    pub fn add_key(&mut self, key: PublicKey, by: &str, at: u64) -> Result<(), SshError> {
        if self.keys.iter().any(|k| k.fingerprint == key.fingerprint) {
            return Err(SshError::Duplicate(key.fingerprint));
        }
        if self.keys.len() >= MAX_KEYS {
            return Err(SshError::TooMany);
        }
        self.keys.push(SshKey {
            kind: key.kind,
            data: STANDARD.encode(&key.blob),
            comment: key.comment,
            fingerprint: key.fingerprint,
            added_by: by.to_string(),
            added_at: at,
        });
        Ok(())
    }

    /// Removes a key; the last key going turns SSH off (nobody could log
    /// in anyway, and a later key must not silently reopen it).
    pub fn remove_key(&mut self, fingerprint: &str) -> Result<SshKey, SshError> {
        let i = self
            .keys
            .iter()
            .position(|k| k.fingerprint == fingerprint)
            .ok_or_else(|| SshError::UnknownKey(fingerprint.to_string()))?;
        let k = self.keys.remove(i);
        if self.keys.is_empty() {
            self.enabled = false;
        }
        Ok(k)
    }

    pub fn set_enabled(&mut self, on: bool) -> Result<(), SshError> {
        if on && self.keys.is_empty() {
            return Err(SshError::NoKey);
        }
        self.enabled = on;
        Ok(())
    }

    /// What sshd gets for `user`: the keys, each restricted (no port,
    /// agent or X11 forwarding; a terminal allowed), for root only, and
    /// nothing at all while SSH is off.
    pub fn authorized_keys(&self, user: &str) -> String {
        if !self.enabled || user != "root" {
            return String::new();
        }
        self.keys
            .iter()
            .map(|k| {
                let comment: String = k.comment.chars().filter(|c| !c.is_control()).collect();
                format!("restrict,pty {} {} {comment}\n", k.kind, k.data)
            })
            .collect()
    }
}

pub fn load(path: &Path) -> std::io::Result<SshState> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SshState::default()),
        Err(e) => Err(e),
    }
}

/// Writes the state atomically, and the flag file beside it that
/// `ssh.service`'s `ConditionPathExists=` reads at boot.
pub fn save(path: &Path, state: &SshState) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(".ssh.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)?;
    let flag = dir.join("ssh-enabled");
    if state.enabled {
        fs::write(&flag, b"")?;
    } else if let Err(e) = fs::remove_file(&flag)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(e);
    }
    fs::File::open(dir)?.sync_all()
}

/// The unit the switch starts and stops; on the image its drop-in has
/// `ConditionPathExists=` on the flag file, so it stays off at boot too.
pub const UNIT: &str = "ssh.service";
/// Written by the image: sshd asks `appliance ssh authorized-keys`.
const IMAGE_CONFIG: &str = "/etc/ssh/sshd_config.d/50-appliance.conf";

pub fn state_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("ssh.json")
}

/// Whether this system has the SSH server the node manages.
pub fn available() -> bool {
    Path::new(IMAGE_CONFIG).exists() && Path::new("/usr/sbin/sshd").exists()
}

pub fn view(state_dir: &Path) -> appliance_api::SshView {
    let s = load(&state_path(state_dir)).unwrap_or_default();
    appliance_api::SshView {
        available: available(),
        enabled: s.enabled,
        keys: s
            .keys
            .into_iter()
            .map(|k| appliance_api::SshKeyView {
                fingerprint: k.fingerprint,
                kind: k.kind,
                comment: k.comment,
                added_by: k.added_by,
                added_at: k.added_at,
            })
            .collect(),
    }
}

/// One change at a time: read, change, write under this lock.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Applies an operator's change to the state, then starts or stops sshd
/// to match. Returns a sentence that names keys by fingerprint only.
pub async fn act(
    state_dir: &Path,
    action: appliance_api::SshAction,
    by: &str,
) -> Result<String, appliance_api::ActionError> {
    use appliance_api::{ActionError, SshAction};
    let enabling = action == SshAction::Enable;
    let path = state_path(state_dir);
    let (msg, was, enabled) = {
        let _guard = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut s = load(&path).map_err(|e| ActionError::Failed(format!("reading {}: {e}", path.display())))?;
        let was = s.enabled;
        let invalid = |e: SshError| ActionError::Invalid(e.to_string());
        let msg = match action {
            SshAction::AddKey(line) => {
                let k = parse_public_key(&line).map_err(invalid)?;
                let fp = k.fingerprint.clone();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                s.add_key(k, by, now).map_err(invalid)?;
                format!("key {fp} added")
            }
            SshAction::RemoveKey(fp) => {
                s.remove_key(&fp).map_err(|e| ActionError::NotFound(e.to_string()))?;
                format!("key {fp} removed")
            }
            SshAction::Enable => {
                if !available() {
                    return Err(ActionError::Unavailable(
                        "this system has no SSH server the node manages".into(),
                    ));
                }
                s.set_enabled(true).map_err(invalid)?;
                "SSH is on".to_string()
            }
            SshAction::Disable => {
                s.set_enabled(false).map_err(invalid)?;
                "SSH is off".to_string()
            }
        };
        save(&path, &s).map_err(|e| ActionError::Failed(format!("writing {}: {e}", path.display())))?;
        (msg, was, s.enabled)
    };
    // sshd follows the switch only when it moved: adding or removing a key
    // acts through AuthorizedKeysCommand at the next login. (Turning it on
    // while on starts it again, should it have died.)
    if !available() || (enabled == was && !enabling) {
        return Ok(msg);
    }
    use appliance_services::systemd::{ServiceManager, Systemd};
    let sd = Systemd::connect()
        .await
        .map_err(|e| ActionError::Unavailable(e.to_string()))?;
    let res = if enabled {
        sd.start(UNIT).await
    } else {
        sd.stop(UNIT).await
    };
    res.map_err(|e| ActionError::Failed(format!("{msg}, but {UNIT} did not follow: {e}")))?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(parts: &[&[u8]]) -> String {
        let mut b = Vec::new();
        for p in parts {
            b.extend_from_slice(&(p.len() as u32).to_be_bytes());
            b.extend_from_slice(p);
        }
        STANDARD.encode(b)
    }

    fn ed25519(seed: u8, comment: &str) -> String {
        format!("ssh-ed25519 {} {comment}", wire(&[b"ssh-ed25519", &[seed; 32]]))
    }

    #[test]
    fn real_keys_and_their_fingerprints() {
        // Made with ssh-keygen (OpenSSH 9.2); the fingerprints are what
        // `ssh-keygen -lf` printed for them.
        let cases = [
            (
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJaoMOunDRGQzmf++GFkrmjrh5026zn7t3TOGgrhjt0W alice@laptop",
                "SHA256:c8p/4Jfwo8hzHjns+xBuzYRp3HVMkyHSyNPDyWHb/rY",
                "alice@laptop",
            ),
            (
                "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQCviay7CXgJZelqQLbWnmY/zs8cacT0pR/V2pZ0mvOZMeYy4qTnSXX0rQuwlr8JiXNkaRNPE+8dRlB9UhpMBL/7LmbrgeNwwNBrNH2/W/0twXuPjlqgRQviWIsOgVTQPtte5Qz2TK2sRb4p1Fdv5MywoljfIo4S75NO3nDN1JpoWv+s4LqahxrP1BrBKYg2w+vwrJqbbDx1EZVEdftxtC18KjMcZQ3QyrnSHi4pwBARavvI29DPveOa7LdUaOLS2guvRMSpj0auDHMPZQI2xYyzWmSma27Xn5cxrbKGDv+W0XKJWSg1bYxIPdVr/yUMh3dO2uMwW7MdIw7NcU430m3s1QMpE7EoG0gqIyRZSKxcmDb8Se+mJWkVKBnejfph0o51arFnsBpiGaiXc34SMdNoE5m7zvPH+lqZCglAlojZTsj6FsBU4eMw97rT9054Ytd+KPnhk1ZwOpg/+L0b5OW5Qnz+rvQHND4VH8xnXsGpofMoCwLSCG5ukFTOu4d117U= r",
                "SHA256:SYwiQ/wZwkYh5TnOjzf4qZidBbmhQLAIFizFfCRoD/o",
                "r",
            ),
            (
                "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBGbOmwXLRkYse3gCxmW8x+Oa1kS6Vfaj9ULnB4EKxsrp/G9h4p3ptSaXya9u9jEPXpq+hLMMKLyzWgmVKPqivB5F/7TGuel+GfXPuzYi+IsApw6MeWChJ2lVahmc4wBUOQ== e",
                "SHA256:kSZkKu2jcnzJF8xWWWaL8LEse546Fk/0CNTW4ugxtOk",
                "e",
            ),
        ];
        for (line, fingerprint, comment) in cases {
            let k = parse_public_key(line).unwrap();
            assert_eq!(k.fingerprint, fingerprint, "{line}");
            assert_eq!(k.comment, comment);
        }
    }

    #[test]
    fn what_is_refused_and_why() {
        let rsa = |bits: usize| {
            let mut n = vec![0u8];
            n.push(0x80);
            n.extend(std::iter::repeat_n(0x11, bits / 8 - 1));
            format!("ssh-rsa {}", wire(&[b"ssh-rsa", &[1, 0, 1], &n]))
        };
        assert!(parse_public_key(&rsa(3072)).is_ok());
        assert_eq!(parse_public_key(&rsa(1024)), Err(SshError::WeakRsa(1024)));
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("-----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaC1r", "private key"),
            ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "ssh-dss"),
            ("command=\"/bin/sh\" ssh-ed25519 AAAA", "options"),
            ("ssh-ed25519", "missing"),
            ("ssh-ed25519 !!!notbase64", "not base64"),
            ("ssh-ed25519 AAAA", "cut short"),
        ];
        for (line, want) in cases {
            let e = parse_public_key(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line:?}: {e}");
        }
        // The type inside the data must be the type in front of it.
        let swapped = format!("ssh-ed25519 {}", wire(&[b"ssh-rsa", &[1, 0, 1], &[1; 300]]));
        assert!(
            parse_public_key(&swapped)
                .unwrap_err()
                .to_string()
                .contains("of type \"ssh-rsa\"")
        );
        let short = format!("ssh-ed25519 {}", wire(&[b"ssh-ed25519", &[7; 31]]));
        assert!(parse_public_key(&short).unwrap_err().to_string().contains("32 bytes"));
        let curve = format!(
            "ecdsa-sha2-nistp256 {}",
            wire(&[b"ecdsa-sha2-nistp256", b"nistp384", &[4; 65]])
        );
        assert!(parse_public_key(&curve).unwrap_err().to_string().contains("curve"));
        let good = format!(
            "ecdsa-sha2-nistp256 {} bob",
            wire(&[b"ecdsa-sha2-nistp256", b"nistp256", &[4; 65]])
        );
        assert_eq!(parse_public_key(&good).unwrap().comment, "bob");
    }

    #[test]
    fn the_state_decides_what_sshd_sees() {
        let mut s = SshState::default();
        assert_eq!(s.set_enabled(true), Err(SshError::NoKey));
        let a = parse_public_key(&ed25519(1, "alice\u{1b}[2J")).unwrap();
        let b = parse_public_key(&ed25519(2, "bob")).unwrap();
        s.add_key(a.clone(), "operator", 10).unwrap();
        assert_eq!(
            s.add_key(a.clone(), "operator", 11),
            Err(SshError::Duplicate(a.fingerprint.clone()))
        );
        s.add_key(b.clone(), "operator", 12).unwrap();
        // Off: nothing, whoever asks.
        assert_eq!(s.authorized_keys("root"), "");
        s.set_enabled(true).unwrap();
        let keys = s.authorized_keys("root");
        assert_eq!(keys.lines().count(), 2);
        assert!(
            keys.lines().all(|l| l.starts_with("restrict,pty ssh-ed25519 AAAA")),
            "{keys}"
        );
        assert!(!keys.contains('\u{1b}'), "control characters never reach sshd");
        assert_eq!(s.authorized_keys("appliance"), "", "root only");
        // The last key going turns SSH off.
        s.remove_key(&a.fingerprint).unwrap();
        assert!(s.enabled);
        assert!(matches!(s.remove_key(&a.fingerprint), Err(SshError::UnknownKey(_))));
        s.remove_key(&b.fingerprint).unwrap();
        assert!(!s.enabled);
        for i in 0..MAX_KEYS as u8 {
            s.add_key(parse_public_key(&ed25519(10 + i, "")).unwrap(), "operator", 1)
                .unwrap();
        }
        assert_eq!(
            s.add_key(parse_public_key(&ed25519(99, "")).unwrap(), "operator", 1),
            Err(SshError::TooMany)
        );
    }

    #[test]
    fn saved_state_and_the_boot_flag_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh.json");
        assert_eq!(load(&path).unwrap(), SshState::default());
        let mut s = SshState::default();
        s.add_key(parse_public_key(&ed25519(1, "a")).unwrap(), "operator", 5)
            .unwrap();
        s.set_enabled(true).unwrap();
        save(&path, &s).unwrap();
        assert!(dir.path().join("ssh-enabled").exists());
        assert_eq!(load(&path).unwrap(), s);
        s.set_enabled(false).unwrap();
        save(&path, &s).unwrap();
        assert!(!dir.path().join("ssh-enabled").exists());
        fs::write(&path, "{\"enabled\": true, \"extra\": 1}").unwrap();
        assert!(load(&path).is_err(), "unknown keys are refused");
    }
}
