//! The node's boot sequence and its supervision loop. A PID 1 that exits panics the
//! kernel, and this node has no shell: every failure ends in a clear line on the
//! console and a power-off, never in a hang or a silent exit.

use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::bless::{BlessOutcome, BootBlesser, EFIVARFS};
use crate::config::{self, NodeInitConfig, CONFIG_PATH, STATE_DIR};
use crate::{health, measurements, network, rollback, root, state, sys};

/// The line the lab (and an operator on the serial console) waits for, followed by
/// the version: `bulwark-node: healthy version=N`.
pub const HEALTHY_MARKER: &str = "bulwark-node: healthy version=";

/// Seconds since the kernel started (CLOCK_BOOTTIME).
pub fn uptime() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default()
}

/// One line on the console (PID 1's stdout is `/dev/console`), with the uptime.
pub fn console(line: &str) {
    let t = uptime();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "[{:>5}.{:03}] bulwark-node: {line}",
        t.as_secs(),
        t.subsec_millis()
    );
    let _ = out.flush();
}

fn console_raw(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// What, where, type, flags, data.
type Mount = (
    &'static str,
    &'static str,
    &'static str,
    MsFlags,
    &'static str,
);

const EARLY_MOUNTS: &[Mount] = &[
    ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, ""),
    (
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        "mode=0755",
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=0755,size=64m",
    ),
    (
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=1777,size=256m",
    ),
    (
        "securityfs",
        "/sys/kernel/security",
        "securityfs",
        NOSUID_NODEV_NOEXEC,
        "",
    ),
];

/// Where the cgroup v2 hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup made for the VMs: bulwarkd's `jail.cgroup_parent` on a node. Each VM's
/// VMM gets `<parent>/<vm>` with its CPU, memory and pids limits.
pub const VM_CGROUP_PARENT: &str = "/sys/fs/cgroup/bulwark-vms";
/// The controllers the VMs' cgroups need.
const VM_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Mounts cgroup v2 and hands the VMs' controllers down to [`VM_CGROUP_PARENT`]
/// (what a service manager does on a distribution).
fn cgroups() -> Result<String, String> {
    mount_one(
        "cgroup2",
        CGROUP_ROOT,
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        "nsdelegate",
    )?;
    delegate_controllers(Path::new(CGROUP_ROOT), Path::new(VM_CGROUP_PARENT))?;
    Ok(format!(
        "cgroup v2 on {CGROUP_ROOT}: {} delegated to {VM_CGROUP_PARENT}",
        VM_CONTROLLERS.join(", ")
    ))
}

/// Enables [`VM_CONTROLLERS`] in `root`'s children, creates `parent` below it and
/// enables them in its children too. A controller the kernel lacks is an error
/// naming it.
fn delegate_controllers(root: &Path, parent: &Path) -> Result<(), String> {
    let listed = root.join("cgroup.controllers");
    let available = std::fs::read_to_string(&listed)
        .map_err(|e| format!("reading {}: {e}", listed.display()))?;
    let missing: Vec<&str> = VM_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !available.split_whitespace().any(|a| a == *c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "cgroup v2 controller(s) {} not in the kernel ({}: {:?})",
            missing.join(", "),
            listed.display(),
            available.trim()
        ));
    }
    let enable: String = VM_CONTROLLERS.map(|c| format!("+{c}")).join(" ");
    let write = |dir: &Path| {
        let f = dir.join("cgroup.subtree_control");
        std::fs::write(&f, &enable)
            .map_err(|e| format!("writing {enable:?} to {}: {e}", f.display()))
    };
    write(root)?;
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    write(parent)
}

fn mount_one(
    what: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
    match mount(Some(what), target, Some(fstype), flags, Some(data)) {
        // Already mounted (devtmpfs with CONFIG_DEVTMPFS_MOUNT): fine.
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(format!("mounting {fstype} on {target}: {e}")),
    }
}

