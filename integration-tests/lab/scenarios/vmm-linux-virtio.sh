# vmm-linux-virtio: bulwark-vmm boots the Debian cloud kernel from a signed bundle
# (src/lab/l2_bundle.rs, prepare_virtio) whose 4 MiB ext4 rootfs component it serves
# as a read-only virtio-blk disk, plus a writable scratch disk, virtio-rng and
# virtio-vsock. L2 (lab/l2-init-virtio.sh) finds them through the ACPI DSDT, loads
# its own virtio drivers and reports over serial; L1 checks the report, the scratch
# file's contents after the VM ends, a vsock round trip (L2's lab-l2-vsock with
# lab-vsock-peer, 256 KiB echoed and 256 KiB sent by L2) and GET /vm's per-device
# request counters.
#
# With `transport=pci` set before this script (scenario vmm-linux-virtio-pci) the same
# VM runs with `devices.virtio_transport: "pci"`: L2 finds the devices as virtio-pci
# functions on the ACPI-described PCI root bus with its own virtio_pci driver, and the
# extra checks show the functions, that their vectors are MSI-X and that they fired,
# and GET /vm's PCI and MSI-X state.
transport=${transport:-mmio}
config=/lab/l2/vm-virtio.json
[ "$transport" = pci ] && config=/lab/l2/vm-virtio-pci.json
lab_check kvm-device test -c /dev/kvm
if version=$(bulwark-vmm --version 2>&1); then
  lab_pass vmm-starts "$version"
else
  lab_fail vmm-starts "$version"; exit 1
fi
dd if=/dev/zero of=/tmp/scratch.img bs=1M count=1 2>/dev/null
sock=/tmp/vmm-virtio.sock
start=$(cut -d' ' -f1 /proc/uptime)
BULWARK_LOG=info timeout -s KILL 170 bulwark-vmm --api-sock $sock --config $config >/tmp/vmm-virtio.out 2>&1 &
vmm=$!
# Poll GET /vm while L2 runs; keep the last answer (L2 waits 2 s after its report).
# Start the vsock host side once L2 listens on its port 1234.
i=0
peer=
rm -f /tmp/l2-vsock.sock /tmp/l2-vsock.sock_5678
while [ $i -lt 400 ] && kill -0 $vmm 2>/dev/null; do
  if [ -z "$peer" ] && grep -q L2-VSOCK-LISTENING /tmp/l2-virtio.log 2>/dev/null; then
    timeout -s KILL 100 lab-vsock-peer /tmp/l2-vsock.sock 262144 >/tmp/peer.out 2>&1 &
    peer=$!
  fi
  if [ -S $sock ] && lab-api-get $sock /vm >/tmp/api.json.new 2>/tmp/api.err; then
    mv /tmp/api.json.new /tmp/api.json
  fi
  sleep 0.4
  i=$((i + 1))
done
wait $vmm
status=$?
[ -n "$peer" ] && wait $peer
end=$(cut -d' ' -f1 /proc/uptime)
echo "--- bulwark-vmm output (exit status $status, $start s -> $end s L1 uptime) ---"
cat /tmp/vmm-virtio.out
echo "--- L2 console ---"
tr -d '\r' </tmp/l2-virtio.log
echo "--- end of L2 console ---"
log=$(tr -d '\r' </tmp/l2-virtio.log)
line() { echo "$log" | grep -m1 "^$1"; }

if l=$(line 'L2-INIT '); then lab_pass l2-init "$l"; else lab_fail l2-init "no L2-INIT line"; fi
l=$(line 'L2-MODULES ')
case $l in
  *failed=none*) lab_pass l2-modules "$l" ;;
  *) lab_fail l2-modules "'$l'" ;;
esac
l=$(line 'L2-BLOCK ')
case $l in
  *':serial=rootfs:ro=1:'*':serial=scratch:ro=0:'*|*':serial=scratch:ro=0:'*':serial=rootfs:ro=1:'*) lab_pass l2-block-devices "$l" ;;
  *) lab_fail l2-block-devices "expected a read-only vd* with serial rootfs and a writable one with serial scratch: '$l'" ;;
