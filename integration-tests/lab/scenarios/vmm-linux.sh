# vmm-linux and vmm-linux-pvh: bulwark-vmm boots the Debian cloud kernel inside L1
# under KVM, from signed image bundles built and signed on the host
# (src/lab/l2_bundle.rs): `kinds` (set by the scenario before this script) is
# `bzimage` (the kernel as shipped, 64-bit boot protocol) or `vmlinux` (the ELF
# extracted from it, PVH entry). The VM has 2 vCPUs and ACPI tables; the L2 init
# (lab/l2-init-vmm.sh) reports the CPUs it sees over serial and ends the VM: the
# bzImage one with `poweroff -f` (ACPI S5, exit status 0), the vmlinux one with
# `reboot -f` (via the reset vector and the ACPI reset register, exit status 3). While L2 runs, `GET /vm` over
# the API socket (lab-api-get) must say `running` with the predicted measurement.
# With `tampered=1` a bundle with one kernel byte flipped is first refused with
# nothing booted.
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
  sock=/tmp/vmm-$kind.sock
  start=$(cut -d' ' -f1 /proc/uptime)
  BULWARK_LOG=info timeout -s KILL 150 bulwark-vmm --api-sock $sock --config /lab/l2/vm-$kind.json >/tmp/vmm-$kind.out 2>&1 &
  vmm=$!
  # Ask the API while L2 boots (it takes 10+ s to reach its init, then ends the VM).
  api=""
  i=0
  while [ $i -lt 120 ] && kill -0 $vmm 2>/dev/null; do
    if [ -S $sock ] && lab-api-get $sock /vm >/tmp/api-$kind.json 2>/tmp/api-$kind.err; then
      api=$(cat /tmp/api-$kind.json)
      case $api in *'"state":"running"'*) break ;; esac
    fi
    sleep 0.5
    i=$((i + 1))
  done
  wait $vmm
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
  # Both vCPUs online: the AP came up through INIT/SIPI, found through the MADT.
  if echo "$log" | grep -q '^L2-CPUS online=0-1$'; then
    lab_pass l2-$kind-cpus "$(echo "$log" | grep -m1 '^L2-CPUS')"
  else
    lab_fail l2-$kind-cpus "expected 'L2-CPUS online=0-1', got '$(echo "$log" | grep -m1 '^L2-CPUS')'"
  fi
  # bzImage bundle: poweroff -f, ACPI S5 (status 0); vmlinux bundle: reboot -f, the
  # ACPI reset register (status 3).
  case $kind in
    bzimage) want_status=0; how="ACPI S5 (poweroff -f)"; logged="guest entered S5" ;;
    *) want_status=3; how="reboot -f (hardware-reduced ACPI without EFI: Linux jumps to the reset vector, whose VMM code writes the ACPI reset register)"; logged="guest wrote the ACPI reset register" ;;
  esac
  if [ "$status" -eq "$want_status" ] && grep -q "$logged" /tmp/vmm-$kind.out; then
    lab_pass l2-$kind-exit "L2 ended the VM through $how, bulwark-vmm exited $status"
  else
    lab_fail l2-$kind-exit "bulwark-vmm exited with status $status, expected $want_status and '$logged' for $how (137: killed after 150 s)"
  fi
  # The booted VM's measurement, as GET /vm reported it while L2 ran.
  api_state=$(echo "$api" | grep -o '"state":"[a-z_]*"' | head -n 1)
  booted=$(echo "$api" | sed -n 's/.*"measurement":{"value":"\([0-9a-f]*\)".*/\1/p')
  if [ "$api_state" = '"state":"running"' ]; then
    lab_pass l2-$kind-api "GET /vm over $sock while L2 ran: state running"
  else
    lab_fail l2-$kind-api "GET /vm: '$api_state': $(head -c 300 /tmp/api-$kind.json 2>/dev/null) $(cat /tmp/api-$kind.err 2>/dev/null)"
  fi
  if [ -n "$predicted" ] && [ "$predicted" = "$booted" ]; then
    lab_pass l2-$kind-measurement "GET /vm = measure = $booted"
  else
    lab_fail l2-$kind-measurement "measure printed '$predicted', GET /vm on the booted VM '$booted': $(head -c 600 /tmp/measure-$kind.json)"
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
