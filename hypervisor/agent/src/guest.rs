//! The host side of `bulwark-init`'s channel (`docs/guest-protocol.md`): bulwarkd
//! listens on `<vm-dir>/vsock.sock_1024` (Firecracker's convention for the guest's
//! connections to host port 1024) before the VMM starts, and keeps what the guest
//! reports (stages, step statuses, the workload's output tail, its exit or refusal)
//! for `GET /vms/{id}/guest`. Every byte from the guest is treated as hostile: the
//! protocol crate's `FrameReader` bounds and checks it; problems are answered with an
//! `Error` message and counted. The guest's `EvidenceRequest`s (an attested TLS
//! handshake on one of its bridges) are answered with the node's evidence for that
//! nonce and TLS key, in `Evidence` pieces, or `EvidenceUnavailable` with the reason.
//! bulwarkd's own requests ([`HostRequest`]: `Ping`, `Challenge`, `Shutdown`) go to
//! the connected guest and their answers back to whoever asked; with no guest
//! connected they are refused at once.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_guest_protocol::{
    decode_guest, encode_host, EvidenceChunk, EvidenceRequest, FrameReader, GuestMessage,
    HostMessage, Stream, HOST_CHANNEL_PORT,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

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

/// Stores a snapshot of the guest's view (blocking; called at most once a second,
/// and at once for a hello, an exit, a refusal, a power-off and a disconnect).
pub type Persist = Arc<dyn Fn(&GuestView) + Send + Sync>;

/// How often the view is stored while output streams in.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// How many host requests may wait for the channel task.
pub const MAX_QUEUED_REQUESTS: usize = 16;

/// A request of bulwarkd's to the guest, and where its answer goes. An answer
/// that never comes (the guest disconnects) drops the sender: the asker sees it.
#[derive(Debug)]
pub enum HostRequest {
    /// Liveness: the round trip to the guest's `Pong`.
    Ping { reply: PingReply },
    /// A nonce for the guest's attestation key to sign; the answer says whether
    /// the signature verifies with the key the guest announced.
    Challenge {
        nonce: Vec<u8>,
        reply: ChallengeReply,
    },
    /// Stop the workload and power off (answered once the message is sent).
    Shutdown {
        reason: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

impl HostRequest {
    fn refuse(self, why: &str) {
        let why = why.to_string();
        match self {
            HostRequest::Ping { reply } => drop(reply.send(Err(why))),
            HostRequest::Challenge { reply, .. } => drop(reply.send(Err(why))),
            HostRequest::Shutdown { reply, .. } => drop(reply.send(Err(why))),
        }
    }
}

/// The guest's answer to a challenge.
#[derive(Debug, Clone, Serialize)]
pub struct ChallengeAnswer {
    /// Hex.
    pub nonce: String,
    /// DER ECDSA P-384/SHA-384, hex.
    pub signature: String,
    /// The guest's attestation key (SEC1, hex), from its `AttestationKey` message.
    pub attestation_key: Option<String>,
    /// The signature verifies with that key over the protocol's challenge bytes.
    pub verified: bool,
}

/// The end of a stream of workload output.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
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

/// What the guest said, as JSON values of its messages. Kept in the state database
/// (`db::Store::put_guest_report`) so that a restarted bulwarkd still has it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
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
    /// A stored view (`None` when it does not parse); not connected.
    pub fn from_saved(json: &str) -> Option<GuestView> {
        let mut v: GuestView = serde_json::from_str(json).ok()?;
        v.connected = false;
        for t in [&mut v.stdout, &mut v.stderr] {
            t.raw = t.tail.as_bytes().to_vec();
        }
        Some(v)
    }

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

/// Serves the channel on `listener` (one guest connection at a time) until aborted;
/// `requests` go to the connected guest (refused while none is).
pub async fn serve(
    listener: tokio::net::UnixListener,
    view: Shared,
    evidence: EvidenceSource,
    mut requests: mpsc::Receiver<HostRequest>,
    persist: Persist,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            Some(r) = requests.recv() => {
                r.refuse("no guest is connected to the channel");
                continue;
            }
        };
        {
            let mut v = lock(&view);
            v.connected = true;
            v.connections += 1;
        }
        connection(stream, &view, &evidence, &mut requests, &persist).await;
        let snapshot = {
            let mut v = lock(&view);
            v.connected = false;
            v.clone()
        };
        store(&persist, &snapshot);
    }
}

