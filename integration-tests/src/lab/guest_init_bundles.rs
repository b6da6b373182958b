//! Signed tenant images for the `vmm-guest-init` scenario, built on the host with
//! `bulwark-image`: Debian's kernel, an initramfs whose `/init` is `bulwark-init` with
//! the modules it loads in `/lib/modules`, a config component, and an ext4 rootfs
//! holding the workload (`lab-workload`). One bundle per case: the good one, and one
//! for each refusal that needs a different image (the flipped-byte case reuses the
//! good bundle and flips a byte in L1 after the VMM verified it; the shutdown case
//! boots the good bundle and the host stops it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use bulwark_image::{build, generate_key_pair, sign, BuildSpec, SigningKey};

use super::error::{LabError, Result};
use super::host_command::{find_program, run};
use super::initramfs::Initramfs;
use super::l2_bundle::{image_error, make_ext4, write, L1File};

/// Where the files go in L1.
pub const L1_DIR: &str = "/lab/gi";

/// The signed command line of every case (bulwark-vmm appends the verity and config
/// fragments). `panic=-1`: a kernel panic resets at once (bulwark-vmm exits 3), so a
/// PID 1 that exits is seen as such rather than as a hang.
pub const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// The vsock port bulwark-init bridges to the workload's TCP port 7000, and the
/// workload's own vsock port (the raw rate).
pub const BRIDGE_PORT: u32 = 7000;
/// See [`BRIDGE_PORT`].
pub const RAW_PORT: u32 = 7001;
/// The vsock port bulwark-init serves attested TLS on, bridged to the same TCP port.
pub const ATLS_PORT: u32 = 7002;
/// The good workload's exit status.
pub const EXIT_CODE: i32 = 7;
/// Size of the rootfs image.
const ROOTFS_BYTES: u64 = 8 << 20;

/// One case: its name, how its config differs from the good one, extra command-line
/// words.
struct Case {
    name: &'static str,
    edit: fn(&mut serde_json::Value),
    cmdline: &'static str,
}

fn good_config() -> serde_json::Value {
    serde_json::json!({
        "format": "bulwark.init.v1",
        "modules": ["virtio_blk", "dm_verity"],
        "rootfs": {"disk": "rootfs", "fs": "ext4", "verify": "full"},
        "workload": {
            "argv": ["/bin/lab-workload", "serve", "7000", "7001", "3", EXIT_CODE.to_string()],
            "env": {"BULWARK_LAB": "guest-init"},
            "uid": 1000,
            "gid": 1000,
            "cwd": "/",
            "tmp_mib": 8
        },
        "ports": [
            {"vsock": BRIDGE_PORT, "tcp": 7000, "tls": "none"},
            {"vsock": ATLS_PORT, "tcp": 7000, "tls": "attested"}
        ],
        "gpu": {"required": false}
    })
}

const CASES: &[Case] = &[
    Case {
        name: "good",
        edit: |_| {},
        cmdline: "",
    },
    Case {
        name: "badconfig",
        edit: |v| v["surprise"] = true.into(),
        cmdline: "",
    },
    Case {
        name: "nomodule",
        edit: |v| {
            v["modules"] = serde_json::json!(["virtio_blk", "dm_verity", "bulwark_no_such_module"])
        },
        cmdline: "",
    },
    Case {
        name: "notfound",
        edit: |v| v["workload"]["argv"] = serde_json::json!(["/bin/no-such-workload"]),
        cmdline: "",
    },
    Case {
        name: "signal",
        edit: |v| v["workload"]["argv"] = serde_json::json!(["/bin/lab-workload", "die"]),
        cmdline: "",
    },
    Case {
        name: "gpu",
        edit: |v| v["gpu"] = serde_json::json!({"required": true}),
        cmdline: "",
    },
    Case {
        name: "panic",
        edit: |_| {},
        cmdline: "bulwark.test_panic=root_verified",
    },
];

