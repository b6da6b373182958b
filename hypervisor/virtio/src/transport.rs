//! What every virtio transport shares, independent of its register layout: the
//! device status state machine and its refusals, feature negotiation, queue
//! selection and configuration, validation and activation at DRIVER_OK, the
//! `DEVICE_NEEDS_RESET` rule for queue registers written after DRIVER_OK, reset,
//! the interrupt status (ISR) bits and the config generation.
//!
//! [`crate::mmio`] (virtio-mmio v2) and [`crate::pci`] (virtio-pci, modern) are
//! register layouts over one [`Core`] each; they decode the guest's access
//! (offset, width) and call the core, which applies the same rules for both:
//!
//! - Status only gains bits, in order ACKNOWLEDGE → DRIVER → FEATURES_OK →
//!   DRIVER_OK; FAILED at any time; 0 resets. Writes that clear bits, skip a step,
//!   or set unknown bits or `DEVICE_NEEDS_RESET` are refused and logged.
//! - Driver features are writable only between DRIVER and FEATURES_OK;
//!   FEATURES_OK stays clear unless the driver acked `VIRTIO_F_VERSION_1` (no
//!   legacy drivers) and nothing outside the offer.
//! - Queue registers are writable only between FEATURES_OK and DRIVER_OK. At
//!   DRIVER_OK every ready queue is validated against guest memory and the device
//!   is activated; any failure sets `DEVICE_NEEDS_RESET` (with a config interrupt).
//! - A queue register written after DRIVER_OK is refused, counted as an error and
//!   sets `DEVICE_NEEDS_RESET`; the device keeps the rings it was activated with.
//!
//! How an interrupt reaches the guest is the transport's business: the core calls
//! its [`InterruptSink`] with the cause (a queue, or the configuration).

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::counters::{guest_warn, DeviceCounters};
use crate::device::{
    lock_device, ActivateContext, Interrupt, InterruptKind, SharedDevice, VIRTIO_F_VERSION_1,
};
use crate::GuestMemory;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status bit: a used buffer (virtio-mmio InterruptStatus, virtio-pci
/// ISR bit 0).
pub const INT_USED_BUFFER: u32 = 1;
/// Interrupt status bit: a configuration change.
pub const INT_CONFIG: u32 = 2;

/// An edge-triggered interrupt line or message (an irqfd `EventFd` implements it).
pub trait IrqLine: Send + Sync + fmt::Debug {
    /// Asserts the interrupt once.
    fn trigger(&self) -> io::Result<()>;
}

impl IrqLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// Why the core raises an interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Queue `n` has used buffers.
    Queue(usize),
    /// The configuration changed, or the device entered `DEVICE_NEEDS_RESET`.
    Config,
}

/// Where a transport's interrupts go: one line (virtio-mmio) or a vector per
/// cause (virtio-pci's MSI-X). Called from the I/O worker and the vCPU thread.
pub trait InterruptSink: Send + Sync + fmt::Debug {
    /// Delivers (or, masked, holds) the interrupt for `cause`.
    fn signal(&self, cause: Cause);
}

/// Interrupt state shared between the transport and the running device.
#[derive(Debug)]
struct InterruptState {
    isr: AtomicU32,
    needs_reset: AtomicBool,
    config_generation: AtomicU32,
    sink: Arc<dyn InterruptSink>,
    counters: Arc<DeviceCounters>,
    transport: &'static str,
}

impl InterruptState {
    fn raise(&self, bit: u32, cause: Cause) {
        self.isr.fetch_or(bit, Ordering::SeqCst);
        self.sink.signal(cause);
    }
}

/// The [`Interrupt`] handed to the device.
#[derive(Debug, Clone)]
struct CoreInterrupt(Arc<InterruptState>);

impl Interrupt for CoreInterrupt {
    fn signal(&self, kind: InterruptKind) {
        match kind {
            InterruptKind::UsedBuffer(queue) => self.0.raise(INT_USED_BUFFER, Cause::Queue(queue)),
            InterruptKind::ConfigChange => {
                self.0.config_generation.fetch_add(1, Ordering::SeqCst);
                self.0.raise(INT_CONFIG, Cause::Config);
            }
        }
    }

