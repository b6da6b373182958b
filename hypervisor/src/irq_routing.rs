//! The VM's KVM GSI routing table: the in-kernel irqchip's default routes (GSIs 0..=15
//! to the PIC and IOAPIC, 16..=23 to the IOAPIC) plus MSI routes from
//! `layout::MSI_FIRST_GSI` that devices allocate and the guest programs.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so every change rebuilds it from
//! here. An MSI GSI is registered as an irqfd once, when allocated; it delivers only
//! while it has a route (masked or disabled vectors have none).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI, KVM_MAX_IRQ_ROUTES,
};
use kvm_ioctls::VmFd;

use crate::layout::MSI_FIRST_GSI;

/// An MSI message as the guest wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address (low and high dwords).
    pub addr: u64,
    /// Message data.
    pub data: u32,
}

impl MsiMessage {
    /// Whether the address is an x86 interrupt message (0xFEEx_xxxx); anything else
    /// would be a DMA write the guest asks the VMM to forge and is never routed.
    pub fn is_valid(&self) -> bool {
        self.addr >> 20 == 0xfee
    }
}

/// Pins of the in-kernel IOAPIC.
const IOAPIC_PINS: u32 = 24;

/// The routing table and the next free MSI GSI.
#[derive(Debug)]
pub struct GsiRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

#[derive(Debug)]
struct RouterState {
    next: u32,
    msi: BTreeMap<u32, MsiMessage>,
}

impl GsiRouter {
    /// A router for `vm` (whose irqchip exists); no MSI routes yet.
    pub fn new(vm: Arc<VmFd>) -> Self {
        GsiRouter {
            vm,
            state: Mutex::new(RouterState {
                next: MSI_FIRST_GSI,
                msi: BTreeMap::new(),
            }),
        }
    }

    /// The VM this router programs.
    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// Reserves `n` consecutive GSIs for MSI and returns the first.
    pub fn allocate(&self, n: u32) -> Result<u32, String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let first = st.next;
        let end = first
            .checked_add(n)
            .filter(|&e| e as usize <= KVM_MAX_IRQ_ROUTES)
            .ok_or_else(|| {
                format!(
                    "{n} more MSI vectors exceed KVM's {KVM_MAX_IRQ_ROUTES} interrupt routes ({} already used)",
                    first
                )
            })?;
        st.next = end;
        Ok(first)
    }

    /// Sets (Some) or removes (None) the MSI routes of `updates` and programs KVM.
    /// Invalid messages are treated as removals (and logged by the caller).
    pub fn update(&self, updates: &[(u32, Option<MsiMessage>)]) -> Result<(), String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for &(gsi, msg) in updates {
            let msg = msg.filter(MsiMessage::is_valid);
            let before = match msg {
                Some(m) => st.msi.insert(gsi, m),
                None => st.msi.remove(&gsi),
            };
            changed |= before != msg;
        }
        if !changed {
            return Ok(());
        }
        let table = routing_table(&st.msi);
        let routing = KvmIrqRouting::from_entries(&table)
            .map_err(|e| format!("building the GSI routing table: {e:?}"))?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|e| format!("KVM_SET_GSI_ROUTING: {e}"))
    }
}

/// KVM's default irqchip routes plus `msi`.
fn routing_table(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::with_capacity(40 + msi.len());
    let chip = |gsi: u32, irqchip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip = kvm_irq_routing_irqchip { irqchip, pin };
        e
    };
    for gsi in 0..IOAPIC_PINS {
        if gsi < 16 {
            let pic = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            v.push(chip(gsi, pic, gsi % 8));
        }
        v.push(chip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (&gsi, m) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi = kvm_irq_routing_msi {
            address_lo: m.addr as u32,
            address_hi: (m.addr >> 32) as u32,
            data: m.data,
            ..Default::default()
        };
        v.push(e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keeps_the_default_routes_and_adds_msi() {
        let mut msi = BTreeMap::new();
        msi.insert(
            24,
            MsiMessage {
                addr: 0xfee0_0000,
                data: 0x41,
            },
        );
        let t = routing_table(&msi);
        assert_eq!(t.len(), 16 + 24 + 1);
        assert_eq!(t.iter().filter(|e| e.gsi == 4).count(), 2);
        assert_eq!(t.iter().filter(|e| e.gsi == 20).count(), 1);
        let last = t.last().unwrap();
        assert_eq!((last.gsi, last.type_), (24, KVM_IRQ_ROUTING_MSI));
        assert!(MsiMessage {
            addr: 0xfee0_1000,
            data: 0
        }
        .is_valid());
        assert!(!MsiMessage {
            addr: 0x1000,
            data: 0
        }
        .is_valid());
        assert!(!MsiMessage {
            addr: 0x1_fee0_0000,
            data: 0
        }
        .is_valid());
    }
}
