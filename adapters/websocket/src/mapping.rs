//! The JSON framing spoken between the hub and its clients (browsers included).
//!
//! Every frame is one WebSocket text message holding one JSON object with an `op`.
//!
//! **Client → hub**
//!
//! | frame | meaning |
//! |---|---|
//! | `{"op":"publish","ref":1,"topic":"orders.eu", …message fields}` | publish; answered `ok` once the hub's backend confirmed it, or `error` |
//! | `{"op":"subscribe","ref":2,"sub":"s1","pattern":"orders.*","group":"g","max_in_flight":10,"start":"latest","dead_letter":"orders.dlq","auto_ack":false}` | subscribe; only `ref`, `sub`, `pattern` required; answered `ok` once registered |
//! | `{"op":"unsubscribe","ref":3,"sub":"s1"}` | ends `s1`; its unsettled deliveries go back to the backend; answered `ok` |
//! | `{"op":"ack","tag":7}` | settles delivery 7 |
//! | `{"op":"nack","tag":7,"delay_ms":500}` | redeliver, after `delay_ms` if given |
//! | `{"op":"reject","tag":7,"reason":"bad json"}` | dead-letter |
//!
//! **Hub → client**
//!
//! | frame | meaning |
//! |---|---|
//! | `{"op":"welcome","protocol":1,"broker":"memory","capabilities":{…}}` | first frame: what the backend can do |
//! | `{"op":"ok","ref":1}` | the request `ref` succeeded |
//! | `{"op":"error","ref":1,"kind":"payload_too_large","retryable":false,"message":"…"}` | it failed (`kind` is [`Error::kind`]); without `ref` (with `sub`), a subscription failed and ended |
//! | `{"op":"message","sub":"s1","tag":7,"topic":"orders.eu","attempt":1,"redelivered":false, …message fields}` | a delivery, to settle with its `tag` (unless the subscription is `auto_ack`) |
//!
//! **Message fields**: `id`; `payload` (text) or `payload_b64` (base64 bytes; the hub
//! sends `payload` when the bytes are UTF-8); `headers` as `[[name, "text"], [name,
//! {"base64":"…"}], …]` (in order, repeats allowed; an object `{"name":"text"}` is accepted
//! too); `key` or `key_b64`; `content_type`; `timestamp` (Unix ms); `reply_to`;
//! `correlation_id`. All optional except the payload; a missing `id` gets a fresh one.
//!
//! [`Error::kind`]: polybridge_core::Error::kind

use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use polybridge_core::{
    new_message_id, Capabilities, DeliveryGuarantee, Error, HeaderSupport, HeaderValue, Message,
    Ordering, Wildcards,
};
use serde_json::{json, Map, Value as Json};

use crate::BROKER;

/// The protocol version in `welcome`.
pub const PROTOCOL: u64 = 1;

/// Writes the message fields of `message` into `frame`.
pub fn put_message(frame: &mut Map<String, Json>, message: &Message) {
    frame.insert("id".into(), json!(message.id));
    match std::str::from_utf8(&message.payload) {
        Ok(text) => frame.insert("payload".into(), json!(text)),
        Err(_) => frame.insert("payload_b64".into(), json!(BASE64.encode(&message.payload))),
    };
    if !message.headers.is_empty() {
        let headers: Vec<Json> = message
            .headers
            .iter()
            .map(|(name, value)| match value {
                HeaderValue::Text(t) => json!([name, t]),
                HeaderValue::Binary(b) => json!([name, {"base64": BASE64.encode(b)}]),
            })
            .collect();
        frame.insert("headers".into(), Json::Array(headers));
    }
    if let Some(k) = &message.key {
        match std::str::from_utf8(k) {
            Ok(text) => frame.insert("key".into(), json!(text)),
            Err(_) => frame.insert("key_b64".into(), json!(BASE64.encode(k))),
        };
    }
    let mut text = |name: &str, v: &Option<String>| {
        if let Some(v) = v {
            frame.insert(name.into(), json!(v));
        }
    };
    text("content_type", &message.content_type);
    text("reply_to", &message.reply_to);
    text("correlation_id", &message.correlation_id);
    if let Some(ms) = message
        .timestamp
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
    {
        frame.insert("timestamp".into(), json!(ms.as_millis() as u64));
    }
}

