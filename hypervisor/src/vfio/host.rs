//! Checks on the host before anything is opened: the device exists, is bound to
//! vfio-pci, and every other member of its IOMMU group is either assigned to this VM
//! too (and bound to vfio-pci) or a PCI bridge; and the locked-memory limit covers
//! guest RAM. Reads sysfs under a root given by the caller (tests use a fake tree).

use std::path::{Path, PathBuf};

use crate::pci::Bdf;

/// What sysfs says about one assigned device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// Its PCI address.
    pub bdf: Bdf,
    /// Its IOMMU group number (`/dev/vfio/N`).
    pub group: u32,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Its VFIO device cdev (`vfioN`) when the VM uses the iommufd interface; `None`
    /// for the legacy container/group interface.
    pub cdev: Option<String>,
}

/// Why a device cannot be assigned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// No such PCI function.
    #[error("devices.vfio: no PCI device {0} on this host ({1} does not exist)")]
    NoDevice(String, String),
    /// No IOMMU group (IOMMU off or not present).
    #[error("devices.vfio: {0} has no IOMMU group: the host IOMMU is off or missing (intel_iommu=on / amd_iommu=on)")]
    NoGroup(String),
    /// The device itself is not bound to vfio-pci.
    #[error("devices.vfio: {bdf} is bound to {driver}, not vfio-pci (echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/drivers_probe)")]
    NotVfio {
        /// The device.
        bdf: String,
        /// Its driver, or "no driver".
        driver: String,
    },
    /// Another member of the group keeps the group from being assigned.
    #[error("devices.vfio: {bdf} is in IOMMU group {group} with {other}, which is {why}; every device in the group must be bound to vfio-pci and assigned to this VM (or be a PCI bridge)")]
    GroupMember {
        /// The device asked for.
        bdf: String,
        /// Its group.
        group: u32,
        /// The member in the way.
        other: String,
        /// What is wrong with it.
        why: String,
    },
    /// The iommufd interface was asked for but the device has no VFIO cdev.
    #[error("devices.vfio: {bdf} has no VFIO device cdev ({why}): the iommufd interface needs a kernel with CONFIG_VFIO_DEVICE_CDEV (6.6 or later); use \"interface\": \"container\"")]
    NoCdev {
        /// The device.
        bdf: String,
        /// What is missing.
        why: String,
    },
    /// Something in sysfs could not be read or parsed.
    #[error("devices.vfio: {0}")]
    Sysfs(String),
    /// The locked-memory limit is below guest RAM.
    #[error("RLIMIT_MEMLOCK is {limit} bytes but passthrough pins all {need} bytes of guest RAM for DMA: raise it (ulimit -l, systemd LimitMEMLOCK=) to at least {need_kib} KiB")]
    Memlock {
        /// The soft limit.
        limit: u64,
        /// Guest RAM.
        need: u64,
        /// Guest RAM in KiB (what `ulimit -l` takes).
        need_kib: u64,
    },
}

fn read_trimmed(p: &Path) -> Result<String, HostError> {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(|e| HostError::Sysfs(format!("reading {}: {e}", p.display())))
}

fn read_hex(p: &Path) -> Result<u32, HostError> {
    let s = read_trimmed(p)?;
    u32::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| HostError::Sysfs(format!("{}: {s:?} is not hexadecimal", p.display())))
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// The sysfs directory of `bdf` under `root` (normally `/sys/bus/pci/devices`).
pub fn device_dir(root: &Path, bdf: &Bdf) -> PathBuf {
    root.join(bdf.to_string())
}

