//! [`Message`] ↔ NATS headers, both ways, losing nothing.
//!
//! | message field | on the wire |
//! |---|---|
//! | `id` | `Nats-Msg-Id` (JetStream deduplicates on it); a dead-letter copy carries it in `Pb-Message-Id` and a per-delivery key in `Nats-Msg-Id` |
//! | `key` | `Pb-Key` (text), or `Pb-Key-Base64` when the key is not header-safe text |
//! | `content_type` | `Content-Type` |
//! | `timestamp` | `Pb-Timestamp`, milliseconds since the Unix epoch |
//! | `correlation_id` | `Pb-Correlation-Id` |
//! | `reply_to` | core NATS: the message's native reply subject; JetStream: `Pb-Reply-To` |
//! | user headers | NATS headers, same name, values in order |
//!
//! NATS header names are printable ASCII without `:`, and values are text without CR or LF.
//! What does not fit travels encoded and is listed in a marker header, so the receiver
//! restores it exactly and a header nobody encoded is never decoded:
//! - a name outside that alphabet (or containing `%` or `,`) is percent-encoded and listed in
//!   `Pb-Encoded-Names`;
//! - binary values are base64 (standard alphabet, padded) and their wire name is listed in
//!   `Pb-Binary`; text values that cannot travel as they are (CR, LF, leading or trailing
//!   white space) are base64 of their UTF-8 and listed in `Pb-Base64`. One name's values
//!   are encoded together: if any is binary, all come back binary.
//!
//! The NATS client keeps headers in a map: values of one name keep their order, the order
//! between different names is not kept.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::{HeaderMap, HeaderName};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use polybridge_core::{new_message_id, HeaderValue, Headers, Message};

/// The message id; JetStream drops a second publish with the same id inside the stream's
/// duplicate window.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The message id when `Nats-Msg-Id` carries another deduplication key (a dead-letter copy
/// is deduplicated per delivery, not per message).
pub const MESSAGE_ID: &str = "Pb-Message-Id";
/// The message key, as text.
pub const KEY: &str = "Pb-Key";
/// The message key, base64, when it is not header-safe text.
pub const KEY_BASE64: &str = "Pb-Key-Base64";
/// The content type.
pub const CONTENT_TYPE: &str = "Content-Type";
/// Creation time in milliseconds since the Unix epoch.
pub const TIMESTAMP: &str = "Pb-Timestamp";
/// The correlation id of a request or reply.
pub const CORRELATION_ID: &str = "Pb-Correlation-Id";
/// Where the reply goes, when the native reply subject is taken (JetStream).
pub const REPLY_TO: &str = "Pb-Reply-To";
/// Wire names that are percent-encoded user header names.
pub const ENCODED_NAMES: &str = "Pb-Encoded-Names";
/// Wire names whose values are base64 of binary values.
pub const BINARY: &str = "Pb-Binary";
/// Wire names whose values are base64 of text values.
pub const BASE64_TEXT: &str = "Pb-Base64";

const RESERVED: &[&str] = &[
    MSG_ID,
    MESSAGE_ID,
    KEY,
    KEY_BASE64,
    CONTENT_TYPE,
    TIMESTAMP,
    CORRELATION_ID,
    REPLY_TO,
    ENCODED_NAMES,
    BINARY,
    BASE64_TEXT,
];

/// The NATS headers for `message`. `reply_in_header` puts `reply_to` into `Pb-Reply-To`
/// (JetStream, whose reply subject carries the publish acknowledgement).
pub fn to_headers(message: &Message, reply_in_header: bool) -> HeaderMap {
    to_headers_deduplicated_by(message, reply_in_header, None)
}

