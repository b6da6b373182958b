//! Firmware boot (`machine.firmware`, docs/firmware.md) on this machine's KVM: the
//! Bulwark firmware, built from `firmware/image`, checks a tiny bzImage guest, its
//! initrd and command line against the measured hashes table and enters it; a host
//! that changes one staged byte after the measurement is refused with the reason and
//! the component's exit code; `measure` predicts the booted value; `measure --snp`
//! equals `sev-snp-measure` on the same firmware, kernel, initrd and command line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bulwark_firmware_abi::boot_info::BootInfo;
use bulwark_firmware_abi::build::SnpMeasureInputs;
use bulwark_firmware_abi::check;
use bulwark_firmware_abi::map;
use bulwark_vmm::boot_source::{read_inputs, StateUse};
use bulwark_vmm::config::VmConfig;
use bulwark_vmm::control::ExitReason;
use bulwark_vmm::vm::Vm;
use common::*;
use serde_json::{json, Value};
use vm_memory::{Bytes, GuestAddress};

const CMDLINE: &str = "console=ttyS0 bulwark.test=e820";

/// The e820 probe as a bzImage, a 3000-byte initrd, and a config booting them
/// (through the firmware when `firmware`).
fn config(dir: &Path, through_firmware: bool) -> Value {
    let kernel = bzimage("e820-bzimage", dir);
    let initrd = dir.join("initrd");
    let bytes: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&initrd, bytes).unwrap();
    let mut cfg = json!({
        "machine": {"vcpus": 1, "mem_mib": 64},
        "boot_source": {"kind": "linux", "kernel": kernel, "initrd": initrd, "cmdline": CMDLINE},
        "devices": {"debug_exit": true}
    });
    if through_firmware {
        cfg["machine"]["firmware"] = json!(firmware());
    }
    cfg
}

