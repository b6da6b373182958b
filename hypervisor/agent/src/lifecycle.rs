//! The device state machine and the node's tenancy and exclusivity rules, as pure
//! functions over `NodeState` (no I/O). Every operation either changes the state it is
//! given and returns `Ok`, or returns an error and leaves the state as it was (callers
//! run it on a copy inside one database transaction and drop the copy on error).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Device, DeviceKind, DeviceState, NodeState, Tenant, Vm, VmState};

/// What happens to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// Bound to vfio-pci by bulwarkd.
    Enroll,
    ScrubPassed,
    ScrubFailed,
    /// Reserved for a VM being created.
    Assign,
    /// Its never-started VM was deleted.
    Unassign,
    /// Its VM's VMM is about to be spawned.
    Start,
    /// Its VM's VMM ended (stopped, died, lost).
    VmEnded,
    /// Operator release of a quarantined device: scrub again.
    OperatorRelease,
    /// Operator: give the device back to the host's own driver.
    Unenroll,
}

impl DeviceEvent {
    pub const ALL: [DeviceEvent; 9] = [
        DeviceEvent::Enroll,
        DeviceEvent::ScrubPassed,
        DeviceEvent::ScrubFailed,
        DeviceEvent::Assign,
        DeviceEvent::Unassign,
        DeviceEvent::Start,
        DeviceEvent::VmEnded,
        DeviceEvent::OperatorRelease,
        DeviceEvent::Unenroll,
    ];
}

/// The device state machine: available → assigned → in_use → sanitizing → available,
/// sanitizing → quarantined → (operator) sanitizing. Enrolment enters at sanitizing:
/// no device is available without a scrub.
pub fn transition(from: DeviceState, ev: DeviceEvent) -> Option<DeviceState> {
    use DeviceEvent as E;
    use DeviceState as S;
    match (from, ev) {
        (S::Unenrolled, E::Enroll) => Some(S::Sanitizing),
        (S::Sanitizing, E::ScrubPassed) => Some(S::Available),
        (S::Sanitizing, E::ScrubFailed) => Some(S::Quarantined),
        (S::Available, E::Assign) => Some(S::Assigned),
        (S::Assigned, E::Unassign) => Some(S::Available),
        (S::Assigned, E::Start) => Some(S::InUse),
        (S::InUse, E::VmEnded) => Some(S::Sanitizing),
        (S::Quarantined, E::OperatorRelease) => Some(S::Sanitizing),
        (S::Available | S::Quarantined, E::Unenroll) => Some(S::Unenrolled),
        _ => None,
    }
}

fn apply(dev: &mut Device, ev: DeviceEvent) -> Result<()> {
    match transition(dev.state, ev) {
        Some(s) => {
            dev.state = s;
            Ok(())
        }
        None => Err(Error::conflict(
            "state",
            format!(
                "device {} is {}: {:?} is not possible",
                dev.address,
                dev.state.name(),
                ev
            ),
        )),
    }
}

/// `DDDD:BB:DD.F`, lower-case hex (also keeps addresses safe to join to sysfs paths).
pub fn valid_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    b.len() == 12
        && b[..4].iter().all(|&c| hex(c))
        && b[4] == b':'
        && b[5..7].iter().all(|&c| hex(c))
        && b[7] == b':'
        && b[8..10].iter().all(|&c| hex(c))
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
}

/// Tenant and VM ids: 1 to 64 of `[a-z0-9_-]`, starting with a letter or digit.
pub fn check_id(field: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::bad(
            field,
            format!("{s:?} is not a valid id (1-64 of a-z, 0-9, '-', '_', starting with a letter or digit)"),
        ))
    }
}

fn device<'a>(st: &'a mut NodeState, addr: &str, field: &str) -> Result<&'a mut Device> {
    st.devices
        .get_mut(addr)
        .ok_or_else(|| Error::not_found(field, format!("no device {addr}")))
}

