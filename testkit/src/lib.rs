//! Real brokers for tests, started as local processes. No Docker, no mocks.
//!
//! Each broker runs on free loopback ports with its own temporary data directory, is probed
//! with its own protocol until it answers, and can be stopped, killed, restarted (same
//! ports, same data) and paused for fault injection. Nothing is left behind: every broker
//! has a watchdog process that kills its process group, stops its `epmd` and removes its
//! directory as soon as the test process is gone — also when a test panics or the test
//! binary is killed.
//!
//! ```no_run
//! use polybridge_testkit::{shared, BrokerKind, Endpoint};
//! let redis = shared(BrokerKind::Redis).expect("redis for tests");
//! let url = redis.url(Endpoint::Redis).expect("redis endpoint");   // redis://127.0.0.1:PORT
//! ```
//!
//! - [`shared`]: one instance per broker kind per test binary, started on first use;
//!   tests share it with unique topic names. It cannot be restarted.
//! - [`private`]: a broker of the test's own, for fault injection.
//! - [`private_tls`]: a broker of the test's own with TLS listeners and certificates
//!   generated for it (a CA, server and client certificates: [`TlsFiles`]); clients need a
//!   certificate signed by the test CA (mutual TLS). Redis (`--tls-port`), Mosquitto (a
//!   second listener with `require_certificate`), NATS (`--tlsverify`: TLS only),
//!   RabbitMQ (`listeners.ssl`, `stomp.listeners.ssl`, `mqtt.listeners.ssl`), ActiveMQ
//!   (a `stomp+ssl` connector with `needClientAuth=true`) and Kafka (Tansu behind
//!   `socat`'s OpenSSL listener, since Tansu 0.6.0 cannot serve TLS itself: see
//!   [`BrokerProcess::start_tls`]). The checks every adapter's TLS test makes are shared:
//!   [`MutualTls`], built on [`TlsUrls`] ([`BrokerProcess::tls_urls`]), [`round_trip`]
//!   and [`assert_refused`].
//!
//! # Using running brokers instead
//! When `POLYBRIDGE_<X>_URL` is set, [`shared`] returns that URL and starts nothing (this is
//! how the suite runs against `docker compose up`); [`private`] then refuses, since an
//! external broker cannot be restarted by a test.
//!
//! | variable | broker, endpoint |
//! |---|---|
//! | `POLYBRIDGE_REDIS_URL` | Redis |
//! | `POLYBRIDGE_MQTT_URL` | Mosquitto (MQTT) |
//! | `POLYBRIDGE_NATS_URL` | NATS with JetStream |
//! | `POLYBRIDGE_AMQP_URL` | RabbitMQ (AMQP 0-9-1) |
//! | `POLYBRIDGE_RABBITMQ_STOMP_URL` | RabbitMQ STOMP plugin |
//! | `POLYBRIDGE_RABBITMQ_MQTT_URL` | RabbitMQ MQTT plugin |
//! | `POLYBRIDGE_STOMP_URL` | ActiveMQ (STOMP) |
//! | `POLYBRIDGE_KAFKA_URL` | Kafka protocol |
//!
//! `POLYBRIDGE_SKIP_BROKERS=activemq,kafka` (or `all`) opts brokers out: [`skip_reason`]
//! tells a test to skip. Otherwise a missing broker binary is an error naming
//! `scripts/install-brokers.sh`.
//!
//! # Where brokers keep their data
//! Each started broker's data directory is a new temporary directory under
//! `POLYBRIDGE_BROKER_DIR` when it is set (e.g. `/dev/shm`, a tmpfs: the brokers' syncs then
//! cost no disk I/O), else under the system's temporary directory ([`broker_dir`]).
//!
//! # Which binaries
//! Debian's `redis-server`, `mosquitto`, `nats-server` (run with `-js`), RabbitMQ's
//! `/usr/lib/rabbitmq/bin/rabbitmq-server` (with the STOMP and MQTT plugins), ActiveMQ's
//! `/usr/share/activemq/bin/activemq.jar` on `java`, and `tansu` (a Kafka-protocol broker;
//! override the path with `POLYBRIDGE_TANSU_BIN`). Tansu keeps data in memory only: a
//! restart empties it, so Kafka fault tests pause the broker instead. When `KAFKA_HOME`
//! names an Apache Kafka distribution (with `bin/kafka-server-start.sh`), a single-node
//! KRaft Kafka is started instead of Tansu ([`kafka_home`]).
//!
//! Not for production: ports, credentials (`guest`/`guest`) and settings are for tests.

mod brokers;
mod probe;
mod process;
mod server;
mod tls;
mod tls_checks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub use brokers::{kafka_home, BrokerProcess};
pub use process::{free_loopback_port, free_port};
pub use server::TestBroker;
pub use tls::{test_certificates, TlsFiles};
pub use tls_checks::{
    assert_refused, round_trip, with_options, MutualTls, MutualTlsChecked, TlsUrls, TLS_WAIT,
};

