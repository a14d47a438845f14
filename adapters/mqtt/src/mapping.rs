//! [`Message`] ↔ MQTT.
//!
//! **MQTT 5**: metadata travels in properties.
//!
//! | message | MQTT 5 |
//! |---|---|
//! | id | user property `pb-id` |
//! | key | user property `pb-key` (text) or `pb-key-base64` |
//! | timestamp | user property `pb-timestamp` (ms since the Unix epoch) |
//! | content type | Content Type property |
//! | correlation id | Correlation Data property |
//! | reply-to | Response Topic property |
//! | headers | user properties, in order; a binary value travels as base64 and its name is listed in a `pb-binary` user property; a text value with control characters (which MQTT brokers refuse in UTF-8 strings: Mosquitto drops the connection) travels as base64 listed in `pb-text-base64` |
//!
//! **MQTT 3.1.1** has no properties. With `format=raw` (the default) only the payload
//! travels (`Capabilities::headers` is `None`, ids are generated on receipt); with
//! `format=envelope` the message travels whole as the
//! [`polybridge_core::envelope`] JSON. Received envelopes are recognised either way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use polybridge_core::{envelope, new_message_id, HeaderValue, Headers, Message};

use crate::config::{Format, MqttConfig, Version};
use crate::wire::Properties;

const ID: &str = "pb-id";
const KEY: &str = "pb-key";
const KEY_BASE64: &str = "pb-key-base64";
const TIMESTAMP: &str = "pb-timestamp";
const BINARY: &str = "pb-binary";
const TEXT_BASE64: &str = "pb-text-base64";

