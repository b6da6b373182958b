//! What needs `unsafe` beyond networking (`net_sys`): clearing a child's signal
//! mask between fork and exec.

#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

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
