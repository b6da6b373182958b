# vmm-vfio-linux: bulwark-vmm boots Debian's kernel (/lab/l2/vmlinuz, unsigned, with
# ACPI: Linux finds the PCI host bridge as PNP0A03 in the DSDT and ECAM through the
# MCFG) with virtio-rng-pci (MSI-X, 00:06.0) and ivshmem-plain
# (4 GiB 64-bit prefetchable BAR2, 00:07.0) passed through, each behind its own PCIe
# root port; the guest's init
# (lab/l2-init-vfio.sh) reports what it sees and uses over serial.
lab_check kvm-device test -c /dev/kvm
ulimit -l unlimited
rng=0000:00:06.0; ivs=0000:00:07.0
if lab_bind_vfio $rng && lab_bind_vfio $ivs; then
  lab_pass bind-vfio-pci "$rng (virtio-rng) and $ivs (ivshmem) bound to vfio-pci"
else
  lab_fail bind-vfio-pci "could not bind"; exit 1
fi
cat >/tmp/linux.json <<EOF
{"machine":{"vcpus":1,"mem_mib":256,"mmio64_gib":64,"cpuid_policy":"bulwark-default-v1"},
 "boot_source":{"kind":"linux","kernel":"/lab/l2/vmlinuz","initrd":"/lab/l2/initramfs.cpio",
   "cmdline":"console=ttyS0 reboot=k panic=-1"},
 "devices":{"serial":"stdout","debug_exit":true,
   "vfio":[{"bdf":"$rng"},{"bdf":"$ivs"}]}}
EOF
# The guest's console goes to L1's console live (through tee), so a hang shows where.
echo "--- bulwark-vmm output and L2 console ---"
(BULWARK_LOG=info NO_COLOR=1 timeout -s KILL 300 bulwark-vmm --config /tmp/linux.json 2>&1; echo $? >/tmp/linux.status) | tee /tmp/linux.out
status=$(cat /tmp/linux.status)
echo "--- bulwark-vmm exit status $status ---"
log=$(tr -d '\r' </tmp/linux.out)
check() { # NAME PATTERN
  if line=$(echo "$log" | grep -m1 -- "$2"); then lab_pass "$1" "$line"; else lab_fail "$1" "no L2 line matching '$2'"; fi
}
check l2-booted '^L2-INIT '
# devices.vfio lists virtio-rng first: it is 01:00.0 behind the root port 00:01.0, and
# ivshmem 02:00.0 behind 00:02.0.
check l2-pci-devices '^L2-PCI-FOUND ivshmem=0000:02:00.0 virtio-rng=0000:01:00.0'
check l2-rng-root-port '^L2-PCI-TOPOLOGY 0000:01:00.0 parent=0000:00:01.0 parent_class=0x060400'
check l2-ivshmem-root-port '^L2-PCI-TOPOLOGY 0000:02:00.0 parent=0000:00:02.0 parent_class=0x060400'
check l2-pci-no-reassignment '^L2-PCI-ASSIGN-ERRORS 0$'
check l2-ivshmem-bar '^L2-IVSHMEM .*size=4294967296 first=0x5A5A1234 last=0xA5A54321'
check l2-acpi-pci-root '^L2-ACPI-PCI-ROOT PNP0A08:00 path=._SB_.PCI0$'
# virtio-rng's own Linux driver through the passed-through function: bytes from
# /dev/hwrng, delivered by MSI-X (the completion interrupt is what wakes the reader).
check l2-hwrng '^L2-HWRNG current=virtio_rng\.[0-9]* bytes=[0-9a-f]\{64\}$'
# Linux 6.1 labels MSI-X vectors PCI-MSI in /proc/interrupts; the mode file says which.
check l2-msix '^L2-MSI-MODE msix$'
check l2-msix-interrupts '^L2-IRQ [0-9]*: *[1-9][0-9]* *PCI-MSI .*virtio0-input'
if [ "$status" -eq 23 ]; then lab_pass l2-exit "debug-exit 7, status 23"; else lab_fail l2-exit "status $status"; fi
