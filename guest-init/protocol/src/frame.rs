//! Framing: header, limits, an incremental reader for hostile byte streams, encoding.

use serde::{de::DeserializeOwned, Serialize};

use crate::{ErrorCode, GuestMessage, HostMessage, ProtocolError};

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"BW";
/// The protocol version this crate speaks (header byte 2, and `Hello.protocol`).
pub const PROTOCOL_VERSION: u8 = 1;
/// Header bytes before the payload.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload a frame may carry, either direction (64 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Who sent a frame (header byte 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From `bulwark-init` to the host.
    GuestToHost = 1,
    /// From the host to `bulwark-init`.
    HostToGuest = 2,
}

impl Direction {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::GuestToHost),
            2 => Some(Self::HostToGuest),
            _ => None,
        }
    }
}

/// One whole frame with a well-formed header; the payload is not decoded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Header byte 3.
    pub direction: Direction,
    /// The CBOR payload.
    pub payload: Vec<u8>,
}

impl Frame {
    pub(crate) fn expect_direction(&self, want: Direction) -> Result<(), FrameError> {
        if self.direction == want {
            Ok(())
        } else {
            Err(FrameError::WrongDirection {
                got: self.direction as u8,
            })
        }
    }
}

/// What is wrong with received bytes. The receiver answers each with an `Error`
/// message ([`FrameError::report`]) and goes on reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream is not at a frame boundary: `skipped` bytes were discarded until the
    /// next `BW` + version.
    #[error("bad frame magic: {skipped} bytes skipped to the next frame header")]
    BadMagic {
        /// Bytes discarded.
        skipped: u64,
    },
    /// A frame of another protocol version; its payload was skipped.
    #[error("protocol version {got} is not supported (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// Header byte 2.
        got: u8,
    },
    /// The direction byte is neither 1 nor 2, or names the receiver as sender.
    #[error("frame direction {got} is not what this side receives")]
    WrongDirection {
        /// Header byte 3.
        got: u8,
    },
    /// The payload is longer than [`MAX_PAYLOAD`]; it is being skipped.
    #[error("frame payload of {len} bytes is over the limit of {MAX_PAYLOAD}")]
    Oversized {
        /// Declared length.
        len: u64,
    },
    /// The stream ended, or stalled past the receiver's deadline, inside a frame.
    #[error("truncated frame: {have} of {want} bytes arrived")]
    Truncated {
        /// Bytes of the frame received.
        have: u64,
        /// Bytes the frame needs (header + payload).
        want: u64,
    },
    /// The payload is not a valid message (CBOR, unknown message or field, a limit).
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl FrameError {
    /// The `Error` message that answers this problem.
    pub fn report(&self) -> ProtocolError {
        let code = match self {
            FrameError::BadMagic { .. } => ErrorCode::BadMagic,
            FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            FrameError::WrongDirection { .. } => ErrorCode::WrongDirection,
            FrameError::Oversized { .. } => ErrorCode::Oversized,
            FrameError::Truncated { .. } => ErrorCode::Truncated,
            FrameError::Malformed(_) => ErrorCode::Malformed,
        };
        let mut message = self.to_string();
        truncate_utf8(&mut message, crate::MAX_TEXT);
        ProtocolError { code, message }
    }
}

/// A message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoded message is over [`MAX_PAYLOAD`].
    #[error("encoded message is {len} bytes, over the frame limit of {MAX_PAYLOAD}")]
    TooLarge {
        /// Encoded length.
        len: usize,
    },
    /// The message breaks a limit of the protocol.
    #[error("message breaks a protocol limit: {0}")]
    Invalid(String),
    /// CBOR serialisation failed.
    #[error("CBOR encoding failed: {0}")]
    Cbor(String),
}

fn encode<T: Serialize>(direction: Direction, msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; FRAME_HEADER_LEN];
    ciborium::into_writer(msg, &mut out).map_err(|e| EncodeError::Cbor(e.to_string()))?;
    let len = out.len() - FRAME_HEADER_LEN;
    if len > MAX_PAYLOAD {
        return Err(EncodeError::TooLarge { len });
    }
    out[..2].copy_from_slice(&MAGIC);
    out[2] = PROTOCOL_VERSION;
    out[3] = direction as u8;
    out[4..8].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// One whole guest → host frame (header and payload) for `msg`.
