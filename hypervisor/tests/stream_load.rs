//! A signed kernel and initrd are read from the bundle and written into guest memory in
//! one streaming pass (`bulwark_vmm::stream_load`): the guest memory and every
//! measured event but the boot source are exactly what loading the same files from
//! memory gives, for a vmlinux ELF, a bzImage, an ELF the streaming path leaves to the
//! in-memory loader, and an initrd with the config archive after it; a changed byte
//! is refused and records no version.

mod common;

use std::path::Path;

use bulwark_image::{build, generate_key_pair, sign, BuildSpec, SigningKey};
use bulwark_vmm::boot_source::{read_inputs, BootInputs, BootPayload, StateUse};
use bulwark_vmm::config::VmConfig;
use bulwark_vmm::vm::Vm;
use common::*;
use serde_json::{json, Value};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

struct Case {
    _dir: tempfile::TempDir,
    bundle_cfg: Value,
    files_cfg: Value,
    bundle: std::path::PathBuf,
}

fn case(kernel: &Path, initrd: &[u8], config: Option<&[u8]>) -> Case {
    let dir = scratch();
    let (key, key_pub, _) = generate_key_pair(&dir.path().join("keys")).unwrap();
    let initrd_path = dir.path().join("initrd");
    std::fs::write(&initrd_path, initrd).unwrap();
    let config_path = config.map(|c| {
        let p = dir.path().join("config.json");
        std::fs::write(&p, c).unwrap();
        p
    });
    let spec = BuildSpec {
        name: "stream-test".into(),
        version: 4,
        created: 0,
        kernel: kernel.to_path_buf(),
        initrd: Some(initrd_path.clone()),
        cmdline: Some("console=ttyS0 streamed".into()),
        config: config_path,
        rootfs: None,
    };
    let bundle = dir.path().join("tenant.bwi");
    build(&spec, &bundle, &|_| {}).unwrap();
    sign(&bundle, &SigningKey::from_pem_file(&key).unwrap(), &|_| {}).unwrap();
    let bundle_cfg = json!({
        "machine": {"vcpus": 1, "mem_mib": 64},
        "boot_source": {"kind": "bundle", "path": bundle, "trusted_keys": [key_pub],
                        "rollback_state": dir.path().join("rollback.json")},
        "devices": {"debug_exit": true}
    });
    // The same bytes as plain files, as the in-memory loader gets them: the command
    // line and initrd the bundle hands over (the config archive appended).
    let inputs = inputs(&bundle_cfg, StateUse::CheckOnly).unwrap();
    let BootPayload::Linux {
        cmdline, initrd, ..
    } = &inputs.payload
    else {
        panic!("not a Linux payload");
    };
    let handed_initrd = dir.path().join("handed-initrd");
    std::fs::write(&handed_initrd, initrd.as_ref().unwrap().read().unwrap()).unwrap();
    let files_cfg = json!({
        "machine": {"vcpus": 1, "mem_mib": 64},
        "boot_source": {"kind": "linux", "kernel": kernel, "initrd": handed_initrd,
                        "cmdline": cmdline},
        "devices": {"debug_exit": true}
    });
    Case {
        _dir: dir,
        bundle_cfg,
        files_cfg,
        bundle,
    }
}

fn inputs(cfg: &Value, use_: StateUse) -> Result<BootInputs, String> {
    let cfg = VmConfig::from_json(&cfg.to_string()).unwrap();
    read_inputs(&cfg, use_).map_err(|e| e.to_string())
}

fn build_vm(cfg: &Value, use_: StateUse) -> Result<Vm, String> {
    let inputs = inputs(cfg, use_)?;
    let vm_cfg = VmConfig::from_json(&cfg.to_string()).unwrap();
    Vm::build(&vm_cfg, &inputs).map_err(|e| e.to_string())
}

fn guest_ram(vm: &Vm) -> Vec<u8> {
    let mem = vm.guest_memory();
    let mut out = Vec::new();
    for region in mem.iter() {
        let mut bytes = vec![0u8; region.len() as usize];
        mem.read_slice(&mut bytes, region.start_addr()).unwrap();
        out.extend_from_slice(&bytes);
    }
    out
}

/// The measured events but the boot source (signed vs unsigned files), as
/// (tag, digest) pairs.
fn loaded_events(vm: &Vm) -> Vec<(String, String)> {
    vm.measurement()
        .events
        .iter()
        .filter(|e| e.tag != "boot-source")
        .map(|e| (format!("{}: {}", e.tag, e.detail), e.digest.clone()))
        .collect()
}

