//! A real bulwark-vmm under bulwarkd, on this machine's /dev/kvm: a signed image
//! holding the tiny guest `smp` (which spins until stopped) is created, started
//! (jailed VMM, configured through its API socket), re-adopted after bulwarkd is
//! SIGKILLed and restarted, stopped, started again, and its VMM killed from outside
//! (noticed through the pidfd).
//!
//! Needs the bulwark-vmm binary: `BULWARK_VMM_BIN`, or the one cargo built next to
//! bulwarkd (`cargo build -p bulwark-vmm`; `cargo test --workspace` builds it).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn vmm_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BULWARK_VMM_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_BIN_EXE_bulwarkd")).with_file_name("bulwark-vmm");
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build -p bulwark-vmm) or set BULWARK_VMM_BIN",
        p.display()
    );
    p
}

/// Builds the tiny guests (own target dir: no wait on the outer cargo lock); returns
/// the `smp` guest's ELF.
fn smp_guest() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../integration-tests/tiny-guests");
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiny-guests");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "x86_64-unknown-none",
            "--bin",
            "smp",
            "--target-dir",
        ])
        .arg(&target)
        .output()
        .expect("running cargo for the tiny guests");
    assert!(
        out.status.success(),
        "building the tiny guests failed (is the x86_64-unknown-none target installed? scripts/setup adds it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("x86_64-unknown-none/release/smp")
}

