//! Booting the L1 machine: QEMU TCG with an IOMMU, the scenario's devices and a hard
//! timeout, its serial console collected.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::{LabError, Result};
use super::host_command::{describe, find_program};
use super::verdict::MachineEnd;

/// Environment variable naming the QEMU binary (default `qemu-system-x86_64` on `PATH`).
pub const QEMU_ENV: &str = "BULWARK_LAB_QEMU";

/// What to boot and with which devices.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub memory_mib: u32,
    /// `-device` arguments beyond the IOMMU (which every lab machine has).
    pub devices: Vec<String>,
    /// `-object` arguments.
    pub objects: Vec<String>,
    /// A `-netdev` argument (the NIC that uses it is one of `devices`).
    pub netdev: Option<String>,
    pub timeout: Duration,
    /// UEFI mode: boot this disk image through OVMF (and a TPM) instead of `kernel`
    /// and `initramfs`, which are then unused.
    pub uefi: Option<UefiBoot>,
    /// Console markers to time, and monitor commands to send when they appear.
    pub console_actions: Vec<ConsoleAction>,
    /// With `console_actions`: once all have fired, L1 must exit within this time
    /// (else it is killed as at the hard timeout), so that a lost command does not
    /// cost the whole timeout.
    pub exit_after_actions: Option<Duration>,
}

/// Debian's OVMF (package `ovmf`): the firmware code, read-only.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// Debian's OVMF variable store template; each run boots a fresh copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Debian's OVMF with Secure Boot (SMM), and its variable store with Secure Boot
/// enforced and Debian's snakeoil test certificate in PK, KEK and db.
pub const OVMF_CODE_SECURE_BOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd";
/// See [`OVMF_CODE_SECURE_BOOT`].
pub const OVMF_VARS_SECURE_BOOT: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
/// Debian's snakeoil test key (PEM, passphrase `snakeoil`), whose certificate
/// [`SNAKEOIL_CERT`] the Secure Boot variable store has in db: the lab's stand-in
/// for a provider's db key.
pub const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
/// See [`SNAKEOIL_KEY`].
pub const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";

/// A UEFI machine: OVMF as pflash, a raw disk image on NVMe (which the node's kernel
/// drives without modules), and a TPM 2.0 (`swtpm`, started and stopped by
/// [`boot`]) on the CRB interface.
#[derive(Debug, Clone)]
pub struct UefiBoot {
    /// The raw disk image (GPT, ESP first).
    pub disk: PathBuf,
    /// OVMF's code.
    pub firmware_code: PathBuf,
    /// This run's copy of the variable store (writable: boot entries, boot counting).
    pub firmware_vars: PathBuf,
    /// The swtpm state directory (made fresh: a new TPM with EK certificates), or no TPM.
    pub tpm_dir: Option<PathBuf>,
    /// Secure Boot enforced (the firmware runs in SMM with secure pflash).
    pub secure_boot: bool,
}

impl UefiBoot {
    /// A UEFI boot of `disk` with fresh firmware variables in `run_dir` and, with
    /// `tpm`, a fresh TPM in `run_dir/tpm`.
    pub fn new(run_dir: &Path, disk: &Path, tpm: bool) -> Result<UefiBoot> {
        UefiBoot::with_firmware(run_dir, disk, tpm, false)
    }

    /// As [`UefiBoot::new`], with Secure Boot enforced and Debian's snakeoil
    /// certificate in db ([`OVMF_CODE_SECURE_BOOT`]).
    pub fn secure_boot(run_dir: &Path, disk: &Path, tpm: bool) -> Result<UefiBoot> {
        UefiBoot::with_firmware(run_dir, disk, tpm, true)
    }

