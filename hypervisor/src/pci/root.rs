//! Bus 0 and the two ways the guest reaches its configuration space: the type-1
//! mechanism (address register at port 0xCF8, data at 0xCFC..=0xCFF) and ECAM
//! (1 MiB per bus, 4 KiB per function, at `layout::PCI_ECAM_START`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::{access_ok, regs};
use crate::bus::{BusAction, BusDevice};

/// One PCI function's configuration space. `offset` and `data.len()` have passed
/// [`access_ok`] (1, 2 or 4 bytes, naturally aligned, below 4096); the values are
/// still the guest's.
pub trait PciFunction: Send + Sync {
    /// A configuration read; `data` comes pre-filled with all-ones.
    fn config_read(&self, offset: u16, data: &mut [u8]);
    /// A configuration write.
    fn config_write(&self, offset: u16, data: &[u8]);
}

/// Counters of malformed or unrouted configuration accesses.
#[derive(Debug, Default)]
pub struct PciCounters {
    /// Accesses with a bad size or alignment (read all-ones, write dropped).
    pub malformed: AtomicU64,
    /// Accesses to a bus, device or function that does not exist.
    pub absent: AtomicU64,
}

fn note(counter: &AtomicU64, what: &str, offset: u64, len: usize) {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    if n < 16 || n.is_multiple_of(65536) {
        tracing::warn!(
            offset = format_args!("{offset:#x}"),
            len,
            total = n + 1,
            "guest PCI configuration access: {what}"
        );
    }
}

