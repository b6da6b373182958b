//! The evidence body: its types and their deterministic CBOR encoding
//! (RFC 8949 §4.2.1: definite lengths, shortest integer forms, map keys sorted
//! by their encoded bytes). Schema: `docs/evidence.md`.
//!
//! Encoding goes struct → `ciborium::Value` → keys sorted recursively →
//! bytes, so the output is canonical whatever order the fields are declared
//! in. Decoding refuses anything that is not exactly the canonical encoding
//! of what it decodes to (unknown fields, duplicate or unsorted keys,
//! indefinite lengths, long integer forms, trailing bytes): the bytes signed
//! and the values checked cannot differ.

use crate::Error;
use ciborium::Value;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Format version of the evidence body; a change of schema gets a new one.
pub const FORMAT_VERSION: u32 = 1;
/// Largest evidence document accepted (real ones are tens of kilobytes:
/// the TCG event log and vendor evidence dominate).
pub const MAX_DOCUMENT_LEN: usize = 4 << 20;
/// Longest challenge nonce.
pub const MAX_NONCE_LEN: usize = 64;
/// CBOR nesting limit for decoding.
const MAX_DEPTH: usize = 32;

/// A byte string (CBOR major type 2), hex in JSON claims.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "h'{}'", hex::encode(&self.0))
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        // byte_buf, not bytes: ciborium's `deserialize_bytes` refuses byte
        // strings longer than its scratch buffer (4 KiB).
        d.deserialize_byte_buf(V)
    }
}

/// The signed body of one evidence document (everything but the signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceBody {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    pub node: Node,
    pub launch: Launch,
    pub isolation: Isolation,
    /// Hardware TEE evidence of the VM, when the node has a TEE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tee: Option<Tee>,
    /// NVIDIA GPU evidence, one entry per GPU passed through with CC on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Gpu>,
    pub freshness: Freshness,
}

/// How the evidence signing key is protected.
pub mod attestation_kind {
    /// The evidence key is certified by a TPM quote (`node.tpm`).
    pub const TPM: &str = "tpm";
    /// A key in software: nothing hardware-rooted vouches for it (tests only).
    pub const SOFTWARE_KEY: &str = "software-key";
}

/// The node: its OS image and what vouches for the evidence key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// The node OS image that booted.
    pub image: ImageId,
    /// [`attestation_kind::TPM`] or [`attestation_kind::SOFTWARE_KEY`].
    pub attestation: String,
    /// The evidence signing key: SEC1 uncompressed P-256 (65 bytes, ES256
    /// documents) or P-384 (97 bytes, ES384) public key.
    pub evidence_key: Bytes,
    /// TPM evidence (present exactly when `attestation` is `tpm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Tpm>,
}

/// A signed image: node OS image or tenant image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageId {
    pub name: String,
    pub version: u64,
    /// SHA-384 of the signed manifest bytes (48 bytes).
    pub manifest_sha384: Bytes,
    /// Key ids (SHA-256 of the SPKI, 32 bytes each) of the keys whose
    /// signatures met the trust policy when the image was verified.
    pub signer_key_ids: Vec<Bytes>,
}

/// TPM 2.0 evidence: the endorsement key's certificate, the attestation key
/// and how it was bound to the EK, and a quote over the boot PCRs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tpm {
    /// EK certificate, DER.
    pub ek_certificate: Bytes,
    /// Intermediate certificates up to (not including) the EK CA root, DER.
    pub ek_chain: Vec<Bytes>,
    /// The attestation key: TPM2B_PUBLIC bytes.
    pub ak_public: Bytes,
    pub ak_activation: AkActivation,
    /// The quote. Absent only inside the binding hash computation
    /// ([`EvidenceBody::binding_hash`]); a document without one fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<TpmQuote>,
}

/// EK → AK binding, recorded at enrollment by credential activation
/// (TPM2_MakeCredential to the EK for the AK's name, TPM2_ActivateCredential).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AkActivation {
    /// Unix seconds of the enrollment.
    pub enrolled_at: u64,
    /// The AK's TPM name (nameAlg ‖ digest of its TPMT_PUBLIC).
    pub ak_name: Bytes,
}

/// TPM2_Quote output, the PCR values it covers and the TCG event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmQuote {
    /// TPM2B_ATTEST bytes (TPMS_ATTEST with extraData = binding hash).
    pub attest: Bytes,
    /// TPMT_SIGNATURE bytes.
    pub signature: Bytes,
    /// (PCR index, SHA-256 value), ascending by index.
    pub pcrs: Vec<Pcr>,
    /// TCG PC Client event log (crypto-agile), raw.
    pub event_log: Bytes,
}

/// One PCR value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pcr {
    pub index: u32,
    pub sha256: Bytes,
}

/// The VM as the VMM launched it (from `bulwark-vmm`'s `GET /vm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Launch {
    /// The launch measurement (SHA-384, docs/measurement.md).
    pub measurement: Bytes,
    /// The tenant image; absent when the VM booted unsigned files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageId>,
    pub vcpus: u32,
    pub memory_bytes: u64,
    /// CPUID policy name (measured by name).
    pub cpuid_policy: String,
    /// `signed-bundle` or `unsigned`, and the entry mode (`long64`,
    /// `protected32`, `real`): e.g. `signed-bundle/long64`.
    pub boot_mode: String,
    /// Fields the producer could not fill (named, never guessed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
}

