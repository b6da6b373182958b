//! The one place that chooses the library verifying ECDSA signatures on the
//! hot paths: evidence documents (ES256/ES384), certificates and CRLs, TPM quotes
//! and vendor reports.
//!
//! The rule: use `aws-lc-rs` where `bench/verify` measured it at least 1.5×
//! faster than `ring`, in the same run (numbers in `docs/attestation.md`,
//! "Performance"). That holds for P-384 (about 3×), not for P-256 (about
//! the same speed). So with the `aws-lc` feature (default) P-384 signatures
//! are verified by `aws-lc-rs` and P-256 ones by `ring`; without it
//! (bulwark-init's static musl build) `ring` verifies both. RSA stays with
//! `ring`. Both libraries take the same inputs (a SEC1 uncompressed point;
//! DER `Ecdsa-Sig-Value` or fixed-width r ‖ s) and refuse the same malformed
//! ones (`tests::backends_agree`).

/// Curve and hash of an ECDSA verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ecdsa {
    P256Sha256,
    P256Sha384,
    P384Sha256,
    P384Sha384,
}

/// How the signature is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigEncoding {
    /// ASN.1 DER `Ecdsa-Sig-Value`.
    Der,
    /// Fixed-width big-endian r ‖ s.
    Fixed,
}

/// Any ECDSA verification failure: bad key, bad encoding, wrong signature or
/// an unsupported combination (deliberately not told apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSignature;

impl std::fmt::Display for BadSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("signature does not verify")
    }
}

/// The libraries behind [`verify_ecdsa`] in this build, per curve.
pub const ECDSA_BACKEND: &str = if cfg!(feature = "aws-lc") {
    "aws-lc-rs for P-384, ring for P-256"
} else {
    "ring"
};

/// Verify an ECDSA signature `sig` over `msg` with the SEC1 uncompressed
/// point `public_key`.
pub fn verify_ecdsa(
    alg: Ecdsa,
    enc: SigEncoding,
    public_key: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), BadSignature> {
    // Only uncompressed points, whatever the library would also accept.
    if public_key.first() != Some(&4) {
        return Err(BadSignature);
    }
    match alg {
        #[cfg(feature = "aws-lc")]
        Ecdsa::P384Sha384 | Ecdsa::P384Sha256 => aws_lc::verify(alg, enc, public_key, msg, sig),
        _ => ring_backend::verify(alg, enc, public_key, msg, sig),
    }
}

/// One backend module per library: the same table of (curve, hash, encoding)
/// over that library's `signature` module, so both builds accept exactly the
/// same combinations.
macro_rules! ecdsa_backend {
    ($(#[$attr:meta])* $name:ident, $lib:ident) => {
        $(#[$attr])*
        pub mod $name {
            use super::{BadSignature, Ecdsa, SigEncoding};
            use $lib::signature::{self, UnparsedPublicKey, VerificationAlgorithm};

            pub fn verify(
                alg: Ecdsa,
                enc: SigEncoding,
                public_key: &[u8],
                msg: &[u8],
                sig: &[u8],
            ) -> Result<(), BadSignature> {
                let a: &dyn VerificationAlgorithm = match (alg, enc) {
                    (Ecdsa::P256Sha256, SigEncoding::Der) => &signature::ECDSA_P256_SHA256_ASN1,
                    (Ecdsa::P256Sha256, SigEncoding::Fixed) => &signature::ECDSA_P256_SHA256_FIXED,
                    (Ecdsa::P256Sha384, SigEncoding::Der) => &signature::ECDSA_P256_SHA384_ASN1,
                    (Ecdsa::P384Sha256, SigEncoding::Der) => &signature::ECDSA_P384_SHA256_ASN1,
                    (Ecdsa::P384Sha384, SigEncoding::Der) => &signature::ECDSA_P384_SHA384_ASN1,
                    (Ecdsa::P384Sha384, SigEncoding::Fixed) => &signature::ECDSA_P384_SHA384_FIXED,
                    // ring has no fixed-width form of the mixed curve/hash pairs.
                    (Ecdsa::P256Sha384 | Ecdsa::P384Sha256, SigEncoding::Fixed) => {
                        return Err(BadSignature)
                    }
                };
                UnparsedPublicKey::new(a, public_key)
                    .verify(msg, sig)
                    .map_err(|_| BadSignature)
            }
        }
    };
}

ecdsa_backend!(
    /// `ring`'s ECDSA verification (the fallback backend, and the benchmark's
    /// comparison).
    ring_backend,
    ring
);
ecdsa_backend!(
    /// `aws-lc-rs`'s ECDSA verification.
    #[cfg(feature = "aws-lc")]
    aws_lc,
    aws_lc_rs
);

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{self, EcdsaKeyPair, KeyPair};

    fn signed(alg: &'static signature::EcdsaSigningAlgorithm, msg: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let sig = kp.sign(&rng, msg).unwrap();
        (kp.public_key().as_ref().to_vec(), sig.as_ref().to_vec())
    }

    /// Both backends accept a good signature and refuse a flipped bit in the
    /// message, the signature and the key, for every curve and encoding used.
    #[test]
    fn backends_agree() {
        let msg = b"bulwark crypto dispatch";
        let cases = [
            (
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                Ecdsa::P256Sha256,
                SigEncoding::Der,
            ),
            (
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                Ecdsa::P256Sha256,
                SigEncoding::Fixed,
            ),
            (
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                Ecdsa::P384Sha384,
                SigEncoding::Der,
            ),
            (
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                Ecdsa::P384Sha384,
                SigEncoding::Fixed,
            ),
        ];
        for (signing, alg, enc) in cases {
            let (pk, sig) = signed(signing, msg);
            assert_eq!(
                verify_ecdsa(alg, enc, &pk, msg, &sig),
                Ok(()),
                "{alg:?} {enc:?}"
            );
            assert_eq!(ring_backend::verify(alg, enc, &pk, msg, &sig), Ok(()));
            #[cfg(feature = "aws-lc")]
            assert_eq!(aws_lc::verify(alg, enc, &pk, msg, &sig), Ok(()));
            let mut m = msg.to_vec();
            m[0] ^= 1;
            assert!(verify_ecdsa(alg, enc, &pk, &m, &sig).is_err());
            let mut s = sig.clone();
            let last = s.len() - 1;
            s[last] ^= 1;
            assert!(verify_ecdsa(alg, enc, &pk, msg, &s).is_err());
            let mut k = pk.clone();
            k[10] ^= 1;
            assert!(verify_ecdsa(alg, enc, &k, msg, &sig).is_err());
            // The wrong curve/hash pairing.
            let other = match alg {
                Ecdsa::P256Sha256 => Ecdsa::P384Sha384,
                _ => Ecdsa::P256Sha256,
            };
            assert!(verify_ecdsa(other, enc, &pk, msg, &sig).is_err());
        }
    }

    #[test]
    fn compressed_and_empty_keys_are_refused() {
        let msg = b"m";
        let (pk, sig) = signed(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, msg);
        let mut compressed = vec![2 + (pk[64] & 1)];
        compressed.extend_from_slice(&pk[1..33]);
        assert!(verify_ecdsa(
            Ecdsa::P256Sha256,
            SigEncoding::Fixed,
            &compressed,
            msg,
            &sig
        )
        .is_err());
        assert!(verify_ecdsa(Ecdsa::P256Sha256, SigEncoding::Fixed, &[], msg, &sig).is_err());
        assert!(verify_ecdsa(Ecdsa::P256Sha256, SigEncoding::Fixed, &pk, msg, &[]).is_err());
    }
}
