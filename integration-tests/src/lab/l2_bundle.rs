//! Signed image bundles of the L2 guest, built and signed on the host with
//! `bulwark-image` for scenarios in which `bulwark-vmm` boots Linux inside L1.
//!
//! Two bundles hold the same initramfs and command line: one with the Debian kernel as
//! shipped (bzImage), one with the vmlinux ELF extracted from it (whose PVH note
//! `bulwark-vmm` boots through). A third file is the bzImage bundle with one kernel
//! byte flipped, which must be refused. Each comes with a `bulwark-vmm` VM config.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bulwark_image::{build, generate_key_pair, sign, BuildSpec, SigningKey};

use super::error::{LabError, Result};

/// Where the files go in L1.
pub const L1_DIR: &str = "/lab/l2";

/// The command line signed into the bundles. `panic=-1`: a panic resets at once
/// instead of hanging (bulwark-vmm exits 3). Each bundle appends `bulwark.exit=`:
/// `poweroff` (the bzImage bundle: the init runs `poweroff -f`, which enters S5
/// through the ACPI sleep control register; bulwark-vmm exits 0) or `reset` (the
/// vmlinux bundle: `reboot -f`; on hardware-reduced ACPI without EFI Linux reboots
/// by jumping to the reset vector, where bulwark-vmm's code writes the ACPI reset
/// register; bulwark-vmm exits 3).
pub const CMDLINE: &str = "console=ttyS0 panic=-1 quiet bulwark.lab=signed";

/// vCPUs of the L2 guests: the application processor comes up through INIT/SIPI.
pub const VCPUS: u8 = 2;

/// A file for L1: its path there and the host file.
pub type L1File = (String, PathBuf);

/// The LZ4 legacy frame magic (`CONFIG_KERNEL_LZ4`, Debian's choice for amd64).
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// Extracts the vmlinux ELF from a bzImage: the compressed payload is located through
/// the setup header (`setup_sects`, `payload_offset`, `payload_length`), its format
/// is recognised by its magic, and it is decompressed with Debian's `lz4` tool.
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let data = fs::read(bzimage).map_err(LabError::io(format!("reading {}", bzimage.display())))?;
    let bad = |reason: String| LabError::UnexpectedOutput {
        command: format!("reading the bzImage header of {}", bzimage.display()),
        reason,
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    if data.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err(bad("no HdrS setup header".into()));
    }
    let setup_sects = usize::from(*data.get(0x1f1).unwrap_or(&0)).max(4);
    let (Some(offset), Some(length)) = (u32_at(0x248), u32_at(0x24c)) else {
        return Err(bad("setup header too short".into()));
    };
    let start = (setup_sects + 1) * 512 + offset as usize;
    // The build appends the uncompressed size (4 bytes) to the compressed stream.
    let payload = start
        .checked_add(length as usize)
        .and_then(|end| data.get(start..end.checked_sub(4)?))
        .ok_or_else(|| bad(format!("payload {start:#x}+{length:#x} outside the file")))?;
    if payload.get(..4) != Some(LZ4_LEGACY_MAGIC.as_slice()) {
        return Err(bad(format!(
            "the payload is not LZ4 (magic {:02x?}); only CONFIG_KERNEL_LZ4 kernels are handled",
            payload.get(..4)
        )));
    }
    let lz4 = super::host_command::find_program("lz4").ok_or_else(|| LabError::Prerequisite {
        what: "lz4 (to extract vmlinux from the Debian kernel)".into(),
        hint: "install Debian's lz4: run scripts/setup".into(),
    })?;
    let out_file =
        fs::File::create(out).map_err(LabError::io(format!("creating {}", out.display())))?;
    let mut child = Command::new(&lz4)
        .args(["-dc", "-"])
        .stdin(Stdio::piped())
        .stdout(out_file)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LabError::io(format!("starting {}", lz4.display())))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let written = stdin.write_all(payload);
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(LabError::io("waiting for lz4"))?;
    if !output.status.success() || written.is_err() {
        return Err(LabError::Command {
            command: format!("{} -dc -", lz4.display()),
            status: output.status.to_string(),
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    // The first four bytes are enough to tell an ELF file (the whole is 50 MB).
    let mut head = [0u8; 4];
    fs::File::open(out)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .map_err(LabError::io(format!("reading {}", out.display())))?;
    if &head != b"\x7fELF" {
        return Err(bad("the decompressed payload is not an ELF file".into()));
    }
    Ok(())
}

/// A `bulwark-image` error as a lab error naming the step.
pub(super) fn image_error(what: &str) -> impl FnOnce(bulwark_image::ImageError) -> LabError + '_ {
    move |e| LabError::UnexpectedOutput {
        command: format!("bulwark-image: {what}"),
        reason: e.to_string(),
    }
}

/// Writes a file, naming it on failure.
pub(super) fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    fs::write(path, contents).map_err(LabError::io(format!("writing {}", path.display())))
}

