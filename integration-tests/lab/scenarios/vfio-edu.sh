# vfio-edu: QEMU's edu device (1234:11e8) bound to vfio-pci and driven by lab-vfio-probe.
if ! bdf=$(lab_find_pci 0x1234 0x11e8); then lab_fail edu-present "no 1234:11e8 PCI function in L1"; exit 1; fi
lab_check bind-vfio-pci lab_bind_vfio "$bdf"
lab-vfio-probe edu "$bdf" || lab_fail vfio-probe "lab-vfio-probe exited with status $?"
# The probe's DMA from the unmapped IOVA (probe::edu::UNMAPPED_IOVA) must show up as an IOMMU fault.
if dmesg | grep -q 'DMAR.*fault addr 0x800000'; then
  lab_pass iommu-fault-logged "$(dmesg | grep -m1 'fault addr 0x800000')"
else
  lab_fail iommu-fault-logged "no DMAR fault at 0x800000 in the kernel log"
fi
