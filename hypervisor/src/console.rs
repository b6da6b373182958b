//! Serial input: when the guest's COM1 output goes to the VMM's standard output (the
//! terminal), the VMM's standard input feeds COM1's receive FIFO, so a person (or a
//! pipe) can type into the guest console. Line-buffered as the terminal delivers it
//! (the terminal is left in its normal mode: Ctrl-C still stops the VMM).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use crate::config::SeccompMode;
use crate::control::{Control, RunState};
use crate::devices::Buses;
use crate::seccomp;

/// Bytes read from standard input at a time (at most this many wait in the VMM while
/// the guest's 64-byte FIFO is full: memory stays bounded).
const CHUNK: usize = 64;
/// How long to wait before offering bytes to a full FIFO again.
const FULL_FIFO_BACKOFF: Duration = Duration::from_millis(5);

/// Starts the `serial-in` thread: it installs the control-thread seccomp filter, then
/// copies standard input into COM1 until end of file, a read error, or the VM stops.
pub fn spawn_stdin_reader(
    bus: Arc<Buses>,
    control: Arc<Control>,
    mode: SeccompMode,
) -> Result<(), String> {
    let filter = seccomp::control_filter(mode)?;
    std::thread::Builder::new()
        .name("serial-in".into())
        .spawn(move || {
            if let Err(e) = seccomp::install(mode, filter.as_ref()) {
                tracing::error!(error = %e, "seccomp on the serial input thread; no serial input");
                return;
            }
            copy(&mut std::io::stdin().lock(), &bus, &control);
        })
        .map(|_| ())
        .map_err(|e| format!("spawning the serial input thread: {e}"))
}

fn copy(input: &mut impl Read, bus: &Buses, control: &Control) {
    let mut buf = [0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading standard input for the serial port");
                return;
            }
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            if control.state() == RunState::Stopped {
                return;
            }
            let taken = bus.serial_input(rest);
            rest = &rest[taken..];
            if taken == 0 {
                std::thread::sleep(FULL_FIFO_BACKOFF);
            }
        }
    }
}
