//! Runs inside the lab machine (L1) for `bench/vmm-boot --lab`: `lab-boot-timer NAME
//! STATUS MARKER GUEST_MIB -- COMMAND...` spawns COMMAND (a VMM whose guest serial
//! console is its standard output) and prints one line
//! `BENCH NAME first_byte_ms=A marker_ms=B exit_ms=C status=S rss_kib=R
//! own_rss_kib=O guest_rss_kib=G own_anon_kib=P` with the times from spawn to the first byte on
//! standard output, to the first line holding MARKER, and to process exit, and the
//! VMM's resident memory when MARKER appeared: R is its whole resident set (the sum of
//! `Rss` over `/proc/PID/smaps`, i.e. VmRSS), G the resident part of its guest-RAM
//! mapping (the mapping of GUEST_MIB MiB; see [`guest_rss_kib`]) and O = R - G, the
//! VMM's own footprint beyond guest memory, and P its anonymous (private) part: O less
//! the pages of its binary, which every process running it shares. Exit 0 when the command exited with
//! STATUS and printed MARKER, else 1 (with what it printed on stderr); 2 on bad
//! arguments. It measures; it judges no time and no size.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

/// One mapping of `/proc/PID/smaps`: its size, resident size and anonymous (private,
/// not file-backed) resident size, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Mapping {
    size_kib: u64,
    rss_kib: u64,
    anon_kib: u64,
}

/// The mappings of a `/proc/PID/smaps` text (a header line, then its `Key: value`
/// fields, of which `Size:`, `Rss:` and `Anonymous:` are kept).
fn mappings(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        let kib = words.next().and_then(|w| w.parse::<u64>().ok());
        match first {
            "Size:" => {
                if let (Some(m), Some(v)) = (out.last_mut(), kib) {
                    m.size_kib = v;
                }
            }
            "Rss:" => {
                if let (Some(m), Some(v)) = (out.last_mut(), kib) {
                    m.rss_kib = v;
                }
            }
            "Anonymous:" => {
                if let (Some(m), Some(v)) = (out.last_mut(), kib) {
                    m.anon_kib = v;
                }
            }
            f if !f.ends_with(':') => out.push(Mapping::default()),
            _ => {}
        }
    }
    out
}

/// The guest-RAM mapping among `maps` (its resident and anonymous KiB): the mappings
/// exactly `guest_kib` large (each VMM maps guest RAM below 3 GiB as one region); if
/// there is none (the kernel merged it with a neighbouring mapping of the same kind),
/// the largest mapping at least that large. `None` when no mapping is that large.
fn guest_mapping(maps: &[Mapping], guest_kib: u64) -> Option<Mapping> {
    let exact: Vec<&Mapping> = maps.iter().filter(|m| m.size_kib == guest_kib).collect();
    if !exact.is_empty() {
        return Some(Mapping {
            size_kib: guest_kib,
            rss_kib: exact.iter().map(|m| m.rss_kib).sum(),
            anon_kib: exact.iter().map(|m| m.anon_kib).sum(),
        });
    }
    maps.iter()
        .filter(|m| m.size_kib >= guest_kib)
        .max_by_key(|m| m.size_kib)
        .copied()
}

/// What process `pid` holds resident now, in KiB.
struct Resident {
    /// The whole resident set (VmRSS).
    rss: u64,
    /// The resident part of the guest-RAM mapping.
    guest: u64,
    /// The anonymous resident memory beyond guest RAM: what one more VMM process
    /// costs (its binary's pages are shared by every process that runs it).
    own_anon: u64,
}

