//! Node OS image manifests (`docs/image-format.md`, "Node images"): built,
//! signed and verified like tenant images; the rules that keep the two kinds
//! apart; the canonical encoding of the `node` field.

use bulwark_image::{
    build_node, generate_key_pair, sign, Bundle, ComponentKind, ImageError, Manifest,
    NodeBuildSpec, NodeInfo, SigningKey, TrustPolicy,
};

fn node_info(with_bm: bool) -> NodeInfo {
    NodeInfo {
        boot_manager_authenticode_sha256: with_bm.then_some([0xbb; 32]),
        pcrs: [
            (4, [4u8; 32]),
            (9, [9; 32]),
            (11, [0x11; 32]),
            (12, [0; 32]),
        ]
        .into_iter()
        .collect(),
        secure_boot: false,
        uki_authenticode_sha256: [0xaa; 32],
    }
}

#[test]
fn a_node_image_builds_signs_verifies_and_encodes_canonically() {
    let dir = tempfile::tempdir().unwrap();
    let uki = dir.path().join("uki.efi");
    let bm = dir.path().join("bootx64.efi");
    std::fs::write(&uki, vec![0x5a; 10_000]).unwrap();
    std::fs::write(&bm, vec![0x42; 3000]).unwrap();
    let spec = NodeBuildSpec {
        name: "bulwark-node".into(),
        version: 7,
        created: 1,
        uki: uki.clone(),
        bootloader: Some(bm),
        node: node_info(true),
    };
    let out = dir.path().join("node.bwi");
    let m = build_node(&spec, &out, &|_| {}).unwrap();
    assert_eq!(m.kind_name(), "node");
    let kinds: Vec<ComponentKind> = m.components.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [ComponentKind::Bootloader, ComponentKind::Uki]);

    let (key, key_pub, _) = generate_key_pair(&dir.path().join("keys")).unwrap();
    sign(&out, &SigningKey::from_pem_file(&key).unwrap(), &|_| {}).unwrap();
    let policy = TrustPolicy {
        keys: vec![bulwark_image::PublicKey::from_pem_file(&key_pub).unwrap()],
        threshold: 1,
        min_version: 0,
    };
    let v = Bundle::open(&out).unwrap().verify(&policy).unwrap();
    assert_eq!(v.manifest().node, Some(node_info(true)));
    assert_eq!(
        v.read_component(ComponentKind::Uki).unwrap().unwrap(),
        std::fs::read(&uki).unwrap()
    );
    let text = String::from_utf8(v.manifest_bytes().to_vec()).unwrap();
    let node_at = text.find(",\"node\":{").expect("node field");
    assert!(text[node_at..].contains(&format!(
        "\"node\":{{\"boot_manager_authenticode_sha256\":\"{}\",\"pcrs\":{{\"11\":\"{}\",\"12\":\"{}\",\"4\":\"{}\",\"9\":\"{}\"}},\"secure_boot\":false,\"uki_authenticode_sha256\":\"{}\"}},\"version\":7}}",
        "bb".repeat(32),
        "11".repeat(32),
        "00".repeat(32),
        "04".repeat(32),
        "09".repeat(32),
        "aa".repeat(32)
    )), "{text}");
}

/// Re-encode a manifest with edits and decode it: the rules are checked on
/// decode, which every open and verify goes through.
fn decode_edited(m: &Manifest, edit: impl Fn(&str) -> String) -> Result<Manifest, ImageError> {
    let text = String::from_utf8(m.encode()).unwrap();
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit must change something");
    Manifest::decode(edited.as_bytes(), m.components[0].offset)
}

