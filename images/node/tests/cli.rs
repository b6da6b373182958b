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

/// `build --sb-key --sb-cert`: the UKI and systemd-boot in the bundle carry a
/// Secure Boot signature that sbsigntool's own `sbverify` accepts for that
/// certificate (and not for another), and the PCR prediction is the unsigned
/// build's (the signature moves no Authenticode digest). A key that does not
/// match its certificate is a clear error.
#[test]
fn build_signs_for_secure_boot_and_the_prediction_holds() {
    let (Some(kernel), Some(_)) = (fake_kernel(), input(STUB, "systemd-boot-efi")) else {
        return;
    };
    let (Some(_), Some(_), Some(_)) = (
        tool("sbsign", "sbsigntool"),
        tool("sbverify", "sbsigntool"),
        tool("openssl", "openssl"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    std::fs::write(d("vmlinuz"), &kernel).unwrap();
    std::fs::write(d("initrd.img"), fake_initrd(100_000)).unwrap();
    for name in ["db", "other"] {
        let st = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", &format!("/CN=bulwark test {name}"), "-keyout"])
            .arg(d(&format!("{name}.key")))
            .arg("-out")
            .arg(d(&format!("{name}.pem")))
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
    }
    let build = |out: &str, uki: &str, sb: Option<(&str, &str)>| {
        let mut args = vec![
            "--json".to_string(),
            "build".into(),
            "--name".into(),
            "bulwark-node".into(),
            "--version".into(),
            "6".into(),
            "--kernel".into(),
            p(&d("vmlinuz")).into(),
            "--initrd".into(),
            p(&d("initrd.img")).into(),
            "--out".into(),
            p(&d(out)).into(),
            "--uki-out".into(),
            p(&d(uki)).into(),
        ];
        if let Some((k, c)) = sb {
            args.extend([
                "--sb-key".into(),
                p(&d(k)).into(),
                "--sb-cert".into(),
                p(&d(c)).into(),
            ]);
        }
        node(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let plain = ok_json(&build("plain.bwi", "plain.efi", None));
    let signed = ok_json(&build(
        "signed.bwi",
        "signed.efi",
        Some(("db.key", "db.pem")),
    ));
    // The UKI's PCRs (9, 11, 12) and its Authenticode digest do not move; PCR 4 does,
    // by the padding sbsign gives systemd-boot, and the prediction is the signed
    // file's (checked below against the bundled boot manager).
    let (sp, pp) = (
        &signed["summary"]["prediction"],
        &plain["summary"]["prediction"],
    );
    for pcr in ["9", "11", "12"] {
        assert_eq!(sp["pcrs"][pcr], pp["pcrs"][pcr], "PCR {pcr}");
    }
    assert_eq!(sp["uki_authenticode_sha256"], pp["uki_authenticode_sha256"]);
    assert_ne!(sp["pcrs"]["4"], pp["pcrs"]["4"]);
    assert!(plain["summary"]["secure_boot_signed_with"].is_null());
    assert_eq!(
        signed["summary"]["secure_boot_signed_with"],
        p(&d("db.pem"))
    );
    assert_ne!(
        signed["summary"]["uki_sha384"],
        plain["summary"]["uki_sha384"]
    );

    let sbverify = |cert: &str, file: &Path| {
        Command::new("sbverify")
            .arg("--cert")
            .arg(d(cert))
            .arg(file)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(sbverify("db.pem", &d("signed.efi")), "the signed UKI");
    assert!(
        !sbverify("other.pem", &d("signed.efi")),
        "another db certificate"
    );
    assert!(!sbverify("db.pem", &d("plain.efi")), "the unsigned UKI");
    // The boot manager inside the bundle: the component that will boot.
    let (key, key_pub, _) = bulwark_image::generate_key_pair(&d("keys")).unwrap();
    let signing = bulwark_image::SigningKey::from_pem_file(&key).unwrap();
    bulwark_image::sign(&d("signed.bwi"), &signing, &|_| {}).unwrap();
    let policy = bulwark_image::TrustPolicy::from_pem_files(&[&key_pub], 1, 0).unwrap();
    let payload =
        bulwark_node_image::install::read_node_image(&d("signed.bwi"), &policy, &|_| {}).unwrap();
    std::fs::write(d("bm.efi"), &payload.boot_manager).unwrap();
    std::fs::write(d("bundled-uki.efi"), &payload.uki).unwrap();
    assert!(sbverify("db.pem", &d("bm.efi")), "the bundled boot manager");
    assert_eq!(
        sp["boot_manager_authenticode_sha256"],
        hex::encode(bulwark_node_image::pe::authenticode_sha256(&payload.boot_manager).unwrap())
    );
    assert!(sbverify("db.pem", &d("bundled-uki.efi")), "the bundled UKI");

    // A key that is not the certificate's: sbsign's refusal, named.
    let o = build("bad.bwi", "bad.efi", Some(("other.key", "db.pem")));
    assert_ne!(o.status.code(), Some(0), "{o:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("sbsign could not sign the boot manager"),
        "{text}"
    );
}
