# agent-vfio: the node agent bulwarkd with real VFIO. Two QEMU edu devices stand in
# for GPUs: one behind a PCIe root port, alone on its bus (vfio-pci can reset it with
# a secondary bus reset), one on the root bus (00:05.0: no FLR, no PM reset, no bus
# reset), and two functions of one slot behind another root port (only a hot reset of
# that bus resets them). bulwarkd (dynamically linked, with its libraries) runs chrooted into a tmpfs
# whose mounts are binds of L1's own directories, so that its jail can pivot_root
# (the initramfs itself cannot be pivoted away from). Shown through bulwarkctl --json:
# enrolment binds the group to vfio-pci through driver_override and the scrub (VFIO
# reset + power-on check) makes the device available; a VM of tenant a from the signed
# tiny guest vfio-edu runs under a jailed bulwark-vmm with the device passed through
# (the guest does DMA and MSI with it); tenant b is refused while a's VM exists; after
# the VM is stopped and deleted the device is scrubbed again and b is accepted; the
# device without a reset fails its scrub, is quarantined and is not assigned. An
# ivshmem-plain device's BAR 2, filled through sysfs first, reads zero after its scrub.
lab_check kvm-device test -c /dev/kvm
ulimit -l unlimited || echo "could not raise RLIMIT_MEMLOCK"

edu=""; bad=0000:00:05.0; mf=""
for d in /sys/bus/pci/devices/*; do
  [ "$(cat "$d/vendor"):$(cat "$d/device")" = 0x1234:0x11e8 ] || continue
  a=${d##*/}
  case $a in 0000:00:*|*.1) continue ;; esac
  # Function 0 with a function 1 beside it: the two-function slot.
  if [ -e "/sys/bus/pci/devices/${a%.0}.1" ]; then mf=$a; else edu=$a; fi
done
mf1=${mf%.0}.1
# ivshmem-plain: its BAR 2 is device memory, standing in for a GPU's.
shm=""
for d in /sys/bus/pci/devices/*; do
  [ "$(cat "$d/vendor"):$(cat "$d/device")" = 0x1af4:0x1110 ] && shm=${d##*/}
done
for d in $edu $bad $shm $mf $mf1; do
  echo "$d: group $(basename "$(readlink /sys/bus/pci/devices/$d/iommu_group)"), members: $(ls /sys/bus/pci/devices/$d/iommu_group/devices | tr '\n' ' ')driver: $(basename "$(readlink /sys/bus/pci/devices/$d/driver 2>/dev/null)" 2>/dev/null)"
done

# cgroup v2 with the cpu, memory and pids controllers for the VMMs' cgroups (L1 has
# no init system that would mount it).
mount -t cgroup2 none /sys/fs/cgroup && echo "+cpu +memory +pids" >/sys/fs/cgroup/cgroup.subtree_control &&
  mkdir -p /sys/fs/cgroup/bulwark || echo "cgroup v2 setup failed"
echo "cgroup v2: $(cat /sys/fs/cgroup/bulwark/cgroup.controllers 2>&1)"

# The root bulwarkd lives in: a tmpfs mount (pivot_root needs a mounted root).
R=/r
mkdir -p $R && mount -t tmpfs -o mode=0755 tmpfs $R
for d in bin lib lib64 usr lab dev sys proc; do
  [ -e /$d ] || continue
  mkdir -p $R/$d && mount -o rbind /$d $R/$d
done
mkdir -p $R/tmp $R/etc $R/var/lib/bulwark $R/run/bulwark
chmod 0755 $R/var $R/var/lib $R/var/lib/bulwark
# The VMM's gid may open /dev/kvm (as udev's kvm group would).
chgrp 36 /dev/kvm && chmod 0660 /dev/kvm
cat >$R/etc/bulwarkd.json <<EOF
{"devices": ["$edu", "$bad", "$shm", "$mf"],
 "jail": {"uid_base": 2000, "uid_count": 10, "gid": 36, "cgroup_parent": "/sys/fs/cgroup/bulwark", "pids_max": 128},
 "vmm_bin": "/bin/bulwark-vmm", "vmm_mmio64_gib": 64,
 "scrub_step_timeout_ms": 60000}
