//! Every message of the host channel. CBOR through serde: structs refuse unknown
//! fields, enums unknown variants, and [`GuestMessage::validate`] /
//! [`HostMessage::validate`] enforce the limits that types cannot.

use serde::{Deserialize, Serialize};

use crate::frame::truncate_utf8;
use crate::{MAX_NONCE, MAX_OUTPUT_CHUNK, MIN_NONCE};

/// Longest free-text field (details, messages, names), in bytes.
pub const MAX_TEXT: usize = 4096;
/// Most entries in a list field (modules, GPUs, ports).
pub const MAX_LIST: usize = 256;

/// From `bulwark-init` to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum GuestMessage {
    /// First message on every connection.
    Hello(Hello),
    /// A boot or run stage was reached.
    Progress(Progress),
    /// The outcome of a step (modules, root, GPUs, bridge).
    Status(Status),
    /// A chunk of the workload's stdout or stderr, in order, byte-exact.
    Output(Output),
    /// The workload ended.
    Exit(ExitReport),
    /// The workload will not run, or `bulwark-init` failed: the VM powers off next.
    Refusal(Refusal),
    /// The guest's attestation public key, made at boot from the kernel RNG.
    AttestationKey(AttestationKey),
    /// Answer to a `Challenge`.
    ChallengeResponse(ChallengeResponse),
    /// A GPU's own attestation report, as fetched in the guest.
    GpuEvidence(GpuEvidence),
    /// Answer to `Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The host sent something this side could not take.
    Error(ProtocolError),
    /// Evidence wanted for an attested TLS handshake: the host answers with
    /// `Evidence` chunks or `EvidenceUnavailable` carrying the same `request`.
    EvidenceRequest(EvidenceRequest),
    /// The last message: the VM powers off now.
    PowerOff {
        /// Why.
        reason: String,
    },
}

/// From the host to `bulwark-init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum HostMessage {
    /// The host's greeting (optional).
    Hello {
        /// Protocol version the host speaks.
        protocol: u16,
        /// Free text naming the host side (e.g. `bulwarkd 0.1.0`).
        host: String,
    },
    /// Liveness check; the guest answers `Pong` with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// A fresh nonce for the guest's attestation key to sign.
    Challenge {
        /// 16 to 64 bytes.
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
    },
    /// The host's (or the verifier's) verdict on the guest's evidence.
    Verdict {
        /// Affirmed or not.
        accepted: bool,
        /// Why.
        detail: String,
    },
    /// Stop the workload (SIGTERM, then SIGKILL after the grace period) and power off.
    Shutdown {
        /// Why.
        reason: String,
    },
    /// One chunk of the evidence document answering an `EvidenceRequest`.
    Evidence(EvidenceChunk),
    /// The host cannot produce evidence for this request.
    EvidenceUnavailable {
        /// The request answered.
        request: u32,
        /// Why.
        reason: String,
    },
    /// The guest sent something this side could not take.
    Error(ProtocolError),
}

/// Evidence for attested TLS (`docs/evidence.md`, "Attested TLS"): a Bulwark
/// evidence document whose `freshness.nonce` is `nonce` and whose
/// `freshness.tls_key_sha256` is `tls_key_sha256`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceRequest {
    /// Chosen by the guest; the answer carries it back.
    pub request: u32,
    /// The TLS client's nonce ([`crate::MIN_NONCE`] to [`crate::MAX_NONCE`] bytes).
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// SHA-256 of the guest's TLS certificate's SubjectPublicKeyInfo (32 bytes).
    #[serde(with = "serde_bytes")]
    pub tls_key_sha256: Vec<u8>,
}

