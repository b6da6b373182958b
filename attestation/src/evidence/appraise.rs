//! Appraisal of one evidence document against a policy: the signature chain
//! (EK CA → EK → AK → quote → document, or the software key), freshness,
//! then every claim against the policy. Each check is filed under a subject
//! (`node`, `vm`, `gpuN`) and feeds one AR4SI trust claim; the result is an
//! EAR ([`crate::ear`]).

use super::document::{attestation_kind, EvidenceBody, Tee};
use super::policy::Policy;
use super::sign::{parse_document, verify_envelope};
use super::tpm_link;
use crate::cache::ChainCache;
use crate::checks::{Category, Check, Outcome};
use crate::ear::{self, Subject, TrustClaim};
use crate::roots::TrustStore;
use crate::time::VerificationTime;
use crate::{nvidia, sevsnp, tdx, Error};
use serde_json::Value;
use std::sync::Arc;

/// Clock skew tolerated for timestamps in the future, seconds.
pub const MAX_FUTURE_SKEW: u64 = 60;

/// What the relying party brings besides the policy.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The challenge it sent (`--nonce`); `None`: freshness by age only (warning).
    pub nonce: Option<Vec<u8>>,
    pub at: VerificationTime,
}

/// The outcome: one subject per submodule.
#[derive(Debug, Clone)]
pub struct EvidenceAppraisal {
    pub verified_at: VerificationTime,
    pub subjects: Vec<Subject>,
}

impl EvidenceAppraisal {
    pub fn checks(&self) -> impl Iterator<Item = (&str, &Check)> {
        self.subjects
            .iter()
            .flat_map(|s| s.checks.iter().map(move |(c, _)| (s.name.as_str(), c)))
    }

    pub fn failures(&self) -> impl Iterator<Item = (&str, &Check)> {
        self.checks().filter(|(_, c)| c.result == Outcome::Failed)
    }

    /// The first check with this name (any subject).
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks().find(|(_, c)| c.name == name).map(|(_, c)| c)
    }

    pub fn is_ok(&self) -> bool {
        self.failures().next().is_none()
    }

    /// 0 accepted (warnings allowed), 1 a check failed.
    pub fn exit_code(&self) -> i32 {
        if self.is_ok() {
            0
        } else {
            1
        }
    }

    pub fn to_ear(&self) -> ::ear::Ear {
        ear::build("bulwark", self.verified_at, &self.subjects)
    }

    pub fn to_json(&self) -> Value {
        ear::ear_json(&self.to_ear())
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (s, c) in self.checks() {
            let tag = match c.result {
                Outcome::Passed => "passed ",
                Outcome::Failed => "FAILED ",
                Outcome::Warning => "warning",
                Outcome::Skipped => "skipped",
            };
            out.push_str(&format!("{tag}  {s:<5} {:<24} {}\n", c.name, c.detail));
        }
        let warned = self.checks().any(|(_, c)| c.result == Outcome::Warning);
        let verdict = if !self.is_ok() {
            let names: Vec<String> = self
                .failures()
                .map(|(s, c)| format!("{s}/{}", c.name))
                .collect();
            format!("REJECTED: failed checks: {}", names.join(", "))
        } else if warned {
            "VERIFIED with warnings: evidence authentic and within policy".into()
        } else {
            "VERIFIED: evidence authentic and within policy".into()
        };
        out.push_str(&format!(
            "verdict: {verdict} (bulwark evidence, as of {})\n",
            self.verified_at.to_rfc3339()
        ));
        out
    }
}

/// Parse and appraise a document. Unparsable input is an error (exit 2);
/// everything else is a check. Every certificate chain is verified in full;
/// a verifier that sees the same nodes again keeps a [`ChainCache`] and calls
/// [`verify_document_with`].
pub fn verify_document(
    bytes: &[u8],
    policy: &Policy,
    opts: &VerifyOptions,
) -> Result<EvidenceAppraisal, Error> {
    verify_document_with(bytes, policy, opts, None)
}

