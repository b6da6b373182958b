//! Library-level tests of bundle verification: round trip, tamper evidence
//! over every byte, truncation, and each distinct refusal.

mod common;

use bulwark_image::{
    sign, Bundle, BytesSource, ComponentKind, ImageError, TrustPolicy, MAGIC, MAX_MANIFEST_LEN,
    PAGE,
};
use common::{keypair, signed_bundle};

fn verify_bytes(bytes: &[u8], policy: &TrustPolicy) -> Result<(), ImageError> {
    Bundle::from_source(BytesSource(bytes))?.verify(policy)?;
    Ok(())
}

#[test]
fn round_trip_returns_the_exact_components() {
    let f = signed_bundle(3, 2);
    let v = Bundle::open(&f.bundle)
        .unwrap()
        .verify(&TrustPolicy::single(f.public.clone()))
        .unwrap();
    assert_eq!(v.manifest().name, "demo-image");
    assert_eq!(v.manifest().version, 3);
    assert_eq!(v.signed_by(), &[*f.public.id()]);
    let kernel = v.read_component(ComponentKind::Kernel).unwrap().unwrap();
    assert_eq!(kernel, common::pattern(5000, 1));
    let cmdline = v.read_component(ComponentKind::Cmdline).unwrap().unwrap();
    assert_eq!(cmdline, b"console=ttyS0 quiet");
    assert!(v.read_component(ComponentKind::Initrd).unwrap().is_none());
    // The rootfs is served in place: its extent holds exactly the input.
    let rootfs = v.rootfs().unwrap();
    let all = std::fs::read(&f.bundle).unwrap();
    assert_eq!(rootfs.offset % PAGE, 0);
    assert_eq!(
        &all[rootfs.offset as usize..(rootfs.offset + rootfs.size) as usize],
        &common::pattern(2 * 4096, 7)[..]
    );
    assert!(v.read_component(ComponentKind::Rootfs).is_err());
}

