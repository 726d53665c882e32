//! OS updates against file-backed slots: a real squashfs with a real
//! dm-verity hash tree (mksquashfs, veritysetup, as image/build makes them),
//! written to the slot not running, its boot entry created only once the
//! slot verified; tampered, foreign and oversized bundles refused with the
//! running slot's entry untouched; what a boot finds after each outcome.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use appliance_update::install::Result_;
use appliance_update::os::{AtBoot, Layout, OsInstaller, Slot, Step, read_bundle_info};
use jiff::Timestamp;

struct Box_ {
    dir: tempfile::TempDir,
}

impl Box_ {
    /// An ESP with slot A's known-good entry, two 8 MiB slot "partitions".
    fn new() -> Box_ {
        let b = Box_ {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(b.p("esp/loader/entries")).unwrap();
        fs::write(
            b.p("esp/loader/entries/appliance-a.conf"),
            "title   City node 0.1.0 (lab, slot A)\nversion 1\n",
        )
        .unwrap();
        for s in ["root-a", "root-b"] {
            fs::File::create(b.p(s)).unwrap().set_len(8 << 20).unwrap();
        }
        b
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn installer(&self, booted: Slot, running: &str) -> OsInstaller {
        OsInstaller {
            layout: Layout {
                esp: self.p("esp"),
                slots: [self.p("root-a"), self.p("root-b")],
                veritysetup: Some(PathBuf::from("veritysetup")),
            },
            state_dir: self.p("state"),
            recipe: "lab".into(),
            running: running.parse().unwrap(),
            booted,
            write_rate: None,
            kernel_params: vec![],
        }
    }

    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.p("esp/loader/entries"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn sh(script: &str, args: &[&Path]) {
    let st = Command::new("bash")
        .args(["-ec", script, "sh"])
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "{script}");
}

/// A bundle as image/build writes it, of a tiny tree; `tamper` flips a
/// byte of the slot image after its root hash was taken.
fn bundle(dir: &Path, recipe: &str, version: &str, tamper: bool) -> PathBuf {
    let work = dir.join(format!("b-{recipe}-{version}-{tamper}"));
    fs::create_dir_all(work.join("tree/etc")).unwrap();
    fs::write(work.join("tree/etc/os-version"), version).unwrap();
    fs::write(work.join("vmlinuz"), format!("kernel {version}")).unwrap();
    fs::write(work.join("initrd.img"), format!("initrd {version}")).unwrap();
    sh(
        r#"cd "$1"
mksquashfs tree root.img -comp zstd -noappend -quiet -no-progress >/dev/null
size=$(stat -c %s root.img)
hash=$(veritysetup format root.img root.img --hash-offset="$size" --data-blocks=$((size / 4096)) | sed -n 's/^Root hash:[[:space:]]*//p')
printf '{"format":1,"recipe":"%s","version":"%s","roothash":"%s","hash_offset":%s,"root_size":%s,"slot_mb":8}' \
    "$2" "$3" "$hash" "$size" "$(stat -c %s root.img)" > os.json
if [ "$4" = 1 ]; then printf 'X' | dd of=root.img bs=1 seek=100 conv=notrunc status=none; fi
tar -cf bundle.tar os.json vmlinuz initrd.img root.img"#,
        &[
            &work,
            Path::new(recipe),
            Path::new(version),
            Path::new(if tamper { "1" } else { "0" }),
        ],
    );
    work.join("bundle.tar")
}

fn now() -> Timestamp {
    Timestamp::now()
}

#[test]
fn a_good_bundle_goes_to_the_other_slot_with_three_tries() {
    let b = Box_::new();
    let bundle = bundle(b.dir.path(), "lab", "0.2.0", false);
    assert_eq!(read_bundle_info(&bundle).unwrap().version.to_string(), "0.2.0");
    let inst = b.installer(Slot::A, "0.1.0");
    let slot = inst.install(&bundle, &"0.2.0".parse().unwrap(), now()).unwrap();
    assert_eq!(slot, Slot::B);
    assert_eq!(b.entries(), ["appliance-a.conf", "appliance-b+3.conf"]);
    let entry = fs::read_to_string(b.p("esp/loader/entries/appliance-b+3.conf")).unwrap();
    assert!(
        entry.contains("\nversion 2\n"),
        "one generation above slot A's: {entry}"
    );
    assert!(entry.contains("appliance.slot=b appliance.verity="), "{entry}");
    assert_eq!(
        fs::read_to_string(b.p("esp/appliance/b/vmlinuz")).unwrap(),
        "kernel 0.2.0"
    );
    // The slot holds root.img byte for byte; slot A is untouched.
    let info = read_bundle_info(&bundle).unwrap();
    let root = fs::read(bundle.parent().unwrap().join("root.img")).unwrap();
    let slot_b = fs::read(b.p("root-b")).unwrap();
    assert_eq!(&slot_b[..root.len()], &root[..]);
    assert_eq!(info.root_size as usize, root.len());
    assert!(fs::read(b.p("root-a")).unwrap().iter().all(|&x| x == 0));
    let st = inst.read_state().unwrap();
    let p = st.pending.unwrap();
    assert_eq!(
        (p.slot, p.step, p.version.to_string()),
        (Slot::B, Step::Installed, "0.2.0".into())
    );

    // Not rebooted yet: nothing to settle. Then the trial boot of B.
    assert_eq!(inst.boot_check(now()).unwrap(), AtBoot::AwaitingReboot);
    let on_b = b.installer(Slot::B, "0.2.0");
    assert_eq!(on_b.boot_check(now()).unwrap(), AtBoot::Trial);
    assert_eq!(on_b.commit(now()).unwrap().map(|v| v.to_string()), Some("0.2.0".into()));
    let st = on_b.read_state().unwrap();
    assert!(st.pending.is_none());
    assert_eq!(st.floor.unwrap().to_string(), "0.2.0");
    assert_eq!(st.last.unwrap().result, Result_::Installed);
}

#[test]
fn a_slot_out_of_tries_is_a_fall_back_and_marked_bad() {
    let b = Box_::new();
    let bundle = bundle(b.dir.path(), "lab", "0.3.0", false);
    let inst = b.installer(Slot::A, "0.1.0");
    inst.install(&bundle, &"0.3.0".parse().unwrap(), now()).unwrap();
    // systemd-boot counted three failed boots of B, then booted A again.
    fs::rename(
        b.p("esp/loader/entries/appliance-b+3.conf"),
        b.p("esp/loader/entries/appliance-b+0-3.conf"),
    )
    .unwrap();
    assert_eq!(inst.boot_check(now()).unwrap(), AtBoot::FellBack);
    let st = inst.read_state().unwrap();
    assert!(st.pending.is_none());
    assert!(st.bad.contains(&"0.3.0".parse().unwrap()));
    let last = st.last.unwrap();
    assert_eq!(last.result, Result_::RolledBack);
    assert!(
        last.reason.contains("did not come up healthy in 3 boots"),
        "{}",
        last.reason
    );
    // Settled once: the next boot finds nothing.
    assert_eq!(inst.boot_check(now()).unwrap(), AtBoot::Nothing);
}

#[test]
fn bad_bundles_are_refused_and_the_running_slot_keeps_its_entry() {
    let b = Box_::new();
    let inst = b.installer(Slot::A, "0.1.0");
    let v = "0.2.0".parse().unwrap();

    // Another recipe's OS: refused before anything is touched.
    let foreign = bundle(b.dir.path(), "bbb-3.0", "0.2.0", false);
    let e = inst.install(&foreign, &v, now()).unwrap_err().to_string();
    assert!(e.contains("recipe \"bbb-3.0\""), "{e}");
    assert_eq!(b.entries(), ["appliance-a.conf"]);
    assert!(inst.read_state().unwrap().pending.is_none());

    // The signed manifest says another version than os.json.
    let good = bundle(b.dir.path(), "lab", "0.2.0", false);
    let e = inst
        .install(&good, &"0.9.0".parse().unwrap(), now())
        .unwrap_err()
        .to_string();
    assert!(e.contains("signed manifest 0.9.0"), "{e}");

    // A byte changed after the root hash was taken: written, found not to
    // verify, and given no entry.
    let tampered = bundle(b.dir.path(), "lab", "0.2.0", true);
    let e = inst.install(&tampered, &v, now()).unwrap_err();
    assert_eq!(e.kind(), "mismatch", "{e}");
    assert_eq!(
        b.entries(),
        ["appliance-a.conf"],
        "no entry for a slot that does not verify"
    );

    // A slot too small for the image.
    fs::File::create(b.p("root-b")).unwrap().set_len(4096).unwrap();
    let e = inst.install(&good, &v, now()).unwrap_err().to_string();
    assert!(e.contains("slot B holds 4096"), "{e}");
    assert_eq!(b.entries(), ["appliance-a.conf"]);
}

#[test]
fn a_write_cut_short_is_tried_again_not_held_against_the_version() {
    // The child: this test binary again, told where the box is; it aborts
    // at the crash point, right after the slot was written and before its
    // entry (the stand-in for a power cut).
    if let Ok(dir) = std::env::var("OS_TEST_CHILD") {
        let dir = PathBuf::from(dir);
        let inst = OsInstaller {
            layout: Layout {
                esp: dir.join("esp"),
                slots: [dir.join("root-a"), dir.join("root-b")],
                veritysetup: Some(PathBuf::from("veritysetup")),
            },
            state_dir: dir.join("state"),
            recipe: "lab".into(),
            running: "0.1.0".parse().unwrap(),
            booted: Slot::A,
            write_rate: None,
            kernel_params: vec![],
        };
        let _ = inst.install(
            &dir.join("b-lab-0.2.0-false/bundle.tar"),
            &"0.2.0".parse().unwrap(),
            now(),
        );
        return;
    }
    let b = Box_::new();
    let bundle = bundle(b.dir.path(), "lab", "0.2.0", false);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_write_cut_short_is_tried_again_not_held_against_the_version",
            "--nocapture",
        ])
        .env("OS_TEST_CHILD", b.dir.path())
        .env("APPLIANCE_OS_CRASH_AT", "written")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "it was to abort: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(b.entries(), ["appliance-a.conf"], "the half-done slot has no entry");
    let inst = b.installer(Slot::A, "0.1.0");
    assert_eq!(inst.read_state().unwrap().pending.unwrap().step, Step::Writing);
    assert_eq!(inst.boot_check(now()).unwrap(), AtBoot::Interrupted);
    let st = inst.read_state().unwrap();
    assert!(st.pending.is_none() && st.bad.is_empty());
    assert_eq!(st.last.as_ref().unwrap().result, Result_::Failed);
    // And the next try goes through.
    inst.install(&bundle, &"0.2.0".parse().unwrap(), now()).unwrap();
    assert_eq!(b.entries(), ["appliance-a.conf", "appliance-b+3.conf"]);
}

#[test]
fn hardware_params_go_into_the_running_slots_entry_and_the_new_one() {
    let b = Box_::new();
    let params = vec!["nowatchdog".to_string()];
    let entries = b.p("esp/loader/entries");
    fs::write(
        entries.join("appliance-a.conf"),
        "title   City node 0.1.0 (lab, slot A)\nversion 1\noptions root=/dev/mapper/root ro\n",
    )
    .unwrap();
    let mut inst = b.installer(Slot::A, "0.1.0");
    inst.kernel_params = params.clone();
    // The update's new entry carries them from its first boot.
    inst.install(
        &bundle(b.dir.path(), "lab", "0.2.0", false),
        &"0.2.0".parse().unwrap(),
        now(),
    )
    .unwrap();
    let new = fs::read_to_string(entries.join("appliance-b+3.conf")).unwrap();
    assert!(
        new.lines()
            .any(|l| l.starts_with("options ") && l.ends_with(" nowatchdog")),
        "{new}"
    );
    // The running slot's entry gets them, name (and tries) unchanged; once.
    assert_eq!(inst.add_kernel_params(&params).unwrap(), ["appliance-a.conf"]);
    assert_eq!(
        fs::read_to_string(entries.join("appliance-a.conf")).unwrap(),
        "title   City node 0.1.0 (lab, slot A)\nversion 1\noptions root=/dev/mapper/root ro nowatchdog\n"
    );
    assert!(inst.add_kernel_params(&params).unwrap().is_empty());
    assert_eq!(b.entries(), ["appliance-a.conf", "appliance-b+3.conf"]);
    // Booted from B (a trial): A, the way back, is not touched.
    let on_b = b.installer(Slot::B, "0.2.0");
    let more = vec!["nowatchdog".to_string(), "pcie_aspm=off".to_string()];
    assert_eq!(on_b.add_kernel_params(&more).unwrap(), ["appliance-b+3.conf"]);
    assert!(
        !fs::read_to_string(entries.join("appliance-a.conf"))
            .unwrap()
            .contains("pcie_aspm")
    );
    assert!(
        fs::read_to_string(entries.join("appliance-b+3.conf"))
            .unwrap()
            .contains(" nowatchdog pcie_aspm=off\n")
    );
}
