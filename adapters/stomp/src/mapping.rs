//! How polybridge messages, topics and patterns map onto STOMP frames and destinations.
//!
//! # Destinations
//! | given | ActiveMQ | RabbitMQ | other servers |
//! |---|---|---|---|
//! | `a.b` (a plain topic) | `/topic/VirtualTopic.a.b` | `/topic/a.b` | `/topic/a.b` |
//! | `/queue/x`, `/topic/x`, … | as given | as given | as given |
//!
//! Explicit destinations must start with a prefix the broker knows: ActiveMQ `/queue/`,
//! `/topic/`, `/temp-queue/`, `/temp-topic/`; RabbitMQ `/queue/`, `/topic/`, `/exchange/`,
//! `/amq/queue/`, `/temp-queue/`, `/reply-queue/`. Anything else starting with `/` is refused
//! before it is sent. ActiveMQ plain topics are virtual topics so that consumer groups work
//! without broker configuration (ActiveMQ enables `VirtualTopic.>` by default).
//!
//! The topic of a delivery ([`DeliveryInfo::topic`](polybridge_core::DeliveryInfo::topic))
//! reverses the mapping: `/topic/VirtualTopic.a.b` and `/queue/Consumer.G.VirtualTopic.a.b`
//! (ActiveMQ) and `/topic/a.b` (RabbitMQ) give `a.b`; other destinations stay as they are.
//!
//! # Headers
//! STOMP headers are UTF-8 text; the codec escapes `:`, CR, LF and `\`. On top of that:
//! - Metadata travels in `pb-*` headers: `pb-id` (message id; the broker's `message-id` is
//!   never used for identity, RabbitMQ changes it on redelivery), `pb-ts` (Unix
//!   milliseconds), `pb-key` (or `pb-key-b64`, base64, for a key that is not UTF-8),
//!   `pb-reply-to`. The content type is STOMP's `content-type`, the correlation id
//!   `correlation-id`.
//! - A user header whose name STOMP or the broker reserves (`destination`, `ack`,
//!   `message-id`, `persistent`, `JMS…`, `activemq.…`, `pb-…` and the others in
//!   [`RESERVED`]) travels as `pb-h-<name>`.
//! - A binary value travels base64 (standard, padded) as `pb-b64-<name>`.
//! - Brokers keep one value per name, so the 2nd, 3rd … value of a repeated name travel as
//!   `pb-m2-<wire name>`, `pb-m3-<wire name>` …; the receiver restores them in order.
//!
//! Headers of messages from other STOMP clients arrive as they are, minus the protocol
//! headers (`destination`, `message-id`, `subscription`, `ack`, `content-length`,
//! `redelivered`, `persistent`, `expires`, `priority`, `timestamp`, …).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use polybridge_core::{Error, HeaderValue, Headers, Message, Result, Segment, TopicPattern};

use crate::config::Flavor;
use crate::frame::Frame;
use crate::BROKER;

/// Message id header.
pub const ID: &str = "pb-id";
/// Timestamp header (Unix milliseconds).
pub const TIMESTAMP: &str = "pb-ts";
/// Key header (UTF-8 keys).
pub const KEY: &str = "pb-key";
/// Key header (base64, for keys that are not UTF-8).
pub const KEY_B64: &str = "pb-key-b64";
/// Reply-to header.
pub const REPLY_TO: &str = "pb-reply-to";
/// Prefix of user headers with a reserved name.
pub const RESERVED_PREFIX: &str = "pb-h-";
/// Prefix of user headers with a binary value.
pub const BINARY_PREFIX: &str = "pb-b64-";

/// Header names STOMP, ActiveMQ or RabbitMQ interpret; user headers with these names are
/// carried as `pb-h-<name>`.
pub const RESERVED: &[&str] = &[
    "destination",
    "content-length",
    "content-type",
    "receipt",
    "receipt-id",
    "transaction",
    "message-id",
    "subscription",
    "ack",
    "id",
    "persistent",
    "expires",
    "priority",
    "type",
    "reply-to",
    "correlation-id",
    "redelivered",
    "timestamp",
    "host",
    "login",
    "passcode",
    "heart-beat",
    "version",
    "server",
    "session",
    "message",
    "original-destination",
    "user-id",
    "app-id",
    "content-encoding",
];