/// The node's statements about device isolation and tenancy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Isolation {
    /// Where the statements come from: `vmm-get-vm` (today) or `node-agent`.
    pub source: String,
    /// The node hosts this tenant alone; absent: not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_tenant: Option<bool>,
    pub devices: Vec<PciDevice>,
    /// Statements the source cannot make yet, named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
}

/// One PCI device passed through to the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciDevice {
    /// Host address, `DDDD:BB:DD.F`.
    pub host_bdf: String,
    /// `vvvv:dddd`.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_group: Option<u32>,
    /// Every device of the IOMMU group is bound to this VM alone; absent: not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_exclusive: Option<bool>,
    /// The last sanitization; absent: not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sanitized: Option<Sanitization>,
}

/// How and when a device was last sanitized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sanitization {
    /// Reset method: `flr`, `bus-reset`, `pm-reset`, `vfio-reset`...
    pub method: String,
    /// Memory scrub result: `scrubbed`, `not-scrubbed`, `failed`.
    pub result: String,
    /// Unix seconds.
    pub at: u64,
}

/// SEV-SNP report or TDX quote with what its verifier needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tee {
    /// `sev-snp` or `tdx`.
    pub kind: String,
    /// SEV-SNP: the 1184-byte report; TDX: the DCAP quote.
    pub report: Bytes,
    /// SEV-SNP: the VCEK/VLEK (DER or PEM); TDX: unused (empty).
    pub certificate: Bytes,
    /// TDX: PCS collateral JSON; SEV-SNP: unused (empty).
    pub collateral: Bytes,
}

/// NVIDIA GPU evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// Host address of the GPU (matches an `isolation.devices` entry).
    pub host_bdf: String,
    /// SPDM GET_MEASUREMENTS request ‖ MEASUREMENTS response.
    pub spdm: Bytes,
    /// Device certificate chain, PEM, leaf first.
    pub cert_chain: Bytes,
    /// Driver and VBIOS reference manifests, when the producer has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rims: Vec<Bytes>,
}

/// Freshness and the binding to the guest's TLS key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    /// The relying party's challenge (1..=64 bytes).
    pub nonce: Bytes,
    /// Unix seconds when the document was produced.
    pub timestamp: u64,
    /// SHA-256 of the guest's TLS public key (SPKI DER), from bulwark-init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_sha256: Option<Bytes>,
}

/// Domain separation for the GPU nonce.
const GPU_NONCE_DOMAIN: &[u8] = b"bulwark-evidence-v1 gpu nonce";

impl EvidenceBody {
    /// Canonical CBOR of the body.
    pub fn to_cbor(&self) -> Result<Vec<u8>, Error> {
        to_canonical_cbor(self)
    }

    /// Decode canonical CBOR, refusing anything else.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_DOCUMENT_LEN {
            return Err(Error::parse("evidence body too large"));
        }
        // Straight into the schema (nesting bounded); the byte-exact re-encoding
        // below refuses unknown or duplicate keys, any order but the canonical
        // one and non-shortest heads.
        let mut reader = bytes;
        let body: EvidenceBody =
            ciborium::de::from_reader_with_recursion_limit(&mut reader, MAX_DEPTH)
                .map_err(|e| Error::Parse(format!("evidence body: {e}")))?;
        if !reader.is_empty() || body.to_cbor()? != bytes {
            return Err(Error::parse(
                "evidence body is not in deterministic CBOR (RFC 8949 §4.2.1)",
            ));
        }
        Ok(body)
    }

    /// The hash every hardware signature over this document must carry:
    /// SHA-256 of the canonical CBOR of the body with the hardware evidence
    /// itself removed (`node.tpm.quote`, `tee`, `gpus`). The TPM quote's
    /// extraData is this value; an SEV-SNP/TDX report data is this value
    /// followed by 32 zero bytes. Everything else (evidence key, nonce,
    /// launch, isolation, TLS key) is covered.
    pub fn binding_hash(&self) -> Result<[u8; 32], Error> {
        let mut b = self.clone();
        if let Some(t) = b.node.tpm.as_mut() {
            t.quote = None;
        }
        b.tee = None;
        b.gpus.clear();
        Ok(sha256(&b.to_cbor()?))
    }

    /// 64-byte TEE report data: binding hash ‖ 32 zero bytes.
    pub fn tee_report_data(&self) -> Result<[u8; 64], Error> {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.binding_hash()?);
        Ok(out)
    }

    /// The SPDM nonce a GPU must have signed: SHA-256(domain ‖ challenge).
    pub fn gpu_nonce(&self) -> [u8; 32] {
        gpu_nonce_for(&self.freshness.nonce)
    }
}

/// The SPDM nonce for a challenge.
pub fn gpu_nonce_for(challenge: &[u8]) -> [u8; 32] {
    let mut m = GPU_NONCE_DOMAIN.to_vec();
    m.extend_from_slice(challenge);
    sha256(&m)
}

