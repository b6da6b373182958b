//! Launch and isolation claims from `bulwark-vmm`'s `GET /vm` JSON
//! (`hypervisor/openapi.yaml`, `VmDescription`). Extra fields are ignored;
//! missing ones are named in `unknown`, never guessed. Until the node agent
//! exists, the isolation statements the VMM cannot make (single tenancy,
//! exclusive IOMMU groups, sanitization, serial numbers) are listed as not
//! known.

use super::document::{Bytes, ImageId, Isolation, Launch, PciDevice};
use crate::Error;
use serde_json::Value;

/// Source name of statements taken from `GET /vm`.
pub const SOURCE_VMM: &str = "vmm-get-vm";

/// The `launch` and `isolation` parts of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchClaims {
    pub launch: Launch,
    pub isolation: Isolation,
}

impl LaunchClaims {
    /// From `GET /vm`. `image_signer_key_ids`: the key ids whose signatures
    /// met the VMM's trust policy (the VMM does not report them; the node
    /// agent knows its configured keys). Errors only when the measurement is
    /// missing or malformed: evidence without it is useless.
    pub fn from_vm_info(vm: &Value, image_signer_key_ids: &[Vec<u8>]) -> Result<Self, Error> {
        let mut unknown = Vec::new();
        let measurement = vm
            .pointer("/measurement/value")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Argument("GET /vm: missing measurement.value".into()))?;
        let measurement = hex::decode(measurement)
            .ok()
            .filter(|m| m.len() == 48)
            .ok_or_else(|| {
                Error::Argument("GET /vm: measurement.value is not 48 hex bytes".into())
            })?;

        let kind = vm.pointer("/boot_source/kind").and_then(Value::as_str);
        let image = match kind {
            Some("signed") => {
                let name = vm.pointer("/boot_source/name").and_then(Value::as_str);
                let version = vm.pointer("/boot_source/version").and_then(Value::as_u64);
                let digest = vm
                    .pointer("/boot_source/manifest_sha384")
                    .and_then(Value::as_str)
                    .and_then(|h| hex::decode(h).ok())
                    .filter(|d| d.len() == 48);
                match (name, version, digest) {
                    (Some(n), Some(v), Some(d)) => {
                        if image_signer_key_ids.is_empty() {
                            unknown.push("launch.image.signer_key_ids".to_string());
                        }
                        Some(ImageId {
                            name: n.to_string(),
                            version: v,
                            manifest_sha384: d.into(),
                            signer_key_ids: image_signer_key_ids
                                .iter()
                                .map(|k| Bytes(k.clone()))
                                .collect(),
                        })
                    }
                    _ => {
                        unknown.push("launch.image".to_string());
                        None
                    }
                }
            }
            Some("unsigned") => None,
            _ => {
                unknown.push("launch.boot_source".to_string());
                None
            }
        };
        let vcpus = match vm.get("vcpus").and_then(Value::as_array) {
            Some(a) => u32::try_from(a.len()).unwrap_or(u32::MAX),
            None => {
                unknown.push("launch.vcpus".to_string());
                0
            }
        };
        let memory_bytes = vm
            .pointer("/memory/guest_ram_bytes")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| {
                unknown.push("launch.memory_bytes".to_string());
                0
            });
        let cpuid_policy = vm
            .get("cpuid_policy")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                unknown.push("launch.cpuid_policy".to_string());
                String::new()
            });
        let entry_mode = vm
            .pointer("/measurement/events")
            .and_then(Value::as_array)
            .and_then(|evs| {
                evs.iter()
                    .rev()
                    .find(|e| e.get("tag").and_then(Value::as_str) == Some("entry"))
            })
            .and_then(|e| e.get("detail").and_then(Value::as_str))
            .and_then(|d| d.split_whitespace().next())
            .map(str::to_string);
        let origin = match kind {
            Some("signed") => "signed-bundle",
            Some("unsigned") => "unsigned",
            _ => "unknown",
        };
        let boot_mode = match entry_mode {
            Some(m) => format!("{origin}/{m}"),
            None => {
                unknown.push("launch.boot_mode.entry".to_string());
                format!("{origin}/unknown")
            }
        };

        let mut devices = Vec::new();
        let mut iso_unknown = vec!["isolation.single_tenant".to_string()];
        if let Some(list) = vm.pointer("/vfio/devices").and_then(Value::as_array) {
            for d in list {
                let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
                let bdf = s("bdf").unwrap_or_default();
                let id = s("id").unwrap_or_default();
                if bdf.is_empty() || id.is_empty() {
                    iso_unknown.push("isolation.devices[].bdf/id".to_string());
                }
                devices.push(PciDevice {
                    host_bdf: bdf,
                    id,
                    serial: None,
                    iommu_group: d
                        .get("group")
                        .and_then(Value::as_u64)
                        .and_then(|g| u32::try_from(g).ok()),
                    group_exclusive: None,
                    sanitized: None,
                });
            }
            if !devices.is_empty() {
                iso_unknown.extend(
                    [
                        "isolation.devices[].serial",
                        "isolation.devices[].group_exclusive",
                        "isolation.devices[].sanitized",
                    ]
                    .map(str::to_string),
                );
            }
        }
        iso_unknown.dedup();
        Ok(LaunchClaims {
            launch: Launch {
                measurement: measurement.into(),
                image,
                vcpus,
                memory_bytes,
                cpuid_policy,
                boot_mode,
                unknown,
            },
            isolation: Isolation {
                source: SOURCE_VMM.to_string(),
                single_tenant: None,
                devices,
                unknown: iso_unknown,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_get_vm_and_names_what_is_missing() {
        let m = "ab".repeat(48);
        let vm = json!({
            "state": "running", "extra": {"ignored": true},
            "measurement": {"value": m, "events": [{"tag": "entry", "digest": "00", "detail": "long64 rip=0x100000"}]},
            "signed": true,
            "boot_source": {"kind": "signed", "name": "t", "version": 3, "manifest_sha384": "cd".repeat(48)},
            "cpuid_policy": "bulwark-default-v1",
            "vcpus": [{"index": 0}, {"index": 1}],
            "memory": {"guest_ram_bytes": 1073741824u64},
            "vfio": {"devices": [{"bdf": "0000:41:00.0", "id": "10de:2331", "group": 7}]}
        });
        let c = LaunchClaims::from_vm_info(&vm, &[vec![1; 32]]).unwrap();
        assert_eq!(c.launch.vcpus, 2);
        assert_eq!(c.launch.boot_mode, "signed-bundle/long64");
        assert!(c.launch.unknown.is_empty(), "{:?}", c.launch.unknown);
        assert_eq!(c.isolation.devices[0].iommu_group, Some(7));
        assert!(c
            .isolation
            .unknown
            .contains(&"isolation.devices[].sanitized".to_string()));

        let sparse = json!({"measurement": {"value": m}});
        let c = LaunchClaims::from_vm_info(&sparse, &[]).unwrap();
        for k in [
            "launch.vcpus",
            "launch.memory_bytes",
            "launch.cpuid_policy",
            "launch.boot_source",
        ] {
            assert!(c.launch.unknown.contains(&k.to_string()), "{k}");
        }
        assert!(LaunchClaims::from_vm_info(&json!({}), &[]).is_err());
    }
}
