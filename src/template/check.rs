//! Parse-time checks (gaps G1 and G5 of issue 11): every function a template names must be
//! one of ours, even in a branch that never runs (Go's `text/template` fails at parse,
//! gotmpl only when the call runs), and the tree is bounded in size.

use std::collections::BTreeSet;

use gotmpl::parse::{Expr, ListNode, Node, PipeNode, Pos};

/// What the walk found wrong first.
pub(crate) enum Finding {
    /// A function that is not supported, and where (1-based line, column in characters).
    Unsupported {
        function: String,
        line: usize,
        col: usize,
    },
    /// More nodes than allowed.
    TooManyNodes,
}

/// The result of walking one template.
pub(crate) struct Walk<'a> {
    src: &'a str,
    nodes: usize,
    max_nodes: usize,
    is_supported: fn(&str) -> bool,
    /// Every string literal of the template (what `fail` may show).
    pub literals: BTreeSet<String>,
    pub finding: Option<Finding>,
}

impl<'a> Walk<'a> {
    pub(crate) fn new(src: &'a str, max_nodes: usize, is_supported: fn(&str) -> bool) -> Self {
        Walk {
            src,
            nodes: 0,
            max_nodes,
            is_supported,
            literals: BTreeSet::new(),
            finding: None,
        }
    }

    fn col(&self, pos: Pos) -> usize {
        let end = pos.offset.min(self.src.len());
        let end = (0..=end)
            .rev()
            .find(|i| self.src.is_char_boundary(*i))
            .unwrap_or(0);
        let start = self.src[..end].rfind('\n').map_or(0, |i| i + 1);
        self.src[start..end].chars().count() + 1
    }

    /// Counts one node; false once the walk must stop.
    fn tick(&mut self) -> bool {
        if self.finding.is_some() {
            return false;
        }
        self.nodes += 1;
        if self.nodes > self.max_nodes {
            self.finding = Some(Finding::TooManyNodes);
            return false;
        }
        true
    }

    pub(crate) fn list(&mut self, list: &ListNode) {
        for node in &list.nodes {
            self.node(node);
        }
    }

    fn node(&mut self, node: &Node) {
        if !self.tick() {
            return;
        }
        match node {
            Node::List(l) => self.list(l),
            Node::Text(_) | Node::Break(_) | Node::Continue(_) => {}
            Node::Action(a) => self.pipe(&a.pipe),
            Node::If(b) | Node::Range(b) | Node::With(b) => {
                self.pipe(&b.pipe);
                self.list(&b.body);
                if let Some(e) = &b.else_body {
                    self.list(e);
                }
            }
            Node::Template(t) => {
                if let Some(p) = &t.pipe {
                    self.pipe(p);
                }
            }
            Node::Define(d) => self.list(&d.body),
        }
    }

    fn pipe(&mut self, pipe: &PipeNode) {
        for cmd in &pipe.commands {
            for arg in &cmd.args {
                self.expr(arg);
            }
        }
    }

    fn expr(&mut self, expr: &Expr) {
        if !self.tick() {
            return;
        }
        match expr {
            Expr::Identifier(pos, name) if !(self.is_supported)(name) => {
                self.finding = Some(Finding::Unsupported {
                    function: name.to_string(),
                    line: pos.line,
                    col: self.col(*pos),
                });
            }
            Expr::String(_, s) => {
                self.literals.insert(s.to_string());
            }
            Expr::Pipe(_, p) => self.pipe(p),
            Expr::Chain(_, inner, _) => self.expr(inner),
            _ => {}
        }
    }
}

/// A block structure error: `(message, line, col)`.
pub(crate) type BlockError = (String, usize, usize);