/// The tracked devices of `addr`'s IOMMU group (itself included), sorted.
pub fn group_of(st: &NodeState, addr: &str) -> Vec<String> {
    let Some(d) = st.devices.get(addr) else {
        return Vec::new();
    };
    let mut out: BTreeSet<String> = BTreeSet::new();
    out.insert(addr.to_string());
    for m in &d.group_members {
        if st.devices.contains_key(m) {
            out.insert(m.clone());
        }
    }
    out.into_iter().collect()
}

/// Records an enrolment: `members` (the group's non-bridge functions, `addr` first)
/// were bound to vfio-pci. Members not yet tracked are added as group members; all
/// go to sanitizing.
pub fn enroll(st: &mut NodeState, addr: &str, members: &[Device]) -> Result<()> {
    let d = device(st, addr, "address")?;
    if d.state != DeviceState::Unenrolled {
        return Err(Error::conflict(
            "state",
            format!("device {addr} is already enrolled ({})", d.state.name()),
        ));
    }
    for m in members {
        match st.devices.get(&m.address) {
            Some(existing) if existing.state != DeviceState::Unenrolled => {
                return Err(Error::conflict(
                    "state",
                    format!(
                        "group member {} is already {}",
                        m.address,
                        existing.state.name()
                    ),
                ))
            }
            Some(_) => {}
            None => {
                st.devices.insert(m.address.clone(), m.clone());
            }
        }
    }
    for m in members {
        let d = device(st, &m.address, "address")?;
        apply(d, DeviceEvent::Enroll)?;
        d.reason = None;
        d.owner_vm = None;
        d.last_scrub = None;
    }
    Ok(())
}

/// A scrub of `addr` passed: record `record` and make it available.
pub fn scrub_passed(st: &mut NodeState, addr: &str, record: u64) -> Result<()> {
    let d = device(st, addr, "address")?;
    apply(d, DeviceEvent::ScrubPassed)?;
    d.last_scrub = Some(record);
    d.scrub_in_progress = None;
    d.reason = None;
    Ok(())
}

/// A scrub of `addr` failed: quarantine it with the reason.
pub fn scrub_failed(st: &mut NodeState, addr: &str, reason: &str) -> Result<()> {
    let d = device(st, addr, "address")?;
    apply(d, DeviceEvent::ScrubFailed)?;
    d.scrub_in_progress = None;
    d.reason = Some(reason.to_string());
    Ok(())
}

/// Operator release of a quarantined device: it is scrubbed again.
pub fn operator_release(st: &mut NodeState, addr: &str) -> Result<()> {
    let d = device(st, addr, "address")?;
    if d.state != DeviceState::Quarantined {
        return Err(Error::conflict(
            "state",
            format!(
                "device {addr} is {}; only a quarantined device can be released",
                d.state.name()
            ),
        ));
    }
    apply(d, DeviceEvent::OperatorRelease)?;
    d.reason = Some("released by the operator: scrubbing again".into());
    Ok(())
}

/// How the reason of an operator-unenrolled device begins (whether giving it back
/// to the host worked or not): what a VM asking for it is told.
pub const OPERATOR_UNENROLLED: &str = "unenrolled by the operator";

/// Operator unenrolment of `addr` and every tracked member of its IOMMU group (the
/// group is the unit): each must be available, quarantined or already unenrolled
/// (not sanitizing, not a VM's: an unenrolment that a crash or a sysfs failure cut
/// short is simply asked for again). They become unenrolled and lose their scrub
/// record: whatever the host does with them afterwards, a later enrolment scrubs
/// them again. Returns the members.
pub fn unenroll(st: &mut NodeState, addr: &str) -> Result<Vec<String>> {
    device(st, addr, "address")?;
    let members = group_of(st, addr);
    for m in &members {
        let dev = &st.devices[m];
        if dev.state != DeviceState::Unenrolled
            && transition(dev.state, DeviceEvent::Unenroll).is_none()
        {
            return Err(Error::conflict(
                "state",
                format!(
                    "{} {m} is {}{}: only an available, quarantined or unenrolled group can be unenrolled",
                    if m == addr { "device" } else { "group member" },
                    dev.state.name(),
                    dev.owner_vm
                        .as_deref()
                        .map_or(String::new(), |vm| format!(" (VM {vm})"))
                ),
            ));
        }
    }
    for m in &members {
        let dev = st
            .devices
            .get_mut(m)
            .ok_or_else(|| Error::internal("state", format!("{m} vanished")))?;
        if dev.state != DeviceState::Unenrolled {
            apply(dev, DeviceEvent::Unenroll)?;
        }
        dev.last_scrub = None;
        dev.reason = Some(format!("{OPERATOR_UNENROLLED}: given back to the host"));
    }
    Ok(members)
}

