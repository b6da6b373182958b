//! Validation of a guest descriptor chain and byte cursors over it.
//!
//! `virtio-queue` walks the descriptor table (bounding loops by the queue
//! size and indirect tables by their length) but ends a broken chain
//! silently. [`parse_chain`] turns that walk into an explicit verdict: a
//! chain whose walk stopped on a descriptor that still had `NEXT` set is a
//! loop, a bad `next` index or an unreadable descriptor; every buffer must
//! lie inside guest memory (it may span a region boundary; copies go through
//! `vm-memory`, which splits them per region); readable buffers must precede
//! writable ones; the descriptor count is capped.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _, Permissions};

use crate::GuestMemory;

/// Most descriptors one chain may have (direct and indirect together).
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// `VIRTIO_F_INDIRECT_DESC`: no device here offers it, so no driver may use
/// indirect descriptors.
pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;

const DESC_F_NEXT: u16 = 1;
const DESC_F_INDIRECT: u16 = 4;

/// Whether the direct chain starting at `head` in the descriptor table at
/// `table` (of `size` entries) holds an indirect descriptor. Reads at most
/// `size` descriptors; an unreadable descriptor or a bad `next` ends the walk
/// with `false` (the full walk in [`parse_chain`] refuses such chains). A
/// guest racing this check can at worst get an indirect table walked and
/// validated like any chain.
pub fn uses_indirect(mem: &GuestMemory, table: u64, size: u16, head: u16) -> bool {
    let mut index = head;
    for _ in 0..size {
        let Some(at) = table.checked_add(u64::from(index) * 16) else {
            return false;
        };
        let (Ok(flags), Ok(next)) = (
            mem.read_obj::<u16>(GuestAddress(at.wrapping_add(12))),
            mem.read_obj::<u16>(GuestAddress(at.wrapping_add(14))),
        ) else {
            return false;
        };
        if flags & DESC_F_INDIRECT != 0 {
            return true;
        }
        if flags & DESC_F_NEXT == 0 || next >= size {
            return false;
        }
        index = next;
    }
    false
}

/// Why a descriptor chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The walk stopped on a descriptor with `NEXT` set: a loop, a `next`
    /// index past the table, an unreadable or nested indirect table, or a
    /// total length above 4 GiB.
    #[error(
        "descriptor chain is broken (loop, bad next index, bad indirect table or length overflow)"
    )]
    Broken,
    /// More than [`MAX_CHAIN_DESCRIPTORS`] descriptors.
    #[error("descriptor chain has more than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooLong,
    /// A buffer is not inside guest memory.
    #[error("descriptor buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory {
        /// Buffer start.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// An indirect descriptor although `VIRTIO_F_INDIRECT_DESC` was not
    /// negotiated.
    #[error("indirect descriptor without VIRTIO_F_INDIRECT_DESC negotiated")]
    IndirectNotNegotiated,
}

/// One guest buffer, already checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A validated descriptor chain: its head index and its buffers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedChain {
    /// Index of the head descriptor, to return in the used ring.
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Segment>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Segment>,
}

impl ParsedChain {
    /// Total bytes the device may read.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Total bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// Walks and validates a chain popped from a queue.
pub fn parse_chain<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
) -> Result<ParsedChain, ChainError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut parsed = ParsedChain {
        head: chain.head_index(),
        ..ParsedChain::default()
    };
    let mut last_has_next = false;
    let mut count = 0usize;
    for desc in chain {
        count += 1;
        if count > MAX_CHAIN_DESCRIPTORS {
            return Err(ChainError::TooLong);
        }
        last_has_next = desc.has_next();
        let (addr, len) = (desc.addr(), desc.len());
        let access = if desc.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if len > 0 && !mem.check_range(addr, len as usize, access) {
            return Err(ChainError::OutsideMemory { addr: addr.0, len });
        }
        let segment = Segment { addr, len };
        if desc.is_write_only() {
            parsed.writable.push(segment);
        } else if parsed.writable.is_empty() {
            parsed.readable.push(segment);
        } else {
            return Err(ChainError::ReadableAfterWritable);
        }
    }
    if last_has_next || count == 0 {
        return Err(ChainError::Broken);
    }
    Ok(parsed)
}

