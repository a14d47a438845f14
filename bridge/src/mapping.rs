//! What a sink receives: destination, key and headers from the route's rules, and the
//! envelope for sinks that cannot carry metadata natively.
//!
//! Envelopes (`envelope:` on a destination):
//! - `json`: `{"id", "topic", "key", "content_type", "timestamp", "reply_to",
//!   "correlation_id", "headers": {name: [value, …]}, "payload"}`. Text stays text; binary
//!   payloads, keys and header values are `{"base64": "…"}`.
//! - `cloudevents`: CloudEvents 1.0 structured mode: `specversion`, `id`, `source`
//!   (`polybridge/<route>`), `type` (`polybridge.message`), `subject` (source topic),
//!   `time`, `datacontenttype`, `data` (JSON payloads inline, text as a string) or
//!   `data_base64`, and the headers under the extension attribute `polybridgeheaders`.
//! - `cloudevents-binary`: CloudEvents 1.0 binary mode. The payload and content type stay
//!   as they are (`datacontenttype` is the sink's native content type); the attributes
//!   `specversion` (`1.0`), `id` (message id), `source` (`polybridge/<route>`), `type`
//!   (`polybridge.message`), `subject` (source topic), `time` (when the message has a
//!   timestamp) and `partitionkey` (when it has a key) are added as headers named by the
//!   sink protocol's binding ([`cloudevents_prefix`]): `ce_` for Kafka, `cloudEvents_` for
//!   AMQP, no prefix for MQTT 5 user properties, `ce-` for NATS, HTTP and the others. User
//!   headers travel beside them unchanged.

use std::borrow::Cow;
use std::time::SystemTime;

use base64::Engine;
use polybridge::{Bytes, HeaderValue, Headers, Message};
use serde_json::{json, Map, Value};

use crate::config::{Envelope, SinkConfig};
use crate::template::{RenderError, TemplateInput};

/// A message ready for one sink. Borrowed when nothing had to change: a literal
/// destination and a sink without key, header or envelope rules (no allocation).
pub struct Prepared<'a> {
    /// Rendered destination.
    pub destination: Cow<'a, str>,
    /// The message after key, header and envelope rules.
    pub message: Cow<'a, Message>,
}

/// Whether `sink` changes messages at all (key, header, envelope rules).
fn rewrites(sink: &SinkConfig) -> bool {
    sink.key.is_some()
        || !sink.headers.drop.is_empty()
        || !sink.headers.rename.is_empty()
        || !sink.headers.set.is_empty()
        || sink.envelope != Envelope::None
        || sink.drop_headers
}

/// Applies `sink`'s rules to `message` from `topic`.
pub fn prepare<'a>(
    sink: &'a SinkConfig,
    input: &TemplateInput<'a>,
) -> Result<Prepared<'a>, RenderError> {
    let destination = sink.destination.render_cow(input)?;
    if !rewrites(sink) {
        return Ok(Prepared {
            destination,
            message: Cow::Borrowed(input.message),
        });
    }
    let mut message = input.message.clone();
    if let Some(key) = &sink.key {
        message.key = Some(Bytes::from(key.render(input)?));
    }
    for name in &sink.headers.drop {
        message.headers.remove(name);
    }
    for (from, to) in &sink.headers.rename {
        let values: Vec<HeaderValue> = message.headers.get_all(from).cloned().collect();
        if !values.is_empty() {
            message.headers.remove(from);
            for v in values {
                message.headers.append(to.clone(), v);
            }
        }
    }
    for (name, value) in &sink.headers.set {
        message.headers.set(name.clone(), value.render(input)?);
    }
    match sink.envelope {
        Envelope::None => {}
        Envelope::Json => {
            message.payload = Bytes::from(json_envelope(input.topic, &message).to_string());
            message.content_type = Some("application/json".into());
        }
        Envelope::CloudEvents => {
            message.payload =
                Bytes::from(cloudevent(input.route, input.topic, &message).to_string());
            message.content_type = Some("application/cloudevents+json".into());
        }
        Envelope::CloudEventsBinary => {
            cloudevent_binary(input.route, input.topic, &mut message, &sink.scheme)
        }
    }
    if sink.drop_headers {
        message.headers = Headers::new();
    }
    Ok(Prepared {
        destination,
        message: Cow::Owned(message),
    })
}

/// Text when UTF-8, else `{"base64": …}`.
pub fn bytes_value(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
    }
}

fn headers_value(headers: &Headers) -> Value {
    let mut map = Map::new();
    for (name, value) in headers.iter() {
        let v = match value {
            HeaderValue::Text(s) => Value::String(s.clone()),
            HeaderValue::Binary(b) => {
                json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) })
            }
        };
        match map.get_mut(name) {
            Some(Value::Array(list)) => list.push(v),
            _ => {
                map.insert(name.to_owned(), Value::Array(vec![v]));
            }
        }
    }
    Value::Object(map)
}

