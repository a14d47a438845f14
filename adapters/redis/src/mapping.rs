//! [`Message`] ↔ Redis: stream entry fields, and the JSON envelope of pub/sub and lists.
//!
//! # Stream entries
//! Redis stream fields and values are binary-safe and may repeat, so everything travels
//! natively, in order:
//!
//! | message | field |
//! |---|---|
//! | payload | `payload` |
//! | id | `id` |
//! | key | `key` |
//! | content type | `content_type` |
//! | timestamp | `timestamp` (milliseconds since the Unix epoch) |
//! | reply-to, correlation id | `reply_to`, `correlation_id` |
//! | a text header `N: V` | `h:N` = `V` (repeated for each value) |
//! | a binary header `N: V` | `hb:N` = `V` (raw bytes) |
//!
//! An entry written by another program (no `payload` field) is delivered as a JSON object
//! of its fields (values as UTF-8 text, invalid bytes replaced) with content type
//! `application/json`; a missing `id` is the entry id.
//!
//! # Envelope (pub/sub and lists with `format=envelope`)
//! A pub/sub message or list element is a single string. With `format=raw` (the default) it
//! is the payload alone, readable by any Redis client, and nothing else travels. With
//! `format=envelope` it is one JSON object that any language can read:
//! `{"polybridge":1,"id":…,"payload":BASE64,"headers":[[NAME,TEXT],[NAME,{"base64":…}]],
//! "key":BASE64,"content_type":…,"timestamp":MS,"reply_to":…,"correlation_id":…,
//! "attempt":N}` (absent fields omitted). Received strings are recognised as envelopes by
//! their `{"polybridge":1,` prefix whatever the format option says; anything else is a raw
//! payload.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use polybridge_core::{HeaderValue, Headers, Message};
use serde_json::{json, Map, Value as Json};

/// Stream field of the payload.
pub const PAYLOAD: &str = "payload";
const ID: &str = "id";
const KEY: &str = "key";
const CONTENT_TYPE: &str = "content_type";
const TIMESTAMP: &str = "timestamp";
const REPLY_TO: &str = "reply_to";
const CORRELATION_ID: &str = "correlation_id";
const TEXT_HEADER: &str = "h:";
const BINARY_HEADER: &str = "hb:";

/// The field/value pairs of a stream entry for `message`, in order.
pub fn to_fields(message: &Message) -> Vec<(Bytes, Bytes)> {
    let mut fields = Vec::with_capacity(4 + message.headers.len());
    fields.push((
        Bytes::from_static(PAYLOAD.as_bytes()),
        message.payload.clone(),
    ));
    fields.push((
        Bytes::from_static(ID.as_bytes()),
        Bytes::from(message.id.clone()),
    ));
    if let Some(key) = &message.key {
        fields.push((Bytes::from_static(KEY.as_bytes()), key.clone()));
    }
    if let Some(ct) = &message.content_type {
        fields.push((
            Bytes::from_static(CONTENT_TYPE.as_bytes()),
            Bytes::from(ct.clone()),
        ));
    }
    if let Some(ms) = millis(message.timestamp) {
        fields.push((
            Bytes::from_static(TIMESTAMP.as_bytes()),
            Bytes::from(ms.to_string()),
        ));
    }
    if let Some(r) = &message.reply_to {
        fields.push((
            Bytes::from_static(REPLY_TO.as_bytes()),
            Bytes::from(r.clone()),
        ));
    }
    if let Some(c) = &message.correlation_id {
        fields.push((
            Bytes::from_static(CORRELATION_ID.as_bytes()),
            Bytes::from(c.clone()),
        ));
    }
    for (name, value) in message.headers.iter() {
        let (prefix, bytes) = match value {
            HeaderValue::Text(t) => (TEXT_HEADER, Bytes::from(t.clone())),
            HeaderValue::Binary(b) => (BINARY_HEADER, b.clone()),
        };
        fields.push((Bytes::from(format!("{prefix}{name}")), bytes));
    }
    fields
}