    fn with_firmware(
        run_dir: &Path,
        disk: &Path,
        tpm: bool,
        secure_boot: bool,
    ) -> Result<UefiBoot> {
        let (code, vars_template) = if secure_boot {
            (OVMF_CODE_SECURE_BOOT, OVMF_VARS_SECURE_BOOT)
        } else {
            (OVMF_CODE, OVMF_VARS)
        };
        for file in [code, vars_template] {
            if !Path::new(file).is_file() {
                return Err(LabError::Prerequisite {
                    what: format!("{file} not found (the lab's UEFI mode boots Debian's OVMF)"),
                    hint: "install Debian's ovmf package: run scripts/setup".into(),
                });
            }
        }
        let vars = run_dir.join("OVMF_VARS.fd");
        std::fs::copy(vars_template, &vars).map_err(LabError::io(format!(
            "copying {vars_template} to {}",
            vars.display()
        )))?;
        let tpm_dir = if tpm {
            let dir = run_dir.join("tpm");
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(LabError::io(format!("removing {}", dir.display())))?;
            }
            std::fs::create_dir_all(&dir)
                .map_err(LabError::io(format!("creating {}", dir.display())))?;
            Some(dir)
        } else {
            None
        };
        Ok(UefiBoot {
            disk: disk.to_owned(),
            firmware_code: PathBuf::from(code),
            firmware_vars: vars,
            tpm_dir,
            secure_boot,
        })
    }

    /// swtpm's control socket in the state directory.
    pub fn tpm_socket(&self) -> Option<PathBuf> {
        self.tpm_dir.as_ref().map(|d| d.join("swtpm.sock"))
    }
}

/// When `marker` first shows on the serial console: note the time and, if given,
/// type `monitor` into QEMU's human monitor (e.g. `sendkey ctrl-alt-delete`).
#[derive(Debug, Clone)]
pub struct ConsoleAction {
    pub marker: String,
    pub monitor: Option<String>,
}

/// A running `swtpm`; killed and reaped when dropped, so every exit path of [`boot`]
/// (an error, a timeout, a panic) stops it.
#[derive(Debug)]
struct Swtpm {
    child: Child,
}

