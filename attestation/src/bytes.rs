//! Bounds-checked little-endian reader for the fixed binary layouts of
//! attestation reports and quotes. Every read past the end is a parse error.

use crate::Error;

/// A cursor over a byte slice; `what` names the structure in error messages.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8], what: &'static str) -> Self {
        Reader { data, pos: 0, what }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.remaining() < n {
            return Err(Error::Parse(format!(
                "{} truncated: need {} bytes at offset {}, {} left",
                self.what,
                n,
                self.pos,
                self.remaining()
            )));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn u24(&mut self) -> Result<u32, Error> {
        let b = self.array::<3>()?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }
}

/// Decode hex text (whitespace ignored, optional `0x` prefix).
pub fn decode_hex_text(text: &[u8], what: &str) -> Result<Vec<u8>, Error> {
    let cleaned: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let body = cleaned
        .strip_prefix(b"0x")
        .or_else(|| cleaned.strip_prefix(b"0X"))
        .unwrap_or(&cleaned);
    hex::decode(body).map_err(|e| Error::Parse(format!("{what}: invalid hex: {e}")))
}

/// Parse a hex argument such as an expected measurement.
pub fn parse_hex_arg(text: &str, what: &str) -> Result<Vec<u8>, Error> {
    decode_hex_text(text.as_bytes(), what).map_err(|e| match e {
        Error::Parse(m) => Error::Argument(m),
        other => other,
    })
}

/// Parse an `N=HEX` argument (an index and an expected value).
pub fn parse_indexed_hex_arg(arg: &str, flag: &str) -> Result<(u64, Vec<u8>), Error> {
    let (n, h) = arg
        .split_once('=')
        .ok_or_else(|| Error::Argument(format!("{flag} {arg:?}: expected N=HEX")))?;
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|_| Error::Argument(format!("{flag} {arg:?}: bad index")))?;
    Ok((n, parse_hex_arg(h, flag)?))
}