/// A sequential cursor over a list of validated segments.
#[derive(Debug)]
pub struct SegmentCursor<'a> {
    mem: &'a GuestMemory,
    segments: &'a [Segment],
    index: usize,
    offset: u32,
    done: u64,
}

impl<'a> SegmentCursor<'a> {
    /// A cursor at the start of `segments`.
    pub fn new(mem: &'a GuestMemory, segments: &'a [Segment]) -> Self {
        Self {
            mem,
            segments,
            index: 0,
            offset: 0,
            done: 0,
        }
    }

    /// Bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.done
    }

    /// Bytes left.
    pub fn remaining(&self) -> u64 {
        let rest: u64 = self
            .segments
            .iter()
            .skip(self.index)
            .map(|s| u64::from(s.len))
            .sum();
        rest - u64::from(self.offset)
    }

    /// Applies `f` to the next guest ranges, at most `want` bytes in all;
    /// `f` gets the guest address and the byte range of the caller's buffer
    /// and returns whether the copy worked. Returns the bytes covered.
    fn walk(
        &mut self,
        want: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
    ) -> Result<usize, vm_memory::GuestMemoryError> {
        let mut pos = 0usize;
        while pos < want && self.index < self.segments.len() {
            let seg = self.segments[self.index];
            let left_in_seg = (seg.len - self.offset) as usize;
            let n = left_in_seg.min(want - pos);
            // `offset < len` keeps this inside the segment, which was
            // checked against guest memory; checked_add guards the rest.
            let addr = seg
                .addr
                .checked_add(u64::from(self.offset))
                .ok_or(vm_memory::GuestMemoryError::InvalidGuestAddress(seg.addr))?;
            if n > 0 && !f(addr, pos..pos + n) {
                return Err(vm_memory::GuestMemoryError::InvalidGuestAddress(addr));
            }
            pos += n;
            self.done += n as u64;
            self.offset += n as u32;
            if self.offset == seg.len {
                self.index += 1;
                self.offset = 0;
            }
        }
        Ok(pos)
    }

    /// Copies guest bytes into `buf`; returns how many (fewer at the end).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, vm_memory::GuestMemoryError> {
        let mem = self.mem;
        let len = buf.len();
        self.walk(len, |addr, range| {
            mem.read_slice(&mut buf[range], addr).is_ok()
        })
    }

    /// Copies `buf` into guest memory; returns how many bytes fit.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, vm_memory::GuestMemoryError> {
        let mem = self.mem;
        let len = buf.len();
        self.walk(len, |addr, range| {
            mem.write_slice(&buf[range], addr).is_ok()
        })
    }

    /// Skips up to `n` bytes; returns how many were skipped.
    pub fn skip(&mut self, n: u64) -> u64 {
        let mut left = n;
        while left > 0 && self.index < self.segments.len() {
            let seg = self.segments[self.index];
            let step = u64::from(seg.len - self.offset).min(left);
            left -= step;
            self.done += step;
            // step <= seg.len - offset, so this stays within u32.
            self.offset += step as u32;
            if self.offset == seg.len {
                self.index += 1;
                self.offset = 0;
            }
        }
        n - left
    }
}

/// Splits writable segments into (data, last byte) for devices whose status
/// byte is the final writable byte (virtio-blk). `None` if no writable byte.
pub fn split_last_byte(writable: &[Segment]) -> Option<(Vec<Segment>, GuestAddress)> {
    let mut segs: Vec<Segment> = writable.iter().copied().filter(|s| s.len > 0).collect();
    let last = segs.pop()?;
    let status = last.addr.checked_add(u64::from(last.len) - 1)?;
    if last.len > 1 {
        segs.push(Segment {
            addr: last.addr,
            len: last.len - 1,
        });
    }
    Some((segs, status))
}
