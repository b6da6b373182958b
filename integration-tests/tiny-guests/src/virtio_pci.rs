//! A minimal modern virtio-pci driver (virtio 1.2, 4.1) for the tiny guests: finds
//! the vendor capabilities (common configuration, notifications, ISR, device
//! configuration) and MSI-X in a function's configuration space, drives the common
//! configuration in BAR0, programs the MSI-X table, and implements the
//! [`Transport`] the block and rng drivers use. Queue `n` gets MSI-X vector `n + 1`,
//! configuration changes vector 0.

use crate::pci;
use crate::virtio::{Transport, Vq, ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, F_VERSION_1_HI};
use crate::{peek, poke};

/// virtio's PCI vendor ID.
pub const VENDOR: u16 = 0x1af4;
/// Modern device IDs are this plus the virtio device ID.
pub const DEVICE_BASE: u16 = 0x1040;
/// "No vector".
pub const NO_VECTOR: u16 = 0xffff;

/// Common configuration offsets.
pub mod cc {
    /// Device feature select.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// Device feature.
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// Driver feature select.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// Driver feature.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// Configuration-change MSI-X vector.
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// Number of queues.
    pub const NUM_QUEUES: u64 = 0x12;
    /// Device status.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// Queue select.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// Queue size.
    pub const QUEUE_SIZE: u64 = 0x18;
    /// Queue MSI-X vector.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// Queue enable.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// Queue notify offset.
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// Descriptor table.
    pub const QUEUE_DESC: u64 = 0x20;
    /// Driver (available) ring.
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// Device (used) ring.
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// One virtio-pci function on bus 0 and where its regions are.
#[derive(Debug, Clone, Copy)]
pub struct VirtioPci {
    /// Device number on bus 0.
    pub dev: u8,
    /// The virtio device ID.
    pub id: u16,
    /// BAR0's address.
    pub bar: u64,
    /// Common configuration.
    pub common: u64,
    /// Notification area and multiplier.
    pub notify: u64,
    /// `notify_off_multiplier`.
    pub multiplier: u32,
    /// ISR byte.
    pub isr: u64,
    /// Device configuration (0: none).
    pub device: u64,
    /// MSI-X capability offset in config space.
    pub msix_cap: u16,
    /// MSI-X table and PBA.
    pub table: u64,
    /// Pending bit array.
    pub pba: u64,
    /// MSI-X table size.
    pub vectors: u16,
}

impl VirtioPci {
    /// The modern virtio function at bus 0 device `dev`, if there is one with every
    /// capability in BAR0.
    pub fn probe(dev: u8) -> Option<VirtioPci> {
        let (vendor, device) = pci::id(dev)?;
        if vendor != VENDOR || !(DEVICE_BASE..DEVICE_BASE + 0x40).contains(&device) {
            return None;
        }
        let bar = u64::from(pci::read32(dev, 0x10) & !0xf);
        let mut v = VirtioPci {
            dev,
            id: device - DEVICE_BASE,
            bar,
            common: 0,
            notify: 0,
            multiplier: 0,
            isr: 0,
            device: 0,
            msix_cap: 0,
            table: 0,
            pba: 0,
            vectors: 0,
        };
        let (mut common, mut notify, mut isr) = (false, false, false);
        for cap in pci::capabilities(dev) {
            match pci::read8(dev, cap) {
                0x11 => {
                    v.msix_cap = cap;
                    v.vectors = (pci::read16(dev, cap + 2) & 0x7ff) + 1;
                    v.table = bar + u64::from(pci::read32(dev, cap + 4) & !7);
                    v.pba = bar + u64::from(pci::read32(dev, cap + 8) & !7);
                }
                0x09 if pci::read8(dev, cap + 4) == 0 => {
                    let at = bar + u64::from(pci::read32(dev, cap + 8));
                    match pci::read8(dev, cap + 3) {
                        1 => (v.common, common) = (at, true),
                        2 => {
                            (v.notify, notify) = (at, true);
                            v.multiplier = pci::read32(dev, cap + 16);
                        }
                        3 => (v.isr, isr) = (at, true),
                        4 => v.device = at,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        (common && notify && isr && v.msix_cap != 0).then_some(v)
    }

    /// Reads an `N`-byte common configuration field.
    pub fn read<T: Copy>(&self, off: u64) -> T {
        // SAFETY: BAR0 is device memory inside the identity-mapped 32-bit hole.
        unsafe { peek(self.common + off) }
    }

    /// Writes a common configuration field.
    pub fn write<T: Copy>(&self, off: u64, v: T) {
        // SAFETY: as for `read`.
        unsafe { poke(self.common + off, v) }
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.read(cc::DEVICE_STATUS)
    }

    /// Programs MSI-X entry `v`: message to APIC 0 with `vector`, masked or not.
    pub fn set_entry(&self, v: u16, vector: u8, masked: bool) {
        let e = self.table + u64::from(v) * 16;
        // SAFETY: the MSI-X table in BAR0.
        unsafe {
            poke::<u32>(e, 0xfee0_0000);
            poke::<u32>(e + 4, 0);
            poke::<u32>(e + 8, u32::from(vector));
            poke::<u32>(e + 12, u32::from(masked));
        }
    }

    /// Sets or clears entry `v`'s mask bit.
    pub fn mask(&self, v: u16, masked: bool) {
        // SAFETY: the MSI-X table in BAR0.
        unsafe { poke::<u32>(self.table + u64::from(v) * 16 + 12, u32::from(masked)) }
    }

    /// The first qword of the PBA.
    pub fn pending(&self) -> u64 {
        // SAFETY: the PBA in BAR0.
        unsafe { peek(self.pba) }
    }

    /// Writes MSI-X enable and function mask (message control, in its dword).
    pub fn msix_control(&self, enable: bool, function_mask: bool) {
        let d = pci::read32(self.dev, self.msix_cap);
        let ctrl = u32::from(enable) << 31 | u32::from(function_mask) << 30;
        pci::write32(self.dev, self.msix_cap, (d & 0x3fff_ffff) | ctrl);
    }

    /// Reads and clears the ISR.
    pub fn isr(&self) -> u8 {
        // SAFETY: the ISR byte in BAR0.
        unsafe { peek(self.isr) }
    }
}

impl Transport for VirtioPci {
    fn features(&self) -> u64 {
        self.write::<u32>(cc::DEVICE_FEATURE_SELECT, 0);
        let lo: u32 = self.read(cc::DEVICE_FEATURE);
        self.write::<u32>(cc::DEVICE_FEATURE_SELECT, 1);
        let hi: u32 = self.read(cc::DEVICE_FEATURE);
        u64::from(lo) | u64::from(hi) << 32
    }

    /// Reset (waiting for status 0), ACKNOWLEDGE, DRIVER, features, FEATURES_OK,
    /// then configuration changes on vector 0.
    fn begin(&self, features_lo: u32) -> bool {
        self.write::<u8>(cc::DEVICE_STATUS, 0);
        if (0..1000).all(|_| self.status() != 0) {
            return false;
        }
        self.write::<u8>(cc::DEVICE_STATUS, ACKNOWLEDGE as u8);
        self.write::<u8>(cc::DEVICE_STATUS, (ACKNOWLEDGE | DRIVER) as u8);
        self.write::<u32>(cc::DRIVER_FEATURE_SELECT, 0);
        self.write::<u32>(cc::DRIVER_FEATURE, features_lo);
        self.write::<u32>(cc::DRIVER_FEATURE_SELECT, 1);
        self.write::<u32>(cc::DRIVER_FEATURE, F_VERSION_1_HI);
        self.write::<u8>(
            cc::DEVICE_STATUS,
            (ACKNOWLEDGE | DRIVER | FEATURES_OK) as u8,
        );
        if u32::from(self.status()) & FEATURES_OK == 0 {
            return false;
        }
        self.write::<u16>(cc::CONFIG_MSIX_VECTOR, 0);
        self.read::<u16>(cc::CONFIG_MSIX_VECTOR) == 0
    }

    /// Size, rings (64-bit writes), vector `index + 1` (read back), enable.
    fn set_queue(&self, index: u32, vq: &Vq) {
        self.write::<u16>(cc::QUEUE_SELECT, index as u16);
        self.write::<u16>(cc::QUEUE_SIZE, vq.size);
        self.write::<u64>(cc::QUEUE_DESC, vq.desc_addr());
        self.write::<u64>(cc::QUEUE_DRIVER, vq.avail_addr());
        self.write::<u64>(cc::QUEUE_DEVICE, vq.used_addr());
        self.write::<u16>(cc::QUEUE_MSIX_VECTOR, index as u16 + 1);
        self.write::<u16>(cc::QUEUE_ENABLE, 1);
    }

    fn driver_ok(&self) -> u32 {
        self.write::<u8>(
            cc::DEVICE_STATUS,
            (ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK) as u8,
        );
        u32::from(self.status())
    }

    /// A 16-bit write of the queue index at its notification address.
    fn notify(&self, index: u32) {
        self.write::<u16>(cc::QUEUE_SELECT, index as u16);
        let off: u16 = self.read(cc::QUEUE_NOTIFY_OFF);
        let at = self.notify + u64::from(off) * u64::from(self.multiplier);
        // SAFETY: the queue's doorbell in BAR0.
        unsafe { poke::<u16>(at, index as u16) }
    }

    fn config_u64(&self, off: u64) -> u64 {
        // SAFETY: the device configuration in BAR0 (two naturally aligned dwords).
        unsafe {
            u64::from(peek::<u32>(self.device + off))
                | u64::from(peek::<u32>(self.device + off + 4)) << 32
        }
    }
}
