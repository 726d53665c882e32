#!/usr/bin/env python3
"""Read a recipe for image/build: the parts the image needs, checked once.

    recipe.py vars RECIPE.toml       shell assignments (quoted) for image/build
    recipe.py polkit RECIPE.toml     the polkit rule letting the supervisor
                                     manage the recipe's units, and only those
    recipe.py nftables RECIPE.toml   the firewall (/etc/nftables.conf)
    recipe.py sources RECIPE.toml    one mmdebstrap source line per line
    recipe.py plan RECIPE.toml       the whole build plan, for people; touches
                                     no network and needs no root

The supervisor parses the whole recipe itself; this script reads only what
the image build needs ([image], [firewall], every [[service]] unit) and fails
loudly, naming the file and key, on anything it cannot use, so that a typo
breaks the build rather than the booted image.

Everything here is pure: it reads the recipe and the repository, never the
network, so `image/build RECIPE --plan` works on any machine.
"""

import json
import re
import shlex
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Debian policy 5.6.1: lowercase alphanumerics and + - . , at least two long.
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# systemd.unit(5) names, restricted to the unit types a recipe can manage.
UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(service|socket|target|timer|path|mount)$")
RECIPE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
SUITE_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]*$")
URI_RE = re.compile(r"^https?://[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]+$")
# Where the supervisor's BBB API gateway listens in every image (lib/stage2.sh
# writes it; each recipe's overlay points nginx at it).
GATEWAY_LISTEN = "127.0.0.1:8091"

IMAGE_KEYS = {"packages", "overlay", "test_ssh", "slot_mb", "base", "source"}
BASE_KEYS = {"distribution", "suite", "keyring"}
SOURCE_KEYS = {"name", "uri", "suites", "components", "key_url", "key_file"}
FIREWALL_KEYS = {"tcp", "udp"}

# What systemd may be asked to do with a recipe unit. systemd passes these
# as polkit's "verb" detail for org.freedesktop.systemd1.manage-units.
VERBS = ["start", "stop", "restart", "reset-failed"]
# The appliance's own units the supervisor may start (and nothing else):
# writing an OS update to the other slot, and the reboot into it.
OS_UNITS = ["appliance-os-update.service", "appliance-os-reboot.service"]
# SSH for operators: the supervisor starts and stops sshd as the admin
# page's switch says.
SSH_UNIT = "ssh.service"

# The base every node needs, per distribution: init, D-Bus and polkit for
# the supervisor, DNS and time (update freshness needs a clock), the kernel
# and its initramfs (with busybox for the verity and data-partition scripts),
# dm-verity's veritysetup, the tools that grow the data partition, the
# firewall, and what talking to ops and debugging need. Package names differ
# between the two; configuration is stage 2's, never stage 1's.
BASE_PACKAGES = {
    "debian": [
        "systemd", "systemd-sysv", "udev", "dbus", "polkitd", "libpam-systemd",
        "systemd-resolved", "systemd-timesyncd",
        # systemd-bless-boot (boot counting) and bootctl.
        "systemd-boot",
        "linux-image-amd64", "initramfs-tools", "busybox", "zstd",
        "cryptsetup-bin", "e2fsprogs", "fdisk", "nftables",
        # fsck.vfat: systemd-fsck repairs the ESP after a power cut.
        "dosfstools",
        "ca-certificates", "curl", "iproute2", "procps", "netbase",
    ],
    "ubuntu": [
        # jammy: resolved is part of systemd; polkit is policykit-1 (0.105).
        "systemd", "systemd-sysv", "udev", "dbus", "policykit-1", "libpam-systemd",
        "systemd-timesyncd",
        "linux-image-generic", "initramfs-tools", "busybox-initramfs", "zstd",
        "cryptsetup-bin", "e2fsprogs", "fdisk", "nftables", "dosfstools",
        "ca-certificates", "curl", "iproute2", "procps", "netbase",
    ],
}
# Keyrings the build host has from its own packages (Debian's own archive
# key comes with every Debian host).
HOST_KEYRINGS = {"debian": "/usr/share/keyrings/debian-archive-keyring.gpg"}

# The disk, in MiB; see image/lib/disk.sh.
ESP_MB = 256
DATA_MB_DEFAULT_FREE = 1024
SLOT_MB_DEFAULT = 1024
# The admin page; always open, whatever the recipe says (the supervisor's
# [admin] listen in the image).
ADMIN_PORT = 8443


def fail(path, key, what):
    sys.exit(f"{path}: {key}: {what}")


