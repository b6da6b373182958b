//! TPM 2.0 wire structures (TPM 2.0 Library, Part 2), big-endian, parsed
//! through the crate's bounds-checked [`Reader`]: TPM2B_PUBLIC/TPMT_PUBLIC,
//! TPMS_ATTEST (quotes) and TPMT_SIGNATURE, plus the TPM name of a public area
//! and signature verification (ECDSA through [`crate::crypto`], RSA by `ring`).

use crate::bytes::Reader;
use crate::crypto::{verify_ecdsa, Ecdsa, SigEncoding};
use crate::Error;
use ring::digest;
use ring::signature::{self, RsaPublicKeyComponents};

// TPM_ALG_ID values (Part 2, table 9).
pub const TPM_ALG_RSA: u16 = 0x0001;
pub const TPM_ALG_SHA1: u16 = 0x0004;
pub const TPM_ALG_HMAC: u16 = 0x0005;
pub const TPM_ALG_AES: u16 = 0x0006;
pub const TPM_ALG_KEYEDHASH: u16 = 0x0008;
pub const TPM_ALG_SHA256: u16 = 0x000B;
pub const TPM_ALG_SHA384: u16 = 0x000C;
pub const TPM_ALG_SHA512: u16 = 0x000D;
pub const TPM_ALG_NULL: u16 = 0x0010;
pub const TPM_ALG_RSASSA: u16 = 0x0014;
pub const TPM_ALG_RSAES: u16 = 0x0015;
pub const TPM_ALG_RSAPSS: u16 = 0x0016;
pub const TPM_ALG_OAEP: u16 = 0x0017;
pub const TPM_ALG_ECDSA: u16 = 0x0018;
pub const TPM_ALG_ECDH: u16 = 0x0019;
pub const TPM_ALG_ECDAA: u16 = 0x001A;
pub const TPM_ALG_ECSCHNORR: u16 = 0x001C;
pub const TPM_ALG_ECC: u16 = 0x0023;
pub const TPM_ALG_SYMCIPHER: u16 = 0x0025;
pub const TPM_ALG_CFB: u16 = 0x0043;

// TPM_ECC_CURVE values.
pub const TPM_ECC_NIST_P256: u16 = 0x0003;
pub const TPM_ECC_NIST_P384: u16 = 0x0004;

/// TPM_GENERATED_VALUE: the magic of every structure the TPM signs itself.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// TPMA_OBJECT bits (Part 2, table 31).
pub mod attr {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const ST_CLEAR: u32 = 1 << 2;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const NO_DA: u32 = 1 << 10;
    pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN_ENCRYPT: u32 = 1 << 18;
}

/// Upper bound on a TPM2B buffer we accept (the largest, TPM2B_PUBLIC_KEY_RSA
/// for RSA-16384, is 2048 bytes; TPM2B_MAX_BUFFER is implementation-defined).
const MAX_TPM2B: usize = 4096;

pub(crate) fn be16(r: &mut Reader<'_>) -> Result<u16, Error> {
    Ok(u16::from_be_bytes(r.array()?))
}

pub(crate) fn be32(r: &mut Reader<'_>) -> Result<u32, Error> {
    Ok(u32::from_be_bytes(r.array()?))
}

pub(crate) fn be64(r: &mut Reader<'_>) -> Result<u64, Error> {
    Ok(u64::from_be_bytes(r.array()?))
}

/// A TPM2B: big-endian u16 size, then that many bytes.
pub(crate) fn tpm2b<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], Error> {
    let n = be16(r)? as usize;
    if n > MAX_TPM2B {
        return Err(Error::Parse(format!(
            "TPM2B of {n} bytes at offset {} exceeds {MAX_TPM2B}",
            r.position()
        )));
    }
    r.take(n)
}

fn no_trailing(r: &Reader<'_>, what: &str) -> Result<(), Error> {
    if r.remaining() != 0 {
        return Err(Error::Parse(format!(
            "{what}: {} trailing bytes",
            r.remaining()
        )));
    }
    Ok(())
}

