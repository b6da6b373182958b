#!/bin/busybox sh
# PID 1 of the L2 guest that bulwark-vmm boots from a signed bundle (vmm-linux):
# reports its kernel, hypervisor and command line over the serial port, then
# reboots with `reboot=k` on its command line, i.e. through the i8042 reset line,
# which ends bulwark-vmm with exit status 3.
/bin/busybox --install -s /bin
mkdir -p /proc
mount -t proc proc /proc
hypervisor=$(dmesg | sed -n 's/.*Hypervisor detected: *//p' | head -n 1)
echo "L2-INIT kernel=$(uname -r) hypervisor=${hypervisor:-none} cpus=$(grep -c ^processor /proc/cpuinfo) uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "L2-CMDLINE $(cat /proc/cmdline)"
reboot -f
echo "L2-REBOOT-FAILED"
