//! Attested TLS end to end on 127.0.0.1: a guest-side server whose evidence
//! source signs real (software-key) Bulwark evidence for each handshake's
//! nonce and key, the library client and the `bulwark-verify connect` CLI.
//! Every refusal must fail the handshake with the right check named, and
//! the server must see zero application bytes.

mod common;

use bulwark_attestation::atls::{self, AtlsError, AtlsKey, AttestedCertResolver, ConnectOptions};
use bulwark_attestation::checks::Outcome;
use bulwark_attestation::evidence::document::{ImageId, Isolation, Launch};
use bulwark_attestation::evidence::{build_evidence, EvidenceInputs, EvidenceSigningKey, Policy};
use common::*;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const NODE_SIGNER: [u8; 32] = [0x11; 32];
const TENANT_SIGNER: [u8; 32] = [0x66; 32];
const MEASUREMENT: [u8; 48] = [0x44; 48];

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn inputs(nonce: &[u8], tls_key_sha256: [u8; 32]) -> EvidenceInputs {
    EvidenceInputs {
        node_image: node_image(NODE_SIGNER),
        tpm: None,
        launch: Launch {
            measurement: MEASUREMENT.to_vec().into(),
            image: Some(ImageId {
                name: "tenant-app".into(),
                version: 3,
                manifest_sha384: vec![0x55; 48].into(),
                signer_key_ids: vec![TENANT_SIGNER.to_vec().into()],
            }),
            vcpus: 2,
            memory_bytes: 64 << 20,
            cpuid_policy: "bulwark-default-v1".into(),
            boot_mode: "signed-bundle/long64".into(),
            unknown: vec![],
        },
        isolation: Isolation {
            source: "vmm-get-vm".into(),
            single_tenant: None,
            devices: vec![],
            unknown: vec!["single_tenant".into()],
        },
        tee: None,
        gpus: vec![],
        nonce: nonce.to_vec(),
        timestamp: now(),
        tls_key_sha256: Some(tls_key_sha256.to_vec()),
    }
}

fn policy_text(measurement: &[u8]) -> String {
    format!(
        "allow_software_key = true\n\
         [node]\nimage_signers = [\"{}\"]\n\
         [vm]\nimage_signers = [\"{}\"]\nmeasurements = [\"{}\"]\n",
        hex::encode(NODE_SIGNER),
        hex::encode(TENANT_SIGNER),
        hex::encode(measurement)
    )
}

fn policy(measurement: &[u8]) -> Policy {
    Policy::parse(&policy_text(measurement), Path::new(".")).unwrap()
}

/// How the evidence source misbehaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    Honest,
    /// Binds another key's SPKI hash.
    OtherKey,
    /// Ignores the client's nonce: evidence for an old one.
    StaleNonce,
}

fn attested_config(mode: Source) -> (Arc<ServerConfig>, Arc<AttestedCertResolver>) {
    let evidence_key = EvidenceSigningKey::generate().unwrap();
    let resolver = Arc::new(AttestedCertResolver::new(
        AtlsKey::generate().unwrap(),
        move |nonce: &[u8], spki: [u8; 32]| {
            let (nonce, spki) = match mode {
                Source::Honest => (nonce.to_vec(), spki),
                Source::OtherKey => (nonce.to_vec(), [0x77; 32]),
                Source::StaleNonce => (vec![0x99; 32], spki),
            };
            Ok(build_evidence(&inputs(&nonce, spki), &evidence_key)?)
        },
    ));
    let config = atls::server::server_config_with(resolver.clone()).unwrap();
    (config, resolver)
}

/// A plain TLS 1.3 server: a certificate for the guest key, no evidence.
fn plain_config() -> Arc<ServerConfig> {
    let key = AtlsKey::generate().unwrap();
    let cert = key.certificate(None).unwrap();
    let config = ServerConfig::builder_with_provider(atls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.pkcs8().to_vec().into()),
        )
        .unwrap();
    Arc::new(config)
}

struct Server {
    addr: SocketAddr,
    /// Application bytes the server read, over all connections.
    app_bytes: Arc<AtomicUsize>,
    thread: JoinHandle<()>,
}

