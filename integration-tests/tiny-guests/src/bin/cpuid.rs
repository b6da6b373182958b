//! Reports the CPUID words the policy tests check, as `name=hex` lines.
#![no_std]
#![no_main]

use tiny_guest::{cpuid, exit, print};

#[no_mangle]
extern "C" fn guest_main(_cpu: u64, _arg: u64) -> ! {
    let (_, b1, c1, d1) = cpuid(1, 0);
    let (max, ..) = cpuid(0, 0);
    let (_, b7, c7, _) = if max >= 7 { cpuid(7, 0) } else { (0, 0, 0, 0) };
    let (ad, ..) = if max >= 0xd {
        cpuid(0xd, 1)
    } else {
        (0, 0, 0, 0)
    };
    print!("leaf1.ebx={b1:08x}\nleaf1.ecx={c1:08x}\nleaf1.edx={d1:08x}\n");
    print!("leaf7.ebx={b7:08x}\nleaf7.ecx={c7:08x}\nleafd1.eax={ad:08x}\ncpuid done\n");
    exit(0)
}