/// Name prefixes reserved the same way.
const RESERVED_PREFIXES: &[&str] = &["pb-", "JMS", "activemq.", "amqp-"];

/// Protocol headers a broker adds to MESSAGE frames; not user headers.
const PROTOCOL: &[&str] = &[
    "destination",
    "message-id",
    "subscription",
    "ack",
    "content-length",
    "content-type",
    "redelivered",
    "receipt",
    "persistent",
    "expires",
    "priority",
    "timestamp",
    "correlation-id",
    "reply-to",
    ID,
    TIMESTAMP,
    KEY,
    KEY_B64,
    REPLY_TO,
];

fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Prefixes an explicit destination may start with.
fn known_prefixes(flavor: Flavor) -> &'static [&'static str] {
    match flavor {
        Flavor::ActiveMq => &["/queue/", "/topic/", "/temp-queue/", "/temp-topic/"],
        Flavor::RabbitMq => &[
            "/queue/",
            "/topic/",
            "/exchange/",
            "/amq/queue/",
            "/temp-queue/",
            "/reply-queue/",
        ],
        Flavor::Generic => &["/"],
    }
}

const VIRTUAL_TOPIC: &str = "VirtualTopic.";

/// The STOMP destination to SEND `name` to.
pub fn destination(flavor: Flavor, name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(Error::permanent(BROKER, name, "an empty destination"));
    }
    if name.contains(['\0', '\n', '\r']) {
        return Err(Error::permanent(
            BROKER,
            name,
            "a destination cannot contain NUL, CR or LF",
        ));
    }
    if name.starts_with('/') {
        let prefixes = known_prefixes(flavor);
        return match prefixes
            .iter()
            .find(|p| name.starts_with(*p) && name.len() > p.len())
        {
            Some(_) => Ok(name.to_owned()),
            None => Err(Error::permanent(
                BROKER,
                name,
                format!(
                    "unknown destination prefix for {}: use a plain topic name or one of {}",
                    flavor.name(),
                    prefixes.join(", ")
                ),
            )),
        };
    }
    if name.split('.').any(|l| matches!(l, "*" | ">" | "#")) {
        return Err(Error::permanent(
            BROKER,
            name,
            "a wildcard cannot be published to; wildcards are for subscriptions",
        ));
    }
    Ok(match flavor {
        Flavor::ActiveMq => format!("/topic/{VIRTUAL_TOPIC}{name}"),
        Flavor::RabbitMq | Flavor::Generic => format!("/topic/{name}"),
    })
}

/// The topic a delivery came from, reversing [`destination`].
pub fn topic_of(flavor: Flavor, destination: &str) -> String {
    if let Some(rest) = destination.strip_prefix("/topic/") {
        return match flavor {
            Flavor::ActiveMq => match rest.strip_prefix(VIRTUAL_TOPIC) {
                Some(t) => t.to_owned(),
                None => destination.to_owned(),
            },
            Flavor::RabbitMq | Flavor::Generic => rest.to_owned(),
        };
    }
    if flavor == Flavor::ActiveMq {
        if let Some(rest) = destination.strip_prefix("/queue/Consumer.") {
            if let Some((_, t)) = rest.split_once(&format!(".{VIRTUAL_TOPIC}")) {
                return t.to_owned();
            }
        }
    }
    destination.to_owned()
}

/// What to SUBSCRIBE to for a pattern, a group and a durable name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribePlan {
    /// The destination header.
    pub destination: String,
    /// Extra SUBSCRIBE headers (queue names, durability).
    pub headers: Vec<(String, String)>,
    /// `client-id` the connection needs (ActiveMQ durable subscriptions).
    pub client_id: Option<String>,
    /// Whether the destination is a queue that keeps messages while nobody listens.
    pub queue: bool,
}

