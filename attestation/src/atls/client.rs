//! The client's side: a `rustls` certificate verifier that takes the
//! evidence out of the server's certificate, appraises it under the policy
//! with the client's nonce, checks that it binds the certificate's key, and
//! only then lets the handshake go on; the handshake signature is then
//! checked with that same key, which proves the peer holds the attested
//! guest's private key for this very handshake.

use super::extension::evidence_from_certificate;
use super::nonce::{fresh_nonce, nonce_to_sni, NONCE_LEN};
use super::{provider, AtlsError, Refusal};
use crate::checks::{Category, Check};
use crate::ear::TrustClaim;
use crate::evidence::appraise::VerifyOptions;
use crate::evidence::{parse_document, verify_document, EvidenceAppraisal, Policy};
use crate::time::VerificationTime;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, OtherError,
    SignatureScheme, StreamOwned,
};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the verifier leaves its verdict for the caller: `None` until the
/// server's certificate arrived; then the affirmed appraisal or the refusal.
pub type AppraisalSlot = Arc<Mutex<Option<Result<EvidenceAppraisal, Refusal>>>>;

/// What the client brings besides the policy.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The nonce to send (default: a fresh random one; set it only in tests).
    pub nonce: Option<[u8; NONCE_LEN]>,
    /// Verification time (default: the handshake's clock).
    pub at: Option<VerificationTime>,
    /// Connect, read and write timeout.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            nonce: None,
            at: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// The certificate verifier of one handshake (it holds that handshake's nonce).
#[derive(Debug)]
pub struct AttestedServerVerifier {
    policy: Arc<Policy>,
    nonce: [u8; NONCE_LEN],
    at: Option<VerificationTime>,
    provider: Arc<CryptoProvider>,
    slot: AppraisalSlot,
}

impl AttestedServerVerifier {
    pub fn new(policy: Arc<Policy>, nonce: [u8; NONCE_LEN], at: Option<VerificationTime>) -> Self {
        AttestedServerVerifier {
            policy,
            nonce,
            at,
            provider: provider(),
            slot: Arc::new(Mutex::new(None)),
        }
    }

    pub fn slot(&self) -> AppraisalSlot {
        self.slot.clone()
    }

    /// Appraise a server certificate (DER) for this handshake.
    pub fn appraise(&self, cert_der: &[u8], now: UnixTime) -> Result<EvidenceAppraisal, Refusal> {
        let refuse = |check: &str, detail: String| Refusal {
            failed: vec![check.to_string()],
            detail,
            appraisal: None,
        };
        let found = evidence_from_certificate(cert_der)
            .map_err(|e| refuse("atls-extension", e.to_string()))?;
        let at = self.at.unwrap_or_else(|| {
            VerificationTime::from_unix_seconds(i64::try_from(now.as_secs()).unwrap_or(i64::MAX))
        });
        let opts = VerifyOptions {
            nonce: Some(self.nonce.to_vec()),
            at,
        };
        let mut appraisal = verify_document(&found.evidence, &self.policy, &opts)
            .map_err(|e| refuse("evidence-format", e.to_string()))?;
        let bound = parse_document(&found.evidence)
            .map_err(|e| refuse("evidence-format", e.to_string()))?
            .body
            .freshness
            .tls_key_sha256
            .map(|b| b.0);
        let cert_key = hex::encode(found.spki_sha256);
        let check = match bound {
            Some(b) if b[..] == found.spki_sha256[..] => Check::passed(
                "atls-key-binding",
                Category::Binding,
                format!("evidence binds the certificate's key (SHA-256 of SPKI {cert_key})"),
            ),
            Some(b) => Check::failed(
                "atls-key-binding",
                Category::Binding,
                format!(
                    "evidence binds TLS key {}, the certificate's key is {cert_key}",
                    hex::encode(b)
                ),
            ),
            None => Check::failed(
                "atls-key-binding",
                Category::Binding,
                format!("evidence binds no TLS key; the certificate's key is {cert_key}"),
            ),
        };
        push_node(&mut appraisal, check);
        if let Some(node) = appraisal.subjects.iter_mut().find(|s| s.name == "node") {
            node.claim("atls_certificate_key_sha256", cert_key);
        }
        if appraisal.is_ok() {
            Ok(appraisal)
        } else {
            let failed: Vec<String> = appraisal
                .failures()
                .map(|(_, c)| c.name.to_string())
                .collect();
            Err(Refusal {
                detail: format!(
                    "the evidence in the server's certificate fails: {}",
                    failed.join(", ")
                ),
                failed,
                appraisal: Some(Box::new(appraisal)),
            })
        }
    }

