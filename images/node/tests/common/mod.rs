//! Helpers for the tests that check our output against independent tools.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
pub const SD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
pub const SYSTEMD_MEASURE: &str = "/usr/lib/systemd/systemd-measure";
pub const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
pub const SNAKEOIL_PEM: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";

/// The path of a tool, or None after a loud message naming the package.
pub fn tool(path_or_name: &str, package: &str) -> Option<PathBuf> {
    let p = Path::new(path_or_name);
    if p.is_absolute() {
        if p.exists() {
            return Some(p.to_path_buf());
        }
    } else if let Some(dirs) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&dirs) {
            let c = d.join(path_or_name);
            if c.exists() {
                return Some(c);
            }
        }
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: {path_or_name} is not installed (Debian package `{package}`, listed in scripts/debian-packages.txt) !!!!!!!!\n"
    );
    None
}

/// Read a file the test needs, or None after a loud message.
pub fn input(path: &str, package: &str) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("\n!!!!!!!! SKIPPED: {path}: {e} (Debian package `{package}`) !!!!!!!!\n");
            None
        }
    }
}

/// Run a command; panic with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// A stand-in kernel for tests: a real PE image (systemd-boot), so the inner
/// `.linux` Authenticode digest is defined, padded to an odd length.
pub fn fake_kernel() -> Option<Vec<u8>> {
    input(SD_BOOT, "systemd-boot-efi")
}

/// Some initrd-like bytes (deterministic).
pub fn fake_initrd(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}
