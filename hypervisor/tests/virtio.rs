//! virtio devices end to end with tiny guests on this machine's KVM: block (a raw
//! file, a scratch disk and the rootfs of a signed bundle), rng and vsock, and hostile
//! drivers that the VMM must survive. The tiny guests have no ACPI parser: they find
//! the devices through the `virtio_mmio.device=` command-line fragments, which the VMM
//! writes only when `machine.acpi` is off (with ACPI the DSDT describes the devices).

mod common;

use std::path::{Path, PathBuf};

use bulwark_image::{build, generate_key_pair, sign, BuildSpec, SigningKey};
use common::*;
use serde_json::{json, Value};

#[test]
fn a_guest_reads_the_rootfs_writes_scratch_and_gets_random_bytes() {
    let dir = scratch();
    let rootfs = rootfs_bytes();
    let rootfs_path = dir.path().join("rootfs.img");
    std::fs::write(&rootfs_path, &rootfs).unwrap();
    let scratch_path = dir.path().join("scratch.img");
    std::fs::write(&scratch_path, vec![0u8; 1 << 20]).unwrap();
    let cfg = json!({
        "machine": {"vcpus": 1, "mem_mib": 64, "acpi": false},
        "boot_source": {"kind": "linux", "kernel": elf("virtio-blk"), "cmdline": blk_cmdline(&rootfs)},
        "devices": {
            "debug_exit": true,
            "block": [
                {"id": "rootfs", "path": rootfs_path, "read_only": true},
                {"id": "scratch", "path": scratch_path}
            ],
            "rng": true
        }
    });
    let predicted = measure(cfg.clone());
    let run = boot(cfg);
    run.assert_status(16);
    for line in [
        "disk 0xd0000000: 128 sectors, id rootfs",
        "rootfs sha256 ok (65536 bytes)",
        "rootfs refuses writes and reads past the end",
        "disk 0xd0001000: 2048 sectors, id scratch",
        "scratch write/flush/read-back ok (65536 bytes)",
        "rng ok (64 bytes)",
        "virtio-blk done: 2 disks, rng yes",
    ] {
        assert!(
            run.serial.contains(line),
            "missing {line:?}:\n{}\n{}",
            run.serial,
            run.stderr
        );
    }
    // The pattern is on the host's file, at sector 16; the read-only file is untouched.
    let disk = std::fs::read(&scratch_path).unwrap();
    for (i, w) in disk[16 * 512..16 * 512 + 65536].chunks(8).enumerate() {
        assert_eq!(u64::from_le_bytes(w.try_into().unwrap()), pattern(i as u64));
    }
    assert_eq!(std::fs::read(&rootfs_path).unwrap(), rootfs);
    // The devices and their command-line fragments are in the measurement, and the
    // offline prediction matches.
    assert_eq!(booted_measurement(&run), predicted);
}

#[test]
fn notifications_work_without_ioeventfd() {
    let dir = scratch();
    let rootfs = rootfs_bytes();
    let rootfs_path = dir.path().join("rootfs.img");
    std::fs::write(&rootfs_path, &rootfs).unwrap();
    let cfg = json!({
        "machine": {"vcpus": 1, "mem_mib": 64, "acpi": false},
        "boot_source": {"kind": "linux", "kernel": elf("virtio-blk"), "cmdline": blk_cmdline(&rootfs)},
        "devices": {
            "debug_exit": true,
            "block": [{"id": "rootfs", "path": rootfs_path, "read_only": true}],
            "rng": true
        }
    });
    let run = boot_with_env(cfg, &[("BULWARK_VMM_NO_IOEVENTFD", "1")]);
    run.assert_status(16);
    assert!(run.serial.contains("rootfs sha256 ok"), "{}", run.serial);
    assert!(run.serial.contains("rng ok (64 bytes)"), "{}", run.serial);
    assert!(
        run.stderr.contains("queue notifications exit to the VMM"),
        "{}",
        run.stderr
    );
}

