//! The launch measurement: a SHA-384 chain over everything the guest starts with.
//! The construction is specified in `docs/measurement.md`; keep the two in step.

use serde::Serialize;
use sha2::{Digest, Sha384};

/// Version tag of the construction; the first event of every chain.
pub const DOMAIN: &str = "bulwark-launch-measurement-v1";

/// One measured field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// `u8` (one byte).
    U8(u8),
    /// `u32`, little-endian.
    U32(u32),
    /// `u64`, little-endian.
    U64(u64),
    /// `u32` little-endian length, then the bytes.
    Bytes(Vec<u8>),
}

/// One event: a tag and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What the event is.
    pub tag: &'static str,
    /// Its fields, in order.
    pub fields: Vec<Field>,
    /// Human-readable summary (not measured).
    pub detail: String,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl Event {
    /// A new event.
    pub fn new(tag: &'static str, fields: Vec<Field>, detail: impl Into<String>) -> Self {
        Event {
            tag,
            fields,
            detail: detail.into(),
        }
    }

    /// The canonical encoding: the tag as bytes, then each field.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, self.tag.as_bytes());
        for f in &self.fields {
            match f {
                Field::U8(v) => out.push(*v),
                Field::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
                Field::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
                Field::Bytes(b) => put_bytes(&mut out, b),
            }
        }
        out
    }

    /// SHA-384 of the encoding.
    pub fn digest(&self) -> [u8; 48] {
        Sha384::digest(self.encode()).into()
    }
}

/// A string field.
pub fn text(s: &str) -> Field {
    Field::Bytes(s.as_bytes().to_vec())
}

/// SHA-384 of a blob, as a field.
pub fn sha384_field(data: &[u8]) -> Field {
    Field::Bytes(Sha384::digest(data).to_vec())
}

/// An event as reported (hex digests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// The event tag.
    pub tag: &'static str,
    /// Hex SHA-384 of its encoding.
    pub digest: String,
    /// Human-readable summary.
    pub detail: String,
}

/// The measurement log and its final value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Measurement {
    /// Hex of the final chain value.
    pub value: String,
    /// Every event in order.
    pub events: Vec<EventRecord>,
}

impl Measurement {
    /// Chains `events` (the domain event is prepended here).
    pub fn compute(events: &[Event]) -> Self {
        let domain = Event::new(DOMAIN, vec![], DOMAIN);
        let mut value = [0u8; 48];
        let mut records = Vec::with_capacity(events.len() + 1);
        for e in std::iter::once(&domain).chain(events) {
            let d = e.digest();
            let mut h = Sha384::new();
            h.update(value);
            h.update(d);
            value = h.finalize().into();
            records.push(EventRecord {
                tag: e.tag,
                digest: hex::encode(d),
                detail: e.detail.clone(),
            });
        }
        Measurement {
            value: hex::encode(value),
            events: records,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_as_documented() {
        let e = Event::new(
            "t",
            vec![Field::U8(1), Field::U32(2), Field::U64(3), text("ab")],
            "",
        );
        assert_eq!(
            e.encode(),
            [
                &[1, 0, 0, 0, b't', 1, 2, 0, 0, 0][..],
                &[3, 0, 0, 0, 0, 0, 0, 0],
                &[2, 0, 0, 0, b'a', b'b']
            ]
            .concat()
        );
    }

    #[test]
    fn chain_depends_on_every_event_and_its_order() {
        let a = Event::new("a", vec![Field::U8(0)], "");
        let b = Event::new("b", vec![Field::U8(0)], "");
        let m1 = Measurement::compute(&[a.clone(), b.clone()]);
        let m2 = Measurement::compute(&[b.clone(), a.clone()]);
        let m3 = Measurement::compute(std::slice::from_ref(&a));
        assert_ne!(m1.value, m2.value);
        assert_ne!(m1.value, m3.value);
        assert_eq!(m1.events.len(), 3);
        // Recompute by hand: m = H(m || H(encoding)), starting from 48 zero bytes.
        let mut v = [0u8; 48];
        for enc in [
            Event::new(DOMAIN, vec![], "").encode(),
            a.encode(),
            b.encode(),
        ] {
            let mut h = Sha384::new();
            h.update(v);
            h.update(Sha384::digest(enc));
            v = h.finalize().into();
        }
        assert_eq!(m1.value, hex::encode(v));
    }
}
