//! The same API over TCP with mutual TLS (rustls, TLS 1.3, ring): the server presents
//! its certificate and accepts only clients whose certificate chains to the
//! configured operators' CA. A verified client certificate is the authorization.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::{Extension, Router};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use sha2::Digest;

use crate::api::Peer;
use crate::error::{Error, Kind, Result};

/// Config `tls`: where to listen and the PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `ADDR:PORT`.
    pub listen: String,
    /// The server's certificate chain (PEM, leaf first).
    pub cert: std::path::PathBuf,
    /// The server's private key (PEM, PKCS#8 or SEC1).
    pub key: std::path::PathBuf,
    /// The CA(s) that issue operator client certificates (PEM).
    pub client_ca: std::path::PathBuf,
}

fn bad(field: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::bad(field, format!("{}: {e}", path.display()))
}

/// The ring provider, as the workspace's other rustls users (attestation's attested
/// TLS) have it (deprecated in rustls 0.23.48 for lacking post-quantum key exchange;
/// aws-lc-rs would add a C toolchain dependency).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(field, path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(field, path, e))?;
    if certs.is_empty() {
        return Err(bad(field, path, "no certificate in the file"));
    }
    Ok(certs)
}

fn roots(field: &str, path: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(field, path)? {
        roots.add(c).map_err(|e| bad(field, path, e))?;
    }
    Ok(roots)
}

/// The server side: our certificate, client certificates required and verified.
pub fn server_config(c: &TlsConfig) -> Result<Arc<rustls::ServerConfig>> {
    let chain = certs("tls.cert", &c.cert)?;
    let key = PrivateKeyDer::from_pem_file(&c.key).map_err(|e| bad("tls.key", &c.key, e))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots("tls.client_ca", &c.client_ca)?),
        provider(),
    )
    .build()
    .map_err(|e| bad("tls.client_ca", &c.client_ca, e))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::internal("tls", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("tls.key", &c.key, e))?;
    Ok(Arc::new(cfg))
}

/// The client side (bulwarkctl, tests): trust `ca` for the server, present `cert`/`key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let chain = certs("cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, e))?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::internal("tls", e.to_string()))?
        .with_root_certificates(roots("ca", ca)?)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad("key", cert, e))?;
    Ok(Arc::new(cfg))
}

/// Binds the TCP listener.
pub async fn bind(c: &TlsConfig) -> Result<tokio::net::TcpListener> {
    let addr: SocketAddr = c
        .listen
        .parse()
        .map_err(|e| Error::bad("tls.listen", format!("{:?}: {e}", c.listen)))?;
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::new(Kind::Internal, "tls.listen", format!("binding {addr}: {e}")))
}

/// Serves `router` on `listener` until `shutdown`: each connection's TLS handshake
/// (bounded to 10 s) runs in its own task; the verified client certificate's SHA-256
/// becomes the request's `Peer`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
            let fingerprint = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| hex::encode(sha2::Sha256::digest(c.as_ref())));
            let Some(fingerprint) = fingerprint else {
                return;
            };
            let peer = Peer {
                uid: None,
                gid: None,
                tls_client: Some(fingerprint),
            };
            let svc = hyper_util::service::TowerToHyperService::new(
                router.layer(Extension(ConnectInfo(peer))),
            );
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%remote, error = %e, "TLS connection ended");
            }
        });
    }
}

/// A mutual-TLS connection to `addr` (server name `server_name`).
pub async fn connect(
    addr: &str,
    server_name: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::result::Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("server name {server_name:?}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {addr}: {e}"))?;
    Ok(TokioIo::new(tls))
}

/// One request over mutual TLS to `addr` (server name `server_name`).
pub async fn request(
    addr: &str,
    server_name: &str,
    cfg: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: Option<String>,
) -> std::result::Result<crate::client::Response, String> {
    let io = connect(addr, server_name, cfg).await?;
    crate::client::request_on(io, &format!("{addr} (TLS)"), method, path, body).await
}
