//! `bulwark-node-image install`: verify a signed node image, then write a
//! fresh disk (GPT, ESP with systemd-boot and the image as the good slot,
//! state partition).

/// `println!` that ignores a closed stdout (`| head`) instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
pub(crate) use outln;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bulwark_image::TrustPolicy;
use bulwark_node_image::disk::DEFAULT_ESP_MIB;
use bulwark_node_image::install::{
    install, install_bytes, read_node_image, InstallOptions, NodeImagePayload,
};
use bulwark_node_image::provision::{check_state_inputs, format_state};
use bulwark_node_image::NodeImageError;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// Verifying a node image: shared by install and update.
#[derive(Args)]
pub struct ImageArgs {
    /// The signed node image bundle.
    pub image: PathBuf,
    /// Trusted public key (PEM); repeat for several.
    #[arg(long = "trust", required = true)]
    pub trust: Vec<PathBuf>,
    /// How many distinct trusted keys must have signed.
    #[arg(long, default_value_t = 1)]
    pub threshold: usize,
}

#[derive(Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub image: ImageArgs,
    /// Target: a block device (must not be mounted) or a disk image file.
    #[arg(long)]
    pub disk: PathBuf,
    /// Size of the EFI system partition in MiB (at least 40).
    #[arg(long, default_value_t = DEFAULT_ESP_MIB)]
    pub esp_mib: u64,
    /// For a disk image file: create it, or extend it, to this size (bytes,
    /// or with a K, M, G or T suffix, powers of 1024).
    #[arg(long, value_parser = parse_size)]
    pub create_size: Option<u64>,
    /// Format the state partition ext4 (else the node mounts a tmpfs until it is
    /// formatted, and says so loudly).
    #[arg(long)]
    pub format_state: bool,
    /// Format the state partition with this directory's contents (implies
    /// --format-state): bulwarkd's TLS files, the TPM's EK issuer chain, the
    /// provider's public key, as the node's bulwarkd config names them under
    /// /var/lib/bulwark. NOT encrypted: readable from the disk.
    #[arg(long)]
    pub state_files: Option<PathBuf>,
}

/// Parse `123`, `64M`, `2G`, ... (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix {c:?} (K, M, G, T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} too large"))
}

pub fn show_progress(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

pub fn progress_bar(show: bool, total: u64, what: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg:>9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}

/// Load the trust policy and verify the image, with a progress bar.
pub fn verify(a: &ImageArgs, json: bool) -> Result<NodeImagePayload, NodeImageError> {
    let policy = TrustPolicy::from_pem_files(&a.trust, a.threshold, 0)
        .map_err(bulwark_image::ImageError::from)?;
    let total = std::fs::metadata(&a.image).map_or(0, |m| m.len());
    let bar = progress_bar(show_progress(json), total, "verifying");
    let r = read_node_image(&a.image, &policy, &|n| bar.inc(n));
    bar.finish_and_clear();
    r
}

pub fn run(a: &InstallArgs, json: bool) -> Result<(), NodeImageError> {
    let t0 = Instant::now();
    let format = a.format_state || a.state_files.is_some();
    if format {
        // Before the disk is touched: a typo must not leave a half-provisioned disk.
        check_state_inputs(a.state_files.as_deref())?;
    }
    let payload = verify(&a.image, json)?;
    let verify_s = t0.elapsed().as_secs_f64();
    let bar = progress_bar(show_progress(json), install_bytes(&payload), "writing");
    let opts = InstallOptions {
        esp_mib: a.esp_mib,
        create_size: a.create_size,
    };
    let t1 = Instant::now();
    let r = install(&payload, &a.disk, &opts, &|n| bar.inc(n));
    bar.finish_and_clear();
    let r = r?;
    let write_s = t1.elapsed().as_secs_f64();
    let state = if format {
        Some(format_state(&a.disk, &r, a.state_files.as_deref())?)
    } else {
        None
    };
    if json {
        let mut v = serde_json::to_value(&r).unwrap_or_default();
        v["ok"] = json!(true);
        v["state"] = serde_json::to_value(&state).unwrap_or_default();
        v["boot_manager"] = json!("signed bootloader component");
        v["boot_manager_sha384"] = json!(hex::encode(payload.boot_manager_sha384));
        v["verify_seconds"] = json!(verify_s);
        v["write_seconds"] = json!(write_s);
        outln!("{v}");
    } else {
        outln!(
            "installed {} version {} on {} ({} MiB)",
            r.name,
            r.version,
            display(&a.disk),
            r.disk_bytes >> 20
        );
        for p in &r.partitions {
            outln!(
                "  {:<14} start {:>9} sectors {:>10}  type {}  partuuid {}",
                p.label,
                p.start,
                p.sectors,
                p.type_guid,
                p.partuuid
            );
        }
        outln!(
            "  slot: /EFI/Linux/{} (good), uki sha384 {}",
            r.entry,
            r.uki_sha384
        );
        outln!(
            "  boot manager: signed bootloader component, sha384 {}",
            hex::encode(payload.boot_manager_sha384)
        );
        match &state {
            Some(st) => outln!(
                "  state partition: {} MiB ext4{}; NOT encrypted: its files can be read from the disk",
                st.bytes >> 20,
                st.seeded_from.as_ref().map_or(String::new(), |d| format!(
                    ", {} files from {}",
                    st.files,
                    d.display()
                ))
            ),
            None => outln!("  state partition: not formatted (--format-state or --state-files)"),
        }
        if let Some(e) = &r.reread_error {
            outln!("  the kernel did not re-read the partition table ({e}); reboot before using the disk");
        }
        outln!("  verified in {verify_s:.2} s, written and checked in {write_s:.2} s");
    }
    Ok(())
}

pub fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
