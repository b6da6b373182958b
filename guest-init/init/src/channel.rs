//! The host channel: one vsock stream from the guest to the host (CID 2), speaking
//! `bulwark-guest-protocol`. `Hello` and the attestation key are written first on the
//! connection; then a writer thread sends queued messages in order. A reader thread
//! answers the host (Ping, Challenge), turns `Shutdown` into the VM's stop request,
//! keeps the latest `Verdict`, and answers every malformed, oversized or truncated
//! frame with an `Error` message without stopping. Nothing the host sends grows
//! memory: the queue is bounded, and output and replies to the host may only fill
//! part of it, so the guest's own reports (`Exit`, `Refusal`, `PowerOff`) keep room.
//! Every write has a deadline, so a host that stops reading cannot hold the guest.
//! The panic hook can still send a last frame ([`emergency_send`]).
//!
//! Attested TLS handshakes ask the host for evidence ([`Channel::request_evidence`]):
//! at most [`MAX_EVIDENCE_REQUESTS`] wait at once, each answered by its own `request`
//! number with `Evidence` chunks (in order, within their declared total) or
//! `EvidenceUnavailable`; anything else fails that request alone.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_guest_protocol::{
    challenge_signed_bytes, decode_host, encode_guest, AttestationKey, ChallengeResponse,
    EvidenceChunk, EvidenceRequest, FrameReader, GuestMessage, HostMessage, ProtocolError,
};
use p384::ecdsa::{signature::Signer, DerSignature, SigningKey};
use tokio::sync::oneshot;
use vsock::VsockStream;

use crate::pid1::console;
use crate::stop::StopRequest;

/// Messages waiting for the writer.
const QUEUE: usize = 1024;
/// Output chunks and replies to the host are queued only while fewer than this many
/// messages wait; the rest of the queue is kept for the guest's own reports.
const SHARED_QUEUE: usize = 768;
/// A frame that stalls this long half-received is reported as truncated (a whole
/// frame is at most 64 KiB: a live host sends it in far less).
const FRAME_DEADLINE: Duration = Duration::from_secs(5);
/// How often the reader wakes to check that deadline.
const READ_TICK: Duration = Duration::from_secs(1);
/// The longest one frame may take to write; then the link is given up.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Console lines about the host's bad frames: the first this many, then one in 1000.
const LOGGED_HOST_ERRORS: u64 = 32;

/// Evidence requests that may wait for the host at once.
pub const MAX_EVIDENCE_REQUESTS: usize = 16;

/// The connected stream, shared by the writer thread and the panic hook; `None`
/// before the connection and after a failed write.
static LINK: Mutex<Option<VsockStream>> = Mutex::new(None);

/// The host's latest verdict on this VM's evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Affirmed.
    pub accepted: bool,
    /// Why.
    pub detail: String,
}

enum Outgoing {
    Message(GuestMessage),
    Flush(std::sync::mpsc::Sender<()>),
}

// A newtype so `Outgoing` stays private while `Channel` is Debug.
struct OutgoingBox(Outgoing);

impl std::fmt::Debug for OutgoingBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outgoing")
    }
}

/// The host's answer to an evidence request: the document, or why not.
pub type EvidenceAnswer = Result<Vec<u8>, String>;

/// One evidence request waiting for the host.
struct PendingEvidence {
    reply: oneshot::Sender<EvidenceAnswer>,
    total: Option<usize>,
    data: Vec<u8>,
}

/// The evidence requests waiting for the host, by request number.
#[derive(Default)]
struct EvidenceRequests {
    next: u32,
    pending: HashMap<u32, PendingEvidence>,
}

impl std::fmt::Debug for EvidenceRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EvidenceRequests({} waiting)", self.pending.len())
    }
}

/// The guest's end of the host channel.
#[derive(Debug, Clone)]
pub struct Channel {
    queue: SyncSender<OutgoingBox>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    key: Arc<SigningKey>,
    stop: Arc<StopRequest>,
    verdict: Arc<Mutex<Option<Verdict>>>,
    host_errors: Arc<AtomicU64>,
    evidence: Arc<Mutex<EvidenceRequests>>,
}

