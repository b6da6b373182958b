//! The node init's own config, `/etc/bulwark/node-init.json` in the initramfs (part
//! of the measured UKI). Unknown fields are refused: a typo must not silently drop a
//! module or the state partition.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the initramfs holds this config.
pub const CONFIG_PATH: &str = "/etc/bulwark/node-init.json";
/// The partition label (GPT partition name) of the state partition by default.
pub const DEFAULT_STATE_LABEL: &str = "bulwark-state";
/// Where the state partition (or the tmpfs standing in for it) is mounted.
pub const STATE_DIR: &str = "/var/lib/bulwark";

/// Errors reading the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The JSON is malformed or has unknown or mistyped fields.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (with line and column).
        reason: String,
    },
}

/// The whole config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInitConfig {
    /// The node image's version, printed in the healthy marker. The kernel command
    /// line's `bulwark.node_version=N` (`bulwark_node_image::build::VERSION_PARAM`, part of
    /// the UKI's measured `.cmdline`) wins over it.
    #[serde(default)]
    pub version: Option<String>,
    /// The directory of the shipped `.ko` files.
    #[serde(default = "default_module_dir")]
    pub module_dir: PathBuf,
    /// Modules that must load (dependencies are added and ordered): a failure is
    /// fatal (clear error, power-off).
    #[serde(default)]
    pub modules: Vec<String>,
    /// Modules tried after `modules` whose failure is only logged (`kvm_intel` on an
    /// AMD node, `kvm_amd` on an Intel one).
    #[serde(default)]
    pub optional_modules: Vec<String>,
    /// The state partition.
    #[serde(default)]
    pub state: StateConfig,
    /// How bulwarkd is run.
    #[serde(default)]
    pub bulwarkd: BulwarkdConfig,
    /// Seconds between a fatal error on the console and the power-off.
    #[serde(default = "default_fatal_delay")]
    pub fatal_poweroff_delay_secs: u64,
    /// On a trial boot (an update systemd-boot is counting tries for), how long
    /// bulwarkd may take to become healthy before the node reboots so that the boot
    /// loader falls back to the previous slot (health-gated rollback).
    #[serde(default = "default_trial_deadline")]
    pub trial_health_deadline_secs: u64,
    /// Once healthy, print the TPM's sha256 PCRs and the firmware's event log (base64
    /// between markers) on the console, for a verifier that reads the console (the
    /// lab). Off on nodes: the agent serves the quote and the log.
    #[serde(default)]
    pub report_measurements: bool,
    /// The node's network interfaces (IPv4, static): none by default.
    #[serde(default)]
    pub network: Option<NetworkConfig>,
}

/// Static IPv4 configuration of the node's network interfaces, applied after the
/// modules are loaded (the NIC driver is one of them). Every step must succeed: a
/// node that cannot be reached is useless.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The interfaces to configure, in order.
    pub interfaces: Vec<InterfaceConfig>,
    /// The default route's gateway, inside one interface's subnet.
    #[serde(default)]
    pub gateway: Option<Ipv4Gateway>,
    /// How long to wait, from the start of the network step, for the named
    /// interfaces to appear in `/sys/class/net` (drivers probe asynchronously).
    #[serde(default = "default_network_wait")]
    pub wait_secs: u64,
}

/// One interface: its kernel name and its IPv4 address with prefix length.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// The kernel's name for it (`eth0`, `ens3`, ...).
    pub name: String,
    /// `A.B.C.D/N`.
    pub address: Ipv4Cidr,
}

/// An IPv4 address with a prefix length (`10.0.2.15/24`): a host address of its
/// subnet (not the network or broadcast address when the prefix is below 31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, 1 to 32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The netmask (`/24`: 255.255.255.0).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0),
        )
    }

    /// The subnet's network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.netmask()))
    }

    /// Whether `ip` is in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.netmask()) == u32::from(self.network())
    }

    /// Whether `ip` is the subnet's network or broadcast address (which no host can
    /// have when the prefix is below 31).
    fn is_edge(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask());
        let host = u32::from(ip) & !mask;
        self.prefix < 31 && (host == 0 || host == !mask)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses an IPv4 address, saying "IPv4 only" for anything IPv6.