/// [`verify_document`] with a cache of verified certificate paths (the EK
/// chain, and the EK CAs of the policy): a path verified before from the same
/// bytes is not verified again; its validity still is, as of this
/// verification. The result is the same with or without the cache.
pub fn verify_document_with(
    bytes: &[u8],
    policy: &Policy,
    opts: &VerifyOptions,
    cache: Option<&ChainCache>,
) -> Result<EvidenceAppraisal, Error> {
    let env = parse_document(bytes)?;
    let body = &env.body;
    let binding = body.binding_hash()?;
    let mut node = Subject::new("node");
    let mut vm = Subject::new("vm");

    // Signature chain.
    node.push(
        Check::from_result(
            "evidence-signature",
            Category::Signature,
            verify_envelope(&env),
        ),
        Some(TrustClaim::InstanceIdentity),
    );
    node_checks(&mut node, body, policy, cache, &binding);

    // Freshness.
    freshness(&mut node, body, policy, opts);

    // The VM.
    launch_checks(&mut vm, body, policy);
    isolation_checks(&mut vm, body, policy, opts);
    tee_checks(&mut vm, body, policy, opts)?;
    gpu_required(&mut vm, body, policy);

    let mut subjects = vec![node, vm];
    for (i, g) in body.gpus.iter().enumerate() {
        subjects.push(gpu_subject(i, g, body, policy, opts)?);
    }
    Ok(EvidenceAppraisal {
        verified_at: opts.at,
        subjects,
    })
}

fn node_checks(
    s: &mut Subject,
    body: &EvidenceBody,
    policy: &Policy,
    cache: Option<&ChainCache>,
    binding: &[u8; 32],
) {
    let n = &body.node;
    s.claim("attestation", n.attestation.as_str());
    s.claim("evidence_key", hex::encode(&n.evidence_key.0));
    s.claim("image_name", n.image.name.as_str());
    s.claim("image_version", n.image.version);
    s.claim(
        "image_manifest_sha384",
        hex::encode(&n.image.manifest_sha384.0),
    );
    s.claim(
        "image_signer_key_ids",
        hex_list(n.image.signer_key_ids.iter().map(|k| &k.0[..])),
    );
    s.claim("binding_hash", hex::encode(binding));
    match (n.attestation.as_str(), &n.tpm) {
        (attestation_kind::SOFTWARE_KEY, None) => {
            s.claim("key_protection", "software");
            let c = if policy.allow_software_key {
                Check::warning(
                    "key-protection",
                    Category::Policy,
                    "evidence key in software, no TPM: accepted by allow_software_key (tests only); \
                     nothing hardware-rooted vouches for this evidence",
                )
            } else {
                Check::failed(
                    "key-protection",
                    Category::Policy,
                    "evidence key in software, no TPM: nothing vouches for this evidence \
                     (policy allow_software_key is for tests only)",
                )
            };
            s.push(c, Some(TrustClaim::Hardware));
            for name in ["ek-chain", "node-identity", "node-pcrs"] {
                s.push(Check::skipped(name, Category::Chain, "no TPM"), None);
            }
        }
        (attestation_kind::TPM, Some(tpm)) => {
            s.claim("key_protection", "tpm");
            s.push(
                Check::passed(
                    "key-protection",
                    Category::Policy,
                    "evidence key bound by the TPM quote's extraData (binding hash)",
                ),
                Some(TrustClaim::Hardware),
            );
            s.claim("ak_name", hex::encode(&tpm.ak_activation.ak_name.0));
            s.claim("ak_enrolled_at", tpm.ak_activation.enrolled_at);
            ek_checks(s, tpm, policy, cache);
            for c in tpm_link::verify_tpm_quote(tpm, binding) {
                let claim = if c.category == Category::Signature {
                    TrustClaim::InstanceIdentity
                } else {
                    TrustClaim::Executables
                };
                s.push(c, Some(claim));
            }
            s.push(pcr_policy(tpm, policy), Some(TrustClaim::Configuration));
            node_boot_checks(s, tpm, policy, &n.image.manifest_sha384.0);
        }
        (a, t) => {
            s.claim("key_protection", "unknown");
            s.push(
                Check::failed(
                    "key-protection",
                    Category::Format,
                    format!(
                        "node.attestation {a:?} with{} TPM evidence",
                        if t.is_some() { "" } else { "out" }
                    ),
                ),
                Some(TrustClaim::Hardware),
            );
        }
    }
    s.push(node_image(body, policy), Some(TrustClaim::Executables));
}

