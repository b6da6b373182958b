//! The workload's only network: each configured vsock port is bridged to a
//! guest-local TCP port (127.0.0.1), so an unmodified server inside the guest is
//! reachable from the host side of the VM, and only through it. There is no
//! virtio-net.
//!
//! A port is attested TLS unless its config says `"tls": "none"`
//! (`docs/evidence.md`, "Attested TLS"): bulwark-init reads the client's
//! ClientHello, takes the client's nonce from its SNI, asks the host over the host
//! channel for an evidence document bound to that nonce and to the guest's TLS key
//! (generated here at boot; it never leaves the guest), answers with a certificate
//! carrying the evidence, and only once the handshake has completed (the client has
//! appraised the evidence and sent its Finished) opens the TCP connection to the
//! workload. A client that refuses the evidence never reaches the workload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulwark_attestation::atls::{nonce_from_sni, server_config_for_certificate, AtlsKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

use crate::channel::Channel;
use crate::config::{PortConfig, PortTls};
use crate::pid1::console;

/// How long a new vsock connection waits for the workload's TCP server to accept
/// (it may still be starting).
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// The longest an attested TLS handshake may take, evidence included (a TPM quote
/// on the host takes a fraction of a second; a peer that stalls is dropped).
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(60);
/// Attested TLS handshakes in progress at once, over all ports; a connection beyond
/// this is closed at once.
const MAX_HANDSHAKES: usize = 64;
/// Refused handshakes logged on the console: the first this many, then one in 1000.
const LOGGED_REFUSALS: u64 = 32;

/// Counters of one bridge.
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// Connections accepted on the vsock side.
    pub connections: AtomicU64,
    /// Attested TLS handshakes that did not complete (no byte reached the workload).
    pub refused: AtomicU64,
    /// Bytes host → workload.
    pub bytes_in: AtomicU64,
    /// Bytes workload → host.
    pub bytes_out: AtomicU64,
}

/// What the attested ports share: the guest's TLS key and the host channel that
/// brings evidence.
struct AttestedTls {
    key: AtlsKey,
    channel: Channel,
    handshakes: Semaphore,
}

/// Binds every port's vsock listener now (so a bind failure is a boot failure), then
/// serves each in its own task. Makes the guest's TLS key when a port is attested.
pub fn start(ports: &[PortConfig], channel: &Channel) -> Result<Vec<Arc<BridgeCounters>>, String> {
    let attested = match ports.iter().any(|p| p.tls == PortTls::Attested) {
        true => Some(Arc::new(AttestedTls {
            key: AtlsKey::generate().map_err(|e| format!("making the TLS key: {e}"))?,
            channel: channel.clone(),
            handshakes: Semaphore::new(MAX_HANDSHAKES),
        })),
        false => None,
    };
    let mut all = Vec::new();
    for p in ports {
        let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, p.vsock))
            .map_err(|e| format!("binding vsock port {}: {e}", p.vsock))?;
        let counters = Arc::new(BridgeCounters::default());
        all.push(counters.clone());
        let tls = match p.tls {
            PortTls::Attested => attested.clone(),
            PortTls::None => None,
        };
        tokio::spawn(serve(listener, *p, counters, tls));
    }
    Ok(all)
}

