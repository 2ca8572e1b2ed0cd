//! The template functions: ESO's engine v2 set (Sprig 3 plus ESO's own), as far as
//! implemented, with Sprig's semantics (source: Masterminds/sprig v3 and ESO's
//! `runtime/template/v2`). Every function:
//! - works on the bytes a string stands for where bytes matter (`b64enc`, `sha256sum`,
//!   `len`, `substr`, …; see `bytes`);
//! - caps its result ([`Ctx::max_value`] bytes, [`Ctx::max_items`] elements);
//! - fails with a message that names the function and never holds a value
//!   (`error calling b64dec: input is not valid base64`).
//!
//! Deliberate differences from Sprig (issue 11: never a silent empty or wrong value):
//! `b64dec`, `b32dec`, `hexdec`, `fromJson`, `fromYaml`, `toJson`, `toYaml`, `atoi`, `int`,
//! `float64` and the `regex*` functions fail where Sprig returns an empty value, an error
//! text as the value, or 0.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine as _;
use gotmpl::Value;

use super::bytes;
use super::gofmt::{self, Capped, Overflow};
use super::pki;

/// Limits every function honours.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    /// Largest string a function may return, in bytes of the engine's text form.
    pub max_value: usize,
    /// Largest list or map a function may return, in elements.
    pub max_items: usize,
    /// Deepest nesting of lists and maps a function may build.
    pub max_depth: usize,
    /// Most work in one render: the sizes of all function arguments and results, summed.
    pub max_work: usize,
}

/// Why a function failed; turned into `error calling NAME: …` (value-free).
#[derive(Debug)]
pub(crate) enum FnError {
    Msg(String),
    TooLarge,
    TooDeep,
    WorkLimit,
    Args { expected: &'static str, got: usize },
}

impl From<Overflow> for FnError {
    fn from(_: Overflow) -> Self {
        FnError::TooLarge
    }
}

fn msg(s: impl Into<String>) -> FnError {
    FnError::Msg(s.into())
}

type FnResult = Result<Value, FnError>;
pub(crate) type Func = fn(&Ctx, &[Value]) -> FnResult;

/// Prefix that marks an execution error raised by our functions, whose text is value-free
/// by construction (see `mod.rs`, error mapping).
pub(crate) const OUR_ERROR: &str = "\u{1}esi\u{1}";

/// Wraps `f` as a gotmpl function named `name`.
/// The size of a value for the work budget: bytes of a string, elements of a list or map.
fn weight(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::List(l) => l.len(),
        Value::Map(m) => m.len(),
        _ => 0,
    }
}

/// One render's work budget: the sizes of every function's arguments and result, summed
/// ([`Ctx::max_work`]); shared by the functions of that render.
pub(crate) type Work = Arc<std::sync::atomic::AtomicUsize>;

fn spend(ctx: &Ctx, work: &Work, amount: usize) -> Result<(), FnError> {
    use std::sync::atomic::Ordering;
    let before = work.fetch_add(amount.saturating_add(1), Ordering::Relaxed);
    if before.saturating_add(amount) > ctx.max_work {
        return Err(FnError::WorkLimit);
    }
    Ok(())
}

/// Charges the sizes of `args` to `work` (for functions registered without [`wrap`]).
pub(crate) fn charge(ctx: &Ctx, work: &Work, args: &[Value]) -> Result<(), FnError> {
    spend(ctx, work, args.iter().map(weight).sum())
}

/// Work charged for one call on top of the sizes, where the sizes do not tell the cost:
/// the JWK functions check keys (curve multiplications, big-number arithmetic), about as
/// expensive as hashing this many bytes.
fn call_cost(name: &str) -> usize {
    match name {
        "jwkPublicKeyPem" | "jwkPrivateKeyPem" => 256 * 1024,
        _ => 0,
    }
}

/// Wraps `f` as a gotmpl function named `name`, charging `work`.
pub(crate) fn wrap(name: &'static str, ctx: Ctx, f: Func, work: Work) -> gotmpl::ValueFunc {
    let cost = call_cost(name);
    Arc::new(move |args: &[Value]| {
        spend(
            &ctx,
            &work,
            args.iter().map(weight).sum::<usize>().saturating_add(cost),
        )
        .and_then(|()| f(&ctx, args))
        .and_then(|v| check_size(&ctx, v))
        .and_then(|v| spend(&ctx, &work, weight(&v)).map(|()| v))
        .map_err(|e| to_gotmpl(name, &ctx, e))
    })
}

pub(crate) fn to_gotmpl(name: &str, ctx: &Ctx, e: FnError) -> gotmpl::TemplateError {
    let text = match e {
        FnError::Msg(m) => m,
        FnError::TooLarge => format!(
            "result exceeds the limit of {} bytes or {} elements",
            ctx.max_value, ctx.max_items
        ),
        FnError::WorkLimit => format!(
            "the render exceeds its work limit of {} (sizes of all function arguments and results)",
            ctx.max_work
        ),
        FnError::TooDeep => format!(
            "result nests lists and maps deeper than {} levels",
            ctx.max_depth
        ),
        FnError::Args { expected, got } => {
            format!("wrong number of arguments: expects {expected}, got {got}")
        }
    };
    gotmpl::TemplateError::Exec(format!("{OUR_ERROR}error calling {name}: {text}"))
}

fn check_size(ctx: &Ctx, v: Value) -> FnResult {
    match &v {
        Value::String(s) if s.len() > ctx.max_value => Err(FnError::TooLarge),
        Value::List(l) if l.len() > ctx.max_items => Err(FnError::TooLarge),
        Value::Map(m) if m.len() > ctx.max_items => Err(FnError::TooLarge),
        _ => Ok(v),
    }
}

// ---------------------------------------------------------------------------------------
// Argument helpers

fn arity(args: &[Value], n: usize, expected: &'static str) -> Result<(), FnError> {
    if args.len() != n {
        return Err(FnError::Args {
            expected,
            got: args.len(),
        });
    }
    Ok(())
}

fn at_least(args: &[Value], n: usize, expected: &'static str) -> Result<(), FnError> {
    if args.len() < n {
        return Err(FnError::Args {
            expected,
            got: args.len(),
        });
    }
    Ok(())
}

/// A `string` parameter (Go converts nothing else into one).
fn st<'a>(v: &'a Value, what: &str) -> Result<&'a str, FnError> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(msg(format!(
            "{what} must be a string, got {}",
            gofmt::go_type(other)
        ))),
    }
}

/// An `int` parameter.
fn int_arg(v: &Value, what: &str) -> Result<i64, FnError> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::Uint(n) => i64::try_from(*n).map_err(|_| msg(format!("{what} overflows int"))),
        other => Err(msg(format!(
            "{what} must be an integer, got {}",
            gofmt::go_type(other)
        ))),
    }
}

fn list_arg<'a>(v: &'a Value, what: &str) -> Result<&'a [Value], FnError> {
    match v {
        Value::List(l) => Ok(l),
        other => Err(msg(format!(
            "{what} must be a list, got {}",
            gofmt::go_type(other)
        ))),
    }
}

type Map = BTreeMap<Arc<str>, Value>;

fn map_arg<'a>(v: &'a Value, what: &str) -> Result<&'a Map, FnError> {
    match v {
        Value::Map(m) => Ok(m),
        other => Err(msg(format!(
            "{what} must be a dict, got {}",
            gofmt::go_type(other)
        ))),
    }
}

/// Sprig's `strval`: a string as it is, anything else as Go's `%v`.
fn strval(ctx: &Ctx, v: &Value) -> Result<String, FnError> {
    match v {
        Value::String(s) => Ok(s.to_string()),
        other => Ok(gofmt::v_string(other, ctx.max_value)?),
    }
}

fn string(s: impl Into<Arc<str>>) -> Value {
    Value::String(s.into())
}