    fn set_needs_reset(&self, reason: &str) {
        if !self.0.needs_reset.swap(true, Ordering::SeqCst) {
            self.0.counters.add_needs_reset();
            guest_warn!(
                self.0.counters,
                transport = self.0.transport,
                reason,
                "virtio: device needs reset"
            );
            self.0.raise(INT_CONFIG, Cause::Config);
        }
    }

    fn needs_reset(&self) -> bool {
        self.0.needs_reset.load(Ordering::SeqCst)
    }
}

/// Queue registers as the driver wrote them; checked only at DRIVER_OK.
#[derive(Debug, Clone, Copy, Default)]
struct QueueRegs {
    size: u32,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

/// A queue register the driver writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueField {
    /// The queue size.
    Size,
    /// Ready (enable).
    Ready,
    /// Descriptor table address.
    Desc,
    /// Available (driver) ring address.
    Avail,
    /// Used (device) ring address.
    Used,
}

/// What a queue's size register holds after a reset: 0 (virtio-mmio's
/// `QueueNum`, which the driver must write) or the maximum (virtio-pci's
/// `queue_size`, which the driver may lower).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialQueueSize {
    /// Starts at 0.
    Zero,
    /// Starts at the device's maximum.
    Max,
}

/// The transport-independent state of one virtio device's transport.
pub struct Core {
    device: SharedDevice,
    /// The device's counters (kept here so that refused accesses are counted and
    /// rate-limited without taking the device lock).
    counters: Arc<DeviceCounters>,
    mem: Arc<GuestMemory>,
    interrupt: Arc<InterruptState>,
    queue_events: Vec<EventFd>,
    max_sizes: Vec<u16>,
    queues: Vec<QueueRegs>,
    initial_size: InitialQueueSize,
    offered: u64,
    device_id: u32,
    config_len: usize,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    transport: &'static str,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("transport", &self.transport)
            .field("device_id", &self.device_id)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Wraps `device`; interrupts go to `sink`. Creates one notification
    /// `EventFd` per queue. `transport` names the transport in log lines.
    pub fn new(
        device: SharedDevice,
        mem: Arc<GuestMemory>,
        sink: Arc<dyn InterruptSink>,
        transport: &'static str,
        initial_size: InitialQueueSize,
    ) -> io::Result<Self> {
        let (max_sizes, offered, device_id, config_len, counters) = {
            let d = lock_device(&device);
            (
                d.queue_max_sizes().to_vec(),
                d.offered_features(),
                d.device_type() as u32,
                d.config_len(),
                d.counters(),
            )
        };
        let queue_events = max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        let mut core = Self {
            device,
            counters: counters.clone(),
            mem,
            interrupt: Arc::new(InterruptState {
                isr: AtomicU32::new(0),
                needs_reset: AtomicBool::new(false),
                config_generation: AtomicU32::new(0),
                sink,
                counters,
                transport,
            }),
            queue_events,
            queues: vec![QueueRegs::default(); max_sizes.len()],
            max_sizes,
            initial_size,
            offered,
            device_id,
            config_len,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            transport,
        };
        core.reset_queue_regs();
        Ok(core)
    }

    /// The per-queue notification events, in queue order.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The device.
    pub fn device(&self) -> &SharedDevice {
        &self.device
    }

    /// The device's counters.
    pub fn counters(&self) -> &Arc<DeviceCounters> {
        &self.counters
    }

    /// The transport's name for log lines.
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// The virtio device ID.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// Number of queues.
    pub fn num_queues(&self) -> usize {
        self.max_sizes.len()
    }

