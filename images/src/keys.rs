//! ECDSA P-384 signing keys and trusted public keys.
//!
//! Private keys are PKCS#8 (PEM label `PRIVATE KEY`), public keys are
//! SubjectPublicKeyInfo (PEM label `PUBLIC KEY`), the forms OpenSSL reads and
//! writes. A key's id is the SHA-256 of its SubjectPublicKeyInfo DER.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P384_SHA384_FIXED,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use sha2::{Digest, Sha256};

use crate::error::ImageError;

/// DER prefix of a P-384 SubjectPublicKeyInfo: SEQUENCE { SEQUENCE {
/// id-ecPublicKey (1.2.840.10045.2.1), secp384r1 (1.3.132.0.34) }, BIT STRING
/// (0 unused bits) } followed by the 97-byte uncompressed point.
const P384_SPKI_PREFIX: [u8; 23] = [
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];
const P384_POINT_LEN: usize = 97;

/// Length of a signature: r || s, 48 bytes each, big-endian.
pub const SIGNATURE_LEN: usize = 96;

/// A key id: SHA-256 of the SubjectPublicKeyInfo DER.
pub type KeyId = [u8; 32];

/// A P-384 public key that signatures are checked against.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    spki: Vec<u8>,
    id: KeyId,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("id", &hex::encode(self.id))
            .finish()
    }
}

impl PublicKey {
    /// From SubjectPublicKeyInfo DER; only P-384 keys are accepted.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, String> {
        if der.len() != P384_SPKI_PREFIX.len() + P384_POINT_LEN
            || der[..P384_SPKI_PREFIX.len()] != P384_SPKI_PREFIX
        {
            return Err("not an ECDSA P-384 SubjectPublicKeyInfo".into());
        }
        if der[P384_SPKI_PREFIX.len()] != 0x04 {
            return Err("P-384 public key is not an uncompressed point".into());
        }
        Ok(PublicKey {
            spki: der.to_vec(),
            id: Sha256::digest(der).into(),
        })
    }

    /// From PEM text (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let p = pem::parse(text).map_err(|e| format!("not PEM: {e}"))?;
        if p.tag() != "PUBLIC KEY" {
            return Err(format!(
                "PEM label is {:?}, expected \"PUBLIC KEY\"",
                p.tag()
            ));
        }
        Self::from_spki_der(p.contents())
    }

    /// Read a PEM public key file.
    pub fn from_pem_file(path: &Path) -> Result<Self, ImageError> {
        let text = std::fs::read_to_string(path).map_err(|e| ImageError::io(path, e))?;
        Self::from_pem(&text).map_err(|reason| ImageError::Key {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// PEM text of this key.
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki.clone()))
    }

    /// The key id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The key id as lower-case hex.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// Whether `signature` (r || s) is this key's ECDSA P-384/SHA-384
    /// signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        let point = &self.spki[P384_SPKI_PREFIX.len()..];
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point)
            .verify(message, signature)
            .is_ok()
    }
}

/// A P-384 private key that signs manifests.
#[derive(Debug)]
pub struct SigningKey {
    pair: EcdsaKeyPair,
    public: PublicKey,
}

impl SigningKey {
    fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|e| format!("not a P-384 PKCS#8 private key with its public key: {e}"))?;
        let mut spki = P384_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        let public = PublicKey::from_spki_der(&spki)?;
        Ok(SigningKey { pair, public })
    }

    /// Read a PEM PKCS#8 private key file (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem_file(path: &Path) -> Result<Self, ImageError> {
        let key_err = |reason: String| ImageError::Key {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| ImageError::io(path, e))?;
        let p = pem::parse(text).map_err(|e| key_err(format!("not PEM: {e}")))?;
        if p.tag() != "PRIVATE KEY" {
            return Err(key_err(format!(
                "PEM label is {:?}, expected \"PRIVATE KEY\" (PKCS#8)",
                p.tag()
            )));
        }
        Self::from_pkcs8(p.contents()).map_err(key_err)
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Sign `message`: ECDSA P-384 over SHA-384, r || s.
    pub fn sign(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], ImageError> {
        let sig = self
            .pair
            .sign(&SystemRandom::new(), message)
            .map_err(|_| ImageError::Sign("ECDSA signing failed".into()))?;
        let mut out = [0u8; SIGNATURE_LEN];
        if sig.as_ref().len() != SIGNATURE_LEN {
            return Err(ImageError::Sign("unexpected signature length".into()));
        }
        out.copy_from_slice(sig.as_ref());
        Ok(out)
    }
}

/// File names `keygen` writes.
pub const PRIVATE_KEY_FILE: &str = "signing.key";
/// See [`PRIVATE_KEY_FILE`].
pub const PUBLIC_KEY_FILE: &str = "signing.pub";

/// Generate a key pair into `dir` (`signing.key`, mode 0600, and
/// `signing.pub`). Refuses to overwrite existing files.
pub fn generate_key_pair(dir: &Path) -> Result<(PathBuf, PathBuf, PublicKey), ImageError> {
    std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| ImageError::Sign("key generation failed".into()))?;
    let key = SigningKey::from_pkcs8(pkcs8.as_ref()).map_err(ImageError::Sign)?;
    let private_path = dir.join(PRIVATE_KEY_FILE);
    let public_path = dir.join(PUBLIC_KEY_FILE);
    let private_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    write_new(&private_path, private_pem.as_bytes(), 0o600)?;
    write_new(&public_path, key.public.to_pem().as_bytes(), 0o644)?;
    Ok((private_path, public_path, key.public))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ImageError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| ImageError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ImageError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (private, public, pk) = generate_key_pair(dir.path()).unwrap();
        let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sk = SigningKey::from_pem_file(&private).unwrap();
        let pk2 = PublicKey::from_pem_file(&public).unwrap();
        assert_eq!(pk, pk2);
        assert_eq!(sk.public(), &pk);
        let sig = sk.sign(b"hello").unwrap();
        assert!(pk.verify(b"hello", &sig));
        assert!(!pk.verify(b"hellp", &sig));
        // A second keygen into the same folder must not clobber the key.
        assert!(matches!(
            generate_key_pair(dir.path()),
            Err(ImageError::Io { .. })
        ));
    }

    #[test]
    fn wrong_key_material_is_refused_clearly() {
        assert!(PublicKey::from_pem("garbage").is_err());
        let p256_label = pem::encode(&pem::Pem::new("PUBLIC KEY", vec![0x30, 0x59, 0x30]));
        assert!(PublicKey::from_pem(&p256_label)
            .unwrap_err()
            .contains("P-384"));
    }
}