fn list(items: Vec<Value>) -> Value {
    Value::List(items.into())
}

fn from_raw(raw: &[u8]) -> Value {
    string(bytes::from_bytes(raw))
}

/// Nesting depth of `v` (0 for a scalar), each shared list or map counted once. Every
/// list and map in a render was built within [`Ctx::max_depth`] (data maps are 1 or 2
/// deep), so the recursion is bounded.
fn depth(v: &Value, memo: &mut std::collections::HashMap<usize, usize>) -> usize {
    let (key, children): (usize, Box<dyn Iterator<Item = &Value> + '_>) = match v {
        Value::List(l) => (Arc::as_ptr(l) as *const () as usize, Box::new(l.iter())),
        Value::Map(m) => (Arc::as_ptr(m) as *const () as usize, Box::new(m.values())),
        _ => return 0,
    };
    if let Some(d) = memo.get(&key) {
        return *d;
    }
    let d = 1 + children.map(|c| depth(c, memo)).max().unwrap_or(0);
    memo.insert(key, d);
    d
}

/// A new list or map holding `items` must stay within [`Ctx::max_depth`].
fn check_nesting<'a>(ctx: &Ctx, items: impl IntoIterator<Item = &'a Value>) -> Result<(), FnError> {
    let mut memo = std::collections::HashMap::new();
    for v in items {
        if matches!(v, Value::List(_) | Value::Map(_)) && depth(v, &mut memo) + 1 > ctx.max_depth {
            return Err(FnError::TooDeep);
        }
    }
    Ok(())
}

fn checked_len(ctx: &Ctx, n: usize) -> Result<(), FnError> {
    if n > ctx.max_items {
        return Err(FnError::TooLarge);
    }
    Ok(())
}

/// Sprig's `empty`: nil, false, 0, and empty strings, lists and maps.
pub(crate) fn is_empty(v: &Value) -> bool {
    match v {
        Value::Nil => true,
        Value::Bool(b) => !b,
        Value::Int(n) => *n == 0,
        Value::Uint(n) => *n == 0,
        Value::Float(f) => *f == 0.0,
        Value::String(s) => s.is_empty(),
        Value::List(l) => l.is_empty(),
        Value::Map(m) => m.is_empty(),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Strings

fn map_chars(s: &str, f: impl Fn(char) -> Option<char>) -> String {
    s.chars().map(|c| f(c).unwrap_or(c)).collect()
}

/// Go's `unicode.ToUpper` per character: one character in, one out.
fn one_upper(c: char) -> Option<char> {
    let mut it = c.to_uppercase();
    match (it.next(), it.next()) {
        (Some(u), None) => Some(u),
        _ => None,
    }
}

fn one_lower(c: char) -> Option<char> {
    let mut it = c.to_lowercase();
    match (it.next(), it.next()) {
        (Some(u), None) => Some(u),
        _ => None,
    }
}

fn f_upper(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(string(map_chars(st(&a[0], "the argument")?, one_upper)))
}

fn f_lower(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(string(map_chars(st(&a[0], "the argument")?, one_lower)))
}

fn f_trim(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(string(st(&a[0], "the argument")?.trim()))
}

fn f_trim_all(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let cut: Vec<char> = st(&a[0], "the cutset")?.chars().collect();
    Ok(string(st(&a[1], "the string")?.trim_matches(&cut[..])))
}

fn f_trim_prefix(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let p = st(&a[0], "the prefix")?;
    let s = st(&a[1], "the string")?;
    Ok(string(s.strip_prefix(p).unwrap_or(s)))
}

fn f_trim_suffix(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let p = st(&a[0], "the suffix")?;
    let s = st(&a[1], "the string")?;
    Ok(string(s.strip_suffix(p).unwrap_or(s)))
}

fn f_contains(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    Ok(Value::Bool(
        st(&a[1], "the string")?.contains(st(&a[0], "the substring")?),
    ))
}

fn f_has_prefix(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    Ok(Value::Bool(
        st(&a[1], "the string")?.starts_with(st(&a[0], "the prefix")?),
    ))
}

fn f_has_suffix(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    Ok(Value::Bool(
        st(&a[1], "the string")?.ends_with(st(&a[0], "the suffix")?),
    ))
}

fn f_replace(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 3, "3")?;
    let old = st(&a[0], "the old string")?;
    let new = st(&a[1], "the new string")?;
    let s = st(&a[2], "the string")?;
    // Bound the result before building it: each match (at most len+1 for an empty `old`)
    // grows the string by new.len() - old.len().
    let matches = if old.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(old).count()
    };
    let grow = new.len().saturating_sub(old.len()).saturating_mul(matches);
    if s.len().saturating_add(grow) > ctx.max_value {
        return Err(FnError::TooLarge);
    }
    Ok(string(s.replace(old, new)))
}

fn f_repeat(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let n = int_arg(&a[0], "the count")?;
    let s = st(&a[1], "the string")?;
    let n = usize::try_from(n).map_err(|_| msg("the count must not be negative"))?;
    if s.len().saturating_mul(n) > ctx.max_value {
        return Err(FnError::TooLarge);
    }
    Ok(string(s.repeat(n)))
}

fn f_nospace(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(string(
        st(&a[0], "the argument")?
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>(),
    ))
}

/// Sprig's `substr start end s`, on bytes as Go slices strings.
fn f_substr(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 3, "3")?;
    let start = int_arg(&a[0], "the start")?;
    let end = int_arg(&a[1], "the end")?;
    let raw = bytes::to_bytes(st(&a[2], "the string")?);
    let len = raw.len() as i64;
    let (from, to) = if start < 0 {
        (0, end)
    } else if end < 0 || end > len {
        (start, len)
    } else {
        (start, end)
    };
    if from > to || to > len || from < 0 {
        return Err(msg("index out of range"));
    }
    Ok(from_raw(&raw[from as usize..to as usize]))
}

/// Sprig's `trunc n s`: the first n bytes (n >= 0) or the last -n bytes.
fn f_trunc(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let c = int_arg(&a[0], "the length")?;
    let raw = bytes::to_bytes(st(&a[1], "the string")?);
    let len = raw.len() as i64;
    if c < 0 && len + c > 0 {
        return Ok(from_raw(&raw[(len + c) as usize..]));
    }
    if c >= 0 && len > c {
        return Ok(from_raw(&raw[..c as usize]));
    }
    Ok(a[1].clone())
}

fn f_cat(ctx: &Ctx, a: &[Value]) -> FnResult {
    let mut out = Capped::new(ctx.max_value);
    let mut first = true;
    for v in a.iter().filter(|v| !matches!(v, Value::Nil)) {
        if !first {
            out.push(' ')?;
        }
        first = false;
        gofmt::write_v(&mut out, v)?;
    }
    Ok(string(out.into_string()))
}

fn quote_all(ctx: &Ctx, a: &[Value], q: char) -> FnResult {
    let mut out = Capped::new(ctx.max_value);
    let mut first = true;
    for v in a.iter().filter(|v| !matches!(v, Value::Nil)) {
        if !first {
            out.push(' ')?;
        }
        first = false;
        let s = strval(ctx, v)?;
        if q == '"' {
            gofmt::quote(&mut out, &s, '"')?;
        } else {
            // Sprig's squote: fmt.Sprintf("'%v'", s), no escaping.
            out.push('\'')?;
            out.push_str(&s)?;
            out.push('\'')?;
        }
    }
    Ok(string(out.into_string()))
}

fn f_quote(ctx: &Ctx, a: &[Value]) -> FnResult {
    quote_all(ctx, a, '"')
}

fn f_squote(ctx: &Ctx, a: &[Value]) -> FnResult {
    quote_all(ctx, a, '\'')
}

