//! AMD SEV-SNP: attestation report + VCEK/VLEK certificate, chained through
//! the ASK/ASVK to an AMD root key (ARK).

pub mod report;

use crate::checks::{debug_policy, expect_bytes, Category, Check, EvidenceKind, Verification};
use crate::roots::{self, TrustStore};
use crate::x509::{self, der, Certificate, EcdsaEncoding, PublicKey, SigAlg};
use crate::{Error, VerificationTime};
pub use report::{AttestationReport, SigningKey, TcbVersion};

/// The relying party's policy for SEV-SNP.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Accept a guest whose policy allows debugging (off by default).
    pub allow_debug: bool,
    /// Minimum reported TCB, per component.
    pub min_tcb: Option<TcbVersion>,
    pub expect_report_data: Option<Vec<u8>>,
    pub expect_measurement: Option<Vec<u8>>,
    pub expect_host_data: Option<Vec<u8>>,
    pub expect_vmpl: Option<u32>,
}

/// Parsed SEV-SNP evidence.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub report: AttestationReport,
    /// VCEK or VLEK.
    pub endorsement_key: Certificate,
}

impl Evidence {
    /// `report`: raw or hex; `cert`: DER or PEM.
    pub fn parse(report: &[u8], cert: &[u8]) -> Result<Self, Error> {
        Ok(Evidence {
            report: AttestationReport::parse_any(report)?,
            endorsement_key: Certificate::from_der_or_pem(cert)?,
        })
    }
}

/// The embedded AMD ARKs, ASKs and ASVK.
pub fn default_trust() -> TrustStore {
    roots::amd_sev()
}

const OID_AMD: &str = "1.3.6.1.4.1.3704.1";

/// Verify SEV-SNP evidence against `trust` and `policy` as of `at`.
pub fn verify(
    ev: &Evidence,
    trust: &TrustStore,
    policy: &Policy,
    at: VerificationTime,
) -> Verification {
    let mut v = Verification::new(EvidenceKind::SevSnp, at);
    let r = &ev.report;
    let cert = &ev.endorsement_key;
    add_claims(&mut v, r, cert);
    v.push(check_version(r));
    v.push(check_signature_algorithm(r));
    let [chain, validity] = x509::path_checks(
        "cert-chain",
        "cert-validity",
        cert,
        &trust.intermediates,
        &trust.anchors,
        at,
    );
    v.push(chain);
    v.push(validity);
    v.push(check_key_kind(r, cert));
    v.push(check_tcb_extensions(r, cert));
    v.push(check_hwid(r, cert));
    v.push(check_report_signature(r, cert));
    v.push(check_debug(r, policy));
    v.push(check_min_tcb(r, policy));
    v.push(expect_bytes(
        "expect-report-data",
        policy.expect_report_data.as_deref(),
        &r.report_data,
    ));
    v.push(expect_bytes(
        "expect-measurement",
        policy.expect_measurement.as_deref(),
        &r.measurement,
    ));
    v.push(expect_bytes(
        "expect-host-data",
        policy.expect_host_data.as_deref(),
        &r.host_data,
    ));
    v.push(check_vmpl(r, policy));
    v
}