/// What process `pid` holds resident now, or why not.
fn resident(pid: u32, guest_kib: u64) -> Result<Resident, String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("reading /proc/{pid}/smaps: {e}"))?;
    let maps = mappings(&smaps);
    let guest = guest_mapping(&maps, guest_kib)
        .ok_or_else(|| format!("no mapping of {guest_kib} KiB or more in /proc/{pid}/smaps"))?;
    Ok(Resident {
        rss: maps.iter().map(|m| m.rss_kib).sum(),
        guest: guest.rss_kib,
        own_anon: maps
            .iter()
            .map(|m| m.anon_kib)
            .sum::<u64>()
            .saturating_sub(guest.anon_kib),
    })
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(name), Some(want), Some(marker), Some(guest_mib), Some("--")) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<i32>().ok()),
        args.get(2),
        args.get(3).and_then(|s| s.parse::<u64>().ok()),
        args.get(4).map(String::as_str),
    ) else {
        eprintln!("usage: lab-boot-timer NAME STATUS MARKER GUEST_MIB -- COMMAND...");
        return std::process::ExitCode::from(2);
    };
    let Some((program, rest)) = args[5..].split_first() else {
        eprintln!("lab-boot-timer: no command");
        return std::process::ExitCode::from(2);
    };
    let start = Instant::now();
    let mut child = match Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // The VMM's own log goes to the L1 console (bulwark-vmm's `boot phases` line
        // with BULWARK_LOG=info); it does not delay the guest's serial output.
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lab-boot-timer: spawning {program}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let Some(mut out) = child.stdout.take() else {
        eprintln!("lab-boot-timer: no stdout pipe");
        return std::process::ExitCode::from(1);
    };
    let (mut first, mut seen) = (None, None);
    let mut memory = None;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                first.get_or_insert_with(|| start.elapsed());
                text.extend_from_slice(&buf[..n]);
                if seen.is_none() && String::from_utf8_lossy(&text).contains(marker.as_str()) {
                    seen = Some(start.elapsed());
                    // The guest is at its init: read the VMM's memory now (it still runs).
                    memory = Some(resident(child.id(), guest_mib * 1024));
                }
                // Keep only a bounded tail once the marker is found.
                if seen.is_some() && text.len() > 1 << 20 {
                    text.drain(..text.len() - (64 << 10));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("lab-boot-timer: reading {program}'s output: {e}");
                break;
            }
        }
    }
    let status = match child.wait() {
        Ok(s) => s.code().unwrap_or(-1),
        Err(e) => {
            eprintln!("lab-boot-timer: waiting for {program}: {e}");
            -1
        }
    };
    let exit = start.elapsed();
    let ms = |d: Option<std::time::Duration>| {
        d.map_or("none".to_string(), |d| {
            format!("{:.1}", d.as_secs_f64() * 1e3)
        })
    };
    let (rss, own, guest, own_anon) = match &memory {
        Some(Ok(r)) => (
            r.rss.to_string(),
            r.rss.saturating_sub(r.guest).to_string(),
            r.guest.to_string(),
            r.own_anon.to_string(),
        ),
        Some(Err(e)) => {
            eprintln!("lab-boot-timer: {name}: {e}");
            ("none".into(), "none".into(), "none".into(), "none".into())
        }
        None => ("none".into(), "none".into(), "none".into(), "none".into()),
    };
    println!(
        "BENCH {name} first_byte_ms={} marker_ms={} exit_ms={} status={status} rss_kib={rss} own_rss_kib={own} guest_rss_kib={guest} own_anon_kib={own_anon}",
        ms(first),
        ms(seen),
        ms(Some(exit))
    );
    if status == want && seen.is_some() {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!(
            "lab-boot-timer: {name} exited {status} (wanted {want}), marker {}; output: {}",
            if seen.is_some() { "seen" } else { "missing" },
            String::from_utf8_lossy(&text)
        );
        std::process::ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 00:00 0 /bin/vmm
Size:               1024 kB
KernelPageSize:        4 kB
Rss:                 900 kB
Pss:                 900 kB
Anonymous:             0 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:              120000 kB
Anonymous:        119000 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Size:                132 kB
Rss:                  16 kB
Anonymous:            12 kB
";

    #[test]
    fn the_guest_mapping_is_the_one_of_the_guest_size() {
        let maps = mappings(SMAPS);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps.iter().map(|m| m.rss_kib).sum::<u64>(), 120_916);
        let guest = guest_mapping(&maps, 256 * 1024).unwrap();
        assert_eq!((guest.rss_kib, guest.anon_kib), (120_000, 119_000));
        // Anonymous beyond guest RAM: the stack's 12 KiB (the binary's pages are not).
        assert_eq!(
            maps.iter().map(|m| m.anon_kib).sum::<u64>() - guest.anon_kib,
            12
        );
    }

    #[test]
    fn a_merged_guest_mapping_is_the_largest_one_above_the_size() {
        let maps = [
            Mapping {
                size_kib: 262_144 + 2048,
                rss_kib: 5000,
                anon_kib: 4000,
            },
            Mapping {
                size_kib: 8192,
                rss_kib: 8000,
                anon_kib: 0,
            },
        ];
        assert_eq!(guest_mapping(&maps, 256 * 1024), Some(maps[0]));
        assert_eq!(guest_mapping(&maps[1..], 256 * 1024), None);
    }
}
