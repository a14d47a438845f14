//! `amqp://[user:password@]host[:port][/vhost][?option=value&…]`, and `amqps://` (TLS).
//!
//! See the crate documentation for every option.

use std::time::Duration;

use polybridge_core::{BrokerUrl, Error, Result};

use crate::BROKER;

/// The AMQP port when an `amqp://` URL names none.
pub const DEFAULT_PORT: u16 = 5672;

/// The AMQP-over-TLS port when an `amqps://` URL names none.
pub const DEFAULT_TLS_PORT: u16 = 5671;

/// The default `frame_max` proposed to the broker (32 KiB). lapin keeps two I/O buffers of
/// 32 frames each per connection, so this bounds them to 2 MiB instead of 8 MiB with
/// RabbitMQ's default of 128 KiB.
pub const DEFAULT_FRAME_MAX: u32 = 32 * 1024;

/// The smallest `frame_max` AMQP 0-9-1 allows (`frame-min-size`).
pub const MIN_FRAME_MAX: u32 = 4096;

/// RabbitMQ's default `max_message_size` (128 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 128 * 1024 * 1024;

/// Settings of an AMQP connection, from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpConfig {
    /// Host name or address.
    pub host: String,
    /// Port (default 5672; 5671 for `amqps://`).
    pub port: u16,
    /// User (default `guest`).
    pub user: String,
    /// Password (default `guest`). Never logged.
    pub password: String,
    /// Virtual host: the URL path, percent-decoded (`/%2f` and an empty path are `/`).
    pub vhost: String,
    /// `exchange` (default `amq.topic`): where plain destinations are published and where
    /// topic subscriptions bind their queue.
    pub exchange: String,
    /// `prefetch=N`: overrides the `basic.qos` prefetch (default: the subscription's
    /// in-flight limit).
    pub prefetch: Option<u16>,
    /// `confirm_timeout` (default 30s): the longest a publish waits for its confirm when its
    /// deadline is longer.
    pub confirm_timeout: Duration,
    /// `heartbeat` (default 10s; `0s` disables).
    pub heartbeat: Duration,
    /// `connect_timeout` (default 5s).
    pub connect_timeout: Duration,
    /// `durable` (default `true`): group queues, and queues declared with `declare=true`,
    /// are durable.
    pub durable: bool,
    /// `queue_type` (`classic` or `quorum`; default: the broker's default, classic):
    /// `x-queue-type` of group queues and declared queues.
    pub queue_type: Option<String>,
    /// `dead_letter` (default none): the dead-letter destination of subscriptions that do
    /// not name one.
    pub dead_letter: Option<String>,
    /// `max_payload` (default 128 MiB, RabbitMQ's default `max_message_size`).
    pub max_payload: usize,
    /// `frame_max` (default 32 KiB, at least 4096): the largest frame proposed to the broker;
    /// the connection uses the smaller of this and the broker's limit.
    pub frame_max: u32,
    /// `reconnect_max` (default 5s): the longest pause between two reconnection attempts.
    pub reconnect_max: Duration,
    /// `dead_letter_exchange=X`: `x-dead-letter-exchange` of group queues and declared
    /// queues, so the broker dead-letters natively what is rejected without a dead-letter
    /// destination.
    pub dead_letter_exchange: Option<String>,
    /// Exchanges, queues and bindings declared on every (re)connection.
    pub topology: Topology,
    /// TLS (`amqps://`, or `tls=true` / a certificate option on `amqp://`), with these
    /// certificate files.
    pub tls: Option<TlsFiles>,
}

pub use polybridge_core::tls::TlsFiles;

/// What a connection declares on connecting and again after every reconnection.
/// Declarations are idempotent against identical existing topology; a conflicting one is an
/// error carrying the broker's PRECONDITION_FAILED text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// `declare_exchanges=NAME:TYPE,…` (TYPE `topic`, `direct`, `fanout` or `headers`;
    /// durable).
    pub exchanges: Vec<(String, String)>,
    /// `declare_queues=NAME,…` (durable per `durable`, with `queue_type` and
    /// `dead_letter_exchange`).
    pub queues: Vec<String>,
    /// `declare_bindings=QUEUE:EXCHANGE:KEY,…` (KEY may contain `:`; may be empty).
    pub bindings: Vec<(String, String, String)>,
}

