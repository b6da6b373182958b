//! Marking the booted slot good once bulwarkd is healthy ("blessing").
//!
//! systemd-boot counts boot attempts in the UKI's file name on the ESP
//! (`bulwark-b+2-1.efi`: 2 tries left, 1 used) and tells the booted OS which file it
//! booted in the EFI variable `LoaderBootCountPath`; the OS blesses the boot by
//! renaming the file without the counter (`bulwark-b.efi`). [`BootBlesser`] is that
//! step; [`EspBlesser`] does it on the EFI system partition with the A/B code of
//! `bulwark_node_image` (the rename and the anti-rollback floor raised to this
//! version), finding the booted entry through [`EfiVarBlesser`].

use std::fmt;
use std::path::{Path, PathBuf};

/// systemd-boot's vendor GUID for its loader variables.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// The variable naming the boot-counted file that was booted.
pub const BOOT_COUNT_VAR: &str = "LoaderBootCountPath";
/// Where efivarfs is mounted.
pub const EFIVARFS: &str = "/sys/firmware/efi/efivars";

/// What blessing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlessOutcome {
    /// The boot loader counts no tries for this boot (no `LoaderBootCountPath`): the
    /// entry is already good, or the node did not boot through systemd-boot.
    NotCounting,
    /// The counted file was renamed to its blessed name.
    Blessed {
        /// The ESP path booted (with the counter).
        from: String,
        /// Its new name.
        to: String,
    },
}

/// Why blessing failed.
#[derive(Debug, thiserror::Error)]
pub enum BlessError {
    /// The variable exists but cannot be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The efivarfs file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The variable's content is not a UTF-16 path.
    #[error("{}: {reason}", path.display())]
    Malformed {
        /// The efivarfs file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The booted file's name has no `+LEFT[-DONE]` counter.
    #[error("{path:?} has no boot counter (+LEFT[-DONE]) in its name")]
    NoCounter {
        /// The ESP path.
        path: String,
    },
    /// The implementation's own failure.
    #[error("{0}")]
    Other(String),
}

/// Marks the current boot good. Called once per boot, after bulwarkd first answers
/// `GET /health`.
pub trait BootBlesser: fmt::Debug {
    /// Blesses the boot.
    fn bless(&self) -> Result<BlessOutcome, BlessError>;
    /// The boot-counted entry this boot is a trial of, if it is one (then a boot
    /// that never gets healthy reboots, and the loader falls back).
    fn trial(&self) -> Option<String> {
        None
    }
}

/// Reads `LoaderBootCountPath` from efivarfs and reports the rename it would do.
#[derive(Debug, Clone)]
pub struct EfiVarBlesser {
    /// The efivarfs mount point.
    pub efivarfs: PathBuf,
}

impl Default for EfiVarBlesser {
    fn default() -> Self {
        EfiVarBlesser {
            efivarfs: PathBuf::from(EFIVARFS),
        }
    }
}

impl EfiVarBlesser {
    /// The booted, boot-counted ESP path, if the loader set the variable.
    pub fn boot_count_path(&self) -> Result<Option<String>, BlessError> {
        let path = self
            .efivarfs
            .join(format!("{BOOT_COUNT_VAR}-{LOADER_GUID}"));
        read_string_var(&path)
    }
}

impl EfiVarBlesser {
    /// The booted entry with a boot counter and the name blessing gives it;
    /// `None` when the loader counts nothing for this boot.
    pub fn counted_entry(&self) -> Result<Option<(String, String)>, BlessError> {
        let Some(from) = self.boot_count_path()? else {
            return Ok(None);
        };
        let to = blessed_name(&from).ok_or_else(|| BlessError::NoCounter { path: from.clone() })?;
        Ok(Some((from, to)))
    }
}

/// Blesses on the EFI system partition (the GPT partition named
/// `bulwark_node_image::disk::ESP_LABEL`): the booted slot, as
/// `LoaderBootCountPath` names it, becomes good and the anti-rollback floor rises
/// to its version.
#[derive(Debug, Clone)]
pub struct EspBlesser {
    pub efi: EfiVarBlesser,
    /// Where the kernel lists block devices.
    pub sys_class_block: PathBuf,
}

impl Default for EspBlesser {
    fn default() -> Self {
        EspBlesser {
            efi: EfiVarBlesser::default(),
            sys_class_block: PathBuf::from(crate::state::SYS_CLASS_BLOCK),
        }
    }
}

impl BootBlesser for EspBlesser {
    fn trial(&self) -> Option<String> {
        self.efi
            .counted_entry()
            .ok()
            .flatten()
            .map(|(from, _)| from)
    }