/// Which devices a VM asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuRequest {
    /// This many accelerators (GPUs, or `model`), chosen by bulwarkd.
    #[serde(default)]
    pub count: Option<u32>,
    /// `vendor:device` the chosen accelerators must have.
    #[serde(default)]
    pub model: Option<String>,
    /// Exactly these devices.
    #[serde(default)]
    pub addresses: Option<Vec<String>>,
}

/// `POST /vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    pub id: String,
    pub tenant: String,
    /// An uploaded image's name, or the absolute path of a signed image on the node.
    pub image: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_mem")]
    pub mem_mib: u32,
    #[serde(default)]
    pub gpus: GpuRequest,
    /// Guest vsock ports to expose as TCP ports on the node.
    #[serde(default)]
    pub ports: Vec<crate::model::PortMap>,
    /// MiB of per-VM scratch disk (0: none), at most [`MAX_SCRATCH_MIB`].
    #[serde(default)]
    pub scratch_mib: u32,
}

/// The largest scratch disk a VM may ask for: 1 TiB.
pub const MAX_SCRATCH_MIB: u32 = 1 << 20;

fn default_vcpus() -> u8 {
    1
}
fn default_mem() -> u32 {
    256
}

impl CreateVm {
    /// Field checks that need no state.
    pub fn validate(&self) -> Result<()> {
        check_id("id", &self.id)?;
        check_id("tenant", &self.tenant)?;
        if !self.image.starts_with('/') && check_id("image", &self.image).is_err() {
            return Err(Error::bad(
                "image",
                "must be the name of an uploaded image (PUT /images/{name}) or an absolute path on the node",
            ));
        }
        if self.vcpus == 0 || self.vcpus > 254 {
            return Err(Error::bad("vcpus", "must be 1..=254"));
        }
        if self.mem_mib < 4 || !self.mem_mib.is_multiple_of(2) || self.mem_mib > 1 << 20 {
            return Err(Error::bad("mem_mib", "must be even and in 4..=1048576"));
        }
        if self.scratch_mib > MAX_SCRATCH_MIB {
            return Err(Error::bad(
                "scratch_mib",
                format!(
                    "must be 0 (no scratch disk) or 1..={MAX_SCRATCH_MIB} (MiB, at most 1 TiB), not {}",
                    self.scratch_mib
                ),
            ));
        }
        if self.ports.len() > 64 {
            return Err(Error::bad("ports", "at most 64"));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.vsock == 0
                || p.vsock == bulwark_guest_protocol::HOST_CHANNEL_PORT
                || p.vsock == u32::MAX
            {
                return Err(Error::bad(
                    format!("ports[{i}].vsock"),
                    "must be 1..2^32-2 and not the host channel's 1024",
                ));
            }
            if p.tcp == 0 {
                return Err(Error::bad(format!("ports[{i}].tcp"), "must be 1..=65535"));
            }
            if self.ports[..i].iter().any(|q| q.tcp == p.tcp) {
                return Err(Error::bad(
                    format!("ports[{i}].tcp"),
                    format!("{} is listed twice", p.tcp),
                ));
            }
        }
        let g = &self.gpus;
        if let Some(m) = &g.model {
            let ok = m.len() == 9
                && m.as_bytes()[4] == b':'
                && m.bytes()
                    .enumerate()
                    .all(|(i, c)| i == 4 || c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
            if !ok {
                return Err(Error::bad(
                    "gpus.model",
                    "must be vendor:device in lower-case hex, e.g. 10de:2330",
                ));
            }
        }
        match (&g.addresses, g.count) {
            (Some(_), Some(_)) => Err(Error::bad(
                "gpus",
                "give either count (with an optional model) or addresses, not both",
            )),
            (Some(a), None) => {
                if g.model.is_some() {
                    return Err(Error::bad("gpus.model", "only with count"));
                }
                if a.is_empty() || a.len() > 31 {
                    return Err(Error::bad("gpus.addresses", "1 to 31 addresses"));
                }
                let mut seen = BTreeSet::new();
                for (i, x) in a.iter().enumerate() {
                    if !valid_pci_address(x) {
                        return Err(Error::bad(
                            format!("gpus.addresses[{i}]"),
                            format!("{x:?} is not a PCI address DDDD:BB:DD.F"),
                        ));
                    }
                    if !seen.insert(x) {
                        return Err(Error::bad(
                            format!("gpus.addresses[{i}]"),
                            format!("{x} is listed twice"),
                        ));
                    }
                }
                Ok(())
            }
            (None, Some(n)) if n > 31 => Err(Error::bad("gpus.count", "at most 31")),
            (None, _) => Ok(()),
        }
    }
}

/// Refuses a VM for `tenant` unless the node is its own or clean: at most one tenant
/// at a time, and a new one only after every device was scrubbed since the previous
/// tenant's last VM ended.
pub fn check_tenancy(st: &NodeState, tenant: &str) -> Result<()> {
    let Some(owner) = st.tenancy.owner.as_deref() else {
        return Ok(());
    };
    if owner == tenant {
        return Ok(());
    }
    if let Some(vm) = st.vms.values().find(|v| v.tenant == owner) {
        return Err(Error::conflict(
            "tenant",
            format!("the node belongs to tenant {owner} (VM {} exists, {}): a node serves one tenant at a time", vm.id, vm.state.name()),
        ));
    }
    if let Some(d) = st.devices.values().find(|d| {
        matches!(
            d.state,
            DeviceState::Sanitizing
                | DeviceState::Quarantined
                | DeviceState::Assigned
                | DeviceState::InUse
        )
    }) {
        return Err(Error::conflict(
            "tenant",
            format!(
                "tenant {owner}'s devices are not all sanitized yet (device {} is {}): a new tenant waits for every scrub",
                d.address,
                d.state.name()
            ),
        ));
    }
    Ok(())
}

fn is_accelerator(d: &Device) -> bool {
    matches!(
        d.kind,
        DeviceKind::Gpu | DeviceKind::Nvswitch | DeviceKind::Configured
    )
}

/// Creates VM `req` (already validated) in `created`, with its devices assigned as
/// whole IOMMU groups, and makes its tenant the node's owner.
pub fn create_vm(st: &mut NodeState, req: &CreateVm, now_ms: u64) -> Result<Vm> {
    if st.vms.contains_key(&req.id) {
        return Err(Error::conflict(
            "id",
            format!("VM {} already exists", req.id),
        ));
    }
    if !st.tenants.contains_key(&req.tenant) {
        return Err(Error::not_found(
            "tenant",
            format!("no tenant {}", req.tenant),
        ));
    }
    check_tenancy(st, &req.tenant)?;
    for (i, p) in req.ports.iter().enumerate() {
        if let Some(v) = st
            .vms
            .values()
            .find(|v| v.ports.iter().any(|q| q.tcp == p.tcp))
        {
            return Err(Error::conflict(
                format!("ports[{i}].tcp"),
                format!("TCP port {} is VM {}'s", p.tcp, v.id),
            ));
        }
    }
    let primaries: Vec<String> = match (&req.gpus.addresses, req.gpus.count) {
        (Some(addrs), _) => {
            for (i, a) in addrs.iter().enumerate() {
                if !st.devices.contains_key(a) {
                    return Err(Error::not_found(
                        format!("gpus.addresses[{i}]"),
                        format!("no device {a}"),
                    ));
                }
            }
            addrs.clone()
        }
        (None, Some(n)) if n > 0 => {
            let mut picked = Vec::new();
            let mut taken = BTreeSet::new();
            for d in st.devices.values() {
                if picked.len() == n as usize {
                    break;
                }
                let model_ok = req.gpus.model.as_ref().is_none_or(|m| *m == d.id);
                let kind_ok = if req.gpus.model.is_some() {
                    is_accelerator(d)
                } else {
                    d.kind == DeviceKind::Gpu
                };
                if !(model_ok && kind_ok) || taken.contains(&d.address) {
                    continue;
                }
                let group = group_of(st, &d.address);
                if group
                    .iter()
                    .all(|m| st.devices[m].state == DeviceState::Available && st.devices[m].present)
                {
                    taken.extend(group);
                    picked.push(d.address.clone());
                }
            }
            if picked.len() < n as usize {
                return Err(Error::conflict(
                    "gpus.count",
                    format!(
                        "{n} {} asked for, {} available (whole IOMMU groups, scrubbed)",
                        req.gpus.model.as_deref().unwrap_or("GPU(s)"),
                        picked.len()
                    ),
                ));
            }
            picked
        }
        (None, _) => Vec::new(),
    };
    let mut all: BTreeSet<String> = BTreeSet::new();
    for p in &primaries {
        all.extend(group_of(st, p));
    }
    for a in &all {
        let d = &st.devices[a];
        if d.state != DeviceState::Available || !d.present {
            let why = match (&d.owner_vm, d.present) {
                (_, false) => "not present in the last inventory".to_string(),
                (Some(vm), _) => {
                    format!("{} (VM {vm}): not scrubbed since that VM", d.state.name())
                }
                (None, _) => match d.state {
                    DeviceState::Unenrolled
                        if d
                            .reason
                            .as_deref()
                            .is_some_and(|r| r.starts_with(OPERATOR_UNENROLLED)) =>
                    {
                        "unenrolled: given back to the host by the operator (enrolling it again scrubs it first)".into()
                    }
                    DeviceState::Unenrolled => "unenrolled: never scrubbed by bulwarkd".into(),
                    DeviceState::Sanitizing => {
                        "sanitizing: its scrub since the last VM has not passed yet".into()
                    }
                    DeviceState::Quarantined => "quarantined: its last scrub failed".into(),
                    s => s.name().to_string(),
                },
            };
            return Err(Error::conflict(
                "gpus",
                format!(
                    "device {a} (IOMMU group {}) is {why}; a VM gets only devices scrubbed since their last use (available), the whole group",
                    d.iommu_group.map_or("?".into(), |g| g.to_string())
                ),
            ));
        }
    }
    for a in &all {
        let d = device(st, a, "gpus")?;
        apply(d, DeviceEvent::Assign)?;
        d.owner_vm = Some(req.id.clone());
        d.reason = None;
    }
    let vm = Vm {
        id: req.id.clone(),
        tenant: req.tenant.clone(),
        image: req.image.clone(),
        vcpus: req.vcpus,
        mem_mib: req.mem_mib,
        devices: all.into_iter().collect(),
        state: VmState::Created,
        pid: None,
        api_sock: None,
        reason: None,
        created_at_ms: now_ms,
        jail: None,
        image_signers: Vec::new(),
        ports: req.ports.clone(),
        scratch_mib: req.scratch_mib,
    };
    st.vms.insert(vm.id.clone(), vm.clone());
    st.tenancy.owner = Some(req.tenant.clone());
    Ok(vm)
}

fn vm<'a>(st: &'a mut NodeState, id: &str) -> Result<&'a mut Vm> {
    st.vms
        .get_mut(id)
        .ok_or_else(|| Error::not_found("id", format!("no VM {id}")))
}

