//! The host side of attested TLS in the `vmm-guest-init` lab scenario, run in L1 by
//! `lab-guest-host` (until the node agent does it): evidence for the guest's
//! `EvidenceRequest`s, made from bulwark-vmm's `GET /vm` and signed by a software
//! evidence key (the lab has no TPM in L1; the policy says `allow_software_key`), a
//! TCP relay to the guest's attested vsock port, and `bulwark-verify connect` runs
//! against it.
//!
//! The evidence can be made wrong on purpose ([`EvidenceMode`]) to show that the
//! client refuses it before sending a byte: for another TLS key, or for an earlier
//! nonce (a replay).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulwark_attestation::evidence::document::ImageId;
use bulwark_attestation::evidence::{
    build_evidence, EvidenceInputs, EvidenceSigningKey, LaunchClaims,
};

use crate::vmm_api;

/// Key id of the lab's (pretend) node image signer: what the good policy trusts.
pub const LAB_NODE_SIGNER: [u8; 32] = [0x4c; 32];
/// Another node image signer: the policy that names it must refuse the lab node.
pub const OTHER_NODE_SIGNER: [u8; 32] = [0x4d; 32];
/// What "another key" is in [`EvidenceMode::OtherKey`]: not the guest's.
const OTHER_TLS_KEY_SHA256: [u8; 32] = [0x33; 32];

/// How the host answers evidence requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvidenceMode {
    /// Bound to the client's nonce and the guest's key.
    Honest,
    /// Bound to the client's nonce and another key (a relay, or a stolen document).
    OtherKey,
    /// Bound to the guest's key and the previous request's nonce (a replay).
    StaleNonce,
}

/// Makes evidence documents for the guest's requests.
#[derive(Debug)]
pub struct EvidenceMaker {
    api_sock: String,
    image_signer: Vec<u8>,
    key: EvidenceSigningKey,
    mode: Mutex<EvidenceMode>,
    last_nonce: Mutex<Option<Vec<u8>>>,
}

impl EvidenceMaker {
    /// Evidence for the VM behind bulwark-vmm's `api_sock`, whose image was signed
    /// by the key in `trusted_pub` (PEM).
    pub fn new(api_sock: &str, trusted_pub: &str) -> Result<Arc<Self>, String> {
        let key = bulwark_image::PublicKey::from_pem_file(std::path::Path::new(trusted_pub))
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(EvidenceMaker {
            api_sock: api_sock.to_owned(),
            image_signer: key.id().to_vec(),
            key: EvidenceSigningKey::generate().map_err(|e| e.to_string())?,
            mode: Mutex::new(EvidenceMode::Honest),
            last_nonce: Mutex::new(None),
        }))
    }

    /// How the next requests are answered.
    pub fn set_mode(&self, mode: EvidenceMode) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    /// The evidence document for one request, as the current mode makes it.
    pub fn evidence(&self, nonce: &[u8], tls_key_sha256: &[u8]) -> Result<Vec<u8>, String> {
        let (status, body) = vmm_api::get(&self.api_sock, "/vm")?;
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(format!("GET /vm: {status}"));
        }
        let vm: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("GET /vm: {e}"))?;
        let claims = LaunchClaims::from_vm_info(&vm, std::slice::from_ref(&self.image_signer))
            .map_err(|e| e.to_string())?;
        let mode = *self.mode.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self
            .last_nonce
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(nonce.to_vec());
        let (nonce, tls_key) = match mode {
            EvidenceMode::Honest => (nonce.to_vec(), tls_key_sha256.to_vec()),
            EvidenceMode::OtherKey => (nonce.to_vec(), OTHER_TLS_KEY_SHA256.to_vec()),
            EvidenceMode::StaleNonce => (
                previous.unwrap_or_else(|| vec![0x5a; nonce.len()]),
                tls_key_sha256.to_vec(),
            ),
        };
        let inputs = EvidenceInputs {
            node_image: ImageId {
                name: "bulwark-lab-node".into(),
                version: 1,
                manifest_sha384: vec![0; 48].into(),
                signer_key_ids: vec![LAB_NODE_SIGNER.to_vec().into()],
            },
            tpm: None,
            launch: claims.launch,
            isolation: claims.isolation,
            tee: None,
            gpus: Vec::new(),
            nonce,
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            tls_key_sha256: Some(tls_key),
        };
        build_evidence(&inputs, &self.key).map_err(|e| e.to_string())
    }
}

/// Opens the guest's vsock `port` through bulwark-vmm's socket `uds` (`CONNECT`).
pub fn connect_vsock(uds: &str, port: u32) -> Result<UnixStream, String> {
    let s = UnixStream::connect(uds).map_err(|e| format!("connect {uds}: {e}"))?;
    (&s).write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    // Read the answer line byte by byte, so no byte after it is consumed here.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 && !line.ends_with(b"\n") {
        match (&s).read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(format!(
            "CONNECT {port}: {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    Ok(s)
}

/// Listens on 127.0.0.1 (a free port, returned) and relays every TCP connection to
/// the guest's vsock `port`, as the node agent will for the tenant's clients.
pub fn start_relay(uds: &str, port: u32) -> Result<u16, String> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("relay: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("relay: {e}"))?
        .port();
    let uds = uds.to_owned();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let uds = uds.clone();
            std::thread::spawn(move || match connect_vsock(&uds, port) {
                Ok(vsock) => relay(tcp, vsock),
                Err(e) => println!("HOST-ERROR relay: {e}"),
            });
        }
    });
    Ok(local)
}

fn relay(tcp: TcpStream, vsock: UnixStream) {
    let (Ok(mut tcp_r), Ok(mut vsock_w)) = (tcp.try_clone(), vsock.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut tcp_r, &mut vsock_w);
        let _ = vsock_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut vsock_r, mut tcp_w) = (vsock, tcp);
    let _ = std::io::copy(&mut vsock_r, &mut tcp_w);
    let _ = tcp_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// One `bulwark-verify connect` run: exit status, stdout, stderr.
pub fn verify_connect(
    addr: &str,
    policy: &str,
    send: &str,
) -> Result<(i32, String, String), String> {
    let out = Command::new("bulwark-verify")
        .args(["connect", addr, "--policy", policy, "--json", "--timeout"])
        .arg(Duration::from_secs(120).as_secs().to_string())
        .args(["--send", send])
        .output()
        .map_err(|e| format!("running bulwark-verify: {e}"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The line that names the failed checks in `bulwark-verify connect`'s stderr.
pub fn refusal_line(stderr: &str) -> String {
    BufReader::new(stderr.as_bytes())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("refused"))
        .unwrap_or_default()
}
