//! A VM's vsock ports exposed as TCP ports on the node: each TCP connection is joined
//! to a host-initiated vsock connection through the VMM's vsock Unix socket
//! (Firecracker's convention: write `CONNECT <port>\n`, read `OK <host port>\n`, then
//! the stream).

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::model::PortMap;

/// Binds every TCP port of `ports` on `addr` before the VMM starts (a port in use is
/// a conflict naming it).
pub async fn bind(
    addr: &str,
    ports: &[PortMap],
) -> Result<Vec<(PortMap, tokio::net::TcpListener)>> {
    let mut out = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let l = tokio::net::TcpListener::bind((addr, p.tcp))
            .await
            .map_err(|e| {
                Error::conflict(
                    format!("ports[{i}].tcp"),
                    format!("cannot listen on {addr}:{}: {e}", p.tcp),
                )
            })?;
        out.push((*p, l));
    }
    Ok(out)
}

/// Serves one exposed port until aborted.
pub async fn serve(listener: tokio::net::TcpListener, vsock_uds: PathBuf, port: u32) {
    loop {
        let Ok((tcp, remote)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let uds = vsock_uds.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(tcp, &uds, port).await {
                tracing::info!(%remote, port, error = %e, "vsock port connection ended");
            }
        });
    }
}

async fn forward(
    mut tcp: tokio::net::TcpStream,
    uds: &std::path::Path,
    port: u32,
) -> std::io::Result<()> {
    let mut v = tokio::net::UnixStream::connect(uds).await?;
    v.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // The answer line, at most 64 bytes, within 10 s.
    let mut line = Vec::new();
    let read_line = async {
        let mut b = [0u8; 1];
        while line.len() < 64 {
            if v.read(&mut b).await? == 0 {
                return Err(std::io::Error::other("the VMM closed the vsock connection"));
            }
            if b[0] == b'\n' {
                return Ok(());
            }
            line.push(b[0]);
        }
        Err(std::io::Error::other("the VMM's answer line is too long"))
    };
    tokio::time::timeout(Duration::from_secs(10), read_line)
        .await
        .map_err(|_| std::io::Error::other("no answer to CONNECT within 10 s"))??;
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!(
            "CONNECT {port} refused: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    tokio::io::copy_bidirectional(&mut tcp, &mut v).await?;
    Ok(())
}
