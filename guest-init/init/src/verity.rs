//! The verified root: find the rootfs disk by its virtio serial, map it through
//! dm-verity with the parameters (and root hash) the VMM put on the kernel command
//! line, and read the whole mapped device once so every block is checked before
//! anything runs from it.
//!
//! The command-line value is
//! `bulwark.verity=1:<algorithm>:<data_block_size>:<hash_block_size>:<data_blocks>:<hash_start_block>:<root_hash_hex>:<salt_hex or ->`:
//! the data occupies blocks `0..data_blocks` of the disk and the hash tree (format
//! 1, no superblock) starts at block `hash_start_block` of the same disk.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::stat::{mknod, Mode, SFlag};

pub use crate::sys::dm::DevNum;
use crate::sys::dm::{Control, DmError, Target};

/// The kernel command-line key.
pub const CMDLINE_KEY: &str = "bulwark.verity";
/// The only supported data and hash block size.
pub const BLOCK_SIZE: u64 = 4096;
/// Sectors (512 bytes) per block.
const SECTORS_PER_BLOCK: u64 = BLOCK_SIZE / 512;
/// SHA-256 digests per hash block.
const HASHES_PER_BLOCK: u64 = BLOCK_SIZE / 32;
/// Longest salt dm-verity accepts, in bytes.
pub const MAX_SALT_LEN: usize = 256;
/// The longest serial virtio-blk reports (`VIRTIO_BLK_ID_BYTES`).
pub const VIRTIO_SERIAL_MAX: usize = 20;
/// Read size of [`verify_all`].
const VERIFY_CHUNK: usize = 1 << 20;

/// Errors of the verified-root steps.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// A part of the `bulwark.verity=` value is wrong.
    #[error("bulwark.verity: {part}: {reason}")]
    Param {
        /// Which part.
        part: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A sysfs or /dev file could not be read or has unexpected contents.
    #[error("{}: {reason}", path.display())]
    Sysfs {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// No disk has the serial.
    #[error("no virtio disk has serial {serial:?} (found: {found})")]
    DiskNotFound {
        /// The serial looked for.
        serial: String,
        /// The disks seen, with their serials.
        found: String,
    },
    /// Two disks have the serial.
    #[error("disks {first} and {second} both have serial {serial:?}")]
    DuplicateSerial {
        /// The serial.
        serial: String,
        /// One disk.
        first: String,
        /// The other.
        second: String,
    },
    /// The disk is writable; the rootfs disk must be read-only.
    #[error("rootfs disk {disk} is writable; the VMM must attach it read-only")]
    Writable {
        /// The disk name.
        disk: String,
    },
    /// The disk is smaller than the data plus the hash tree.
    #[error("rootfs disk {disk} has {sectors} sectors, but the data and hash tree need {needed}")]
    TooSmall {
        /// The disk name.
        disk: String,
        /// Its size in 512-byte sectors.
        sectors: u64,
        /// Sectors needed.
        needed: u64,
    },
    /// A device-mapper step failed.
    #[error("dm-verity setup of {name:?}: {source}")]
    Dm {
        /// The dm device name.
        name: String,
        /// The failed step.
        source: DmError,
    },
    /// The device-mapper device came up in an unexpected state.
    #[error("dm-verity device {name:?}: {reason}")]
    State {
        /// The dm device name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The device node could not be found or made.
    #[error("device node {}: {reason}", path.display())]
    Node {
        /// The node.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A data block does not match the root hash: dm-verity answered EIO (the
    /// disk failing the read would look the same; the VMM's log tells them apart).
    #[error(
        "rootfs block {block} (byte offset {offset}) failed dm-verity verification \
         (the disk does not match the signed root hash)"
    )]
    Corrupt {
        /// Byte offset of the block.
        offset: u64,
        /// Block number.
        block: u64,
    },
    /// Reading the device failed otherwise.
    #[error("reading {} at byte offset {offset}: {source}", path.display())]
    Read {
        /// The device.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// The error.
        source: io::Error,
    },
    /// The device ended before all the data was read.
    #[error("{} ended after {got} bytes; expected {expected}", path.display())]
    Short {
        /// The device.
        path: PathBuf,
        /// Bytes read.
        got: u64,
        /// Bytes expected.
        expected: u64,
    },
}

impl VerityError {
    /// Whether this is a block failing verification ([`VerityError::Corrupt`]),
    /// as opposed to a setup or I/O problem.
    pub fn is_corruption(&self) -> bool {
        matches!(self, VerityError::Corrupt { .. })
    }
}

/// The parameters of the rootfs's dm-verity tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityParams {
    /// Number of 4096-byte data blocks (the rootfs size).
    pub data_blocks: u64,
    /// First block of the hash tree on the disk.
    pub hash_start_block: u64,
    /// SHA-256 root hash.
    pub root_hash: [u8; 32],
    /// Salt (may be empty).
    pub salt: Vec<u8>,
}

