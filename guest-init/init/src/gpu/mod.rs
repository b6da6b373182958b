//! GPU bring-up, vendor-neutral.
//!
//! A [`GpuBackend`] finds a vendor's driver and devices; each device is a [`Gpu`]
//! with a handful of operations (identity, confidential-computing state, the
//! device's own attestation report, letting it accept work, a kernel whose result
//! the CPU checks, a device-to-device copy). [`bring_up`] drives any set of
//! backends through the same steps and applies the signed configuration's
//! [`GpuPolicy`]; it is a plain function of what the backends answer, so every
//! rule is unit-tested with a fake backend. The NVIDIA backend is [`nvidia`]
//! (CUDA driver API through `cudarc`, NVML through `nvml-wrapper`, both loaded
//! at run time); an AMD Instinct backend would be another [`GpuBackend`].
//!
//! The order matters for GPUs in confidential-computing (CC) mode: until the
//! guest sets the CC "ready" state, every CUDA call fails (error 802,
//! `CUDA_ERROR_SYSTEM_NOT_READY`). So for each backend: identity and CC state
//! first, then each CC GPU's attestation report with a fresh nonce, verified in
//! the guest; only when every CC GPU of the backend verified is it told to accept
//! work; then the ready state is read back, and only then do the self-test and
//! the copy benchmark run.

pub mod nvidia;

use std::fmt;
use std::time::Duration;

pub use bulwark_guest_protocol::GpuIdentity;
use bulwark_guest_protocol::{
    CcMode, GpuAttestationResult, GpuEvidence, GpuPresence, GpuStatus, GpuSummary,
};
use serde::Deserialize;

// ---------------------------------------------------------------------------
// Policy (the signed configuration's `gpu` object)
// ---------------------------------------------------------------------------

/// The `gpu` object of the signed configuration. Every field has a default, so
/// `{}` (or no `gpu` object) is a valid policy: GPUs optional, CC mode either way,
/// self-test on, 256 MiB copy benchmark.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuPolicy {
    /// At least one (or `min_count`) GPU must be ready, or the workload does not
    /// start. When false, a VM without GPU driver or GPU runs GPU-less.
    #[serde(default)]
    pub required: bool,
    /// With `required`: how many GPUs must be ready (default 1). Refused by
    /// [`GpuPolicy::validate`] without `required`.
    #[serde(default)]
    pub min_count: Option<u32>,
    /// Confidential-computing mode every GPU must (or must not) be in.
    #[serde(default)]
    pub cc: CcPolicy,
    /// What the in-guest verification of a CC GPU's attestation report requires.
    #[serde(default)]
    pub attestation: AttestationPolicy,
    /// Run a kernel on each GPU and check its result on the CPU.
    #[serde(default = "default_true")]
    pub self_test: bool,
    /// Size of the device-to-device copy benchmark buffers, MiB (0: no benchmark).
    #[serde(default = "default_copy_bench_mib")]
    pub copy_bench_mib: u32,
}

fn default_true() -> bool {
    true
}

fn default_copy_bench_mib() -> u32 {
    256
}

/// Largest accepted `copy_bench_mib` (two buffers of it are allocated per GPU).
pub const MAX_COPY_BENCH_MIB: u32 = 16 * 1024;

impl Default for GpuPolicy {
    fn default() -> Self {
        GpuPolicy {
            required: false,
            min_count: None,
            cc: CcPolicy::default(),
            attestation: AttestationPolicy::default(),
            self_test: true,
            copy_bench_mib: default_copy_bench_mib(),
        }
    }
}

impl GpuPolicy {
    /// GPUs that must be ready: `min_count` (default 1) when required, else 0.
    pub fn effective_min_count(&self) -> u32 {
        if self.required {
            self.min_count.unwrap_or(1)
        } else {
            0
        }
    }

