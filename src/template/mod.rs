//! ESO's `target.template` engine (engine v2: Go `text/template` with Sprig and ESO's
//! functions), in Rust, for the ExternalSecret reconciler and `esi-cli` file templates.
//!
//! Built on the `gotmpl` crate (parser and evaluator, cross-checked against Go) behind
//! this wrapper; no gotmpl type is part of this API. The wrapper closes the gaps between
//! gotmpl and ESO's engine (issue 11 research, gaps G1–G7):
//! - an unknown function is a parse-time error naming it, even in a branch that never runs;
//! - values are bytes, passed through byte-exact (`bytes`), and `len`, `b64enc`, `sha256sum`
//!   … count and read bytes;
//! - `index . "missing"` is `""` on the data map, `{{ .missing }}` an error
//!   (`missingkey=error`);
//! - Go's number formatting in `toString`, `toJson`, `printf`;
//! - limits on the source, the tree, range iterations, every function result and the output
//!   ([`TemplateLimits`]);
//! - errors name the template (ESO: `unable to parse template at key K`), the function and,
//!   for parse errors, line:column; they never hold a value.
//!
//! The function list, the differences from ESO and the limits are in docs/templates.md.

mod bytes;
mod check;
mod funcs;
mod gofmt;
mod pki;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine as _;
use gotmpl::{MissingKey, Template, Value};

use funcs::{Ctx, FUNCS, OUR_ERROR};

/// Bounds on one render. Every template input is bounded (project rule); the defaults fit
/// configuration files and Secret values with room to spare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateLimits {
    /// Largest template source, in bytes (default 64 KiB).
    pub max_source_bytes: usize,
    /// Most nodes in the parsed template (actions, expressions; default 10 000).
    pub max_nodes: usize,
    /// Most `range` iterations in one render, all loops together (default 10 000).
    pub max_range_iterations: u64,
    /// Largest rendered output, in bytes (default 1 MiB).
    pub max_output_bytes: usize,
    /// Largest string any function may return, in bytes (default 1 MiB).
    pub max_value_bytes: usize,
    /// Most elements in a list or map any function may return (default 10 000).
    pub max_items: usize,
    /// Deepest nesting of lists and maps a function may build (`list`, `dict`, `append`,
    /// `fromJson` …; default 64): printing, serializing and dropping values recurse.
    pub max_depth: usize,
    /// Most work in one render: the sizes (bytes of strings, elements of lists and maps)
    /// of every function's arguments and result, summed (default 64 Mi). Bounds the time a
    /// loop of expensive calls can take.
    pub max_work: usize,
}

impl Default for TemplateLimits {
    fn default() -> Self {
        TemplateLimits {
            max_source_bytes: 64 * 1024,
            max_nodes: 10_000,
            max_range_iterations: 10_000,
            max_output_bytes: 1024 * 1024,
            max_value_bytes: 1024 * 1024,
            max_items: 10_000,
            max_depth: 64,
            max_work: 64 * 1024 * 1024,
        }
    }
}

/// How an [`Engine`] parses and bounds templates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSettings {
    /// Left action delimiter (ESO's `--template-left-delimiter`; default `{{`).
    pub left_delimiter: String,
    /// Right action delimiter (ESO's `--template-right-delimiter`; default `}}`).
    pub right_delimiter: String,
    /// Size bounds.
    pub limits: TemplateLimits,
}

impl Default for TemplateSettings {
    fn default() -> Self {
        TemplateSettings {
            left_delimiter: "{{".into(),
            right_delimiter: "}}".into(),
            limits: TemplateLimits::default(),
        }
    }
}