fn ek_checks(
    s: &mut Subject,
    tpm: &super::document::Tpm,
    policy: &Policy,
    cache: Option<&ChainCache>,
) {
    // The EK CAs (reported after the EK certificate's own format checks).
    let mut anchors = Vec::new();
    let mut anchor_errors = Vec::new();
    for p in &policy.node.ek_roots {
        let store = std::fs::read(policy.resolve(p))
            .map_err(|e| e.to_string())
            .and_then(|b| {
                match cache {
                    Some(c) => c.trust_store(&b),
                    None => TrustStore::from_pem(&b).map(Arc::new),
                }
                .map_err(|e| e.to_string())
            });
        match store {
            Ok(t) => anchors.extend(t.anchors.iter().cloned()),
            Err(e) => anchor_errors.push(Check::failed(
                "ek-chain",
                Category::Chain,
                format!("policy node.ek_roots {}: {e}", p.display()),
            )),
        }
    }
    // A path verified before from these exact bytes (EK certificate, chain,
    // anchors) comes from the cache; its validity is checked below all the
    // same, as of this verification's enrollment time.
    let key = match cache {
        Some(_) if !anchors.is_empty() => {
            let pool: Vec<&[u8]> = tpm.ek_chain.iter().map(|c| &c.0[..]).collect();
            Some(crate::cache::path_key(
                &tpm.ek_certificate.0,
                &pool,
                &anchors,
            ))
        }
        _ => None,
    };
    let cached = match (cache, &key) {
        (Some(c), Some(k)) => c.get_path(k),
        _ => None,
    };
    let (leaf, issuers) = match &cached {
        Some(path) => (path.certs[0].clone(), Vec::new()),
        None => {
            let leaf = match crate::x509::Certificate::from_der(&tpm.ek_certificate.0) {
                Ok(c) => c,
                Err(e) => {
                    s.push(
                        Check::failed("ek-chain", Category::Format, format!("EK certificate: {e}")),
                        Some(TrustClaim::InstanceIdentity),
                    );
                    return;
                }
            };
            s.claim("ek_subject", leaf.subject.clone());
            s.claim("ek_issuer", leaf.issuer.clone());
            let mut issuers = Vec::new();
            for (i, der) in tpm.ek_chain.iter().enumerate() {
                match crate::x509::Certificate::from_der(&der.0) {
                    Ok(c) => issuers.push(c),
                    Err(e) => {
                        s.push(
                            Check::failed(
                                "ek-chain",
                                Category::Format,
                                format!("EK chain certificate {i}: {e}"),
                            ),
                            Some(TrustClaim::InstanceIdentity),
                        );
                        return;
                    }
                }
            }
            (leaf, issuers)
        }
    };
    s.claim("ek_subject", leaf.subject.clone());
    s.claim("ek_issuer", leaf.issuer.clone());
    for c in anchor_errors {
        s.push(c, Some(TrustClaim::InstanceIdentity));
    }
    if anchors.is_empty() {
        s.push(
            Check::failed(
                "ek-chain",
                Category::Chain,
                "no EK CA in the policy (node.ek_roots)",
            ),
            Some(TrustClaim::InstanceIdentity),
        );
    } else {
        let path = match cached {
            Some(p) => Ok(p),
            None => {
                let built = crate::x509::build_path(&leaf, &issuers, &anchors).map(Arc::new);
                // Only a verified path is kept.
                if let (Some(c), Some(k), Ok(p)) = (cache, key, &built) {
                    c.insert_path(k, p.clone());
                }
                built
            }
        };
        // EK certificates are checked as of enrollment (many never expire,
        // some carry no meaningful validity at all).
        let at = VerificationTime::from_unix_seconds(
            i64::try_from(tpm.ak_activation.enrolled_at).unwrap_or(i64::MAX),
        );
        let (chain, certs) = match &path {
            Ok(p) => (
                Check::passed("ek-chain", Category::Chain, p.describe()),
                &p.certs[..],
            ),
            Err(e) => (
                Check::failed("ek-chain", Category::Chain, e.clone()),
                std::slice::from_ref(&leaf),
            ),
        };
        s.push(chain, Some(TrustClaim::InstanceIdentity));
        s.push(
            crate::x509::validity_check("ek-validity", certs, at),
            Some(TrustClaim::InstanceIdentity),
        );
    }
    let pins = &policy.node.pinned_identities;
    let c = if pins.is_empty() {
        Check::skipped("node-identity", Category::Policy, "no pinned node identity")
    } else {
        let (subj, iss) = (&leaf.subject, &leaf.issuer);
        match pins
            .iter()
            .find(|p| subj.contains(p.as_str()) || iss.contains(p.as_str()))
        {
            Some(p) => Check::passed(
                "node-identity",
                Category::Policy,
                format!("EK matches {p:?}"),
            ),
            None => Check::failed(
                "node-identity",
                Category::Policy,
                format!("EK subject {subj:?} / issuer {iss:?} matches no pinned identity"),
            ),
        }
    };
    s.push(c, Some(TrustClaim::InstanceIdentity));
}

