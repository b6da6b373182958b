//! The client's nonce in the TLS handshake: the Server Name Indication.
//!
//! ```text
//! SNI = <hex(nonce[0..16])> "." <hex(nonce[16..32])> ".attest.bulwark"
//! ```
//!
//! A fresh 32-byte nonce per handshake, lowercase hex, split into two
//! 32-character DNS labels (one 64-character label would exceed DNS's
//! 63-octet limit, and rustls sends only valid DNS names). The server reads
//! it back case-insensitively. The nonce is not secret: it travels in the
//! clear ClientHello; what matters is that the client chose it for this
//! handshake and the evidence carries it.

use super::AtlsError;

/// Bytes of the client's nonce.
pub const NONCE_LEN: usize = 32;
/// The domain the two nonce labels sit under.
pub const SNI_SUFFIX: &str = "attest.bulwark";

/// The SNI name carrying this nonce.
pub fn nonce_to_sni(nonce: &[u8; NONCE_LEN]) -> String {
    format!(
        "{}.{}.{SNI_SUFFIX}",
        hex::encode(&nonce[..16]),
        hex::encode(&nonce[16..])
    )
}

/// The nonce in an SNI name made by [`nonce_to_sni`] (case-insensitive,
/// an optional trailing dot tolerated).
pub fn nonce_from_sni(name: &str) -> Result<[u8; NONCE_LEN], AtlsError> {
    let bad = |why: &str| AtlsError::Argument(format!("SNI {name:?}: {why}"));
    let lower = name.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    let labels = lower
        .strip_suffix(SNI_SUFFIX)
        .and_then(|p| p.strip_suffix('.'))
        .ok_or_else(|| bad("not under .attest.bulwark"))?;
    let (a, b) = labels
        .split_once('.')
        .ok_or_else(|| bad("expected two nonce labels"))?;
    if a.len() != 32 || b.len() != 32 {
        return Err(bad("each nonce label must be 32 hex characters"));
    }
    let mut out = [0u8; NONCE_LEN];
    hex::decode_to_slice(a, &mut out[..16]).map_err(|_| bad("nonce label is not hex"))?;
    hex::decode_to_slice(b, &mut out[16..]).map_err(|_| bad("nonce label is not hex"))?;
    Ok(out)
}

/// A fresh random nonce.
pub fn fresh_nonce() -> Result<[u8; NONCE_LEN], AtlsError> {
    use ring::rand::SecureRandom;
    let mut n = [0u8; NONCE_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| AtlsError::Argument("the system random generator failed".into()))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_round_trip() {
        let n: [u8; 32] = core::array::from_fn(|i| (i * 9) as u8);
        let s = nonce_to_sni(&n);
        assert!(s.split('.').all(|l| l.len() <= 63));
        assert!(rustls::pki_types::ServerName::try_from(s.clone()).is_ok());
        assert_eq!(nonce_from_sni(&s).unwrap(), n);
        assert_eq!(nonce_from_sni(&s.to_ascii_uppercase()).unwrap(), n);
        assert_eq!(nonce_from_sni(&format!("{s}.")).unwrap(), n);
        for bad in [
            "",
            "attest.bulwark",
            "x.attest.bulwark",
            "example.com",
            &s.replace(".attest.bulwark", ".attest.bulwark.evil"),
            &s.replacen('0', "g", 1),
            &format!("a{s}"),
        ] {
            assert!(nonce_from_sni(bad).is_err(), "{bad}");
        }
    }
}
