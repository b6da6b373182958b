#!/bin/busybox sh
# PID 1 of the Linux guest of the vmm-vfio-linux scenario (booted by bulwark-vmm with
# ACPI, so Linux finds the PCI host bridge in the DSDT and ECAM in the MCFG): lists the PCI
# functions it sees, writes and reads back both ends of ivshmem's 4 GiB BAR2 (with
# busybox devmem; sysfs resource files of memory BARs only support mmap), loads
# virtio_pci and virtio_rng (from /lab/modules) and reads /dev/hwrng, shows the MSI-X
# lines of /proc/interrupts, and ends the VM through the debug-exit port (code 7).
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "L2-INIT kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "L2-ACPI-PCI-ROOT $(ls /sys/bus/acpi/devices | grep PNP0A0 | tr '\n' ' ')path=$(cat /sys/bus/acpi/devices/PNP0A08:00/path 2>/dev/null)"
echo "L2-CPU apic=$(grep -m1 -c -w apic /proc/cpuinfo) x2apic=$(grep -m1 -c -w x2apic /proc/cpuinfo)"
ivs=; rng=
for d in /sys/bus/pci/devices/*; do
  id="$(cat $d/vendor):$(cat $d/device)"
  echo "L2-PCI ${d##*/} $id class=$(cat $d/class)"
  case $id in
    0x1af4:0x1110) ivs=$d ;;
    0x1af4:0x1044) rng=$d ;;
  esac
done
echo "L2-PCI-FOUND ivshmem=${ivs##*/} virtio-rng=${rng##*/}"
# Each passed-through function sits behind its own PCIe root port (class 0x060400),
# and Linux kept the windows and BARs the VMM assigned (nothing reassigned or refused).
for d in $ivs $rng; do
  parent=$(dirname "$(readlink -f $d)")
  echo "L2-PCI-TOPOLOGY ${d##*/} parent=${parent##*/} parent_class=$(cat $parent/class) port_driver=$(basename "$(readlink $parent/driver 2>/dev/null)") link=$(cat $parent/current_link_speed 2>/dev/null | tr -d ' ')x$(cat $parent/current_link_width 2>/dev/null)"
done
echo "L2-PCI-ASSIGN-ERRORS $(dmesg | grep -c -i -E 'no space for|failed to assign|can.t claim|not claimed|bridge window .* (disabled|released)')"
dmesg | grep -i -E 'pci 0000:0[0-2]:.*(bridge window|BAR|PCIe)' | head -n 20 | while read -r line; do echo "L2-DMESG $line"; done
if [ -n "$ivs" ]; then
  set -- $(sed -n 3p $ivs/resource)
  start=$(($1)); end=$(($2)); size=$((end - start + 1))
  echo 1 >$ivs/enable
  last=$((end - 7))
  devmem $start 32 0x5a5a1234
  devmem $last 32 0xa5a54321
  first=$(devmem $start 32); tail=$(devmem $last 32)
  printf 'L2-IVSHMEM bar2=0x%x size=%d first=%s last=%s\n' $start $size $first $tail
fi
echo "L2-LOADING-MODULES"
for m in /lab/modules/*.ko; do
  insmod $m 2>/tmp/insmod.err || echo "L2-INSMOD-FAILED $m $(cat /tmp/insmod.err)"
done
sleep 1
echo "L2-MODULES-LOADED"
echo "L2-HWRNG current=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null) bytes=$(timeout 30 dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
[ -n "$rng" ] && echo "L2-MSI-MODE $(cat $rng/msi_irqs/* 2>/dev/null | sort -u | tr '\n' ' ' | sed 's/ $//')"
grep -i 'msi' /proc/interrupts | while read -r line; do echo "L2-IRQ $line"; done
echo "L2-DONE"
lab-l2-exit 7
echo "L2-DEBUG-EXIT-FAILED"
reboot -f
