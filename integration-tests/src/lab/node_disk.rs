//! The node's disk for the lab, made by the product's own tools, as a provider
//! would: the node image built (`bulwark_node_image::build::build_node_image`:
//! the UKI on systemd-stub, systemd-boot, the PCR prediction) and signed with a
//! provider key made for the run; version `base` installed on a disk image file
//! (`install`: GPT, FAT32 ESP, the slot marked good), then version `update`
//! written over it (`update`: the inactive slot, tried once), so the boot that
//! follows is a trial that bulwark-node-init must bless. The state partition is
//! formatted ext4 and seeded by the install step (`provision::format_state`, as
//! `install --state-files`); it is not encrypted (not built yet).

use std::fs;
use std::path::{Path, PathBuf};

use bulwark_node_image::build::{
    build_node_image, default_osrel, NodeBuildSpec, SecureBootSigning,
};
use bulwark_node_image::install::{self, read_node_image, InstallOptions};
use bulwark_node_image::measure::{predict_signed, SignedPrediction};

use super::error::{LabError, Result};
use super::host_command::find_program;

/// Debian's systemd-stub (package `systemd-boot-efi`).
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// Debian's systemd-boot (package `systemd-boot-efi`).
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// The node image's name.
pub const IMAGE_NAME: &str = "bulwark-node";

const MIB: u64 = 1 << 20;
const ESP_MIB: u64 = 96;

/// What goes into the node image.
#[derive(Debug, Clone)]
pub struct NodeDiskInputs {
    /// The kernel (bzImage with an EFI stub).
    pub kernel: PathBuf,
    /// The node initramfs (compressed cpio).
    pub initramfs: PathBuf,
    /// The update's own initramfs (None: the same).
    pub update_initramfs: Option<PathBuf>,
    /// The kernel command line before the builder's `bulwark.node_version=V`.
    pub cmdline: String,
    /// The version installed first.
    pub base_version: u64,
    /// The version written as the update the boot tries (greater than `base_version`).
    pub update_version: u64,
    /// Size of the state partition.
    pub state_mib: u64,
    /// Files the provider puts on the state partition when it provisions the node
    /// (`mkfs.ext4 -d`): the API's TLS files, the TPM's EK chain. The provider's
    /// public key is added as `provider.pub`.
    pub state_seed: Option<PathBuf>,
    /// Sign the UKIs and systemd-boot for Secure Boot with this db key (`build
    /// --sb-key`); the prediction then assumes Secure Boot on.
    pub secure_boot_signing: Option<SecureBootSigning>,
}

/// What `node_disk` made.
#[derive(Debug)]
pub struct NodeDisk {
    /// The disk image.
    pub disk: PathBuf,
    /// The signed node image the boot tries (`update_version`).
    pub image: PathBuf,
    /// The provider's public key (PEM).
    pub trust: PathBuf,
    /// The UKI of that image.
    pub uki: PathBuf,
    /// Its verified prediction.
    pub prediction: SignedPrediction,
    /// The command line in its UKI.
    pub cmdline: String,
    /// Byte offset of the state partition in the disk image.
    pub state_offset: u64,
}

fn lab_err(what: &str) -> impl FnOnce(bulwark_node_image::NodeImageError) -> LabError + '_ {
    move |e| LabError::UnexpectedOutput {
        command: what.to_string(),
        reason: e.to_string(),
    }
}

