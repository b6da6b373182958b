//! The programs that go into L1: this workspace's binaries built statically for
//! `x86_64-unknown-linux-musl`, and host executables with their shared libraries.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{LabError, Result};
use super::host_command::{describe, run, stdout_of};
use super::scenario::GuestProgram;

/// The target L1 programs are built for: static, so they need nothing from L1's userland.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds `programs` with cargo into `target_dir` (a directory of its own, so that a
/// build started from inside `cargo test` does not wait on the outer build's lock)
/// and returns each binary's path, in order.
pub fn build_guest_programs(
    workspace: &Path,
    target_dir: &Path,
    programs: &[GuestProgram],
) -> Result<Vec<PathBuf>> {
    build_programs(workspace, target_dir, programs, Some(GUEST_TARGET))
}

/// Builds `programs` as they ship (`cargo build --release`: the workspace's release
/// profile, fat LTO) for [`GUEST_TARGET`] into `target_dir/release-programs`; returns
/// each binary's path, in order.
pub fn build_release_guest_programs(
    workspace: &Path,
    target_dir: &Path,
    programs: &[GuestProgram],
) -> Result<Vec<PathBuf>> {
    if programs.is_empty() {
        return Ok(Vec::new());
    }
    let out = target_dir.join("release-programs");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--target",
            GUEST_TARGET,
        ])
        .arg("--target-dir")
        .arg(&out);
    for program in programs {
        cmd.args(["--package", program.package, "--bin", program.bin]);
    }
    run(&mut cmd)?;
    Ok(programs
        .iter()
        .map(|p| out.join(GUEST_TARGET).join("release").join(p.bin))
        .collect())
}

/// Builds `programs` for the host's own target (glibc, dynamically linked) into
/// `target_dir/host`, for programs that cannot be built static (`bulwarkd` links
/// libtss2 through `bulwark-tpm`); the lab copies them into L1 with their shared
/// libraries (`with_shared_libraries`). Returns each binary's path, in order.
pub fn build_host_programs(
    workspace: &Path,
    target_dir: &Path,
    programs: &[GuestProgram],
) -> Result<Vec<PathBuf>> {
    build_programs(workspace, &target_dir.join("host"), programs, None)
}

