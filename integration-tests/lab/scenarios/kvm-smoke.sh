# kvm-smoke: /dev/kvm in L1 is real SVM KVM with nested paging and runs a tiny guest.
lab_check kvm-device test -c /dev/kvm
npt=$(cat /sys/module/kvm_amd/parameters/npt 2>&1)
if [ "$npt" = Y ] || [ "$npt" = 1 ]; then lab_pass nested-paging "kvm_amd npt=$npt"; else lab_fail nested-paging "kvm_amd npt=$npt"; fi
lab-kvm-probe || lab_fail kvm-probe "lab-kvm-probe exited with status $?"
