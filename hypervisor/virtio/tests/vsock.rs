//! virtio-vsock through the fake driver: 10 MB streams in both directions,
//! credit flow control, and hostile packets.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bulwark_virtio::mmio::status;
use bulwark_virtio::vsock::connection::CONN_BUF_ALLOC;
use bulwark_virtio::vsock::packet::{
    op, Header, HEADER_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use bulwark_virtio::vsock::{Vsock, MAX_CONTROL_PACKETS};
use bulwark_virtio::{lock_device, BackendReady, SharedDevice};
use common::*;

const CID: u64 = 3;
const RX: usize = 0;
const TX: usize = 1;
const RX_BUF: u32 = 16 * 1024;
const RX_COUNT: u16 = 64;
const TX_AREA: u64 = DATA_START + (4 << 20);
const GUEST_BUF_ALLOC: u32 = 256 * 1024;

struct Guest {
    d: Box<dyn Driver>,
    dev: Arc<Mutex<Vsock>>,
    rx_bufs: HashMap<u32, u64>,
    next_rx: u64,
    _dir: tempfile::TempDir,
    uds: PathBuf,
    /// Notifications only signal the queue events (an I/O worker serves
    /// them) instead of running the device on the test thread.
    worker_mode: bool,
}

impl Guest {
    /// A guest driving the device over virtio-mmio.
    fn new() -> Self {
        Self::with(|shared| Box::new(FakeDriver::with_shared(shared, guest_memory(), 0)))
    }

    /// A guest driving the device over virtio-pci (MSI-X enabled).
    fn new_pci() -> Self {
        Self::with(|shared| {
            let mut d = PciDriver::with_shared(shared, guest_memory(), 0);
            d.enable_msix();
            Box::new(d)
        })
    }

    fn with(driver: impl FnOnce(SharedDevice) -> Box<dyn Driver>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let dev = Arc::new(Mutex::new(Vsock::new(CID, &uds).unwrap()));
        let shared: SharedDevice = dev.clone();
        let mut d = driver(shared);
        d.init(0, 128);
        Self {
            d,
            dev,
            rx_bufs: HashMap::new(),
            next_rx: 0,
            _dir: dir,
            uds,
            worker_mode: false,
        }
    }

    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let addr = DATA_START + (self.next_rx % u64::from(RX_COUNT)) * u64::from(RX_BUF);
            self.next_rx += 1;
            let head = self.d.add_chain(RX, &[(addr, RX_BUF, true)]);
            self.rx_bufs.insert(u32::from(head), addr);
        }
        if self.worker_mode {
            self.d.notify(RX);
        } else {
            self.d.kick(RX);
        }
    }

    /// Runs the device's host side once: every descriptor it polls, as if
    /// ready, then the rx pump.
    fn pump(&mut self) {
        let fds = lock_device(&self.d.device).backend_fds();
        for f in fds {
            lock_device(&self.d.device).process_backend(
                f.fd,
                BackendReady {
                    readable: true,
                    writable: true,
                    hung_up: false,
                },
            );
        }
        self.d.run(RX);
    }

    /// Packets the device delivered; each consumed buffer is re-posted.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used = self.d.take_used(RX);
        let mut out = Vec::new();
        for (id, len) in &used {
            let addr = self.rx_bufs.remove(id).expect("used id was posted");
            assert!(
                *len as usize >= HEADER_LEN && *len <= RX_BUF,
                "used len {len}"
            );
            let raw = self.d.read_mem(addr, HEADER_LEN);
            let h = Header::decode(&raw.try_into().unwrap());
            assert_eq!(h.len as usize, *len as usize - HEADER_LEN);
            let payload = self.d.read_mem(addr + HEADER_LEN as u64, h.len as usize);
            out.push((h, payload));
        }
        if !used.is_empty() {
            self.post_rx(used.len() as u16);
        }
        out
    }

    /// Sends one packet as header and payload descriptors.
    fn send_raw(&mut self, hdr: &[u8], payload: &[u8]) {
        self.d.write_mem(TX_AREA, hdr);
        let mut chain = vec![(TX_AREA, hdr.len() as u32, false)];
        if !payload.is_empty() {
            self.d.write_mem(TX_AREA + 0x1000, payload);
            chain.push((TX_AREA + 0x1000, payload.len() as u32, false));
        }
        self.d.add_chain(TX, &chain);
        if !self.worker_mode {
            self.d.kick(TX);
            assert_eq!(self.d.take_used(TX).len(), 1);
            return;
        }
        self.d.notify(TX);
        // Bounded wait (up to 20 s) for the worker to consume the packet.
        for _ in 0..20_000 {
            if !self.d.take_used(TX).is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("the I/O worker did not consume a tx packet");
    }

    fn send(&mut self, h: Header, payload: &[u8]) {
        self.send_raw(&h.encode(), payload);
    }

    fn status(&mut self) -> u32 {
        self.d.status()
    }
}

