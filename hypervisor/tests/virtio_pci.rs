//! virtio-pci end to end with the `virtio-pci` tiny guest on this machine's KVM: the
//! guest finds the functions on PCI bus 0 through CF8/CFC (`machine.acpi: false`: no
//! ACPI parser in the guest), brings up two disks and rng with its own virtio-pci
//! driver, and takes every completion as an MSI-X interrupt at its LAPIC while
//! sleeping in `hlt`, including a masked vector's pending message delivered on
//! unmask; with ioeventfd doorbells and with MMIO-exit notifications. The VMM's
//! `GET /vm` and `/metrics` show the functions' slots, BARs and MSI-X state.

mod common;

use common::*;
use std::time::Duration;

use serde_json::{json, Value};

struct Disks {
    _dir: tempfile::TempDir,
    rootfs: Vec<u8>,
    rootfs_path: std::path::PathBuf,
    scratch_path: std::path::PathBuf,
}

fn disks() -> Disks {
    let dir = scratch();
    let rootfs = rootfs_bytes();
    let rootfs_path = dir.path().join("rootfs.img");
    std::fs::write(&rootfs_path, &rootfs).unwrap();
    let scratch_path = dir.path().join("scratch.img");
    std::fs::write(&scratch_path, vec![0u8; 1 << 20]).unwrap();
    Disks {
        _dir: dir,
        rootfs,
        rootfs_path,
        scratch_path,
    }
}

fn config(d: &Disks, extra_cmdline: &str) -> Value {
    json!({
        "machine": {"vcpus": 1, "mem_mib": 64, "acpi": false},
        "boot_source": {
            "kind": "linux",
            "kernel": elf("virtio-pci"),
            "cmdline": format!("{}{extra_cmdline}", blk_cmdline(&d.rootfs))
        },
        "devices": {
            "debug_exit": true,
            "virtio_transport": "pci",
            "block": [
                {"id": "rootfs", "path": d.rootfs_path, "read_only": true},
                {"id": "scratch", "path": d.scratch_path}
            ],
            "rng": true
        }
    })
}

fn assert_guest_report(serial: &str, stderr: &str) {
    for line in [
        "virtio-pci 00:01.0 1af4:1042 id 2 msix vectors 2",
        "00:01.0 bar0 0xcff00000 size 0x8000, move refused",
        "disk 00:01.0: 128 sectors, id rootfs",
        "rootfs sha256 ok (65536 bytes)",
        "rootfs refuses writes and reads past the end",
        "virtio-pci 00:02.0 1af4:1042 id 2 msix vectors 2",
        "00:02.0 bar0 0xcff08000 size 0x8000, move refused",
        "disk 00:02.0: 2048 sectors, id scratch",
        "scratch write/flush/read-back ok (65536 bytes)",
        "virtio-pci 00:03.0 1af4:1044 id 4 msix vectors 2",
        "00:03.0 bar0 0xcff10000 size 0x8000, move refused",
        "rng ok (4 x 64 bytes, 4 MSI-X interrupts)",
        "msix vector mask ok: pending while masked, delivered on unmask",
        "msix function mask ok: pending while masked, delivered on unmask",
        "virtio-pci done: 3 functions, 2 disks, 1 rng",
    ] {
        assert!(
            serial.contains(line),
            "missing {line:?}:\n{serial}\n{stderr}"
        );
    }
    // Every disk request was completed by an interrupt (the guest checks the counts
    // and prints them).
    for disk in ["00:01.0", "00:02.0"] {
        let l = serial
            .lines()
            .find(|l| l.starts_with(&format!("disk {disk}: ")) && l.contains("requests"))
            .unwrap_or_else(|| panic!("no interrupt count for {disk}:\n{serial}"));
        let n: Vec<u64> = l.split(' ').filter_map(|w| w.parse().ok()).collect();
        assert!(n.len() == 2 && n[0] >= 3 && n[1] >= n[0], "{l}");
    }
}

#[test]
fn a_guest_drives_virtio_pci_functions_with_msix_interrupts() {
    for env in [&[][..], &[("BULWARK_VMM_NO_IOEVENTFD", "1")][..]] {
        let d = disks();
        let cfg = config(&d, "");
        let predicted = measure(cfg.clone());
        let run = boot_with_env(cfg, env);
        run.assert_status(16);
        assert_guest_report(&run.serial, &run.stderr);
        // The pattern is on the host's file, at sector 16; the read-only file is
        // untouched.
        let disk = std::fs::read(&d.scratch_path).unwrap();
        for (i, w) in disk[16 * 512..16 * 512 + 65536].chunks(8).enumerate() {
            assert_eq!(u64::from_le_bytes(w.try_into().unwrap()), pattern(i as u64));
        }
        assert_eq!(std::fs::read(&d.rootfs_path).unwrap(), d.rootfs);
        assert_eq!(booted_measurement(&run), predicted);
        if env.is_empty() {
            assert!(
                !run.stderr.contains("notifications exit to the VMM"),
                "{}",
                run.stderr
            );
        } else {
            assert!(
                run.stderr.contains("queue notifications exit to the VMM"),
                "{}",
                run.stderr
            );
        }
    }
}

