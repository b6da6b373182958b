//! `bulwark-node-image measure`.

use std::path::PathBuf;

use bulwark_image::{TrustPolicy, MAGIC};
use bulwark_node_image::measure::{
    predict, predict_signed, Confidence, MeasureOptions, Prediction,
};
use bulwark_node_image::NodeImageError;
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SecureBoot {
    On,
    Off,
}

#[derive(Args, Debug)]
pub struct MeasureArgs {
    /// A node image bundle (.bwi) or a UKI (.efi).
    pub image: PathBuf,
    /// Secure Boot state (default: the one the bundle's prediction assumes;
    /// for a bare UKI, not given: PCR 7 is reported firmware-owned).
    #[arg(long, value_enum)]
    pub secure_boot: Option<SecureBoot>,
    /// Trusted public key (PEM) the bundle must be signed by; repeatable.
    #[arg(long = "trust")]
    pub trust: Vec<PathBuf>,
    /// For a bare UKI: the boot manager the firmware starts first.
    #[arg(long)]
    pub boot_manager: Option<PathBuf>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, NodeImageError> {
    std::fs::read(path).map_err(|source| NodeImageError::Io {
        path: path.display().to_string(),
        source,
    })
}

pub fn print_prediction(p: &Prediction) {
    println!("  uki authenticode sha256 {}", p.uki_authenticode_sha256);
    if let Some(b) = &p.boot_manager_authenticode_sha256 {
        println!("  boot manager authenticode sha256 {b}");
    }
    println!(
        "  secure boot {}",
        match p.secure_boot {
            Some(true) => "on",
            Some(false) => "off",
            None => "not given",
        }
    );
    for (i, v) in &p.pcrs {
        let c = match v.confidence {
            Confidence::Confirmed => "confirmed",
            Confidence::Unconfirmed => "UNCONFIRMED",
        };
        println!("  PCR {i:<2} {}  {c}: {}", v.sha256, v.basis);
    }
    println!(
        "  firmware-owned (reference values per hardware model): {:?}",
        p.firmware_owned
    );
    println!("  expected events:");
    for e in &p.events {
        println!(
            "    PCR {:<2} {:<34} {}  {}",
            e.pcr, e.event_type, e.digest, e.description
        );
    }
}

/// A bundle that fails verification, or whose prediction differs from its
/// signed manifest, is refused (exit 1).
pub fn run(a: MeasureArgs, json: bool) -> Result<(), NodeImageError> {
    let sb = a.secure_boot.map(|s| s == SecureBoot::On);
    let head = {
        use std::io::Read;
        let mut f = std::fs::File::open(&a.image).map_err(|source| NodeImageError::Io {
            path: a.image.display().to_string(),
            source,
        })?;
        let mut b = [0u8; 8];
        let n = f.read(&mut b).unwrap_or(0);
        b[..n].to_vec()
    };
    if !head.starts_with(&MAGIC) {
        if !a.trust.is_empty() {
            return Err(NodeImageError::Invalid(
                "--trust applies to a signed bundle; a bare UKI carries no signature to check"
                    .into(),
            ));
        }
        let uki = read(&a.image)?;
        let bm = a.boot_manager.as_deref().map(read).transpose()?;
        let p = predict(
            &uki,
            &MeasureOptions {
                secure_boot: sb,
                boot_manager: bm.as_deref(),
            },
        )?;
        if json {
            println!(
                "{}",
                serde_json::json!({"ok": true, "source": "uki", "prediction": p})
            );
        } else {
            println!("{}: UKI", a.image.display());
            print_prediction(&p);
        }
        return Ok(());
    }
    if a.boot_manager.is_some() {
        return Err(NodeImageError::Invalid(
            "--boot-manager applies to a bare UKI; a bundle carries its own".into(),
        ));
    }
    if a.trust.is_empty() {
        return Err(NodeImageError::Invalid(
            "a bundle is measured from its verified UKI: pass --trust PUB".into(),
        ));
    }
    let policy =
        TrustPolicy::from_pem_files(&a.trust, 1, 0).map_err(bulwark_image::ImageError::from)?;
    let v = predict_signed(&a.image, &policy, sb)?;
    let (p, mismatches, compared) = (&v.prediction, &v.mismatches, v.compared);
    let m = &v;
    let node = &v;
    let matches = mismatches.is_empty();
    if json && matches {
        // (A mismatch is reported once, as the refusal's JSON.)
        println!(
            "{}",
            serde_json::json!({"ok": matches, "source": "bundle", "name": m.name, "version": m.version,
                "matches_manifest": compared.then_some(matches), "mismatches": mismatches, "prediction": p})
        );
    } else if !json {
        println!(
            "{}: node image {} version {} (verified)",
            a.image.display(),
            m.name,
            m.version
        );
        print_prediction(p);
        if !compared {
            println!(
                "  not compared: the manifest's prediction assumes Secure Boot {}",
                if node.secure_boot { "on" } else { "off" }
            );
        } else if matches {
            println!("  the prediction equals the manifest's predicted PCRs");
        }
    }
    if !matches {
        return Err(NodeImageError::Refused(format!(
            "the prediction differs from the signed manifest: {}",
            mismatches.join("; ")
        )));
    }
    Ok(())
}
