//! Runs inside the Linux L2 guest of the vmm-linux-virtio scenario: the guest side of
//! `lab-vsock-peer`'s protocol over the kernel's own virtio-vsock driver.
//! `lab-l2-vsock CHUNKS` listens on vsock port 1234 (printing `L2-VSOCK-LISTENING`),
//! echoes the first connection until its end of file, then connects to the host (CID
//! 2) on port 5678 and sends CHUNKS chunks of 64 KiB (an 8-byte little-endian sequence
//! number, then bytes `(j * 31 + 7) & 0xff`). Prints one `L2-VSOCK-ECHO` line.

use std::io::{Read, Write};
use std::time::Instant;

use bulwark_integration_tests::probe::vsock;

fn run(chunks: u64) -> Result<String, String> {
    let listener = vsock::listen(1234).map_err(|e| format!("listen on port 1234: {e}"))?;
    println!("L2-VSOCK-LISTENING port=1234");
    let mut conn = vsock::accept(&listener).map_err(|e| format!("accept: {e}"))?;
    let t0 = Instant::now();
    let mut buf = vec![0u8; 65536];
    let mut echoed = 0u64;
    loop {
        let n = conn.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        conn.write_all(&buf[..n])
            .map_err(|e| format!("echo write: {e}"))?;
        echoed += n as u64;
    }
    let echo_time = t0.elapsed();
    drop(conn);
    let mut host = vsock::connect(2, 5678).map_err(|e| format!("connect to 2:5678: {e}"))?;
    for seq in 0..chunks {
        buf[..8].copy_from_slice(&seq.to_le_bytes());
        for (j, b) in buf.iter_mut().enumerate().skip(8) {
            *b = ((j * 31 + 7) & 0xff) as u8;
        }
        host.write_all(&buf)
            .map_err(|e| format!("send chunk {seq}: {e}"))?;
    }
    vsock::shutdown_write(&host).map_err(|e| format!("shutdown: {e}"))?;
    // Wait for the host to close its side, so no data is cut off by a reset.
    let _ = host.read(&mut buf[..1]);
    Ok(format!(
        "echoed {echoed} bytes in {:.2} s, sent {} bytes to 2:5678",
        echo_time.as_secs_f64(),
        chunks * 65536
    ))
}

fn main() -> std::process::ExitCode {
    let chunks = std::env::args()
        .nth(1)
        .and_then(|a| a.parse::<u64>().ok())
        .unwrap_or(4);
    match run(chunks) {
        Ok(summary) => {
            println!("L2-VSOCK-ECHO ok {summary}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("L2-VSOCK-ECHO FAILED {e}");
            std::process::ExitCode::from(1)
        }
    }
}
