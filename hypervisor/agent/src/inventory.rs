//! Accelerator inventory and VFIO enrolment through sysfs, under a root path
//! (`/sys` on a node, a fake tree in tests).

use std::path::{Path, PathBuf};

use crate::error::{Error, Kind, Result};
use crate::lifecycle::valid_pci_address;
use crate::model::{Device, DeviceKind, DeviceState};

/// PCI class of a PCI-to-PCI bridge (`0x0604xx`): left to its host driver, as
/// bulwark-vmm allows bridges in an assigned device's group.
const CLASS_BRIDGE: u32 = 0x0604;

/// The sysfs tree bulwarkd reads and writes.
#[derive(Debug, Clone)]
pub struct Sysfs {
    pub root: PathBuf,
}

/// One function as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    pub address: String,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub driver: Option<String>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(
        Kind::Internal,
        "sysfs",
        format!("{what} {}: {e}", path.display()),
    )
}

fn parse_hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    fn dev_dir(&self, addr: &str) -> PathBuf {
        self.root.join("bus/pci/devices").join(addr)
    }

    fn read(&self, addr: &str, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dev_dir(addr).join(file))
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn link_name(path: &Path) -> Option<String> {
        std::fs::read_link(path)
            .ok()?
            .file_name()?
            .to_str()
            .map(str::to_string)
    }

    /// The function at `addr`, or an error saying why it cannot be read.
    pub fn function(&self, addr: &str) -> Result<PciFunction> {
        if !valid_pci_address(addr) {
            return Err(Error::bad(
                "address",
                format!("{addr:?} is not a PCI address DDDD:BB:DD.F"),
            ));
        }
        let dir = self.dev_dir(addr);
        if !dir.exists() {
            return Err(Error::not_found(
                "address",
                format!(
                    "no PCI device {addr} in {}",
                    self.root.join("bus/pci/devices").display()
                ),
            ));
        }
        let field = |f: &str| -> Result<u32> {
            let s = self
                .read(addr, f)
                .ok_or_else(|| Error::internal("sysfs", format!("{addr}: cannot read {f}")))?;
            parse_hex(&s)
                .ok_or_else(|| Error::internal("sysfs", format!("{addr}: {f} is {s:?}, not hex")))
        };
        Ok(PciFunction {
            address: addr.to_string(),
            vendor: field("vendor")? as u16,
            device: field("device")? as u16,
            class: field("class")?,
            driver: Self::link_name(&dir.join("driver")),
        })
    }

    /// The IOMMU group of `addr` and all its members (itself included), sorted.
    pub fn iommu_group(&self, addr: &str) -> Option<(u32, Vec<String>)> {
        let group: u32 = Self::link_name(&self.dev_dir(addr).join("iommu_group"))?
            .parse()
            .ok()?;
        let dir = self
            .root
            .join("kernel/iommu_groups")
            .join(group.to_string())
            .join("devices");
        let mut members: Vec<String> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|a| valid_pci_address(a))
            .collect();
        members.sort();
        Some((group, members))
    }

    /// The PCIe device serial number from the DSN extended capability of the config
    /// space, where sysfs lets us read past the first 256 bytes.
    fn serial(&self, addr: &str) -> Option<String> {
        let cfg = std::fs::read(self.dev_dir(addr).join("config")).ok()?;
        let dword = |off: usize| {
            cfg.get(off..off + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let mut off = 0x100;
        for _ in 0..64 {
            let h = dword(off)?;
            if h == 0 || h == u32::MAX {
                return None;
            }
            if h & 0xffff == 0x0003 {
                let lo = dword(off + 4)?;
                let hi = dword(off + 8)?;
                let v = (u64::from(hi) << 32) | u64::from(lo);
                let b = v.to_be_bytes();
                return Some(
                    b.iter()
                        .map(|x| format!("{x:02x}"))
                        .collect::<Vec<_>>()
                        .join("-"),
                );
            }
            let next = ((h >> 20) & 0xffc) as usize;
            if next < 0x100 {
                return None;
            }
            off = next;
        }
        None
    }

    /// A tracked device record for `f`, in state unenrolled.
    pub fn describe(&self, f: &PciFunction, kind: DeviceKind) -> Device {
        let addr = &f.address;
        let (group, members) = match self.iommu_group(addr) {
            Some((g, m)) => (Some(g), m.into_iter().filter(|m| m != addr).collect()),
            None => (None, Vec::new()),
        };
        let link = match (
            self.read(addr, "current_link_speed"),
            self.read(addr, "current_link_width"),
        ) {
            (Some(s), Some(w)) => Some(format!("{s} x{w}")),
            (Some(s), None) => Some(s),
            _ => None,
        };
        Device {
            address: addr.clone(),
            id: format!("{:04x}:{:04x}", f.vendor, f.device),
            class: format!("0x{:06x}", f.class),
            kind,
            iommu_group: group,
            group_members: members,
            numa_node: self.read(addr, "numa_node").and_then(|s| s.parse().ok()),
            link,
            serial: self.serial(addr),
            driver: f.driver.clone(),
            present: true,
            state: DeviceState::Unenrolled,
            owner_vm: None,
            reason: None,
            last_scrub: None,
            scrub_in_progress: None,
        }
    }

    /// The node's accelerators: NVIDIA/AMD GPUs (class 0x0300/0x0302), NVSwitches
    /// (10de, class 0x0680), and the functions named in `configured`.
    pub fn scan(&self, configured: &[String]) -> Result<Vec<Device>> {
        let dir = self.root.join("bus/pci/devices");
        let entries = std::fs::read_dir(&dir).map_err(|e| io_err("reading", &dir, e))?;
        let mut addrs: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|a| valid_pci_address(a))
            .collect();
        addrs.sort();
        let mut out = Vec::new();
        for a in addrs {
            let Ok(f) = self.function(&a) else {
                tracing::warn!(address = %a, "unreadable PCI function skipped");
                continue;
            };
            let base = f.class >> 8;
            let kind = if configured.contains(&a) {
                Some(DeviceKind::Configured)
            } else if (f.vendor == 0x10de || f.vendor == 0x1002)
                && (base == 0x0300 || base == 0x0302)
            {
                Some(DeviceKind::Gpu)
            } else if f.vendor == 0x10de && base == 0x0680 {
                Some(DeviceKind::Nvswitch)
            } else {
                None
            };
            if let Some(k) = kind {
                out.push(self.describe(&f, k));
            }
        }
        for c in configured {
            if !out.iter().any(|d| &d.address == c) {
                return Err(Error::new(
                    Kind::Unprocessable,
                    "config.devices",
                    format!("configured device {c} is not on this node"),
                ));
            }
        }
        Ok(out)
    }

    /// Binds every non-bridge member of `addr`'s IOMMU group to vfio-pci
    /// (driver_override, unbind, drivers_probe) and checks that each ended up there.
    /// Refused (nothing written) when the group cannot be made whole: no group, or a
    /// member bound to a driver in `disallowed`. Returns the members bound.
    pub fn enroll_group(&self, addr: &str, disallowed: &[String]) -> Result<Vec<PciFunction>> {
        let (group, members) = self.iommu_group(addr).ok_or_else(|| {
            Error::new(
                Kind::Unprocessable,
                "address",
                format!(
                    "{addr} has no IOMMU group (is the IOMMU on? intel_iommu=on / amd_iommu=on)"
                ),
            )
        })?;
        let mut bind = Vec::new();
        for m in &members {
            let f = self.function(m)?;
            if f.class >> 8 == CLASS_BRIDGE {
                continue;
            }
            if let Some(d) = &f.driver {
                if disallowed.contains(d) {
                    return Err(Error::conflict(
                        "address",
                        format!("IOMMU group {group} cannot be made whole: member {m} is bound to host driver {d}, which is not allowed to be unbound"),
                    ));
                }
            }
            bind.push(f);
        }
        for f in &bind {
            if f.driver.as_deref() == Some("vfio-pci") {
                continue;
            }
            let dir = self.dev_dir(&f.address);
            write_attr(dir.join("driver_override"), "vfio-pci")?;
            if f.driver.is_some() {
                write_attr(dir.join("driver/unbind"), &f.address)?;
            }
            write_attr(self.root.join("bus/pci/drivers_probe"), &f.address)?;
        }
        let mut bound = Vec::new();
        for f in bind {
            let now = self.function(&f.address)?;
            if now.driver.as_deref() != Some("vfio-pci") {
                return Err(Error::new(
                    Kind::Unprocessable,
                    "address",
                    format!(
                        "IOMMU group {group}: {} did not bind to vfio-pci (driver now: {}); is the vfio-pci module loaded?",
                        f.address,
                        now.driver.as_deref().unwrap_or("none")
                    ),
                ));
            }
            bound.push(now);
        }
        Ok(bound)
    }

    /// Gives `members` back to the host: for each one bound to vfio-pci, clears
    /// `driver_override`, unbinds it and asks the kernel to probe its own driver
    /// (`drivers_probe`). Returns each member with the driver it is on now (`None`:
    /// no driver claims it); a member still on vfio-pci afterwards is an error.
    pub fn unenroll_members(&self, members: &[String]) -> Result<Vec<(String, Option<String>)>> {
        for m in members {
            let f = self.function(m)?;
            let dir = self.dev_dir(m);
            // A newline clears the override (the kernel's driver_override store).
            write_attr(dir.join("driver_override"), "\n")?;
            if f.driver.as_deref() == Some("vfio-pci") {
                write_attr(dir.join("driver/unbind"), m)?;
                write_attr(self.root.join("bus/pci/drivers_probe"), m)?;
            }
        }
        let mut out = Vec::new();
        for m in members {
            let now = self.function(m)?;
            if now.driver.as_deref() == Some("vfio-pci") {
                return Err(Error::new(
                    Kind::Unprocessable,
                    "address",
                    format!("{m} is still bound to vfio-pci after the unbind"),
                ));
            }
            out.push((m.clone(), now.driver));
        }
        Ok(out)
    }
}

