//! Destination, key and header templates: `sensors.{1}.temp`, `{header.tenant}-{key}`.
//!
//! | placeholder | value |
//! |---|---|
//! | `{1}`, `{2}`, … | the source topic's wildcard captures, numbered as written (`>`/`#` each one capture holding the rest of the topic) |
//! | `{topic}` | the concrete source topic |
//! | `{key}` | the message key (must be UTF-8) |
//! | `{id}` | the message id |
//! | `{header.NAME}` | the first value of header `NAME` (must be UTF-8) |
//! | `{route}` | the route's name |
//!
//! `{{` and `}}` write literal braces. A template is parsed when the rule file is loaded, so
//! an unknown placeholder or a capture the source pattern does not have is a config error
//! with its position; a value missing at run time (no key, no such header) is an error for
//! that message, which is then retried or dead-lettered, never dropped.

use std::fmt;

use polybridge::Message;

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Capture(usize),
    Topic,
    Key,
    Id,
    Header(String),
    Route,
}

/// What a template is rendered from.
pub struct TemplateInput<'a> {
    /// The route's name.
    pub route: &'a str,
    /// The concrete source topic.
    pub topic: &'a str,
    /// Wildcard captures of the source pattern, in order.
    pub captures: &'a [&'a str],
    /// The message.
    pub message: &'a Message,
}

/// Why a template cannot be rendered for one message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// The message has no key.
    #[error("template {template:?} uses {{key}} but the message has no key")]
    NoKey {
        /// The template text.
        template: String,
    },
    /// A value is not UTF-8.
    #[error("template {template:?}: {what} is not UTF-8")]
    NotUtf8 {
        /// The template text.
        template: String,
        /// Which value.
        what: String,
    },
    /// A header is missing.
    #[error("template {template:?} uses header {name:?}, which the message does not have")]
    NoHeader {
        /// The template text.
        template: String,
        /// The header name.
        name: String,
    },
    /// Fewer captures than the template uses (a pattern changed under a running route).
    #[error("template {template:?} uses capture {{{index}}} but the topic gave {available}")]
    NoCapture {
        /// The template text.
        template: String,
        /// The capture number.
        index: usize,
        /// How many captures there were.
        available: usize,
    },
}

impl Template {
    /// Parses `text`; `captures` is how many wildcard captures the source pattern has.
    pub fn parse(text: &str, captures: usize) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(format!(
                            "unclosed '{{' at character {} (write {{{{ for a literal brace)",
                            i + 1
                        ));
                    };
                    let name = &rest[..end];
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(parse_placeholder(name, captures)?);
                }
                '}' => {
                    return Err(format!(
                        "unmatched '}}' at character {} (write }}}} for a literal brace)",
                        i + 1
                    ))
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// Whether the template has no placeholder.
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Renders the template for one message, without allocating when it has no
    /// placeholder (a literal destination, the common case on the hot path).
    pub fn render_cow<'s>(
        &'s self,
        input: &TemplateInput<'_>,
    ) -> Result<std::borrow::Cow<'s, str>, RenderError> {
        match self.parts.as_slice() {
            [] => Ok(std::borrow::Cow::Borrowed("")),
            [Part::Text(t)] => Ok(std::borrow::Cow::Borrowed(t)),
            _ => self.render(input).map(std::borrow::Cow::Owned),
        }
    }

    /// Renders the template for one message.
    pub fn render(&self, input: &TemplateInput<'_>) -> Result<String, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Capture(n) => match input.captures.get(n - 1) {
                    Some(c) => out.push_str(c),
                    None => {
                        return Err(RenderError::NoCapture {
                            template: self.to_string(),
                            index: *n,
                            available: input.captures.len(),
                        })
                    }
                },
                Part::Topic => out.push_str(input.topic),
                Part::Route => out.push_str(input.route),
                Part::Id => out.push_str(&input.message.id),
                Part::Key => {
                    let key = input
                        .message
                        .key
                        .as_ref()
                        .ok_or_else(|| RenderError::NoKey {
                            template: self.to_string(),
                        })?;
                    out.push_str(std::str::from_utf8(key).map_err(|_| RenderError::NotUtf8 {
                        template: self.to_string(),
                        what: "the key".into(),
                    })?);
                }
                Part::Header(name) => {
                    let value =
                        input
                            .message
                            .headers
                            .get(name)
                            .ok_or_else(|| RenderError::NoHeader {
                                template: self.to_string(),
                                name: name.clone(),
                            })?;
                    out.push_str(value.as_str().ok_or_else(|| RenderError::NotUtf8 {
                        template: self.to_string(),
                        what: format!("header {name:?}"),
                    })?);
                }
            }
        }
        Ok(out)
    }
}

