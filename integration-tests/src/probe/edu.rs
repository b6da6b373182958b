//! `vfio-edu`: QEMU's `edu` teaching device (1234:11e8) driven from user space
//! through VFIO: container, group and device, regions and config space, BAR0
//! mapped, a DMA round trip through the IOMMU, MSI on an eventfd, and DMA from an
//! unmapped IOVA blocked.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice};
use vm_memory::{MmapRegion, VolatileMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ensure, fail, get, pass, pci, put, raw, wait_for, wait_for_event, Failed, OrFail};

const EDU_VENDOR_DEVICE: u32 = 0x11e8_1234;
/// BAR0 registers (QEMU docs/specs/edu.rst).
const REG_IDENT: usize = 0x00;
const REG_LIVENESS: usize = 0x04;
const REG_IRQ_RAISE: usize = 0x60;
const REG_IRQ_ACK: usize = 0x64;
const REG_DMA_SRC: usize = 0x80;
const REG_DMA_DST: usize = 0x88;
const REG_DMA_COUNT: usize = 0x90;
const REG_DMA_CMD: usize = 0x98;
const DMA_CMD_START: u64 = 1;
const DMA_CMD_TO_RAM: u64 = 2;
/// The device's own 4 KiB DMA buffer, in its DMA address space (not readable through BAR0).
const EDU_BUFFER: u64 = 0x40000;
/// QEMU 7.2's edu aborts on a transfer ending exactly at the buffer's end: stay below.
const TRANSFER: usize = 2048;
/// Contents of the page unmapped before the device reads it, and of the device
/// buffer before that read.
const SECRET: u8 = 0x5a;
const FILLER: u8 = 0xa5;

/// Where the probe maps its DMA buffer (below the device's 28-bit DMA mask).
const DMA_IOVA: u64 = 0x10_0000;
/// The IOVA that is mapped, filled, then unmapped before the device is told to read it.
/// The scenario script looks for the IOMMU fault at this address in the kernel log.
pub const UNMAPPED_IOVA: u64 = 0x80_0000;

/// Runs the probe on the device at PCI address `bdf` (already bound to vfio-pci).
pub fn run(bdf: &str) -> Result<(), Failed> {
    let sysfs = Path::new("/sys/bus/pci/devices").join(bdf);
    let container = Arc::new(VfioContainer::new(None).or_fail("vfio-open")?);
    let device = VfioDevice::new(&sysfs, container.clone(), false).or_fail("vfio-open")?;
    pass(
        "vfio-open",
        format!("container, group and device fd for {bdf}"),
    );

    let bar0_size = device.get_region_size(VFIO_PCI_BAR0_REGION_INDEX);
    let bar0_flags = device.get_region_flags(VFIO_PCI_BAR0_REGION_INDEX);
    let config_size = device.get_region_size(VFIO_PCI_CONFIG_REGION_INDEX);
    ensure(
        "vfio-regions",
        bar0_size == 0x10_0000
            && bar0_flags & VFIO_REGION_INFO_FLAG_MMAP != 0
            && config_size >= 256,
        format!("BAR0 {bar0_size:#x} bytes flags {bar0_flags:#x}, config {config_size} bytes"),
    )?;

    let id = u32::from_le_bytes(pci::config_read::<4>(&device, 0));
    ensure(
        "vfio-config-space",
        id == EDU_VENDOR_DEVICE,
        format!("vendor:device dword {id:#010x}"),
    )?;

    pci::enable_bus_master(&device)?;
    let bar0 = pci::map_region(&device, VFIO_PCI_BAR0_REGION_INDEX).or_fail("bar0-mmap")?;
    let ident = read32(&bar0, REG_IDENT)?;
    write32(&bar0, REG_LIVENESS, 0x1234_5678)?;
    let liveness = read32(&bar0, REG_LIVENESS)?;
    ensure(
        "bar0-mmap",
        ident & 0xff == 0xed && liveness == !0x1234_5678,
        format!(
            "ident {ident:#010x}, liveness {liveness:#010x} (expected {:#010x})",
            !0x1234_5678u32
        ),
    )?;

    let buffer = MmapRegion::<()>::new(0x2000).or_fail("dma-map")?;
    raw::dma_map(&container, DMA_IOVA, &buffer).or_fail("dma-map")?;
    pass("dma-map", format!("8 KiB at IOVA {DMA_IOVA:#x}"));

    let pattern: Vec<u8> = (0..TRANSFER).map(|i| (i * 7 + 3) as u8).collect();
    let back =
        round_trip(&bar0, &buffer, DMA_IOVA, &pattern).map_err(|e| fail("dma-round-trip", e))?;
    ensure(
        "dma-round-trip",
        back == pattern,
        format!(
            "{TRANSFER} bytes RAM -> device -> RAM: {}",
            verdict(&back, &pattern)
        ),
    )?;

    let event = EventFd::new(EFD_NONBLOCK).or_fail("msi-eventfd")?;
    device.enable_msi(vec![&event]).or_fail("msi-eventfd")?;
    write32(&bar0, REG_IRQ_RAISE, 0x1)?;
    let count = wait_for_event(&event, Duration::from_secs(5));
    write32(&bar0, REG_IRQ_ACK, 0x1)?;
    ensure(
        "msi-eventfd",
        count.is_some(),
        count.map_or("no MSI within 5 s".into(), |n| {
            format!("eventfd counted {n}")
        }),
    )?;
    device.disable_msi().or_fail("msi-eventfd")?;

    // A page the device may no longer reach: map it, fill it with a secret, unmap it,
    // then ask the device to read it. The IOMMU must stop the read, so the device
    // buffer (filled beforehand with a different byte) must not receive the secret.
    let victim = MmapRegion::<()>::new(0x1000).or_fail("dma-unmap")?;
    put(&victim, 0, &[SECRET; TRANSFER]).or_fail("dma-unmap")?;
    raw::dma_map(&container, UNMAPPED_IOVA, &victim).or_fail("dma-unmap")?;
    container
        .vfio_dma_unmap(UNMAPPED_IOVA, 0x1000)
        .or_fail("dma-unmap")?;
    pass(
        "dma-unmap",
        format!("IOVA {UNMAPPED_IOVA:#x} mapped then unmapped"),
    );
    let filler = [FILLER; TRANSFER];
    let before = round_trip(&bar0, &buffer, DMA_IOVA, &filler)
        .map_err(|e| fail("unmapped-iova-blocked", e))?;
    if before != filler {
        return Err(fail(
            "unmapped-iova-blocked",
            "could not fill the device buffer first",
        ));
    }
    dma(&bar0, UNMAPPED_IOVA, EDU_BUFFER, TRANSFER, false)
        .map_err(|e| fail("unmapped-iova-blocked", e))?;
    put(&buffer, 0x1000, &[0; TRANSFER]).or_fail("unmapped-iova-blocked")?;
    dma(&bar0, EDU_BUFFER, DMA_IOVA + 0x1000, TRANSFER, true)
        .map_err(|e| fail("unmapped-iova-blocked", e))?;
    let mut after = vec![0u8; TRANSFER];
    get(&buffer, 0x1000, &mut after).or_fail("unmapped-iova-blocked")?;
    let leaked = after.iter().filter(|&&b| b == SECRET).count();
    ensure(
        "unmapped-iova-blocked",
        leaked == 0,
        format!("after a DMA from {UNMAPPED_IOVA:#x}, {leaked} of {TRANSFER} device buffer bytes hold the unmapped page's contents"),
    )?;
    drop(victim);
    Ok(())
}

