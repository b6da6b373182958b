//! The target disk: a block device or a regular file. Size, sector size, and
//! the refusal of a device that is in use (mounted, or held by device-mapper,
//! e.g. an open LUKS mapping).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::DiskError;

/// `O_EXCL` (Linux, all architectures this runs on).
const O_EXCL: i32 = 0o200;
/// `EBUSY`.
const EBUSY: i32 = 16;

/// Ask the kernel to re-read a block device's partition table after a new one
/// was written (`blockdev --rereadpt`, util-linux). Best effort: the result
/// says whether it worked; a reboot does the same.
pub fn reread_partitions(path: &Path) -> Result<(), String> {
    let out = std::process::Command::new("blockdev")
        .arg("--rereadpt")
        .arg(path)
        .output()
        .map_err(|e| format!("blockdev: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A Linux device number, split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevNum {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DevNum {
    /// Split a `st_rdev` (glibc's `gnu_dev_major`/`gnu_dev_minor` encoding).
    pub fn from_rdev(dev: u64) -> DevNum {
        DevNum {
            major: (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32,
            minor: ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32,
        }
    }

    fn parse(s: &str) -> Option<DevNum> {
        let (a, b) = s.trim().split_once(':')?;
        Some(DevNum {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The device number of the mounted filesystem (`0:N` for btrfs and
    /// pseudo filesystems).
    pub dev: DevNum,
    /// Mount point (octal escapes decoded).
    pub mount_point: String,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source (a device path for block filesystems).
    pub source: String,
}

/// Parse `/proc/self/mountinfo` (proc(5)). Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 6 || r.len() < 2 {
                return None;
            }
            Some(Mount {
                dev: DevNum::parse(l[2])?,
                mount_point: unescape(l[4]),
                fstype: r[0].to_string(),
                source: unescape(r[1]),
            })
        })
        .collect()
}

/// Decode mountinfo's `\ooo` escapes (space, tab, newline, backslash).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A block device and its partitions, as the kernel knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDevice {
    /// `/dev/NAME` paths and device numbers: the disk first, then its partitions.
    pub nodes: Vec<(String, DevNum)>,
    /// Device-mapper (or md) devices stacked on the disk or a partition.
    pub holders: Vec<String>,
}

/// Refuse if any of `dev`'s nodes is mounted according to `mountinfo`
/// (matched by device number, and by source path for filesystems such as
/// btrfs that report an anonymous device number), or is held by another
/// device.
pub fn check_not_in_use(path: &Path, dev: &BlockDevice, mountinfo: &str) -> Result<(), DiskError> {
    for m in parse_mountinfo(mountinfo) {
        for (node, num) in &dev.nodes {
            if m.dev == *num || m.source == *node {
                return Err(DiskError::InUse {
                    path: path.to_path_buf(),
                    why: format!(
                        "{node} ({num}) is mounted on {} ({})",
                        m.mount_point, m.fstype
                    ),
                });
            }
        }
    }
    if let Some(h) = dev.holders.first() {
        return Err(DiskError::InUse {
            path: path.to_path_buf(),
            why: format!("held by {h} (device-mapper or md; close it first)"),
        });
    }
    Ok(())
}

/// Look a block device up in sysfs: its partitions and holders.
pub fn sysfs_block_device(num: DevNum) -> std::io::Result<BlockDevice> {
    let base = PathBuf::from(format!("/sys/dev/block/{num}"));
    let base = std::fs::canonicalize(&base)?;
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut nodes = vec![(format!("/dev/{name}"), num)];
    let mut holders = holders_of(&base);
    for e in std::fs::read_dir(&base)?.flatten() {
        let p = e.path();
        if !p.join("partition").exists() {
            continue;
        }
        if let Some(n) = std::fs::read_to_string(p.join("dev"))
            .ok()
            .and_then(|s| DevNum::parse(&s))
        {
            nodes.push((format!("/dev/{}", e.file_name().to_string_lossy()), n));
            holders.extend(holders_of(&p));
        }
    }
    Ok(BlockDevice { nodes, holders })
}

fn holders_of(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("holders"))
        .map(|r| {
            r.flatten()
                .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default()
}

/// An open target disk.
#[derive(Debug)]
pub struct Target {
    /// The path given.
    pub path: PathBuf,
    /// Open read-write.
    pub file: File,
    /// Size in bytes.
    pub size: u64,
    /// Whether it is a block device.
    pub is_block: bool,
}

impl Target {
    /// Open `path` for writing after the checks: a block device must not be
    /// in use and must have 512-byte logical sectors; a regular file must
    /// exist unless `create_size` is given, in which case it is created or
    /// extended (never shrunk) to that size.
    pub fn open(path: &Path, create_size: Option<u64>) -> Result<Target, DiskError> {
        let io = |e| DiskError::io(path, e);
        let meta = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create_size.is_some() => None,
            Err(e) => return Err(io(e)),
        };
        let is_block = meta
            .as_ref()
            .is_some_and(|m| m.file_type().is_block_device());
        if let Some(m) = &meta {
            if !is_block && !m.is_file() {
                return Err(DiskError::Unsuitable {
                    path: path.to_path_buf(),
                    why: "neither a block device nor a regular file".into(),
                });
            }
        }
        if is_block {
            let num = DevNum::from_rdev(meta.as_ref().map_or(0, |m| m.rdev()));
            let dev = sysfs_block_device(num).map_err(io)?;
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(io)?;
            check_not_in_use(path, &dev, &mountinfo)?;
            let lbs =
                std::fs::read_to_string(format!("/sys/dev/block/{num}/queue/logical_block_size"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok());
            if let Some(lbs) = lbs.filter(|l| *l != super::gpt::SECTOR) {
                return Err(DiskError::Unsuitable {
                    path: path.to_path_buf(),
                    why: format!("logical sector size {lbs} (only 512 is supported)"),
                });
            }
        }
        // A block device is opened O_EXCL: the kernel then refuses it while
        // anything claims it (a mount in any mount namespace, swap, md, a
        // device-mapper table), which the mountinfo check above cannot see
        // for other namespaces, and nobody can mount it while we write.
        let mut opts = OpenOptions::new();
        opts.read(true)
            .write(true)
            .create(create_size.is_some() && !is_block)
            .truncate(false);
        if is_block {
            opts.custom_flags(O_EXCL);
        }
        let mut file = opts.open(path).map_err(|e| {
            if is_block && e.raw_os_error() == Some(EBUSY) {
                DiskError::InUse {
                    path: path.to_path_buf(),
                    why: "the kernel reports it busy (mounted, swap, or claimed; possibly in another mount namespace)".into(),
                }
            } else {
                io(e)
            }
        })?;
        if let (Some(want), false) = (create_size, is_block) {
            let have = file.metadata().map_err(io)?.len();
            if have < want {
                file.set_len(want).map_err(io)?;
            }
        }
        let size = file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(Target {
            path: path.to_path_buf(),
            file,
            size,
            is_block,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded on a Debian 12 host (trimmed), with a disk /dev/sdb whose
    // partition 1 is mounted, a btrfs volume on /dev/sdc1, and pseudo
    // filesystems.
    const MOUNTINFO: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 28 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
28 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
31 28 259:1 / /boot/efi rw,relatime shared:15 - vfat /dev/nvme0n1p1 rw,fmask=0077
120 28 8:17 / /mnt/my\\040disk rw,relatime shared:60 - ext4 /dev/sdb1 rw
130 28 0:45 / /srv rw,relatime shared:61 - btrfs /dev/sdc1 rw,space_cache=v2
garbage line without separator
";

    fn dev(name: &str, major: u32, parts: &[(u32, &str)]) -> BlockDevice {
        let mut nodes = vec![(format!("/dev/{name}"), DevNum { major, minor: 0 })];
        for (minor, p) in parts {
            nodes.push((
                format!("/dev/{p}"),
                DevNum {
                    major,
                    minor: *minor,
                },
            ));
        }
        BlockDevice {
            nodes,
            holders: vec![],
        }
    }

    #[test]
    fn parses_mountinfo() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 6);
        assert_eq!(m[4].mount_point, "/mnt/my disk");
        assert_eq!(
            m[4].dev,
            DevNum {
                major: 8,
                minor: 17
            }
        );
        assert_eq!(m[4].source, "/dev/sdb1");
        assert_eq!(m[3].fstype, "vfat");
    }

    #[test]
    fn refuses_mounted_partition_by_devnum() {
        let p = Path::new("/dev/sdb");
        let e = check_not_in_use(
            p,
            &dev("sdb", 8, &[(16 + 1, "sdb1"), (18, "sdb2")]),
            MOUNTINFO,
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("/dev/sdb1 (8:17) is mounted on /mnt/my disk"),
            "{s}"
        );
    }

    #[test]
    fn refuses_btrfs_by_source() {
        let e = check_not_in_use(
            Path::new("/dev/sdc"),
            &dev("sdc", 8, &[(33, "sdc1")]),
            MOUNTINFO,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/srv"), "{e}");
    }

    #[test]
    fn accepts_unmounted_and_refuses_held() {
        let mut d = dev("sdd", 8, &[(49, "sdd1")]);
        check_not_in_use(Path::new("/dev/sdd"), &d, MOUNTINFO).unwrap();
        d.holders.push("/dev/dm-0".into());
        assert!(check_not_in_use(Path::new("/dev/sdd"), &d, MOUNTINFO)
            .unwrap_err()
            .to_string()
            .contains("dm-0"));
    }

    #[test]
    fn splits_rdev() {
        // makedev(259, 1) and makedev(8, 17) in glibc's encoding.
        assert_eq!(
            DevNum::from_rdev((259 << 8) | 1),
            DevNum {
                major: 259,
                minor: 1
            }
        );
        assert_eq!(
            DevNum::from_rdev(0x811),
            DevNum {
                major: 8,
                minor: 17
            }
        );
        assert_eq!(DevNum::from_rdev(0x0010_0300).minor, 256);
    }
}
