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
    faults: GuestFaultLog,
}

/// How many guest faults of one device are logged individually before
/// logging goes quiet (then only every [`LOG_EVERY`]th is logged). The same
/// policy as the VMM's unowned-access counters.
pub const LOG_FIRST: u64 = 16;
/// After the first [`LOG_FIRST`], one guest fault in this many is logged.
pub const LOG_EVERY: u64 = 65536;

/// Rate limiter for warnings a guest can cause: every fault is counted, only
/// the first [`LOG_FIRST`] and then every [`LOG_EVERY`]th are logged, so a
/// hostile guest cannot flood the host log.
#[derive(Debug, Default)]
pub struct GuestFaultLog {
    seen: AtomicU64,
    emitted: AtomicU64,
}

impl GuestFaultLog {
    /// Counts one fault; returns `Some(total so far)` when it should be
    /// logged.
    pub fn note(&self) -> Option<u64> {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if n < LOG_FIRST || n.is_multiple_of(LOG_EVERY) {
            self.emitted.fetch_add(1, Ordering::Relaxed);
            Some(n + 1)
        } else {
            None
        }
    }

    /// Faults counted so far.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Faults the limiter let through to the log so far.
    pub fn emitted(&self) -> u64 {
        self.emitted.load(Ordering::Relaxed)
    }
}

/// Logs a guest-caused warning through a device's [`GuestFaultLog`]:
/// `guest_warn!(counters, field = value, ..., "message")`, where
/// `counters` derefs to [`DeviceCounters`]. The fault is always counted;
/// the line is written only when the limiter allows it.
macro_rules! guest_warn {
    ($counters:expr, $($arg:tt)+) => {
        if let Some(total) = $counters.guest_fault() {
            tracing::warn!(guest_faults = total, $($arg)+);
        }
    };
}
pub(crate) use guest_warn;

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
    /// Guest-caused faults (refused register accesses, bad chains, bad
    /// requests or packets), all counted even when not logged.
    pub guest_faults: u64,
    /// Guest faults that were actually logged (rate-limited).
    pub guest_faults_logged: u64,
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

    /// Counts one guest-caused fault; `Some(total)` when it should be logged
    /// (see [`GuestFaultLog`]). Use the `guest_warn!` macro.
    pub fn guest_fault(&self) -> Option<u64> {
        self.faults.note()
    }

    /// Copies the counters out.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            needs_reset: self.needs_reset.load(Ordering::Relaxed),
            guest_faults: self.faults.seen(),
            guest_faults_logged: self.faults.emitted(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_logs_first_then_every_65536th_and_counts_all() {
        let log = GuestFaultLog::default();
        let mut emitted = Vec::new();
        for _ in 0..(2 * LOG_EVERY + 10) {
            if let Some(total) = log.note() {
                emitted.push(total);
            }
        }
        let mut expected: Vec<u64> = (1..=LOG_FIRST).collect();
        expected.extend([LOG_EVERY + 1, 2 * LOG_EVERY + 1]);
        assert_eq!(emitted, expected);
        assert_eq!(log.seen(), 2 * LOG_EVERY + 10);
        assert_eq!(log.emitted(), LOG_FIRST + 2);
    }
}
