//! Runs inside the lab machine (L1): the host side of `bulwark-init`'s host channel for
//! one VM of the `vmm-guest-init` scenario.
//!
//! `lab-guest-host UDS [--port N] [--hostile] [--bridge VSOCK_PORT] [--raw VSOCK_PORT]
//! [--bytes N]` listens on `UDS_N` (bulwark-vmm's vsock convention for a guest that
//! connects to host port N, default 1024) before the VMM starts, accepts the guest's
//! connection and prints one `HOST-*` line per fact for the scenario script:
//!
//! - `HOST-MSG KIND ...` for each message (workload output only counted);
//! - `HOST-STAGE NAME UPTIME_S`; `HOST-OUTPUT`, `HOST-WORKLOAD-ID`, `HOST-EXIT`,
//!   `HOST-REFUSAL`, `HOST-POWEROFF`;
//! - with `--hostile`, once the guest's hello arrived: garbage, a frame of another
//!   version, an oversized frame (1 MiB), a frame with garbage CBOR, a ping, a
//!   challenge (its answer verified with the announced key), a truncated frame, and
//!   a last ping: `HOST-HOSTILE ok ...` when every error was answered with the right
//!   code and both pings with pongs;
//! - with `--bridge P` (and `--raw Q`), once the guest's bridges are up: `--bytes`
//!   (default 64 MiB) echoed through vsock port P (bulwark-init's bridge to the
//!   workload's TCP server) and port Q (the workload's own vsock server), checked byte
//!   for byte: `HOST-BRIDGE ok bytes= secs= mb_per_s=` and `HOST-RAW ...`.
//!
//! - with `--shutdown`, once the workload started: a `Shutdown` request.
//! - with `--atls P --api-sock S --trust PUB --policy F --policy-other G`: answers the
//!   guest's evidence requests (`guest_atls`: software-key evidence from `GET /vm` on
//!   S), relays a local TCP port to the guest's attested vsock port P, and, once the
//!   bridges are up and before the echoes, runs `bulwark-verify connect` four times:
//!   evidence for another key, evidence for a stale nonce, policy G (another node
//!   signer), then the honest case under F: `HOST-ATLS NAME exit=N ...`.
//!
//! It exits when the guest closes the channel (after its `PowerOff`), or after 170 s.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bulwark_guest_protocol::{
    challenge_signed_bytes, decode_guest, encode_host, ErrorCode, EvidenceChunk, FrameReader,
    GuestMessage, HostMessage, RefusalReason, Stage, Stream, FRAME_HEADER_LEN, MAX_PAYLOAD,
    PROTOCOL_VERSION,
};
use bulwark_integration_tests::guest_atls::{
    connect_vsock, refusal_line, start_relay, verify_connect, EvidenceMaker, EvidenceMode,
};
use bulwark_integration_tests::guest_workload::{expected_stdout, pattern, STDERR_FIRST_LINE};
use p384::ecdsa::{signature::Verifier, DerSignature, VerifyingKey};

