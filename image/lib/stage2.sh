# Stage 2 of image/build: turn the unpacked stage-1 tree into this recipe's
# appliance. Sourced by image/build; runs on every build, so it only copies
# and writes files (plus a few offline tools run in the tree with chroot,
# which need no mounts and start nothing) and takes seconds.
#
# The tree becomes a read-only, verified root (lib/disk.sh): nothing here
# may count on writing below / at run time except under /var (the data
# partition), /run and /tmp. Files a box makes for itself (machine-id,
# secrets, SSH host keys) live under /var.
#
# Inputs (set by image/build): ROOT (the unpacked tree), REPO_ROOT,
# RECIPE_FILE, RECIPE_NAME, RECIPE_OVERLAY, RECIPE_TEST_SSH, RECIPE_UNITS,
# BIN_DIR, SSH_PUBKEY, NODE_NAME, STAGE1_KEY, OS_VERSION, UPDATE_ROOT,
# UPDATE_SETTINGS, PYTHON.

# in_root CMD...: run a tool of the image inside the tree, offline.
in_root() { chroot "$ROOT" "$@"; }

# enable_units UNIT...: systemctl in a chroot only writes the [Install]
# symlinks under /etc/systemd/system; nothing is started.
enable_units() { in_root systemctl --quiet enable "$@" 2>&1 | sed 's/^/[image]   systemctl: /' >&2; }

stage2_identity() {
    echo "$NODE_NAME" >"$ROOT/etc/hostname"
    cat >"$ROOT/etc/hosts" <<HOSTS
127.0.0.1	localhost
127.0.1.1	$NODE_NAME
::1	localhost ip6-localhost ip6-loopback
HOSTS
    # Empty machine-id (stage 1 left it so): the initramfs binds the box's
    # own, made at its first boot and kept on the data partition
    # (/var/lib/machine-id), over it. systemd-firstboot would wait for
    # answers on tty1 if it ever ran: masked.
    : >"$ROOT/etc/machine-id"
    ln -sf /dev/null "$ROOT/etc/systemd/system/systemd-firstboot.service"
    # Packages are updated by installing a new image, never by apt on the box.
    rm -f "$ROOT"/etc/systemd/system/timers.target.wants/apt-daily{,-upgrade}.timer
}

stage2_boot_config() {
    # / is the verified root slot the initramfs opened (/dev/mapper/root,
    # read-only by construction); /var is the data partition, mounted by
    # the initramfs (it also carries the machine-id); /tmp is memory. The
    # ESP is found and mounted on /efi by systemd-gpt-auto-generator (the
    # disk systemd-boot started from), so no UUID of this build is baked in:
    # the USB installer gives each installed disk its own.
    mkdir -p "$ROOT/efi"
    cat >"$ROOT/etc/fstab" <<'FSTAB'
# Written by image/build. /var (the data partition) is mounted by the
# initramfs, the ESP on /efi by systemd-gpt-auto-generator: docs/image.md.
/dev/mapper/root	/	squashfs	ro	0	0
tmpfs	/tmp	tmpfs	mode=1777,nosuid,nodev,size=20%	0	0
FSTAB

    # The journal goes to the console as well (serial in QEMU, where the
    # e2e test reads it; screen and serial on a box).
    mkdir -p "$ROOT/etc/systemd/journald.conf.d"
    cat >"$ROOT/etc/systemd/journald.conf.d/50-appliance-console.conf" <<'CONF'
# Written by image/build: the journal is also shown on the console.
[Journal]
ForwardToConsole=yes
MaxLevelConsole=info
CONF

    # First boot on a disk larger than the image: the data partition grows
    # to its end (image/lib/grow-data).
    install -D -m 0755 "$REPO_ROOT/image/lib/grow-data" "$ROOT/usr/lib/appliance/grow-data"
    install -m 0644 "$REPO_ROOT/image/units/appliance-grow-data.service" "$ROOT/lib/systemd/system/"
    enable_units appliance-grow-data.service
}

stage2_network() {
    # DHCP on every wired NIC with systemd-networkd, names by systemd-resolved.
    mkdir -p "$ROOT/etc/systemd/network"
    cat >"$ROOT/etc/systemd/network/50-wired-dhcp.network" <<'NET'
# Written by image/build: DHCP on every wired NIC (virtio in QEMU).
[Match]
Type=ether
Name=en* eth*

[Network]
DHCP=yes
NET
    enable_units systemd-networkd.service systemd-resolved.service
    # network-online.target (which appliance.service waits for) is reached
    # as soon as one NIC is up, not when every NIC is: a box with an unplugged
    # second port must not wait two minutes.
    mkdir -p "$ROOT/etc/systemd/system/systemd-networkd-wait-online.service.d"
    cat >"$ROOT/etc/systemd/system/systemd-networkd-wait-online.service.d/50-any.conf" <<'CONF'
# Written by image/build: online when any link is configured, 30 s at most.
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
CONF
}