/// Human-readable name of a TPM_ALG_ID.
pub fn alg_name(alg: u16) -> String {
    match alg {
        TPM_ALG_RSA => "rsa".into(),
        TPM_ALG_SHA1 => "sha1".into(),
        TPM_ALG_HMAC => "hmac".into(),
        TPM_ALG_AES => "aes".into(),
        TPM_ALG_KEYEDHASH => "keyedhash".into(),
        TPM_ALG_SHA256 => "sha256".into(),
        TPM_ALG_SHA384 => "sha384".into(),
        TPM_ALG_SHA512 => "sha512".into(),
        TPM_ALG_NULL => "null".into(),
        TPM_ALG_RSASSA => "rsassa".into(),
        TPM_ALG_RSAES => "rsaes".into(),
        TPM_ALG_RSAPSS => "rsapss".into(),
        TPM_ALG_OAEP => "oaep".into(),
        TPM_ALG_ECDSA => "ecdsa".into(),
        TPM_ALG_ECDH => "ecdh".into(),
        TPM_ALG_ECDAA => "ecdaa".into(),
        TPM_ALG_ECSCHNORR => "ecschnorr".into(),
        TPM_ALG_ECC => "ecc".into(),
        TPM_ALG_SYMCIPHER => "symcipher".into(),
        TPM_ALG_CFB => "cfb".into(),
        other => format!("alg {other:#06x}"),
    }
}

/// The `ring` digest algorithm and size for a TPM hash algorithm.
pub fn hash_alg(alg: u16) -> Option<&'static digest::Algorithm> {
    match alg {
        TPM_ALG_SHA256 => Some(&digest::SHA256),
        TPM_ALG_SHA384 => Some(&digest::SHA384),
        TPM_ALG_SHA512 => Some(&digest::SHA512),
        _ => None,
    }
}

/// TPMT_SYM_DEF_OBJECT (only when its algorithm is not TPM_ALG_NULL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymDef {
    pub alg: u16,
    pub key_bits: u16,
    pub mode: u16,
}

/// A signing or encryption scheme: algorithm and (when it has one) its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    pub alg: u16,
    pub hash: Option<u16>,
}

/// The key-type specific part of a public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKeyParams {
    Rsa {
        key_bits: u16,
        /// 0 in the structure means the default, 65537; stored resolved.
        exponent: u32,
        modulus: Vec<u8>,
    },
    Ecc {
        curve: u16,
        kdf: Scheme,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// A parsed TPMT_PUBLIC (RSA or ECC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmPublic {
    /// The TPMT_PUBLIC bytes exactly as given (what the name hashes).
    pub tpmt: Vec<u8>,
    pub name_alg: u16,
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    pub symmetric: Option<SymDef>,
    pub scheme: Scheme,
    pub params: PublicKeyParams,
}

fn read_sym_def(r: &mut Reader<'_>) -> Result<Option<SymDef>, Error> {
    let alg = be16(r)?;
    if alg == TPM_ALG_NULL {
        return Ok(None);
    }
    Ok(Some(SymDef {
        alg,
        key_bits: be16(r)?,
        mode: be16(r)?,
    }))
}

/// TPMT_RSA_SCHEME / TPMT_ECC_SCHEME / TPMT_KDF_SCHEME: the scheme id, then
/// the details the id selects.
fn read_scheme(r: &mut Reader<'_>, what: &str) -> Result<Scheme, Error> {
    let alg = be16(r)?;
    match alg {
        TPM_ALG_NULL | TPM_ALG_RSAES => Ok(Scheme { alg, hash: None }),
        TPM_ALG_RSASSA | TPM_ALG_RSAPSS | TPM_ALG_OAEP | TPM_ALG_ECDSA | TPM_ALG_ECDH
        | TPM_ALG_ECSCHNORR => Ok(Scheme {
            alg,
            hash: Some(be16(r)?),
        }),
        TPM_ALG_ECDAA => {
            let hash = be16(r)?;
            let _count = be16(r)?;
            Ok(Scheme {
                alg,
                hash: Some(hash),
            })
        }
        // KDF schemes (MGF1, KDF1 SP800-56A/108, KDF2) carry a hash.
        0x0007 | 0x0020 | 0x0021 | 0x0022 if what == "kdf" => Ok(Scheme {
            alg,
            hash: Some(be16(r)?),
        }),
        other => Err(Error::NotImplemented(format!(
            "TPM public area: unsupported {what} scheme {}",
            alg_name(other)
        ))),
    }
}

