//! Hardware profiles: one TOML file per server model under `hw-profiles/`,
//! saying how to recognise the model from DMI, which temperature sensors
//! matter and at which thresholds, the uplink and the expected capacity.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HwProfile {
    /// Equals the file stem.
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub sources: Vec<String>,
    /// DMI field → glob. All must match. Empty matches any machine.
    #[serde(default, rename = "match")]
    pub matches: DmiMatch,
    #[serde(default)]
    pub sensors: Vec<SensorRule>,
    #[serde(default)]
    pub uplink: Uplink,
    #[serde(default)]
    pub capacity: Capacity,
    #[serde(default)]
    pub boot: Boot,
}

/// What the model needs from the kernel, applied at every start by
/// `appliance hw boot` (appliance-hw-boot.service).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Modules to load: sensor drivers that no device alias loads by
    /// itself (drivetemp, nct6775, ...).
    #[serde(default)]
    pub modules: Vec<String>,
    /// Kernel command-line parameters, written into the boot entries; they
    /// take effect from the next start.
    #[serde(default)]
    pub kernel_params: Vec<String>,
}

/// The kernel parameters a hardware profile may set: hardware quirks
/// (ACPI, PCIe power management, IOMMU, CPU idle and frequency drivers,
/// clocks, watchdogs, NVMe power states), with any value. An allowlist, not
/// a blocklist: the kernel, the initramfs and systemd each read parameters
/// of their own (`init=`, `boot=nfs`, `break=`, `blacklist=`, `rescue`,
/// `fsck.mode=`, `--`, ...) that would change what boots or is verified.
/// Module parameters (`drivetemp.x=1`) are allowed for the profile's own
/// `modules`. Keys are compared with `-` read as `_`, as the kernel does.
const HARDWARE_PARAMS: &[&str] = &[
    "acpi_enforce_resources",
    "pcie_aspm",
    "pcie_aspm.policy",
    "pcie_ports",
    "pci",
    "intel_iommu",
    "amd_iommu",
    "iommu",
    "iommu.passthrough",
    "iommu.strict",
    "intel_idle.max_cstate",
    "processor.max_cstate",
    "intel_pstate",
    "amd_pstate",
    "idle",
    "nmi_watchdog",
    "nowatchdog",
    "tsc",
    "clocksource",
    "hpet",
    "nvme_core.default_ps_max_latency_us",
    "libata.force",
    "usbcore.autosuspend",
];

/// Parameters allowed with some values only: those that would weaken the
/// box are not a hardware quirk.
const RESTRICTED_PARAMS: &[(&str, &[&str])] = &[("mitigations", &["auto", "auto,nosmt"])];

fn check_module(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!(
            "{name:?} is not a kernel module name (letters, digits, _ and -)"
        ));
    }
    Ok(())
}

fn check_param(param: &str, modules: &[String]) -> Result<(), String> {
    if param.is_empty()
        || param.len() > 200
        || !param
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '\'')
    {
        return Err(format!(
            "{param:?} is not one kernel parameter (printable ASCII, no spaces or quotes)"
        ));
    }
    let (key, value) = match param.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (param, None),
    };
    let key = key.replace('-', "_");
    if HARDWARE_PARAMS.contains(&key.as_str()) {
        return Ok(());
    }
    if let Some((_, values)) = RESTRICTED_PARAMS.iter().find(|(k, _)| *k == key) {
        return match value {
            Some(v) if values.contains(&v) => Ok(()),
            _ => Err(format!(
                "{param:?}: a profile may set {key} only to {}",
                values.join(" or ")
            )),
        };
    }
    if let Some((module, _)) = key.split_once('.')
        && modules.iter().any(|m| m.replace('-', "_") == module)
    {
        return Ok(());
    }
    Err(format!(
        "{param:?} is not a hardware setting a profile may make (allowed: {}, {}, and parameters of the profile's own modules); \
         the image owns the rest (root, init, console, verity, systemd and initramfs settings)",
        HARDWARE_PARAMS.join(", "),
        RESTRICTED_PARAMS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
    ))
}

/// The profile's kernel parameters that `cmdline` (e.g. /proc/cmdline)
/// does not carry yet, word for word.
pub fn missing_params<'a>(wanted: &'a [String], cmdline: &str) -> Vec<&'a str> {
    let have: Vec<&str> = cmdline.split_whitespace().collect();
    wanted
        .iter()
        .map(String::as_str)
        .filter(|w| !have.contains(w))
        .collect()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmiMatch {
    pub sys_vendor: Option<String>,
    pub product_name: Option<String>,
    pub product_version: Option<String>,
    pub board_vendor: Option<String>,
    pub board_name: Option<String>,
    pub chassis_vendor: Option<String>,
}

