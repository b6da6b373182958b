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

/// `AF_VSOCK` stream sockets (std has none), as `File`s for `Read` and `Write`.
pub mod vsock {
    use std::fs::File;
    use std::io::{Error, Result};
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};

    fn check(ret: libc::c_int) -> Result<libc::c_int> {
        if ret < 0 {
            Err(Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    fn owned(fd: RawFd) -> OwnedFd {
        // SAFETY: `fd` was just returned by socket(2) or accept(2) and nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn address(cid: u32, port: u32) -> libc::sockaddr_vm {
        // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = cid;
        addr.svm_port = port;
        addr
    }

    fn stream_socket() -> Result<OwnedFd> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = check(unsafe {
            libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
        })?;
        Ok(owned(fd))
    }

    /// A socket listening on `port` for any CID.
    pub fn listen(port: u32) -> Result<OwnedFd> {
        use std::os::fd::AsRawFd;
        let fd = stream_socket()?;
        let addr = address(libc::VMADDR_CID_ANY, port);
        let len = size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes that outlives the call.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
                len,
            )
        })?;
        // SAFETY: listen(2) on a socket this function owns.
        check(unsafe { libc::listen(fd.as_raw_fd(), 1) })?;
        Ok(fd)
    }

    /// The next connection on `listener`.
    pub fn accept(listener: &OwnedFd) -> Result<File> {
        use std::os::fd::AsRawFd;
        // SAFETY: accept(2) without a peer address buffer (null pointers are allowed).
        let fd = check(unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        })?;
        Ok(File::from(owned(fd)))
    }

    /// A connection to `cid`:`port`.
    pub fn connect(cid: u32, port: u32) -> Result<File> {
        use std::os::fd::AsRawFd;
        let fd = stream_socket()?;
        let addr = address(cid, port);
        let len = size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes that outlives the call.
        check(unsafe {
            libc::connect(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
                len,
            )
        })?;
        Ok(File::from(fd))
    }

    /// Shuts down the writing half (the peer reads end of file).
    pub fn shutdown_write(file: &File) -> Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: shutdown(2) on a socket the caller owns.
        check(unsafe { libc::shutdown(file.as_raw_fd(), libc::SHUT_WR) })?;
        Ok(())
    }
}
