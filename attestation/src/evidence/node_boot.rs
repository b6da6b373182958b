//! Which node OS image booted: the quoted PCRs and the event log against the
//! offline prediction of a signed node image (`docs/node-image.md`), and the
//! firmware-owned PCRs against reference values per hardware model.
//!
//! The TPM verifier (`crate::tpm`) has already checked, before these checks
//! are meaningful, that the quote is signed by the enrolled AK, that its PCR
//! digest covers the PCR values in the document and that the event log
//! replays to them. What is left is to say what those values mean:
//!
//! - PCRs 9, 11 and 12 are determined by the UKI alone (the kernel's EFI stub
//!   measures the command line and initrd into 9; systemd-stub measures the
//!   UKI's sections into 11; 12 holds command-line overrides, none for a node):
//!   they must equal a reference image's prediction exactly.
//! - PCR 4 records every EFI application the firmware started (the boot
//!   manager, the UKI, and with Secure Boot off the kernel inside it), but
//!   also one `EV_EFI_ACTION` per boot option tried, which depends on the
//!   machine's boot order. So PCR 4 is judged on its events: the application
//!   digests, in order, must be the predicted ones, and every other event must
//!   be a boot-option action or the separator whose logged digest is the hash
//!   of its logged data (nothing else can hide in PCR 4).
//! - PCRs 0–3, 5, 6 and 7 belong to the firmware and the machine: they are
//!   reported, and judged only against the policy's per-model reference values.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::checks::{Category, Check};
use crate::tpm::eventlog::{
    event_type_name, EventLog, EV_EFI_ACTION, EV_EFI_BOOT_SERVICES_APPLICATION, EV_SEPARATOR,
};

/// PCRs predicted exactly from the UKI.
pub const IMAGE_PCRS: [u32; 3] = [9, 11, 12];
/// The PCR of boot applications, judged by its events.
pub const BOOT_APPLICATION_PCR: u32 = 4;
/// Firmware- and machine-owned PCRs: reported, checked against models.
pub const FIRMWARE_PCRS: [u32; 7] = [0, 1, 2, 3, 5, 6, 7];

/// What one signed node image predicts (from its verified manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReference {
    /// `name` version `version`, for messages and claims.
    pub name: String,
    pub version: u64,
    /// SHA-384 of the signed manifest (what the evidence's `node.image` names).
    pub manifest_sha384: [u8; 48],
    /// Predicted values of [`IMAGE_PCRS`] (all three must be present).
    pub pcrs: BTreeMap<u32, [u8; 32]>,
    /// The Authenticode SHA-256 digests of the EFI applications the firmware
    /// starts, in order (boot manager, UKI, and the inner kernel when Secure
    /// Boot is off).
    pub boot_applications: Vec<[u8; 32]>,
}

/// Reference values of the firmware PCRs of one hardware model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareModel {
    pub model: String,
    /// PCR index → expected SHA-256 value (a subset of [`FIRMWARE_PCRS`]).
    pub pcrs: BTreeMap<u32, [u8; 32]>,
}

/// Check name: the booted node image.
pub const NODE_BOOT: &str = "node-boot-image";
/// Check name: the document's stated node image is the booted one.
pub const NODE_BOOT_STATED: &str = "node-boot-stated-image";
/// Check name: the firmware PCRs.
pub const NODE_FIRMWARE: &str = "node-firmware";

/// The outcome: the checks, and the reference that matched (if any).
#[derive(Debug)]
pub struct NodeBootAppraisal<'a> {
    pub checks: Vec<Check>,
    pub booted: Option<&'a NodeReference>,
    pub firmware_model: Option<&'a str>,
}

