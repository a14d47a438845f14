//! [`Message`] ↔ Kafka record, both ways, losing nothing.
//!
//! | message field | in the Kafka record |
//! |---|---|
//! | `payload` | the record value (an empty payload is an empty value, never a null one) |
//! | `key` | the record key (native) |
//! | `timestamp` | the record timestamp (`CreateTime`, milliseconds) |
//! | `id` | header `pb-id` |
//! | `content_type` | header `pb-content-type` |
//! | `correlation_id` | header `pb-correlation-id` |
//! | `reply_to` | header `pb-reply-to` |
//! | user headers | Kafka headers, same names, same order, repeated names kept |
//!
//! Kafka header values are bytes, so both text and binary values travel as they are. To
//! bring back the kind of each value, the positions (0-based, among the user headers) of
//! binary values are listed in header `pb-binary` (`"1,4"`); values not listed come back as
//! text when they are valid UTF-8. A record from another producer has no `pb-binary`: its
//! header values are text when valid UTF-8, else binary; a null value is empty text.
//!
//! A user header whose name starts with `pb-` (any case) travels as `pb-h-<name>` so it cannot
//! be mistaken for one of ours, and is restored on receipt. A record without `pb-id` gets the
//! id `<topic>-<partition>-<offset>`, the same on every redelivery.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use polybridge_core::{HeaderValue, Headers, Message};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};

/// The message id.
pub const ID: &str = "pb-id";
/// The content type.
pub const CONTENT_TYPE: &str = "pb-content-type";
/// The correlation id of a request or reply.
pub const CORRELATION_ID: &str = "pb-correlation-id";
/// Where the reply goes.
pub const REPLY_TO: &str = "pb-reply-to";
/// Positions of binary values among the user headers, comma-separated.
pub const BINARY: &str = "pb-binary";
/// Prefix of a user header whose own name starts with `pb-`.
pub const ESCAPE: &str = "pb-h-";

fn is_ours(name: &str) -> bool {
    name.len() >= 3 && name[..3].eq_ignore_ascii_case("pb-")
}

/// The Kafka headers for `message`.
pub fn to_headers(message: &Message) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(message.headers.len() + 5);
    out = out.insert(Header {
        key: ID,
        value: Some(message.id.as_bytes()),
    });
    if let Some(ct) = &message.content_type {
        out = out.insert(Header {
            key: CONTENT_TYPE,
            value: Some(ct.as_bytes()),
        });
    }
    if let Some(c) = &message.correlation_id {
        out = out.insert(Header {
            key: CORRELATION_ID,
            value: Some(c.as_bytes()),
        });
    }
    if let Some(r) = &message.reply_to {
        out = out.insert(Header {
            key: REPLY_TO,
            value: Some(r.as_bytes()),
        });
    }
    let binary: Vec<String> = message
        .headers
        .iter()
        .enumerate()
        .filter(|(_, (_, v))| v.is_binary())
        .map(|(i, _)| i.to_string())
        .collect();
    if !binary.is_empty() {
        out = out.insert(Header {
            key: BINARY,
            value: Some(binary.join(",").as_bytes()),
        });
    }
    for (name, value) in message.headers.iter() {
        let escaped;
        let key = if is_ours(name) {
            escaped = format!("{ESCAPE}{name}");
            escaped.as_str()
        } else {
            name
        };
        out = out.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    out
}

