# Disk assembly for image/build: a raw GPT disk that boots by UEFI with
# systemd-boot. Sourced by image/build. No loop devices or mounts (CI runs in
# a container): each file system is made in its own file from a directory
# (mkfs.ext4 -d, mkfs.vfat + mcopy) and written into the disk at its
# partition's offset with dd.
#
# Layout (MiB): 1 reserved for the GPT | ESP_MB EFI system partition (FAT32:
# systemd-boot, kernel, initrd) | root (ext4, the stage-2 tree) | 1 for the
# backup GPT.

ESP_MB=256
SYSTEMD_BOOT_EFI=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
# GPT partition types: EFI system, and "Linux root (x86-64)" from the
# Discoverable Partitions Specification, so tools recognise the root.
GPT_TYPE_ESP=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
GPT_TYPE_ROOT_X86_64=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709

# The kernel command line. console=ttyS0 last: it becomes /dev/console,
# so systemd's boot status and the journal (stage 2 forwards it) show on the
# serial port; tty0 still gets kernel messages on a screen. panic=10: a box
# with nobody near it reboots instead of hanging.
kernel_cmdline() {
    echo "root=PARTUUID=$ROOT_PARTUUID ro rootfstype=ext4 console=tty0 console=ttyS0,115200 panic=10"
}

# make_esp_tree DIR: systemd-boot as the removable-media default loader
# (EFI/BOOT/BOOTX64.EFI, found without any NVRAM entry), one loader entry.
make_esp_tree() {
    local esp="$1" kernel initrd
    kernel="$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n1)"
    initrd="$ROOT/boot/initrd.img-${kernel##*/vmlinuz-}"
    [[ -f "$kernel" && -f "$initrd" ]] || die "no kernel/initrd in the stage-1 tree (/boot)"
    mkdir -p "$esp/EFI/BOOT" "$esp/EFI/systemd" "$esp/loader/entries" "$esp/appliance"
    cp "$SYSTEMD_BOOT_EFI" "$esp/EFI/BOOT/BOOTX64.EFI"
    cp "$SYSTEMD_BOOT_EFI" "$esp/EFI/systemd/systemd-bootx64.efi"
    cp "$kernel" "$esp/appliance/vmlinuz"
    cp "$initrd" "$esp/appliance/initrd.img"
    # timeout 0: boot at once (hold a key at power-on for the menu);
    # editor no: nobody at the console edits the kernel command line.
    printf '%s\n' "default appliance.conf" "timeout 0" "editor no" >"$esp/loader/loader.conf"
    cat >"$esp/loader/entries/appliance.conf" <<ENTRY
title   City node ($RECIPE_NAME, kernel ${kernel##*/vmlinuz-})
linux   /appliance/vmlinuz
initrd  /appliance/initrd.img
options $(kernel_cmdline)
ENTRY
}

# assemble_disk OUT WORK: write the disk image to OUT, using WORK for the
# partition files.
assemble_disk() {
    local out="$1" work="$2"
    local esp_dir="$work/esp" esp_img="$work/esp.img" root_img="$work/root.img"
    local used_mb root_mb total_mb

    make_esp_tree "$esp_dir"
    rm -f "$esp_img"
    mkfs.vfat -F 32 -n ESP -C "$esp_img" $((ESP_MB * 1024)) >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -s -Q -i "$esp_img" "$esp_dir"/* ::/

    # Root size: what the tree uses, plus room for logs, state and the
    # services' data (APPLIANCE_IMAGE_FREE_MB, default 1024), plus 10% for
    # file system metadata. The file is sparse, so the free room costs
    # nothing on the host.
    used_mb=$(du -sm --apparent-size "$ROOT" | cut -f1)
    root_mb=$(( (used_mb * 11 / 10) + ${APPLIANCE_IMAGE_FREE_MB:-1024} ))
    rm -f "$root_img"
    # -d copies the tree with owners, modes and special files; -E root_owner
    # keeps / itself root's. 1% reserved blocks: the box has one user, root.
    mkfs.ext4 -q -F -L root -U "$ROOT_FSUUID" -m 1 -E root_owner=0:0 \
        -d "$ROOT" "$root_img" "${root_mb}M"

    total_mb=$((1 + ESP_MB + root_mb + 1))
    rm -f "$out"
    truncate -s "${total_mb}M" "$out"
    sfdisk --quiet "$out" <<GPT
label: gpt
label-id: $DISK_GUID
unit: sectors
first-lba: 2048
start=$((1 * 2048)), size=$((ESP_MB * 2048)), type=$GPT_TYPE_ESP, uuid=$ESP_PARTUUID, name="esp"
start=$(((1 + ESP_MB) * 2048)), size=$((root_mb * 2048)), type=$GPT_TYPE_ROOT_X86_64, uuid=$ROOT_PARTUUID, name="root"
GPT
    # conv=sparse skips the zero blocks, so the disk stays as sparse as the
    # file systems (~the data they hold, not their size).
    dd if="$esp_img" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
    dd if="$root_img" of="$out" bs=1M seek=$((1 + ESP_MB)) conv=notrunc,sparse status=none
    rm -f "$esp_img" "$root_img"
}