/// A fatal error: said on the console, then a power-off after the delay.
fn fatal(what: &str, delay: Duration) -> ! {
    console(&format!("FATAL: {what}"));
    console(&format!(
        "FATAL: this node cannot start; powering off in {} s (it has no shell to wait in)",
        delay.as_secs()
    ));
    std::thread::sleep(delay);
    power_off(&format!("fatal error: {what}"), &[])
}

/// Unmounts `mounts` in reverse order (detaching what is busy), then syncs: what
/// both ends of a node's life do before the reboot system call.
fn unmount_and_sync(mounts: &[PathBuf]) {
    for m in mounts.iter().rev() {
        if let Err(e) = umount2(m.as_path(), MntFlags::empty()) {
            console(&format!("unmounting {}: {e}; detaching it", m.display()));
            let _ = umount2(m.as_path(), MntFlags::MNT_DETACH);
        }
    }
    nix::unistd::sync();
}

/// Syncs, unmounts `mounts` and powers off. Never returns.
pub fn power_off(reason: &str, mounts: &[PathBuf]) -> ! {
    console(&format!("powering off: {reason}"));
    unmount_and_sync(mounts);
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF).unwrap_err();
    console(&format!("power-off failed: {err}; halting here"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// What happened to the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateMount {
    /// The state partition is mounted.
    Persistent(PathBuf),
    /// A tmpfs, and why.
    Volatile(String),
}

/// The ACPI power button's input device name (drivers/acpi/button.c).
const POWER_BUTTON: &str = "Power Button";
/// `EV_KEY` and `KEY_POWER` of linux/input-event-codes.h.
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: a timeval (16 bytes), type, code, value.
const INPUT_EVENT_SIZE: usize = 24;

/// The ACPI power button's event devices (`/dev/input/eventN` whose
/// `/sys/class/input/eventN/device/name` is "Power Button"), opened non-blocking: a
/// BMC's soft power-off presses it. Needs the `button` and `evdev` modules.
fn open_power_buttons() -> Vec<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(entries) = std::fs::read_dir("/sys/class/input") else {
        return Vec::new();
    };
    let mut buttons = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let device = std::fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if device.trim() != POWER_BUTTON {
            continue;
        }
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(Path::new("/dev/input").join(&name))
        {
            Ok(f) => buttons.push(f),
            Err(e) => console(&format!("warning: opening /dev/input/{name}: {e}")),
        }
    }
    buttons
}

