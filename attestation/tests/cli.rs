//! The bulwark-verify CLI contract: exit status, human and JSON output.

mod common;

use common::*;

const SEV_OK: [&str; 5] = [
    "sev-snp",
    "--report",
    "testdata:sev-snp/milan-report.hex",
    "--vcek",
    "testdata:sev-snp/milan-vcek.der",
];

fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(extra).copied().collect()
}

#[test]
fn sev_snp_fixtures_through_the_cli() {
    let o = cli(&with(&SEV_OK, &["--at", "2024-06-01T00:00:00Z"]));
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let text = stdout(&o);
    assert!(text
        .lines()
        .any(|l| l.starts_with("passed") && l.contains("report-signature")));
    assert!(text
        .lines()
        .last()
        .unwrap()
        .starts_with("verdict: VERIFIED"));

    let debug = [
        "sev-snp",
        "--report",
        "testdata:sev-snp/milan-debug-report.bin",
        "--vcek",
        "testdata:sev-snp/milan-debug-vcek.der",
        "--at",
        "1717200000000",
    ];
    let o = cli(&debug);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("REJECTED: failed checks: policy-debug"));
    let o = cli(&with(&debug, &["--allow-debug", "--json"]));
    assert_eq!(code(&o), 0);
    assert_eq!(json(&o)["status"], "warning");
}

#[test]
fn sev_snp_json_is_ear_shaped() {
    let o = cli(&with(&SEV_OK, &["--json", "--at", "2024-06-01T00:00:00Z"]));
    assert_eq!(code(&o), 0);
    let j = json(&o);
    assert_eq!(j["status"], "affirming");
    // Built with the `ear` crate (draft-ietf-rats-ear-04 names).
    assert_eq!(j["submods"]["sev-snp"]["ear_status"], "affirming");
    assert_eq!(j["ear_status"], "affirming");
    assert_eq!(j["eat_profile"], bulwark_attestation::ear::EAT_PROFILE);
    assert_eq!(j["ear_verifier_id"]["developer"], "Bulwark");
    let tv = &j["submods"]["sev-snp"]["ear_trustworthiness_vector"];
    assert_eq!(tv["instance-identity"], 2);
    assert_eq!(tv["hardware"], 2);
    assert_eq!(j["iat"], 1717200000);
    let checks = j["checks"].as_array().unwrap();
    assert!(checks
        .iter()
        .any(|c| c["name"] == "report-signature" && c["result"] == "passed"));
    assert_eq!(j["claims"]["report_version"], 2);
    assert_eq!(j["claims"]["measurement"].as_str().unwrap().len(), 96);
}

#[test]
fn expectations_through_the_cli() {
    let zeros = "00".repeat(48);
    let o = cli(&with(
        &SEV_OK,
        &[
            "--at",
            "2024-06-01T00:00:00Z",
            "--json",
            "--expect-measurement",
            &zeros,
        ],
    ));
    assert_eq!(code(&o), 1);
    assert_eq!(json(&o)["status"], "contraindicated");
    let o = cli(&with(&SEV_OK, &["--expect-measurement", "zz"]));
    assert_eq!(code(&o), 2, "bad hex is an argument error");
}

#[test]
fn verification_time_out_of_window_fails_with_1() {
    let o = cli(&with(&SEV_OK, &["--at", "2022-01-01T00:00:00Z"]));
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("not yet valid"));
    let o = cli(&with(&SEV_OK, &["--at", "2031-01-01T00:00:00Z"]));
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("certificate expired"));
    let o = cli(&with(&SEV_OK, &["--at", "yesterday"]));
    assert_eq!(code(&o), 2);
}

#[test]
fn wrong_chain_fails_with_1() {
    let o = cli(&with(
        &SEV_OK,
        &[
            "--chain",
            "testdata:sev-snp/ask-ark-turin.pem",
            "--at",
            "2024-06-01T00:00:00Z",
        ],
    ));
    assert_eq!(code(&o), 1);
    assert!(stdout(&o)
        .lines()
        .any(|l| l.starts_with("FAILED") && l.contains("cert-chain")));
}

