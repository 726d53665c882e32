//! Parsers for the procfs files the supervisor reads. Pure functions over
//! text: the caller reads the file, so these are tested without a /proc.

use std::collections::HashMap;

use crate::ParseError;

/// Jiffies spent by one CPU (or all CPUs) in each mode, from `/proc/stat`.
///
/// `guest` and `guest_nice` are left out on purpose: the kernel already
/// counts them inside `user` and `nice`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

/// Ticks per second in `/proc/stat`: USER_HZ, which the kernel fixes at
/// 100 for user space on every architecture it supports.
pub const USER_HZ: f64 = 100.0;

impl CpuTimes {
    /// Seconds in each mode (node_exporter's names), for counters.
    pub fn seconds(&self) -> [(&'static str, f64); 8] {
        let s = |t: u64| t as f64 / USER_HZ;
        [
            ("user", s(self.user)),
            ("nice", s(self.nice)),
            ("system", s(self.system)),
            ("idle", s(self.idle)),
            ("iowait", s(self.iowait)),
            ("irq", s(self.irq)),
            ("softirq", s(self.softirq)),
            ("steal", s(self.steal)),
        ]
    }

    pub fn total(&self) -> u64 {
        self.user
            .saturating_add(self.nice)
            .saturating_add(self.system)
            .saturating_add(self.idle)
            .saturating_add(self.iowait)
            .saturating_add(self.irq)
            .saturating_add(self.softirq)
            .saturating_add(self.steal)
    }

    /// Time the CPU had nothing to run; iowait counts as idle because the
    /// CPU was free to run something else.
    pub fn idle_all(&self) -> u64 {
        self.idle.saturating_add(self.iowait)
    }

    /// Share of the time between `prev` and `self` that the CPU was busy.
    /// `None` when no time passed or a counter went backwards (CPU hotplug,
    /// or garbage), because any number would then be invented.
    pub fn usage_since(&self, prev: &CpuTimes) -> Option<f64> {
        let total = self.total().checked_sub(prev.total())?;
        let idle = self.idle_all().checked_sub(prev.idle_all())?;
        if total == 0 || idle > total {
            return None;
        }
        Some(1.0 - idle as f64 / total as f64)
    }
}

/// The CPU lines of `/proc/stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub total: CpuTimes,
    /// Per CPU, keyed by the kernel's CPU number (offline CPUs are absent).
    pub cpus: Vec<(u32, CpuTimes)>,
}

pub fn parse_stat(text: &str) -> Result<Stat, ParseError> {
    let mut stat = Stat::default();
    let mut seen_total = false;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else { continue };
        let Some(rest) = key.strip_prefix("cpu") else {
            continue;
        };
        let values: Vec<u64> = fields
            .map(|f| f.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| ParseError::new("stat", format!("non-numeric field in {key:?} line")))?;
        if values.len() < 4 {
            return Err(ParseError::new(
                "stat",
                format!("{key:?} line has {} fields, expected at least 4", values.len()),
            ));
        }
        let at = |i: usize| values.get(i).copied().unwrap_or(0);
        let times = CpuTimes {
            user: at(0),
            nice: at(1),
            system: at(2),
            idle: at(3),
            iowait: at(4),
            irq: at(5),
            softirq: at(6),
            steal: at(7),
        };
        if rest.is_empty() {
            stat.total = times;
            seen_total = true;
        } else {
            let n = rest
                .parse::<u32>()
                .map_err(|_| ParseError::new("stat", format!("bad cpu line key {key:?}")))?;
            stat.cpus.push((n, times));
        }
    }
    if !seen_total {
        return Err(ParseError::new("stat", "no aggregate \"cpu\" line"));
    }
    Ok(stat)
}

/// Memory figures from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
    pub free: u64,
    pub buffers: u64,
    pub cached: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

impl MemInfo {
    /// Used memory as `free(1)` and Cockpit count it: what applications
    /// hold, not the page cache (counting cache misleads users).
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.available)
    }

    pub fn swap_used(&self) -> u64 {
        self.swap_total.saturating_sub(self.swap_free)
    }
}

