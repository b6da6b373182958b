//! Writes one encoded frame of each message kind into the directory given, as the seed
//! corpus of the `decode` fuzz target (`guest-init/protocol/fuzz`). The first byte of
//! each seed is the fuzz target's selector: 0 = bytes the guest receives (host
//! messages), 1 = bytes the host receives (guest messages), in 64-byte pieces.

use bulwark_guest_protocol::*;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: fuzz_seeds DIR");
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    let host = [
        HostMessage::Hello {
            protocol: 1,
            host: "seed".into(),
        },
        HostMessage::Ping { nonce: 7 },
        HostMessage::Challenge { nonce: vec![1; 32] },
        HostMessage::Verdict {
            accepted: true,
            detail: "ok".into(),
        },
        HostMessage::Shutdown {
            reason: "seed".into(),
        },
        HostMessage::Evidence(EvidenceChunk {
            request: 1,
            total: 8,
            offset: 4,
            data: vec![2; 4],
        }),
        HostMessage::EvidenceUnavailable {
            request: 1,
            reason: "seed".into(),
        },
    ];
    let guest = [
        GuestMessage::Progress(Progress {
            stage: Stage::RootVerified,
            uptime_us: 1,
            detail: "x".into(),
        }),
        GuestMessage::Output(Output {
            stream: Stream::Stdout,
            offset: 0,
            data: b"hello".to_vec(),
        }),
        GuestMessage::Exit(ExitReport {
            code: Some(0),
            signal: None,
            signal_name: None,
            runtime_us: 1,
            output_dropped: 0,
        }),
        GuestMessage::Refusal(Refusal::new(
            RefusalReason::Config,
            Stage::ConfigLoaded,
            "field",
        )),
        GuestMessage::Status(Status::Gpus(GpuSummary {
            presence: GpuPresence::NoDevice,
            gpus: vec![],
        })),
        GuestMessage::Pong { nonce: 3 },
        GuestMessage::EvidenceRequest(EvidenceRequest {
            request: 1,
            nonce: vec![3; 32],
            tls_key_sha256: vec![4; 32],
        }),
    ];
    let mut n = 0;
    let mut put = |selector: u8, bytes: Vec<u8>| {
        let mut v = vec![selector];
        v.extend(bytes);
        std::fs::write(format!("{dir}/seed-{n:02}"), v).expect("write a seed");
        n += 1;
    };
    for m in &host {
        put(64 << 1, encode_host(m).expect("encode"));
    }
    for m in &guest {
        put((64 << 1) | 1, encode_guest(m).expect("encode"));
    }
}
