//! Two tiny brokers built into the bridge so the quickstart runs with no broker installed.
//!
//! | URL | role | what it does |
//! |---|---|---|
//! | `generate://NAME?interval=500ms&count=0` | source | emits demo sensor readings |
//! | `stdout://?format=text` | sink | prints every message it is given, one line each |
//!
//! # `generate://`
//! Every `interval` (default `500ms`) it emits reading number `n` (from 0; `count=N` stops
//! after N readings, `0` = forever) on topic `sensors.<room>.temp`, with `<room>` cycling
//! through `kitchen`, `hall`, `garage`, `cellar`; key `<room>`; header `unit: C`; content
//! type `application/json`; payload `{"seq": n, "room": "<room>", "celsius": c}` with
//! `c = 14.5 + (7·n mod 21)` (so the values are known in advance: 14.5, 21.5, 28.5, 15.5, …).
//! A subscription receives the readings whose topic matches its pattern (canonical syntax,
//! `.` levels). Each subscription has its own sequence. It is a demonstration source:
//! settling is accepted and ignored (at most once, nothing is redelivered).
//!
//! # `stdout://`
//! `publish` writes one line to standard output and resolves once it is flushed:
//! - `format=text` (default): `<destination> key=<key> <name>=<value>… <payload>` (the key
//!   and headers only when present; binary values as `base64:…`);
//! - `format=json`: the JSON envelope of [`crate::mapping::json_envelope`] with the
//!   destination as `topic`.
//!
//! It cannot be subscribed to.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use polybridge::{
    AckHandle, Acknowledger, Broker, BrokerUrl, Capabilities, Deadline, Delivery,
    DeliveryGuarantee, DeliveryInfo, DeliveryStream, Error, HeaderSupport, HeaderValue, Message,
    Ordering, Position, Publisher, Receipt, Result, Settlement, Subscriber, Subscription,
    Wildcards,
};
use tokio::sync::{mpsc, oneshot};

/// The schemes served here rather than by an adapter.
pub const SCHEMES: &[&str] = &["generate", "stdout"];

/// Connects `url`: a built-in broker, or an adapter through the `polybridge` facade.
pub async fn connect_url(url: &BrokerUrl) -> Result<Arc<dyn Broker>> {
    match url.scheme() {
        "generate" => Ok(Arc::new(GenerateBroker::connect(url)?)),
        "stdout" => Ok(Arc::new(StdoutBroker::connect(url)?)),
        _ => polybridge::connect_url(url).await,
    }
}

/// What the broker for `url` can do, without connecting.
pub fn capabilities_for(url: &BrokerUrl) -> Result<Capabilities> {
    match url.scheme() {
        "generate" => GenerateBroker::connect(url).map(|b| b.capabilities),
        "stdout" => StdoutBroker::connect(url).map(|b| b.capabilities),
        _ => polybridge::capabilities_for(url),
    }
}

fn capabilities(delivery: DeliveryGuarantee) -> Capabilities {
    Capabilities {
        delivery,
        confirmed_publish: true,
        ordering: Ordering::PerTopic,
        persistence: false,
        replay: false,
        consumer_groups: false,
        headers: HeaderSupport::Binary,
        keys: true,
        native_delay: false,
        native_dead_letter: false,
        max_payload: None,
        wildcards: Wildcards {
            single_level: true,
            multi_level: true,
        },
        request_reply: false,
        reconnect: true,
        batched_publish: false,
    }
}

/// The demo source (`generate://`).
pub struct GenerateBroker {
    url: BrokerUrl,
    capabilities: Capabilities,
    interval: Duration,
    count: u64,
}

/// The rooms readings cycle through.
pub const ROOMS: [&str; 4] = ["kitchen", "hall", "garage", "cellar"];

