//! The virtio-mmio transport, version 2 ("modern"), virtio 1.2 section 4.2.
//!
//! [`MmioTransport`] emulates the register block of one device at an MMIO
//! base the VMM chooses ([`MMIO_REGION_SIZE`] bytes). The VMM forwards guest
//! MMIO exits in that window to [`MmioTransport::read`] /
//! [`MmioTransport::write`]; both take any offset, width and bytes from the
//! guest and never panic.
//!
//! State machine: the status may only gain bits, in order
//! ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK (FAILED at any time);
//! writing 0 resets. Features are negotiable only between DRIVER and
//! FEATURES_OK; FEATURES_OK is refused (stays clear) unless the driver acked
//! `VIRTIO_F_VERSION_1` and nothing outside the offer. Queues are
//! configurable only between FEATURES_OK and DRIVER_OK; at DRIVER_OK they are
//! validated against guest memory and handed to the device. A queue register
//! written after DRIVER_OK is refused and puts the device in
//! `DEVICE_NEEDS_RESET`: the device keeps the addresses it was activated with.
//!
//! Interrupts and notifications are abstract: the transport raises its
//! interrupt through an [`IrqLine`] (an irqfd `EventFd` implements it), and a
//! `QueueNotify` write signals that queue's `EventFd`, which the VMM may
//! instead register as a KVM ioeventfd (offset [`NOTIFY_OFFSET`], data match
//! on the queue index) so notifications never exit to the VMM.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use crate::counters::{guest_warn, DeviceCounters};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{
    lock_device, ActivateContext, Interrupt, InterruptKind, SharedDevice, VIRTIO_F_VERSION_1,
};
use crate::GuestMemory;

/// Size of one device's MMIO window.
pub const MMIO_REGION_SIZE: u64 = 0x1000;
/// Offset of the `QueueNotify` register (for ioeventfd registration).
pub const NOTIFY_OFFSET: u64 = 0x50;
/// Offset where device config space starts.
pub const CONFIG_OFFSET: u64 = 0x100;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b57_4c42; // "BLWK"

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

/// Interrupt status bits.
pub const INT_USED_BUFFER: u32 = 1;
/// Configuration change interrupt bit.
pub const INT_CONFIG: u32 = 2;

/// The line the transport raises its interrupt on.
pub trait IrqLine: Send + Sync + fmt::Debug {
    /// Asserts the (edge-triggered) interrupt once.
    fn trigger(&self) -> io::Result<()>;
}

impl IrqLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// Interrupt state shared between the transport and the running device.
#[derive(Debug)]
struct InterruptState {
    status: AtomicU32,
    needs_reset: AtomicBool,
    config_generation: AtomicU32,
    irq: Arc<dyn IrqLine>,
    counters: Arc<DeviceCounters>,
}

impl InterruptState {
    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq.trigger() {
            tracing::error!(error = %e, "virtio-mmio: cannot raise interrupt");
        }
    }
}

/// The [`Interrupt`] handed to the device.
#[derive(Debug, Clone)]
struct MmioInterrupt(Arc<InterruptState>);

impl Interrupt for MmioInterrupt {
    fn signal(&self, kind: InterruptKind) {
        match kind {
            InterruptKind::UsedBuffer => self.0.raise(INT_USED_BUFFER),
            InterruptKind::ConfigChange => {
                self.0.config_generation.fetch_add(1, Ordering::SeqCst);
                self.0.raise(INT_CONFIG);
            }
        }
    }