#[test]
fn device_interrupts_reach_the_guest_through_the_irqfd() {
    // rng is the only device: slot 0, GSI 5. The guest sleeps in `hlt` until the
    // interrupt for each completed buffer arrives (a lost interrupt hangs it and the
    // watchdog fails the test).
    for env in [&[][..], &[("BULWARK_VMM_NO_IOEVENTFD", "1")][..]] {
        let mut cfg = raw_config("virtio-irq", 1, 5);
        cfg["devices"]["rng"] = json!(true);
        let run = boot_with_env(cfg, env);
        run.assert_status(16);
        assert!(
            run.serial.contains("irq ok: 8 interrupts"),
            "{}",
            run.serial
        );
    }
}

struct SignedRootfs {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    key_pub: PathBuf,
}

fn signed_bundle_with_rootfs(rootfs: &[u8]) -> SignedRootfs {
    let dir = scratch();
    let (key, key_pub, _) = generate_key_pair(&dir.path().join("keys")).unwrap();
    let rootfs_path = dir.path().join("rootfs.img");
    std::fs::write(&rootfs_path, rootfs).unwrap();
    let spec = BuildSpec {
        name: "tiny-virtio".into(),
        version: 1,
        created: 0,
        kernel: elf("virtio-blk"),
        initrd: None,
        cmdline: Some(blk_cmdline(rootfs)),
        config: None,
        rootfs: Some(rootfs_path),
    };
    let bundle = dir.path().join("tenant.bwi");
    build(&spec, &bundle, &|_| {}).unwrap();
    sign(&bundle, &SigningKey::from_pem_file(&key).unwrap(), &|_| {}).unwrap();
    SignedRootfs {
        _dir: dir,
        bundle,
        key_pub,
    }
}

fn bundle_rootfs_config(bundle: &Path, key: &Path) -> Value {
    json!({
        "machine": {"vcpus": 1, "mem_mib": 64, "acpi": false},
        "boot_source": {"kind": "bundle", "path": bundle, "trusted_keys": [key]},
        "devices": {"debug_exit": true, "block": [{"id": "rootfs", "bundle_rootfs": true}]}
    })
}

#[test]
fn a_signed_bundle_serves_its_rootfs_and_a_tampered_one_never_boots() {
    let rootfs = rootfs_bytes();
    let s = signed_bundle_with_rootfs(&rootfs);
    let cfg = bundle_rootfs_config(&s.bundle, &s.key_pub);
    let predicted = measure(cfg.clone());
    let run = boot(cfg);
    run.assert_status(16);
    assert!(run.serial.contains("id rootfs"), "{}", run.serial);
    assert!(
        run.serial.contains("rootfs sha256 ok (65536 bytes)"),
        "{}",
        run.serial
    );
    assert!(
        run.serial
            .contains("rootfs refuses writes and reads past the end"),
        "{}",
        run.serial
    );
    assert_eq!(booted_measurement(&run), predicted);

    // One byte of the rootfs flipped: refused before the guest runs (no serial output).
    let bytes = std::fs::read(&s.bundle).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w == &rootfs[..64])
        .expect("the rootfs is stored in place");
    let mut tampered = bytes.clone();
    tampered[at + 1000] ^= 1;
    let bad = s.bundle.with_file_name("tampered.bwi");
    std::fs::write(&bad, tampered).unwrap();
    let run = boot(bundle_rootfs_config(&bad, &s.key_pub));
    run.assert_status(1);
    assert!(run.serial.is_empty(), "the guest ran: {}", run.serial);
    assert!(run.stderr.contains("verification failed"), "{}", run.stderr);
}

#[test]
fn bad_virtio_configs_are_refused_naming_the_field() {
    let dir = scratch();
    let missing = dir.path().join("missing.img");
    let cfg = json!({
        "machine": {"vcpus": 1, "mem_mib": 64, "acpi": false},
        "boot_source": {"kind": "linux", "kernel": elf("virtio-blk")},
        "devices": {"block": [{"id": "d", "path": missing}]}
    });
    let run = boot(cfg);
    run.assert_status(1);
    assert!(
        run.stderr.contains("devices.block[0].path"),
        "{}",
        run.stderr
    );
    let cfg = json!({
        "machine": {"vcpus": 1, "mem_mib": 64, "acpi": false},
        "boot_source": {"kind": "linux", "kernel": elf("virtio-blk")},
        "devices": {"block": [{"id": "d", "bundle_rootfs": true}]}
    });
    let run = boot(cfg);
    run.assert_status(1);
    assert!(
        run.stderr.contains("devices.block[0].bundle_rootfs"),
        "{}",
        run.stderr
    );
}