/// The positions of `original` at which a flipped byte (0x5a) still passes `check`
/// (two threads).
fn flips_accepted(
    original: &[u8],
    policy: &TrustPolicy,
    check: fn(&[u8], &TrustPolicy) -> Result<(), ImageError>,
) -> Vec<usize> {
    let positions: Vec<usize> = (0..original.len()).collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = positions
            .chunks(original.len().div_ceil(2))
            .map(|chunk| {
                s.spawn(move || {
                    let mut copy = original.to_vec();
                    let mut accepted = Vec::new();
                    for &i in chunk {
                        copy[i] ^= 0x5a;
                        if check(&copy, policy).is_ok() {
                            accepted.push(i);
                        }
                        copy[i] ^= 0x5a;
                    }
                    accepted
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

#[test]
fn every_single_byte_flip_is_refused() {
    let f = signed_bundle(1, 2);
    let original = std::fs::read(&f.bundle).unwrap();
    let policy = TrustPolicy::single(f.public.clone());
    verify_bytes(&original, &policy).unwrap();
    let accepted = flips_accepted(&original, &policy, verify_bytes);
    assert!(
        accepted.is_empty(),
        "flips at {accepted:?} were accepted (of {} positions)",
        original.len()
    );
}

#[test]
fn truncation_at_every_page_boundary_is_refused() {
    let f = signed_bundle(1, 2);
    let original = std::fs::read(&f.bundle).unwrap();
    let policy = TrustPolicy::single(f.public.clone());
    let mut cut = 0;
    while cut < original.len() {
        let err = verify_bytes(&original[..cut], &policy).unwrap_err();
        assert!(
            matches!(err, ImageError::Format(_) | ImageError::Length { .. }),
            "cut at {cut}: {err}"
        );
        cut += PAGE as usize;
    }
    // An extra page of zeros at the end is refused too.
    let mut longer = original.clone();
    longer.extend_from_slice(&[0; PAGE as usize]);
    assert!(matches!(
        verify_bytes(&longer, &policy),
        Err(ImageError::Length { .. })
    ));
}

#[test]
fn untrusted_key_is_refused_naming_the_key() {
    let f = signed_bundle(1, 2);
    let (_, _, _, other) = keypair(f.dir.path(), "other");
    let err = Bundle::open(&f.bundle)
        .unwrap()
        .verify(&TrustPolicy::single(other))
        .unwrap_err();
    match err {
        ImageError::ThresholdNotMet {
            valid: 0,
            required: 1,
            untrusted,
        } => assert_eq!(untrusted, vec![f.public.id_hex()]),
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn threshold_counts_distinct_trusted_signers() {
    let f = signed_bundle(1, 2);
    let (_, _, second, second_pub) = keypair(f.dir.path(), "second");
    let two_of_two = TrustPolicy {
        keys: vec![f.public.clone(), second_pub.clone()],
        threshold: 2,
        min_version: 0,
    };
    let err = Bundle::open(&f.bundle)
        .unwrap()
        .verify(&two_of_two)
        .unwrap_err();
    assert!(matches!(
        err,
        ImageError::ThresholdNotMet {
            valid: 1,
            required: 2,
            ..
        }
    ));
    // The same key listed twice does not count twice.
    let same_twice = TrustPolicy {
        keys: vec![f.public.clone(), f.public.clone()],
        threshold: 2,
        min_version: 0,
    };
    assert!(matches!(
        Bundle::open(&f.bundle).unwrap().verify(&same_twice),
        Err(ImageError::Policy(_))
    ));
    sign(&f.bundle, &second, &|_| {}).unwrap();
    let v = Bundle::open(&f.bundle)
        .unwrap()
        .verify(&two_of_two)
        .unwrap();
    assert_eq!(v.signed_by().len(), 2);
    // Signing twice with one key is refused and leaves the bundle intact.
    assert!(matches!(
        sign(&f.bundle, &second, &|_| {}),
        Err(ImageError::Sign(_))
    ));
    Bundle::open(&f.bundle)
        .unwrap()
        .verify(&two_of_two)
        .unwrap();
}

#[test]
fn min_version_refuses_rollback() {
    let f = signed_bundle(4, 2);
    let mut policy = TrustPolicy::single(f.public.clone());
    policy.min_version = 5;
    assert!(matches!(
        Bundle::open(&f.bundle).unwrap().verify(&policy),
        Err(ImageError::Rollback {
            version: 4,
            minimum: 5,
            ..
        })
    ));
    policy.min_version = 4;
    Bundle::open(&f.bundle).unwrap().verify(&policy).unwrap();
}

/// Assemble a bundle by hand from raw manifest bytes, the way a third-party
/// writer following docs/image-format.md would, and sign the manifest.
fn hand_made(manifest: &[u8], data: &[u8], key: &bulwark_image::SigningKey) -> Vec<u8> {
    let data_start = 2 * PAGE as usize + manifest.len().div_ceil(PAGE as usize) * PAGE as usize;
    let file_len = data_start + data.len().div_ceil(PAGE as usize) * PAGE as usize;
    let mut out = vec![0u8; file_len];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&1u32.to_le_bytes());
    out[16..24].copy_from_slice(&(manifest.len() as u64).to_le_bytes());
    out[24..32].copy_from_slice(&(file_len as u64).to_le_bytes());
    let sig = key.sign(manifest).unwrap();
    let p = PAGE as usize;
    out[p..p + 4].copy_from_slice(&1u32.to_le_bytes());
    out[p + 8..p + 40].copy_from_slice(key.public().id());
    out[p + 40..p + 44].copy_from_slice(&1u32.to_le_bytes());
    out[p + 48..p + 144].copy_from_slice(&sig);
    out[2 * p..2 * p + manifest.len()].copy_from_slice(manifest);
    out[data_start..data_start + data.len()].copy_from_slice(data);
    out
}

fn kernel_entry(offset: usize, data: &[u8]) -> String {
    use sha2::Digest;
    format!(
        r#"{{"kind":"kernel","offset":{offset},"sha384":"{}","size":{}}}"#,
        hex::encode(sha2::Sha384::digest(data)),
        data.len()
    )
}

#[test]
fn hand_made_bundle_in_the_documented_layout_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, key, public) = keypair(dir.path(), "k");
    let data = b"kernel bytes";
    let m = format!(
        r#"{{"components":[{}],"created":1,"format":"bulwark.image.v1","name":"x","version":1}}"#,
        kernel_entry(3 * PAGE as usize, data)
    );
    verify_bytes(
        &hand_made(m.as_bytes(), data, &key),
        &TrustPolicy::single(public),
    )
    .unwrap();
}

#[test]
fn signed_manifest_with_unknown_or_duplicate_fields_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, key, public) = keypair(dir.path(), "k");
    let policy = TrustPolicy::single(public);
    let data = b"kernel bytes";
    let k = kernel_entry(3 * PAGE as usize, data);
    let unknown = format!(
        r#"{{"components":[{k}],"created":1,"debug":true,"format":"bulwark.image.v1","name":"x","version":1}}"#
    );
    let err = verify_bytes(&hand_made(unknown.as_bytes(), data, &key), &policy).unwrap_err();
    assert!(
        matches!(&err, ImageError::UnknownField(m) if m.contains("debug")),
        "{err}"
    );
    let duplicate = format!(
        r#"{{"components":[{k}],"created":1,"format":"bulwark.image.v1","name":"x","name":"y","version":1}}"#
    );
    let err = verify_bytes(&hand_made(duplicate.as_bytes(), data, &key), &policy).unwrap_err();
    assert!(
        matches!(&err, ImageError::DuplicateField(m) if m.contains("name")),
        "{err}"
    );
    let noncanonical = format!(
        r#"{{"components":[{k}], "created":1,"format":"bulwark.image.v1","name":"x","version":1}}"#
    );
    let err = verify_bytes(&hand_made(noncanonical.as_bytes(), data, &key), &policy).unwrap_err();
    assert!(matches!(err, ImageError::NonCanonical), "{err}");
}

#[test]
fn duplicate_component_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, key, public) = keypair(dir.path(), "k");
    let data = b"kernel bytes";
    let k = kernel_entry(3 * PAGE as usize, data);
    let m = format!(
        r#"{{"components":[{k},{k}],"created":1,"format":"bulwark.image.v1","name":"x","version":1}}"#
    );
    let err = verify_bytes(
        &hand_made(m.as_bytes(), data, &key),
        &TrustPolicy::single(public),
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::DuplicateComponent(ComponentKind::Kernel)),
        "{err}"
    );
}