/// An echo server for `conns` connections, one after the other.
fn serve(config: Arc<ServerConfig>, conns: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let app_bytes = Arc::new(AtomicUsize::new(0));
    let count = app_bytes.clone();
    let thread = std::thread::spawn(move || {
        for _ in 0..conns {
            let (sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let conn = ServerConnection::new(config.clone()).unwrap();
            let mut tls = StreamOwned::new(conn, sock);
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            // Read until the client's close_notify (or a failed handshake).
            loop {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        count.fetch_add(n, Ordering::SeqCst);
                        got.extend_from_slice(&buf[..n]);
                    }
                }
            }
            if !tls.conn.is_handshaking() {
                let _ = tls.write_all(&got);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
    });
    Server {
        addr,
        app_bytes,
        thread,
    }
}

fn options() -> ConnectOptions {
    ConnectOptions {
        timeout: Duration::from_secs(20),
        ..ConnectOptions::default()
    }
}

#[test]
fn affirmed_handshake_echoes() {
    let (config, resolver) = attested_config(Source::Honest);
    let server = serve(config, 1);
    let (mut stream, appraisal) =
        atls::connect(&server.addr.to_string(), &policy(&MEASUREMENT), &options()).unwrap();
    assert!(appraisal.is_ok(), "{}", appraisal.to_text());
    for name in [
        "atls-key-binding",
        "atls-handshake-signature",
        "freshness-nonce",
        "evidence-signature",
        "launch-measurement",
    ] {
        assert_eq!(
            appraisal.check(name).map(|c| c.result),
            Some(Outcome::Passed),
            "{name}: {}",
            appraisal.to_text()
        );
    }
    // The software key is a warning under allow_software_key.
    assert_eq!(
        appraisal.check("key-protection").unwrap().result,
        Outcome::Warning
    );
    let j = appraisal.to_json();
    assert_eq!(
        j["submods"]["node"]["ear_attester_claims"]["atls_certificate_key_sha256"],
        hex::encode(resolver.key().spki_sha256())
    );
    stream.write_all(b"hello, guest").unwrap();
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"hello, guest");
    server.thread.join().unwrap();
    assert_eq!(server.app_bytes.load(Ordering::SeqCst), 12);
    assert_eq!(resolver.last_error(), None);
}

/// Connect, expect a refusal naming exactly `failed`, and no application
/// byte at the server.
fn refused(config: Arc<ServerConfig>, policy: &Policy, failed: &[&str]) {
    let server = serve(config, 1);
    match atls::connect(&server.addr.to_string(), policy, &options()) {
        Err(AtlsError::Refused(r)) => {
            assert_eq!(r.failed, failed, "{r}");
            let e = AtlsError::Refused(r);
            assert_eq!(e.exit_code(), 1);
        }
        Err(e) => panic!("expected a refusal naming {failed:?}, got {e}"),
        Ok((_, a)) => panic!("expected a refusal naming {failed:?}, got\n{}", a.to_text()),
    }
    server.thread.join().unwrap();
    assert_eq!(server.app_bytes.load(Ordering::SeqCst), 0);
}

#[test]
fn evidence_for_another_key_is_refused() {
    refused(
        attested_config(Source::OtherKey).0,
        &policy(&MEASUREMENT),
        &["atls-key-binding"],
    );
}

#[test]
fn stale_nonce_is_refused() {
    refused(
        attested_config(Source::StaleNonce).0,
        &policy(&MEASUREMENT),
        &["freshness-nonce"],
    );
}

#[test]
fn policy_mismatch_is_refused() {
    refused(
        attested_config(Source::Honest).0,
        &policy(&[0x45; 48]),
        &["launch-measurement"],
    );
}

#[test]
fn certificate_without_evidence_is_refused() {
    refused(plain_config(), &policy(&MEASUREMENT), &["atls-extension"]);
}

#[test]
fn refusal_carries_the_appraisal() {
    let server = serve(attested_config(Source::Honest).0, 1);
    let Err(AtlsError::Refused(r)) =
        atls::connect(&server.addr.to_string(), &policy(&[0x45; 48]), &options())
    else {
        panic!("expected a refusal");
    };
    let a = r.appraisal.expect("appraisal");
    assert_eq!(a.check("atls-key-binding").unwrap().result, Outcome::Passed);
    assert_eq!(a.to_json()["status"], "contraindicated");
    server.thread.join().unwrap();
}

#[test]
fn resolver_needs_the_nonce_sni() {
    let (_, resolver) = attested_config(Source::Honest);
    assert!(resolver.certified_key_for_sni(None).is_err());
    assert!(resolver.certified_key_for_sni(Some("example.com")).is_err());
    let sni = atls::nonce_to_sni(&[7; 32]);
    let a = resolver.certified_key_for_sni(Some(&sni)).unwrap();
    // Cached for the same nonce, fresh for another.
    let b = resolver.certified_key_for_sni(Some(&sni)).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let c = resolver
        .certified_key_for_sni(Some(&atls::nonce_to_sni(&[8; 32])))
        .unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
}

