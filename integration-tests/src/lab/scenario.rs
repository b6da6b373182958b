//! The lab's scenarios: what each boots L1 with, what it runs there and which
//! checks it must report passed.

use super::error::{LabError, Result};

/// A program of this workspace built for `x86_64-unknown-linux-musl` and put in
/// L1's `/bin`.
#[derive(Debug, Clone, Copy)]
pub struct GuestProgram {
    /// Cargo package that holds the binary.
    pub package: &'static str,
    /// Binary target name (also its name in `/bin`).
    pub bin: &'static str,
}

/// A Linux guest that a scenario boots inside L1 (as L2): the lab's own kernel at
/// `/lab/l2/vmlinuz` and an initramfs at `/lab/l2/initramfs.cpio` holding busybox
/// and `init` as `/init`.
#[derive(Debug, Clone, Copy)]
pub struct L2Guest {
    /// The L2 `/init` script (busybox sh).
    pub init: &'static str,
    /// Also build and sign, on the host, image bundles of the kernel (bzImage and the
    /// extracted vmlinux) with this initramfs, and give L1 `bulwark-vmm` configs for
    /// them (see `l2_bundle`).
    pub signed_bundles: bool,
    /// Programs of this workspace (built for musl, static) put in the L2 `/bin`.
    pub programs: &'static [GuestProgram],
    /// Kernel modules for L2 (dependencies added and ordered automatically), put in
    /// the L2 initramfs as `/lab/modules/NN-NAME.ko` for its init to load.
    pub modules: &'static [&'static str],
    /// With `signed_bundles`: build only the `virtio` bundle (the bzImage with a small
    /// ext4 rootfs component, served to L2 through virtio-blk; see `l2_bundle`)
    /// instead of the bzImage, vmlinux and tampered ones.
    pub virtio_bundle: bool,
    /// Instead of a busybox initramfs: `programs[0]` (`bulwark-init`) is `/init` of
    /// signed tenant images whose rootfs holds `programs[1]` (the workload), built by
    /// `guest_init_bundles` (`init` and the other fields above are unused).
    pub guest_init: bool,
}

/// A scenario whose L1 machine is a node: the node image (UKI + GPT disk, see
/// `node_disk`) booted by OVMF with a TPM, `bulwark-node-init` (one of the scenario's
/// `guest_programs`) as `/init`, the `host_built_programs` (bulwarkd) and all of
/// `modules` (with their dependencies) in `/lib/modules`; no busybox, no script.
#[derive(Debug, Clone, Copy)]
pub struct NodeBoot {
    /// The node image's version the boot tries: `version - 1` is installed first and
    /// this one written over it as the update (kernel command line
    /// `bulwark.node_version=`).
    pub version: u64,
    /// `/etc/bulwark/node-init.json`.
    pub init_config: &'static str,
    /// `/etc/bulwark/bulwarkd.json`.
    pub bulwarkd_config: &'static str,
    /// The node must refuse to start: a `FATAL:` line containing this, then its own
    /// power-off (checks `node-fatal-reported`, `node-fatal-poweroff`).
    pub expect_fatal: Option<&'static str>,
    /// The update's own `/etc/bulwark/bulwarkd.json` (None: the same as the base's).
    /// With one, the update is expected to fail its trial: the node reboots, and the
    /// next power-on boots the base version (checks `node-trial-failed`,
    /// `node-fallback-healthy`, `node-fallback-disk`).
    pub update_bulwarkd_config: Option<&'static str>,
    /// The main job: the host drives the booted node over the network
    /// (`main_job.rs`) instead of the node-boot checks.
    pub main_job: bool,
    /// Secure Boot: the node image is signed with Debian's snakeoil db key and boots
    /// on OVMF with Secure Boot enforced; then a tampered UKI must not start
    /// (checks `node-sb-healthy`, `node-sb-tampered-refused`).
    pub secure_boot: bool,
}

/// One lab scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub summary: &'static str,
    /// Shell script run in L1 after module loading, with `lab/l1-lib.sh` sourced.
    pub script: &'static str,
    /// Kernel modules to load (dependencies are added and ordered automatically).
    pub modules: &'static [&'static str],
    /// QEMU `-device` arguments (the IOMMU is always present).
    pub devices: &'static [&'static str],
    /// QEMU `-object` arguments.
    pub objects: &'static [&'static str],
    pub memory_mib: u32,
    pub guest_programs: &'static [GuestProgram],
    /// Host executables copied into L1 at the same path, with their shared libraries.
    pub host_programs: &'static [&'static str],
    /// Other host files copied into L1 at the same path (firmware, data).
    pub host_files: &'static [&'static str],
    /// Static host programs that an environment variable of the lab's process names:
    /// `(VARIABLE, L1 path)`, copied there with mode 0755 when the variable is set (a
    /// set variable naming no file is an error); unset, nothing is copied and the
    /// script must cope (e.g. a benchmark's optional peer VMM).
    pub env_programs: &'static [(&'static str, &'static str)],
    /// This workspace's binaries built as they ship (`--release`: fat LTO, static musl)
    /// into L1 as `/bin/NAME-release`, beside the lab's debug builds (for benchmarks).
    pub release_programs: &'static [GuestProgram],
    /// Also give L1 the vmlinux ELF extracted from the L2 kernel as `/lab/l2/vmlinux`
    /// (with `l2`; `signed_bundles` give it only inside a bundle).
    pub l2_vmlinux: bool,
    pub l2: Option<L2Guest>,
    /// Tiny guests (`integration-tests/tiny-guests`, built for `x86_64-unknown-none`)
    /// put in L1 as `/lab/tiny/NAME` (ELF) and `/lab/tiny/NAME.bin` (flat binary).
    pub tiny_guests: &'static [&'static str],
    /// Also build and sign, on the host, an image bundle of each tiny guest
    /// (`/lab/tiny/NAME.bwi`, trusted key `/lab/tiny/signing.pub`; `l2_bundle::prepare_tiny`).
    pub signed_tiny_guests: bool,
    /// Programs of this workspace built for the host's own target (dynamically linked:
    /// `bulwarkd` links libtss2) and put in L1's `/bin` with their shared libraries.
    pub host_built_programs: &'static [GuestProgram],
    /// Checks that must be reported and pass (`modules-loaded` is always expected too).
    pub expected_checks: &'static [&'static str],
    /// Hard limit for the L1 run, boot to power-off.
    pub timeout_secs: u64,
    /// Boot L1 as a node from its UEFI disk image instead of the lab's busybox L1
    /// (`script` is then only a description: the node has no shell).
    pub node: Option<NodeBoot>,
}

