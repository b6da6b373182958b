//! Load and leaks: 1,000 concurrent API requests (reads and conflicting creates by two
//! tenants) give only the expected 409s and a consistent state; 50 create/start/
//! delete cycles leave no file descriptor, thread, child process, memory or device
//! behind.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};

/// (method and path, status and body or transport error, seconds).
type Outcome = (String, Result<(u16, Value), String>, f64);

fn enroll(n: &Node, addr: &str) {
    assert_eq!(
        n.call("POST", &format!("/devices/{addr}/enroll"), None).0,
        200
    );
    n.settle();
}

#[test]
fn a_thousand_concurrent_requests_keep_exclusivity() {
    let mut n = Node::new(json!({}));
    n.start();
    enroll(&n, GPU_A);
    enroll(&n, GPU_B);
    let img = signed_image(n.dir.path(), 1);
    for t in ["a", "b"] {
        assert_eq!(
            n.call(
                "POST",
                "/tenants",
                Some(json!({ "id": t, "signer_keys": [img.key_pem] }))
            )
            .0,
            201
        );
    }
    let mut reqs: Vec<(&str, String, Option<String>)> = Vec::new();
    for i in 0..1000 {
        match i % 10 {
            0..=2 => reqs.push(("POST", "/vms".into(), Some(json!({ "id": format!("a{i}"), "tenant": "a", "image": img.path, "gpus": { "addresses": [GPU_A] } }).to_string()))),
            3..=5 => reqs.push(("POST", "/vms".into(), Some(json!({ "id": format!("b{i}"), "tenant": "b", "image": img.path, "gpus": { "addresses": [GPU_B] } }).to_string()))),
            6 => reqs.push(("GET", "/devices".into(), None)),
            7 => reqs.push(("GET", "/vms".into(), None)),
            8 => reqs.push(("GET", "/node".into(), None)),
            _ => reqs.push(("GET", "/metrics".into(), None)),
        }
    }
    let sock = n.sock();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let t0 = Instant::now();
    let results: Vec<Outcome> = rt.block_on(async {
        let tasks: Vec<_> = reqs
            .into_iter()
            .map(|(m, p, b)| {
                let sock = sock.clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    let r = bulwark_agent::client::request(&sock, m, &p, b)
                        .await
                        .map(|r| (r.status, r.json()));
                    (format!("{m} {p}"), r, t.elapsed().as_secs_f64())
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let wall = t0.elapsed();
    let mut created = Vec::new();
    let mut conflicts = 0;
    for (what, r, _) in &results {
        let (s, v) = r.as_ref().unwrap_or_else(|e| panic!("{what}: {e}"));
        match (what.as_str(), *s) {
            ("POST /vms", 201) => created.push(v["id"].as_str().unwrap().to_string()),
            ("POST /vms", 409) => {
                assert!(
                    ["gpus", "tenant"].contains(&v["error"]["field"].as_str().unwrap()),
                    "{v}"
                );
                conflicts += 1;
            }
            (_, 200) if what.starts_with("GET") => {}
            _ => panic!("{what}: unexpected {s} {v}"),
        }
    }
    // One tenant won the node and its device; everything else was refused.
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(conflicts, 599);
    let vms = n.get("/vms");
    assert_eq!(vms.as_array().unwrap().len(), 1);
    let winner = &vms[0];
    assert_eq!(winner["id"], created[0].as_str());
    assert_eq!(n.get("/node")["owner"], winner["tenant"]);
    n.check_invariants();
    let mut lat: Vec<f64> = results.iter().map(|r| r.2).collect();
    lat.sort_by(f64::total_cmp);
    println!(
        "1000 concurrent requests in {:.2} s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        wall.as_secs_f64(),
        lat[500] * 1e3,
        lat[990] * 1e3,
        lat[999] * 1e3
    );
}

fn fd_list(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| Some(format!("{:?}", std::fs::read_link(e.ok()?.path()).ok()?)))
        .collect();
    v.sort();
    v
}

/// The fd count once the server has closed the previous request's connection
/// (closing is asynchronous): the lowest count seen within `for_ms`, or the first
/// count at or below `target`.
fn quiet_fds(pid: u32, target: usize, for_ms: u64) -> usize {
    let end = Instant::now() + std::time::Duration::from_millis(for_ms);
    let mut low = usize::MAX;
    while Instant::now() < end {
        low = low.min(proc_count(pid, "fd"));
        if low <= target {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    low
}

fn proc_count(pid: u32, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{what}"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

fn children(pid: u32) -> String {
    let mut out = String::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        out += &std::fs::read_to_string(t.unwrap().path().join("children")).unwrap_or_default();
    }
    out
}

#[test]
fn fifty_create_start_delete_cycles_leak_nothing() {
    let mut n =
        Node::new(json!({ "jail": { "uid_base": 70000, "gid": 70000 }, "vmm_bin": "/bin/false" }));
    n.start();
    let pid = n.child.as_ref().unwrap().id();
    enroll(&n, GPU_A);
    let img = signed_image(n.dir.path(), 1);
    assert_eq!(
        n.call(
            "POST",
            "/tenants",
            Some(json!({ "id": "a", "signer_keys": [img.key_pem] }))
        )
        .0,
        201
    );
    let cycle = |i: usize| {
        // A GPU VM: its start fails (no VFIO here), the GPU is scrubbed.
        let (s, v) = n.call("POST", "/vms", Some(json!({ "id": format!("g{i}"), "tenant": "a", "image": img.path, "gpus": { "count": 1 } })));
        assert_eq!(s, 201, "{v}");
        assert_eq!(n.call("POST", &format!("/vms/g{i}/start"), None).0, 422);
        n.settle();
        assert_eq!(n.call("DELETE", &format!("/vms/g{i}"), None).0, 204);
        // A GPU-less VM whose jailed "VMM" is spawned and exits.
        assert_eq!(
            n.call(
                "POST",
                "/vms",
                Some(json!({ "id": format!("c{i}"), "tenant": "a", "image": img.path }))
            )
            .0,
            201
        );
        assert_eq!(n.call("POST", &format!("/vms/c{i}/start"), None).0, 422);
        assert_eq!(n.call("DELETE", &format!("/vms/c{i}"), None).0, 204);
    };
    for i in 0..5 {
        cycle(i);
    }
    let (fds0, rss0) = (quiet_fds(pid, 0, 300), rss_kib(pid));
    let list0 = fd_list(pid);
    for i in 5..50 {
        cycle(i);
    }
    n.settle();
    let (fds1, rss1, threads) = (
        quiet_fds(pid, fds0, 5000),
        rss_kib(pid),
        proc_count(pid, "task"),
    );
    println!("after 5 cycles: {fds0} fds, {rss0} KiB RSS; after 50: {fds1} fds, {rss1} KiB RSS, {threads} threads");
    assert_eq!(
        fds1,
        fds0,
        "file descriptors leaked: {list0:?} -> {:?}",
        fd_list(pid)
    );
    assert_eq!(children(pid).trim(), "", "child processes (zombies) left");
    assert!(rss1 < rss0 + 8 * 1024, "RSS grew from {rss0} to {rss1} KiB");
    assert!(threads < 64, "{threads} threads");
    assert_eq!(n.get("/vms"), json!([]));
    assert!(
        !n.path("state/vms/g49").exists() && !n.path("state/vms/c49").exists(),
        "VM directories left"
    );
    for a in [GPU_A, GPU_A_AUDIO] {
        assert_eq!(n.device(a)["state"], "available");
        // Enrolment + one scrub per GPU cycle.
        assert_eq!(
            n.get(&format!("/devices/{a}/scrubs"))
                .as_array()
                .unwrap()
                .len(),
            51
        );
    }
    n.check_invariants();
}
