//! Shared helpers for the tests that boot tiny guests on this machine's /dev/kvm:
//! building the guests (integration-tests/tiny-guests, own target dir so it does not
//! wait on the outer cargo lock), writing configs, running `bulwark-vmm`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::Digest;

/// Path of the `bulwark-vmm` binary under test: the one cargo built for these tests,
/// or `BULWARK_VMM_BIN` when set (to run the suite against the shipped static musl
/// release build, see docs/vmm.md).
pub fn vmm_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("BULWARK_VMM_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_bulwark-vmm").to_string())
    })
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("hypervisor/ has a parent")
        .to_path_buf()
}

/// Builds the tiny guests once per test binary; returns the directory holding each
/// guest as an ELF (`NAME`) and as a flat binary (`NAME.bin`).
pub fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        assert!(Path::new("/dev/kvm").exists(), "these tests boot real VMs and need /dev/kvm");
        let crate_dir = repo_root().join("integration-tests/tiny-guests");
        let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiny-guests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(&crate_dir)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .args(["build", "--release", "--locked", "--target", "x86_64-unknown-none", "--target-dir"])
            .arg(&target)
            .output()
            .expect("running cargo for the tiny guests");
        assert!(
            out.status.success(),
            "building tiny guests failed (is the x86_64-unknown-none target installed? scripts/setup adds it):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = target.join("x86_64-unknown-none/release");
        for name in ["hello", "e820", "e820-bzimage", "smp", "cpuid", "triple-fault", "port-fuzz", "reset", "pvh", "acpi", "echo", "virtio-blk", "virtio-vsock", "virtio-hostile", "virtio-irq", "virtio-pci"] {
            let elf = dir.join(name);
            let status = Command::new("objcopy")
                .args(["-O", "binary"])
                .arg(&elf)
                .arg(dir.join(format!("{name}.bin")))
                .status()
                .expect("running objcopy (binutils)");
            assert!(status.success(), "objcopy {name}");
        }
        dir
    })
}

/// Builds the guest firmware (`firmware/image`, own target dir) once per test binary
/// and returns its 64 KiB image.
pub fn firmware() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("firmware");
        bulwark_firmware_abi::build::build_image(&target).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// The flat binary of guest `name`.
pub fn flat(name: &str) -> PathBuf {
    guests().join(format!("{name}.bin"))
}

/// The ELF of guest `name`.
pub fn elf(name: &str) -> PathBuf {
    guests().join(name)
}

/// Wraps flat guest `name` (linked at 0x100200) into a minimal bzImage: a boot sector
/// with the setup header (one setup sector, protocol 2.15, LOADED_HIGH,
/// code32_start 1 MiB, XLF_KERNEL_64, the header running to 0x268 as the jump at
/// 0x200 says), one empty setup sector, then the protected-mode part: 0x200
/// bytes of padding and the guest, so the guest lands on the 64-bit entry.
pub fn bzimage(name: &str, dir: &Path) -> PathBuf {
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x200..0x202].copy_from_slice(&[0xeb, 0x66]);
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 0x01; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    image[0x236] = 0x01; // xloadflags: XLF_KERNEL_64
    image.extend_from_slice(&[0u8; 0x200]);
    image.extend_from_slice(&std::fs::read(flat(name)).expect("flat guest"));
    let path = dir.join(format!("{name}.bzImage"));
    std::fs::write(&path, image).expect("write bzImage");
    path
}

/// A config booting flat guest `name` at 1 MiB in long mode with RSI = `rsi`.
pub fn raw_config(name: &str, vcpus: u8, rsi: u64) -> Value {
    json!({
        "machine": {"vcpus": vcpus, "mem_mib": 64},
        "boot_source": {
            "kind": "raw",
            "image": flat(name),
            "load_addr": 0x10_0000,
            "entry": {"mode": "long64", "rip": 0x10_0000, "rsi": rsi, "aps": "at_entry"}
        },
        "devices": {"debug_exit": true}
    })
}

/// What a finished VMM run left behind.
#[derive(Debug)]
pub struct Run {
    /// Process exit status.
    pub status: i32,
    /// Everything the guest wrote to COM1.
    pub serial: String,
    /// The VMM's stderr (logs).
    pub stderr: String,
}

impl Run {
    /// Asserts the exit status, showing the guest's serial output and the VMM's log
    /// on failure.
    pub fn assert_status(&self, status: i32) {
        assert_eq!(
            self.status, status,
            "serial: {}\nstderr: {}",
            self.serial, self.stderr
        );
    }
}

/// A scratch directory for one run.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bulwark-vmm-test")
        .tempdir()
        .expect("tempdir")
}

/// Writes `config` (serial redirected to a file in `dir`) and returns its path.
pub fn write_config(dir: &Path, mut config: Value) -> PathBuf {
    config["devices"]["serial"] = json!({"file": dir.join("serial.log")});
    let path = dir.join("vm.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write config");
    path
}

