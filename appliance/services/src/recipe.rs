//! Recipes: which services a node runs, how their health is checked, how
//! they depend on each other and the restart policy. One TOML file per
//! stack under `recipes/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    /// How the disk image is built; read by `image/build`, not by the supervisor.
    #[serde(default)]
    pub image: Option<toml::Table>,
    /// The ports the node answers on; `image/build` makes the firewall.
    #[serde(default)]
    pub firewall: Option<toml::Table>,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSpec>,
    /// Checks that belong to the node rather than to one service (disk).
    #[serde(default, rename = "check")]
    pub checks: Vec<CheckSpec>,
}

/// The restart policy shared by a recipe's services.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// First wait between restarts; doubles with each restart in the window.
    #[serde(with = "appliance_monitor::serde_duration")]
    pub backoff_initial: Duration,
    #[serde(with = "appliance_monitor::serde_duration")]
    pub backoff_max: Duration,
    /// Give up after this many restarts within `crash_loop_window`.
    pub crash_loop_restarts: u32,
    #[serde(with = "appliance_monitor::serde_duration")]
    pub crash_loop_window: Duration,
    /// Never restart a running core service for a failing health check
    /// while meetings are running (a dead unit is still restarted).
    pub protect_meetings: bool,
    /// How long to wait for a restarted unit to become active before going
    /// on with the units that depend on it.
    #[serde(with = "appliance_monitor::serde_duration")]
    pub start_timeout: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            crash_loop_restarts: 5,
            crash_loop_window: Duration::from_secs(600),
            protect_meetings: true,
            start_timeout: Duration::from_secs(90),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The name people and the CLI use.
    pub name: String,
    /// The systemd unit.
    pub unit: String,
    /// A core BBB service: a health-check failure alone does not restart it
    /// while meetings run (see `protect_meetings`).
    #[serde(default)]
    pub core: bool,
    /// Services (by name) this one needs: restarting one of them restarts
    /// this one after it.
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default, rename = "check")]
    pub checks: Vec<CheckSpec>,
}

/// A health check: what to probe, how often, and how many failures in a
/// row make it count as failed.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures before the check counts as failed.
    pub failures: u32,
}

