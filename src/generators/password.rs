//! ESO's `Password` generator.
//!
//! ```yaml
//! spec:
//!   length: 24              # default 24
//!   digits: 6               # default 25% of length
//!   symbols: 6              # default 25% of length
//!   symbolCharacters: "-_$@"
//!   noUpper: false
//!   allowRepeat: false      # false: no character appears twice
//!   secretKeys: [password]  # one independent password per key
//!   encoding: raw           # raw | base64 | base64url | base32 | hex
//!   prefix: ""              # added after encoding
//!   suffix: ""
//! ```
//! Randomness: a ChaCha CSPRNG seeded from the operating system for every call.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use super::{
    BuildContext, GenerateContext, Generated, Generator, GeneratorConfigError, GeneratorError,
};

const KIND: &str = "Password";

const DEFAULT_LENGTH: u64 = 24;
/// Upper bounds keeping work and answers small.
const MAX_LENGTH: u64 = 4096;
const MAX_SYMBOL_CHARACTERS: usize = 256;
const MAX_SECRET_KEYS: usize = 64;
const MAX_AFFIX_LEN: usize = 256;

/// ESO's default symbol set (that of go-password).
const DEFAULT_SYMBOLS: &str = r#"~!@#$%^&*()_+`-={}|[]\:"<>?,./"#;
const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &str = "0123456789";

/// `spec` of a Password generator.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PasswordSpec {
    #[serde(default)]
    length: Option<u64>,
    #[serde(default)]
    digits: Option<u64>,
    #[serde(default)]
    symbols: Option<u64>,
    #[serde(default)]
    symbol_characters: Option<String>,
    #[serde(default)]
    no_upper: bool,
    #[serde(default)]
    allow_repeat: bool,
    #[serde(default)]
    secret_keys: Option<Vec<String>>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
}

/// Output encodings ESO offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Raw,
    Base64,
    Base64Url,
    Base32,
    Hex,
}

/// A validated Password generator.
#[derive(Debug)]
pub struct PasswordGenerator {
    digits: usize,
    symbols: usize,
    letters: usize,
    symbol_set: Vec<char>,
    letter_set: Vec<char>,
    allow_repeat: bool,
    secret_keys: Vec<String>,
    encoding: Encoding,
    prefix: String,
    suffix: String,
}

fn distinct(chars: &str) -> Vec<char> {
    let mut seen = BTreeSet::new();
    chars.chars().filter(|c| seen.insert(*c)).collect()
}

