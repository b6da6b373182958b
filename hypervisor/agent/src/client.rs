//! A minimal HTTP/1.1 client over a Unix socket (hyper): bulwarkctl → bulwarkd and
//! bulwarkd → each bulwark-vmm.

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// A response: status and whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One request on a fresh connection. `Err` is a transport failure (no socket, no
/// answer), with the socket named.
pub async fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<Response, String> {
    let stream = tokio::net::UnixStream::connect(sock)
        .await
        .map_err(|e| format!("connecting to {}: {e}", sock.display()))?;
    request_on(
        TokioIo::new(stream),
        &sock.display().to_string(),
        method,
        path,
        body,
    )
    .await
}

/// One request on an open connection (`what` names it in errors).
pub async fn request_on<T>(
    io: T,
    what: &str,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<Response, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake on {what}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("building the request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{method} {path} on {what}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer to {method} {path}: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(Response { status, body })
}

/// `request` from synchronous code (bulwarkctl, tests): its own small runtime.
pub fn blocking(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<Response, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    rt.block_on(request(sock, method, path, body))
}