fn unsupported_pattern(flavor: Flavor, pattern: &TopicPattern, reason: &str) -> Error {
    Error::unsupported(
        BROKER,
        format!("the pattern {pattern} on {}: {reason}", flavor.name()),
    )
}

/// The pattern in the broker's wildcard syntax (levels separated by `.`).
pub fn pattern_text(flavor: Flavor, pattern: &TopicPattern) -> Result<String> {
    let segs = pattern.segments();
    let n = segs.len();
    // ActiveMQ: `*` one level, `>` zero or more levels (only last). RabbitMQ (AMQP
    // binding keys): `*` one word, `#` zero or more words.
    let (one, any) = match flavor {
        Flavor::ActiveMq => ("*", ">"),
        Flavor::RabbitMq | Flavor::Generic => ("*", "#"),
    };
    let mut out = Vec::with_capacity(n);
    for (i, s) in segs.iter().enumerate() {
        match s {
            Segment::Literal(l) => {
                if i > 0 && l.contains('.') {
                    return Err(unsupported_pattern(
                        flavor,
                        pattern,
                        &format!("the level {l:?} contains the separator '.'"),
                    ));
                }
                if l.as_str() == one || l.as_str() == any || l == "#" || l == ">" {
                    return Err(unsupported_pattern(
                        flavor,
                        pattern,
                        &format!("the level {l:?} is a wildcard in STOMP destinations"),
                    ));
                }
                out.push(l.clone());
            }
            Segment::Single => {
                // "One or more levels" (`a.>` in canonical form) = Single + AnyLevels.
                if flavor == Flavor::ActiveMq && i + 2 == n && segs[i + 1] == Segment::AnyLevels {
                    return Err(unsupported_pattern(
                        flavor,
                        pattern,
                        "ActiveMQ compacts `a.*.>` to `a.>`, which also matches `a` itself, so \"one or more levels\" cannot be expressed; subscribe to the canonical `a.#` (zero or more) instead",
                    ));
                }
                out.push(one.to_owned());
            }
            Segment::AnyLevels => out.push(any.to_owned()),
        }
    }
    Ok(out.join("."))
}

/// Plans the SUBSCRIBE of `pattern`, shared by `group` or durable as `durable`.
pub fn subscribe_plan(
    flavor: Flavor,
    pattern: &TopicPattern,
    group: Option<&str>,
    durable: Option<&str>,
) -> Result<SubscribePlan> {
    let text = pattern_text(flavor, pattern)?;
    let explicit = text.starts_with('/');
    let shared = group.or(durable);
    if let Some(g) = shared {
        if g.is_empty() || g.contains(['.', '*', '>', '#', '/', '\n', '\r', '\0']) {
            return Err(Error::config(
                BROKER,
                format!("the group or durable name {g:?} must be non-empty without '.', '/', '*', '>' or '#'"),
            ));
        }
    }
    let mut plan = SubscribePlan {
        destination: String::new(),
        headers: Vec::new(),
        client_id: None,
        queue: false,
    };
    if explicit {
        let prefixes = known_prefixes(flavor);
        if !prefixes.iter().any(|p| text.starts_with(p)) {
            return Err(Error::permanent(
                BROKER,
                text.clone(),
                format!(
                    "unknown destination prefix for {}: use one of {}",
                    flavor.name(),
                    prefixes.join(", ")
                ),
            ));
        }
        plan.queue = text.starts_with("/queue/") || text.starts_with("/amq/queue/");
        plan.destination = text.clone();
        if plan.queue || shared.is_none() {
            return Ok(plan);
        }
    }
    match (flavor, group, durable) {
        (_, None, None) => {
            plan.destination = if explicit { text } else { destination_for_pattern(flavor, &text) };
        }
        (Flavor::ActiveMq, Some(g), _) => {
            let topic = match text.strip_prefix("/topic/") {
                Some(t) => match t.strip_prefix(VIRTUAL_TOPIC) {
                    Some(t) => t.to_owned(),
                    None => {
                        return Err(Error::unsupported(
                            BROKER,
                            format!("a consumer group on {text} (ActiveMQ): groups need a virtual topic, /topic/VirtualTopic.<name> or a plain topic name"),
                        ))
                    }
                },
                None if explicit => {
                    return Err(Error::unsupported(
                        BROKER,
                        format!("a consumer group on {text} (ActiveMQ)"),
                    ))
                }
                None => text.clone(),
            };
            if !pattern.is_literal() {
                return Err(unsupported_pattern(
                    flavor,
                    pattern,
                    "ActiveMQ consumer groups are virtual-topic queues, which take one topic, not a wildcard",
                ));
            }
            plan.destination = format!("/queue/Consumer.{g}.{VIRTUAL_TOPIC}{topic}");
            plan.queue = true;
        }
        (Flavor::ActiveMq, None, Some(d)) => {
            plan.destination = if explicit { text } else { destination_for_pattern(flavor, &text) };
            plan.headers.push(("activemq.subscriptionName".into(), d.to_owned()));
            plan.client_id = Some(format!("polybridge-{d}"));
            plan.queue = true;
        }
        (Flavor::RabbitMq, _, _) => {
            let name = shared.unwrap_or_default();
            plan.destination = if explicit { text.clone() } else { format!("/topic/{text}") };
            plan.headers.extend([
                ("x-queue-name".into(), format!("polybridge.{name}.{text}")),
                ("durable".into(), "true".into()),
                ("auto-delete".into(), "false".into()),
            ]);
            plan.queue = true;
        }
        (Flavor::Generic, _, _) => {
            return Err(Error::unsupported(
                BROKER,
                "consumer groups and durable subscriptions on a STOMP server that is neither ActiveMQ nor RabbitMQ (set flavor=activemq or flavor=rabbitmq if it behaves like one)",
            ))
        }
    }
    Ok(plan)
}

