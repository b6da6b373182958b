//! Bringing the loopback interface up (the workload's servers listen on 127.0.0.1 and
//! the vsock bridges connect there; a fresh kernel has `lo` down).

use std::os::fd::AsRawFd;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// Sets IFF_UP on `lo` (SIOCGIFFLAGS, then SIOCSIFFLAGS).
pub fn loopback_up() -> Result<(), String> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket for lo: {e}"))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags inside `req`, which is a
    // valid, exclusively borrowed ifreq for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(format!(
            "SIOCGIFFLAGS lo: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel filled the flags member of the union just above.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(format!(
            "SIOCSIFFLAGS lo: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
