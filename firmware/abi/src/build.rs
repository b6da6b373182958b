//! Building the firmware image from source, for the host-side tests and the lab
//! (feature `build`, which needs `std`): `cargo build --release` of `firmware/image`
//! for `x86_64-unknown-none` in its own target directory, then `objcopy -O binary`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::string::{String, ToString};

/// Builds the firmware into `target_dir` and returns the path of its 64 KiB image
/// (`bulwark-firmware.bin`). Errors carry the failing command's output.
pub fn build_image(target_dir: &Path) -> Result<PathBuf, String> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&crate_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--target",
            "x86_64-unknown-none",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .map_err(|e| std::format!("running cargo for the firmware: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("target may not be installed") {
            " (run scripts/setup: it adds the x86_64-unknown-none target)"
        } else {
            ""
        };
        return Err(std::format!(
            "building the firmware failed{hint}:\n{stderr}"
        ));
    }
    let image = target_dir.join("bulwark-firmware.bin");
    let status = Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(target_dir.join("x86_64-unknown-none/release/bulwark-firmware"))
        .arg(&image)
        .status()
        .map_err(|e| std::format!("running objcopy (binutils): {e}"))?;
    if !status.success() {
        return Err("objcopy -O binary of the firmware failed".to_string());
    }
    Ok(image)
}

/// What `sev-snp-measure --mode snp` is asked to measure.
#[derive(Debug, Clone, Copy)]
pub struct SnpMeasureInputs<'a> {
    /// The firmware image (`--ovmf`).
    pub firmware: &'a Path,
    /// The kernel file (`--kernel`).
    pub kernel: &'a Path,
    /// The initrd (`--initrd`), if any.
    pub initrd: Option<&'a Path>,
    /// The command line (`--append`).
    pub cmdline: &'a str,
    /// vCPUs (`--vcpus`).
    pub vcpus: u32,
    /// QEMU CPU model (`--vcpu-type`).
    pub vcpu_type: &'a str,
}

/// Runs the independent tool `sev-snp-measure` (PyPI; `scripts/setup` installs it into
/// `target/pytools`, `$SEV_SNP_MEASURE` overrides) and returns the launch digest it
/// prints (hex). A missing tool is an error that says to run `scripts/setup`.
pub fn sev_snp_measure(i: &SnpMeasureInputs<'_>) -> Result<String, String> {
    let tool = std::env::var_os("SEV_SNP_MEASURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pytools/bin/sev-snp-measure")
        });
    if !tool.exists() {
        return Err(std::format!(
            "sev-snp-measure not found at {}: run scripts/setup",
            tool.display()
        ));
    }
    let mut cmd = Command::new(&tool);
    cmd.args([
        "--mode",
        "snp",
        "--output-format",
        "hex",
        "--vcpu-type",
        i.vcpu_type,
    ])
    .arg(std::format!("--vcpus={}", i.vcpus))
    .arg("--ovmf")
    .arg(i.firmware)
    .arg("--kernel")
    .arg(i.kernel)
    .arg(std::format!("--append={}", i.cmdline));
    if let Some(initrd) = i.initrd {
        cmd.arg("--initrd").arg(initrd);
    }
    let out = cmd
        .output()
        .map_err(|e| std::format!("running {}: {e}", tool.display()))?;
    if !out.status.success() {
        return Err(std::format!(
            "sev-snp-measure failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