const THIS_PACKAGE: &str = env!("CARGO_PKG_NAME");
const KVM_MODULES: &[&str] = &["kvm_amd"];
/// The modules `node-init-trial.json` loads: loader variables and the power button.
const NODE_TRIAL_MODULES: &[&str] = &["efivarfs", "button", "evdev"];
const VFIO_MODULES: &[&str] = &["vfio_pci", "vfio_iommu_type1"];
const VFIO_PROBE: GuestProgram = GuestProgram {
    package: THIS_PACKAGE,
    bin: "lab-vfio-probe",
};

/// What the node image's initramfs carries in every node scenario: its PID 1 and
/// the static VMM (musl), and bulwarkd built for the host with its libraries.
const NODE_PROGRAMS: &[GuestProgram] = &[
    GuestProgram {
        package: "bulwark-node-init",
        bin: "bulwark-node-init",
    },
    VMM,
];
const NODE_HOST_PROGRAMS: &[GuestProgram] = &[GuestProgram {
    package: "bulwark-agent",
    bin: "bulwarkd",
}];

/// What a scenario has unless it says otherwise.
const PLAIN: Scenario = Scenario {
    name: "",
    summary: "",
    script: "",
    modules: &[],
    devices: &[],
    objects: &[],
    memory_mib: 512,
    guest_programs: &[],
    host_programs: &[],
    host_files: &[],
    env_programs: &[],
    release_programs: &[],
    l2_vmlinux: false,
    l2: None,
    tiny_guests: &[],
    signed_tiny_guests: false,
    host_built_programs: &[],
    expected_checks: &[],
    timeout_secs: 180,
    node: None,
};

/// What the scenarios in which bulwark-vmm boots Linux in L1 share.
const VMM_LINUX: Scenario = Scenario {
    modules: KVM_MODULES,
    memory_mib: 1536,
    guest_programs: &[VMM, API_GET],
    l2: Some(L2Guest {
        init: include_str!("../../lab/l2-init-vmm.sh"),
        signed_bundles: true,
        programs: &[GuestProgram {
            package: THIS_PACKAGE,
            bin: "lab-l2-exit",
        }],
        modules: &[],
        virtio_bundle: false,
        guest_init: false,
    }),
    timeout_secs: 240,
    ..PLAIN
};

/// What `vmm-linux-virtio` and `vmm-linux-virtio-pci` share: the signed bundle with
/// a rootfs, the L1 programs (the VMM, the API client, the vsock peer) and L2's
/// vsock program; each adds its L2 modules.
const VMM_LINUX_VIRTIO: Scenario = Scenario {
    guest_programs: &[VMM, API_GET, VSOCK_PEER],
    ..VMM_LINUX
};

const API_GET: GuestProgram = GuestProgram {
    package: THIS_PACKAGE,
    bin: "lab-api-get",
};

const VSOCK_PEER: GuestProgram = GuestProgram {
    package: THIS_PACKAGE,
    bin: "lab-vsock-peer",
};

/// The L2 guest of the virtio scenarios (modules per scenario).
const VIRTIO_L2: L2Guest = L2Guest {
    init: include_str!("../../lab/l2-init-virtio.sh"),
    signed_bundles: true,
    programs: &[GuestProgram {
        package: THIS_PACKAGE,
        bin: "lab-l2-vsock",
    }],
    modules: &[],
    virtio_bundle: true,
    guest_init: false,
};

/// The checks of `vmm-linux-virtio`, with a scenario's extra checks before `l2-exit`.
macro_rules! virtio_checks {
    ($($extra:literal),*) => {
        &[
            "kvm-device",
            "vmm-starts",
            "l2-init",
            "l2-modules",
            "l2-block-devices",
            "l2-rootfs-sha256",
            "l2-rootfs-read-only",
            "l2-rootfs-mount",
            "l2-scratch-write-read",
            "l2-hwrng",
            "l2-vsock-driver",
            "l2-vsock-round-trip",
            "api-virtio-counters",
            $($extra,)*
            "l2-exit",
        ]
    };
}

