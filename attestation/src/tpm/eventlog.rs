//! The TCG PC Client "crypto agile" event log (TCG PC Client Platform
//! Firmware Profile, §10): a legacy TCG_PCR_EVENT carrying the
//! "Spec ID Event03" header, then TCG_PCR_EVENT2 entries. Little-endian.
//! Parsed with the bounds-checked reader and replayed on the SHA-256 bank.

use super::structures::{alg_name, TPM_ALG_SHA256};
use crate::bytes::Reader;
use crate::Error;
use ring::digest;

pub const EV_PREBOOT_CERT: u32 = 0x0;
pub const EV_POST_CODE: u32 = 0x1;
pub const EV_NO_ACTION: u32 = 0x3;
pub const EV_SEPARATOR: u32 = 0x4;
pub const EV_ACTION: u32 = 0x5;
pub const EV_EVENT_TAG: u32 = 0x6;
pub const EV_S_CRTM_CONTENTS: u32 = 0x7;
pub const EV_S_CRTM_VERSION: u32 = 0x8;
pub const EV_CPU_MICROCODE: u32 = 0x9;
pub const EV_PLATFORM_CONFIG_FLAGS: u32 = 0xA;
pub const EV_TABLE_OF_DEVICES: u32 = 0xB;
pub const EV_COMPACT_HASH: u32 = 0xC;
pub const EV_IPL: u32 = 0xD;
pub const EV_IPL_PARTITION_DATA: u32 = 0xE;
pub const EV_NONHOST_CODE: u32 = 0xF;
pub const EV_NONHOST_CONFIG: u32 = 0x10;
pub const EV_NONHOST_INFO: u32 = 0x11;
pub const EV_OMIT_BOOT_DEVICE_EVENTS: u32 = 0x12;
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
pub const EV_EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
pub const EV_EFI_BOOT_SERVICES_DRIVER: u32 = 0x8000_0004;
pub const EV_EFI_RUNTIME_SERVICES_DRIVER: u32 = 0x8000_0005;
pub const EV_EFI_GPT_EVENT: u32 = 0x8000_0006;
pub const EV_EFI_ACTION: u32 = 0x8000_0007;
pub const EV_EFI_PLATFORM_FIRMWARE_BLOB: u32 = 0x8000_0008;
pub const EV_EFI_HANDOFF_TABLES: u32 = 0x8000_0009;
pub const EV_EFI_PLATFORM_FIRMWARE_BLOB2: u32 = 0x8000_000A;
pub const EV_EFI_HANDOFF_TABLES2: u32 = 0x8000_000B;
pub const EV_EFI_VARIABLE_BOOT2: u32 = 0x8000_000C;
pub const EV_EFI_HCRTM_EVENT: u32 = 0x8000_0010;
pub const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00E0;

/// The signature that opens the Spec ID event of a crypto-agile log.
pub const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
/// The signature of the EV_NO_ACTION event that sets PCR 0's starting locality.
pub const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";

/// Number of PCRs in a PC Client TPM.
pub const PCR_COUNT: u32 = 24;

/// Bounds that keep a hostile log from allocating without limit.
const MAX_ALGORITHMS: u32 = 16;
const MAX_EVENT_SIZE: u32 = 16 << 20;
const MAX_EVENTS: usize = 100_000;

/// Name of an event type.
pub fn event_type_name(t: u32) -> String {
    let s = match t {
        EV_PREBOOT_CERT => "EV_PREBOOT_CERT",
        EV_POST_CODE => "EV_POST_CODE",
        0x2 => "EV_UNUSED",
        EV_NO_ACTION => "EV_NO_ACTION",
        EV_SEPARATOR => "EV_SEPARATOR",
        EV_ACTION => "EV_ACTION",
        EV_EVENT_TAG => "EV_EVENT_TAG",
        EV_S_CRTM_CONTENTS => "EV_S_CRTM_CONTENTS",
        EV_S_CRTM_VERSION => "EV_S_CRTM_VERSION",
        EV_CPU_MICROCODE => "EV_CPU_MICROCODE",
        EV_PLATFORM_CONFIG_FLAGS => "EV_PLATFORM_CONFIG_FLAGS",
        EV_TABLE_OF_DEVICES => "EV_TABLE_OF_DEVICES",
        EV_COMPACT_HASH => "EV_COMPACT_HASH",
        EV_IPL => "EV_IPL",
        EV_IPL_PARTITION_DATA => "EV_IPL_PARTITION_DATA",
        EV_NONHOST_CODE => "EV_NONHOST_CODE",
        EV_NONHOST_CONFIG => "EV_NONHOST_CONFIG",
        EV_NONHOST_INFO => "EV_NONHOST_INFO",
        EV_OMIT_BOOT_DEVICE_EVENTS => "EV_OMIT_BOOT_DEVICE_EVENTS",
        EV_EFI_VARIABLE_DRIVER_CONFIG => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        EV_EFI_VARIABLE_BOOT => "EV_EFI_VARIABLE_BOOT",
        EV_EFI_BOOT_SERVICES_APPLICATION => "EV_EFI_BOOT_SERVICES_APPLICATION",
        EV_EFI_BOOT_SERVICES_DRIVER => "EV_EFI_BOOT_SERVICES_DRIVER",
        EV_EFI_RUNTIME_SERVICES_DRIVER => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        EV_EFI_GPT_EVENT => "EV_EFI_GPT_EVENT",
        EV_EFI_ACTION => "EV_EFI_ACTION",
        EV_EFI_PLATFORM_FIRMWARE_BLOB => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        EV_EFI_HANDOFF_TABLES => "EV_EFI_HANDOFF_TABLES",
        EV_EFI_PLATFORM_FIRMWARE_BLOB2 => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        EV_EFI_HANDOFF_TABLES2 => "EV_EFI_HANDOFF_TABLES2",
        EV_EFI_VARIABLE_BOOT2 => "EV_EFI_VARIABLE_BOOT2",
        EV_EFI_HCRTM_EVENT => "EV_EFI_HCRTM_EVENT",
        EV_EFI_VARIABLE_AUTHORITY => "EV_EFI_VARIABLE_AUTHORITY",
        other => return format!("event type {other:#010x}"),
    };
    s.to_string()
}