/// Rebuilds a message from a stream entry's fields; `entry_id` names it when it has no `id`.
pub fn from_fields(entry_id: &str, fields: Vec<(Vec<u8>, Vec<u8>)>) -> Message {
    let mut message = Message::new(Bytes::new());
    message.timestamp = None;
    if !fields.iter().any(|(f, _)| f == PAYLOAD.as_bytes()) {
        let object: Map<String, Json> = fields
            .into_iter()
            .map(|(f, v)| {
                (
                    String::from_utf8_lossy(&f).into_owned(),
                    Json::String(String::from_utf8_lossy(&v).into_owned()),
                )
            })
            .collect();
        message.payload = Bytes::from(Json::Object(object).to_string());
        message.content_type = Some("application/json".into());
        message.id = entry_id.to_owned();
        return message;
    }
    let mut id = None;
    let mut headers = Headers::new();
    for (field, value) in fields {
        let text = || String::from_utf8_lossy(&value).into_owned();
        match field.as_slice() {
            f if f == PAYLOAD.as_bytes() => message.payload = Bytes::from(value),
            f if f == ID.as_bytes() => id = Some(text()),
            f if f == KEY.as_bytes() => message.key = Some(Bytes::from(value)),
            f if f == CONTENT_TYPE.as_bytes() => message.content_type = Some(text()),
            f if f == TIMESTAMP.as_bytes() => {
                message.timestamp = text().parse::<u64>().ok().map(from_millis)
            }
            f if f == REPLY_TO.as_bytes() => message.reply_to = Some(text()),
            f if f == CORRELATION_ID.as_bytes() => message.correlation_id = Some(text()),
            f => {
                if let Some(name) = f.strip_prefix(BINARY_HEADER.as_bytes()) {
                    headers.append(
                        String::from_utf8_lossy(name).into_owned(),
                        HeaderValue::Binary(Bytes::from(value)),
                    );
                } else if let Some(name) = f.strip_prefix(TEXT_HEADER.as_bytes()) {
                    headers.append(String::from_utf8_lossy(name).into_owned(), text());
                } else {
                    // A field another program added: keep it as a header.
                    headers.append(String::from_utf8_lossy(f).into_owned(), text());
                }
            }
        }
    }
    message.id = id.unwrap_or_else(|| entry_id.to_owned());
    message.headers = headers;
    message
}

const ENVELOPE_PREFIX: &[u8] = b"{\"polybridge\":1,";

/// `message` as a JSON envelope, with the delivery attempt it will be delivered as.
pub fn to_envelope(message: &Message, attempt: u32) -> Bytes {
    // `polybridge` first: receivers recognise envelopes by that prefix.
    let mut out = String::from("{\"polybridge\":1,");
    let mut rest = Map::new();
    rest.insert("id".into(), json!(message.id));
    rest.insert("payload".into(), json!(BASE64.encode(&message.payload)));
    if !message.headers.is_empty() {
        let headers: Vec<Json> = message
            .headers
            .iter()
            .map(|(name, value)| match value {
                HeaderValue::Text(t) => json!([name, t]),
                HeaderValue::Binary(b) => json!([name, {"base64": BASE64.encode(b)}]),
            })
            .collect();
        rest.insert("headers".into(), Json::Array(headers));
    }
    if let Some(k) = &message.key {
        rest.insert("key".into(), json!(BASE64.encode(k)));
    }
    if let Some(ct) = &message.content_type {
        rest.insert("content_type".into(), json!(ct));
    }
    if let Some(ms) = millis(message.timestamp) {
        rest.insert("timestamp".into(), json!(ms));
    }
    if let Some(r) = &message.reply_to {
        rest.insert("reply_to".into(), json!(r));
    }
    if let Some(c) = &message.correlation_id {
        rest.insert("correlation_id".into(), json!(c));
    }
    if attempt > 1 {
        rest.insert("attempt".into(), json!(attempt));
    }
    let body = Json::Object(rest).to_string();
    // `body` is `{…}`: splice its inside after our prefix.
    out.push_str(body.get(1..).unwrap_or("}"));
    Bytes::from(out)
}

/// A pub/sub message or list element: an envelope if it is one, else a raw payload with a
/// fresh id. Returns the message and the attempt recorded in the envelope (1 if none).
pub fn from_element(element: Bytes) -> (Message, u32) {
    if element.starts_with(ENVELOPE_PREFIX) {
        if let Ok(Json::Object(o)) = serde_json::from_slice::<Json>(&element) {
            if let Some(m) = envelope_message(&o) {
                let attempt = o
                    .get("attempt")
                    .and_then(Json::as_u64)
                    .and_then(|a| u32::try_from(a).ok())
                    .unwrap_or(1);
                return (m, attempt);
            }
        }
    }
    let mut m = Message::new(element);
    m.timestamp = None;
    (m, 1)
}

