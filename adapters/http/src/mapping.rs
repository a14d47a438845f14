//! How a [`Message`] travels in an HTTP request, and back.
//!
//! | message | HTTP request |
//! |---|---|
//! | payload | the body, byte for byte |
//! | `content_type` | `content-type`, as is (one that is not visible ASCII is left out) |
//! | `id` | `x-pb-id`; a request without it may give `idempotency-key` instead; else a fresh id |
//! | `key` | `x-pb-key`, percent-encoded bytes |
//! | `timestamp` | `x-pb-timestamp`, Unix milliseconds |
//! | `reply_to`, `correlation_id` | `x-pb-reply-to`, `x-pb-correlation-id`, percent-encoded |
//! | headers | one `x-pb-header` line per header, in order: `NAME=VALUE` (text) or `NAME;base64=B64` (binary), NAME and VALUE percent-encoded (lines a proxy joined with `,` are split again) |
//! | delivery attempt | `x-pb-attempt` (1 for the first POST, 2 for the first retry, …) |
//!
//! For senders that cannot produce `x-pb-header`, a request header `x-pb-header-NAME: VALUE`
//! becomes the text header `NAME` (lower case, as HTTP folds header names). Percent-encoding
//! escapes `%`, `=`, `;`, `,`, controls, space and every non-ASCII byte, so names are kept
//! exactly (case included) and any bytes travel.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue as HttpValue, CONTENT_TYPE};
use polybridge_core::{new_message_id, HeaderValue, Message};

/// `x-pb-id`: the message id.
pub const ID: &str = "x-pb-id";
/// `idempotency-key`: the id when `x-pb-id` is absent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// `x-pb-key`: the key, percent-encoded.
pub const KEY: &str = "x-pb-key";
/// `x-pb-timestamp`: Unix milliseconds.
pub const TIMESTAMP: &str = "x-pb-timestamp";
/// `x-pb-reply-to`.
pub const REPLY_TO: &str = "x-pb-reply-to";
/// `x-pb-correlation-id`.
pub const CORRELATION_ID: &str = "x-pb-correlation-id";
/// `x-pb-header`: one message header per line.
pub const HEADER: &str = "x-pb-header";
/// `x-pb-header-NAME`: the simple form of a text header.
pub const HEADER_PREFIX: &str = "x-pb-header-";
/// `x-pb-attempt`: which attempt of the sender this request is.
pub const ATTEMPT: &str = "x-pb-attempt";
/// `x-pb-retry-after-ms`: in a 503 answer, the redelivery delay in milliseconds (the
/// standard `retry-after` carries it rounded up to seconds).
pub const RETRY_AFTER_MS: &str = "x-pb-retry-after-ms";

/// The request headers carrying `message` as attempt `attempt`.
pub fn to_headers(message: &Message, attempt: u32) -> HeaderMap {
    let mut h = HeaderMap::new();
    let put = |h: &mut HeaderMap, name: &'static str, value: String| {
        // Percent-encoded text is visible ASCII, always a valid header value.
        if let Ok(v) = HttpValue::from_str(&value) {
            h.append(HeaderName::from_static(name), v);
        }
    };
    put(&mut h, ID, encode(message.id.as_bytes()));
    if let Some(ct) = &message.content_type {
        // Sent as is (HTTP servers read it); a content type that is not visible ASCII is
        // not a valid header value and is left out.
        if let Ok(v) = HttpValue::from_str(ct) {
            h.insert(CONTENT_TYPE, v);
        }
    }
    if let Some(k) = &message.key {
        put(&mut h, KEY, encode(k));
    }
    if let Some(ms) = message
        .timestamp
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
    {
        put(&mut h, TIMESTAMP, ms.as_millis().to_string());
    }
    if let Some(r) = &message.reply_to {
        put(&mut h, REPLY_TO, encode(r.as_bytes()));
    }
    if let Some(c) = &message.correlation_id {
        put(&mut h, CORRELATION_ID, encode(c.as_bytes()));
    }
    for (name, value) in message.headers.iter() {
        let line = match value {
            HeaderValue::Text(t) => format!("{}={}", encode(name.as_bytes()), encode(t.as_bytes())),
            HeaderValue::Binary(b) => {
                format!("{};base64={}", encode(name.as_bytes()), BASE64.encode(b))
            }
        };
        put(&mut h, HEADER, line);
    }
    put(&mut h, ATTEMPT, attempt.max(1).to_string());
    h
}

