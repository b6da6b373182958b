//! The AWS Nitro Enclaves attestation document: a COSE_Sign1 (RFC 9052)
//! whose payload is a CBOR map (AWS, "Verifying the root of trust").
//! Tagged (18) or untagged, definite or indefinite lengths.

use crate::x509::Certificate;
use crate::Error;
use base64::Engine;
use ciborium::Value;
use std::collections::BTreeMap;

/// The four members of a COSE_Sign1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoseSign1 {
    pub protected: Vec<u8>,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
    pub tagged: bool,
}

const COSE_SIGN1_TAG: u64 = 18;

fn decode_cbor(bytes: &[u8], what: &str) -> Result<Value, Error> {
    let mut rest = bytes;
    let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut rest, 32)
        .map_err(|e| Error::Parse(format!("{what}: CBOR: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::Parse(format!(
            "{what}: {} bytes after the CBOR item",
            rest.len()
        )));
    }
    Ok(v)
}

impl CoseSign1 {
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let (tagged, v) = match decode_cbor(bytes, "COSE_Sign1")? {
            Value::Tag(COSE_SIGN1_TAG, inner) => (true, *inner),
            Value::Tag(t, _) => return Err(Error::Parse(format!("COSE: unexpected tag {t}"))),
            v => (false, v),
        };
        let Value::Array(items) = v else {
            return Err(Error::parse("COSE_Sign1 is not an array"));
        };
        let [protected, unprotected, payload, signature]: [Value; 4] =
            items.try_into().map_err(|v: Vec<Value>| {
                Error::Parse(format!("COSE_Sign1 has {} members, not 4", v.len()))
            })?;
        if !matches!(unprotected, Value::Map(_)) {
            return Err(Error::parse("COSE_Sign1 unprotected header is not a map"));
        }
        let bstr = |v: Value, what: &str| match v {
            Value::Bytes(b) => Ok(b),
            _ => Err(Error::Parse(format!(
                "COSE_Sign1 {what} is not a byte string"
            ))),
        };
        Ok(CoseSign1 {
            protected: bstr(protected, "protected header")?,
            payload: bstr(payload, "payload")?,
            signature: bstr(signature, "signature")?,
            tagged,
        })
    }

    /// The protected header's `alg` (label 1).
    pub fn algorithm(&self) -> Result<i128, Error> {
        let Value::Map(m) = decode_cbor(&self.protected, "COSE protected header")? else {
            return Err(Error::parse("COSE protected header is not a map"));
        };
        m.iter()
            .find(|(k, _)| matches!(k, Value::Integer(i) if i128::from(*i) == 1))
            .and_then(|(_, v)| match v {
                Value::Integer(i) => Some(i128::from(*i)),
                _ => None,
            })
            .ok_or_else(|| Error::parse("COSE protected header has no integer alg"))
    }

    /// Sig_structure = ["Signature1", protected, external_aad = h'', payload]
    /// in deterministic CBOR.
    pub fn to_be_signed(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.protected.len() + self.payload.len() + 32);
        out.push(0x84);
        out.push(0x6A);
        out.extend_from_slice(b"Signature1");
        bstr_header(&mut out, self.protected.len());
        out.extend_from_slice(&self.protected);
        bstr_header(&mut out, 0);
        bstr_header(&mut out, self.payload.len());
        out.extend_from_slice(&self.payload);
        out
    }
}