/// Connects to the VMM's vsock socket and asks for guest port `port`.
fn vsock_connect(uds: &Path, port: u32) -> std::os::unix::net::UnixStream {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(uds).expect("connect to the vsock socket");
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = String::new();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    // One byte at a time would be slower; the OK line is all the device writes first.
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK "), "handshake answer {line:?}");
    assert!(r.buffer().is_empty(), "bytes after the OK line");
    s
}

const TEN_MIB: usize = 10 << 20;

#[test]
fn vsock_moves_10_mib_each_way_byte_exact() {
    use std::io::{Read, Write};
    let dir = scratch();
    let uds = dir.path().join("v.sock");
    let listener =
        std::os::unix::net::UnixListener::bind(format!("{}_5678", uds.display())).unwrap();
    let chunks = TEN_MIB / 65536;
    let mut cfg = raw_config("virtio-vsock", 1, chunks as u64);
    cfg["devices"]["vsock"] = json!({"guest_cid": 42, "uds_path": uds});
    let vmm = spawn_vmm(dir, cfg, false);
    wait_for_path(&uds);

    // Guest-initiated: the listener collects everything the guest sends.
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::with_capacity(TEN_MIB);
        s.read_to_end(&mut got).unwrap();
        got
    });

    // Host-initiated: 10 MiB to the echoing guest, read back concurrently.
    let t0 = std::time::Instant::now();
    let stream = vsock_connect(&uds, 1234);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..TEN_MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut w = stream.try_clone().unwrap();
    let to_send = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&to_send).unwrap());
    let mut echoed = vec![0u8; TEN_MIB];
    (&stream).read_exact(&mut echoed).unwrap();
    writer.join().unwrap();
    let echo_time = t0.elapsed();
    assert!(echoed == data, "the echo differs from what was sent");
    drop(stream);

    let t1 = std::time::Instant::now();
    let got = receiver.join().unwrap();
    let send_time = t1.elapsed();
    let run = vmm.wait();
    run.assert_status(16);
    assert_eq!(got.len(), TEN_MIB, "serial: {}", run.serial);
    for (i, c) in got.chunks(65536).enumerate() {
        assert_eq!(
            u64::from_le_bytes(c[..8].try_into().unwrap()),
            i as u64,
            "chunk {i}"
        );
        for (j, &b) in c.iter().enumerate().skip(8) {
            assert_eq!(b, ((j * 31 + 7) & 0xff) as u8, "chunk {i} byte {j}");
        }
    }
    assert!(
        run.serial.contains("echo: done, 10485760 bytes"),
        "{}",
        run.serial
    );
    assert!(
        run.serial.contains("send: done, 160 chunks"),
        "{}",
        run.serial
    );
    // Reported, never asserted (timing).
    eprintln!(
        "vsock: 10 MiB echoed (host->guest->host) in {:.2} s, 10 MiB guest->host in {:.2} s",
        echo_time.as_secs_f64(),
        send_time.as_secs_f64()
    );
}

/// `(VmRSS, RssAnon)` of `pid` in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

