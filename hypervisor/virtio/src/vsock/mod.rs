//! virtio-vsock.
