//! BAR placement in the guest's two MMIO windows: the 32-bit window
//! (`layout::PCI_MMIO32_START`, 256 MiB) and the 64-bit window above RAM
//! (`MemoryLayout::mmio64`, sized by `machine.mmio64_gib`).
//!
//! Each assigned device sits behind its own PCIe root port, so its BARs must lie in
//! that port's windows: one non-prefetchable window below 4 GiB (32-bit BARs and
//! 64-bit non-prefetchable BARs: bridges only forward non-prefetchable memory below
//! 4 GiB) and one 64-bit prefetchable window (GPU apertures, hundreds of GiB) in the
//! 64-bit window. Every BAR is placed at a multiple of its own size (natural
//! alignment, which PCI requires) and at least 4 KiB apart, so each can be a KVM
//! memory slot or a trapped page range. Inside a port's window the largest BARs come
//! first, which wastes nothing between power-of-two sizes; windows are whole MiB
//! (the bridge registers' granularity) aligned to their largest BAR.

use serde::Serialize;

/// What kind of memory BAR it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BarKind {
    /// 32-bit memory BAR.
    Mem32,
    /// 64-bit memory BAR, not prefetchable.
    Mem64,
    /// 64-bit prefetchable memory BAR.
    Mem64Prefetchable,
}

/// One BAR to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarRequest {
    /// Who asks, for error messages (`0000:41:00.0 BAR1`).
    pub owner: String,
    /// Size in bytes (a power of two; smaller than 4 KiB is rounded up to 4 KiB).
    pub size: u64,
    /// Kind.
    pub kind: BarKind,
}

/// Where a BAR landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BarPlacement {
    /// Guest-physical address.
    pub addr: u64,
    /// Bytes reserved there (the BAR size, at least 4 KiB).
    pub size: u64,
}

/// The smallest unit placed: one page, so that BARs never share a page.
pub const MIN_BAR_PLACEMENT: u64 = 4096;

/// Granularity of a root port's memory windows (the bridge registers hold address
/// bits 31:20 / 63:20).
pub const PORT_WINDOW_ALIGN: u64 = 1 << 20;

/// Where one device's BARs landed and the windows of the root port above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPlacement {
    /// The device's BARs, in request order.
    pub bars: Vec<BarPlacement>,
    /// The port's non-prefetchable window `(base, size)` below 4 GiB (32-bit and
    /// non-prefetchable 64-bit BARs), if the device has such BARs.
    pub mem: Option<(u64, u64)>,
    /// The port's 64-bit prefetchable window, if the device has prefetchable BARs.
    pub pref: Option<(u64, u64)>,
}

/// One device's BARs of one window class packed into a block: offsets in request
/// order (relative to the block), the block's length and alignment.
struct Block {
    device: usize,
    members: Vec<(usize, u64, u64)>,
    len: u64,
    align: u64,
    owner: String,
}

/// Packs `which` (indices into `reqs`) largest first: with power-of-two sizes every
/// offset is then a multiple of its BAR's size.
fn block(device: usize, reqs: &[BarRequest], which: Vec<usize>) -> Option<Block> {
    let mut order = which;
    if order.is_empty() {
        return None;
    }
    order.sort_by(|&a, &b| reqs[b].size.cmp(&reqs[a].size).then(a.cmp(&b)));
    let mut at = 0u64;
    let mut members = Vec::new();
    for &i in &order {
        let size = reqs[i].size.max(MIN_BAR_PLACEMENT);
        members.push((i, at, size));
        at = at.saturating_add(size);
    }
    let largest = reqs[order[0]].size.max(MIN_BAR_PLACEMENT);
    Some(Block {
        device,
        members,
        len: at.saturating_add(PORT_WINDOW_ALIGN - 1) & !(PORT_WINDOW_ALIGN - 1),
        align: largest.max(PORT_WINDOW_ALIGN),
        owner: reqs[order[0]].owner.clone(),
    })
}

