//! BAR placement in the guest's two MMIO windows: the 32-bit window
//! (`layout::PCI_MMIO32_START`, 256 MiB) and the 64-bit window above RAM
//! (`MemoryLayout::mmio64`, sized by `machine.mmio64_gib`).
//!
//! Every BAR is placed at a multiple of its own size (natural alignment, which PCI
//! requires) and at least 4 KiB apart, so each can be a KVM memory slot or a trapped
//! page range. 32-bit BARs and 64-bit non-prefetchable BARs go in the 32-bit window
//! (bridges only forward non-prefetchable memory below 4 GiB); 64-bit prefetchable
//! BARs (GPU apertures, hundreds of GiB) go in the 64-bit window. Within a window the
//! largest BARs are placed first, which wastes nothing between power-of-two sizes.

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

/// Places every request (result in request order) or explains which window is too
/// small, naming the configuration field that sizes it.
pub fn allocate_bars(
    requests: &[BarRequest],
    mmio32: (u64, u64),
    mmio64: (u64, u64),
) -> Result<Vec<BarPlacement>, String> {
    for r in requests {
        if !r.size.is_power_of_two() {
            return Err(format!(
                "{}: size {:#x} is not a power of two",
                r.owner, r.size
            ));
        }
        if r.kind == BarKind::Mem32 && r.size > mmio32.1 {
            return Err(format!(
                "{}: a 32-bit BAR of {} MiB does not fit the {} MiB 32-bit PCI window",
                r.owner,
                r.size >> 20,
                mmio32.1 >> 20
            ));
        }
    }
    let mut out = vec![None; requests.len()];
    let (low, high): (Vec<usize>, Vec<usize>) =
        (0..requests.len()).partition(|&i| requests[i].kind != BarKind::Mem64Prefetchable);
    let mut spill = Vec::new();
    place(requests, &low, mmio32, &mut out, Some(&mut spill))?;
    // Non-prefetchable 64-bit BARs that did not fit below 4 GiB may go above.
    let mut high = high;
    high.extend(spill);
    place(requests, &high, mmio64, &mut out, None)?;
    Ok(out
        .into_iter()
        .map(|p| p.unwrap_or(BarPlacement { addr: 0, size: 0 }))
        .collect())
}

