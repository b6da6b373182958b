//! The certificate extension that carries Bulwark evidence: the CMW X.509
//! extension of RFC 9999 (`id-pe-cmw`, 1.3.6.1.5.5.7.1.35), non-critical,
//! in its `cbor` CHOICE, holding one CBOR-encoded CMW record:
//!
//! ```text
//! extnValue = DER( CMW ::= CHOICE { json UTF8String, cbor OCTET STRING } )
//!           = 04 <len> <cbor-record>            (the `cbor` alternative)
//! cbor-record = [ "application/vnd.bulwark.evidence+cose",   ; type
//!                 bstr,                                      ; the COSE_Sign1 document
//!                 4 ]                                        ; ind: Evidence (bit 2)
//! ```
//!
//! The record is deterministic CBOR (definite lengths, shortest forms); the
//! parser refuses anything that does not re-encode to the same bytes.

use x509_parser::prelude::{FromDer, X509Certificate};

/// `id-pe-cmw` (RFC 9999 §6.3): { iso(1) identified-organization(3) dod(6)
/// internet(1) security(5) mechanisms(5) pkix(7) id-pe(1) 35 }.
pub const CMW_EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 35];
/// The same OID in dotted form.
pub const CMW_EXTENSION_OID_STR: &str = "1.3.6.1.5.5.7.1.35";
/// The CMW record's `type`: a Bulwark evidence document (tagged COSE_Sign1,
/// `docs/evidence.md`).
pub const EVIDENCE_MEDIA_TYPE: &str = "application/vnd.bulwark.evidence+cose";
/// CMW indicator bit 2 (Evidence), RFC 9999 §4.1.1.
pub const CMW_IND_EVIDENCE: u64 = 1 << 2;
/// Largest evidence carried in the certificate: the whole TLS Certificate
/// message must stay under rustls's 64 KiB handshake message limit.
pub const MAX_CERT_EVIDENCE_LEN: usize = 60 * 1024;

/// Why a certificate's evidence could not be extracted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    #[error("the certificate does not parse: {0}")]
    Certificate(String),
    #[error("the certificate has no CMW extension ({CMW_EXTENSION_OID_STR})")]
    Missing,
    #[error("the certificate has more than one CMW extension")]
    Duplicate,
    #[error("CMW extension: {0}")]
    Malformed(String),
}

fn malformed(m: impl Into<String>) -> ExtensionError {
    ExtensionError::Malformed(m.into())
}

/// The evidence found in a certificate, with the hash of the key it certifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateEvidence {
    /// The evidence document (tagged COSE_Sign1 bytes).
    pub evidence: Vec<u8>,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo (DER).
    pub spki_sha256: [u8; 32],
}

