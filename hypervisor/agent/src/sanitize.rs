//! Sanitization of a device between tenants: a device reset, then a vendor scrub
//! step, each behind the `Sanitizer` trait and each recorded (method, time, result)
//! by the agent. Implementations: `VfioSanitizer` (the node's) and
//! `SoftwareSanitizer` (tests; touches no hardware and says so in its records).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::SanitizerConfig;
use crate::model::Device;

/// The steps of a scrub, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Function-level or bus reset through VFIO.
    Reset,
    /// The vendor's clear-and-check after the reset.
    VendorScrub,
}

impl Step {
    pub const ALL: [Step; 2] = [Step::Reset, Step::VendorScrub];
    pub fn name(self) -> &'static str {
        match self {
            Step::Reset => "reset",
            Step::VendorScrub => "vendor_scrub",
        }
    }
}

/// What a step did (`method`) and what it found (`detail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    pub method: String,
    pub detail: String,
}

/// A step that failed: the device is quarantined with `detail` as the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    pub method: String,
    pub detail: String,
}

/// One way to sanitize devices. Steps block (they run on a blocking thread under the
/// agent's timeout).
pub trait Sanitizer: Send + Sync + std::fmt::Debug {
    fn step(&self, dev: &Device, step: Step) -> Result<StepReport, StepFailure>;
}

/// Builds the sanitizer the config names.
pub fn from_config(cfg: &SanitizerConfig, sysfs_root: &Path) -> Arc<dyn Sanitizer> {
    match cfg {
        SanitizerConfig::Vfio => Arc::new(VfioSanitizer::new(sysfs_root, Path::new("/dev/vfio"))),
        SanitizerConfig::SoftwareTest {
            fail,
            hang,
            step_ms,
        } => Arc::new(SoftwareSanitizer {
            fail: fail.clone(),
            hang: hang.clone(),
            step: Duration::from_millis(*step_ms),
        }),
    }
}

/// Touches no hardware. Fails the devices in `fail` (at the vendor step), never
/// finishes for those in `hang`, and takes `step` per step.
#[derive(Debug, Clone, Default)]
pub struct SoftwareSanitizer {
    pub fail: Vec<String>,
    pub hang: Vec<String>,
    pub step: Duration,
}

impl Sanitizer for SoftwareSanitizer {
    fn step(&self, dev: &Device, step: Step) -> Result<StepReport, StepFailure> {
        let method = "software-test (no hardware touched)".to_string();
        if self.hang.contains(&dev.address) {
            // A hung device: sleeps past any timeout (the agent gives up on it).
            std::thread::sleep(Duration::from_secs(24 * 3600));
        }
        std::thread::sleep(self.step);
        if step == Step::VendorScrub && self.fail.contains(&dev.address) {
            return Err(StepFailure {
                method,
                detail: "software-test: injected scrub failure".into(),
            });
        }
        Ok(StepReport {
            method,
            detail: format!("software-test {} done", step.name()),
        })
    }
}

/// Resets through VFIO (`VFIO_DEVICE_RESET`: vfio-pci's FLR, PM or bus reset, as the
/// device supports; else `VFIO_DEVICE_PCI_HOT_RESET` of its slot or bus) and checks
/// that the device answers again with bus mastering off.
#[derive(Debug, Clone)]
pub struct VfioSanitizer {
    sysfs_root: PathBuf,
    dev_vfio: PathBuf,
}

impl VfioSanitizer {
    pub fn new(sysfs_root: &Path, dev_vfio: &Path) -> VfioSanitizer {
        VfioSanitizer {
            sysfs_root: sysfs_root.to_path_buf(),
            dev_vfio: dev_vfio.to_path_buf(),
        }
    }

    fn open(&self, dev: &Device, method: &str) -> Result<vfio_ioctls::VfioDevice, StepFailure> {
        let fail = |detail: String| StepFailure {
            method: method.to_string(),
            detail,
        };
        if !self.dev_vfio.join("vfio").exists() {
            return Err(fail(format!(
                "VFIO is not available on this machine ({} is absent: load vfio-pci, enable the IOMMU)",
                self.dev_vfio.join("vfio").display()
            )));
        }
        let group = dev
            .iommu_group
            .ok_or_else(|| fail("device has no IOMMU group".into()))?;
        if !self.dev_vfio.join(group.to_string()).exists() {
            return Err(fail(format!(
                "{} is absent: is the group bound to vfio-pci?",
                self.dev_vfio.join(group.to_string()).display()
            )));
        }
        let container = vfio_ioctls::VfioContainer::new(None)
            .map_err(|e| fail(format!("opening the VFIO container: {e}")))?;
        let path = self.sysfs_root.join("bus/pci/devices").join(&dev.address);
        vfio_ioctls::VfioDevice::new(&path, Arc::new(container), false).map_err(|e| {
            fail(format!(
                "opening {} through VFIO (busy in another VM?): {e}",
                dev.address
            ))
        })
    }