pub(crate) fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Serialize `v` as deterministic CBOR.
pub fn to_canonical_cbor<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    let value = Value::serialized(v).map_err(|e| Error::Parse(format!("CBOR encode: {e}")))?;
    encode_value(&canonicalize(value)?)
}

fn encode_value(v: &Value) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).map_err(|e| Error::Parse(format!("CBOR encode: {e}")))?;
    Ok(out)
}

/// Sort every map's entries by the bytes of their encoded keys; refuse
/// floats (none in the schema) and duplicate keys.
fn canonicalize(v: Value) -> Result<Value, Error> {
    Ok(match v {
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(canonicalize)
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(entries) => {
            let mut keyed = entries
                .into_iter()
                .map(|(k, v)| {
                    let k = canonicalize(k)?;
                    Ok((encode_value(&k)?, k, canonicalize(v)?))
                })
                .collect::<Result<Vec<_>, Error>>()?;
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            if keyed.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(Error::parse("CBOR map with a duplicate key"));
            }
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        Value::Tag(t, inner) => Value::Tag(t, Box::new(canonicalize(*inner)?)),
        Value::Float(_) => return Err(Error::parse("floating-point value in evidence")),
        other => other,
    })
}

/// Decode one CBOR item that must fill `bytes` exactly, nesting bounded.
pub(crate) fn decode_value(bytes: &[u8]) -> Result<Value, Error> {
    let mut reader = bytes;
    let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut reader, MAX_DEPTH)
        .map_err(|e| Error::Parse(format!("CBOR: {e}")))?;
    if !reader.is_empty() {
        return Err(Error::Parse(format!(
            "{} bytes after the CBOR item",
            reader.len()
        )));
    }
    Ok(v)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> EvidenceBody {
        EvidenceBody {
            version: FORMAT_VERSION,
            node: Node {
                image: ImageId {
                    name: "bulwark-node".into(),
                    version: 3,
                    manifest_sha384: vec![1; 48].into(),
                    signer_key_ids: vec![vec![2; 32].into()],
                },
                attestation: attestation_kind::SOFTWARE_KEY.into(),
                evidence_key: vec![4; 97].into(),
                tpm: None,
            },
            launch: Launch {
                measurement: vec![5; 48].into(),
                image: None,
                vcpus: 2,
                memory_bytes: 1 << 30,
                cpuid_policy: "bulwark-default-v1".into(),
                boot_mode: "unsigned/long64".into(),
                unknown: vec![],
            },
            isolation: Isolation {
                source: "vmm-get-vm".into(),
                single_tenant: None,
                devices: vec![],
                unknown: vec!["single_tenant".into()],
            },
            tee: None,
            gpus: vec![],
            freshness: Freshness {
                nonce: vec![9; 32].into(),
                timestamp: 1_700_000_000,
                tls_key_sha256: None,
            },
        }
    }

    fn keys_sorted(v: &Value) -> bool {
        match v {
            Value::Map(m) => {
                let keys: Vec<Vec<u8>> = m.iter().map(|(k, _)| encode_value(k).unwrap()).collect();
                keys.windows(2).all(|w| w[0] < w[1]) && m.iter().all(|(_, v)| keys_sorted(v))
            }
            Value::Array(a) => a.iter().all(keys_sorted),
            _ => true,
        }
    }

    #[test]
    fn round_trip_is_canonical() {
        let b = sample();
        let bytes = b.to_cbor().unwrap();
        assert!(keys_sorted(&decode_value(&bytes).unwrap()));
        assert_eq!(EvidenceBody::from_cbor(&bytes).unwrap(), b);
    }

    #[test]
    fn non_canonical_and_unknown_fields_are_refused() {
        let b = sample();
        let value = Value::serialized(&b).unwrap();
        // Declaration order, not sorted: refused.
        let unsorted = encode_value(&value).unwrap();
        assert_ne!(unsorted, b.to_cbor().unwrap());
        assert!(EvidenceBody::from_cbor(&unsorted).is_err());
        // An extra field: refused.
        let Value::Map(mut m) = value else { panic!() };
        m.push((Value::Text("zzz".into()), Value::Integer(1.into())));
        let extra = encode_value(&canonicalize(Value::Map(m)).unwrap()).unwrap();
        assert!(EvidenceBody::from_cbor(&extra).is_err());
        // Trailing byte: refused.
        let mut t = b.to_cbor().unwrap();
        t.push(0);
        assert!(EvidenceBody::from_cbor(&t).is_err());
    }

    #[test]
    fn binding_hash_ignores_hardware_evidence_only() {
        let b = sample();
        let h = b.binding_hash().unwrap();
        let mut with_tee = b.clone();
        with_tee.tee = Some(Tee {
            kind: "sev-snp".into(),
            report: vec![0; 8].into(),
            certificate: Bytes::default(),
            collateral: Bytes::default(),
        });
        assert_eq!(with_tee.binding_hash().unwrap(), h);
        let mut other_nonce = b.clone();
        other_nonce.freshness.nonce = vec![8; 32].into();
        assert_ne!(other_nonce.binding_hash().unwrap(), h);
    }
}