#[test]
fn a_tiny_kernel_boots_through_the_firmware_and_sees_what_a_direct_boot_gives_it() {
    let dir = scratch();
    let direct = boot(config(dir.path(), false));
    direct.assert_status(16);
    let via_firmware = boot(config(dir.path(), true));
    via_firmware.assert_status(16);
    let kernel_len = std::fs::metadata(dir.path().join("e820-bzimage.bzImage"))
        .unwrap()
        .len();
    // The one line with a run-dependent number: the firmware's own time, in TSC cycles.
    let serial: String = via_firmware
        .serial
        .lines()
        .filter(|l| !l.starts_with("bulwark-firmware: checked and copied in "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        via_firmware
            .serial
            .contains("bulwark-firmware: checked and copied in "),
        "{}",
        via_firmware.serial
    );
    let expected = format!(
        "bulwark-firmware 0.1.0: checking the staged kernel\n\
         bulwark-firmware: kernel ({kernel_len} bytes), initrd (3000 bytes) and command line match the measured hashes; entering the kernel at 0x100200\n{}",
        direct.serial
    );
    assert_eq!(serial, expected, "stderr: {}", via_firmware.stderr);
}

#[test]
fn measure_predicts_the_booted_value_of_a_firmware_boot() {
    let dir = scratch();
    let cfg = config(dir.path(), true);
    let predicted = measure(cfg.clone());
    let run = boot(cfg);
    run.assert_status(16);
    assert_eq!(booted_measurement(&run), predicted);
    // The firmware is measured: another firmware image, another value.
    let mut other = std::fs::read(firmware()).unwrap();
    other[0x100] ^= 1;
    let p = dir.path().join("fw2.bin");
    std::fs::write(&p, other).unwrap();
    let mut cfg2 = config(dir.path(), true);
    cfg2["machine"]["firmware"] = json!(p);
    assert_ne!(measure(cfg2), predicted);
    // And a firmware boot measures differently from a direct one.
    assert_ne!(measure(config(dir.path(), false)), predicted);
}

/// Builds the firmware-boot VM in this process, lets `tamper` change guest memory
/// after the measurement, runs it, and returns the exit reason and the serial output.
fn run_tampered(
    tamper: impl FnOnce(&vm_memory::GuestMemoryMmap, &BootInfo),
) -> (ExitReason, String) {
    let dir = scratch();
    let serial = dir.path().join("serial.log");
    let mut cfg = config(dir.path(), true);
    cfg["devices"]["serial"] = json!({"file": serial});
    cfg["seccomp"] = json!("off");
    let cfg = VmConfig::from_json(&cfg.to_string()).unwrap();
    let inputs = read_inputs(&cfg, StateUse::CheckOnly).unwrap();
    let mut vm = Vm::build(&cfg, &inputs).unwrap();
    let mem = vm.guest_memory();
    let mut page = vec![0u8; 4096];
    mem.read_slice(&mut page, GuestAddress(map::BOOT_INFO))
        .unwrap();
    let info = BootInfo::parse(&page).unwrap();
    tamper(mem, &info);
    vm.start().unwrap();
    let reason = vm.wait();
    (reason, std::fs::read_to_string(serial).unwrap_or_default())
}

fn flip(mem: &vm_memory::GuestMemoryMmap, addr: u64) {
    let mut b = [0u8; 1];
    mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
    b[0] ^= 0x20;
    mem.write_slice(&b, GuestAddress(addr)).unwrap();
}

#[test]
fn one_changed_byte_in_kernel_initrd_or_cmdline_is_refused_with_its_reason_and_code() {
    type Where = fn(&BootInfo) -> u64;
    let cases: [(&str, Where, u8, &str); 4] = [
        (
            "kernel",
            |i| i.kernel.addr + i.kernel.len - 1,
            check::EXIT_KERNEL_MISMATCH,
            "kernel SHA-256 does not match the measured hashes table",
        ),
        (
            "kernel header",
            |i| i.kernel.addr + 0x300,
            check::EXIT_KERNEL_MISMATCH,
            "kernel SHA-256 does not match the measured hashes table",
        ),
        (
            "initrd",
            |i| i.initrd.addr + 1234,
            check::EXIT_INITRD_MISMATCH,
            "initrd SHA-256 does not match the measured hashes table",
        ),
        (
            "cmdline",
            |i| i.cmdline.addr + 3,
            check::EXIT_CMDLINE_MISMATCH,
            "command line SHA-256 does not match the measured hashes table",
        ),
    ];
    for (what, at, code, reason) in cases {
        let (exit, serial) = run_tampered(|mem, info| flip(mem, at(info)));
        assert_eq!(exit, ExitReason::DebugExit(code), "{what}: {serial}");
        assert!(
            serial.contains(&format!(
                "bulwark-firmware: refused: {reason} (exit code {code:#x})"
            )),
            "{what}: {serial}"
        );
        assert!(
            !serial.contains("e820"),
            "{what}: the kernel must not run: {serial}"
        );
    }
}

#[test]
fn a_hashes_table_with_a_bad_guid_or_length_or_a_bad_boot_info_is_refused() {
    let cases: [(&str, u64, &str, u8); 4] = [
        (
            "table GUID",
            map::HASH_TABLE + 2,
            "hashes table header GUID is wrong",
            check::EXIT_HASH_TABLE,
        ),
        (
            "table length",
            map::HASH_TABLE + 16,
            "hashes table length is 136, not 168",
            check::EXIT_HASH_TABLE,
        ),
        (
            "entry GUID",
            map::HASH_TABLE + 18 + 50 + 5,
            "hashes table initrd entry GUID is wrong",
            check::EXIT_HASH_TABLE,
        ),
        (
            "boot info magic",
            map::BOOT_INFO,
            "boot info magic is not BWFWBOOT",
            check::EXIT_BOOT_INFO,
        ),
    ];
    for (what, addr, reason, code) in cases {
        let (exit, serial) = run_tampered(|mem, _| flip(mem, addr));
        assert_eq!(exit, ExitReason::DebugExit(code), "{what}: {serial}");
        assert!(
            serial.contains(&format!("refused: {reason} (exit code {code:#x})")),
            "{what}: {serial}"
        );
    }
    // A staged range pointing at the firmware's own pages.
    let (exit, serial) = run_tampered(|mem, _| {
        mem.write_slice(&0x9000u64.to_le_bytes(), GuestAddress(map::BOOT_INFO + 16))
            .unwrap();
    });
    assert_eq!(
        exit,
        ExitReason::DebugExit(check::EXIT_BOOT_INFO),
        "{serial}"
    );
    assert!(
        serial.contains("refused: staged kernel: overlaps the firmware's pages"),
        "{serial}"
    );
}

/// `bulwark-vmm` exits with an error naming the firmware problem for `cfg`.
fn refused(cfg: Value, want: &str) {
    let dir = scratch();
    let path = write_config(dir.path(), cfg);
    let out = Command::new(vmm_bin())
        .arg("measure")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(want),
        "wanted {want:?}, got: {stderr}"
    );
}

