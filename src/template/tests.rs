//! ESO's documented examples (issue 11 research, vectors V1–V16, expected outputs from ESO's
//! docs and `runtime/template/v2/template_test.go`), Go semantics the wrapper adds, the
//! limits, binary values, and that no error text holds a value.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;

use super::*;

fn data(pairs: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

fn engine() -> Engine {
    Engine::new(TemplateSettings::default()).unwrap()
}

fn render(tpl: &str, pairs: &[(&str, &[u8])]) -> Result<Vec<u8>, TemplateError> {
    engine().render("k", tpl, &data(pairs))
}

fn ok(tpl: &str, pairs: &[(&str, &[u8])]) -> String {
    match render(tpl, pairs) {
        Ok(out) => String::from_utf8(out).unwrap(),
        Err(e) => panic!("{tpl}: {e}"),
    }
}

fn err(tpl: &str, pairs: &[(&str, &[u8])]) -> String {
    match render(tpl, pairs) {
        Ok(out) => panic!("{tpl}: rendered {} bytes", out.len()),
        Err(e) => e.to_string(),
    }
}

fn kv(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

// ---- ESO vectors ------------------------------------------------------------------------

#[test]
fn v1_b64dec() {
    assert_eq!(
        ok("{{ .secret | b64dec }}", &[("secret", b"MTIzNA==")]),
        "1234"
    );
}

#[test]
fn v2_from_json_field() {
    let tpl = "{{ $var := .secret | fromJson }}{{ $var.foo }}";
    assert_eq!(ok(tpl, &[("secret", br#"{"foo": "bar"}"#)]), "bar");
}

#[test]
fn v3_from_json_to_json() {
    let tpl = "{{ $var := .secret | fromJson }}{{ $var.foo | toJson }}";
    assert_eq!(
        ok(tpl, &[("secret", br#"{"foo": {"baz":"bang"}}"#)]),
        r#"{"baz":"bang"}"#
    );
}

#[test]
fn v4_yaml_round_trips() {
    let tpl = "{{ $var := .secret | fromJson | toYaml }}{{ $var }}";
    assert_eq!(ok(tpl, &[("secret", br#"{"foo": "bar"}"#)]), "foo: bar");
    let tpl = "{{ $var := .secret | fromYaml | toJson }}{{ $var }}";
    assert_eq!(ok(tpl, &[("secret", b"foo: bar")]), r#"{"foo":"bar"}"#);
}

#[test]
fn v5_replace() {
    let tpl = r#"{{ .dburl | replace "postgres://" "postgresql://" }}"#;
    assert_eq!(
        ok(tpl, &[("dburl", b"postgres://u:p@h:5432/db")]),
        "postgresql://u:p@h:5432/db"
    );
}

#[test]
fn v6_multiline_config() {
    let tpl = "config: |\n  password: \"{{ .password }}\"\n  user: \"{{ .user }}\"\n";
    assert_eq!(
        ok(tpl, &[("user", b"foobert"), ("password", b"harharhar")]),
        "config: |\n  password: \"harharhar\"\n  user: \"foobert\"\n"
    );
}

#[test]
fn v7_upper_and_ext() {
    assert_eq!(
        ok("{{ .value | upper }}", &[("value", b"username")]),
        "USERNAME"
    );
    assert_eq!(
        ok("{{ .path | ext }}", &[("path", b"foo/bar/baz.exe")]),
        ".exe"
    );
}

#[test]
fn v8_helm_escape() {
    assert_eq!(ok("{{ `{{ .mysecret }}` }}", &[]), "{{ .mysecret }}");
}

#[test]
fn v9_binary_in_the_middle() {
    assert_eq!(
        ok(r#"{{ "123412341234" | b64enc | b64dec }}"#, &[]),
        "123412341234"
    );
    assert_eq!(
        ok(
            "{{ .example | sha256sum | hexdec | b64enc }}",
            &[("example", b"example")]
        ),
        "UNhY4JhezH9gQYqvDMWrWH9CwlcKiECVqejMrND2VFw="
    );
}

#[test]
fn v10_htpasswd_sha() {
    let d: &[(&str, &[u8])] = &[
        ("username", b"foo1"),
        ("password", b"FZ4jR;l]ON;pHKi=_'zh79P"),
    ];
    assert_eq!(
        ok(r#"{{ htpasswd .username .password "sha" }}"#, d),
        "foo1:{SHA}wtdJD6OIjUniEJkTlewnKzfFxA4="
    );
    // bcrypt (Sprig's default) salts at random: refused by name, without the value.
    let e = err("{{ htpasswd .username .password }}", d);
    assert!(
        e.contains("error calling htpasswd: only the \"sha\""),
        "{e}"
    );
    assert!(!e.contains("FZ4j"), "{e}");
    assert_eq!(
        ok(r#"{{ "abc" | sha1sum }}"#, &[]),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
}

#[test]
fn v11_errors() {
    let e = err("{{ .unknown }}", &[]);
    assert_eq!(
        e,
        "unable to execute template at key k: map has no entry for key \"unknown\""
    );
    let e = err("{{ #xx }}", &[]);
    assert!(
        e.starts_with("unable to parse template at key k: 1:"),
        "{e}"
    );
    let e = err("{{ .x | nosuchfn }}", &[("x", b"1")]);
    assert_eq!(
        e,
        "unable to parse template at key k: 1:9: function \"nosuchfn\" is not supported"
    );
}

#[test]
fn v12_merge_example_values() {
    assert_eq!(
        ok(
            "{{ .password | b64dec }}",
            &[("password", b"czNjcjN0"), ("username", b"bob")]
        ),
        "s3cr3t"
    );
}

const V13: &str = "my-application-{{ .user}}: {{ .password | b64enc }}\n{{- if hasPrefix \"oci://\" .uri }}\nenableOCI: true\n{{- else }}\nenableOCI: false\n{{- end }}\napplication-type: grafana\n";

#[test]
fn v13_keys_and_values_from_configmap() {
    let got = engine()
        .render_keys_and_values(
            "templated",
            V13,
            &data(&[("user", b"u"), ("password", b"p"), ("uri", b"oci://x")]),
        )
        .unwrap();
    assert_eq!(
        got,
        kv(&[
            ("my-application-u", "cA=="),
            ("enableOCI", "true"),
            ("application-type", "grafana")
        ])
    );
    // Its annotations item uses `now`: ESI refuses it by name.
    let e = engine()
        .render_keys_and_values("annotations", "last-sync: {{ now }}", &BTreeMap::new())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "unable to parse template at key annotations: 1:15: function \"now\" is not supported"
    );
}

const V14: &str = "{{- range $key, $val := . }}\n{{- $json := $val | fromJson }}\n{{ $key }}: {{ $json.cert }}\n{{- end }}";

#[test]
fn v14_literal_range_and_decoding() {
    let d = data(&[("a", br#"{"cert":"QQ=="}"#), ("b", br#"{"cert":"Qg=="}"#)]);
    let got = engine().render_keys_and_values("literal", V14, &d).unwrap();
    assert_eq!(got, kv(&[("a", "QQ=="), ("b", "Qg==")]));
    let decoded: BTreeMap<String, Vec<u8>> = got
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                decode_value(DecodingStrategy::Base64, k, v).unwrap(),
            )
        })
        .collect();
    assert_eq!(decoded, kv(&[("a", "A"), ("b", "B")]));
}

fn kv_decoded(
    tpl: &str,
    strategy: DecodingStrategy,
) -> Result<BTreeMap<String, Vec<u8>>, TemplateError> {
    let rendered = engine().render_keys_and_values("literal", tpl, &BTreeMap::new())?;
    rendered
        .into_iter()
        .map(|(k, v)| decode_value(strategy, &k, &v).map(|v| (k, v)))
        .collect()
}

#[test]
fn v15_values_decoding_strategy() {
    let got = kv_decoded(
        "service-a: SGVsbG8=\nservice-b: V29ybGQ=\n",
        DecodingStrategy::Base64,
    )
    .unwrap();
    assert_eq!(got, kv(&[("service-a", "Hello"), ("service-b", "World")]));
    // Keys are never decoded.
    let got = kv_decoded("SGVsbG8=: V29ybGQ=", DecodingStrategy::Base64).unwrap();
    assert_eq!(got, kv(&[("SGVsbG8=", "World")]));
    let e = kv_decoded("service-a: not-base64!", DecodingStrategy::Base64).unwrap_err();
    assert_eq!(
        e.to_string(),
        "failed to decode rendered template value for key service-a: not valid Base64"
    );
    // Auto falls back to URL-safe base64, then to the value itself.
    let got = kv_decoded("a: SGVsbG8=\nb: _-8=\nc: plain!", DecodingStrategy::Auto).unwrap();
    assert_eq!(got["a"], b"Hello");
    assert_eq!(got["b"], [0xff, 0xef]);
    assert_eq!(got["c"], b"plain!");
}

#[test]
fn v16_labels_and_delimiters() {
    assert_eq!(ok("{{ .env | b64dec }}", &[("env", b"ZGV2")]), "dev");
    let custom = Engine::new(TemplateSettings {
        left_delimiter: "<<".into(),
        right_delimiter: ">>".into(),
        ..TemplateSettings::default()
    })
    .unwrap();
    let d = data(&[("secret", b"MTIzNA==")]);
    assert_eq!(
        custom.render("k", "<< .secret | b64dec >>", &d).unwrap(),
        b"1234"
    );
    // With the default delimiters the text is left as it is.
    assert_eq!(
        ok("<< .secret | b64dec >>", &[("secret", b"MTIzNA==")]),
        "<< .secret | b64dec >>"
    );
}

// ---- further ESI vectors (Go semantics) ------------------------------------------------

#[test]
fn index_on_data_map_as_go() {
    let d: &[(&str, &[u8])] = &[("service-account-token", b"tok"), ("a", b"1")];
    assert_eq!(ok(r#"{{ index . "service-account-token" }}"#, d), "tok");
    assert_eq!(ok(r#"{{ index . "missing" | default "x" }}"#, d), "x");
    assert_eq!(ok(r#"[{{ index . "missing" }}]"#, d), "[]");
    let e = err(r#"{{ .missing | default "x" }}"#, d);
    assert!(e.contains("map has no entry for key \"missing\""), "{e}");
    // A map from fromJson gives nil (Go's map[string]interface{}).
    let j: &[(&str, &[u8])] = &[("j", br#"{"a":1}"#)];
    assert_eq!(ok(r#"{{ index (.j | fromJson) "b" }}"#, j), "<no value>");
}

#[test]
fn range_is_sorted_and_trim_markers_work() {
    let d: &[(&str, &[u8])] = &[("b", b"2"), ("a", b"1")];
    assert_eq!(
        ok("{{- range $k, $v := . }}{{ $k }}={{ $v }};{{ end }}", d),
        "a=1;b=2;"
    );
}

#[test]
fn to_json_escapes_html_as_go() {
    assert_eq!(
        ok(r#"{{ "<a&b>" | toJson }}"#, &[]),
        r#""\u003ca\u0026b\u003e""#
    );
    assert_eq!(ok(r#"{{ "<a&b>" | toRawJson }}"#, &[]), r#""<a&b>""#);
    assert_eq!(
        ok(
            r#"{{ .j | fromJson | toPrettyJson }}"#,
            &[("j", br#"{"b":[1,2],"a":{}}"#)]
        ),
        "{\n  \"a\": {},\n  \"b\": [\n    1,\n    2\n  ]\n}"
    );
}

#[test]
fn htpasswd_style_literal_with_list_append_join_quote() {
    let tpl = "{{- $users := list }}\n{{- $users = append $users (printf \"%s:%s\" .u1 .p1) }}\n{{- $users = append $users (printf \"%s:%s\" .u2 .p2) }}\nauth: {{ join \"\\n\" $users | quote }}";
    let d: &[(&str, &[u8])] = &[("u1", b"u1"), ("p1", b"p1"), ("u2", b"u2"), ("p2", b"p2")];
    assert_eq!(ok(tpl, d), "\nauth: \"u1:p1\\nu2:p2\"");
}

#[test]
fn t1_functions() {
    let d: &[(&str, &[u8])] = &[
        ("s", b"  Hello World  "),
        ("e", b""),
        ("n", b"line1\nline2"),
    ];
    assert_eq!(ok("{{ .s | trim | lower }}", d), "hello world");
    assert_eq!(ok("{{ .s | trim | upper }}", d), "HELLO WORLD");
    assert_eq!(ok("{{ .e | default \"dflt\" }}", d), "dflt");
    assert_eq!(ok("{{ .s | trim | default \"dflt\" }}", d), "Hello World");
    assert_eq!(ok("{{ .s | trim | quote }}", d), "\"Hello World\"");
    assert_eq!(ok("{{ .s | trim | squote }}", d), "'Hello World'");
    assert_eq!(ok("{{ .n | indent 2 }}", d), "  line1\n  line2");
    assert_eq!(ok("x:{{ .n | nindent 2 }}", d), "x:\n  line1\n  line2");
    assert_eq!(
        ok("{{ 42 | toString }}-{{ true | toString }}", d),
        "42-true"
    );
    assert_eq!(ok("{{ list 1 \"a\" | toString }}", d), "[1 a]");
    assert_eq!(ok("{{ \"a\\\"b\" | quote }}", d), "\"a\\\"b\"");
    assert_eq!(ok("{{ quote \"a\" \"b\" }}", d), "\"a\" \"b\"");
}

#[test]
fn t2_functions() {
    let d: &[(&str, &[u8])] = &[("u", b"postgres://h:5432/db"), ("csv", b"a,b,c")];
    let cases: &[(&str, &str)] = &[
        (r#"{{ .u | trimPrefix "postgres://" }}"#, "h:5432/db"),
        (r#"{{ .u | trimSuffix "/db" }}"#, "postgres://h:5432"),
        (r#"{{ .u | contains "5432" }}"#, "true"),
        (r#"{{ .u | hasSuffix "db" }}"#, "true"),
        (r#"{{ (split "," .csv)._1 }}"#, "b"),
        (r#"{{ splitList "," .csv | join "-" }}"#, "a-b-c"),
        (r#"{{ cat "a" 1 nil "b" }}"#, "a 1 b"),
        (
            r#"{{ $d := dict "k" "v" "n" 2 }}{{ get $d "k" }}{{ get $d "x" }}{{ hasKey $d "n" }}"#,
            "vtrue",
        ),
        (r#"{{ keys (dict "b" 1 "a" 2) | join "," }}"#, "a,b"),
        (
            r#"{{ empty "" }} {{ empty "x" }} {{ empty 0 }}"#,
            "true false true",
        ),
        (r#"{{ coalesce "" nil "x" "y" }}"#, "x"),
        (
            r#"{{ ternary "yes" "no" true }} {{ ternary "yes" "no" false }}"#,
            "yes no",
        ),
        (r#"{{ dict "a" 1 "b" "x" | toYaml }}"#, "a: 1\nb: x"),
        (
            r#"{{ "abc" | sha256sum }}"#,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            r#"{{ "hi" | b32enc }}|{{ "NBUQ====" | b32dec }}"#,
            "NBUQ====|hi",
        ),
        (r#"{{ regexMatch "^[0-9]+$" "123" }}"#, "true"),
        (r#"{{ regexFind "[0-9]+" "ab12cd34" }}"#, "12"),
        (r#"{{ regexReplaceAll "(a)(b)" "xabx" "${2}$1" }}"#, "xbax"),
        (r#"{{ regexFindAll "[0-9]" "a1b2c3" -1 | join "" }}"#, "123"),
        (
            r#"{{ atoi "42" | add 1 }} {{ sub 10 3 }} {{ mul 2 3 4 }} {{ div 7 2 }} {{ mod 7 2 }}"#,
            "43 7 24 3 1",
        ),
        (
            r#"{{ int "12" }} {{ int64 3.9 }} {{ max 1 5 3 }} {{ min 4 2 }}"#,
            "12 3 5 2",
        ),
        (
            r#"{{ substr 0 3 "abcdef" }} {{ trunc 2 "abcdef" }} {{ repeat 3 "ab" }}"#,
            "abc ab ababab",
        ),
        (
            r#"{{ list "b" "a" "b" | uniq | sortAlpha | join "," }}"#,
            "a,b",
        ),
        (
            r#"{{ first (list 1 2 3) }}{{ last (list 1 2 3) }}{{ rest (list 1 2 3) }}"#,
            "13[2 3]",
        ),
        (
            r#"{{ has 2 (list 1 2) }} {{ len (list 1 2 3) }} {{ len "héllo" }}"#,
            "true 3 6",
        ),
        (
            r#"{{ printf "%05.1f|%-4s|%q" 3.14159 "ab" "x" }}"#,
            "003.1|ab  |\"x\"",
        ),
        (r#"{{ base "a/b/c.txt" }} {{ isAbs "/x" }}"#, "c.txt true"),
        (
            r#"{{ dig "a" "b" "none" (dict "a" (dict "b" "deep")) }}"#,
            "deep",
        ),
        (
            r#"{{ pick (dict "a" 1 "b" 2) "a" | toJson }} {{ omit (dict "a" 1 "b" 2) "a" | toJson }}"#,
            r#"{"a":1} {"b":2}"#,
        ),
        (r#"{{ range $i, $v := until 3 }}{{ $i }}{{ end }}"#, "012"),
        (r#"{{ slice "abcdef" 1 3 }}"#, "bc"),
        (r#"{{ html "<b>" }} {{ urlquery "a b" }}"#, "&lt;b&gt; a+b"),
    ];
    for (tpl, want) in cases {
        assert_eq!(ok(tpl, d), *want, "{tpl}");
    }
}

#[test]
fn go_syntax_is_covered() {
    let d: &[(&str, &[u8])] = &[("a", b"1"), ("b", b"")];
    let cases: &[(&str, &str)] = &[
        ("{{ if .b }}x{{ else if .a }}y{{ else }}z{{ end }}", "y"),
        ("{{ with .a }}[{{ . }}]{{ else }}none{{ end }}", "[1]"),
        (
            r#"{{ define "t" }}<{{ . }}>{{ end }}{{ template "t" .a }}"#,
            "<1>",
        ),
        (
            "{{ range $i := until 5 }}{{ if eq $i 3 }}{{ break }}{{ end }}{{ $i }}{{ end }}",
            "012",
        ),
        ("{{ $x := 1 }}{{ $x = 2 }}{{ $x }}", "2"),
        ("{{/* comment */}}ok", "ok"),
        (
            r#"{{ and .a .b | not }} {{ or .b "dflt" }} {{ eq .a "1" }} {{ lt 1 2 }}"#,
            "true dflt true true",
        ),
    ];
    for (tpl, want) in cases {
        assert_eq!(ok(tpl, d), *want, "{tpl}");
    }
}

#[test]
fn floats_print_as_go_in_our_functions() {
    let d: &[(&str, &[u8])] = &[("j", br#"{"big":1e21,"small":0.00001,"port":5432}"#)];
    assert_eq!(
        ok("{{ $j := .j | fromJson }}{{ $j.big | toString }}", d),
        "1e+21"
    );
    assert_eq!(
        ok("{{ $j := .j | fromJson }}{{ $j.small | toString }}", d),
        "1e-05"
    );
    assert_eq!(
        ok("{{ $j := .j | fromJson }}{{ $j.big | toJson }}", d),
        "1e+21"
    );
    assert_eq!(
        ok("{{ $j := .j | fromJson }}{{ printf \"%v\" $j.small }}", d),
        "1e-05"
    );
    assert_eq!(ok("{{ $j := .j | fromJson }}{{ $j.port }}", d), "5432");
}

// ---- binary values ----------------------------------------------------------------------

const BIN: &[u8] = &[0xff, 0x00, 0x80, 0x61, 0xf4, 0x8f, 0xbe, 0x80];

#[test]
fn binary_values_pass_byte_exact() {
    let d: &[(&str, &[u8])] = &[("bin", BIN), ("b64", b"/wCAYfSPvoA=")];
    assert_eq!(render("{{ .bin }}", d).unwrap(), BIN);
    assert_eq!(render("{{ .b64 | b64dec }}", d).unwrap(), BIN);
    assert_eq!(ok("{{ .bin | b64enc }}", d), "/wCAYfSPvoA=");
    assert_eq!(ok("{{ len .bin }}", d), "8");
    let mut prefixed = b"x=".to_vec();
    prefixed.extend_from_slice(BIN);
    prefixed.push(b';');
    assert_eq!(render("x={{ .bin }};", d).unwrap(), prefixed);
    assert_eq!(render("{{ .bin | b64enc | b64dec }}", d).unwrap(), BIN);
    assert_eq!(render("{{ slice .bin 4 8 }}", d).unwrap(), &BIN[4..]);
    assert_eq!(
        render("{{ .bin | toJson }}", d).unwrap(),
        "\"\u{fffd}\\u0000\u{fffd}a\u{10FF80}\"".as_bytes()
    );
    // every byte value, alone
    let all: Vec<u8> = (0..=255u8).collect();
    assert_eq!(render("{{ .all }}", &[("all", &all)]).unwrap(), all);
    assert_eq!(ok("{{ .all | sha256sum }}", &[("all", &all)]), {
        use sha2::Digest;
        data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(&all))
    });
}

// ---- errors and limits ------------------------------------------------------------------

#[test]
fn unknown_function_in_a_dead_branch_fails_at_parse() {
    let e = err("ok{{ if false }}{{ nosuch }}{{ end }}", &[]);
    assert_eq!(
        e,
        "unable to parse template at key k: 1:20: function \"nosuch\" is not supported"
    );
    let e = err(
        "{{ define \"x\" }}\n  {{ now | date \"2006\" }}{{ end }}ok",
        &[],
    );
    assert!(e.contains("2:6: function \"now\" is not supported"), "{e}");
    let e = err("{{ pkcs12cert .x }}", &[]);
    assert!(
        e.contains("function \"pkcs12cert\" is not supported"),
        "{e}"
    );
}

#[test]
fn bad_syntax_has_line_and_column() {
    let e = err("line one\n{{ if .a }}unclosed", &[("a", b"1")]);
    assert!(e.starts_with("unable to parse template at key k: "), "{e}");
    let e = err("a\nb {{ .x ", &[]);
    assert!(e.contains("k: 2:"), "{e}");
    // Go's parser refuses these; gotmpl alone would render them.
    assert_eq!(
        err("x\n  {{ range .a }}y", &[("a", b"1")]),
        "unable to parse template at key k: 2:3: unexpected EOF: {{range}} is not closed by {{end}}"
    );
    assert_eq!(
        err("x{{ end }}secret-rest", &[]),
        "unable to parse template at key k: 1:2: unexpected {{end}}"
    );
    assert_eq!(
        err("x{{ else }}y", &[]),
        "unable to parse template at key k: 1:2: unexpected {{else}}"
    );
    // Non-ASCII text inside and around actions.
    assert_eq!(ok("é{{ \"héllo — ü\" }}ß{{/* ö */}}", &[]), "éhéllo — üß");
    assert_eq!(ok("{{ `日本` }}{{ 'é' }}", &[]), "日本233");
    // Delimiters inside strings and comments do not count.
    assert_eq!(
        ok("{{ \"{{ end }}\" }}{{/* {{ if }} */}}{{- `}}` -}}", &[]),
        "{{ end }}}}"
    );
    assert_eq!(
        err("a\u{10FF80}b", &[]),
        "unable to parse template at key k: 1:2: characters U+10FF80 to U+10FFFF are reserved"
    );
}

#[test]
fn range_budget() {
    let e = err("{{ range 20000 }}x{{ end }}", &[]);
    assert_eq!(
        e,
        "unable to execute template at key k: more than 10000 range iterations"
    );
    let e = err("{{ range 200 }}{{ range 200 }}{{ end }}{{ end }}", &[]);
    assert!(e.contains("range iterations"), "{e}");
}

#[test]
fn doubling_is_capped() {
    for step in [
        r#"{{ $x = printf "%s%s" $x $x }}"#,
        r#"{{ $x = print $x $x }}"#,
        r#"{{ $x = cat $x $x }}"#,
        r#"{{ $x = list $x $x | join "" }}"#,
        r#"{{ $x = repeat 2 $x }}"#,
        r#"{{ $x = replace "a" "aa" $x }}"#,
        r#"{{ $x = $x | quote }}"#,
    ] {
        let tpl =
            format!("{{{{ $x := \"aaaaaaaaaaaaaaaa\" }}}}{{{{ range 40 }}}}{step}{{{{ end }}}}");
        let e = err(&tpl, &[]);
        assert!(
            e.contains("exceeds the limit of 1048576 bytes"),
            "{step}: {e}"
        );
    }
    // A list that doubles in elements.
    let e = err(
        "{{ $l := list 1 }}{{ range 40 }}{{ $l = concat $l $l }}{{ end }}",
        &[],
    );
    assert!(e.contains("error calling concat"), "{e}");
    // A nested list that doubles in printed size (shared, so cheap in memory).
    let e = err(
        "{{ $l := list 1 }}{{ range 60 }}{{ $l = list $l $l }}{{ end }}{{ $l | toJson }}",
        &[],
    );
    assert!(e.contains("error calling toJson"), "{e}");
    let e = err(
        "{{ $l := list 1 }}{{ range 60 }}{{ $l = list $l $l }}{{ end }}{{ $l }}",
        &[],
    );
    assert!(e.contains("output exceeds"), "{e}");
    // One large value many times in a list: the strings made from it are bounded in total.
    for f in ["join \",\"", "toStrings", "sortAlpha"] {
        let tpl = format!(
            "{{{{ $x := repeat 2000 \"a\" }}}}{{{{ $l := list }}}}{{{{ range 1000 }}}}{{{{ $l = append $l $x }}}}{{{{ end }}}}{{{{ $l | {f} | len }}}}"
        );
        let e = err(&tpl, &[]);
        assert!(e.contains("result exceeds the limit"), "{f}: {e}");
    }
    let e = err("{{ indent 2000000 \"x\" }}", &[]);
    assert!(e.contains("error calling indent"), "{e}");
    let e = err("{{ printf \"%050000000d\" 1 }}", &[]);
    assert!(e.contains("error calling printf"), "{e}");
}

#[test]
fn work_per_render_is_bounded() {
    let big = vec![b'a'; 100 * 1024];
    let started = std::time::Instant::now();
    let e = err(
        "{{ range 10000 }}{{ $x := sha256sum $.big }}{{ end }}",
        &[("big", &big)],
    );
    assert!(
        e.contains("error calling sha256sum: the render exceeds its work limit"),
        "{e}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // The same call a few times is fine.
    assert_eq!(
        ok(
            "{{ range 100 }}{{ $x := sha256sum $.big }}{{ end }}ok",
            &[("big", &big)]
        ),
        "ok"
    );
}

#[test]
fn output_and_source_caps() {
    let big = vec![b'a'; 600 * 1024];
    let e = err("{{ .x }}{{ .x }}", &[("x", &big)]);
    assert_eq!(
        e,
        "unable to execute template at key k: the output exceeds 1048576 bytes"
    );
    let src = "x".repeat(64 * 1024 + 1);
    let e = err(&src, &[]);
    assert_eq!(
        e,
        "unable to parse template at key k: the template is 65537 bytes, over the limit of 65536"
    );
    let many = "{{ 1 }}".repeat(6000);
    let e = err(&many, &[]);
    assert_eq!(
        e,
        "unable to parse template at key k: more than 10000 nodes"
    );
    let deep = format!("{}{}", "{{ if 1 }}".repeat(300), "{{ end }}".repeat(300));
    assert!(render(&deep, &[]).is_err());
    let rec = r#"{{ define "r" }}{{ template "r" . }}{{ end }}{{ template "r" . }}"#;
    assert!(err(rec, &[]).contains("recursion limit exceeded"));
}

#[test]
fn settings_are_checked() {
    let bad = TemplateSettings {
        left_delimiter: String::new(),
        ..TemplateSettings::default()
    };
    assert!(matches!(Engine::new(bad), Err(TemplateError::Settings(_))));
    let mut zero = TemplateSettings::default();
    zero.limits.max_output_bytes = 0;
    assert!(matches!(Engine::new(zero), Err(TemplateError::Settings(_))));
}

#[test]
fn deliberate_differences_from_sprig_are_errors() {
    let d: &[(&str, &[u8])] = &[("x", b"not base64!"), ("j", b"{not json")];
    for (tpl, f) in [
        ("{{ .x | b64dec }}", "b64dec"),
        ("{{ .x | b32dec }}", "b32dec"),
        ("{{ .x | hexdec }}", "hexdec"),
        ("{{ .j | fromJson }}", "fromJson"),
        ("{{ .j | fromYaml }}", "fromYaml"),
        ("{{ .x | atoi }}", "atoi"),
        (r#"{{ regexMatch "(" "x" }}"#, "regexMatch"),
        ("{{ div 1 0 }}", "div"),
    ] {
        let e = err(tpl, d);
        assert!(e.contains(&format!("error calling {f}: ")), "{tpl}: {e}");
    }
}

/// Every error path reachable with a value in it: the value never shows.
#[test]
fn no_value_in_any_error() {
    const V: &str = "S3CRET-value-31337";
    let d: &[(&str, &[u8])] = &[
        ("secret", V.as_bytes()),
        ("num", b"31337"),
        ("re", b"(S3CRET-value-31337"),
        ("json", br#"{"a": S3CRET-value-31337}"#),
        ("yaml", b"a: [S3CRET-value-31337"),
    ];
    let templates = [
        "{{ .secret | b64dec }}",
        "{{ .secret | b32dec }}",
        "{{ .secret | hexdec }}",
        "{{ .secret | fromJson }}",
        "{{ .json | fromJson }}",
        "{{ .yaml | fromYaml }}",
        "{{ .secret | fromYaml }}",
        "{{ .secret | atoi }}",
        "{{ .secret | int }}",
        "{{ .secret | float64 }}",
        "{{ regexMatch .re \"x\" }}",
        "{{ regexMatch .secret .secret }}{{ regexFind .re .secret }}",
        "{{ range $i, $v := (atoi .num) }}{{ end }}",
        "{{ range $k, $v := .secret }}{{ end }}",
        "{{ .secret.field }}",
        "{{ eq .secret 5 }}",
        "{{ lt .secret 5 }}",
        "{{ index .secret 99 }}",
        "{{ slice .secret 0 (atoi .num) }}",
        "{{ index (list 1) (atoi .num) }}",
        "{{ fail .secret }}",
        "{{ fail (printf \"bad %s\" .secret) }}",
        "{{ ternary 1 2 .secret }}",
        "{{ len (atoi .num) }}",
        "{{ printf (atoi .num) }}",
        "{{ printf .secret (atoi .num) | atoi }}",
        "{{ upper (atoi .num) }}",
        "{{ repeat (atoi .num) (repeat 100 .secret) }}",
        "{{ indent (atoi .num) .secret | b64dec }}",
        "{{ substr (atoi .num) 2 .secret }}",
        "{{ .secret | toJson | fromYaml }}",
        "{{ call .secret }}",
        "{{ template .secret }}",
        "{{ add (atoi .num) 9223372036854775807 }}",
        "{{ mul .num .num .num .num .num }}",
        "{{ .secret | sha256sum | nosuch }}",
        "{{ .secret | jwkPrivateKeyPem }}",
        "{{ .json | jwkPublicKeyPem }}",
        "{{ filterPEM \"X\" .secret }}",
        "{{ filterCertChain \"leaf\" .secret }}",
        "{{ filterCertChain .secret .secret }}",
        "{{ .secret | certSANs }}",
    ];
    for tpl in templates {
        let e = match render(tpl, d) {
            Ok(out) => panic!("{tpl}: rendered {} bytes", out.len()),
            Err(e) => e.to_string(),
        };
        assert!(!e.contains(V) && !e.contains("31337"), "{tpl}: {e}");
        assert!(!format!("{:?}", e).contains(V), "{tpl}");
    }
    // KeysAndValues: a YAML error or a non-string value must not quote the output.
    for tpl in [
        "a: {{ .secret }}\n  b: [{{ .secret }}",
        "a: [{{ .secret }}]",
        "{{ .secret }}",
        "- {{ .secret }}",
    ] {
        let e = engine()
            .render_keys_and_values("k", tpl, &data(d))
            .unwrap_err()
            .to_string();
        assert!(!e.contains(V), "{tpl}: {e}");
    }
    let e = decode_value(DecodingStrategy::Base64, "k", V.as_bytes()).unwrap_err();
    assert!(!e.to_string().contains(V));
}

#[test]
fn fail_shows_literal_messages_only() {
    let e = err(
        r#"{{ if not .x }}{{ fail "x is required" }}{{ end }}"#,
        &[("x", b"")],
    );
    assert_eq!(
        e,
        "unable to execute template at key k: error calling fail: x is required"
    );
}

#[test]
fn keys_and_values_scalars_become_strings() {
    let got = engine()
        .render_keys_and_values(
            "k",
            "a: true\nb: 5\nc: 1.5\nd: null\ne: \"x: y\"\nf: 1e6\n",
            &BTreeMap::new(),
        )
        .unwrap();
    assert_eq!(
        got,
        kv(&[
            ("a", "true"),
            ("b", "5"),
            ("c", "1.5"),
            ("d", ""),
            ("e", "x: y"),
            ("f", "1e+06")
        ])
    );
    assert_eq!(
        engine()
            .render_keys_and_values("k", "  \n", &BTreeMap::new())
            .unwrap(),
        BTreeMap::new()
    );
}

#[test]
fn template_data_named_maps() {
    let mut td = TemplateData::new();
    td.insert("db", data(&[("user", b"u"), ("password", BIN)]));
    td.insert("api-keys", data(&[("key", b"k1")]));
    let out = engine()
        .render_data(
            "config.tmpl",
            r#"user={{ .db.user }} pw={{ .db.password }} key={{ index . "api-keys" "key" }} none=[{{ index .db "nope" }}]"#,
            &td,
        )
        .unwrap();
    let mut want = b"user=u pw=".to_vec();
    want.extend_from_slice(BIN);
    want.extend_from_slice(b" key=k1 none=[]");
    assert_eq!(out, want);
    let e = engine()
        .render_data("config.tmpl", "{{ .db.nope }}", &td)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "unable to execute template at key config.tmpl: map has no entry for key \"nope\""
    );
}

#[test]
fn engine_is_shareable() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Engine>();
    assert!(engine().check("k", "{{ .a | upper }}").is_ok());
    assert!(engine().check("k", "{{ .a | nope }}").is_err());
}

#[test]
fn data_refs_name_the_entries_read() {
    let refs = engine()
        .data_refs(
            "t",
            r#"{{ .db.user }}{{ index . "api-keys" "k" }}{{ $.tls.crt }}{{ with .cfg }}{{ .inner }}{{ end }}{{ range $k, $v := .list }}{{ $k }}{{ .x }}{{ end }}{{ if .flag }}{{ (.chain).x }}{{ end }}{{ define "d" }}{{ .no }}{{ $.no2 }}{{ end }}"#,
        )
        .unwrap();
    let want: BTreeSet<String> = ["db", "api-keys", "tls", "cfg", "list", "flag", "chain"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(refs.names, want);
    assert_eq!(refs.whole_data_at, None);
    for (tpl, at) in [
        ("x\n {{ range $k, $v := . }}{{ end }}", (2, 2)),
        ("{{ . | toJson }}", (1, 4)),
        (r#"{{ template "t" . }}{{ define "t" }}{{ end }}"#, (1, 17)),
        ("{{ $x := $ }}", (1, 10)),
    ] {
        let refs = engine().data_refs("t", tpl).unwrap();
        assert!(refs.whole_data_at.is_some(), "{tpl}");
        assert_eq!(refs.whole_data_at.unwrap().0, at.0, "{tpl}");
    }
    assert!(engine().data_refs("t", "{{ nosuch }}").is_err());
}

/// Random templates from a hostile alphabet never panic (the reconciler renders
/// user-written templates on its request path).
#[test]
fn random_templates_never_panic() {
    use rand::{Rng, SeedableRng};
    let pieces = [
        "{{",
        "}}",
        "{{- ",
        " -}}",
        "{{/*",
        "*/}}",
        "\"",
        "'",
        "`",
        "\\",
        "é",
        "日",
        "\u{10FFFF}",
        " ",
        "\n",
        ".",
        "$",
        "a",
        "x",
        "if",
        "else",
        "end",
        "range",
        "with",
        "define",
        "block",
        "template",
        "|",
        "(",
        ")",
        ":=",
        "=",
        ",",
        "-",
        "1",
        "0x",
        "1e9",
        "index",
        "printf",
        "\"%s\"",
        "\"%v%v\"",
        "b64dec",
        "fromJson",
        "toJson",
        "slice",
        "len",
        "nosuch",
        "nil",
        "true",
        "break",
        "continue",
        "<<",
        ">>",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let d: &[(&str, &[u8])] = &[("a", b"{\"x\":1}"), ("x", &[0xff, 0xfe])];
    let custom = Engine::new(TemplateSettings {
        left_delimiter: "<<".into(),
        right_delimiter: ">>".into(),
        ..TemplateSettings::default()
    })
    .unwrap();
    for _ in 0..4000 {
        let n = rng.random_range(1..24);
        let tpl: String = (0..n)
            .map(|_| pieces[rng.random_range(0..pieces.len())])
            .collect();
        let _ = render(&tpl, d);
        let _ = custom.render("k", &tpl, &data(d));
        let _ = engine().data_refs("k", &tpl);
    }
}

/// The example of docs/templates.md ("esi-cli file templates"), rendered as documented.
#[test]
fn docs_example_renders_as_documented() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
    let ca = base64::engine::general_purpose::STANDARD.encode(pem);
    let mut td = TemplateData::new();
    td.insert(
        "app/database",
        data(&[
            ("user", b"app"),
            ("host", b"db.internal"),
            ("port", b"5432"),
            ("password", b"s3cr3t"),
            ("ca", ca.as_bytes()),
        ]),
    );
    td.insert("app-pw", data(&[("password", b"generated")]));
    td.insert_value("api-token", b"tok-123\n".to_vec());
    let tpl = "# rendered by esi-cli\n{{- $db := index . \"app/database\" }}\ndatabase:\n  url: {{ printf \"postgres://%s@%s:%s/app\" $db.user $db.host $db.port | quote }}\n  password: {{ $db.password | quote }}\nadmin-password: {{ index . \"app-pw\" \"password\" | quote }}\napi-token: {{ index . \"api-token\" | trim }}\ntls:\n  ca: |\n    {{- $db.ca | b64dec | nindent 4 }}\n";
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/templates.md")).unwrap();
    assert!(docs.contains(tpl.trim_end()), "the docs example changed");
    let out = engine().render_data("config.tmpl", tpl, &td).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "# rendered by esi-cli\ndatabase:\n  url: \"postgres://app@db.internal:5432/app\"\n  password: \"s3cr3t\"\nadmin-password: \"generated\"\napi-token: tok-123\ntls:\n  ca: |\n    -----BEGIN CERTIFICATE-----\n    MIIB\n    -----END CERTIFICATE-----\n"
    );
    let refs = engine().data_refs("config.tmpl", tpl).unwrap();
    assert_eq!(refs.names.len(), 3);
}

/// Deep nesting is refused or rendered, never a stack overflow.
#[test]
fn deep_nesting_is_bounded() {
    for n in [50, 500, 5000] {
        let parens = format!("{{{{ {}1{} }}}}", "(".repeat(n), ")".repeat(n));
        let _ = render(&parens, &[]);
        let _ = engine().data_refs("k", &parens);
        let ifs = format!("{}x{}", "{{ if 1 }}".repeat(n), "{{ end }}".repeat(n));
        let _ = render(&ifs, &[]);
        let withs = format!("{}x{}", "{{ with 1 }}".repeat(n), "{{ end }}".repeat(n));
        let _ = engine().data_refs("k", &withs);
    }
    let deep_json = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let e = err("{{ .j | fromJson }}", &[("j", deep_json.as_bytes())]);
    assert!(e.contains("error calling fromJson"), "{e}");
    let deep_yaml = format!("a: {}{}", "[".repeat(5000), "]".repeat(5000));
    let _ = render("{{ .j | fromYaml }}", &[("j", deep_yaml.as_bytes())]);
}

/// Lists and maps nest at most 64 deep (printing, serializing and dropping recurse): a
/// loop that wraps a list 9 999 times stops at the limit; one 60 deep works everywhere.
#[test]
fn deeply_nested_values_are_bounded() {
    for step in [
        "{{ $l = list $l }}",
        "{{ $l = dict \"k\" $l }}",
        "{{ $l = append (list) $l }}",
        "{{ $l = prepend (list) $l }}",
        "{{ $l = list 1 (list $l) }}",
    ] {
        let tpl = format!(
            "{{{{ $l := list }}}}{{{{ range 9999 }}}}{step}{{{{ end }}}}{{{{ $l | toJson }}}}"
        );
        let e = err(&tpl, &[]);
        assert!(
            e.contains("nests lists and maps deeper than 64 levels"),
            "{step}: {e}"
        );
    }
    let build = "{{ $l := list }}{{ range 60 }}{{ $l = list $l $l }}{{ end }}";
    for tail in [
        "{{ $l | toJson | len }}",
        "{{ $l | toYaml | len }}",
        "{{ $l | toString | len }}",
        "{{ printf \"%v\" $l | len }}",
        "{{ $l | quote | len }}",
        "{{ $l | uniq | len }}",
        "{{ has $l (list $l) }}",
    ] {
        // Shared halves make the printed forms exponential: refused by size, not by stack.
        let _ = render(&format!("{build}{tail}"), &[]);
    }
    // Two equal DAGs built apart: comparing them is bounded, not exponential.
    let twin = "{{ $a := list }}{{ $b := list }}{{ range 60 }}{{ $a = list $a $a }}{{ $b = list $b $b }}{{ end }}";
    for tail in [
        "{{ has $a (list $b) }}",
        "{{ list $a $b | uniq | len }}",
        "{{ without (list $a) $b | len }}",
    ] {
        let started = std::time::Instant::now();
        let e = err(&format!("{twin}{tail}"), &[]);
        assert!(e.contains("result exceeds the limit"), "{tail}: {e}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{tail}"
        );
    }
    let build = "{{ $l := list }}{{ range 60 }}{{ $l = list $l }}{{ end }}";
    assert_eq!(
        ok(&format!("{build}{{{{ $l | toJson | len }}}}"), &[]),
        "122"
    );
    assert_eq!(ok(&format!("{build}{{{{ $l | len }}}}"), &[]), "1");
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let e = err("{{ .j | fromJson }}", &[("j", deep.as_bytes())]);
    assert!(e.contains("deeper than 64 levels"), "{e}");
    let ok_deep = format!("{}{}", "[".repeat(60), "]".repeat(60));
    assert_eq!(
        ok("{{ .j | fromJson | toJson }}", &[("j", ok_deep.as_bytes())]),
        ok_deep
    );
}

/// `index` is charged to the work budget like every other function: indexing a large
/// value in a loop stops at the limit instead of converting it again on every iteration
/// (review: 10 000 × `index` of a 1 MiB value took minutes).
#[test]
fn index_is_charged_to_the_work_budget() {
    let big = vec![b'a'; 16 * 1024];
    let mut settings = TemplateSettings::default();
    settings.limits.max_work = 1024 * 1024;
    let engine = Engine::new(settings).unwrap();
    let d = data(&[("big", &big)]);
    for tpl in [
        "{{ range 1000 }}{{ $x := index $.big 5 }}{{ end }}",
        "{{ range 1000 }}{{ $x := index $ \"big\" }}{{ $y := index $x 1 }}{{ end }}",
    ] {
        let e = engine.render("k", tpl, &d).unwrap_err().to_string();
        assert!(
            e.contains("error calling index: the render exceeds its work limit"),
            "{tpl}: {e}"
        );
    }
    assert_eq!(
        engine
            .render("k", "{{ range 10 }}{{ index $.big 5 }}{{ end }}", &d)
            .unwrap(),
        b"97".repeat(10)
    );
}

/// KeysAndValues keys are rendered, so they can be values (`{{ .user }}: x`): an error
/// names a key only when the template spells it out, never one built from the data
/// (review: `the value of key "hunter2" is not a string`).
#[test]
fn keys_built_from_values_stay_out_of_errors() {
    let d = data(&[("password", b"hunter2")]);
    let e = engine()
        .render_keys_and_values("literal", "{{ .password }}: [a]", &d)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is not a string") && !e.contains("hunter2"),
        "{e}"
    );
    let e = engine()
        .render_keys_and_values("literal", "fixed: [a]", &d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"fixed\""), "{e}");
    let e = decode_value_in(
        DecodingStrategy::Base64,
        "{{ .password }}: \"%%%\"",
        "hunter2",
        b"%%%",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("failed to decode") && !e.contains("hunter2"),
        "{e}"
    );
    let e = decode_value_in(DecodingStrategy::Base64, "fixed: x", "fixed", b"%%%")
        .unwrap_err()
        .to_string();
    assert!(e.contains("for key fixed"), "{e}");
}

/// `TemplateData` holds secret values: its Debug shows names and keys only (review: the
/// derived Debug printed the bytes).
#[test]
fn template_data_debug_shows_no_value() {
    let mut d = TemplateData::new();
    d.insert("db", [("user".to_string(), b"hunter2".to_vec())].into());
    d.insert_value("raw", b"hunter3".to_vec());
    let shown = format!("{d:?}");
    assert!(
        shown.contains("db") && shown.contains("user") && shown.contains("raw"),
        "{shown}"
    );
    assert!(
        !shown.contains("hunter") && !shown.contains("104, 117"),
        "{shown}"
    );
}
