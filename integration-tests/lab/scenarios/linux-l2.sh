# linux-l2: a Linux guest (L2) boots under KVM inside L1 to an init that reports over
# its serial console. The VMM is the host's QEMU copied into L1 (with its libraries),
# standing in until bulwark-vmm can boot Linux.
lab_check kvm-device test -c /dev/kvm
if version=$(qemu-system-x86_64 --version 2>&1); then
  lab_pass l2-vmm-starts "$(echo "$version" | head -n 1)"
else
  lab_fail l2-vmm-starts "$version"; exit 1
fi
# L2 powers itself off (lab/l2-init.sh): QEMU exits 0. A hung L2 is killed with SIGKILL
# (QEMU would exit 0 on SIGTERM), so that status 137 tells the two apart.
timeout -s KILL 150 qemu-system-x86_64 -accel kvm -cpu host,xsave=off -M microvm -smp 1 -m 256M \
  -nodefaults -no-reboot -nographic -serial stdio -display none \
  -kernel /lab/l2/vmlinuz -initrd /lab/l2/initramfs.cpio \
  -append "console=ttyS0 panic=-1 quiet" </dev/null >/tmp/l2.log 2>&1
status=$?
echo "--- L2 console (QEMU exit status $status) ---"
tr -d '\r' </tmp/l2.log
echo "--- end of L2 console ---"
if line=$(tr -d '\r' </tmp/l2.log | grep -m1 '^L2-INIT '); then
  lab_pass l2-init-reached "$line"
else
  lab_fail l2-init-reached "the L2 console has no L2-INIT line"
fi
if tr -d '\r' </tmp/l2.log | grep -q '^L2-INIT .*hypervisor=KVM'; then
  lab_pass l2-under-kvm
else
  lab_fail l2-under-kvm "L2 did not detect KVM as its hypervisor"
fi
if [ "$status" -eq 0 ]; then
  lab_pass l2-exit "L2 powered off, QEMU exited 0"
else
  lab_fail l2-exit "QEMU exited with status $status (137: killed after 150 s)"
fi
