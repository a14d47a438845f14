//! `amqp://[user:password@]host[:port][/vhost][?option=value&…]`
//!
//! See the crate documentation for every option.

use std::time::Duration;

use polybridge_core::{BrokerUrl, Error, Result};

use crate::BROKER;

/// The AMQP port when the URL names none.
pub const DEFAULT_PORT: u16 = 5672;

/// RabbitMQ's default `max_message_size` (128 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 128 * 1024 * 1024;

/// Settings of an AMQP connection, from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpConfig {
    /// Host name or address.
    pub host: String,
    /// Port (default 5672).
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
    /// `reconnect_max` (default 5s): the longest pause between two reconnection attempts.
    pub reconnect_max: Duration,
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
    "reconnect_max",
];

impl AmqpConfig {
    /// Reads the config from an `amqp://` URL.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        if url.scheme() != "amqp" {
            return Err(Error::config(
                BROKER,
                format!(
                    "expected an amqp:// URL, got {url} (amqps:// is not supported by this build)"
                ),
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
        Ok(AmqpConfig {
            host,
            port: url.port().unwrap_or(DEFAULT_PORT),
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
            reconnect_max: url
                .duration_option(BROKER, "reconnect_max")?
                .unwrap_or(Duration::from_secs(5)),
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
    }
}
