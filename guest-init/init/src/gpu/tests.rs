//! The vendor-neutral rules, on a fake backend.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bulwark_guest_protocol::{CcMode, GpuAttestationResult, GpuPresence, GuestMessage, Status};

use super::*;

type Log = Rc<RefCell<Vec<String>>>;

#[derive(Debug, Clone, PartialEq)]
enum Verify {
    Pass,
    Fail(&'static str),
    /// Verifies, but the report states another nonce.
    WrongNonce,
}

#[derive(Debug, Clone, PartialEq)]
enum SelfTest {
    Correct,
    /// The element at this index is off by one.
    WrongAt(usize),
    Error,
}

#[derive(Debug, Clone)]
struct FakeGpu {
    index: u32,
    identity_fails: bool,
    cc: CcMode,
    ready: Option<bool>,
    /// The ready state read after `accept_work`.
    ready_after_accept: Option<bool>,
    accept_fails: bool,
    report_fails: bool,
    verify: Verify,
    self_test: SelfTest,
    copy_fails: bool,
    log: Log,
}

impl FakeGpu {
    fn new(index: u32, log: &Log) -> Self {
        FakeGpu {
            index,
            identity_fails: false,
            cc: CcMode::Off,
            ready: None,
            ready_after_accept: Some(true),
            accept_fails: false,
            report_fails: false,
            verify: Verify::Pass,
            self_test: SelfTest::Correct,
            copy_fails: false,
            log: log.clone(),
        }
    }

    fn cc_on(mut self) -> Self {
        self.cc = CcMode::On;
        self.ready = Some(false);
        self
    }

    fn note(&self, what: &str) {
        self.log.borrow_mut().push(format!("{}:{what}", self.index));
    }
}

impl Gpu for FakeGpu {
    fn identity(&mut self) -> Result<GpuIdentity, GpuError> {
        self.note("identity");
        if self.identity_fails {
            return Err(GpuError::Driver {
                call: "nvmlDeviceGetName",
                detail: "GPU is lost".into(),
            });
        }
        Ok(GpuIdentity {
            index: self.index,
            name: "Fake H100".into(),
            pci_bus_id: format!("00000000:{:02x}:00.0", self.index + 1),
            memory_bytes: 80 << 30,
            compute_capability: "9.0".into(),
            driver_version: "550.90.07".into(),
        })
    }

    fn cc_state(&mut self) -> CcState {
        self.note("cc_state");
        CcState {
            mode: self.cc.clone(),
            ready: self.ready,
        }
    }

    fn attestation_report(&mut self, nonce: &[u8; 32]) -> Result<GpuReport, GpuError> {
        self.note("report");
        if self.report_fails {
            return Err(GpuError::Driver {
                call: "nvmlDeviceGetConfComputeGpuAttestationReport",
                detail: "Unknown Error".into(),
            });
        }
        let mut report = b"SPDM".to_vec();
        report.extend_from_slice(nonce);
        Ok(GpuReport {
            report,
            certificate_chain: b"-----BEGIN CERTIFICATE-----".to_vec(),
        })
    }

    fn verify_report(
        &self,
        report: &GpuReport,
        nonce: &[u8; 32],
        _policy: &AttestationPolicy,
    ) -> Result<VerifiedReport, String> {
        self.note("verify");
        assert_eq!(
            &report.report[4..],
            nonce,
            "the report asked with this nonce"
        );
        match &self.verify {
            Verify::Pass => Ok(VerifiedReport {
                report_nonce: nonce.to_vec(),
                detail: "fake checks passed".into(),
            }),
            Verify::Fail(why) => Err(why.to_string()),
            Verify::WrongNonce => Ok(VerifiedReport {
                report_nonce: vec![0xEE; 32],
                detail: "fake checks passed".into(),
            }),
        }
    }

    fn accept_work(&mut self) -> Result<(), GpuError> {
        self.note("accept_work");
        if self.accept_fails {
            return Err(GpuError::Driver {
                call: "nvmlSystemSetConfComputeGpusReadyState",
                detail: "Insufficient Permissions".into(),
            });
        }
        self.ready = self.ready_after_accept;
        Ok(())
    }