fn pcr_policy(tpm: &super::document::Tpm, policy: &Policy) -> Check {
    const NAME: &str = "node-pcrs";
    if policy.node.pcrs.is_empty() {
        return Check::skipped(NAME, Category::Policy, "no expected PCR values");
    }
    let Some(q) = &tpm.quote else {
        return Check::failed(NAME, Category::Policy, "no quote");
    };
    let mut bad = Vec::new();
    for (i, want) in &policy.node.pcrs {
        let idx: u32 = i.parse().unwrap_or(u32::MAX);
        let got = q
            .pcrs
            .iter()
            .find(|p| p.index == idx)
            .map(|p| hex::encode(&p.sha256.0));
        if got.as_deref() != Some(want.to_ascii_lowercase().as_str()) {
            bad.push(format!("PCR{i}"));
        }
    }
    if bad.is_empty() {
        Check::passed(
            NAME,
            Category::Policy,
            format!("{} PCRs as expected", policy.node.pcrs.len()),
        )
    } else {
        Check::failed(
            NAME,
            Category::Policy,
            format!("unexpected {}", bad.join(", ")),
        )
    }
}

fn image_check(
    name: &'static str,
    what: &str,
    img: &super::document::ImageId,
    signers: &[String],
    names: &[String],
    min_version: u64,
) -> Check {
    if signers.is_empty() {
        return Check::failed(
            name,
            Category::Policy,
            format!("the policy trusts no {what} signer"),
        );
    }
    let stated: Vec<String> = img
        .signer_key_ids
        .iter()
        .map(|k| hex::encode(&k.0))
        .collect();
    if stated.is_empty() {
        return Check::failed(name, Category::Policy, format!("{what} signers not stated"));
    }
    let trusted = stated
        .iter()
        .find(|k| signers.iter().any(|s| s.eq_ignore_ascii_case(k)));
    let Some(trusted) = trusted else {
        return Check::failed(
            name,
            Category::Policy,
            format!(
                "{what} {:?} signed by {} (not trusted)",
                img.name,
                stated.join(", ")
            ),
        );
    };
    if !names.is_empty() && !names.contains(&img.name) {
        return Check::failed(
            name,
            Category::Policy,
            format!("{what} {:?} is not an allowed name", img.name),
        );
    }
    if img.version < min_version {
        return Check::failed(
            name,
            Category::Policy,
            format!("{what} version {} < minimum {min_version}", img.version),
        );
    }
    Check::passed(
        name,
        Category::Policy,
        format!(
            "{what} {:?} v{} (manifest {}) signed by {}",
            img.name,
            img.version,
            hex::encode(&img.manifest_sha384.0),
            &trusted[..16.min(trusted.len())]
        ),
    )
}

fn node_image(body: &EvidenceBody, policy: &Policy) -> Check {
    image_check(
        "node-image",
        "node image",
        &body.node.image,
        &policy.node.image_signers,
        &policy.node.image_names,
        policy.node.min_image_version,
    )
}

fn freshness(s: &mut Subject, body: &EvidenceBody, policy: &Policy, opts: &VerifyOptions) {
    let f = &body.freshness;
    s.claim("nonce", hex::encode(&f.nonce.0));
    s.claim("timestamp", f.timestamp);
    if let Some(t) = &f.tls_key_sha256 {
        s.claim("tls_key_sha256", hex::encode(&t.0));
    }
    let c = match &opts.nonce {
        None => Check::warning(
            "freshness-nonce",
            Category::Policy,
            "no --nonce given: freshness rests on the timestamp alone",
        ),
        Some(n) if n[..] == f.nonce.0[..] => {
            Check::passed("freshness-nonce", Category::Policy, hex::encode(n))
        }
        Some(n) => Check::failed(
            "freshness-nonce",
            Category::Policy,
            format!(
                "expected {}, found {}",
                hex::encode(n),
                hex::encode(&f.nonce.0)
            ),
        ),
    };
    s.push(c, Some(TrustClaim::InstanceIdentity));
    let now = opts.at.unix_seconds();
    let ts = i64::try_from(f.timestamp).unwrap_or(i64::MAX);
    let c = if ts > now.saturating_add(MAX_FUTURE_SKEW as i64) {
        Check::failed(
            "freshness-age",
            Category::Validity,
            format!(
                "timestamp {} is in the future",
                crate::time::format_unix_seconds(ts)
            ),
        )
    } else {
        let age = now.saturating_sub(ts).max(0) as u64;
        if age > policy.max_age_seconds {
            Check::failed(
                "freshness-age",
                Category::Validity,
                format!(
                    "evidence is {age} s old (maximum {} s)",
                    policy.max_age_seconds
                ),
            )
        } else {
            Check::passed("freshness-age", Category::Validity, format!("{age} s old"))
        }
    };
    s.push(c, Some(TrustClaim::InstanceIdentity));
    let c = if f.tls_key_sha256.as_ref().is_some_and(|t| t.len() == 32) {
        Check::passed(
            "tls-key-binding",
            Category::Binding,
            "guest TLS key hash present (compare it with the TLS session's key)",
        )
    } else if f.tls_key_sha256.is_some() {
        Check::failed(
            "tls-key-binding",
            Category::Format,
            "TLS key hash is not 32 bytes",
        )
    } else {
        Check::skipped(
            "tls-key-binding",
            Category::Binding,
            "no guest TLS key in the evidence",
        )
    };
    s.push(c, Some(TrustClaim::SourcedData));
}