pub fn parse_meminfo(text: &str) -> Result<MemInfo, ParseError> {
    let mut kv: HashMap<&str, u64> = HashMap::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_ascii_whitespace();
        let Some(Ok(value)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            None => value,
            Some(_) => continue,
        };
        kv.insert(key.trim(), bytes);
    }
    let get = |k: &str| {
        kv.get(k)
            .copied()
            .ok_or_else(|| ParseError::new("meminfo", format!("missing {k}")))
    };
    let total = get("MemTotal")?;
    let free = get("MemFree")?;
    let buffers = kv.get("Buffers").copied().unwrap_or(0);
    let cached = kv.get("Cached").copied().unwrap_or(0);
    // Kernels before 3.14 lack MemAvailable; free + buffers + cached is the
    // estimate tools used then.
    let available = kv
        .get("MemAvailable")
        .copied()
        .unwrap_or(free + buffers + cached)
        .min(total);
    Ok(MemInfo {
        total,
        available,
        free,
        buffers,
        cached,
        swap_total: kv.get("SwapTotal").copied().unwrap_or(0),
        swap_free: kv.get("SwapFree").copied().unwrap_or(0),
    })
}

/// The three load averages of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Result<[f64; 3], ParseError> {
    let mut fields = text.split_ascii_whitespace();
    let mut out = [0.0; 3];
    for slot in &mut out {
        *slot = fields
            .next()
            .and_then(|f| f.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| ParseError::new("loadavg", "expected three non-negative numbers"))?;
    }
    Ok(out)
}

/// Seconds since boot, the first field of `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Result<f64, ParseError> {
    text.split_ascii_whitespace()
        .next()
        .and_then(|f| f.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| ParseError::new("uptime", "expected seconds since boot"))
}

/// Counters of one interface from `/proc/net/dev`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetDevCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
}

/// Parses `/proc/net/dev`. A line that does not parse is skipped and
/// reported, so one odd interface does not hide all the others.
pub fn parse_net_dev(text: &str) -> (Vec<(String, NetDevCounters)>, Vec<ParseError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for line in text.lines() {
        // The two header lines contain '|'; data lines are "name: numbers".
        if line.contains('|') {
            continue;
        }
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let nums: Result<Vec<u64>, _> = rest.split_ascii_whitespace().map(str::parse).collect();
        match nums {
            Ok(n) if n.len() >= 16 && !name.is_empty() => out.push((
                name.to_string(),
                NetDevCounters {
                    rx_bytes: n[0],
                    rx_packets: n[1],
                    rx_errors: n[2],
                    rx_drops: n[3],
                    tx_bytes: n[8],
                    tx_packets: n[9],
                    tx_errors: n[10],
                    tx_drops: n[11],
                },
            )),
            _ => errors.push(ParseError::new(
                "net/dev",
                format!("unparsable line for interface {name:?}"),
            )),
        }
    }
    (out, errors)
}

/// One line of `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
}

pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_ascii_whitespace();
            Some(Mount {
                device: unescape_octal(f.next()?),
                mountpoint: unescape_octal(f.next()?),
                fstype: f.next()?.to_string(),
            })
        })
        .collect()
}

