//! The one result shape of every verification: an IETF RATS EAR (EAT
//! Attestation Result, draft-ietf-rats-ear) built with the `ear` crate.
//!
//! One submodule per attested subject (a vendor verifier's single subject,
//! or Bulwark evidence's `node`, `vm` and each `gpuN`), each with its
//! `ear_status`, its AR4SI trustworthiness vector, the claims extracted from
//! the evidence (`ear_attester_claims`) and the checks that ran
//! (`bulwark_checks`). For direct use, the top level also carries `kind`,
//! `verified_at`, `status`, `checks` and `claims` (registered extensions).

use crate::checks::{Category, Check, Outcome, Verification};
use crate::time::VerificationTime;
use ear::{Appraisal, Ear, RawValue, RawValueKind, TrustTier, VerifierID};
use serde_json::{Map, Value};

/// The EAR profile this output follows (the `ear` crate's, draft 04).
pub const EAT_PROFILE: &str = ear::EAR_PROFILE;
/// Who made the result.
pub const DEVELOPER: &str = "Bulwark";
pub const BUILD: &str = concat!("bulwark-verify ", env!("CARGO_PKG_VERSION"));

/// An AR4SI trustworthiness claim of the vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustClaim {
    InstanceIdentity,
    Configuration,
    Executables,
    FileSystem,
    Hardware,
    RuntimeOpaque,
    StorageOpaque,
    SourcedData,
}

impl TrustClaim {
    fn slot(self, v: &mut ear::TrustVector) -> &mut ear::TrustClaim {
        match self {
            TrustClaim::InstanceIdentity => &mut v.instance_identity,
            TrustClaim::Configuration => &mut v.configuration,
            TrustClaim::Executables => &mut v.executables,
            TrustClaim::FileSystem => &mut v.file_system,
            TrustClaim::Hardware => &mut v.hardware,
            TrustClaim::RuntimeOpaque => &mut v.runtime_opaque,
            TrustClaim::StorageOpaque => &mut v.storage_opaque,
            TrustClaim::SourcedData => &mut v.sourced_data,
        }
    }
}

/// AR4SI values used (draft-ietf-rats-ar4si): 2 is the affirming value of
/// every claim, 32 the warning tier, 96 contraindicated, 99 a cryptographic
/// verification failure.
pub mod value {
    pub const AFFIRMING: i8 = 2;
    pub const WARNING: i8 = 32;
    pub const CONTRAINDICATED: i8 = 96;
    pub const CRYPTO_FAILED: i8 = 99;
}

/// The value a check's outcome gives its trust claim (`None`: no claim).
pub fn value_of(check: &Check) -> Option<i8> {
    match check.result {
        Outcome::Passed => Some(value::AFFIRMING),
        Outcome::Warning => Some(value::WARNING),
        Outcome::Failed => Some(match check.category {
            Category::Signature | Category::Chain => value::CRYPTO_FAILED,
            _ => value::CONTRAINDICATED,
        }),
        Outcome::Skipped => None,
    }
}

fn tier_of(v: i8) -> TrustTier {
    if (-1..=1).contains(&v) {
        TrustTier::None
    } else if (-32..32).contains(&v) {
        TrustTier::Affirming
    } else if (-96..96).contains(&v) {
        TrustTier::Warning
    } else {
        TrustTier::Contraindicated
    }
}

/// One attested subject: its checks (each optionally feeding a trust claim),
/// trust claim values set directly, and its claims.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub name: String,
    pub checks: Vec<(Check, Option<TrustClaim>)>,
    pub direct: Vec<(TrustClaim, i8)>,
    pub claims: Map<String, Value>,
}

impl Subject {
    pub fn new(name: impl Into<String>) -> Self {
        Subject {
            name: name.into(),
            ..Default::default()
        }
    }

    pub fn push(&mut self, check: Check, claim: Option<TrustClaim>) {
        self.checks.push((check, claim));
    }

