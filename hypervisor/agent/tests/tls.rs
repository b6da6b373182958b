//! The API over TCP with mutual TLS: an operator certificate from the configured CA is
//! served like root on the Unix socket; no certificate, or one from another CA, never
//! gets an HTTP byte.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::json;

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// A CA, a server certificate for `localhost` and a client certificate, in `dir`.
fn pki(dir: &Path, name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut sp =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = sp.signed_by(&server_key, &ca, &ca_key).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name
        .push(DnType::CommonName, format!("{name} operator"));
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = cp.signed_by(&client_key, &ca, &ca_key).unwrap();
    let w = |f: &str, text: String| {
        let p = dir.join(format!("{name}-{f}"));
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: w("ca.pem", ca.pem()),
        server_cert: w("server.pem", server.pem()),
        server_key: w("server.key", server_key.serialize_pem()),
        client_cert: w("client.pem", client.pem()),
        client_key: w("client.key", client_key.serialize_pem()),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tls_call(
    addr: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    method: &str,
    path: &str,
) -> Result<bulwark_agent::client::Response, String> {
    let cfg = bulwark_agent::tls::client_config(ca, cert, key).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bulwark_agent::tls::request(
        addr,
        "localhost",
        cfg,
        method,
        path,
        None,
    ))
}

#[test]
fn operators_with_a_certificate_from_the_ca_use_the_api_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki(dir.path(), "node");
    let other = pki(dir.path(), "rogue");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut n = Node::new(json!({
        "tls": { "listen": addr, "cert": good.server_cert, "key": good.server_key, "client_ca": good.ca },
    }));
    n.start();
    // The operator's certificate: the same API as on the socket.
    let r = tls_call(
        &addr,
        &good.ca,
        &good.client_cert,
        &good.client_key,
        "GET",
        "/devices",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json().as_array().unwrap().len(),
        n.get("/devices").as_array().unwrap().len()
    );
    let r = tls_call(
        &addr,
        &good.ca,
        &good.client_cert,
        &good.client_key,
        "POST",
        &format!("/devices/{GPU_A}/enroll"),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    n.settle();
    assert_eq!(n.device(GPU_A)["state"], "available");
    // A client certificate from another CA: the handshake fails, nothing is served.
    let e = tls_call(
        &addr,
        &good.ca,
        &other.client_cert,
        &other.client_key,
        "GET",
        "/devices",
    )
    .unwrap_err();
    assert!(e.contains("TLS") || e.contains("HTTP"), "{e}");
    // A client that does not trust the server's CA refuses it.
    let e = tls_call(
        &addr,
        &other.ca,
        &other.client_cert,
        &other.client_key,
        "GET",
        "/devices",
    )
    .unwrap_err();
    assert!(e.contains("TLS with"), "{e}");
    // No client certificate at all: a raw TLS client without one is refused.
    let cfg = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            #[allow(deprecated)]
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates({
            let mut r = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject;
            r.add(rustls::pki_types::CertificateDer::from_pem_file(&good.ca).unwrap())
                .unwrap();
            r
        })
        .with_no_client_auth(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(bulwark_agent::tls::request(
            &addr,
            "localhost",
            cfg,
            "GET",
            "/devices",
            None,
        ))
        .unwrap_err();
    assert!(!e.is_empty());
    // The daemon serves on.
    assert_eq!(
        tls_call(
            &addr,
            &good.ca,
            &good.client_cert,
            &good.client_key,
            "GET",
            "/health"
        )
        .unwrap()
        .status,
        200
    );
    // bulwarkctl speaks it too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwarkctl"))
        .args(["--tls", &addr, "--tls-ca"])
        .arg(&good.ca)
        .arg("--tls-cert")
        .arg(&good.client_cert)
        .arg("--tls-key")
        .arg(&good.client_key)
        .args(["--json", "devices", "show", GPU_A])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "available");
}

#[test]
fn bad_tls_files_stop_bulwarkd_at_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki(dir.path(), "node");
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    for (cert, key, ca, field) in [
        (
            dir.path().join("missing.pem"),
            good.server_key.clone(),
            good.ca.clone(),
            "tls.cert",
        ),
        (
            good.server_cert.clone(),
            good.server_cert.clone(),
            good.ca.clone(),
            "tls.key",
        ),
        (
            good.server_cert.clone(),
            good.server_key.clone(),
            dir.path().join("empty.pem"),
            "tls.client_ca",
        ),
    ] {
        let mut n = Node::new(
            json!({ "tls": { "listen": "127.0.0.1:0", "cert": cert, "key": key, "client_ca": ca } }),
        );
        let e = n.try_start(&[]).unwrap_err();
        assert!(e.contains(field), "{field}: {e}");
    }
}
