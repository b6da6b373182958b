//! An MSI-X table and pending bit array (PCI Local Bus 3.0, 6.8.2) as plain state:
//! the entries (message address, data, vector control), the function's enable and
//! function-mask bits, a pending bit per vector, and the routes derived from them.
//!
//! Every access comes from the guest: only aligned 4- and 8-byte accesses inside
//! the table or PBA are served (what the PCI specification allows software to
//! issue); anything else is reported as malformed and changes nothing. Only the
//! mask bit of vector control is kept (the other bits are reserved and read 0).
//!
//! A vector is *deliverable* while MSI-X is enabled, the function is not masked
//! and the vector's entry is not masked. [`MsixTable::route_changes`] reports,
//! since its last call, every vector whose route (its message while deliverable,
//! none otherwise) changed, so a VMM programs exactly those into its interrupt
//! routing; a vector signalled while masked is kept pending
//! ([`MsixTable::set_pending`]) and [`MsixTable::take_deliverable_pending`] hands
//! it out once it is deliverable again.

/// "No vector" in virtio-pci's vector registers.
pub const NO_VECTOR: u16 = 0xffff;
/// Bytes per table entry.
pub const ENTRY_BYTES: u64 = 16;
/// Largest table the capability can describe.
pub const MAX_VECTORS: u16 = 2048;
/// Message control: function mask.
pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Message control: MSI-X enable.
pub const CTRL_ENABLE: u16 = 1 << 15;

/// An MSI message as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsixMessage {
    /// Message address (upper and lower dwords).
    pub addr: u64,
    /// Message data.
    pub data: u32,
}

/// One function's MSI-X state.
#[derive(Debug, Clone)]
pub struct MsixTable {
    /// Per entry: address low, address high, data, vector control.
    entries: Vec<[u32; 4]>,
    pending: Vec<bool>,
    /// The route last reported per vector.
    routed: Vec<Option<MsixMessage>>,
    /// Vectors whose reported route may not have been applied (a failed update):
    /// reported again by the next [`MsixTable::route_changes`].
    unsynced: Vec<bool>,
    enabled: bool,
    function_mask: bool,
}

impl MsixTable {
    /// A table of `size` vectors (1..=2048; clamped), all masked, MSI-X disabled.
    pub fn new(size: u16) -> Self {
        let n = usize::from(size.clamp(1, MAX_VECTORS));
        MsixTable {
            entries: vec![[0, 0, 0, 1]; n],
            pending: vec![false; n],
            routed: vec![None; n],
            unsynced: vec![false; n],
            enabled: false,
            function_mask: false,
        }
    }