fn hdr(src_port: u32, dst_port: u32, op: u16, len: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        kind: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF_ALLOC,
        fwd_cnt,
    }
}

fn listener_at(uds: &Path, port: u32) -> UnixListener {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    UnixListener::bind(PathBuf::from(p)).unwrap()
}

const STREAM_BYTES: usize = 10 * 1024 * 1024;

#[test]
fn host_to_guest_10mb_byte_exact() {
    host_to_guest(Guest::new(), STREAM_BYTES);
}

#[test]
fn host_to_guest_1mb_over_pci() {
    let g = Guest::new_pci();
    host_to_guest(g, 1 << 20);
}

#[test]
fn guest_to_host_10mb_byte_exact() {
    guest_to_host(Guest::new(), STREAM_BYTES);
}

#[test]
fn guest_to_host_1mb_over_pci() {
    guest_to_host(Guest::new_pci(), 1 << 20);
}

/// The host connects and sends `bytes` (then closes); the guest reads them from
/// its rx buffers, returning credit, and answers the shutdown.
fn host_to_guest(mut g: Guest, bytes: usize) {
    g.post_rx(RX_COUNT);
    let uds = g.uds.clone();
    let data = pattern(10, bytes);
    let expected = data.clone();
    let host = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&uds).unwrap();
        s.write_all(b"CONNECT 1234\n").unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("OK ") && line.ends_with('\n'), "{line:?}");
        s.write_all(&data).unwrap();
        // Closing ends the stream: the guest sees SHUTDOWN.
    });
    let mut got = Vec::with_capacity(bytes);
    let mut key = None;
    let mut reported = 0usize;
    let mut done = false;
    for _ in 0..5_000_000 {
        g.pump();
        for (h, payload) in g.recv() {
            assert_eq!((h.src_cid, h.dst_cid, h.kind), (HOST_CID, CID, TYPE_STREAM));
            match h.op {
                op::REQUEST => {
                    assert_eq!(h.dst_port, 1234);
                    key = Some((h.dst_port, h.src_port));
                    g.send(hdr(1234, h.src_port, op::RESPONSE, 0, 0), &[]);
                }
                op::RW => {
                    assert!(payload.len() <= GUEST_BUF_ALLOC as usize);
                    got.extend_from_slice(&payload);
                    assert!(got.len() <= bytes);
                }
                op::SHUTDOWN => {
                    assert_eq!(h.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
                    let (p, hp) = key.unwrap();
                    g.send(hdr(p, hp, op::RST, 0, got.len() as u32), &[]);
                    done = true;
                }
                op::CREDIT_UPDATE => {}
                other => panic!("unexpected op {other}"),
            }
        }
        // The guest application consumed everything; report credit while
        // the connection is open.
        if !done && got.len() - reported >= 64 * 1024 {
            let (p, hp) = key.unwrap();
            g.send(hdr(p, hp, op::CREDIT_UPDATE, 0, got.len() as u32), &[]);
            reported = got.len();
        }
        if done {
            break;
        }
    }
    host.join().unwrap();
    assert!(done, "stream did not finish");
    assert_eq!(got.len(), bytes);
    assert!(got == expected, "bytes differ");
    assert_eq!(g.dev.lock().unwrap().connection_count(), 0);
    let c = g.d.counters();
    assert_eq!(c.bytes_read, bytes as u64);
    assert_eq!(c.errors, 0);
}

