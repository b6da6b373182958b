//! The REST API over a Unix socket: bad input gets a 4xx naming the field, and the VM
//! life cycle (configure, start, describe, pause, resume, metrics, stop) works.

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

struct Api {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Api {
    fn spawn() -> Api {
        Api::spawn_with_env(&[])
    }

    fn spawn_with_env(env: &[(&str, &Path)]) -> Api {
        let dir = scratch();
        let sock = dir.path().join("api.sock");
        let child = Command::new(vmm_bin())
            .arg("--api-sock")
            .arg(&sock)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bulwark-vmm");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "API socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        Api {
            child,
            sock,
            _dir: dir,
        }
    }

    /// One request; returns (status, body).
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http_body(&self.sock, method, path, body)
    }

    fn json(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (s, b) = self.call(method, path, body);
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    fn wait_exit(mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("bulwark-vmm did not exit after stop");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn error_field(v: &Value) -> &str {
    v["error"]["field"].as_str().unwrap_or("<none>")
}

#[test]
fn bad_requests_get_4xx_naming_the_field_and_never_kill_the_vmm() {
    let api = Api::spawn();
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("PUT", "/machine-config", "{".into(), 400, "machine"),
        (
            "PUT",
            "/devices",
            r#"{"block":[{"id":"a b","path":"/x"}]}"#.into(),
            400,
            "devices.block[0].id",
        ),
        (
            "PUT",
            "/devices",
            r#"{"block":[{"id":"a","path":"/x","bundle_rootfs":true}]}"#.into(),
            400,
            "devices.block[0]",
        ),
        (
            "PUT",
            "/devices",
            r#"{"vsock":{"guest_cid":1,"uds_path":"/x"}}"#.into(),
            400,
            "devices.vsock.guest_cid",
        ),
        (
            "PUT",
            "/devices",
            r#"{"rng":"yes"}"#.into(),
            400,
            "devices.rng",
        ),
        (
            "PUT",
            "/devices",
            r#"{"virtio_transport":"virtio-ccw"}"#.into(),
            400,
            "devices.virtio_transport",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpus":0,"mem_mib":64}"#.into(),
            400,
            "machine.vcpus",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpus":"two","mem_mib":64}"#.into(),
            400,
            "machine.vcpus",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpus":1,"mem_mib":63}"#.into(),
            400,
            "machine.mem_mib",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpus":1,"mem_mib":64,"turbo":true}"#.into(),
            400,
            "machine.turbo",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpus":1,"mem_mib":18446744073709551615}"#.into(),
            400,
            "machine.mem_mib",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpus":1,"mem_mib":64,"mmio64_gib":99999999}"#.into(),
            400,
            "machine.mmio64_gib",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kind":"bundle","path":"/x","trusted_keys":[]}"#.into(),
            400,
            "boot_source.trusted_keys",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kind":"floppy"}"#.into(),
            400,
            "boot_source.kind",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kind":"raw","image":"/x","load_addr":1048576,"entry":{"mode":"protected","rip":1}}"#
                .into(),
            400,
            "boot_source.entry.mode",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kind":"bundle","path":"/x","trusted_keys":["/k"],"threshold":-1}"#.into(),
            400,
            "boot_source.threshold",
        ),
        (
            "PUT",
            "/devices",
            r#"{"serial":{"file":7}}"#.into(),
            400,
            "devices.serial.file",
        ),
        (
            "PUT",
            "/devices",
            r#"{"vfio":[{"bdf":"41:00.0"}]}"#.into(),
            400,
            "devices.vfio[0].bdf",
        ),
        ("PUT", "/vm/config", "[]".into(), 400, "config"),
        ("POST", "/vm/start", String::new(), 400, "machine"),
        ("POST", "/vm/pause", String::new(), 409, "state"),
        ("GET", "/no/such/thing", String::new(), 404, "path"),
        ("DELETE", "/vm", String::new(), 405, "method"),
        (
            "PUT",
            "/machine-config",
            "\u{0}\u{ff}garbage".into(),
            400,
            "machine",
        ),
    ];
    for (method, path, body, status, field) in cases {
        let (s, v) = api.json(method, path, &body);
        assert_eq!(s, status, "{method} {path} {body:?}: {v}");
        assert_eq!(error_field(&v), field, "{method} {path} {body:?}: {v}");
    }
    // A boot source that names a missing file is refused at start, naming the field.
    assert_eq!(
        api.call("PUT", "/machine-config", r#"{"vcpus":1,"mem_mib":64}"#)
            .0,
        204
    );
    let missing = json!({"kind":"raw","image":"/nonexistent/guest.bin","load_addr":1048576,
        "entry":{"mode":"long64","rip":1048576}});
    assert_eq!(api.call("PUT", "/boot-source", &missing.to_string()).0, 204);
    let (s, v) = api.json("POST", "/vm/start", "");
    assert_eq!(s, 400, "{v}");
    assert_eq!(error_field(&v), "boot_source");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("boot_source.image"),
        "{v}"
    );
    // Still alive and describing itself.
    let (s, v) = api.json("GET", "/vm", "");
    assert_eq!((s, v["state"].as_str()), (200, Some("not_started")));
}

#[test]
fn life_cycle_start_describe_pause_resume_metrics_stop() {
    let api = Api::spawn();
    // vCPU 0 of the smp guest waits for two vCPUs to check in; with one it spins until stopped.
    let mut cfg = raw_config("smp", 1, 2);
    cfg["devices"]["serial"] = json!("sink");
    let predicted = measure(cfg.clone());
    assert_eq!(api.call("PUT", "/vm/config", &cfg.to_string()).0, 204);
    assert_eq!(api.call("POST", "/vm/start", "").0, 204);
    let (s, v) = api.json("GET", "/vm", "");
    assert_eq!(s, 200);
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["measurement"]["value"], predicted.as_str());
    assert_eq!(v["signed"], false);
    assert_eq!(v["boot_source"]["kind"], "unsigned");
    assert_eq!(v["memory"]["guest_ram_bytes"], 64u64 << 20);
    assert_eq!(v["vcpus"].as_array().unwrap().len(), 1);
    assert_eq!(v["acpi_pm_ignored"], 0, "{v}");
    // Configuration is frozen once built.
    let (s, v) = api.json("PUT", "/machine-config", r#"{"vcpus":1,"mem_mib":64}"#);
    assert_eq!((s, error_field(&v)), (409, "state"));
    assert_eq!(api.call("POST", "/vm/start", "").0, 409);

    assert_eq!(api.call("POST", "/vm/pause", "").0, 204);
    assert_eq!(api.json("GET", "/vm", "").1["state"], "paused");
    assert_eq!(api.call("POST", "/vm/pause", "").0, 409);
    assert_eq!(api.call("POST", "/vm/resume", "").0, 204);
    assert_eq!(api.json("GET", "/vm", "").1["state"], "running");

    // Every thread of the VMM (API, watcher, vCPU) runs under a seccomp filter.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", api.child.id())).unwrap();
    let mut n = 0;
    for t in tasks {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let name = status.lines().next().unwrap_or_default().to_string();
        assert!(
            status.contains("Seccomp:\t2"),
            "{name} runs without a seccomp filter"
        );
        n += 1;
    }
    assert!(n >= 3, "expected API, watcher and vCPU threads, saw {n}");

    let (s, metrics) = api.call("GET", "/metrics", "");
    assert_eq!(s, 200);
    assert!(metrics.contains("bulwark_vm_running 1"), "{metrics}");
    assert!(
        metrics.contains("bulwark_vcpu_exits_total{vcpu=\"0\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bulwark_guest_memory_bytes 67108864"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nbulwark_acpi_pm_ignored_total 0\n"),
        "{metrics}"
    );

    assert_eq!(api.call("POST", "/vm/stop", "").0, 204);
    assert_eq!(api.wait_exit(), 0);
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn sigterm_stops_a_running_vm_cleanly_and_removes_the_socket() {
    // Before any VM exists.
    let api = Api::spawn();
    sigterm(api.child.id());
    let sock = api.sock.clone();
    assert_eq!(api.wait_exit(), 0);
    assert!(!sock.exists(), "the API socket is removed");

    // With a running VM (vCPU 0 of the smp guest spins waiting for a second vCPU).
    let api = Api::spawn();
    let mut cfg = raw_config("smp", 1, 2);
    cfg["devices"]["serial"] = json!("sink");
    assert_eq!(api.call("PUT", "/vm/config", &cfg.to_string()).0, 204);
    assert_eq!(api.call("POST", "/vm/start", "").0, 204);
    assert_eq!(api.json("GET", "/vm", "").1["state"], "running");
    sigterm(api.child.id());
    assert_eq!(api.wait_exit(), 0);
}

#[test]
fn a_slow_start_leaves_the_api_and_sigterm_responsive() {
    // The test hook holds a start (after it took the configuration, before it reads
    // the boot source) while this file exists.
    let hold_dir = scratch();
    let hold = hold_dir.path().join("hold");
    std::fs::write(&hold, b"").unwrap();
    let api = Api::spawn_with_env(&[("BULWARK_VMM_TEST_HOLD_START", hold.as_path())]);
    let mut cfg = raw_config("smp", 1, 2);
    cfg["devices"]["serial"] = json!("sink");
    assert_eq!(api.call("PUT", "/vm/config", &cfg.to_string()).0, 204);
    let sock = api.sock.clone();
    let first = std::thread::spawn(move || http_body(&sock, "POST", "/vm/start", ""));
    // GET /vm answers while the start is held; wait until it reports `starting`.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = api.json("GET", "/vm", "");
        assert_eq!(s, 200);
        if v["state"] == "starting" {
            break;
        }
        assert_eq!(v["state"], "not_started", "{v}");
        assert!(
            Instant::now() < deadline,
            "the start never showed as starting"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A second start, configuration changes, pause are refused while starting.
    let (s, v) = api.json("POST", "/vm/start", "");
    assert_eq!((s, error_field(&v)), (409, "state"), "{v}");
    let (s, v) = api.json("PUT", "/machine-config", r#"{"vcpus":1,"mem_mib":64}"#);
    assert_eq!((s, error_field(&v)), (409, "state"), "{v}");
    assert_eq!(api.call("POST", "/vm/pause", "").0, 409);
    assert_eq!(api.json("GET", "/vm", "").1["state"], "starting");
    let (s, metrics) = api.call("GET", "/metrics", "");
    assert_eq!(s, 200);
    assert!(metrics.contains("bulwark_vm_running 0"), "{metrics}");

    // Release the start: it completes and the VM runs.
    std::fs::remove_file(&hold).unwrap();
    assert_eq!(first.join().unwrap().0, 204);
    assert_eq!(api.json("GET", "/vm", "").1["state"], "running");
    assert_eq!(api.call("POST", "/vm/stop", "").0, 204);
    assert_eq!(api.wait_exit(), 0);

    // SIGTERM during a held start is not blocked by it: the VMM exits cleanly once
    // the start finishes, without running the VM.
    std::fs::write(&hold, b"").unwrap();
    let api = Api::spawn_with_env(&[("BULWARK_VMM_TEST_HOLD_START", hold.as_path())]);
    assert_eq!(api.call("PUT", "/vm/config", &cfg.to_string()).0, 204);
    let sock = api.sock.clone();
    let first = std::thread::spawn(move || http_body(&sock, "POST", "/vm/start", ""));
    while api.json("GET", "/vm", "").1["state"] != "starting" {
        assert!(
            Instant::now() < deadline,
            "the start never showed as starting"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    sigterm(api.child.id());
    // The signal path ran although the start holds on: the server stops listening.
    while UnixStream::connect(&api.sock).is_ok() {
        assert!(
            Instant::now() < deadline,
            "SIGTERM was not acted on during the start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_file(&hold).unwrap();
    let (s, body) = first.join().unwrap();
    assert_eq!(s, 409, "{body}");
    assert_eq!(api.wait_exit(), 0);
}
