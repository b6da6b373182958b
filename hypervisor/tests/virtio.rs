//! virtio devices end to end with tiny guests on this machine's KVM: block (a raw
//! file, a scratch disk and the rootfs of a signed bundle), rng and vsock, and hostile
//! drivers that the VMM must survive.

mod common;

use std::path::{Path, PathBuf};

use bulwark_image::{build, generate_key_pair, sign, BuildSpec, SigningKey};
use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// 64 KiB of deterministic, non-repeating bytes.
fn rootfs_bytes() -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The pattern the guest writes to the scratch disk (64-bit words).
fn pattern(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5ca1_ab1e
}

fn blk_cmdline(rootfs: &[u8]) -> String {
    format!(
        "console=ttyS0 rootfs_len={} rootfs_sha256={}",
        rootfs.len(),
        hex::encode(Sha256::digest(rootfs))
    )
}

#[test]
fn a_guest_reads_the_rootfs_writes_scratch_and_gets_random_bytes() {
    let dir = scratch();
    let rootfs = rootfs_bytes();
    let rootfs_path = dir.path().join("rootfs.img");
    std::fs::write(&rootfs_path, &rootfs).unwrap();
    let scratch_path = dir.path().join("scratch.img");
    std::fs::write(&scratch_path, vec![0u8; 1 << 20]).unwrap();
    let cfg = json!({
        "machine": {"vcpus": 1, "mem_mib": 64},
        "boot_source": {"kind": "linux", "kernel": elf("virtio-blk"), "cmdline": blk_cmdline(&rootfs)},
        "devices": {
            "debug_exit": true,
            "block": [
                {"id": "rootfs", "path": rootfs_path, "read_only": true},
                {"id": "scratch", "path": scratch_path}
            ],
            "rng": true
        }
    });
    let predicted = measure(cfg.clone());
    let run = boot(cfg);
    run.assert_status(16);
    for line in [
        "disk 0xd0000000: 128 sectors, id rootfs",
        "rootfs sha256 ok (65536 bytes)",
        "rootfs refuses writes and reads past the end",
        "disk 0xd0001000: 2048 sectors, id scratch",
        "scratch write/flush/read-back ok (65536 bytes)",
        "rng ok (64 bytes)",
        "virtio-blk done: 2 disks, rng yes",
    ] {
        assert!(
            run.serial.contains(line),
            "missing {line:?}:\n{}\n{}",
            run.serial,
            run.stderr
        );
    }
    // The pattern is on the host's file, at sector 16; the read-only file is untouched.
    let disk = std::fs::read(&scratch_path).unwrap();
    for (i, w) in disk[16 * 512..16 * 512 + 65536].chunks(8).enumerate() {
        assert_eq!(u64::from_le_bytes(w.try_into().unwrap()), pattern(i as u64));
    }
    assert_eq!(std::fs::read(&rootfs_path).unwrap(), rootfs);
    // The devices and their command-line fragments are in the measurement, and the
    // offline prediction matches.
    assert_eq!(booted_measurement(&run), predicted);
}

#[test]
fn notifications_work_without_ioeventfd() {
    let dir = scratch();
    let rootfs = rootfs_bytes();
    let rootfs_path = dir.path().join("rootfs.img");
    std::fs::write(&rootfs_path, &rootfs).unwrap();
    let cfg = json!({
        "machine": {"vcpus": 1, "mem_mib": 64},
        "boot_source": {"kind": "linux", "kernel": elf("virtio-blk"), "cmdline": blk_cmdline(&rootfs)},
        "devices": {
            "debug_exit": true,
            "block": [{"id": "rootfs", "path": rootfs_path, "read_only": true}],
            "rng": true
        }
    });
    let run = boot_with_env(cfg, &[("BULWARK_VMM_NO_IOEVENTFD", "1")]);
    run.assert_status(16);
    assert!(run.serial.contains("rootfs sha256 ok"), "{}", run.serial);
    assert!(run.serial.contains("rng ok (64 bytes)"), "{}", run.serial);
    assert!(
        run.stderr.contains("queue notifications exit to the VMM"),
        "{}",
        run.stderr
    );
}

