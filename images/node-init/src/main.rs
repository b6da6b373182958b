//! The node's `/init`.

use bulwark_node_init::{bless::EspBlesser, node};

fn main() {
    let outcome = std::panic::catch_unwind(|| -> std::convert::Infallible {
        node::run(&EspBlesser::default())
    });
    // `run` never returns; a panic ends here instead of panicking the kernel.
    let what = match outcome {
        Ok(never) => match never {},
        Err(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into()),
    };
    node::console(&format!(
        "FATAL: internal error: {what}; powering off in 30 s"
    ));
    std::thread::sleep(std::time::Duration::from_secs(30));
    node::power_off("internal error", &[])
}
