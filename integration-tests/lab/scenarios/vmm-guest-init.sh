# vmm-guest-init: bulwark-init, PID 1 of a tenant VM, under bulwark-vmm in L1. The host
# built and signed one image per case (src/lab/guest_init_bundles.rs): Debian's kernel,
# an initramfs whose /init is bulwark-init with its modules, a signed config component,
# and an ext4 rootfs holding lab-workload. For each case L1 starts lab-guest-host (the
# host side of the host channel, on /tmp/gi.sock_1024) and then bulwark-vmm; the host
# side prints HOST-* lines that this script checks.
#
# good:      boot -> hello -> stages -> workload output byte-exact -> exit status 7 ->
#            ACPI power-off; the workload's jail; 64 MiB through the vsock->TCP bridge
#            and through raw vsock; the hostile host (bad frames) meanwhile; attested
#            TLS on vsock 7002: bulwark-verify connect, with a policy written by
#            bulwark-verify predict, refuses evidence for another key, for a stale
#            nonce and under a policy naming another node signer before any byte
#            reaches the workload, then completes the honest handshake and echoes.
# flipped:   the good image, one rootfs byte flipped in L1 after bulwark-vmm verified
#            it: the guest refuses at dm-verity.
# shutdown:  the good image; the host sends Shutdown once the workload runs: SIGTERM
#            ends it, reported as such.
# badconfig, nomodule, notfound, gpu, panic: refusals; signal: the workload dies by
# SIGABRT. Every case must end with a clean power-off (bulwark-vmm exit 0, S5).
# fwnotfound: the notfound image booted through the guest firmware (machine.firmware):
#            the firmware checks the staged kernel, initrd and command line against the
#            measured hashes table, then bulwark-init runs as in the direct boot;
#            measure predicts the booted value; and lab-firmware-tamper, a host that
#            changes one staged byte after the measurement, is refused by the firmware
#            for each of kernel, initrd and command line with its own exit code.
lab_check kvm-device test -c /dev/kvm
# The attested TLS client reaches the guest through a relay on 127.0.0.1.
ip link set lo up
bytes=${gi_bytes:-67108864}

run_case() {
  name=$1; shift
  rm -f /tmp/gi.sock /tmp/gi.sock_1024 /tmp/gi-$name.log /tmp/gi-api.sock
  lab-guest-host /tmp/gi.sock "$@" >/tmp/host-$name.out 2>&1 &
  host=$!
  i=0
  while [ $i -lt 100 ] && ! grep -q HOST-LISTENING /tmp/host-$name.out 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
  config=/lab/gi/vm-$name.json
  start=$(cut -d' ' -f1 /proc/uptime)
  BULWARK_LOG=info timeout -s KILL 300 bulwark-vmm --api-sock /tmp/gi-api.sock --config $config >/tmp/vmm-$name.out 2>&1 &
  vmm=$!
  if [ "$name" = flipped ]; then
    # Wait until bulwark-vmm has verified the bundle and built the VM, then flip one
    # byte in the middle of the rootfs (5 MiB in, far from what the kernel reads at
    # boot) of the file it serves the disk from.
    i=0
    while [ $i -lt 300 ] && ! grep -q "VM built" /tmp/vmm-$name.out; do sleep 0.1; i=$((i + 1)); done
    pos=$(( $(cat /lab/gi/rootfs-offset) + 5242880 + 123 ))
    old=$(dd if=/tmp/flipped.bwi bs=1 skip=$pos count=1 2>/dev/null | od -An -tu1 | tr -d ' ')
    new=$(( (old + 1) % 256 ))
    printf "\\$(printf %o $new)" | dd of=/tmp/flipped.bwi bs=1 seek=$pos count=1 conv=notrunc 2>/dev/null
    echo "flipped byte $pos of /tmp/flipped.bwi: $old -> $(dd if=/tmp/flipped.bwi bs=1 skip=$pos count=1 2>/dev/null | od -An -tu1 | tr -d ' ')"
  fi
  wait $vmm
  status=$?
  i=0
  while [ $i -lt 100 ] && kill -0 $host 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
  kill $host 2>/dev/null
  wait $host 2>/dev/null
  end=$(cut -d' ' -f1 /proc/uptime)
  echo "--- case $name: bulwark-vmm exit status $status ($start s -> $end s L1 uptime) ---"
  tail -n 15 /tmp/vmm-$name.out
  echo "--- L2 console ($name) ---"
  tr -d '\r' </tmp/gi-$name.log 2>/dev/null | grep -v '^$' | tail -n 60
  echo "--- host side ($name) ---"
  cat /tmp/host-$name.out
  echo "--- end of case $name ---"
  eval "status_$name=$status"
  eval "secs_$name=$(awk -v a=$start -v b=$end 'BEGIN { printf "%.1f", b - a }')"
}

