//! The anti-rollback floor at boot: the booted image's version (its measured command
//! line's `bulwark.node_version=`) must not be below the floor that blessing raised on the
//! EFI system partition (`bulwark_node_image::install`, docs/node-image.md). A node
//! that booted an older image than one it already ran healthy (an older UKI copied
//! onto the ESP by hand, the newer one removed) refuses to start bulwarkd.
//!
//! What this does not prove: the floor lives on the ESP, which anyone who can write
//! the disk can rewrite; it stops a rollback by mistake or by an operator's hand, and
//! the TPM quote still shows the older image to a verifier whatever the disk says.

use std::path::Path;

/// What the check found, when the node may go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloorCheck {
    /// The booted version is at or above the floor.
    Passed(String),
    /// There is nothing to check against (no ESP: a network boot, a test machine).
    NotChecked(String),
}

/// Compares the booted `version` with `floor` (from `where_`): the console line, or
/// why the node must not run.
pub fn judge(version: &str, floor: u64, where_: &str) -> Result<String, String> {
    let booted: u64 = version.parse().map_err(|_| {
        format!(
            "the booted image's version {version:?} is not a number, so it cannot be held against the anti-rollback floor {floor} on {where_}"
        )
    })?;
    if booted < floor {
        return Err(format!(
            "refusing to run a rolled-back node image: this is version {booted}, but version {floor} already ran healthy on this node (anti-rollback floor on {where_}); boot version {floor} or later"
        ));
    }
    Ok(format!(
        "anti-rollback: version {booted} is at or above the floor {floor} (on {where_})"
    ))
}

/// Judges `version` against the floor of the ESP the node booted from. Only a node
/// that systemd-boot started from a disk is checked (its `LoaderDevicePartUUID`
/// variable in `efivarfs`; a network boot has no ESP of its own), and the ESP is the
/// one partition named `bulwark_node_image::disk::ESP_LABEL` in `sys_class_block`;
/// none or several (another disk's) is not checked, said so. An ESP whose floor
/// cannot be read is a refusal: `install` always writes one.
pub fn check(version: &str, sys_class_block: &Path, efivarfs: &Path) -> Result<FloorCheck, String> {
    let var = format!("LoaderDevicePartUUID-{}", crate::bless::LOADER_GUID);
    if !efivarfs.join(&var).exists() {
        return Ok(FloorCheck::NotChecked(format!(
            "not started by systemd-boot from a disk (no {var}): the anti-rollback floor is not checked"
        )));
    }
    let label = bulwark_node_image::disk::ESP_LABEL;
    let esp = match crate::state::find_by_partlabel(sys_class_block, label) {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Ok(FloorCheck::NotChecked(format!(
                "no partition named {label:?}: the anti-rollback floor is not checked"
            )))
        }
        Err(e) => {
            return Ok(FloorCheck::NotChecked(format!(
                "{e}: which one booted is not known, the anti-rollback floor is not checked"
            )))
        }
    };
    let state = bulwark_node_image::install::boot_state(&esp).map_err(|e| {
        format!(
            "the anti-rollback floor on {} cannot be read: {e}",
            esp.display()
        )
    })?;
    judge(version, state.floor, &esp.display().to_string()).map(FloorCheck::Passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_below_the_floor_is_refused_and_one_at_or_above_passes() {
        let err = judge("1", 2, "/dev/vda1").unwrap_err();
        assert!(
            err.contains("rolled-back")
                && err.contains("version 1")
                && err.contains("floor on /dev/vda1"),
            "{err}"
        );
        assert!(judge("2", 2, "/dev/vda1")
            .unwrap()
            .contains("version 2 is at or above the floor 2"));
        assert!(judge("10", 2, "x").is_ok());
        // Not a number (no version on the command line or in the config): refused.
        assert!(judge("unknown", 1, "x")
            .unwrap_err()
            .contains("not a number"));
        assert!(judge("-1", 0, "x").is_err());
    }

    #[test]
    fn no_esp_is_not_checked_and_an_unreadable_esp_is_refused() {
        let dir = std::env::temp_dir().join(format!("node-init-rollback-{}", std::process::id()));
        let efi = dir.join("efivars");
        std::fs::create_dir_all(dir.join("vda2")).unwrap();
        std::fs::create_dir_all(&efi).unwrap();
        std::fs::write(
            dir.join("vda2/uevent"),
            "DEVNAME=vda2\nDEVTYPE=partition\nPARTNAME=bulwark-state\n",
        )
        .unwrap();
        // Not started by systemd-boot (no loader variable): not checked.
        let not = check("1", &dir, &efi);
        assert!(
            matches!(&not, Ok(FloorCheck::NotChecked(w)) if w.contains("LoaderDevicePartUUID")),
            "{not:?}"
        );
        std::fs::write(
            efi.join(format!(
                "LoaderDevicePartUUID-{}",
                crate::bless::LOADER_GUID
            )),
            [6, 0, 0, 0],
        )
        .unwrap();
        assert!(matches!(
            check("1", &dir, &efi),
            Ok(FloorCheck::NotChecked(_))
        ));
        // An ESP partition whose device node does not exist here: refused, named.
        let name = format!("bulwark-test-no-such-device-{}", std::process::id());
        std::fs::create_dir_all(dir.join("vda1")).unwrap();
        std::fs::write(
            dir.join("vda1/uevent"),
            format!("DEVNAME={name}\nDEVTYPE=partition\nPARTNAME=ESP\n"),
        )
        .unwrap();
        let err = check("1", &dir, &efi).unwrap_err();
        assert!(
            err.contains("cannot be read") && err.contains(&name),
            "{err}"
        );
        // Two partitions named ESP (another disk's): which one booted is not known.
        std::fs::create_dir_all(dir.join("sdb1")).unwrap();
        std::fs::write(
            dir.join("sdb1/uevent"),
            "DEVNAME=sdb1\nDEVTYPE=partition\nPARTNAME=ESP\n",
        )
        .unwrap();
        let two = check("1", &dir, &efi);
        assert!(
            matches!(&two, Ok(FloorCheck::NotChecked(w)) if w.contains("2 partitions")),
            "{two:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