/// Judge quoted PCRs (already verified against the quote and replayed from
/// `event_log`) against the candidate node images and firmware models.
/// `stated_manifest_sha384` is the node image the document claims.
pub fn appraise<'a>(
    quoted: &BTreeMap<u32, [u8; 32]>,
    event_log: &[u8],
    references: &'a [NodeReference],
    firmware: &'a [FirmwareModel],
    stated_manifest_sha384: &[u8],
) -> NodeBootAppraisal<'a> {
    let mut checks = Vec::new();
    let mut booted = None;
    match EventLog::parse(event_log) {
        Err(e) => checks.push(Check::failed(
            NODE_BOOT,
            Category::Format,
            format!("event log: {e}"),
        )),
        Ok(log) => {
            let applications = boot_applications(&log);
            let mut misses = Vec::new();
            for r in references {
                match match_reference(quoted, &applications, r) {
                    Ok(()) => {
                        booted = Some(r);
                        break;
                    }
                    Err(why) => misses.push(format!("{} {}: {why}", r.name, r.version)),
                }
            }
            checks.push(match booted {
                Some(r) => Check::passed(
                    NODE_BOOT,
                    Category::Policy,
                    format!(
                        "node image {} version {} booted: PCRs {} as predicted, PCR {} boot applications {}",
                        r.name,
                        r.version,
                        IMAGE_PCRS.map(|p| p.to_string()).join(", "),
                        BOOT_APPLICATION_PCR,
                        r.boot_applications.iter().map(short).collect::<Vec<_>>().join(" → ")
                    ),
                ),
                None if references.is_empty() => Check::failed(
                    NODE_BOOT,
                    Category::Policy,
                    "no reference node image to compare the boot with",
                ),
                None => Check::failed(
                    NODE_BOOT,
                    Category::Policy,
                    format!("no reference node image matches: {}", misses.join("; ")),
                ),
            });
        }
    }
    checks.push(match booted {
        Some(r) if r.manifest_sha384[..] == *stated_manifest_sha384 => Check::passed(
            NODE_BOOT_STATED,
            Category::Binding,
            "the node image the evidence states is the one the TPM shows booted",
        ),
        Some(r) => Check::failed(
            NODE_BOOT_STATED,
            Category::Binding,
            format!(
                "the evidence states node image manifest {} but the TPM shows {} version {} (manifest {})",
                hex::encode(stated_manifest_sha384),
                r.name,
                r.version,
                hex::encode(r.manifest_sha384)
            ),
        ),
        None => Check::skipped(
            NODE_BOOT_STATED,
            Category::Binding,
            "no booted node image established",
        ),
    });
    let (check, model) = firmware_check(quoted, firmware);
    checks.push(check);
    NodeBootAppraisal {
        checks,
        booted,
        firmware_model: model,
    }
}

/// The PCR 4 events, as the judgement needs them: application digests in
/// order, or the first event that is neither an application, a separator
/// nor an honest boot-option action.
fn boot_applications(log: &EventLog) -> Result<Vec<[u8; 32]>, String> {
    let mut apps = Vec::new();
    for e in log.events.iter().filter(|e| e.pcr == BOOT_APPLICATION_PCR) {
        let Some(d) = e.sha256().and_then(|d| <[u8; 32]>::try_from(d).ok()) else {
            return Err(format!("event {} has no SHA-256 digest", e.index));
        };
        match e.event_type {
            EV_EFI_BOOT_SERVICES_APPLICATION => apps.push(d),
            EV_SEPARATOR | EV_EFI_ACTION => {
                if Sha256::digest(&e.data)[..] != d {
                    return Err(format!(
                        "event {} ({}) logs a digest that is not the hash of its data",
                        e.index,
                        event_type_name(e.event_type)
                    ));
                }
            }
            t => {
                return Err(format!(
                    "event {} is {} ({}), which no node boot logs",
                    e.index,
                    event_type_name(t),
                    e.describe()
                ))
            }
        }
    }
    Ok(apps)
}