/// Why a template could not be parsed or rendered. Messages name the template (`name`:
/// ESO's key), the function and, for parse errors, line:column; never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The settings cannot work (an empty delimiter, a zero limit).
    #[error("invalid template settings: {0}")]
    Settings(&'static str),
    /// The source is larger than [`TemplateLimits::max_source_bytes`].
    #[error(
        "unable to parse template at key {name}: the template is {size} bytes, over the limit of {limit}"
    )]
    SourceTooLarge {
        /// The template's name.
        name: String,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A syntax error.
    #[error("unable to parse template at key {name}: {line}:{col}: {message}")]
    Parse {
        /// The template's name.
        name: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (characters).
        col: usize,
        /// What is wrong (from the parser; it may quote the template, never a value).
        message: String,
    },
    /// The template names a function this engine does not have (Go: `function "X" not
    /// defined`), wherever it is, even in a branch that never runs.
    #[error(
        "unable to parse template at key {name}: {line}:{col}: function \"{function}\" is not supported"
    )]
    UnsupportedFunction {
        /// The template's name.
        name: String,
        /// The function.
        function: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (characters).
        col: usize,
    },
    /// The parsed tree has more than [`TemplateLimits::max_nodes`] nodes.
    #[error("unable to parse template at key {name}: more than {limit} nodes")]
    TooManyNodes {
        /// The template's name.
        name: String,
        /// The limit.
        limit: usize,
    },
    /// Rendering failed (a missing key, a function's error, a type error …).
    #[error("unable to execute template at key {name}: {message}")]
    Execute {
        /// The template's name.
        name: String,
        /// What went wrong: names a key of the template, a function or a type; no value.
        message: String,
    },
    /// The output would pass [`TemplateLimits::max_output_bytes`].
    #[error("unable to execute template at key {name}: the output exceeds {limit} bytes")]
    OutputTooLarge {
        /// The template's name.
        name: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// More `range` iterations than [`TemplateLimits::max_range_iterations`].
    #[error("unable to execute template at key {name}: more than {limit} range iterations")]
    RangeLimit {
        /// The template's name.
        name: String,
        /// The limit.
        limit: u64,
    },
    /// KeysAndValues scope: the output is not a YAML map of scalars.
    #[error("unable to unmarshal rendered template at key {name}: {message}")]
    KeysAndValues {
        /// The template's name.
        name: String,
        /// What is wrong: a position or a key, never a value.
        message: String,
    },
    /// `valuesDecodingStrategy`: a value is not in the encoding asked for (ESO: `failed to
    /// decode rendered template value for key K`).
    #[error("failed to decode rendered template value for key {key}: not valid {strategy}")]
    Decode {
        /// The key whose value failed.
        key: String,
        /// The strategy (`Base64`, `Base64URL`).
        strategy: &'static str,
    },
}

/// ESO's `valuesDecodingStrategy` of a `templateFrom` entry (values only, never keys).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodingStrategy {
    /// The value as rendered (ESO's default).
    #[default]
    None,
    /// Standard base64 with padding (Go's `base64.StdEncoding`).
    Base64,
    /// URL-safe base64 with padding (Go's `base64.URLEncoding`).
    Base64Url,
    /// Base64, else Base64URL, else the value as it is (ESO's `Auto`).
    Auto,
}

/// A key of a KeysAndValues output as an error may show it: the key when the template
/// `tpl` spells it out, else a placeholder (a rendered key can be a value).
pub fn key_label(tpl: &str, key: &str) -> String {
    if !key.is_empty() && tpl.contains(key) {
        key.to_string()
    } else {
        "(a key rendered from the data)".to_string()
    }
}

/// [`decode_value`] of a value rendered by template `tpl`: the error names `key` only when
/// the template spells it out ([`key_label`]).
///
/// # Errors
/// [`TemplateError::Decode`].
pub fn decode_value_in(
    strategy: DecodingStrategy,
    tpl: &str,
    key: &str,
    value: &[u8],
) -> Result<Vec<u8>, TemplateError> {
    decode_value(strategy, &key_label(tpl, key), value)
}

/// Decodes one rendered value as ESO's `valuesDecodingStrategy` does (source: ESO
/// `runtime/esutils` `Decode`). `key` is only for the error, which holds no value.
pub fn decode_value(
    strategy: DecodingStrategy,
    key: &str,
    value: &[u8],
) -> Result<Vec<u8>, TemplateError> {
    // Go's decoders skip CR and LF and accept non-zero trailing bits (not `Strict`).
    let text: Vec<u8> = value
        .iter()
        .copied()
        .filter(|b| *b != b'\r' && *b != b'\n')
        .collect();
    let std = funcs::b64_engine(&base64::alphabet::STANDARD);
    let url = funcs::b64_engine(&base64::alphabet::URL_SAFE);
    let fail = |strategy| TemplateError::Decode {
        key: key.to_string(),
        strategy,
    };
    match strategy {
        DecodingStrategy::None => Ok(value.to_vec()),
        DecodingStrategy::Base64 => std.decode(&text).map_err(|_| fail("Base64")),
        DecodingStrategy::Base64Url => url.decode(&text).map_err(|_| fail("Base64URL")),
        DecodingStrategy::Auto => Ok(std
            .decode(&text)
            .or_else(|_| url.decode(&text))
            .unwrap_or_else(|_| value.to_vec())),
    }
}

