//! How polybridge messages and destinations map onto AMQP 0-9-1.
//!
//! | polybridge | AMQP |
//! |---|---|
//! | `id` | `message-id` property (a fresh id when a received message has none) |
//! | `content_type` | `content-type` property |
//! | `timestamp` | `timestamp` property (whole seconds: AMQP has no finer resolution) |
//! | `reply_to`, `correlation_id` | `reply-to`, `correlation-id` properties |
//! | `key` | header `x-polybridge-key` (long string if UTF-8, else byte array) |
//! | text header | long string (`S`) |
//! | binary header | byte array (`x`, RabbitMQ's extension) |
//! | repeated header | field array (`A`) of its values, in order |
//! | header `amqp-expiration` / `amqp-priority` | `expiration` / `priority` properties (and back) |
//!
//! Header names are AMQP short strings (at most 255 bytes); longer names are refused.
//! Received headers of other AMQP types (numbers, booleans, timestamps, nested tables) become
//! text in their decimal or debug form; a long string that is not UTF-8 becomes binary.
//! AMQP field tables are maps sorted by name: the order of values within one name is kept,
//! the order between names is not.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use lapin::types::{AMQPValue, ByteArray, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use polybridge_core::{new_message_id, Error, HeaderValue, Message, Result};

use crate::BROKER;

/// Header carrying [`Message::key`].
pub const KEY_HEADER: &str = "x-polybridge-key";
/// Header mapped to and from the AMQP `expiration` property (milliseconds, as text).
pub const EXPIRATION_HEADER: &str = "amqp-expiration";
/// Header mapped to and from the AMQP `priority` property (0-255, as text).
pub const PRIORITY_HEADER: &str = "amqp-priority";
/// Quorum queues count deliveries in this header.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// Where a publish goes: an exchange and a routing key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The exchange (`""` is the default exchange).
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
}

/// Reads a destination:
/// - `queue:NAME` → the default exchange with routing key `NAME` (the queue itself);
/// - `exchange:EXCHANGE/KEY` → exchange `EXCHANGE` with routing key `KEY` (`KEY` may be empty
///   and may contain `/`);
/// - anything else → the configured exchange (`amq.topic` by default) with the destination as
///   routing key (a topic such as `orders.eu.created`).
pub fn route(destination: &str, default_exchange: &str) -> Result<Route> {
    let (exchange, routing_key) = if let Some(queue) = destination.strip_prefix("queue:") {
        if queue.is_empty() {
            return Err(Error::permanent(
                BROKER,
                destination,
                "`queue:` needs a queue name",
            ));
        }
        (String::new(), queue.to_owned())
    } else if let Some(rest) = destination.strip_prefix("exchange:") {
        let (exchange, key) = rest.split_once('/').unwrap_or((rest, ""));
        (exchange.to_owned(), key.to_owned())
    } else {
        if destination.is_empty() {
            return Err(Error::permanent(BROKER, destination, "empty destination"));
        }
        (default_exchange.to_owned(), destination.to_owned())
    };
    if routing_key.len() > 255 || exchange.len() > 255 {
        return Err(Error::permanent(
            BROKER,
            destination,
            "exchange names and routing keys are at most 255 bytes",
        ));
    }
    Ok(Route {
        exchange,
        routing_key,
    })
}

