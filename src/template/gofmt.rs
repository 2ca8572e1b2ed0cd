//! Go's `fmt` as the templates need it, on gotmpl values, every output capped (gaps G4/G5).
//!
//! - [`write_v`]: Go's `%v` (floats as `strconv.FormatFloat(f, 'g', -1, 64)`: `1e+06`,
//!   `1e-05`; maps as `map[k:v]` with sorted keys; nil as `<nil>`).
//! - [`sprint`], [`sprintln`], [`sprintf`]: Go's `fmt.Sprint`, `Sprintln` and `Sprintf`
//!   for the verbs `%v %s %d %q %x %X %t %f %F %e %E %g %G %c %o %b %%`, the flags
//!   `+ - # 0 space`, width and precision. A verb that does not fit its operand prints as Go
//!   does (`%!d(string=…)`, `%!v(MISSING)`): that text goes to the output, never into an error.
//! - [`quote`]: Go's `strconv.Quote` on the bytes a string stands for.
//!
//! Everything writes into [`Capped`], which fails as soon as its limit would be passed, so a
//! doubling loop (`$x = printf "%s%s" $x $x`) or a deep list stops at the limit instead of
//! allocating without bound.

use std::fmt::Write as _;

use gotmpl::Value;

use super::bytes;

/// A string builder that refuses to grow past `limit` bytes.
pub(crate) struct Capped {
    buf: String,
    limit: usize,
}

/// The limit of a [`Capped`] was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflow;

impl Capped {
    pub(crate) fn new(limit: usize) -> Self {
        Capped {
            buf: String::new(),
            limit,
        }
    }

    pub(crate) fn push_str(&mut self, s: &str) -> Result<(), Overflow> {
        if self.buf.len().saturating_add(s.len()) > self.limit {
            return Err(Overflow);
        }
        self.buf.push_str(s);
        Ok(())
    }

    pub(crate) fn push(&mut self, c: char) -> Result<(), Overflow> {
        let mut b = [0u8; 4];
        self.push_str(c.encode_utf8(&mut b))
    }

    /// `n` copies of `c` (padding), checked before any allocation.
    pub(crate) fn pad(&mut self, c: char, n: usize) -> Result<(), Overflow> {
        if self
            .buf
            .len()
            .saturating_add(n.saturating_mul(c.len_utf8()))
            > self.limit
        {
            return Err(Overflow);
        }
        for _ in 0..n {
            self.buf.push(c);
        }
        Ok(())
    }

    pub(crate) fn into_string(self) -> String {
        self.buf
    }
}

impl std::fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push_str(s).map_err(|_| std::fmt::Error)
    }
}

/// Go's type name of a value, as `%T` and the `%!verb(type=…)` forms print it.
pub(crate) fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Nil => "<nil>",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Uint(_) => "uint",
        Value::Float(_) => "float64",
        Value::String(_) => "string",
        Value::List(_) => "[]interface {}",
        Value::Map(_) => "map[string]interface {}",
        _ => "func",
    }
}

/// Shortest decimal digits and exponent of a finite non-zero `f`: `(negative, digits, exp)`
/// with `f = ±0.d1d2… × 10^(exp+1)`, i.e. `exp` is the exponent of the first digit.
fn shortest_digits(f: f64) -> (bool, String, i32) {
    // Rust's `{:e}` is the shortest round-trip representation, like Go's precision -1.
    let s = format!("{:e}", f);
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest.to_string()),
        None => (false, s),
    };
    let (mant, exp) = s.split_once('e').unwrap_or((s.as_str(), "0"));
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    (neg, digits, exp.parse().unwrap_or(0))
}

fn exp_form(neg: bool, digits: &str, exp: i32, upper: bool) -> String {
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    let mut chars = digits.chars();
    if let Some(first) = chars.next() {
        out.push(first);
    }
    let rest: String = chars.collect();
    if !rest.is_empty() {
        out.push('.');
        out.push_str(&rest);
    }
    out.push(if upper { 'E' } else { 'e' });
    out.push(if exp < 0 { '-' } else { '+' });
    let _ = write!(out, "{:02}", exp.unsigned_abs());
    out
}

