//! The signature page and the threshold check over it.
//!
//! ```text
//! 0   u32 count (0..=16)        4  u32 reserved (0)
//! 8   count entries of 136 bytes:
//!       key_id [32] | algorithm u32 (1 = ECDSA P-384 SHA-384, r||s) | reserved u32 (0) | sig [96]
//! ... zero up to 4096
//! ```
//! Every signature is over the exact manifest bytes.

use crate::error::ImageError;
use crate::keys::{KeyId, PublicKey, SIGNATURE_LEN};
use crate::layout::PAGE;

/// Most signatures a bundle carries.
pub const MAX_SIGNATURES: usize = 16;
/// The only signature algorithm of format version 1.
pub const ALG_ECDSA_P384_SHA384: u32 = 1;
const ENTRY_LEN: usize = 32 + 4 + 4 + SIGNATURE_LEN;
const ENTRIES_OFFSET: usize = 8;

/// One signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Id of the key that made it.
    pub key_id: KeyId,
    /// r || s.
    pub value: [u8; SIGNATURE_LEN],
}

/// Encode the signature page.
pub fn encode_page(sigs: &[Signature]) -> Result<[u8; PAGE as usize], ImageError> {
    if sigs.len() > MAX_SIGNATURES {
        return Err(ImageError::Sign(format!(
            "a bundle holds at most {MAX_SIGNATURES} signatures"
        )));
    }
    let mut page = [0u8; PAGE as usize];
    page[0..4].copy_from_slice(&(sigs.len() as u32).to_le_bytes());
    for (i, s) in sigs.iter().enumerate() {
        let e = &mut page[ENTRIES_OFFSET + i * ENTRY_LEN..ENTRIES_OFFSET + (i + 1) * ENTRY_LEN];
        e[0..32].copy_from_slice(&s.key_id);
        e[32..36].copy_from_slice(&ALG_ECDSA_P384_SHA384.to_le_bytes());
        e[40..].copy_from_slice(&s.value);
    }
    Ok(page)
}

/// Decode the signature page; every byte not used by an entry must be zero.
pub fn decode_page(page: &[u8; PAGE as usize]) -> Result<Vec<Signature>, ImageError> {
    let u32_at = |o: usize| u32::from_le_bytes([page[o], page[o + 1], page[o + 2], page[o + 3]]);
    let count = u32_at(0) as usize;
    if count > MAX_SIGNATURES {
        return Err(ImageError::Format(format!(
            "signature page claims {count} signatures, at most {MAX_SIGNATURES} allowed"
        )));
    }
    if u32_at(4) != 0 {
        return Err(ImageError::Format(
            "signature page reserved field is not zero".into(),
        ));
    }
    let mut sigs: Vec<Signature> = Vec::with_capacity(count);
    for i in 0..count {
        let base = ENTRIES_OFFSET + i * ENTRY_LEN;
        let e = &page[base..base + ENTRY_LEN];
        let alg = u32_at(base + 32);
        if alg != ALG_ECDSA_P384_SHA384 {
            return Err(ImageError::Format(format!(
                "signature {i} uses unknown algorithm {alg}"
            )));
        }
        if u32_at(base + 36) != 0 {
            return Err(ImageError::Format(format!(
                "signature {i} reserved field is not zero"
            )));
        }
        let mut key_id = [0u8; 32];
        key_id.copy_from_slice(&e[0..32]);
        if sigs.iter().any(|s| s.key_id == key_id) {
            return Err(ImageError::Format(format!(
                "two signatures by key {}",
                hex::encode(key_id)
            )));
        }
        let mut value = [0u8; SIGNATURE_LEN];
        value.copy_from_slice(&e[40..]);
        sigs.push(Signature { key_id, value });
    }
    let used = ENTRIES_OFFSET + count * ENTRY_LEN;
    if let Some(pos) = page[used..].iter().position(|&b| b != 0) {
        return Err(ImageError::Format(format!(
            "signature page byte {} after the last signature is not zero",
            used + pos
        )));
    }
    Ok(sigs)
}

