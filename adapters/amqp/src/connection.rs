//! The one AMQP connection of a broker handle, its confirmed publishing channel, and
//! reconnection with backoff.
//!
//! The connection and the publishing channel are read without waiting on the hot path (a
//! read lock held for an `Arc` clone); only a broken connection takes the reconnect lock,
//! so one caller reconnects while the others wait for it or fail fast during the backoff.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::ExchangeKind;
use lapin::{Channel, Connection, ConnectionProperties};
use polybridge_core::{Error, Result};

use crate::config::AmqpConfig;
use crate::BROKER;

/// Connection state shared by publishers and subscriptions.
pub(crate) struct Link {
    pub(crate) config: AmqpConfig,
    /// The URL, password redacted.
    pub(crate) endpoint: String,
    state: RwLock<State>,
    reconnect: tokio::sync::Mutex<Backoff>,
    closed: AtomicBool,
}

#[derive(Default)]
struct State {
    connection: Option<Arc<Connection>>,
    publish: Option<Channel>,
}

struct Backoff {
    last_failure: Option<(Instant, Error)>,
    pause: Duration,
}

const FIRST_PAUSE: Duration = Duration::from_millis(100);

impl Link {
    /// Connects once; the error of a failed first connection is returned as is.
    pub(crate) async fn connect(config: AmqpConfig, endpoint: String) -> Result<Arc<Link>> {
        let link = Arc::new(Link {
            config,
            endpoint,
            state: RwLock::new(State::default()),
            reconnect: tokio::sync::Mutex::new(Backoff {
                last_failure: None,
                pause: FIRST_PAUSE,
            }),
            closed: AtomicBool::new(false),
        });
        let connection = Arc::new(link.open().await?);
        link.write_state().connection = Some(connection);
        Ok(link)
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn uri(&self) -> AMQPUri {
        let c = &self.config;
        AMQPUri {
            scheme: if c.tls.is_some() {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: c.user.clone(),
                    password: c.password.clone(),
                },
                host: c.host.clone(),
                port: c.port,
            },
            vhost: c.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: Some(u16::try_from(c.heartbeat.as_secs()).unwrap_or(u16::MAX)),
                connection_timeout: Some(
                    u64::try_from(c.connect_timeout.as_millis()).unwrap_or(u64::MAX),
                ),
                frame_max: Some(c.frame_max),
                ..AMQPQueryString::default()
            },
        }
    }

    /// Opens a new connection.
    // The TLS connector closure returns lapin's `HandshakeResult`, a large error type.
    #[allow(clippy::result_large_err)]
    async fn open(&self) -> Result<Connection> {
        let properties = ConnectionProperties::default()
            .with_connection_name("polybridge".into())
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio);
        let timeout = self.config.connect_timeout;
        let connect = async {
            match &self.config.tls {
                None => Connection::connect_uri(self.uri(), properties).await,
                Some(files) => {
                    let connector = tcp_stream::RustlsConnector::from(Arc::new(
                        polybridge_core::tls::client_config(
                            crate::BROKER,
                            files,
                            polybridge_core::tls::DefaultRoots::SystemUnlessCaFile,
                        )?,
                    ));
                    let (host, port) = (self.config.host.clone(), self.config.port);
                    Connection::connector(
                        self.uri(),
                        Box::new(move |_| crate::tls::connect(&host, port, timeout, &connector)),
                        properties,
                    )
                    .await
                }
            }
            .map_err(|e| self.connect_error(e))
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(c)) => {
                tracing::info!(broker = BROKER, endpoint = %self.endpoint, "connected");
                if let Err(e) = self.declare_topology(&c).await {
                    let _ = c
                        .close(200, "polybridge: topology declaration failed")
                        .await;
                    return Err(e);
                }
                Ok(c)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Connection {
                broker: BROKER,
                endpoint: self.endpoint.clone(),
                reason: format!("no AMQP handshake within {timeout:?}"),
                source: None,
            }),
        }
    }

    /// Declares the URL's exchanges, queues and bindings (again after every reconnection).
    async fn declare_topology(&self, connection: &Connection) -> Result<()> {
        let topology = &self.config.topology;
        if topology.is_empty() {
            return Ok(());
        }
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| lapin_error(e, "the topology channel"))?;
        for (name, kind) in &topology.exchanges {
            let kind = match kind.as_str() {
                "topic" => ExchangeKind::Topic,
                "fanout" => ExchangeKind::Fanout,
                "headers" => ExchangeKind::Headers,
                _ => ExchangeKind::Direct,
            };
            channel
                .exchange_declare(
                    name,
                    kind,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| lapin_error(e, &format!("exchange {name:?}")))?;
        }
        for name in &topology.queues {
            channel
                .queue_declare(
                    name,
                    QueueDeclareOptions {
                        durable: self.config.durable,
                        ..QueueDeclareOptions::default()
                    },
                    queue_arguments(&self.config),
                )
                .await
                .map_err(|e| lapin_error(e, &format!("queue {name:?}")))?;
        }
        for (queue, exchange, key) in &topology.bindings {
            channel
                .queue_bind(
                    queue,
                    exchange,
                    key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    lapin_error(
                        e,
                        &format!("binding of queue {queue:?} to exchange {exchange:?}"),
                    )
                })?;
        }
        let _ = channel.close(200, "polybridge: topology declared").await;
        Ok(())
    }

    fn connect_error(&self, e: lapin::Error) -> Error {
        if let lapin::Error::ProtocolError(amqp) = &e {
            match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
                    if amqp.get_message().as_str().contains("vhost") =>
                {
                    return Error::Config {
                        broker: BROKER,
                        reason: format!(
                            "virtual host {:?} on {}: {}",
                            self.config.vhost,
                            self.endpoint,
                            amqp.get_message()
                        ),
                    };
                }
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
                    return Error::Auth {
                        broker: BROKER,
                        endpoint: self.endpoint.clone(),
                        reason: format!("user {:?}: {}", self.config.user, amqp.get_message()),
                    }
                }
                _ => {}
            }
        }
        let reason = e.to_string();
        // RabbitMQ closes the socket after a refused login when the client does not announce
        // `authentication_failure_close`; lapin then reports the handshake as interrupted.
        if reason.contains("ACCESS_REFUSED") || reason.contains("authentication") {
            return Error::Auth {
                broker: BROKER,
                endpoint: self.endpoint.clone(),
                reason: format!("user {:?}: {reason}", self.config.user),
            };
        }
        Error::Connection {
            broker: BROKER,
            endpoint: self.endpoint.clone(),
            reason,
            source: Some(Box::new(e)),
        }
    }

    /// The current connection if it is up.
    fn live_connection(&self) -> Option<Arc<Connection>> {
        self.read_state()
            .connection
            .clone()
            .filter(|c| c.status().connected())
    }

    /// A connected connection: the current one, or a new one (one reconnect at a time,
    /// with backoff between failed attempts: during the pause callers fail fast with the
    /// last error, which is retryable).
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(BROKER, "the connection"));
        }
        if let Some(c) = self.live_connection() {
            return Ok(c);
        }
        let mut backoff = self.reconnect.lock().await;
        if let Some(c) = self.live_connection() {
            return Ok(c);
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(BROKER, "the connection"));
        }
        if let Some((at, e)) = &backoff.last_failure {
            if at.elapsed() < backoff.pause {
                return Err(retryable_copy(e, &self.endpoint));
            }
        }
        match self.open().await {
            Ok(c) => {
                let c = Arc::new(c);
                let mut state = self.write_state();
                state.connection = Some(c.clone());
                state.publish = None;
                backoff.last_failure = None;
                backoff.pause = FIRST_PAUSE;
                Ok(c)
            }
            Err(e) => {
                tracing::warn!(broker = BROKER, endpoint = %self.endpoint, error = %e, "reconnect failed");
                backoff.pause = if backoff.last_failure.is_some() {
                    (backoff.pause * 2).min(self.config.reconnect_max)
                } else {
                    FIRST_PAUSE
                };
                let copy = retryable_copy(&e, &self.endpoint);
                backoff.last_failure = Some((Instant::now(), copy));
                Err(e)
            }
        }
    }

    /// How long a subscription waits before its next attempt to resume.
    pub(crate) fn resume_pause(&self, attempt: u32) -> Duration {
        let pause = FIRST_PAUSE.saturating_mul(1u32 << attempt.min(8));
        pause.min(self.config.reconnect_max)
    }

    /// The confirmed channel publishes go through.
    pub(crate) async fn publish_channel(&self) -> Result<Channel> {
        if let Some(ch) = self
            .read_state()
            .publish
            .clone()
            .filter(|c| c.status().connected())
        {
            return Ok(ch);
        }
        let connection = self.connection().await?;
        let _one_at_a_time = self.reconnect.lock().await;
        if let Some(ch) = self
            .read_state()
            .publish
            .clone()
            .filter(|c| c.status().connected())
        {
            return Ok(ch);
        }
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| lapin_error(e, "the publishing channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| lapin_error(e, "the publishing channel"))?;
        let mut state = self.write_state();
        if state
            .connection
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &connection))
        {
            state.publish = Some(channel.clone());
        }
        Ok(channel)
    }

    /// Closes the connection (the broker returns unacknowledged deliveries).
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _one_at_a_time = self.reconnect.lock().await;
        let connection = {
            let mut state = self.write_state();
            state.publish = None;
            state.connection.take()
        };
        if let Some(c) = connection {
            let _ = c.close(200, "polybridge: closed").await;
        }
    }
}