/// Deletes a VM that has no VMM: a never-started VM gives its devices back as
/// available (no process opened them); an ended VM's devices are already sanitizing.
pub fn delete_vm(st: &mut NodeState, id: &str) -> Result<Vm> {
    let v = vm(st, id)?.clone();
    if v.state.has_vmm() {
        return Err(Error::conflict(
            "state",
            format!("VM {id} is {}: stop it first", v.state.name()),
        ));
    }
    if v.state == VmState::Created {
        for a in &v.devices {
            let d = device(st, a, "devices")?;
            if d.owner_vm.as_deref() == Some(id) {
                apply(d, DeviceEvent::Unassign)?;
                d.owner_vm = None;
            }
        }
    }
    st.vms.remove(id);
    Ok(v)
}

/// Moves VM `id` to starting: its devices go in use (re-assigned first when it ran
/// before and they were scrubbed since). After this a VMM may be spawned.
pub fn begin_start(st: &mut NodeState, id: &str) -> Result<Vm> {
    let v = vm(st, id)?.clone();
    match v.state {
        VmState::Created => {}
        VmState::Stopped | VmState::Failed => {
            check_tenancy(st, &v.tenant)?;
            for a in &v.devices {
                let d = &st.devices[a];
                if d.state != DeviceState::Available || !d.present {
                    return Err(Error::conflict(
                        "state",
                        format!(
                            "device {a} of VM {id} is {}, not yet available again",
                            d.state.name()
                        ),
                    ));
                }
            }
            for a in &v.devices {
                let d = device(st, a, "devices")?;
                apply(d, DeviceEvent::Assign)?;
                d.owner_vm = Some(id.to_string());
            }
            st.tenancy.owner = Some(v.tenant.clone());
        }
        s => return Err(Error::conflict("state", format!("VM {id} is {}", s.name()))),
    }
    for a in &v.devices {
        let d = device(st, a, "devices")?;
        apply(d, DeviceEvent::Start)?;
    }
    let m = vm(st, id)?;
    m.state = VmState::Starting;
    m.reason = None;
    m.pid = None;
    Ok(m.clone())
}

