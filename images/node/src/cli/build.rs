//! `bulwark-node-image build`.

use std::path::PathBuf;

use bulwark_node_image::build::{build_node_image, NodeBuildSpec};
use bulwark_node_image::uki::{DEFAULT_BOOT_MANAGER, DEFAULT_STUB};
use bulwark_node_image::NodeImageError;
use clap::Args;

use super::measure::{print_prediction, SecureBoot};

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Image name ([A-Za-z0-9._+-], 1..=128).
    #[arg(long)]
    pub name: String,
    /// Monotonic version (also on the command line as bulwark.node_version=V).
    #[arg(long)]
    pub version: u64,
    /// The kernel (an EFI-stub vmlinuz).
    #[arg(long)]
    pub kernel: PathBuf,
    /// The initramfs.
    #[arg(long)]
    pub initrd: PathBuf,
    /// Kernel command line (bulwark.node_version=V is appended).
    #[arg(long)]
    pub cmdline: Option<String>,
    /// os-release file (default: generated from --name and --version). It
    /// must carry IMAGE_ID=<--name> and IMAGE_VERSION=<--version>: systemd-boot
    /// sorts the A/B slots by them.
    #[arg(long)]
    pub osrel: Option<PathBuf>,
    /// Kernel release for the .uname section (default: read from the bzImage header).
    #[arg(long)]
    pub uname: Option<String>,
    /// systemd's UEFI stub.
    #[arg(long, default_value = DEFAULT_STUB)]
    pub stub: PathBuf,
    /// Boot manager shipped in the image and measured first (systemd-boot).
    #[arg(long, default_value = DEFAULT_BOOT_MANAGER, conflicts_with = "no_boot_manager")]
    pub boot_manager: PathBuf,
    /// Ship no boot manager: the firmware starts the UKI itself.
    #[arg(long)]
    pub no_boot_manager: bool,
    /// Secure Boot state the stored prediction assumes.
    #[arg(long, value_enum, default_value = "off")]
    pub secure_boot: SecureBoot,
    /// Sign the UKI and the boot manager for UEFI Secure Boot with this private
    /// key (PEM, unencrypted; `sbsign`), before they go into the bundle.
    #[arg(long, requires = "sb_cert")]
    pub sb_key: Option<PathBuf>,
    /// The certificate (PEM) of --sb-key, as enrolled in the firmware's db.
    #[arg(long, requires = "sb_key")]
    pub sb_cert: Option<PathBuf>,
    /// The unsigned node image bundle to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the UKI here.
    #[arg(long)]
    pub uki_out: Option<PathBuf>,
}

pub fn run(a: BuildArgs, json: bool) -> Result<(), NodeImageError> {
    let spec = NodeBuildSpec {
        name: a.name,
        version: a.version,
        created: None,
        kernel: a.kernel,
        initrd: a.initrd,
        cmdline: a.cmdline,
        osrel: a.osrel,
        uname: a.uname,
        stub: a.stub,
        boot_manager: (!a.no_boot_manager).then_some(a.boot_manager),
        secure_boot: a.secure_boot == SecureBoot::On,
        secure_boot_signing: a
            .sb_key
            .zip(a.sb_cert)
            .map(|(key, cert)| bulwark_node_image::build::SecureBootSigning { key, cert }),
        uki_out: a.uki_out,
    };
    let s = build_node_image(&spec, &a.out)?;
    if json {
        let v = serde_json::json!({"ok": true, "summary": s});
        println!("{v}");
        return Ok(());
    }
    println!(
        "built {} ({} version {}, unsigned: sign it with `bulwark-image sign`), {} bytes, in {:.2} s",
        s.bundle.display(),
        s.name,
        s.version,
        s.bundle_size,
        s.build_seconds
    );
    println!("  uki      {} bytes, sha384 {}", s.uki_size, s.uki_sha384);
    if let Some(p) = &s.uki_path {
        println!("  uki file {}", p.display());
    }
    match &s.secure_boot_signed_with {
        Some(cert) => println!(
            "  secure boot: UKI and boot manager signed (sbsign) for the db certificate {}",
            cert.display()
        ),
        None => println!("  secure boot: not signed (--sb-key, --sb-cert)"),
    }
    println!("  cmdline  {}", s.cmdline);
    if let Some(u) = &s.uname {
        println!("  uname    {u}");
    }
    print_prediction(&s.prediction);
    Ok(())
}