# The case's clean power-off: bulwark-vmm exit 0 after S5, and the guest's PowerOff.
powered_off() {
  eval "s=\$status_$1"
  [ "$s" -eq 0 ] && grep -q "guest entered S5" /tmp/vmm-$1.out && grep -q '^HOST-POWEROFF ' /tmp/host-$1.out
}

hline() { grep -m1 "^$2" /tmp/host-$1.out; }

# refusal CHECK CASE REASON TEXT: the case was refused for REASON with TEXT in the message.
refusal() {
  l=$(hline $2 'HOST-REFUSAL ')
  case $l in
    *"reason=$3 "*"$4"*)
      if powered_off $2; then lab_pass $1 "$l; clean power-off"; else lab_fail $1 "$l; but no clean power-off (bulwark-vmm status $(eval echo \$status_$2))"; fi ;;
    *) lab_fail $1 "expected reason=$3 with '$4': '$l' $(tail -n 3 /tmp/gi-$2.log | tr '\r\n' '  ')" ;;
  esac
}

# The tenant's policy, written before the VM exists from the signed image alone
# (the lab node's evidence is software-signed: the policy must allow that, and it
# trusts the lab's node signer 4c..4c); and one naming another node signer.
node_signer=$(printf '4c%.0s' $(seq 32))
other_signer=$(printf '4d%.0s' $(seq 32))
t0=$(cut -d' ' -f1 /proc/uptime)
bulwark-verify predict /lab/gi/good.bwi --trust /lab/gi/signing.pub --vm /lab/gi/vm-good.json \
  --node-signer $node_signer --allow-software-key >/tmp/gi-policy.toml 2>/tmp/gi-predict.err
predict_status=$?
t1=$(cut -d' ' -f1 /proc/uptime)
sed "s/$node_signer/$other_signer/" /tmp/gi-policy.toml >/tmp/gi-policy-other.toml
echo "--- predicted policy (exit $predict_status, $t0 s -> $t1 s) ---"
cat /tmp/gi-policy.toml /tmp/gi-predict.err
run_case good --hostile --bridge 7000 --raw 7001 --bytes $bytes \
  --atls 7002 --api-sock /tmp/gi-api.sock --trust /lab/gi/signing.pub \
  --policy /tmp/gi-policy.toml --policy-other /tmp/gi-policy-other.toml
cp /lab/gi/good.bwi /tmp/flipped.bwi
run_case flipped
rm -f /tmp/flipped.bwi
run_case shutdown --shutdown
for c in badconfig nomodule notfound signal gpu panic; do run_case $c; done

# good
stages=$(grep '^HOST-STAGE ' /tmp/host-good.out | cut -d' ' -f2 | tr '\n' ' ')
want="InitStarted HostChannelUp ConfigLoaded ModulesLoaded RootVerified RootMounted GpuReady BridgeUp WorkloadStarted WorkloadEnded "
times=$(grep '^HOST-STAGE ' /tmp/host-good.out | cut -d' ' -f2,3 | tr ' \n' '=,')
if [ "$stages" = "$want" ]; then lab_pass gi-stages "$times"; else lab_fail gi-stages "got '$stages', want '$want'"; fi
l=$(hline good 'HOST-MSG hello ')
case $l in *'protocol=1 '*) lab_pass gi-hello "$l" ;; *) lab_fail gi-hello "'$l'" ;; esac
l=$(hline good 'HOST-OUTPUT ')
case $l in
  *'stdout=exact '*'stderr_first_line=exact gaps=0'*) lab_pass gi-output "$l" ;;
  *) lab_fail gi-output "'$l'" ;;
esac
l=$(hline good 'HOST-WORKLOAD-ID ')
case $l in
  *'uid=1000 gid=1000 caps=0000000000000000 bnd=0000000000000000 nnp=1 root=ro(30) tmp=ok dev=full,null,random,urandom,zero') lab_pass gi-jail "$l" ;;
  *) lab_fail gi-jail "'$l'" ;;
esac
l=$(hline good 'HOST-EXIT ')
case $l in
  'HOST-EXIT code=7 signal=none '*) if powered_off good; then lab_pass gi-exit "$l; ACPI S5, bulwark-vmm exited 0"; else lab_fail gi-exit "$l; no clean power-off (status $status_good)"; fi ;;
  *) lab_fail gi-exit "'$l'" ;;
