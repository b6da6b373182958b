//! Booting from a signed image bundle: verified before anything is loaded, marked
//! signed in the measurement, refused when tampered, unsigned or rolled back.

mod common;

use std::path::{Path, PathBuf};

use bulwark_image::{build, generate_key_pair, sign, BuildSpec, SigningKey};
use common::*;
use serde_json::{json, Value};

struct Signed {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    unsigned: PathBuf,
    key_pub: PathBuf,
    other_pub: PathBuf,
}

fn make_bundle(
    kernel: &Path,
    initrd: Option<&[u8]>,
    cmdline: Option<&str>,
    version: u64,
) -> Signed {
    let dir = scratch();
    let (key, key_pub, _) = generate_key_pair(&dir.path().join("keys")).unwrap();
    let (_, other_pub, _) = generate_key_pair(&dir.path().join("other")).unwrap();
    let initrd_path = initrd.map(|b| {
        let p = dir.path().join("initrd");
        std::fs::write(&p, b).unwrap();
        p
    });
    let spec = BuildSpec {
        name: "tiny-test".into(),
        version,
        created: 0,
        kernel: kernel.to_path_buf(),
        initrd: initrd_path,
        cmdline: cmdline.map(str::to_string),
        config: None,
        rootfs: None,
    };
    let unsigned = dir.path().join("unsigned.bwi");
    build(&spec, &unsigned, &|_| {}).unwrap();
    let bundle = dir.path().join("tenant.bwi");
    std::fs::copy(&unsigned, &bundle).unwrap();
    sign(&bundle, &SigningKey::from_pem_file(&key).unwrap(), &|_| {}).unwrap();
    Signed {
        _dir: dir,
        bundle,
        unsigned,
        key_pub,
        other_pub,
    }
}

fn bundle_config(bundle: &Path, key: &Path) -> Value {
    json!({
        "machine": {"vcpus": 1, "mem_mib": 64},
        "boot_source": {"kind": "bundle", "path": bundle, "trusted_keys": [key]},
        "devices": {"debug_exit": true}
    })
}

#[test]
fn a_signed_linux_style_bundle_boots_and_is_measured_as_signed() {
    let s = make_bundle(
        &elf("e820"),
        Some(b"initrd from the bundle"),
        Some("console=ttyS0 signed=yes"),
        3,
    );
    let cfg = bundle_config(&s.bundle, &s.key_pub);
    let predicted = measure(cfg.clone());
    let run = boot(cfg);
    run.assert_status(16);
    assert!(
        run.serial.contains("cmdline=console=ttyS0 signed=yes\n"),
        "{}",
        run.serial
    );
    assert!(run.serial.contains(" 22 fnv1a="), "{}", run.serial);
    assert_eq!(booted_measurement(&run), predicted);

    // Same bytes booted as unsigned files measure differently (the boot-source event).
    let dir = scratch();
    std::fs::write(dir.path().join("initrd"), b"initrd from the bundle").unwrap();
    let files = json!({
        "machine": {"vcpus": 1, "mem_mib": 64},
        "boot_source": {"kind": "linux", "kernel": elf("e820"), "initrd": dir.path().join("initrd"),
                        "cmdline": "console=ttyS0 signed=yes"},
        "devices": {"debug_exit": true}
    });
    assert_ne!(measure(files), predicted);
}