    fn self_test(&mut self, seed: u32) -> Result<Vec<u32>, GpuError> {
        self.note("self_test");
        if matches!(self.cc, CcMode::On | CcMode::DevTools) && self.ready != Some(true) {
            // What CUDA does with a CC GPU that is not ready.
            return Err(GpuError::Driver {
                call: "cuInit",
                detail: "CUDA_ERROR_SYSTEM_NOT_READY".into(),
            });
        }
        let mut out: Vec<u32> = (0..SELF_TEST_ELEMENTS)
            .map(|i| self_test_expected(seed, i))
            .collect();
        match self.self_test {
            SelfTest::Correct => {}
            SelfTest::WrongAt(i) => out[i] = out[i].wrapping_add(1),
            SelfTest::Error => {
                return Err(GpuError::Driver {
                    call: "cuLaunchKernel",
                    detail: "CUDA_ERROR_ILLEGAL_ADDRESS".into(),
                })
            }
        }
        Ok(out)
    }

    fn copy_benchmark(&mut self, bytes: usize, copies: u32) -> Result<Duration, GpuError> {
        self.note("copy");
        if self.copy_fails {
            return Err(GpuError::Driver {
                call: "cuMemAlloc",
                detail: "CUDA_ERROR_OUT_OF_MEMORY".into(),
            });
        }
        // 1000 GB/s.
        Ok(Duration::from_secs_f64(
            bytes as f64 * f64::from(copies) / 1e12,
        ))
    }
}

#[derive(Debug)]
enum FakeBackend {
    NoDriver,
    Unusable,
    Gpus(Vec<FakeGpu>),
}

impl GpuBackend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn probe(&self) -> Probe {
        match self {
            FakeBackend::NoDriver => Probe::NoDriver {
                detail: "no GPU driver present (libcuda.so.1 not found)".into(),
            },
            FakeBackend::Unusable => Probe::Unusable {
                detail: "GPU in CC mode, not ready, and no NVML".into(),
            },
            FakeBackend::Gpus(g) => Probe::Devices(
                g.iter()
                    .cloned()
                    .map(|g| Box::new(g) as Box<dyn Gpu>)
                    .collect(),
            ),
        }
    }
}

/// Nonces 1, 2, 3, ... (each byte the counter).
fn counter() -> impl FnMut() -> Result<[u8; 32], String> {
    let mut n = 0u8;
    move || {
        n += 1;
        Ok([n; 32])
    }
}

fn run(backend: FakeBackend, policy: &GpuPolicy) -> GpuOutcome {
    let out = bring_up(&[&backend], policy, counter());
    // Whatever happens, the messages are valid for the host channel.
    GuestMessage::Status(Status::Gpus(out.summary.clone()))
        .validate()
        .unwrap();
    for ev in &out.evidence {
        GuestMessage::GpuEvidence(ev.clone()).validate().unwrap();
    }
    out
}

fn one(gpu: FakeGpu, policy: &GpuPolicy) -> (GpuOutcome, GpuStatus) {
    let out = run(FakeBackend::Gpus(vec![gpu]), policy);
    let status = out.summary.gpus[0].clone();
    (out, status)
}

fn required() -> GpuPolicy {
    GpuPolicy {
        required: true,
        ..GpuPolicy::default()
    }
}

fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

#[test]
fn a_gpu_without_cc_passes() {
    let l = log();
    let (out, g) = one(FakeGpu::new(0, &l), &required());
    assert_eq!(out.summary.presence, GpuPresence::Present);
    assert!(g.ready, "{g:?}");
    assert!(g.self_test_passed);
    assert!(
        g.self_test_detail.contains("1048576 elements"),
        "{}",
        g.self_test_detail
    );
    assert_eq!(g.attestation, GpuAttestationResult::NotApplicable);
    assert_eq!(g.cc_mode, CcMode::Off);
    let gbps = g.copy_gbps.unwrap();
    assert!((gbps - 1000.0).abs() < 1e-3, "{gbps}");
    assert_eq!(g.identity.name, "Fake H100");
    assert_eq!(g.identity.driver_version, "550.90.07");
    assert!(
        out.evidence.is_empty(),
        "no report claimed for a non-CC GPU"
    );
    assert_eq!(out.refusal, None);
    assert_eq!(out.ready_count(), 1);
    assert!(!l.borrow().iter().any(|c| c.ends_with(":report")));
}

