//! The polybridge JSON envelope: a whole [`Message`] in one string, for transports that
//! carry only a payload (Redis pub/sub and lists, MQTT 3.1.1, …) when a route needs ids,
//! headers and keys to survive.
//!
//! `{"polybridge":1,"id":…,"payload":BASE64,"headers":[[NAME,TEXT],[NAME,{"base64":…}]],
//! "key":BASE64,"content_type":…,"timestamp":MS,"reply_to":…,"correlation_id":…,
//! "attempt":N}`, absent fields omitted, headers in order. Any language can read it.
//! Receivers recognise an envelope by its `{"polybridge":1,` prefix; anything else is a raw
//! payload.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value as Json};

use crate::message::{HeaderValue, Message};

/// What every envelope starts with.
pub const ENVELOPE_PREFIX: &[u8] = b"{\"polybridge\":1,";

/// `message` as a JSON envelope, with the delivery attempt it will be delivered as.
pub fn encode(message: &Message, attempt: u32) -> Bytes {
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

/// An envelope if `element` is one, else a raw payload with a fresh id. Returns the message
/// and the attempt recorded in the envelope (1 if none).
pub fn decode(element: Bytes) -> (Message, u32) {
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

/// The same envelope with its attempt set (`None` if `element` is not an envelope).
pub fn with_attempt(element: &Bytes, attempt: u32) -> Option<Bytes> {
    if !element.starts_with(ENVELOPE_PREFIX) {
        return None;
    }
    let (message, _) = decode(element.clone());
    Some(encode(&message, attempt))
}

/// Whether `element` is an envelope.
pub fn is_envelope(element: &[u8]) -> bool {
    element.starts_with(ENVELOPE_PREFIX)
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

    #[test]
    fn envelopes_round_trip_and_raw_strings_stay_raw() {
        let m = Message::new(vec![0u8, 0xff, b'{'])
            .with_id("m-1")
            .with_key(vec![1u8, 2])
            .with_content_type("application/x")
            .with_reply_to("replies")
            .with_correlation_id("c")
            .with_header("multi", "one")
            .with_header("bin", vec![0u8, 0x80])
            .with_header("multi", "two");
        let e = encode(&m, 3);
        assert!(is_envelope(&e), "{e:?}");
        let (back, attempt) = decode(e.clone());
        assert_eq!(attempt, 3);
        assert_eq!((back.id.as_str(), &back.payload, &back.key), (m.id.as_str(), &m.payload, &m.key));
        assert_eq!(back.content_type, m.content_type);
        assert_eq!((back.reply_to, back.correlation_id), (m.reply_to.clone(), m.correlation_id.clone()));
        assert_eq!(millis(back.timestamp), millis(m.timestamp));
        let h: Vec<_> = back.headers.iter().map(|(n, v)| (n.to_owned(), v.clone())).collect();
        let want: Vec<_> = m.headers.iter().map(|(n, v)| (n.to_owned(), v.clone())).collect();
        assert_eq!(h, want);
        let (_, attempt) = decode(with_attempt(&e, 4).unwrap());
        assert_eq!(attempt, 4);
        let (raw, attempt) = decode(Bytes::from_static(b"{\"job\":1}"));
        assert_eq!((&raw.payload[..], attempt), (&b"{\"job\":1}"[..], 1));
    }
}