    pub fn claim(&mut self, key: &str, v: impl Into<Value>) {
        self.claims.insert(key.to_string(), v.into());
    }

    /// Set a trust claim regardless of checks (worst value wins).
    pub fn set(&mut self, claim: TrustClaim, v: i8) {
        self.direct.push((claim, v));
    }

    /// The subject's status: the worst of its trust vector and its checks
    /// (a failed check is contraindicated even if it feeds no claim).
    pub fn status(&self) -> TrustTier {
        let mut worst = TrustTier::None;
        for (c, _) in &self.checks {
            let t = match c.result {
                Outcome::Failed => TrustTier::Contraindicated,
                Outcome::Warning => TrustTier::Warning,
                Outcome::Passed => TrustTier::Affirming,
                Outcome::Skipped => TrustTier::None,
            };
            worst = worst.max(t);
        }
        for (_, v) in &self.direct {
            worst = worst.max(tier_of(*v));
        }
        worst
    }

    fn vector(&self) -> ear::TrustVector {
        let mut tv = ear::TrustVector::new();
        let mut put = |claim: TrustClaim, v: i8| {
            let slot = claim.slot(&mut tv);
            let replace = match slot.value {
                None => true,
                Some(old) => (tier_of(v), v) > (tier_of(old), old),
            };
            if replace {
                slot.set(v);
            }
        };
        for (c, claim) in &self.checks {
            if let (Some(claim), Some(v)) = (claim, value_of(c)) {
                put(*claim, v);
            }
        }
        for (claim, v) in &self.direct {
            put(*claim, *v);
        }
        tv
    }

    fn appraisal(&self) -> Appraisal {
        let mut a = Appraisal::new();
        a.trust_vector = self.vector();
        a.status = self.status();
        if a.status == TrustTier::None {
            // Nothing ran that says anything: not "no claim" but no evidence.
            a.status = TrustTier::Warning;
        }
        for (k, v) in &self.claims {
            a.attester_claims.insert(k.clone(), raw(v));
        }
        // Registration on a fresh Appraisal cannot collide.
        let _ = a
            .extensions
            .register("bulwark_checks", -70_100, RawValueKind::Array);
        let checks: Vec<Value> = self.checks.iter().map(|(c, _)| check_json(c)).collect();
        let _ = a
            .extensions
            .set_by_name("bulwark_checks", raw(&Value::Array(checks)));
        a
    }
}

fn check_json(c: &Check) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

/// serde_json → the `ear` crate's raw value (the shapes map one to one).
fn raw(v: &Value) -> RawValue {
    serde_json::from_value(v.clone()).unwrap_or_else(|_| RawValue::String(v.to_string()))
}

fn tier_name(t: TrustTier) -> &'static str {
    match t {
        TrustTier::None => "none",
        TrustTier::Affirming => "affirming",
        TrustTier::Warning => "warning",
        TrustTier::Contraindicated => "contraindicated",
    }
}

