//! Updating the node's own OS image through bulwarkd (`PUT /node/image`): a node
//! disk (a file here) installed with version 1; version 2 arrives through the API
//! and becomes the entry systemd-boot tries once; lower versions, tenant images and
//! untrusted images are refused and leave the slots as they were; without
//! `node_update` in the config the endpoint says it is not configured.
//!
//! `attestation.node_image: "booted"`: bulwarkd states the image of the slot that
//! systemd-boot's `LoaderEntrySelected` (a fake efivarfs here) names, read from its
//! signed manifest on the ESP; a wrong entry or a tampered manifest leaves it
//! running with attestation refused for that reason.

mod common;

use std::path::{Path, PathBuf};

use bulwark_node_image::build::{build_node_image, NodeBuildSpec};
use bulwark_node_image::install::{install, read_node_image, InstallOptions};
use common::*;
use serde_json::{json, Value};

const SD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// A signed node image of `version` (systemd-boot's PE stands in for the kernel).
fn node_image(dir: &Path, key: &Path, version: u64) -> PathBuf {
    std::fs::write(dir.join("initrd"), vec![3u8; 8192]).unwrap();
    let out = dir.join(format!("node-{version}.bwi"));
    build_node_image(
        &NodeBuildSpec {
            name: "bulwark-node".into(),
            version,
            created: Some(1),
            kernel: SD_BOOT.into(),
            initrd: dir.join("initrd"),
            cmdline: Some("console=ttyS0".into()),
            osrel: None,
            uname: None,
            stub: STUB.into(),
            boot_manager: Some(SD_BOOT.into()),
            secure_boot: false,
            secure_boot_signing: None,
            uki_out: None,
        },
        &out,
    )
    .unwrap();
    bulwark_image::sign(
        &out,
        &bulwark_image::SigningKey::from_pem_file(key).unwrap(),
        &|_| {},
    )
    .unwrap();
    out
}