fn match_reference(
    quoted: &BTreeMap<u32, [u8; 32]>,
    applications: &Result<Vec<[u8; 32]>, String>,
    r: &NodeReference,
) -> Result<(), String> {
    let mut wrong = Vec::new();
    for p in IMAGE_PCRS {
        match (r.pcrs.get(&p), quoted.get(&p)) {
            (None, _) => wrong.push(format!("PCR {p} not predicted")),
            (_, None) => wrong.push(format!("PCR {p} not quoted")),
            (Some(want), Some(got)) if want != got => wrong.push(format!(
                "PCR {p} is {} (predicted {})",
                short(got),
                short(want)
            )),
            _ => {}
        }
    }
    match applications {
        Err(e) => wrong.push(format!("PCR {BOOT_APPLICATION_PCR}: {e}")),
        Ok(apps) if *apps != r.boot_applications => wrong.push(format!(
            "PCR {BOOT_APPLICATION_PCR} started {} (predicted {})",
            if apps.is_empty() {
                "no EFI application".to_string()
            } else {
                apps.iter().map(short).collect::<Vec<_>>().join(" → ")
            },
            r.boot_applications
                .iter()
                .map(short)
                .collect::<Vec<_>>()
                .join(" → ")
        )),
        Ok(_) => {}
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join(", "))
    }
}

/// The references of the policy's `node.boot_images`: each bundle verified
/// against its trusted keys and read as a node image; the errors of those
/// that could not be.
pub fn references_from_policy(policy: &super::Policy) -> (Vec<NodeReference>, Vec<String>) {
    let mut refs = Vec::new();
    let mut errors = Vec::new();
    for b in &policy.node.boot_images {
        let trust: Vec<_> = b.trust.iter().map(|t| policy.resolve(t)).collect();
        match NodeReference::from_signed_image(&policy.resolve(&b.image), &trust) {
            Ok(r) => refs.push(r),
            Err(e) => errors.push(format!("node.boot_images {}: {e}", b.image.display())),
        }
    }
    (refs, errors)
}

impl NodeReference {
    /// Read a signed node image's prediction: the bundle verified against
    /// `trust` (PEM public keys), its prediction made again from its verified
    /// UKI and boot manager, which must equal the manifest's signed values.
    #[cfg(feature = "predict")]
    pub fn from_signed_image(
        image: &std::path::Path,
        trust: &[std::path::PathBuf],
    ) -> Result<Self, crate::Error> {
        let policy = bulwark_image::TrustPolicy::from_pem_files(trust, 1, 0)
            .map_err(|e| crate::Error::Argument(e.to_string()))?;
        let signed = bulwark_node_image::measure::predict_signed(image, &policy, None)
            .map_err(|e| crate::Error::Argument(e.to_string()))?;
        if !signed.mismatches.is_empty() {
            return Err(crate::Error::Argument(format!(
                "its signed PCR values are not what its UKI predicts: {}",
                signed.mismatches.join("; ")
            )));
        }
        let mut pcrs = BTreeMap::new();
        for p in IMAGE_PCRS {
            let v = signed.signed_pcrs.get(&p).ok_or_else(|| {
                crate::Error::Argument(format!("its manifest predicts no PCR {p}"))
            })?;
            pcrs.insert(p, *v);
        }
        Ok(NodeReference {
            name: signed.name.clone(),
            version: signed.version,
            manifest_sha384: signed.manifest_sha384,
            pcrs,
            boot_applications: signed.boot_applications(),
        })
    }

    /// Read a signed node image's prediction (its verified manifest).
    #[cfg(not(feature = "predict"))]
    pub fn from_signed_image(
        _image: &std::path::Path,
        _trust: &[std::path::PathBuf],
    ) -> Result<Self, crate::Error> {
        Err(crate::Error::NotImplemented(
            "reading node images: this build of bulwark-attestation has no `predict` feature"
                .into(),
        ))
    }
}

fn firmware_check<'a>(
    quoted: &BTreeMap<u32, [u8; 32]>,
    models: &'a [FirmwareModel],
) -> (Check, Option<&'a str>) {
    let values = FIRMWARE_PCRS
        .iter()
        .filter_map(|p| quoted.get(p).map(|v| format!("{p}={}", short(v))))
        .collect::<Vec<_>>()
        .join(" ");
    if models.is_empty() {
        return (
            Check::skipped(
                NODE_FIRMWARE,
                Category::Policy,
                format!(
                    "no firmware reference values in the policy; firmware PCRs reported: {values}"
                ),
            ),
            None,
        );
    }
    for m in models {
        if !m.pcrs.is_empty() && m.pcrs.iter().all(|(p, v)| quoted.get(p) == Some(v)) {
            return (
                Check::passed(
                    NODE_FIRMWARE,
                    Category::Policy,
                    format!(
                        "firmware PCRs {} match hardware model {}",
                        m.pcrs
                            .keys()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        m.model
                    ),
                ),
                Some(m.model.as_str()),
            );
        }
    }
    (
        Check::failed(
            NODE_FIRMWARE,
            Category::Policy,
            format!(
                "firmware PCRs match none of the {} hardware models in the policy: {values}",
                models.len()
            ),
        ),
        None,
    )
}