/// Build the EAR for these subjects.
pub fn build(kind: &str, at: VerificationTime, subjects: &[Subject]) -> Ear {
    let mut e = Ear::new();
    e.profile = EAT_PROFILE.to_string();
    // The EAR crate refuses iat 0; the epoch itself is not a real verification time.
    e.iat = at.unix_seconds().max(1);
    e.vid = VerifierID {
        developer: DEVELOPER.to_string(),
        build: BUILD.to_string(),
    };
    let mut worst = TrustTier::None;
    let mut all_checks = Vec::new();
    let mut all_claims = Map::new();
    for s in subjects {
        let a = s.appraisal();
        worst = worst.max(a.status);
        for (c, _) in &s.checks {
            let mut j = check_json(c);
            if subjects.len() > 1 {
                if let Value::Object(o) = &mut j {
                    o.insert("subject".into(), s.name.clone().into());
                }
            }
            all_checks.push(j);
        }
        if subjects.len() > 1 {
            all_claims.insert(s.name.clone(), Value::Object(s.claims.clone()));
        } else {
            all_claims.extend(s.claims.clone());
        }
        e.submods.insert(s.name.clone(), a);
    }
    if subjects.is_empty() {
        e.submods.insert(kind.to_string(), Appraisal::new());
    }
    e.status = Some(worst);
    let ext = [
        ("kind", -70_001, RawValueKind::String, Value::from(kind)),
        (
            "verified_at",
            -70_002,
            RawValueKind::String,
            Value::from(at.to_rfc3339()),
        ),
        (
            "status",
            -70_003,
            RawValueKind::String,
            tier_name(worst).into(),
        ),
        (
            "checks",
            -70_004,
            RawValueKind::Array,
            Value::Array(all_checks),
        ),
        (
            "claims",
            -70_005,
            RawValueKind::Map,
            Value::Object(all_claims),
        ),
    ];
    for (name, key, k, v) in ext {
        let _ = e.extensions.register(name, key, k);
        let _ = e.extensions.set_by_name(name, raw(&v));
    }
    e
}

/// The EAR as JSON (JWT claims-set form).
pub fn ear_json(e: &Ear) -> Value {
    serde_json::to_value(e).unwrap_or_else(|err| serde_json::json!({ "error": err.to_string() }))
}

/// Which trust claim a vendor verifier's check feeds, by category and name.
pub fn vendor_trust_claim(c: &Check) -> TrustClaim {
    match c.category {
        Category::Format | Category::Chain | Category::Validity | Category::Signature => {
            TrustClaim::InstanceIdentity
        }
        Category::Binding | Category::Revocation => TrustClaim::InstanceIdentity,
        Category::Tcb => TrustClaim::Hardware,
        Category::Policy => match c.name {
            "policy-debug" | "policy-min-tcb" | "expect-vmpl" | "expect-host-data"
            | "expect-mrconfigid" => TrustClaim::Configuration,
            "expect-report-data" | "expect-nonce" | "expect-user-data" | "expect-public-key" => {
                TrustClaim::SourcedData
            }
            _ => TrustClaim::Executables,
        },
    }
}

/// A vendor verification as one subject named after its kind.
pub fn vendor_subject(v: &Verification) -> Subject {
    let mut s = Subject::new(v.kind.as_str());
    for c in &v.checks {
        s.push(c.clone(), Some(vendor_trust_claim(c)));
    }
    // Authentic evidence from a vendor root is genuine hardware.
    let chain_ok = v
        .checks
        .iter()
        .any(|c| c.category == Category::Chain && c.result == Outcome::Passed)
        && !v.failed_in(Category::Chain);
    if chain_ok {
        s.set(TrustClaim::Hardware, value::AFFIRMING);
    }
    s.claims = v.claims.clone();
    s
}

/// A vendor verification's EAR.
pub fn to_ear(v: &Verification) -> Ear {
    build(v.kind.as_str(), v.verified_at, &[vendor_subject(v)])
}

/// A vendor verification's EAR as JSON (`bulwark-verify <kind> --json`).
pub fn to_json(v: &Verification) -> Value {
    ear_json(&to_ear(v))
}

/// Signed EARs: the EAR as a JWT (JWS compact serialization, the claims set
/// above as its payload), signed with ES256 or ES384 by the verifier's key
/// through the `ear` crate's own signing API.
#[cfg(feature = "ear-jwt")]
pub mod signed {
    use crate::x509::{spki_public_key, PublicKey};
    use ear::{Algorithm, Ear};
    use serde_json::Value;

    /// Why a signed EAR could not be made or was refused.
    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub enum Error {
        /// A key that cannot be used (CLI exit status 2).
        #[error("invalid argument: {0}")]
        Argument(String),
        /// The token does not verify with the key, or is not a valid EAR
        /// (CLI exit status 1).
        #[error("signed EAR refused: {0}")]
        Refused(String),
    }