/// The mount whose mountpoint is the longest prefix of `path`: the
/// filesystem `path` lives on.
pub fn mount_for<'m>(mounts: &'m [Mount], path: &str) -> Option<&'m Mount> {
    mounts
        .iter()
        .filter(|m| {
            m.mountpoint == "/"
                || path == m.mountpoint
                || path
                    .strip_prefix(m.mountpoint.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
        // Later lines shadow earlier ones on the same mountpoint.
        .enumerate()
        .max_by_key(|(i, m)| (m.mountpoint.len(), *i))
        .map(|(_, m)| m)
}

/// The kernel writes space, tab, newline and backslash in mount paths as
/// `\040`-style octal escapes.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `some avg10` figure of `/proc/pressure/cpu`, as a ratio: the share
/// of the last ten seconds in which some task waited for a CPU.
pub fn parse_pressure_some_avg10(text: &str) -> Result<f64, ParseError> {
    let line = text
        .lines()
        .find(|l| l.starts_with("some "))
        .ok_or_else(|| ParseError::new("pressure", "no \"some\" line"))?;
    line.split_ascii_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && (0.0..=100.0).contains(v))
        .map(|pct| pct / 100.0)
        .ok_or_else(|| ParseError::new("pressure", "bad avg10 value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_total_and_cores() {
        let text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 60 0 30 400 10 0 0 0 0 0\ncpu1 40 0 20 400 40 0 0 0 0 0\nintr 1 2 3\nctxt 5\n";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.total.total(), 1000);
        assert_eq!(s.total.idle_all(), 850);
        assert_eq!(s.cpus.len(), 2);
        assert_eq!(s.cpus[1].0, 1);
        assert_eq!(s.cpus[1].1.iowait, 40);
    }

    #[test]
    fn stat_rejects_garbage() {
        for bad in [
            "",
            "intr 1\n",
            "cpu a b c d\n",
            "cpu 1 2\n",
            "cpu 1 2 3 4\ncpuX 1 2 3 4\n",
        ] {
            assert!(parse_stat(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn usage_is_busy_share_and_none_when_undefined() {
        let a = CpuTimes {
            user: 100,
            idle: 900,
            ..Default::default()
        };
        let b = CpuTimes {
            user: 175,
            idle: 925,
            ..Default::default()
        };
        assert_eq!(b.usage_since(&a), Some(0.75));
        assert_eq!(a.usage_since(&a), None, "no time passed");
        assert_eq!(a.usage_since(&b), None, "counters went backwards");
        let iow = CpuTimes {
            user: 100,
            idle: 850,
            iowait: 50,
            ..Default::default()
        };
        let iow2 = CpuTimes {
            user: 100,
            idle: 850,
            iowait: 150,
            ..Default::default()
        };
        assert_eq!(iow2.usage_since(&iow), Some(0.0), "iowait is idle time");
    }

    #[test]
    fn meminfo_used_is_total_minus_available() {
        let text = "MemTotal:       16384 kB\nMemFree:         1024 kB\nMemAvailable:    8192 kB\nBuffers:          512 kB\nCached:          4096 kB\nSwapTotal:       2048 kB\nSwapFree:        1024 kB\nHugePages_Total:       0\n";
        let m = parse_meminfo(text).unwrap();
        assert_eq!(m.total, 16384 * 1024);
        assert_eq!(m.used(), 8192 * 1024);
        assert_eq!(m.swap_used(), 1024 * 1024);
    }

    #[test]
    fn meminfo_without_memavailable_estimates_it() {
        let m = parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n").unwrap();
        assert_eq!(m.available, 400 * 1024);
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
    }

    #[test]
    fn loadavg_and_uptime() {
        assert_eq!(
            parse_loadavg("0.52 1.00 12.25 2/345 6789\n").unwrap(),
            [0.52, 1.0, 12.25]
        );
        assert!(parse_loadavg("0.5 x 1\n").is_err());
        assert!(parse_loadavg("-1 0 0 1/1 1\n").is_err());
        assert_eq!(parse_uptime("350735.47 234388.90\n").unwrap(), 350735.47);
        assert!(parse_uptime("").is_err());
    }

    #[test]
    fn net_dev_reads_both_directions_and_skips_bad_lines() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0\n  eno1: 5000 50 1 2 0 0 0 3 7000 70 4 5 0 0 0 0\n  bad0: 1 2 3\neth1:9 1 0 0 0 0 0 0 8 1 0 0 0 0 0 0\n";
        let (ifs, errs) = parse_net_dev(text);
        assert_eq!(errs.len(), 1);
        assert_eq!(ifs.len(), 3);
        let eno1 = ifs[1].1;
        assert_eq!(ifs[1].0, "eno1");
        assert_eq!(
            (eno1.rx_bytes, eno1.rx_packets, eno1.rx_errors, eno1.rx_drops),
            (5000, 50, 1, 2)
        );
        assert_eq!(
            (eno1.tx_bytes, eno1.tx_packets, eno1.tx_errors, eno1.tx_drops),
            (7000, 70, 4, 5)
        );
        assert_eq!(ifs[2].0, "eth1", "old kernels print no space after the colon");
        assert_eq!(ifs[2].1.rx_bytes, 9);
    }

    #[test]
    fn mounts_unescape_and_longest_prefix_wins() {
        let text = "/dev/vda1 / ext4 rw 0 0\n/dev/vdb1 /var/bigbluebutton xfs rw 0 0\n/dev/vdc1 /mnt/my\\040disk ext4 rw 0 0\n";
        let m = parse_mounts(text);
        assert_eq!(m[2].mountpoint, "/mnt/my disk");
        assert_eq!(
            mount_for(&m, "/var/bigbluebutton/published").unwrap().device,
            "/dev/vdb1"
        );
        assert_eq!(mount_for(&m, "/var/bigbluebutton").unwrap().device, "/dev/vdb1");
        assert_eq!(mount_for(&m, "/var/bigbluebuttonx").unwrap().device, "/dev/vda1");
        assert_eq!(mount_for(&m, "/").unwrap().device, "/dev/vda1");
    }

    #[test]
    fn pressure_avg10_is_a_ratio() {
        let t = "some avg10=12.50 avg60=1.00 avg300=0.00 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_pressure_some_avg10(t).unwrap(), 0.125);
        assert!(parse_pressure_some_avg10("full avg10=1\n").is_err());
    }
}
