//! Serial input: when the guest's COM1 output goes to the VMM's standard output (the
//! terminal), the VMM's standard input feeds COM1's receive FIFO, so a person (or a
//! pipe) can type into the guest console. Line-buffered as the terminal delivers it
//! (the terminal is left in its normal mode: Ctrl-C still stops the VMM).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use crate::control::{Control, RunState};
use crate::devices::Buses;
use crate::seccomp;
use crate::seccomp::SeccompMode;

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
            let taken = bus.serial_input(rest);
            rest = &rest[taken..];
            if taken == 0 {
                // Full FIFO (or no UART): wait for the guest, unless it is gone.
                if control.state() == RunState::Stopped {
                    return;
                }
                std::thread::sleep(FULL_FIFO_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DevicesConfig, SerialOutput};
    use crate::control::ExitReason;
    use vmm_sys_util::eventfd::EventFd;

    fn uart() -> Buses {
        let cfg = DevicesConfig {
            serial: SerialOutput::Sink,
            ..Default::default()
        };
        Buses::new(
            &cfg.serial,
            cfg.i8042,
            cfg.debug_exit,
            Some(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        )
        .unwrap()
    }

    #[test]
    fn input_fills_the_fifo_and_a_stopped_vm_ends_the_copy_instead_of_waiting() {
        let bus = uart();
        let control = Control::default();
        control.request_stop(ExitReason::Stopped);
        // 100 bytes: 64 fit, then the FIFO is full and the VM is stopped: return.
        copy(&mut &[b'a'; 100][..], &bus, &control);
        assert_eq!(bus.serial_input(b"x"), 0, "FIFO full");
        let mut b = [0u8; 1];
        bus.read(crate::devices::COM1_BASE, &mut b);
        assert_eq!(b[0], b'a');
        assert_eq!(bus.serial_input(b"xy"), 1, "room for one");
    }

    #[test]
    fn without_a_uart_input_is_not_taken() {
        let cfg = DevicesConfig {
            serial: SerialOutput::None,
            ..Default::default()
        };
        let bus = Buses::new(&cfg.serial, cfg.i8042, cfg.debug_exit, None).unwrap();
        assert_eq!(bus.serial_input(b"abc"), 0);
    }
}
