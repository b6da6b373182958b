//! Debian packages for the lab, fetched with Debian's own tools (`apt-cache`,
//! `apt-get download`, `dpkg -x`) and cached, unpacked, outside the repository.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{LabError, Result};
use super::host_command::{describe, find_program, stdout_of};

/// The meta package whose dependency names the current Debian 12 cloud kernel.
const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
/// Environment variable that names the kernel package explicitly instead.
pub const KERNEL_PACKAGE_ENV: &str = "BULWARK_LAB_KERNEL_PACKAGE";

/// The on-disk cache of unpacked Debian packages.
#[derive(Debug, Clone)]
pub struct PackageCache {
    root: PathBuf,
}

impl PackageCache {
    /// A cache rooted at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PackageCache { root: root.into() }
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding package `name` (at apt's candidate version) unpacked
    /// with `dpkg -x`; downloads and unpacks it the first time.
    pub fn unpacked(&self, name: &str) -> Result<PathBuf> {
        validate_package_name(name)?;
        let version = candidate_version(name)?;
        let dir = self
            .root
            .join("packages")
            .join(format!("{name}_{}", version.replace(':', "%3a")));
        if dir.is_dir() {
            return Ok(dir);
        }
        require_tool("apt-get")?;
        require_tool("dpkg")?;
        // Unpack into a private scratch directory, then rename it into place, so an
        // interrupted run never leaves a half-unpacked package behind and two runs
        // racing on a cold cache both end up with a complete one.
        let scratch_root = self.root.join("scratch");
        remove_abandoned(&scratch_root);
        let scratch = scratch_root.join(format!(
            "{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&scratch)
            .map_err(LabError::io(format!("creating {}", scratch.display())))?;
        let result = self.download_and_unpack(name, &version, &scratch, &dir);
        let _ = fs::remove_dir_all(&scratch);
        result.map(|()| dir)
    }

    fn download_and_unpack(
        &self,
        name: &str,
        version: &str,
        scratch: &Path,
        dir: &Path,
    ) -> Result<()> {
        stdout_of(
            Command::new("apt-get")
                .current_dir(scratch)
                // apt's download sandbox user cannot write to a root-owned scratch directory.
                .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
                .arg(format!("{name}={version}")),
        )?;
        let deb = fs::read_dir(scratch)
            .map_err(LabError::io(format!("listing {}", scratch.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| LabError::UnexpectedOutput {
                command: format!("apt-get download {name}={version}"),
                reason: format!("no .deb file appeared in {}", scratch.display()),
            })?;
        let tree = scratch.join("tree");
        stdout_of(Command::new("dpkg").arg("-x").arg(&deb).arg(&tree))?;
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent)
                .map_err(LabError::io(format!("creating {}", parent.display())))?;
        }
        match fs::rename(&tree, dir) {
            Ok(()) => Ok(()),
            // Another run unpacked the same package first: use theirs.
            Err(_) if dir.is_dir() => Ok(()),
            Err(e) => Err(LabError::io(format!(
                "moving {} to {}",
                tree.display(),
                dir.display()
            ))(e)),
        }
    }
}

/// Removes scratch directories an interrupted run left behind (older than an hour,
/// far longer than a fetch takes). Best effort: what cannot be removed stays.
fn remove_abandoned(scratch_root: &Path) {
    let Ok(entries) = fs::read_dir(scratch_root) else {
        return;
    };
    for entry in entries.flatten() {
        let abandoned = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        if abandoned {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The kernel package the lab boots as L1 (and L2): `$BULWARK_LAB_KERNEL_PACKAGE`, or the
/// package Debian's `linux-image-cloud-amd64` currently depends on.
pub fn kernel_package() -> Result<String> {
    if let Ok(name) = std::env::var(KERNEL_PACKAGE_ENV) {
        return check_kernel_package(name.trim().to_owned());
    }
    require_tool("apt-cache")?;
    let mut cmd = Command::new("apt-cache");
    cmd.args(["depends", KERNEL_META_PACKAGE]);
    let text = stdout_of(&mut cmd)?;
    let name = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| LabError::UnexpectedOutput {
            command: describe(&cmd),
            reason: format!("no linux-image dependency listed (is the apt index current? run `apt-get update`):\n{text}"),
        })?;
    check_kernel_package(name.to_owned())
}

fn check_kernel_package(name: String) -> Result<String> {
    if name.starts_with("linux-image-6.1.") && name.ends_with("-cloud-amd64") {
        Ok(name)
    } else {
        Err(LabError::InvalidSetting {
            setting: format!("kernel package (${KERNEL_PACKAGE_ENV}, else what {KERNEL_META_PACKAGE} depends on)"),
            reason: format!(
                "{name:?} is not a Debian 12 cloud kernel (linux-image-6.1.*-cloud-amd64), the kernel the lab's module list is written for"
            ),
        })
    }
}

/// apt's candidate version of `name`.
fn candidate_version(name: &str) -> Result<String> {
    require_tool("apt-cache")?;
    let mut cmd = Command::new("apt-cache");
    cmd.args(["policy", name]);
    let text = stdout_of(&mut cmd)?;
    let version = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .next();
    match version {
        Some(v) if !v.is_empty() && v != "(none)" => Ok(v.to_owned()),
        _ => Err(LabError::UnexpectedOutput {
            command: describe(&cmd),
            reason: format!(
                "apt knows no installable version of {name} (run `apt-get update`; the lab needs Debian 12 package lists)"
            ),
        }),
    }
}

fn validate_package_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(LabError::InvalidSetting {
            setting: "Debian package name".into(),
            reason: format!("{name:?} is not a valid Debian package name"),
        })
    }
}

fn require_tool(tool: &str) -> Result<()> {
    find_program(tool).map(|_| ()).ok_or_else(|| LabError::Prerequisite {
        what: format!("`{tool}` not found on PATH"),
        hint: "the lab fetches its kernel and busybox with Debian's package tools and needs a Debian host".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_package_must_be_a_debian_12_cloud_kernel() {
        assert!(check_kernel_package("linux-image-6.1.0-56-cloud-amd64".into()).is_ok());
        for bad in [
            "linux-image-6.12.1-cloud-amd64",
            "linux-image-6.1.0-56-amd64",
            "busybox",
        ] {
            let err = check_kernel_package(bad.into()).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn package_names_are_validated_before_reaching_apt() {
        assert!(validate_package_name("busybox-static").is_ok());
        assert!(validate_package_name("linux-image-6.1.0-56-cloud-amd64").is_ok());
        for bad in ["", "-o", "foo bar", "../x", "Foo"] {
            assert!(validate_package_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
