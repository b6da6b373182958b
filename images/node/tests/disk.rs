//! Install, update, bless and boot state on disk image files, read back by
//! independent tools: sfdisk (util-linux), fsck.vfat (dosfstools), mtools and
//! blkid. A tool that is missing fails the test (scripts/debian-packages.txt
//! lists them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bulwark_image::{build, generate_key_pair, sign, BuildSpec, NodeInfo, SigningKey, TrustPolicy};
use bulwark_node_image::booted::{
    booted_image_identity, booted_image_identity_from_efivars, encode_string_var,
    ENTRY_SELECTED_VAR, LOADER_GUID,
};
use bulwark_node_image::build::{build_node_image, NodeBuildSpec};
use bulwark_node_image::disk::{esp::Esp, DiskError};
use bulwark_node_image::install::{
    bless, boot_state, install, read_node_image, update, InstallOptions, NodeImagePayload,
    SlotState, SYSTEMD_BOOT,
};
use bulwark_node_image::measure::{predict, MeasureOptions};
use bulwark_node_image::pe::{authenticode_sha256, PeImage};
use bulwark_node_image::NodeImageError;
use common::{fake_kernel, input, SD_BOOT, STUB};
use serde_json::Value;
use sha2::{Digest, Sha384};

const MIB: u64 = 1 << 20;

struct Fx {
    dir: tempfile::TempDir,
    key: SigningKey,
    public: PathBuf,
    trust: TrustPolicy,
    /// A stand-in kernel (a PE file) for `build`.
    kernel: PathBuf,
}

/// The fixture, or None (after a loud message) where systemd-boot-efi, whose
/// stub and boot manager `build` needs, is not installed.
fn fx() -> Option<Fx> {
    let kernel_bytes = fake_kernel()?;
    input(STUB, "systemd-boot-efi")?;
    let dir = tempfile::tempdir().unwrap();
    let (private, public, pk) = generate_key_pair(&dir.path().join("keys")).unwrap();
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, kernel_bytes).unwrap();
    Some(Fx {
        key: SigningKey::from_pem_file(&private).unwrap(),
        public,
        trust: TrustPolicy::single(pk),
        kernel,
        dir,
    })
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

impl Fx {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A signed node image of `version`, as `bulwark-node-image build` makes
    /// it (stand-in kernel, 700 KB initrd of a pattern, the default .osrel,
    /// systemd-boot as the bootloader component); its UKI is at
    /// [`Fx::uki_path`].
    fn bundle(&self, version: u64) -> PathBuf {
        self.build_bundle(version, Some(PathBuf::from(SD_BOOT)))
    }

    fn build_bundle(&self, version: u64, boot_manager: Option<PathBuf>) -> PathBuf {
        let initrd = self.path(&format!("initrd-{version}"));
        std::fs::write(&initrd, pattern(700_000, version as u8)).unwrap();
        let out = self.path(&format!("node-{version}.bwi"));
        let spec = NodeBuildSpec {
            name: "bulwark-node".into(),
            version,
            created: Some(1_700_000_000),
            kernel: self.kernel.clone(),
            initrd,
            cmdline: Some("console=ttyS0".into()),
            osrel: None,
            uname: None,
            stub: PathBuf::from(STUB),
            boot_manager,
            secure_boot: false,
            secure_boot_signing: None,
            uki_out: Some(self.uki_path(version)),
        };
        build_node_image(&spec, &out).unwrap();
        sign(&out, &self.key, &|_| {}).unwrap();
        out
    }

    fn uki_path(&self, version: u64) -> PathBuf {
        self.path(&format!("uki-{version}.efi"))
    }

    /// The UKI that `build` made for `version`.
    fn uki(&self, version: u64) -> Vec<u8> {
        std::fs::read(self.uki_path(version)).unwrap()
    }

    /// A signed node image of `version` with `uki_bytes` as its UKI (for the
    /// firmware tests, whose UKIs are made with objcopy) and systemd-boot as
    /// its bootloader.
    fn bundle_of(&self, version: u64, uki_bytes: &[u8]) -> PathBuf {
        let uki = self.path(&format!("raw-uki-{version}.efi"));
        std::fs::write(&uki, uki_bytes).unwrap();
        let out = self.path(&format!("raw-node-{version}.bwi"));
        let bm = std::fs::read(SD_BOOT).unwrap();
        let spec = bulwark_image::NodeBuildSpec {
            name: "bulwark-node".into(),
            version,
            created: 1_700_000_000,
            uki,
            bootloader: Some(PathBuf::from(SD_BOOT)),
            node: NodeInfo {
                boot_manager_authenticode_sha256: Some(authenticode_sha256(&bm).unwrap()),
                // The stand-in slots of the first firmware test have no
                // .linux, so nothing to predict: a placeholder (install and
                // update do not read the prediction).
                pcrs: predicted_pcrs(uki_bytes, &bm).unwrap_or_else(|| [(11, [0u8; 32])].into()),
                secure_boot: false,
                uki_authenticode_sha256: authenticode_sha256(uki_bytes).unwrap(),
            },
        };
        bulwark_image::build_node(&spec, &out, &|_| {}).unwrap();
        sign(&out, &self.key, &|_| {}).unwrap();
        out
    }

    /// A signed tenant image (kernel component), trusted by the same key.
    fn tenant_bundle(&self, version: u64) -> PathBuf {
        let kernel = self.path(&format!("tenant-kernel-{version}"));
        std::fs::write(&kernel, pattern(300_000, version as u8)).unwrap();
        let out = self.path(&format!("tenant-{version}.bwi"));
        let spec = BuildSpec {
            name: "bulwark-node".into(),
            version,
            created: 1_700_000_000,
            kernel,
            initrd: None,
            cmdline: None,
            config: None,
            rootfs: None,
        };
        build(&spec, &out, &|_| {}).unwrap();
        sign(&out, &self.key, &|_| {}).unwrap();
        out
    }