/// Writes one sysfs attribute (driver_override, unbind, drivers_probe).
fn write_attr(p: PathBuf, v: &str) -> Result<()> {
    std::fs::write(&p, v).map_err(|e| io_err("writing", &p, e))
}

/// Builders of fake sysfs trees (tests of this crate and its integration tests).
pub mod fake {
    use std::path::Path;

    /// Adds function `addr` to the fake tree at `root`.
    pub fn add(
        root: &Path,
        addr: &str,
        vendor: u16,
        device: u16,
        class: u32,
        group: u32,
        driver: Option<&str>,
    ) {
        let dev = root.join("bus/pci/devices").join(addr);
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vendor"), format!("0x{vendor:04x}\n")).unwrap();
        std::fs::write(dev.join("device"), format!("0x{device:04x}\n")).unwrap();
        std::fs::write(dev.join("class"), format!("0x{class:06x}\n")).unwrap();
        std::fs::write(dev.join("numa_node"), "1\n").unwrap();
        std::fs::write(dev.join("current_link_speed"), "32.0 GT/s PCIe\n").unwrap();
        std::fs::write(dev.join("current_link_width"), "16\n").unwrap();
        std::fs::write(dev.join("driver_override"), "(null)\n").unwrap();
        let g = root.join("kernel/iommu_groups").join(group.to_string());
        std::fs::create_dir_all(g.join("devices")).unwrap();
        std::fs::write(g.join("devices").join(addr), "").unwrap();
        std::os::unix::fs::symlink(&g, dev.join("iommu_group")).unwrap();
        std::fs::write(root.join("bus/pci/drivers_probe"), "").unwrap();
        if let Some(d) = driver {
            set_driver(root, addr, d);
        }
    }

