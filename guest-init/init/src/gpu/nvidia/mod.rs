//! The NVIDIA backend: the CUDA driver API through `cudarc` and NVML through
//! `nvml-wrapper`, both loaded at run time (`libcuda.so.1`, `libnvidia-ml.so.1`),
//! so one `bulwark-init` serves images with and without the NVIDIA driver.
//!
//! * Presence: `cudarc` panics when a CUDA call finds no `libcuda`, so the probe
//!   first asks the dynamic loader whether the library loads
//!   (`crate::sys::cuda::library_loadable`).
//! * Enumeration and identity come from NVML when it is there (it answers before
//!   a CC GPU is ready; CUDA does not), otherwise from the CUDA driver API.
//! * CC mode and ready state, the attestation report (SPDM GET_MEASUREMENTS with
//!   a fresh nonce) and the device certificate chain: NVML. The report is
//!   verified here with `bulwark_attestation::nvidia`.
//! * Self-test: the hand-written PTX kernel [`SELF_TEST_PTX`] (JIT-compiled by
//!   the driver: no NVRTC in the guest; `cudarc`'s `nvrtc` feature is enabled only
//!   for its `Ptx` type, and `libnvrtc` is never loaded), checked by the CPU.
//! * Copy benchmark: device-to-device copies timed with CUDA events.
//!
//! Static builds: a statically linked musl `bulwark-init` cannot `dlopen` the
//! glibc-linked `libcuda.so.1` / `libnvidia-ml.so.1` (musl's static `dlopen`
//! always fails). Such a build reports "no GPU driver present" with the loader's
//! error. GPU images need either `bulwark-init` linked against glibc dynamically,
//! or a small glibc-linked helper that does the GPU step and reports back.
//!
//! Every driver call is guarded ([`guarded`]): a panic inside `cudarc` or
//! `nvml-wrapper` (e.g. a missing symbol, an out-of-range size from the driver)
//! becomes a [`GpuError::Panicked`], not a dead PID 1: inside [`guarded`] the panic
//! hook only logs (`pid1::CaughtPanics`) and leaves the panic to `catch_unwind`.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bulwark_attestation::nvidia::{self as verifier, rim::Rim, Evidence, Exchange, Policy, Trust};
use bulwark_attestation::x509::{der, Certificate, Chain};
use bulwark_attestation::{Outcome, VerificationTime};
use bulwark_guest_protocol::CcMode;
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUresult};
use cudarc::driver::{CudaContext, DriverError};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use super::{
    AttestationPolicy, CcState, Gpu, GpuBackend, GpuError, GpuIdentity, GpuReport, Probe,
    VerifiedReport, SELF_TEST_ELEMENTS,
};

// ---------------------------------------------------------------------------
// The self-test kernel
// ---------------------------------------------------------------------------

/// Name of the self-test kernel's entry in [`SELF_TEST_PTX`].
pub const SELF_TEST_KERNEL: &str = "bulwark_self_test";

/// `bulwark_self_test(u32 *out, u32 n, u32 seed)`: `out[i] = i * i + seed`
/// (wrapping) for every `i < n`, one thread per element. Hand-written PTX (ISA
/// 6.0, `sm_50`: the driver JIT-compiles it for any later GPU).
pub const SELF_TEST_PTX: &str = r#"//
// bulwark-init GPU self-test: out[i] = i * i + seed (u32, wrapping) for i < n.
//
.version 6.0
.target sm_50
.address_size 64

.visible .entry bulwark_self_test(
	.param .u64 bulwark_self_test_out,
	.param .u32 bulwark_self_test_n,
	.param .u32 bulwark_self_test_seed
)
{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<8>;
	.reg .b64 	%rd<5>;

	ld.param.u64 	%rd1, [bulwark_self_test_out];
	ld.param.u32 	%r1, [bulwark_self_test_n];
	ld.param.u32 	%r2, [bulwark_self_test_seed];
	mov.u32 	%r3, %ctaid.x;
	mov.u32 	%r4, %ntid.x;
	mov.u32 	%r5, %tid.x;
	mad.lo.u32 	%r6, %r3, %r4, %r5;
	setp.ge.u32 	%p1, %r6, %r1;
	@%p1 bra 	$L__done;
	mul.lo.u32 	%r7, %r6, %r6;
	add.u32 	%r7, %r7, %r2;
	cvta.to.global.u64 	%rd2, %rd1;
	mul.wide.u32 	%rd3, %r6, 4;
	add.u64 	%rd4, %rd2, %rd3;
	st.global.u32 	[%rd4], %r7;
$L__done:
	ret;
}
"#;