fn indent_str(ctx: &Ctx, n: i64, s: &str, lead: &str) -> FnResult {
    let n = usize::try_from(n).map_err(|_| msg("the width must not be negative"))?;
    let lines = s.matches('\n').count() + 1;
    if n.saturating_mul(lines).saturating_add(s.len()) > ctx.max_value {
        return Err(FnError::TooLarge);
    }
    let pad = " ".repeat(n);
    let mut out = String::with_capacity(s.len() + n * lines + lead.len());
    out.push_str(lead);
    out.push_str(&pad);
    out.push_str(&s.replace('\n', &format!("\n{pad}")));
    Ok(string(out))
}

fn f_indent(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    indent_str(
        ctx,
        int_arg(&a[0], "the width")?,
        st(&a[1], "the string")?,
        "",
    )
}

fn f_nindent(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    indent_str(
        ctx,
        int_arg(&a[0], "the width")?,
        st(&a[1], "the string")?,
        "\n",
    )
}

fn f_to_string(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(string(strval(ctx, &a[0])?))
}

/// Go's `strings.Split`, including an empty separator (one element per character).
fn go_split<'a>(s: &'a str, sep: &str, n: Option<usize>) -> Vec<&'a str> {
    if sep.is_empty() {
        let mut v: Vec<&str> = Vec::new();
        for (i, c) in s.char_indices() {
            if n.is_some_and(|n| v.len() + 1 == n) {
                v.push(&s[i..]);
                return v;
            }
            v.push(&s[i..i + c.len_utf8()]);
        }
        return v;
    }
    match n {
        Some(n) => s.splitn(n, sep).collect(),
        None => s.split(sep).collect(),
    }
}

fn split_map(ctx: &Ctx, parts: Vec<&str>) -> FnResult {
    checked_len(ctx, parts.len())?;
    let m: Map = parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| (Arc::from(format!("_{i}")), string(p)))
        .collect();
    Ok(Value::Map(Arc::new(m)))
}

fn f_split(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    split_map(
        ctx,
        go_split(st(&a[1], "the string")?, st(&a[0], "the separator")?, None),
    )
}

fn f_splitn(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 3, "3")?;
    let n = int_arg(&a[1], "the count")?;
    let s = st(&a[2], "the string")?;
    let sep = st(&a[0], "the separator")?;
    let parts = if n < 0 {
        go_split(s, sep, None)
    } else if n == 0 {
        Vec::new()
    } else {
        go_split(s, sep, Some(n as usize))
    };
    split_map(ctx, parts)
}

fn f_split_list(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let parts = go_split(st(&a[1], "the string")?, st(&a[0], "the separator")?, None);
    checked_len(ctx, parts.len())?;
    Ok(list(parts.into_iter().map(string).collect()))
}

/// Sprig's `strslice`: a list's non-nil elements as strings; anything else as one string.
/// The strings together stay within [`Ctx::max_value`] (a list may hold one large
/// shared value many times).
fn strslice(ctx: &Ctx, v: &Value) -> Result<Vec<String>, FnError> {
    match v {
        Value::List(l) => {
            let mut total = 0usize;
            let mut out = Vec::with_capacity(l.len());
            for x in l.iter().filter(|x| !matches!(x, Value::Nil)) {
                let remaining = ctx.max_value.saturating_sub(total);
                let s = match x {
                    Value::String(s) if s.len() > remaining => return Err(FnError::TooLarge),
                    Value::String(s) => s.to_string(),
                    other => gofmt::v_string(other, remaining)?,
                };
                total += s.len();
                out.push(s);
            }
            Ok(out)
        }
        Value::Nil => Ok(Vec::new()),
        other => Ok(vec![strval(ctx, other)?]),
    }
}

fn f_join(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let sep = st(&a[0], "the separator")?;
    let mut out = Capped::new(ctx.max_value);
    for (i, s) in strslice(ctx, &a[1])?.iter().enumerate() {
        if i > 0 {
            out.push_str(sep)?;
        }
        out.push_str(s)?;
    }
    Ok(string(out.into_string()))
}

fn f_to_strings(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(list(
        strslice(ctx, &a[0])?.into_iter().map(string).collect(),
    ))
}

fn f_sort_alpha(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let mut v = strslice(ctx, &a[0])?;
    v.sort();
    Ok(list(v.into_iter().map(string).collect()))
}

// ---------------------------------------------------------------------------------------
// Encoding and hashing

/// Go's `base64.StdEncoding`/`URLEncoding` decoding rules: padding required, non-zero
/// trailing bits accepted.
pub(crate) fn b64_engine(alphabet: &base64::alphabet::Alphabet) -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        alphabet,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireCanonical),
    )
}

fn b64_std() -> base64::engine::GeneralPurpose {
    b64_engine(&base64::alphabet::STANDARD)
}

fn f_b64enc(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let raw = bytes::to_bytes(&strval(ctx, &a[0])?);
    if raw.len().saturating_mul(4) / 3 > ctx.max_value {
        return Err(FnError::TooLarge);
    }
    Ok(string(b64_std().encode(raw)))
}

fn f_b64dec(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    // Go's decoder skips CR and LF.
    let text: String = strval(ctx, &a[0])?
        .chars()
        .filter(|c| *c != '\r' && *c != '\n')
        .collect();
    let raw = b64_std()
        .decode(text.as_bytes())
        .map_err(|_| msg("input is not valid base64"))?;
    Ok(from_raw(&raw))
}

fn f_b32enc(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let raw = bytes::to_bytes(&strval(ctx, &a[0])?);
    if raw.len().saturating_mul(8) / 5 > ctx.max_value {
        return Err(FnError::TooLarge);
    }
    Ok(string(data_encoding::BASE32.encode(&raw)))
}

fn f_b32dec(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let text: String = strval(ctx, &a[0])?
        .chars()
        .filter(|c| *c != '\r' && *c != '\n')
        .collect();
    let raw = data_encoding::BASE32
        .decode(text.as_bytes())
        .map_err(|_| msg("input is not valid base32"))?;
    Ok(from_raw(&raw))
}

fn f_hexdec(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let raw = data_encoding::HEXLOWER_PERMISSIVE
        .decode(strval(ctx, &a[0])?.as_bytes())
        .map_err(|_| msg("input is not valid hexadecimal"))?;
    Ok(from_raw(&raw))
}

fn hash<D: sha2::Digest>(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let raw = bytes::to_bytes(&strval(ctx, &a[0])?);
    Ok(string(data_encoding::HEXLOWER.encode(&D::digest(&raw))))
}

fn f_sha1sum(ctx: &Ctx, a: &[Value]) -> FnResult {
    hash::<sha1::Sha1>(ctx, a)
}