impl Swtpm {
    /// Makes a fresh TPM (EK and platform certificates) in `dir` and serves it on
    /// `socket`.
    fn start(dir: &Path, socket: &Path) -> Result<Swtpm> {
        let missing = |name: &str| LabError::Prerequisite {
            what: format!("`{name}` not found (the lab's UEFI mode gives the machine a TPM)"),
            hint: "install Debian's swtpm and swtpm-tools: run scripts/setup".into(),
        };
        let setup = find_program("swtpm_setup").ok_or_else(|| missing("swtpm_setup"))?;
        let swtpm = find_program("swtpm").ok_or_else(|| missing("swtpm"))?;
        let mut cmd = Command::new(setup);
        cmd.args([
            "--tpm2",
            "--create-ek-cert",
            "--create-platform-cert",
            "--overwrite",
        ])
        .arg("--tpmstate")
        .arg(dir);
        super::host_command::run(&mut cmd)?;
        let _ = std::fs::remove_file(socket);
        let mut cmd = Command::new(swtpm);
        cmd.args(["socket", "--tpm2", "--terminate"])
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--log")
            .arg(format!("file={},level=1", dir.join("swtpm.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let line = describe(&cmd);
        let child = cmd.spawn().map_err(|e| LabError::Command {
            command: line.clone(),
            status: "could not start".into(),
            output: e.to_string(),
        })?;
        let mut tpm = Swtpm { child };
        let start = Instant::now();
        while !socket.exists() {
            if let Ok(Some(status)) = tpm.child.try_wait() {
                return Err(LabError::Command {
                    command: line,
                    status: status.to_string(),
                    output: std::fs::read_to_string(dir.join("swtpm.log")).unwrap_or_default(),
                });
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(LabError::Command {
                    command: line,
                    status: "no control socket after 10 s".into(),
                    output: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(tpm)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        // It may have ended by itself (--terminate, when QEMU closed the channel).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The end of one L1 boot.
#[derive(Debug, Clone)]
pub struct MachineRun {
    /// Serial console output, then anything QEMU itself printed.
    pub console: String,
    pub end: MachineEnd,
    pub elapsed: Duration,
    pub command: String,
    /// Each [`ConsoleAction`] marker seen, with the time since QEMU was started.
    pub marks: Vec<(String, Duration)>,
}

/// The QEMU binary the lab uses, or a clear error when it is not installed.
pub fn qemu_binary() -> Result<PathBuf> {
    find_qemu(&std::env::var(QEMU_ENV).unwrap_or_else(|_| "qemu-system-x86_64".into()))
}

/// The QEMU binary `name` (a path, or a name looked up on `PATH`).
fn find_qemu(name: &str) -> Result<PathBuf> {
    find_program(name).ok_or_else(|| LabError::Prerequisite {
        what: format!("QEMU binary `{name}` not found"),
        hint: "the lab needs Debian's qemu-system-x86 and seabios packages: run scripts/setup"
            .into(),
    })
}

/// The QEMU command line for `spec` (L1 kernel command line included), with QEMU's
/// human monitor on the Unix socket `monitor` when given (read at a hard timeout).
pub fn command(qemu: &Path, spec: &MachineSpec, monitor: Option<&Path>) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-accel",
        "tcg",
        "-M",
        "q35,kernel-irqchip=split",
        "-cpu",
        "max",
        "-smp",
        "1",
    ])
    .args(["-m", &format!("{}M", spec.memory_mib)])
    .args(["-device", "intel-iommu,intremap=on,caching-mode=on"]);
    for object in &spec.objects {
        cmd.args(["-object", object]);
    }
    if let Some(netdev) = &spec.netdev {
        cmd.args(["-netdev", netdev]);
    }
    for device in &spec.devices {
        cmd.args(["-device", device]);
    }
    match &spec.uefi {
        None => {
            cmd.args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
                "-display",
                "none",
            ])
            .arg("-kernel")
            .arg(&spec.kernel)
            .arg("-initrd")
            .arg(&spec.initramfs)
            .args(["-append", "console=ttyS0 intel_iommu=on panic=-1 quiet"]);
        }
        Some(uefi) => {
            // Not -nographic: with -serial stdio it claims stdio twice (UEFI-TPM.md).
            // The kernel command line is in the UKI on the disk.
            cmd.args([
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
                "-display",
                "none",
            ])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                uefi.firmware_code.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                uefi.firmware_vars.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=none,id=nodedisk,format=raw,file={}",
                uefi.disk.display()
            ))
            .args(["-device", "nvme,drive=nodedisk,serial=bulwark-node"]);
            if uefi.secure_boot {
                // Secure Boot's variables live in SMM-protected flash (UEFI-TPM.md);
                // QEMU merges this -M with the first.
                cmd.args(["-M", "smm=on"])
                    .args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            }
            if let Some(socket) = uefi.tpm_socket() {
                cmd.arg("-chardev")
                    .arg(format!("socket,id=chrtpm,path={}", socket.display()))
                    .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
                    .args(["-device", "tpm-crb,tpmdev=tpm0"]);
            }
        }
    }
    if let Some(path) = monitor {
        cmd.arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", path.display()));
    }
    cmd
}

/// Monitor commands whose answers say where a hung L1 stands: its CPU registers
/// (RIP, RFLAGS.IF, HLT state) and its local APIC (timer, pending interrupts).
const HANG_PROBES: [&str; 3] = ["info registers", "info lapic", "info irq"];

/// Asks QEMU's monitor at `socket` what L1's CPU is doing, and reads QEMU's own CPU
/// time, so that a hard timeout leaves evidence of why L1 stopped. Best effort:
/// every failure is written into the report instead.
fn hang_report(socket: &Path, pid: u32) -> String {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let mut report = String::from("\n--- L1 state at the hard timeout ---\n");
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // Fields 14 and 15 (utime, stime) follow the parenthesised command name.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .collect();
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
            report.push_str(&format!(
                "QEMU CPU time: user {:?} ticks, system {:?} ticks\n",
                ticks(11),
                ticks(12)
            ));
        }
        Err(e) => report.push_str(&format!("/proc/{pid}/stat: {e}\n")),
    }
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            report.push_str(&format!("monitor {}: {e}\n", socket.display()));
            return report;
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    for probe in HANG_PROBES {
        let _ = stream.write_all(format!("{probe}\n").as_bytes());
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    // Read until the monitor goes quiet for the read timeout (or 1 MiB).
    while answer.len() < 1 << 20 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    // The monitor echoes each typed command with terminal escapes: drop those lines.
    for line in String::from_utf8_lossy(&answer).lines() {
        if !line.contains('\u{1b}') {
            report.push_str(line.trim_end_matches('\r'));
            report.push('\n');
        }
    }
    report
}

/// Boots L1 and waits for it to power off, or kills it at the timeout.
pub fn boot(qemu: &Path, spec: &MachineSpec) -> Result<MachineRun> {
    boot_driven::<()>(qemu, spec, None).map(|(run, _)| run)
}

/// A host-side program run against a booted machine: started on its own thread when
/// `marker` first shows on the console; once it returns, the machine is asked to
/// power off (the ACPI power button) and must do so within a minute.
pub struct Driver<T> {
    pub marker: String,
    pub run: Box<dyn FnOnce() -> T + Send>,
}

impl<T> std::fmt::Debug for Driver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("marker", &self.marker)
            .finish_non_exhaustive()
    }
}