    /// The reset of a device that has none of its own: `VFIO_DEVICE_PCI_HOT_RESET`
    /// of its slot or bus (a GPU with its audio function; two functions of a slot).
    fn hot_reset(&self, dev: &Device) -> Result<StepReport, StepFailure> {
        let method = "vfio-pci-hot-reset";
        let fail = |detail: String| {
            StepFailure {
            method: method.into(),
            detail: format!(
                "the device has no reset of its own (no FLR or PM reset, not alone on its bus); {detail}"
            ),
        }
        };
        let group = dev
            .iommu_group
            .ok_or_else(|| fail("device has no IOMMU group".into()))?;
        let affected =
            crate::vfio_sys::hot_reset(&self.dev_vfio, group, &dev.address).map_err(fail)?;
        let list: Vec<String> = affected
            .iter()
            .map(|f| format!("{} (group {})", f.address, f.group))
            .collect();
        Ok(StepReport {
            method: method.into(),
            detail: format!("VFIO_DEVICE_PCI_HOT_RESET done: reset {}", list.join(", ")),
        })
    }
}

/// VFIO_PCI_CONFIG_REGION_INDEX.
const CONFIG_REGION: u32 = 7;

impl Sanitizer for VfioSanitizer {
    fn step(&self, dev: &Device, step: Step) -> Result<StepReport, StepFailure> {
        match step {
            Step::Reset => {
                let method = "vfio-device-reset";
                let d = self.open(dev, method)?;
                match crate::vfio_sys::device_reset(&d) {
                    Ok(true) => Ok(StepReport {
                        method: method.into(),
                        detail: "VFIO_DEVICE_RESET done".into(),
                    }),
                    Ok(false) => {
                        // No FLR, PM reset or lone-device bus reset: reset the slot
                        // or bus with every group it touches. The group must be
                        // closed first (it opens once).
                        drop(d);
                        self.hot_reset(dev)
                    }
                    Err(e) => Err(StepFailure {
                        method: method.into(),
                        detail: format!("VFIO_DEVICE_RESET failed: {e}"),
                    }),
                }
            }
            Step::VendorScrub => {
                let method = "power-on-state-check";
                let d = self.open(dev, method)?;
                // Pre-filled with all-ones: a read that fails leaves "device gone".
                let mut id = [0xffu8; 4];
                d.region_read(CONFIG_REGION, &mut id, 0);
                let mut cmd = [0xffu8; 2];
                d.region_read(CONFIG_REGION, &mut cmd, 4);
                let vendor = u16::from_le_bytes([id[0], id[1]]);
                let command = u16::from_le_bytes(cmd);
                if vendor == 0xffff {
                    return Err(StepFailure {
                        method: method.into(),
                        detail:
                            "the device did not come back after the reset (vendor id reads 0xffff)"
                                .into(),
                    });
                }
                // Bus mastering off: the device cannot DMA. I/O and memory decoding are
                // not part of the check: vfio-pci enables them itself when the device
                // is opened (pci_enable_device) and the kernel restores the saved
                // command register after the reset (seen in the lab: 0x0103 on edu).
                if command & 0x4 != 0 {
                    return Err(StepFailure { method: method.into(), detail: format!("command register is {command:#06x} after the reset: bus mastering is still on") });
                }
                let checked =
                    format!("vendor {vendor:#06x}, command {command:#06x}: bus mastering off");
                match memory_profile(&dev.id) {
                    MemoryProfile::ClearBar(bar) => {
                        let method = format!("{method}+bar{bar}{ZERO_READBACK}");
                        match clear_bar(&d, bar) {
                            Ok(done) => Ok(StepReport {
                                method,
                                detail: format!("{checked}; {done}"),
                            }),
                            Err(detail) => Err(StepFailure { method, detail }),
                        }
                    }
                    MemoryProfile::NoDeviceMemory(why) => Ok(StepReport {
                        method: method.into(),
                        detail: format!("{checked}; no memory clear: {why}"),
                    }),
                    MemoryProfile::NotBuilt(why) => Err(StepFailure {
                        method: method.into(),
                        detail: format!("{checked}; not implemented: {why}"),
                    }),
                }
            }
        }
    }
}

