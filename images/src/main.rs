//! `bulwark-image`: make keys, build, sign, verify and inspect tenant image
//! bundles. Exit status: 0 success, 1 the bundle was refused (tampered,
//! untrusted, rolled back, malformed), 2 usage or I/O errors.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bulwark_image::{
    build, generate_key_pair, sign, BuildSpec, Bundle, ImageError, Integrity, Manifest,
    RollbackState, SigningKey, TrustPolicy,
};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "bulwark-image",
    version,
    about = "Build, sign and verify Bulwark tenant image bundles"
)]
struct Cli {
    /// Print machine-readable JSON on stdout instead of human text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an ECDSA P-384 signing key pair (signing.key, 0600; signing.pub).
    Keygen {
        /// Folder to write the key pair into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Build an unsigned bundle from component files.
    Build {
        /// Image name ([A-Za-z0-9._+-], up to 128 characters).
        #[arg(long)]
        name: String,
        /// Monotonic version number (rollback protection).
        #[arg(long)]
        version: u64,
        /// Guest kernel (bzImage or vmlinux).
        #[arg(long)]
        kernel: PathBuf,
        /// Initial ramdisk.
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Kernel command line.
        #[arg(long)]
        cmdline: Option<String>,
        /// Read-only root filesystem image (size a multiple of 4096).
        #[arg(long)]
        rootfs: Option<PathBuf>,
        /// Configuration blob for the guest init.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Creation time in Unix seconds [default: $SOURCE_DATE_EPOCH, else now].
        #[arg(long)]
        created: Option<u64>,
        /// Output bundle file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a signature to a bundle in place (atomically).
    Sign {
        /// PKCS#8 PEM private key.
        #[arg(long)]
        key: PathBuf,
        /// The bundle.
        image: PathBuf,
    },
    /// Verify signatures, version and every byte of a bundle.
    Verify {
        /// Trusted public key (PEM); repeat for several.
        #[arg(long = "trust", required = true)]
        trust: Vec<PathBuf>,
        /// How many distinct trusted keys must have signed.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        /// Refuse versions below this.
        #[arg(long, default_value_t = 0)]
        min_version: u64,
        /// Remember the highest version per image name here; refuse lower ones.
        #[arg(long)]
        state: Option<PathBuf>,
        /// The bundle.
        image: PathBuf,
    },
    /// Show what a bundle holds WITHOUT verifying it.
    Inspect {
        /// The bundle.
        image: PathBuf,
    },
}

/// A failure with its exit status.
struct Failure {
    error: ImageError,
}

impl From<ImageError> for Failure {
    fn from(error: ImageError) -> Self {
        Failure { error }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(report) => {
            print_report(json, &report);
            ExitCode::SUCCESS
        }
        Err(Failure { error }) => {
            let code = if error.is_rejection() { 1 } else { 2 };
            if json {
                let out = json!({"ok": false, "refused": code == 1, "error": error.to_string()});
                println!("{out}");
            } else {
                eprintln!("bulwark-image: error: {error}");
            }
            ExitCode::from(code)
        }
    }
}

/// What a successful command reports: human lines and a JSON value.
struct Report {
    human: Vec<String>,
    json: Value,
}

fn print_report(json: bool, r: &Report) {
    if json {
        println!("{}", r.json);
    } else {
        for line in &r.human {
            println!("{line}");
        }
    }
}

fn run(cli: Cli) -> Result<Report, Failure> {
    let show_progress = !cli.json && std::io::stderr().is_terminal();
    match cli.command {
        Command::Keygen { out } => {
            let (private, public, key) = generate_key_pair(&out)?;
            Ok(Report {
                human: vec![
                    format!("private key: {} (mode 0600)", private.display()),
                    format!("public key:  {}", public.display()),
                    format!("key id:      {}", key.id_hex()),
                ],
                json: json!({"ok": true, "private_key": private, "public_key": public, "key_id": key.id_hex()}),
            })
        }
        Command::Build {
            name,
            version,
            kernel,
            initrd,
            cmdline,
            rootfs,
            config,
            created,
            out,
        } => {
            let spec = BuildSpec {
                name,
                version,
                created: created.unwrap_or_else(default_created),
                kernel,
                initrd,
                cmdline,
                config,
                rootfs,
            };
            let total = [
                &Some(spec.kernel.clone()),
                &spec.initrd,
                &spec.config,
                &spec.rootfs,
            ]
            .into_iter()
            .flatten()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
            let bar = progress_bar(show_progress, total, "building");
            let manifest = build(&spec, &out, &|n| bar.inc(n))?;
            bar.finish_and_clear();
            let mut human = vec![format!(
                "built {} ({} version {}, unsigned)",
                out.display(),
                manifest.name,
                manifest.version
            )];
            human.extend(describe_components(&manifest));
            Ok(Report {
                human,
                json: json!({"ok": true, "image": out, "manifest": manifest_json(&manifest)}),
            })
        }
        Command::Sign { key, image } => {
            let key = SigningKey::from_pem_file(&key)?;
            let total = Bundle::open(&image)?.content_len();
            let bar = progress_bar(show_progress, total, "checking");
            sign(&image, &key, &|n| bar.inc(n))?;
            bar.finish_and_clear();
            let count = Bundle::open(&image)?.signatures().len();
            Ok(Report {
                human: vec![format!(
                    "signed {} with key {} ({count} signature(s) now)",
                    image.display(),
                    key.public().id_hex()
                )],
                json: json!({"ok": true, "image": image, "key_id": key.public().id_hex(), "signatures": count}),
            })
        }
        Command::Verify {
            trust,
            threshold,
            min_version,
            state,
            image,
        } => verify(
            &trust,
            threshold,
            min_version,
            state.as_deref(),
            &image,
            show_progress,
        ),
        Command::Inspect { image } => {
            let bundle = Bundle::open(&image)?;
            let m = bundle.unverified_manifest();
            let key_ids: Vec<String> = bundle
                .signatures()
                .iter()
                .map(|s| hex::encode(s.key_id))
                .collect();
            let mut human = vec![
                "UNVERIFIED: nothing below has been checked against any key; use `verify`.".into(),
                format!("name:       {}", m.name),
                format!("version:    {}", m.version),
                format!("created:    {} (Unix seconds)", m.created),
                format!(
                    "signatures: {} by key id(s) {}",
                    key_ids.len(),
                    key_ids.join(", ")
                ),
            ];
            human.extend(describe_components(m));
            Ok(Report {
                human,
                json: json!({"ok": true, "verified": false,
                    "warning": "UNVERIFIED: not checked against any key",
                    "signature_key_ids": key_ids, "manifest": manifest_json(m)}),
            })
        }
    }
}

fn verify(
    trust: &[PathBuf],
    threshold: usize,
    min_version: u64,
    state: Option<&Path>,
    image: &Path,
    show_progress: bool,
) -> Result<Report, Failure> {
    let policy =
        TrustPolicy::from_pem_files(trust, threshold, min_version).map_err(ImageError::from)?;
    // Lock the state first so check-then-record cannot race another verifier.
    let mut rollback = state.map(RollbackState::open).transpose()?;
    let bundle = Bundle::open(image)?;
    if let Some(s) = &rollback {
        let m = bundle.unverified_manifest();
        s.check(&m.name, m.version)?;
    }
    let bar = progress_bar(show_progress, bundle.content_len(), "verifying");
    let verified = bundle.verify_with_progress(&policy, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    let m = verified.manifest();
    if let Some(s) = &mut rollback {
        s.record(&m.name, m.version)?;
    }
    let signers: Vec<String> = verified.signed_by().iter().map(hex::encode).collect();
    let mut human = vec![
        format!(
            "VERIFIED {} ({} version {})",
            image.display(),
            m.name,
            m.version
        ),
        format!("signed by:       {}", signers.join(", ")),
        format!(
            "manifest sha384: {}",
            hex::encode(verified.manifest_sha384())
        ),
    ];
    human.extend(describe_components(m));
    Ok(Report {
        human,
        json: json!({"ok": true, "verified": true, "signed_by": signers,
            "manifest_sha384": hex::encode(verified.manifest_sha384()),
            "manifest": manifest_json(m)}),
    })
}

fn default_created() -> u64 {
    bulwark_image::build_time()
}

fn progress_bar(show: bool, total: u64, what: &'static str) -> ProgressBar {
    // Only worth drawing for large inputs on a terminal.
    if !show || total < (64 << 20) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}

fn describe_components(m: &Manifest) -> Vec<String> {
    let mut lines = vec![format!("  kind     {}", m.kind_name())];
    if let Some(n) = &m.node {
        lines.push(format!(
            "  node     secure boot {}, uki authenticode sha256 {}",
            if n.secure_boot { "on" } else { "off" },
            hex::encode(n.uki_authenticode_sha256)
        ));
        if let Some(b) = n.boot_manager_authenticode_sha256 {
            lines.push(format!(
                "  node     boot manager authenticode sha256 {}",
                hex::encode(b)
            ));
        }
        for (i, v) in &n.pcrs {
            lines.push(format!("  pcr {i:<4} {}", hex::encode(v)));
        }
    }
    lines.extend(m.components.iter().map(|c| match &c.integrity {
        Integrity::Sha384(d) => format!(
            "  {:<8} {:>12} bytes at {:#x}  sha384 {}",
            c.kind.name(),
            c.size,
            c.offset,
            hex::encode(d)
        ),
        Integrity::Verity(v) => format!(
            "  {:<8} {:>12} bytes at {:#x}  dm-verity {} root {} (tree {} bytes at {:#x})",
            c.kind.name(),
            c.size,
            c.offset,
            v.algorithm.name(),
            hex::encode(&v.root_hash),
            v.hash_size,
            v.hash_offset
        ),
    }));
    lines
}

fn manifest_json(m: &Manifest) -> Value {
    let components: Vec<Value> = m
        .components
        .iter()
        .map(|c| {
            let mut v = json!({"kind": c.kind.name(), "offset": c.offset, "size": c.size});
            match &c.integrity {
                Integrity::Sha384(d) => v["sha384"] = json!(hex::encode(d)),
                Integrity::Verity(p) => {
                    v["verity"] = json!({
                        "version": p.version, "algorithm": p.algorithm.name(),
                        "data_block_size": p.data_block_size, "hash_block_size": p.hash_block_size,
                        "data_blocks": p.data_blocks, "hash_offset": p.hash_offset,
                        "hash_size": p.hash_size, "salt": hex::encode(&p.salt),
                        "root_hash": hex::encode(&p.root_hash),
                        "dm_table": p.dm_table("/dev/vda", "/dev/vda", (p.hash_offset - c.offset) / u64::from(p.hash_block_size)),
                    })
                }
            }
            v
        })
        .collect();
    let mut v = json!({"kind": m.kind_name(), "name": m.name, "version": m.version, "created": m.created, "components": components});
    if let Some(n) = &m.node {
        v["node"] = json!({
            "secure_boot": n.secure_boot,
            "uki_authenticode_sha256": hex::encode(n.uki_authenticode_sha256),
            "boot_manager_authenticode_sha256": n.boot_manager_authenticode_sha256.map(hex::encode),
            "pcrs": n.pcrs.iter().map(|(i, d)| (i.to_string(), json!(hex::encode(d)))).collect::<serde_json::Map<_, _>>(),
        });
    }
    v
}
