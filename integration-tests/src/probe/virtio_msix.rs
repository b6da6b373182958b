//! `vfio-msix`: a modern virtio-rng PCI device (1af4:1044, `iommu_platform=on`)
//! driven from user space through VFIO: its virtio capabilities found in config
//! space, features negotiated (VERSION_1 and ACCESS_PLATFORM, so its DMA goes through
//! the IOMMU), one virtqueue set up in DMA-mapped memory with MSI-X vector 0 on an
//! eventfd, and one request for random bytes completed with that interrupt.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR5_REGION_INDEX};
use vfio_ioctls::{VfioContainer, VfioDevice};
use vm_memory::{ByteValued, MmapRegion, VolatileMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ensure, fail, get, pass, pci, put, raw, wait_for, wait_for_event, Failed, OrFail};

const VIRTIO_RNG: u32 = 0x1044_1af4;
const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;
/// `cfg_type` of the virtio PCI capabilities (virtio 1.x, 4.1.4).
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;

/// Offsets in the common configuration structure.
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const DEVICE_FEATURE_SELECT: usize = 0x00;
const DEVICE_FEATURE: usize = 0x04;
const MSIX_CONFIG: usize = 0x10;
const NUM_QUEUES: usize = 0x12;
const DEVICE_STATUS: usize = 0x14;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_MSIX_VECTOR: usize = 0x1a;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;

const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
/// Feature bits 32 and 33, as bits of the upper feature word.
const F_VERSION_1: u32 = 1 << 0;
const F_ACCESS_PLATFORM: u32 = 1 << 1;
const NO_VECTOR: u16 = 0xffff;
const DESC_F_WRITE: u16 = 2;

/// The queue memory at this IOVA: descriptors, avail ring, used ring, data buffer,
/// one page each.
const QUEUE_IOVA: u64 = 0x10_0000;
const AVAIL: usize = 0x1000;
const USED: usize = 0x2000;
const DATA: usize = 0x3000;
const REQUEST: u32 = 64;
const MAX_QUEUE: u16 = 256;

/// Where a virtio structure lives: VFIO region (BAR) and offset in it.
#[derive(Debug, Clone, Copy)]
struct Location {
    bar: u8,
    offset: usize,
}

