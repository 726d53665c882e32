//! Accounts, first-boot setup, sessions, lockouts and CSRF tokens.
//!
//! Two accounts: `operator` (may change things) and `viewer` (read-only,
//! for city IT staff). Until both have passwords the box is in setup: a
//! one-time setup code, shown only on the console, must be typed on the
//! admin page first, so nobody else on the network can claim the box.
//!
//! Passwords are stored as argon2id PHC strings in `auth.json` (0600).
//! Session tokens are random; only their SHA-256 is kept, in memory, so
//! neither a state-dir copy nor a memory dump of the map yields a usable
//! cookie. Time is passed in (`now`, seconds) so the policy is testable.

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
#[cfg(test)]
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Wrong passwords in a row that lock an account.
pub const LOCK_AFTER: u32 = 10;
/// How long a locked account stays locked.
pub const LOCK_SECS: f64 = 15.0 * 60.0;
/// Failed logins from one address within `IP_WINDOW_SECS` before that
/// address is refused outright (guessing across account names).
pub const IP_LIMIT: u32 = 30;
pub const IP_WINDOW_SECS: f64 = 10.0 * 60.0;
/// A session ends after this long without a request...
pub const IDLE_SECS: f64 = 30.0 * 60.0;
/// ...and after this long in any case.
pub const MAX_SECS: f64 = 12.0 * 3600.0;
/// Wrong setup codes from one address before that address may not try
/// for `LOCK_SECS`.
pub const SETUP_TRIES: u32 = 5;
/// Wrong setup codes from all addresses within `LOCK_SECS` past which an
/// address may get one code wrong, not `SETUP_TRIES`. The code has 50 bits:
/// this bounds guessing from many addresses without ever locking out the
/// support person, who types the right code first.
pub const SETUP_CEILING: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Operator,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    name: String,
    role: Role,
    /// argon2id PHC string.
    hash: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthFile {
    users: Vec<User>,
}

/// A logged-in session, as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub csrf: String,
}

#[derive(Debug)]
struct SessionState {
    session: Session,
    created: f64,
    last_seen: f64,
}

#[derive(Debug, Default, Clone)]
struct Failures {
    count: u32,
    locked_until: Option<f64>,
    /// Checks begun and not yet finished: they count toward the limit, so
    /// a burst of parallel attempts cannot all pass the check on arrival.
    pending: u32,
}

/// Failed logins from one address in the current window, and checks of
/// its attempts still running.
#[derive(Debug, Default, Clone)]
struct AddressFailures {
    count: u32,
    since: f64,
    pending: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("too many wrong passwords: this account is locked for {0} more minutes")]
    Locked(u64),
    #[error("too many failed logins from this address; try again in {0} minutes")]
    TooManyAttempts(u64),
    #[error("the setup code is not right")]
    BadSetupCode,
    #[error("setup is already done; log in instead")]
    AlreadySetUp,
    #[error("{0}")]
    WeakPassword(String),
    #[error("could not save the accounts: {0}")]
    Storage(String),
}

/// Everything about accounts and sessions.
#[derive(Debug)]
pub struct Auth {
    dir: PathBuf,
    users: Vec<User>,
    setup_code: Option<String>,
    /// Wrong setup codes per address, and the times of recent ones.
    setup_failures: HashMap<IpAddr, Failures>,
    setup_recent: std::collections::VecDeque<f64>,
    sessions: HashMap<[u8; 32], SessionState>,
    failures: HashMap<String, Failures>,
    ip_failures: HashMap<IpAddr, AddressFailures>,
}

