//! The REST API on a Unix socket (schema: `hypervisor/openapi.yaml`). Same schema as
//! the `--config` file; every bad request gets a 4xx with a JSON error naming the field.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::boot_source::{read_inputs, BootInputs, StateUse};
use crate::config::{
    path_error, BootSource, ConfigError, DevicesConfig, MachineConfig, SeccompMode, VmConfig,
};
use crate::control::ExitReason;
use crate::seccomp;
use crate::vm::Vm;

/// Configuration gathered piecewise before start.
#[derive(Debug, Default, Clone, Serialize)]
struct Pending {
    machine: Option<MachineConfig>,
    boot_source: Option<BootSource>,
    devices: DevicesConfig,
    seccomp: SeccompMode,
}

#[derive(Debug, Default)]
struct Inner {
    pending: Pending,
    vm: Option<Vm>,
    /// A start is reading/verifying the boot source and building the VM (without
    /// this lock held); configuration is frozen and a second start is refused.
    starting: bool,
    /// Why the last start failed, shown by `GET /vm` until the next start.
    last_start_error: Option<String>,
}

#[derive(Debug, Clone)]
struct AppState {
    inner: Arc<Mutex<Inner>>,
    stopped: Arc<tokio::sync::Notify>,
    /// Set by `/vm/stop` during a start and by SIGTERM/SIGINT (which never wait for
    /// `inner`); a start that finishes after it does not run the VM.
    stop_requested: Arc<AtomicBool>,
}

