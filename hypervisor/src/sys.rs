//! The crate's only `unsafe` code: three raw calls behind safe wrappers whose
//! arguments make the safety conditions hold.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Waits for one of the signals in `set` (which the caller keeps blocked) and returns
/// it, or the error number `sigwait` returned.
pub fn sigwait(set: &libc::sigset_t) -> Result<libc::c_int, libc::c_int> {
    let mut got: libc::c_int = 0;
    // SAFETY: `set` is a reference to an initialised sigset_t and `got` a valid,
    // writable c_int; both outlive the call, which only reads the one and writes the
    // other.
    let rc = unsafe { libc::sigwait(set, &mut got) };
    if rc == 0 {
        Ok(got)
    } else {
        Err(rc)
    }
}

/// `MADV_POPULATE_WRITE` (Linux 5.14): faults in guest RAM `[addr, addr + len)` of
/// `mem` writable, in the kernel. The range must lie inside one region (checked here).
/// A kernel without the advice answers `EINVAL`.
pub fn populate_write(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
) -> std::io::Result<()> {
    let inside = mem
        .find_region(addr)
        .and_then(|r| {
            let off = addr.0.checked_sub(r.start_addr().0)?;
            let end = off.checked_add(u64::try_from(len).ok()?)?;
            Some(end <= r.len())
        })
        .unwrap_or(false);
    if len == 0 || !inside {
        return Err(std::io::Error::from_raw_os_error(libc::EFAULT));
    }
    let host = mem
        .get_host_address(addr)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // SAFETY: `[host, host + len)` lies inside one mapping owned by `mem` (checked
    // above: one region contains the whole range), which the borrow keeps alive for the
    // call; MADV_POPULATE_WRITE only faults pages in and changes neither their contents nor
    // the mapping, so no Rust reference to that memory is invalidated.
    let rc = unsafe { libc::madvise(host.cast(), len, MADV_POPULATE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Registers every region of `mem` with the VM as memory slots 0, 1, ....
///
/// The guest (through KVM) may read and write that memory for as long as the VM or any
/// of its vCPU fds exists, including from a vCPU thread that teardown gave up waiting
/// for. So the mapping must never be unmapped while this process lives: this takes a
/// reference to every region (`GuestMemoryMmap` clones share their mappings through
/// `Arc`s) and deliberately never releases it. One process runs one VM, so the cost is
/// only that guest RAM stays mapped from teardown until the process exits.
pub fn register_guest_ram(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), String> {
    std::mem::forget(mem.clone());
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| format!("guest memory: {e}"))?;
        let slot = u32::try_from(slot).map_err(|_| "too many memory regions".to_string())?;
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is the start of a mapping of `region.len()` bytes owned by
        // `mem`'s region, and that mapping is never unmapped during the life of the
        // process (the leaked clone above holds it), so it outlives the VM and every
        // vCPU that can access it; Rust code touches guest RAM only through
        // `vm-memory`'s volatile accessors, so guest writes alias no Rust reference.
        unsafe { vm_fd.set_user_memory_region(r) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    }
    Ok(())
}
