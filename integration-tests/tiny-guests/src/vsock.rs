//! A minimal virtio-vsock stream driver for the tiny guests: one connection at a time,
//! receive buffers of one 64 KiB packet each, credit-based flow control both ways, and
//! no per-byte work in the guest (payloads are echoed from the receive buffer they
//! arrived in, or sent from a pattern buffer filled once).

use crate::virtio::{Mmio, Vq, F_NEXT, F_WRITE};
use crate::{peek, poke};

/// Header length.
pub const HDR: u64 = 44;
/// Largest payload per packet.
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Operations.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Reset.
pub const OP_RST: u16 = 3;
/// Shutdown.
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// Credit update.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Credit request.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// Receive buffers (one descriptor each).
pub const RX_N: u16 = 16;
/// Transmit slots (four descriptors each: header and up to three payload pieces).
pub const TX_SLOTS: u16 = 8;
/// Receive buffers start here, `RX_STRIDE` apart.
pub const RX_AREA: u64 = 0x200_0000;
/// Distance between receive buffers.
pub const RX_STRIDE: u64 = 0x1_1000;
/// Transmit headers, 64 bytes per slot.
pub const TX_HDR_AREA: u64 = 0x1f0_0000;
/// What this guest tells the device it may have outstanding (its receive credit).
pub const GUEST_BUF_ALLOC: u32 = 256 * 1024;

/// A packet header as read from a receive buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Type (1 = stream).
    pub kind: u16,
    /// Operation.
    pub op: u16,
    /// Flags.
    pub flags: u32,
    /// Sender's buffer space.
    pub buf_alloc: u32,
    /// Sender's forwarded count.
    pub fwd_cnt: u32,
}

impl Header {
    /// Reads a header at `addr`.
    pub fn read(addr: u64) -> Header {
        // SAFETY: `addr` is a receive buffer in the vsock area.
        unsafe {
            Header {
                src_cid: peek(addr),
                dst_cid: peek(addr + 8),
                src_port: peek(addr + 16),
                dst_port: peek(addr + 20),
                len: peek(addr + 24),
                kind: peek(addr + 28),
                op: peek(addr + 30),
                flags: peek(addr + 32),
                buf_alloc: peek(addr + 36),
                fwd_cnt: peek(addr + 40),
            }
        }
    }

    /// Writes the header at `addr`.
    pub fn write(&self, addr: u64) {
        // SAFETY: `addr` is a transmit header slot in the vsock area.
        unsafe {
            poke(addr, self.src_cid);
            poke(addr + 8, self.dst_cid);
            poke(addr + 16, self.src_port);
            poke(addr + 20, self.dst_port);
            poke(addr + 24, self.len);
            poke(addr + 28, self.kind);
            poke(addr + 30, self.op);
            poke(addr + 32, self.flags);
            poke(addr + 36, self.buf_alloc);
            poke(addr + 40, self.fwd_cnt);
        }
    }
}

/// What happened on the receive side, for the caller's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A connection request from the host.
    Request {
        /// Host port.
        peer: u32,
        /// Our port.
        local: u32,
    },
    /// Our request was accepted.
    Response,
    /// The peer reset a connection (our port).
    Rst(u32),
    /// The peer shut down (flags).
    Shutdown(u32),
}

/// The driver.
#[derive(Debug)]
pub struct Vsock {
    /// The window.
    pub mmio: Mmio,
    /// Queue 0.
    pub rx: Vq,
    /// Queue 1.
    pub tx: Vq,
    /// Queue 2 (unused by the device, set up as required).
    pub ev: Vq,
    /// Our CID.
    pub cid: u64,
    /// Our port and the peer's, of the current connection.
    pub local: u32,
    /// Peer port.
    pub peer: u32,
    /// Peer's advertised buffer.
    pub peer_buf_alloc: u32,
    /// Peer's forwarded count.
    pub peer_fwd_cnt: u32,
    /// Bytes we sent on the connection.
    pub tx_cnt: u32,
    /// Bytes we consumed (echoed) on the connection.
    pub fwd_cnt: u32,
    /// Per transmit slot: busy, and the receive buffer to give back when done.
    slots: [Option<Option<(u16, u32)>>; TX_SLOTS as usize],
    /// Receive buffers holding data to echo, in order: (buffer, length).
    pending: [(u16, u32); RX_N as usize],
    pending_head: usize,
    pending_len: usize,
    /// Whether received data is queued for echo (else it is consumed at once).
    pub echo: bool,
    /// Payload bytes received.
    pub rx_bytes: u64,
    /// Packets received plus transmissions completed (idle detection).
    pub progress: u64,
    /// The `fwd_cnt` last sent to the device.
    advertised_fwd: u32,
}

