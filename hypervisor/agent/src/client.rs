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
    send(io, what, req).await
}

/// Sends `req` on an open connection and reads the whole answer.
pub async fn send<T, B>(io: T, what: &str, req: hyper::Request<B>) -> Result<Response, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (method, path) = (req.method().clone(), req.uri().clone());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake on {what}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
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

/// `PUT path` with `file` as the body, streamed in 1 MiB chunks; `progress(sent,
/// total)` after each.
pub async fn upload_on<T>(
    io: T,
    what: &str,
    path: &str,
    file: &Path,
    mut progress: impl FnMut(u64, u64) + Send + 'static,
) -> Result<Response, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
{
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|e| format!("opening {}: {e}", file.display()))?;
    let total = f
        .metadata()
        .await
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    let chunks = futures_util::stream::unfold((f, 0u64), |(mut f, sent)| async move {
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), (f, sent + n as u64)))
            }
            Err(e) => Some((Err(e), (f, sent))),
        }
    });
    let mut sent = 0u64;
    let frames = chunks.map(move |c| {
        c.map(|b| {
            sent += b.len() as u64;
            progress(sent, total);
            hyper::body::Frame::data(Bytes::from(b))
        })
    });
    let req = hyper::Request::builder()
        .method("PUT")
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/octet-stream")
        .header("content-length", total)
        .body(http_body_util::StreamBody::new(frames))
        .map_err(|e| format!("building the request: {e}"))?;
    send(io, what, req).await
}

/// `upload_on` over a Unix socket.
pub async fn upload(
    sock: &Path,
    path: &str,
    file: &Path,
    progress: impl FnMut(u64, u64) + Send + 'static,
) -> Result<Response, String> {
    let stream = tokio::net::UnixStream::connect(sock)
        .await
        .map_err(|e| format!("connecting to {}: {e}", sock.display()))?;
    upload_on(
        TokioIo::new(stream),
        &sock.display().to_string(),
        path,
        file,
        progress,
    )
    .await
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
