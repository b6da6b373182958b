//! The port-I/O devices the VMM emulates itself: COM1 (16550), the i8042 reset line
//! and the debug-exit port. Everything else a guest touches is "unowned": reads see
//! all-ones, writes are dropped, both are counted and logged (rate-limited).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::Bus;
pub use crate::bus::BusAction;

/// Where the guest's serial output goes (host side; not part of the measurement).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SerialOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// The UART exists but output is dropped.
    Sink,
    /// No UART at all.
    None,
}

/// COM1 base port.
pub const COM1_BASE: u16 = 0x3f8;
/// COM1 interrupt line.
pub const COM1_IRQ: u32 = 4;
/// i8042 data port (the controller spans 0x60..=0x64).
pub const I8042_BASE: u16 = 0x60;
/// The debug-exit port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Serial output beyond this many bytes is dropped (a guest must not fill the disk).
pub const SERIAL_OUTPUT_LIMIT: u64 = 64 << 20;

/// An interrupt line raised through a KVM irqfd.
#[derive(Debug)]
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// A latch set by the i8042 when the guest asks for a CPU reset.
#[derive(Debug, Clone, Default)]
pub struct Latch(Arc<AtomicBool>);

impl Trigger for Latch {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Where serial bytes go, with the output cap.
pub struct SerialSink {
    out: Option<Box<dyn Write + Send>>,
    written: u64,
    /// Bytes dropped past the cap.
    pub dropped: u64,
}

impl std::fmt::Debug for SerialSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialSink")
            .field("written", &self.written)
            .finish()
    }
}

impl SerialSink {
    /// Opens the configured output.
    pub fn open(cfg: &SerialOutput) -> std::io::Result<Self> {
        let out: Option<Box<dyn Write + Send>> = match cfg {
            SerialOutput::Stdout => Some(Box::new(std::io::stdout())),
            SerialOutput::File(p) => Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            SerialOutput::Sink | SerialOutput::None => None,
        };
        Ok(SerialSink {
            out,
            written: 0,
            dropped: 0,
        })
    }
}

impl Write for SerialSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written >= SERIAL_OUTPUT_LIMIT {
            self.dropped += buf.len() as u64;
            return Ok(buf.len());
        }
        self.written += buf.len() as u64;
        match &mut self.out {
            Some(o) => o.write_all(buf).map(|_| buf.len()),
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }
}

/// Counters for unowned accesses.
#[derive(Debug, Default)]
pub struct UnownedCounters {
    /// Port reads/writes nobody owns.
    pub pio: AtomicU64,
    /// MMIO reads/writes nobody owns.
    pub mmio: AtomicU64,
}

/// How many unowned accesses are logged individually before logging goes quiet
/// (then every 65536th).
const LOG_FIRST: u64 = 16;

impl UnownedCounters {
    fn note(counter: &AtomicU64, what: &str, addr: u64, len: usize, write: bool) {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        if n < LOG_FIRST || n.is_multiple_of(65536) {
            tracing::warn!(
                addr = format_args!("{addr:#x}"),
                len,
                write,
                total = n + 1,
                "guest accessed unowned {what}"
            );
        }
    }
}

/// Every device a vCPU exit can reach: the fixed legacy ports (COM1, i8042,
/// debug-exit), then the dynamic port and MMIO [`Bus`]es that configured devices
/// register on; what nobody owns is counted in `unowned`.
pub struct Buses {
    serial: Option<Mutex<Serial<IrqLine, vm_superio::serial::NoEvents, SerialSink>>>,
    i8042: Option<Mutex<I8042Device<Latch>>>,
    reset: Latch,
    debug_exit: bool,
    /// Port ranges of configured devices (PCI configuration ports, ACPI registers).
    pub pio: Bus,
    /// MMIO ranges of configured devices.
    pub mmio: Bus,
    /// Unowned-access counters (ports and MMIO).
    pub unowned: UnownedCounters,
}

impl std::fmt::Debug for Buses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buses")
            .field("debug_exit", &self.debug_exit)
            .field("pio", &self.pio)
            .field("mmio", &self.mmio)
            .finish()
    }
}

impl Buses {
    /// Builds the bus; `serial_irq` is the eventfd registered as irqfd for IRQ 4.
    pub fn new(
        serial: &SerialOutput,
        i8042: bool,
        debug_exit: bool,
        serial_irq: Option<EventFd>,
    ) -> std::io::Result<Self> {
        let serial = match (serial, serial_irq) {
            (SerialOutput::None, _) | (_, None) => None,
            (out, Some(evt)) => Some(Mutex::new(Serial::new(
                IrqLine(evt),
                SerialSink::open(out)?,
            ))),
        };
        let reset = Latch::default();
        Ok(Buses {
            serial,
            i8042: i8042.then(|| Mutex::new(I8042Device::new(reset.clone()))),
            reset,
            debug_exit,
            pio: Bus::new(),
            mmio: Bus::new(),
            unowned: UnownedCounters::default(),
        })
    }

