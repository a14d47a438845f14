//! The hub: a WebSocket server that gives browsers and services the broker behind it.
//!
//! Each connection speaks the framing of [`crate::mapping`]. Publishes of one connection
//! go to the backend one after the other, in the order they arrived (so the backend's
//! ordering holds per connection); each subscription is a backend subscription whose
//! deliveries are forwarded with a connection-wide `tag` and settled when the client
//! settles that tag. When a connection ends, its subscriptions are closed: the backend
//! takes back every delivery the client had not settled and redelivers it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use polybridge_core::{
    BasicAuth, Broker, BrokerUrl, Deadline, Delivery, Error, Result, StartPosition, Subscription,
    TopicPattern,
};
use serde_json::{json, Map, Value as Json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::mapping;
use crate::BROKER;

/// How long the hub gives its backend to confirm a publish.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// A running hub. Dropping it stops accepting connections and closes the open ones (their
/// subscriptions end; the backend redelivers what they had not settled).
pub struct WsHub {
    local_addr: SocketAddr,
    backend: Arc<dyn Broker>,
    accept: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
    tls: bool,
    unauthorized: Arc<AtomicU64>,
}

impl Drop for WsHub {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = self.shutdown.send(true);
    }
}

impl WsHub {
    /// Serves `backend` on `addr` (`host:port`; port 0 picks a free one).
    pub async fn bind(addr: &str, backend: Arc<dyn Broker>) -> Result<WsHub> {
        WsHub::bind_with(addr, backend, None, None).await
    }

    /// Serves `backend` on `addr` like [`WsHub::bind`] (`tls`: `Some((cert_file,
    /// key_file))` serves `wss://` like [`WsHub::bind_tls`]), refusing every upgrade
    /// request that does not carry `auth` as HTTP Basic credentials with `401` and
    /// `WWW-Authenticate: Basic realm="polybridge"` ([`WsHub::unauthorized_requests`]
    /// counts them). Serve it over TLS: Basic auth sends the password base64-encoded.
    pub async fn bind_authenticated(
        addr: &str,
        backend: Arc<dyn Broker>,
        auth: BasicAuth,
        tls: Option<(&str, &str)>,
    ) -> Result<WsHub> {
        let acceptor = tls.map(|(cert, key)| acceptor(cert, key)).transpose()?;
        WsHub::bind_with(addr, backend, acceptor, Some(auth)).await
    }

    /// Serves `backend` over `wss://` on `addr`, presenting the PEM certificate chain
    /// `cert_file` with the PEM private key `key_file`.
    pub async fn bind_tls(
        addr: &str,
        backend: Arc<dyn Broker>,
        cert_file: &str,
        key_file: &str,
    ) -> Result<WsHub> {
        let acceptor = acceptor(cert_file, key_file)?;
        WsHub::bind_with(addr, backend, Some(acceptor), None).await
    }

    async fn bind_with(
        addr: &str,
        backend: Arc<dyn Broker>,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
        auth: Option<BasicAuth>,
    ) -> Result<WsHub> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Connection {
                broker: BROKER,
                endpoint: addr.to_owned(),
                reason: format!("cannot listen: {e}"),
                source: Some(Box::new(e)),
            })?;
        let local_addr = listener.local_addr().map_err(|e| Error::Connection {
            broker: BROKER,
            endpoint: addr.to_owned(),
            reason: e.to_string(),
            source: None,
        })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let tls = acceptor.is_some();
        let unauthorized = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(accept_loop(
            listener,
            backend.clone(),
            shutdown_rx,
            acceptor,
            Gate {
                auth: auth.map(Arc::new),
                unauthorized: unauthorized.clone(),
            },
        ));
        tracing::info!(listen = %local_addr, backend = backend.name(), "websocket: hub listening");
        Ok(WsHub {
            local_addr,
            backend,
            accept,
            shutdown,
            tls,
            unauthorized,
        })
    }

    /// Serves a new in-memory broker (`memory_url`, e.g. `memory://hub?max_payload=1048576`)
    /// on `addr`.
    pub async fn bind_memory(addr: &str, memory_url: &str) -> Result<WsHub> {
        let url: BrokerUrl = memory_url.parse()?;
        let backend = polybridge_memory::MemoryBroker::connect(&url)?;
        WsHub::bind(addr, Arc::new(backend)).await
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `ws://<local address>/` (`wss://` with TLS), the URL clients connect to.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/", self.local_addr)
    }

    /// Upgrade requests refused with `401` (missing or wrong credentials) so far.
    pub fn unauthorized_requests(&self) -> u64 {
        self.unauthorized.load(Ordering::Relaxed)
    }

    /// The broker behind the hub.
    pub fn backend(&self) -> &Arc<dyn Broker> {
        &self.backend
    }
}

