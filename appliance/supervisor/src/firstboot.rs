//! First-boot duty BBB needs: bbb-web refuses to run with the secret it
//! ships with, so a fresh node gets its own. `appliance firstboot` runs as
//! root before bbb-web and the supervisor (appliance-firstboot.service).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Secrets BBB's packages and guides ship with; any of them, or none at
/// all, must be replaced.
pub const DEFAULT_SECRETS: &[&str] = &["330a8b08c3b4c61533e1d0c5ce1ac88f", "8cd8ef52e8e101574e400365b55e11a6"];

/// The `securitySalt` of a bbb-web.properties text, if set.
pub fn current_secret(properties: &str) -> Option<&str> {
    properties.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "securitySalt").then(|| v.trim()).filter(|v| !v.is_empty())
    })
}

/// Whether the properties carry a secret we must replace.
pub fn needs_new_secret(properties: &str) -> bool {
    current_secret(properties).is_none_or(|s| DEFAULT_SECRETS.contains(&s) || s.len() < 16)
}

/// The properties text with `securitySalt` set to `secret` (added when
/// missing), every other line untouched.
pub fn with_secret(properties: &str, secret: &str) -> String {
    let mut found = false;
    let mut out: Vec<String> = properties
        .lines()
        .map(|l| match l.split_once('=') {
            Some((k, _)) if k.trim() == "securitySalt" => {
                found = true;
                format!("securitySalt={secret}")
            }
            _ => l.to_string(),
        })
        .collect();
    if !found {
        out.push(format!("securitySalt={secret}"));
    }
    out.join("\n") + "\n"
}

/// The supervisor's group (image/units/appliance.service).
pub const SERVICE_GROUP: &str = "appliance";

/// Makes `path` group-owned by `group` when that group exists (on a
/// developer's machine it may not, and then nothing changes).
fn give_to_group(path: &Path, group: &str) -> Result<()> {
    if let Ok(Some(g)) = nix::unistd::Group::from_name(group) {
        nix::unistd::chown(path, None, Some(g.gid)).with_context(|| format!("chown {}:{group}", path.display()))?;
    }
    Ok(())
}

/// 48 hex characters from the kernel's random source.
pub fn new_secret() -> Result<String> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    Ok(appliance_certs::write_atomic(path, text.as_bytes(), mode)?)
}

/// Replaces a default secret in `properties` (when the file exists) and
/// makes sure `secret_file` holds the secret in force. Returns what it did.
pub fn run(properties: &Path, secret_file: Option<&Path>) -> Result<String> {
    let mut done = Vec::new();
    let mut secret = None;
    if properties.exists() {
        let text = fs::read_to_string(properties).with_context(|| properties.display().to_string())?;
        if needs_new_secret(&text) {
            let s = new_secret()?;
            let mode = fs::metadata(properties)?.permissions().mode() & 0o777;
            write_file(properties, &with_secret(&text, &s), mode)?;
            done.push(format!("replaced the default BBB secret in {}", properties.display()));
            secret = Some(s);
        } else {
            secret = current_secret(&text).map(str::to_string);
        }
    }
    if let Some(f) = secret_file {
        let existing = fs::read_to_string(f)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let wanted = match (secret, existing) {
            (Some(s), _) => Some(s),
            (None, Some(_)) => None, // no bbb-web here: keep what is there
            (None, None) => Some(new_secret()?),
        };
        if let Some(s) = wanted {
            if fs::read_to_string(f).ok().map(|t| t.trim().to_string()) != Some(s.clone()) {
                // Readable by the supervisor's group, not by others.
                write_file(f, &format!("{s}\n"), 0o640)?;
                give_to_group(f, SERVICE_GROUP)?;
                done.push(format!("wrote the BBB secret to {}", f.display()));
            }
        }
    }
    Ok(if done.is_empty() {
        "nothing to do: the BBB secret is already the node's own".into()
    } else {
        done.join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_secret_is_replaced_and_nothing_else_changes() {
        let props = "# comment\nbigbluebutton.web.serverURL=https://bbb.example\nsecuritySalt=330a8b08c3b4c61533e1d0c5ce1ac88f\ndefaultMaxUsers=0\n";
        assert!(needs_new_secret(props));
        let out = with_secret(props, "abc");
        assert_eq!(
            out,
            "# comment\nbigbluebutton.web.serverURL=https://bbb.example\nsecuritySalt=abc\ndefaultMaxUsers=0\n"
        );
        assert!(needs_new_secret("a=b\n"), "no secret at all");
        assert!(needs_new_secret("securitySalt=\n"));
        assert!(!needs_new_secret("securitySalt=0123456789abcdef0123456789abcdef\n"));
        assert_eq!(with_secret("a=b", "s"), "a=b\nsecuritySalt=s\n");
        let s = new_secret().unwrap();
        assert_eq!(s.len(), 48);
        assert_ne!(s, new_secret().unwrap());
    }

    #[test]
    fn run_on_files_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let props = d.path().join("bbb-web.properties");
        let secret = d.path().join("bbb-secret");
        fs::write(&props, "securitySalt=330a8b08c3b4c61533e1d0c5ce1ac88f\n").unwrap();
        fs::set_permissions(&props, fs::Permissions::from_mode(0o644)).unwrap();
        let msg = run(&props, Some(&secret)).unwrap();
        assert!(
            msg.contains("replaced the default BBB secret") && msg.contains("wrote the BBB secret"),
            "{msg}"
        );
        let s = fs::read_to_string(&secret).unwrap();
        assert_eq!(current_secret(&fs::read_to_string(&props).unwrap()), Some(s.trim()));
        assert_eq!(fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::metadata(&props).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(
            run(&props, Some(&secret)).unwrap(),
            "nothing to do: the BBB secret is already the node's own"
        );
        // No bbb-web (the lab): a secret file is made once and kept.
        let lab = d.path().join("lab-secret");
        run(&d.path().join("missing.properties"), Some(&lab)).unwrap();
        let first = fs::read_to_string(&lab).unwrap();
        run(&d.path().join("missing.properties"), Some(&lab)).unwrap();
        assert_eq!(fs::read_to_string(&lab).unwrap(), first);
    }
}
