//! The host channel between `bulwark-init` (PID 1 of a tenant VM) and the host side
//! (the node agent, the lab's test programs): framing, every message, and the limits.
//! The normative description is `docs/guest-protocol.md`.
//!
//! The channel is one virtio-vsock stream that the guest opens to the host (CID 2,
//! port [`HOST_CHANNEL_PORT`] unless configured otherwise). Each frame is an 8-byte
//! header and a CBOR payload:
//!
//! ```text
//! offset 0  2 bytes  magic "BW"
//! offset 2  1 byte   protocol version (1)
//! offset 3  1 byte   direction: 1 guest → host, 2 host → guest
//! offset 4  4 bytes  payload length, big-endian, at most MAX_PAYLOAD
//! offset 8  payload  CBOR of a GuestMessage or a HostMessage
//! ```
//!
//! Either side may be hostile. [`FrameReader`] never allocates more than
//! [`MAX_PAYLOAD`] for a frame, skips the payload of an oversized one, resynchronises
//! after garbage, and reports each problem as a [`FrameError`] that the receiver
//! answers with an `Error` message; it never panics. This crate holds no guest-only or
//! host-only code: both sides link it.

#![forbid(unsafe_code)]

mod frame;
mod messages;

pub use frame::{
    encode_guest, encode_host, truncate_utf8, Direction, EncodeError, Frame, FrameError,
    FrameReader, FRAME_HEADER_LEN, MAGIC, MAX_PAYLOAD, PROTOCOL_VERSION,
};
pub use messages::*;

/// The vsock port on the host (CID 2) that the guest connects to by default.
pub const HOST_CHANNEL_PORT: u32 = 1024;

/// Largest chunk of workload output in one `Output` message.
pub const MAX_OUTPUT_CHUNK: usize = 16 * 1024;

/// Largest evidence document for attested TLS (it travels in an X.509 extension).
pub const MAX_EVIDENCE: usize = 60 * 1024;
/// Largest piece of an evidence document in one `Evidence` message.
pub const MAX_EVIDENCE_CHUNK: usize = 32 * 1024;

/// Challenge nonces are 16 to 64 bytes.
pub const MIN_NONCE: usize = 16;
/// See [`MIN_NONCE`].
pub const MAX_NONCE: usize = 64;

/// What the guest's attestation key signs in answer to a challenge:
/// `CHALLENGE_CONTEXT ‖ nonce`, ECDSA P-384 over SHA-384 (DER signature).
pub const CHALLENGE_CONTEXT: &[u8] = b"bulwark-guest-challenge-v1\0";

/// The bytes the guest signs for `nonce`.
pub fn challenge_signed_bytes(nonce: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHALLENGE_CONTEXT.len() + nonce.len());
    v.extend_from_slice(CHALLENGE_CONTEXT);
    v.extend_from_slice(nonce);
    v
}

/// Decodes a guest → host frame's payload.
pub fn decode_guest(frame: &Frame) -> Result<GuestMessage, FrameError> {
    frame.expect_direction(Direction::GuestToHost)?;
    let msg: GuestMessage = frame::decode_cbor(&frame.payload)?;
    msg.validate().map_err(FrameError::Malformed)?;
    Ok(msg)
}

/// Decodes a host → guest frame's payload.
pub fn decode_host(frame: &Frame) -> Result<HostMessage, FrameError> {
    frame.expect_direction(Direction::HostToGuest)?;
    let msg: HostMessage = frame::decode_cbor(&frame.payload)?;
    msg.validate().map_err(FrameError::Malformed)?;
    Ok(msg)
}