// serde cannot combine `flatten` with `deny_unknown_fields`, so the timing
// keys are taken out by hand and the rest must be exactly one check kind.
impl<'de> Deserialize<'de> for CheckSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(d)?;
        let duration = |t: &mut toml::Table, key: &str, default: Duration| -> Result<Duration, D::Error> {
            match t.remove(key) {
                None => Ok(default),
                Some(toml::Value::String(s)) => humantime::parse_duration(&s)
                    .map_err(|e| D::Error::custom(format!("{key}: invalid duration {s:?} ({e})"))),
                Some(v) => Err(D::Error::custom(format!(
                    "{key}: expected a duration like \"5s\", found {}",
                    v.type_str()
                ))),
            }
        };
        let interval = duration(&mut table, "interval", Duration::from_secs(10))?;
        let timeout = duration(&mut table, "timeout", Duration::from_secs(3))?;
        let failures = match table.remove("failures") {
            None => 3,
            Some(toml::Value::Integer(n)) if (1..=1000).contains(&n) => n as u32,
            Some(v) => {
                return Err(D::Error::custom(format!(
                    "failures: expected a count from 1 to 1000, found {v}"
                )));
            }
        };
        let kind = CheckKind::deserialize(toml::Value::Table(table)).map_err(|e| D::Error::custom(e.message()))?;
        Ok(CheckSpec {
            kind,
            interval,
            timeout,
            failures,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CheckKind {
    /// GET a URL; the status must match and the body contain a string.
    Http {
        url: String,
        #[serde(default = "ok_status")]
        expect_status: u16,
        #[serde(default)]
        expect_body: Option<String>,
    },
    /// A TCP connection must open.
    Tcp { address: String },
    /// Redis must answer PING with PONG.
    Redis { address: String },
    /// BBB's API must answer a signed getMeetings with SUCCESS (uses `[bbb]`).
    Bbb,
    /// The certificate served at `address` must not expire soon.
    Tls {
        address: String,
        #[serde(default = "warn_days")]
        warn_days: u32,
        #[serde(default = "critical_days")]
        critical_days: u32,
    },
    /// The filesystem holding `path` must keep this share free.
    Disk { path: String, min_free_ratio: f64 },
}

fn ok_status() -> u16 {
    200
}
fn warn_days() -> u32 {
    14
}
fn critical_days() -> u32 {
    3
}

impl CheckKind {
    /// A short name for logs and the status: `http http://...`.
    pub fn describe(&self) -> String {
        match self {
            CheckKind::Http { url, .. } => format!("http {url}"),
            CheckKind::Tcp { address } => format!("tcp {address}"),
            CheckKind::Redis { address } => format!("redis {address}"),
            CheckKind::Bbb => "bbb getMeetings".to_string(),
            CheckKind::Tls { address, .. } => format!("tls {address}"),
            CheckKind::Disk { path, .. } => format!("disk {path}"),
        }
    }
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Recipe, Error> {
        let text = fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(&text).map_err(|(key, what)| Error::Recipe {
            path: path.to_path_buf(),
            key,
            what,
        })
    }

    /// Parses and validates; errors are (key, what).
    pub fn parse(text: &str) -> Result<Recipe, (String, String)> {
        let de = toml::Deserializer::parse(text).map_err(|e| (String::new(), e.message().to_string()))?;
        let r: Recipe = serde_path_to_error::deserialize(de)
            .map_err(|e| (e.path().to_string(), e.inner().message().to_string()))?;
        r.validate()?;
        Ok(r)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let mut names = BTreeSet::new();
        let mut units = BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let key = |k: &str| format!("service[{i}].{k}");
            if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
                return Err((key("name"), format!("{:?} must be letters, digits, - _ . @", s.name)));
            }
            if !names.insert(s.name.as_str()) {
                return Err((key("name"), format!("{:?} appears twice", s.name)));
            }
            if !s.unit.ends_with(".service") || s.unit.contains('/') {
                return Err((
                    key("unit"),
                    format!("{:?} must be a systemd .service unit name", s.unit),
                ));
            }
            if !units.insert(s.unit.as_str()) {
                return Err((key("unit"), format!("{:?} appears twice", s.unit)));
            }
            for (j, c) in s.checks.iter().enumerate() {
                c.validate()
                    .map_err(|(k, w)| (format!("service[{i}].check[{j}].{k}"), w))?;
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            for r in &s.requires {
                if !names.contains(r.as_str()) {
                    return Err((
                        format!("service[{i}].requires"),
                        format!("{r:?} is not a service of this recipe"),
                    ));
                }
            }
        }
        if let Some(cycle) = self.find_cycle() {
            return Err((
                "service".into(),
                format!("requires form a cycle: {}", cycle.join(" -> ")),
            ));
        }
        for (j, c) in self.checks.iter().enumerate() {
            c.validate().map_err(|(k, w)| (format!("check[{j}].{k}"), w))?;
        }
        let p = &self.policy;
        if p.crash_loop_restarts == 0 {
            return Err(("policy.crash_loop_restarts".into(), "must be at least 1".into()));
        }
        if p.backoff_initial > p.backoff_max {
            return Err((
                "policy.backoff_initial".into(),
                "must not exceed policy.backoff_max".into(),
            ));
        }
        Ok(())
    }

    fn find_cycle(&self) -> Option<Vec<String>> {
        let deps: BTreeMap<&str, &[String]> = self
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.requires.as_slice()))
            .collect();
        fn visit<'a>(
            n: &'a str,
            deps: &BTreeMap<&'a str, &'a [String]>,
            stack: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Option<Vec<String>> {
            if let Some(pos) = stack.iter().position(|s| *s == n) {
                let mut c: Vec<String> = stack[pos..].iter().map(|s| s.to_string()).collect();
                c.push(n.to_string());
                return Some(c);
            }
            if done.contains(n) {
                return None;
            }
            stack.push(n);
            for d in deps.get(n).copied().unwrap_or_default() {
                if let Some(c) = visit(d, deps, stack, done) {
                    return Some(c);
                }
            }
            stack.pop();
            done.insert(n);
            None
        }
        let mut done = BTreeSet::new();
        for n in deps.keys() {
            if let Some(c) = visit(n, &deps, &mut Vec::new(), &mut done) {
                return Some(c);
            }
        }
        None
    }

    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The order in which to restart `name` and everything that depends on
    /// it: `name` first, then each dependent after all that it requires
    /// among them.
    pub fn restart_order(&self, name: &str) -> Vec<String> {
        // Everything that (transitively) requires `name`.
        let mut affected: BTreeSet<&str> = BTreeSet::from([name]);
        loop {
            let before = affected.len();
            for s in &self.services {
                if s.requires.iter().any(|r| affected.contains(r.as_str())) {
                    affected.insert(s.name.as_str());
                }
            }
            if affected.len() == before {
                break;
            }
        }
        // Topological order within the affected set, stable by recipe order.
        let mut order: Vec<String> = Vec::new();
        while order.len() < affected.len() {
            let next = self
                .services
                .iter()
                .filter(|s| affected.contains(s.name.as_str()) && !order.contains(&s.name))
                .find(|s| {
                    s.name == name
                        || s.requires
                            .iter()
                            .all(|r| !affected.contains(r.as_str()) || order.contains(r))
                });
            match next {
                Some(s) => order.push(s.name.clone()),
                None => break, // unreachable: cycles are rejected at load
            }
        }
        if let Some(pos) = order.iter().position(|n| n == name) {
            let n = order.remove(pos);
            order.insert(0, n);
        }
        order
    }
}

