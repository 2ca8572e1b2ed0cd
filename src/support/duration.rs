//! Go-style durations (`30s`, `2m`, `1h30m`, `1.5h`, `250ms`): the form ESE flags and ESO specs
//! take, and the one duration parser of the project.

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

/// Parses a Go `time.ParseDuration` string (`30s`, `1h30m`, `1.5h`, `250ms`; units ns, us, µs,
/// ms, s, m, h), so that ESO manifests (`refreshInterval`, generator timeouts) and ESE flags mean
/// here what they mean to ESO. Parsing is jiff's "friendly" duration format, a superset of Go's
/// (it also reads `1h 30m` and unit words such as `2 hours`), without calendar units. Surrounding
/// whitespace is ignored; a bare `0` is zero (Go's special case). Negative durations are refused:
/// a refresh interval or a timeout cannot be negative. Inputs longer than 64 bytes are refused.
///
/// Errors: [`DurationError`]; messages quote the input (durations come from flags and specs,
/// never from a secret).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let invalid = || DurationError::Invalid(input.to_string());
    if s.len() > MAX_INPUT {
        return Err(invalid());
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    // Go needs a number first: no sign, no ISO 8601 `PT…` form, no `ago` suffix.
    if !s.starts_with(|c: char| c.is_ascii_digit() || c == '.') || s.ends_with("ago") {
        return Err(invalid());
    }
    // Go reads `.5s` as `0.5s`; jiff wants the leading zero.
    let mut text = String::with_capacity(s.len() + 4);
    let mut previous = None;
    for c in s.chars() {
        if c == '.' && !previous.is_some_and(|p: char| p.is_ascii_digit()) {
            text.push('0');
        }
        text.push(c);
        previous = Some(c);
    }
    let parsed: jiff::SignedDuration = match text.parse() {
        Ok(d) => d,
        Err(e) => {
            let text = e.to_string();
            return Err(if text.contains("overflow") || text.contains("too big") {
                DurationError::TooLarge(input.to_string())
            } else if let Some(unit) = unknown_unit(s) {
                DurationError::UnknownUnit {
                    unit,
                    input: input.to_string(),
                }
            } else {
                invalid()
            });
        }
    };
    if parsed.is_negative() {
        return Err(invalid());
    }
    Duration::try_from(parsed).map_err(|_| DurationError::TooLarge(input.to_string()))
}

/// Longest input read: `2562047h47m16.854775807s` (Go's maximum) is 24 bytes.
const MAX_INPUT: usize = 64;

/// The first unit of `s` that Go does not know, for a precise error.
fn unknown_unit(s: &str) -> Option<String> {
    s.split(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
        .find(|u| !u.is_empty() && !["ns", "us", "µs", "μs", "ms", "s", "m", "h"].contains(u))
        .map(str::to_string)
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
        for bad in ["30", "s", "1.2.3s", "-5s", "abc", "PT1H", "1h ago", "-0s"] {
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
            Err(DurationError::TooLarge(_) | DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_duration(&"1".repeat(65)),
            Err(DurationError::Invalid(_))
        ));
        // Non-ASCII and odd input never panics.
        for odd in ["1µ", "1é", "µs", "1µµs", "1.s", "..1s", "1e3s", "\u{0}1s"] {
            let _ = parse_duration(odd);
        }
        assert_eq!(parse_duration("1µs"), Ok(Duration::from_micros(1)));
    }
}