def str_list(path, key, value, pattern=None, what="strings"):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        fail(path, key, f"must be a list of {what}")
    if pattern:
        for v in value:
            if not pattern.match(v):
                fail(path, key, f"{v!r} is not valid")
    return value


def parse_ports(path, key, value):
    """[80, 443, "16384-32768"] -> [(80, 80), (443, 443), (16384, 32768)]."""
    if not isinstance(value, list):
        fail(path, key, 'must be a list of ports (443) or ranges ("16384-32768")')
    out = []
    for v in value:
        if isinstance(v, bool):
            fail(path, key, f"{v!r} is not a port")
        if isinstance(v, int):
            lo = hi = v
        elif isinstance(v, str) and re.fullmatch(r"\d{1,5}-\d{1,5}", v):
            lo, hi = (int(x) for x in v.split("-"))
        else:
            fail(path, key, f"{v!r} is not a port (443) or a range (\"16384-32768\")")
        if not (1 <= lo <= hi <= 65535):
            fail(path, key, f"{v!r} is not within 1-65535 (low to high)")
        out.append((lo, hi))
    return sorted(set(out))


def load_sources(path, image, distribution):
    sources = image.get("source", [])
    if not isinstance(sources, list) or not sources:
        fail(path, "image.source", "needs at least one [[image.source]] (the base system's archive)")
    out = []
    for i, src in enumerate(sources):
        key = f"image.source[{i}]"
        if not isinstance(src, dict):
            fail(path, key, "must be a table")
        unknown = sorted(set(src) - SOURCE_KEYS)
        if unknown:
            fail(path, f"{key}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(SOURCE_KEYS))})")
        uri = src.get("uri")
        if not isinstance(uri, str) or not URI_RE.match(uri):
            fail(path, f"{key}.uri", f"{uri!r} is not an http(s) URI")
        suites = str_list(path, f"{key}.suites", src.get("suites"), SUITE_RE, "suite names")
        components = str_list(path, f"{key}.components", src.get("components", ["main"]),
                              SUITE_RE, "component names")
        if not suites or not components:
            fail(path, key, "needs suites and components")
        name = src.get("name", "base" if i == 0 else f"source{i}")
        if not isinstance(name, str) or not RECIPE_NAME_RE.match(name):
            fail(path, f"{key}.name", f"{name!r} must be a short lowercase name")
        key_url, key_file = src.get("key_url"), src.get("key_file")
        if key_url is not None and (not isinstance(key_url, str) or not URI_RE.match(key_url)):
            fail(path, f"{key}.key_url", f"{key_url!r} is not an http(s) URI")
        if key_file is not None:
            if not isinstance(key_file, str) or Path(key_file).is_absolute() or ".." in Path(key_file).parts:
                fail(path, f"{key}.key_file", "must be a path relative to the repository, without '..'")
        if key_file is None and distribution not in HOST_KEYRINGS:
            fail(path, f"{key}.key_file",
                 f"a {distribution} source needs its signing key pinned in the repository (key_file)")
        out.append({"name": name, "uri": uri, "suites": suites, "components": components,
                    "key_url": key_url, "key_file": key_file})
    return out


