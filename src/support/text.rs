//! User text as it may be shown on a terminal, and the Kubernetes name rules.
//!
//! Names, ids, keys and file contents reach error messages and the text output of the
//! `esi-server policy` commands. A control character in them (`ESC [2J` clears a screen,
//! `CR` overwrites a line, a newline forges one) or a bidirectional override (U+202E
//! reorders what follows) would let a file rewrite what an operator reads, so they are
//! escaped as Rust escapes them (`\u{1b}`, `\r`), never passed through.

/// Whether `c` must not reach a terminal as it is: a control character (C0, DEL, C1) or a
/// bidirectional formatting character (U+200E/F, U+202A–U+202E, U+2066–U+2069).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

fn push_escaped(out: &mut String, c: char) {
    if c.is_control() {
        out.extend(c.escape_default());
    } else {
        out.extend(c.escape_unicode());
    }
}

/// `s` as one printable line: every control and bidirectional formatting character
/// escaped (a newline too), cut after `max_chars` characters with `…`. For a name, key,
/// id or message echoed in an error or a line of output.
pub fn printable(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars.saturating_mul(4)));
    for (i, c) in s.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        if hidden(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` (several lines) as it may be printed: as [`printable`], but line breaks (`\n`)
/// and tabs are kept, and nothing is cut. For the whole text output of a command.
pub fn printable_lines(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| hidden(c) && c != '\n' && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if hidden(c) && c != '\n' && c != '\t' {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Whether `s` is a DNS-1123 subdomain: 1–253 characters of `a-z`, `0-9`, `-` and `.`,
/// each dot-separated label non-empty and starting and ending with a letter or digit —
/// what Kubernetes requires of most object names (`metadata.name`) and ServiceAccount
/// names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// Whether `s` is a DNS-1123 label: a [`is_dns_subdomain`] of at most 63 characters and no
/// dot — what Kubernetes requires of namespace names.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        assert_eq!(printable("a\u{1b}[2Jb", 100), "a\\u{1b}[2Jb");
        assert_eq!(printable("a\nb\rc\td", 100), "a\\nb\\rc\\td");
        assert_eq!(printable("x\u{202e}y\u{9b}z", 100), "x\\u{202e}y\\u{9b}z");
        assert_eq!(printable("ünïcödé ok", 100), "ünïcödé ok");
        assert_eq!(printable("abcdef", 3), "abc…");
        assert_eq!(printable("abc", 3), "abc");
        assert_eq!(
            printable_lines("l1\n\tl2\u{1b}[2J\r\n"),
            "l1\n\tl2\\u{1b}[2J\\r\n"
        );
        assert!(matches!(
            printable_lines("plain\ntext"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn dns_names_follow_kubernetes() {
        for ok in ["a", "app", "a-b", "a.b-c.d1", "0x", &"a".repeat(63)] {
            assert!(is_dns_subdomain(ok), "{ok}");
            assert!(is_dns_label(ok) || ok.contains('.'), "{ok}");
        }
        for bad in [
            "", "A", "a_b", "-a", "a-", "a..b", ".a", "a.", "a b", "a\u{1b}", "a:b", "a/b",
        ] {
            assert!(!is_dns_subdomain(bad), "{bad:?}");
            assert!(!is_dns_label(bad), "{bad:?}");
        }
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain(&"a".repeat(253)));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
        assert!(!is_dns_label("a.b"));
    }
}
