//! The boot sequence, in order (`docs/guest-init.md`): early mounts, the transport
//! modules and the host channel, the configuration, the modules, the verified root,
//! the GPUs, the bridges, the workload; then its end, and the power-off. Any failure
//! is a [`Failure`]: reported on the console and the host channel, then power-off.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_guest_protocol::{
    BridgeStatus, ExitReport, GpuPresence, GuestMessage, Hello, ModulesStatus, Progress, Refusal,
    RefusalReason, RootStatus, Stage, Status, PROTOCOL_VERSION,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

use crate::channel::{Channel, PendingQueue};
use crate::config::{self, Cmdline, Config, VerifyMode};
use crate::pid1::{self, console, uptime_us};
use crate::stop::StopRequest;
use crate::{bridge, devices, gpu, modules, scratch, verity, view, workload};

/// Where the image's kernel modules are.
pub const MODULES_DIR: &str = "/lib/modules";
/// Modules loaded before the configuration is read, when the image ships them: the
/// virtio transports and vsock, so that even a refused configuration reaches the host.
pub const TRANSPORT_MODULES: &[&str] = &["virtio_mmio", "virtio_pci", "vmw_vsock_virtio_transport"];
/// How long to wait for the host channel's listener.
const CHANNEL_WAIT: Duration = Duration::from_secs(10);
/// How long the last messages may take to reach the host before the power-off.
const FINAL_FLUSH: Duration = Duration::from_secs(3);

/// Why the boot stops.
#[derive(Debug)]
pub struct Failure {
    /// Machine-readable reason.
    pub reason: RefusalReason,
    /// Human-readable message.
    pub message: String,
}

fn fail(reason: RefusalReason) -> impl FnOnce(String) -> Failure {
    move |message| Failure { reason, message }
}

/// The stage being worked on (for refusals and the panic hook).
static STAGE: Mutex<Stage> = Mutex::new(Stage::InitStarted);

/// The current stage.
pub fn current_stage() -> Stage {
    *STAGE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reports and runs `bulwark-init` to the end; never returns.
pub fn main() -> ! {
    install_panic_hook();
    console(&format!(
        "bulwark-init {} started (pid {}, uptime {} s)",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        pid1::secs(uptime_us())
    ));
    if let Err(e) = pid1::mount_early() {
        pid1::power_off(&format!("early mounts failed: {e}"));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => pid1::power_off(&format!("starting the runtime: {e}")),
    };
    let stop = Arc::new(StopRequest::default());
    let (channel, pending) = Channel::new(stop.clone());
    let result = runtime.block_on(boot(&channel, pending, &stop));
    // Whatever the boot left running (bridges, pumps) stops here.
    drop(runtime);
    match result {
        Ok(exit) => {
            let reason = match (exit.code, &exit.signal_name) {
                (Some(c), _) => format!("workload exited with status {c}"),
                (_, Some(s)) => format!("workload killed by {s}"),
                _ => "workload ended".into(),
            };
            finish(&channel, &reason)
        }
        Err(f) => {
            let stage = current_stage();
            console(&format!(
                "REFUSED ({:?} at {:?}): {}",
                f.reason, stage, f.message
            ));
            channel.send(GuestMessage::Refusal(Refusal::new(
                f.reason,
                stage,
                f.message.clone(),
            )));
            finish(&channel, &format!("refused: {}", f.message))
        }
    }
}

fn finish(channel: &Channel, reason: &str) -> ! {
    channel.send(GuestMessage::PowerOff {
        reason: clamp_text(reason),
    });
    channel.flush(FINAL_FLUSH);
    crate::channel::linger(FINAL_FLUSH);
    pid1::power_off(reason)
}

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if pid1::CaughtPanics::active() {
            console(&format!("caught panic in a guarded driver call: {info}"));
            return;
        }
        let stage = current_stage();
        let message = format!("bulwark-init panicked at {stage:?}: {info}");
        console(&message);
        crate::channel::emergency_send(&GuestMessage::Refusal(Refusal::new(
            RefusalReason::Panic,
            stage,
            message,
        )));
        crate::channel::emergency_send(&GuestMessage::PowerOff {
            reason: "panic".into(),
        });
        crate::channel::linger(Duration::from_secs(1));
        pid1::power_off("panic");
    }));
}

