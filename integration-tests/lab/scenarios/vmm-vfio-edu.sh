# vmm-vfio-edu: bulwark-vmm passes QEMU's edu device (00:04.0) through VFIO into the
# tiny guest /lab/tiny/vfio-edu.bin (integration-tests/tiny-guests/src/bin/vfio_edu.rs),
# which scans the guest's bus 0 through ports 0xCF8/0xCFC and finds edu behind a PCIe
# root port (01:00.0 behind 00:01.0, BAR0 inside the port's window), sizes BAR0, checks edu's
# identification and liveness registers, DMAs 2 KiB into its own RAM and back and takes
# two MSIs; with MSI off it takes them as INTx through the IOAPIC. Then: a second VM takes the device after the first ended, a third is
# refused while the second holds it, and the refusals of a bad IOMMU group (00:05.0
# shares its group with 00:05.1, which stays unbound), a missing device and a too-low
# RLIMIT_MEMLOCK, each with a clear error and exit status 1.
lab_check kvm-device test -c /dev/kvm
ulimit -l unlimited || echo "could not raise RLIMIT_MEMLOCK"
edu=0000:00:04.0; g0=0000:00:05.0; g1=0000:00:05.1
for d in $edu $g0 $g1; do
  echo "$d: $(cat /sys/bus/pci/devices/$d/vendor):$(cat /sys/bus/pci/devices/$d/device) group $(basename "$(readlink /sys/bus/pci/devices/$d/iommu_group)")"
done
if lab_bind_vfio $edu && lab_bind_vfio $g0; then
  lab_pass bind-vfio-pci "$edu and $g0 bound to vfio-pci, $g1 left unbound"
else
  lab_fail bind-vfio-pci "could not bind $edu/$g0 to vfio-pci"; exit 1
fi

# vmconfig NAME BDF ARG: a raw tiny-guest VM with one assigned device.
vmconfig() {
  cat >/tmp/$1.json <<EOF
{"machine":{"vcpus":1,"mem_mib":64,"mmio64_gib":64},
 "boot_source":{"kind":"raw","image":"/lab/tiny/vfio-edu.bin","load_addr":1048576,
   "entry":{"mode":"long64","rip":1048576,"rsi":$3}},
 "devices":{"serial":{"file":"/tmp/$1.serial"},"debug_exit":true,"vfio":[{"bdf":"$2"}]}}
EOF
}

# runvm NAME: runs the VM, sets $status, shows its output and console.
runvm() {
  BULWARK_LOG=info timeout -s KILL 120 bulwark-vmm --config /tmp/$1.json >/tmp/$1.out 2>&1
  status=$?
  echo "--- $1: bulwark-vmm exit status $status ---"; cat /tmp/$1.out
  echo "--- $1: guest console ---"; cat /tmp/$1.serial 2>/dev/null; echo "--- end of $1 ---"
}

# guest_check CHECK VM PATTERN: passes if the VM's console has a line matching PATTERN.
guest_check() {
  if line=$(grep -m1 -- "$3" /tmp/$2.serial 2>/dev/null); then
    lab_pass "$1" "$line"
  else
    lab_fail "$1" "no line matching '$3' on the $2 console"
  fi
}

vmconfig vm1 $edu 0
bulwark-vmm measure --config /tmp/vm1.json >/tmp/vm1.measure 2>&1
runvm vm1
guest_check edu-found vm1 '^EDU-FOUND 01:00.0'
guest_check edu-root-port vm1 '^EDU-PORT 00:01.0 root-port=true window='
guest_check edu-bar0 vm1 '^EDU-BAR0 .* ok$'
guest_check edu-bar-move-refused vm1 '^EDU-BAR-MOVE refused=true'
guest_check edu-ident vm1 '^EDU-IDENT .* ok$'
guest_check edu-msi-enable vm1 '^EDU-MSI-ENABLE .*enabled=true'
guest_check edu-dma vm1 '^EDU-DMA 2048 of 2048 bytes back ok'
guest_check edu-msi vm1 '^EDU-MSI after-dma.* ok$'
if [ "$status" -eq 16 ] && grep -q '^EDU-DONE pass' /tmp/vm1.serial; then
  lab_pass edu-vm-exit "guest passed and ended through debug-exit 0 (status 16); $(grep -o 'DMA-mapped guest RAM.*' /tmp/vm1.out | head -n1)"
else
  lab_fail edu-vm-exit "bulwark-vmm exited $status (expected 16)"
