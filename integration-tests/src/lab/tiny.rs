//! Tiny guests (`integration-tests/tiny-guests`, `x86_64-unknown-none`) for
//! scenarios in which `bulwark-vmm` runs one inside L1: built with their own target
//! directory and turned into flat binaries (`objcopy -O binary`), which go into L1 as
//! `/lab/tiny/NAME.bin` (raw boot at 1 MiB).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{LabError, Result};
use super::host_command::run;

/// Builds the tiny guests and returns the flat binary of each of `names`, in order.
pub fn build(workspace: &Path, target_dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = target_dir.join("tiny-guests");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace.join("integration-tests/tiny-guests"))
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
        .arg(&target);
    for name in names {
        cmd.args(["--bin", name]);
    }
    run(&mut cmd).map_err(|e| match e {
        LabError::Command { output, .. } if output.contains("target may not be installed") => {
            LabError::Prerequisite {
                what: "the Rust target x86_64-unknown-none is not installed".into(),
                hint: "run scripts/setup (or `rustup target add x86_64-unknown-none`)".into(),
            }
        }
        other => other,
    })?;
    let dir = target.join("x86_64-unknown-none/release");
    names
        .iter()
        .map(|name| {
            let flat = dir.join(format!("{name}.bin"));
            run(Command::new("objcopy")
                .args(["-O", "binary"])
                .arg(dir.join(name))
                .arg(&flat))?;
            Ok(flat)
        })
        .collect()
}