/// `text` cut to the protocol's text limit.
fn clamp_text(text: &str) -> String {
    let mut t = text.to_owned();
    bulwark_guest_protocol::truncate_utf8(&mut t, bulwark_guest_protocol::MAX_TEXT);
    t
}

/// Enters `stage`: the console, the host channel, and the test hook.
fn reach(channel: &Channel, cmdline: Option<&Cmdline>, stage: Stage, detail: String) {
    *STAGE.lock().unwrap_or_else(|p| p.into_inner()) = stage;
    let uptime_us = uptime_us();
    console(&format!("{stage:?}: {detail}"));
    channel.send(GuestMessage::Progress(Progress {
        stage,
        uptime_us,
        detail: clamp_text(&detail),
    }));
    test_hook(cmdline, stage);
}

#[cfg(feature = "test-hooks")]
fn test_hook(cmdline: Option<&Cmdline>, stage: Stage) {
    if let Some(want) = cmdline.and_then(|c| c.test_panic.as_deref()) {
        let name = serde_json::to_value(stage)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if want == name {
            panic!("test hook: bulwark.test_panic={want}");
        }
    }
}

#[cfg(not(feature = "test-hooks"))]
fn test_hook(_: Option<&Cmdline>, _: Stage) {}

/// A stop asked for before the workload started ends the boot here.
fn check_stop(stop: &StopRequest) -> Result<(), Failure> {
    match stop.reason() {
        Some(why) => Err(Failure {
            reason: RefusalReason::Stopped,
            message: format!("stopped before the workload started: {why}"),
        }),
        None => Ok(()),
    }
}