#[test]
fn node_and_tenant_rules_are_enforced_on_decode() {
    let dir = tempfile::tempdir().unwrap();
    let uki = dir.path().join("uki.efi");
    std::fs::write(&uki, b"uki bytes").unwrap();
    let spec = NodeBuildSpec {
        name: "n".into(),
        version: 1,
        created: 0,
        uki,
        bootloader: None,
        node: node_info(false),
    };
    let m = build_node(&spec, &dir.path().join("n.bwi"), &|_| {}).unwrap();
    let start = m.components[0].offset;
    assert_eq!(Manifest::decode(&m.encode(), start).unwrap(), m);

    let expect = |r: Result<Manifest, ImageError>, want: &str| {
        let e = r.expect_err(want).to_string();
        assert!(e.contains(want), "wanted {want:?} in {e}");
    };
    // The uki component in a tenant manifest (node field removed).
    let node_start = String::from_utf8(m.encode())
        .unwrap()
        .find(",\"node\":")
        .unwrap();
    expect(
        decode_edited(&m, |t| {
            let end = t.find(",\"version\"").unwrap();
            format!("{}{}", &t[..node_start], &t[end..])
        }),
        "no kernel component",
    );
    // A kernel in a node manifest.
    expect(
        decode_edited(&m, |t| t.replace("\"kind\":\"uki\"", "\"kind\":\"kernel\"")),
        "a node image cannot have a kernel component",
    );
    // A PCR index that is not canonical decimal.
    expect(
        decode_edited(&m, |t| t.replace("\"4\":", "\"04\":")),
        "pcr index \"04\"",
    );
    expect(
        decode_edited(&m, |t| t.replace("\"9\":", "\"24\":")),
        "pcr index \"24\"",
    );
    // Upper-case hex reads back differently: not canonical.
    assert!(matches!(
        decode_edited(&m, |t| t.replacen(&"aa".repeat(32), &"AA".repeat(32), 1)),
        Err(ImageError::NonCanonical)
    ));
    // A boot manager digest with no bootloader component.
    expect(
        decode_edited(&m, |t| {
            t.replace(
                "\"node\":{",
                &format!(
                    "\"node\":{{\"boot_manager_authenticode_sha256\":\"{}\",",
                    "bb".repeat(32)
                ),
            )
        }),
        "exactly when there is a bootloader component",
    );
    // Unknown node fields are refused like every unknown field.
    expect(
        decode_edited(&m, |t| {
            t.replace("\"secure_boot\":false", "\"secure_boot\":false,\"zz\":1")
        }),
        "unknown field",
    );
}

#[test]
fn a_tenant_manifest_has_no_node_field_and_no_node_components() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("k");
    std::fs::write(&kernel, b"kernel").unwrap();
    let spec = bulwark_image::BuildSpec {
        name: "t".into(),
        version: 1,
        created: 0,
        kernel,
        initrd: None,
        cmdline: Some("console=ttyS0".into()),
        config: None,
        rootfs: None,
    };
    let m = bulwark_image::build(&spec, &dir.path().join("t.bwi"), &|_| {}).unwrap();
    assert_eq!(m.kind_name(), "tenant");
    let text = String::from_utf8(m.encode()).unwrap();
    assert!(!text.contains("node"), "{text}");
    // Adding a uki component to a tenant manifest is refused.
    let e = Manifest::decode(
        text.replace("\"kind\":\"cmdline\"", "\"kind\":\"uki\"")
            .as_bytes(),
        m.components[0].offset,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("a tenant image cannot have a uki component"),
        "{e}"
    );
}

/// `bulwark-image sign` accepts a node image and `inspect` shows its kind.
#[test]
fn the_cli_signs_and_inspects_a_node_image() {
    let dir = tempfile::tempdir().unwrap();
    let uki = dir.path().join("uki.efi");
    std::fs::write(&uki, b"uki bytes").unwrap();
    let out = dir.path().join("n.bwi");
    build_node(
        &NodeBuildSpec {
            name: "cli-node".into(),
            version: 2,
            created: 0,
            uki,
            bootloader: None,
            node: node_info(false),
        },
        &out,
        &|_| {},
    )
    .unwrap();
    let (key, _, _) = generate_key_pair(&dir.path().join("keys")).unwrap();
    let bin = env!("CARGO_BIN_EXE_bulwark-image");
    let o = std::process::Command::new(bin)
        .args(["sign", "--key"])
        .arg(&key)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = std::process::Command::new(bin)
        .args(["--json", "inspect"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["manifest"]["kind"], "node", "{v}");
    assert_eq!(v["manifest"]["node"]["pcrs"]["11"], "11".repeat(32));
    let o = std::process::Command::new(bin)
        .arg("inspect")
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("kind     node") && text.contains("pcr 11"),
        "{text}"
    );
}
