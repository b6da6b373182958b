//! Configuration: the measured kernel command line's `bulwark.*` parameters and the
//! signed config component (`/bulwark/config.json`, appended to the initrd by the VMM),
//! checked against each other. Schema: `docs/guest-init.md`.
//!
//! Every refusal names the field.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::Deserialize;
use sha2::{Digest, Sha384};

use crate::gpu::GpuPolicy;
use crate::verity::VerityParams;

/// Where the VMM's config archive puts the config component.
pub const CONFIG_PATH: &str = "/bulwark/config.json";
/// `format` of the config this init reads.
pub const CONFIG_FORMAT: &str = "bulwark.init.v1";
/// Largest config accepted (the image format's limit for the component).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A refused configuration, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// `cmdline:bulwark.verity`, `config:workload.argv`, ...
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// The `bulwark.*` parameters of the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `bulwark.verity=`: the rootfs's dm-verity parameters (put there by the VMM
    /// from the signed manifest).
    pub verity: Option<VerityParams>,
    /// `bulwark.config_sha384=`: SHA-384 of the config component.
    pub config_sha384: Option<[u8; 48]>,
    /// `bulwark.channel_port=`: host channel port (default 1024).
    pub channel_port: u32,
    /// `bulwark.test_panic=STAGE` (builds with the `test-hooks` feature only).
    pub test_panic: Option<String>,
}

/// Parses the `bulwark.*` parameters of `/proc/cmdline`; other parameters are the
/// kernel's. An unknown `bulwark.` parameter or one given twice is refused.
pub fn parse_cmdline(line: &str) -> Result<Cmdline, ConfigError> {
    let mut c = Cmdline {
        channel_port: bulwark_guest_protocol::HOST_CHANNEL_PORT,
        ..Cmdline::default()
    };
    let mut seen = std::collections::BTreeSet::new();
    for word in line.split_ascii_whitespace() {
        let Some(rest) = word.strip_prefix("bulwark.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        let field = format!("cmdline:bulwark.{key}");
        if !seen.insert(key.to_owned()) {
            return Err(err(field, "given twice"));
        }
        match key {
            "verity" => {
                c.verity = Some(VerityParams::parse(value).map_err(|e| err(&field, e.to_string()))?)
            }
            "config_sha384" => {
                let bytes = hex::decode(value)
                    .ok()
                    .and_then(|b| <[u8; 48]>::try_from(b).ok())
                    .filter(|_| value.bytes().all(|b| !b.is_ascii_uppercase()))
                    .ok_or_else(|| err(&field, "expected 96 lower-case hex digits"))?;
                c.config_sha384 = Some(bytes);
            }
            "channel_port" => {
                c.channel_port = value
                    .parse::<u32>()
                    .ok()
                    .filter(|p| {
                        *p != 0 && *p != u32::MAX && value.bytes().all(|b| b.is_ascii_digit())
                    })
                    .ok_or_else(|| err(&field, "expected a vsock port number"))?;
            }
            "test_panic" if cfg!(feature = "test-hooks") => c.test_panic = Some(value.to_owned()),
            _ => return Err(err(field, "unknown parameter")),
        }
    }
    Ok(c)
}

/// The signed config component, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Must be [`CONFIG_FORMAT`].
    pub format: String,
    /// Modules to load (dependencies added automatically), by name.
    #[serde(default)]
    pub modules: Vec<String>,
    /// The verified root.
    pub rootfs: RootfsConfig,
    /// Extra tmpfs mounts in the workload's view.
    #[serde(default)]
    pub mounts: Vec<MountConfig>,
    /// What to run.
    pub workload: WorkloadConfig,
    /// vsock port → guest TCP port bridges.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// GPU policy.
    #[serde(default)]
    pub gpu: GpuPolicy,
    /// Passthrough PCI functions that must be on the guest's bus (`crate::devices`).
    #[serde(default)]
    pub devices: Vec<DeviceRequirement>,
    /// The encrypted scratch disk, when the workload wants one.
    #[serde(default)]
    pub scratch: Option<ScratchConfig>,
}

