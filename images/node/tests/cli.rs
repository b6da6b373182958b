//! `bulwark-node-image build` and `measure` end to end: build, sign (the same
//! `bulwark_image::sign` that `bulwark-image sign` runs), measure the verified
//! bundle against its manifest, measure the bare UKI, refuse tampering.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulwark-node-image"))
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "status {:?}\nstdout {}\nstderr {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn build_sign_measure_and_refuse_tampering() {
    let (Some(kernel), Some(_)) = (fake_kernel(), input(STUB, "systemd-boot-efi")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kpath = dir.path().join("vmlinuz");
    let ipath = dir.path().join("initrd.img");
    std::fs::write(&kpath, &kernel).unwrap();
    std::fs::write(&ipath, fake_initrd(200_000)).unwrap();
    let out = dir.path().join("node.bwi");
    let uki = dir.path().join("uki.efi");
    let built = ok_json(&node(&[
        "--json",
        "build",
        "--name",
        "bulwark-node",
        "--version",
        "5",
        "--kernel",
        p(&kpath),
        "--initrd",
        p(&ipath),
        "--cmdline",
        "console=ttyS0",
        "--out",
        p(&out),
        "--uki-out",
        p(&uki),
    ]));
    let s = &built["summary"];
    assert_eq!(s["cmdline"], "console=ttyS0 bulwark.node_version=5");
    assert_eq!(
        s["uki_size"].as_u64().unwrap(),
        std::fs::metadata(&uki).unwrap().len()
    );
    assert!(s["prediction"]["boot_manager_authenticode_sha256"].is_string());
    let predicted = s["prediction"]["pcrs"].clone();

    // Unsigned, or without --trust: refused / usage error.
    let (key, key_pub, _) = bulwark_image::generate_key_pair(&dir.path().join("keys")).unwrap();
    let o = node(&["measure", p(&out)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("pass --trust PUB"));
    let o = node(&["measure", p(&out), "--trust", p(&key_pub)]);
    assert_eq!(o.status.code(), Some(1), "unsigned must be refused");

    bulwark_image::sign(
        &out,
        &bulwark_image::SigningKey::from_pem_file(&key).unwrap(),
        &|_| {},
    )
    .unwrap();
    let m = ok_json(&node(&[
        "--json",
        "measure",
        p(&out),
        "--trust",
        p(&key_pub),
    ]));
    assert_eq!(m["matches_manifest"], true);
    assert_eq!(m["prediction"]["pcrs"], predicted);
    // Another Secure Boot state: predicted, not compared with the manifest.
    let on = ok_json(&node(&[
        "--json",
        "measure",
        p(&out),
        "--trust",
        p(&key_pub),
        "--secure-boot",
        "on",
    ]));
    assert!(on["matches_manifest"].is_null());
    assert_ne!(on["prediction"]["pcrs"]["4"], predicted["4"]);
    assert_eq!(on["prediction"]["pcrs"]["11"], predicted["11"]);
    let human = node(&["measure", p(&out), "--trust", p(&key_pub)]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("PCR 11") && text.contains("equals the manifest"),
        "{text}"
    );

    // The bare UKI with the same boot manager gives the same values.
    let bare = ok_json(&node(&[
        "--json",
        "measure",
        p(&uki),
        "--secure-boot",
        "off",
        "--boot-manager",
        SD_BOOT,
    ]));
    assert_eq!(bare["prediction"]["pcrs"], predicted);
    // Without the Secure Boot state, PCR 7 is left to the firmware.
    let bare = ok_json(&node(&["--json", "measure", p(&uki)]));
    assert!(bare["prediction"]["pcrs"].get("7").is_none());
    assert!(bare["prediction"]["firmware_owned"]
        .as_array()
        .unwrap()
        .contains(&Value::from(7)));

    // One byte of the UKI changed inside the signed bundle: refused.
    let mut bytes = std::fs::read(&out).unwrap();
    let uki_bytes = std::fs::read(&uki).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w == &uki_bytes[0x1000..0x1040])
        .unwrap();
    bytes[at + 3] ^= 1;
    let tampered = dir.path().join("tampered.bwi");
    std::fs::write(&tampered, &bytes).unwrap();
    let o = node(&["measure", p(&tampered), "--trust", p(&key_pub)]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("refused"));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, b"not a kernel").unwrap();
    let out = dir.path().join("o.bwi");
    // Not a PE stub.
    let o = node(&[
        "build",
        "--name",
        "n",
        "--version",
        "1",
        "--kernel",
        p(&f),
        "--initrd",
        p(&f),
        "--stub",
        p(&f),
        "--out",
        p(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("PE image: not a PE image"));
    assert!(!out.exists());
    // Missing file.
    let o = node(&["measure", "/nonexistent.efi"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.efi"));
    // A UKI that is not one.
    let o = node(&["measure", p(&f)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no MZ"));
    // The version set twice.
    let o = node(&[
        "build",
        "--name",
        "n",
        "--version",
        "1",
        "--kernel",
        p(&f),
        "--initrd",
        p(&f),
        "--cmdline",
        "bulwark.node_version=2",
        "--out",
        p(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("must not set bulwark.node_version"));
}

/// With SOURCE_DATE_EPOCH set, two builds give the same bytes.
#[test]
fn builds_are_reproducible() {
    let (Some(kernel), Some(_)) = (fake_kernel(), input(STUB, "systemd-boot-efi")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kpath = dir.path().join("vmlinuz");
    let ipath = dir.path().join("initrd.img");
    std::fs::write(&kpath, &kernel).unwrap();
    std::fs::write(&ipath, fake_initrd(50_000)).unwrap();
    let mut outs = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("n{i}.bwi"));
        let o = Command::new(env!("CARGO_BIN_EXE_bulwark-node-image"))
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args([
                "build",
                "--name",
                "n",
                "--version",
                "1",
                "--kernel",
                p(&kpath),
            ])
            .args(["--initrd", p(&ipath), "--out", p(&out)])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outs.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(outs[0], outs[1]);
}

/// `build --osrel`: kept when it carries IMAGE_ID=<name> and
/// IMAGE_VERSION=<version> (what systemd-boot sorts the slots by), refused
/// with a clear message otherwise; nothing written then.
#[test]
fn build_osrel_must_carry_image_id_and_version() {
    let (Some(kernel), Some(_)) = (fake_kernel(), input(STUB, "systemd-boot-efi")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kpath = dir.path().join("vmlinuz");
    let ipath = dir.path().join("initrd.img");
    std::fs::write(&kpath, &kernel).unwrap();
    std::fs::write(&ipath, fake_initrd(10_000)).unwrap();
    let osrel = dir.path().join("os-release");
    let out = dir.path().join("node.bwi");
    let build = |text: &str| {
        std::fs::write(&osrel, text).unwrap();
        node(&[
            "build",
            "--name",
            "bulwark-node",
            "--version",
            "8",
            "--kernel",
            p(&kpath),
            "--initrd",
            p(&ipath),
            "--osrel",
            p(&osrel),
            "--out",
            p(&out),
        ])
    };
    for (text, want) in [
        (
            "ID=bulwark\nIMAGE_ID=bulwark-node\nIMAGE_VERSION=7\n",
            "IMAGE_VERSION=7 but --version is 8",
        ),
        ("ID=bulwark\nIMAGE_ID=bulwark-node\n", "no IMAGE_VERSION"),
        ("ID=bulwark\nIMAGE_VERSION=8\n", "no IMAGE_ID"),
    ] {
        let o = build(text);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        assert!(err.contains(want) && !err.contains("panicked"), "{err}");
        assert!(!out.exists());
    }
    let o = build("NAME=Custom\nID=bulwark\nIMAGE_ID=\"bulwark-node\"\nIMAGE_VERSION=8\n");
    assert!(o.status.success(), "{o:?}");
    assert!(out.exists());
}
