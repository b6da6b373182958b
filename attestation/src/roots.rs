//! Vendor trust anchors compiled into the verifier. Every verifier also
//! accepts caller-supplied anchors instead (the CLI's override flags).
//! Where each certificate came from: `roots/README.md`.

use crate::x509::{parse_pem_certificates, Certificate};
use crate::Error;

const AMD_CHAINS: [(&str, &str); 4] = [
    ("Milan", include_str!("../roots/ask-ark-milan.pem")),
    (
        "Milan VLEK",
        include_str!("../roots/ask-ark-milan-vlek.pem"),
    ),
    ("Genoa", include_str!("../roots/ask-ark-genoa.pem")),
    ("Turin", include_str!("../roots/ask-ark-turin.pem")),
];
const INTEL_SGX_ROOT_CA: &str = include_str!("../roots/intel-sgx-root-ca.pem");
const AWS_NITRO_ROOT: &str = include_str!("../roots/aws-nitro-enclaves-root.pem");
const NVIDIA_DEVICE_IDENTITY_ROOT: &str = include_str!("../roots/nvidia-device-identity-root.pem");
const NVIDIA_RIM_ROOT: &str = include_str!("../roots/nvidia-rim-root.pem");

/// Anchors (self-signed) and intermediates for a verifier.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    pub anchors: Vec<Certificate>,
    pub intermediates: Vec<Certificate>,
}

impl TrustStore {
    /// Split PEM certificates into self-issued anchors and intermediates.
    /// An anchor must carry a valid self-signature.
    pub fn from_pem(pem: &[u8]) -> Result<Self, Error> {
        let mut store = TrustStore::default();
        store.add_pem(pem)?;
        Ok(store)
    }

    fn add_pem(&mut self, pem: &[u8]) -> Result<(), Error> {
        let certs = parse_pem_certificates(pem)?;
        if certs.is_empty() {
            return Err(Error::Argument("trust file holds no certificate".into()));
        }
        for c in certs {
            if c.is_self_issued() {
                c.verify_signed_by(&c)
                    .map_err(|e| Error::Argument(format!("trust anchor self-signature: {e}")))?;
                self.anchors.push(c);
            } else {
                self.intermediates.push(c);
            }
        }
        Ok(())
    }
}

fn embedded(pems: &[&str]) -> TrustStore {
    let mut store = TrustStore::default();
    for pem in pems {
        // The embedded files are fixed at build time and parsed by a unit
        // test; a failure here would be a build defect, reported as no anchor.
        if store.add_pem(pem.as_bytes()).is_err() {
            continue;
        }
    }
    store
}

/// AMD ARKs (Milan, Genoa, Turin) with their ASKs and the Milan ASVK.
pub fn amd_sev() -> TrustStore {
    let pems: Vec<&str> = AMD_CHAINS.iter().map(|(_, p)| *p).collect();
    let mut s = embedded(&pems);
    let mut unique: Vec<Certificate> = Vec::new();
    for a in s.anchors.drain(..) {
        if !unique.iter().any(|u| u.der == a.der) {
            unique.push(a);
        }
    }
    s.anchors = unique;
    s
}

/// Intel SGX Root CA (roots TDX PCK chains and collateral signing chains).
pub fn intel_sgx() -> TrustStore {
    embedded(&[INTEL_SGX_ROOT_CA])
}

/// AWS Nitro Enclaves root G1.
pub fn aws_nitro() -> TrustStore {
    embedded(&[AWS_NITRO_ROOT])
}

/// NVIDIA Device Identity CA.
pub fn nvidia_device_identity() -> TrustStore {
    embedded(&[NVIDIA_DEVICE_IDENTITY_ROOT])
}

/// NVIDIA CoRIM signing root (signs reference integrity manifests).
pub fn nvidia_rim() -> TrustStore {
    embedded(&[NVIDIA_RIM_ROOT])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_roots_parse_and_self_verify() {
        let amd = amd_sev();
        // Milan (listed twice, deduplicated), Genoa, Turin.
        assert_eq!(amd.anchors.len(), 3);
        assert_eq!(amd.intermediates.len(), 4);
        for s in [
            intel_sgx(),
            aws_nitro(),
            nvidia_device_identity(),
            nvidia_rim(),
        ] {
            assert_eq!(s.anchors.len(), 1);
            assert!(s.intermediates.is_empty());
        }
    }
}
