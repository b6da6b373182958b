//! The Intel DCAP quote format for TDX, versions 4 and 5 (Intel TDX DCAP
//! Quoting Library API, appendix "Quote Format").

use crate::bytes::Reader;
use crate::x509::Chain;
use crate::Error;

pub const HEADER_LEN: usize = 48;
pub const TD_REPORT10_LEN: usize = 584;
pub const TD_REPORT15_LEN: usize = 648;
pub const QE_REPORT_LEN: usize = 384;
pub const ATT_KEY_TYPE_ECDSA_P256: u16 = 2;
pub const TEE_TYPE_TDX: u32 = 0x81;
/// Certification data types.
pub const CERT_DATA_PCK_CHAIN: u16 = 5;
pub const CERT_DATA_QE_REPORT: u16 = 6;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub att_key_type: u16,
    pub tee_type: u32,
    pub qe_vendor_id: [u8; 16],
    pub user_data: [u8; 20],
}

/// TD report body (TDX 1.0 fields; TDX 1.5 adds the last two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReport {
    pub tee_tcb_svn: [u8; 16],
    pub mr_seam: [u8; 48],
    pub mr_signer_seam: [u8; 48],
    pub seam_attributes: [u8; 8],
    pub td_attributes: [u8; 8],
    pub xfam: [u8; 8],
    pub mr_td: [u8; 48],
    pub mr_config_id: [u8; 48],
    pub mr_owner: [u8; 48],
    pub mr_owner_config: [u8; 48],
    pub rtmr: [[u8; 48]; 4],
    pub report_data: [u8; 64],
    pub tee_tcb_svn2: Option<[u8; 16]>,
    pub mr_service_td: Option<[u8; 48]>,
}

impl TdReport {
    /// TUD.DEBUG: bit 0 of TD_ATTRIBUTES.
    pub fn debug(&self) -> bool {
        self.td_attributes[0] & 1 != 0
    }
}

/// The SGX enclave report of the Quoting Enclave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnclaveReport {
    pub raw: [u8; QE_REPORT_LEN],
    pub cpu_svn: [u8; 16],
    pub misc_select: u32,
    pub attributes: [u8; 16],
    pub mr_enclave: [u8; 32],
    pub mr_signer: [u8; 32],
    pub isv_prod_id: u16,
    pub isv_svn: u16,
    pub report_data: [u8; 64],
}

impl EnclaveReport {
    fn parse(raw: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(raw, "QE report");
        let cpu_svn = r.array()?;
        let misc_select = r.u32()?;
        r.take(28)?;
        let attributes = r.array()?;
        let mr_enclave = r.array()?;
        r.take(32)?;
        let mr_signer = r.array()?;
        r.take(96)?;
        let isv_prod_id = r.u16()?;
        let isv_svn = r.u16()?;
        r.take(60)?;
        let report_data = r.array()?;
        let mut copy = [0u8; QE_REPORT_LEN];
        copy.copy_from_slice(raw);
        Ok(EnclaveReport {
            raw: copy,
            cpu_svn,
            misc_select,
            attributes,
            mr_enclave,
            mr_signer,
            isv_prod_id,
            isv_svn,
            report_data,
        })
    }
}

/// A parsed quote; `signed` is the header and body, which the attestation
/// key signs.
#[derive(Debug, Clone)]
pub struct Quote {
    pub header: Header,
    /// 2 = TDX 1.0 report, 3 = TDX 1.5 report (v4 quotes are always 2).
    pub body_type: u16,
    pub body: TdReport,
    pub signed: Vec<u8>,
    /// ECDSA P-256 r || s.
    pub signature: [u8; 64],
    /// Attestation public key, x || y.
    pub attestation_key: [u8; 64],
    pub qe_report: EnclaveReport,
    pub qe_report_signature: [u8; 64],
    pub qe_auth_data: Vec<u8>,
    /// PCK leaf and the issuing CAs.
    pub pck_chain: Chain,
    /// Bytes after the signature data, ignored.
    pub trailing: usize,
}