fn rfc3339(t: Option<SystemTime>) -> Value {
    t.map(|t| Value::String(humantime::format_rfc3339_millis(t).to_string()))
        .unwrap_or(Value::Null)
}

/// The JSON envelope of `message`.
pub fn json_envelope(topic: &str, message: &Message) -> Value {
    json!({
        "id": message.id,
        "topic": topic,
        "key": message.key.as_deref().map(bytes_value),
        "content_type": message.content_type,
        "timestamp": rfc3339(message.timestamp),
        "reply_to": message.reply_to,
        "correlation_id": message.correlation_id,
        "headers": headers_value(&message.headers),
        "payload": bytes_value(&message.payload),
    })
}

/// The header-name prefix of CloudEvents attributes in binary mode, by the sink's URL
/// scheme, from each protocol binding: Kafka `ce_`; AMQP `cloudEvents_` (the AMQP binding's
/// JMS-safe form; consumers also accept `cloudEvents:`); MQTT 5 user properties carry the
/// bare attribute names; HTTP and NATS `ce-`. Protocols without a binding (STOMP, Redis,
/// memory) use `ce-` too.
pub fn cloudevents_prefix(scheme: &str) -> &'static str {
    match scheme {
        "kafka" | "kafkas" => "ce_",
        "amqp" | "amqps" => "cloudEvents_",
        "mqtt" | "mqtts" => "",
        _ => "ce-",
    }
}

/// Adds the CloudEvents binary-mode attribute headers to `message`.
fn cloudevent_binary(route: &str, topic: &str, message: &mut Message, scheme: &str) {
    let p = cloudevents_prefix(scheme);
    let mut attrs: Vec<(&str, String)> = vec![
        ("specversion", "1.0".into()),
        ("id", message.id.clone()),
        ("source", format!("polybridge/{route}")),
        ("type", "polybridge.message".into()),
        ("subject", topic.to_owned()),
    ];
    if let Value::String(t) = rfc3339(message.timestamp) {
        attrs.push(("time", t));
    }
    if let Some(key) = &message.key {
        if let Ok(k) = std::str::from_utf8(key) {
            attrs.push(("partitionkey", k.to_owned()));
        }
    }
    for (name, value) in attrs {
        message.headers.set(format!("{p}{name}"), value);
    }
}