/// What the scrub does with a device's memory, by `vendor:device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryProfile {
    /// The BAR with this index is device memory: zero it and read it back.
    ClearBar(u32),
    /// The device holds no memory a scrub can reach; the reason is recorded.
    NoDeviceMemory(&'static str),
    /// A clear this device needs and that is not built: the scrub fails (the
    /// device is quarantined) rather than claim a clear that did not happen.
    NotBuilt(&'static str),
}

/// The memory step for a device (`Device::id`, `vendor:device`).
pub fn memory_profile(id: &str) -> MemoryProfile {
    match id.split_once(':') {
        // QEMU ivshmem-plain: BAR 2 is the shared memory itself.
        Some(("1af4", "1110")) => MemoryProfile::ClearBar(2),
        // QEMU edu: registers only; its 4 KiB DMA buffer is not reachable through a BAR.
        Some(("1234", "11e8")) => MemoryProfile::NoDeviceMemory(
            "QEMU edu has registers only (its 4 KiB DMA buffer is reachable only by DMA and is not cleared)",
        ),
        Some(("10de", _)) => MemoryProfile::NotBuilt(
            "the NVIDIA GPU memory clear after the reset (and its read-back) is not built; the GPU is quarantined until an operator releases it",
        ),
        _ => MemoryProfile::NotBuilt(
            "no memory clear is known for this device; it is quarantined until an operator releases it",
        ),
    }
}

/// The method suffix of a vendor step that zeroed device memory and read it back.
const ZERO_READBACK: &str = "-zero-readback";

/// Whether a step with this method cleared the device's memory (and read it back
/// zero): what lets the evidence say `scrubbed`.
pub fn clears_memory(method: &str) -> bool {
    method.ends_with(ZERO_READBACK)
}

/// Zeroes VFIO region `bar` of `d` and reads it back: the detail of what was done,
/// or why it failed.
fn clear_bar(d: &vfio_ioctls::VfioDevice, bar: u32) -> Result<String, String> {
    use vfio_bindings::bindings::vfio::{VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE};
    const CHUNK: usize = 64 * 1024;
    let size = d.get_region_size(bar);
    let flags = d.get_region_flags(bar);
    let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    if size == 0 || flags & rw != rw {
        return Err(format!(
            "BAR {bar} is not a readable and writable region ({size} bytes, flags {flags:#x})"
        ));
    }
    let zeros = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < size {
        let n = CHUNK.min((size - at) as usize);
        d.region_write(bar, &zeros[..n], at);
        at += n as u64;
    }
    // Read back: pre-filled with all-ones, so a read that fails is seen as non-zero.
    let mut buf = vec![0xffu8; CHUNK];
    at = 0;
    while at < size {
        let n = CHUNK.min((size - at) as usize);
        buf[..n].fill(0xff);
        d.region_read(bar, &mut buf[..n], at);
        if let Some(i) = buf[..n].iter().position(|b| *b != 0) {
            return Err(format!(
                "BAR {bar} reads {:#04x} at offset {:#x} after the clear",
                buf[i],
                at + i as u64
            ));
        }
        at += n as u64;
    }
    Ok(format!(
        "BAR {bar} ({size} bytes) zeroed and read back zero"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceKind, DeviceState};

    fn dev(addr: &str) -> Device {
        Device {
            address: addr.into(),
            id: "10de:2330".into(),
            class: "0x030200".into(),
            kind: DeviceKind::Gpu,
            iommu_group: Some(4),
            group_members: vec![],
            numa_node: None,
            link: None,
            serial: None,
            driver: None,
            present: true,
            state: DeviceState::Sanitizing,
            owner_vm: None,
            reason: None,
            last_scrub: None,
            scrub_in_progress: None,
        }
    }

    #[test]
    fn vfio_sanitizer_says_vfio_is_not_available_here() {
        let dir = tempfile::tempdir().unwrap();
        let s = VfioSanitizer::new(Path::new("/sys"), &dir.path().join("vfio"));
        for step in Step::ALL {
            let e = s.step(&dev("0000:01:00.0"), step).unwrap_err();
            assert!(
                e.detail.contains("VFIO is not available on this machine"),
                "{e:?}"
            );
        }
        // With a container node but no group node: names the group.
        std::fs::create_dir_all(dir.path().join("vfio")).unwrap();
        std::fs::write(dir.path().join("vfio/vfio"), "").unwrap();
        let e = s.step(&dev("0000:01:00.0"), Step::Reset).unwrap_err();
        assert!(e.detail.contains("/vfio/4 is absent"), "{e:?}");
    }

    #[test]
    fn memory_profiles_clear_what_they_can_and_refuse_what_is_not_built() {
        assert_eq!(memory_profile("1af4:1110"), MemoryProfile::ClearBar(2));
        assert!(clears_memory("power-on-state-check+bar2-zero-readback"));
        assert!(!clears_memory("power-on-state-check") && !clears_memory("vfio-device-reset"));
        assert!(matches!(
            memory_profile("1234:11e8"),
            MemoryProfile::NoDeviceMemory(_)
        ));
        for id in ["10de:2330", "1002:74a1", "8086:0b5a", "garbage"] {
            match memory_profile(id) {
                MemoryProfile::NotBuilt(why) => assert!(why.contains("quarantined"), "{id}: {why}"),
                other => panic!("{id}: {other:?}"),
            }
        }
    }

    #[test]
    fn software_sanitizer_passes_and_fails_as_told() {
        let s = SoftwareSanitizer {
            fail: vec!["0000:02:00.0".into()],
            ..Default::default()
        };
        let ok = s.step(&dev("0000:01:00.0"), Step::VendorScrub).unwrap();
        assert!(ok.method.starts_with("software-test"));
        assert!(s.step(&dev("0000:02:00.0"), Step::Reset).is_ok());
        let e = s.step(&dev("0000:02:00.0"), Step::VendorScrub).unwrap_err();
        assert!(e.detail.contains("injected"));
    }
}