    /// The checks that types cannot express. `Err((field, message))`, the field
    /// relative to the `gpu` object (e.g. `min_count`, `attestation.rims[1]`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        match (self.required, self.min_count) {
            (false, Some(_)) => {
                return Err((
                    "min_count".into(),
                    "only meaningful with \"required\": true".into(),
                ))
            }
            (true, Some(0)) => {
                return Err((
                    "min_count".into(),
                    "must be at least 1 when GPUs are required".into(),
                ))
            }
            (true, Some(n)) if n as usize > bulwark_guest_protocol::MAX_LIST => {
                return Err((
                    "min_count".into(),
                    format!("{n} is over {}", bulwark_guest_protocol::MAX_LIST),
                ))
            }
            _ => {}
        }
        if self.copy_bench_mib > MAX_COPY_BENCH_MIB {
            return Err((
                "copy_bench_mib".into(),
                format!("{} is over {MAX_COPY_BENCH_MIB}", self.copy_bench_mib),
            ));
        }
        self.attestation.validate()
    }
}

/// `gpu.cc`: the confidential-computing mode GPUs must be in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CcPolicy {
    /// Every GPU in CC mode "on" (not off, not devtools, not unknown).
    Required,
    /// Every GPU with CC mode confirmed off (a GPU whose mode is unknown is refused).
    Forbidden,
    /// Either. A GPU that is in CC mode is still attested and must verify.
    #[default]
    Any,
}

impl CcPolicy {
    fn as_str(self) -> &'static str {
        match self {
            CcPolicy::Required => "required",
            CcPolicy::Forbidden => "forbidden",
            CcPolicy::Any => "any",
        }
    }
}

/// `gpu.attestation`: what the in-guest verification of a CC GPU's report
/// requires beyond the built-in checks (SPDM signature by the device key, device
/// certificate chain to the embedded NVIDIA Device Identity CA, validity at the
/// current time, the nonce sent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationPolicy {
    /// Signed reference integrity manifests (NVIDIA RIMs: TCG SWID XML, the text
    /// itself) for the driver and/or VBIOS; the GPU's measurements are compared
    /// against every active reference value. Each RIM must be signed by a
    /// certificate chaining to the embedded NVIDIA RIM signing root and be for
    /// the driver or VBIOS version the GPU reports.
    #[serde(default)]
    pub rims: Vec<String>,
    /// Refuse a GPU unless the comparison ran and passed with a RIM for its
    /// driver version and one for its VBIOS version.
    #[serde(default)]
    pub require_rims: bool,
    /// Driver versions accepted (as the GPU's report states them, e.g.
    /// `550.90.07`); empty: any.
    #[serde(default)]
    pub driver_versions: Vec<String>,
    /// VBIOS versions accepted (e.g. `96.00.9F.00.01`); empty: any.
    #[serde(default)]
    pub vbios_versions: Vec<String>,
}

impl AttestationPolicy {
    fn validate(&self) -> Result<(), (String, String)> {
        if self.require_rims && self.rims.is_empty() {
            return Err((
                "attestation.require_rims".into(),
                "true but \"rims\" is empty".into(),
            ));
        }
        for (i, rim) in self.rims.iter().enumerate() {
            nvidia::parse_rim(rim).map_err(|e| (format!("attestation.rims[{i}]"), e))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The backend traits
// ---------------------------------------------------------------------------

/// A GPU call that failed. Messages name the driver call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// The driver answered with an error.
    #[error("{call}: {detail}")]
    Driver {
        /// The driver function.
        call: &'static str,
        /// Its error.
        detail: String,
    },
    /// The driver library or a binding panicked (guarded: reported, not fatal).
    #[error("{call}: the driver binding panicked: {detail}")]
    Panicked {
        /// What was being called.
        call: &'static str,
        /// The panic message.
        detail: String,
    },
    /// This device or build cannot do it.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// Not implemented in this build.
    #[error("not implemented: {0}")]
    NotImplemented(String),
}

/// What a backend found.
#[derive(Debug)]
pub enum Probe {
    /// No driver (library or kernel driver): the detail says what is missing.
    NoDriver {
        /// E.g. `no GPU driver present (libcuda.so.1 not found)`.
        detail: String,
    },
    /// The driver is there; these devices (possibly none).
    Devices(Vec<Box<dyn Gpu>>),
    /// A driver and (probably) GPUs, but unusable: always refuses the workload
    /// (e.g. a CC GPU that is not ready and cannot be attested).
    Unusable {
        /// What is wrong.
        detail: String,
    },
}

/// One vendor's driver.
pub trait GpuBackend {
    /// Short vendor name (`nvidia`).
    fn name(&self) -> &'static str;
    /// Find the driver and the devices. Must not panic, and must not start
    /// compute work (a CC GPU is not ready yet).
    fn probe(&self) -> Probe;
}

/// Confidential-computing state as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CcState {
    /// Mode.
    pub mode: CcMode,
    /// Whether CC GPUs accept work (`None`: not reported).
    pub ready: Option<bool>,
}

/// A device's own attestation report, as the driver returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuReport {
    /// For NVIDIA: the SPDM GET_MEASUREMENTS request and response.
    pub report: Vec<u8>,
    /// The device certificate chain (NVIDIA: PEM, leaf first).
    pub certificate_chain: Vec<u8>,
}

