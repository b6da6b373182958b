//! The verification time: every certificate, CRL and collateral validity check
//! is evaluated "as of" this instant, never the wall clock directly.

use crate::Error;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// An instant, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct VerificationTime {
    unix_ms: i64,
}

impl VerificationTime {
    pub fn from_unix_ms(unix_ms: i64) -> Self {
        VerificationTime { unix_ms }
    }

    pub fn from_unix_seconds(secs: i64) -> Self {
        VerificationTime {
            unix_ms: secs.saturating_mul(1000),
        }
    }

    /// The wall clock now (the CLI default when `--at` is not given).
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        let ms = now.unix_timestamp_nanos() / 1_000_000;
        VerificationTime {
            unix_ms: i64::try_from(ms).unwrap_or(i64::MAX),
        }
    }

    /// Parse `--at`: RFC 3339 (`2023-09-18T15:03:30Z`) or Unix milliseconds.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse::<i64>()
                .map(Self::from_unix_ms)
                .map_err(|e| Error::Argument(format!("time {text:?}: {e}")));
        }
        parse_rfc3339(text)
            .map(Self::from_unix_ms)
            .map_err(|e| Error::Argument(format!("time {text:?}: {e}")))
    }

    pub fn unix_ms(&self) -> i64 {
        self.unix_ms
    }

    /// Whole seconds since the epoch (floor), the resolution of X.509 times.
    pub fn unix_seconds(&self) -> i64 {
        self.unix_ms.div_euclid(1000)
    }

    pub fn to_rfc3339(&self) -> String {
        format_unix_seconds(self.unix_seconds())
    }
}

/// Parse an RFC 3339 timestamp to Unix milliseconds.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let t = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("not RFC 3339 or Unix milliseconds: {e}"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|e| e.to_string())
}

/// Format Unix seconds as RFC 3339 (UTC); out-of-range values print as numbers.
pub fn format_unix_seconds(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{secs}"))
}