def load(path):
    try:
        with open(path, "rb") as f:
            recipe = tomllib.load(f)
    except OSError as e:
        sys.exit(f"{path}: cannot read: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        sys.exit(f"{path}: invalid TOML: {e}")

    name = recipe.get("name")
    if not isinstance(name, str) or not RECIPE_NAME_RE.match(name):
        fail(path, "name", "must be a lowercase name like \"lab\" or \"bbb-3.0\"")

    image = recipe.get("image", {})
    if not isinstance(image, dict):
        fail(path, "image", "must be a table")
    unknown = sorted(set(image) - IMAGE_KEYS)
    if unknown:
        fail(path, f"image.{unknown[0]}", f"unknown key (known: {', '.join(sorted(IMAGE_KEYS))})")

    base = image.get("base")
    if not isinstance(base, dict):
        fail(path, "image.base", "must say which system the image is built on "
             "(distribution = \"debian\" or \"ubuntu\", suite = ...)")
    unknown = sorted(set(base) - BASE_KEYS)
    if unknown:
        fail(path, f"image.base.{unknown[0]}", f"unknown key (known: {', '.join(sorted(BASE_KEYS))})")
    distribution = base.get("distribution")
    if distribution not in BASE_PACKAGES:
        fail(path, "image.base.distribution", f"{distribution!r}: must be one of {', '.join(BASE_PACKAGES)}")
    suite = base.get("suite")
    if not isinstance(suite, str) or not SUITE_RE.match(suite):
        fail(path, "image.base.suite", f"{suite!r} is not a suite name (\"bookworm\", \"jammy\")")

    packages = str_list(path, "image.packages", image.get("packages", []), PACKAGE_RE, "Debian package names")

    overlay = image.get("overlay", "")
    if not isinstance(overlay, str):
        fail(path, "image.overlay", "must be a path relative to the repository")
    if overlay and (Path(overlay).is_absolute() or ".." in Path(overlay).parts):
        fail(path, "image.overlay", f"{overlay!r} must be relative to the repository, without '..'")

    test_ssh = image.get("test_ssh", False)
    if not isinstance(test_ssh, bool):
        fail(path, "image.test_ssh", "must be true or false")

    slot_mb = image.get("slot_mb", SLOT_MB_DEFAULT)
    if isinstance(slot_mb, bool) or not isinstance(slot_mb, int) or not 256 <= slot_mb <= 65536:
        fail(path, "image.slot_mb", "must be a size in MiB between 256 and 65536")

    sources = load_sources(path, image, distribution)

    firewall = recipe.get("firewall", {})
    if not isinstance(firewall, dict):
        fail(path, "firewall", "must be a table")
    unknown = sorted(set(firewall) - FIREWALL_KEYS)
    if unknown:
        fail(path, f"firewall.{unknown[0]}", f"unknown key (known: {', '.join(sorted(FIREWALL_KEYS))})")
    tcp = parse_ports(path, "firewall.tcp", firewall.get("tcp", []))
    udp = parse_ports(path, "firewall.udp", firewall.get("udp", []))

    services = recipe.get("service", [])
    if not isinstance(services, list):
        fail(path, "service", "must be an array of tables ([[service]])")
    units = []
    for i, service in enumerate(services):
        unit = service.get("unit") if isinstance(service, dict) else None
        if not isinstance(unit, str) or not UNIT_RE.match(unit):
            fail(path, f"service[{i}].unit", f"{unit!r} is not a systemd unit name")
        if unit not in units:
            units.append(unit)

    # openssh-server on every image: off until an operator turns it on
    # with a key on the admin page (docs/image.md, "SSH for operators").
    all_packages = sorted(set(BASE_PACKAGES[distribution]) | set(packages) | {"openssh-server"})
    return {"name": name, "description": recipe.get("description", ""),
            "distribution": distribution, "suite": suite, "sources": sources,
            "packages": packages, "all_packages": all_packages, "overlay": overlay,
            "test_ssh": test_ssh, "slot_mb": slot_mb, "units": units,
            "tcp": tcp, "udp": udp}


def open_tcp(r):
    """The TCP ports the firewall opens: the recipe's, the admin page, and
    SSH on a test image (the only way into it). On other images SSH's port
    is in the set `ssh`, which sshd's unit fills and empties as it starts
    and stops."""
    extra = [(ADMIN_PORT, ADMIN_PORT)] + ([(22, 22)] if r["test_ssh"] else [])
    return sorted(set(r["tcp"]) | set(extra))


def ports_text(ports):
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ports)


def shell_vars(r):
    # Lists become space-separated words: every element was checked above
    # to contain no whitespace or shell metacharacters that matter.
    values = {
        "RECIPE_NAME": r["name"],
        "RECIPE_DISTRIBUTION": r["distribution"],
        "RECIPE_SUITE": r["suite"],
        "RECIPE_PACKAGES": " ".join(r["packages"]),
        "RECIPE_ALL_PACKAGES": " ".join(r["all_packages"]),
        "RECIPE_OVERLAY": r["overlay"],
        "RECIPE_TEST_SSH": "1" if r["test_ssh"] else "0",
        "RECIPE_UNITS": " ".join(r["units"]),
        "RECIPE_SLOT_MB": str(r["slot_mb"]),
        "RECIPE_KEY_FILES": " ".join(s["key_file"] for s in r["sources"] if s["key_file"]),
        "GATEWAY_LISTEN": GATEWAY_LISTEN,
    }
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def source_lines(r, mirror_map):
    """One-line sources for mmdebstrap. mirror_map replaces a URI prefix
    (APPLIANCE_DEBIAN_MIRROR for a local mirror)."""
    lines = []
    for s in r["sources"]:
        uri = s["uri"]
        for old, new in mirror_map:
            if new and uri.rstrip("/") == old.rstrip("/"):
                uri = new
        signed = ""
        if s["key_file"]:
            signed = f"[signed-by={REPO_ROOT / s['key_file']}] "
        for suite in s["suites"]:
            lines.append(f"deb {signed}{uri} {suite} {' '.join(s['components'])}")
    return lines


