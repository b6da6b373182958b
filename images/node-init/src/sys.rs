//! What needs `unsafe`: setting the loopback interface up (SIOCGIFFLAGS /
//! SIOCSIFFLAGS on a datagram socket, which nix does not wrap) and clearing a child's
//! signal mask between fork and exec.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// Sets `lo` up (IFF_UP): the kernel then gives it 127.0.0.1 and ::1.
pub fn loopback_up() -> io::Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of integers and
    // addresses) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
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

/// Makes `cmd`'s child start with no blocked signals. PID 1 blocks the signals it
/// reads from its signalfd, a mask children inherit through fork and exec; std's
/// `Command` clears it today (glibc and musl, tested), but that is not documented,
/// and bulwarkd must see SIGTERM.
pub fn unblock_signals_in_child(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (sigemptyset, sigprocmask) on a set on its own stack;
    // it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{SigSet, Signal};

    fn child_sigblk(unblock: bool) -> String {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "grep SigBlk /proc/self/status"]);
        if unblock {
            unblock_signals_in_child(&mut cmd);
        }
        let out = cmd.output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn children_start_without_the_inits_blocked_signals() {
        // In a thread of its own: the mask is per thread and children inherit it.
        std::thread::spawn(|| {
            let mut mask = SigSet::empty();
            mask.add(Signal::SIGUSR2);
            mask.thread_block().unwrap();
            // Whether std clears it by itself differs between libcs and spawn paths.
            eprintln!("without: {}", child_sigblk(false));
            assert_eq!(child_sigblk(true), "SigBlk:\t0000000000000000");
        })
        .join()
        .unwrap();
    }
}