impl Vsock {
    /// Brings up the device with queue pages `page..page + 3` and posts every receive
    /// buffer.
    pub fn new(mmio: Mmio, page: u64) -> Option<Vsock> {
        if !mmio.begin(0) {
            return None;
        }
        let rx = Vq::new(page, RX_N);
        let tx = Vq::new(page + 1, TX_SLOTS * 4);
        let ev = Vq::new(page + 2, 4);
        mmio.set_queue(0, &rx);
        mmio.set_queue(1, &tx);
        mmio.set_queue(2, &ev);
        let mut v = Vsock {
            mmio,
            rx,
            tx,
            ev,
            cid: mmio.config_u64(0),
            local: 0,
            peer: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            slots: [None; TX_SLOTS as usize],
            pending: [(0, 0); RX_N as usize],
            pending_head: 0,
            pending_len: 0,
            echo: false,
            rx_bytes: 0,
            progress: 0,
            advertised_fwd: 0,
        };
        for i in 0..RX_N {
            v.rx.set_desc(
                i,
                RX_AREA + u64::from(i) * RX_STRIDE,
                HDR as u32 + MAX_PAYLOAD,
                F_WRITE,
                0,
            );
            v.rx.push(i);
        }
        if v.mmio.driver_ok() & crate::virtio::NEEDS_RESET != 0 {
            return None;
        }
        v.mmio.notify(0);
        Some(v)
    }

    fn repost(&mut self, id: u16) {
        self.rx.push(id);
        self.mmio.notify(0);
    }

