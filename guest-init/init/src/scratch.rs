//! The scratch disk: a writable virtio-blk disk the host supplies (bulwarkd's per-VM
//! `scratch.img`), encrypted here with a key made at boot and never written anywhere.
//!
//! The disk is mapped through dm-crypt (`aes-xts-plain64`, a 512-bit key from the
//! kernel's random source), and the workload gets the mapped device as the block node
//! `/dev/scratch`, owned by its uid. Everything it writes there reaches the host as
//! ciphertext; when the VM stops the key is gone with its memory, so the file is
//! unreadable to anyone, the tenant included. XTS gives confidentiality, not
//! integrity: a host that changes the file's bytes makes the workload read garbage,
//! which it cannot tell from its own data (the same as a host that drops writes).

use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::sys::dm::{Control, DevNum, DmError, Target};
use crate::verity::{device_node, BlockDisk, VerityError};

/// The dm-crypt cipher spec.
pub const CIPHER: &str = "aes-xts-plain64";
/// Key bytes (AES-256 in XTS takes two 256-bit keys).
pub const KEY_BYTES: usize = 64;
/// The device-mapper name.
pub const DM_NAME: &str = "bulwark-scratch";
/// The node's name in the workload's `/dev`.
pub const NODE_NAME: &str = "scratch";

/// Why the scratch disk could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// The disk is read-only.
    #[error("scratch disk {disk} is read-only; the VMM must attach it writable")]
    ReadOnly {
        /// The disk name.
        disk: String,
    },
    /// The disk is empty.
    #[error("scratch disk {disk} has no sectors")]
    Empty {
        /// The disk name.
        disk: String,
    },
    /// No key could be drawn.
    #[error("drawing the scratch key from the kernel's random source: {0}")]
    Random(String),
    /// A device-mapper step failed.
    #[error("dm-crypt setup of {DM_NAME:?}: {0} (the cipher needs the modules dm_crypt, xts and ecb in the config's `modules` where the kernel does not build them in)")]
    Dm(#[from] DmError),
    /// The mapped device came up wrong, or its node could not be made.
    #[error("dm-crypt device {DM_NAME:?}: {0}")]
    Device(String),
    /// Finding the node.
    #[error(transparent)]
    Node(#[from] VerityError),
}

/// The live encrypted scratch device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchDevice {
    /// The disk underneath (kernel name).
    pub disk: String,
    /// The mapped device's number.
    pub dev: DevNum,
    /// Its node in init's `/dev`.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
}

/// The dm-crypt table line for `disk` with `key`: the whole disk, IV sector numbers
/// from 0, no options.
fn crypt_target(disk: &BlockDisk, key_hex: &str) -> Target {
    Target {
        sector_start: 0,
        length: disk.sectors,
        target_type: "crypt".into(),
        params: format!("{CIPHER} {key_hex} 0 {} 0", disk.dev),
    }
}

/// Maps `disk` through dm-crypt with a fresh random key. The key lives only in the
/// kernel's crypt target: its copies here (the bytes, the hex and the ioctl buffer)
/// are wiped before this returns. A failure after the device was created removes it.
pub fn open_scratch(disk: &BlockDisk) -> Result<ScratchDevice, ScratchError> {
    if disk.read_only {
        return Err(ScratchError::ReadOnly {
            disk: disk.name.clone(),
        });
    }
    if disk.sectors == 0 {
        return Err(ScratchError::Empty {
            disk: disk.name.clone(),
        });
    }
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    OsRng
        .try_fill_bytes(key.as_mut())
        .map_err(|e| ScratchError::Random(e.to_string()))?;
    let key_hex = Zeroizing::new(hex::encode(key.as_ref()));
    let mut target = crypt_target(disk, &key_hex);
    let control = Control::open()?;
    control.create(DM_NAME)?;
    let result = activate(&control, &target, disk);
    zeroize::Zeroize::zeroize(&mut target.params);
    if result.is_err() {
        let _ = control.remove(DM_NAME);
    }
    result
}

fn activate(
    control: &Control,
    target: &Target,
    disk: &BlockDisk,
) -> Result<ScratchDevice, ScratchError> {
    control.load_table(DM_NAME, std::slice::from_ref(target), false)?;
    control.resume(DM_NAME)?;
    let info = control.status(DM_NAME)?;
    if !info.active() || info.suspended() {
        return Err(ScratchError::Device("not active after resume".into()));
    }
    if info.read_only() {
        return Err(ScratchError::Device(
            "read-only after loading a writable table".into(),
        ));
    }
    let path = device_node(
        Path::new("/sys/dev/block"),
        Path::new("/dev"),
        info.dev,
        DM_NAME,
    )?;
    Ok(ScratchDevice {
        disk: disk.name.clone(),
        dev: info.dev,
        path,
        bytes: disk.sectors * 512,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(read_only: bool, sectors: u64) -> BlockDisk {
        BlockDisk {
            name: "vdb".into(),
            dev: DevNum {
                major: 254,
                minor: 16,
            },
            sectors,
            read_only,
        }
    }

    #[test]
    fn the_table_maps_the_whole_disk_with_the_key() {
        let key = "ab".repeat(KEY_BYTES);
        let t = crypt_target(&disk(false, 32768), &key);
        assert_eq!(
            t.to_string(),
            format!("0 32768 crypt aes-xts-plain64 {key} 0 254:16 0")
        );
    }

    #[test]
    fn read_only_and_empty_disks_are_refused_before_any_key_or_device() {
        assert!(matches!(
            open_scratch(&disk(true, 8)),
            Err(ScratchError::ReadOnly { .. })
        ));
        assert!(matches!(
            open_scratch(&disk(false, 0)),
            Err(ScratchError::Empty { .. })
        ));
    }
}
