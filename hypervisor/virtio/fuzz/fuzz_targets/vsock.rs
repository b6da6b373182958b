//! Arbitrary guest memory and queue geometry fed to virtio-vsock: the tx
//! queue carries arbitrary packets, the rx queue arbitrary buffers; the
//! device must stay within its buffering bounds.
#![no_main]

#[path = "guest.rs"]
mod guest;

use std::sync::{Arc, Mutex};

use bulwark_virtio::vsock::connection::CONN_BUF_ALLOC;
use bulwark_virtio::vsock::{Vsock, MAX_CONNECTIONS, MAX_CONTROL_PACKETS};
use bulwark_virtio::SharedDevice;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("bulwark-vsock-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("v.sock");
    let _ = std::fs::remove_file(&path);
    // A host listener on port 1024, so guest REQUESTs can succeed.
    let listener_path = dir.join("v.sock_1024");
    let _ = std::fs::remove_file(&listener_path);
    let _listener = std::os::unix::net::UnixListener::bind(&listener_path).ok();
    let dev = Arc::new(Mutex::new(Vsock::new(3, &path).unwrap()));
    let shared: SharedDevice = dev.clone();
    if let Some(g) = guest::bring_up(shared, data) {
        guest::run_queue(&g, 1);
        guest::run_queue(&g, 0);
        guest::run_queue(&g, 2);
    }
    let d = dev.lock().unwrap();
    assert!(d.connection_count() <= MAX_CONNECTIONS);
    assert!(d.buffered_bytes() <= MAX_CONNECTIONS * CONN_BUF_ALLOC as usize);
    assert!(d.queued_control_packets() <= MAX_CONTROL_PACKETS);
});
