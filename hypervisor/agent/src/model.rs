//! The records bulwarkd keeps (one JSON value per database row, `docs/agent.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a device is in its life cycle (`lifecycle::transition` is the only place
/// that moves it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Discovered, not bound to vfio-pci by bulwarkd; never given to a VM.
    Unenrolled,
    /// Being reset and scrubbed; never given to a VM.
    Sanitizing,
    /// Scrubbed since its last use; may be assigned.
    Available,
    /// Reserved for a VM that has not started (no process has opened it).
    Assigned,
    /// Its VM's VMM is (or may be) running with it.
    InUse,
    /// A scrub failed; only an operator release (which scrubs again) gets it out.
    Quarantined,
}

impl DeviceState {
    pub const ALL: [DeviceState; 6] = [
        DeviceState::Unenrolled,
        DeviceState::Sanitizing,
        DeviceState::Available,
        DeviceState::Assigned,
        DeviceState::InUse,
        DeviceState::Quarantined,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DeviceState::Unenrolled => "unenrolled",
            DeviceState::Sanitizing => "sanitizing",
            DeviceState::Available => "available",
            DeviceState::Assigned => "assigned",
            DeviceState::InUse => "in_use",
            DeviceState::Quarantined => "quarantined",
        }
    }
}

/// Why bulwarkd tracks a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// NVIDIA (10de) or AMD (1002) display/3D controller (class 0x0300 / 0x0302).
    Gpu,
    /// NVIDIA NVSwitch (10de, class 0x0680).
    Nvswitch,
    /// Named in the config's `devices`.
    Configured,
    /// Another member of an enrolled device's IOMMU group (e.g. a GPU's audio
    /// function): it travels with the group.
    GroupMember,
}

/// One PCI function bulwarkd tracks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// PCI address `DDDD:BB:DD.F`.
    pub address: String,
    /// `vendor:device`, lower-case hex (`10de:2330`).
    pub id: String,
    /// PCI class code (24 bits, hex `0x030200`).
    pub class: String,
    pub kind: DeviceKind,
    pub iommu_group: Option<u32>,
    /// Every other function of the IOMMU group (bridges included).
    pub group_members: Vec<String>,
    pub numa_node: Option<i32>,
    /// `current_link_speed` and width, where readable.
    pub link: Option<String>,
    /// PCIe device serial number (DSN capability), where readable.
    pub serial: Option<String>,
    /// Host driver at the last inventory.
    pub driver: Option<String>,
    /// Seen by the last inventory scan.
    pub present: bool,
    pub state: DeviceState,
    /// The VM holding it (assigned / in use).
    pub owner_vm: Option<String>,
    /// Why it is in its state (quarantine, failed enroll, lost VMM, ...).
    pub reason: Option<String>,
    /// The passed scrub record since its last use; `available` requires one.
    pub last_scrub: Option<u64>,
    /// The scrub record in progress, if any.
    pub scrub_in_progress: Option<u64>,
}

/// A tenant: whose images may run and from which version on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    /// Trusted image signer keys (SPKI PEM, as `bulwark-image keygen` writes them).
    pub signer_keys: Vec<String>,
    pub min_version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Devices assigned, no VMM yet.
    Created,
    /// A VMM is being started.
    Starting,
    Running,
    /// Ended normally (stop, guest power-off).
    Stopped,
    /// Ended abnormally: VMM died, did not start, or was lost across a restart.
    Failed,
}

impl VmState {
    pub const ALL: [VmState; 5] = [
        VmState::Created,
        VmState::Starting,
        VmState::Running,
        VmState::Stopped,
        VmState::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Failed => "failed",
        }
    }

    /// A VMM process may exist for the VM.
    pub fn has_vmm(self) -> bool {
        matches!(self, VmState::Starting | VmState::Running)
    }
}

/// One VM of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub id: String,
    pub tenant: String,
    /// Path of the signed image on the node.
    pub image: String,
    pub vcpus: u8,
    pub mem_mib: u32,
    /// Every device of the VM (whole IOMMU groups).
    pub devices: Vec<String>,
    pub state: VmState,
    pub pid: Option<i32>,
    pub api_sock: Option<String>,
    pub reason: Option<String>,
    pub created_at_ms: u64,
    /// The jail of its current or last VMM.
    #[serde(default)]
    pub jail: Option<JailRecord>,
    /// Key ids (hex SHA-256 of the SPKI) whose signatures on the image met the
    /// tenant's policy at create (for the evidence's `launch.image`).
    #[serde(default)]
    pub image_signers: Vec<String>,
    /// The guest's vsock ports exposed as TCP ports on the node.
    #[serde(default)]
    pub ports: Vec<PortMap>,
    /// MiB of scratch disk (virtio-blk id `scratch`, `<vm dir>/scratch.img`, blocks reserved,
    /// recreated at every start); 0: none.
    #[serde(default)]
    pub scratch_mib: u32,
}

/// A guest vsock port served on a node TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMap {
    pub vsock: u32,
    pub tcp: u16,
}

/// How a VM's VMM was jailed, and what of the jail is missing (with the reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailRecord {
    pub uid: u32,
    pub gid: u32,
    pub cgroup: Option<String>,
    pub notes: Vec<String>,
    /// The NUMA node the VMM's threads and memory are confined to (its cgroup's
    /// cpuset): the node of the VM's assigned devices, when they share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa: Option<NumaPlacement>,
}

/// A NUMA node and its CPUs (the kernel's list form, e.g. `0-15,32-47`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaPlacement {
    pub node: u32,
    pub cpus: String,
}

/// Who the node belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenancy {
    /// The tenant whose VMs run or ran here since the node was last clean.
    pub owner: Option<String>,
}

/// One step of a scrub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubStep {
    /// `reset` or `vendor_scrub`.
    pub step: String,
    /// How it was done (`vfio-device-reset`, `software-test`, ...).
    pub method: String,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScrubOutcome {
    InProgress,
    Passed,
    Failed,
    /// bulwarkd died during it; the scrub was started again from the beginning.
    Interrupted,
}

/// The record of one sanitization of one device (feeds the evidence's "sanitized").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubRecord {
    pub id: u64,
    pub device: String,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub steps: Vec<ScrubStep>,
    pub outcome: ScrubOutcome,
    pub reason: Option<String>,
}

/// Everything bulwarkd knows except the scrub history (loaded whole per transaction:
/// a node has tens of devices and a few VMs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeState {
    pub devices: BTreeMap<String, Device>,
    pub tenants: BTreeMap<String, Tenant>,
    pub vms: BTreeMap<String, Vm>,
    pub tenancy: Tenancy,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