/// Runs `persist` off the async workers' toes (it writes the database).
fn store(persist: &Persist, view: &GuestView) {
    tokio::task::block_in_place(|| persist(view));
}

/// Where the answer to a ping goes.
type PingReply = oneshot::Sender<Result<Duration, String>>;
/// Where the answer to a challenge goes.
type ChallengeReply = oneshot::Sender<Result<ChallengeAnswer, String>>;

/// Host requests sent and not yet answered, on one connection.
#[derive(Default)]
struct Pending {
    next_ping: u64,
    pings: HashMap<u64, (Instant, PingReply)>,
    challenges: Vec<(Vec<u8>, ChallengeReply)>,
}

impl Pending {
    /// The message for `r`, keeping where its answer goes (`None`: answered now).
    fn send(&mut self, r: HostRequest) -> Option<HostMessage> {
        const MAX_WAITING: usize = MAX_QUEUED_REQUESTS;
        match r {
            HostRequest::Ping { reply } => {
                if self.pings.len() >= MAX_WAITING {
                    let _ = reply.send(Err("too many pings waiting for the guest".into()));
                    return None;
                }
                self.next_ping += 1;
                self.pings.insert(self.next_ping, (Instant::now(), reply));
                Some(HostMessage::Ping {
                    nonce: self.next_ping,
                })
            }
            HostRequest::Challenge { nonce, reply } => {
                if self.challenges.len() >= MAX_WAITING {
                    let _ = reply.send(Err("too many challenges waiting for the guest".into()));
                    return None;
                }
                self.challenges.push((nonce.clone(), reply));
                Some(HostMessage::Challenge { nonce })
            }
            HostRequest::Shutdown { reason, reply } => {
                let _ = reply.send(Ok(()));
                Some(HostMessage::Shutdown { reason })
            }
        }
    }

