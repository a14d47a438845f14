//! The connection of a [`crate::WsBroker`] to its hub: one task owns the socket, matches
//! `ok`/`error` answers to requests by `ref`, routes `message` frames to subscriptions by
//! `sub`, and when the connection breaks, reconnects with backoff and subscribes again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use polybridge_core::{AckHandle, Acknowledger, Delivery, DeliveryInfo, Error, Result, Settlement};
use serde_json::{json, Map, Value as Json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame};
use tokio_tungstenite::WebSocketStream;

use crate::config::WsConfig;
use crate::mapping;
use crate::BROKER;

/// A byte stream a WebSocket runs on: TCP or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A WebSocket to a hub.
pub(crate) type Ws = WebSocketStream<Box<dyn Io>>;

/// The hub's answer to a request: its `ok` frame, or its `error` frame.
pub(crate) type Answer = std::result::Result<Map<String, Json>, Map<String, Json>>;

/// Where a subscription's deliveries go.
pub(crate) struct Route {
    pub deliveries: mpsc::Sender<Result<Delivery>>,
    pub acker: Arc<dyn Acknowledger>,
}

/// What the broker asks of the connection task.
pub(crate) enum Command {
    /// Sends `frame` with a fresh `ref` and answers with the hub's reply. `route` (a
    /// subscription: its id and route) is registered first and subscribed again after a
    /// reconnect; `unroute` is removed once the hub answered.
    Request {
        frame: Map<String, Json>,
        reply: oneshot::Sender<Answer>,
        route: Option<(String, Route)>,
        unroute: Option<String>,
    },
    /// Settles delivery `token` (connection epoch in the high 32 bits, the hub's tag in
    /// the low ones); a token of an earlier connection is dropped: that hub connection is
    /// gone and the backend redelivers.
    Settle { token: u64, settlement: Settlement },
}

/// Settles the deliveries of one subscription through the connection task.
pub(crate) struct SubAcker {
    pub commands: mpsc::UnboundedSender<Command>,
    pub closed: Arc<AtomicBool>,
    pub what: String,
}

impl Acknowledger for SubAcker {
    fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(BROKER, self.what.clone()));
        }
        self.commands
            .send(Command::Settle { token, settlement })
            .map_err(|_| Error::closed(BROKER, self.what.clone()))
    }
}

fn settle_frame(tag: u64, settlement: Settlement) -> Json {
    match settlement {
        Settlement::Ack => json!({"op": "ack", "tag": tag}),
        Settlement::Nack { delay: None } => json!({"op": "nack", "tag": tag}),
        Settlement::Nack { delay: Some(d) } => {
            json!({"op": "nack", "tag": tag, "delay_ms": d.as_millis() as u64})
        }
        Settlement::Reject { reason } => json!({"op": "reject", "tag": tag, "reason": reason}),
    }
}