/// The record timestamp for `message`, in milliseconds since the Unix epoch.
pub fn timestamp_millis(message: &Message) -> Option<i64> {
    message
        .timestamp
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

/// Rebuilds a [`Message`] from a consumed record.
pub fn from_record<M: rdkafka::Message>(record: &M) -> Message {
    let payload = Bytes::copy_from_slice(record.payload().unwrap_or_default());
    // Its id is set at the end, from the headers or the record's position.
    let mut message = Message::rebuilt(String::new(), payload);
    message.key = record.key().map(Bytes::copy_from_slice);
    message.timestamp = record
        .timestamp()
        .to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    let mut id = None;
    let mut user: Vec<(String, &[u8])> = Vec::new();
    let mut binary: Option<Vec<usize>> = None;
    if let Some(headers) = record.headers() {
        for h in headers.iter() {
            let value = h.value.unwrap_or_default();
            let text = || String::from_utf8_lossy(value).into_owned();
            match h.key {
                ID => id = Some(text()),
                CONTENT_TYPE => message.content_type = Some(text()),
                CORRELATION_ID => message.correlation_id = Some(text()),
                REPLY_TO => message.reply_to = Some(text()),
                BINARY => {
                    binary = Some(
                        std::str::from_utf8(value)
                            .unwrap_or_default()
                            .split(',')
                            .filter_map(|i| i.trim().parse().ok())
                            .collect(),
                    )
                }
                name => {
                    let name = match name.strip_prefix(ESCAPE) {
                        Some(rest) if is_ours(rest) => rest,
                        _ => name,
                    };
                    user.push((name.to_owned(), value));
                }
            }
        }
    }
    let mut headers = Headers::new();
    for (i, (name, value)) in user.into_iter().enumerate() {
        let listed = binary.as_ref().is_some_and(|b| b.contains(&i));
        let v = match std::str::from_utf8(value) {
            Ok(t) if !listed => HeaderValue::Text(t.to_owned()),
            _ => HeaderValue::Binary(Bytes::copy_from_slice(value)),
        };
        headers.append(name, v);
    }
    message.headers = headers;
    message.id = id.unwrap_or_else(|| {
        // Sized once (`format!` would grow it as it writes).
        let mut id = String::with_capacity(record.topic().len() + 32);
        let _ = write!(
            id,
            "{}-{}-{}",
            record.topic(),
            record.partition(),
            record.offset()
        );
        id
    });
    message
}

/// `SystemTime` as milliseconds since the Unix epoch (0 before it).
pub fn system_time_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedMessage, Timestamp};

    fn record(m: &Message) -> OwnedMessage {
        OwnedMessage::new(
            Some(m.payload.to_vec()),
            m.key.as_ref().map(|k| k.to_vec()),
            "t".into(),
            timestamp_millis(m).map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
            3,
            42,
            Some(to_headers(m)),
        )
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
            .with_header("bin", vec![0u8, 0xff, b'\n'])
            .with_header("plain", "v2")
            .with_header("utf8 bytes", b"abc".to_vec())
            .with_header("spaces and:colons", "a: b\\c")
            .with_header("ünï", "ünïcødé ✓\r\n")
            .with_header("pb-id", "user header named like ours")
            .with_header("PB-H-x", "escaped twice");
        let got = from_record(&record(&m));
        assert_eq!(got.id, "id-1");
        assert_eq!(got.payload, m.payload);
        assert_eq!(got.key, m.key);
        assert_eq!(got.content_type.as_deref(), Some("application/json"));
        assert_eq!(got.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(got.reply_to.as_deref(), Some("replies.1"));
        let ms = |t: Option<SystemTime>| t.map(system_time_millis);
        assert_eq!(ms(got.timestamp), ms(m.timestamp));
        assert_eq!(
            got.headers, m.headers,
            "headers keep names, kinds and order"
        );
    }

    #[test]
    fn foreign_records_are_taken_as_they_are() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "trace",
                value: Some("abc"),
            })
            .insert(Header {
                key: "raw",
                value: Some(&[0xffu8, 0][..]),
            })
            .insert(Header::<&str> {
                key: "null",
                value: None,
            });
        let r = OwnedMessage::new(
            None,
            None,
            "orders".into(),
            Timestamp::NotAvailable,
            1,
            7,
            Some(headers),
        );
        let got = from_record(&r);
        assert_eq!(got.id, "orders-1-7");
        assert!(got.payload.is_empty());
        assert_eq!(got.timestamp, None);
        assert_eq!(got.headers.get_str("trace"), Some("abc"));
        assert!(got.headers.get("raw").unwrap().is_binary());
        assert_eq!(got.headers.get_str("null"), Some(""));
    }
}