/// The guest connects to a host listener and sends `bytes` within its credit,
/// then shuts down; the host receives them byte-exact.
fn guest_to_host(mut g: Guest, bytes: usize) {
    g.post_rx(RX_COUNT);
    let listener = listener_at(&g.uds, 5000);
    let host = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    });
    g.send(hdr(7777, 5000, op::REQUEST, 0, 0), &[]);
    let mut peer_alloc = 0u32;
    let mut peer_fwd = 0u32;
    let mut established = false;
    let data = pattern(11, bytes);
    let mut sent = 0usize;
    let mut rst = false;
    for _ in 0..5_000_000 {
        g.pump();
        for (h, _) in g.recv() {
            assert_eq!((h.src_port, h.dst_port), (5000, 7777));
            match h.op {
                op::RESPONSE => established = true,
                op::CREDIT_UPDATE | op::RW => {}
                op::RST => rst = true,
                other => panic!("unexpected op {other}"),
            }
            peer_alloc = h.buf_alloc;
            peer_fwd = h.fwd_cnt;
        }
        if rst {
            break;
        }
        if !established {
            continue;
        }
        if sent == bytes {
            continue;
        }
        let credit = peer_alloc - (sent as u32).wrapping_sub(peer_fwd);
        let n = (credit as usize).min(32 * 1024).min(bytes - sent);
        if n > 0 {
            g.send(hdr(7777, 5000, op::RW, n as u32, 0), &data[sent..sent + n]);
            sent += n;
            assert!(g.dev.lock().unwrap().buffered_bytes() <= CONN_BUF_ALLOC as usize);
            if sent == bytes {
                let mut bye = hdr(7777, 5000, op::SHUTDOWN, 0, 0);
                bye.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                g.send(bye, &[]);
            }
        }
    }
    assert!(rst, "device did not answer the full shutdown with RST");
    let all = host.join().unwrap();
    assert_eq!(all.len(), bytes);
    assert!(all == data, "bytes differ");
    assert_eq!(g.d.counters().bytes_written, bytes as u64);
    assert_eq!(g.d.counters().errors, 0);
}

