//! CPUID policies: what the guest is told about the CPU, built explicitly from
//! `KVM_GET_SUPPORTED_CPUID`. The policy's name is part of the launch measurement.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use serde::{Deserialize, Serialize};

/// A named, versioned CPUID policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuidPolicy {
    /// Everything KVM supports, with the hypervisor bit set, per-vCPU APIC IDs and
    /// topology, and the features the VMM does not back hidden (see [`apply`]).
    #[serde(rename = "bulwark-default-v1")]
    DefaultV1,
    /// [`CpuidPolicy::DefaultV1`] minus every feature whose instructions a host that
    /// emulates guest kernel mode (PVM) cannot run: XSAVE and everything built on it
    /// (AVX*, FMA, F16C, leaf 0xD), CMPXCHG16B, POPCNT, MOVBE, RDRAND/RDSEED, PCID,
    /// INVPCID, SMEP, SMAP, FSGSBASE, BMI1/2, ADX, LZCNT, UMIP, PKU, LA57.
    #[default]
    #[serde(rename = "bulwark-emulated-kernel-v1")]
    EmulatedKernelV1,
}

impl CpuidPolicy {
    /// The name measured and reported.
    pub fn name(self) -> &'static str {
        match self {
            CpuidPolicy::DefaultV1 => "bulwark-default-v1",
            CpuidPolicy::EmulatedKernelV1 => "bulwark-emulated-kernel-v1",
        }
    }
}

/// Bits (leaf, subleaf or None for any, register, bit) a policy clears.
#[derive(Debug, Clone, Copy)]
enum Reg {
    Ebx,
    Ecx,
}

const DEFAULT_HIDDEN: &[(u32, Reg, u32, &str)] = &[
    (1, Reg::Ecx, 3, "MONITOR/MWAIT"),
    (1, Reg::Ecx, 5, "VMX"),
    (1, Reg::Ecx, 15, "PDCM"),
    (1, Reg::Ecx, 18, "DCA"),
    (0x8000_0001, Reg::Ecx, 2, "SVM"),
];

const EMULATED_KERNEL_HIDDEN: &[(u32, Reg, u32, &str)] = &[
    (1, Reg::Ecx, 12, "FMA"),
    (1, Reg::Ecx, 13, "CMPXCHG16B"),
    (1, Reg::Ecx, 17, "PCID"),
    (1, Reg::Ecx, 22, "MOVBE"),
    (1, Reg::Ecx, 23, "POPCNT"),
    (1, Reg::Ecx, 26, "XSAVE"),
    (1, Reg::Ecx, 27, "OSXSAVE"),
    (1, Reg::Ecx, 28, "AVX"),
    (1, Reg::Ecx, 29, "F16C"),
    (1, Reg::Ecx, 30, "RDRAND"),
    (7, Reg::Ebx, 0, "FSGSBASE"),
    (7, Reg::Ebx, 3, "BMI1"),
    (7, Reg::Ebx, 5, "AVX2"),
    (7, Reg::Ebx, 7, "SMEP"),
    (7, Reg::Ebx, 8, "BMI2"),
    (7, Reg::Ebx, 10, "INVPCID"),
    (7, Reg::Ebx, 16, "AVX512F"),
    (7, Reg::Ebx, 18, "RDSEED"),
    (7, Reg::Ebx, 19, "ADX"),
    (7, Reg::Ebx, 20, "SMAP"),
    (7, Reg::Ecx, 2, "UMIP"),
    (7, Reg::Ecx, 3, "PKU"),
    (7, Reg::Ecx, 16, "LA57"),
    (0x8000_0001, Reg::Ecx, 5, "LZCNT"),
];

/// CPUID leaf 7 EBX bits of the AVX-512 family (F, DQ, IFMA, PF, ER, CD, BW, VL); hidden
/// with XSAVE since the guest cannot enable that state without it.
const EMULATED_KERNEL_LEAF7_EBX_MASK_EXTRA: u32 =
    1 << 16 | 1 << 17 | 1 << 21 | 1 << 26 | 1 << 27 | 1 << 28 | 1 << 30 | 1 << 31;