fn param(part: &'static str, reason: impl Into<String>) -> VerityError {
    VerityError::Param {
        part,
        reason: reason.into(),
    }
}

/// A decimal `u64`: digits only, no sign, no leading zero (except `0` itself).
fn parse_u64(part: &'static str, s: &str) -> Result<u64, VerityError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(param(part, format!("{s:?} is not a decimal number")));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(param(part, format!("{s:?} has a leading zero")));
    }
    s.parse()
        .map_err(|_| param(part, format!("{s:?} does not fit 64 bits")))
}

/// Lower-case hex only (what the VMM writes; one spelling per value).
fn parse_hex(part: &'static str, s: &str) -> Result<Vec<u8>, VerityError> {
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(param(part, format!("{s:?} is not lower-case hex")));
    }
    hex::decode(s).map_err(|_| param(part, format!("{s:?} has an odd number of digits")))
}

impl VerityParams {
    /// Parse the value of `bulwark.verity=` (see the module docs).
    pub fn parse(value: &str) -> Result<VerityParams, VerityError> {
        let parts: Vec<&str> = value.split(':').collect();
        let [version, algorithm, data_bs, hash_bs, data_blocks, hash_start, root, salt] = parts[..]
        else {
            return Err(param(
                "format",
                format!(
                    "expected 8 ':'-separated parts (1:sha256:4096:4096:<data_blocks>:\
                     <hash_start_block>:<root_hash>:<salt or ->), got {}",
                    parts.len()
                ),
            ));
        };
        if version != "1" {
            return Err(param(
                "version",
                format!("{version:?} (only 1 is supported)"),
            ));
        }
        if algorithm != "sha256" {
            return Err(param(
                "algorithm",
                format!("{algorithm:?} (only sha256 is supported)"),
            ));
        }
        for (part, s) in [("data_block_size", data_bs), ("hash_block_size", hash_bs)] {
            if parse_u64(part, s)? != BLOCK_SIZE {
                return Err(param(part, format!("{s} (only {BLOCK_SIZE} is supported)")));
            }
        }
        let data_blocks = parse_u64("data_blocks", data_blocks)?;
        if data_blocks == 0 {
            return Err(param("data_blocks", "must be at least 1"));
        }
        if data_blocks.checked_mul(BLOCK_SIZE).is_none() {
            return Err(param(
                "data_blocks",
                format!("{data_blocks} blocks overflow"),
            ));
        }
        let hash_start_block = parse_u64("hash_start_block", hash_start)?;
        if hash_start_block < data_blocks {
            return Err(param(
                "hash_start_block",
                format!("{hash_start_block} is inside the data (blocks 0..{data_blocks})"),
            ));
        }
        if root.len() != 64 {
            return Err(param(
                "root_hash",
                format!("{} hex digits, expected 64", root.len()),
            ));
        }
        let mut root_hash = [0; 32];
        root_hash.copy_from_slice(&parse_hex("root_hash", root)?);
        let salt = if salt == "-" {
            Vec::new()
        } else {
            if salt.is_empty() || salt.len() > 2 * MAX_SALT_LEN {
                return Err(param(
                    "salt",
                    format!(
                        "{} hex digits (1 to {}, or '-' for none)",
                        salt.len(),
                        2 * MAX_SALT_LEN
                    ),
                ));
            }
            parse_hex("salt", salt)?
        };
        let p = VerityParams {
            data_blocks,
            hash_start_block,
            root_hash,
            salt,
        };
        if p.disk_sectors_needed().is_none() {
            return Err(param(
                "hash_start_block",
                "the hash tree's end overflows 64 bits",
            ));
        }
        Ok(p)
    }

