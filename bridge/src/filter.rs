//! Route filters and sink conditions: CEL expressions (crate `cel`) over a message.
//!
//! Variables an expression can use:
//!
//! | variable | type | value |
//! |---|---|---|
//! | `topic` | string | the concrete source topic |
//! | `captures` | list of strings | the source pattern's wildcard captures (`captures[0]` is `{1}`) |
//! | `headers` | map string → string/bytes | the first value of each header (text as string, binary as bytes) |
//! | `key` | string, bytes or null | the message key (string when UTF-8) |
//! | `id` | string | the message id |
//! | `content_type` | string or null | the content type |
//! | `payload` | any | the payload parsed as JSON; `null` when it is not JSON |
//! | `payload_text` | string or null | the payload as text when it is UTF-8 |
//!
//! Examples: `payload.temp > 30.0`, `headers["tenant"] == "acme"`,
//! `captures[0].startsWith("eu-")`, `key != null`.
//!
//! An expression is compiled when the rule file is loaded (syntax errors and unknown
//! variables are config errors). Only the variables it uses are built per message (a filter
//! on `topic` never parses the payload). An expression that fails at run time (a missing
//! field, a non-boolean result) is an error for that message: it is retried and then
//! dead-lettered with the reason, never silently dropped or passed.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map, Value};
use cel::{Context, Program};
use polybridge::{HeaderValue, Message};

/// Variables a filter may use.
pub const VARIABLES: &[&str] = &[
    "topic",
    "captures",
    "headers",
    "key",
    "id",
    "content_type",
    "payload",
    "payload_text",
];

/// A compiled CEL expression that yields a boolean.
pub struct Filter {
    source: String,
    program: Program,
    uses: Uses,
}

#[derive(Clone, Copy, Default)]
struct Uses {
    captures: bool,
    headers: bool,
    key: bool,
    content_type: bool,
    payload: bool,
    payload_text: bool,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({:?})", self.source)
    }
}

impl Filter {
    /// Compiles `source`, refusing syntax errors and unknown variables.
    pub fn compile(source: &str) -> Result<Self, String> {
        let program = Program::compile(source).map_err(|e| {
            // The parser's message spans several lines (a caret under the source); keep the
            // first line so diagnostics stay one per line.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("syntax error").trim();
            format!("invalid CEL expression {source:?}: {first}")
        })?;
        let references = program.references();
        for variable in references.variables() {
            if !VARIABLES.contains(&variable) {
                return Err(format!(
                    "unknown variable {variable:?} in {source:?}; a filter can use: {}",
                    VARIABLES.join(", ")
                ));
            }
        }
        let uses = Uses {
            captures: references.has_variable("captures"),
            headers: references.has_variable("headers"),
            key: references.has_variable("key"),
            content_type: references.has_variable("content_type"),
            payload: references.has_variable("payload"),
            payload_text: references.has_variable("payload_text"),
        };
        Ok(Filter {
            source: source.to_owned(),
            program,
            uses,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression for one message.
    pub fn matches(
        &self,
        topic: &str,
        captures: &[&str],
        message: &Message,
    ) -> Result<bool, String> {
        let mut context = Context::default();
        context.add_variable_from_value("topic", topic);
        context.add_variable_from_value("id", message.id.as_str());
        if self.uses.captures {
            let list: Vec<Value> = captures.iter().map(|c| Value::from(*c)).collect();
            context.add_variable_from_value("captures", Value::List(Arc::new(list)));
        }
        if self.uses.headers {
            let mut map: HashMap<Key, Value> = HashMap::new();
            for (name, value) in message.headers.iter() {
                map.entry(Key::from(name.to_owned()))
                    .or_insert_with(|| header_value(value));
            }
            context.add_variable_from_value("headers", Value::Map(Map { map: Arc::new(map) }));
        }
        if self.uses.key {
            let key = match &message.key {
                None => Value::Null,
                Some(k) => match std::str::from_utf8(k) {
                    Ok(s) => Value::from(s),
                    Err(_) => Value::from(k.to_vec()),
                },
            };
            context.add_variable_from_value("key", key);
        }
        if self.uses.content_type {
            context.add_variable_from_value("content_type", message.content_type.clone());
        }
        if self.uses.payload {
            let payload = serde_json::from_slice::<serde_json::Value>(&message.payload)
                .map(json_value)
                .unwrap_or(Value::Null);
            context.add_variable_from_value("payload", payload);
        }
        if self.uses.payload_text {
            let text = std::str::from_utf8(&message.payload)
                .ok()
                .map(str::to_owned);
            context.add_variable_from_value("payload_text", text);
        }
        match self.program.execute(&context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "filter {:?} gave {other:?}, not a boolean",
                self.source
            )),
            Err(e) => Err(format!("filter {:?} failed: {e}", self.source)),
        }
    }
}

fn header_value(value: &HeaderValue) -> Value {
    match value {
        HeaderValue::Text(s) => Value::from(s.as_str()),
        HeaderValue::Binary(b) => Value::from(b.to_vec()),
    }
}

fn json_value(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::UInt(u),
            (_, _, Some(f)) => Value::Float(f),
            _ => Value::Null,
        },
        serde_json::Value::String(s) => Value::from(s),
        serde_json::Value::Array(a) => {
            Value::List(Arc::new(a.into_iter().map(json_value).collect()))
        }
        serde_json::Value::Object(o) => {
            let map: HashMap<Key, Value> = o
                .into_iter()
                .map(|(k, v)| (Key::from(k), json_value(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn filters_on_payload_headers_key_and_captures() {
        let m = Message::new(r#"{"temp": 31.5, "room": {"name": "kitchen"}}"#)
            .with_key("k1")
            .with_header("tenant", "acme");
        let eval = |src: &str| {
            Filter::compile(src)
                .unwrap()
                .matches("s/kitchen/t", &["kitchen"], &m)
        };
        assert_eq!(eval("payload.temp > 30.0"), Ok(true));
        assert_eq!(eval("payload.room.name == 'kitchen'"), Ok(true));
        assert_eq!(eval("headers['tenant'] == 'acme' && key == 'k1'"), Ok(true));
        assert_eq!(
            eval("captures[0] == 'kitchen' && topic.startsWith('s/')"),
            Ok(true)
        );
        assert_eq!(eval("content_type == null"), Ok(true));
        assert!(eval("payload.missing > 1").is_err());
        assert!(eval("'not a bool'").unwrap_err().contains("not a boolean"));
    }

    #[test]
    fn refuses_syntax_errors_and_unknown_variables() {
        assert!(Filter::compile("payload.temp >")
            .unwrap_err()
            .contains("invalid CEL"));
        let e = Filter::compile("bodyy == 'x'").unwrap_err();
        assert!(e.contains("unknown variable \"bodyy\""), "{e}");
    }

    #[test]
    fn non_json_payload_is_null_and_text_is_available() {
        let m = Message::new("plain text");
        let f = Filter::compile("payload == null && payload_text == 'plain text'").unwrap();
        assert_eq!(f.matches("t", &[], &m), Ok(true));
    }
}