#[test]
fn flood_without_credit_resets_connection_with_bounded_memory() {
    let mut g = Guest::new();
    g.post_rx(RX_COUNT);
    let listener = listener_at(&g.uds, 6000);
    g.send(hdr(1, 6000, op::REQUEST, 0, 0), &[]);
    // The host program accepts but never reads.
    let (_held, _) = listener.accept().unwrap();
    g.pump();
    let first = g.recv();
    assert_eq!(first[0].0.op, op::RESPONSE);
    let chunk = vec![0xabu8; 64 * 1024];
    let mut reset = false;
    for _ in 0..200 {
        g.send(hdr(1, 6000, op::RW, chunk.len() as u32, 0), &chunk);
        assert!(g.dev.lock().unwrap().buffered_bytes() <= CONN_BUF_ALLOC as usize);
        g.pump();
        if g.recv().iter().any(|(h, _)| h.op == op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "a guest ignoring credit must be reset");
    assert_eq!(g.dev.lock().unwrap().connection_count(), 0);
    assert_eq!(g.dev.lock().unwrap().buffered_bytes(), 0);
    assert!(g.d.counters().errors >= 1);
    // More data on the dead connection only earns another RST.
    g.send(hdr(1, 6000, op::RW, 16, 0), &[0; 16]);
    g.pump();
    assert!(g.recv().iter().any(|(h, _)| h.op == op::RST));
    assert_eq!(g.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn bogus_packets_get_rst_or_are_dropped() {
    let mut g = Guest::new();
    g.post_rx(RX_COUNT);
    let mut cases: Vec<(Vec<u8>, Vec<u8>, bool)> = Vec::new();
    // A header cut short: dropped (nothing to answer).
    cases.push((vec![0u8; 20], vec![], false));
    let mut h = hdr(9, 9, op::REQUEST, 0, 0);
    h.dst_cid = 99;
    cases.push((h.encode().to_vec(), vec![], true));
    let mut h = hdr(9, 9, op::REQUEST, 0, 0);
    h.kind = 2;
    cases.push((h.encode().to_vec(), vec![], true));
    // Payload length beyond the buffer, and near u32::MAX.
    cases.push((
        hdr(9, 9, op::RW, 100, 0).encode().to_vec(),
        vec![1; 10],
        true,
    ));
    cases.push((
        hdr(9, 9, op::RW, u32::MAX, 0).encode().to_vec(),
        vec![1; 10],
        true,
    ));
    // Unknown operations.
    cases.push((hdr(9, 9, 42, 0, 0).encode().to_vec(), vec![], true));
    cases.push((hdr(9, 9, 0, 0, 0).encode().to_vec(), vec![], true));
    // Data for a connection that does not exist.
    cases.push((hdr(9, 9, op::RW, 4, 0).encode().to_vec(), vec![1; 4], true));
    // A spoofed source CID: dropped without an answer.
    let mut h = hdr(9, 9, op::REQUEST, 0, 0);
    h.src_cid = 77;
    cases.push((h.encode().to_vec(), vec![], false));
    // A connection to a port nobody listens on.
    cases.push((
        hdr(9, 4444, op::REQUEST, 0, 0).encode().to_vec(),
        vec![],
        true,
    ));
    for (i, (header, payload, expect_rst)) in cases.into_iter().enumerate() {
        g.send_raw(&header, &payload);
        g.pump();
        let got = g.recv();
        if expect_rst {
            assert_eq!(got.len(), 1, "case {i}");
            assert_eq!(got[0].0.op, op::RST, "case {i}");
        } else {
            assert!(got.is_empty(), "case {i}");
        }
    }
    assert!(g.d.counters().errors >= 9);
    assert_eq!(g.status() & status::DEVICE_NEEDS_RESET, 0);

    // A healthy connection still works afterwards.
    let listener = listener_at(&g.uds, 5001);
    g.send(hdr(10, 5001, op::REQUEST, 0, 0), &[]);
    let (mut s, _) = listener.accept().unwrap();
    g.pump();
    assert_eq!(g.recv()[0].0.op, op::RESPONSE);
    g.send(hdr(10, 5001, op::RW, 5, 0), b"hello");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    s.write_all(b"world").unwrap();
    let mut reply = Vec::new();
    for _ in 0..1_000_000 {
        g.pump();
        reply.extend(
            g.recv()
                .into_iter()
                .filter(|(h, _)| h.op == op::RW)
                .flat_map(|(_, p)| p),
        );
        if reply.len() >= 5 {
            break;
        }
    }
    assert_eq!(reply, b"world");
}

#[test]
fn control_packet_flood_without_rx_buffers_is_capped() {
    let mut g = Guest::new();
    // No rx buffers: every RST has to wait.
    for i in 0..(MAX_CONTROL_PACKETS as u32 + 100) {
        g.send(hdr(i, 9, op::RW, 0, 0), &[]);
    }
    assert_eq!(
        g.dev.lock().unwrap().queued_control_packets(),
        MAX_CONTROL_PACKETS
    );
    assert!(g.d.counters().errors >= MAX_CONTROL_PACKETS as u64 + 100);
    g.post_rx(RX_COUNT);
    g.pump();
    let mut n = 0;
    for _ in 0..10 {
        n += g.recv().len();
        g.pump();
    }
    assert_eq!(n, MAX_CONTROL_PACKETS);
}

#[test]
fn host_handshake_garbage_is_refused() {
    let mut g = Guest::new();
    g.post_rx(RX_COUNT);
    for line in [&b"HELLO\n"[..], b"CONNECT 99999999999999\n", &[b'x'; 100]] {
        let mut s = UnixStream::connect(&g.uds).unwrap();
        s.write_all(line).unwrap();
        for _ in 0..4 {
            g.pump();
        }
        // The device closed the socket: EOF (or a reset), not a hang.
        assert_closed(&mut s);
    }
    assert!(g.recv().is_empty(), "the guest heard nothing");
}

#[test]
fn reset_mid_stream_closes_connections() {
    let mut g = Guest::new();
    g.post_rx(RX_COUNT);
    let listener = listener_at(&g.uds, 5002);
    g.send(hdr(11, 5002, op::REQUEST, 0, 0), &[]);
    let (mut s, _) = listener.accept().unwrap();
    g.pump();
    assert_eq!(g.recv()[0].0.op, op::RESPONSE);
    s.write_all(&[7u8; 1000]).unwrap();
    // The driver resets the device before the data was delivered.
    g.d.reset_device();
    assert_eq!(g.dev.lock().unwrap().connection_count(), 0);
    assert_closed(&mut s);
    // Re-initialised, the device serves new connections.
    g.d.init(0, 128);
    g.rx_bufs.clear();
    g.post_rx(RX_COUNT);
    g.send(hdr(12, 5002, op::REQUEST, 0, 0), &[]);
    let (_s2, _) = listener.accept().unwrap();
    g.pump();
    assert_eq!(g.recv()[0].0.op, op::RESPONSE);
}

#[test]
fn config_space_and_bad_cids() {
    let g = Guest::new();
    let mut cid = [0u8; 8];
    lock_device(&g.d.device).read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    let dir = tempfile::tempdir().unwrap();
    for bad in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        assert!(Vsock::new(bad, &dir.path().join("x")).is_err(), "cid {bad}");
    }
    // The socket path is taken.
    assert!(Vsock::new(5, &g.uds).is_err());
}

/// The peer closed `s`: reading gives EOF with no data, or a reset.
fn assert_closed(s: &mut UnixStream) {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

#[test]
fn host_stream_through_io_worker() {
    let mut g = Guest::new();
    g.worker_mode = true;
    let events =
        g.d.queue_events()
            .iter()
            .map(|e| e.try_clone().unwrap())
            .collect();
    // The worker alone polls the host sockets: the test never calls pump().
    let worker = bulwark_virtio::IoWorker::spawn("vsock-io", g.d.device.clone(), events).unwrap();
    g.post_rx(RX_COUNT);
    let uds = g.uds.clone();
    let data = pattern(12, 1 << 20);
    let expected = data.clone();
    let host = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&uds).unwrap();
        // A stalled device fails the test instead of hanging it.
        let limit = Some(std::time::Duration::from_secs(60));
        s.set_read_timeout(limit).unwrap();
        s.set_write_timeout(limit).unwrap();
        s.write_all(b"CONNECT 77\n").unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("OK "), "{line:?}");
        s.write_all(&data).unwrap();
    });
    let mut got = Vec::new();
    let mut key = None;
    let mut reported = 0;
    let mut done = false;
    // Bounded wait: up to 60 s of 1 ms naps while nothing arrives.
    for _ in 0..60_000 {
        let packets = g.recv();
        if packets.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        for (h, payload) in packets {
            match h.op {
                op::REQUEST => {
                    key = Some((h.dst_port, h.src_port));
                    g.send(hdr(77, h.src_port, op::RESPONSE, 0, 0), &[]);
                }
                op::RW => got.extend_from_slice(&payload),
                op::SHUTDOWN => done = true,
                _ => {}
            }
        }
        if let Some((p, hp)) = key {
            if got.len() - reported >= 64 * 1024 {
                g.send(hdr(p, hp, op::CREDIT_UPDATE, 0, got.len() as u32), &[]);
                reported = got.len();
            }
        }
        if done {
            break;
        }
    }
    host.join().unwrap();
    worker.stop();
    assert!(done, "stream did not finish");
    assert!(
        got == expected,
        "bytes differ ({} of {})",
        got.len(),
        expected.len()
    );
}