struct Inner {
    settings: TemplateSettings,
    ctx: Ctx,
}

/// The template engine: settings and limits, shared cheaply (`Clone` is an
/// `Arc` clone). Each call parses its template again (as ESO does on every reconcile).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// The output writer: fails once the limit would be passed.
struct Output {
    buf: String,
    limit: usize,
    overflow: bool,
}

impl std::fmt::Write for Output {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.buf.len().saturating_add(s.len()) > self.limit {
            self.overflow = true;
            return Err(std::fmt::Error);
        }
        self.buf.push_str(s);
        Ok(())
    }
}

/// Execution errors of gotmpl whose text holds no value (types, names from the template).
const SAFE_EXEC_PREFIXES: &[&str] = &[
    "can't evaluate field ",
    "can't give argument to non-function ",
    "nil is not a command",
    "unexpected break",
    "unexpected continue",
    "cannot assign ",
    "incompatible types for comparison",
    "non-comparable type",
    "invalid type for comparison",
    "call of nil",
    "call: non-function value of type",
    "cannot index ",
    "index of untyped nil",
];

impl Engine {
    /// An engine with these settings.
    ///
    /// # Errors
    /// [`TemplateError::Settings`] for an empty delimiter or a zero limit.
    pub fn new(settings: TemplateSettings) -> Result<Engine, TemplateError> {
        if settings.left_delimiter.is_empty() || settings.right_delimiter.is_empty() {
            return Err(TemplateError::Settings("a delimiter is empty"));
        }
        let l = &settings.limits;
        if l.max_source_bytes == 0
            || l.max_nodes == 0
            || l.max_range_iterations == 0
            || l.max_output_bytes == 0
            || l.max_value_bytes == 0
            || l.max_items == 0
            || l.max_depth == 0
            || l.max_work == 0
        {
            return Err(TemplateError::Settings("a limit is zero"));
        }
        let ctx = Ctx {
            max_value: l.max_value_bytes,
            max_items: l.max_items,
            max_depth: l.max_depth,
            max_work: l.max_work,
        };
        Ok(Engine {
            inner: Arc::new(Inner { settings, ctx }),
        })
    }

    /// The settings this engine was built with.
    pub fn settings(&self) -> &TemplateSettings {
        &self.inner.settings
    }

    /// Parses `tpl` and checks it (size, syntax, functions, tree size) without rendering:
    /// what `esi-cli` runs at start so that a broken template fails before anything is
    /// injected.
    ///
    /// # Errors
    /// [`TemplateError::SourceTooLarge`], [`TemplateError::Parse`],
    /// [`TemplateError::UnsupportedFunction`], [`TemplateError::TooManyNodes`].
    pub fn check(&self, name: &str, tpl: &str) -> Result<(), TemplateError> {
        self.prepare(name, tpl).map(|_| ())
    }