/// Like [`to_headers`], with `Nats-Msg-Id` set to `dedup_id` and the message id in
/// `Pb-Message-Id`.
pub fn to_headers_deduplicated_by(
    message: &Message,
    reply_in_header: bool,
    dedup_id: Option<&str>,
) -> HeaderMap {
    let mut out = HeaderMap::new();
    match dedup_id {
        None => out.insert(header_name(MSG_ID), message.id.as_str()),
        Some(dedup) => {
            out.insert(header_name(MSG_ID), dedup);
            out.insert(header_name(MESSAGE_ID), message.id.as_str());
        }
    }
    if let Some(key) = &message.key {
        match std::str::from_utf8(key) {
            Ok(text) if value_is_safe(text) => out.insert(header_name(KEY), text),
            _ => out.insert(header_name(KEY_BASE64), BASE64.encode(key)),
        }
    }
    if let Some(ct) = &message.content_type {
        out.insert(header_name(CONTENT_TYPE), safe_or_stripped(ct));
    }
    if let Some(ts) = message.timestamp {
        if let Ok(since) = ts.duration_since(UNIX_EPOCH) {
            out.insert(header_name(TIMESTAMP), since.as_millis().to_string());
        }
    }
    if let Some(c) = &message.correlation_id {
        out.insert(header_name(CORRELATION_ID), safe_or_stripped(c));
    }
    if reply_in_header {
        if let Some(r) = &message.reply_to {
            out.insert(header_name(REPLY_TO), safe_or_stripped(r));
        }
    }
    let mut encoded_names = Vec::new();
    let mut binary = Vec::new();
    let mut base64_text = Vec::new();
    let mut done: Vec<&str> = Vec::new();
    for (name, _) in message.headers.iter() {
        if done.contains(&name) {
            continue;
        }
        done.push(name);
        let values: Vec<&HeaderValue> = message.headers.get_all(name).collect();
        let wire_name = if name_is_safe(name) && !is_reserved(name) {
            name.to_owned()
        } else {
            let encoded = percent_encode(name);
            encoded_names.push(encoded.clone());
            encoded
        };
        let any_binary = values.iter().any(|v| v.is_binary());
        let any_unsafe_text = values
            .iter()
            .any(|v| v.as_str().is_some_and(|t| !value_is_safe(t)));
        if any_binary {
            binary.push(wire_name.clone());
        } else if any_unsafe_text {
            base64_text.push(wire_name.clone());
        }
        let Ok(header_name) = wire_name.parse::<HeaderName>() else {
            // Percent-encoding leaves only printable ASCII without ':', so this cannot
            // happen; skip rather than panic.
            continue;
        };
        for v in values {
            let wire_value = if any_binary || any_unsafe_text {
                BASE64.encode(v.as_bytes())
            } else {
                v.as_str().unwrap_or_default().to_owned()
            };
            out.append(header_name.clone(), wire_value);
        }
    }
    if !encoded_names.is_empty() {
        out.insert(header_name(ENCODED_NAMES), encoded_names.join(","));
    }
    if !binary.is_empty() {
        out.insert(header_name(BINARY), binary.join(","));
    }
    if !base64_text.is_empty() {
        out.insert(header_name(BASE64_TEXT), base64_text.join(","));
    }
    out
}

/// Rebuilds a [`Message`] from a NATS payload, headers and reply subject. A missing id is
/// filled by `fallback_id` (e.g. the JetStream stream sequence, stable across
/// redeliveries).
pub fn from_nats(
    payload: Bytes,
    headers: Option<&HeaderMap>,
    native_reply: Option<String>,
    fallback_id: impl FnOnce() -> String,
) -> Message {
    // Its id is set below, from the headers or `fallback_id`.
    let mut message = Message::rebuilt(String::new(), payload);
    message.reply_to = native_reply;
    let Some(headers) = headers else {
        message.id = fallback_id();
        return message;
    };
    // The names are constants: `from_static` makes a name without allocating (a parsed
    // one copies a custom name, once per lookup and message).
    let first = |name: &'static str| {
        headers
            .get(HeaderName::from_static(name))
            .map(|v| v.as_str().to_owned())
    };
    message.id = first(MESSAGE_ID)
        .or_else(|| first(MSG_ID))
        .unwrap_or_else(fallback_id);
    message.key = match (first(KEY), first(KEY_BASE64)) {
        (Some(k), _) => Some(Bytes::from(k)),
        (None, Some(b)) => BASE64.decode(b.as_bytes()).ok().map(Bytes::from),
        (None, None) => None,
    };
    message.content_type = first(CONTENT_TYPE);
    message.correlation_id = first(CORRELATION_ID);
    if let Some(r) = first(REPLY_TO) {
        message.reply_to = Some(r);
    }
    message.timestamp = first(TIMESTAMP)
        .and_then(|t| t.parse::<u64>().ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    let list = |name: &'static str| -> Vec<String> {
        first(name)
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let encoded_names = list(ENCODED_NAMES);
    let binary = list(BINARY);
    let base64_text = list(BASE64_TEXT);
    let mut user = Headers::new();
    let mut names: Vec<&HeaderName> = headers.iter().map(|(n, _)| n).collect();
    names.sort_by(|a, b| AsRef::<[u8]>::as_ref(*a).cmp(AsRef::<[u8]>::as_ref(*b)));
    for wire_name in names {
        // Borrowed: the client's names are UTF-8.
        let wire = String::from_utf8_lossy(AsRef::<[u8]>::as_ref(wire_name));
        if is_reserved(&wire) {
            continue;
        }
        let name = if encoded_names.iter().any(|n| *n == wire) {
            percent_decode(&wire).unwrap_or_else(|| wire.to_string())
        } else {
            wire.to_string()
        };
        for v in headers.get_all(wire_name.clone()) {
            let text = v.as_str();
            let value = if binary.iter().any(|n| *n == wire) {
                match BASE64.decode(text.as_bytes()) {
                    Ok(bytes) => HeaderValue::Binary(Bytes::from(bytes)),
                    Err(_) => HeaderValue::Text(text.to_owned()),
                }
            } else if base64_text.iter().any(|n| *n == wire) {
                match BASE64
                    .decode(text.as_bytes())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                {
                    Some(t) => HeaderValue::Text(t),
                    None => HeaderValue::Text(text.to_owned()),
                }
            } else {
                HeaderValue::Text(text.to_owned())
            };
            user.append(name.clone(), value);
        }
    }
    message.headers = user;
    message
}

