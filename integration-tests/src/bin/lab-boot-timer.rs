//! Runs inside the lab machine (L1) for `bench/vmm-boot --lab`: `lab-boot-timer NAME
//! STATUS MARKER -- COMMAND...` spawns COMMAND (a VMM whose guest serial console is its
//! standard output) and prints one line
//! `BENCH NAME first_byte_ms=A marker_ms=B exit_ms=C status=S` with the times from
//! spawn to the first byte on standard output, to the first line holding MARKER, and
//! to process exit. Exit 0 when the command exited with STATUS and printed MARKER,
//! else 1 (with what it printed on stderr); 2 on bad arguments. It measures; it judges
//! no time.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(name), Some(want), Some(marker), Some("--")) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<i32>().ok()),
        args.get(2),
        args.get(3).map(String::as_str),
    ) else {
        eprintln!("usage: lab-boot-timer NAME STATUS MARKER -- COMMAND...");
        return std::process::ExitCode::from(2);
    };
    let Some((program, rest)) = args[4..].split_first() else {
        eprintln!("lab-boot-timer: no command");
        return std::process::ExitCode::from(2);
    };
    let start = Instant::now();
    let mut child = match Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
    println!(
        "BENCH {name} first_byte_ms={} marker_ms={} exit_ms={} status={status}",
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