/// Connects to the hub of `config` (TCP, then TLS for `wss`), does the WebSocket
/// handshake and reads the `welcome`.
pub(crate) async fn dial(config: &WsConfig, endpoint: &str) -> Result<(Ws, Json)> {
    let connection_error = |reason: String| Error::Connection {
        broker: BROKER,
        endpoint: endpoint.to_owned(),
        reason,
        source: None,
    };
    let tcp = tokio::net::TcpStream::connect((config.host.as_str(), config.port))
        .await
        .map_err(|e| connection_error(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if config.tls {
        let tls = Arc::new(polybridge_core::tls::client_config(
            crate::BROKER,
            &polybridge_core::tls::TlsFiles {
                ca_file: config.ca_file.as_ref().map(Into::into),
                client_cert: None,
            },
            polybridge_core::tls::DefaultRoots::MozillaPlusCaFile,
        )?);
        let name = rustls::pki_types::ServerName::try_from(config.host.clone()).map_err(|e| {
            Error::config(
                BROKER,
                format!("{:?} is not a TLS server name: {e}", config.host),
            )
        })?;
        Box::new(
            tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| connection_error(format!("TLS: {e}")))?,
        )
    } else {
        Box::new(tcp)
    };
    let mut request = config
        .endpoint
        .as_str()
        .into_client_request()
        .map_err(|e| Error::config(BROKER, format!("{endpoint}: {e}")))?;
    if let Some(auth) = &config.auth {
        let mut value = HeaderValue::from_str(auth.header_value()).map_err(|_| {
            Error::config(
                BROKER,
                format!(
                    "the credentials of user {:?} do not fit an HTTP header",
                    auth.user()
                ),
            )
        })?;
        value.set_sensitive(true);
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let (mut ws, _) = match tokio_tungstenite::client_async(request, stream).await {
        Ok(ok) => ok,
        Err(WsError::Http(response)) if response.status() == StatusCode::UNAUTHORIZED => {
            return Err(Error::Auth {
                broker: BROKER,
                endpoint: endpoint.to_owned(),
                reason: match &config.auth {
                    Some(auth) => format!(
                        "the hub answered the upgrade 401: the password of user {:?} was refused",
                        auth.user()
                    ),
                    None => "the hub answered the upgrade 401: it wants credentials (user:password@ in the URL)".into(),
                },
            })
        }
        Err(e) => return Err(connection_error(e.to_string())),
    };
    loop {
        match ws.next().await {
            Some(Ok(Frame::Text(t))) => {
                let welcome: Json = serde_json::from_str(&t)
                    .map_err(|e| connection_error(format!("not a hub: {e}")))?;
                if welcome.get("op").and_then(Json::as_str) != Some("welcome") {
                    return Err(connection_error("not a hub: no welcome frame".into()));
                }
                return Ok((ws, welcome));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(connection_error(e.to_string())),
            None => return Err(connection_error("closed before welcome".into())),
        }
    }
}

/// A subscription as the task keeps it: its route and its `subscribe` frame (sent again
/// after a reconnect).
struct Sub {
    route: Route,
    frame: Map<String, Json>,
}

/// Per request: where to answer, the route to remove once answered, the route it
/// registered (removed if the answer is an error or the connection breaks first).
type Waiting = (
    Option<oneshot::Sender<Answer>>,
    Option<String>,
    Option<String>,
);

enum Ended {
    Stopped,
    Lost(String),
}

/// Runs the connection until the broker is dropped, reconnecting when it breaks.
pub(crate) async fn run(
    mut ws: Ws,
    mut commands: mpsc::UnboundedReceiver<Command>,
    config: WsConfig,
    endpoint: String,
) {
    let mut subs: HashMap<String, Sub> = HashMap::new();
    let mut epoch: u64 = 1;
    let mut next_ref = 0u64;
    loop {
        match connected(&mut ws, &mut commands, &mut subs, epoch, &mut next_ref).await {
            Ended::Stopped => return,
            Ended::Lost(reason) => {
                tracing::warn!(%endpoint, %reason, "websocket: lost the hub; reconnecting");
            }
        }
        let mut backoff = Duration::from_millis(50);
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        ws = loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Request { reply, unroute, .. }) => {
                        let answer = match unroute {
                            // Unsubscribing needs no hub: the hub dropped it already.
                            Some(sub) => {
                                subs.remove(&sub);
                                Ok(Map::new())
                            }
                            None => Err(disconnected_frame(&endpoint)),
                        };
                        let _ = reply.send(answer);
                    }
                    // A delivery of the lost connection: the backend redelivers it.
                    Some(Command::Settle { .. }) => {}
                },
                _ = &mut sleep => match dial(&config, &endpoint).await {
                    Ok((ws, _)) => break ws,
                    Err(e @ Error::Auth { .. }) => {
                        // Credentials changed on the hub: keep trying (they may be
                        // restored) but say so loudly.
                        tracing::error!(%endpoint, error = %e, "websocket: reconnect refused");
                        backoff = Duration::from_secs(2);
                        sleep.as_mut().reset(tokio::time::Instant::now() + backoff);
                    }
                    Err(e) => {
                        tracing::debug!(%endpoint, error = %e, "websocket: reconnect failed");
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        sleep.as_mut().reset(tokio::time::Instant::now() + backoff);
                    }
                },
            }
        };
        epoch += 1;
        tracing::info!(%endpoint, "websocket: reconnected to the hub");
    }
}

fn disconnected_frame(endpoint: &str) -> Map<String, Json> {
    let e = Error::Connection {
        broker: BROKER,
        endpoint: endpoint.to_owned(),
        reason: "the connection to the hub is down; reconnecting".into(),
        source: None,
    };
    match mapping::error_frame(None, None, &e) {
        Json::Object(f) => f,
        _ => Map::new(),
    }
}

