//! The guest's view of an assigned function's configuration space: the device's own
//! registers, read and written through VFIO, with the BARs, the command register, the
//! interrupt pin/line, the expansion ROM and the MSI and MSI-X capabilities
//! virtualized here. Also the trap for the BAR pages that cannot be a memory slot
//! (the MSI-X table and PBA, or a whole BAR VFIO does not let us map).
//!
//! Policy on guest writes (every one is hostile):
//! - BARs: an all-ones write starts sizing (the register then reads the size mask);
//!   any other value must be the address the VMM assigned. A move is **refused**: the
//!   write is dropped, counted (`bar_moves_refused`) and logged, and the register keeps
//!   the assigned address, so the memory slots and traps never move.
//! - Command register: only memory decode, bus master, parity/SERR response and INTx
//!   disable reach the device; I/O decode is never enabled (I/O BARs are hidden).
//! - MSI: one vector (Multiple Message Capable reads 0); address, data, mask and
//!   enable are kept here and become a KVM MSI route on the function's GSI; VFIO's
//!   eventfd for the vector is an irqfd on that GSI while the vector is unmasked.
//! - MSI-X: enable and function mask are kept here, the table is emulated in the
//!   trapped page(s) (`bulwark_virtio::msix::MsixTable`, the model virtio-pci uses
//!   too); each unmasked vector with an x86 message address (0xFEEx_xxxx) is a KVM
//!   MSI route.
//! - Masked vectors (MSI with per-vector masking, MSI-X) hold their interrupt: the
//!   vector's delivery gate ([`DeviceIo::gate`]) is closed before its route goes and
//!   opened after its route is written; what the device raised meanwhile is its
//!   pending bit (the emulated PBA, MSI's pending-bits register) and is delivered once
//!   at the unmask.
//! - Everything else (status, capabilities other than MSI/MSI-X, extended space) is
//!   passed to vfio-pci, which applies its own virtualization and write filters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bulwark_virtio::msix::{MsixMessage, MsixTable};
use serde::Serialize;

use crate::bus::{BusAction, BusDevice};
use crate::irq_routing::MsiMessage;
use crate::pci::{regs, BarKind, PciFunction};

/// Access to the real device (VFIO in production, a fake in tests).
pub trait DeviceIo: Send + Sync {
    /// Reads the device's configuration space (the caller pre-fills all-ones).
    fn config_read(&self, offset: u64, data: &mut [u8]);
    /// Writes the device's configuration space.
    fn config_write(&self, offset: u64, data: &[u8]);
    /// Reads BAR `bar` at `offset` through the device fd.
    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]);
    /// Writes BAR `bar` at `offset` through the device fd.
    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]);
    /// Enables (with its eventfd) or disables MSI on the device.
    fn set_msi(&self, enable: bool) -> Result<(), String>;
    /// Enables (with one eventfd per table entry) or disables MSI-X on the device.
    fn set_msix(&self, enable: bool) -> Result<(), String>;
    /// Resets the device (function-level or bus reset, whatever VFIO offers); false
    /// when the device has no reset. Interrupts held behind closed gates are dropped.
    fn reset(&self) -> Result<bool, String>;
    /// Opens (`true`) or closes delivery of `vector`'s interrupts to the guest. While
    /// it is closed, interrupts the device raises for it are held (one at most), and
    /// opening delivers a held one: how a masked MSI or MSI-X vector behaves.
    fn gate(&self, vector: Vector, open: bool) -> Result<(), String>;
    /// Whether an interrupt of the (closed) `vector` is held: its pending bit.
    fn pending(&self, vector: Vector) -> bool;
}

/// One interrupt vector of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Vector {
    /// The MSI vector (the VMM offers one).
    Msi,
    /// MSI-X table entry `n`.
    Msix(u16),
}

/// Programs interrupt routes (the VM's [`crate::irq_routing::GsiRouter`], or a fake).
pub trait Routes: Send + Sync {
    /// Sets or removes MSI routes.
    fn update(&self, updates: &[(u32, Option<MsiMessage>)]) -> Result<(), String>;
}

impl Routes for crate::irq_routing::GsiRouter {
    fn update(&self, updates: &[(u32, Option<MsiMessage>)]) -> Result<(), String> {
        crate::irq_routing::GsiRouter::update(self, updates)
    }
}

/// Guest misbehaviour and failures seen by one assigned function.
#[derive(Debug, Default, Serialize)]
pub struct FunctionCounters {
    /// BAR writes that would have moved a BAR (refused).
    pub bar_moves_refused: AtomicU64,
    /// MSI/MSI-X messages with an address that is not an x86 interrupt message.
    pub bad_msi_messages: AtomicU64,
    /// Malformed accesses to the trapped MSI-X table.
    pub bad_table_accesses: AtomicU64,
    /// VFIO or KVM calls that failed while serving the guest.
    pub errors: AtomicU64,
}

fn bump(counter: &AtomicU64, name: &str, what: std::fmt::Arguments<'_>) {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    if n < 16 || n.is_multiple_of(65536) {
        tracing::warn!(total = n + 1, "assigned device {name}: {what}");
    }
}

/// A memory BAR as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestBar {
    /// BAR index (0..=5; a 64-bit BAR also uses `index + 1`).
    pub index: u8,
    /// Kind.
    pub kind: BarKind,
    /// The device's BAR size in bytes (a power of two).
    pub size: u64,
    /// Guest-physical address assigned by the VMM.
    pub addr: u64,
    /// The register's low four bits (type and prefetchable), from the device.
    pub flags: u32,
}

/// Where the MSI capability is and what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiInfo {
    /// Capability offset.
    pub cap: u16,
    /// 64-bit message address.
    pub is64: bool,
    /// Per-vector masking.
    pub per_vector_mask: bool,
    /// The GSI of its one vector.
    pub gsi: u32,
}

impl MsiInfo {
    /// Bytes of the capability.
    fn len(&self) -> usize {
        match (self.is64, self.per_vector_mask) {
            (false, false) => 10,
            (true, false) => 14,
            (false, true) => 20,
            (true, true) => 24,
        }
    }
    fn data_at(&self) -> usize {
        if self.is64 {
            12
        } else {
            8
        }
    }
}

/// Where the MSI-X capability, table and PBA are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixInfo {
    /// Capability offset.
    pub cap: u16,
    /// Number of table entries.
    pub table_size: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Table offset in that BAR.
    pub table_offset: u64,
    /// BAR holding the PBA.
    pub pba_bar: u8,
    /// PBA offset in that BAR.
    pub pba_offset: u64,
    /// GSI of entry 0 (entry `i` uses `first_gsi + i`).
    pub first_gsi: u32,
}

