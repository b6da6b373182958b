//! Draining virtqueues written by a hostile driver.
//!
//! [`ActiveQueues`] is what every device holds once activated: guest memory,
//! its queues and the interrupt. It pops chains one at a time (so the device
//! can complete each before the next), turns ring-level corruption (an
//! available index that runs more than a queue ahead, a used ring that
//! cannot be written) into `DEVICE_NEEDS_RESET`, and after that refuses to
//! touch the rings again until the device is reset.

use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};

use crate::chain::{parse_chain, uses_indirect, ChainError, ParsedChain, VIRTIO_F_INDIRECT_DESC};
use crate::counters::{guest_warn, DeviceCounters};
use crate::device::{ActivateContext, ActivateError, Interrupt, InterruptKind};
use crate::GuestMemory;

/// What [`ActiveQueues::pop`] found.
#[derive(Debug)]
pub enum Popped {
    /// The queue has nothing available (or is broken / not ready).
    Empty,
    /// A validated chain.
    Chain(ParsedChain),
    /// A chain that failed validation; the device must complete `head`
    /// (with an error status where it can) and count the error.
    Invalid {
        /// Head index to return in the used ring.
        head: u16,
        /// What was wrong.
        error: ChainError,
    },
}

/// The running state of an activated device.
#[derive(Debug)]
pub struct ActiveQueues {
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    queues: Vec<Queue>,
    interrupt: Arc<dyn Interrupt>,
    counters: Arc<DeviceCounters>,
    acked_features: u64,
    broken: bool,
}

impl ActiveQueues {
    /// Takes over the queues of an activation; every queue in `required`
    /// must be ready.
    pub fn new(
        ctx: ActivateContext,
        required: usize,
        counters: Arc<DeviceCounters>,
    ) -> Result<Self, ActivateError> {
        if ctx.queues.len() < required {
            return Err(ActivateError::BadQueue {
                index: ctx.queues.len(),
                reason: "missing".into(),
            });
        }
        if let Some(index) = ctx.queues[..required].iter().position(|q| !q.ready()) {
            return Err(ActivateError::BadQueue {
                index,
                reason: "not ready".into(),
            });
        }
        Ok(Self {
            mem: ctx.mem,
            queues: ctx.queues,
            interrupt: ctx.interrupt,
            counters,
            acked_features: ctx.acked_features,
            broken: false,
        })
    }

    /// The features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the device entered `DEVICE_NEEDS_RESET`.
    pub fn is_broken(&self) -> bool {
        self.broken || self.interrupt.needs_reset()
    }

    /// The size the driver chose for queue `index` (0 when absent).
    pub fn queue_size(&self, index: usize) -> u16 {
        self.queues.get(index).map_or(0, |q| q.size())
    }

    /// Puts the device into `DEVICE_NEEDS_RESET`: logs, counts, tells the
    /// transport, and stops all queue processing.
    pub fn fail(&mut self, reason: &str) {
        if !self.broken {
            guest_warn!(self.counters, reason, "virtio device needs reset");
            self.broken = true;
            // The interrupt counts the needs-reset entry (once per entry, whoever
            // triggers it: the device here or the transport).
            self.counters.add_error();
            self.interrupt.set_needs_reset(reason);
        }
    }

    /// Pops the next available chain of queue `index`.
    pub fn pop(&mut self, index: usize) -> Popped {
        if self.is_broken() {
            return Popped::Empty;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return Popped::Empty;
        };
        if !queue.ready() {
            return Popped::Empty;
        }
        let mem: &GuestMemory = &self.mem;
        let next = match queue.iter(mem) {
            Ok(mut iter) => iter.next(),
            Err(e) => {
                let reason = format!("queue {index}: {e}");
                self.fail(&reason);
                return Popped::Empty;
            }
        };
        let Some(chain) = next else {
            return Popped::Empty;
        };
        let head = chain.head_index();
        if self.acked_features & VIRTIO_F_INDIRECT_DESC == 0
            && uses_indirect(mem, queue.desc_table(), queue.size(), head)
        {
            let error = ChainError::IndirectNotNegotiated;
            guest_warn!(self.counters, queue = index, head, %error, "refused descriptor chain");
            return Popped::Invalid { head, error };
        }
        match parse_chain(chain, mem) {
            Ok(parsed) => Popped::Chain(parsed),
            Err(error) => {
                guest_warn!(self.counters, queue = index, head, %error, "refused descriptor chain");
                Popped::Invalid { head, error }
            }
        }
    }

    /// Returns chain `head` to the driver with `len` bytes written.
    pub fn complete(&mut self, index: usize, head: u16, len: u32) {
        if self.is_broken() {
            return;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        if let Err(e) = queue.add_used(&*self.mem, head, len) {
            let reason = format!("queue {index}: cannot return descriptor {head}: {e}");
            self.fail(&reason);
        }
    }

    /// Undoes the last [`Self::pop`] of queue `index`, for a device that
    /// popped a buffer it cannot fill yet (vsock rx with nothing to send).
    pub fn unpop(&mut self, index: usize) {
        if let Some(queue) = self.queues.get_mut(index) {
            QueueOwnedT::go_to_previous_position(queue);
        }
    }

    /// Serves one bounded batch (at most one queue's worth) of chains from
    /// queue `index`: each valid chain goes to `serve`, which returns the
    /// used length; invalid ones are returned with length 0 and counted as
    /// errors. Interrupts once for the batch. Returns `true` when the batch
    /// was full, so more may be pending.
    pub fn serve_batch(
        &mut self,
        index: usize,
        mut serve: impl FnMut(&GuestMemory, &ParsedChain) -> u32,
    ) -> bool {
        let batch = self.queue_size(index).max(1);
        let mem = self.mem.clone();
        let mut completed = 0usize;
        let mut more = true;
        for _ in 0..batch {
            let (head, used) = match self.pop(index) {
                Popped::Empty => {
                    more = false;
                    break;
                }
                Popped::Invalid { head, .. } => {
                    self.counters.add_error();
                    (head, 0)
                }
                Popped::Chain(chain) => {
                    self.counters.add_request();
                    (chain.head, serve(&mem, &chain))
                }
            };
            self.complete(index, head, used);
            completed += 1;
        }
        if completed > 0 {
            self.notify(index);
        }
        more && !self.is_broken()
    }

    /// Raises the used-buffer interrupt if the driver wants one.
    pub fn notify(&mut self, index: usize) {
        if self.is_broken() {
            return;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        match queue.needs_notification(&*self.mem) {
            Ok(true) => self.interrupt.signal(InterruptKind::UsedBuffer(index)),
            Ok(false) => {}
            Err(e) => {
                let reason = format!("queue {index}: cannot read used event: {e}");
                self.fail(&reason);
            }
        }
    }
}
