//! Address-range buses for the devices that come and go with configuration (virtio-mmio
//! windows, the PCI host bridge, passed-through BARs that trap, the ACPI power
//! registers): one [`Bus`] for MMIO and one for port I/O, each a sorted map from
//! non-overlapping ranges to devices.
//!
//! A device sees the offset of an access inside the range it was registered with, so
//! the same model can sit at any address. Ranges can be added and removed while vCPUs
//! run (a guest reprogramming a BAR moves the range), so the map sits behind a
//! read-write lock that vCPU threads only read.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// What an access asks of the VM beyond the device's own state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusAction {
    /// Nothing; the vCPU continues.
    Continue,
    /// The guest asked for a reset (i8042 pulse, reset register).
    Reset,
    /// The guest asked to power off (ACPI sleep state S5).
    PowerOff,
    /// The guest wrote this code to the debug-exit port.
    DebugExit(u8),
}

/// A device on a [`Bus`]. Implementations lock their own state; every byte of `data`
/// and every offset comes from the guest and is hostile.
pub trait BusDevice: Send + Sync {
    /// A guest read of `data.len()` bytes at `offset` into the registered range. The
    /// device fills `data`; the bus pre-fills it with all-ones.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset` into the registered range.
    fn write(&self, offset: u64, data: &[u8]) -> BusAction;
}

/// Registration errors (configuration mistakes of the VMM, never guest input).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range has zero length or wraps the address space.
    #[error("empty or wrapping range {base:#x}+{len:#x}")]
    BadRange {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps one already registered.
    #[error("range {base:#x}+{len:#x} overlaps {other:#x}+{other_len:#x}")]
    Overlap {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
        /// Start of the registered range.
        other: u64,
        /// Length of the registered range.
        other_len: u64,
    },
    /// No range starts at this address.
    #[error("nothing registered at {0:#x}")]
    NotFound(u64),
}

struct Entry {
    len: u64,
    device: Arc<dyn BusDevice>,
}

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.ranges.read().unwrap_or_else(|p| p.into_inner());
        f.debug_list()
            .entries(map.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(&self, base: u64, len: u64, device: Arc<dyn BusDevice>) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let mut map = self.ranges.write().unwrap_or_else(|p| p.into_inner());
        let before = map.range(..end).next_back();
        if let Some((&other, e)) = before {
            if other + e.len > base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other,
                    other_len: e.len,
                });
            }
        }
        map.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the range that starts at `base` and returns its device.
    pub fn remove(&self, base: u64) -> Result<Arc<dyn BusDevice>, BusError> {
        let mut map = self.ranges.write().unwrap_or_else(|p| p.into_inner());
        map.remove(&base)
            .map(|e| e.device)
            .ok_or(BusError::NotFound(base))
    }

    /// The device owning `[addr, addr + len)` entirely, with the offset of `addr`.
    fn resolve(&self, addr: u64, len: usize) -> Option<(Arc<dyn BusDevice>, u64)> {
        let map = self.ranges.read().unwrap_or_else(|p| p.into_inner());
        let (&base, e) = map.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(len as u64)?;
        (end <= e.len).then(|| (Arc::clone(&e.device), offset))
    }

    /// Routes a read; `false` when no device owns the whole access (then `data` is
    /// all-ones and the caller counts an unowned access).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0xff);
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                dev.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; `None` when no device owns the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<BusAction> {
        self.resolve(addr, data.len())
            .map(|(dev, offset)| dev.write(offset, data))
    }

    /// The registered ranges `(base, len)`, in address order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let map = self.ranges.read().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(b, e)| (*b, e.len)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>);

    impl BusDevice for Recorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) -> BusAction {
            self.0.lock().unwrap().push((offset, data.to_vec()));
            BusAction::Continue
        }
    }

    #[test]
    fn routes_by_offset_and_refuses_overlaps_and_straddles() {
        let bus = Bus::new();
        let a = Arc::new(Recorder::default());
        bus.insert(0x1000, 0x100, a.clone()).unwrap();
        bus.insert(0x1100, 0x100, Arc::new(Recorder::default()))
            .unwrap();
        assert!(matches!(
            bus.insert(0x10ff, 2, Arc::new(Recorder::default())),
            Err(BusError::Overlap { other: 0x1100, .. })
        ));
        assert!(matches!(
            bus.insert(0xfff, 2, Arc::new(Recorder::default())),
            Err(BusError::Overlap { other: 0x1000, .. })
        ));
        assert_eq!(
            bus.insert(u64::MAX, 2, a.clone()),
            Err(BusError::BadRange {
                base: u64::MAX,
                len: 2
            })
        );
        let mut d = [0u8; 4];
        assert!(bus.read(0x1010, &mut d));
        assert_eq!(d, [0x10; 4]);
        // An access straddling two ranges belongs to neither.
        assert!(!bus.read(0x10fe, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert_eq!(bus.write(0x1004, &[1, 2]), Some(BusAction::Continue));
        assert_eq!(bus.write(0x2000, &[1]), None);
        assert_eq!(a.0.lock().unwrap().as_slice(), &[(4, vec![1, 2])]);
        bus.remove(0x1000).unwrap();
        assert!(!bus.read(0x1010, &mut d));
        assert_eq!(bus.remove(0x1000).err(), Some(BusError::NotFound(0x1000)));
        assert_eq!(bus.ranges(), vec![(0x1100, 0x100)]);
    }
}