fn acceptor(cert_file: &str, key_file: &str) -> Result<tokio_rustls::TlsAcceptor> {
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(
        polybridge_core::tls::server_config(
            crate::BROKER,
            ("tls_cert", cert_file.as_ref()),
            ("tls_key", key_file.as_ref()),
        )?,
    )))
}

/// Who may upgrade: everyone, or the holders of `auth`.
#[derive(Clone)]
struct Gate {
    auth: Option<Arc<BasicAuth>>,
    unauthorized: Arc<AtomicU64>,
}

impl Gate {
    /// The handshake callback's check: the response, or `401` with the challenge.
    // The result type is tungstenite's `Callback` signature; it runs once per connection.
    #[allow(clippy::result_large_err)]
    fn check(
        &self,
        peer: SocketAddr,
        request: &Request,
        response: Response,
    ) -> std::result::Result<Response, ErrorResponse> {
        let Some(auth) = &self.auth else {
            return Ok(response);
        };
        let given = request
            .headers()
            .get(AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if auth.matches(given) {
            return Ok(response);
        }
        let refused = self.unauthorized.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(%peer, path = request.uri().path(), credentials = given.is_some(), refused, "websocket: upgrade without valid credentials refused with 401");
        let mut refusal = ErrorResponse::new(Some(
            "polybridge hub: missing or wrong credentials (HTTP Basic)\n".into(),
        ));
        *refusal.status_mut() = StatusCode::UNAUTHORIZED;
        refusal.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(polybridge_core::basic_auth::CHALLENGE),
        );
        Err(refusal)
    }
}

