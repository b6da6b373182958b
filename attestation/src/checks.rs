//! The check/result model shared by every verifier.

use crate::time::VerificationTime;
use serde::Serialize;
use serde_json::{Map, Value};

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed,
    /// Not a failure, but the relying party should know (e.g. TCB not evaluated).
    Warning,
    /// Not run: no expectation was given, or it does not apply.
    Skipped,
}

/// What kind of property a check establishes; tests and callers match on it
/// ("a signature error", "a chain error") rather than on detail text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Structural field checks on parsed evidence.
    Format,
    /// Certificate path to a trust anchor.
    Chain,
    /// Time validity of certificates, CRLs and collateral.
    Validity,
    /// A cryptographic signature over the evidence.
    Signature,
    /// A value that ties two signed objects together (key hashes, hwid, TCB).
    Binding,
    /// Trusted computing base status from collateral.
    Tcb,
    /// Revocation lists.
    Revocation,
    /// The relying party's policy (debug, expected values, minimum TCB).
    Policy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub category: Category,
    pub result: Outcome,
    pub detail: String,
}

impl Check {
    pub fn new(
        name: &'static str,
        category: Category,
        result: Outcome,
        detail: impl Into<String>,
    ) -> Self {
        Check {
            name,
            category,
            result,
            detail: detail.into(),
        }
    }

    pub fn passed(name: &'static str, category: Category, detail: impl Into<String>) -> Self {
        Self::new(name, category, Outcome::Passed, detail)
    }

    pub fn failed(name: &'static str, category: Category, detail: impl Into<String>) -> Self {
        Self::new(name, category, Outcome::Failed, detail)
    }

    pub fn warning(name: &'static str, category: Category, detail: impl Into<String>) -> Self {
        Self::new(name, category, Outcome::Warning, detail)
    }

    pub fn skipped(name: &'static str, category: Category, detail: impl Into<String>) -> Self {
        Self::new(name, category, Outcome::Skipped, detail)
    }

    /// Passed with `ok` or failed with `err`, from a `Result`.
    pub fn from_result(
        name: &'static str,
        category: Category,
        result: Result<String, String>,
    ) -> Self {
        match result {
            Ok(d) => Self::passed(name, category, d),
            Err(d) => Self::failed(name, category, d),
        }
    }
}

/// Compare a value to an optional expectation given by the relying party.
pub fn expect_bytes(name: &'static str, expected: Option<&[u8]>, actual: &[u8]) -> Check {
    match expected {
        None => Check::skipped(name, Category::Policy, "no expectation given"),
        Some(e) if e == actual => Check::passed(name, Category::Policy, hex::encode(actual)),
        Some(e) => Check::failed(
            name,
            Category::Policy,
            format!("expected {}, found {}", hex::encode(e), hex::encode(actual)),
        ),
    }
}

/// The `policy-debug` check: a debuggable guest fails unless the relying
/// party allowed it (then it warns). `debug` is `Some(why)` for a debuggable
/// guest; `not_debug` describes the other case.
pub fn debug_policy(debug: Option<String>, allow_debug: bool, not_debug: &str) -> Check {
    const NAME: &str = "policy-debug";
    match debug {
        None => Check::passed(NAME, Category::Policy, not_debug),
        Some(why) if allow_debug => Check::warning(
            NAME,
            Category::Policy,
            format!("{why} (accepted by --allow-debug)"),
        ),
        Some(why) => Check::failed(NAME, Category::Policy, why),
    }
}

/// The kinds of evidence this crate verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvidenceKind {
    SevSnp,
    Tdx,
    Nitro,
    Nvidia,
}

impl EvidenceKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EvidenceKind::SevSnp => "sev-snp",
            EvidenceKind::Tdx => "tdx",
            EvidenceKind::Nitro => "nitro",
            EvidenceKind::Nvidia => "nvidia",
        }
    }
}

/// The overall appraisal, named as in the RATS EAR draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Affirming,
    Warning,
    Contraindicated,
}

/// The outcome of verifying one piece of evidence.
#[derive(Debug, Clone)]
pub struct Verification {
    pub kind: EvidenceKind,
    pub verified_at: VerificationTime,
    pub checks: Vec<Check>,
    /// Extracted claims (measurements, TCB, report data, PCRs...).
    pub claims: Map<String, Value>,
}

impl Verification {
    pub fn new(kind: EvidenceKind, verified_at: VerificationTime) -> Self {
        Verification {
            kind,
            verified_at,
            checks: Vec::new(),
            claims: Map::new(),
        }
    }

    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    pub fn claim(&mut self, key: &str, value: impl Into<Value>) {
        self.claims.insert(key.to_string(), value.into());
    }

    pub fn status(&self) -> Status {
        if self.checks.iter().any(|c| c.result == Outcome::Failed) {
            Status::Contraindicated
        } else if self.checks.iter().any(|c| c.result == Outcome::Warning) {
            Status::Warning
        } else {
            Status::Affirming
        }
    }

    /// True when the evidence is authentic and satisfies the policy.
    pub fn is_ok(&self) -> bool {
        self.status() != Status::Contraindicated
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.result == Outcome::Failed)
    }

    /// The check with this name, if it ran.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Whether some check of this category failed.
    pub fn failed_in(&self, category: Category) -> bool {
        self.failures().any(|c| c.category == category)
    }

    /// CLI exit status: 0 authentic and within policy, 1 a check failed.
    pub fn exit_code(&self) -> i32 {
        if self.is_ok() {
            0
        } else {
            1
        }
    }

    /// Human-readable report: one line per check and a verdict line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let tag = match c.result {
                Outcome::Passed => "passed ",
                Outcome::Failed => "FAILED ",
                Outcome::Warning => "warning",
                Outcome::Skipped => "skipped",
            };
            out.push_str(&format!("{tag}  {:<28} {}\n", c.name, c.detail));
        }
        let verdict = match self.status() {
            Status::Affirming => "VERIFIED: evidence authentic and within policy".to_string(),
            Status::Warning => {
                "VERIFIED with warnings: evidence authentic and within policy".into()
            }
            Status::Contraindicated => {
                let names: Vec<&str> = self.failures().map(|c| c.name).collect();
                format!("REJECTED: failed checks: {}", names.join(", "))
            }
        };
        out.push_str(&format!(
            "verdict: {} ({} evidence, as of {})\n",
            verdict,
            self.kind.as_str(),
            self.verified_at.to_rfc3339()
        ));
        out
    }
}
