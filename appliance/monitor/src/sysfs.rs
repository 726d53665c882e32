//! Readers for the sysfs files the supervisor uses: hwmon chips, thermal
//! zones, network interface state, DMI and CPU throttling counters.
//!
//! Sensors come and go (a hot-plugged disk, a driver that loads late) and
//! real hardware returns garbage; every reader here skips what it cannot
//! read or believe and reports it as a [`Problem`], never failing the whole
//! sample.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Something a collector could not read or did not believe, kept so the
/// status can show it and the log can mention it once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub path: String,
    pub what: String,
}

impl Problem {
    pub fn new(path: &Path, what: impl Into<String>) -> Problem {
        Problem {
            path: path.display().to_string(),
            what: what.into(),
        }
    }
}

/// Plausible range of a temperature reading. Outside it a sensor is
/// broken or unpopulated (seen: -101 °C limits, 256 °C trip points), and 0
/// exactly is what many drivers return for "no sensor here".
pub fn celsius_from_millis(millis: i64) -> Option<f64> {
    if millis == 0 {
        return None;
    }
    let c = millis as f64 / 1000.0;
    (-40.0..=150.0).contains(&c).then_some(c)
}

/// One temperature reading, named so that it is stable across reboots
/// (never by hwmonN, whose numbering is not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    /// `chip/label`, e.g. `coretemp/Package id 0`, `nvme/Composite`,
    /// `acpitz/thermal_zone0`. When two chips share a name the device is
    /// added: `nvme:nvme1/Composite`.
    pub sensor: String,
    /// The hwmon chip name, or `thermal:<type>` for a thermal zone; what
    /// hardware profiles match on.
    pub chip: String,
    pub label: String,
    pub celsius: f64,
    /// The driver's own warning limit (hwmon `max`, thermal hot/passive trip).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max: Option<f64>,
    /// The driver's own critical limit (hwmon `crit`, thermal critical trip).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crit: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub trips: Vec<Trip>,
}

/// A thermal zone trip point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    pub kind: String,
    pub celsius: f64,
}

fn read_trimmed(path: &Path) -> io::Result<String> {
    fs::read_to_string(path).map(|s| s.trim_end_matches(['\n', ' ', '\0']).to_string())
}

fn read_i64(path: &Path) -> Result<i64, String> {
    let text = read_trimmed(path).map_err(|e| e.to_string())?;
    text.trim()
        .parse::<i64>()
        .map_err(|_| format!("not a number: {:?}", truncate(&text, 32)))
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Entries of `dir` whose names start with `prefix` followed by a number,
/// sorted by that number, so output order is stable.
fn numbered_entries(dir: &Path, prefix: &str) -> Vec<(u32, PathBuf)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix(prefix)?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out
}

struct RawChip {
    name: String,
    device: Option<String>,
    dir_name: String,
    temps: Vec<(String, f64, Option<f64>, Option<f64>)>,
}

/// Reads every hwmon chip under `<sys>/class/hwmon`. A missing directory
/// (no sensors, or a container) yields nothing and no problem.
pub fn read_hwmon(sys: &Path, problems: &mut Vec<Problem>) -> Vec<Temperature> {
    let mut chips = Vec::new();
    for (_, dir) in numbered_entries(&sys.join("class/hwmon"), "hwmon") {
        // Some old drivers keep `name` under device/ only.
        let name = read_trimmed(&dir.join("name"))
            .or_else(|_| read_trimmed(&dir.join("device/name")))
            .ok()
            .filter(|n| !n.is_empty());
        let Some(name) = name else {
            problems.push(Problem::new(&dir, "hwmon chip without a name"));
            continue;
        };
        let device = fs::read_link(dir.join("device"))
            .ok()
            .and_then(|t| t.file_name().map(|f| f.to_string_lossy().into_owned()));
        let mut temps = Vec::new();
        for (n, input) in numbered_inputs(&dir) {
            let millis = match read_i64(&input) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(Problem::new(&input, e));
                    continue;
                }
            };
            let Some(celsius) = celsius_from_millis(millis) else {
                problems.push(Problem::new(&input, format!("implausible reading {millis} m°C")));
                continue;
            };
            let label = read_trimmed(&dir.join(format!("temp{n}_label")))
                .ok()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| format!("temp{n}"));
            let limit = |suffix: &str| {
                read_i64(&dir.join(format!("temp{n}_{suffix}")))
                    .ok()
                    .and_then(celsius_from_millis)
            };
            temps.push((label, celsius, limit("max"), limit("crit")));
        }
        let dir_name = dir
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        chips.push(RawChip {
            name,
            device,
            dir_name,
            temps,
        });
    }
    let mut out = Vec::new();
    for chip in &chips {
        let shared = chips.iter().filter(|c| c.name == chip.name).count() > 1;
        let prefix = if shared {
            format!("{}:{}", chip.name, chip.device.as_deref().unwrap_or(&chip.dir_name))
        } else {
            chip.name.clone()
        };
        for (label, celsius, max, crit) in &chip.temps {
            out.push(Temperature {
                sensor: format!("{prefix}/{label}"),
                chip: chip.name.clone(),
                label: label.clone(),
                celsius: *celsius,
                max: *max,
                crit: *crit,
                trips: Vec::new(),
            });
        }
    }
    out
}

