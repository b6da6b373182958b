//! Intel TDX DCAP quotes (v4, v5): PCK chain to the Intel SGX Root CA, QE
//! report signature and key binding, quote signature, and with collateral the
//! TCB status.

pub mod collateral;
pub mod pck;
pub mod quote;

use crate::checks::{debug_policy, expect_bytes, Category, Check, EvidenceKind, Verification};
use crate::roots::{self, TrustStore};
use crate::time::parse_rfc3339;
use crate::x509::{self, Certificate, EcdsaEncoding, PublicKey, SigAlg};
use crate::{Error, VerificationTime};
use collateral::Collateral;
use pck::PckExtensions;
pub use quote::Quote;
use ring::digest;

/// The relying party's policy for TDX.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow_debug: bool,
    /// Accept TCB statuses below UpToDate (other than Revoked) as warnings.
    pub allow_outdated_tcb: bool,
    pub expect_mrtd: Option<Vec<u8>>,
    pub expect_mrconfigid: Option<Vec<u8>>,
    /// Expected RTMR values by index (0..=3).
    pub expect_rtmrs: Vec<(usize, Vec<u8>)>,
    pub expect_report_data: Option<Vec<u8>>,
}

/// Parse `--expect-rtmr N=HEX` (N in 0..=3).
pub fn parse_rtmr_arg(arg: &str) -> Result<(usize, Vec<u8>), Error> {
    let (n, v) = crate::bytes::parse_indexed_hex_arg(arg, "--expect-rtmr")?;
    match usize::try_from(n) {
        Ok(i @ 0..=3) => Ok((i, v)),
        _ => Err(Error::Argument(format!(
            "--expect-rtmr {arg:?}: RTMR index {n} is not 0..=3"
        ))),
    }
}

pub fn default_trust() -> TrustStore {
    roots::intel_sgx()
}

/// Parse the quote (and collateral) and verify.
pub fn verify_bytes(
    quote: &[u8],
    collateral: Option<&[u8]>,
    trust: &TrustStore,
    policy: &Policy,
    at: VerificationTime,
) -> Result<Verification, Error> {
    let q = Quote::parse(quote)?;
    let c = collateral.map(Collateral::parse).transpose()?;
    Ok(verify(&q, c.as_ref(), trust, policy, at))
}

pub fn verify(
    q: &Quote,
    collateral: Option<&Collateral>,
    trust: &TrustStore,
    policy: &Policy,
    at: VerificationTime,
) -> Verification {
    let mut v = Verification::new(EvidenceKind::Tdx, at);
    add_claims(&mut v, q);
    v.push(check_header(q));
    let [chain, validity] = x509::path_checks(
        "pck-chain",
        "pck-validity",
        &q.pck_chain.leaf,
        &q.pck_chain.issuers,
        &trust.anchors,
        at,
    );
    v.push(chain);
    v.push(validity);
    v.push(check_qe_report_signature(q));
    v.push(check_qe_key_binding(q));
    v.push(check_quote_signature(q));
    match collateral {
        None => {
            v.push(Check::warning(
                "tcb-status",
                Category::Tcb,
                "TCB not evaluated: no collateral (pass --collateral)",
            ));
        }
        Some(c) => {
            for check in collateral_checks(q, c, trust, policy, at) {
                v.push(check);
            }
        }
    }
    v.push(check_debug(q, policy));
    v.push(expect_bytes(
        "expect-mrtd",
        policy.expect_mrtd.as_deref(),
        &q.body.mr_td,
    ));
    v.push(expect_bytes(
        "expect-mrconfigid",
        policy.expect_mrconfigid.as_deref(),
        &q.body.mr_config_id,
    ));
    v.push(check_rtmrs(q, policy));
    v.push(expect_bytes(
        "expect-report-data",
        policy.expect_report_data.as_deref(),
        &q.body.report_data,
    ));
    v
}

fn add_claims(v: &mut Verification, q: &Quote) {
    let b = &q.body;
    v.claim("quote_version", q.header.version);
    v.claim("body_type", q.body_type);
    v.claim("ignored_trailing_bytes", q.trailing);
    v.claim("tee_tcb_svn", hex::encode(b.tee_tcb_svn));
    v.claim("mr_seam", hex::encode(b.mr_seam));
    v.claim("mr_signer_seam", hex::encode(b.mr_signer_seam));
    v.claim("td_attributes", hex::encode(b.td_attributes));
    v.claim("debug", b.debug());
    v.claim("xfam", hex::encode(b.xfam));
    v.claim("mr_td", hex::encode(b.mr_td));
    v.claim("mr_config_id", hex::encode(b.mr_config_id));
    v.claim("mr_owner", hex::encode(b.mr_owner));
    v.claim("mr_owner_config", hex::encode(b.mr_owner_config));
    v.claim("rtmr", b.rtmr.iter().map(hex::encode).collect::<Vec<_>>());
    v.claim("report_data", hex::encode(b.report_data));
    if let Some(s) = b.tee_tcb_svn2 {
        v.claim("tee_tcb_svn2", hex::encode(s));
    }
    if let Some(m) = b.mr_service_td {
        v.claim("mr_service_td", hex::encode(m));
    }
    if let Ok(p) = PckExtensions::from_certificate(&q.pck_chain.leaf) {
        v.claim("fmspc", hex::encode(p.fmspc));
        v.claim("pce_svn", p.pcesvn);
    }
}

