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
//! `format=envelope` it is the JSON envelope of [`polybridge_core::envelope`], which any
//! language can read. Received strings are recognised as envelopes whatever the format
//! option says; anything else is a raw payload.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
pub use polybridge_core::envelope::{decode as from_element, encode as to_envelope, with_attempt};
use polybridge_core::{HeaderValue, Headers, Message};
use redis::RedisWrite;
use serde_json::{Map, Value as Json};

/// Stream field of the payload.
pub const PAYLOAD: &str = "payload";
/// Stream field of the message id.
pub const ID: &str = "id";
const KEY: &str = "key";
const CONTENT_TYPE: &str = "content_type";
/// Stream field of the timestamp (milliseconds since the Unix epoch).
pub const TIMESTAMP: &str = "timestamp";
const REPLY_TO: &str = "reply_to";
const CORRELATION_ID: &str = "correlation_id";
const TEXT_HEADER: &str = "h:";
const BINARY_HEADER: &str = "hb:";

/// Writes the field/value pairs of a stream entry for `message`, in order, as command
/// arguments (an `XADD`'s, after the entry id). Everything is written from the message as
/// it is, into `out` only (no list of pairs, no copy of the id or a header).
pub fn write_fields(message: &Message, out: &mut impl RedisWrite) {
    out.write_arg(PAYLOAD.as_bytes());
    out.write_arg(&message.payload);
    out.write_arg(ID.as_bytes());
    out.write_arg(message.id.as_bytes());
    if let Some(key) = &message.key {
        out.write_arg(KEY.as_bytes());
        out.write_arg(key);
    }
    if let Some(ct) = &message.content_type {
        out.write_arg(CONTENT_TYPE.as_bytes());
        out.write_arg(ct.as_bytes());
    }
    if let Some(ms) = millis(message.timestamp) {
        out.write_arg(TIMESTAMP.as_bytes());
        out.write_arg_fmt(ms);
    }
    if let Some(r) = &message.reply_to {
        out.write_arg(REPLY_TO.as_bytes());
        out.write_arg(r.as_bytes());
    }
    if let Some(c) = &message.correlation_id {
        out.write_arg(CORRELATION_ID.as_bytes());
        out.write_arg(c.as_bytes());
    }
    for (name, value) in message.headers.iter() {
        match value {
            HeaderValue::Text(t) => {
                out.write_arg_fmt(format_args!("{TEXT_HEADER}{name}"));
                out.write_arg(t.as_bytes());
            }
            HeaderValue::Binary(b) => {
                out.write_arg_fmt(format_args!("{BINARY_HEADER}{name}"));
                out.write_arg(b);
            }
        }
    }
}

/// At least the arguments and bytes [`write_fields`] writes for `message`, to size a
/// command once.
pub fn fields_size(message: &Message) -> (usize, usize) {
    /// The longest field name but a header's, and the longest timestamp in decimal.
    const NAME: usize = 16;
    const TIMESTAMP_DIGITS: usize = 20;
    let optional = [
        message.key.as_ref().map(|k| k.len()),
        message.content_type.as_ref().map(String::len),
        message.timestamp.map(|_| TIMESTAMP_DIGITS),
        message.reply_to.as_ref().map(String::len),
        message.correlation_id.as_ref().map(String::len),
    ];
    let mut args = 4;
    let mut bytes = 2 * NAME + message.payload.len() + message.id.len();
    for len in optional.into_iter().flatten() {
        args += 2;
        bytes += NAME + len;
    }
    for (name, value) in message.headers.iter() {
        args += 2;
        bytes += BINARY_HEADER.len()
            + name.len()
            + match value {
                HeaderValue::Text(t) => t.len(),
                HeaderValue::Binary(b) => b.len(),
            };
    }
    (args, bytes)
}

/// Rebuilds a message from a stream entry's fields; `entry_id` names it when it has no `id`.
pub fn from_fields(entry_id: &str, fields: Vec<(Vec<u8>, Vec<u8>)>) -> Message {
    // Its id is set below, from the `id` field or the entry's id.
    let mut message = Message::rebuilt(String::new(), Bytes::new());
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
        match field.as_slice() {
            f if f == PAYLOAD.as_bytes() => message.payload = Bytes::from(value),
            f if f == ID.as_bytes() => id = Some(owned_text(value)),
            f if f == KEY.as_bytes() => message.key = Some(Bytes::from(value)),
            f if f == CONTENT_TYPE.as_bytes() => message.content_type = Some(owned_text(value)),
            f if f == TIMESTAMP.as_bytes() => {
                message.timestamp = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(from_millis)
            }
            f if f == REPLY_TO.as_bytes() => message.reply_to = Some(owned_text(value)),
            f if f == CORRELATION_ID.as_bytes() => message.correlation_id = Some(owned_text(value)),
            f => {
                if let Some(name) = f.strip_prefix(BINARY_HEADER.as_bytes()) {
                    headers.append(
                        String::from_utf8_lossy(name).into_owned(),
                        HeaderValue::Binary(Bytes::from(value)),
                    );
                } else if let Some(name) = f.strip_prefix(TEXT_HEADER.as_bytes()) {
                    headers.append(
                        String::from_utf8_lossy(name).into_owned(),
                        owned_text(value),
                    );
                } else {
                    // A field another program added: keep it as a header.
                    headers.append(String::from_utf8_lossy(f).into_owned(), owned_text(value));
                }
            }
        }
    }
    message.id = id.unwrap_or_else(|| entry_id.to_owned());
    message.headers = headers;
    message
}

/// A field's value as text, keeping its buffer when it is UTF-8.
pub(crate) fn owned_text(value: Vec<u8>) -> String {
    String::from_utf8(value).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
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
        let mut args: Vec<Vec<u8>> = Vec::new();
        write_fields(&m, &mut args);
        let (arg_count, bytes) = fields_size(&m);
        assert_eq!(args.len(), arg_count);
        assert!(args.iter().map(Vec::len).sum::<usize>() <= bytes);
        let mut args = args.into_iter();
        let fields = std::iter::from_fn(|| Some((args.next()?, args.next()?))).collect();
        same(&from_fields("1-0", fields), &m);
    }

    #[test]
    fn text_fields_that_are_not_utf8_are_read_lossily_and_a_bad_timestamp_is_dropped() {
        let m = from_fields(
            "7-0",
            vec![
                (b"payload".to_vec(), vec![0xff, 0x00]),
                (b"id".to_vec(), b"order-\xff".to_vec()),
                (b"timestamp".to_vec(), b"12\xff".to_vec()),
                (b"h:note".to_vec(), "caf\u{e9}".as_bytes().to_vec()),
            ],
        );
        assert_eq!(m.id, "order-\u{fffd}");
        assert_eq!(&m.payload[..], &[0xff, 0x00]);
        assert_eq!(m.timestamp, None);
        assert_eq!(
            m.headers.get("note"),
            Some(&HeaderValue::Text("caf\u{e9}".into()))
        );
    }

    #[test]
    fn foreign_entries_become_json() {
        let m = from_fields("5-0", vec![(b"name".to_vec(), b"ada".to_vec())]);
        assert_eq!(m.id, "5-0");
        assert_eq!(&m.payload[..], br#"{"name":"ada"}"#);
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
    }
}
