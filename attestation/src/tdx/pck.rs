//! The Intel SGX extensions of a PCK certificate (OID 1.2.840.113741.1.13.1):
//! the platform TCB, FMSPC and PCE-ID that TCB evaluation matches against.

use crate::x509::{der, Certificate};

const OID_SGX_EXTENSIONS: &str = "1.2.840.113741.1.13.1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PckExtensions {
    pub tcb_comp_svn: [u8; 16],
    pub pcesvn: u16,
    pub cpusvn: Vec<u8>,
    pub pce_id: Vec<u8>,
    pub fmspc: Vec<u8>,
}

fn pairs(seq: &[u8]) -> Result<Vec<(String, der::Tlv<'_>)>, String> {
    der::items(seq)?
        .into_iter()
        .map(|item| {
            if item.tag != der::SEQUENCE {
                return Err("SGX extension: expected SEQUENCE".to_string());
            }
            let (oid, rest) = der::read(item.content)?;
            if oid.tag != der::OID {
                return Err("SGX extension: expected OID".to_string());
            }
            let (value, rest) = der::read(rest)?;
            if !rest.is_empty() {
                return Err("SGX extension: trailing data".to_string());
            }
            Ok((der::oid_string(oid.content)?, value))
        })
        .collect()
}

impl PckExtensions {
    pub fn from_certificate(cert: &Certificate) -> Result<Self, String> {
        let ext = cert
            .extension(OID_SGX_EXTENSIONS)
            .ok_or("PCK certificate lacks the SGX extensions")?;
        let top = pairs(der::expect(&ext.value, der::SEQUENCE)?)?;
        let get = |arc: &str| -> Result<der::Tlv<'_>, String> {
            let oid = format!("{OID_SGX_EXTENSIONS}.{arc}");
            top.iter()
                .find(|(o, _)| *o == oid)
                .map(|(_, v)| *v)
                .ok_or(format!("PCK SGX extensions lack {oid}"))
        };
        let tcb = get("2")?;
        if tcb.tag != der::SEQUENCE {
            return Err("PCK TCB: expected SEQUENCE".into());
        }
        let tcb_items = pairs(tcb.content)?;
        let mut out = PckExtensions {
            tcb_comp_svn: [0; 16],
            pcesvn: 0,
            cpusvn: Vec::new(),
            pce_id: octets(get("3")?)?,
            fmspc: octets(get("4")?)?,
        };
        let mut seen = [false; 18];
        for (oid, v) in tcb_items {
            let Some(arc) = oid.strip_prefix(&format!("{OID_SGX_EXTENSIONS}.2.")) else {
                continue;
            };
            let Ok(n) = arc.parse::<usize>() else {
                continue;
            };
            match n {
                1..=16 => {
                    let svn = int(v)?;
                    out.tcb_comp_svn[n - 1] = u8::try_from(svn)
                        .map_err(|_| format!("PCK TCB comp {n} SVN {svn} > 255"))?;
                }
                17 => {
                    let svn = int(v)?;
                    out.pcesvn = u16::try_from(svn).map_err(|_| "PCK PCESVN out of range")?;
                }
                18 => out.cpusvn = octets(v)?,
                _ => continue,
            }
            seen[n - 1] = true;
        }
        if !seen[..17].iter().all(|s| *s) {
            return Err("PCK TCB lacks some component SVNs or the PCESVN".into());
        }
        Ok(out)
    }
}

fn int(v: der::Tlv<'_>) -> Result<u64, String> {
    if v.tag != der::INTEGER {
        return Err("SGX extension: expected INTEGER".into());
    }
    der::uint(v.content)
}

fn octets(v: der::Tlv<'_>) -> Result<Vec<u8>, String> {
    if v.tag != der::OCTET_STRING {
        return Err("SGX extension: expected OCTET STRING".into());
    }
    Ok(v.content.to_vec())
}
