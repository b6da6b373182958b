//! virtio-vsock (virtio 1.2 section 5.10): stream sockets between the guest
//! and host programs on Unix sockets (see [`host`] for the convention).
//!
//! Every packet header is the guest's: a spoofed source CID is dropped; a
//! wrong destination CID, a non-stream type, a payload length that does not
//! match the buffer or exceeds [`MAX_PAYLOAD`], an unknown operation, or a
//! packet for a connection that does not exist is answered with `RST`. A
//! guest that sends past the credit the device advertised has that
//! connection reset. Memory is bounded by construction: at most
//! [`MAX_CONNECTIONS`] connections each holding at most
//! [`connection::CONN_BUF_ALLOC`] bytes for the host, at most
//! [`MAX_PENDING_HOST`] host sockets in the `CONNECT` handshake, and at most
//! [`MAX_CONTROL_PACKETS`] queued control packets (further ones are dropped
//! and counted as errors). Host data is read from a socket only when the
//! guest has given both an rx buffer and credit for it.

pub mod connection;
pub mod host;
pub mod packet;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use connection::{ConnKey, ConnState, Connection, CONN_BUF_ALLOC};
use host::{connect_nonblocking, listener_path, HandshakeStep, PendingHost};
use packet::{op, Header, HEADER_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

use crate::chain::{ParsedChain, SegmentCursor};
use crate::counters::{guest_warn, DeviceCounters};
use crate::device::{
    read_config_bytes, ActivateContext, ActivateError, BackendReady, DeviceType, FdInterest,
    VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::queue::{ActiveQueues, Popped};
use crate::GuestMemory;

/// Most payload bytes in one packet, either direction.
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// Most simultaneous connections.
pub const MAX_CONNECTIONS: usize = 64;
/// Most host sockets still sending their `CONNECT` line.
pub const MAX_PENDING_HOST: usize = 16;
/// Most control packets (`RST`, `REQUEST`) waiting for an rx buffer.
pub const MAX_CONTROL_PACKETS: usize = 256;
/// First host port given to host-initiated connections.
pub const FIRST_HOST_PORT: u32 = 1 << 30;

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 3] = [256, 256, 16];

/// Why the device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved (0, 1, 2, `u32::MAX`) or above 32 bits.
    #[error("guest CID {0} is reserved or out of range (must be 3..u32::MAX)")]
    BadCid(u64),
    /// The Unix socket could not be bound.
    #[error("vsock socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Something waiting for an rx buffer.
#[derive(Debug, Clone, Copy)]
enum RxItem {
    Control(Header),
    Response(ConnKey),
    CreditUpdate(ConnKey),
    Data(ConnKey),
}

/// The vsock device.
#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    pending_host: HashMap<RawFd, PendingHost>,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    control: VecDeque<Header>,
    next_host_port: u32,
    active: Option<ActiveQueues>,
    counters: Arc<DeviceCounters>,
    bounce: Vec<u8>,
}

impl Vsock {
    /// A device for a guest with context id `cid`, listening for host
    /// connections on the Unix socket `uds_path` (which must not exist).
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if cid <= HOST_CID || cid >= u64::from(u32::MAX) {
            return Err(VsockError::BadCid(cid));
        }
        let bind_err = |source| VsockError::Bind {
            path: uds_path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(Self {
            cid,
            uds_path: uds_path.to_owned(),
            listener,
            pending_host: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            control: VecDeque::new(),
            next_host_port: FIRST_HOST_PORT,
            active: None,
            counters: Arc::default(),
            bounce: vec![0; MAX_PAYLOAD as usize],
        })
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Control packets waiting for an rx buffer.
    pub fn queued_control_packets(&self) -> usize {
        self.control.len()
    }

    /// Bytes held for host sockets, all connections together.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(Connection::buffered).sum()
    }