fn destination_for_pattern(flavor: Flavor, text: &str) -> String {
    match flavor {
        Flavor::ActiveMq => format!("/topic/{VIRTUAL_TOPIC}{text}"),
        Flavor::RabbitMq | Flavor::Generic => format!("/topic/{text}"),
    }
}

/// The SEND headers (besides `destination`, `receipt` and `persistent`) for `message`.
pub fn encode_headers(message: &Message, out: &mut Frame) {
    out.header_push(ID, message.id.clone());
    if let Some(ts) = message.timestamp {
        if let Ok(d) = ts.duration_since(UNIX_EPOCH) {
            out.header_push(TIMESTAMP, d.as_millis().to_string());
        }
    }
    if let Some(ct) = &message.content_type {
        out.header_push("content-type", ct.clone());
    }
    if let Some(key) = &message.key {
        match std::str::from_utf8(key) {
            Ok(k) => out.header_push(KEY, k),
            Err(_) => out.header_push(KEY_B64, BASE64.encode(key)),
        }
    }
    if let Some(c) = &message.correlation_id {
        out.header_push("correlation-id", c.clone());
    }
    if let Some(r) = &message.reply_to {
        out.header_push(REPLY_TO, r.clone());
    }
    let mut seen: Vec<(&str, u32)> = Vec::new();
    for (name, value) in message.headers.iter() {
        let wire = match value {
            HeaderValue::Text(_) if is_reserved(name) => format!("{RESERVED_PREFIX}{name}"),
            HeaderValue::Text(_) => name.to_owned(),
            HeaderValue::Binary(_) => format!("{BINARY_PREFIX}{name}"),
        };
        let count = match seen.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => {
                *c += 1;
                *c
            }
            None => {
                seen.push((name, 1));
                1
            }
        };
        let wire = if count > 1 {
            format!("pb-m{count}-{wire}")
        } else {
            wire
        };
        let value = match value {
            HeaderValue::Text(t) => t.clone(),
            HeaderValue::Binary(b) => BASE64.encode(b),
        };
        out.header_push(wire, value);
    }
}

