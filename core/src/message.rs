//! The message every adapter carries: payload, headers, key and request/reply metadata.

use std::fmt;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// One message, independent of the broker that carries it.
///
/// Cloning is cheap for the payload and key (`Bytes` is reference counted); headers and
/// strings are copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Identifier chosen by the publisher. Adapters carry it in the broker's native field
    /// where there is one (AMQP `message-id`, JetStream `Nats-Msg-Id`, …) so brokers that
    /// deduplicate can use it. Not every broker keeps it on redelivery (RabbitMQ's STOMP
    /// assigns new ids), so it is a label, not a promise of uniqueness on the consumer side.
    pub id: String,
    /// The body, never copied on the hot path.
    pub payload: Bytes,
    /// Ordered, multi-valued headers whose values may be text or binary.
    pub headers: Headers,
    /// The one portable routing hint: Kafka key, AMQP routing key, Redis stream field, …
    pub key: Option<Bytes>,
    /// MIME type of the payload, e.g. `application/json`.
    pub content_type: Option<String>,
    /// When the message was created, if known.
    pub timestamp: Option<SystemTime>,
    /// For request/reply: where the responder should send its reply.
    pub reply_to: Option<String>,
    /// For request/reply: ties a reply to its request.
    pub correlation_id: Option<String>,
}

impl Message {
    /// A message with the given payload, a fresh id, the current time and nothing else.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message {
            timestamp: Some(SystemTime::now()),
            ..Message::rebuilt(new_message_id(), payload)
        }
    }

    /// A message a source adapter rebuilds from a broker's record, before it sets what the
    /// record carries: `id` as given (the adapter may set it later), the payload, no
    /// timestamp and nothing else. Unlike [`Message::new`] it makes no id and does not read
    /// the clock: per delivered message, work the adapter would overwrite.
    pub fn rebuilt(id: String, payload: impl Into<Bytes>) -> Self {
        Message {
            id,
            payload: payload.into(),
            headers: Headers::new(),
            key: None,
            content_type: None,
            timestamp: None,
            reply_to: None,
            correlation_id: None,
        }
    }

    /// Replaces the id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Appends a header (existing values of the same name are kept).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Sets the reply-to destination.
    pub fn with_reply_to(mut self, reply_to: impl Into<String>) -> Self {
        self.reply_to = Some(reply_to.into());
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }
}

/// A new process-unique, roughly time-ordered message id: `<unix-millis hex>-<pid hex>-<counter hex>`.
///
/// Unique within a process and, in practice, across processes on one host; publishers that need
/// global uniqueness set their own id.
pub fn new_message_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `std::process::id()` is a system call each time and ids are made per message, so the
    // pid is read once (a child forked without exec would keep it; nothing here forks).
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    let mut id = String::with_capacity(40);
    let _ = write!(id, "{millis:x}-{pid:x}-{n:x}");
    id
}

/// A header value: text, or bytes for protocols whose headers are binary (Kafka, AMQP).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum HeaderValue {
    /// UTF-8 text.
    Text(String),
    /// Arbitrary bytes.
    Binary(Bytes),
}

impl HeaderValue {
    /// The value as text, if it is text or valid UTF-8 bytes.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Text(s) => Some(s),
            HeaderValue::Binary(b) => std::str::from_utf8(b).ok(),
        }
    }

    /// The value's bytes (UTF-8 for text).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HeaderValue::Text(s) => s.as_bytes(),
            HeaderValue::Binary(b) => b,
        }
    }

    /// Whether this is a binary value.
    pub fn is_binary(&self) -> bool {
        matches!(self, HeaderValue::Binary(_))
    }
}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Text(s) => write!(f, "{s:?}"),
            HeaderValue::Binary(b) => write!(f, "b{b:?}"),
        }
    }
}

impl From<&str> for HeaderValue {
    fn from(s: &str) -> Self {
        HeaderValue::Text(s.to_owned())
    }
}

impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        HeaderValue::Text(s)
    }
}

impl From<Bytes> for HeaderValue {
    fn from(b: Bytes) -> Self {
        HeaderValue::Binary(b)
    }
}

impl From<Vec<u8>> for HeaderValue {
    fn from(b: Vec<u8>) -> Self {
        HeaderValue::Binary(Bytes::from(b))
    }
}

impl From<&[u8]> for HeaderValue {
    fn from(b: &[u8]) -> Self {
        HeaderValue::Binary(Bytes::copy_from_slice(b))
    }
}

/// Ordered, multi-valued headers. Names are compared exactly (case-sensitive); adapters whose
/// protocol folds case say so in their docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, HeaderValue)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers::default()
    }

    /// Appends a value, keeping earlier values of the same name.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<HeaderValue>) {
        self.entries.push((name.into(), value.into()));
    }

    /// Replaces every value of `name` with this one (appended at the end).
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<HeaderValue>) {
        let name = name.into();
        self.entries.retain(|(n, _)| *n != name);
        self.entries.push((name, value.into()));
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The first value of `name` as text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(HeaderValue::as_str)
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a HeaderValue> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Removes every value of `name`; returns how many were removed.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.entries.len();
        self.entries.retain(|(n, _)| n != name);
        before - self.entries.len()
    }

    /// All entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HeaderValue)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of entries (a name with two values counts twice).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<N: Into<String>, V: Into<HeaderValue>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Headers {
            entries: iter
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        }
    }
}

impl IntoIterator for Headers {
    type Item = (String, HeaderValue);
    type IntoIter = std::vec::IntoIter<(String, HeaderValue)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// Header names polybridge itself writes. Every adapter and the bridge use these, so a
/// dead-lettered message says the same thing wherever it lands.
pub mod well_known {
    /// Why a message was rejected (dead-lettered).
    pub const REJECT_REASON: &str = "x-polybridge-reject-reason";
    /// The topic the rejected message was consumed from.
    pub const ORIGINAL_TOPIC: &str = "x-polybridge-original-topic";
    /// How many times the message had been delivered when it was rejected.
    pub const ATTEMPTS: &str = "x-polybridge-attempts";
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_and_multiple_values() {
        let mut h = Headers::new();
        h.append("a", "1");
        h.append("b", vec![0u8, 255]);
        h.append("a", "2");
        assert_eq!(h.len(), 3);
        let a: Vec<_> = h.get_all("a").map(|v| v.as_str().unwrap()).collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(h.get("b").unwrap().as_bytes(), &[0, 255]);
        assert!(h.get("b").unwrap().is_binary());
        assert_eq!(h.get("b").unwrap().as_str(), None);
        h.set("a", "3");
        assert_eq!(h.get_all("a").count(), 1);
        assert_eq!(h.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(h.remove("b"), 1);
        assert_eq!(h.get("b"), None);
    }

    #[test]
    fn message_ids_are_unique() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| new_message_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn builder_sets_fields() {
        let m = Message::new("hi")
            .with_id("m1")
            .with_key("k")
            .with_header("h", "v")
            .with_content_type("text/plain")
            .with_reply_to("replies")
            .with_correlation_id("c1");
        assert_eq!(m.id, "m1");
        assert_eq!(m.payload, Bytes::from_static(b"hi"));
        assert_eq!(m.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(m.headers.get_str("h"), Some("v"));
        assert_eq!(m.content_type.as_deref(), Some("text/plain"));
        assert_eq!(m.reply_to.as_deref(), Some("replies"));
        assert_eq!(m.correlation_id.as_deref(), Some("c1"));
        assert!(m.timestamp.is_some());
    }
}