impl CheckSpec {
    fn validate(&self) -> Result<(), (String, String)> {
        if self.interval < Duration::from_millis(200) {
            return Err(("interval".into(), "must be at least 200ms".into()));
        }
        if self.timeout.is_zero() || self.timeout > self.interval.max(Duration::from_secs(1)) * 2 {
            return Err((
                "timeout".into(),
                "must be above 0 and at most twice the interval".into(),
            ));
        }
        if self.failures == 0 {
            return Err(("failures".into(), "must be at least 1".into()));
        }
        match &self.kind {
            CheckKind::Http { url, .. } if !(url.starts_with("http://") || url.starts_with("https://")) => {
                Err(("url".into(), format!("{url:?} must start with http:// or https://")))
            }
            CheckKind::Tcp { address } | CheckKind::Redis { address } | CheckKind::Tls { address, .. }
                if address
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none() =>
            {
                Err(("address".into(), format!("{address:?} must be HOST:PORT")))
            }
            CheckKind::Tls {
                warn_days,
                critical_days,
                ..
            } if critical_days > warn_days => Err(("critical_days".into(), "must not exceed warn_days".into())),
            CheckKind::Disk { min_free_ratio, .. } if !(0.0..1.0).contains(min_free_ratio) => {
                Err(("min_free_ratio".into(), "must be a ratio between 0 and 1".into()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAIN: &str = r#"
name = "t"
description = "t"
[[service]]
name = "freeswitch"
unit = "freeswitch.service"
[[service]]
name = "fsesl"
unit = "bbb-fsesl-akka.service"
requires = ["freeswitch"]
[[service]]
name = "apps"
unit = "bbb-apps-akka.service"
requires = ["fsesl", "redis"]
[[service]]
name = "redis"
unit = "redis-server.service"
[[service.check]]
kind = "redis"
address = "127.0.0.1:6379"
"#;

    #[test]
    fn restart_order_puts_dependents_after_what_they_need() {
        let r = Recipe::parse(CHAIN).unwrap();
        let cases: &[(&str, &[&str])] = &[
            ("freeswitch", &["freeswitch", "fsesl", "apps"]),
            ("fsesl", &["fsesl", "apps"]),
            ("redis", &["redis", "apps"]),
            ("apps", &["apps"]),
        ];
        for (name, want) in cases {
            assert_eq!(r.restart_order(name), *want, "{name}");
        }
        assert_eq!(r.services[3].checks[0].failures, 3, "default");
    }

    #[test]
    fn shipped_recipes_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
        let mut n = 0;
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Recipe::load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 2);
    }

    #[test]
    fn invalid_recipes_name_the_key() {
        let base = "name = \"t\"\ndescription = \"t\"\n";
        let cases = [
            (
                "[[service]]\nname = \"a\"\nunit = \"a.service\"\nrequires = [\"b\"]\n",
                "service[0].requires",
                "\"b\" is not a service",
            ),
            (
                "[[service]]\nname = \"a\"\nunit = \"a.socket\"\n",
                "service[0].unit",
                "must be a systemd .service",
            ),
            (
                "[[service]]\nname = \"a\"\nunit = \"a.service\"\n[[service]]\nname = \"a\"\nunit = \"b.service\"\n",
                "service[1].name",
                "appears twice",
            ),
            (
                "[[service]]\nname = \"a\"\nunit = \"a.service\"\nrequires = [\"b\"]\n[[service]]\nname = \"b\"\nunit = \"b.service\"\nrequires = [\"a\"]\n",
                "service",
                "cycle",
            ),
            (
                "[[service]]\nname = \"a\"\nunit = \"a.service\"\n[[service.check]]\nkind = \"ping\"\n",
                "service[0].check[0]",
                "unknown variant `ping`",
            ),
            (
                "[[service]]\nname = \"a\"\nunit = \"a.service\"\n[[service.check]]\nkind = \"tcp\"\naddress = \"localhost\"\n",
                "service[0].check[0].address",
                "HOST:PORT",
            ),
            (
                "[[check]]\nkind = \"disk\"\npath = \"/\"\nmin_free_ratio = 2.0\n",
                "check[0].min_free_ratio",
                "ratio",
            ),
            (
                "[policy]\nbackoff_initial = \"10m\"\nbackoff_max = \"1m\"\n",
                "policy.backoff_initial",
                "must not exceed",
            ),
            (
                "[[service]]\nname = \"a\"\nunit = \"a.service\"\ncolour = 1\n",
                "service[0].colour",
                "unknown field",
            ),
        ];
        for (body, key, what) in cases {
            let (k, w) = Recipe::parse(&format!("{base}{body}")).unwrap_err();
            assert!(k.starts_with(key), "{body}: key {k:?} should start with {key:?} ({w})");
            assert!(w.contains(what), "{body}: {w:?} should contain {what:?}");
        }
    }
}
