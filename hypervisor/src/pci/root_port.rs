//! A PCI Express root port on bus 0, one per assigned device, so the guest sees the
//! topology of a real host (root complex → root port → endpoint) rather than
//! endpoints sitting on the root bus.
//!
//! The port is a type-1 (PCI-to-PCI bridge) header with a PCI Express capability
//! (version 2, device/port type "root port", no slot, no hot-plug). Its secondary
//! and subordinate bus numbers and its two memory windows (non-prefetchable below
//! 4 GiB, 64-bit prefetchable) are fixed by the VMM when the device's BARs are
//! placed, and cannot be changed by the guest: like BAR moves on the device, writes
//! that would change them are dropped and counted (`window_writes_refused`). There
//! is no I/O window: I/O base/limit read as a disabled window (base 0xf000 above
//! limit 0x0fff, what firmware programs into a bridge with nothing to forward) and
//! ignore writes; I/O BARs are not offered to the guest. (Reading 0 would make
//! Linux log a window `[io 0x0000-0x0fff]` before it drops it.)
//!
//! The PCIe capability mirrors the endpoint's own link (maximum and current speed
//! and width) and its Max_Payload_Size (supported and programmed), so Linux sees a
//! consistent link and has no reason to reprogram either end. The guest may write
//! Device Control, Link Control and Root Control; the values are kept and have no
//! effect (there is no physical link). A secondary bus reset (Bridge Control bit 6
//! going from 0 to 1) resets the device behind the port through the `on_bus_reset`
//! hook, as it would on hardware.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::regs;
use super::root::PciFunction;

/// Vendor and device ID of [`RootPort`]: Red Hat's ID for a PCIe root port of a
/// virtual machine (1b36:000c), next to the host bridge's 1b36:0008.
pub const ROOT_PORT_ID: (u16, u16) = (0x1b36, 0x000c);

/// Where the PCI Express capability sits in the port's configuration space.
pub const PCIE_CAP: usize = 0x40;
/// Granularity of bridge memory windows (1 MiB).
pub const WINDOW_ALIGN: u64 = 1 << 20;

/// Type-1 header offsets this module serves.
mod t1 {
    pub const PRIMARY_BUS: usize = 0x18;
    pub const IO_BASE: usize = 0x1c;
    pub const MEMORY_BASE: usize = 0x20;
    pub const PREF_MEMORY_BASE: usize = 0x24;
    pub const PREF_BASE_UPPER: usize = 0x28;
    pub const PREF_LIMIT_UPPER: usize = 0x2c;
    pub const BRIDGE_CONTROL: usize = 0x3e;
    /// Bridge Control: secondary bus reset.
    pub const BRIDGE_CTL_BUS_RESET: u16 = 1 << 6;
    /// Bridge Control bits kept: parity error response, SERR# enable, ISA, VGA,
    /// VGA 16-bit decode, master abort mode, secondary bus reset.
    pub const BRIDGE_CTL_KEPT: u16 = 0x007f;
}

/// PCI Express capability register offsets (relative to the capability).
mod exp {
    pub const FLAGS: usize = 0x02;
    pub const DEVCAP: usize = 0x04;
    pub const DEVCTL: usize = 0x08;
    pub const LNKCAP: usize = 0x0c;
    pub const LNKCTL: usize = 0x10;
    pub const LNKSTA: usize = 0x12;
    pub const RTCTL: usize = 0x1c;
    pub const LNKCAP2: usize = 0x2c;
    pub const LNKCTL2: usize = 0x30;
    /// Device/port type: root port.
    pub const TYPE_ROOT_PORT: u16 = 0x4;
    /// Link Status: Data Link Layer Link Active.
    pub const LNKSTA_DLLLA: u16 = 1 << 13;
    /// Link Capabilities: Data Link Layer Link Active Reporting Capable.
    pub const LNKCAP_DLLLARC: u32 = 1 << 20;
    /// Device Capabilities: Role-Based Error Reporting.
    pub const DEVCAP_RBER: u32 = 1 << 15;
    /// Device Control bits kept (all but Initiate FLR, which root ports lack).
    pub const DEVCTL_KEPT: u16 = 0x7fff;
    /// Link Control bits kept (not Retrain Link, bit 5, which reads 0).
    pub const LNKCTL_KEPT: u16 = !(1 << 5);
    /// Root Control bits kept (the five interrupt/error enables).
    pub const RTCTL_KEPT: u16 = 0x1f;
}

