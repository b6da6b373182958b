//! The virtio-pci transport, modern only (virtio 1.2 section 4.1, no legacy
//! interface), with MSI-X.
//!
//! [`PciTransport`] is one PCI function: its type-0 configuration space and its one
//! memory BAR (BAR0, 32-bit, [`BAR_SIZE`] bytes, at an address the VMM chooses and
//! the guest may size but never move). The VMM forwards configuration accesses to
//! [`PciTransport::config_read`] / [`PciTransport::config_write`] and MMIO exits in
//! the BAR to [`PciTransport::bar_read`] / [`PciTransport::bar_write`]; all four
//! take any offset, width and bytes from the guest and never panic.
//!
//! Identity: vendor 0x1af4, device 0x1040 + the virtio device ID, revision 1,
//! subsystem vendor 0x1af4 and subsystem ID = the virtio device ID (informational),
//! a class code per device kind, interrupt pin 0.
//!
//! Capabilities (config space from 0x40): MSI-X (table at BAR0 + [`MSIX_TABLE_OFFSET`],
//! PBA at [`MSIX_PBA_OFFSET`], one vector per queue plus one for configuration
//! changes), then the virtio vendor capabilities (ID 0x09): common configuration at
//! [`COMMON_OFFSET`], notifications at [`NOTIFY_OFFSET`] with
//! `notify_off_multiplier` [`NOTIFY_MULTIPLIER`] and `queue_notify_off` = the queue
//! index (so queue *n*'s doorbell is its own address, one KVM ioeventfd each), ISR
//! at [`ISR_OFFSET`], device configuration at [`DEVICE_CFG_OFFSET`] (when the device
//! has any), and the PCI configuration access capability (a window onto the BAR
//! through config space, which the specification requires).
//!
//! Register rules on top of the shared [`Core`] (status machine, features, queues):
//! every common-configuration field takes only its natural width (64-bit addresses
//! also as two aligned 32-bit halves); `queue_enable` takes only 1; the ISR reads
//! (and clears) as one byte; device configuration takes naturally aligned 1/2/4/8
//! byte accesses inside its length; a notification is a 2- or 4-byte write at a
//! queue's address; anything else, and anything outside the regions, is refused
//! (reads 0), counted and logged (rate-limited).
//!
//! Interrupts: MSI-X only. `config_msix_vector` and `queue_msix_vector` name a table
//! entry or [`NO_VECTOR`]; a vector outside the table reads back as `NO_VECTOR`
//! (the specification's way of telling the driver the mapping failed). An event
//! whose vector is deliverable (MSI-X enabled, function and entry unmasked)
//! triggers that vector's [`IrqLine`] (a KVM irqfd); a masked one sets its pending
//! bit in the PBA and is sent when it becomes deliverable. The route of each vector
//! (its message while deliverable) goes to the VMM's [`MsixRoutes`] whenever it
//! changes. There is no INTx (interrupt pin 0): with MSI-X disabled, or a vector
//! of `NO_VECTOR`, an event only sets the ISR bit (counted as undelivered).

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vmm_sys_util::eventfd::EventFd;

use crate::counters::guest_warn;
use crate::device::{lock_device, DeviceType, SharedDevice};
use crate::msix::{MsixMessage, MsixTable, CTRL_ENABLE, CTRL_FUNCTION_MASK};
use crate::transport::{status, Cause, Core, InitialQueueSize, InterruptSink, IrqLine, QueueField};
use crate::GuestMemory;

pub use crate::msix::NO_VECTOR;

/// Size of BAR0 (a power of two; every region below sits in it).
pub const BAR_SIZE: u64 = 0x8000;
/// Common configuration structure in BAR0.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Bytes of the common configuration structure (virtio 1.2 without the
/// `queue_notify_data`/`queue_reset` fields, whose features are not offered).
pub const COMMON_LEN: u64 = 0x38;
/// ISR status byte in BAR0.
pub const ISR_OFFSET: u64 = 0x1000;
/// Device-specific configuration in BAR0.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Queue notification addresses in BAR0: queue `n` at `NOTIFY_OFFSET + n * NOTIFY_MULTIPLIER`.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// `notify_off_multiplier`.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// MSI-X table in BAR0.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// MSI-X pending bit array in BAR0.
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Red Hat's virtio vendor ID.
pub const VENDOR_ID: u16 = 0x1af4;
/// Modern virtio-pci device IDs are this plus the virtio device ID.
pub const DEVICE_ID_BASE: u16 = 0x1040;