fn text_value(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

fn header_value(v: &HeaderValue) -> AMQPValue {
    match v {
        HeaderValue::Text(t) => text_value(t),
        HeaderValue::Binary(b) => AMQPValue::ByteArray(ByteArray::from(&b[..])),
    }
}

/// The AMQP properties of `message` (persistent delivery mode).
pub fn properties(message: &Message, destination: &str) -> Result<BasicProperties> {
    for (what, value) in [
        ("message id", Some(&message.id)),
        ("content type", message.content_type.as_ref()),
        ("reply-to", message.reply_to.as_ref()),
        ("correlation id", message.correlation_id.as_ref()),
    ] {
        if let Some(v) = value.filter(|v| v.len() > 255) {
            return Err(Error::permanent(
                BROKER,
                destination,
                format!(
                    "{what} of {} bytes: AMQP carries it in a short string of at most 255 bytes",
                    v.len()
                ),
            ));
        }
    }
    let mut table = FieldTable::default();
    let mut expiration = None;
    let mut priority = None;
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in message.headers.iter() {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    for name in names {
        if name.len() > 255 {
            return Err(Error::permanent(
                BROKER,
                destination,
                format!(
                    "header name of {} bytes: AMQP header names are at most 255 bytes",
                    name.len()
                ),
            ));
        }
        let values: Vec<&HeaderValue> = message.headers.get_all(name).collect();
        if name == EXPIRATION_HEADER {
            expiration = values.first().and_then(|v| v.as_str()).map(str::to_owned);
            continue;
        }
        if name == PRIORITY_HEADER {
            let p = values.first().and_then(|v| v.as_str()).unwrap_or_default();
            priority = Some(p.parse::<u8>().map_err(|_| {
                Error::permanent(
                    BROKER,
                    destination,
                    format!("header {PRIORITY_HEADER}={p:?}: expected 0-255"),
                )
            })?);
            continue;
        }
        let value = match values.as_slice() {
            [one] => header_value(one),
            many => {
                let mut array = FieldArray::default();
                for v in many {
                    array.push(header_value(v));
                }
                AMQPValue::FieldArray(array)
            }
        };
        table.insert(ShortString::from(name), value);
    }
    if let Some(key) = &message.key {
        let value = match std::str::from_utf8(key) {
            Ok(s) => text_value(s),
            Err(_) => AMQPValue::ByteArray(ByteArray::from(&key[..])),
        };
        table.insert(ShortString::from(KEY_HEADER), value);
    }
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message.id.as_str()))
        .with_headers(table);
    if let Some(ct) = &message.content_type {
        p = p.with_content_type(ShortString::from(ct.as_str()));
    }
    if let Some(t) = message
        .timestamp
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
    {
        p = p.with_timestamp(t.as_secs());
    }
    if let Some(r) = &message.reply_to {
        p = p.with_reply_to(ShortString::from(r.as_str()));
    }
    if let Some(c) = &message.correlation_id {
        p = p.with_correlation_id(ShortString::from(c.as_str()));
    }
    if let Some(e) = expiration {
        p = p.with_expiration(ShortString::from(e));
    }
    if let Some(pr) = priority {
        p = p.with_priority(pr);
    }
    Ok(p)
}

fn value_to_header(v: &AMQPValue) -> HeaderValue {
    match v {
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(t) => HeaderValue::Text(t.to_owned()),
            Err(_) => HeaderValue::Binary(Bytes::copy_from_slice(s.as_bytes())),
        },
        AMQPValue::ShortString(s) => HeaderValue::Text(s.as_str().to_owned()),
        AMQPValue::ByteArray(b) => HeaderValue::Binary(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Boolean(b) => HeaderValue::Text(b.to_string()),
        AMQPValue::ShortShortInt(n) => HeaderValue::Text(n.to_string()),
        AMQPValue::ShortShortUInt(n) => HeaderValue::Text(n.to_string()),
        AMQPValue::ShortInt(n) => HeaderValue::Text(n.to_string()),
        AMQPValue::ShortUInt(n) => HeaderValue::Text(n.to_string()),
        AMQPValue::LongInt(n) => HeaderValue::Text(n.to_string()),
        AMQPValue::LongUInt(n) => HeaderValue::Text(n.to_string()),
        AMQPValue::LongLongInt(n) => HeaderValue::Text(n.to_string()),
        AMQPValue::Float(n) => HeaderValue::Text(n.to_string()),
        AMQPValue::Double(n) => HeaderValue::Text(n.to_string()),
        AMQPValue::Timestamp(n) => HeaderValue::Text(n.to_string()),
        AMQPValue::Void => HeaderValue::Text(String::new()),
        other => HeaderValue::Text(format!("{other:?}")),
    }
}