/// What the port reports about its link, taken from the endpoint behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    /// Maximum link speed (Link Capabilities encoding: 1 = 2.5 GT/s .. 6 = 64 GT/s).
    pub max_speed: u8,
    /// Maximum link width (lanes).
    pub max_width: u8,
    /// Current link speed (Link Status encoding).
    pub speed: u8,
    /// Current link width.
    pub width: u8,
    /// Max_Payload_Size Supported (Device Capabilities encoding, 0 = 128 bytes).
    pub mps_supported: u8,
    /// Max_Payload_Size programmed in the endpoint (Device Control encoding).
    pub mps: u8,
}

impl Default for LinkInfo {
    /// A conventional endpoint without a PCIe capability: a 2.5 GT/s x1 link, 128
    /// bytes payload.
    fn default() -> Self {
        LinkInfo {
            max_speed: 1,
            max_width: 1,
            speed: 1,
            width: 1,
            mps_supported: 0,
            mps: 0,
        }
    }
}

impl LinkInfo {
    /// Reads the endpoint's PCI Express capability from its configuration space
    /// (`read32(offset)`), walking at most 48 capabilities; defaults where it has none
    /// or reports nonsense (a hostile or broken device).
    pub fn from_endpoint(read32: impl Fn(u16) -> u32) -> LinkInfo {
        let mut info = LinkInfo::default();
        if (read32(regs::COMMAND as u16) >> 16) as u16 & regs::STATUS_CAP_LIST == 0 {
            return info;
        }
        let mut pos = (read32(regs::CAP_PTR as u16) & 0xfc) as u16;
        for _ in 0..48 {
            if !(0x40..=0xfc).contains(&pos) {
                return info;
            }
            let hdr = read32(pos);
            if hdr as u8 == 0x10 {
                let devcap = read32(pos + exp::DEVCAP as u16);
                let devctl = read32(pos + exp::DEVCTL as u16) as u16;
                let lnkcap = read32(pos + exp::LNKCAP as u16);
                let lnksta = (read32(pos + exp::LNKCTL as u16) >> 16) as u16;
                let valid_speed = |s: u8| (1..=6).contains(&s);
                let valid_width = |w: u8| matches!(w, 1 | 2 | 4 | 8 | 12 | 16 | 32);
                let (ms, mw) = ((lnkcap & 0xf) as u8, ((lnkcap >> 4) & 0x3f) as u8);
                if valid_speed(ms) && valid_width(mw) {
                    info.max_speed = ms;
                    info.max_width = mw;
                    let (s, w) = ((lnksta & 0xf) as u8, ((lnksta >> 4) & 0x3f) as u8);
                    (info.speed, info.width) =
                        if valid_speed(s) && s <= ms && valid_width(w) && w <= mw {
                            (s, w)
                        } else {
                            (ms, mw)
                        };
                }
                let sup = (devcap & 7) as u8;
                if sup <= 5 {
                    info.mps_supported = sup;
                    let cur = ((devctl >> 5) & 7) as u8;
                    info.mps = if cur <= sup { cur } else { 0 };
                }
                return info;
            }
            pos = ((hdr >> 8) & 0xfc) as u16;
        }
        info
    }
}

/// A memory window `(base, size)`: base and size multiples of [`WINDOW_ALIGN`].
pub type Window = (u64, u64);

/// The guest-writable registers of a port.
#[derive(Debug, Default)]
struct PortState {
    command: u16,
    cache_line: u8,
    interrupt_line: u8,
    bridge_control: u16,
    devctl: u16,
    lnkctl: u16,
    rtctl: u16,
    lnkctl2: u16,
}

/// Counters of a port.
#[derive(Debug, Default)]
pub struct RootPortCounters {
    /// Writes that would have changed bus numbers or windows (dropped).
    pub window_writes_refused: AtomicU64,
    /// Secondary bus resets the guest asked for.
    pub bus_resets: AtomicU64,
}

