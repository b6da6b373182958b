//! The host side of `bulwark-init`'s channel (`docs/guest-protocol.md`): bulwarkd
//! listens on `<vm-dir>/vsock.sock_1024` (Firecracker's convention for the guest's
//! connections to host port 1024) before the VMM starts, and keeps what the guest
//! reports (stages, step statuses, the workload's output tail, its exit or refusal)
//! for `GET /vms/{id}/guest`. Every byte from the guest is treated as hostile: the
//! protocol crate's `FrameReader` bounds and checks it; problems are answered with an
//! `Error` message and counted. The guest's `EvidenceRequest`s (an attested TLS
//! handshake on one of its bridges) are answered with the node's evidence for that
//! nonce and TLS key, in `Evidence` pieces, or `EvidenceUnavailable` with the reason.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_guest_protocol::{
    decode_guest, encode_host, EvidenceChunk, EvidenceRequest, FrameReader, GuestMessage,
    HostMessage, Stream, HOST_CHANNEL_PORT,
};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How much of each output stream is kept.
const TAIL: usize = 64 * 1024;
/// How many stage and status messages are kept.
const MAX_EVENTS: usize = 256;
/// The longest one evidence document may take (a TPM quote takes well under a
/// second); then the guest is told it is unavailable.
const EVIDENCE_DEADLINE: Duration = Duration::from_secs(30);

/// Makes the evidence document a guest asked for: (nonce, SHA-256 of its TLS
/// key's SubjectPublicKeyInfo) → the signed document, or why not.
pub type EvidenceSource = Arc<
    dyn Fn(Vec<u8>, Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>
        + Send
        + Sync,
>;

/// The end of a stream of workload output.
#[derive(Debug, Default, Clone, Serialize)]
pub struct OutputTail {
    /// Bytes received.
    pub bytes: u64,
    /// Bytes the offsets say were skipped (lost by the guest or the link).
    pub gap_bytes: u64,
    /// The last 64 KiB, as UTF-8 (invalid sequences replaced).
    pub tail: String,
    #[serde(skip)]
    raw: Vec<u8>,
}

impl OutputTail {
    fn push(&mut self, offset: u64, data: &[u8]) {
        if offset > self.bytes {
            self.gap_bytes += offset - self.bytes;
        }
        self.bytes = offset.max(self.bytes) + data.len() as u64;
        self.raw.extend_from_slice(data);
        if self.raw.len() > TAIL {
            let cut = self.raw.len() - TAIL;
            self.raw.drain(..cut);
        }
        self.tail = String::from_utf8_lossy(&self.raw).into_owned();
    }
}

/// What the guest said, as JSON values of its messages.
#[derive(Debug, Default, Clone, Serialize)]
pub struct GuestView {
    /// A guest is connected now.
    pub connected: bool,
    pub connections: u64,
    pub hello: Option<Value>,
    pub attestation_key: Option<Value>,
    pub progress: Vec<Value>,
    pub status: Vec<Value>,
    pub stdout: OutputTail,
    pub stderr: OutputTail,
    pub exit: Option<Value>,
    pub refusal: Option<Value>,
    pub power_off: Option<String>,
    /// Evidence requests answered with a document, and refused.
    pub evidence_served: u64,
    pub evidence_refused: u64,
    pub last_evidence_error: Option<String>,
    /// Problems in what the guest sent (each answered with an `Error`).
    pub protocol_errors: u64,
    pub last_protocol_error: Option<String>,
}

fn json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn push_bounded(list: &mut Vec<Value>, v: Value) {
    if list.len() < MAX_EVENTS {
        list.push(v);
    }
}

impl GuestView {
    fn take(&mut self, msg: GuestMessage) -> Option<HostMessage> {
        match msg {
            GuestMessage::Hello(h) => self.hello = Some(json(&h)),
            GuestMessage::AttestationKey(k) => self.attestation_key = Some(json(&k)),
            GuestMessage::Progress(p) => push_bounded(&mut self.progress, json(&p)),
            GuestMessage::Status(s) => push_bounded(&mut self.status, json(&s)),
            GuestMessage::Output(o) => match o.stream {
                Stream::Stdout => self.stdout.push(o.offset, &o.data),
                Stream::Stderr => self.stderr.push(o.offset, &o.data),
            },
            GuestMessage::Exit(e) => self.exit = Some(json(&e)),
            GuestMessage::Refusal(r) => self.refusal = Some(json(&r)),
            GuestMessage::PowerOff { reason } => self.power_off = Some(reason),
            GuestMessage::Error(e) => {
                self.last_protocol_error = Some(format!("guest reports: {}", e.message));
            }
            // Answers to host requests bulwarkd does not send yet, GPU evidence
            // (attestation's job), and evidence requests (answered by `connection`).
            GuestMessage::ChallengeResponse(_)
            | GuestMessage::EvidenceRequest(_)
            | GuestMessage::GpuEvidence(_)
            | GuestMessage::Pong { .. } => {}
        }
        None
    }
}

/// The shared view of one VM's guest.
pub type Shared = Arc<Mutex<GuestView>>;

/// The listener's path for VM directory `dir`, given the VMM's `uds_path`.
pub fn channel_path(uds_path: &Path) -> std::path::PathBuf {
    let mut s = uds_path.as_os_str().to_owned();
    s.push(format!("_{HOST_CHANNEL_PORT}"));
    s.into()
}

fn lock(v: &Shared) -> std::sync::MutexGuard<'_, GuestView> {
    v.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves the channel on `listener` (one guest connection at a time) until aborted.
pub async fn serve(listener: tokio::net::UnixListener, view: Shared, evidence: EvidenceSource) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        {
            let mut v = lock(&view);
            v.connected = true;
            v.connections += 1;
        }
        connection(stream, &view, &evidence).await;
        lock(&view).connected = false;
    }
}