/// A report that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReport {
    /// The nonce the report states it answers (checked again by [`bring_up`]).
    pub report_nonce: Vec<u8>,
    /// The checks that ran.
    pub detail: String,
}

/// One device. Every method returns its failure; none may panic.
pub trait Gpu: fmt::Debug {
    /// Name, bus id, memory, compute capability, driver version. Must work
    /// before the device accepts work (CC mode).
    fn identity(&mut self) -> Result<GpuIdentity, GpuError>;
    /// Confidential-computing mode and ready state.
    fn cc_state(&mut self) -> CcState;
    /// The device's attestation report answering `nonce`, and its certificate chain.
    fn attestation_report(&mut self, nonce: &[u8; 32]) -> Result<GpuReport, GpuError>;
    /// Verify a report with the vendor's verifier against `policy`; `Err` names
    /// the failed checks.
    fn verify_report(
        &self,
        report: &GpuReport,
        nonce: &[u8; 32],
        policy: &AttestationPolicy,
    ) -> Result<VerifiedReport, String>;
    /// Let a CC device accept work (NVIDIA: the system-wide CC ready state).
    fn accept_work(&mut self) -> Result<(), GpuError>;
    /// Run the self-test kernel ([`SELF_TEST_ELEMENTS`] elements of
    /// `i * i + seed`, wrapping u32) and return what the device computed.
    fn self_test(&mut self, seed: u32) -> Result<Vec<u32>, GpuError>;
    /// Copy `bytes` between two device buffers `copies` times (after one warm-up
    /// copy); the time the copies took on the device.
    fn copy_benchmark(&mut self, bytes: usize, copies: u32) -> Result<Duration, GpuError>;
}

// ---------------------------------------------------------------------------
// Pure checks
// ---------------------------------------------------------------------------

/// Elements of the self-test kernel's output (1 Mi u32, 4 MiB).
pub const SELF_TEST_ELEMENTS: u32 = 1 << 20;

/// Device-to-device copies timed by the benchmark (after one warm-up copy).
pub const COPY_BENCH_COPIES: u32 = 20;

/// What the self-test kernel computes at index `i`.
pub fn self_test_expected(seed: u32, i: u32) -> u32 {
    i.wrapping_mul(i).wrapping_add(seed)
}

/// Check the self-test output on the CPU: [`SELF_TEST_ELEMENTS`] elements, each
/// [`self_test_expected`]. `Err` names the first wrong index and how many are wrong.
pub fn check_self_test(seed: u32, output: &[u32]) -> Result<String, String> {
    if output.len() != SELF_TEST_ELEMENTS as usize {
        return Err(format!(
            "self-test returned {} elements, expected {SELF_TEST_ELEMENTS}",
            output.len()
        ));
    }
    let mut first = None;
    let mut wrong = 0usize;
    for (i, &found) in (0u32..).zip(output) {
        let expected = self_test_expected(seed, i);
        if found != expected {
            wrong += 1;
            first.get_or_insert((i, expected, found));
        }
    }
    match first {
        None => Ok(format!(
            "kernel computed {SELF_TEST_ELEMENTS} elements of i*i+seed (seed {seed:#010x}), all checked by the CPU"
        )),
        Some((i, expected, found)) => Err(format!(
            "self-test element {i}: expected {expected:#010x}, found {found:#010x} ({wrong} of {SELF_TEST_ELEMENTS} wrong)"
        )),
    }
}

