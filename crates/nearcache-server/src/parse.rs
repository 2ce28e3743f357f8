//! The values of flags that are not plain numbers or strings: durations, sizes and rates,
//! read as an operator writes them, refused with an example of what is accepted.

use std::time::Duration;

/// A duration: `500ms`, `2s`, `5m`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 2s, 5m)"))
}

/// A size in bytes: `512MiB`, `2GiB`, `500MB`, `64KiB`, or a number of bytes.
pub(crate) fn byte_size(s: &str) -> Result<u64, String> {
    let wrong = || format!("{s}: not a size (examples: 512MiB, 2GiB, 500MB)");
    let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(at);
    let number: u64 = number.parse().map_err(|_| wrong())?;
    let unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(wrong()),
    };
    number.checked_mul(unit).ok_or_else(wrong)
}

/// A rate per second: a finite number, 0 or more.
pub(crate) fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("{s}: not a rate (a number per second, 0 for none)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_an_operator_writes_them() {
        assert_eq!(byte_size("512MiB"), Ok(512 << 20));
        assert_eq!(byte_size("2GiB"), Ok(2 << 30));
        assert_eq!(byte_size("500MB"), Ok(500_000_000));
        assert_eq!(byte_size("4096"), Ok(4096));
        for wrong in ["", "MiB", "1.5GiB", "12 parsecs", "99999999999999GiB"] {
            assert!(byte_size(wrong).unwrap_err().contains("512MiB"), "{wrong}");
        }
    }
}