const VMM: GuestProgram = GuestProgram {
    package: "bulwark-vmm",
    bin: "bulwark-vmm",
};

/// Every scenario the lab ships.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "node-boot",
        summary: "the node image boots as the lab machine: OVMF + swtpm (TPM 2.0, CRB) + the IOMMU and devices, systemd-boot with boot counting, a UKI (systemd-stub) whose initramfs holds bulwark-node-init as PID 1, bulwarkd, bulwark-vmm and the modules and no shell; bulwarkd healthy, state partition mounted, KVM and the TPM present, version 1 installed and version 2 written over it as the update on trial with the product's build/install/update, version 2 blessed on the ESP once healthy, PCRs and the event log captured, PCR 11 equal to systemd-measure's prediction, PCRs 7/9/11/12 to bulwark-node-image's and the boot recognised by the verifier's node_boot check, the ACPI power button (a BMC's soft power-off) stops bulwarkd and powers off",
        script: "# node-boot: no script; the node has no shell (integration-tests/src/lab/node_boot.rs judges its console)\n",
        modules: &[
            "kvm_amd",
            "kvm_intel",
            "vfio_pci",
            "vfio_iommu_type1",
            "efivarfs",
            "vfat",
            "nls_cp437",
            "nls_ascii",
            "nls_utf8",
            "button",
            "evdev",
        ],
        devices: &[
            "pcie-root-port,id=rp1,chassis=1,addr=03.0",
            "edu,bus=rp1,addr=00.0",
            "virtio-rng-pci,disable-legacy=on,iommu_platform=on,addr=06.0",
        ],
        memory_mib: 1536,
        guest_programs: NODE_PROGRAMS,
        host_built_programs: NODE_HOST_PROGRAMS,
        expected_checks: &[
            "node-no-shell",
            "node-healthy",
            "node-modules",
            "node-tpm",
            "node-state-persistent",
            "node-bless",
            "node-pcrs",
            "node-pcr11-predicted",
            "node-pcrs-predicted",
            "node-event-log",
            "node-boot-recognised",
            "node-event-log-replays",
            "node-shutdown",
        ],
        timeout_secs: 420,
        node: Some(NodeBoot {
            version: 2,
            init_config: include_str!("../../lab/node/node-init.json"),
            bulwarkd_config: include_str!("../../lab/node/bulwarkd.json"),
            expect_fatal: None,
            update_bulwarkd_config: None,
            main_job: false,
            secure_boot: false,
        }),
        ..PLAIN
    },
    Scenario {
        name: "main-job",
        summary: "the main job end to end: the node image boots as the lab machine (OVMF, swtpm, the IOMMU, an ivshmem device whose memory BAR stands in for a GPU's, a NIC with ports forwarded from the host) and the host plays operator, tenant and customer over the network with the product's tools: bulwarkctl over mutual TLS enrols and scrubs the device, registers the tenant, uploads its signed image (bulwark-init, the confidential-inference service, encrypted weights), creates and starts the VM with the device and an exposed port through the guest firmware; bulwark-verify predict writes the policy from the signed workload image, the VM's machine and the signed node image; bulwark-verify connect affirms the TPM-quoted evidence in the attested TLS handshake and only then sends the weights' key and the request, and the answer is checked; refused: the workload signed by another key (by bulwarkd at create, and by a customer's policy trusting another signer), a newer node image demanded, replayed evidence, a second VM asking for the busy device; the VM deleted, the device scrubbed again, and the next tenant's VM gets it with that scrub (time, memory cleared) in its evidence; the node's disk holds no plaintext weights, key or request",
        script: "# main-job: no script; the host drives the node (integration-tests/src/lab/main_job.rs)\n",
        modules: &[
            "kvm_amd",
            "kvm_intel",
            "vfio_pci",
            "vfio_iommu_type1",
            "efivarfs",
            "vfat",
            "nls_cp437",
            "nls_ascii",
            "nls_utf8",
            "button",
            "evdev",
            "virtio_pci",
            "virtio_net",
        ],
        devices: &[
            // The GPU's stand-in: ivshmem-plain's BAR 2 is device memory the scrub
            // must clear and read back zero (a "scrubbed" record in the evidence).
            "pcie-root-port,id=rp1,chassis=1,addr=03.0",
            "ivshmem-plain,memdev=shm,bus=rp1,addr=00.0",
            "virtio-rng-pci,disable-legacy=on,iommu_platform=on,addr=06.0",
            "virtio-net-pci,netdev=net0,disable-legacy=on,iommu_platform=on,addr=07.0",
        ],
        objects: &["memory-backend-ram,id=shm,size=1M"],
        memory_mib: 2048,
        guest_programs: NODE_PROGRAMS,
        host_built_programs: NODE_HOST_PROGRAMS,
        expected_checks: &[
            "mj-node-healthy",
            "mj-api-tls",
            "mj-upload",
            "mj-refuse-unscrubbed-device",
            "mj-enroll",
            "mj-refuse-other-signer-image",
            "mj-vm-created",
            "mj-predict",
            "mj-vm-running",
            "mj-refuse-busy-device",
            "mj-attested",
            "mj-inference",
            "mj-guest-device",
            "mj-guest-scratch",
            "mj-refuse-signer",
            "mj-refuse-node-version",
            "mj-refuse-replay",
            "mj-teardown-scrub",
            "mj-next-tenant-sanitized",
            "mj-no-plaintext",
            "mj-scratch-encrypted",
            "node-shutdown",
        ],
        timeout_secs: 900,
        node: Some(NodeBoot {
            version: 2,
            init_config: include_str!("../../lab/node/node-init-main-job.json"),
            bulwarkd_config: include_str!("../../lab/node/bulwarkd-main-job.json"),
            expect_fatal: None,
            update_bulwarkd_config: None,
            main_job: true,
            secure_boot: false,
        }),
        ..PLAIN
    },
    Scenario {
        name: "node-bad-config",
        summary: "the node image with a node-init config that has a typo: PID 1 says what is wrong on the console and powers the node off by itself (a node without a shell must not hang)",
        script: "# node-bad-config: no script; the node has no shell\n",
        modules: &["efivarfs"],
        memory_mib: 1024,
        guest_programs: NODE_PROGRAMS,
        host_built_programs: NODE_HOST_PROGRAMS,
        expected_checks: &["node-no-shell", "node-fatal-reported", "node-fatal-poweroff"],
        timeout_secs: 300,
        node: Some(NodeBoot {
            version: 2,
            // Unreadable config: the built-in 30 s delay before the power-off applies.
            init_config: r#"{"modules": ["efivarfs"], "modlues": []}"#,
            bulwarkd_config: include_str!("../../lab/node/bulwarkd.json"),
            expect_fatal: Some("config: /etc/bulwark/node-init.json: unknown field `modlues`"),
            update_bulwarkd_config: None,
            main_job: false,
            secure_boot: false,
        }),
        ..PLAIN
    },
    Scenario {
        name: "node-update-fallback",
        summary: "health-gated rollback: version 1 installed, version 2 written over it as the update on trial, but version 2's bulwarkd never becomes healthy (its config is refused): bulwark-node-init reboots at the trial's deadline, and the next power-on boots version 1 by itself (systemd-boot's counter), healthy; the disk says 2 failed, 1 good; then, with version 2 taken as once healthy (the anti-rollback floor at 2) and set aside on the ESP, version 1 boots again and bulwark-node-init refuses it and powers off",
        script: "# node-update-fallback: no script; the node has no shell\n",
        modules: NODE_TRIAL_MODULES,
        memory_mib: 1024,
        guest_programs: NODE_PROGRAMS,
        host_built_programs: NODE_HOST_PROGRAMS,
        expected_checks: &[
            "node-no-shell",
            "node-trial-failed",
            "node-fallback-healthy",
            "node-fallback-disk",
            "node-rollback-refused",
        ],
        timeout_secs: 300,
        node: Some(NodeBoot {
            version: 2,
            init_config: include_str!("../../lab/node/node-init-trial.json"),
            bulwarkd_config: include_str!("../../lab/node/bulwarkd.json"),
            expect_fatal: None,
            update_bulwarkd_config: Some(r#"{"devicez": []}"#),
            main_job: false,
            secure_boot: false,
        }),
        ..PLAIN
    },
    Scenario {
        name: "node-secure-boot",
        summary: "UEFI Secure Boot: the node image built with `--sb-key` (Debian's snakeoil key standing in for the provider's db key) boots on OVMF with Secure Boot enforced (snakeoil certificate in db), through systemd-boot, to bulwarkd healthy, bulwark-node-init reading Secure Boot enforced from the firmware; then one byte of the UKI on the ESP is flipped and the firmware refuses to load it: no node code runs",
        script: "# node-secure-boot: no script; the node has no shell\n",
        modules: NODE_TRIAL_MODULES,
        memory_mib: 1024,
        guest_programs: NODE_PROGRAMS,
        host_built_programs: NODE_HOST_PROGRAMS,
        expected_checks: &["node-no-shell", "node-sb-healthy", "node-sb-tampered-refused"],
        timeout_secs: 300,
        node: Some(NodeBoot {
            version: 2,
            init_config: include_str!("../../lab/node/node-init-trial.json"),
            bulwarkd_config: include_str!("../../lab/node/bulwarkd.json"),
            expect_fatal: None,
            update_bulwarkd_config: None,
            main_job: false,
            secure_boot: true,
        }),
        ..PLAIN
    },
    Scenario {
        name: "vmm-virtio",
        summary: "bulwark-vmm's virtio devices under real (nested SVM) KVM inside L1: tiny guests hash a read-only disk, write a scratch disk, read rng, sleep until each completion's interrupt (irqfd) and move 1 MiB each way over vsock (ioeventfd and MMIO-exit notifications)",
        script: include_str!("../../lab/scenarios/vmm-virtio.sh"),
        modules: KVM_MODULES,
        memory_mib: 768,
        guest_programs: &[
            GuestProgram {
                package: "bulwark-vmm",
                bin: "bulwark-vmm",
            },
            GuestProgram {
                package: THIS_PACKAGE,
                bin: "lab-vsock-peer",
            },
        ],
        tiny_guests: &["virtio-blk", "virtio-irq", "virtio-vsock"],
        expected_checks: &[
            "kvm-device",
            "blk-ioeventfd",
            "blk-measurement",
            "blk-mmio-exit",
            "irq-ioeventfd",
            "irq-mmio-exit",
            "vsock-ioeventfd",
            "vsock-mmio-exit",
        ],
        timeout_secs: 240,
        ..PLAIN
    },
    Scenario {
        name: "vmm-vfio-linux",
        summary: "bulwark-vmm passes ivshmem-plain (4 GiB 64-bit prefetchable BAR) and virtio-rng-pci into a Linux guest that finds the PCI host bridge through ACPI: the guest enumerates both, uses the 4 GiB BAR, and its virtio-rng driver gets bytes through MSI-X",
        script: include_str!("../../lab/scenarios/vmm-vfio-linux.sh"),
        modules: &["kvm_amd", "vfio_pci", "vfio_iommu_type1"],
        devices: &[
            "virtio-rng-pci,disable-legacy=on,iommu_platform=on,addr=06.0",
            "ivshmem-plain,memdev=shm,addr=07.0",
        ],
        objects: &["memory-backend-ram,id=shm,size=4G"],
        memory_mib: 1536,
        guest_programs: &[VMM],
        l2: Some(L2Guest {
            init: include_str!("../../lab/l2-init-vfio.sh"),
            signed_bundles: false,
            programs: &[GuestProgram {
                package: THIS_PACKAGE,
                bin: "lab-l2-exit",
            }],
            modules: &["virtio_pci", "virtio_rng"],
            virtio_bundle: false,
        guest_init: false,
        }),
        expected_checks: &[
            "kvm-device",
            "bind-vfio-pci",
            "l2-booted",
            "l2-pci-devices",
            "l2-rng-root-port",
            "l2-ivshmem-root-port",
            "l2-pci-no-reassignment",
            "l2-ivshmem-bar",
            "l2-acpi-pci-root",
            "l2-hwrng",
            "l2-msix",
            "l2-msix-interrupts",
            "l2-exit",
        ],
        timeout_secs: 400,
        ..PLAIN
    },
    Scenario {
        name: "vmm-vfio-edu",
        summary: "bulwark-vmm passes QEMU's edu device through VFIO into a tiny guest (PCI scan, BAR0, DMA, MSI); refusals; a second VM takes the device after the first",
        script: include_str!("../../lab/scenarios/vmm-vfio-edu.sh"),
        modules: &["kvm_amd", "vfio_pci", "vfio_iommu_type1"],
        // 04.0 is passed through; 05.0 and 05.1 share an IOMMU group (a multifunction
        // device without ACS) and only 05.0 is bound to vfio-pci.
        devices: &[
            "edu,addr=04.0",
            "edu,addr=05.0,multifunction=on",
            "edu,addr=05.1",
        ],
        memory_mib: 768,
        guest_programs: &[VMM],
        tiny_guests: &["vfio-edu"],
        expected_checks: &[
            "kvm-device",
            "bind-vfio-pci",
            "edu-found",
            "edu-root-port",
            "edu-bar0",
            "edu-bar-move-refused",
            "edu-ident",
            "edu-msi-enable",
            "edu-dma",
            "edu-msi",
            "edu-vm-exit",
            "edu-intx-route",
            "edu-intx",
            "edu-bus-reset",
            "edu-bus-reset-then-works",
            "edu-measured",
            "teardown-second-vm",
            "refuse-busy",
            "refuse-group",
            "refuse-no-device",
            "refuse-memlock",
        ],
        timeout_secs: 300,
        ..PLAIN
    },
    Scenario {
        name: "agent-vfio",
        summary: "bulwarkd with real VFIO in L1: enrols edu devices (binds their groups to vfio-pci), scrubs them (VFIO reset + power-on check), clears an ivshmem device's memory BAR that L1 filled (and reads it back through sysfs), resets a two-function slot with a VFIO hot reset and gives it back to the host (unenrol), runs a jailed bulwark-vmm with the device passed into a signed tiny guest, scrubs it again after the VM; tenancy 409 until then; a device without a reset is quarantined",
        script: include_str!("../../lab/scenarios/agent-vfio.sh"),
        modules: &["kvm_amd", "vfio_pci", "vfio_iommu_type1"],
        // The edu behind a PCIe root port is alone on its bus, so vfio-pci can reset it
        // (secondary bus reset); the one on the root bus (05.0) has no reset at all.
        // ivshmem-plain behind its own root port stands in for a GPU's memory: its
        // BAR 2 is the memory the scrub must clear.
        devices: &[
            "pcie-root-port,id=rp1,chassis=1,addr=03.0",
            "edu,bus=rp1,addr=00.0",
            "edu,addr=05.0",
            "pcie-root-port,id=rp2,chassis=2,addr=04.0",
            "ivshmem-plain,memdev=shm,bus=rp2,addr=00.0",
            // Two functions of one slot (a GPU and its audio function, in
            // miniature): neither is alone on its bus, so only a hot reset of the
            // bus resets them.
            "pcie-root-port,id=rp3,chassis=3,addr=06.0",
            "edu,bus=rp3,addr=00.0,multifunction=on",
            "edu,bus=rp3,addr=00.1",
        ],
        objects: &["memory-backend-ram,id=shm,size=1M"],
        memory_mib: 768,
        guest_programs: &[VMM, GuestProgram {
            package: THIS_PACKAGE,
            bin: "lab-pci-bar",
        }],
        host_built_programs: &[
            GuestProgram {
                package: "bulwark-agent",
                bin: "bulwarkd",
            },
            GuestProgram {
                package: "bulwark-agent",
                bin: "bulwarkctl",
            },
        ],
        tiny_guests: &["vfio-edu"],
        signed_tiny_guests: true,
        expected_checks: &[
            "kvm-device",
            "agent-health",
            "agent-enroll",
            "agent-scrub-on-enroll",
            "agent-memory-clear",
            "agent-hot-reset",
            "agent-unenroll",
            "agent-quarantine",
            "agent-vm-running",
            "agent-vm-jailed",
            "agent-vm-device",
            "agent-second-tenant-refused",
            "agent-delete-scrub",
            "agent-second-tenant-after-scrub",
        ],
        timeout_secs: 300,
        ..PLAIN
    },
    Scenario {
        name: "kvm-smoke",
        summary: "/dev/kvm in L1 (SVM with nested paging) runs a tiny guest to a port write and HLT",
        script: include_str!("../../lab/scenarios/kvm-smoke.sh"),
        modules: KVM_MODULES,
        guest_programs: &[GuestProgram {
            package: THIS_PACKAGE,
            bin: "lab-kvm-probe",
        }],
        expected_checks: &[
            "kvm-device",
            "nested-paging",
            "kvm-api-version",
            "kvm-create-vm",
            "guest-port-write",
            "guest-halt",
        ],
        ..PLAIN
    },
    Scenario {
        name: "vfio-edu",
        summary: "QEMU's edu device through VFIO: regions, config, BAR0 mmap, DMA via the IOMMU, MSI, unmapped IOVA blocked",
        script: include_str!("../../lab/scenarios/vfio-edu.sh"),
        modules: VFIO_MODULES,
        devices: &["edu"],
        guest_programs: &[VFIO_PROBE],
        expected_checks: &[
            "bind-vfio-pci",
            "vfio-open",
            "vfio-regions",
            "vfio-config-space",
            "bus-master",
            "bar0-mmap",
            "dma-map",
            "dma-round-trip",
            "msi-eventfd",
            "dma-unmap",
            "unmapped-iova-blocked",
            "iommu-fault-logged",
        ],
        ..PLAIN
    },
    Scenario {
        name: "vfio-msix",
        summary: "a modern virtio-rng device (iommu_platform=on) through VFIO: MSI-X on an eventfd after a virtqueue request",
        script: include_str!("../../lab/scenarios/vfio-msix.sh"),
        modules: VFIO_MODULES,
        devices: &["virtio-rng-pci,disable-legacy=on,iommu_platform=on"],
        guest_programs: &[VFIO_PROBE],
        expected_checks: &[
            "bind-vfio-pci",
            "vfio-open",
            "virtio-capabilities",
            "bus-master",
            "virtio-features",
            "msix-enable",
            "virtqueue-request",
            "msix-eventfd",
        ],
        ..PLAIN
    },
    Scenario {
        name: "linux-l2",
        summary: "a Linux L2 guest boots under KVM inside L1 to an init that reports over serial (QEMU in L1 as the VMM, until bulwark-vmm can)",
        script: include_str!("../../lab/scenarios/linux-l2.sh"),
        modules: KVM_MODULES,
        memory_mib: 1536,
        host_programs: &["/usr/bin/qemu-system-x86_64"],
        host_files: &[
            "/usr/share/qemu/bios-microvm.bin",
            "/usr/share/qemu/linuxboot_dma.bin",
        ],
        l2: Some(L2Guest {
            init: include_str!("../../lab/l2-init.sh"),
            signed_bundles: false,
            programs: &[],
            modules: &[],
            virtio_bundle: false,
        guest_init: false,
        }),
        expected_checks: &["kvm-device", "l2-vmm-starts", "l2-init-reached", "l2-under-kvm", "l2-exit"],
        timeout_secs: 240,
        ..PLAIN
    },
    Scenario {
        name: "vmm-linux-virtio",
        summary: "bulwark-vmm boots the Debian kernel from a host-signed bundle whose ext4 rootfs component L2 reads through its own virtio-mmio drivers (found through the ACPI DSDT): rootfs hash and read-only, a scratch disk written and read back, /dev/hwrng from virtio-rng, a vsock round trip with L1; GET /vm shows the devices' request counters",
        script: include_str!("../../lab/scenarios/vmm-linux-virtio.sh"),
        l2: Some(L2Guest {
            modules: &[
                "virtio_mmio",
                "virtio_blk",
                "virtio-rng",
                "vmw_vsock_virtio_transport",
            ],
            ..VIRTIO_L2
        }),
        expected_checks: virtio_checks!(),
        ..VMM_LINUX_VIRTIO
    },
    Scenario {
        name: "vmm-linux-virtio-pci",
        summary: "the vmm-linux-virtio VM with devices.virtio_transport \"pci\": L2 finds the disks, rng and vsock as virtio-pci functions on the ACPI-described PCI root bus and drives them with its own virtio_pci driver over MSI-X (msi_irqs mode msix, the queue vectors fired); GET /vm shows the functions' PCI and MSI-X state",
        script: concat!(
            "transport=pci\n",
            include_str!("../../lab/scenarios/vmm-linux-virtio.sh")
        ),
        l2: Some(L2Guest {
            modules: &[
                "virtio_pci",
                "virtio_blk",
                "virtio-rng",
                "vmw_vsock_virtio_transport",
            ],
            ..VIRTIO_L2
        }),
        expected_checks: virtio_checks!(
            "l2-pci-functions",
            "l2-msix",
            "l2-msix-interrupts",
            "api-virtio-pci"
        ),
        ..VMM_LINUX_VIRTIO
    },
    Scenario {
        name: "vmm-guest-init",
        summary: "bulwark-init as PID 1 of signed tenant images under bulwark-vmm: boot -> hello -> stages -> workload output byte-exact -> exit status -> ACPI power-off, the workload's jail, 64 MiB through the vsock->TCP bridge beside raw vsock, a hostile host's bad frames answered, attested TLS through the bridge (bulwark-verify connect with a policy from bulwark-verify predict: evidence for another key, a stale nonce and a policy mismatch refused before any byte reaches the workload, the honest handshake echoed), and each refusal (flipped rootfs byte, unknown config field, missing module, workload not found, GPU required, injected panic) and a death by signal reported on the host channel, each ending in a clean power-off; the same kernel booted through the guest firmware (machine.firmware): bulwark-init runs after the firmware's hash check, measure predicts the booted value, and one staged byte changed after the measurement (kernel, initrd, command line) is refused by the firmware",
        script: include_str!("../../lab/scenarios/vmm-guest-init.sh"),
        modules: KVM_MODULES,
        memory_mib: 2048,
        guest_programs: &[
            VMM,
            GuestProgram {
                package: THIS_PACKAGE,
                bin: "lab-guest-host",
            },
            GuestProgram {
                package: "bulwark-attestation",
                bin: "bulwark-verify",
            },
            GuestProgram {
                package: THIS_PACKAGE,
                bin: "lab-firmware-tamper",
            },
        ],
        l2: Some(L2Guest {
            init: "",
            signed_bundles: false,
            programs: &[
                GuestProgram {
                    package: "bulwark-init",
                    bin: "bulwark-init",
                },
                GuestProgram {
                    package: THIS_PACKAGE,
                    bin: "lab-workload",
                },
            ],
            modules: &[
                "virtio_mmio",
                "virtio_blk",
                "vmw_vsock_virtio_transport",
                "dm_verity",
            ],
            virtio_bundle: false,
            guest_init: true,
        }),
        expected_checks: &[
            "kvm-device",
            "gi-stages",
            "gi-hello",
            "gi-output",
            "gi-jail",
            "gi-exit",
            "gi-bridge",
            "gi-raw-vsock",
            "gi-hostile",
            "gi-predict",
            "gi-atls-other-key",
            "gi-atls-stale-nonce",
            "gi-atls-policy-mismatch",
            "gi-atls",
            "gi-no-gpu-allowed",
            "gi-refuse-rootfs",
            "gi-refuse-config",
            "gi-refuse-module",
            "gi-refuse-not-found",
            "gi-refuse-gpu",
            "gi-panic",
            "gi-signal",
            "gi-shutdown",
            "gi-fw-boot",
            "gi-fw-measurement",
            "gi-fw-tamper",
        ],
        timeout_secs: 1200,
        ..PLAIN
    },
    Scenario {
        name: "vmm-linux",
        summary: "bulwark-vmm boots the Debian kernel (bzImage) with 2 vCPUs and ACPI under KVM inside L1 from a host-signed bundle, L2 powers off (ACPI S5), GET /vm while it runs; a tampered bundle is refused",
        script: concat!(
            "kinds=bzimage tampered=1\n",
            include_str!("../../lab/scenarios/vmm-linux.sh")
        ),
        expected_checks: &[
            "kvm-device",
            "vmm-starts",
            "tampered-refused",
            "l2-bzimage-init",
            "l2-bzimage-under-kvm",
            "l2-bzimage-signed-cmdline",
            "l2-bzimage-cpus",
            "l2-bzimage-exit",
            "l2-bzimage-api",
            "l2-bzimage-measurement",
            "l2-bzimage-entry",
        ],
        ..VMM_LINUX
    },
    Scenario {
        name: "vmm-linux-pvh",
        summary: "bulwark-vmm boots the vmlinux ELF extracted from the Debian kernel through its PVH entry with 2 vCPUs and ACPI, under KVM inside L1, from a host-signed bundle; L2 resets through the ACPI reset register",
        script: concat!(
            "kinds=vmlinux tampered=0\n",
            include_str!("../../lab/scenarios/vmm-linux.sh")
        ),
        expected_checks: &[
            "kvm-device",
            "vmm-starts",
            "l2-vmlinux-init",
            "l2-vmlinux-under-kvm",
            "l2-vmlinux-signed-cmdline",
            "l2-vmlinux-cpus",
            "l2-vmlinux-exit",
            "l2-vmlinux-api",
            "l2-vmlinux-measurement",
            "l2-vmlinux-entry",
        ],
        ..VMM_LINUX
    },
];

