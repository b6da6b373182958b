//! Crash safety: the real bulwarkd is killed (SIGKILL, through the `test-hooks`
//! feature's BULWARKD_TEST_CRASH_AT) at every step boundary of enrol, create, start,
//! delete, scrub and release; after a restart the state must be consistent (no VM
//! record lost, no device in two places, no unscrubbed device available, no scrub left
//! in progress) and the same scenario must then run to its normal end.

mod common;

use std::time::{Duration, Instant};

use bulwark_agent::crash::POINTS;
use common::*;
use serde_json::{json, Value};

/// The scenario did not finish because bulwarkd died.
#[derive(Debug)]
struct Crashed;

/// Runs the scenario from wherever the state is, each step only if it is still to
/// be done. Returns Err(Crashed) as soon as bulwarkd is found dead.
struct Scenario<'a> {
    n: &'a mut Node,
    image: &'a Image,
    /// VMs whose create was answered 201: their records must survive any crash.
    created: Vec<String>,
    released: bool,
    gpuless_done: bool,
    unenrolled: bool,
}

impl Scenario<'_> {
    fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), Crashed> {
        match self.n.try_call(method, path, body) {
            Ok(r) => Ok(r),
            Err(_) if self.wait_dead() => Err(Crashed),
            Err(e) => panic!("{method} {path}: {e} while bulwarkd runs\n{}", self.n.log()),
        }
    }

    /// A failed request: is bulwarkd gone (give it a moment to finish dying)?
    fn wait_dead(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.n.dead() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn get(&mut self, path: &str) -> Result<Value, Crashed> {
        let (s, v) = self.call("GET", path, None)?;
        assert_eq!(s, 200, "GET {path}: {v}");
        Ok(v)
    }

    /// Waits for the scrubs to settle, or for bulwarkd to die during one.
    fn settle(&mut self) -> Result<(), Crashed> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = self.get("/node")?;
            if n["devices_by_state"]["sanitizing"] == 0 && n["scrubs_running"] == 0 {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "scrubs did not settle: {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn enroll(&mut self, addr: &str) -> Result<(), Crashed> {
        if self.get(&format!("/devices/{addr}"))?["state"] == "unenrolled" {
            let (s, v) = self.call("POST", &format!("/devices/{addr}/enroll"), None)?;
            assert_eq!(s, 200, "enroll {addr}: {v}");
        }
        self.settle()
    }

    fn run(&mut self) -> Result<(), Crashed> {
        self.enroll(GPU_A)?;
        if self.get("/tenants")?.as_array().unwrap().is_empty() {
            let (s, v) = self.call(
                "POST",
                "/tenants",
                Some(json!({ "id": "a", "signer_keys": [self.image.key_pem] })),
            )?;
            assert_eq!(s, 201, "{v}");
        }
        let vms = self.get("/vms")?;
        let done = self.created.iter().any(|v| v == "v1");
        if vms.as_array().unwrap().is_empty() && !done {
            let (s, v) = self.call("POST", "/vms", Some(json!({ "id": "v1", "tenant": "a", "image": self.image.path, "gpus": { "count": 1 } })))?;
            assert_eq!(s, 201, "{v}");
            self.created.push("v1".into());
        }
        if self
            .get("/vms")?
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["id"] == "v1" && v["state"] == "created")
        {
            // The jailed "VMM" cannot get VFIO here: the start fails, the devices are scrubbed.
            let (s, v) = self.call("POST", "/vms/v1/start", None)?;
            assert_eq!(s, 422, "{v}");
        }
        self.settle()?;
        if self
            .get("/vms")?
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["id"] == "v1")
        {
            // Once the delete is asked for, either outcome of a crash is correct.
            self.created.retain(|v| v != "v1");
            let (s, v) = self.call("DELETE", "/vms/v1", None)?;
            assert_eq!(s, 204, "{v}");
        }
        self.settle()?;
        // A GPU-less VM whose jailed "VMM" (/bin/false) is spawned and exits.
        if !self.gpuless_done {
            if !self
                .get("/vms")?
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["id"] == "v2")
            {
                let (s, v) = self.call(
                    "POST",
                    "/vms",
                    Some(json!({ "id": "v2", "tenant": "a", "image": self.image.path })),
                )?;
                assert_eq!(s, 201, "{v}");
                self.created.push("v2".into());
            }
            if self.get("/vms/v2")?["state"] == "created" {
                let (s, v) = self.call("POST", "/vms/v2/start", None)?;
                assert_eq!(s, 422, "{v}");
            }
            self.created.retain(|v| v != "v2");
            let (s, v) = self.call("DELETE", "/vms/v2", None)?;
            assert_eq!(s, 204, "{v}");
            self.gpuless_done = true;
        }
        self.enroll(GPU_BAD)?;
        if !self.released {
            let (s, v) = self.call("POST", &format!("/devices/{GPU_BAD}/release"), None)?;
            assert_eq!(s, 200, "{v}");
            self.released = true;
        }
        self.settle()?;
        if !self.unenrolled {
            self.enroll(GPU_B)?;
            let (s, v) = self.call("POST", &format!("/devices/{GPU_B}/unenroll"), None)?;
            // The fake kernel never lets go of vfio-pci: the database has unenrolled
            // the device, and the answer says why sysfs did not follow.
            assert_eq!(s, 422, "{v}");
            self.unenrolled = true;
        }
        Ok(())
    }
}