/// The message a delivery (or returned message) carries.
pub fn message(properties: &BasicProperties, payload: Bytes) -> Message {
    let id = properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(new_message_id);
    let mut m = Message::rebuilt(id, payload);
    m.timestamp = properties
        .timestamp()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s));
    m.content_type = properties
        .content_type()
        .as_ref()
        .map(|s| s.as_str().to_owned());
    m.reply_to = properties
        .reply_to()
        .as_ref()
        .map(|s| s.as_str().to_owned());
    m.correlation_id = properties
        .correlation_id()
        .as_ref()
        .map(|s| s.as_str().to_owned());
    if let Some(table) = properties.headers() {
        for (name, value) in table.inner() {
            let name = name.as_str();
            if name == KEY_HEADER {
                m.key = Some(Bytes::copy_from_slice(value_to_header(value).as_bytes()));
                continue;
            }
            match value {
                AMQPValue::FieldArray(values) => {
                    for v in values.as_slice() {
                        m.headers.append(name, value_to_header(v));
                    }
                }
                v => m.headers.append(name, value_to_header(v)),
            }
        }
    }
    if let Some(e) = properties.expiration() {
        m.headers.append(EXPIRATION_HEADER, e.as_str());
    }
    if let Some(p) = properties.priority() {
        m.headers.append(PRIORITY_HEADER, p.to_string());
    }
    m
}

/// The delivery count of a quorum queue (`x-delivery-count`, the number of earlier
/// deliveries), if the broker sent one.
pub fn delivery_count(properties: &BasicProperties) -> Option<u32> {
    let v = properties
        .headers()
        .as_ref()?
        .inner()
        .get(DELIVERY_COUNT_HEADER)?;
    let n: i128 = match v {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        _ => return None,
    };
    u32::try_from(n).ok()
}

/// Adds (replacing) text headers to `properties`.
pub fn with_text_headers(properties: BasicProperties, extra: &[(&str, &str)]) -> BasicProperties {
    let mut table = properties.headers().clone().unwrap_or_default();
    for (name, value) in extra {
        table.insert(ShortString::from(*name), text_value(value));
    }
    properties.with_headers(table)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(
            route("queue:hello", "amq.topic").unwrap(),
            Route {
                exchange: String::new(),
                routing_key: "hello".into()
            }
        );
        assert_eq!(
            route("exchange:logs/a/b", "amq.topic").unwrap(),
            Route {
                exchange: "logs".into(),
                routing_key: "a/b".into()
            }
        );
        assert_eq!(route("a.b", "x").unwrap().exchange, "x");
        assert!(route("queue:", "x").is_err());
        let long = Message::new("x").with_id("i".repeat(256));
        assert!(properties(&long, "d")
            .unwrap_err()
            .to_string()
            .contains("message id"));
    }

    #[test]
    fn messages_round_trip_through_properties() {
        let m = Message::new("p")
            .with_id("id1")
            .with_key(vec![0u8, 0xff])
            .with_content_type("text/plain")
            .with_reply_to("r")
            .with_correlation_id("c")
            .with_header("t", "text")
            .with_header("b", vec![1u8, 2])
            .with_header("multi", "one")
            .with_header("multi", "two")
            .with_header(PRIORITY_HEADER, "3");
        let p = properties(&m, "d").unwrap();
        assert_eq!(*p.priority(), Some(3));
        let back = message(&p, m.payload.clone());
        assert_eq!(back.id, "id1");
        assert_eq!(back.key, m.key);
        assert_eq!(
            back.headers.get("t"),
            Some(&HeaderValue::Text("text".into()))
        );
        assert_eq!(
            back.headers.get("b"),
            Some(&HeaderValue::Binary(Bytes::from_static(&[1, 2])))
        );
        let multi: Vec<_> = back.headers.get_all("multi").collect();
        assert_eq!(multi.len(), 2);
        assert_eq!(back.headers.get_str(PRIORITY_HEADER), Some("3"));
        assert_eq!(
            (back.content_type, back.reply_to, back.correlation_id),
            (m.content_type, m.reply_to, m.correlation_id)
        );
    }
}
