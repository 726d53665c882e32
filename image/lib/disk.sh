# Disk assembly for image/build: a raw GPT disk that boots by UEFI with
# systemd-boot into a read-only root verified by dm-verity. Sourced by
# image/build. No loop devices or mounts (CI runs in a container): each file
# system is made in its own file from a directory (mksquashfs, mkfs.ext4 -d,
# mkfs.vfat + mcopy), the verity hash tree is appended to the squashfs with
# veritysetup on the plain file, and each is written into the disk at its
# partition's offset with dd. docs/image.md says why this layout.
#
# Layout (MiB): 1 reserved for the GPT | ESP_MB EFI system partition (FAT32:
# systemd-boot; kernel, initrd and boot entry of each slot) | root-a and
# root-b, RECIPE_SLOT_MB each (squashfs + hash tree; B stays empty until an
# OS update writes it) | data (ext4, the tree's /var, grown to fill the disk
# at first boot) | 1 for the backup GPT.
#
# The same step writes the OS update bundle beside the image
# (RECIPE.os.tar): the slot image, the kernel, the initrd and os.json with
# the version and root hash, as appliance-ops publishes it.

ESP_MB=256
SYSTEMD_BOOT_EFI=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
# GPT partition types: EFI system; "Linux root (x86-64)" from the
# Discoverable Partitions Specification for both slots; a plain Linux
# file system for data (the spec's /var type would have systemd mount it by
# itself only with a UUID derived from the machine-id, which a shared image
# cannot have).
GPT_TYPE_ESP=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
GPT_TYPE_ROOT_X86_64=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709
GPT_TYPE_LINUX=0FC63DAF-8483-4772-8E79-3D69D8477DE4

# make_slot TREE OUT: squashfs of TREE (without what /var holds: that is
# the data partition's) with its dm-verity hash tree appended. Sets
# SLOT_ROOTHASH and SLOT_HASH_OFFSET.
make_slot() {
    local tree="$1" out="$2" size
    rm -f "$out"
    # zstd: a third of the tree's size, quick to read back. The file
    # system is padded to 4 KiB, the verity block size.
    mksquashfs "$tree" "$out" -comp zstd -Xcompression-level 15 -noappend -quiet -no-progress \
        -wildcards -e 'var/*' -e 'tmp/*' -e 'run/*' -e 'proc/*' -e 'sys/*' -e 'dev/*' >&2
    size=$(stat -c %s "$out")
    if ((size % 4096)); then
        truncate -s $(((size / 4096 + 1) * 4096)) "$out"
        size=$(stat -c %s "$out")
    fi
    SLOT_HASH_OFFSET=$size
    SLOT_ROOTHASH="$(veritysetup format "$out" "$out" --hash-offset="$size" --data-blocks=$((size / 4096)) \
        | sed -n 's/^Root hash:[[:space:]]*//p')"
    [[ "$SLOT_ROOTHASH" =~ ^[0-9a-f]{64}$ ]] || die "veritysetup did not give a root hash for $out"
    # Checked once here, as the initramfs will: a build never ships a slot
    # that does not verify.
    veritysetup verify "$out" "$out" "$SLOT_ROOTHASH" --hash-offset="$size" >&2 \
        || die "the slot image $out does not verify against its own root hash"
}

# boot_entry SLOT GENERATION ROOTHASH OFFSET VERSION: a Boot Loader
# Specification entry, written by the supervisor binary itself (`appliance
# os boot-entry`) so that the build and OS updates write the same format.
boot_entry() {
    "$BIN_DIR/appliance" os boot-entry --recipe "$RECIPE_NAME" --version "$5" --slot "$1" \
        --generation "$2" --roothash "$3" --hash-offset "$4"
}

# make_esp_tree DIR: systemd-boot as the removable-media default loader
# (EFI/BOOT/BOOTX64.EFI, found without any NVRAM entry) and slot A. The
# factory entry carries no try counter: it is known good.
make_esp_tree() {
    local esp="$1"
    mkdir -p "$esp/EFI/BOOT" "$esp/EFI/systemd" "$esp/loader/entries" "$esp/appliance/a"
    cp "$SYSTEMD_BOOT_EFI" "$esp/EFI/BOOT/BOOTX64.EFI"
    cp "$SYSTEMD_BOOT_EFI" "$esp/EFI/systemd/systemd-bootx64.efi"
    cp "$KERNEL" "$esp/appliance/a/vmlinuz"
    cp "$INITRD" "$esp/appliance/a/initrd.img"
    # timeout 0: boot at once (hold a key at power-on for the menu);
    # editor no: nobody at the console edits the kernel command line.
    printf '%s\n' "timeout 0" "editor no" >"$esp/loader/loader.conf"
    boot_entry a 1 "$SLOT_ROOTHASH" "$SLOT_HASH_OFFSET" "$OS_VERSION" >"$esp/loader/entries/appliance-a.conf"
}