/// One piece of an evidence document, in order: `offset` is where `data` starts,
/// `total` the whole document's length (the same in every chunk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceChunk {
    /// The request answered.
    pub request: u32,
    /// Length of the whole document, at most [`crate::MAX_EVIDENCE`].
    pub total: u32,
    /// Offset of `data` in the document.
    pub offset: u32,
    /// At most [`crate::MAX_EVIDENCE_CHUNK`] bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl EvidenceChunk {
    /// `document` cut into chunks for `request`.
    pub fn split(request: u32, document: &[u8]) -> Vec<EvidenceChunk> {
        let total = u32::try_from(document.len()).unwrap_or(u32::MAX);
        let mut chunks: Vec<EvidenceChunk> = document
            .chunks(crate::MAX_EVIDENCE_CHUNK)
            .enumerate()
            .map(|(i, data)| EvidenceChunk {
                request,
                total,
                offset: (i * crate::MAX_EVIDENCE_CHUNK) as u32,
                data: data.to_vec(),
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(EvidenceChunk {
                request,
                total: 0,
                offset: 0,
                data: Vec::new(),
            });
        }
        chunks
    }
}

/// `Hello` from the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol version (= the frame header's).
    pub protocol: u16,
    /// `bulwark-init`'s version.
    pub init_version: String,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// The kernel's random boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Microseconds since the kernel started (CLOCK_BOOTTIME).
    pub uptime_us: u64,
}

/// Stages, in the order a successful boot reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// `bulwark-init` started (its first line on the console).
    InitStarted,
    /// The host channel connected.
    HostChannelUp,
    /// The configuration was read and accepted.
    ConfigLoaded,
    /// The modules were loaded and module loading disabled.
    ModulesLoaded,
    /// Every rootfs block passed dm-verity.
    RootVerified,
    /// The root was mounted read-only and the workload's view prepared.
    RootMounted,
    /// The GPU step finished (GPUs ready, or none and none required).
    GpuReady,
    /// The vsock → TCP bridges listen.
    BridgeUp,
    /// The workload was started.
    WorkloadStarted,
    /// The workload ended.
    WorkloadEnded,
    /// Orderly shutdown began.
    ShuttingDown,
}

/// A stage reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// Which.
    pub stage: Stage,
    /// Microseconds since the kernel started (CLOCK_BOOTTIME).
    pub uptime_us: u64,
    /// Free text.
    pub detail: String,
}

/// The outcome of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Status {
    /// Modules loaded.
    Modules(ModulesStatus),
    /// The verified root.
    Root(RootStatus),
    /// GPUs found and checked.
    Gpus(GpuSummary),
    /// The vsock → TCP bridges.
    Bridge(BridgeStatus),
}

/// Modules loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModulesStatus {
    /// Modules loaded by `bulwark-init`, in load order.
    pub loaded: Vec<String>,
    /// Wanted modules that were already built in or loaded.
    pub present: Vec<String>,
    /// `/proc/sys/kernel/modules_disabled` is 1.
    pub loading_disabled: bool,
    /// Time spent.
    pub elapsed_us: u64,
}

/// The verified root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootStatus {
    /// The virtio-blk disk (its serial, the VMM's disk id).
    pub disk: String,
    /// dm-verity root hash (hex) the disk was checked against.
    pub root_hash: String,
    /// Bytes of filesystem data.
    pub data_bytes: u64,
    /// Every block read and verified before the workload started.
    pub fully_verified: bool,
    /// Filesystem type mounted read-only.
    pub fs: String,
    /// Time spent verifying.
    pub elapsed_us: u64,
}

/// What the GPU step found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSummary {
    /// Driver presence.
    pub presence: GpuPresence,
    /// Each GPU's state.
    pub gpus: Vec<GpuStatus>,
}

/// Whether a GPU driver and GPUs are there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuPresence {
    /// No GPU driver library or kernel driver (e.g. "no GPU driver present").
    NoDriver {
        /// What is missing.
        detail: String,
    },
    /// A driver but no device.
    NoDevice,
    /// At least one GPU.
    Present,
}

/// Confidential-computing mode of a GPU, as its driver reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CcMode {
    /// Not in CC mode.
    Off,
    /// CC mode on.
    On,
    /// CC "devtools" mode: not confidential.
    DevTools,
    /// The driver does not report it (no NVML, an older GPU).
    Unknown {
        /// Why.
        detail: String,
    },
}

/// The outcome of a GPU's attestation inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuAttestationResult {
    /// Not done: the GPU is not in CC mode (said so, never claimed).
    NotApplicable,
    /// Verified against the signed policy.
    Verified {
        /// The checks that ran.
        detail: String,
    },
    /// Fetched or verified and failed: the GPU is not set ready.
    Failed {
        /// Which check.
        detail: String,
    },
}