impl TpmPublic {
    /// Parse a TPM2B_PUBLIC (u16 size, then TPMT_PUBLIC of exactly that size).
    pub fn from_tpm2b(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "TPM2B_PUBLIC");
        let inner = tpm2b(&mut r)?;
        no_trailing(&r, "TPM2B_PUBLIC")?;
        Self::from_tpmt(inner)
    }

    /// Parse a TPMT_PUBLIC; trailing bytes are an error.
    pub fn from_tpmt(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "TPMT_PUBLIC");
        let object_type = be16(&mut r)?;
        let name_alg = be16(&mut r)?;
        let attributes = be32(&mut r)?;
        let auth_policy = tpm2b(&mut r)?.to_vec();
        let (symmetric, scheme, params) = match object_type {
            TPM_ALG_RSA => {
                let symmetric = read_sym_def(&mut r)?;
                let scheme = read_scheme(&mut r, "RSA")?;
                let key_bits = be16(&mut r)?;
                let exponent = match be32(&mut r)? {
                    0 => 65537,
                    e => e,
                };
                let modulus = tpm2b(&mut r)?.to_vec();
                (
                    symmetric,
                    scheme,
                    PublicKeyParams::Rsa {
                        key_bits,
                        exponent,
                        modulus,
                    },
                )
            }
            TPM_ALG_ECC => {
                let symmetric = read_sym_def(&mut r)?;
                let scheme = read_scheme(&mut r, "ECC")?;
                let curve = be16(&mut r)?;
                let kdf = read_scheme(&mut r, "kdf")?;
                let x = tpm2b(&mut r)?.to_vec();
                let y = tpm2b(&mut r)?.to_vec();
                (symmetric, scheme, PublicKeyParams::Ecc { curve, kdf, x, y })
            }
            other => {
                return Err(Error::NotImplemented(format!(
                    "TPM public area of type {} (only RSA and ECC keys are supported)",
                    alg_name(other)
                )))
            }
        };
        no_trailing(&r, "TPMT_PUBLIC")?;
        Ok(TpmPublic {
            tpmt: bytes.to_vec(),
            name_alg,
            attributes,
            auth_policy,
            symmetric,
            scheme,
            params,
        })
    }

    /// The TPM name: nameAlg (big-endian u16) ‖ H_nameAlg(TPMT_PUBLIC).
    pub fn name(&self) -> Result<Vec<u8>, Error> {
        let alg = hash_alg(self.name_alg).ok_or_else(|| {
            Error::NotImplemented(format!("TPM name with nameAlg {}", alg_name(self.name_alg)))
        })?;
        let mut out = self.name_alg.to_be_bytes().to_vec();
        out.extend_from_slice(digest::digest(alg, &self.tpmt).as_ref());
        Ok(out)
    }

    pub fn has(&self, bits: u32) -> bool {
        self.attributes & bits == bits
    }

    /// A short description: "ECC NIST P-256 ECDSA-SHA256", "RSA-2048 RSASSA-SHA256".
    pub fn describe(&self) -> String {
        let scheme = match self.scheme.hash {
            Some(h) => format!("{}-{}", alg_name(self.scheme.alg), alg_name(h)),
            None => alg_name(self.scheme.alg),
        };
        match &self.params {
            PublicKeyParams::Rsa { key_bits, .. } => format!("RSA-{key_bits} {scheme}"),
            PublicKeyParams::Ecc { curve, .. } => {
                let c = match *curve {
                    TPM_ECC_NIST_P256 => "P-256".to_string(),
                    TPM_ECC_NIST_P384 => "P-384".to_string(),
                    other => format!("curve {other:#06x}"),
                };
                format!("ECC {c} {scheme}")
            }
        }
    }

    /// The key as a verifier of TPM signatures: ECDSA on P-256/P-384, or
    /// RSASSA/RSAPSS on RSA-2048 with SHA-256/384/512. Anything else is an
    /// `Error::NotImplemented` naming it.
    pub fn signing_key(&self) -> Result<SigningKey, Error> {
        let unsupported = || {
            Error::NotImplemented(format!(
                "TPM signing key {} (supported: ECDSA P-256/P-384, RSA-2048 RSASSA/RSAPSS)",
                self.describe()
            ))
        };
        let hash = self.scheme.hash.ok_or_else(unsupported)?;
        if hash_alg(hash).is_none() {
            return Err(unsupported());
        }
        match &self.params {
            PublicKeyParams::Ecc { curve, x, y, .. } if self.scheme.alg == TPM_ALG_ECDSA => {
                let size = match *curve {
                    TPM_ECC_NIST_P256 => 32,
                    TPM_ECC_NIST_P384 => 48,
                    _ => return Err(unsupported()),
                };
                if x.len() > size || y.len() > size {
                    return Err(Error::Parse(format!(
                        "ECC point coordinate longer than {size} bytes"
                    )));
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&left_pad(x, size));
                point.extend_from_slice(&left_pad(y, size));
                Ok(SigningKey::Ecdsa {
                    curve: *curve,
                    hash,
                    point,
                })
            }
            PublicKeyParams::Rsa {
                key_bits,
                exponent,
                modulus,
            } if *key_bits == 2048
                && (self.scheme.alg == TPM_ALG_RSASSA || self.scheme.alg == TPM_ALG_RSAPSS) =>
            {
                if modulus.len() != 256 {
                    return Err(Error::Parse(format!(
                        "RSA-2048 modulus of {} bytes",
                        modulus.len()
                    )));
                }
                Ok(SigningKey::Rsa {
                    pss: self.scheme.alg == TPM_ALG_RSAPSS,
                    hash,
                    modulus: modulus.clone(),
                    exponent: exponent.to_be_bytes().to_vec(),
                })
            }
            _ => Err(unsupported()),
        }
    }
}