fn build_programs(
    workspace: &Path,
    target_dir: &Path,
    programs: &[GuestProgram],
    target: Option<&str>,
) -> Result<Vec<PathBuf>> {
    if programs.is_empty() {
        return Ok(Vec::new());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--locked", "--quiet"]);
    if let Some(target) = target {
        cmd.args(["--target", target]);
    }
    cmd
        // The workspace optimises dependencies even in the dev profile (for the host's
        // tests); the L1 programs do not need that, and building them from nothing
        // is the largest part of a cold lab run.
        .args(["--config", r#"profile.dev.package."*".opt-level=0"#])
        // Line tables only: full debug information of everything a lab program links
        // (the integration-tests library pulls in bulwark-attestation and aws-lc) made
        // each 70+ MB, and the L1 initramfs of the Linux scenarios no longer fit in L1.
        .args(["--config", r#"profile.dev.debug="line-tables-only""#])
        // Except the crypto: bulwark-vmm hashes every byte of a signed bundle (tens of
        // MB for a Linux kernel) and checks P-384 signatures, which unoptimised under
        // L1's instruction emulation took minutes.
        .args(["--config", "profile.dev.package.sha2.opt-level=3"])
        .args(["--config", "profile.dev.package.ring.opt-level=3"])
        // bulwark-init makes a P-384 key pair at boot and signs challenges.
        .args(["--config", "profile.dev.package.p384.opt-level=3"])
        .args(["--config", "profile.dev.package.primeorder.opt-level=3"])
        // ... and moves the workload's bytes through its vsock bridges.
        .args(["--config", "profile.dev.package.tokio.opt-level=3"])
        .args(["--config", "profile.dev.package.bulwark-init.opt-level=3"])
        .arg("--target-dir")
        .arg(target_dir);
    for program in programs {
        cmd.args(["--package", program.package, "--bin", program.bin]);
    }
    // The lab's bulwark-init carries the test-only triggers (a panic injected at a
    // named stage); shipped builds do not.
    if programs.iter().any(|p| p.package == "bulwark-init") {
        cmd.args(["--features", "bulwark-init/test-hooks"]);
    }
    run(&mut cmd).map_err(|e| match e {
        LabError::Command { output, .. }
            if output.contains(GUEST_TARGET) && output.contains("target may not be installed") =>
        {
            LabError::Prerequisite {
                what: format!("the Rust target {GUEST_TARGET} is not installed"),
                hint: "run scripts/setup (or `rustup target add x86_64-unknown-linux-musl`)".into(),
            }
        }
        LabError::Command { output, .. } if output.contains("failed to find tool \"x86_64-linux-musl-gcc\"") => {
            LabError::Prerequisite {
                what: "no C compiler for the musl target (musl-gcc) to build C parts of the L1 programs".into(),
                hint: "install Debian's musl-tools: run scripts/setup".into(),
            }
        }
        other => other,
    })?;
    let out = match target {
        Some(target) => target_dir.join(target),
        None => target_dir.to_owned(),
    };
    Ok(programs
        .iter()
        .map(|p| out.join("debug").join(p.bin))
        .collect())
}

/// Builds the tiny guests `names` (`integration-tests/tiny-guests`, its own workspace,
/// target `x86_64-unknown-none`) into `target_dir/tiny-guests` and makes each one's flat
/// binary (`NAME.bin`, `objcopy -O binary`) next to its ELF; returns `(name, ELF path)`.
pub fn build_tiny_guests(
    workspace: &Path,
    target_dir: &Path,
    names: &[&'static str],
) -> Result<Vec<(&'static str, PathBuf)>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let out = target_dir.join("tiny-guests");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
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
        .arg(&out);
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
    let dir = out.join("x86_64-unknown-none/release");
    names
        .iter()
        .map(|&name| {
            let elf = dir.join(name);
            let mut objcopy = Command::new("objcopy");
            objcopy
                .args(["-O", "binary"])
                .arg(&elf)
                .arg(elf.with_extension("bin"));
            run(&mut objcopy)?;
            Ok((name, elf))
        })
        .collect()
}

/// Builds the guest firmware (`firmware/image`) into `target_dir/firmware` and returns
/// its 64 KiB image.
pub fn build_firmware(target_dir: &Path) -> Result<PathBuf> {
    bulwark_firmware_abi::build::build_image(&target_dir.join("firmware")).map_err(|reason| {
        LabError::UnexpectedOutput {
            command: "building firmware/image".into(),
            reason,
        }
    })
}

/// A copy of `program` without its debug information, in `dir` under the same name.
pub fn strip_debug(program: &Path, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
    let out = dir.join(program.file_name().unwrap_or_default());
    let mut cmd = Command::new("objcopy");
    cmd.arg("--strip-debug").arg(program).arg(&out);
    run(&mut cmd)?;
    Ok(out)
}

/// `program` and the shared libraries (and dynamic loader) it needs, as host paths,
/// found with `ldd`. A static program is just itself.
pub fn with_shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    if !program.is_file() {
        return Err(LabError::Prerequisite {
            what: format!("{} not found", program.display()),
            hint: "the scenario copies it from the host into L1; run scripts/setup".into(),
        });
    }
    let mut cmd = Command::new("ldd");
    cmd.arg(program);
    let text = match stdout_of(&mut cmd) {
        Ok(text) => text,
        Err(LabError::Command { output, .. }) if output.contains("not a dynamic executable") => {
            String::new()
        }
        Err(e) => return Err(e),
    };
    let mut files = vec![program.to_owned()];
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            return Err(LabError::UnexpectedOutput {
                command: describe(&cmd),
                reason: format!("a shared library is missing on the host: {line}"),
            });
        }
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)";
        // the vDSO ("linux-vdso.so.1 (0x...)") has no file.
        let path = line.split_once("=> ").map_or(line, |(_, p)| p);
        let path = path.split(" (").next().unwrap_or_default();
        if path.starts_with('/') {
            files.push(PathBuf::from(path));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_brings_its_loader_and_libc() {
        let files = with_shared_libraries(Path::new("/bin/sh")).unwrap();
        assert_eq!(files[0], Path::new("/bin/sh"));
        assert!(
            files
                .iter()
                .any(|f| f.to_string_lossy().contains("libc.so")),
            "{files:?}"
        );
        assert!(
            files
                .iter()
                .any(|f| f.to_string_lossy().contains("ld-linux")),
            "{files:?}"
        );
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let err = with_shared_libraries(Path::new("/nonexistent/qemu"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/qemu"), "{err}");
    }
}
