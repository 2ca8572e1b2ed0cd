//! Parse-time checks (gaps G1 and G5 of issue 11): every function a template names must be
//! one of ours, even in a branch that never runs (Go's `text/template` fails at parse,
//! gotmpl only when the call runs), and the tree is bounded in size.

use std::collections::BTreeSet;

use gotmpl::parse::{Expr, ListNode, Node, PipeNode, Pos};

/// What the walk found wrong first.
pub(crate) enum Finding {
    /// A function that is not supported, and where (1-based line, column in characters).
    Unsupported { function: String, line: usize, col: usize },
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
            Expr::Identifier(pos, name) => {
                if !(self.is_supported)(name) {
                    self.finding = Some(Finding::Unsupported {
                        function: name.to_string(),
                        line: pos.line,
                        col: self.col(*pos),
                    });
                }
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
