//! Seccomp filters for the VMM's threads, installed by each thread before it runs
//! guest code or serves requests.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

/// Seccomp enforcement for the VMM's threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// A disallowed system call kills the process.
    #[default]
    Enforce,
    /// A disallowed system call is logged by the kernel (audit) and allowed.
    Log,
    /// No filter (debugging only).
    Off,
}

/// `KVM_RUN` = `_IO(0xAE, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// `KVM_GET_REGS` = `_IOR(0xAE, 0x81, struct kvm_regs)` (144 bytes), used to log RIP.
const KVM_GET_REGS: u64 = 0x8090_ae81;

/// System calls every filtered thread needs to exist in the process: memory
/// management by the allocator and the thread library, and signal delivery.
/// `filter` adds them to each thread's own list.
const RUNTIME_SYSCALLS: &[i64] = &[
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
];

/// System calls a vCPU thread makes besides [`RUNTIME_SYSCALLS`]: KVM_RUN, device output (write), the allocator,
/// futexes, the kick signal's return path and thread exit.
const VCPU_SYSCALLS: &[i64] = &[
    // A virtio device reset (a status write, on the vCPU thread) drains its queue
    // notification eventfds.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
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

/// System calls of the control thread once the VM runs: serving the API (epoll,
/// socket I/O), kicking and joining vCPU threads, logging, tearing down (close,
/// munmap, unlinking the API socket). No open, no new KVM objects, no exec.
const CONTROL_SYSCALLS: &[i64] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_accept4,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_close,
    libc::SYS_unlink,
    libc::SYS_tgkill,
    // musl's pthread_kill (the vCPU kick) uses tkill, glibc's tgkill.
    libc::SYS_tkill,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_clone3,
    libc::SYS_clone,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// `FIONBIO`: std's `set_nonblocking` on the vsock sockets the worker accepts or opens.
const FIONBIO: u64 = 0x5421;

/// System calls every virtio I/O worker thread makes: its epoll loop, eventfds
/// (notifications in, interrupts out), logging, thread exit. No open, no exec, no KVM
/// ioctls: disk files and the vsock listener are opened before the VM runs.
const VIRTIO_WORKER_SYSCALLS: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    // std's HashMap seeds its hasher per thread from getrandom (the worker's map of
    // polled descriptors), and virtio-rng's bytes come from it.
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_sched_yield,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_rseq,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// virtio-blk's worker also does positioned and seek+read disk I/O, flush and hole
/// punching (discard).
const VIRTIO_BLOCK_SYSCALLS: &[i64] = &[
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
];

/// virtio-rng's worker needs nothing beyond the common list (getrandom is there).
const VIRTIO_RNG_SYSCALLS: &[i64] = &[];

/// virtio-vsock's worker also accepts host connections, connects to host listeners
/// (Unix sockets) and moves stream bytes; `set_nonblocking` is the `FIONBIO` ioctl.
const VIRTIO_VSOCK_SYSCALLS: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
];

/// Which virtio device a worker serves (its filter allows only what that device needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioWorker {
    /// virtio-blk.
    Block,
    /// virtio-rng.
    Rng,
    /// virtio-vsock.
    Vsock,
}

/// The filter for a virtio I/O worker thread of `kind` (`None` when seccomp is off),
/// installed by the worker before it touches its device or guest memory.
pub fn virtio_worker_filter(
    mode: SeccompMode,
    kind: VirtioWorker,
) -> Result<Option<BpfProgram>, String> {
    let (extra, ioctls): (&[i64], &[u64]) = match kind {
        VirtioWorker::Block => (VIRTIO_BLOCK_SYSCALLS, &[]),
        VirtioWorker::Rng => (VIRTIO_RNG_SYSCALLS, &[]),
        VirtioWorker::Vsock => (VIRTIO_VSOCK_SYSCALLS, &[FIONBIO]),
    };
    let list: Vec<i64> = VIRTIO_WORKER_SYSCALLS
        .iter()
        .chain(extra)
        .copied()
        .collect();
    filter(mode, "virtio worker", &list, ioctls)
}

fn action(mode: SeccompMode) -> Option<SeccompAction> {
    match mode {
        SeccompMode::Enforce => Some(SeccompAction::KillProcess),
        SeccompMode::Log => Some(SeccompAction::Log),
        SeccompMode::Off => None,
    }
}

/// `VFIO_DEVICE_SET_IRQS` = `_IO(';', 100 + 10)`: the guest enabling MSI/MSI-X.
const VFIO_DEVICE_SET_IRQS: u64 = 0x3b6e;
/// `VFIO_DEVICE_RESET` = `_IO(';', 100 + 11)`: teardown, and a guest's secondary bus
/// reset.
const VFIO_DEVICE_RESET: u64 = 0x3b6f;
/// `KVM_SET_GSI_ROUTING` = `_IOW(0xAE, 0x6a, struct kvm_irq_routing)` (8-byte header).
const KVM_SET_GSI_ROUTING: u64 = 0x4008_ae6a;
/// `KVM_IRQFD` = `_IOW(0xAE, 0x76, struct kvm_irqfd)` (32 bytes): an assigned device's
/// MSI/MSI-X vector is connected while unmasked and disconnected while masked.
const KVM_IRQFD: u64 = 0x4020_ae76;