    /// Removes `addr`'s driver link (as the kernel does on unbind).
    pub fn clear_driver(root: &Path, addr: &str) {
        let _ = std::fs::remove_file(root.join("bus/pci/devices").join(addr).join("driver"));
    }

    /// Points `addr`'s driver link at `driver` (as the kernel does on bind).
    pub fn set_driver(root: &Path, addr: &str, driver: &str) {
        let drv = root.join("bus/pci/drivers").join(driver);
        std::fs::create_dir_all(&drv).unwrap();
        std::fs::write(drv.join("unbind"), "").unwrap();
        let link = root.join("bus/pci/devices").join(addr).join("driver");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&drv, link).unwrap();
    }

    /// Writes a config space with a DSN capability holding `serial`.
    pub fn set_serial(root: &Path, addr: &str, serial: u64) {
        let mut cfg = vec![0u8; 0x200];
        // An AER capability (id 1) at 0x100 pointing at the DSN one at 0x140.
        cfg[0x100..0x104].copy_from_slice(&(0x0001u32 | (1 << 16) | (0x140 << 20)).to_le_bytes());
        cfg[0x140..0x144].copy_from_slice(&(0x0003u32 | (1 << 16)).to_le_bytes());
        cfg[0x144..0x148].copy_from_slice(&(serial as u32).to_le_bytes());
        cfg[0x148..0x14c].copy_from_slice(&((serial >> 32) as u32).to_le_bytes());
        std::fs::write(root.join("bus/pci/devices").join(addr).join("config"), cfg).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        add(
            r,
            "0000:01:00.0",
            0x10de,
            0x2330,
            0x030200,
            10,
            Some("vfio-pci"),
        );
        add(
            r,
            "0000:02:00.0",
            0x1002,
            0x74a1,
            0x030000,
            11,
            Some("amdgpu"),
        );
        add(
            r,
            "0000:02:00.1",
            0x1002,
            0xab38,
            0x040300,
            11,
            Some("snd_hda_intel"),
        );
        add(
            r,
            "0000:02:01.0",
            0x1002,
            0x1478,
            0x060400,
            11,
            Some("pcieport"),
        );
        add(r, "0000:03:00.0", 0x10de, 0x22a3, 0x068000, 12, None);
        add(
            r,
            "0000:04:00.0",
            0x8086,
            0x0b60,
            0x010802,
            13,
            Some("nvme"),
        );
        add(r, "0000:05:00.0", 0x10de, 0x2330, 0x030200, 14, None);
        add(
            r,
            "0000:05:00.1",
            0x144d,
            0xa808,
            0x010802,
            14,
            Some("nvme"),
        );
        add(r, "0000:06:00.0", 0x1af4, 0x1110, 0x050000, 15, None);
        set_serial(r, "0000:01:00.0", 0x0123_4567_89ab_cdef);
        t
    }

    #[test]
    fn scan_finds_gpus_nvswitches_and_configured_devices_with_their_groups() {
        let t = tree();
        let s = Sysfs::new(t.path());
        let devs = s.scan(&["0000:06:00.0".into()]).unwrap();
        let got: Vec<(&str, DeviceKind)> =
            devs.iter().map(|d| (d.address.as_str(), d.kind)).collect();
        assert_eq!(
            got,
            [
                ("0000:01:00.0", DeviceKind::Gpu),
                ("0000:02:00.0", DeviceKind::Gpu),
                ("0000:03:00.0", DeviceKind::Nvswitch),
                ("0000:05:00.0", DeviceKind::Gpu),
                ("0000:06:00.0", DeviceKind::Configured),
            ]
        );
        let amd = &devs[1];
        assert_eq!(amd.id, "1002:74a1");
        assert_eq!(amd.class, "0x030000");
        assert_eq!(amd.iommu_group, Some(11));
        assert_eq!(amd.group_members, ["0000:02:00.1", "0000:02:01.0"]);
        assert_eq!(amd.numa_node, Some(1));
        assert_eq!(amd.link.as_deref(), Some("32.0 GT/s PCIe x16"));
        assert_eq!(amd.driver.as_deref(), Some("amdgpu"));
        assert_eq!(amd.serial, None);
        assert_eq!(devs[0].serial.as_deref(), Some("01-23-45-67-89-ab-cd-ef"));
        assert!(devs
            .iter()
            .all(|d| d.state == DeviceState::Unenrolled && d.present));
        let e = s.scan(&["0000:09:00.0".into()]).unwrap_err();
        assert_eq!(e.field, "config.devices");
    }

    #[test]
    fn enroll_binds_every_non_bridge_member_through_sysfs() {
        let t = tree();
        let s = Sysfs::new(t.path());
        // The fake kernel never rebinds, so the check after the writes fails, naming the device...
        let e = s
            .enroll_group("0000:02:00.0", &["nvme".into()])
            .unwrap_err();
        assert!(
            e.message
                .contains("0000:02:00.0 did not bind to vfio-pci (driver now: amdgpu)"),
            "{e}"
        );
        // ...but the writes the kernel acts on were made, for both functions and not the bridge.
        let dev = |a: &str, f: &str| {
            std::fs::read_to_string(t.path().join("bus/pci/devices").join(a).join(f)).unwrap()
        };
        assert_eq!(dev("0000:02:00.0", "driver_override"), "vfio-pci");
        assert_eq!(dev("0000:02:00.1", "driver_override"), "vfio-pci");
        assert_eq!(dev("0000:02:01.0", "driver_override"), "(null)\n");
        // `driver/unbind` resolves through the link: the last address written to each driver.
        assert_eq!(
            std::fs::read_to_string(t.path().join("bus/pci/drivers/amdgpu/unbind")).unwrap(),
            "0000:02:00.0"
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("bus/pci/drivers/snd_hda_intel/unbind")).unwrap(),
            "0000:02:00.1"
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("bus/pci/drivers_probe")).unwrap(),
            "0000:02:00.1"
        );
        // Once "the kernel" bound them, enrolment succeeds and returns the members.
        set_driver(t.path(), "0000:02:00.0", "vfio-pci");
        set_driver(t.path(), "0000:02:00.1", "vfio-pci");
        let bound = s.enroll_group("0000:02:00.0", &[]).unwrap();
        let addrs: Vec<&str> = bound.iter().map(|f| f.address.as_str()).collect();
        assert_eq!(addrs, ["0000:02:00.0", "0000:02:00.1"]);
    }

    #[test]
    fn unenrolment_clears_the_override_unbinds_and_probes() {
        let t = tree();
        let s = Sysfs::new(t.path());
        let members = ["0000:02:00.0".to_string(), "0000:02:00.1".to_string()];
        for m in &members {
            set_driver(t.path(), m, "vfio-pci");
            std::fs::write(
                t.path()
                    .join("bus/pci/devices")
                    .join(m)
                    .join("driver_override"),
                "vfio-pci",
            )
            .unwrap();
        }
        // The fake kernel does not unbind: the check after the writes says so...
        let e = s.unenroll_members(&members).unwrap_err();
        assert!(
            e.message
                .contains("0000:02:00.0 is still bound to vfio-pci"),
            "{e}"
        );
        let dev = |a: &str, f: &str| {
            std::fs::read_to_string(t.path().join("bus/pci/devices").join(a).join(f)).unwrap()
        };
        for m in &members {
            assert_eq!(dev(m, "driver_override"), "\n");
        }
        assert_eq!(
            std::fs::read_to_string(t.path().join("bus/pci/drivers/vfio-pci/unbind")).unwrap(),
            "0000:02:00.1"
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("bus/pci/drivers_probe")).unwrap(),
            "0000:02:00.1"
        );
        // ...and once "the kernel" let go (one member back on its host driver, one on
        // none), each is reported with the driver it is on.
        clear_driver(t.path(), "0000:02:00.0");
        set_driver(t.path(), "0000:02:00.1", "snd_hda_intel");
        assert_eq!(
            s.unenroll_members(&members).unwrap(),
            [
                ("0000:02:00.0".to_string(), None),
                (
                    "0000:02:00.1".to_string(),
                    Some("snd_hda_intel".to_string())
                )
            ]
        );
    }

    #[test]
    fn a_group_with_a_disallowed_host_driver_is_refused_and_nothing_is_written() {
        let t = tree();
        let s = Sysfs::new(t.path());
        let e = s
            .enroll_group("0000:05:00.0", &["nvme".into()])
            .unwrap_err();
        assert_eq!(e.kind, Kind::Conflict);
        assert!(
            e.message
                .contains("member 0000:05:00.1 is bound to host driver nvme"),
            "{e}"
        );
        let o = std::fs::read_to_string(
            t.path()
                .join("bus/pci/devices/0000:05:00.0/driver_override"),
        )
        .unwrap();
        assert_eq!(o, "(null)\n");
    }

    #[test]
    fn no_group_bad_and_missing_addresses() {
        let t = tree();
        let s = Sysfs::new(t.path());
        std::fs::remove_file(t.path().join("bus/pci/devices/0000:03:00.0/iommu_group")).unwrap();
        let e = s.enroll_group("0000:03:00.0", &[]).unwrap_err();
        assert!(e.message.contains("no IOMMU group"), "{e}");
        assert_eq!(s.function("../../etc").unwrap_err().kind, Kind::BadRequest);
        assert_eq!(s.function("0000:0f:00.0").unwrap_err().kind, Kind::NotFound);
        // An unreadable tree is an error naming the path, not a panic.
        let e = Sysfs::new("/nonexistent-sysfs").scan(&[]).unwrap_err();
        assert!(
            e.message.contains("/nonexistent-sysfs/bus/pci/devices"),
            "{e}"
        );
    }
}
