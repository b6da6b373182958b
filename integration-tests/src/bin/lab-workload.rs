//! The workload of the `vmm-guest-init` lab scenario. It runs inside L2 as
//! `bulwark-init`'s only child, from the signed, dm-verity-checked rootfs, as an
//! unprivileged user.
//!
//! - `lab-workload serve TCP_PORT VSOCK_PORT CONNECTIONS EXIT_CODE`: writes the known
//!   stdout (`guest_workload::expected_stdout`) and on stderr a first line and an
//!   identity line (`WORKLOAD-ID uid= gid= caps= nnp= root= tmp= dev=`), then echoes
//!   every connection on 127.0.0.1:TCP_PORT (reached from the host through
//!   bulwark-init's vsock bridges, plain and attested TLS) and on vsock VSOCK_PORT
//!   (the raw rate), reports each TCP connection's byte count on stderr, and exits
//!   with EXIT_CODE once CONNECTIONS connections have ended.
//! - `lab-workload die`: dies by SIGABRT (`abort`).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use bulwark_integration_tests::guest_workload::{expected_stdout, STDERR_FIRST_LINE};

/// Echoes until the peer closes; returns the bytes echoed.
fn echo(mut r: impl Read, mut w: impl Write) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return total,
            Ok(n) => {
                if w.write_all(&buf[..n]).is_err() {
                    return total;
                }
                total += n as u64;
            }
        }
    }
}

fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| "?".into())
}

fn identity() -> String {
    let root = match std::fs::write("/bulwark-write-test", b"x") {
        Ok(()) => "writable".to_owned(),
        Err(e) => format!("ro({})", e.raw_os_error().unwrap_or(0)),
    };
    let tmp = match std::fs::write("/tmp/bulwark-write-test", b"x") {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("err({e})"),
    };
    let mut dev: Vec<String> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    dev.sort();
    format!(
        "WORKLOAD-ID uid={} gid={} caps={} bnd={} nnp={} root={root} tmp={tmp} dev={}\n",
        status_field("Uid:")
            .split_whitespace()
            .next()
            .unwrap_or("?"),
        status_field("Gid:")
            .split_whitespace()
            .next()
            .unwrap_or("?"),
        status_field("CapEff:"),
        status_field("CapBnd:"),
        status_field("NoNewPrivs:"),
        dev.join(",")
    )
}

fn serve(tcp_port: u16, vsock_port: u32, connections: usize, exit_code: i32) -> ! {
    std::io::stdout()
        .write_all(&expected_stdout())
        .unwrap_or(());
    std::io::stdout().flush().unwrap_or(());
    let mut err = std::io::stderr();
    let _ = err.write_all(STDERR_FIRST_LINE.as_bytes());
    let _ = err.write_all(identity().as_bytes());
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let tcp = TcpListener::bind(("127.0.0.1", tcp_port)).unwrap_or_else(|e| {
        eprintln!("lab-workload: bind 127.0.0.1:{tcp_port}: {e}");
        std::process::exit(90)
    });
    let vs = vsock::VsockListener::bind_with_cid_port(vsock::VMADDR_CID_ANY, vsock_port)
        .unwrap_or_else(|e| {
            eprintln!("lab-workload: bind vsock {vsock_port}: {e}");
            std::process::exit(91)
        });
    let tx = done_tx.clone();
    std::thread::spawn(move || {
        // Every TCP connection (they all come through bulwark-init's bridges) is
        // reported, so the host can tell which reached the workload at all.
        for (n, s) in tcp.incoming().flatten().enumerate() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let bytes = match s.try_clone() {
                    Ok(r) => echo(r, s),
                    Err(_) => 0,
                };
                eprintln!(
                    "lab-workload: tcp connection {}: {bytes} bytes echoed",
                    n + 1
                );
                let _ = tx.send(());
            });
        }
    });
    std::thread::spawn(move || {
        for s in vs.incoming().flatten() {
            let tx = done_tx.clone();
            std::thread::spawn(move || {
                if let Ok(r) = s.try_clone() {
                    echo(r, s);
                }
                let _ = tx.send(());
            });
        }
    });
    for _ in 0..connections {
        let _ = done_rx.recv();
    }
    eprintln!("lab-workload: {connections} connection(s) served, exiting with {exit_code}");
    std::process::exit(exit_code)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(1) {
        "serve" => {
            let (Ok(tcp), Ok(vs), Ok(n), Ok(code)) = (
                arg(2).parse(),
                arg(3).parse(),
                arg(4).parse(),
                arg(5).parse(),
            ) else {
                eprintln!("usage: lab-workload serve TCP_PORT VSOCK_PORT CONNECTIONS EXIT_CODE");
                std::process::exit(2)
            };
            serve(tcp, vs, n, code)
        }
        "die" => {
            println!("lab-workload: about to die by SIGABRT");
            let _ = std::io::stdout().flush();
            std::process::abort()
        }
        _ => {
            eprintln!("usage: lab-workload serve ... | die");
            std::process::exit(2)
        }
    }
}