/// Reading `n` of a `generate://` source: (topic, message).
pub fn reading(n: u64) -> (String, Message) {
    let room = ROOMS[usize::try_from(n % 4).unwrap_or(0)];
    let celsius = 14.5 + ((7 * n) % 21) as f64;
    let payload = format!(r#"{{"seq":{n},"room":"{room}","celsius":{celsius:.1}}}"#);
    let message = Message::new(payload)
        .with_id(format!("reading-{n}"))
        .with_key(room)
        .with_header("unit", "C")
        .with_content_type("application/json");
    (format!("sensors.{room}.temp"), message)
}

impl GenerateBroker {
    /// Reads the options of a `generate://` URL.
    pub fn connect(url: &BrokerUrl) -> Result<Self> {
        url.check_options("generate", &["interval", "count"])?;
        let interval = url
            .duration_option("generate", "interval")?
            .unwrap_or(Duration::from_millis(500));
        let count = url.parse_option::<u64>("generate", "count")?.unwrap_or(0);
        Ok(GenerateBroker {
            url: url.clone(),
            capabilities: capabilities(DeliveryGuarantee::AtMostOnce),
            interval,
            count,
        })
    }
}

struct IgnoreSettlement;

impl Acknowledger for IgnoreSettlement {
    fn settle(&self, _token: u64, _settlement: Settlement) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Publisher for GenerateBroker {
    async fn publish(&self, destination: &str, _m: &Message, _d: Deadline) -> Result<Receipt> {
        Err(Error::unsupported(
            "generate",
            format!("publishing to {destination:?}: generate:// is a source only"),
        ))
    }
    async fn close(&self, _deadline: Deadline) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Subscriber for GenerateBroker {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        let (tx, rx) = mpsc::channel(subscription.max_in_flight.max(1));
        let (close_tx, mut close_rx) = oneshot::channel::<()>();
        let (closed_tx, closed_rx) = oneshot::channel::<()>();
        let interval = self.interval;
        let count = self.count;
        let acker: Arc<dyn Acknowledger> = Arc::new(IgnoreSettlement);
        tokio::spawn(async move {
            let _closed = closed_tx;
            let mut tick = tokio::time::interval(interval);
            let mut n = 0u64;
            let mut closed = false;
            while count == 0 || n < count {
                tokio::select! {
                    _ = &mut close_rx => { closed = true; break }
                    _ = tick.tick() => {}
                }
                let (topic, message) = reading(n);
                if subscription.pattern.matches(&topic, '.') {
                    let delivery = Delivery {
                        message,
                        info: DeliveryInfo {
                            topic,
                            attempt: 1,
                            redelivered: false,
                            position: Some(Position::Sequence(n)),
                            partition: None,
                        },
                        handle: AckHandle::new(acker.clone(), n),
                    };
                    tokio::select! {
                        _ = &mut close_rx => { closed = true; break }
                        sent = tx.send(Ok(delivery)) => if sent.is_err() { break },
                    }
                }
                n += 1;
            }
            // With a count, keep the stream open (a route would otherwise resubscribe and
            // start over) until the subscriber closes it.
            if !closed {
                let _ = close_rx.await;
            }
        });
        Ok(DeliveryStream::new(rx, close_tx, closed_rx))
    }
}

impl Broker for GenerateBroker {
    fn name(&self) -> &'static str {
        "generate"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }
    fn url(&self) -> &BrokerUrl {
        &self.url
    }
}

/// The printing sink (`stdout://`).
pub struct StdoutBroker {
    url: BrokerUrl,
    capabilities: Capabilities,
    json: bool,
}

impl StdoutBroker {
    /// Reads the options of a `stdout://` URL.
    pub fn connect(url: &BrokerUrl) -> Result<Self> {
        url.check_options("stdout", &["format"])?;
        let json = match url.option("format") {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(Error::config(
                    "stdout",
                    format!("option format={other:?} in {url}: expected `text` or `json`"),
                ))
            }
        };
        Ok(StdoutBroker {
            url: url.clone(),
            capabilities: capabilities(DeliveryGuarantee::AtMostOnce),
            json,
        })
    }

    /// The line printed for `message` sent to `destination`.
    pub fn line(&self, destination: &str, message: &Message) -> String {
        if self.json {
            return crate::mapping::json_envelope(destination, message).to_string();
        }
        let text = |b: &[u8]| match std::str::from_utf8(b) {
            Ok(s) => s.to_owned(),
            Err(_) => format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(b)
            ),
        };
        let mut line = destination.to_owned();
        if let Some(k) = &message.key {
            line.push_str(" key=");
            line.push_str(&text(k));
        }
        for (name, value) in message.headers.iter() {
            line.push(' ');
            line.push_str(name);
            line.push('=');
            match value {
                HeaderValue::Text(s) => line.push_str(s),
                HeaderValue::Binary(b) => line.push_str(&text(b)),
            }
        }
        line.push(' ');
        line.push_str(&text(&message.payload));
        line
    }
}

#[async_trait]
impl Publisher for StdoutBroker {
    async fn publish(&self, destination: &str, message: &Message, _d: Deadline) -> Result<Receipt> {
        let mut line = self.line(destination, message);
        line.push('\n');
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Error::permanent("stdout", destination, format!("writing: {e}")))?;
        Ok(Receipt::default())
    }
    async fn close(&self, _deadline: Deadline) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Subscriber for StdoutBroker {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        Err(Error::unsupported(
            "stdout",
            format!(
                "subscribing to {}: stdout:// is a sink only",
                subscription.pattern
            ),
        ))
    }
}

impl Broker for StdoutBroker {
    fn name(&self) -> &'static str {
        "stdout"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }
    fn url(&self) -> &BrokerUrl {
        &self.url
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_known_in_advance() {
        let (topic, m) = reading(1);
        assert_eq!(topic, "sensors.hall.temp");
        assert_eq!(&m.payload[..], br#"{"seq":1,"room":"hall","celsius":21.5}"#);
        assert_eq!(m.key.as_deref(), Some(&b"hall"[..]));
    }

    #[test]
    fn stdout_lines() {
        let b = StdoutBroker::connect(&"stdout://".parse().unwrap()).unwrap();
        let m = Message::new("hi").with_key("k").with_header("a", "b");
        assert_eq!(b.line("out.x", &m), "out.x key=k a=b hi");
        assert!(StdoutBroker::connect(&"stdout://?format=xml".parse().unwrap()).is_err());
    }
}