impl MsixInfo {
    /// Table bytes.
    pub fn table_len(&self) -> u64 {
        u64::from(self.table_size) * 16
    }
    /// PBA bytes.
    pub fn pba_len(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }
    /// Page-aligned ranges `(offset, len)` of BAR `bar` that must trap.
    pub fn trapped_pages(&self, bar: u8) -> Vec<(u64, u64)> {
        let page = |off: u64, len: u64| {
            let s = off & !0xfff;
            (s, (off + len).next_multiple_of(0x1000) - s)
        };
        let mut v = Vec::new();
        if self.table_bar == bar {
            v.push(page(self.table_offset, self.table_len()));
        }
        if self.pba_bar == bar {
            v.push(page(self.pba_offset, self.pba_len()));
        }
        v.sort_unstable();
        // Merge overlapping or touching ranges.
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (s, l) in v {
            match out.last_mut() {
                Some((ps, pl)) if *ps + *pl >= s => *pl = (*pl).max(s + l - *ps),
                _ => out.push((s, l)),
            }
        }
        out
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct MsiRegs {
    enable: bool,
    addr: u64,
    data: u16,
    mask: u32,
}

/// MSI-X state: the table model (shared with virtio-pci) and, per vector, whether its
/// delivery gate is open (see [`DeviceIo::gate`]).
#[derive(Debug)]
struct MsixRegs {
    table: MsixTable,
    open: Vec<bool>,
}

impl std::ops::Deref for MsixRegs {
    type Target = MsixTable;
    fn deref(&self) -> &MsixTable {
        &self.table
    }
}

impl std::ops::DerefMut for MsixRegs {
    fn deref_mut(&mut self) -> &mut MsixTable {
        &mut self.table
    }
}

/// Brings the MSI-X gates of `r` in line with [`MsixTable::deliverable`], only those
/// that open (`opening`: unmasked, delivering a held interrupt) or only those that
/// close (masked or disabled). Gates close before routes are removed and open after
/// routes are written, so no interrupt meets a missing route. Opening a gate delivers
/// what it held, so the table's pending bits of deliverable vectors are cleared.
fn sync_msix_gates(
    io: &dyn DeviceIo,
    r: &mut MsixRegs,
    counters: &FunctionCounters,
    name: &str,
    opening: bool,
) {
    for v in 0..r.table.size() {
        let i = usize::from(v);
        let want = r.table.deliverable(v);
        if r.open[i] != want && want == opening {
            match io.gate(Vector::Msix(v), want) {
                Ok(()) => r.open[i] = want,
                Err(e) => bump(
                    &counters.errors,
                    name,
                    format_args!(
                        "MSI-X vector {v}: {} delivery: {e}",
                        if want { "opening" } else { "closing" }
                    ),
                ),
            }
        }
    }
    if opening {
        r.table.take_deliverable_pending();
    }
}

/// After a change of the table or of the control bits: closes the gates of vectors
/// that stopped delivering, programs the changed routes (a failed update is offered
/// again with the next change), then opens the gates of vectors that deliver now.
fn apply_msix_changes(
    io: &dyn DeviceIo,
    routes: &Arc<dyn Routes>,
    counters: &FunctionCounters,
    name: &str,
    info: &MsixInfo,
    r: &mut MsixRegs,
) {
    let changes = r.route_changes();
    sync_msix_gates(io, r, counters, name, false);
    if !changes.is_empty()
        && !PassthroughFunction::route_msix_with(
            routes,
            counters,
            name,
            &gsi_routes(info, changes.clone()),
        )
    {
        r.forget_routes(&changes);
    }
    sync_msix_gates(io, r, counters, name, true);
}

/// MSI-X state shared by the configuration space (enable, function mask) and the
/// table trap.
pub struct MsixState {
    info: MsixInfo,
    regs: Mutex<MsixRegs>,
}

impl std::fmt::Debug for MsixState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixState")
            .field("info", &self.info)
            .finish()
    }
}

#[derive(Debug)]
struct State {
    sizing: [bool; 6],
    interrupt_line: u8,
    msi: MsiRegs,
    /// Whether the MSI vector's delivery gate is open (enabled and not masked).
    msi_open: bool,
}

/// One assigned function on the guest's bus.
pub struct PassthroughFunction {
    name: String,
    io: Arc<dyn DeviceIo>,
    routes: Arc<dyn Routes>,
    bars: Vec<GuestBar>,
    /// For each BAR register: the BAR and whether it is the high dword.
    reg_map: [Option<(usize, bool)>; 6],
    msi: Option<MsiInfo>,
    /// The device's MSI control bits that stay (64-bit, per-vector masking).
    msi_ctrl_ro: u16,
    msix: Option<Arc<MsixState>>,
    /// The device's MSI-X control (table size), read once.
    msix_ctrl_ro: u16,
    /// INTx pin (1..=4) and its GSI, when wired.
    intx: Option<(u8, u32)>,
    state: Mutex<State>,
    /// Counters.
    pub counters: Arc<FunctionCounters>,
}

impl std::fmt::Debug for PassthroughFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughFunction")
            .field("name", &self.name)
            .field("bars", &self.bars)
            .field("msi", &self.msi)
            .field("msix", &self.msix)
            .finish()
    }
}