/// SHA-256 of a SubjectPublicKeyInfo DER: the value `freshness.tls_key_sha256`
/// must hold.
pub fn spki_sha256(spki_der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The CBOR record (deterministic encoding) wrapping an evidence document.
pub fn encode_record(evidence: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(evidence.len() + EVIDENCE_MEDIA_TYPE.len() + 16);
    out.push(0x83); // array(3)
    cbor_head(&mut out, 3, EVIDENCE_MEDIA_TYPE.len() as u64);
    out.extend_from_slice(EVIDENCE_MEDIA_TYPE.as_bytes());
    cbor_head(&mut out, 2, evidence.len() as u64);
    out.extend_from_slice(evidence);
    cbor_head(&mut out, 0, CMW_IND_EVIDENCE);
    out
}

/// The extension's `extnValue` contents: DER of the CMW `cbor` alternative
/// (an OCTET STRING holding [`encode_record`]).
pub fn encode_extension_value(evidence: &[u8]) -> Vec<u8> {
    let record = encode_record(evidence);
    let mut out = Vec::with_capacity(record.len() + 6);
    out.push(0x04);
    der_len(&mut out, record.len());
    out.extend_from_slice(&record);
    out
}

/// The evidence document in an `extnValue` made by [`encode_extension_value`].
pub fn decode_extension_value(value: &[u8]) -> Result<Vec<u8>, ExtensionError> {
    let (&tag, rest) = value
        .split_first()
        .ok_or_else(|| malformed("empty value"))?;
    match tag {
        0x04 => {}
        0x0c => {
            return Err(malformed(
                "JSON CMW (UTF8String) is not accepted; expected the CBOR alternative",
            ))
        }
        t => {
            return Err(malformed(format!(
                "expected OCTET STRING (CMW cbor), found tag {t:#04x}"
            )))
        }
    }
    let (len, body) = der_read_len(rest)?;
    if body.len() != len {
        return Err(malformed(format!(
            "OCTET STRING length {len} but {} bytes follow",
            body.len()
        )));
    }
    decode_record(body)
}

/// The evidence document in a CMW CBOR record.
pub fn decode_record(record: &[u8]) -> Result<Vec<u8>, ExtensionError> {
    if record.len() > MAX_CERT_EVIDENCE_LEN + 256 {
        return Err(malformed("CMW record too large"));
    }
    let value: ciborium::Value = ciborium::de::from_reader(record)
        .map_err(|e| malformed(format!("CMW record is not CBOR: {e}")))?;
    let items = match value {
        ciborium::Value::Array(items) => items,
        _ => return Err(malformed("CMW record is not a CBOR array")),
    };
    if items.len() != 3 {
        return Err(malformed(format!(
            "CMW record has {} members; expected [type, value, ind]",
            items.len()
        )));
    }
    let mut it = items.into_iter();
    let (ty, val, ind) = match (it.next(), it.next(), it.next()) {
        (Some(t), Some(v), Some(i)) => (t, v, i),
        _ => return Err(malformed("CMW record truncated")),
    };
    match ty {
        ciborium::Value::Text(t) if t == EVIDENCE_MEDIA_TYPE => {}
        ciborium::Value::Text(t) => {
            return Err(malformed(format!(
                "CMW type {t:?}; expected {EVIDENCE_MEDIA_TYPE:?}"
            )))
        }
        _ => return Err(malformed("CMW type is not a text string")),
    }
    let evidence = match val {
        ciborium::Value::Bytes(b) => b,
        _ => return Err(malformed("CMW value is not a byte string")),
    };
    match ind {
        ciborium::Value::Integer(i) if u64::try_from(i).ok() == Some(CMW_IND_EVIDENCE) => {}
        _ => return Err(malformed("CMW ind is not 4 (Evidence)")),
    }
    if evidence.len() > MAX_CERT_EVIDENCE_LEN {
        return Err(malformed("evidence too large"));
    }
    if encode_record(&evidence) != record {
        return Err(malformed(
            "CMW record is not in deterministic CBOR (or has trailing bytes)",
        ));
    }
    Ok(evidence)
}

/// Parse a DER certificate and extract the evidence and its key's hash. The
/// certificate is not validated (no chain, no dates): the evidence is the
/// trust, and its appraisal decides.
pub fn evidence_from_certificate(der: &[u8]) -> Result<CertificateEvidence, ExtensionError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| ExtensionError::Certificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ExtensionError::Certificate(
            "trailing bytes after the certificate".into(),
        ));
    }
    let spki = spki_sha256(cert.tbs_certificate.subject_pki.raw);
    let mut found = None;
    for ext in cert.tbs_certificate.extensions() {
        let oid: Option<Vec<u64>> = ext.oid.iter().map(|it| it.collect());
        if oid.as_deref() == Some(CMW_EXTENSION_OID) {
            if found.is_some() {
                return Err(ExtensionError::Duplicate);
            }
            found = Some(ext.value);
        }
    }
    let value = found.ok_or(ExtensionError::Missing)?;
    Ok(CertificateEvidence {
        evidence: decode_extension_value(value)?,
        spki_sha256: spki,
    })
}

/// A CBOR head (major type, argument) in its shortest form.
fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u8::MAX as u64 {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// A DER length (definite, shortest form).
fn der_len(out: &mut Vec<u8>, n: usize) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = (n as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Read a DER length; refuses indefinite and non-minimal forms.
fn der_read_len(b: &[u8]) -> Result<(usize, &[u8]), ExtensionError> {
    let (&first, rest) = b.split_first().ok_or_else(|| malformed("missing length"))?;
    if first < 0x80 {
        return Ok((first as usize, rest));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return Err(malformed("unsupported DER length form"));
    }
    if rest.len() < n {
        return Err(malformed("truncated DER length"));
    }
    let (lb, rest) = rest.split_at(n);
    if lb[0] == 0 {
        return Err(malformed("non-minimal DER length"));
    }
    let len = lb.iter().fold(0usize, |acc, &x| (acc << 8) | x as usize);
    if len < 0x80 {
        return Err(malformed("non-minimal DER length"));
    }
    Ok((len, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        for n in [0usize, 1, 23, 24, 255, 256, 300, 70_000] {
            let ev: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let v = encode_extension_value(&ev);
            if n <= MAX_CERT_EVIDENCE_LEN {
                assert_eq!(decode_extension_value(&v).unwrap(), ev);
            } else {
                assert!(decode_extension_value(&v).is_err());
            }
        }
        let v = encode_extension_value(b"doc");
        // Trailing byte inside the OCTET STRING and after it.
        let mut t = v.clone();
        t.push(0);
        assert!(decode_extension_value(&t).is_err());
        // Wrong media type.
        let mut t = v.clone();
        let pos = t.windows(7).position(|w| w == b"bulwark").unwrap();
        t[pos] = b'B';
        assert!(decode_extension_value(&t).is_err());
        // JSON alternative and empty value.
        assert!(decode_extension_value(&[0x0c, 0x02, b'[', b']']).is_err());
        assert!(decode_extension_value(&[]).is_err());
        // Non-minimal DER length.
        assert!(decode_extension_value(&[0x04, 0x81, 0x01, 0x00]).is_err());
    }
}