    fn header(&self, key: ConnKey, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            kind: TYPE_STREAM,
            op,
            buf_alloc: CONN_BUF_ALLOC,
            ..Header::default()
        }
    }

    fn queue_control(&mut self, h: Header) {
        if self.control.len() >= MAX_CONTROL_PACKETS {
            guest_warn!(
                self.counters,
                op = h.op,
                "virtio-vsock: control queue full, packet dropped"
            );
            self.counters.add_error();
            return;
        }
        self.control.push_back(h);
    }

    fn queue_rst(&mut self, key: ConnKey) {
        let h = self.header(key, op::RST);
        self.queue_control(h);
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            self.by_fd.remove(&conn.stream.as_raw_fd());
        }
    }

    /// Resets a connection: drops it and tells the guest.
    fn reset_conn(&mut self, key: ConnKey, why: &str) {
        guest_warn!(
            self.counters,
            local = key.local_port,
            peer = key.peer_port,
            why,
            "virtio-vsock: connection reset"
        );
        self.counters.add_error();
        self.remove_conn(key);
        self.queue_rst(key);
    }

    fn insert_conn(&mut self, key: ConnKey, conn: Connection) {
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
    }

    // ---- guest → host ----

    fn process_tx(&mut self) -> bool {
        // Taken out for the batch so packets can borrow the rest of `self`.
        let Some(mut active) = self.active.take() else {
            return false;
        };
        let more = active.serve_batch(TX, |mem, chain| {
            self.handle_tx_chain(mem, chain);
            0
        });
        self.active = Some(active);
        self.pump_rx();
        more
    }

    fn handle_tx_chain(&mut self, mem: &GuestMemory, chain: &ParsedChain) {
        let mut cursor = SegmentCursor::new(mem, &chain.readable);
        let mut raw = [0u8; HEADER_LEN];
        if !matches!(cursor.read(&mut raw), Ok(HEADER_LEN)) {
            guest_warn!(
                self.counters,
                "virtio-vsock: tx packet shorter than its header, dropped"
            );
            self.counters.add_error();
            return;
        }
        let h = Header::decode(&raw);
        let key = ConnKey {
            local_port: h.dst_port,
            peer_port: h.src_port,
        };
        if h.src_cid != self.cid {
            guest_warn!(
                self.counters,
                src_cid = h.src_cid,
                "virtio-vsock: spoofed source CID, packet dropped"
            );
            self.counters.add_error();
            return;
        }
        if h.op == op::RST {
            self.remove_conn(key);
            return;
        }
        let bogus = if h.dst_cid != HOST_CID {
            Some("destination is not the host")
        } else if h.kind != TYPE_STREAM {
            Some("socket type is not stream")
        } else if h.len > MAX_PAYLOAD || u64::from(h.len) > cursor.remaining() {
            Some("payload length does not match the buffer")
        } else if h.op != op::RW && h.len != 0 {
            Some("payload on a control packet")
        } else {
            None
        };
        if let Some(why) = bogus {
            guest_warn!(
                self.counters,
                op = h.op,
                len = h.len,
                why,
                "virtio-vsock: bogus packet"
            );
            if self.conns.contains_key(&key) {
                self.reset_conn(key, why);
            } else {
                self.counters.add_error();
                self.queue_rst(key);
            }
            return;
        }
        if h.op == op::REQUEST {
            self.guest_connect(key, &h);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            guest_warn!(
                self.counters,
                op = h.op,
                port = h.dst_port,
                "virtio-vsock: packet for no connection"
            );
            self.counters.add_error();
            self.queue_rst(key);
            return;
        };
        conn.update_peer_credit(h.buf_alloc, h.fwd_cnt);
        match h.op {
            op::RESPONSE if conn.state == ConnState::AwaitingResponse => {
                conn.state = ConnState::Established;
                let reply = format!("OK {}\n", key.local_port);
                // The host socket is fresh and empty; a short write means
                // the host program is gone.
                if !matches!(conn.stream.write(reply.as_bytes()), Ok(n) if n == reply.len()) {
                    self.reset_conn(key, "host socket refused the OK line");
                }
            }
            op::RW if conn.state == ConnState::Established && !conn.guest_shut_send => {
                let len = h.len as usize;
                let payload = &mut self.bounce[..len];
                if !matches!(cursor.read(payload), Ok(n) if n == len) {
                    self.reset_conn(key, "payload unreadable");
                    return;
                }
                match conn.push_from_guest(payload) {
                    Ok(()) => self.counters.add_bytes_written(len as u64),
                    Err(e) => self.reset_conn(key, &e.to_string()),
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => conn.need_credit_update = true,
            op::SHUTDOWN => {
                conn.guest_shut_rcv |= h.flags & SHUTDOWN_RCV != 0;
                conn.guest_shut_send |= h.flags & SHUTDOWN_SEND != 0;
                if conn.guest_shut_rcv && conn.guest_shut_send {
                    conn.state = ConnState::Draining;
                }
                self.after_host_write(key);
            }
            other => {
                let why = format!("operation {other} not valid in state {:?}", conn.state);
                self.reset_conn(key, &why);
            }
        }
    }

    fn guest_connect(&mut self, key: ConnKey, h: &Header) {
        if self.conns.contains_key(&key) {
            self.reset_conn(key, "REQUEST for an existing connection");
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            guest_warn!(
                self.counters,
                port = h.dst_port,
                "virtio-vsock: connection limit reached"
            );
            self.counters.add_error();
            self.queue_rst(key);
            return;
        }
        let path = listener_path(&self.uds_path, h.dst_port);
        let conn =
            connect_nonblocking(&path).and_then(|s| Connection::new(s, ConnState::Established));
        match conn {
            Ok(mut conn) => {
                conn.update_peer_credit(h.buf_alloc, h.fwd_cnt);
                conn.need_response = true;
                self.insert_conn(key, conn);
            }
            Err(e) => {
                guest_warn!(self.counters, path = %path.display(), error = %e, "virtio-vsock: guest connection refused");
                self.queue_rst(key);
            }
        }
    }

    // ---- host → guest ----

    fn next_rx_item(&self) -> Option<RxItem> {
        if let Some(h) = self.control.front() {
            return Some(RxItem::Control(*h));
        }
        for (key, conn) in &self.conns {
            if conn.need_response {
                return Some(RxItem::Response(*key));
            }
            if conn.need_credit_update {
                return Some(RxItem::CreditUpdate(*key));
            }
            if conn.state == ConnState::Established
                && conn.host_readable
                && !conn.guest_shut_rcv
                && conn.peer_credit() > 0
            {
                return Some(RxItem::Data(*key));
            }
        }
        None
    }

    /// Moves pending packets into rx buffers while both exist.
    fn pump_rx(&mut self) {
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let mem = active.mem.clone();
        let mut sent = false;
        let limit = usize::from(active.queue_size(RX)) * 2 + 1;
        for _ in 0..limit {
            let Some(item) = self.next_rx_item() else {
                break;
            };
            let Some(active) = self.active.as_mut() else {
                return;
            };
            let chain = match active.pop(RX) {
                Popped::Empty => break,
                Popped::Invalid { head, .. } => {
                    self.counters.add_error();
                    active.complete(RX, head, 0);
                    sent = true;
                    continue;
                }
                Popped::Chain(chain) => chain,
            };
            let room = chain.writable_len();
            if room < HEADER_LEN as u64 {
                guest_warn!(
                    self.counters,
                    room,
                    "virtio-vsock: rx buffer smaller than a header"
                );
                self.counters.add_error();
                active.complete(RX, chain.head, 0);
                sent = true;
                continue;
            }
            let max_payload = (room - HEADER_LEN as u64).min(u64::from(MAX_PAYLOAD)) as u32;
            match self.build_rx_packet(item, max_payload) {
                Some((h, n)) => {
                    let mut out = SegmentCursor::new(&mem, &chain.writable);
                    let ok = out.write(&h.encode()).is_ok()
                        && out.write(&self.bounce[..n as usize]).is_ok();
                    if !ok {
                        self.counters.add_error();
                    }
                    self.counters.add_bytes_read(u64::from(n));
                    if let Some(active) = self.active.as_mut() {
                        active.complete(RX, chain.head, HEADER_LEN as u32 + n);
                    }
                    sent = true;
                }
                None => {
                    // Nothing to send after all (host socket drained).
                    if let Some(active) = self.active.as_mut() {
                        active.unpop(RX);
                    }
                }
            }
        }
        if sent {
            if let Some(active) = self.active.as_mut() {
                active.notify(RX);
            }
        }
    }

    /// Builds the packet for `item`; payload bytes go to `self.bounce`.
    /// Returns `None` if the item turned out to have nothing to send.
    fn build_rx_packet(&mut self, item: RxItem, max_payload: u32) -> Option<(Header, u32)> {
        match item {
            RxItem::Control(h) => {
                self.control.pop_front();
                Some((h, 0))
            }
            RxItem::Response(key) => {
                let mut h = self.header(key, op::RESPONSE);
                let conn = self.conns.get_mut(&key)?;
                conn.need_response = false;
                h.fwd_cnt = conn.take_fwd_cnt();
                Some((h, 0))
            }
            RxItem::CreditUpdate(key) => {
                let mut h = self.header(key, op::CREDIT_UPDATE);
                let conn = self.conns.get_mut(&key)?;
                conn.need_credit_update = false;
                h.fwd_cnt = conn.take_fwd_cnt();
                Some((h, 0))
            }
            RxItem::Data(key) => {
                let mut h = self.header(key, op::RW);
                let conn = self.conns.get_mut(&key)?;
                let want = max_payload.min(conn.peer_credit()) as usize;
                if want == 0 {
                    // A header-only rx buffer has no room for data; reading
                    // zero bytes would look like the host's EOF.
                    return None;
                }
                match conn.stream.read(&mut self.bounce[..want]) {
                    Ok(0) => {
                        conn.state = ConnState::HostClosed;
                        h.op = op::SHUTDOWN;
                        h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                        h.fwd_cnt = conn.take_fwd_cnt();
                        Some((h, 0))
                    }
                    Ok(n) => {
                        // n <= MAX_PAYLOAD.
                        conn.sent_to_guest(n as u32);
                        h.len = n as u32;
                        h.fwd_cnt = conn.take_fwd_cnt();
                        Some((h, n as u32))
                    }
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::Interrupted =>
                    {
                        conn.host_readable = false;
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "virtio-vsock: host socket read failed");
                        self.counters.add_error();
                        self.remove_conn(key);
                        h.op = op::RST;
                        Some((h, 0))
                    }
                }
            }
        }
    }

    // ---- host sockets ----

    fn accept_host(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending_host.len() >= MAX_PENDING_HOST {
                        tracing::warn!(
                            "virtio-vsock: too many host connections in handshake, refused"
                        );
                        continue;
                    }
                    match PendingHost::new(stream) {
                        Ok(p) => {
                            self.pending_host.insert(p.stream.as_raw_fd(), p);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "virtio-vsock: host socket setup failed")
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::warn!(error = %e, "virtio-vsock: accept failed");
                    }
                    return;
                }
            }
        }
    }

    fn host_handshake(&mut self, fd: RawFd) {
        let Some(pending) = self.pending_host.get_mut(&fd) else {
            return;
        };
        match pending.read_step() {
            HandshakeStep::Incomplete => {}
            HandshakeStep::Refused(why) => {
                tracing::warn!(why, "virtio-vsock: host connection refused");
                self.pending_host.remove(&fd);
            }
            HandshakeStep::Connect(port) => {
                let Some(pending) = self.pending_host.remove(&fd) else {
                    return;
                };
                if self.conns.len() >= MAX_CONNECTIONS {
                    tracing::warn!(
                        "virtio-vsock: connection limit reached, host connection refused"
                    );
                    return;
                }
                let Some(local_port) = self.allocate_host_port(port) else {
                    tracing::warn!("virtio-vsock: no free host port");
                    return;
                };
                let key = ConnKey {
                    local_port,
                    peer_port: port,
                };
                match Connection::new(pending.stream, ConnState::AwaitingResponse) {
                    Ok(conn) => {
                        self.insert_conn(key, conn);
                        let h = self.header(key, op::REQUEST);
                        self.queue_control(h);
                    }
                    Err(e) => tracing::warn!(error = %e, "virtio-vsock: host socket setup failed"),
                }
            }
        }
    }

    fn allocate_host_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_host_port;
            self.next_host_port = self
                .next_host_port
                .checked_add(1)
                .unwrap_or(FIRST_HOST_PORT);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    fn host_ready(&mut self, fd: RawFd, ready: BackendReady) {
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if ready.readable || ready.hung_up {
            // A peer that shut its write side reads as EOF: the rx pump
            // turns that into SHUTDOWN for the guest. Until then the socket
            // is not polled for reading again (`host_readable`), so its
            // level-triggered hang-up does not keep waking the worker.
            conn.host_readable = true;
        }
        if ready.hung_up {
            // Nothing more can be written to the host either: stop polling
            // the socket altogether. Bytes still held for the host can
            // never be delivered, so the guest gets RST; with nothing held,
            // the pending EOF read ends the connection with SHUTDOWN.
            conn.host_hung_up = true;
            if conn.buffered() > 0 || conn.state == ConnState::Draining {
                self.reset_host_gone(key);
            }
            return;
        }
        if ready.writable {
            self.after_host_write(key);
        }
    }

    /// Resets a connection whose host socket hung up with guest bytes still
    /// held for it (a host-side event, so not counted as a guest fault).
    fn reset_host_gone(&mut self, key: ConnKey) {
        tracing::debug!(
            local = key.local_port,
            peer = key.peer_port,
            "virtio-vsock: host socket hung up with bytes undelivered, connection reset"
        );
        self.remove_conn(key);
        self.queue_rst(key);
    }

    /// Writes held bytes to the host socket, then carries out a guest
    /// shutdown whose data is now all out: half-close for `SEND`, close and
    /// `RST` for a full shutdown.
    fn after_host_write(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Err(e) = conn.flush_to_host() {
            self.reset_conn(key, &e.to_string());
            return;
        }
        if conn.buffered() > 0 {
            return;
        }
        if conn.state == ConnState::Draining {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            self.remove_conn(key);
            self.queue_rst(key);
        } else if conn.guest_shut_send {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> DeviceType {
        DeviceType::Vsock
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn offered_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn config_len(&self) -> usize {
        8
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) -> bool {
        false
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueues::new(ctx, 3, self.counters.clone())?);
        Ok(())
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match index {
            TX => self.process_tx(),
            RX => {
                self.pump_rx();
                false
            }
            // The event queue only holds buffers for transport events,
            // which this device never sends.
            _ => false,
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.conns.clear();
        self.by_fd.clear();
        self.pending_host.clear();
        self.control.clear();
    }

    fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    fn backend_fds(&self) -> Vec<FdInterest> {
        if self.active.is_none() {
            return Vec::new();
        }
        let mut fds = vec![FdInterest {
            fd: self.listener.as_raw_fd(),
            read: true,
            write: false,
        }];
        fds.extend(self.pending_host.keys().map(|&fd| FdInterest {
            fd,
            read: true,
            write: false,
        }));
        for conn in self.conns.values() {
            if conn.host_hung_up {
                // HANG_UP/ERROR would be reported whatever the interest.
                continue;
            }
            let read = conn.state == ConnState::Established
                && !conn.host_readable
                && !conn.guest_shut_rcv
                && conn.peer_credit() > 0;
            let write = conn.buffered() > 0;
            if read || write {
                fds.push(FdInterest {
                    fd: conn.stream.as_raw_fd(),
                    read,
                    write,
                });
            }
        }
        fds
    }

    fn process_backend(&mut self, fd: RawFd, ready: BackendReady) -> bool {
        if self.active.is_none() {
            return false;
        }
        if fd == self.listener.as_raw_fd() {
            self.accept_host();
        } else if self.pending_host.contains_key(&fd) {
            self.host_handshake(fd);
        } else {
            self.host_ready(fd, ready);
        }
        self.pump_rx();
        false
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // The socket file is ours; leave no stale path behind.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}