/// The brokers the harness can start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BrokerKind {
    /// `redis-server`.
    Redis,
    /// `mosquitto` (MQTT 3.1.1 and 5).
    Mosquitto,
    /// `nats-server -js`.
    Nats,
    /// RabbitMQ with the STOMP and MQTT plugins.
    RabbitMq,
    /// ActiveMQ (STOMP).
    ActiveMq,
    /// A Kafka-protocol broker (Tansu).
    Kafka,
}

impl BrokerKind {
    /// Every kind.
    pub const ALL: [BrokerKind; 6] = [
        BrokerKind::Redis,
        BrokerKind::Mosquitto,
        BrokerKind::Nats,
        BrokerKind::RabbitMq,
        BrokerKind::ActiveMq,
        BrokerKind::Kafka,
    ];

    /// Lower-case name, as used in `POLYBRIDGE_SKIP_BROKERS`.
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Redis => "redis",
            BrokerKind::Mosquitto => "mosquitto",
            BrokerKind::Nats => "nats",
            BrokerKind::RabbitMq => "rabbitmq",
            BrokerKind::ActiveMq => "activemq",
            BrokerKind::Kafka => "kafka",
        }
    }

    /// The endpoints this broker serves.
    pub fn endpoints(self) -> &'static [Endpoint] {
        match self {
            BrokerKind::Redis => &[Endpoint::Redis],
            BrokerKind::Mosquitto => &[Endpoint::Mqtt],
            BrokerKind::Nats => &[Endpoint::Nats],
            BrokerKind::RabbitMq => &[Endpoint::Amqp, Endpoint::Stomp, Endpoint::Mqtt],
            BrokerKind::ActiveMq => &[Endpoint::Stomp],
            BrokerKind::Kafka => &[Endpoint::Kafka],
        }
    }

    /// The environment variable naming an external broker for `endpoint`.
    pub fn env_var(self, endpoint: Endpoint) -> &'static str {
        match (self, endpoint) {
            (BrokerKind::Redis, _) => "POLYBRIDGE_REDIS_URL",
            (BrokerKind::Mosquitto, _) => "POLYBRIDGE_MQTT_URL",
            (BrokerKind::Nats, _) => "POLYBRIDGE_NATS_URL",
            (BrokerKind::RabbitMq, Endpoint::Stomp) => "POLYBRIDGE_RABBITMQ_STOMP_URL",
            (BrokerKind::RabbitMq, Endpoint::Mqtt) => "POLYBRIDGE_RABBITMQ_MQTT_URL",
            (BrokerKind::RabbitMq, _) => "POLYBRIDGE_AMQP_URL",
            (BrokerKind::ActiveMq, _) => "POLYBRIDGE_STOMP_URL",
            (BrokerKind::Kafka, _) => "POLYBRIDGE_KAFKA_URL",
        }
    }
}

/// A protocol endpoint of a broker (RabbitMQ serves three).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `redis://`
    Redis,
    /// `mqtt://`
    Mqtt,
    /// `nats://`
    Nats,
    /// `amqp://`
    Amqp,
    /// `stomp://`
    Stomp,
    /// `kafka://`
    Kafka,
}

