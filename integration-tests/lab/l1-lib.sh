# Shell helpers for lab scenario scripts (sourced in L1 before /lab/scenario.sh).
# They print the result lines the runner reads (see src/result_line.rs).

# lab_pass NAME [DETAIL...]
lab_pass() { name=$1; shift; echo "LAB-RESULT check $name pass $*"; }

# lab_fail NAME [DETAIL...]: also prints the kernel log tail, for the test's failure report.
lab_fail() {
  name=$1; shift
  echo "LAB-RESULT check $name fail $*"
  echo "--- dmesg tail after $name failed ---"
  dmesg | tail -n 30
  echo "--- end of dmesg tail ---"
}

# lab_check NAME COMMAND...: runs COMMAND and reports NAME as its outcome.
lab_check() {
  name=$1; shift
  if out=$("$@" 2>&1); then lab_pass "$name"; else lab_fail "$name" "\`$*\` failed: $out"; fi
}

# lab_find_pci VENDOR DEVICE: prints the address of the first PCI function with that
# vendor and device id (hex with 0x, as in sysfs), or nothing.
lab_find_pci() {
  for dev in /sys/bus/pci/devices/*; do
    if [ "$(cat "$dev/vendor")" = "$1" ] && [ "$(cat "$dev/device")" = "$2" ]; then
      echo "${dev##*/}"
      return 0
    fi
  done
  return 1
}

# lab_bind_vfio BDF: hands the PCI function to vfio-pci.
lab_bind_vfio() {
  if [ -e "/sys/bus/pci/devices/$1/driver" ]; then
    echo "$1" >"/sys/bus/pci/devices/$1/driver/unbind" || return 1
  fi
  echo vfio-pci >"/sys/bus/pci/devices/$1/driver_override" &&
    echo "$1" >/sys/bus/pci/drivers_probe &&
    [ "$(basename "$(readlink "/sys/bus/pci/devices/$1/driver")")" = vfio-pci ]
}
