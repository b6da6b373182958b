# vmm-virtio: bulwark-vmm (static musl build) runs tiny guests with virtio devices
# under the real (nested SVM) KVM inside L1, where ioeventfd and irqfd are KVM's own
# rather than the development host's PVM. /lab/tiny holds the guests (scenario
# `tiny_guests`). virtio-blk: SHA-256 of a read-only disk against the value on its
# command line, a scratch disk written and read back, 64 bytes from rng; the
# measurement equals `bulwark-vmm measure`. virtio-irq: the guest sleeps in `hlt`
# until each rng completion's interrupt arrives. virtio-vsock with lab-vsock-peer:
# 1 MiB echoed, then 1 MiB from the guest, byte-exact. Each with ioeventfd and with
# notifications through MMIO exits (BULWARK_VMM_NO_IOEVENTFD).
lab_check kvm-device test -c /dev/kvm

dd if=/dev/urandom of=/tmp/rootfs.img bs=4096 count=16 2>/dev/null
dd if=/dev/zero of=/tmp/scratch.img bs=4096 count=256 2>/dev/null
hash=$(sha256sum /tmp/rootfs.img | cut -d' ' -f1)
machine='"machine": {"vcpus": 1, "mem_mib": 64, "mmio64_gib": 64, "cpuid_policy": "bulwark-default-v1", "acpi": false}'
cat >/tmp/blk.json <<EOF
{$machine,
 "boot_source": {"kind": "linux", "kernel": "/lab/tiny/virtio-blk", "cmdline": "rootfs_len=65536 rootfs_sha256=$hash"},
 "devices": {"serial": {"file": "/tmp/blk-serial.log"}, "debug_exit": true, "rng": true,
   "block": [{"id": "rootfs", "path": "/tmp/rootfs.img", "read_only": true},
             {"id": "scratch", "path": "/tmp/scratch.img"}]}}
EOF
cat >/tmp/irq.json <<EOF
{$machine,
 "boot_source": {"kind": "raw", "image": "/lab/tiny/virtio-irq.bin", "load_addr": 1048576,
   "entry": {"mode": "long64", "rip": 1048576, "rsi": 5}},
 "devices": {"serial": {"file": "/tmp/irq-serial.log"}, "debug_exit": true, "rng": true}}
EOF

cat >/tmp/vsock.json <<EOF
{$machine,
 "boot_source": {"kind": "raw", "image": "/lab/tiny/virtio-vsock.bin", "load_addr": 1048576,
   "entry": {"mode": "long64", "rip": 1048576, "rsi": 16}},
 "devices": {"serial": {"file": "/tmp/vsock-serial.log"}, "debug_exit": true,
   "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"}}}
EOF

# run NAME CONFIG SERIAL [ENV...]: boots CONFIG; sets $status and $log.
run() {
  name=$1 config=$2 serial=$3; shift 3
  rm -f "$serial"
  env "$@" timeout -s KILL 120 bulwark-vmm --config "$config" >"/tmp/$name.out" 2>&1
  status=$?
  log=$(tr -d '\r' <"$serial" 2>/dev/null)
  echo "--- $name: exit status $status, serial:"; echo "$log"
  echo "--- $name: bulwark-vmm output:"; tail -n 20 "/tmp/$name.out"
}

for mode in ioeventfd mmio-exit; do
  if [ $mode = mmio-exit ]; then set -- BULWARK_VMM_NO_IOEVENTFD=1; else set --; fi
  run blk-$mode /tmp/blk.json /tmp/blk-serial.log "$@"
  if [ "$status" -eq 16 ] && echo "$log" | grep -q '^rootfs sha256 ok' &&
     echo "$log" | grep -q '^scratch write/flush/read-back ok' &&
     echo "$log" | grep -q '^rng ok (64 bytes)'; then
    lab_pass blk-$mode "$(echo "$log" | tr '\n' ';')"
  else
    lab_fail blk-$mode "status $status (16 expected); serial: $log"
  fi
  if [ $mode = ioeventfd ]; then
    predicted=$(bulwark-vmm measure --config /tmp/blk.json 2>&1 | sed -n 's/^  "measurement": "\([0-9a-f]*\)",*$/\1/p')
    booted=$(sed -n 's/^bulwark-vmm: launch measurement //p' /tmp/blk-$mode.out)
    if [ -n "$predicted" ] && [ "$predicted" = "$booted" ]; then
      lab_pass blk-measurement "$booted"
    else
      lab_fail blk-measurement "measure '$predicted', booted '$booted'"
    fi
  fi
  # vsock: lab-vsock-peer is the host side (1 MiB echoed, 1 MiB from the guest).
  rm -f /tmp/v.sock /tmp/v.sock_5678 /tmp/vsock-serial.log
  env "$@" timeout -s KILL 120 bulwark-vmm --config /tmp/vsock.json >/tmp/vsock-$mode.out 2>&1 &
  vmm=$!
  peer=$(timeout -s KILL 110 lab-vsock-peer /tmp/v.sock 1048576 2>&1)
  wait $vmm
  status=$?
  echo "--- vsock-$mode: exit status $status, peer: $peer, serial:"; tr -d '\r' </tmp/vsock-serial.log
  echo "--- vsock-$mode: bulwark-vmm output:"; tail -n 20 /tmp/vsock-$mode.out
  if [ "$status" -eq 16 ] && echo "$peer" | grep -q '^vsock ok'; then
    lab_pass vsock-$mode "$peer"
  else
    lab_fail vsock-$mode "status $status (16 expected); peer: $peer"
  fi
  run irq-$mode /tmp/irq.json /tmp/irq-serial.log "$@"
  if [ "$status" -eq 16 ] && echo "$log" | grep -q '^irq ok: 8 interrupts'; then
    lab_pass irq-$mode "$log"
  else
    lab_fail irq-$mode "status $status (16 expected); serial: $log"
  fi
done
