# vmm-boot-bench (a benchmark, run by `bench/vmm-boot --lab`, never as a test): the
# same Debian kernel and initramfs, 1 vCPU, 256 MiB, booted under KVM inside L1 by
#   bulwark-vmm          bulwark-vmm as it ships (the release build, /bin/bulwark-vmm-release)
#                        from the signed vmlinux bundle (/lab/l2/vmlinux.bwi: signatures and
#                        every byte verified, measured boot) through its PVH entry;
#                        `reboot -f` (the ACPI reset register, exit 3)
#   bulwark-vmm-bzimage  the same, from the signed bzImage bundle; `poweroff -f` (ACPI S5,
#                        exit 0)
#   firecracker          the vmlinux extracted from the same kernel (/lab/l2/vmlinux;
#                        Firecracker boots no bzImage), `reboot=k` + `reboot -f` (its i8042
#                        reset: it has no ACPI power-off; exit 0); only when the lab was
#                        given its binary (BULWARK_BENCH_FIRECRACKER, copied to
#                        /bin/firecracker), else skipped with a note
#   qemu-microvm         `qemu-system-x86_64 -M microvm -accel kvm`, the bzImage,
#                        `poweroff -f` (ACPI S5, exit 0)
# `runs` (5) times each, alternating. The L2 init (lab/l2-init-vmm.sh) prints L2-INIT and
# ends the VM as `bulwark.exit=` asks. lab-boot-timer prints one BENCH line per boot:
# spawn -> first serial byte, -> the L2-INIT line, -> exit, and the VMM's RSS at the
# L2-INIT line with and without the resident guest-RAM mapping (own_rss_kib); bulwark-vmm
# runs with BULWARK_LOG=info, so its `boot phases` line (docs/vmm.md) is in the log. The
# checks only say that every boot ended as expected; no time or size is judged.
lab_check kvm-device test -c /dev/kvm
runs=${runs:-5}
base="console=ttyS0 panic=-1 quiet"
poweroff_cmdline="$base bulwark.exit=poweroff"
reset_cmdline="$base reboot=k bulwark.exit=reset"
for kind in vmlinux bzimage; do
  entry=auto
  [ $kind = vmlinux ] && entry=pvh
  cat >/tmp/bench-vm-$kind.json <<JSON
{"machine": {"vcpus": 1, "mem_mib": 256, "mmio64_gib": 64, "cpuid_policy": "bulwark-default-v1"},
 "boot_source": {"kind": "bundle", "path": "/lab/l2/$kind.bwi", "trusted_keys": ["/lab/l2/signing.pub"],
                 "entry": "$entry"},
 "devices": {"serial": "stdout"}}
JSON
done
cat >/tmp/bench-fc.json <<JSON
{"boot-source": {"kernel_image_path": "/lab/l2/vmlinux", "initrd_path": "/lab/l2/initramfs.cpio",
                 "boot_args": "$reset_cmdline"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
 "drives": []}
JSON
fc=
if [ -x /bin/firecracker ]; then
  fc=/bin/firecracker
  echo "BENCH-NOTE firecracker $($fc --version 2>&1 | head -n 1)"
else
  echo "BENCH-NOTE firecracker absent (BULWARK_BENCH_FIRECRACKER not given to the lab): not run"
fi
ok_vmm=0 ok_bzimage=0 ok_fc=0 ok_qemu=0
i=0
while [ $i -lt $runs ]; do
  if BULWARK_LOG=info timeout -s KILL 120 lab-boot-timer bulwark-vmm 3 L2-INIT 256 -- \
      bulwark-vmm-release --config /tmp/bench-vm-vmlinux.json; then
    ok_vmm=$((ok_vmm + 1))
  fi
  if BULWARK_LOG=info timeout -s KILL 120 lab-boot-timer bulwark-vmm-bzimage 0 L2-INIT 256 -- \
      bulwark-vmm-release --config /tmp/bench-vm-bzimage.json; then
    ok_bzimage=$((ok_bzimage + 1))
  fi
  if [ -n "$fc" ]; then
    # Its log goes to a file (stdout is the guest console); the file must exist.
    : >/tmp/firecracker.log
    if timeout -s KILL 120 lab-boot-timer firecracker 0 L2-INIT 256 -- $fc --no-api --config-file /tmp/bench-fc.json \
        --log-path /tmp/firecracker.log; then
      ok_fc=$((ok_fc + 1))
    else
      tail -n 20 /tmp/firecracker.log
    fi
  fi
  if timeout -s KILL 120 lab-boot-timer qemu-microvm 0 L2-INIT 256 -- qemu-system-x86_64 -accel kvm -cpu host,xsave=off \
      -M microvm -smp 1 -m 256M -nodefaults -no-user-config -no-reboot -nographic -serial stdio -display none \
      -kernel /lab/l2/vmlinuz -initrd /lab/l2/initramfs.cpio -append "$poweroff_cmdline"; then
    ok_qemu=$((ok_qemu + 1))
  fi
  i=$((i + 1))
done
bench_check() { # NAME OK
  if [ "$2" -eq "$runs" ]; then lab_pass "$1" "$runs boots"; else lab_fail "$1" "$2 of $runs boots ended as expected"; fi
}
bench_check bench-bulwark-vmm $ok_vmm
bench_check bench-bulwark-vmm-bzimage $ok_bzimage
[ -z "$fc" ] || bench_check bench-firecracker $ok_fc
bench_check bench-qemu-microvm $ok_qemu
