# Stage 2 of image/build: turn the unpacked stage-1 tree into this recipe's
# appliance. Sourced by image/build; runs on every build, so it only copies
# and writes files (plus a few offline tools run in the tree with chroot,
# which need no mounts and start nothing) and takes seconds.
#
# Inputs (set by image/build): ROOT (the unpacked tree), REPO_ROOT,
# RECIPE_FILE, RECIPE_NAME, RECIPE_OVERLAY, RECIPE_TEST_SSH, RECIPE_UNITS,
# BIN_DIR, SSH_PUBKEY, ROOT_PARTUUID, ESP_PARTUUID, NODE_NAME, STAGE1_KEY,
# PYTHON.

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
    # Empty machine-id (stage 1 left it so): every VM and box gets its own on
    # first boot. That also makes systemd think "first boot" and run
    # systemd-firstboot, which would wait for answers on tty1: masked.
    : >"$ROOT/etc/machine-id"
    ln -sf /dev/null "$ROOT/etc/systemd/system/systemd-firstboot.service"
    # Packages are updated by installing a new image, never by apt on the box.
    rm -f "$ROOT"/etc/systemd/system/timers.target.wants/apt-daily{,-upgrade}.timer
}

stage2_boot_config() {
    # The root file system by partition UUID (the disk may be vda, sda or
    # nvme0n1); the ESP is only mounted when something reads it, so a power
    # cut rarely finds the FAT file system mounted.
    mkdir -p "$ROOT/boot/efi"
    cat >"$ROOT/etc/fstab" <<FSTAB
# Written by image/build. The ESP holds systemd-boot, the kernel and initrd.
PARTUUID=$ROOT_PARTUUID	/	ext4	defaults,errors=remount-ro	0	1
PARTUUID=$ESP_PARTUUID	/boot/efi	vfat	umask=0077,noauto,x-systemd.automount,x-systemd.idle-timeout=60	0	2
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
    # writes /etc/appliance/bbb-secret and, on a BBB node, replaces the
    # default secret in bbb-web.properties).
    install -d -m 0755 "$ROOT/etc/appliance"
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
filesystems = ["/", "/var/lib"]
history_save_interval = "60s"

[admin]
listen = "0.0.0.0:8443"

[bbb]
url = "http://127.0.0.1:8090/bigbluebutton/api"
secret_file = "/etc/appliance/bbb-secret"
properties = "/etc/bigbluebutton/bbb-web.properties"

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
    if [[ "$RECIPE_TEST_SSH" != 1 ]]; then
        return 0
    fi
    # The test key opens root: only recipes with image.test_ssh = true get it.
    install -d -m 0700 "$ROOT/root/.ssh"
    install -m 0600 "$SSH_PUBKEY" "$ROOT/root/.ssh/authorized_keys"
    mkdir -p "$ROOT/etc/ssh/sshd_config.d"
    cat >"$ROOT/etc/ssh/sshd_config.d/50-appliance-test.conf" <<'CONF'
# Written by image/build for a test image (image.test_ssh = true): root by
# key only, the key in image-cache/test-ssh/.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
CONF
    # Host keys made at package install would be shared by every image built
    # from the same stage-1 cache: each image gets its own.
    rm -f "$ROOT"/etc/ssh/ssh_host_*
    in_root ssh-keygen -q -A
    enable_units ssh.service
}

stage2_build_info() {
    cat >"$ROOT/usr/share/appliance/build-info" <<INFO
recipe=$RECIPE_NAME
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
source=$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
stage1=$STAGE1_KEY
INFO
}

stage2() {
    stage2_identity
    stage2_boot_config
    stage2_network
    stage2_supervisor
    stage2_config
    # The overlay comes after the generic files so a recipe can replace them,
    # and before enabling the recipe's units, which it may provide.
    stage2_overlay
    stage2_recipe_units
    stage2_ssh
    stage2_build_info
}
