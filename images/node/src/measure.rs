//! Offline prediction of the PCRs a node image determines, from the UKI bytes
//! alone (SHA-256 bank), with the events the TPM event log is expected to hold.
//!
//! - PCR 4: `EV_EFI_ACTION` "Calling EFI Application from Boot Option",
//!   `EV_SEPARATOR`, then one `EV_EFI_BOOT_SERVICES_APPLICATION` per image the
//!   firmware loads: the boot manager (when the disk boots through
//!   systemd-boot), the UKI, and with Secure Boot off the kernel in `.linux`
//!   (systemd 252's stub loads it with `LoadImage`). Digests are Authenticode
//!   SHA-256. Measured in the lab (docs/node-image.md).
//! - PCR 7: only when the Secure Boot state is given; with it off, the values
//!   OVMF measures with no keys enrolled (`SecureBoot` = 0, empty PK, KEK, db,
//!   dbx, then the separator). With it on, it depends on the enrolled keys: firmware-owned.
//! - PCR 9: the Linux EFI stub's `EV_EVENT_TAG` events: "LOADED_IMAGE::LoadOptions"
//!   over the UTF-16 command line the systemd stub passes (with its NUL), then
//!   "Linux initrd" over the initrd.
//! - PCR 11: systemd-stub 252 measures, for each of `.linux`, `.osrel`,
//!   `.cmdline`, `.initrd`, `.splash`, `.dtb`, `.pcrpkey` present, in that
//!   order, SHA-256 of the name with its NUL and then of the section's
//!   contents (`VirtualSize` bytes). Equals `systemd-measure calculate --phase=''`.
//! - PCR 12: zero when the firmware starts the UKI directly (the stub measures
//!   the command line there only when a boot loader overrides the embedded
//!   one). Through systemd-boot: `EV_IPL` of the UTF-16 command line by
//!   systemd-boot, and with Secure Boot off once more by the stub, which
//!   accepts the (identical) override.
//!
//! PCRs 4, 9, 11 and 12 (and 7 with Secure Boot off) were checked against
//! measured boots, Secure Boot off and on, directly and through systemd-boot
//! (OVMF + swtpm, Debian's 6.1 kernel; docs/node-image.md). `Confidence`
//! stays in the output so that a prediction for an untested path can say so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::NodeImageError;
use crate::pe::{authenticode_sha256, PeImage};

/// The sections systemd-stub 252 measures into PCR 11, in its order.
pub const PCR11_SECTIONS: [&str; 7] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
];
/// The PCRs the firmware alone determines; reference values come per hardware model.
pub const FIRMWARE_OWNED: [u32; 6] = [0, 1, 2, 3, 5, 6];
/// `EV_EFI_ACTION` event data before the first boot option is started.
pub const CALLING_EFI_APPLICATION: &str = "Calling EFI Application from Boot Option";

/// `EFI_GLOBAL_VARIABLE` GUID, as stored (mixed-endian).
const EFI_GLOBAL_VARIABLE: [u8; 16] = guid(
    0x8be4_df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);
/// `EFI_IMAGE_SECURITY_DATABASE_GUID`.
const EFI_IMAGE_SECURITY_DATABASE: [u8; 16] = guid(
    0xd719_b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);

const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// What the prediction needs besides the UKI.
#[derive(Clone, Copy, Debug, Default)]
pub struct MeasureOptions<'a> {
    /// Secure Boot state, if known. `None`: PCR 7 is reported firmware-owned
    /// and PCR 4 is predicted for Secure Boot off.
    pub secure_boot: Option<bool>,
    /// The boot manager the firmware starts first (systemd-boot), if the disk
    /// boots through one; `None` when the firmware starts the UKI itself.
    pub boot_manager: Option<&'a [u8]>,
}

/// How sure the prediction of one PCR is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// Checked against an independent tool or a measured boot.
    Confirmed,
    /// Derived from the components' documented behaviour, not yet checked
    /// against a measured event log.
    Unconfirmed,
}