/// Command register bits the guest may set on the device.
const COMMAND_ALLOWED: u16 =
    regs::CMD_MEMORY | regs::CMD_BUS_MASTER | 1 << 6 | 1 << 8 | regs::CMD_INTX_DISABLE;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PassthroughFunction {
    /// The function `name` over `io`, with its memory BARs placed, and the MSI/MSI-X
    /// capabilities (with their GSIs) the VMM found on the device.
    pub fn new(
        name: String,
        io: Arc<dyn DeviceIo>,
        routes: Arc<dyn Routes>,
        bars: Vec<GuestBar>,
        msi: Option<MsiInfo>,
        msix: Option<MsixInfo>,
    ) -> Self {
        Self::with_intx(name, io, routes, bars, msi, msix, None)
    }

    /// [`Self::new`] with INTx wired: `intx` is the device's pin (1..=4) and the GSI
    /// (IOAPIC pin) it raises; the interrupt line register starts at that GSI.
    #[allow(clippy::too_many_arguments)]
    pub fn with_intx(
        name: String,
        io: Arc<dyn DeviceIo>,
        routes: Arc<dyn Routes>,
        bars: Vec<GuestBar>,
        msi: Option<MsiInfo>,
        msix: Option<MsixInfo>,
        intx: Option<(u8, u32)>,
    ) -> Self {
        let mut reg_map = [None; 6];
        for (i, b) in bars.iter().enumerate() {
            let r = usize::from(b.index);
            if r < 6 {
                reg_map[r] = Some((i, false));
            }
            if b.kind != BarKind::Mem32 && r + 1 < 6 {
                reg_map[r + 1] = Some((i, true));
            }
        }
        let read16 = |off: u16| {
            let mut d = [0xffu8; 2];
            io.config_read(u64::from(off), &mut d);
            u16::from_le_bytes(d)
        };
        let msi_ctrl_ro = msi.map_or(0, |m| read16(m.cap + 2) & (1 << 7 | 1 << 8));
        let msix_ctrl_ro = msix.map_or(0, |m| m.table_size.saturating_sub(1) & 0x7ff);
        let msix = msix.map(|info| {
            Arc::new(MsixState {
                info,
                regs: Mutex::new(MsixRegs {
                    table: MsixTable::new(info.table_size),
                    open: vec![false; usize::from(info.table_size.clamp(1, 2048))],
                }),
            })
        });
        PassthroughFunction {
            name,
            io,
            routes,
            bars,
            reg_map,
            msi,
            msi_ctrl_ro,
            msix,
            msix_ctrl_ro,
            intx,
            state: Mutex::new(State {
                sizing: [false; 6],
                interrupt_line: intx.map_or(0xff, |(_, gsi)| gsi as u8),
                msi: MsiRegs::default(),
                msi_open: false,
            }),
            counters: Arc::default(),
        }
    }

    /// The MSI-X state, for the table trap.
    pub fn msix(&self) -> Option<Arc<MsixState>> {
        self.msix.clone()
    }

    /// The interrupt mode in effect: "msi-x", "msi", "intx" (wired, neither MSI nor
    /// MSI-X enabled) or "none".
    pub fn interrupt_mode(&self) -> &'static str {
        if self.msix.as_ref().is_some_and(|m| lock(&m.regs).enabled()) {
            "msi-x"
        } else if lock(&self.state).msi.enable {
            "msi"
        } else if self.intx.is_some() {
            "intx"
        } else {
            "none"
        }
    }

    fn bar_reg(&self, st: &State, r: usize) -> u32 {
        let Some((i, high)) = self.reg_map[r] else {
            return 0;
        };
        let b = &self.bars[i];
        let v = if st.sizing[r] { !(b.size - 1) } else { b.addr };
        if high {
            (v >> 32) as u32
        } else {
            (v as u32 & !0xf) | b.flags
        }
    }

    fn bar_write(&self, st: &mut State, r: usize, value: u32) {
        let Some((i, high)) = self.reg_map[r] else {
            return;
        };
        if value == u32::MAX {
            st.sizing[r] = true;
            return;
        }
        st.sizing[r] = false;
        let b = &self.bars[i];
        let mask = !(b.size - 1);
        let (want, mask) = if high {
            ((b.addr >> 32) as u32, (mask >> 32) as u32)
        } else {
            (b.addr as u32, mask as u32 & !0xf)
        };
        if value & mask != want & mask {
            bump(
                &self.counters.bar_moves_refused,
                &self.name,
                format_args!(
                    "refused to move BAR{} (register {r}) to {value:#010x}; it stays at {:#x}",
                    b.index, b.addr
                ),
            );
        }
    }

    /// The MSI capability as the guest sees it.
    fn msi_bytes(&self, m: &MsiInfo, st: &State) -> Vec<u8> {
        let mut v = vec![0u8; m.len()];
        let mut hdr = [0xffu8; 2];
        self.io.config_read(u64::from(m.cap), &mut hdr);
        v[0..2].copy_from_slice(&hdr);
        let ctrl = self.msi_ctrl_ro | u16::from(st.msi.enable);
        v[2..4].copy_from_slice(&ctrl.to_le_bytes());
        v[4..8].copy_from_slice(&(st.msi.addr as u32).to_le_bytes());
        if m.is64 {
            v[8..12].copy_from_slice(&((st.msi.addr >> 32) as u32).to_le_bytes());
        }
        let d = m.data_at();
        v[d..d + 2].copy_from_slice(&st.msi.data.to_le_bytes());
        if m.per_vector_mask {
            v[d + 4..d + 8].copy_from_slice(&st.msi.mask.to_le_bytes());
            // Pending bits: the vector holds an interrupt while masked.
            let pending = st.msi.enable && st.msi.mask & 1 != 0 && self.io.pending(Vector::Msi);
            v[d + 8..d + 12].copy_from_slice(&u32::from(pending).to_le_bytes());
        }
        v
    }

    fn msi_write(&self, m: &MsiInfo, st: &mut State, rel: usize, data: &[u8]) {
        let mut v = self.msi_bytes(m, st);
        for (k, &b) in data.iter().enumerate() {
            if let Some(slot) = v.get_mut(rel + k) {
                *slot = b;
            }
        }
        let d = m.data_at();
        let rd32 = |o: usize| u32::from_le_bytes([v[o], v[o + 1], v[o + 2], v[o + 3]]);
        let new = MsiRegs {
            enable: v[2] & 1 != 0,
            addr: u64::from(rd32(4) & !3) | if m.is64 { u64::from(rd32(8)) << 32 } else { 0 },
            data: u16::from_le_bytes([v[d], v[d + 1]]),
            mask: if m.per_vector_mask {
                rd32(d + 4) & 1
            } else {
                0
            },
        };
        let old = std::mem::replace(&mut st.msi, new);
        if old == new {
            return;
        }
        if new.enable && !old.enable {
            if let Err(e) = self.io.set_msi(true) {
                bump(
                    &self.counters.errors,
                    &self.name,
                    format_args!("enabling MSI: {e}"),
                );
            }
        }
        // Routed while it delivers; masked, its gate is closed (closed before the route
        // goes, opened after it is written), so what it raises meanwhile is held and
        // delivered at the unmask.
        let want = new.enable && new.mask == 0;
        if st.msi_open && !want {
            self.msi_gate(st, false);
        }
        let route = want.then_some(MsiMessage {
            addr: new.addr,
            data: u32::from(new.data),
        });
        if route.is_some_and(|r| !r.is_valid()) {
            bump(
                &self.counters.bad_msi_messages,
                &self.name,
                format_args!(
                    "MSI address {:#x} is not an interrupt message; not routed",
                    new.addr
                ),
            );
        }
        if let Err(e) = self.routes.update(&[(m.gsi, route)]) {
            bump(
                &self.counters.errors,
                &self.name,
                format_args!("MSI route: {e}"),
            );
        }
        if !st.msi_open && want {
            self.msi_gate(st, true);
        }
        if !new.enable && old.enable {
            if let Err(e) = self.io.set_msi(false) {
                bump(
                    &self.counters.errors,
                    &self.name,
                    format_args!("disabling MSI: {e}"),
                );
            }
        }
    }

    fn msi_gate(&self, st: &mut State, open: bool) {
        match self.io.gate(Vector::Msi, open) {
            Ok(()) => st.msi_open = open,
            Err(e) => bump(
                &self.counters.errors,
                &self.name,
                format_args!("MSI delivery: {e}"),
            ),
        }
    }

    fn msix_bytes(&self, x: &MsixState) -> [u8; 12] {
        let mut v = [0u8; 12];
        self.io.config_read(u64::from(x.info.cap), &mut v[0..2]);
        let r = lock(&x.regs);
        let ctrl =
            self.msix_ctrl_ro | u16::from(r.function_masked()) << 14 | u16::from(r.enabled()) << 15;
        v[2..4].copy_from_slice(&ctrl.to_le_bytes());
        let table = x.info.table_offset as u32 | u32::from(x.info.table_bar);
        let pba = x.info.pba_offset as u32 | u32::from(x.info.pba_bar);
        v[4..8].copy_from_slice(&table.to_le_bytes());
        v[8..12].copy_from_slice(&pba.to_le_bytes());
        v
    }

    fn msix_write(&self, x: &MsixState, rel: usize, data: &[u8]) {
        // Only the upper control byte (offset 3) is writable: function mask, enable.
        let Some(k) = 3usize.checked_sub(rel).filter(|&k| k < data.len()) else {
            return;
        };
        let (enable, mask) = (data[k] & 0x80 != 0, data[k] & 0x40 != 0);
        let mut r = lock(&x.regs);
        let was = r.enabled();
        if enable == was && mask == r.function_masked() {
            return;
        }
        if enable && !was {
            if let Err(e) = self.io.set_msix(true) {
                bump(
                    &self.counters.errors,
                    &self.name,
                    format_args!("enabling MSI-X: {e}"),
                );
            }
        }
        r.set_control(enable, mask);
        apply_msix_changes(
            &*self.io,
            &self.routes,
            &self.counters,
            &self.name,
            &x.info,
            &mut r,
        );
        drop(r);
        if !enable && was {
            if let Err(e) = self.io.set_msix(false) {
                bump(
                    &self.counters.errors,
                    &self.name,
                    format_args!("disabling MSI-X: {e}"),
                );
            }
        }
    }

    /// Which virtualized register covers config byte `pos`, if any.
    fn class(&self, pos: usize) -> Class {
        match pos {
            regs::COMMAND | 0x05 => Class::Command,
            regs::BAR0..regs::BAR_END => Class::Bar((pos - regs::BAR0) / 4),
            regs::ROM..0x34 => Class::Zero,
            regs::INTERRUPT_LINE => Class::Line,
            regs::INTERRUPT_PIN => Class::Pin,
            _ => {
                if let Some(m) = &self.msi {
                    let c = usize::from(m.cap);
                    if (c..c + m.len()).contains(&pos) {
                        return Class::Msi(pos - c);
                    }
                }
                if let Some(x) = &self.msix {
                    let c = usize::from(x.info.cap);
                    if (c..c + 12).contains(&pos) {
                        return Class::Msix(pos - c);
                    }
                }
                Class::Device
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Device,
    Pin,
    Command,
    Bar(usize),
    Zero,
    Line,
    Msi(usize),
    Msix(usize),
}

/// The table's changed routes as MSI routes on the function's GSIs.
fn gsi_routes(
    info: &MsixInfo,
    changes: Vec<(u16, Option<MsixMessage>)>,
) -> Vec<(u32, Option<MsiMessage>)> {
    changes
        .into_iter()
        .map(|(v, m)| {
            let msg = m.map(|m| MsiMessage {
                addr: m.addr,
                data: m.data,
            });
            (info.first_gsi + u32::from(v), msg)
        })
        .collect()
}

impl PciFunction for PassthroughFunction {
    fn config_read(&self, offset: u16, data: &mut [u8]) {
        let off = usize::from(offset);
        self.io.config_read(u64::from(offset), data);
        let st = lock(&self.state);
        for (k, byte) in data.iter_mut().enumerate() {
            let pos = off + k;
            match self.class(pos) {
                Class::Device => {}
                Class::Command => {
                    // The device's register, less I/O decode (never enabled).
                    if pos == regs::COMMAND {
                        *byte &= !(regs::CMD_IO as u8);
                    }
                }
                Class::Bar(r) => *byte = self.bar_reg(&st, r).to_le_bytes()[pos % 4],
                Class::Zero => *byte = 0,
                Class::Line => *byte = st.interrupt_line,
                Class::Pin => *byte = self.intx.map_or(0, |(pin, _)| pin),
                Class::Msi(rel) => {
                    if let Some(m) = &self.msi {
                        *byte = self.msi_bytes(m, &st)[rel];
                    }
                }
                Class::Msix(rel) => {
                    if let Some(x) = &self.msix {
                        *byte = self.msix_bytes(x)[rel];
                    }
                }
            }
        }
    }

    fn config_write(&self, offset: u16, data: &[u8]) {
        let off = usize::from(offset);
        // Split the access into runs of bytes of the same class.
        let mut k = 0;
        while k < data.len() {
            let class = self.class(off + k);
            let mut end = k + 1;
            while end < data.len() && same_register(class, self.class(off + end)) {
                end += 1;
            }
            let (pos, bytes) = (off + k, &data[k..end]);
            let mut st = lock(&self.state);
            match class {
                Class::Device => {
                    drop(st);
                    self.io.config_write(pos as u64, bytes);
                }
                Class::Command => {
                    let mut cur = [0xffu8; 2];
                    self.io.config_read(regs::COMMAND as u64, &mut cur);
                    for (i, b) in bytes.iter().enumerate() {
                        cur[pos - regs::COMMAND + i] = *b;
                    }
                    let v = u16::from_le_bytes(cur) & COMMAND_ALLOWED;
                    drop(st);
                    self.io.config_write(regs::COMMAND as u64, &v.to_le_bytes());
                }
                Class::Bar(r) => {
                    let mut cur = self.bar_reg(&st, r).to_le_bytes();
                    for (i, b) in bytes.iter().enumerate() {
                        cur[(pos + i) % 4] = *b;
                    }
                    self.bar_write(&mut st, r, u32::from_le_bytes(cur));
                }
                Class::Zero | Class::Pin => {}
                Class::Line => st.interrupt_line = bytes[0],
                Class::Msi(rel) => {
                    if let Some(m) = self.msi {
                        self.msi_write(&m, &mut st, rel, bytes);
                    }
                }
                Class::Msix(rel) => {
                    drop(st);
                    if let Some(x) = &self.msix {
                        self.msix_write(x, rel, bytes);
                    }
                }
            }
            k = end;
        }
    }
}

fn same_register(a: Class, b: Class) -> bool {
    match (a, b) {
        (Class::Msi(_), Class::Msi(_)) | (Class::Msix(_), Class::Msix(_)) => true,
        _ => a == b,
    }
}

/// A trapped range of a BAR: the MSI-X table (emulated), the PBA (read from the
/// device) and anything else in the same pages, or a whole BAR that VFIO does not let
/// us map (both passed to the device through the VFIO fd).
pub struct BarTrap {
    name: String,
    io: Arc<dyn DeviceIo>,
    routes: Arc<dyn Routes>,
    bar: u8,
    /// Offset in the BAR of the trapped range's start.
    base: u64,
    msix: Option<Arc<MsixState>>,
    counters: Arc<FunctionCounters>,
}

impl std::fmt::Debug for BarTrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BarTrap")
            .field("name", &self.name)
            .field("bar", &self.bar)
            .field("base", &self.base)
            .finish()
    }
}