    fn bless(&self) -> Result<BlessOutcome, BlessError> {
        let Some((from, to)) = self.efi.counted_entry()? else {
            return Ok(BlessOutcome::NotCounting);
        };
        let file = from.rsplit(['\\', '/']).next().unwrap_or(&from);
        let slot = bulwark_node_image::install::Slot::parse(file)
            .ok_or_else(|| BlessError::Other(format!("{from:?} is not a Bulwark node slot")))?;
        let label = bulwark_node_image::disk::ESP_LABEL;
        let esp = crate::state::find_by_partlabel(&self.sys_class_block, label)
            .map_err(BlessError::Other)?
            .ok_or_else(|| BlessError::Other(format!("no partition named {label:?}")))?;
        let report = bulwark_node_image::install::bless(&esp, slot.version)
            .map_err(|e| BlessError::Other(format!("{}: {e}", esp.display())))?;
        Ok(BlessOutcome::Blessed {
            from,
            to: format!(
                "{to} (on {}; anti-rollback floor {})",
                esp.display(),
                report.floor
            ),
        })
    }
}

/// The UEFI global variable GUID (`EFI_GLOBAL_VARIABLE`), whose `SecureBoot`
/// variable the firmware sets.
pub const EFI_GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// Whether the firmware enforces Secure Boot, from its `SecureBoot` variable
/// (attributes, then one byte: 1 on, 0 off); `None` when the firmware sets no such
/// variable (no Secure Boot support).
pub fn secure_boot(efivarfs: &Path) -> Result<Option<bool>, BlessError> {
    let path = efivarfs.join(format!("SecureBoot-{EFI_GLOBAL_GUID}"));
    match std::fs::read(&path) {
        Ok(b) => match b.as_slice() {
            [_, _, _, _, 1] => Ok(Some(true)),
            [_, _, _, _, 0] => Ok(Some(false)),
            _ => Err(BlessError::Malformed {
                path,
                reason: format!("{} bytes, not a 4-byte header and one byte 0 or 1", b.len()),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BlessError::Read { path, source }),
    }
}

/// Reads an efivarfs file holding a UTF-16 string; `None` when the variable does
/// not exist.
pub fn read_string_var(path: &Path) -> Result<Option<String>, BlessError> {
    match std::fs::read(path) {
        Ok(bytes) => decode_string_var(&bytes)
            .map(Some)
            .map_err(|reason| BlessError::Malformed {
                path: path.to_owned(),
                reason,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BlessError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

pub use bulwark_node_image::booted::decode_string_var;

/// The name systemd-boot's counting gives a good entry: `+LEFT[-DONE]` removed from
/// the file name's stem (`\EFI\Linux\bulwark-b+2-1.efi` → `\EFI\Linux\bulwark-b.efi`).
/// `None` when the name has no counter.
pub fn blessed_name(path: &str) -> Option<String> {
    let (dir, file) = match path.rfind(['\\', '/']) {
        Some(i) => path.split_at(i + 1),
        None => ("", path),
    };
    let (stem, ext) = match file.rfind('.') {
        Some(i) if i > 0 => file.split_at(i),
        _ => (file, ""),
    };
    let plus = stem.rfind('+')?;
    let counter = &stem[plus + 1..];
    let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(left) || !digits(done) || plus == 0 {
        return None;
    }
    Some(format!("{dir}{}{ext}", &stem[..plus]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(attrs: u32, text: &str, nul: bool) -> Vec<u8> {
        let mut v = attrs.to_le_bytes().to_vec();
        for u in text.encode_utf16().chain(nul.then_some(0)) {
            v.extend_from_slice(&u.to_le_bytes());
        }
        v
    }

    #[test]
    fn efivar_strings_decode_after_the_attribute_header() {
        // NV + BS + RT = 7, as systemd-boot writes its loader variables.
        let path = r"\EFI\Linux\bulwark-b+2-1.efi";
        assert_eq!(decode_string_var(&var(7, path, true)).unwrap(), path);
        assert_eq!(decode_string_var(&var(6, path, false)).unwrap(), path);
        // Non-ASCII survives (UTF-16, not UCS-1).
        assert_eq!(decode_string_var(&var(7, "\\é", true)).unwrap(), "\\é");
        assert_eq!(decode_string_var(&var(7, "", true)).unwrap(), "");
    }

    #[test]
    fn malformed_efivars_are_errors() {
        assert!(decode_string_var(&[7, 0, 0])
            .unwrap_err()
            .contains("4-byte"));
        assert!(decode_string_var(&[7, 0, 0, 0, b'a'])
            .unwrap_err()
            .contains("not UTF-16"));
        // A lone high surrogate.
        assert!(decode_string_var(&[7, 0, 0, 0, 0x00, 0xd8])
            .unwrap_err()
            .contains("not UTF-16"));
        assert!(decode_string_var(&[7, 0, 0, 0, b'a', 0, 0, 0, b'b', 0])
            .unwrap_err()
            .contains("NUL inside"));
    }

    #[test]
    fn blessed_names_drop_the_counter() {
        for (counted, blessed) in [
            (
                r"\EFI\Linux\bulwark-b+2-1.efi",
                Some(r"\EFI\Linux\bulwark-b.efi"),
            ),
            (
                r"\EFI\Linux\bulwark-b+3.efi",
                Some(r"\EFI\Linux\bulwark-b.efi"),
            ),
            (
                r"\loader\entries\n+0-3.conf",
                Some(r"\loader\entries\n.conf"),
            ),
            ("a+1+2", Some("a+1")),
            (r"\EFI\Linux\bulwark-b.efi", None),
            (r"\EFI\Linux\+1.efi", None),
            (r"\EFI\Linux\b+x.efi", None),
            (r"\EFI\Linux\b+1-.efi", None),
        ] {
            assert_eq!(blessed_name(counted).as_deref(), blessed, "{counted}");
        }
    }

    fn efivarfs(content: Option<Vec<u8>>) -> (EfiVarBlesser, PathBuf) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "node-init-efivars-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(bytes) = content {
            std::fs::write(dir.join(format!("{BOOT_COUNT_VAR}-{LOADER_GUID}")), bytes).unwrap();
        }
        (
            EfiVarBlesser {
                efivarfs: dir.clone(),
            },
            dir,
        )
    }

    #[test]
    fn the_secure_boot_variable_says_on_off_or_absent() {
        let (b, dir) = efivarfs(None);
        assert_eq!(secure_boot(&b.efivarfs).unwrap(), None);
        let file = dir.join(format!("SecureBoot-{EFI_GLOBAL_GUID}"));
        std::fs::write(&file, [6, 0, 0, 0, 1]).unwrap();
        assert_eq!(secure_boot(&dir).unwrap(), Some(true));
        std::fs::write(&file, [6, 0, 0, 0, 0]).unwrap();
        assert_eq!(secure_boot(&dir).unwrap(), Some(false));
        for bad in [&[6u8, 0, 0, 0, 2][..], &[6, 0, 0, 0], &[6, 0, 0, 0, 1, 0]] {
            std::fs::write(&file, bad).unwrap();
            assert!(
                matches!(secure_boot(&dir), Err(BlessError::Malformed { .. })),
                "{bad:?}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_booted_entry_is_read_from_the_loader_variable() {
        let (b, dir) = efivarfs(Some(var(7, r"\EFI\Linux\bulwark-b+2-1.efi", true)));
        assert_eq!(
            b.counted_entry().unwrap(),
            Some((
                r"\EFI\Linux\bulwark-b+2-1.efi".to_string(),
                r"\EFI\Linux\bulwark-b.efi".to_string()
            ))
        );
        std::fs::remove_dir_all(dir).unwrap();

        let (b, dir) = efivarfs(None);
        assert_eq!(b.counted_entry().unwrap(), None);
        let esp = EspBlesser {
            efi: b,
            sys_class_block: dir.clone(),
        };
        assert_eq!(esp.bless().unwrap(), BlessOutcome::NotCounting);
        std::fs::remove_dir_all(dir).unwrap();

        let (b, dir) = efivarfs(Some(var(7, r"\EFI\Linux\bulwark-b.efi", true)));
        assert!(matches!(
            b.counted_entry().unwrap_err(),
            BlessError::NoCounter { .. }
        ));
        std::fs::remove_dir_all(dir).unwrap();

        let (b, dir) = efivarfs(Some(vec![1, 2]));
        let err = b.counted_entry().unwrap_err().to_string();
        assert!(err.contains(LOADER_GUID) && err.contains("4-byte"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();

        // A counted entry that is not a node slot, and no ESP: clear errors.
        let (b, dir) = efivarfs(Some(var(7, r"\EFI\Linux\other+1.efi", true)));
        let esp = EspBlesser {
            efi: b,
            sys_class_block: dir.clone(),
        };
        assert!(esp
            .bless()
            .unwrap_err()
            .to_string()
            .contains("not a Bulwark node slot"));
        std::fs::remove_dir_all(dir).unwrap();
        let (b, dir) = efivarfs(Some(var(7, r"\EFI\Linux\bulwark-node-2+0-1.efi", true)));
        let esp = EspBlesser {
            efi: b,
            sys_class_block: dir.join("none"),
        };
        assert!(esp.bless().unwrap_err().to_string().contains("none"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