struct SignedRootfs {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    key_pub: PathBuf,
}

fn signed_bundle_with_rootfs(rootfs: &[u8]) -> SignedRootfs {
    let dir = scratch();
    let (key, key_pub, _) = generate_key_pair(&dir.path().join("keys")).unwrap();
    let rootfs_path = dir.path().join("rootfs.img");
    std::fs::write(&rootfs_path, rootfs).unwrap();
    let spec = BuildSpec {
        name: "tiny-virtio".into(),
        version: 1,
        created: 0,
        kernel: elf("virtio-blk"),
        initrd: None,
        cmdline: Some(blk_cmdline(rootfs)),
        config: None,
        rootfs: Some(rootfs_path),
    };
    let bundle = dir.path().join("tenant.bwi");
    build(&spec, &bundle, &|_| {}).unwrap();
    sign(&bundle, &SigningKey::from_pem_file(&key).unwrap(), &|_| {}).unwrap();
    SignedRootfs {
        _dir: dir,
        bundle,
        key_pub,
    }
}

fn bundle_rootfs_config(bundle: &Path, key: &Path) -> Value {
    json!({
        "machine": {"vcpus": 1, "mem_mib": 64},
        "boot_source": {"kind": "bundle", "path": bundle, "trusted_keys": [key]},
        "devices": {"debug_exit": true, "block": [{"id": "rootfs", "bundle_rootfs": true}]}
    })
}

#[test]
fn a_signed_bundle_serves_its_rootfs_and_a_tampered_one_never_boots() {
    let rootfs = rootfs_bytes();
    let s = signed_bundle_with_rootfs(&rootfs);
    let cfg = bundle_rootfs_config(&s.bundle, &s.key_pub);
    let predicted = measure(cfg.clone());
    let run = boot(cfg);
    run.assert_status(16);
    assert!(run.serial.contains("id rootfs"), "{}", run.serial);
    assert!(
        run.serial.contains("rootfs sha256 ok (65536 bytes)"),
        "{}",
        run.serial
    );
    assert!(
        run.serial
            .contains("rootfs refuses writes and reads past the end"),
        "{}",
        run.serial
    );
    assert_eq!(booted_measurement(&run), predicted);

    // One byte of the rootfs flipped: refused before the guest runs (no serial output).
    let bytes = std::fs::read(&s.bundle).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w == &rootfs[..64])
        .expect("the rootfs is stored in place");
    let mut tampered = bytes.clone();
    tampered[at + 1000] ^= 1;
    let bad = s.bundle.with_file_name("tampered.bwi");
    std::fs::write(&bad, tampered).unwrap();
    let run = boot(bundle_rootfs_config(&bad, &s.key_pub));
    run.assert_status(1);
    assert!(run.serial.is_empty(), "the guest ran: {}", run.serial);
    assert!(run.stderr.contains("verification failed"), "{}", run.stderr);
}

#[test]
fn bad_virtio_configs_are_refused_naming_the_field() {
    let dir = scratch();
    let missing = dir.path().join("missing.img");
    let cfg = json!({
        "machine": {"vcpus": 1, "mem_mib": 64},
        "boot_source": {"kind": "linux", "kernel": elf("virtio-blk")},
        "devices": {"block": [{"id": "d", "path": missing}]}
    });
    let run = boot(cfg);
    run.assert_status(1);
    assert!(
        run.stderr.contains("devices.block[0].path"),
        "{}",
        run.stderr
    );
    let cfg = json!({
        "machine": {"vcpus": 1, "mem_mib": 64},
        "boot_source": {"kind": "linux", "kernel": elf("virtio-blk")},
        "devices": {"block": [{"id": "d", "bundle_rootfs": true}]}
    });
    let run = boot(cfg);
    run.assert_status(1);
    assert!(
        run.stderr.contains("devices.block[0].bundle_rootfs"),
        "{}",
        run.stderr
    );
}