// ---------------------------------------------------------------------------
// NVML confidential-computing values (nvml.h)
// ---------------------------------------------------------------------------

/// `NVML_CC_SYSTEM_FEATURE_DISABLED`.
pub const NVML_CC_SYSTEM_FEATURE_DISABLED: u32 = 0;
/// `NVML_CC_SYSTEM_FEATURE_ENABLED`.
pub const NVML_CC_SYSTEM_FEATURE_ENABLED: u32 = 1;
/// `NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF`.
pub const NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF: u32 = 0;
/// `NVML_CC_SYSTEM_DEVTOOLS_MODE_ON`.
pub const NVML_CC_SYSTEM_DEVTOOLS_MODE_ON: u32 = 1;
/// `NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE`.
pub const NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE: u32 = 0;
/// `NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE`.
pub const NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE: u32 = 1;

/// The system CC state as NVML reports it (`nvmlSystemConfComputeSettings_t`
/// / `nvmlConfComputeSystemState_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvmlCcState {
    /// `ccFeature`.
    pub cc_feature: u32,
    /// `devToolsMode`.
    pub dev_tools_mode: u32,
    /// Whether `environment` is `NVML_CC_SYSTEM_ENVIRONMENT_PROD`, when known
    /// (`nvml-wrapper` only tells it once the GPUs accept work).
    pub production: Option<bool>,
}

/// CC mode from NVML's values: feature off → `Off`; on with devtools → `DevTools`;
/// on, devtools off and not known to be a simulated environment → `On`; anything
/// else → `Unknown` with the values.
pub fn cc_mode_from_nvml(s: &NvmlCcState) -> CcMode {
    match (s.cc_feature, s.dev_tools_mode, s.production) {
        (NVML_CC_SYSTEM_FEATURE_DISABLED, _, _) => CcMode::Off,
        (NVML_CC_SYSTEM_FEATURE_ENABLED, NVML_CC_SYSTEM_DEVTOOLS_MODE_ON, _) => CcMode::DevTools,
        (NVML_CC_SYSTEM_FEATURE_ENABLED, NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF, Some(false)) => {
            CcMode::Unknown {
                detail: "CC feature enabled, but NVML reports a non-production environment".into(),
            }
        }
        (NVML_CC_SYSTEM_FEATURE_ENABLED, NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF, _) => CcMode::On,
        (f, d, _) => CcMode::Unknown {
            detail: format!("unrecognised NVML CC state: ccFeature {f}, devToolsMode {d}"),
        },
    }
}

/// Ready state from `nvmlSystemGetConfComputeGpusReadyState`'s value.
pub fn cc_ready_from_nvml(accepting_client_requests: u32) -> Option<bool> {
    match accepting_client_requests {
        NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE => Some(true),
        NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE => Some(false),
        _ => None,
    }
}

fn nvml_flag(b: bool, on: u32, off: u32) -> u32 {
    if b {
        on
    } else {
        off
    }
}

// ---------------------------------------------------------------------------
// Attestation: NVML's report → the project's verifier
// ---------------------------------------------------------------------------

/// One RIM from the policy (TCG SWID XML text).
pub fn parse_rim(text: &str) -> Result<Rim, String> {
    Rim::parse(text.as_bytes()).map_err(|e| e.to_string())
}