fn parse_placeholder(name: &str, captures: usize) -> Result<Part, String> {
    if let Ok(n) = name.parse::<usize>() {
        if n == 0 || n > captures {
            return Err(match captures {
                0 => format!("{{{n}}} refers to a wildcard capture, but the source topic has no wildcards"),
                1 => format!("{{{n}}} refers to capture {n}, but the source topic has 1 wildcard: use {{1}}"),
                c => format!("{{{n}}} refers to capture {n}, but the source topic has {c} wildcards: use {{1}}..{{{c}}}"),
            });
        }
        return Ok(Part::Capture(n));
    }
    match name {
        "topic" => Ok(Part::Topic),
        "key" => Ok(Part::Key),
        "id" => Ok(Part::Id),
        "route" => Ok(Part::Route),
        _ => match name.strip_prefix("header.") {
            Some(h) if !h.is_empty() => Ok(Part::Header(h.to_owned())),
            _ => Err(format!(
                "unknown placeholder {{{name}}}; use {{1}}.., {{topic}}, {{key}}, {{id}}, {{route}} or {{header.NAME}}"
            )),
        },
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(t) => write!(f, "{}", t.replace('{', "{{").replace('}', "}}"))?,
                Part::Capture(n) => write!(f, "{{{n}}}")?,
                Part::Topic => f.write_str("{topic}")?,
                Part::Key => f.write_str("{key}")?,
                Part::Id => f.write_str("{id}")?,
                Part::Route => f.write_str("{route}")?,
                Part::Header(h) => write!(f, "{{header.{h}}}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn input<'a>(message: &'a Message, captures: &'a [&'a str]) -> TemplateInput<'a> {
        TemplateInput {
            route: "r1",
            topic: "sensors/kitchen/temp",
            captures,
            message,
        }
    }

    #[test]
    fn renders_captures_key_headers_and_escapes() {
        let m = Message::new("x")
            .with_id("m1")
            .with_key("k1")
            .with_header("tenant", "acme");
        let t = Template::parse(
            "sensors.{1}.temp/{key}/{header.tenant}/{id}/{route}/{{x}}",
            1,
        )
        .unwrap();
        assert_eq!(
            t.render(&input(&m, &["kitchen"])).unwrap(),
            "sensors.kitchen.temp/k1/acme/m1/r1/{x}"
        );
        assert_eq!(
            t.to_string(),
            "sensors.{1}.temp/{key}/{header.tenant}/{id}/{route}/{{x}}"
        );
        assert!(Template::parse("fixed", 0).unwrap().is_constant());
        assert_eq!(
            Template::parse("{topic}", 0)
                .unwrap()
                .render(&input(&m, &[]))
                .unwrap(),
            "sensors/kitchen/temp"
        );
    }

    #[test]
    fn refuses_bad_templates_with_reasons() {
        let e = Template::parse("a.{2}", 1).unwrap_err();
        assert!(e.contains("has 1 wildcard"), "{e}");
        let e = Template::parse("a.{1}", 0).unwrap_err();
        assert!(e.contains("no wildcards"), "{e}");
        let e = Template::parse("a.{nope}", 0).unwrap_err();
        assert!(e.contains("unknown placeholder {nope}"), "{e}");
        assert!(Template::parse("a.{1", 1).unwrap_err().contains("unclosed"));
        assert!(Template::parse("a}", 1).unwrap_err().contains("unmatched"));
        assert!(Template::parse("{header.}", 1).is_err());
    }

    #[test]
    fn missing_values_are_errors_not_empty_strings() {
        let m = Message::new("x").with_key(vec![0xff]);
        let t = Template::parse("{key}", 0).unwrap();
        assert!(matches!(
            t.render(&input(&m, &[])),
            Err(RenderError::NotUtf8 { .. })
        ));
        let t = Template::parse("{header.h}", 0).unwrap();
        assert!(matches!(
            t.render(&input(&m, &[])),
            Err(RenderError::NoHeader { .. })
        ));
        let m = Message::new("x");
        let t = Template::parse("{key}", 0).unwrap();
        assert!(matches!(
            t.render(&input(&m, &[])),
            Err(RenderError::NoKey { .. })
        ));
    }
}