/// Sprig's `htpasswd user password "sha"`: `user:{SHA}base64(sha1(password))`. The
/// default `bcrypt` salts at random (a new Secret on every refresh) and is not supported.
fn f_htpasswd(_: &Ctx, a: &[Value]) -> FnResult {
    at_least(a, 2, "2 or 3")?;
    if a.len() > 3 {
        return Err(FnError::Args {
            expected: "2 or 3",
            got: a.len(),
        });
    }
    let user = st(&a[0], "the user")?;
    let password = bytes::to_bytes(st(&a[1], "the password")?);
    let kind = match a.get(2) {
        Some(v) => st(v, "the hash type")?,
        None => "bcrypt",
    };
    if kind != "sha" {
        return Err(msg(
            "only the \"sha\" hash type is supported (bcrypt salts at random)",
        ));
    }
    if user.contains(':') {
        return Err(msg("the user must not contain ':'"));
    }
    let digest = <sha1::Sha1 as sha2::Digest>::digest(&password);
    Ok(string(format!(
        "{user}:{{SHA}}{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )))
}

fn f_sha256sum(ctx: &Ctx, a: &[Value]) -> FnResult {
    hash::<sha2::Sha256>(ctx, a)
}

fn f_sha512sum(ctx: &Ctx, a: &[Value]) -> FnResult {
    hash::<sha2::Sha512>(ctx, a)
}

// ---------------------------------------------------------------------------------------
// JSON and YAML

/// Go's `encoding/json` string escaping (HTML-safe unless `raw`); invalid UTF-8 becomes
/// U+FFFD as in Go.
fn json_string(out: &mut Capped, text: &str, raw: bool) -> Result<(), Overflow> {
    let b = bytes::to_bytes(text);
    let s = String::from_utf8_lossy(&b);
    out.push('"')?;
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\"")?,
            '\\' => out.push_str("\\\\")?,
            '\n' => out.push_str("\\n")?,
            '\r' => out.push_str("\\r")?,
            '\t' => out.push_str("\\t")?,
            '\u{8}' => out.push_str("\\b")?,
            '\u{c}' => out.push_str("\\f")?,
            '<' | '>' | '&' if !raw => out.push_str(&format!("\\u{:04x}", u32::from(c)))?,
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", u32::from(c)))?,
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c)))?,
            // A character of the escape range is real text here: escape its bytes.
            c if u32::from(c) >= 0x10_FF80 => {
                let mut b = [0u8; 4];
                out.push_str(&bytes::from_bytes(c.encode_utf8(&mut b).as_bytes()))?
            }
            c => out.push(c)?,
        }
    }
    out.push('"')
}

fn json_newline(out: &mut Capped, indent: Option<usize>) -> Result<(), Overflow> {
    if let Some(depth) = indent {
        out.push('\n')?;
        out.pad(' ', depth * 2)?;
    }
    Ok(())
}

/// Go's `json.Marshal` (indent `None`) or `json.MarshalIndent(v, "", "  ")` (indent
/// `Some(0)`); map keys sorted, as Go sorts them.
fn write_json(
    out: &mut Capped,
    v: &Value,
    raw: bool,
    indent: Option<usize>,
) -> Result<(), FnError> {
    let deeper = indent.map(|d| d + 1);
    match v {
        Value::Nil => out.push_str("null")?,
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" })?,
        Value::Int(n) => out.push_str(&n.to_string())?,
        Value::Uint(n) => out.push_str(&n.to_string())?,
        Value::Float(f) => out.push_str(
            &gofmt::format_float_json(*f).ok_or_else(|| msg("unsupported value: NaN or Inf"))?,
        )?,
        Value::String(s) => json_string(out, s, raw)?,
        Value::List(items) => {
            out.push('[')?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',')?;
                }
                json_newline(out, deeper)?;
                write_json(out, item, raw, deeper)?;
            }
            if !items.is_empty() {
                json_newline(out, indent)?;
            }
            out.push(']')?;
        }
        Value::Map(m) => {
            out.push('{')?;
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',')?;
                }
                json_newline(out, deeper)?;
                json_string(out, k, raw)?;
                out.push(':')?;
                if indent.is_some() {
                    out.push(' ')?;
                }
                write_json(out, item, raw, deeper)?;
            }
            if !m.is_empty() {
                json_newline(out, indent)?;
            }
            out.push('}')?;
        }
        _ => return Err(msg("unsupported type: func")),
    }
    Ok(())
}

fn to_json(ctx: &Ctx, a: &[Value], raw: bool, indent: Option<usize>) -> FnResult {
    arity(a, 1, "1")?;
    let mut out = Capped::new(ctx.max_value);
    write_json(&mut out, &a[0], raw, indent)?;
    Ok(string(out.into_string()))
}

fn f_to_json(ctx: &Ctx, a: &[Value]) -> FnResult {
    to_json(ctx, a, false, None)
}

fn f_to_raw_json(ctx: &Ctx, a: &[Value]) -> FnResult {
    to_json(ctx, a, true, None)
}

fn f_to_pretty_json(ctx: &Ctx, a: &[Value]) -> FnResult {
    to_json(ctx, a, false, Some(0))
}

/// A parsed JSON/YAML document as a template value (numbers are float64, as Go decodes
/// them into `interface{}`); strings enter the escaped text form.
fn from_json_value(ctx: &Ctx, v: serde_json::Value, budget: &mut usize, level: usize) -> FnResult {
    *budget = budget.checked_sub(1).ok_or(FnError::TooLarge)?;
    if level > ctx.max_depth {
        return Err(FnError::TooDeep);
    }
    Ok(match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => from_raw(s.as_bytes()),
        serde_json::Value::Array(items) => {
            checked_len(ctx, items.len())?;
            list(
                items
                    .into_iter()
                    .map(|x| from_json_value(ctx, x, budget, level + 1))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        }
        serde_json::Value::Object(m) => {
            checked_len(ctx, m.len())?;
            let mut out = Map::new();
            for (k, x) in m {
                out.insert(
                    Arc::from(bytes::from_bytes(k.as_bytes())),
                    from_json_value(ctx, x, budget, level + 1)?,
                );
            }
            Value::Map(Arc::new(out))
        }
    })
}

fn f_from_json(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let raw = bytes::to_bytes(st(&a[0], "the argument")?);
    // serde_json's error text holds only a line and column, never the input.
    let doc: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| {
        msg(format!(
            "input is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let mut budget = ctx.max_items.saturating_mul(16);
    from_json_value(ctx, doc, &mut budget, 0)
}

fn f_from_yaml(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let raw = bytes::to_bytes(st(&a[0], "the argument")?);
    let text = std::str::from_utf8(&raw).map_err(|_| msg("input is not UTF-8 text"))?;
    if text.trim().is_empty() {
        return Ok(Value::Map(Arc::new(Map::new())));
    }
    let doc: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| {
        // The parser's own text can quote the input: only the position is shown.
        match e.location() {
            Some(l) => msg(format!(
                "input is not valid YAML (line {}, column {})",
                l.line(),
                l.column()
            )),
            None => msg("input is not valid YAML"),
        }
    })?;
    if !doc.is_object() {
        return Err(msg("input is not a YAML map"));
    }
    let mut budget = ctx.max_items.saturating_mul(16);
    from_json_value(ctx, doc, &mut budget, 0)
}

/// A template value as a JSON value for the YAML writer, bounded by `budget` nodes
/// (a shared sub-list is counted each time it appears).
fn to_json_value(v: &Value, budget: &mut usize) -> Result<serde_json::Value, FnError> {
    *budget = budget.checked_sub(1).ok_or(FnError::TooLarge)?;
    Ok(match v {
        Value::Nil => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Int(n) => (*n).into(),
        Value::Uint(n) => (*n).into(),
        Value::Float(f) => {
            // Go's YAML goes through JSON: integral floats print without a fraction.
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                (*f as i64).into()
            } else {
                serde_json::Number::from_f64(*f)
                    .map(serde_json::Value::Number)
                    .ok_or_else(|| msg("unsupported value: NaN or Inf"))?
            }
        }
        Value::String(s) => {
            let b = bytes::to_bytes(s);
            *budget = budget.checked_sub(b.len() / 64).ok_or(FnError::TooLarge)?;
            serde_json::Value::String(String::from_utf8_lossy(&b).into_owned())
        }
        Value::List(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|x| to_json_value(x, budget))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m.iter() {
                let kb = bytes::to_bytes(k);
                out.insert(
                    String::from_utf8_lossy(&kb).into_owned(),
                    to_json_value(x, budget)?,
                );
            }
            serde_json::Value::Object(out)
        }
        _ => return Err(msg("unsupported type: func")),
    })
}

fn f_to_yaml(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let mut budget = ctx.max_value / 8;
    let doc = to_json_value(&a[0], &mut budget)?;
    let text =
        serde_saphyr::to_string(&doc).map_err(|_| msg("the value cannot be written as YAML"))?;
    Ok(string(bytes::from_bytes(
        text.strip_suffix('\n').unwrap_or(&text).as_bytes(),
    )))
}