/// Copy rate in GB/s (10^9 bytes copied per second; each byte is read once and
/// written once, so memory traffic is twice this). `None` for no time or no bytes.
pub fn copy_gbps(bytes_per_copy: u64, copies: u32, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 || bytes_per_copy == 0 || copies == 0 {
        return None;
    }
    Some(bytes_per_copy as f64 * f64::from(copies) / secs / 1e9)
}

/// Why a GPU in `mode` breaks `policy`, if it does.
pub fn cc_policy_violation(policy: CcPolicy, mode: &CcMode) -> Option<String> {
    let why = match (policy, mode) {
        (CcPolicy::Any, _)
        | (CcPolicy::Required, CcMode::On)
        | (CcPolicy::Forbidden, CcMode::Off) => return None,
        (CcPolicy::Required, CcMode::Off) => "is not in confidential-computing mode".to_string(),
        (CcPolicy::Required, CcMode::DevTools) => {
            "is in CC devtools mode, which is not confidential".to_string()
        }
        (CcPolicy::Required, CcMode::Unknown { detail }) => {
            format!("CC mode cannot be confirmed on ({detail})")
        }
        (CcPolicy::Forbidden, CcMode::On | CcMode::DevTools) => {
            "is in confidential-computing mode".to_string()
        }
        (CcPolicy::Forbidden, CcMode::Unknown { detail }) => {
            format!("CC mode cannot be confirmed off ({detail})")
        }
    };
    Some(format!("{why} (policy gpu.cc = {})", policy.as_str()))
}

/// Whether the GPU runs in a CC mode that needs attestation and the ready state.
fn needs_attestation(mode: &CcMode) -> bool {
    matches!(mode, CcMode::On | CcMode::DevTools)
}

// ---------------------------------------------------------------------------
// Bring-up
// ---------------------------------------------------------------------------

/// The result of the GPU step.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuOutcome {
    /// For `Status::Gpus` on the host channel.
    pub summary: GpuSummary,
    /// Each CC GPU's attestation report (also when verification failed), for
    /// `GuestMessage::GpuEvidence`.
    pub evidence: Vec<GpuEvidence>,
    /// Why the workload must not start, if it must not.
    pub refusal: Option<String>,
}

impl GpuOutcome {
    /// GPUs set ready.
    pub fn ready_count(&self) -> usize {
        self.summary.gpus.iter().filter(|g| g.ready).count()
    }
}