/// Capability offsets in config space.
const CAP_MSIX: usize = 0x40;
const CAP_COMMON: usize = 0x4c;
const CAP_NOTIFY: usize = 0x5c;
const CAP_ISR: usize = 0x70;
const CAP_DEVICE: usize = 0x80;
const CAP_PCI_CFG: usize = 0x90;
/// `pci_cfg_data` of the PCI configuration access capability.
const PCI_CFG_DATA: usize = CAP_PCI_CFG + 16;
/// Bytes of emulated config space (the rest of the 4 KiB reads 0).
const CONFIG_SPACE: usize = 0x100;

/// Command register bits the guest may set: memory decode, bus master, parity
/// and SERR response, INTx disable (I/O decode stays clear: there are no I/O BARs).
const COMMAND_WRITABLE: u16 = 1 << 1 | 1 << 2 | 1 << 6 | 1 << 8 | 1 << 10;
/// Status: capability list.
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Status: interrupt status (an ISR bit is set while MSI-X is off).
const STATUS_INTERRUPT: u16 = 1 << 3;

/// virtio vendor capability types (`cfg_type`).
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;

/// The class code (base, sub, programming interface) of each device kind:
/// mass storage (SCSI, as QEMU reports virtio-blk), other communication
/// controller (vsock), unclassified (rng).
pub fn class_code(kind: DeviceType) -> [u8; 3] {
    match kind {
        DeviceType::Block => [0x01, 0x00, 0x00],
        DeviceType::Vsock => [0x07, 0x80, 0x00],
        DeviceType::Rng => [0xff, 0x00, 0x00],
    }
}

/// Where the VMM programs the route of each MSI-X vector (a KVM GSI with an MSI
/// route, in bulwark-vmm). `Some` while the vector is deliverable, `None` when it
/// must not fire. Called on the vCPU thread.
pub trait MsixRoutes: Send + Sync + fmt::Debug {
    /// Applies changed routes `(vector, route)`; false when they could not be applied
    /// (the transport then offers them again with the next change).
    fn update(&self, updates: &[(u16, Option<MsixMessage>)]) -> bool;
}

/// MSI-X as `GET /vm` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixReport {
    /// MSI-X enable bit.
    pub enabled: bool,
    /// Function mask bit.
    pub function_masked: bool,
    /// Vector of configuration changes ([`NO_VECTOR`]: none).
    pub config_vector: u16,
    /// Vector of each queue.
    pub queue_vectors: Vec<u16>,
    /// Per table entry: masked, pending.
    pub vectors: Vec<(bool, bool)>,
    /// Messages sent (irqfd triggered).
    pub sent: u64,
    /// Events held because their vector was masked (sent later on unmask).
    pub pended: u64,
    /// Events with MSI-X disabled or no vector (only the ISR bit was set).
    pub undelivered: u64,
}

#[derive(Debug)]
struct VectorState {
    table: MsixTable,
    config_vector: u16,
    queue_vectors: Vec<u16>,
}

/// MSI-X state, shared by the transport (vCPU thread) and the interrupts the
/// running device raises (its I/O worker).
struct Vectors {
    state: Mutex<VectorState>,
    lines: Vec<Arc<dyn IrqLine>>,
    routes: Arc<dyn MsixRoutes>,
    sent: AtomicU64,
    pended: AtomicU64,
    undelivered: AtomicU64,
}

impl fmt::Debug for Vectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vectors")
            .field("lines", &self.lines.len())
            .finish_non_exhaustive()
    }
}