impl DmiMatch {
    fn fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("sys_vendor", &self.sys_vendor),
            ("product_name", &self.product_name),
            ("product_version", &self.product_version),
            ("board_vendor", &self.board_vendor),
            ("board_name", &self.board_name),
            ("chassis_vendor", &self.chassis_vendor),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorRule {
    /// hwmon chip name, or `thermal:<zone type>`.
    pub chip: String,
    /// Glob over the sensor label (`tempN` when the driver gives none).
    pub label: String,
    pub warn: f64,
    pub critical: f64,
    /// A required sensor that is missing raises a warning: the box is then
    /// not watched the way the profile promises.
    #[serde(default)]
    pub required: bool,
}

impl SensorRule {
    pub fn matches(&self, chip: &str, label: &str) -> bool {
        self.chip == chip && glob_match(&self.label, label)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    /// An interface name, or `auto` for the first physical interface that is up.
    #[serde(default = "auto")]
    pub interface: String,
    #[serde(default)]
    pub capacity_mbps: Option<u64>,
}

fn auto() -> String {
    "auto".to_string()
}

impl Default for Uplink {
    fn default() -> Self {
        Uplink {
            interface: auto(),
            capacity_mbps: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub participants: Option<u32>,
    pub meetings: Option<u32>,
}

fn glob_match(pattern: &str, value: &str) -> bool {
    match glob::Pattern::new(pattern) {
        Ok(p) => p.matches(value),
        Err(_) => pattern == value,
    }
}

/// Loads every `*.toml` in `dir`, sorted by name. Any bad file is an error
/// naming the file and the key: a profile that silently fails to load would
/// leave a box watched with the wrong thresholds.
pub fn load_dir(dir: &Path) -> Result<Vec<HwProfile>, Error> {
    let rd = fs::read_dir(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let mut paths: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        out.push(load_file(&path)?);
    }
    if out.is_empty() {
        return Err(Error::Profile {
            path: dir.to_path_buf(),
            key: String::new(),
            what: "no *.toml hardware profiles in this directory".into(),
        });
    }
    Ok(out)
}

pub fn load_file(path: &Path) -> Result<HwProfile, Error> {
    let text = fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let err = |key: String, what: String| Error::Profile {
        path: path.to_path_buf(),
        key,
        what,
    };
    let de = toml::Deserializer::parse(&text).map_err(|e| err(String::new(), e.message().to_string()))?;
    let profile: HwProfile =
        serde_path_to_error::deserialize(de).map_err(|e| err(e.path().to_string(), e.inner().message().to_string()))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if profile.name != stem {
        return Err(err(
            "name".into(),
            format!("is {:?} but must equal the file name {stem:?}", profile.name),
        ));
    }
    for (i, s) in profile.sensors.iter().enumerate() {
        if s.warn.partial_cmp(&s.critical) != Some(std::cmp::Ordering::Less) {
            return Err(err(
                format!("sensors[{i}]"),
                format!("warn ({}) must be below critical ({})", s.warn, s.critical),
            ));
        }
        if glob::Pattern::new(&s.label).is_err() {
            return Err(err(
                format!("sensors[{i}].label"),
                format!("{:?} is not a valid glob", s.label),
            ));
        }
    }
    for (k, v) in profile.matches.fields() {
        if glob::Pattern::new(v).is_err() {
            return Err(err(format!("match.{k}"), format!("{v:?} is not a valid glob")));
        }
    }
    for (i, m) in profile.boot.modules.iter().enumerate() {
        check_module(m).map_err(|w| err(format!("boot.modules[{i}]"), w))?;
    }
    for (i, p) in profile.boot.kernel_params.iter().enumerate() {
        check_param(p, &profile.boot.modules).map_err(|w| err(format!("boot.kernel_params[{i}]"), w))?;
    }
    Ok(profile)
}

/// The outcome of [`detect`]: which profile, and a sentence saying why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub profile: String,
    pub reason: String,
    /// The DMI fields that were read.
    pub dmi: BTreeMap<String, String>,
}

/// Picks the profile for a machine: among profiles whose every match field
/// fits the DMI values, the one with the most fields (the most specific);
/// ties go to the name that sorts first so the choice is stable.
/// `forced` names a profile the operator chose instead.
pub fn detect(profiles: &[HwProfile], dmi: &[(String, String)], forced: Option<&str>) -> Result<Detection, Error> {
    let dmi_map: BTreeMap<String, String> = dmi.iter().cloned().collect();
    if let Some(name) = forced {
        return profiles
            .iter()
            .find(|p| p.name == name)
            .map(|p| Detection {
                profile: p.name.clone(),
                reason: "chosen in the config ([hardware] profile)".into(),
                dmi: dmi_map.clone(),
            })
            .ok_or_else(|| Error::UnknownProfile(name.to_string()));
    }
    let mut best: Option<(&HwProfile, Vec<(&str, &str)>)> = None;
    for p in profiles {
        let fields = p.matches.fields();
        let all = fields
            .iter()
            .all(|(k, pat)| dmi_map.get(*k).is_some_and(|v| glob_match(pat, v)));
        if !all {
            continue;
        }
        if best.as_ref().is_none_or(|(_, f)| fields.len() > f.len()) {
            best = Some((p, fields));
        }
    }
    let (p, fields) = best.ok_or(Error::NoProfileMatched)?;
    let reason = if fields.is_empty() {
        let seen = if dmi_map.is_empty() {
            "no DMI data".to_string()
        } else {
            dmi_map
                .iter()
                .filter(|(k, _)| *k == "sys_vendor" || *k == "product_name")
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("fallback: no specific profile matched ({seen})")
    } else {
        let parts: Vec<String> = fields
            .iter()
            .map(|(k, pat)| {
                format!(
                    "{k}={:?} matches {pat:?}",
                    dmi_map.get(*k).map(String::as_str).unwrap_or("")
                )
            })
            .collect();
        parts.join(", ")
    };
    Ok(Detection {
        profile: p.name.clone(),
        reason,
        dmi: dmi_map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str, m: DmiMatch) -> HwProfile {
        HwProfile {
            name: name.into(),
            description: String::new(),
            sources: vec![],
            matches: m,
            sensors: vec![],
            uplink: Uplink::default(),
            capacity: Capacity::default(),
            boot: Boot::default(),
        }
    }

    #[test]
    fn boot_settings_are_checked_when_the_profile_loads() {
        let dir = tempfile::tempdir().unwrap();
        let load = |boot: &str| {
            let path = dir.path().join("x.toml");
            fs::write(&path, format!("name = \"x\"\ndescription = \"d\"\n[boot]\n{boot}\n")).unwrap();
            load_file(&path).map_err(|e| e.to_string())
        };
        let ok = load(
            "modules = [\"drivetemp\", \"nct6775\"]\nkernel_params = [\"acpi_enforce_resources=lax\", \"nowatchdog\"]",
        )
        .unwrap();
        assert_eq!(ok.boot.modules, ["drivetemp", "nct6775"]);
        assert_eq!(ok.boot.kernel_params, ["acpi_enforce_resources=lax", "nowatchdog"]);
        let owned = "the image owns the rest";
        let refused = [
            ("modules = [\"../evil\"]", "boot.modules[0]"),
            ("modules = [\"a b\"]", "boot.modules[0]"),
            ("kernel_params = [\"nowatchdog\", \"a b\"]", "boot.kernel_params[1]"),
            ("kernel_params = [\"pci=\\\"y\\\"\"]", "boot.kernel_params[0]"),
            ("kernel_params = [\"\"]", "boot.kernel_params[0]"),
            // What boots, what is verified, what init does: never a profile's.
            ("kernel_params = [\"root=/dev/sda2\"]", owned),
            ("kernel_params = [\"ro\"]", owned),
            ("kernel_params = [\"init=/bin/sh\"]", owned),
            ("kernel_params = [\"appliance.verity=00:1\"]", owned),
            ("kernel_params = [\"systemd.unit=rescue.target\"]", owned),
            ("kernel_params = [\"rescue\"]", owned),
            ("kernel_params = [\"single\"]", owned),
            ("kernel_params = [\"--\"]", owned),
            ("kernel_params = [\"fsck.mode=skip\"]", owned),
            // initramfs-tools' own: NFS root (no verity), break, blacklist.
            ("kernel_params = [\"boot=nfs\"]", owned),
            ("kernel_params = [\"break=top\"]", owned),
            ("kernel_params = [\"blacklist=dm_verity\"]", owned),
            // "-" is "_" to the kernel.
            ("kernel_params = [\"module-blacklist=dm_verity\"]", owned),
            ("kernel_params = [\"lsm=\"]", owned),
            ("kernel_params = [\"efi=noruntime\"]", owned),
            // Weakening is not a hardware quirk.
            ("kernel_params = [\"mitigations=off\"]", "only to auto or auto,nosmt"),
            ("kernel_params = [\"mitigations\"]", "only to auto or auto,nosmt"),
            // Parameters of modules the profile does not load.
            ("kernel_params = [\"dm_verity.x=1\"]", owned),
            (
                "modules = [\"drivetemp\"]\nkernel_params = [\"dm-mod.create=x\"]",
                owned,
            ),
            ("firmware = [\"x\"]", "unknown field"),
        ];
        for (boot, want) in refused {
            let e = load(boot).unwrap_err();
            assert!(e.contains(want), "{boot}: {e}");
        }
        let allowed = load(
            "modules = [\"nct6775\", \"it87-x\"]\nkernel_params = [\"pcie-aspm=off\", \"mitigations=auto,nosmt\", \"intel_idle.max_cstate=1\", \"nct6775.force_id=0xd420\", \"it87_x.ignore=1\"]",
        );
        assert!(allowed.is_ok(), "{allowed:?}");
    }

    #[test]
    fn missing_params_compare_whole_words() {
        let wanted = vec!["nowatchdog".to_string(), "acpi_enforce_resources=lax".to_string()];
        let cmdline = "root=/dev/mapper/root ro nowatchdog acpi_enforce_resources=strict\n";
        assert_eq!(missing_params(&wanted, cmdline), ["acpi_enforce_resources=lax"]);
        assert!(missing_params(&wanted, "nowatchdog acpi_enforce_resources=lax").is_empty());
        assert_eq!(missing_params(&wanted, "nowatchdogs").len(), 2);
    }

    fn dmi(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn most_specific_profile_wins() {
        let profiles = vec![
            profile("generic-x86_64", DmiMatch::default()),
            profile(
                "dell",
                DmiMatch {
                    sys_vendor: Some("Dell Inc.".into()),
                    ..Default::default()
                },
            ),
            profile(
                "r650",
                DmiMatch {
                    sys_vendor: Some("Dell Inc.".into()),
                    product_name: Some("PowerEdge R650*".into()),
                    ..Default::default()
                },
            ),
            profile(
                "qemu",
                DmiMatch {
                    sys_vendor: Some("QEMU".into()),
                    ..Default::default()
                },
            ),
        ];
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("sys_vendor", "Dell Inc."), ("product_name", "PowerEdge R650xs")],
                "r650",
            ),
            (
                &[("sys_vendor", "Dell Inc."), ("product_name", "PowerEdge R750")],
                "dell",
            ),
            (
                &[
                    ("sys_vendor", "QEMU"),
                    ("product_name", "Standard PC (Q35 + ICH9, 2009)"),
                ],
                "qemu",
            ),
            (&[("sys_vendor", "Supermicro")], "generic-x86_64"),
            (&[], "generic-x86_64"),
        ];
        for (fields, want) in cases {
            let d = detect(&profiles, &dmi(fields), None).unwrap();
            assert_eq!(d.profile, *want, "{fields:?}");
        }
        let d = detect(
            &profiles,
            &dmi(&[("sys_vendor", "Dell Inc."), ("product_name", "PowerEdge R650")]),
            None,
        )
        .unwrap();
        assert_eq!(
            d.reason,
            "sys_vendor=\"Dell Inc.\" matches \"Dell Inc.\", product_name=\"PowerEdge R650\" matches \"PowerEdge R650*\""
        );
        let d = detect(&profiles, &dmi(&[("sys_vendor", "Supermicro")]), None).unwrap();
        assert_eq!(
            d.reason,
            "fallback: no specific profile matched (sys_vendor=\"Supermicro\")"
        );
    }

    #[test]
    fn forced_and_missing_profiles() {
        let profiles = vec![profile(
            "qemu",
            DmiMatch {
                sys_vendor: Some("QEMU".into()),
                ..Default::default()
            },
        )];
        assert_eq!(detect(&profiles, &[], Some("qemu")).unwrap().profile, "qemu");
        assert!(matches!(
            detect(&profiles, &[], Some("nope")),
            Err(Error::UnknownProfile(_))
        ));
        assert!(matches!(detect(&profiles, &[], None), Err(Error::NoProfileMatched)));
    }

    #[test]
    fn sensor_rule_globs_labels() {
        let r = SensorRule {
            chip: "coretemp".into(),
            label: "Package id *".into(),
            warn: 85.0,
            critical: 95.0,
            required: true,
        };
        assert!(r.matches("coretemp", "Package id 1"));
        assert!(!r.matches("coretemp", "Core 0"));
        assert!(!r.matches("k10temp", "Package id 0"));
    }

    #[test]
    fn bad_profile_files_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("x", "name = \"x\"\ndescription = \"d\"\ncolour = 1\n", "unknown field"),
            ("x", "name = \"y\"\ndescription = \"d\"\n", "name"),
            (
                "x",
                "name = \"x\"\ndescription = \"d\"\n[[sensors]]\nchip = \"c\"\nlabel = \"l\"\nwarn = \"hot\"\ncritical = 1.0\n",
                "sensors[0].warn",
            ),
            (
                "x",
                "name = \"x\"\ndescription = \"d\"\n[[sensors]]\nchip = \"c\"\nlabel = \"l\"\nwarn = 90.0\ncritical = 80.0\n",
                "sensors[0]",
            ),
        ];
        for (stem, text, want) in cases {
            let path = dir.path().join(format!("{stem}.toml"));
            fs::write(&path, text).unwrap();
            let e = load_file(&path).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
            assert!(e.contains("x.toml"), "{e:?} should name the file");
        }
    }
}