/// Characters MQTT says a UTF-8 string should not contain (MQTT 5, 1.5.4), which Mosquitto
/// refuses by closing the connection: U+0000–U+001F and U+007F–U+009F.
pub(crate) fn has_control(s: &str) -> bool {
    s.chars()
        .any(|c| matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'))
}

/// The payload and properties that carry `message` on this connection.
pub fn to_mqtt(config: &MqttConfig, message: &Message) -> (Bytes, Properties) {
    if config.version == Version::V311 {
        let payload = match config.format {
            Format::Raw => message.payload.clone(),
            Format::Envelope => envelope::encode(message, 1),
        };
        return (payload, Properties::default());
    }
    let mut user = Vec::with_capacity(message.headers.len() + 3);
    user.push((ID.to_owned(), message.id.clone()));
    if let Some(key) = &message.key {
        match std::str::from_utf8(key) {
            Ok(text) if !has_control(text) => user.push((KEY.to_owned(), text.to_owned())),
            _ => user.push((KEY_BASE64.to_owned(), BASE64.encode(key))),
        }
    }
    if let Some(ms) = message
        .timestamp
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
    {
        user.push((TIMESTAMP.to_owned(), ms.as_millis().to_string()));
    }
    for (name, value) in message.headers.iter() {
        match value {
            HeaderValue::Text(t) if has_control(t) => {
                user.push((TEXT_BASE64.to_owned(), name.to_owned()));
                user.push((name.to_owned(), BASE64.encode(t)));
            }
            HeaderValue::Text(t) => user.push((name.to_owned(), t.clone())),
            HeaderValue::Binary(b) => {
                user.push((BINARY.to_owned(), name.to_owned()));
                user.push((name.to_owned(), BASE64.encode(b)));
            }
        }
    }
    let properties = Properties {
        user,
        content_type: message.content_type.clone(),
        correlation: message
            .correlation_id
            .as_ref()
            .map(|c| Bytes::from(c.clone())),
        response_topic: message.reply_to.clone(),
        expiry: config
            .message_expiry
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
    };
    (message.payload.clone(), properties)
}

/// Rebuilds a message from a received payload and its properties. Returns the message and
/// the attempt an envelope recorded (1 otherwise).
pub fn from_mqtt(payload: Bytes, properties: Properties) -> (Message, u32) {
    if envelope::is_envelope(&payload) {
        return envelope::decode(payload);
    }
    // Its id is set below: a user property's, or a fresh one.
    let mut message = Message::rebuilt(String::new(), payload);
    message.content_type = properties.content_type;
    message.reply_to = properties.response_topic;
    message.correlation_id = properties
        .correlation
        .map(|c| String::from_utf8_lossy(&c).into_owned());
    let binary: Vec<String> = properties
        .user
        .iter()
        .filter(|(k, _)| k == BINARY)
        .map(|(_, v)| v.clone())
        .collect();
    let text_base64: Vec<String> = properties
        .user
        .iter()
        .filter(|(k, _)| k == TEXT_BASE64)
        .map(|(_, v)| v.clone())
        .collect();
    let mut headers = Headers::new();
    let mut id = None;
    for (name, value) in properties.user {
        match name.as_str() {
            ID => id = Some(value),
            KEY => message.key = Some(Bytes::from(value)),
            KEY_BASE64 => message.key = BASE64.decode(value).ok().map(Bytes::from),
            TIMESTAMP => {
                message.timestamp = value
                    .parse::<u64>()
                    .ok()
                    .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
            }
            BINARY | TEXT_BASE64 => {}
            _ if text_base64.contains(&name) => match BASE64
                .decode(&value)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
            {
                Some(text) => headers.append(name, text),
                None => headers.append(name, value),
            },
            _ if binary.contains(&name) => match BASE64.decode(&value) {
                Ok(bytes) => headers.append(name, HeaderValue::Binary(Bytes::from(bytes))),
                Err(_) => headers.append(name, value),
            },
            _ => headers.append(name, value),
        }
    }
    message.id = id.unwrap_or_else(new_message_id);
    message.headers = headers;
    (message, 1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn text_with_control_characters_is_escaped_and_restored() {
        let config = MqttConfig::from_url(&"mqtt://h".parse().unwrap()).unwrap();
        let m = Message::new("p")
            .with_header("c", "line1\r\nline2")
            .with_header("plain", "v")
            .with_key("k\u{7}");
        let (payload, properties) = to_mqtt(&config, &m);
        assert!(properties
            .user
            .iter()
            .all(|(k, v)| !has_control(k) && !has_control(v)));
        let (back, _) = from_mqtt(payload, properties);
        assert_eq!(
            back.headers.get("c"),
            Some(&HeaderValue::from("line1\r\nline2"))
        );
        assert_eq!(back.headers.get("plain"), Some(&HeaderValue::from("v")));
        assert_eq!(back.key.as_deref(), Some(&b"k\x07"[..]));
    }

    #[test]
    fn mqtt5_properties_carry_every_field() {
        let config = MqttConfig::from_url(&"mqtt://h".parse().unwrap()).unwrap();
        let m = Message::new("p")
            .with_id("id-1")
            .with_key(vec![0xffu8])
            .with_content_type("text/plain")
            .with_correlation_id("c-1")
            .with_reply_to("replies/1")
            .with_header("a", "1")
            .with_header("bin", vec![0u8, 0x80])
            .with_header("a", "2");
        let (payload, props) = to_mqtt(&config, &m);
        let (back, attempt) = from_mqtt(payload, props);
        assert_eq!(attempt, 1);
        assert_eq!(back.id, "id-1");
        assert_eq!(back.key.as_deref(), Some(&[0xffu8][..]));
        assert_eq!(back.content_type.as_deref(), Some("text/plain"));
        assert_eq!(back.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(back.reply_to.as_deref(), Some("replies/1"));
        let h: Vec<_> = back
            .headers
            .iter()
            .map(|(n, v)| (n.to_owned(), v.clone()))
            .collect();
        let want: Vec<_> = m
            .headers
            .iter()
            .map(|(n, v)| (n.to_owned(), v.clone()))
            .collect();
        assert_eq!(h, want);
    }

    #[test]
    fn mqtt311_carries_the_payload_or_an_envelope() {
        let raw = MqttConfig::from_url(&"mqtt://h?version=3.1.1".parse().unwrap()).unwrap();
        let m = Message::new("p").with_id("x").with_header("h", "v");
        let (payload, _) = to_mqtt(&raw, &m);
        assert_eq!(&payload[..], b"p");
        let env = MqttConfig::from_url(&"mqtt://h?version=3.1.1&format=envelope".parse().unwrap())
            .unwrap();
        let (payload, props) = to_mqtt(&env, &m);
        let (back, _) = from_mqtt(payload, props);
        assert_eq!(
            (back.id.as_str(), back.headers.get_str("h")),
            ("x", Some("v"))
        );
    }
}
