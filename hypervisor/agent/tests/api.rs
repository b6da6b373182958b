//! bulwarkd end to end through its API, on a fake sysfs tree with the software test
//! sanitizer: inventory, enrolment, scrubs, quarantine, tenancy, exclusivity, bad
//! input, VMM start failures, peer-credential authorization, bulwarkctl.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Command;

fn enroll_and_settle(n: &Node, addr: &str) -> Value {
    let (s, v) = n.call("POST", &format!("/devices/{addr}/enroll"), None);
    assert_eq!(s, 200, "{v}");
    n.settle();
    n.device(addr)
}

fn tenant(n: &Node, id: &str, key: &str) {
    let (s, v) = n.call(
        "POST",
        "/tenants",
        Some(json!({ "id": id, "signer_keys": [key], "min_version": 1 })),
    );
    assert_eq!(s, 201, "{v}");
}

#[test]
fn inventory_lists_accelerators_with_groups_numa_link_and_serial() {
    let mut n = Node::new(json!({}));
    n.start();
    let devs = n.get("/devices");
    let addrs: Vec<&str> = devs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["address"].as_str().unwrap())
        .collect();
    // GPUs only: not the audio function, the NVMe drive or the NIC.
    assert_eq!(addrs, [GPU_A, GPU_B, GPU_BAD, GPU_NVME, GPU_HOST]);
    let a = n.device(GPU_A);
    assert_eq!(a["state"], "unenrolled");
    assert_eq!(a["id"], "10de:2330");
    assert_eq!(a["kind"], "gpu");
    assert_eq!(a["iommu_group"], 1);
    assert_eq!(a["group_members"], json!([GPU_A_AUDIO]));
    assert_eq!(a["numa_node"], 1);
    assert_eq!(a["link"], "32.0 GT/s PCIe x16");
    assert_eq!(a["serial"], "11-22-33-44-55-66-77-88");
    assert_eq!(n.get("/node")["schema_version"], 2);
    // A device that appears later is found by a rescan.
    bulwark_agent::inventory::fake::add(
        &n.path("sys"),
        "0000:07:00.0",
        0x10de,
        0x22a3,
        0x068000,
        7,
        None,
    );
    let (s, v) = n.call("POST", "/devices/rescan", None);
    assert_eq!((s, &v["devices"]), (200, &json!(6)), "{v}");
    assert_eq!(n.device("0000:07:00.0")["kind"], "nvswitch");
}

#[test]
fn enrolment_scrubs_the_whole_group_before_it_is_available() {
    let mut n = Node::new(json!({ "sanitizer": { "kind": "software_test", "step_ms": 50 } }));
    n.start();
    let (s, v) = n.call("POST", &format!("/devices/{GPU_A}/enroll"), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "sanitizing");
    n.settle();
    for addr in [GPU_A, GPU_A_AUDIO] {
        let d = n.device(addr);
        assert_eq!(d["state"], "available", "{d}");
        let recs = n.get(&format!("/devices/{addr}/scrubs"));
        let r = &recs[0];
        assert_eq!(r["outcome"], "passed", "{r}");
        let steps: Vec<&str> = r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap())
            .collect();
        assert_eq!(steps, ["reset", "vendor_scrub"]);
        assert!(
            r["steps"][0]["method"]
                .as_str()
                .unwrap()
                .starts_with("software-test"),
            "{r}"
        );
        assert!(r["finished_at_ms"].as_u64().unwrap() >= r["started_at_ms"].as_u64().unwrap());
    }
    assert_eq!(n.device(GPU_A_AUDIO)["kind"], "group_member");
    // Enrolling again is a conflict.
    let (s, v) = n.call("POST", &format!("/devices/{GPU_A_AUDIO}/enroll"), None);
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (409, Some("state")),
        "{v}"
    );
    // Events tell the story.
    let ev = n.get("/events");
    let whats: Vec<String> = ev
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap().to_string())
        .collect();
    assert!(whats.iter().any(|w| w.starts_with("enrolled")), "{whats:?}");
    assert_eq!(
        whats
            .iter()
            .filter(|w| w.contains("passed: available"))
            .count(),
        2,
        "{whats:?}"
    );
    let last = ev.as_array().unwrap().last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(n.get(&format!("/events?since={last}")), json!([]));
    let r = bulwark_agent::client::blocking(&n.sock(), "GET", "/metrics", None).unwrap();
    assert_eq!(r.status, 200);
    let m = String::from_utf8(r.body).unwrap();
    for line in [
        "bulwarkd_devices{state=\"available\"} 2",
        "bulwarkd_devices{state=\"unenrolled\"} 4",
        "bulwarkd_devices{state=\"sanitizing\"} 0",
        "bulwarkd_vms{state=\"running\"} 0",
        "bulwarkd_node_owned 0",
        "bulwarkd_scrub_duration_seconds_count{outcome=\"passed\"} 2",
        "bulwarkd_api_request_duration_seconds_count{method=\"POST\",route=\"/devices/{addr}/enroll\",status=\"200\"} 1",
    ] {
        assert!(m.contains(line), "{line} missing from:\n{m}");
    }
    // Scrubs of 2 x 50 ms steps: the histogram has them above 0.05 s.
    assert!(
        m.contains("bulwarkd_scrub_duration_seconds_bucket{outcome=\"passed\",le=\"0.05\"} 0"),
        "{m}"
    );
    let node = n.get("/node");
    assert_eq!(
        (node["clean"].as_bool(), node["owner"].is_null()),
        (Some(true), true),
        "{node}"
    );
    n.check_invariants();
}

