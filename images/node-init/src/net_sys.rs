//! The network system calls nix does not wrap: the classic interface ioctls on an
//! `AF_INET` datagram socket (SIOCGIFFLAGS / SIOCSIFFLAGS to set a link up,
//! SIOCSIFADDR / SIOCSIFNETMASK for its IPv4 address, SIOCADDRT for the default
//! route). They act on the calling thread's network namespace. Every `unsafe` block
//! of the crate's networking is here.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// `SIOCADDRT` of linux/sockios.h (libc does not export it).
const SIOCADDRT: libc::c_ulong = 0x890B;
/// `RTF_UP` and `RTF_GATEWAY` of linux/route.h.
const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;

fn inet_socket() -> io::Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

/// An `ifreq` naming `name` (at most 15 bytes, no NUL), the rest zero.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.as_bytes().contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
    }
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of integers and
    // addresses) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// A `sockaddr` holding the `sockaddr_in` of `addr` (port 0): family, then the
/// port and the address in network byte order in `sa_data`.
fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let mut data = [0 as libc::c_char; 14];
    for (dst, src) in data[2..6].iter_mut().zip(addr.octets()) {
        *dst = src as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data: data,
    }
}

/// Sets `name` up (IFF_UP; `lo` then gets 127.0.0.1 and ::1 from the kernel).
pub fn set_up(name: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: `sock` is an open socket, `req` a valid `ifreq` that outlives the call,
    // and SIOCGIFFLAGS writes only `ifr_flags` inside it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just filled the union's `ifru_flags` member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives `name` the IPv4 address `addr` with `netmask` (SIOCSIFADDR replaces the
/// interface's primary address; SIOCSIFNETMASK then sets the mask, and the kernel
/// the broadcast address that goes with it).
pub fn set_ipv4(name: &str, addr: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    for (what, request, value) in [
        ("SIOCSIFADDR", libc::SIOCSIFADDR, addr),
        ("SIOCSIFNETMASK", libc::SIOCSIFNETMASK, netmask),
    ] {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_addr = sockaddr_in(value);
        // SAFETY: `sock` is an open socket and `req` a valid `ifreq` (name and an
        // AF_INET address) that outlives the call; these requests only read it.
        if unsafe { libc::ioctl(sock.as_raw_fd(), request as _, &req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what} {value}: {e}")));
        }
    }
    Ok(())
}

/// Adds the default route (0.0.0.0/0) via `gateway` out of `dev`.
pub fn add_default_route(gateway: Ipv4Addr, dev: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    ifreq(dev)?; // checks the name
    let dev = CString::new(dev).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `rtentry` is a plain C struct of integers, addresses and one pointer,
    // for which all-zero bytes (a null `rt_dev`) are a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    rt.rt_dev = dev.as_ptr().cast_mut();
    // SAFETY: `sock` is an open socket, `rt` a valid `rtentry` and `rt_dev` points at
    // `dev`, a NUL-terminated string alive until after the call; SIOCADDRT only reads
    // them (the kernel copies the name).
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCADDRT as _, &rt) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::ifaddrs::getifaddrs;
    use nix::net::if_::InterfaceFlags;

    #[test]
    fn a_sockaddr_in_holds_the_address_in_network_order() {
        let sa = sockaddr_in(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        let bytes: Vec<u8> = sa.sa_data.iter().map(|b| *b as u8).collect();
        assert_eq!(bytes[..6], [0, 0, 10, 0, 2, 15]);
        assert!(bytes[6..].iter().all(|b| *b == 0));
    }

    #[test]
    fn bad_interface_names_are_refused_before_any_ioctl() {
        for name in ["", "sixteen-chars-xx", "a\0b"] {
            assert_eq!(
                set_up(name).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{name:?}"
            );
        }
    }

    /// The netns of this thread and of the process (its first thread).
    fn netns() -> (std::path::PathBuf, std::path::PathBuf) {
        (
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            std::fs::read_link("/proc/self/ns/net").unwrap(),
        )
    }

    /// In a network namespace of its own (a thread that unshares it: the host's
    /// interfaces are never touched), the boot's calls set `lo` up, give it an
    /// address and add a default route; getifaddrs and the route table show them.
    #[test]
    fn interfaces_are_configured_in_a_private_network_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: not root (unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN)");
            return;
        }
        std::thread::spawn(|| {
            let before = netns();
            assert_eq!(before.0, before.1);
            // Only this thread moves; the namespace goes away when it exits.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            let after = netns();
            assert_ne!(after.0, after.1, "not in a namespace of our own: stopping");
            assert_eq!(after.1, before.1);

            set_up("lo").unwrap();
            set_ipv4(
                "lo",
                Ipv4Addr::new(10, 9, 8, 7),
                Ipv4Addr::new(255, 255, 255, 0),
            )
            .unwrap();
            add_default_route(Ipv4Addr::new(10, 9, 8, 1), "lo").unwrap();

            let mut found = None;
            for ifa in getifaddrs().unwrap() {
                let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
                    continue;
                };
                if sin.ip() == Ipv4Addr::new(10, 9, 8, 7) {
                    let mask = ifa.netmask.as_ref().and_then(|a| a.as_sockaddr_in());
                    found = Some((ifa.interface_name, mask.map(|m| m.ip()), ifa.flags));
                }
            }
            let (name, mask, flags) = found.expect("10.9.8.7 on lo");
            assert_eq!(name, "lo");
            assert_eq!(mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
            assert!(flags.contains(InterfaceFlags::IFF_UP), "{flags:?}");

            // /proc/thread-self/net: this thread's namespace (/proc/net is the
            // process's). Destination 0, gateway 10.9.8.1 (little-endian hex), UG.
            let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
            let default = routes
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|f| f[1] == "00000000" && f[7] == "00000000")
                .unwrap_or_else(|| panic!("no default route in\n{routes}"));
            assert_eq!(default[0], "lo");
            assert_eq!(default[2], "0108090A");
            assert_eq!(default[3], "0003");

            // An interface that does not exist is a clear error.
            let err =
                set_ipv4("nosuch0", Ipv4Addr::new(10, 1, 1, 1), Ipv4Addr::BROADCAST).unwrap_err();
            assert!(err.to_string().contains("SIOCSIFADDR"), "{err}");
        })
        .join()
        .unwrap();
    }
}