/// Checks `bdf` for assignment together with `assigned` (all devices of this VM).
pub fn check_device(root: &Path, bdf: &Bdf, assigned: &[Bdf]) -> Result<HostDevice, HostError> {
    let dir = device_dir(root, bdf);
    let name = bdf.to_string();
    if !dir.exists() {
        return Err(HostError::NoDevice(name, dir.display().to_string()));
    }
    let group =
        link_name(&dir.join("iommu_group")).ok_or_else(|| HostError::NoGroup(name.clone()))?;
    let group: u32 = group
        .parse()
        .map_err(|_| HostError::Sysfs(format!("{name}: IOMMU group {group:?} is not a number")))?;
    let driver = link_name(&dir.join("driver")).unwrap_or_else(|| "no driver".into());
    if driver != "vfio-pci" {
        return Err(HostError::NotVfio { bdf: name, driver });
    }
    let members = dir.join("iommu_group").join("devices");
    let entries = std::fs::read_dir(&members)
        .map_err(|e| HostError::Sysfs(format!("listing {}: {e}", members.display())))?;
    for entry in entries.take(256) {
        let entry = entry.map_err(|e| HostError::Sysfs(format!("{}: {e}", members.display())))?;
        let other = entry.file_name().to_string_lossy().into_owned();
        if other == name {
            continue;
        }
        let odir = root.join(&other);
        let class = read_hex(&odir.join("class")).unwrap_or(0);
        if class >> 8 == 0x0604 {
            continue; // A PCI-to-PCI bridge; it does no DMA of its own.
        }
        let odriver = link_name(&odir.join("driver"));
        let in_vm = other.parse::<Bdf>().is_ok_and(|b| assigned.contains(&b));
        let why = match (odriver.as_deref(), in_vm) {
            (Some("vfio-pci"), true) => continue,
            (Some("vfio-pci"), false) => {
                "bound to vfio-pci but not assigned to this VM".to_string()
            }
            (Some(d), _) => format!("bound to the host driver {d}"),
            (None, _) => "not bound to vfio-pci (no driver)".to_string(),
        };
        return Err(HostError::GroupMember {
            bdf: name,
            group,
            other,
            why,
        });
    }
    Ok(HostDevice {
        bdf: *bdf,
        group,
        vendor: read_hex(&dir.join("vendor"))? as u16,
        device: read_hex(&dir.join("device"))? as u16,
        cdev: None,
    })
}

/// The VFIO device cdev of `bdf` (`vfioN`, opened as `/dev/vfio/devices/vfioN`),
/// for the iommufd interface: sysfs lists it as the one entry of
/// `<device>/vfio-dev/`; `dev_dir` is where its node must be (normally
/// `/dev/vfio/devices`).
pub fn check_cdev(root: &Path, dev_dir: &Path, bdf: &Bdf) -> Result<String, HostError> {
    let dir = device_dir(root, bdf).join("vfio-dev");
    let no = |why: String| HostError::NoCdev {
        bdf: bdf.to_string(),
        why,
    };
    let names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| no(format!("{}: {e}", dir.display())))?
        .take(16)
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let [name] = names.as_slice() else {
        return Err(no(format!(
            "{} lists {} entries, not one",
            dir.display(),
            names.len()
        )));
    };
    let numbered = name
        .strip_prefix("vfio")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
    if !numbered {
        return Err(no(format!("{}: unexpected entry {name:?}", dir.display())));
    }
    if !dev_dir.join(name).exists() {
        return Err(no(format!(
            "{} does not exist",
            dev_dir.join(name).display()
        )));
    }
    Ok(name.clone())
}

/// Only the IDs of `bdf` (for `bulwark-vmm measure`, which opens nothing).
pub fn describe(root: &Path, bdf: &Bdf) -> Result<HostDevice, HostError> {
    let dir = device_dir(root, bdf);
    if !dir.exists() {
        return Err(HostError::NoDevice(
            bdf.to_string(),
            dir.display().to_string(),
        ));
    }
    let group = link_name(&dir.join("iommu_group"))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    Ok(HostDevice {
        bdf: *bdf,
        group,
        vendor: read_hex(&dir.join("vendor"))? as u16,
        device: read_hex(&dir.join("device"))? as u16,
        cdev: None,
    })
}