fn bstr_header(out: &mut Vec<u8>, len: usize) {
    const MAJOR: u8 = 0x40;
    match len {
        0..=23 => out.push(MAJOR | len as u8),
        24..=0xFF => out.extend_from_slice(&[MAJOR | 24, len as u8]),
        0x100..=0xFFFF => {
            out.push(MAJOR | 25);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        0x1_0000..=0xFFFF_FFFF => {
            out.push(MAJOR | 26);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        _ => {
            out.push(MAJOR | 27);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// The attestation document payload.
#[derive(Debug, Clone)]
pub struct AttestationDoc {
    pub module_id: String,
    pub digest: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    pub pcrs: BTreeMap<u64, Vec<u8>>,
    pub certificate: Certificate,
    /// Root first, as AWS orders it.
    pub cabundle: Vec<Certificate>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
}

/// Raw COSE bytes and the parsed document.
#[derive(Debug, Clone)]
pub struct Document {
    pub cose: CoseSign1,
    pub doc: AttestationDoc,
}

impl Document {
    /// Parse CBOR bytes, or base64 text of them.
    pub fn parse_any(input: &[u8]) -> Result<Self, Error> {
        let looks_cbor = matches!(input.first(), Some(0xD2 | 0x84 | 0x9F));
        if looks_cbor {
            return Self::parse(input);
        }
        let text: Vec<u8> = input
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .map_err(|e| {
                Error::Parse(format!(
                    "attestation document: neither CBOR nor base64 ({e})"
                ))
            })?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let cose = CoseSign1::parse(bytes)?;
        let doc = AttestationDoc::parse(&cose.payload)?;
        Ok(Document { cose, doc })
    }
}

fn opt_bytes(v: Option<Value>, what: &str) -> Result<Option<Vec<u8>>, Error> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bytes(b)) => Ok(Some(b)),
        Some(_) => Err(Error::Parse(format!(
            "attestation document {what} is not a byte string"
        ))),
    }
}

impl AttestationDoc {
    pub fn parse(payload: &[u8]) -> Result<Self, Error> {
        let Value::Map(entries) = decode_cbor(payload, "attestation document")? else {
            return Err(Error::parse("attestation document is not a map"));
        };
        let mut fields: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in entries {
            let Value::Text(k) = k else {
                return Err(Error::parse("attestation document has a non-text key"));
            };
            if fields.insert(k.clone(), v).is_some() {
                return Err(Error::Parse(format!(
                    "attestation document repeats key {k}"
                )));
            }
        }
        let mut take = |k: &str| fields.remove(k);
        let missing = |k: &str| Error::Parse(format!("attestation document lacks {k}"));
        let module_id = match take("module_id") {
            Some(Value::Text(t)) => t,
            _ => return Err(missing("module_id (text)")),
        };
        let digest = match take("digest") {
            Some(Value::Text(t)) => t,
            _ => return Err(missing("digest (text)")),
        };
        let timestamp = match take("timestamp") {
            Some(Value::Integer(i)) => u64::try_from(i128::from(i))
                .map_err(|_| Error::parse("attestation document timestamp out of range"))?,
            _ => return Err(missing("timestamp (uint)")),
        };
        let mut pcrs = BTreeMap::new();
        match take("pcrs") {
            Some(Value::Map(m)) => {
                for (k, v) in m {
                    let (Value::Integer(i), Value::Bytes(b)) = (k, v) else {
                        return Err(Error::parse("PCR entries must be uint => bytes"));
                    };
                    let idx = u64::try_from(i128::from(i))
                        .map_err(|_| Error::parse("negative PCR index"))?;
                    if pcrs.insert(idx, b).is_some() {
                        return Err(Error::Parse(format!("PCR{idx} repeated")));
                    }
                }
            }
            _ => return Err(missing("pcrs (map)")),
        }
        let certificate = match take("certificate") {
            Some(Value::Bytes(b)) => Certificate::from_der(&b)?,
            _ => return Err(missing("certificate (bytes)")),
        };
        let cabundle = match take("cabundle") {
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|i| match i {
                    Value::Bytes(b) => Certificate::from_der(&b),
                    _ => Err(Error::parse("cabundle entry is not a byte string")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(missing("cabundle (array)")),
        };
        Ok(AttestationDoc {
            module_id,
            digest,
            timestamp,
            pcrs,
            certificate,
            cabundle,
            public_key: opt_bytes(take("public_key"), "public_key")?,
            user_data: opt_bytes(take("user_data"), "user_data")?,
            nonce: opt_bytes(take("nonce"), "nonce")?,
        })
    }
}
