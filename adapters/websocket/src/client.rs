//! The connection of a [`crate::WsBroker`] to its hub: one task owns the socket, matches
//! `ok`/`error` answers to requests by `ref` and routes `message` frames to subscriptions
//! by `sub`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use polybridge_core::{AckHandle, Acknowledger, Delivery, DeliveryInfo, Error, Result, Settlement};
use serde_json::{json, Map, Value as Json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::WebSocketStream;

use crate::mapping;
use crate::BROKER;

/// The hub's answer to a request: its `ok` frame, or its `error` frame.
pub(crate) type Answer = std::result::Result<Map<String, Json>, Map<String, Json>>;

/// Where a subscription's deliveries go.
pub(crate) struct Route {
    pub deliveries: mpsc::Sender<Result<Delivery>>,
    pub acker: Arc<dyn Acknowledger>,
}

/// What the broker asks of the connection task.
pub(crate) enum Command {
    /// Sends `frame` with a fresh `ref` and answers with the hub's reply; `route` is
    /// registered first, `unroute` removed once the hub answered.
    Request {
        frame: Map<String, Json>,
        reply: oneshot::Sender<Answer>,
        route: Option<(String, Route)>,
        unroute: Option<String>,
    },
    /// Sends a frame that has no answer (settlements).
    Send(Json),
}

/// Settles the deliveries of one subscription by sending `ack`/`nack`/`reject` frames.
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
        let frame = match settlement {
            Settlement::Ack => json!({"op": "ack", "tag": token}),
            Settlement::Nack { delay: None } => json!({"op": "nack", "tag": token}),
            Settlement::Nack { delay: Some(d) } => {
                json!({"op": "nack", "tag": token, "delay_ms": d.as_millis() as u64})
            }
            Settlement::Reject { reason } => {
                json!({"op": "reject", "tag": token, "reason": reason})
            }
        };
        self.commands
            .send(Command::Send(frame))
            .map_err(|_| Error::closed(BROKER, self.what.clone()))
    }
}

/// Runs the connection until the socket closes or the broker is dropped.
pub(crate) async fn run<S>(
    ws: WebSocketStream<S>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    endpoint: String,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let mut next_ref = 0u64;
    // Per request: where to answer, the route to remove once answered, the route it
    // registered (removed if the answer is an error).
    type Waiting = (oneshot::Sender<Answer>, Option<String>, Option<String>);
    let mut waiting: HashMap<u64, Waiting> = HashMap::new();
    let mut routes: HashMap<String, Route> = HashMap::new();
    let reason = loop {
        tokio::select! {
            command = commands.recv() => {
                let text = match command {
                    None => break "the broker was dropped".to_owned(),
                    Some(Command::Send(frame)) => frame.to_string(),
                    Some(Command::Request { mut frame, reply, route, unroute }) => {
                        next_ref += 1;
                        frame.insert("ref".into(), json!(next_ref));
                        let routed = route.map(|(sub, route)| {
                            routes.insert(sub.clone(), route);
                            sub
                        });
                        waiting.insert(next_ref, (reply, unroute, routed));
                        Json::Object(frame).to_string()
                    }
                };
                if let Err(e) = sink.send(Frame::text(text)).await {
                    break format!("sending failed: {e}");
                }
            }
            frame = incoming.next() => {
                let text = match frame {
                    None | Some(Ok(Frame::Close(_))) => break "the hub closed the connection".to_owned(),
                    Some(Err(e)) => break format!("the connection broke: {e}"),
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
                    "message" => deliver(&routes, frame),
                    op @ ("ok" | "error") => {
                        if let Some((reply, unroute, routed)) = reference.and_then(|r| waiting.remove(&r)) {
                            if let Some(sub) = unroute {
                                routes.remove(&sub);
                            }
                            if let (Some(sub), "error") = (routed, op) {
                                routes.remove(&sub);
                            }
                            let _ = reply.send(if op == "ok" { Ok(frame) } else { Err(frame) });
                        } else if let Some(route) = sub.and_then(|s| routes.remove(&s)) {
                            // A subscription failed on the hub and ended.
                            let _ = route.deliveries.try_send(Err(mapping::frame_error(&frame, "a subscription")));
                        }
                    }
                    _ => {}
                }
            }
        }
    };
    tracing::debug!(%endpoint, %reason, "websocket: connection to the hub ended");
    for (_, route) in routes.drain() {
        let _ = route.deliveries.try_send(Err(Error::Connection {
            broker: BROKER,
            endpoint: endpoint.clone(),
            reason: reason.clone(),
            source: None,
        }));
    }
    // Dropping `waiting` fails the requests still waiting for an answer.
}

fn deliver(routes: &HashMap<String, Route>, frame: Map<String, Json>) {
    let sub = frame.get("sub").and_then(Json::as_str).unwrap_or("");
    let Some(route) = routes.get(sub) else {
        // A late delivery of a closed subscription: the hub took it back already.
        return;
    };
    let tag = frame.get("tag").and_then(Json::as_u64).unwrap_or(0);
    let message = match mapping::get_message(&frame) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(sub, tag, error = %e, "websocket: an unreadable message from the hub, rejected");
            let _ = route.acker.settle(
                tag,
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
        handle: AckHandle::new(route.acker.clone(), tag),
    };
    // The hub hands out at most `max_in_flight` unsettled deliveries, the channel's size,
    // so this fits unless the consumer dropped the stream (then the handle nacks).
    let _ = route.deliveries.try_send(Ok(delivery));
}
