//! `node build`: assemble the UKI, predict its PCRs, write an unsigned node
//! image bundle (sign it with `bulwark-image sign`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha384};

use crate::error::NodeImageError;
use crate::measure::{predict, MeasureOptions, Prediction};
use crate::pe::authenticode_sha256;
use crate::uki::{assemble, UkiInputs};

/// The command-line parameter that carries the node image's version.
pub const VERSION_PARAM: &str = "bulwark.node_version";

/// What goes into a node image.
#[derive(Clone, Debug)]
pub struct NodeBuildSpec {
    /// Image name (`[A-Za-z0-9._+-]`, 1..=128).
    pub name: String,
    /// Monotonic version; also put on the command line as `bulwark.node_version=V`.
    pub version: u64,
    /// Creation time (seconds since the epoch); `None`: `SOURCE_DATE_EPOCH` or now.
    pub created: Option<u64>,
    /// The kernel (Debian's EFI-stub vmlinuz).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// Extra kernel command line (printable ASCII), before the version parameter.
    pub cmdline: Option<String>,
    /// os-release file; `None`: one is generated from the name and version.
    pub osrel: Option<PathBuf>,
    /// Kernel release for `.uname`; `None`: read from the bzImage header if it has one.
    pub uname: Option<String>,
    /// The systemd stub.
    pub stub: PathBuf,
    /// The boot manager to ship and measure (systemd-boot); `None`: the firmware starts the UKI.
    pub boot_manager: Option<PathBuf>,
    /// The Secure Boot state the prediction assumes.
    pub secure_boot: bool,
    /// Sign the UKI and the boot manager for UEFI Secure Boot (with `sbsign`)
    /// before they go into the bundle; `None`: they go in as they are.
    pub secure_boot_signing: Option<SecureBootSigning>,
    /// Also write the UKI here.
    pub uki_out: Option<PathBuf>,
}

/// A temporary file next to `out`: its name with `.suffix` added.
fn beside(out: &Path, suffix: &str) -> PathBuf {
    let mut n = out.file_name().unwrap_or_default().to_os_string();
    n.push(format!(".{suffix}"));
    out.with_file_name(n)
}

/// The provider's Secure Boot db key: the private key (PEM, unencrypted) and its
/// X.509 certificate (PEM), as `sbsign --key --cert` take them.
#[derive(Clone, Debug)]
pub struct SecureBootSigning {
    /// Private key (PEM).
    pub key: PathBuf,
    /// Certificate (PEM) enrolled in the firmware's db.
    pub cert: PathBuf,
}