/// Called on a secondary bus reset with the port's secondary bus number.
pub type BusResetHook = Box<dyn Fn() + Send + Sync>;

/// One PCI Express root port (see the module documentation).
pub struct RootPort {
    port: u8,
    secondary: u8,
    mem: Option<Window>,
    pref: Option<Window>,
    link: LinkInfo,
    state: Mutex<PortState>,
    on_bus_reset: Option<BusResetHook>,
    /// Refused writes and bus resets.
    pub counters: RootPortCounters,
}

impl std::fmt::Debug for RootPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootPort")
            .field("port", &self.port)
            .field("secondary", &self.secondary)
            .field("mem", &self.mem)
            .field("pref", &self.pref)
            .field("link", &self.link)
            .finish()
    }
}

impl RootPort {
    /// Port number `port` (its Link Capabilities port number), forwarding to bus
    /// `secondary` (also the subordinate bus: nothing is behind the endpoint) the
    /// non-prefetchable window `mem` (below 4 GiB) and the prefetchable window `pref`.
    /// Windows must be [`WINDOW_ALIGN`]-aligned and sized; `mem` must end below 4 GiB.
    pub fn new(
        port: u8,
        secondary: u8,
        mem: Option<Window>,
        pref: Option<Window>,
        link: LinkInfo,
        on_bus_reset: Option<BusResetHook>,
    ) -> Result<RootPort, String> {
        let ok = |w: &Window| {
            w.1 > 0
                && w.0.is_multiple_of(WINDOW_ALIGN)
                && w.1.is_multiple_of(WINDOW_ALIGN)
                && w.0.checked_add(w.1).is_some()
        };
        if secondary == 0 {
            return Err("a root port's secondary bus cannot be bus 0".into());
        }
        if let Some(w) = &mem {
            if !ok(w) || w.0 + w.1 > 1 << 32 {
                return Err(format!("root port {port}: bad memory window {w:x?}"));
            }
        }
        if let Some(w) = &pref {
            if !ok(w) {
                return Err(format!("root port {port}: bad prefetchable window {w:x?}"));
            }
        }
        Ok(RootPort {
            port,
            secondary,
            mem,
            pref,
            link,
            state: Mutex::new(PortState {
                // Max_Payload_Size as the endpoint has it; Max_Read_Request 512 bytes.
                devctl: u16::from(link.mps) << 5 | 2 << 12,
                lnkctl2: u16::from(link.max_speed),
                ..PortState::default()
            }),
            on_bus_reset,
            counters: RootPortCounters::default(),
        })
    }

    /// The secondary bus (where the device behind the port sits).
    pub fn secondary_bus(&self) -> u8 {
        self.secondary
    }