    /// Gives a guest answer to whoever asked; `false` when nobody did.
    fn answer(&mut self, msg: &GuestMessage, key: Option<&[u8]>) -> bool {
        match msg {
            GuestMessage::Pong { nonce } => match self.pings.remove(nonce) {
                Some((sent, reply)) => {
                    let _ = reply.send(Ok(sent.elapsed()));
                    true
                }
                None => false,
            },
            GuestMessage::ChallengeResponse(c) => {
                let Some(i) = self.challenges.iter().position(|(n, _)| *n == c.nonce) else {
                    return false;
                };
                let (nonce, reply) = self.challenges.remove(i);
                let verified = key.is_some_and(|k| {
                    bulwark_attestation::crypto::verify_ecdsa(
                        bulwark_attestation::crypto::Ecdsa::P384Sha384,
                        bulwark_attestation::crypto::SigEncoding::Der,
                        k,
                        &bulwark_guest_protocol::challenge_signed_bytes(&nonce),
                        &c.signature,
                    )
                    .is_ok()
                });
                let _ = reply.send(Ok(ChallengeAnswer {
                    nonce: hex::encode(&nonce),
                    signature: hex::encode(&c.signature),
                    attestation_key: key.map(hex::encode),
                    verified,
                }));
                true
            }
            _ => false,
        }
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

async fn connection(
    mut stream: tokio::net::UnixStream,
    view: &Shared,
    evidence: &EvidenceSource,
    requests: &mut mpsc::Receiver<HostRequest>,
    persist: &Persist,
) {
    let mut stored_at = Instant::now();
    let mut unstored = false;
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
    let mut pending = Pending::default();
    loop {
        let read = tokio::select! {
            read = stream.read(&mut buf) => read,
            Some(r) = requests.recv() => {
                if let Some(msg) = pending.send(r) {
                    match encode_host(&msg) {
                        Ok(bytes) if stream.write_all(&bytes).await.is_ok() => {}
                        _ => return,
                    }
                }
                continue;
            }
        };
        let n = match read {
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
        let mut evidence_requests = Vec::new();
        let mut significant = false;
        while let Some(frame) = reader.next_frame() {
            let msg = frame.and_then(|f| decode_guest(&f));
            significant |= matches!(
                msg,
                Ok(GuestMessage::Hello(_)
                    | GuestMessage::AttestationKey(_)
                    | GuestMessage::Exit(_)
                    | GuestMessage::Refusal(_)
                    | GuestMessage::PowerOff { .. })
            );
            unstored = true;
            let mut v = lock(view);
            match msg {
                Ok(GuestMessage::EvidenceRequest(r)) => evidence_requests.push(r),
                Ok(m) => {
                    let key = v
                        .attestation_key
                        .as_ref()
                        .and_then(|k| k.get("public_key"))
                        .and_then(|k| serde_json::from_value::<Vec<u8>>(k.clone()).ok());
                    if !pending.answer(&m, key.as_deref()) {
                        replies.extend(v.take(m));
                    }
                }
                Err(e) => {
                    v.protocol_errors += 1;
                    v.last_protocol_error = Some(e.to_string());
                    replies.push(HostMessage::Error(e.report()));
                }
            }
        }
        if unstored && (significant || stored_at.elapsed() >= PERSIST_EVERY) {
            let snapshot = lock(view).clone();
            store(persist, &snapshot);
            stored_at = Instant::now();
            unstored = false;
        }
        for r in evidence_requests {
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

        // Stored and read back, the tail goes on where it stopped.
        let mut v = GuestView {
            connected: true,
            ..Default::default()
        };
        v.stdout.push(0, b"before the restart, ");
        let mut back = GuestView::from_saved(&serde_json::to_string(&v).unwrap()).unwrap();
        assert!(!back.connected);
        back.stdout.push(20, b"after");
        assert_eq!(back.stdout.tail, "before the restart, after");
        assert_eq!((back.stdout.bytes, back.stdout.gap_bytes), (25, 0));
        assert!(GuestView::from_saved("not json").is_none());
    }

    /// The guest's end of the channel, for the request tests.
    struct FakeGuest {
        stream: tokio::net::UnixStream,
        reader: FrameReader,
    }

    impl FakeGuest {
        async fn send(&mut self, m: &GuestMessage) {
            self.stream
                .write_all(&bulwark_guest_protocol::encode_guest(m).unwrap())
                .await
                .unwrap();
        }
        async fn next(&mut self) -> HostMessage {
            let mut buf = [0u8; 4096];
            loop {
                if let Some(f) = self.reader.next_frame() {
                    return bulwark_guest_protocol::decode_host(&f.unwrap()).unwrap();
                }
                let n = self.stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the host closed the channel");
                self.reader.push(&buf[..n]);
            }
        }
    }

    async fn ask<T>(
        q: &mpsc::Sender<HostRequest>,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> HostRequest,
    ) -> oneshot::Receiver<Result<T, String>> {
        let (tx, rx) = oneshot::channel();
        q.send(make(tx)).await.unwrap();
        rx
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn host_requests_reach_the_guest_and_its_answers_come_back() {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_ASN1_SIGNING};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock_1024");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let view = Shared::default();
        let evidence: EvidenceSource =
            Arc::new(|_, _| Box::pin(async { Err("no evidence in this test".to_string()) }));
        let (q, queue) = mpsc::channel(MAX_QUEUED_REQUESTS);
        let saved: Arc<Mutex<Vec<GuestView>>> = Arc::default();
        let into = saved.clone();
        let persist: Persist = Arc::new(move |v: &GuestView| into.lock().unwrap().push(v.clone()));
        let task = tokio::spawn(serve(listener, view.clone(), evidence, queue, persist));

        // No guest yet: refused at once.
        let r = ask(&q, |reply| HostRequest::Ping { reply }).await;
        assert_eq!(
            r.await.unwrap().unwrap_err(),
            "no guest is connected to the channel"
        );

        let mut g = FakeGuest {
            stream: tokio::net::UnixStream::connect(&path).await.unwrap(),
            reader: FrameReader::new(),
        };
        assert!(matches!(g.next().await, HostMessage::Hello { .. }));
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        g.send(&GuestMessage::AttestationKey(
            bulwark_guest_protocol::AttestationKey {
                algorithm: "ecdsa-p384".into(),
                public_key: key.public_key().as_ref().to_vec(),
            },
        ))
        .await;

        // Ping → Pong with the same nonce → the round trip.
        let r = ask(&q, |reply| HostRequest::Ping { reply }).await;
        let HostMessage::Ping { nonce } = g.next().await else {
            panic!("not a ping")
        };
        g.send(&GuestMessage::Pong { nonce: nonce + 1 }).await; // nobody asked: ignored
        g.send(&GuestMessage::Pong { nonce }).await;
        assert!(r.await.unwrap().is_ok());

        // Challenge: a good signature verifies with the announced key, a bad one not.
        for good in [true, false] {
            let nonce = vec![if good { 7 } else { 8 }; 32];
            let r = ask(&q, |reply| HostRequest::Challenge {
                nonce: nonce.clone(),
                reply,
            })
            .await;
            let HostMessage::Challenge { nonce: got } = g.next().await else {
                panic!("not a challenge")
            };
            assert_eq!(got, nonce);
            let signed = if good {
                bulwark_guest_protocol::challenge_signed_bytes(&got)
            } else {
                b"something else".to_vec()
            };
            let signature = key.sign(&rng, &signed).unwrap().as_ref().to_vec();
            g.send(&GuestMessage::ChallengeResponse(
                bulwark_guest_protocol::ChallengeResponse {
                    nonce: got,
                    signature,
                },
            ))
            .await;
            let a = r.await.unwrap().unwrap();
            assert_eq!(a.verified, good);
            assert_eq!(
                a.attestation_key,
                Some(hex::encode(key.public_key().as_ref()))
            );
        }

        // Shutdown: sent with its reason.
        let r = ask(&q, |reply| HostRequest::Shutdown {
            reason: "maintenance".into(),
            reply,
        })
        .await;
        assert!(r.await.unwrap().is_ok());
        assert!(
            matches!(g.next().await, HostMessage::Shutdown { reason } if reason == "maintenance")
        );

        // A ping the guest never answers: its disconnect drops the request.
        let r = ask(&q, |reply| HostRequest::Ping { reply }).await;
        assert!(matches!(g.next().await, HostMessage::Ping { .. }));
        drop(g);
        assert!(r.await.is_err(), "the asker learns the guest went away");
        assert_eq!(lock(&view).protocol_errors, 0);
        // The view was stored when the attestation key came, and at the disconnect;
        // a stored view comes back whole, not connected.
        for _ in 0..100 {
            if saved.lock().unwrap().last().is_some_and(|v| !v.connected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stored = saved.lock().unwrap().clone();
        assert!(stored.len() >= 2, "{stored:?}");
        assert!(stored[0].attestation_key.is_some());
        let last = stored.last().unwrap();
        assert!(!last.connected && last.attestation_key.is_some());
        let back = GuestView::from_saved(&serde_json::to_string(last).unwrap()).unwrap();
        assert_eq!(back.attestation_key, last.attestation_key);
        assert!(!back.connected);
        task.abort();
    }
}
