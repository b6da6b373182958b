//! virtio-rng (entropy device, virtio 1.2 section 5.4): fills each writable
//! buffer from the host's `getrandom`, at most [`MAX_BYTES_PER_REQUEST`] per
//! request.

use std::sync::Arc;

use crate::chain::SegmentCursor;
use crate::counters::DeviceCounters;
use crate::device::{ActivateContext, ActivateError, DeviceType, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::queue::{ActiveQueues, Popped};

/// Most bytes one request gets.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
const QUEUE_SIZES: [u16; 1] = [256];

/// The entropy device.
#[derive(Debug, Default)]
pub struct Rng {
    active: Option<ActiveQueues>,
    counters: Arc<DeviceCounters>,
}

impl Rng {
    /// A new, not activated device.
    pub fn new() -> Self {
        Self::default()
    }

    fn handle(&mut self, active_index: usize) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let batch = active.queue_size(active_index).max(1);
        let mut buf = vec![0u8; MAX_BYTES_PER_REQUEST];
        for _ in 0..batch {
            let (head, written) = match active.pop(active_index) {
                Popped::Empty => return false,
                Popped::Invalid { head, .. } => {
                    self.counters.add_error();
                    (head, 0)
                }
                Popped::Chain(chain) => {
                    self.counters.add_request();
                    let want = usize::try_from(chain.writable_len())
                        .unwrap_or(usize::MAX)
                        .min(MAX_BYTES_PER_REQUEST);
                    let out = &mut buf[..want];
                    let filled = match getrandom::getrandom(out) {
                        Ok(()) => SegmentCursor::new(&active.mem, &chain.writable)
                            .write(out)
                            .unwrap_or(0),
                        Err(e) => {
                            tracing::error!(error = %e, "virtio-rng: getrandom failed");
                            self.counters.add_error();
                            0
                        }
                    };
                    self.counters.add_bytes_read(filled as u64);
                    (chain.head, filled as u32)
                }
            };
            active.complete(active_index, head, written);
            active.notify(active_index);
        }
        true
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> DeviceType {
        DeviceType::Rng
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn offered_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) -> bool {
        false
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueues::new(ctx, 1, self.counters.clone())?);
        Ok(())
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize) -> bool {
        self.handle(index)
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }
}