esac
l=$(hline good 'HOST-BRIDGE ')
case $l in "HOST-BRIDGE ok port=7000 bytes=$bytes "*) lab_pass gi-bridge "$l" ;; *) lab_fail gi-bridge "'$l'" ;; esac
l=$(hline good 'HOST-RAW ')
case $l in "HOST-RAW ok port=7001 bytes=$bytes "*) lab_pass gi-raw-vsock "$l" ;; *) lab_fail gi-raw-vsock "'$l'" ;; esac
# Attested TLS: three refusals, each naming its check, then the honest echo; the
# workload saw exactly two TCP connections (the plain echo and the honest aTLS one).
# has_all LINE WORD...: LINE contains every WORD.
has_all() {
  l=$1; shift
  for w in "$@"; do case $l in *"$w"*) ;; *) return 1 ;; esac; done
}
if [ "$predict_status" -eq 0 ] && grep -q '^measurements = \["[0-9a-f]\{96\}"\]' /tmp/gi-policy.toml; then
  lab_pass gi-predict "policy from the signed image in $(awk -v a=$t0 -v b=$t1 'BEGIN { printf "%.1f", b - a }') s: $(grep '^measurements' /tmp/gi-policy.toml)"
else
  lab_fail gi-predict "bulwark-verify predict exit $predict_status: $(head -c 400 /tmp/gi-predict.err)"
fi
for c in "other-key:key-binding" "stale-nonce:freshness-nonce" "policy-mismatch:node-image"; do
  name=${c%%:*}; want=${c#*:}
  l=$(hline good "HOST-ATLS $name ")
  if has_all "$l" 'exit=1 ' 'received=none' "$want"; then
    lab_pass gi-atls-$name "$l"
  else
    lab_fail gi-atls-$name "expected exit=1 naming $want: '$l' $(grep -m1 "HOST-ATLS-STDERR $name" /tmp/host-good.out)"
  fi
done
l=$(hline good 'HOST-ATLS good ')
tcp=$(grep -c '^HOST-STDERR-LINE lab-workload: tcp connection ' /tmp/host-good.out)
text_len=$(printf '%s' "bytes for the workload, after an affirmed handshake only" | wc -c)
if has_all "$l" 'exit=0 ' 'received=exact' && [ "$tcp" -eq 2 ] \
  && grep -q "^HOST-STDERR-LINE lab-workload: tcp connection [12]: $text_len bytes echoed" /tmp/host-good.out; then
  lab_pass gi-atls "$l; the workload saw $tcp TCP connections: $(grep '^HOST-STDERR-LINE lab-workload: tcp' /tmp/host-good.out | cut -d' ' -f3- | tr '\n' ';')"
else
  lab_fail gi-atls "'$l'; workload TCP connections: $tcp ($(grep '^HOST-STDERR-LINE' /tmp/host-good.out | tr '\n' ';')) $(grep -m1 'HOST-ATLS-STDERR good' /tmp/host-good.out)"
fi
l=$(hline good 'HOST-HOSTILE ')
case $l in 'HOST-HOSTILE ok '*) lab_pass gi-hostile "$l" ;; *) lab_fail gi-hostile "'$l'" ;; esac
l=$(hline good 'HOST-MSG status Gpus')
case $l in *'NoDriver'*) lab_pass gi-no-gpu-allowed "$l (config allows GPU-less runs)" ;; *) lab_fail gi-no-gpu-allowed "'$l'" ;; esac

refusal gi-refuse-rootfs flipped rootfs_verification 'dm-verity'
refusal gi-refuse-config badconfig config 'surprise'
refusal gi-refuse-module nomodule module 'bulwark_no_such_module'
refusal gi-refuse-not-found notfound workload_not_found '/bin/no-such-workload'
refusal gi-refuse-gpu gpu gpu_required 'no GPU driver'
refusal gi-panic panic panic 'test hook'
l=$(hline shutdown 'HOST-EXIT ')
stop=$(grep -m1 'ShuttingDown' /tmp/host-shutdown.out)
case "$l" in
  'HOST-EXIT code=none signal=SIGTERM '*) if [ -n "$stop" ] && powered_off shutdown; then lab_pass gi-shutdown "$stop; $l; clean power-off"; else lab_fail gi-shutdown "$l; stage '$stop'; no clean power-off?"; fi ;;
  *) lab_fail gi-shutdown "'$l' '$stop'" ;;
