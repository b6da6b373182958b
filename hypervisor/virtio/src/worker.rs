//! The I/O worker: one thread per device that runs its requests off the vCPU
//! threads.
//!
//! It waits with `epoll` on the device's queue notification `EventFd`s (the
//! ones from [`crate::MmioTransport::queue_events`], which KVM signals
//! directly when registered as ioeventfds), on the descriptors the device
//! asks for ([`crate::device::VirtioDevice::backend_fds`], vsock's sockets),
//! and on a stop event. Each wake-up locks the device for one bounded batch
//! at a time, so a vCPU reading config space never waits behind a flood.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{lock_device, BackendReady, FdInterest, SharedDevice};

const STOP_TOKEN: u64 = u64::MAX;
const BACKEND_TOKEN: u64 = 1 << 32;
/// Most batches run for one wake-up before other sources get a turn.
const MAX_BATCHES_PER_WAKE: usize = 64;
/// Longest sleep while the device has host descriptors to poll.
const RESYNC_MS: i32 = 200;

/// A running I/O worker thread. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct IoWorker {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

/// An epoll set watching `queue_events[i]` with token `i`.
fn queue_epoll(queue_events: &[EventFd]) -> io::Result<Epoll> {
    let epoll = Epoll::new()?;
    for (i, evt) in queue_events.iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        )?;
    }
    Ok(epoll)
}

impl IoWorker {
    /// Spawns the worker for `device`, with `queue_events[i]` the
    /// notification event of queue `i` (clones of the transport's events).
    pub fn spawn(name: &str, device: SharedDevice, queue_events: Vec<EventFd>) -> io::Result<Self> {
        Self::spawn_with_setup(name, device, queue_events, || Ok(()))
    }

    /// Like [`IoWorker::spawn`], but the thread first runs `setup` (the VMM
    /// installs the thread's seccomp filter there), before it touches the
    /// device or guest memory. If `setup` fails the error is logged and the
    /// thread ends without serving the device.
    pub fn spawn_with_setup(
        name: &str,
        device: SharedDevice,
        queue_events: Vec<EventFd>,
        setup: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> io::Result<Self> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let epoll = queue_epoll(&queue_events)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        let mut state = WorkerLoop {
            epoll,
            device,
            queue_events,
            backend: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || match setup() {
                Ok(()) => state.run(),
                Err(e) => tracing::error!(error = %e, "virtio worker: set-up failed, not serving the device"),
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Whether the worker thread is still running (it ends on stop, when its
    /// set-up fails, or when `epoll_wait` fails).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the worker and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Err(e) = self.stop.write(1) {
                tracing::error!(error = %e, "virtio worker: cannot signal stop");
                return;
            }
            if thread.join().is_err() {
                tracing::error!("virtio worker thread panicked");
            }
        }
    }
}

/// A worker loop driven on the calling thread, one `epoll_wait` at a time,
/// for tests and deterministic harnesses: the same event handling as
/// [`IoWorker`], without a thread. [`ManualWorker::step`] reports how many
/// events each wait returned, so a test can tell a loop that keeps waking
/// (a level-triggered event that stays armed) from one that goes quiet.
#[derive(Debug)]
pub struct ManualWorker {
    state: WorkerLoop,
    events: Vec<EpollEvent>,
}

impl ManualWorker {
    /// The loop for `device`, with `queue_events[i]` the notification event
    /// of queue `i`.
    pub fn new(device: SharedDevice, queue_events: Vec<EventFd>) -> io::Result<Self> {
        let epoll = queue_epoll(&queue_events)?;
        let mut state = WorkerLoop {
            epoll,
            device,
            queue_events,
            backend: HashMap::new(),
        };
        state.sync_backend_fds();
        Ok(Self {
            state,
            events: vec![EpollEvent::default(); 64],
        })
    }

    /// Waits up to `timeout_ms` (0: not at all) and handles what woke it;
    /// returns the number of events `epoll_wait` returned.
    pub fn step(&mut self, timeout_ms: i32) -> io::Result<usize> {
        let Self { state, events } = self;
        state.step(events, timeout_ms).map(|n| n.unwrap_or(0))
    }
}

impl Drop for IoWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Debug)]
struct WorkerLoop {
    epoll: Epoll,
    device: SharedDevice,
    queue_events: Vec<EventFd>,
    backend: HashMap<RawFd, FdInterest>,
}