/// A message id for a message that carried none.
pub fn fresh_id() -> String {
    new_message_id()
}

/// The time a JetStream message was stored, as a `SystemTime`.
pub fn system_time(unix_nanos: i128) -> Option<SystemTime> {
    let nanos = u64::try_from(unix_nanos).ok()?;
    Some(UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// The client's name for a header: parsed, so that standard names (`Nats-Msg-Id`) compare
/// equal to the ones it parses off the wire.
fn header_name(name: &str) -> HeaderName {
    name.parse()
        .unwrap_or_else(|_| async_nats::header::IntoHeaderName::into_header_name(name))
}

fn is_reserved(name: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

fn name_is_safe(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (33..=126).contains(&b) && b != b':' && b != b'%' && b != b',')
}

fn value_is_safe(value: &str) -> bool {
    !value.contains(['\r', '\n']) && value.trim() == value
}

fn safe_or_stripped(value: &str) -> String {
    value
        .chars()
        .filter(|c| *c != '\r' && *c != '\n')
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Percent-encodes what a NATS header name cannot hold. A name that is one of ours
/// (`Nats-Msg-Id`, `Pb-…`) gets its first byte encoded too, so it cannot be mistaken for ours.
fn percent_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len() * 3);
    let reserved = is_reserved(name);
    for (i, b) in name.bytes().enumerate() {
        let force = reserved && i == 0;
        if !force && (33..=126).contains(&b) && b != b':' && b != b'%' && b != b',' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    out
}

fn percent_decode(wire: &str) -> Option<String> {
    if wire == "%" {
        return Some(String::new());
    }
    let bytes = wire.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = wire.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round_trip(m: &Message, reply_in_header: bool) -> Message {
        let headers = to_headers(m, reply_in_header);
        let native = if reply_in_header {
            None
        } else {
            m.reply_to.clone()
        };
        from_nats(m.payload.clone(), Some(&headers), native, fresh_id)
    }

    #[test]
    fn every_field_and_awkward_header_survives() {
        let m = Message::new(vec![0u8, 1, 2])
            .with_id("id-1")
            .with_key(vec![0xffu8, 0])
            .with_content_type("application/json")
            .with_correlation_id("c-1")
            .with_reply_to("replies.1")
            .with_header("plain", "v1")
            .with_header("plain", "v2")
            .with_header("spaces and:colons", "a: b\\c")
            .with_header("ünï", "ünïcødé ✓")
            .with_header("lines", "one\r\ntwo")
            .with_header("padded", " x ")
            .with_header("bin", vec![0u8, 0xff, b'\n'])
            .with_header("Nats-Msg-Id", "user header named like ours")
            .with_header("100%,sure", "yes");
        for reply_in_header in [false, true] {
            let got = round_trip(&m, reply_in_header);
            assert_eq!(got.id, "id-1");
            assert_eq!(got.key.as_deref(), Some(&[0xffu8, 0][..]));
            assert_eq!(got.content_type.as_deref(), Some("application/json"));
            assert_eq!(got.correlation_id.as_deref(), Some("c-1"));
            assert_eq!(got.reply_to.as_deref(), Some("replies.1"));
            assert_eq!(got.timestamp.is_some(), m.timestamp.is_some());
            let h = &got.headers;
            let plain: Vec<_> = h.get_all("plain").filter_map(|v| v.as_str()).collect();
            assert_eq!(plain, ["v1", "v2"]);
            assert_eq!(h.get_str("spaces and:colons"), Some("a: b\\c"));
            assert_eq!(h.get_str("ünï"), Some("ünïcødé ✓"));
            assert_eq!(h.get_str("lines"), Some("one\r\ntwo"));
            assert_eq!(h.get_str("padded"), Some(" x "));
            assert_eq!(h.get("bin").unwrap().as_bytes(), &[0u8, 0xff, b'\n']);
            assert!(h.get("bin").unwrap().is_binary());
            assert_eq!(
                h.get_str("Nats-Msg-Id"),
                Some("user header named like ours")
            );
            assert_eq!(h.get_str("100%,sure"), Some("yes"));
            assert_eq!(h.len(), m.headers.len());
        }
    }

    #[test]
    fn foreign_headers_are_taken_as_they_are() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Trace", "a%41");
        headers.insert(BINARY, "Other");
        let got = from_nats(Bytes::from_static(b"p"), Some(&headers), None, || {
            "f".into()
        });
        assert_eq!(got.id, "f");
        assert_eq!(got.headers.get_str("X-Trace"), Some("a%41"));
        let got = from_nats(Bytes::from_static(b"p"), None, Some("r".into()), || {
            "g".into()
        });
        assert_eq!((got.id.as_str(), got.reply_to.as_deref()), ("g", Some("r")));
    }
}