impl BarTrap {
    /// A trap for BAR `bar` of `function` from BAR offset `base`.
    pub fn new(function: &PassthroughFunction, bar: u8, base: u64) -> Self {
        BarTrap {
            name: function.name.clone(),
            io: Arc::clone(&function.io),
            routes: Arc::clone(&function.routes),
            bar,
            base,
            msix: function
                .msix
                .clone()
                .filter(|x| x.info.table_bar == bar || x.info.pba_bar == bar),
            counters: Arc::clone(&function.counters),
        }
    }

    /// Whether `[off, off + len)` touches the PBA.
    fn in_pba(&self, off: u64, len: usize) -> bool {
        self.msix.as_ref().is_some_and(|x| {
            x.info.pba_bar == self.bar
                && off < x.info.pba_offset + x.info.pba_len()
                && off + len as u64 > x.info.pba_offset
        })
    }

    /// The emulated PBA: bit `v` is set while vector `v` is not deliverable (masked
    /// or function-masked) and holds an interrupt (VFIO signalled its eventfd while the
    /// gate was closed); the device's own PBA means nothing here (the host kernel owns
    /// the real table). Malformed accesses are counted and read all-ones.
    fn read_pba(&self, off: u64, data: &mut [u8]) {
        let Some(x) = &self.msix else { return };
        let mut r = lock(&x.regs);
        for v in 0..r.size() {
            if r.enabled() && !r.deliverable(v) && self.io.pending(Vector::Msix(v)) {
                r.set_pending(v);
            }
        }
        let mut buf = [0u8; 8];
        let n = data.len();
        let ok = n <= 8
            && off
                .checked_sub(x.info.pba_offset)
                .is_some_and(|rel| r.read_pba(rel, &mut buf[..n]));
        drop(r);
        if ok {
            data.copy_from_slice(&buf[..n]);
        } else {
            self.bad_table_access("PBA read", off, n);
        }
    }