/// Runs the probe on the device at PCI address `bdf` (already bound to vfio-pci).
pub fn run(bdf: &str) -> Result<(), Failed> {
    let sysfs = Path::new("/sys/bus/pci/devices").join(bdf);
    let container = Arc::new(VfioContainer::new(None).or_fail("vfio-open")?);
    let device = VfioDevice::new(&sysfs, container.clone(), false).or_fail("vfio-open")?;
    let id = u32::from_le_bytes(pci::config_read::<4>(&device, 0));
    ensure(
        "vfio-open",
        id == VIRTIO_RNG,
        format!("{bdf}: vendor:device dword {id:#010x}"),
    )?;

    let (common, notify, multiplier, msix_table) =
        capabilities(&device).map_err(|e| fail("virtio-capabilities", e))?;
    pass(
        "virtio-capabilities",
        format!(
            "common cfg in BAR{} at {:#x}, notify in BAR{} at {:#x} (x{multiplier}), MSI-X table of {msix_table}",
            common.bar, common.offset, notify.bar, notify.offset
        ),
    );
    pci::enable_bus_master(&device)?;
    let mut bars = HashMap::new();
    for bar in [common.bar, notify.bar] {
        if let std::collections::hash_map::Entry::Vacant(slot) = bars.entry(bar) {
            let region = pci::map_region(&device, VFIO_PCI_BAR0_REGION_INDEX + u32::from(bar))
                .map_err(|e| fail("virtio-capabilities", e))?;
            slot.insert(region);
        }
    }
    let cfg = Mmio {
        region: &bars[&common.bar],
        base: common.offset,
    };

    // Reset, then ACKNOWLEDGE | DRIVER, then negotiate.
    cfg.write::<u8>(DEVICE_STATUS, 0)?;
    if !wait_for(Duration::from_secs(1), || {
        cfg.read::<u8>(DEVICE_STATUS).is_ok_and(|s| s == 0)
    }) {
        return Err(fail("virtio-features", "device did not reset"));
    }
    cfg.write::<u8>(DEVICE_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER)?;
    cfg.write::<u32>(DEVICE_FEATURE_SELECT, 1)?;
    let offered = cfg.read::<u32>(DEVICE_FEATURE)?;
    let wanted = F_VERSION_1 | F_ACCESS_PLATFORM;
    if offered & wanted != wanted {
        return Err(fail(
            "virtio-features",
            format!("device features 63..32 {offered:#x} lack VERSION_1 or ACCESS_PLATFORM (is iommu_platform=on set?)"),
        ));
    }
    cfg.write::<u32>(DRIVER_FEATURE_SELECT, 0)?;
    cfg.write::<u32>(DRIVER_FEATURE, 0)?;
    cfg.write::<u32>(DRIVER_FEATURE_SELECT, 1)?;
    cfg.write::<u32>(DRIVER_FEATURE, wanted)?;
    cfg.write::<u8>(
        DEVICE_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    )?;
    let status = cfg.read::<u8>(DEVICE_STATUS)?;
    ensure(
        "virtio-features",
        status & STATUS_FEATURES_OK != 0,
        format!("VERSION_1 | ACCESS_PLATFORM accepted, status {status:#x}"),
    )?;

    let event = EventFd::new(EFD_NONBLOCK).or_fail("msix-enable")?;
    device.enable_msix(vec![&event]).or_fail("msix-enable")?;
    cfg.write::<u16>(MSIX_CONFIG, NO_VECTOR)?;
    let queues = cfg.read::<u16>(NUM_QUEUES)?;
    cfg.write::<u16>(QUEUE_SELECT, 0)?;
    cfg.write::<u16>(QUEUE_MSIX_VECTOR, 0)?;
    let vector = cfg.read::<u16>(QUEUE_MSIX_VECTOR)?;
    ensure(
        "msix-enable",
        queues >= 1 && vector == 0,
        format!("MSI-X vector 0 on an eventfd; queue 0 of {queues} uses vector {vector:#x}"),
    )?;

    let memory = MmapRegion::<()>::new(0x4000).or_fail("virtqueue-request")?;
    raw::dma_map(&container, QUEUE_IOVA, &memory).or_fail("virtqueue-request")?;
    let max = cfg.read::<u16>(QUEUE_SIZE)?;
    if max == 0 {
        return Err(fail("virtqueue-request", "queue 0 has size 0"));
    }
    let size = max.min(MAX_QUEUE);
    cfg.write::<u16>(QUEUE_SIZE, size)?;
    cfg.write::<u64>(QUEUE_DESC, QUEUE_IOVA)?;
    cfg.write::<u64>(QUEUE_DRIVER, QUEUE_IOVA + AVAIL as u64)?;
    cfg.write::<u64>(QUEUE_DEVICE, QUEUE_IOVA + USED as u64)?;
    let notify_off = cfg.read::<u16>(QUEUE_NOTIFY_OFF)?;
    cfg.write::<u16>(QUEUE_ENABLE, 1)?;
    cfg.write::<u8>(
        DEVICE_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    )?;

    // Descriptor 0: a device-writable buffer of REQUEST bytes; offer it in the avail ring.
    let mut descriptor = [0u8; 16];
    descriptor[0..8].copy_from_slice(&(QUEUE_IOVA + DATA as u64).to_le_bytes());
    descriptor[8..12].copy_from_slice(&REQUEST.to_le_bytes());
    descriptor[12..14].copy_from_slice(&DESC_F_WRITE.to_le_bytes());
    put(&memory, 0, &descriptor).or_fail("virtqueue-request")?;
    put(&memory, AVAIL + 4, &0u16.to_le_bytes()).or_fail("virtqueue-request")?;
    fence(Ordering::SeqCst);
    put(&memory, AVAIL + 2, &1u16.to_le_bytes()).or_fail("virtqueue-request")?;
    fence(Ordering::SeqCst);
    let doorbell = Mmio {
        region: &bars[&notify.bar],
        base: notify.offset + usize::from(notify_off) * multiplier as usize,
    };
    doorbell.write::<u16>(0, 0)?;

    let count = wait_for_event(&event, Duration::from_secs(5));
    let mut used = [0u8; 12];
    get(&memory, USED + 2, &mut used).or_fail("virtqueue-request")?;
    let used_idx = u16::from_le_bytes([used[0], used[1]]);
    let used_id = u32::from_le_bytes([used[2], used[3], used[4], used[5]]);
    let used_len = u32::from_le_bytes([used[6], used[7], used[8], used[9]]);
    let mut data = [0u8; REQUEST as usize];
    get(&memory, DATA, &mut data).or_fail("virtqueue-request")?;
    let nonzero = data.iter().filter(|&&b| b != 0).count();
    ensure(
        "virtqueue-request",
        used_idx == 1 && used_id == 0 && used_len > 0 && used_len <= REQUEST && nonzero > 0,
        format!(
            "queue of {size}: used idx {used_idx}, id {used_id}, {used_len} bytes written, {nonzero} of {REQUEST} bytes non-zero"
        ),
    )?;
    ensure(
        "msix-eventfd",
        count.is_some(),
        count.map_or("no MSI-X interrupt within 5 s".into(), |n| {
            format!("vector 0 eventfd counted {n}")
        }),
    )?;
    cfg.write::<u8>(DEVICE_STATUS, 0)?;
    device.disable_msix().or_fail("msix-eventfd")?;
    container
        .vfio_dma_unmap(QUEUE_IOVA, 0x4000)
        .or_fail("virtqueue-request")?;
    Ok(())
}