stage2_supervisor() {
    # The supervisor's user, declared with sysusers.d so systemd would
    # recreate it on a box whose /etc was reset; created now, in the tree.
    mkdir -p "$ROOT/usr/lib/sysusers.d"
    cat >"$ROOT/usr/lib/sysusers.d/appliance.conf" <<'CONF'
# Written by image/build: the supervisor's system user (no login).
u appliance - "City node supervisor" /var/lib/appliance /usr/sbin/nologin
CONF
    in_root systemd-sysusers /usr/lib/sysusers.d/appliance.conf

    install -m 0755 "$BIN_DIR/appliance" "$ROOT/usr/bin/appliance"
    if [[ -x "$BIN_DIR/bbb-standin" ]]; then
        install -m 0755 "$BIN_DIR/bbb-standin" "$ROOT/usr/bin/bbb-standin"
    else
        warn "$BIN_DIR/bbb-standin not found: the image has no BBB API stand-in (bbb-standin.service will be skipped)"
    fi

    install -d -m 0755 "$ROOT/usr/share/appliance/hw-profiles" "$ROOT/usr/share/appliance/recipes"
    install -m 0644 "$REPO_ROOT"/hw-profiles/*.toml "$ROOT/usr/share/appliance/hw-profiles/"
    install -m 0644 "$RECIPE_FILE" "$ROOT/usr/share/appliance/recipes/$RECIPE_NAME.toml"

    install -m 0644 "$REPO_ROOT/image/units/appliance.service" "$ROOT/lib/systemd/system/appliance.service"
    install -m 0644 "$REPO_ROOT/image/units/appliance-rollback.service" "$ROOT/lib/systemd/system/appliance-rollback.service"
    enable_units appliance.service

    # OS updates (docs/image.md): the root unit that writes the other slot,
    # the reboot into it, the check at every boot, and the health gate
    # before boot-complete.target that lets systemd-bless-boot keep a slot.
    local unit
    for unit in appliance-os-update appliance-os-reboot appliance-os-boot appliance-os-healthy; do
        install -m 0644 "$REPO_ROOT/image/units/$unit.service" "$ROOT/lib/systemd/system/$unit.service"
    done
    enable_units appliance-os-boot.service appliance-os-healthy.service

    # The hardware profile's kernel modules and parameters, at every boot.
    install -m 0644 "$REPO_ROOT/image/units/appliance-hw-boot.service" "$ROOT/lib/systemd/system/appliance-hw-boot.service"
    enable_units appliance-hw-boot.service

    # The first release is the image's own supervisor: updates switch
    # releases/current, which the unit runs (docs/updates.md).
    local version
    version="$("$BIN_DIR/appliance" --version | awk '{print $2}')"
    [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "cannot tell the supervisor's version (got \"$version\")"
    install -d -m 0750 "$ROOT/var/lib/appliance" "$ROOT/var/lib/appliance/releases"
    install -d -m 0755 "$ROOT/var/lib/appliance/releases/$version"
    install -m 0755 "$BIN_DIR/appliance" "$ROOT/var/lib/appliance/releases/$version/appliance"
    ln -sfn "$version" "$ROOT/var/lib/appliance/releases/current"
    in_root chown -R appliance:appliance /var/lib/appliance

    # The console screen replaces the login prompt on tty1 and the serial
    # port (the lab image is entered with SSH).
    install -m 0644 "$REPO_ROOT/image/units/appliance-console@.service" "$ROOT/lib/systemd/system/appliance-console@.service"
    in_root systemctl enable appliance-console@tty1.service appliance-console@ttyS0.service
    # Started from a USB stick, the same terminals offer to install first.
    install -m 0644 "$REPO_ROOT/image/units/appliance-installer@.service" "$ROOT/lib/systemd/system/appliance-installer@.service"
    in_root systemctl enable appliance-installer@tty1.service appliance-installer@ttyS0.service
    in_root systemctl mask getty@tty1.service serial-getty@ttyS0.service

    # Polkit: the supervisor may start/stop/restart/reset-failed the recipe's
    # units and nothing else (the rule's own comments say more).
    install -d -m 0755 "$ROOT/etc/polkit-1/rules.d"
    "$PYTHON" "$REPO_ROOT/image/lib/recipe.py" polkit "$RECIPE_FILE" >"$ROOT/etc/polkit-1/rules.d/50-appliance.rules"
    chmod 0644 "$ROOT/etc/polkit-1/rules.d/50-appliance.rules"
}

stage2_config() {
    # No BBB secret is baked into the image: every box makes its own at first
    # boot (appliance-firstboot.service runs `appliance firstboot`, which
    # writes /var/lib/appliance-secrets/bbb-secret and, on a BBB node,
    # replaces the default secret in bbb-web.properties).
    install -d -m 0755 "$ROOT/etc/appliance"
    cat >"$ROOT/usr/lib/tmpfiles.d/appliance.conf" <<'CONF'
# Written by image/build: where a box keeps the secrets it made itself
# (readable by the supervisor's group).
d /var/lib/appliance-secrets 0750 root appliance -
CONF
    install -m 0644 "$REPO_ROOT/image/units/appliance-firstboot.service" "$ROOT/lib/systemd/system/appliance-firstboot.service"
    enable_units appliance-firstboot.service

    # The supervisor rejects unknown keys (exit 2), and a supervisor that
    # exits 2 is not restarted: keep this in step with its config.
    cat >"$ROOT/etc/appliance/appliance.toml" <<CONF
# The supervisor's config, written by image/build for recipes/$RECIPE_NAME.toml.
# Every path is a path in the image.

[node]
name = "$NODE_NAME"
state_dir = "/var/lib/appliance"

[monitor]
interval = "1s"
sysfs_root = "/sys"
procfs_root = "/proc"
# / is the read-only root (always full); /var is the data partition.
filesystems = ["/var"]
history_save_interval = "60s"

[admin]
listen = "0.0.0.0:8443"

[bbb]
url = "http://127.0.0.1:8090/bigbluebutton/api"
secret_file = "/var/lib/appliance-secrets/bbb-secret"
properties = "/etc/bigbluebutton/bbb-web.properties"

# The BBB API gateway: nginx (the recipe's overlay) sends BBB's API path
# here; member organisations call it with their own secrets.
[gateway]
listen = "$GATEWAY_LISTEN"

[hardware]
profile = "auto"
profiles_dir = "/usr/share/appliance/hw-profiles"

[alerts]
cpu = { warn = 0.80, critical = 0.95, for = "60s", hysteresis = 0.05 }
memory = { warn = 0.85, critical = 0.95, for = "60s", hysteresis = 0.05 }
disk = { warn = 0.85, critical = 0.95, for = "0s", hysteresis = 0.01 }
bandwidth = { warn = 0.80, critical = 0.95, for = "60s", hysteresis = 0.05 }
temperature = { for = "60s", hysteresis = 5.0 }

[log]
level = "info"
$(services_section)
$(update_section)
CONF
    # Readable by the supervisor's group only.
    in_root chown root:appliance /etc/appliance/appliance.toml
    chmod 0640 "$ROOT/etc/appliance/appliance.toml"
}

# >>> SERVICES SECTION: the recipe in the supervisor's config.
services_section() {
    printf '\n[services]\nrecipe = "/usr/share/appliance/recipes/%s.toml"\n' "$RECIPE_NAME"
}
# <<< SERVICES SECTION

# The trusted update root, when the build was given one: the node then
# checks ops's update repository (docs/updates.md). Without it, updates are
# off and the image says so in its config.
update_section() {
    if [[ -z "$UPDATE_ROOT" ]]; then
        printf '\n# No [update]: this image was built without a trusted update root.\n'
        return
    fi
    install -m 0644 "$UPDATE_ROOT" "$ROOT/etc/appliance/update-root.json"
    printf '\n[update]\nroot = "/etc/appliance/update-root.json"\n'
    if [[ -n "$UPDATE_SETTINGS" ]]; then
        printf '# From %s (APPLIANCE_IMAGE_UPDATE_SETTINGS)\n' "$(basename "$UPDATE_SETTINGS")"
        cat "$UPDATE_SETTINGS"
    fi
}

stage2_firewall() {
    # The recipe's [firewall], as nftables rules loaded before the network
    # comes up (Debian's nftables.service reads /etc/nftables.conf).
    "$PYTHON" "$REPO_ROOT/image/lib/recipe.py" nftables "$RECIPE_FILE" >"$ROOT/etc/nftables.conf"
    chmod 0644 "$ROOT/etc/nftables.conf"
    enable_units nftables.service
}

stage2_sysctl() {
    install -m 0644 "$REPO_ROOT/image/lib/sysctl-hardening.conf" "$ROOT/etc/sysctl.d/50-appliance-hardening.conf"
}

stage2_overlay() {
    [[ -n "$RECIPE_OVERLAY" ]] || return 0
    local dir="$REPO_ROOT/$RECIPE_OVERLAY"
    [[ -d "$dir" ]] || die "recipes/$RECIPE_NAME.toml: image.overlay: $RECIPE_OVERLAY is not a directory"
    # tar, not cp: files become root-owned whoever cloned the repo, and
    # --keep-directory-symlink lets overlay/lib/... land in the merged-/usr
    # tree where /lib is a symlink to usr/lib.
    tar -C "$dir" --owner=0 --group=0 --numeric-owner -cf - . \
        | tar -C "$ROOT" --keep-directory-symlink --no-overwrite-dir -xf -
}

stage2_recipe_units() {
    # Every unit the recipe manages is enabled: the recipe says the node runs
    # it. Units from packages are usually enabled already; the overlay's are
    # not. A unit that is nowhere in the image is a recipe/package mismatch.
    local unit found=()
    for unit in $RECIPE_UNITS; do
        if [[ -e "$ROOT/etc/systemd/system/$unit" || -e "$ROOT/lib/systemd/system/$unit" ]]; then
            found+=("$unit")
        else
            die "recipes/$RECIPE_NAME.toml: unit $unit is not in the image (missing package in image.packages or file in the overlay?)"
        fi
    done
    ((${#found[@]} == 0)) || enable_units "${found[@]}"
}

stage2_ssh() {
    # SSH for operators (docs/image.md): sshd asks the supervisor's state
    # for keys (`appliance ssh authorized-keys`, as user appliance), which
    # has none while SSH is off; the unit starts at boot only while the
    # admin page's switch is on. A test image also lets in root with the
    # test key, and runs sshd always.
    local keys_file=none condition="ConditionPathExists=/var/lib/appliance/ssh-enabled"
    if [[ "$RECIPE_TEST_SSH" == 1 ]]; then
        install -d -m 0700 "$ROOT/root/.ssh"
        install -m 0600 "$SSH_PUBKEY" "$ROOT/root/.ssh/authorized_keys"
        keys_file=.ssh/authorized_keys
        condition=
    fi
    mkdir -p "$ROOT/etc/ssh/sshd_config.d"
    cat >"$ROOT/etc/ssh/sshd_config.d/50-appliance.conf" <<CONF
# Written by image/build. Root by key only; the keys are the ones an
# operator added on the admin page, and none while SSH is turned off
# there. No forwarding. Each box makes its own host key at first start, on
# the data partition (the root is read-only and the same on every box).
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile $keys_file
AuthorizedKeysCommand /usr/bin/appliance --config /etc/appliance/appliance.toml ssh authorized-keys %u
AuthorizedKeysCommandUser appliance
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
HostKey /var/lib/ssh/ssh_host_ed25519_key
CONF
    rm -f "$ROOT"/etc/ssh/ssh_host_*
    mkdir -p "$ROOT/etc/systemd/system/ssh.service.d"
    cat >"$ROOT/etc/systemd/system/ssh.service.d/50-appliance.conf" <<CONF
# Written by image/build: off unless an operator turned SSH on (the
# supervisor keeps the flag); the host key is made on the box, once.
[Unit]
$condition
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -s /var/lib/ssh/ssh_host_ed25519_key || { mkdir -p -m 0700 /var/lib/ssh && ssh-keygen -q -t ed25519 -N "" -f /var/lib/ssh/ssh_host_ed25519_key; }'
ExecStartPre=/usr/sbin/sshd -t
# The firewall opens port 22 only while sshd runs.
ExecStartPost=/usr/sbin/nft add element inet appliance ssh { 22 }
ExecStopPost=-/usr/sbin/nft delete element inet appliance ssh { 22 }
CONF
    # Debian's package may also ship socket activation: one way in only.
    rm -f "$ROOT/etc/systemd/system/sockets.target.wants/ssh.socket"
    enable_units ssh.service
}

stage2_build_info() {
    cat >"$ROOT/usr/share/appliance/build-info" <<INFO
recipe=$RECIPE_NAME
os_version=$OS_VERSION
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
source=$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
stage1=$STAGE1_KEY
INFO
}

stage2_factory_var() {
    # The image's /var as shipped, inside the verified root: the USB
    # installer makes an installed disk's data partition from it, so a new
    # box never inherits the stick's machine-id or secrets.
    mkdir -p "$ROOT/usr/share/factory"
    rm -rf "$ROOT/usr/share/factory/var"
    cp -a "$ROOT/var" "$ROOT/usr/share/factory/var"
}

stage2() {
    stage2_identity
    stage2_boot_config
    stage2_network
    stage2_supervisor
    stage2_config
    stage2_firewall
    stage2_sysctl
    # The overlay comes after the generic files so a recipe can replace them,
    # and before enabling the recipe's units, which it may provide.
    stage2_overlay
    stage2_recipe_units
    stage2_ssh
    stage2_build_info
    stage2_factory_var
}