/// [`boot`], with a [`Driver`]; returns what the driver returned (`None`: its marker
/// never showed, or it panicked).
pub fn boot_driven<T: Send + 'static>(
    qemu: &Path,
    spec: &MachineSpec,
    driver: Option<Driver<T>>,
) -> Result<(MachineRun, Option<T>)> {
    let mut driver = driver;
    let mut driving: Option<std::thread::JoinHandle<T>> = None;
    let mut driven = None;
    static BOOTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let monitor = std::env::temp_dir().join(format!(
        "bulwark-lab-monitor-{}-{}.sock",
        std::process::id(),
        BOOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&monitor);
    // Started before QEMU (which connects at once) and stopped on every way out.
    let _tpm = match spec
        .uefi
        .as_ref()
        .and_then(|u| Some((u.tpm_dir.clone()?, u.tpm_socket()?)))
    {
        Some((dir, socket)) => Some(Swtpm::start(&dir, &socket)?),
        None => None,
    };
    let mut cmd = command(qemu, spec, Some(&monitor));
    let line = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| LabError::Command {
        command: line.clone(),
        status: "could not start".into(),
        output: e.to_string(),
    })?;
    let serial = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child
            .stdout
            .take()
            .map(|s| spawn_reader(Box::new(s), serial.clone())),
        child
            .stderr
            .take()
            .map(|s| spawn_reader(Box::new(s), Arc::new(Mutex::new(Vec::new())))),
    ];
    let mut hang = None;
    let mut marks = Vec::new();
    let mut pending: Vec<&ConsoleAction> = spec.console_actions.iter().collect();
    let mut deadline = spec.timeout;
    let end = loop {
        if !pending.is_empty() {
            let seen = String::from_utf8_lossy(&serial.lock().unwrap_or_else(|p| p.into_inner()))
                .into_owned();
            let at = start.elapsed();
            pending.retain(|action| {
                if !seen.contains(&action.marker) {
                    return true;
                }
                marks.push((action.marker.clone(), at));
                if let Some(command) = &action.monitor {
                    send_monitor(&monitor, command);
                }
                false
            });
            if let (true, Some(grace)) = (pending.is_empty(), spec.exit_after_actions) {
                deadline = deadline.min(at + grace);
            }
        }
        if driver.as_ref().is_some_and(|d| {
            String::from_utf8_lossy(&serial.lock().unwrap_or_else(|p| p.into_inner()))
                .contains(&d.marker)
        }) {
            if let Some(d) = driver.take() {
                marks.push((d.marker.clone(), start.elapsed()));
                driving = Some(std::thread::spawn(d.run));
            }
        }
        if driving.as_ref().is_some_and(|h| h.is_finished()) {
            if let Some(h) = driving.take() {
                driven = h.join().ok();
            }
            send_monitor(&monitor, "system_powerdown");
            deadline = deadline.min(start.elapsed() + Duration::from_secs(60));
        }
        match child.try_wait().map_err(LabError::io("waiting for QEMU"))? {
            Some(status) => break MachineEnd::Exited(status.to_string()),
            None if start.elapsed() >= deadline => {
                hang = Some(hang_report(&monitor, child.id()));
                // Killing can only fail if it already exited; the wait below reaps it either way.
                let _ = child.kill();
                let _ = child.wait();
                break MachineEnd::TimedOut {
                    after_secs: deadline.as_secs(),
                };
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let elapsed = start.elapsed();
    let mut console = String::new();
    for (reader, label) in readers.into_iter().zip(["", "\n--- QEMU stderr ---\n"]) {
        if let Some(reader) = reader {
            let bytes = reader.join().unwrap_or_default();
            if !bytes.is_empty() {
                console.push_str(label);
                console.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    if let Some(report) = hang {
        console.push_str(&report);
    }
    let _ = std::fs::remove_file(&monitor);
    // A driver still running when the machine ended finds it gone and returns.
    if let Some(h) = driving.take() {
        driven = h.join().ok();
    }
    Ok((
        MachineRun {
            console,
            end,
            elapsed,
            command: line,
            marks,
        },
        driven,
    ))
}

/// Types `command` into QEMU's human monitor at `socket` (best effort: a failure
/// shows as the action's effect missing).
fn send_monitor(socket: &Path, command: &str) {
    use std::io::Write;
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return;
    };
    let _ = stream.write_all(format!("{command}\n").as_bytes());
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    // Keep the connection until the monitor prompted again after the command (the
    // banner's prompt, then the one after it ran): a connection closed earlier can
    // drop the command unread.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if String::from_utf8_lossy(&answer).matches("(qemu)").count() >= 2 {
            break;
        }
    }
}

/// Reads `source` to its end into `sink` (shared, so the console can be watched
/// while QEMU runs) and returns the bytes.
fn spawn_reader(
    mut source: Box<dyn Read + Send>,
    sink: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        // A read error ends the capture; what was read so far is kept.
        while let Ok(n) = source.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buf[..n]);
        }
        std::mem::take(&mut *sink.lock().unwrap_or_else(|p| p.into_inner()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_qemu_says_how_to_install_it() {
        let err = find_qemu("/nonexistent/qemu-system-x86_64")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/qemu-system-x86_64") && err.contains("scripts/setup"),
            "{err}"
        );
    }

    #[test]
    fn the_l1_command_line_has_the_iommu_the_devices_and_tcg() {
        let spec = MachineSpec {
            kernel: "/k".into(),
            initramfs: "/i".into(),
            memory_mib: 512,
            devices: vec!["edu".into()],
            objects: vec![],
            netdev: None,
            timeout: Duration::from_secs(1),
            uefi: None,
            console_actions: vec![],
            exit_after_actions: None,
        };
        let line = describe(&command(
            Path::new("qemu"),
            &spec,
            Some(Path::new("/m.sock")),
        ));
        for part in [
            "-accel tcg",
            "-smp 1",
            "-m 512M",
            "intel-iommu",
            "-device edu",
            "-kernel /k",
            "-initrd /i",
            "intel_iommu=on",
            "-monitor unix:/m.sock,server=on,wait=off",
        ] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
    }

    #[test]
    fn the_uefi_command_line_boots_the_disk_with_firmware_and_tpm() {
        let spec = MachineSpec {
            uefi: Some(UefiBoot {
                disk: "/d.img".into(),
                firmware_code: "/code.fd".into(),
                firmware_vars: "/vars.fd".into(),
                tpm_dir: Some("/t".into()),
                secure_boot: false,
            }),
            ..spec(Duration::from_secs(1))
        };
        let line = describe(&command(Path::new("qemu"), &spec, None));
        for part in [
            "-accel tcg",
            "intel-iommu",
            "if=pflash,format=raw,unit=0,readonly=on,file=/code.fd",
            "if=pflash,format=raw,unit=1,file=/vars.fd",
            "if=none,id=nodedisk,format=raw,file=/d.img",
            "nvme,drive=nodedisk",
            "socket,id=chrtpm,path=/t/swtpm.sock",
            "-tpmdev emulator,id=tpm0,chardev=chrtpm",
            "tpm-crb,tpmdev=tpm0",
            "-serial stdio",
            "-display none",
        ] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
        for absent in ["-nographic", "-kernel", "-initrd", "-append", "smm=on"] {
            assert!(!line.contains(absent), "{absent:?} in {line}");
        }
        // With Secure Boot: SMM and secure pflash, as OVMF's secboot build needs.
        let sb = MachineSpec {
            uefi: Some(UefiBoot {
                disk: "/d.img".into(),
                firmware_code: "/code.fd".into(),
                firmware_vars: "/vars.fd".into(),
                tpm_dir: None,
                secure_boot: true,
            }),
            ..self::spec(Duration::from_secs(1))
        };
        let line = format!("{:?}", command(Path::new("qemu"), &sb, None));
        for part in [
            "\"-M\" \"smm=on\"",
            "driver=cfi.pflash01,property=secure,value=on",
        ] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
    }

    /// Processes whose command line mentions `needle`.
    fn processes_with(needle: &str) -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(needle))
            .collect()
    }

    #[test]
    fn swtpm_is_started_for_the_machine_and_stopped_after_it() {
        if find_program("swtpm").is_none() || find_program("swtpm_setup").is_none() {
            eprintln!("skipped: swtpm not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("lab-swtpm-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tpm")).unwrap();
        let needle = dir.join("tpm").display().to_string();
        // The fake QEMU reports whether swtpm runs while it does.
        let qemu = fake_qemu(
            "swtpm",
            &format!("test -S {needle}/swtpm.sock && echo tpm-socket-up; exit 0"),
        );
        let spec = MachineSpec {
            uefi: Some(UefiBoot {
                disk: "/d.img".into(),
                firmware_code: "/code.fd".into(),
                firmware_vars: "/vars.fd".into(),
                tpm_dir: Some(dir.join("tpm")),
                secure_boot: false,
            }),
            ..spec(Duration::from_secs(60))
        };
        let run = boot(&qemu, &spec).unwrap();
        std::fs::remove_file(&qemu).unwrap();
        assert!(run.console.contains("tpm-socket-up"), "{:?}", run.console);
        assert!(
            processes_with(&needle).is_empty(),
            "{:?}",
            processes_with(&needle)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A stand-in for QEMU: a shell script that ignores its arguments.
    ///
    /// Another test thread that forks while the script is still open for
    /// writing hands the write descriptor to its child until that child execs,
    /// and executing the script meanwhile fails with ETXTBSY. So the script is
    /// run once with `--probe` (which exits at once) until it executes.
    fn fake_qemu(name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path =
            std::env::temp_dir().join(format!("lab-fake-qemu-{}-{name}", std::process::id()));
        std::fs::write(
            &path,
            format!("#!/bin/sh\n[ \"$1\" = --probe ] && exit 0\n{body}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        for _ in 0..200 {
            match Command::new(&path).arg("--probe").status() {
                Ok(status) if status.success() => return path,
                Err(e) if e.raw_os_error() == Some(26) => {
                    // ETXTBSY: a sibling's child still holds the write descriptor.
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => panic!("fake QEMU {}: {other:?}", path.display()),
            }
        }
        panic!("fake QEMU {} stayed busy", path.display());
    }

    fn spec(timeout: Duration) -> MachineSpec {
        MachineSpec {
            kernel: "/k".into(),
            initramfs: "/i".into(),
            memory_mib: 64,
            devices: vec![],
            objects: vec![],
            netdev: None,
            timeout,
            uefi: None,
            console_actions: vec![],
            exit_after_actions: None,
        }
    }

    #[test]
    fn a_hanging_machine_is_killed_at_the_timeout_and_its_output_kept() {
        let qemu = fake_qemu("hang", "echo booting; exec sleep 60");
        let run = boot(&qemu, &spec(Duration::from_secs(2))).unwrap();
        std::fs::remove_file(&qemu).unwrap();
        assert_eq!(run.end, MachineEnd::TimedOut { after_secs: 2 });
        assert!(run.console.starts_with("booting"), "{:?}", run.console);
        // The fake has no monitor: the report says so instead of failing the run.
        assert!(
            run.console
                .contains("--- L1 state at the hard timeout ---\nQEMU CPU time")
                && run.console.contains("bulwark-lab-monitor-"),
            "{:?}",
            run.console
        );
    }

    #[test]
    fn a_machine_that_powers_off_is_collected_with_its_stderr() {
        let qemu = fake_qemu(
            "exit",
            "echo 'LAB-RESULT done'; echo 'qemu: warning' >&2; exit 3",
        );
        let run = boot(&qemu, &spec(Duration::from_secs(60))).unwrap();
        std::fs::remove_file(&qemu).unwrap();
        assert!(
            matches!(&run.end, MachineEnd::Exited(status) if status.contains('3')),
            "{:?}",
            run.end
        );
        assert!(
            run.console.contains("LAB-RESULT done\n"),
            "{:?}",
            run.console
        );
        assert!(
            run.console.contains("QEMU stderr ---\nqemu: warning"),
            "{:?}",
            run.console
        );
    }
}