/// Event types whose digest is, by the Platform Firmware Profile, the hash of
/// the event data itself, so a change to the data is detectable even when
/// the digest is left alone. For all other types the data is only a
/// description of what was measured and only the replay covers the digest.
pub fn digest_covers_data(t: u32) -> bool {
    matches!(
        t,
        EV_SEPARATOR | EV_ACTION | EV_EFI_ACTION | EV_EFI_VARIABLE_DRIVER_CONFIG
    )
}

/// One algorithm of the Spec ID header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlgorithmSize {
    pub alg: u16,
    pub digest_size: u16,
}

/// One TCG_PCR_EVENT2 (or the header event, index 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log (0 is the Spec ID header).
    pub index: usize,
    pub pcr: u32,
    pub event_type: u32,
    /// (algorithm, digest) pairs as logged.
    pub digests: Vec<(u16, Vec<u8>)>,
    pub data: Vec<u8>,
}

impl Event {
    /// The SHA-256 digest of this event, if logged.
    pub fn sha256(&self) -> Option<&[u8]> {
        self.digests
            .iter()
            .find(|(a, _)| *a == TPM_ALG_SHA256)
            .map(|(_, d)| d.as_slice())
    }

    /// A short description: the event type and its data when printable.
    pub fn describe(&self) -> String {
        let mut data = self.data.as_slice();
        // UTF-16LE or NUL-terminated strings are common; trim trailing NULs.
        while let Some((&0, rest)) = data.split_last() {
            data = rest;
        }
        let printable = !data.is_empty() && data.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
        let what = if printable {
            let s = String::from_utf8_lossy(data);
            if s.chars().count() > 64 {
                format!("\"{}…\"", s.chars().take(64).collect::<String>())
            } else {
                format!("\"{s}\"")
            }
        } else {
            format!("{} bytes", self.data.len())
        };
        format!("{}: {what}", event_type_name(self.event_type))
    }
}

/// A parsed crypto-agile event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    pub spec_version: (u8, u8, u8),
    pub algorithms: Vec<AlgorithmSize>,
    /// TCG_PCR_EVENT2 entries in log order (the header is not included).
    pub events: Vec<Event>,
}

fn le_u32(r: &mut Reader<'_>) -> Result<u32, Error> {
    r.u32()
}

