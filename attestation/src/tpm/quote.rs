//! Verification of a TPM2_Quote: the AK public area, the signature over the
//! TPMS_ATTEST bytes, the qualifying data, the PCR selection and digest, and
//! (with an event log) the replay of the log to the quoted PCR values.

use super::eventlog::{digest_covers_data, event_type_name, EventLog};
use super::structures::{
    alg_name, attr, Attest, TpmPublic, TpmSignature, TPM_ALG_SHA256, TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
};
use crate::checks::{Category, Check, Outcome};
use crate::Error;
use ring::digest;
use serde::Serialize;

pub const CHECK_AK_PUBLIC: &str = "tpm-ak-public";
pub const CHECK_MAGIC_TYPE: &str = "tpm-quote-magic-type";
pub const CHECK_SIGNATURE: &str = "tpm-quote-signature";
pub const CHECK_EXTRA_DATA: &str = "tpm-quote-extra-data";
pub const CHECK_PCR_SELECTION: &str = "tpm-pcr-selection";
pub const CHECK_PCR_DIGEST: &str = "tpm-pcr-digest";
pub const CHECK_EVENT_LOG: &str = "tpm-event-log";
pub const CHECK_EVENT_DIGESTS: &str = "tpm-event-log-digests";
pub const CHECK_EVENT_REPLAY: &str = "tpm-event-log-replay";

/// The attributes an attestation key must have: a restricted signing key
/// (it signs only TPM-generated structures), not a decryption key, generated
/// inside the TPM and bound to it (fixedTPM, fixedParent).
pub const AK_REQUIRED_ATTRIBUTES: u32 = attr::RESTRICTED
    | attr::SIGN_ENCRYPT
    | attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN;

/// One event of the log, as replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayedEvent {
    /// Position in the log (1 is the first event after the Spec ID header).
    pub index: usize,
    pub pcr: u32,
    pub event_type: u32,
    pub event_type_name: String,
    /// SHA-256 digest extended (hex); empty for EV_NO_ACTION.
    pub sha256: String,
    pub description: String,
    /// Whether the event's PCR is among the quoted PCRs (and so attested
    /// when the replay check passed).
    pub quoted: bool,
}

/// The outcome of [`verify_quote`]: the checks, and what was parsed and
/// replayed for the result.
#[derive(Debug, Clone)]
pub struct QuoteVerification {
    pub checks: Vec<Check>,
    pub ak: Option<TpmPublic>,
    pub attest: Option<Attest>,
    /// The quoted PCRs (SHA-256 bank) in selection order, as given.
    pub pcrs: Vec<(u32, Vec<u8>)>,
    /// The SHA-256 replay of the event log, PCR 0..23 (with a log).
    pub replayed: Option<Vec<[u8; 32]>>,
    pub events: Vec<ReplayedEvent>,
}