/// A stripped copy of a program (the lab's builds carry debug info; the guest does not
/// need it and every byte is hashed, measured and copied into L2).
fn stripped(program: &Path, out: &Path) -> Result<()> {
    let strip = find_program("strip").ok_or_else(|| LabError::Prerequisite {
        what: "strip (binutils)".into(),
        hint: "run scripts/setup".into(),
    })?;
    run(Command::new(strip)
        .args(["--strip-debug", "-o"])
        .arg(out)
        .arg(program))?;
    Ok(())
}

/// The VM config of a case: the bundle's rootfs as the read-only disk `rootfs`,
/// virtio-rng, vsock (host side `/tmp/gi.sock`), serial to `/tmp/gi-NAME.log`; with
/// `firmware`, booted through that firmware image (`machine.firmware`), with the
/// debug-exit port so that a refusal ends the VM with the firmware's exit code.
pub fn vm_config(bundle: &str, name: &str, firmware: Option<&str>) -> String {
    let (firmware, debug_exit) = match firmware {
        Some(f) => (format!(r#", "firmware": "{f}""#), r#", "debug_exit": true"#),
        None => (String::new(), ""),
    };
    format!(
        r#"{{"machine": {{"vcpus": 1, "mem_mib": 256, "mmio64_gib": 64, "cpuid_policy": "bulwark-default-v1"{firmware}}},
 "boot_source": {{"kind": "bundle", "path": "{bundle}", "trusted_keys": ["{L1_DIR}/signing.pub"]}},
 "devices": {{"serial": {{"file": "/tmp/gi-{name}.log"}}, "rng": true,
   "block": [{{"id": "rootfs", "bundle_rootfs": true}}],
   "vsock": {{"guest_cid": 3, "uds_path": "/tmp/gi.sock"}}{debug_exit}}}}}
"#
    )
}

