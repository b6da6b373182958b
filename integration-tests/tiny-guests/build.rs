//! Links every guest with `link.ld` (load and entry at 1 MiB, `_start` first).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    if std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-none") {
        println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-static");
        // The bzImage variant's code sits 0x200 above the 1 MiB load address.
        println!("cargo:rustc-link-arg-bin=e820-bzimage=--defsym=LOAD_ADDR=0x100200");
    }
}
