//! The host side of vsock, the convention Firecracker users know:
//!
//! - A host program connects to the device's Unix socket `uds_path` and
//!   writes `CONNECT <port>\n`; the device asks the guest to accept a
//!   connection on `<port>` and, once it does, answers `OK <host port>\n`
//!   on the same socket, which then carries the stream.
//! - A guest connecting to the host (CID 2) on port `P` is connected to the
//!   Unix socket `<uds_path>_P`, where a host program listens.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Longest `CONNECT` line accepted, newline included.
pub const MAX_CONNECT_LINE: usize = 32;

/// A host connection that has not yet sent its whole `CONNECT` line.
#[derive(Debug)]
pub struct PendingHost {
    /// The socket, non-blocking.
    pub stream: UnixStream,
    line: Vec<u8>,
}

/// What reading a pending host connection gave.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeStep {
    /// Not complete yet.
    Incomplete,
    /// `CONNECT <port>` parsed.
    Connect(u32),
    /// Closed, or a malformed line; drop the connection.
    Refused(String),
}

impl PendingHost {
    /// Wraps an accepted socket (set non-blocking here).
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            line: Vec::new(),
        })
    }

    /// Reads what is there, one byte at a time so nothing after the line
    /// (the start of the stream) is consumed.
    pub fn read_step(&mut self) -> HandshakeStep {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return HandshakeStep::Refused("closed before CONNECT".into()),
                Ok(_) => {
                    self.line.push(byte[0]);
                    if byte[0] == b'\n' {
                        return parse_connect(&self.line);
                    }
                    if self.line.len() >= MAX_CONNECT_LINE {
                        return HandshakeStep::Refused("CONNECT line too long".into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return HandshakeStep::Incomplete
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return HandshakeStep::Refused(e.to_string()),
            }
        }
    }
}

/// Parses `CONNECT <port>\n`.
pub fn parse_connect(line: &[u8]) -> HandshakeStep {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t.trim_end_matches('\n'),
        Err(_) => return HandshakeStep::Refused("CONNECT line is not UTF-8".into()),
    };
    match text.strip_prefix("CONNECT ").map(str::parse::<u32>) {
        Some(Ok(port)) => HandshakeStep::Connect(port),
        _ => HandshakeStep::Refused(format!("expected `CONNECT <port>`, got {text:?}")),
    }
}

/// Connects to the Unix socket at `path` without blocking: a host listener
/// whose backlog is full refuses (`EAGAIN`) instead of stalling the I/O
/// worker.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    let addr = SocketAddrUnix::new(path)?;
    rustix::net::connect(&fd, &addr)?;
    Ok(UnixStream::from(fd))
}

/// The listener path for guest connections to host port `port`.
pub fn listener_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut p = uds_path.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52\n"), HandshakeStep::Connect(52));
        assert!(matches!(
            parse_connect(b"CONNECT -1\n"),
            HandshakeStep::Refused(_)
        ));
        assert!(matches!(
            parse_connect(b"CONNECT 99999999999\n"),
            HandshakeStep::Refused(_)
        ));
        assert!(matches!(
            parse_connect(b"connect 5\n"),
            HandshakeStep::Refused(_)
        ));
        assert!(matches!(
            parse_connect(b"\xff\n"),
            HandshakeStep::Refused(_)
        ));
        assert_eq!(
            listener_path(Path::new("/run/v.sock"), 7),
            PathBuf::from("/run/v.sock_7")
        );
    }
}