#[test]
fn a_hostile_guest_cannot_break_the_vmm_or_the_other_devices() {
    let dir = scratch();
    let ro: Vec<u8> = (0..8192u64)
        .flat_map(|i| pattern(i).to_le_bytes())
        .collect();
    let ro_path = dir.path().join("ro.img");
    std::fs::write(&ro_path, &ro).unwrap();
    let rw_path = dir.path().join("rw.img");
    std::fs::write(&rw_path, vec![0u8; 1 << 20]).unwrap();
    let uds = dir.path().join("v.sock");
    // A host listener that accepts the guest's flood connection and never reads.
    let listener =
        std::os::unix::net::UnixListener::bind(format!("{}_7000", uds.display())).unwrap();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(2) {
            held.push(s);
        }
        std::thread::sleep(std::time::Duration::from_secs(600));
        drop(held);
    });
    drop(holder);
    // 4096 packets of 64 KiB: 256 MiB pushed without credit.
    let flood = 4096u64;
    let mut cfg = raw_config("virtio-hostile", 1, flood);
    cfg["devices"]["block"] = json!([
        {"id": "ro", "path": ro_path, "read_only": true},
        {"id": "rw", "path": rw_path}
    ]);
    cfg["devices"]["rng"] = json!(true);
    cfg["devices"]["vsock"] = json!({"guest_cid": 3, "uds_path": uds});
    let vmm = spawn_vmm(dir, cfg, true);
    let pid = vmm.child.id();
    let api = vmm.dir.path().join("api.sock");
    let mut peak = (0, 0);
    let vmm = vmm.wait_for_serial("hostile done", std::time::Duration::from_secs(300), || {
        let (rss, anon) = rss_kib(pid);
        peak = (peak.0.max(rss), peak.1.max(anon));
    });
    let (code, body) = http(&api, "GET", "/vm");
    assert_eq!(code, 200, "{body}");
    let vm: Value = serde_json::from_str(&body).unwrap();
    let (code, metrics) = http(&api, "GET", "/metrics");
    assert_eq!(code, 200);
    // The read-only disk's file never changed.
    assert_eq!(std::fs::read(&ro_path).unwrap(), ro);
    let (code, _) = http(&api, "POST", "/vm/stop");
    assert_eq!(code, 204);
    let run = vmm.wait();
    run.assert_status(0);
    assert!(!run.serial.contains("FAIL"), "{}", run.serial);
    for line in [
        "ok looping chain",
        "ok buffer outside guest memory",
        "ok buffer across the end of RAM",
        "ok length near u32::MAX",
        "ok next index out of range",
        "ok unnegotiated indirect table",
        "ok write to the read-only disk",
        "ok read past the end",
        "ok read straddling the end",
        "ok read at sector u64::MAX",
        "ok corrupt available index (needs reset)",
        "ok rw disk works again after reset",
        "ok reset mid-request",
        "ok queue address rewritten after DRIVER_OK",
        "ok vsock bogus packets",
        "ok vsock flood without credit was reset",
        "ok vsock after the flood",
        "hostile done",
    ] {
        assert!(
            run.serial.contains(line),
            "missing {line:?}:\n{}",
            run.serial
        );
    }
    // GET /vm reports what happened per device; the metrics carry the same counters.
    let devs = vm["virtio"].as_array().expect("virtio devices in GET /vm");
    let by_label = |prefix: &str| {
        devs.iter()
            .find(|d| d["label"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {devs:?}"))
    };
    let (ro_dev, rw_dev) = (by_label("virtio-blk,id:ro"), by_label("virtio-blk,id:rw"));
    let (rng_dev, vsock_dev) = (by_label("virtio-rng"), by_label("virtio-vsock"));
    assert!(
        ro_dev["counters"]["errors"].as_u64().unwrap() >= 4,
        "{ro_dev}"
    );
    assert!(
        rw_dev["counters"]["errors"].as_u64().unwrap() >= 6,
        "{rw_dev}"
    );
    assert!(
        rw_dev["counters"]["needs_reset"].as_u64().unwrap() >= 1,
        "{rw_dev}"
    );
    assert!(
        rng_dev["counters"]["needs_reset"].as_u64().unwrap() >= 1,
        "{rng_dev}"
    );
    assert!(
        vsock_dev["counters"]["errors"].as_u64().unwrap() >= 2,
        "{vsock_dev}"
    );
    for d in devs {
        assert_eq!(d["needs_reset"], false, "{d}");
        assert_eq!(d["worker_alive"], true, "{d}");
        assert!(d["counters"]["requests"].as_u64().unwrap() > 0, "{d}");
    }
    assert!(metrics.contains("bulwark_virtio_errors_total{device=\"block\",base=\"0xd0001000\"}"));
    assert!(run.stderr.contains("needs reset"), "{}", run.stderr);
    // Memory stays bounded although the guest pushed 256 MiB at a host socket that
    // never reads: the VMM's anonymous memory (guest RAM the guest touched, a few
    // MiB, included) stays far below the flood.
    eprintln!("peak VmRSS {} KiB, RssAnon {} KiB", peak.0, peak.1);
    assert!(peak.1 < 32 * 1024, "RssAnon peaked at {} KiB", peak.1);
}
