//! Virtio devices for `bulwark-vmm`: block, vsock and rng device models, the
//! virtio-mmio (version 2) and virtio-pci (modern, with MSI-X) transports over
//! one shared transport core, and the I/O worker that runs device requests off
//! the vCPU threads.
//!
//! The guest is the attacker: every byte of a ring, descriptor, buffer and
//! config-space write is treated as hostile. Malformed input yields a virtio
//! error status, a `DEVICE_NEEDS_RESET` for the device, and a log line; it
//! never panics and never makes the VMM buffer without bound.
//!
//! Layout, one concern per module:
//! - [`device`]: the transport-agnostic [`VirtioDevice`] trait and the
//!   interrupt trait devices signal through.
//! - [`chain`]: validation of guest descriptor chains and cursors over them.
//! - [`queue`]: draining a virtqueue with hostile-ring checks.
//! - [`transport`]: the transport-independent core (status state machine,
//!   features, queues, activation, reset) both transports are layouts over.
//! - [`mmio`]: the virtio-mmio v2 register block.
//! - [`pci`]: the virtio-pci (modern) function: config space, capabilities, BAR0.
//! - [`msix`]: an MSI-X table and pending bit array (also used for VFIO devices).
//! - [`worker`]: the epoll I/O worker thread.
//! - [`block`], [`rng`], [`vsock`]: the device models.
//! - [`counters`]: per-device request/byte/error counters.

#![forbid(unsafe_code)]

pub mod block;
pub mod chain;
pub mod counters;
pub mod device;
pub mod mmio;
pub mod msix;
pub mod pci;
pub mod queue;
pub mod rng;
pub mod transport;
pub mod vsock;
pub mod worker;

pub use counters::{CounterSnapshot, DeviceCounters};
pub use device::{
    lock_device, ActivateError, BackendReady, DeviceType, Interrupt, InterruptKind, SharedDevice,
    VirtioDevice,
};
pub use mmio::{MmioTransport, MMIO_REGION_SIZE};
pub use pci::PciTransport;
pub use worker::{IoWorker, ManualWorker};

/// Guest memory as the devices see it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