#[test]
fn get_vm_and_metrics_show_slots_bars_and_msix_state() {
    let d = disks();
    let vmm = spawn_vmm(scratch(), config(&d, " hold=1"), true);
    let api = vmm.dir.path().join("api.sock");
    let vmm = vmm.wait_for_serial("virtio-pci done", Duration::from_secs(120), || {});
    let (code, body) = http(&api, "GET", "/vm");
    assert_eq!(code, 200, "{body}");
    let vm: Value = serde_json::from_str(&body).unwrap();
    let (code, metrics) = http(&api, "GET", "/metrics");
    assert_eq!(code, 200);
    let (code, _) = http(&api, "POST", "/vm/stop");
    assert_eq!(code, 204);
    let run = vmm.wait();
    run.assert_status(0);

    let devs = vm["virtio"].as_array().expect("virtio devices");
    assert_eq!(devs.len(), 3, "{devs:?}");
    for (n, dev) in devs.iter().enumerate() {
        let addr = format!("00:{:02x}.0", n + 1);
        let bar = 0xcff0_0000u64 + n as u64 * 0x8000;
        assert_eq!(dev["transport"], "pci", "{dev}");
        assert_eq!(dev["pci_slot"], n + 1, "{dev}");
        assert_eq!(dev["base"], bar, "{dev}");
        assert!(dev.get("gsi").is_none(), "{dev}");
        assert_eq!(dev["notify"], "ioeventfd", "{dev}");
        assert_eq!(dev["worker_alive"], true, "{dev}");
        let p = &dev["pci"];
        assert_eq!(p["address"], addr.as_str(), "{p}");
        assert_eq!(p["bar0"], json!([bar, 0x8000]), "{p}");
        assert_eq!(p["bar_moves_refused"], 1, "{p}");
        assert_eq!(p["msix_enabled"], true, "{p}");
        assert_eq!(p["msix_function_masked"], false, "{p}");
        assert_eq!(p["config_vector"], 0, "{p}");
        assert_eq!(p["queue_vectors"], json!([1]), "{p}");
        assert_eq!(p["bad_msi_messages"], 0, "{p}");
        let vectors = p["vectors"].as_array().unwrap();
        assert_eq!(vectors.len(), 2);
        // Each function's vectors have GSIs of their own, from 24 up.
        for v in vectors {
            assert_eq!(v["masked"], false, "{v}");
            assert_eq!(v["pending"], false, "{v}");
            let gsi = v["gsi"].as_u64().unwrap();
            assert!(gsi >= 24, "{v}");
        }
        assert!(p["msix_sent"].as_u64().unwrap() >= 3, "{p}");
        assert!(dev["counters"]["requests"].as_u64().unwrap() >= 3, "{dev}");
    }
    let gsis: Vec<u64> = devs
        .iter()
        .flat_map(|d| d["pci"]["vectors"].as_array().unwrap().clone())
        .map(|v| v["gsi"].as_u64().unwrap())
        .collect();
    let mut unique = gsis.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), gsis.len(), "GSIs are not shared: {gsis:?}");
    assert_eq!(devs[2]["pci"]["msix_pended"], 2, "rng: one per mask test");
    assert_eq!(vm["pci"]["config_malformed"], 0, "{}", vm["pci"]);
    assert!(
        metrics.contains(
            "bulwark_virtio_requests_total{device=\"rng\",base=\"0xcff10000\",transport=\"pci\",slot=\"00:03.0\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "bulwark_virtio_pci_msix_enabled{device=\"block\",base=\"0xcff00000\",transport=\"pci\",slot=\"00:01.0\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("bulwark_virtio_pci_msix_pended_total{device=\"rng\",base=\"0xcff10000\",transport=\"pci\",slot=\"00:03.0\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bulwark_pci_config_malformed_total 0"),
        "{metrics}"
    );
    // The measured device list names the host bridge and each function.
    let events = vm["measurement"]["events"].as_array().unwrap();
    let devices = events
        .iter()
        .find(|e| e["tag"] == "devices")
        .and_then(|e| e["detail"].as_str())
        .unwrap();
    for want in [
        "pci-host@io:0xcf8-0xcff,ecam:0xe0000000",
        "virtio-blk,id:rootfs,ro,file@pci:00:01.0,bar0:0xcff00000",
        "virtio-blk,id:scratch,rw,file@pci:00:02.0,bar0:0xcff08000",
        "virtio-rng@pci:00:03.0,bar0:0xcff10000",
    ] {
        assert!(devices.contains(want), "{devices}");
    }
    assert!(!devices.contains("@mmio:"), "{devices}");
}

#[test]
fn a_bad_transport_is_refused_naming_the_field() {
    let d = disks();
    let mut cfg = config(&d, "");
    cfg["devices"]["virtio_transport"] = json!("isa");
    let run = boot(cfg);
    run.assert_status(1);
    assert!(
        run.stderr.contains("devices.virtio_transport"),
        "{}",
        run.stderr
    );
}
