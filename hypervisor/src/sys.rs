//! The crate's only `unsafe` code: a few raw calls (sigwait, madvise, getrlimit, KVM
//! memory slots for guest RAM and VFIO BARs, VFIO DMA maps and reset) behind safe
//! wrappers whose arguments make the safety conditions hold.

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

/// The soft `RLIMIT_MEMLOCK` of this process in bytes (`None`: unlimited).
pub fn memlock_limit() -> std::io::Result<Option<u64>> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit that outlives the call, which only
    // writes it.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur))
}

/// A new `File` owning a duplicate of `fd` (to mmap a VFIO device's regions through
/// vm-memory, which takes ownership of the file it maps).
pub fn duplicate_fd(fd: &impl std::os::fd::AsRawFd) -> std::io::Result<std::fs::File> {
    // SAFETY: `fd` is borrowed from a live object for the duration of this call only;
    // the duplicate made from it has its own lifetime.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    Ok(std::fs::File::from(borrowed.try_clone_to_owned()?))
}

/// Maps every RAM region of `mem` for device DMA in the IOMMU domain of `container`
/// (a VFIO container, or an iommufd IOAS) with IOVA = guest-physical address, one
/// `VFIO_IOMMU_MAP_DMA` / `IOMMU_IOAS_MAP` per region (the kernel pins the pages as it
/// maps them).
///
/// Like [`register_guest_ram`], this keeps guest RAM mapped for the rest of the
/// process's life (a leaked clone of `mem`), so the device can never DMA into memory
/// that was unmapped and reused.
pub fn vfio_map_guest_ram(
    container: &dyn vfio_ioctls::VfioOps,
    mem: &GuestMemoryMmap,
) -> Result<(), String> {
    std::mem::forget(mem.clone());
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| format!("guest memory: {e}"))?;
        let size = usize::try_from(region.len()).map_err(|_| "region too large".to_string())?;
        // SAFETY: `[host, host + size)` is one mapping owned by `mem`'s region, kept
        // mapped until the process exits (the leaked clone above), so it outlives the
        // DMA mapping; the VMM reaches guest RAM only through vm-memory's volatile
        // accessors and never holds a Rust reference into it, as `vfio_dma_map`
        // requires of memory a device may write at any time.
        unsafe { container.vfio_dma_map(region.start_addr().0, size, host) }.map_err(|e| {
            format!(
                "DMA map (VFIO_IOMMU_MAP_DMA or IOMMU_IOAS_MAP) of {} MiB at {:#x}: {e}",
                region.len() >> 20,
                region.start_addr().0
            )
        })?;
    }
    Ok(())
}

/// Makes `[offset, offset + len)` of the device mapping `map` (a mmapped VFIO BAR)
/// guest-physical memory at `gpa` in KVM memory slot `slot`.
///
/// Like guest RAM, the mapping is never unmapped while the process lives: a clone of
/// the `Arc` is leaked, since the guest may touch the slot for as long as the VM or
/// any vCPU fd exists.
pub fn map_device_memory(
    vm_fd: &VmFd,
    slot: u32,
    gpa: u64,
    map: &std::sync::Arc<vm_memory::MmapRegion>,
    offset: usize,
    len: usize,
) -> Result<(), String> {
    let inside = offset
        .checked_add(len)
        .is_some_and(|end| end <= map.size() && len > 0);
    if !inside || !offset.is_multiple_of(4096) || !len.is_multiple_of(4096) {
        return Err(format!(
            "device memory slot {offset:#x}+{len:#x} is not page-aligned inside the {:#x}-byte mapping",
            map.size()
        ));
    }
    std::mem::forget(std::sync::Arc::clone(map));
    let r = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: len as u64,
        userspace_addr: map.as_ptr() as u64 + offset as u64,
    };
    // SAFETY: `[offset, offset + len)` lies inside the live mapping `map` (checked
    // above), which is never unmapped while the process lives (the leaked `Arc`), so
    // it outlives the VM and every vCPU; the VMM itself touches device memory only
    // through the VFIO device fd, never through Rust references into the mapping.
    unsafe { vm_fd.set_user_memory_region(r) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION for device memory at {gpa:#x}: {e}"))
}

/// `VFIO_DEVICE_RESET` = `_IO(';', 100 + 11)`.
const VFIO_DEVICE_RESET: libc::c_ulong = 0x3b6f;

/// Resets a VFIO device (function-level reset or whatever vfio-pci has for it).
/// `Ok(false)`: the device offers no reset (`EINVAL`/`ENOTTY`).
pub fn vfio_device_reset(device: &impl std::os::fd::AsRawFd) -> std::io::Result<bool> {
    // SAFETY: VFIO_DEVICE_RESET takes no argument and touches no memory of this
    // process; a non-VFIO fd just fails with ENOTTY.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_RESET as _) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOTTY) => Ok(false),
        _ => Err(e),
    }
}