/// Checks the locked-memory limit `limit` (None: unlimited) against `guest_ram`.
pub fn check_memlock(limit: Option<u64>, guest_ram: u64) -> Result<(), HostError> {
    match limit {
        Some(l) if l < guest_ram => Err(HostError::Memlock {
            limit: l,
            need: guest_ram,
            need_kib: guest_ram.div_ceil(1024),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake `/sys`: devices under `bus/pci/devices`, drivers and groups as links.
    struct FakeSys(tempfile::TempDir);

    impl FakeSys {
        fn new() -> Self {
            FakeSys(tempfile::tempdir().unwrap())
        }
        fn devices(&self) -> PathBuf {
            self.0.path().join("bus/pci/devices")
        }
        fn add(&self, bdf: &str, group: Option<u32>, driver: Option<&str>, class: u32) {
            let d = self.devices().join(bdf);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vendor"), "0x1234\n").unwrap();
            std::fs::write(d.join("device"), "0x11e8\n").unwrap();
            std::fs::write(d.join("class"), format!("{class:#08x}\n")).unwrap();
            if let Some(drv) = driver {
                let dd = self.0.path().join("bus/pci/drivers").join(drv);
                std::fs::create_dir_all(&dd).unwrap();
                symlink(&dd, d.join("driver")).unwrap();
            }
            if let Some(g) = group {
                let gd = self
                    .0
                    .path()
                    .join("kernel/iommu_groups")
                    .join(g.to_string());
                std::fs::create_dir_all(gd.join("devices")).unwrap();
                symlink(&d, gd.join("devices").join(bdf)).unwrap();
                symlink(&gd, d.join("iommu_group")).unwrap();
            }
        }
    }

    fn b(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    #[test]
    fn a_lone_vfio_device_passes() {
        let s = FakeSys::new();
        s.add("0000:00:03.0", Some(7), Some("vfio-pci"), 0x00ff00);
        let d = check_device(&s.devices(), &b("0000:00:03.0"), &[b("0000:00:03.0")]).unwrap();
        assert_eq!((d.group, d.vendor, d.device), (7, 0x1234, 0x11e8));
    }

    #[test]
    fn refusals_are_specific() {
        let s = FakeSys::new();
        s.add("0000:00:03.0", Some(7), Some("vfio-pci"), 0x00ff00);
        s.add("0000:00:03.1", Some(7), Some("e1000e"), 0x020000);
        s.add("0000:00:04.0", Some(8), Some("nvidia"), 0x030000);
        s.add("0000:00:05.0", None, None, 0x030000);
        s.add("0000:00:06.0", Some(9), Some("vfio-pci"), 0x030000);
        s.add("0000:00:06.1", Some(9), Some("vfio-pci"), 0x040300);
        s.add("0000:00:06.2", Some(9), None, 0x060400);
        let root = s.devices();
        let e = check_device(&root, &b("0000:00:09.0"), &[]).unwrap_err();
        assert!(matches!(e, HostError::NoDevice(..)), "{e}");
        assert!(e.to_string().contains("no PCI device 0000:00:09.0"));
        let e = check_device(&root, &b("0000:00:03.0"), &[b("0000:00:03.0")]).unwrap_err();
        assert!(
            e.to_string().contains("0000:00:03.1") && e.to_string().contains("e1000e"),
            "{e}"
        );
        let e = check_device(&root, &b("0000:00:04.0"), &[]).unwrap_err();
        assert_eq!(
            e,
            HostError::NotVfio {
                bdf: "0000:00:04.0".into(),
                driver: "nvidia".into()
            }
        );
        assert!(matches!(
            check_device(&root, &b("0000:00:05.0"), &[]).unwrap_err(),
            HostError::NoGroup(_)
        ));
        // A vfio-bound sibling that this VM does not take is refused too...
        let e = check_device(&root, &b("0000:00:06.0"), &[b("0000:00:06.0")]).unwrap_err();
        assert!(e.to_string().contains("not assigned to this VM"), "{e}");
        // ...and accepted when assigned; the bridge (06.2, no driver) is fine.
        check_device(
            &root,
            &b("0000:00:06.0"),
            &[b("0000:00:06.0"), b("0000:00:06.1")],
        )
        .unwrap();
    }

    #[test]
    fn the_cdev_is_the_one_vfio_dev_entry_with_a_device_node() {
        let s = FakeSys::new();
        s.add("0000:00:03.0", Some(7), Some("vfio-pci"), 0x00ff00);
        let root = s.devices();
        let dev = s.0.path().join("dev/vfio/devices");
        std::fs::create_dir_all(&dev).unwrap();
        let bdf = b("0000:00:03.0");
        // A kernel without cdevs has no vfio-dev directory.
        let e = check_cdev(&root, &dev, &bdf).unwrap_err();
        assert!(
            matches!(e, HostError::NoCdev { .. }) && e.to_string().contains("6.6"),
            "{e}"
        );
        let vd = root.join("0000:00:03.0/vfio-dev");
        std::fs::create_dir_all(vd.join("vfio3")).unwrap();
        let e = check_cdev(&root, &dev, &bdf).unwrap_err();
        assert!(e.to_string().contains("vfio3 does not exist"), "{e}");
        std::fs::write(dev.join("vfio3"), "").unwrap();
        assert_eq!(check_cdev(&root, &dev, &bdf).unwrap(), "vfio3");
        // Two entries, or a name that is not vfioN (it is joined to a path): refused.
        std::fs::create_dir_all(vd.join("vfio4")).unwrap();
        assert!(check_cdev(&root, &dev, &bdf)
            .unwrap_err()
            .to_string()
            .contains("2 entries"));
        std::fs::remove_dir(vd.join("vfio4")).unwrap();
        std::fs::remove_dir(vd.join("vfio3")).unwrap();
        std::fs::create_dir_all(vd.join("..vfio")).unwrap();
        assert!(check_cdev(&root, &dev, &bdf)
            .unwrap_err()
            .to_string()
            .contains("unexpected entry"));
    }

    #[test]
    fn memlock() {
        check_memlock(None, 1 << 40).unwrap();
        check_memlock(Some(1 << 30), 1 << 30).unwrap();
        let e = check_memlock(Some(8 << 20), 1 << 30).unwrap_err();
        assert!(e.to_string().contains("1048576 KiB"), "{e}");
    }
}