fn assert_streamed_equals_in_memory(c: &Case) {
    let streamed = build_vm(&c.bundle_cfg, StateUse::Record).unwrap();
    let in_memory = build_vm(&c.files_cfg, StateUse::CheckOnly).unwrap();
    let events = loaded_events(&streamed);
    assert!(
        events.iter().any(|(e, _)| e.starts_with("blob: kernel-")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|(e, _)| e.starts_with("blob: initrd at")),
        "{events:?}"
    );
    assert_eq!(events, loaded_events(&in_memory));
    let (a, b) = (guest_ram(&streamed), guest_ram(&in_memory));
    assert_eq!(a.len(), b.len());
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("guest RAM differs first at byte {i:#x}");
    }
}

#[test]
fn a_streamed_vmlinux_loads_and_measures_as_the_in_memory_one() {
    let initrd: Vec<u8> = (0..3_000_001u32).map(|i| (i * 7) as u8).collect();
    assert_streamed_equals_in_memory(&case(&elf("e820"), &initrd, None));
}

#[test]
fn a_streamed_bzimage_loads_and_measures_as_the_in_memory_one() {
    let dir = scratch();
    let kernel = bzimage("e820", dir.path());
    assert_streamed_equals_in_memory(&case(&kernel, b"small initrd", None));
}

#[test]
fn a_streamed_initrd_with_the_config_archive_after_it_matches() {
    let config = br#"{"workload":{"argv":["/bin/true"]}}"#;
    // 2 MiB + 3 bytes: several chunks, then one byte of padding before the archive.
    let initrd = vec![0x5au8; (2 << 20) + 3];
    assert_streamed_equals_in_memory(&case(&elf("e820"), &initrd, Some(config)));
}

