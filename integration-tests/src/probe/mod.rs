//! Programs that run inside the lab machine (L1) and report what they saw as result
//! lines (see [`crate::result_line`]). Each step either passes (a `pass` line) or
//! fails (a `fail` line, and the probe stops: later checks are then missing, which
//! the runner reports too).

use std::fmt::Display;

use vm_memory::volatile_memory::Error as VolatileMemoryError;
use vm_memory::{MmapRegion, VolatileMemory};
use vmm_sys_util::eventfd::EventFd;

use crate::result_line::check_line;

pub mod edu;
pub mod kvm_smoke;
pub mod pci;
mod raw;
pub use raw::{debug_exit, vsock};
pub mod virtio_msix;

/// A probe step failed; its `fail` line has been printed.
#[derive(Debug)]
pub struct Failed;

/// Prints a passing check.
pub fn pass(name: &str, detail: impl Display) {
    println!("{}", check_line(name, true, &detail.to_string()));
}

/// Prints a failing check and returns the marker to stop the probe with.
pub fn fail(name: &str, detail: impl Display) -> Failed {
    println!("{}", check_line(name, false, &detail.to_string()));
    Failed
}

/// Prints `name` as passed if `ok`, as failed otherwise.
pub fn ensure(name: &str, ok: bool, detail: impl Display) -> Result<(), Failed> {
    if ok {
        pass(name, detail);
        Ok(())
    } else {
        Err(fail(name, detail))
    }
}

/// Turns an error into a failed check named `name`.
pub trait OrFail<T> {
    fn or_fail(self, name: &str) -> Result<T, Failed>;
}

impl<T, E: Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, name: &str) -> Result<T, Failed> {
        self.map_err(|e| fail(name, e))
    }
}

/// Polls `ready` every millisecond until it holds or `timeout` passes.
pub fn wait_for(timeout: std::time::Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Waits up to `timeout` for `event` to be signalled; returns its count, or `None`.
pub fn wait_for_event(event: &EventFd, timeout: std::time::Duration) -> Option<u64> {
    let mut count = None;
    wait_for(timeout, || {
        count = event.read().ok();
        count.is_some()
    });
    count
}

/// Copies `data` into `region` at `offset` with volatile accesses (the memory is
/// shared with a device or a guest).
pub fn put(region: &MmapRegion, offset: usize, data: &[u8]) -> Result<(), VolatileMemoryError> {
    region.get_slice(offset, data.len())?.copy_from(data);
    Ok(())
}

/// Fills `buf` from `region` at `offset` with volatile accesses.
pub fn get(region: &MmapRegion, offset: usize, buf: &mut [u8]) -> Result<(), VolatileMemoryError> {
    region.get_slice(offset, buf.len())?.copy_to(buf);
    Ok(())
}

/// The exit status of a probe's `main`.
pub fn exit_code(result: Result<(), Failed>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Failed) => std::process::ExitCode::FAILURE,
    }
}
