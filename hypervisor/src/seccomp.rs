//! Seccomp filters for the VMM's threads, installed by each thread before it runs
//! guest code or serves requests.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::config::SeccompMode;

/// `KVM_RUN` = `_IO(0xAE, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// `KVM_GET_REGS` = `_IOR(0xAE, 0x81, struct kvm_regs)` (144 bytes), used to log RIP.
const KVM_GET_REGS: u64 = 0x8090_ae81;

/// System calls a vCPU thread makes: KVM_RUN, device output (write), the allocator,
/// futexes, the kick signal's return path and thread exit.
const VCPU_SYSCALLS: &[i64] = &[
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rseq,
];

fn action(mode: SeccompMode) -> Option<SeccompAction> {
    match mode {
        SeccompMode::Enforce => Some(SeccompAction::KillProcess),
        SeccompMode::Log => Some(SeccompAction::Log),
        SeccompMode::Off => None,
    }
}

/// The filter for vCPU threads (`None` when seccomp is off).
pub fn vcpu_filter(mode: SeccompMode) -> Result<Option<BpfProgram>, String> {
    let Some(mismatch) = action(mode) else {
        return Ok(None);
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        VCPU_SYSCALLS.iter().map(|&s| (s, vec![])).collect();
    let ioctl = [KVM_RUN, KVM_GET_REGS]
        .into_iter()
        .map(|req| {
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)
                .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("building the vCPU seccomp filter: {e}"))?;
    rules.insert(libc::SYS_ioctl, ioctl);
    // Debug builds check an fd's validity with F_GETFD when closing it (the VcpuFd
    // is dropped on this thread).
    let getfd = SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::F_GETFD as u64,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(|e| format!("building the vCPU seccomp filter: {e}"))?;
    rules.insert(libc::SYS_fcntl, vec![getfd]);
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| format!("building the vCPU seccomp filter: {e}"))?;
    BpfProgram::try_from(filter)
        .map(Some)
        .map_err(|e| format!("compiling the vCPU seccomp filter: {e}"))
}

/// Installs `filter` on the calling thread.
pub fn install(mode: SeccompMode, filter: Option<&BpfProgram>) -> Result<(), String> {
    match filter {
        Some(f) => seccompiler::apply_filter(f).map_err(|e| e.to_string()),
        None if mode == SeccompMode::Off => Ok(()),
        None => Err("seccomp requested but no filter was built".into()),
    }
}