fn left_pad(v: &[u8], size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size.saturating_sub(v.len())];
    out.extend_from_slice(v);
    out
}

/// A public key that verifies TPM signatures, with the scheme fixed by the
/// key's public area (a restricted key signs only with its own scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningKey {
    Ecdsa {
        curve: u16,
        hash: u16,
        /// Uncompressed SEC1 point.
        point: Vec<u8>,
    },
    Rsa {
        pss: bool,
        hash: u16,
        modulus: Vec<u8>,
        exponent: Vec<u8>,
    },
}

impl SigningKey {
    /// Verify a TPMT_SIGNATURE over `message`. The signature's algorithm and
    /// hash must be the key's scheme.
    pub fn verify(&self, message: &[u8], sig: &TpmSignature) -> Result<(), String> {
        match (self, sig) {
            (
                SigningKey::Ecdsa { curve, hash, point },
                TpmSignature::Ecdsa {
                    hash: sig_hash,
                    r,
                    s,
                },
            ) => {
                if sig_hash != hash {
                    return Err(format!(
                        "signature hash {} is not the key's {}",
                        alg_name(*sig_hash),
                        alg_name(*hash)
                    ));
                }
                let alg = match (*curve, *hash) {
                    (TPM_ECC_NIST_P256, TPM_ALG_SHA256) => Ecdsa::P256Sha256,
                    (TPM_ECC_NIST_P256, TPM_ALG_SHA384) => Ecdsa::P256Sha384,
                    (TPM_ECC_NIST_P384, TPM_ALG_SHA256) => Ecdsa::P384Sha256,
                    (TPM_ECC_NIST_P384, TPM_ALG_SHA384) => Ecdsa::P384Sha384,
                    _ => {
                        return Err(format!(
                            "ECDSA with {} on curve {curve:#06x} is not supported",
                            alg_name(*hash)
                        ))
                    }
                };
                let der = ecdsa_der(r, s).ok_or("ECDSA r or s is empty or too long")?;
                verify_ecdsa(alg, SigEncoding::Der, point, message, &der)
                    .map_err(|_| "ECDSA signature does not verify with the AK".to_string())
            }
            (
                SigningKey::Rsa {
                    pss,
                    hash,
                    modulus,
                    exponent,
                },
                TpmSignature::Rsa {
                    pss: sig_pss,
                    hash: sig_hash,
                    sig,
                },
            ) => {
                if sig_pss != pss || sig_hash != hash {
                    return Err(format!(
                        "signature scheme {}-{} is not the key's {}-{}",
                        if *sig_pss { "rsapss" } else { "rsassa" },
                        alg_name(*sig_hash),
                        if *pss { "rsapss" } else { "rsassa" },
                        alg_name(*hash)
                    ));
                }
                let params: &signature::RsaParameters = match (*pss, *hash) {
                    (false, TPM_ALG_SHA256) => &signature::RSA_PKCS1_2048_8192_SHA256,
                    (false, TPM_ALG_SHA384) => &signature::RSA_PKCS1_2048_8192_SHA384,
                    (false, TPM_ALG_SHA512) => &signature::RSA_PKCS1_2048_8192_SHA512,
                    (true, TPM_ALG_SHA256) => &signature::RSA_PSS_2048_8192_SHA256,
                    (true, TPM_ALG_SHA384) => &signature::RSA_PSS_2048_8192_SHA384,
                    (true, TPM_ALG_SHA512) => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return Err(format!("RSA with {} is not supported", alg_name(*hash))),
                };
                RsaPublicKeyComponents {
                    n: modulus,
                    e: exponent,
                }
                .verify(params, message, sig)
                .map_err(|_| "RSA signature does not verify with the AK".to_string())
            }
            _ => Err("signature algorithm does not match the AK's key type".into()),
        }
    }
}

