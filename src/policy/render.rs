//! Diagnostics with a source span, in the style of `miette`/`rustc`:
//!
//! ```text
//! error: Authorization/app: ClusterSecretStore nosuch does not exist
//!   --> manifests/app.yaml:9:32
//!    |
//!  9 |   allowedClusterSecretStores: [nosuch]
//!    |                                ^^^^^^
//! ```

use std::fmt::Write as _;

/// A place in a file: 1-based line and column (in characters), and how many characters
/// to underline (at least 1).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Span {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Characters underlined.
    pub len: usize,
}

/// Longest source line shown (longer ones are cut).
const LINE_MAX: usize = 200;

/// The line `line` (1-based) of `text`.
pub fn line_of(text: &str, line: usize) -> Option<&str> {
    text.lines().nth(line.checked_sub(1)?)
}

/// The span of the first occurrence of `needle` at or after line `from` (1-based) and
/// before line `to` (exclusive; `None`: to the end), as a whole token (not inside a
/// longer name).
pub fn find_token(text: &str, needle: &str, from: usize, to: Option<usize>) -> Option<Span> {
    if needle.is_empty() {
        return None;
    }
    for (i, line) in text.lines().enumerate().skip(from.saturating_sub(1)) {
        let number = i + 1;
        if to.is_some_and(|to| number >= to) {
            break;
        }
        let code = line.split(" #").next().unwrap_or(line);
        if code.trim_start().starts_with('#') {
            continue;
        }
        let mut start = 0;
        while let Some(found) = code[start..].find(needle) {
            let at = start + found;
            let end = at + needle.len();
            let token_char = |c: char| c.is_alphanumeric() || c == '-' || c == '_' || c == '.';
            let before = code[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !token_char(c));
            let after = code[end..].chars().next().is_none_or(|c| !token_char(c));
            if before && after {
                return Some(Span {
                    line: number,
                    column: code[..at].chars().count() + 1,
                    len: needle.chars().count().max(1),
                });
            }
            start = end;
        }
    }
    None
}

/// A token-sized span at `line:column` of `text` (the run of non-space characters there).
pub fn span_at(text: &str, line: usize, column: usize) -> Span {
    let len = line_of(text, line)
        .map(|l| {
            l.chars()
                .skip(column.saturating_sub(1))
                .take_while(|c| !c.is_whitespace())
                .count()
        })
        .unwrap_or(1);
    Span {
        line,
        column,
        len: len.clamp(1, 60),
    }
}

/// Renders one diagnostic. `source` is the file's text when the span points into it.
pub fn render(
    severity: &str,
    message: &str,
    path: &str,
    span: Option<&Span>,
    source_line: Option<&str>,
) -> String {
    let mut out = format!("{severity}: {message}\n");
    let Some(span) = span else {
        let _ = writeln!(out, "  --> {path}");
        return out;
    };
    let _ = writeln!(out, "  --> {path}:{}:{}", span.line, span.column);
    if let Some(line) = source_line {
        let shown: String = line.chars().take(LINE_MAX).collect();
        let number = span.line.to_string();
        let pad = " ".repeat(number.len());
        let width = span
            .len
            .min(LINE_MAX.saturating_sub(span.column.saturating_sub(1)))
            .max(1);
        let _ = writeln!(out, " {pad} |");
        let _ = writeln!(out, " {number} | {shown}");
        let _ = writeln!(
            out,
            " {pad} | {}{}",
            " ".repeat(span.column.saturating_sub(1).min(LINE_MAX)),
            "^".repeat(width)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_line_and_underlines_the_span() {
        let text = "kind: Authorization\nspec:\n  allowedClusterSecretStores: [nosuch]\n";
        let span = find_token(text, "nosuch", 1, None).expect("found");
        assert_eq!(
            span,
            Span {
                line: 3,
                column: 32,
                len: 6
            }
        );
        let shown = render(
            "error",
            "missing",
            "a.yaml",
            Some(&span),
            line_of(text, span.line),
        );
        assert_eq!(
            shown,
            "error: missing\n  --> a.yaml:3:32\n   |\n 3 |   allowedClusterSecretStores: [nosuch]\n   |                                ^^^^^^\n"
        );
    }

    #[test]
    fn tokens_match_whole_names_only_and_skip_comments() {
        let text = "# vault\nstores: [vault-prod, vault]\n";
        assert_eq!(
            find_token(text, "vault", 1, None).map(|s| s.column),
            Some(22)
        );
        assert_eq!(find_token(text, "vault", 1, Some(2)), None);
        assert_eq!(span_at("permit (principal, x)", 1, 9).len, 10);
    }
}
