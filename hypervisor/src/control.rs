//! Run control shared by the vCPU threads and the VMM's control plane: the requested
//! state (run, pause, stop), why the VM stopped, and the kick that gets a vCPU out of
//! `KVM_RUN`.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

/// Why a VM stopped, and the process exit status each maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum ExitReason {
    /// Stopped through the API or by SIGTERM/SIGINT.
    Stopped,
    /// The guest powered off (KVM system event).
    PowerOff,
    /// The guest wrote this byte to the debug-exit port.
    DebugExit(u8),
    /// The guest asked for a reset (i8042 or system event); Bulwark VMs do not reboot.
    Reset,
    /// A vCPU triple-faulted.
    TripleFault,
    /// The guest did something the VM cannot continue from.
    GuestCrash(String),
    /// The VMM failed.
    VmmError(String),
}

/// Process exit statuses (documented in `docs/vmm.md`).
pub mod status {
    /// Stopped by the operator or powered off by the guest.
    pub const OK: i32 = 0;
    /// The VMM could not set up or run the VM (bad config, KVM failure).
    pub const VMM_ERROR: i32 = 1;
    /// Command-line usage error.
    pub const USAGE: i32 = 2;
    /// The guest requested a reset.
    pub const RESET: i32 = 3;
    /// A vCPU triple-faulted.
    pub const TRIPLE_FAULT: i32 = 4;
    /// The guest crashed or hit an exit the VMM does not handle.
    pub const GUEST_CRASH: i32 = 5;
    /// Debug-exit code `c` (0..=111) exits with `DEBUG_EXIT_BASE + c`.
    pub const DEBUG_EXIT_BASE: i32 = 16;
    /// Debug-exit codes above 111 all exit with this.
    pub const DEBUG_EXIT_OUT_OF_RANGE: i32 = 127;
}

impl ExitReason {
    /// The process exit status for this reason.
    pub fn exit_status(&self) -> i32 {
        match self {
            ExitReason::Stopped | ExitReason::PowerOff => status::OK,
            ExitReason::DebugExit(c) if *c <= 111 => status::DEBUG_EXIT_BASE + i32::from(*c),
            ExitReason::DebugExit(_) => status::DEBUG_EXIT_OUT_OF_RANGE,
            ExitReason::Reset => status::RESET,
            ExitReason::TripleFault => status::TRIPLE_FAULT,
            ExitReason::GuestCrash(_) => status::GUEST_CRASH,
            ExitReason::VmmError(_) => status::VMM_ERROR,
        }
    }
}

/// What the vCPUs are asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Configured, vCPUs not started.
    Created,
    /// Running.
    Running,
    /// Paused (every vCPU parked outside `KVM_RUN`).
    Paused,
    /// Stopped; see the exit reason.
    Stopped,
}

#[derive(Debug)]
struct Inner {
    state: RunState,
    parked: usize,
    live: usize,
    reason: Option<ExitReason>,
}

/// Shared run control.
#[derive(Debug)]
pub struct Control {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            inner: Mutex::new(Inner {
                state: RunState::Created,
                parked: 0,
                live: 0,
                reason: None,
            }),
            changed: Condvar::new(),
        }
    }
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current state.
    pub fn state(&self) -> RunState {
        self.lock().state
    }

    /// Why the VM stopped, once it has.
    pub fn reason(&self) -> Option<ExitReason> {
        self.lock().reason.clone()
    }

    /// Marks `n` vCPU threads as started and the VM as running.
    pub fn start(&self, n: usize) {
        let mut g = self.lock();
        g.live = n;
        if g.state == RunState::Created {
            g.state = RunState::Running;
        }
        self.changed.notify_all();
    }

    /// Called by a vCPU before each `KVM_RUN`: parks while paused; returns false
    /// when the vCPU must exit.
    pub fn vcpu_checkpoint(&self) -> bool {
        let mut g = self.lock();
        loop {
            match g.state {
                RunState::Running | RunState::Created => return true,
                RunState::Stopped => return false,
                RunState::Paused => {
                    g.parked += 1;
                    self.changed.notify_all();
                    g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
                    g.parked -= 1;
                }
            }
        }
    }

    /// Called by a vCPU thread as it ends.
    pub fn vcpu_exited(&self) {
        let mut g = self.lock();
        g.live = g.live.saturating_sub(1);
        self.changed.notify_all();
    }

    /// Asks the VM to stop; the first reason given is kept.
    pub fn request_stop(&self, reason: ExitReason) {
        let mut g = self.lock();
        if g.reason.is_none() {
            g.reason = Some(reason);
        }
        g.state = RunState::Stopped;
        self.changed.notify_all();
    }

    /// Asks a running VM to pause. Returns false if it is not running.
    pub fn request_pause(&self) -> bool {
        let mut g = self.lock();
        if g.state != RunState::Running {
            return false;
        }
        g.state = RunState::Paused;
        self.changed.notify_all();
        true
    }

    /// Resumes a paused VM. Returns false if it is not paused.
    pub fn resume(&self) -> bool {
        let mut g = self.lock();
        if g.state != RunState::Paused {
            return false;
        }
        g.state = RunState::Running;
        self.changed.notify_all();
        true
    }

    /// Waits up to `timeout` until `done` holds for (parked, live, state).
    pub fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(usize, usize, RunState) -> bool,
    ) -> bool {
        let g = self.lock();
        let (g, _) = self
            .changed
            .wait_timeout_while(g, timeout, |i| !done(i.parked, i.live, i.state))
            .unwrap_or_else(|p| p.into_inner());
        done(g.parked, g.live, g.state)
    }

    /// Blocks until the VM has stopped and returns why.
    pub fn wait_stopped(&self) -> ExitReason {
        let mut g = self.lock();
        while g.state != RunState::Stopped {
            g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.reason.clone().unwrap_or(ExitReason::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_reason_wins_and_statuses_are_as_documented() {
        let c = Control::default();
        c.start(1);
        assert!(c.request_pause());
        assert!(!c.request_pause());
        assert!(c.resume());
        c.request_stop(ExitReason::DebugExit(5));
        c.request_stop(ExitReason::TripleFault);
        assert_eq!(c.wait_stopped(), ExitReason::DebugExit(5));
        assert_eq!(ExitReason::DebugExit(5).exit_status(), 21);
        assert_eq!(ExitReason::DebugExit(200).exit_status(), 127);
        assert_eq!(ExitReason::TripleFault.exit_status(), 4);
        assert!(!c.vcpu_checkpoint());
    }
}