fn read32(bar: &MmapRegion, offset: usize) -> Result<u32, Failed> {
    Ok(bar.get_ref::<u32>(offset).or_fail("bar0-access")?.load())
}

fn write32(bar: &MmapRegion, offset: usize, value: u32) -> Result<(), Failed> {
    bar.get_ref::<u32>(offset)
        .or_fail("bar0-access")?
        .store(value);
    Ok(())
}

/// Copies `data` to the device's buffer and back into RAM (at `iova` + 4 KiB),
/// returning what came back.
fn round_trip(
    bar: &MmapRegion,
    ram: &MmapRegion,
    iova: u64,
    data: &[u8],
) -> Result<Vec<u8>, String> {
    put(ram, 0, data).map_err(|e| e.to_string())?;
    put(ram, 0x1000, &vec![0; data.len()]).map_err(|e| e.to_string())?;
    dma(bar, iova, EDU_BUFFER, data.len(), false)?;
    dma(bar, EDU_BUFFER, iova + 0x1000, data.len(), true)?;
    let mut back = vec![0; data.len()];
    get(ram, 0x1000, &mut back).map_err(|e| e.to_string())?;
    Ok(back)
}

/// Runs one edu DMA transfer and waits for the device to finish it.
fn dma(bar: &MmapRegion, src: u64, dst: u64, len: usize, to_ram: bool) -> Result<(), String> {
    let reg = |offset| bar.get_ref::<u64>(offset).map_err(|e| e.to_string());
    reg(REG_DMA_SRC)?.store(src);
    reg(REG_DMA_DST)?.store(dst);
    reg(REG_DMA_COUNT)?.store(len as u64);
    let cmd = reg(REG_DMA_CMD)?;
    cmd.store(DMA_CMD_START | if to_ram { DMA_CMD_TO_RAM } else { 0 });
    if wait_for(Duration::from_secs(5), || cmd.load() & DMA_CMD_START == 0) {
        Ok(())
    } else {
        Err(format!(
            "DMA {src:#x} -> {dst:#x} did not finish within 5 s"
        ))
    }
}

/// "identical", or where the first difference is.
fn verdict(actual: &[u8], expected: &[u8]) -> String {
    match actual.iter().zip(expected).position(|(a, b)| a != b) {
        None => "identical".into(),
        Some(i) => format!(
            "first difference at byte {i}: {:#04x} != {:#04x}",
            actual[i], expected[i]
        ),
    }
}