/// A `bulwark-vmm` VM config (JSON) booting `bundle` in L1, trusting `/lab/l2/signing.pub`.
pub fn vm_config(bundle: &str, serial_log: &str) -> String {
    format!(
        r#"{{"machine": {{"vcpus": {VCPUS}, "mem_mib": 256, "mmio64_gib": 64, "cpuid_policy": "bulwark-default-v1"}},
 "boot_source": {{"kind": "bundle", "path": "{L1_DIR}/{bundle}", "trusted_keys": ["{L1_DIR}/signing.pub"]}},
 "devices": {{"serial": {{"file": "{serial_log}"}}, "debug_exit": true}}}}
"#
    )
}

/// Builds, in `dir`, the signed bzImage and vmlinux bundles of `kernel` with
/// `initramfs`, a tampered copy, the public key and the VM configs; returns the files
/// for L1 (all under [`L1_DIR`]).
pub fn prepare(dir: &Path, kernel: &Path, initramfs: &[u8]) -> Result<Vec<L1File>> {
    fs::create_dir_all(dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
    let vmlinux = dir.join("vmlinux");
    extract_vmlinux(kernel, &vmlinux)?;
    let initrd = dir.join("initramfs.cpio");
    write(&initrd, initramfs)?;
    let keys = dir.join("keys");
    let _ = fs::remove_dir_all(&keys);
    let (key, key_pub, _) = generate_key_pair(&keys).map_err(image_error("keygen"))?;
    let key = SigningKey::from_pem_file(&key).map_err(image_error("reading the signing key"))?;
    let mut files = vec![(format!("{L1_DIR}/signing.pub"), key_pub)];
    for (name, kernel, exit) in [
        ("bzimage", kernel, "poweroff"),
        ("vmlinux", vmlinux.as_path(), "reset"),
    ] {
        let bundle = dir.join(format!("{name}.bwi"));
        let spec = BuildSpec {
            name: format!("lab-l2-{name}"),
            version: 1,
            created: 0,
            kernel: kernel.to_owned(),
            initrd: Some(initrd.clone()),
            cmdline: Some(format!("{CMDLINE} bulwark.exit={exit}")),
            config: None,
            rootfs: None,
        };
        build(&spec, &bundle, &|_| {}).map_err(image_error("build"))?;
        sign(&bundle, &key, &|_| {}).map_err(image_error("sign"))?;
        let config = dir.join(format!("vm-{name}.json"));
        write(
            &config,
            vm_config(&format!("{name}.bwi"), &format!("/tmp/l2-{name}.log")),
        )?;
        files.push((format!("{L1_DIR}/{name}.bwi"), bundle));
        files.push((format!("{L1_DIR}/vm-{name}.json"), config));
    }
    // One byte of the kernel flipped inside the signed bzImage bundle: verification
    // must refuse it before anything is loaded.
    let mut bytes =
        fs::read(dir.join("bzimage.bwi")).map_err(LabError::io("reading the bzImage bundle"))?;
    let kernel_bytes = fs::read(kernel).map_err(LabError::io("reading the kernel"))?;
    let probe = &kernel_bytes[..kernel_bytes.len().min(4096)];
    let at = bytes
        .windows(probe.len())
        .position(|w| w == probe)
        .ok_or_else(|| LabError::UnexpectedOutput {
            command: "bulwark-image build".into(),
            reason: "the kernel's bytes are not found in the bundle".into(),
        })?;
    bytes[at + 0x1000 / 2] ^= 0x01;
    let tampered = dir.join("tampered.bwi");
    write(&tampered, bytes)?;
    let config = dir.join("vm-tampered.json");
    write(&config, vm_config("tampered.bwi", "/tmp/l2-tampered.log"))?;
    files.push((format!("{L1_DIR}/tampered.bwi"), tampered));
    files.push((format!("{L1_DIR}/vm-tampered.json"), config));
    Ok(files)
}

/// Makes `out`, an ext4 image of `bytes` (4 KiB blocks, files owned by root) holding
/// the directory `tree`, with Debian's `mke2fs -d`.
pub fn make_ext4(tree: &Path, out: &Path, bytes: u64) -> Result<()> {
    use super::host_command::{find_program, run};
    let mke2fs = ["mke2fs", "/sbin/mke2fs", "/usr/sbin/mke2fs"]
        .into_iter()
        .find_map(find_program)
        .ok_or_else(|| LabError::Prerequisite {
            what: "mke2fs (to build a rootfs image)".into(),
            hint: "install Debian's e2fsprogs: run scripts/setup".into(),
        })?;
    let _ = fs::remove_file(out);
    run(Command::new(&mke2fs)
        .args([
            "-q",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(tree)
        .arg(out)
        .arg(format!("{}k", bytes / 1024)))?;
    Ok(())
}

/// The file in the `virtio` bundle's ext4 rootfs that the L2 init reads after mounting
/// it, and its contents.
pub const ROOTFS_FILE: &str = "bulwark-lab.txt";
pub const ROOTFS_FILE_TEXT: &str = "bulwark lab rootfs over virtio-blk\n";
/// Size of that ext4 image (mke2fs with 4 KiB blocks).
pub const ROOTFS_BYTES: u64 = 4 << 20;

/// The VM config of the `virtio` bundle: its rootfs component as a read-only
/// virtio-blk disk, a writable scratch disk (`/tmp/scratch.img`, which the L1 script
/// creates), virtio-rng and virtio-vsock (host side `/tmp/l2-vsock.sock`), on
/// `transport` (`mmio` or `pci`).
pub fn vm_config_virtio(bundle: &str, serial_log: &str, transport: &str) -> String {
    format!(
        r#"{{"machine": {{"vcpus": {VCPUS}, "mem_mib": 256, "mmio64_gib": 64, "cpuid_policy": "bulwark-default-v1"}},
 "boot_source": {{"kind": "bundle", "path": "{L1_DIR}/{bundle}", "trusted_keys": ["{L1_DIR}/signing.pub"]}},
 "devices": {{"serial": {{"file": "{serial_log}"}}, "debug_exit": true, "rng": true, "virtio_transport": "{transport}",
   "block": [{{"id": "rootfs", "bundle_rootfs": true}}, {{"id": "scratch", "path": "/tmp/scratch.img"}}],
   "vsock": {{"guest_cid": 3, "uds_path": "/tmp/l2-vsock.sock"}}}}}}
"#
    )
}

/// Builds, in `dir`, the signed `virtio` bundle: the bzImage, `initramfs`, and as its
/// rootfs component a 4 MiB ext4 image made here with `mke2fs -d` holding
/// [`ROOTFS_FILE`]. Its signed command line carries the image's size and SHA-256
/// (`bulwark.rootfs_bytes=`, `bulwark.rootfs_sha256=`), which L2 compares with what it
/// reads from the virtio-blk disk. Returns the files for L1 (the bundle, the public
/// key, `vm-virtio.json` and `vm-virtio-pci.json`: the same VM on virtio-mmio and on
/// virtio-pci).
pub fn prepare_virtio(dir: &Path, kernel: &Path, initramfs: &[u8]) -> Result<Vec<L1File>> {
    use super::host_command::stdout_of;
    fs::create_dir_all(dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
    let initrd = dir.join("initramfs.cpio");
    write(&initrd, initramfs)?;
    let tree = dir.join("rootfs-tree");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree).map_err(LabError::io(format!("creating {}", tree.display())))?;
    write(&tree.join(ROOTFS_FILE), ROOTFS_FILE_TEXT)?;
    let rootfs = dir.join("rootfs.ext4");
    // Fixed UUID, hash seed and timestamps would make the image reproducible; the lab
    // only needs its hash, computed below from the file itself.
    make_ext4(&tree, &rootfs, ROOTFS_BYTES)?;
    let size = fs::metadata(&rootfs)
        .map_err(LabError::io(format!("reading {}", rootfs.display())))?
        .len();
    if size != ROOTFS_BYTES {
        return Err(LabError::UnexpectedOutput {
            command: "mke2fs".into(),
            reason: format!("the image is {size} bytes, {ROOTFS_BYTES} expected"),
        });
    }
    let sum = stdout_of(Command::new("sha256sum").arg(&rootfs))?;
    let sha256 = sum.split_whitespace().next().unwrap_or_default().to_owned();
    let keys = dir.join("keys");
    let _ = fs::remove_dir_all(&keys);
    let (key, key_pub, _) = generate_key_pair(&keys).map_err(image_error("keygen"))?;
    let key = SigningKey::from_pem_file(&key).map_err(image_error("reading the signing key"))?;
    let bundle = dir.join("virtio.bwi");
    let spec = BuildSpec {
        name: "lab-l2-virtio".into(),
        version: 1,
        created: 0,
        kernel: kernel.to_owned(),
        initrd: Some(initrd),
        cmdline: Some(format!(
            "{CMDLINE} bulwark.exit=poweroff bulwark.rootfs_bytes={size} bulwark.rootfs_sha256={sha256}"
        )),
        config: None,
        rootfs: Some(rootfs),
    };
    build(&spec, &bundle, &|_| {}).map_err(image_error("build"))?;
    sign(&bundle, &key, &|_| {}).map_err(image_error("sign"))?;
    let mut files = vec![
        (format!("{L1_DIR}/signing.pub"), key_pub),
        (format!("{L1_DIR}/virtio.bwi"), bundle),
    ];
    for (name, transport) in [("vm-virtio.json", "mmio"), ("vm-virtio-pci.json", "pci")] {
        let config = dir.join(name);
        write(
            &config,
            vm_config_virtio("virtio.bwi", "/tmp/l2-virtio.log", transport),
        )?;
        files.push((format!("{L1_DIR}/{name}"), config));
    }
    Ok(files)
}

/// Signed image bundles of tiny guests (`Scenario::signed_tiny_guests`): for each
/// `(name, ELF)`, `/lab/tiny/NAME.bwi` (the ELF as the kernel, image name `NAME`,
/// version 1), all signed by one key made here, whose public half is
/// `/lab/tiny/signing.pub`.
pub fn prepare_tiny(dir: &Path, guests: &[(&str, PathBuf)]) -> Result<Vec<L1File>> {
    fs::create_dir_all(dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
    let keys = dir.join("keys");
    let _ = fs::remove_dir_all(&keys);
    let (key, key_pub, _) = generate_key_pair(&keys).map_err(image_error("keygen"))?;
    let key = SigningKey::from_pem_file(&key).map_err(image_error("reading the signing key"))?;
    let mut files = vec![("/lab/tiny/signing.pub".to_string(), key_pub)];
    for (name, elf) in guests {
        let bundle = dir.join(format!("{name}.bwi"));
        let spec = BuildSpec {
            name: (*name).to_string(),
            version: 1,
            created: 0,
            kernel: elf.clone(),
            initrd: None,
            cmdline: None,
            config: None,
            rootfs: None,
        };
        let _ = fs::remove_file(&bundle);
        build(&spec, &bundle, &|_| {}).map_err(image_error("build"))?;
        sign(&bundle, &key, &|_| {}).map_err(image_error("sign"))?;
        files.push((format!("/lab/tiny/{name}.bwi"), bundle));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_bzimage_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("bulwark-l2-bundle-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("fake");
        fs::write(&fake, vec![0u8; 8192]).unwrap();
        let err = extract_vmlinux(&fake, &dir.join("out"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("HdrS"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_payload_that_is_not_lz4_or_outside_the_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("bulwark-l2-lz4-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut image = vec![0u8; 8192];
        image[0x1f1] = 4; // setup_sects: payload area starts at 5 * 512
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&64u32.to_le_bytes());
        image[2576..2580].copy_from_slice(&[0x1f, 0x8b, 8, 0]); // gzip, not LZ4
        let fake = dir.join("gzip-bzimage");
        fs::write(&fake, &image).unwrap();
        let err = extract_vmlinux(&fake, &dir.join("out"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not LZ4"), "{err}");
        image[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&fake, &image).unwrap();
        let err = extract_vmlinux(&fake, &dir.join("out"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the file"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn vm_configs_are_valid_bulwark_vmm_configs() {
        let text = vm_config("bzimage.bwi", "/tmp/x.log");
        let cfg = bulwark_vmm::config::VmConfig::from_json(&text).unwrap();
        assert_eq!(cfg.machine.vcpus, VCPUS);
        assert!(cfg.machine.acpi);
        assert!(text.contains("\"/lab/l2/bzimage.bwi\""), "{text}");
        let text = vm_config_virtio("virtio.bwi", "/tmp/x.log", "mmio");
        let cfg = bulwark_vmm::config::VmConfig::from_json(&text).unwrap();
        assert!(cfg.machine.acpi && cfg.devices.rng && cfg.devices.vsock.is_some());
        assert!(cfg.devices.block[0].bundle_rootfs && !cfg.devices.block[1].is_read_only());
        assert!(cfg.devices.virtio_transport.is_mmio());
        let text = vm_config_virtio("virtio.bwi", "/tmp/x.log", "pci");
        let cfg = bulwark_vmm::config::VmConfig::from_json(&text).unwrap();
        assert_eq!(
            cfg.devices.virtio_transport,
            bulwark_vmm::config::VirtioTransport::Pci
        );
    }
}
