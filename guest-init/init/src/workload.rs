//! The tenant's workload: started jailed on the verified root, its stdout and stderr
//! forwarded byte-exact to the host channel (and the start of each to the console),
//! its end reported.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use bulwark_guest_protocol::{GuestMessage, Output, Stream, MAX_OUTPUT_CHUNK};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use crate::channel::Channel;
use crate::config::WorkloadConfig;
use crate::pid1::console;
use crate::sys::process::{spawn_jailed, Jail};

/// Bytes of workload output mirrored to the console per stream, at most (the serial
/// line is slow: 8 KiB took 3 s in the lab; the host channel gets everything).
const CONSOLE_MIRROR_BYTES: u64 = 1024;
/// How long an output chunk waits for room in the host channel's queue.
const OUTPUT_PATIENCE: Duration = Duration::from_secs(1);

/// Why the workload did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The program (`argv[0]`) is not on the root.
    #[error("workload {0} not found on the root filesystem")]
    NotFound(String),
    /// Anything else (permissions, exec format, the jail).
    #[error("starting workload {program}: {error}")]
    Other {
        /// argv[0].
        program: String,
        /// The error.
        error: std::io::Error,
    },
}

/// A started workload.
#[derive(Debug)]
pub struct Running {
    /// Its pid.
    pub pid: Pid,
    /// Output pumps; each ends at EOF and returns the bytes it dropped.
    pub pumps: Vec<tokio::task::JoinHandle<u64>>,
}

/// Starts the workload in `root` as configured.
pub fn start(w: &WorkloadConfig, root: &str, channel: &Channel) -> Result<Running, StartError> {
    let program = w.argv[0].clone();
    let mut cmd = Command::new(&program);
    cmd.args(&w.argv[1..])
        .env_clear()
        .envs(&w.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let jail = Jail {
        root: root.to_owned(),
        cwd: w.cwd.clone(),
        uid: w.uid,
        gid: w.gid,
        max_processes: w.max_processes,
    };
    // A missing working directory is not a missing program.
    let cwd_in_root = std::path::Path::new(root).join(w.cwd.trim_start_matches('/'));
    if !cwd_in_root.is_dir() {
        return Err(StartError::Other {
            program,
            error: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("working directory {} is not a directory on the root", w.cwd),
            ),
        });
    }
    let mut child = spawn_jailed(&mut cmd, &jail).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            StartError::NotFound(program.clone())
        } else {
            StartError::Other {
                program: program.clone(),
                error,
            }
        }
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(pump(OwnedFd::from(out), Stream::Stdout, channel.clone()));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(pump(OwnedFd::from(err), Stream::Stderr, channel.clone()));
    }
    // The child is reaped by PID 1's reaper (waitpid(-1)), not through `child`.
    drop(child);
    Ok(Running { pid, pumps })
}

fn pump(fd: OwnedFd, stream: Stream, channel: Channel) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            Ok(rx) => rx,
            Err(e) => {
                console(&format!("workload {stream:?}: {e}"));
                return 0;
            }
        };
        let mut buf = vec![0u8; MAX_OUTPUT_CHUNK];
        let mut offset = 0u64;
        let mut dropped = 0u64;
        loop {
            let n = match rx.read(&mut buf).await {
                Ok(0) => return dropped,
                Ok(n) => n,
                Err(e) => {
                    console(&format!("workload {stream:?}: read failed: {e}"));
                    return dropped;
                }
            };
            let data = &buf[..n];
            if offset < CONSOLE_MIRROR_BYTES {
                let shown = &data[..n.min((CONSOLE_MIRROR_BYTES - offset) as usize)];
                // Control characters (binary output) are shown as `.`.
                let text: String = String::from_utf8_lossy(shown)
                    .chars()
                    .map(|c| if c.is_control() && c != '\n' { '.' } else { c })
                    .collect();
                for line in text.lines() {
                    console(&format!("workload {}: {line}", stream_name(stream)));
                }
            }
            // Output waits up to a second for room in the shared part of the queue
            // (a slow host), then is dropped and counted for `Exit.output_dropped`.
            let mut msg = Some(GuestMessage::Output(Output {
                stream,
                offset,
                data: data.to_vec(),
            }));
            let give_up = tokio::time::Instant::now() + OUTPUT_PATIENCE;
            while let Some(m) = msg.take() {
                if channel.send_shared(m.clone()) {
                    break;
                }
                if tokio::time::Instant::now() >= give_up {
                    dropped += n as u64;
                    break;
                }
                msg = Some(m);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            offset += n as u64;
        }
    })
}

fn stream_name(s: Stream) -> &'static str {
    match s {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    }
}

/// `(code, signal)` of a wait status that ends the process, or `None`.
pub fn ended(status: &WaitStatus) -> Option<(Option<i32>, Option<Signal>)> {
    match *status {
        WaitStatus::Exited(_, code) => Some((Some(code), None)),
        WaitStatus::Signaled(_, sig, _) => Some((None, Some(sig))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_and_signal_statuses_are_told_apart() {
        let pid = Pid::from_raw(5);
        assert_eq!(ended(&WaitStatus::Exited(pid, 3)), Some((Some(3), None)));
        assert_eq!(
            ended(&WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some((None, Some(Signal::SIGKILL)))
        );
        assert_eq!(ended(&WaitStatus::Stopped(pid, Signal::SIGSTOP)), None);
    }
}