/// Walks the capability list: the common and notify structures, the notify offset
/// multiplier and the MSI-X table size.
fn capabilities(device: &VfioDevice) -> Result<(Location, Location, u32, u16), String> {
    let status = u16::from_le_bytes(pci::config_read::<2>(device, 0x06));
    if status & (1 << 4) == 0 {
        return Err("no capability list".into());
    }
    let (mut common, mut notify, mut msix) = (None, None, None);
    let mut pointer = pci::config_read::<1>(device, 0x34)[0] & !3;
    let mut seen = 0;
    while pointer != 0 {
        seen += 1;
        if seen > 48 {
            return Err("capability list does not end".into());
        }
        let cap = pci::config_read::<20>(device, u64::from(pointer));
        match cap[0] {
            CAP_VENDOR => {
                let bar = cap[4];
                let offset = u32::from_le_bytes([cap[8], cap[9], cap[10], cap[11]]) as usize;
                if u32::from(bar) > VFIO_PCI_BAR5_REGION_INDEX {
                    return Err(format!("virtio capability at {pointer:#x} names BAR {bar}"));
                }
                match cap[3] {
                    CFG_COMMON => common = common.or(Some(Location { bar, offset })),
                    CFG_NOTIFY => {
                        let multiplier = u32::from_le_bytes([cap[16], cap[17], cap[18], cap[19]]);
                        notify = notify.or(Some((Location { bar, offset }, multiplier)));
                    }
                    _ => {}
                }
            }
            CAP_MSIX => msix = Some((u16::from_le_bytes([cap[2], cap[3]]) & 0x7ff) + 1),
            _ => {}
        }
        pointer = cap[1] & !3;
    }
    let common = common.ok_or("no virtio common configuration capability")?;
    let (notify, multiplier) = notify.ok_or("no virtio notify capability")?;
    let msix = msix.ok_or("no MSI-X capability")?;
    Ok((common, notify, multiplier, msix))
}

/// Registers of a mapped BAR at `base`, accessed with volatile loads and stores of
/// the register's own width (64-bit fields as two 32-bit halves, as virtio allows).
struct Mmio<'a> {
    region: &'a MmapRegion,
    base: usize,
}

impl Mmio<'_> {
    fn read<T: ByteValued + Copy>(&self, offset: usize) -> Result<T, Failed> {
        Ok(self
            .region
            .get_ref::<T>(self.base + offset)
            .or_fail("virtio-register")?
            .load())
    }

    fn write<T: Register>(&self, offset: usize, value: T) -> Result<(), Failed> {
        value.store_at(self, offset)
    }
}

/// A register width `Mmio::write` can store.
trait Register: ByteValued + Copy {
    fn store_at(self, mmio: &Mmio<'_>, offset: usize) -> Result<(), Failed> {
        mmio.region
            .get_ref::<Self>(mmio.base + offset)
            .or_fail("virtio-register")?
            .store(self);
        Ok(())
    }
}

impl Register for u8 {}
impl Register for u16 {}
impl Register for u32 {}
impl Register for u64 {
    fn store_at(self, mmio: &Mmio<'_>, offset: usize) -> Result<(), Failed> {
        (self as u32).store_at(mmio, offset)?;
        ((self >> 32) as u32).store_at(mmio, offset + 4)
    }
}
