# vfio-start: how long bulwark-vmm takes to prefault and DMA-map (pin) guest RAM for a
# VFIO device (QEMU's edu), for 1 and 4 GiB guests, without and with prefault
# (machine.prefault_threads; L1 has one vCPU, so threads cannot run in parallel
# here), with anonymous memory and with hugetlbfs (2 MiB pages) when L1's pool can
# hold the guest. Each VM boots the tiny guest `hello`, which exits at once.
# The scenario `vfio-start-16g` runs the same script for a 16 GiB guest (L1 17.5 GiB)
# by setting START_SIZES, START_POOL_PAGES and START_VM_TIMEOUT first.
# Prints `VFIO-START size_mib=N backing=B prefault_threads=T prefault_ms=P dma_map_ms=D`
# lines that bench/vfio-start turns into a table.
sizes=${START_SIZES:-1024 4096}
pool=${START_POOL_PAGES:-2100}
vm_timeout=${START_VM_TIMEOUT:-240}
lab_check kvm-device test -c /dev/kvm
ulimit -l unlimited
edu=$(lab_find_pci 0x1234 0x11e8)
lab_check bind-vfio-pci lab_bind_vfio "$edu"

# run SIZE_MIB BACKING THREADS
run() {
  cat >/tmp/start.json <<EOF
{"machine":{"vcpus":1,"mem_mib":$1,"mmio64_gib":64,"backing":"$2","prefault_threads":$3},
 "boot_source":{"kind":"raw","image":"/lab/tiny/hello.bin","load_addr":1048576,
   "entry":{"mode":"long64","rip":1048576}},
 "devices":{"serial":"sink","debug_exit":true,"vfio":[{"bdf":"$edu"}]}}
EOF
  BULWARK_LOG=info timeout -s KILL $vm_timeout bulwark-vmm --config /tmp/start.json >/tmp/start.out 2>&1
  status=$?
  tr -d '\033' </tmp/start.out | sed 's/\[[0-9;]*m//g' >/tmp/start.txt
  prefault=$(sed -n 's/.*prefaulted guest RAM ms=\([0-9]*\).*/\1/p' /tmp/start.txt | head -n1)
  dma=$(sed -n 's/.*DMA-mapped guest RAM ms=\([0-9]*\).*/\1/p' /tmp/start.txt | head -n1)
  if [ "$status" -eq 16 ] && [ -n "$dma" ]; then
    echo "VFIO-START size_mib=$1 backing=$2 prefault_threads=$3 prefault_ms=${prefault:-0} dma_map_ms=$dma"
    return 0
  fi
  echo "--- run $1 MiB $2 $3 threads: status $status ---"; cat /tmp/start.txt
  return 1
}

# hugetlbfs: as many 2 MiB pages as L1 can give, for the sizes that fit.
echo $pool >/proc/sys/vm/nr_hugepages
pages=$(cat /proc/sys/vm/nr_hugepages)
echo "hugetlbfs pool: $pages pages of 2 MiB"
ran=0
for size in $sizes; do
  if [ $((pages * 2)) -ge $size ]; then
    for threads in 0 4; do
      run $size hugetlbfs $threads && ran=$((ran + 1))
    done
  else
    echo "VFIO-START size_mib=$size backing=hugetlbfs skipped: pool of $pages pages too small"
  fi
done
if [ $ran -ge 2 ]; then lab_pass start-hugetlbfs "$ran runs with a pool of $pages pages"; else lab_fail start-hugetlbfs "only $ran hugetlbfs runs (pool $pages pages)"; fi
# Give the pool back before the anonymous runs.
echo 0 >/proc/sys/vm/nr_hugepages

ok=1
for size in $sizes; do
  for threads in 0 4; do
    run $size anonymous $threads || ok=0
  done
done
if [ $ok = 1 ]; then lab_pass start-anonymous "$sizes MiB, with and without prefault"; else lab_fail start-anonymous "a run failed"; fi