esac
l=$(line 'L2-ROOTFS-SHA256 ')
case $l in
  'L2-ROOTFS-SHA256 ok '*) lab_pass l2-rootfs-sha256 "$l" ;;
  *) lab_fail l2-rootfs-sha256 "'$l'" ;;
esac
l=$(line 'L2-ROOTFS-RO ')
case $l in
  *'sysfs_ro=1 write=refused'*'first_block=unchanged'*) lab_pass l2-rootfs-read-only "$l" ;;
  *) lab_fail l2-rootfs-read-only "'$l'" ;;
esac
l=$(line 'L2-ROOTFS-FILE ')
if [ "$l" = "L2-ROOTFS-FILE bulwark lab rootfs over virtio-blk" ]; then
  lab_pass l2-rootfs-mount "ext4 mounted read-only from the virtio-blk rootfs: $l"
else
  lab_fail l2-rootfs-mount "'$l'"
fi
# What L2 wrote must be in the scratch file in L1 once the VM has ended.
l=$(line 'L2-SCRATCH ')
in_file=$(head -c 65536 /tmp/scratch.img | sha256sum | cut -d' ' -f1)
case $l in
  "L2-SCRATCH ok "*"wrote=$in_file "*) lab_pass l2-scratch-write-read "$l; the L1 file holds the same bytes" ;;
  *) lab_fail l2-scratch-write-read "'$l'; first 64 KiB of /tmp/scratch.img in L1: $in_file" ;;
esac
l=$(line 'L2-HWRNG ')
bytes=${l##*bytes=}
case $l in
  'L2-HWRNG current=virtio_rng.'*) if [ ${#bytes} -eq 64 ] && [ "$bytes" != 0000000000000000000000000000000000000000000000000000000000000000 ]; then
      lab_pass l2-hwrng "$l"; else lab_fail l2-hwrng "'$l'"; fi ;;
  *) lab_fail l2-hwrng "'$l'" ;;
esac
if echo "$log" | grep -q '^L2-VIRTIO .* device=0x0013 driver=vmw_vsock_virtio_transport$' &&
   echo "$log" | grep -q '^L2-VSOCK dev=/dev/vsock'; then
  lab_pass l2-vsock-driver "$(line 'L2-VSOCK ')"
else
  lab_fail l2-vsock-driver "no virtio device 0x0013 bound to vmw_vsock_virtio_transport, or no /dev/vsock: $(echo "$log" | grep '^L2-V' | tr '\n' ';')"
fi
l=$(line 'L2-VSOCK-ECHO ')
p=$(cat /tmp/peer.out 2>/dev/null)
case "$l/$p" in
  'L2-VSOCK-ECHO ok '*'/vsock ok'*) lab_pass l2-vsock-round-trip "L2: ${l#L2-VSOCK-ECHO }; L1 lab-vsock-peer: $p" ;;
  *) lab_fail l2-vsock-round-trip "L2: '$l'; L1 lab-vsock-peer: '$p'" ;;
esac
# GET /vm: the block and rng devices handled requests (pairs of label and requests;
# vsock is listed too, but without a connection it may have moved nothing).
api=$(cat /tmp/api.json 2>/dev/null)
counts=$(echo "$api" | grep -o '"label":"[^"]*"\|"requests":[0-9]*' | paste -d' ' - - | sed 's/"label"://; s/"requests"://; s/"//g')
busy=0
for want in 'virtio-blk,id:rootfs' 'virtio-blk,id:scratch' 'virtio-rng'; do
  n=$(echo "$counts" | grep "^$want[,@]" | cut -d' ' -f2)
  [ -n "$n" ] && [ "$n" -gt 0 ] && busy=$((busy + 1))
done
if [ $busy -eq 3 ]; then
  lab_pass api-virtio-counters "$(echo "$counts" | tr '\n' ';')"
else
  lab_fail api-virtio-counters "expected requests > 0 for rootfs, scratch and rng: '$(echo "$counts" | tr '\n' ';')' $(head -c 600 /tmp/api.json 2>/dev/null) $(cat /tmp/api.err 2>/dev/null)"