/// One predicted PCR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrValue {
    /// The value, lower-case hex.
    pub sha256: String,
    /// How sure.
    pub confidence: Confidence,
    /// What it assumes.
    pub basis: String,
}

/// One expected event of the TPM event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedEvent {
    /// PCR index.
    pub pcr: u32,
    /// TCG event type name.
    pub event_type: String,
    /// SHA-256 digest extended, lower-case hex.
    pub digest: String,
    /// What it is.
    pub description: String,
}

/// The offline prediction for one UKI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prediction {
    /// Hash bank (always "sha256").
    pub bank: String,
    /// Authenticode SHA-256 of the UKI.
    pub uki_authenticode_sha256: String,
    /// Secure Boot state assumed (`None`: not given).
    pub secure_boot: Option<bool>,
    /// Whether the boot manager is in the chain.
    pub boot_manager_authenticode_sha256: Option<String>,
    /// Predicted PCRs, by index.
    pub pcrs: BTreeMap<u32, PcrValue>,
    /// PCRs left to the firmware (reference values per hardware model).
    pub firmware_owned: Vec<u32>,
    /// The events expected in the log for the predicted PCRs, in order per PCR.
    pub events: Vec<ExpectedEvent>,
}

impl Prediction {
    /// The predicted values as (index as decimal string, hex), the form the
    /// node manifest stores.
    pub fn pcr_map(&self) -> BTreeMap<String, String> {
        self.pcrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.sha256.clone()))
            .collect()
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Replays digests into a PCR that starts at zero.
fn replay<'a>(digests: impl IntoIterator<Item = &'a [u8; 32]>) -> [u8; 32] {
    let mut pcr = [0u8; 32];
    for d in digests {
        let mut h = Sha256::new();
        h.update(pcr);
        h.update(d);
        pcr = h.finalize().into();
    }
    pcr
}

