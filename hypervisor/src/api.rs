//! The REST API on a Unix socket (schema: `hypervisor/openapi.yaml`). Same schema as
//! the `--config` file; every bad request gets a 4xx with a JSON error naming the field.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::boot_source::{read_boot_source, StateUse};
use crate::config::{
    field_path, BootSource, ConfigError, DevicesConfig, MachineConfig, SeccompMode, VmConfig,
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
}

#[derive(Debug, Clone)]
struct AppState {
    inner: Arc<Mutex<Inner>>,
    stopped: Arc<tokio::sync::Notify>,
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
        let field = field_path(if prefix.is_empty() { "body" } else { prefix }, e.path());
        ApiError::new(StatusCode::BAD_REQUEST, field, e.into_inner().to_string())
    })
}

fn not_started(st: &Inner) -> Result<(), ApiError> {
    match &st.vm {
        None => Ok(()),
        Some(_) => Err(ApiError::conflict(
            "the VM is already built; configuration is frozen",
        )),
    }
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
    let mut st = s.lock();
    not_started(&st)?;
    st.pending.devices = d;
    Ok(StatusCode::NO_CONTENT)
}

fn build_and_start(st: &mut Inner, stopped: &Arc<tokio::sync::Notify>) -> Result<(), ApiError> {
    not_started(st)?;
    let cfg = VmConfig {
        machine: st
            .pending
            .machine
            .clone()
            .ok_or_else(|| ConfigError::new("machine", "not configured"))?,
        boot_source: st
            .pending
            .boot_source
            .clone()
            .ok_or_else(|| ConfigError::new("boot_source", "not configured"))?,
        devices: st.pending.devices.clone(),
        seccomp: st.pending.seccomp,
    };
    cfg.validate()?;
    let inputs = read_boot_source(&cfg.boot_source, StateUse::Record)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "boot_source", e.to_string()))?;
    let mut vm = Vm::build(&cfg, &inputs)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "config", e.to_string()))?;
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
    let mut st = s.lock();
    build_and_start(&mut st, &s.stopped)?;
    Ok(StatusCode::NO_CONTENT)
}

fn with_vm<T>(s: &AppState, f: impl FnOnce(&mut Vm) -> Result<T, ApiError>) -> Result<T, ApiError> {
    let mut st = s.lock();
    match st.vm.as_mut() {
        Some(vm) => f(vm),
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
        None => {
            Json(serde_json::json!({"state": "not_started", "pending": st.pending})).into_response()
        }
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
        if let Some(vm) = signal_state.lock().vm.as_ref() {
            vm.control().request_stop(ExitReason::Stopped);
        }
        signal_state.stopped.notify_one();
    })
    .map_err(anyhow::Error::msg)?;
    let served = rt.block_on(async move {
        let listener = tokio::net::UnixListener::bind(sock)?;
        if let Some(cfg) = initial {
            let mut st = boot_state.lock();
            st.pending = Pending {
                machine: Some(cfg.machine),
                boot_source: Some(cfg.boot_source),
                devices: cfg.devices,
                seccomp: cfg.seccomp,
            };
            build_and_start(&mut st, &boot_state.stopped)
                .map_err(|e| std::io::Error::other(format!("{}: {}", e.field, e.message)))?;
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
