//! SIGTERM/SIGINT: blocked in every thread from the start of `main` and taken by one
//! waiter thread with `sigwait`, which stops the VM cleanly (exit status 0) instead of
//! the process dying with the guest half torn down.

use std::thread::JoinHandle;

use vmm_sys_util::signal::{block_signal, create_sigset};

use crate::seccomp;
use crate::seccomp::SeccompMode;

/// The signals that ask the VMM to stop.
pub const TERMINATION: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// Blocks the termination signals on the calling thread; threads created afterwards
/// inherit the mask. Call first thing in `main`.
pub fn block_termination() -> Result<(), String> {
    for s in TERMINATION {
        block_signal(s).map_err(|e| format!("blocking signal {s}: {e}"))?;
    }
    Ok(())
}

/// Spawns the waiter: it installs the control seccomp filter, then calls `on_signal`
/// once for the first termination signal and returns.
pub fn spawn_waiter(
    mode: SeccompMode,
    on_signal: impl FnOnce(libc::c_int) + Send + 'static,
) -> Result<JoinHandle<()>, String> {
    let set = create_sigset(&TERMINATION).map_err(|e| format!("building the signal set: {e}"))?;
    let filter = seccomp::control_filter(mode)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Err(e) = seccomp::install(mode, filter.as_ref()) {
                tracing::error!(
                    "seccomp on the signal waiter: {e}; SIGTERM will not stop the VM cleanly"
                );
                return;
            }
            match crate::sys::sigwait(&set) {
                Ok(got) => {
                    tracing::info!(signal = got, "termination signal: stopping the VM");
                    on_signal(got);
                }
                Err(rc) => {
                    tracing::error!(rc, "sigwait failed; SIGTERM will not stop the VM cleanly");
                }
            }
        })
        .map_err(|e| format!("spawning the signal waiter: {e}"))
}