// ---------------------------------------------------------------------------------------
// Lists and dicts

fn f_list(ctx: &Ctx, a: &[Value]) -> FnResult {
    checked_len(ctx, a.len())?;
    check_nesting(ctx, a)?;
    Ok(list(a.to_vec()))
}

fn f_append(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let l = list_arg(&a[0], "the first argument")?;
    checked_len(ctx, l.len() + 1)?;
    check_nesting(ctx, &a[1..])?;
    let mut v = l.to_vec();
    v.push(a[1].clone());
    Ok(list(v))
}

fn f_prepend(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let l = list_arg(&a[0], "the first argument")?;
    checked_len(ctx, l.len() + 1)?;
    check_nesting(ctx, &a[1..])?;
    let mut v = Vec::with_capacity(l.len() + 1);
    v.push(a[1].clone());
    v.extend_from_slice(l);
    Ok(list(v))
}

fn f_concat(ctx: &Ctx, a: &[Value]) -> FnResult {
    let mut total = 0usize;
    for x in a {
        total = total.saturating_add(list_arg(x, "each argument")?.len());
    }
    checked_len(ctx, total)?;
    let mut v = Vec::with_capacity(total);
    for x in a {
        v.extend_from_slice(list_arg(x, "each argument")?);
    }
    Ok(list(v))
}

fn f_first(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(list_arg(&a[0], "the argument")?
        .first()
        .cloned()
        .unwrap_or(Value::Nil))
}

fn f_last(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(list_arg(&a[0], "the argument")?
        .last()
        .cloned()
        .unwrap_or(Value::Nil))
}

fn f_rest(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let l = list_arg(&a[0], "the argument")?;
    Ok(list(l.get(1..).unwrap_or(&[]).to_vec()))
}

fn f_initial(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let l = list_arg(&a[0], "the argument")?;
    Ok(list(l[..l.len().saturating_sub(1)].to_vec()))
}

fn f_reverse(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let mut v = list_arg(&a[0], "the argument")?.to_vec();
    v.reverse();
    Ok(list(v))
}

/// Go's `reflect.DeepEqual` as Sprig's list functions use it, bounded: a shared list or
/// map equals itself at once, and at most `budget` nodes are compared in all (a DAG of
/// shared halves would otherwise take exponential time).
fn deep_eq(x: &Value, y: &Value, budget: &mut usize) -> Result<bool, FnError> {
    *budget = budget.checked_sub(1).ok_or(FnError::TooLarge)?;
    Ok(match (x, y) {
        (Value::List(p), Value::List(q)) => {
            if Arc::ptr_eq(p, q) {
                return Ok(true);
            }
            if p.len() != q.len() {
                return Ok(false);
            }
            for (i, j) in p.iter().zip(q.iter()) {
                if !deep_eq(i, j, budget)? {
                    return Ok(false);
                }
            }
            true
        }
        (Value::Map(p), Value::Map(q)) => {
            if Arc::ptr_eq(p, q) {
                return Ok(true);
            }
            if p.len() != q.len() {
                return Ok(false);
            }
            for ((k1, v1), (k2, v2)) in p.iter().zip(q.iter()) {
                if k1 != k2 || !deep_eq(v1, v2, budget)? {
                    return Ok(false);
                }
            }
            true
        }
        (Value::List(_) | Value::Map(_), _) | (_, Value::List(_) | Value::Map(_)) => false,
        _ => x == y,
    })
}

/// Whether `hay` holds a value deeply equal to `needle`.
fn holds(hay: &[Value], needle: &Value, budget: &mut usize) -> Result<bool, FnError> {
    for h in hay {
        if deep_eq(h, needle, budget)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn eq_budget(ctx: &Ctx) -> usize {
    ctx.max_items.saturating_mul(100)
}

fn f_uniq(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let mut budget = eq_budget(ctx);
    let mut v: Vec<Value> = Vec::new();
    for x in list_arg(&a[0], "the argument")? {
        if !holds(&v, x, &mut budget)? {
            v.push(x.clone());
        }
    }
    Ok(list(v))
}

fn f_compact(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(list(
        list_arg(&a[0], "the argument")?
            .iter()
            .filter(|x| !is_empty(x))
            .cloned()
            .collect(),
    ))
}

fn f_has(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let mut budget = eq_budget(ctx);
    Ok(Value::Bool(match &a[1] {
        Value::List(l) => holds(l, &a[0], &mut budget)?,
        Value::Nil => false,
        other => {
            return Err(msg(format!(
                "the haystack must be a list, got {}",
                gofmt::go_type(other)
            )));
        }
    }))
}

fn f_without(ctx: &Ctx, a: &[Value]) -> FnResult {
    at_least(a, 1, "at least 1")?;
    let l = list_arg(&a[0], "the first argument")?;
    let mut budget = eq_budget(ctx);
    let mut v = Vec::new();
    for x in l {
        if !holds(&a[1..], x, &mut budget)? {
            v.push(x.clone());
        }
    }
    Ok(list(v))
}

fn key_of(ctx: &Ctx, v: &Value) -> Result<Arc<str>, FnError> {
    Ok(Arc::from(strval(ctx, v)?))
}

fn f_dict(ctx: &Ctx, a: &[Value]) -> FnResult {
    checked_len(ctx, a.len() / 2 + 1)?;
    check_nesting(ctx, a.iter().skip(1).step_by(2))?;
    let mut m = Map::new();
    for pair in a.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_else(|| string(""));
        m.insert(key_of(ctx, &pair[0])?, v);
    }
    Ok(Value::Map(Arc::new(m)))
}

fn f_get(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let m = map_arg(&a[0], "the first argument")?;
    let k = st(&a[1], "the key")?;
    Ok(m.get(k).cloned().unwrap_or_else(|| string("")))
}

fn f_has_key(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let m = map_arg(&a[0], "the first argument")?;
    Ok(Value::Bool(m.contains_key(st(&a[1], "the key")?)))
}

fn f_keys(ctx: &Ctx, a: &[Value]) -> FnResult {
    let mut v = Vec::new();
    for x in a {
        let m = map_arg(x, "each argument")?;
        checked_len(ctx, v.len() + m.len())?;
        v.extend(m.keys().map(|k| Value::String(k.clone())));
    }
    Ok(list(v))
}

fn f_values(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(list(
        map_arg(&a[0], "the argument")?.values().cloned().collect(),
    ))
}

fn pick_omit(ctx: &Ctx, a: &[Value], keep: bool) -> FnResult {
    at_least(a, 1, "at least 1")?;
    let m = map_arg(&a[0], "the first argument")?;
    let names: BTreeSet<String> = a[1..]
        .iter()
        .map(|k| strval(ctx, k))
        .collect::<Result<_, _>>()?;
    let out: Map = m
        .iter()
        .filter(|(k, _)| names.contains(&***k) == keep)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Value::Map(Arc::new(out)))
}

fn f_pick(ctx: &Ctx, a: &[Value]) -> FnResult {
    pick_omit(ctx, a, true)
}

fn f_omit(ctx: &Ctx, a: &[Value]) -> FnResult {
    pick_omit(ctx, a, false)
}

/// Sprig's `dig "k1" "k2" default dict`.
fn f_dig(_: &Ctx, a: &[Value]) -> FnResult {
    at_least(a, 3, "at least 3")?;
    let n = a.len();
    let default = &a[n - 2];
    let mut cur = map_arg(&a[n - 1], "the last argument")?;
    let path = &a[..n - 2];
    for (i, k) in path.iter().enumerate() {
        let k = st(k, "each key")?;
        match cur.get(k) {
            None => return Ok(default.clone()),
            Some(v) if i + 1 == path.len() => return Ok(v.clone()),
            Some(Value::Map(m)) => cur = m,
            Some(_) => return Ok(default.clone()),
        }
    }
    Ok(default.clone())
}

