//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}

pub fn read(rel: &str) -> Vec<u8> {
    std::fs::read(testdata(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Run the CLI with these arguments; `testdata:` prefixes become paths.
pub fn cli(args: &[&str]) -> Output {
    let args: Vec<String> = args
        .iter()
        .map(|a| match a.strip_prefix("testdata:") {
            Some(rel) => testdata(rel).display().to_string(),
            None => a.to_string(),
        })
        .collect();
    Command::new(env!("CARGO_BIN_EXE_bulwark-verify"))
        .args(&args)
        .output()
        .expect("run bulwark-verify")
}

pub fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("JSON output: {e}: {}", stdout(o)))
}

/// A scratch file holding `bytes`, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, bytes: &[u8]) -> Self {
        let dir = std::env::temp_dir().join(format!("bulwark-attest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write temp");
        TempFile(p)
    }

    pub fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Run `check(pos, flipped_bytes)` for every position in `positions`, with
/// the byte at `pos` XORed with 1, split over two threads.
pub fn for_each_flip<F>(raw: &[u8], positions: std::ops::Range<usize>, check: F)
where
    F: Fn(usize, &[u8]) + Sync,
{
    let mid = positions.start + positions.len() / 2;
    std::thread::scope(|s| {
        for part in [positions.start..mid, mid..positions.end] {
            let check = &check;
            s.spawn(move || {
                let mut b = raw.to_vec();
                for pos in part {
                    b[pos] ^= 0x01;
                    check(pos, &b);
                    b[pos] ^= 0x01;
                }
            });
        }
    });
}

/// The node OS image the evidence tests' nodes run, signed by `signer`.
pub fn node_image(signer: [u8; 32]) -> bulwark_attestation::evidence::document::ImageId {
    bulwark_attestation::evidence::document::ImageId {
        name: "bulwark-node".into(),
        version: 7,
        manifest_sha384: vec![0x22; 48].into(),
        signer_key_ids: vec![signer.to_vec().into()],
    }
}
