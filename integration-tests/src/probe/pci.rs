//! PCI helpers for probes that drive a device through VFIO.

use vfio_bindings::bindings::vfio::{VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP};
use vfio_ioctls::VfioDevice;
use vm_memory::{FileOffset, MmapRegion};

use super::{ensure, raw, Failed};

/// Sets Memory Space and Bus Master in the command register: without Bus Master the
/// device's DMA never reaches memory (VFIO leaves that to the user, as QEMU does).
/// Reported as the check `bus-master`.
pub fn enable_bus_master(device: &VfioDevice) -> Result<(), Failed> {
    const COMMAND: u64 = 0x04;
    const MEMORY_SPACE: u16 = 1 << 1;
    const BUS_MASTER: u16 = 1 << 2;
    let value = config_read::<2>(device, COMMAND);
    let value = u16::from_le_bytes(value) | MEMORY_SPACE | BUS_MASTER;
    device.region_write(VFIO_PCI_CONFIG_REGION_INDEX, &value.to_le_bytes(), COMMAND);
    let readback = u16::from_le_bytes(config_read::<2>(device, COMMAND));
    ensure(
        "bus-master",
        readback & (MEMORY_SPACE | BUS_MASTER) == MEMORY_SPACE | BUS_MASTER,
        format!("PCI command register {readback:#06x}"),
    )
}

/// `N` bytes of config space at `offset` (zeros where VFIO refuses the read, which the
/// callers' checks on the values then catch).
pub fn config_read<const N: usize>(device: &VfioDevice, offset: u64) -> [u8; N] {
    let mut bytes = [0u8; N];
    device.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut bytes, offset);
    bytes
}

/// Maps VFIO region `index` (a BAR) of `device` into this process.
pub fn map_region(device: &VfioDevice, index: u32) -> Result<MmapRegion, String> {
    let size = device.get_region_size(index);
    if size == 0 || device.get_region_flags(index) & VFIO_REGION_INFO_FLAG_MMAP == 0 {
        return Err(format!("region {index} ({size} bytes) cannot be mmapped"));
    }
    let file = raw::duplicate_fd(device).map_err(|e| format!("duplicating the device fd: {e}"))?;
    let offset = device.get_region_offset(index);
    MmapRegion::<()>::from_file(FileOffset::new(file, offset), size as usize)
        .map_err(|e| format!("mapping region {index}: {e}"))
}
