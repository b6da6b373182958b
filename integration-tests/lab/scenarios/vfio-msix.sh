# vfio-msix: a modern virtio-rng device (1af4:1044, iommu_platform=on) bound to vfio-pci;
# lab-vfio-probe drives one virtqueue request and waits for its MSI-X interrupt.
if ! bdf=$(lab_find_pci 0x1af4 0x1044); then lab_fail virtio-rng-present "no 1af4:1044 PCI function in L1"; exit 1; fi
lab_check bind-vfio-pci lab_bind_vfio "$bdf"
lab-vfio-probe virtio-msix "$bdf" || lab_fail vfio-probe "lab-vfio-probe exited with status $?"