/// Whether `bytes` (whole `input_event`s) hold a press of KEY_POWER.
pub fn power_key_pressed(bytes: &[u8]) -> bool {
    bytes.chunks_exact(INPUT_EVENT_SIZE).any(|e| {
        let ty = u16::from_ne_bytes([e[16], e[17]]);
        let code = u16::from_ne_bytes([e[18], e[19]]);
        let value = i32::from_ne_bytes([e[20], e[21], e[22], e[23]]);
        ty == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// The whole boot, then supervision until a power-off signal. Never returns.
pub fn run(blesser: &dyn BootBlesser) -> ! {
    let boot_delay = Duration::from_secs(30);
    console(&format!(
        "starting (node init {})",
        env!("CARGO_PKG_VERSION")
    ));
    // First of all, while nothing else is mounted: out of the initramfs (rootfs),
    // which pivot_root cannot leave, into a tmpfs root.
    match root::leave_initramfs() {
        Ok(Some(moved)) => console(&format!(
            "root: moved the initramfs into a tmpfs ({} files, {} bytes) so that VM jails can pivot_root",
            moved.files, moved.bytes
        )),
        Ok(None) => {}
        Err(e) => fatal(
            &format!("leaving the initramfs for a tmpfs root: {e}"),
            boot_delay,
        ),
    }
    // Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting at once.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        console(&format!("warning: cannot route ctrl-alt-del to init: {e}"));
    }
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGPWR,
        Signal::SIGINT,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    // Children get an empty mask back before exec (`sys::unblock_signals_in_child`).
    if let Err(e) = mask.thread_block() {
        fatal(&format!("blocking signals: {e}"), boot_delay);
    }
    let signals = match SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
    {
        Ok(fd) => fd,
        Err(e) => fatal(&format!("signalfd: {e}"), boot_delay),
    };
    for (what, target, fstype, flags, data) in EARLY_MOUNTS {
        if let Err(e) = mount_one(what, target, fstype, *flags, data) {
            if *fstype == "securityfs" {
                console(&format!("warning: {e} (no TPM event log for the verifier)"));
            } else {
                fatal(&e, boot_delay);
            }
        }
    }
    match cgroups() {
        Ok(line) => console(&line),
        Err(e) => console(&format!(
            "warning: {e} (a bulwarkd with jail.cgroup_parent refuses to start VMs; without it they run with no CPU, memory or pids limit)"
        )),
    }
    let config = match NodeInitConfig::load(Path::new(CONFIG_PATH)) {
        Ok(c) => c,
        Err(e) => fatal(&format!("config: {e}"), boot_delay),
    };
    let delay = Duration::from_secs(config.fatal_poweroff_delay_secs);
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let version = config::version_from_cmdline(&cmdline)
        .or_else(|| config.version.clone())
        .unwrap_or_else(|| "unknown".into());
    console(&format!("node image version {version}"));

    if let Err(e) = load_modules(&config) {
        fatal(&e, delay);
    }
    if Path::new("/sys/firmware/efi").is_dir() {
        if let Err(e) = mount_one("efivarfs", EFIVARFS, "efivarfs", NOSUID_NODEV_NOEXEC, "") {
            console(&format!(
                "warning: {e} (boot blessing cannot read the loader's variables)"
            ));
        }
        console(&match crate::bless::secure_boot(Path::new(EFIVARFS)) {
            Ok(Some(true)) => "UEFI Secure Boot: enforced".to_string(),
            Ok(Some(false)) => "UEFI Secure Boot: off".to_string(),
            Ok(None) => "UEFI Secure Boot: not supported by this firmware".to_string(),
            Err(e) => format!("warning: UEFI Secure Boot state unknown: {e}"),
        });
    } else {
        console("warning: not booted through UEFI (no /sys/firmware/efi): no boot counting");
    }
    match network::loopback_up() {
        Ok(()) => console("loopback up"),
        Err(e) => console(&format!("warning: setting lo up: {e}")),
    }
    if let Some(net) = &config.network {
        if let Err(e) = network::configure(net, &mut |line| console(line)) {
            fatal(&e, delay);
        }
    }
    let mut mounts = Vec::new();
    match mount_state(&config) {
        StateMount::Persistent(dev) => {
            console(&format!("state: {} mounted on {STATE_DIR}", dev.display()));
            mounts.push(PathBuf::from(STATE_DIR));
        }
        StateMount::Volatile(why) => {
            for _ in 0..3 {
                console("WARNING: STATE IS NOT PERSISTENT");
            }
            console(&format!(
                "WARNING: {STATE_DIR} is a tmpfs ({why}): bulwarkd's database, images and VMs are lost at power-off"
            ));
            if let Err(e) = mount_one(
                "tmpfs",
                STATE_DIR,
                "tmpfs",
                MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
                "mode=0755",
            ) {
                fatal(&e, delay);
            }
        }
    }
    // The disk's partitions are known by now (the state partition was waited for).
    match rollback::check(
        &version,
        Path::new(state::SYS_CLASS_BLOCK),
        Path::new(EFIVARFS),
    ) {
        Ok(rollback::FloorCheck::Passed(line)) => console(&line),
        Ok(rollback::FloorCheck::NotChecked(why)) => console(&format!("warning: {why}")),
        Err(e) => fatal(&e, delay),
    }
    if let Some(dir) = config.bulwarkd.api_sock.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            fatal(&format!("creating {}: {e}", dir.display()), delay);
        }
    }
    console(&format!(
        "TPM: {}",
        if Path::new("/dev/tpm0").exists() {
            "/dev/tpm0 present"
        } else {
            "none (/dev/tpm0 missing)"
        }
    ));
    let buttons = open_power_buttons();
    if buttons.is_empty() {
        console("warning: no ACPI power button (modules button and evdev): only signals power off");
    } else {
        console("the ACPI power button powers off");
    }
    let trial = blesser.trial();
    if let Some(entry) = &trial {
        console(&format!(
            "this boot is a trial of {entry}: bulwarkd has {} s to become healthy, or the node reboots and the boot loader falls back",
            config.trial_health_deadline_secs
        ));
    }
    let mut supervisor = Supervisor::new(&config, version, blesser, trial);
    let end = supervisor.run(&signals, &buttons);
    supervisor.stop();
    match end {
        End::PowerOff(reason) => power_off(&reason, &mounts),
        End::Reboot(reason) => reboot(&reason, &mounts),
    }
}

