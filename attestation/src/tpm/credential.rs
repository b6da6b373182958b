//! TPM2_MakeCredential in software (TPM 2.0 Library Part 1, §24 "Credential
//! Protection"), for an RSA-2048 EK created from the TCG default template
//! (nameAlg SHA-256, symmetric AES-128-CFB): the verifier encrypts a secret
//! so that only the TPM holding the EK can recover it, and only for a loaded
//! object with the given name (the AK). The TPM's TPM2_ActivateCredential
//! returns the secret.
//!
//! - seed: 32 random bytes, RSA-OAEP(SHA-256, label "IDENTITY\0") to the EK;
//! - symKey = KDFa(SHA-256, seed, "STORAGE", name, "", 128);
//! - encIdentity = AES-128-CFB(symKey, IV = 0, TPM2B_DIGEST(secret));
//! - HMACkey = KDFa(SHA-256, seed, "INTEGRITY", "", "", 256);
//! - outerHMAC = HMAC-SHA256(HMACkey, encIdentity ‖ name);
//! - TPM2B_ID_OBJECT = TPM2B(outerHMAC) ‖ encIdentity.

use crate::x509::PublicKey;
use crate::Error;
use aes::Aes128;
use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::rand_core::{CryptoRng, RngCore};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPublicKey};

/// Largest secret: a TPM2B_DIGEST no longer than the EK's nameAlg digest.
pub const MAX_SECRET: usize = 32;

/// The two TPM2_ActivateCredential inputs, as buffer contents (without the
/// TPM2B size prefix, the way tss-esapi's `IdObject` and `EncryptedSecret`
/// take them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// TPM2B_ID_OBJECT contents: TPM2B_DIGEST(integrity HMAC) ‖ encIdentity.
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: the OAEP-encrypted seed.
    pub encrypted_secret: Vec<u8>,
}

impl Credential {
    /// tpm2-tools' `tpm2_makecredential` output file: magic 0xBADCC0DE,
    /// version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET (big-endian).
    pub fn to_tpm2_tools(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xBADC_C0DEu32.to_be_bytes());
        out.extend_from_slice(&1u32.to_be_bytes());
        for b in [&self.credential_blob, &self.encrypted_secret] {
            out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            out.extend_from_slice(b);
        }
        out
    }
}

/// Make a credential for the object named `ak_name` (nameAlg ‖ digest, see
/// [`super::TpmPublic::name`]), to the RSA-2048 EK `ek` (from the verified
/// EK certificate).
pub fn make_credential(ek: &PublicKey, ak_name: &[u8], secret: &[u8]) -> Result<Credential, Error> {
    let PublicKey::Rsa(der) = ek else {
        return Err(Error::NotImplemented(
            "credential activation with a non-RSA EK".into(),
        ));
    };
    let key = RsaPublicKey::from_pkcs1_der(der)
        .map_err(|e| Error::Parse(format!("EK RSA public key: {e}")))?;
    if key.size() != 256 {
        return Err(Error::NotImplemented(format!(
            "credential activation with an RSA-{} EK (only RSA-2048)",
            key.size() * 8
        )));
    }
    if secret.is_empty() || secret.len() > MAX_SECRET {
        return Err(Error::Argument(format!(
            "credential secret of {} bytes (1 to {MAX_SECRET})",
            secret.len()
        )));
    }
    if ak_name.len() < 2 {
        return Err(Error::Argument("AK name too short".into()));
    }
    let rng = SystemRandom::new();
    let mut seed = [0u8; 32];
    rng.fill(&mut seed)
        .map_err(|_| Error::Argument("system random number generator failed".into()))?;
    let encrypted_secret = key
        .encrypt(
            &mut RingRng(&rng),
            Oaep::new_with_label::<sha2::Sha256, _>("IDENTITY\0"),
            &seed,
        )
        .map_err(|e| Error::Argument(format!("RSA-OAEP encryption to the EK: {e}")))?;
    let credential_blob = protect(&seed, ak_name, secret);
    Ok(Credential {
        credential_blob,
        encrypted_secret,
    })
}

/// The TPM2B_ID_OBJECT contents for a given seed (deterministic part).
fn protect(seed: &[u8], name: &[u8], secret: &[u8]) -> Vec<u8> {
    let sym_key = kdfa(seed, b"STORAGE", name, &[], 128);
    let mut enc_identity = (secret.len() as u16).to_be_bytes().to_vec();
    enc_identity.extend_from_slice(secret);
    let mut key = [0u8; 16];
    key.copy_from_slice(&sym_key);
    cfb_mode::Encryptor::<Aes128>::new(&key.into(), &[0u8; 16].into()).encrypt(&mut enc_identity);
    let hmac_key = kdfa(seed, b"INTEGRITY", &[], &[], 256);
    let k = hmac::Key::new(hmac::HMAC_SHA256, &hmac_key);
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(&enc_identity);
    ctx.update(name);
    let outer = ctx.sign();
    let mut out = (outer.as_ref().len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(outer.as_ref());
    out.extend_from_slice(&enc_identity);
    out
}

/// KDFa with SHA-256 (TPM 2.0 Part 1 §11.4.10.2, SP 800-108 counter mode
/// with HMAC): K_i = HMAC(key, [i]₃₂ ‖ label ‖ 0x00 ‖ contextU ‖ contextV ‖
/// [bits]₃₂), concatenated and truncated to `bits` (a multiple of 8 here).
pub fn kdfa(key: &[u8], label: &[u8], context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut ctx = hmac::Context::with_key(&k);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label);
        if label.last() != Some(&0) {
            ctx.update(&[0]);
        }
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// `ring`'s system RNG behind the `rand_core` traits the `rsa` crate takes.
struct RingRng<'a>(&'a SystemRandom);

impl RngCore for RingRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // The trait has no error path here; an RNG failure must not yield
        // predictable bytes, so it aborts the operation loudly.
        #[allow(clippy::expect_used)]
        self.0
            .fill(dest)
            .expect("system random number generator failed");
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.0.fill(dest).map_err(|_| {
            rsa::rand_core::Error::from(
                core::num::NonZeroU32::new(rsa::rand_core::Error::CUSTOM_START)
                    .unwrap_or(core::num::NonZeroU32::MIN),
            )
        })
    }
}

impl CryptoRng for RingRng<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_lengths_and_label_terminator() {
        let a = kdfa(b"seed", b"STORAGE", b"name", &[], 128);
        let b = kdfa(b"seed", b"STORAGE\0", b"name", &[], 128);
        assert_eq!(a.len(), 16);
        assert_eq!(a, b, "the label's terminating NUL is added once");
        let long = kdfa(b"seed", b"INTEGRITY", &[], &[], 512);
        assert_eq!(long.len(), 64);
        // The first block differs from the 256-bit derivation (bits is hashed).
        assert_ne!(
            &long[..32],
            kdfa(b"seed", b"INTEGRITY", &[], &[], 256).as_slice()
        );
    }

    #[test]
    fn protect_layout() {
        let blob = protect(&[7u8; 32], &[0, 0x0b, 1, 2], b"secret");
        // u16 32, HMAC, then encIdentity = 2 + 6 bytes.
        assert_eq!(&blob[..2], &[0, 32]);
        assert_eq!(blob.len(), 2 + 32 + 8);
    }

    #[test]
    fn rejects_bad_arguments() {
        let ek = PublicKey::EcP256(vec![4; 65]);
        assert!(matches!(
            make_credential(&ek, &[0, 0x0b], b"x"),
            Err(Error::NotImplemented(_))
        ));
    }
}