/// ECDSA P-256 attestation key and TDX TEE type.
pub fn check_header(q: &Quote) -> Check {
    let h = &q.header;
    let r = if h.att_key_type != quote::ATT_KEY_TYPE_ECDSA_P256 {
        Err(format!(
            "attestation key type {} (2, ECDSA P-256, expected)",
            h.att_key_type
        ))
    } else if h.tee_type != quote::TEE_TYPE_TDX {
        Err(format!("TEE type {:#x} is not TDX (0x81)", h.tee_type))
    } else {
        Ok(format!(
            "quote v{}, ECDSA P-256 attestation key, TDX",
            h.version
        ))
    };
    Check::from_result("quote-header", Category::Format, r)
}

fn p256_key(xy: &[u8; 64]) -> PublicKey {
    let mut k = Vec::with_capacity(65);
    k.push(0x04);
    k.extend_from_slice(xy);
    PublicKey::EcP256(k)
}

/// The PCK leaf signed the QE report.
pub fn check_qe_report_signature(q: &Quote) -> Check {
    let leaf = &q.pck_chain.leaf;
    let r = x509::verify_signature(
        &leaf.key,
        SigAlg::EcdsaSha256,
        EcdsaEncoding::Fixed,
        &q.qe_report.raw,
        &q.qe_report_signature,
    )
    .map(|()| "QE report signed by the PCK certificate".to_string());
    Check::from_result("qe-report-signature", Category::Signature, r)
}

/// QE report data = SHA-256(attestation key || QE auth data) || 32 zero bytes.
pub fn check_qe_key_binding(q: &Quote) -> Check {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&q.attestation_key);
    ctx.update(&q.qe_auth_data);
    let h = ctx.finish();
    let rd = &q.qe_report.report_data;
    let r = if rd[..32] == *h.as_ref() && rd[32..].iter().all(|&b| b == 0) {
        Ok("QE report data binds the attestation key".to_string())
    } else {
        Err("QE report data is not SHA-256(attestation key || QE auth data)".to_string())
    };
    Check::from_result("qe-key-binding", Category::Binding, r)
}

/// The attestation key signed the header and TD report.
pub fn check_quote_signature(q: &Quote) -> Check {
    let r = x509::verify_signature(
        &p256_key(&q.attestation_key),
        SigAlg::EcdsaSha256,
        EcdsaEncoding::Fixed,
        &q.signed,
        &q.signature,
    )
    .map(|()| {
        format!(
            "{} signed bytes verified with the attestation key",
            q.signed.len()
        )
    });
    Check::from_result("quote-signature", Category::Signature, r)
}

pub fn check_debug(q: &Quote, policy: &Policy) -> Check {
    let debug = q.body.debug().then(|| {
        format!(
            "TD attributes {} have DEBUG set",
            hex::encode(q.body.td_attributes)
        )
    });
    debug_policy(debug, policy.allow_debug, "TD is not debuggable")
}

pub fn check_rtmrs(q: &Quote, policy: &Policy) -> Check {
    const NAME: &str = "expect-rtmrs";
    if policy.expect_rtmrs.is_empty() {
        return Check::skipped(NAME, Category::Policy, "no expectation given");
    }
    for (i, want) in &policy.expect_rtmrs {
        match q.body.rtmr.get(*i) {
            Some(have) if have[..] == want[..] => {}
            Some(have) => {
                return Check::failed(
                    NAME,
                    Category::Policy,
                    format!(
                        "RTMR{i}: expected {}, found {}",
                        hex::encode(want),
                        hex::encode(have)
                    ),
                )
            }
            None => return Check::failed(NAME, Category::Policy, format!("no RTMR{i}")),
        }
    }
    Check::passed(
        NAME,
        Category::Policy,
        format!("{} RTMRs as expected", policy.expect_rtmrs.len()),
    )
}