pub fn encode_guest(msg: &GuestMessage) -> Result<Vec<u8>, EncodeError> {
    msg.validate().map_err(EncodeError::Invalid)?;
    encode(Direction::GuestToHost, msg)
}

/// One whole host → guest frame (header and payload) for `msg`.
pub fn encode_host(msg: &HostMessage) -> Result<Vec<u8>, EncodeError> {
    msg.validate().map_err(EncodeError::Invalid)?;
    encode(Direction::HostToGuest, msg)
}

/// CBOR nesting deeper than this is refused before decoding (the messages nest at
/// most 4 levels).
const MAX_CBOR_DEPTH: usize = 16;

pub(crate) fn decode_cbor<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    check_cbor_shape(payload).map_err(FrameError::Malformed)?;
    let mut reader = payload;
    let value: T =
        ciborium::from_reader(&mut reader).map_err(|e| FrameError::Malformed(format!("{e}")))?;
    if !reader.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} bytes after the message",
            reader.len()
        )));
    }
    Ok(value)
}

/// A bounds check of a CBOR item before serde sees it: well-formed heads, lengths
/// inside the payload, depth at most [`MAX_CBOR_DEPTH`], no indefinite lengths. Bytes
/// and text strings must fit in what is left of the payload, so no declared length
/// can make the decoder reserve more than the payload's size.
fn check_cbor_shape(payload: &[u8]) -> Result<(), String> {
    // (items still to read at this level), innermost last.
    let mut pending: Vec<u64> = vec![1];
    let mut at = 0usize;
    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
            continue;
        }
        *top -= 1;
        let head = *payload.get(at).ok_or("CBOR ends inside an item")?;
        at += 1;
        let major = head >> 5;
        let info = head & 0x1f;
        let arg: u64 = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let n = 1usize << (info - 24);
                let bytes = payload
                    .get(at..at + n)
                    .ok_or("CBOR ends inside an item head")?;
                at += n;
                bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
            }
            31 => return Err("indefinite-length CBOR items are not accepted".into()),
            _ => return Err(format!("reserved CBOR additional info {info}")),
        };
        match major {
            2 | 3 => {
                let left = (payload.len() - at) as u64;
                if arg > left {
                    return Err(format!(
                        "CBOR string of {arg} bytes but only {left} bytes are left"
                    ));
                }
                at += arg as usize;
            }
            4 | 5 => {
                let items = if major == 5 {
                    arg.saturating_mul(2)
                } else {
                    arg
                };
                // Every item takes at least one byte.
                if items > (payload.len() - at) as u64 {
                    return Err(format!(
                        "CBOR container of {arg} entries is larger than the payload"
                    ));
                }
                if pending.len() >= MAX_CBOR_DEPTH {
                    return Err(format!("CBOR nested deeper than {MAX_CBOR_DEPTH}"));
                }
                pending.push(items);
            }
            6 => {
                if pending.len() >= MAX_CBOR_DEPTH {
                    return Err(format!("CBOR nested deeper than {MAX_CBOR_DEPTH}"));
                }
                pending.push(1);
            }
            // 0, 1, 7: integers, simple values and floats carry no content.
            _ => {}
        }
    }
    Ok(())
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Reads frames out of a byte stream pushed in pieces of any size.
///
/// Memory is bounded: a frame's bytes are kept only up to `FRAME_HEADER_LEN +
/// MAX_PAYLOAD`; an oversized frame's payload is counted off and dropped as it
/// arrives; bytes that are not at a frame boundary are dropped up to the next
/// `BW` + version.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Payload bytes of an oversized or unsupported frame still to drop.
    skip: u64,
    /// Bytes dropped while looking for a header, not yet reported.
    garbage: u64,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes. Call [`FrameReader::next_frame`] until it returns `None`
    /// after each push.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.skip > 0 {
            let n = self.skip.min(bytes.len() as u64) as usize;
            self.skip -= n as u64;
            bytes = &bytes[n..];
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes of an incomplete frame held (0 at a frame boundary).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Whether the reader is inside a frame (a partial header or payload held, or an
    /// oversized payload still being skipped).
    pub fn in_frame(&self) -> bool {
        !self.buf.is_empty() || self.skip > 0
    }

    /// The error for a stream that ends (or stalls past a deadline) now, if it is
    /// inside a frame; the reader is then reset to a frame boundary.
    pub fn finish(&mut self) -> Option<FrameError> {
        if !self.in_frame() {
            return None;
        }
        let have = self.buf.len() as u64;
        let want = if self.buf.len() >= FRAME_HEADER_LEN {
            FRAME_HEADER_LEN as u64 + u64::from(header_len(&self.buf))
        } else {
            FRAME_HEADER_LEN as u64
        };
        let err = if self.skip > 0 {
            FrameError::Truncated {
                have: 0,
                want: self.skip,
            }
        } else {
            FrameError::Truncated { have, want }
        };
        self.buf.clear();
        self.skip = 0;
        Some(err)
    }

    /// The next whole frame, or the next problem, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        // Resynchronise: drop bytes until the buffer starts with MAGIC + version.
        let start = find_header(&self.buf);
        if start > 0 {
            self.buf.drain(..start);
            self.garbage += start as u64;
        }
        if self.garbage > 0 && (self.buf.len() >= 3 || start > 0) {
            let skipped = std::mem::take(&mut self.garbage);
            return Some(Err(FrameError::BadMagic { skipped }));
        }
        if self.buf.len() < FRAME_HEADER_LEN {
            return None;
        }
        let version = self.buf[2];
        let direction = self.buf[3];
        let len = header_len(&self.buf);
        if version != PROTOCOL_VERSION || len as usize > MAX_PAYLOAD {
            // Drop the header and whatever of the payload is here; skip the rest.
            let have = self.buf.len() - FRAME_HEADER_LEN;
            let take = have.min(len as usize);
            self.buf.drain(..FRAME_HEADER_LEN + take);
            self.skip = u64::from(len) - take as u64;
            return Some(Err(if version != PROTOCOL_VERSION {
                FrameError::UnsupportedVersion { got: version }
            } else {
                FrameError::Oversized {
                    len: u64::from(len),
                }
            }));
        }
        let total = FRAME_HEADER_LEN + len as usize;
        if self.buf.len() < total {
            return None;
        }
        let payload = self.buf[FRAME_HEADER_LEN..total].to_vec();
        self.buf.drain(..total);
        Some(match Direction::from_byte(direction) {
            Some(direction) => Ok(Frame { direction, payload }),
            None => Err(FrameError::WrongDirection { got: direction }),
        })
    }
}