/// The receiving half handed to [`Channel::connect`].
#[derive(Debug)]
pub struct PendingQueue(Receiver<OutgoingBox>);

#[cfg(test)]
impl PendingQueue {
    /// The next queued message, waiting up to `timeout`: tests play the host with it.
    pub(crate) fn next_message(&self, timeout: Duration) -> Option<GuestMessage> {
        loop {
            match self.0.recv_timeout(timeout) {
                Ok(OutgoingBox(Outgoing::Message(m))) => return Some(m),
                Ok(OutgoingBox(Outgoing::Flush(_))) => continue,
                Err(_) => return None,
            }
        }
    }
}

impl Channel {
    /// A channel that queues messages until [`Channel::connect`]; makes the attestation
    /// key pair from the kernel RNG. A host `Shutdown` goes to `stop`.
    pub fn new(stop: Arc<StopRequest>) -> (Self, PendingQueue) {
        let (queue, rx) = sync_channel(QUEUE);
        let key = SigningKey::random(&mut rand_core::OsRng);
        (
            Channel {
                queue,
                queued: Arc::new(AtomicUsize::new(0)),
                dropped: Arc::new(AtomicU64::new(0)),
                key: Arc::new(key),
                stop,
                verdict: Arc::new(Mutex::new(None)),
                host_errors: Arc::new(AtomicU64::new(0)),
                evidence: Arc::new(Mutex::new(EvidenceRequests::default())),
            },
            PendingQueue(rx),
        )
    }

    /// The attestation public key message.
    pub fn attestation_key(&self) -> GuestMessage {
        let point = self.key.verifying_key().to_encoded_point(false);
        GuestMessage::AttestationKey(AttestationKey {
            algorithm: "ecdsa-p384".into(),
            public_key: point.as_bytes().to_vec(),
        })
    }

