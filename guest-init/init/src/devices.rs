//! The passthrough devices the workload expects: `devices[]` in the config names PCI
//! functions by `vendor:device` and how many of each; bulwark-init finds them on the
//! guest's PCI bus (sysfs) before the workload starts, and refuses the start when one
//! is missing. GPUs have their own, deeper check (`crate::gpu`); this one is for
//! whatever the VM was given: a GPU's companion function, an accelerator without a
//! driver in the guest, or the lab's stand-in device.

use std::path::Path;

use crate::config::DeviceRequirement;

/// One PCI function on the guest's bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    /// Its guest address, `dddd:bb:dd.f`.
    pub address: String,
    /// `vvvv:dddd`, lowercase hex.
    pub id: String,
}

/// Reads `<sys_bus_pci>/devices/*/{vendor,device}` (sorted by address).
pub fn scan(sys_bus_pci: &Path) -> Result<Vec<PciFunction>, String> {
    let dir = sys_bus_pci.join("devices");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut found = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let address = e.file_name().to_string_lossy().into_owned();
        let read = |f: &str| {
            std::fs::read_to_string(e.path().join(f))
                .ok()
                .and_then(|t| {
                    let t = t.trim().trim_start_matches("0x").to_ascii_lowercase();
                    (t.len() == 4 && t.bytes().all(|b| b.is_ascii_hexdigit())).then_some(t)
                })
        };
        // A function whose IDs cannot be read is not one the config can name.
        if let (Some(v), Some(d)) = (read("vendor"), read("device")) {
            found.push(PciFunction {
                address,
                id: format!("{v}:{d}"),
            });
        }
    }
    found.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(found)
}

/// Checks `required` against `found`: each requirement needs at least `count`
/// functions with its id. Returns one line per requirement naming the functions
/// that met it, or the first shortfall with what the bus holds.
pub fn check(required: &[DeviceRequirement], found: &[PciFunction]) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    for r in required {
        let matched: Vec<&str> = found
            .iter()
            .filter(|f| f.id == r.id)
            .map(|f| f.address.as_str())
            .collect();
        if matched.len() < r.count as usize {
            let bus: Vec<String> = found
                .iter()
                .map(|f| format!("{} {}", f.address, f.id))
                .collect();
            return Err(format!(
                "device {} required {} time(s), found {} (the guest's PCI bus: {})",
                r.id,
                r.count,
                matched.len(),
                if bus.is_empty() {
                    "empty".into()
                } else {
                    bus.join(", ")
                }
            ));
        }
        lines.push(format!("{} at {}", r.id, matched.join(",")));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(functions: &[(&str, &str, &str)]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!(
            "bulwark-init-pci-{}-{}",
            std::process::id(),
            functions.len()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for (addr, v, d) in functions {
            let dir = root.join("devices").join(addr);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("vendor"), format!("{v}\n")).unwrap();
            std::fs::write(dir.join("device"), format!("{d}\n")).unwrap();
        }
        std::fs::create_dir_all(root.join("devices")).unwrap();
        root
    }

    fn req(id: &str, count: u32) -> DeviceRequirement {
        DeviceRequirement {
            id: id.into(),
            count,
        }
    }

    #[test]
    fn found_functions_meet_their_requirements_and_a_shortfall_names_the_bus() {
        let root = bus(&[
            ("0000:00:05.0", "0x1AF4", "0x1110"),
            ("0000:00:00.0", "0x8086", "0x0d57"),
            ("0000:00:06.0", "0x10de", "zzzz"),
        ]);
        let found = scan(&root).unwrap();
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(
            found,
            vec![
                PciFunction {
                    address: "0000:00:00.0".into(),
                    id: "8086:0d57".into()
                },
                PciFunction {
                    address: "0000:00:05.0".into(),
                    id: "1af4:1110".into()
                },
            ]
        );
        assert_eq!(
            check(&[req("1af4:1110", 1)], &found).unwrap(),
            vec!["1af4:1110 at 0000:00:05.0"]
        );
        let err = check(&[req("1af4:1110", 2)], &found).unwrap_err();
        assert!(err.contains("required 2 time(s), found 1"), "{err}");
        let err = check(&[req("10de:2330", 1)], &found).unwrap_err();
        assert!(
            err.contains("found 0") && err.contains("0000:00:05.0 1af4:1110"),
            "{err}"
        );
        assert!(check(&[], &found).unwrap().is_empty());
    }

    #[test]
    fn an_empty_or_missing_bus_is_clear() {
        let root = bus(&[]);
        let found = scan(&root).unwrap();
        let _ = std::fs::remove_dir_all(&root);
        assert!(check(&[req("1af4:1110", 1)], &found)
            .unwrap_err()
            .contains("PCI bus: empty"));
        assert!(scan(Path::new("/nonexistent/bulwark")).is_err());
    }
}