#[test]
fn groups_that_cannot_be_made_whole_are_refused_with_the_reason() {
    let mut n = Node::new(json!({}));
    n.start();
    let (s, v) = n.call("POST", &format!("/devices/{GPU_NVME}/enroll"), None);
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("0000:04:00.1 is bound to host driver nvme"),
        "{v}"
    );
    let d = n.device(GPU_NVME);
    assert_eq!(d["state"], "unenrolled");
    assert!(
        d["reason"].as_str().unwrap().contains("enrolment refused"),
        "{d}"
    );
    // The driver_override was never written.
    assert_eq!(
        std::fs::read_to_string(n.path("sys/bus/pci/devices/0000:04:00.1/driver_override"))
            .unwrap(),
        "(null)\n"
    );
    // A device that does not end up on vfio-pci: 422, stays unenrolled.
    let (s, v) = n.call("POST", &format!("/devices/{GPU_HOST}/enroll"), None);
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not bind to vfio-pci (driver now: nvidia)"),
        "{v}"
    );
    assert_eq!(
        std::fs::read_to_string(n.path("sys/bus/pci/drivers/nvidia/unbind")).unwrap(),
        GPU_HOST
    );
    assert_eq!(n.device(GPU_HOST)["state"], "unenrolled");
    // Bad and unknown addresses.
    assert_eq!(n.call("POST", "/devices/0000:01:00.9/enroll", None).0, 400);
    assert_eq!(n.call("POST", "/devices/0000:0a:00.0/enroll", None).0, 404);
    n.check_invariants();
}

#[test]
fn a_failed_scrub_quarantines_until_an_operator_release_and_a_passing_scrub() {
    let mut n = Node::new(json!({}));
    n.start();
    let d = enroll_and_settle(&n, GPU_BAD);
    assert_eq!(d["state"], "quarantined", "{d}");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("injected scrub failure"),
        "{d}"
    );
    let recs = n.get(&format!("/devices/{GPU_BAD}/scrubs"));
    assert_eq!(recs[0]["outcome"], "failed");
    assert_eq!(recs[0]["steps"][1]["ok"], false);
    // A quarantined device is not given to anyone.
    let img = signed_image(n.dir.path(), 1);
    tenant(&n, "a", &img.key_pem);
    let (s, _) = n.call("POST", "/vms", Some(json!({ "id": "v", "tenant": "a", "image": img.path, "gpus": { "addresses": [GPU_BAD] } })));
    assert_eq!(s, 409);
    // Release: it is scrubbed again (and fails again here); a restart with a
    // sanitizer that passes releases it for good.
    let (s, v) = n.call("POST", &format!("/devices/{GPU_BAD}/release"), None);
    assert_eq!((s, &v["state"]), (200, &json!("sanitizing")), "{v}");
    n.settle();
    assert_eq!(n.device(GPU_BAD)["state"], "quarantined");
    assert_eq!(
        n.get(&format!("/devices/{GPU_BAD}/scrubs"))
            .as_array()
            .unwrap()
            .len(),
        2
    );
    n.kill();
    n.config["sanitizer"] = json!({ "kind": "software_test" });
    n.write_config();
    n.start();
    assert_eq!(
        n.device(GPU_BAD)["state"],
        "quarantined",
        "a restart alone releases nothing"
    );
    n.call("POST", &format!("/devices/{GPU_BAD}/release"), None);
    n.settle();
    assert_eq!(n.device(GPU_BAD)["state"], "available");
    // Only quarantined devices can be released.
    assert_eq!(
        n.call("POST", &format!("/devices/{GPU_BAD}/release"), None)
            .0,
        409
    );
    n.check_invariants();
}