/// What a GPU is, as its driver reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuIdentity {
    /// Index in the driver's enumeration.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// PCI bus id as the driver writes it.
    pub pci_bus_id: String,
    /// Device memory, bytes.
    pub memory_bytes: u64,
    /// `major.minor`.
    pub compute_capability: String,
    /// Driver version.
    pub driver_version: String,
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuStatus {
    /// What it is.
    pub identity: GpuIdentity,
    /// The kernel-on-device check passed (its result checked by the CPU).
    pub self_test_passed: bool,
    /// What the check did and found.
    pub self_test_detail: String,
    /// Device-to-device copy rate, GB/s.
    pub copy_gbps: Option<f64>,
    /// CC mode.
    pub cc_mode: CcMode,
    /// CC ready state as reported (`None` when not reported).
    pub cc_ready: Option<bool>,
    /// Attestation in the guest.
    pub attestation: GpuAttestationResult,
    /// Set ready for the workload.
    pub ready: bool,
}

/// The bridges that listen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeStatus {
    /// (vsock port, guest TCP port) pairs.
    pub ports: Vec<(u32, u16)>,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
}

/// Workload output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Which stream.
    pub stream: Stream,
    /// Byte offset of `data` in the stream (lets the host see any gap).
    pub offset: u64,
    /// At most [`MAX_OUTPUT_CHUNK`] bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// How the workload ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitReport {
    /// Exit status, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal killed it.
    pub signal: Option<i32>,
    /// The signal's name (`SIGKILL`).
    pub signal_name: Option<String>,
    /// Run time.
    pub runtime_us: u64,
    /// Bytes of stdout and stderr the host channel could not take (0 normally).
    pub output_dropped: u64,
}

/// Why the workload will not run (or `bulwark-init` stops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The configuration (command line or config component) is refused.
    Config,
    /// A module is missing or failed to load.
    Module,
    /// The rootfs does not match its signed dm-verity root hash.
    RootfsVerification,
    /// Setting up or mounting the root or the workload's view failed.
    Mount,
    /// A GPU is required and none is usable.
    GpuRequired,
    /// A GPU failed its check, is not CC-ready, or failed attestation.
    GpuCheck,
    /// A passthrough device the config requires is not on the guest's PCI bus.
    DeviceRequired,
    /// The workload's program does not exist on the root.
    WorkloadNotFound,
    /// The workload could not be started.
    WorkloadStart,
    /// `bulwark-init` panicked.
    Panic,
    /// The host (`Shutdown`) or a signal to PID 1 asked for a stop before the workload
    /// started.
    Stopped,
    /// Any other failure of `bulwark-init`.
    Internal,
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// Machine-readable reason.
    pub reason: RefusalReason,
    /// The last stage reached (the refused step is the one after it; for a panic
    /// injected at a stage, that stage).
    pub stage: Stage,
    /// Human-readable, naming the field, module, block or path.
    pub message: String,
}

/// The guest's attestation key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationKey {
    /// `"ecdsa-p384"`.
    pub algorithm: String,
    /// SEC1 uncompressed point (97 bytes).
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
}

/// Answer to a challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeResponse {
    /// The challenge's nonce.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// DER ECDSA P-384/SHA-384 signature over
    /// [`crate::challenge_signed_bytes`]`(nonce)`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// A GPU's attestation report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuEvidence {
    /// GPU index.
    pub index: u32,
    /// The nonce the report answers.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// The SPDM GET_MEASUREMENTS request and response as the driver returns them.
    #[serde(with = "serde_bytes")]
    pub report: Vec<u8>,
    /// The device certificate chain (PEM or DER as the driver returns it).
    #[serde(with = "serde_bytes")]
    pub certificate_chain: Vec<u8>,
}

/// A protocol error report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolError {
    /// Machine-readable.
    pub code: ErrorCode,
    /// Human-readable.
    pub message: String,
}

