//! `snp::launch_digest` against the independent Python tool `sev-snp-measure` 0.0.13
//! (`--mode snp`, VMM type QEMU, guest features 0x1), on synthetic OVMF-like firmware
//! images laid out like Bulwark's firmware (`map.rs`) and on Debian's OVMF.
//!
//! The tool is `$SEV_SNP_MEASURE` or `target/pytools/bin/sev-snp-measure` in the
//! workspace; `scripts/setup` installs it there.

use std::path::{Path, PathBuf};
use std::process::Command;

use bulwark_firmware_abi::footer::{ENTRY_TRAILER, RESET_AREA};
use bulwark_firmware_abi::guid::{self, Guid};
use bulwark_firmware_abi::hashes::HashesTable;
use bulwark_firmware_abi::map;
use bulwark_firmware_abi::snp::{self, DEFAULT_GUEST_FEATURES};
use sha2::{Digest, Sha256};

fn tool() -> PathBuf {
    let p = match std::env::var_os("SEV_SNP_MEASURE") {
        Some(p) => PathBuf::from(p),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pytools/bin/sev-snp-measure")
        }
    };
    assert!(
        p.is_file(),
        "sev-snp-measure not found at {}: run `scripts/setup` (it installs sev-snp-measure==0.0.13 \
         into target/pytools), or point SEV_SNP_MEASURE at the tool",
        p.display()
    );
    p
}

/// Deterministic pseudo-random bytes (xorshift64).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn entry(out: &mut Vec<u8>, data: &[u8], g: Guid) {
    out.extend_from_slice(data);
    out.extend_from_slice(&((data.len() + ENTRY_TRAILER) as u16).to_le_bytes());
    out.extend_from_slice(g.bytes());
}

const SEC_MEM: u32 = 1;
const SECRETS: u32 = 2;
const CPUID: u32 = 3;
const KERNEL_HASHES: u32 = 0x10;

/// An OVMF-like image of `len` bytes: noise, SEV metadata listing `sections`
/// (gpa, size, type) 0x800 bytes before the end, then the footer table (AP reset
/// block with `ap_eip`, hash-table entry at `table_gpa`, metadata offset), the footer
/// entry and a 32-byte reset area.
fn firmware(
    seed: u64,
    len: usize,
    sections: &[(u64, u64, u32)],
    ap_eip: u32,
    table_gpa: u32,
) -> Vec<u8> {
    let mut img = noise(seed, len);
    let meta_at = len - 0x800;
    let mut m = Vec::new();
    m.extend_from_slice(b"ASEV");
    m.extend_from_slice(&((16 + 12 * sections.len()) as u32).to_le_bytes());
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for &(gpa, size, kind) in sections {
        m.extend_from_slice(&(gpa as u32).to_le_bytes());
        m.extend_from_slice(&(size as u32).to_le_bytes());
        m.extend_from_slice(&kind.to_le_bytes());
    }
    img[meta_at..meta_at + m.len()].copy_from_slice(&m);

    let mut table = Vec::new();
    entry(&mut table, &ap_eip.to_le_bytes(), guid::SEV_ES_RESET_BLOCK);
    let mut ht = table_gpa.to_le_bytes().to_vec();
    ht.extend_from_slice(&(bulwark_firmware_abi::hashes::PADDED_LEN as u32).to_le_bytes());
    entry(&mut table, &ht, guid::SEV_HASH_TABLE_RV);
    entry(
        &mut table,
        &((len - meta_at) as u32).to_le_bytes(),
        guid::SEV_METADATA,
    );
    let end = len - RESET_AREA;
    let footer = end - ENTRY_TRAILER;
    img[footer - table.len()..footer].copy_from_slice(&table);
    img[footer..footer + 2].copy_from_slice(&((table.len() + ENTRY_TRAILER) as u16).to_le_bytes());
    img[footer + 2..end].copy_from_slice(guid::FOOTER_TABLE.bytes());
    img
}

