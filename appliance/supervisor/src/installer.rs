//! Installing a box from a USB stick (`appliance install`): the image, booted
//! from the stick, writes itself to the server's internal disk.
//!
//! What is copied and what is made new (docs/image.md):
//! - the partition table: the stick's layout, the data partition grown to
//!   the end of the target disk, every UUID new (so the installed disk and
//!   the stick are never mixed up: the initramfs goes by the ESP the boot
//!   loader started from);
//! - the ESP and the running root slot: byte for byte;
//! - the data partition (`/var`): a new file system with the image's
//!   factory `/var` (`/usr/share/factory/var`), never the stick's own, so
//!   the installed box makes its own machine-id and secrets at its first
//!   boot.
//!
//! Choosing the disk is pure (`candidates`, `target_table`); writing uses
//! the system's own tools (sfdisk, partx, mkfs.ext4, mount) and is run by
//! root, from `appliance-installer@.service` on the console.

use std::fs;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A disk the image could be written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    pub bytes: u64,
    pub model: String,
    pub removable: bool,
}

impl Disk {
    pub fn describe(&self) -> String {
        let gib = self.bytes as f64 / (1u64 << 30) as f64;
        format!(
            "{}  {:.1} GiB  {}{}",
            self.name,
            gib,
            if self.model.is_empty() {
                "(no model name)"
            } else {
                &self.model
            },
            if self.removable { "  (removable)" } else { "" }
        )
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The disks under `sys_block` (`/sys/block`) that may take the image: not
/// the one the box booted from, not a loop, RAM, optical or mapped device,
/// and at least `min_bytes` large.
pub fn candidates(sys_block: &Path, boot_disk: &str, min_bytes: u64) -> Vec<Disk> {
    let Ok(rd) = fs::read_dir(sys_block) else { return vec![] };
    let mut out: Vec<Disk> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let skip = ["loop", "ram", "sr", "dm-", "zram", "md", "fd"];
            if name == boot_disk || skip.iter().any(|p| name.starts_with(p)) {
                return None;
            }
            let dir = e.path();
            let bytes = read(&dir.join("size")).parse::<u64>().ok()? * 512;
            if bytes < min_bytes || read(&dir.join("ro")) == "1" {
                return None;
            }
            Some(Disk {
                model: read(&dir.join("device/model")),
                removable: read(&dir.join("removable")) == "1",
                name,
                bytes,
            })
        })
        .collect();
    // Internal disks first: the usual target.
    out.sort_by(|a, b| (a.removable, &a.name).cmp(&(b.removable, &b.name)));
    out
}

/// The target's partition table, from `sfdisk --dump` of the boot disk:
/// the same partitions at the same places, new UUIDs (left out, so sfdisk
/// makes them), and the last partition (data) to the end of the disk.
pub fn target_table(dump: &str) -> Result<String> {
    let mut header = Vec::new();
    let mut parts = Vec::new();
    for line in dump.lines() {
        let l = line.trim();
        if l.is_empty() {
            continue;
        }
        if let Some((_, spec)) = l.split_once(" : ") {
            let fields: Vec<&str> = spec
                .split(',')
                .map(str::trim)
                .filter(|f| !f.starts_with("uuid=") && !f.is_empty())
                .collect();
            parts.push(fields);
        } else if let Some((key, _)) = l.split_once(':') {
            // The disk's own identity and size stay behind.
            if !matches!(
                key.trim(),
                "label-id" | "device" | "last-lba" | "first-lba" | "sector-size"
            ) {
                header.push(l.to_string());
            }
        }
    }
    if parts.len() != 4 {
        bail!(
            "the boot disk has {} partitions; an appliance image has 4 (esp, root-a, root-b, data)",
            parts.len()
        );
    }
    let last = parts.last_mut().expect("four");
    last.retain(|f| !f.starts_with("size="));
    let mut out = header.join("\n");
    out.push_str("\nfirst-lba: 2048\n");
    for p in parts {
        out.push_str(&p.join(", "));
        out.push('\n');
    }
    Ok(out)
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The device of partition `n` of `disk` (vda → vda2, nvme0n1 → nvme0n1p2).
pub fn partition(disk: &str, n: u32) -> PathBuf {
    let sep = if disk.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    PathBuf::from(format!("/dev/{disk}{sep}{n}"))
}

fn copy_partition(from: &Path, to: &Path, say: &mut dyn FnMut(&str)) -> Result<()> {
    let mut src = fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .open(to)
        .with_context(|| format!("opening {}", to.display()))?;
    let total = src.seek_end()?;
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0u64;
    let mut shown = 0u64;
    loop {
        let n = src
            .read(&mut buf)
            .with_context(|| format!("reading {}", from.display()))?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])
            .with_context(|| format!("writing {}", to.display()))?;
        done += n as u64;
        if done - shown >= total / 10 {
            shown = done;
            say(&format!(
                "  {} -> {}: {} %",
                from.display(),
                to.display(),
                done * 100 / total.max(1)
            ));
        }
    }
    dst.sync_all().with_context(|| format!("syncing {}", to.display()))?;
    Ok(())
}