impl Vectors {
    fn lock(&self) -> MutexGuard<'_, VectorState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fire(&self, v: u16) {
        if let Some(line) = self.lines.get(usize::from(v)) {
            if let Err(e) = line.trigger() {
                tracing::error!(error = %e, vector = v, "virtio-pci: cannot send MSI-X message");
            }
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn deliver(&self, st: &mut VectorState, v: u16) {
        if v == NO_VECTOR || v >= st.table.size() || !st.table.enabled() {
            self.undelivered.fetch_add(1, Ordering::Relaxed);
        } else if st.table.deliverable(v) {
            self.fire(v);
        } else {
            st.table.set_pending(v);
            self.pended.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// After a change of the table or control bits: new routes first, then the
    /// pending vectors that became deliverable.
    fn sync(&self, st: &mut VectorState) {
        let changes = st.table.route_changes();
        if !changes.is_empty() && !self.routes.update(&changes) {
            st.table.forget_routes(&changes);
        }
        for v in st.table.take_deliverable_pending() {
            self.fire(v);
        }
    }
}

impl InterruptSink for Vectors {
    fn signal(&self, cause: Cause) {
        let mut st = self.lock();
        let v = match cause {
            Cause::Queue(q) => st.queue_vectors.get(q).copied().unwrap_or(NO_VECTOR),
            Cause::Config => st.config_vector,
        };
        self.deliver(&mut st, v);
    }
}

/// The sink the core gets: the shared [`Vectors`].
#[derive(Debug)]
struct VectorSink(Arc<Vectors>);

impl InterruptSink for VectorSink {
    fn signal(&self, cause: Cause) {
        self.0.signal(cause);
    }
}

/// The PCI configuration access capability's window.
#[derive(Debug, Default, Clone, Copy)]
struct CfgWindow {
    bar: u8,
    offset: u32,
    length: u32,
    data: [u8; 4],
}

/// A common-configuration field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Common {
    DeviceFeatureSelect,
    DeviceFeature,
    DriverFeatureSelect,
    DriverFeature,
    ConfigMsixVector,
    NumQueues,
    DeviceStatus,
    ConfigGeneration,
    QueueSelect,
    QueueSize,
    QueueMsixVector,
    QueueEnable,
    QueueNotifyOff,
    QueueDesc,
    QueueDriver,
    QueueDevice,
}

/// `(offset, width, field)` of the common configuration structure.
const COMMON_FIELDS: [(u64, usize, Common); 16] = [
    (0x00, 4, Common::DeviceFeatureSelect),
    (0x04, 4, Common::DeviceFeature),
    (0x08, 4, Common::DriverFeatureSelect),
    (0x0c, 4, Common::DriverFeature),
    (0x10, 2, Common::ConfigMsixVector),
    (0x12, 2, Common::NumQueues),
    (0x14, 1, Common::DeviceStatus),
    (0x15, 1, Common::ConfigGeneration),
    (0x16, 2, Common::QueueSelect),
    (0x18, 2, Common::QueueSize),
    (0x1a, 2, Common::QueueMsixVector),
    (0x1c, 2, Common::QueueEnable),
    (0x1e, 2, Common::QueueNotifyOff),
    (0x20, 8, Common::QueueDesc),
    (0x28, 8, Common::QueueDriver),
    (0x30, 8, Common::QueueDevice),
];

/// The field a common-configuration access of `len` bytes at `offset` hits, and
/// the bit shift of the accessed part (32 for the upper half of an address).
fn common_field(offset: u64, len: usize) -> Option<(Common, u32)> {
    COMMON_FIELDS
        .iter()
        .find_map(|&(at, width, field)| match (width, len) {
            _ if offset == at && len == width => Some((field, 0)),
            (8, 4) if offset == at => Some((field, 0)),
            (8, 4) if offset == at + 4 => Some((field, 32)),
            _ => None,
        })
}

/// One virtio-pci function.
pub struct PciTransport {
    core: Core,
    vectors: Arc<Vectors>,
    kind: DeviceType,
    bar: u32,
    sizing: bool,
    command: u16,
    interrupt_line: u8,
    window: CfgWindow,
    bar_moves_refused: u64,
}

impl fmt::Debug for PciTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciTransport")
            .field("kind", &self.kind)
            .field("bar", &format_args!("{:#x}", self.bar))
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// The guest address of queue `queue`'s doorbell for a function whose BAR0 is at
/// `bar` (where the VMM registers that queue's ioeventfd).
pub fn notify_address(bar: u64, queue: usize) -> u64 {
    bar + NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_MULTIPLIER)
}

/// Number of MSI-X vectors a function for `device` has (one per queue, one for
/// configuration changes): the `IrqLine`s [`PciTransport::new`] wants.
pub fn vectors_needed(device: &SharedDevice) -> usize {
    lock_device(device).queue_max_sizes().len() + 1
}

fn le16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn le32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

impl PciTransport {
    /// Wraps `device` as a function whose BAR0 sits at `bar` (a multiple of
    /// [`BAR_SIZE`] below 4 GiB); `vectors[i]` is MSI-X vector `i`'s line (there must
    /// be [`vectors_needed`] of them); routes go to `routes`. Creates one
    /// notification `EventFd` per queue.
    pub fn new(
        device: SharedDevice,
        mem: Arc<GuestMemory>,
        bar: u64,
        vectors: Vec<Arc<dyn IrqLine>>,
        routes: Arc<dyn MsixRoutes>,
    ) -> io::Result<Self> {
        let bar = u32::try_from(bar)
            .ok()
            .filter(|b| u64::from(*b).is_multiple_of(BAR_SIZE) && *b != 0)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "virtio-pci BAR0 at {bar:#x} is not a {BAR_SIZE:#x}-aligned 32-bit address"
                    ),
                )
            })?;
        let (nq, kind) = {
            let d = lock_device(&device);
            (d.queue_max_sizes().len(), d.device_type())
        };
        if vectors.len() != nq + 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "virtio-pci: {} MSI-X lines for {nq} queues (one per queue and one for configuration changes needed)",
                    vectors.len()
                ),
            ));
        }
        let vectors = Arc::new(Vectors {
            state: Mutex::new(VectorState {
                table: MsixTable::new((nq + 1) as u16),
                config_vector: NO_VECTOR,
                queue_vectors: vec![NO_VECTOR; nq],
            }),
            lines: vectors,
            routes,
            sent: AtomicU64::new(0),
            pended: AtomicU64::new(0),
            undelivered: AtomicU64::new(0),
        });
        let core = Core::new(
            device,
            mem,
            Arc::new(VectorSink(vectors.clone())),
            "virtio-pci",
            InitialQueueSize::Max,
        )?;
        Ok(Self {
            core,
            vectors,
            kind,
            bar,
            sizing: false,
            command: 0,
            interrupt_line: 0xff,
            window: CfgWindow::default(),
            bar_moves_refused: 0,
        })
    }

    /// The per-queue notification events, in queue order: give clones to the I/O
    /// worker; register each as a KVM ioeventfd at [`notify_address`].
    pub fn queue_events(&self) -> &[EventFd] {
        self.core.queue_events()
    }

    /// The device.
    pub fn device(&self) -> &SharedDevice {
        self.core.device()
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u32 {
        self.core.status()
    }

    /// The PCI device ID.
    pub fn pci_device_id(&self) -> u16 {
        DEVICE_ID_BASE + self.core.device_id() as u16
    }

    /// Guest address of BAR0.
    pub fn bar(&self) -> u64 {
        u64::from(self.bar)
    }

    /// BAR writes that would have moved the BAR (refused).
    pub fn bar_moves_refused(&self) -> u64 {
        self.bar_moves_refused
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.command
    }

    /// MSI-X state and counters.
    pub fn msix(&self) -> MsixReport {
        let st = self.vectors.lock();
        MsixReport {
            enabled: st.table.enabled(),
            function_masked: st.table.function_masked(),
            config_vector: st.config_vector,
            queue_vectors: st.queue_vectors.clone(),
            vectors: (0..st.table.size())
                .map(|v| (st.table.entry_masked(v), st.table.pending(v)))
                .collect(),
            sent: self.vectors.sent.load(Ordering::Relaxed),
            pended: self.vectors.pended.load(Ordering::Relaxed),
            undelivered: self.vectors.undelivered.load(Ordering::Relaxed),
        }
    }

    fn warn(&self, what: &'static str, offset: u64, len: usize) {
        self.core.refuse(what, offset, len);
    }

    // ---- configuration space ----

    /// The configuration space image (256 bytes), without side effects.
    fn config_image(&self) -> [u8; CONFIG_SPACE] {
        let mut c = [0u8; CONFIG_SPACE];
        le16(&mut c, 0x00, VENDOR_ID);
        le16(&mut c, 0x02, self.pci_device_id());
        le16(&mut c, 0x04, self.command);
        let (msix_ctrl, msix_on) = {
            let st = self.vectors.lock();
            (st.table.control(), st.table.enabled())
        };
        let intr = if !msix_on && self.core.isr() != 0 {
            STATUS_INTERRUPT
        } else {
            0
        };
        le16(&mut c, 0x06, STATUS_CAP_LIST | intr);
        c[0x08] = 1; // revision
        let [base, sub, prog] = class_code(self.kind);
        c[0x09] = prog;
        c[0x0a] = sub;
        c[0x0b] = base;
        // BAR0: 32-bit memory, not prefetchable (type bits 0).
        let bar = if self.sizing {
            !(BAR_SIZE as u32 - 1)
        } else {
            self.bar
        };
        le32(&mut c, 0x10, bar);
        le16(&mut c, 0x2c, VENDOR_ID);
        le16(&mut c, 0x2e, self.core.device_id() as u16);
        c[0x34] = CAP_MSIX as u8;
        c[0x3c] = self.interrupt_line;
        // MSI-X.
        c[CAP_MSIX] = 0x11;
        c[CAP_MSIX + 1] = CAP_COMMON as u8;
        le16(&mut c, CAP_MSIX + 2, msix_ctrl);
        le32(&mut c, CAP_MSIX + 4, MSIX_TABLE_OFFSET as u32); // BIR 0
        le32(&mut c, CAP_MSIX + 8, MSIX_PBA_OFFSET as u32);
        let has_device_cfg = self.core.config_len() > 0;
        let after_isr = if has_device_cfg {
            CAP_DEVICE
        } else {
            CAP_PCI_CFG
        };
        let vendor =
            |c: &mut [u8], at: usize, next: usize, len: u8, ty: u8, off: u64, size: u64| {
                c[at] = 0x09;
                c[at + 1] = next as u8;
                c[at + 2] = len;
                c[at + 3] = ty;
                c[at + 4] = 0; // BAR0
                le32(c, at + 8, off as u32);
                le32(c, at + 12, size as u32);
            };
        vendor(
            &mut c,
            CAP_COMMON,
            CAP_NOTIFY,
            16,
            CFG_COMMON,
            COMMON_OFFSET,
            COMMON_LEN,
        );
        let notify_len = self.core.num_queues() as u64 * u64::from(NOTIFY_MULTIPLIER);
        vendor(
            &mut c,
            CAP_NOTIFY,
            CAP_ISR,
            20,
            CFG_NOTIFY,
            NOTIFY_OFFSET,
            notify_len,
        );
        le32(&mut c, CAP_NOTIFY + 16, NOTIFY_MULTIPLIER);
        vendor(&mut c, CAP_ISR, after_isr, 16, CFG_ISR, ISR_OFFSET, 1);
        if has_device_cfg {
            let len = self.core.config_len() as u64;
            vendor(
                &mut c,
                CAP_DEVICE,
                CAP_PCI_CFG,
                16,
                CFG_DEVICE,
                DEVICE_CFG_OFFSET,
                len,
            );
        }
        // PCI configuration access: the window's BAR, offset and length as written.
        c[CAP_PCI_CFG] = 0x09;
        c[CAP_PCI_CFG + 2] = 20;
        c[CAP_PCI_CFG + 3] = CFG_PCI;
        c[CAP_PCI_CFG + 4] = self.window.bar;
        le32(&mut c, CAP_PCI_CFG + 8, self.window.offset);
        le32(&mut c, CAP_PCI_CFG + 12, self.window.length);
        c[PCI_CFG_DATA..PCI_CFG_DATA + 4].copy_from_slice(&self.window.data);
        c
    }

    /// A configuration read of `data.len()` bytes at `offset` (any shape; bytes
    /// beyond the emulated 256 read 0). Reading `pci_cfg_data` performs the
    /// window's BAR read.
    pub fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        let end = offset.saturating_add(data.len() as u64);
        if offset < (PCI_CFG_DATA + 4) as u64 && end > PCI_CFG_DATA as u64 {
            self.window_access(false);
        }
        let image = self.config_image();
        for (k, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(k as u64)
                .and_then(|p| usize::try_from(p).ok())
                .and_then(|p| image.get(p))
                .copied()
                .unwrap_or(0);
        }
    }

    /// A configuration write (any shape; writes to read-only registers are
    /// ignored, as on hardware).
    pub fn config_write(&mut self, offset: u64, data: &[u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        // Dword by dword: the merged value and which bytes were written.
        let mut k = 0;
        while k < data.len() {
            let Some(pos) = start.checked_add(k) else {
                return;
            };
            if pos >= CONFIG_SPACE {
                return;
            }
            let dword = pos & !3;
            let mut mask = 0u32;
            let mut value = 0u32;
            while k < data.len() && (start + k) & !3 == dword {
                let byte = (start + k) & 3;
                mask |= 0xff << (8 * byte);
                value |= u32::from(data[k]) << (8 * byte);
                k += 1;
            }
            self.config_write_dword(dword, value, mask);
        }
    }

    fn config_write_dword(&mut self, dword: usize, value: u32, mask: u32) {
        let image = self.config_image();
        let cur = u32::from_le_bytes([
            image[dword],
            image[dword + 1],
            image[dword + 2],
            image[dword + 3],
        ]);
        let merged = (cur & !mask) | (value & mask);
        match dword {
            0x04 if mask & 0xffff != 0 => {
                self.command = merged as u16 & COMMAND_WRITABLE;
            }
            0x10 => self.bar_write_reg(merged),
            0x3c if mask & 0xff != 0 => self.interrupt_line = merged as u8,
            CAP_MSIX if mask & 0xff00_0000 != 0 => {
                let ctrl = (merged >> 16) as u16;
                let mut st = self.vectors.lock();
                st.table
                    .set_control(ctrl & CTRL_ENABLE != 0, ctrl & CTRL_FUNCTION_MASK != 0);
                self.vectors.sync(&mut st);
            }
            d if d == CAP_PCI_CFG + 4 && mask & 0xff != 0 => self.window.bar = merged as u8,
            d if d == CAP_PCI_CFG + 8 => self.window.offset = merged,
            d if d == CAP_PCI_CFG + 12 => self.window.length = merged,
            PCI_CFG_DATA => {
                self.window.data = merged.to_le_bytes();
                self.window_access(true);
            }
            _ => {}
        }
    }

    fn bar_write_reg(&mut self, value: u32) {
        if value == u32::MAX {
            self.sizing = true;
            return;
        }
        self.sizing = false;
        let mask = !(BAR_SIZE as u32 - 1);
        if value & mask != self.bar & mask {
            self.bar_moves_refused += 1;
            let n = self.bar_moves_refused;
            guest_warn!(
                self.core.counters(),
                bar = format_args!("{:#x}", self.bar),
                value = format_args!("{value:#x}"),
                refused = n,
                "virtio-pci: refused to move BAR0; it stays where the VMM put it"
            );
        }
    }

    /// Performs the configuration access capability's window access: `length`
    /// (1, 2 or 4) bytes at `offset` of BAR `bar` (only BAR0 exists), through the
    /// same checks as a direct BAR access.
    fn window_access(&mut self, write: bool) {
        let w = self.window;
        let len = w.length as usize;
        let ok = w.bar == 0
            && matches!(len, 1 | 2 | 4)
            && w.offset.is_multiple_of(w.length)
            && u64::from(w.offset) + w.length as u64 <= BAR_SIZE;
        if !ok {
            self.warn(
                "PCI configuration window access with a bad BAR, length or offset",
                u64::from(w.offset),
                len,
            );
            return;
        }
        let mut buf = w.data;
        if write {
            self.bar_write(u64::from(w.offset), &buf[..len]);
        } else {
            self.bar_read(u64::from(w.offset), &mut buf[..len]);
            self.window.data = buf;
        }
    }

    // ---- BAR0 ----

    /// A guest read of `data.len()` bytes at `offset` in BAR0.
    pub fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len();
        let in_range = |start: u64, size: u64| offset >= start && offset - start < size;
        if in_range(COMMON_OFFSET, COMMON_LEN) {
            self.common_read(offset - COMMON_OFFSET, data);
        } else if in_range(ISR_OFFSET, 1) {
            if len == 1 {
                data[0] = self.core.take_isr() as u8;
            } else {
                self.warn("ISR read wider than one byte", offset, len);
            }
        } else if in_range(DEVICE_CFG_OFFSET, self.core.config_len() as u64) {
            let rel = offset - DEVICE_CFG_OFFSET;
            if self.device_cfg_ok(rel, len) {
                self.core.read_config(rel, data);
            } else {
                self.warn("misaligned or oversized device config read", offset, len);
            }
        } else if in_range(MSIX_TABLE_OFFSET, 0x1000) || in_range(MSIX_PBA_OFFSET, 0x1000) {
            let st = self.vectors.lock();
            let ok = if offset >= MSIX_PBA_OFFSET {
                st.table.read_pba(offset - MSIX_PBA_OFFSET, data)
            } else {
                st.table.read_table(offset - MSIX_TABLE_OFFSET, data)
            };
            drop(st);
            if !ok {
                self.warn("malformed MSI-X table or PBA read", offset, len);
            }
        } else {
            self.warn("BAR0 read outside the readable regions", offset, len);
        }
    }

    /// A guest write of `data` at `offset` in BAR0.
    pub fn bar_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len();
        let in_range = |start: u64, size: u64| offset >= start && offset - start < size;
        let notify_len = self.core.num_queues() as u64 * u64::from(NOTIFY_MULTIPLIER);
        if in_range(COMMON_OFFSET, COMMON_LEN) {
            self.common_write(offset - COMMON_OFFSET, data);
        } else if in_range(NOTIFY_OFFSET, notify_len) {
            let rel = offset - NOTIFY_OFFSET;
            if matches!(len, 2 | 4) && rel.is_multiple_of(u64::from(NOTIFY_MULTIPLIER)) {
                // The address selects the queue (as the ioeventfd on it does); the
                // value, the queue index by the specification, is not needed.
                self.core
                    .notify((rel / u64::from(NOTIFY_MULTIPLIER)) as u32);
            } else {
                self.warn("malformed queue notification", offset, len);
            }
        } else if in_range(DEVICE_CFG_OFFSET, self.core.config_len() as u64) {
            let rel = offset - DEVICE_CFG_OFFSET;
            if self.device_cfg_ok(rel, len) {
                self.core.write_config(rel, data);
            } else {
                self.warn("misaligned or oversized device config write", offset, len);
            }
        } else if in_range(MSIX_TABLE_OFFSET, 0x1000) {
            let mut st = self.vectors.lock();
            let ok = st.table.write_table(offset - MSIX_TABLE_OFFSET, data);
            if ok {
                self.vectors.sync(&mut st);
            }
            drop(st);
            if !ok {
                self.warn("malformed MSI-X table write", offset, len);
            }
        } else {
            self.warn(
                "BAR0 write outside the writable regions (ISR, PBA, gaps)",
                offset,
                len,
            );
        }
    }

    fn device_cfg_ok(&self, rel: u64, len: usize) -> bool {
        matches!(len, 1 | 2 | 4 | 8)
            && rel.is_multiple_of(len as u64)
            && rel + len as u64 <= self.core.config_len() as u64
    }

    fn common_read(&self, rel: u64, data: &mut [u8]) {
        let Some((field, shift)) = common_field(rel, data.len()) else {
            self.warn(
                "common configuration read of the wrong width or offset",
                rel,
                data.len(),
            );
            return;
        };
        let c = &self.core;
        let st = self.vectors.lock();
        let value: u64 = match field {
            Common::DeviceFeatureSelect => u64::from(c.device_features_sel()),
            Common::DeviceFeature => u64::from(c.device_features_word()),
            Common::DriverFeatureSelect => u64::from(c.driver_features_sel()),
            Common::DriverFeature => u64::from(c.driver_features_word()),
            Common::ConfigMsixVector => u64::from(st.config_vector),
            Common::NumQueues => c.num_queues() as u64,
            Common::DeviceStatus => u64::from(c.status() as u8),
            Common::ConfigGeneration => u64::from(c.config_generation() as u8),
            Common::QueueSelect => u64::from(c.queue_sel() as u16),
            Common::QueueSize => u64::from(c.queue_size()),
            Common::QueueMsixVector => u64::from(
                c.selected_queue()
                    .and_then(|q| st.queue_vectors.get(q).copied())
                    .unwrap_or(NO_VECTOR),
            ),
            Common::QueueEnable => u64::from(c.queue_ready()),
            Common::QueueNotifyOff => c.selected_queue().map_or(0, |q| q as u64),
            Common::QueueDesc => c.queue_addr(QueueField::Desc),
            Common::QueueDriver => c.queue_addr(QueueField::Avail),
            Common::QueueDevice => c.queue_addr(QueueField::Used),
        };
        let bytes = (value >> shift).to_le_bytes();
        let n = data.len();
        data.copy_from_slice(&bytes[..n]);
    }

    /// The vector the driver asked for, or [`NO_VECTOR`] when the table has no
    /// such entry (which the driver reads back as the failure).
    fn checked_vector(&self, v: u16, what: &'static str) -> u16 {
        let size = self.vectors.lock().table.size();
        if v == NO_VECTOR || v < size {
            v
        } else {
            self.warn(what, u64::from(v), 2);
            NO_VECTOR
        }
    }

    fn common_write(&mut self, rel: u64, data: &[u8]) {
        let Some((field, shift)) = common_field(rel, data.len()) else {
            self.warn(
                "common configuration write of the wrong width or offset",
                rel,
                data.len(),
            );
            return;
        };
        let mut raw = [0u8; 8];
        raw[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(raw);
        let word = value as u32;
        let (v, mask) = if data.len() == 8 {
            (value, u64::MAX)
        } else {
            (value << shift, 0xffff_ffffu64 << shift)
        };
        match field {
            Common::DeviceFeatureSelect => self.core.set_device_features_sel(word),
            Common::DriverFeatureSelect => self.core.set_driver_features_sel(word),
            Common::DriverFeature => self.core.write_driver_features(word),
            Common::ConfigMsixVector => {
                let vector = self.checked_vector(
                    word as u16,
                    "config_msix_vector outside the MSI-X table (reads back NO_VECTOR)",
                );
                self.vectors.lock().config_vector = vector;
            }
            Common::DeviceStatus => {
                if self.core.write_status(u32::from(word as u8)) {
                    let mut st = self.vectors.lock();
                    st.config_vector = NO_VECTOR;
                    st.queue_vectors.fill(NO_VECTOR);
                    // Nothing held for the previous driver reaches the next one.
                    st.table.clear_pending();
                }
            }
            Common::QueueSelect => self.core.select_queue(u32::from(word as u16)),
            Common::QueueSize => {
                self.core
                    .write_queue(QueueField::Size, u64::from(word as u16), u64::MAX)
            }
            Common::QueueMsixVector => {
                if let Some(q) = self.core.check_queue_write("queue_msix_vector", true) {
                    let vector = self.checked_vector(
                        word as u16,
                        "queue_msix_vector outside the MSI-X table (reads back NO_VECTOR)",
                    );
                    self.vectors.lock().queue_vectors[q] = vector;
                }
            }
            Common::QueueEnable => {
                if word as u16 == 1 || self.core.status() & status::DRIVER_OK != 0 {
                    // After DRIVER_OK the core refuses it (needs reset).
                    self.core
                        .write_queue(QueueField::Ready, u64::from(word as u16), u64::MAX);
                } else {
                    self.warn("queue_enable written with a value other than 1", rel, 2);
                }
            }
            Common::QueueDesc => self.core.write_queue(QueueField::Desc, v, mask),
            Common::QueueDriver => self.core.write_queue(QueueField::Avail, v, mask),
            Common::QueueDevice => self.core.write_queue(QueueField::Used, v, mask),
            Common::DeviceFeature
            | Common::NumQueues
            | Common::ConfigGeneration
            | Common::QueueNotifyOff => self.warn(
                "write to a read-only common configuration field",
                rel,
                data.len(),
            ),
        }
    }
}