async fn accept_loop(
    listener: TcpListener,
    backend: Arc<dyn Broker>,
    shutdown: watch::Receiver<bool>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    gate: Gate,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let backend = backend.clone();
                let shutdown = shutdown.clone();
                let acceptor = acceptor.clone();
                let gate = gate.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let served = match acceptor {
                        None => connection(stream, peer, gate, backend, shutdown).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => connection(tls, peer, gate, backend, shutdown).await,
                            Err(e) => Err(format!("TLS handshake: {e}")),
                        },
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "websocket: hub connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "websocket: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What the subscription forwarders and the publish task tell the connection.
enum Event {
    Delivery {
        sub: String,
        delivery: Box<Delivery>,
    },
    Ended {
        sub: String,
        error: Option<Error>,
    },
}

struct Sub {
    close: Option<oneshot::Sender<()>>,
    auto_ack: bool,
}

// The handshake callback's result type is tungstenite's `Callback` signature.
#[allow(clippy::result_large_err)]
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    gate: Gate,
    backend: Arc<dyn Broker>,
    mut shutdown: watch::Receiver<bool>,
) -> std::result::Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let check = move |request: &Request, response: Response| gate.check(peer, request, response);
    let ws = tokio_tungstenite::accept_hdr_async(stream, check)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sink, mut incoming) = ws.split();
    let (out, mut out_rx) = mpsc::channel::<Json>(1024);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if sink.send(Frame::text(frame.to_string())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let _ = out
        .send(json!({
            "op": "welcome",
            "protocol": mapping::PROTOCOL,
            "broker": backend.name(),
            "capabilities": mapping::capabilities_json(backend.capabilities()),
        }))
        .await;

    // Publishes run in order on their own task, so settling never waits for a publish.
    let (publish_tx, mut publish_rx) =
        mpsc::channel::<(Option<u64>, String, Map<String, Json>)>(256);
    let publisher = {
        let backend = backend.clone();
        let out = out.clone();
        tokio::spawn(async move {
            while let Some((reference, topic, frame)) = publish_rx.recv().await {
                let reply = match mapping::get_message(&frame) {
                    Err(e) => mapping::error_frame(reference, None, &Error::config(BROKER, e)),
                    Ok(message) => match backend
                        .publish(&topic, &message, Deadline::after(PUBLISH_TIMEOUT))
                        .await
                    {
                        Ok(_) => json!({"op": "ok", "ref": reference}),
                        Err(e) => mapping::error_frame(reference, None, &e),
                    },
                };
                if out.send(reply).await.is_err() {
                    break;
                }
            }
        })
    };

    let (events, mut events_rx) = mpsc::channel::<Event>(1024);
    let mut subs: HashMap<String, Sub> = HashMap::new();
    let mut unsettled: HashMap<u64, (String, Delivery)> = HashMap::new();
    let mut unsubscribing: HashMap<String, Vec<Option<u64>>> = HashMap::new();
    let mut next_tag = 0u64;
    let result = loop {
        tokio::select! {
            _ = shutdown.changed() => break Ok(()),
            frame = incoming.next() => {
                let text = match frame {
                    None | Some(Ok(Frame::Close(_))) => break Ok(()),
                    Some(Err(e)) => break Err(e.to_string()),
                    Some(Ok(Frame::Text(t))) => t,
                    Some(Ok(Frame::Binary(b))) => match String::from_utf8(b.to_vec()) {
                        Ok(t) => t.into(),
                        Err(_) => { let _ = out.send(protocol_error(None, "frames are JSON text")).await; continue }
                    },
                    Some(Ok(_)) => continue,
                };
                let Ok(Json::Object(frame)) = serde_json::from_str::<Json>(&text) else {
                    let _ = out.send(protocol_error(None, "a frame is one JSON object")).await;
                    continue;
                };
                let reference = frame.get("ref").and_then(Json::as_u64);
                let text_field = |k: &str| frame.get(k).and_then(Json::as_str).map(str::to_owned);
                match frame.get("op").and_then(Json::as_str).unwrap_or("") {
                    "publish" => match text_field("topic") {
                        Some(topic) => { let _ = publish_tx.send((reference, topic, frame)).await; }
                        None => { let _ = out.send(protocol_error(reference, "publish needs a topic")).await; }
                    },
                    "subscribe" => {
                        let reply = match subscription_of(&frame) {
                            Err(e) => mapping::error_frame(reference, None, &e),
                            Ok((sub, subscription, _)) if subs.contains_key(&sub) => mapping::error_frame(reference, None, &Error::config(BROKER, format!("subscription id {sub:?} is in use on this connection ({})", subscription.pattern))),
                            Ok((sub, subscription, auto_ack)) => match backend.subscribe(subscription).await {
                                Err(e) => mapping::error_frame(reference, None, &e),
                                Ok(stream) => {
                                    let (close, close_rx) = oneshot::channel();
                                    tokio::spawn(forward(sub.clone(), stream, close_rx, events.clone()));
                                    subs.insert(sub.clone(), Sub { close: Some(close), auto_ack });
                                    json!({"op": "ok", "ref": reference, "sub": sub})
                                }
                            },
                        };
                        let _ = out.send(reply).await;
                    }
                    "unsubscribe" => {
                        let sub = text_field("sub").unwrap_or_default();
                        match subs.get_mut(&sub).and_then(|s| s.close.take()) {
                            Some(close) => {
                                // The forwarder closes the backend stream, then reports
                                // `Ended`, which answers this request.
                                let _ = close.send(());
                                unsubscribing.entry(sub).or_default().push(reference);
                            }
                            None => { let _ = out.send(json!({"op": "ok", "ref": reference, "sub": sub})).await; }
                        }
                    }
                    op @ ("ack" | "nack" | "reject") => {
                        let tag = frame.get("tag").and_then(Json::as_u64).unwrap_or(0);
                        let Some((_, delivery)) = unsettled.remove(&tag) else {
                            let _ = out.send(protocol_error(reference, &format!("no unsettled delivery with tag {tag}"))).await;
                            continue;
                        };
                        let result = match op {
                            "ack" => delivery.ack(),
                            "nack" => match frame.get("delay_ms").and_then(Json::as_u64) {
                                Some(ms) => delivery.nack_after(Duration::from_millis(ms)),
                                None => delivery.nack(),
                            },
                            _ => delivery.reject(text_field("reason").unwrap_or_else(|| "rejected by a websocket client".into())),
                        };
                        if let Err(e) = result {
                            let _ = out.send(mapping::error_frame(reference, None, &e)).await;
                        }
                    }
                    other => { let _ = out.send(protocol_error(reference, &format!("unknown op {other:?}"))).await; }
                }
            }
            Some(event) = events_rx.recv() => match event {
                Event::Delivery { sub, delivery } => {
                    let delivery = *delivery;
                    next_tag += 1;
                    let mut frame = Map::new();
                    frame.insert("op".into(), json!("message"));
                    frame.insert("sub".into(), json!(sub));
                    frame.insert("tag".into(), json!(next_tag));
                    frame.insert("topic".into(), json!(delivery.info.topic));
                    frame.insert("attempt".into(), json!(delivery.info.attempt));
                    frame.insert("redelivered".into(), json!(delivery.info.redelivered));
                    mapping::put_message(&mut frame, &delivery.message);
                    let auto_ack = subs.get(&sub).is_some_and(|s| s.auto_ack);
                    if auto_ack {
                        let _ = delivery.ack();
                    } else {
                        unsettled.insert(next_tag, (sub, delivery));
                    }
                    if out.send(Json::Object(frame)).await.is_err() {
                        break Err("the writer stopped".into());
                    }
                }
                Event::Ended { sub, error } => {
                    // The backend stream is closed: what is still unsettled went back to
                    // the backend; settling it now would fail.
                    unsettled.retain(|_, (s, _)| *s != sub);
                    subs.remove(&sub);
                    if let Some(e) = error {
                        let _ = out.send(mapping::error_frame(None, Some(&sub), &e)).await;
                    }
                    for reference in unsubscribing.remove(&sub).unwrap_or_default() {
                        let _ = out.send(json!({"op": "ok", "ref": reference, "sub": sub})).await;
                    }
                }
            },
        }
    };
    // Close every subscription; dropping the unsettled deliveries after the streams closed
    // leaves them with the backend, which redelivers them.
    for (_, mut s) in subs.drain() {
        if let Some(close) = s.close.take() {
            let _ = close.send(());
        }
    }
    drop(events_rx);
    drop(unsettled);
    publisher.abort();
    drop(out);
    let _ = writer.await;
    result
}