/// Who to trust, how many of them must agree, and the lowest version to accept.
#[derive(Clone, Debug)]
pub struct TrustPolicy {
    /// Trusted public keys (duplicates count once).
    pub keys: Vec<PublicKey>,
    /// How many distinct trusted keys must have signed.
    pub threshold: usize,
    /// Versions below this are refused.
    pub min_version: u64,
}

/// A trusted key file that could not be read: which one (its index in the list) and
/// why (the error names the path).
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct KeyFileError {
    /// Position of the file in the list given.
    pub index: usize,
    /// What was wrong (unreadable, not a PEM public key), with the path.
    #[source]
    pub source: ImageError,
}

impl From<KeyFileError> for ImageError {
    fn from(e: KeyFileError) -> Self {
        e.source
    }
}

impl TrustPolicy {
    /// The policy of the PEM public keys in `paths`, `threshold` of which must have
    /// signed, refusing versions below `min_version`. The one place key files become a
    /// policy (the CLIs, the VMM, the agent, the verifier and the lab use it).
    pub fn from_pem_files<P: AsRef<std::path::Path>>(
        paths: &[P],
        threshold: usize,
        min_version: u64,
    ) -> Result<Self, KeyFileError> {
        let keys = paths
            .iter()
            .enumerate()
            .map(|(index, p)| {
                PublicKey::from_pem_file(p.as_ref())
                    .map_err(|source| KeyFileError { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustPolicy {
            keys,
            threshold,
            min_version,
        })
    }

    /// Trust a single key, threshold 1, any version.
    pub fn single(key: PublicKey) -> Self {
        TrustPolicy {
            keys: vec![key],
            threshold: 1,
            min_version: 0,
        }
    }
}

/// Check `sigs` over `manifest` against `policy`. A signature by a trusted key
/// that does not verify is tampering and fails outright; signatures by
/// unknown keys are ignored (reported in the error if the threshold is not met).
/// Returns the ids of the trusted keys whose signatures verified.
pub fn check_threshold(
    manifest: &[u8],
    sigs: &[Signature],
    policy: &TrustPolicy,
) -> Result<Vec<KeyId>, ImageError> {
    let mut distinct: Vec<&PublicKey> = Vec::new();
    for k in &policy.keys {
        if !distinct.iter().any(|d| d.id() == k.id()) {
            distinct.push(k);
        }
    }
    if policy.threshold == 0 {
        return Err(ImageError::Policy("threshold must be at least 1".into()));
    }
    if policy.threshold > distinct.len() {
        return Err(ImageError::Policy(format!(
            "threshold {} exceeds the {} distinct trusted key(s)",
            policy.threshold,
            distinct.len()
        )));
    }
    let mut valid = Vec::new();
    let mut untrusted = Vec::new();
    for s in sigs {
        match distinct.iter().find(|k| *k.id() == s.key_id) {
            Some(k) if k.verify(manifest, &s.value) => valid.push(s.key_id),
            Some(_) => {
                return Err(ImageError::BadSignature {
                    key_id: hex::encode(s.key_id),
                })
            }
            None => untrusted.push(hex::encode(s.key_id)),
        }
    }
    if valid.len() < policy.threshold {
        return Err(ImageError::ThresholdNotMet {
            valid: valid.len(),
            required: policy.threshold,
            untrusted,
        });
    }
    Ok(valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_round_trips_and_rejects_duplicates() {
        let a = Signature {
            key_id: [1; 32],
            value: [2; SIGNATURE_LEN],
        };
        let page = encode_page(std::slice::from_ref(&a)).unwrap();
        assert_eq!(decode_page(&page).unwrap(), vec![a.clone()]);
        let dup = encode_page(&[a.clone(), a]).unwrap();
        assert!(
            matches!(decode_page(&dup), Err(ImageError::Format(m)) if m.contains("two signatures"))
        );
    }
}