    /// The windows the port forwards: `(non-prefetchable, prefetchable)`.
    pub fn windows(&self) -> (Option<Window>, Option<Window>) {
        (self.mem, self.pref)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PortState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first 256 bytes of configuration space as they read now.
    fn image(&self) -> [u8; 256] {
        let st = self.state();
        let mut s = [0u8; 256];
        let put16 =
            |s: &mut [u8; 256], at: usize, v: u16| s[at..at + 2].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |s: &mut [u8; 256], at: usize, v: u32| s[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put16(&mut s, regs::VENDOR_ID, ROOT_PORT_ID.0);
        put16(&mut s, regs::VENDOR_ID + 2, ROOT_PORT_ID.1);
        put16(&mut s, regs::COMMAND, st.command);
        put16(&mut s, regs::STATUS, regs::STATUS_CAP_LIST);
        // Class 06 (bridge), subclass 04 (PCI-to-PCI), interface 00; revision 0.
        s[regs::CLASS_REVISION + 2] = 0x04;
        s[regs::CLASS_REVISION + 3] = 0x06;
        s[0x0c] = st.cache_line;
        s[regs::HEADER_TYPE] = 0x01;
        s[t1::PRIMARY_BUS] = 0;
        s[t1::PRIMARY_BUS + 1] = self.secondary;
        s[t1::PRIMARY_BUS + 2] = self.secondary;
        // Memory window: bits 31:20 of base and limit in bits 15:4. An absent window
        // has base above limit.
        let (mb, ml) = match self.mem {
            Some((b, l)) => (
                ((b >> 16) & 0xfff0) as u16,
                (((b + l - 1) >> 16) & 0xfff0) as u16,
            ),
            None => (0xfff0, 0),
        };
        s[t1::IO_BASE] = 0xf0;
        s[t1::IO_BASE + 1] = 0x00;
        put16(&mut s, t1::MEMORY_BASE, mb);
        put16(&mut s, t1::MEMORY_BASE + 2, ml);
        // Prefetchable window, 64-bit (type 1 in bits 3:0), upper halves at 0x28/0x2c.
        let (pb, pl, pbu, plu) = match self.pref {
            Some((b, l)) => {
                let end = b + l - 1;
                (
                    ((b >> 16) & 0xfff0) as u16 | 1,
                    ((end >> 16) & 0xfff0) as u16 | 1,
                    (b >> 32) as u32,
                    (end >> 32) as u32,
                )
            }
            None => (0xfff1, 0x0001, 0, 0),
        };
        put16(&mut s, t1::PREF_MEMORY_BASE, pb);
        put16(&mut s, t1::PREF_MEMORY_BASE + 2, pl);
        put32(&mut s, t1::PREF_BASE_UPPER, pbu);
        put32(&mut s, t1::PREF_LIMIT_UPPER, plu);
        s[regs::CAP_PTR] = PCIE_CAP as u8;
        s[regs::INTERRUPT_LINE] = st.interrupt_line;
        put16(&mut s, t1::BRIDGE_CONTROL, st.bridge_control);

        let c = PCIE_CAP;
        s[c] = 0x10;
        s[c + 1] = 0; // last capability
        put16(&mut s, c + exp::FLAGS, 2 | exp::TYPE_ROOT_PORT << 4);
        put32(
            &mut s,
            c + exp::DEVCAP,
            u32::from(self.link.mps_supported) | exp::DEVCAP_RBER,
        );
        put16(&mut s, c + exp::DEVCTL, st.devctl);
        let l = self.link;
        put32(
            &mut s,
            c + exp::LNKCAP,
            u32::from(l.max_speed)
                | u32::from(l.max_width) << 4
                | exp::LNKCAP_DLLLARC
                | u32::from(self.port) << 24,
        );
        put16(&mut s, c + exp::LNKCTL, st.lnkctl);
        put16(
            &mut s,
            c + exp::LNKSTA,
            u16::from(l.speed) | u16::from(l.width) << 4 | exp::LNKSTA_DLLLA,
        );
        put16(&mut s, c + exp::RTCTL, st.rtctl);
        // Supported Link Speeds Vector: every speed up to the maximum.
        put32(&mut s, c + exp::LNKCAP2, ((1u32 << l.max_speed) - 1) << 1);
        put16(&mut s, c + exp::LNKCTL2, st.lnkctl2);
        s
    }

    fn refuse(&self, offset: u16, data: &[u8]) {
        let n = self
            .counters
            .window_writes_refused
            .fetch_add(1, Ordering::Relaxed);
        if n < 16 || n.is_multiple_of(65536) {
            tracing::warn!(
                port = self.port,
                offset = format_args!("{offset:#x}"),
                value = format_args!("{data:02x?}"),
                total = n + 1,
                "guest tried to change a root port's bus numbers or windows; refused"
            );
        }
    }
}

/// Merges a `data` write at `offset` into the 16-bit register at `reg` (whose current
/// value is `cur`); `None` when the write does not touch it.
fn merge16(reg: usize, cur: u16, offset: usize, data: &[u8]) -> Option<u16> {
    let (start, end) = (offset, offset + data.len());
    if end <= reg || start >= reg + 2 {
        return None;
    }
    let mut b = cur.to_le_bytes();
    for (i, byte) in data.iter().enumerate() {
        if let Some(slot) = (start + i).checked_sub(reg).filter(|&k| k < 2) {
            b[slot] = *byte;
        }
    }
    Some(u16::from_le_bytes(b))
}

impl PciFunction for RootPort {
    fn config_read(&self, offset: u16, data: &mut [u8]) {
        let off = usize::from(offset);
        // Extended configuration space (0x100..): no extended capabilities.
        match self.image().get(off..off + data.len()) {
            Some(s) => data.copy_from_slice(s),
            None => data.fill(0),
        }
    }

    fn config_write(&self, offset: u16, data: &[u8]) {
        let off = usize::from(offset);
        let end = off + data.len();
        let current = self.image();
        // Bus numbers and windows: a write that keeps their value is fine (Linux
        // rewrites what it read); one that changes them is refused.
        let fixed = [
            t1::PRIMARY_BUS..t1::PRIMARY_BUS + 3,
            t1::MEMORY_BASE..t1::PREF_LIMIT_UPPER + 4,
        ];
        let changes_fixed = fixed.iter().any(|r| {
            (off..end)
                .filter(|i| r.contains(i))
                .any(|i| data[i - off] != current[i])
        });
        if changes_fixed {
            self.refuse(offset, data);
        }
        let mut reset = false;
        {
            let mut st = self.state();
            let cmd_kept =
                regs::CMD_MEMORY | regs::CMD_BUS_MASTER | 1 << 6 | 1 << 8 | regs::CMD_INTX_DISABLE;
            if let Some(v) = merge16(regs::COMMAND, st.command, off, data) {
                st.command = v & cmd_kept;
            }
            if (off..end).contains(&0x0c) {
                st.cache_line = data[0x0c - off];
            }
            if (off..end).contains(&regs::INTERRUPT_LINE) {
                st.interrupt_line = data[regs::INTERRUPT_LINE - off];
            }
            if let Some(v) = merge16(t1::BRIDGE_CONTROL, st.bridge_control, off, data) {
                let v = v & t1::BRIDGE_CTL_KEPT;
                reset = v & t1::BRIDGE_CTL_BUS_RESET != 0
                    && st.bridge_control & t1::BRIDGE_CTL_BUS_RESET == 0;
                st.bridge_control = v;
            }
            let c = PCIE_CAP;
            if let Some(v) = merge16(c + exp::DEVCTL, st.devctl, off, data) {
                st.devctl = v & exp::DEVCTL_KEPT;
            }
            if let Some(v) = merge16(c + exp::LNKCTL, st.lnkctl, off, data) {
                st.lnkctl = v & exp::LNKCTL_KEPT;
            }
            if let Some(v) = merge16(c + exp::RTCTL, st.rtctl, off, data) {
                st.rtctl = v & exp::RTCTL_KEPT;
            }
            if let Some(v) = merge16(c + exp::LNKCTL2, st.lnkctl2, off, data) {
                st.lnkctl2 = v;
            }
        }
        // I/O base/limit (0x1c, 0x1d, 0x30..0x34), status registers and everything
        // else read-only: ignored without a warning (Linux probes the I/O window by
        // writing it, and writes the disabled encoding back).
        if reset {
            let n = self.counters.bus_resets.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(
                port = self.port,
                bus = self.secondary,
                total = n,
                "guest reset the secondary bus"
            );
            if let Some(hook) = &self.on_bus_reset {
                hook();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn r32(p: &RootPort, off: u16) -> u32 {
        let mut d = [0u8; 4];
        p.config_read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w32(p: &RootPort, off: u16, v: u32) {
        p.config_write(off, &v.to_le_bytes());
    }

    fn gpu_link() -> LinkInfo {
        LinkInfo {
            max_speed: 5,
            max_width: 16,
            speed: 4,
            width: 16,
            mps_supported: 2,
            mps: 1,
        }
    }

    fn port(resets: Option<Arc<AtomicUsize>>) -> RootPort {
        let hook: Option<BusResetHook> = resets.map(|r| {
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }) as BusResetHook
        });
        RootPort::new(
            1,
            1,
            Some((0xc000_0000, 0x0200_0000)),
            Some((0x100_0000_0000, 0x20_0200_0000)),
            gpu_link(),
            hook,
        )
        .unwrap()
    }

    #[test]
    fn header_is_a_pci_bridge_with_fixed_buses_and_windows() {
        let p = port(None);
        assert_eq!(r32(&p, 0), 0x000c_1b36);
        assert_eq!(r32(&p, 8) >> 8, 0x06_0400);
        assert_eq!(r32(&p, 0x0c) >> 16 & 0xff, 1, "header type 1");
        assert_eq!(r32(&p, 0x04) >> 16 & 0x10, 0x10, "capability list");
        assert_eq!(
            r32(&p, 0x18) & 0xff_ffff,
            0x01_0100,
            "primary 0, secondary 1, subordinate 1"
        );
        // Memory window 0xc0000000..=0xc1ffffff.
        assert_eq!(r32(&p, 0x20), 0xc1f0_c000);
        // Prefetchable 64-bit window 0x10000000000..=0x12001ffffff.
        assert_eq!(r32(&p, 0x24), 0x01f1_0001);
        assert_eq!(r32(&p, 0x28), 0x100);
        assert_eq!(r32(&p, 0x2c), 0x120);
        assert_eq!(
            r32(&p, 0x1c) & 0xffff,
            0x00f0,
            "I/O window disabled: base above limit"
        );
        assert_eq!(r32(&p, 0x10), 0);
        assert_eq!(r32(&p, 0x14), 0);
        assert_eq!(r32(&p, 0x3c) >> 8 & 0xff, 0, "no interrupt pin");
        assert_eq!(r32(&p, 0x100), 0, "no extended capabilities");
    }

    #[test]
    fn absent_windows_read_as_base_above_limit() {
        let p = RootPort::new(3, 3, None, None, LinkInfo::default(), None).unwrap();
        let m = r32(&p, 0x20);
        assert!((m & 0xfff0) > (m >> 16 & 0xfff0));
        let pm = r32(&p, 0x24);
        assert!((pm & 0xfff0) > (pm >> 16 & 0xfff0));
        assert_eq!(pm & 0xf, 1, "64-bit prefetchable decode even when empty");
    }

    #[test]
    fn pcie_capability_is_a_root_port_mirroring_the_endpoint_link() {
        let p = port(None);
        let c = PCIE_CAP as u16;
        assert_eq!(r32(&p, 0x34) & 0xff, u32::from(c));
        let hdr = r32(&p, c);
        assert_eq!(hdr & 0xffff, 0x0010, "PCIe capability, last in the list");
        assert_eq!(hdr >> 16, 0x0042, "version 2, root port");
        assert_eq!(r32(&p, c + 4) & 7, 2, "MPS supported as the endpoint");
        assert_eq!(r32(&p, c + 8) >> 5 & 7, 1, "MPS programmed as the endpoint");
        let lnkcap = r32(&p, c + 0xc);
        assert_eq!((lnkcap & 0xf, lnkcap >> 4 & 0x3f, lnkcap >> 24), (5, 16, 1));
        let lnksta = r32(&p, c + 0x10) >> 16;
        assert_eq!((lnksta & 0xf, lnksta >> 4 & 0x3f), (4, 16));
        assert_ne!(lnksta & 1 << 13, 0, "link active");
        assert_eq!(r32(&p, c + 0x2c), 0b11_1110, "2.5 to 32 GT/s supported");
    }

    #[test]
    fn endpoint_link_is_read_from_its_capability_and_nonsense_falls_back() {
        // Config space with a PCIe capability at 0x60 (after a PM capability at 0x40).
        let mut space = vec![0u8; 256];
        space[0x06] = 0x10;
        space[0x34] = 0x40;
        space[0x40] = 0x01;
        space[0x41] = 0x60;
        space[0x60] = 0x10;
        space[0x64] = 0x02; // MPSS 512
        space[0x68] = 0x20; // MPS 256
        space[0x6c..0x70].copy_from_slice(&(4u32 | 16 << 4).to_le_bytes());
        space[0x72..0x74].copy_from_slice(&(3u16 | 8 << 4).to_le_bytes());
        let read = |s: &Vec<u8>| {
            let s = s.clone();
            move |off: u16| {
                let o = usize::from(off);
                u32::from_le_bytes(s[o..o + 4].try_into().unwrap())
            }
        };
        let l = LinkInfo::from_endpoint(read(&space));
        assert_eq!(
            l,
            LinkInfo {
                max_speed: 4,
                max_width: 16,
                speed: 3,
                width: 8,
                mps_supported: 2,
                mps: 1
            }
        );
        // A looping capability list and a garbage link: defaults, no hang.
        space[0x41] = 0x40;
        assert_eq!(LinkInfo::from_endpoint(read(&space)), LinkInfo::default());
        space[0x41] = 0x60;
        space[0x6c..0x70].copy_from_slice(&u32::MAX.to_le_bytes());
        space[0x64] = 7;
        let l = LinkInfo::from_endpoint(read(&space));
        assert_eq!((l.max_speed, l.max_width, l.mps_supported), (1, 1, 0));
    }

    #[test]
    fn guest_cannot_move_buses_or_windows_but_rewriting_them_is_fine() {
        let p = port(None);
        let before: Vec<u32> = (0x18..0x30).step_by(4).map(|o| r32(&p, o)).collect();
        // Linux rewrites what it read.
        for (i, v) in before.iter().enumerate() {
            w32(&p, 0x18 + 4 * i as u16, *v);
        }
        assert_eq!(p.counters.window_writes_refused.load(Ordering::Relaxed), 0);
        w32(&p, 0x18, 0x0005_0500);
        w32(&p, 0x20, 0xfff0_0000);
        p.config_write(0x24, &[0xf1, 0xff]);
        w32(&p, 0x28, 0);
        let after: Vec<u32> = (0x18..0x30).step_by(4).map(|o| r32(&p, o)).collect();
        assert_eq!(before, after);
        assert_eq!(p.counters.window_writes_refused.load(Ordering::Relaxed), 4);
        // The I/O window cannot be opened.
        w32(&p, 0x1c, 0x10_00);
        assert_eq!(r32(&p, 0x1c) & 0xffff, 0x00f0);
    }

    #[test]
    fn writable_registers_keep_their_bits_and_bus_reset_calls_the_hook_on_the_edge() {
        let resets = Arc::new(AtomicUsize::new(0));
        let p = port(Some(resets.clone()));
        w32(&p, 0x04, 0xffff_ffff);
        assert_eq!(r32(&p, 0x04) & 0xffff, 0x0546);
        assert_eq!(r32(&p, 0x04) >> 16, 0x10, "status is read-only");
        // Bridge control at 0x3e, through a dword write that also sets the line.
        w32(&p, 0x3c, 0x0040_0000 | 0x0b);
        assert_eq!(r32(&p, 0x3c), 0x0040_000b);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        // Still set: no new edge.
        p.config_write(0x3e, &[0x42, 0]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        p.config_write(0x3e, &[0x02, 0]);
        p.config_write(0x3e, &[0x40, 0]);
        assert_eq!(resets.load(Ordering::SeqCst), 2);
        assert_eq!(p.counters.bus_resets.load(Ordering::Relaxed), 2);
        let c = PCIE_CAP as u16;
        // Device Control keeps its bits; Link Control drops Retrain Link.
        p.config_write(c + 8, &0x2810u16.to_le_bytes());
        assert_eq!(r32(&p, c + 8) & 0xffff, 0x2810);
        p.config_write(c + 0x10, &0x0063u16.to_le_bytes());
        assert_eq!(r32(&p, c + 0x10) & 0xffff, 0x0043);
        // Capability header, flags and capabilities are read-only.
        w32(&p, c, 0);
        w32(&p, c + 0xc, 0);
        assert_eq!(r32(&p, c) & 0xff, 0x10);
        assert_eq!(r32(&p, c + 0xc) & 0xf, 5);
    }

    #[test]
    fn bad_windows_are_refused_at_construction() {
        let l = LinkInfo::default();
        assert!(RootPort::new(1, 0, None, None, l, None).is_err());
        assert!(RootPort::new(1, 1, Some((0xc000_1000, 1 << 20)), None, l, None).is_err());
        assert!(RootPort::new(1, 1, Some((0xfff0_0000, 2 << 20)), None, l, None).is_err());
        assert!(RootPort::new(
            1,
            1,
            None,
            Some((u64::MAX - (1 << 20) + 1, 2 << 20)),
            l,
            None
        )
        .is_err());
        assert!(RootPort::new(1, 1, None, Some((1 << 40, 0)), l, None).is_err());
    }
}