    fn set_needs_reset(&self, reason: &str) {
        if !self.0.needs_reset.swap(true, Ordering::SeqCst) {
            self.0.counters.add_needs_reset();
            guest_warn!(self.0.counters, reason, "virtio-mmio: device needs reset");
            self.0.raise(INT_CONFIG);
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

/// One virtio-mmio device window.
pub struct MmioTransport {
    device: SharedDevice,
    /// The device's counters (kept here so that refused accesses are
    /// counted and rate-limited without taking the device lock).
    counters: Arc<DeviceCounters>,
    mem: Arc<GuestMemory>,
    interrupt: Arc<InterruptState>,
    queue_events: Vec<EventFd>,
    max_sizes: Vec<u16>,
    queues: Vec<QueueRegs>,
    offered: u64,
    device_id: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
}

impl fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_id", &self.device_id)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wraps `device`; `irq` is the device's interrupt line. Creates one
    /// notification `EventFd` per queue.
    pub fn new(
        device: SharedDevice,
        mem: Arc<GuestMemory>,
        irq: Arc<dyn IrqLine>,
    ) -> io::Result<Self> {
        let (max_sizes, offered, device_id, counters) = {
            let d = lock_device(&device);
            (
                d.queue_max_sizes().to_vec(),
                d.offered_features(),
                d.device_type() as u32,
                d.counters(),
            )
        };
        let queue_events = max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            device,
            counters: counters.clone(),
            mem,
            interrupt: Arc::new(InterruptState {
                status: AtomicU32::new(0),
                needs_reset: AtomicBool::new(false),
                config_generation: AtomicU32::new(0),
                irq,
                counters,
            }),
            queue_events,
            queues: vec![QueueRegs::default(); max_sizes.len()],
            max_sizes,
            offered,
            device_id,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
        })
    }

    /// The kernel command-line fragment that makes Linux probe a device at
    /// `base` with interrupt `irq`.
    pub fn cmdline_fragment(base: u64, irq: u32) -> String {
        format!(
            "virtio_mmio.device={}K@{base:#x}:{irq}",
            MMIO_REGION_SIZE / 1024
        )
    }