/// Bring up every backend's GPUs under `policy`. `nonce` gives a fresh random
/// 32-byte value per call (attestation nonces and self-test seeds); an `Err`
/// from it fails the check that needed it.
///
/// Rules: no driver anywhere → `NoDriver` (the backends' details joined), a driver
/// but no device → `NoDevice`; either refused only when `policy.required`. A GPU
/// is set ready only when its identity was read, its CC mode satisfies
/// `policy.cc`, (in CC mode) its report verified with the nonce sent and its
/// ready state reads back true, and its self-test and copy passed. Any GPU found
/// and not ready refuses the workload (a CC GPU that failed attestation or is not
/// ready included, whatever `required` says), and so do fewer ready GPUs than
/// [`GpuPolicy::effective_min_count`].
pub fn bring_up(
    backends: &[&dyn GpuBackend],
    policy: &GpuPolicy,
    mut nonce: impl FnMut() -> Result<[u8; 32], String>,
) -> GpuOutcome {
    let mut no_driver = Vec::new();
    let mut any_driver = false;
    let mut gpus = Vec::new();
    let mut evidence = Vec::new();
    let mut problems = Vec::new();

    for backend in backends {
        match backend.probe() {
            Probe::NoDriver { detail } => no_driver.push(detail),
            Probe::Unusable { detail } => {
                problems.push(format!("{}: {detail}", backend.name()));
                no_driver.push(detail);
            }
            Probe::Devices(devices) => {
                any_driver = true;
                let (statuses, ev) = bring_up_backend(devices, policy, &mut nonce);
                for (status, failed) in statuses {
                    if let Some(why) = failed {
                        problems.push(format!(
                            "{} GPU {}: {why}",
                            backend.name(),
                            status.identity.index
                        ));
                    }
                    gpus.push(status);
                }
                evidence.extend(ev);
            }
        }
    }

    let presence = if !gpus.is_empty() {
        GpuPresence::Present
    } else if any_driver {
        GpuPresence::NoDevice
    } else {
        GpuPresence::NoDriver {
            detail: if no_driver.is_empty() {
                "no GPU driver present (no GPU backend in this build)".to_string()
            } else {
                no_driver.join("; ")
            },
        }
    };

    let ready = gpus.iter().filter(|g| g.ready).count();
    let min = policy.effective_min_count() as usize;
    let refusal = if !problems.is_empty() {
        Some(format!("GPU check failed: {}", problems.join("; ")))
    } else if ready < min {
        let found = match &presence {
            GpuPresence::NoDriver { detail } => detail.clone(),
            GpuPresence::NoDevice => "GPU driver present but no GPU found".to_string(),
            GpuPresence::Present => format!("{} GPU(s) found", gpus.len()),
        };
        Some(format!(
            "{found}: {ready} GPU(s) ready, policy gpu.required needs {min}"
        ))
    } else {
        None
    };

    GpuOutcome {
        summary: GpuSummary { presence, gpus },
        evidence,
        refusal: refusal.map(|r| clamp(r, bulwark_guest_protocol::MAX_TEXT)),
    }
}

/// Per-device progress through the phases.
struct Slot {
    gpu: Box<dyn Gpu>,
    status: GpuStatus,
    /// Set when the GPU cannot be ready; the first reason wins.
    failed: Option<String>,
}

impl Slot {
    fn fail(&mut self, why: String) {
        self.failed.get_or_insert(why);
    }
}

