//! `bulwark-verify`: the customer's offline verifier for TEE and GPU evidence.
//!
//! Exit status: 0 authentic and within policy (warnings allowed), 1 a check
//! failed, 2 unreadable/unparsable input or bad arguments.
#![forbid(unsafe_code)]

use anyhow::Context;
use bulwark_attestation::evidence::{self, appraise::VerifyOptions, predict, EvidenceAppraisal};
use bulwark_attestation::roots::{self, TrustStore};
use bulwark_attestation::{ear, nitro, nvidia, sevsnp, tdx, Error, Verification, VerificationTime};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "bulwark-verify",
    version,
    about = "Verify confidential-computing evidence offline"
)]
struct Cli {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Args, Debug)]
struct Common {
    /// Verification time: RFC 3339 or Unix milliseconds (default: now).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Print an EAR-shaped JSON result instead of text.
    #[arg(long)]
    json: bool,
    /// Sign the EAR with this verifier key (PKCS#8 ECDSA P-256 or P-384
    /// private key, PEM; ES256 / ES384) and write it to --ear-out as a JWT.
    #[arg(long, value_name = "KEY.pem", requires = "ear_out")]
    ear_key: Option<PathBuf>,
    /// Where the signed EAR (JWT) is written; with --ear-key.
    #[arg(long, value_name = "FILE", requires = "ear_key")]
    ear_out: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Kind {
    /// AMD SEV-SNP attestation report + VCEK/VLEK.
    SevSnp {
        /// Report: raw 1184 bytes or hex text.
        #[arg(long, value_name = "FILE")]
        report: PathBuf,
        /// VCEK or VLEK certificate, DER or PEM.
        #[arg(long, value_name = "FILE")]
        vcek: PathBuf,
        /// ASK/ASVK + ARK (PEM) to use instead of the embedded AMD roots.
        #[arg(long, value_name = "FILE")]
        chain: Option<PathBuf>,
        #[arg(long)]
        allow_debug: bool,
        #[arg(long, value_name = "HEX")]
        expect_measurement: Option<String>,
        #[arg(long, value_name = "HEX")]
        expect_report_data: Option<String>,
        #[arg(long, value_name = "HEX")]
        expect_host_data: Option<String>,
        #[arg(long, value_name = "N")]
        expect_vmpl: Option<u32>,
        #[command(flatten)]
        common: Common,
    },
    /// Intel TDX DCAP quote (v4, v5).
    Tdx {
        #[arg(long, value_name = "FILE")]
        quote: PathBuf,
        /// Collateral bundle (JSON: TCB info, QE identity, CRLs, issuer chains).
        #[arg(long, value_name = "FILE")]
        collateral: Option<PathBuf>,
        #[arg(long)]
        allow_debug: bool,
        /// Accept TCB statuses other than UpToDate (reported as warnings).
        #[arg(long)]
        allow_outdated_tcb: bool,
        /// Intel SGX Root CA (PEM) to use instead of the embedded one.
        #[arg(long, value_name = "FILE")]
        root: Option<PathBuf>,
        #[arg(long, value_name = "HEX")]
        expect_mrtd: Option<String>,
        #[arg(long, value_name = "HEX")]
        expect_mrconfigid: Option<String>,
        /// Expected RTMR value, N=HEX with N in 0..=3 (repeatable).
        #[arg(long, value_name = "N=HEX")]
        expect_rtmr: Vec<String>,
        #[arg(long, value_name = "HEX")]
        expect_report_data: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// AWS Nitro Enclaves attestation document (COSE_Sign1; raw or base64).
    Nitro {
        #[arg(long, value_name = "FILE")]
        doc: PathBuf,
        #[arg(long)]
        allow_debug: bool,
        /// Expected PCR value, N=HEX (repeatable).
        #[arg(long, value_name = "N=HEX")]
        expect_pcr: Vec<String>,
        #[arg(long, value_name = "HEX")]
        expect_nonce: Option<String>,
        #[arg(long, value_name = "HEX")]
        expect_user_data: Option<String>,
        #[arg(long, value_name = "HEX")]
        expect_public_key: Option<String>,
        /// AWS Nitro root (PEM) to use instead of the embedded one.
        #[arg(long, value_name = "FILE")]
        root: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// NVIDIA Hopper GPU SPDM GET_MEASUREMENTS evidence.
    Nvidia {
        /// SPDM request + response, hex.
        #[arg(long, value_name = "FILE")]
        report: PathBuf,
        /// Device certificate chain, PEM.
        #[arg(long, value_name = "FILE")]
        chain: PathBuf,
        #[arg(long, value_name = "HEX")]
        expect_nonce: Option<String>,
        /// Signed reference integrity manifest (SWID tag) to compare against;
        /// repeat for the driver and the VBIOS RIM.
        #[arg(long, value_name = "FILE")]
        rim: Vec<PathBuf>,
        /// NVIDIA device identity root (PEM) to use instead of the embedded one.
        #[arg(long, value_name = "FILE")]
        root: Option<PathBuf>,
        /// NVIDIA RIM signing root (PEM) to use instead of the embedded one.
        #[arg(long, value_name = "FILE")]
        rim_root: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Bulwark evidence: a signed document of the node, the VM, its devices
    /// and GPUs (docs/evidence.md), appraised against a policy.
    Evidence {
        /// The evidence document (COSE_Sign1).
        file: PathBuf,
        /// Appraisal policy (TOML, docs/evidence.md).
        #[arg(long, value_name = "POLICY")]
        policy: PathBuf,
        /// The challenge sent to the node (hex).
        #[arg(long, value_name = "HEX")]
        nonce: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Which node OS image a node booted: the node part of an evidence
    /// document (TPM quote by the enrolled AK, event log replay, the quoted
    /// PCRs and PCR 4's boot applications against each signed node image's
    /// offline prediction, firmware PCRs against the policy's models).
    /// Prints and judges the node submodule only.
    Node {
        /// The evidence document (COSE_Sign1), e.g. from `bulwarkctl vms attest`.
        file: PathBuf,
        /// A signed node OS image (.bwi) the boot may be; repeatable.
        #[arg(long = "image", value_name = "NODE.bwi", required = true)]
        images: Vec<PathBuf>,
        /// Trusted node image signing key (PEM); repeatable.
        #[arg(long, value_name = "PUB", required = true)]
        trust: Vec<PathBuf>,
        /// EK CA certificates (PEM) for the TPM; repeatable (added to the
        /// policy's).
        #[arg(long, value_name = "PEM")]
        ek_root: Vec<PathBuf>,
        /// A policy whose [node] section (firmware models, pinned
        /// identities, EK roots) applies too; the images above are added.
        #[arg(long, value_name = "POLICY")]
        policy: Option<PathBuf>,
        /// The challenge sent to the node (hex).
        #[arg(long, value_name = "HEX")]
        nonce: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Attested TLS: connect, appraise the server's evidence (in its
    /// certificate, bound to its key and to this handshake's nonce) under the
    /// policy, and only then exchange bytes (docs/evidence.md, "Attested TLS").
    Connect {
        /// The server, HOST:PORT.
        addr: String,
        /// Appraisal policy (TOML, docs/evidence.md).
        #[arg(long, value_name = "POLICY")]
        policy: PathBuf,
        /// After an affirmed handshake, send TEXT, close the sending side and
        /// print what comes back.
        #[arg(long, value_name = "TEXT")]
        send: Option<String>,
        /// Like --send, with the bytes of FILE: for secrets, which --send would
        /// show in the process list (--json then names the file and its size,
        /// not its content).
        #[arg(long, value_name = "FILE", conflicts_with = "send")]
        send_file: Option<PathBuf>,
        /// Connect and read timeout, seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        timeout: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Check a signed EAR (a JWT written by --ear-key/--ear-out) with the
    /// verifier's public key and print its claims set (JSON). Exit 0: the
    /// signature verifies and the EAR is not contraindicated; 1: refused or
    /// contraindicated; 2: unreadable input or key.
    EarVerify {
        /// The signed EAR (JWT).
        file: PathBuf,
        /// The verifier's public key (SubjectPublicKeyInfo PEM, P-256 or P-384).
        #[arg(long, value_name = "PUB.pem")]
        key: PathBuf,
    },
    /// The launch measurement to expect from a signed image, computed
    /// offline; prints a policy (TOML) accepting exactly that launch.
    Predict {
        /// The signed image bundle (.bwi).
        image: PathBuf,
        /// Trusted public key (PEM); repeatable.
        #[arg(long, value_name = "PUB", required = true)]
        trust: Vec<PathBuf>,
        /// The VM configuration (bulwark-vmm config JSON; its boot source
        /// is replaced by IMAGE). Default: 1 vCPU, 1024 MiB.
        #[arg(long, value_name = "VM.json")]
        vm: Option<PathBuf>,
        /// Key id (hex) trusted to sign node OS images, for the policy; repeatable.
        #[arg(long, value_name = "HEX")]
        node_signer: Vec<String>,
        /// Write `allow_software_key = true` into the policy (tests only).
        #[arg(long)]
        allow_software_key: bool,
        /// Print JSON (measurement, image, events) instead of a policy.
        #[arg(long)]
        json: bool,
        /// Also predict the AMD SEV-SNP launch digest of the VM's firmware boot
        /// (`machine.firmware` in --vm) on this guest CPU model (EPYC-Milan, ...).
        #[arg(long, value_name = "CPU")]
        snp_vcpu_type: Option<String>,
    },
}

/// What a subcommand produced.
enum Outcome {
    Vendor(Verification, Common),
    Evidence(EvidenceAppraisal, Common),
    Printed,
    /// Exit status already decided (attested TLS).
    Exit(u8),
}

/// Largest evidence, certificate, collateral or RIM file read (real ones are
/// kilobytes; this stops `/dev/zero` or a huge file from exhausting memory).
const MAX_INPUT_LEN: u64 = 16 << 20;

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_INPUT_LEN + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX_INPUT_LEN {
        anyhow::bail!("{} is larger than {MAX_INPUT_LEN} bytes", path.display());
    }
    Ok(bytes)
}

fn hex_opt(v: &Option<String>, what: &str) -> Result<Option<Vec<u8>>, Error> {
    v.as_deref()
        .map(|s| bulwark_attestation::bytes::parse_hex_arg(s, what))
        .transpose()
}

fn trust_override(
    path: &Option<PathBuf>,
    default: fn() -> TrustStore,
) -> anyhow::Result<TrustStore> {
    match path {
        Some(p) => Ok(TrustStore::from_pem(&read(p)?)?),
        None => Ok(default()),
    }
}

fn time_of(common: &Common) -> Result<VerificationTime, Error> {
    match &common.at {
        Some(t) => VerificationTime::parse(t),
        None => Ok(VerificationTime::now()),
    }
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.kind {
        Kind::Evidence {
            file,
            policy,
            nonce,
            common,
        } => {
            let at = time_of(&common)?;
            let nonce = hex_opt(&nonce, "--nonce")?;
            let policy = evidence::Policy::from_file(&policy)?;
            let a =
                evidence::verify_document(&read(&file)?, &policy, &VerifyOptions { nonce, at })?;
            Ok(Outcome::Evidence(a, common))
        }
        Kind::Node {
            file,
            images,
            trust,
            ek_root,
            policy,
            nonce,
            common,
        } => {
            let at = time_of(&common)?;
            let nonce = hex_opt(&nonce, "--nonce")?;
            let mut policy = match policy {
                Some(p) => evidence::Policy::from_file(&p)?,
                // The defaults of an empty policy file (max_age_seconds 300, ...).
                None => evidence::Policy::parse("", &std::env::current_dir()?)?,
            };
            let cwd = std::env::current_dir()?;
            let abs = |p: &Path| cwd.join(p);
            policy.node.ek_roots.extend(ek_root.iter().map(|p| abs(p)));
            let trust: Vec<PathBuf> = trust.iter().map(|p| abs(p)).collect();
            policy
                .node
                .image_signers
                .extend(predict::trusted_key_ids(&trust)?);
            policy
                .node
                .boot_images
                .extend(images.iter().map(|i| evidence::policy::NodeImageRef {
                    image: abs(i),
                    trust: trust.clone(),
                }));
            let mut a =
                evidence::verify_document(&read(&file)?, &policy, &VerifyOptions { nonce, at })?;
            a.subjects.retain(|s| s.name == "node");
            Ok(Outcome::Evidence(a, common))
        }
        Kind::Predict {
            image,
            trust,
            vm,
            node_signer,
            allow_software_key,
            json,
            snp_vcpu_type,
        } => {
            for k in &node_signer {
                bulwark_attestation::bytes::parse_hex_arg(k, "--node-signer")?;
            }
            let p = predict::predict_snp(&image, &trust, vm.as_deref(), snp_vcpu_type.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                print!("{}", p.policy_toml(&node_signer, allow_software_key));
            }
            Ok(Outcome::Printed)
        }
        Kind::Connect {
            addr,
            policy,
            send,
            send_file,
            timeout,
            common,
        } => {
            let payload = match (send, send_file) {
                (Some(text), _) => Some(Payload {
                    shown: serde_json::Value::String(text.clone()),
                    bytes: text.into_bytes(),
                }),
                (None, Some(file)) => {
                    let bytes = read(&file)?;
                    Some(Payload {
                        shown: serde_json::json!({"file": file, "bytes": bytes.len()}),
                        bytes,
                    })
                }
                (None, None) => None,
            };
            connect(&addr, &policy, payload, timeout, &common)
        }
        Kind::EarVerify { file, key } => ear_verify(&file, &key),
        other => vendor(other).map(|(v, c)| Outcome::Vendor(v, c)),
    }
}

/// What `connect` sends once the evidence is affirmed, and what its JSON output
/// says was sent.
struct Payload {
    bytes: Vec<u8>,
    shown: serde_json::Value,
}

/// `connect`: 0 affirmed (and TEXT exchanged), 1 refused (no application
/// byte sent), 2 usage, I/O or TLS errors.
fn connect(
    addr: &str,
    policy: &Path,
    send: Option<Payload>,
    timeout: u64,
    common: &Common,
) -> anyhow::Result<Outcome> {
    use bulwark_attestation::atls::{self, AtlsError, ConnectOptions};
    use std::io::{Read, Write};
    let at = common.at.as_ref().map(|_| time_of(common)).transpose()?;
    let policy = evidence::Policy::from_file(policy)?;
    let options = ConnectOptions {
        nonce: None,
        at,
        timeout: std::time::Duration::from_secs(timeout.max(1)),
    };
    let print = |a: &EvidenceAppraisal, extra: Option<(&str, serde_json::Value)>| {
        if common.json {
            let mut j = a.to_json();
            if let (Some((k, v)), Some(o)) = (extra, j.as_object_mut()) {
                o.insert(k.to_string(), v);
            }
            println!("{j:#}");
        } else {
            print!("{}", a.to_text());
        }
    };
    let (mut stream, appraisal) = match atls::connect(addr, &policy, &options) {
        Ok(v) => v,
        Err(AtlsError::Refused(r)) => {
            if let Some(a) = &r.appraisal {
                write_signed_ear(&a.to_ear(), common)?;
            }
            match &r.appraisal {
                Some(a) => print(a, None),
                None if common.json => println!(
                    "{:#}",
                    serde_json::json!({"status": "contraindicated", "atls": {
                        "refused": r.failed, "detail": r.detail}})
                ),
                None => println!(
                    "REJECTED: failed checks: {} ({})",
                    r.failed.join(", "),
                    r.detail
                ),
            }
            eprintln!("bulwark-verify: {addr}: refused, no application data sent: {r}");
            return Ok(Outcome::Exit(1));
        }
        Err(e) => anyhow::bail!("{addr}: {e}"),
    };
    write_signed_ear(&appraisal.to_ear(), common)?;
    let Some(payload) = send else {
        print(&appraisal, None);
        return Ok(Outcome::Exit(0));
    };
    stream.write_all(&payload.bytes)?;
    stream.conn.send_close_notify();
    stream.flush()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                if reply.len() as u64 > MAX_INPUT_LEN {
                    anyhow::bail!("{addr}: reply larger than {MAX_INPUT_LEN} bytes");
                }
            }
            // A peer that closes without close_notify, or stays silent.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e.into()),
        }
    }
    let reply_text = String::from_utf8_lossy(&reply).into_owned();
    if common.json {
        print(
            &appraisal,
            Some((
                "atls",
                serde_json::json!({"sent": payload.shown, "received": reply_text}),
            )),
        );
    } else {
        print(&appraisal, None);
        println!("--- received {} bytes ---", reply.len());
        println!("{reply_text}");
    }
    Ok(Outcome::Exit(0))
}

/// With --ear-key: sign the EAR and write the JWT to --ear-out.
fn write_signed_ear(e: &::ear::Ear, common: &Common) -> anyhow::Result<()> {
    let (Some(key), Some(out)) = (&common.ear_key, &common.ear_out) else {
        return Ok(());
    };
    #[cfg(feature = "ear-jwt")]
    {
        let token = ear::signed::sign_jwt(e, &read(key)?)?;
        std::fs::write(out, format!("{token}\n"))
            .with_context(|| format!("cannot write {}", out.display()))?;
        Ok(())
    }
    #[cfg(not(feature = "ear-jwt"))]
    {
        let _ = (e, key, out);
        Err(Error::NotImplemented("signed EARs (built without the ear-jwt feature)".into()).into())
    }
}

/// `ear-verify`: 0 verified and not contraindicated, 1 refused or
/// contraindicated, 2 unreadable input or key.
fn ear_verify(file: &Path, key: &Path) -> anyhow::Result<Outcome> {
    #[cfg(feature = "ear-jwt")]
    {
        let token = String::from_utf8(read(file)?)
            .map_err(|_| Error::Parse(format!("{}: not a JWT (not UTF-8)", file.display())))?;
        match ear::signed::verify_jwt(&token, &read(key)?) {
            Ok(v) => {
                println!("{:#}", v.claims);
                let status = v.ear.status.unwrap_or(::ear::TrustTier::None);
                eprintln!(
                    "bulwark-verify: signed EAR verified ({} by the given key); ear_status {status:?}",
                    v.algorithm
                );
                Ok(Outcome::Exit(
                    if status == ::ear::TrustTier::Contraindicated {
                        1
                    } else {
                        0
                    },
                ))
            }
            Err(e @ ear::signed::Error::Refused(_)) => {
                eprintln!("bulwark-verify: {}: {e}", file.display());
                Ok(Outcome::Exit(1))
            }
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(feature = "ear-jwt"))]
    {
        let _ = (file, key);
        Err(Error::NotImplemented("signed EARs (built without the ear-jwt feature)".into()).into())
    }
}

fn vendor(kind: Kind) -> anyhow::Result<(Verification, Common)> {
    match kind {
        Kind::SevSnp {
            report,
            vcek,
            chain,
            allow_debug,
            expect_measurement,
            expect_report_data,
            expect_host_data,
            expect_vmpl,
            common,
        } => {
            let at = time_of(&common)?;
            let policy = sevsnp::Policy {
                allow_debug,
                min_tcb: None,
                expect_report_data: hex_opt(&expect_report_data, "--expect-report-data")?,
                expect_measurement: hex_opt(&expect_measurement, "--expect-measurement")?,
                expect_host_data: hex_opt(&expect_host_data, "--expect-host-data")?,
                expect_vmpl,
            };
            let trust = trust_override(&chain, sevsnp::default_trust)?;
            let ev = sevsnp::Evidence::parse(&read(&report)?, &read(&vcek)?)?;
            Ok((sevsnp::verify(&ev, &trust, &policy, at), common))
        }
        Kind::Tdx {
            quote,
            collateral,
            allow_debug,
            allow_outdated_tcb,
            root,
            expect_mrtd,
            expect_mrconfigid,
            expect_rtmr,
            expect_report_data,
            common,
        } => {
            let at = time_of(&common)?;
            let policy = tdx::Policy {
                allow_debug,
                allow_outdated_tcb,
                expect_mrtd: hex_opt(&expect_mrtd, "--expect-mrtd")?,
                expect_mrconfigid: hex_opt(&expect_mrconfigid, "--expect-mrconfigid")?,
                expect_rtmrs: expect_rtmr
                    .iter()
                    .map(|a| tdx::parse_rtmr_arg(a))
                    .collect::<Result<_, _>>()?,
                expect_report_data: hex_opt(&expect_report_data, "--expect-report-data")?,
            };
            let trust = trust_override(&root, tdx::default_trust)?;
            let collateral = collateral.map(|p| read(&p)).transpose()?;
            let v = tdx::verify_bytes(&read(&quote)?, collateral.as_deref(), &trust, &policy, at)?;
            Ok((v, common))
        }
        Kind::Nitro {
            doc,
            allow_debug,
            expect_pcr,
            expect_nonce,
            expect_user_data,
            expect_public_key,
            root,
            common,
        } => {
            let at = time_of(&common)?;
            let mut policy = nitro::Policy {
                allow_debug,
                expect_pcrs: Vec::new(),
                expect_nonce: hex_opt(&expect_nonce, "--expect-nonce")?,
                expect_user_data: hex_opt(&expect_user_data, "--expect-user-data")?,
                expect_public_key: hex_opt(&expect_public_key, "--expect-public-key")?,
            };
            for p in &expect_pcr {
                policy.expect_pcrs.push(nitro::parse_pcr_arg(p)?);
            }
            let trust = trust_override(&root, nitro::default_trust)?;
            let v = nitro::verify_bytes(&read(&doc)?, &trust, &policy, at)?;
            Ok((v, common))
        }
        Kind::Nvidia {
            report,
            chain,
            expect_nonce,
            rim,
            root,
            rim_root,
            common,
        } => {
            let at = time_of(&common)?;
            let policy = nvidia::Policy {
                expect_nonce: hex_opt(&expect_nonce, "--expect-nonce")?,
            };
            let trust = nvidia::Trust {
                device: trust_override(&root, roots::nvidia_device_identity)?,
                rim: trust_override(&rim_root, roots::nvidia_rim)?,
            };
            let rims = rim.iter().map(|p| read(p)).collect::<Result<Vec<_>, _>>()?;
            let rims: Vec<&[u8]> = rims.iter().map(Vec::as_slice).collect();
            let v =
                nvidia::verify_bytes(&read(&report)?, &read(&chain)?, &rims, &trust, &policy, at)?;
            Ok((v, common))
        }
        Kind::Evidence { .. }
        | Kind::Node { .. }
        | Kind::Predict { .. }
        | Kind::Connect { .. }
        | Kind::EarVerify { .. } => Err(Error::Argument("not a vendor verifier".into()).into()),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let signed = |e: &::ear::Ear, common: &Common| match write_signed_ear(e, common) {
        Ok(()) => true,
        Err(err) => {
            eprintln!("bulwark-verify: error: {err:#}");
            false
        }
    };
    match run(cli) {
        Ok(Outcome::Vendor(v, common)) => {
            let e = ear::to_ear(&v);
            if !signed(&e, &common) {
                return ExitCode::from(2);
            }
            if common.json {
                println!("{:#}", ear::ear_json(&e));
            } else {
                print!("{}", v.to_text());
            }
            ExitCode::from(v.exit_code() as u8)
        }
        Ok(Outcome::Evidence(a, common)) => {
            let e = a.to_ear();
            if !signed(&e, &common) {
                return ExitCode::from(2);
            }
            if common.json {
                println!("{:#}", ear::ear_json(&e));
            } else {
                print!("{}", a.to_text());
            }
            ExitCode::from(a.exit_code() as u8)
        }
        Ok(Outcome::Printed) => ExitCode::SUCCESS,
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("bulwark-verify: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