    /// Media type of a signed EAR in JWT form (draft-ietf-rats-ear).
    pub const MEDIA_TYPE: &str =
        "application/eat-jwt; eat_profile=\"tag:ietf.org,2026:rats/ear#04\"";

    fn pem_block(pem: &[u8], label: &str, what: &str) -> Result<Vec<u8>, Error> {
        for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let p = p.map_err(|e| Error::Argument(format!("{what}: PEM: {e}")))?;
            if p.label == label {
                return Ok(p.contents);
            }
        }
        Err(Error::Argument(format!(
            "{what}: no \"{label}\" PEM block (PKCS#8 / SubjectPublicKeyInfo expected)"
        )))
    }

    /// The signing algorithm for a PKCS#8 ECDSA private key: ES256 for
    /// P-256, ES384 for P-384; anything else is refused.
    fn private_key_alg(pkcs8: &[u8]) -> Result<Algorithm, Error> {
        use ring::signature::{
            EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
        };
        let rng = ring::rand::SystemRandom::new();
        if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng).is_ok() {
            Ok(Algorithm::ES256)
        } else if EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8, &rng).is_ok() {
            Ok(Algorithm::ES384)
        } else {
            Err(Error::Argument(
                "EAR key: not an ECDSA P-256 or P-384 PKCS#8 private key".into(),
            ))
        }
    }

    /// Sign `ear` with a PKCS#8 P-256 or P-384 private key (PEM): the JWT.
    pub fn sign_jwt(ear: &Ear, private_key_pem: &[u8]) -> Result<String, Error> {
        let der = pem_block(private_key_pem, "PRIVATE KEY", "EAR key")?;
        let alg = private_key_alg(&der)?;
        ear.sign_jwt_pem(alg, private_key_pem)
            .map_err(|e| Error::Argument(format!("EAR signing: {e}")))
    }

    /// A verified signed EAR: the typed EAR and its whole claims set.
    #[derive(Debug)]
    pub struct VerifiedEar {
        pub ear: Ear,
        /// The JWT's claims set as signed (every extension included).
        pub claims: Value,
        /// "ES256" or "ES384".
        pub algorithm: &'static str,
    }

    /// Check a signed EAR (JWT) with the verifier's public key
    /// (SubjectPublicKeyInfo PEM, P-256 or P-384). The algorithm follows the
    /// key, never the token's header: a token whose header names another
    /// algorithm is refused, as is any token whose signature does not verify
    /// or whose claims are not a valid EAR.
    pub fn verify_jwt(token: &str, public_key_pem: &[u8]) -> Result<VerifiedEar, Error> {
        use jsonwebtoken as jwt;
        let der = pem_block(public_key_pem, "PUBLIC KEY", "EAR public key")?;
        let (alg, name) = match spki_public_key(&der).map_err(|e| Error::Argument(e.to_string()))? {
            PublicKey::EcP256(_) => (jwt::Algorithm::ES256, "ES256"),
            PublicKey::EcP384(_) => (jwt::Algorithm::ES384, "ES384"),
            _ => {
                return Err(Error::Argument(
                    "EAR public key: not an ECDSA P-256 or P-384 key".into(),
                ))
            }
        };
        let key = jwt::DecodingKey::from_ec_pem(public_key_pem)
            .map_err(|e| Error::Argument(format!("EAR public key: {e}")))?;
        let token = token.trim();
        let ear = Ear::from_jwt(token, alg, &key).map_err(|e| Error::Refused(e.to_string()))?;
        ear.validate().map_err(|e| Error::Refused(e.to_string()))?;
        let mut validation = jwt::Validation::new(alg);
        validation.set_required_spec_claims::<&str>(&[]);
        let claims = jwt::decode::<Value>(token, &key, &validation)
            .map_err(|e| Error::Refused(e.to_string()))?
            .claims;
        Ok(VerifiedEar {
            ear,
            claims,
            algorithm: name,
        })
    }
}