fn parse_ipv4(what: &str, text: &str) -> Result<Ipv4Addr, String> {
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(a),
        Ok(IpAddr::V6(_)) => Err(format!(
            "{what} {text:?} is an IPv6 address: the node's network configuration is IPv4 only"
        )),
        Err(_) => Err(format!("{what} {text:?} is not an IPv4 address")),
    }
}

/// Whether `a` can be a host's unicast address.
fn unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let what = "network interface address";
        let Some((addr, prefix)) = text.split_once('/') else {
            if text.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6()) {
                parse_ipv4(what, &text)?;
            }
            return Err(format!(
                "{what} {text:?} is not A.B.C.D/N (an IPv4 address and a prefix length)"
            ));
        };
        let addr = parse_ipv4(what, addr)?;
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| (1..=32).contains(p) && !prefix.starts_with('+'))
            .ok_or_else(|| format!("{what} {text:?}: the prefix length must be 1 to 32"))?;
        let cidr = Ipv4Cidr { addr, prefix };
        if !unicast(addr) {
            return Err(format!("{what} {text:?} is not a unicast host address"));
        }
        if cidr.is_edge(addr) {
            return Err(format!(
                "{what} {text:?} is its subnet's network or broadcast address, not a host's"
            ));
        }
        Ok(cidr)
    }
}

/// The default route's gateway: an IPv4 unicast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Ipv4Gateway(pub Ipv4Addr);

impl TryFrom<String> for Ipv4Gateway {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let addr = parse_ipv4("network.gateway", &text)?;
        if !unicast(addr) {
            return Err(format!("network.gateway {text:?} is not a unicast address"));
        }
        Ok(Ipv4Gateway(addr))
    }
}

impl NetworkConfig {
    /// The interface whose subnet holds the gateway (the first, if several do).
    pub fn gateway_interface(&self) -> Option<(&InterfaceConfig, Ipv4Addr)> {
        let gw = self.gateway?.0;
        self.interfaces
            .iter()
            .find(|i| i.address.contains(gw))
            .map(|i| (i, gw))
    }

    fn check(&self) -> Result<(), String> {
        if self.interfaces.is_empty() {
            return Err("network.interfaces is empty (leave out `network` for none)".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for i in &self.interfaces {
            if !valid_interface_name(&i.name) {
                return Err(format!(
                    "network interface name {:?} is not a kernel interface name (1 to 15 characters, no '/', ':' or whitespace)",
                    i.name
                ));
            }
            if i.name == "lo" {
                return Err(
                    "network interface \"lo\": loopback is set up by itself, leave it out".into(),
                );
            }
            if !names.insert(i.name.as_str()) {
                return Err(format!("network interface {:?} is listed twice", i.name));
            }
        }
        if let Some(Ipv4Gateway(gw)) = self.gateway {
            let Some((iface, _)) = self.gateway_interface() else {
                let subnets: Vec<String> = self
                    .interfaces
                    .iter()
                    .map(|i| format!("{}/{} ({})", i.address.network(), i.address.prefix, i.name))
                    .collect();
                return Err(format!(
                    "network.gateway {gw} is in none of the interfaces' subnets: {}",
                    subnets.join(", ")
                ));
            };
            if iface.address.addr == gw {
                return Err(format!(
                    "network.gateway {gw} is {}'s own address",
                    iface.name
                ));
            }
            if iface.address.is_edge(gw) {
                return Err(format!(
                    "network.gateway {gw} is the network or broadcast address of {}",
                    iface.address
                ));
            }
        }
        Ok(())
    }
}

/// A Linux interface name: 1 to 15 bytes (IFNAMSIZ - 1), not `.` or `..`, no `/`,
/// `:` (alias labels), NUL or whitespace.
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

/// Where the state partition is: by GPT partition label (the kernel's `PARTNAME`),
/// or by device path. Neither found: a tmpfs, and the console says loudly that state
/// does not persist.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// GPT partition name to look for in `/sys/class/block/*/uevent`.
    #[serde(default = "default_state_label")]
    pub partition_label: Option<String>,
    /// A device path, tried before the label (e.g. `/dev/nvme0n1p3`).
    #[serde(default)]
    pub device: Option<PathBuf>,
    /// Its filesystem.
    #[serde(default = "default_state_fstype")]
    pub fstype: String,
    /// How long to wait for the device to appear (storage drivers probe
    /// asynchronously).
    #[serde(default = "default_state_wait")]
    pub wait_secs: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            partition_label: default_state_label(),
            device: None,
            fstype: default_state_fstype(),
            wait_secs: default_state_wait(),
        }
    }
}

