//! PID 1 duties: the early mounts, the clock every report uses, the console, reaping,
//! and the one way out: a clean ACPI power-off. A PID 1 that exits panics the kernel,
//! so nothing here returns to `main` on failure.

use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Microseconds since the kernel started (CLOCK_BOOTTIME).
pub fn uptime_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000) + (t.tv_nsec() as u64) / 1000)
        .unwrap_or(0)
}

/// Seconds with millisecond precision, for console lines.
pub fn secs(us: u64) -> String {
    format!("{}.{:03}", us / 1_000_000, (us / 1000) % 1000)
}

static CONSOLE: Mutex<()> = Mutex::new(());

/// One line on the serial console (PID 1's stdout is `/dev/console`), prefixed with
/// the uptime.
pub fn console(line: &str) {
    let _guard = CONSOLE.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "[{:>9}] bulwark-init: {line}", secs(uptime_us()));
    let _ = out.flush();
}

/// One early mount: what, where, type, flags, data.
type EarlyMount = (
    &'static str,
    &'static str,
    &'static str,
    MsFlags,
    &'static str,
);

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// `/proc`, `/sys`, `/dev` (devtmpfs), `/run`, `/tmp`.
const EARLY_MOUNTS: &[EarlyMount] = &[
    ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, ""),
    (
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        "mode=0755",
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        NOSUID_NODEV_NOEXEC,
        "mode=0755,size=16m",
    ),
    (
        "tmpfs",
        "/tmp",
        "tmpfs",
        NOSUID_NODEV_NOEXEC,
        "mode=1777,size=16m",
    ),
];

/// Mounts the early filesystems (an already mounted one, e.g. devtmpfs with
/// `CONFIG_DEVTMPFS_MOUNT`, is fine).
pub fn mount_early() -> Result<(), String> {
    for (what, target, fstype, flags, data) in EARLY_MOUNTS {
        std::fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
        match mount(Some(*what), *target, Some(*fstype), *flags, Some(*data)) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => return Err(format!("mounting {fstype} on {target}: {e}")),
        }
    }
    Ok(())
}

/// Reaps every exited child; returns the `(pid, status)` of each.
pub fn reap() -> Vec<(Pid, WaitStatus)> {
    let mut out = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return out,
            Ok(s) => {
                if let Some(pid) = s.pid() {
                    out.push((pid, s));
                }
            }
        }
    }
}

/// Things to tidy before the power-off: mounts to detach, in order.
static UNMOUNT_ON_POWEROFF: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Detach `target` (lazily) before powering off.
pub fn unmount_at_poweroff(target: &Path) {
    if let Ok(mut v) = UNMOUNT_ON_POWEROFF.lock() {
        v.push(target.display().to_string());
    }
}

/// Syncs, detaches what was mounted, and powers the VM off through ACPI (the kernel's
/// `reboot(RB_POWER_OFF)`). Never returns: if the power-off itself fails, it says so
/// and waits forever (an exiting PID 1 would panic the kernel).
pub fn power_off(reason: &str) -> ! {
    console(&format!("powering off: {reason}"));
    let targets = match UNMOUNT_ON_POWEROFF.try_lock() {
        Ok(v) => v.clone(),
        Err(_) => Vec::new(),
    };
    for t in targets.iter().rev() {
        let _ = umount2(t.as_str(), MntFlags::MNT_DETACH);
    }
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF).unwrap_err();
    console(&format!("power-off failed: {err}; halting here"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

thread_local! {
    static CATCHING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// While alive, a panic on this thread is caught by the caller's `catch_unwind` (a
/// guarded driver call): the panic hook logs it and does not power off.
#[derive(Debug)]
pub struct CaughtPanics(());

impl CaughtPanics {
    /// Marks this thread as inside a guarded call until the value is dropped.
    pub fn enter() -> Self {
        CATCHING.with(|c| c.set(c.get() + 1));
        CaughtPanics(())
    }

    /// Whether a panic on this thread will be caught.
    pub fn active() -> bool {
        CATCHING.with(|c| c.get() > 0)
    }
}

impl Drop for CaughtPanics {
    fn drop(&mut self) {
        CATCHING.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Reads a small text file, trimmed.
pub fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_grows_and_formats() {
        let a = uptime_us();
        std::thread::sleep(Duration::from_millis(2));
        assert!(uptime_us() > a && a > 0);
        assert_eq!(secs(12_345_678), "12.345");
        assert_eq!(secs(999), "0.000");
    }
}