#[test]
fn a_hung_scrub_is_cut_off_by_the_timeout_and_quarantined() {
    let mut n = Node::new(
        json!({ "sanitizer": { "kind": "software_test", "hang": [GPU_B] }, "scrub_step_timeout_ms": 300 }),
    );
    n.start();
    let d = enroll_and_settle(&n, GPU_B);
    assert_eq!(d["state"], "quarantined", "{d}");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("reset did not finish within 300 ms"),
        "{d}"
    );
    let recs = n.get(&format!("/devices/{GPU_B}/scrubs"));
    assert_eq!(recs[0]["steps"][0]["method"], "timeout");
    // The API still answers while the hung thread sleeps.
    assert_eq!(n.call("GET", "/health", None).0, 200);
    // Released while the hung step still runs: nothing on its group is touched, the
    // scrub fails at once saying why, and the device stays quarantined.
    assert_eq!(
        n.call("POST", &format!("/devices/{GPU_B}/release"), None).0,
        200
    );
    n.settle();
    let d = n.device(GPU_B);
    assert_eq!(d["state"], "quarantined", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("a scrub step on bus 0000:02 timed out")
            && reason.contains("has not returned"),
        "{d}"
    );
    let recs = n.get(&format!("/devices/{GPU_B}/scrubs"));
    let last = recs.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["steps"][0]["method"], "not-run", "{recs}");
    n.check_invariants();
}

#[test]
fn tenancy_and_exclusivity_conflicts_change_nothing() {
    let mut n = Node::new(json!({}));
    n.start();
    enroll_and_settle(&n, GPU_A);
    enroll_and_settle(&n, GPU_B);
    let img = signed_image(n.dir.path(), 1);
    tenant(&n, "a", &img.key_pem);
    tenant(&n, "b", &img.key_pem);
    let vm = |id: &str, t: &str, gpus: Value| json!({ "id": id, "tenant": t, "image": img.path, "vcpus": 1, "mem_mib": 64, "gpus": gpus });
    let (s, v) = n.call(
        "POST",
        "/vms",
        Some(vm("a1", "a", json!({ "addresses": [GPU_A_AUDIO] }))),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["devices"], json!([GPU_A, GPU_A_AUDIO]), "the whole group");
    assert_eq!(v["state"], "created");
    let before = (n.get("/devices"), n.get("/vms"), n.get("/node"));
    for (body, field) in [
        (vm("a2", "a", json!({ "addresses": [GPU_A] })), "gpus"),
        (vm("a2", "a", json!({ "count": 2 })), "gpus.count"),
        (vm("b1", "b", json!({ "addresses": [GPU_B] })), "tenant"),
        (vm("b1", "b", json!({})), "tenant"),
        (vm("a1", "a", json!({ "addresses": [GPU_B] })), "id"),
    ] {
        let (s, v) = n.call("POST", "/vms", Some(body.clone()));
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (409, Some(field)),
            "{body}: {v}"
        );
    }
    assert_eq!(
        (n.get("/devices"), n.get("/vms"), n.get("/node")),
        before,
        "a refused request changed nothing"
    );
    assert_eq!(n.get("/node")["owner"], "a");
    // Tenant a can have more VMs; tenant a cannot be deleted while it has VMs.
    assert_eq!(
        n.call(
            "POST",
            "/vms",
            Some(vm("a2", "a", json!({ "count": 1, "model": "10de:2330" })))
        )
        .0,
        201
    );
    assert_eq!(n.get("/vms/a2")["devices"], json!([GPU_B]));
    assert_eq!(n.call("DELETE", "/tenants/a", None).0, 409);
    // Never-started VMs give their devices back on delete; then b may have the node.
    assert_eq!(n.call("DELETE", "/vms/a1", None).0, 204);
    assert_eq!(n.call("DELETE", "/vms/a2", None).0, 204);
    assert_eq!(n.call("DELETE", "/vms/a2", None).0, 404);
    assert_eq!(n.device(GPU_A)["state"], "available");
    let (s, v) = n.call("POST", "/vms", Some(vm("b1", "b", json!({ "count": 1 }))));
    assert_eq!(s, 201, "{v}");
    assert_eq!(n.get("/node")["owner"], "b");
    n.check_invariants();
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    let mut n = Node::new(json!({}));
    n.start();
    enroll_and_settle(&n, GPU_A);
    let img = signed_image(n.dir.path(), 1);
    let old = signed_image(n.dir.path(), 0);
    for (body, field) in [
        (json!({ "id": "a" }), "signer_keys"),
        (
            json!({ "id": "a", "signer_keys": ["nope"] }),
            "signer_keys[0]",
        ),
        (json!({ "id": "A!", "signer_keys": [img.key_pem] }), "id"),
        (
            json!({ "id": "a", "signer_keys": [img.key_pem], "extra": 1 }),
            "extra",
        ),
        (
            json!({ "id": "a", "signer_keys": [img.key_pem], "min_version": -1 }),
            "min_version",
        ),
    ] {
        let (s, v) = n.call("POST", "/tenants", Some(body.clone()));
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (400, Some(field)),
            "{body}: {v}"
        );
    }
    let r =
        bulwark_agent::client::blocking(&n.sock(), "POST", "/tenants", Some("{not json".into()))
            .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(n.call("POST", "/tenants", None).1["error"]["field"], "body");
    tenant(&n, "a", &img.key_pem);
    let good = json!({ "id": "v", "tenant": "a", "image": img.path, "gpus": { "count": 1 } });
    let with = |k: &str, val: Value| {
        let mut b = good.clone();
        b[k] = val;
        b
    };
    for (body, status, field) in [
        (
            with("gpus", json!({ "count": 1, "addresses": [GPU_A] })),
            400,
            "gpus",
        ),
        (
            with("gpus", json!({ "addresses": ["zz"] })),
            400,
            "gpus.addresses[0]",
        ),
        (with("gpus", json!({ "count": "one" })), 400, "gpus.count"),
        (with("vcpus", json!(0)), 400, "vcpus"),
        (with("mem_mib", json!(7)), 400, "mem_mib"),
        (with("scratch_mib", json!(2_000_000)), 400, "scratch_mib"),
        (with("scratch_mib", json!(-1)), 400, "scratch_mib"),
        (with("image", json!("relative.bwi")), 400, "image"),
        (with("bogus", json!(1)), 400, "bogus"),
        (with("tenant", json!("nobody")), 404, "tenant"),
        (with("image", json!(img.unsigned)), 422, "image"),
        (with("image", json!(old.path)), 422, "image"),
        (with("image", json!("/nonexistent.bwi")), 422, "image"),
    ] {
        let (s, v) = n.call("POST", "/vms", Some(body.clone()));
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (status, Some(field)),
            "{body}: {v}"
        );
    }
    // An image signed by a key the tenant does not trust never gets a VM record.
    tenant(&n, "b", &img.other_pem);
    let (s, v) = n.call(
        "POST",
        "/vms",
        Some(json!({ "id": "w", "tenant": "b", "image": img.path })),
    );
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failed verification for tenant b"),
        "{v}"
    );
    assert_eq!(n.get("/vms"), json!([]));
    assert_eq!(n.device(GPU_A)["state"], "available");
    // Unknown endpoints, methods, nonces.
    assert_eq!(n.call("GET", "/nope", None).1["error"]["field"], "path");
    assert_eq!(n.call("PUT", "/vms", None).1["error"]["field"], "method");
    assert_eq!(
        n.call("POST", "/vms/v/attest", Some(json!({ "nonce": "xyz" })))
            .1["error"]["field"],
        "nonce"
    );
    assert_eq!(
        n.call(
            "POST",
            "/vms/v/attest",
            Some(json!({ "nonce": "00".repeat(32) }))
        )
        .0,
        404
    );
    // Host requests to a guest: the nonce and reason checked, an unknown VM 404.
    for (path, body, status, field) in [
        (
            "/vms/v/guest/challenge",
            json!({ "nonce": "00" }),
            400,
            "nonce",
        ),
        (
            "/vms/v/guest/challenge",
            json!({ "nonce": "zz".repeat(16) }),
            400,
            "nonce",
        ),
        (
            "/vms/v/guest/challenge",
            json!({ "nonse": "00" }),
            400,
            "nonse",
        ),
        (
            "/vms/v/guest/shutdown",
            json!({ "reason": "x".repeat(5000) }),
            400,
            "reason",
        ),
        (
            "/vms/v/guest/challenge",
            json!({ "nonce": "00".repeat(16) }),
            404,
            "id",
        ),
        ("/vms/v/guest/ping", Value::Null, 404, "id"),
        ("/vms/v/guest/shutdown", json!({}), 404, "id"),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = n.call("POST", path, body.clone());
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (status, Some(field)),
            "{path} {body:?}: {v}"
        );
    }
}

