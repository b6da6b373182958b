//! The guest's PCI host bridge: configuration space through ports 0xCF8/0xCFC and
//! ECAM, the root bus (bus 0) with a host bridge at 00.0, one PCIe root port per
//! assigned device (the device on the port's secondary bus) at 00.1.., the virtio-pci
//! functions after them, and the BAR allocator for the ports' windows in the 32-bit
//! and 64-bit MMIO windows. The bus exists when `devices.vfio` is set or
//! `devices.virtio_transport` is `pci` ([`crate::plan::bus_exists`]); [`PciBus`] holds it and
//! the VM's one GSI router, which VFIO and virtio-pci share.
//!
//! Every configuration access comes from the guest and is hostile: sizes other than
//! 1, 2 and 4 bytes, unaligned accesses and accesses that straddle a dword read
//! all-ones and are dropped on write, and are counted in [`PciCounters`].

pub mod bars;
pub mod root;
pub mod root_port;

pub use bars::{allocate_ports, BarKind, BarPlacement, BarRequest, PortPlacement};
pub use root::{ConfigPorts, Ecam, HostBridge, PciCounters, PciFunction, PciRoot};
pub use root_port::{LinkInfo, RootPort};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kvm_ioctls::VmFd;
use serde::Serialize;

use crate::devices::Buses;
use crate::irq_routing::GsiRouter;

/// The VM's PCI bus 0 and its GSI router (one instance: VFIO and virtio-pci take
/// their MSI GSIs from it, so they never get the same ones).
#[derive(Debug)]
pub struct PciBus {
    /// Bus 0.
    pub root: Arc<PciRoot>,
    /// The KVM GSI routing table.
    pub router: Arc<GsiRouter>,
}

/// The bus in `GET /vm`.
#[derive(Debug, Clone, Serialize)]
pub struct PciReport {
    /// Malformed configuration accesses (bad size or alignment), dropped.
    pub config_malformed: u64,
    /// Accesses to absent buses, devices or functions.
    pub config_absent: u64,
}

impl PciBus {
    /// Creates bus 0 with its host bridge and puts the type-1 ports (0xCF8..=0xCFF
    /// on `buses.pio`) and ECAM (on `buses.mmio`) in front of it.
    pub fn attach(vm: &Arc<VmFd>, buses: &Buses) -> Result<PciBus, crate::bus::BusError> {
        let root = Arc::new(PciRoot::new());
        buses.pio.insert(
            u64::from(root::CONFIG_ADDRESS_PORT),
            8,
            Arc::new(ConfigPorts::new(root.clone())),
        )?;
        buses.mmio.insert(
            crate::layout::PCI_ECAM_START,
            crate::layout::PCI_ECAM_SIZE,
            Arc::new(Ecam::new(root.clone())),
        )?;
        Ok(PciBus {
            root,
            router: Arc::new(GsiRouter::new(vm.clone())),
        })
    }

    /// The counters in `GET /vm`.
    pub fn report(&self) -> PciReport {
        PciReport {
            config_malformed: self.root.counters.malformed.load(Ordering::Relaxed),
            config_absent: self.root.counters.absent.load(Ordering::Relaxed),
        }
    }
}

/// Appends the bus's metrics (Prometheus text format).
pub fn write_metrics(out: &mut String, r: &PciReport) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP bulwark_pci_config_malformed_total Malformed guest PCI configuration accesses.\n# TYPE bulwark_pci_config_malformed_total counter\nbulwark_pci_config_malformed_total {}",
        r.config_malformed
    );
}

/// Config space offsets (PCI Local Bus 3.0, type-0 header).
pub mod regs {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: usize = 0x00;
    /// Command register (16 bits).
    pub const COMMAND: usize = 0x04;
    /// Status register (16 bits).
    pub const STATUS: usize = 0x06;
    /// Class code, three bytes from 0x09.
    pub const CLASS_REVISION: usize = 0x08;
    /// Header type (8 bits).
    pub const HEADER_TYPE: usize = 0x0e;
    /// First BAR.
    pub const BAR0: usize = 0x10;
    /// Six BARs of four bytes each.
    pub const BAR_END: usize = 0x28;
    /// Expansion ROM BAR.
    pub const ROM: usize = 0x30;
    /// Capability list pointer.
    pub const CAP_PTR: usize = 0x34;
    /// Interrupt line (8 bits, scratch for the OS).
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin (8 bits).
    pub const INTERRUPT_PIN: usize = 0x3d;
    /// Status bit: the capability list exists.
    pub const STATUS_CAP_LIST: u16 = 1 << 4;
    /// Command: I/O space decode.
    pub const CMD_IO: u16 = 1 << 0;
    /// Command: memory space decode.
    pub const CMD_MEMORY: u16 = 1 << 1;
    /// Command: bus master (DMA).
    pub const CMD_BUS_MASTER: u16 = 1 << 2;
    /// Command: INTx disable.
    pub const CMD_INTX_DISABLE: u16 = 1 << 10;
    /// Capability ID of MSI.
    pub const CAP_MSI: u8 = 0x05;
    /// Capability ID of MSI-X.
    pub const CAP_MSIX: u8 = 0x11;
    /// Capability ID of the vendor-specific capability (NVIDIA's GPUDirect clique
    /// capability would be one; see `docs/vfio.md`).
    pub const CAP_VENDOR: u8 = 0x09;
}

/// A PCI address `domain:bus:device.function` as sysfs writes it (`0000:41:00.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI segment (domain).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl std::str::FromStr for Bdf {
    type Err = String;
    /// Parses exactly `DDDD:BB:DD.F` in hexadecimal (the sysfs form; nothing else, so
    /// the string can be joined to a sysfs path safely).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a PCI address of the form 0000:41:00.0");
        let b = s.as_bytes();
        if b.len() != 12 || b[4] != b':' || b[7] != b':' || b[10] != b'.' {
            return Err(bad());
        }
        let hex = |r: std::ops::Range<usize>| -> Result<u32, String> {
            let t = &s[r];
            if t.bytes().all(|c| c.is_ascii_hexdigit()) {
                u32::from_str_radix(t, 16).map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        let (domain, bus, device, function) = (hex(0..4)?, hex(5..7)?, hex(8..10)?, hex(11..12)?);
        if device > 31 || function > 7 {
            return Err(bad());
        }
        Ok(Bdf {
            domain: domain as u16,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl std::fmt::Display for Bdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// Whether a configuration access of `len` bytes at `offset` is well-formed: 1, 2 or
/// 4 bytes, naturally aligned (so it never straddles a dword), inside 4 KiB.
pub fn access_ok(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len as u64) && offset + len as u64 <= 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_parses_only_the_sysfs_form() {
        let b: Bdf = "0000:41:00.1".parse().unwrap();
        assert_eq!((b.domain, b.bus, b.device, b.function), (0, 0x41, 0, 1));
        assert_eq!(b.to_string(), "0000:41:00.1");
        for bad in [
            "",
            "41:00.0",
            "0000:41:00.8",
            "0000:41:20.0",
            "0000:41:00.0/../x",
            "0000:4g:00.0",
            "+000:41:00.0",
            "0000:41:00:0",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad}");
        }
    }

    #[test]
    fn access_shapes() {
        assert!(access_ok(0, 4) && access_ok(2, 2) && access_ok(3, 1) && access_ok(4092, 4));
        assert!(!access_ok(1, 2) && !access_ok(2, 4) && !access_ok(0, 8) && !access_ok(0, 3));
        assert!(!access_ok(4096, 1) && !access_ok(0, 0));
    }
}
