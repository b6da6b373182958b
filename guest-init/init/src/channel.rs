//! The host channel: one vsock stream from the guest to the host (CID 2), speaking
//! `bulwark-guest-protocol`. A writer thread sends queued messages in order; a reader
//! thread answers the host (Ping, Challenge), hands Shutdown and Verdict to the main
//! task, and answers every malformed, oversized or truncated frame with an `Error`
//! message without stopping. Messages queued before the connection are sent once it is
//! up. The panic hook can still send a last frame ([`emergency_send`]).

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_guest_protocol::{
    challenge_signed_bytes, decode_host, encode_guest, AttestationKey, ChallengeResponse,
    FrameReader, GuestMessage, HostMessage, ProtocolError,
};
use p384::ecdsa::{signature::Signer, DerSignature, SigningKey};
use vsock::VsockStream;

use crate::pid1::console;

/// Messages waiting for the writer; output chunks beyond this are dropped (counted).
const QUEUE: usize = 1024;
/// A frame that stalls this long half-received is reported as truncated (a whole
/// frame is at most 64 KiB: a live host sends it in far less).
const FRAME_DEADLINE: Duration = Duration::from_secs(5);
/// A host that takes no bytes for this long is given up on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connected stream, shared by the writer thread and the panic hook; `None`
/// before the connection and after a failed write.
static LINK: Mutex<Option<VsockStream>> = Mutex::new(None);

/// What the host asked the main task to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// Stop the workload and power off.
    Shutdown(String),
    /// The verdict on this VM's evidence.
    Verdict {
        /// Affirmed.
        accepted: bool,
        /// Why.
        detail: String,
    },
}

enum Outgoing {
    Message(GuestMessage),
    Flush(std::sync::mpsc::Sender<()>),
}

/// The guest's end of the host channel.
#[derive(Debug, Clone)]
pub struct Channel {
    queue: SyncSender<OutgoingBox>,
    dropped: Arc<AtomicU64>,
    key: Arc<SigningKey>,
}

// A newtype so `Outgoing` stays private while `Channel` is Debug.
struct OutgoingBox(Outgoing);

impl std::fmt::Debug for OutgoingBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outgoing")
    }
}

/// The receiving half handed to [`Channel::connect`].
#[derive(Debug)]
pub struct PendingQueue(Receiver<OutgoingBox>);