/// The booted node image and firmware (`node_boot`), when the policy names
/// node images or firmware models.
fn node_boot_checks(s: &mut Subject, tpm: &super::document::Tpm, policy: &Policy, stated: &[u8]) {
    use super::node_boot;
    if policy.node.boot_images.is_empty() && policy.node.firmware.is_empty() {
        for name in [node_boot::NODE_BOOT, node_boot::NODE_FIRMWARE] {
            s.push(
                Check::skipped(
                    name,
                    Category::Policy,
                    "the policy names no node images or firmware models",
                ),
                None,
            );
        }
        return;
    }
    let Some(q) = &tpm.quote else {
        s.push(
            Check::failed(node_boot::NODE_BOOT, Category::Policy, "no quote"),
            Some(TrustClaim::Executables),
        );
        return;
    };
    let quoted = q
        .pcrs
        .iter()
        .filter_map(|p| Some((p.index, <[u8; 32]>::try_from(&p.sha256.0[..]).ok()?)))
        .collect();
    let (references, errors) = node_boot::references_from_policy(policy);
    for e in errors {
        s.push(
            Check::failed(node_boot::NODE_BOOT, Category::Policy, e),
            Some(TrustClaim::Executables),
        );
    }
    // Validated when the policy was read.
    let models: Vec<_> = policy
        .node
        .firmware
        .iter()
        .filter_map(|f| f.to_model().ok())
        .collect();
    let a = node_boot::appraise(&quoted, &q.event_log.0, &references, &models, stated);
    if let Some(r) = a.booted {
        s.claim("booted_image_name", r.name.as_str());
        s.claim("booted_image_version", r.version);
    }
    if let Some(m) = a.firmware_model {
        s.claim("firmware_model", m);
    }
    for c in a.checks {
        let claim = if c.name == node_boot::NODE_FIRMWARE {
            TrustClaim::Hardware
        } else {
            TrustClaim::Executables
        };
        s.push(c, Some(claim));
    }
}

/// Measurements the policy accepts: the listed ones and those predicted.
fn allowed_measurements(policy: &Policy) -> (Vec<String>, Vec<String>) {
    let mut ok: Vec<String> = policy
        .vm
        .measurements
        .iter()
        .map(|m| m.to_ascii_lowercase())
        .collect();
    let mut errors = Vec::new();
    for p in &policy.vm.predict_from {
        let trust: Vec<_> = p.trust.iter().map(|t| policy.resolve(t)).collect();
        let vm = p.vm.as_ref().map(|v| policy.resolve(v));
        match super::predict::predict(&policy.resolve(&p.image), &trust, vm.as_deref()) {
            Ok(pr) => ok.push(pr.measurement),
            Err(e) => errors.push(format!("predict_from {}: {e}", p.image.display())),
        }
    }
    (ok, errors)
}