    /// The root hash in lower-case hex.
    pub fn root_hash_hex(&self) -> String {
        hex::encode(self.root_hash)
    }

    /// Size of the data in bytes (the size of the dm device).
    pub fn data_bytes(&self) -> u64 {
        self.data_blocks * BLOCK_SIZE
    }

    /// Number of hash blocks in the tree, as dm-verity lays it out: one level per
    /// 128-fold reduction until a single block remains (a single data block has
    /// no tree; its hash is the root).
    pub fn tree_blocks(&self) -> u64 {
        let mut total = 0;
        let mut level = self.data_blocks;
        while level > 1 {
            level = level.div_ceil(HASHES_PER_BLOCK);
            total += level;
        }
        total
    }

    /// Sectors the disk needs: up to the end of the hash tree.
    pub fn disk_sectors_needed(&self) -> Option<u64> {
        self.hash_start_block
            .checked_add(self.tree_blocks())?
            .checked_mul(SECTORS_PER_BLOCK)
    }

    /// The dm-verity target over `dev` (a `MAJOR:MINOR` or a device path) holding
    /// both the data and the tree.
    ///
    /// No optional arguments: on a corrupt block dm-verity's default is to fail
    /// the read with EIO, which bulwark-init turns into a reported error
    /// ([`verify_all`]). `restart_on_corruption` or `panic_on_corruption` would
    /// reboot or panic the VM instead, losing the report.
    pub fn target(&self, dev: &str) -> Target {
        let salt = if self.salt.is_empty() {
            "-".to_owned()
        } else {
            hex::encode(&self.salt)
        };
        Target {
            sector_start: 0,
            length: self.data_blocks * SECTORS_PER_BLOCK,
            target_type: "verity".into(),
            params: format!(
                "1 {dev} {dev} {BLOCK_SIZE} {BLOCK_SIZE} {} {} sha256 {} {salt}",
                self.data_blocks,
                self.hash_start_block,
                hex::encode(self.root_hash),
            ),
        }
    }

    /// The dm table line ([`VerityParams::target`] as `dmsetup` writes it).
    pub fn table(&self, dev: &str) -> String {
        self.target(dev).to_string()
    }
}

/// A block device found in sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDisk {
    /// Kernel name, e.g. `vdb`.
    pub name: String,
    /// Its device number.
    pub dev: DevNum,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Whether the kernel treats it as read-only.
    pub read_only: bool,
}