    /// Bytes of device config space.
    pub fn config_len(&self) -> usize {
        self.config_len
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.interrupt.needs_reset.load(Ordering::SeqCst) {
            status::DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    /// The interrupt status bits.
    pub fn isr(&self) -> u32 {
        self.interrupt.isr.load(Ordering::SeqCst)
    }

    /// Clears `bits` of the interrupt status (virtio-mmio's InterruptACK).
    pub fn ack_isr(&self, bits: u32) {
        self.interrupt.isr.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Reads and clears the interrupt status (virtio-pci's ISR read).
    pub fn take_isr(&self) -> u32 {
        self.interrupt.isr.swap(0, Ordering::SeqCst)
    }

    /// The configuration generation.
    pub fn config_generation(&self) -> u32 {
        self.interrupt.config_generation.load(Ordering::SeqCst)
    }

    /// Selects which 32 device feature bits [`Self::device_features_word`] shows.
    pub fn set_device_features_sel(&mut self, value: u32) {
        self.device_features_sel = value;
    }

    /// The device feature selector.
    pub fn device_features_sel(&self) -> u32 {
        self.device_features_sel
    }

    /// The selected 32 bits of the offer (0 past bit 63).
    pub fn device_features_word(&self) -> u32 {
        match self.device_features_sel {
            0 => self.offered as u32,
            1 => (self.offered >> 32) as u32,
            _ => 0,
        }
    }

    /// Selects which 32 driver feature bits the driver writes (and reads).
    pub fn set_driver_features_sel(&mut self, value: u32) {
        self.driver_features_sel = value;
    }

    /// The driver feature selector.
    pub fn driver_features_sel(&self) -> u32 {
        self.driver_features_sel
    }

    /// The selected 32 bits of what the driver acked so far.
    pub fn driver_features_word(&self) -> u32 {
        match self.driver_features_sel {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    /// A driver feature write (the selected 32 bits).
    pub fn write_driver_features(&mut self, value: u32) {
        if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
            guest_warn!(
                self.counters,
                transport = self.transport,
                status = self.status,
                "virtio: refused feature write outside negotiation"
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            sel => {
                if value != 0 {
                    guest_warn!(
                        self.counters,
                        transport = self.transport,
                        sel,
                        value,
                        "virtio: refused unknown feature bits"
                    );
                }
            }
        }
    }

    /// Selects the queue the queue registers refer to (any value; one that names
    /// no queue reads as absent and refuses writes).
    pub fn select_queue(&mut self, value: u32) {
        self.queue_sel = value;
    }

    /// The queue selector.
    pub fn queue_sel(&self) -> u32 {
        self.queue_sel
    }

    /// The selected queue's index, if it exists.
    pub fn selected_queue(&self) -> Option<usize> {
        let i = self.queue_sel as usize;
        (i < self.queues.len()).then_some(i)
    }

    /// The selected queue's maximum size (0: no such queue).
    pub fn queue_max(&self) -> u32 {
        self.max_sizes
            .get(self.queue_sel as usize)
            .map_or(0, |&m| u32::from(m))
    }

    /// The selected queue's size register (0: no such queue).
    pub fn queue_size(&self) -> u32 {
        self.queues
            .get(self.queue_sel as usize)
            .map_or(0, |q| q.size)
    }

    /// Whether the selected queue is ready.
    pub fn queue_ready(&self) -> bool {
        self.queues
            .get(self.queue_sel as usize)
            .is_some_and(|q| q.ready)
    }

    /// The selected queue's ring address `field` (0 for size/ready or no queue).
    pub fn queue_addr(&self, field: QueueField) -> u64 {
        self.queues
            .get(self.queue_sel as usize)
            .map_or(0, |q| match field {
                QueueField::Desc => q.desc,
                QueueField::Avail => q.avail,
                QueueField::Used => q.used,
                QueueField::Size | QueueField::Ready => 0,
            })
    }

    /// Whether a write to the selected queue's registers is allowed now; if not,
    /// refuses it: after DRIVER_OK with an error and `DEVICE_NEEDS_RESET`, before
    /// FEATURES_OK (unless `early_ok`, for registers a driver legitimately
    /// clears at any time, such as virtio-pci's queue MSI-X vector) and for a
    /// queue that does not exist with a log line. Returns the queue index.
    pub fn check_queue_write(&self, what: &str, early_ok: bool) -> Option<usize> {
        if self.status & status::DRIVER_OK != 0 {
            self.interrupt_handle().set_needs_reset(
                "driver rewrote a queue register after DRIVER_OK (refused; queues keep their addresses)",
            );
            self.counters.add_error();
            return None;
        }
        if !early_ok && self.status & status::FEATURES_OK == 0 {
            guest_warn!(
                self.counters,
                transport = self.transport,
                register = what,
                "virtio: refused queue setup before FEATURES_OK"
            );
            return None;
        }
        let sel = self.queue_sel;
        if sel as usize >= self.queues.len() {
            guest_warn!(
                self.counters,
                transport = self.transport,
                queue = sel,
                register = what,
                "virtio: refused write to a queue that does not exist"
            );
            return None;
        }
        Some(sel as usize)
    }

    /// Writes queue register `field` of the selected queue: the bits of `value`
    /// under `mask` replace the register's (so a transport writes a 64-bit
    /// address whole or as 32-bit halves). Size and ready take the low bits.
    pub fn write_queue(&mut self, field: QueueField, value: u64, mask: u64) {
        let what = match field {
            QueueField::Size => "size",
            QueueField::Ready => "ready",
            QueueField::Desc => "descriptor table",
            QueueField::Avail => "available ring",
            QueueField::Used => "used ring",
        };
        let Some(i) = self.check_queue_write(what, false) else {
            return;
        };
        let q = &mut self.queues[i];
        let merge = |reg: &mut u64| *reg = (*reg & !mask) | (value & mask);
        match field {
            QueueField::Size => q.size = value as u32,
            QueueField::Ready => q.ready = value == 1,
            QueueField::Desc => merge(&mut q.desc),
            QueueField::Avail => merge(&mut q.avail),
            QueueField::Used => merge(&mut q.used),
        }
    }

    /// A driver notification of queue `queue`: signals its event (what a KVM
    /// ioeventfd would do) while the device runs.
    pub fn notify(&self, queue: u32) {
        if self.status() & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET) != status::DRIVER_OK {
            guest_warn!(
                self.counters,
                transport = self.transport,
                queue,
                status = self.status(),
                "virtio: notify ignored, device not running"
            );
            return;
        }
        match self.queue_events.get(queue as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    tracing::error!(error = %e, transport = self.transport, "virtio: cannot signal queue event");
                }
            }
            None => guest_warn!(
                self.counters,
                transport = self.transport,
                queue,
                "virtio: notify for a queue that does not exist"
            ),
        }
    }

    /// Reads device config space (any width; bytes beyond it read 0).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        lock_device(&self.device).read_config(offset, data);
    }

    /// A driver write to device config space; refused writes are logged.
    pub fn write_config(&self, offset: u64, data: &[u8]) {
        let accepted = lock_device(&self.device).write_config(offset, data);
        if !accepted {
            guest_warn!(
                self.counters,
                transport = self.transport,
                offset,
                len = data.len(),
                "virtio: refused config write"
            );
        }
    }

    /// Logs a refused register access (bad width, offset or direction) through
    /// the device's fault log.
    pub fn refuse(&self, what: &'static str, offset: u64, len: usize) {
        guest_warn!(
            self.counters,
            transport = self.transport,
            offset,
            len,
            "virtio: refused register access: {what}"
        );
    }

    fn interrupt_handle(&self) -> CoreInterrupt {
        CoreInterrupt(self.interrupt.clone())
    }

    /// A device status write. Returns true when it reset the device (value 0).
    pub fn write_status(&mut self, value: u32) -> bool {
        if value == 0 {
            self.reset();
            return true;
        }
        let old = self.status;
        // The driver may echo DEVICE_NEEDS_RESET back; it never sets it.
        let value = value & !status::DEVICE_NEEDS_RESET;
        if value & old != old {
            guest_warn!(
                self.counters,
                transport = self.transport,
                old,
                new = value,
                "virtio: refused status write that clears bits (write 0 to reset)"
            );
            return false;
        }
        let known = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::FAILED;
        if value & !known != 0 {
            guest_warn!(
                self.counters,
                transport = self.transport,
                new = value,
                "virtio: refused unknown status bits"
            );
            return false;
        }
        let has = |bit: u32| value & bit != 0;
        let order_ok = (!has(status::DRIVER) || has(status::ACKNOWLEDGE))
            && (!has(status::FEATURES_OK) || has(status::DRIVER))
            && (!has(status::DRIVER_OK) || has(status::FEATURES_OK));
        if !order_ok {
            guest_warn!(
                self.counters,
                transport = self.transport,
                old,
                new = value,
                "virtio: refused out-of-order status transition"
            );
            return false;
        }
        let added = value & !old;
        let mut new_status = value;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            new_status &= !(status::FEATURES_OK | status::DRIVER_OK);
        }
        if new_status & status::FAILED != 0 {
            guest_warn!(
                self.counters,
                transport = self.transport,
                "virtio: driver set FAILED"
            );
        }
        self.status = new_status;
        if added & status::DRIVER_OK != 0 && new_status & status::DRIVER_OK != 0 {
            self.activate();
        }
        false
    }

    fn features_acceptable(&self) -> bool {
        let unknown = self.driver_features & !self.offered;
        if unknown != 0 {
            guest_warn!(
                self.counters,
                transport = self.transport,
                unknown,
                "virtio: FEATURES_OK refused, driver acked features not offered"
            );
            return false;
        }
        if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            guest_warn!(self.counters, transport = self.transport, "virtio: FEATURES_OK refused, driver did not ack VIRTIO_F_VERSION_1 (legacy drivers unsupported)");
            return false;
        }
        true
    }

