//! Binary values inside the template engine (gap G2 of issue 11).
//!
//! The Go engine works on byte strings; the Rust engine (gotmpl) on UTF-8 `str`. Each
//! secret value therefore enters the engine in a reversible escaped form, like Python's
//! `surrogateescape`:
//! - a byte that is not part of valid UTF-8 (always `0x80..=0xFF`) becomes the character
//!   `U+10FF00 + byte` (so `U+10FF80..=U+10FFFF`, private use);
//! - a valid character that already lies in `U+10FF80..=U+10FFFF` is escaped byte by byte
//!   (its four UTF-8 bytes become four escape characters), so the mapping is a bijection;
//! - every other character is itself: UTF-8 text passes through unchanged.
//!
//! [`to_bytes`] undoes it on the final output and inside byte-aware functions (`b64enc`,
//! `sha256sum`, `len`, …).

/// First character of the escape range (`U+10FF80`, the escape of byte `0x80`).
const ESCAPE_BASE: u32 = 0x10_FF00;
const ESCAPE_FIRST: u32 = ESCAPE_BASE + 0x80;

fn escape_byte(out: &mut String, b: u8) {
    // b >= 0x80 here, so the result is in U+10FF80..=U+10FFFF: always a valid char.
    if let Some(c) = char::from_u32(ESCAPE_BASE + u32::from(b)) {
        out.push(c);
    }
}

/// Bytes into the engine's text form (see the module docs). Total: never fails.
pub fn from_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if u32::from(c) >= ESCAPE_FIRST {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    escape_byte(&mut out, b);
                }
            } else {
                out.push(c);
            }
        }
        for &b in chunk.invalid() {
            escape_byte(&mut out, b);
        }
    }
    out
}

/// The engine's text form back into bytes (the inverse of [`from_bytes`]).
pub fn to_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        let u = u32::from(c);
        if u >= ESCAPE_FIRST {
            // u - ESCAPE_BASE is in 0x80..=0xFF.
            out.push((u - ESCAPE_BASE) as u8);
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    out
}

/// Number of bytes `text` stands for (Go's `len` of a string).
pub fn byte_len(text: &str) -> usize {
    text.chars()
        .map(|c| {
            if u32::from(c) >= ESCAPE_FIRST {
                1
            } else {
                c.len_utf8()
            }
        })
        .sum()
}

/// Whether `text` holds escaped bytes (it is not plain UTF-8 text).
#[cfg(test)]
pub fn has_escapes(text: &str) -> bool {
    text.chars().any(|c| u32::from(c) >= ESCAPE_FIRST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_passes_through_unchanged() {
        for s in ["", "abc", "héllo wörld", "日本語", "emoji 🎉", "\u{10FF7F}"] {
            assert_eq!(from_bytes(s.as_bytes()), s);
            assert_eq!(to_bytes(s), s.as_bytes());
            assert_eq!(byte_len(s), s.len());
        }
    }

    #[test]
    fn binary_round_trips_byte_exact() {
        // invalid bytes, a NUL, and a valid U+10FF80 (f4 8f be 80) that must be escaped too.
        let raw = [0xff, 0x00, 0x80, b'a', 0xf4, 0x8f, 0xbe, 0x80];
        let t = from_bytes(&raw);
        assert!(has_escapes(&t));
        assert_eq!(to_bytes(&t), raw);
        assert_eq!(byte_len(&t), raw.len());
        // Every single byte value and every pair round-trip.
        for a in 0..=255u8 {
            assert_eq!(to_bytes(&from_bytes(&[a])), [a]);
            for b in [0u8, 0x41, 0x80, 0xbf, 0xc3, 0xf4, 0xff] {
                assert_eq!(to_bytes(&from_bytes(&[a, b])), [a, b]);
            }
        }
    }

    #[test]
    fn escape_range_characters_are_escaped_not_passed() {
        let s = "\u{10FFFF}";
        let t = from_bytes(s.as_bytes());
        assert_eq!(t.chars().count(), 4);
        assert_eq!(to_bytes(&t), s.as_bytes());
    }
}
