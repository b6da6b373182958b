//! bulwarkd's `GET /health` over its Unix API socket, with std only: this init is a
//! small static binary and bulwark-agent's client (hyper, tokio) would link the
//! whole agent, libtss2 included.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The agent's health route (hypervisor/agent/src/api.rs, docs/agent.md).
pub const HEALTH_PATH: &str = "/health";

/// The answer's status code and body, or why there is none.
pub fn get(sock: &Path, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut stream =
        UnixStream::connect(sock).map_err(|e| format!("connecting to {}: {e}", sock.display()))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("setting timeouts: {e}"))?;
    // One write: `write!` on the socket would send the pieces of the format one by
    // one, and a server that answers after its first read then sees a broken pipe.
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending GET {path}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut answer)
        .map_err(|e| format!("reading the answer to GET {path}: {e}"))?;
    parse_response(&answer)
}

/// Status code and body of a whole HTTP/1.1 response (`Content-Length` or
/// connection-close framing; a chunked body is returned as is).
pub fn parse_response(bytes: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete HTTP header in {} bytes", bytes.len()))?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let code = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .map_err(|_| format!("bad status line {status_line:?}"))?,
        _ => return Err(format!("bad status line {status_line:?}")),
    };
    Ok((code, body.to_owned()))
}

/// Whether an answer to `GET /health` says healthy: 200 with `"status": "ready"`.
pub fn is_healthy(code: u16, body: &str) -> bool {
    code == 200
        && serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.get("status")
                    .and_then(|s| s.as_str())
                    .map(|s| s == "ready")
            })
            .unwrap_or(false)
}

/// One health probe: `Ok(())` when healthy, else why not.
pub fn probe(sock: &Path) -> Result<(), String> {
    let (code, body) = get(sock, HEALTH_PATH, Duration::from_secs(2))?;
    if is_healthy(code, &body) {
        Ok(())
    } else {
        Err(format!("GET /health: {code} {}", body.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn responses_parse() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 18\r\n\r\n{\"status\":\"ready\"}";
        let (code, body) = parse_response(ok).unwrap();
        assert_eq!(code, 200);
        assert!(is_healthy(code, &body));
        assert!(!is_healthy(503, &body));
        assert!(!is_healthy(200, "{\"status\":\"starting\"}"));
        assert!(!is_healthy(200, "ready"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n")
            .unwrap_err()
            .contains("status line"));
    }

    #[test]
    fn a_probe_talks_http_over_the_socket() {
        let sock =
            std::env::temp_dir().join(format!("node-init-health-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in ["{\"status\":\"ready\"}", "{\"status\":\"down\"}"] {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).unwrap();
                requests.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                )
                .unwrap();
            }
            requests
        });
        assert_eq!(probe(&sock), Ok(()));
        let err = probe(&sock).unwrap_err();
        assert!(err.contains("200") && err.contains("down"), "{err}");
        let requests = server.join().unwrap();
        assert!(
            requests[0].starts_with("GET /health HTTP/1.1\r\n"),
            "{requests:?}"
        );
        std::fs::remove_file(&sock).unwrap();
        let err = probe(&sock).unwrap_err();
        assert!(err.contains("connecting to"), "{err}");
    }
}
