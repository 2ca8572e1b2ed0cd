//! A bound on bracket nesting in Cedar text, checked before Cedar's parser sees it.
//!
//! Cedar's parser and evaluator recurse once per nested `(`, `[` or `{`: a `.cedar` file or a
//! `spec.when` of about 700 nested parentheses overflowed the stack and aborted the process
//! (issue 13 review finding 6), in `serve` as in `esi-server policy`. Policies people write
//! nest a few levels; [`MAX_NESTING`] leaves ample room and keeps evaluation on a 2 MiB
//! worker stack safe. Brackets inside string literals and `//` comments do not count.

/// Deepest bracket nesting accepted in Cedar text (`(`, `[`, `{` together).
pub(crate) const MAX_NESTING: usize = 64;

/// Cedar text nests brackets deeper than allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "brackets nest more than {max} deep at line {line} (refused before parsing: Cedar parses and evaluates nesting recursively)"
)]
pub(crate) struct TooDeep {
    /// 1-based line of the bracket that went past the bound.
    pub line: usize,
    /// The bound.
    pub max: usize,
}

/// `Ok` when no point of `text` is inside more than `max` open brackets.
///
/// # Errors
/// [`TooDeep`] naming the line of the first bracket past `max`.
pub(crate) fn check_nesting(text: &str, max: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut line = 1usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            '"' => {
                // A string literal: `\` escapes the next character.
                while let Some(s) = chars.next() {
                    match s {
                        '\\' => line += usize::from(chars.next() == Some('\n')),
                        '"' => break,
                        '\n' => line += 1,
                        _ => {}
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for s in chars.by_ref() {
                    if s == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                if depth > max {
                    return Err(TooDeep { line, max });
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!(
            "permit (principal, action, resource)\nwhen {{ {}true{} }};",
            "(".repeat(n),
            ")".repeat(n)
        )
    }

    #[test]
    fn nesting_up_to_the_bound_passes_and_one_more_is_refused_with_its_line() {
        // `when {` is one level.
        assert_eq!(check_nesting(&nested(MAX_NESTING - 1), MAX_NESTING), Ok(()));
        assert_eq!(
            check_nesting(&nested(MAX_NESTING), MAX_NESTING),
            Err(TooDeep {
                line: 2,
                max: MAX_NESTING
            })
        );
        assert!(check_nesting(&nested(700), MAX_NESTING).is_err());
        assert!(check_nesting(&format!("{}{}", "[".repeat(65), "]".repeat(65)), 64).is_err());
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let text = format!(
            "// {}\npermit (principal, action, resource) when {{ resource.key == \"{}\\\"{}\" }};",
            "(".repeat(500),
            "[".repeat(500),
            "{".repeat(500)
        );
        assert_eq!(check_nesting(&text, 4), Ok(()));
        // Sequential brackets are not nested.
        assert_eq!(check_nesting(&"(a)".repeat(1000), 1), Ok(()));
    }
}