trait SeekEnd {
    fn seek_end(&mut self) -> Result<u64>;
}

impl SeekEnd for fs::File {
    fn seek_end(&mut self) -> Result<u64> {
        use std::io::{Seek, SeekFrom};
        let n = self.seek(SeekFrom::End(0))?;
        self.seek(SeekFrom::Start(0))?;
        Ok(n)
    }
}

/// Writes the running image to `target` (a disk name such as `vda`).
pub fn install(boot_disk: &str, slot: &str, target: &str, factory_var: &Path, say: &mut dyn FnMut(&str)) -> Result<()> {
    if target == boot_disk {
        bail!("{target} is the disk this box runs from");
    }
    let slot_n = match slot {
        "a" => 2,
        "b" => 3,
        other => bail!("booted slot {other:?} is neither a nor b"),
    };
    let dump = run(Command::new("sfdisk").arg("--dump").arg(format!("/dev/{boot_disk}")))?;
    let table = target_table(&dump)?;
    say(&format!("writing the partition table of {target}"));
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--wipe", "always", "--wipe-partitions", "always"])
        .arg(format!("/dev/{target}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running sfdisk")?;
    child.stdin.take().expect("piped").write_all(table.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("sfdisk on {target}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    // The kernel learns the new partitions; udev makes their nodes.
    let _ = run(Command::new("partx").arg("-u").arg(format!("/dev/{target}")));
    let _ = Command::new("udevadm").arg("settle").status();
    for n in 1..=4 {
        let p = partition(target, n);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !p.exists() {
            if std::time::Instant::now() > deadline {
                bail!("{} did not appear", p.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    say("copying the boot partition (systemd-boot, kernel, boot entries)");
    copy_partition(&partition(boot_disk, 1), &partition(target, 1), say)?;
    say(&format!("copying the system (root slot {})", slot.to_uppercase()));
    copy_partition(&partition(boot_disk, slot_n), &partition(target, slot_n), say)?;
    say("making the data partition (/var) from the image's factory contents");
    let data = partition(target, 4);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "data", "-m", "1"])
        .arg(&data))?;
    let mnt = Path::new("/run/appliance-install");
    fs::create_dir_all(mnt).context("a mount point")?;
    run(Command::new("mount").arg("-t").arg("ext4").arg(&data).arg(mnt))?;
    let copied = run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", factory_var.display()))
        .arg(mnt));
    let _ = Command::new("sync").status();
    let unmounted = run(Command::new("umount").arg(mnt));
    copied?;
    unmounted?;
    let _ = Command::new("sync").status();
    say(&format!("{target} now holds the city node"));
    Ok(())
}

/// The console dialogue: which disk, and an explicit confirmation. Returns
/// the disk installed to, or `None` when the person chose to keep running
/// from the stick.
pub fn dialogue(disks: &[Disk], input: &mut dyn BufRead, out: &mut dyn Write) -> Result<Option<String>> {
    writeln!(out, "\nCity node installer")?;
    writeln!(out, "===================\n")?;
    writeln!(out, "This box started from the installation medium (a USB stick).")?;
    if disks.is_empty() {
        writeln!(
            out,
            "No disk here is large enough to install to. The box keeps running from the stick."
        )?;
        return Ok(None);
    }
    writeln!(out, "It can write the city node to one of these disks:\n")?;
    for d in disks {
        writeln!(out, "  {}", d.describe())?;
    }
    loop {
        write!(
            out,
            "\nType the name of the disk to install to (e.g. {}), or press Enter to keep running from the stick: ",
            disks[0].name
        )?;
        out.flush()?;
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let name = line.trim();
        if name.is_empty() {
            writeln!(out, "Not installing. The box keeps running from the stick.")?;
            return Ok(None);
        }
        let Some(d) = disks.iter().find(|d| d.name == name) else {
            writeln!(out, "{name:?} is not one of the disks listed.")?;
            continue;
        };
        writeln!(out, "\nEVERYTHING on {} will be erased.", d.describe())?;
        write!(out, "Type ERASE {} to confirm, anything else to choose again: ", d.name)?;
        out.flush()?;
        let mut confirm = String::new();
        if input.read_line(&mut confirm)? == 0 {
            return Ok(None);
        }
        if confirm.trim() == format!("ERASE {}", d.name) {
            return Ok(Some(d.name.clone()));
        }
        writeln!(out, "Not confirmed; nothing was written.")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_table_keeps_the_layout_and_drops_identities() {
        let dump = "label: gpt\nlabel-id: 1B2C\ndevice: /dev/sda\nunit: sectors\nfirst-lba: 2048\nlast-lba: 5810142\nsector-size: 512\n\n\
/dev/sda1 : start=        2048, size=      524288, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=AAAA, name=\"esp\"\n\
/dev/sda2 : start=      526336, size=     1572864, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=BBBB, name=\"root-a\"\n\
/dev/sda3 : start=     2099200, size=     1572864, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=CCCC, name=\"root-b\"\n\
/dev/sda4 : start=     3672064, size=     2138112, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=DDDD, name=\"data\"\n";
        let t = target_table(dump).unwrap();
        assert_eq!(
            t,
            "label: gpt\nunit: sectors\nfirst-lba: 2048\n\
start=        2048, size=      524288, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"esp\"\n\
start=      526336, size=     1572864, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root-a\"\n\
start=     2099200, size=     1572864, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root-b\"\n\
start=     3672064, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"data\"\n"
        );
        assert!(target_table("label: gpt\n/dev/sda1 : start=1, size=2\n").is_err());
    }

    #[test]
    fn partitions_are_named_as_the_kernel_names_them() {
        assert_eq!(partition("vda", 2), PathBuf::from("/dev/vda2"));
        assert_eq!(partition("nvme0n1", 4), PathBuf::from("/dev/nvme0n1p4"));
        assert_eq!(partition("mmcblk0", 1), PathBuf::from("/dev/mmcblk0p1"));
    }

    #[test]
    fn candidates_leave_out_the_boot_disk_and_small_or_virtual_ones() {
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str, sectors: u64, removable: bool, model: &str| {
            let p = d.path().join(name);
            fs::create_dir_all(p.join("device")).unwrap();
            fs::write(p.join("size"), format!("{sectors}\n")).unwrap();
            fs::write(p.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
            fs::write(p.join("ro"), "0\n").unwrap();
            fs::write(p.join("device/model"), format!("{model}\n")).unwrap();
        };
        mk("sda", 16 << 21, true, "USB Stick");
        mk("vda", 64 << 21, false, "");
        mk("nvme0n1", 512 << 21, false, "Samsung SSD");
        mk("loop0", 64 << 21, false, "");
        mk("vdb", 1 << 21, false, "tiny");
        let got = candidates(d.path(), "sda", 8 << 30);
        let names: Vec<&str> = got.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "vda"]);
        assert_eq!(got[0].describe(), "nvme0n1  512.0 GiB  Samsung SSD");
    }

    #[test]
    fn installing_needs_the_disk_name_and_an_explicit_erase() {
        let disks = vec![Disk {
            name: "vda".into(),
            bytes: 8 << 30,
            model: "QEMU".into(),
            removable: false,
        }];
        let ask = |typed: &str| {
            let mut out = Vec::new();
            let r = dialogue(&disks, &mut typed.as_bytes(), &mut out).unwrap();
            (r, String::from_utf8(out).unwrap())
        };
        assert_eq!(ask("vda\nERASE vda\n").0, Some("vda".into()));
        let (r, text) = ask("vda\nyes\n\n");
        assert_eq!(r, None, "only ERASE vda confirms");
        assert!(text.contains("Not confirmed; nothing was written."), "{text}");
        assert_eq!(ask("\n").0, None);
        let (r, text) = ask("sdz\nvda\nERASE vda\n");
        assert_eq!(r, Some("vda".into()));
        assert!(text.contains("\"sdz\" is not one of the disks listed."));
        assert_eq!(ask("").0, None, "end of input: nothing written");
        // No disk can take it: nothing is asked, whatever is typed.
        let mut out = Vec::new();
        assert_eq!(
            dialogue(&[], &mut "vda\nERASE vda\n".as_bytes(), &mut out).unwrap(),
            None
        );
        assert!(String::from_utf8(out).unwrap().contains("No disk here is large enough"));
    }
}
