//! The guest's side: its TLS key, a certificate resolver that reads the
//! client's nonce from the SNI and asks the evidence source for a document
//! bound to that nonce and to the key, and the `rustls` server configuration.
//! bulwark-init's vsock bridge terminates TLS with it and passes plaintext on
//! to the workload on loopback, so an unmodified workload gets attested TLS.

use super::extension::{
    encode_extension_value, spki_sha256, CMW_EXTENSION_OID, MAX_CERT_EVIDENCE_LEN,
};
use super::nonce::{nonce_from_sni, NONCE_LEN};
use super::{provider, AtlsError};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::ServerConfig;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a certificate made for one nonce is reused for the same nonce.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most certificates kept (one per recent nonce).
pub const CACHE_CAPACITY: usize = 32;

/// The evidence producer: given the client's nonce and SHA-256 of the
/// certificate's SubjectPublicKeyInfo, a Bulwark evidence document (tagged
/// COSE_Sign1) whose `freshness.nonce` and `freshness.tls_key_sha256` are
/// exactly these. In a guest this asks the node agent (TPM quote over the
/// binding hash) or the TEE.
pub type EvidenceSource = dyn Fn(&[u8], [u8; 32]) -> EvidenceResult + Send + Sync;

/// One cached certificate: the nonce it was made for, when, and the key.
type CacheEntry = ([u8; NONCE_LEN], Instant, Arc<CertifiedKey>);

/// What an evidence source returns: the evidence document, or why not.
pub type EvidenceResult = Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>;

/// The guest's TLS key: ECDSA P-256 or P-384, generated in the guest (it
/// never leaves it).
pub struct AtlsKey {
    pkcs8: Vec<u8>,
    key_pair: KeyPair,
    signing: Arc<dyn SigningKey>,
    spki_der: Vec<u8>,
}

impl fmt::Debug for AtlsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtlsKey")
            .field("spki_sha256", &hex::encode(self.spki_sha256()))
            .finish_non_exhaustive()
    }
}

impl AtlsKey {
    /// A fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, AtlsError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .map_err(|_| AtlsError::Server("cannot generate a P-256 key".into()))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// An ECDSA P-256 or P-384 key in PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, AtlsError> {
        let algs: [&'static SignatureAlgorithm; 2] = [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ];
        let key_pair = algs
            .iter()
            .find_map(|alg| {
                KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), alg).ok()
            })
            .ok_or_else(|| {
                AtlsError::Argument("TLS key: not an ECDSA P-256 or P-384 PKCS#8 key".into())
            })?;
        let signing = rustls::crypto::ring::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(der.to_vec()),
        ))
        .map_err(|e| AtlsError::Argument(format!("TLS key: {e}")))?;
        let spki_der = key_pair.public_key_der();
        Ok(AtlsKey {
            pkcs8: der.to_vec(),
            key_pair,
            signing,
            spki_der,
        })
    }

    /// The private key, PKCS#8 DER.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The SubjectPublicKeyInfo DER the certificate carries.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// SHA-256 of [`Self::spki_der`]: what the evidence's
    /// `freshness.tls_key_sha256` must hold.
    pub fn spki_sha256(&self) -> [u8; 32] {
        spki_sha256(&self.spki_der)
    }

    /// A self-signed certificate for this key carrying `evidence` in the CMW
    /// extension (none: no extension, for tests of the refusal).
    pub fn certificate(
        &self,
        evidence: Option<&[u8]>,
    ) -> Result<CertificateDer<'static>, AtlsError> {
        let err = |e: rcgen::Error| AtlsError::Server(format!("certificate: {e}"));
        let mut params =
            CertificateParams::new(vec![super::nonce::SNI_SUFFIX.to_string()]).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Bulwark attested TLS");
        params.distinguished_name = dn;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(1);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if let Some(ev) = evidence {
            if ev.len() > MAX_CERT_EVIDENCE_LEN {
                return Err(AtlsError::Server(format!(
                    "evidence is {} bytes; at most {MAX_CERT_EVIDENCE_LEN} fit in a TLS certificate",
                    ev.len()
                )));
            }
            let ext =
                CustomExtension::from_oid_content(CMW_EXTENSION_OID, encode_extension_value(ev));
            // from_oid_content makes a non-critical extension (RFC 9999: SHOULD NOT be critical).
            params.custom_extensions.push(ext);
        }
        Ok(params
            .self_signed(&self.key_pair)
            .map_err(err)?
            .der()
            .clone())
    }

    /// The certificate and signing key rustls serves.
    pub fn certified_key(&self, evidence: Option<&[u8]>) -> Result<Arc<CertifiedKey>, AtlsError> {
        Ok(Arc::new(CertifiedKey::new(
            vec![self.certificate(evidence)?],
            self.signing.clone(),
        )))
    }
}