/// The device certificate chain as NVML returns it (`attestationCertChain`):
/// PEM, leaf first; concatenated DER certificates are accepted too. NUL padding
/// after the last certificate is ignored.
pub fn parse_cert_chain(bytes: &[u8]) -> Result<Chain, String> {
    const WHAT: &str = "GPU device certificate chain";
    if bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Chain::from_pem(bytes, WHAT).map_err(|e| e.to_string());
    }
    let mut certs = Vec::new();
    let mut rest = bytes;
    // Stop at the end or at NUL padding (a DER certificate starts with 0x30).
    while rest.first().is_some_and(|&b| b != 0) {
        let (_, after) = der::read(rest).map_err(|e| format!("{WHAT}: {e}"))?;
        let one = &rest[..rest.len() - after.len()];
        certs.push(Certificate::from_der(one).map_err(|e| e.to_string())?);
        rest = after;
    }
    Chain::from_certs(certs, WHAT).map_err(|e| e.to_string())
}

/// Verify an NVIDIA GPU's attestation report (NVML `attestationReport`: the SPDM
/// GET_MEASUREMENTS request and response, raw) and its certificate chain with the
/// project's verifier, as of `at`: measurement signature by the device key, chain
/// to the NVIDIA Device Identity CA, validity, the request's nonce equal to
/// `nonce`; then `policy` (RIMs, driver and VBIOS versions).
pub fn verify_nvidia_report(
    report: &[u8],
    cert_chain: &[u8],
    nonce: &[u8; 32],
    policy: &AttestationPolicy,
    trust: &Trust,
    at: VerificationTime,
) -> Result<VerifiedReport, String> {
    let exchange = Exchange::parse(report).map_err(|e| format!("attestation report: {e}"))?;
    let chain = parse_cert_chain(cert_chain)?;
    let rims = policy
        .rims
        .iter()
        .enumerate()
        .map(|(i, r)| parse_rim(r).map_err(|e| format!("policy gpu.attestation.rims[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let report_nonce = exchange.request.nonce.to_vec();
    let ev = Evidence {
        exchange,
        chain,
        rims,
    };
    let v = verifier::verify(
        &ev,
        trust,
        &Policy {
            expect_nonce: Some(nonce.to_vec()),
        },
        at,
    );
    if !v.is_ok() {
        let failed: Vec<String> = v
            .failures()
            .map(|c| format!("{} ({})", c.name, c.detail))
            .collect();
        return Err(format!("failed checks: {}", failed.join("; ")));
    }
    if report_nonce != nonce {
        return Err("the report's nonce differs from the nonce sent".into());
    }
    let claim = |k: &str| {
        v.claims
            .get(k)
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string()
    };
    let driver = claim("driver_version");
    let vbios = claim("vbios_version");
    let allowed = |list: &[String], value: &str| {
        list.is_empty() || list.iter().any(|a| a.eq_ignore_ascii_case(value))
    };
    if !allowed(&policy.driver_versions, &driver) {
        return Err(format!(
            "driver version {driver:?} is not in policy gpu.attestation.driver_versions"
        ));
    }
    if !allowed(&policy.vbios_versions, &vbios) {
        return Err(format!(
            "VBIOS version {vbios:?} is not in policy gpu.attestation.vbios_versions"
        ));
    }
    let rim_note = match v.check("rim-comparison") {
        Some(c) if c.result == Outcome::Passed => c.detail.clone(),
        _ => "measurements not compared (no RIM in the policy)".to_string(),
    };
    if policy.require_rims {
        let compared = v
            .check("rim-comparison")
            .is_some_and(|c| c.result == Outcome::Passed);
        let has = |value: &str| {
            !value.is_empty()
                && ev
                    .rims
                    .iter()
                    .any(|r| r.version.eq_ignore_ascii_case(value))
        };
        if !compared || !has(&driver) || !has(&vbios) {
            return Err(format!(
                "policy gpu.attestation.require_rims: needs RIMs for driver {driver} and VBIOS {vbios} and a passed comparison"
            ));
        }
    }
    let passed: Vec<&str> = v
        .checks
        .iter()
        .filter(|c| c.result == Outcome::Passed)
        .map(|c| c.name)
        .collect();
    Ok(VerifiedReport {
        report_nonce,
        detail: format!(
            "{}; driver {driver}, VBIOS {vbios}; {rim_note}",
            passed.join(", ")
        ),
    })
}

// ---------------------------------------------------------------------------
// Small pure helpers
// ---------------------------------------------------------------------------

/// The driver version from `/proc/driver/nvidia/version`'s text.
pub fn parse_proc_driver_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|w| {
            w.contains('.')
                && w.starts_with(|c: char| c.is_ascii_digit())
                && w.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
        .map(str::to_string)
}

/// PCI address `(domain, bus, device, function)` from a bus id as NVML
/// (`00000000:01:00.0`) or CUDA (`0000:01:00.0`) writes it.
pub fn parse_pci_bus_id(id: &str) -> Option<(u32, u8, u8, u8)> {
    let mut parts = id.trim().split(':');
    let domain = u32::from_str_radix(parts.next()?, 16).ok()?;
    let bus = u8::from_str_radix(parts.next()?, 16).ok()?;
    let (dev, func) = parts.next()?.split_once('.')?;
    if parts.next().is_some() {
        return None;
    }
    let dev = u8::from_str_radix(dev, 16).ok()?;
    let func = u8::from_str_radix(func, 16).ok()?;
    (dev < 32 && func < 8).then_some((domain, bus, dev, func))
}

/// Run a driver call; a panic becomes [`GpuError::Panicked`].
pub fn guarded<T>(
    call: &'static str,
    f: impl FnOnce() -> Result<T, GpuError>,
) -> Result<T, GpuError> {
    let _caught = crate::pid1::CaughtPanics::enter();
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(GpuError::Panicked {
            call,
            detail: panic_text(p.as_ref()),
        })
    })
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

fn cuda_err(call: &'static str) -> impl Fn(DriverError) -> GpuError {
    move |e| GpuError::Driver {
        call,
        detail: format!("{:?}", e.0),
    }
}

fn nvml_err(call: &'static str) -> impl Fn(NvmlError) -> GpuError {
    move |e| GpuError::Driver {
        call,
        detail: e.to_string(),
    }
}

// ---------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------

/// NVIDIA GPUs through `libcuda.so.1` and `libnvidia-ml.so.1`.
#[derive(Debug, Default)]
pub struct NvidiaBackend {
    _private: (),
}

impl NvidiaBackend {
    /// The backend (nothing is loaded until [`GpuBackend::probe`]).
    pub fn new() -> Self {
        Self::default()
    }
}

impl GpuBackend for NvidiaBackend {
    fn name(&self) -> &'static str {
        "nvidia"
    }

    fn probe(&self) -> Probe {
        if let Err(why) = crate::sys::cuda::library_loadable("libcuda.so.1") {
            return Probe::NoDriver {
                detail: format!("no GPU driver present ({why})"),
            };
        }
        let nvml = guarded("nvmlInit", || {
            Nvml::init().map_err(nvml_err("nvmlInit (libnvidia-ml.so.1)"))
        });
        match nvml {
            Ok(nvml) => {
                let nvml = Arc::new(nvml);
                match guarded("nvmlDeviceGetCount", || {
                    nvml.device_count().map_err(nvml_err("nvmlDeviceGetCount"))
                }) {
                    Ok(n) => Probe::Devices(
                        (0..n)
                            .map(|i| Box::new(NvidiaGpu::new(i, Ok(nvml.clone()))) as Box<dyn Gpu>)
                            .collect(),
                    ),
                    Err(e) => Probe::Unusable {
                        detail: format!("NVIDIA driver present but unusable: {e}"),
                    },
                }
            }
            Err(nvml_error) => {
                let nvml_error = nvml_error.to_string();
                match guarded("cuDeviceGetCount", || {
                    CudaContext::device_count().map_err(cuda_err("cuInit/cuDeviceGetCount"))
                }) {
                    Ok(n) => Probe::Devices(
                        (0..n.max(0) as u32)
                            .map(|i| {
                                Box::new(NvidiaGpu::new(i, Err(nvml_error.clone()))) as Box<dyn Gpu>
                            })
                            .collect(),
                    ),
                    Err(GpuError::Driver { detail, .. })
                        if detail == format!("{:?}", CUresult::CUDA_ERROR_NO_DEVICE) =>
                    {
                        Probe::Devices(Vec::new())
                    }
                    Err(GpuError::Driver { detail, .. })
                        if detail == format!("{:?}", CUresult::CUDA_ERROR_SYSTEM_NOT_READY) =>
                    {
                        Probe::Unusable {
                            detail: format!(
                                "an NVIDIA GPU is in confidential-computing mode and not ready \
                                 (cuInit: {detail}), and NVML, needed to attest it and set it \
                                 ready, is not available ({nvml_error})"
                            ),
                        }
                    }
                    Err(e) => Probe::NoDriver {
                        detail: format!("no usable GPU driver: {e}; NVML: {nvml_error}"),
                    },
                }
            }
        }
    }
}

/// One NVIDIA GPU: an NVML device index (with NVML) or a CUDA ordinal (without).
pub struct NvidiaGpu {
    index: u32,
    nvml: Result<Arc<Nvml>, String>,
    pci_bus_id: Option<String>,
    cuda: Option<Arc<CudaContext>>,
}

impl std::fmt::Debug for NvidiaGpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvidiaGpu")
            .field("index", &self.index)
            .field("nvml", &self.nvml.as_ref().map(|_| "loaded"))
            .field("pci_bus_id", &self.pci_bus_id)
            .field("cuda", &self.cuda.as_ref().map(|c| c.ordinal()))
            .finish()
    }
}