esac
l=$(hline signal 'HOST-EXIT ')
case $l in
  'HOST-EXIT code=none signal=SIGABRT '*) if powered_off signal; then lab_pass gi-signal "$l; clean power-off"; else lab_fail gi-signal "$l; no clean power-off"; fi ;;
  *) lab_fail gi-signal "'$l'" ;;
esac

# fwnotfound: the firmware boot of the notfound image.
bulwark-vmm measure --config /lab/gi/vm-fwnotfound.json >/tmp/measure-fw.json 2>&1
fw_predicted=$(sed -n 's/^  "measurement": "\([0-9a-f]*\)",*$/\1/p' /tmp/measure-fw.json)
run_case fwnotfound
fw_console=$(tr -d '\r' </tmp/gi-fwnotfound.log 2>/dev/null)
fw_line=$(echo "$fw_console" | grep -m1 '^bulwark-firmware: kernel')
# The firmware's own time: its TSC cycles at L1's TSC rate (L2's TSC runs at L1's).
fw_cycles=$(echo "$fw_console" | sed -n 's/^bulwark-firmware: checked and copied in \([0-9]*\) TSC cycles$/\1/p')
tsc_mhz=$(dmesg | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | head -n 1)
fw_ms=$(awk -v c="${fw_cycles:-0}" -v m="${tsc_mhz:-0}" 'BEGIN { if (m > 0) printf "%.0f", c / m / 1000; else print "?" }')
l=$(hline fwnotfound 'HOST-REFUSAL ')
case $l in
  *"reason=workload_not_found "*'/bin/no-such-workload'*)
    if [ -n "$fw_line" ] && powered_off fwnotfound; then
      lab_pass gi-fw-boot "$fw_line; firmware checks and copy ${fw_ms} ms (${fw_cycles} TSC cycles at ${tsc_mhz} MHz); then bulwark-init: $l; clean power-off; case time ${secs_fwnotfound} s through the firmware, ${secs_notfound} s direct"
    else
      lab_fail gi-fw-boot "firmware line '$fw_line', power-off status $status_fwnotfound"
    fi ;;
  *) lab_fail gi-fw-boot "expected the notfound refusal after the firmware: '$l'; console: $(echo "$fw_console" | head -n 5 | tr '\n' ' ')" ;;
esac
# The booted value, from bulwark-vmm's "VM built" log line (API mode).
fw_booted=$(grep 'VM built' /tmp/vmm-fwnotfound.out | grep -o '[0-9a-f]\{96\}' | head -n 1)
if [ -n "$fw_predicted" ] && [ "$fw_predicted" = "$fw_booted" ] && grep -q '"firmware-hashes' /tmp/measure-fw.json; then
  lab_pass gi-fw-measurement "measure = booted = $fw_booted (firmware, hashes table and staged blobs measured)"
else
  lab_fail gi-fw-measurement "measure '$fw_predicted', booted '$fw_booted': $(head -c 400 /tmp/measure-fw.json)"
fi
fw_tamper_ok=1
fw_tamper_detail=""
for c in kernel:52:'kernel SHA-256 does not match' initrd:51:'initrd SHA-256 does not match' cmdline:50:'command line SHA-256 does not match'; do
  comp=${c%%:*}; rest=${c#*:}; code=${rest%%:*}; reason=${rest#*:}
  rm -f /tmp/gi-fwnotfound.log /tmp/gi.sock /tmp/gi.sock_1024
  out=$(timeout -s KILL 120 lab-firmware-tamper /lab/gi/vm-fwnotfound.json $comp 2>&1)
  console=$(tr -d '\r' </tmp/gi-fwnotfound.log 2>/dev/null)
  echo "--- tamper $comp: $out ---"
  echo "$console"
  if [ "$out" = "TAMPER component=$comp exit=DebugExit($code)" ] && echo "$console" | grep -q "refused: $reason" && ! echo "$console" | grep -q 'Linux version'; then
    fw_tamper_detail="$fw_tamper_detail $comp->exit $code;"
  else
    fw_tamper_ok=0
    fw_tamper_detail="$fw_tamper_detail $comp: '$out' / $(echo "$console" | tail -n 2 | tr '\n' ' ');"
  fi
done
if [ $fw_tamper_ok = 1 ]; then
  lab_pass gi-fw-tamper "one byte changed after the measurement, the firmware refused before the kernel ran:$fw_tamper_detail"
else
  lab_fail gi-fw-tamper "$fw_tamper_detail"
fi