const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the kernel's random source is available");
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A setup code: ten characters without look-alikes (no 0/O, 1/I),
/// shown as `ABCDE-FGHJK`.
pub fn new_setup_code() -> String {
    let b = random_bytes::<10>();
    let chars: String = b
        .iter()
        .map(|x| CODE_ALPHABET[(*x as usize) % CODE_ALPHABET.len()] as char)
        .collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

/// What people type: case and separators do not matter.
pub fn normalize_code(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Equal without revealing how much matched through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The minimum strength of a password: long enough, not one character
/// repeated, not a well-known one, and mixed unless long.
/// Words a password may not contain: the first things anyone tries.
pub const FORBIDDEN_WORDS: [&str; 8] = [
    "password",
    "passwort",
    "123456",
    "qwerty",
    "appliance",
    "bigbluebutton",
    "letmein",
    "admin",
];

/// Every rule [`check_strength`] enforces, in one sentence for the forms.
pub fn password_rules() -> String {
    let words: Vec<String> = FORBIDDEN_WORDS.iter().map(|w| format!("\"{w}\"")).collect();
    format!(
        "Passwords need 12 to 256 characters and three of: lower case, upper case, digits, symbols \
         (or 16 characters of anything); not one character repeated; not containing {} (in any case); \
         and the viewer's must differ from the operator's.",
        words.join(", ")
    )
}

pub fn check_strength(pw: &str, account: &str) -> Result<(), String> {
    let n = pw.chars().count();
    if n < 12 {
        return Err(format!("the {account} password must have at least 12 characters"));
    }
    if n > 256 {
        return Err(format!("the {account} password must have at most 256 characters"));
    }
    let first = pw.chars().next().unwrap_or(' ');
    if pw.chars().all(|c| c == first) {
        return Err(format!("the {account} password must not be one character repeated"));
    }
    let lower = pw.to_lowercase();
    for bad in FORBIDDEN_WORDS {
        if lower.contains(bad) {
            return Err(format!("the {account} password must not contain \"{bad}\""));
        }
    }
    let classes = [
        pw.chars().any(|c| c.is_lowercase()),
        pw.chars().any(|c| c.is_uppercase()),
        pw.chars().any(|c| c.is_ascii_digit()),
        pw.chars().any(|c| !c.is_alphanumeric()),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if n < 16 && classes < 3 {
        return Err(format!(
            "the {account} password needs three of: lower case, upper case, digits, symbols (or at least 16 characters)"
        ));
    }
    Ok(())
}

/// An argon2id hash of a password (slow on purpose: call off the async runtime).
pub fn hash_password(pw: &str) -> Result<String, AuthError> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(pw.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Storage(e.to_string()))
}

/// Checks a password against a stored hash (slow on purpose).
pub fn verify_password(pw: &str, hash: &str) -> bool {
    use argon2::password_hash::phc::PasswordHash;
    let Ok(h) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&h.salt, &h.hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::new(h.algorithm.as_str()) else {
        return false;
    };
    let Ok(version) = h.version.map(argon2::Version::try_from).transpose() else {
        return false;
    };
    let Ok(params) = argon2::Params::try_from(&h) else {
        return false;
    };
    let blocks = params.block_count();
    let a = argon2::Argon2::new(algorithm, version.unwrap_or_default(), params);
    let mut out = vec![0u8; expected.len()];
    // The thread's own argon2 memory, kept between checks: a check
    // allocates nothing large, so the few hashing threads hold one block
    // each and the allocator has nothing to keep.
    let done = HASH_MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        m.resize(blocks, argon2::Block::default());
        a.hash_password_into_with_memory(pw.as_bytes(), salt.as_ref(), &mut out, &mut m[..blocks])
    });
    done.is_ok() && constant_time_eq(&out, expected.as_bytes())
}

thread_local! {
    static HASH_MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    appliance_certs::write_atomic(path, data, 0o600).map_err(std::io::Error::other)
}

