//! Signed EARs: `--ear-key`/`--ear-out` write the EAR as a JWT signed by the
//! verifier's key; `ear-verify` checks it with the public key and prints the
//! claims set. A tampered token, a wrong key and an algorithm that is not the
//! key's are refused.
#![cfg(feature = "ear-jwt")]

mod common;
#[path = "common/synthetic_tpm.rs"]
mod synthetic_tpm;

use bulwark_attestation::ear::signed::{self, Error};
use common::*;
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bulwark-signed-ear-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A PKCS#8 private key and its SubjectPublicKeyInfo, both PEM.
fn key_pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
    let k = rcgen::KeyPair::generate_for(alg).unwrap();
    (
        synthetic_tpm::pem("PRIVATE KEY", &k.serialize_der()),
        synthetic_tpm::pem("PUBLIC KEY", &k.public_key_der()),
    )
}

const NVIDIA_OK: [&str; 7] = [
    "nvidia",
    "--report",
    "testdata:nvidia/hopper-report.hex",
    "--chain",
    "testdata:nvidia/hopper-cert-chain.pem",
    "--at",
    "2024-06-01T00:00:00Z",
];

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[test]
fn signed_ear_round_trip_through_the_cli() {
    for (alg, name) in [
        (&rcgen::PKCS_ECDSA_P256_SHA256, "ES256"),
        (&rcgen::PKCS_ECDSA_P384_SHA384, "ES384"),
    ] {
        let dir = scratch(name);
        let (private, public) = key_pair(alg);
        let (key, pub_key, out) = (dir.join("k.pem"), dir.join("pub.pem"), dir.join("ear.jwt"));
        std::fs::write(&key, private).unwrap();
        std::fs::write(&pub_key, public).unwrap();

        let mut args = NVIDIA_OK.to_vec();
        let (k, o) = (path(&key), path(&out));
        args.extend(["--json", "--ear-key", &k, "--ear-out", &o]);
        let run = cli(&args);
        assert_eq!(code(&run), 0, "{}", String::from_utf8_lossy(&run.stderr));
        let printed = json(&run);
        let token = std::fs::read_to_string(&out).unwrap();
        assert_eq!(token.trim().split('.').count(), 3, "JWS compact form");

        let v = cli(&["ear-verify", &o, "--key", &path(&pub_key)]);
        assert_eq!(code(&v), 0, "{}", String::from_utf8_lossy(&v.stderr));
        // What was signed is exactly the EAR printed by --json.
        assert_eq!(json(&v), printed);
        assert!(String::from_utf8_lossy(&v.stderr).contains(name));

        let lib = signed::verify_jwt(&token, &std::fs::read(&pub_key).unwrap()).unwrap();
        assert_eq!(lib.algorithm, name);
        assert_eq!(lib.claims["submods"]["nvidia"]["ear_status"], "affirming");
        assert_eq!(lib.claims["kind"], "nvidia");
    }
}

