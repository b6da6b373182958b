//! The AMD SEV-SNP ATTESTATION_REPORT structure (SEV-SNP ABI specification,
//! table "ATTESTATION_REPORT Structure"), versions 2, 3 and 5.

use crate::bytes::{decode_hex_text, Reader};
use crate::Error;

/// Size of the report in bytes.
pub const REPORT_LEN: usize = 0x4A0;
/// The signature covers bytes 0x000..0x2A0.
pub const SIGNED_LEN: usize = 0x2A0;

/// A TCB_VERSION value with its component security patch levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcbVersion {
    pub raw: u64,
    /// Present on Turin and later (family 0x1A).
    pub fmc: Option<u8>,
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

impl TcbVersion {
    /// Decode `raw`; Turin (CPUID family 0x1A) moved the fields.
    pub fn decode(raw: u64, turin_layout: bool) -> Self {
        let b = raw.to_le_bytes();
        if turin_layout {
            TcbVersion {
                raw,
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            }
        } else {
            TcbVersion {
                raw,
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            }
        }
    }

    /// Components as (name, value) pairs, in a fixed order.
    pub fn components(&self) -> Vec<(&'static str, u8)> {
        let mut v = Vec::new();
        if let Some(f) = self.fmc {
            v.push(("fmc", f));
        }
        v.extend([
            ("bootloader", self.bootloader),
            ("tee", self.tee),
            ("snp", self.snp),
            ("microcode", self.microcode),
        ]);
        v
    }

    /// True when every component is at least `min`'s.
    pub fn at_least(&self, min: &TcbVersion) -> bool {
        self.fmc.unwrap_or(0) >= min.fmc.unwrap_or(0)
            && self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("raw".into(), format!("{:#018x}", self.raw).into());
        for (k, v) in self.components() {
            m.insert(k.into(), v.into());
        }
        serde_json::Value::Object(m)
    }
}

/// Which key signed the report (bits 4:2 of the key info field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    Vcek,
    Vlek,
    None,
    Reserved(u8),
}

/// A parsed attestation report. Byte fields are copied as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationReport {
    pub raw: Vec<u8>,
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub vmpl: u32,
    pub signature_algo: u32,
    pub current_tcb: TcbVersion,
    pub platform_info: u64,
    pub key_info: u32,
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub id_key_digest: [u8; 48],
    pub author_key_digest: [u8; 48],
    pub report_id: [u8; 32],
    pub report_id_ma: [u8; 32],
    pub reported_tcb: TcbVersion,
    /// CPUID family/model/stepping (version 3 and later).
    pub cpuid: Option<(u8, u8, u8)>,
    pub chip_id: [u8; 64],
    pub committed_tcb: TcbVersion,
    pub current_version: (u8, u8, u8),
    pub committed_version: (u8, u8, u8),
    pub launch_tcb: TcbVersion,
    /// Launch and current mitigation vectors (version 5 and later).
    pub mit_vectors: Option<(u64, u64)>,
    /// r and s, little-endian, 72 bytes each as in the report.
    pub signature_r: [u8; 72],
    pub signature_s: [u8; 72],
}

/// Report versions whose layout this parser knows (version 4 is laid out as 3).
pub const SUPPORTED_VERSIONS: [u32; 4] = [2, 3, 4, 5];

pub const POLICY_DEBUG_BIT: u64 = 1 << 19;