#[test]
fn a_vmm_that_will_not_start_fails_the_vm_and_its_devices_are_scrubbed() {
    let mut n = Node::new(json!({}));
    n.start();
    enroll_and_settle(&n, GPU_A);
    let img = signed_image(n.dir.path(), 1);
    tenant(&n, "a", &img.key_pem);
    assert_eq!(
        n.call(
            "POST",
            "/vms",
            Some(json!({ "id": "v", "tenant": "a", "image": img.path, "gpus": { "count": 1 } }))
        )
        .0,
        201
    );
    // No jail configured: refused before anything changes.
    let (s, v) = n.call("POST", "/vms/v/start", None);
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (422, Some("jail")),
        "{v}"
    );
    assert_eq!(n.get("/vms/v")["state"], "created");
    assert_eq!(n.device(GPU_A)["state"], "assigned");
    // With a jail: the VMM's uid needs the VFIO group, and this machine has no VFIO.
    // The VM fails with the reason; its devices (which a VMM could have touched) are
    // scrubbed before reuse.
    n.kill();
    n.config["jail"] = json!({ "uid_base": 70000, "gid": 70000 });
    n.config["vmm_bin"] = json!("/bin/false");
    n.write_config();
    n.start();
    let (s, v) = n.call("POST", "/vms/v/start", None);
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("VFIO is not available on this machine for group 1"),
        "{v}"
    );
    let vm = n.get("/vms/v");
    assert_eq!(vm["state"], "failed", "{vm}");
    assert!(
        vm["reason"]
            .as_str()
            .unwrap()
            .starts_with("VMM did not start"),
        "{vm}"
    );
    assert_eq!(vm["jail"]["uid"], 70000);
    assert!(
        vm["jail"]["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_str().unwrap().starts_with("cgroup: none")),
        "{vm}"
    );
    n.settle();
    let recs = n.get(&format!("/devices/{GPU_A}/scrubs"));
    assert_eq!(
        recs.as_array().unwrap().len(),
        2,
        "scrubbed at enrolment and after the failed start"
    );
    assert_eq!(n.device(GPU_A)["state"], "available");
    // A GPU-less VM whose "VMM" (/bin/false) exits at once, jailed: the VM fails with that reason.
    assert_eq!(
        n.call(
            "POST",
            "/vms",
            Some(json!({ "id": "g", "tenant": "a", "image": img.path }))
        )
        .0,
        201
    );
    let (s, v) = n.call("POST", "/vms/g/start", None);
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the VMM exited before its API socket appeared (exit status: 1)"),
        "{v}"
    );
    assert_eq!(n.get("/vms/g")["state"], "failed");
    assert_eq!(n.call("DELETE", "/vms/g", None).0, 204);
    // A failed VM can be started again (and fails again), or deleted.
    assert_eq!(n.call("POST", "/vms/v/start", None).0, 422);
    n.settle();
    assert_eq!(n.call("POST", "/vms/v/stop", None).0, 409);
    assert_eq!(n.call("DELETE", "/vms/v", None).0, 204);
    n.check_invariants();
    // A cgroup parent that is not cgroup v2 with the controllers: a clear error.
    n.kill();
    n.config["jail"]["cgroup_parent"] = json!(n.path("not-a-cgroup"));
    n.write_config();
    n.start();
    n.call(
        "POST",
        "/vms",
        Some(json!({ "id": "v2", "tenant": "a", "image": img.path })),
    );
    let (s, v) = n.call("POST", "/vms/v2/start", None);
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not a cgroup v2 directory"),
        "{v}"
    );
    assert_eq!(n.get("/vms/v2")["state"], "failed");
}