/// `tempN_input` files of a chip directory, by N.
fn numbered_inputs(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let n = name
                .to_str()?
                .strip_prefix("temp")?
                .strip_suffix("_input")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out
}

/// Reads every thermal zone under `<sys>/class/thermal`.
pub fn read_thermal_zones(sys: &Path, problems: &mut Vec<Problem>) -> Vec<Temperature> {
    let mut out = Vec::new();
    for (_, dir) in numbered_entries(&sys.join("class/thermal"), "thermal_zone") {
        let zone = dir
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = match read_trimmed(&dir.join("type")) {
            Ok(t) if !t.is_empty() => t,
            _ => {
                problems.push(Problem::new(&dir, "thermal zone without a type"));
                continue;
            }
        };
        let temp_path = dir.join("temp");
        let celsius = match read_i64(&temp_path) {
            Ok(m) => match celsius_from_millis(m) {
                Some(c) => c,
                None => {
                    problems.push(Problem::new(&temp_path, format!("implausible reading {m} m°C")));
                    continue;
                }
            },
            Err(e) => {
                problems.push(Problem::new(&temp_path, e));
                continue;
            }
        };
        let mut trips = Vec::new();
        for n in 0.. {
            let t = dir.join(format!("trip_point_{n}_temp"));
            if !t.exists() {
                break;
            }
            let Ok(trip_kind) = read_trimmed(&dir.join(format!("trip_point_{n}_type"))) else {
                continue;
            };
            if let Some(c) = read_i64(&t).ok().and_then(celsius_from_millis) {
                trips.push(Trip {
                    kind: trip_kind,
                    celsius: c,
                });
            } else {
                problems.push(Problem::new(&t, "implausible trip point, ignored"));
            }
        }
        let lowest = |kinds: &[&str]| {
            trips
                .iter()
                .filter(|t| kinds.contains(&t.kind.as_str()))
                .map(|t| t.celsius)
                .min_by(f64::total_cmp)
        };
        out.push(Temperature {
            sensor: format!("{kind}/{zone}"),
            chip: format!("thermal:{kind}"),
            label: zone.clone(),
            celsius,
            max: lowest(&["hot"]).or_else(|| lowest(&["passive"])),
            crit: lowest(&["critical"]),
            trips,
        });
    }
    out
}

/// State of a network interface from `<sys>/class/net/IF`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    /// `None` when the kernel says "unknown" (common for virtual links).
    pub up: Option<bool>,
    pub speed_mbps: Option<u64>,
    /// ARPHRD type: 1 Ethernet, 772 loopback.
    pub kind: Option<u32>,
    /// Whether it is backed by a device (a NIC), not purely virtual.
    pub physical: bool,
}

pub fn read_link_state(sys: &Path, iface: &str) -> LinkState {
    let dir = sys.join("class/net").join(iface);
    let up = match read_trimmed(&dir.join("operstate")).as_deref() {
        Ok("up") => Some(true),
        Ok("down" | "lowerlayerdown" | "notpresent" | "dormant") => Some(false),
        _ => None,
    };
    // `speed` reads -1, or fails with EINVAL, when the link is down.
    let speed_mbps = read_i64(&dir.join("speed")).ok().filter(|s| *s > 0).map(|s| s as u64);
    let kind = read_i64(&dir.join("type")).ok().and_then(|t| u32::try_from(t).ok());
    LinkState {
        up,
        speed_mbps,
        kind,
        physical: dir.join("device").exists() || dir.join("device").is_symlink(),
    }
}