async fn boot(
    channel: &Channel,
    pending: PendingQueue,
    stop: &Arc<StopRequest>,
) -> Result<ExitReport, Failure> {
    crate::stop::watch_signals(stop.clone()).map_err(fail(RefusalReason::Internal))?;
    reach(
        channel,
        None,
        Stage::InitStarted,
        format!("bulwark-init {}", env!("CARGO_PKG_VERSION")),
    );
    // The command line is parsed first, but a refusal waits until the host channel is
    // up, so the host hears it.
    let cmdline_text = pid1::read_trimmed("/proc/cmdline");
    let cmdline = config::parse_cmdline(&cmdline_text);
    let port = cmdline
        .as_ref()
        .map(|c| c.channel_port)
        .unwrap_or(bulwark_guest_protocol::HOST_CHANNEL_PORT);

    let index = modules::ModuleIndex::scan(Path::new(MODULES_DIR))
        .map_err(|e| e.to_string())
        .map_err(fail(RefusalReason::Module))?;
    let transports: Vec<String> = TRANSPORT_MODULES
        .iter()
        .filter(|m| index.contains(m))
        .map(|m| m.to_string())
        .collect();
    let t0 = Instant::now();
    let mut loaded = load_modules(&index, &transports)?;
    crate::sys::net::loopback_up().map_err(fail(RefusalReason::Internal))?;

    let hello = GuestMessage::Hello(Hello {
        protocol: u16::from(PROTOCOL_VERSION),
        init_version: env!("CARGO_PKG_VERSION").into(),
        kernel_release: clamp_text(&pid1::read_trimmed("/proc/sys/kernel/osrelease")),
        boot_id: clamp_text(&pid1::read_trimmed("/proc/sys/kernel/random/boot_id")),
        uptime_us: uptime_us(),
    });
    let connect = {
        let ch = channel.clone();
        tokio::task::spawn_blocking(move || ch.connect(pending, port, CHANNEL_WAIT, hello))
    };
    connect
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(fail(RefusalReason::Internal))?;
    let cmdline = cmdline
        .map_err(|e| e.to_string())
        .map_err(fail(RefusalReason::Config))?;
    reach(
        channel,
        Some(&cmdline),
        Stage::HostChannelUp,
        format!("vsock port {port}"),
    );
    check_stop(stop)?;

    // Configuration.
    let cfg = read_config(cmdline)?;
    let cmdline = cfg.cmdline.clone();
    reach(
        channel,
        Some(&cmdline),
        Stage::ConfigLoaded,
        format!(
            "workload {:?}, {} module(s), {} bridge(s), GPU required: {}",
            cfg.file.workload.argv[0],
            cfg.file.modules.len(),
            cfg.file.ports.len(),
            cfg.file.gpu.required
        ),
    );
    check_stop(stop)?;

    // Modules, then no more.
    let (more, present) = {
        let mut wanted = Vec::new();
        let mut present = Vec::new();
        for m in &cfg.file.modules {
            let name = m.replace('-', "_");
            if !index.contains(&name) && modules::is_present(&name) {
                present.push(name);
            } else {
                wanted.push(name);
            }
        }
        (load_modules(&index, &wanted)?, present)
    };
    loaded.extend(more);
    modules::disable_module_loading()
        .map_err(|e| e.to_string())
        .map_err(fail(RefusalReason::Module))?;
    channel.send(GuestMessage::Status(Status::Modules(ModulesStatus {
        loaded: loaded.clone(),
        present,
        loading_disabled: true,
        elapsed_us: t0.elapsed().as_micros() as u64,
    })));
    reach(
        channel,
        Some(&cmdline),
        Stage::ModulesLoaded,
        format!(
            "{} loaded ({}), loading disabled",
            loaded.len(),
            loaded.join(",")
        ),
    );
    check_stop(stop)?;

    // The verified root.
    let root = &cfg.file.rootfs;
    let disk = verity::find_disk_by_serial(Path::new("/sys/block"), &root.disk)
        .map_err(|e| e.to_string())
        .map_err(fail(RefusalReason::Mount))?;
    let dm = verity::open_verity("bulwark-root", &disk, &cfg.verity)
        .map_err(|e| e.to_string())
        .map_err(fail(RefusalReason::Mount))?;
    let data_bytes = cfg.verity.data_bytes();
    let t = Instant::now();
    let fully_verified = root.verify == VerifyMode::Full;
    if fully_verified {
        let path = dm.path().to_path_buf();
        tokio::task::spawn_blocking(move || verity::verify_all(&path, data_bytes))
            .await
            .map_err(|e| e.to_string())
            .map_err(fail(RefusalReason::Internal))?
            .map_err(|e| Failure {
                reason: if e.is_corruption() {
                    RefusalReason::RootfsVerification
                } else {
                    RefusalReason::Mount
                },
                message: e.to_string(),
            })?;
    }
    let elapsed_us = t.elapsed().as_micros() as u64;
    channel.send(GuestMessage::Status(Status::Root(RootStatus {
        disk: root.disk.clone(),
        root_hash: cfg.verity.root_hash_hex(),
        data_bytes,
        fully_verified,
        fs: root.fs.clone(),
        elapsed_us,
    })));
    reach(
        channel,
        Some(&cmdline),
        Stage::RootVerified,
        format!(
            "{} bytes on disk {} {} against root hash {} in {} ms",
            data_bytes,
            root.disk,
            if fully_verified {
                "verified"
            } else {
                "set up for on-read verification"
            },
            cfg.verity.root_hash_hex(),
            elapsed_us / 1000
        ),
    );
    check_stop(stop)?;
    view::mount_root(dm.path(), &root.fs).map_err(fail(RefusalReason::Mount))?;

    // The passthrough devices the config names (reported with the view below).
    let found = devices::scan(Path::new("/sys/bus/pci"))
        .and_then(|bus| devices::check(&cfg.file.devices, &bus))
        .map_err(fail(RefusalReason::DeviceRequired))?;

    // GPUs (before the view, so their device nodes exist to be copied in).
    let policy = cfg.file.gpu.clone();
    let outcome = tokio::task::spawn_blocking(move || gpu::bring_up_nvidia(&policy))
        .await
        .map_err(|e| e.to_string())
        .map_err(fail(RefusalReason::Internal))?;
    for line in gpu::report_lines(&outcome) {
        console(&line);
    }
    channel.send(GuestMessage::Status(Status::Gpus(outcome.summary.clone())));
    for ev in &outcome.evidence {
        channel.send(GuestMessage::GpuEvidence(ev.clone()));
    }
    if let Some(why) = outcome.refusal {
        let no_gpu = matches!(
            outcome.summary.presence,
            GpuPresence::NoDriver { .. } | GpuPresence::NoDevice
        );
        let reason = if no_gpu {
            RefusalReason::GpuRequired
        } else {
            RefusalReason::GpuCheck
        };
        return Err(Failure {
            reason,
            message: why,
        });
    }
    // The scratch disk, encrypted with a key made now (before the view, which gets
    // its node).
    let scratch = match &cfg.file.scratch {
        None => None,
        Some(want) => {
            let disk = verity::find_disk_by_serial(Path::new("/sys/block"), &want.disk)
                .map_err(|e| format!("scratch: {e}"))
                .map_err(fail(RefusalReason::Mount))?;
            let dev = tokio::task::spawn_blocking(move || scratch::open_scratch(&disk))
                .await
                .map_err(|e| e.to_string())
                .map_err(fail(RefusalReason::Internal))?
                .map_err(|e| e.to_string())
                .map_err(fail(RefusalReason::Mount))?;
            Some(dev)
        }
    };
    let gpu_nodes =
        view::prepare(&cfg.file, scratch.as_ref()).map_err(fail(RefusalReason::Mount))?;
    reach(
        channel,
        Some(&cmdline),
        Stage::RootMounted,
        format!(
            "{} read-only on {}; devices: {}; GPU nodes: {}; scratch: {}",
            root.fs,
            view::ROOT,
            if found.is_empty() {
                "none required".into()
            } else {
                found.join(", ")
            },
            if gpu_nodes.is_empty() {
                "none".into()
            } else {
                gpu_nodes.join(",")
            },
            scratch.as_ref().map_or("none".into(), |d| format!(
                "/dev/{} ({} MiB on {}, dm-crypt {} with a key made at boot)",
                scratch::NODE_NAME,
                d.bytes >> 20,
                d.disk,
                scratch::CIPHER
            )),
        ),
    );
    reach(
        channel,
        Some(&cmdline),
        Stage::GpuReady,
        format!(
            "{} GPU(s) ready",
            outcome.summary.gpus.iter().filter(|g| g.ready).count()
        ),
    );
    check_stop(stop)?;

    // Bridges.
    let _bridges =
        bridge::start(&cfg.file.ports, channel).map_err(fail(RefusalReason::Internal))?;
    let ports: Vec<(u32, u16)> = cfg.file.ports.iter().map(|p| (p.vsock, p.tcp)).collect();
    channel.send(GuestMessage::Status(Status::Bridge(BridgeStatus {
        ports: ports.clone(),
    })));
    let described: Vec<String> = cfg
        .file
        .ports
        .iter()
        .map(|p| format!("vsock:{} -> 127.0.0.1:{} ({:?} TLS)", p.vsock, p.tcp, p.tls))
        .collect();
    reach(
        channel,
        Some(&cmdline),
        Stage::BridgeUp,
        described.join(", "),
    );
    check_stop(stop)?;

    run_workload(channel, &cfg, &cmdline, stop).await
}