#[test]
fn only_root_and_the_operator_group_may_use_the_socket() {
    let mut n = Node::new(json!({ "operator_gid": 4242 }));
    n.start();
    // Let anyone connect, so that SO_PEERCRED (not the file mode) decides.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(n.sock(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(n.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(n.path("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ctl = |uid: u32, gid: u32| {
        use std::os::unix::process::CommandExt;
        Command::new(env!("CARGO_BIN_EXE_bulwarkctl"))
            .arg("--api-sock")
            .arg(n.sock())
            .args(["node", "show"])
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    };
    let out = ctl(65534, 65534);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused (403)") && err.contains("root or the operator group only"),
        "{err}"
    );
    let out = ctl(65534, 4242);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("schema_version: 2"));
}

#[test]
fn bulwarkctl_drives_the_agent_with_text_and_json() {
    let mut n = Node::new(json!({ "sanitizer": { "kind": "software_test", "step_ms": 100 } }));
    n.start();
    let img = signed_image(n.dir.path(), 1);
    let key = n.path("key.pem");
    std::fs::write(&key, &img.key_pem).unwrap();
    let sock = n.sock();
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bulwarkctl"))
            .arg("--api-sock")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (c, out, _) = ctl(&["devices", "list"]);
    assert_eq!(c, 0);
    assert!(out.lines().next().unwrap().starts_with("ADDRESS"), "{out}");
    assert!(out.contains(GPU_A) && out.contains("unenrolled"), "{out}");
    let (c, out, err) = ctl(&["devices", "enroll", GPU_A, "--wait"]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("state: available"), "{out}");
    assert!(err.contains("available after"), "progress on stderr: {err}");
    let (c, _, err) = ctl(&[
        "tenants",
        "create",
        "a",
        "--key",
        key.to_str().unwrap(),
        "--min-version",
        "1",
    ]);
    assert_eq!(c, 0, "{err}");
    let (c, out, err) = ctl(&[
        "--json",
        "vms",
        "create",
        "v",
        "--tenant",
        "a",
        "--image",
        img.path.to_str().unwrap(),
        "--gpus",
        "1",
        "--port",
        "7000:18123",
        "--scratch-mib",
        "16",
    ]);
    assert_eq!(c, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["devices"], json!([GPU_A, GPU_A_AUDIO]));
    assert_eq!(v["ports"], json!([{ "vsock": 7000, "tcp": 18123 }]));
    assert_eq!(v["scratch_mib"], 16);
    let (c, _, err) = ctl(&[
        "vms", "create", "x", "--tenant", "a", "--image", "/x", "--port", "7000",
    ]);
    assert_eq!(c, 2);
    assert!(err.contains("expected VSOCK:TCP"), "{err}");
    let (c, _, err) = ctl(&[
        "vms",
        "create",
        "w",
        "--tenant",
        "a",
        "--image",
        img.path.to_str().unwrap(),
        "--gpu",
        GPU_A,
    ]);
    assert_eq!(c, 1);
    assert!(err.contains("refused (409)"), "{err}");
    let (c, _, err) = ctl(&[
        "vms",
        "attest",
        "v",
        "--nonce",
        "zz",
        "--out",
        n.path("ev.json").to_str().unwrap(),
    ]);
    assert_eq!(c, 1);
    assert!(err.contains("nonce"), "{err}");
    assert!(!n.path("ev.json").exists());
    let (c, out, _) = ctl(&["vms", "list"]);
    assert_eq!(c, 0);
    assert!(out.contains("created"), "{out}");
    let (c, _, _) = ctl(&["vms", "delete", "v"]);
    assert_eq!(c, 0);
    let (c, out, _) = ctl(&["--json", "devices", "scrubs", GPU_A]);
    assert_eq!(c, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()[0]["outcome"],
        "passed"
    );
    let (c, out, _) = ctl(&["node", "events"]);
    assert_eq!(c, 0);
    assert!(out.contains("vm v: deleted"), "{out}");
    // No daemon: a transport error, exit 2.
    n.kill();
    let (c, _, err) = ctl(&["node", "show"]);
    assert_eq!(c, 2);
    assert!(err.contains("connecting to"), "{err}");
}

