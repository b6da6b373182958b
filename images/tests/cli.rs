//! The `bulwark-image` CLI as users run it: exit codes, JSON output, clear
//! messages, and dm-verity trees that Linux's own `veritysetup` accepts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulwark-image"))
        .args(args)
        .output()
        .expect("run bulwark-image")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

struct Keys {
    private: PathBuf,
    public: PathBuf,
}

fn keygen(dir: &Path, name: &str) -> Keys {
    let out = dir.join(name);
    let o = cli(&["keygen", "--out", p(&out), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["key_id"].as_str().unwrap().len(), 64);
    Keys {
        private: out.join("signing.key"),
        public: out.join("signing.pub"),
    }
}

fn build_signed(dir: &Path, keys: &Keys, version: u64, rootfs: Option<&Path>) -> PathBuf {
    let spec = common::spec(dir, version, 0);
    let img = dir.join(format!("v{version}.bwi"));
    let version = version.to_string();
    let mut args = vec![
        "build",
        "--name",
        "demo",
        "--version",
        &version,
        "--kernel",
        p(&spec.kernel),
        "--cmdline",
        "console=ttyS0",
        "--out",
        p(&img),
    ];
    if let Some(r) = rootfs {
        args.extend(["--rootfs", p(r)]);
    }
    let o = cli(&args);
    assert!(o.status.success(), "build: {}", stderr(&o));
    let o = cli(&["sign", "--key", p(&keys.private), p(&img)]);
    assert!(o.status.success(), "sign: {}", stderr(&o));
    img
}

#[test]
fn build_sign_verify_and_refuse_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "keys");
    let img = build_signed(dir.path(), &keys, 1, None);

    let o = cli(&["verify", "--trust", p(&keys.public), p(&img), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["verified"], true);
    assert_eq!(v["manifest"]["name"], "demo");

    // Tamper with one byte of the kernel: refused with exit 1 and a reason.
    let mut bytes = std::fs::read(&img).unwrap();
    let kernel_at = v["manifest"]["components"][0]["offset"].as_u64().unwrap() as usize;
    bytes[kernel_at + 10] ^= 1;
    let bad = dir.path().join("tampered.bwi");
    std::fs::write(&bad, bytes).unwrap();
    let o = cli(&["verify", "--trust", p(&keys.public), p(&bad)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("kernel component does not match its signed SHA-384"),
        "{}",
        stderr(&o)
    );

    // inspect reads it but says it is unverified.
    let o = cli(&["inspect", p(&bad)]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("UNVERIFIED"));
}

#[test]
fn untrusted_threshold_and_state_rollback_exit_1_with_distinct_messages() {
    let dir = tempfile::tempdir().unwrap();
    let a = keygen(dir.path(), "a");
    let b = keygen(dir.path(), "b");
    let v2 = build_signed(dir.path(), &a, 2, None);
    let v1 = build_signed(dir.path(), &a, 1, None);

    let o = cli(&["verify", "--trust", p(&b.public), p(&v2)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("0 valid signature(s) from trusted keys, 1 required"));
    assert!(stderr(&o).contains("untrusted key(s) ignored"));

    let o = cli(&[
        "verify",
        "--trust",
        p(&a.public),
        "--trust",
        p(&b.public),
        "--threshold",
        "2",
        p(&v2),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("1 valid signature(s) from trusted keys, 2 required"));

    let state = dir.path().join("state.json");
    let verify_with_state = |img: &Path| {
        cli(&[
            "verify",
            "--trust",
            p(&a.public),
            "--state",
            p(&state),
            p(img),
        ])
    };
    assert_eq!(verify_with_state(&v2).status.code(), Some(0));
    let o = verify_with_state(&v1);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("rollback refused"), "{}", stderr(&o));
    // The refusal did not lower the recorded version.
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(recorded["highest_version"]["demo"], 2);

    let o = cli(&[
        "verify",
        "--trust",
        p(&a.public),
        "--min-version",
        "3",
        p(&v2),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("older than the minimum 3"));
}

#[test]
fn usage_and_io_errors_exit_2_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path(), "keys");
    let missing = dir.path().join("nope.bwi");
    let o = cli(&["verify", "--trust", p(&keys.public), p(&missing)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope.bwi"));
    // A private key given as a trusted public key.
    let img = build_signed(dir.path(), &keys, 1, None);
    let o = cli(&["verify", "--trust", p(&keys.private), p(&img)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("expected \"PUBLIC KEY\""),
        "{}",
        stderr(&o)
    );
    // No --trust at all is a usage error.
    assert_eq!(cli(&["verify", p(&img)]).status.code(), Some(2));
    // A rootfs that is not a whole number of 4 KiB blocks.
    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, vec![0u8; 5000]).unwrap();
    let spec = common::spec(dir.path(), 1, 0);
    let o = cli(&[
        "build",
        "--name",
        "x",
        "--version",
        "1",
        "--kernel",
        p(&spec.kernel),
        "--rootfs",
        p(&odd),
        "--out",
        p(&dir.path().join("odd.bwi")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("multiple of 4096"), "{}", stderr(&o));
    assert!(!dir.path().join("odd.bwi").exists());
    // A garbage file given as a bundle is refused (exit 1), not a crash.
    let junk = dir.path().join("junk.bwi");
    std::fs::write(&junk, vec![0xffu8; 9000]).unwrap();
    let o = cli(&["inspect", p(&junk)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a Bulwark image bundle"));
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup installs it)"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Build a real filesystem, bundle it, carve out the data and hash areas
/// and have `veritysetup` check our tree and recompute our root hash.
fn veritysetup_accepts(fs_image: &Path, dir: &Path) {
    let keys = keygen(dir, "keys");
    let img = build_signed(dir, &keys, 1, Some(fs_image));
    let o = cli(&["verify", "--trust", p(&keys.public), p(&img), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = json(&o)["manifest"].clone();
    let rootfs = m["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "rootfs")
        .unwrap()
        .clone();
    let v = &rootfs["verity"];
    let bytes = std::fs::read(&img).unwrap();
    let (off, size) = (
        rootfs["offset"].as_u64().unwrap() as usize,
        rootfs["size"].as_u64().unwrap() as usize,
    );
    let (hoff, hsize) = (
        v["hash_offset"].as_u64().unwrap() as usize,
        v["hash_size"].as_u64().unwrap() as usize,
    );
    let data = dir.join("data.img");
    let hash = dir.join("hash.img");
    std::fs::write(&data, &bytes[off..off + size]).unwrap();
    std::fs::write(&hash, &bytes[hoff..hoff + hsize]).unwrap();
    assert_eq!(
        &bytes[off..off + size],
        &std::fs::read(fs_image).unwrap()[..]
    );
    let root = v["root_hash"].as_str().unwrap();
    let salt = v["salt"].as_str().unwrap();
    let params = [
        "--no-superblock".to_string(),
        "--format=1".into(),
        "--hash=sha256".into(),
        "--data-block-size=4096".into(),
        "--hash-block-size=4096".into(),
        format!("--salt={salt}"),
    ];
    run_ok(
        Command::new("veritysetup")
            .arg("verify")
            .args(&params)
            .args([p(&data), p(&hash), root]),
    );
    // veritysetup's own tree over the same data has our root hash.
    let theirs = dir.join("their-hash.img");
    let out = run_ok(
        Command::new("veritysetup")
            .arg("format")
            .args(&params)
            .args([p(&data), p(&theirs)]),
    );
    assert!(out.contains(&format!("Root hash:      \t{root}")), "{out}");
    assert_eq!(std::fs::read(&theirs).unwrap(), &bytes[hoff..hoff + hsize]);
    // And a flipped data byte makes veritysetup refuse our tree.
    let mut bad = bytes[off..off + size].to_vec();
    bad[size / 2] ^= 1;
    std::fs::write(&data, bad).unwrap();
    let o = Command::new("veritysetup")
        .arg("verify")
        .args(&params)
        .args([p(&data), p(&hash), root])
        .output()
        .unwrap();
    assert!(!o.status.success());
}

fn populated_dir(dir: &Path) -> PathBuf {
    let root = dir.join("tree");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), b"tenant\n").unwrap();
    std::fs::write(root.join("payload.bin"), common::pattern(600_000, 3)).unwrap();
    root
}

#[test]
fn ext4_rootfs_tree_is_accepted_by_veritysetup() {
    let dir = tempfile::tempdir().unwrap();
    let src = populated_dir(dir.path());
    let fs = dir.path().join("rootfs.ext4");
    run_ok(Command::new("mke2fs").args([
        "-q",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-d",
        p(&src),
        "-E",
        "root_owner=0:0",
        p(&fs),
        "8M",
    ]));
    veritysetup_accepts(&fs, dir.path());
}

#[test]
fn erofs_rootfs_tree_is_accepted_by_veritysetup() {
    let dir = tempfile::tempdir().unwrap();
    let src = populated_dir(dir.path());
    let raw = dir.path().join("rootfs.erofs");
    run_ok(Command::new("mkfs.erofs").args([p(&raw), p(&src)]));
    // Round up to whole 4 KiB blocks, as dm-verity needs.
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len.div_ceil(4096) * 4096).unwrap();
    veritysetup_accepts(&raw, dir.path());
}