/// Resolves each handshake's certificate: nonce from the SNI, evidence for
/// (nonce, key) from the source, a certificate carrying it. A handshake
/// without a valid nonce SNI, or whose evidence cannot be produced, is
/// aborted (no certificate: rustls sends a handshake_failure alert); the
/// reason is kept in [`Self::last_error`].
pub struct AttestedCertResolver {
    key: AtlsKey,
    source: Box<EvidenceSource>,
    cache: Mutex<VecDeque<CacheEntry>>,
    last_error: Mutex<Option<String>>,
}

impl fmt::Debug for AttestedCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedCertResolver")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl AttestedCertResolver {
    pub fn new<F>(key: AtlsKey, source: F) -> Self
    where
        F: Fn(&[u8], [u8; 32]) -> EvidenceResult + Send + Sync + 'static,
    {
        AttestedCertResolver {
            key,
            source: Box::new(source),
            cache: Mutex::new(VecDeque::new()),
            last_error: Mutex::new(None),
        }
    }

    pub fn key(&self) -> &AtlsKey {
        &self.key
    }

    /// Why the last aborted handshake got no certificate.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }

    /// The certificate for this SNI (the nonce in it), from the cache or made now.
    pub fn certified_key_for_sni(&self, sni: Option<&str>) -> Result<Arc<CertifiedKey>, AtlsError> {
        let sni = sni.ok_or_else(|| {
            AtlsError::Argument(
                "the ClientHello has no SNI (attested TLS carries the nonce there)".into(),
            )
        })?;
        let nonce = nonce_from_sni(sni)?;
        if let Some(ck) = self.cached(&nonce) {
            return Ok(ck);
        }
        // Produced outside the lock: a TPM quote takes a while.
        let evidence = (self.source)(&nonce, self.key.spki_sha256())
            .map_err(|e| AtlsError::Server(format!("evidence source: {e}")))?;
        let ck = self.key.certified_key(Some(&evidence))?;
        if let Ok(mut c) = self.cache.lock() {
            c.push_back((nonce, Instant::now(), ck.clone()));
            while c.len() > CACHE_CAPACITY {
                c.pop_front();
            }
        }
        Ok(ck)
    }

    fn cached(&self, nonce: &[u8; NONCE_LEN]) -> Option<Arc<CertifiedKey>> {
        let mut c = self.cache.lock().ok()?;
        let now = Instant::now();
        c.retain(|(_, t, _)| now.saturating_duration_since(*t) < CACHE_TTL);
        c.iter()
            .find(|(n, _, _)| n == nonce)
            .map(|(_, _, ck)| ck.clone())
    }
}

impl ResolvesServerCert for AttestedCertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.certified_key_for_sni(client_hello.server_name()) {
            Ok(ck) => Some(ck),
            Err(e) => {
                if let Ok(mut g) = self.last_error.lock() {
                    *g = Some(e.to_string());
                }
                None
            }
        }
    }
}

/// The guest's TLS 1.3 server configuration: every handshake gets a
/// certificate for `key` carrying evidence from `source` for the client's
/// nonce and this key.
pub fn server_config_for<F>(key: AtlsKey, source: F) -> Result<Arc<ServerConfig>, AtlsError>
where
    F: Fn(&[u8], [u8; 32]) -> EvidenceResult + Send + Sync + 'static,
{
    server_config_with(Arc::new(AttestedCertResolver::new(key, source)))
}

/// [`server_config_for`] with a resolver the caller keeps (for `last_error`).
pub fn server_config_with(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, AtlsError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    Ok(Arc::new(config))
}

/// A TLS 1.3 server configuration that presents exactly `certified_key`:
/// for servers that read the ClientHello first (tokio-rustls'
/// `LazyConfigAcceptor`), fetch the evidence for its nonce without blocking,
/// and then finish the handshake with the certificate made for it
/// ([`AtlsKey::certified_key`]).
pub fn server_config_for_certificate(
    certified_key: Arc<CertifiedKey>,
) -> Result<Arc<ServerConfig>, AtlsError> {
    server_config_with(Arc::new(rustls::sign::SingleCertAndKey::from(
        certified_key,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_evidence_and_key() {
        let key = AtlsKey::generate().unwrap();
        let cert = key.certificate(Some(b"not really evidence")).unwrap();
        let got = super::super::extension::evidence_from_certificate(cert.as_ref()).unwrap();
        assert_eq!(got.evidence, b"not really evidence");
        assert_eq!(got.spki_sha256, key.spki_sha256());
        let again = AtlsKey::from_pkcs8(key.pkcs8()).unwrap();
        assert_eq!(again.spki_der(), key.spki_der());
        assert!(AtlsKey::from_pkcs8(b"junk").is_err());
        let plain = key.certificate(None).unwrap();
        assert_eq!(
            super::super::extension::evidence_from_certificate(plain.as_ref()),
            Err(super::super::extension::ExtensionError::Missing)
        );
    }
}
