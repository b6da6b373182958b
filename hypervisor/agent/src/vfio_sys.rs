//! The raw VFIO ioctls bulwarkd needs beyond `vfio-ioctls` (whose `reset` hides
//! failures and whose groups are private): `VFIO_DEVICE_RESET` with its result, and
//! the hot reset (`VFIO_DEVICE_PCI_HOT_RESET`) of a slot or bus, which needs the fd
//! of every IOMMU group the reset touches.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use vfio_bindings::bindings::vfio::{
    VFIO_TYPE1v2_IOMMU, VFIO_GROUP_FLAGS_VIABLE, VFIO_PCI_HOT_RESET_FLAG_DEV_ID, VFIO_TYPE1_IOMMU,
};

/// `_IO(VFIO_TYPE ';', VFIO_BASE 100 + n)`.
const fn vfio_io(n: libc::c_ulong) -> libc::c_ulong {
    (b';' as libc::c_ulong) << 8 | (100 + n)
}
const VFIO_SET_IOMMU: libc::c_ulong = vfio_io(2);
const VFIO_GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);
/// `VFIO_DEVICE_RESET` = 0x3b6f.
const VFIO_DEVICE_RESET: libc::c_ulong = vfio_io(11);
const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: libc::c_ulong = vfio_io(12);
const VFIO_DEVICE_PCI_HOT_RESET: libc::c_ulong = vfio_io(13);
const _: () = assert!(VFIO_DEVICE_RESET == 0x3b6f);

/// Resets a VFIO device. `Ok(false)`: the device offers no reset (`EINVAL`/`ENOTTY`).
pub fn device_reset(device: &impl AsRawFd) -> std::io::Result<bool> {
    // SAFETY: VFIO_DEVICE_RESET takes no argument and touches no memory of this
    // process; on an fd that is not a VFIO device it fails with ENOTTY.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_RESET as _) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOTTY) => Ok(false),
        _ => Err(e),
    }
}

/// A PCI function that a hot reset of the device's slot or bus resets too (the
/// device itself included), with its IOMMU group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffectedFunction {
    pub address: String,
    pub group: u32,
}

/// Decodes `struct vfio_pci_hot_reset_info`'s entries (`count` of them after the
/// 12-byte header): `group_id` (u32), `segment` (u16), `bus` (u8), `devfn` (u8).
fn decode_affected(words: &[u32], count: usize) -> Vec<AffectedFunction> {
    words[3..]
        .chunks_exact(2)
        .take(count)
        .map(|e| {
            let [seg_lo, seg_hi, bus, devfn] = e[1].to_ne_bytes();
            AffectedFunction {
                address: format!(
                    "{:04x}:{bus:02x}:{:02x}.{}",
                    u16::from_ne_bytes([seg_lo, seg_hi]),
                    devfn >> 3,
                    devfn & 7
                ),
                group: e[0],
            }
        })
        .collect()
}

/// The distinct groups of `affected` other than `own`, in order.
pub fn other_groups(affected: &[AffectedFunction], own: u32) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for f in affected {
        if f.group != own && !out.contains(&f.group) {
            out.push(f.group);
        }
    }
    out
}

/// `ioctl(fd, req, arg)` with the errno as an error.
///
/// # Safety
/// `arg` must point to memory valid for reads and writes of what `req` takes, as
/// large as the `argsz` it carries where it has one.
unsafe fn ioctl_ptr<T>(fd: &impl AsRawFd, req: libc::c_ulong, arg: *mut T) -> std::io::Result<()> {
    // SAFETY: the caller guarantees `arg` is what `req` reads and writes.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_rw(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))
}

/// Opens group `group`, checks that it is viable (every member bound to vfio-pci or
/// a bridge) and puts it into `container`.
fn attach_group(dev_vfio: &Path, container: &File, group: u32) -> Result<File, String> {
    let path = dev_vfio.join(group.to_string());
    let g = open_rw(&path).map_err(|e| format!("{e} (is the group held by a VM?)"))?;
    let mut status = [8u32, 0u32]; // struct vfio_group_status { argsz, flags }
                                   // SAFETY: VFIO_GROUP_GET_STATUS reads and writes the 8-byte struct `status` is.
    unsafe { ioctl_ptr(&g, VFIO_GROUP_GET_STATUS, status.as_mut_ptr()) }
        .map_err(|e| format!("VFIO_GROUP_GET_STATUS on group {group}: {e}"))?;
    if status[1] & VFIO_GROUP_FLAGS_VIABLE == 0 {
        return Err(format!(
            "group {group} is not viable: a member is bound to a host driver"
        ));
    }
    let mut fd = container.as_raw_fd();
    // SAFETY: VFIO_GROUP_SET_CONTAINER reads one int, the container's fd.
    unsafe { ioctl_ptr(&g, VFIO_GROUP_SET_CONTAINER, &mut fd) }
        .map_err(|e| format!("VFIO_GROUP_SET_CONTAINER for group {group}: {e}"))?;
    Ok(g)
}

