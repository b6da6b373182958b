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
