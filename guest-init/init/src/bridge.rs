//! The workload's only network: each configured vsock port is bridged to a
//! guest-local TCP port (127.0.0.1), so an unmodified server inside the guest is
//! reachable from the host side of the VM, and only through it. There is no
//! virtio-net.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

use crate::config::PortConfig;
use crate::pid1::console;

/// How long a new vsock connection waits for the workload's TCP server to accept
/// (it may still be starting).
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// Counters of one bridge.
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// Connections accepted on the vsock side.
    pub connections: AtomicU64,
    /// Bytes host → workload.
    pub bytes_in: AtomicU64,
    /// Bytes workload → host.
    pub bytes_out: AtomicU64,
}

/// Binds every port's vsock listener now (so a bind failure is a boot failure), then
/// serves each in its own task.
pub fn start(ports: &[PortConfig]) -> Result<Vec<Arc<BridgeCounters>>, String> {
    let mut all = Vec::new();
    for p in ports {
        let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, p.vsock))
            .map_err(|e| format!("binding vsock port {}: {e}", p.vsock))?;
        let counters = Arc::new(BridgeCounters::default());
        all.push(counters.clone());
        tokio::spawn(serve(listener, *p, counters));
    }
    Ok(all)
}

async fn serve(listener: VsockListener, port: PortConfig, counters: Arc<BridgeCounters>) {
    loop {
        match listener.accept().await {
            Ok((vsock, peer)) => {
                counters.connections.fetch_add(1, Ordering::Relaxed);
                let counters = counters.clone();
                tokio::spawn(async move {
                    match connect_tcp(port.tcp).await {
                        Ok(tcp) => splice(vsock, tcp, &counters).await,
                        Err(e) => console(&format!(
                            "bridge vsock:{} -> 127.0.0.1:{}: connection from CID {} closed: {e}",
                            port.vsock,
                            port.tcp,
                            peer.cid()
                        )),
                    }
                });
            }
            Err(e) => {
                console(&format!("bridge vsock:{}: accept failed: {e}", port.vsock));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connect_tcp(port: u16) -> std::io::Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn splice(mut vsock: tokio_vsock::VsockStream, mut tcp: TcpStream, c: &BridgeCounters) {
    match tokio::io::copy_bidirectional_with_sizes(&mut vsock, &mut tcp, 64 * 1024, 64 * 1024).await
    {
        Ok((to_tcp, to_vsock)) => {
            c.bytes_in.fetch_add(to_tcp, Ordering::Relaxed);
            c.bytes_out.fetch_add(to_vsock, Ordering::Relaxed);
        }
        Err(e) => console(&format!("bridge connection ended: {e}")),
    }
}
