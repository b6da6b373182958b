# vmm-linux and vmm-linux-pvh: bulwark-vmm boots the Debian cloud kernel inside L1
# under KVM, from signed image bundles built and signed on the host
# (src/lab/l2_bundle.rs): `kinds` (set by the scenario before this script) is
# `bzimage` (the kernel as shipped, 64-bit boot protocol) or `vmlinux` (the ELF
# extracted from it, PVH entry). The L2 init (lab/l2-init-vmm.sh) reports over
# serial and ends the VM: the bzImage one through the debug-exit port (code 7, exit
# status 23), the vmlinux one through the i8042 reset line (exit status 3). With `tampered=1`
# a bundle with one kernel byte flipped is first refused with nothing booted.
lab_check kvm-device test -c /dev/kvm
if version=$(bulwark-vmm --version 2>&1); then
  lab_pass vmm-starts "$version"
else
  lab_fail vmm-starts "$version"; exit 1
fi

if [ "${tampered:-0}" = 1 ]; then
timeout -s KILL 60 bulwark-vmm --config /lab/l2/vm-tampered.json >/tmp/vmm-tampered.out 2>&1
status=$?
if [ "$status" -eq 1 ] && grep -q 'verification failed' /tmp/vmm-tampered.out && [ ! -s /tmp/l2-tampered.log ]; then
  lab_pass tampered-refused "$(tail -n 1 /tmp/vmm-tampered.out)"
else
  lab_fail tampered-refused "status $status, serial bytes $(wc -c </tmp/l2-tampered.log 2>/dev/null): $(cat /tmp/vmm-tampered.out)"
fi
fi

for kind in $kinds; do
  bulwark-vmm measure --config /lab/l2/vm-$kind.json >/tmp/measure-$kind.json 2>&1
  predicted=$(sed -n 's/^  "measurement": "\([0-9a-f]*\)",*$/\1/p' /tmp/measure-$kind.json)
  start=$(cut -d' ' -f1 /proc/uptime)
  timeout -s KILL 150 bulwark-vmm --config /lab/l2/vm-$kind.json >/tmp/vmm-$kind.out 2>&1
  status=$?
  end=$(cut -d' ' -f1 /proc/uptime)
  echo "--- $kind: bulwark-vmm output (exit status $status, $start s -> $end s L1 uptime) ---"
  cat /tmp/vmm-$kind.out
  echo "--- $kind: L2 console ---"
  tr -d '\r' </tmp/l2-$kind.log
  echo "--- end of $kind L2 console ---"
  log=$(tr -d '\r' </tmp/l2-$kind.log)
  if line=$(echo "$log" | grep -m1 '^L2-INIT '); then
    lab_pass l2-$kind-init "$line"
  else
    lab_fail l2-$kind-init "the L2 console has no L2-INIT line"
  fi
  if echo "$log" | grep -q '^L2-INIT .*hypervisor=KVM'; then
    lab_pass l2-$kind-under-kvm
  else
    lab_fail l2-$kind-under-kvm "L2 did not detect KVM as its hypervisor"
  fi
  if echo "$log" | grep -q '^L2-CMDLINE .*bulwark.lab=signed'; then
    lab_pass l2-$kind-signed-cmdline
  else
    lab_fail l2-$kind-signed-cmdline "L2's command line is not the signed one"
  fi
  # bzImage bundle: debug-exit code 7 (status 16 + 7); vmlinux bundle: i8042 reset (3).
  case $kind in
    bzimage) want_status=23; how="the debug-exit port (code 7)" ;;
    *) want_status=3; how="the i8042 reset line" ;;
  esac
  if [ "$status" -eq "$want_status" ]; then
    lab_pass l2-$kind-exit "L2 ended the VM through $how, bulwark-vmm exited $status"
  else
    lab_fail l2-$kind-exit "bulwark-vmm exited with status $status, expected $want_status for $how (137: killed after 150 s)"
  fi
  booted=$(sed -n 's/^bulwark-vmm: launch measurement //p' /tmp/vmm-$kind.out)
  if [ -n "$predicted" ] && [ "$predicted" = "$booted" ]; then
    lab_pass l2-$kind-measurement "$booted"
  else
    lab_fail l2-$kind-measurement "measure printed '$predicted', the booted VM '$booted': $(head -c 600 /tmp/measure-$kind.json)"
  fi
  # The entry point, from the measured boot structures: a PVH start info for the
  # vmlinux (its Xen ELF note), the zero page only for the bzImage.
  case $kind in
    vmlinux) want=pvh-start-info; other=linux-zero-page ;;
    *) want=linux-zero-page; other=pvh-start-info ;;
  esac
  if grep -q "$want" /tmp/measure-$kind.json && ! grep -q "$other" /tmp/measure-$kind.json; then
    lab_pass l2-$kind-entry "booted with a measured $want and no $other"
  else
    lab_fail l2-$kind-entry "expected a $want and no $other event in the measurement"
  fi
done