fn cloudevent(route: &str, topic: &str, message: &Message) -> Value {
    let mut event = json!({
        "specversion": "1.0",
        "id": message.id,
        "source": format!("polybridge/{route}"),
        "type": "polybridge.message",
        "subject": topic,
        "time": rfc3339(message.timestamp),
        "datacontenttype": message.content_type.clone().unwrap_or_else(|| "application/octet-stream".into()),
        "polybridgeheaders": headers_value(&message.headers),
    });
    let is_json = message
        .content_type
        .as_deref()
        .is_some_and(|c| c.contains("json"));
    let data = match (is_json, serde_json::from_slice::<Value>(&message.payload)) {
        (true, Ok(v)) => ("data", v),
        _ => match std::str::from_utf8(&message.payload) {
            Ok(s) => ("data", Value::String(s.to_owned())),
            Err(_) => (
                "data_base64",
                Value::String(base64::engine::general_purpose::STANDARD.encode(&message.payload)),
            ),
        },
    };
    if let Value::Object(map) = &mut event {
        map.insert(data.0.to_owned(), data.1);
        if let Some(key) = &message.key {
            map.insert("partitionkey".into(), bytes_value(key));
        }
    }
    event
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::HeaderRules;
    use crate::template::Template;

    fn sink(envelope: Envelope, drop_headers: bool) -> SinkConfig {
        SinkConfig {
            broker: "b".into(),
            destination: Template::parse("out.{1}", 1).unwrap(),
            when: None,
            key: Some(Template::parse("{1}", 1).unwrap()),
            headers: HeaderRules {
                drop: vec!["secret".into()],
                rename: vec![("unit".into(), "x-unit".into())],
                set: vec![("source".into(), Template::parse("{route}", 1).unwrap())],
            },
            envelope,
            drop_headers,
            scheme: "memory".into(),
        }
    }

    fn message() -> Message {
        Message::new(vec![0u8, 159, 146, 150])
            .with_id("m1")
            .with_header("unit", "C")
            .with_header("secret", "s")
            .with_header("bin", vec![1u8, 2])
    }

    #[test]
    fn applies_destination_key_and_header_rules() {
        let m = message();
        let input = TemplateInput {
            route: "r",
            topic: "s/kitchen",
            captures: &["kitchen"],
            message: &m,
        };
        let s = sink(Envelope::None, false);
        let p = prepare(&s, &input).unwrap();
        assert_eq!(p.destination, "out.kitchen");
        assert_eq!(p.message.key.as_deref(), Some(&b"kitchen"[..]));
        assert_eq!(p.message.headers.get_str("x-unit"), Some("C"));
        assert_eq!(p.message.headers.get("unit"), None);
        assert_eq!(p.message.headers.get("secret"), None);
        assert_eq!(p.message.headers.get_str("source"), Some("r"));
        assert_eq!(p.message.payload, m.payload);
    }

    #[test]
    fn a_sink_without_rules_borrows_destination_and_message() {
        let m = message();
        let input = TemplateInput {
            route: "r",
            topic: "s/kitchen",
            captures: &["kitchen"],
            message: &m,
        };
        let plain = SinkConfig {
            destination: Template::parse("out.literal", 1).unwrap(),
            key: None,
            headers: HeaderRules::default(),
            ..sink(Envelope::None, false)
        };
        let p = prepare(&plain, &input).unwrap();
        assert!(matches!(p.destination, Cow::Borrowed("out.literal")));
        assert!(matches!(p.message, Cow::Borrowed(b) if std::ptr::eq(b, &m)));
        // A placeholder or a rule makes a new destination or message.
        let s = sink(Envelope::None, false);
        let p = prepare(&s, &input).unwrap();
        assert!(matches!(p.destination, Cow::Owned(ref d) if d == "out.kitchen"));
        assert!(matches!(p.message, Cow::Owned(_)));
    }

    #[test]
    fn json_envelope_keeps_binary_values_lossless() {
        let m = message();
        let input = TemplateInput {
            route: "r",
            topic: "s/kitchen",
            captures: &["kitchen"],
            message: &m,
        };
        let s = sink(Envelope::Json, true);
        let p = prepare(&s, &input).unwrap();
        assert!(p.message.headers.is_empty());
        let v: Value = serde_json::from_slice(&p.message.payload).unwrap();
        assert_eq!(v["id"], "m1");
        assert_eq!(v["headers"]["x-unit"][0], "C");
        assert_eq!(v["headers"]["bin"][0]["base64"], "AQI=");
        let b64 = v["payload"]["base64"].as_str().unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
            &m.payload[..]
        );
    }

    #[test]
    fn cloudevents_structured_mode() {
        let m = Message::new(r#"{"t":1}"#)
            .with_id("e1")
            .with_content_type("application/json");
        let input = TemplateInput {
            route: "r",
            topic: "a.b",
            captures: &["b"],
            message: &m,
        };
        let s = sink(Envelope::CloudEvents, false);
        let p = prepare(&s, &input).unwrap();
        let v: Value = serde_json::from_slice(&p.message.payload).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["subject"], "a.b");
        assert_eq!(v["data"]["t"], 1);
        assert_eq!(
            p.message.content_type.as_deref(),
            Some("application/cloudevents+json")
        );
    }

    #[test]
    fn cloudevents_binary_mode_puts_attributes_in_protocol_headers() {
        let m = Message::new(r#"{"t":1}"#)
            .with_id("e1")
            .with_key("k1")
            .with_header("unit", "C")
            .with_content_type("application/json");
        let input = TemplateInput {
            route: "r",
            topic: "a.b",
            captures: &["b"],
            message: &m,
        };
        for (scheme, prefix) in [
            ("kafka", "ce_"),
            ("amqp", "cloudEvents_"),
            ("mqtt", ""),
            ("nats", "ce-"),
            ("jetstream", "ce-"),
            ("stomp", "ce-"),
        ] {
            let mut s = sink(Envelope::CloudEventsBinary, false);
            s.scheme = scheme.into();
            let p = prepare(&s, &input).unwrap();
            let h = |n: &str| {
                p.message
                    .headers
                    .get_str(&format!("{prefix}{n}"))
                    .map(str::to_owned)
            };
            assert_eq!(h("specversion").as_deref(), Some("1.0"), "{scheme}");
            assert_eq!(h("id").as_deref(), Some("e1"), "{scheme}");
            assert_eq!(h("source").as_deref(), Some("polybridge/r"), "{scheme}");
            assert_eq!(h("type").as_deref(), Some("polybridge.message"));
            assert_eq!(h("subject").as_deref(), Some("a.b"));
            assert!(h("time").unwrap().ends_with('Z'), "{scheme}");
            // The sink's key template set the key to the capture.
            assert_eq!(h("partitionkey").as_deref(), Some("b"));
            // The payload and the content type are untouched: datacontenttype is native.
            assert_eq!(&p.message.payload[..], br#"{"t":1}"#);
            assert_eq!(p.message.content_type.as_deref(), Some("application/json"));
            assert_eq!(p.message.headers.get_str("x-unit"), Some("C"));
        }
    }
}