/// Protocol error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not at a frame header.
    BadMagic,
    /// Another protocol version.
    UnsupportedVersion,
    /// Wrong or unknown direction byte.
    WrongDirection,
    /// Over [`crate::MAX_PAYLOAD`].
    Oversized,
    /// The stream ended or stalled inside a frame.
    Truncated,
    /// Not a valid message.
    Malformed,
    /// A valid message this side does not take now.
    Unexpected,
}

fn text(field: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_TEXT {
        return Err(format!("{field}: {} bytes, over {MAX_TEXT}", s.len()));
    }
    Ok(())
}

fn list<T>(field: &str, v: &[T]) -> Result<(), String> {
    if v.len() > MAX_LIST {
        return Err(format!("{field}: {} entries, over {MAX_LIST}", v.len()));
    }
    Ok(())
}

fn nonce(field: &str, n: &[u8]) -> Result<(), String> {
    if !(MIN_NONCE..=MAX_NONCE).contains(&n.len()) {
        return Err(format!(
            "{field}: {} bytes, must be {MIN_NONCE} to {MAX_NONCE}",
            n.len()
        ));
    }
    Ok(())
}

impl GuestMessage {
    /// Checks the limits that the types do not.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            GuestMessage::Hello(h) => {
                text("hello.init_version", &h.init_version)?;
                text("hello.kernel_release", &h.kernel_release)?;
                text("hello.boot_id", &h.boot_id)
            }
            GuestMessage::Progress(p) => text("progress.detail", &p.detail),
            GuestMessage::Status(Status::Modules(m)) => {
                list("status.modules.loaded", &m.loaded)?;
                list("status.modules.present", &m.present)?;
                m.loaded
                    .iter()
                    .chain(&m.present)
                    .try_for_each(|n| text("status.modules name", n))
            }
            GuestMessage::Status(Status::Root(r)) => {
                text("status.root.disk", &r.disk)?;
                text("status.root.root_hash", &r.root_hash)?;
                text("status.root.fs", &r.fs)
            }
            GuestMessage::Status(Status::Gpus(g)) => {
                list("status.gpus.gpus", &g.gpus)?;
                if let GpuPresence::NoDriver { detail } = &g.presence {
                    text("status.gpus.presence.detail", detail)?;
                }
                g.gpus.iter().try_for_each(|gpu| {
                    if gpu.copy_gbps.is_some_and(|r| !r.is_finite() || r < 0.0) {
                        return Err("gpu.copy_gbps: not a finite, non-negative rate".into());
                    }
                    let id = &gpu.identity;
                    text("gpu.identity.name", &id.name)?;
                    text("gpu.identity.pci_bus_id", &id.pci_bus_id)?;
                    text("gpu.identity.compute_capability", &id.compute_capability)?;
                    text("gpu.identity.driver_version", &id.driver_version)?;
                    text("gpu.self_test_detail", &gpu.self_test_detail)
                })
            }
            GuestMessage::Status(Status::Bridge(b)) => list("status.bridge.ports", &b.ports),
            GuestMessage::Output(o) => {
                if o.data.len() > MAX_OUTPUT_CHUNK {
                    return Err(format!(
                        "output.data: {} bytes, over {MAX_OUTPUT_CHUNK}",
                        o.data.len()
                    ));
                }
                Ok(())
            }
            GuestMessage::Exit(e) => e
                .signal_name
                .as_deref()
                .map_or(Ok(()), |s| text("exit.signal_name", s)),
            GuestMessage::Refusal(r) => text("refusal.message", &r.message),
            GuestMessage::AttestationKey(k) => {
                if k.public_key.len() != 97 || k.public_key[0] != 4 {
                    return Err(
                        "attestation_key.public_key: not a 97-byte SEC1 uncompressed P-384 point"
                            .into(),
                    );
                }
                text("attestation_key.algorithm", &k.algorithm)
            }
            GuestMessage::ChallengeResponse(c) => {
                nonce("challenge_response.nonce", &c.nonce)?;
                if c.signature.len() > 128 {
                    return Err("challenge_response.signature: over 128 bytes".into());
                }
                Ok(())
            }
            GuestMessage::GpuEvidence(g) => nonce("gpu_evidence.nonce", &g.nonce),
            GuestMessage::Pong { .. } => Ok(()),
            GuestMessage::EvidenceRequest(r) => {
                nonce("evidence_request.nonce", &r.nonce)?;
                if r.tls_key_sha256.len() != 32 {
                    return Err(format!(
                        "evidence_request.tls_key_sha256: {} bytes, must be 32",
                        r.tls_key_sha256.len()
                    ));
                }
                Ok(())
            }
            GuestMessage::Error(e) => text("error.message", &e.message),
            GuestMessage::PowerOff { reason } => text("power_off.reason", reason),
        }
    }
}

