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
        // One line per problem, whatever a key or value in the message holds (found by
        // the `config_load` fuzz target: a block-scalar key with a newline).
        write!(f, "{}:{}: ", self.line, self.column)?;
        for c in self.message.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                c => fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
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

    /// Where the mapping starts: its first key (a mapping's own span starts after it).
    pub fn span(&self) -> &Span {
        first_key_span(self.map)
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
                diags.error(
                    first_key_span(self.map),
                    format!("{} needs `{key}`", self.what),
                );
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
        self.optional_integer(key, 1, "a positive integer", diags)
    }

    /// An optional integer, 0 or more.
    pub fn optional_count(&mut self, key: &'static str, diags: &mut Diagnostics) -> Option<usize> {
        self.optional_integer(key, 0, "an integer, 0 or more", diags)
    }

    /// An optional integer of at least `min`; `what` names the allowed values in the error.
    fn optional_integer(
        &mut self,
        key: &'static str,
        min: usize,
        what: &str,
        diags: &mut Diagnostics,
    ) -> Option<usize> {
        let s = self.optional_str(key, diags)?;
        match s.as_str().parse::<usize>() {
            Ok(n) if n >= min => Some(n),
            _ => {
                diags.error(
                    s.span(),
                    format!("`{key}` must be {what}, got {:?}", s.as_str()),
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

/// The span of a mapping's first key, or of the mapping when it is empty.
pub fn first_key_span(map: &MarkedMappingNode) -> &Span {
    map.keys().next().map(|k| k.span()).unwrap_or(map.span())
}

/// Where a node starts: the first key of a mapping, else the node itself.
pub fn start_span(node: &Node) -> &Span {
    match node.as_mapping() {
        Some(map) => first_key_span(map),
        None => node.span(),
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
    let len = word.chars().count();
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d < len && *d <= (len / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting insertions, deletions, substitutions and swaps of neighbours as
/// one edit each (optimal string alignment), so `form` is one edit from `from`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
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
        assert_eq!(did_you_mean("c", &["a", "b"]), None);
        assert_eq!(did_you_mean("form", &["name", "from"]), Some("from"));
        assert_eq!(did_you_mean("kafak1", &["kafka1"]), Some("kafka1"));
    }
}