    /// The MSI-X state and the offset in its table when BAR offset `off` is in the
    /// table this trap covers.
    fn in_table(&self, off: u64) -> Option<(&MsixState, u64)> {
        let x = self
            .msix
            .as_ref()
            .filter(|x| x.info.table_bar == self.bar)?;
        let t = x.info.table_offset;
        (off >= t && off < t + x.info.table_len()).then_some((x.as_ref(), off - t))
    }

    fn bad_table_access(&self, what: &str, off: u64, len: usize) {
        bump(
            &self.counters.bad_table_accesses,
            &self.name,
            format_args!("{len}-byte MSI-X table {what} at BAR offset {off:#x}"),
        );
    }
}

impl BusDevice for BarTrap {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let off = self.base + offset;
        match self.in_table(off) {
            None if self.in_pba(off, data.len()) => self.read_pba(off, data),
            None => self.io.bar_read(self.bar, off, data),
            Some((x, rel)) => {
                // Malformed: the bus's all-ones stay.
                let mut buf = [0u8; 8];
                let n = data.len();
                if n <= 8 && lock(&x.regs).read_table(rel, &mut buf[..n]) {
                    data.copy_from_slice(&buf[..n]);
                } else {
                    self.bad_table_access("read", off, n);
                }
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> BusAction {
        let off = self.base + offset;
        match self.in_table(off) {
            None => {
                // The PBA is read-only.
                if !self.in_pba(off, data.len()) {
                    self.io.bar_write(self.bar, off, data);
                }
            }
            Some((x, rel)) => {
                let mut r = lock(&x.regs);
                if r.write_table(rel, data) {
                    apply_msix_changes(
                        &*self.io,
                        &self.routes,
                        &self.counters,
                        &self.name,
                        &x.info,
                        &mut r,
                    );
                } else {
                    drop(r);
                    self.bad_table_access("write", off, data.len());
                }
            }
        }
        BusAction::Continue
    }
}

impl PassthroughFunction {
    /// Programs MSI-X `updates`; false when the router refused them (counted).
    fn route_msix_with(
        routes: &Arc<dyn Routes>,
        counters: &FunctionCounters,
        name: &str,
        updates: &[(u32, Option<MsiMessage>)],
    ) -> bool {
        for (gsi, m) in updates {
            if m.is_some_and(|m| !m.is_valid()) {
                bump(
                    &counters.bad_msi_messages,
                    name,
                    format_args!(
                        "MSI-X message for GSI {gsi} is not an interrupt message; not routed"
                    ),
                );
            }
        }
        match routes.update(updates) {
            Ok(()) => true,
            Err(e) => {
                bump(&counters.errors, name, format_args!("MSI-X routes: {e}"));
                false
            }
        }
    }
}

impl PassthroughFunction {
    /// The device was reset behind the guest's driver (a secondary bus reset on its
    /// root port): interrupts off at VFIO, the emulated MSI and MSI-X state back to
    /// power-on values (disabled, every MSI-X vector masked, no routes), BAR sizing
    /// ended, then the device itself reset through VFIO. INTx stays wired. Failures
    /// are counted in `errors`.
    pub fn device_reset(&self) {
        // Both locks for the whole reset (in the order `config_read` takes them), so
        // no configuration or table write of another vCPU interleaves with it.
        let mut st = lock(&self.state);
        let mut msix = self.msix.as_ref().map(|x| (x, lock(&x.regs)));
        if let Some((x, r)) = msix.as_mut() {
            let was = r.enabled();
            r.set_control(false, false);
            apply_msix_changes(
                &*self.io,
                &self.routes,
                &self.counters,
                &self.name,
                &x.info,
                r,
            );
            // Power-on state: every entry masked and cleared, nothing pending.
            r.table = MsixTable::new(x.info.table_size);
            if was {
                if let Err(e) = self.io.set_msix(false) {
                    bump(
                        &self.counters.errors,
                        &self.name,
                        format_args!("disabling MSI-X at reset: {e}"),
                    );
                }
            }
        }
        st.sizing = [false; 6];
        let was = std::mem::take(&mut st.msi).enable;
        if st.msi_open {
            self.msi_gate(&mut st, false);
        }
        if let Some(m) = &self.msi {
            if let Err(e) = self.routes.update(&[(m.gsi, None)]) {
                bump(
                    &self.counters.errors,
                    &self.name,
                    format_args!("MSI route at reset: {e}"),
                );
            }
        }
        if was {
            if let Err(e) = self.io.set_msi(false) {
                bump(
                    &self.counters.errors,
                    &self.name,
                    format_args!("disabling MSI at reset: {e}"),
                );
            }
        }
        match self.io.reset() {
            Ok(true) => {
                tracing::info!(device = %self.name, "reset (secondary bus reset by the guest)")
            }
            Ok(false) => {
                tracing::warn!(device = %self.name, "the guest reset the bus but the device has no reset; interrupts were turned off")
            }
            Err(e) => bump(
                &self.counters.errors,
                &self.name,
                format_args!("reset: {e}"),
            ),
        }
        drop(msix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A device: 256 bytes of config space, BAR contents, and a log of IRQ calls.
    #[derive(Default)]
    struct FakeDevice {
        config: Mutex<Vec<u8>>,
        bar: Mutex<Vec<u8>>,
        irq_calls: Mutex<Vec<(&'static str, bool)>>,
        /// Open delivery gates, held interrupts, and what reached the guest.
        open: Mutex<std::collections::BTreeSet<Vector>>,
        held: Mutex<std::collections::BTreeSet<Vector>>,
        delivered: Mutex<Vec<Vector>>,
        /// Gate changes and route updates in the order they happened (shared with
        /// the [`FakeRoutes`] of the same set-up).
        log: Arc<Mutex<Vec<String>>>,
    }

    impl FakeDevice {
        /// The device raises `v`: delivered through an open gate, else held.
        fn fire(&self, v: Vector) {
            if lock(&self.open).contains(&v) {
                lock(&self.delivered).push(v);
            } else {
                lock(&self.held).insert(v);
            }
        }
    }

    impl DeviceIo for FakeDevice {
        fn config_read(&self, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&lock(&self.config)[o..o + data.len()]);
        }
        fn config_write(&self, offset: u64, data: &[u8]) {
            let o = offset as usize;
            lock(&self.config)[o..o + data.len()].copy_from_slice(data);
        }
        fn bar_read(&self, _bar: u8, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&lock(&self.bar)[o..o + data.len()]);
        }
        fn bar_write(&self, _bar: u8, offset: u64, data: &[u8]) {
            let o = offset as usize;
            lock(&self.bar)[o..o + data.len()].copy_from_slice(data);
        }
        fn set_msi(&self, enable: bool) -> Result<(), String> {
            lock(&self.irq_calls).push(("msi", enable));
            Ok(())
        }
        fn set_msix(&self, enable: bool) -> Result<(), String> {
            lock(&self.irq_calls).push(("msix", enable));
            Ok(())
        }
        fn reset(&self) -> Result<bool, String> {
            lock(&self.irq_calls).push(("reset", true));
            lock(&self.held).clear();
            Ok(true)
        }
        fn gate(&self, v: Vector, open: bool) -> Result<(), String> {
            lock(&self.log).push(format!(
                "gate {v:?} {}",
                if open { "open" } else { "close" }
            ));
            if open {
                lock(&self.open).insert(v);
                if lock(&self.held).remove(&v) {
                    lock(&self.delivered).push(v);
                }
            } else {
                lock(&self.open).remove(&v);
            }
            Ok(())
        }
        fn pending(&self, v: Vector) -> bool {
            lock(&self.held).contains(&v)
        }
    }

    #[derive(Default)]
    struct FakeRoutes(Mutex<BTreeMap<u32, MsiMessage>>, Arc<Mutex<Vec<String>>>);

    impl Routes for FakeRoutes {
        fn update(&self, updates: &[(u32, Option<MsiMessage>)]) -> Result<(), String> {
            for (gsi, m) in updates {
                lock(&self.1).push(format!(
                    "route {gsi} {}",
                    if m.is_some() { "set" } else { "remove" }
                ));
            }
            let mut m = lock(&self.0);
            for &(gsi, msg) in updates {
                match msg.filter(MsiMessage::is_valid) {
                    Some(v) => m.insert(gsi, v),
                    None => m.remove(&gsi),
                };
            }
            Ok(())
        }
    }

    const MSI_CAP: u16 = 0x50;
    const MSIX_CAP: u16 = 0x70;

    /// BAR0: 1 MiB 32-bit; BAR2/3: 16 KiB 64-bit prefetchable holding the MSI-X table
    /// (4 entries at 0x2000) and PBA (at 0x3000). MSI at 0x50 (64-bit), MSI-X at 0x70.
    fn setup() -> (Arc<FakeDevice>, Arc<FakeRoutes>, PassthroughFunction) {
        setup_with(false)
    }

    /// [`setup`], with MSI per-vector masking when `msi_pvm`.
    fn setup_with(msi_pvm: bool) -> (Arc<FakeDevice>, Arc<FakeRoutes>, PassthroughFunction) {
        let routes = Arc::new(FakeRoutes::default());
        let dev = Arc::new(FakeDevice {
            log: routes.1.clone(),
            ..FakeDevice::default()
        });
        let mut c = vec![0u8; 256];
        c[0..4].copy_from_slice(&0x11e8_1234u32.to_le_bytes());
        c[6] = 0x10; // capability list
        c[0x10..0x14].copy_from_slice(&0xfeb0_0000u32.to_le_bytes()); // host address
        c[0x18..0x1c].copy_from_slice(&0xfea0_000cu32.to_le_bytes());
        c[0x34] = MSI_CAP as u8;
        c[0x3d] = 1; // INTA
        c[MSI_CAP as usize] = 0x05;
        c[MSI_CAP as usize + 1] = MSIX_CAP as u8;
        c[MSI_CAP as usize + 2] = 0x80 | 0x0a; // 64-bit, MMC = 32 vectors
        c[MSI_CAP as usize + 3] = u8::from(msi_pvm); // per-vector masking
        c[MSIX_CAP as usize] = 0x11;
        c[MSIX_CAP as usize + 2] = 3; // 4 entries
        c[0x90..0x94].copy_from_slice(&0xabcd_ef01u32.to_le_bytes()); // a device register
        *lock(&dev.config) = c;
        *lock(&dev.bar) = vec![0x5a; 0x4000];
        let f = PassthroughFunction::new(
            "test".into(),
            dev.clone(),
            routes.clone(),
            vec![
                GuestBar {
                    index: 0,
                    kind: BarKind::Mem32,
                    size: 0x10_0000,
                    addr: 0xc000_0000,
                    flags: 0,
                },
                GuestBar {
                    index: 2,
                    kind: BarKind::Mem64Prefetchable,
                    size: 0x4000,
                    addr: 0x10_0000_0000,
                    flags: 0xc,
                },
            ],
            Some(MsiInfo {
                cap: MSI_CAP,
                is64: true,
                per_vector_mask: msi_pvm,
                gsi: 24,
            }),
            Some(MsixInfo {
                cap: MSIX_CAP,
                table_size: 4,
                table_bar: 2,
                table_offset: 0x2000,
                pba_bar: 2,
                pba_offset: 0x3000,
                first_gsi: 25,
            }),
        );
        (dev, routes, f)
    }

    /// MSI-X entry 1 through the table trap: a message to APIC 1, vector 0x42, unmasked.
    fn program_entry1(trap: &BarTrap) {
        trap.write(0x10, &0xfee0_1000u32.to_le_bytes());
        trap.write(0x18, &0x42u32.to_le_bytes());
        trap.write(0x1c, &0u32.to_le_bytes());
    }

    fn r32(f: &PassthroughFunction, off: u16) -> u32 {
        let mut d = [0xffu8; 4];
        f.config_read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w32(f: &PassthroughFunction, off: u16, v: u32) {
        f.config_write(off, &v.to_le_bytes());
    }

    #[test]
    fn bars_size_and_read_back_the_guest_address_and_moves_are_refused() {
        let (_, _, f) = setup();
        assert_eq!(r32(&f, 0x10), 0xc000_0000);
        assert_eq!(r32(&f, 0x18), 0x0000_000c);
        assert_eq!(r32(&f, 0x1c), 0x10);
        assert_eq!(r32(&f, 0x14), 0, "BAR1 does not exist");
        w32(&f, 0x10, u32::MAX);
        assert_eq!(r32(&f, 0x10), 0xfff0_0000);
        w32(&f, 0x18, u32::MAX);
        w32(&f, 0x1c, u32::MAX);
        assert_eq!(r32(&f, 0x18), 0xffff_c00c);
        assert_eq!(r32(&f, 0x1c), u32::MAX);
        w32(&f, 0x10, 0xc000_0000);
        w32(&f, 0x18, 0xc);
        w32(&f, 0x1c, 0x10);
        assert_eq!((r32(&f, 0x10), r32(&f, 0x1c)), (0xc000_0000, 0x10));
        assert_eq!(f.counters.bar_moves_refused.load(Ordering::Relaxed), 0);
        // A move (also one made of byte writes) is refused and counted.
        w32(&f, 0x10, 0xd000_0000);
        f.config_write(0x13, &[0xe0]);
        assert_eq!(r32(&f, 0x10), 0xc000_0000);
        assert_eq!(f.counters.bar_moves_refused.load(Ordering::Relaxed), 2);
        // Writing to a non-existent BAR or the ROM does nothing and reads 0.
        w32(&f, 0x14, u32::MAX);
        w32(&f, 0x30, u32::MAX);
        assert_eq!((r32(&f, 0x14), r32(&f, 0x30)), (0, 0));
    }

    #[test]
    fn command_register_filters_io_and_unknown_bits_and_the_rest_passes_through() {
        let (dev, _, f) = setup();
        f.config_write(0x04, &0xffffu16.to_le_bytes());
        let cmd = {
            let c = lock(&dev.config);
            u16::from_le_bytes([c[4], c[5]])
        };
        assert_eq!(cmd, COMMAND_ALLOWED);
        assert_eq!(cmd & regs::CMD_IO, 0);
        assert_eq!(r32(&f, 0) & 0xffff, 0x1234);
        assert_eq!(r32(&f, 0x90), 0xabcd_ef01);
        w32(&f, 0x90, 7);
        assert_eq!(
            u32::from_le_bytes(lock(&dev.config)[0x90..0x94].try_into().unwrap()),
            7
        );
        // Interrupt pin reads 0 (no INTx); the line is scratch.
        f.config_write(0x3c, &[0x0b]);
        assert_eq!(r32(&f, 0x3c) & 0xffff, 0x000b);
        // Vendor/device ID writes reach vfio-pci, which ignores them (not our job).
        assert_eq!(lock(&dev.config)[0x3c], 0, "line not written to the device");
    }

    #[test]
    fn msi_enable_programs_one_route_and_bad_addresses_are_not_routed() {
        let (dev, routes, f) = setup();
        // Multiple Message Capable reads 0: one vector.
        assert_eq!(r32(&f, MSI_CAP) >> 16, 0x80);
        w32(&f, MSI_CAP + 4, 0xfee0_0000);
        w32(&f, MSI_CAP + 8, 0);
        w32(&f, MSI_CAP + 12, 0x41);
        assert!(lock(&routes.0).is_empty());
        // Enable with MME = 5 (32 vectors): MME stays 0.
        f.config_write(MSI_CAP + 2, &[0x51, 0]);
        assert_eq!(r32(&f, MSI_CAP) >> 16, 0x81);
        assert_eq!(lock(&dev.irq_calls).as_slice(), &[("msi", true)]);
        assert_eq!(
            lock(&routes.0).get(&24),
            Some(&MsiMessage {
                addr: 0xfee0_0000,
                data: 0x41
            })
        );
        assert_eq!(f.interrupt_mode(), "msi");
        assert_eq!(r32(&f, MSI_CAP + 4), 0xfee0_0000);
        assert_eq!(r32(&f, MSI_CAP + 12), 0x41);
        // A message that is no interrupt (a forged DMA write) is dropped and counted.
        w32(&f, MSI_CAP + 4, 0x1000);
        assert!(lock(&routes.0).is_empty());
        assert_eq!(f.counters.bad_msi_messages.load(Ordering::Relaxed), 1);
        // None of this reached the device's own capability.
        assert_eq!(lock(&dev.config)[MSI_CAP as usize + 4], 0);
        f.config_write(MSI_CAP + 2, &[0, 0]);
        assert_eq!(lock(&dev.irq_calls).last(), Some(&("msi", false)));
        assert_eq!(f.interrupt_mode(), "none");
    }

    #[test]
    fn msix_table_is_emulated_and_routes_follow_masks() {
        let (dev, routes, f) = setup();
        assert_eq!(r32(&f, MSIX_CAP) >> 16, 3);
        assert_eq!(r32(&f, MSIX_CAP + 4), 0x2002);
        assert_eq!(r32(&f, MSIX_CAP + 8), 0x3002);
        let x = f.msix().unwrap();
        assert_eq!(x.info.trapped_pages(2), vec![(0x2000, 0x2000)]);
        assert!(x.info.trapped_pages(0).is_empty());
        let trap = BarTrap::new(&f, 2, 0x2000);
        // Entry 1: address, data, unmask.
        trap.write(0x10, &0xfee0_1000u32.to_le_bytes());
        trap.write(0x14, &0u32.to_le_bytes());
        trap.write(0x18, &0x42u32.to_le_bytes());
        trap.write(0x1c, &0xffff_fffeu32.to_le_bytes());
        let mut d = [0u8; 4];
        trap.read(0x1c, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0, "only the mask bit is kept");
        assert!(lock(&routes.0).is_empty(), "MSI-X not enabled yet");
        // Enable: VFIO gets every vector; entry 1 is routed, the masked ones are not.
        f.config_write(MSIX_CAP + 3, &[0x80]);
        assert_eq!(lock(&dev.irq_calls).as_slice(), &[("msix", true)]);
        assert_eq!(
            lock(&routes.0).keys().copied().collect::<Vec<_>>(),
            vec![26]
        );
        assert_eq!(f.interrupt_mode(), "msi-x");
        // Function mask removes every route; unmasking restores them.
        f.config_write(MSIX_CAP + 2, &[0, 0xc0]);
        assert!(lock(&routes.0).is_empty());
        f.config_write(MSIX_CAP + 2, &[0, 0x80]);
        assert_eq!(lock(&routes.0).len(), 1);
        // Masking the entry through the table removes its route.
        trap.write(0x1c, &1u32.to_le_bytes());
        assert!(lock(&routes.0).is_empty());
        // 8-byte table access: address of entry 2 in one go.
        trap.write(0x20, &0x0000_0000_fee0_2000u64.to_le_bytes());
        let mut q = [0u8; 8];
        trap.read(0x20, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xfee0_2000);
        // Malformed table accesses are counted, not served.
        trap.write(0x21, &[1, 2]);
        let mut b = [0xffu8; 2];
        trap.read(0x22, &mut b);
        assert_eq!(b, [0xff; 2]);
        assert_eq!(f.counters.bad_table_accesses.load(Ordering::Relaxed), 2);
        // The PBA is emulated (nothing pending) and read-only; bytes past the table and
        // the PBA in the trapped pages pass through.
        trap.read(0x1000, &mut d);
        assert_eq!(d, [0; 4]);
        trap.write(0x1000, &[0; 4]);
        assert_eq!(lock(&dev.bar)[0x3000], 0x5a);
        trap.read(0x1008, &mut d);
        assert_eq!(d, [0x5a; 4]);
        trap.write(0x800, &[1]);
        assert_eq!(lock(&dev.bar)[0x2800], 1);
        // Disable.
        f.config_write(MSIX_CAP + 3, &[0]);
        assert_eq!(lock(&dev.irq_calls).last(), Some(&("msix", false)));
    }

    #[test]
    fn a_masked_msix_vector_holds_its_interrupt_shows_it_pending_and_delivers_at_unmask() {
        let (dev, _routes, f) = setup();
        let trap = BarTrap::new(&f, 2, 0x2000);
        let v1 = Vector::Msix(1);
        program_entry1(&trap);
        assert!(
            lock(&dev.open).is_empty(),
            "nothing delivers before MSI-X is enabled"
        );
        f.config_write(MSIX_CAP + 3, &[0x80]);
        assert_eq!(
            lock(&dev.open).iter().copied().collect::<Vec<_>>(),
            [v1],
            "only the unmasked entry"
        );
        dev.fire(v1);
        assert_eq!(lock(&dev.delivered).len(), 1);
        let pba = |trap: &BarTrap| {
            let mut q = [0u8; 8];
            trap.read(0x1000, &mut q);
            u64::from_le_bytes(q)
        };
        // Masked: held, and the PBA shows it; the unmask delivers it once.
        trap.write(0x1c, &1u32.to_le_bytes());
        assert!(lock(&dev.open).is_empty());
        dev.fire(v1);
        dev.fire(v1);
        assert_eq!(
            lock(&dev.delivered).len(),
            1,
            "nothing reaches a masked vector's guest"
        );
        assert_eq!(pba(&trap), 1 << 1);
        trap.write(0x1c, &0u32.to_le_bytes());
        assert_eq!(lock(&dev.delivered).as_slice(), [v1, v1]);
        assert_eq!(pba(&trap), 0);
        // The function mask does the same for every entry.
        f.config_write(MSIX_CAP + 3, &[0xc0]);
        dev.fire(v1);
        assert_eq!(pba(&trap), 1 << 1);
        f.config_write(MSIX_CAP + 3, &[0x80]);
        assert_eq!(lock(&dev.delivered).len(), 3);
        // Disabled: every gate closed, and the PBA reads 0.
        f.config_write(MSIX_CAP + 3, &[0]);
        assert!(lock(&dev.open).is_empty());
        dev.fire(v1);
        assert_eq!(pba(&trap), 0);
        assert_eq!(f.counters.errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn gates_close_before_routes_go_and_open_after_routes_are_written() {
        let (dev, _routes, f) = setup();
        let trap = BarTrap::new(&f, 2, 0x2000);
        program_entry1(&trap);
        f.config_write(MSIX_CAP + 3, &[0x80]);
        trap.write(0x1c, &1u32.to_le_bytes());
        trap.write(0x1c, &0u32.to_le_bytes());
        f.config_write(MSIX_CAP + 3, &[0xc0]);
        assert_eq!(
            lock(&dev.log).as_slice(),
            [
                "route 26 set",
                "gate Msix(1) open",
                "gate Msix(1) close",
                "route 26 remove",
                "route 26 set",
                "gate Msix(1) open",
                "gate Msix(1) close",
                "route 26 remove",
            ]
        );
    }

    #[test]
    fn a_pba_in_its_own_bar_is_emulated_too() {
        let (dev, _routes, f) = setup();
        // The same function, its PBA moved to BAR0 at 0x800 (a trap of BAR0 only).
        let x = f.msix().unwrap();
        let moved = PassthroughFunction::new(
            "pba-elsewhere".into(),
            dev.clone(),
            Arc::new(FakeRoutes::default()),
            f.bars.clone(),
            None,
            Some(MsixInfo {
                pba_bar: 0,
                pba_offset: 0x800,
                ..x.info
            }),
        );
        let table = BarTrap::new(&moved, 2, 0x2000);
        let pba = BarTrap::new(&moved, 0, 0);
        table.write(0x10, &0xfee0_1000u32.to_le_bytes());
        table.write(0x1c, &1u32.to_le_bytes()); // masked
        moved.config_write(MSIX_CAP + 3, &[0x80]);
        dev.fire(Vector::Msix(1));
        let mut d = [0xffu8; 4];
        pba.read(0x800, &mut d);
        assert_eq!(
            u32::from_le_bytes(d),
            1 << 1,
            "pending bit from the emulated PBA"
        );
        // BAR0's trap serves no table: its offset 0x10 is the device's.
        lock(&dev.bar)[0x10] = 0x77;
        pba.read(0x10, &mut d);
        assert_eq!(d[0], 0x77);
        pba.write(0x800, &[0; 4]);
        assert_eq!(lock(&dev.bar)[0x800], 0x5a, "the PBA is read-only");
    }

    #[test]
    fn msi_delivers_only_while_enabled() {
        let (dev, _routes, f) = setup();
        w32(&f, MSI_CAP + 4, 0xfee0_0000);
        w32(&f, MSI_CAP + 12, 0x41);
        f.config_write(MSI_CAP + 2, &[0x01, 0]);
        assert!(lock(&dev.open).contains(&Vector::Msi));
        dev.fire(Vector::Msi);
        f.config_write(MSI_CAP + 2, &[0, 0]);
        assert!(!lock(&dev.open).contains(&Vector::Msi));
        assert_eq!(lock(&dev.delivered).as_slice(), [Vector::Msi]);
    }

    #[test]
    fn a_masked_msi_vector_holds_its_interrupt_in_the_pending_bits() {
        let (dev, routes, f) = setup_with(true);
        w32(&f, MSI_CAP + 4, 0xfee0_0000);
        w32(&f, MSI_CAP + 12, 0x41);
        w32(&f, MSI_CAP + 16, 1); // masked
        f.config_write(MSI_CAP + 2, &[0x01, 0x01]);
        assert!(
            lock(&dev.open).is_empty() && lock(&routes.0).is_empty(),
            "masked: no gate, no route"
        );
        dev.fire(Vector::Msi);
        assert_eq!(r32(&f, MSI_CAP + 20), 1, "pending");
        w32(&f, MSI_CAP + 16, 0);
        assert_eq!(
            lock(&dev.delivered).as_slice(),
            [Vector::Msi],
            "delivered at the unmask"
        );
        assert!(lock(&routes.0).contains_key(&24));
        assert_eq!(r32(&f, MSI_CAP + 20), 0);
    }

    #[test]
    fn device_reset_turns_interrupts_off_masks_the_table_and_resets_the_device() {
        let (dev, routes, f) = setup();
        let trap = BarTrap::new(&f, 2, 0x2000);
        program_entry1(&trap);
        f.config_write(MSIX_CAP + 3, &[0x80]);
        assert_eq!(lock(&routes.0).len(), 1);
        w32(&f, 0x10, u32::MAX); // BAR sizing in progress
        f.device_reset();
        assert!(lock(&routes.0).is_empty(), "no route survives the reset");
        assert_eq!(
            lock(&dev.irq_calls).as_slice(),
            &[("msix", true), ("msix", false), ("reset", true)]
        );
        assert_eq!(f.interrupt_mode(), "none");
        assert_eq!(r32(&f, MSIX_CAP) >> 16, 3, "enable and function mask clear");
        let mut d = [0u8; 4];
        trap.read(0x1c, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1, "vectors masked again");
        trap.read(0x10, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0, "address cleared");
        assert_eq!(
            r32(&f, 0x10),
            0xc000_0000,
            "sizing ended: the BAR reads its address"
        );
        assert_eq!(f.counters.errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn intx_pin_and_line() {
        let (dev, routes, _) = setup();
        let f = PassthroughFunction::with_intx(
            "intx".into(),
            dev,
            routes,
            Vec::new(),
            None,
            None,
            Some((1, 17)),
        );
        assert_eq!(r32(&f, 0x3c) & 0xffff, 0x0111, "pin INTA, line = GSI 17");
        f.config_write(0x3d, &[4]);
        assert_eq!(r32(&f, 0x3c) & 0xffff, 0x0111, "pin is read-only");
        assert_eq!(f.interrupt_mode(), "intx");
    }

    #[test]
    fn msi_x_pages_are_merged_and_page_aligned() {
        let info = MsixInfo {
            cap: 0x70,
            table_size: 300,
            table_bar: 0,
            table_offset: 0x1800,
            pba_bar: 0,
            pba_offset: 0x3010,
            first_gsi: 24,
        };
        // Table 0x1800..0x2ac0 → pages 0x1000..0x3000; PBA 0x3010..0x3038 → 0x3000..0x4000.
        assert_eq!(info.trapped_pages(0), vec![(0x1000, 0x3000)]);
        let other = MsixInfo { pba_bar: 4, ..info };
        assert_eq!(other.trapped_pages(0), vec![(0x1000, 0x2000)]);
        assert_eq!(other.trapped_pages(4), vec![(0x3000, 0x1000)]);
    }
}