fi
if [ "$transport" = pci ]; then
  # Bus 0: the host bridge and the four virtio functions (two disks, rng, vsock) at
  # 00:01.0..00:04.0, each bound to virtio-pci with MSI-X vectors only.
  pcis=$(echo "$log" | grep '^L2-PCI ')
  fns=$(echo "$pcis" | grep -c ' 0x1af4:0x10[45][0-9a-f] .*driver=virtio-pci ')
  if echo "$pcis" | grep -q '^L2-PCI 0000:00:00.0 0x1b36:0x0008 ' && [ "$fns" -eq 4 ] &&
     echo "$pcis" | grep -q '^L2-PCI 0000:00:01.0 0x1af4:0x1042 ' &&
     echo "$pcis" | grep -q '^L2-PCI 0000:00:03.0 0x1af4:0x1044 ' &&
     echo "$pcis" | grep -q '^L2-PCI 0000:00:04.0 0x1af4:0x1053 '; then
    lab_pass l2-pci-functions "$(echo "$pcis" | tr '\n' ';')"
  else
    lab_fail l2-pci-functions "expected the host bridge and 4 virtio functions bound to virtio-pci at 00:01.0..00:04.0: '$(echo "$pcis" | tr '\n' ';')'"
  fi
  msix=$(echo "$pcis" | grep ' 0x1af4:' | grep -c 'vectors=[2-9] mode=msix$')
  if [ "$msix" -eq 4 ]; then
    lab_pass l2-msix "every virtio function's vectors are MSI-X (msi_irqs): $(echo "$pcis" | grep ' 0x1af4:' | sed 's/.* \(0000:[^ ]*\) .*vectors=/\1:/' | tr '\n' ' ')"
  else
    lab_fail l2-msix "expected 4 functions with only msix vectors: '$(echo "$pcis" | tr '\n' ';')'"
  fi
  # The disks' and rng's queue vectors fired (Linux labels MSI-X "PCI-MSI"; 6.1
  # names a virtio-blk queue vector virtioN-req.0, virtio-rng's virtioN-input).
  irqs=$(echo "$log" | grep '^L2-IRQ ')
  fired=$(echo "$irqs" | grep -c 'PCI-MSI.*virtio[0-9]*-\(req\.[0-9]*\|requests\|input\)')
  zero=$(echo "$irqs" | grep 'PCI-MSI.*virtio[0-9]*-\(req\.[0-9]*\|requests\|input\)' | grep -c '^L2-IRQ [0-9]*: *0 *0 ')
  if [ "$fired" -ge 3 ] && [ "$zero" -eq 0 ]; then
    lab_pass l2-msix-interrupts "$(echo "$irqs" | grep 'PCI-MSI' | tr -s ' ' | tr '\n' ';')"
  else
    lab_fail l2-msix-interrupts "expected the request/input vectors of both disks and rng to have fired: '$(echo "$irqs" | tr -s ' ' | tr '\n' ';')'"
  fi
  # GET /vm: four virtio-pci functions with MSI-X on, and the PCI bus.
  npci=$(grep -o '"transport":"pci"' /tmp/api.json 2>/dev/null | wc -l)
  non=$(grep -o '"msix_enabled":true' /tmp/api.json 2>/dev/null | wc -l)
  if [ "$npci" -eq 4 ] && [ "$non" -eq 4 ] && grep -q '"pci":{"config_malformed":0' /tmp/api.json; then
    lab_pass api-virtio-pci "4 functions on virtio-pci with MSI-X enabled; $(grep -o '"address":"[^"]*"\|"msix_sent":[0-9]*' /tmp/api.json | paste -d' ' - - | tr '\n' ';')"
  else
    lab_fail api-virtio-pci "expected 4 virtio-pci functions with MSI-X enabled and a PCI bus with no malformed access: pci=$npci msix=$non $(head -c 800 /tmp/api.json 2>/dev/null)"
  fi
fi
if [ "$status" -eq 0 ] && grep -q "guest entered S5" /tmp/vmm-virtio.out; then
  lab_pass l2-exit "poweroff -f: ACPI S5, bulwark-vmm exited 0"
else
  lab_fail l2-exit "bulwark-vmm exited with status $status (137: killed after 170 s), expected 0 and 'guest entered S5'"
fi