/// What went wrong starting or controlling a broker.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The broker's program is not installed.
    #[error("{broker}: {program} is not installed; run `sudo bash scripts/install-brokers.sh` (or set POLYBRIDGE_SKIP_BROKERS={broker} to skip its tests)")]
    NotInstalled {
        /// Broker name.
        broker: &'static str,
        /// The missing program or file.
        program: String,
    },
    /// The broker did not become ready in time.
    #[error("{broker} did not answer on 127.0.0.1:{port} within {seconds} s; last lines of its log:\n{log}")]
    NotReady {
        /// Broker name.
        broker: &'static str,
        /// The port probed.
        port: u16,
        /// How long it was given.
        seconds: u64,
        /// The tail of its log.
        log: String,
    },
    /// An operation that needs a broker the harness started.
    #[error("{broker}: {operation} needs a broker started by the harness, but {env} points at an external one")]
    External {
        /// Broker name.
        broker: &'static str,
        /// The operation.
        operation: &'static str,
        /// The variable that was set.
        env: &'static str,
    },
    /// An I/O failure (spawning, files, ports).
    #[error("{broker}: {what}: {source}")]
    Io {
        /// Broker name.
        broker: &'static str,
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// `url` with the query `options` (`a=1&b=2`) appended.
pub fn url_with(url: &str, options: &str) -> String {
    if options.is_empty() {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&{options}")
    } else {
        format!("{url}?{options}")
    }
}

/// The directory under which each started broker gets its data directory:
/// `POLYBRIDGE_BROKER_DIR` when it is set, else [`std::env::temp_dir`].
pub fn broker_dir() -> std::path::PathBuf {
    std::env::var_os("POLYBRIDGE_BROKER_DIR")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Why tests of `kind` should be skipped, if `POLYBRIDGE_SKIP_BROKERS` opts it out.
pub fn skip_reason(kind: BrokerKind) -> Option<String> {
    let list = std::env::var("POLYBRIDGE_SKIP_BROKERS").ok()?;
    list.split(',')
        .map(str::trim)
        .any(|s| s == "all" || s == kind.name())
        .then(|| format!("{} skipped: POLYBRIDGE_SKIP_BROKERS={list}", kind.name()))
}

/// The Python interpreter that has the native clients the interoperability tests drive
/// (pika, paho-mqtt, stomp.py, kafka-python, nats-py, redis): `POLYBRIDGE_PYTHON`, else the
/// virtualenv `scripts/install-brokers.sh` makes at `/opt/polybridge-py`.
pub fn python() -> Result<std::path::PathBuf, HarnessError> {
    let path = std::env::var_os("POLYBRIDGE_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/opt/polybridge-py/bin/python"));
    if path.exists() {
        Ok(path)
    } else {
        Err(HarnessError::NotInstalled {
            broker: "python clients",
            program: path.display().to_string(),
        })
    }
}

/// A broker shared by the tests of one binary: URLs only, it cannot be restarted.
#[derive(Debug)]
pub struct SharedBroker {
    kind: BrokerKind,
    urls: HashMap<Endpoint, String>,
    /// Keeps a harness-started broker alive (the watchdog cleans up at process exit).
    _process: Option<Mutex<BrokerProcess>>,
}

impl SharedBroker {
    /// The broker kind.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// The URL of `endpoint`, if this broker serves it.
    pub fn url(&self, endpoint: Endpoint) -> Option<String> {
        self.urls.get(&endpoint).cloned()
    }

    /// Whether the broker was given by `POLYBRIDGE_<X>_URL` rather than started here.
    pub fn is_external(&self) -> bool {
        self._process.is_none()
    }
}

/// The shared broker of `kind` for this test binary: the external one from
/// `POLYBRIDGE_<X>_URL`, or one started on first use.
pub fn shared(kind: BrokerKind) -> Result<Arc<SharedBroker>, HarnessError> {
    type Slot = Arc<OnceLock<Arc<SharedBroker>>>;
    static SHARED: OnceLock<Mutex<HashMap<BrokerKind, Slot>>> = OnceLock::new();
    let slot: Slot = {
        let mut map = SHARED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(kind).or_default().clone()
    };
    if let Some(b) = slot.get() {
        return Ok(b.clone());
    }
    // Serialise the start per kind so two tests do not start two brokers.
    static STARTING: Mutex<()> = Mutex::new(());
    let _guard = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = slot.get() {
        return Ok(b.clone());
    }
    let external: HashMap<Endpoint, String> = kind
        .endpoints()
        .iter()
        .filter_map(|e| std::env::var(kind.env_var(*e)).ok().map(|u| (*e, u)))
        .collect();
    let broker = if !external.is_empty() {
        SharedBroker {
            kind,
            urls: external,
            _process: None,
        }
    } else {
        let process = BrokerProcess::start(kind)?;
        SharedBroker {
            kind,
            urls: kind
                .endpoints()
                .iter()
                .filter_map(|e| process.url(*e).map(|u| (*e, u)))
                .collect(),
            _process: Some(Mutex::new(process)),
        }
    };
    let broker = Arc::new(broker);
    let _ = slot.set(broker.clone());
    Ok(broker)
}

/// A broker of the test's own, for fault injection. Refused when an external broker is
/// configured for `kind`.
pub fn private(kind: BrokerKind) -> Result<BrokerProcess, HarnessError> {
    for e in kind.endpoints() {
        if std::env::var(kind.env_var(*e)).is_ok() {
            return Err(HarnessError::External {
                broker: kind.name(),
                operation: "a private broker",
                env: kind.env_var(*e),
            });
        }
    }
    BrokerProcess::start(kind)
}

/// A broker of the test's own with TLS listeners and certificates generated for it
/// ([`BrokerProcess::start_tls`]: mutual TLS where the broker supports it). Refused when an
/// external broker is configured for `kind`, and for Apache Kafka from `KAFKA_HOME` (no
/// TLS variant).
pub fn private_tls(kind: BrokerKind) -> Result<BrokerProcess, HarnessError> {
    for e in kind.endpoints() {
        if std::env::var(kind.env_var(*e)).is_ok() {
            return Err(HarnessError::External {
                broker: kind.name(),
                operation: "a private TLS broker",
                env: kind.env_var(*e),
            });
        }
    }
    BrokerProcess::start_tls(kind)
}

/// Kafka only: a Tansu of the test's own that requires SASL authentication
/// ([`BrokerProcess::start_sasl`]: no user exists, every login is refused). Refused when
/// an external Kafka is configured.
pub fn private_sasl(kind: BrokerKind) -> Result<BrokerProcess, HarnessError> {
    for e in kind.endpoints() {
        if std::env::var(kind.env_var(*e)).is_ok() {
            return Err(HarnessError::External {
                broker: kind.name(),
                operation: "a private SASL broker",
                env: kind.env_var(*e),
            });
        }
    }
    BrokerProcess::start_sasl(kind)
}
