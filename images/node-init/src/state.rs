//! Finding the state partition without udev: the kernel's `uevent` of each block
//! device carries `DEVNAME` and, for a GPT partition with a name, `PARTNAME`.

use std::path::{Path, PathBuf};

/// Where the kernel lists block devices.
pub const SYS_CLASS_BLOCK: &str = "/sys/class/block";

/// The `/dev` path of the partition named `label`, looked up in `sys_class_block`.
/// Two partitions with the same name are an error (which one holds the state?).
pub fn find_by_partlabel(sys_class_block: &Path, label: &str) -> Result<Option<PathBuf>, String> {
    let entries = match std::fs::read_dir(sys_class_block) {
        Ok(e) => e,
        Err(e) => return Err(format!("reading {}: {e}", sys_class_block.display())),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(uevent) = std::fs::read_to_string(entry.path().join("uevent")) else {
            continue;
        };
        let field = |key: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .map(str::to_owned)
        };
        if field("DEVTYPE").as_deref() == Some("partition")
            && field("PARTNAME").as_deref() == Some(label)
        {
            if let Some(dev) = field("DEVNAME") {
                found.push(PathBuf::from("/dev").join(dev));
            }
        }
    }
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(format!(
            "{} partitions are named {label:?}: {}",
            found.len(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sys(devices: &[(&str, &str)]) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "node-init-block-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        for (name, uevent) in devices {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("uevent"), uevent).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_partition_is_found_by_its_gpt_name() {
        let dir = fake_sys(&[
            ("nvme0n1", "MAJOR=259\nMINOR=0\nDEVNAME=nvme0n1\nDEVTYPE=disk\nDISKSEQ=1\n"),
            ("nvme0n1p1", "MAJOR=259\nMINOR=1\nDEVNAME=nvme0n1p1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=esp\n"),
            ("nvme0n1p2", "MAJOR=259\nMINOR=2\nDEVNAME=nvme0n1p2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=bulwark-state\n"),
            ("nvme0n1p3", "MAJOR=259\nMINOR=3\nDEVNAME=nvme0n1p3\nDEVTYPE=partition\nPARTN=3\nPARTNAME=bulwark-state-old\n"),
        ]);
        assert_eq!(
            find_by_partlabel(&dir, "bulwark-state").unwrap(),
            Some(PathBuf::from("/dev/nvme0n1p2"))
        );
        assert_eq!(find_by_partlabel(&dir, "nothing").unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn two_partitions_with_the_name_are_an_error() {
        let dir = fake_sys(&[
            (
                "vda1",
                "DEVNAME=vda1\nDEVTYPE=partition\nPARTNAME=bulwark-state\n",
            ),
            (
                "vdb1",
                "DEVNAME=vdb1\nDEVTYPE=partition\nPARTNAME=bulwark-state\n",
            ),
        ]);
        let err = find_by_partlabel(&dir, "bulwark-state").unwrap_err();
        assert!(
            err.contains("/dev/vda1") && err.contains("/dev/vdb1"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(find_by_partlabel(&dir, "x")
            .unwrap_err()
            .contains("reading"));
    }
}