/// A vmlinux of several chunks: its loaded segment starts just below the first chunk's
/// end and runs 3 MiB, and its note segment (a GNU note, then the Xen PVH entry note)
/// straddles the first chunk boundary. Streamed, it loads and measures as in memory,
/// and the PVH entry is the one the note names.
#[test]
fn a_vmlinux_of_several_chunks_with_a_note_across_a_chunk_boundary_matches() {
    let dir = scratch();
    let (seg_off, seg_len, note_off) = (0xf_ff00u64, 0x30_0000u64, 0xf_ffe0u64);
    let mut image: Vec<u8> = (0..seg_off + seg_len + 0x1234)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let note = |name: &[u8; 4], n_type: u32, desc: &[u8]| {
        let mut n = Vec::new();
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&n_type.to_le_bytes());
        n.extend_from_slice(name);
        n.extend_from_slice(desc);
        n
    };
    let mut notes = note(b"GNU\0", 3, &[7; 8]);
    notes.extend(note(b"Xen\0", 18, &0x20_0100u32.to_le_bytes()));
    image[note_off as usize..note_off as usize + notes.len()].copy_from_slice(&notes);
    let mut header = vec![0u8; 64];
    header[..4].copy_from_slice(b"\x7fELF");
    header[4] = 2; // ELFCLASS64
    header[5] = 1; // little-endian
    header[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // e_entry
    header[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    header[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    header[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
    let phdr = |p_type: u32, offset: u64, paddr: u64, filesz: u64, memsz: u64| {
        let mut p = vec![0u8; 56];
        p[..4].copy_from_slice(&p_type.to_le_bytes());
        p[8..16].copy_from_slice(&offset.to_le_bytes());
        p[24..32].copy_from_slice(&paddr.to_le_bytes());
        p[32..40].copy_from_slice(&filesz.to_le_bytes());
        p[40..48].copy_from_slice(&memsz.to_le_bytes());
        p
    };
    header.extend(phdr(1, seg_off, 0x20_0000, seg_len, seg_len + 0x1000));
    header.extend(phdr(4, note_off, 0, notes.len() as u64, notes.len() as u64));
    image[..header.len()].copy_from_slice(&header);
    let kernel = dir.path().join("synthetic-vmlinux");
    std::fs::write(&kernel, &image).unwrap();
    let c = case(&kernel, b"initrd", None);
    assert_streamed_equals_in_memory(&c);
    let vm = build_vm(&c.bundle_cfg, StateUse::CheckOnly).unwrap();
    let entry = loaded_events(&vm)
        .into_iter()
        .find(|(e, _)| e.starts_with("entry: "))
        .unwrap();
    assert!(
        entry.0.starts_with("entry: protected32 rip=0x200100"),
        "{entry:?}"
    );
}

/// A bzImage of several chunks (the e820 guest with 2.5 MiB after it).
#[test]
fn a_bzimage_of_several_chunks_matches() {
    let dir = scratch();
    let mut image = std::fs::read(bzimage("e820", dir.path())).unwrap();
    image.extend((0..(5u32 << 19)).map(|i| (i % 253) as u8));
    let kernel = dir.path().join("big.bzImage");
    std::fs::write(&kernel, &image).unwrap();
    assert_streamed_equals_in_memory(&case(&kernel, b"initrd", None));
}

/// A vmlinux whose program headers lie beyond the first chunk (1 MiB) is read whole
/// and loaded by the in-memory loader: the same result.
#[test]
fn an_elf_the_streaming_path_leaves_to_the_in_memory_loader_matches() {
    let dir = scratch();
    let mut image = std::fs::read(elf("e820")).unwrap();
    let phoff = u64::from_le_bytes(image[32..40].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(image[56..58].try_into().unwrap()) as usize;
    let table = image[phoff..phoff + 56 * phnum].to_vec();
    let moved = (image.len().max(1 << 20) + 4096).next_multiple_of(8);
    image.resize(moved, 0);
    image.extend_from_slice(&table);
    image[32..40].copy_from_slice(&(moved as u64).to_le_bytes());
    let kernel = dir.path().join("e820-far-phdrs");
    std::fs::write(&kernel, &image).unwrap();
    assert_streamed_equals_in_memory(&case(&kernel, b"initrd", None));
}

/// A byte changed in the bundle after verification (between reading the manifest and
/// loading) is refused when the stream ends, and no version is recorded.
#[test]
fn a_kernel_or_initrd_changed_after_verification_is_refused_and_records_nothing() {
    use std::os::unix::fs::FileExt;
    let initrd = vec![1u8; (1 << 20) + 17];
    // The first byte (the ELF magic: the kernel is then read whole; the initrd's first
    // chunk), one in the header's program table, and the last byte (read last).
    let cases = [
        ("kernel", 0u64),
        ("kernel", 64 + 24),
        ("kernel", u64::MAX),
        ("initrd", 5),
        ("initrd", u64::MAX),
    ];
    for (component, position) in cases {
        let c = case(&elf("e820"), &initrd, None);
        let cfg = VmConfig::from_json(&c.bundle_cfg.to_string()).unwrap();
        let inputs = read_inputs(&cfg, StateUse::Record).unwrap();
        let manifest = bulwark_image::Bundle::open(&c.bundle)
            .unwrap()
            .unverified_manifest()
            .clone();
        let kind = if component == "kernel" {
            bulwark_image::ComponentKind::Kernel
        } else {
            bulwark_image::ComponentKind::Initrd
        };
        let comp = manifest.component(kind).unwrap();
        let at = comp.offset + position.min(comp.size - 1);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&c.bundle)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
        let Err(e) = Vm::build(&cfg, &inputs) else {
            panic!("a changed {component} byte at {position} must be refused");
        };
        let e = e.to_string();
        assert!(
            e.contains(&format!("boot_source.{component}"))
                && e.contains("does not match the signed manifest"),
            "{e}"
        );
        drop(inputs);
        let state = c.bundle_cfg["boot_source"]["rollback_state"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            !Path::new(&state).exists(),
            "no version may be recorded: {}",
            std::fs::read_to_string(&state).unwrap_or_default()
        );
    }
    // Unchanged, the version is recorded once the VM is built.
    let c = case(&elf("e820"), &initrd, None);
    let vm = build_vm(&c.bundle_cfg, StateUse::Record).unwrap();
    drop(vm);
    let state = std::fs::read_to_string(
        c.bundle_cfg["boot_source"]["rollback_state"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(state.contains("\"stream-test\": 4"), "{state}");
}

#[test]
fn the_guest_boots_from_the_streamed_bundle() {
    let initrd = b"initrd from the bundle";
    let c = case(&elf("e820"), initrd, None);
    let predicted = measure(c.bundle_cfg.clone());
    let run = boot(c.bundle_cfg.clone());
    run.assert_status(16);
    assert!(run.serial.contains(" 22 fnv1a="), "{}", run.serial);
    assert_eq!(booted_measurement(&run), predicted);
}
