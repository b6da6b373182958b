//! PCR 11 of `measure::predict` against `systemd-measure calculate`
//! (Debian systemd 252) for the same UKI, and PCR 4 against the Authenticode
//! digests of the parts (each checked against sbsign/osslsigncode elsewhere).

mod common;

use std::process::Command;

use bulwark_node_image::measure::{predict, Confidence, MeasureOptions};
use bulwark_node_image::pe::authenticode_sha256;
use bulwark_node_image::uki::{assemble, UkiInputs};
use common::*;
use sha2::{Digest, Sha256};

fn extend(pcr: [u8; 32], d: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(pcr);
    h.update(d);
    h.finalize().into()
}

#[test]
fn pcr11_equals_systemd_measure() {
    let (Some(stub), Some(kernel)) = (input(STUB, "systemd-boot-efi"), fake_kernel()) else {
        return;
    };
    let Some(measure) = tool(SYSTEMD_MEASURE, "systemd") else {
        return;
    };
    let initrd = fake_initrd(777_777);
    let cmdline = b"console=ttyS0 bulwark.node_version=3".to_vec();
    let osrel = b"ID=bulwark\nVERSION_ID=3\n".to_vec();
    let uki = assemble(&UkiInputs {
        stub: &stub,
        linux: &kernel,
        initrd: &initrd,
        cmdline: &cmdline,
        osrel: &osrel,
        uname: Some(b"6.1.0-57-cloud-amd64"),
    })
    .unwrap();
    let p = predict(&uki, &MeasureOptions::default()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let w = |n: &str, b: &[u8]| {
        let f = dir.path().join(n);
        std::fs::write(&f, b).unwrap();
        f
    };
    let out = run(Command::new(measure)
        .arg("calculate")
        .arg(format!("--linux={}", w("linux", &kernel).display()))
        .arg(format!("--initrd={}", w("initrd", &initrd).display()))
        .arg(format!("--cmdline={}", w("cmdline", &cmdline).display()))
        .arg(format!("--osrel={}", w("osrel", &osrel).display()))
        .args(["--bank=sha256", "--phase="]));
    let theirs = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("11:sha256="))
        .unwrap_or_else(|| panic!("no 11:sha256= in systemd-measure output:\n{out}"))
        .to_ascii_lowercase();
    assert_eq!(p.pcrs[&11].sha256, theirs);
    assert_eq!(p.pcrs[&11].confidence, Confidence::Confirmed);
    eprintln!("PCR 11 = systemd-measure = {theirs}");
}

#[test]
fn pcr4_is_the_authenticode_chain() {
    let (Some(stub), Some(kernel)) = (input(STUB, "systemd-boot-efi"), fake_kernel()) else {
        return;
    };
    let initrd = fake_initrd(1000);
    let uki = assemble(&UkiInputs {
        stub: &stub,
        linux: &kernel,
        initrd: &initrd,
        cmdline: b"console=ttyS0",
        osrel: b"ID=bulwark\n",
        uname: None,
    })
    .unwrap();
    let action = Sha256::digest(b"Calling EFI Application from Boot Option");
    let sep = Sha256::digest([0u8; 4]);
    let base = extend(extend([0; 32], &action), &sep);
    let uki_d = authenticode_sha256(&uki).unwrap();
    let k_d = authenticode_sha256(&kernel).unwrap();

    let off = predict(
        &uki,
        &MeasureOptions {
            secure_boot: Some(false),
            boot_manager: None,
        },
    )
    .unwrap();
    assert_eq!(
        off.pcrs[&4].sha256,
        hex::encode(extend(extend(base, &uki_d), &k_d))
    );
    assert!(off.pcrs.contains_key(&7));
    assert_eq!(off.pcrs[&12].sha256, hex::encode([0u8; 32]));
    let on = predict(
        &uki,
        &MeasureOptions {
            secure_boot: Some(true),
            boot_manager: None,
        },
    )
    .unwrap();
    assert_eq!(on.pcrs[&4].sha256, hex::encode(extend(base, &uki_d)));
    assert!(!on.pcrs.contains_key(&7) && on.firmware_owned.contains(&7));
    let bm = kernel.clone();
    let via_boot = predict(
        &uki,
        &MeasureOptions {
            secure_boot: Some(false),
            boot_manager: Some(&bm),
        },
    )
    .unwrap();
    assert_eq!(
        via_boot.pcrs[&4].sha256,
        hex::encode(extend(extend(extend(base, &k_d), &uki_d), &k_d))
    );
    // Through systemd-boot with Secure Boot off, PCR 12 holds the UTF-16
    // command line twice (measured: OVMF + swtpm, docs/node-image.md).
    let cmd16: Vec<u8> = "console=ttyS0"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .chain([0, 0])
        .collect();
    let c = Sha256::digest(&cmd16);
    assert_eq!(
        via_boot.pcrs[&12].sha256,
        hex::encode(extend(extend([0; 32], &c), &c))
    );
    // The events replay to the values.
    for p in [&off, &on, &via_boot] {
        for (idx, v) in &p.pcrs {
            let mut pcr = [0u8; 32];
            for e in p.events.iter().filter(|e| e.pcr == *idx) {
                pcr = extend(pcr, &hex::decode(&e.digest).unwrap());
            }
            assert_eq!(&hex::encode(pcr), &v.sha256, "PCR {idx}");
        }
    }
    // A changed initrd changes PCR 9 and 11 and 4, not 12.
    let uki2 = assemble(&UkiInputs {
        stub: &stub,
        linux: &kernel,
        initrd: &fake_initrd(1001),
        cmdline: b"console=ttyS0",
        osrel: b"ID=bulwark\n",
        uname: None,
    })
    .unwrap();
    let off2 = predict(
        &uki2,
        &MeasureOptions {
            secure_boot: Some(false),
            boot_manager: None,
        },
    )
    .unwrap();
    for i in [4, 9, 11] {
        assert_ne!(off.pcrs[&i], off2.pcrs[&i], "PCR {i}");
    }
    assert_eq!(off.pcrs[&12], off2.pcrs[&12]);
}

#[test]
fn measure_refuses_a_pe_that_is_not_a_uki() {
    let Some(stub) = input(STUB, "systemd-boot-efi") else {
        return;
    };
    let e = predict(&stub, &MeasureOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no .linux section"), "{e}");
}