impl NvidiaGpu {
    fn new(index: u32, nvml: Result<Arc<Nvml>, String>) -> Self {
        NvidiaGpu {
            index,
            nvml,
            pci_bus_id: None,
            cuda: None,
        }
    }

    fn nvml(&self) -> Result<&Nvml, GpuError> {
        self.nvml
            .as_deref()
            .map_err(|e| GpuError::Unsupported(format!("NVML not available: {e}")))
    }

    /// The CUDA context of this GPU: with NVML, the CUDA device whose PCI address
    /// is this NVML device's (CUDA's order may differ from NVML's); without, the
    /// CUDA ordinal.
    fn cuda(&mut self) -> Result<Arc<CudaContext>, GpuError> {
        if let Some(c) = &self.cuda {
            return Ok(c.clone());
        }
        let ctx = if self.nvml.is_ok() {
            let want = match &self.pci_bus_id {
                Some(id) => id.clone(),
                None => self.identity()?.pci_bus_id,
            };
            let want_addr = parse_pci_bus_id(&want)
                .ok_or_else(|| GpuError::Unsupported(format!("unparseable PCI bus id {want:?}")))?;
            let count = CudaContext::device_count().map_err(cuda_err("cuDeviceGetCount"))?;
            let mut found = None;
            for ordinal in 0..count.max(0) as usize {
                let ctx =
                    CudaContext::new(ordinal).map_err(cuda_err("cuDevicePrimaryCtxRetain"))?;
                if cuda_pci_address(&ctx)? == want_addr {
                    found = Some(ctx);
                    break;
                }
            }
            found.ok_or_else(|| {
                GpuError::Unsupported(format!("no CUDA device at PCI address {want}"))
            })?
        } else {
            CudaContext::new(self.index as usize).map_err(cuda_err("cuDevicePrimaryCtxRetain"))?
        };
        self.cuda = Some(ctx.clone());
        Ok(ctx)
    }
}