/// `devices[]`: at least `count` PCI functions `id` (`vvvv:dddd`, lowercase hex).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRequirement {
    /// `vendor:device`, e.g. `10de:2330`.
    pub id: String,
    /// How many, at least; default 1.
    #[serde(default = "default_device_count")]
    pub count: u32,
}

fn default_device_count() -> u32 {
    1
}

/// Most functions one `devices[]` entry may ask for.
pub const MAX_DEVICE_COUNT: u32 = 64;

/// `scratch`: a writable disk from the host, mapped through dm-crypt with a key made
/// at boot (`crate::scratch`) and given to the workload as the block node
/// `/dev/scratch`. Set, it is required: no such disk refuses the start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScratchConfig {
    /// The virtio-blk disk's serial (the VMM's disk `id`), default `scratch`.
    #[serde(default = "default_scratch_disk")]
    pub disk: String,
}

fn default_scratch_disk() -> String {
    "scratch".into()
}

/// `rootfs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsConfig {
    /// The virtio-blk disk's serial (the VMM's disk `id`), default `rootfs`.
    #[serde(default = "default_disk")]
    pub disk: String,
    /// Filesystem type, mounted read-only: `ext4` (default), `erofs`, `squashfs`.
    #[serde(default = "default_fs")]
    pub fs: String,
    /// `full` (default): read every block through dm-verity before the workload
    /// starts, so a corrupt block refuses the start; `on_read`: the kernel checks
    /// blocks as they are read (a corrupt block is an I/O error later).
    #[serde(default)]
    pub verify: VerifyMode,
    /// Optional: the root hash the config expects; must equal the command line's.
    #[serde(default)]
    pub root_hash: Option<String>,
}

/// When rootfs blocks are verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// Every block before the workload starts.
    #[default]
    Full,
    /// As read.
    OnRead,
}

fn default_disk() -> String {
    "rootfs".into()
}
fn default_fs() -> String {
    "ext4".into()
}

/// `mounts[]`: a tmpfs inside the workload's view.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    /// Absolute path inside the rootfs (an existing directory).
    pub target: String,
    /// Size limit in MiB.
    pub tmpfs_mib: u32,
}

/// `workload`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Program (absolute path in the rootfs) and arguments.
    pub argv: Vec<String>,
    /// Environment (nothing else is inherited).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Unprivileged user id (not 0).
    pub uid: u32,
    /// Group id (not 0).
    pub gid: u32,
    /// Working directory (absolute).
    #[serde(default = "default_cwd")]
    pub cwd: String,
    /// Size of its private writable `/tmp`, MiB.
    #[serde(default = "default_tmp")]
    pub tmp_mib: u32,
    /// After SIGTERM, how long before SIGKILL, ms.
    #[serde(default = "default_grace")]
    pub stop_grace_ms: u64,
    /// Most processes and threads the workload's uid may have (RLIMIT_NPROC).
    #[serde(default = "default_max_processes")]
    pub max_processes: u64,
}

fn default_cwd() -> String {
    "/".into()
}
fn default_tmp() -> u32 {
    64
}
fn default_grace() -> u64 {
    5000
}
fn default_max_processes() -> u64 {
    4096
}

/// Most entries in `modules`, `mounts` and `ports` (the protocol's list limit).
pub const MAX_ENTRIES: usize = 256;

/// `ports[]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// vsock port the guest listens on.
    pub vsock: u32,
    /// Guest-local TCP port (127.0.0.1) each connection is bridged to.
    pub tcp: u16,
    /// What the vsock side speaks (default: attested TLS).
    #[serde(default)]
    pub tls: PortTls,
}

