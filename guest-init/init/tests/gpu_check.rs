//! `bulwark-gpu-check` on a host without an NVIDIA GPU: exit 3 and one clear line,
//! never a panic (cudarc panics when libcuda is missing; the crate guards it).

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_bulwark-gpu-check");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run bulwark-gpu-check")
}

/// Whether this host really has an NVIDIA GPU driver loaded (then the check runs
/// for real and its result depends on the GPU).
fn host_has_nvidia() -> bool {
    let has = Path::new("/dev/nvidiactl").exists();
    if has {
        eprintln!(
            "this host has /dev/nvidiactl (an NVIDIA driver): the no-GPU assertions are skipped"
        );
    }
    has
}

fn assert_no_gpu_line(line: &str) {
    assert!(
        line.starts_with("no NVIDIA GPU on this host (")
            && line.ends_with("): the GPU check did not run"),
        "not the no-GPU line: {line:?}"
    );
}

#[test]
fn no_gpu_exits_3_with_one_clear_line() {
    if host_has_nvidia() {
        return;
    }
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line expected: {stdout:?}");
    assert_no_gpu_line(lines[0]);
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn no_gpu_json_is_the_structured_status() {
    if host_has_nvidia() {
        return;
    }
    let out = run(&["--json", "--require-cc", "--min-count", "2"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["result"], "no_gpu");
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["require_cc"], true);
    assert_eq!(v["min_count"], 2);
    assert_eq!(v["status"]["gpus"], serde_json::json!([]));
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_no_gpu_line(stderr.trim_end());
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &["--bogus"][..],
        &["--min-count"],
        &["--min-count", "0"],
        &["--min-count", "x"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage: bulwark-gpu-check"));
    }
    assert_eq!(run(&["--help"]).status.code(), Some(0));
}
