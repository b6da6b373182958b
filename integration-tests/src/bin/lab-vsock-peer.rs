//! Runs inside the lab machine (L1) next to a `bulwark-vmm` whose guest is the
//! `virtio-vsock` tiny guest: `lab-vsock-peer UDS BYTES` listens on `UDS_5678`, waits
//! for the VMM's vsock socket `UDS`, connects to guest port 1234 (`CONNECT 1234`),
//! sends BYTES pseudo-random bytes and checks the echo, closes, then accepts the
//! guest's connection on `UDS_5678` and checks its BYTES / 65536 sequence-numbered
//! chunks. Prints one line and exits 0 when everything arrived byte-exact, else 1.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

fn check(uds: &str, bytes: usize) -> Result<String, String> {
    let listener =
        UnixListener::bind(format!("{uds}_5678")).map_err(|e| format!("bind {uds}_5678: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        match UnixStream::connect(uds) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("connect {uds}: {e}")),
        }
    };
    let t0 = Instant::now();
    (&stream)
        .write_all(b"CONNECT 1234\n")
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if !line.starts_with("OK ") {
        return Err(format!("handshake answer {line:?}"));
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let to_send = data.clone();
    let sender = std::thread::spawn(move || writer.write_all(&to_send));
    let mut echoed = vec![0u8; bytes];
    reader
        .read_exact(&mut echoed)
        .map_err(|e| format!("reading the echo: {e}"))?;
    sender
        .join()
        .map_err(|_| "sender panicked".to_string())?
        .map_err(|e| format!("sending: {e}"))?;
    if echoed != data {
        return Err("the echo differs from what was sent".into());
    }
    let echo_time = t0.elapsed();
    drop(reader);
    drop(stream);
    let (mut guest, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let mut got = Vec::with_capacity(bytes);
    guest
        .read_to_end(&mut got)
        .map_err(|e| format!("reading the guest's stream: {e}"))?;
    if got.len() != bytes / 65536 * 65536 {
        return Err(format!("the guest sent {} bytes", got.len()));
    }
    for (i, chunk) in got.chunks(65536).enumerate() {
        let seq = u64::from_le_bytes(chunk[..8].try_into().unwrap_or_default());
        let body_ok = chunk
            .iter()
            .enumerate()
            .skip(8)
            .all(|(j, &b)| b == ((j * 31 + 7) & 0xff) as u8);
        if seq != i as u64 || !body_ok {
            return Err(format!("chunk {i} is corrupt"));
        }
    }
    Ok(format!(
        "echoed {bytes} bytes in {:.2} s, received {} bytes from the guest",
        echo_time.as_secs_f64(),
        got.len()
    ))
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(uds), Some(Ok(bytes))) = (args.get(1), args.get(2).map(|b| b.parse::<usize>()))
    else {
        eprintln!("usage: lab-vsock-peer UDS BYTES");
        return std::process::ExitCode::from(2);
    };
    match check(uds, bytes) {
        Ok(summary) => {
            println!("vsock ok: {summary}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("vsock FAILED: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
