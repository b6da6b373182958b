//! What a VMM child does between fork and exec to enter its jail. Runs in the forked
//! child of a multi-threaded process: async-signal-safe system calls only, no
//! allocation, no locks.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;

/// A root for the VMM's mount namespace, prepared before the fork (all strings
/// allocated here, none in the child).
#[derive(Debug)]
pub struct RootPlan {
    /// The directory that becomes `/`.
    pub root: CString,
    /// (host source, target inside `root`, read-only, recursive).
    pub binds: Vec<(CString, CString, bool, bool)>,
    /// The working directory after the pivot (same absolute path as on the host).
    pub cwd: CString,
}

/// Makes `cmd`'s child call `enter` before exec, with `procs` (opened here, before
/// the fork) as its cgroup and, with `memlock`, that many bytes as its
/// RLIMIT_MEMLOCK (a VMM with assigned devices pins all guest RAM).
pub fn arm(
    cmd: &mut std::process::Command,
    procs: Option<std::fs::File>,
    root: Option<RootPlan>,
    uid: u32,
    gid: u32,
    memlock: Option<u64>,
) {
    let (u, g) = (
        rustix::process::Uid::from_raw_unchecked(uid),
        rustix::process::Gid::from_raw_unchecked(gid),
    );
    // SAFETY: the closure runs in the child between fork and exec; `enter` only makes
    // async-signal-safe system calls (write, unshare, mount, chdir, pivot_root,
    // umount2, prlimit64, setgroups, setresgid, setresuid, prctl) and allocates nothing: `procs`
    // was opened and every path of `root` made into a C string before the fork, and
    // both are only borrowed.
    unsafe {
        cmd.pre_exec(move || {
            enter(
                procs.as_ref().map(|f| f.as_fd()),
                root.as_ref(),
                u,
                g,
                memlock,
            )
        });
    }
}

/// In order, while still privileged: joins the cgroup whose `cgroup.procs` is `procs`
/// (writing "0" moves the writer), enters new mount (private propagation), network,
/// IPC and UTS namespaces and, with `root`, bind-mounts what the VMM needs into it and pivots
/// into it (the host's tree is detached); then drops to `gid` with no supplementary
/// groups and to `uid`, and sets `no_new_privs`. RLIMIT_MEMLOCK is set while still
/// privileged (raising the hard limit needs CAP_SYS_RESOURCE).
fn enter(
    procs: Option<BorrowedFd<'_>>,
    root: Option<&RootPlan>,
    u: rustix::process::Uid,
    g: rustix::process::Gid,
    memlock: Option<u64>,
) -> std::io::Result<()> {
    use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
    if let Some(fd) = procs {
        rustix::io::write(fd, b"0")?;
    }
    // New mount, network, IPC and UTS namespaces: the VMM reaches the world only
    // through the Unix sockets in its directory (API, vsock) and its device nodes; a
    // network namespace of its own holds nothing but a loopback that is down.
    // SAFETY: the child of fork has one thread, so unsharing cannot leave other
    // threads of this process in other namespaces.
    unsafe {
        rustix::thread::unshare_unsafe(
            rustix::thread::UnshareFlags::NEWNS
                | rustix::thread::UnshareFlags::NEWNET
                | rustix::thread::UnshareFlags::NEWIPC
                | rustix::thread::UnshareFlags::NEWUTS,
        )
    }?;
    rustix::mount::mount_change(
        c"/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )?;
    if let Some(plan) = root {
        rustix::mount::mount_bind(plan.root.as_c_str(), plan.root.as_c_str())?;
        for (src, dst, ro, rec) in &plan.binds {
            if *rec {
                rustix::mount::mount_bind_recursive(src.as_c_str(), dst.as_c_str())?;
            } else {
                rustix::mount::mount_bind(src.as_c_str(), dst.as_c_str())?;
            }
            if *ro {
                rustix::mount::mount_remount(
                    dst.as_c_str(),
                    MountFlags::BIND | MountFlags::RDONLY,
                    c"",
                )?;
            }
        }
        rustix::process::chdir(plan.root.as_c_str())?;
        rustix::process::pivot_root(c".", c".")?;
        rustix::mount::unmount(c".", UnmountFlags::DETACH)?;
        rustix::process::chdir(plan.cwd.as_c_str())?;
    }
    if let Some(bytes) = memlock {
        rustix::process::setrlimit(
            rustix::process::Resource::Memlock,
            rustix::process::Rlimit {
                current: Some(bytes),
                maximum: Some(bytes),
            },
        )?;
    }
    // The child has one thread, so these per-thread calls change the whole process.
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_res_gid(g, g, g)?;
    rustix::thread::set_thread_res_uid(u, u, u)?;
    rustix::thread::set_no_new_privs(true)?;
    Ok(())
}
