//! Starting the workload jailed: in the child, between fork and exec, it changes root
//! to the verified rootfs, drops every capability from the bounding and ambient sets,
//! drops supplementary groups, becomes the unprivileged uid/gid and sets
//! `no_new_privs`. Only async-signal-safe system calls on memory prepared before the
//! fork run there.

use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Where and as whom the workload runs.
#[derive(Debug, Clone)]
pub struct Jail {
    /// New root (the mounted, verified rootfs).
    pub root: String,
    /// Working directory inside the new root.
    pub cwd: String,
    /// Unprivileged user.
    pub uid: u32,
    /// Unprivileged group.
    pub gid: u32,
    /// RLIMIT_NPROC: most processes (and threads) the workload's uid may have.
    pub max_processes: u64,
}

/// The highest capability number to drop from the bounding set (the kernel's
/// `/proc/sys/kernel/cap_last_cap`; drops past it fail with EINVAL and are ignored).
const CAP_LAST: libc::c_ulong = 63;

/// Spawns `cmd` inside `jail`.
pub fn spawn_jailed(cmd: &mut Command, jail: &Jail) -> io::Result<Child> {
    let to_c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let root = to_c(&jail.root)?;
    let cwd = to_c(&jail.cwd)?;
    let (uid, gid) = (jail.uid, jail.gid);
    let nproc = libc::rlimit {
        rlim_cur: jail.max_processes,
        rlim_max: jail.max_processes,
    };
    // SAFETY: the closure runs in the forked child before exec. It only makes system
    // calls that are async-signal-safe (chroot, chdir, prctl, setrlimit, setgroups,
    // setresgid, setresuid) on the values built above, allocates nothing and touches
    // no lock.
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| {
                if r < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::chroot(root.as_ptr()))?;
            check(libc::chdir(cwd.as_ptr()))?;
            for cap in 0..=CAP_LAST {
                // EINVAL past the kernel's last capability: nothing to drop there; any
                // other failure leaves a capability in the set and stops the start.
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        return Err(e);
                    }
                }
            }
            check(libc::setrlimit(libc::RLIMIT_NPROC, &nproc))?;
            check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(gid, gid, gid))?;
            check(libc::setresuid(uid, uid, uid))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            Ok(())
        });
    }
    cmd.spawn()
}