/// Builds every case's signed bundle in `dir`. `init` is `bulwark-init`, `workload`
/// `lab-workload` (both static), `modules` the `.ko` files bulwark-init loads (with
/// their dependencies). Returns the files for L1: the bundles, the key, each case's
/// VM config, and `rootfs-offset` (the good bundle's first rootfs byte, for the
/// flipped-byte case); with `firmware` (the guest firmware image), `firmware.bin` and
/// `vm-fwnotfound.json`: the `notfound` image booted through the firmware.
pub fn prepare(
    dir: &Path,
    kernel: &Path,
    init: &Path,
    workload: &Path,
    modules: &[PathBuf],
    firmware: &Path,
) -> Result<Vec<L1File>> {
    fs::create_dir_all(dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
    // The initramfs: bulwark-init as /init, the console node, the modules.
    let init_stripped = dir.join("bulwark-init");
    stripped(init, &init_stripped)?;
    let mut image = Initramfs::new();
    image
        .char_device("/dev/console", 5, 1)
        .host_file("/init", &init_stripped, 0o755)
        .dir("/lib/modules");
    for m in modules {
        let name = m
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        image.host_file(&format!("/lib/modules/{name}"), m, 0o644);
    }
    let initrd = dir.join("initramfs.cpio");
    image.write_to(&initrd)?;

    // The rootfs: the workload and the directories bulwark-init mounts on.
    let tree = dir.join("rootfs-tree");
    let _ = fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "dev", "tmp", "etc"] {
        fs::create_dir_all(tree.join(d)).map_err(LabError::io("creating the rootfs tree"))?;
    }
    stripped(workload, &tree.join("bin/lab-workload"))?;
    write(
        &tree.join("etc/bulwark-lab"),
        "rootfs of the vmm-guest-init scenario\n",
    )?;
    let rootfs = dir.join("rootfs.ext4");
    make_ext4(&tree, &rootfs, ROOTFS_BYTES)?;

    let keys = dir.join("keys");
    let _ = fs::remove_dir_all(&keys);
    let (key, key_pub, _) = generate_key_pair(&keys).map_err(image_error("keygen"))?;
    let key = SigningKey::from_pem_file(&key).map_err(image_error("reading the signing key"))?;
    let mut files = vec![(format!("{L1_DIR}/signing.pub"), key_pub)];
    for case in CASES {
        let mut config = good_config();
        (case.edit)(&mut config);
        let config_path = dir.join(format!("config-{}.json", case.name));
        write(
            &config_path,
            serde_json::to_vec_pretty(&config).map_err(|e| LabError::UnexpectedOutput {
                command: "serialising a guest-init config".into(),
                reason: e.to_string(),
            })?,
        )?;
        let cmdline = format!("{CMDLINE} {}", case.cmdline);
        let bundle = dir.join(format!("{}.bwi", case.name));
        let spec = BuildSpec {
            name: format!("lab-guest-init-{}", case.name),
            version: 1,
            created: 0,
            kernel: kernel.to_owned(),
            initrd: Some(initrd.clone()),
            cmdline: Some(cmdline.trim_end().to_owned()),
            config: Some(config_path),
            rootfs: Some(rootfs.clone()),
        };
        build(&spec, &bundle, &|_| {}).map_err(image_error("build"))?;
        sign(&bundle, &key, &|_| {}).map_err(image_error("sign"))?;
        let vm = dir.join(format!("vm-{}.json", case.name));
        write(
            &vm,
            vm_config(&format!("{L1_DIR}/{}.bwi", case.name), case.name, None),
        )?;
        files.push((format!("{L1_DIR}/{}.bwi", case.name), bundle));
        files.push((format!("{L1_DIR}/vm-{}.json", case.name), vm));
    }
    // Cases that boot the good image: with one rootfs byte flipped (a copy in L1,
    // /tmp/flipped.bwi), and stopped by the host (`Shutdown`).
    for (name, bundle) in [
        ("flipped", "/tmp/flipped.bwi".to_owned()),
        ("shutdown", format!("{L1_DIR}/good.bwi")),
    ] {
        let vm = dir.join(format!("vm-{name}.json"));
        write(&vm, vm_config(&bundle, name, None))?;
        files.push((format!("{L1_DIR}/vm-{name}.json"), vm));
    }
    // The notfound image through the guest firmware: bulwark-init starts, reads its
    // config and reports the missing workload, exactly as in a direct boot.
    files.push((format!("{L1_DIR}/firmware.bin"), firmware.to_owned()));
    let vm = dir.join("vm-fwnotfound.json");
    write(
        &vm,
        vm_config(
            &format!("{L1_DIR}/notfound.bwi"),
            "fwnotfound",
            Some(&format!("{L1_DIR}/firmware.bin")),
        ),
    )?;
    files.push((format!("{L1_DIR}/vm-fwnotfound.json"), vm));
    // Our own bundle, just built: its layout is known, nothing needs vouching for here.
    let good = bulwark_image::Bundle::open(&dir.join("good.bwi")).map_err(image_error("open"))?;
    let offset = good
        .unverified_manifest()
        .component(bulwark_image::ComponentKind::Rootfs)
        .map(|c| c.offset)
        .ok_or_else(|| LabError::UnexpectedOutput {
            command: "bulwark-image build".into(),
            reason: "the good bundle has no rootfs component".into(),
        })?;
    let offset_file = dir.join("rootfs-offset");
    write(&offset_file, format!("{offset}\n"))?;
    files.push((format!("{L1_DIR}/rootfs-offset"), offset_file));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_configs_are_valid_bulwark_vmm_configs() {
        let cfg =
            bulwark_vmm::config::VmConfig::from_json(&vm_config("/lab/gi/good.bwi", "good", None))
                .unwrap();
        assert!(cfg.devices.block[0].bundle_rootfs && cfg.devices.vsock.is_some());
        assert_eq!(cfg.machine.firmware, None);
        let fw = vm_config("/lab/gi/notfound.bwi", "fw", Some("/lab/gi/firmware.bin"));
        let cfg = bulwark_vmm::config::VmConfig::from_json(&fw).unwrap();
        assert_eq!(
            cfg.machine.firmware.as_deref(),
            Some(Path::new("/lab/gi/firmware.bin"))
        );
    }

    #[test]
    fn every_case_but_good_differs_from_the_good_config() {
        let good = good_config();
        for c in &CASES[1..] {
            let mut v = good_config();
            (c.edit)(&mut v);
            assert!(v != good || !c.cmdline.is_empty(), "{}", c.name);
        }
    }
}