    fn build_queue(&self, index: usize, regs: &QueueRegs) -> Result<Queue, String> {
        let max = self.max_sizes[index];
        let mut q = Queue::new(max).map_err(|e| format!("device max size {max}: {e}"))?;
        if !regs.ready {
            return Ok(q);
        }
        let size = u16::try_from(regs.size).map_err(|_| format!("size {} too large", regs.size))?;
        q.try_set_size(size)
            .map_err(|e| format!("size {size}: {e}"))?;
        q.try_set_desc_table_address(GuestAddress(regs.desc))
            .map_err(|e| format!("descriptor table {:#x}: {e}", regs.desc))?;
        if regs.avail == 0 {
            // virtio-queue treats an available ring at 0 as "not set up".
            return Err("available ring at guest address 0 is not supported".into());
        }
        q.try_set_avail_ring_address(GuestAddress(regs.avail))
            .map_err(|e| format!("available ring {:#x}: {e}", regs.avail))?;
        q.try_set_used_ring_address(GuestAddress(regs.used))
            .map_err(|e| format!("used ring {:#x}: {e}", regs.used))?;
        q.set_ready(true);
        if !q.is_valid(&*self.mem) {
            return Err("rings are not inside guest memory".into());
        }
        Ok(q)
    }

    fn activate(&mut self) {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, regs) in self.queues.iter().enumerate() {
            match self.build_queue(index, regs) {
                Ok(q) => queues.push(q),
                Err(reason) => {
                    let reason = format!("activation refused, queue {index}: {reason}");
                    self.interrupt_handle().set_needs_reset(&reason);
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            acked_features: self.driver_features,
            interrupt: Arc::new(self.interrupt_handle()),
        };
        let mut device = lock_device(&self.device);
        if let Err(e) = device.activate(ctx) {
            device.counters().add_error();
            drop(device);
            self.interrupt_handle()
                .set_needs_reset(&format!("activation failed: {e}"));
        }
    }

    fn reset_queue_regs(&mut self) {
        for (q, &max) in self.queues.iter_mut().zip(&self.max_sizes) {
            *q = QueueRegs {
                size: match self.initial_size {
                    InitialQueueSize::Zero => 0,
                    InitialQueueSize::Max => u32::from(max),
                },
                ..QueueRegs::default()
            };
        }
    }

    fn reset(&mut self) {
        lock_device(&self.device).reset();
        self.status = 0;
        self.interrupt.isr.store(0, Ordering::SeqCst);
        self.interrupt.needs_reset.store(false, Ordering::SeqCst);
        self.reset_queue_regs();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for evt in &self.queue_events {
            // Drop notifications from before the reset; EAGAIN means none.
            let _ = evt.read();
        }
    }
}