    /// Number of vectors.
    pub fn size(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Bytes of the table.
    pub fn table_bytes(&self) -> u64 {
        u64::from(self.size()) * ENTRY_BYTES
    }

    /// Bytes of the pending bit array (whole qwords).
    pub fn pba_bytes(&self) -> u64 {
        u64::from(self.size()).div_ceil(64) * 8
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the whole function is masked.
    pub fn function_masked(&self) -> bool {
        self.function_mask
    }

    /// Message control as the guest reads it: table size − 1, function mask, enable.
    pub fn control(&self) -> u16 {
        (self.size() - 1)
            | if self.function_mask {
                CTRL_FUNCTION_MASK
            } else {
                0
            }
            | if self.enabled { CTRL_ENABLE } else { 0 }
    }

    /// Sets the enable and function-mask bits (the writable bits of message control).
    /// Disabling MSI-X clears the pending bits: nothing held is delivered after a
    /// later enable.
    pub fn set_control(&mut self, enable: bool, function_mask: bool) {
        self.enabled = enable;
        self.function_mask = function_mask;
        if !enable {
            self.clear_pending();
        }
    }

    /// Whether vector `v`'s own mask bit is set (true for a vector that does not exist).
    pub fn entry_masked(&self, v: u16) -> bool {
        self.entries
            .get(usize::from(v))
            .is_none_or(|e| e[3] & 1 != 0)
    }

    /// Whether a message for vector `v` may be sent now.
    pub fn deliverable(&self, v: u16) -> bool {
        self.enabled && !self.function_mask && !self.entry_masked(v)
    }

    /// Vector `v`'s message (zero for a vector that does not exist).
    pub fn message(&self, v: u16) -> MsixMessage {
        self.entries
            .get(usize::from(v))
            .map_or(MsixMessage::default(), |e| MsixMessage {
                addr: u64::from(e[0]) | u64::from(e[1]) << 32,
                data: e[2],
            })
    }

    /// The route vector `v` should have: its message while deliverable.
    pub fn route(&self, v: u16) -> Option<MsixMessage> {
        self.deliverable(v).then(|| self.message(v))
    }

    /// `(entry, dword)` of a well-formed table access of `len` bytes at `offset`
    /// (aligned 4 or 8 bytes, inside the table).
    fn table_slot(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        let ok = matches!(len, 4 | 8)
            && offset.is_multiple_of(len as u64)
            && offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.table_bytes());
        ok.then_some((
            (offset / ENTRY_BYTES) as usize,
            ((offset % ENTRY_BYTES) / 4) as usize,
        ))
    }

    /// A guest read of the table at `offset` (from the table's start). Returns
    /// false, with `data` zeroed, when the access is malformed.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) -> bool {
        data.fill(0);
        let Some((entry, dword)) = self.table_slot(offset, data.len()) else {
            return false;
        };
        for (k, chunk) in data.chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&self.entries[entry][dword + k].to_le_bytes());
        }
        true
    }

    /// A guest write of the table at `offset`. Returns false when the access is
    /// malformed (nothing changes).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> bool {
        let Some((entry, dword)) = self.table_slot(offset, data.len()) else {
            return false;
        };
        for (k, chunk) in data.chunks(4).enumerate() {
            let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            // Vector control: only the mask bit is defined.
            let v = if dword + k == 3 { v & 1 } else { v };
            self.entries[entry][dword + k] = v;
        }
        true
    }

    /// A guest read of the PBA at `offset` (from the PBA's start). Returns false,
    /// with `data` zeroed, when the access is malformed.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) -> bool {
        data.fill(0);
        let ok = matches!(data.len(), 4 | 8)
            && offset.is_multiple_of(data.len() as u64)
            && offset
                .checked_add(data.len() as u64)
                .is_some_and(|end| end <= self.pba_bytes());
        if !ok {
            return false;
        }
        for (i, byte) in data.iter_mut().enumerate() {
            let first = (offset as usize + i) * 8;
            for bit in 0..8 {
                if self.pending.get(first + bit).copied().unwrap_or(false) {
                    *byte |= 1 << bit;
                }
            }
        }
        true
    }

    /// Whether vector `v` is pending.
    pub fn pending(&self, v: u16) -> bool {
        self.pending.get(usize::from(v)).copied().unwrap_or(false)
    }

    /// Marks vector `v` pending (it was signalled while not deliverable).
    pub fn set_pending(&mut self, v: u16) {
        if let Some(p) = self.pending.get_mut(usize::from(v)) {
            *p = true;
        }
    }

    /// The pending vectors that are deliverable now, their pending bits cleared:
    /// the caller sends their messages (after programming [`Self::route_changes`]).
    pub fn take_deliverable_pending(&mut self) -> Vec<u16> {
        let mut out = Vec::new();
        for v in 0..self.size() {
            if self.pending[usize::from(v)] && self.deliverable(v) {
                self.pending[usize::from(v)] = false;
                out.push(v);
            }
        }
        out
    }

    /// Every vector whose route changed since the last call (or whose last update
    /// failed: [`MsixTable::forget_routes`]), with its new route.
    pub fn route_changes(&mut self) -> Vec<(u16, Option<MsixMessage>)> {
        let mut out = Vec::new();
        for v in 0..self.size() {
            let i = usize::from(v);
            let route = self.route(v);
            if self.routed[i] != route || self.unsynced[i] {
                self.routed[i] = route;
                self.unsynced[i] = false;
                out.push((v, route));
            }
        }
        out
    }

    /// The update of `changes` (from [`MsixTable::route_changes`]) was not applied:
    /// report those vectors again next time.
    pub fn forget_routes(&mut self, changes: &[(u16, Option<MsixMessage>)]) {
        for &(v, _) in changes {
            if let Some(u) = self.unsynced.get_mut(usize::from(v)) {
                *u = true;
            }
        }
    }

    /// Clears every pending bit (MSI-X disabled, or the function reset: what was held
    /// belongs to the previous driver).
    pub fn clear_pending(&mut self) {
        self.pending.fill(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w32(t: &mut MsixTable, off: u64, v: u32) -> bool {
        t.write_table(off, &v.to_le_bytes())
    }

    #[test]
    fn entries_start_masked_and_only_the_mask_bit_of_vector_control_is_kept() {
        let mut t = MsixTable::new(3);
        assert_eq!(t.control(), 2);
        assert_eq!((t.table_bytes(), t.pba_bytes()), (48, 8));
        assert!((0..3).all(|v| t.entry_masked(v)));
        assert!(w32(&mut t, 0x1c, 0xffff_fffe));
        let mut d = [0xffu8; 4];
        assert!(t.read_table(0x1c, &mut d));
        assert_eq!(d, [0; 4]);
        assert!(!t.entry_masked(1));
        assert!(t.entry_masked(7), "absent vectors count as masked");
    }

    #[test]
    fn malformed_accesses_are_refused_and_change_nothing() {
        let mut t = MsixTable::new(2);
        let before = t.clone().entries;
        assert!(!t.write_table(0x02, &[1, 2, 3, 4]), "unaligned");
        assert!(!t.write_table(0x00, &[1, 2]), "2 bytes");
        assert!(!t.write_table(0x04, &[0; 8]), "8 bytes not qword aligned");
        assert!(!t.write_table(0x20, &[0; 4]), "past the table");
        assert!(!t.write_table(u64::MAX - 3, &[0; 4]), "wrapping");
        assert_eq!(t.entries, before);
        let mut d = [0xffu8; 2];
        assert!(!t.read_table(0, &mut d));
        assert_eq!(d, [0, 0]);
        let mut q = [0xffu8; 8];
        assert!(!t.read_pba(4, &mut q));
        assert!(!t.read_pba(8, &mut q[..4]), "past the PBA");
        assert!(t.read_pba(0, &mut q));
    }

    #[test]
    fn routes_follow_enable_and_both_masks_and_pending_waits_for_unmask() {
        let mut t = MsixTable::new(2);
        // Vector 1: an 8-byte address write, data, unmask.
        assert!(t.write_table(0x10, &0xfee0_1000u64.to_le_bytes()));
        assert!(w32(&mut t, 0x18, 0x41));
        assert!(w32(&mut t, 0x1c, 0));
        assert!(t.route_changes().is_empty(), "not enabled");
        t.set_control(true, false);
        let msg = MsixMessage {
            addr: 0xfee0_1000,
            data: 0x41,
        };
        assert_eq!(t.route_changes(), vec![(1, Some(msg))]);
        assert!(t.route_changes().is_empty(), "reported once");
        // Function mask: the route goes; a signal now is held.
        t.set_control(true, true);
        assert_eq!(t.route_changes(), vec![(1, None)]);
        t.set_pending(1);
        let mut q = [0u8; 8];
        assert!(t.read_pba(0, &mut q));
        assert_eq!(u64::from_le_bytes(q), 0b10);
        assert!(t.take_deliverable_pending().is_empty());
        t.set_control(true, false);
        assert_eq!(t.route_changes(), vec![(1, Some(msg))]);
        assert_eq!(t.take_deliverable_pending(), vec![1]);
        assert!(!t.pending(1));
        // Entry mask works the same way.
        assert!(w32(&mut t, 0x1c, 1));
        assert_eq!(t.route_changes(), vec![(1, None)]);
        t.set_pending(1);
        assert!(t.take_deliverable_pending().is_empty());
        assert!(w32(&mut t, 0x1c, 0));
        assert_eq!(t.take_deliverable_pending(), vec![1]);
        assert_eq!(t.control(), 1 | CTRL_ENABLE);
    }

    #[test]
    fn a_failed_route_update_is_reported_again_and_pending_bits_can_be_cleared() {
        let mut t = MsixTable::new(2);
        assert!(t.write_table(0x00, &0xfee0_0000u64.to_le_bytes()));
        assert!(w32(&mut t, 0x0c, 0));
        t.set_control(true, false);
        let changes = t.route_changes();
        assert_eq!(changes.len(), 1);
        assert!(t.route_changes().is_empty());
        t.forget_routes(&changes);
        assert_eq!(t.route_changes(), changes, "reported again after a failure");
        assert!(t.route_changes().is_empty());
        t.set_pending(1);
        t.clear_pending();
        assert!(!t.pending(1));
        let mut q = [0xffu8; 8];
        assert!(t.read_pba(0, &mut q));
        assert_eq!(q, [0; 8]);
    }
}