fn check_after_restart(n: &Node, created: &[String]) {
    n.check_invariants();
    let vms = n.get("/vms");
    for id in created {
        assert!(
            vms.as_array().unwrap().iter().any(|v| &v["id"] == id),
            "VM {id} lost: {vms}"
        );
    }
    // Nothing is stuck: no VM is left starting or running without a VMM.
    for v in vms.as_array().unwrap() {
        assert!(
            !["starting", "running"].contains(&v["state"].as_str().unwrap()),
            "{v}"
        );
    }
}

fn final_state(n: &Node) {
    n.check_invariants();
    assert_eq!(n.get("/vms"), json!([]));
    for a in [GPU_A, GPU_A_AUDIO] {
        assert_eq!(n.device(a)["state"], "available", "{a}");
    }
    assert_eq!(n.device(GPU_BAD)["state"], "quarantined");
    let b = n.device(GPU_B);
    assert_eq!(
        (&b["state"], &b["last_scrub"]),
        (&json!("unenrolled"), &Value::Null),
        "{b}"
    );
    // Enrolment scrub, the scrub after the failed start: at least these two passed.
    let recs = n.get(&format!("/devices/{GPU_A}/scrubs"));
    assert!(
        recs.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["outcome"] == "passed")
            .count()
            >= 2,
        "{recs}"
    );
}

fn crash_at(point: &str) {
    let mut n =
        Node::new(json!({ "jail": { "uid_base": 70000, "gid": 70000 }, "vmm_bin": "/bin/false" }));
    let image = signed_image(n.dir.path(), 1);
    n.try_start(&[("BULWARKD_TEST_CRASH_AT", point)]).unwrap();
    let mut s = Scenario {
        n: &mut n,
        image: &image,
        created: Vec::new(),
        released: false,
        gpuless_done: false,
        unenrolled: false,
    };
    let first = s.run();
    let (created, released, gpuless_done, unenrolled) =
        (s.created.clone(), s.released, s.gpuless_done, s.unenrolled);
    assert!(first.is_err(), "crash point {point} was never reached");
    assert!(n.dead());
    assert!(
        n.log().contains(&format!("test hook: SIGKILL at {point}")),
        "{}",
        n.log()
    );
    // Restart without the hook: reconcile, let interrupted scrubs finish, check.
    n.start();
    n.settle();
    check_after_restart(&n, &created);
    // An interrupted scrub is closed as such and the device scrubbed from the start.
    if point.starts_with("scrub:") && point != "scrub:committed" {
        let any_interrupted = n.get("/devices").as_array().unwrap().iter().any(|d| {
            n.get(&format!(
                "/devices/{}/scrubs",
                d["address"].as_str().unwrap()
            ))
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["outcome"] == "interrupted")
        });
        assert!(
            any_interrupted,
            "{point}: no scrub record marked interrupted"
        );
    }
    // And the scenario goes on to its normal end.
    let mut s = Scenario {
        n: &mut n,
        image: &image,
        created,
        released,
        gpuless_done,
        unenrolled,
    };
    s.run()
        .unwrap_or_else(|_| panic!("bulwarkd died after the restart"));
    final_state(&n);
}

#[test]
fn every_crash_point_is_recovered() {
    let mut failures = Vec::new();
    for p in POINTS {
        let r = std::panic::catch_unwind(|| crash_at(p));
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{p}: {msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} crash points failed:\n{}",
        failures.len(),
        POINTS.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_scenario_runs_to_its_end_without_a_crash() {
    let mut n =
        Node::new(json!({ "jail": { "uid_base": 70000, "gid": 70000 }, "vmm_bin": "/bin/false" }));
    let image = signed_image(n.dir.path(), 1);
    n.start();
    let mut s = Scenario {
        n: &mut n,
        image: &image,
        created: Vec::new(),
        released: false,
        gpuless_done: false,
        unenrolled: false,
    };
    s.run().unwrap();
    final_state(&n);
    // The same state after a plain SIGKILL and restart.
    let before = (
        n.get("/devices"),
        n.get("/tenants"),
        n.get("/node")["owner"].clone(),
    );
    n.kill();
    n.start();
    n.settle();
    assert_eq!(
        (
            n.get("/devices"),
            n.get("/tenants"),
            n.get("/node")["owner"].clone()
        ),
        before
    );
}
