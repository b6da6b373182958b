//! The NVIDIA backend's pure parts, and its real "no driver" path (no GPU here).

use std::path::Path;

use bulwark_attestation::nvidia::default_trust;
use bulwark_attestation::VerificationTime;
use bulwark_guest_protocol::{CcMode, GpuPresence};

use super::*;
use crate::gpu::{bring_up, AttestationPolicy, GpuPolicy};

fn testdata(rel: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../attestation/testdata/nvidia")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The recorded H100 report (attestation/testdata/PROVENANCE.md) as NVML returns
/// it: raw SPDM request || response bytes.
fn report() -> Vec<u8> {
    let text = String::from_utf8(testdata("hopper-report.hex")).unwrap();
    hex::decode(text.split_whitespace().collect::<String>()).unwrap()
}

fn chain() -> Vec<u8> {
    testdata("hopper-cert-chain.pem")
}

fn nonce() -> [u8; 32] {
    hex::decode("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
        .unwrap()
        .try_into()
        .unwrap()
}

/// Inside the fixture's certificate validity.
fn at() -> VerificationTime {
    VerificationTime::parse("2024-06-01T00:00:00Z").unwrap()
}

fn verify(
    report: &[u8],
    chain: &[u8],
    nonce: &[u8; 32],
    policy: &AttestationPolicy,
) -> Result<VerifiedReport, String> {
    verify_nvidia_report(report, chain, nonce, policy, &default_trust(), at())
}

#[test]
fn recorded_h100_evidence_verifies() {
    let v = verify(&report(), &chain(), &nonce(), &AttestationPolicy::default()).unwrap();
    assert_eq!(v.report_nonce, nonce());
    for part in [
        "cert-chain",
        "measurement-signature",
        "expect-nonce",
        "driver 550.90.07",
        "VBIOS 96.00.9F.00.01",
        "measurements not compared (no RIM in the policy)",
    ] {
        assert!(v.detail.contains(part), "{part}: {}", v.detail);
    }
}

#[test]
fn recorded_evidence_with_another_nonce_fails() {
    let mut other = nonce();
    other[0] ^= 1;
    let e = verify(&report(), &chain(), &other, &AttestationPolicy::default()).unwrap_err();
    assert!(e.starts_with("failed checks: expect-nonce"), "{e}");
}

#[test]
fn a_tampered_report_fails_the_signature() {
    let mut r = report();
    // A byte of the first measurement block (after the 37-byte request and the
    // response header).
    r[60] ^= 0x01;
    let e = verify(&r, &chain(), &nonce(), &AttestationPolicy::default()).unwrap_err();
    assert!(e.contains("measurement-signature"), "{e}");
}

#[test]
fn a_truncated_report_or_chain_is_an_error() {
    let r = report();
    let e = verify(&r[..100], &chain(), &nonce(), &AttestationPolicy::default()).unwrap_err();
    assert!(e.starts_with("attestation report:"), "{e}");
    assert!(verify(&r, b"", &nonce(), &AttestationPolicy::default()).is_err());
    assert!(verify(&r, &[0u8; 64], &nonce(), &AttestationPolicy::default()).is_err());
}

#[test]
fn a_chain_not_yet_valid_fails() {
    let v = verify_nvidia_report(
        &report(),
        &chain(),
        &nonce(),
        &AttestationPolicy::default(),
        &default_trust(),
        VerificationTime::parse("2000-01-01T00:00:00Z").unwrap(),
    );
    assert!(v.unwrap_err().contains("cert-validity"));
}

#[test]
fn der_chain_is_accepted_like_pem() {
    let pem = chain();
    let certs = Chain::from_pem(&pem, "test").unwrap();
    let mut der = certs.leaf.der.clone();
    for c in &certs.issuers {
        der.extend_from_slice(&c.der);
    }
    der.extend_from_slice(&[0u8; 16]); // NUL padding as in NVML's fixed buffer
    let parsed = parse_cert_chain(&der).unwrap();
    assert_eq!(parsed, certs);
    assert!(verify(&report(), &der, &nonce(), &AttestationPolicy::default()).is_ok());
}

#[test]
fn driver_and_vbios_allow_lists() {
    let mut p = AttestationPolicy {
        driver_versions: vec!["550.90.07".into()],
        vbios_versions: vec!["96.00.9f.00.01".into()],
        ..AttestationPolicy::default()
    };
    assert!(verify(&report(), &chain(), &nonce(), &p).is_ok());
    p.driver_versions = vec!["535.104.05".into()];
    let e = verify(&report(), &chain(), &nonce(), &p).unwrap_err();
    assert!(e.contains("driver version \"550.90.07\" is not in"), "{e}");
    p.driver_versions.clear();
    p.vbios_versions = vec!["96.00.5E.00.01".into()];
    assert!(verify(&report(), &chain(), &nonce(), &p)
        .unwrap_err()
        .contains("VBIOS version"));
}

/// The fixture RIMs are authentic but for driver 545.00 / VBIOS 96.00.5E.00.01:
/// compared, they must fail (and the RIMs travel in the policy as text).
#[test]
fn rims_from_the_policy_are_compared() {
    let rim = |f: &str| String::from_utf8(testdata(f)).unwrap();
    let p = AttestationPolicy {
        rims: vec![
            rim("driver-rim-test.swidtag"),
            rim("vbios-rim-96005E0001.swidtag"),
        ],
        ..AttestationPolicy::default()
    };
    let e = verify(&report(), &chain(), &nonce(), &p).unwrap_err();
    assert!(
        e.contains("rim-version") && e.contains("rim-comparison"),
        "{e}"
    );
    let policy = GpuPolicy {
        attestation: p.clone(),
        ..GpuPolicy::default()
    };
    assert!(policy.validate().is_ok(), "the RIMs parse");

    let required = AttestationPolicy {
        require_rims: true,
        rims: vec![],
        ..p
    };
    // Without RIMs the evidence verifies, but not when the policy requires them.
    let e = verify(&report(), &chain(), &nonce(), &required).unwrap_err();
    assert!(e.contains("require_rims"), "{e}");
}

#[test]
fn nvml_cc_state_mapping() {
    let s = |f, d, p| NvmlCcState {
        cc_feature: f,
        dev_tools_mode: d,
        production: p,
    };
    assert_eq!(cc_mode_from_nvml(&s(0, 0, None)), CcMode::Off);
    assert_eq!(cc_mode_from_nvml(&s(0, 1, None)), CcMode::Off);
    assert_eq!(cc_mode_from_nvml(&s(1, 0, None)), CcMode::On);
    assert_eq!(cc_mode_from_nvml(&s(1, 0, Some(true))), CcMode::On);
    assert_eq!(cc_mode_from_nvml(&s(1, 1, None)), CcMode::DevTools);
    assert_eq!(cc_mode_from_nvml(&s(1, 1, Some(true))), CcMode::DevTools);
    assert!(matches!(
        cc_mode_from_nvml(&s(1, 0, Some(false))),
        CcMode::Unknown { detail } if detail.contains("non-production")
    ));
    assert!(matches!(
        cc_mode_from_nvml(&s(2, 0, None)),
        CcMode::Unknown { detail } if detail.contains("ccFeature 2")
    ));
    assert!(matches!(
        cc_mode_from_nvml(&s(1, 7, None)),
        CcMode::Unknown { detail } if detail.contains("devToolsMode 7")
    ));
    assert_eq!(cc_ready_from_nvml(0), Some(false));
    assert_eq!(cc_ready_from_nvml(1), Some(true));
    assert_eq!(cc_ready_from_nvml(2), None);
}

#[test]
fn nvml_constants_are_nvml_h() {
    // nvml.h (R535+): NVML_CC_SYSTEM_FEATURE_*, _DEVTOOLS_MODE_*, _ACCEPTING_CLIENT_REQUESTS_*.
    assert_eq!(
        (
            NVML_CC_SYSTEM_FEATURE_DISABLED,
            NVML_CC_SYSTEM_FEATURE_ENABLED
        ),
        (0, 1)
    );
    assert_eq!(
        (
            NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF,
            NVML_CC_SYSTEM_DEVTOOLS_MODE_ON
        ),
        (0, 1)
    );
    assert_eq!(
        (
            NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE,
            NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE
        ),
        (0, 1)
    );
}

#[test]
fn self_test_ptx_is_well_formed() {
    let ptx = SELF_TEST_PTX;
    assert!(!ptx.contains('\0'), "cuModuleLoadData takes a C string");
    assert!(ptx.contains(&format!(".visible .entry {SELF_TEST_KERNEL}(")));
    for directive in [".version 6.0", ".target sm_50", ".address_size 64"] {
        assert!(ptx.contains(directive), "{directive}");
    }
    // Three parameters, matching the launch: (u64 out, u32 n, u32 seed).
    let params: Vec<&str> = ptx.lines().filter(|l| l.contains(".param ")).collect();
    assert_eq!(params.len(), 3, "{params:?}");
    assert!(params[0].contains(".u64") && params[1].contains(".u32") && params[2].contains(".u32"));
    assert_eq!(ptx.matches('{').count(), ptx.matches('}').count());
    assert_eq!(ptx.matches('(').count(), ptx.matches(')').count());
    // Every instruction line ends with ';' (labels with ':', directives aside).
    let body = &ptx[ptx.find('{').unwrap() + 1..ptx.rfind('}').unwrap()];
    for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(line.ends_with(';') || line.ends_with(':'), "{line}");
    }
    // Every register used is declared: %r1..%r7, %rd1..%rd4, %p1.
    assert!(!body.contains("%r8") && !body.contains("%rd5") && !body.contains("%p2"));
}

#[test]
fn pci_bus_ids() {
    assert_eq!(parse_pci_bus_id("00000000:01:00.0"), Some((0, 1, 0, 0)));
    assert_eq!(parse_pci_bus_id("0000:c1:1f.7"), Some((0, 0xc1, 0x1f, 7)));
    assert_eq!(
        parse_pci_bus_id("00000000:01:00.0"),
        parse_pci_bus_id("0000:01:00.0")
    );
    for bad in [
        "",
        "01:00.0",
        "0000:01:00",
        "0000:01:20.0",
        "0000:01:00.8",
        "x:01:00.0",
        "0:1:2:3.0",
    ] {
        assert_eq!(parse_pci_bus_id(bad), None, "{bad}");
    }
}

#[test]
fn proc_driver_version() {
    let proprietary = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.90.07  Fri May 31 09:35:42 UTC 2024\nGCC version:  gcc version 12.2.0\n";
    assert_eq!(
        parse_proc_driver_version(proprietary).as_deref(),
        Some("550.90.07")
    );
    let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.104.05  Release Build  (dvs-builder@U16-I3-B03-4-3)  Sat Aug 19 01:13:15 UTC 2023\n";
    assert_eq!(
        parse_proc_driver_version(open).as_deref(),
        Some("535.104.05")
    );
    assert_eq!(parse_proc_driver_version("garbage"), None);
}

#[test]
fn guarded_turns_a_panic_into_an_error() {
    let r: Result<(), GpuError> = guarded("cuInit", || panic!("Unable to dynamically load"));
    assert_eq!(
        r,
        Err(GpuError::Panicked {
            call: "cuInit",
            detail: "Unable to dynamically load".into()
        })
    );
    assert_eq!(guarded("x", || Ok(5)), Ok(5));
}

/// The real backend on this machine. Without libcuda (CI, this machine) it must
/// say "no GPU driver present" without panicking, and a GPU-less run is allowed
/// unless GPUs are required.
#[test]
fn no_driver_path_of_the_real_backend() {
    let backend = NvidiaBackend::new();
    assert_eq!(backend.name(), "nvidia");
    let out = bring_up(&[&backend], &GpuPolicy::default(), || Ok([7u8; 32]));
    match &out.summary.presence {
        GpuPresence::NoDriver { detail } => {
            assert!(detail.starts_with("no GPU driver present ("), "{detail}");
            // The loader's own reason (no such file here; musl's static build says
            // dynamic loading is not supported).
            assert!(
                detail.contains("libcuda.so.1 could not be loaded: "),
                "{detail}"
            );
        }
        other => panic!("a GPU driver on the test machine? {other:?}"),
    }
    assert_eq!(out.refusal, None);
    assert!(out.evidence.is_empty());
    let required = GpuPolicy {
        required: true,
        ..GpuPolicy::default()
    };
    let out = crate::gpu::bring_up_nvidia(&required);
    assert!(out.refusal.unwrap().starts_with("no GPU driver present ("));
}
