//! WebSocket adapter of polybridge, on [`tokio-tungstenite`](https://docs.rs/tokio-tungstenite)
//! (MIT): a **hub** that browsers and services connect to, and a [`Broker`] that is a
//! client of a hub.
//!
//! ```no_run
//! # async fn demo() -> polybridge_core::Result<()> {
//! use std::time::Duration;
//! use polybridge_core::{Deadline, Message, Publisher, Subscriber, Subscription};
//! use polybridge_websocket::{WsBroker, WsHub};
//!
//! // The hub: a WebSocket front end for a broker (here a new in-memory one).
//! let hub = WsHub::bind_memory("0.0.0.0:8090", "memory://hub").await?;
//! // A service connects to it like to any broker…
//! let ws = WsBroker::connect(&"ws://127.0.0.1:8090/".parse()?).await?;
//! let mut orders = ws.subscribe(Subscription::new("orders.*".parse()?)).await?;
//! ws.publish("orders.created", &Message::new("{}"), Deadline::after(Duration::from_secs(5)))
//!     .await?; // resolved on the hub's `ok`, sent once its backend confirmed the message
//! if let Some(delivery) = orders.next().await {
//!     delivery?.ack()?;
//! }
//! // …and a web page too:
//! //   const ws = new WebSocket("ws://host:8090/");
//! //   ws.onopen = () => ws.send(JSON.stringify(
//! //     {op: "subscribe", ref: 1, sub: "s1", pattern: "orders.*", auto_ack: true}));
//! //   ws.onmessage = (e) => { const f = JSON.parse(e.data); if (f.op === "message") show(f.payload); };
//! # drop(hub); Ok(()) }
//! ```
//!
//! # Design: who is the broker
//! The hub ([`WsHub`]) is the broker end: a WebSocket server in front of a backend
//! [`Broker`] — a fresh in-memory broker ([`WsHub::bind_memory`]), or any other adapter
//! ([`WsHub::bind`]: give it a Kafka, NATS, … connection and a web page can watch a Kafka
//! topic). Every connection, a browser's or a service's, speaks the JSON framing of
//! [`mapping`]: `publish` (answered `ok` once the backend confirmed), `subscribe`
//! (deliveries arrive as `message` frames with a `tag`), `ack`/`nack`/`reject` a tag,
//! `unsubscribe`. [`WsBroker`] is the Rust client of that protocol: a [`Broker`] whose
//! semantics are the hub backend's, which the hub announces in its `welcome` frame (so
//! [`Broker::capabilities`] are the backend's, with `reconnect` true: the client's own).
//!
//! # URL
//! `ws[s]://[user:password@]host[:port][/path][?option=value&…]`: the hub to connect to
//! (default port 80, 443 for `wss`; the hub serves any path). `wss://` speaks TLS (rustls,
//! ring provider): the client verifies the hub's certificate against the Mozilla roots
//! (webpki-roots) and `ca_file`; a hub serves TLS with [`WsHub::bind_tls`] or `serve=true`
//! with `tls_cert`/`tls_key`.
//!
//! Credentials in the URL (`user:password@`, percent-encoded) are HTTP Basic auth (RFC
//! 7617) of the WebSocket upgrade request: a client sends `Authorization: Basic …`; a hub
//! with `serve=true` (or [`WsHub::bind_authenticated`]) refuses every upgrade without
//! those credentials with `401` and `WWW-Authenticate: Basic realm="polybridge"` (compared
//! in constant time; logged with the peer and counted, [`WsHub::unauthorized_requests`],
//! never the password). A client refused with 401 gets [`Error::Auth`] from `connect`;
//! if the hub refuses it later, on a reconnect, it logs an error and keeps trying every
//! 2 s. Basic auth sends the password only base64-encoded: use it over `wss://`. A
//! browser's `WebSocket` cannot set the header itself; it sends credentials it got from a
//! 401 challenge of the same origin, or put the hub behind a proxy that authenticates it.
//! `Debug` of the config and every error show the user, never the password.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `connect_timeout` | `5s` | time to connect and receive the hub's `welcome` |
//! | `serve` | `false` | `true`: instead of connecting, run a hub on `host:port` in this process over a new in-memory broker ([`WsBroker::hub`]); this broker then publishes and subscribes on that backend directly, and browsers connect to the hub — how a bridge route pushes a Kafka topic to web pages: `kafka://… → ws://0.0.0.0:8090/?serve=true` |
//! | `max_payload` | 8 MiB | with `serve=true`: the backend's payload limit |
//! | `ca_file` | — | `wss`: PEM certificates trusted besides the Mozilla roots |
//! | `tls_cert`, `tls_key` | — | `wss` with `serve=true`: the hub's PEM certificate chain and private key |
//! | `user:password@` | — | HTTP Basic auth: sent with the upgrade; with `serve=true`, required of every client |
//!
//! # Semantics
//! - `publish` sends a `publish` frame and resolves on the hub's `ok`, which the hub sends
//!   once its backend confirmed the message (publisher confirm semantics of the backend).
//!   The hub publishes the frames of one connection one after the other, so the backend's
//!   order holds for one connection. An `error` answer becomes the matching [`Error`]
//!   (`PayloadTooLarge`, permanent, transient…).
//! - A subscription is a backend subscription on the hub, with the pattern, group,
//!   `max_in_flight`, start position and dead-letter topic given; the hub forwards its
//!   deliveries and settles each when the client settles its tag, so ack, nack, delayed
//!   nack, reject and the in-flight limit are the backend's. Closing the stream sends
//!   `unsubscribe` and resolves once the hub closed the backend subscription (its
//!   unsettled deliveries go back to the backend). A browser can subscribe with
//!   `auto_ack: true`: the hub acks each message when it forwards it (at most once).
//! - When the connection breaks (or the hub is dropped, which closes its connections),
//!   the hub closes the connection's subscriptions, so the backend redelivers what was
//!   unsettled; the client reconnects with backoff (50 ms doubling to 2 s, forever) and
//!   subscribes again with the same patterns, groups and limits, and the streams go on
//!   (`reconnect` is true). Publishes waiting for an answer, and those made while
//!   disconnected, fail with a retryable [`Error::Connection`] (the hub may have published
//!   a message whose `ok` was lost: retrying may duplicate). Settling a delivery of the
//!   lost connection does nothing: the backend redelivers it (duplicates, at least once).
//!   A subscription with a group continues where the group is; one without a group is a
//!   new subscription on the hub after a reconnect: with `Latest` it misses what was
//!   published meanwhile, with `Earliest` it reads the history again.
//! - With `serve=true` there is no socket between the broker and the hub's backend: it
//!   behaves as the in-memory broker (errors name `memory`), while browsers and other
//!   clients reach the same topics through the hub.
//!
//! [`Error::Connection`]: polybridge_core::Error::Connection
//! [`Error::Auth`]: polybridge_core::Error::Auth

