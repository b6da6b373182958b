//! A full disk under the state directory: writes are refused with a storage error
//! (500, nothing changed), reads and the daemon go on, and once space is free again
//! writes succeed without a restart.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

/// A small tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn new(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs (needs root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_writes_cleanly_and_recovers_when_space_returns() {
    let mut n = Node::new(json!({}));
    let fs = Tmpfs::new(&n.path("state"), "8m");
    n.start();
    let img = signed_image(n.dir.path(), 1);
    // Fill the file system, leaving (almost) nothing.
    let filler = fs.0.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .status();
    let mut refused = None;
    let mut created = 0;
    let big_key = img.key_pem.clone();
    for i in 0..2000 {
        let (s, v) = n.call(
            "POST",
            "/tenants",
            Some(json!({ "id": format!("t{i}"), "signer_keys": [big_key] })),
        );
        match s {
            201 => created += 1,
            500 => {
                refused = Some(v);
                break;
            }
            _ => panic!("{s} {v}"),
        }
    }
    let v = refused.expect("the disk never filled up");
    assert_eq!(v["error"]["field"], "storage", "{v}");
    // Nothing half-written: the refused tenant is absent, the others are there, the
    // daemon answers reads.
    let tenants = n.get("/tenants");
    assert_eq!(tenants.as_array().unwrap().len(), created, "{v}");
    assert!(!n.dead());
    // Still full: still refused, still alive.
    assert_eq!(n.call("POST", "/devices/0000:01:00.0/enroll", None).0, 500);
    assert_eq!(n.device(GPU_A)["state"], "unenrolled");
    // Space again: writes work without a restart.
    std::fs::remove_file(&filler).unwrap();
    let (s, v) = n.call(
        "POST",
        "/tenants",
        Some(json!({ "id": "after", "signer_keys": [big_key] })),
    );
    assert_eq!(s, 201, "{v}\n{}", n.log());
    assert_eq!(
        n.call("POST", &format!("/devices/{GPU_A}/enroll"), None).0,
        200
    );
    n.settle();
    assert_eq!(n.device(GPU_A)["state"], "available");
    // And everything committed survives a SIGKILL.
    n.kill();
    n.start();
    assert_eq!(n.get("/tenants").as_array().unwrap().len(), created + 1);
    n.check_invariants();
    n.kill();
}
