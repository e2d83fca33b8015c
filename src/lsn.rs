//! Log sequence numbers: PostgreSQL's WAL positions, printed `X/Y` as the server prints them.

use std::fmt;
use std::str::FromStr;

/// A WAL position. Ordered; `Lsn(0)` is "none / start of the slot".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl Lsn {
    /// The `X/Y` text, without the formatting machinery (once per event on the hot path).
    pub fn text(self) -> String {
        let mut out = String::with_capacity(17);
        push_hex(&mut out, self.0 >> 32, 1);
        out.push('/');
        push_hex(&mut out, self.0 & 0xFFFF_FFFF, 1);
        out
    }
}

/// Appends `value` in upper-case hexadecimal, zero-padded to at least `width` digits.
pub fn push_hex(out: &mut String, value: u64, width: usize) {
    let digits = (16 - value.leading_zeros() as usize / 4).max(width.clamp(1, 16));
    for i in (0..digits).rev() {
        let nibble = (value >> (i * 4)) & 0xF;
        out.push(char::from(b"0123456789ABCDEF"[nibble as usize]));
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

    #[test]
    fn text_and_hex_agree_with_the_formatter() {
        for v in [
            0,
            1,
            0xF,
            0x10,
            0x4DC4880,
            0x1_0000_0001,
            u64::MAX,
            0xABC_0000_0000,
        ] {
            assert_eq!(Lsn(v).text(), Lsn(v).to_string());
            for width in [0, 1, 16] {
                let mut out = String::new();
                push_hex(&mut out, v, width);
                assert_eq!(out, format!("{v:0width$X}"), "{v:x} width {width}");
            }
        }
    }
}