/// Signs `bytes` (a PE image) with `sbsign`: the signed image. `what` names it in
/// errors; the temporary files live beside `scratch`. The prediction is made from
/// the signed files: sbsign leaves the file-aligned UKI's Authenticode digest as it
/// was, but pads systemd-boot (not 8-byte aligned), whose digest (PCR 4) changes.
fn sbsign(
    bytes: &[u8],
    with: &SecureBootSigning,
    scratch: &Path,
    what: &str,
) -> Result<Vec<u8>, NodeImageError> {
    let (input, output) = (
        beside(scratch, &format!("{what}.unsigned.tmp")),
        beside(scratch, &format!("{what}.signed.tmp")),
    );
    write(&input, bytes)?;
    let out = std::process::Command::new("sbsign")
        .arg("--key")
        .arg(&with.key)
        .arg("--cert")
        .arg(&with.cert)
        .arg("--output")
        .arg(&output)
        .arg(&input)
        .output();
    let _ = std::fs::remove_file(&input);
    let result = match out {
        Err(e) => Err(NodeImageError::Invalid(format!(
            "running sbsign (Debian sbsigntool) to sign the {what} for Secure Boot: {e}"
        ))),
        Ok(o) if !o.status.success() => Err(NodeImageError::Invalid(format!(
            "sbsign could not sign the {what} with {} and {} ({}): {}",
            with.key.display(),
            with.cert.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Ok(_) => read(&output),
    };
    let _ = std::fs::remove_file(&output);
    result
}

/// What was built.
#[derive(Clone, Debug, Serialize)]
pub struct NodeImageSummary {
    /// The unsigned bundle.
    pub bundle: PathBuf,
    /// Bundle size in bytes.
    pub bundle_size: u64,
    /// Where the UKI was also written, if asked.
    pub uki_path: Option<PathBuf>,
    /// UKI size in bytes.
    pub uki_size: u64,
    /// SHA-384 of the UKI bytes (as in the manifest).
    pub uki_sha384: String,
    /// Whether the UKI (and the boot manager) carry a Secure Boot signature
    /// (`--sb-key`); the certificate that signed them.
    pub secure_boot_signed_with: Option<PathBuf>,
    /// The command line embedded in `.cmdline`.
    pub cmdline: String,
    /// The kernel release put in `.uname`, if any.
    pub uname: Option<String>,
    /// Name and version.
    pub name: String,
    /// Version.
    pub version: u64,
    /// The offline PCR prediction stored in the manifest.
    pub prediction: Prediction,
    /// Wall time of the build, seconds.
    pub build_seconds: f64,
}

fn read(path: &Path) -> Result<Vec<u8>, NodeImageError> {
    std::fs::read(path).map_err(|source| NodeImageError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), NodeImageError> {
    std::fs::write(path, bytes).map_err(|source| NodeImageError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The kernel release from a bzImage's setup header (`kernel_version`
/// pointer at 0x20e, boot protocol "HdrS"): the first word of the version
/// string, or `None` if the image has none.
pub fn kernel_release(bzimage: &[u8]) -> Option<String> {
    if bzimage.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([*bzimage.get(0x20e)?, *bzimage.get(0x20f)?]) as usize;
    if ptr == 0 {
        return None;
    }
    let s = bzimage.get(ptr + 0x200..)?;
    let s = &s[..s.iter().take(256).position(|&b| b == 0 || b == b' ')?];
    let s = std::str::from_utf8(s).ok()?;
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())).then(|| s.to_string())
}

/// The command line embedded in the UKI: the caller's, then the version.
pub fn node_cmdline(extra: Option<&str>, version: u64) -> Result<String, NodeImageError> {
    let extra = extra.unwrap_or("").trim();
    if !extra.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(NodeImageError::Invalid(
            "--cmdline must be printable ASCII".into(),
        ));
    }
    if extra
        .split(' ')
        .any(|w| w.starts_with(&format!("{VERSION_PARAM}=")))
    {
        return Err(NodeImageError::Invalid(format!(
            "--cmdline must not set {VERSION_PARAM}: it is added from --version"
        )));
    }
    Ok(if extra.is_empty() {
        format!("{VERSION_PARAM}={version}")
    } else {
        format!("{extra} {VERSION_PARAM}={version}")
    })
}

/// The `.osrel` written when the caller gives none. systemd-boot 252 sorts
/// type #2 entries by `IMAGE_ID` (else `ID`) and then by `IMAGE_VERSION` (else
/// `VERSION_ID`): every version carries the same `IMAGE_ID` (the image name)
/// and its own `IMAGE_VERSION`, so the newest good slot sorts first.
pub fn default_osrel(name: &str, version: u64) -> String {
    format!(
        "NAME=\"Bulwark\"\nID=bulwark\nPRETTY_NAME=\"Bulwark node OS {version}\"\nVERSION_ID={version}\nIMAGE_ID={name}\nIMAGE_VERSION={version}\n"
    )
}

/// The value of `key` in an os-release file (the last assignment; quotes
/// removed), or `None`.
pub fn osrel_value(osrel: &str, key: &str) -> Option<String> {
    osrel
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| {
            let v = v.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| v.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)));
            unquoted.unwrap_or(v).to_string()
        })
        .next_back()
}