async fn serve(
    listener: VsockListener,
    port: PortConfig,
    counters: Arc<BridgeCounters>,
    tls: Option<Arc<AttestedTls>>,
) {
    loop {
        match listener.accept().await {
            Ok((vsock, peer)) => {
                counters.connections.fetch_add(1, Ordering::Relaxed);
                let counters = counters.clone();
                let tls = tls.clone();
                let from = format!(
                    "bridge vsock:{} -> 127.0.0.1:{}: connection from CID {}",
                    port.vsock,
                    port.tcp,
                    peer.cid()
                );
                tokio::spawn(bridge_one(vsock, from, port.tcp, counters, tls));
            }
            Err(e) => {
                console(&format!("bridge vsock:{}: accept failed: {e}", port.vsock));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection: through the attested TLS handshake when `tls` is set, then to
/// the workload's TCP port, and spliced until both sides close.
async fn bridge_one<S>(
    outside: S,
    from: String,
    tcp_port: u16,
    counters: Arc<BridgeCounters>,
    tls: Option<Arc<AttestedTls>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tls {
        None => match connect_tcp(tcp_port).await {
            Ok(tcp) => splice(outside, tcp, &counters).await,
            Err(e) => console(&format!("{from} closed: {e}")),
        },
        Some(tls) => match tls.handshake(outside).await {
            Ok(stream) => match connect_tcp(tcp_port).await {
                Ok(tcp) => splice(stream, tcp, &counters).await,
                Err(e) => console(&format!("{from} closed: {e}")),
            },
            Err(e) => {
                let n = counters.refused.fetch_add(1, Ordering::Relaxed);
                if n < LOGGED_REFUSALS || n.is_multiple_of(1000) {
                    console(&format!(
                        "{from}: attested TLS handshake not completed, nothing reached the workload: {e}"
                    ));
                }
            }
        },
    }
}

impl AttestedTls {
    /// One attested TLS handshake, bounded by [`HANDSHAKE_DEADLINE`].
    async fn handshake<S>(&self, outside: S) -> Result<TlsStream<S>, String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let _slot = self.handshakes.try_acquire().map_err(|_| {
            format!("{MAX_HANDSHAKES} handshakes already in progress; connection closed")
        })?;
        tokio::time::timeout(HANDSHAKE_DEADLINE, self.handshake_inner(outside))
            .await
            .map_err(|_| format!("not done within {} s", HANDSHAKE_DEADLINE.as_secs()))?
    }

    async fn handshake_inner<S>(&self, outside: S) -> Result<TlsStream<S>, String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), outside)
            .await
            .map_err(|e| format!("reading the ClientHello: {e}"))?;
        let sni = start
            .client_hello()
            .server_name()
            .map(str::to_owned)
            .ok_or("the ClientHello has no SNI (attested TLS carries the client's nonce there)")?;
        let nonce = nonce_from_sni(&sni).map_err(|e| e.to_string())?;
        let evidence = self.evidence(&nonce).await?;
        let certified = self
            .key
            .certified_key(Some(&evidence))
            .map_err(|e| e.to_string())?;
        let config = server_config_for_certificate(certified).map_err(|e| e.to_string())?;
        start
            .into_stream(config)
            .await
            .map_err(|e| format!("handshake: {e}"))
    }

    /// The host's evidence for `nonce` and this key.
    async fn evidence(&self, nonce: &[u8]) -> Result<Vec<u8>, String> {
        let (request, answer) = self
            .channel
            .request_evidence(nonce, self.key.spki_sha256())?;
        // Dropped when the handshake's deadline passes: forget the request then too.
        struct Forget<'a>(&'a Channel, u32);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.forget_evidence(self.1);
            }
        }
        let _forget = Forget(&self.channel, request);
        match answer.await {
            Ok(answer) => answer,
            Err(_) => Err("the host channel dropped the evidence request".into()),
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

async fn splice<S>(mut outside: S, mut tcp: TcpStream, c: &BridgeCounters)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional_with_sizes(&mut outside, &mut tcp, 64 * 1024, 64 * 1024)
        .await
    {
        Ok((to_tcp, to_outside)) => {
            c.bytes_in.fetch_add(to_tcp, Ordering::Relaxed);
            c.bytes_out.fetch_add(to_outside, Ordering::Relaxed);
        }
        Err(e) => console(&format!("bridge connection ended: {e}")),
    }
}

#[cfg(test)]
mod tests {
    //! The attested bridge end to end in one process: a host thread answers the
    //! channel's evidence requests, the client is bulwark-attestation's own
    //! (`atls::connect`, the code behind `bulwark-verify connect`), TCP stands in
    //! for vsock, and a counting echo server for the workload.
    use super::*;
    use crate::channel::PendingQueue;
    use crate::stop::StopRequest;
    use bulwark_attestation::atls::{self, AtlsError, ConnectOptions};
    use bulwark_attestation::evidence::document::{ImageId, Isolation, Launch};
    use bulwark_attestation::evidence::{
        build_evidence, EvidenceInputs, EvidenceSigningKey, Policy,
    };
    use bulwark_guest_protocol::{EvidenceChunk, GuestMessage, HostMessage};
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicUsize;

    const SIGNER: [u8; 32] = [0x11; 32];
    const MEASUREMENT: [u8; 48] = [0x44; 48];