/// Checks that `{{if}}`/`{{range}}`/`{{with}}`/`{{define}}`/`{{block}}` are closed by
/// `{{end}}`, that no `{{end}}` or `{{else}}` stands alone, as Go's parser does (gotmpl
/// 0.6.1 accepts an unclosed block at the end of the source and stops silently at a stray
/// `{{end}}`, dropping the rest). Runs after gotmpl's lexer accepted the source, so
/// strings, raw strings and comments are well-formed.
pub(crate) fn check_blocks(src: &str, left: &str, right: &str) -> Result<(), BlockError> {
    let pos_of = |offset: usize| -> (usize, usize) {
        let before = &src[..offset];
        let line = before.matches('\n').count() + 1;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[start..].chars().count() + 1)
    };
    // Open blocks: (keyword, offset of its action).
    let mut open: Vec<(&'static str, usize)> = Vec::new();
    let mut i = 0;
    while let Some(found) = src[i..].find(left) {
        let action_start = i + found;
        let mut j = action_start + left.len();
        // Left trim marker: "-" followed by a space.
        let rest = &src[j..];
        if rest.starts_with("- ")
            || rest.starts_with("-\t")
            || rest.starts_with("-\n")
            || rest.starts_with("-\r")
        {
            j += 1;
        }
        let after_ws = src[j..].trim_start_matches([' ', '\t', '\n', '\r']);
        j = src.len() - after_ws.len();
        if after_ws.starts_with("/*") {
            // Comment: ends at "*/", then the right delimiter.
            match src[j + 2..].find("*/") {
                Some(end) => {
                    let k = j + 2 + end + 2;
                    i = match src[k..].find(right) {
                        Some(r) => k + r + right.len(),
                        None => src.len(),
                    };
                    continue;
                }
                None => {
                    return Err((
                        "unclosed comment".into(),
                        pos_of(action_start).0,
                        pos_of(action_start).1,
                    ));
                }
            }
        }
        let word: String = after_ws
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // Find the end of the action, skipping quoted text.
        let bytes = src.as_bytes();
        let mut k = j;
        let mut end = None;
        while k < src.len() {
            if bytes[k..].starts_with(right.as_bytes()) {
                end = Some(k + right.len());
                break;
            }
            match bytes[k] {
                b'"' | b'\'' => {
                    let q = bytes[k];
                    k += 1;
                    while k < src.len() && bytes[k] != q {
                        if bytes[k] == b'\\' {
                            k += 1;
                        }
                        k += 1;
                    }
                    k += 1;
                }
                b'`' => {
                    k += 1;
                    while k < src.len() && bytes[k] != b'`' {
                        k += 1;
                    }
                    k += 1;
                }
                _ => k += 1,
            }
        }
        let (line, col) = pos_of(action_start);
        match word.as_str() {
            "if" => open.push(("if", action_start)),
            "range" => open.push(("range", action_start)),
            "with" => open.push(("with", action_start)),
            "define" => open.push(("define", action_start)),
            "block" => open.push(("block", action_start)),
            "end" if open.pop().is_none() => {
                return Err(("unexpected {{end}}".into(), line, col));
            }
            "else" => match open.last() {
                Some(("if" | "range" | "with", _)) => {}
                _ => return Err(("unexpected {{else}}".into(), line, col)),
            },
            _ => {}
        }
        match end {
            Some(e) => i = e.min(src.len()),
            None => return Err(("unclosed action".into(), line, col)),
        }
    }
    if let Some((kw, offset)) = open.last() {
        let (line, col) = pos_of(*offset);
        return Err((
            format!("unexpected EOF: {{{{{kw}}}}} is not closed by {{{{end}}}}"),
            line,
            col,
        ));
    }
    Ok(())
}

/// Which entries of the root data a template reads (see [`super::DataRefs`]).
pub(crate) struct Roots<'a> {
    src: &'a str,
    pub names: BTreeSet<String>,
    pub whole: Option<(usize, usize)>,
}

impl<'a> Roots<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Roots {
            src,
            names: BTreeSet::new(),
            whole: None,
        }
    }

    fn whole_at(&mut self, pos: Pos) {
        if self.whole.is_none() {
            let col = Walk::new(self.src, 0, |_| true).col(pos);
            self.whole = Some((pos.line, col));
        }
    }

    /// `root`: dot is the root data here; `define`: inside a `{{define}}` body, where `$`
    /// is whatever the caller passed.
    pub(crate) fn list(&mut self, list: &ListNode, root: bool, define: bool) {
        for node in &list.nodes {
            match node {
                Node::List(l) => self.list(l, root, define),
                Node::Action(a) => self.pipe(&a.pipe, root, define),
                Node::If(b) => {
                    self.pipe(&b.pipe, root, define);
                    self.list(&b.body, root, define);
                    if let Some(e) = &b.else_body {
                        self.list(e, root, define);
                    }
                }
                Node::Range(b) | Node::With(b) => {
                    self.pipe(&b.pipe, root, define);
                    self.list(&b.body, false, define);
                    if let Some(e) = &b.else_body {
                        self.list(e, root, define);
                    }
                }
                Node::Template(t) => {
                    if let Some(p) = &t.pipe {
                        self.pipe(p, root, define);
                    }
                }
                Node::Define(d) => self.list(&d.body, false, true),
                _ => {}
            }
        }
    }

    fn pipe(&mut self, pipe: &PipeNode, root: bool, define: bool) {
        for cmd in &pipe.commands {
            // `index . "name" …` / `index $ "name" …` names an entry.
            if let [
                Expr::Identifier(_, f),
                data,
                Expr::String(_, lit),
                rest @ ..,
            ] = &cmd.args[..]
                && f.as_str() == "index"
            {
                let is_root = match data {
                    Expr::Dot(_) => root,
                    Expr::Variable(_, v, fields) => {
                        v.as_str() == "$" && fields.is_empty() && !define
                    }
                    _ => false,
                };
                if is_root {
                    self.names.insert(lit.to_string());
                    for e in rest {
                        self.expr(e, root, define);
                    }
                    continue;
                }
            }
            for e in &cmd.args {
                self.expr(e, root, define);
            }
        }
    }

    fn expr(&mut self, expr: &Expr, root: bool, define: bool) {
        match expr {
            Expr::Field(pos, fields) if root => match fields.first() {
                Some(f) => {
                    self.names.insert(f.to_string());
                }
                None => self.whole_at(*pos),
            },
            Expr::Dot(pos) if root => self.whole_at(*pos),
            Expr::Variable(pos, v, fields) if v.as_str() == "$" && !define => {
                match fields.first() {
                    Some(f) => {
                        self.names.insert(f.to_string());
                    }
                    None => self.whole_at(*pos),
                }
            }
            Expr::Pipe(_, p) => self.pipe(p, root, define),
            Expr::Chain(_, inner, _) => self.expr(inner, root, define),
            _ => {}
        }
    }
}