fn read_sysfs(path: &Path) -> Result<String, VerityError> {
    std::fs::read_to_string(path).map_err(|e| VerityError::Sysfs {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn sysfs_number(path: &Path) -> Result<u64, VerityError> {
    let text = read_sysfs(path)?;
    text.trim_end().parse().map_err(|_| VerityError::Sysfs {
        path: path.to_owned(),
        reason: format!("unexpected contents {text:?}"),
    })
}

/// Find the virtio disk (`<sys_block>/vd*`) whose `serial` is `serial` (virtio-blk
/// shows the VMM's disk id there) and read its device number, size and
/// read-only flag.
pub fn find_disk_by_serial(sys_block: &Path, serial: &str) -> Result<BlockDisk, VerityError> {
    if serial.is_empty() || serial.len() > VIRTIO_SERIAL_MAX {
        return Err(VerityError::DiskNotFound {
            serial: serial.to_owned(),
            found: format!(
                "nothing searched: a virtio-blk serial is 1 to {VIRTIO_SERIAL_MAX} bytes"
            ),
        });
    }
    let entries = std::fs::read_dir(sys_block).map_err(|e| VerityError::Sysfs {
        path: sys_block.to_owned(),
        reason: e.to_string(),
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("vd"))
        .collect();
    names.sort();
    let mut seen = Vec::new();
    let mut hit: Option<String> = None;
    for name in names {
        // A disk whose serial cannot be read (the device does not support it)
        // cannot be the one asked for.
        let found = std::fs::read(sys_block.join(&name).join("serial"))
            .map(|b| {
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                String::from_utf8_lossy(&b[..end]).trim_end().to_owned()
            })
            .unwrap_or_default();
        seen.push(format!("{name} {found:?}"));
        if found == serial {
            if let Some(first) = hit {
                return Err(VerityError::DuplicateSerial {
                    serial: serial.to_owned(),
                    first,
                    second: name,
                });
            }
            hit = Some(name);
        }
    }
    let Some(name) = hit else {
        return Err(VerityError::DiskNotFound {
            serial: serial.to_owned(),
            found: if seen.is_empty() {
                "no vd* disks".into()
            } else {
                seen.join(", ")
            },
        });
    };
    let dir = sys_block.join(&name);
    let dev_path = dir.join("dev");
    let dev_text = read_sysfs(&dev_path)?;
    let dev = DevNum::parse(&dev_text).ok_or_else(|| VerityError::Sysfs {
        path: dev_path,
        reason: format!("unexpected contents {dev_text:?}"),
    })?;
    let sectors = sysfs_number(&dir.join("size"))?;
    let read_only = sysfs_number(&dir.join("ro"))? != 0;
    Ok(BlockDisk {
        name,
        dev,
        sectors,
        read_only,
    })
}

/// A live dm-verity device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmDevice {
    /// Its device-mapper name.
    pub name: String,
    /// Its device number.
    pub dev: DevNum,
    /// Its node, `/dev/dm-N` (devtmpfs) or `/dev/mapper/<name>`.
    pub path: PathBuf,
    /// Its size in bytes (the rootfs size).
    pub data_bytes: u64,
}

impl DmDevice {
    /// Its node.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Check `disk` can hold the tree, create dm device `name`, load the verity
/// table read-only, resume it and find its node. A failure after the device was
/// created removes it again.
pub fn open_verity(
    name: &str,
    disk: &BlockDisk,
    params: &VerityParams,
) -> Result<DmDevice, VerityError> {
    if !disk.read_only {
        return Err(VerityError::Writable {
            disk: disk.name.clone(),
        });
    }
    let needed = params.disk_sectors_needed().unwrap_or(u64::MAX);
    if needed > disk.sectors {
        return Err(VerityError::TooSmall {
            disk: disk.name.clone(),
            sectors: disk.sectors,
            needed,
        });
    }
    let dm = |source| VerityError::Dm {
        name: name.to_owned(),
        source,
    };
    let control = Control::open().map_err(dm)?;
    control.create(name).map_err(dm)?;
    let result = activate(&control, name, disk, params);
    if result.is_err() {
        // Best effort: the original error is the one to report.
        let _ = control.remove(name);
    }
    result
}

fn activate(
    control: &Control,
    name: &str,
    disk: &BlockDisk,
    params: &VerityParams,
) -> Result<DmDevice, VerityError> {
    let dm = |source| VerityError::Dm {
        name: name.to_owned(),
        source,
    };
    let target = params.target(&disk.dev.to_string());
    control.load_table(name, &[target], true).map_err(dm)?;
    control.resume(name).map_err(dm)?;
    let info = control.status(name).map_err(dm)?;
    let state = |reason: &str| VerityError::State {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if !info.active() || info.suspended() {
        return Err(state("not active after resume"));
    }
    if !info.read_only() {
        return Err(state("not read-only after loading a read-only table"));
    }
    let path = device_node(
        Path::new("/sys/dev/block"),
        Path::new("/dev"),
        info.dev,
        name,
    )?;
    Ok(DmDevice {
        name: name.to_owned(),
        dev: info.dev,
        path,
        data_bytes: params.data_bytes(),
    })
}

/// `DEVNAME=` of a sysfs `uevent` file.
fn uevent_devname(uevent: &str) -> Option<&str> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .filter(|n| !n.is_empty() && !n.split('/').any(|c| c.is_empty() || c == ".."))
}

fn is_block_node(path: &Path, dev: DevNum) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|m| m.file_type().is_block_device() && DevNum::from_dev_t(m.rdev()) == dev)
}

/// The block node of `dev`: `<dev_dir>/<DEVNAME>` when devtmpfs made it (DEVNAME
/// from `<sys_dev_block>/MAJ:MIN/uevent`), else `<dev_dir>/mapper/<name>`, made
/// with mknod if needed.
pub(crate) fn device_node(
    sys_dev_block: &Path,
    dev_dir: &Path,
    dev: DevNum,
    name: &str,
) -> Result<PathBuf, VerityError> {
    if let Ok(uevent) = std::fs::read_to_string(sys_dev_block.join(dev.to_string()).join("uevent"))
    {
        if let Some(devname) = uevent_devname(&uevent) {
            let path = dev_dir.join(devname);
            if is_block_node(&path, dev) {
                return Ok(path);
            }
        }
    }
    let path = dev_dir.join("mapper").join(name);
    if is_block_node(&path, dev) {
        return Ok(path);
    }
    let node_err = |reason: String| VerityError::Node {
        path: path.clone(),
        reason,
    };
    std::fs::create_dir_all(dev_dir.join("mapper"))
        .map_err(|e| node_err(format!("creating the directory: {e}")))?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(node_err(format!("removing a stale entry: {e}"))),
    }
    mknod(
        &path,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o400),
        dev.to_dev_t(),
    )
    .map_err(|e: Errno| node_err(format!("mknod b {dev}: {}", e.desc())))?;
    Ok(path)
}