/// The guest's PCI segment: functions by bus and device/function number
/// (`bus << 8 | device << 3 | function`). Bus 0 is the root bus; each root port's
/// secondary bus holds the device behind it.
#[derive(Default)]
pub struct PciRoot {
    functions: RwLock<BTreeMap<u16, Arc<dyn PciFunction>>>,
    /// Malformed and unrouted access counters.
    pub counters: PciCounters,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.functions.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("PciRoot")
            .field(
                "functions",
                &map.keys()
                    .map(|k| format!("{:02x}:{:02x}.{}", k >> 8, (k >> 3) & 31, k & 7))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PciRoot {
    /// A bus with the host bridge at 00.0.
    pub fn new() -> Self {
        let root = PciRoot::default();
        root.add(0, 0, Arc::new(HostBridge));
        root
    }

    /// Puts `function` at `device.function` of bus 0 (replacing nothing: the caller
    /// picks free slots). Returns false when the slot is taken or out of range.
    pub fn add(&self, device: u8, function: u8, f: Arc<dyn PciFunction>) -> bool {
        self.add_on_bus(0, device, function, f)
    }

    /// Puts `function` at `bus:device.function` (a root port's secondary bus, for
    /// the device behind it). Returns false when the slot is taken or out of range.
    pub fn add_on_bus(&self, bus: u8, device: u8, function: u8, f: Arc<dyn PciFunction>) -> bool {
        if device > 31 || function > 7 {
            return false;
        }
        let mut map = self.functions.write().unwrap_or_else(|p| p.into_inner());
        let key = u16::from(bus) << 8 | u16::from(device << 3 | function);
        if map.contains_key(&key) {
            return false;
        }
        map.insert(key, f);
        true
    }

    fn function(&self, bus: u8, devfn: u8) -> Option<Arc<dyn PciFunction>> {
        let map = self.functions.read().unwrap_or_else(|p| p.into_inner());
        map.get(&(u16::from(bus) << 8 | u16::from(devfn))).cloned()
    }

    /// A configuration read of `data.len()` bytes at register `offset` of
    /// `bus:devfn`; all-ones where nothing answers.
    pub fn read(&self, bus: u8, devfn: u8, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if !access_ok(offset, data.len()) {
            return note(
                &self.counters.malformed,
                "malformed read",
                offset,
                data.len(),
            );
        }
        match self.function(bus, devfn) {
            Some(f) => f.config_read(offset as u16, data),
            // Probing empty slots is normal enumeration; count it, do not log it.
            None => {
                self.counters.absent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A configuration write; dropped where nothing answers.
    pub fn write(&self, bus: u8, devfn: u8, offset: u64, data: &[u8]) {
        if !access_ok(offset, data.len()) {
            return note(
                &self.counters.malformed,
                "malformed write",
                offset,
                data.len(),
            );
        }
        match self.function(bus, devfn) {
            Some(f) => f.config_write(offset as u16, data),
            None => note(
                &self.counters.absent,
                "write to an absent function",
                offset,
                data.len(),
            ),
        }
    }
}

/// The type-1 configuration mechanism, registered on the port bus at 0xCF8 for 8
/// ports: offset 0..4 is the address register (dword accesses only), 4..8 the data
/// window.
#[derive(Debug)]
pub struct ConfigPorts {
    root: Arc<PciRoot>,
    address: AtomicU32,
}

/// Base port of [`ConfigPorts`].
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;

/// Writable bits of the address register: enable (31), bus (23:16), device (15:11),
/// function (10:8), dword register (7:2).
const ADDRESS_MASK: u32 = 0x80ff_fffc;

impl ConfigPorts {
    /// The ports for `root`.
    pub fn new(root: Arc<PciRoot>) -> Self {
        ConfigPorts {
            root,
            address: AtomicU32::new(0),
        }
    }

    /// `(bus, devfn, register offset)` selected by the address register and data
    /// port offset `byte` (0..4), or `None` when the enable bit is clear.
    fn target(&self, byte: u64) -> Option<(u8, u8, u64)> {
        let a = self.address.load(Ordering::Relaxed);
        (a & 0x8000_0000 != 0)
            .then(|| ((a >> 16) as u8, (a >> 8) as u8, u64::from(a & 0xfc) + byte))
    }
}

impl BusDevice for ConfigPorts {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => {
                data.copy_from_slice(&self.address.load(Ordering::Relaxed).to_le_bytes())
            }
            4..8 => {
                if let Some((bus, devfn, reg)) = self.target(offset - 4) {
                    self.root.read(bus, devfn, reg, data);
                }
            }
            _ => {}
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> BusAction {
        match offset {
            0 if data.len() == 4 => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.address.store(v & ADDRESS_MASK, Ordering::Relaxed);
            }
            4..8 => {
                if let Some((bus, devfn, reg)) = self.target(offset - 4) {
                    self.root.write(bus, devfn, reg, data);
                }
            }
            // Byte and word writes to the address register (Linux's conf1 probe writes
            // 0xCFB) do not change it.
            _ => {}
        }
        BusAction::Continue
    }
}

/// ECAM: registered on the MMIO bus at `PCI_ECAM_START`; offset bits 27:20 are the
/// bus, 19:15 the device, 14:12 the function, 11:0 the register.
#[derive(Debug)]
pub struct Ecam {
    root: Arc<PciRoot>,
}

impl Ecam {
    /// ECAM for `root`.
    pub fn new(root: Arc<PciRoot>) -> Self {
        Ecam { root }
    }
}

fn ecam_split(offset: u64) -> (u8, u8, u64) {
    ((offset >> 20) as u8, (offset >> 12) as u8, offset & 0xfff)
}

impl BusDevice for Ecam {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let (bus, devfn, reg) = ecam_split(offset);
        self.root.read(bus, devfn, reg, data);
    }

    fn write(&self, offset: u64, data: &[u8]) -> BusAction {
        let (bus, devfn, reg) = ecam_split(offset);
        self.root.write(bus, devfn, reg, data);
        BusAction::Continue
    }
}

/// The host bridge at 00.0: Red Hat's PCIe host bridge ID (1b36:0008), class 06/00/00,
/// read-only (no BARs, no capabilities; writes are ignored).
#[derive(Debug)]
pub struct HostBridge;

/// Vendor and device ID of [`HostBridge`].
pub const HOST_BRIDGE_ID: (u16, u16) = (0x1b36, 0x0008);

impl PciFunction for HostBridge {
    fn config_read(&self, offset: u16, data: &mut [u8]) {
        let mut space = [0u8; 64];
        space[regs::VENDOR_ID..regs::VENDOR_ID + 2]
            .copy_from_slice(&HOST_BRIDGE_ID.0.to_le_bytes());
        space[2..4].copy_from_slice(&HOST_BRIDGE_ID.1.to_le_bytes());
        // Class 06 (bridge), subclass 00 (host), interface 00; revision 0.
        space[regs::CLASS_REVISION + 3] = 0x06;
        let off = usize::from(offset);
        match space.get(off..off + data.len()) {
            Some(s) => data.copy_from_slice(s),
            None => data.fill(0),
        }
    }

    fn config_write(&self, _offset: u16, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A function with 4 KiB of plain read/write space.
    struct Ram(Mutex<Vec<u8>>);

    impl PciFunction for Ram {
        fn config_read(&self, offset: u16, data: &mut [u8]) {
            let o = usize::from(offset);
            data.copy_from_slice(&self.0.lock().unwrap()[o..o + data.len()]);
        }
        fn config_write(&self, offset: u16, data: &[u8]) {
            let o = usize::from(offset);
            self.0.lock().unwrap()[o..o + data.len()].copy_from_slice(data);
        }
    }

    fn setup() -> (Arc<PciRoot>, ConfigPorts, Ecam) {
        let root = Arc::new(PciRoot::new());
        assert!(root.add(3, 0, Arc::new(Ram(Mutex::new(vec![0; 4096])))));
        assert!(!root.add(3, 0, Arc::new(HostBridge)), "slot taken");
        assert!(!root.add(32, 0, Arc::new(HostBridge)));
        (
            root.clone(),
            ConfigPorts::new(root.clone()),
            Ecam::new(root),
        )
    }

    fn select(p: &ConfigPorts, bus: u8, dev: u8, func: u8, reg: u8) {
        let v = 0x8000_0000
            | u32::from(bus) << 16
            | u32::from(dev) << 11
            | u32::from(func) << 8
            | u32::from(reg);
        p.write(0, &v.to_le_bytes());
    }

    #[test]
    fn type1_reads_the_host_bridge_and_empty_slots_read_all_ones() {
        let (root, p, _) = setup();
        select(&p, 0, 0, 0, 0);
        let mut d = [0u8; 4];
        p.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
        select(&p, 0, 0, 0, 8);
        p.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d) >> 8, 0x06_0000);
        // Header type byte through a byte read at 0xcfe.
        select(&p, 0, 0, 0, 0xc);
        let mut b = [0u8; 1];
        p.read(6, &mut b);
        assert_eq!(b[0], 0);
        select(&p, 0, 5, 0, 0);
        p.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        select(&p, 1, 0, 0, 0);
        p.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        assert!(root.counters.absent.load(Ordering::Relaxed) >= 2);
    }

    #[test]
    fn type1_address_register_keeps_only_defined_bits_and_ignores_narrow_writes() {
        let (_, p, _) = setup();
        p.write(0, &0xffff_ffffu32.to_le_bytes());
        let mut d = [0u8; 4];
        p.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), ADDRESS_MASK);
        p.write(3, &[0x01]);
        p.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), ADDRESS_MASK);
        // Narrow reads of the address register see all-ones (bus pre-fill).
        let mut b = [0xffu8; 2];
        p.read(0, &mut b);
        assert_eq!(b, [0xff; 2]);
        // Enable bit clear: data port reads all-ones and writes go nowhere.
        p.write(0, &0u32.to_le_bytes());
        let mut d = [0u8; 4];
        d.fill(0xff);
        p.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn type1_writes_reach_the_function_at_the_byte_offset() {
        let (_, p, e) = setup();
        select(&p, 0, 3, 0, 0x40);
        p.write(5, &[0xaa]);
        p.write(6, &[0x11, 0x22]);
        let mut d = [0u8; 4];
        p.read(4, &mut d);
        assert_eq!(d, [0, 0xaa, 0x11, 0x22]);
        // The same register through ECAM (bus 0, device 3).
        let mut d2 = [0u8; 4];
        e.read(3 << 15 | 0x40, &mut d2);
        assert_eq!(d2, d);
        // A word at data port offset 3 straddles the dword: refused.
        p.write(7, &[1, 2]);
        p.read(4, &mut d);
        assert_eq!(d, [0, 0xaa, 0x11, 0x22]);
    }

    #[test]
    fn ecam_checks_shape_and_reaches_extended_space() {
        let (root, _, e) = setup();
        let base = 3u64 << 15;
        e.write(base + 0x800, &0xdead_beefu32.to_le_bytes());
        let mut d = [0u8; 4];
        e.read(base + 0x800, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xdead_beef);
        // Unaligned, odd-sized and 8-byte accesses are refused and counted.
        let before = root.counters.malformed.load(Ordering::Relaxed);
        e.write(base + 0x801, &[1, 2, 3, 4]);
        let mut q = [0u8; 8];
        e.read(base + 0x800, &mut q);
        assert_eq!(q, [0xff; 8]);
        let mut t = [0u8; 3];
        e.read(base + 0x800, &mut t);
        assert_eq!(t, [0xff; 3]);
        assert_eq!(root.counters.malformed.load(Ordering::Relaxed), before + 3);
        e.read(base + 0x800, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xdead_beef);
        // Other buses and functions are absent.
        e.read(1 << 20, &mut d);
        assert_eq!(d, [0xff; 4]);
        e.read(base | 1 << 12, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn functions_on_secondary_buses_are_reached_by_both_mechanisms() {
        let (root, p, e) = setup();
        assert!(root.add_on_bus(2, 0, 0, Arc::new(Ram(Mutex::new(vec![0x11; 4096])))));
        assert!(
            !root.add_on_bus(2, 0, 0, Arc::new(HostBridge)),
            "slot taken"
        );
        let mut d = [0u8; 4];
        select(&p, 2, 0, 0, 0);
        p.read(4, &mut d);
        assert_eq!(d, [0x11; 4]);
        e.read(2 << 20 | 0x100, &mut d);
        assert_eq!(d, [0x11; 4]);
        // Same device number on another bus: absent.
        select(&p, 1, 0, 0, 0);
        p.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        e.read(3 << 20, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn host_bridge_is_read_only() {
        let h = HostBridge;
        h.config_write(0, &[0, 0, 0, 0]);
        h.config_write(4, &[0xff, 0xff]);
        let mut d = [0u8; 4];
        h.config_read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
        h.config_read(4, &mut d);
        assert_eq!(d, [0; 4]);
        h.config_read(0xffc, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