fn cuda_pci_address(ctx: &CudaContext) -> Result<(u32, u8, u8, u8), GpuError> {
    let attr = |a: CUdevice_attribute| {
        ctx.attribute(a)
            .map_err(cuda_err("cuDeviceGetAttribute(PCI)"))
    };
    let domain = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?;
    let bus = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?;
    let dev = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?;
    let bad = || GpuError::Unsupported(format!("PCI address {domain}:{bus}:{dev} out of range"));
    Ok((
        u32::try_from(domain).map_err(|_| bad())?,
        u8::try_from(bus).map_err(|_| bad())?,
        u8::try_from(dev).map_err(|_| bad())?,
        0,
    ))
}

fn driver_version_from_proc() -> String {
    match std::fs::read_to_string("/proc/driver/nvidia/version") {
        Ok(text) => parse_proc_driver_version(&text)
            .unwrap_or_else(|| "unknown (unrecognised /proc/driver/nvidia/version)".into()),
        Err(e) => format!("unknown (/proc/driver/nvidia/version: {e})"),
    }
}

impl Gpu for NvidiaGpu {
    fn identity(&mut self) -> Result<GpuIdentity, GpuError> {
        let index = self.index;
        let id = guarded("identity", || {
            if let Ok(nvml) = &self.nvml {
                let d = nvml
                    .device_by_index(index)
                    .map_err(nvml_err("nvmlDeviceGetHandleByIndex"))?;
                let cc = d
                    .cuda_compute_capability()
                    .map_err(nvml_err("nvmlDeviceGetCudaComputeCapability"))?;
                Ok(GpuIdentity {
                    index,
                    name: d.name().map_err(nvml_err("nvmlDeviceGetName"))?,
                    pci_bus_id: d
                        .pci_info()
                        .map_err(nvml_err("nvmlDeviceGetPciInfo"))?
                        .bus_id,
                    memory_bytes: d
                        .memory_info()
                        .map_err(nvml_err("nvmlDeviceGetMemoryInfo"))?
                        .total,
                    compute_capability: format!("{}.{}", cc.major, cc.minor),
                    driver_version: nvml
                        .sys_driver_version()
                        .map_err(nvml_err("nvmlSystemGetDriverVersion"))?,
                })
            } else {
                let ctx = CudaContext::new(index as usize)
                    .map_err(cuda_err("cuInit/cuDevicePrimaryCtxRetain"))?;
                let (major, minor) = ctx
                    .compute_capability()
                    .map_err(cuda_err("cuDeviceGetAttribute(COMPUTE_CAPABILITY)"))?;
                let (domain, bus, dev, func) = cuda_pci_address(&ctx)?;
                Ok(GpuIdentity {
                    index,
                    name: ctx.name().map_err(cuda_err("cuDeviceGetName"))?,
                    pci_bus_id: format!("{domain:04x}:{bus:02x}:{dev:02x}.{func}"),
                    memory_bytes: ctx.total_mem().map_err(cuda_err("cuDeviceTotalMem"))? as u64,
                    compute_capability: format!("{major}.{minor}"),
                    driver_version: driver_version_from_proc(),
                })
            }
        })?;
        self.pci_bus_id = Some(id.pci_bus_id.clone());
        Ok(id)
    }