fn header_len(buf: &[u8]) -> u32 {
    u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]])
}

/// Index of the first possible header start (MAGIC followed by any byte is a
/// candidate; a lone trailing `B` or `BW` may be the start of one).
fn find_header(buf: &[u8]) -> usize {
    let mut i = 0;
    while i < buf.len() {
        match &buf[i..] {
            [b'B'] | [b'B', b'W'] => return i,
            [b'B', b'W', ..] => return i,
            _ => i += 1,
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HostMessage, Stage};

    fn ping(nonce: u64) -> Vec<u8> {
        encode_host(&HostMessage::Ping { nonce }).unwrap()
    }

    fn frames(r: &mut FrameReader) -> Vec<Result<Frame, FrameError>> {
        std::iter::from_fn(|| r.next_frame()).collect()
    }

    #[test]
    fn frames_arrive_whole_whatever_the_pieces() {
        let mut stream = ping(1);
        stream.extend(ping(2));
        for piece in [1, 3, 7, 8, 100] {
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                r.push(chunk);
                got.extend(frames(&mut r));
            }
            let msgs: Vec<_> = got
                .into_iter()
                .map(|f| crate::decode_host(&f.unwrap()).unwrap())
                .collect();
            assert_eq!(
                msgs,
                vec![
                    HostMessage::Ping { nonce: 1 },
                    HostMessage::Ping { nonce: 2 }
                ]
            );
            assert!(!r.in_frame());
        }
    }

    #[test]
    fn an_oversized_frame_is_reported_and_skipped_then_reading_goes_on() {
        let mut r = FrameReader::new();
        let len = (MAX_PAYLOAD + 5) as u32;
        let mut bad = vec![b'B', b'W', PROTOCOL_VERSION, 2];
        bad.extend(len.to_be_bytes());
        r.push(&bad);
        assert_eq!(
            r.next_frame(),
            Some(Err(FrameError::Oversized {
                len: u64::from(len)
            }))
        );
        // The payload arrives in pieces and is dropped, not buffered.
        for _ in 0..(MAX_PAYLOAD + 5) / 1000 {
            r.push(&[0u8; 1000]);
            assert_eq!(r.pending(), 0);
            assert!(r.next_frame().is_none());
        }
        let mut tail = vec![0u8; (MAX_PAYLOAD + 5) % 1000];
        tail.extend(ping(9));
        r.push(&tail);
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!(
            crate::decode_host(&f).unwrap(),
            HostMessage::Ping { nonce: 9 }
        );
    }

    #[test]
    fn garbage_is_skipped_to_the_next_header() {
        let mut r = FrameReader::new();
        let mut stream = b"hello, guest".to_vec();
        stream.extend(ping(3));
        r.push(&stream);
        assert_eq!(
            r.next_frame(),
            Some(Err(FrameError::BadMagic { skipped: 12 }))
        );
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!(
            crate::decode_host(&f).unwrap(),
            HostMessage::Ping { nonce: 3 }
        );
        assert!(r.next_frame().is_none());
    }

    #[test]
    fn a_truncated_frame_is_reported_at_the_end_of_the_stream() {
        let mut r = FrameReader::new();
        let f = ping(4);
        r.push(&f[..f.len() - 1]);
        assert!(r.next_frame().is_none());
        assert_eq!(
            r.finish(),
            Some(FrameError::Truncated {
                have: f.len() as u64 - 1,
                want: f.len() as u64
            })
        );
        assert!(!r.in_frame());
        assert_eq!(r.finish(), None);
    }

    #[test]
    fn wrong_version_and_direction_are_errors() {
        let mut f = ping(5);
        f[2] = 9;
        let mut r = FrameReader::new();
        r.push(&f);
        assert_eq!(
            r.next_frame(),
            Some(Err(FrameError::UnsupportedVersion { got: 9 }))
        );
        assert!(r.next_frame().is_none() && !r.in_frame());
        // A guest frame handed to the host decoder and vice versa.
        let g = encode_guest(&GuestMessage::Progress(crate::Progress {
            stage: Stage::InitStarted,
            uptime_us: 1,
            detail: String::new(),
        }))
        .unwrap();
        r.push(&g);
        let frame = r.next_frame().unwrap().unwrap();
        assert!(matches!(
            crate::decode_host(&frame),
            Err(FrameError::WrongDirection { got: 1 })
        ));
        let mut odd = ping(6);
        odd[3] = 7;
        r.push(&odd);
        assert_eq!(
            r.next_frame(),
            Some(Err(FrameError::WrongDirection { got: 7 }))
        );
    }

    #[test]
    fn hostile_cbor_is_malformed_not_a_panic_or_a_big_allocation() {
        for payload in [
            vec![],
            vec![0xff],
            vec![0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // bytes(2^64-1)
            vec![0x9b, 0, 0, 0, 1, 0, 0, 0, 0],                         // array(2^32)
            vec![0x81; 40],                                             // deep nesting
            vec![0xa1, 0x64, b'P', b'i', b'n', b'g'],                   // map ends early
        ] {
            let frame = Frame {
                direction: Direction::HostToGuest,
                payload,
            };
            assert!(matches!(
                crate::decode_host(&frame),
                Err(FrameError::Malformed(_))
            ));
        }
    }

    #[test]
    fn trailing_bytes_after_the_message_are_malformed() {
        let mut f = ping(7);
        f.push(0);
        let len = (f.len() - FRAME_HEADER_LEN) as u32;
        f[4..8].copy_from_slice(&len.to_be_bytes());
        let mut r = FrameReader::new();
        r.push(&f);
        let frame = r.next_frame().unwrap().unwrap();
        let err = crate::decode_host(&frame).unwrap_err();
        assert!(err.to_string().contains("after the message"), "{err}");
    }
}