    fn evidence(nonce: &[u8], tls_key_sha256: &[u8], key: &EvidenceSigningKey) -> Vec<u8> {
        let image = |name: &str| ImageId {
            name: name.into(),
            version: 1,
            manifest_sha384: vec![0x55; 48].into(),
            signer_key_ids: vec![SIGNER.to_vec().into()],
        };
        let inputs = EvidenceInputs {
            node_image: image("node"),
            tpm: None,
            launch: Launch {
                measurement: MEASUREMENT.to_vec().into(),
                image: Some(image("tenant")),
                vcpus: 1,
                memory_bytes: 64 << 20,
                cpuid_policy: "bulwark-default-v1".into(),
                boot_mode: "signed-bundle/long64".into(),
                unknown: vec![],
            },
            isolation: Isolation {
                source: "test".into(),
                single_tenant: None,
                devices: vec![],
                unknown: vec!["single_tenant".into()],
            },
            tee: None,
            gpus: vec![],
            nonce: nonce.to_vec(),
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            tls_key_sha256: Some(tls_key_sha256.to_vec()),
        };
        build_evidence(&inputs, key).unwrap()
    }

    /// Plays the host until the queue is quiet: every evidence request answered in
    /// chunks, bound to another key when `other_key`.
    fn host(ch: Channel, q: PendingQueue, other_key: bool) -> std::thread::JoinHandle<usize> {
        std::thread::spawn(move || {
            let key = EvidenceSigningKey::generate().unwrap();
            let mut answered = 0;
            while let Some(m) = q.next_message(Duration::from_secs(3)) {
                if let GuestMessage::EvidenceRequest(r) = m {
                    let tls_key = if other_key {
                        vec![0x77; 32]
                    } else {
                        r.tls_key_sha256
                    };
                    for c in EvidenceChunk::split(r.request, &evidence(&r.nonce, &tls_key, &key)) {
                        ch.handle(HostMessage::Evidence(c));
                    }
                    answered += 1;
                }
            }
            answered
        })
    }

    /// A workload that echoes and counts the connections that reach it.
    fn workload() -> (u16, Arc<AtomicUsize>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = std::io::copy(&mut r, &mut &s);
                });
            }
        });
        (port, seen)
    }

    /// One client connection through an attested bridge: what came back, or why not.
    async fn through_bridge(other_key: bool) -> (Result<Vec<u8>, AtlsError>, usize, usize) {
        let (channel, queue) = Channel::new(Arc::new(StopRequest::default()));
        let host = host(channel.clone(), queue, other_key);
        let (tcp_port, reached) = workload();
        let tls = Arc::new(AttestedTls {
            key: AtlsKey::generate().unwrap(),
            channel,
            handshakes: Semaphore::new(MAX_HANDSHAKES),
        });
        let outside = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = outside.local_addr().unwrap().to_string();
        let counters = Arc::new(BridgeCounters::default());
        let c = counters.clone();
        let bridge = tokio::spawn(async move {
            let (s, _) = outside.accept().await.unwrap();
            bridge_one(s, "test".into(), tcp_port, c, Some(tls)).await;
        });
        let policy = Policy::parse(
            &format!(
                "allow_software_key = true\n[node]\nimage_signers = [\"{s}\"]\n\
                 [vm]\nimage_signers = [\"{s}\"]\nmeasurements = [\"{m}\"]\n",
                s = hex::encode(SIGNER),
                m = hex::encode(MEASUREMENT)
            ),
            std::path::Path::new("."),
        )
        .unwrap();
        let client = tokio::task::spawn_blocking(move || {
            let options = ConnectOptions {
                nonce: None,
                at: None,
                timeout: Duration::from_secs(20),
            };
            let (mut stream, _appraisal) = atls::connect(&addr, &policy, &options)?;
            stream.write_all(b"to the workload")?;
            stream.conn.send_close_notify();
            stream.flush()?;
            let mut back = Vec::new();
            let _ = stream.read_to_end(&mut back);
            Ok(back)
        });
        let got = client.await.unwrap();
        bridge.await.unwrap();
        let answered = host.join().unwrap();
        (got, reached.load(Ordering::SeqCst), answered)
    }

    #[tokio::test]
    async fn an_affirmed_handshake_reaches_the_workload() {
        let (got, reached, answered) = through_bridge(false).await;
        assert_eq!(got.unwrap(), b"to the workload");
        assert_eq!((reached, answered), (1, 1));
    }

    #[tokio::test]
    async fn evidence_for_another_key_never_reaches_the_workload() {
        let (got, reached, answered) = through_bridge(true).await;
        match got {
            Err(AtlsError::Refused(r)) => {
                assert!(r.failed.iter().any(|f| f.contains("key-binding")), "{r}")
            }
            other => panic!("not refused: {other:?}"),
        }
        assert_eq!((reached, answered), (0, 1));
    }
}
