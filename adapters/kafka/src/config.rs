//! `kafka://[user:password@]host:port[,host:port…][?option=value&…]`, `kafkas://…` for TLS.
//!
//! See the crate documentation for every option.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use polybridge_core::{BrokerUrl, Error, Result};

use crate::BROKER;

/// The port Kafka listens on unless the URL says otherwise.
pub const DEFAULT_PORT: u16 = 9092;

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Bytes of `message.max.bytes` kept for the key, headers and record overhead: the payload
/// limit is `message.max.bytes` minus this.
pub const RECORD_RESERVE: usize = 16 * 1024;

/// The producer's default `batch_messages` (librdkafka `batch.num.messages`; librdkafka's
/// own default is 10 000). A publisher with a bounded number of publishes in flight (a
/// route's `max_in_flight`, 256 by default) rarely fills a batch of 10 000 records or
/// `batch.size` bytes, so every batch waited the whole `linger` and the in-flight window
/// sat idle meanwhile; with half the default window per batch, one batch is sent while the
/// next fills (NATS(JetStream)→Kafka moved 2.5× more at 256 B and about 1.2× more at 4 KiB
/// on Tansu, its medians in alternated runs: docs/benchmarks, "The Kafka producer's
/// batches").
pub const DEFAULT_BATCH_MESSAGES: usize = 128;

/// Where a new consumer group starts when the subscription keeps the default
/// [`StartPosition::Latest`](polybridge_core::StartPosition::Latest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultStart {
    /// New messages only.
    Latest,
    /// Everything the partition still holds.
    Earliest,
}

/// The SASL mechanism a URL with a user and password authenticates with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    /// `SCRAM-SHA-512` (the default): the password never crosses the wire.
    ScramSha512,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `PLAIN`: the password is sent as is, so use it with `kafkas://` only.
    Plain,
}

impl SaslMechanism {
    /// The librdkafka `sasl.mechanisms` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

/// librdkafka options polybridge sets itself: passing them through would break the
/// at-least-once contract or the connection, so they are refused.
const RESERVED_RDKAFKA_KEYS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
];

/// Settings of a Kafka connection, from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port` of every bootstrap server in the URL.
    pub bootstrap: Vec<String>,
    /// SASL user name (`kafka://user:password@…`), with `password`.
    pub user: Option<String>,
    /// SASL password for `user`.
    pub password: Option<String>,
    /// `sasl_mechanism` (default `SCRAM-SHA-512`): how `user` and `password` authenticate.
    pub sasl_mechanism: SaslMechanism,
    /// TLS to the brokers (the `kafkas://` scheme).
    pub tls: bool,
    /// `kafkas://` only: PEM file of the CA certificates to trust instead of the system's
    /// (`ca_file`).
    pub ca_file: Option<PathBuf>,
    /// `kafkas://` only: client certificate and private key (PEM) for mutual TLS
    /// (`cert_file`, `key_file`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `acks`: `all` (default), `1` or `0`. Anything but `all` turns idempotence off.
    pub acks: String,
    /// `idempotence` (default `true`): the idempotent producer, so a retried produce is
    /// stored once per partition.
    pub idempotence: bool,
    /// `compression`: `none` (default), `gzip`, `snappy`, `lz4` or `zstd`.
    pub compression: String,
    /// `linger` (librdkafka `linger.ms`, default `5ms`): how long the producer waits to batch.
    pub linger: Duration,
    /// `batch_size` (librdkafka `batch.size`, bytes), if set.
    pub batch_size: Option<usize>,
    /// `batch_messages` (librdkafka `batch.num.messages`, default [`DEFAULT_BATCH_MESSAGES`]):
    /// a batch with this many records is sent without waiting for `linger`.
    pub batch_messages: usize,
    /// `fetch_wait` (librdkafka `fetch.wait.max.ms`, default `10ms`): how long the broker
    /// may hold a consumer's fetch when it has no new data. Tansu holds it that long even
    /// when data arrives meanwhile, so this bounds the delivery latency there (librdkafka's
    /// own default, 500 ms, gave a p50 of ~130 ms); Apache Kafka answers as soon as data
    /// arrives, and a short wait only costs more idle fetch requests.
    pub fetch_wait: Duration,
    /// `partition`: every publish goes to this partition instead of the partitioner's pick.
    pub partition: Option<i32>,
    /// `start`: where a new group starts when the subscription keeps the default `Latest`.
    pub start: DefaultStart,
    /// `session_timeout` (librdkafka `session.timeout.ms`, default `10s`).
    pub session_timeout: Duration,
    /// `heartbeat_interval` (librdkafka `heartbeat.interval.ms`, default `1s`).
    pub heartbeat_interval: Duration,
    /// `commit_interval` (default `500ms`): how often the acknowledged watermark is committed
    /// while it moves (it is always committed on revoke and close).
    pub commit_interval: Duration,
    /// `close_timeout` (default `10s`): how long closing a subscription may take before its
    /// consumer is abandoned.
    pub close_timeout: Duration,
    /// `dead_letter`: the dead-letter topic for subscriptions that name none; `{topic}` is
    /// replaced with the message's topic. Default `{topic}.dlq`.
    pub dead_letter: String,
    /// `auto_create` (default `true`): whether subscribing may auto-create a missing topic
    /// (when the broker allows it). With `false` a missing topic is an error.
    pub auto_create: bool,
    /// `client_id` (default `polybridge`).
    pub client_id: String,
    /// `rdkafka.<key>=<value>`: librdkafka settings passed through to the producer and the
    /// consumers, validated when the connection is made.
    pub rdkafka: BTreeMap<String, String>,
}