#[test]
fn host_half_close_while_holding_guest_bytes_does_not_spin_the_worker() {
    let mut g = Guest::new();
    g.post_rx(RX_COUNT);
    let listener = listener_at(&g.uds, 7000);
    g.send(hdr(1, 7000, op::REQUEST, 0, 0), &[]);
    // The host program accepts, never reads, and shuts its write side.
    let (held, _) = listener.accept().unwrap();
    g.pump();
    assert_eq!(g.recv()[0].0.op, op::RESPONSE);
    // The guest sends (within its credit) until the device holds bytes the
    // full host socket did not take.
    let chunk = vec![0x5au8; 16 * 1024];
    let mut sent = 0u32;
    while g.dev.lock().unwrap().buffered_bytes() == 0 {
        assert!(sent < CONN_BUF_ALLOC, "the host socket never filled up");
        g.send(hdr(1, 7000, op::RW, chunk.len() as u32, 0), &chunk);
        sent += chunk.len() as u32;
    }
    held.shutdown(std::net::Shutdown::Write).unwrap();

    let events =
        g.d.queue_events()
            .iter()
            .map(|e| e.try_clone().unwrap())
            .collect();
    let mut worker = bulwark_virtio::ManualWorker::new(g.d.device.clone(), events).unwrap();
    // The half-close is seen once (EOF → SHUTDOWN for the guest); after
    // that, with bytes still held for a host that does not read, nothing
    // may stay armed.
    let mut wakeups = 0;
    for _ in 0..1000 {
        if worker.step(0).unwrap() > 0 {
            wakeups += 1;
        }
    }
    assert!(wakeups <= 2, "worker woke {wakeups} times in 1000 polls");
    assert!(g.dev.lock().unwrap().buffered_bytes() > 0);
    let shutdown: Vec<_> = g
        .recv()
        .into_iter()
        .filter(|(h, _)| h.op == op::SHUTDOWN)
        .collect();
    assert_eq!(shutdown.len(), 1, "the guest is told the host is gone");
    assert_eq!(shutdown[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert_eq!((shutdown[0].0.src_port, shutdown[0].0.dst_port), (7000, 1));

    // The guest keeps sending: it gets RST and the connection is gone.
    g.send(hdr(1, 7000, op::RW, chunk.len() as u32, 0), &chunk);
    let mut rst = false;
    for _ in 0..10 {
        worker.step(0).unwrap();
        g.d.run(RX);
        if g.recv().iter().any(|(h, _)| h.op == op::RST) {
            rst = true;
            break;
        }
    }
    assert!(rst, "data after the host hung up is answered with RST");
    assert_eq!(g.dev.lock().unwrap().connection_count(), 0);
    assert_eq!(g.dev.lock().unwrap().buffered_bytes(), 0);
    let mut wakeups = 0;
    for _ in 0..1000 {
        if worker.step(0).unwrap() > 0 {
            wakeups += 1;
        }
    }
    assert_eq!(
        wakeups, 0,
        "nothing stays armed once the connection is gone"
    );
    drop(held);
}