struct Builder {
    events: Vec<(u32, &'static str, [u8; 32], String)>,
}

impl Builder {
    fn add(&mut self, pcr: u32, ty: &'static str, digest: [u8; 32], desc: impl Into<String>) {
        self.events.push((pcr, ty, digest, desc.into()));
    }
    fn value(&self, pcr: u32) -> [u8; 32] {
        replay(self.events.iter().filter(|e| e.0 == pcr).map(|e| &e.2))
    }
}

fn efi_variable_data(guid: &[u8; 16], name: &str, data: &[u8]) -> Vec<u8> {
    let name16: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut v = guid.to_vec();
    v.extend_from_slice(&(name.encode_utf16().count() as u64).to_le_bytes());
    v.extend_from_slice(&(data.len() as u64).to_le_bytes());
    v.extend_from_slice(&name16);
    v.extend_from_slice(data);
    v
}

/// PCR 11 alone (systemd-stub 252), with its events.
pub fn pcr11_events(uki: &[u8]) -> Result<Vec<(String, [u8; 32])>, NodeImageError> {
    let img = PeImage::parse(uki)?;
    let mut out = Vec::new();
    for name in PCR11_SECTIONS {
        if let Some(s) = img.section(name)? {
            let mut n = name.as_bytes().to_vec();
            n.push(0);
            out.push((format!("section name {name}"), sha256(&n)));
            out.push((
                format!("section {name} ({} bytes)", s.virtual_size),
                sha256(&s.loaded_bytes(uki)?),
            ));
        }
    }
    Ok(out)
}

/// Predict the PCRs the UKI determines.
pub fn predict(uki: &[u8], opts: &MeasureOptions<'_>) -> Result<Prediction, NodeImageError> {
    let img = PeImage::parse(uki)?;
    let section = |name: &str| -> Result<Vec<u8>, NodeImageError> {
        img.section(name)?
            .ok_or_else(|| NodeImageError::Measure(format!("the UKI has no {name} section")))?
            .loaded_bytes(uki)
    };
    let linux = section(".linux")?;
    let initrd = section(".initrd")?;
    let cmdline = section(".cmdline")?;
    let uki_digest = authenticode_sha256(uki)?;
    let sb = opts.secure_boot.unwrap_or(false);
    let mut b = Builder { events: Vec::new() };

    // PCR 4.
    b.add(
        4,
        "EV_EFI_ACTION",
        sha256(CALLING_EFI_APPLICATION.as_bytes()),
        CALLING_EFI_APPLICATION,
    );
    b.add(4, "EV_SEPARATOR", sha256(&[0; 4]), "separator");
    let bm_digest = match opts.boot_manager {
        Some(bm) => {
            let d = authenticode_sha256(bm)
                .map_err(|e| NodeImageError::Measure(format!("boot manager: {e}")))?;
            b.add(
                4,
                "EV_EFI_BOOT_SERVICES_APPLICATION",
                d,
                "boot manager (systemd-boot), Authenticode",
            );
            Some(d)
        }
        None => None,
    };
    b.add(
        4,
        "EV_EFI_BOOT_SERVICES_APPLICATION",
        uki_digest,
        "UKI, Authenticode",
    );
    if !sb {
        let d = authenticode_sha256(&linux).map_err(|e| {
            NodeImageError::Measure(format!("the .linux section is not a PE kernel: {e}"))
        })?;
        b.add(
            4,
            "EV_EFI_BOOT_SERVICES_APPLICATION",
            d,
            "kernel in .linux, loaded by the stub with LoadImage (Secure Boot off), Authenticode",
        );
    }

    // PCR 7.
    if opts.secure_boot == Some(false) {
        for (guid, name, data) in [
            (&EFI_GLOBAL_VARIABLE, "SecureBoot", &[0u8][..]),
            (&EFI_GLOBAL_VARIABLE, "PK", &[][..]),
            (&EFI_GLOBAL_VARIABLE, "KEK", &[][..]),
            (&EFI_IMAGE_SECURITY_DATABASE, "db", &[][..]),
            (&EFI_IMAGE_SECURITY_DATABASE, "dbx", &[][..]),
        ] {
            b.add(
                7,
                "EV_EFI_VARIABLE_DRIVER_CONFIG",
                sha256(&efi_variable_data(guid, name, data)),
                format!("{name} ({} bytes)", data.len()),
            );
        }
        b.add(7, "EV_SEPARATOR", sha256(&[0; 4]), "separator");
    }

    // PCR 9: the UTF-16 command line with its NUL, then the initrd.
    let cmdline_str = String::from_utf8_lossy(&cmdline);
    let cmdline_str = cmdline_str.split('\0').next().unwrap_or("");
    let mut load_options: Vec<u8> = cmdline_str
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    load_options.extend_from_slice(&[0, 0]);
    b.add(
        9,
        "EV_EVENT_TAG",
        sha256(&load_options),
        format!(
            "LOADED_IMAGE::LoadOptions ({} bytes, UTF-16)",
            load_options.len()
        ),
    );
    b.add(
        9,
        "EV_EVENT_TAG",
        sha256(&initrd),
        format!("Linux initrd ({} bytes)", initrd.len()),
    );

    // PCR 11.
    for (desc, d) in pcr11_events(uki)? {
        b.add(11, "EV_IPL", d, desc);
    }

    // PCR 12: systemd-boot passes the UKI's .cmdline as LoadOptions and
    // measures it; with Secure Boot off the stub accepts that override and
    // measures it again. Booted directly, nothing is measured here.
    if opts.boot_manager.is_some() {
        b.add(
            12,
            "EV_IPL",
            sha256(&load_options),
            "LoadOptions passed by systemd-boot (UTF-16 command line + NUL)",
        );
        if !sb {
            b.add(
                12,
                "EV_IPL",
                sha256(&load_options),
                "command line override accepted by the stub (Secure Boot off)",
            );
        }
    }

    let mut pcrs = BTreeMap::new();
    let hexv = |v: [u8; 32]| hex::encode(v);
    pcrs.insert(
        4,
        PcrValue {
            sha256: hexv(b.value(4)),
            confidence: Confidence::Confirmed,
            basis: format!(
                "one boot option tried; {}; Secure Boot {}",
                if opts.boot_manager.is_some() {
                    "firmware -> systemd-boot -> UKI"
                } else {
                    "firmware -> UKI"
                },
                if sb {
                    "on: the kernel in .linux is not measured"
                } else {
                    "off: the kernel in .linux is measured too"
                }
            ),
        },
    );
    if opts.secure_boot == Some(false) {
        pcrs.insert(
            7,
            PcrValue {
                sha256: hexv(b.value(7)),
                confidence: Confidence::Confirmed,
                basis: "Secure Boot off, no keys enrolled (OVMF); equals the lab's measured value"
                    .into(),
            },
        );
    }
    pcrs.insert(
        9,
        PcrValue {
            sha256: hexv(b.value(9)),
            confidence: Confidence::Confirmed,
            basis: "Linux EFI stub: LoadOptions (UTF-16 command line + NUL) then the initrd; equals measured boots".into(),
        },
    );
    pcrs.insert(
        11,
        PcrValue {
            sha256: hexv(b.value(11)),
            confidence: Confidence::Confirmed,
            basis: "systemd-stub 252 sections; equals systemd-measure calculate --phase=''".into(),
        },
    );
    pcrs.insert(
        12,
        PcrValue {
            sha256: hexv(b.value(12)),
            confidence: Confidence::Confirmed,
            basis: if opts.boot_manager.is_some() {
                "systemd-boot passes and measures the UKI's .cmdline; with Secure Boot off the stub measures it again".into()
            } else {
                "booted directly: no command line override, so nothing (the embedded .cmdline goes into PCR 11 only)".into()
            },
        },
    );
    let mut firmware_owned = FIRMWARE_OWNED.to_vec();
    if opts.secure_boot != Some(false) {
        firmware_owned.push(7);
        firmware_owned.sort_unstable();
    }
    Ok(Prediction {
        bank: "sha256".into(),
        uki_authenticode_sha256: hexv(uki_digest),
        secure_boot: opts.secure_boot,
        boot_manager_authenticode_sha256: bm_digest.map(hexv),
        pcrs,
        firmware_owned,
        events: b
            .events
            .into_iter()
            .map(|(pcr, ty, d, description)| ExpectedEvent {
                pcr,
                event_type: ty.into(),
                digest: hex::encode(d),
                description,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr7_secure_boot_off_matches_the_lab() {
        // docs: UEFI-TPM lab, SB off, PCR 7 = 65CAF8DD…3068.
        let mut b = Builder { events: Vec::new() };
        for (guid, name, data) in [
            (&EFI_GLOBAL_VARIABLE, "SecureBoot", &[0u8][..]),
            (&EFI_GLOBAL_VARIABLE, "PK", &[][..]),
            (&EFI_GLOBAL_VARIABLE, "KEK", &[][..]),
            (&EFI_IMAGE_SECURITY_DATABASE, "db", &[][..]),
            (&EFI_IMAGE_SECURITY_DATABASE, "dbx", &[][..]),
        ] {
            b.add(7, "", sha256(&efi_variable_data(guid, name, data)), "");
        }
        b.add(7, "", sha256(&[0; 4]), "");
        let v = hex::encode(b.value(7));
        assert!(v.starts_with("65caf8dd") && v.ends_with("3068"), "{v}");
    }

    /// Random byte flips in a small UKI's headers: predict returns Ok or a
    /// clear error, never panics or allocates without bound.
    #[test]
    fn fuzzed_uki_never_panics() {
        let Ok(stub) = std::fs::read(crate::uki::DEFAULT_STUB) else {
            eprintln!(
                "SKIPPED: {} missing (systemd-boot-efi)",
                crate::uki::DEFAULT_STUB
            );
            return;
        };
        let uki = crate::uki::assemble(&crate::uki::UkiInputs {
            stub: &stub,
            linux: &stub,
            initrd: b"initrd",
            cmdline: b"console=ttyS0",
            osrel: b"ID=bulwark\n",
            uname: None,
        })
        .unwrap();
        let opts = MeasureOptions::default();
        assert!(predict(&uki, &opts).is_ok());
        let headers = PeImage::parse(&uki).unwrap().size_of_headers as u64;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut ok, mut failed) = (0, 0);
        for _ in 0..1500 {
            let mut m = uki.clone();
            for _ in 0..1 + next() % 3 {
                let pos = (next() % headers) as usize;
                m[pos] ^= 1 << (next() % 8);
            }
            match predict(&m, &opts) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    failed += 1;
                }
            }
        }
        assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
    }

    #[test]
    fn replay_of_nothing_is_zero() {
        assert_eq!(replay(std::iter::empty()), [0; 32]);
    }
}

/// A signed node image's prediction: the bundle verified, the prediction made
/// from its verified UKI and boot manager, and compared with the manifest's
/// signed values (what `bulwark-node-image measure IMAGE --trust` and the
/// verifier's `node.boot_images` use).
#[derive(Debug, Clone)]
pub struct SignedPrediction {
    pub name: String,
    pub version: u64,
    /// SHA-384 of the signed manifest.
    pub manifest_sha384: [u8; 48],
    /// The Secure Boot state the manifest's values assume.
    pub secure_boot: bool,
    /// The manifest's signed PCR values.
    pub signed_pcrs: BTreeMap<u32, [u8; 32]>,
    pub prediction: Prediction,
    /// Whether the prediction was compared with the manifest (the same
    /// Secure Boot state).
    pub compared: bool,
    /// PCRs where the prediction and the manifest differ (empty: they agree).
    pub mismatches: Vec<String>,
}

impl SignedPrediction {
    /// The Authenticode digests of the EFI applications PCR 4 records, in order.
    pub fn boot_applications(&self) -> Vec<[u8; 32]> {
        self.prediction
            .events
            .iter()
            .filter(|e| e.pcr == 4 && e.event_type == "EV_EFI_BOOT_SERVICES_APPLICATION")
            .filter_map(|e| hex::decode(&e.digest).ok()?.try_into().ok())
            .collect()
    }
}

/// Verify the node image at `path` against `trust` and predict its boot with
/// `secure_boot` (default: the state its manifest assumes).
pub fn predict_signed(
    path: &std::path::Path,
    trust: &bulwark_image::TrustPolicy,
    secure_boot: Option<bool>,
) -> Result<SignedPrediction, NodeImageError> {
    use bulwark_image::{Bundle, ComponentKind};
    let verified = Bundle::open(path)?.verify(trust)?;
    let m = verified.manifest();
    let Some(node) = &m.node else {
        return Err(NodeImageError::Invalid(format!(
            "{} is a {} image, not a node image",
            m.name,
            m.kind_name()
        )));
    };
    let uki = verified
        .read_component(ComponentKind::Uki)?
        .ok_or_else(|| NodeImageError::Invalid("the node image has no uki".into()))?;
    let bm = verified.read_component(ComponentKind::Bootloader)?;
    let sb = secure_boot.unwrap_or(node.secure_boot);
    let prediction = predict(
        &uki,
        &MeasureOptions {
            secure_boot: Some(sb),
            boot_manager: bm.as_deref(),
        },
    )?;
    let compared = sb == node.secure_boot;
    let mut mismatches = Vec::new();
    if compared {
        for (i, want) in &node.pcrs {
            let got = prediction.pcrs.get(i).map(|v| v.sha256.clone());
            if got.as_deref() != Some(hex::encode(want).as_str()) {
                mismatches.push(format!(
                    "PCR {i}: manifest {}, prediction {}",
                    hex::encode(want),
                    got.unwrap_or_else(|| "none".into())
                ));
            }
        }
    }
    Ok(SignedPrediction {
        name: m.name.clone(),
        version: m.version,
        manifest_sha384: verified.manifest_sha384(),
        secure_boot: node.secure_boot,
        signed_pcrs: node.pcrs.clone(),
        prediction,
        compared,
        mismatches,
    })
}