/// The VMM of starting VM `id` was spawned as `pid` with its API on `api_sock`
/// (recorded before it is configured, so a restart can find and kill it).
pub fn spawned(st: &mut NodeState, id: &str, pid: i32, api_sock: &str) -> Result<()> {
    let m = vm(st, id)?;
    if m.state != VmState::Starting {
        return Err(Error::conflict(
            "state",
            format!("VM {id} is {}, not starting", m.state.name()),
        ));
    }
    m.pid = Some(pid);
    m.api_sock = Some(api_sock.to_string());
    Ok(())
}

/// The VMM of `id` runs with `pid`, API on `api_sock`.
pub fn started(st: &mut NodeState, id: &str, pid: i32, api_sock: &str) -> Result<()> {
    let m = vm(st, id)?;
    if m.state != VmState::Starting {
        return Err(Error::conflict(
            "state",
            format!("VM {id} is {}, not starting", m.state.name()),
        ));
    }
    m.state = VmState::Running;
    m.pid = Some(pid);
    m.api_sock = Some(api_sock.to_string());
    Ok(())
}

/// The VMM of `id` ended (or never started, or was lost): the VM is stopped (no
/// `failure`) or failed with the reason, and its devices go to sanitizing.
pub fn vm_ended(st: &mut NodeState, id: &str, failure: Option<&str>) -> Result<()> {
    let v = vm(st, id)?.clone();
    if !v.state.has_vmm() {
        return Err(Error::conflict(
            "state",
            format!("VM {id} is {}, it has no VMM", v.state.name()),
        ));
    }
    for a in &v.devices {
        let d = device(st, a, "devices")?;
        if d.owner_vm.as_deref() == Some(id) && d.state == DeviceState::InUse {
            apply(d, DeviceEvent::VmEnded)?;
            d.owner_vm = None;
            d.reason = Some(format!("VM {id} ended"));
        }
    }
    let m = vm(st, id)?;
    m.state = if failure.is_some() {
        VmState::Failed
    } else {
        VmState::Stopped
    };
    m.reason = failure.map(str::to_string);
    m.pid = None;
    Ok(())
}

