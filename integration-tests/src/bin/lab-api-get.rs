//! Runs inside the lab machine (L1): `lab-api-get SOCKET PATH` sends `GET PATH` over
//! bulwark-vmm's REST API on the Unix socket SOCKET and prints the response body on
//! stdout (busybox has no Unix-socket HTTP client). Exit 0 on HTTP 200, 1 on any other
//! status or an I/O error (printed on stderr), 2 on bad arguments.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn get(sock: &str, path: &str) -> Result<(String, String), String> {
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

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [sock, path] = args.as_slice() else {
        eprintln!("usage: lab-api-get SOCKET PATH");
        return std::process::ExitCode::from(2);
    };
    match get(sock, path) {
        Ok((status, body)) => {
            println!("{body}");
            if status.split_whitespace().nth(1) == Some("200") {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("lab-api-get: {status}");
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("lab-api-get: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