#[test]
fn a_second_bulwarkd_on_the_same_socket_or_state_is_refused() {
    let mut n = Node::new(json!({}));
    n.start();
    /// bulwarkd with these arguments must exit 1 saying `why`.
    fn refused(args: &[&std::ffi::OsStr], why: &str) {
        let out = Command::new(env!("CARGO_BIN_EXE_bulwarkd"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(why), "{err}");
    }
    let (state, state2, sys) = (n.path("state"), n.path("state2"), n.path("sys"));
    let (sock, other) = (n.sock(), n.path("other.sock"));
    refused(
        &[
            "--state-dir".as_ref(),
            state2.as_os_str(),
            "--api-sock".as_ref(),
            sock.as_os_str(),
            "--sysfs-root".as_ref(),
            sys.as_os_str(),
        ],
        "another bulwarkd is running",
    );
    refused(
        &[
            "--state-dir".as_ref(),
            state.as_os_str(),
            "--api-sock".as_ref(),
            other.as_os_str(),
            "--sysfs-root".as_ref(),
            sys.as_os_str(),
        ],
        "state database",
    );
    // A bad config is named.
    std::fs::write(n.path("bad.json"), r#"{"sanitizer":{"kind":"nope"}}"#).unwrap();
    let (x, y, bad) = (n.path("x"), n.path("y.sock"), n.path("bad.json"));
    refused(
        &[
            "--state-dir".as_ref(),
            x.as_os_str(),
            "--api-sock".as_ref(),
            y.as_os_str(),
            "--config".as_ref(),
            bad.as_os_str(),
        ],
        "sanitizer",
    );
}

#[test]
fn images_are_uploaded_streamed_listed_used_by_name_and_deleted() {
    let mut n = Node::new(json!({ "max_image_bytes": 1 << 20 }));
    n.start();
    let img = signed_image(n.dir.path(), 1);
    let sock = n.sock();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let upload = |name: &str, file: &std::path::Path| {
        rt.block_on(bulwark_agent::client::upload(
            &sock,
            &format!("/images/{name}"),
            file,
            |_, _| {},
        ))
        .unwrap()
    };
    let r = upload("tiny", &img.path);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["manifest_name"], "agent-test");
    assert_eq!(
        r.json()["bytes"],
        std::fs::metadata(&img.path).unwrap().len()
    );
    // Never replaced; not a Bulwark image; too large; bad name: refused, nothing left.
    assert_eq!(upload("tiny", &img.path).status, 409);
    let junk = n.path("junk.bwi");
    std::fs::write(&junk, vec![7u8; 10000]).unwrap();
    let r = upload("junk", &junk);
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (422, Some("body")),
        "{}",
        r.json()
    );
    let big = n.path("big.bwi");
    std::fs::write(&big, vec![0u8; (1 << 20) + 1]).unwrap();
    let r = upload("big", &big);
    assert_eq!(r.status, 400, "{}", r.json());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_image_bytes"));
    assert_eq!(upload("Bad.Name", &img.path).status, 400);
    let files: Vec<String> = std::fs::read_dir(n.path("state/images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        files,
        ["tiny.bwi"],
        "no temporary file or refused image left"
    );
    let list = n.get("/images");
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "tiny");
    assert_eq!(list[0]["manifest_version"], 1);
    // A VM from the uploaded image by name: verified against the tenant's keys.
    tenant(&n, "a", &img.key_pem);
    let (s, v) = n.call(
        "POST",
        "/vms",
        Some(json!({ "id": "v", "tenant": "a", "image": "tiny" })),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["image"],
        n.path("state/images/tiny.bwi").to_str().unwrap()
    );
    let (s, v) = n.call(
        "POST",
        "/vms",
        Some(json!({ "id": "w", "tenant": "a", "image": "nope" })),
    );
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (404, Some("image")),
        "{v}"
    );
    // In use: not deleted.
    assert_eq!(n.call("DELETE", "/images/tiny", None).0, 409);
    assert_eq!(n.call("DELETE", "/vms/v", None).0, 204);
    // bulwarkctl: upload with progress, list, delete.
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bulwarkctl"))
            .arg("--api-sock")
            .arg(n.sock())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (c, out, err) = ctl(&[
        "images",
        "upload",
        img.path.to_str().unwrap(),
        "--name",
        "second",
    ]);
    assert_eq!(c, 0, "{err}");
    assert!(
        err.contains("uploading:") && err.contains("MiB"),
        "progress on stderr: {err}"
    );
    assert!(out.contains("manifest_name: agent-test"), "{out}");
    let (c, out, _) = ctl(&["images", "list"]);
    assert_eq!(c, 0);
    assert!(out.contains("second") && out.contains("tiny"), "{out}");
    assert_eq!(ctl(&["images", "delete", "tiny"]).0, 0);
    assert_eq!(ctl(&["images", "delete", "tiny"]).0, 1);
    // A crash mid-upload leaves a temporary file; the next start removes it.
    std::fs::write(n.path("state/images/.upload-x-1-0"), b"partial").unwrap();
    n.kill();
    n.start();
    let files: Vec<String> = std::fs::read_dir(n.path("state/images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["second.bwi"]);
}

/// The event stream is pushed: `GET /events?since=N&wait_ms=M` waits for the next
/// event when there is none yet (a blocking query), and `bulwarkctl node events
/// --follow` prints events as they happen. A wait above 60 s is refused naming the
/// field; a wait that sees nothing answers an empty list.
#[test]
fn events_are_followed_as_they_happen() {
    let mut n = Node::new(json!({ "sanitizer": { "kind": "software_test", "step_ms": 20 } }));
    n.start();
    let last = n
        .get("/events")
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0);
    let (s, v) = n.call("GET", &format!("/events?since={last}&wait_ms=60001"), None);
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("wait_ms")),
        "{v}"
    );
    assert_eq!(
        n.get(&format!("/events?since={last}&wait_ms=50")),
        json!([])
    );

    // A blocking query issued before anything happens gets the enrolment's event.
    let sock = n.sock();
    let waiter = std::thread::spawn(move || {
        bulwark_agent::client::blocking(
            &sock,
            "GET",
            &format!("/events?since={last}&wait_ms=30000"),
            None,
        )
        .unwrap()
    });
    // bulwarkctl following from the same point, one JSON object per line.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_bulwarkctl"))
        .arg("--api-sock")
        .arg(n.sock())
        .args(["--json", "node", "events", "--follow", "--since"])
        .arg(last.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    enroll_and_settle(&n, GPU_A);

    let answered = waiter.join().unwrap();
    assert_eq!(answered.status, 200);
    let first = answered.json();
    let first = first.as_array().unwrap();
    assert!(
        !first.is_empty(),
        "the blocking query ended without the event"
    );
    assert!(first.iter().all(|e| e["seq"].as_u64().unwrap() > last));
    assert!(
        first
            .iter()
            .any(|e| e["what"].as_str().unwrap().starts_with("enrolled")),
        "{first:?}"
    );

    // The follower prints every event of the enrolment, in order, ending with both
    // functions' scrubs passed (the bound only keeps a broken stream from hanging).
    let mut seen: Vec<Value> = Vec::new();
    while seen
        .iter()
        .filter(|e| {
            e["what"]
                .as_str()
                .unwrap_or("")
                .contains("passed: available")
        })
        .count()
        < 2
    {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("bulwarkctl --follow stopped printing: {seen:?}"));
        seen.push(serde_json::from_str(&line).unwrap());
    }
    follow.kill().unwrap();
    let _ = follow.wait();
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(seqs[0], last + 1);
    let all = n.get(&format!("/events?since={last}"));
    assert_eq!(&all.as_array().unwrap()[..seen.len()], &seen[..]);
}

