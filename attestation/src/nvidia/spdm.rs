//! DMTF SPDM (DSP0274) GET_MEASUREMENTS request and MEASUREMENTS response,
//! versions 1.0 and 1.1, as NVIDIA Hopper GPUs return them, and the NVIDIA
//! opaque-data fields carried in the response.

use crate::bytes::Reader;
use crate::Error;

pub const GET_MEASUREMENTS: u8 = 0xE0;
pub const MEASUREMENTS: u8 = 0x60;
pub const NONCE_LEN: usize = 32;
/// ECDSA P-384 r || s.
pub const SIGNATURE_LEN: usize = 96;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub version: u8,
    pub signature_requested: bool,
    pub operation: u8,
    pub nonce: [u8; NONCE_LEN],
    pub slot_id: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementBlock {
    pub index: u8,
    pub spec: u8,
    pub value_type: u8,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub version: u8,
    pub param2: u8,
    pub blocks: Vec<MeasurementBlock>,
    pub nonce: [u8; NONCE_LEN],
    pub opaque: Vec<u8>,
    pub signature: [u8; SIGNATURE_LEN],
    /// Bytes after the signature, ignored (real GPUs have been seen to
    /// return one; they are outside the signed data).
    pub trailing: usize,
}

/// Request and response as exchanged, with the signed bytes.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub request: Request,
    pub response: Response,
    /// request || response without the signature: what the GPU signed.
    pub signed: Vec<u8>,
}

impl Exchange {
    /// Parse hex text (or raw bytes) of request || response.
    pub fn parse_any(input: &[u8]) -> Result<Self, Error> {
        if input.first() == Some(&0x10) || input.first() == Some(&0x11) {
            return Self::parse(input);
        }
        Self::parse(&crate::bytes::decode_hex_text(input, "SPDM evidence")?)
    }

    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(b, "SPDM GET_MEASUREMENTS request");
        let version = r.u8()?;
        let code = r.u8()?;
        if code != GET_MEASUREMENTS {
            return Err(Error::Parse(format!(
                "SPDM request code {code:#04x} is not GET_MEASUREMENTS"
            )));
        }
        match version {
            0x10 | 0x11 => {}
            v => {
                return Err(Error::NotImplemented(format!(
                    "SPDM version {}.{} (1.0 and 1.1 are supported)",
                    v >> 4,
                    v & 0xF
                )))
            }
        }
        let param1 = r.u8()?;
        let operation = r.u8()?;
        let signature_requested = param1 & 1 != 0;
        if !signature_requested {
            return Err(Error::parse("SPDM request does not ask for a signature"));
        }
        let nonce = r.array()?;
        let slot_id = if version >= 0x11 { r.u8()? } else { 0 };
        let request = Request {
            version,
            signature_requested,
            operation,
            nonce,
            slot_id,
        };
        let start = r.position();

        let mut resp = Reader::new(&b[start..], "SPDM MEASUREMENTS response");
        let rversion = resp.u8()?;
        let rcode = resp.u8()?;
        if rcode != MEASUREMENTS {
            return Err(Error::Parse(format!(
                "SPDM response code {rcode:#04x} is not MEASUREMENTS"
            )));
        }
        if rversion != version {
            return Err(Error::Parse(format!(
                "SPDM response version {rversion:#04x} differs from the request's {version:#04x}"
            )));
        }
        let _param1 = resp.u8()?;
        let param2 = resp.u8()?;
        let count = resp.u8()?;
        let record_len = resp.u24()? as usize;
        let record = resp.take(record_len)?;
        let blocks = parse_blocks(record, count)?;
        let rnonce = resp.array()?;
        let opaque_len = resp.u16()? as usize;
        let opaque = resp.take(opaque_len)?.to_vec();
        let signed_end = start + resp.position();
        let signature = resp.array()?;
        let trailing = resp.remaining();
        Ok(Exchange {
            request,
            response: Response {
                version: rversion,
                param2,
                blocks,
                nonce: rnonce,
                opaque,
                signature,
                trailing,
            },
            signed: b[..signed_end].to_vec(),
        })
    }
}

fn parse_blocks(record: &[u8], count: u8) -> Result<Vec<MeasurementBlock>, Error> {
    let mut r = Reader::new(record, "SPDM measurement record");
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let index = r.u8()?;
        let spec = r.u8()?;
        let size = r.u16()? as usize;
        let m = r.take(size)?;
        if spec & 1 == 0 {
            return Err(Error::Parse(format!(
                "measurement block {index}: specification {spec:#04x} is not DMTF"
            )));
        }
        let mut mr = Reader::new(m, "DMTF measurement");
        let value_type = mr.u8()?;
        let vlen = mr.u16()? as usize;
        let value = mr.take(vlen)?.to_vec();
        if mr.remaining() != 0 {
            return Err(Error::Parse(format!(
                "measurement block {index}: size mismatch"
            )));
        }
        out.push(MeasurementBlock {
            index,
            spec,
            value_type,
            value,
        });
    }
    if r.remaining() != 0 {
        return Err(Error::Parse(format!(
            "{} bytes after {count} measurement blocks",
            r.remaining()
        )));
    }
    Ok(out)
}

/// NVIDIA opaque-data field types (nvtrust local GPU verifier).
pub fn opaque_field_name(t: u16) -> Option<&'static str> {
    Some(match t {
        3 => "driver_version",
        4 => "gpu_info",
        5 => "sku",
        6 => "vbios_version",
        7 => "manufacturer_id",
        14 => "board_id",
        15 => "chip_sku",
        16 => "chip_sku_mod",
        17 => "project",
        18 => "project_sku",
        19 => "project_sku_mod",
        20 => "fwid",
        _ => return None,
    })
}

/// The opaque data's type-length-value fields.
pub fn opaque_fields(opaque: &[u8]) -> Result<Vec<(u16, &[u8])>, Error> {
    let mut r = Reader::new(opaque, "SPDM opaque data");
    let mut out = Vec::new();
    while r.remaining() > 0 {
        let t = r.u16()?;
        let len = r.u16()? as usize;
        out.push((t, r.take(len)?));
    }
    Ok(out)
}

/// VBIOS version as NVIDIA prints it (e.g. 96.00.9F.00.01).
pub fn format_vbios_version(v: &[u8]) -> Option<String> {
    if v.len() != 8 {
        return None;
    }
    let lo = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
    let hi = u32::from_le_bytes([v[4], v[5], v[6], v[7]]);
    let s = format!("{lo:08X}{hi:02X}");
    Some(format!(
        "{}.{}.{}.{}.{}",
        &s[0..2],
        &s[2..4],
        &s[4..6],
        &s[6..8],
        &s[8..10]
    ))
}