impl QuoteVerification {
    /// No check failed.
    pub fn is_ok(&self) -> bool {
        !self.checks.iter().any(|c| c.result == Outcome::Failed)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.result == Outcome::Failed)
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// Verify a quote.
///
/// `ak_public` is a TPM2B_PUBLIC, `attest` the TPMS_ATTEST bytes the TPM
/// signed, `signature` a TPMT_SIGNATURE, `expected_extra_data` the
/// qualifying data the verifier asked for, `pcrs` the SHA-256 PCR values the
/// quote is claimed to cover (index, 32-byte value), and `event_log` an
/// optional crypto-agile TCG event log that must replay to those values.
///
/// Inputs that do not parse become failed checks (category `format`), so
/// every other check still runs.
pub fn verify_quote(
    ak_public: &[u8],
    attest: &[u8],
    signature: &[u8],
    expected_extra_data: &[u8],
    pcrs: &[(u32, Vec<u8>)],
    event_log: Option<&[u8]>,
) -> QuoteVerification {
    let mut checks = Vec::new();

    // The AK.
    let ak = TpmPublic::from_tpm2b(ak_public);
    checks.push(match &ak {
        Ok(k) => check_ak(k),
        Err(e) => Check::failed(CHECK_AK_PUBLIC, Category::Format, e.to_string()),
    });
    let ak = ak.ok();

    // The signature over the exact attest bytes.
    checks.push(check_signature(ak.as_ref(), attest, signature));

    // The attest structure.
    let parsed = Attest::parse(attest);
    checks.push(match &parsed {
        Ok(a) if a.magic != TPM_GENERATED_VALUE => Check::failed(
            CHECK_MAGIC_TYPE,
            Category::Format,
            format!(
                "magic {:#010x} is not TPM_GENERATED_VALUE {TPM_GENERATED_VALUE:#010x}",
                a.magic
            ),
        ),
        Ok(a) if a.attest_type != TPM_ST_ATTEST_QUOTE => Check::failed(
            CHECK_MAGIC_TYPE,
            Category::Format,
            format!("type {:#06x} is not TPM_ST_ATTEST_QUOTE", a.attest_type),
        ),
        Ok(_) => Check::passed(
            CHECK_MAGIC_TYPE,
            Category::Format,
            "TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE",
        ),
        Err(e) => Check::failed(CHECK_MAGIC_TYPE, Category::Format, e.to_string()),
    });
    let parsed = parsed.ok();

    checks.push(match &parsed {
        Some(a) if a.extra_data == expected_extra_data => Check::passed(
            CHECK_EXTRA_DATA,
            Category::Binding,
            hex::encode(&a.extra_data),
        ),
        Some(a) => Check::failed(
            CHECK_EXTRA_DATA,
            Category::Binding,
            format!(
                "extraData {} is not the expected {}",
                hex::encode(&a.extra_data),
                hex::encode(expected_extra_data)
            ),
        ),
        None => Check::failed(CHECK_EXTRA_DATA, Category::Binding, "quote does not parse"),
    });

    // PCR selection and digest. The values are hashed in selection order,
    // which is ascending PCR index within the one SHA-256 bank.
    let mut ordered: Vec<(u32, Vec<u8>)> = pcrs.to_vec();
    ordered.sort_by_key(|(i, _)| *i);
    checks.push(check_selection(parsed.as_ref(), &ordered));
    checks.push(check_pcr_digest(parsed.as_ref(), &ordered));

    // The event log.
    let mut replayed = None;
    let mut events = Vec::new();
    match event_log {
        None => {
            let why = "no event log given: the quoted PCR values are reported, not explained";
            checks.push(Check::skipped(CHECK_EVENT_LOG, Category::Format, why));
            checks.push(Check::skipped(CHECK_EVENT_DIGESTS, Category::Binding, why));
            checks.push(Check::skipped(CHECK_EVENT_REPLAY, Category::Binding, why));
        }
        Some(bytes) => match EventLog::parse(bytes) {
            Err(e) => {
                checks.push(Check::failed(
                    CHECK_EVENT_LOG,
                    Category::Format,
                    e.to_string(),
                ));
                let why = "event log does not parse";
                checks.push(Check::failed(CHECK_EVENT_DIGESTS, Category::Binding, why));
                checks.push(Check::failed(CHECK_EVENT_REPLAY, Category::Binding, why));
            }
            Ok(log) => {
                checks.push(Check::passed(
                    CHECK_EVENT_LOG,
                    Category::Format,
                    format!(
                        "{} events, banks {}",
                        log.events.len(),
                        log.algorithms
                            .iter()
                            .map(|a| alg_name(a.alg))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
                checks.push(check_event_digests(&log));
                let values = log.replay_sha256();
                checks.push(check_replay(&values, &ordered, &log));
                events = log
                    .events
                    .iter()
                    .map(|e| ReplayedEvent {
                        index: e.index,
                        pcr: e.pcr,
                        event_type: e.event_type,
                        event_type_name: event_type_name(e.event_type),
                        sha256: e.sha256().map(hex::encode).unwrap_or_default(),
                        description: e.describe(),
                        quoted: ordered.iter().any(|(i, _)| *i == e.pcr),
                    })
                    .collect();
                replayed = Some(values);
            }
        },
    }

    QuoteVerification {
        checks,
        ak,
        attest: parsed,
        pcrs: ordered,
        replayed,
        events,
    }
}

fn check_ak(ak: &TpmPublic) -> Check {
    if let Err(e) = ak.signing_key() {
        return Check::failed(CHECK_AK_PUBLIC, Category::Format, e.to_string());
    }
    let missing: Vec<&str> = [
        (attr::RESTRICTED, "restricted"),
        (attr::SIGN_ENCRYPT, "sign"),
        (attr::FIXED_TPM, "fixedTPM"),
        (attr::FIXED_PARENT, "fixedParent"),
        (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
    ]
    .iter()
    .filter(|(bit, _)| !ak.has(*bit))
    .map(|(_, n)| *n)
    .collect();
    if !missing.is_empty() {
        return Check::failed(
            CHECK_AK_PUBLIC,
            Category::Format,
            format!(
                "{} is not an attestation key: attributes {:#010x} lack {}",
                ak.describe(),
                ak.attributes,
                missing.join(", ")
            ),
        );
    }
    if ak.has(attr::DECRYPT) {
        return Check::failed(
            CHECK_AK_PUBLIC,
            Category::Format,
            format!("{} is also a decryption key", ak.describe()),
        );
    }
    let name = match ak.name() {
        Ok(n) => hex::encode(n),
        Err(e) => return Check::failed(CHECK_AK_PUBLIC, Category::Format, e.to_string()),
    };
    Check::passed(
        CHECK_AK_PUBLIC,
        Category::Format,
        format!("restricted signing key, {}, name {name}", ak.describe()),
    )
}

fn check_signature(ak: Option<&TpmPublic>, attest: &[u8], signature: &[u8]) -> Check {
    let Some(ak) = ak else {
        return Check::failed(CHECK_SIGNATURE, Category::Signature, "no usable AK");
    };
    let key = match ak.signing_key() {
        Ok(k) => k,
        Err(e) => return Check::failed(CHECK_SIGNATURE, Category::Signature, e.to_string()),
    };
    let sig = match TpmSignature::parse(signature) {
        Ok(s) => s,
        Err(e) => return Check::failed(CHECK_SIGNATURE, Category::Signature, e.to_string()),
    };
    Check::from_result(
        CHECK_SIGNATURE,
        Category::Signature,
        key.verify(attest, &sig)
            .map(|()| format!("signed by the AK ({})", ak.describe())),
    )
}

fn check_selection(attest: Option<&Attest>, pcrs: &[(u32, Vec<u8>)]) -> Check {
    let Some(a) = attest else {
        return Check::failed(
            CHECK_PCR_SELECTION,
            Category::Format,
            "quote does not parse",
        );
    };
    let given: Vec<u32> = pcrs.iter().map(|(i, _)| *i).collect();
    if given.windows(2).any(|w| w[0] == w[1]) {
        return Check::failed(
            CHECK_PCR_SELECTION,
            Category::Format,
            "the PCR values given list a PCR twice",
        );
    }
    if let Some((i, v)) = pcrs.iter().find(|(_, v)| v.len() != 32) {
        return Check::failed(
            CHECK_PCR_SELECTION,
            Category::Format,
            format!("PCR {i} value has {} bytes, not 32 (SHA-256)", v.len()),
        );
    }
    let mut sha256: Option<&Vec<u32>> = None;
    for s in &a.pcr_select {
        if s.pcrs.is_empty() {
            continue;
        }
        if s.hash != TPM_ALG_SHA256 {
            return Check::failed(
                CHECK_PCR_SELECTION,
                Category::Format,
                format!(
                    "quote selects PCRs {:?} of the {} bank (only SHA-256 is verified)",
                    s.pcrs,
                    alg_name(s.hash)
                ),
            );
        }
        if sha256.is_some() {
            return Check::failed(
                CHECK_PCR_SELECTION,
                Category::Format,
                "quote selects the SHA-256 bank twice",
            );
        }
        sha256 = Some(&s.pcrs);
    }
    let selected = sha256.cloned().unwrap_or_default();
    if selected != given {
        return Check::failed(
            CHECK_PCR_SELECTION,
            Category::Format,
            format!("quote selects sha256 PCRs {selected:?}, values given for {given:?}"),
        );
    }
    Check::passed(
        CHECK_PCR_SELECTION,
        Category::Format,
        format!("sha256 PCRs {selected:?}"),
    )
}

fn check_pcr_digest(attest: Option<&Attest>, pcrs: &[(u32, Vec<u8>)]) -> Check {
    let Some(a) = attest else {
        return Check::failed(CHECK_PCR_DIGEST, Category::Binding, "quote does not parse");
    };
    let mut ctx = digest::Context::new(&digest::SHA256);
    for (_, v) in pcrs {
        ctx.update(v);
    }
    let computed = ctx.finish();
    if computed.as_ref() == a.pcr_digest.as_slice() {
        Check::passed(
            CHECK_PCR_DIGEST,
            Category::Binding,
            format!("pcrDigest {} covers the PCR values", hex::encode(computed)),
        )
    } else {
        Check::failed(
            CHECK_PCR_DIGEST,
            Category::Binding,
            format!(
                "pcrDigest {} is not SHA-256 of the given PCR values ({})",
                hex::encode(&a.pcr_digest),
                hex::encode(computed)
            ),
        )
    }
}

fn check_event_digests(log: &EventLog) -> Check {
    let mut checked = 0;
    for e in &log.events {
        if !digest_covers_data(e.event_type) {
            continue;
        }
        let Some(d) = e.sha256() else { continue };
        if digest::digest(&digest::SHA256, &e.data).as_ref() != d {
            return Check::failed(
                CHECK_EVENT_DIGESTS,
                Category::Binding,
                format!(
                    "event {} (PCR {}, {}): SHA-256 digest is not the hash of its data",
                    e.index,
                    e.pcr,
                    event_type_name(e.event_type)
                ),
            );
        }
        checked += 1;
    }
    Check::passed(
        CHECK_EVENT_DIGESTS,
        Category::Binding,
        format!(
            "{checked} events whose digest is the hash of their data match; others are covered by the replay only"
        ),
    )
}

fn check_replay(replayed: &[[u8; 32]], pcrs: &[(u32, Vec<u8>)], log: &EventLog) -> Check {
    let mut bad = Vec::new();
    for (i, v) in pcrs {
        match replayed.get(*i as usize) {
            Some(r) if r.as_slice() == v.as_slice() => {}
            Some(r) => bad.push(format!(
                "PCR {i}: log replays to {}, quoted {}",
                hex::encode(r),
                hex::encode(v)
            )),
            None => bad.push(format!("PCR {i}: not a PC Client PCR")),
        }
    }
    if !bad.is_empty() {
        return Check::failed(CHECK_EVENT_REPLAY, Category::Binding, bad.join("; "));
    }
    let mut unquoted: Vec<u32> = log
        .events
        .iter()
        .filter(|e| !pcrs.iter().any(|(i, _)| *i == e.pcr))
        .map(|e| e.pcr)
        .collect();
    unquoted.sort_unstable();
    unquoted.dedup();
    let mut detail = format!("the log replays to all {} quoted PCRs", pcrs.len());
    if !unquoted.is_empty() {
        detail.push_str(&format!(
            " (events for unquoted PCRs {unquoted:?} are not attested)"
        ));
    }
    Check::passed(CHECK_EVENT_REPLAY, Category::Binding, detail)
}

/// Parse errors of the quote inputs, for callers that want the crate's
/// error model (unparsable input is an error, not a check) before verifying.
pub fn parse_quote_inputs(
    ak_public: &[u8],
    attest: &[u8],
    signature: &[u8],
) -> Result<(TpmPublic, Attest, TpmSignature), Error> {
    Ok((
        TpmPublic::from_tpm2b(ak_public)?,
        Attest::parse(attest)?,
        TpmSignature::parse(signature)?,
    ))
}
