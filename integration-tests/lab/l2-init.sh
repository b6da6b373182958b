#!/bin/busybox sh
# PID 1 of the L2 guest in the linux-l2 scenario: reports over serial, then powers the
# VM off (ACPI on QEMU's microvm), which ends QEMU with status 0.
/bin/busybox --install -s /bin
mkdir -p /proc
mount -t proc proc /proc
hypervisor=$(dmesg | sed -n 's/.*Hypervisor detected: *//p' | head -n 1)
echo "L2-INIT kernel=$(uname -r) hypervisor=${hypervisor:-none} uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
echo "L2-POWEROFF-FAILED"
reboot -f