/// The section files for `systemd-measure calculate` (`--cmdline`, `--osrel`) of
/// the image `node_disk` made, written into `run_dir`.
pub fn section_paths(run_dir: &Path) -> [(&'static str, PathBuf); 2] {
    [
        ("cmdline", run_dir.join("uki-cmdline.txt")),
        ("osrel", run_dir.join("uki-os-release")),
    ]
}

/// Builds, signs, installs and updates as described above; the disk image is
/// `run_dir/node-disk.img`.
pub fn node_disk(run_dir: &Path, inputs: &NodeDiskInputs) -> Result<NodeDisk> {
    if find_program("mkfs.ext4").is_none() {
        return Err(LabError::Prerequisite {
            what: "`mkfs.ext4` not found (the lab formats the node's state partition with it)"
                .into(),
            hint: "install e2fsprogs: run scripts/setup".into(),
        });
    }
    for file in [STUB, SYSTEMD_BOOT] {
        if !Path::new(file).is_file() {
            return Err(LabError::Prerequisite {
                what: format!("{file} not found"),
                hint: "install Debian's systemd-boot-efi: run scripts/setup".into(),
            });
        }
    }
    fs::create_dir_all(run_dir).map_err(LabError::io(format!("creating {}", run_dir.display())))?;
    let keys = run_dir.join("provider");
    let _ = fs::remove_dir_all(&keys);
    let (key, trust, _) =
        bulwark_image::generate_key_pair(&keys).map_err(|e| LabError::UnexpectedOutput {
            command: "generating the provider key".into(),
            reason: e.to_string(),
        })?;
    let signing =
        bulwark_image::SigningKey::from_pem_file(&key).map_err(|e| LabError::UnexpectedOutput {
            command: "reading the provider key".into(),
            reason: e.to_string(),
        })?;
    let policy = bulwark_image::TrustPolicy::from_pem_files(&[&trust], 1, 0).map_err(|e| {
        LabError::UnexpectedOutput {
            command: "reading the provider key".into(),
            reason: e.to_string(),
        }
    })?;
    let mut built = Vec::new();
    for (version, initrd) in [
        (inputs.base_version, &inputs.initramfs),
        (
            inputs.update_version,
            inputs
                .update_initramfs
                .as_ref()
                .unwrap_or(&inputs.initramfs),
        ),
    ] {
        let image = run_dir.join(format!("{IMAGE_NAME}-{version}.bwi"));
        let uki = run_dir.join(format!("{IMAGE_NAME}-{version}.efi"));
        let summary = build_node_image(
            &NodeBuildSpec {
                name: IMAGE_NAME.into(),
                version,
                created: Some(1),
                kernel: inputs.kernel.clone(),
                initrd: initrd.clone(),
                cmdline: Some(inputs.cmdline.clone()),
                osrel: None,
                uname: None,
                stub: STUB.into(),
                boot_manager: Some(SYSTEMD_BOOT.into()),
                secure_boot: inputs.secure_boot_signing.is_some(),
                secure_boot_signing: inputs.secure_boot_signing.clone(),
                uki_out: Some(uki.clone()),
            },
            &image,
        )
        .map_err(lab_err("bulwark-node-image build"))?;
        bulwark_image::sign(&image, &signing, &|_| {}).map_err(|e| LabError::UnexpectedOutput {
            command: "signing the node image".into(),
            reason: e.to_string(),
        })?;
        built.push((image, uki, summary.cmdline));
    }
    let disk = run_dir.join("node-disk.img");
    let _ = fs::remove_file(&disk);
    let base = read_node_image(&built[0].0, &policy, &|_| {})
        .map_err(lab_err("verifying the base node image"))?;
    let report = install::install(
        &base,
        &disk,
        &InstallOptions {
            esp_mib: ESP_MIB,
            create_size: Some((ESP_MIB + inputs.state_mib + 2) * MIB),
        },
        &|_| {},
    )
    .map_err(lab_err("bulwark-node-image install"))?;
    let next =
        read_node_image(&built[1].0, &policy, &|_| {}).map_err(lab_err("verifying the update"))?;
    install::update(&next, &disk, 1).map_err(lab_err("bulwark-node-image update"))?;
    // The state partition, formatted and seeded by the product's install step.
    if let Some(seed) = &inputs.state_seed {
        fs::copy(&trust, seed.join("provider.pub"))
            .map_err(LabError::io("copying the provider key into the state seed"))?;
    }
    let state =
        bulwark_node_image::provision::format_state(&disk, &report, inputs.state_seed.as_deref())
            .map_err(lab_err("bulwark-node-image install --state-files"))?;
    let state_offset = state.offset;
    let (image, uki, cmdline) = built.pop().ok_or_else(|| LabError::UnexpectedOutput {
        command: "bulwark-node-image build".into(),
        reason: "no image built".into(),
    })?;
    let [(_, cmdline_file), (_, osrel_file)] = section_paths(run_dir);
    fs::write(&cmdline_file, &cmdline)
        .map_err(LabError::io(format!("writing {}", cmdline_file.display())))?;
    fs::write(
        &osrel_file,
        default_osrel(IMAGE_NAME, inputs.update_version),
    )
    .map_err(LabError::io(format!("writing {}", osrel_file.display())))?;
    let prediction =
        predict_signed(&image, &policy, None).map_err(lab_err("bulwark-node-image measure"))?;
    Ok(NodeDisk {
        disk,
        image,
        trust,
        uki,
        prediction,
        cmdline,
        state_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::host_command::run;
    use std::process::Command;

    #[test]
    fn the_disk_holds_the_base_version_good_and_the_update_on_trial() {
        if find_program("mkfs.ext4").is_none()
            || !Path::new(STUB).is_file()
            || !Path::new(SYSTEMD_BOOT).is_file()
        {
            eprintln!(
                "\n!!!!!!!! SKIPPED: e2fsprogs or systemd-boot-efi is not installed !!!!!!!!\n"
            );
            return;
        }
        let dir = std::env::temp_dir().join(format!("lab-node-disk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // A real PE stands in for the kernel.
        fs::write(dir.join("initrd"), vec![0x55; 1000]).unwrap();
        let inputs = NodeDiskInputs {
            kernel: SYSTEMD_BOOT.into(),
            initramfs: dir.join("initrd"),
            update_initramfs: None,
            cmdline: "console=ttyS0".into(),
            base_version: 1,
            update_version: 2,
            state_mib: 32,
            state_seed: None,
            secure_boot_signing: None,
        };
        let made = node_disk(&dir, &inputs).unwrap();
        let state = install::boot_state(&made.disk).unwrap();
        let slots: Vec<_> = state.slots.iter().map(|s| (s.version, s.state)).collect();
        assert_eq!(
            slots,
            [
                (2, install::SlotState::Trying { left: 1, done: 0 }),
                (1, install::SlotState::Blessed)
            ],
            "{state:?}"
        );
        assert!(made.prediction.mismatches.is_empty());
        assert!(
            made.cmdline.ends_with("bulwark.node_version=2"),
            "{}",
            made.cmdline
        );
        // The state partition is ext4 (blkid, an outside tool, at its offset).
        let o = run(Command::new("blkid")
            .arg("-p")
            .arg("-O")
            .arg(made.state_offset.to_string())
            .arg(&made.disk))
        .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("TYPE=\"ext4\""), "{text}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
