//! Log sequence numbers: PostgreSQL's WAL positions, printed `X/Y` as the server prints them.

use std::fmt;
use std::str::FromStr;

/// A WAL position. Ordered; `Lsn(0)` is "none / start of the slot".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text was not an `X/Y` hexadecimal WAL position.
#[derive(Debug, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers as X/Y")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_server_format() {
        let lsn: Lsn = "0/4DC4880".parse().unwrap();
        assert_eq!(lsn, Lsn(0x4DC4880));
        assert_eq!(lsn.to_string(), "0/4DC4880");
        assert_eq!(Lsn(0x1_0000_0001).to_string(), "1/1");
        assert!("zz".parse::<Lsn>().is_err());
    }
}