fn reg(e: &mut kvm_cpuid_entry2, r: Reg) -> &mut u32 {
    match r {
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
    }
}

/// Applies `policy` to the host's supported CPUID for vCPU `index` of `count`.
/// The APIC ID of a vCPU equals its index.
pub fn apply(policy: CpuidPolicy, supported: &CpuId, index: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    let emulated = policy == CpuidPolicy::EmulatedKernelV1;
    let mut hidden: Vec<&(u32, Reg, u32, &str)> = DEFAULT_HIDDEN.iter().collect();
    if emulated {
        hidden.extend(EMULATED_KERNEL_HIDDEN.iter());
    }
    for e in cpuid.as_mut_slice() {
        for &&(leaf, r, bit, _) in &hidden {
            if e.function == leaf && (leaf != 7 || e.index == 0) {
                *reg(e, r) &= !(1 << bit);
            }
        }
        match e.function {
            1 => {
                // Initial APIC ID, logical processor count, HTT when more than one.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                if count > 1 {
                    e.edx |= 1 << 28;
                } else {
                    e.edx &= !(1 << 28);
                }
                e.ecx |= 1 << 31; // hypervisor present
            }
            7 if emulated && e.index == 0 => {
                e.ebx &= !EMULATED_KERNEL_LEAF7_EBX_MASK_EXTRA;
                e.ecx &= !(1 << 1 | 1 << 11 | 1 << 12 | 1 << 14); // AVX512_VBMI, _VNNI, _BITALG, _VPOPCNTDQ
                e.edx &= !(1 << 22 | 1 << 24 | 1 << 25 | 1 << 2 | 1 << 3 | 1 << 8 | 1 << 23);
                // AMX, AVX512 4VNNIW/4FMAPS/VP2INTERSECT/FP16
            }
            7 if emulated && e.index == 1 => {
                e.eax &= !(1 << 4 | 1 << 5); // AVX-VNNI, AVX512_BF16
            }
            0xd if emulated => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                // Flat topology: one thread per core, `count` cores in one package.
                e.edx = u32::from(index);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 0x100;
                    }
                    1 => {
                        e.eax = 8;
                        e.ebx = u32::from(count);
                        e.ecx = 0x201;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
    cpuid
}

/// The features a policy hides, for documentation and `describe`.
pub fn hidden_features(policy: CpuidPolicy) -> Vec<&'static str> {
    let mut v: Vec<&str> = DEFAULT_HIDDEN.iter().map(|h| h.3).collect();
    if policy == CpuidPolicy::EmulatedKernelV1 {
        v.extend(EMULATED_KERNEL_HIDDEN.iter().map(|h| h.3));
        v.extend([
            "AVX-512 (all)",
            "AMX",
            "leaf 0xD (XSAVE state, XSAVEOPT/XSAVEC/XSAVES)",
        ]);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, all: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: all,
            ebx: all,
            ecx: all,
            edx: all,
            ..Default::default()
        }
    }

    #[test]
    fn emulated_kernel_policy_hides_what_pvm_cannot_run() {
        let host =
            CpuId::from_entries(&[entry(1, 0, !0), entry(7, 0, !0), entry(0xd, 1, !0)]).unwrap();
        let c = apply(CpuidPolicy::EmulatedKernelV1, &host, 3, 4);
        let s = c.as_slice();
        assert_eq!(s[0].ecx & (1 << 26 | 1 << 23 | 1 << 13 | 1 << 17), 0);
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_eq!(s[1].ebx & (1 << 7 | 1 << 20 | 1 << 10), 0);
        assert_eq!(s[2].eax, 0);
        let d = apply(CpuidPolicy::DefaultV1, &host, 0, 1);
        assert_ne!(d.as_slice()[0].ecx & (1 << 26), 0);
        assert_eq!(d.as_slice()[0].edx & (1 << 28), 0);
    }
}
