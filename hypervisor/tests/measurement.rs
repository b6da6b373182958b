//! The launch measurement: `measure` predicts the booted value, every input byte
//! matters, host-side settings do not, and docs/measurement.md is enough to recompute it.

mod common;

use bulwark_vmm::boot_source::{read_inputs, StateUse};
use bulwark_vmm::config::VmConfig;
use bulwark_vmm::vm::measure_offline;
use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha384};

fn offline(cfg: &Value) -> Option<String> {
    let cfg = VmConfig::from_json(&cfg.to_string()).ok()?;
    let inputs = read_inputs(&cfg, StateUse::CheckOnly).ok()?;
    measure_offline(&cfg, &inputs)
        .ok()
        .map(|p| p.measurement.value)
}

fn linux_cfg(dir: &std::path::Path) -> Value {
    std::fs::write(
        dir.join("initrd"),
        (0..256u32).map(|i| i as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    json!({
        "machine": {"vcpus": 1, "mem_mib": 64},
        "boot_source": {"kind": "linux", "kernel": elf("e820"), "initrd": dir.join("initrd"), "cmdline": "console=ttyS0"},
        "devices": {"debug_exit": true}
    })
}

/// Sets (or adds) the field at JSON pointer `ptr`.
fn set(cfg: &mut Value, ptr: &str, v: Value) {
    let (parent, key) = ptr.rsplit_once('/').unwrap();
    cfg.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .insert(key.to_string(), v);
}

#[test]
fn measure_predicts_the_booted_value() {
    let dir = scratch();
    let mut no_acpi = linux_cfg(dir.path());
    no_acpi["machine"]["acpi"] = json!(false);
    for cfg in [raw_config("hello", 2, 0), linux_cfg(dir.path()), no_acpi] {
        let predicted = measure(cfg.clone());
        let run = boot(cfg);
        assert_eq!(run.status, 16, "stderr: {}", run.stderr);
        assert_eq!(booted_measurement(&run), predicted);
    }
}

#[test]
fn every_byte_of_every_input_changes_the_measurement() {
    let dir = scratch();
    let base_cfg = raw_config("hello", 1, 0);
    let base = offline(&base_cfg).unwrap();
    let image = std::fs::read(flat("hello")).unwrap();
    let mut seen = std::collections::HashSet::from([base.clone()]);
    for i in 0..image.len() {
        let mut changed = image.clone();
        changed[i] ^= 0x01;
        let p = dir.path().join("img");
        std::fs::write(&p, &changed).unwrap();
        let mut cfg = base_cfg.clone();
        cfg["boot_source"]["image"] = json!(p);
        let m = offline(&cfg).unwrap();
        assert!(
            seen.insert(m),
            "flipping image byte {i} gave a measurement seen before"
        );
    }
    let mut variants: Vec<(&str, Value)> = Vec::new();
    for (ptr, v) in [
        ("/machine/vcpus", json!(2)),
        ("/machine/mem_mib", json!(66)),
        ("/machine/mmio64_gib", json!(512)),
        ("/machine/cpuid_policy", json!("bulwark-default-v1")),
        ("/devices/debug_exit", json!(false)),
        ("/devices/i8042", json!(false)),
        ("/devices/serial", json!("none")),
        ("/machine/acpi", json!(false)),
        ("/boot_source/load_addr", json!(0x20_0000)),
        ("/boot_source/entry/rip", json!(0x10_0001)),
        ("/boot_source/entry/rsp", json!(8)),
        ("/boot_source/entry/rsi", json!(1)),
        ("/boot_source/entry/aps", json!("wait_for_sipi")),
    ] {
        let mut cfg = base_cfg.clone();
        set(&mut cfg, ptr, v);
        variants.push((ptr, cfg));
    }
    for (what, cfg) in variants {
        let m = offline(&cfg).unwrap_or_else(|| panic!("{what} gave an invalid config"));
        assert!(
            seen.insert(m),
            "changing {what} did not change the measurement"
        );
    }

    let lbase_cfg = linux_cfg(dir.path());
    let lbase = offline(&lbase_cfg).unwrap();
    assert!(seen.insert(lbase));
    let initrd = std::fs::read(dir.path().join("initrd")).unwrap();
    for i in 0..initrd.len() {
        let mut changed = initrd.clone();
        changed[i] ^= 0x80;
        std::fs::write(dir.path().join("initrd2"), &changed).unwrap();
        let mut cfg = lbase_cfg.clone();
        cfg["boot_source"]["initrd"] = json!(dir.path().join("initrd2"));
        assert!(seen.insert(offline(&cfg).unwrap()), "initrd byte {i}");
    }
    let cmdline = "console=ttyS0";
    for i in 0..cmdline.len() {
        let mut c = cmdline.as_bytes().to_vec();
        c[i] = if c[i] == b'x' { b'y' } else { b'x' };
        let mut cfg = lbase_cfg.clone();
        cfg["boot_source"]["cmdline"] = json!(String::from_utf8(c).unwrap());
        assert!(seen.insert(offline(&cfg).unwrap()), "cmdline byte {i}");
    }
    // Kernel: every 11th byte (an unparsable kernel is rejected, which also never
    // yields the old value).
    let kernel = std::fs::read(elf("e820")).unwrap();
    for i in (0..kernel.len()).step_by(11) {
        let mut changed = kernel.clone();
        changed[i] ^= 0x04;
        std::fs::write(dir.path().join("k"), &changed).unwrap();
        let mut cfg = lbase_cfg.clone();
        cfg["boot_source"]["kernel"] = json!(dir.path().join("k"));
        if let Some(m) = offline(&cfg) {
            assert!(seen.insert(m), "kernel byte {i}");
        }
    }
}

#[test]
fn host_side_settings_do_not_change_the_measurement() {
    let base_cfg = raw_config("hello", 1, 0);
    let base = offline(&base_cfg).unwrap();
    for (ptr, v) in [
        ("/machine/prefault_threads", json!(2)),
        ("/machine/backing", json!("hugetlbfs")),
        ("/devices/serial", json!({"file": "/tmp/elsewhere"})),
    ] {
        let mut cfg = base_cfg.clone();
        set(&mut cfg, ptr, v);
        assert_eq!(offline(&cfg).unwrap(), base, "{ptr}");
    }
    let mut cfg = base_cfg.clone();
    cfg["seccomp"] = json!("off");
    assert_eq!(offline(&cfg).unwrap(), base);
}

/// Recomputes a raw long64 boot's measurement from docs/measurement.md alone.
#[test]
fn docs_are_enough_to_recompute_a_raw_boot_measurement() {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    fn event(tag: &str, body: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        bytes(&mut e, tag.as_bytes());
        e.extend_from_slice(body);
        e
    }
    fn blob(kind: &str, addr: u64, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        bytes(&mut b, kind.as_bytes());
        b.extend_from_slice(&addr.to_le_bytes());
        b.extend_from_slice(&(data.len() as u64).to_le_bytes());
        bytes(&mut b, &Sha384::digest(data));
        event("blob", &b)
    }
    let image = std::fs::read(flat("hello")).unwrap();
    let mem: u64 = 64 << 20;
    let mut events = vec![event("bulwark-launch-measurement-v1", &[])];
    let mut machine = 1u32.to_le_bytes().to_vec();
    for v in [mem, 0xc000_0000, 0x4000_0000, 4 << 30, 1024 << 30] {
        machine.extend_from_slice(&v.to_le_bytes());
    }
    events.push(event("machine", &machine));
    let mut map = 3u32.to_le_bytes().to_vec();
    for (a, s, t) in [
        (0u64, 0x9fc00u64, 1u32),
        (0x9fc00, 0x60400, 2),
        (0x10_0000, mem - 0x10_0000, 1),
    ] {
        map.extend_from_slice(&a.to_le_bytes());
        map.extend_from_slice(&s.to_le_bytes());
        map.extend_from_slice(&t.to_le_bytes());
    }
    events.push(event("memory-map", &map));
    let mut pol = Vec::new();
    bytes(&mut pol, b"bulwark-emulated-kernel-v1");
    events.push(event("cpuid-policy", &pol));
    let mut dev = 3u32.to_le_bytes().to_vec();
    for d in [
        "debug-exit@io:0xf4",
        "i8042-reset@io:0x60-0x64",
        "serial-16550@io:0x3f8-0x3ff,irq:4",
    ] {
        bytes(&mut dev, d.as_bytes());
    }
    events.push(event("devices", &dev));
    events.push(event("boot-source", &[0]));
    let gdt: Vec<u8> = [
        0u64,
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x0000_8b00_0000_0067,
    ]
    .iter()
    .flat_map(|d| d.to_le_bytes())
    .collect();
    events.push(blob("boot-gdt", 0x500, &gdt));
    let mut pt = vec![0u64; 6 * 512];
    pt[0] = 0xa003;
    for i in 0..4 {
        pt[512 + i] = 0xb003 + 0x1000 * i as u64;
    }
    for i in 0..2048 {
        pt[1024 + i] = ((i as u64) << 21) | 0x83;
    }
    let pt: Vec<u8> = pt.iter().flat_map(|e| e.to_le_bytes()).collect();
    events.push(blob("boot-page-tables", 0x9000, &pt));
    events.push(blob("raw-image", 0x10_0000, &image));
    let mut entry = Vec::new();
    bytes(&mut entry, b"long64");
    for v in [0x10_0000u64, 0, 0, 0] {
        entry.extend_from_slice(&v.to_le_bytes());
    }
    bytes(&mut entry, b"at_entry");
    events.push(event("entry", &entry));
    let chain = |events: &[Vec<u8>]| {
        let mut m = [0u8; 48];
        for e in events {
            let mut h = Sha384::new();
            h.update(m);
            h.update(Sha384::digest(e));
            m = h.finalize().into();
        }
        hex::encode(m)
    };
    let mut no_acpi = raw_config("hello", 1, 0);
    no_acpi["machine"]["acpi"] = json!(false);
    assert_eq!(chain(&events), offline(&no_acpi).unwrap());
    // With ACPI (the default) the tables are one more blob, right after the
    // boot-source event; their bytes come from the documented `acpi` module.
    let cfg = VmConfig::from_json(&raw_config("hello", 1, 0).to_string()).unwrap();
    let tables = bulwark_vmm::acpi::platform(&cfg)
        .unwrap()
        .build(&cfg.machine.layout(52).unwrap())
        .unwrap();
    events.insert(6, blob("acpi-tables", 0xe_0000, &tables.bytes));
    events.insert(
        7,
        blob(
            "reset-vector",
            0xf_fff0,
            &bulwark_vmm::acpi::RESET_VECTOR_CODE,
        ),
    );
    assert_eq!(chain(&events), offline(&raw_config("hello", 1, 0)).unwrap());
}