    fn enqueue(&self, msg: GuestMessage, limit: usize) -> bool {
        if self.queued.load(Ordering::Relaxed) >= limit {
            return false;
        }
        match self.queue.try_send(OutgoingBox(Outgoing::Message(msg))) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Queues one of the guest's own reports; never blocks. Returns whether it was
    /// queued (it is dropped, and counted, only when the whole queue is full).
    pub fn send(&self, msg: GuestMessage) -> bool {
        let ok = self.enqueue(msg, QUEUE);
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Queues workload output or a reply to the host, only while the shared part of
    /// the queue has room; returns whether it was queued. Never blocks.
    pub fn send_shared(&self, msg: GuestMessage) -> bool {
        self.enqueue(msg, SHARED_QUEUE)
    }

    /// Waits up to `timeout` for everything queued so far to be written. Blocks: call
    /// it outside the async runtime.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut item = OutgoingBox(Outgoing::Flush(tx));
        loop {
            match self.queue.try_send(item) {
                Ok(()) => break,
                Err(std::sync::mpsc::TrySendError::Full(back)) if Instant::now() < deadline => {
                    item = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }

    /// Connects to the host's `port` on CID 2, retrying until `wait` has passed; writes
    /// `hello` and the attestation key first, then starts the writer (which sends what
    /// was queued before the connection) and the reader. Blocks.
    pub fn connect(
        &self,
        pending: PendingQueue,
        port: u32,
        wait: Duration,
        hello: GuestMessage,
    ) -> Result<(), String> {
        let deadline = Instant::now() + wait;
        let stream = loop {
            match VsockStream::connect_with_cid_port(vsock::VMADDR_CID_HOST, port) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "no host listens on vsock port {port} (CID 2) after {} s: {e}",
                        wait.as_secs()
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let reader = stream
            .try_clone()
            .map_err(|e| format!("cloning the host channel socket: {e}"))?;
        reader
            .set_read_timeout(Some(READ_TICK))
            .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(1))))
            .map_err(|e| format!("setting host channel timeouts: {e}"))?;
        *LINK.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
        for first in [hello, self.attestation_key()] {
            let bytes = encode_guest(&first).map_err(|e| format!("encoding {first:?}: {e}"))?;
            if !write_frame(&bytes) {
                return Err("the host stopped taking bytes during the hello".into());
            }
        }
        let (queued, dropped) = (self.queued.clone(), self.dropped.clone());
        std::thread::Builder::new()
            .name("channel-writer".into())
            .spawn(move || writer(pending.0, queued, dropped))
            .map_err(|e| format!("starting the channel writer: {e}"))?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("channel-reader".into())
            .spawn(move || me.reader(reader))
            .map_err(|e| format!("starting the channel reader: {e}"))?;
        Ok(())
    }

    /// The guest's own reports that could not be queued or written.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The host's latest verdict, if any.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the host for an evidence document bound to `nonce` (the TLS client's)
    /// and to `tls_key_sha256` (the certificate's key); returns the request number
    /// and where the answer arrives. The caller bounds its wait and calls
    /// [`Channel::forget_evidence`] when it gives up. Fails at once when
    /// [`MAX_EVIDENCE_REQUESTS`] already wait or the queue has no room.
    pub fn request_evidence(
        &self,
        nonce: &[u8],
        tls_key_sha256: [u8; 32],
    ) -> Result<(u32, oneshot::Receiver<EvidenceAnswer>), String> {
        let (tx, rx) = oneshot::channel();
        let request = {
            let mut r = self.evidence.lock().unwrap_or_else(|p| p.into_inner());
            if r.pending.len() >= MAX_EVIDENCE_REQUESTS {
                return Err(format!(
                    "{MAX_EVIDENCE_REQUESTS} attested TLS handshakes already wait for evidence"
                ));
            }
            let request = r.next;
            r.next = r.next.wrapping_add(1);
            r.pending.insert(
                request,
                PendingEvidence {
                    reply: tx,
                    total: None,
                    data: Vec::new(),
                },
            );
            request
        };
        let msg = GuestMessage::EvidenceRequest(EvidenceRequest {
            request,
            nonce: nonce.to_vec(),
            tls_key_sha256: tls_key_sha256.to_vec(),
        });
        if !self.send_shared(msg) {
            self.forget_evidence(request);
            return Err("the host channel's queue is full".into());
        }
        Ok((request, rx))
    }

    /// Drops a request nobody waits for any more (a late answer is then ignored).
    pub fn forget_evidence(&self, request: u32) {
        self.evidence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .remove(&request);
    }

    /// Evidence requests waiting for the host.
    pub fn evidence_waiting(&self) -> usize {
        self.evidence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .len()
    }

    /// Ends `request` with `answer` (if anyone still waits for it).
    fn answer_evidence(&self, request: u32, answer: EvidenceAnswer) {
        let waiting = self
            .evidence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .remove(&request);
        match waiting {
            Some(p) => {
                let _ = p.reply.send(answer);
            }
            None => console(&format!(
                "host channel: an answer to evidence request {request}, which nobody waits for, ignored"
            )),
        }
    }

    /// One chunk of an evidence document (its limits were checked on decoding:
    /// `offset + data ≤ total ≤ MAX_EVIDENCE`).
    fn evidence_chunk(&self, c: EvidenceChunk) {
        let total = c.total as usize;
        let bad = {
            let mut r = self.evidence.lock().unwrap_or_else(|p| p.into_inner());
            let Some(p) = r.pending.get_mut(&c.request) else {
                drop(r);
                return self.answer_evidence(c.request, Err(String::new()));
            };
            match p.total {
                Some(t) if t != total => Some(format!(
                    "the host's evidence chunks disagree on the length ({t}, then {total})"
                )),
                _ if c.offset as usize != p.data.len() => Some(format!(
                    "the host's evidence chunk starts at {} where {} was next",
                    c.offset,
                    p.data.len()
                )),
                _ => {
                    p.total = Some(total);
                    p.data.extend_from_slice(&c.data);
                    None
                }
            }
        };
        if let Some(e) = bad {
            return self.answer_evidence(c.request, Err(e));
        }
        let done = {
            let mut r = self.evidence.lock().unwrap_or_else(|p| p.into_inner());
            match r.pending.get(&c.request) {
                Some(p) if p.data.len() == total => r.pending.remove(&c.request),
                _ => None,
            }
        };
        if let Some(p) = done {
            let _ = p.reply.send(Ok(p.data));
        }
    }

    fn host_error(&self, e: &bulwark_guest_protocol::FrameError) {
        let n = self.host_errors.fetch_add(1, Ordering::Relaxed);
        if n < LOGGED_HOST_ERRORS || n.is_multiple_of(1000) {
            console(&format!("host channel: {e} (host error #{})", n + 1));
        }
        self.send_shared(GuestMessage::Error(e.report()));
    }

    fn reader(self, mut stream: VsockStream) {
        let mut frames = FrameReader::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut frame_started: Option<Instant> = None;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => {
                    if let Some(e) = frames.finish() {
                        self.host_error(&e);
                    }
                    console("host channel: the host closed the connection");
                    return;
                }
                Ok(n) => {
                    frames.push(&buf[..n]);
                    while let Some(next) = frames.next_frame() {
                        // A whole frame (or a reported problem) ends the one that was
                        // being timed.
                        frame_started = None;
                        match next.and_then(|f| decode_host(&f)) {
                            Ok(msg) => self.handle(msg),
                            Err(e) => self.host_error(&e),
                        }
                    }
                    if frames.in_frame() && frame_started.is_none() {
                        frame_started = Some(Instant::now());
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    console(&format!("host channel: read failed: {e}"));
                    return;
                }
            }
            // A frame left half-received past the deadline is truncated: report it and
            // start afresh at the next byte.
            if frame_started.is_some_and(|t| t.elapsed() >= FRAME_DEADLINE) {
                if let Some(e) = frames.finish() {
                    self.host_error(&e);
                }
                frame_started = None;
            }
        }
    }

    pub(crate) fn handle(&self, msg: HostMessage) {
        match msg {
            HostMessage::Hello { protocol, host } => console(&format!(
                "host channel: host {host:?} speaks protocol {protocol}"
            )),
            HostMessage::Ping { nonce } => {
                self.send_shared(GuestMessage::Pong { nonce });
            }
            HostMessage::Challenge { nonce } => {
                let signature: DerSignature = self.key.sign(&challenge_signed_bytes(&nonce));
                self.send_shared(GuestMessage::ChallengeResponse(ChallengeResponse {
                    nonce,
                    signature: signature.as_bytes().to_vec(),
                }));
            }
            HostMessage::Verdict { accepted, detail } => {
                let verdict = Verdict { accepted, detail };
                let mut latest = self.verdict.lock().unwrap_or_else(|p| p.into_inner());
                if latest.as_ref() != Some(&verdict) {
                    console(&format!(
                        "host verdict: accepted={}: {}",
                        verdict.accepted, verdict.detail
                    ));
                }
                *latest = Some(verdict);
            }
            HostMessage::Shutdown { reason } => {
                self.stop.request(format!("the host asked: {reason}"));
            }
            HostMessage::Evidence(chunk) => self.evidence_chunk(chunk),
            HostMessage::EvidenceUnavailable { request, reason } => {
                self.answer_evidence(request, Err(format!("the host has no evidence: {reason}")))
            }
            HostMessage::Error(ProtocolError { code, message }) => {
                let n = self.host_errors.fetch_add(1, Ordering::Relaxed);
                if n < LOGGED_HOST_ERRORS {
                    console(&format!(
                        "host channel: the host reports {code:?}: {message}"
                    ))
                }
            }
        }
    }
}

fn writer(queue: Receiver<OutgoingBox>, queued: Arc<AtomicUsize>, dropped: Arc<AtomicU64>) {
    for OutgoingBox(item) in queue {
        match item {
            Outgoing::Flush(done) => {
                let _ = done.send(());
            }
            Outgoing::Message(msg) => {
                queued.fetch_sub(1, Ordering::Relaxed);
                let written = match encode_guest(&msg) {
                    Ok(bytes) => write_frame(&bytes),
                    Err(e) => {
                        console(&format!("host channel: not sent: {e}"));
                        false
                    }
                };
                if !written {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Writes all of `bytes` before `deadline`; `Err` means the stream is now out of step.
fn write_all_by(stream: &mut VsockStream, bytes: &[u8], deadline: Instant) -> Result<(), String> {
    let mut at = 0;
    while at < bytes.len() {
        match stream.write(&bytes[at..]) {
            Ok(0) => return Err("the host closed the connection".into()),
            Ok(n) => at += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
        if at < bytes.len() && Instant::now() >= deadline {
            return Err(format!(
                "the host took {at} of {} bytes in time",
                bytes.len()
            ));
        }
    }
    Ok(())
}

/// Writes one whole frame under the link lock within [`WRITE_DEADLINE`]; a failed or
/// late write drops the link (the stream would be out of step).
fn write_frame(bytes: &[u8]) -> bool {
    let mut link = LINK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(stream) = link.as_mut() else {
        return false;
    };
    match write_all_by(stream, bytes, Instant::now() + WRITE_DEADLINE) {
        Ok(()) => true,
        Err(e) => {
            console(&format!(
                "host channel: write failed, giving the link up: {e}"
            ));
            *link = None;
            false
        }
    }
}

/// Sends one message straight to the host from any thread, the panicking one
/// included: waits at most a second for the link and a second for the write, and
/// gives up silently.
pub fn emergency_send(msg: &GuestMessage) {
    let Ok(bytes) = encode_guest(msg) else { return };
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut link = loop {
        match LINK.try_lock() {
            Ok(l) => break l,
            Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return,
        }
    };
    if let Some(s) = link.as_mut() {
        let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
        if write_all_by(s, &bytes, Instant::now() + Duration::from_secs(1)).is_err() {
            *link = None;
        }
    }
}

/// Before a power-off: ends the channel's sending side (the host reads every byte
/// queued before the shutdown, then end-of-stream) and waits, at most `timeout`,
/// for the host to close its side, which shows that it read them. Without this
/// the last messages (`Refusal`, `PowerOff`) can still sit in the virtqueue when
/// the VM stops. A host that never closes costs `timeout`.
pub fn linger(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match LINK.try_lock() {
            Ok(l) => break l.as_ref().and_then(|s| s.try_clone().ok()),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                break p.into_inner().as_ref().and_then(|s| s.try_clone().ok())
            }
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return,
        }
    };
    let Some(mut stream) = stream else { return };
    if stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            // The host closed: it has read everything before our shutdown.
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::ecdsa::{signature::Verifier, VerifyingKey};

    fn channel() -> (Channel, PendingQueue) {
        Channel::new(Arc::new(StopRequest::default()))
    }

    fn next_message(q: &PendingQueue) -> GuestMessage {
        match q.0.try_recv() {
            Ok(OutgoingBox(Outgoing::Message(m))) => m,
            other => panic!("no message queued: {other:?}"),
        }
    }

    #[test]
    fn the_challenge_answer_verifies_with_the_announced_key() {
        let (ch, q) = channel();
        let GuestMessage::AttestationKey(k) = ch.attestation_key() else {
            panic!("not a key")
        };
        assert_eq!(k.public_key.len(), 97);
        ch.handle(HostMessage::Challenge { nonce: vec![7; 32] });
        let GuestMessage::ChallengeResponse(r) = next_message(&q) else {
            panic!("no challenge response queued")
        };
        let vk = VerifyingKey::from_sec1_bytes(&k.public_key).unwrap();
        let sig = DerSignature::from_bytes(&r.signature).unwrap();
        vk.verify(&challenge_signed_bytes(&[7; 32]), &sig).unwrap();
        assert!(vk.verify(&challenge_signed_bytes(&[8; 32]), &sig).is_err());
    }

    #[test]
    fn ping_is_answered_shutdown_is_a_stop_and_the_latest_verdict_is_kept() {
        let (ch, q) = channel();
        ch.handle(HostMessage::Ping { nonce: 5 });
        assert_eq!(next_message(&q), GuestMessage::Pong { nonce: 5 });
        ch.handle(HostMessage::Shutdown {
            reason: "op".into(),
        });
        assert_eq!(ch.stop.reason().as_deref(), Some("the host asked: op"));
        for accepted in [true, false] {
            ch.handle(HostMessage::Verdict {
                accepted,
                detail: "d".into(),
            });
        }
        assert_eq!(ch.verdict().map(|v| v.accepted), Some(false));
    }

    #[test]
    fn evidence_arrives_in_chunks_for_its_own_request() {
        let (ch, q) = channel();
        let (a, mut rx_a) = ch.request_evidence(&[1; 32], [2; 32]).unwrap();
        let (b, mut rx_b) = ch.request_evidence(&[3; 32], [4; 32]).unwrap();
        assert_ne!(a, b);
        let GuestMessage::EvidenceRequest(r) = next_message(&q) else {
            panic!("no evidence request queued")
        };
        assert_eq!(
            (r.request, r.nonce, r.tls_key_sha256),
            (a, vec![1; 32], vec![2; 32])
        );
        let doc: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let chunks = EvidenceChunk::split(a, &doc);
        assert!(chunks.len() > 1);
        for c in chunks {
            assert!(rx_a.try_recv().is_err(), "answered before the last chunk");
            ch.handle(HostMessage::Evidence(c));
        }
        assert_eq!(rx_a.try_recv().unwrap(), Ok(doc));
        ch.handle(HostMessage::EvidenceUnavailable {
            request: b,
            reason: "no TPM".into(),
        });
        let err = rx_b.try_recv().unwrap().unwrap_err();
        assert!(err.contains("no TPM"), "{err}");
        assert_eq!(ch.evidence_waiting(), 0);
        // A late or invented answer changes nothing.
        ch.handle(HostMessage::Evidence(EvidenceChunk {
            request: a,
            total: 1,
            offset: 0,
            data: vec![1],
        }));
        assert_eq!(ch.evidence_waiting(), 0);
    }

    #[test]
    fn a_chunk_out_of_order_or_of_another_length_fails_that_request() {
        let (ch, _q) = channel();
        let chunk = |request, total, offset, n| {
            HostMessage::Evidence(EvidenceChunk {
                request,
                total,
                offset,
                data: vec![0; n],
            })
        };
        let (a, mut rx) = ch.request_evidence(&[1; 32], [2; 32]).unwrap();
        ch.handle(chunk(a, 10, 4, 2));
        assert!(rx.try_recv().unwrap().unwrap_err().contains("starts at 4"));
        let (b, mut rx) = ch.request_evidence(&[1; 32], [2; 32]).unwrap();
        ch.handle(chunk(b, 10, 0, 4));
        ch.handle(chunk(b, 12, 4, 4));
        assert!(rx.try_recv().unwrap().unwrap_err().contains("disagree"));
        assert_eq!(ch.evidence_waiting(), 0);
    }

    #[test]
    fn waiting_evidence_requests_are_bounded() {
        let (ch, _q) = channel();
        let mut held = Vec::new();
        for _ in 0..MAX_EVIDENCE_REQUESTS {
            held.push(ch.request_evidence(&[1; 32], [2; 32]).unwrap());
        }
        let err = ch.request_evidence(&[1; 32], [2; 32]).unwrap_err();
        assert!(err.contains("already wait"), "{err}");
        ch.forget_evidence(held[0].0);
        assert!(ch.request_evidence(&[1; 32], [2; 32]).is_ok());
    }

    #[test]
    fn a_flooding_host_fills_only_the_shared_part_of_the_queue() {
        let (ch, _q) = channel();
        for i in 0..10_000 {
            ch.handle(HostMessage::Ping { nonce: i });
        }
        assert_eq!(ch.queued.load(Ordering::Relaxed), SHARED_QUEUE);
        // The guest's own reports still fit.
        for _ in 0..(QUEUE - SHARED_QUEUE) {
            assert!(ch.send(GuestMessage::PowerOff { reason: "x".into() }));
        }
        assert!(!ch.send(GuestMessage::PowerOff { reason: "x".into() }));
        assert_eq!(ch.dropped(), 1);
    }
}