impl WorkerLoop {
    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        self.sync_backend_fds();
        loop {
            // With host descriptors in play, wake at least every
            // RESYNC_MS so that changes made on other threads (activation
            // or reset from a vCPU) are picked up; otherwise sleep until
            // an event.
            let timeout = if self.backend.is_empty() {
                -1
            } else {
                RESYNC_MS
            };
            match self.step(&mut events, timeout) {
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "virtio worker: epoll_wait failed, stopping");
                    return;
                }
            }
        }
    }

    /// One `epoll_wait` and the work for what it returned. `Ok(Some(n))`:
    /// `n` events woke it (0 on timeout or `EINTR`); `Ok(None)`: stop.
    fn step(&mut self, events: &mut [EpollEvent], timeout: i32) -> io::Result<Option<usize>> {
        let n = match self.epoll.wait(timeout, events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Some(0)),
            Err(e) => return Err(e),
        };
        for event in &events[..n] {
            let token = event.data();
            if token == STOP_TOKEN {
                return Ok(None);
            }
            if token >= BACKEND_TOKEN {
                let fd = (token - BACKEND_TOKEN) as RawFd;
                let set = event.event_set();
                let ready = BackendReady {
                    readable: set.intersects(EventSet::IN | EventSet::READ_HANG_UP),
                    writable: set.contains(EventSet::OUT),
                    hung_up: set.intersects(EventSet::HANG_UP | EventSet::ERROR),
                };
                self.run_batches(|d| d.process_backend(fd, ready));
            } else if let Some(evt) = self.queue_events.get(token as usize) {
                // EAGAIN only means another wake-up already drained it.
                let _ = evt.read();
                let index = token as usize;
                self.run_batches(|d| d.process_queue(index));
            }
        }
        self.sync_backend_fds();
        Ok(Some(n))
    }

    fn run_batches(&self, mut f: impl FnMut(&mut dyn crate::VirtioDevice) -> bool) {
        for _ in 0..MAX_BATCHES_PER_WAKE {
            let more = f(&mut *lock_device(&self.device));
            if !more {
                return;
            }
        }
        // Level-triggered backend fds wake us again; for queues, re-arm the
        // event so the rest is handled after other sources had a turn.
        for evt in &self.queue_events {
            let _ = evt.write(1);
        }
    }

    /// Makes the epoll set match the device's current wishes. Descriptors
    /// can be closed and their numbers reused by the device on other threads
    /// (a reset runs on a vCPU thread), so the map here is only a hint: each
    /// wanted descriptor is modified, or added when epoll no longer has it.
    fn sync_backend_fds(&mut self) {
        let wanted: HashMap<RawFd, FdInterest> = lock_device(&self.device)
            .backend_fds()
            .into_iter()
            .map(|i| (i.fd, i))
            .collect();
        for fd in self.backend.keys() {
            if !wanted.contains_key(fd) {
                // Already closed (and so dropped by epoll) is fine.
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, *fd, EpollEvent::default());
            }
        }
        self.backend.clear();
        for (fd, interest) in wanted {
            // Hang-ups are only asked for together with read interest: a
            // peer that shut its write side keeps READ_HANG_UP raised
            // (level-triggered) for good, so asking for it while the device
            // only wants to write would wake this loop forever. (HANG_UP and
            // ERROR are always reported; the device stops polling a
            // descriptor once it has seen them.)
            let mut set = EventSet::empty();
            if interest.read {
                set |= EventSet::IN | EventSet::READ_HANG_UP;
            }
            if interest.write {
                set |= EventSet::OUT;
            }
            let event = EpollEvent::new(set, BACKEND_TOKEN + fd as u64);
            let result = match self.epoll.ctl(ControlOperation::Modify, fd, event) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.epoll.ctl(ControlOperation::Add, fd, event)
                }
                other => other,
            };
            match result {
                Ok(()) => {
                    self.backend.insert(fd, interest);
                }
                Err(e) => {
                    tracing::error!(fd, error = %e, "virtio worker: cannot poll device descriptor")
                }
            }
        }
    }
}
