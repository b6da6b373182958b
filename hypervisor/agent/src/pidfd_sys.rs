//! Waiting for a process to exit through its pidfd on tokio's reactor.

use std::os::fd::OwnedFd;

/// Completes when the process behind `pidfd` has exited (the pidfd turns readable).
/// If the reactor refuses the fd, a blocking thread polls it instead.
pub async fn exited(pidfd: OwnedFd) -> std::io::Result<()> {
    // SAFETY: `pidfd` is an OwnedFd moved into the AsyncFd, so it stays open and
    // refers to the same pidfd until the AsyncFd is dropped; nothing else closes it.
    match unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    } {
        Ok(fd) => {
            let _ready = fd.readable().await?;
            Ok(())
        }
        Err(e) => {
            let (fd, err) = e.into_parts();
            tracing::warn!(error = %err, "pidfd not pollable on the reactor; waiting on a thread");
            tokio::task::spawn_blocking(move || {
                let mut fds = [rustix::event::PollFd::new(
                    &fd,
                    rustix::event::PollFlags::IN,
                )];
                loop {
                    match rustix::event::poll(&mut fds, None) {
                        Ok(n) if n > 0 => return Ok(()),
                        Ok(_) | Err(rustix::io::Errno::INTR) => continue,
                        Err(e) => return Err(std::io::Error::from(e)),
                    }
                }
            })
            .await
            .map_err(std::io::Error::other)?
        }
    }
}