fn envelope_message(o: &Map<String, Json>) -> Option<Message> {
    let payload = BASE64.decode(o.get("payload")?.as_str()?).ok()?;
    let mut m = Message::new(payload);
    m.timestamp = None;
    let text = |k: &str| o.get(k).and_then(Json::as_str).map(str::to_owned);
    if let Some(id) = text("id") {
        m.id = id;
    }
    m.key = text("key")
        .and_then(|k| BASE64.decode(k).ok())
        .map(Bytes::from);
    m.content_type = text("content_type");
    m.reply_to = text("reply_to");
    m.correlation_id = text("correlation_id");
    m.timestamp = o.get("timestamp").and_then(Json::as_u64).map(from_millis);
    if let Some(Json::Array(headers)) = o.get("headers") {
        for h in headers {
            let (Some(name), Some(value)) = (h.get(0).and_then(Json::as_str), h.get(1)) else {
                continue;
            };
            match value {
                Json::String(t) => m.headers.append(name, t.as_str()),
                other => {
                    if let Some(b) = other
                        .get("base64")
                        .and_then(Json::as_str)
                        .and_then(|b| BASE64.decode(b).ok())
                    {
                        m.headers.append(name, HeaderValue::Binary(Bytes::from(b)));
                    }
                }
            }
        }
    }
    Some(m)
}

/// The same envelope with its attempt set, for a list element going back to its list.
pub fn with_attempt(element: &Bytes, attempt: u32) -> Option<Bytes> {
    if !element.starts_with(ENVELOPE_PREFIX) {
        return None;
    }
    let (message, _) = from_element(element.clone());
    Some(to_envelope(&message, attempt))
}

fn millis(t: Option<SystemTime>) -> Option<u128> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis())
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn full() -> Message {
        Message::new(vec![0u8, 0xff, b'{'])
            .with_id("m-1")
            .with_key(vec![1u8, 2])
            .with_content_type("application/x")
            .with_reply_to("replies")
            .with_correlation_id("c")
            .with_header("multi", "one")
            .with_header("bin", vec![0u8, 0x80])
            .with_header("multi", "two")
    }

    fn same(a: &Message, b: &Message) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.payload, b.payload);
        assert_eq!(a.key, b.key);
        assert_eq!(a.content_type, b.content_type);
        assert_eq!(a.reply_to, b.reply_to);
        assert_eq!(a.correlation_id, b.correlation_id);
        assert_eq!(millis(a.timestamp), millis(b.timestamp));
        let h = |m: &Message| -> Vec<(String, HeaderValue)> {
            m.headers
                .iter()
                .map(|(n, v)| (n.to_owned(), v.clone()))
                .collect()
        };
        assert_eq!(h(a), h(b));
    }

    #[test]
    fn stream_fields_round_trip_in_order() {
        let m = full();
        let fields = to_fields(&m)
            .into_iter()
            .map(|(f, v)| (f.to_vec(), v.to_vec()))
            .collect();
        same(&from_fields("1-0", fields), &m);
    }

    #[test]
    fn foreign_entries_become_json() {
        let m = from_fields("5-0", vec![(b"name".to_vec(), b"ada".to_vec())]);
        assert_eq!(m.id, "5-0");
        assert_eq!(&m.payload[..], br#"{"name":"ada"}"#);
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn envelopes_round_trip_and_raw_strings_stay_raw() {
        let m = full();
        let e = to_envelope(&m, 3);
        assert!(e.starts_with(ENVELOPE_PREFIX), "{e:?}");
        let (back, attempt) = from_element(e.clone());
        same(&back, &m);
        assert_eq!(attempt, 3);
        let (again, attempt) = from_element(with_attempt(&e, 4).unwrap());
        same(&again, &m);
        assert_eq!(attempt, 4);
        let (raw, attempt) = from_element(Bytes::from_static(b"{\"job\":1}"));
        assert_eq!((&raw.payload[..], attempt), (&b"{\"job\":1}"[..], 1));
    }
}
