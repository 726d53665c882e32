#!/usr/bin/env bash
# Stage 1 of image/build: the recipe's base system (Debian or Ubuntu) with
# every package the image needs and the appliance's initramfs, as a tarball. It is slow (downloads and installs a few
# hundred packages) and changes rarely, so image/build caches its output under
# a key made of this file's text, the package list and the mirror: edit this
# file or the package list and the next build redoes stage 1.
#
# Everything that is configuration rather than packages (users, units,
# network, config files) belongs to stage 2, so that changing it does not
# invalidate this cache.
#
# Usage: stage1.sh OUTPUT.tar.zst SUITE SOURCES_FILE PACKAGE...
#   SOURCES_FILE holds one "deb ..." line per line (recipe.py sources).
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

(($# >= 4)) || die "usage: stage1.sh OUTPUT.tar.zst SUITE SOURCES_FILE PACKAGE..."
out="$1" suite="$2" sources_file="$3"
shift 3
packages=("$@")
mapfile -t sources <"$sources_file"
((${#sources[@]} > 0)) || die "no sources in $sources_file"
initramfs_dir="$REPO_ROOT/image/initramfs"
[[ "$out" == *.tar.zst ]] || die "stage 1 output must end in .tar.zst (mmdebstrap picks the format from it): $out"

[[ $EUID -eq 0 ]] || die "stage 1 needs root (mmdebstrap --mode=root mounts /proc and /dev in the chroot)"

# Trimming documentation, man pages and translations saves ~100 MB; the
# copyright files stay, as the licences require. These options also persist
# in the image (/etc/dpkg/dpkg.cfg.d/99mmdebstrap) so later installs match.
dpkg_opts=(
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
)

# Why these options:
# - minbase: Priority:required + apt; everything else is listed explicitly,
#   so the image holds what we chose and nothing by accident.
# - no Recommends: same reason, and it keeps the image small.
# - mmdebstrap's root mode installs a policy-rc.d and diverts
#   start-stop-daemon while packages are installed, so no service starts in
#   the build chroot (and without systemd as PID 1 in the chroot,
#   deb-systemd-invoke does not start units either). It removes both at the
#   end, empties /etc/machine-id (each VM generates its own on first boot)
#   and deletes the apt lists and package cache.
# - The sources are given explicitly: with none, mmdebstrap reads them from
#   standard input when it is not a terminal, which CI's is not.
# - The customize hooks add the appliance's initramfs scripts (open the
#   verified root slot, mount the data partition on /var; image/initramfs/)
#   and rebuild the initramfs with them, then fail the stage early if the
#   kernel or its initramfs is missing: the disk step copies both to the EFI
#   system partition.
mmdebstrap \
    --mode=root \
    --variant=minbase \
    --format=tar \
    --architectures=amd64 \
    --aptopt='APT::Install-Recommends "false"' \
    "${dpkg_opts[@]}" \
    --include="$(IFS=,; echo "${packages[*]}")" \
    --customize-hook="cp -r '$initramfs_dir/hooks/.' \"\$1/etc/initramfs-tools/hooks/\"" \
    --customize-hook="cp -r '$initramfs_dir/scripts/.' \"\$1/etc/initramfs-tools/scripts/\"" \
    --customize-hook='chroot "$1" update-initramfs -u -k all' \
    --customize-hook='ls "$1"/boot/vmlinuz-* "$1"/boot/initrd.img-* >/dev/null' \
    "$suite" "$out" \
    "${sources[@]}" \
    </dev/null >&2