mod client;
mod config;
mod hub;
pub mod mapping;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

use async_trait::async_trait;
use polybridge_core::{
    Acknowledger, Broker, BrokerUrl, Capabilities, Deadline, DeliveryStream, Error, Message,
    Publisher, Receipt, Result, StartPosition, Subscriber, Subscription,
};
use serde_json::{json, Map, Value as Json};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

pub use config::WsConfig;
pub use hub::WsHub;

use client::{Answer, Command, Route, SubAcker};

/// The adapter's name in errors and logs.
pub const BROKER: &str = "websocket";

/// Largest in-flight limit of a subscription (larger ones are lowered to it).
pub const MAX_IN_FLIGHT: usize = 65_536;

/// Publishes in progress that `close` can wait for.
const PUBLISH_PERMITS: usize = 65_536;

/// A connection to a [`WsHub`].
pub struct WsBroker {
    config: WsConfig,
    url: BrokerUrl,
    capabilities: Capabilities,
    backend: String,
    commands: mpsc::UnboundedSender<Command>,
    permits: Arc<Semaphore>,
    closed: AtomicBool,
    next_sub: AtomicU64,
    task: JoinHandle<()>,
    /// `serve=true`: the hub this broker runs and its own connection to the hub's backend.
    local: Option<(Arc<dyn Broker>, WsHub)>,
}