impl AppState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An API error: status plus `{"error": {"field": ..., "message": ...}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    field: String,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            field: field.into(),
            message: message.into(),
        }
    }
    fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "state", message)
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.field, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"field": self.field, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// Parses a JSON body, naming the field (with `prefix`) on error.
fn parse<T: DeserializeOwned>(prefix: &str, body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let e = path_error(if prefix.is_empty() { "body" } else { prefix }, e);
        ApiError::new(StatusCode::BAD_REQUEST, e.field, e.message)
    })
}

fn not_started(st: &Inner) -> Result<(), ApiError> {
    if st.starting {
        return Err(ApiError::conflict(
            "the VM is starting; configuration is frozen",
        ));
    }
    match &st.vm {
        None => Ok(()),
        Some(_) => Err(ApiError::conflict(
            "the VM is already built; configuration is frozen",
        )),
    }
}

/// Test hook for the API tests: while the file this names exists, a start waits
/// (after taking the configuration, before reading the boot source), so a test can
/// observe the `starting` state without depending on timing.
const HOLD_START_ENV: &str = "BULWARK_VMM_TEST_HOLD_START";

/// Reads (and for bundles verifies) the boot source and builds the VM. Slow (it reads
/// every byte of a bundle); runs on its own thread with no lock held.
fn read_and_build(cfg: &VmConfig) -> Result<Vm, ApiError> {
    if let Some(hold) = std::env::var_os(HOLD_START_ENV) {
        while Path::new(&hold).exists() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let inputs: BootInputs = read_inputs(cfg, StateUse::Record)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "boot_source", e.to_string()))?;
    Vm::build(cfg, &inputs)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "config", e.to_string()))
}

/// Starts the configured VM: takes the configuration and marks `starting` under the
/// lock, reads/verifies/builds on a separate thread with the lock released (so
/// `GET /vm`, `/vm/stop` and the signal path stay responsive), then re-takes the lock
/// to start and install the VM, or to record the failure and return to configuring.
async fn start_vm(s: &AppState) -> Result<(), ApiError> {
    let cfg = {
        let mut st = s.lock();
        not_started(&st)?;
        if s.stop_requested.load(Ordering::SeqCst) {
            return Err(ApiError::conflict("the VMM is stopping"));
        }
        let cfg = pending_config(&st.pending)?;
        cfg.validate()?;
        st.starting = true;
        st.last_start_error = None;
        cfg
    };
    let built = build_off_thread(cfg.clone()).await;
    let mut st = s.lock();
    st.starting = false;
    let stop = s.stop_requested.load(Ordering::SeqCst);
    if stop {
        // Stopped (API or signal) while building: the VM never runs; the server ends.
        s.stopped.notify_one();
    }
    let result = built.and_then(|vm| {
        if stop {
            return Err(ApiError::conflict("stopped while the VM was starting"));
        }
        run_vm(&mut st, vm, &cfg, &s.stopped)
    });
    if let Err(e) = &result {
        st.last_start_error = Some(format!("{}: {}", e.field, e.message));
    }
    result
}

/// Runs `read_and_build` on a thread of its own and waits for it without blocking the
/// runtime. The thread is joined, so no unfiltered thread outlives the start (the API
/// thread installs its seccomp filter afterwards).
async fn build_off_thread(cfg: VmConfig) -> Result<Vm, ApiError> {
    let internal = |m: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "vm", m);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = std::thread::Builder::new()
        .name("vm-build".into())
        .spawn(move || {
            let _ = tx.send(read_and_build(&cfg));
        })
        .map_err(|e| internal(e.to_string()))?;
    let built = rx.await;
    // The thread has sent its result (or died): it ends at once.
    let joined = handle.join();
    match (built, joined) {
        (Ok(r), Ok(())) => r,
        _ => Err(internal("the build thread failed".into())),
    }
}

fn pending_config(p: &Pending) -> Result<VmConfig, ApiError> {
    Ok(VmConfig {
        machine: p
            .machine
            .clone()
            .ok_or_else(|| ConfigError::new("machine", "not configured"))?,
        boot_source: p
            .boot_source
            .clone()
            .ok_or_else(|| ConfigError::new("boot_source", "not configured"))?,
        devices: p.devices.clone(),
        seccomp: p.seccomp,
    })
}

async fn put_config(State(s): State<AppState>, body: Bytes) -> Result<StatusCode, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "body", "not UTF-8"))?;
    let cfg = VmConfig::from_json(text)?;
    let mut st = s.lock();
    not_started(&st)?;
    st.pending = Pending {
        machine: Some(cfg.machine),
        boot_source: Some(cfg.boot_source),
        devices: cfg.devices,
        seccomp: cfg.seccomp,
    };
    Ok(StatusCode::NO_CONTENT)
}

async fn put_machine(State(s): State<AppState>, body: Bytes) -> Result<StatusCode, ApiError> {
    let m: MachineConfig = parse("machine", &body)?;
    m.validate()?;
    let mut st = s.lock();
    not_started(&st)?;
    st.pending.machine = Some(m);
    Ok(StatusCode::NO_CONTENT)
}

async fn put_boot_source(State(s): State<AppState>, body: Bytes) -> Result<StatusCode, ApiError> {
    let b: BootSource = parse("boot_source", &body)?;
    b.validate()?;
    let mut st = s.lock();
    not_started(&st)?;
    st.pending.boot_source = Some(b);
    Ok(StatusCode::NO_CONTENT)
}

async fn put_devices(State(s): State<AppState>, body: Bytes) -> Result<StatusCode, ApiError> {
    let d: DevicesConfig = parse("devices", &body)?;
    d.validate()?;
    let mut st = s.lock();
    not_started(&st)?;
    d.validate_virtio(st.pending.boot_source.as_ref())?;
    st.pending.devices = d;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts the built VM's vCPUs and the watcher, installs the API thread's seccomp
/// filter and installs the VM in the state. Quick; runs under the lock on the API thread.
fn run_vm(
    st: &mut Inner,
    mut vm: Vm,
    cfg: &VmConfig,
    stopped: &Arc<tokio::sync::Notify>,
) -> Result<(), ApiError> {
    vm.start()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "vm", e.to_string()))?;
    // The VM runs: from here on neither this (the API) thread nor the watcher needs
    // new files or KVM objects. The watcher is spawned first (naming a thread is not
    // in the filter) and installs the same filter itself.
    let internal = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "seccomp", e);
    let filter = seccomp::control_filter(cfg.seccomp).map_err(internal)?;
    let control = vm.control();
    let notify = Arc::clone(stopped);
    let (mode, watch_filter) = (cfg.seccomp, filter.clone());
    std::thread::Builder::new()
        .name("vm-watch".into())
        .spawn(move || {
            if let Err(e) = seccomp::install(mode, watch_filter.as_ref()) {
                control.request_stop(ExitReason::VmmError(format!("seccomp on the watcher: {e}")));
            }
            control.wait_stopped();
            notify.notify_one();
        })
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "vm", e.to_string()))?;
    if let Err(e) = seccomp::install(cfg.seccomp, filter.as_ref()) {
        vm.stop(ExitReason::VmmError(e.clone()));
        return Err(internal(e));
    }
    st.vm = Some(vm);
    Ok(())
}

async fn start(State(s): State<AppState>) -> Result<StatusCode, ApiError> {
    start_vm(&s).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn with_vm<T>(s: &AppState, f: impl FnOnce(&mut Vm) -> Result<T, ApiError>) -> Result<T, ApiError> {
    let mut st = s.lock();
    let starting = st.starting;
    match st.vm.as_mut() {
        Some(vm) => f(vm),
        None if starting => Err(ApiError::conflict("the VM is starting")),
        None => Err(ApiError::conflict("the VM has not been started")),
    }
}

async fn pause(State(s): State<AppState>) -> Result<StatusCode, ApiError> {
    with_vm(&s, |vm| {
        vm.pause().map_err(|e| ApiError::conflict(e.to_string()))
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resume(State(s): State<AppState>) -> Result<StatusCode, ApiError> {
    with_vm(&s, |vm| {
        vm.resume().map_err(|e| ApiError::conflict(e.to_string()))
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stop(State(s): State<AppState>) -> Result<StatusCode, ApiError> {
    {
        let st = s.lock();
        if st.starting && st.vm.is_none() {
            // Honoured when the start finishes: the VM is dropped unrun.
            s.stop_requested.store(true, Ordering::SeqCst);
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    with_vm(&s, |vm| {
        vm.control().request_stop(ExitReason::Stopped);
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn describe(State(s): State<AppState>) -> Response {
    let st = s.lock();
    match &st.vm {
        Some(vm) => Json(vm.describe()).into_response(),
        None => Json(serde_json::json!({
            "state": if st.starting { "starting" } else { "not_started" },
            "pending": st.pending,
            "last_start_error": st.last_start_error,
        }))
        .into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let st = s.lock();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP bulwark_vm_running 1 while the vCPUs run.\n# TYPE bulwark_vm_running gauge"
    );
    match &st.vm {
        None => {
            let _ = writeln!(out, "bulwark_vm_running 0");
        }
        Some(vm) => {
            let d = vm.describe();
            let running = matches!(d.state, crate::control::RunState::Running);
            let _ = writeln!(out, "bulwark_vm_running {}", u8::from(running));
            let _ = writeln!(out, "# HELP bulwark_guest_memory_bytes Guest RAM.\n# TYPE bulwark_guest_memory_bytes gauge");
            let _ = writeln!(
                out,
                "bulwark_guest_memory_bytes {}",
                d.memory.guest_ram_bytes
            );
            for (name, help) in [
                ("bulwark_vcpu_exits_total", "Exits from KVM_RUN to the VMM."),
                ("bulwark_vcpu_pio_exits_total", "Port I/O exits."),
                ("bulwark_vcpu_mmio_exits_total", "MMIO exits."),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for v in &d.vcpus {
                    let n = match name {
                        "bulwark_vcpu_exits_total" => v.exits,
                        "bulwark_vcpu_pio_exits_total" => v.pio_exits,
                        _ => v.mmio_exits,
                    };
                    let _ = writeln!(out, "{name}{{vcpu=\"{}\"}} {n}", v.index);
                }
            }
            let _ = writeln!(
                out,
                "# HELP bulwark_unowned_accesses_total Guest accesses to ports/MMIO no device owns.\n# TYPE bulwark_unowned_accesses_total counter"
            );
            let _ = writeln!(
                out,
                "bulwark_unowned_accesses_total{{space=\"pio\"}} {}",
                d.unowned_pio
            );
            let _ = writeln!(
                out,
                "bulwark_unowned_accesses_total{{space=\"mmio\"}} {}",
                d.unowned_mmio
            );
            let _ = writeln!(
                out,
                "# HELP bulwark_serial_dropped_bytes_total Serial output dropped past the cap.\n# TYPE bulwark_serial_dropped_bytes_total counter"
            );
            let _ = writeln!(
                out,
                "bulwark_serial_dropped_bytes_total {}",
                d.serial_dropped
            );
            let _ = writeln!(
                out,
                "# HELP bulwark_acpi_pm_ignored_total Ignored writes to the ACPI power-management registers.\n# TYPE bulwark_acpi_pm_ignored_total counter\nbulwark_acpi_pm_ignored_total {}",
                d.acpi_pm_ignored
            );
            crate::virtio::write_metrics(&mut out, &d.virtio);
            if let Some(p) = &d.pci {
                crate::pci::write_metrics(&mut out, p);
            }
            if let Some(v) = &d.vfio {
                crate::vfio::write_metrics(&mut out, v);
            }
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn fallback() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "path", "no such endpoint")
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/vm", get(describe))
        .route("/vm/config", put(put_config))
        .route("/machine-config", put(put_machine))
        .route("/boot-source", put(put_boot_source))
        .route("/devices", put(put_devices))
        .route("/vm/start", post(start))
        .route("/vm/pause", post(pause))
        .route("/vm/resume", post(resume))
        .route("/vm/stop", post(stop))
        .route("/metrics", get(metrics))
        .fallback(fallback)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                "method not allowed here",
            )
        })
        .with_state(state)
}

/// Serves the API on `sock` until the VM stops; with `config`, builds and starts that
/// VM first. Returns why the VM stopped.
pub fn serve(sock: &Path, config: Option<&Path>) -> anyhow::Result<ExitReason> {
    let state = AppState {
        inner: Arc::default(),
        stopped: Arc::new(tokio::sync::Notify::new()),
        stop_requested: Arc::default(),
    };
    let initial = config
        .map(|path| -> anyhow::Result<VmConfig> {
            let text = std::fs::read_to_string(path)?;
            Ok(VmConfig::from_json(&text)?)
        })
        .transpose()?;
    if sock.exists() {
        anyhow::bail!(
            "{} already exists; remove it or choose another --api-sock",
            sock.display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let app = router(state.clone());
    let stopped = Arc::clone(&state.stopped);
    let boot_state = state.clone();
    let signal_state = state.clone();
    let mode = initial.as_ref().map_or(SeccompMode::Enforce, |c| c.seccomp);
    crate::signals::spawn_waiter(mode, move |_| {
        // Never waits for the state lock (a start or another request may hold it):
        // the flag stops a start in progress when it finishes, the notification ends
        // the server, and `serve` then stops a VM that is running.
        signal_state.stop_requested.store(true, Ordering::SeqCst);
        if let Ok(st) = signal_state.inner.try_lock() {
            if let Some(vm) = st.vm.as_ref() {
                vm.control().request_stop(ExitReason::Stopped);
            }
        }
        signal_state.stopped.notify_one();
    })
    .map_err(anyhow::Error::msg)?;
    let served = rt.block_on(async move {
        let listener = tokio::net::UnixListener::bind(sock)?;
        if let Some(cfg) = initial {
            boot_state.lock().pending = Pending {
                machine: Some(cfg.machine),
                boot_source: Some(cfg.boot_source),
                devices: cfg.devices,
                seccomp: cfg.seccomp,
            };
            if let Err(e) = start_vm(&boot_state).await {
                // A signal during the start is a clean stop, not a failure.
                if !boot_state.stop_requested.load(Ordering::SeqCst) {
                    return Err(std::io::Error::other(format!("{}: {}", e.field, e.message)));
                }
            }
        }
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.notified().await })
            .await
    });
    let _ = std::fs::remove_file(sock);
    served?;
    let mut st = state.lock();
    Ok(match st.vm.as_mut() {
        // The server ends when the VM stopped (its reason is kept) or on SIGTERM/SIGINT.
        Some(vm) => vm.stop(ExitReason::Stopped),
        None => ExitReason::Stopped,
    })
}

#[cfg(test)]
mod tests {
    /// Every route the router serves is described in openapi.yaml, and vice versa.
    #[test]
    fn openapi_file_lists_exactly_the_served_paths() {
        let spec = include_str!("../openapi.yaml");
        let documented: Vec<&str> = spec
            .lines()
            .filter_map(|l| l.strip_prefix("  /").and_then(|p| p.strip_suffix(':')))
            .collect();
        let source = include_str!("api.rs");
        let served: Vec<&str> = source
            .lines()
            .filter_map(|l| l.trim().strip_prefix(".route(\"/"))
            .filter_map(|l| l.split('"').next())
            .collect();
        assert!(!served.is_empty());
        let mut d = documented.clone();
        let mut s = served.clone();
        d.sort_unstable();
        s.sort_unstable();
        assert_eq!(d, s);
    }
}