    /// A guest read of `data.len()` bytes from `port`.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        match port {
            COM1_BASE..=0x3ff if self.serial.is_some() && data.len() == 1 => {
                if let Some(s) = &self.serial {
                    data[0] = lock(s).read((port - COM1_BASE) as u8);
                }
            }
            0x60..=0x64 if self.i8042.is_some() && data.len() == 1 => {
                if let Some(d) = &self.i8042 {
                    data[0] = lock(d).read((port - I8042_BASE) as u8);
                }
            }
            DEBUG_EXIT_PORT if self.debug_exit => data.fill(0),
            _ if self.pio.read(u64::from(port), data) => {}
            _ => UnownedCounters::note(
                &self.unowned.pio,
                "port",
                u64::from(port),
                data.len(),
                false,
            ),
        }
    }

    /// A guest write of `data` to `port`.
    pub fn write(&self, port: u16, data: &[u8]) -> BusAction {
        match port {
            COM1_BASE..=0x3ff if self.serial.is_some() && data.len() == 1 => {
                if let Some(s) = &self.serial {
                    if let Err(e) = lock(s).write((port - COM1_BASE) as u8, data[0]) {
                        tracing::warn!(error = %e, "serial write failed");
                    }
                }
                BusAction::Continue
            }
            0x60..=0x64 if self.i8042.is_some() && data.len() == 1 => {
                if let Some(d) = &self.i8042 {
                    let Ok(()) = lock(d).write((port - I8042_BASE) as u8, data[0]);
                }
                if self.reset.0.swap(false, Ordering::SeqCst) {
                    BusAction::Reset
                } else {
                    BusAction::Continue
                }
            }
            DEBUG_EXIT_PORT if self.debug_exit => {
                BusAction::DebugExit(data.first().copied().unwrap_or(0))
            }
            _ => self.pio.write(u64::from(port), data).unwrap_or_else(|| {
                UnownedCounters::note(&self.unowned.pio, "port", u64::from(port), data.len(), true);
                BusAction::Continue
            }),
        }
    }

    /// A guest MMIO read of `data.len()` bytes at `addr`.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            UnownedCounters::note(&self.unowned.mmio, "MMIO", addr, data.len(), false);
        }
    }

    /// A guest MMIO write of `data` at `addr`.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> BusAction {
        self.mmio.write(addr, data).unwrap_or_else(|| {
            UnownedCounters::note(&self.unowned.mmio, "MMIO", addr, data.len(), true);
            BusAction::Continue
        })
    }

    /// Queues host bytes in COM1's receive FIFO (raising its interrupt when the guest
    /// enabled it); returns how many fit: 0 when the FIFO is full or there is no UART.
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        match &self.serial {
            Some(s) => {
                let mut uart = lock(s);
                if uart.fifo_capacity() == 0 {
                    return 0;
                }
                uart.enqueue_raw_bytes(bytes).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "serial input");
                    0
                })
            }
            None => 0,
        }
    }

    /// Serial bytes dropped past the output cap.
    pub fn serial_dropped(&self) -> u64 {
        self.serial.as_ref().map_or(0, |s| lock(s).writer().dropped)
    }
}

/// Locks a device mutex; a poisoned lock (a panic while holding it) still yields the
/// device, since device state stays consistent between single register accesses.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DevicesConfig;

    #[test]
    fn owned_ports_route_and_unowned_are_counted() {
        let cfg = DevicesConfig {
            serial: SerialOutput::Sink,
            i8042: true,
            debug_exit: true,
            ..Default::default()
        };
        let bus = Buses::new(
            &cfg.serial,
            cfg.i8042,
            cfg.debug_exit,
            Some(EventFd::new(0).unwrap()),
        )
        .unwrap();
        let mut b = [0u8; 1];
        bus.read(COM1_BASE + 5, &mut b); // LSR: transmitter empty
        assert_eq!(b[0] & 0x60, 0x60);
        assert_eq!(bus.write(0x64, &[0x01]), BusAction::Continue);
        assert_eq!(bus.write(0x64, &[0xfe]), BusAction::Reset);
        assert_eq!(bus.write(DEBUG_EXIT_PORT, &[7]), BusAction::DebugExit(7));
        assert_eq!(bus.write(0x1234, &[1, 2]), BusAction::Continue);
        let mut w = [0u8; 4];
        bus.read(0x5678, &mut w);
        assert_eq!(w, [0xff; 4]);
        assert_eq!(bus.unowned.pio.load(Ordering::Relaxed), 2);
    }
}