#[test]
fn a_wrong_self_test_result_is_caught_and_refuses() {
    let mut gpu = FakeGpu::new(0, &log());
    gpu.self_test = SelfTest::WrongAt(12345);
    let (out, g) = one(gpu, &GpuPolicy::default());
    assert!(!g.ready);
    assert!(!g.self_test_passed);
    assert!(
        g.self_test_detail
            .starts_with("self-test element 12345: expected"),
        "{}",
        g.self_test_detail
    );
    assert_eq!(g.copy_gbps, None, "no benchmark on a failed GPU");
    // A GPU that is there and broken refuses even when GPUs are optional.
    let r = out.refusal.unwrap();
    assert!(r.contains("fake GPU 0: self-test element 12345"), "{r}");
}

#[test]
fn a_self_test_driver_error_refuses() {
    let mut gpu = FakeGpu::new(0, &log());
    gpu.self_test = SelfTest::Error;
    let (out, g) = one(gpu, &GpuPolicy::default());
    assert!(!g.ready);
    assert!(g.self_test_detail.contains("CUDA_ERROR_ILLEGAL_ADDRESS"));
    assert!(out.refusal.is_some());
}

#[test]
fn cc_on_attested_then_set_ready_then_tested() {
    let l = log();
    let (out, g) = one(FakeGpu::new(0, &l).cc_on(), &required());
    assert!(g.ready, "{g:?}");
    assert_eq!(g.cc_mode, CcMode::On);
    assert_eq!(g.cc_ready, Some(true));
    assert_eq!(
        g.attestation,
        GpuAttestationResult::Verified {
            detail: "fake checks passed".into()
        }
    );
    assert_eq!(out.refusal, None);
    // The report goes to the host with the nonce it answers.
    assert_eq!(out.evidence.len(), 1);
    assert_eq!(out.evidence[0].nonce, vec![1u8; 32]);
    assert_eq!(&out.evidence[0].report[4..], &[1u8; 32]);
    // Order: attest, verify, set ready, then compute.
    let calls: Vec<String> = l.borrow().clone();
    let pos = |c: &str| calls.iter().position(|x| x == c).unwrap();
    assert!(pos("0:report") < pos("0:verify"));
    assert!(pos("0:verify") < pos("0:accept_work"));
    assert!(pos("0:accept_work") < pos("0:self_test"));
    assert!(pos("0:self_test") < pos("0:copy"));
}

#[test]
fn cc_on_but_not_ready_is_a_clear_status() {
    let l = log();
    let mut gpu = FakeGpu::new(0, &l).cc_on();
    gpu.ready_after_accept = Some(false);
    let (out, g) = one(gpu, &GpuPolicy::default());
    assert!(!g.ready);
    assert_eq!(g.cc_ready, Some(false));
    assert!(matches!(
        g.attestation,
        GpuAttestationResult::Verified { .. }
    ));
    assert!(
        g.self_test_detail.contains("not ready"),
        "{}",
        g.self_test_detail
    );
    let r = out.refusal.unwrap();
    assert!(r.contains("CC on but the GPU is not ready"), "{r}");
    // No CUDA work is attempted (it would fail with error 802).
    assert!(!l.borrow().iter().any(|c| c.ends_with(":self_test")));
}

#[test]
fn cc_ready_state_that_cannot_be_set_refuses() {
    let mut gpu = FakeGpu::new(0, &log()).cc_on();
    gpu.accept_fails = true;
    let (out, g) = one(gpu, &GpuPolicy::default());
    assert!(!g.ready);
    assert!(out
        .refusal
        .unwrap()
        .contains("setting the CC ready state: nvmlSystemSetConfComputeGpusReadyState"));
}

#[test]
fn cc_on_attestation_failure_refuses_and_still_reports_evidence() {
    let l = log();
    let mut gpu = FakeGpu::new(0, &l).cc_on();
    gpu.verify = Verify::Fail("failed checks: measurement-signature (bad)");
    let (out, g) = one(gpu, &GpuPolicy::default());
    assert!(!g.ready);
    assert_eq!(
        g.attestation,
        GpuAttestationResult::Failed {
            detail: "failed checks: measurement-signature (bad)".into()
        }
    );
    assert_eq!(out.evidence.len(), 1, "the report still goes to the host");
    let r = out.refusal.unwrap();
    assert!(r.contains("attestation failed: failed checks"), "{r}");
    let calls = l.borrow();
    assert!(!calls.iter().any(|c| c.ends_with(":accept_work")));
    assert!(!calls.iter().any(|c| c.ends_with(":self_test")));
}