/// Resets the slot or bus of `address` (in IOMMU group `group`) with
/// `VFIO_DEVICE_PCI_HOT_RESET`, for a device with no reset of its own (no FLR or PM
/// reset, not alone on its bus: a GPU and its audio function). Every group the reset
/// touches is opened and handed to the kernel, which refuses unless they cover every
/// affected function; a group that cannot be opened (held by a VM, or with a member
/// on a host driver) fails the reset with its name. The affected functions are
/// returned for the record.
pub fn hot_reset(
    dev_vfio: &Path,
    group: u32,
    address: &str,
) -> Result<Vec<AffectedFunction>, String> {
    let container = open_rw(&dev_vfio.join("vfio"))?;
    let own = attach_group(dev_vfio, &container, group)?;
    let set = |ty: u32| {
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU type by value and reads no memory.
        unsafe {
            libc::ioctl(
                container.as_raw_fd(),
                VFIO_SET_IOMMU as _,
                ty as libc::c_ulong,
            )
        }
    };
    if set(VFIO_TYPE1v2_IOMMU) < 0 && set(VFIO_TYPE1_IOMMU) < 0 {
        return Err(format!(
            "VFIO_SET_IOMMU (type 1): {}",
            std::io::Error::last_os_error()
        ));
    }
    let name = std::ffi::CString::new(address).map_err(|_| "address holds a NUL".to_string())?;
    // SAFETY: VFIO_GROUP_GET_DEVICE_FD reads the NUL-terminated name and returns a new
    // fd, owned below.
    let dfd = unsafe {
        libc::ioctl(
            own.as_raw_fd(),
            VFIO_GROUP_GET_DEVICE_FD as _,
            name.as_ptr(),
        )
    };
    if dfd < 0 {
        return Err(format!(
            "VFIO_GROUP_GET_DEVICE_FD {address}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    let device = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(dfd) };

    // The affected functions: first ask with room for none to learn the count.
    let mut head = [12u32, 0, 0];
    // SAFETY: the 12-byte header with argsz 12 (room for no entry): the kernel
    // writes the count into it and answers ENOSPC.
    match unsafe {
        ioctl_ptr(
            &device,
            VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
            head.as_mut_ptr(),
        )
    } {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {}
        Err(e) => {
            return Err(format!(
                "no slot or bus reset for {address} (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: {e})"
            ))
        }
    }
    let count = head[2] as usize;
    if count == 0 || count > 256 {
        return Err(format!(
            "the kernel names {count} functions for a hot reset of {address}"
        ));
    }
    let mut info = vec![0u32; 3 + 2 * count];
    info[0] = (info.len() * 4) as u32;
    // SAFETY: `info` is argsz bytes: the header and `count` 8-byte entries.
    unsafe {
        ioctl_ptr(
            &device,
            VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
            info.as_mut_ptr(),
        )
    }
    .map_err(|e| format!("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO {address}: {e}"))?;
    if info[1] & VFIO_PCI_HOT_RESET_FLAG_DEV_ID != 0 {
        return Err("the kernel answered device ids, not groups (iommufd cdev mode)".into());
    }
    let affected = decode_affected(&info, (info[2] as usize).min(count));

    let mut groups = vec![own];
    for g in other_groups(&affected, group) {
        let who: Vec<&str> = affected
            .iter()
            .filter(|f| f.group == g)
            .map(|f| f.address.as_str())
            .collect();
        groups.push(attach_group(dev_vfio, &container, g).map_err(|e| {
            format!(
                "the reset of {address} would also reset {} (group {g}), which bulwarkd cannot take: {e}",
                who.join(", ")
            )
        })?);
    }
    // struct vfio_pci_hot_reset { argsz, flags, count, group_fds[] }
    let mut req: Vec<u32> = vec![0, 0, groups.len() as u32];
    req.extend(groups.iter().map(|g| g.as_raw_fd() as u32));
    req[0] = (req.len() * 4) as u32;
    // SAFETY: `req` is argsz bytes: the header and `count` 4-byte group fds, all open.
    unsafe { ioctl_ptr(&device, VFIO_DEVICE_PCI_HOT_RESET, req.as_mut_ptr()) }
        .map_err(|e| format!("VFIO_DEVICE_PCI_HOT_RESET {address}: {e}"))?;
    Ok(affected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_vfio_fd_reports_no_reset_rather_than_success() {
        let f = File::open("/dev/null").unwrap();
        assert!(!device_reset(&f).unwrap());
    }

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // linux/vfio.h: VFIO_TYPE ';', VFIO_BASE 100.
        assert_eq!(VFIO_SET_IOMMU, 0x3b66);
        assert_eq!(VFIO_GROUP_GET_STATUS, 0x3b67);
        assert_eq!(VFIO_GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, 0x3b70);
        assert_eq!(VFIO_DEVICE_PCI_HOT_RESET, 0x3b71);
    }

    #[test]
    fn hot_reset_info_entries_decode_to_addresses_and_groups() {
        // Two functions of one slot, 0000:03:00.0 and .1, in group 7, and one of
        // segment 1, bus 0x82, device 0x1f function 7 in group 12.
        let e = |seg: u16, bus: u8, devfn: u8| {
            u32::from_ne_bytes([seg.to_ne_bytes()[0], seg.to_ne_bytes()[1], bus, devfn])
        };
        let words = [44, 0, 3, 7, e(0, 3, 0), 7, e(0, 3, 1), 12, e(1, 0x82, 0xff)];
        let got = decode_affected(&words, 3);
        let want = [
            ("0000:03:00.0", 7),
            ("0000:03:00.1", 7),
            ("0001:82:1f.7", 12),
        ];
        assert_eq!(got.len(), 3);
        for (g, (a, grp)) in got.iter().zip(want) {
            assert_eq!((g.address.as_str(), g.group), (a, grp));
        }
        assert_eq!(other_groups(&got, 7), vec![12]);
        assert!(other_groups(&got[..2], 7).is_empty());
        // A count larger than the entries present takes what is there.
        assert_eq!(decode_affected(&words[..5], 3).len(), 1);
    }

    #[test]
    fn hot_reset_without_vfio_says_so() {
        let dir = std::env::temp_dir().join(format!("bulwark-hot-reset-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = hot_reset(&dir, 3, "0000:03:00.0").unwrap_err();
        let container = dir.join("vfio");
        assert!(
            err.starts_with(&format!("opening {}", container.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
