//! Go-style durations (`30s`, `2m`, `1h30m`, `1.5h`, `250ms`), the form ESE flags take.

use std::time::Duration;

/// Why a duration did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    /// Empty input.
    #[error("empty duration")]
    Empty,
    /// Not of the form `<number><unit>…`.
    #[error("invalid duration {0:?} (examples: 30s, 2m, 1h30m, 500ms)")]
    Invalid(String),
    /// A unit other than ns, us, µs, ms, s, m, h.
    #[error("unknown unit {unit:?} in duration {input:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit {
        /// The unit found.
        unit: String,
        /// The whole input.
        input: String,
    },
    /// Larger than this program accepts (about 292 years is Go's own limit; we stop at u64 ns).
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Parses a Go `time.ParseDuration` string. Negative durations are refused (a refresh
/// interval or a timeout cannot be negative); a bare `0` is zero.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let invalid = || DurationError::Invalid(input.to_string());
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(invalid());
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(invalid()),
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_string(),
                    input: input.to_string(),
                });
            }
        };
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let too_large = || DurationError::TooLarge(input.to_string());
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_large())?
        };
        let mut nanos = int.checked_mul(scale).ok_or_else(too_large)?;
        // Fractions: at most 18 digits matter below a nanosecond for any unit here.
        let mut frac_scale = scale;
        for d in frac_part.chars().take(18) {
            frac_scale /= 10;
            let digit = u128::from(d.to_digit(10).ok_or_else(invalid)?);
            nanos = nanos
                .checked_add(digit * frac_scale)
                .ok_or_else(too_large)?;
        }
        total = total.checked_add(nanos).ok_or_else(too_large)?;
        rest = next;
    }
    let nanos = u64::try_from(total).map_err(|_| DurationError::TooLarge(input.to_string()))?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_forms() {
        let cases = [
            ("30s", 30_000),
            ("2m", 120_000),
            ("1h30m", 5_400_000),
            ("1.5h", 5_400_000),
            ("250ms", 250),
            ("1m0.5s", 60_500),
            ("0", 0),
            (" 45s ", 45_000),
            ("2h45m30s", 9_930_000),
            (".5s", 500),
        ];
        for (s, ms) in cases {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        assert_eq!(parse_duration("1500us"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
    }

    #[test]
    fn refusals() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        for bad in ["30", "s", "1.2.3s", "-5s", "abc", "1h 30m", "5 s"] {
            assert!(
                matches!(
                    parse_duration(bad),
                    Err(DurationError::Invalid(_) | DurationError::UnknownUnit { .. })
                ),
                "{bad}: {:?}",
                parse_duration(bad)
            );
        }
        assert!(matches!(
            parse_duration("3d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::TooLarge(_))
        ));
    }
}