impl Topology {
    /// Whether nothing is to be declared.
    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty() && self.queues.is_empty() && self.bindings.is_empty()
    }
}

fn list(url: &BrokerUrl, name: &str) -> Vec<String> {
    url.option(name)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn topology(url: &BrokerUrl) -> Result<Topology> {
    let mut t = Topology::default();
    for item in list(url, "declare_exchanges") {
        let (name, kind) = item.split_once(':').unwrap_or((item.as_str(), "topic"));
        if !matches!(kind, "topic" | "direct" | "fanout" | "headers") || name.is_empty() {
            return Err(Error::config(
                BROKER,
                format!("declare_exchanges item {item:?} in {url}: expected NAME:TYPE with TYPE topic, direct, fanout or headers"),
            ));
        }
        t.exchanges.push((name.to_owned(), kind.to_owned()));
    }
    t.queues = list(url, "declare_queues");
    for item in list(url, "declare_bindings") {
        let mut parts = item.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(q), Some(x), key) if !q.is_empty() && !x.is_empty() => {
                t.bindings.push((
                    q.to_owned(),
                    x.to_owned(),
                    key.unwrap_or_default().to_owned(),
                ));
            }
            _ => {
                return Err(Error::config(
                    BROKER,
                    format!("declare_bindings item {item:?} in {url}: expected QUEUE:EXCHANGE:KEY"),
                ))
            }
        }
    }
    Ok(t)
}

const OPTIONS: &[&str] = &[
    "exchange",
    "prefetch",
    "confirm_timeout",
    "heartbeat",
    "connect_timeout",
    "durable",
    "queue_type",
    "dead_letter",
    "max_payload",
    "frame_max",
    "reconnect_max",
    "dead_letter_exchange",
    "declare_exchanges",
    "declare_queues",
    "declare_bindings",
    "tls",
    "ca_file",
    "cert_file",
    "key_file",
];

