#!/bin/busybox sh
# PID 1 of the lab machine (L1). Written into every L1 initramfs by the lab runner:
# mounts the kernel file systems, loads the scenario's modules (files under
# /lab/modules, numbered in dependency order), runs /lab/scenario.sh and powers off.
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
# Keep the serial console for result lines; kernel messages stay readable with dmesg.
echo 1 >/proc/sys/kernel/printk

. /lab/lib.sh

failed=""
for module in /lab/modules/*.ko; do
  [ -e "$module" ] || continue
  insmod "$module" 2>/tmp/insmod.err || failed="$failed ${module##*/}($(cat /tmp/insmod.err))"
done
if [ -z "$failed" ]; then lab_pass modules-loaded; else lab_fail modules-loaded "insmod failed:$failed"; fi

sh -c '. /lab/lib.sh; . /lab/scenario.sh'
status=$?
[ "$status" -eq 0 ] || lab_fail scenario-script "exited with status $status"
echo "LAB-RESULT done"
reboot -f
