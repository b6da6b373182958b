//! The node's network step (docs/node-image.md, boot step 5): after the modules
//! (the NIC driver among them), wait for each configured interface to appear, give
//! it its IPv4 address, set it up, then add the default route. Any failure is an
//! error the boot treats as fatal: a node that cannot be reached is useless.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::NetworkConfig;
use crate::net_sys;

/// Where the kernel lists network interfaces.
pub const SYS_CLASS_NET: &str = "/sys/class/net";

/// Sets `lo` up (the kernel then gives it 127.0.0.1 and ::1).
pub fn loopback_up() -> std::io::Result<()> {
    net_sys::set_up("lo")
}

/// The interfaces present in `sys_class_net`, sorted (for error messages).
fn present(sys_class_net: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_net)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits until every interface of `config` is in `sys_class_net`, until
/// `config.wait_secs` after the call.
pub fn wait_for_interfaces(config: &NetworkConfig, sys_class_net: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(config.wait_secs);
    for iface in &config.interfaces {
        while !sys_class_net.join(&iface.name).exists() {
            if Instant::now() >= deadline {
                let names = present(sys_class_net);
                return Err(format!(
                    "network: interface {} did not appear within {} s (present: {}; is its driver in `modules`?)",
                    iface.name,
                    config.wait_secs,
                    if names.is_empty() { "none".into() } else { names.join(", ") }
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Configures the interfaces and the default route, calling `say` with one line per
/// interface (`network: eth0 10.0.2.15/24 up`) and one for the route.
pub fn configure(config: &NetworkConfig, say: &mut dyn FnMut(&str)) -> Result<(), String> {
    wait_for_interfaces(config, Path::new(SYS_CLASS_NET))?;
    for iface in &config.interfaces {
        let a = iface.address;
        net_sys::set_ipv4(&iface.name, a.addr, a.netmask())
            .map_err(|e| format!("network: setting {a} on {}: {e}", iface.name))?;
        net_sys::set_up(&iface.name)
            .map_err(|e| format!("network: setting {} up: {e}", iface.name))?;
        say(&format!("network: {} {a} up", iface.name));
    }
    if let Some((iface, gw)) = config.gateway_interface() {
        net_sys::add_default_route(gw, &iface.name).map_err(|e| {
            format!(
                "network: adding the default route via {gw} ({}): {e}",
                iface.name
            )
        })?;
        say(&format!("network: default route via {gw} ({})", iface.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeInitConfig;

    fn network(json: &str) -> NetworkConfig {
        NodeInitConfig::parse(json).unwrap().network.unwrap()
    }

    #[test]
    fn a_missing_interface_is_an_error_naming_it_and_the_present_ones() {
        let dir = crate::root::tests::TempDir::new("net");
        std::fs::create_dir(dir.path().join("lo")).unwrap();
        std::fs::create_dir(dir.path().join("eth0")).unwrap();
        let c = network(
            r#"{"network": {"interfaces": [{"name": "eth0", "address": "10.0.2.15/24"},
                                           {"name": "eth1", "address": "10.0.3.15/24"}],
                            "wait_secs": 0}}"#,
        );
        let err = wait_for_interfaces(&c, dir.path()).unwrap_err();
        assert_eq!(
            err,
            "network: interface eth1 did not appear within 0 s (present: eth0, lo; is its driver in `modules`?)"
        );
        // One that appears while waiting is found.
        let c = network(
            r#"{"network": {"interfaces": [{"name": "eth0", "address": "10.0.2.15/24"},
                                           {"name": "eth1", "address": "10.0.3.15/24"}],
                            "wait_secs": 5}}"#,
        );
        let later = dir.path().join("eth1");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::fs::create_dir(later).unwrap();
        });
        wait_for_interfaces(&c, dir.path()).unwrap();
        t.join().unwrap();
    }
}