fn load_modules(index: &modules::ModuleIndex, wanted: &[String]) -> Result<Vec<String>, Failure> {
    let order = index
        .load_order(wanted)
        .map_err(|e| e.to_string())
        .map_err(fail(RefusalReason::Module))?;
    let mut loaded = Vec::new();
    for m in order {
        let outcome = m
            .load()
            .map_err(|e| e.to_string())
            .map_err(fail(RefusalReason::Module))?;
        // A module the kernel already had (EEXIST) is not counted as loaded here.
        if let modules::LoadOutcome::Loaded(_) = outcome {
            loaded.push(m.name.clone());
        }
    }
    Ok(loaded)
}

fn read_config(cmdline: Cmdline) -> Result<Config, Failure> {
    let path = Path::new(config::CONFIG_PATH);
    let meta = std::fs::metadata(path).map_err(|e| Failure {
        reason: RefusalReason::Config,
        message: format!(
            "{}: {e} (the image has no config component?)",
            config::CONFIG_PATH
        ),
    })?;
    if meta.len() > config::MAX_CONFIG_BYTES {
        return Err(Failure {
            reason: RefusalReason::Config,
            message: format!(
                "{}: over {} bytes",
                config::CONFIG_PATH,
                config::MAX_CONFIG_BYTES
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| Failure {
        reason: RefusalReason::Config,
        message: format!("{}: {e}", config::CONFIG_PATH),
    })?;
    config::parse_config(cmdline, &bytes).map_err(|e| Failure {
        reason: RefusalReason::Config,
        message: e.to_string(),
    })
}

/// After SIGKILL to every process of the workload, how long to wait for its exit
/// before powering off without it (a process stuck in the kernel).
const LOST_AFTER_KILL: Duration = Duration::from_secs(10);

/// Where the supervisor is.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Running,
    /// SIGTERM sent; SIGKILL at the instant.
    Terminating(tokio::time::Instant),
    /// SIGKILL sent; given up at the instant.
    Killed(tokio::time::Instant),
}

async fn run_workload(
    channel: &Channel,
    cfg: &Config,
    cmdline: &Cmdline,
    stop: &StopRequest,
) -> Result<ExitReport, Failure> {
    // Installed before the fork, so no exit is missed.
    let mut sigchld = signal(SignalKind::child())
        .map_err(|e| e.to_string())
        .map_err(fail(RefusalReason::Internal))?;
    check_stop(stop)?;
    let w = &cfg.file.workload;
    let started = Instant::now();
    let running = workload::start(w, view::ROOT, channel).map_err(|e| Failure {
        reason: match e {
            workload::StartError::NotFound(_) => RefusalReason::WorkloadNotFound,
            workload::StartError::Other { .. } => RefusalReason::WorkloadStart,
        },
        message: e.to_string(),
    })?;
    reach(
        channel,
        Some(cmdline),
        Stage::WorkloadStarted,
        format!(
            "pid {} as uid {} gid {}: {:?}",
            running.pid, w.uid, w.gid, w.argv
        ),
    );
    let now = tokio::time::Instant::now;
    let mut phase = Phase::Running;
    let status = loop {
        let deadline = match phase {
            Phase::Running => None,
            Phase::Terminating(t) | Phase::Killed(t) => Some(t),
        };
        tokio::select! {
            _ = sigchld.recv() => {}
            why = stop.wait(), if matches!(phase, Phase::Running) => {
                reach(
                    channel,
                    Some(cmdline),
                    Stage::ShuttingDown,
                    format!(
                        "{why}: SIGTERM to the workload, SIGKILL after {} ms",
                        w.stop_grace_ms
                    ),
                );
                let _ = kill(running.pid, Signal::SIGTERM);
                phase = Phase::Terminating(now() + Duration::from_millis(w.stop_grace_ms));
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(now)), if deadline.is_some() => {
                match phase {
                    Phase::Terminating(_) => {
                        console("grace period over: SIGKILL to every process of the workload");
                        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                        phase = Phase::Killed(now() + LOST_AFTER_KILL);
                    }
                    Phase::Killed(_) => {
                        console("the workload did not end after SIGKILL: powering off without it");
                        break (None, None);
                    }
                    Phase::Running => {}
                }
            }
        }
        let mut done = None;
        for (pid, st) in pid1::reap() {
            if pid == running.pid {
                done = workload::ended(&st);
            }
        }
        if let Some(d) = done {
            break d;
        }
    };
    let runtime_us = started.elapsed().as_micros() as u64;
    // What the workload left behind (its children hold its pipes open) goes now: for
    // PID 1, kill(-1) reaches every process but itself.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    pid1::reap();
    // Let the output pumps drain what was written; a pump still busy then is stopped,
    // so nothing follows `Exit`.
    let mut output_dropped = 0;
    for mut p in running.pumps {
        match tokio::time::timeout(Duration::from_secs(5), &mut p).await {
            Ok(Ok(d)) => output_dropped += d,
            _ => p.abort(),
        }
    }
    let (code, signal) = status;
    let exit = ExitReport {
        code,
        signal: signal.map(|s| s as i32),
        signal_name: signal.map(|s| s.as_str().to_owned()),
        runtime_us,
        output_dropped,
    };
    channel.send(GuestMessage::Exit(exit.clone()));
    reach(
        channel,
        Some(cmdline),
        Stage::WorkloadEnded,
        format!(
            "{} after {} ms",
            match (code, signal) {
                (Some(c), _) => format!("exit status {c}"),
                (_, Some(s)) => format!("killed by {s}"),
                _ => "ended".into(),
            },
            runtime_us / 1000
        ),
    );
    Ok(exit)
}