async fn connected(
    ws: &mut Ws,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    subs: &mut HashMap<String, Sub>,
    epoch: u64,
    next_ref: &mut u64,
) -> Ended {
    let mut waiting: HashMap<u64, Waiting> = HashMap::new();
    // Subscribe again (after a reconnect) what is still wanted.
    subs.retain(|_, s| !s.route.deliveries.is_closed());
    for (sub, s) in subs.iter() {
        *next_ref += 1;
        let mut frame = s.frame.clone();
        frame.insert("ref".into(), json!(*next_ref));
        waiting.insert(*next_ref, (None, None, Some(sub.clone())));
        if let Err(e) = ws.send(Frame::text(Json::Object(frame).to_string())).await {
            return Ended::Lost(format!("resubscribing failed: {e}"));
        }
    }
    let ended = loop {
        tokio::select! {
            command = commands.recv() => {
                let text = match command {
                    None => break Ended::Stopped,
                    Some(Command::Settle { token, settlement }) => {
                        if token >> 32 != epoch {
                            continue;
                        }
                        settle_frame(token & 0xffff_ffff, settlement).to_string()
                    }
                    Some(Command::Request { mut frame, reply, route, unroute }) => {
                        *next_ref += 1;
                        frame.insert("ref".into(), json!(*next_ref));
                        let routed = route.map(|(sub, route)| {
                            let mut kept = frame.clone();
                            kept.remove("ref");
                            subs.insert(sub.clone(), Sub { route, frame: kept });
                            sub
                        });
                        waiting.insert(*next_ref, (Some(reply), unroute, routed));
                        Json::Object(frame).to_string()
                    }
                };
                if let Err(e) = ws.send(Frame::text(text)).await {
                    break Ended::Lost(format!("sending failed: {e}"));
                }
            }
            frame = ws.next() => {
                let text = match frame {
                    None | Some(Ok(Frame::Close(_))) => break Ended::Lost("the hub closed the connection".into()),
                    Some(Err(e)) => break Ended::Lost(format!("the connection broke: {e}")),
                    Some(Ok(Frame::Text(t))) => t,
                    Some(Ok(_)) => continue,
                };
                let Ok(Json::Object(frame)) = serde_json::from_str::<Json>(&text) else {
                    tracing::warn!("websocket: the hub sent a frame that is not a JSON object");
                    continue;
                };
                let reference = frame.get("ref").and_then(Json::as_u64);
                let sub = frame.get("sub").and_then(Json::as_str).map(str::to_owned);
                match frame.get("op").and_then(Json::as_str).unwrap_or("") {
                    "message" => deliver(subs, frame, epoch),
                    op @ ("ok" | "error") => {
                        if let Some((reply, unroute, routed)) = reference.and_then(|r| waiting.remove(&r)) {
                            if let Some(sub) = unroute {
                                subs.remove(&sub);
                            }
                            if let (Some(sub), "error") = (&routed, op) {
                                if let Some(s) = subs.remove(sub) {
                                    if reply.is_none() {
                                        // A resubscription failed: the stream ends with it.
                                        let _ = s.route.deliveries.try_send(Err(mapping::frame_error(&frame, sub)));
                                    }
                                }
                            }
                            if let Some(reply) = reply {
                                let _ = reply.send(if op == "ok" { Ok(frame) } else { Err(frame) });
                            }
                        } else if let Some(s) = sub.and_then(|s| subs.remove(&s)) {
                            // A subscription failed on the hub and ended.
                            let _ = s.route.deliveries.try_send(Err(mapping::frame_error(&frame, "a subscription")));
                        }
                    }
                    _ => {}
                }
            }
        }
    };
    // Subscriptions whose `subscribe` was not answered yet failed with their request.
    for (_, (reply, _, routed)) in waiting.drain() {
        if let (Some(sub), Some(_)) = (routed, reply) {
            subs.remove(&sub);
        }
    }
    ended
}

fn deliver(subs: &HashMap<String, Sub>, frame: Map<String, Json>, epoch: u64) {
    let sub = frame.get("sub").and_then(Json::as_str).unwrap_or("");
    let Some(Sub { route, .. }) = subs.get(sub) else {
        // A late delivery of a closed subscription: the hub took it back already.
        return;
    };
    let tag = frame.get("tag").and_then(Json::as_u64).unwrap_or(0) & 0xffff_ffff;
    let token = (epoch << 32) | tag;
    let message = match mapping::get_message(&frame) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(sub, tag, error = %e, "websocket: an unreadable message from the hub, rejected");
            let _ = route.acker.settle(
                token,
                Settlement::Reject {
                    reason: format!("unreadable: {e}"),
                },
            );
            return;
        }
    };
    let attempt = frame
        .get("attempt")
        .and_then(Json::as_u64)
        .and_then(|a| u32::try_from(a).ok())
        .unwrap_or(0);
    let delivery = Delivery {
        message,
        info: DeliveryInfo {
            topic: frame
                .get("topic")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned(),
            attempt,
            redelivered: frame
                .get("redelivered")
                .and_then(Json::as_bool)
                .unwrap_or(attempt > 1),
            position: None,
            partition: None,
        },
        handle: AckHandle::new(route.acker.clone(), token),
    };
    // The hub hands out at most `max_in_flight` unsettled deliveries, the channel's size,
    // so this fits unless the consumer dropped the stream (then the handle nacks).
    let _ = route.deliveries.try_send(Ok(delivery));
}
