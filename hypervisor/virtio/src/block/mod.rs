//! virtio-blk (virtio 1.2 section 5.2) over a [`DiskBackend`].
//!
//! Requests are `header (16 bytes, readable) | data | status (1 byte, the
//! last writable byte)`. Every field comes from the guest: the header may be
//! short, the sector may overflow or point past the end, the data may not be
//! a whole number of sectors, the request type may be unknown. Each such
//! request completes with `VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP` and a
//! log line; a chain with no writable byte for the status is returned with
//! nothing written. Data moves through one bounded bounce buffer, so a
//! request near 4 GiB costs time, never memory. A read-only disk refuses
//! writes and discards before touching the file.

mod backend;

pub use backend::{BackendError, DiskBackend, DiskError, SECTOR_SIZE};

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use crate::chain::{split_last_byte, ParsedChain, Segment, SegmentCursor};
use crate::counters::{guest_warn, DeviceCounters};
use crate::device::{
    read_config_bytes, ActivateContext, ActivateError, DeviceType, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::queue::ActiveQueues;
use crate::GuestMemory;

/// Request types.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Device id string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Discard.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// I/O error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Feature bits.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Read-only disk.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Flush command.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Discard command.
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;

/// Length of the `GET_ID` string.
pub const ID_BYTES: usize = 20;
/// Most discard segments in one request.
pub const MAX_DISCARD_SEGMENTS: u32 = 16;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
const BOUNCE_BYTES: usize = 128 * 1024;
const CONFIG_BYTES: usize = 60;

/// The block device.
#[derive(Debug)]
pub struct Block {
    disk: DiskBackend,
    id: [u8; ID_BYTES],
    config: [u8; CONFIG_BYTES],
    features: u64,
    acked_features: u64,
    active: Option<ActiveQueues>,
    counters: Arc<DeviceCounters>,
    bounce: Vec<u8>,
}

/// The outcome of one request: status byte and bytes written to the guest
/// data buffers.
struct Outcome {
    status: u8,
    data_written: u32,
}

impl Outcome {
    fn status(status: u8) -> Self {
        Self {
            status,
            data_written: 0,
        }
    }
}

impl Block {
    /// A block device over `disk`; `id` is the `GET_ID` string (truncated to
    /// 20 bytes).
    pub fn new(disk: DiskBackend, id: &str) -> Self {
        let mut features = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH;
        if disk.is_read_only() {
            features |= VIRTIO_BLK_F_RO;
        } else {
            features |= VIRTIO_BLK_F_DISCARD;
        }
        let mut config = [0u8; CONFIG_BYTES];
        config[0..8].copy_from_slice(&(disk.capacity() / SECTOR_SIZE).to_le_bytes());
        // seg_max: leave room for the header and status descriptors.
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        // max_discard_sectors, max_discard_seg, discard_sector_alignment.
        config[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        config[40..44].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
        config[44..48].copy_from_slice(&8u32.to_le_bytes());
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Self {
            disk,
            id: id_bytes,
            config,
            features,
            acked_features: 0,
            active: None,
            counters: Arc::default(),
            bounce: vec![0; BOUNCE_BYTES],
        }
    }

    fn execute(&mut self, mem: &GuestMemory, chain: &ParsedChain, data: &[Segment]) -> Outcome {
        let mut header = [0u8; 16];
        let mut readable = SegmentCursor::new(mem, &chain.readable);
        if !matches!(readable.read(&mut header), Ok(16)) {
            guest_warn!(
                self.counters,
                "virtio-blk: request header shorter than 16 bytes"
            );
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        let result = match kind {
            VIRTIO_BLK_T_IN => self.read(mem, sector, data),
            VIRTIO_BLK_T_OUT => self.write(sector, &mut readable),
            VIRTIO_BLK_T_FLUSH => self.disk.flush().map(|()| 0),
            VIRTIO_BLK_T_GET_ID => {
                let mut out = SegmentCursor::new(mem, data);
                out.write(&self.id)
                    .map(|n| n as u32)
                    .map_err(|e| DiskError::Io(std::io::Error::other(e)))
            }
            VIRTIO_BLK_T_DISCARD if self.acked_features & VIRTIO_BLK_F_DISCARD != 0 => {
                self.discard(&mut readable)
            }
            other => {
                guest_warn!(
                    self.counters,
                    kind = other,
                    "virtio-blk: unsupported request type"
                );
                return Outcome::status(VIRTIO_BLK_S_UNSUPP);
            }
        };
        match result {
            Ok(data_written) => Outcome {
                status: VIRTIO_BLK_S_OK,
                data_written,
            },
            Err(e) => {
                guest_warn!(self.counters, kind, sector, error = %e, "virtio-blk: request failed");
                Outcome::status(VIRTIO_BLK_S_IOERR)
            }
        }
    }

    fn disk_range(sector: u64, len: u64) -> Result<u64, DiskError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::Io(std::io::Error::other(format!(
                "data length {len} is not a whole number of sectors"
            ))));
        }
        sector
            .checked_mul(SECTOR_SIZE)
            .ok_or(DiskError::OutOfRange {
                offset: u64::MAX,
                len,
                capacity: 0,
            })
    }

    fn read(&mut self, mem: &GuestMemory, sector: u64, data: &[Segment]) -> Result<u32, DiskError> {
        let len: u64 = data.iter().map(|s| u64::from(s.len)).sum();
        let mut pos = Self::disk_range(sector, len)?;
        self.disk.check(pos, len)?;
        // Straight from the file into the (validated) guest buffers.
        for seg in data {
            self.disk
                .read_into_guest(pos, mem, seg.addr, seg.len as usize)?;
            pos += u64::from(seg.len);
        }
        self.counters.add_bytes_read(len);
        // len fits: the chain's total length is below 4 GiB.
        Ok(len as u32)
    }

    fn write(&mut self, sector: u64, src: &mut SegmentCursor<'_>) -> Result<u32, DiskError> {
        if self.disk.is_read_only() {
            return Err(DiskError::ReadOnly);
        }
        let len = src.remaining();
        let mut pos = Self::disk_range(sector, len)?;
        self.disk.check(pos, len)?;
        while src.remaining() > 0 {
            let n = (src.remaining() as usize).min(self.bounce.len());
            let buf = &mut self.bounce[..n];
            src.read(buf)
                .map_err(|e| DiskError::Io(std::io::Error::other(e)))?;
            self.disk.write_at(pos, buf)?;
            pos += n as u64;
        }
        self.counters.add_bytes_written(len);
        Ok(0)
    }

    fn discard(&mut self, src: &mut SegmentCursor<'_>) -> Result<u32, DiskError> {
        if self.disk.is_read_only() {
            return Err(DiskError::ReadOnly);
        }
        let len = src.remaining();
        if len == 0 || !len.is_multiple_of(16) || len / 16 > u64::from(MAX_DISCARD_SEGMENTS) {
            return Err(DiskError::Io(std::io::Error::other(format!(
                "discard payload of {len} bytes is not 1..={MAX_DISCARD_SEGMENTS} segments"
            ))));
        }
        let mut ranges = Vec::new();
        for _ in 0..len / 16 {
            let mut seg = [0u8; 16];
            src.read(&mut seg)
                .map_err(|e| DiskError::Io(std::io::Error::other(e)))?;
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&seg[0..8]);
            let sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
            if flags & !1 != 0 {
                return Err(DiskError::Io(std::io::Error::other(format!(
                    "discard segment flags {flags:#x} unknown"
                ))));
            }
            let bytes = u64::from(sectors) * SECTOR_SIZE;
            let pos = Self::disk_range(u64::from_le_bytes(sector), bytes)?;
            self.disk.check(pos, bytes)?;
            ranges.push((pos, bytes));
        }
        // All segments are checked before any is applied.
        for (pos, bytes) in ranges {
            self.disk.discard(pos, bytes)?;
        }
        Ok(0)
    }

    fn process(&mut self, index: usize) -> bool {
        // Taken out for the batch so requests can borrow the rest of `self`.
        let Some(mut active) = self.active.take() else {
            return false;
        };
        let more = active.serve_batch(index, |mem, chain| self.serve(mem, chain));
        self.active = Some(active);
        more
    }

    /// Runs one request; returns the used length (data + status byte).
    fn serve(&mut self, mem: &GuestMemory, chain: &ParsedChain) -> u32 {
        let Some((data, status_addr)) = split_last_byte(&chain.writable) else {
            guest_warn!(
                self.counters,
                "virtio-blk: request without a writable status byte"
            );
            self.counters.add_error();
            return 0;
        };
        let outcome = self.execute(mem, chain, &data);
        if outcome.status != VIRTIO_BLK_S_OK {
            self.counters.add_error();
        }
        write_status(mem, status_addr, outcome.status);
        outcome.data_written.saturating_add(1)
    }
}

fn write_status(mem: &GuestMemory, addr: GuestAddress, status: u8) {
    // The address was checked with its segment; a failure here means the
    // memory map changed under us, which is only logged.
    if let Err(e) = mem.write_obj(status, addr) {
        tracing::error!(error = %e, "virtio-blk: cannot write status byte");
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn offered_features(&self) -> u64 {
        self.features
    }

    fn config_len(&self) -> usize {
        CONFIG_BYTES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) -> bool {
        // Only `writeback` is writable, and only with VIRTIO_BLK_F_CONFIG_WCE,
        // which is not offered.
        false
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let active = ActiveQueues::new(ctx, 1, self.counters.clone())?;
        self.acked_features = active.acked_features();
        self.active = Some(active);
        Ok(())
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize) -> bool {
        self.process(index)
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }

    fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }
}