fn window(what: &str, issue: &str, next: &str, at: VerificationTime) -> Result<(), String> {
    let issue_ms = parse_rfc3339(issue).map_err(|e| format!("{what} issueDate: {e}"))?;
    let next_ms = parse_rfc3339(next).map_err(|e| format!("{what} nextUpdate: {e}"))?;
    if at.unix_ms() < issue_ms {
        Err(format!("{what} not yet valid (issueDate {issue})"))
    } else if at.unix_ms() > next_ms {
        Err(format!("collateral expired: {what} nextUpdate {next}"))
    } else {
        Ok(())
    }
}

/// Every check that needs collateral.
pub fn collateral_checks(
    q: &Quote,
    c: &Collateral,
    trust: &TrustStore,
    policy: &Policy,
    at: VerificationTime,
) -> Vec<Check> {
    let mut out = Vec::new();
    // Signatures over the JSON documents and CRLs, with their issuer chains.
    let mut certs: Vec<Certificate> = Vec::new();
    let sigs = (|| {
        certs.extend(c.tcb_info.verify("TCB info", &trust.anchors)?);
        certs.extend(c.qe_identity.verify("QE identity", &trust.anchors)?);
        let crl_path = c
            .pck_crl_issuer_chain
            .path_to(&trust.anchors)
            .map_err(|e| format!("PCK CRL issuer chain: {e}"))?;
        c.pck_crl.verify_signed_by(&c.pck_crl_issuer_chain.leaf)?;
        let root = crl_path.certs.last().ok_or("empty CRL issuer path")?;
        c.root_ca_crl.verify_signed_by(root)?;
        certs.extend(crl_path.certs);
        Ok::<_, String>(
            "TCB info, QE identity and both CRLs signed under the Intel SGX Root CA".to_string(),
        )
    })();
    let sigs_ok = sigs.is_ok();
    out.push(Check::from_result(
        "collateral-signatures",
        Category::Signature,
        sigs,
    ));

    // Time: documents, CRLs and the collateral certificates.
    let times = (|| {
        let t = &c.tcb_info.body;
        window("TCB info", &t.issue_date, &t.next_update, at)?;
        let qe = &c.qe_identity.body;
        window("QE identity", &qe.issue_date, &qe.next_update, at)?;
        c.pck_crl.valid_at(at)?;
        c.root_ca_crl.valid_at(at)?;
        for cert in &certs {
            cert.valid_at(at)?;
        }
        Ok(format!(
            "collateral current at {} (TCB info next update {})",
            at.to_rfc3339(),
            t.next_update
        ))
    })();
    out.push(Check::from_result(
        "collateral-validity",
        Category::Validity,
        times,
    ));

    // Revocation of the PCK chain.
    let revoked = (|| {
        let leaf = &q.pck_chain.leaf;
        if c.pck_crl.is_revoked(leaf) {
            return Err(format!("PCK certificate \"{}\" is revoked", leaf.subject));
        }
        for ca in &q.pck_chain.issuers {
            if c.root_ca_crl.is_revoked(ca) || c.pck_crl.is_revoked(ca) {
                return Err(format!("\"{}\" is revoked", ca.subject));
            }
        }
        Ok("no certificate of the PCK chain is revoked".to_string())
    })();
    out.push(Check::from_result(
        "pck-revocation",
        Category::Revocation,
        revoked,
    ));

    out.push(tcb_status(q, c, policy, sigs_ok));
    out
}