struct Args {
    uds: String,
    port: u32,
    hostile: bool,
    bridge: Option<u32>,
    raw: Option<u32>,
    bytes: usize,
    shutdown: bool,
    atls: Option<u32>,
    api_sock: String,
    trust: String,
    policy: String,
    policy_other: String,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let uds = it.next().ok_or("usage: lab-guest-host UDS [options]")?;
    let mut a = Args {
        uds,
        port: bulwark_guest_protocol::HOST_CHANNEL_PORT,
        hostile: false,
        bridge: None,
        raw: None,
        bytes: 64 << 20,
        shutdown: false,
        atls: None,
        api_sock: String::new(),
        trust: String::new(),
        policy: String::new(),
        policy_other: String::new(),
    };
    while let Some(flag) = it.next() {
        let mut num = || -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--port" => a.port = num()? as u32,
            "--hostile" => a.hostile = true,
            "--shutdown" => a.shutdown = true,
            "--bridge" => a.bridge = Some(num()? as u32),
            "--raw" => a.raw = Some(num()? as u32),
            "--bytes" => a.bytes = num()? as usize,
            "--atls" => a.atls = Some(num()? as u32),
            "--api-sock" | "--trust" | "--policy" | "--policy-other" => {
                let v = it.next().ok_or(format!("{flag} needs a value"))?;
                match flag.as_str() {
                    "--api-sock" => a.api_sock = v,
                    "--trust" => a.trust = v,
                    "--policy" => a.policy = v,
                    _ => a.policy_other = v,
                }
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(a)
}

/// Events from the reader to the driver of the hostile sequence.
enum Seen {
    Hello,
    Error(ErrorCode),
    Pong(u64),
    Challenge(bool),
}

fn frame_bytes(version: u8, direction: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![b'B', b'W', version, direction];
    v.extend((payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn send(stream: &mut UnixStream, msg: &HostMessage) -> Result<(), String> {
    let bytes = encode_host(msg).map_err(|e| e.to_string())?;
    stream.write_all(&bytes).map_err(|e| format!("send: {e}"))
}

fn expect(
    rx: &mpsc::Receiver<Seen>,
    what: &str,
    want: impl Fn(&Seen) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(s) if want(&s) => return Ok(()),
            Ok(_) => continue,
            Err(_) => return Err(format!("no {what} from the guest")),
        }
    }
}

/// The hostile host: every kind of bad frame, each answered by an `Error` of the right
/// code, and the guest still answers pings and challenges in between and after.
fn hostile(mut s: UnixStream, rx: mpsc::Receiver<Seen>) -> Result<String, String> {
    expect(&rx, "hello", |s| matches!(s, Seen::Hello))?;
    let err = |code: ErrorCode| move |s: &Seen| matches!(s, Seen::Error(c) if *c == code);
    let w = |s: &mut UnixStream, b: &[u8]| s.write_all(b).map_err(|e| format!("send: {e}"));
    w(&mut s, b"this is not a frame at all")?;
    expect(&rx, "bad_magic error", err(ErrorCode::BadMagic))?;
    w(&mut s, &frame_bytes(PROTOCOL_VERSION + 1, 2, b"future"))?;
    expect(
        &rx,
        "unsupported_version error",
        err(ErrorCode::UnsupportedVersion),
    )?;
    let big = 1usize << 20;
    let mut header = frame_bytes(PROTOCOL_VERSION, 2, &[]);
    header[4..8].copy_from_slice(&(big as u32).to_be_bytes());
    w(&mut s, &header)?;
    w(&mut s, &vec![0xa5; big])?;
    expect(&rx, "oversized error", err(ErrorCode::Oversized))?;
    w(
        &mut s,
        &frame_bytes(PROTOCOL_VERSION, 2, &[0xff, 0x00, 0x13, 0x37]),
    )?;
    expect(&rx, "malformed error", err(ErrorCode::Malformed))?;
    send(&mut s, &HostMessage::Ping { nonce: 1 })?;
    expect(&rx, "pong 1", |s| matches!(s, Seen::Pong(1)))?;
    send(
        &mut s,
        &HostMessage::Challenge {
            nonce: pattern(32, 7),
        },
    )?;
    expect(&rx, "verified challenge response", |s| {
        matches!(s, Seen::Challenge(true))
    })?;
    // A frame that stops half-way: the guest reports it once its deadline passes.
    let mut partial = frame_bytes(PROTOCOL_VERSION, 2, &[0u8; 100]);
    partial.truncate(FRAME_HEADER_LEN + 10);
    let t = Instant::now();
    w(&mut s, &partial)?;
    expect(&rx, "truncated error", err(ErrorCode::Truncated))?;
    let truncated_after = t.elapsed();
    send(&mut s, &HostMessage::Ping { nonce: 2 })?;
    expect(&rx, "pong 2", |s| matches!(s, Seen::Pong(2)))?;
    Ok(format!(
        "errors=bad_magic,unsupported_version,oversized,malformed,truncated pongs=2 truncated_after_s={:.1} max_payload={MAX_PAYLOAD}",
        truncated_after.as_secs_f64()
    ))
}

/// Echoes `bytes` through the guest's vsock `port` (through the VMM's socket `uds`).
fn echo(uds: &str, port: u32, bytes: usize, seed: u64) -> Result<String, String> {
    let s = connect_vsock(uds, port)?;
    let mut reader = s.try_clone().map_err(|e| e.to_string())?;
    let data = pattern(bytes, seed);
    let t = Instant::now();
    let to_send = data.clone();
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || {
        for chunk in to_send.chunks(256 * 1024) {
            w.write_all(chunk)?;
        }
        Ok::<(), std::io::Error>(())
    });
    let mut got = vec![0u8; bytes];
    reader
        .read_exact(&mut got)
        .map_err(|e| format!("reading the echo: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| "sender panicked")?
        .map_err(|e| format!("sending: {e}"))?;
    drop(s);
    if got != data {
        let at = got.iter().zip(&data).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!("the echo differs from what was sent at byte {at}"));
    }
    Ok(format!(
        "bytes={bytes} secs={secs:.2} mb_per_s={:.2}",
        bytes as f64 / secs / 1e6
    ))
}

/// The attested TLS cases, each one `bulwark-verify connect` through a relay to the
/// guest's attested port `port`: three that must be refused before any application
/// byte, then the honest one, whose echo must come back.
fn atls_cases(uds: &str, port: u32, maker: &EvidenceMaker, policy: &str, other: &str) {
    let relay = match start_relay(uds, port) {
        Ok(p) => format!("127.0.0.1:{p}"),
        Err(e) => return println!("HOST-ATLS relay fail {e}"),
    };
    let text = "bytes for the workload, after an affirmed handshake only";
    for (name, mode, policy) in [
        ("other-key", EvidenceMode::OtherKey, policy),
        ("stale-nonce", EvidenceMode::StaleNonce, policy),
        ("policy-mismatch", EvidenceMode::Honest, other),
        ("good", EvidenceMode::Honest, policy),
    ] {
        maker.set_mode(mode);
        let t = Instant::now();
        match verify_connect(&relay, policy, text) {
            Ok((code, stdout, stderr)) => {
                let secs = t.elapsed().as_secs_f64();
                let received = serde_json::from_str::<serde_json::Value>(&stdout)
                    .ok()
                    .and_then(|v| {
                        v.pointer("/atls/received")
                            .and_then(|r| r.as_str().map(str::to_owned))
                    });
                let echoed = match received {
                    Some(r) if r == text => "exact".to_owned(),
                    Some(r) => format!("differs({} bytes)", r.len()),
                    None => "none".to_owned(),
                };
                println!(
                    "HOST-ATLS {name} exit={code} secs={secs:.2} received={echoed} {}",
                    refusal_line(&stderr).replace('\n', " ")
                );
                if code != 0 && code != 1 {
                    println!("HOST-ATLS-STDERR {name} {}", stderr.replace('\n', " | "));
                }
            }
            Err(e) => println!("HOST-ATLS {name} fail {e}"),
        }
    }
}

fn stage_name(stage: Stage) -> String {
    format!("{stage:?}")
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lab-guest-host: {e}");
            std::process::exit(2)
        }
    };
    let maker = match args.atls {
        Some(_) => match EvidenceMaker::new(&args.api_sock, &args.trust) {
            Ok(m) => Some(m),
            Err(e) => {
                println!("HOST-ERROR evidence maker: {e}");
                std::process::exit(1)
            }
        },
        None => None,
    };
    let path = format!("{}_{}", args.uds, args.port);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap_or_else(|e| {
        println!("HOST-ERROR bind {path}: {e}");
        std::process::exit(1)
    });
    println!("HOST-LISTENING {path}");
    let (mut stream, _) = listener.accept().unwrap_or_else(|e| {
        println!("HOST-ERROR accept: {e}");
        std::process::exit(1)
    });
    let _ = stream.set_read_timeout(Some(Duration::from_secs(170)));
    let (seen_tx, seen_rx) = mpsc::channel();
    // With --hostile the echoes start once the hostile sequence is over, so that the
    // workload (which ends after its connections) outlives it.
    let (hostile_done_tx, hostile_done_rx) = mpsc::channel::<()>();
    let hostile_done_rx = args.hostile.then_some(hostile_done_rx);
    let driver = args.hostile.then(|| {
        let s = stream.try_clone().expect("clone the channel socket");
        std::thread::spawn(move || {
            let r = hostile(s, seen_rx);
            let _ = hostile_done_tx.send(());
            r
        })
    });
    let (bridge_tx, bridge_rx) = mpsc::channel::<()>();
    let bridges = (args.bridge.is_some() || args.raw.is_some()).then(|| {
        let (uds, bridge, raw, bytes) = (args.uds.clone(), args.bridge, args.raw, args.bytes);
        let atls = args
            .atls
            .zip(maker.clone())
            .map(|(port, m)| (port, m, args.policy.clone(), args.policy_other.clone()));
        std::thread::spawn(move || {
            if bridge_rx.recv_timeout(Duration::from_secs(150)).is_err() {
                println!("HOST-BRIDGE fail the guest never reported its bridges up");
                return;
            }
            if let Some(rx) = hostile_done_rx {
                let _ = rx.recv_timeout(Duration::from_secs(150));
            }
            if let Some((port, maker, policy, other)) = &atls {
                atls_cases(&uds, *port, maker, policy, other);
            }
            for (name, port, seed) in [("BRIDGE", bridge, 11), ("RAW", raw, 13)] {
                if let Some(p) = port {
                    match echo(&uds, p, bytes, seed) {
                        Ok(r) => println!("HOST-{name} ok port={p} {r}"),
                        Err(e) => println!("HOST-{name} fail port={p} {e}"),
                    }
                }
            }
        })
    });

    let mut frames = FrameReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut key: Option<VerifyingKey> = None;
    let mut out: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut gaps = 0u32;
    'read: loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                println!("HOST-ERROR read: {e}");
                break;
            }
        };
        frames.push(&buf[..n]);
        while let Some(next) = frames.next_frame() {
            let msg = match next.and_then(|f| decode_guest(&f)) {
                Ok(m) => m,
                Err(e) => {
                    println!("HOST-ERROR guest frame: {e}");
                    continue;
                }
            };
            match msg {
                GuestMessage::Output(o) => {
                    let i = usize::from(o.stream == Stream::Stderr);
                    if o.offset != out[i].len() as u64 {
                        gaps += 1;
                    }
                    out[i].extend_from_slice(&o.data);
                }
                GuestMessage::Hello(h) => {
                    println!(
                        "HOST-MSG hello protocol={} init={} kernel={} uptime_s={:.3}",
                        h.protocol,
                        h.init_version,
                        h.kernel_release,
                        h.uptime_us as f64 / 1e6
                    );
                    let _ = seen_tx.send(Seen::Hello);
                }
                GuestMessage::Progress(p) => {
                    println!(
                        "HOST-STAGE {} {:.3} {}",
                        stage_name(p.stage),
                        p.uptime_us as f64 / 1e6,
                        p.detail
                    );
                    if p.stage == Stage::WorkloadStarted && args.shutdown {
                        let reason = "lab: the operator stops the VM".to_owned();
                        match encode_host(&HostMessage::Shutdown { reason }) {
                            Ok(b) => match stream.write_all(&b) {
                                Ok(()) => println!("HOST-SENT shutdown"),
                                Err(e) => println!("HOST-ERROR sending shutdown: {e}"),
                            },
                            Err(e) => println!("HOST-ERROR encoding shutdown: {e}"),
                        }
                    }
                    if p.stage == Stage::BridgeUp {
                        let _ = bridge_tx.send(());
                    }
                }
                GuestMessage::AttestationKey(k) => {
                    key = VerifyingKey::from_sec1_bytes(&k.public_key).ok();
                    println!(
                        "HOST-MSG attestation_key {} valid={}",
                        k.algorithm,
                        key.is_some()
                    );
                }
                GuestMessage::ChallengeResponse(r) => {
                    let ok = key.as_ref().is_some_and(|k| {
                        DerSignature::from_bytes(&r.signature).is_ok_and(|sig| {
                            k.verify(&challenge_signed_bytes(&r.nonce), &sig).is_ok()
                        })
                    }) && r.nonce == pattern(32, 7);
                    println!("HOST-MSG challenge_response verified={ok}");
                    let _ = seen_tx.send(Seen::Challenge(ok));
                }
                GuestMessage::EvidenceRequest(r) => {
                    let answer = match &maker {
                        Some(m) => m.evidence(&r.nonce, &r.tls_key_sha256),
                        None => Err("this host makes no evidence (no --atls)".into()),
                    };
                    println!(
                        "HOST-MSG evidence_request {} -> {}",
                        r.request,
                        match &answer {
                            Ok(doc) => format!("{} bytes", doc.len()),
                            Err(e) => format!("unavailable: {e}"),
                        }
                    );
                    let replies = match answer {
                        Ok(doc) => EvidenceChunk::split(r.request, &doc)
                            .into_iter()
                            .map(HostMessage::Evidence)
                            .collect(),
                        Err(reason) => vec![HostMessage::EvidenceUnavailable {
                            request: r.request,
                            reason,
                        }],
                    };
                    for reply in replies {
                        if let Err(e) = send(&mut stream, &reply) {
                            println!("HOST-ERROR evidence reply: {e}");
                        }
                    }
                }
                GuestMessage::Pong { nonce } => {
                    println!("HOST-MSG pong {nonce}");
                    let _ = seen_tx.send(Seen::Pong(nonce));
                }
                GuestMessage::Error(e) => {
                    println!("HOST-MSG error {:?} {}", e.code, e.message);
                    let _ = seen_tx.send(Seen::Error(e.code));
                }
                GuestMessage::Exit(e) => println!(
                    "HOST-EXIT code={} signal={} runtime_ms={} dropped={}",
                    e.code.map_or("none".into(), |c| c.to_string()),
                    e.signal_name.as_deref().unwrap_or("none"),
                    e.runtime_us / 1000,
                    e.output_dropped
                ),
                GuestMessage::Refusal(r) => println!(
                    "HOST-REFUSAL reason={} stage={} message={}",
                    reason_name(r.reason),
                    stage_name(r.stage),
                    r.message.replace('\n', " ")
                ),
                GuestMessage::PowerOff { reason } => {
                    println!("HOST-POWEROFF {reason}");
                    break 'read;
                }
                GuestMessage::Status(s) => println!("HOST-MSG status {}", one_line(&s)),
                other => println!("HOST-MSG {}", one_line(&other)),
            }
        }
    }
    if let Some(e) = frames.finish() {
        println!("HOST-ERROR {e}");
    }
    let stdout_ok = out[0] == expected_stdout();
    let stderr = String::from_utf8_lossy(&out[1]).into_owned();
    println!(
        "HOST-OUTPUT stdout_bytes={} stdout={} stderr_bytes={} stderr_first_line={} gaps={gaps}",
        out[0].len(),
        if stdout_ok { "exact" } else { "differs" },
        out[1].len(),
        if stderr.starts_with(STDERR_FIRST_LINE) {
            "exact"
        } else {
            "differs"
        },
    );
    for line in stderr.lines().filter(|l| l.starts_with("WORKLOAD-ID ")) {
        println!("HOST-{line}");
    }
    for line in stderr.lines().filter(|l| l.starts_with("lab-workload:")) {
        println!("HOST-STDERR-LINE {line}");
    }
    for line in String::from_utf8_lossy(&out[0])
        .lines()
        .filter(|l| l.starts_with("lab-workload:"))
    {
        println!("HOST-STDOUT-LINE {line}");
    }
    if let Some(d) = driver {
        match d.join() {
            Ok(Ok(r)) => println!("HOST-HOSTILE ok {r}"),
            Ok(Err(e)) => println!("HOST-HOSTILE fail {e}"),
            Err(_) => println!("HOST-HOSTILE fail the driver panicked"),
        }
    }
    if let Some(b) = bridges {
        let _ = b.join();
    }
    println!("HOST-DONE");
}

/// A refusal reason's name on the wire, e.g. `rootfs_verification`.
fn reason_name(r: RefusalReason) -> String {
    match serde_json::to_value(r) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{r:?}"),
    }
}

fn one_line<T: std::fmt::Debug>(v: &T) -> String {
    let s = format!("{v:?}");
    s.chars().take(600).collect()
}