# write_os_bundle OUT SLOT_IMG: the OS update bundle (an uncompressed tar,
# so the node can stream the slot image straight to its partition).
write_os_bundle() {
    local out="$1" slot_img="$2" dir
    dir="$(dirname "$slot_img")/bundle"
    rm -rf "$dir"
    mkdir -p "$dir"
    cat >"$dir/os.json" <<JSON
{
  "format": 1,
  "recipe": "$RECIPE_NAME",
  "version": "$OS_VERSION",
  "roothash": "$SLOT_ROOTHASH",
  "hash_offset": $SLOT_HASH_OFFSET,
  "root_size": $(stat -c %s "$slot_img"),
  "slot_mb": $RECIPE_SLOT_MB
}
JSON
    cp "$KERNEL" "$dir/vmlinuz"
    cp "$INITRD" "$dir/initrd.img"
    # os.json first: the node reads what to expect before the large part.
    tar -C "$dir" --owner=0 --group=0 --numeric-owner -cf "$out.tmp" os.json vmlinuz initrd.img
    tar -C "$(dirname "$slot_img")" --owner=0 --group=0 --numeric-owner \
        --transform 's|.*|root.img|' -rf "$out.tmp" "$(basename "$slot_img")"
    mv "$out.tmp" "$out"
    rm -rf "$dir"
}

# assemble_disk OUT WORK: write the disk image to OUT (and the OS bundle
# beside it), using WORK for the partition files.
assemble_disk() {
    local out="$1" work="$2"
    local esp_dir="$work/esp" esp_img="$work/esp.img" slot_img="$work/root.img" data_img="$work/data.img"
    local slot_mb="$RECIPE_SLOT_MB" used_mb data_mb total_mb slot_bytes

    KERNEL="$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n1)"
    INITRD="$ROOT/boot/initrd.img-${KERNEL##*/vmlinuz-}"
    [[ -f "$KERNEL" && -f "$INITRD" ]] || die "no kernel/initrd in the stage-1 tree (/boot)"

    make_slot "$ROOT" "$slot_img"
    slot_bytes=$(stat -c %s "$slot_img")
    ((slot_bytes <= slot_mb * 1024 * 1024)) \
        || die "the root slot image is $((slot_bytes / 1048576)) MiB, more than image.slot_mb = $slot_mb in recipes/$RECIPE_NAME.toml"
    log "disk: root slot $((slot_bytes / 1048576)) MiB of $slot_mb (squashfs + verity, root hash ${SLOT_ROOTHASH:0:16}...)"

    make_esp_tree "$esp_dir"
    rm -f "$esp_img"
    mkfs.vfat -F 32 -n ESP -C "$esp_img" $((ESP_MB * 1024)) >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -s -Q -i "$esp_img" "$esp_dir"/* ::/

    # Data size: what /var holds, plus room for logs, state and the
    # services' data (APPLIANCE_IMAGE_FREE_MB, default 1024), plus 10% for
    # file system metadata. It grows to fill the disk at first boot; the
    # file is sparse, so the free room costs nothing on the host.
    used_mb=$(du -sm --apparent-size "$ROOT/var" | cut -f1)
    data_mb=$(( (used_mb * 11 / 10) + ${APPLIANCE_IMAGE_FREE_MB:-1024} ))
    rm -f "$data_img"
    # -d copies the tree with owners, modes and special files; -E root_owner
    # keeps the top directory root's. 1% reserved blocks.
    mkfs.ext4 -q -F -L data -m 1 -E root_owner=0:0 -d "$ROOT/var" "$data_img" "${data_mb}M"

    local a_start=$((1 + ESP_MB)) b_start=$((1 + ESP_MB + slot_mb)) d_start=$((1 + ESP_MB + 2 * slot_mb))
    total_mb=$((d_start + data_mb + 1))
    rm -f "$out"
    truncate -s "${total_mb}M" "$out"
    # Partition UUIDs are random per build; the initramfs and the boot
    # entries find partitions by name on the boot disk, never by UUID.
    sfdisk --quiet "$out" <<GPT
label: gpt
unit: sectors
first-lba: 2048
start=$((1 * 2048)), size=$((ESP_MB * 2048)), type=$GPT_TYPE_ESP, name="esp"
start=$((a_start * 2048)), size=$((slot_mb * 2048)), type=$GPT_TYPE_ROOT_X86_64, name="root-a"
start=$((b_start * 2048)), size=$((slot_mb * 2048)), type=$GPT_TYPE_ROOT_X86_64, name="root-b"
start=$((d_start * 2048)), size=$((data_mb * 2048)), type=$GPT_TYPE_LINUX, name="data"
GPT
    # conv=sparse skips the zero blocks, so the disk stays as sparse as the
    # file systems (~the data they hold, not their size).
    dd if="$esp_img" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
    dd if="$slot_img" of="$out" bs=1M seek="$a_start" conv=notrunc,sparse status=none
    dd if="$data_img" of="$out" bs=1M seek="$d_start" conv=notrunc,sparse status=none

    write_os_bundle "${out%.img.tmp}.os.tar" "$slot_img"
    rm -f "$esp_img" "$slot_img" "$data_img"
}