    /// ESO's "Values" scope: renders `tpl` over `data` (key → raw bytes; `{{ .key }}`) and
    /// returns the output bytes.
    ///
    /// # Errors
    /// Any [`TemplateError`] but `Settings`, `KeysAndValues` and `Decode`.
    pub fn render(
        &self,
        name: &str,
        tpl: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Vec<u8>, TemplateError> {
        let root: BTreeMap<Arc<str>, Value> = data
            .iter()
            .map(|(k, v)| {
                (
                    Arc::from(bytes::from_bytes(k.as_bytes())),
                    Value::String(Arc::from(bytes::from_bytes(v))),
                )
            })
            .collect();
        let root = Arc::new(root);
        self.render_value(name, tpl, root.clone(), vec![root])
    }

    /// Renders over a map whose values are any template value (e.g. a map per secret, as
    /// `esi-cli` file templates see them). Values built with [`TemplateData`].
    ///
    /// # Errors
    /// As [`Engine::render`].
    pub fn render_data(
        &self,
        name: &str,
        tpl: &str,
        data: &TemplateData,
    ) -> Result<Vec<u8>, TemplateError> {
        let (root, string_maps) = data.root();
        self.render_value(name, tpl, root, string_maps)
    }

    /// ESO's "KeysAndValues" scope: renders, then reads the output as a YAML map whose
    /// scalar values become strings (`true` → `"true"`, `5` → `"5"`, null → `""`), as ESO
    /// does with `sigs.k8s.io/yaml` into `map[string]string`. Keys are never decoded.
    ///
    /// # Errors
    /// As [`Engine::render`], and [`TemplateError::KeysAndValues`] when the output is not a
    /// YAML map of scalars.
    pub fn render_keys_and_values(
        &self,
        name: &str,
        tpl: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<BTreeMap<String, Vec<u8>>, TemplateError> {
        let out = self.render(name, tpl, data)?;
        parse_keys_and_values(name, tpl, &out)
    }

    /// Which entries of the root data `tpl` reads: `.name…`, `$.name…` and
    /// `index . "name"` outside `range`/`with` bodies and `define`s. `esi-cli` fetches
    /// exactly these secrets for a file template.
    ///
    /// # Errors
    /// As [`Engine::check`].
    pub fn data_refs(&self, name: &str, tpl: &str) -> Result<DataRefs, TemplateError> {
        self.prepare(name, tpl)?;
        let s = &self.inner.settings;
        let parser = gotmpl::parse::Parser::with_name(
            Some(name),
            tpl,
            &s.left_delimiter,
            &s.right_delimiter,
        )
        .map_err(|e| parse_error(name, e))?;
        let (tree, defines) = parser.parse().map_err(|e| parse_error(name, e))?;
        let mut roots = check::Roots::new(tpl);
        roots.list(&tree, true, false);
        for d in &defines {
            roots.list(&d.body, false, true);
        }
        Ok(DataRefs {
            names: roots.names,
            whole_data_at: roots.whole,
        })
    }

    fn prepare(&self, name: &str, tpl: &str) -> Result<BTreeSet<String>, TemplateError> {
        let s = &self.inner.settings;
        let limits = &s.limits;
        if tpl.len() > limits.max_source_bytes {
            return Err(TemplateError::SourceTooLarge {
                name: name.to_string(),
                size: tpl.len(),
                limit: limits.max_source_bytes,
            });
        }
        let parser = gotmpl::parse::Parser::with_name(
            Some(name),
            tpl,
            &s.left_delimiter,
            &s.right_delimiter,
        )
        .map_err(|e| parse_error(name, e))?;
        let (tree, defines) = parser.parse().map_err(|e| parse_error(name, e))?;
        check::check_blocks(tpl, &s.left_delimiter, &s.right_delimiter).map_err(
            |(message, line, col)| TemplateError::Parse {
                name: name.to_string(),
                line,
                col,
                message,
            },
        )?;
        // Characters of the escape range would come out as raw bytes (see `bytes`).
        if let Some(offset) = tpl.find(|c: char| u32::from(c) >= 0x10_FF80) {
            let before = &tpl[..offset];
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            return Err(TemplateError::Parse {
                name: name.to_string(),
                line: before.matches('\n').count() + 1,
                col: before[start..].chars().count() + 1,
                message: "characters U+10FF80 to U+10FFFF are reserved".into(),
            });
        }
        let mut walk = check::Walk::new(tpl, limits.max_nodes, funcs::is_supported);
        walk.list(&tree);
        for d in &defines {
            walk.list(&d.body);
        }
        match walk.finding.take() {
            Some(check::Finding::Unsupported {
                function,
                line,
                col,
            }) => Err(TemplateError::UnsupportedFunction {
                name: name.to_string(),
                function,
                line,
                col,
            }),
            Some(check::Finding::TooManyNodes) => Err(TemplateError::TooManyNodes {
                name: name.to_string(),
                limit: limits.max_nodes,
            }),
            None => Ok(walk.literals),
        }
    }

    fn render_value(
        &self,
        name: &str,
        tpl: &str,
        root: Arc<BTreeMap<Arc<str>, Value>>,
        string_maps: Vec<Arc<BTreeMap<Arc<str>, Value>>>,
    ) -> Result<Vec<u8>, TemplateError> {
        let literals = Arc::new(self.prepare(name, tpl)?);
        let work: funcs::Work = Arc::default();
        let s = &self.inner.settings;
        let ctx = self.inner.ctx;
        let template = Template::new(name)
            .delims(&s.left_delimiter, &s.right_delimiter)
            .missing_key(MissingKey::Error)
            .max_range_iters(s.limits.max_range_iterations)
            .funcs(
                FUNCS
                    .iter()
                    .map(|(n, f)| (n.to_string(), funcs::wrap(n, ctx, *f, work.clone())))
                    .collect(),
            )
            .func("index", {
                // Charged like every other function: indexing a large string reads it.
                let work = work.clone();
                move |args: &[Value]| {
                    funcs::charge(&ctx, &work, args)
                        .and_then(|()| funcs::index(&string_maps, args))
                        .map_err(|e| funcs::to_gotmpl("index", &ctx, e))
                }
            })
            .func("fail", move |args: &[Value]| {
                funcs::fail(&literals, args).map_err(|e| funcs::to_gotmpl("fail", &ctx, e))
            })
            .parse(tpl)
            .map_err(|e| parse_error(name, e))?;
        let mut out = Output {
            buf: String::new(),
            limit: s.limits.max_output_bytes,
            overflow: false,
        };
        let result = template.execute_fmt(&mut out, &Value::Map(root));
        match result {
            Ok(()) => Ok(bytes::to_bytes(&out.buf)),
            Err(_) if out.overflow => Err(TemplateError::OutputTooLarge {
                name: name.to_string(),
                limit: s.limits.max_output_bytes,
            }),
            Err(e) => Err(self.exec_error(name, e)),
        }
    }

    fn exec_error(&self, name: &str, e: gotmpl::TemplateError) -> TemplateError {
        use gotmpl::TemplateError as G;
        let limits = &self.inner.settings.limits;
        let message = match e {
            G::RangeIterLimit => {
                return TemplateError::RangeLimit {
                    name: name.to_string(),
                    limit: limits.max_range_iterations,
                };
            }
            G::Exec(text) => match text.strip_prefix(OUR_ERROR) {
                Some(ours) => ours.to_string(),
                None if SAFE_EXEC_PREFIXES.iter().any(|p| text.starts_with(p)) => text,
                None if text.starts_with("can't use ") => {
                    "cannot range over this value with two variables".to_string()
                }
                None if text.starts_with("slice") => "slice: index out of range".to_string(),
                None => "the template could not be executed".to_string(),
            },
            // The key is a name written in the template (`.key`), not a value.
            G::MissingKey { key } => format!("map has no entry for key \"{key}\""),
            G::RecursionLimit => "recursion limit exceeded".to_string(),
            G::IndexOutOfRange { .. } => "index out of range".to_string(),
            G::TypeMismatch { expected, got } => {
                format!("type mismatch: expected {expected}, got {got}")
            }
            G::UndefinedFunction(f) => format!("function \"{f}\" is not supported"),
            G::UndefinedVariable(v) => format!("undefined variable: {v}"),
            G::UndefinedTemplate(t) => format!("no such template \"{t}\""),
            G::ArgCount {
                name: f,
                expected,
                got,
            } => format!(
                "error calling {f}: wrong number of arguments: expects {expected}, got {got}"
            ),
            G::NotIterable(t) => format!("range can't iterate over type {t}"),
            // A panic message could hold anything: only the function is named.
            G::FuncPanic { name: f, .. } => format!("error calling {f}: internal error"),
            G::Parse {
                line, col, message, ..
            }
            | G::Lex {
                line, col, message, ..
            } => {
                format!("{line}:{col}: {message}")
            }
            _ => "the template could not be executed".to_string(),
        };
        TemplateError::Execute {
            name: name.to_string(),
            message,
        }
    }
}

fn parse_error(name: &str, e: gotmpl::TemplateError) -> TemplateError {
    use gotmpl::TemplateError as G;
    match e {
        G::Parse {
            line, col, message, ..
        }
        | G::Lex {
            line, col, message, ..
        } => TemplateError::Parse {
            name: name.to_string(),
            line,
            col,
            message,
        },
        _ => TemplateError::Parse {
            name: name.to_string(),
            line: 0,
            col: 0,
            message: "the template could not be parsed".to_string(),
        },
    }
}

/// KeysAndValues: the rendered bytes as a YAML map of scalars, each value as a string.
fn parse_keys_and_values(
    name: &str,
    tpl: &str,
    out: &[u8],
) -> Result<BTreeMap<String, Vec<u8>>, TemplateError> {
    let err = |message: String| TemplateError::KeysAndValues {
        name: name.to_string(),
        message,
    };
    let text = std::str::from_utf8(out).map_err(|_| err("the output is not UTF-8 text".into()))?;
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    // Parse into generic values: the parser's error text could quote the output, so only
    // its position is shown.
    let doc: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| {
        err(match e.location() {
            Some(l) => format!(
                "the output is not valid YAML (line {}, column {})",
                l.line(),
                l.column()
            ),
            None => "the output is not valid YAML".to_string(),
        })
    })?;
    let map = match doc {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => return Ok(BTreeMap::new()),
        _ => return Err(err("the output is not a YAML map".into())),
    };
    let mut result = BTreeMap::new();
    for (k, v) in map {
        let value = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Null => String::new(),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => i.to_string(),
                (_, Some(u), _) => u.to_string(),
                (_, _, Some(f)) => gofmt::format_float_g(f),
                _ => n.to_string(),
            },
            _ => {
                return Err(err(format!(
                    "the value of key {:?} is not a string",
                    key_label(tpl, &k)
                )));
            }
        };
        result.insert(k, value.into_bytes());
    }
    Ok(result)
}