    fn cc_state(&mut self) -> CcState {
        let nvml = match self.nvml() {
            Ok(n) => n,
            Err(e) => {
                return CcState {
                    mode: CcMode::Unknown {
                        detail: e.to_string(),
                    },
                    ready: None,
                }
            }
        };
        let index = self.index;
        let read = guarded("cc state", || {
            let d = nvml
                .device_by_index(index)
                .map_err(nvml_err("nvmlDeviceGetHandleByIndex"))?;
            let feature = match d.is_cc_enabled() {
                Ok(b) => b,
                // A GPU or system without CC support is not in CC mode.
                Err(NvmlError::NotSupported) => {
                    return Ok(CcState {
                        mode: CcMode::Off,
                        ready: None,
                    })
                }
                Err(e) => return Err(nvml_err("nvmlSystemGetConfComputeSettings")(e)),
            };
            let devtools = d
                .is_cc_dev_mode_enabled()
                .map_err(nvml_err("nvmlSystemGetConfComputeSettings"))?;
            let ready = d.get_confidential_compute_state().ok();
            let production = match (feature, ready) {
                (true, Some(true)) => d.check_confidential_compute_status().ok(),
                _ => None,
            };
            let raw = NvmlCcState {
                cc_feature: nvml_flag(
                    feature,
                    NVML_CC_SYSTEM_FEATURE_ENABLED,
                    NVML_CC_SYSTEM_FEATURE_DISABLED,
                ),
                dev_tools_mode: nvml_flag(
                    devtools,
                    NVML_CC_SYSTEM_DEVTOOLS_MODE_ON,
                    NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF,
                ),
                production,
            };
            Ok(CcState {
                mode: cc_mode_from_nvml(&raw),
                ready: ready.and_then(|r| {
                    cc_ready_from_nvml(nvml_flag(
                        r,
                        NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE,
                        NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE,
                    ))
                }),
            })
        });
        read.unwrap_or_else(|e| CcState {
            mode: CcMode::Unknown {
                detail: e.to_string(),
            },
            ready: None,
        })
    }