/// Unenrolment gives a whole group back to the host: refused while a VM holds it
/// (409, naming the VM), then the database unenrols every member and forgets their
/// scrubs before sysfs is written (the override cleared, the unbind and the probe
/// written). The fake kernel never lets go of vfio-pci, so the answer is 422 saying
/// so and the reason is stored; no VM gets an unenrolled device, and enrolling again
/// scrubs it again.
#[test]
fn unenrolment_gives_the_group_back_and_a_new_enrolment_scrubs_again() {
    let mut n = Node::new(json!({ "sanitizer": { "kind": "software_test", "step_ms": 10 } }));
    let img = signed_image(n.dir.path(), 1);
    n.start();
    enroll_and_settle(&n, GPU_A);
    tenant(&n, "a", &img.key_pem);
    let (s, v) = n.call("POST", "/vms", Some(json!({ "id": "v", "tenant": "a", "image": img.path, "gpus": { "addresses": [GPU_A] } })));
    assert_eq!(s, 201, "{v}");
    let (s, v) = n.call("POST", &format!("/devices/{GPU_A_AUDIO}/unenroll"), None);
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (409, Some("state")),
        "{v}"
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("is assigned (VM v)"), "{msg}");
    assert_eq!(n.device(GPU_A)["state"], "assigned");

    let (s, v) = n.call("DELETE", "/vms/v", None);
    assert_eq!(s, 204, "{v}");
    n.settle();
    let (s, v) = n.call("POST", &format!("/devices/{GPU_A}/unenroll"), None);
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (422, Some("address")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("still bound to vfio-pci"),
        "{v}"
    );
    for a in [GPU_A, GPU_A_AUDIO] {
        let d = n.device(a);
        assert_eq!(
            (&d["state"], &d["last_scrub"]),
            (&json!("unenrolled"), &Value::Null),
            "{d}"
        );
        assert!(
            d["reason"]
                .as_str()
                .unwrap()
                .contains("giving it back to the host failed"),
            "{d}"
        );
        let o = std::fs::read_to_string(
            n.path("sys")
                .join("bus/pci/devices")
                .join(a)
                .join("driver_override"),
        )
        .unwrap();
        assert_eq!(o, "\n", "{a}: the override is cleared");
    }
    n.check_invariants();
    let (s, v) = n.call("POST", "/vms", Some(json!({ "id": "w", "tenant": "a", "image": img.path, "gpus": { "addresses": [GPU_A] } })));
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unenrolled"),
        "{v}"
    );
    // Enrolled again: a new scrub before it is available.
    let before = n
        .get(&format!("/devices/{GPU_A}/scrubs"))
        .as_array()
        .unwrap()
        .len();
    let d = enroll_and_settle(&n, GPU_A);
    assert_eq!(d["state"], "available", "{d}");
    let after = n.get(&format!("/devices/{GPU_A}/scrubs"));
    assert_eq!(after.as_array().unwrap().len(), before + 1);
    assert_eq!(
        d["last_scrub"],
        after.as_array().unwrap().last().unwrap()["id"]
    );
    // Unknown devices and bad addresses.
    let (s, _) = n.call("POST", "/devices/0000:0f:00.0/unenroll", None);
    assert_eq!(s, 404);
}