/// The message in a MESSAGE frame.
pub fn decode_message(frame: &Frame) -> Message {
    let h = |n: &str| frame.header(n);
    let key = match (h(KEY), h(KEY_B64)) {
        (Some(k), _) => Some(bytes::Bytes::copy_from_slice(k.as_bytes())),
        (None, Some(b)) => BASE64.decode(b).ok().map(bytes::Bytes::from),
        _ => None,
    };
    let timestamp = h(TIMESTAMP)
        .or(h("timestamp"))
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    let mut message = Message {
        id: h(ID)
            .or(h("message-id"))
            .map(str::to_owned)
            .unwrap_or_else(polybridge_core::new_message_id),
        payload: frame.body.clone(),
        headers: Headers::new(),
        key,
        content_type: h("content-type").map(str::to_owned),
        timestamp: timestamp.or(None::<SystemTime>),
        reply_to: h(REPLY_TO).or(h("reply-to")).map(str::to_owned),
        correlation_id: h("correlation-id").map(str::to_owned),
    };
    // (name, index of the value, value), restored in order per name.
    let mut user: Vec<(String, u32, HeaderValue)> = Vec::new();
    for (wire, value) in &frame.headers {
        if PROTOCOL.contains(&wire.as_str()) {
            continue;
        }
        let (mut rest, index) = match split_multi(wire) {
            Some((k, rest)) => (rest, k),
            None => (wire.as_str(), 1),
        };
        let value = if let Some(name) = rest.strip_prefix(BINARY_PREFIX) {
            rest = name;
            match BASE64.decode(value) {
                Ok(b) => HeaderValue::Binary(b.into()),
                Err(_) => HeaderValue::Text(value.clone()),
            }
        } else {
            if let Some(name) = rest.strip_prefix(RESERVED_PREFIX) {
                rest = name;
            }
            HeaderValue::Text(value.clone())
        };
        user.push((rest.to_owned(), index, value));
    }
    // Stable: names keep the order of their first value; values of a name follow their index.
    let mut order: Vec<String> = Vec::new();
    for (n, _, _) in &user {
        if !order.contains(n) {
            order.push(n.clone());
        }
    }
    user.sort_by_key(|(n, i, _)| (order.iter().position(|o| o == n).unwrap_or(0), *i));
    for (n, _, v) in user {
        message.headers.append(n, v);
    }
    message
}

