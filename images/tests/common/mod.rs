//! Helpers shared by the image tests: keys, small component files and a
//! signed bundle built through the public API.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bulwark_image::{build, generate_key_pair, sign, BuildSpec, PublicKey, SigningKey};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub bundle: PathBuf,
    pub key: SigningKey,
    pub key_path: PathBuf,
    pub public: PublicKey,
    pub public_path: PathBuf,
}

pub fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf, SigningKey, PublicKey) {
    let d = dir.join(name);
    let (private, public, pk) = generate_key_pair(&d).unwrap();
    let sk = SigningKey::from_pem_file(&private).unwrap();
    (private, public, sk, pk)
}

/// Deterministic, non-repeating test bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

pub fn spec(dir: &Path, version: u64, rootfs_blocks: usize) -> BuildSpec {
    let kernel = dir.join("kernel");
    std::fs::write(&kernel, pattern(5000, 1)).unwrap();
    let config = dir.join("config.json");
    std::fs::write(&config, br#"{"workload":"demo"}"#).unwrap();
    let rootfs = (rootfs_blocks > 0).then(|| {
        let p = dir.join("rootfs.img");
        std::fs::write(&p, pattern(rootfs_blocks * 4096, 7)).unwrap();
        p
    });
    BuildSpec {
        name: "demo-image".into(),
        version,
        created: 1_700_000_000,
        kernel,
        initrd: None,
        cmdline: Some("console=ttyS0 quiet".into()),
        config: Some(config),
        rootfs,
    }
}

/// A bundle with kernel, cmdline, config and a 2-block rootfs, signed once.
pub fn signed_bundle(version: u64, rootfs_blocks: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (key_path, public_path, key, public) = keypair(dir.path(), "keys");
    let bundle = dir.path().join("image.bwi");
    build(&spec(dir.path(), version, rootfs_blocks), &bundle, &|_| {}).unwrap();
    sign(&bundle, &key, &|_| {}).unwrap();
    Fixture {
        dir,
        bundle,
        key,
        key_path,
        public,
        public_path,
    }
}
