//! The one raw VFIO ioctl bulwarkd needs beyond `vfio-ioctls` (whose `reset` hides
//! failures): `VFIO_DEVICE_RESET` with its result.

use std::os::fd::AsRawFd;

/// `VFIO_DEVICE_RESET` = `_IO(VFIO_TYPE ';', VFIO_BASE 100 + 11)`.
const VFIO_DEVICE_RESET: libc::c_ulong = 0x3b6f;

/// Resets a VFIO device. `Ok(false)`: the device offers no reset (`EINVAL`/`ENOTTY`).
pub fn device_reset(device: &impl AsRawFd) -> std::io::Result<bool> {
    // SAFETY: VFIO_DEVICE_RESET takes no argument and touches no memory of this
    // process; on an fd that is not a VFIO device it fails with ENOTTY.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_RESET as _) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOTTY) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_non_vfio_fd_reports_no_reset_rather_than_success() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(!super::device_reset(&f).unwrap());
    }
}