EOF
cat $R/etc/bulwarkd.json
BULWARK_LOG=info chroot $R /bin/bulwarkd --state-dir /var/lib/bulwark \
  --api-sock /run/bulwark/bulwarkd.sock --config /etc/bulwarkd.json >/tmp/bulwarkd.log 2>&1 &
agent=$!

ctl() { chroot $R /bin/bulwarkctl --api-sock /run/bulwark/bulwarkd.sock "$@"; }
# j ARGS: bulwarkctl --json, with the white space removed (for grep).
j() { ctl --json "$@" | tr -d ' \n'; }
# field JSON NAME: the first string or number value of "NAME" in compact JSON.
field() { echo "$1" | sed -n "s/.*\"$2\":\"\{0,1\}\([^\",}]*\).*/\1/p" | head -n1; }
# wait_state ADDR STATE SECONDS: polls the device until it is in STATE.
wait_state() {
  i=0
  while [ $i -lt "$3" ]; do
    [ "$(field "$(j devices show "$1")" state)" = "$2" ] && return 0
    sleep 1; i=$((i + 1))
  done
  return 1
}
# steps JSON METHOD OK: how many scrub steps of METHOD ended with ok=OK.
steps() { echo "$1" | tr '{}' '\n\n' | grep "\"method\":\"$2\"" | grep -c "\"ok\":$3"; }
agent_log() { echo "--- bulwarkd log ---"; tail -n 40 /tmp/bulwarkd.log; echo "--- end of bulwarkd log ---"; }

i=0
until ctl node health >/dev/null 2>&1 || [ $i -ge 60 ]; do sleep 1; i=$((i + 1)); done
devs=$(j devices list)
if ctl node health >/dev/null 2>&1 && echo "$devs" | grep -q "\"address\":\"$edu\"" && echo "$devs" | grep -q "\"address\":\"$bad\""; then
  lab_pass agent-health "bulwarkd serves /health after ${i}s; tracks $edu and $bad"
else
  lab_fail agent-health "no health after ${i}s: $devs"; agent_log; exit 1
fi
ctl devices list

# Enrolment: bulwarkd binds the group through driver_override; the scrub follows.
enrolled=$(ctl --json devices enroll "$edu" --wait | tr -d ' \n')
echo "enroll $edu: $enrolled"
drv=$(basename "$(readlink /sys/bus/pci/devices/$edu/driver)")
ovr=$(cat /sys/bus/pci/devices/$edu/driver_override)
if [ "$drv" = vfio-pci ] && [ "$ovr" = vfio-pci ] && [ -c "/dev/vfio/$(field "$enrolled" iommu_group)" ]; then
  lab_pass agent-enroll "$edu: driver_override=$ovr, bound to $drv, /dev/vfio/$(field "$enrolled" iommu_group)"
else
  lab_fail agent-enroll "$edu: driver '$drv', driver_override '$ovr': $enrolled"; agent_log
fi
scrubs=$(j devices scrubs "$edu")
ctl devices scrubs "$edu"
first=$(field "$enrolled" last_scrub)
if [ "$(field "$enrolled" state)" = available ] && [ -n "$first" ] &&
  echo "$scrubs" | grep -q '"outcome":"passed"' &&
  [ "$(steps "$scrubs" vfio-device-reset true)" -eq 1 ] && [ "$(steps "$scrubs" power-on-state-check true)" -eq 1 ]; then
  lab_pass agent-scrub-on-enroll "$edu available with scrub $first: vfio-device-reset ok, power-on-state-check ok"
else
  lab_fail agent-scrub-on-enroll "$edu: $enrolled; scrubs: $scrubs"; agent_log
fi

# Device memory: a previous tenant's bytes in ivshmem's BAR 2 (written through sysfs,
# not VFIO); enrolment scrubs the device, and the same sysfs mapping must then read
# zeros everywhere.
secret=TENANT-A-SECRET-
filled=$(/bin/lab-pci-bar fill "$shm" 2 "$secret" 2>&1 && /bin/lab-pci-bar count "$shm" 2 "$secret" 2>&1)
echo "$filled"
menrolled=$(ctl --json devices enroll "$shm" --wait | tr -d ' \n')
echo "enroll $shm: $menrolled"
mscrubs=$(j devices scrubs "$shm")
ctl devices scrubs "$shm"
cleared=$(/bin/lab-pci-bar count "$shm" 2 "$secret" 2>&1)
echo "$cleared"
if echo "$filled" | grep -q ' 0 non-zero'; then
  lab_fail agent-memory-clear "the fill did not reach the BAR: $filled"