/// The entries of the root data a template reads (from [`Engine::data_refs`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataRefs {
    /// Entry names read by name.
    pub names: BTreeSet<String>,
    /// Where (line, column) the template uses the root data as a whole (`.` or `$` as a
    /// value: `range .`, `toJson .`, `template "t" .`), so that every entry may be read.
    pub whole_data_at: Option<(usize, usize)>,
}

/// Template data built from named maps: `.name.key` (e.g. `esi-cli` file templates, where
/// each secret is a map of its keys). Keys and values are bytes, passed through
/// byte-exact. Debug shows names and keys, never values.
#[derive(Clone, Default)]
pub struct TemplateData {
    entries: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for TemplateData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (name, entry) in &self.entries {
            match entry {
                Entry::Map(map) => m.entry(name, &map.keys().collect::<Vec<_>>()),
                Entry::Value(_) => m.entry(name, &"<value>"),
            };
        }
        m.finish()
    }
}

#[derive(Clone)]
enum Entry {
    Map(BTreeMap<String, Vec<u8>>),
    Value(Vec<u8>),
}

fn text_value(v: &[u8]) -> Value {
    Value::String(Arc::from(bytes::from_bytes(v)))
}

impl TemplateData {
    /// Empty data.
    pub fn new() -> Self {
        TemplateData::default()
    }

