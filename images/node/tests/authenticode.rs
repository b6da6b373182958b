//! `authenticode_sha256` against independent tools: sign with `sbsign` and
//! `osslsigncode` (Debian's snakeoil test key) and compare the digest they
//! embed and the one `osslsigncode verify` calculates with ours.

mod common;

use std::path::Path;
use std::process::Command;

use bulwark_node_image::pe::authenticode_sha256;
use bulwark_node_image::uki::{assemble, UkiInputs};
use common::*;

/// (embedded "Current message digest", "Calculated message digest").
fn osslsigncode_digests(osslsigncode: &Path, signed: &Path) -> (String, String) {
    // verify exits non-zero (the snakeoil certificate is self-signed) but
    // prints both digests.
    let out = Command::new(osslsigncode)
        .args(["verify", "-in"])
        .arg(signed)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|v| v.trim().trim_start_matches(':').trim().to_ascii_lowercase())
            .unwrap_or_else(|| panic!("no {label:?} in osslsigncode output:\n{text}"))
    };
    (
        field("Current message digest"),
        field("Calculated message digest"),
    )
}

fn check(name: &str, unsigned: &[u8], expect_unsigned_equal: bool) {
    let (Some(ossl), Some(sbsign), Some(openssl)) = (
        tool("osslsigncode", "osslsigncode"),
        tool("sbsign", "sbsigntool"),
        tool("openssl", "openssl"),
    ) else {
        return;
    };
    if !Path::new(SNAKEOIL_KEY).exists() {
        eprintln!("\n!!!!!!!! SKIPPED: {SNAKEOIL_KEY} missing (Debian package `ovmf`) !!!!!!!!\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    run(Command::new(openssl)
        .args([
            "rsa",
            "-passin",
            "pass:snakeoil",
            "-in",
            SNAKEOIL_KEY,
            "-out",
        ])
        .arg(&key));
    let input = dir.path().join(format!("{name}.efi"));
    std::fs::write(&input, unsigned).unwrap();
    let ours_unsigned = hex::encode(authenticode_sha256(unsigned).unwrap());

    let sb_out = dir.path().join(format!("{name}.sbsign.efi"));
    run(Command::new(&sbsign)
        .arg("--key")
        .arg(&key)
        .args(["--cert", SNAKEOIL_PEM, "--output"])
        .arg(&sb_out)
        .arg(&input));
    let os_out = dir.path().join(format!("{name}.ossl.efi"));
    run(Command::new(&ossl)
        .args(["sign", "-h", "sha256", "-certs", SNAKEOIL_PEM, "-key"])
        .arg(&key)
        .arg("-in")
        .arg(&input)
        .arg("-out")
        .arg(&os_out));

    for signed in [&sb_out, &os_out] {
        let bytes = std::fs::read(signed).unwrap();
        let ours_signed = hex::encode(authenticode_sha256(&bytes).unwrap());
        let (embedded, calculated) = osslsigncode_digests(&ossl, signed);
        assert_eq!(
            embedded, calculated,
            "{signed:?}: the tool disagrees with itself"
        );
        assert_eq!(
            ours_signed, calculated,
            "{signed:?}: our digest of the signed file"
        );
        if expect_unsigned_equal {
            assert_eq!(
                ours_unsigned, embedded,
                "{signed:?}: our digest of the unsigned file vs the signature's"
            );
        }
        eprintln!("{name} {signed:?}: ours = osslsigncode = {calculated}");
    }
}

/// The stub itself: its length is not a multiple of 8, so the signers pad it
/// before signing, and only the signed file's digest can be compared.
#[test]
fn stub_digest_matches_osslsigncode() {
    let Some(stub) = input(STUB, "systemd-boot-efi") else {
        return;
    };
    check("stub", &stub, false);
}

/// Our UKI (file-aligned, so no padding): the digest of the unsigned UKI is the
/// one the signature carries, which is what firmware extends into PCR 4.
#[test]
fn uki_digest_matches_sbsign_and_osslsigncode() {
    let (Some(stub), Some(kernel)) = (input(STUB, "systemd-boot-efi"), fake_kernel()) else {
        return;
    };
    let initrd = fake_initrd(300_001);
    let uki = assemble(&UkiInputs {
        stub: &stub,
        linux: &kernel,
        initrd: &initrd,
        cmdline: b"console=ttyS0 bulwark.node_version=1",
        osrel: b"ID=bulwark\nVERSION_ID=1\n",
        uname: Some(b"6.1.0-57-cloud-amd64"),
    })
    .unwrap();
    assert_eq!(uki.len() % 512, 0);
    check("uki", &uki, true);
}
