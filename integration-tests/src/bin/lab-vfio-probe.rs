//! Runs inside the lab machine (L1): VFIO checks on one PCI function bound to vfio-pci.
//!
//! `lab-vfio-probe edu BDF` (QEMU's edu device) or `lab-vfio-probe virtio-msix BDF`
//! (a modern virtio-rng device with iommu_platform=on).

use bulwark_integration_tests::probe;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["edu", bdf] => probe::edu::run(bdf),
        ["virtio-msix", bdf] => probe::virtio_msix::run(bdf),
        _ => Err(probe::fail(
            "vfio-probe-usage",
            format!("usage: lab-vfio-probe edu|virtio-msix PCI_ADDRESS (got {args:?})"),
        )),
    };
    probe::exit_code(result)
}