#[test]
fn truncated_inputs_exit_2_with_a_parse_error() {
    let raw = read("sev-snp/milan-debug-report.bin");
    for len in [0, 1, 4, 100, 0x2A0, 1183] {
        let f = TempFile::new(&format!("report-{len}.bin"), &raw[..len]);
        let o = cli(&[
            "sev-snp",
            "--report",
            &f.path(),
            "--vcek",
            "testdata:sev-snp/milan-debug-vcek.der",
        ]);
        assert_eq!(code(&o), 2, "len {len}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("parse error"),
            "len {len}"
        );
    }
    let vcek = read("sev-snp/milan-vcek.der");
    let f = TempFile::new("vcek-half.der", &vcek[..vcek.len() / 2]);
    let o = cli(&[
        "sev-snp",
        "--report",
        "testdata:sev-snp/milan-report.hex",
        "--vcek",
        &f.path(),
    ]);
    assert_eq!(code(&o), 2);
}

#[test]
fn bad_arguments_exit_2() {
    assert_eq!(code(&cli(&[])), 2);
    assert_eq!(code(&cli(&["sev-snp"])), 2);
    assert_eq!(code(&cli(&["frobnicate"])), 2);
    assert_eq!(
        code(&cli(&[
            "sev-snp",
            "--report",
            "/nonexistent",
            "--vcek",
            "/nonexistent"
        ])),
        2
    );
    assert_eq!(code(&cli(&["--help"])), 0);
}