/// What [`verify_all`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyStats {
    /// Bytes read (and so verified).
    pub bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// Read the whole dm device at `dev_path` (`data_bytes` long) once, in order,
/// so dm-verity checks every data block now rather than when first used. A block
/// that fails verification is [`VerityError::Corrupt`].
pub fn verify_all(dev_path: &Path, data_bytes: u64) -> Result<VerifyStats, VerityError> {
    let file = File::open(dev_path).map_err(|source| VerityError::Read {
        path: dev_path.to_owned(),
        offset: 0,
        source,
    })?;
    verify_reader(file, dev_path, data_bytes)
}

/// [`verify_all`] over any reader. Reads go in 1 MiB chunks; after an EIO the
/// same range is re-read block by block to name the first bad block (a failed read
/// does not advance the position, and the kernel returns what it read before a
/// failing block).
pub fn verify_reader<R: Read>(
    mut reader: R,
    path: &Path,
    data_bytes: u64,
) -> Result<VerifyStats, VerityError> {
    let start = Instant::now();
    let mut buf = vec![0u8; VERIFY_CHUNK];
    let mut done = 0u64;
    // Bytes still to read block by block after an EIO.
    let mut careful = 0u64;
    while done < data_bytes {
        let step = if careful > 0 {
            careful.min(BLOCK_SIZE)
        } else {
            VERIFY_CHUNK as u64
        };
        // `step` is at most 1 MiB.
        let want = (data_bytes - done).min(step) as usize;
        match reader.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(VerityError::Short {
                    path: path.to_owned(),
                    got: done,
                    expected: data_bytes,
                })
            }
            Ok(n) => {
                done += n as u64;
                careful = careful.saturating_sub(n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                if careful == 0 && want as u64 > BLOCK_SIZE {
                    careful = want as u64;
                    continue;
                }
                let block = done / BLOCK_SIZE;
                return Err(VerityError::Corrupt {
                    offset: block * BLOCK_SIZE,
                    block,
                });
            }
            Err(source) => {
                return Err(VerityError::Read {
                    path: path.to_owned(),
                    offset: done,
                    source,
                })
            }
        }
    }
    Ok(VerifyStats {
        bytes: done,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const ROOT: &str = "4f1ee3b3c5d04b9c8a6c2b1e0a9f8e7d6c5b4a39281706f5e4d3c2b1a0918273";
    const SALT: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn value(data_blocks: u64, hash_start: u64, salt: &str) -> String {
        format!("1:sha256:4096:4096:{data_blocks}:{hash_start}:{ROOT}:{salt}")
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "bulwark-verity-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn parses_the_vmm_value_and_builds_the_table() {
        let p = VerityParams::parse(&value(262144, 262144, SALT)).unwrap();
        assert_eq!(p.data_blocks, 262144);
        assert_eq!(p.hash_start_block, 262144);
        assert_eq!(p.root_hash_hex(), ROOT);
        assert_eq!(hex::encode(&p.salt), SALT);
        assert_eq!(p.data_bytes(), 1 << 30);
        assert_eq!(
            p.table("254:16"),
            format!(
                "0 2097152 verity 1 254:16 254:16 4096 4096 262144 262144 sha256 {ROOT} {SALT}"
            )
        );
        let t = p.target("254:16");
        assert_eq!(
            (t.sector_start, t.length, t.target_type.as_str()),
            (0, 2097152, "verity")
        );
        let p = VerityParams::parse(&value(1, 1, "-")).unwrap();
        assert!(p.salt.is_empty());
        assert!(p.table("/dev/vdb").ends_with(&format!("sha256 {ROOT} -")));
    }

    #[test]
    fn tree_size_matches_dm_verity_geometry() {
        let tree = |data_blocks| {
            VerityParams {
                data_blocks,
                hash_start_block: data_blocks,
                root_hash: [0; 32],
                salt: Vec::new(),
            }
            .tree_blocks()
        };
        assert_eq!(tree(1), 0);
        assert_eq!(tree(2), 1);
        assert_eq!(tree(128), 1);
        assert_eq!(tree(129), 2 + 1);
        assert_eq!(tree(128 * 128), 128 + 1);
        assert_eq!(tree(128 * 128 + 1), 129 + 2 + 1);
        // 1 GiB of data: 2048 + 16 + 1 hash blocks.
        assert_eq!(tree(262144), 2048 + 16 + 1);
    }

    #[test]
    fn every_bad_part_is_named() {
        let cases: Vec<(String, &str)> = vec![
            ("1:sha256:4096".into(), "format"),
            (format!("{}:x", value(8, 8, "-")), "format"),
            (value(8, 8, "-").replacen('1', "2", 1), "version"),
            (value(8, 8, "-").replace("sha256", "sha1"), "algorithm"),
            (
                value(8, 8, "-").replacen("4096", "512", 1),
                "data_block_size",
            ),
            (
                value(8, 8, "-").replacen(":4096:8", ":1024:8", 1),
                "hash_block_size",
            ),
            (
                value(8, 8, "-").replacen(":4096:8", ":04096:8", 1),
                "hash_block_size",
            ),
            (value(0, 8, "-"), "data_blocks"),
            (value(8, 8, "-").replacen(":8:", ":+8:", 1), "data_blocks"),
            (value(8, 8, "-").replacen(":8:", ": 8:", 1), "data_blocks"),
            (value(8, 8, "-").replacen(":8:", ":08:", 1), "data_blocks"),
            (
                value(8, 8, "-").replacen(":8:", ":18446744073709551616:", 1),
                "data_blocks",
            ),
            (
                value(4503599627370496, 4503599627370496, "-"),
                "data_blocks",
            ),
            (value(8, 7, "-"), "hash_start_block"),
            (value(8, u64::MAX, "-"), "hash_start_block"),
            (value(8, 8, "-").replace(ROOT, &ROOT[..62]), "root_hash"),
            (
                value(8, 8, "-").replace(ROOT, &ROOT.to_uppercase()),
                "root_hash",
            ),
            (
                value(8, 8, "-").replace(ROOT, &format!("{}zz", &ROOT[..62])),
                "root_hash",
            ),
            (value(8, 8, ""), "salt"),
            (value(8, 8, "abc"), "salt"),
            (value(8, 8, "AB"), "salt"),
            (value(8, 8, &"ab".repeat(257)), "salt"),
        ];
        for (v, part) in cases {
            let err = VerityParams::parse(&v).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("bulwark.verity: {part}: ")),
                "{v:?} gave {err:?}, expected part {part}"
            );
        }
        assert!(VerityParams::parse(&value(8, 8, &"ab".repeat(256))).is_ok());
    }

    fn fake_disk(sys: &Path, name: &str, serial: Option<&str>, dev: &str, size: u64, ro: u8) {
        let d = sys.join(name);
        std::fs::create_dir_all(&d).unwrap();
        if let Some(s) = serial {
            std::fs::write(d.join("serial"), s).unwrap();
        }
        std::fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
        std::fs::write(d.join("size"), format!("{size}\n")).unwrap();
        std::fs::write(d.join("ro"), format!("{ro}\n")).unwrap();
    }

    #[test]
    fn finds_the_disk_by_serial_in_sysfs() {
        let t = TempDir::new();
        let sys = &t.0;
        fake_disk(sys, "vda", Some("boot"), "254:0", 1000, 0);
        fake_disk(sys, "vdb", Some("rootfs"), "254:16", 2_114_584, 1);
        fake_disk(sys, "vdc", None, "254:32", 8, 0);
        fake_disk(sys, "loop0", Some("rootfs"), "7:0", 8, 1);
        let disk = find_disk_by_serial(sys, "rootfs").unwrap();
        assert_eq!(
            disk,
            BlockDisk {
                name: "vdb".into(),
                dev: DevNum {
                    major: 254,
                    minor: 16
                },
                sectors: 2_114_584,
                read_only: true,
            }
        );
        assert!(!find_disk_by_serial(sys, "boot").unwrap().read_only);
        let err = find_disk_by_serial(sys, "data").unwrap_err().to_string();
        assert_eq!(
            err,
            "no virtio disk has serial \"data\" (found: vda \"boot\", vdb \"rootfs\", vdc \"\")"
        );
        let err = find_disk_by_serial(sys, &"x".repeat(21))
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 to 20 bytes"), "{err}");
        fake_disk(sys, "vdd", Some("rootfs"), "254:48", 8, 1);
        let err = find_disk_by_serial(sys, "rootfs").unwrap_err().to_string();
        assert_eq!(err, "disks vdb and vdd both have serial \"rootfs\"");
        // Garbled attributes are reported with their path.
        fake_disk(sys, "vde", Some("bad"), "254", 8, 1);
        let err = find_disk_by_serial(sys, "bad").unwrap_err().to_string();
        assert!(
            err.ends_with("vde/dev: unexpected contents \"254\\n\""),
            "{err}"
        );
        let err = find_disk_by_serial(&sys.join("none"), "bad").unwrap_err();
        assert!(matches!(err, VerityError::Sysfs { .. }));
    }

    #[test]
    fn disk_checks_come_before_device_mapper() {
        let p = VerityParams::parse(&value(262144, 262144, "-")).unwrap();
        let mut disk = BlockDisk {
            name: "vdb".into(),
            dev: DevNum {
                major: 254,
                minor: 16,
            },
            sectors: (262144 + 2065) * 8,
            read_only: false,
        };
        let err = open_verity("bulwark-root", &disk, &p)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "rootfs disk vdb is writable; the VMM must attach it read-only"
        );
        disk.read_only = true;
        disk.sectors -= 1;
        let err = open_verity("bulwark-root", &disk, &p)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "rootfs disk vdb has {} sectors, but the data and hash tree need {}",
                disk.sectors,
                disk.sectors + 1
            )
        );
    }

    #[test]
    fn uevent_names_the_node() {
        let u = "MAJOR=253\nMINOR=0\nDEVNAME=dm-0\nDEVTYPE=disk\nDISKSEQ=9\n";
        assert_eq!(uevent_devname(u), Some("dm-0"));
        assert_eq!(uevent_devname("MAJOR=253\n"), None);
        assert_eq!(uevent_devname("DEVNAME=../etc/x\n"), None);
        assert_eq!(uevent_devname("DEVNAME=\n"), None);
    }

    #[test]
    fn reads_a_whole_file() {
        let t = TempDir::new();
        let p = t.0.join("disk");
        let data: Vec<u8> = (0..(3 << 20) + 3 * 4096).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let stats = verify_all(&p, data.len() as u64).unwrap();
        assert_eq!(stats.bytes, data.len() as u64);
        // Only the data part is read when the file is longer.
        assert_eq!(verify_all(&p, 4096).unwrap().bytes, 4096);
        let err = verify_all(&p, data.len() as u64 + 4096)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with(&format!(
                "ended after {} bytes; expected {}",
                data.len(),
                data.len() + 4096
            )),
            "{err}"
        );
        let err = verify_all(&t.0.join("none"), 1).unwrap_err();
        assert!(matches!(err, VerityError::Read { offset: 0, .. }));
    }

    /// A device of `len` bytes that fails with EIO at block `bad` like dm-verity:
    /// a read returns the good bytes before the bad block, and a read starting at
    /// it fails. It also injects an EINTR and short reads.
    struct Faulty {
        pos: u64,
        len: u64,
        bad: u64,
        interrupted: bool,
    }

    impl Read for Faulty {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !self.interrupted {
                self.interrupted = true;
                return Err(io::ErrorKind::Interrupted.into());
            }
            let bad_at = self.bad * BLOCK_SIZE;
            if self.pos == bad_at {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let end = self
                .len
                .min(self.pos + buf.len() as u64)
                .min(if self.pos < bad_at { bad_at } else { u64::MAX });
            // Short reads: at most 300 KiB at a time.
            let n = (end - self.pos).min(300 << 10) as usize;
            buf[..n].fill(0xa5);
            self.pos += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn eio_is_reported_as_the_corrupt_block() {
        let path = Path::new("/dev/dm-0");
        for bad in [0u64, 1, 255, 256, 1000] {
            let r = Faulty {
                pos: 0,
                len: 4 << 20,
                bad,
                interrupted: false,
            };
            match verify_reader(r, path, 4 << 20) {
                Err(e @ VerityError::Corrupt { offset, block }) => {
                    assert!(e.is_corruption());
                    assert_eq!((offset, block), (bad * 4096, bad));
                }
                other => panic!("bad block {bad}: {other:?}"),
            }
        }
        let err = verify_reader(
            Faulty {
                pos: 0,
                len: 4 << 20,
                bad: 300,
                interrupted: false,
            },
            path,
            4 << 20,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "rootfs block 300 (byte offset 1228800) failed dm-verity verification \
             (the disk does not match the signed root hash)"
        );
        // A bad block past the data is never read.
        let ok = verify_reader(
            Faulty {
                pos: 0,
                len: 4 << 20,
                bad: 1024,
                interrupted: false,
            },
            path,
            4 << 20,
        )
        .unwrap();
        assert_eq!(ok.bytes, 4 << 20);
    }

    /// A reader whose whole 1 MiB chunk fails, but block-sized reads succeed until
    /// the bad block (the kernel can fail a large read as a whole).
    struct WholeChunkFails {
        pos: u64,
        bad: u64,
    }

    impl Read for WholeChunkFails {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let end = self.pos + buf.len() as u64;
            let bad_at = self.bad * BLOCK_SIZE;
            if self.pos <= bad_at && bad_at < end {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.pos = end;
            Ok(buf.len())
        }
    }

    #[test]
    fn a_failed_chunk_is_narrowed_to_its_block() {
        let r = WholeChunkFails { pos: 0, bad: 700 };
        let err = verify_reader(r, Path::new("x"), 8 << 20).unwrap_err();
        assert!(
            matches!(
                err,
                VerityError::Corrupt {
                    block: 700,
                    offset: 2_867_200
                }
            ),
            "{err:?}"
        );
        // Other errors keep their offset.
        struct Fails;
        impl Read for Fails {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::ENODEV))
            }
        }
        let err = verify_reader(Fails, Path::new("/dev/dm-0"), 4096).unwrap_err();
        assert!(
            matches!(err, VerityError::Read { offset: 0, .. }),
            "{err:?}"
        );
    }
}