    fn payload(&self, version: u64) -> NodeImagePayload {
        read_node_image(&self.bundle(version), &self.trust, &|_| {}).unwrap()
    }

    fn installed(&self, version: u64) -> PathBuf {
        let disk = self.path("disk.img");
        let opts = InstallOptions {
            esp_mib: 64,
            create_size: Some(128 * MIB),
        };
        install(&self.payload(version), &disk, &opts, &|_| {}).unwrap();
        disk
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_bulwark-node-image"))
            .args(args)
            .output()
            .unwrap()
    }
}

/// The PCRs `build` would predict for `uki` started by `bm`; None for a
/// "UKI" that is not one.
fn predicted_pcrs(uki: &[u8], bm: &[u8]) -> Option<std::collections::BTreeMap<u32, [u8; 32]>> {
    let p = predict(
        uki,
        &MeasureOptions {
            secure_boot: Some(false),
            boot_manager: Some(bm),
        },
    )
    .ok()?;
    p.pcrs
        .iter()
        .map(|(i, v)| {
            let mut d = [0u8; 32];
            hex::decode_to_slice(&v.sha256, &mut d).ok()?;
            Some((*i, d))
        })
        .collect()
}

/// The `.osrel` section of a UKI.
fn osrel_of(uki: &[u8]) -> String {
    let pe = PeImage::parse(uki).unwrap();
    let s = pe.section(".osrel").unwrap().expect("no .osrel section");
    let raw = s.raw_data(uki).unwrap();
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8(raw[..end].to_vec()).unwrap()
}