/// The DMI fields hardware profiles may match on.
pub const DMI_FIELDS: &[&str] = &[
    "sys_vendor",
    "product_name",
    "product_version",
    "board_vendor",
    "board_name",
    "chassis_vendor",
];

/// Reads the DMI identification of the machine; absent fields are left out.
pub fn read_dmi(sys: &Path) -> Vec<(String, String)> {
    let dir = sys.join("class/dmi/id");
    DMI_FIELDS
        .iter()
        .filter_map(|f| {
            let v = read_trimmed(&dir.join(f)).ok()?;
            let v = v.trim().to_string();
            Some((f.to_string(), v))
        })
        .collect()
}

/// Thermal throttling events since boot, summed over CPUs (core) and over
/// physical packages (package; every CPU of a package shows the same count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttles {
    pub core: u64,
    pub package: u64,
}

pub fn read_throttles(sys: &Path) -> Option<Throttles> {
    let mut found = false;
    let mut t = Throttles::default();
    let mut packages = std::collections::BTreeMap::new();
    for (_, cpu) in numbered_entries(&sys.join("devices/system/cpu"), "cpu") {
        let dir = cpu.join("thermal_throttle");
        if let Ok(c) = read_i64(&dir.join("core_throttle_count")) {
            found = true;
            t.core += c.max(0) as u64;
        }
        if let Ok(p) = read_i64(&dir.join("package_throttle_count")) {
            found = true;
            let pkg = read_i64(&cpu.join("topology/physical_package_id")).unwrap_or(0);
            packages.insert(pkg, p.max(0) as u64);
        }
    }
    t.package = packages.values().sum();
    found.then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_temperatures() {
        let cases = [
            (45_000, Some(45.0)),
            (0, None),
            (-101_000, None),
            (256_000, None),
            (150_000, Some(150.0)),
            (-40_000, Some(-40.0)),
            (150_001, None),
            (27_800, Some(27.8)),
        ];
        for (millis, want) in cases {
            assert_eq!(celsius_from_millis(millis), want, "{millis}");
        }
    }

    #[test]
    fn hwmon_names_duplicates_by_device_and_skips_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        let chip = |n: u32, name: &str, dev: &str, files: &[(&str, &str)]| {
            let d = sys.join(format!("class/hwmon/hwmon{n}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("name"), format!("{name}\n")).unwrap();
            std::os::unix::fs::symlink(format!("../../{dev}"), d.join("device")).unwrap();
            for (f, v) in files {
                fs::write(d.join(f), format!("{v}\n")).unwrap();
            }
        };
        chip(
            0,
            "nvme",
            "nvme0",
            &[
                ("temp1_input", "38850"),
                ("temp1_label", "Composite"),
                ("temp1_crit", "84850"),
            ],
        );
        chip(
            1,
            "nvme",
            "nvme1",
            &[("temp1_input", "40850"), ("temp1_label", "Composite")],
        );
        chip(
            2,
            "acpitz",
            "LNXTHERM:00",
            &[
                ("temp1_input", "27800"),
                ("temp1_crit", "256000"),
                ("temp2_input", "0"),
                ("temp3_input", "xyz"),
            ],
        );
        let mut problems = Vec::new();
        let temps = read_hwmon(sys, &mut problems);
        let names: Vec<_> = temps.iter().map(|t| t.sensor.as_str()).collect();
        assert_eq!(names, ["nvme:nvme0/Composite", "nvme:nvme1/Composite", "acpitz/temp1"]);
        assert_eq!(temps[0].crit, Some(84.85));
        assert_eq!(temps[2].crit, None, "256 °C trip is garbage");
        assert_eq!(temps[2].celsius, 27.8);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn no_hwmon_dir_is_no_sensors_and_no_problem() {
        let dir = tempfile::tempdir().unwrap();
        let mut problems = Vec::new();
        assert!(read_hwmon(dir.path(), &mut problems).is_empty());
        assert!(read_thermal_zones(dir.path(), &mut problems).is_empty());
        assert!(problems.is_empty());
        assert_eq!(read_throttles(dir.path()), None);
    }
}
