//! Log sequence numbers: the `X/Y` positions in the WAL that mark how far a sink has
//! delivered durably.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s.split_once('/').ok_or_else(|| format!("invalid LSN \"{s}\""))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| format!("invalid LSN \"{s}\""))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| format!("invalid LSN \"{s}\""))?;
        if hi > 0xFFFF_FFFF || lo > 0xFFFF_FFFF {
            return Err(format!("invalid LSN \"{s}\""));
        }
        Ok(Lsn((hi << 32) | lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_form() {
        for s in ["0/0", "0/16B3748", "1/0", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(s.parse::<Lsn>().unwrap().to_string(), s);
        }
        assert_eq!("0/10".parse::<Lsn>().unwrap(), Lsn(16));
        assert!("10".parse::<Lsn>().is_err());
        assert!("G/0".parse::<Lsn>().is_err());
        assert!("100000000/0".parse::<Lsn>().is_err());
    }
}