impl EventLog {
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "TPM event log");
        // Legacy TCG_PCR_EVENT header: pcr, type, SHA-1 digest, size, data.
        let pcr = le_u32(&mut r)?;
        let event_type = le_u32(&mut r)?;
        let _sha1 = r.take(20)?;
        let size = le_u32(&mut r)?;
        if pcr != 0 || event_type != EV_NO_ACTION {
            return Err(Error::Parse(format!(
                "event log: first event is PCR {pcr} {} (expected the PCR 0 EV_NO_ACTION Spec ID event; SHA-1-only logs are not supported)",
                event_type_name(event_type)
            )));
        }
        if size > MAX_EVENT_SIZE {
            return Err(Error::parse("event log: Spec ID event too large"));
        }
        let spec = r.take(size as usize)?;
        let (spec_version, algorithms) = parse_spec_id(spec)?;
        if !algorithms.iter().any(|a| a.alg == TPM_ALG_SHA256) {
            return Err(Error::NotImplemented(
                "event log without a SHA-256 bank".into(),
            ));
        }
        let mut events = Vec::new();
        while r.remaining() > 0 {
            if events.len() >= MAX_EVENTS {
                return Err(Error::Parse(format!(
                    "event log: more than {MAX_EVENTS} events"
                )));
            }
            let index = events.len() + 1;
            let at = r.position();
            let pcr = le_u32(&mut r)?;
            if pcr >= PCR_COUNT {
                return Err(Error::Parse(format!(
                    "event log: event {index} (offset {at}) names PCR {pcr}"
                )));
            }
            let event_type = le_u32(&mut r)?;
            let count = le_u32(&mut r)?;
            if count > MAX_ALGORITHMS {
                return Err(Error::Parse(format!(
                    "event log: event {index} has {count} digests"
                )));
            }
            let mut digests = Vec::new();
            for _ in 0..count {
                let alg = r.u16()?;
                let a = algorithms
                    .iter()
                    .find(|a| a.alg == alg)
                    .ok_or_else(|| {
                        Error::Parse(format!(
                            "event log: event {index} has a digest of {} not declared in the Spec ID event",
                            alg_name(alg)
                        ))
                    })?;
                digests.push((alg, r.take(a.digest_size as usize)?.to_vec()));
            }
            let size = le_u32(&mut r)?;
            if size > MAX_EVENT_SIZE {
                return Err(Error::Parse(format!(
                    "event log: event {index} data of {size} bytes"
                )));
            }
            let data = r.take(size as usize)?.to_vec();
            let event = Event {
                index,
                pcr,
                event_type,
                digests,
                data,
            };
            if event_type != EV_NO_ACTION && event.sha256().is_none() {
                return Err(Error::Parse(format!(
                    "event log: event {index} has no SHA-256 digest"
                )));
            }
            events.push(event);
        }
        Ok(EventLog {
            spec_version,
            algorithms,
            events,
        })
    }

    /// Replay the SHA-256 bank: every PCR starts at zero (PCRs 17-22 at
    /// all-FF, their value after TPM2_Startup(CLEAR) without a dynamic
    /// launch; PCR 0 at the locality of a StartupLocality event), and each
    /// non-EV_NO_ACTION event extends its PCR with its SHA-256 digest.
    pub fn replay_sha256(&self) -> Vec<[u8; 32]> {
        let mut pcrs: Vec<[u8; 32]> = (0..PCR_COUNT)
            .map(|i| {
                if (17..=22).contains(&i) {
                    [0xff; 32]
                } else {
                    [0; 32]
                }
            })
            .collect();
        for e in &self.events {
            if e.event_type == EV_NO_ACTION {
                if e.pcr == 0
                    && e.data.len() == 17
                    && e.data.starts_with(STARTUP_LOCALITY_SIGNATURE)
                {
                    let mut start = [0u8; 32];
                    start[31] = e.data[16];
                    pcrs[0] = start;
                }
                continue;
            }
            if let (Some(d), Some(p)) = (e.sha256(), pcrs.get_mut(e.pcr as usize)) {
                *p = extend(p, d);
            }
        }
        pcrs
    }
}

/// PCR extend on the SHA-256 bank: SHA-256(old ‖ digest).
pub fn extend(old: &[u8; 32], digest_value: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(old);
    ctx.update(digest_value);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// (major, minor, errata) of the TCG PC Client spec named in the header.
type SpecVersion = (u8, u8, u8);

fn parse_spec_id(data: &[u8]) -> Result<(SpecVersion, Vec<AlgorithmSize>), Error> {
    let mut r = Reader::new(data, "Spec ID event");
    if r.take(16)? != SPEC_ID_SIGNATURE {
        return Err(Error::parse(
            "event log: the first event is not a \"Spec ID Event03\" (only crypto-agile logs are supported)",
        ));
    }
    let _platform_class = r.u32()?;
    let minor = r.u8()?;
    let major = r.u8()?;
    let errata = r.u8()?;
    let _uintn_size = r.u8()?;
    let n = r.u32()?;
    if n == 0 || n > MAX_ALGORITHMS {
        return Err(Error::Parse(format!(
            "event log: Spec ID event declares {n} algorithms"
        )));
    }
    let mut algs = Vec::new();
    for _ in 0..n {
        let alg = r.u16()?;
        let digest_size = r.u16()?;
        if alg == TPM_ALG_SHA256 && digest_size != 32 {
            return Err(Error::Parse(format!(
                "event log: SHA-256 declared with {digest_size}-byte digests"
            )));
        }
        algs.push(AlgorithmSize { alg, digest_size });
    }
    let vendor = r.u8()? as usize;
    r.take(vendor)?;
    if r.remaining() != 0 {
        return Err(Error::parse(
            "event log: trailing bytes in the Spec ID event",
        ));
    }
    Ok(((major, minor, errata), algs))
}