impl Auth {
    /// Opens the accounts in `dir`; with none yet, makes (or reloads) the
    /// setup code so the console shows the same one across restarts.
    pub fn open(dir: &Path) -> Result<Auth, AuthError> {
        fs::create_dir_all(dir).map_err(|e| AuthError::Storage(format!("{}: {e}", dir.display())))?;
        let file = dir.join("auth.json");
        let users = match fs::read(&file) {
            Ok(b) => {
                serde_json::from_slice::<AuthFile>(&b)
                    .map_err(|e| AuthError::Storage(format!("{}: {e}", file.display())))?
                    .users
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(AuthError::Storage(format!("{}: {e}", file.display()))),
        };
        let mut a = Auth {
            dir: dir.to_path_buf(),
            users,
            setup_code: None,
            setup_failures: HashMap::new(),
            setup_recent: std::collections::VecDeque::new(),
            sessions: HashMap::new(),
            failures: HashMap::new(),
            ip_failures: HashMap::new(),
        };
        if a.users.is_empty() {
            let code_file = dir.join("setup-code");
            let code = match fs::read_to_string(&code_file) {
                Ok(c) if normalize_code(&c).len() == 10 => c.trim().to_string(),
                _ => {
                    let c = new_setup_code();
                    write_private(&code_file, format!("{c}\n").as_bytes())
                        .map_err(|e| AuthError::Storage(format!("{}: {e}", code_file.display())))?;
                    c
                }
            };
            a.setup_code = Some(code);
        }
        Ok(a)
    }

    pub fn setup_pending(&self) -> bool {
        self.setup_code.is_some()
    }

    /// The code for the console; `None` once setup is done.
    pub fn setup_code(&self) -> Option<&str> {
        self.setup_code.as_deref()
    }

    /// Checks a setup attempt; on success the caller hashes the passwords
    /// (slowly, off the runtime) and calls [`Auth::finish_setup`].
    pub fn check_setup(
        &mut self,
        code: &str,
        operator_pw: &str,
        viewer_pw: &str,
        ip: IpAddr,
        now: f64,
    ) -> Result<(), AuthError> {
        let Some(expected) = self.setup_code.clone() else {
            return Err(AuthError::AlreadySetUp);
        };
        if let Some(until) = self
            .setup_failures
            .get(&ip)
            .and_then(|f| f.locked_until)
            .filter(|u| *u > now)
        {
            return Err(AuthError::Locked(((until - now) / 60.0).ceil() as u64));
        }
        if !constant_time_eq(normalize_code(code).as_bytes(), normalize_code(&expected).as_bytes()) {
            while self.setup_recent.front().is_some_and(|t| now - t >= LOCK_SECS) {
                self.setup_recent.pop_front();
            }
            self.setup_recent.push_back(now);
            let tries = if self.setup_recent.len() > SETUP_CEILING {
                1
            } else {
                SETUP_TRIES
            };
            let f = self.setup_failures.entry(ip).or_default();
            f.count += 1;
            if f.count >= tries {
                *f = Failures {
                    count: 0,
                    pending: 0,
                    locked_until: Some(now + LOCK_SECS),
                };
            }
            return Err(AuthError::BadSetupCode);
        }
        check_strength(operator_pw, "operator").map_err(AuthError::WeakPassword)?;
        check_strength(viewer_pw, "viewer").map_err(AuthError::WeakPassword)?;
        if operator_pw == viewer_pw {
            return Err(AuthError::WeakPassword(
                "the operator and viewer passwords must differ".into(),
            ));
        }
        Ok(())
    }

    /// Stores the accounts and retires the setup code for good.
    pub fn finish_setup(&mut self, operator_hash: String, viewer_hash: String) -> Result<(), AuthError> {
        if self.setup_code.is_none() {
            return Err(AuthError::AlreadySetUp);
        }
        self.users = vec![
            User {
                name: "operator".into(),
                role: Role::Operator,
                hash: operator_hash,
            },
            User {
                name: "viewer".into(),
                role: Role::Viewer,
                hash: viewer_hash,
            },
        ];
        self.save()?;
        self.setup_code = None;
        let _ = fs::remove_file(self.dir.join("setup-code"));
        Ok(())
    }

    fn save(&self) -> Result<(), AuthError> {
        let file = self.dir.join("auth.json");
        let data = serde_json::to_vec_pretty(&AuthFile {
            users: self.users.clone(),
        })
        .map_err(|e| AuthError::Storage(e.to_string()))?;
        write_private(&file, &data).map_err(|e| AuthError::Storage(format!("{}: {e}", file.display())))
    }

    /// Before checking a password: is the account or address locked? If
    /// not, the attempt is reserved (it counts toward both limits until
    /// [`Auth::finish_login`] or [`Auth::abandon_login`]), so no more checks
    /// run than the limits allow, however many requests arrive at once.
    /// Returns the stored hash to check against (None for an unknown user).
    pub fn begin_login(&mut self, user: &str, ip: IpAddr, now: f64) -> Result<Option<String>, AuthError> {
        let a = self.ip_failures.entry(ip).or_insert(AddressFailures {
            since: now,
            ..AddressFailures::default()
        });
        if now - a.since >= IP_WINDOW_SECS {
            a.count = 0;
            a.since = now;
        }
        if a.count + a.pending >= IP_LIMIT {
            return Err(AuthError::TooManyAttempts(
                ((a.since + IP_WINDOW_SECS - now) / 60.0).ceil().max(1.0) as u64,
            ));
        }
        let known = self.users.iter().find(|u| u.name == user).map(|u| u.hash.clone());
        if known.is_some() {
            let f = self.failures.entry(user.to_string()).or_default();
            if let Some(until) = f.locked_until.filter(|u| *u > now) {
                return Err(AuthError::Locked(((until - now) / 60.0).ceil() as u64));
            }
            if f.count + f.pending >= LOCK_AFTER {
                // The checks running now may lock it; no more start.
                return Err(AuthError::Locked((LOCK_SECS / 60.0) as u64));
            }
            f.pending += 1;
        }
        if let Some(a) = self.ip_failures.get_mut(&ip) {
            a.pending += 1;
        }
        Ok(known)
    }

    fn release(&mut self, user: &str, ip: IpAddr) {
        if let Some(a) = self.ip_failures.get_mut(&ip) {
            a.pending = a.pending.saturating_sub(1);
        }
        if let Some(f) = self.failures.get_mut(user) {
            f.pending = f.pending.saturating_sub(1);
        }
    }

    /// A reserved attempt whose check did not happen (the request went
    /// away, or no hashing permit was free): the reservation is given back.
    pub fn abandon_login(&mut self, user: &str, ip: IpAddr) {
        self.release(user, ip);
    }

    /// After checking: records the outcome; on success starts a session and
    /// returns its cookie token. A right password is still refused if the
    /// account was locked while it was being checked.
    pub fn finish_login(&mut self, user: &str, ip: IpAddr, ok: bool, now: f64) -> Result<(String, Session), AuthError> {
        let role = self.settle(user, ip, ok, now)?;
        let token = hex(&random_bytes::<32>());
        let session = Session {
            user: user.to_string(),
            role,
            csrf: hex(&random_bytes::<32>()),
        };
        self.sessions.insert(
            token_key(&token),
            SessionState {
                session: session.clone(),
                created: now,
                last_seen: now,
            },
        );
        Ok((token, session))
    }

    /// After checking a password that is not a login (the current one,
    /// before a change): the same counting and lockout, no session. So an
    /// unattended session cannot be used to guess the password either.
    pub fn finish_check(&mut self, user: &str, ip: IpAddr, ok: bool, now: f64) -> Result<(), AuthError> {
        self.settle(user, ip, ok, now).map(|_| ())
    }

    /// Records a checked attempt: a success clears the account's failures,
    /// a failure counts toward the address's and the account's limits.
    fn settle(&mut self, user: &str, ip: IpAddr, ok: bool, now: f64) -> Result<Role, AuthError> {
        self.release(user, ip);
        let role = self.users.iter().find(|u| u.name == user).map(|u| u.role);
        let locked = self
            .failures
            .get(user)
            .and_then(|f| f.locked_until)
            .filter(|u| *u > now);
        match (ok, role, locked) {
            (true, Some(_), Some(until)) => Err(AuthError::Locked(((until - now) / 60.0).ceil() as u64)),
            (true, Some(role), None) => {
                if let Some(f) = self.failures.get_mut(user) {
                    f.count = 0;
                }
                Ok(role)
            }
            _ => {
                let a = self.ip_failures.entry(ip).or_insert(AddressFailures {
                    since: now,
                    ..AddressFailures::default()
                });
                if now - a.since >= IP_WINDOW_SECS {
                    a.count = 0;
                    a.since = now;
                }
                a.count += 1;
                if role.is_some() {
                    let f = self.failures.entry(user.to_string()).or_default();
                    f.count += 1;
                    if f.count >= LOCK_AFTER {
                        f.count = 0;
                        f.locked_until = Some(now + LOCK_SECS);
                        return Err(AuthError::Locked((LOCK_SECS / 60.0) as u64));
                    }
                }
                Err(AuthError::BadCredentials)
            }
        }
    }

    /// The session behind a cookie token, if it is still valid.
    pub fn session(&mut self, token: &str, now: f64) -> Option<Session> {
        let key = token_key(token);
        let st = self.sessions.get_mut(&key)?;
        if now - st.last_seen > IDLE_SECS || now - st.created > MAX_SECS {
            self.sessions.remove(&key);
            return None;
        }
        st.last_seen = now;
        Some(st.session.clone())
    }

    pub fn logout(&mut self, token: &str) {
        self.sessions.remove(&token_key(token));
    }

    /// Sets a new password for an account and ends its sessions.
    pub fn set_password(&mut self, user: &str, hash: String) -> Result<(), AuthError> {
        let u = self
            .users
            .iter_mut()
            .find(|u| u.name == user)
            .ok_or(AuthError::BadCredentials)?;
        u.hash = hash;
        self.save()?;
        self.sessions.retain(|_, s| s.session.user != user);
        Ok(())
    }

    /// Forgets expired sessions (called now and then, to bound memory).
    pub fn sweep(&mut self, now: f64) {
        self.sessions
            .retain(|_, s| now - s.last_seen <= IDLE_SECS && now - s.created <= MAX_SECS);
        self.ip_failures
            .retain(|_, a| a.pending > 0 || now - a.since < IP_WINDOW_SECS);
        self.failures
            .retain(|_, f| f.pending > 0 || f.count > 0 || f.locked_until.is_some_and(|u| u > now));
    }
}

fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
    const OP: &str = "Tr0ub4dor&3-horse";
    const VIEW: &str = "correct horse battery staple";

