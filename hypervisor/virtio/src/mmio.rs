//! The virtio-mmio transport, version 2 ("modern"), virtio 1.2 section 4.2.
//!
//! [`MmioTransport`] emulates the register block of one device at an MMIO
//! base the VMM chooses ([`MMIO_REGION_SIZE`] bytes). The VMM forwards guest
//! MMIO exits in that window to [`MmioTransport::read`] /
//! [`MmioTransport::write`]; both take any offset, width and bytes from the
//! guest and never panic.
//!
//! The status state machine, feature negotiation, queue configuration,
//! activation and reset are the shared [`crate::transport::Core`]'s; this
//! module is the register layout over it (offsets, the 32-bit access rule).
//!
//! Interrupts and notifications are abstract: the transport raises its
//! interrupt through an [`IrqLine`] (an irqfd `EventFd` implements it), and a
//! `QueueNotify` write signals that queue's `EventFd`, which the VMM may
//! instead register as a KVM ioeventfd (offset [`NOTIFY_OFFSET`], data match
//! on the queue index) so notifications never exit to the VMM.

use std::fmt;
use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::device::SharedDevice;
use crate::transport::{Cause, Core, InitialQueueSize, InterruptSink, QueueField};
use crate::GuestMemory;

pub use crate::transport::{status, IrqLine, INT_CONFIG, INT_USED_BUFFER};

/// Size of one device's MMIO window.
pub const MMIO_REGION_SIZE: u64 = 0x1000;
/// Offset of the `QueueNotify` register (for ioeventfd registration).
pub const NOTIFY_OFFSET: u64 = 0x50;
/// Offset where device config space starts.
pub const CONFIG_OFFSET: u64 = 0x100;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b57_4c42; // "BLWK"

/// virtio-mmio has one interrupt line for every cause.
#[derive(Debug)]
struct LineSink(Arc<dyn IrqLine>);

impl InterruptSink for LineSink {
    fn signal(&self, _cause: Cause) {
        if let Err(e) = self.0.trigger() {
            tracing::error!(error = %e, "virtio-mmio: cannot raise interrupt");
        }
    }
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    core: Core,
}

impl fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_id", &self.core.device_id())
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
        let core = Core::new(
            device,
            mem,
            Arc::new(LineSink(irq)),
            "virtio-mmio",
            InitialQueueSize::Zero,
        )?;
        Ok(Self { core })
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
        self.core.queue_events()
    }

    /// The device behind this window.
    pub fn device(&self) -> &SharedDevice {
        self.core.device()
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u32 {
        self.core.status()
    }

    /// Handles a guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.core.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        data.fill(0);
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.core
                .refuse("unaligned register read", offset, data.len());
            return;
        }
        let c = &self.core;
        let value = match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => c.device_id(),
            0x0c => VENDOR_ID,
            0x10 => c.device_features_word(),
            0x34 => c.queue_max(),
            0x44 => u32::from(c.queue_ready()),
            0x60 => c.isr(),
            0x70 => c.status(),
            // No shared memory regions: length reads as "none" (all ones).
            0xb0 | 0xb4 => u32::MAX,
            0xfc => c.config_generation(),
            _ => {
                c.refuse("read of a write-only or unknown register", offset, 4);
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handles a guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.core.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.core
                .refuse("register write of wrong width", offset, data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            self.core.refuse("unaligned register write", offset, 4);
            return;
        }
        let value = u32::from_le_bytes(bytes);
        let low = 0xffff_ffff;
        let high = low << 32;
        let v = u64::from(value);
        let c = &mut self.core;
        match offset {
            0x14 => c.set_device_features_sel(value),
            0x20 => c.write_driver_features(value),
            0x24 => c.set_driver_features_sel(value),
            0x30 => c.select_queue(value),
            0x38 => c.write_queue(QueueField::Size, v, low),
            0x44 => c.write_queue(QueueField::Ready, v, low),
            0x80 => c.write_queue(QueueField::Desc, v, low),
            0x84 => c.write_queue(QueueField::Desc, v << 32, high),
            0x90 => c.write_queue(QueueField::Avail, v, low),
            0x94 => c.write_queue(QueueField::Avail, v << 32, high),
            0xa0 => c.write_queue(QueueField::Used, v, low),
            0xa4 => c.write_queue(QueueField::Used, v << 32, high),
            NOTIFY_OFFSET => c.notify(value),
            0x64 => c.ack_isr(value),
            0x70 => {
                c.write_status(value);
            }
            _ => c.refuse("write to a read-only or unknown register", offset, 4),
        }
    }
}
