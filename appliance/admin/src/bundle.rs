//! The support bundle: one `.tar.gz` a support person can send on. The
//! backend provides the files already free of secrets; this only packs
//! them.

use std::io::Write;

/// Packs `(name, contents)` pairs into a gzip-compressed tar archive under
/// a `support-bundle/` directory.
pub fn tar_gz(files: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_cksum();
        tar.append_data(&mut h, format!("support-bundle/{name}"), data.as_slice())?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()
}

/// Replaces the values of secret-looking keys in a TOML document, at any
/// depth, so a config can be shared.
pub fn redact_toml(text: &str) -> String {
    fn walk(t: &mut toml::Table) {
        for (k, v) in t.iter_mut() {
            let key = k.to_ascii_lowercase();
            let secret = ["secret", "password", "token", "key", "salt"]
                .iter()
                .any(|s| key.contains(s))
                && !key.ends_with("_file")
                && !key.ends_with("_dir");
            match v {
                toml::Value::Table(inner) => walk(inner),
                _ if secret => *v = toml::Value::String("<redacted>".into()),
                _ => {}
            }
        }
    }
    match text.parse::<toml::Table>() {
        Ok(mut t) => {
            walk(&mut t);
            toml::to_string(&t).unwrap_or_else(|_| "# config could not be re-serialised\n".into())
        }
        Err(_) => "# config could not be parsed, so it is left out\n".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_and_packing() {
        let cfg = "[bbb]\nurl = \"http://x/bigbluebutton/api\"\nsecret = \"hunter2-long-secret\"\nsecret_file = \"/etc/appliance/bbb-secret\"\n[ops]\ntoken = \"t0k\"\n";
        let r = redact_toml(cfg);
        assert!(!r.contains("hunter2") && !r.contains("t0k"), "{r}");
        assert!(
            r.contains("secret = \"<redacted>\"") && r.contains("/etc/appliance/bbb-secret"),
            "{r}"
        );
        let gz = tar_gz(&[("a.txt".into(), b"hello".to_vec())]).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["support-bundle/a.txt"]);
    }
}