/// Check a caller's os-release: it must carry `IMAGE_ID=<name>` and
/// `IMAGE_VERSION=<version>`, which systemd-boot sorts the slots by.
pub fn check_osrel(osrel: &[u8], name: &str, version: u64) -> Result<(), NodeImageError> {
    let text = std::str::from_utf8(osrel)
        .map_err(|_| NodeImageError::Invalid("--osrel is not UTF-8 text".into()))?;
    let hint = "systemd-boot sorts the A/B slots by IMAGE_ID and IMAGE_VERSION; \
                leave out --osrel to get one generated";
    match osrel_value(text, "IMAGE_VERSION") {
        Some(v) if v == version.to_string() => {}
        Some(v) => {
            return Err(NodeImageError::Invalid(format!(
                "--osrel has IMAGE_VERSION={v} but --version is {version} ({hint})"
            )))
        }
        None => {
            return Err(NodeImageError::Invalid(format!(
                "--osrel has no IMAGE_VERSION; it must be IMAGE_VERSION={version} ({hint})"
            )))
        }
    }
    match osrel_value(text, "IMAGE_ID") {
        Some(v) if v == name => Ok(()),
        Some(v) => Err(NodeImageError::Invalid(format!(
            "--osrel has IMAGE_ID={v} but the image name is {name} ({hint})"
        ))),
        None => Err(NodeImageError::Invalid(format!(
            "--osrel has no IMAGE_ID; it must be IMAGE_ID={name} ({hint})"
        ))),
    }
}

fn created(spec: &NodeBuildSpec) -> u64 {
    spec.created.unwrap_or_else(bulwark_image::build_time)
}

