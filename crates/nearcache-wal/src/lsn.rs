//! A position in the WAL, and the two ways it is printed.

use std::fmt;

/// A position in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Lsn(pub(crate) u64);

impl Lsn {
    /// As Postgres prints it, written into `buf` rather than allocated.
    /// Once per applied commit, so by hand rather than through `fmt`.
    pub(crate) fn text(self, buf: &mut [u8; 17]) -> &str {
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let mut len = 0;
        for (i, half) in [self.0 >> 32, self.0 & 0xFFFF_FFFF].into_iter().enumerate() {
            if i == 1 {
                buf[len] = b'/';
                len += 1;
            }
            // At least one digit, no leading zeros, as `{:X}` prints.
            let digits = (64 - half.leading_zeros() as usize).div_ceil(4).max(1);
            for d in (0..digits).rev() {
                buf[len] = DIGITS[usize::try_from((half >> (4 * d)) & 0xF).unwrap_or(0)];
                len += 1;
            }
        }
        std::str::from_utf8(&buf[..len]).expect("hexadecimal digits and a slash")
    }
}

impl fmt::Display for Lsn {
    /// As Postgres prints one: `16/B374D848`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_print_as_postgres_prints_them() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        let mut buf = [0; 17];
        assert_eq!(Lsn(u64::MAX).text(&mut buf), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn(0x16_B374_D848).text(&mut buf), "16/B374D848");
        for lsn in [
            0,
            1,
            0xF,
            0x10,
            0x1_0000_0000,
            0xA_0000_000B,
            0x8000_0000_0000_0001,
        ] {
            assert_eq!(Lsn(lsn).text(&mut buf), Lsn(lsn).to_string(), "{lsn:#x}");
        }
    }
}