#[test]
fn cli_connect() {
    // `bulwark-verify connect ADDR --policy POLICY ARGS...`
    let connect = |addr: &str, policy: &TempFile, args: &[&str]| {
        let policy = policy.path();
        cli(&[&["connect", addr, "--policy", policy.as_str()], args].concat())
    };
    let good = TempFile::new("atls-policy.toml", policy_text(&MEASUREMENT).as_bytes());
    let other = TempFile::new(
        "atls-policy-other.toml",
        policy_text(&[0x45; 48]).as_bytes(),
    );

    // Affirmed, with text sent and echoed.
    let server = serve(attested_config(Source::Honest).0, 2);
    let addr = server.addr.to_string();
    let o = connect(&addr, &good, &["--send", "ping"]);
    assert_eq!(
        code(&o),
        0,
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout(&o).contains("VERIFIED"), "{}", stdout(&o));
    assert!(stdout(&o).ends_with("ping\n"), "{}", stdout(&o));
    // JSON.
    let o = connect(&addr, &good, &["--json", "--send", "x"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let j = json(&o);
    assert_eq!(j["status"], "warning");
    assert_eq!(j["atls"]["received"], "x");
    server.thread.join().unwrap();
    assert_eq!(server.app_bytes.load(Ordering::SeqCst), 5);

    // Refused: exit 1, the failed check named, nothing sent.
    let server = serve(attested_config(Source::Honest).0, 1);
    let addr = server.addr.to_string();
    let o = connect(&addr, &other, &["--send", "secret"]);
    assert_eq!(code(&o), 1, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains("REJECTED"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("vm/launch-measurement"),
        "{}",
        stdout(&o)
    );
    server.thread.join().unwrap();
    assert_eq!(server.app_bytes.load(Ordering::SeqCst), 0);

    // --send-file: the file's bytes are sent; --json names the file, not its content.
    let secret = TempFile::new("atls-secret.txt", b"key=0123456789abcdef");
    let server = serve(attested_config(Source::Honest).0, 2);
    let addr = server.addr.to_string();
    let o = connect(&addr, &good, &["--send-file", &secret.path()]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout(&o).ends_with("key=0123456789abcdef\n"),
        "{}",
        stdout(&o)
    );
    let o = connect(&addr, &good, &["--json", "--send-file", &secret.path()]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let j = json(&o);
    assert_eq!(j["atls"]["sent"]["bytes"], 20);
    assert_eq!(j["atls"]["sent"]["file"], secret.path());
    assert_eq!(j["atls"]["received"], "key=0123456789abcdef");
    server.thread.join().unwrap();
    assert_eq!(server.app_bytes.load(Ordering::SeqCst), 40);
    // Both, or a missing file: usage or I/O errors (exit 2), nothing sent.
    let o = connect(
        &addr,
        &good,
        &["--send", "x", "--send-file", &secret.path()],
    );
    assert_eq!(code(&o), 2, "{}", String::from_utf8_lossy(&o.stderr));
    let o = connect(&addr, &good, &["--send-file", "/nonexistent/secret"]);
    assert_eq!(code(&o), 2, "{}", String::from_utf8_lossy(&o.stderr));

    // Nothing listening: exit 2.
    drop(TcpListener::bind(&addr));
    let o = connect(&addr, &good, &["--timeout", "5"]);
    assert_eq!(code(&o), 2, "{}", String::from_utf8_lossy(&o.stderr));
}

/// The relay attack: the attacker passes the client's ClientHello on to the
/// genuine guest, gets its certificate (evidence for the client's nonce and
/// the guest's key), and serves it signing the handshake with its own key.
#[derive(Debug)]
struct Relay {
    genuine: Arc<AttestedCertResolver>,
    attacker: Arc<dyn rustls::sign::SigningKey>,
}

impl rustls::server::ResolvesServerCert for Relay {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let genuine = self
            .genuine
            .certified_key_for_sni(hello.server_name())
            .ok()?;
        Some(Arc::new(rustls::sign::CertifiedKey::new(
            genuine.cert.clone(),
            self.attacker.clone(),
        )))
    }
}

#[test]
fn relayed_certificate_without_the_key_is_refused() {
    let (_, genuine) = attested_config(Source::Honest);
    let attacker = AtlsKey::generate().unwrap();
    let attacker = rustls::crypto::ring::sign::any_ecdsa_type(
        &rustls::pki_types::PrivateKeyDer::Pkcs8(attacker.pkcs8().to_vec().into()),
    )
    .unwrap();
    let config = atls::server::server_config_with(Arc::new(Relay { genuine, attacker })).unwrap();
    refused(config, &policy(&MEASUREMENT), &["atls-handshake-signature"]);
}
