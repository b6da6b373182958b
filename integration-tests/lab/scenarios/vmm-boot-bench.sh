# vmm-boot-bench (a benchmark, run by `bench/vmm-boot --lab`, never as a test):
# bulwark-vmm and `qemu-system-x86_64 -M microvm -accel kvm` boot the same Debian
# kernel (bzImage) and initramfs, 1 vCPU, 256 MiB, under KVM inside L1, `runs` (5) times
# each, alternating; the L2 init (lab/l2-init-vmm.sh) prints L2-INIT and runs
# `poweroff -f` (ACPI S5 on both), so both VMMs exit 0. lab-boot-timer prints one
# BENCH line per boot: spawn -> first serial byte, -> the L2-INIT line, -> exit. The
# checks only say that every boot ended as expected; no time is judged.
lab_check kvm-device test -c /dev/kvm
runs=${runs:-5}
cmdline="console=ttyS0 panic=-1 quiet bulwark.exit=poweroff"
cat >/tmp/bench-vm.json <<JSON
{"machine": {"vcpus": 1, "mem_mib": 256, "mmio64_gib": 64, "cpuid_policy": "bulwark-default-v1"},
 "boot_source": {"kind": "linux", "kernel": "/lab/l2/vmlinuz", "initrd": "/lab/l2/initramfs.cpio",
                 "cmdline": "$cmdline"},
 "devices": {"serial": "stdout"}}
JSON
ok_vmm=0 ok_qemu=0
i=0
while [ $i -lt $runs ]; do
  if timeout -s KILL 120 lab-boot-timer bulwark-vmm 0 L2-INIT -- bulwark-vmm --config /tmp/bench-vm.json; then
    ok_vmm=$((ok_vmm + 1))
  fi
  if timeout -s KILL 120 lab-boot-timer qemu-microvm 0 L2-INIT -- qemu-system-x86_64 -accel kvm -cpu host,xsave=off \
      -M microvm -smp 1 -m 256M -nodefaults -no-user-config -no-reboot -nographic -serial stdio -display none \
      -kernel /lab/l2/vmlinuz -initrd /lab/l2/initramfs.cpio -append "$cmdline"; then
    ok_qemu=$((ok_qemu + 1))
  fi
  i=$((i + 1))
done
if [ $ok_vmm -eq $runs ]; then lab_pass bench-bulwark-vmm "$runs boots"; else lab_fail bench-bulwark-vmm "$ok_vmm of $runs boots ended as expected"; fi
if [ $ok_qemu -eq $runs ]; then lab_pass bench-qemu-microvm "$runs boots"; else lab_fail bench-qemu-microvm "$ok_qemu of $runs boots ended as expected"; fi