/// Platform TCB level, TDX module identity and QE identity, merged to the
/// worst status, then judged by the policy.
pub fn tcb_status(q: &Quote, c: &Collateral, policy: &Policy, collateral_authentic: bool) -> Check {
    const NAME: &str = "tcb-status";
    if !collateral_authentic {
        return Check::failed(
            NAME,
            Category::Tcb,
            "collateral not authentic; TCB not evaluated",
        );
    }
    let r = (|| {
        let pck = PckExtensions::from_certificate(&q.pck_chain.leaf)?;
        let ti = &c.tcb_info.body;
        if ti.id != "TDX" || ti.version != 3 {
            return Err(format!("TCB info {} v{} is not TDX v3", ti.id, ti.version));
        }
        if !ti.fmspc.eq_ignore_ascii_case(&hex::encode(&pck.fmspc))
            || !ti.pce_id.eq_ignore_ascii_case(&hex::encode(&pck.pce_id))
        {
            return Err(format!(
                "TCB info is for FMSPC {} / PCE {}, the PCK certificate is {} / {}",
                ti.fmspc,
                ti.pce_id,
                hex::encode(&pck.fmspc),
                hex::encode(&pck.pce_id)
            ));
        }
        let tee = &q.body.tee_tcb_svn;
        let level = collateral::platform_level(&ti.tcb_levels, &pck.tcb_comp_svn, pck.pcesvn, tee)
            .ok_or("platform TCB is below every level in the TCB info")?;
        let mut status = level.tcb_status.clone();
        let mut advisories = level.advisory_ids.clone();
        let mut notes = vec![format!(
            "platform {} ({})",
            level.tcb_status, level.tcb_date
        )];

        // TDX module: signer and attributes always; for TDX 1.5 modules
        // (TEE_TCB_SVN[1], the major version, non-zero) the identity's level too.
        let module_signer = hex::encode(q.body.mr_signer_seam);
        let module = &ti.tdx_module;
        if !module.mrsigner.eq_ignore_ascii_case(&module_signer)
            || !masked_eq(
                &q.body.seam_attributes,
                &module.attributes,
                &module.attributes_mask,
            )?
        {
            return Err("TDX module signer or attributes do not match the TCB info".into());
        }
        if tee[1] > 0 {
            let id = format!("TDX_{:02X}", tee[1]);
            let m = ti
                .tdx_module_identities
                .iter()
                .find(|m| m.id == id)
                .ok_or(format!("no TDX module identity {id} in the TCB info"))?;
            if !m.mrsigner.eq_ignore_ascii_case(&module_signer)
                || !masked_eq(&q.body.seam_attributes, &m.attributes, &m.attributes_mask)?
            {
                return Err(format!(
                    "TDX module signer or attributes do not match identity {id}"
                ));
            }
            let ml = collateral::isv_level(&m.tcb_levels, u16::from(tee[0])).ok_or(format!(
                "TDX module SVN {} below every level of {id}",
                tee[0]
            ))?;
            notes.push(format!("module {id} {}", ml.tcb_status));
            merge(
                &mut status,
                &mut advisories,
                &ml.tcb_status,
                &ml.advisory_ids,
            );
        }

        // Quoting Enclave identity.
        let qe = &c.qe_identity.body;
        if qe.id != "TD_QE" || qe.version != 2 {
            return Err(format!(
                "QE identity {} v{} is not TD_QE v2",
                qe.id, qe.version
            ));
        }
        let r = &q.qe_report;
        if !qe.mrsigner.eq_ignore_ascii_case(&hex::encode(r.mr_signer))
            || qe.isvprodid != r.isv_prod_id
            || !masked_eq(
                &r.misc_select.to_le_bytes(),
                &qe.miscselect,
                &qe.miscselect_mask,
            )?
            || !masked_eq(&r.attributes, &qe.attributes, &qe.attributes_mask)?
        {
            return Err(
                "QE report does not match the QE identity (signer, product, attributes)".into(),
            );
        }
        let ql = collateral::isv_level(&qe.tcb_levels, r.isv_svn).ok_or(format!(
            "QE SVN {} below every QE identity level",
            r.isv_svn
        ))?;
        notes.push(format!("QE {}", ql.tcb_status));
        merge(
            &mut status,
            &mut advisories,
            &ql.tcb_status,
            &ql.advisory_ids,
        );
        Ok((status, advisories, notes))
    })();
    match r {
        Err(e) => Check::failed(NAME, Category::Tcb, e),
        Ok((status, advisories, notes)) => {
            let detail = format!(
                "{status}{}: {}",
                if advisories.is_empty() {
                    String::new()
                } else {
                    format!(" (advisories {})", advisories.join(", "))
                },
                notes.join("; ")
            );
            match status.as_str() {
                "UpToDate" => Check::passed(NAME, Category::Tcb, detail),
                "SWHardeningNeeded"
                | "ConfigurationNeeded"
                | "ConfigurationAndSWHardeningNeeded" => {
                    Check::warning(NAME, Category::Tcb, detail)
                }
                "Revoked" => Check::failed(NAME, Category::Tcb, detail),
                _ if policy.allow_outdated_tcb => Check::warning(
                    NAME,
                    Category::Tcb,
                    format!("{detail} (accepted by --allow-outdated-tcb)"),
                ),
                _ => Check::failed(NAME, Category::Tcb, detail),
            }
        }
    }
}

/// `have & mask == want & mask`, with `want` and `mask` as hex text.
fn masked_eq(have: &[u8], want: &str, mask: &str) -> Result<bool, String> {
    let want = hex::decode(want).map_err(|e| format!("collateral hex: {e}"))?;
    let mask = hex::decode(mask).map_err(|e| format!("collateral hex: {e}"))?;
    Ok(want.len() == have.len()
        && mask.len() == have.len()
        && have
            .iter()
            .zip(&mask)
            .zip(&want)
            .all(|((h, m), w)| h & m == w & m))
}

fn merge(status: &mut String, advisories: &mut Vec<String>, other: &str, other_adv: &[String]) {
    if collateral::status_rank(other) > collateral::status_rank(status) {
        *status = other.to_string();
    }
    for a in other_adv {
        if !advisories.contains(a) {
            advisories.push(a.clone());
        }
    }
}