/// `POST /tenants`.
pub fn create_tenant(st: &mut NodeState, t: Tenant) -> Result<()> {
    check_id("id", &t.id)?;
    if t.signer_keys.is_empty() {
        return Err(Error::bad(
            "signer_keys",
            "at least one trusted image signer key",
        ));
    }
    for (i, k) in t.signer_keys.iter().enumerate() {
        if !k.contains("-----BEGIN PUBLIC KEY-----")
            || !k.contains("-----END PUBLIC KEY-----")
            || k.len() > 8192
        {
            return Err(Error::bad(
                format!("signer_keys[{i}]"),
                "must be one PEM public key (SPKI, as bulwark-image keygen writes it)",
            ));
        }
    }
    if st.tenants.contains_key(&t.id) {
        return Err(Error::conflict(
            "id",
            format!("tenant {} already exists", t.id),
        ));
    }
    st.tenants.insert(t.id.clone(), t);
    Ok(())
}

/// `DELETE /tenants/{id}`: refused while the tenant has VMs.
pub fn delete_tenant(st: &mut NodeState, id: &str) -> Result<()> {
    if !st.tenants.contains_key(id) {
        return Err(Error::not_found("id", format!("no tenant {id}")));
    }
    if let Some(v) = st.vms.values().find(|v| v.tenant == id) {
        return Err(Error::conflict(
            "id",
            format!("tenant {id} still has VM {}", v.id),
        ));
    }
    st.tenants.remove(id);
    Ok(())
}