    fn attestation_report(&mut self, nonce: &[u8; 32]) -> Result<GpuReport, GpuError> {
        let nvml = self.nvml()?;
        let index = self.index;
        guarded("attestation report", || {
            let d = nvml
                .device_by_index(index)
                .map_err(nvml_err("nvmlDeviceGetHandleByIndex"))?;
            let report = d
                .confidential_compute_gpu_attestation_report(*nonce)
                .map_err(nvml_err("nvmlDeviceGetConfComputeGpuAttestationReport"))?;
            let certs = d
                .confidential_compute_gpu_certificate()
                .map_err(nvml_err("nvmlDeviceGetConfComputeGpuCertificate"))?;
            Ok(GpuReport {
                report: report.attestation_report,
                certificate_chain: certs.attestation_cert_chain,
            })
        })
    }

    fn verify_report(
        &self,
        report: &GpuReport,
        nonce: &[u8; 32],
        policy: &AttestationPolicy,
    ) -> Result<VerifiedReport, String> {
        verify_nvidia_report(
            &report.report,
            &report.certificate_chain,
            nonce,
            policy,
            &verifier::default_trust(),
            VerificationTime::now(),
        )
    }

    fn accept_work(&mut self) -> Result<(), GpuError> {
        let nvml = self.nvml()?;
        let index = self.index;
        guarded("set CC ready state", || {
            nvml.device_by_index(index)
                .map_err(nvml_err("nvmlDeviceGetHandleByIndex"))?
                .set_confidential_compute_state(true)
                .map_err(nvml_err("nvmlSystemSetConfComputeGpusReadyState"))
        })
    }

    fn self_test(&mut self, seed: u32) -> Result<Vec<u32>, GpuError> {
        guarded("self-test", || {
            let ctx = self.cuda()?;
            let stream = ctx.default_stream();
            let mut out = stream
                .alloc_zeros::<u32>(SELF_TEST_ELEMENTS as usize)
                .map_err(cuda_err("cuMemAlloc"))?;
            crate::sys::cuda::run_self_test_kernel(
                &stream,
                SELF_TEST_PTX,
                SELF_TEST_KERNEL,
                &mut out,
                seed,
            )
            .map_err(|detail| GpuError::Driver {
                call: "self-test kernel",
                detail,
            })?;
            let host = stream.clone_dtoh(&out).map_err(cuda_err("cuMemcpyDtoH"))?;
            stream
                .synchronize()
                .map_err(cuda_err("cuStreamSynchronize"))?;
            Ok(host)
        })
    }

    fn copy_benchmark(&mut self, bytes: usize, copies: u32) -> Result<Duration, GpuError> {
        guarded("copy benchmark", || {
            let ctx = self.cuda()?;
            let stream = ctx.default_stream();
            let src = stream
                .alloc_zeros::<u8>(bytes)
                .map_err(cuda_err("cuMemAlloc"))?;
            let mut dst = stream
                .alloc_zeros::<u8>(bytes)
                .map_err(cuda_err("cuMemAlloc"))?;
            stream
                .memcpy_dtod(&src, &mut dst)
                .map_err(cuda_err("cuMemcpyDtoDAsync"))?;
            let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
            let start = ctx.new_event(timing).map_err(cuda_err("cuEventCreate"))?;
            let end = ctx.new_event(timing).map_err(cuda_err("cuEventCreate"))?;
            start.record(&stream).map_err(cuda_err("cuEventRecord"))?;
            for _ in 0..copies {
                stream
                    .memcpy_dtod(&src, &mut dst)
                    .map_err(cuda_err("cuMemcpyDtoDAsync"))?;
            }
            end.record(&stream).map_err(cuda_err("cuEventRecord"))?;
            let ms = start
                .elapsed_ms(&end)
                .map_err(cuda_err("cuEventElapsedTime"))?;
            stream
                .synchronize()
                .map_err(cuda_err("cuStreamSynchronize"))?;
            if !(ms.is_finite() && ms >= 0.0) {
                return Err(GpuError::Driver {
                    call: "cuEventElapsedTime",
                    detail: format!("elapsed time {ms} ms"),
                });
            }
            Ok(Duration::from_secs_f64(f64::from(ms) / 1000.0))
        })
    }
}

#[cfg(test)]
mod tests;