impl PasswordGenerator {
    /// Parses and validates the spec, so that generation cannot fail on it later.
    pub(crate) fn from_spec(
        ctx: &BuildContext<'_>,
        spec: &serde_json::Value,
    ) -> Result<Self, GeneratorConfigError> {
        let spec: PasswordSpec = ctx.parse(KIND, spec)?;
        let invalid = |reason: String| ctx.invalid(KIND, reason);
        let length = spec.length.unwrap_or(DEFAULT_LENGTH);
        if length == 0 || length > MAX_LENGTH {
            return Err(invalid(format!(
                "length must be between 1 and {MAX_LENGTH}"
            )));
        }
        let digits = spec.digits.unwrap_or(length / 4);
        let symbols = spec.symbols.unwrap_or(length / 4);
        if digits.saturating_add(symbols) > length {
            return Err(invalid("digits + symbols must not exceed length".into()));
        }
        // Bounded by MAX_LENGTH above, so these fit in usize.
        let (length, digits, symbols) = (length as usize, digits as usize, symbols as usize);
        let letters = length - digits - symbols;

        let symbol_chars = spec
            .symbol_characters
            .unwrap_or_else(|| DEFAULT_SYMBOLS.to_string());
        if symbol_chars.chars().count() > MAX_SYMBOL_CHARACTERS {
            return Err(invalid(format!(
                "symbolCharacters must hold at most {MAX_SYMBOL_CHARACTERS} characters"
            )));
        }
        if symbol_chars.chars().any(char::is_control) {
            return Err(invalid(
                "symbolCharacters must not hold control characters".into(),
            ));
        }
        let symbol_set = distinct(&symbol_chars);
        if symbols > 0 && symbol_set.is_empty() {
            return Err(invalid("symbols > 0 needs symbolCharacters".into()));
        }
        let letter_set: Vec<char> = if spec.no_upper {
            LOWER.chars().collect()
        } else {
            LOWER.chars().chain(UPPER.chars()).collect()
        };
        if !spec.allow_repeat {
            let total: BTreeSet<char> = DIGITS
                .chars()
                .chain(symbol_set.iter().copied())
                .chain(letter_set.iter().copied())
                .collect();
            if digits > DIGITS.len()
                || symbols > symbol_set.len()
                || letters > letter_set.len()
                || length > total.len()
            {
                return Err(invalid(
                    "too few distinct characters for this length without allowRepeat".into(),
                ));
            }
        }

        let secret_keys = spec
            .secret_keys
            .unwrap_or_else(|| vec!["password".to_string()]);
        if secret_keys.is_empty() || secret_keys.len() > MAX_SECRET_KEYS {
            return Err(invalid(format!(
                "secretKeys must hold 1 to {MAX_SECRET_KEYS} keys"
            )));
        }
        let unique: BTreeSet<&String> = secret_keys.iter().collect();
        if unique.len() != secret_keys.len() || secret_keys.iter().any(String::is_empty) {
            return Err(invalid("secretKeys must be non-empty and unique".into()));
        }

        let encoding = match spec.encoding.as_deref().unwrap_or("raw") {
            "raw" | "" => Encoding::Raw,
            "base64" => Encoding::Base64,
            "base64url" => Encoding::Base64Url,
            "base32" => Encoding::Base32,
            "hex" => Encoding::Hex,
            _ => {
                return Err(invalid(
                    "encoding must be raw, base64, base64url, base32 or hex".into(),
                ));
            }
        };
        let prefix = spec.prefix.unwrap_or_default();
        let suffix = spec.suffix.unwrap_or_default();
        if prefix.len() > MAX_AFFIX_LEN || suffix.len() > MAX_AFFIX_LEN {
            return Err(invalid(format!(
                "prefix and suffix must be at most {MAX_AFFIX_LEN} bytes"
            )));
        }
        Ok(PasswordGenerator {
            digits,
            symbols,
            letters,
            symbol_set,
            letter_set,
            allow_repeat: spec.allow_repeat,
            secret_keys,
            encoding,
            prefix,
            suffix,
        })
    }

    /// Draws `count` characters from `set`; without repeats, skips characters in `used`.
    fn draw(
        &self,
        rng: &mut StdRng,
        set: &[char],
        count: usize,
        used: &mut BTreeSet<char>,
        out: &mut Vec<char>,
    ) -> Result<(), GeneratorError> {
        for _ in 0..count {
            let c = if self.allow_repeat {
                set[rng.random_range(0..set.len())]
            } else {
                // Uniform over the characters still free (sets may overlap across classes).
                let free: Vec<char> = set.iter().copied().filter(|c| !used.contains(c)).collect();
                if free.is_empty() {
                    return Err(GeneratorError::Impossible(
                        "ran out of distinct characters without allowRepeat".into(),
                    ));
                }
                free[rng.random_range(0..free.len())]
            };
            used.insert(c);
            out.push(c);
        }
        Ok(())
    }

    /// One raw password.
    fn password(&self, rng: &mut StdRng) -> Result<String, GeneratorError> {
        let digits: Vec<char> = DIGITS.chars().collect();
        let mut used = BTreeSet::new();
        let mut chars = Vec::with_capacity(self.digits + self.symbols + self.letters);
        // Scarcest class first so overlapping symbol sets do not starve it.
        self.draw(rng, &digits, self.digits, &mut used, &mut chars)?;
        self.draw(rng, &self.symbol_set, self.symbols, &mut used, &mut chars)?;
        self.draw(rng, &self.letter_set, self.letters, &mut used, &mut chars)?;
        chars.shuffle(rng);
        Ok(chars.into_iter().collect())
    }