/// DER `Ecdsa-Sig-Value` from big-endian r and s.
fn ecdsa_der(r: &[u8], s: &[u8]) -> Option<Vec<u8>> {
    fn int(v: &[u8]) -> Option<Vec<u8>> {
        let mut v = v;
        while v.len() > 1 && v[0] == 0 {
            v = &v[1..];
        }
        if v.is_empty() || v.len() > 66 {
            return None;
        }
        let mut out = vec![0x02];
        let pad = v[0] & 0x80 != 0;
        out.push((v.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        Some(out)
    }
    let (r, s) = (int(r)?, int(s)?);
    let len = r.len() + s.len();
    let mut out = vec![0x30];
    if len >= 0x80 {
        out.push(0x81);
    }
    out.push(len as u8);
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    Some(out)
}

/// A parsed TPMT_SIGNATURE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmSignature {
    Ecdsa { hash: u16, r: Vec<u8>, s: Vec<u8> },
    Rsa { pss: bool, hash: u16, sig: Vec<u8> },
}

impl TpmSignature {
    /// Parse a TPMT_SIGNATURE; trailing bytes are an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "TPMT_SIGNATURE");
        let alg = be16(&mut r)?;
        let sig = match alg {
            TPM_ALG_ECDSA => {
                let hash = be16(&mut r)?;
                let rr = tpm2b(&mut r)?.to_vec();
                let s = tpm2b(&mut r)?.to_vec();
                TpmSignature::Ecdsa { hash, r: rr, s }
            }
            TPM_ALG_RSASSA | TPM_ALG_RSAPSS => {
                let hash = be16(&mut r)?;
                let sig = tpm2b(&mut r)?.to_vec();
                TpmSignature::Rsa {
                    pss: alg == TPM_ALG_RSAPSS,
                    hash,
                    sig,
                }
            }
            other => {
                return Err(Error::NotImplemented(format!(
                    "TPM signature algorithm {}",
                    alg_name(other)
                )))
            }
        };
        no_trailing(&r, "TPMT_SIGNATURE")?;
        Ok(sig)
    }
}

