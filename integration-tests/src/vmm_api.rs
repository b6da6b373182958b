//! A minimal HTTP/1.1 GET over bulwark-vmm's REST API on its Unix socket, for the
//! programs that run in L1 (busybox has no Unix-socket HTTP client).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// `GET path` on `sock`: the status line and the body.
pub fn get(sock: &str, path: &str) -> Result<(String, String), String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connecting to {sock}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(20))))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bulwark-vmm\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("sending the request: {e}"))?;
    let mut reply = Vec::new();
    s.take(16 << 20)
        .read_to_end(&mut reply)
        .map_err(|e| format!("reading the reply: {e}"))?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header in the reply: {reply:?}"))?;
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}
