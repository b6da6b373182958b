//! Our UKI against the one `objcopy --add-section --change-section-vma`
//! (binutils) makes from the same inputs at the same VMAs: every section
//! (name, VMA, size in memory, loaded contents, flags) must be the same.

mod common;

use std::process::Command;

use bulwark_node_image::pe::PeImage;
use bulwark_node_image::uki::{assemble, plan, UkiInputs};
use common::*;

#[test]
fn uki_sections_equal_objcopys() {
    let (Some(stub), Some(kernel)) = (input(STUB, "systemd-boot-efi"), fake_kernel()) else {
        return;
    };
    let Some(objcopy) = tool("objcopy", "binutils") else {
        return;
    };
    let initrd = fake_initrd(1_234_567);
    let inputs = UkiInputs {
        stub: &stub,
        linux: &kernel,
        initrd: &initrd,
        cmdline: b"console=ttyS0 bulwark.node_version=7",
        osrel: b"ID=bulwark\nVERSION_ID=7\n",
        uname: Some(b"6.1.0-57-cloud-amd64"),
    };
    let ours = assemble(&inputs).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(objcopy);
    let contents: [(&str, &[u8]); 5] = [
        (".osrel", inputs.osrel),
        (".cmdline", inputs.cmdline),
        (".uname", inputs.uname.unwrap()),
        (".linux", inputs.linux),
        (".initrd", inputs.initrd),
    ];
    for (p, (name, data)) in plan(&inputs).unwrap().iter().zip(contents) {
        assert_eq!(p.name, name);
        let f = dir.path().join(name.trim_start_matches('.'));
        std::fs::write(&f, data).unwrap();
        cmd.arg("--add-section")
            .arg(format!("{name}={}", f.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={:#x}", p.vma));
    }
    let theirs_path = dir.path().join("objcopy.efi");
    cmd.arg(STUB).arg(&theirs_path);
    run(&mut cmd);
    let theirs = std::fs::read(&theirs_path).unwrap();

    let a = PeImage::parse(&ours).unwrap();
    let b = PeImage::parse(&theirs).unwrap();
    assert_eq!(a.sections.len(), b.sections.len());
    for (x, y) in a.sections.iter().zip(&b.sections) {
        assert_eq!(x.name(), y.name());
        assert_eq!(x.virtual_address, y.virtual_address, "{}", x.name());
        assert_eq!(x.virtual_size, y.virtual_size, "{}", x.name());
        assert_eq!(
            x.loaded_bytes(&ours).unwrap(),
            y.loaded_bytes(&theirs).unwrap(),
            "{} contents",
            x.name()
        );
        assert_eq!(x.characteristics, y.characteristics, "{} flags", x.name());
    }
    assert_eq!(a.size_of_image, b.size_of_image, "SizeOfImage");
    assert_eq!(a.section_alignment, b.section_alignment);
    eprintln!(
        "{} sections equal; ours {} bytes, objcopy's {} bytes",
        a.sections.len(),
        ours.len(),
        theirs.len()
    );
}