    /// Credit the peer gives us now.
    pub fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// A header from us to the current peer.
    pub fn header(&self, op: u16, len: u32, flags: u32) -> Header {
        Header {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port: self.local,
            dst_port: self.peer,
            len,
            kind: 1,
            op,
            flags,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    fn free_slot(&mut self) -> Option<u16> {
        (0..TX_SLOTS).find(|&s| self.slots[usize::from(s)].is_none())
    }

    /// Sends `h` with `payload` pieces `(addr, len)` (at most 3) from slot `s`;
    /// `give_back` is the receive buffer to repost when the device is done.
    fn post(&mut self, s: u16, h: &Header, payload: &[(u64, u32)], give_back: Option<(u16, u32)>) {
        let hdr = TX_HDR_AREA + u64::from(s) * 64;
        h.write(hdr);
        self.advertised_fwd = h.fwd_cnt;
        let d0 = s * 4;
        let flags = if payload.is_empty() { 0 } else { F_NEXT };
        self.tx.set_desc(d0, hdr, HDR as u32, flags, d0 + 1);
        for (i, &(addr, len)) in payload.iter().enumerate() {
            let d = d0 + 1 + i as u16;
            let last = i + 1 == payload.len();
            self.tx
                .set_desc(d, addr, len, if last { 0 } else { F_NEXT }, d + 1);
        }
        self.slots[usize::from(s)] = Some(give_back);
        self.tx.push(d0);
        self.mmio.notify(1);
    }

    /// Sends a packet, waiting (and handling events) until a slot is free. Returns
    /// false on timeout.
    pub fn send(&mut self, h: &Header, payload: &[(u64, u32)]) -> bool {
        for _ in 0..crate::virtio::SPINS {
            if let Some(s) = self.free_slot() {
                self.post(s, h, payload, None);
                return true;
            }
            self.poll_tx();
            core::hint::spin_loop();
        }
        false
    }

    /// Sends `len` raw bytes at `addr` as one packet (a hostile driver's malformed
    /// packets), waiting for a free slot. Returns false on timeout.
    pub fn send_bytes(&mut self, addr: u64, len: u32) -> bool {
        for _ in 0..crate::virtio::SPINS {
            if let Some(s) = self.free_slot() {
                let d0 = s * 4;
                self.tx.set_desc(d0, addr, len, 0, 0);
                self.slots[usize::from(s)] = Some(None);
                self.tx.push(d0);
                self.mmio.notify(1);
                return true;
            }
            self.poll_tx();
            core::hint::spin_loop();
        }
        false
    }

    /// Sends a control packet on the current connection.
    pub fn send_ctl(&mut self, op: u16, flags: u32) -> bool {
        let h = self.header(op, 0, flags);
        self.send(&h, &[])
    }

    /// Takes back finished transmit slots (reposting echoed receive buffers).
    pub fn poll_tx(&mut self) {
        while let Some((id, _)) = self.tx.pop_used() {
            self.progress += 1;
            let s = (id / 4) as usize;
            if let Some(Some(Some((rx_id, len)))) = self.slots.get(s).copied() {
                self.fwd_cnt = self.fwd_cnt.wrapping_add(len);
                self.repost(rx_id);
            }
            if let Some(slot) = self.slots.get_mut(s) {
                *slot = None;
            }
        }
    }

    /// Echoes queued data while credit and slots allow.
    fn pump_echo(&mut self) {
        while self.pending_len > 0 {
            let (id, len) = self.pending[self.pending_head];
            if self.credit() < len {
                return;
            }
            let Some(s) = self.free_slot() else { return };
            let h = self.header(OP_RW, len, 0);
            let buf = RX_AREA + u64::from(id) * RX_STRIDE + HDR;
            self.post(s, &h, &[(buf, len)], Some((id, len)));
            self.tx_cnt = self.tx_cnt.wrapping_add(len);
            self.pending_head = (self.pending_head + 1) % RX_N as usize;
            self.pending_len -= 1;
        }
    }

    /// Handles everything the device returned; the first connection event, if any.
    pub fn poll(&mut self) -> Option<Event> {
        self.poll_tx();
        let mut event = None;
        while event.is_none() {
            let Some((id, _)) = self.rx.pop_used() else {
                break;
            };
            self.progress += 1;
            let id = id as u16 % RX_N;
            let buf = RX_AREA + u64::from(id) * RX_STRIDE;
            let h = Header::read(buf);
            if h.src_cid == HOST_CID && (self.local == 0 || h.dst_port == self.local) {
                self.peer_buf_alloc = h.buf_alloc;
                self.peer_fwd_cnt = h.fwd_cnt;
            }
            let mut keep = false;
            match h.op {
                OP_REQUEST => {
                    event = Some(Event::Request {
                        peer: h.src_port,
                        local: h.dst_port,
                    })
                }
                OP_RESPONSE => event = Some(Event::Response),
                OP_RST => event = Some(Event::Rst(h.dst_port)),
                OP_SHUTDOWN => event = Some(Event::Shutdown(h.flags)),
                OP_RW => {
                    self.rx_bytes += u64::from(h.len);
                    if self.echo && self.pending_len < RX_N as usize {
                        let at = (self.pending_head + self.pending_len) % RX_N as usize;
                        self.pending[at] = (id, h.len);
                        self.pending_len += 1;
                        keep = true;
                    } else {
                        self.fwd_cnt = self.fwd_cnt.wrapping_add(h.len);
                    }
                }
                OP_CREDIT_REQUEST => {
                    self.repost(id);
                    self.send_ctl(OP_CREDIT_UPDATE, 0);
                    continue;
                }
                _ => {}
            }
            if !keep {
                self.repost(id);
            }
        }
        if self.echo {
            self.pump_echo();
        }
        // Data consumed since the last header we sent: tell the device, or it runs
        // out of credit for us once our echoes (which carried older counts) are done.
        if self.local != 0 && self.fwd_cnt.wrapping_sub(self.advertised_fwd) >= GUEST_BUF_ALLOC / 4
        {
            if let Some(s) = self.free_slot() {
                let h = self.header(OP_CREDIT_UPDATE, 0, 0);
                self.post(s, &h, &[], None);
            }
        }
        event
    }

    /// Polls until an event arrives; `None` after [`crate::virtio::SPINS`] polls
    /// without any progress.
    pub fn wait_event(&mut self) -> Option<Event> {
        let mut idle = 0;
        while idle < crate::virtio::SPINS {
            let before = self.progress;
            if let Some(e) = self.poll() {
                return Some(e);
            }
            idle = if self.progress == before { idle + 1 } else { 0 };
            core::hint::spin_loop();
        }
        None
    }

    /// Whether data is still waiting to be echoed or in flight.
    pub fn busy(&self) -> bool {
        self.pending_len > 0 || self.slots.iter().any(Option::is_some)
    }
}