fn protocol_error(reference: Option<u64>, what: &str) -> Json {
    mapping::error_frame(
        reference,
        None,
        &Error::config(BROKER, format!("protocol: {what}")),
    )
}

/// Reads a `subscribe` frame: (sub id, subscription, auto_ack).
fn subscription_of(frame: &Map<String, Json>) -> Result<(String, Subscription, bool)> {
    let text = |k: &str| frame.get(k).and_then(Json::as_str).map(str::to_owned);
    let sub = text("sub").ok_or_else(|| Error::config(BROKER, "subscribe needs a sub id"))?;
    let pattern: TopicPattern = text("pattern")
        .ok_or_else(|| Error::config(BROKER, "subscribe needs a pattern"))?
        .parse()?;
    let mut s = Subscription::new(pattern);
    if let Some(g) = text("group") {
        s = s.group(g);
    }
    if let Some(n) = frame.get("max_in_flight").and_then(Json::as_u64) {
        s = s.max_in_flight(
            usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(crate::MAX_IN_FLIGHT),
        );
    }
    if let Some(d) = text("dead_letter") {
        s = s.dead_letter(d);
    }
    s.start = match text("start").as_deref() {
        None | Some("latest") => StartPosition::Latest,
        Some("earliest") => StartPosition::Earliest,
        Some(p) => StartPosition::Position(p.to_owned()),
    };
    let auto_ack = frame
        .get("auto_ack")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    Ok((sub, s, auto_ack))
}

/// Forwards one backend subscription to the connection until it is closed or ends.
async fn forward(
    sub: String,
    mut stream: polybridge_core::DeliveryStream,
    mut close: oneshot::Receiver<()>,
    events: mpsc::Sender<Event>,
) {
    let error = loop {
        tokio::select! {
            _ = &mut close => break None,
            next = stream.next() => match next {
                Some(Ok(delivery)) => {
                    if events.send(Event::Delivery { sub: sub.clone(), delivery: Box::new(delivery) }).await.is_err() {
                        break None;
                    }
                }
                Some(Err(e)) => break Some(e),
                None => break Some(Error::closed(BROKER, format!("the subscription {sub}"))),
            }
        }
    };
    stream.close().await;
    let _ = events.send(Event::Ended { sub, error }).await;
}
