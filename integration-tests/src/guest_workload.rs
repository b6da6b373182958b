//! What the `vmm-guest-init` scenario's workload (`lab-workload`, inside L2 under
//! `bulwark-init`) writes, and the data its echo servers move, so that the host side
//! (`lab-guest-host`, in L1) checks them byte for byte.

/// The workload's whole stdout in `serve` mode: a text line, then binary bytes (every
/// byte value, so nothing on the way may treat it as text), long enough to need many
/// 16 KiB `Output` chunks.
pub fn expected_stdout() -> Vec<u8> {
    let mut v = b"bulwark workload: hello from the verified root\n".to_vec();
    v.extend((0..200_000u32).map(|i| (i.wrapping_mul(7) % 251) as u8));
    v.extend(b"\nbulwark workload: end of stdout\n");
    v
}

/// The first line of the workload's stderr in `serve` mode; an identity line
/// (`WORKLOAD-ID ...`) follows it.
pub const STDERR_FIRST_LINE: &str = "bulwark workload: this line is on stderr\n";

/// `len` pseudo-random bytes (xorshift), the same on both sides of an echo.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_output_has_every_byte_value_and_spans_many_chunks() {
        let out = expected_stdout();
        assert!(out.len() > 10 * 16 * 1024);
        let mut seen = [false; 256];
        out.iter().for_each(|b| seen[*b as usize] = true);
        assert!(seen.iter().filter(|s| **s).count() >= 251);
        assert_ne!(pattern(64, 1), pattern(64, 2));
        assert_eq!(pattern(64, 1), pattern(64, 1));
    }
}