/// `ports[].tls`: what a bridge speaks on its vsock side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortTls {
    /// Attested TLS 1.3 terminated in the guest (`docs/evidence.md`, "Attested
    /// TLS"): the client appraises the evidence in the certificate before it sends
    /// a byte; the workload gets plaintext on loopback only after the handshake.
    #[default]
    Attested,
    /// Bytes pass unchanged: the workload does its own TLS, or the port carries
    /// nothing that needs protecting from the host.
    None,
}

/// The whole, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// From the command line.
    pub cmdline: Cmdline,
    /// From the config component.
    pub file: FileConfig,
    /// The rootfs's verity parameters (from the command line).
    pub verity: VerityParams,
}

/// Parses and checks the config component against the command line.
pub fn parse_config(cmdline: Cmdline, bytes: &[u8]) -> Result<Config, ConfigError> {
    if let Some(want) = cmdline.config_sha384 {
        let got: [u8; 48] = Sha384::digest(bytes).into();
        if got != want {
            return Err(err(
                "config",
                format!(
                    "SHA-384 {} does not match cmdline:bulwark.config_sha384",
                    hex::encode(got)
                ),
            ));
        }
    } else {
        return Err(err(
            "cmdline:bulwark.config_sha384",
            "missing: the config is not bound to the measured command line",
        ));
    }
    let file: FileConfig = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json names the unknown field or the bad type in its message.
        err("config", e.to_string())
    })?;
    let verity = cmdline.verity.clone().ok_or_else(|| {
        err(
            "cmdline:bulwark.verity",
            "missing: the rootfs has no dm-verity parameters (was the image built with a rootfs?)",
        )
    })?;
    check(&file, &cmdline, &verity)?;
    Ok(Config {
        cmdline,
        file,
        verity,
    })
}

fn absolute_clean(field: &str, p: &str) -> Result<(), ConfigError> {
    let path = Path::new(p);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || p.contains('\0')
    {
        return Err(err(field, format!("{p:?} is not a clean absolute path")));
    }
    Ok(())
}