#[test]
fn a_node_image_update_goes_to_the_inactive_slot_and_bad_ones_change_nothing() {
    if !Path::new(SD_BOOT).exists() || !Path::new(STUB).exists() {
        panic!("systemd-boot-efi is not installed (scripts/debian-packages.txt lists it)");
    }
    let keys = tempfile::tempdir().unwrap();
    let (key, key_pub, _) =
        bulwark_image::generate_key_pair(&keys.path().join("provider")).unwrap();
    let (other, _, _) = bulwark_image::generate_key_pair(&keys.path().join("other")).unwrap();
    let trust = bulwark_image::TrustPolicy {
        keys: vec![bulwark_image::PublicKey::from_pem_file(&key_pub).unwrap()],
        threshold: 1,
        min_version: 0,
    };
    // The node's disk, installed with version 1 (as `bulwark-node-image install` does).
    let disk = keys.path().join("disk.img");
    let v1 = node_image(keys.path(), &key, 1);
    install(
        &read_node_image(&v1, &trust, &|_| {}).unwrap(),
        &disk,
        &InstallOptions {
            esp_mib: 64,
            create_size: Some(128 << 20),
        },
        &|_| {},
    )
    .unwrap();

    let mut n = Node::new(json!({
        "max_image_bytes": 64 << 20,
        "node_update": { "esp": disk, "trust": [key_pub] },
    }));
    n.start();
    let sock = n.sock();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let upload = |file: &Path| {
        let r = rt
            .block_on(bulwark_agent::client::upload(
                &sock,
                "/node/image",
                file,
                |_, _| {},
            ))
            .unwrap();
        (r.status, r.json())
    };
    let slots = |n: &Node| -> Vec<(u64, String)> {
        let b = n.get("/node/boot");
        b["slots"]
            .as_array()
            .unwrap_or_else(|| panic!("{b}"))
            .iter()
            .map(|s| {
                (
                    s["version"].as_u64().unwrap(),
                    s["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(slots(&n), [(1, "blessed".to_string())]);

    // Version 2: written, to be tried once.
    let v2 = node_image(keys.path(), &key, 2);
    let (s, v) = upload(&v2);
    assert_eq!(s, 200, "{v}");
    let after = slots(&n);
    assert!(
        after.contains(&(2, "trying".to_string())) && after.contains(&(1, "blessed".to_string())),
        "{after:?}"
    );

    // Refused, nothing changed: the same version again, a lower one, one signed by
    // another key, a tenant image, junk.
    let v0 = node_image(keys.path(), &key, 0);
    let elsewhere = keys.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let untrusted = node_image(&elsewhere, &other, 3);
    let tenant = keys.path().join("tenant.bwi");
    bulwark_image::build(
        &bulwark_image::BuildSpec {
            name: "tenant".into(),
            version: 9,
            created: 1,
            kernel: SD_BOOT.into(),
            initrd: None,
            cmdline: None,
            config: None,
            rootfs: None,
        },
        &tenant,
        &|_| {},
    )
    .unwrap();
    bulwark_image::sign(
        &tenant,
        &bulwark_image::SigningKey::from_pem_file(&key).unwrap(),
        &|_| {},
    )
    .unwrap();
    let junk = keys.path().join("junk.bwi");
    std::fs::write(&junk, vec![9u8; 5000]).unwrap();
    for (file, why) in [
        (&v2, "already"),
        (&v0, "rollback"),
        (&untrusted, "signature"),
        (&tenant, "not a node image"),
        (&junk, ""),
    ] {
        let (s, v) = upload(file);
        assert_eq!(s, 422, "{}: {v}", file.display());
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(msg.contains(why), "{}: {msg}", file.display());
        assert_eq!(slots(&n), after, "{} changed the slots", file.display());
    }
    // Nothing is left of the uploads.
    assert!(std::fs::read_dir(n.path("state/node-update")).map_or(true, |d| d.count() == 0));

    // Not configured: 501, with the reason.
    let mut plain = Node::new(json!({}));
    plain.start();
    let (s, v): (u16, Value) = plain.call("GET", "/node/boot", None);
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (501, Some("node_update")),
        "{v}"
    );
}

/// The identity `bulwark_image` gives a signed bundle, as the config states one.
fn identity(bundle: &Path, trust: &bulwark_image::TrustPolicy) -> Value {
    let v = bulwark_image::Bundle::open(bundle)
        .unwrap()
        .verify(trust)
        .unwrap();
    json!({
        "name": v.manifest().name,
        "version": v.manifest().version,
        "manifest_sha384": hex::encode(v.manifest_sha384()),
        "signer_key_ids": v.signed_by().iter().map(hex::encode).collect::<Vec<_>>(),
    })
}

/// A fake efivarfs whose `LoaderEntrySelected` names `entry`.
fn efivars(dir: &Path, entry: &str) -> PathBuf {
    let d = dir.join(format!("efivars-{}", entry.replace(['\\', '/'], "_")));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join(format!(
            "{}-{}",
            bulwark_node_image::booted::ENTRY_SELECTED_VAR,
            bulwark_node_image::booted::LOADER_GUID
        )),
        bulwark_node_image::booted::encode_string_var(entry),
    )
    .unwrap();
    d
}

#[test]
fn booted_node_image_is_read_from_the_esp_and_failures_refuse_attestation() {
    if !Path::new(SD_BOOT).exists() || !Path::new(STUB).exists() {
        panic!("systemd-boot-efi is not installed (scripts/debian-packages.txt lists it)");
    }
    let keys = tempfile::tempdir().unwrap();
    let (key, key_pub, pk) =
        bulwark_image::generate_key_pair(&keys.path().join("provider")).unwrap();
    let trust = bulwark_image::TrustPolicy::single(pk);
    let disk = keys.path().join("disk.img");
    let v1 = node_image(keys.path(), &key, 1);
    install(
        &read_node_image(&v1, &trust, &|_| {}).unwrap(),
        &disk,
        &InstallOptions {
            esp_mib: 64,
            create_size: Some(128 << 20),
        },
        &|_| {},
    )
    .unwrap();
    let want = identity(&v1, &trust);
    let node = |disk: &Path, entry: &str| {
        let mut n = Node::new(json!({
            "node_update": { "esp": disk, "trust": [key_pub] },
            "attestation": {
                "node_image": "booted",
                "software_key": true,
                "efivars": efivars(keys.path(), entry),
            },
        }));
        n.start();
        n
    };

    // The lowest public function, then bulwarkd: the installed image, stated.
    let id = bulwark_node_image::booted::booted_image_identity(
        &disk,
        &trust,
        "\\EFI\\Linux\\bulwark-node-1.efi",
    )
    .unwrap();
    assert_eq!(
        (
            id.name.as_str(),
            id.version,
            id.manifest_sha384_hex(),
            id.signer_key_ids_hex()
        ),
        (
            want["name"].as_str().unwrap(),
            1,
            want["manifest_sha384"].as_str().unwrap().to_string(),
            vec![hex::encode(trust.keys[0].id())]
        )
    );
    let n = node(&disk, "bulwark-node-1.efi");
    let b = n.get("/node/boot");
    assert_eq!(
        b["attested_image"],
        json!({"source": "booted", "image": want}),
        "{b}"
    );
    assert!(n.log().contains("the booted node image"), "{}", n.log());

    // Refused, bulwarkd still up: an entry with no slot, one that is not a node
    // slot, and a tampered manifest (one byte of its JSON, on a copy of the disk).
    let mut tampered = std::fs::read(&disk).unwrap();
    let at = tampered
        .windows(8)
        .position(|w| w == bulwark_image::MAGIC)
        .expect("the signed manifest on the ESP");
    tampered[at + 8192 + 40] ^= 1;
    let tampered_disk = keys.path().join("tampered.img");
    std::fs::write(&tampered_disk, tampered).unwrap();
    for (disk, entry, why) in [
        (&disk, "bulwark-node-7.efi", "no slot of version 7"),
        (&disk, "auto-windows", "not a Bulwark node slot"),
        (&tampered_disk, "bulwark-node-1.efi", "signed manifest"),
    ] {
        let n = node(disk, entry);
        let b = n.get("/node/boot");
        let err = b["attested_image"]["error"].as_str().unwrap_or_default();
        assert!(err.contains(why), "{entry}: {b}");
        assert_eq!(b["attested_image"]["source"], "booted", "{b}");
        assert!(
            n.log().contains("attestation is refused"),
            "{entry}: {}",
            n.log()
        );
        // Attesting is refused with that reason (no VM here: the VM is checked
        // first, so this shows the node answers).
        let (s, _) = n.call(
            "POST",
            "/vms/none/attest",
            Some(json!({"nonce": "00".repeat(16)})),
        );
        assert_eq!(s, 404);
    }

    // "booted" without node_update: bulwarkd refuses to start, naming the field.
    let mut bad = Node::new(json!({
        "attestation": { "node_image": "booted", "software_key": true },
    }));
    let e = bad.try_start(&[]).unwrap_err();
    assert!(
        e.contains("attestation.node_image") && e.contains("node_update"),
        "{e}"
    );
}
