#!/bin/busybox sh
# PID 1 of the L2 guest that bulwark-vmm boots from a signed bundle (vmm-linux):
# reports its kernel, hypervisor and command line over the serial port, then ends
# the VM: with `bulwark.exit=debug` on its command line by writing 7 to the
# debug-exit port (lab-l2-exit; bulwark-vmm exits 16 + 7 = 23), else (and if that
# fails) with `reboot -f`, which with `reboot=k` is the i8042 reset line (exit 3).
/bin/busybox --install -s /bin
mkdir -p /proc
mount -t proc proc /proc
hypervisor=$(dmesg | sed -n 's/.*Hypervisor detected: *//p' | head -n 1)
echo "L2-INIT kernel=$(uname -r) hypervisor=${hypervisor:-none} cpus=$(grep -c ^processor /proc/cpuinfo) uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "L2-CMDLINE $(cat /proc/cmdline)"
if grep -q 'bulwark.exit=debug' /proc/cmdline; then
  lab-l2-exit 7
  echo "L2-DEBUG-EXIT-FAILED"
fi
reboot -f
echo "L2-REBOOT-FAILED"