/// bulwarkd's command line and supervision.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulwarkdConfig {
    /// The executable.
    #[serde(default = "default_bulwarkd_bin")]
    pub bin: PathBuf,
    /// Its config (`--config`).
    #[serde(default = "default_bulwarkd_config")]
    pub config: PathBuf,
    /// Its API socket (`--api-sock`), polled for `GET /health`.
    #[serde(default = "default_api_sock")]
    pub api_sock: PathBuf,
    /// Environment variables set for it (`BULWARK_LOG`, ...).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Seconds a fresh bulwarkd has to answer `/health` before it is restarted.
    #[serde(default = "default_health_timeout")]
    pub health_timeout_secs: u64,
    /// First restart delay in milliseconds; doubled after each quick exit.
    #[serde(default = "default_backoff_ms")]
    pub restart_backoff_ms: u64,
    /// The largest restart delay in milliseconds.
    #[serde(default = "default_backoff_max_ms")]
    pub restart_backoff_max_ms: u64,
}

impl Default for BulwarkdConfig {
    fn default() -> Self {
        BulwarkdConfig {
            bin: default_bulwarkd_bin(),
            config: default_bulwarkd_config(),
            api_sock: default_api_sock(),
            env: Default::default(),
            health_timeout_secs: default_health_timeout(),
            restart_backoff_ms: default_backoff_ms(),
            restart_backoff_max_ms: default_backoff_max_ms(),
        }
    }
}

impl BulwarkdConfig {
    /// The delay before restart number `restarts` (0 = the first restart).
    pub fn backoff(&self, restarts: u32) -> Duration {
        let factor = 1u64.checked_shl(restarts.min(32)).unwrap_or(u64::MAX);
        Duration::from_millis(
            self.restart_backoff_ms
                .saturating_mul(factor)
                .min(self.restart_backoff_max_ms),
        )
    }
}

fn default_network_wait() -> u64 {
    10
}
fn default_module_dir() -> PathBuf {
    PathBuf::from(bulwark_kmod::DEFAULT_MODULE_DIR)
}
fn default_trial_deadline() -> u64 {
    300
}

fn default_fatal_delay() -> u64 {
    30
}
fn default_state_label() -> Option<String> {
    Some(DEFAULT_STATE_LABEL.to_owned())
}
fn default_state_fstype() -> String {
    "ext4".to_owned()
}
fn default_state_wait() -> u64 {
    5
}
fn default_bulwarkd_bin() -> PathBuf {
    PathBuf::from("/bin/bulwarkd")
}
fn default_bulwarkd_config() -> PathBuf {
    PathBuf::from("/etc/bulwark/bulwarkd.json")
}
fn default_api_sock() -> PathBuf {
    PathBuf::from("/run/bulwark/bulwarkd.sock")
}
fn default_health_timeout() -> u64 {
    120
}
fn default_backoff_ms() -> u64 {
    1000
}
fn default_backoff_max_ms() -> u64 {
    30_000
}

