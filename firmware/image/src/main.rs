//! The Bulwark guest firmware. Entered at the reset vector (`entry.rs`); in 64-bit
//! mode it reads the boot-info page the VMM wrote, checks the staged command line,
//! initrd and kernel against the measured kernel-hashes table
//! (`bulwark_firmware_abi::check`, the same code the host tests run), builds the Linux
//! zero page and enters the kernel. Any refusal is printed on COM1 with its reason and
//! ends the VM with its own exit code. See docs/firmware.md.
#![no_std]
#![no_main]

mod entry;
mod io;
mod phys;

use core::convert::Infallible;
use core::fmt::Write;

use bulwark_firmware_abi::boot_info::BootInfo;
use bulwark_firmware_abi::check::{self, Component, KernelImage, Refusal};
use bulwark_firmware_abi::hashes::{self, HashesTable};
use bulwark_firmware_abi::map;

use io::Serial;

/// Called by `entry.rs` in long mode on the firmware's stack.
#[no_mangle]
extern "C" fn firmware_main() -> ! {
    let started = io::rdtsc();
    let _ = writeln!(
        Serial,
        "bulwark-firmware {}: checking the staged kernel",
        env!("CARGO_PKG_VERSION")
    );
    match boot(started) {
        Ok(never) => match never {},
        Err(refusal) => {
            let code = refusal.exit_code();
            let _ = writeln!(
                Serial,
                "bulwark-firmware: refused: {refusal} (exit code {code:#x})"
            );
            io::exit(code)
        }
    }
}

fn boot(started: u64) -> Result<Infallible, Refusal> {
    // SAFETY: the boot-info page is the firmware's fixed page (map::BOOT_INFO), RAM in
    // every layout the VMM builds; nothing writes it while it is read.
    let info =
        BootInfo::parse(unsafe { phys::bytes(map::BOOT_INFO, 4096) }).map_err(Refusal::BootInfo)?;
    check::check_ranges(&info)?;
    // SAFETY: the hashes page is the firmware's fixed page (map::HASH_TABLE), never
    // written by the firmware.
    let table =
        HashesTable::parse(unsafe { phys::bytes(map::HASH_TABLE, hashes::PADDED_LEN as u64) })
            .map_err(Refusal::HashTable)?;

    // The command line is copied to where the kernel reads it, and the copy checked.
    // SAFETY: check_ranges put the staged command line in its own window, apart from
    // the firmware's command-line page (map::CMDLINE), which nothing else aliases.
    let (staged, cmdline) = unsafe {
        (
            phys::bytes(info.cmdline.addr, info.cmdline.len),
            phys::bytes_mut(map::CMDLINE, info.cmdline.len),
        )
    };
    cmdline.copy_from_slice(staged);
    check::check_digest(Component::Cmdline, cmdline, &table)?;

    let initrd: &[u8] = match info.initrd.len {
        0 => &[],
        // SAFETY: check_ranges accepted the range (RAM, apart from everything else).
        len => unsafe { phys::bytes(info.initrd.addr, len) },
    };
    check::check_digest(Component::Initrd, initrd, &table)?;

    // SAFETY: as for the initrd.
    let kernel = unsafe { phys::bytes(info.kernel.addr, info.kernel.len) };
    check::check_digest(Component::Kernel, kernel, &table)?;
    let image = KernelImage::parse(kernel)?;
    check::check_load(&info, &image)?;

    // SAFETY: check_load put the load range in RAM, apart from the staged components;
    // the zero page is the firmware's own page.
    let (load, zero_page) = unsafe {
        (
            phys::bytes_mut(map::KERNEL_LOAD, image.pm_len),
            phys::bytes_mut(map::ZERO_PAGE, 4096),
        )
    };
    load.copy_from_slice(&kernel[image.setup_len as usize..]);
    let zero_page: &mut [u8; 4096] = zero_page
        .try_into()
        .map_err(|_| Refusal::KernelFormat("zero page"))?;
    check::zero_page(kernel, &image, &info, zero_page);
    let _ = writeln!(
        Serial,
        "bulwark-firmware: kernel ({} bytes), initrd ({} bytes) and command line match the measured hashes; entering the kernel at {:#x}",
        kernel.len(),
        initrd.len(),
        image.entry()
    );
    let _ = writeln!(
        Serial,
        "bulwark-firmware: checked and copied in {} TSC cycles",
        io::rdtsc().wrapping_sub(started)
    );
    // SAFETY: the kernel was verified and copied to its load address, its zero page
    // built; the firmware ends here.
    unsafe { phys::enter_kernel(image.entry(), map::ZERO_PAGE) }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let _ = writeln!(Serial, "bulwark-firmware: panic: {info}");
    io::exit(0x3f)
}