/// The answer to one evidence request: the document in pieces, or why not.
async fn answer_evidence(
    r: EvidenceRequest,
    evidence: &EvidenceSource,
    view: &Shared,
) -> Vec<HostMessage> {
    let made = tokio::time::timeout(EVIDENCE_DEADLINE, evidence(r.nonce, r.tls_key_sha256))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no evidence within {} s",
                EVIDENCE_DEADLINE.as_secs()
            ))
        });
    let mut v = lock(view);
    match made {
        Ok(doc) if doc.len() <= bulwark_guest_protocol::MAX_EVIDENCE => {
            v.evidence_served += 1;
            EvidenceChunk::split(r.request, &doc)
                .into_iter()
                .map(HostMessage::Evidence)
                .collect()
        }
        other => {
            let mut reason = match other {
                Ok(doc) => format!(
                    "the evidence is {} bytes, over the {} a certificate carries",
                    doc.len(),
                    bulwark_guest_protocol::MAX_EVIDENCE
                ),
                Err(e) => e,
            };
            bulwark_guest_protocol::truncate_utf8(&mut reason, bulwark_guest_protocol::MAX_TEXT);
            v.evidence_refused += 1;
            v.last_evidence_error = Some(reason.clone());
            vec![HostMessage::EvidenceUnavailable {
                request: r.request,
                reason,
            }]
        }
    }
}

async fn connection(mut stream: tokio::net::UnixStream, view: &Shared, evidence: &EvidenceSource) {
    let hello = HostMessage::Hello {
        protocol: 1,
        host: format!("bulwarkd {}", env!("CARGO_PKG_VERSION")),
    };
    if let Ok(bytes) = encode_host(&hello) {
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if let Some(e) = reader.finish() {
                    let mut v = lock(view);
                    v.protocol_errors += 1;
                    v.last_protocol_error = Some(e.to_string());
                }
                return;
            }
            Ok(n) => n,
        };
        reader.push(&buf[..n]);
        let mut replies = Vec::new();
        let mut requests = Vec::new();
        while let Some(frame) = reader.next_frame() {
            let msg = frame.and_then(|f| decode_guest(&f));
            let mut v = lock(view);
            match msg {
                Ok(GuestMessage::EvidenceRequest(r)) => requests.push(r),
                Ok(m) => replies.extend(v.take(m)),
                Err(e) => {
                    v.protocol_errors += 1;
                    v.last_protocol_error = Some(e.to_string());
                    replies.push(HostMessage::Error(e.report()));
                }
            }
        }
        for r in requests {
            replies.extend(answer_evidence(r, evidence, view).await);
        }
        for r in replies {
            if let Ok(bytes) = encode_host(&r) {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_tail_keeps_the_end_and_counts_gaps() {
        let mut t = OutputTail::default();
        t.push(0, b"hello ");
        t.push(6, b"world");
        assert_eq!(
            (t.bytes, t.gap_bytes, t.tail.as_str()),
            (11, 0, "hello world")
        );
        t.push(20, b"!");
        assert_eq!((t.bytes, t.gap_bytes), (21, 9));
        t.push(21, &vec![b'x'; TAIL]);
        assert_eq!(t.tail.len(), TAIL);
        assert!(t.tail.bytes().all(|b| b == b'x'));
    }
}
