//! The few operations the probes need that the rust-vmm crates can only offer as
//! `unsafe`: giving memory to a KVM guest or to a device for DMA, and duplicating a
//! borrowed file descriptor. Each keeps the memory it hands out alive for as long as
//! the consumer may use it, by construction of the callers' ownership.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vfio_ioctls::VfioContainer;
use vm_memory::MmapRegion;

/// Makes `memory` the guest's physical memory at `guest_phys_addr` in memory slot `slot`.
///
/// The mapping must outlive every later `KVM_RUN` of `vm`: callers create `memory`
/// before the VM and drop it after.
pub fn set_guest_memory(
    vm: &VmFd,
    slot: u32,
    guest_phys_addr: u64,
    memory: &MmapRegion,
) -> Result<(), kvm_ioctls::Error> {
    let region = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr,
        memory_size: memory.size() as u64,
        userspace_addr: memory.as_ptr() as u64,
    };
    // SAFETY: `memory` is a live anonymous mapping of exactly `memory_size` bytes; the
    // caller keeps it mapped while the VM can run (see above). The guest only ever
    // writes memory we access through vm-memory's volatile accessors.
    unsafe { vm.set_user_memory_region(region) }
}

/// Maps `memory` for device DMA at `iova` in `container`'s IOMMU domain.
///
/// The caller must keep `memory` mapped until `vfio_dma_unmap` of the same range or
/// until the container is dropped, and reach it only through vm-memory's volatile
/// accessors (never through Rust references), as `VfioContainer::vfio_dma_map` requires.
pub fn dma_map(
    container: &VfioContainer,
    iova: u64,
    memory: &MmapRegion,
) -> Result<(), vfio_ioctls::VfioError> {
    // SAFETY: `memory` is a live mapping of `memory.size()` bytes that the callers
    // access only through volatile operations, and which outlives the DMA mapping
    // (they unmap it, or drop the container, before the region).
    unsafe { container.vfio_dma_map(iova, memory.size(), memory.as_ptr()) }
}

/// A new `File` owning a duplicate of `fd` (for mapping a VFIO device's regions).
pub fn duplicate_fd(fd: &impl AsRawFd) -> std::io::Result<File> {
    // SAFETY: `fd` is borrowed from a live object for the duration of this call; the
    // duplicate made from it has its own lifetime.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    Ok(File::from(borrowed.try_clone_to_owned()?))
}

/// Writes `code` to the debug-exit I/O port 0xf4 of `bulwark-vmm` (run as root inside
/// a guest), which ends the VM with exit status 16 + `code`. Returns only if the write
/// did not end the VM, or with the error of `ioperm`.
pub fn debug_exit(code: u8) -> std::io::Result<()> {
    const PORT: u16 = 0xf4;
    // SAFETY: ioperm only changes this process's I/O permission bitmap; no memory is involved.
    if unsafe { libc::ioperm(libc::c_ulong::from(PORT), 1, 1) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the port was granted just above; writing one byte to it has no effect on
    // this process's memory (on bulwark-vmm it ends the VM; elsewhere it is ignored).
    unsafe {
        std::arch::asm!("out dx, al", in("dx") PORT, in("al") code, options(nomem, nostack, preserves_flags));
    }
    Ok(())
}