/// `pb-m<k>-<rest>` → `(k, rest)`.
fn split_multi(wire: &str) -> Option<(u32, &str)> {
    let rest = wire.strip_prefix("pb-m")?;
    let (k, rest) = rest.split_once('-')?;
    Some((k.parse().ok()?, rest))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round_trip(m: &Message) -> Message {
        let mut f = Frame::new("MESSAGE")
            .with_header("destination", "/topic/x")
            .with_header("message-id", "ID:broker-1")
            .with_body(m.payload.clone());
        encode_headers(m, &mut f);
        decode_message(&f)
    }

    #[test]
    fn messages_round_trip() {
        let m = Message::new(vec![0u8, 1, 0])
            .with_id("m1")
            .with_key(vec![0xffu8, 0])
            .with_content_type("application/json")
            .with_correlation_id("c1")
            .with_reply_to("replies")
            .with_header("h", "v")
            .with_header("multi", "one")
            .with_header("destination", "mine")
            .with_header("bin", vec![0u8, 0xff])
            .with_header("multi", "two")
            .with_header("pb-x", "y")
            .with_header("multi", vec![1u8]);
        let got = round_trip(&m);
        assert_eq!(got.id, "m1");
        assert_eq!(got.key, m.key);
        assert_eq!(got.content_type, m.content_type);
        assert_eq!(got.correlation_id, m.correlation_id);
        assert_eq!(got.reply_to, m.reply_to);
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(ms(got.timestamp.unwrap()), ms(m.timestamp.unwrap()));
        assert_eq!(got.headers.get_str("h"), Some("v"));
        assert_eq!(got.headers.get_str("destination"), Some("mine"));
        assert_eq!(got.headers.get_str("pb-x"), Some("y"));
        assert_eq!(got.headers.get("bin"), m.headers.get("bin"));
        let multi: Vec<_> = got.headers.get_all("multi").cloned().collect();
        let want: Vec<_> = m.headers.get_all("multi").cloned().collect();
        assert_eq!(multi, want);
        assert_eq!(got.headers.len(), m.headers.len());
    }

    #[test]
    fn foreign_messages_keep_their_headers() {
        let f = Frame::new("MESSAGE")
            .with_header("destination", "/queue/test")
            .with_header("message-id", "ID:1")
            .with_header("custom", "x")
            .with_body("Hello STOMP");
        let m = decode_message(&f);
        assert_eq!(m.id, "ID:1");
        assert_eq!(m.headers.get_str("custom"), Some("x"));
        assert_eq!(m.headers.len(), 1);
    }

    #[test]
    fn destinations_map_per_flavor() {
        use Flavor::*;
        assert_eq!(
            destination(ActiveMq, "a.b").unwrap(),
            "/topic/VirtualTopic.a.b"
        );
        assert_eq!(destination(RabbitMq, "a.b").unwrap(), "/topic/a.b");
        assert_eq!(
            destination(RabbitMq, "/exchange/x/k").unwrap(),
            "/exchange/x/k"
        );
        assert_eq!(destination(ActiveMq, "/queue/test").unwrap(), "/queue/test");
        let e = destination(ActiveMq, "/exchange/x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown destination prefix"), "{e}");
        assert!(destination(RabbitMq, "a.*").is_err());
        assert!(destination(RabbitMq, "").is_err());
        assert_eq!(topic_of(ActiveMq, "/topic/VirtualTopic.a.b"), "a.b");
        assert_eq!(
            topic_of(ActiveMq, "/queue/Consumer.g.VirtualTopic.a.b"),
            "a.b"
        );
        assert_eq!(topic_of(ActiveMq, "/queue/test"), "/queue/test");
        assert_eq!(topic_of(RabbitMq, "/topic/a.b"), "a.b");
        assert_eq!(topic_of(RabbitMq, "/queue/q"), "/queue/q");
    }

    #[test]
    fn subscriptions_plan_per_flavor() {
        use Flavor::*;
        let p = |s: &str| TopicPattern::parse(s).unwrap();
        let plan = subscribe_plan(ActiveMq, &p("a.*.c"), None, None).unwrap();
        assert_eq!(plan.destination, "/topic/VirtualTopic.a.*.c");
        let plan = subscribe_plan(ActiveMq, &p("a.#"), None, None).unwrap();
        assert_eq!(plan.destination, "/topic/VirtualTopic.a.>");
        assert!(subscribe_plan(ActiveMq, &p("a.>"), None, None).is_err());
        let plan = subscribe_plan(ActiveMq, &p("a.b"), Some("g"), None).unwrap();
        assert_eq!(plan.destination, "/queue/Consumer.g.VirtualTopic.a.b");
        assert!(subscribe_plan(ActiveMq, &p("a.*"), Some("g"), None).is_err());
        let plan = subscribe_plan(ActiveMq, &p("a.b"), None, Some("d1")).unwrap();
        assert_eq!(plan.client_id.as_deref(), Some("polybridge-d1"));
        let plan = subscribe_plan(RabbitMq, &p("a.>"), None, None).unwrap();
        assert_eq!(plan.destination, "/topic/a.*.#");
        let plan = subscribe_plan(RabbitMq, &p("a.b"), Some("g"), None).unwrap();
        assert_eq!(plan.destination, "/topic/a.b");
        assert!(plan
            .headers
            .contains(&("x-queue-name".into(), "polybridge.g.a.b".into())));
        let explicit = TopicPattern::literal("/queue/test", '.');
        let plan = subscribe_plan(ActiveMq, &explicit, Some("g"), None).unwrap();
        assert_eq!(plan.destination, "/queue/test");
        assert!(plan.queue);
        assert!(subscribe_plan(Generic, &p("a"), Some("g"), None).is_err());
        assert!(subscribe_plan(RabbitMq, &p("a"), Some("g.h"), None).is_err());
    }
}