impl HostMessage {
    /// Checks the limits that the types do not.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            HostMessage::Hello { host, .. } => text("hello.host", host),
            HostMessage::Ping { .. } => Ok(()),
            HostMessage::Challenge { nonce: n } => nonce("challenge.nonce", n),
            HostMessage::Verdict { detail, .. } => text("verdict.detail", detail),
            HostMessage::Shutdown { reason } => text("shutdown.reason", reason),
            HostMessage::Evidence(c) => {
                let total = c.total as usize;
                if total > crate::MAX_EVIDENCE {
                    return Err(format!(
                        "evidence.total: {total} bytes, over {}",
                        crate::MAX_EVIDENCE
                    ));
                }
                if c.data.len() > crate::MAX_EVIDENCE_CHUNK {
                    return Err(format!(
                        "evidence.data: {} bytes, over {}",
                        c.data.len(),
                        crate::MAX_EVIDENCE_CHUNK
                    ));
                }
                if c.offset as u64 + c.data.len() as u64 > total as u64 {
                    return Err(format!(
                        "evidence: offset {} + {} bytes runs past total {total}",
                        c.offset,
                        c.data.len()
                    ));
                }
                Ok(())
            }
            HostMessage::EvidenceUnavailable { reason, .. } => {
                text("evidence_unavailable.reason", reason)
            }
            HostMessage::Error(e) => text("error.message", &e.message),
        }
    }
}