#[test]
fn configs_the_firmware_cannot_boot_are_refused_before_anything_runs() {
    let dir = scratch();
    let mut raw = raw_config("hello", 1, 0);
    raw["machine"]["firmware"] = json!(firmware());
    refused(
        raw,
        "machine.firmware: a raw boot has no kernel for the firmware to check",
    );
    let mut elf_kernel = config(dir.path(), true);
    elf_kernel["boot_source"]["kernel"] = json!(elf("e820"));
    refused(elf_kernel, "a firmware boot needs a bzImage");
    let short = dir.path().join("short.bin");
    std::fs::write(&short, vec![0xf4u8; 4096]).unwrap();
    let mut cfg = config(dir.path(), true);
    cfg["machine"]["firmware"] = json!(short);
    refused(cfg, "a Bulwark firmware image is exactly 65536 bytes");
    let no_footer = dir.path().join("nofooter.bin");
    std::fs::write(&no_footer, vec![0u8; 65536]).unwrap();
    let mut cfg = config(dir.path(), true);
    cfg["machine"]["firmware"] = json!(no_footer);
    refused(cfg, "no OVMF footer table GUID");
    let mut pvh = config(dir.path(), true);
    pvh["boot_source"]["entry"] = json!("pvh");
    refused(pvh, "entry pvh is not possible");
}

#[test]
fn measure_snp_equals_sev_snp_measure_on_the_bulwark_firmware() {
    let dir = scratch();
    // The refusals first: an unknown CPU model, none, and a boot without firmware.
    let (fw_dir, direct_dir) = (scratch(), scratch());
    let path = write_config(fw_dir.path(), config(dir.path(), true));
    let direct = write_config(direct_dir.path(), config(dir.path(), false));
    for (args, cfg, want) in [
        (
            &["--snp", "--vcpu-type", "NOPE"][..],
            &path,
            "guest CPU model \"NOPE\" is unknown (one of EPYC",
        ),
        (
            &["--snp"][..],
            &path,
            "--snp needs --vcpu-type (one of EPYC",
        ),
        (
            &["--snp", "--vcpu-type", "EPYC-Milan"][..],
            &direct,
            "no firmware boot (machine.firmware)",
        ),
    ] {
        let out = Command::new(vmm_bin())
            .arg("measure")
            .args(args)
            .arg("--config")
            .arg(cfg)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(want),
            "{args:?}: {stderr}"
        );
    }
    for (vcpus, vcpu_type, cmdline) in [
        (1u8, "EPYC-Milan", CMDLINE),
        (2, "EPYC-Genoa", ""),
        (4, "EPYC-Milan", "console=ttyS0 root=/dev/vda ro quiet"),
    ] {
        let mut cfg = config(dir.path(), true);
        cfg["machine"]["vcpus"] = json!(vcpus);
        cfg["boot_source"]["cmdline"] = json!(cmdline);
        let path = write_config(dir.path(), cfg.clone());
        let out = Command::new(vmm_bin())
            .args(["measure", "--snp", "--vcpu-type", vcpu_type, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ours = v["snp"]["launch_digest"].as_str().unwrap().to_string();
        let kernel = PathBuf::from(cfg["boot_source"]["kernel"].as_str().unwrap());
        let initrd = PathBuf::from(cfg["boot_source"]["initrd"].as_str().unwrap());
        let theirs = bulwark_firmware_abi::build::sev_snp_measure(&SnpMeasureInputs {
            firmware: firmware(),
            kernel: &kernel,
            initrd: Some(&initrd),
            cmdline,
            vcpus: u32::from(vcpus),
            vcpu_type,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ours, theirs, "{vcpus} x {vcpu_type}, cmdline {cmdline:?}");
    }
}
