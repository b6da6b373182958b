//! virtio-rng (entropy device, virtio 1.2 section 5.4): fills each writable
//! buffer from the host's `getrandom`, at most [`MAX_BYTES_PER_REQUEST`] per
//! request.

use std::sync::Arc;

use crate::chain::SegmentCursor;
use crate::counters::DeviceCounters;
use crate::device::{ActivateContext, ActivateError, DeviceType, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::queue::ActiveQueues;

/// Most bytes one request gets.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
const QUEUE_SIZES: [u16; 1] = [256];

/// The entropy device.
#[derive(Debug)]
pub struct Rng {
    active: Option<ActiveQueues>,
    counters: Arc<DeviceCounters>,
    buf: Vec<u8>,
}

impl Default for Rng {
    fn default() -> Self {
        Self {
            active: None,
            counters: Arc::default(),
            buf: vec![0; MAX_BYTES_PER_REQUEST],
        }
    }
}

impl Rng {
    /// A new, not activated device.
    pub fn new() -> Self {
        Self::default()
    }

    fn handle(&mut self, index: usize) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let (counters, buf) = (&self.counters, &mut self.buf);
        active.serve_batch(index, |mem, chain| {
            let want = usize::try_from(chain.writable_len())
                .unwrap_or(usize::MAX)
                .min(MAX_BYTES_PER_REQUEST);
            let out = &mut buf[..want];
            if let Err(e) = getrandom::getrandom(out) {
                tracing::error!(error = %e, "virtio-rng: getrandom failed");
                counters.add_error();
                return 0;
            }
            let filled = SegmentCursor::new(mem, &chain.writable)
                .write(out)
                .unwrap_or(0);
            counters.add_bytes_read(filled as u64);
            // filled <= MAX_BYTES_PER_REQUEST.
            filled as u32
        })
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

    fn config_len(&self) -> usize {
        0
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
