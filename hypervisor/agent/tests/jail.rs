//! The jail of a VMM, read from /proc: a script stands in for bulwark-vmm and waits
//! (for a file the test creates) while the test reads its /proc entries from outside:
//! uid and gid, groups, capabilities, no_new_privs, its own mount namespace whose root
//! holds only its files, the cgroup it joined before exec. Then it exits, so the start
//! fails and that is recorded.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn the_vmm_runs_with_its_own_uid_no_groups_no_new_privs_its_own_root_and_cgroup() {
    // The script and the tree to it must be readable by the VMM's uid.
    let pub_dir = tempfile::Builder::new()
        .prefix("bulwark-jail-test")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(pub_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = pub_dir.path().join("fake-vmm.sh");
    // Runs in its VM directory; waits for `go`, then exits 3.
    std::fs::write(
        &script,
        "#!/bin/sh\nwhile [ ! -e go ]; do sleep 0.02; done\nexit 3\n",
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
        "jail": {
            "uid_base": 70100, "uid_count": 5, "gid": 70200, "cgroup_parent": cg.path(), "pids_max": 64,
            // The stand-in is a shell script: it needs /bin (sh, sleep) in its root.
            "extra_ro_paths": ["/bin"],
        },
        "vmm_bin": script,
        "port_bind_addr": "127.0.0.1",
    }));
    let tcp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
        Some(json!({ "id": "v", "tenant": "a", "image": img.path, "vcpus": 2, "mem_mib": 128, "ports": [{ "vsock": 7000, "tcp": tcp_port }] })),
    );
    assert_eq!(s, 201, "{v}");
    let sock = n.sock();
    let start = std::thread::spawn(move || {
        bulwark_agent::client::blocking(&sock, "POST", "/vms/v/start", None)
    });
    // The pid is recorded as soon as the VMM is spawned.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid = loop {
        if let Some(p) = n.get("/vms/v")["pid"].as_i64() {
            break p;
        }
        assert!(Instant::now() < deadline, "no pid recorded\n{}", n.log());
        std::thread::sleep(Duration::from_millis(10));
    };
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    // The script is running (not the fork before exec): its command line names it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(proc_dir.join("cmdline"))
        .unwrap_or_default()
        .contains("fake-vmm.sh")
    {
        assert!(Instant::now() < deadline, "the stand-in VMM never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
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
    assert_ne!(
        std::fs::read_link(proc_dir.join("ns/mnt")).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap(),
        "its own mount namespace"
    );
    // Its root: only what it needs (here /bin too, from extra_ro_paths).
    let root = proc_dir.join("root");
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["bin", "dev", "etc", "lib", "lib64", "sys", "tmp", "usr"],
        "the VMM's /"
    );
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap());
    assert!(inside(&img.path).exists(), "the image");
    assert!(
        inside(&n.path("state/vms/v/signer-0.pem")).exists(),
        "its VM directory"
    );
    assert!(
        !inside(&n.path("state/bulwarkd.db")).exists(),
        "the state database is visible"
    );
    assert!(!inside(&n.path("config.json")).exists());
    // Read-only where it should be.
    let mounts = std::fs::read_to_string(proc_dir.join("mountinfo")).unwrap();
    let mount_opts = |target: &Path| {
        let t = target.to_str().unwrap();
        mounts
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(t))
            .map(|l| l.split_whitespace().nth(5).unwrap().to_string())
            .unwrap_or_else(|| panic!("no mount at {t}:\n{mounts}"))
    };
    assert!(mount_opts(&img.path).starts_with("ro"), "{mounts}");
    assert!(mount_opts(Path::new("/sys")).starts_with("ro"), "{mounts}");
    assert!(
        mount_opts(&n.path("state/vms/v")).starts_with("rw"),
        "{mounts}"
    );
    // The cgroup: limits from the VM's size, and the child joined it before exec.
    let cgf = |f: &str| std::fs::read_to_string(cg.path().join("v").join(f)).unwrap();
    assert_eq!(cgf("cpu.max"), "200000 100000");
    assert_eq!(cgf("memory.max"), ((128u64 + 256) << 20).to_string());
    assert_eq!(cgf("pids.max"), "64");
    assert_eq!(cgf("cgroup.procs"), "0");
    // Its exposed port: a TCP connection becomes `CONNECT 7000` on the VMM's vsock
    // socket (played here by the test, as the stand-in VMM has none), then a stream.
    let muxer = std::os::unix::net::UnixListener::bind(n.path("state/vms/v/vsock.sock")).unwrap();
    let fake_vmm = std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let (s, _) = muxer.accept().unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let mut w = s;
        w.write_all(b"OK 1073741824\n").unwrap();
        let mut data = vec![0u8; 14];
        std::io::Read::read_exact(&mut r, &mut data).unwrap();
        w.write_all(&data).unwrap();
        line
    });
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(b"ping via vsock").unwrap();
        let mut back = [0u8; 14];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping via vsock");
    }
    assert_eq!(fake_vmm.join().unwrap(), "CONNECT 7000\n");
    // Let it exit: the start fails with its status, recorded.
    std::fs::write(n.path("state/vms/v/go"), "").unwrap();
    let r = start.join().unwrap().unwrap();
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exited before its API socket appeared (exit status: 3)"),
        "{}",
        r.json()
    );
    let vm = n.get("/vms/v");
    assert_eq!(vm["jail"]["uid"], 70100);
    assert_eq!(
        vm["jail"]["notes"],
        json!([]),
        "nothing of the jail missing"
    );
    assert_eq!(vm["jail"]["cgroup"], cg.path().join("v").to_str().unwrap());
    assert_eq!(vm["state"], "failed");
    assert!(
        !n.path("state/jail/v").exists(),
        "the root is removed after the VMM"
    );
    // The port closed with the VMM.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", tcp_port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "port {tcp_port} still open after the VM ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