/// Bulwark's layout (`map.rs`): the scratch pages as SEC_MEM, interleaved with the
/// secrets, CPUID and kernel-hashes pages (the order matters to the digest).
fn bulwark_sections() -> Vec<(u64, u64, u32)> {
    let s = map::SCRATCH;
    vec![
        (s[0].0, s[0].1, SEC_MEM),
        (s[1].0, s[1].1, SEC_MEM),
        (map::HASHES_PAGE, map::PAGE, KERNEL_HASHES),
        (map::SECRETS_PAGE, map::PAGE, SECRETS),
        (map::CPUID_PAGE, map::PAGE, CPUID),
        (s[2].0, s[2].1, SEC_MEM),
        (s[3].0, s[3].1, SEC_MEM),
    ]
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Case<'a> {
    name: &'a str,
    ovmf: &'a Path,
    /// Kernel, initrd and command line, when the kernel is measured by hash.
    kernel: Option<(&'a Path, Option<&'a Path>, &'a str)>,
    vcpus: u32,
    vcpu_type: &'a str,
}

fn run_tool(tool: &Path, c: &Case) -> String {
    let mut cmd = Command::new(tool);
    cmd.args([
        "--mode",
        "snp",
        "--vcpus",
        &c.vcpus.to_string(),
        "--vcpu-type",
        c.vcpu_type,
    ])
    .arg("--ovmf")
    .arg(c.ovmf);
    if let Some((k, i, append)) = c.kernel {
        cmd.arg("--kernel").arg(k);
        if let Some(i) = i {
            cmd.arg("--initrd").arg(i);
        }
        cmd.args(["--append", append]);
    }
    cmd.args(["--output-format", "hex"]);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{}: running {cmd:?}: {e}", c.name));
    assert!(
        out.status.success(),
        "{}: {cmd:?} failed: {}",
        c.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn ours(c: &Case) -> String {
    let fw = std::fs::read(c.ovmf).unwrap();
    let hashes = c.kernel.map(|(k, i, append)| {
        let mut cmdline = append.as_bytes().to_vec();
        cmdline.push(0);
        HashesTable {
            kernel: sha256(&std::fs::read(k).unwrap()),
            initrd: sha256(&i.map(|i| std::fs::read(i).unwrap()).unwrap_or_default()),
            cmdline: sha256(&cmdline),
        }
    });
    let sig = snp::vcpu_type_signature(c.vcpu_type).unwrap();
    let ld = snp::launch_digest(&fw, hashes.as_ref(), c.vcpus, sig, DEFAULT_GUEST_FEATURES)
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));
    hex(&ld)
}

fn check(tool: &Path, c: &Case) {
    let (want, got) = (run_tool(tool, c), ours(c));
    eprintln!(
        "{}: sev-snp-measure {want}\n{}  launch_digest   {got}",
        c.name,
        " ".repeat(c.name.len())
    );
    assert_eq!(
        got, want,
        "{}: launch_digest differs from sev-snp-measure",
        c.name
    );
}

#[test]
fn launch_digest_matches_sev_snp_measure() {
    let tool = tool();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sev-snp-measure-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    // A: Bulwark's 64 KiB firmware shape; hash table at the start of its page.
    let fw_a = write(
        "fw-a.fd",
        &firmware(
            1,
            map::FIRMWARE_SIZE as usize,
            &bulwark_sections(),
            0xffff_f200,
            map::HASH_TABLE as u32,
        ),
    );
    // B: 192 KiB, an OVMF-like AP reset EIP (CS base and IP both non-trivial), the
    // table 0xc00 into its page, sections in another order.
    let mut secs_b = bulwark_sections();
    secs_b.rotate_left(3);
    let fw_b = write(
        "fw-b.fd",
        &firmware(
            2,
            0x3_0000,
            &secs_b,
            0x0080_b004,
            map::HASHES_PAGE as u32 + 0xc00,
        ),
    );

    let k1 = write("vmlinuz-1", &noise(11, 0x2_3456));
    let k2 = write("vmlinuz-2", &noise(12, 0x1000));
    let i1 = write("initrd-1", &noise(21, 0x1_0001));
    let i2 = write("initrd-2", &noise(22, 7));

    let cases = [
        Case {
            name: "A k1 no-initrd empty-cmdline 1xMilan",
            ovmf: &fw_a,
            kernel: Some((&k1, None, "")),
            vcpus: 1,
            vcpu_type: "EPYC-Milan",
        },
        Case {
            name: "A k1 i1 cmdline 2xGenoa",
            ovmf: &fw_a,
            kernel: Some((&k1, Some(&i1), "console=ttyS0 root=/dev/vda ro")),
            vcpus: 2,
            vcpu_type: "EPYC-Genoa",
        },
        Case {
            name: "A k2 i2 empty-cmdline 4xMilan",
            ovmf: &fw_a,
            kernel: Some((&k2, Some(&i2), "")),
            vcpus: 4,
            vcpu_type: "EPYC-Milan",
        },
        Case {
            name: "A k2 no-initrd cmdline 8xGenoa",
            ovmf: &fw_a,
            kernel: Some((&k2, None, "quiet panic=-1 bulwark.node=7")),
            vcpus: 8,
            vcpu_type: "EPYC-Genoa",
        },
        Case {
            name: "B k1 i2 cmdline 8xMilan",
            ovmf: &fw_b,
            kernel: Some((&k1, Some(&i2), "a b c")),
            vcpus: 8,
            vcpu_type: "EPYC-Milan",
        },
        Case {
            name: "B k2 no-initrd empty-cmdline 2xGenoa",
            ovmf: &fw_b,
            kernel: Some((&k2, None, "")),
            vcpus: 2,
            vcpu_type: "EPYC-Genoa",
        },
        Case {
            name: "B k1 i1 cmdline 1xGenoa",
            ovmf: &fw_b,
            kernel: Some((&k1, Some(&i1), "init=/sbin/init")),
            vcpus: 1,
            vcpu_type: "EPYC-Genoa",
        },
        Case {
            name: "A no-kernel 4xMilan",
            ovmf: &fw_a,
            kernel: None,
            vcpus: 4,
            vcpu_type: "EPYC-Milan",
        },
        Case {
            name: "B no-kernel 1xGenoa",
            ovmf: &fw_b,
            kernel: None,
            vcpus: 1,
            vcpu_type: "EPYC-Genoa",
        },
    ];
    for c in &cases {
        check(&tool, c);
    }

    // Debian 12's OVMF (package `ovmf`) carries SEV metadata (SEC_MEM, SECRETS, CPUID;
    // no KERNEL_HASHES section, so no kernel) and the tool accepts it.
    let debian = Path::new("/usr/share/OVMF/OVMF_CODE.fd");
    if debian.is_file() {
        for (vcpus, vcpu_type) in [(1, "EPYC-Milan"), (4, "EPYC-Genoa")] {
            let name = format!("Debian OVMF_CODE.fd no-kernel {vcpus}x{vcpu_type}");
            check(
                &tool,
                &Case {
                    name: &name,
                    ovmf: debian,
                    kernel: None,
                    vcpus,
                    vcpu_type,
                },
            );
        }
    } else {
        eprintln!(
            "skipping Debian OVMF case: {} is absent (package `ovmf`)",
            debian.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
