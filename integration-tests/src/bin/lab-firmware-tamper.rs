//! Runs inside the lab machine (L1): `lab-firmware-tamper CONFIG COMPONENT` builds the
//! firmware-boot VM of CONFIG (a `bulwark-vmm` config with `machine.firmware`) in this
//! process exactly as `bulwark-vmm` would, then plays a host that changes one byte of
//! the staged COMPONENT (`kernel`, `initrd` or `cmdline`) after the launch measurement,
//! runs the VM and prints `TAMPER component=C exit=REASON`. The firmware must refuse:
//! the scenario checks the exit reason and the refusal on the VM's serial console.
//! Exit 0 when the VM ran, 1 on an error (printed), 2 on bad arguments.

use bulwark_firmware_abi::boot_info::BootInfo;
use bulwark_firmware_abi::map;
use bulwark_vmm::boot_source::{read_inputs, StateUse};
use bulwark_vmm::config::VmConfig;
use bulwark_vmm::vm::Vm;
use vm_memory::{Bytes, GuestAddress};

fn run(config: &str, component: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("reading {config}: {e}"))?;
    let cfg = VmConfig::from_json(&text).map_err(|e| e.to_string())?;
    let inputs = read_inputs(&cfg, StateUse::CheckOnly).map_err(|e| e.to_string())?;
    let mut vm = Vm::build(&cfg, &inputs).map_err(|e| e.to_string())?;
    let mem = vm.guest_memory();
    let mut page = vec![0u8; 4096];
    mem.read_slice(&mut page, GuestAddress(map::BOOT_INFO))
        .map_err(|e| e.to_string())?;
    let info = BootInfo::parse(&page).map_err(|e| e.to_string())?;
    let range = match component {
        "kernel" => info.kernel,
        "initrd" => info.initrd,
        "cmdline" => info.cmdline,
        other => return Err(format!("unknown component {other:?}")),
    };
    if range.len < 2 {
        return Err(format!("the {component} is empty"));
    }
    // The middle of the component: not a header field the firmware reads first.
    let at = GuestAddress(range.addr + range.len / 2);
    let mut byte = [0u8; 1];
    mem.read_slice(&mut byte, at).map_err(|e| e.to_string())?;
    byte[0] ^= 0x01;
    mem.write_slice(&byte, at).map_err(|e| e.to_string())?;
    vm.start().map_err(|e| e.to_string())?;
    Ok(format!("{:?}", vm.wait()))
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, component] = args.as_slice() else {
        eprintln!("usage: lab-firmware-tamper CONFIG kernel|initrd|cmdline");
        return std::process::ExitCode::from(2);
    };
    match run(config, component) {
        Ok(reason) => {
            println!("TAMPER component={component} exit={reason}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lab-firmware-tamper: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
