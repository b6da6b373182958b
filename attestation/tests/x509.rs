//! Path building rules that the real fixtures cannot exercise, on the
//! synthetic chains in testdata/synthetic/ (see testdata/PROVENANCE.md).

mod common;

use bulwark_attestation::x509::{build_path, Chain};
use common::*;

fn chain(file: &str) -> Chain {
    Chain::from_pem(&read(file), file).unwrap()
}

#[test]
fn an_intermediate_must_be_a_ca() {
    let good = chain("synthetic/ca-intermediate.pem");
    let root = good.issuers.last().unwrap().clone();
    let path = good.path_to(std::slice::from_ref(&root)).unwrap();
    assert_eq!(path.certs.len(), 3);

    let bad = chain("synthetic/non-ca-intermediate.pem");
    let err = build_path(&bad.leaf, &bad.issuers, std::slice::from_ref(&root)).unwrap_err();
    assert!(err.contains("not a CA"), "{err}");
}

#[test]
fn an_empty_chain_is_a_parse_error() {
    assert!(Chain::from_pem(b"no certificates here", "test chain").is_err());
    assert!(Chain::from_certs(Vec::new(), "test chain").is_err());
}

/// The embedded anchors are the trust anchors of testdata/PROVENANCE.md.
#[test]
fn embedded_roots_are_the_fixture_anchors() {
    use bulwark_attestation::roots::{self, TrustStore};
    let fixture = |f: &str| TrustStore::from_pem(&read(f)).unwrap().anchors;
    let ders = |v: Vec<bulwark_attestation::x509::Certificate>| {
        v.into_iter().map(|c| c.der).collect::<Vec<_>>()
    };
    assert_eq!(
        ders(roots::intel_sgx().anchors),
        ders(fixture("tdx/intel-sgx-root-ca.pem"))
    );
    assert_eq!(
        ders(roots::aws_nitro().anchors),
        ders(fixture("nitro/aws-nitro-enclaves-root.pem"))
    );
    assert_eq!(
        ders(roots::nvidia_device_identity().anchors),
        ders(fixture("nvidia/nvidia-device-identity-root.pem"))
    );
    assert_eq!(
        ders(roots::nvidia_rim().anchors),
        ders(fixture("nvidia/nvidia-rim-root.pem"))
    );
    let amd = ders(roots::amd_sev().anchors);
    for f in [
        "ask-ark-milan.pem",
        "ask-ark-milan-vlek.pem",
        "ask-ark-genoa.pem",
        "ask-ark-turin.pem",
    ] {
        for ark in ders(fixture(&format!("sev-snp/{f}"))) {
            assert!(amd.contains(&ark), "{f}");
        }
    }
    // AWS publishes the root's fingerprint: SHA-256 of the DER.
    let der = &roots::aws_nitro().anchors[0].der;
    let fp = hex::encode(ring::digest::digest(&ring::digest::SHA256, der));
    assert_eq!(
        fp,
        "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
    );
}