    /// Adds (or replaces) the map `name` (`.name.key`).
    pub fn insert(&mut self, name: &str, map: BTreeMap<String, Vec<u8>>) {
        self.entries.insert(name.to_string(), Entry::Map(map));
    }

    /// Adds (or replaces) the single value `name` (`.name`).
    pub fn insert_value(&mut self, name: &str, value: Vec<u8>) {
        self.entries.insert(name.to_string(), Entry::Value(value));
    }

    /// The root map, and the maps that stand for Go's `map[string]string` (where `index`
    /// of a missing key gives `""`).
    #[allow(clippy::type_complexity)]
    fn root(
        &self,
    ) -> (
        Arc<BTreeMap<Arc<str>, Value>>,
        Vec<Arc<BTreeMap<Arc<str>, Value>>>,
    ) {
        let mut string_maps = Vec::new();
        let root = self
            .entries
            .iter()
            .map(|(name, entry)| {
                let value = match entry {
                    Entry::Value(v) => text_value(v),
                    Entry::Map(map) => {
                        let inner: BTreeMap<Arc<str>, Value> = map
                            .iter()
                            .map(|(k, v)| {
                                (Arc::from(bytes::from_bytes(k.as_bytes())), text_value(v))
                            })
                            .collect();
                        let inner = Arc::new(inner);
                        string_maps.push(inner.clone());
                        Value::Map(inner)
                    }
                };
                (Arc::from(bytes::from_bytes(name.as_bytes())), value)
            })
            .collect();
        (Arc::new(root), string_maps)
    }
}