elif [ "$(field "$menrolled" state)" = available ] &&
  [ "$(steps "$mscrubs" power-on-state-check+bar2-zero-readback true)" -eq 1 ] &&
  echo "$cleared" | grep -q ' 0 non-zero, 0 copies'; then
  lab_pass agent-memory-clear "$shm: before the scrub $(echo "$filled" | tail -n1 | sed 's/.*bytes, //'); after: $(echo "$cleared" | sed 's/.*bytes, //')"
else
  lab_fail agent-memory-clear "$shm: $menrolled; scrubs: $mscrubs; after: $cleared"; agent_log
fi

# A slot with two functions (a GPU and its audio function, in miniature): neither has
# a reset of its own, and vfio-pci's bus reset needs the device alone on its bus, so
# the scrub resets the bus with VFIO_DEVICE_PCI_HOT_RESET, handing the kernel the
# group of both. Enrolling function 0 brings function 1 (same IOMMU group) along; the
# two are scrubbed one after the other.
hot=$(ctl --json devices enroll "$mf" --wait | tr -d ' \n')
echo "enroll $mf: $hot"
wait_state "$mf1" available 60
hs0=$(j devices scrubs "$mf"); hs1=$(j devices scrubs "$mf1")
ctl devices scrubs "$mf"; ctl devices scrubs "$mf1"
if [ "$(field "$hot" state)" = available ] && [ "$(field "$(j devices show "$mf1")" state)" = available ] &&
  [ "$(steps "$hs0" vfio-pci-hot-reset true)" -eq 1 ] && [ "$(steps "$hs1" vfio-pci-hot-reset true)" -eq 1 ] &&
  echo "$hs0" | grep -q "reset$mf(group[0-9]*),$mf1(group[0-9]*)" &&
  [ "$(steps "$hs0" power-on-state-check true)" -eq 1 ] && [ "$(steps "$hs1" power-on-state-check true)" -eq 1 ]; then
  lab_pass agent-hot-reset "$mf and $mf1 available, each after vfio-pci-hot-reset ($(echo "$hs0" | sed -n 's/.*"detail":"\(VFIO_DEVICE_PCI_HOT_RESETdone[^"]*\)".*/\1/p')) and power-on-state-check"
else
  lab_fail agent-hot-reset "$mf: $hot; scrubs $mf: $hs0; scrubs $mf1: $hs1"; agent_log
fi

# The operator gives the two-function group back to the host: bulwarkd unenrols both
# (its database first), clears their driver_override and unbinds them from vfio-pci;
# edu has no host driver, so both end up on none and the group's VFIO node is gone.
hg=$(field "$hot" iommu_group)
un=$(ctl --json devices unenroll "$mf" | tr -d ' \n')
echo "unenroll $mf: $un"
drv() { basename "$(readlink "/sys/bus/pci/devices/$1/driver" 2>/dev/null)" 2>/dev/null; }
if [ "$(field "$un" state)" = unenrolled ] && [ "$(field "$(j devices show "$mf")" state)" = unenrolled ] &&
  [ "$(field "$(j devices show "$mf1")" state)" = unenrolled ] &&
  [ "$(cat /sys/bus/pci/devices/$mf/driver_override)" = "(null)" ] &&
  [ "$(cat /sys/bus/pci/devices/$mf1/driver_override)" = "(null)" ] &&
  [ -z "$(drv "$mf")" ] && [ -z "$(drv "$mf1")" ] && [ -n "$hg" ] && [ ! -e "/dev/vfio/$hg" ]; then
  lab_pass agent-unenroll "$mf and $mf1 unenrolled: driver_override (null), no driver, /dev/vfio/$hg gone; $(echo "$un" | sed 's/.*"members":\(.*\),"state".*/\1/')"
else
  lab_fail agent-unenroll "$un; $mf: $(cat /sys/bus/pci/devices/$mf/driver_override) driver '$(drv "$mf")'; $mf1: driver '$(drv "$mf1")'; /dev/vfio/$hg: $(ls -l "/dev/vfio/$hg" 2>&1)"; agent_log
fi

# Tenant a's VM: the signed tiny guest with the device.
ctl tenants create a --key /lab/tiny/signing.pub
ctl tenants create b --key /lab/tiny/signing.pub
ctl vms create v1 --tenant a --image /lab/tiny/vfio-edu.bwi --vcpus 1 --mem-mib 64 --gpu "$edu"
started=$(ctl --json vms start v1 | tr -d ' \n')
echo "start v1: $started"
pid=$(field "$started" pid)
serial=$R/var/lib/bulwark/vms/v1/serial.log
i=0
while [ $i -lt 120 ] && ! grep -q '^EDU-DONE' "$serial" 2>/dev/null; do sleep 1; i=$((i + 1)); done
echo "--- v1 guest console ---"; cat "$serial" 2>/dev/null; echo "--- v1 vmm log ---"
cat $R/var/lib/bulwark/vms/v1/vmm.log 2>/dev/null; echo "--- end of v1 ---"
vm=$(j vms show v1)
dev=$(j devices show "$edu")
if [ "$(field "$vm" state)" = running ] && [ -n "$pid" ] && [ -d "/proc/$pid" ] &&
  grep -q '^EDU-DONE pass' "$serial"; then
  lab_pass agent-vm-running "v1 running, bulwark-vmm pid $pid, guest: $(grep '^EDU-DONE' "$serial")"
else
  lab_fail agent-vm-running "v1: $vm"; agent_log
fi
vmmroot=$(ls "/proc/$pid/root" 2>/dev/null | tr '\n' ' ')
if [ -n "$pid" ] && grep -q '^Uid:[[:space:]]*2000[[:space:]]*2000[[:space:]]*2000[[:space:]]*2000' "/proc/$pid/status" &&
  grep -q '^NoNewPrivs:[[:space:]]*1' "/proc/$pid/status" && grep -q '^Seccomp:[[:space:]]*2' "/proc/$pid/status" &&
  [ "$(readlink "/proc/$pid/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] &&
  [ "$(readlink "/proc/$pid/ns/net")" != "$(readlink /proc/self/ns/net)" ] &&
  ! ls "/proc/$pid/root/var/lib/bulwark/bulwarkd.db" >/dev/null 2>&1 && [ -c "/proc/$pid/root/dev/kvm" ] &&
  [ "$(cat "/proc/$pid/cgroup")" = "0::/bulwark/v1" ] && [ "$(cat /sys/fs/cgroup/bulwark/v1/memory.max)" = $(((64 + 256) << 20)) ] &&
  [ "$(cat /sys/fs/cgroup/bulwark/v1/pids.max)" = 128 ] && [ "$(cat /sys/fs/cgroup/bulwark/v1/cpu.max)" = "100000 100000" ]; then
  lab_pass agent-vm-jailed "uid 2000, no_new_privs, seccomp, own mount and network namespaces, cgroup $(cat "/proc/$pid/cgroup") (memory.max $(cat /sys/fs/cgroup/bulwark/v1/memory.max), pids.max 128, cpu.max $(cat /sys/fs/cgroup/bulwark/v1/cpu.max)), root: $vmmroot"
else
  lab_fail agent-vm-jailed "pid $pid: $(grep -E '^(Uid|Gid|NoNewPrivs|Seccomp):' "/proc/$pid/status" 2>/dev/null | tr '\n' ' ') cgroup: $(cat "/proc/$pid/cgroup" 2>&1) limits: $(cat /sys/fs/cgroup/bulwark/v1/memory.max /sys/fs/cgroup/bulwark/v1/pids.max /sys/fs/cgroup/bulwark/v1/cpu.max 2>&1 | tr '\n' ' ') root: $vmmroot"
fi
group=$(field "$dev" iommu_group)
vfio_fd=$(ls -l "/proc/$pid/fd" 2>/dev/null | grep -c "/dev/vfio/$group\$")
if [ "$(field "$dev" state)" = in_use ] && [ "$(field "$dev" owner_vm)" = v1 ] && [ "$vfio_fd" -ge 1 ] &&
  grep -q '^EDU-FOUND' "$serial" && grep -q '^EDU-DMA 2048 of 2048 bytes back ok' "$serial" &&
  grep -Eq '^EDU-(MSI|INTX) after-dma.* ok$' "$serial"; then
  lab_pass agent-vm-device "$edu in_use by v1, VMM holds /dev/vfio/$group; guest: $(grep -E '^EDU-(FOUND|DMA|MSI|INTX) ' "$serial" | tr '\n' ';')"
else
  lab_fail agent-vm-device "device: $dev; /dev/vfio/$group fds: $vfio_fd"
fi

# Another tenant while a's VM exists: 409 on the tenancy.
if out=$(ctl vms create w1 --tenant b --image /lab/tiny/vfio-edu.bwi --vcpus 1 --mem-mib 64 2>&1); then
  lab_fail agent-second-tenant-refused "tenant b got a VM while a's VM runs: $out"
elif echo "$out" | grep -q 'tenant: the node belongs to tenant a (VM v1 exists'; then
  lab_pass agent-second-tenant-refused "$out"
else
  lab_fail agent-second-tenant-refused "refused for another reason: $out"
fi

# The VM ends: its device is reset and scrubbed again before anything else gets it.
ctl vms stop v1
ctl vms delete v1
ended=$(j devices show "$edu")
echo "after delete: $ended"
wait_state "$edu" available 120
after=$(j devices show "$edu")
scrubs=$(j devices scrubs "$edu")
ctl devices scrubs "$edu"
second=$(field "$after" last_scrub)
passed=$(echo "$scrubs" | grep -o '"outcome":"passed"' | wc -l)
resets=$(steps "$scrubs" vfio-device-reset true)
if [ "$(field "$after" state)" = available ] && [ -n "$second" ] && [ "$second" != "$first" ] &&
  [ "$passed" -eq 2 ] && [ "$resets" -eq 2 ]; then
  lab_pass agent-delete-scrub "after v1: $(field "$ended" state) -> available with scrub $second (was $first); 2 passed scrubs, each with vfio-device-reset"
else
  lab_fail agent-delete-scrub "device: $after; scrubs: $scrubs"; agent_log
fi

# Tenant b now: accepted, and gets the device.
if out=$(ctl --json vms create w1 --tenant b --image /lab/tiny/vfio-edu.bwi --vcpus 1 --mem-mib 64 --gpu "$edu" 2>&1); then
  dev=$(j devices show "$edu")
  if [ "$(field "$dev" state)" = assigned ] && [ "$(field "$dev" owner_vm)" = w1 ] &&
    [ "$(field "$(j node show)" owner)" = b ]; then
    lab_pass agent-second-tenant-after-scrub "tenant b's VM w1 created with $edu (assigned); node owner b"
  else
    lab_fail agent-second-tenant-after-scrub "created, but device: $dev; node: $(j node show)"
  fi
else
  lab_fail agent-second-tenant-after-scrub "$out"
fi

# A device whose scrub fails: 00:05.0 has no reset vfio-pci can issue.
quar=$(ctl --json devices enroll "$bad" --wait | tr -d ' \n')
echo "enroll $bad: $quar"
qscrubs=$(j devices scrubs "$bad")
ctl devices scrubs "$bad"
if out=$(ctl vms create w2 --tenant b --image /lab/tiny/vfio-edu.bwi --vcpus 1 --mem-mib 64 --gpu "$bad" 2>&1); then
  lab_fail agent-quarantine "a VM got the quarantined $bad: $out"
elif echo "$out" | grep -q "gpus: device $bad (IOMMU group [0-9]*) is quarantined" &&
  [ "$(field "$quar" state)" = quarantined ] && [ "$(field "$(j devices show "$bad")" state)" = quarantined ] &&
  echo "$qscrubs" | grep -q '"outcome":"failed"' && ! echo "$qscrubs" | grep -q '"outcome":"passed"' &&
  [ "$(steps "$qscrubs" vfio-pci-hot-reset false)" -eq 1 ]; then
  lab_pass agent-quarantine "$bad quarantined ($(field "$quar" reason)); VM refused: $out"
else
  lab_fail agent-quarantine "device: $quar; scrubs: $qscrubs; create: $out"
fi

ctl node show
agent_log
kill -TERM $agent
wait $agent