def polkit_rule(r, source):
    # JSON literals are valid JavaScript, so the lists need no hand quoting.
    return f"""\
// Generated by image/build from {source}: do not edit, edit the recipe.
//
// The supervisor runs as the unprivileged user "appliance" and manages the
// recipe's services through systemd's D-Bus API. This rule lets it start,
// stop, restart and reset-failed exactly the recipe's units; anything else
// (other units, enable/disable, reload, kill, daemon-reload, other users)
// falls through to polkit's defaults, which deny a non-interactive caller.
// It may also start (only start) the units that write an OS update to the
// other slot and reboot into it: the supervisor decides when. And it may
// start and stop sshd, which an operator turns on and off on the admin page.
polkit.addRule(function(action, subject) {{
    if (action.id !== "org.freedesktop.systemd1.manage-units" ||
        subject.user !== "appliance") {{
        return polkit.Result.NOT_HANDLED;
    }}
    var units = {json.dumps(r["units"])};
    var verbs = {json.dumps(VERBS)};
    var osUnits = {json.dumps(OS_UNITS)};
    var unit = action.lookup("unit");
    var verb = action.lookup("verb");
    if (units.indexOf(unit) >= 0 && verbs.indexOf(verb) >= 0) {{
        return polkit.Result.YES;
    }}
    if (osUnits.indexOf(unit) >= 0 && verb === "start") {{
        return polkit.Result.YES;
    }}
    if (unit === {json.dumps(SSH_UNIT)} && (verb === "start" || verb === "stop")) {{
        return polkit.Result.YES;
    }}
    return polkit.Result.NOT_HANDLED;
}});
"""


def nftables(r, source):
    def nft_set(ports):
        return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ports)

    tcp, udp = open_tcp(r), r["udp"]
    rules = [f"        tcp dport {{ {nft_set(tcp)} }} accept"]
    if udp:
        rules.append(f"        udp dport {{ {nft_set(udp)} }} accept")
    rules = "\n".join(rules)
    return f"""\
#!/usr/sbin/nft -f
# Generated by image/build from {source}: do not edit, edit the recipe's
# [firewall]. Incoming traffic is dropped unless the recipe declares its
# port; the admin page (TCP {ADMIN_PORT}) is always open{", and SSH (TCP 22) on this test image" if r["test_ssh"] else ""}.
# The set "ssh" holds TCP 22 only while sshd runs, i.e. while an operator
# has turned SSH on (its unit adds and removes the element).
# Outgoing traffic (ops, updates, time, DNS) is not restricted.
flush ruleset

table inet appliance {{
    set ssh {{
        type inet_service
    }}

    chain input {{
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        ct state invalid drop
        iif lo accept
        # Neighbour discovery, path MTU and ping: IPv6 does not work without
        # them, and they are how a city's network staff check a box is there.
        meta l4proto {{ icmp, ipv6-icmp }} accept
        # DHCP replies (v4 and v6), which come before any connection exists.
        udp sport 67 udp dport 68 accept
        udp sport 547 udp dport 546 accept
        tcp dport @ssh accept
{rules}
    }}

    chain forward {{
        type filter hook forward priority filter; policy drop;
    }}

    chain output {{
        type filter hook output priority filter; policy accept;
    }}
}}
"""


def key_status(s):
    if not s["key_file"]:
        return f"host keyring {HOST_KEYRINGS.get('debian')} (debian-archive-keyring)"
    f = REPO_ROOT / s["key_file"]
    origin = f" (from {s['key_url']})" if s["key_url"] else ""
    if f.is_file():
        return f"{s['key_file']}{origin}, pinned in the repository"
    return (f"{s['key_file']}{origin}: NOT YET IN THE REPOSITORY. A build refuses to run until "
            "it is: fetch it once on a machine that reaches the URL, check its fingerprint "
            "against the publisher's, and commit it")


