//! Runs inside the lab machine (L1): reads and writes a PCI memory BAR through
//! sysfs (`/sys/bus/pci/devices/ADDR/resourceN`, mapped), independently of VFIO
//! and of bulwarkd, to show what a scrub left in device memory.
//!
//! `lab-pci-bar fill ADDR BAR TEXT` fills the BAR with TEXT repeated;
//! `lab-pci-bar count ADDR BAR TEXT` prints how many bytes are non-zero and how
//! many times TEXT occurs at its repeat positions. Memory decoding is turned on
//! in the command register first (a reset may leave it off).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;

use vm_memory::{FileOffset, MmapRegion, VolatileMemory};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lab-pci-bar: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<String, String> {
    let [verb, addr, bar, text] = args else {
        return Err(format!(
            "usage: lab-pci-bar fill|count PCI_ADDRESS BAR TEXT (got {args:?})"
        ));
    };
    let dir = format!("/sys/bus/pci/devices/{addr}");
    let text = text.as_bytes();
    if text.is_empty() {
        return Err("TEXT is empty".into());
    }
    // Memory Space on (bit 1 of the command register at config offset 4).
    let config = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("{dir}/config"))
        .map_err(|e| format!("{dir}/config: {e}"))?;
    let mut cmd = [0u8; 2];
    config
        .read_exact_at(&mut cmd, 4)
        .map_err(|e| format!("reading the command register: {e}"))?;
    let on = u16::from_le_bytes(cmd) | 0x2;
    config
        .write_all_at(&on.to_le_bytes(), 4)
        .map_err(|e| format!("writing the command register: {e}"))?;
    let path = format!("{dir}/resource{bar}");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    let size = file.metadata().map_err(|e| format!("{path}: {e}"))?.len() as usize;
    let region = MmapRegion::<()>::from_file(FileOffset::new(file, 0), size)
        .map_err(|e| format!("mapping {path}: {e}"))?;
    let mem = region
        .get_slice(0, size)
        .map_err(|e| format!("{path}: {e}"))?;
    match verb.as_str() {
        "fill" => {
            let mut at = 0;
            while at < size {
                let n = text.len().min(size - at);
                mem.offset(at)
                    .and_then(|s| s.subslice(0, n))
                    .map_err(|e| e.to_string())?
                    .copy_from(&text[..n]);
                at += n;
            }
            Ok(format!(
                "{path}: {size} bytes filled with {:?}",
                String::from_utf8_lossy(text)
            ))
        }
        "count" => {
            let mut bytes = vec![0u8; size];
            mem.copy_to(&mut bytes[..]);
            let nonzero = bytes.iter().filter(|b| **b != 0).count();
            let copies = bytes
                .chunks_exact(text.len())
                .filter(|c| *c == text)
                .count();
            Ok(format!(
                "{path}: {size} bytes, {nonzero} non-zero, {copies} copies of {:?}",
                String::from_utf8_lossy(text)
            ))
        }
        other => Err(format!("unknown verb {other:?} (fill or count)")),
    }
}