    fn encode(&self, raw: &str) -> String {
        let body = match self.encoding {
            Encoding::Raw => raw.to_string(),
            Encoding::Base64 => STANDARD.encode(raw),
            Encoding::Base64Url => URL_SAFE.encode(raw),
            Encoding::Base32 => base32(raw.as_bytes()),
            Encoding::Hex => raw.bytes().map(|b| format!("{b:02x}")).collect(),
        };
        format!("{}{}{}", self.prefix, body, self.suffix)
    }
}

/// RFC 4648 base32 with padding (Go's `base32.StdEncoding`).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    for chunk in bytes.chunks(5) {
        let mut block = [0u8; 5];
        block[..chunk.len()].copy_from_slice(chunk);
        let bits = block.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        // Output characters carrying input bits for 1..=5 input bytes.
        let used = [0, 2, 4, 5, 7, 8][chunk.len()];
        for i in 0..8 {
            if i < used {
                let index = ((bits >> (35 - 5 * i)) & 0x1f) as usize;
                out.push(char::from(ALPHABET[index]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[async_trait::async_trait]
impl Generator for PasswordGenerator {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn generate(&self, _ctx: &GenerateContext<'_>) -> Result<Generated, GeneratorError> {
        let mut rng = StdRng::try_from_os_rng().map_err(|_| GeneratorError::Random)?;
        let mut out = BTreeMap::new();
        for key in &self.secret_keys {
            let raw = self.password(&mut rng)?;
            out.insert(key.clone(), self.encode(&raw));
        }
        Ok(Generated::plain(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(spec: serde_json::Value) -> Result<PasswordGenerator, GeneratorConfigError> {
        crate::generators::test_support::with_ctx("ns", "pw", |ctx| {
            PasswordGenerator::from_spec(ctx, &spec)
        })
    }

    async fn one(spec: serde_json::Value) -> String {
        let out = build(spec)
            .unwrap()
            .generate(&GenerateContext::default())
            .await
            .map(|g| g.data)
            .unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), ["password"]);
        out["password"].clone()
    }

    fn count(s: &str, set: &str) -> usize {
        s.chars().filter(|c| set.contains(*c)).count()
    }

    #[tokio::test]
    async fn defaults_follow_eso() {
        let pw = one(json!({})).await;
        assert_eq!(pw.chars().count(), 24);
        assert_eq!(count(&pw, DIGITS), 6);
        assert_eq!(count(&pw, DEFAULT_SYMBOLS), 6);
        assert_eq!(count(&pw, LOWER) + count(&pw, UPPER), 12);
        // No repeats by default.
        assert_eq!(distinct(&pw).len(), 24);
    }

    #[tokio::test]
    async fn honours_classes_and_counts() {
        for _ in 0..20 {
            let pw = one(json!({"length": 42, "digits": 5, "symbols": 5,
                "symbolCharacters": "-_$@", "noUpper": true, "allowRepeat": true}))
            .await;
            assert_eq!(pw.len(), 42);
            assert_eq!(count(&pw, DIGITS), 5);
            assert_eq!(count(&pw, "-_$@"), 5);
            assert_eq!(count(&pw, LOWER), 32);
            assert_eq!(count(&pw, UPPER), 0);
        }
        let pw = one(json!({"length": 8, "digits": 0, "symbols": 0})).await;
        assert_eq!(count(&pw, LOWER) + count(&pw, UPPER), 8);
    }

    #[tokio::test]
    async fn no_repeat_uses_distinct_characters() {
        // All ten digits and all four symbols: only possible without repeats if each is used once.
        for _ in 0..20 {
            let pw = one(json!({"length": 40, "digits": 10, "symbols": 4,
                "symbolCharacters": "!?#%", "noUpper": true}))
            .await;
            assert_eq!(distinct(&pw).len(), 40);
            assert_eq!(count(&pw, DIGITS), 10);
        }
    }

    #[tokio::test]
    async fn overlapping_symbol_set_without_repeats() {
        // Symbols overlap digits: digits are drawn first, symbols take what is left.
        let g = build(json!({"length": 10, "digits": 9, "symbols": 1,
            "symbolCharacters": "0123456789", "noUpper": true}))
        .unwrap();
        for _ in 0..10 {
            let pw = g
                .generate(&GenerateContext::default())
                .await
                .map(|g| g.data)
                .unwrap()["password"]
                .clone();
            assert_eq!(distinct(&pw).len(), 10);
            assert_eq!(count(&pw, DIGITS), 10);
        }
    }

    #[tokio::test]
    async fn passwords_differ_and_keys_each_get_one() {
        let g = build(json!({"secretKeys": ["a", "b", "c"]})).unwrap();
        let out = g
            .generate(&GenerateContext::default())
            .await
            .map(|g| g.data)
            .unwrap();
        assert_eq!(out.len(), 3);
        assert_ne!(out["a"], out["b"]);
        assert_ne!(out["b"], out["c"]);
        let again = g
            .generate(&GenerateContext::default())
            .await
            .map(|g| g.data)
            .unwrap();
        assert_ne!(out["a"], again["a"]);
    }

    #[tokio::test]
    async fn encodings_and_affixes() {
        let pw =
            one(json!({"length": 10, "encoding": "hex", "prefix": "p-", "suffix": "-s"})).await;
        assert!(pw.starts_with("p-") && pw.ends_with("-s"));
        assert_eq!(pw.len(), 2 + 20 + 2);
        let pw = one(json!({"length": 12, "encoding": "base64"})).await;
        assert_eq!(STANDARD.decode(&pw).unwrap().len(), 12);
        let pw = one(json!({"length": 12, "encoding": "base64url"})).await;
        assert_eq!(URL_SAFE.decode(&pw).unwrap().len(), 12);
        let pw = one(json!({"length": 12, "encoding": "base32"})).await;
        assert_eq!(pw.len(), 24);
    }

    #[test]
    fn base32_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "MY======"),
            ("fo", "MZXQ===="),
            ("foo", "MZXW6==="),
            ("foob", "MZXW6YQ="),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI======"),
        ];
        for (input, want) in cases {
            assert_eq!(base32(input.as_bytes()), want, "{input}");
        }
    }

    #[test]
    fn rejects_impossible_or_bad_specs() {
        let bad = [
            json!({"length": 0}),
            json!({"length": MAX_LENGTH + 1}),
            json!({"length": -3}),
            json!({"length": 10, "digits": 6, "symbols": 5}),
            json!({"length": 12, "digits": 11, "symbols": 0}),
            json!({"length": 10, "digits": 0, "symbols": 5, "symbolCharacters": "ab"}),
            json!({"length": 10, "digits": 0, "symbols": 1, "symbolCharacters": ""}),
            json!({"length": 60, "digits": 0, "symbols": 0}),
            json!({"length": 30, "digits": 0, "symbols": 0, "noUpper": true}),
            json!({"secretKeys": []}),
            json!({"secretKeys": ["a", "a"]}),
            json!({"secretKeys": [""]}),
            json!({"encoding": "rot13"}),
            json!({"symbolCharacters": "a\u{0}"}),
        ];
        for spec in bad {
            assert!(build(spec.clone()).is_err(), "{spec}");
        }
        // The same lengths are fine when repeats are allowed.
        assert!(
            build(json!({"length": 60, "digits": 0, "symbols": 0, "allowRepeat": true})).is_ok()
        );
        assert!(
            build(json!({"length": 12, "digits": 11, "symbols": 0, "allowRepeat": true})).is_ok()
        );
    }
}