impl NodeInitConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<NodeInitConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| ConfigError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses and checks a config's text.
    pub fn parse(text: &str) -> Result<NodeInitConfig, String> {
        let config: NodeInitConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for name in config.modules.iter().chain(&config.optional_modules) {
            let ok = !name.is_empty()
                && name.len() <= 55
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(format!("{name:?} is not a kernel module name"));
            }
        }
        let b = &config.bulwarkd;
        for (what, path) in [
            ("bulwarkd.bin", &b.bin),
            ("bulwarkd.config", &b.config),
            ("bulwarkd.api_sock", &b.api_sock),
            ("module_dir", &config.module_dir),
        ] {
            if !path.is_absolute() {
                return Err(format!(
                    "{what} must be an absolute path, not {}",
                    path.display()
                ));
            }
        }
        if b.restart_backoff_ms == 0 || b.restart_backoff_max_ms < b.restart_backoff_ms {
            return Err(
                "bulwarkd.restart_backoff_ms must be > 0 and <= bulwarkd.restart_backoff_max_ms"
                    .into(),
            );
        }
        if b.health_timeout_secs == 0 {
            return Err("bulwarkd.health_timeout_secs must be > 0".into());
        }
        if let Some(device) = &config.state.device {
            if !device.starts_with("/dev/") {
                return Err(format!(
                    "state.device must be under /dev, not {}",
                    device.display()
                ));
            }
        }
        if let Some(label) = &config.state.partition_label {
            // GPT partition names are 36 UTF-16 code units.
            if label.is_empty() || label.encode_utf16().count() > 36 {
                return Err(format!(
                    "state.partition_label {label:?} is not a GPT partition name"
                ));
            }
        }
        if config.version.as_deref().is_some_and(|v| !valid_version(v)) {
            return Err(format!("version {:?} is not a version", config.version));
        }
        if let Some(network) = &config.network {
            network.check()?;
        }
        Ok(config)
    }
}

/// A version for the marker line: digits, letters, `.`, `-`, `+`, `_`; 1 to 64.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'))
}