fn add_claims(v: &mut Verification, r: &AttestationReport, cert: &Certificate) {
    v.claim("report_version", r.version);
    v.claim("guest_svn", r.guest_svn);
    v.claim("policy", format!("{:#x}", r.policy));
    v.claim("debug", r.debug_allowed());
    v.claim("vmpl", r.vmpl);
    v.claim("measurement", hex::encode(r.measurement));
    v.claim("report_data", hex::encode(r.report_data));
    v.claim("host_data", hex::encode(r.host_data));
    v.claim("family_id", hex::encode(r.family_id));
    v.claim("image_id", hex::encode(r.image_id));
    v.claim("id_key_digest", hex::encode(r.id_key_digest));
    v.claim("author_key_digest", hex::encode(r.author_key_digest));
    v.claim("report_id", hex::encode(r.report_id));
    v.claim("chip_id", hex::encode(r.chip_id));
    v.claim("platform_info", format!("{:#x}", r.platform_info));
    v.claim("current_tcb", r.current_tcb.to_json());
    v.claim("reported_tcb", r.reported_tcb.to_json());
    v.claim("committed_tcb", r.committed_tcb.to_json());
    v.claim("launch_tcb", r.launch_tcb.to_json());
    let (ma, mi, bu) = r.current_version;
    v.claim("firmware_version", format!("{ma}.{mi}.{bu}"));
    if let Some((f, m, s)) = r.cpuid {
        v.claim(
            "cpuid",
            format!("family {f:#x} model {m:#x} stepping {s:#x}"),
        );
    }
    v.claim("endorsement_key_subject", cert.subject.clone());
}

/// The report version is one whose layout this verifier knows.
pub fn check_version(r: &AttestationReport) -> Check {
    if report::SUPPORTED_VERSIONS.contains(&r.version) {
        Check::passed(
            "report-version",
            Category::Format,
            format!("version {}", r.version),
        )
    } else {
        Check::failed(
            "report-version",
            Category::Format,
            format!(
                "report version {} not supported (2, 3, 4, 5 are)",
                r.version
            ),
        )
    }
}

/// The report must be signed with ECDSA P-384 / SHA-384 (algorithm 1).
pub fn check_signature_algorithm(r: &AttestationReport) -> Check {
    if r.signature_algo == 1 {
        Check::passed(
            "signature-algorithm",
            Category::Format,
            "ECDSA P-384 with SHA-384",
        )
    } else {
        Check::failed(
            "signature-algorithm",
            Category::Format,
            format!("unknown signature algorithm {}", r.signature_algo),
        )
    }
}

/// The report's signing-key field names the kind of certificate supplied.
pub fn check_key_kind(r: &AttestationReport, cert: &Certificate) -> Check {
    let is_vlek = cert.subject.contains("SEV-VLEK");
    let result = match (r.signing_key(), is_vlek) {
        (SigningKey::Vcek, false) => Ok("report signed by a VCEK".to_string()),
        (SigningKey::Vlek, true) => Ok("report signed by a VLEK".to_string()),
        (k, _) => Err(format!(
            "report says signing key {k:?}, certificate is \"{}\"",
            cert.subject
        )),
    };
    Check::from_result("signing-key-kind", Category::Binding, result)
}

fn spl_extension(cert: &Certificate, arc: &str) -> Result<Option<u8>, String> {
    let oid = format!("{OID_AMD}.3.{arc}");
    match cert.extension(&oid) {
        None => Ok(None),
        Some(e) => {
            let n = der::uint(der::expect(&e.value, der::INTEGER)?)?;
            u8::try_from(n)
                .map(Some)
                .map_err(|_| format!("extension {oid} value {n} out of range"))
        }
    }
}

/// The VCEK/VLEK's TCB extensions equal the report's REPORTED_TCB.
pub fn check_tcb_extensions(r: &AttestationReport, cert: &Certificate) -> Check {
    let result = (|| {
        let t = &r.reported_tcb;
        let mut expected: Vec<(&str, &str, u8)> = vec![
            ("bootloader", "1", t.bootloader),
            ("tee", "2", t.tee),
            ("snp", "3", t.snp),
            ("microcode", "8", t.microcode),
        ];
        if let Some(f) = t.fmc {
            expected.push(("fmc", "9", f));
        }
        for (name, arc, want) in expected {
            match spl_extension(cert, arc)? {
                Some(got) if got == want => {}
                Some(got) => {
                    return Err(format!(
                        "{name} SPL: certificate {got}, report reported_tcb {want}"
                    ))
                }
                None => return Err(format!("certificate lacks the {name} SPL extension")),
            }
        }
        Ok(format!(
            "certificate TCB equals reported_tcb {:#018x}",
            t.raw
        ))
    })();
    Check::from_result("cert-tcb-match", Category::Binding, result)
}

