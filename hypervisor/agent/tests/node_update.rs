//! Updating the node's own OS image through bulwarkd (`PUT /node/image`): a node
//! disk (a file here) installed with version 1; version 2 arrives through the API
//! and becomes the entry systemd-boot tries once; lower versions, tenant images and
//! untrusted images are refused and leave the slots as they were; without
//! `node_update` in the config the endpoint says it is not configured.

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