/// The message a request carries, and the sender's attempt number (1 if not given).
pub fn from_request(headers: &HeaderMap, body: Bytes) -> (Message, u32) {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| String::from_utf8_lossy(&decode(v)).into_owned())
    };
    let id = text(ID)
        .or_else(|| text(IDEMPOTENCY_KEY))
        .unwrap_or_else(new_message_id);
    let mut m = Message::rebuilt(id, body);
    m.content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    m.key = headers
        .get(KEY)
        .and_then(|v| v.to_str().ok())
        .map(|v| Bytes::from(decode(v)));
    m.timestamp = headers
        .get(TIMESTAMP)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    if m.timestamp.is_none() {
        m.timestamp = Some(SystemTime::now());
    }
    m.reply_to = text(REPLY_TO);
    m.correlation_id = text(CORRELATION_ID);
    // Proxies may join repeated header lines with commas; `,` is always percent-encoded
    // inside a line, so splitting there is safe.
    let lines = headers
        .get_all(HEADER)
        .iter()
        .filter_map(|l| l.to_str().ok())
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|l| !l.is_empty());
    for line in lines {
        if let Some((name, b64)) = line.split_once(";base64=") {
            if let Ok(bytes) = BASE64.decode(b64) {
                m.headers.append(
                    String::from_utf8_lossy(&decode(name)).into_owned(),
                    HeaderValue::Binary(Bytes::from(bytes)),
                );
            }
        } else if let Some((name, value)) = line.split_once('=') {
            m.headers.append(
                String::from_utf8_lossy(&decode(name)).into_owned(),
                text_or_binary(decode(value)),
            );
        }
    }
    for (name, value) in headers {
        if let Some(short) = name.as_str().strip_prefix(HEADER_PREFIX) {
            m.headers
                .append(short.to_owned(), text_or_binary(value.as_bytes().to_vec()));
        }
    }
    let attempt = headers
        .get(ATTEMPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    (m, attempt)
}

fn text_or_binary(bytes: Vec<u8>) -> HeaderValue {
    match String::from_utf8(bytes) {
        Ok(s) => HeaderValue::Text(s),
        Err(e) => HeaderValue::Binary(Bytes::from(e.into_bytes())),
    }
}

/// Percent-encodes every byte that is not visible ASCII, and `%`, `=`, `;`, `,`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'=' | b';' | b',') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`encode`]; a `%` not followed by two hex digits stays as it is.
pub fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_headers() {
        let m = Message::new(vec![0u8, 255])
            .with_id("id with spaces=;%")
            .with_key(vec![0u8, b'k', 200])
            .with_content_type("text/plain; charset=utf-8")
            .with_reply_to("replies.é")
            .with_correlation_id("c,1")
            .with_header("Case", "ünï code")
            .with_header("bin", vec![0u8, 0x80])
            .with_header("Case", "two");
        let h = to_headers(&m, 3);
        let (back, attempt) = from_request(&h, m.payload.clone());
        assert_eq!(attempt, 3);
        assert_eq!(back.id, m.id);
        assert_eq!(back.key, m.key);
        assert_eq!(back.content_type, m.content_type);
        assert_eq!(back.reply_to, m.reply_to);
        assert_eq!(back.correlation_id, m.correlation_id);
        assert_eq!(back.headers, m.headers);
        let ms = |t: Option<SystemTime>| t.unwrap().duration_since(UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(ms(back.timestamp), ms(m.timestamp));
    }

    #[test]
    fn simple_headers_and_idempotency_keys_are_read() {
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", HttpValue::from_static("abc"));
        h.insert("x-pb-header-Trace", HttpValue::from_static("t1"));
        h.insert(
            "x-pb-header",
            HttpValue::from_static("a=1%2C2, bin;base64=AP8=, a=3"),
        );
        let (m, attempt) = from_request(&h, Bytes::from_static(b"{}"));
        assert_eq!((m.id.as_str(), attempt), ("abc", 1));
        assert_eq!(m.headers.get_str("trace"), Some("t1"));
        let a: Vec<_> = m.headers.get_all("a").filter_map(|v| v.as_str()).collect();
        assert_eq!(a, ["1,2", "3"], "lines joined by a proxy");
        assert_eq!(
            m.headers.get("bin").map(|v| v.as_bytes()),
            Some(&[0u8, 0xff][..])
        );
    }
}
