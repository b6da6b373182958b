//! The transport-agnostic device model interface.
//!
//! A transport (virtio-mmio or virtio-pci, both over the shared core in
//! `transport`) owns the feature negotiation, status state machine and queue
//! configuration; once the driver sets
//! `DRIVER_OK` it hands the configured queues, the guest memory and an
//! [`Interrupt`] to [`VirtioDevice::activate`]. From then on the I/O worker
//! calls [`VirtioDevice::process_queue`] whenever a queue is notified.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use virtio_queue::Queue;

use crate::counters::DeviceCounters;
use crate::GuestMemory;

/// Virtio device IDs (virtio 1.2, section 5) of the devices this crate models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DeviceType {
    /// virtio-blk.
    Block = 2,
    /// virtio-rng (entropy source).
    Rng = 4,
    /// virtio-vsock.
    Vsock = 19,
}

/// Why a device raises its interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// The device put buffers in the used ring of this queue (the index lets a
    /// transport with one interrupt vector per queue, virtio-pci's MSI-X, pick it).
    UsedBuffer(usize),
    /// The device configuration changed (or the device needs a reset).
    ConfigChange,
}

/// How a device signals the driver. The transport implements it; the VMM
/// supplies the line underneath (an irqfd, or anything else).
pub trait Interrupt: Send + Sync + std::fmt::Debug {
    /// Raises the interrupt for `kind`.
    fn signal(&self, kind: InterruptKind);

    /// Marks the device as broken by the driver: sets `DEVICE_NEEDS_RESET` in
    /// the device status and raises a configuration-change interrupt. The
    /// device stops processing until the driver resets it.
    fn set_needs_reset(&self, reason: &str);

    /// Whether the device is in `DEVICE_NEEDS_RESET` (set by the device or
    /// by the transport); a device in that state leaves its rings alone.
    fn needs_reset(&self) -> bool;
}

/// Why activation failed. The transport then sets `DEVICE_NEEDS_RESET`.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver configured a different number of queues than the device
    /// requires, or left a required queue not ready.
    #[error("queue {index} is not usable: {reason}")]
    BadQueue {
        /// Queue index.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The device could not start its backend.
    #[error("device backend failed: {0}")]
    Backend(#[from] std::io::Error),
}

/// Everything a device needs to start serving its queues.
#[derive(Debug)]
pub struct ActivateContext {
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    /// The queues in index order, with sizes and addresses the transport
    /// validated against `mem`. A queue the driver left not ready has
    /// `ready() == false`.
    pub queues: Vec<Queue>,
    /// The feature bits the driver acknowledged (a subset of the offer).
    pub acked_features: u64,
    /// How to interrupt the guest.
    pub interrupt: Arc<dyn Interrupt>,
}

/// Interest of a device in one of its own host file descriptors (vsock's
/// Unix sockets). The I/O worker polls them next to the queue events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FdInterest {
    /// The descriptor; owned by the device.
    pub fd: RawFd,
    /// Wake when readable (or a listener has a connection).
    pub read: bool,
    /// Wake when writable.
    pub write: bool,
}

/// What the I/O worker saw on one of a device's host descriptors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendReady {
    /// Readable, or the peer shut its write side (a read returns EOF).
    pub readable: bool,
    /// Writable.
    pub writable: bool,
    /// Hung up or in error: nothing more can be written to it. `HANG_UP`
    /// and `ERROR` are level-triggered and always reported, so the device
    /// must stop polling the descriptor once it has seen this.
    pub hung_up: bool,
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send + std::fmt::Debug {
    /// The virtio device ID.
    fn device_type(&self) -> DeviceType;

    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits the device offers (including `VIRTIO_F_VERSION_1`).
    fn offered_features(&self) -> u64;

    /// Bytes of device-specific config space (0: none). A transport that
    /// announces the size (virtio-pci's device capability) uses this.
    fn config_len(&self) -> usize;

    /// Reads device config space at `offset` into `data`. Bytes beyond the
    /// config space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Handles a driver write to config space. Returns `false` (and the
    /// caller logs) when the write is refused.
    fn write_config(&mut self, offset: u64, data: &[u8]) -> bool;

    /// Starts serving the queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;

    /// Whether the device is activated.
    fn is_active(&self) -> bool;

    /// Handles a notification of queue `index`: processes a bounded batch of
    /// available buffers. Returns `true` when more work may be pending, so
    /// the caller should call again (after releasing the device lock).
    fn process_queue(&mut self, index: usize) -> bool;

    /// Returns the device to its initial, not activated state, dropping the
    /// queues, guest memory and any in-flight state.
    fn reset(&mut self);

    /// The device's counters.
    fn counters(&self) -> Arc<DeviceCounters>;

    /// Host descriptors the device wants polled. Default: none.
    fn backend_fds(&self) -> Vec<FdInterest> {
        Vec::new()
    }

    /// Handles readiness of one of [`Self::backend_fds`]. Returns `true` when
    /// more work may be pending. Default: nothing to do.
    fn process_backend(&mut self, _fd: RawFd, _ready: BackendReady) -> bool {
        false
    }
}

/// A device shared between the transport (vCPU thread) and the I/O worker.
pub type SharedDevice = Arc<Mutex<dyn VirtioDevice>>;

/// Locks a shared device. Devices never panic while holding the lock, but a
/// poisoned lock would still hold consistent state (every device method
/// leaves the device valid between statements that can fail), so it is
/// recovered rather than propagated.
pub fn lock_device(device: &SharedDevice) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `VIRTIO_F_VERSION_1`: the modern interface; every device offers it and
/// the transport refuses drivers that do not accept it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Copies `data` from a config-space image, zero-filling what is outside.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}