fn short(d: &[u8; 32]) -> String {
    hex::encode(&d[..6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::Outcome;

    /// A crypto-agile log (SHA-256 only) of the given (pcr, type, digest, data) events.
    fn log(events: &[(u32, u32, [u8; 32], &[u8])]) -> Vec<u8> {
        let mut spec = Vec::new();
        spec.extend_from_slice(b"Spec ID Event03\0");
        spec.extend_from_slice(&0u32.to_le_bytes()); // platform class
        spec.extend_from_slice(&[0, 2, 0, 2]); // version 2.0, errata 0, uintn size 2
        spec.extend_from_slice(&1u32.to_le_bytes());
        spec.extend_from_slice(&0x000bu16.to_le_bytes());
        spec.extend_from_slice(&32u16.to_le_bytes());
        spec.push(0); // vendor info size
        let mut out = Vec::new();
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&3u32.to_le_bytes()); // EV_NO_ACTION
        out.extend_from_slice(&[0; 20]);
        out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
        out.extend_from_slice(&spec);
        for (pcr, t, d, data) in events {
            out.extend_from_slice(&pcr.to_le_bytes());
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&0x000bu16.to_le_bytes());
            out.extend_from_slice(d);
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    const ACTION: &[u8] = b"Calling EFI Application from Boot Option";

    fn boot_log(apps: &[[u8; 32]], extra: Option<(u32, [u8; 32], &[u8])>) -> Vec<u8> {
        let mut ev: Vec<(u32, u32, [u8; 32], &[u8])> = vec![
            (4, EV_EFI_ACTION, sha(ACTION), ACTION),
            (4, EV_SEPARATOR, sha(&[0; 4]), &[0; 4]),
        ];
        for a in apps {
            ev.push((4, EV_EFI_BOOT_SERVICES_APPLICATION, *a, b"devpath"));
        }
        if let Some((t, d, data)) = extra {
            ev.push((4, t, d, data));
        }
        ev.push((9, 6, sha(b"initrd"), b"Linux initrd"));
        log(&ev)
    }

    fn reference() -> NodeReference {
        NodeReference {
            name: "bulwark-node".into(),
            version: 7,
            manifest_sha384: [7; 48],
            pcrs: [(9, [9; 32]), (11, [11; 32]), (12, [0; 32])].into(),
            boot_applications: vec![[1; 32], [2; 32], [3; 32]],
        }
    }

    fn quoted() -> BTreeMap<u32, [u8; 32]> {
        [
            (0, [0xa0; 32]),
            (7, [0xa7; 32]),
            (9, [9; 32]),
            (11, [11; 32]),
            (12, [0; 32]),
        ]
        .into()
    }

    fn outcome(a: &NodeBootAppraisal<'_>, name: &str) -> (Outcome, String) {
        let c = a.checks.iter().find(|c| c.name == name).unwrap();
        (c.result, c.detail.clone())
    }

    #[test]
    fn the_predicted_image_is_recognised_and_its_statement_checked() {
        let refs = [reference()];
        let log = boot_log(&refs[0].boot_applications, None);
        let a = appraise(&quoted(), &log, &refs, &[], &[7; 48]);
        assert_eq!(a.booted, Some(&refs[0]));
        assert_eq!(outcome(&a, NODE_BOOT).0, Outcome::Passed);
        assert_eq!(outcome(&a, NODE_BOOT_STATED).0, Outcome::Passed);
        let (o, d) = outcome(&a, NODE_FIRMWARE);
        assert_eq!(o, Outcome::Skipped);
        assert!(
            d.contains("0=a0a0a0a0a0a0") && d.contains("7=a7a7a7a7a7a7"),
            "{d}"
        );
        // Another image stated than the one booted.
        let a = appraise(&quoted(), &log, &refs, &[], &[8; 48]);
        assert_eq!(outcome(&a, NODE_BOOT_STATED).0, Outcome::Failed);
    }

    #[test]
    fn any_other_boot_is_refused_with_the_reason() {
        let refs = [reference()];
        let good = boot_log(&refs[0].boot_applications, None);
        let fails = |q: &BTreeMap<u32, [u8; 32]>, log: &[u8]| {
            let a = appraise(q, log, &refs, &[], &[7; 48]);
            assert!(a.booted.is_none());
            let (o, d) = outcome(&a, NODE_BOOT);
            assert_eq!(o, Outcome::Failed);
            d
        };
        let mut q = quoted();
        q.insert(11, [0x11; 32]);
        assert!(fails(&q, &good).contains("PCR 11 is 111111111111 (predicted 0b0b0b0b0b0b)"));
        q = quoted();
        q.remove(&12);
        assert!(fails(&q, &good).contains("PCR 12 not quoted"));
        // Another UKI (application digests differ), an extra application, none.
        let d = fails(&quoted(), &boot_log(&[[1; 32], [5; 32], [3; 32]], None));
        assert!(
            d.contains("PCR 4 started 010101010101 → 050505050505 → 030303030303"),
            "{d}"
        );
        assert!(fails(
            &quoted(),
            &boot_log(&[[1; 32], [2; 32], [3; 32], [4; 32]], None)
        )
        .contains("PCR 4 started"));
        assert!(fails(&quoted(), &boot_log(&[], None)).contains("no EFI application"));
        // An action whose digest is not the hash of its text, and an event type
        // no node boot logs in PCR 4.
        let lie = boot_log(
            &refs[0].boot_applications,
            Some((EV_EFI_ACTION, [4; 32], ACTION)),
        );
        assert!(fails(&quoted(), &lie).contains("not the hash of its data"));
        let other = boot_log(&refs[0].boot_applications, Some((0x0d, sha(b"x"), b"x")));
        assert!(fails(&quoted(), &other).contains("EV_IPL"));
        assert!(fails(&quoted(), b"not a log").contains("event log"));
        // More boot options tried before ours: extra actions are fine.
        let tried = boot_log(
            &refs[0].boot_applications,
            Some((EV_EFI_ACTION, sha(ACTION), ACTION)),
        );
        assert!(appraise(&quoted(), &tried, &refs, &[], &[7; 48])
            .booted
            .is_some());
        // No reference at all.
        let a = appraise(&quoted(), &good, &[], &[], &[7; 48]);
        assert!(outcome(&a, NODE_BOOT).1.contains("no reference node image"));
    }

    #[test]
    fn firmware_pcrs_match_a_model_or_fail() {
        let refs = [reference()];
        let log = boot_log(&refs[0].boot_applications, None);
        let models = [
            FirmwareModel {
                model: "other".into(),
                pcrs: [(0, [1; 32])].into(),
            },
            FirmwareModel {
                model: "lab-ovmf".into(),
                pcrs: [(0, [0xa0; 32]), (7, [0xa7; 32])].into(),
            },
        ];
        let a = appraise(&quoted(), &log, &refs, &models, &[7; 48]);
        assert_eq!(a.firmware_model, Some("lab-ovmf"));
        assert_eq!(outcome(&a, NODE_FIRMWARE).0, Outcome::Passed);
        let a = appraise(&quoted(), &log, &refs, &models[..1], &[7; 48]);
        assert_eq!(outcome(&a, NODE_FIRMWARE).0, Outcome::Failed);
        // A model with no values matches nothing.
        let empty = [FirmwareModel {
            model: "empty".into(),
            pcrs: BTreeMap::new(),
        }];
        let a = appraise(&quoted(), &log, &refs, &empty, &[7; 48]);
        assert_eq!(outcome(&a, NODE_FIRMWARE).0, Outcome::Failed);
    }
}