impl AmqpConfig {
    /// Reads the config from an `amqp://` or `amqps://` URL.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        if !matches!(url.scheme(), "amqp" | "amqps") {
            return Err(Error::config(
                BROKER,
                format!("expected an amqp:// or amqps:// URL, got {url}"),
            ));
        }
        url.check_options(BROKER, OPTIONS)?;
        let host = url
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::config(BROKER, format!("no host in {url}")))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        let path = url.path();
        let vhost = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        let queue_type = url.option("queue_type").map(str::to_owned);
        if let Some(t) = &queue_type {
            if !matches!(t.as_str(), "classic" | "quorum") {
                return Err(Error::config(
                    BROKER,
                    format!("option queue_type={t:?} in {url}: expected classic or quorum"),
                ));
            }
        }
        let tls = TlsFiles::from_url(BROKER, url, &["amqps"])?;
        let default_port = if url.scheme() == "amqps" {
            DEFAULT_TLS_PORT
        } else {
            DEFAULT_PORT
        };
        let frame_max = url
            .parse_option(BROKER, "frame_max")?
            .unwrap_or(DEFAULT_FRAME_MAX);
        if frame_max < MIN_FRAME_MAX {
            return Err(Error::config(
                BROKER,
                format!("option frame_max={frame_max} in {url}: AMQP requires at least {MIN_FRAME_MAX} bytes"),
            ));
        }
        Ok(AmqpConfig {
            host,
            port: url.port().unwrap_or(default_port),
            user: url.username().unwrap_or_else(|| "guest".into()),
            password: url.password().unwrap_or_else(|| "guest".into()),
            vhost,
            exchange: url.option("exchange").unwrap_or("amq.topic").to_owned(),
            prefetch: url.parse_option(BROKER, "prefetch")?,
            confirm_timeout: url
                .duration_option(BROKER, "confirm_timeout")?
                .unwrap_or(Duration::from_secs(30)),
            heartbeat: url
                .duration_option(BROKER, "heartbeat")?
                .unwrap_or(Duration::from_secs(10)),
            connect_timeout: url
                .duration_option(BROKER, "connect_timeout")?
                .unwrap_or(Duration::from_secs(5)),
            durable: url.parse_option(BROKER, "durable")?.unwrap_or(true),
            queue_type,
            dead_letter: url.option("dead_letter").map(str::to_owned),
            max_payload: url
                .parse_option(BROKER, "max_payload")?
                .unwrap_or(DEFAULT_MAX_PAYLOAD),
            frame_max,
            reconnect_max: url
                .duration_option(BROKER, "reconnect_max")?
                .unwrap_or(Duration::from_secs(5)),
            dead_letter_exchange: url.option("dead_letter_exchange").map(str::to_owned),
            topology: topology(url)?,
            tls,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_options() {
        let c = AmqpConfig::from_url(&"amqp://127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            (c.port, c.vhost.as_str(), c.user.as_str()),
            (5672, "/", "guest")
        );
        assert_eq!(c.exchange, "amq.topic");
        let c = AmqpConfig::from_url(
            &"amqp://u:p@h:1234/%2f?exchange=ex&prefetch=5&queue_type=quorum"
                .parse()
                .unwrap(),
        )
        .unwrap();
        assert_eq!((c.port, c.vhost.as_str()), (1234, "/"));
        assert_eq!((c.exchange.as_str(), c.prefetch), ("ex", Some(5)));
        assert_eq!(c.queue_type.as_deref(), Some("quorum"));
        let c = AmqpConfig::from_url(&"amqp://h/prod".parse().unwrap()).unwrap();
        assert_eq!(c.vhost, "prod");
        let e = AmqpConfig::from_url(&"amqp://u:secret@h/?bogus=1".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus") && !e.contains("secret"), "{e}");
        assert!(AmqpConfig::from_url(&"nats://h".parse().unwrap()).is_err());
        let c = AmqpConfig::from_url(
            &"amqp://h/?declare_exchanges=dlx:fanout,ev&declare_queues=dead,work&declare_bindings=dead:dlx:,work:ev:a.%2A"
                .parse()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            c.topology.exchanges,
            [
                ("dlx".into(), "fanout".into()),
                ("ev".into(), "topic".into())
            ]
        );
        assert_eq!(c.topology.queues, ["dead", "work"]);
        assert_eq!(
            c.topology.bindings,
            [
                ("dead".into(), "dlx".into(), String::new()),
                ("work".into(), "ev".into(), "a.*".into())
            ]
        );
        assert!(
            AmqpConfig::from_url(&"amqp://h/?declare_exchanges=x:weird".parse().unwrap()).is_err()
        );
        assert!(
            AmqpConfig::from_url(&"amqp://h/?declare_bindings=onlyqueue".parse().unwrap()).is_err()
        );
    }

    #[test]
    fn tls_urls() {
        let c = AmqpConfig::from_url(&"amqps://h".parse().unwrap()).unwrap();
        assert_eq!(c.port, DEFAULT_TLS_PORT);
        assert_eq!(c.tls, Some(TlsFiles::default()));
        let c = AmqpConfig::from_url(&"amqps://h:5999/%2f?ca_file=/c".parse().unwrap()).unwrap();
        assert_eq!(c.port, 5999);
        assert_eq!(
            c.tls.and_then(|t| t.ca_file),
            Some(std::path::PathBuf::from("/c"))
        );
        for url in ["amqp://h?tls=true", "amqp://h?cert_file=/c&key_file=/k"] {
            let c = AmqpConfig::from_url(&url.parse().unwrap()).unwrap();
            assert!(c.tls.is_some(), "{url}");
            assert_eq!(c.port, DEFAULT_PORT, "{url}");
        }
        let c = AmqpConfig::from_url(&"amqp://h".parse().unwrap()).unwrap();
        assert!(c.tls.is_none());
        let e = AmqpConfig::from_url(&"amqps://u:secret@h?key_file=/k".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("go together") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn frame_max_option() {
        let c = AmqpConfig::from_url(&"amqp://h".parse().unwrap()).unwrap();
        assert_eq!(c.frame_max, DEFAULT_FRAME_MAX);
        let c = AmqpConfig::from_url(&"amqp://h/?frame_max=131072".parse().unwrap()).unwrap();
        assert_eq!(c.frame_max, 131_072);
        let c = AmqpConfig::from_url(&"amqp://h/?frame_max=4096".parse().unwrap()).unwrap();
        assert_eq!(c.frame_max, MIN_FRAME_MAX);
        let e = AmqpConfig::from_url(&"amqp://u:secret@h/?frame_max=4095".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("frame_max=4095") && !e.contains("secret"), "{e}");
        assert!(AmqpConfig::from_url(&"amqp://h/?frame_max=big".parse().unwrap()).is_err());
    }
}
