//! What a VMM child does between fork and exec to enter its jail. Runs in the forked
//! child of a multi-threaded process: async-signal-safe system calls only, no
//! allocation, no locks.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;

/// Makes `cmd`'s child call `enter` before exec, with `procs` (opened here, before
/// the fork) as its cgroup.
pub fn arm(cmd: &mut std::process::Command, procs: Option<std::fs::File>, uid: u32, gid: u32) {
    let (u, g) = (
        rustix::process::Uid::from_raw_unchecked(uid),
        rustix::process::Gid::from_raw_unchecked(gid),
    );
    // SAFETY: the closure runs in the child between fork and exec; `enter` only makes
    // async-signal-safe system calls (write, unshare, mount, setgroups, setresgid,
    // setresuid, prctl) and allocates nothing; `procs` was opened before the fork and
    // is only borrowed.
    unsafe {
        cmd.pre_exec(move || enter(procs.as_ref().map(|f| f.as_fd()), u, g));
    }
}

/// In order, while still privileged: joins the cgroup whose `cgroup.procs` is `procs`
/// (writing "0" moves the writer), enters a new mount namespace with private
/// propagation; then drops to `gid` with no supplementary groups and to `uid`, and
/// sets `no_new_privs`.
fn enter(
    procs: Option<BorrowedFd<'_>>,
    u: rustix::process::Uid,
    g: rustix::process::Gid,
) -> std::io::Result<()> {
    if let Some(fd) = procs {
        rustix::io::write(fd, b"0")?;
    }
    // SAFETY: the child of fork has one thread, so unsharing the mount namespace
    // cannot leave other threads of this process in another namespace.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
    rustix::mount::mount_change(
        c"/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )?;
    // The child has one thread, so these per-thread calls change the whole process.
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_res_gid(g, g, g)?;
    rustix::thread::set_thread_res_uid(u, u, u)?;
    rustix::thread::set_no_new_privs(true)?;
    Ok(())
}
