//! A reader over a parsed YAML tree that records every problem with its position instead of
//! stopping at the first, so `polybridge validate` can list them all.

use std::fmt;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};

/// A problem in a rule file, at a line and column (both from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Collects diagnostics while reading.
#[derive(Default)]
pub struct Diagnostics {
    list: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Records a problem at `span`.
    pub fn error(&mut self, span: &Span, message: impl Into<String>) {
        let (line, column) = position(span);
        self.list.push(Diagnostic {
            line,
            column,
            message: message.into(),
        });
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The problems, sorted by position.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.list.sort_by_key(|d| (d.line, d.column));
        self.list
    }
}

/// Line and column of a span's start (1, 1 when unknown).
pub fn position(span: &Span) -> (usize, usize) {
    span.start()
        .map(|m| (m.line(), m.column()))
        .unwrap_or((1, 1))
}

/// A mapping being read: every key must be taken, or it is reported as unknown.
pub struct MapReader<'a> {
    map: &'a MarkedMappingNode,
    what: &'static str,
    known: Vec<&'static str>,
}

impl<'a> MapReader<'a> {
    /// Reads `node` as the mapping `what` (e.g. "a route"); `None` (with a diagnostic) if
    /// it is not a mapping.
    pub fn new(node: &'a Node, what: &'static str, diags: &mut Diagnostics) -> Option<Self> {
        match node.as_mapping() {
            Some(map) => Some(MapReader {
                map,
                what,
                known: Vec::new(),
            }),
            None => {
                diags.error(
                    node.span(),
                    format!("{what} must be a mapping (key: value)"),
                );
                None
            }
        }
    }

    /// The span of the whole mapping.
    pub fn span(&self) -> &Span {
        self.map.span()
    }

    /// The node under `key`, if present.
    pub fn node(&mut self, key: &'static str) -> Option<&'a Node> {
        self.known.push(key);
        self.map.get_node(key)
    }

    /// A required scalar string.
    pub fn required_str(
        &mut self,
        key: &'static str,
        diags: &mut Diagnostics,
    ) -> Option<&'a MarkedScalarNode> {
        match self.node(key) {
            Some(node) => scalar(node, key, diags),
            None => {
                diags.error(self.map.span(), format!("{} needs `{key}`", self.what));
                None
            }
        }
    }

    /// An optional scalar string.
    pub fn optional_str(
        &mut self,
        key: &'static str,
        diags: &mut Diagnostics,
    ) -> Option<&'a MarkedScalarNode> {
        self.node(key).and_then(|node| scalar(node, key, diags))
    }

    /// An optional positive integer.
    pub fn optional_usize(&mut self, key: &'static str, diags: &mut Diagnostics) -> Option<usize> {
        let s = self.optional_str(key, diags)?;
        match s.as_str().parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                diags.error(
                    s.span(),
                    format!("`{key}` must be a positive integer, got {:?}", s.as_str()),
                );
                None
            }
        }
    }

    /// An optional boolean.
    pub fn optional_bool(&mut self, key: &'static str, diags: &mut Diagnostics) -> Option<bool> {
        let s = self.optional_str(key, diags)?;
        match s.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            other => {
                diags.error(
                    s.span(),
                    format!("`{key}` must be true or false, got {other:?}"),
                );
                None
            }
        }
    }

    /// Reports every key that was not taken, with a suggestion when one is close.
    pub fn finish(self, diags: &mut Diagnostics) {
        for (key, _) in self.map.iter() {
            let name = key.as_str();
            if !self.known.contains(&name) {
                let hint = match did_you_mean(name, &self.known) {
                    Some(s) => format!("; did you mean `{s}`?"),
                    None => format!("; known keys: {}", self.known.join(", ")),
                };
                diags.error(
                    key.span(),
                    format!("unknown key `{name}` in {}{hint}", self.what),
                );
            }
        }
    }
}

/// `node` as a scalar, or a diagnostic naming `key`.
pub fn scalar<'a>(
    node: &'a Node,
    key: &str,
    diags: &mut Diagnostics,
) -> Option<&'a MarkedScalarNode> {
    match node.as_scalar() {
        Some(s) => Some(s),
        None => {
            diags.error(
                node.span(),
                format!("`{key}` must be a single value, not a list or mapping"),
            );
            None
        }
    }
}

/// The closest of `candidates` to `word`, if close enough to be a likely typo.
pub fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(
            did_you_mean("destinaton", &["destination", "key"]),
            Some("destination")
        );
        assert_eq!(did_you_mean("brokr", &["broker", "topic"]), Some("broker"));
        assert_eq!(did_you_mean("zzz", &["broker", "topic"]), None);
    }
}