/// Checks the invariants every committed state must keep; returns each violation.
/// (Recovery, tests and the crash-safety test use it.)
pub fn invariant_violations(st: &NodeState) -> Vec<String> {
    let mut out = Vec::new();
    for d in st.devices.values() {
        match (d.state, &d.owner_vm) {
            (DeviceState::Assigned | DeviceState::InUse, None) => out.push(format!(
                "{} is {} without an owner VM",
                d.address,
                d.state.name()
            )),
            (DeviceState::Assigned | DeviceState::InUse, Some(vm)) => match st.vms.get(vm) {
                None => out.push(format!("{} is held by missing VM {vm}", d.address)),
                Some(v) if !v.devices.contains(&d.address) => out.push(format!(
                    "{} is held by VM {vm}, which does not list it",
                    d.address
                )),
                Some(v) => {
                    let want = if v.state.has_vmm() {
                        DeviceState::InUse
                    } else {
                        DeviceState::Assigned
                    };
                    if d.state != want || !(v.state.has_vmm() || v.state == VmState::Created) {
                        out.push(format!(
                            "{} is {} but VM {vm} is {}",
                            d.address,
                            d.state.name(),
                            v.state.name()
                        ));
                    }
                }
            },
            (_, Some(vm)) => out.push(format!(
                "{} is {} yet owned by VM {vm}",
                d.address,
                d.state.name()
            )),
            (_, None) => {}
        }
        if d.state == DeviceState::Available && d.last_scrub.is_none() {
            out.push(format!("{} is available without a scrub record", d.address));
        }
    }
    for v in st.vms.values() {
        if !st.tenants.contains_key(&v.tenant) {
            out.push(format!(
                "VM {} belongs to missing tenant {}",
                v.id, v.tenant
            ));
        }
        if st.tenancy.owner.as_deref() != Some(v.tenant.as_str()) {
            out.push(format!(
                "VM {} of tenant {} exists but the node's owner is {:?}",
                v.id, v.tenant, st.tenancy.owner
            ));
        }
        if v.state == VmState::Created || v.state.has_vmm() {
            for a in &v.devices {
                match st.devices.get(a) {
                    Some(d) if d.owner_vm.as_deref() == Some(v.id.as_str()) => {}
                    _ => out.push(format!(
                        "VM {} ({}) lists {a}, which it does not hold",
                        v.id,
                        v.state.name()
                    )),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
