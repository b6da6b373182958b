#!/bin/busybox sh
# PID 1 of the Linux guest of the vmm-linux-virtio and vmm-linux-virtio-pci scenarios:
# bulwark-vmm boots it from a signed bundle whose ext4 rootfs component is served as a
# read-only virtio-blk disk (id `rootfs`), with a writable scratch disk (id `scratch`),
# virtio-rng and virtio-vsock: virtio-mmio devices that Debian's kernel finds only
# through the ACPI DSDT (LNRO0005), or virtio-pci functions on the PCI root bus the
# DSDT describes (\_SB.PCI0; their PCI functions, drivers and MSI-X vectors are
# reported as L2-PCI lines). It loads the virtio modules from /lab/modules, reports over
# serial (L2-* lines the L1 script checks): the block devices, the SHA-256 of the
# rootfs disk's first bulwark.rootfs_bytes bytes against bulwark.rootfs_sha256 (both
# on the signed command line), that the rootfs disk refuses writes, a file read from
# it mounted read-only, a pattern written to and read back from the scratch disk with
# O_DIRECT, bytes from /dev/hwrng, the bound vsock driver and a vsock round trip with
# L1's lab-vsock-peer (lab-l2-vsock), then powers off.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "L2-INIT kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
arg() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" /proc/cmdline; }
failed=
for m in /lab/modules/*.ko; do
  insmod "$m" 2>/tmp/insmod.err || failed="$failed ${m##*/}:$(cat /tmp/insmod.err)"
done
echo "L2-MODULES loaded=$(ls /lab/modules | tr '\n' ',') failed=${failed:-none} uptime=$(cut -d' ' -f1 /proc/uptime)"
# virtio_blk probes synchronously on insmod; give the partition scan a moment.
i=0
while [ $i -lt 25 ] && [ ! -e /sys/block/vdb ]; do sleep 0.2; i=$((i + 1)); done
root=; scratch=; list=
for b in /sys/block/vd*; do
  [ -e "$b" ] || continue
  n=${b##*/}; serial=$(cat $b/serial 2>/dev/null)
  list="$list $n:serial=$serial:ro=$(cat $b/ro):sectors=$(cat $b/size)"
  case $serial in rootfs) root=$n ;; scratch) scratch=$n ;; esac
done
echo "L2-BLOCK${list:- none} root=$root scratch=$scratch"
for d in /sys/bus/virtio/devices/*; do
  [ -e "$d" ] || continue
  drv=$(readlink $d/driver); echo "L2-VIRTIO ${d##*/} device=$(cat $d/device) driver=${drv##*/}"
done
for d in /sys/bus/pci/devices/*; do
  [ -e "$d" ] || continue
  drv=$(readlink $d/driver)
  modes=$(cat $d/msi_irqs/* 2>/dev/null | sort -u | tr '\n' ' ' | sed 's/ $//')
  echo "L2-PCI ${d##*/} $(cat $d/vendor):$(cat $d/device) class=$(cat $d/class) driver=${drv##*/} vectors=$(ls $d/msi_irqs 2>/dev/null | wc -l) mode=${modes:-none}"
done
dmesg | grep -i 'virtio' | while read -r line; do echo "L2-DMESG $line"; done
# vsock: listen on port 1234 (L1 starts lab-vsock-peer once it sees
# L2-VSOCK-LISTENING), echo, then send 4 chunks of 64 KiB to the host's port 5678.
timeout 90 lab-l2-vsock 4 &
vsock=$!

if [ -n "$root" ]; then
  want=$(arg bulwark.rootfs_sha256); bytes=$(arg bulwark.rootfs_bytes)
  got=$(head -c "$bytes" /dev/$root | sha256sum | cut -d' ' -f1)
  if [ -n "$want" ] && [ "$got" = "$want" ]; then r=ok; else r=mismatch; fi
  echo "L2-ROOTFS-SHA256 $r bytes=$bytes got=$got want=$want"
  before=$(head -c 4096 /dev/$root | sha256sum | cut -d' ' -f1)
  if dd if=/dev/zero of=/dev/$root bs=4096 count=1 oflag=direct 2>/tmp/dd.err; then w=accepted; else w="refused($(head -n 1 /tmp/dd.err))"; fi
  echo 3 >/proc/sys/vm/drop_caches
  after=$(head -c 4096 /dev/$root | sha256sum | cut -d' ' -f1)
  [ "$before" = "$after" ] && same=unchanged || same=changed
  echo "L2-ROOTFS-RO sysfs_ro=$(cat /sys/block/$root/ro) write=$w first_block=$same"
  if mount -t ext4 -o ro /dev/$root /mnt 2>/tmp/mount.err; then
    echo "L2-ROOTFS-FILE $(cat /mnt/bulwark-lab.txt 2>&1)"
    umount /mnt
  else
    echo "L2-ROOTFS-FILE mount failed: $(cat /tmp/mount.err)"
  fi
fi
if [ -n "$scratch" ]; then
  dd if=/dev/urandom of=/tmp/pattern bs=4096 count=16 2>/dev/null
  want=$(sha256sum </tmp/pattern | cut -d' ' -f1)
  if dd if=/tmp/pattern of=/dev/$scratch bs=4096 count=16 oflag=direct 2>/tmp/dd.err &&
     got=$(dd if=/dev/$scratch bs=4096 count=16 iflag=direct 2>/tmp/dd.err | sha256sum | cut -d' ' -f1); then
    how=direct
  else
    how="buffered($(tail -n 1 /tmp/dd.err))"
    dd if=/tmp/pattern of=/dev/$scratch bs=4096 count=16 conv=fsync 2>/dev/null
    sync; echo 3 >/proc/sys/vm/drop_caches
    got=$(dd if=/dev/$scratch bs=4096 count=16 2>/dev/null | sha256sum | cut -d' ' -f1)
  fi
  [ "$got" = "$want" ] && r=ok || r=mismatch
  echo "L2-SCRATCH $r io=$how wrote=$want read=$got"
fi
echo "L2-HWRNG current=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null) bytes=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
wait $vsock
vsock_status=$?
echo "L2-VSOCK dev=$(ls /dev/vsock 2>/dev/null) lab-l2-vsock=$vsock_status"
grep -i 'virtio' /proc/interrupts | while read -r line; do echo "L2-IRQ $line"; done
echo "L2-DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
# Let L1 read GET /vm once more with the counters of all the above.
sleep 2
poweroff -f
echo "L2-POWEROFF-FAILED"
reboot -f
