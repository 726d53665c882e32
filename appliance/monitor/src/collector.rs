//! The sampler: reads procfs and sysfs under configurable roots once per
//! interval and turns counters into rates and monotonic totals.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::counter::Counter;
use crate::procfs::{self, CpuTimes, Stat};
use crate::sysfs::{self, Problem, Temperature, Throttles};

/// Where the kernel's files are; tests point these at recorded trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pub sys: PathBuf,
    pub proc: PathBuf,
}

/// Size and use of a filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub size: u64,
    pub used: u64,
    pub available: u64,
}

/// statvfs, behind a trait so unit tests can give fixed numbers.
pub trait FsStat: Send + Sync {
    fn stat(&self, path: &Path) -> io::Result<FsUsage>;
}

/// The real statvfs(3).
#[derive(Debug, Clone, Copy, Default)]
pub struct StatVfs;

impl FsStat for StatVfs {
    fn stat(&self, path: &Path) -> io::Result<FsUsage> {
        let s = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        let frsize = s.fragment_size() as u64;
        let blocks = s.blocks() as u64;
        let free = s.blocks_free() as u64;
        let avail = s.blocks_available() as u64;
        Ok(FsUsage {
            size: blocks * frsize,
            used: blocks.saturating_sub(free) * frsize,
            available: avail * frsize,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Unix time of the sample, seconds.
    pub timestamp: f64,
    pub cpu: Cpu,
    pub memory: Option<Memory>,
    pub filesystems: Vec<Filesystem>,
    pub network: Vec<Interface>,
    pub temperatures: Vec<Temperature>,
    /// Seconds since the host booted.
    pub host_uptime_seconds: Option<f64>,
    /// What could not be read or believed in this sample.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// Busy share of all CPUs since the previous sample, 0..1.
    pub usage: Option<f64>,
    pub cores: Vec<CoreUsage>,
    pub load: Option<[f64; 3]>,
    /// Share of the last 10 s some task waited for a CPU (PSI), 0..1.
    pub pressure: Option<f64>,
    pub throttles: Option<Throttles>,
    /// Time all CPUs spent in each mode since boot, from `/proc/stat`:
    /// what Prometheus's `rate()` wants, beside the ratio above.
    #[serde(default)]
    pub times: Option<crate::procfs::CpuTimes>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoreUsage {
    pub cpu: u32,
    pub usage: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
}

impl Memory {
    pub fn used_ratio(&self) -> Option<f64> {
        (self.total_bytes > 0).then(|| self.used_bytes as f64 / self.total_bytes as f64)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystem {
    /// The configured path (e.g. /var/bigbluebutton).
    pub path: String,
    /// The mountpoint it lives on, when the mount table says.
    pub mountpoint: Option<String>,
    pub fstype: Option<String>,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
}

impl Filesystem {
    /// Used share as df(1) shows it: root-reserved blocks count as neither.
    pub fn used_ratio(&self) -> Option<f64> {
        let denom = self.used_bytes + self.available_bytes;
        (denom > 0).then(|| self.used_bytes as f64 / denom as f64)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub up: Option<bool>,
    pub speed_mbps: Option<u64>,
    pub physical: bool,
    pub loopback: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_drops: u64,
    pub tx_drops: u64,
    /// Bytes per second since the previous sample.
    pub rx_rate: Option<f64>,
    pub tx_rate: Option<f64>,
}

#[derive(Debug, Default)]
struct NetState {
    counters: [Counter; 8],
}

pub struct Collector {
    roots: Roots,
    filesystems: Vec<PathBuf>,
    fs: Box<dyn FsStat>,
    prev_stat: Option<Stat>,
    prev_mono: Option<f64>,
    net: BTreeMap<String, NetState>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl Collector {
    pub fn new(roots: Roots, filesystems: Vec<PathBuf>, fs: Box<dyn FsStat>) -> Collector {
        Collector {
            roots,
            filesystems,
            fs,
            prev_stat: None,
            prev_mono: None,
            net: BTreeMap::new(),
        }
    }

    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    /// Takes one sample. `mono` is seconds on a monotonic clock (for rates),
    /// `unix` the wall-clock time stamped on the sample.
    pub fn sample(&mut self, mono: f64, unix: f64) -> Snapshot {
        let mut problems = Vec::new();
        let dt = self.prev_mono.map(|p| mono - p).filter(|d| *d > 0.0);
        self.prev_mono = Some(mono);

        let cpu = self.cpu(&mut problems);
        let memory = self
            .read_proc("meminfo", procfs::parse_meminfo, &mut problems)
            .map(|m| Memory {
                total_bytes: m.total,
                used_bytes: m.used(),
                available_bytes: m.available,
                swap_total_bytes: m.swap_total,
                swap_used_bytes: m.swap_used(),
            });
        let filesystems = self.filesystems(&mut problems);
        let network = self.network(dt, &mut problems);
        let mut temperatures = sysfs::read_hwmon(&self.roots.sys, &mut problems);
        temperatures.extend(sysfs::read_thermal_zones(&self.roots.sys, &mut problems));
        let host_uptime_seconds = self.read_proc("uptime", procfs::parse_uptime, &mut problems);
        Snapshot {
            timestamp: unix,
            cpu,
            memory,
            filesystems,
            network,
            temperatures,
            host_uptime_seconds,
            problems,
        }
    }

    fn read_proc<T>(
        &self,
        rel: &str,
        parse: impl FnOnce(&str) -> Result<T, crate::ParseError>,
        problems: &mut Vec<Problem>,
    ) -> Option<T> {
        let path = self.roots.proc.join(rel);
        match fs::read_to_string(&path) {
            Ok(text) => match parse(&text) {
                Ok(v) => Some(v),
                Err(e) => {
                    problems.push(Problem::new(&path, e.to_string()));
                    None
                }
            },
            Err(e) => {
                problems.push(Problem::new(&path, e.to_string()));
                None
            }
        }
    }

    fn cpu(&mut self, problems: &mut Vec<Problem>) -> Cpu {
        let stat = self.read_proc("stat", procfs::parse_stat, problems);
        let mut cpu = Cpu {
            load: self.read_proc("loadavg", procfs::parse_loadavg, problems),
            throttles: sysfs::read_throttles(&self.roots.sys),
            ..Cpu::default()
        };
        // PSI is missing on kernels built without it; that is not a problem.
        let psi = self.roots.proc.join("pressure/cpu");
        if let Ok(text) = fs::read_to_string(&psi) {
            cpu.pressure = procfs::parse_pressure_some_avg10(&text).ok();
        }
        if let Some(stat) = stat {
            let prev = self.prev_stat.as_ref();
            cpu.usage = prev.and_then(|p| stat.total.usage_since(&p.total));
            cpu.times = Some(stat.total);
            cpu.cores = stat
                .cpus
                .iter()
                .map(|(n, t)| {
                    let before: Option<&CpuTimes> =
                        prev.and_then(|p| p.cpus.iter().find(|(m, _)| m == n).map(|(_, t)| t));
                    CoreUsage {
                        cpu: *n,
                        usage: before.and_then(|b| t.usage_since(b)),
                    }
                })
                .collect();
            self.prev_stat = Some(stat);
        }
        cpu
    }

    fn filesystems(&self, problems: &mut Vec<Problem>) -> Vec<Filesystem> {
        let mounts = fs::read_to_string(self.roots.proc.join("mounts"))
            .or_else(|_| fs::read_to_string(self.roots.proc.join("self/mounts")))
            .map(|t| procfs::parse_mounts(&t))
            .unwrap_or_default();
        let mut out = Vec::new();
        for path in &self.filesystems {
            match self.fs.stat(path) {
                Ok(u) => {
                    let p = path.display().to_string();
                    let m = procfs::mount_for(&mounts, &p);
                    out.push(Filesystem {
                        path: p,
                        mountpoint: m.map(|m| m.mountpoint.clone()),
                        fstype: m.map(|m| m.fstype.clone()),
                        size_bytes: u.size,
                        used_bytes: u.used,
                        available_bytes: u.available,
                    });
                }
                // A path that does not exist yet (no recordings made) is normal.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => problems.push(Problem::new(path, e.to_string())),
            }
        }
        out
    }

    fn network(&mut self, dt: Option<f64>, problems: &mut Vec<Problem>) -> Vec<Interface> {
        let path = self.roots.proc.join("net/dev");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::new(&path, e.to_string()));
                return Vec::new();
            }
        };
        let (ifaces, errors) = procfs::parse_net_dev(&text);
        problems.extend(errors.into_iter().map(|e| Problem::new(&path, e.to_string())));
        // Interfaces that vanished are forgotten; if they come back their
        // totals start again from the kernel's figure.
        self.net.retain(|name, _| ifaces.iter().any(|(n, _)| n == name));
        let mut out = Vec::with_capacity(ifaces.len());
        for (name, c) in ifaces {
            let state = self.net.entry(name.clone()).or_default();
            let first = state.counters[0] == Counter::default();
            let raw = [
                c.rx_bytes,
                c.tx_bytes,
                c.rx_packets,
                c.tx_packets,
                c.rx_errors,
                c.tx_errors,
                c.rx_drops,
                c.tx_drops,
            ];
            let mut deltas = [0u64; 8];
            for (i, r) in raw.iter().enumerate() {
                deltas[i] = state.counters[i].observe(*r);
            }
            let rate = |d: u64| {
                if first { None } else { dt.map(|dt| d as f64 / dt) }
            };
            let link = sysfs::read_link_state(&self.roots.sys, &name);
            let t = |i: usize| state.counters[i].total();
            out.push(Interface {
                loopback: link.kind == Some(772) || name == "lo",
                up: link.up,
                speed_mbps: link.speed_mbps,
                physical: link.physical,
                rx_bytes: t(0),
                tx_bytes: t(1),
                rx_packets: t(2),
                tx_packets: t(3),
                rx_errors: t(4),
                tx_errors: t(5),
                rx_drops: t(6),
                tx_drops: t(7),
                rx_rate: rate(deltas[0]),
                tx_rate: rate(deltas[1]),
                name,
            });
        }
        out
    }
}

/// The uplink interface: the one named, or with `auto` the first physical
/// interface that is up (by name), else the first non-loopback one that is up.
pub fn pick_uplink<'a>(wanted: &str, ifaces: &'a [Interface]) -> Option<&'a Interface> {
    if wanted != "auto" {
        return ifaces.iter().find(|i| i.name == wanted);
    }
    let mut candidates: Vec<&Interface> = ifaces.iter().filter(|i| !i.loopback && i.up != Some(false)).collect();
    candidates.sort_by_key(|i| (!i.physical, i.up != Some(true), i.name.clone()));
    candidates.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FixedFs;
    impl FsStat for FixedFs {
        fn stat(&self, path: &Path) -> io::Result<FsUsage> {
            match path.to_str() {
                Some("/") => Ok(FsUsage {
                    size: 1000,
                    used: 600,
                    available: 300,
                }),
                Some("/denied") => Err(io::Error::from(io::ErrorKind::PermissionDenied)),
                _ => Err(io::Error::from(io::ErrorKind::NotFound)),
            }
        }
    }

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = d.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        w(
            "proc/stat",
            "cpu  100 0 0 900 0 0 0 0 0 0\ncpu0 50 0 0 450 0 0 0 0 0 0\ncpu1 50 0 0 450 0 0 0 0 0 0\n",
        );
        w(
            "proc/meminfo",
            "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n",
        );
        w("proc/loadavg", "1.00 0.50 0.25 1/100 42\n");
        w("proc/uptime", "100.5 50.0\n");
        w("proc/mounts", "/dev/vda1 / ext4 rw 0 0\n");
        w(
            "proc/net/dev",
            "Inter-|\n face |\n  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n",
        );
        w("sys/class/net/eth0/operstate", "up\n");
        w("sys/class/net/eth0/speed", "1000\n");
        w("sys/class/net/eth0/type", "1\n");
        d
    }

    #[test]
    fn rates_and_usage_come_from_the_second_sample() {
        let d = tree();
        let roots = Roots {
            sys: d.path().join("sys"),
            proc: d.path().join("proc"),
        };
        let mut c = Collector::new(
            roots,
            vec!["/".into(), "/missing".into(), "/denied".into()],
            Box::new(FixedFs),
        );
        let s1 = c.sample(10.0, 1000.0);
        assert_eq!(s1.cpu.usage, None);
        assert_eq!(s1.cpu.load, Some([1.0, 0.5, 0.25]));
        assert_eq!(s1.memory.unwrap().used_bytes, 750 * 1024);
        assert_eq!(s1.network[0].rx_bytes, 1000);
        assert_eq!(s1.network[0].rx_rate, None);
        assert_eq!(s1.network[0].speed_mbps, Some(1000));
        assert_eq!(s1.network[0].up, Some(true));
        assert_eq!(s1.filesystems.len(), 1);
        assert_eq!(s1.filesystems[0].mountpoint.as_deref(), Some("/"));
        assert_eq!(s1.filesystems[0].used_ratio(), Some(600.0 / 900.0));
        assert_eq!(s1.problems.len(), 1, "{:?}", s1.problems);
        assert!(s1.problems[0].path.contains("denied"));

        fs::write(
            d.path().join("proc/stat"),
            "cpu  400 0 0 1000 0 0 0 0 0 0\ncpu0 50 0 0 550 0 0 0 0 0 0\ncpu1 350 0 0 450 0 0 0 0 0 0\n",
        )
        .unwrap();
        fs::write(
            d.path().join("proc/net/dev"),
            "  eth0: 3000 30 0 0 0 0 0 0 2500 25 0 0 0 0 0 0\n",
        )
        .unwrap();
        let s2 = c.sample(12.0, 1002.0);
        assert_eq!(s2.cpu.usage, Some(0.75));
        assert_eq!(
            s2.cpu.cores.iter().map(|c| c.usage).collect::<Vec<_>>(),
            [Some(0.0), Some(1.0)]
        );
        assert_eq!(s2.network[0].rx_rate, Some(1000.0));
        assert_eq!(s2.network[0].tx_rate, Some(250.0));

        // The interface counter resets (driver reload): totals keep growing.
        fs::write(
            d.path().join("proc/net/dev"),
            "  eth0: 500 5 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n",
        )
        .unwrap();
        let s3 = c.sample(13.0, 1003.0);
        assert_eq!(s3.network[0].rx_bytes, 3500);
        assert_eq!(s3.network[0].rx_rate, Some(500.0));
    }

    #[test]
    fn an_empty_tree_gives_problems_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let roots = Roots {
            sys: d.path().join("sys"),
            proc: d.path().join("proc"),
        };
        let mut c = Collector::new(roots, vec![], Box::new(FixedFs));
        let s = c.sample(0.0, 0.0);
        assert!(s.memory.is_none() && s.network.is_empty() && s.temperatures.is_empty());
        assert!(s.problems.len() >= 4);
    }

    #[test]
    fn uplink_choice() {
        let i = |name: &str, up: Option<bool>, physical: bool| Interface {
            name: name.into(),
            up,
            physical,
            loopback: name == "lo",
            speed_mbps: None,
            rx_bytes: 0,
            tx_bytes: 0,
            rx_packets: 0,
            tx_packets: 0,
            rx_errors: 0,
            tx_errors: 0,
            rx_drops: 0,
            tx_drops: 0,
            rx_rate: None,
            tx_rate: None,
        };
        let ifs = vec![
            i("lo", Some(true), false),
            i("docker0", Some(true), false),
            i("eno2", Some(false), true),
            i("eno1", Some(true), true),
        ];
        assert_eq!(pick_uplink("auto", &ifs).unwrap().name, "eno1");
        assert_eq!(pick_uplink("eno2", &ifs).unwrap().name, "eno2");
        assert!(pick_uplink("eth9", &ifs).is_none());
        let virt = vec![i("lo", Some(true), false), i("eth0", None, false)];
        assert_eq!(pick_uplink("auto", &virt).unwrap().name, "eth0");
    }
}