impl Refusal {
    /// A refusal with its message cut to [`MAX_TEXT`].
    pub fn new(reason: RefusalReason, stage: Stage, message: impl Into<String>) -> Self {
        let mut message = message.into();
        truncate_utf8(&mut message, MAX_TEXT);
        Refusal {
            reason,
            stage,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_guest, decode_host, encode_guest, encode_host, FrameReader};

    fn round_trip_guest(m: GuestMessage) {
        let bytes = encode_guest(&m).unwrap();
        let mut r = FrameReader::new();
        r.push(&bytes);
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!(decode_guest(&f).unwrap(), m);
    }

    #[test]
    fn every_guest_message_round_trips() {
        let gpu = GpuStatus {
            identity: GpuIdentity {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                pci_bus_id: "00000000:01:00.0".into(),
                memory_bytes: 85_520_809_984,
                compute_capability: "9.0".into(),
                driver_version: "550.90.07".into(),
            },
            self_test_passed: true,
            self_test_detail: "saxpy over 1048576 floats".into(),
            copy_gbps: Some(1234.5),
            cc_mode: CcMode::On,
            cc_ready: Some(true),
            attestation: GpuAttestationResult::Verified {
                detail: "ok".into(),
            },
            ready: true,
        };
        for m in [
            GuestMessage::Hello(Hello {
                protocol: 1,
                init_version: "0.1.0".into(),
                kernel_release: "6.1.0-28-cloud-amd64".into(),
                boot_id: "b0".into(),
                uptime_us: 5,
            }),
            GuestMessage::Progress(Progress {
                stage: Stage::RootVerified,
                uptime_us: 9,
                detail: "x".into(),
            }),
            GuestMessage::Status(Status::Modules(ModulesStatus {
                loaded: vec!["dm_verity".into()],
                present: vec!["ext4".into()],
                loading_disabled: true,
                elapsed_us: 3,
            })),
            GuestMessage::Status(Status::Root(RootStatus {
                disk: "rootfs".into(),
                root_hash: "ab".repeat(32),
                data_bytes: 4096,
                fully_verified: true,
                fs: "ext4".into(),
                elapsed_us: 1,
            })),
            GuestMessage::Status(Status::Gpus(GpuSummary {
                presence: GpuPresence::Present,
                gpus: vec![gpu],
            })),
            GuestMessage::Status(Status::Gpus(GpuSummary {
                presence: GpuPresence::NoDriver {
                    detail: "no GPU driver present".into(),
                },
                gpus: vec![],
            })),
            GuestMessage::Status(Status::Bridge(BridgeStatus {
                ports: vec![(8080, 8080)],
            })),
            GuestMessage::Output(Output {
                stream: Stream::Stderr,
                offset: 10,
                data: vec![0, 255, 10],
            }),
            GuestMessage::Exit(ExitReport {
                code: None,
                signal: Some(9),
                signal_name: Some("SIGKILL".into()),
                runtime_us: 1,
                output_dropped: 0,
            }),
            GuestMessage::Refusal(Refusal::new(
                RefusalReason::RootfsVerification,
                Stage::RootVerified,
                "block 3",
            )),
            GuestMessage::AttestationKey(AttestationKey {
                algorithm: "ecdsa-p384".into(),
                public_key: {
                    let mut k = vec![4u8];
                    k.extend([7u8; 96]);
                    k
                },
            }),
            GuestMessage::ChallengeResponse(ChallengeResponse {
                nonce: vec![1; 32],
                signature: vec![2; 103],
            }),
            GuestMessage::GpuEvidence(GpuEvidence {
                index: 0,
                nonce: vec![3; 32],
                report: vec![4; 100],
                certificate_chain: vec![5; 10],
            }),
            GuestMessage::Pong { nonce: 42 },
            GuestMessage::EvidenceRequest(EvidenceRequest {
                request: 7,
                nonce: vec![6; 32],
                tls_key_sha256: vec![8; 32],
            }),
            GuestMessage::Error(ProtocolError {
                code: ErrorCode::Malformed,
                message: "m".into(),
            }),
            GuestMessage::PowerOff {
                reason: "done".into(),
            },
        ] {
            round_trip_guest(m);
        }
    }

    #[test]
    fn every_host_message_round_trips() {
        for m in [
            HostMessage::Hello {
                protocol: 1,
                host: "test".into(),
            },
            HostMessage::Ping { nonce: 1 },
            HostMessage::Challenge { nonce: vec![9; 48] },
            HostMessage::Verdict {
                accepted: false,
                detail: "no".into(),
            },
            HostMessage::Shutdown {
                reason: "operator".into(),
            },
            HostMessage::Error(ProtocolError {
                code: ErrorCode::Truncated,
                message: "t".into(),
            }),
            HostMessage::Evidence(EvidenceChunk {
                request: 7,
                total: 5,
                offset: 2,
                data: vec![1, 2, 3],
            }),
            HostMessage::EvidenceUnavailable {
                request: 7,
                reason: "no TPM".into(),
            },
        ] {
            let bytes = encode_host(&m).unwrap();
            let mut r = FrameReader::new();
            r.push(&bytes);
            assert_eq!(decode_host(&r.next_frame().unwrap().unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn limits_are_enforced_on_both_ends() {
        let short = HostMessage::Challenge { nonce: vec![1; 8] };
        let err = encode_host(&short).unwrap_err().to_string();
        assert!(err.contains("challenge.nonce: 8 bytes"), "{err}");
        let big = GuestMessage::Output(Output {
            stream: Stream::Stdout,
            offset: 0,
            data: vec![0; MAX_OUTPUT_CHUNK + 1],
        });
        assert!(encode_guest(&big).is_err());
        // A hand-made frame with a short nonce is refused by the decoder too.
        let mut payload = Vec::new();
        ciborium::into_writer(&short, &mut payload).unwrap();
        let f = crate::Frame {
            direction: crate::Direction::HostToGuest,
            payload,
        };
        let err = decode_host(&f).unwrap_err().to_string();
        assert!(err.contains("challenge.nonce"), "{err}");
    }

    #[test]
    fn unknown_fields_and_messages_are_refused() {
        use ciborium::Value;
        let v = Value::Map(vec![(
            Value::Text("Progress".into()),
            Value::Map(vec![
                (
                    Value::Text("stage".into()),
                    Value::Text("init_started".into()),
                ),
                (Value::Text("uptime_us".into()), Value::Integer(1.into())),
                (Value::Text("detail".into()), Value::Text(String::new())),
                (Value::Text("extra".into()), Value::Bool(true)),
            ]),
        )]);
        let mut payload = Vec::new();
        ciborium::into_writer(&v, &mut payload).unwrap();
        let f = crate::Frame {
            direction: crate::Direction::GuestToHost,
            payload,
        };
        let err = decode_guest(&f).unwrap_err().to_string();
        assert!(err.contains("extra"), "{err}");
        let v = Value::Map(vec![(
            Value::Text("Ping".into()),
            Value::Map(vec![
                (Value::Text("nonce".into()), Value::Integer(1.into())),
                (Value::Text("extra".into()), Value::Bool(true)),
            ]),
        )]);
        let mut payload = Vec::new();
        ciborium::into_writer(&v, &mut payload).unwrap();
        let f = crate::Frame {
            direction: crate::Direction::HostToGuest,
            payload,
        };
        let err = decode_host(&f).unwrap_err().to_string();
        assert!(err.contains("extra"), "{err}");
        let v = Value::Map(vec![(Value::Text("Launch".into()), Value::Null)]);
        let mut payload = Vec::new();
        ciborium::into_writer(&v, &mut payload).unwrap();
        let f = crate::Frame {
            direction: crate::Direction::HostToGuest,
            payload,
        };
        let err = decode_host(&f).unwrap_err().to_string();
        assert!(err.contains("Launch"), "{err}");
    }

    #[test]
    fn evidence_is_split_into_chunks_that_fit_and_reassemble() {
        let doc: Vec<u8> = (0..crate::MAX_EVIDENCE).map(|i| (i * 7) as u8).collect();
        let chunks = EvidenceChunk::split(3, &doc);
        assert_eq!(
            chunks.len(),
            crate::MAX_EVIDENCE.div_ceil(crate::MAX_EVIDENCE_CHUNK)
        );
        let mut again = Vec::new();
        for c in chunks {
            assert_eq!((c.request, c.total as usize), (3, doc.len()));
            assert_eq!(c.offset as usize, again.len());
            let bytes = encode_host(&HostMessage::Evidence(c.clone())).unwrap();
            assert!(bytes.len() <= crate::MAX_PAYLOAD + crate::FRAME_HEADER_LEN);
            again.extend_from_slice(&c.data);
        }
        assert_eq!(again, doc);
        assert_eq!(EvidenceChunk::split(1, &[]).len(), 1);
    }

    #[test]
    fn evidence_limits_are_enforced() {
        let chunk = |total: u32, offset: u32, len: usize| {
            HostMessage::Evidence(EvidenceChunk {
                request: 1,
                total,
                offset,
                data: vec![0; len],
            })
        };
        let too_big = chunk(crate::MAX_EVIDENCE as u32 + 1, 0, 1);
        assert!(encode_host(&too_big)
            .unwrap_err()
            .to_string()
            .contains("evidence.total"));
        let past = chunk(10, 8, 3);
        assert!(encode_host(&past)
            .unwrap_err()
            .to_string()
            .contains("runs past total"));
        let wrapping = chunk(10, u32::MAX, 3);
        assert!(encode_host(&wrapping).is_err());
        let fat = chunk(crate::MAX_EVIDENCE as u32, 0, crate::MAX_EVIDENCE_CHUNK + 1);
        assert!(encode_host(&fat).is_err());
        for (n, k) in [(8, 32), (32, 31)] {
            let r = GuestMessage::EvidenceRequest(EvidenceRequest {
                request: 1,
                nonce: vec![0; n],
                tls_key_sha256: vec![0; k],
            });
            assert!(encode_guest(&r).is_err(), "nonce {n} key {k}");
        }
    }

    #[test]
    fn the_largest_output_chunk_fits_in_a_frame() {
        let m = GuestMessage::Output(Output {
            stream: Stream::Stdout,
            offset: u64::MAX,
            data: vec![0xff; MAX_OUTPUT_CHUNK],
        });
        assert!(encode_guest(&m).unwrap().len() <= crate::MAX_PAYLOAD + crate::FRAME_HEADER_LEN);
    }
}