fn bring_up_backend(
    devices: Vec<Box<dyn Gpu>>,
    policy: &GpuPolicy,
    nonce: &mut impl FnMut() -> Result<[u8; 32], String>,
) -> (Vec<(GpuStatus, Option<String>)>, Vec<GpuEvidence>) {
    let mut evidence = Vec::new();
    let mut slots: Vec<Slot> = (0u32..)
        .zip(devices)
        .map(|(i, mut gpu)| {
            let mut failed = None;
            let id = gpu.identity().unwrap_or_else(|e| {
                failed = Some(format!("identity: {e}"));
                GpuIdentity {
                    index: i,
                    name: "(unknown)".into(),
                    pci_bus_id: "(unknown)".into(),
                    memory_bytes: 0,
                    compute_capability: "?".into(),
                    driver_version: "?".into(),
                }
            });
            let cc = gpu.cc_state();
            let status = GpuStatus {
                identity: GpuIdentity {
                    name: clamp(id.name, 256),
                    pci_bus_id: clamp(id.pci_bus_id, 64),
                    compute_capability: clamp(id.compute_capability, 32),
                    driver_version: clamp(id.driver_version, 128),
                    ..id
                },
                self_test_passed: false,
                self_test_detail: "not run".into(),
                copy_gbps: None,
                cc_mode: cc.mode,
                cc_ready: cc.ready,
                attestation: GpuAttestationResult::NotApplicable,
                ready: false,
            };
            Slot {
                gpu,
                status,
                failed,
            }
        })
        .collect();

    // Phase 1: CC policy, then attestation of every CC GPU.
    for slot in &mut slots {
        if let Some(why) = cc_policy_violation(policy.cc, &slot.status.cc_mode) {
            slot.fail(why);
        }
        if !needs_attestation(&slot.status.cc_mode) {
            continue;
        }
        let result = attest(slot, policy, nonce, &mut evidence);
        if let GpuAttestationResult::Failed { detail } = &result {
            slot.fail(format!("attestation failed: {detail}"));
        }
        slot.status.attestation = result;
    }

    // Phase 2: only when every CC GPU of this backend verified, let them accept
    // work (on NVIDIA the ready state is system-wide), and read the state back.
    let all_verified = slots
        .iter()
        .filter(|s| needs_attestation(&s.status.cc_mode))
        .all(|s| matches!(s.status.attestation, GpuAttestationResult::Verified { .. }));
    for slot in slots
        .iter_mut()
        .filter(|s| needs_attestation(&s.status.cc_mode))
    {
        if !all_verified {
            slot.fail("CC ready state not set: a CC GPU of this driver failed attestation".into());
            continue;
        }
        if let Err(e) = slot.gpu.accept_work() {
            slot.fail(format!("setting the CC ready state: {e}"));
        }
        let after = slot.gpu.cc_state();
        if after.mode != slot.status.cc_mode {
            slot.fail(format!(
                "CC mode changed from {} to {} while being set ready",
                cc_mode_text(&slot.status.cc_mode),
                cc_mode_text(&after.mode)
            ));
        } else if after.ready != Some(true) {
            slot.fail("CC on but the GPU is not ready (not accepting client requests)".into());
        }
        slot.status.cc_ready = after.ready;
    }

    // Phase 3: compute checks on the GPUs that are fine so far.
    for slot in &mut slots {
        if let Some(why) = &slot.failed {
            slot.status.self_test_detail = clamp(format!("not run: {why}"), 1024);
            continue;
        }
        if policy.self_test {
            let result = nonce()
                .map_err(|e| format!("self-test: no random seed: {e}"))
                .and_then(|n| {
                    let seed = u32::from_le_bytes([n[0], n[1], n[2], n[3]]);
                    slot.gpu
                        .self_test(seed)
                        .map_err(|e| format!("self-test: {e}"))
                        .and_then(|out| check_self_test(seed, &out))
                });
            match result {
                Ok(detail) => {
                    slot.status.self_test_passed = true;
                    slot.status.self_test_detail = detail;
                }
                Err(e) => {
                    slot.status.self_test_detail = clamp(e.clone(), 1024);
                    slot.fail(e);
                }
            }
        } else {
            slot.status.self_test_detail = "skipped (policy gpu.self_test = false)".into();
        }
        if slot.failed.is_none() && policy.copy_bench_mib > 0 {
            let bytes = u64::from(policy.copy_bench_mib) << 20;
            match slot.gpu.copy_benchmark(bytes as usize, COPY_BENCH_COPIES) {
                Ok(elapsed) => slot.status.copy_gbps = copy_gbps(bytes, COPY_BENCH_COPIES, elapsed),
                Err(e) => {
                    let why = format!("device-to-device copy: {e}");
                    slot.status.self_test_detail =
                        clamp(format!("{}; {why}", slot.status.self_test_detail), 1024);
                    slot.fail(why);
                }
            }
        }
    }

    let statuses = slots
        .into_iter()
        .map(|mut s| {
            s.status.ready = s.failed.is_none();
            (s.status, s.failed)
        })
        .collect();
    (statuses, evidence)
}