impl Quote {
    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(b, "TDX quote");
        let version = r.u16()?;
        let att_key_type = r.u16()?;
        let tee_type = r.u32()?;
        r.take(4)?; // QE SVN and PCE SVN in v3; reserved in v4/v5
        let qe_vendor_id = r.array()?;
        let user_data = r.array()?;
        let header = Header {
            version,
            att_key_type,
            tee_type,
            qe_vendor_id,
            user_data,
        };
        let (body_type, body_len) = match version {
            4 => (2, TD_REPORT10_LEN),
            5 => {
                let body_type = r.u16()?;
                let size = r.u32()? as usize;
                let expected = match body_type {
                    2 => TD_REPORT10_LEN,
                    3 => TD_REPORT15_LEN,
                    t => {
                        return Err(Error::NotImplemented(format!(
                            "TDX quote v5 body type {t} (2 and 3 are TD reports)"
                        )))
                    }
                };
                if size != expected {
                    return Err(Error::Parse(format!(
                        "quote v5 body type {body_type} has size {size}, expected {expected}"
                    )));
                }
                (body_type, size)
            }
            v => {
                return Err(Error::Parse(format!(
                    "TDX quote version {v} not supported (4 and 5 are)"
                )))
            }
        };
        let body = parse_td_report(r.take(body_len)?, body_type == 3)?;
        let signed = b[..r.position()].to_vec();

        let sig_len = r.u32()? as usize;
        let sig_data = r.take(sig_len)?;
        // Quote buffers are often larger than the quote; bytes after the
        // signature data are neither signed nor used (counted in a claim).
        let trailing = r.remaining();
        let mut s = Reader::new(sig_data, "quote signature data");
        let signature = s.array()?;
        let attestation_key = s.array()?;
        let cert_type = s.u16()?;
        let cert_len = s.u32()? as usize;
        if cert_type != CERT_DATA_QE_REPORT {
            return Err(Error::NotImplemented(format!(
                "certification data type {cert_type} (only type 6, QE report with PCK chain, is)"
            )));
        }
        let cert_data = s.take(cert_len)?;
        let mut c = Reader::new(cert_data, "QE report certification data");
        let qe_report = EnclaveReport::parse(c.take(QE_REPORT_LEN)?)?;
        let qe_report_signature = c.array()?;
        let auth_len = c.u16()? as usize;
        let qe_auth_data = c.take(auth_len)?.to_vec();
        let inner_type = c.u16()?;
        let inner_len = c.u32()? as usize;
        let inner = c.take(inner_len)?;
        if inner_type != CERT_DATA_PCK_CHAIN {
            return Err(Error::NotImplemented(format!(
                "inner certification data type {inner_type} (only type 5, PCK chain, is)"
            )));
        }
        // The PEM chain may be NUL-terminated.
        let pem_end = inner.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        let pck_chain = Chain::from_pem(&inner[..pem_end], "quote PCK certificate chain")?;
        Ok(Quote {
            header,
            body_type,
            body,
            signed,
            signature,
            attestation_key,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            pck_chain,
            trailing,
        })
    }
}

fn parse_td_report(b: &[u8], v15: bool) -> Result<TdReport, Error> {
    let mut r = Reader::new(b, "TD report");
    let tee_tcb_svn = r.array()?;
    let mr_seam = r.array()?;
    let mr_signer_seam = r.array()?;
    let seam_attributes = r.array()?;
    let td_attributes = r.array()?;
    let xfam = r.array()?;
    let mr_td = r.array()?;
    let mr_config_id = r.array()?;
    let mr_owner = r.array()?;
    let mr_owner_config = r.array()?;
    let rtmr = [r.array()?, r.array()?, r.array()?, r.array()?];
    let report_data = r.array()?;
    let (tee_tcb_svn2, mr_service_td) = if v15 {
        (Some(r.array()?), Some(r.array()?))
    } else {
        (None, None)
    };
    Ok(TdReport {
        tee_tcb_svn,
        mr_seam,
        mr_signer_seam,
        seam_attributes,
        td_attributes,
        xfam,
        mr_td,
        mr_config_id,
        mr_owner,
        mr_owner_config,
        rtmr,
        report_data,
        tee_tcb_svn2,
        mr_service_td,
    })
}