fn non_finite(f: f64) -> Option<&'static str> {
    if f.is_nan() {
        Some("NaN")
    } else if f == f64::INFINITY {
        Some("+Inf")
    } else if f == f64::NEG_INFINITY {
        Some("-Inf")
    } else {
        None
    }
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)`, which is also `%v`: the shortest digits,
/// in exponent form when the exponent is below -4 or at least 6 (`1e+06`, `123456`,
/// `1e-05`, `0.0001`, `1e+21`); source: Go's strconv/ftoa.go (`eprec = 6` when shortest).
pub fn format_float_g(f: f64) -> String {
    if let Some(s) = non_finite(f) {
        return s.to_string();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let (neg, digits, exp) = shortest_digits(f);
    if !(-4..6).contains(&exp) {
        return exp_form(neg, &digits, exp, false);
    }
    // Rust's Display is the shortest decimal without exponent, as Go's %f with -1.
    format!("{}", f)
}

/// Go's `encoding/json` number form: decimal unless `|f| < 1e-6` or `|f| >= 1e21`, then
/// exponent form with `e-7` (not `e-07`). Non-finite numbers have no JSON form (`None`).
pub fn format_float_json(f: f64) -> Option<String> {
    if !f.is_finite() {
        return None;
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let (neg, digits, exp) = shortest_digits(f);
        let mut s = exp_form(neg, &digits, exp, false);
        // clean up e-09 to e-9
        let n = s.len();
        if n >= 4 && s.as_bytes()[n - 4] == b'e' && &s[n - 3..n - 1] == "-0" {
            s.remove(n - 2);
        }
        return Some(s);
    }
    if f == 0.0 {
        return Some(if f.is_sign_negative() { "-0" } else { "0" }.to_string());
    }
    Some(format!("{}", f))
}

/// Go's `%v` of `v` into `out`.
pub(crate) fn write_v(out: &mut Capped, v: &Value) -> Result<(), Overflow> {
    match v {
        Value::Nil => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(n) => out.push_str(&n.to_string()),
        Value::Uint(n) => out.push_str(&n.to_string()),
        Value::Float(f) => out.push_str(&format_float_g(*f)),
        Value::String(s) => out.push_str(s),
        Value::List(items) => {
            out.push('[')?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ')?;
                }
                write_v(out, item)?;
            }
            out.push(']')
        }
        Value::Map(m) => {
            out.push_str("map[")?;
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(' ')?;
                }
                out.push_str(k)?;
                out.push(':')?;
                write_v(out, item)?;
            }
            out.push(']')
        }
        _ => out.push_str("<func>"),
    }
}

/// Go's `%v` of `v` as a string, capped at `limit` bytes.
pub(crate) fn v_string(v: &Value, limit: usize) -> Result<String, Overflow> {
    let mut out = Capped::new(limit);
    write_v(&mut out, v)?;
    Ok(out.into_string())
}

/// Go's `unicode.IsPrint`, approximated: letters, marks, numbers, punctuation, symbols and
/// the ASCII space; not controls, other spaces, format characters or private use.
fn is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let u = u32::from(c);
    let private = (0xE000..=0xF8FF).contains(&u) || u >= 0xF_0000;
    let format = matches!(
        u,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E
            | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB
    );
    let noncharacter = (u & 0xFFFE) == 0xFFFE || (0xFDD0..=0xFDEF).contains(&u);
    !(private || format || noncharacter)
}

/// Go's `strconv.Quote` of the bytes `text` stands for: printable characters as they are,
/// `\n`-style escapes, `\u`/`\U` for other characters, `\x` for bytes that are not UTF-8.
pub(crate) fn quote(out: &mut Capped, text: &str, q: char) -> Result<(), Overflow> {
    out.push(q)?;
    let raw = bytes::to_bytes(text);
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\u{7}' => out.push_str("\\a")?,
                '\u{8}' => out.push_str("\\b")?,
                '\u{c}' => out.push_str("\\f")?,
                '\n' => out.push_str("\\n")?,
                '\r' => out.push_str("\\r")?,
                '\t' => out.push_str("\\t")?,
                '\u{b}' => out.push_str("\\v")?,
                '\\' => out.push_str("\\\\")?,
                c if c == q => {
                    out.push('\\')?;
                    out.push(c)?;
                }
                c if is_print(c) => out.push(c)?,
                c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                    out.push_str(&format!("\\x{:02x}", u32::from(c)))?
                }
                c if u32::from(c) < 0x10000 => out.push_str(&format!("\\u{:04x}", u32::from(c)))?,
                c => out.push_str(&format!("\\U{:08x}", u32::from(c)))?,
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{:02x}", b))?;
        }
    }
    out.push(q)
}

/// Go's `fmt.Sprint`: operands side by side, a space between two operands when neither is
/// a string.
pub(crate) fn sprint(args: &[Value], limit: usize) -> Result<String, Overflow> {
    let mut out = Capped::new(limit);
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            let prev_str = matches!(args[i - 1], Value::String(_));
            if !prev_str && !matches!(a, Value::String(_)) {
                out.push(' ')?;
            }
        }
        write_v(&mut out, a)?;
    }
    Ok(out.into_string())
}

/// Go's `fmt.Sprintln`: operands separated by spaces, then a newline.
pub(crate) fn sprintln(args: &[Value], limit: usize) -> Result<String, Overflow> {
    let mut out = Capped::new(limit);
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ')?;
        }
        write_v(&mut out, a)?;
    }
    out.push('\n')?;
    Ok(out.into_string())
}

#[derive(Default, Clone, Copy)]
struct Spec {
    plus: bool,
    minus: bool,
    sharp: bool,
    zero: bool,
    space: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

/// Writes `body` padded to the spec's width (spaces, or zeros after the sign for numbers).
fn pad_write(out: &mut Capped, spec: &Spec, body: &str, numeric: bool) -> Result<(), Overflow> {
    let len = body.chars().count();
    let width = spec.width.unwrap_or(0);
    if len >= width {
        return out.push_str(body);
    }
    let fill = width - len;
    if spec.minus {
        out.push_str(body)?;
        out.pad(' ', fill)
    } else if spec.zero && numeric {
        let (sign, rest) = match body.chars().next() {
            Some(c @ ('-' | '+' | ' ')) => (Some(c), &body[1..]),
            _ => (None, body),
        };
        if let Some(c) = sign {
            out.push(c)?;
        }
        out.pad('0', fill)?;
        out.push_str(rest)
    } else {
        out.pad(' ', fill)?;
        out.push_str(body)
    }
}

fn sign_prefix(spec: &Spec, neg: bool) -> &'static str {
    if neg {
        "-"
    } else if spec.plus {
        "+"
    } else if spec.space {
        " "
    } else {
        ""
    }
}

fn fmt_int(spec: &Spec, verb: char, neg: bool, mag: u128) -> Option<String> {
    let digits = match verb {
        'd' | 'v' => mag.to_string(),
        'x' => format!("{:x}", mag),
        'X' => format!("{:X}", mag),
        'o' => format!("{:o}", mag),
        'b' => format!("{:b}", mag),
        _ => return None,
    };
    let digits = match spec.prec {
        Some(p) if digits.len() < p => format!("{}{}", "0".repeat(p - digits.len()), digits),
        _ => digits,
    };
    let prefix = match (spec.sharp, verb) {
        (true, 'x') => "0x",
        (true, 'X') => "0X",
        (true, 'o') if !digits.starts_with('0') => "0",
        _ => "",
    };
    Some(format!("{}{}{}", sign_prefix(spec, neg), prefix, digits))
}

fn fmt_float(spec: &Spec, verb: char, f: f64) -> Option<String> {
    if let Some(s) = non_finite(f) {
        let s = match (s, spec.plus) {
            ("+Inf", false) => "Inf",
            (s, _) => s,
        };
        return Some(s.to_string());
    }
    let neg = f.is_sign_negative() && f != 0.0;
    let a = f.abs();
    let body = match verb {
        'f' | 'F' => format!("{:.*}", spec.prec.unwrap_or(6), a),
        'e' | 'E' => {
            let s = format!("{:.*e}", spec.prec.unwrap_or(6), a);
            let (m, e) = s.split_once('e').unwrap_or((s.as_str(), "0"));
            let e: i32 = e.parse().unwrap_or(0);
            let mut r = format!(
                "{}e{}{:02}",
                m,
                if e < 0 { '-' } else { '+' },
                e.unsigned_abs()
            );
            if verb == 'E' {
                r = r.to_uppercase();
            }
            r
        }
        'g' | 'G' | 'v' => {
            let s = match spec.prec {
                None => format_float_g(a),
                Some(p) => {
                    // %.Pg: P significant digits, %e form when exp < -4 || exp >= P.
                    let p = p.max(1);
                    let e = format!("{:.*e}", p - 1, a);
                    let (m, ex) = e.split_once('e').unwrap_or((e.as_str(), "0"));
                    let ex: i32 = ex.parse().unwrap_or(0);
                    if ex < -4 || ex >= p as i32 {
                        let m = if m.contains('.') {
                            m.trim_end_matches('0').trim_end_matches('.')
                        } else {
                            m
                        };
                        format!(
                            "{}e{}{:02}",
                            m,
                            if ex < 0 { '-' } else { '+' },
                            ex.unsigned_abs()
                        )
                    } else {
                        let decimals = (p as i32 - 1 - ex).max(0) as usize;
                        let s = format!("{:.*}", decimals, a);
                        if s.contains('.') {
                            s.trim_end_matches('0').trim_end_matches('.').to_string()
                        } else {
                            s
                        }
                    }
                }
            };
            if verb == 'G' { s.to_uppercase() } else { s }
        }
        _ => return None,
    };
    Some(format!("{}{}", sign_prefix(spec, neg), body))
}

fn bad_verb(out: &mut Capped, verb: char, arg: &Value, limit: usize) -> Result<(), Overflow> {
    out.push_str("%!")?;
    out.push(verb)?;
    out.push('(')?;
    if matches!(arg, Value::Nil) {
        out.push_str("<nil>")?;
    } else {
        out.push_str(go_type(arg))?;
        out.push('=')?;
        let s = v_string(arg, limit)?;
        out.push_str(&s)?;
    }
    out.push(')')
}

fn write_verb(
    out: &mut Capped,
    spec: &Spec,
    verb: char,
    arg: &Value,
    limit: usize,
) -> Result<(), Overflow> {
    let body: Option<(String, bool)> = match (verb, arg) {
        ('v' | 's', Value::String(s)) => {
            let s: &str = s;
            Some((truncate_chars(s, spec.prec), false))
        }
        ('q', Value::String(s)) => {
            let mut q = Capped::new(limit);
            quote(&mut q, s, '"')?;
            Some((q.into_string(), false))
        }
        ('x' | 'X', Value::String(s)) => {
            let raw = bytes::to_bytes(s);
            let raw = match spec.prec {
                Some(p) if p < raw.len() => &raw[..p],
                _ => &raw[..],
            };
            if raw.len().saturating_mul(2) > limit {
                return Err(Overflow);
            }
            let mut h = String::with_capacity(raw.len() * 2);
            for b in raw {
                let _ = if verb == 'x' {
                    write!(h, "{:02x}", b)
                } else {
                    write!(h, "{:02X}", b)
                };
            }
            Some((h, false))
        }
        ('t' | 'v', Value::Bool(b)) => Some((b.to_string(), false)),
        ('d' | 'v' | 'x' | 'X' | 'o' | 'b', Value::Int(n)) => {
            fmt_int(spec, verb, *n < 0, i128::from(*n).unsigned_abs()).map(|s| (s, true))
        }
        ('d' | 'v' | 'x' | 'X' | 'o' | 'b', Value::Uint(n)) => {
            fmt_int(spec, verb, false, u128::from(*n)).map(|s| (s, true))
        }
        ('c', Value::Int(n)) => u32::try_from(*n)
            .ok()
            .and_then(char::from_u32)
            .map(|c| (c.to_string(), false)),
        ('q', Value::Int(n)) => u32::try_from(*n).ok().and_then(char::from_u32).map(|c| {
            let mut q = Capped::new(64);
            let _ = quote(&mut q, &c.to_string(), '\'');
            (q.into_string(), false)
        }),
        ('f' | 'F' | 'e' | 'E' | 'g' | 'G' | 'v', Value::Float(f)) => {
            fmt_float(spec, verb, *f).map(|s| (s, true))
        }
        ('v', other) => Some((v_string(other, limit)?, false)),
        ('s', Value::List(_) | Value::Map(_)) => Some((v_string(arg, limit)?, false)),
        _ => None,
    };
    match body {
        Some((b, numeric)) => pad_write(out, spec, &b, numeric),
        None => bad_verb(out, verb, arg, limit),
    }
}

fn truncate_chars(s: &str, prec: Option<usize>) -> String {
    match prec {
        Some(p) => s.chars().take(p).collect(),
        None => s.to_string(),
    }
}

fn read_num(chars: &[char], i: &mut usize) -> Option<usize> {
    let start = *i;
    let mut n: usize = 0;
    while *i < chars.len() && chars[*i].is_ascii_digit() {
        n = n
            .saturating_mul(10)
            .saturating_add(chars[*i] as usize - '0' as usize);
        *i += 1;
    }
    (*i > start).then_some(n)
}

/// Go's `fmt.Sprintf(format, args...)`, capped at `limit` bytes (see the module docs).
pub(crate) fn sprintf(format: &str, args: &[Value], limit: usize) -> Result<String, Overflow> {
    let mut out = Capped::new(limit);
    let chars: Vec<char> = format.chars().collect();
    let mut i = 0;
    let mut argi = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '%' {
            out.push(c)?;
            i += 1;
            continue;
        }
        i += 1;
        let mut spec = Spec::default();
        while i < chars.len() {
            match chars[i] {
                '+' => spec.plus = true,
                '-' => spec.minus = true,
                '#' => spec.sharp = true,
                '0' => spec.zero = true,
                ' ' => spec.space = true,
                _ => break,
            }
            i += 1;
        }
        spec.width = read_num(&chars, &mut i);
        if i < chars.len() && chars[i] == '.' {
            i += 1;
            spec.prec = Some(read_num(&chars, &mut i).unwrap_or(0));
        }
        // Width and precision count characters; anything past the limit cannot fit anyway.
        if spec.width.unwrap_or(0) > limit || spec.prec.unwrap_or(0) > limit {
            return Err(Overflow);
        }
        let Some(&verb) = chars.get(i) else {
            out.push_str("%!(NOVERB)")?;
            break;
        };
        i += 1;
        if verb == '%' {
            out.push('%')?;
            continue;
        }
        match args.get(argi) {
            None => {
                out.push_str("%!")?;
                out.push(verb)?;
                out.push_str("(MISSING)")?;
            }
            Some(arg) => {
                argi += 1;
                write_verb(&mut out, &spec, verb, arg, limit)?;
            }
        }
    }
    if argi < args.len() {
        out.push_str("%!(EXTRA ")?;
        for (n, a) in args[argi..].iter().enumerate() {
            if n > 0 {
                out.push_str(", ")?;
            }
            out.push_str(go_type(a))?;
            out.push('=')?;
            write_v(&mut out, a)?;
        }
        out.push(')')?;
    }
    Ok(out.into_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    #[test]
    fn floats_print_as_go_percent_v() {
        for (f, want) in [
            (1e21, "1e+21"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e6, "1e+06"),
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (5432.0, "5432"),
            (0.0, "0"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(format_float_g(f), want, "{f}");
        }
    }

    #[test]
    fn floats_in_json_as_go_encoding_json() {
        for (f, want) in [
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1e-7, "1e-7"),
            (1e-6, "0.000001"),
            (1.5, "1.5"),
            (3.0, "3"),
        ] {
            assert_eq!(format_float_json(f).unwrap(), want, "{f}");
        }
        assert_eq!(format_float_json(f64::NAN), None);
    }

    #[test]
    fn sprintf_verbs_flags_and_width() {
        let l = 1 << 20;
        let cases: Vec<(&str, Vec<Value>, &str)> = vec![
            ("%s-%v", vec![s("a"), Value::Int(3)], "a-3"),
            (
                "%5d|%-5d|%05d",
                vec![Value::Int(42), Value::Int(42), Value::Int(-42)],
                "   42|42   |-0042",
            ),
            (
                "%+d %x %X %#x %o %b",
                vec![
                    Value::Int(5),
                    Value::Int(255),
                    Value::Int(255),
                    Value::Int(255),
                    Value::Int(8),
                    Value::Int(5),
                ],
                "+5 ff FF 0xff 10 101",
            ),
            ("%q", vec![s("a\"b\n")], "\"a\\\"b\\n\""),
            ("%x", vec![s("hi")], "6869"),
            ("%t", vec![Value::Bool(true)], "true"),
            (
                "%.2f %f %e %g",
                vec![
                    Value::Float(3.14659),
                    Value::Float(1.5),
                    Value::Float(1234.5),
                    Value::Float(1e21),
                ],
                "3.15 1.500000 1.234500e+03 1e+21",
            ),
            (
                "%.3s|%8.3f",
                vec![s("abcdef"), Value::Float(2.0)],
                "abc|   2.000",
            ),
            ("100%%", vec![], "100%"),
            ("%d", vec![s("x")], "%!d(string=x)"),
            ("%d %d", vec![Value::Int(1)], "1 %!d(MISSING)"),
            ("%d", vec![Value::Int(1), Value::Int(2)], "1%!(EXTRA int=2)"),
            (
                "%v",
                vec![Value::List(vec![Value::Int(1), s("a")].into())],
                "[1 a]",
            ),
            ("%c", vec![Value::Int(65)], "A"),
        ];
        for (f, args, want) in cases {
            assert_eq!(sprintf(f, &args, l).unwrap(), want, "{f}");
        }
    }

    #[test]
    fn sprintf_is_capped() {
        assert_eq!(
            sprintf("%050000000d", &[Value::Int(1)], 1 << 20),
            Err(Overflow)
        );
        let big = s(&"x".repeat(600));
        assert_eq!(sprintf("%s%s", &[big.clone(), big], 1000), Err(Overflow));
    }

    #[test]
    fn sprint_spacing_as_go() {
        let l = 1024;
        assert_eq!(sprint(&[s("a"), s("b")], l).unwrap(), "ab");
        assert_eq!(sprint(&[Value::Int(1), Value::Int(2)], l).unwrap(), "1 2");
        assert_eq!(sprint(&[s("a"), Value::Int(2)], l).unwrap(), "a2");
        assert_eq!(sprintln(&[s("a"), s("b")], l).unwrap(), "a b\n");
    }

    #[test]
    fn quote_as_strconv() {
        let mut q = Capped::new(1024);
        let text = format!("tab\t é\u{200b}{}", bytes::from_bytes(&[0xff]));
        quote(&mut q, &text, '"').unwrap();
        assert_eq!(q.into_string(), "\"tab\\t é\\u200b\\xff\"");
    }
}