#[test]
fn a_report_answering_another_nonce_fails() {
    let mut gpu = FakeGpu::new(0, &log()).cc_on();
    gpu.verify = Verify::WrongNonce;
    let (out, g) = one(gpu, &GpuPolicy::default());
    assert!(!g.ready);
    match g.attestation {
        GpuAttestationResult::Failed { detail } => {
            assert!(detail.contains("not the nonce sent"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    assert!(out.refusal.is_some());
}

#[test]
fn a_report_that_cannot_be_fetched_fails() {
    let mut gpu = FakeGpu::new(0, &log()).cc_on();
    gpu.report_fails = true;
    let (out, g) = one(gpu, &GpuPolicy::default());
    assert!(!g.ready);
    assert!(out.evidence.is_empty());
    assert!(matches!(
        g.attestation,
        GpuAttestationResult::Failed { ref detail } if detail.starts_with("fetching the report: nvmlDeviceGetConfComputeGpuAttestationReport")
    ));
}

#[test]
fn no_fresh_nonce_fails_attestation() {
    let gpu = FakeGpu::new(0, &log()).cc_on();
    let out = bring_up(
        &[&FakeBackend::Gpus(vec![gpu])],
        &GpuPolicy::default(),
        || Err("getrandom: not ready".to_string()),
    );
    let g = &out.summary.gpus[0];
    assert!(!g.ready);
    assert!(matches!(
        &g.attestation,
        GpuAttestationResult::Failed { detail } if detail == "no fresh nonce: getrandom: not ready"
    ));
}

#[test]
fn one_failed_cc_gpu_keeps_every_cc_gpu_of_the_driver_not_ready() {
    let l = log();
    let good = FakeGpu::new(0, &l).cc_on();
    let mut bad = FakeGpu::new(1, &l).cc_on();
    bad.verify = Verify::Fail("cert-chain (untrusted)");
    let out = run(FakeBackend::Gpus(vec![good, bad]), &GpuPolicy::default());
    assert_eq!(out.ready_count(), 0);
    assert!(matches!(
        out.summary.gpus[0].attestation,
        GpuAttestationResult::Verified { .. }
    ));
    assert!(out.summary.gpus[0]
        .self_test_detail
        .contains("a CC GPU of this driver failed attestation"));
    assert!(!l.borrow().iter().any(|c| c.ends_with(":accept_work")));
    assert_eq!(out.evidence.len(), 2);
    // Distinct fresh nonces per GPU.
    assert_ne!(out.evidence[0].nonce, out.evidence[1].nonce);
}

#[test]
fn no_driver_is_a_clear_status_and_refuses_only_when_required() {
    let out = run(FakeBackend::NoDriver, &GpuPolicy::default());
    assert_eq!(
        out.summary.presence,
        GpuPresence::NoDriver {
            detail: "no GPU driver present (libcuda.so.1 not found)".into()
        }
    );
    assert!(out.summary.gpus.is_empty());
    assert_eq!(out.refusal, None, "GPU-less runs allowed by default");

    let out = run(FakeBackend::NoDriver, &required());
    let r = out.refusal.unwrap();
    assert_eq!(
        r,
        "no GPU driver present (libcuda.so.1 not found): 0 GPU(s) ready, policy gpu.required needs 1"
    );
}

#[test]
fn no_device_refuses_only_when_required() {
    let out = run(FakeBackend::Gpus(vec![]), &GpuPolicy::default());
    assert_eq!(out.summary.presence, GpuPresence::NoDevice);
    assert_eq!(out.refusal, None);
    let out = run(FakeBackend::Gpus(vec![]), &required());
    assert!(out
        .refusal
        .unwrap()
        .starts_with("GPU driver present but no GPU found"));
}

#[test]
fn an_unusable_driver_always_refuses() {
    let out = run(FakeBackend::Unusable, &GpuPolicy::default());
    assert!(matches!(out.summary.presence, GpuPresence::NoDriver { .. }));
    assert!(out.refusal.unwrap().contains("not ready, and no NVML"));
}

#[test]
fn a_driver_elsewhere_makes_no_device_not_no_driver() {
    let none = FakeBackend::NoDriver;
    let empty = FakeBackend::Gpus(vec![]);
    let out = bring_up(&[&none, &empty], &GpuPolicy::default(), counter());
    assert_eq!(out.summary.presence, GpuPresence::NoDevice);
    let gpu = FakeBackend::Gpus(vec![FakeGpu::new(0, &log())]);
    let out = bring_up(&[&none, &gpu], &required(), counter());
    assert_eq!(out.summary.presence, GpuPresence::Present);
    assert_eq!(out.refusal, None);
}

#[test]
fn min_count_counts_ready_gpus() {
    let l = log();
    let mut broken = FakeGpu::new(1, &l);
    broken.identity_fails = true;
    let policy = GpuPolicy {
        required: true,
        min_count: Some(2),
        ..GpuPolicy::default()
    };
    let out = run(
        FakeBackend::Gpus(vec![FakeGpu::new(0, &l), FakeGpu::new(2, &l)]),
        &policy,
    );
    assert_eq!(out.refusal, None);
    let out = run(FakeBackend::Gpus(vec![FakeGpu::new(0, &l)]), &policy);
    assert_eq!(
        out.refusal.unwrap(),
        "1 GPU(s) found: 1 GPU(s) ready, policy gpu.required needs 2"
    );
    let out = run(
        FakeBackend::Gpus(vec![FakeGpu::new(0, &l), broken]),
        &policy,
    );
    let g = &out.summary.gpus[1];
    assert!(!g.ready);
    assert_eq!(g.identity.name, "(unknown)");
    assert!(out
        .refusal
        .unwrap()
        .contains("identity: nvmlDeviceGetName: GPU is lost"));
}

#[test]
fn cc_policy_required() {
    let policy = GpuPolicy {
        cc: CcPolicy::Required,
        ..GpuPolicy::default()
    };
    let (out, g) = one(FakeGpu::new(0, &log()), &policy);
    assert!(!g.ready);
    assert_eq!(g.attestation, GpuAttestationResult::NotApplicable);
    assert!(out
        .refusal
        .unwrap()
        .contains("is not in confidential-computing mode (policy gpu.cc = required)"));
    let (out, g) = one(FakeGpu::new(0, &log()).cc_on(), &policy);
    assert!(g.ready);
    assert_eq!(out.refusal, None);
    let mut devtools = FakeGpu::new(0, &log()).cc_on();
    devtools.cc = CcMode::DevTools;
    let (out, g) = one(devtools, &policy);
    assert!(!g.ready);
    assert!(out.refusal.unwrap().contains("devtools"));
}

#[test]
fn cc_policy_forbidden() {
    let policy = GpuPolicy {
        cc: CcPolicy::Forbidden,
        ..GpuPolicy::default()
    };
    let (out, _) = one(FakeGpu::new(0, &log()), &policy);
    assert_eq!(out.refusal, None);
    let (out, g) = one(FakeGpu::new(0, &log()).cc_on(), &policy);
    assert!(!g.ready);
    assert!(out
        .refusal
        .unwrap()
        .contains("is in confidential-computing mode (policy gpu.cc = forbidden)"));
    let mut unknown = FakeGpu::new(0, &log());
    unknown.cc = CcMode::Unknown {
        detail: "NVML not available".into(),
    };
    let (out, _) = one(unknown, &policy);
    assert!(out.refusal.unwrap().contains("cannot be confirmed off"));
}

#[test]
fn cc_policy_any() {
    let mut unknown = FakeGpu::new(0, &log());
    unknown.cc = CcMode::Unknown {
        detail: "NVML not available".into(),
    };
    let (out, g) = one(unknown, &GpuPolicy::default());
    assert!(g.ready);
    assert_eq!(
        g.attestation,
        GpuAttestationResult::NotApplicable,
        "never claimed verified"
    );
    assert_eq!(out.refusal, None);
    // Devtools GPUs are attested and set ready like CC ones; the status says devtools.
    let mut devtools = FakeGpu::new(0, &log()).cc_on();
    devtools.cc = CcMode::DevTools;
    let (out, g) = one(devtools, &GpuPolicy::default());
    assert!(g.ready);
    assert_eq!(g.cc_mode, CcMode::DevTools);
    assert_eq!(out.evidence.len(), 1);
}

#[test]
fn self_test_and_benchmark_can_be_turned_off() {
    let l = log();
    let policy = GpuPolicy {
        self_test: false,
        copy_bench_mib: 0,
        ..GpuPolicy::default()
    };
    let (out, g) = one(FakeGpu::new(0, &l), &policy);
    assert!(g.ready);
    assert!(!g.self_test_passed);
    assert_eq!(g.self_test_detail, "skipped (policy gpu.self_test = false)");
    assert_eq!(g.copy_gbps, None);
    assert_eq!(out.refusal, None);
    let calls = l.borrow();
    assert!(!calls
        .iter()
        .any(|c| c.ends_with(":self_test") || c.ends_with(":copy")));
}

#[test]
fn a_failing_copy_refuses() {
    let mut gpu = FakeGpu::new(0, &log());
    gpu.copy_fails = true;
    let (out, g) = one(gpu, &GpuPolicy::default());
    assert!(!g.ready);
    assert!(g.self_test_passed);
    assert!(g
        .self_test_detail
        .contains("device-to-device copy: cuMemAlloc"));
    assert!(out.refusal.is_some());
}

#[test]
fn check_self_test_reports_the_first_wrong_index() {
    let seed = 0xDEAD_BEEF;
    let mut out: Vec<u32> = (0..SELF_TEST_ELEMENTS)
        .map(|i| self_test_expected(seed, i))
        .collect();
    assert!(check_self_test(seed, &out).is_ok());
    assert!(check_self_test(seed ^ 1, &out)
        .unwrap_err()
        .starts_with("self-test element 0:"));
    out[7] = 0;
    out[9] = 0;
    assert_eq!(
        check_self_test(seed, &out).unwrap_err(),
        format!(
            "self-test element 7: expected {:#010x}, found 0x00000000 (2 of 1048576 wrong)",
            self_test_expected(seed, 7)
        )
    );
    assert!(check_self_test(seed, &out[..10])
        .unwrap_err()
        .contains("returned 10 elements"));
    assert!(check_self_test(seed, &[]).is_err());
}

#[test]
fn self_test_expectation_wraps() {
    assert_eq!(self_test_expected(5, 0), 5);
    assert_eq!(self_test_expected(0, 3), 9);
    // 65536^2 = 2^32 wraps to 0.
    assert_eq!(self_test_expected(1, 65536), 1);
    assert_eq!(self_test_expected(u32::MAX, 1), 0);
    assert_eq!(
        self_test_expected(0, SELF_TEST_ELEMENTS - 1),
        ((SELF_TEST_ELEMENTS as u64 - 1).pow(2) % (1 << 32)) as u32
    );
}

#[test]
fn copy_rate_arithmetic() {
    // 256 MiB x 20 in 10 ms = 536.870912 GB/s.
    let r = copy_gbps(256 << 20, 20, Duration::from_millis(10)).unwrap();
    assert!((r - 536.870912).abs() < 1e-9, "{r}");
    assert_eq!(copy_gbps(1 << 20, 20, Duration::ZERO), None);
    assert_eq!(copy_gbps(0, 20, Duration::from_secs(1)), None);
    assert_eq!(copy_gbps(1, 0, Duration::from_secs(1)), None);
    assert_eq!(
        copy_gbps(1_000_000_000, 1, Duration::from_secs(1)),
        Some(1.0)
    );
}

#[test]
fn policy_defaults_and_fields() {
    let p: GpuPolicy = serde_json::from_str("{}").unwrap();
    assert_eq!(p, GpuPolicy::default());
    assert!(!p.required);
    assert_eq!(p.min_count, None);
    assert_eq!(p.effective_min_count(), 0);
    assert_eq!(p.cc, CcPolicy::Any);
    assert!(p.self_test);
    assert_eq!(p.copy_bench_mib, 256);
    assert_eq!(p.attestation, AttestationPolicy::default());
    assert!(p.validate().is_ok());

    let p: GpuPolicy = serde_json::from_str(
        r#"{"required": true, "min_count": 2, "cc": "required", "self_test": false,
            "copy_bench_mib": 0,
            "attestation": {"driver_versions": ["550.90.07"], "vbios_versions": [],
                            "rims": [], "require_rims": false}}"#,
    )
    .unwrap();
    assert_eq!(p.effective_min_count(), 2);
    assert_eq!(p.cc, CcPolicy::Required);
    assert_eq!(p.attestation.driver_versions, ["550.90.07"]);
    assert!(p.validate().is_ok());
    let p: GpuPolicy = serde_json::from_str(r#"{"required": true}"#).unwrap();
    assert_eq!(p.effective_min_count(), 1);
    let p: GpuPolicy = serde_json::from_str(r#"{"cc": "forbidden"}"#).unwrap();
    assert_eq!(p.cc, CcPolicy::Forbidden);
}

#[test]
fn policy_refuses_unknown_and_contradictory_fields() {
    for bad in [
        r#"{"requried": true}"#,
        r#"{"cc": "on"}"#,
        r#"{"attestation": {"rim": []}}"#,
        r#"{"min_count": -1}"#,
    ] {
        assert!(serde_json::from_str::<GpuPolicy>(bad).is_err(), "{bad}");
    }
    let check = |json: &str| {
        serde_json::from_str::<GpuPolicy>(json)
            .unwrap()
            .validate()
            .unwrap_err()
    };
    assert_eq!(check(r#"{"min_count": 2}"#).0, "min_count");
    assert_eq!(
        check(r#"{"required": true, "min_count": 0}"#).0,
        "min_count"
    );
    assert_eq!(check(r#"{"copy_bench_mib": 100000}"#).0, "copy_bench_mib");
    assert_eq!(
        check(r#"{"attestation": {"require_rims": true}}"#).0,
        "attestation.require_rims"
    );
    assert_eq!(
        check(r#"{"attestation": {"rims": ["not xml"]}}"#).0,
        "attestation.rims[0]"
    );
}

#[test]
fn cc_policy_table() {
    use CcPolicy::*;
    let unknown = CcMode::Unknown { detail: "x".into() };
    for (policy, mode, ok) in [
        (Any, CcMode::Off, true),
        (Any, CcMode::On, true),
        (Any, CcMode::DevTools, true),
        (Any, unknown.clone(), true),
        (Required, CcMode::Off, false),
        (Required, CcMode::On, true),
        (Required, CcMode::DevTools, false),
        (Required, unknown.clone(), false),
        (Forbidden, CcMode::Off, true),
        (Forbidden, CcMode::On, false),
        (Forbidden, CcMode::DevTools, false),
        (Forbidden, unknown, false),
    ] {
        assert_eq!(
            cc_policy_violation(policy, &mode).is_none(),
            ok,
            "{policy:?} {mode:?}"
        );
    }
}

#[test]
fn report_lines_one_per_gpu() {
    let l = log();
    let mut bad = FakeGpu::new(1, &l).cc_on();
    bad.verify = Verify::Fail("cert-chain (untrusted)");
    let out = run(
        FakeBackend::Gpus(vec![FakeGpu::new(0, &l), bad]),
        &GpuPolicy::default(),
    );
    let lines = report_lines(&out);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert_eq!(lines[0], "gpu: 2 GPU(s), 1 ready");
    assert!(lines[1].starts_with("gpu 0: Fake H100 [00000000:01:00.0] 81920 MiB, sm 9.0, driver 550.90.07; self-test passed"), "{}", lines[1]);
    assert!(
        lines[1].contains("copy 1000.0 GB/s; cc off; attestation n/a: READY"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains(
            "cc on (ready: false); attestation FAILED (cert-chain (untrusted)): NOT READY"
        ),
        "{}",
        lines[2]
    );
    assert!(lines[3]
        .starts_with("gpu: workload refused: GPU check failed: fake GPU 1: attestation failed"));

    let out = run(FakeBackend::NoDriver, &GpuPolicy::default());
    assert_eq!(
        report_lines(&out),
        ["gpu: no GPU driver present (libcuda.so.1 not found)"]
    );
    let out = run(FakeBackend::Gpus(vec![]), &required());
    let lines = report_lines(&out);
    assert_eq!(lines[0], "gpu: driver present, no GPU found");
    assert!(lines[1].starts_with("gpu: workload refused: "));
}

#[test]
fn long_texts_are_clamped_for_the_host_channel() {
    let long = "é".repeat(5000);
    let c = clamp(long, 100);
    assert!(c.len() <= 100 && c.ends_with("..."));
    assert_eq!(clamp("short".into(), 100), "short");
}