/// Reads the message fields of `frame`.
pub fn get_message(frame: &Map<String, Json>) -> Result<Message, String> {
    let bytes = |text: &str, b64: &str| -> Result<Option<Bytes>, String> {
        if let Some(t) = frame.get(text) {
            let t = t
                .as_str()
                .ok_or_else(|| format!("{text} must be a string"))?;
            return Ok(Some(Bytes::copy_from_slice(t.as_bytes())));
        }
        if let Some(b) = frame.get(b64) {
            let b = b
                .as_str()
                .ok_or_else(|| format!("{b64} must be a string"))?;
            return BASE64
                .decode(b)
                .map(|v| Some(Bytes::from(v)))
                .map_err(|e| format!("{b64} is not base64: {e}"));
        }
        Ok(None)
    };
    let payload =
        bytes("payload", "payload_b64")?.ok_or("a message needs payload or payload_b64")?;
    let text = |name: &str| frame.get(name).and_then(Json::as_str).map(str::to_owned);
    let mut m = Message::rebuilt(text("id").unwrap_or_else(new_message_id), payload);
    m.key = bytes("key", "key_b64")?;
    m.content_type = text("content_type");
    m.reply_to = text("reply_to");
    m.correlation_id = text("correlation_id");
    m.timestamp = frame
        .get("timestamp")
        .and_then(Json::as_u64)
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    match frame.get("headers") {
        None | Some(Json::Null) => {}
        Some(Json::Array(headers)) => {
            for h in headers {
                let (Some(name), Some(value)) = (h.get(0).and_then(Json::as_str), h.get(1)) else {
                    return Err("headers must be [[name, value], …]".into());
                };
                m.headers.append(name, header_value(value)?);
            }
        }
        Some(Json::Object(headers)) => {
            for (name, value) in headers {
                m.headers.append(name.as_str(), header_value(value)?);
            }
        }
        Some(_) => return Err("headers must be a list of [name, value] or an object".into()),
    }
    Ok(m)
}

fn header_value(value: &Json) -> Result<HeaderValue, String> {
    match value {
        Json::String(t) => Ok(HeaderValue::Text(t.clone())),
        other => other
            .get("base64")
            .and_then(Json::as_str)
            .and_then(|b| BASE64.decode(b).ok())
            .map(|b| HeaderValue::Binary(Bytes::from(b)))
            .ok_or_else(|| "a header value is a string or {\"base64\":\"…\"}".into()),
    }
}

/// An `error` frame for `error`.
pub fn error_frame(reference: Option<u64>, sub: Option<&str>, error: &Error) -> Json {
    let mut f = Map::new();
    f.insert("op".into(), json!("error"));
    if let Some(r) = reference {
        f.insert("ref".into(), json!(r));
    }
    if let Some(s) = sub {
        f.insert("sub".into(), json!(s));
    }
    f.insert("kind".into(), json!(error.kind()));
    f.insert("retryable".into(), json!(error.is_retryable()));
    f.insert("message".into(), json!(error.to_string()));
    if let Error::PayloadTooLarge { size, limit, .. } = error {
        f.insert("size".into(), json!(size));
        f.insert("limit".into(), json!(limit));
    }
    Json::Object(f)
}