/// What a vCPU thread additionally needs when devices are passed through: config
/// space and trapped BAR pages through the VFIO fd (pread64/pwrite64), MSI/MSI-X
/// enable (VFIO_DEVICE_SET_IRQS), routes (KVM_SET_GSI_ROUTING), connecting and
/// disconnecting vectors as the guest unmasks and masks them (KVM_IRQFD) and the device
/// reset a guest's secondary bus reset on a root port asks for (VFIO_DEVICE_RESET).
const VCPU_PASSTHROUGH_SYSCALLS: &[i64] = &[libc::SYS_pread64, libc::SYS_pwrite64];

/// The filter for vCPU threads (`None` when seccomp is off).
pub fn vcpu_filter(mode: SeccompMode) -> Result<Option<BpfProgram>, String> {
    vcpu_filter_with(mode, false, false)
}

/// The filter for vCPU threads of a VM with (`passthrough`) or without assigned
/// PCI devices, and with (`msi_routes`) or without virtio-pci functions, whose MSI-X
/// table and mask writes (on the vCPU thread) reprogram the KVM GSI routes: that
/// adds exactly `KVM_SET_GSI_ROUTING` (the MSI-X messages themselves are eventfd
/// writes, already allowed).
pub fn vcpu_filter_with(
    mode: SeccompMode,
    passthrough: bool,
    msi_routes: bool,
) -> Result<Option<BpfProgram>, String> {
    if !passthrough && msi_routes {
        return filter(
            mode,
            "vCPU",
            VCPU_SYSCALLS,
            &[KVM_RUN, KVM_GET_REGS, KVM_SET_GSI_ROUTING],
        );
    }
    if passthrough {
        let syscalls: Vec<i64> = VCPU_SYSCALLS
            .iter()
            .chain(VCPU_PASSTHROUGH_SYSCALLS)
            .copied()
            .collect();
        filter(
            mode,
            "vCPU",
            &syscalls,
            &[
                KVM_RUN,
                KVM_GET_REGS,
                VFIO_DEVICE_SET_IRQS,
                VFIO_DEVICE_RESET,
                KVM_SET_GSI_ROUTING,
                KVM_IRQFD,
            ],
        )
    } else {
        filter(mode, "vCPU", VCPU_SYSCALLS, &[KVM_RUN, KVM_GET_REGS])
    }
}

/// The filter for the control thread (API or `--config` waiter) once the VM runs.
/// Teardown of assigned devices runs here: interrupts off (VFIO_DEVICE_SET_IRQS),
/// bus mastering off (pread64/pwrite64 on the device fd) and VFIO_DEVICE_RESET; on
/// any other fd those calls fail.
pub fn control_filter(mode: SeccompMode) -> Result<Option<BpfProgram>, String> {
    let syscalls: Vec<i64> = CONTROL_SYSCALLS
        .iter()
        .chain(&[libc::SYS_pread64, libc::SYS_pwrite64])
        .copied()
        .collect();
    filter(
        mode,
        "control",
        &syscalls,
        &[VFIO_DEVICE_SET_IRQS, VFIO_DEVICE_RESET],
    )
}

fn arg1_is(value: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .and_then(|c| SeccompRule::new(vec![c]))
}

fn filter(
    mode: SeccompMode,
    what: &str,
    syscalls: &[i64],
    ioctls: &[u64],
) -> Result<Option<BpfProgram>, String> {
    let Some(mismatch) = action(mode) else {
        return Ok(None);
    };
    let err = |e: seccompiler::BackendError| format!("building the {what} seccomp filter: {e}");
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = RUNTIME_SYSCALLS
        .iter()
        .chain(syscalls)
        .map(|&s| (s, vec![]))
        .collect();
    if !ioctls.is_empty() {
        let allowed = ioctls
            .iter()
            .map(|&req| arg1_is(req))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        rules.insert(libc::SYS_ioctl, allowed);
    }
    // Debug builds check an fd's validity with F_GETFD when closing it.
    rules.insert(
        libc::SYS_fcntl,
        vec![arg1_is(libc::F_GETFD as u64).map_err(err)?],
    );
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(err)?;
    BpfProgram::try_from(filter)
        .map(Some)
        .map_err(|e| format!("compiling the {what} seccomp filter: {e}"))
}

/// Installs `filter` on the calling thread.
pub fn install(mode: SeccompMode, filter: Option<&BpfProgram>) -> Result<(), String> {
    match filter {
        Some(f) => seccompiler::apply_filter(f).map_err(|e| e.to_string()),
        None if mode == SeccompMode::Off => Ok(()),
        None => Err("seccomp requested but no filter was built".into()),
    }
}