const OPTIONS: &[&str] = &[
    "sasl_mechanism",
    "ca_file",
    "cert_file",
    "key_file",
    "acks",
    "idempotence",
    "compression",
    "linger",
    "batch_size",
    "batch_messages",
    "fetch_wait",
    "partition",
    "start",
    "session_timeout",
    "heartbeat_interval",
    "commit_interval",
    "close_timeout",
    "dead_letter",
    "auto_create",
    "client_id",
    "rdkafka.<librdkafka key>",
];

impl KafkaConfig {
    /// Reads the config from a `kafka://` or `kafkas://` URL.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        let tls = match url.scheme() {
            "kafka" => false,
            "kafkas" => true,
            _ => {
                return Err(Error::config(
                    BROKER,
                    format!("expected a kafka:// or kafkas:// URL, got {url}"),
                ))
            }
        };
        let mut rdkafka = BTreeMap::new();
        for (name, value) in url.options() {
            if let Some(key) = name.strip_prefix("rdkafka.") {
                if RESERVED_RDKAFKA_KEYS.contains(&key) {
                    return Err(Error::config(
                        BROKER,
                        format!("option {name} in {url}: polybridge sets {key} itself (at-least-once depends on it)"),
                    ));
                }
                if key.is_empty() {
                    return Err(Error::config(
                        BROKER,
                        format!("option {name:?} in {url} names no librdkafka key"),
                    ));
                }
                rdkafka.insert(key.to_owned(), value.clone());
            } else if !OPTIONS.contains(&name.as_str()) {
                return Err(Error::config(
                    BROKER,
                    format!(
                        "unknown option {name:?} in {url}; known options: {}",
                        OPTIONS.join(", ")
                    ),
                ));
            }
        }
        let bootstrap: Vec<String> = url
            .hosts(DEFAULT_PORT)
            .into_iter()
            .filter(|(h, _)| !h.is_empty())
            .map(|(h, p)| format!("{h}:{p}"))
            .collect();
        if bootstrap.is_empty() {
            return Err(Error::config(BROKER, format!("no broker in {url}")));
        }
        let acks = match url.option("acks").unwrap_or("all") {
            "all" | "-1" => "all".to_owned(),
            a @ ("0" | "1") => a.to_owned(),
            other => {
                return Err(Error::config(
                    BROKER,
                    format!("option acks={other:?} in {url}: use all, 1 or 0"),
                ))
            }
        };
        let idempotence = url.parse_option::<bool>(BROKER, "idempotence")?;
        if idempotence == Some(true) && acks != "all" {
            return Err(Error::config(
                BROKER,
                format!("idempotence=true in {url} needs acks=all"),
            ));
        }
        let idempotence = idempotence.unwrap_or(acks == "all");
        let compression = match url.option("compression").unwrap_or("none") {
            c @ ("none" | "gzip" | "snappy" | "lz4" | "zstd") => c.to_owned(),
            other => {
                return Err(Error::config(
                    BROKER,
                    format!(
                        "option compression={other:?} in {url}: use none, gzip, snappy, lz4 or zstd"
                    ),
                ))
            }
        };
        let partition = url.parse_option::<i32>(BROKER, "partition")?;
        if matches!(partition, Some(p) if p < 0) {
            return Err(Error::config(
                BROKER,
                format!("option partition in {url} must be 0 or more"),
            ));
        }
        let start = match url.option("start").unwrap_or("latest") {
            "latest" => DefaultStart::Latest,
            "earliest" => DefaultStart::Earliest,
            other => {
                return Err(Error::config(
                    BROKER,
                    format!("option start={other:?} in {url}: use earliest or latest"),
                ))
            }
        };
        let session_timeout = url
            .duration_option(BROKER, "session_timeout")?
            .unwrap_or(Duration::from_secs(10));
        let heartbeat_interval = url
            .duration_option(BROKER, "heartbeat_interval")?
            .unwrap_or(Duration::from_secs(1));
        if heartbeat_interval >= session_timeout {
            return Err(Error::config(
                BROKER,
                format!("heartbeat_interval in {url} must be shorter than session_timeout"),
            ));
        }
        let dead_letter = url
            .option("dead_letter")
            .unwrap_or("{topic}.dlq")
            .to_owned();
        if dead_letter.is_empty() {
            return Err(Error::config(
                BROKER,
                format!("option dead_letter in {url} is empty"),
            ));
        }
        let (user, password) = (url.username(), url.password());
        if user.is_some() != password.is_some() {
            return Err(Error::config(
                BROKER,
                format!("SASL in {url} needs both a user name and a password (user:password@host)"),
            ));
        }
        let sasl_mechanism = match url.option("sasl_mechanism") {
            None => SaslMechanism::ScramSha512,
            Some(m) if user.is_none() => {
                return Err(Error::config(
                    BROKER,
                    format!("option sasl_mechanism={m:?} in {url} needs a user and password (user:password@host)"),
                ))
            }
            Some(m) => match m.to_ascii_uppercase().as_str() {
                "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
                "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
                "PLAIN" => SaslMechanism::Plain,
                _ => {
                    return Err(Error::config(
                        BROKER,
                        format!("option sasl_mechanism={m:?} in {url}: use SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN"),
                    ))
                }
            },
        };
        let batch_messages = url
            .parse_option::<usize>(BROKER, "batch_messages")?
            .unwrap_or(DEFAULT_BATCH_MESSAGES);
        if !(1..=1_000_000).contains(&batch_messages) {
            return Err(Error::config(
                BROKER,
                format!("option batch_messages={batch_messages} in {url}: use 1 to 1000000"),
            ));
        }
        let ca_file = url.option("ca_file").map(PathBuf::from);
        let client_cert = match (url.option("cert_file"), url.option("key_file")) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            _ => {
                return Err(Error::config(
                    BROKER,
                    format!("options cert_file and key_file in {url} go together"),
                ))
            }
        };
        if !tls && (ca_file.is_some() || client_cert.is_some()) {
            return Err(Error::config(
                BROKER,
                format!("options ca_file, cert_file and key_file in {url} need a kafkas:// URL"),
            ));
        }
        Ok(KafkaConfig {
            bootstrap,
            user,
            password,
            sasl_mechanism,
            tls,
            ca_file,
            client_cert,
            acks,
            idempotence,
            compression,
            linger: url
                .duration_option(BROKER, "linger")?
                .unwrap_or(Duration::from_millis(5)),
            batch_size: url.parse_option::<usize>(BROKER, "batch_size")?,
            batch_messages,
            fetch_wait: url
                .duration_option(BROKER, "fetch_wait")?
                .unwrap_or(Duration::from_millis(10)),
            partition,
            start,
            session_timeout,
            heartbeat_interval,
            commit_interval: url
                .duration_option(BROKER, "commit_interval")?
                .unwrap_or(Duration::from_millis(500))
                .max(Duration::from_millis(10)),
            close_timeout: url
                .duration_option(BROKER, "close_timeout")?
                .unwrap_or(Duration::from_secs(10)),
            dead_letter,
            auto_create: url
                .parse_option::<bool>(BROKER, "auto_create")?
                .unwrap_or(true),
            client_id: url.option("client_id").unwrap_or("polybridge").to_owned(),
            rdkafka,
        })
    }

    /// `message.max.bytes` as configured (passthrough) or librdkafka's default.
    pub fn message_max_bytes(&self) -> usize {
        self.rdkafka
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
    }

    /// The largest payload `publish` accepts.
    pub fn max_payload(&self) -> usize {
        self.message_max_bytes().saturating_sub(RECORD_RESERVE)
    }

    /// The dead-letter topic for a message consumed from `topic`.
    pub fn dead_letter_for(&self, topic: &str) -> String {
        self.dead_letter.replace("{topic}", topic)
    }

    /// Settings shared by producer and consumers.
    pub(crate) fn common(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap.join(","))
            .set("client.id", &self.client_id);
        let sasl = self.user.is_some() && self.password.is_some();
        c.set(
            "security.protocol",
            match (self.tls, sasl) {
                (false, false) => "plaintext",
                (true, false) => "ssl",
                (false, true) => "sasl_plaintext",
                (true, true) => "sasl_ssl",
            },
        );
        if let Some(ca) = &self.ca_file {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        if let Some((cert, key)) = &self.client_cert {
            c.set("ssl.certificate.location", cert.display().to_string())
                .set("ssl.key.location", key.display().to_string());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            c.set("sasl.mechanisms", self.sasl_mechanism.as_str())
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        for (k, v) in &self.rdkafka {
            c.set(k, v);
        }
        c
    }

    /// The producer's librdkafka settings (the benchmark gives its raw producer the same).
    pub fn producer(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("acks", &self.acks)
            .set("enable.idempotence", self.idempotence.to_string())
            .set("compression.type", &self.compression)
            .set("linger.ms", self.linger.as_millis().to_string());
        if let Some(b) = self.batch_size {
            c.set("batch.size", b.to_string());
        }
        c.set("batch.num.messages", self.batch_messages.to_string());
        // Passthrough settings win over polybridge's defaults, except the reserved ones.
        for (k, v) in self.common().config_map() {
            c.set(k, v);
        }
        c
    }

    /// A consumer's librdkafka settings for `group` (the benchmark gives its raw consumer
    /// the same).
    pub fn consumer(&self, group: &str) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set(
            "session.timeout.ms",
            self.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            self.heartbeat_interval.as_millis().to_string(),
        )
        .set("allow.auto.create.topics", self.auto_create.to_string())
        // Every partition is assigned at an explicit offset; this only applies when that
        // offset no longer exists (retention, a broker that lost its data): re-read what
        // is there rather than skip to the end.
        .set("auto.offset.reset", "earliest")
        // librdkafka's prefetch queue, per partition: what a Kafka subscription holds in
        // memory beyond its in-flight window, also while its sink is down. Fetching stops
        // at 8 MB or 20 000 records (librdkafka's defaults: 64 MB, 100 000); a full queue is
        // looked at again after 10 ms (librdkafka's default: 1 s, with which a 16 MB queue
        // moved 9k msg/s of 4 KiB on Kafka→Redis streams). 8 MB with 10 ms moved 40.8k msg/s
        // where 64 MB with 1 s moved 26.2k, and kept the bridge under 51 MiB through a 60 s
        // sink outage where 64 MB reached 123 MiB (docs/benchmarks, "Kafka source outage
        // memory with 4 KiB records"). `rdkafka.<setting>` in the URL overrides each one.
        .set("queued.max.messages.kbytes", "8192")
        .set("queued.min.messages", "20000")
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.wait.max.ms", self.fetch_wait.as_millis().to_string())
        .set("topic.metadata.refresh.interval.ms", "10000");
        for (k, v) in self.common().config_map() {
            c.set(k, v);
        }
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        c
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(url: &str) -> Result<KafkaConfig> {
        KafkaConfig::from_url(&url.parse().unwrap())
    }

    #[test]
    fn reads_hosts_and_options() {
        let c = config("kafka://h1:9093,h2?acks=all&linger=20ms&compression=lz4&start=earliest&rdkafka.socket.timeout.ms=3000&partition=2").unwrap();
        assert_eq!(c.bootstrap, ["h1:9093", "h2:9092"]);
        assert_eq!(c.linger, Duration::from_millis(20));
        assert_eq!(c.fetch_wait, Duration::from_millis(10));
        assert_eq!(c.compression, "lz4");
        assert_eq!(c.start, DefaultStart::Earliest);
        assert_eq!(c.partition, Some(2));
        assert!(c.idempotence);
        assert_eq!(
            c.rdkafka.get("socket.timeout.ms").map(String::as_str),
            Some("3000")
        );
        assert_eq!(c.dead_letter_for("orders"), "orders.dlq");
        let c = config("kafka://h?acks=1").unwrap();
        assert!(!c.idempotence);
        assert_eq!(c.max_payload(), DEFAULT_MESSAGE_MAX_BYTES - RECORD_RESERVE);
    }

    /// One librdkafka setting of `c`, owned, for comparing with `assert_eq!`.
    fn get(c: &rdkafka::ClientConfig, key: &str) -> Option<String> {
        c.get(key).map(str::to_owned)
    }

    #[test]
    fn a_producer_batch_goes_out_at_128_records_unless_the_url_says_otherwise() {
        let default = config("kafka://h").unwrap().producer();
        assert_eq!(get(&default, "batch.num.messages").as_deref(), Some("128"));
        assert_eq!(get(&default, "linger.ms").as_deref(), Some("5"));
        let set = config("kafka://h?batch_messages=1000").unwrap().producer();
        assert_eq!(get(&set, "batch.num.messages").as_deref(), Some("1000"));
        let passthrough = config("kafka://h?rdkafka.batch.num.messages=10000")
            .unwrap()
            .producer();
        assert_eq!(
            get(&passthrough, "batch.num.messages").as_deref(),
            Some("10000")
        );
        for bad in ["0", "1000001", "many"] {
            let e = config(&format!("kafka://h?batch_messages={bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("batch_messages"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_consumer_prefetch_is_bounded_and_the_url_can_raise_it() {
        let bounded = config("kafka://h").unwrap().consumer("g");
        assert_eq!(
            get(&bounded, "queued.max.messages.kbytes").as_deref(),
            Some("8192")
        );
        assert_eq!(
            get(&bounded, "queued.min.messages").as_deref(),
            Some("20000")
        );
        assert_eq!(
            get(&bounded, "fetch.queue.backoff.ms").as_deref(),
            Some("10")
        );
        let raised = config("kafka://h?rdkafka.queued.max.messages.kbytes=65536")
            .unwrap()
            .consumer("g");
        assert_eq!(
            get(&raised, "queued.max.messages.kbytes").as_deref(),
            Some("65536")
        );
    }

    #[test]
    fn maps_tls_and_sasl_to_librdkafka() {
        let plain = config("kafka://h").unwrap().common();
        assert_eq!(
            get(&plain, "security.protocol").as_deref(),
            Some("plaintext")
        );
        assert_eq!(get(&plain, "sasl.mechanisms"), None);

        let sasl = config("kafka://alice:s3cret@h").unwrap();
        assert_eq!(sasl.sasl_mechanism, SaslMechanism::ScramSha512);
        let c = sasl.common();
        assert_eq!(
            get(&c, "security.protocol").as_deref(),
            Some("sasl_plaintext")
        );
        assert_eq!(get(&c, "sasl.mechanisms").as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(get(&c, "sasl.username").as_deref(), Some("alice"));
        assert_eq!(get(&c, "sasl.password").as_deref(), Some("s3cret"));

        let tls =
            config("kafkas://h:9093?ca_file=/ca.pem&cert_file=/c.pem&key_file=/k.pem").unwrap();
        assert_eq!(tls.bootstrap, ["h:9093"]);
        let c = tls.common();
        assert_eq!(get(&c, "security.protocol").as_deref(), Some("ssl"));
        assert_eq!(get(&c, "ssl.ca.location").as_deref(), Some("/ca.pem"));
        assert_eq!(
            get(&c, "ssl.certificate.location").as_deref(),
            Some("/c.pem")
        );
        assert_eq!(get(&c, "ssl.key.location").as_deref(), Some("/k.pem"));

        let c = config("kafkas://bob:pw@h?sasl_mechanism=scram-sha-256")
            .unwrap()
            .common();
        assert_eq!(get(&c, "security.protocol").as_deref(), Some("sasl_ssl"));
        assert_eq!(get(&c, "sasl.mechanisms").as_deref(), Some("SCRAM-SHA-256"));
        assert_eq!(get(&c, "ssl.ca.location"), None);
    }

    #[test]
    fn refuses_bad_options_without_the_password() {
        for (url, expected) in [
            ("kafka://u:pw@h?acks=most", "use all, 1 or 0"),
            ("kafka://u:pw@h?acks=1&idempotence=true", "needs acks=all"),
            ("kafka://u:pw@h?compression=brotli", "compression"),
            ("kafka://u:pw@h?start=middle", "use earliest or latest"),
            ("kafka://u:pw@h?linger=soon", "invalid duration"),
            ("kafka://u:pw@h?lingr=5ms", "unknown option \"lingr\""),
            (
                "kafka://u:pw@h?rdkafka.enable.auto.commit=true",
                "sets enable.auto.commit itself",
            ),
            (
                "kafka://u:pw@h?session_timeout=1s&heartbeat_interval=2s",
                "shorter than",
            ),
            ("nats://u:pw@h", "expected a kafka://"),
            ("kafka://u:pw@h?sasl_mechanism=GSSAPI", "use SCRAM-SHA-512"),
            (
                "kafka://h?sasl_mechanism=PLAIN",
                "needs a user and password",
            ),
            ("kafka://u@h", "needs both a user name and a password"),
            ("kafka://u:pw@h?ca_file=/ca.pem", "need a kafkas:// URL"),
            ("kafkas://u:pw@h?cert_file=/c.pem", "go together"),
        ] {
            let e = config(url).unwrap_err().to_string();
            assert!(e.contains(expected), "{url}: {e}");
            assert!(!e.contains("pw@"), "{url}: {e}");
        }
    }
}