/// The error an `error` frame reports, about `destination`.
pub fn frame_error(frame: &Map<String, Json>, destination: &str) -> Error {
    let message = frame
        .get("message")
        .and_then(Json::as_str)
        .unwrap_or("the hub reported an error")
        .to_owned();
    let kind = frame.get("kind").and_then(Json::as_str).unwrap_or("");
    let number = |k: &str| {
        frame
            .get(k)
            .and_then(Json::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
    };
    match kind {
        "payload_too_large" => Error::PayloadTooLarge {
            broker: BROKER,
            destination: destination.to_owned(),
            size: number("size"),
            limit: number("limit"),
        },
        "closed" => Error::closed(BROKER, message),
        "unsupported" => Error::unsupported(BROKER, message),
        "config" | "pattern" => Error::config(BROKER, message),
        _ if frame.get("retryable").and_then(Json::as_bool) == Some(true) => {
            Error::transient(BROKER, destination, message)
        }
        _ => Error::permanent(BROKER, destination, message),
    }
}

/// `capabilities` as JSON, for `welcome`.
pub fn capabilities_json(c: &Capabilities) -> Json {
    json!({
        "delivery": match c.delivery { DeliveryGuarantee::AtMostOnce => "at_most_once", DeliveryGuarantee::AtLeastOnce => "at_least_once" },
        "confirmed_publish": c.confirmed_publish,
        "ordering": match c.ordering { Ordering::None => "none", Ordering::PerKey => "per_key", Ordering::PerTopic => "per_topic" },
        "persistence": c.persistence,
        "replay": c.replay,
        "consumer_groups": c.consumer_groups,
        "headers": match c.headers { HeaderSupport::None => "none", HeaderSupport::Text => "text", HeaderSupport::Binary => "binary" },
        "keys": c.keys,
        "native_delay": c.native_delay,
        "native_dead_letter": c.native_dead_letter,
        "max_payload": c.max_payload,
        "single_level_wildcards": c.wildcards.single_level,
        "multi_level_wildcards": c.wildcards.multi_level,
        "request_reply": c.request_reply,
        "reconnect": c.reconnect,
    })
}

/// Reads `welcome`'s capabilities; what is missing is taken as not supported.
pub fn capabilities_from_json(j: &Json) -> Capabilities {
    let flag = |k: &str| j.get(k).and_then(Json::as_bool).unwrap_or(false);
    let text = |k: &str| j.get(k).and_then(Json::as_str).unwrap_or("");
    Capabilities {
        delivery: if text("delivery") == "at_least_once" {
            DeliveryGuarantee::AtLeastOnce
        } else {
            DeliveryGuarantee::AtMostOnce
        },
        confirmed_publish: flag("confirmed_publish"),
        ordering: match text("ordering") {
            "per_topic" => Ordering::PerTopic,
            "per_key" => Ordering::PerKey,
            _ => Ordering::None,
        },
        persistence: flag("persistence"),
        replay: flag("replay"),
        consumer_groups: flag("consumer_groups"),
        headers: match text("headers") {
            "binary" => HeaderSupport::Binary,
            "text" => HeaderSupport::Text,
            _ => HeaderSupport::None,
        },
        keys: flag("keys"),
        native_delay: flag("native_delay"),
        native_dead_letter: flag("native_dead_letter"),
        max_payload: j
            .get("max_payload")
            .and_then(Json::as_u64)
            .and_then(|n| usize::try_from(n).ok()),
        wildcards: Wildcards {
            single_level: flag("single_level_wildcards"),
            multi_level: flag("multi_level_wildcards"),
        },
        request_reply: flag("request_reply"),
        reconnect: flag("reconnect"),
        // This client's own `publish_batch` is the default one, whatever the hub's broker.
        batched_publish: false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_capabilities_round_trip() {
        let m = Message::new(vec![0u8, 255])
            .with_id("m1")
            .with_key("k")
            .with_content_type("application/x")
            .with_reply_to("r")
            .with_correlation_id("c")
            .with_header("a", "1")
            .with_header("b", vec![0u8, 0x80])
            .with_header("a", "2");
        let mut f = Map::new();
        put_message(&mut f, &m);
        assert!(f.contains_key("payload_b64"));
        let back = get_message(&f).unwrap();
        assert_eq!(
            (&back.id, &back.payload, &back.key, &back.headers),
            (&m.id, &m.payload, &m.key, &m.headers)
        );
        assert_eq!(
            (back.reply_to, back.correlation_id),
            (m.reply_to, m.correlation_id)
        );
        let browser: Json =
            serde_json::from_str(r#"{"payload":"hi","headers":{"x":"y"}}"#).unwrap();
        let b = get_message(browser.as_object().unwrap()).unwrap();
        assert_eq!(
            (&b.payload[..], b.headers.get_str("x")),
            (&b"hi"[..], Some("y"))
        );
        let caps =
            polybridge_memory::MemoryBroker::capabilities_for(&"memory://x".parse().unwrap())
                .unwrap();
        assert_eq!(capabilities_from_json(&capabilities_json(&caps)), caps);
    }
}