/// A driver whose unbind never returns (the fake kernel's `unbind` attribute of the
/// host driver is a FIFO nobody reads, so the write blocks) is given up on after
/// `driver_change_timeout_ms`: the enrolment answers 500 saying so, the enrolment lock
/// is free for every other group at once, the stuck group refuses further changes
/// (409) until the kernel returns, and accepts them again afterwards.
#[test]
fn a_hanging_unbind_is_given_up_on_and_holds_only_its_own_group() {
    let mut n = Node::new(json!({"driver_change_timeout_ms": 400}));
    let unbind = n.path("sys/bus/pci/drivers/nvidia/unbind");
    std::fs::remove_file(&unbind).unwrap();
    let made = Command::new("mkfifo").arg(&unbind).status().unwrap();
    assert!(made.success());
    n.start();
    let asked = std::time::Instant::now();
    let (s, v) = n.call("POST", &format!("/devices/{GPU_HOST}/enroll"), None);
    assert_eq!(s, 500, "{v}");
    let msg = v["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("IOMMU group 5")
            && msg.contains("did not finish the driver change within 400 ms"),
        "{msg}"
    );
    assert!(asked.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(n.device(GPU_HOST)["state"], "unenrolled");
    // The same group is refused while the write hangs...
    let (s, v) = n.call("POST", &format!("/devices/{GPU_HOST}/enroll"), None);
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has not finished"),
        "{v}"
    );
    // ...and every other group enrols at once.
    let (s, v) = n.call("POST", &format!("/devices/{GPU_B}/enroll"), None);
    assert!(s < 300, "{s} {v}");
    // The kernel returns: the blocked write completes (and its result, the fake
    // kernel's refusal to rebind, goes nowhere); the group takes changes again.
    let got = std::fs::read_to_string(&unbind).unwrap();
    assert_eq!(got, GPU_HOST);
    std::fs::remove_file(&unbind).unwrap();
    std::fs::write(&unbind, "").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, v) = n.call("POST", &format!("/devices/{GPU_HOST}/enroll"), None);
        if s == 422 {
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("did not bind to vfio-pci"),
                "{v}"
            );
            break;
        }
        assert_eq!(s, 409, "{v}");
        assert!(
            std::time::Instant::now() < deadline,
            "the group stayed stuck"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    n.check_invariants();
}