// ---------------------------------------------------------------------------------------
// Defaults and logic

fn f_default(_: &Ctx, a: &[Value]) -> FnResult {
    at_least(a, 1, "at least 1")?;
    match a.get(1) {
        Some(given) if !is_empty(given) => Ok(given.clone()),
        _ => Ok(a[0].clone()),
    }
}

fn f_empty(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(Value::Bool(is_empty(&a[0])))
}

fn f_coalesce(_: &Ctx, a: &[Value]) -> FnResult {
    Ok(a.iter()
        .find(|v| !is_empty(v))
        .cloned()
        .unwrap_or(Value::Nil))
}

fn f_all(_: &Ctx, a: &[Value]) -> FnResult {
    Ok(Value::Bool(a.iter().all(|v| !is_empty(v))))
}

fn f_any(_: &Ctx, a: &[Value]) -> FnResult {
    Ok(Value::Bool(a.iter().any(|v| !is_empty(v))))
}

fn f_ternary(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 3, "3")?;
    match &a[2] {
        Value::Bool(true) => Ok(a[0].clone()),
        Value::Bool(false) => Ok(a[1].clone()),
        other => Err(msg(format!(
            "the condition must be a bool, got {}",
            gofmt::go_type(other)
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Numbers

/// Sprig's `toInt64` (via spf13/cast), strict: a string must be a whole number.
fn to_i64(v: &Value) -> Result<i64, FnError> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::Uint(n) => i64::try_from(*n).map_err(|_| msg("number overflows int64")),
        Value::Float(f) if f.is_finite() && f.abs() < 9.2e18 => Ok(f.trunc() as i64),
        Value::Float(_) => Err(msg("number overflows int64")),
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::Nil => Ok(0),
        Value::String(s) => {
            let t = s.trim();
            let parsed = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                i64::from_str_radix(h, 16).ok()
            } else {
                t.parse::<i64>().ok()
            };
            parsed.ok_or_else(|| msg("the string is not a whole number"))
        }
        other => Err(msg(format!(
            "cannot convert {} to a number",
            gofmt::go_type(other)
        ))),
    }
}

fn f_atoi(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let s = st(&a[0], "the argument")?;
    s.parse::<i64>()
        .map(Value::Int)
        .map_err(|_| msg("the string is not a whole number"))
}

fn f_int(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(Value::Int(to_i64(&a[0])?))
}

fn f_float64(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(Value::Float(match &a[0] {
        Value::Float(f) => *f,
        Value::Int(n) => *n as f64,
        Value::Uint(n) => *n as f64,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Nil => 0.0,
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| msg("the string is not a number"))?,
        other => {
            return Err(msg(format!(
                "cannot convert {} to a number",
                gofmt::go_type(other)
            )));
        }
    }))
}

fn overflow() -> FnError {
    msg("integer overflow")
}

fn f_add(_: &Ctx, a: &[Value]) -> FnResult {
    let mut sum: i64 = 0;
    for v in a {
        sum = sum.checked_add(to_i64(v)?).ok_or_else(overflow)?;
    }
    Ok(Value::Int(sum))
}

fn f_add1(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(Value::Int(
        to_i64(&a[0])?.checked_add(1).ok_or_else(overflow)?,
    ))
}

fn f_mul(_: &Ctx, a: &[Value]) -> FnResult {
    at_least(a, 1, "at least 1")?;
    let mut p: i64 = 1;
    for v in a {
        p = p.checked_mul(to_i64(v)?).ok_or_else(overflow)?;
    }
    Ok(Value::Int(p))
}

fn binop(a: &[Value], op: fn(i64, i64) -> Option<i64>, what: &str) -> FnResult {
    arity(a, 2, "2")?;
    let x = to_i64(&a[0])?;
    let y = to_i64(&a[1])?;
    if y == 0 && (what == "div" || what == "mod") {
        return Err(msg("integer divide by zero"));
    }
    op(x, y).map(Value::Int).ok_or_else(overflow)
}

fn f_sub(_: &Ctx, a: &[Value]) -> FnResult {
    binop(a, i64::checked_sub, "sub")
}

fn f_div(_: &Ctx, a: &[Value]) -> FnResult {
    binop(a, i64::checked_div, "div")
}

fn f_mod(_: &Ctx, a: &[Value]) -> FnResult {
    binop(a, i64::checked_rem, "mod")
}

fn f_max(_: &Ctx, a: &[Value]) -> FnResult {
    at_least(a, 1, "at least 1")?;
    let mut m = to_i64(&a[0])?;
    for v in &a[1..] {
        m = m.max(to_i64(v)?);
    }
    Ok(Value::Int(m))
}

fn f_min(_: &Ctx, a: &[Value]) -> FnResult {
    at_least(a, 1, "at least 1")?;
    let mut m = to_i64(&a[0])?;
    for v in &a[1..] {
        m = m.min(to_i64(v)?);
    }
    Ok(Value::Int(m))
}

fn f_until(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let n = to_i64(&a[0])?;
    let len = n.unsigned_abs() as usize;
    checked_len(ctx, len)?;
    let step = if n < 0 { -1 } else { 1 };
    Ok(list(
        (0..len as i64).map(|i| Value::Int(i * step)).collect(),
    ))
}

// ---------------------------------------------------------------------------------------
// Regular expressions (Go's RE2 syntax; the `regex` crate is linear-time)

fn re(pat: &str) -> Result<regex::Regex, FnError> {
    regex::RegexBuilder::new(pat)
        .size_limit(1 << 20)
        .build()
        .map_err(|_| msg("invalid regular expression"))
}

fn f_regex_match(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    Ok(Value::Bool(
        re(st(&a[0], "the pattern")?)?.is_match(st(&a[1], "the string")?),
    ))
}

fn f_regex_find(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let r = re(st(&a[0], "the pattern")?)?;
    Ok(string(
        r.find(st(&a[1], "the string")?)
            .map(|m| m.as_str())
            .unwrap_or(""),
    ))
}

fn f_regex_find_all(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 3, "3")?;
    let r = re(st(&a[0], "the pattern")?)?;
    let s = st(&a[1], "the string")?;
    let n = int_arg(&a[2], "the count")?;
    let limit = if n < 0 { usize::MAX } else { n as usize };
    let found: Vec<Value> = r
        .find_iter(s)
        .take(limit.min(ctx.max_items + 1))
        .map(|m| string(m.as_str()))
        .collect();
    checked_len(ctx, found.len())?;
    Ok(list(found))
}

fn regex_replace(ctx: &Ctx, a: &[Value], literal: bool) -> FnResult {
    arity(a, 3, "3")?;
    let r = re(st(&a[0], "the pattern")?)?;
    let s = st(&a[1], "the string")?;
    let repl = st(&a[2], "the replacement")?;
    // Bound before building: each match grows the string by at most the expanded
    // replacement, which is at most repl.len() + s.len() per `$n` (bounded below).
    let matches = r.find_iter(s).count();
    let per = if literal {
        repl.len()
    } else {
        repl.len() + repl.matches('$').count().saturating_mul(s.len())
    };
    if s.len().saturating_add(per.saturating_mul(matches)) > ctx.max_value {
        return Err(FnError::TooLarge);
    }
    Ok(string(if literal {
        r.replace_all(s, regex::NoExpand(repl)).into_owned()
    } else {
        r.replace_all(s, repl).into_owned()
    }))
}

fn f_regex_replace_all(ctx: &Ctx, a: &[Value]) -> FnResult {
    regex_replace(ctx, a, false)
}