fn launch_checks(s: &mut Subject, body: &EvidenceBody, policy: &Policy) {
    let l = &body.launch;
    let m = hex::encode(&l.measurement.0);
    s.claim("launch_measurement", m.as_str());
    s.claim("vcpus", l.vcpus);
    s.claim("memory_bytes", l.memory_bytes);
    s.claim("cpuid_policy", l.cpuid_policy.as_str());
    s.claim("boot_mode", l.boot_mode.as_str());
    if !l.unknown.is_empty() {
        s.claim("launch_unknown", l.unknown.clone());
    }
    if let Some(img) = &l.image {
        s.claim("image_name", img.name.as_str());
        s.claim("image_version", img.version);
        s.claim("image_manifest_sha384", hex::encode(&img.manifest_sha384.0));
        s.claim(
            "image_signer_key_ids",
            hex_list(img.signer_key_ids.iter().map(|k| &k.0[..])),
        );
    }
    let (allowed, errors) = allowed_measurements(policy);
    let c = if allowed.contains(&m) {
        Check::passed("launch-measurement", Category::Policy, m)
    } else if allowed.is_empty() {
        Check::failed(
            "launch-measurement",
            Category::Policy,
            format!(
                "the policy allows no launch measurement{}",
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                }
            ),
        )
    } else {
        Check::failed(
            "launch-measurement",
            Category::Policy,
            format!("{m} is not among the {} allowed", allowed.len()),
        )
    };
    s.push(c, Some(TrustClaim::Executables));

    let c = match &l.image {
        Some(img) => image_check(
            "launch-image",
            "tenant image",
            img,
            &policy.vm.image_signers,
            &policy.vm.image_names,
            policy.vm.min_image_version,
        ),
        None if policy.debug_forbidden => Check::failed(
            "launch-image",
            Category::Policy,
            "the VM booted unsigned files (debug boots are forbidden)",
        ),
        None => Check::warning(
            "launch-image",
            Category::Policy,
            "the VM booted unsigned files",
        ),
    };
    s.push(c, Some(TrustClaim::FileSystem));

    let mut bad = Vec::new();
    let mut checked = 0;
    if let Some(v) = policy.vm.vcpus {
        checked += 1;
        if v != l.vcpus {
            bad.push(format!("vcpus {} (expected {v})", l.vcpus));
        }
    }
    if let Some(v) = policy.vm.memory_bytes {
        checked += 1;
        if v != l.memory_bytes {
            bad.push(format!("memory {} (expected {v})", l.memory_bytes));
        }
    }
    if let Some(v) = &policy.vm.cpuid_policy {
        checked += 1;
        if *v != l.cpuid_policy {
            bad.push(format!(
                "CPUID policy {:?} (expected {v:?})",
                l.cpuid_policy
            ));
        }
    }
    let c = if !bad.is_empty() {
        Check::failed("launch-config", Category::Policy, bad.join(", "))
    } else if !l.unknown.is_empty() {
        Check::warning(
            "launch-config",
            Category::Policy,
            format!("not stated: {}", l.unknown.join(", ")),
        )
    } else if checked == 0 {
        Check::skipped(
            "launch-config",
            Category::Policy,
            "no machine shape in the policy",
        )
    } else {
        Check::passed(
            "launch-config",
            Category::Policy,
            format!(
                "{} vCPUs, {} bytes, {}",
                l.vcpus, l.memory_bytes, l.cpuid_policy
            ),
        )
    };
    s.push(c, Some(TrustClaim::Configuration));
}

fn isolation_checks(s: &mut Subject, body: &EvidenceBody, policy: &Policy, opts: &VerifyOptions) {
    let iso = &body.isolation;
    s.claim("isolation_source", iso.source.as_str());
    s.claim(
        "devices",
        Value::Array(
            iso.devices
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "host_bdf": d.host_bdf, "id": d.id, "serial": d.serial,
                        "iommu_group": d.iommu_group, "group_exclusive": d.group_exclusive,
                        "sanitized": d.sanitized.as_ref().map(|z| serde_json::json!({
                            "method": z.method, "result": z.result, "at": z.at })),
                    })
                })
                .collect(),
        ),
    );
    if !iso.unknown.is_empty() {
        s.claim("isolation_unknown", iso.unknown.clone());
    }
    let c = match iso.single_tenant {
        Some(true) => Check::passed(
            "isolation-tenancy",
            Category::Policy,
            "one tenant on the node",
        ),
        Some(false) => Check::failed(
            "isolation-tenancy",
            Category::Policy,
            "the node hosts other tenants",
        ),
        None if policy.isolation.require_single_tenant => Check::warning(
            "isolation-tenancy",
            Category::Policy,
            format!("single tenancy not yet known (source {})", iso.source),
        ),
        None => Check::skipped("isolation-tenancy", Category::Policy, "not required"),
    };
    s.push(c, Some(TrustClaim::Configuration));

    let mut failed = Vec::new();
    let mut unknown = Vec::new();
    for d in &iso.devices {
        match d.group_exclusive {
            Some(true) => {}
            Some(false) => failed.push(format!("{}: IOMMU group shared", d.host_bdf)),
            None => unknown.push(d.host_bdf.clone()),
        }
    }
    for g in &body.gpus {
        if !iso.devices.iter().any(|d| d.host_bdf == g.host_bdf) {
            failed.push(format!("GPU {} is not among the devices", g.host_bdf));
        }
    }
    let c = if iso.devices.is_empty() && failed.is_empty() {
        Check::skipped(
            "isolation-devices",
            Category::Policy,
            "no device passed through",
        )
    } else if !failed.is_empty() {
        Check::failed("isolation-devices", Category::Policy, failed.join("; "))
    } else if !unknown.is_empty() && policy.isolation.require_exclusive_groups {
        Check::warning(
            "isolation-devices",
            Category::Policy,
            format!(
                "IOMMU group exclusivity not yet known for {}",
                unknown.join(", ")
            ),
        )
    } else {
        Check::passed(
            "isolation-devices",
            Category::Policy,
            format!("{} devices, groups exclusive", iso.devices.len()),
        )
    };
    s.push(c, Some(TrustClaim::Configuration));

    let c = match policy.isolation.max_since_sanitize_seconds {
        _ if iso.devices.is_empty() => Check::skipped(
            "isolation-sanitized",
            Category::Policy,
            "no device passed through",
        ),
        None => Check::skipped(
            "isolation-sanitized",
            Category::Policy,
            "no limit in the policy",
        ),
        Some(max) => {
            let now = opts.at.unix_seconds();
            let mut bad = Vec::new();
            for d in &iso.devices {
                match &d.sanitized {
                    None => bad.push(format!("{}: not known", d.host_bdf)),
                    Some(z) if z.result != "scrubbed" => {
                        bad.push(format!("{}: scrub result {:?}", d.host_bdf, z.result))
                    }
                    Some(z) => {
                        let age = now.saturating_sub(i64::try_from(z.at).unwrap_or(i64::MAX));
                        if age < 0 || age as u64 > max {
                            bad.push(format!(
                                "{}: sanitized {age} s ago (maximum {max})",
                                d.host_bdf
                            ));
                        }
                    }
                }
            }
            if bad.is_empty() {
                Check::passed(
                    "isolation-sanitized",
                    Category::Policy,
                    "every device sanitized in time",
                )
            } else {
                Check::failed("isolation-sanitized", Category::Policy, bad.join("; "))
            }
        }
    };
    s.push(c, Some(TrustClaim::Configuration));
}

