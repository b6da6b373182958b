//! Intel PCS collateral for TDX: TCB info (v3), QE identity (v2), CRLs and
//! their issuer chains, as one JSON bundle:
//! `{tcb_info, tcb_info_signature, tcb_info_issuer_chain, qe_identity,
//! qe_identity_signature, qe_identity_issuer_chain, pck_crl, root_ca_crl,
//! pck_crl_issuer_chain}` (JSON texts kept verbatim because the signatures
//! cover their exact bytes; CRLs hex DER; signatures hex r || s).

use crate::bytes::decode_hex_text;
use crate::x509::{self, Certificate, Chain, Crl, EcdsaEncoding, SigAlg};
use crate::Error;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Bundle {
    tcb_info: String,
    tcb_info_signature: String,
    tcb_info_issuer_chain: String,
    qe_identity: String,
    qe_identity_signature: String,
    qe_identity_issuer_chain: String,
    pck_crl: String,
    root_ca_crl: String,
    pck_crl_issuer_chain: String,
}

/// A signed JSON document (TCB info or QE identity).
#[derive(Debug, Clone)]
pub struct Signed<T> {
    pub body: T,
    /// The exact signed text.
    pub text: String,
    pub signature: Vec<u8>,
    pub issuer_chain: Chain,
}

#[derive(Debug, Clone)]
pub struct Collateral {
    pub tcb_info: Signed<TcbInfo>,
    pub qe_identity: Signed<QeIdentity>,
    pub pck_crl: Crl,
    pub root_ca_crl: Crl,
    pub pck_crl_issuer_chain: Chain,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcbInfo {
    pub id: String,
    pub version: u32,
    pub issue_date: String,
    pub next_update: String,
    pub fmspc: String,
    pub pce_id: String,
    pub tcb_evaluation_data_number: u32,
    pub tdx_module: TdxModule,
    #[serde(default)]
    pub tdx_module_identities: Vec<TdxModuleIdentity>,
    pub tcb_levels: Vec<TcbLevel>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TdxModule {
    pub mrsigner: String,
    pub attributes: String,
    pub attributes_mask: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TdxModuleIdentity {
    pub id: String,
    pub mrsigner: String,
    pub attributes: String,
    pub attributes_mask: String,
    pub tcb_levels: Vec<IsvTcbLevel>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Svn {
    pub svn: u16,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PlatformTcb {
    pub sgxtcbcomponents: Vec<Svn>,
    pub pcesvn: u16,
    #[serde(default)]
    pub tdxtcbcomponents: Vec<Svn>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcbLevel {
    pub tcb: PlatformTcb,
    pub tcb_date: String,
    pub tcb_status: String,
    #[serde(default, rename = "advisoryIDs")]
    pub advisory_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IsvSvn {
    pub isvsvn: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IsvTcbLevel {
    pub tcb: IsvSvn,
    pub tcb_date: String,
    pub tcb_status: String,
    #[serde(default, rename = "advisoryIDs")]
    pub advisory_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QeIdentity {
    pub id: String,
    pub version: u32,
    pub issue_date: String,
    pub next_update: String,
    pub miscselect: String,
    pub miscselect_mask: String,
    pub attributes: String,
    pub attributes_mask: String,
    pub mrsigner: String,
    pub isvprodid: u16,
    pub tcb_levels: Vec<IsvTcbLevel>,
}

impl<T: for<'de> Deserialize<'de>> Signed<T> {
    /// A PCS API response body, `{"<member>": {...}, "signature": "<hex>"}`
    /// (the issuer chain comes from the response header, here an argument).
    pub fn from_pcs_response(
        json: &[u8],
        member: &str,
        issuer_chain: Chain,
    ) -> Result<Self, Error> {
        let fields: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
            serde_json::from_slice(json).map_err(|e| Error::Parse(format!("PCS response: {e}")))?;
        let text = fields
            .get(member)
            .ok_or_else(|| Error::Parse(format!("PCS response lacks {member}")))?
            .get()
            .to_string();
        let sig: String = fields
            .get("signature")
            .and_then(|s| serde_json::from_str(s.get()).ok())
            .ok_or_else(|| Error::parse("PCS response lacks a signature string"))?;
        signed(member, text, &sig, issuer_chain)
    }

    /// The issuer chain leads to one of `anchors` and its leaf's P-256 key
    /// signed the exact text; returns the certificate path.
    pub fn verify(&self, what: &str, anchors: &[Certificate]) -> Result<Vec<Certificate>, String> {
        let path = self
            .issuer_chain
            .path_to(anchors)
            .map_err(|e| format!("{what} issuer chain: {e}"))?;
        x509::verify_signature(
            &self.issuer_chain.leaf.key,
            SigAlg::EcdsaSha256,
            EcdsaEncoding::Fixed,
            self.text.as_bytes(),
            &self.signature,
        )
        .map_err(|e| format!("{what}: {e}"))?;
        Ok(path.certs)
    }
}

fn signed<T: for<'de> Deserialize<'de>>(
    what: &str,
    text: String,
    sig: &str,
    issuer_chain: Chain,
) -> Result<Signed<T>, Error> {
    let body =
        serde_json::from_str(&text).map_err(|e| Error::Parse(format!("collateral {what}: {e}")))?;
    let signature = decode_hex_text(sig.as_bytes(), what)?;
    if signature.len() != 64 {
        return Err(Error::Parse(format!(
            "collateral {what} signature is {} bytes, expected 64",
            signature.len()
        )));
    }
    Ok(Signed {
        body,
        text,
        signature,
        issuer_chain,
    })
}

impl Collateral {
    pub fn parse(json: &[u8]) -> Result<Self, Error> {
        let b: Bundle = serde_json::from_slice(json)
            .map_err(|e| Error::Parse(format!("collateral bundle: {e}")))?;
        let pck_crl_issuer_chain = Chain::from_pem(
            b.pck_crl_issuer_chain.as_bytes(),
            "collateral PCK CRL issuer chain",
        )?;
        Ok(Collateral {
            tcb_info: signed(
                "tcb_info",
                b.tcb_info,
                &b.tcb_info_signature,
                Chain::from_pem(
                    b.tcb_info_issuer_chain.as_bytes(),
                    "collateral TCB info issuer chain",
                )?,
            )?,
            qe_identity: signed(
                "qe_identity",
                b.qe_identity,
                &b.qe_identity_signature,
                Chain::from_pem(
                    b.qe_identity_issuer_chain.as_bytes(),
                    "collateral QE identity issuer chain",
                )?,
            )?,
            pck_crl: Crl::from_der(&decode_hex_text(b.pck_crl.as_bytes(), "pck_crl")?)?,
            root_ca_crl: Crl::from_der(&decode_hex_text(b.root_ca_crl.as_bytes(), "root_ca_crl")?)?,
            pck_crl_issuer_chain,
        })
    }
}

/// TCB statuses from best to worst; evaluation keeps the worst one seen.
pub const STATUS_ORDER: [&str; 7] = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
];

/// Rank of a status in [`STATUS_ORDER`]; unknown statuses rank worst.
pub fn status_rank(status: &str) -> usize {
    STATUS_ORDER
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUS_ORDER.len())
}

/// First level (levels are ordered newest first) whose SVN the value meets.
pub fn isv_level(levels: &[IsvTcbLevel], isvsvn: u16) -> Option<&IsvTcbLevel> {
    levels.iter().find(|l| isvsvn >= l.tcb.isvsvn)
}

/// The platform TCB level: PCK SGX components and PCE SVN, then the TD
/// report's TEE_TCB_SVN against the TDX components (from index 2 when the
/// TDX module major version, TEE_TCB_SVN[1], is non-zero: those two bytes
/// are then evaluated through the TDX module identities).
pub fn platform_level<'a>(
    levels: &'a [TcbLevel],
    sgx_svns: &[u8; 16],
    pcesvn: u16,
    tee_tcb_svn: &[u8; 16],
) -> Option<&'a TcbLevel> {
    let start = if tee_tcb_svn[1] > 0 { 2 } else { 0 };
    levels.iter().find(|l| {
        l.tcb.sgxtcbcomponents.len() == 16
            && l.tcb.tdxtcbcomponents.len() == 16
            && sgx_svns
                .iter()
                .zip(&l.tcb.sgxtcbcomponents)
                .all(|(have, want)| u16::from(*have) >= want.svn)
            && pcesvn >= l.tcb.pcesvn
            && tee_tcb_svn[start..]
                .iter()
                .zip(&l.tcb.tdxtcbcomponents[start..])
                .all(|(have, want)| u16::from(*have) >= want.svn)
    })
}
