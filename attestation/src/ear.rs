//! JSON output shaped after the IETF RATS EAR (EAT Attestation Result,
//! draft-ietf-rats-ear): a top-level `status`, `checks` and `claims` for
//! direct use, and the EAR members (`eat_profile`, `iat`, `ear.verifier-id`,
//! `submods` with `ear.status`) so the object can later be signed as an EAR.

use crate::checks::Verification;
use serde_json::{json, Value};

pub const EAT_PROFILE: &str = "tag:github.com,2023:veraison/ear";

pub fn to_json(v: &Verification) -> Value {
    let status = serde_json::to_value(v.status()).unwrap_or(Value::Null);
    let checks = serde_json::to_value(&v.checks).unwrap_or(Value::Null);
    let claims = Value::Object(v.claims.clone());
    let mut submods = serde_json::Map::new();
    submods.insert(
        v.kind.as_str().to_string(),
        json!({
            "ear.status": status,
            "ear.bulwark.checks": checks,
            "ear.veraison.annotated-evidence": claims,
        }),
    );
    json!({
        "eat_profile": EAT_PROFILE,
        "iat": v.verified_at.unix_seconds(),
        "ear.verifier-id": {
            "developer": "Bulwark",
            "build": concat!("bulwark-verify ", env!("CARGO_PKG_VERSION")),
        },
        "kind": v.kind.as_str(),
        "verified_at": v.verified_at.to_rfc3339(),
        "status": status,
        "checks": checks,
        "claims": claims,
        "submods": submods,
    })
}