fn wait_vm_state(n: &Node, id: &str, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = n.get(&format!("/vms/{id}"));
        if v["state"] == state {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "VM {id} never became {state}: {v}\n{}",
            n.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status_field(pid: i64, name: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `bulwarkctl vms attest v --nonce NONCE --out EV`, as the customer runs it.
fn attest_with_bulwarkctl(n: &Node, nonce: &str, ev: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_bulwarkctl"))
        .arg("--api-sock")
        .arg(n.sock())
        .args(["vms", "attest", "v", "--nonce", nonce, "--out"])
        .arg(ev)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_jailed_bulwark_vmm_runs_survives_a_bulwarkd_restart_stops_and_is_noticed_when_killed() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test boots a real VM and needs /dev/kvm"
    );
    let bin = vmm_bin();
    let kernel = smp_guest();
    let kvm_gid = std::fs::metadata("/dev/kvm").unwrap().gid();
    let node_image = json!({ "name": "bulwark-node", "version": 3, "manifest_sha384": "ab".repeat(48), "signer_key_ids": ["cd".repeat(32)] });
    let mut n = Node::new(json!({
        "jail": { "uid_base": 70300, "gid": kvm_gid },
        "vmm_bin": bin,
        "attestation": { "node_image": node_image, "software_key": true },
    }));
    // The VMM's uid walks to its own directory under the state dir.
    std::fs::set_permissions(n.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A signed image of the guest, readable by the VMM's uid.
    let pub_dir = tempfile::Builder::new()
        .prefix("bulwark-vmm-test")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(pub_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (key, key_pub, _) = bulwark_image::generate_key_pair(&n.path("keys")).unwrap();
    let spec = bulwark_image::BuildSpec {
        name: "smp".into(),
        version: 1,
        created: 0,
        kernel,
        initrd: None,
        cmdline: None,
        config: None,
        rootfs: None,
    };
    let image = pub_dir.path().join("smp.bwi");
    bulwark_image::build(&spec, &image, &|_| {}).unwrap();
    bulwark_image::sign(
        &image,
        &bulwark_image::SigningKey::from_pem_file(&key).unwrap(),
        &|_| {},
    )
    .unwrap();
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();

    n.start();
    let pem = std::fs::read_to_string(key_pub).unwrap();
    assert_eq!(
        n.call(
            "POST",
            "/tenants",
            Some(json!({ "id": "a", "signer_keys": [pem] }))
        )
        .0,
        201
    );
    let (s, v) = n.call(
        "POST",
        "/vms",
        Some(json!({ "id": "v", "tenant": "a", "image": image, "vcpus": 1, "mem_mib": 64 })),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = n.call("POST", "/vms/v/start", None);
    assert_eq!(s, 200, "{v}\n{}", n.log());
    assert_eq!(v["state"], "running", "{v}");
    let pid = v["pid"].as_i64().unwrap();
    // The VMM as /proc shows it: jailed, under bulwark-vmm's own seccomp filter.
    assert_eq!(
        status_field(pid, "Uid:")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["70300"; 4]
    );
    assert_eq!(
        status_field(pid, "Gid:").split_whitespace().next().unwrap(),
        kvm_gid.to_string()
    );
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    for ns in ["mnt", "net", "ipc", "uts"] {
        assert_ne!(
            std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap(),
            std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap(),
            "the VMM shares bulwarkd's {ns} namespace"
        );
    }
    // Its network namespace holds a loopback only, and it is down.
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(str::trim))
        .collect();
    assert_eq!(ifaces, ["lo"], "{dev}");
    // Its root holds only its files: its directory, the image, the binary, libraries,
    // /sys, /dev/kvm; not the state database, the config or the host's other files.
    let vmm_root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut top: Vec<String> = std::fs::read_dir(&vmm_root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    // Beside the fixed set: the top directories of what bulwarkd binds in (the
    // binary, the image and the VM's directory live wherever this checkout and
    // the temporary directories are).
    let mut allowed: Vec<String> = ["dev", "etc", "lib", "lib64", "sys", "tmp", "usr"]
        .map(String::from)
        .to_vec();
    for bound in [bin.as_path(), image.as_path(), n.dir.path()] {
        if let Some(std::path::Component::Normal(first)) = bound.components().nth(1) {
            allowed.push(first.to_string_lossy().into_owned());
        }
    }
    for t in &top {
        assert!(
            allowed.contains(t),
            "unexpected /{t} in the VMM's root: {top:?}"
        );
    }
    let inside = |p: &Path| vmm_root.join(p.strip_prefix("/").unwrap());
    assert!(inside(&n.path("state/vms/v/api.sock")).exists());
    assert!(inside(&image).exists());
    assert!(inside(Path::new("/dev/kvm")).exists());
    assert!(
        !inside(&n.path("state/bulwarkd.db")).exists(),
        "the state database is visible to the VMM"
    );
    assert!(!inside(&n.path("config.json")).exists());
    assert!(!inside(Path::new("/proc/1")).exists() && !inside(Path::new("/root")).exists());
    let dev: Vec<_> = std::fs::read_dir(inside(Path::new("/dev")))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(dev, ["kvm"], "no VFIO nodes for a VM without devices");
    // Its own API answers on its socket: the VM is running there too.
    let sock = v["api_sock"].as_str().unwrap();
    let r = bulwark_agent::client::blocking(Path::new(sock), "GET", "/vm", None).unwrap();
    assert_eq!(
        r.json()["state"],
        "running",
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    // The host channel: bulwarkd listens where the VMM sends the guest's connections
    // to port 1024; here the test plays bulwark-init (the tiny guest has no vsock).
    {
        use bulwark_guest_protocol::*;
        use std::io::{Read, Write};
        let mut ch =
            std::os::unix::net::UnixStream::connect(n.path("state/vms/v/vsock.sock_1024")).unwrap();
        ch.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reader = FrameReader::new();
        let mut buf = [0u8; 4096];
        let host_hello = loop {
            if let Some(f) = reader.next_frame() {
                break decode_host(&f.unwrap()).unwrap();
            }
            let k = ch.read(&mut buf).unwrap();
            assert!(k > 0, "channel closed before the host's hello");
            reader.push(&buf[..k]);
        };
        assert!(
            matches!(host_hello, HostMessage::Hello { protocol: 1, .. }),
            "{host_hello:?}"
        );
        let send = |ch: &mut std::os::unix::net::UnixStream, m: GuestMessage| {
            ch.write_all(&encode_guest(&m).unwrap()).unwrap()
        };
        send(
            &mut ch,
            GuestMessage::Hello(Hello {
                protocol: 1,
                init_version: "0.1.0".into(),
                kernel_release: "6.1".into(),
                boot_id: "b".into(),
                uptime_us: 5,
            }),
        );
        send(
            &mut ch,
            GuestMessage::Progress(Progress {
                stage: Stage::WorkloadStarted,
                uptime_us: 9,
                detail: String::new(),
            }),
        );
        send(
            &mut ch,
            GuestMessage::Output(Output {
                stream: Stream::Stdout,
                offset: 0,
                data: b"hello from the workload\n".to_vec(),
            }),
        );
        ch.write_all(b"garbage that is not a frame").unwrap();
        send(
            &mut ch,
            GuestMessage::Exit(ExitReport {
                code: Some(7),
                signal: None,
                signal_name: None,
                runtime_us: 100,
                output_dropped: 0,
            }),
        );
        // The garbage is answered with an Error frame.
        let err = loop {
            if let Some(f) = reader.next_frame() {
                break decode_host(&f.unwrap()).unwrap();
            }
            let k = ch.read(&mut buf).unwrap();
            assert!(k > 0, "channel closed");
            reader.push(&buf[..k]);
        };
        assert!(matches!(err, HostMessage::Error(_)), "{err:?}");
        // An attested TLS handshake in the guest asks for evidence bound to its
        // nonce and TLS key: it comes back in pieces, signed, bound to both.
        let (tls_nonce, tls_key) = (vec![0x6e; 32], vec![0x6b; 32]);
        send(
            &mut ch,
            GuestMessage::EvidenceRequest(EvidenceRequest {
                request: 9,
                nonce: tls_nonce.clone(),
                tls_key_sha256: tls_key.clone(),
            }),
        );
        let mut doc = Vec::new();
        loop {
            let m = loop {
                if let Some(f) = reader.next_frame() {
                    break decode_host(&f.unwrap()).unwrap();
                }
                let k = ch.read(&mut buf).unwrap();
                assert!(k > 0, "channel closed before the evidence");
                reader.push(&buf[..k]);
            };
            let HostMessage::Evidence(c) = m else {
                panic!("not evidence: {m:?}")
            };
            assert_eq!((c.request, c.offset as usize), (9, doc.len()));
            doc.extend_from_slice(&c.data);
            if doc.len() == c.total as usize {
                break;
            }
        }
        let env = bulwark_attestation::evidence::parse_document(&doc).expect("evidence");
        bulwark_attestation::evidence::sign::verify_envelope(&env).expect("signed");
        assert_eq!(env.body.freshness.nonce.0, tls_nonce);
        assert_eq!(
            env.body
                .freshness
                .tls_key_sha256
                .as_ref()
                .map(|k| k.0.clone()),
            Some(tls_key)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let g = loop {
            let g = n.get("/vms/v/guest");
            if !g["exit"].is_null() {
                break g;
            }
            assert!(Instant::now() < deadline, "the exit never arrived: {g}");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(g["connected"], true, "{g}");
        assert_eq!(g["hello"]["init_version"], "0.1.0");
        assert_eq!(g["progress"][0]["stage"], "workload_started");
        assert_eq!(g["stdout"]["tail"], "hello from the workload\n");
        assert_eq!(g["stdout"]["bytes"], 24);
        assert_eq!(g["exit"]["code"], 7);
        assert_eq!(g["protocol_errors"], 1, "{g}");
    }

    // Evidence for a nonce, through bulwarkctl, as the customer gets it.
    let nonce = "5a".repeat(32);
    let ev = n.path("evidence.cose");
    attest_with_bulwarkctl(&n, &nonce, &ev);
    let env = bulwark_attestation::evidence::parse_document(&std::fs::read(&ev).unwrap())
        .expect("a canonical evidence document");
    bulwark_attestation::evidence::sign::verify_envelope(&env).expect("signed by the key it names");
    let body = &env.body;
    assert_eq!(body.freshness.nonce.0, hex::decode(&nonce).unwrap());
    assert_eq!(body.node.attestation, "software-key");
    assert_eq!(
        (body.node.image.name.as_str(), body.node.image.version),
        ("bulwark-node", 3)
    );
    let vmm_view = r.json();
    assert_eq!(
        hex::encode(&body.launch.measurement.0),
        vmm_view["measurement"]["value"].as_str().unwrap()
    );
    let img = body.launch.image.as_ref().expect("signed image claimed");
    assert_eq!(img.name, "smp");
    let key_id = bulwark_image::PublicKey::from_pem(&pem).unwrap().id_hex();
    assert_eq!(
        img.signer_key_ids
            .iter()
            .map(|k| hex::encode(&k.0))
            .collect::<Vec<_>>(),
        [key_id]
    );
    assert_eq!(body.isolation.source, "node-agent");
    assert_eq!(body.isolation.single_tenant, Some(true));
    assert!(body.isolation.devices.is_empty());
    // Bad nonces and VMs that are not running are refused before anything is signed.
    assert_eq!(
        n.call("POST", "/vms/v/attest", Some(json!({ "nonce": "00" })))
            .1["error"]["field"],
        "nonce"
    );

    // bulwarkd dies; the VMM runs on and is re-adopted by the next bulwarkd, whose
    // config names a TPM (swtpm, with its own EK CA): evidence is TPM-quoted now.
    n.kill();
    let swtpm = bulwark_tpm::harness::Swtpm::start().expect("swtpm (scripts/setup)");
    n.config["attestation"]["software_key"] = json!(false);
    n.config["attestation"]["tpm"] = json!({
        "tcti": swtpm.tcti(),
        "ek_chain": [swtpm.ca_issuer_pem()],
        "event_log": n.path("no-event-log"),
    });
    n.write_config();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    n.start();
    let v = n.get("/vms/v");
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_i64()),
        (Some("running"), Some(pid)),
        "{v}"
    );
    // What the guest reported survived the SIGKILL (the state database keeps it).
    let g = n.get("/vms/v/guest");
    assert_eq!(g["hello"]["init_version"], "0.1.0", "{g}");
    assert_eq!(g["stdout"]["tail"], "hello from the workload\n", "{g}");
    assert_eq!(g["exit"]["code"], 7, "{g}");
    assert!(n
        .get("/events")
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["what"].as_str().unwrap().starts_with("re-adopted")));

    attest_with_bulwarkctl(&n, &nonce, &ev);
    // The customer's verifier affirms it under a policy that trusts the swtpm's EK
    // CA, the node and tenant signers and this launch.
    let policy = bulwark_attestation::evidence::Policy::parse(
        &format!(
            "[node]\nimage_signers = [\"{}\"]\nek_roots = [\"{}\"]\n\
             [vm]\nimage_signers = [\"{}\"]\nmeasurements = [\"{}\"]\n",
            "cd".repeat(32),
            swtpm.ca_root_pem().display(),
            bulwark_image::PublicKey::from_pem(&pem).unwrap().id_hex(),
            vmm_view["measurement"]["value"].as_str().unwrap(),
        ),
        Path::new("/"),
    )
    .unwrap();
    let a = bulwark_attestation::evidence::verify_document(
        &std::fs::read(&ev).unwrap(),
        &policy,
        &bulwark_attestation::evidence::appraise::VerifyOptions {
            nonce: Some(hex::decode(&nonce).unwrap()),
            at: bulwark_attestation::VerificationTime::now(),
        },
    )
    .unwrap();
    assert!(a.is_ok(), "{}", a.to_text());
    for check in [
        "tpm-quote-signature",
        "tpm-ak-enrolled",
        "tpm-event-log-replay",
        "key-protection",
    ] {
        assert!(
            a.check(check)
                .is_some_and(|c| c.result == bulwark_attestation::checks::Outcome::Passed),
            "{check}: {}",
            a.to_text()
        );
    }

    // Stop through the adopted handle.
    let (s, v) = n.call("POST", "/vms/v/stop", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "stopped", "{v}");
    assert!(
        !Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap()
                .is_empty()
    );

    // Started again, then its VMM is killed from outside: noticed, VM failed.
    let (s, v) = n.call("POST", "/vms/v/start", None);
    assert_eq!(s, 200, "{v}");
    let pid2 = v["pid"].as_i64().unwrap();
    assert_ne!(pid2, pid);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid2 as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let v = wait_vm_state(&n, "v", "failed");
    assert!(
        v["reason"].as_str().unwrap().contains("killed by a signal"),
        "{v}"
    );
    assert_eq!(n.call("DELETE", "/vms/v", None).0, 204);
    assert!(!n.path("state/vms/v").exists());
    n.check_invariants();
}