/// One TPMS_PCR_SELECTION: a bank and the PCR indexes selected in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    pub hash: u16,
    /// Selected PCR indexes, ascending (bit order of the bitmap).
    pub pcrs: Vec<u32>,
}

/// TPMS_CLOCK_INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: u8,
}

/// A parsed TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    pub magic: u32,
    pub attest_type: u16,
    pub qualified_signer: Vec<u8>,
    pub extra_data: Vec<u8>,
    pub clock_info: ClockInfo,
    pub firmware_version: u64,
    /// TPML_PCR_SELECTION, in the order the TPM hashed the PCRs.
    pub pcr_select: Vec<PcrSelection>,
    pub pcr_digest: Vec<u8>,
}

/// TPML_PCR_SELECTION holds at most HASH_COUNT entries; a TPM has few banks.
const MAX_BANKS: u32 = 16;

impl Attest {
    /// Parse a TPMS_ATTEST. Only quotes (TPM_ST_ATTEST_QUOTE) are supported;
    /// the magic is parsed but checked by the verifier, not here.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "TPMS_ATTEST");
        let magic = be32(&mut r)?;
        let attest_type = be16(&mut r)?;
        if attest_type != TPM_ST_ATTEST_QUOTE {
            return Err(Error::NotImplemented(format!(
                "TPMS_ATTEST of type {attest_type:#06x} (only TPM_ST_ATTEST_QUOTE {TPM_ST_ATTEST_QUOTE:#06x})"
            )));
        }
        let qualified_signer = tpm2b(&mut r)?.to_vec();
        let extra_data = tpm2b(&mut r)?.to_vec();
        let clock_info = ClockInfo {
            clock: be64(&mut r)?,
            reset_count: be32(&mut r)?,
            restart_count: be32(&mut r)?,
            safe: r.u8()?,
        };
        let firmware_version = be64(&mut r)?;
        let count = be32(&mut r)?;
        if count > MAX_BANKS {
            return Err(Error::Parse(format!(
                "TPML_PCR_SELECTION count {count} exceeds {MAX_BANKS}"
            )));
        }
        let mut pcr_select = Vec::new();
        for _ in 0..count {
            let hash = be16(&mut r)?;
            let size = r.u8()? as usize;
            let bitmap = r.take(size)?;
            let pcrs = bitmap
                .iter()
                .enumerate()
                .flat_map(|(i, b)| {
                    (0..8u32)
                        .filter(move |bit| b & (1 << bit) != 0)
                        .map(move |bit| i as u32 * 8 + bit)
                })
                .collect();
            pcr_select.push(PcrSelection { hash, pcrs });
        }
        let pcr_digest = tpm2b(&mut r)?.to_vec();
        no_trailing(&r, "TPMS_ATTEST")?;
        Ok(Attest {
            magic,
            attest_type,
            qualified_signer,
            extra_data,
            clock_info,
            firmware_version,
            pcr_select,
            pcr_digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_der_pads_high_bit_and_strips_zeros() {
        let der = ecdsa_der(&[0x00, 0x80], &[0x01]).unwrap();
        assert_eq!(
            der,
            vec![0x30, 0x07, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x01]
        );
        assert!(ecdsa_der(&[], &[1]).is_none());
    }

    #[test]
    fn unsupported_public_types_are_not_implemented() {
        // TPMT_PUBLIC of type KEYEDHASH.
        let mut b = vec![0x00, 0x08, 0x00, 0x0B, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&[0x00, 0x10, 0x00, 0x00]);
        assert!(matches!(
            TpmPublic::from_tpmt(&b),
            Err(Error::NotImplemented(_))
        ));
    }

    #[test]
    fn truncated_inputs_are_parse_errors() {
        for n in 0..6 {
            assert!(Attest::parse(&vec![0xff; n]).is_err());
            assert!(TpmSignature::parse(&vec![0x00; n]).is_err());
            assert!(TpmPublic::from_tpm2b(&vec![0x00; n]).is_err());
        }
    }
}