impl Channel {
    /// A channel that queues messages until [`Channel::connect`]; makes the attestation
    /// key pair from the kernel RNG.
    pub fn new() -> (Self, PendingQueue) {
        let (queue, rx) = sync_channel(QUEUE);
        let key = SigningKey::random(&mut rand_core::OsRng);
        (
            Channel {
                queue,
                dropped: Arc::new(AtomicU64::new(0)),
                key: Arc::new(key),
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

    /// Queues a message that must not be lost (blocks while the queue is full, up to
    /// a second, then drops it and counts it).
    pub fn send(&self, msg: GuestMessage) {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut item = OutgoingBox(Outgoing::Message(msg));
        loop {
            match self.queue.try_send(item) {
                Ok(()) => return,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    item = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// Queues a message that may be dropped when the host is slow (workload output);
    /// returns whether it was queued.
    pub fn try_send(&self, msg: GuestMessage) -> bool {
        self.queue
            .try_send(OutgoingBox(Outgoing::Message(msg)))
            .is_ok()
    }

    /// Waits up to `timeout` for everything queued so far to be written.
    pub fn flush(&self, timeout: Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self
            .queue
            .try_send(OutgoingBox(Outgoing::Flush(tx)))
            .is_ok()
        {
            let _ = rx.recv_timeout(timeout);
        }
    }

    /// Connects to the host's `port` on CID 2, retrying until `wait` has passed; then
    /// starts the writer (which first sends what was queued) and the reader, whose
    /// host events go to `events`.
    pub fn connect(
        &self,
        pending: PendingQueue,
        port: u32,
        wait: Duration,
        events: tokio::sync::mpsc::UnboundedSender<HostEvent>,
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
            .set_read_timeout(Some(FRAME_DEADLINE))
            .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
            .map_err(|e| format!("setting host channel timeouts: {e}"))?;
        *LINK.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
        let dropped = self.dropped.clone();
        std::thread::Builder::new()
            .name("channel-writer".into())
            .spawn(move || writer(pending.0, dropped))
            .map_err(|e| format!("starting the channel writer: {e}"))?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("channel-reader".into())
            .spawn(move || me.reader(reader, events))
            .map_err(|e| format!("starting the channel reader: {e}"))?;
        Ok(())
    }

    /// Messages that could not be sent (queue full or link down).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn reader(
        self,
        mut stream: VsockStream,
        events: tokio::sync::mpsc::UnboundedSender<HostEvent>,
    ) {
        let mut frames = FrameReader::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut frame_started: Option<Instant> = None;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => {
                    if let Some(e) = frames.finish() {
                        console(&format!("host channel: {e}"));
                    }
                    console("host channel: the host closed the connection");
                    return;
                }
                Ok(n) => {
                    frames.push(&buf[..n]);
                    while let Some(next) = frames.next_frame() {
                        match next.and_then(|f| decode_host(&f)) {
                            Ok(msg) => self.handle(msg, &events),
                            Err(e) => {
                                console(&format!("host channel: {e}"));
                                self.send(GuestMessage::Error(e.report()));
                            }
                        }
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    console(&format!("host channel: read failed: {e}"));
                    return;
                }
            }
            // A frame left half-received past the deadline is truncated: report it and
            // start afresh at the next byte.
            frame_started = match (frames.in_frame(), frame_started) {
                (false, _) => None,
                (true, None) => Some(Instant::now()),
                (true, Some(t)) if t.elapsed() >= FRAME_DEADLINE => {
                    if let Some(e) = frames.finish() {
                        console(&format!("host channel: {e}"));
                        self.send(GuestMessage::Error(e.report()));
                    }
                    None
                }
                (true, started) => started,
            };
        }
    }

    fn handle(&self, msg: HostMessage, events: &tokio::sync::mpsc::UnboundedSender<HostEvent>) {
        match msg {
            HostMessage::Hello { protocol, host } => console(&format!(
                "host channel: host {host:?} speaks protocol {protocol}"
            )),
            HostMessage::Ping { nonce } => self.send(GuestMessage::Pong { nonce }),
            HostMessage::Challenge { nonce } => {
                let signature: DerSignature = self.key.sign(&challenge_signed_bytes(&nonce));
                self.send(GuestMessage::ChallengeResponse(ChallengeResponse {
                    nonce,
                    signature: signature.as_bytes().to_vec(),
                }));
            }
            HostMessage::Verdict { accepted, detail } => {
                let _ = events.send(HostEvent::Verdict { accepted, detail });
            }
            HostMessage::Shutdown { reason } => {
                let _ = events.send(HostEvent::Shutdown(reason));
            }
            HostMessage::Error(ProtocolError { code, message }) => console(&format!(
                "host channel: the host reports {code:?}: {message}"
            )),
        }
    }
}

fn writer(queue: Receiver<OutgoingBox>, dropped: Arc<AtomicU64>) {
    for OutgoingBox(item) in queue {
        match item {
            Outgoing::Flush(done) => {
                let _ = done.send(());
            }
            Outgoing::Message(msg) => match encode_guest(&msg) {
                Ok(bytes) => {
                    if !write_frame(&bytes) {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    console(&format!("host channel: not sent: {e}"));
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            },
        }
    }
}

/// Writes one whole frame under the link lock; a failed or timed-out write drops the
/// link (the stream would be out of step).
fn write_frame(bytes: &[u8]) -> bool {
    let mut link = LINK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(stream) = link.as_mut() else {
        return false;
    };
    match stream.write_all(bytes) {
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
/// included: waits at most a second for the link, and gives up silently.
pub fn emergency_send(msg: &GuestMessage) {
    let Ok(bytes) = encode_guest(msg) else { return };
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match LINK.try_lock() {
            Ok(mut link) => {
                if let Some(s) = link.as_mut() {
                    let _ = s.write_all(&bytes);
                    let _ = s.flush();
                }
                return;
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                if let Some(s) = p.into_inner().as_mut() {
                    let _ = s.write_all(&bytes);
                }
                return;
            }
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::ecdsa::{signature::Verifier, VerifyingKey};

    #[test]
    fn the_challenge_answer_verifies_with_the_announced_key() {
        let (ch, _q) = Channel::new();
        let GuestMessage::AttestationKey(k) = ch.attestation_key() else {
            panic!("not a key")
        };
        assert_eq!(k.public_key.len(), 97);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        ch.handle(HostMessage::Challenge { nonce: vec![7; 32] }, &tx);
        let OutgoingBox(Outgoing::Message(GuestMessage::ChallengeResponse(r))) =
            _q.0.try_recv().unwrap()
        else {
            panic!("no challenge response queued")
        };
        let vk = VerifyingKey::from_sec1_bytes(&k.public_key).unwrap();
        let sig = DerSignature::from_bytes(&r.signature).unwrap();
        vk.verify(&challenge_signed_bytes(&[7; 32]), &sig).unwrap();
        assert!(vk.verify(&challenge_signed_bytes(&[8; 32]), &sig).is_err());
    }

    #[test]
    fn ping_is_answered_and_host_requests_reach_the_main_task() {
        let (ch, q) = Channel::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        ch.handle(HostMessage::Ping { nonce: 5 }, &tx);
        ch.handle(
            HostMessage::Shutdown {
                reason: "op".into(),
            },
            &tx,
        );
        assert!(matches!(
            q.0.try_recv().unwrap(),
            OutgoingBox(Outgoing::Message(GuestMessage::Pong { nonce: 5 }))
        ));
        assert_eq!(rx.try_recv().unwrap(), HostEvent::Shutdown("op".into()));
    }
}