/// A VCEK's hardware id extension equals the report's CHIP_ID.
pub fn check_hwid(r: &AttestationReport, cert: &Certificate) -> Check {
    const NAME: &str = "cert-hwid-match";
    if r.signing_key() == SigningKey::Vlek {
        return Check::skipped(
            NAME,
            Category::Binding,
            "VLEK certificates carry no hardware id",
        );
    }
    let Some(ext) = cert.extension(&format!("{OID_AMD}.4")) else {
        return Check::failed(
            NAME,
            Category::Binding,
            "certificate lacks the hwID extension",
        );
    };
    // The value is an OCTET STRING in current certificates, raw in older ones.
    let hwid = der::expect(&ext.value, der::OCTET_STRING).unwrap_or(&ext.value);
    // Milan/Genoa VCEKs carry the 64-byte chip id, Turin VCEKs its first 8 bytes.
    if !matches!(hwid.len(), 8 | 64) {
        return Check::failed(NAME, Category::Binding, "malformed hwID extension");
    }
    if hwid == &r.chip_id[..hwid.len()] {
        Check::passed(
            NAME,
            Category::Binding,
            format!("hwID {}", hex::encode(hwid)),
        )
    } else {
        Check::failed(
            NAME,
            Category::Binding,
            format!(
                "certificate hwID {} is not the report's chip_id {}",
                hex::encode(hwid),
                hex::encode(r.chip_id)
            ),
        )
    }
}

/// ECDSA P-384 signature over bytes 0x000..0x2A0 by the VCEK/VLEK key.
pub fn check_report_signature(r: &AttestationReport, cert: &Certificate) -> Check {
    const NAME: &str = "report-signature";
    let result = (|| {
        if !matches!(cert.key, PublicKey::EcP384(_)) {
            return Err("endorsement key is not an ECDSA P-384 key".to_string());
        }
        let sig = r.signature_p384_fixed()?;
        x509::verify_signature(
            &cert.key,
            SigAlg::EcdsaSha384,
            EcdsaEncoding::Fixed,
            r.signed_bytes(),
            &sig,
        )
        .map(|()| format!("signed by \"{}\"", cert.subject))
    })();
    Check::from_result(NAME, Category::Signature, result)
}

pub fn check_debug(r: &AttestationReport, policy: &Policy) -> Check {
    let debug = r.debug_allowed().then(|| {
        format!(
            "guest policy {:#x} allows debugging (DEBUG bit 19 set)",
            r.policy
        )
    });
    debug_policy(debug, policy.allow_debug, "guest policy forbids debugging")
}

pub fn check_min_tcb(r: &AttestationReport, policy: &Policy) -> Check {
    const NAME: &str = "policy-min-tcb";
    match &policy.min_tcb {
        None => Check::skipped(NAME, Category::Policy, "no minimum TCB given"),
        Some(min) if r.reported_tcb.at_least(min) => Check::passed(
            NAME,
            Category::Policy,
            format!("reported_tcb {:?} >= minimum", r.reported_tcb.components()),
        ),
        Some(min) => Check::failed(
            NAME,
            Category::Policy,
            format!(
                "reported_tcb {:?} below minimum {:?}",
                r.reported_tcb.components(),
                min.components()
            ),
        ),
    }
}

pub fn check_vmpl(r: &AttestationReport, policy: &Policy) -> Check {
    const NAME: &str = "expect-vmpl";
    match policy.expect_vmpl {
        None => Check::skipped(NAME, Category::Policy, "no expectation given"),
        Some(want) if want == r.vmpl => {
            Check::passed(NAME, Category::Policy, format!("VMPL {want}"))
        }
        Some(want) => Check::failed(
            NAME,
            Category::Policy,
            format!("expected VMPL {want}, report has {}", r.vmpl),
        ),
    }
}
