//! The console screen (tty1 and the serial port): what a local support
//! person needs right after power-on, in plain text: node, firmware,
//! addresses with interface and MAC, the admin URL, the certificate
//! fingerprint to compare with the browser's, the one-time setup code
//! while setup is pending, enrollment state and a one-line health.
//!
//! [`render`] is pure; the caller gathers the facts (the supervisor's
//! control socket, the kernel's interface list).

use std::fmt::Write;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The supervisor's part of the screen, from `GET /v1/console`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    pub node: String,
    pub version: String,
    pub health: String,
    pub summary: String,
    /// Every reason the light is not green, worst first.
    #[serde(default)]
    pub reasons: Vec<String>,
    pub fingerprint: String,
    pub setup_code: Option<String>,
    pub enrollment: String,
    pub admin_port: u16,
    /// The admin server's address when it listens on one address only
    /// (`[admin] listen`), else every address of the box serves it.
    #[serde(default)]
    pub admin_ip: Option<IpAddr>,
}

/// A network interface with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub mac: Option<String>,
    pub up: bool,
    /// (address, prefix length)
    pub addrs: Vec<(IpAddr, u8)>,
}

fn url(addr: &IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("https://{a}:{port}/"),
        IpAddr::V6(a) => format!("https://[{a}]:{port}/"),
    }
}