#[test]
fn tampered_token_and_wrong_key_are_refused() {
    let dir = scratch("refused");
    let (private, public) = key_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (_, other_public) = key_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (_, p384_public) = key_pair(&rcgen::PKCS_ECDSA_P384_SHA384);
    let key = dir.join("k.pem");
    std::fs::write(&key, &private).unwrap();
    let out = dir.join("ear.jwt");
    let mut args = NVIDIA_OK.to_vec();
    let (k, o) = (path(&key), path(&out));
    args.extend(["--ear-key", &k, "--ear-out", &o]);
    assert_eq!(code(&cli(&args)), 0);
    let token = std::fs::read_to_string(&out).unwrap().trim().to_string();
    assert!(signed::verify_jwt(&token, public.as_bytes()).is_ok());

    // Another key of the same curve, and a key of the other curve.
    for k in [&other_public, &p384_public] {
        assert!(matches!(
            signed::verify_jwt(&token, k.as_bytes()),
            Err(Error::Refused(_))
        ));
    }
    let other = dir.join("other.pem");
    std::fs::write(&other, &other_public).unwrap();
    let v = cli(&["ear-verify", &o, "--key", &path(&other)]);
    assert_eq!(code(&v), 1);
    assert!(v.stdout.is_empty(), "nothing printed from a refused token");

    // Any change to the payload: a status rewritten, a claim byte changed.
    let parts: Vec<&str> = token.split('.').collect();
    let payload = base64_url_decode(parts[1]);
    let text = String::from_utf8(payload).unwrap();
    assert!(text.contains("\"affirming\""));
    let forged = text.replacen("\"affirming\"", "\"warning\"", 1);
    let forged_token = format!(
        "{}.{}.{}",
        parts[0],
        base64_url_encode(forged.as_bytes()),
        parts[2]
    );
    assert!(matches!(
        signed::verify_jwt(&forged_token, public.as_bytes()),
        Err(Error::Refused(_))
    ));
    let forged_file = dir.join("forged.jwt");
    std::fs::write(&forged_file, &forged_token).unwrap();
    let pub_file = dir.join("pub.pem");
    std::fs::write(&pub_file, &public).unwrap();
    let v = cli(&["ear-verify", &path(&forged_file), "--key", &path(&pub_file)]);
    assert_eq!(code(&v), 1);

    // A flipped character in the signature.
    let mut sig: Vec<u8> = parts[2].bytes().collect();
    sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
    let bad_sig = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        String::from_utf8(sig).unwrap()
    );
    assert!(matches!(
        signed::verify_jwt(&bad_sig, public.as_bytes()),
        Err(Error::Refused(_))
    ));

    // The header naming another algorithm than the key's (alg confusion),
    // and "none".
    for alg in ["ES384", "none", "HS256"] {
        let header = base64_url_encode(format!("{{\"typ\":\"JWT\",\"alg\":\"{alg}\"}}").as_bytes());
        let t = format!("{header}.{}.{}", parts[1], parts[2]);
        assert!(signed::verify_jwt(&t, public.as_bytes()).is_err(), "{alg}");
    }
    // Not a JWT at all.
    assert!(signed::verify_jwt("not a token", public.as_bytes()).is_err());
}

#[test]
fn unusable_keys_are_usage_errors() {
    let dir = scratch("keys");
    let out = dir.join("ear.jwt");
    let o = path(&out);
    // An Ed25519 key, a public key given as the signing key, garbage.
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let (_, public) = key_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    for (name, text, usable_public) in [
        (
            "ed25519.pem",
            synthetic_tpm::pem("PRIVATE KEY", &ed.serialize_der()),
            false,
        ),
        ("public.pem", public.clone(), true),
        ("garbage.pem", "not a key".to_string(), false),
    ] {
        let key = dir.join(name);
        std::fs::write(&key, &text).unwrap();
        let mut args = NVIDIA_OK.to_vec();
        let k = path(&key);
        args.extend(["--ear-key", &k, "--ear-out", &o]);
        let run = cli(&args);
        assert_eq!(
            code(&run),
            2,
            "{name}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(!out.exists(), "{name}: no token written");
        let e = signed::verify_jwt("a.b.c", text.as_bytes()).unwrap_err();
        if usable_public {
            assert!(matches!(e, Error::Refused(_)), "{name}: {e}");
        } else {
            assert!(matches!(e, Error::Argument(_)), "{name}: {e}");
        }
    }
    // --ear-key without --ear-out (and the reverse) is a usage error.
    let mut args = NVIDIA_OK.to_vec();
    args.extend(["--ear-key", "k.pem"]);
    assert_eq!(code(&cli(&args)), 2);
    let mut args = NVIDIA_OK.to_vec();
    args.extend(["--ear-out", "e.jwt"]);
    assert_eq!(code(&cli(&args)), 2);
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

fn base64_url_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