#[test]
fn tdx_through_the_cli() {
    let o = cli(&[
        "tdx",
        "--quote",
        "testdata:tdx/quote-v4-spr.dat",
        "--json",
        "--at",
        "2026-06-01T00:00:00Z",
    ]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert_eq!(json(&o)["status"], "warning");
    let o = cli(&[
        "tdx",
        "--quote",
        "testdata:tdx/quote-v4-debug.dat",
        "--at",
        "2026-06-01T00:00:00Z",
    ]);
    assert_eq!(code(&o), 1);
    let collateral = [
        "tdx",
        "--quote",
        "testdata:tdx/quote-v4-uptodate.dat",
        "--collateral",
        "testdata:tdx/quote-v4-uptodate.collateral.json",
        "--json",
        "--at",
    ];
    let o = cli(&with(&collateral, &["2025-06-25T00:00:00Z"]));
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert_eq!(json(&o)["status"], "affirming");
    let o = cli(&with(&collateral, &["2025-07-20T00:00:00Z"]));
    assert_eq!(code(&o), 1);
    let raw = read("tdx/quote-v5.dat");
    for len in [0, 47, 48, 700, 1000, 2000] {
        let f = TempFile::new(&format!("quote-{len}.dat"), &raw[..len]);
        let o = cli(&["tdx", "--quote", &f.path()]);
        assert_eq!(code(&o), 2, "len {len}");
    }
}

#[test]
fn nitro_through_the_cli() {
    let prod = [
        "nitro",
        "--doc",
        "testdata:nitro/doc-beta-production.cbor",
        "--at",
        "1665651482136",
    ];
    let o = cli(&with(&prod, &["--json"]));
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let j = json(&o);
    assert_eq!(j["status"], "affirming");
    let pcr0 = "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b";
    assert_eq!(j["claims"]["pcrs"]["0"], pcr0);
    let arg = format!("0={pcr0}");
    assert_eq!(code(&cli(&with(&prod, &["--expect-pcr", &arg]))), 0);
    let bad = format!("1={pcr0}");
    assert_eq!(code(&cli(&with(&prod, &["--expect-pcr", &bad]))), 1);
    assert_eq!(code(&cli(&with(&prod, &["--expect-pcr", "x"]))), 2);
    assert_eq!(code(&cli(&with(&prod, &["--expect-nonce", "00"]))), 1);
    // Now, long after the leaf expired.
    let o = cli(&["nitro", "--doc", "testdata:nitro/doc-beta-production.cbor"]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("certificate expired"));

    let debug = [
        "nitro",
        "--doc",
        "testdata:nitro/doc-2023-debug.b64",
        "--at",
        "1695049410860",
    ];
    assert_eq!(code(&cli(&debug)), 1);
    assert_eq!(code(&cli(&with(&debug, &["--allow-debug"]))), 0);

    let raw = read("nitro/doc-beta-production.cbor");
    for len in [0, 1, 10, 1000, 4000, raw.len() - 1] {
        let f = TempFile::new(&format!("nitro-{len}.cbor"), &raw[..len]);
        assert_eq!(code(&cli(&["nitro", "--doc", &f.path()])), 2, "len {len}");
    }
}

#[test]
fn nvidia_through_the_cli() {
    let base = [
        "nvidia",
        "--report",
        "testdata:nvidia/hopper-report.hex",
        "--chain",
        "testdata:nvidia/hopper-cert-chain.pem",
        "--at",
        "2024-06-01T00:00:00Z",
    ];
    let o = cli(&with(&base, &["--json"]));
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert_eq!(json(&o)["status"], "affirming");
    let nonce = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
    assert_eq!(code(&cli(&with(&base, &["--expect-nonce", nonce]))), 0);
    assert_eq!(code(&cli(&with(&base, &["--expect-nonce", "00"]))), 1);
    // The fixture RIMs are signed but for another driver and VBIOS version.
    let o = cli(&with(
        &base,
        &["--rim", "testdata:nvidia/driver-rim-test.swidtag", "--json"],
    ));
    assert_eq!(code(&o), 1);
    let j = json(&o);
    let checks = j["checks"].as_array().unwrap();
    let result = |n: &str| checks.iter().find(|c| c["name"] == n).unwrap()["result"].clone();
    assert_eq!(result("rim-signature"), "passed");
    assert_eq!(result("rim-version"), "failed");
    let o = cli(&with(
        &base,
        &["--rim", "testdata:nvidia/hopper-cert-chain.pem"],
    ));
    assert_eq!(code(&o), 2, "a PEM file is not a RIM");
    let text = read("nvidia/hopper-report.hex");
    for len in [0, 2, 74, 1000, 8000] {
        let f = TempFile::new(&format!("nv-{len}.hex"), &text[..len]);
        let o = cli(&[
            "nvidia",
            "--report",
            &f.path(),
            "--chain",
            "testdata:nvidia/hopper-cert-chain.pem",
        ]);
        assert_eq!(code(&o), 2, "len {len}");
    }
}

#[test]
fn tdx_and_nitro_expectation_flags() {
    let q = bulwark_attestation::tdx::Quote::parse(&read("tdx/quote-v4-spr.dat")).unwrap();
    let rtmr1 = format!("1={}", hex::encode(q.body.rtmr[1]));
    let mrtd = hex::encode(q.body.mr_td);
    let base = [
        "tdx",
        "--quote",
        "testdata:tdx/quote-v4-spr.dat",
        "--at",
        "2026-06-01T00:00:00Z",
    ];
    assert_eq!(
        code(&cli(&with(
            &base,
            &["--expect-rtmr", &rtmr1, "--expect-mrtd", &mrtd]
        ))),
        0
    );
    let wrong = format!("2={}", hex::encode(q.body.rtmr[1]));
    assert_eq!(code(&cli(&with(&base, &["--expect-rtmr", &wrong]))), 1);
    assert_eq!(code(&cli(&with(&base, &["--expect-rtmr", "7=00"]))), 2);

    let nitro = [
        "nitro",
        "--doc",
        "testdata:nitro/doc-beta-production.cbor",
        "--at",
        "1665651482136",
    ];
    assert_eq!(code(&cli(&with(&nitro, &["--expect-user-data", "00"]))), 1);
    assert_eq!(code(&cli(&with(&nitro, &["--expect-public-key", "zz"]))), 2);
}