    fn record(&self, r: Result<EvidenceAppraisal, Refusal>) {
        if let Ok(mut g) = self.slot.lock() {
            *g = Some(r);
        }
    }
}

fn push_node(a: &mut EvidenceAppraisal, check: Check) {
    if let Some(node) = a.subjects.iter_mut().find(|s| s.name == "node") {
        node.push(check, Some(TrustClaim::InstanceIdentity));
    }
}

fn refusal_error(r: &Refusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r.clone()))))
}

impl ServerCertVerifier for AttestedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = self.appraise(end_entity.as_ref(), now);
        let out = match &r {
            Ok(_) => Ok(ServerCertVerified::assertion()),
            Err(refusal) => Err(refusal_error(refusal)),
        };
        self.record(r);
        out
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "attested TLS requires TLS 1.3".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let result = rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        );
        if let Ok(mut g) = self.slot.lock() {
            let prev = g.take();
            *g = match (prev, &result) {
                (Some(Ok(mut a)), Ok(_)) => {
                    push_node(
                        &mut a,
                        Check::passed(
                            "atls-handshake-signature",
                            Category::Signature,
                            format!(
                                "{:?} by the certificate's key over this handshake",
                                dss.scheme
                            ),
                        ),
                    );
                    Some(Ok(a))
                }
                (Some(Ok(mut a)), Err(e)) => {
                    push_node(
                        &mut a,
                        Check::failed(
                            "atls-handshake-signature",
                            Category::Signature,
                            e.to_string(),
                        ),
                    );
                    Some(Err(Refusal {
                        failed: vec!["atls-handshake-signature".into()],
                        detail: format!("the handshake signature does not verify: {e}"),
                        appraisal: Some(Box::new(a)),
                    }))
                }
                (other, _) => other,
            };
        }
        result
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client configuration for one attested handshake with `nonce`,
/// and the slot its verifier fills. Send the SNI [`nonce_to_sni`]`(nonce)`.
pub fn client_config(
    policy: Arc<Policy>,
    nonce: [u8; NONCE_LEN],
    at: Option<VerificationTime>,
) -> Result<(Arc<ClientConfig>, AppraisalSlot), AtlsError> {
    let verifier = Arc::new(AttestedServerVerifier::new(policy, nonce, at));
    let slot = verifier.slot();
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((Arc::new(config), slot))
}

/// Connect to `addr` (`HOST:PORT`), run an attested TLS 1.3 handshake with a
/// fresh nonce, and return the stream and the affirmed appraisal. A refused
/// server gets no application byte: the handshake stops at its certificate.
pub fn connect(
    addr: &str,
    policy: &Policy,
    options: &ConnectOptions,
) -> Result<(StreamOwned<ClientConnection, TcpStream>, EvidenceAppraisal), AtlsError> {
    let nonce = match options.nonce {
        Some(n) => n,
        None => fresh_nonce()?,
    };
    let (config, slot) = client_config(Arc::new(policy.clone()), nonce, options.at)?;
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| AtlsError::Argument(format!("{addr}: {e}")))?
        .collect();
    let mut last = None;
    let mut sock = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, options.timeout) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut sock = match (sock, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(AtlsError::Io(e)),
        (None, None) => return Err(AtlsError::Argument(format!("{addr}: no address"))),
    };
    sock.set_read_timeout(Some(options.timeout))?;
    sock.set_write_timeout(Some(options.timeout))?;
    let name = ServerName::try_from(nonce_to_sni(&nonce))
        .map_err(|e| AtlsError::Argument(format!("SNI: {e}")))?;
    let mut conn = ClientConnection::new(config, name)?;
    let taken = |slot: &AppraisalSlot| slot.lock().ok().and_then(|mut g| g.take());
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            return Err(match taken(&slot) {
                Some(Err(refusal)) => AtlsError::Refused(refusal),
                _ => AtlsError::Io(e),
            });
        }
    }
    match taken(&slot) {
        Some(Ok(appraisal)) => Ok((StreamOwned::new(conn, sock), appraisal)),
        Some(Err(refusal)) => Err(AtlsError::Refused(refusal)),
        None => Err(AtlsError::Tls(rustls::Error::General(
            "the handshake completed without an appraisal".into(),
        ))),
    }
}