/// Addresses a browser on the local network can use: not loopback, not
/// link-local IPv6 (which would need a zone).
fn reachable(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => !v.is_loopback() && !v.is_unspecified(),
        IpAddr::V6(v) => !v.is_loopback() && !v.is_unspecified() && (v.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// A QR code of `text` in Unicode half blocks, light on dark (for a
/// console with a dark background), with its quiet zone.
pub fn qr(text: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// The whole screen. `info` is `None` when the supervisor does not answer.
pub fn render(
    info: Option<&Info>,
    node_fallback: &str,
    version: &str,
    ifaces: &[Iface],
    error: Option<&str>,
) -> String {
    render_with(info, node_fallback, version, ifaces, error, false)
}

/// [`render`], with a QR code of the admin URL at the end when `with_qr`
/// (the screen has room; a serial terminal of 24 lines does not).
pub fn render_with(
    info: Option<&Info>,
    node_fallback: &str,
    version: &str,
    ifaces: &[Iface],
    error: Option<&str>,
    with_qr: bool,
) -> String {
    let mut o = String::new();
    let node = info.map(|i| i.node.as_str()).unwrap_or(node_fallback);
    let _ = writeln!(o, "City node {node}    firmware {version}");
    let _ = writeln!(o, "{}", "=".repeat(64));
    match info {
        Some(i) if i.reasons.is_empty() => {
            let _ = writeln!(o, "Health       {}", i.summary);
        }
        // The support person sees every reason, not only the worst.
        Some(i) => {
            let _ = writeln!(o, "Health       {}", i.health);
            const SHOWN: usize = 6;
            for r in i.reasons.iter().take(SHOWN) {
                let _ = writeln!(o, "  - {r}");
            }
            if i.reasons.len() > SHOWN {
                let _ = writeln!(o, "  (+{} more on the admin page)", i.reasons.len() - SHOWN);
            }
        }
        None => {
            let _ = writeln!(
                o,
                "Health       the supervisor is not running ({})",
                error.unwrap_or("no answer")
            );
        }
    }
    let port = info.map(|i| i.admin_port).unwrap_or(8443);
    let only = info.and_then(|i| i.admin_ip);
    let addrs: Vec<&IpAddr> = match &only {
        Some(ip) => vec![ip],
        None => ifaces
            .iter()
            .filter(|i| i.up)
            .flat_map(|i| i.addrs.iter().map(|(a, _)| a))
            .filter(|a| reachable(a))
            .collect(),
    };
    if addrs.is_empty() {
        let _ = writeln!(
            o,
            "Admin page   no network address yet: check the cable and that DHCP is offered"
        );
    } else {
        for (n, a) in addrs.iter().enumerate() {
            let label = if n == 0 { "Admin page" } else { "" };
            let _ = writeln!(o, "{label:<12} {}", url(a, port));
        }
    }
    for i in ifaces.iter().filter(|i| i.name != "lo") {
        let addrs: Vec<String> = i.addrs.iter().map(|(a, p)| format!("{a}/{p}")).collect();
        let _ = writeln!(
            o,
            "Network      {} {} {} {}",
            i.name,
            i.mac.as_deref().unwrap_or("-"),
            if i.up { "up" } else { "down" },
            if addrs.is_empty() {
                "no address".to_string()
            } else {
                addrs.join(" ")
            }
        );
    }
    if let Some(i) = info {
        let _ = writeln!(o, "Certificate  SHA-256 fingerprint (compare with the browser's):");
        let pairs: Vec<&str> = i.fingerprint.split(':').collect();
        for chunk in pairs.chunks(8) {
            let _ = writeln!(o, "             {}", chunk.join(":"));
        }
        match &i.setup_code {
            Some(code) => {
                let _ = writeln!(o, "Setup code   {code}");
                let _ = writeln!(
                    o,
                    "             type it on the admin page to choose the passwords; it works once"
                );
            }
            None => {
                let _ = writeln!(o, "Setup        done");
            }
        }
        let _ = writeln!(o, "Enrollment   {}", i.enrollment);
    }
    if with_qr {
        if let Some(code) = addrs.first().and_then(|a| qr(&url(a, port))) {
            let _ = writeln!(o, "Scan to open the admin page:");
            o.push_str(&code);
            o.push('\n');
        }
    }
    o
}

/// The machine's interfaces from the kernel, MACs from `<sysfs>/class/net`.
pub fn interfaces(sysfs: &Path) -> Vec<Iface> {
    let mut out: Vec<Iface> = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for a in addrs {
        let name = a.interface_name.clone();
        let idx = match out.iter().position(|i| i.name == name) {
            Some(i) => i,
            None => {
                let mac = std::fs::read_to_string(sysfs.join("class/net").join(&name).join("address"))
                    .ok()
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty() && m != "00:00:00:00:00:00");
                out.push(Iface {
                    name: name.clone(),
                    mac,
                    up: a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
                        && a.flags.contains(nix::net::if_::InterfaceFlags::IFF_RUNNING),
                    addrs: vec![],
                });
                out.len() - 1
            }
        };
        let (Some(addr), mask) = (a.address, a.netmask) else {
            continue;
        };
        let prefix = |m: Option<nix::sys::socket::SockaddrStorage>| -> u8 {
            match m {
                Some(m) => {
                    if let Some(v4) = m.as_sockaddr_in() {
                        u32::from(v4.ip()).count_ones() as u8
                    } else if let Some(v6) = m.as_sockaddr_in6() {
                        v6.ip().octets().iter().map(|b| b.count_ones() as u8).sum()
                    } else {
                        0
                    }
                }
                None => 0,
            }
        };
        if let Some(v4) = addr.as_sockaddr_in() {
            out[idx].addrs.push((IpAddr::V4(v4.ip()), prefix(mask)));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out[idx].addrs.push((IpAddr::V6(v6.ip()), prefix(mask)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(code: Option<&str>) -> Info {
        Info {
            node: "amsterdam-1".into(),
            version: "0.1.0".into(),
            health: "ok".into(),
            summary: "ok".into(),
            reasons: vec![],
            fingerprint: (0..32).map(|i| format!("{i:02X}")).collect::<Vec<_>>().join(":"),
            setup_code: code.map(str::to_string),
            enrollment: "not enrolled with global ops".into(),
            admin_port: 8443,
            admin_ip: None,
        }
    }

    #[test]
    fn every_reason_is_on_the_screen() {
        let mut i = info(None);
        i.health = "critical".into();
        i.reasons = (1..=8).map(|n| format!("reason {n}")).collect();
        let screen = render(Some(&i), "x", "0.1.0", &[], None);
        assert!(
            screen.contains("Health       critical\n  - reason 1\n  - reason 2\n"),
            "{screen}"
        );
        assert!(
            screen.contains("  - reason 6\n  (+2 more on the admin page)"),
            "{screen}"
        );
        assert!(!screen.contains("reason 7"));
    }

    #[test]
    fn screen_shows_what_the_support_person_needs() {
        let ifaces = vec![
            Iface {
                name: "lo".into(),
                mac: None,
                up: true,
                addrs: vec![("127.0.0.1".parse().unwrap(), 8)],
            },
            Iface {
                name: "eno1".into(),
                mac: Some("00:0a:f7:a1:b2:c0".into()),
                up: true,
                addrs: vec![
                    ("192.0.2.20".parse().unwrap(), 24),
                    ("fe80::1".parse().unwrap(), 64),
                    ("2001:db8::20".parse().unwrap(), 64),
                ],
            },
        ];
        let s = render(Some(&info(Some("ABCDE-FGHJK"))), "x", "0.1.0", &ifaces, None);
        assert!(s.starts_with("City node amsterdam-1    firmware 0.1.0\n"), "{s}");
        assert!(
            s.contains("Admin page   https://192.0.2.20:8443/\n             https://[2001:db8::20]:8443/\n"),
            "{s}"
        );
        assert!(!s.contains("fe80::1]:8443"), "link-local is no URL");
        assert!(
            s.contains("Network      eno1 00:0a:f7:a1:b2:c0 up 192.0.2.20/24 fe80::1/64 2001:db8::20/64"),
            "{s}"
        );
        assert!(
            s.contains("             00:01:02:03:04:05:06:07\n             08:09:0A:0B"),
            "{s}"
        );
        assert!(s.contains("Setup code   ABCDE-FGHJK"));
        let done = render(Some(&info(None)), "x", "0.1.0", &ifaces, None);
        assert!(done.contains("Setup        done") && !done.contains("Setup code"));
        let local = Info {
            admin_ip: Some("127.0.0.1".parse().unwrap()),
            ..info(None)
        };
        let l = render(Some(&local), "x", "0.1.0", &ifaces, None);
        assert!(
            l.contains("Admin page   https://127.0.0.1:8443/\n") && !l.contains("https://192.0.2.20"),
            "{l}"
        );
        let with = render_with(Some(&info(None)), "x", "0.1.0", &ifaces, None, true);
        assert!(
            with.contains("Scan to open the admin page:\n") && with.contains('\u{2588}'),
            "a QR code in half blocks"
        );
        assert!(qr("https://192.0.2.20:8443/").unwrap().lines().count() >= 15);
        let down = render(None, "fallback-name", "0.1.0", &[], Some("connection refused"));
        assert!(
            down.contains("City node fallback-name")
                && down.contains("the supervisor is not running (connection refused)")
        );
        assert!(down.contains("no network address yet: check the cable and that DHCP is offered"));
    }
}