/// Benchmarks: run by name only (`bench/vmm-boot --lab`), never by `bulwark-lab run`
/// without names nor as tests; their checks say only that every run ended as
/// expected, never how fast.
pub const BENCHMARKS: &[Scenario] = &[
    Scenario {
        name: "vfio-start",
        summary: "benchmark (bench/vfio-start, not a test): prefault and DMA-map time of 1 and 4 GiB guests with an assigned edu device, anonymous and hugetlbfs memory",
        script: include_str!("../../lab/scenarios/vfio-start.sh"),
        modules: &["kvm_amd", "vfio_pci", "vfio_iommu_type1"],
        devices: &["edu"],
        // 4 GiB guests plus L1 itself (16 GiB: `vfio-start-16g`).
        memory_mib: 5632,
        guest_programs: &[VMM],
        tiny_guests: &["hello"],
        expected_checks: &["kvm-device", "bind-vfio-pci", "start-anonymous", "start-hugetlbfs"],
        timeout_secs: 900,
        ..PLAIN
    },
    Scenario {
        name: "vfio-start-16g",
        summary: "benchmark (bench/vfio-start --16g, not a test): prefault and DMA-map time of a 16 GiB guest with an assigned edu device, anonymous and hugetlbfs memory (L1 17.5 GiB: needs that much free host memory)",
        script: concat!(
            "START_SIZES=16384 START_POOL_PAGES=8250 START_VM_TIMEOUT=1200\n",
            include_str!("../../lab/scenarios/vfio-start.sh")
        ),
        modules: &["kvm_amd", "vfio_pci", "vfio_iommu_type1"],
        devices: &["edu"],
        memory_mib: 17920,
        guest_programs: &[VMM],
        tiny_guests: &["hello"],
        expected_checks: &["kvm-device", "bind-vfio-pci", "start-anonymous", "start-hugetlbfs"],
        timeout_secs: 3600,
        ..PLAIN
    },
    Scenario {
        name: "vmm-boot-bench",
        summary: "benchmark (bench/vmm-boot --lab, not a test): bulwark-vmm as it ships (release) from signed bundles with measured boot (vmlinux through PVH, and bzImage), Firecracker (the same vmlinux; when BULWARK_BENCH_FIRECRACKER names its binary) and QEMU microvm (bzImage) booting the same Linux kernel and initramfs under KVM inside L1, to first serial byte, init (with the VMM's own RSS) and exit",
        script: include_str!("../../lab/scenarios/vmm-boot-bench.sh"),
        guest_programs: &[GuestProgram {
            package: THIS_PACKAGE,
            bin: "lab-boot-timer",
        }],
        release_programs: &[VMM],
        host_programs: &["/usr/bin/qemu-system-x86_64"],
        host_files: &[
            "/usr/share/qemu/bios-microvm.bin",
            "/usr/share/qemu/linuxboot_dma.bin",
        ],
        env_programs: &[("BULWARK_BENCH_FIRECRACKER", "/bin/firecracker")],
        l2_vmlinux: true,
        l2: Some(L2Guest {
            init: include_str!("../../lab/l2-init-vmm.sh"),
            signed_bundles: true,
            programs: &[],
            modules: &[],
            virtio_bundle: false,
            guest_init: false,
        }),
        // bench-firecracker is reported (and must pass) only when Firecracker was given.
        expected_checks: &[
            "kvm-device",
            "bench-bulwark-vmm",
            "bench-bulwark-vmm-bzimage",
            "bench-qemu-microvm",
        ],
        timeout_secs: 900,
        ..VMM_LINUX
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Result<&'static Scenario> {
    SCENARIOS
        .iter()
        .chain(BENCHMARKS)
        .find(|s| s.name == name)
        .ok_or_else(|| LabError::UnknownScenario {
            name: name.to_owned(),
            known: SCENARIOS
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_scenarios_are_a_clear_error() {
        let err = find("no-such").unwrap_err().to_string();
        assert!(err.contains("no-such") && err.contains("vfio-edu"), "{err}");
        assert_eq!(find("kvm-smoke").unwrap().name, "kvm-smoke");
        assert_eq!(find("vmm-boot-bench").unwrap().name, "vmm-boot-bench");
    }

    #[test]
    fn scenario_names_are_unique_and_checks_are_single_words() {
        let all: Vec<&Scenario> = SCENARIOS.iter().chain(BENCHMARKS).collect();
        for (i, s) in all.iter().enumerate() {
            assert!(
                all[..i].iter().all(|o| o.name != s.name),
                "{} twice",
                s.name
            );
            assert!(!s.name.is_empty() && !s.summary.is_empty() && !s.script.is_empty());
            assert!(
                !s.expected_checks.is_empty(),
                "{} expects no checks",
                s.name
            );
            for check in s.expected_checks {
                let line = crate::result_line::check_line(check, true, "");
                assert!(
                    crate::result_line::parse(&line).is_some(),
                    "{check:?} is not a valid check name"
                );
            }
            assert!(
                !s.l2_vmlinux || s.l2.is_some(),
                "{}: l2_vmlinux without l2",
                s.name
            );
            for (var, l1_path) in s.env_programs {
                assert!(
                    !var.is_empty() && l1_path.starts_with('/'),
                    "{}: {var}",
                    s.name
                );
            }
        }
    }
}