#[test]
fn oversized_manifest_is_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, key, public) = keypair(dir.path(), "k");
    let policy = TrustPolicy::single(public);
    // A real manifest padded past the limit with a long (valid) name field
    // is refused for its size, not for its content.
    let data = b"kernel bytes";
    let big_name = "n".repeat(MAX_MANIFEST_LEN as usize);
    let m = format!(
        r#"{{"components":[{}],"created":1,"format":"bulwark.image.v1","name":"{big_name}","version":1}}"#,
        kernel_entry(0, data)
    );
    let err = verify_bytes(&hand_made(m.as_bytes(), data, &key), &policy).unwrap_err();
    assert!(
        matches!(err, ImageError::ManifestTooLarge { max, .. } if max == MAX_MANIFEST_LEN),
        "{err}"
    );
}

#[test]
fn foreign_and_empty_files_are_refused_clearly() {
    let policy = TrustPolicy::single(keypair(tempfile::tempdir().unwrap().path(), "k").3);
    for bytes in [&b""[..], b"\x7fELF", &[0u8; 20_000]] {
        let err = verify_bytes(bytes, &policy).unwrap_err();
        assert!(matches!(err, ImageError::Format(_)), "{err}");
    }
}

#[test]
fn content_changed_after_verification_is_caught_on_read() {
    let f = signed_bundle(1, 2);
    let v = Bundle::open(&f.bundle)
        .unwrap()
        .verify(&TrustPolicy::single(f.public.clone()))
        .unwrap();
    let kernel_off = v
        .manifest()
        .component(ComponentKind::Kernel)
        .unwrap()
        .offset;
    // Overwrite the kernel in place (same inode) after verification.
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&f.bundle)
        .unwrap();
    file.write_all_at(b"EVIL", kernel_off).unwrap();
    assert!(matches!(
        v.read_component(ComponentKind::Kernel),
        Err(ImageError::DigestMismatch {
            component: ComponentKind::Kernel
        })
    ));
}

/// What a loader does with `verify_for_loading`: verify, then read every deferred
/// component (each checked as it is read).
fn load_bytes(bytes: &[u8], policy: &TrustPolicy) -> Result<(), ImageError> {
    let read_now = [
        ComponentKind::Kernel,
        ComponentKind::Initrd,
        ComponentKind::Cmdline,
    ];
    let v = Bundle::from_source(BytesSource(bytes))?.verify_for_loading(policy, &read_now)?;
    for kind in read_now {
        v.read_component(kind)?;
    }
    Ok(())
}

#[test]
fn verify_for_loading_then_reading_refuses_every_single_byte_flip() {
    let f = signed_bundle(1, 2);
    let original = std::fs::read(&f.bundle).unwrap();
    let policy = TrustPolicy::single(f.public.clone());
    load_bytes(&original, &policy).unwrap();
    let accepted = flips_accepted(&original, &policy, load_bytes);
    assert!(accepted.is_empty(), "flips at {accepted:?} were accepted");
    // A flipped kernel byte passes the deferred verification and is refused on read.
    let kernel_at = original
        .windows(64)
        .position(|w| w == &common::pattern(5000, 1)[..64])
        .unwrap();
    let mut copy = original.clone();
    copy[kernel_at + 100] ^= 1;
    let v = Bundle::from_source(BytesSource(&copy))
        .unwrap()
        .verify_for_loading(&policy, &[ComponentKind::Kernel])
        .unwrap();
    assert!(matches!(
        v.read_component(ComponentKind::Kernel),
        Err(ImageError::DigestMismatch {
            component: ComponentKind::Kernel
        })
    ));
    // Not deferred, the same flip is refused by the verification itself.
    assert!(Bundle::from_source(BytesSource(&copy))
        .unwrap()
        .verify_for_loading(&policy, &[])
        .is_err());
}

#[test]
fn a_policy_from_key_files_names_the_file_that_is_not_a_key() {
    let f = signed_bundle(2, 1);
    let not_a_key = f.dir.path().join("not-a-key.pem");
    std::fs::write(&not_a_key, "hello").unwrap();
    let p = TrustPolicy::from_pem_files(&[&f.public_path], 1, 2).unwrap();
    assert_eq!((p.keys.len(), p.threshold, p.min_version), (1, 1, 2));
    Bundle::open(&f.bundle).unwrap().verify(&p).unwrap();
    let e = TrustPolicy::from_pem_files(&[&f.public_path, &not_a_key], 1, 0).unwrap_err();
    assert_eq!(e.index, 1);
    assert!(e.to_string().contains("not-a-key.pem"), "{e}");
    let missing = f.dir.path().join("missing.pem");
    let e = TrustPolicy::from_pem_files(&[&missing], 1, 0).unwrap_err();
    assert_eq!(e.index, 0);
    assert!(e.to_string().contains("missing.pem"), "{e}");
}
