//! The measured-boot facts of this boot on the console: the TPM's sha256 PCRs and
//! the firmware's TCG event log, for a verifier that only sees the console (the lab).
//!
//! Lines: `bulwark-node: pcr sha256 N HEX` for each PCR, then
//! `bulwark-node: event-log begin BYTES`, the log in base64 (76 characters a line),
//! `bulwark-node: event-log end`.

use std::path::Path;

use base64::Engine as _;

/// The kernel's PCR files of the sha256 bank.
pub const PCR_DIR: &str = "/sys/class/tpm/tpm0/pcr-sha256";
/// The firmware's event log (securityfs).
pub const EVENT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";
/// Begin marker of the event log (followed by its size).
pub const EVENT_LOG_BEGIN: &str = "bulwark-node: event-log begin ";
/// End marker of the event log.
pub const EVENT_LOG_END: &str = "bulwark-node: event-log end";
/// Prefix of a PCR line (followed by `INDEX HEX`).
pub const PCR_PREFIX: &str = "bulwark-node: pcr sha256 ";

/// The report's lines, from `pcr_dir` and `event_log`; a missing part is one line
/// saying so.
pub fn report(pcr_dir: &Path, event_log: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut pcrs: Vec<(u32, String)> = match std::fs::read_dir(pcr_dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| {
                let index = e.file_name().to_str()?.parse::<u32>().ok()?;
                let value = std::fs::read_to_string(e.path()).ok()?;
                Some((index, value.trim().to_ascii_lowercase()))
            })
            .collect(),
        Err(e) => {
            lines.push(format!(
                "bulwark-node: no PCRs ({}: {e})",
                pcr_dir.display()
            ));
            Vec::new()
        }
    };
    pcrs.sort();
    for (index, value) in pcrs {
        lines.push(format!("{PCR_PREFIX}{index} {value}"));
    }
    match std::fs::read(event_log) {
        Ok(log) => {
            lines.push(format!("{EVENT_LOG_BEGIN}{}", log.len()));
            let text = base64::engine::general_purpose::STANDARD.encode(&log);
            for chunk in text.as_bytes().chunks(76) {
                lines.push(String::from_utf8_lossy(chunk).into_owned());
            }
            lines.push(EVENT_LOG_END.to_owned());
        }
        Err(e) => lines.push(format!(
            "bulwark-node: no event log ({}: {e})",
            event_log.display()
        )),
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcrs_in_order_and_the_log_in_base64() {
        let dir = std::env::temp_dir().join(format!("node-init-pcrs-{}", std::process::id()));
        let pcrs = dir.join("pcr-sha256");
        std::fs::create_dir_all(&pcrs).unwrap();
        std::fs::write(pcrs.join("10"), "AB01\n").unwrap();
        std::fs::write(pcrs.join("2"), "CD02\n").unwrap();
        std::fs::write(pcrs.join("not-a-pcr"), "x").unwrap();
        let log: Vec<u8> = (0..=255u8).collect();
        std::fs::write(dir.join("log"), &log).unwrap();
        let lines = report(&pcrs, &dir.join("log"));
        assert_eq!(lines[0], "bulwark-node: pcr sha256 2 cd02");
        assert_eq!(lines[1], "bulwark-node: pcr sha256 10 ab01");
        assert_eq!(lines[2], "bulwark-node: event-log begin 256");
        assert_eq!(lines.last().unwrap(), EVENT_LOG_END);
        let body: String = lines[3..lines.len() - 1].concat();
        assert!(lines[3..lines.len() - 1].iter().all(|l| l.len() <= 76));
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap(),
            log
        );
        let missing = report(&dir.join("none"), &dir.join("none"));
        assert!(
            missing[0].contains("no PCRs") && missing[1].contains("no event log"),
            "{missing:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