/// How supervision ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// A power-off request, with what asked.
    PowerOff(String),
    /// A trial boot that did not become healthy in time.
    Reboot(String),
}

/// Syncs, unmounts `mounts` and reboots. Never returns.
fn reboot(reason: &str, mounts: &[PathBuf]) -> ! {
    console(&format!("rebooting: {reason}"));
    unmount_and_sync(mounts);
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT).unwrap_err();
    console(&format!("reboot failed: {err}; powering off instead"));
    power_off(reason, &[])
}

fn load_modules(config: &NodeInitConfig) -> Result<(), String> {
    if config.modules.is_empty() && config.optional_modules.is_empty() {
        return Ok(());
    }
    let t0 = Instant::now();
    let index = bulwark_kmod::ModuleIndex::scan(&config.module_dir).map_err(|e| e.to_string())?;
    let mut loaded = Vec::new();
    for module in index
        .load_order(&config.modules)
        .map_err(|e| e.to_string())?
    {
        if let bulwark_kmod::LoadOutcome::Loaded(_) = module.load().map_err(|e| e.to_string())? {
            loaded.push(module.name.clone());
        }
    }
    for name in &config.optional_modules {
        let result = index
            .load_order(std::slice::from_ref(name))
            .map_err(|e| e.to_string())
            .and_then(|order| {
                // The outcome of the named module itself (the last, after its dependencies).
                let mut last = bulwark_kmod::LoadOutcome::AlreadyPresent;
                for m in &order {
                    last = m.load().map_err(|e| e.to_string())?;
                }
                Ok(last)
            });
        match result {
            Ok(bulwark_kmod::LoadOutcome::Loaded(_)) => loaded.push(name.clone()),
            // kvm_intel on an AMD CPU once kvm_amd holds kvm: EEXIST.
            Ok(bulwark_kmod::LoadOutcome::AlreadyPresent) => {
                console(&format!("optional module {name}: already present or another vendor's module holds its place"))
            }
            Err(e) => console(&format!("optional module {name} not loaded: {e}")),
        }
    }
    console(&format!(
        "modules loaded in {} ms: {}",
        t0.elapsed().as_millis(),
        loaded.join(" ")
    ));
    if !Path::new("/dev/kvm").exists() {
        console("warning: no /dev/kvm: this node cannot run VMs");
    }
    Ok(())
}