impl AttestationReport {
    /// Parse raw bytes (exactly 1184) or hex text of them. Input made only
    /// of hex digits and whitespace is hex text (a real report has zero
    /// bytes in its reserved fields, so it is never mistaken for text).
    pub fn parse_any(input: &[u8]) -> Result<Self, Error> {
        if !input.is_empty()
            && input
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace())
        {
            return Self::parse(&decode_hex_text(input, "SEV-SNP report")?);
        }
        Self::parse(input)
    }

    /// Parse exactly [`REPORT_LEN`] raw bytes.
    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        if b.len() != REPORT_LEN {
            return Err(Error::Parse(format!(
                "SEV-SNP report is {} bytes, expected {REPORT_LEN}",
                b.len()
            )));
        }
        let mut r = Reader::new(b, "SEV-SNP report");
        // Unknown versions still parse with the version 2 field layout (the
        // signed region is the same) and fail the `report-version` check.
        let version = r.u32()?;
        let guest_svn = r.u32()?;
        let policy = r.u64()?;
        let family_id = r.array()?;
        let image_id = r.array()?;
        let vmpl = r.u32()?;
        let signature_algo = r.u32()?;
        let current_tcb_raw = r.u64()?;
        let platform_info = r.u64()?;
        let key_info = r.u32()?;
        r.take(4)?;
        let report_data = r.array()?;
        let measurement = r.array()?;
        let host_data = r.array()?;
        let id_key_digest = r.array()?;
        let author_key_digest = r.array()?;
        let report_id = r.array()?;
        let report_id_ma = r.array()?;
        let reported_tcb_raw = r.u64()?;
        let cpuid_bytes: [u8; 3] = r.array()?;
        r.take(0x1A0 - 0x18B)?;
        let chip_id = r.array()?;
        let committed_tcb_raw = r.u64()?;
        let cur: [u8; 4] = r.array()?;
        let com: [u8; 4] = r.array()?;
        let launch_tcb_raw = r.u64()?;
        let launch_mit = r.u64()?;
        let current_mit = r.u64()?;
        debug_assert_eq!(r.position(), 0x208);
        r.take(SIGNED_LEN - 0x208)?;
        let signature_r = r.array()?;
        let signature_s = r.array()?;

        let known = SUPPORTED_VERSIONS.contains(&version);
        let cpuid =
            (known && version >= 3).then_some((cpuid_bytes[0], cpuid_bytes[1], cpuid_bytes[2]));
        // Turin (family 0x1A) reports use the TCB layout with an FMC field.
        let turin = matches!(cpuid, Some((0x1A, _, _)));
        let tcb = |raw| TcbVersion::decode(raw, turin);
        Ok(AttestationReport {
            raw: b.to_vec(),
            version,
            guest_svn,
            policy,
            family_id,
            image_id,
            vmpl,
            signature_algo,
            current_tcb: tcb(current_tcb_raw),
            platform_info,
            key_info,
            report_data,
            measurement,
            host_data,
            id_key_digest,
            author_key_digest,
            report_id,
            report_id_ma,
            reported_tcb: tcb(reported_tcb_raw),
            cpuid,
            chip_id,
            committed_tcb: tcb(committed_tcb_raw),
            current_version: (cur[2], cur[1], cur[0]),
            committed_version: (com[2], com[1], com[0]),
            launch_tcb: tcb(launch_tcb_raw),
            mit_vectors: (known && version >= 5).then_some((launch_mit, current_mit)),
            signature_r,
            signature_s,
        })
    }

    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    pub fn debug_allowed(&self) -> bool {
        self.policy & POLICY_DEBUG_BIT != 0
    }

    pub fn signing_key(&self) -> SigningKey {
        match (self.key_info >> 2) & 0x7 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            n => SigningKey::Reserved(n as u8),
        }
    }

    /// The signature as fixed-width big-endian r || s for P-384, or an error
    /// when r or s do not fit 48 bytes (the upper 24 bytes must be zero).
    pub fn signature_p384_fixed(&self) -> Result<[u8; 96], String> {
        let mut out = [0u8; 96];
        for (i, half) in [&self.signature_r, &self.signature_s]
            .into_iter()
            .enumerate()
        {
            if half[48..].iter().any(|&b| b != 0) {
                return Err("signature component wider than 384 bits".into());
            }
            let mut be = half[..48].to_vec();
            be.reverse();
            out[i * 48..(i + 1) * 48].copy_from_slice(&be);
        }
        Ok(out)
    }
}
