//! `kvm-smoke`: `/dev/kvm` in L1 runs a tiny real-mode guest to a port write and HLT.

use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::MmapRegion;

use super::{ensure, fail, pass, raw, Failed, OrFail};

/// Guest physical memory size and where the code is loaded (real mode, CS base 0).
const MEMORY_SIZE: usize = 0x10000;
const CODE_ADDR: u64 = 0x1000;
/// The port the guest reports on.
const REPORT_PORT: u16 = 0x10;

/// `mov ax, 0x1234; add ax, 0x0101; out 0x10, ax; hlt`: the guest computes its report
/// (0x1335), so a pass shows guest code ran, not just that an exit happened.
const GUEST_CODE: [u8; 9] = [
    0xb8,
    0x34,
    0x12,
    0x05,
    0x01,
    0x01,
    0xe7,
    REPORT_PORT as u8,
    0xf4,
];
const EXPECTED_REPORT: [u8; 2] = 0x1335u16.to_le_bytes();

/// Runs the probe, printing one result line per step.
pub fn run() -> Result<(), Failed> {
    let kvm = Kvm::new().or_fail("kvm-open")?;
    let api = kvm.get_api_version();
    ensure(
        "kvm-api-version",
        api == 12,
        format!("KVM_GET_API_VERSION = {api}"),
    )?;

    // Created before the VM so that it outlives it (see `raw::set_guest_memory`).
    let memory = MmapRegion::<()>::new(MEMORY_SIZE).or_fail("guest-memory")?;
    super::put(&memory, CODE_ADDR as usize, &GUEST_CODE).or_fail("guest-memory")?;
    let vm = kvm.create_vm().or_fail("kvm-create-vm")?;
    raw::set_guest_memory(&vm, 0, 0, &memory).or_fail("kvm-create-vm")?;
    let mut vcpu = vm.create_vcpu(0).or_fail("kvm-create-vm")?;
    pass("kvm-create-vm", "VM with 64 KiB of memory and one vCPU");

    let mut sregs = vcpu.get_sregs().or_fail("vcpu-setup")?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).or_fail("vcpu-setup")?;
    let regs = kvm_bindings::kvm_regs {
        rip: CODE_ADDR,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).or_fail("vcpu-setup")?;

    let mut reported = None;
    // The guest makes two exits; a few more allowed for spurious ones, then it is a failure.
    for _ in 0..8 {
        match vcpu.run().or_fail("guest-run")? {
            VcpuExit::IoOut(port, data) => {
                ensure(
                    "guest-port-write",
                    port == REPORT_PORT && data == EXPECTED_REPORT,
                    format!("out {port:#x} {data:02x?} (expected {REPORT_PORT:#x} {EXPECTED_REPORT:02x?})"),
                )?;
                reported = Some(port);
            }
            VcpuExit::Hlt => {
                return ensure(
                    "guest-halt",
                    reported.is_some(),
                    if reported.is_some() {
                        "HLT after the port write"
                    } else {
                        "HLT before any port write"
                    },
                );
            }
            VcpuExit::InternalError | VcpuExit::FailEntry(..) | VcpuExit::Shutdown => {
                let regs = vcpu.get_regs().map(|r| r.rip).unwrap_or_default();
                return Err(fail(
                    "guest-run",
                    format!("guest stopped abnormally at rip {regs:#x}"),
                ));
            }
            other => return Err(fail("guest-run", format!("unexpected exit {other:?}"))),
        }
    }
    Err(fail("guest-halt", "no HLT after 8 exits"))
}