fi
booted=$(sed -n 's/^bulwark-vmm: launch measurement //p' /tmp/vm1.out)
if grep -q "pcie-root-port@00:01.0,bus=01" /tmp/vm1.measure && grep -q "vfio-pci@01:00.0,host=$edu,id=1234:11e8" /tmp/vm1.measure && grep -q "\"measurement\": \"$booted\"" /tmp/vm1.measure && [ -n "$booted" ]; then
  lab_pass edu-measured "device list has pcie-root-port@00:01.0,bus=01 and vfio-pci@01:00.0,host=$edu,id=1234:11e8; measure = booted = $booted"
else
  lab_fail edu-measured "booted '$booted'; measure: $(head -c 1500 /tmp/vm1.measure)"
fi

# INTx: the same guest with MSI left off (RSI=2) takes the interrupts on the IOAPIC
# pin that the interrupt line register names (irqfd with resample, VFIO unmask).
vmconfig intx $edu 2
runvm intx
guest_check edu-intx-route intx '^EDU-INTX-ROUTE pin=1 line=1[6-9] ok$'
guest_check edu-intx intx '^EDU-INTX after-dma.* ok$'

# A secondary bus reset on the root port (RSI=3) resets the device behind it: MSI reads
# disabled afterwards, and DMA and MSI work again once the guest re-enables them (edu
# has no VFIO reset, so the VMM's VFIO_DEVICE_RESET fails with EINVAL and is logged;
# the seccomp filter lets the vCPU thread make the call).
vmconfig busreset $edu 3
runvm busreset
guest_check edu-bus-reset busreset '^EDU-BUS-RESET msi-before=true msi-after=false ok$'
if [ "$status" -eq 16 ] && grep -q '^EDU-DONE pass' /tmp/busreset.serial && grep -q 'guest reset the secondary bus' /tmp/busreset.out; then
  lab_pass edu-bus-reset-then-works "after the bus reset DMA and MSI worked (status 16); $(grep -o 'guest reset the secondary bus.*' /tmp/busreset.out | head -n1)"
else
  lab_fail edu-bus-reset-then-works "bulwark-vmm exited $status (expected 16)"
fi

# Another VM takes the device after the first ones ended, and keeps it (RSI=1: halts).
vmconfig hold $edu 1
BULWARK_LOG=info timeout -s KILL 150 bulwark-vmm --config /tmp/hold.json >/tmp/hold.out 2>&1 &
holder=$!
i=0
while [ $i -lt 90 ] && ! grep -q '^EDU-HOLD' /tmp/hold.serial 2>/dev/null; do sleep 1; i=$((i + 1)); done
if grep -q '^EDU-DONE pass' /tmp/hold.serial 2>/dev/null; then
  lab_pass teardown-second-vm "a second VM took $edu after the first ended and passed every step"
else
  lab_fail teardown-second-vm "second VM: $(cat /tmp/hold.serial 2>/dev/null | tr '\n' '|') $(cat /tmp/hold.out)"
fi
vmconfig busy $edu 0
runvm busy
if [ "$status" -eq 1 ] && grep -q 'already in use by another VM' /tmp/busy.out && [ ! -s /tmp/busy.serial ]; then
  lab_pass refuse-busy "$(tail -n1 /tmp/busy.out)"
else
  lab_fail refuse-busy "status $status: $(cat /tmp/busy.out)"
fi
kill -TERM $holder
wait $holder
echo "--- hold: bulwark-vmm exit status $? ---"; cat /tmp/hold.out

vmconfig group $g0 0
runvm group
if [ "$status" -eq 1 ] && grep -q "IOMMU group .* with $g1" /tmp/group.out && [ ! -s /tmp/group.serial ]; then
  lab_pass refuse-group "$(tail -n1 /tmp/group.out)"
else
  lab_fail refuse-group "status $status: $(cat /tmp/group.out)"
fi
vmconfig nodev 0000:00:1e.0 0
runvm nodev
if [ "$status" -eq 1 ] && grep -q 'no PCI device 0000:00:1e.0' /tmp/nodev.out; then
  lab_pass refuse-no-device "$(tail -n1 /tmp/nodev.out)"
else
  lab_fail refuse-no-device "status $status: $(cat /tmp/nodev.out)"
fi
vmconfig memlock $edu 0
(ulimit -l 1024 && timeout -s KILL 60 bulwark-vmm --config /tmp/memlock.json >/tmp/memlock.out 2>&1)
status=$?
cat /tmp/memlock.out
if [ "$status" -eq 1 ] && grep -q 'RLIMIT_MEMLOCK is 1048576 bytes' /tmp/memlock.out && [ ! -s /tmp/memlock.serial ]; then
  lab_pass refuse-memlock "$(tail -n1 /tmp/memlock.out)"
else
  lab_fail refuse-memlock "status $status: $(cat /tmp/memlock.out)"
fi
