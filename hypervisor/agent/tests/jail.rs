//! The jail of a VMM, read from /proc by the "VMM" itself: a script in place of
//! bulwark-vmm records its /proc/self/status, mount namespace and the cgroup it was
//! put in, then exits (so the start fails, recorded, and its devices are scrubbed).

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::json;

#[test]
fn the_vmm_runs_with_its_own_uid_no_groups_no_new_privs_its_own_mount_namespace_and_cgroup() {
    // The script and the tree to it must be readable by the VMM's uid.
    let pub_dir = tempfile::Builder::new()
        .prefix("bulwark-jail-test")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(pub_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = pub_dir.path().join("fake-vmm.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n{ cat /proc/self/status; echo \"MNTNS $(readlink /proc/self/ns/mnt)\"; } > jail.txt\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A stand-in cgroup v2 parent (this host's cgroup2 has no controllers): shows the
    // limits written and that the child joined (wrote "0" to cgroup.procs) before exec.
    let cg = tempfile::tempdir().unwrap();
    std::fs::write(
        cg.path().join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    let mut n = Node::new(json!({
        "jail": { "uid_base": 70100, "uid_count": 5, "gid": 70200, "cgroup_parent": cg.path(), "pids_max": 64 },
        "vmm_bin": script,
    }));
    n.start();
    let img = signed_image(n.dir.path(), 1);
    n.call(
        "POST",
        "/tenants",
        Some(json!({ "id": "a", "signer_keys": [img.key_pem] })),
    );
    let (s, v) = n.call(
        "POST",
        "/vms",
        Some(json!({ "id": "v", "tenant": "a", "image": img.path, "vcpus": 2, "mem_mib": 128 })),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = n.call("POST", "/vms/v/start", None);
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exited before its API socket appeared (exit status: 3)"),
        "{v}"
    );
    let status = std::fs::read_to_string(n.path("state/vms/v/jail.txt"))
        .expect("the fake VMM ran and wrote its /proc view");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} in {status}"))
            .to_string()
    };
    assert_eq!(
        field("Uid:").split_whitespace().collect::<Vec<_>>(),
        ["70100"; 4],
        "real, effective, saved, fs uid"
    );
    assert_eq!(
        field("Gid:").split_whitespace().collect::<Vec<_>>(),
        ["70200"; 4]
    );
    assert_eq!(field("Groups:"), "", "no supplementary groups");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(
        field("MNTNS"),
        ours.to_str().unwrap(),
        "its own mount namespace"
    );
    // The cgroup: limits from the VM's size, and the child joined it before exec.
    let cgf = |f: &str| std::fs::read_to_string(cg.path().join("v").join(f)).unwrap();
    assert_eq!(cgf("cpu.max"), "200000 100000");
    assert_eq!(cgf("memory.max"), ((128u64 + 256) << 20).to_string());
    assert_eq!(cgf("pids.max"), "64");
    assert_eq!(cgf("cgroup.procs"), "0");
    let vm = n.get("/vms/v");
    assert_eq!(vm["jail"]["uid"], 70100);
    assert_eq!(vm["jail"]["cgroup"], cg.path().join("v").to_str().unwrap());
    assert_eq!(vm["state"], "failed");
}