fn mount_state(config: &NodeInitConfig) -> StateMount {
    let st = &config.state;
    if st.device.is_none() && st.partition_label.is_none() {
        return StateMount::Volatile("no state partition configured".into());
    }
    let deadline = Instant::now() + Duration::from_secs(st.wait_secs);
    let device = loop {
        let found = match (&st.device, &st.partition_label) {
            (Some(d), _) if d.exists() => Ok(Some(d.clone())),
            (_, Some(label)) => state::find_by_partlabel(Path::new(state::SYS_CLASS_BLOCK), label),
            _ => Ok(None),
        };
        match found {
            Ok(Some(d)) if d.exists() => break d,
            Err(e) => return StateMount::Volatile(e),
            _ if Instant::now() >= deadline => {
                return StateMount::Volatile(format!(
                    "no state partition ({}) after {} s",
                    describe_state(config),
                    st.wait_secs
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    if let Err(e) = std::fs::create_dir_all(STATE_DIR) {
        return StateMount::Volatile(format!("creating {STATE_DIR}: {e}"));
    }
    match mount(
        Some(device.as_path()),
        STATE_DIR,
        Some(st.fstype.as_str()),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    ) {
        Ok(()) => StateMount::Persistent(device),
        Err(e) => StateMount::Volatile(format!(
            "mounting {} ({}) on {STATE_DIR}: {e}",
            device.display(),
            st.fstype
        )),
    }
}

fn describe_state(config: &NodeInitConfig) -> String {
    let mut parts = Vec::new();
    if let Some(d) = &config.state.device {
        parts.push(d.display().to_string());
    }
    if let Some(l) = &config.state.partition_label {
        parts.push(format!("partition label {l:?}"));
    }
    parts.join(" or ")
}

/// bulwarkd under supervision.
struct Supervisor<'a> {
    config: &'a NodeInitConfig,
    version: String,
    blesser: &'a dyn BootBlesser,
    pid: Option<Pid>,
    started: Instant,
    healthy_since: Option<Instant>,
    health_failures: u32,
    restarts: u32,
    next_start: Instant,
    next_probe: Instant,
    last_probe: String,
    blessed: bool,
    /// The entry this boot is a trial of, and when the boot's supervision began.
    trial: Option<String>,
    supervising_since: Instant,
}

impl<'a> Supervisor<'a> {
    fn new(
        config: &'a NodeInitConfig,
        version: String,
        blesser: &'a dyn BootBlesser,
        trial: Option<String>,
    ) -> Self {
        let now = Instant::now();
        Supervisor {
            config,
            version,
            blesser,
            pid: None,
            started: now,
            healthy_since: None,
            health_failures: 0,
            restarts: 0,
            next_start: now,
            next_probe: now,
            last_probe: String::new(),
            blessed: false,
            trial,
            supervising_since: now,
        }
    }

    /// A trial boot that has not been healthy by its deadline: why it must end.
    fn trial_expired(&self) -> Option<String> {
        let entry = self.trial.as_ref()?;
        let deadline = Duration::from_secs(self.config.trial_health_deadline_secs);
        (!self.blessed && self.supervising_since.elapsed() >= deadline).then(|| {
            format!(
                "the trial of {entry} did not get bulwarkd healthy within {} s; the boot loader falls back to the previous slot",
                deadline.as_secs()
            )
        })
    }

    /// Supervises until a power-off signal or an expired trial.
    fn run(&mut self, signals: &SignalFd, buttons: &[std::fs::File]) -> End {
        use std::io::Read as _;
        loop {
            {
                let mut fds: Vec<PollFd> = std::iter::once(signals.as_fd())
                    .chain(buttons.iter().map(|b| b.as_fd()))
                    .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                    .collect();
                let _ = poll(&mut fds, PollTimeout::from(200u16));
            }
            for mut button in buttons {
                let mut buf = [0u8; INPUT_EVENT_SIZE * 16];
                while let Ok(n) = button.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if power_key_pressed(&buf[..n]) {
                        return End::PowerOff("the ACPI power button".into());
                    }
                }
            }
            while let Ok(Some(info)) = signals.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGTERM) => return End::PowerOff("SIGTERM".into()),
                    Ok(Signal::SIGPWR) => {
                        return End::PowerOff("SIGPWR (power failure / ACPI power button)".into())
                    }
                    Ok(Signal::SIGINT) => return End::PowerOff("ctrl-alt-del".into()),
                    _ => {}
                }
            }
            if let Some(why) = self.trial_expired() {
                return End::Reboot(why);
            }
            self.reap();
            let now = Instant::now();
            if self.pid.is_none() && now >= self.next_start {
                self.start();
            }
            if self.pid.is_some() && now >= self.next_probe {
                self.probe();
            }
        }
    }

    fn start(&mut self) {
        let b = &self.config.bulwarkd;
        let _ = std::fs::remove_file(&b.api_sock);
        let mut cmd = Command::new(&b.bin);
        cmd.arg("--state-dir")
            .arg(STATE_DIR)
            .arg("--api-sock")
            .arg(&b.api_sock)
            .arg("--config")
            .arg(&b.config)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(&b.env)
            .stdin(Stdio::null())
            .current_dir("/");
        sys::unblock_signals_in_child(&mut cmd);
        self.started = Instant::now();
        self.healthy_since = None;
        self.health_failures = 0;
        match cmd.spawn() {
            Ok(child) => {
                let pid = Pid::from_raw(child.id() as i32);
                // The child is reaped by `reap` (waitpid on any child), not through `child`.
                drop(child);
                console(&format!("bulwarkd started (pid {pid})"));
                self.pid = Some(pid);
                self.next_probe = Instant::now() + Duration::from_millis(200);
            }
            Err(e) => {
                console(&format!("starting {}: {e}", b.bin.display()));
                self.schedule_restart();
            }
        }
    }

    fn schedule_restart(&mut self) {
        // A bulwarkd that was healthy for a minute starts the backoff over.
        if self
            .healthy_since
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.restarts = 0;
        }
        let delay = self.config.bulwarkd.backoff(self.restarts);
        self.restarts = self.restarts.saturating_add(1);
        self.next_start = Instant::now() + delay;
        self.healthy_since = None;
        console(&format!(
            "restarting bulwarkd in {} ms (restart {})",
            delay.as_millis(),
            self.restarts
        ));
    }

    /// Reaps every exited child: bulwarkd, and orphans re-parented to init.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    if status.pid().is_some() && status.pid() == self.pid {
                        console(&format!(
                            "bulwarkd exited after {:.1} s: {}",
                            self.started.elapsed().as_secs_f64(),
                            describe_exit(&status)
                        ));
                        self.pid = None;
                        self.schedule_restart();
                    }
                }
            }
        }
    }

    fn probe(&mut self) {
        let Some(pid) = self.pid else { return };
        let sock = &self.config.bulwarkd.api_sock;
        match health::probe(sock) {
            Ok(()) => {
                self.health_failures = 0;
                if self.healthy_since.is_none() {
                    self.healthy_since = Some(Instant::now());
                    console(&format!(
                        "bulwarkd healthy {:.1} s after its start (GET /health on {})",
                        self.started.elapsed().as_secs_f64(),
                        sock.display()
                    ));
                    console_raw(&format!("{HEALTHY_MARKER}{}", self.version));
                    if !self.blessed {
                        self.blessed = true;
                        self.bless();
                        if self.config.report_measurements {
                            for line in measurements::report(
                                Path::new(measurements::PCR_DIR),
                                Path::new(measurements::EVENT_LOG),
                            ) {
                                console_raw(&line);
                            }
                        }
                        console("boot complete: bulwarkd healthy, boot blessing done");
                    }
                }
                self.next_probe = Instant::now() + Duration::from_secs(5);
            }
            Err(e) => {
                self.health_failures += 1;
                if self.healthy_since.is_some() {
                    if self.health_failures >= 3 {
                        console(&format!("bulwarkd unhealthy: {e}"));
                        self.healthy_since = None;
                    }
                } else if self.started.elapsed()
                    >= Duration::from_secs(self.config.bulwarkd.health_timeout_secs)
                {
                    console(&format!(
                        "bulwarkd not healthy {} s after its start ({e}); killing it",
                        self.config.bulwarkd.health_timeout_secs
                    ));
                    let _ = kill(pid, Signal::SIGKILL);
                } else if e != self.last_probe && self.started.elapsed() > Duration::from_secs(5) {
                    console(&format!("waiting for bulwarkd: {e}"));
                }
                self.last_probe = e;
                self.next_probe = Instant::now() + Duration::from_millis(250);
            }
        }
    }

    fn bless(&self) {
        match self.blesser.bless() {
            Ok(BlessOutcome::NotCounting) => console(
                "boot blessing: the boot loader counts no tries for this boot; nothing to bless",
            ),
            Ok(BlessOutcome::Blessed { from, to }) => {
                console(&format!("boot blessed: {from} -> {to}"))
            }
            Err(e) => console(&format!("boot blessing failed: {e}")),
        }
    }

    /// Stops bulwarkd: SIGTERM, up to 10 s, then SIGKILL.
    fn stop(&mut self) {
        let Some(pid) = self.pid else { return };
        let masks: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.starts_with("SigBlk") || l.starts_with("SigIgn") || l.starts_with("SigCgt")
            })
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        console(&format!(
            "stopping bulwarkd (pid {pid}; {})",
            masks.join(", ")
        ));
        if let Err(e) = kill(pid, Signal::SIGTERM) {
            console(&format!("SIGTERM to bulwarkd: {e}"));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pid.is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) if status.pid() == Some(pid) => {
                        console(&format!("bulwarkd stopped: {}", describe_exit(&status)));
                        self.pid = None;
                    }
                    Ok(_) => {}
                }
            }
        }
        if self.pid.is_some() {
            console("bulwarkd did not stop in 10 s; killing it");
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

fn describe_exit(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "killed by {sig}{}",
                if *core { " (core dumped)" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vms_controllers_are_delegated_or_the_missing_one_named() {
        let root = std::env::temp_dir().join(format!("bulwark-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let parent = root.join("bulwark-vms");
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory\n").unwrap();
        let e = delegate_controllers(&root, &parent).unwrap_err();
        assert!(e.contains("controller(s) pids not in the kernel"), "{e}");
        assert!(!parent.exists());
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids\n",
        )
        .unwrap();
        delegate_controllers(&root, &parent).unwrap();
        for d in [&root, &parent] {
            assert_eq!(
                std::fs::read_to_string(d.join("cgroup.subtree_control")).unwrap(),
                "+cpu +memory +pids"
            );
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    fn event(ty: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&ty.to_ne_bytes());
        e.extend_from_slice(&code.to_ne_bytes());
        e.extend_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_power_key_press_powers_off() {
        let syn = event(0, 0, 0);
        let press = [event(EV_KEY, KEY_POWER, 1), syn.clone()].concat();
        let release = [event(EV_KEY, KEY_POWER, 0), syn.clone()].concat();
        let other = [event(EV_KEY, 30, 1), syn].concat();
        assert!(power_key_pressed(&press));
        assert!(power_key_pressed(&[other.clone(), press].concat()));
        assert!(!power_key_pressed(&release));
        assert!(!power_key_pressed(&other));
        assert!(!power_key_pressed(&[1, 2, 3]));
    }

    #[derive(Debug)]
    struct NoBlessing;
    impl BootBlesser for NoBlessing {
        fn bless(&self) -> Result<BlessOutcome, crate::bless::BlessError> {
            Ok(BlessOutcome::NotCounting)
        }
    }

    #[test]
    fn only_a_trial_boot_that_never_got_healthy_reboots_after_its_deadline() {
        let config = NodeInitConfig::parse(r#"{"trial_health_deadline_secs": 0}"#).unwrap();
        let entry = r"\EFI\Linux\bulwark-node-2+0-1.efi".to_string();
        let mut s = Supervisor::new(&config, "2".into(), &NoBlessing, Some(entry.clone()));
        let why = s.trial_expired().unwrap();
        assert!(why.contains(&entry) && why.contains("falls back"), "{why}");
        // Healthy once (blessed): the trial is over, whatever bulwarkd does next.
        s.blessed = true;
        assert_eq!(s.trial_expired(), None);
        // Not a trial: never.
        let s = Supervisor::new(&config, "2".into(), &NoBlessing, None);
        assert_eq!(s.trial_expired(), None);
        // A trial within its deadline: not yet.
        let config = NodeInitConfig::parse(r#"{"trial_health_deadline_secs": 3600}"#).unwrap();
        let s = Supervisor::new(&config, "2".into(), &NoBlessing, Some(entry));
        assert_eq!(s.trial_expired(), None);
        assert_eq!(
            NodeInitConfig::parse("{}")
                .unwrap()
                .trial_health_deadline_secs,
            300
        );
    }
}