/// Bump-allocates `which` (largest first) in `window`. A request that does not fit
/// goes to `spill` when it is a 64-bit BAR and a spill list is given, else is an error.
fn place(
    requests: &[BarRequest],
    which: &[usize],
    window: (u64, u64),
    out: &mut [Option<BarPlacement>],
    mut spill: Option<&mut Vec<usize>>,
) -> Result<(), String> {
    let mut order = which.to_vec();
    order.sort_by(|&a, &b| requests[b].size.cmp(&requests[a].size).then(a.cmp(&b)));
    let (start, len) = window;
    let end = start.saturating_add(len);
    let mut next = start;
    let needed: u64 = order
        .iter()
        .map(|&i| requests[i].size.max(MIN_BAR_PLACEMENT))
        .fold(0u64, u64::saturating_add);
    for i in order {
        let r = &requests[i];
        let size = r.size.max(MIN_BAR_PLACEMENT);
        let addr = next.checked_next_multiple_of(size);
        match addr.filter(|a| a.checked_add(size).is_some_and(|e| e <= end)) {
            Some(a) => {
                out[i] = Some(BarPlacement { addr: a, size });
                next = a + size;
            }
            None => match spill.as_deref_mut() {
                Some(s) if r.kind == BarKind::Mem64 => s.push(i),
                _ if r.kind == BarKind::Mem32 => {
                    return Err(format!(
                        "{}: the 32-bit PCI window ({} MiB at {start:#x}) is full; the 32-bit BARs of the assigned devices need {} MiB",
                        r.owner,
                        len >> 20,
                        needed >> 20
                    ))
                }
                _ => {
                    return Err(format!(
                        "machine.mmio64_gib: the 64-bit window ({} GiB at {start:#x}) cannot hold {} (a {} GiB BAR, naturally aligned); the 64-bit BARs of the assigned devices need {} GiB plus alignment: raise machine.mmio64_gib",
                        len >> 30,
                        r.owner,
                        r.size as f64 / (1u64 << 30) as f64,
                        needed.div_ceil(1 << 30)
                    ))
                }
            },
        }
    }
    Ok(())
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

    /// Eight GPUs, each with a 16 MiB 32-bit BAR0, a 128 GiB prefetchable BAR1 and a
    /// 32 MiB prefetchable BAR3, in a 1 TiB guest.
    fn eight_gpus() -> Vec<BarRequest> {
        (0..8)
            .flat_map(|g| {
                [
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

    fn check_placed(reqs: &[BarRequest], got: &[BarPlacement], windows: &[(u64, u64)]) {
        for (i, (r, p)) in reqs.iter().zip(got).enumerate() {
            assert_eq!(p.size, r.size.max(MIN_BAR_PLACEMENT));
            assert!(p.addr.is_multiple_of(p.size), "{} misaligned", r.owner);
            assert!(
                windows
                    .iter()
                    .any(|&(s, l)| p.addr >= s && p.addr + p.size <= s + l),
                "{} outside the windows",
                r.owner
            );
            if r.kind == BarKind::Mem32 {
                assert!(p.addr + p.size <= 1 << 32);
            }
            for q in &got[i + 1..] {
                assert!(
                    p.addr + p.size <= q.addr || q.addr + q.size <= p.addr,
                    "overlap"
                );
            }
        }
    }

    #[test]
    fn eight_gpus_with_128_gib_bars_fit_a_window_sized_for_them() {
        let layout = MemoryLayout::new(1024 * GIB, 2048 * GIB, 52).unwrap();
        let reqs = eight_gpus();
        let got = allocate_bars(&reqs, W32, layout.mmio64).unwrap();
        check_placed(&reqs, &got, &[W32, layout.mmio64]);
        assert!(got[1].addr >= layout.mmio64.0 && got[1].addr.is_multiple_of(128 * GIB));
    }

    #[test]
    fn a_window_too_small_names_machine_mmio64_gib() {
        let layout = MemoryLayout::new(1024 * GIB, 512 * GIB, 52).unwrap();
        let e = allocate_bars(&eight_gpus(), W32, layout.mmio64).unwrap_err();
        assert!(e.starts_with("machine.mmio64_gib:"), "{e}");
        assert!(e.contains("BAR1") && e.contains("1025 GiB"), "{e}");
        // The window must cover alignment too: 1024 GiB at 1028 GiB holds only 7.
        let layout = MemoryLayout::new(1024 * GIB, 1024 * GIB, 52).unwrap();
        assert!(allocate_bars(&eight_gpus(), W32, layout.mmio64).is_err());
    }

    #[test]
    fn small_and_odd_bars() {
        let reqs = vec![
            req("a BAR0", 256, BarKind::Mem32),
            req("a BAR2", 4 * GIB, BarKind::Mem64Prefetchable),
            req("b BAR0", MIB, BarKind::Mem32),
            req("b BAR4", 16 * 1024, BarKind::Mem64),
        ];
        let w64 = (5 * GIB, 64 * GIB);
        let got = allocate_bars(&reqs, W32, w64).unwrap();
        check_placed(&reqs, &got, &[W32, w64]);
        assert_eq!(got[2].addr, PCI_MMIO32_START, "largest first");
        assert_eq!(got[0].size, 4096);
        assert_eq!(got[1].addr, 8 * GIB, "aligned up inside the window");
        assert!(
            got[3].addr < 1 << 32,
            "non-prefetchable 64-bit BAR below 4 GiB"
        );
        // A 64-bit non-prefetchable BAR too big for the 32-bit window spills above.
        let reqs = vec![req("c BAR0", 512 * MIB, BarKind::Mem64)];
        let got = allocate_bars(&reqs, W32, w64).unwrap();
        assert!(got[0].addr >= w64.0);
        // ...but a 32-bit one is an error naming the device.
        let e = allocate_bars(&[req("d BAR0", 512 * MIB, BarKind::Mem32)], W32, w64).unwrap_err();
        assert!(e.contains("d BAR0"), "{e}");
        let e = allocate_bars(&[req("e BAR0", 3 * MIB, BarKind::Mem32)], W32, w64).unwrap_err();
        assert!(e.contains("power of two"), "{e}");
        // No 64-bit window at all.
        let e = allocate_bars(
            &[req("f BAR2", GIB, BarKind::Mem64Prefetchable)],
            W32,
            (4 * GIB, 0),
        )
        .unwrap_err();
        assert!(e.starts_with("machine.mmio64_gib"), "{e}");
        // 32-bit window exhaustion.
        let many: Vec<_> = (0..3)
            .map(|i| req(&format!("g{i}"), 128 * MIB, BarKind::Mem32))
            .collect();
        let e = allocate_bars(&many, W32, w64).unwrap_err();
        assert!(
            e.contains("32-bit PCI window") && e.contains("384 MiB"),
            "{e}"
        );
    }
}
