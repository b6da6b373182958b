//! The node init's own config, `/etc/bulwark/node-init.json` in the initramfs (part
//! of the measured UKI). Unknown fields are refused: a typo must not silently drop a
//! module or the state partition.

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