    /// The per-queue notification events, in queue order. Give clones to the
    /// I/O worker; register them as ioeventfds where KVM supports it.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The device behind this window.
    pub fn device(&self) -> &SharedDevice {
        &self.device
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

    /// Handles a guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            lock_device(&self.device).read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        data.fill(0);
        if data.len() != 4 || !offset.is_multiple_of(4) {
            guest_warn!(
                self.counters,
                offset,
                len = data.len(),
                "virtio-mmio: refused unaligned register read"
            );
            return;
        }
        let value = match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device_id,
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            0x34 => self
                .max_sizes
                .get(self.queue_sel as usize)
                .map_or(0, |&m| u32::from(m)),
            0x44 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready)),
            0x60 => self.interrupt.status.load(Ordering::SeqCst),
            0x70 => self.status(),
            // No shared memory regions: length reads as "none" (all ones).
            0xb0 | 0xb4 => u32::MAX,
            0xfc => self.interrupt.config_generation.load(Ordering::SeqCst),
            _ => {
                guest_warn!(
                    self.counters,
                    offset,
                    "virtio-mmio: read of a write-only or unknown register"
                );
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handles a guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            let accepted = lock_device(&self.device).write_config(offset - CONFIG_OFFSET, data);
            if !accepted {
                guest_warn!(
                    self.counters,
                    offset,
                    len = data.len(),
                    "virtio-mmio: refused config write"
                );
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!(
                self.counters,
                offset,
                len = data.len(),
                "virtio-mmio: refused register write of wrong width"
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            guest_warn!(
                self.counters,
                offset,
                "virtio-mmio: refused unaligned register write"
            );
            return;
        }
        let value = u32::from_le_bytes(bytes);
        match offset {
            0x14 => self.device_features_sel = value,
            0x20 => self.write_driver_features(value),
            0x24 => self.driver_features_sel = value,
            0x30 => self.queue_sel = value,
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                self.write_queue_reg(offset, value)
            }
            NOTIFY_OFFSET => self.notify(value),
            0x64 => {
                self.interrupt.status.fetch_and(!value, Ordering::SeqCst);
            }
            0x70 => self.write_status(value),
            _ => guest_warn!(
                self.counters,
                offset,
                value,
                "virtio-mmio: write to a read-only or unknown register"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
            guest_warn!(
                self.counters,
                status = self.status,
                "virtio-mmio: refused feature write outside negotiation"
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
                        sel,
                        value,
                        "virtio-mmio: refused unknown feature bits"
                    );
                }
            }
        }
    }

    fn write_queue_reg(&mut self, offset: u64, value: u32) {
        if self.status & status::DRIVER_OK != 0 {
            self.interrupt_handle().set_needs_reset(
                "driver rewrote a queue register after DRIVER_OK (refused; queues keep their addresses)",
            );
            self.counters.add_error();
            return;
        }
        if self.status & status::FEATURES_OK == 0 {
            guest_warn!(
                self.counters,
                offset,
                "virtio-mmio: refused queue setup before FEATURES_OK"
            );
            return;
        }
        let sel = self.queue_sel;
        let Some(q) = self.queues.get_mut(sel as usize) else {
            guest_warn!(
                self.counters,
                queue = sel,
                "virtio-mmio: refused write to a queue that does not exist"
            );
            return;
        };
        let set_low = |reg: &mut u64| *reg = (*reg & !0xffff_ffff) | u64::from(value);
        let set_high = |reg: &mut u64| *reg = (*reg & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            0x38 => q.size = value,
            0x44 => q.ready = value == 1,
            0x80 => set_low(&mut q.desc),
            0x84 => set_high(&mut q.desc),
            0x90 => set_low(&mut q.avail),
            0x94 => set_high(&mut q.avail),
            0xa0 => set_low(&mut q.used),
            _ => set_high(&mut q.used),
        }
    }

    fn notify(&mut self, value: u32) {
        if self.status() & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET) != status::DRIVER_OK {
            guest_warn!(
                self.counters,
                queue = value,
                status = self.status(),
                "virtio-mmio: notify ignored, device not running"
            );
            return;
        }
        match self.queue_events.get(value as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    tracing::error!(error = %e, "virtio-mmio: cannot signal queue event");
                }
            }
            None => guest_warn!(
                self.counters,
                queue = value,
                "virtio-mmio: notify for a queue that does not exist"
            ),
        }
    }

    fn interrupt_handle(&self) -> MmioInterrupt {
        MmioInterrupt(self.interrupt.clone())
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // The driver may echo DEVICE_NEEDS_RESET back; it never sets it.
        let value = value & !status::DEVICE_NEEDS_RESET;
        if value & old != old {
            guest_warn!(
                self.counters,
                old,
                new = value,
                "virtio-mmio: refused status write that clears bits (write 0 to reset)"
            );
            return;
        }
        let known = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::FAILED;
        if value & !known != 0 {
            guest_warn!(
                self.counters,
                new = value,
                "virtio-mmio: refused unknown status bits"
            );
            return;
        }
        let has = |bit: u32| value & bit != 0;
        let order_ok = (!has(status::DRIVER) || has(status::ACKNOWLEDGE))
            && (!has(status::FEATURES_OK) || has(status::DRIVER))
            && (!has(status::DRIVER_OK) || has(status::FEATURES_OK));
        if !order_ok {
            guest_warn!(
                self.counters,
                old,
                new = value,
                "virtio-mmio: refused out-of-order status transition"
            );
            return;
        }
        let added = value & !old;
        let mut new_status = value;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            new_status &= !(status::FEATURES_OK | status::DRIVER_OK);
        }
        if new_status & status::FAILED != 0 {
            guest_warn!(self.counters, "virtio-mmio: driver set FAILED");
        }
        self.status = new_status;
        if added & status::DRIVER_OK != 0 && new_status & status::DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        let unknown = self.driver_features & !self.offered;
        if unknown != 0 {
            guest_warn!(
                self.counters,
                unknown,
                "virtio-mmio: FEATURES_OK refused, driver acked features not offered"
            );
            return false;
        }
        if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            guest_warn!(self.counters, "virtio-mmio: FEATURES_OK refused, driver did not ack VIRTIO_F_VERSION_1 (legacy drivers unsupported)");
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

    fn reset(&mut self) {
        lock_device(&self.device).reset();
        self.status = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
        self.interrupt.needs_reset.store(false, Ordering::SeqCst);
        self.queues.fill(QueueRegs::default());
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
