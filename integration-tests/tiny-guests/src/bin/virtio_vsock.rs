//! virtio-vsock end to end (raw boot; the device is found by probing):
//! 1. waits for the host to connect to port 1234 (`CONNECT 1234`), echoes everything
//!    it receives until the host closes, answering the host's SHUTDOWN with RST;
//! 2. connects to host port 5678 and sends `RSI` 64 KiB chunks (chunk `i`: `i` as a
//!    little-endian u64, then 65528 bytes of the pattern `(j * 31 + 7) mod 256` for
//!    byte `j` of the chunk), shuts the connection down and waits for the RST.
//!
//! Exit 0 on success; 1 no device; 2 timeout; 3 unexpected event.
#![no_std]
#![no_main]

use tiny_guest::virtio::{self, Mmio};
use tiny_guest::vsock::{Event, Vsock, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN};
use tiny_guest::{exit, poke, print};

const ECHO_PORT: u32 = 1234;
const HOST_PORT: u32 = 5678;
const PATTERN: u64 = 0x300_0000;
const SEQ_AREA: u64 = 0x2f0_0000;
const CHUNK: u32 = 64 * 1024;

fn wait(v: &mut Vsock) -> Event {
    v.wait_event().unwrap_or_else(|| {
        print!("FAIL timeout (rx {} bytes)\n", v.rx_bytes);
        exit(2)
    })
}

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, chunks: u64) -> ! {
    let Some(mmio) = Mmio::find(virtio::ID_VSOCK, 0) else {
        print!("FAIL no vsock device\n");
        exit(1)
    };
    let mut v = Vsock::new(mmio, 0).unwrap_or_else(|| exit(1));
    print!("vsock cid {}\n", v.cid);

    // 1. Echo for the host.
    v.echo = true;
    match wait(&mut v) {
        Event::Request { peer, local } if local == ECHO_PORT => {
            v.local = local;
            v.peer = peer;
        }
        e => {
            print!("FAIL expected a request, got {e:?}\n");
            exit(3)
        }
    }
    v.send_ctl(OP_RESPONSE, 0);
    print!("echo: connected\n");
    loop {
        match wait(&mut v) {
            Event::Shutdown(_) | Event::Rst(_) => break,
            e => print!("echo: ignoring {e:?}\n"),
        }
    }
    while v.busy() {
        v.poll();
    }
    v.send_ctl(OP_RST, 0);
    print!("echo: done, {} bytes\n", v.rx_bytes);

    // 2. Send to the host's listener.
    v.echo = false;
    v.local = 1025;
    v.peer = HOST_PORT;
    v.tx_cnt = 0;
    v.fwd_cnt = 0;
    v.peer_buf_alloc = 0;
    v.peer_fwd_cnt = 0;
    v.send_ctl(OP_REQUEST, 0);
    match wait(&mut v) {
        Event::Response => {}
        e => {
            print!("FAIL expected a response, got {e:?}\n");
            exit(3)
        }
    }
    virtio::fill_words(PATTERN, u64::from(CHUNK), |w| {
        (0..8).fold(0u64, |acc, k| {
            let j = w * 8 + k;
            acc | (((j * 31 + 7) & 0xff) << (8 * k))
        })
    });
    for i in 0..chunks {
        let mut idle = 0;
        while v.credit() < CHUNK {
            let before = v.progress;
            if let Some(e) = v.poll() {
                print!("FAIL event while sending: {e:?}\n");
                exit(3)
            }
            idle = if v.progress == before { idle + 1 } else { 0 };
            if idle > virtio::SPINS {
                print!("FAIL no credit\n");
                exit(2)
            }
        }
        let seq = SEQ_AREA + (i % 64) * 8;
        // SAFETY: the sequence area is free RAM.
        unsafe { poke(seq, i) };
        let h = v.header(OP_RW, CHUNK, 0);
        // The pattern buffer starts with 8 spare bytes: chunk byte j is PATTERN + j.
        if !v.send(&h, &[(seq, 8), (PATTERN + 8, CHUNK - 8)]) {
            exit(2)
        }
        v.tx_cnt = v.tx_cnt.wrapping_add(CHUNK);
    }
    while v.busy() {
        v.poll_tx();
    }
    v.send_ctl(OP_SHUTDOWN, 3);
    loop {
        match wait(&mut v) {
            Event::Rst(_) => break,
            e => print!("send: ignoring {e:?}\n"),
        }
    }
    print!("send: done, {} chunks\n", chunks);
    exit(0)
}