fn tee_checks(
    s: &mut Subject,
    body: &EvidenceBody,
    policy: &Policy,
    opts: &VerifyOptions,
) -> Result<(), Error> {
    let require = policy.tee.require.as_deref().unwrap_or("none");
    let present = body.tee.as_ref().map(|t| t.kind.as_str());
    s.claim("tee", present.unwrap_or("none"));
    let c = match (require, present) {
        ("none", _) => Check::skipped("tee-required", Category::Policy, "no TEE required"),
        ("any", Some(_)) => Check::passed("tee-required", Category::Policy, "TEE evidence present"),
        (r, Some(p)) if r == p => Check::passed("tee-required", Category::Policy, p.to_string()),
        (r, p) => Check::failed(
            "tee-required",
            Category::Policy,
            format!(
                "policy requires {r}, evidence has {}",
                p.unwrap_or("no TEE")
            ),
        ),
    };
    s.push(c, Some(TrustClaim::RuntimeOpaque));
    let Some(tee) = &body.tee else {
        // Without a TEE, memory is isolated by the attested node OS alone.
        if body.node.attestation == attestation_kind::TPM {
            s.set(TrustClaim::RuntimeOpaque, ear::value::WARNING);
        }
        return Ok(());
    };
    let checks = match vendor_tee(tee, body, policy, opts) {
        Ok(v) => v,
        Err(e) => vec![Check::failed("tee-evidence", Category::Format, e)],
    };
    let ok = checks.iter().all(|c| c.result != Outcome::Failed);
    for c in checks {
        let claim = ear::vendor_trust_claim(&c);
        s.push(c, Some(claim));
    }
    s.set(
        TrustClaim::RuntimeOpaque,
        if ok {
            ear::value::AFFIRMING
        } else {
            ear::value::CONTRAINDICATED
        },
    );
    Ok(())
}