#[test]
fn a_signed_flat_binary_bundle_boots_through_the_raw_loader() {
    let s = make_bundle(&flat("hello"), None, None, 1);
    let mut cfg = bundle_config(&s.bundle, &s.key_pub);
    cfg["boot_source"]["raw"] =
        json!({"load_addr": 0x10_0000, "entry": {"mode": "long64", "rip": 0x10_0000, "rsi": 7}});
    let predicted = measure(cfg.clone());
    let run = boot(cfg);
    assert_eq!(
        (run.status, run.serial.as_str()),
        (23, "hello from tiny guest\n"),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(booted_measurement(&run), predicted);
}

#[test]
fn unsigned_tampered_untrusted_and_rolled_back_bundles_are_refused_before_boot() {
    let s = make_bundle(&flat("hello"), None, None, 5);
    let raw = json!({"load_addr": 0x10_0000, "entry": {"mode": "long64", "rip": 0x10_0000}});
    let refuse = |mut cfg: Value, needle: &str| {
        cfg["boot_source"]["raw"] = raw.clone();
        let run = boot(cfg);
        assert_eq!(run.status, 1, "stderr: {}", run.stderr);
        assert!(run.serial.is_empty(), "nothing may run: {}", run.serial);
        assert!(
            run.stderr.contains(needle),
            "wanted {needle:?} in: {}",
            run.stderr
        );
    };
    refuse(
        bundle_config(&s.unsigned, &s.key_pub),
        "boot_source.path: verification failed",
    );
    refuse(
        bundle_config(&s.bundle, &s.other_pub),
        "boot_source.path: verification failed",
    );
    let mut old = bundle_config(&s.bundle, &s.key_pub);
    old["boot_source"]["min_version"] = json!(6);
    refuse(old, "boot_source.path: verification failed");
    refuse(
        bundle_config(&s.bundle, Path::new("/nonexistent.pub")),
        "boot_source.trusted_keys[0]",
    );
    // Flip one byte of the kernel component inside the signed file.
    let mut bytes = std::fs::read(&s.bundle).unwrap();
    let image = std::fs::read(flat("hello")).unwrap();
    let at = bytes
        .windows(image.len())
        .position(|w| w == image.as_slice())
        .expect("kernel bytes in bundle");
    bytes[at + 10] ^= 0xff;
    let tampered = s.bundle.with_extension("tampered");
    std::fs::write(&tampered, &bytes).unwrap();
    refuse(bundle_config(&tampered, &s.key_pub), "boot_source.path");
}

/// A kernel byte flipped in a signed bundle is caught when the kernel is read (the one
/// pass that hashes it), before anything boots and before the rollback state records
/// the version.
#[test]
fn a_flipped_kernel_byte_is_refused_on_read_and_records_no_version() {
    let s = make_bundle(&flat("hello"), None, None, 5);
    let image = std::fs::read(flat("hello")).unwrap();
    let mut bytes = std::fs::read(&s.bundle).unwrap();
    let at = bytes
        .windows(image.len())
        .position(|w| w == image.as_slice())
        .expect("kernel bytes in bundle");
    bytes[at + image.len() / 2] ^= 0x01;
    let tampered = s.bundle.with_extension("flipped");
    std::fs::write(&tampered, &bytes).unwrap();
    let state = s._dir.path().join("rollback.json");
    let mut cfg = bundle_config(&tampered, &s.key_pub);
    cfg["boot_source"]["raw"] =
        json!({"load_addr": 0x10_0000, "entry": {"mode": "long64", "rip": 0x10_0000}});
    cfg["boot_source"]["rollback_state"] = json!(state);
    let run = boot(cfg);
    run.assert_status(1);
    assert!(
        run.stderr
            .contains("boot_source.path: verification failed: reading the kernel component"),
        "{}",
        run.stderr
    );
    assert!(run.serial.is_empty(), "nothing may run: {}", run.serial);
    let recorded = std::fs::read_to_string(&state).unwrap_or_default();
    assert!(!recorded.contains("tiny-test"), "recorded: {recorded}");
}

/// With a rollback state file, booting version 5 records it; `measure` only checks;
/// version 4 (correctly signed by the same key) is then refused.
#[test]
fn rollback_state_records_the_booted_version_and_refuses_older_ones() {
    let new = make_bundle(&flat("hello"), None, None, 5);
    let state = new._dir.path().join("rollback.json");
    let raw = json!({"load_addr": 0x10_0000, "entry": {"mode": "long64", "rip": 0x10_0000}});
    let cfg = |bundle: &Path, key: &Path| {
        let mut c = bundle_config(bundle, key);
        c["boot_source"]["raw"] = raw.clone();
        c["boot_source"]["rollback_state"] = json!(state);
        c
    };
    measure(cfg(&new.bundle, &new.key_pub));
    assert!(!state.exists(), "measure must not record anything");
    boot(cfg(&new.bundle, &new.key_pub)).assert_status(16);
    assert!(std::fs::read_to_string(&state)
        .unwrap()
        .contains("tiny-test"));

    // An older version signed by a key the config trusts.
    let old = make_bundle(&flat("hello"), None, None, 4);
    let run = boot(cfg(&old.bundle, &old.key_pub));
    run.assert_status(1);
    assert!(run.stderr.contains("verification failed"), "{}", run.stderr);
    assert!(run.serial.is_empty());
    // The same older version still boots without the state file.
    let mut no_state = cfg(&old.bundle, &old.key_pub);
    no_state["boot_source"]
        .as_object_mut()
        .unwrap()
        .remove("rollback_state");
    boot(no_state).assert_status(16);
}

/// A signed bundle with every optional component the caller gives, signed by a new key.
/// Returns the scratch dir (kept alive), the bundle, the public key and the manifest.
fn make_full_bundle(
    kernel: &Path,
    initrd: Option<&[u8]>,
    cmdline: Option<&str>,
    config: Option<&[u8]>,
    rootfs: Option<&[u8]>,
) -> (tempfile::TempDir, PathBuf, PathBuf, bulwark_image::Manifest) {
    let dir = scratch();
    let (key, key_pub, _) = generate_key_pair(&dir.path().join("keys")).unwrap();
    let file = |name: &str, bytes: Option<&[u8]>| {
        bytes.map(|b| {
            let p = dir.path().join(name);
            std::fs::write(&p, b).unwrap();
            p
        })
    };
    let spec = BuildSpec {
        name: "tiny-full".into(),
        version: 1,
        created: 0,
        kernel: kernel.to_path_buf(),
        initrd: file("initrd", initrd),
        cmdline: cmdline.map(str::to_string),
        config: file("config.json", config),
        rootfs: file("rootfs.img", rootfs),
    };
    let bundle = dir.path().join("full.bwi");
    let manifest = build(&spec, &bundle, &|_| {}).unwrap();
    sign(&bundle, &SigningKey::from_pem_file(&key).unwrap(), &|_| {}).unwrap();
    (dir, bundle, key_pub, manifest)
}

fn read_source(cfg: &Value) -> Result<bulwark_vmm::boot_source::BootInputs, String> {
    let cfg = bulwark_vmm::config::VmConfig::from_json(&cfg.to_string()).unwrap();
    bulwark_vmm::boot_source::read_boot_source(
        &cfg.boot_source,
        bulwark_vmm::boot_source::StateUse::CheckOnly,
    )
    .map_err(|e| e.to_string())
}

/// A bundle with a rootfs and a config, booted as Linux: the command line ends in the
/// dm-verity and config fragments (recomputed here from the signed manifest, per
/// docs/image-format.md), the initrd is the signed one, zero padding to 4 bytes and the
/// config archive; the guest sees exactly those bytes and `measure` predicts the boot.
#[test]
fn a_signed_linux_bundle_hands_init_the_rootfs_verity_and_the_config() {
    use sha2::{Digest, Sha384};
    let initrd = b"initrd from the bundle"; // 22 bytes: 2 bytes of padding
    let config = br#"{"workload":{"argv":["/usr/bin/serve","--port","8080"]}}"#;
    let rootfs = rootfs_bytes();
    let (_dir, bundle, key_pub, manifest) = make_full_bundle(
        &elf("e820"),
        Some(initrd),
        Some("console=ttyS0 signed=yes"),
        Some(config),
        Some(&rootfs),
    );

    // The expected fragments, from the manifest's own fields.
    let c = manifest
        .component(bulwark_image::ComponentKind::Rootfs)
        .unwrap();
    let v = c.verity().unwrap();
    assert_eq!((v.hash_offset - c.offset) % u64::from(v.hash_block_size), 0);
    let verity = format!(
        "bulwark.verity=1:{}:{}:{}:{}:{}:{}:{}",
        v.algorithm.name(),
        v.data_block_size,
        v.hash_block_size,
        v.data_blocks,
        (v.hash_offset - c.offset) / u64::from(v.hash_block_size),
        hex::encode(&v.root_hash),
        hex::encode(&v.salt),
    );
    // 64 KiB rootfs: 16 data blocks, the tree right after them (block 16).
    assert!(
        verity.starts_with("bulwark.verity=1:sha256:4096:4096:16:16:"),
        "{verity}"
    );
    let cfg_frag = format!(
        "bulwark.config_sha384={}",
        hex::encode(Sha384::digest(config))
    );
    let want_cmdline = format!("console=ttyS0 signed=yes {verity} {cfg_frag}");
    let archive = bulwark_vmm::initrd_config::config_archive(config).unwrap();
    let mut want_initrd = initrd.to_vec();
    want_initrd.extend_from_slice(&[0, 0]);
    want_initrd.extend_from_slice(&archive);
    // The archive, checked loosely here (initrd_config's tests check it field by field).
    assert!(archive.starts_with(b"070701"));
    assert!(archive
        .windows(config.len())
        .any(|w| w == config.as_slice()));
    assert!(archive.ends_with(b"TRAILER!!!\0\0\0\0"));

    let cfg = bundle_config(&bundle, &key_pub);
    let inputs = read_source(&cfg).unwrap();
    match &inputs.payload {
        bulwark_vmm::boot_source::BootPayload::Linux {
            cmdline, initrd, ..
        } => {
            assert_eq!(cmdline, &want_cmdline);
            // The signed initrd stays in the bundle until it is loaded; what the
            // loader reads is the signed bytes, the padding and the archive.
            let initrd = initrd.as_ref().unwrap();
            assert!(matches!(initrd, bulwark_vmm::blob::Blob::Signed(_)));
            assert_eq!(initrd.read().unwrap().as_ref(), want_initrd.as_slice());
        }
        other => panic!("not a Linux payload: {other:?}"),
    }

    let predicted = measure(cfg.clone());
    let run = boot(cfg);
    run.assert_status(16);
    assert!(
        run.serial.contains(&format!("cmdline={want_cmdline}\n")),
        "{}",
        run.serial
    );
    let fnv = want_initrd.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    assert!(
        run.serial
            .contains(&format!(" {} fnv1a={fnv:08x}\n", want_initrd.len())),
        "{}",
        run.serial
    );
    assert_eq!(booted_measurement(&run), predicted);

    // A config without an initrd or a command line: the archive is the initrd and the
    // fragment has no leading space.
    let (_dir2, bundle, key_pub, _) =
        make_full_bundle(&elf("e820"), None, None, Some(config), None);
    let inputs = read_source(&bundle_config(&bundle, &key_pub)).unwrap();
    match inputs.payload {
        bulwark_vmm::boot_source::BootPayload::Linux {
            cmdline, initrd, ..
        } => {
            assert_eq!(cmdline, cfg_frag);
            assert_eq!(initrd, Some(bulwark_vmm::blob::Blob::Bytes(archive)));
        }
        other => panic!("not a Linux payload: {other:?}"),
    }
}

/// A config component cannot be handed to a raw binary: refused before boot. A rootfs
/// stays allowed with a raw boot (tiny guests use it) and adds nothing to load.
#[test]
fn a_raw_boot_refuses_a_config_component_and_takes_a_rootfs() {
    let raw = json!({"load_addr": 0x10_0000, "entry": {"mode": "long64", "rip": 0x10_0000}});
    let (_dir, bundle, key_pub, _) =
        make_full_bundle(&flat("hello"), None, None, Some(b"{}"), None);
    let mut cfg = bundle_config(&bundle, &key_pub);
    cfg["boot_source"]["raw"] = raw.clone();
    let e = read_source(&cfg).unwrap_err();
    assert!(
        e.starts_with("boot_source.path: a config component needs a Linux boot"),
        "{e}"
    );
    let run = boot(cfg);
    run.assert_status(1);
    assert!(run.serial.is_empty(), "nothing may run: {}", run.serial);
    assert!(
        run.stderr.contains("a config component needs a Linux boot"),
        "{}",
        run.stderr
    );

    let (_dir, bundle, key_pub, _) =
        make_full_bundle(&flat("hello"), None, None, None, Some(&rootfs_bytes()));
    let mut cfg = bundle_config(&bundle, &key_pub);
    cfg["boot_source"]["raw"] = raw;
    let inputs = read_source(&cfg).unwrap();
    assert!(inputs.rootfs.is_some());
    assert!(matches!(
        inputs.payload,
        bulwark_vmm::boot_source::BootPayload::Raw { .. }
    ));
    let predicted = measure(cfg.clone());
    let run = boot(cfg);
    assert_eq!(
        (run.status, run.serial.as_str()),
        (16, "hello from tiny guest\n"),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(booted_measurement(&run), predicted);
}

/// A node OS image (a bundle of kind "node": a UKI for a server's disk) is signed by
/// a trusted key and still refused as a boot source, with an error naming the kind.
#[test]
fn a_node_os_image_is_refused_naming_its_kind() {
    let dir = scratch();
    let (key, key_pub, _) = generate_key_pair(&dir.path().join("keys")).unwrap();
    let uki = dir.path().join("uki.efi");
    std::fs::write(&uki, b"MZ not really a UKI").unwrap();
    let spec = bulwark_image::NodeBuildSpec {
        name: "node-test".into(),
        version: 1,
        created: 0,
        uki,
        bootloader: None,
        node: bulwark_image::NodeInfo {
            boot_manager_authenticode_sha256: None,
            pcrs: [(11, [1u8; 32])].into_iter().collect(),
            secure_boot: false,
            uki_authenticode_sha256: [2; 32],
        },
    };
    let bundle = dir.path().join("node.bwi");
    bulwark_image::build_node(&spec, &bundle, &|_| {}).unwrap();
    sign(&bundle, &SigningKey::from_pem_file(&key).unwrap(), &|_| {}).unwrap();
    let Err(err) = read_source(&bundle_config(&bundle, &key_pub)) else {
        panic!("a node image must be refused");
    };
    assert!(
        err.contains("node-test is a node image (kind \"node\"")
            && err.contains("tenant images only"),
        "{err}"
    );
}

/// The bundle is verified on threads of its own that have exited before the guest
/// runs: every thread of a running VMM booted from a bundle (with a rootfs, whose
/// dm-verity tree is checked in parallel) runs under its seccomp filter.
#[test]
fn no_verification_thread_outlives_the_boot_without_seccomp() {
    let (_dir, bundle, key_pub, _) =
        make_full_bundle(&flat("smp"), None, None, None, Some(&rootfs_bytes()));
    let mut cfg = bundle_config(&bundle, &key_pub);
    // vCPU 0 of the smp guest waits for two vCPUs; with one it spins until stopped.
    cfg["boot_source"]["raw"] = json!({"load_addr": 0x10_0000,
        "entry": {"mode": "long64", "rip": 0x10_0000, "rsi": 2, "aps": "at_entry"}});
    let mut vmm = spawn_vmm(scratch(), cfg, false);
    let pid = vmm.child.id();
    let threads = || -> Vec<(String, String)> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks
                    .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
                    .map(|status| {
                        let field = |k: &str| {
                            status
                                .lines()
                                .find_map(|l| l.strip_prefix(k))
                                .unwrap_or_default()
                                .trim()
                                .to_string()
                        };
                        (field("Name:"), field("Seccomp:"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut first_running = None;
    let seen = loop {
        let now = threads();
        let running = now.iter().any(|(name, _)| name == "vcpu0");
        if running && first_running.is_none() {
            // The guest runs: the verification threads are already gone.
            first_running = Some(now.clone());
        }
        if running && now.iter().all(|(_, mode)| mode == "2") {
            break now;
        }
        if std::time::Instant::now() > deadline || vmm_exited(pid) {
            let _ = vmm.child.kill();
            panic!("threads of the running VMM: {now:?} (every one must be in seccomp mode 2)");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let first_running = first_running.unwrap();
    assert!(
        first_running
            .iter()
            .all(|(name, _)| !name.starts_with("verify-")),
        "{first_running:?}"
    );
    assert!(
        seen.iter().all(|(name, _)| !name.starts_with("verify-")),
        "{seen:?}"
    );
    // And it stays so (no late thread without a filter).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let later = threads();
    assert!(later.iter().all(|(_, mode)| mode == "2"), "{later:?}");
    let _ = vmm.child.kill();
    let _ = vmm.child.wait();
}