fn f_regex_replace_all_literal(ctx: &Ctx, a: &[Value]) -> FnResult {
    regex_replace(ctx, a, true)
}

fn f_regex_split(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 3, "3")?;
    let r = re(st(&a[0], "the pattern")?)?;
    let s = st(&a[1], "the string")?;
    let n = int_arg(&a[2], "the count")?;
    let parts: Vec<&str> = if n < 0 {
        r.split(s).take(ctx.max_items + 1).collect()
    } else if n == 0 {
        Vec::new()
    } else {
        r.splitn(s, n as usize).take(ctx.max_items + 1).collect()
    };
    checked_len(ctx, parts.len())?;
    Ok(list(parts.into_iter().map(string).collect()))
}

fn f_regex_quote_meta(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(string(regex::escape(st(&a[0], "the argument")?)))
}

// ---------------------------------------------------------------------------------------
// Paths (Go's `path` package)

fn f_base(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let p = st(&a[0], "the path")?;
    if p.is_empty() {
        return Ok(string("."));
    }
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return Ok(string("/"));
    }
    Ok(string(t.rsplit('/').next().unwrap_or(t)))
}

fn f_ext(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let p = st(&a[0], "the path")?;
    let last = p.rsplit('/').next().unwrap_or(p);
    Ok(string(last.rfind('.').map(|i| &last[i..]).unwrap_or("")))
}

fn f_is_abs(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    Ok(Value::Bool(st(&a[0], "the path")?.starts_with('/')))
}

// ---------------------------------------------------------------------------------------
// Go builtins replaced (binary-aware and capped)

fn f_len(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    match &a[0] {
        Value::String(s) => Ok(Value::Int(bytes::byte_len(s) as i64)),
        Value::List(l) => Ok(Value::Int(l.len() as i64)),
        Value::Map(m) => Ok(Value::Int(m.len() as i64)),
        other => Err(msg(format!(
            "cannot take the length of type {}",
            gofmt::go_type(other)
        ))),
    }
}

fn f_print(ctx: &Ctx, a: &[Value]) -> FnResult {
    Ok(string(gofmt::sprint(a, ctx.max_value)?))
}

fn f_println(ctx: &Ctx, a: &[Value]) -> FnResult {
    Ok(string(gofmt::sprintln(a, ctx.max_value)?))
}

fn f_printf(ctx: &Ctx, a: &[Value]) -> FnResult {
    at_least(a, 1, "at least 1")?;
    let f = st(&a[0], "the format")?;
    Ok(string(gofmt::sprintf(f, &a[1..], ctx.max_value)?))
}

/// Go's escapers evaluate their arguments as `fmt.Sprint` would.
fn escaper_input(ctx: &Ctx, a: &[Value]) -> Result<String, FnError> {
    match a {
        [Value::String(s)] => Ok(s.to_string()),
        _ => Ok(gofmt::sprint(a, ctx.max_value)?),
    }
}

fn escaped(ctx: &Ctx, input: &str, f: fn(&str) -> String) -> FnResult {
    // The input is within the value limit; an escaper grows it by a bounded factor, and the
    // result is checked like every other.
    let out = f(input);
    if out.len() > ctx.max_value {
        return Err(FnError::TooLarge);
    }
    Ok(string(out))
}

fn f_html(ctx: &Ctx, a: &[Value]) -> FnResult {
    let s = escaper_input(ctx, a)?;
    escaped(ctx, &s, gotmpl::html_escape)
}

fn f_js(ctx: &Ctx, a: &[Value]) -> FnResult {
    let s = escaper_input(ctx, a)?;
    escaped(ctx, &s, gotmpl::js_escape)
}

fn f_urlquery(ctx: &Ctx, a: &[Value]) -> FnResult {
    let s = escaper_input(ctx, a)?;
    escaped(ctx, &s, gotmpl::url_encode)
}

/// Go's `slice`: strings are sliced by bytes (binary-safe), lists by elements.
fn f_slice(_: &Ctx, a: &[Value]) -> FnResult {
    if a.is_empty() || a.len() > 4 {
        return Err(FnError::Args {
            expected: "1 to 4",
            got: a.len(),
        });
    }
    let idx: Vec<i64> = a[1..]
        .iter()
        .map(|v| int_arg(v, "each index"))
        .collect::<Result<_, _>>()?;
    match &a[0] {
        Value::String(s) => {
            if idx.len() == 3 {
                return Err(msg("cannot 3-index slice a string"));
            }
            let raw = bytes::to_bytes(s);
            let from = idx.first().copied().unwrap_or(0);
            let to = idx.get(1).copied().unwrap_or(raw.len() as i64);
            if from < 0 || to < from || to > raw.len() as i64 {
                return Err(msg("index out of range"));
            }
            Ok(from_raw(&raw[from as usize..to as usize]))
        }
        Value::List(l) => {
            if idx.len() == 3 {
                return Err(msg("3-index slices are not supported"));
            }
            let from = idx.first().copied().unwrap_or(0);
            let to = idx.get(1).copied().unwrap_or(l.len() as i64);
            if from < 0 || to < from || to > l.len() as i64 {
                return Err(msg("index out of range"));
            }
            Ok(list(l[from as usize..to as usize].to_vec()))
        }
        other => Err(msg(format!("cannot slice type {}", gofmt::go_type(other)))),
    }
}

// ---------------------------------------------------------------------------------------
// PEM and JWK (ESO's own functions; see `pki`)

fn pki_err(e: pki::PkiError) -> FnError {
    msg(e.to_string())
}

/// A string result that may be a private key: our copy of its text is wiped after the
/// engine's value is made from it.
fn secret_string(raw: &[u8]) -> Value {
    let text = zeroize::Zeroizing::new(bytes::from_bytes(raw));
    Value::String(Arc::from(text.as_str()))
}

fn f_jwk_public_key_pem(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let json = zeroize::Zeroizing::new(bytes::to_bytes(st(&a[0], "the JWK")?));
    pki::jwk_public_key_pem(&json)
        .map(|pem| from_raw(&pem))
        .map_err(pki_err)
}

fn f_jwk_private_key_pem(_: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let json = zeroize::Zeroizing::new(bytes::to_bytes(st(&a[0], "the JWK")?));
    pki::jwk_private_key_pem(&json)
        .map(|pem| secret_string(&pem))
        .map_err(pki_err)
}

fn f_filter_pem(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let kind = bytes::to_bytes(st(&a[0], "the PEM type")?);
    let input = zeroize::Zeroizing::new(bytes::to_bytes(st(&a[1], "the input")?));
    pki::filter_pem(&kind, &input, ctx.max_value)
        .map(|pem| secret_string(&pem))
        .map_err(pki_err)
}

fn f_filter_cert_chain(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 2, "2")?;
    let kind = bytes::to_bytes(st(&a[0], "the certificate type")?);
    let input = zeroize::Zeroizing::new(bytes::to_bytes(st(&a[1], "the input")?));
    pki::filter_cert_chain(&kind, &input, ctx.max_value)
        .map(|pem| from_raw(&pem))
        .map_err(pki_err)
}

fn f_cert_sans(ctx: &Ctx, a: &[Value]) -> FnResult {
    arity(a, 1, "1")?;
    let input = zeroize::Zeroizing::new(bytes::to_bytes(st(&a[0], "the input")?));
    let sans = pki::cert_sans(&input).map_err(pki_err)?;
    checked_len(ctx, sans.len())?;
    Ok(list(sans.into_iter().map(string).collect()))
}