    fn ready() -> (tempfile::TempDir, Auth) {
        let d = tempfile::tempdir().unwrap();
        let mut a = Auth::open(d.path()).unwrap();
        let code = a.setup_code().unwrap().to_string();
        a.check_setup(&code, OP, VIEW, IP, 0.0).unwrap();
        a.finish_setup(hash_password(OP).unwrap(), hash_password(VIEW).unwrap())
            .unwrap();
        (d, a)
    }

    #[test]
    fn strength_table() {
        let cases = [
            ("short1A!", false),
            ("aaaaaaaaaaaaaaaa", false),
            ("mypassword123!", false),
            ("lowercaseonly", false),
            ("Lower-and-digit1", true),
            ("a sixteen char phrase", true),
            ("Tr0ub4dor&3", false),
            (OP, true),
        ];
        for (pw, ok) in cases {
            assert_eq!(check_strength(pw, "operator").is_ok(), ok, "{pw}");
        }
    }

    #[test]
    fn setup_code_is_single_use_and_survives_restart_until_used() {
        let d = tempfile::tempdir().unwrap();
        let a = Auth::open(d.path()).unwrap();
        let code = a.setup_code().unwrap().to_string();
        assert_eq!(normalize_code(&code).len(), 10);
        assert!(code.chars().all(|c| c == '-' || CODE_ALPHABET.contains(&(c as u8))));
        let mode = fs::metadata(d.path().join("setup-code")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(a);
        let mut a = Auth::open(d.path()).unwrap();
        assert_eq!(a.setup_code(), Some(code.as_str()), "same code after a restart");
        assert_eq!(
            a.check_setup("WRONG-CODE1", OP, VIEW, IP, 0.0),
            Err(AuthError::BadSetupCode)
        );
        assert!(matches!(
            a.check_setup(&code, "weak", VIEW, IP, 0.0),
            Err(AuthError::WeakPassword(_))
        ));
        assert!(matches!(
            a.check_setup(&code, OP, OP, IP, 0.0),
            Err(AuthError::WeakPassword(_))
        ));
        // Lower case and no dash are fine.
        a.check_setup(&normalize_code(&code).to_lowercase(), OP, VIEW, IP, 0.0)
            .unwrap();
        a.finish_setup(hash_password(OP).unwrap(), hash_password(VIEW).unwrap())
            .unwrap();
        assert_eq!(a.setup_code(), None);
        assert!(!d.path().join("setup-code").exists());
        assert_eq!(a.check_setup(&code, OP, VIEW, IP, 0.0), Err(AuthError::AlreadySetUp));
        let mode = fs::metadata(d.path().join("auth.json")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(d.path().join("auth.json")).unwrap();
        assert!(
            text.contains("$argon2id$") && !text.contains(OP),
            "only hashes are stored"
        );
        drop(a);
        assert_eq!(
            Auth::open(d.path()).unwrap().setup_code(),
            None,
            "still done after a restart"
        );
    }

    #[test]
    fn wrong_setup_codes_lock_the_address_not_setup() {
        let d = tempfile::tempdir().unwrap();
        let mut a = Auth::open(d.path()).unwrap();
        let code = a.setup_code().unwrap().to_string();
        let other: IpAddr = [10, 0, 0, 7].into();
        for _ in 0..SETUP_TRIES {
            assert_eq!(
                a.check_setup("AAAAA-AAAAA", OP, VIEW, other, 1.0),
                Err(AuthError::BadSetupCode)
            );
        }
        assert_eq!(a.check_setup(&code, OP, VIEW, other, 2.0), Err(AuthError::Locked(15)));
        // The support person, elsewhere, is not locked out.
        assert!(a.check_setup(&code, OP, VIEW, IP, 2.0).is_ok());
        assert!(a.check_setup(&code, OP, VIEW, other, 2.0 + LOCK_SECS).is_ok());
        // Past the ceiling (many addresses guessing), one wrong code locks an
        // address; a right code from a new one still works.
        let mut a = Auth::open(tempfile::tempdir().unwrap().path()).unwrap();
        let code = a.setup_code().unwrap().to_string();
        for i in 0..=SETUP_CEILING {
            let ip: IpAddr = [10, 1, (i / 250) as u8, (i % 250) as u8].into();
            let _ = a.check_setup("AAAAA-AAAAA", OP, VIEW, ip, 3.0);
        }
        let late: IpAddr = [10, 9, 9, 9].into();
        assert_eq!(
            a.check_setup("BBBBB-BBBBB", OP, VIEW, late, 4.0),
            Err(AuthError::BadSetupCode)
        );
        assert_eq!(a.check_setup(&code, OP, VIEW, late, 4.0), Err(AuthError::Locked(15)));
        assert!(a.check_setup(&code, OP, VIEW, IP, 4.0).is_ok());
    }

    #[test]
    fn checks_agree_with_argon2s_own_verifier() {
        use argon2::password_hash::{CustomizedPasswordHasher, PasswordVerifier, phc::PasswordHash};
        let default = hash_password("a long enough pass phrase").unwrap();
        let custom = argon2::Argon2::default()
            .hash_password_customized(
                b"another pass phrase",
                b"0123456789abcdef",
                Some("argon2i"),
                Some(0x10),
                argon2::Params::new(4096, 2, 1, Some(24)).unwrap(),
            )
            .unwrap()
            .to_string();
        for (pw, hash) in [
            ("a long enough pass phrase", &default),
            ("a long enough pass phrasE", &default),
            ("another pass phrase", &custom),
            ("", &custom),
        ] {
            let theirs = argon2::Argon2::default()
                .verify_password(pw.as_bytes(), &PasswordHash::new(hash).unwrap())
                .is_ok();
            assert_eq!(verify_password(pw, hash), theirs, "{pw:?} against {hash}");
        }
        assert!(verify_password("another pass phrase", &custom));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn parallel_attempts_check_no_more_than_the_limits() {
        let (_d, mut a) = ready();
        // 60 attempts on one account arrive before any check finishes.
        let admitted = (0..60)
            .filter(|i| a.begin_login("viewer", IP, f64::from(*i) * 0.001).is_ok())
            .count();
        assert_eq!(
            admitted, LOCK_AFTER as usize,
            "only as many checks as the lockout allows"
        );
        let outcomes: Vec<_> = (0..admitted)
            .map(|_| a.finish_login("viewer", IP, false, 1.0))
            .collect();
        assert_eq!(outcomes.last(), Some(&Err(AuthError::Locked(15))));
        // The right password afterwards is refused: the account is locked.
        assert_eq!(a.begin_login("viewer", IP, 2.0), Err(AuthError::Locked(15)));
        // And a right password whose check finishes after a lock is refused too.
        assert!(matches!(
            a.finish_login("viewer", IP, true, 3.0),
            Err(AuthError::Locked(_))
        ));

        // 60 attempts from one address across made-up names: the address
        // limit, counting checks still running.
        let (_d, mut a) = ready();
        let other: IpAddr = [10, 0, 0, 9].into();
        let admitted = (0..60)
            .filter(|i| a.begin_login(&format!("u{i}"), other, 0.0).is_ok())
            .count();
        assert_eq!(admitted, IP_LIMIT as usize);
        // A check that never happened gives its place back.
        a.abandon_login("u0", other);
        assert!(a.begin_login("u99", other, 0.0).is_ok());
        assert!(a.begin_login("u100", other, 0.0).is_err());
    }

    #[test]
    fn login_lockout_after_ten_wrong_passwords() {
        let (_d, mut a) = ready();
        let hash = a.begin_login("operator", IP, 0.0).unwrap().unwrap();
        assert!(verify_password(OP, &hash) && !verify_password("nope", &hash));
        for i in 1..LOCK_AFTER {
            assert_eq!(
                a.finish_login("operator", IP, false, i as f64),
                Err(AuthError::BadCredentials)
            );
        }
        assert_eq!(a.finish_login("operator", IP, false, 10.0), Err(AuthError::Locked(15)));
        // Even the right password is refused while locked.
        assert_eq!(a.begin_login("operator", IP, 11.0), Err(AuthError::Locked(15)));
        // The viewer account is not affected.
        assert!(a.begin_login("viewer", IP, 11.0).is_ok());
        assert!(
            a.begin_login("operator", IP, 10.0 + LOCK_SECS).is_ok(),
            "unlocked after the lock time"
        );
    }

    #[test]
    fn sessions_expire_and_end_on_logout_or_password_change() {
        let (_d, mut a) = ready();
        let (tok, s) = a.finish_login("viewer", IP, true, 0.0).unwrap();
        assert_eq!(s.role, Role::Viewer);
        assert_eq!(s.csrf.len(), 64);
        assert_eq!(a.session(&tok, 100.0).unwrap().user, "viewer");
        assert!(a.session("not-a-token", 100.0).is_none());
        assert!(a.session(&tok, 100.0 + IDLE_SECS + 1.0).is_none(), "idle expiry");
        let (tok, _) = a.finish_login("operator", IP, true, 0.0).unwrap();
        let mut t = 0.0;
        while t < MAX_SECS - 60.0 {
            t += 600.0;
            assert!(a.session(&tok, t).is_some());
        }
        assert!(a.session(&tok, MAX_SECS + 1.0).is_none(), "absolute expiry");
        let (tok, _) = a.finish_login("operator", IP, true, 0.0).unwrap();
        a.logout(&tok);
        assert!(a.session(&tok, 1.0).is_none());
        let (tok, _) = a.finish_login("operator", IP, true, 0.0).unwrap();
        a.set_password("operator", hash_password("An0ther-passphrase").unwrap())
            .unwrap();
        assert!(a.session(&tok, 1.0).is_none(), "a password change ends sessions");
        assert_eq!(a.finish_login("nobody", IP, true, 0.0), Err(AuthError::BadCredentials));
    }
}
