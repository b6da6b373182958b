//! Per-device counters, updated by the device on its I/O worker and read by
//! the VMM (metrics, `GET /vm`) without taking the device lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one device. Cheap to update from the I/O worker.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    requests: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errors: AtomicU64,
    needs_reset: AtomicU64,
}

/// A plain copy of a device's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Requests (descriptor chains, or vsock packets) the device handled.
    pub requests: u64,
    /// Bytes the device read from the backend into guest memory (guest reads,
    /// host-to-guest vsock payload, random bytes).
    pub bytes_read: u64,
    /// Bytes the device took from guest memory into the backend (guest
    /// writes, guest-to-host vsock payload).
    pub bytes_written: u64,
    /// Requests that ended in an error status, a dropped or reset packet, or
    /// a malformed descriptor chain.
    pub errors: u64,
    /// Times the device had to enter `DEVICE_NEEDS_RESET`.
    pub needs_reset: u64,
}

impl DeviceCounters {
    /// Counts one handled request.
    pub fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts bytes moved from the backend into the guest.
    pub fn add_bytes_read(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts bytes moved from the guest into the backend.
    pub fn add_bytes_written(&self, n: u64) {
        self.bytes_written.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one failed request.
    pub fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one entry into `DEVICE_NEEDS_RESET`.
    pub fn add_needs_reset(&self) {
        self.needs_reset.fetch_add(1, Ordering::Relaxed);
    }

    /// Copies the counters out.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            needs_reset: self.needs_reset.load(Ordering::Relaxed),
        }
    }
}
