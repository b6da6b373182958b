//! A node for the tests: a fake sysfs tree, a state directory, a config, and the real
//! `bulwarkd` binary (built with the `test-hooks` feature for this crate's tests).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulwark_agent::client;
use bulwark_agent::inventory::fake;
use serde_json::{json, Value};

pub const GPU_A: &str = "0000:01:00.0";
/// GPU_A's audio function, same IOMMU group.
pub const GPU_A_AUDIO: &str = "0000:01:00.1";
pub const GPU_B: &str = "0000:02:00.0";
/// A GPU whose scrub the software sanitizer fails (when the config says so).
pub const GPU_BAD: &str = "0000:03:00.0";
/// A GPU whose group holds an NVMe drive (enrolment is refused).
pub const GPU_NVME: &str = "0000:04:00.0";
/// A GPU still bound to the host's nvidia driver (the fake kernel never rebinds).
pub const GPU_HOST: &str = "0000:05:00.0";

pub struct Node {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub config: Value,
}

impl Node {
    /// A node with the standard fake tree and `config` merged over the test defaults.
    pub fn new(config: Value) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        fake::add(&sys, GPU_A, 0x10de, 0x2330, 0x030200, 1, Some("vfio-pci"));
        fake::add(
            &sys,
            GPU_A_AUDIO,
            0x10de,
            0x22e8,
            0x040300,
            1,
            Some("vfio-pci"),
        );
        fake::add(&sys, GPU_B, 0x10de, 0x2330, 0x030200, 2, Some("vfio-pci"));
        fake::add(&sys, GPU_BAD, 0x1002, 0x74a1, 0x030200, 3, Some("vfio-pci"));
        fake::add(
            &sys,
            GPU_NVME,
            0x10de,
            0x2330,
            0x030200,
            4,
            Some("vfio-pci"),
        );
        fake::add(
            &sys,
            "0000:04:00.1",
            0x144d,
            0xa808,
            0x010802,
            4,
            Some("nvme"),
        );
        fake::add(&sys, GPU_HOST, 0x10de, 0x2330, 0x030200, 5, Some("nvidia"));
        fake::add(
            &sys,
            "0000:06:00.0",
            0x8086,
            0x1572,
            0x020000,
            6,
            Some("i40e"),
        );
        fake::set_serial(&sys, GPU_A, 0x1122_3344_5566_7788);
        let mut cfg = json!({
            "sanitizer": { "kind": "software_test", "fail": [GPU_BAD] },
            "scrub_step_timeout_ms": 10000,
        });
        if let (Some(base), Some(over)) = (cfg.as_object_mut(), config.as_object()) {
            for (k, v) in over {
                base.insert(k.clone(), v.clone());
            }
        }
        let node = Node {
            dir,
            child: None,
            config: cfg,
        };
        node.write_config();
        node
    }

    pub fn write_config(&self) {
        std::fs::write(self.path("config.json"), self.config.to_string()).unwrap();
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn sock(&self) -> PathBuf {
        self.path("run/bulwarkd.sock")
    }

    /// Starts bulwarkd (with `env`), returning once /health answers 200, or `Err`
    /// with its stderr if it exited first.
    pub fn try_start(&mut self, env: &[(&str, &str)]) -> Result<(), String> {
        assert!(self.child.is_none(), "bulwarkd already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("bulwarkd.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bulwarkd"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--api-sock")
            .arg(self.sock())
            .arg("--config")
            .arg(self.path("config.json"))
            .arg("--sysfs-root")
            .arg(self.path("sys"))
            .envs(env.iter().copied())
            .env("BULWARK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bulwarkd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "bulwarkd exited ({st}) before it was ready:\n{}",
                    self.log()
                ));
            }
            if let Ok(r) = client::blocking(&self.sock(), "GET", "/health", None) {
                if r.status == 200 {
                    return Ok(());
                }
            }
            assert!(
                Instant::now() < deadline,
                "bulwarkd not ready within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn start(&mut self) {
        self.try_start(&[]).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("bulwarkd.log")).unwrap_or_default()
    }

    /// Whether bulwarkd has died; reaps it.
    pub fn dead(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(c) => match c.try_wait().unwrap() {
                Some(_) => {
                    self.child = None;
                    true
                }
                None => false,
            },
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One request: (status, JSON body), or `Err` on a transport failure.
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let r = client::blocking(&self.sock(), method, path, body.map(|b| b.to_string()))?;
        Ok((r.status, r.json()))
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    pub fn get(&self, path: &str) -> Value {
        let (s, v) = self.call("GET", path, None);
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    pub fn device(&self, addr: &str) -> Value {
        self.get(&format!("/devices/{addr}"))
    }

    /// Waits (bounded) until no device is sanitizing and no scrub runs.
    pub fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = self.get("/node");
            if n["devices_by_state"]["sanitizing"] == 0 && n["scrubs_running"] == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "scrubs did not settle: {n}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Checks the invariants of the issue through the API: none reported by bulwarkd,
    /// no device in two VMs, every available device backed by a passed scrub record
    /// newer than any failed/interrupted one, no scrub left in progress.
    pub fn check_invariants(&self) {
        let n = self.get("/node");
        assert_eq!(n["invariant_violations"], json!([]), "{n}");
        let vms = self.get("/vms");
        let mut held = std::collections::HashMap::new();
        for v in vms.as_array().unwrap() {
            if ["created", "starting", "running"].contains(&v["state"].as_str().unwrap()) {
                for d in v["devices"].as_array().unwrap() {
                    if let Some(other) =
                        held.insert(d.as_str().unwrap().to_string(), v["id"].clone())
                    {
                        panic!("device {d} in VMs {other} and {}", v["id"]);
                    }
                }
            }
        }
        for d in self.get("/devices").as_array().unwrap() {
            let addr = d["address"].as_str().unwrap();
            let recs = self.get(&format!("/devices/{addr}/scrubs"));
            for r in recs.as_array().unwrap() {
                assert_ne!(
                    r["outcome"], "in_progress",
                    "{addr}: scrub left in progress while settled: {r}"
                );
            }
            if d["state"] == "available" {
                let last = d["last_scrub"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{addr} available without scrub: {d}"));
                let rec = recs
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["id"] == last)
                    .unwrap_or_else(|| panic!("{addr}: scrub {last} missing"));
                assert_eq!(rec["outcome"], "passed", "{addr}: {rec}");
                assert_eq!(rec["steps"].as_array().unwrap().len(), 2, "{rec}");
                assert!(
                    rec["steps"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|s| s["ok"] == true),
                    "{rec}"
                );
                // It is the newest record: nothing happened to the device after it.
                assert_eq!(
                    recs.as_array().unwrap().last().unwrap()["id"],
                    last,
                    "{addr}: {recs}"
                );
            }
            if let Some(vm) = d["owner_vm"].as_str() {
                assert_eq!(
                    held.get(addr).and_then(Value::as_str),
                    Some(vm),
                    "{addr}: {d}"
                );
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A signed image for the tests: (bundle path, signer public key PEM), plus a second
/// key that did not sign it.
pub struct Image {
    pub path: PathBuf,
    pub key_pem: String,
    pub other_pem: String,
    pub unsigned: PathBuf,
}

pub fn signed_image(dir: &Path, version: u64) -> Image {
    use bulwark_image::{build, generate_key_pair, sign, BuildSpec, SigningKey};
    let d = dir.join(format!("image-v{version}"));
    std::fs::create_dir_all(&d).unwrap();
    let (key, key_pub, _) = generate_key_pair(&d.join("keys")).unwrap();
    let (_, other_pub, _) = generate_key_pair(&d.join("other")).unwrap();
    let kernel = d.join("kernel");
    std::fs::write(&kernel, vec![0x90u8; 8192]).unwrap();
    let spec = BuildSpec {
        name: "agent-test".into(),
        version,
        created: 0,
        kernel,
        initrd: None,
        cmdline: None,
        config: None,
        rootfs: None,
    };
    let unsigned = d.join("unsigned.bwi");
    build(&spec, &unsigned, &|_| {}).unwrap();
    let path = d.join("tenant.bwi");
    std::fs::copy(&unsigned, &path).unwrap();
    sign(&path, &SigningKey::from_pem_file(&key).unwrap(), &|_| {}).unwrap();
    Image {
        path,
        key_pem: std::fs::read_to_string(key_pub).unwrap(),
        other_pem: std::fs::read_to_string(other_pub).unwrap(),
        unsigned,
    }
}