fn retryable_copy(e: &Error, endpoint: &str) -> Error {
    match e {
        Error::Auth {
            broker,
            endpoint,
            reason,
        } => Error::Auth {
            broker,
            endpoint: endpoint.clone(),
            reason: reason.clone(),
        },
        Error::Config { broker, reason } => Error::Config {
            broker,
            reason: reason.clone(),
        },
        Error::Permanent {
            broker,
            destination,
            reason,
            ..
        } => Error::Permanent {
            broker,
            destination: destination.clone(),
            reason: reason.clone(),
            source: None,
        },
        other => Error::Connection {
            broker: BROKER,
            endpoint: endpoint.to_owned(),
            reason: format!("reconnecting after: {other}"),
            source: None,
        },
    }
}

/// Arguments of the queues this adapter declares durable (group queues, `declare=true`,
/// `declare_queues`): `x-queue-type` and `x-dead-letter-exchange` from the URL.
pub(crate) fn queue_arguments(config: &AmqpConfig) -> FieldTable {
    let mut arguments = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes()));
    if let Some(t) = &config.queue_type {
        arguments.insert(ShortString::from("x-queue-type"), text(t));
    }
    if let Some(x) = &config.dead_letter_exchange {
        arguments.insert(ShortString::from("x-dead-letter-exchange"), text(x));
    }
    arguments
}

/// The reply code of an AMQP protocol error, if `e` is one.
pub(crate) fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e {
        lapin::Error::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// A lapin error as a polybridge error about `destination`: broker refusals (404 not found,
/// 403 access refused, 406 precondition failed) are permanent and keep the broker's text
/// (which names the queue or exchange and, for 406, the differing argument); lost channels
/// and connections are transient.
pub(crate) fn lapin_error(e: lapin::Error, destination: &str) -> Error {
    let reason = match &e {
        lapin::Error::ProtocolError(amqp) => amqp.get_message().as_str().to_owned(),
        other => other.to_string(),
    };
    match reply_code(&e) {
        Some(403..=406) | Some(530) | Some(540) => Error::Permanent {
            broker: BROKER,
            destination: destination.to_owned(),
            reason,
            source: Some(Box::new(e)),
        },
        _ => Error::Transient {
            broker: BROKER,
            destination: destination.to_owned(),
            reason,
            source: Some(Box::new(e)),
        },
    }
}