fn check(f: &FileConfig, cmdline: &Cmdline, verity: &VerityParams) -> Result<(), ConfigError> {
    for (field, n) in [
        ("config:modules", f.modules.len()),
        ("config:mounts", f.mounts.len()),
        ("config:ports", f.ports.len()),
    ] {
        if n > MAX_ENTRIES {
            return Err(err(field, format!("{n} entries, at most {MAX_ENTRIES}")));
        }
    }
    if f.format != CONFIG_FORMAT {
        return Err(err(
            "config:format",
            format!("{:?}, expected {CONFIG_FORMAT:?}", f.format),
        ));
    }
    for (i, m) in f.modules.iter().enumerate() {
        if m.is_empty()
            || !m
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(err(
                format!("config:modules[{i}]"),
                format!("{m:?} is not a module name"),
            ));
        }
    }
    if !["ext4", "erofs", "squashfs"].contains(&f.rootfs.fs.as_str()) {
        return Err(err(
            "config:rootfs.fs",
            format!("{:?}: ext4, erofs or squashfs", f.rootfs.fs),
        ));
    }
    if f.rootfs.disk.is_empty() || f.rootfs.disk.len() > 20 {
        return Err(err(
            "config:rootfs.disk",
            "1 to 20 characters (a virtio-blk serial)",
        ));
    }
    let mut device_ids = std::collections::BTreeSet::new();
    for (i, d) in f.devices.iter().enumerate() {
        let hex4 =
            |t: &str| t.len() == 4 && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let well_formed =
            d.id.split_once(':')
                .is_some_and(|(v, dev)| hex4(v) && hex4(dev));
        if !well_formed {
            return Err(err(
                format!("config:devices[{i}].id"),
                format!(
                    "{:?}: vendor:device, 4 lowercase hex digits each (10de:2330)",
                    d.id
                ),
            ));
        }
        if d.count == 0 || d.count > MAX_DEVICE_COUNT {
            return Err(err(
                format!("config:devices[{i}].count"),
                format!("1 to {MAX_DEVICE_COUNT}"),
            ));
        }
        if !device_ids.insert(d.id.as_str()) {
            return Err(err(
                format!("config:devices[{i}].id"),
                format!("{} is listed twice", d.id),
            ));
        }
    }
    if f.devices.len() > MAX_ENTRIES {
        return Err(err(
            "config:devices",
            format!("at most {MAX_ENTRIES} entries"),
        ));
    }
    if let Some(s) = &f.scratch {
        if s.disk.is_empty() || s.disk.len() > 20 {
            return Err(err(
                "config:scratch.disk",
                "1 to 20 characters (a virtio-blk serial)",
            ));
        }
        if s.disk == f.rootfs.disk {
            return Err(err(
                "config:scratch.disk",
                format!("{:?} is the rootfs disk's serial too", s.disk),
            ));
        }
    }
    if let Some(h) = &f.rootfs.root_hash {
        if *h != verity.root_hash_hex() {
            return Err(err(
                "config:rootfs.root_hash",
                format!(
                    "{h} contradicts cmdline:bulwark.verity's root hash {}",
                    verity.root_hash_hex()
                ),
            ));
        }
    }
    let w = &f.workload;
    if w.argv.is_empty() {
        return Err(err("config:workload.argv", "empty"));
    }
    absolute_clean("config:workload.argv[0]", &w.argv[0])?;
    if w.argv
        .iter()
        .chain(w.env.values())
        .any(|a| a.contains('\0'))
    {
        return Err(err("config:workload", "an argument or value contains NUL"));
    }
    for k in w.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(err(
                format!("config:workload.env.{k}"),
                "not a variable name",
            ));
        }
    }
    if w.uid == 0 {
        return Err(err(
            "config:workload.uid",
            "0: the workload runs unprivileged",
        ));
    }
    if w.gid == 0 {
        return Err(err(
            "config:workload.gid",
            "0: the workload runs unprivileged",
        ));
    }
    absolute_clean("config:workload.cwd", &w.cwd)?;
    if w.tmp_mib == 0 {
        return Err(err("config:workload.tmp_mib", "must be at least 1"));
    }
    if !(1..=1 << 22).contains(&w.max_processes) {
        return Err(err("config:workload.max_processes", "1 to 4194304"));
    }
    let mut targets = std::collections::BTreeSet::new();
    for (i, m) in f.mounts.iter().enumerate() {
        let field = format!("config:mounts[{i}].target");
        absolute_clean(&field, &m.target)?;
        // Compared by components, so `//dev/` is `/dev`.
        let target: std::path::PathBuf = Path::new(&m.target).components().collect();
        let reserved = ["/proc", "/dev", "/tmp"]
            .iter()
            .any(|r| target.starts_with(r));
        if target == Path::new("/") || reserved {
            return Err(err(
                field,
                format!("{} is (under) a mount bulwark-init sets up", m.target),
            ));
        }
        if !targets.insert(target) {
            return Err(err(field, format!("{} is mounted twice", m.target)));
        }
        if m.tmpfs_mib == 0 {
            return Err(err(
                format!("config:mounts[{i}].tmpfs_mib"),
                "must be at least 1",
            ));
        }
    }
    let mut vsock_ports = std::collections::BTreeSet::new();
    for (i, p) in f.ports.iter().enumerate() {
        if p.vsock == cmdline.channel_port {
            return Err(err(
                format!("config:ports[{i}].vsock"),
                format!("{} is the host channel's port", p.vsock),
            ));
        }
        if p.vsock == 0 || p.vsock == u32::MAX || p.tcp == 0 {
            return Err(err(
                format!("config:ports[{i}]"),
                "port 0 or VMADDR_PORT_ANY",
            ));
        }
        if !vsock_ports.insert(p.vsock) {
            return Err(err(
                format!("config:ports[{i}].vsock"),
                format!("{} is bridged twice", p.vsock),
            ));
        }
    }
    f.gpu
        .validate()
        .map_err(|(field, message)| err(format!("config:gpu.{field}"), message))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const VERITY: &str = "1:sha256:4096:4096:1024:1025:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef:00ff";

    fn cmdline_for(config: &[u8]) -> Cmdline {
        parse_cmdline(&format!(
            "console=ttyS0 bulwark.verity={VERITY} bulwark.config_sha384={}",
            hex::encode(Sha384::digest(config))
        ))
        .unwrap()
    }

    fn good() -> serde_json::Value {
        serde_json::json!({
            "format": "bulwark.init.v1",
            "modules": ["dm_verity"],
            "rootfs": {"disk": "rootfs"},
            "workload": {"argv": ["/bin/app", "--x"], "uid": 1000, "gid": 1000, "env": {"A": "1"}},
            "ports": [{"vsock": 8080, "tcp": 8080}]
        })
    }

    fn parse(v: &serde_json::Value) -> Result<Config, ConfigError> {
        let bytes = serde_json::to_vec(v).unwrap();
        parse_config(cmdline_for(&bytes), &bytes)
    }

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = parse(&good()).unwrap();
        assert_eq!(c.file.rootfs.fs, "ext4");
        assert_eq!(c.file.rootfs.verify, VerifyMode::Full);
        assert_eq!(c.file.workload.cwd, "/");
        assert_eq!(c.cmdline.channel_port, 1024);
        assert_eq!(c.verity.data_blocks, 1024);
        assert_eq!(c.file.ports[0].tls, PortTls::Attested);
        assert!(c.file.scratch.is_none());
        assert!(c.file.devices.is_empty());
        let mut v = good();
        v["devices"] = serde_json::json!([{"id": "1af4:1110"}]);
        assert_eq!(parse(&v).unwrap().file.devices[0].count, 1);
        let mut v = good();
        v["scratch"] = serde_json::json!({});
        assert_eq!(parse(&v).unwrap().file.scratch.unwrap().disk, "scratch");
    }

    #[test]
    fn a_port_is_attested_tls_unless_it_says_none() {
        let mut v = good();
        v["ports"][0]["tls"] = "none".into();
        assert_eq!(parse(&v).unwrap().file.ports[0].tls, PortTls::None);
        v["ports"][0]["tls"] = "attested".into();
        assert_eq!(parse(&v).unwrap().file.ports[0].tls, PortTls::Attested);
        v["ports"][0]["tls"] = "plain".into();
        let err = parse(&v).unwrap_err().to_string();
        assert!(err.contains("unknown variant `plain`"), "{err}");
    }

    type Edit = Box<dyn Fn(&mut serde_json::Value)>;

    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["surprise"] = 1.into()),
                "unknown field `surprise`",
            ),
            (
                Box::new(|v| v["workload"]["uid"] = "x".into()),
                "invalid type",
            ),
            (
                Box::new(|v| v["workload"]["uid"] = 0.into()),
                "config:workload.uid",
            ),
            (
                Box::new(|v| v["workload"]["argv"] = serde_json::json!([])),
                "config:workload.argv",
            ),
            (
                Box::new(|v| v["workload"]["argv"] = serde_json::json!(["app"])),
                "config:workload.argv[0]",
            ),
            (
                Box::new(|v| v["workload"]["cwd"] = "/a/../b".into()),
                "config:workload.cwd",
            ),
            (Box::new(|v| v["format"] = "v0".into()), "config:format"),
            (
                Box::new(|v| v["devices"] = serde_json::json!([{"id": "10DE:2330"}])),
                "config:devices[0].id",
            ),
            (
                Box::new(|v| v["devices"] = serde_json::json!([{"id": "10de-2330"}])),
                "config:devices[0].id",
            ),
            (
                Box::new(|v| v["devices"] = serde_json::json!([{"id": "10de:2330", "count": 0}])),
                "config:devices[0].count",
            ),
            (
                Box::new(|v| {
                    v["devices"] = serde_json::json!([{"id": "10de:2330"}, {"id": "10de:2330"}])
                }),
                "config:devices[1].id",
            ),
            (
                Box::new(|v| v["scratch"] = serde_json::json!({"disk": "rootfs"})),
                "config:scratch.disk",
            ),
            (
                Box::new(|v| v["scratch"] = serde_json::json!({"disk": ""})),
                "config:scratch.disk",
            ),
            (
                Box::new(|v| v["scratch"] = serde_json::json!({"size": 1})),
                "unknown field `size`",
            ),
            (
                Box::new(|v| v["rootfs"]["fs"] = "xfs".into()),
                "config:rootfs.fs",
            ),
            (
                Box::new(|v| v["rootfs"]["root_hash"] = "00".into()),
                "contradicts",
            ),
            (
                Box::new(|v| v["ports"] = serde_json::json!([{"vsock": 1024, "tcp": 1}])),
                "host channel",
            ),
            (
                Box::new(|v| {
                    v["ports"] = serde_json::json!([{"vsock": 5, "tcp": 1}, {"vsock": 5, "tcp": 2}])
                }),
                "bridged twice",
            ),
            (
                Box::new(|v| v["mounts"] = serde_json::json!([{"target": "/tmp", "tmpfs_mib": 1}])),
                "config:mounts[0].target",
            ),
            (
                Box::new(|v| {
                    v["mounts"] = serde_json::json!([{"target": "//proc/sys/", "tmpfs_mib": 1}])
                }),
                "config:mounts[0].target",
            ),
            (
                Box::new(
                    |v| v["mounts"] = serde_json::json!([{"target": "/a", "tmpfs_mib": 1}, {"target": "/a/", "tmpfs_mib": 1}]),
                ),
                "mounted twice",
            ),
            (
                Box::new(|v| {
                    v["ports"] = serde_json::json!((1..=257)
                        .map(|p| serde_json::json!({"vsock": 2000 + p, "tcp": 1}))
                        .collect::<Vec<_>>())
                }),
                "config:ports",
            ),
            (
                Box::new(|v| v["workload"]["max_processes"] = 0.into()),
                "config:workload.max_processes",
            ),
            (
                Box::new(|v| v["modules"] = serde_json::json!(["../x"])),
                "config:modules[0]",
            ),
            (
                Box::new(|v| v["workload"]["env"] = serde_json::json!({"A=B": "1"})),
                "config:workload.env.A=B",
            ),
        ];
        for (edit, want) in cases {
            let mut v = good();
            edit(&mut v);
            let e = parse(&v).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }

    #[test]
    fn the_config_must_match_the_measured_hash() {
        let bytes = serde_json::to_vec(&good()).unwrap();
        let mut other = bytes.clone();
        other.push(b' ');
        let e = parse_config(cmdline_for(&bytes), &other).unwrap_err();
        assert_eq!(e.field, "config");
        assert!(e.message.contains("does not match"), "{e}");
        let no_hash = parse_cmdline(&format!("bulwark.verity={VERITY}")).unwrap();
        let e = parse_config(no_hash, &bytes).unwrap_err();
        assert_eq!(e.field, "cmdline:bulwark.config_sha384");
    }

    #[test]
    fn command_line_refusals() {
        for (line, want) in [
            ("bulwark.nope=1", "cmdline:bulwark.nope"),
            (
                "bulwark.channel_port=1 bulwark.channel_port=2",
                "given twice",
            ),
            ("bulwark.channel_port=+5", "cmdline:bulwark.channel_port"),
            ("bulwark.config_sha384=AB", "96 lower-case hex"),
            ("bulwark.verity=2:sha256", "cmdline:bulwark.verity"),
        ] {
            let e = parse_cmdline(line).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
        let c = parse_cmdline("quiet bulwark.channel_port=2000 root=/dev/x").unwrap();
        assert_eq!(c.channel_port, 2000);
    }
}