/// The version on the kernel command line (`bulwark.node_version=N`, as
/// `bulwark-node-image build` writes it), if any and valid.
pub fn version_from_cmdline(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| {
            w.strip_prefix(bulwark_node_image::build::VERSION_PARAM)
                .and_then(|v| v.strip_prefix('='))
        })
        .next_back()
        .filter(|v| valid_version(v))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_object_gives_the_defaults() {
        let c = NodeInitConfig::parse("{}").unwrap();
        assert_eq!(c.module_dir, Path::new("/lib/modules"));
        assert!(c.modules.is_empty());
        assert_eq!(c.state.partition_label.as_deref(), Some("bulwark-state"));
        assert_eq!(c.state.fstype, "ext4");
        assert_eq!(c.bulwarkd.bin, Path::new("/bin/bulwarkd"));
        assert_eq!(c.bulwarkd.config, Path::new("/etc/bulwark/bulwarkd.json"));
        assert_eq!(c.bulwarkd.api_sock, Path::new("/run/bulwark/bulwarkd.sock"));
        assert_eq!(c.fatal_poweroff_delay_secs, 30);
        assert!(!c.report_measurements);
    }

    #[test]
    fn a_full_config_is_read() {
        let c = NodeInitConfig::parse(
            r#"{"version": "7", "modules": ["kvm", "vfio-pci"], "optional_modules": ["kvm_intel"],
                "state": {"partition_label": null, "device": "/dev/nvme0n1p3", "fstype": "xfs", "wait_secs": 2},
                "bulwarkd": {"env": {"BULWARK_LOG": "info"}, "health_timeout_secs": 10,
                             "restart_backoff_ms": 100, "restart_backoff_max_ms": 1000},
                "fatal_poweroff_delay_secs": 3, "report_measurements": true}"#,
        )
        .unwrap();
        assert_eq!(c.version.as_deref(), Some("7"));
        assert_eq!(c.modules, ["kvm", "vfio-pci"]);
        assert_eq!(c.optional_modules, ["kvm_intel"]);
        assert_eq!(c.state.partition_label, None);
        assert_eq!(c.state.device.as_deref(), Some(Path::new("/dev/nvme0n1p3")));
        assert_eq!(c.bulwarkd.env["BULWARK_LOG"], "info");
        assert_eq!(c.fatal_poweroff_delay_secs, 3);
        assert!(c.report_measurements);
        // 100, 200, 400, 800, then the 1000 ms cap.
        let delays: Vec<u128> = (0..6).map(|i| c.bulwarkd.backoff(i).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(c.bulwarkd.backoff(u32::MAX).as_millis(), 1000);
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        for (text, needle) in [
            (
                r#"{"modules": ["kvm"], "modlues": []}"#,
                "unknown field `modlues`",
            ),
            (
                r#"{"bulwarkd": {"bin": "bulwarkd"}}"#,
                "bulwarkd.bin must be an absolute path",
            ),
            (r#"{"modules": ["kvm amd"]}"#, "not a kernel module name"),
            (r#"{"modules": "kvm"}"#, "invalid type"),
            (
                r#"{"state": {"device": "/etc/passwd"}}"#,
                "state.device must be under /dev",
            ),
            (
                r#"{"state": {"partition_label": ""}}"#,
                "not a GPT partition name",
            ),
            (
                r#"{"bulwarkd": {"restart_backoff_ms": 0}}"#,
                "restart_backoff_ms",
            ),
            (
                r#"{"bulwarkd": {"health_timeout_secs": 0}}"#,
                "health_timeout_secs",
            ),
            (r#"{"version": "1 2"}"#, "is not a version"),
            ("{", "EOF"),
            ("", "EOF"),
        ] {
            let err = NodeInitConfig::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn a_network_section_is_read() {
        let c = NodeInitConfig::parse(
            r#"{"modules": ["virtio_net"],
                "network": {"interfaces": [{"name": "eth0", "address": "10.0.2.15/24"},
                                           {"name": "eth1", "address": "192.168.7.9/32"}],
                            "gateway": "10.0.2.2", "wait_secs": 3}}"#,
        )
        .unwrap();
        let n = c.network.unwrap();
        assert_eq!(n.wait_secs, 3);
        assert_eq!(n.interfaces[0].name, "eth0");
        let a = n.interfaces[0].address;
        assert_eq!(a.addr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(a.prefix, 24);
        assert_eq!(a.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(a.network(), Ipv4Addr::new(10, 0, 2, 0));
        assert_eq!(a.to_string(), "10.0.2.15/24");
        assert_eq!(n.interfaces[1].address.netmask(), Ipv4Addr::BROADCAST);
        assert_eq!(n.gateway, Some(Ipv4Gateway(Ipv4Addr::new(10, 0, 2, 2))));
        let (iface, gw) = n.gateway_interface().unwrap();
        assert_eq!(
            (iface.name.as_str(), gw),
            ("eth0", Ipv4Addr::new(10, 0, 2, 2))
        );
        // Defaults: no network at all; a section without a gateway waits 10 s.
        assert_eq!(NodeInitConfig::parse("{}").unwrap().network, None);
        let n = NodeInitConfig::parse(
            r#"{"network": {"interfaces": [{"name": "ens3", "address": "172.16.0.1/12"}]}}"#,
        )
        .unwrap()
        .network
        .unwrap();
        assert_eq!((n.wait_secs, n.gateway), (10, None));
        assert_eq!(
            n.interfaces[0].address.netmask(),
            Ipv4Addr::new(255, 240, 0, 0)
        );
    }

    #[test]
    fn bad_network_sections_are_refused_with_the_reason() {
        let net = |body: &str| format!(r#"{{"network": {body}}}"#);
        let one = |address: &str| {
            net(&format!(
                r#"{{"interfaces": [{{"name": "eth0", "address": "{address}"}}]}}"#
            ))
        };
        let gw = |gateway: &str| {
            net(&format!(
                r#"{{"interfaces": [{{"name": "eth0", "address": "10.0.2.15/24"}},
                                     {{"name": "eth1", "address": "10.1.0.5/16"}}],
                    "gateway": "{gateway}"}}"#
            ))
        };
        for (text, needle) in [
            (one("10.0.2.15"), "is not A.B.C.D/N"),
            (one("10.0.2.15/33"), "prefix length must be 1 to 32"),
            (one("10.0.2.15/0"), "prefix length must be 1 to 32"),
            (one("10.0.2.15/+8"), "prefix length must be 1 to 32"),
            (one("10.0.2/24"), "is not an IPv4 address"),
            (one("10.0.2.256/24"), "is not an IPv4 address"),
            (one("eth0/24"), "is not an IPv4 address"),
            (one("fd00::15/64"), "IPv4 only"),
            (one("fd00::15"), "IPv4 only"),
            (one("10.0.2.0/24"), "network or broadcast address"),
            (one("10.0.2.255/24"), "network or broadcast address"),
            (one("127.0.0.2/8"), "not a unicast host address"),
            (one("224.0.0.1/4"), "not a unicast host address"),
            (
                gw("10.2.0.1"),
                "in none of the interfaces' subnets: 10.0.2.0/24 (eth0), 10.1.0.0/16 (eth1)",
            ),
            (gw("fe80::1"), "IPv4 only"),
            (gw("10.0.2.15"), "eth0's own address"),
            (
                gw("10.1.255.255"),
                "network or broadcast address of 10.1.0.5/16",
            ),
            (gw("gateway"), "is not an IPv4 address"),
            (net(r#"{"interfaces": []}"#), "network.interfaces is empty"),
            (
                net(r#"{"gateway": "10.0.2.2"}"#),
                "missing field `interfaces`",
            ),
            (
                net(
                    r#"{"interfaces": [{"name": "eth0", "address": "10.0.2.15/24", "mtu": 1500}]}"#,
                ),
                "unknown field `mtu`",
            ),
            (
                net(r#"{"interfaces": [{"name": "eth0", "address": "10.0.2.15/24"}], "dns": []}"#),
                "unknown field `dns`",
            ),
            (
                net(r#"{"interfaces": [{"name": "eth0:1", "address": "10.0.2.15/24"}]}"#),
                "not a kernel interface name",
            ),
            (
                net(r#"{"interfaces": [{"name": "a-very-long-name", "address": "10.0.2.15/24"}]}"#),
                "not a kernel interface name",
            ),
            (
                net(r#"{"interfaces": [{"name": "lo", "address": "10.0.2.15/24"}]}"#),
                "loopback",
            ),
            (
                net(
                    r#"{"interfaces": [{"name": "eth0", "address": "10.0.2.15/24"},
                                       {"name": "eth0", "address": "10.0.3.15/24"}]}"#,
                ),
                "listed twice",
            ),
        ] {
            let err = NodeInitConfig::parse(&text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = NodeInitConfig::load(Path::new("/nonexistent/node-init.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/node-init.json"), "{err}");
    }

    #[test]
    fn the_command_line_version_is_found_and_checked() {
        assert_eq!(
            version_from_cmdline("console=ttyS0 bulwark.node_version=12 quiet\n").as_deref(),
            Some("12")
        );
        assert_eq!(
            version_from_cmdline("bulwark.node_version=1 bulwark.node_version=2").as_deref(),
            Some("2")
        );
        assert_eq!(version_from_cmdline("console=ttyS0"), None);
        assert_eq!(version_from_cmdline("bulwark.node_version=a;b"), None);
        assert_eq!(version_from_cmdline("bulwark.node_version="), None);
    }
}