/// Places the blocks (largest alignment first) from `window.0`; returns each block's
/// base, or the end it would need when the window is too small (`Err(needed_len)`).
fn place_blocks(blocks: &[Block], window: (u64, u64)) -> Result<Vec<u64>, (usize, u64)> {
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by(|&a, &b| {
        (blocks[b].align, blocks[b].len, blocks[a].device).cmp(&(
            blocks[a].align,
            blocks[a].len,
            blocks[b].device,
        ))
    });
    let (start, len) = window;
    let end = start.saturating_add(len);
    let mut next = start;
    let mut bases = vec![0; blocks.len()];
    let mut first_misfit = None;
    for i in order {
        let b = &blocks[i];
        let base = next.checked_next_multiple_of(b.align).unwrap_or(u64::MAX);
        let block_end = base.saturating_add(b.len);
        if block_end > end && first_misfit.is_none() {
            first_misfit = Some(i);
        }
        bases[i] = base;
        next = block_end;
    }
    match first_misfit {
        None => Ok(bases),
        Some(i) => Err((i, next.saturating_sub(start))),
    }
}

/// Places the BARs of each device (`devices[d]` its requests) behind its own root
/// port: per device, its non-prefetchable BARs (32-bit, and 64-bit non-prefetchable,
/// which a bridge forwards only below 4 GiB) form one window in `mmio32` and its
/// 64-bit prefetchable BARs one window in `mmio64`. Windows are whole MiB, aligned to
/// their largest BAR, and never overlap; each BAR is naturally aligned inside. Errors
/// name the BAR or the configuration field that sizes the window.
pub fn allocate_ports(
    devices: &[Vec<BarRequest>],
    mmio32: (u64, u64),
    mmio64: (u64, u64),
) -> Result<Vec<PortPlacement>, String> {
    let mut low = Vec::new();
    let mut high = Vec::new();
    for (d, reqs) in devices.iter().enumerate() {
        for r in reqs {
            if !r.size.is_power_of_two() {
                return Err(format!(
                    "{}: size {:#x} is not a power of two",
                    r.owner, r.size
                ));
            }
            if r.kind != BarKind::Mem64Prefetchable && r.size > mmio32.1 {
                return Err(format!(
                    "{}: a non-prefetchable BAR of {} MiB does not fit the {} MiB 32-bit PCI window (a root port forwards non-prefetchable memory only below 4 GiB)",
                    r.owner,
                    r.size >> 20,
                    mmio32.1 >> 20
                ));
            }
        }
        let (l, h): (Vec<usize>, Vec<usize>) =
            (0..reqs.len()).partition(|&i| reqs[i].kind != BarKind::Mem64Prefetchable);
        low.extend(block(d, reqs, l));
        high.extend(block(d, reqs, h));
    }
    let low_bases = place_blocks(&low, mmio32).map_err(|(i, needed)| {
        format!(
            "{}: the 32-bit PCI window ({} MiB at {:#x}) is full; the non-prefetchable BARs of the assigned devices need {} MiB (each root port's window is whole MiB, aligned to its largest BAR)",
            low[i].owner,
            mmio32.1 >> 20,
            mmio32.0,
            needed.div_ceil(1 << 20)
        )
    })?;
    let high_bases = place_blocks(&high, mmio64).map_err(|(i, needed)| {
        format!(
            "machine.mmio64_gib: the 64-bit window ({} GiB at {:#x}) cannot hold the prefetchable window of the root port for {} ({} GiB, aligned to {} GiB); the assigned devices' prefetchable windows need {} GiB with their alignment: raise machine.mmio64_gib",
            mmio64.1 >> 30,
            mmio64.0,
            high[i].owner,
            high[i].len as f64 / (1u64 << 30) as f64,
            high[i].align as f64 / (1u64 << 30) as f64,
            needed.div_ceil(1 << 30)
        )
    })?;
    let mut out: Vec<PortPlacement> = devices
        .iter()
        .map(|reqs| PortPlacement {
            bars: vec![BarPlacement { addr: 0, size: 0 }; reqs.len()],
            mem: None,
            pref: None,
        })
        .collect();
    for (blocks, bases, is_low) in [(&low, &low_bases, true), (&high, &high_bases, false)] {
        for (b, &base) in blocks.iter().zip(bases) {
            let p = &mut out[b.device];
            for &(i, off, size) in &b.members {
                p.bars[i] = BarPlacement {
                    addr: base + off,
                    size,
                };
            }
            let w = Some((base, b.len));
            if is_low {
                p.mem = w;
            } else {
                p.pref = w;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MemoryLayout, GIB, MIB, PCI_MMIO32_SIZE, PCI_MMIO32_START};

    fn req(owner: &str, size: u64, kind: BarKind) -> BarRequest {
        BarRequest {
            owner: owner.into(),
            size,
            kind,
        }
    }

    const W32: (u64, u64) = (PCI_MMIO32_START, PCI_MMIO32_SIZE);

    /// Eight GPUs (H100-like), each with a 16 MiB 32-bit BAR0, a 128 GiB prefetchable
    /// BAR1 and a 32 MiB prefetchable BAR3.
    fn eight_gpus() -> Vec<Vec<BarRequest>> {
        (0..8)
            .map(|g| {
                vec![
                    req(&format!("gpu{g} BAR0"), 16 * MIB, BarKind::Mem32),
                    req(
                        &format!("gpu{g} BAR1"),
                        128 * GIB,
                        BarKind::Mem64Prefetchable,
                    ),
                    req(
                        &format!("gpu{g} BAR3"),
                        32 * MIB,
                        BarKind::Mem64Prefetchable,
                    ),
                ]
            })
            .collect()
    }

    fn inside(w: (u64, u64), a: u64, len: u64) -> bool {
        a >= w.0 && a + len <= w.0 + w.1
    }

    /// Every BAR naturally aligned, inside its port's window of the right class,
    /// windows inside the host windows, whole MiB, disjoint; BARs disjoint.
    fn check(devices: &[Vec<BarRequest>], got: &[PortPlacement], w32: (u64, u64), w64: (u64, u64)) {
        let mut windows = Vec::new();
        let mut bars = Vec::new();
        for (reqs, p) in devices.iter().zip(got) {
            for (r, b) in reqs.iter().zip(&p.bars) {
                assert_eq!(b.size, r.size.max(MIN_BAR_PLACEMENT));
                assert!(b.addr.is_multiple_of(b.size), "{} misaligned", r.owner);
                let w = if r.kind == BarKind::Mem64Prefetchable {
                    p.pref
                } else {
                    p.mem
                };
                let w = w.unwrap_or_else(|| panic!("{}: no window", r.owner));
                assert!(
                    inside(w, b.addr, b.size),
                    "{} outside its port's window",
                    r.owner
                );
                bars.push((b.addr, b.size));
            }
            if let Some(m) = p.mem {
                assert!(inside(w32, m.0, m.1) && m.0 + m.1 <= 1 << 32);
                windows.push(m);
            }
            if let Some(m) = p.pref {
                assert!(inside(w64, m.0, m.1));
                windows.push(m);
            }
        }
        for w in &windows {
            assert!(w.0.is_multiple_of(PORT_WINDOW_ALIGN) && w.1.is_multiple_of(PORT_WINDOW_ALIGN));
        }
        for set in [&windows, &bars] {
            for (i, a) in set.iter().enumerate() {
                for b in &set[i + 1..] {
                    assert!(
                        a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                        "overlap {a:x?} {b:x?}"
                    );
                }
            }
        }
    }

    #[test]
    fn eight_gpus_each_behind_its_port_fit_a_window_sized_for_them() {
        let layout = MemoryLayout::new(1024 * GIB, 2048 * GIB, 52).unwrap();
        let devs = eight_gpus();
        let got = allocate_ports(&devs, W32, layout.mmio64).unwrap();
        check(&devs, &got, W32, layout.mmio64);
        for p in &got {
            assert!(p.bars[1].addr.is_multiple_of(128 * GIB));
            assert_eq!(p.pref.unwrap().1, 128 * GIB + 32 * MIB, "BAR1 + BAR3");
            assert_eq!(p.mem.unwrap().1, 16 * MIB);
        }
    }

    #[test]
    fn a_window_too_small_names_machine_mmio64_gib_and_what_is_needed() {
        let layout = MemoryLayout::new(1024 * GIB, 512 * GIB, 52).unwrap();
        let e = allocate_ports(&eight_gpus(), W32, layout.mmio64).unwrap_err();
        assert!(e.starts_with("machine.mmio64_gib:"), "{e}");
        // 8 windows of 128 GiB + 32 MiB, each 128 GiB-aligned, from 1025 GiB: the last
        // ends at 3072 GiB + 32 MiB, 2048 GiB after the window's start.
        assert!(
            e.contains("gpu") && e.contains("BAR1") && e.contains("need 2048 GiB"),
            "{e}"
        );
        // One GiB short is still too small.
        let layout = MemoryLayout::new(1024 * GIB, 2047 * GIB, 52).unwrap();
        assert!(allocate_ports(&eight_gpus(), W32, layout.mmio64).is_err());
    }

    #[test]
    fn small_odd_and_mixed_bars() {
        let devs = vec![
            vec![
                req("a BAR0", 256, BarKind::Mem32),
                req("a BAR2", 4 * GIB, BarKind::Mem64Prefetchable),
            ],
            vec![
                req("b BAR0", MIB, BarKind::Mem32),
                req("b BAR4", 16 * 1024, BarKind::Mem64),
            ],
            vec![],
        ];
        let w64 = (5 * GIB, 64 * GIB);
        let got = allocate_ports(&devs, W32, w64).unwrap();
        check(&devs, &got, W32, w64);
        assert_eq!(got[0].bars[0].size, 4096);
        assert_eq!(got[0].mem.unwrap().1, MIB, "a window is at least 1 MiB");
        assert_eq!(got[0].bars[1].addr, 8 * GIB, "aligned up inside the window");
        assert_eq!(got[1].pref, None, "no prefetchable BARs, no window");
        assert_eq!(got[1].mem.unwrap().1, 2 * MIB, "1 MiB + 16 KiB, whole MiB");
        assert!(
            got[1].bars[1].addr < 1 << 32,
            "non-prefetchable 64-bit BAR below 4 GiB"
        );
        assert_eq!((got[2].mem, got[2].pref), (None, None));
        // A non-prefetchable BAR too big for the 32-bit window is an error naming it
        // (a root port cannot forward it above 4 GiB).
        let e = allocate_ports(&[vec![req("c BAR0", 512 * MIB, BarKind::Mem64)]], W32, w64)
            .unwrap_err();
        assert!(e.contains("c BAR0") && e.contains("below 4 GiB"), "{e}");
        let e =
            allocate_ports(&[vec![req("e BAR0", 3 * MIB, BarKind::Mem32)]], W32, w64).unwrap_err();
        assert!(e.contains("power of two"), "{e}");
        // No 64-bit window at all.
        let e = allocate_ports(
            &[vec![req("f BAR2", GIB, BarKind::Mem64Prefetchable)]],
            W32,
            (4 * GIB, 0),
        )
        .unwrap_err();
        assert!(e.starts_with("machine.mmio64_gib"), "{e}");
        // 32-bit window exhaustion across ports.
        let many: Vec<_> = (0..3)
            .map(|i| vec![req(&format!("g{i} BAR0"), 128 * MIB, BarKind::Mem32)])
            .collect();
        let e = allocate_ports(&many, W32, w64).unwrap_err();
        assert!(
            e.contains("32-bit PCI window") && e.contains("384 MiB"),
            "{e}"
        );
    }

    #[test]
    fn thirty_one_small_devices_get_one_mib_windows_each() {
        let devs: Vec<_> = (0..31)
            .map(|i| {
                vec![
                    req(&format!("d{i} BAR0"), 4096, BarKind::Mem32),
                    req(&format!("d{i} BAR2"), 64 * MIB, BarKind::Mem64Prefetchable),
                ]
            })
            .collect();
        let w64 = (8 * GIB, 64 * GIB);
        let got = allocate_ports(&devs, W32, w64).unwrap();
        check(&devs, &got, W32, w64);
        // Deterministic: the same input places the same way.
        assert_eq!(got, allocate_ports(&devs, W32, w64).unwrap());
    }
}
