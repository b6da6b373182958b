//! `vfio-msix`: not written yet.
use super::{fail, Failed};

/// Not implemented yet: reports a failed check saying so.
pub fn run(_bdf: &str) -> Result<(), Failed> {
    Err(fail("virtio-msix", "the virtio MSI-X probe is not implemented yet"))
}