impl Drop for WsBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsBroker {
    /// Connects to the hub at `url` and waits for its `welcome`.
    pub async fn connect(url: &BrokerUrl) -> Result<Self> {
        let config = WsConfig::from_url(url)?;
        if let Some(listen) = config.serve.clone() {
            return WsBroker::serve(url, config, &listen).await;
        }
        let connection_error = |reason: String| Error::Connection {
            broker: BROKER,
            endpoint: url.to_string(),
            reason,
            source: None,
        };
        let endpoint = url.to_string();
        let (ws, welcome) =
            tokio::time::timeout(config.connect_timeout, client::dial(&config, &endpoint))
                .await
                .map_err(|_| {
                    connection_error(format!("no welcome within {:?}", config.connect_timeout))
                })??;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(client::run(ws, commands_rx, config.clone(), endpoint));
        let mut capabilities =
            mapping::capabilities_from_json(welcome.get("capabilities").unwrap_or(&Json::Null));
        // The client reconnects and subscribes again by itself.
        capabilities.reconnect = true;
        let backend = welcome
            .get("broker")
            .and_then(Json::as_str)
            .unwrap_or("unknown")
            .to_owned();
        Ok(WsBroker {
            config,
            url: url.clone(),
            capabilities,
            backend,
            commands,
            permits: Arc::new(Semaphore::new(PUBLISH_PERMITS)),
            closed: AtomicBool::new(false),
            next_sub: AtomicU64::new(0),
            task,
            local: None,
        })
    }

    /// `serve=true`: binds a hub over a new in-memory broker and talks to that broker
    /// directly.
    async fn serve(url: &BrokerUrl, config: WsConfig, listen: &str) -> Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let mut memory = format!(
            "memory://ws-hub-{}-{}",
            std::process::id(),
            N.fetch_add(1, AtomicOrdering::Relaxed)
        );
        if let Some(max) = config.max_payload {
            memory.push_str(&format!("?max_payload={max}"));
        }
        let memory_url: BrokerUrl = memory.parse()?;
        let hub_backend: Arc<dyn Broker> =
            Arc::new(polybridge_memory::MemoryBroker::connect(&memory_url)?);
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some((cert.as_str(), key.as_str())),
            _ => None,
        };
        let hub = match (&config.auth, tls) {
            (Some(auth), tls) => {
                WsHub::bind_authenticated(listen, hub_backend, auth.clone(), tls).await?
            }
            (None, Some((cert, key))) => WsHub::bind_tls(listen, hub_backend, cert, key).await?,
            (None, None) => WsHub::bind(listen, hub_backend).await?,
        };
        // A connection of its own, so closing this broker's publisher leaves the hub's.
        let backend: Arc<dyn Broker> =
            Arc::new(polybridge_memory::MemoryBroker::connect(&memory.parse()?)?);
        let mut capabilities = backend.capabilities().clone();
        capabilities.reconnect = false;
        // No socket: the command channel leads nowhere.
        let (commands, _) = mpsc::unbounded_channel();
        Ok(WsBroker {
            config,
            url: url.clone(),
            capabilities,
            backend: backend.name().to_owned(),
            commands,
            permits: Arc::new(Semaphore::new(PUBLISH_PERMITS)),
            closed: AtomicBool::new(false),
            next_sub: AtomicU64::new(0),
            task: tokio::spawn(async {}),
            local: Some((backend, hub)),
        })
    }

    /// What a connection to `url` can do, without connecting: with `serve=true`, the
    /// in-memory backend's; for a client, those of a hub over the in-memory broker (the
    /// [`WsHub::bind_memory`] default) with `reconnect` — a connected [`WsBroker`] reports
    /// the hub's actual ones, from its `welcome`.
    pub fn capabilities_for(url: &BrokerUrl) -> Result<Capabilities> {
        let config = WsConfig::from_url(url)?;
        let mut memory = String::from("memory://capabilities");
        if let Some(max) = config.max_payload {
            memory.push_str(&format!("?max_payload={max}"));
        }
        let mut capabilities = polybridge_memory::MemoryBroker::capabilities_for(&memory.parse()?)?;
        capabilities.reconnect = config.serve.is_none();
        Ok(capabilities)
    }

    /// With `serve=true`, the hub this broker runs.
    pub fn hub(&self) -> Option<&WsHub> {
        self.local.as_ref().map(|(_, hub)| hub)
    }

    /// The name of the hub's backend broker (from `welcome`), e.g. `memory`.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The config read from the URL.
    pub fn config(&self) -> &WsConfig {
        &self.config
    }

    async fn request(
        &self,
        frame: Map<String, Json>,
        route: Option<(String, Route)>,
        unroute: Option<String>,
    ) -> Result<Answer> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Request {
                frame,
                reply,
                route,
                unroute,
            })
            .map_err(|_| self.disconnected())?;
        answer.await.map_err(|_| self.disconnected())
    }

    fn disconnected(&self) -> Error {
        Error::Connection {
            broker: BROKER,
            endpoint: self.url.to_string(),
            reason: "the connection to the hub is closed".into(),
            source: None,
        }
    }
}

impl Broker for WsBroker {
    fn name(&self) -> &'static str {
        BROKER
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn url(&self) -> &BrokerUrl {
        &self.url
    }
}