/// Boots `config` with `bulwark-vmm --config` and waits for the process to end. A
/// watchdog kills a VMM that is still running after two minutes (a hang is a failure).
pub fn boot(config: Value) -> Run {
    boot_with_env(config, &[])
}

/// [`boot`] with extra environment variables for the VMM.
pub fn boot_with_env(config: Value, env: &[(&str, &str)]) -> Run {
    spawn_vmm_with_env(scratch(), config, false, env).wait_within(Duration::from_secs(120))
}

/// `bulwark-vmm measure --config` for `config`: the measurement value.
pub fn measure(config: Value) -> String {
    let dir = scratch();
    let path = write_config(dir.path(), config);
    let out = Command::new(vmm_bin())
        .arg("measure")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("measure");
    assert!(
        out.status.success(),
        "measure failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("measure prints JSON");
    v["measurement"]
        .as_str()
        .expect("measurement field")
        .to_string()
}

/// The value bulwark-vmm printed as "launch measurement X" on stderr.
pub fn booted_measurement(run: &Run) -> String {
    run.stderr
        .lines()
        .find_map(|l| l.strip_prefix("bulwark-vmm: launch measurement "))
        .expect("bulwark-vmm prints the launch measurement")
        .trim()
        .to_string()
}

/// A running `bulwark-vmm --config` whose stderr is collected on a thread.
pub struct Running {
    pub child: std::process::Child,
    pub dir: tempfile::TempDir,
    pub stderr: std::thread::JoinHandle<String>,
}

/// Starts `bulwark-vmm --config` (and `--api-sock DIR/api.sock` with `api`) on `config`.
pub fn spawn_vmm(dir: tempfile::TempDir, config: Value, api: bool) -> Running {
    spawn_vmm_with_env(dir, config, api, &[])
}

/// [`spawn_vmm`] with extra environment variables for the VMM.
pub fn spawn_vmm_with_env(
    dir: tempfile::TempDir,
    config: Value,
    api: bool,
    env: &[(&str, &str)],
) -> Running {
    use std::process::{Command, Stdio};
    let path = write_config(dir.path(), config);
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("--config").arg(&path);
    if api {
        cmd.arg("--api-sock").arg(dir.path().join("api.sock"));
    }
    let mut child = cmd
        .env("BULWARK_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning bulwark-vmm");
    let mut pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        use std::io::Read;
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    Running { child, dir, stderr }
}

impl Running {
    /// Polls the guest's serial log until it contains `needle`, calling `each` at
    /// every poll; panics with the logs when the guest prints `FAIL`, the VMM exits,
    /// or `limit` (a watchdog) passes first.
    pub fn wait_for_serial(self, needle: &str, limit: Duration, mut each: impl FnMut()) -> Self {
        let serial = self.dir.path().join("serial.log");
        let deadline = Instant::now() + limit;
        loop {
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            each();
            if text.contains(needle) {
                return self;
            }
            if text.contains("FAIL") || vmm_exited(self.child.id()) {
                let run = self.wait();
                panic!("the guest failed:\n{}\n{}", run.serial, run.stderr);
            }
            assert!(Instant::now() < deadline, "guest never finished: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (with a five-minute watchdog) for the VMM to exit.
    pub fn wait(self) -> Run {
        self.wait_within(Duration::from_secs(300))
    }

    /// Waits for the VMM to exit; a watchdog kills one still running after `limit`
    /// (a hang is a failure).
    pub fn wait_within(mut self, limit: Duration) -> Run {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("bulwark-vmm did not finish within the watchdog period");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Run {
            status: status.code().unwrap_or(-1),
            serial: std::fs::read_to_string(self.dir.path().join("serial.log")).unwrap_or_default(),
            stderr: self.stderr.join().unwrap_or_default(),
        }
    }
}

/// Waits (up to 60 s) until `p` exists.
pub fn wait_for_path(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One HTTP/1.1 request over the API's Unix socket: (status, body).
pub fn http(sock: &Path, method: &str, path: &str) -> (u16, String) {
    http_body(sock, method, path, "")
}

/// One HTTP/1.1 request with a JSON `body` over the API's Unix socket: (status, body).
pub fn http_body(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect to the API");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Whether process `pid` has exited (is a zombie or gone).
pub fn vmm_exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
}

/// 64 KiB of deterministic, non-repeating bytes.
pub fn rootfs_bytes() -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The pattern the guest writes to the scratch disk (64-bit words).
pub fn pattern(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5ca1_ab1e
}

pub fn blk_cmdline(rootfs: &[u8]) -> String {
    format!(
        "console=ttyS0 rootfs_len={} rootfs_sha256={}",
        rootfs.len(),
        hex::encode(sha2::Sha256::digest(rootfs))
    )
}
