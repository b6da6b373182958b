//! One vsock stream between a guest port and a host Unix socket: its state
//! and the credit accounting of both directions (virtio 1.2, 5.10.6.3).
//!
//! Guest → host: the device advertises [`CONN_BUF_ALLOC`] bytes of receive
//! buffer and counts in `fwd_cnt` what it has passed to the host socket. A
//! payload that would take the buffered bytes past the advertisement means
//! the guest ignored credit; the connection is reset, so the buffer never
//! exceeds [`CONN_BUF_ALLOC`].
//!
//! Host → guest: the device sends at most `peer_buf_alloc - (rx_cnt -
//! peer_fwd_cnt)` bytes, and reads from the host socket only that much.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

/// Receive buffer the device advertises per connection, and the hard cap on
/// bytes it holds for one connection.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: `REQUEST` sent to the guest, waiting for `RESPONSE`.
    AwaitingResponse,
    /// Data flows.
    Established,
    /// The host side closed: `SHUTDOWN` sent, waiting for the guest's `RST`.
    HostClosed,
    /// The guest shut down both directions while bytes for the host were
    /// still held: they are written out, then the host socket is closed and
    /// the guest gets its `RST`.
    Draining,
}

/// The (host port, guest port) pair naming a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Port on the host side (CID 2).
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
}

/// Why a guest payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The guest sent past the credit it was given.
    #[error("guest sent {len} bytes with only {free} bytes of credit")]
    CreditExceeded {
        /// Payload length.
        len: u32,
        /// Free credit.
        free: u32,
    },
    /// The host socket failed.
    #[error("host socket: {0}")]
    Host(#[from] io::Error),
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    /// The host side, non-blocking.
    pub stream: UnixStream,
    /// Lifecycle state.
    pub state: ConnState,
    /// Guest payload not yet accepted by the host socket.
    pending_to_host: VecDeque<u8>,
    /// Bytes passed to the host socket (our `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` last reported to the guest.
    reported_fwd_cnt: Wrapping<u32>,
    /// Guest's receive buffer and consumed count, from its last header.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Payload bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// The host socket may have data (cleared on `EAGAIN`).
    pub host_readable: bool,
    /// The host socket hung up or failed (`HANG_UP`/`ERROR` seen): it is no
    /// longer polled.
    pub host_hung_up: bool,
    /// A `RESPONSE` must be sent to the guest.
    pub need_response: bool,
    /// A `CREDIT_UPDATE` must be sent to the guest.
    pub need_credit_update: bool,
    /// The guest will receive no more (`SHUTDOWN` with `RCV`).
    pub guest_shut_rcv: bool,
    /// The guest will send no more (`SHUTDOWN` with `SEND`).
    pub guest_shut_send: bool,
}

impl Connection {
    /// A connection over `stream` (set non-blocking here).
    pub fn new(stream: UnixStream, state: ConnState) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            state,
            pending_to_host: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            reported_fwd_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            host_readable: false,
            host_hung_up: false,
            need_response: false,
            need_credit_update: false,
            guest_shut_rcv: false,
            guest_shut_send: false,
        })
    }

    /// Records the guest's credit fields from any packet it sent.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes the device may still send to the guest. A guest reporting a
    /// `fwd_cnt` ahead of what it was sent gets no more than its buffer.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Counts `n` payload bytes sent to the guest.
    pub fn sent_to_guest(&mut self, n: u32) {
        self.rx_cnt += Wrapping(n);
    }

    /// Our `fwd_cnt`, for headers we send (and marks it reported).
    pub fn take_fwd_cnt(&mut self) -> u32 {
        self.reported_fwd_cnt = self.fwd_cnt;
        self.fwd_cnt.0
    }

    /// Bytes held for the host socket.
    pub fn buffered(&self) -> usize {
        self.pending_to_host.len()
    }

    /// Takes a guest payload: writes what the host socket accepts now and
    /// holds the rest, within the advertised credit.
    pub fn push_from_guest(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let free =
            CONN_BUF_ALLOC.saturating_sub(u32::try_from(self.buffered()).unwrap_or(u32::MAX));
        if len > free {
            return Err(ConnError::CreditExceeded { len, free });
        }
        let mut written = 0;
        if self.pending_to_host.is_empty() {
            written = write_nonblocking(&mut self.stream, data)?;
            self.consumed(written);
        }
        self.pending_to_host.extend(&data[written..]);
        Ok(())
    }

    /// Writes held bytes to the host socket as far as it accepts them.
    pub fn flush_to_host(&mut self) -> Result<(), ConnError> {
        while !self.pending_to_host.is_empty() {
            let (front, _) = self.pending_to_host.as_slices();
            let n = write_nonblocking(&mut self.stream, front)?;
            if n == 0 {
                break;
            }
            self.pending_to_host.drain(..n);
            self.consumed(n);
        }
        Ok(())
    }

    fn consumed(&mut self, n: usize) {
        // n <= CONN_BUF_ALLOC, so it fits in u32.
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.reported_fwd_cnt).0 >= CONN_BUF_ALLOC / 4 {
            self.need_credit_update = true;
        }
    }
}

/// Writes without blocking; `Ok(0)` when the socket is full.
fn write_nonblocking(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    match stream.write(data) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}