fn tool(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (install it: scripts/debian-packages.txt)"));
    out
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let out = tool(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copy the ESP (partition 1 at 1 MiB) out of a disk image.
fn extract_esp(disk: &Path, esp_mib: u64) -> PathBuf {
    let bytes = std::fs::read(disk).unwrap();
    let out = disk.with_extension("esp");
    std::fs::write(&out, &bytes[MIB as usize..((1 + esp_mib) * MIB) as usize]).unwrap();
    out
}

fn sha384(b: &[u8]) -> Vec<u8> {
    Sha384::digest(b).to_vec()
}

#[test]
fn layout_read_back_by_sfdisk_fsck_mtools_blkid() {
    let Some(f) = fx() else { return };
    let disk = f.installed(5);
    let d = disk.to_str().unwrap();

    let v: Value = serde_json::from_str(&ok("sfdisk", &["--json", d])).unwrap();
    let t = &v["partitiontable"];
    assert_eq!(t["label"], "gpt");
    assert_eq!(t["sectorsize"], 512);
    assert_eq!(t["firstlba"], 34);
    assert_eq!(t["lastlba"], 128 * 2048 - 34);
    let p = t["partitions"].as_array().unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[0]["start"], 2048);
    assert_eq!(p[0]["size"], 64 * 2048);
    assert_eq!(p[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(p[0]["name"], "ESP");
    assert_eq!(p[1]["start"], 65 * 2048);
    // The rest, in whole MiB, less the last MiB (backup GPT).
    assert_eq!(p[1]["size"], 62 * 2048);
    assert_eq!(p[1]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    assert_eq!(p[1]["name"], "bulwark-state");
    // sfdisk's own consistency check (both headers, CRCs, overlap).
    let verify = ok("sfdisk", &["--verify", d]);
    assert!(verify.contains("No errors detected"), "{verify}");

    let esp = extract_esp(&disk, 64);
    let e = esp.to_str().unwrap();
    let fsck = ok("fsck.vfat", &["-n", e]);
    assert!(fsck.contains("files"), "{fsck}");
    let blkid = ok("blkid", &["-p", "-o", "export", e]);
    assert!(blkid.contains("TYPE=vfat"), "{blkid}");
    assert!(blkid.contains("LABEL=BULWARK-ESP"), "{blkid}");
    assert!(blkid.contains("VERSION=FAT32"), "{blkid}");

    let linux = ok("mdir", &["-b", "-i", e, "::/EFI/Linux"]);
    let mut files: Vec<&str> = linux.lines().collect();
    files.sort();
    assert_eq!(
        files,
        [
            "::/EFI/Linux/bulwark-node-5.efi",
            "::/EFI/Linux/bulwark-node-5.manifest"
        ],
        "{linux}"
    );
    // The signed manifest: the bundle up to its first component (header page,
    // signature page, manifest padded to 4 KiB).
    let bundle = std::fs::read(f.path("node-5.bwi")).unwrap();
    let manifest_len = u64::from_le_bytes(bundle[16..24].try_into().unwrap());
    let head = bundle[..(8192 + manifest_len.div_ceil(4096) * 4096) as usize].to_vec();
    let conf = ok("mtype", &["-i", e, "::/loader/loader.conf"]);
    assert!(
        conf.contains("timeout 0\ndefault bulwark-node-*\n"),
        "{conf}"
    );
    for (inside, want) in [
        ("::/EFI/Linux/bulwark-node-5.efi", f.uki(5)),
        ("::/EFI/Linux/bulwark-node-5.manifest", head),
        ("::/EFI/BOOT/BOOTX64.EFI", std::fs::read(SD_BOOT).unwrap()),
        (
            "::/EFI/systemd/systemd-bootx64.efi",
            std::fs::read(SD_BOOT).unwrap(),
        ),
    ] {
        let out = f.path("copied");
        let _ = std::fs::remove_file(&out);
        ok("mcopy", &["-i", e, inside, out.to_str().unwrap()]);
        assert_eq!(
            sha384(&std::fs::read(&out).unwrap()),
            sha384(&want),
            "{inside}"
        );
    }
    let rec = ok("mdir", &["-b", "-i", e, "::/loader/bulwark"]);
    assert!(rec.contains("floor-a") && rec.contains("floor-b"), "{rec}");

    // The state partition's first MiB is zeroed: nothing for blkid to find.
    let bytes = std::fs::read(&disk).unwrap();
    let state = (65 * MIB) as usize;
    assert!(bytes[state..state + MIB as usize].iter().all(|b| *b == 0));

    // mtools through the whole disk, at the partition's offset.
    let whole = format!("{d}@@1M");
    assert!(ok("mdir", &["-b", "-i", &whole, "::/EFI/Linux"]).contains("bulwark-node-5.efi"));
}

#[test]
fn cli_install_json_and_tampered_bundle_leaves_disk_untouched() {
    let Some(f) = fx() else { return };
    let bundle = f.bundle(3);
    let disk = f.path("disk.img");
    let (b, d, p) = (
        bundle.to_str().unwrap(),
        disk.to_str().unwrap(),
        f.public.to_str().unwrap(),
    );
    let base = [
        "--json",
        "install",
        b,
        "--trust",
        p,
        "--disk",
        d,
        "--esp-mib",
        "64",
    ];

    // No --create-size and no file: an error, nothing created.
    let out = f.cli(&base);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!disk.exists());

    let mut args = base.to_vec();
    args.extend(["--create-size", "128M"]);
    let out = f.cli(&args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["version"], 3);
    assert_eq!(v["entry"], "bulwark-node-3.efi");
    assert_eq!(v["uki_sha384"], hex::encode(sha384(&f.uki(3))));
    assert_eq!(v["boot_manager"], "signed bootloader component");
    assert_eq!(
        v["boot_manager_sha384"],
        hex::encode(sha384(&std::fs::read(SD_BOOT).unwrap()))
    );
    let before = std::fs::read(&disk).unwrap();

    // One flipped byte in the UKI inside the bundle: refused (exit 1)
    // before the disk is opened.
    let mut bad = std::fs::read(&bundle).unwrap();
    let at = bad.len() - 1000;
    bad[at] ^= 1;
    let tampered = f.path("tampered.bwi");
    std::fs::write(&tampered, &bad).unwrap();
    let mut args = base.to_vec();
    args[2] = tampered.to_str().unwrap();
    let out = f.cli(&args);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["refused"], true);
    assert_eq!(std::fs::read(&disk).unwrap(), before, "the disk changed");

    // An untrusted key: refused, disk unchanged.
    let other = f.path("other");
    generate_key_pair(&other).unwrap();
    let mut args = base.to_vec();
    let op = other.join("signing.pub");
    args[4] = op.to_str().unwrap();
    let out = f.cli(&args);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(std::fs::read(&disk).unwrap(), before);
}

/// `install --state-files DIR`: the state partition is ext4 holding DIR's files,
/// as e2fsprogs' own `debugfs` reads them at the partition's offset; the report says
/// it is not encrypted. A seed that is not a directory is refused.
#[test]
fn cli_install_formats_and_seeds_the_state_partition() {
    let Some(f) = fx() else { return };
    if Command::new("debugfs").arg("-V").output().is_err() {
        eprintln!("skipped: no debugfs (e2fsprogs)");
        return;
    }
    let bundle = f.bundle(4);
    let disk = f.path("seeded.img");
    let seed = f.path("seed");
    std::fs::create_dir_all(seed.join("tls")).unwrap();
    std::fs::write(seed.join("tls/server.pem"), b"CERT-FOR-THE-API\n").unwrap();
    std::fs::write(seed.join("provider.pub"), b"PROVIDER-KEY\n").unwrap();
    let (b, d, p, s) = (
        bundle.to_str().unwrap(),
        disk.to_str().unwrap(),
        f.public.to_str().unwrap(),
        seed.to_str().unwrap(),
    );
    let args = [
        "--json",
        "install",
        b,
        "--trust",
        p,
        "--disk",
        d,
        "--esp-mib",
        "64",
        "--create-size",
        "160M",
        "--state-files",
        s,
    ];
    let out = f.cli(&args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"]["filesystem"], "ext4");
    assert_eq!(v["state"]["files"], 2);
    assert_eq!(v["state"]["encrypted"], false);
    let offset = v["state"]["offset"].as_u64().unwrap();
    let state = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "bulwark-state")
        .unwrap();
    assert_eq!(offset, state["start"].as_u64().unwrap() * 512);
    // The partition alone, cut out of the disk image, read by debugfs.
    let part = f.path("state.ext4");
    let bytes = std::fs::read(&disk).unwrap();
    let len = state["sectors"].as_u64().unwrap() * 512;
    std::fs::write(&part, &bytes[offset as usize..(offset + len) as usize]).unwrap();
    let pp = part.to_str().unwrap();
    assert_eq!(
        ok("debugfs", &["-R", "cat /tls/server.pem", pp]),
        "CERT-FOR-THE-API\n"
    );
    assert_eq!(
        ok("debugfs", &["-R", "cat /provider.pub", pp]),
        "PROVIDER-KEY\n"
    );
    assert!(ok("blkid", &["-o", "export", pp]).contains("LABEL=bulwark-state"));

    // A seed that is not a directory: a clear error, exit 2, before the disk is
    // touched.
    let before = std::fs::read(&disk).unwrap();
    let mut bad = args;
    bad[12] = p;
    let out = f.cli(&bad);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not a directory"),
        "{out:?}"
    );
    assert!(std::fs::read(&disk).unwrap() == before, "the disk changed");
}

#[test]
fn tenant_image_or_node_image_without_bootloader_refused_disk_untouched() {
    let Some(f) = fx() else { return };
    let disk = f.installed(3);
    let before = std::fs::read(&disk).unwrap();
    let tenant = f.tenant_bundle(4);
    let (d, p) = (disk.to_str().unwrap(), f.public.to_str().unwrap());

    // The library: a refusal naming the bundle.
    let e = read_node_image(&tenant, &f.trust, &|_| {}).unwrap_err();
    assert!(e.is_refusal(), "{e}");
    assert!(
        e.to_string()
            .contains("is a tenant image, not a node image"),
        "{e}"
    );

    // install and update through the CLI: exit 1, refused, disk unchanged; a
    // disk that does not exist is not created.
    let fresh = f.path("fresh.img");
    for args in [
        vec![
            "--json",
            "install",
            tenant.to_str().unwrap(),
            "--trust",
            p,
            "--disk",
            d,
            "--esp-mib",
            "64",
        ],
        vec![
            "--json",
            "install",
            tenant.to_str().unwrap(),
            "--trust",
            p,
            "--disk",
            fresh.to_str().unwrap(),
            "--create-size",
            "128M",
        ],
        vec![
            "--json",
            "update",
            tenant.to_str().unwrap(),
            "--trust",
            p,
            "--disk",
            d,
        ],
    ] {
        let out = f.cli(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (v["ok"].clone(), v["refused"].clone()),
            (false.into(), true.into())
        );
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("tenant image, not a node image"),
            "{v}"
        );
        assert_eq!(std::fs::read(&disk).unwrap(), before, "the disk changed");
        assert!(!fresh.exists());
    }
    // Without --json the message goes to stderr.
    let out = f.cli(&[
        "install",
        tenant.to_str().unwrap(),
        "--trust",
        p,
        "--disk",
        d,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenant image, not a node image"));

    // A node image built with --no-boot-manager: refused, with the reason.
    let bare = f.build_bundle(4, None);
    let e = read_node_image(&bare, &f.trust, &|_| {}).unwrap_err();
    assert!(e.is_refusal(), "{e}");
    let s = e.to_string();
    assert!(
        s.contains("no bootloader component") && s.contains("systemd-boot"),
        "{s}"
    );
    let out = f.cli(&[
        "--json",
        "update",
        bare.to_str().unwrap(),
        "--trust",
        p,
        "--disk",
        d,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(std::fs::read(&disk).unwrap(), before, "the disk changed");

    // The old option is gone.
    let b5 = f.bundle(5);
    let out = f.cli(&[
        "install",
        b5.to_str().unwrap(),
        "--trust",
        p,
        "--boot-manager",
        SD_BOOT,
        "--disk",
        d,
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(std::fs::read(&disk).unwrap(), before, "the disk changed");
}

/// Every version's UKI carries the same IMAGE_ID and its own IMAGE_VERSION,
/// which systemd-boot 252 sorts type #2 entries by, and the installed slot is
/// that UKI.
#[test]
fn built_ukis_sort_by_image_id_and_version() {
    let Some(f) = fx() else { return };
    let disk = f.installed(9);
    update(&f.payload(10), &disk, 1).unwrap();
    for v in [9, 10] {
        let o = osrel_of(&f.uki(v));
        let lines: Vec<&str> = o.lines().collect();
        assert!(lines.contains(&"ID=bulwark"), "{o}");
        assert!(lines.contains(&"IMAGE_ID=bulwark-node"), "{o}");
        assert!(
            lines.contains(&format!("IMAGE_VERSION={v}").as_str()),
            "{o}"
        );
    }
    let esp = extract_esp(&disk, 64);
    let out = f.path("slot10.efi");
    ok(
        "mcopy",
        &[
            "-i",
            esp.to_str().unwrap(),
            "::/EFI/Linux/bulwark-node-10+1.efi",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&out).unwrap(), f.uki(10));
}

#[test]
fn too_small_disk_refused_with_both_sizes() {
    let Some(f) = fx() else { return };
    let disk = f.path("small.img");
    std::fs::write(&disk, vec![0xA5u8; (64 * MIB) as usize]).unwrap();
    let opts = InstallOptions {
        esp_mib: 64,
        create_size: None,
    };
    let e = install(&f.payload(1), &disk, &opts, &|_| {}).unwrap_err();
    let s = e.to_string();
    assert!(
        matches!(e, NodeImageError::Disk(DiskError::TooSmall { .. })),
        "{s}"
    );
    assert!(
        s.contains("67108864 bytes (64 MiB)") && s.contains("102760448 bytes (98 MiB)"),
        "{s}"
    );
    assert!(e.is_refusal());
    assert!(std::fs::read(&disk).unwrap().iter().all(|b| *b == 0xA5));
    // An ESP below the FAT32 minimum.
    let opts = InstallOptions {
        esp_mib: 16,
        create_size: Some(128 * MIB),
    };
    let e = install(&f.payload(1), &disk, &opts, &|_| {}).unwrap_err();
    assert!(e.to_string().contains("FAT32 minimum"), "{e}");
}

#[test]
fn update_rollback_bless_and_failed_boot_fallback() {
    let Some(f) = fx() else { return };
    let disk = f.installed(5);

    // N+1: the tried-once entry, N is the fallback.
    let r = update(&f.payload(6), &disk, 1).unwrap();
    assert_eq!(r.entry, "bulwark-node-6+1.efi");
    assert_eq!(r.fallback, "bulwark-node-5.efi");
    assert!(r.removed.is_empty());
    let s = boot_state(&disk).unwrap();
    assert_eq!(s.floor, 5);
    assert_eq!(s.next_boot.as_ref().unwrap().file, "bulwark-node-6+1.efi");
    assert_eq!(s.fallback.as_ref().unwrap().file, "bulwark-node-5.efi");

    // N-1 and N refused; N+1 again refused (already there).
    for (v, want) in [
        (4, "rolled back"),
        (5, "already installed"),
        (6, "already installed"),
    ] {
        let e = update(&f.payload(v), &disk, 1).unwrap_err();
        assert!(e.is_refusal(), "{e}");
        let s = e.to_string().to_lowercase();
        assert!(
            s.contains(want)
                || (want == "rolled back" && s.contains("rollback") || s.contains("below")),
            "{v}: {s}"
        );
    }

    // The node booted 6 (systemd-boot renamed it) and it became healthy.
    rename_on_disk(&disk, "bulwark-node-6+1.efi", "bulwark-node-6+0-1.efi");
    let b = bless(&disk, 6).unwrap();
    assert!(!b.already);
    assert_eq!(b.entry, "bulwark-node-6.efi");
    assert_eq!(b.floor, 6);
    assert!(bless(&disk, 6).unwrap().already);
    let s = boot_state(&disk).unwrap();
    assert_eq!(s.floor, 6);
    assert_eq!(s.next_boot.unwrap().file, "bulwark-node-6.efi");
    assert_eq!(s.fallback, None);
    let files: Vec<&str> = s.slots.iter().map(|s| s.file.as_str()).collect();
    assert_eq!(files, ["bulwark-node-6.efi", "bulwark-node-5.efi"]);

    // N+2 replaces the older slot (5), never the newest good one (6).
    let r = update(&f.payload(7), &disk, 1).unwrap();
    assert_eq!(r.removed, ["bulwark-node-5.efi"]);
    assert_eq!(r.fallback, "bulwark-node-6.efi");

    // A boot of 7 that never reaches healthy: systemd-boot renamed the entry
    // and nobody blessed it. The next boot starts 6.
    rename_on_disk(&disk, "bulwark-node-7+1.efi", "bulwark-node-7+0-1.efi");
    let s = boot_state(&disk).unwrap();
    assert_eq!(s.next_boot.as_ref().unwrap().version, 6);
    assert_eq!(s.slots[1].state, SlotState::Bad { done: 1 });
    assert_eq!(s.floor, 6);

    // A fixed 8 replaces the failed 7.
    let r = update(&f.payload(8), &disk, 2).unwrap();
    assert_eq!(r.removed, ["bulwark-node-7+0-1.efi"]);
    assert_eq!(r.entry, "bulwark-node-8+2.efi");

    // The independent reader agrees, and the filesystem is clean.
    let esp = extract_esp(&disk, 64);
    let e = esp.to_str().unwrap();
    ok("fsck.vfat", &["-n", e]);
    let mut names: Vec<String> = ok("mdir", &["-b", "-i", e, "::/EFI/Linux"])
        .lines()
        .map(|l| l.trim_start_matches("::/EFI/Linux/").to_string())
        .collect();
    names.sort();
    // Each slot's signed manifest is kept, the removed slots' are gone.
    assert_eq!(
        names,
        [
            "bulwark-node-6.efi",
            "bulwark-node-6.manifest",
            "bulwark-node-8+2.efi",
            "bulwark-node-8.manifest"
        ]
    );

    // bless and boot_state work on the ESP alone (a partition device).
    assert_eq!(boot_state(&esp).unwrap().next_boot.unwrap().version, 8);
    bless(&esp, 8).unwrap();
    let s = boot_state(&esp).unwrap();
    assert_eq!(
        (s.floor, s.next_boot.unwrap().file.as_str()),
        (8, "bulwark-node-8.efi")
    );
    ok("fsck.vfat", &["-n", e]);
}

/// The identity `bulwark_image` gives the signed node image of `version`.
fn identity_of(f: &Fx, version: u64) -> (String, u64, [u8; 48], Vec<[u8; 32]>) {
    let v = bulwark_image::Bundle::open(&f.path(&format!("node-{version}.bwi")))
        .unwrap()
        .verify(&f.trust)
        .unwrap();
    (
        v.manifest().name.clone(),
        v.manifest().version,
        v.manifest_sha384(),
        v.signed_by().to_vec(),
    )
}

#[test]
fn booted_image_identity_follows_the_slot_through_renames_and_refuses_tampering() {
    let Some(f) = fx() else { return };
    let disk = f.installed(5);
    let id = |entry: &str| booted_image_identity(&disk, &f.trust, entry);
    let got = id("bulwark-node-5.efi").unwrap();
    assert_eq!(
        (
            got.name.clone(),
            got.version,
            got.manifest_sha384,
            got.signer_key_ids.clone()
        ),
        identity_of(&f, 5)
    );
    assert_eq!(got.entry, "bulwark-node-5.efi");
    // systemd-boot's entry ids: any case, with a path.
    assert_eq!(id("\\EFI\\Linux\\BULWARK-NODE-5.EFI").unwrap(), got);

    // Through efivarfs.
    let efivars = f.path("efivars");
    std::fs::create_dir(&efivars).unwrap();
    let var = efivars.join(format!("{ENTRY_SELECTED_VAR}-{LOADER_GUID}"));
    let e = booted_image_identity_from_efivars(&disk, &f.trust, &efivars).unwrap_err();
    assert!(e.to_string().contains("LoaderEntrySelected"), "{e}");
    std::fs::write(&var, encode_string_var("bulwark-node-5.efi")).unwrap();
    assert_eq!(
        booted_image_identity_from_efivars(&disk, &f.trust, &efivars).unwrap(),
        got
    );

    // An update to 6: its manifest is written with it and stays paired
    // through systemd-boot's rename and the blessing.
    update(&f.payload(6), &disk, 1).unwrap();
    let six = identity_of(&f, 6);
    for entry in ["bulwark-node-6+1.efi", "bulwark-node-6.efi"] {
        let g = id(entry).unwrap();
        assert_eq!(
            (g.name, g.version, g.manifest_sha384, g.signer_key_ids),
            six
        );
        assert_eq!(g.entry, "bulwark-node-6+1.efi");
    }
    rename_on_disk(&disk, "bulwark-node-6+1.efi", "bulwark-node-6+0-1.efi");
    assert_eq!(
        id("bulwark-node-6+0-1.efi").unwrap().entry,
        "bulwark-node-6+0-1.efi"
    );
    bless(&disk, 6).unwrap();
    let g = id("bulwark-node-6+0-1.efi").unwrap();
    assert_eq!((g.entry.as_str(), g.version), ("bulwark-node-6.efi", 6));
    // The older slot is still stated correctly.
    assert_eq!(id("bulwark-node-5.efi").unwrap(), got);

    let refused = |r: Result<_, NodeImageError>, want: &str| {
        let e = r.unwrap_err();
        assert!(e.is_refusal(), "{e}");
        assert!(e.to_string().contains(want), "want {want:?}: {e}");
    };
    // Not a slot, no such slot.
    refused(id("other.efi"), "not a Bulwark node slot");
    refused(id("bulwark-node-9.efi"), "no slot of version 9");
    // Another key's policy.
    let (_, _, other) = generate_key_pair(&f.path("other-keys")).unwrap();
    refused(
        booted_image_identity(&disk, &TrustPolicy::single(other), "bulwark-node-6.efi"),
        "signed manifest",
    );

    // Tampered: a byte of the manifest, of the signature, the UKI; then no
    // manifest at all. Each on a copy of the ESP.
    let esp = extract_esp(&disk, 64);
    let e = esp.to_str().unwrap();
    let manifest = f.path("m6");
    ok(
        "mcopy",
        &[
            "-i",
            e,
            "::/EFI/Linux/bulwark-node-6.manifest",
            manifest.to_str().unwrap(),
        ],
    );
    let good = std::fs::read(&manifest).unwrap();
    let put = |name: &str, bytes: &[u8]| {
        let copy = f.path("copy.esp");
        std::fs::copy(&esp, &copy).unwrap();
        let src = f.path("put");
        std::fs::write(&src, bytes).unwrap();
        let c = copy.to_str().unwrap();
        ok(
            "mcopy",
            &[
                "-o",
                "-i",
                c,
                src.to_str().unwrap(),
                &format!("::/EFI/Linux/{name}"),
            ],
        );
        copy
    };
    for (at, want) in [
        (8192 + 30, "signed manifest"),
        (4096 + 60, "signed manifest"),
    ] {
        let mut bad = good.clone();
        bad[at] ^= 1;
        let copy = put("bulwark-node-6.manifest", &bad);
        refused(
            booted_image_identity(&copy, &f.trust, "bulwark-node-6.efi"),
            want,
        );
    }
    // 5's manifest under 6's name: signed, but of another version (and UKI).
    let m5 = std::fs::read(f.path("node-5.bwi")).unwrap()[..good.len()].to_vec();
    let copy = put("bulwark-node-6.manifest", &m5);
    refused(
        booted_image_identity(&copy, &f.trust, "bulwark-node-6.efi"),
        "bulwark-node-6",
    );
    // A UKI that is not the signed one (same length).
    let mut uki = f.uki(6);
    let n = uki.len();
    uki[n / 2] ^= 0xff;
    let copy = put("bulwark-node-6.efi", &uki);
    refused(
        booted_image_identity(&copy, &f.trust, "bulwark-node-6.efi"),
        "does not hash to the SHA-384 signed",
    );
    let copy = put("bulwark-node-6.efi", &uki[..n - 1]);
    refused(
        booted_image_identity(&copy, &f.trust, "bulwark-node-6.efi"),
        "not the signed UKI",
    );
    // No manifest (a disk written before manifests were kept).
    let copy = f.path("copy.esp");
    std::fs::copy(&esp, &copy).unwrap();
    ok(
        "mdel",
        &[
            "-i",
            copy.to_str().unwrap(),
            "::/EFI/Linux/bulwark-node-6.manifest",
        ],
    );
    refused(
        booted_image_identity(&copy, &f.trust, "bulwark-node-6.efi"),
        "no signed manifest",
    );
    // The untouched copy still answers.
    assert_eq!(
        booted_image_identity(&esp, &f.trust, "bulwark-node-6.efi")
            .unwrap()
            .version,
        6
    );
}

/// Rename an entry the way systemd-boot does at boot, with mtools (not this
/// crate) on the disk image at the ESP's offset.
fn rename_on_disk(disk: &Path, from: &str, to: &str) {
    let whole = format!("{}@@1M", disk.display());
    ok("mren", &["-i", &whole, &format!("::/EFI/Linux/{from}"), to]);
}

#[test]
fn corrupt_gpt_or_fat_is_a_clear_error() {
    let Some(f) = fx() else { return };
    let disk = f.installed(2);
    let p6 = f.payload(3);
    let clean = std::fs::read(&disk).unwrap();

    // Both GPT headers gone.
    let mut b = clean.clone();
    b[512..1024].fill(0);
    let n = b.len();
    b[n - 512..].fill(0);
    std::fs::write(&disk, &b).unwrap();
    let e = update(&p6, &disk, 1).unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("no valid GPT") || s.contains("not a usable FAT32"),
        "{s}"
    );
    assert!(boot_state(&disk).is_err());

    // Primary header gone, backup intact: still works (and sfdisk agrees).
    let mut b = clean.clone();
    b[512..1024].fill(0);
    std::fs::write(&disk, &b).unwrap();
    assert_eq!(boot_state(&disk).unwrap().floor, 2);

    // The ESP's boot sector zeroed.
    let mut b = clean.clone();
    b[MIB as usize..MIB as usize + 512].fill(0);
    std::fs::write(&disk, &b).unwrap();
    let s = update(&p6, &disk, 1).unwrap_err().to_string();
    assert!(s.contains("not a usable FAT32"), "{s}");

    // The FAT scrambled: an error or a clean result, never a panic.
    for seed in 0..8u8 {
        let mut b = clean.clone();
        let fat = MIB as usize + 32 * 512;
        for (i, x) in b[fat..fat + 64 * 1024].iter_mut().enumerate() {
            *x = pattern(1, (i as u8) ^ seed)[0];
        }
        std::fs::write(&disk, &b).unwrap();
        let _ = boot_state(&disk);
        let _ = update(&p6, &disk, 1);
    }

    // Both rollback records damaged: refused, not treated as "no floor".
    std::fs::write(&disk, &clean).unwrap();
    let esp = extract_esp(&disk, 64);
    {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&esp)
            .unwrap();
        let len = file.metadata().unwrap().len();
        let e = Esp::open_at(&esp, &file, 0, len).unwrap();
        e.overwrite_in_place("loader/bulwark/floor-a", &[1u8; 512])
            .unwrap();
        e.overwrite_in_place("loader/bulwark/floor-b", &[2u8; 512])
            .unwrap();
        e.close().unwrap();
    }
    let s = update(&p6, &esp, 1).unwrap_err().to_string();
    assert!(s.contains("no valid anti-rollback record"), "{s}");
}

/// Real firmware: OVMF boots the disk through /EFI/BOOT/BOOTX64.EFI, and
/// systemd-boot 252 starts the slot on trial, counts the try down by renaming
/// it on our FAT (`+1` -> `+0-1`), and falls back to the good slot when the
/// trial slot is bad. No kernel is needed: slot 6 is a copy of systemd-boot
/// (an EFI program with an .osrel, so a type #2 entry) which, started as the
/// trial, sees itself bad and starts slot 5; slot 5 is the UKI stub with no
/// .linux section, which prints "Unable to locate embedded .linux section".
/// Both carry systemd-boot's .osrel so that they sort by file name, as UKIs
/// with the same IMAGE_ID and IMAGE_VERSION = the version do.
///
/// Needs qemu-system-x86, ovmf, binutils, systemd-boot-efi; about 10-30 s
/// under TCG:
/// `cargo test -p bulwark-node-image --test disk -- --ignored ovmf`
#[test]
#[ignore = "boots OVMF under QEMU (10-30 s)"]
fn ovmf_systemd_boot_counts_tries_and_falls_back() {
    let Some(f) = fx() else { return };
    let osrel = f.path("osrel");
    ok(
        "objcopy",
        &[
            "-O",
            "binary",
            "--only-section=.osrel",
            SYSTEMD_BOOT,
            osrel.to_str().unwrap(),
        ],
    );
    let five = f.path("five.efi");
    ok(
        "objcopy",
        &[
            "--add-section",
            &format!(".osrel={}", osrel.display()),
            "--change-section-vma",
            ".osrel=0x1a000",
            "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
            five.to_str().unwrap(),
        ],
    );
    let p5 = read_node_image(
        &f.bundle_of(5, &std::fs::read(&five).unwrap()),
        &f.trust,
        &|_| {},
    )
    .unwrap();
    let p6 = read_node_image(
        &f.bundle_of(6, &std::fs::read(SYSTEMD_BOOT).unwrap()),
        &f.trust,
        &|_| {},
    )
    .unwrap();
    let disk = f.path("disk.img");
    let opts = InstallOptions {
        esp_mib: 64,
        create_size: Some(128 * MIB),
    };
    install(&p5, &disk, &opts, &|_| {}).unwrap();
    update(&p6, &disk, 1).unwrap();

    let vars = f.path("vars.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let serial = f.path("serial.log");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .spawn()
        .expect("qemu-system-x86_64");
    let t0 = std::time::Instant::now();
    let mut seen = false;
    while t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let log = std::fs::read(&serial).unwrap_or_default();
        if String::from_utf8_lossy(&log).contains("Unable to locate embedded .linux section") {
            seen = true;
            break;
        }
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    let log = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    assert!(seen, "slot 5 never started; serial:\n{log}");
    assert!(!log.contains("Failed to rename"), "{log}");
    eprintln!(
        "slot 5 started {:.1} s after QEMU",
        t0.elapsed().as_secs_f64()
    );

    let s = boot_state(&disk).unwrap();
    assert_eq!(s.slots[0].file, "bulwark-node-5.efi");
    assert_eq!(s.slots[1].file, "bulwark-node-6+0-1.efi");
    assert_eq!(s.slots[1].state, SlotState::Bad { done: 1 });
    assert_eq!(s.next_boot.unwrap().version, 5);
    ok(
        "fsck.vfat",
        &["-n", extract_esp(&disk, 64).to_str().unwrap()],
    );
}

#[test]
fn cli_update_bless_status_json_and_exit_codes() {
    let Some(f) = fx() else { return };
    let disk = f.installed(5);
    let (d, p) = (
        disk.to_str().unwrap().to_string(),
        f.public.to_str().unwrap().to_string(),
    );
    let json = |out: &Output| -> Value {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };
    let b6 = f.bundle(6);
    let upd = |b: &Path| {
        f.cli(&[
            "--json",
            "update",
            b.to_str().unwrap(),
            "--trust",
            &p,
            "--disk",
            &d,
        ])
    };
    let out = upd(&b6);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = json(&out);
    assert_eq!(
        (v["ok"].clone(), v["entry"].clone()),
        (Value::Bool(true), "bulwark-node-6+1.efi".into())
    );
    assert_eq!(v["state"]["next_boot"]["file"], "bulwark-node-6+1.efi");
    assert_eq!(v["state"]["fallback"]["file"], "bulwark-node-5.efi");
    assert_eq!(v["state"]["slots"][0]["state"], "trying");
    assert_eq!(v["state"]["slots"][0]["left"], 1);

    let out = upd(&f.bundle(4));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v = json(&out);
    assert_eq!(
        (v["ok"].clone(), v["refused"].clone()),
        (Value::Bool(false), Value::Bool(true))
    );

    let out = f.cli(&["--json", "status", "--disk", &d]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = json(&out);
    assert_eq!(v["floor"], 5);
    assert_eq!(v["name"], "bulwark-node");

    let out = f.cli(&["--json", "bless", "--disk", &d, "--version", "6"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json(&out)["floor"], 6);
    let out = f.cli(&["bless", "--disk", &d, "--version", "9"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no slot of version 9"));

    let out = f.cli(&["status", "--disk", &d]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("anti-rollback floor 6") && text.contains("next boot: bulwark-node-6.efi"),
        "{text}"
    );

    // A directory is not a disk; a missing path is an I/O error (2).
    let dir = f.path("keys");
    let out = f.cli(&["--json", "status", "--disk", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(json(&out)["error"]
        .as_str()
        .unwrap()
        .contains("neither a block device nor a regular file"));
    let out = f.cli(&["status", "--disk", "/nonexistent/disk.img"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A signed node image of version `v` made by `build_node_image` (as
/// `bulwark-node-image build` makes it: Debian's kernel on the systemd 252
/// stub, the default `.osrel`, systemd-boot as the bootloader component)
/// whose initrd prints `@@SLOT <v>` and powers off (the layout of
/// ../shared/lab/UEFI-TPM.md).
fn real_node_image(f: &Fx, v: u64, vmlinuz: &str, busybox: &str) -> PathBuf {
    let root = f.path(&format!("initrd{v}"));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n\
         echo \"@@SLOT {v} $(/bin/busybox cat /proc/cmdline)\"\n/bin/busybox poweroff -f\n"
    );
    std::fs::write(root.join("init"), init).unwrap();
    ok("chmod", &["+x", root.join("init").to_str().unwrap()]);
    let initrd = f.path(&format!("initrd{v}.img"));
    let sh = format!(
        "cd {} && find . | sort | cpio -o -H newc -R 0:0 --quiet | zstd -q -19 > {}",
        root.display(),
        initrd.display()
    );
    ok("sh", &["-c", &sh]);
    let out = f.path(&format!("real-node-{v}.bwi"));
    let spec = NodeBuildSpec {
        name: "bulwark-node".into(),
        version: v,
        created: Some(1_700_000_000),
        kernel: PathBuf::from(vmlinuz),
        initrd,
        cmdline: Some(format!("console=ttyS0 bulwark.slot={v}")),
        osrel: None,
        uname: None,
        stub: PathBuf::from(STUB),
        boot_manager: Some(PathBuf::from(SD_BOOT)),
        secure_boot: false,
        secure_boot_signing: None,
        uki_out: Some(f.uki_path(v)),
    };
    build_node_image(&spec, &out).unwrap();
    sign(&out, &f.key, &|_| {}).unwrap();
    let o = osrel_of(&f.uki(v));
    assert!(
        o.contains("\nIMAGE_ID=bulwark-node\n") && o.contains(&format!("\nIMAGE_VERSION={v}\n")),
        "{o}"
    );
    out
}

/// Power the disk on in OVMF until the guest powers off; the slot it printed.
fn power_on(f: &Fx, disk: &Path) -> Option<u64> {
    let vars = f.path("vars.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let serial = f.path("serial.log");
    let _ = std::fs::remove_file(&serial);
    let t0 = std::time::Instant::now();
    let st = Command::new("timeout")
        .args([
            "300",
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-m",
            "512",
            "-nodefaults",
            "-display",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .status()
        .unwrap();
    let log = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    eprintln!(
        "power-on to poweroff: {:.1} s ({st})",
        t0.elapsed().as_secs_f64()
    );
    assert!(!log.contains("Failed to rename"), "{log}");
    let at = log.find("@@SLOT ")?;
    log[at + 7..].split_whitespace().next()?.parse().ok()
}

/// Real node images from `build_node_image` (Debian's kernel and busybox, as
/// the lab uses; the default `.osrel` decides systemd-boot's order): install 5,
/// update to 6 that never becomes healthy (it powers off unblessed): the
/// next power-on boots 5 by itself. Update to 7 (replaces the bad 6), bless it
/// as the node's init would, and 7 stays the one booted.
///
/// `BULWARK_TEST_VMLINUZ=.../vmlinuz BULWARK_TEST_BUSYBOX=.../busybox-static \
///  cargo test -p bulwark-node-image --test disk -- --ignored real_ukis`
/// (the lab caches both under ~/.cache/bulwark/lab/packages); 4 boots of
/// about 10 s each under TCG.
#[test]
#[ignore = "boots real UKIs in OVMF under QEMU (about 45 s); needs BULWARK_TEST_VMLINUZ and BULWARK_TEST_BUSYBOX"]
fn ovmf_real_ukis_fall_back_then_bless() {
    let (Ok(vmlinuz), Ok(busybox)) = (
        std::env::var("BULWARK_TEST_VMLINUZ"),
        std::env::var("BULWARK_TEST_BUSYBOX"),
    ) else {
        eprintln!("skipped: set BULWARK_TEST_VMLINUZ and BULWARK_TEST_BUSYBOX");
        return;
    };
    let Some(f) = fx() else { return };
    let payload = |v: u64| {
        let bundle = real_node_image(&f, v, &vmlinuz, &busybox);
        read_node_image(&bundle, &f.trust, &|_| {}).unwrap()
    };
    let disk = f.path("disk.img");
    let opts = InstallOptions {
        esp_mib: 64,
        create_size: Some(256 * MIB),
    };
    install(&payload(5), &disk, &opts, &|_| {}).unwrap();
    assert_eq!(power_on(&f, &disk), Some(5));

    update(&payload(6), &disk, 1).unwrap();
    assert_eq!(power_on(&f, &disk), Some(6));
    let s = boot_state(&disk).unwrap();
    assert_eq!(s.slots[1].state, SlotState::Bad { done: 1 });
    assert_eq!(power_on(&f, &disk), Some(5), "no fallback to 5");

    let r = update(&payload(7), &disk, 1).unwrap();
    assert_eq!(r.removed, ["bulwark-node-6+0-1.efi"]);
    assert_eq!(power_on(&f, &disk), Some(7));
    bless(&disk, 7).unwrap();
    assert_eq!(power_on(&f, &disk), Some(7));
    let s = boot_state(&disk).unwrap();
    assert_eq!(
        (s.floor, s.slots[0].file.as_str()),
        (7, "bulwark-node-7.efi")
    );
    ok(
        "fsck.vfat",
        &["-n", extract_esp(&disk, 64).to_str().unwrap()],
    );
}
