#!/bin/busybox sh
# PID 1 of the L2 guest that bulwark-vmm boots from a signed bundle (vmm-linux):
# reports its kernel, hypervisor, CPUs and command line over the serial port, then
# ends the VM as `bulwark.exit=` on its command line asks: `poweroff` runs
# `poweroff -f` (ACPI S5 through the FADT's sleep control register: bulwark-vmm exits
# 0), `reset` runs `reboot -f` (through the reset vector to the FADT's reset
# register: exit 3), `debug` writes 7 to
# the debug-exit port (lab-l2-exit: exit 16 + 7 = 23). A failure is reported and
# falls through to `reboot -f`.
/bin/busybox --install -s /bin
mkdir -p /proc /sys
mount -t proc proc /proc
mount -t sysfs sysfs /sys
hypervisor=$(dmesg | sed -n 's/.*Hypervisor detected: *//p' | head -n 1)
echo "L2-INIT kernel=$(uname -r) hypervisor=${hypervisor:-none} cpus=$(grep -c ^processor /proc/cpuinfo) uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "L2-CPUS online=$(cat /sys/devices/system/cpu/online)"
echo "L2-ACPI tables=$(ls /sys/firmware/acpi/tables 2>/dev/null | tr '\n' ',') errors=$(dmesg | grep -c 'ACPI.*[Ee]rror')"
echo "L2-CMDLINE $(cat /proc/cmdline)"
case " $(cat /proc/cmdline) " in
  *" bulwark.exit=poweroff "*)
    poweroff -f
    echo "L2-POWEROFF-FAILED" ;;
  *" bulwark.exit=debug "*)
    lab-l2-exit 7
    echo "L2-DEBUG-EXIT-FAILED" ;;
esac
reboot -f
echo "L2-REBOOT-FAILED"