/// Every function of the engine by name, with Go's own builtins that gotmpl keeps
/// (`and or not eq ne lt le gt ge call`), `index` and `fail` (registered per render) in
/// [`BUILTIN_NAMES`]/[`PER_RENDER_NAMES`].
pub(crate) const FUNCS: &[(&str, Func)] = &[
    // strings
    ("upper", f_upper),
    ("lower", f_lower),
    ("trim", f_trim),
    ("trimAll", f_trim_all),
    ("trimall", f_trim_all),
    ("trimPrefix", f_trim_prefix),
    ("trimSuffix", f_trim_suffix),
    ("contains", f_contains),
    ("hasPrefix", f_has_prefix),
    ("hasSuffix", f_has_suffix),
    ("replace", f_replace),
    ("repeat", f_repeat),
    ("nospace", f_nospace),
    ("substr", f_substr),
    ("trunc", f_trunc),
    ("cat", f_cat),
    ("quote", f_quote),
    ("squote", f_squote),
    ("indent", f_indent),
    ("nindent", f_nindent),
    ("toString", f_to_string),
    ("split", f_split),
    ("splitn", f_splitn),
    ("splitList", f_split_list),
    ("join", f_join),
    ("toStrings", f_to_strings),
    ("sortAlpha", f_sort_alpha),
    // encoding
    ("b64enc", f_b64enc),
    ("b64dec", f_b64dec),
    ("b32enc", f_b32enc),
    ("b32dec", f_b32dec),
    ("hexdec", f_hexdec),
    ("sha1sum", f_sha1sum),
    ("sha256sum", f_sha256sum),
    ("htpasswd", f_htpasswd),
    ("sha512sum", f_sha512sum),
    // JSON / YAML
    ("toJson", f_to_json),
    ("mustToJson", f_to_json),
    ("toRawJson", f_to_raw_json),
    ("mustToRawJson", f_to_raw_json),
    ("toPrettyJson", f_to_pretty_json),
    ("mustToPrettyJson", f_to_pretty_json),
    ("fromJson", f_from_json),
    ("mustFromJson", f_from_json),
    ("toYaml", f_to_yaml),
    ("fromYaml", f_from_yaml),
    // lists and dicts
    ("list", f_list),
    ("tuple", f_list),
    ("append", f_append),
    ("push", f_append),
    ("mustAppend", f_append),
    ("mustPush", f_append),
    ("prepend", f_prepend),
    ("mustPrepend", f_prepend),
    ("concat", f_concat),
    ("first", f_first),
    ("mustFirst", f_first),
    ("last", f_last),
    ("mustLast", f_last),
    ("rest", f_rest),
    ("mustRest", f_rest),
    ("initial", f_initial),
    ("mustInitial", f_initial),
    ("reverse", f_reverse),
    ("mustReverse", f_reverse),
    ("uniq", f_uniq),
    ("mustUniq", f_uniq),
    ("compact", f_compact),
    ("mustCompact", f_compact),
    ("has", f_has),
    ("mustHas", f_has),
    ("without", f_without),
    ("mustWithout", f_without),
    ("dict", f_dict),
    ("get", f_get),
    ("hasKey", f_has_key),
    ("keys", f_keys),
    ("values", f_values),
    ("pick", f_pick),
    ("omit", f_omit),
    ("dig", f_dig),
    // defaults and logic
    ("default", f_default),
    ("empty", f_empty),
    ("coalesce", f_coalesce),
    ("all", f_all),
    ("any", f_any),
    ("ternary", f_ternary),
    // numbers
    ("atoi", f_atoi),
    ("int", f_int),
    ("int64", f_int),
    ("float64", f_float64),
    ("add", f_add),
    ("add1", f_add1),
    ("sub", f_sub),
    ("mul", f_mul),
    ("div", f_div),
    ("mod", f_mod),
    ("max", f_max),
    ("min", f_min),
    ("until", f_until),
    // regular expressions
    ("regexMatch", f_regex_match),
    ("mustRegexMatch", f_regex_match),
    ("regexFind", f_regex_find),
    ("mustRegexFind", f_regex_find),
    ("regexFindAll", f_regex_find_all),
    ("mustRegexFindAll", f_regex_find_all),
    ("regexReplaceAll", f_regex_replace_all),
    ("mustRegexReplaceAll", f_regex_replace_all),
    ("regexReplaceAllLiteral", f_regex_replace_all_literal),
    ("mustRegexReplaceAllLiteral", f_regex_replace_all_literal),
    ("regexSplit", f_regex_split),
    ("mustRegexSplit", f_regex_split),
    ("regexQuoteMeta", f_regex_quote_meta),
    // paths
    ("base", f_base),
    ("ext", f_ext),
    ("isAbs", f_is_abs),
    // Go builtins replaced by binary-aware, capped versions
    ("len", f_len),
    ("print", f_print),
    ("printf", f_printf),
    ("println", f_println),
    ("html", f_html),
    ("js", f_js),
    ("urlquery", f_urlquery),
    ("slice", f_slice),
    // PEM and JWK (ESO)
    ("jwkPublicKeyPem", f_jwk_public_key_pem),
    ("jwkPrivateKeyPem", f_jwk_private_key_pem),
    ("filterPEM", f_filter_pem),
    ("filterCertChain", f_filter_cert_chain),
    ("certSANs", f_cert_sans),
];

/// Go builtins that gotmpl implements and we keep as they are (they only compare, test or
/// return their arguments: nothing grows, no value reaches an error).
pub(crate) const BUILTIN_NAMES: &[&str] = &[
    "and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "call",
];

/// Functions registered for each render (they capture that render's state).
pub(crate) const PER_RENDER_NAMES: &[&str] = &["index", "fail"];

/// `index m k…` as Go: a missing key of a data map (Go's `map[string]string`, listed in
/// `string_maps`) gives `""`; of any other map (from `fromJson`, `dict`) nil.
pub(crate) fn index(string_maps: &[Arc<Map>], args: &[Value]) -> Result<Value, FnError> {
    at_least(args, 1, "at least 1")?;
    let mut cur = args[0].clone();
    for k in &args[1..] {
        cur = match (&cur, k) {
            (Value::Map(m), Value::String(key)) => match m.get(&**key) {
                Some(v) => v.clone(),
                None if string_maps.iter().any(|r| Arc::ptr_eq(m, r)) => string(""),
                None => Value::Nil,
            },
            (Value::Map(_), other) => {
                return Err(msg(format!(
                    "a map key must be a string, got {}",
                    gofmt::go_type(other)
                )));
            }
            (Value::List(l), _) => {
                let i = int_arg(k, "a list index")?;
                usize::try_from(i)
                    .ok()
                    .and_then(|i| l.get(i))
                    .cloned()
                    .ok_or_else(|| msg("index out of range"))?
            }
            (Value::String(s), _) => {
                let i = int_arg(k, "a string index")?;
                let raw = bytes::to_bytes(s);
                usize::try_from(i)
                    .ok()
                    .and_then(|i| raw.get(i))
                    .map(|b| Value::Int(i64::from(*b)))
                    .ok_or_else(|| msg("index out of range"))?
            }
            (Value::Nil, _) => return Err(msg("index of untyped nil")),
            (other, _) => {
                return Err(msg(format!("cannot index type {}", gofmt::go_type(other))));
            }
        };
    }
    Ok(cur)
}

/// `fail MSG`: stops the render. The message is shown only when it is a string literal of
/// the template (so a value passed to `fail` never reaches an error).
pub(crate) fn fail(literals: &BTreeSet<String>, args: &[Value]) -> Result<Value, FnError> {
    arity(args, 1, "1")?;
    match &args[0] {
        Value::String(s) if literals.contains(&**s) => Err(msg(s.to_string())),
        _ => Err(msg(
            "(message not shown: it is not a string literal of the template)",
        )),
    }
}

/// Whether `name` is a function of this engine.
pub(crate) fn is_supported(name: &str) -> bool {
    BUILTIN_NAMES.contains(&name)
        || PER_RENDER_NAMES.contains(&name)
        || FUNCS.iter().any(|(n, _)| *n == name)
}