/// Fetch and verify one CC GPU's report with a fresh nonce.
fn attest(
    slot: &mut Slot,
    policy: &GpuPolicy,
    nonce: &mut impl FnMut() -> Result<[u8; 32], String>,
    evidence: &mut Vec<GpuEvidence>,
) -> GpuAttestationResult {
    let failed = |detail: String| GpuAttestationResult::Failed {
        detail: clamp(detail, 1024),
    };
    let n = match nonce() {
        Ok(n) => n,
        Err(e) => return failed(format!("no fresh nonce: {e}")),
    };
    let report = match slot.gpu.attestation_report(&n) {
        Ok(r) => r,
        Err(e) => return failed(format!("fetching the report: {e}")),
    };
    evidence.push(GpuEvidence {
        index: slot.status.identity.index,
        nonce: n.to_vec(),
        report: report.report.clone(),
        certificate_chain: report.certificate_chain.clone(),
    });
    match slot.gpu.verify_report(&report, &n, &policy.attestation) {
        Err(e) => failed(e),
        Ok(v) if v.report_nonce != n => failed(format!(
            "the report answers nonce {}, not the nonce sent {}",
            hex::encode(&v.report_nonce),
            hex::encode(n)
        )),
        Ok(v) => GpuAttestationResult::Verified {
            detail: clamp(v.detail, 1024),
        },
    }
}

/// A CC mode as the console writes it (`off`, `on`, `devtools`, `unknown (why)`).
pub fn cc_mode_text(m: &CcMode) -> String {
    match m {
        CcMode::Off => "off".into(),
        CcMode::On => "on".into(),
        CcMode::DevTools => "devtools".into(),
        CcMode::Unknown { detail } => format!("unknown ({detail})"),
    }
}

/// At most `max` bytes, cut at a character boundary.
fn clamp(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub(3);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// [`bring_up`] with the NVIDIA backend and nonces from the kernel RNG.
pub fn bring_up_nvidia(policy: &GpuPolicy) -> GpuOutcome {
    let backend = nvidia::NvidiaBackend::new();
    bring_up(&[&backend], policy, random_nonce)
}

/// 32 bytes from the kernel RNG (`getrandom`).
pub fn random_nonce() -> Result<[u8; 32], String> {
    use rand_core::RngCore;
    let mut n = [0u8; 32];
    rand_core::OsRng
        .try_fill_bytes(&mut n)
        .map_err(|e| format!("getrandom: {e}"))?;
    Ok(n)
}

// ---------------------------------------------------------------------------
// Console
// ---------------------------------------------------------------------------

/// The outcome for the serial console: a summary line, one line per GPU, and
/// the refusal if any.
pub fn report_lines(outcome: &GpuOutcome) -> Vec<String> {
    let s = &outcome.summary;
    let mut lines = vec![match &s.presence {
        GpuPresence::NoDriver { detail } => format!("gpu: {detail}"),
        GpuPresence::NoDevice => "gpu: driver present, no GPU found".to_string(),
        GpuPresence::Present => format!(
            "gpu: {} GPU(s), {} ready",
            s.gpus.len(),
            outcome.ready_count()
        ),
    }];
    for g in &s.gpus {
        let copy = g
            .copy_gbps
            .map_or_else(|| "copy -".to_string(), |r| format!("copy {r:.1} GB/s"));
        let cc = match g.cc_ready {
            Some(r) => format!("cc {} (ready: {r})", cc_mode_text(&g.cc_mode)),
            None => format!("cc {}", cc_mode_text(&g.cc_mode)),
        };
        let att = match &g.attestation {
            GpuAttestationResult::NotApplicable => "attestation n/a".to_string(),
            GpuAttestationResult::Verified { detail } => format!("attestation verified ({detail})"),
            GpuAttestationResult::Failed { detail } => format!("attestation FAILED ({detail})"),
        };
        lines.push(format!(
            "gpu {}: {} [{}] {} MiB, sm {}, driver {}; self-test {} ({}); {copy}; {cc}; {att}: {}",
            g.identity.index,
            g.identity.name,
            g.identity.pci_bus_id,
            g.identity.memory_bytes >> 20,
            g.identity.compute_capability,
            g.identity.driver_version,
            if g.self_test_passed {
                "passed"
            } else {
                "not passed"
            },
            g.self_test_detail,
            if g.ready { "READY" } else { "NOT READY" },
        ));
    }
    if let Some(r) = &outcome.refusal {
        lines.push(format!("gpu: workload refused: {r}"));
    }
    lines
}

#[cfg(test)]
mod tests;