def plan(r, path):
    slot = r["slot_mb"]
    out = []
    w = out.append
    w(f"Build plan for recipes/{Path(path).name}: {r['name']} ({r['description']})")
    w("")
    w(f"Base system   {r['distribution']} {r['suite']} (mmdebstrap, variant minbase, no Recommends)")
    w("")
    w("Sources")
    for s in r["sources"]:
        for suite in s["suites"]:
            w(f"  {s['name']:<16} deb {s['uri']} {suite} {' '.join(s['components'])}")
    w("")
    w("Signing keys")
    for s in r["sources"]:
        w(f"  {s['name']:<16} {key_status(s)}")
    w("")
    w(f"Packages ({len(r['all_packages'])}: the base for {r['distribution']}, then the recipe's)")
    base = set(BASE_PACKAGES[r["distribution"]])
    w("  base:   " + " ".join(p for p in r["all_packages"] if p in base))
    w("  recipe: " + (" ".join(p for p in r["all_packages"] if p not in base) or "(none)"))
    w("")
    w("Disk (GPT, UEFI, systemd-boot with boot counting)")
    w(f"  1 esp      {ESP_MB:>6} MiB  FAT32: systemd-boot, per-slot kernel, initrd and boot entry")
    w(f"  2 root-a   {slot:>6} MiB  squashfs root + dm-verity hash tree (read-only; root hash in the boot entry)")
    w(f"  3 root-b   {slot:>6} MiB  the other slot, written by OS updates")
    w(f"  4 data     {DATA_MB_DEFAULT_FREE:>6} MiB+ ext4 /var: state, recordings, logs; grown to fill the disk at first boot")
    w("")
    w("Files over the root (image.overlay)")
    overlay = REPO_ROOT / r["overlay"] if r["overlay"] else None
    files = sorted(p for p in overlay.rglob("*") if p.is_file()) if overlay and overlay.is_dir() else []
    for f in files:
        w(f"  /{f.relative_to(overlay)}")
    if not files:
        w("  (none)")
    w(f"  /etc/appliance/appliance.toml: the supervisor's config, BBB API gateway on {GATEWAY_LISTEN}")
    w("")
    w("Units enabled")
    own = ["appliance.service", "appliance-firstboot.service", "appliance-grow-data.service",
           "appliance-os-boot.service", "appliance-os-healthy.service (before boot-complete.target)",
           "appliance-hw-boot.service (the hardware profile's modules and kernel parameters)",
           "appliance-console@tty1.service",
           "appliance-console@ttyS0.service", "nftables.service", "systemd-networkd.service",
           "systemd-resolved.service" if r["distribution"] == "debian" else "systemd-resolved.service (from systemd)",
           "systemd-timesyncd.service"]
    for u in own:
        w(f"  {u}")
    for u in r["units"]:
        w(f"  {u}  (recipe)")
    if r["test_ssh"]:
        w("  ssh.service  (test image: root by the test key, and operators' keys from the admin page)")
    else:
        w("  ssh.service  (starts only once an operator turns SSH on with a key on the admin page)")
    w("")
    w("Firewall (nftables, inbound policy drop)")
    w(f"  tcp: {ports_text(open_tcp(r))}")
    w(f"  udp: {ports_text(r['udp']) or '(none)'}")
    w("  plus: established/related, loopback, ICMP/ICMPv6, DHCP replies")
    w("")
    w("Secrets: none in the image. BBB secret, TLS key, node key and setup code are made on the box at first boot.")
    if r["distribution"] == "ubuntu":
        w("")
        w("Notes")
        w("  polkit 0.105 (jammy) reads .pkla files, not JavaScript rules: the rule that limits")
        w("  the supervisor to the recipe's units is written as JavaScript and needs polkit >= 0.106;")
        w("  until the image carries a newer polkit, a jammy image grants manage-units by action only.")
    missing = [s for s in r["sources"] if s["key_file"] and not (REPO_ROOT / s["key_file"]).is_file()]
    if missing:
        w("")
        w(f"Not buildable yet: {len(missing)} signing key(s) not in the repository (see Signing keys).")
    return "\n".join(out) + "\n"


def main():
    commands = ("vars", "polkit", "nftables", "sources", "plan")
    if len(sys.argv) < 3 or sys.argv[1] not in commands:
        sys.exit(f"usage: recipe.py {'|'.join(commands)} RECIPE.toml [MIRROR_FROM=MIRROR_TO ...]")
    path = sys.argv[2]
    recipe = load(path)
    source = f"recipes/{Path(path).name}"
    cmd = sys.argv[1]
    if cmd == "vars":
        sys.stdout.write(shell_vars(recipe))
    elif cmd == "polkit":
        sys.stdout.write(polkit_rule(recipe, source))
    elif cmd == "nftables":
        sys.stdout.write(nftables(recipe, source))
    elif cmd == "sources":
        mirror_map = [tuple(a.split("=", 1)) for a in sys.argv[3:] if "=" in a]
        sys.stdout.write("".join(line + "\n" for line in source_lines(recipe, mirror_map)))
    else:
        sys.stdout.write(plan(recipe, path))


if __name__ == "__main__":
    main()