/// Build the UKI and the unsigned node image bundle at `out`.
pub fn build_node_image(
    spec: &NodeBuildSpec,
    out: &Path,
) -> Result<NodeImageSummary, NodeImageError> {
    let t0 = Instant::now();
    bulwark_image::validate_name(&spec.name)?;
    let stub = read(&spec.stub)?;
    let kernel = read(&spec.kernel)?;
    let initrd = read(&spec.initrd)?;
    let osrel = match &spec.osrel {
        Some(p) => {
            let b = read(p)?;
            check_osrel(&b, &spec.name, spec.version)?;
            b
        }
        None => default_osrel(&spec.name, spec.version).into_bytes(),
    };
    let uname = spec.uname.clone().or_else(|| kernel_release(&kernel));
    let cmdline = node_cmdline(spec.cmdline.as_deref(), spec.version)?;
    let mut boot_manager = spec.boot_manager.as_deref().map(read).transpose()?;
    let uki = assemble(&UkiInputs {
        stub: &stub,
        linux: &kernel,
        initrd: &initrd,
        cmdline: cmdline.as_bytes(),
        osrel: &osrel,
        uname: uname.as_deref().map(str::as_bytes),
    })?;
    // Secure Boot signatures go on before anything is hashed into the manifest: the
    // bundle holds the files that boot.
    let uki = match &spec.secure_boot_signing {
        Some(with) => {
            if let Some(b) = &boot_manager {
                boot_manager = Some(sbsign(b, with, out, "boot manager")?);
            }
            sbsign(&uki, with, out, "UKI")?
        }
        None => uki,
    };
    let prediction = predict(
        &uki,
        &MeasureOptions {
            secure_boot: Some(spec.secure_boot),
            boot_manager: boot_manager.as_deref(),
        },
    )?;
    let bm_digest = boot_manager
        .as_deref()
        .map(authenticode_sha256)
        .transpose()?;
    let mut pcrs = std::collections::BTreeMap::new();
    for (i, v) in &prediction.pcrs {
        let mut d = [0u8; 32];
        hex::decode_to_slice(&v.sha256, &mut d)
            .map_err(|_| NodeImageError::Measure("prediction is not hex".into()))?;
        pcrs.insert(*i, d);
    }
    let node = bulwark_image::NodeInfo {
        boot_manager_authenticode_sha256: bm_digest,
        pcrs,
        secure_boot: spec.secure_boot,
        uki_authenticode_sha256: authenticode_sha256(&uki)?,
    };

    // The bundle builder reads the UKI from a file.
    let (uki_file, temporary) = match &spec.uki_out {
        Some(p) => (p.clone(), false),
        None => (beside(out, "uki.tmp"), true),
    };
    write(&uki_file, &uki)?;
    // A signed boot manager goes to the builder through a file of its own too.
    let signed_boot_manager = match (&spec.secure_boot_signing, &boot_manager) {
        (Some(_), Some(bytes)) => {
            let path = beside(out, "bootloader.tmp");
            if let Err(e) = write(&path, bytes) {
                if temporary {
                    let _ = std::fs::remove_file(&uki_file);
                }
                return Err(e);
            }
            Some(path)
        }
        _ => None,
    };
    let result = bulwark_image::build_node(
        &bulwark_image::NodeBuildSpec {
            name: spec.name.clone(),
            version: spec.version,
            created: created(spec),
            uki: uki_file.clone(),
            bootloader: signed_boot_manager
                .clone()
                .or_else(|| spec.boot_manager.clone()),
            node,
        },
        out,
        &|_| {},
    );
    if temporary {
        let _ = std::fs::remove_file(&uki_file);
    }
    if let Some(p) = &signed_boot_manager {
        let _ = std::fs::remove_file(p);
    }
    result?;
    let bundle_size = std::fs::metadata(out)
        .map_err(|source| NodeImageError::Io {
            path: out.display().to_string(),
            source,
        })?
        .len();
    Ok(NodeImageSummary {
        bundle: out.to_path_buf(),
        bundle_size,
        uki_path: spec.uki_out.clone(),
        uki_size: uki.len() as u64,
        uki_sha384: hex::encode(Sha384::digest(&uki)),
        secure_boot_signed_with: spec.secure_boot_signing.as_ref().map(|s| s.cert.clone()),
        cmdline,
        uname,
        name: spec.name.clone(),
        version: spec.version,
        prediction,
        build_seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_carries_the_version_and_refuses_a_second_one() {
        assert_eq!(node_cmdline(None, 3).unwrap(), "bulwark.node_version=3");
        assert_eq!(
            node_cmdline(Some(" console=ttyS0 "), 4).unwrap(),
            "console=ttyS0 bulwark.node_version=4"
        );
        assert!(node_cmdline(Some("bulwark.node_version=9"), 4).is_err());
        assert!(node_cmdline(Some("a\tb"), 4).is_err());
    }

    #[test]
    fn default_osrel_sorts_every_version_alike() {
        for v in [1, 9, 10, 12345] {
            let o = default_osrel("bulwark-node", v);
            assert_eq!(osrel_value(&o, "ID").as_deref(), Some("bulwark"));
            assert_eq!(osrel_value(&o, "IMAGE_ID").as_deref(), Some("bulwark-node"));
            assert_eq!(osrel_value(&o, "IMAGE_VERSION"), Some(v.to_string()), "{o}");
            check_osrel(o.as_bytes(), "bulwark-node", v).unwrap();
        }
    }

    #[test]
    fn caller_osrel_must_match_name_and_version() {
        let ok = b"ID=debian\nIMAGE_ID=\"bulwark-node\"\nIMAGE_VERSION='7'\n";
        check_osrel(ok, "bulwark-node", 7).unwrap();
        for (osrel, want) in [
            (
                &b"IMAGE_ID=bulwark-node\nIMAGE_VERSION=6\n"[..],
                "IMAGE_VERSION=6 but --version is 7",
            ),
            (b"IMAGE_ID=bulwark-node\n", "no IMAGE_VERSION"),
            (b"IMAGE_ID=other\nIMAGE_VERSION=7\n", "IMAGE_ID=other"),
            (b"ID=bulwark\nIMAGE_VERSION=7\n", "no IMAGE_ID"),
            (b"IMAGE_VERSION=7\n\xff", "UTF-8"),
        ] {
            let e = check_osrel(osrel, "bulwark-node", 7)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn kernel_release_reads_the_setup_header() {
        let mut k = vec![0u8; 0x2000];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x20e..0x210].copy_from_slice(&0x1000u16.to_le_bytes());
        k[0x1200..0x1200 + 30].copy_from_slice(b"6.1.0-57-cloud-amd64 (debian) ");
        assert_eq!(kernel_release(&k).as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(kernel_release(&k[..0x1205]), None);
        assert_eq!(kernel_release(b"MZ"), None);
    }
}