#[async_trait]
impl Publisher for WsBroker {
    async fn publish(
        &self,
        destination: &str,
        message: &Message,
        deadline: Deadline,
    ) -> Result<Receipt> {
        if self.closed.load(AtomicOrdering::Acquire) {
            return Err(Error::closed(BROKER, "the publisher"));
        }
        if let Some(limit) = self.capabilities.max_payload {
            if message.payload.len() > limit {
                return Err(Error::PayloadTooLarge {
                    broker: BROKER,
                    destination: destination.to_owned(),
                    size: message.payload.len(),
                    limit,
                });
            }
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::closed(BROKER, "the publisher"))?;
        if let Some((backend, _)) = &self.local {
            return backend.publish(destination, message, deadline).await;
        }
        let mut frame = Map::new();
        frame.insert("op".into(), json!("publish"));
        frame.insert("topic".into(), json!(destination));
        mapping::put_message(&mut frame, message);
        let answer = deadline
            .run(
                BROKER,
                "publish",
                destination,
                self.request(frame, None, None),
            )
            .await?;
        match answer {
            Ok(_) => Ok(Receipt::default()),
            Err(e) => Err(mapping::frame_error(&e, destination)),
        }
    }

    async fn close(&self, deadline: Deadline) -> Result<()> {
        self.closed.store(true, AtomicOrdering::Release);
        let permits = self.permits.clone();
        deadline
            .run(BROKER, "close", "the publisher", async move {
                if let Ok(p) = permits.acquire_many(PUBLISH_PERMITS as u32).await {
                    p.forget();
                    permits.close();
                }
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl Subscriber for WsBroker {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        if let Some((backend, _)) = &self.local {
            return backend.subscribe(subscription).await;
        }
        if let Some(name) = subscription.options.keys().next() {
            return Err(Error::config(
                BROKER,
                format!("unknown subscription option {name:?}; the websocket adapter has none"),
            ));
        }
        let start = match &subscription.start {
            StartPosition::Latest => "latest".to_owned(),
            StartPosition::Earliest => "earliest".to_owned(),
            StartPosition::Position(p) => p.clone(),
            StartPosition::Time(_) => {
                return Err(Error::unsupported(
                    BROKER,
                    "a start time over the hub protocol (use latest, earliest or a position)",
                ))
            }
        };
        let sub = format!("s{}", self.next_sub.fetch_add(1, AtomicOrdering::Relaxed));
        let max_in_flight = subscription.max_in_flight.clamp(1, MAX_IN_FLIGHT);
        let mut frame = Map::new();
        frame.insert("op".into(), json!("subscribe"));
        frame.insert("sub".into(), json!(sub));
        frame.insert("pattern".into(), json!(subscription.pattern.to_string()));
        frame.insert("max_in_flight".into(), json!(max_in_flight));
        frame.insert("start".into(), json!(start));
        if let Some(g) = &subscription.group {
            frame.insert("group".into(), json!(g));
        }
        if let Some(d) = &subscription.dead_letter {
            frame.insert("dead_letter".into(), json!(d));
        }
        let (deliveries, deliveries_rx) = mpsc::channel(max_in_flight);
        let closed = Arc::new(AtomicBool::new(false));
        let acker: Arc<dyn Acknowledger> = Arc::new(SubAcker {
            commands: self.commands.clone(),
            closed: closed.clone(),
            what: format!("the subscription to {}", subscription.pattern),
        });
        let route = Route { deliveries, acker };
        match self
            .request(frame, Some((sub.clone(), route)), None)
            .await?
        {
            Ok(_) => {}
            Err(e) => {
                return Err(mapping::frame_error(&e, &subscription.pattern.to_string()));
            }
        }
        let (close_tx, close_rx) = oneshot::channel::<()>();
        let (closed_tx, closed_rx) = oneshot::channel::<()>();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let _ = close_rx.await;
            closed.store(true, AtomicOrdering::Release);
            let mut frame = Map::new();
            frame.insert("op".into(), json!("unsubscribe"));
            frame.insert("sub".into(), json!(sub));
            let (reply, answer) = oneshot::channel();
            if commands
                .send(Command::Request {
                    frame,
                    reply,
                    route: None,
                    unroute: Some(sub),
                })
                .is_ok()
            {
                let _ = answer.await;
            }
            drop(closed_tx);
        });
        Ok(DeliveryStream::new(deliveries_rx, close_tx, closed_rx))
    }
}