fn vendor_tee(
    tee: &Tee,
    body: &EvidenceBody,
    policy: &Policy,
    opts: &VerifyOptions,
) -> Result<Vec<Check>, String> {
    let report_data = body.tee_report_data().map_err(|e| e.to_string())?.to_vec();
    let measurement = policy
        .tee
        .measurement
        .as_deref()
        .map(hex::decode)
        .transpose()
        .map_err(|e| e.to_string())?;
    let v = match tee.kind.as_str() {
        "sev-snp" => {
            let trust = match &policy.tee.sev_snp_chain {
                Some(p) => std::fs::read(policy.resolve(p))
                    .map_err(|e| e.to_string())
                    .and_then(|b| TrustStore::from_pem(&b).map_err(|e| e.to_string()))?,
                None => sevsnp::default_trust(),
            };
            let pol = sevsnp::Policy {
                allow_debug: !policy.debug_forbidden,
                min_tcb: None,
                expect_report_data: Some(report_data),
                expect_measurement: measurement,
                expect_host_data: None,
                expect_vmpl: None,
            };
            let ev = sevsnp::Evidence::parse(&tee.report.0, &tee.certificate.0)
                .map_err(|e| e.to_string())?;
            sevsnp::verify(&ev, &trust, &pol, opts.at)
        }
        "tdx" => {
            let pol = tdx::Policy {
                allow_debug: !policy.debug_forbidden,
                allow_outdated_tcb: policy.tee.allow_outdated_tcb,
                expect_mrtd: measurement,
                expect_mrconfigid: None,
                expect_rtmrs: Vec::new(),
                expect_report_data: Some(report_data),
            };
            let collateral = (!tee.collateral.is_empty()).then_some(&tee.collateral.0[..]);
            tdx::verify_bytes(
                &tee.report.0,
                collateral,
                &tdx::default_trust(),
                &pol,
                opts.at,
            )
            .map_err(|e| e.to_string())?
        }
        k => return Err(format!("TEE kind {k:?} is not sev-snp or tdx")),
    };
    Ok(v.checks)
}

fn gpu_subject(
    i: usize,
    g: &super::document::Gpu,
    body: &EvidenceBody,
    policy: &Policy,
    opts: &VerifyOptions,
) -> Result<Subject, Error> {
    let mut s = Subject::new(format!("gpu{i}"));
    s.claim("host_bdf", g.host_bdf.as_str());
    let nonce = body.gpu_nonce();
    s.claim("expected_nonce", hex::encode(nonce));
    let mut trust = nvidia::default_trust();
    if let Some(p) = &policy.gpu.root {
        match std::fs::read(policy.resolve(p))
            .map_err(|e| e.to_string())
            .and_then(|b| TrustStore::from_pem(&b).map_err(|e| e.to_string()))
        {
            Ok(t) => trust.device = t,
            Err(e) => {
                s.push(
                    Check::failed(
                        "gpu-evidence",
                        Category::Chain,
                        format!("policy gpu.root: {e}"),
                    ),
                    Some(TrustClaim::Hardware),
                );
                return Ok(s);
            }
        }
    }
    let rims: Vec<&[u8]> = g.rims.iter().map(|r| &r.0[..]).collect();
    let pol = nvidia::Policy {
        expect_nonce: Some(nonce.to_vec()),
    };
    match nvidia::verify_bytes(&g.spdm.0, &g.cert_chain.0, &rims, &trust, &pol, opts.at) {
        Ok(v) => {
            for c in &v.checks {
                s.push(c.clone(), Some(ear::vendor_trust_claim(c)));
            }
            if !v.failed_in(Category::Chain) {
                s.set(TrustClaim::Hardware, ear::value::AFFIRMING);
            }
            s.claims.extend(v.claims);
        }
        Err(e) => s.push(
            Check::failed("gpu-evidence", Category::Format, e.to_string()),
            Some(TrustClaim::Hardware),
        ),
    }
    Ok(s)
}

fn hex_list<'a>(it: impl Iterator<Item = &'a [u8]>) -> Value {
    Value::Array(it.map(|b| Value::from(hex::encode(b))).collect())
}

/// With `gpu.require_cc`, every NVIDIA device passed through (vendor 10de)
/// must have GPU evidence.
fn gpu_required(s: &mut Subject, body: &EvidenceBody, policy: &Policy) {
    const NAME: &str = "gpu-cc-required";
    if !policy.gpu.require_cc {
        s.push(Check::skipped(NAME, Category::Policy, "not required"), None);
        return;
    }
    let missing: Vec<&str> = body
        .isolation
        .devices
        .iter()
        .filter(|d| d.id.to_ascii_lowercase().starts_with("10de:"))
        .filter(|d| !body.gpus.iter().any(|g| g.host_bdf == d.host_bdf))
        .map(|d| d.host_bdf.as_str())
        .collect();
    let c = if !missing.is_empty() {
        Check::failed(
            NAME,
            Category::Policy,
            format!("no GPU CC evidence for {}", missing.join(", ")),
        )
    } else if body.gpus.is_empty() {
        Check::failed(NAME, Category::Policy, "no GPU evidence")
    } else {
        Check::passed(
            NAME,
            Category::Policy,
            format!("{} GPUs with CC evidence", body.gpus.len()),
        )
    };
    s.push(c, Some(TrustClaim::Hardware));
}
