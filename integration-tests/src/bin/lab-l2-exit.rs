//! Runs inside the L2 guest that bulwark-vmm boots in the lab: `lab-l2-exit CODE`
//! writes CODE (0..=111) to bulwark-vmm's debug-exit port, ending the VM with exit
//! status 16 + CODE. Busybox cannot do this: Debian's cloud kernel has no `/dev/port`.

fn main() -> std::process::ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_default();
    let code = match arg.parse::<u8>() {
        Ok(code) if code <= 111 => code,
        _ => {
            eprintln!("usage: lab-l2-exit CODE (0..=111), got {arg:?}");
            return std::process::ExitCode::from(2);
        }
    };
    match bulwark_integration_tests::probe::debug_exit(code) {
        Ok(()) => eprintln!("lab-l2-exit: the debug-exit write did not end the VM"),
        Err(e) => eprintln!("lab-l2-exit: ioperm: {e}"),
    }
    std::process::ExitCode::from(1)
}
