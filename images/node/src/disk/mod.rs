//! The node disk (`docs/node-image.md`, "Disk layout, install, A/B updates"):
//!
//! | LBA / offset | what |
//! |---|---|
//! | 0 | protective MBR |
//! | 1..34 | primary GPT header and entry array |
//! | 1 MiB | partition 1, `ESP`: FAT32, EFI system partition (type C12A7328-…) |
//! | after the ESP, to the end (1 MiB aligned) | partition 2, `bulwark-state` (type 0FC63DAF-…), left unformatted: the node formats it (encrypted) on first boot |
//! | last 33 LBAs | backup entry array and header |
//!
//! The ESP holds systemd-boot (as the removable-media path
//! `/EFI/BOOT/BOOTX64.EFI` and as `/EFI/systemd/systemd-bootx64.efi`),
//! `/loader/loader.conf`, the slot UKIs in `/EFI/Linux/` and the
//! anti-rollback record in `/loader/bulwark/`.

pub mod device;
pub mod esp;
pub mod gpt;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use device::Target;
use gpt::{Gpt, Guid, Partition, ESP_TYPE, LINUX_FS_TYPE, SECTOR};

const MIB: u64 = 1 << 20;
/// Default ESP size.
pub const DEFAULT_ESP_MIB: u64 = 512;
/// Smallest ESP: FAT32 needs 65,525 clusters (512-byte clusters below 260 MiB).
pub const MIN_ESP_MIB: u64 = 40;
/// Smallest state partition accepted.
pub const MIN_STATE_MIB: u64 = 32;
/// `PARTLABEL` of the ESP.
pub const ESP_LABEL: &str = "ESP";
/// `PARTLABEL` of the state partition.
pub const STATE_LABEL: &str = "bulwark-state";

/// Errors about the target disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// I/O on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The disk is smaller than the layout needs.
    #[error("{path}: disk too small: {size} bytes ({size_mib} MiB), the layout needs at least {needed} bytes ({needed_mib} MiB)", size_mib = size / MIB, needed_mib = needed.div_ceil(MIB))]
    TooSmall {
        /// The path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// The device is mounted or held.
    #[error("{path}: refusing a disk in use: {why}")]
    InUse {
        /// The path.
        path: PathBuf,
        /// What uses it.
        why: String,
    },
    /// Not something this tool writes to.
    #[error("{path}: unsuitable target: {why}")]
    Unsuitable {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The disk's partition table or ESP is not what this tool wrote.
    #[error("{path}: {why}")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The ESP has no room for a file.
    #[error("{path}: the ESP has {free} bytes free, {needed} needed for {what}")]
    EspFull {
        /// The path.
        path: PathBuf,
        /// Free bytes.
        free: u64,
        /// Bytes needed.
        needed: u64,
        /// The file.
        what: String,
    },
}

impl DiskError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> DiskError {
        DiskError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, why: impl Into<String>) -> DiskError {
        DiskError::Corrupt {
            path: path.to_path_buf(),
            why: why.into(),
        }
    }

    /// Whether this is a refusal (exit status 1) rather than an I/O error.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, DiskError::Io { .. })
    }
}

/// The partitioning of a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The table.
    pub gpt: Gpt,
    /// ESP entry index in `gpt.partitions`.
    pub esp: usize,
    /// State partition index.
    pub state: usize,
}

impl Layout {
    /// Bytes a disk needs for an ESP of `esp_mib`.
    pub fn needed_bytes(esp_mib: u64) -> u64 {
        // 1 MiB before the ESP, the state minimum, 1 MiB for the backup GPT
        // and alignment.
        (1 + esp_mib + MIN_STATE_MIB + 1) * MIB
    }

    /// The layout for a disk of `size` bytes: ESP of `esp_mib` MiB at 1 MiB,
    /// the state partition filling the rest in whole MiB. The GUIDs are random
    /// (two disks in one machine must not share PARTUUIDs).
    pub fn plan(path: &Path, size: u64, esp_mib: u64) -> Result<Layout, DiskError> {
        if esp_mib < MIN_ESP_MIB {
            return Err(DiskError::Unsuitable {
                path: path.to_path_buf(),
                why: format!(
                    "an ESP of {esp_mib} MiB is below the FAT32 minimum of {MIN_ESP_MIB} MiB"
                ),
            });
        }
        let needed = Self::needed_bytes(esp_mib);
        if size < needed {
            return Err(DiskError::TooSmall {
                path: path.to_path_buf(),
                size,
                needed,
            });
        }
        let sectors = size / SECTOR;
        let align = MIB / SECTOR;
        let esp_first = align;
        let esp_last = esp_first + esp_mib * align - 1;
        let state_first = esp_last + 1;
        let state_end = (gpt::last_usable(sectors) + 1) / align * align;
        let guid = || Guid::random().map_err(|e| DiskError::io(Path::new("/dev/urandom"), e));
        Ok(Layout {
            gpt: Gpt {
                disk_guid: guid()?,
                sectors,
                partitions: vec![
                    Partition {
                        type_guid: ESP_TYPE,
                        unique_guid: guid()?,
                        first_lba: esp_first,
                        last_lba: esp_last,
                        attributes: 0,
                        name: ESP_LABEL.into(),
                    },
                    Partition {
                        type_guid: LINUX_FS_TYPE,
                        unique_guid: guid()?,
                        first_lba: state_first,
                        last_lba: state_end - 1,
                        attributes: 0,
                        name: STATE_LABEL.into(),
                    },
                ],
            },
            esp: 0,
            state: 1,
        })
    }

    /// Read the layout this tool wrote from `file` (`size` bytes).
    pub fn read(path: &Path, file: &File, size: u64) -> Result<Layout, DiskError> {
        let g = Gpt::read(size / SECTOR, &mut |o, b| file.read_exact_at(b, o))
            .map_err(|e| DiskError::corrupt(path, format!("partition table: {e}")))?;
        let find = |t: Guid, label: &str| {
            g.partitions
                .iter()
                .position(|p| p.type_guid == t)
                .ok_or_else(|| {
                    DiskError::corrupt(path, format!("no {label} partition (type {t}) in the GPT"))
                })
        };
        let esp = find(ESP_TYPE, "EFI system")?;
        let state = find(LINUX_FS_TYPE, "state")?;
        Ok(Layout { gpt: g, esp, state })
    }

    /// The ESP entry.
    pub fn esp(&self) -> &Partition {
        &self.gpt.partitions[self.esp]
    }

    /// The state partition entry.
    pub fn state(&self) -> &Partition {
        &self.gpt.partitions[self.state]
    }
}

/// Write the partition table of `layout` (both copies).
pub fn write_gpt(path: &Path, file: &File, layout: &Layout) -> Result<(), DiskError> {
    let writes = layout
        .gpt
        .encode()
        .map_err(|e| DiskError::corrupt(path, format!("partition table: {e}")))?;
    for w in writes {
        file.write_all_at(&w.bytes, w.offset)
            .map_err(|e| DiskError::io(path, e))?;
    }
    Ok(())
}

/// Zero `len` bytes at `offset` (old partition tables, filesystem and LUKS
/// signatures).
pub fn wipe(path: &Path, file: &File, offset: u64, len: u64) -> Result<(), DiskError> {
    let zeros = vec![0u8; MIB as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MIB);
        file.write_all_at(&zeros[..n as usize], offset + done)
            .map_err(|e| DiskError::io(path, e))?;
        done += n;
    }
    Ok(())
}
