//! One task per MQTT connection owns its state; publishes and settlements reach it over
//! bounded channels, so nothing is locked per message.
//!
//! **Publish confirmation.** rumqttc reports the packet id of each outgoing publish, in the
//! order the publishes were queued ([`WireEvent::Sent`]), and later the PUBACK/PUBCOMP of
//! that id. The task queues each publish's reply in the same order it hands the publish to
//! the client, pairs it with the next new packet id, and resolves it on the confirmation.
//! A packet id already waiting is a retransmission after a reconnect, not a new publish.
//!
//! **Incoming acknowledgement.** A QoS 1/2 message is acknowledged (PUBACK/PUBREC) only when
//! its delivery is acked, and in the order the messages arrived, as MQTT requires: an ack that
//! comes early waits for the earlier messages. `nack` hands the message out again locally
//! (the broker still holds it unacknowledged, and redelivers it to the session after a
//! restart); `reject` publishes it to the dead-letter topic and acks it once that publish is
//! confirmed.
//!
//! **Bounded backlog.** The session announces `max_in_flight` as its Receive Maximum (MQTT 5)
//! or in-flight window, so a broker that keeps to it never has more than that many
//! unacknowledged messages out. Mosquitto 2.0.11 does not keep to it while it drains a
//! queued backlog (seen: 948 unacknowledged with a Receive Maximum of 10, ~10 000 with 256
//! after a sink outage). The session therefore stops reading the connection while it holds
//! [`BACKLOG_FACTOR`] × `max_in_flight` received and not yet acknowledged messages: the
//! bounded event channel fills, the client stops reading the socket and TCP holds the rest
//! back on the broker. Only deliveries handed to the route settle while it is paused, and
//! those do not need the connection, so the backlog drains and reading resumes; it does not
//! pause while a dead-letter publish waits for its confirmation (which needs the connection).
//! Nothing the session hands the client may wait while the client is not polled, or both
//! would wait for each other: acknowledgements are queued with `try_ack` and kept in order
//! in `unsent_acks` until the client takes them (retried every [`ACK_RETRY`]), and a
//! dead-letter publish the client cannot take now fails and is retried like any failed
//! dead-letter publish.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use polybridge_core::{
    well_known, AckHandle, Acknowledger, Delivery, DeliveryInfo, Error, Message, Result, Settlement,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::MqttConfig;
use crate::wire::{self, Client, Properties, RawPublish, WireEvent};
use crate::{mapping, BROKER};

/// What a session is asked to do.
pub(crate) enum Command {
    /// Publish and answer once the broker confirmed (QoS 1/2) or the packet was written
    /// (QoS 0).
    Publish {
        topic: String,
        payload: Bytes,
        properties: Properties,
        qos: u8,
        retain: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Settle a delivery of this session's subscription.
    Settle { token: u64, settlement: Settlement },
    /// Disconnect (keeping a persistent session on the broker) and stop.
    Close { done: oneshot::Sender<()> },
}

/// What a subscription session reads, and where its deliveries go.
pub(crate) struct SubscriptionSpec {
    pub filter: String,
    pub max_in_flight: usize,
    pub dead_letter: String,
    pub deliveries: mpsc::Sender<Result<Delivery>>,
    pub closed: Arc<AtomicBool>,
}

/// Settles deliveries by sending them to their session.
pub(crate) struct SessionAcker {
    pub commands: mpsc::Sender<Command>,
    pub closed: Arc<AtomicBool>,
    pub filter: String,
}

impl Acknowledger for SessionAcker {
    fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let closed = || Error::closed(BROKER, format!("the subscription to {}", self.filter));
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        self.commands
            .try_send(Command::Settle { token, settlement })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Closed(_) => closed(),
                mpsc::error::TrySendError::Full(_) => {
                    Error::transient(BROKER, &self.filter, "settlement queue full")
                }
            })
    }
}

/// The session stops reading its connection while it holds this many times `max_in_flight`
/// received, unacknowledged messages (only a broker exceeding the Receive Maximum gets there).
pub(crate) const BACKLOG_FACTOR: usize = 2;

/// How often acknowledgements the client could not take yet are offered again.
const ACK_RETRY: Duration = Duration::from_millis(2);

/// Starts a session; returns once it is connected (and subscribed, for a subscription).
pub(crate) async fn start(
    config: &MqttConfig,
    client_id: String,
    subscription: Option<SubscriptionSpec>,
    commands: mpsc::Receiver<Command>,
    acker: Option<Arc<dyn Acknowledger>>,
    endpoint: String,
) -> Result<()> {
    let receive_maximum = subscription
        .as_ref()
        .map(|s| u16::try_from(s.max_in_flight).unwrap_or(u16::MAX))
        .unwrap_or(1000);
    let (client, events) = wire::connect(config, &client_id, receive_maximum)?;
    let (ready_tx, ready_rx) = oneshot::channel();
    let session = Session {
        client,
        client_id,
        endpoint,
        qos: config.qos,
        carries_metadata: config.carries_metadata(),
        config: config.clone(),
        unassigned: VecDeque::new(),
        waiting_confirm: HashMap::new(),
        subscription: subscription.map(|spec| Subscribed {
            spec,
            acker: acker.clone(),
            epoch: 0,
            next_seq: 0,
            arrived: VecDeque::new(),
            messages: HashMap::new(),
            waiting: VecDeque::new(),
            handed: 0,
            delayed: Vec::new(),
            unsent_acks: VecDeque::new(),
            paused: false,
            pauses: 0,
        }),
        ready: Some(ready_tx),
        connected_before: false,
        quick_drops: 0,
        connected_at: None,
    };
    tokio::spawn(session.run(events, commands));
    match tokio::time::timeout(config.keep_alive.max(Duration::from_secs(10)), ready_rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(Error::closed(BROKER, "the connection")),
        Err(_) => Err(Error::Connection {
            broker: BROKER,
            endpoint: config_endpoint(config),
            reason: "no CONNACK from the broker in time".into(),
            source: None,
        }),
    }
}

fn config_endpoint(config: &MqttConfig) -> String {
    format!("mqtt://{}:{}", config.host, config.port)
}

/// A message received and not yet acknowledged to the broker.
struct Received {
    message: Message,
    topic: String,
    attempt: u32,
}

struct Subscribed {
    spec: SubscriptionSpec,
    acker: Option<Arc<dyn Acknowledger>>,
    /// Connection number: tokens of an earlier connection are void (the broker redelivers
    /// their messages to the resumed session).
    epoch: u64,
    next_seq: u64,
    /// QoS 1/2 messages in arrival order, with whether they were settled: PUBACKs go out
    /// from the front only.
    arrived: VecDeque<(u64, RawPublish, bool)>,
    /// Every message received and not yet acknowledged, by token.
    messages: HashMap<u64, Received>,
    /// Tokens to hand out, in order, when the in-flight limit allows.
    waiting: VecDeque<u64>,
    /// Deliveries handed out and not settled.
    handed: usize,
    /// Nacked with a delay: when to hand out again.
    delayed: Vec<(Instant, u64)>,
    /// Acknowledgements (PUBACK/PUBREC) due, in order, that the client has not taken yet
    /// (packet ids only). Not part of the backlog bound: they leave once the client is
    /// polled, which needs the session to go on reading.
    unsent_acks: VecDeque<RawPublish>,
    /// Whether reading is paused for the backlog.
    paused: bool,
    /// How many times reading was paused (the first pause is a warning, later ones debug).
    pauses: u64,
}

impl Subscribed {
    /// Whether the session holds so many received, unacknowledged messages that it should
    /// stop reading the connection (see "Bounded backlog" above).
    fn backlogged(&self) -> bool {
        let limit = self.spec.max_in_flight.saturating_mul(BACKLOG_FACTOR);
        self.arrived.len() >= limit || self.messages.len() >= limit
    }
}

struct Session {
    client: Client,
    client_id: String,
    endpoint: String,
    qos: u8,
    carries_metadata: bool,
    config: MqttConfig,
    /// Publish replies in the order their publishes went to the client, waiting for a
    /// packet id.
    unassigned: VecDeque<(u8, oneshot::Sender<Result<()>>, String)>,
    /// Publishes written, by packet id, waiting for PUBACK/PUBCOMP.
    waiting_confirm: HashMap<u16, (oneshot::Sender<Result<()>>, String)>,
    subscription: Option<Subscribed>,
    ready: Option<oneshot::Sender<Result<()>>>,
    connected_before: bool,
    /// MQTT 3.1.1 gives no reason for a drop: a client id used twice shows as drops soon
    /// after each connect.
    quick_drops: u32,
    connected_at: Option<Instant>,
}

type DeadLetterResult = (u64, Result<()>);

impl Session {
    /// Whether to stop reading the connection for now; logs when a pause starts and ends.
    fn backlogged(&mut self) -> bool {
        let Some(sub) = &mut self.subscription else {
            return false;
        };
        let backlogged = sub.backlogged();
        if backlogged != sub.paused {
            sub.paused = backlogged;
            if backlogged && sub.pauses == 0 {
                sub.pauses += 1;
                tracing::warn!(
                    broker = BROKER,
                    client_id = %self.client_id,
                    unacknowledged = sub.arrived.len().max(sub.messages.len()),
                    receive_maximum = sub.spec.max_in_flight,
                    "the broker sent more unacknowledged messages than the receive maximum; not reading until the backlog drains (logged once per session)"
                );
            } else if backlogged {
                sub.pauses += 1;
                tracing::debug!(broker = BROKER, client_id = %self.client_id, pauses = sub.pauses, "backlog full again; not reading");
            } else {
                tracing::debug!(broker = BROKER, client_id = %self.client_id, "backlog drained; reading again");
            }
        }
        backlogged
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<WireEvent>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut dead_letters: FuturesUnordered<
            std::pin::Pin<Box<dyn std::future::Future<Output = DeadLetterResult> + Send>>,
        > = FuturesUnordered::new();
        let mut close_done = None;
        loop {
            let next_due = self
                .subscription
                .as_ref()
                .and_then(|s| s.delayed.iter().map(|(at, _)| *at).min());
            let read = !self.backlogged() || !dead_letters.is_empty();
            let acks_unsent = self
                .subscription
                .as_ref()
                .is_some_and(|s| !s.unsent_acks.is_empty());
            tokio::select! {
                event = events.recv(), if read => match event {
                    Some(event) => {
                        if let Err(fatal) = self.on_event(event).await {
                            self.fail(fatal);
                            break;
                        }
                    }
                    None => {
                        self.fail(Error::closed(BROKER, "the connection"));
                        break;
                    }
                },
                command = commands.recv() => match command {
                    Some(Command::Publish { topic, payload, properties, qos, retain, reply }) => {
                        self.publish(topic, payload, properties, qos, retain, reply).await;
                    }
                    Some(Command::Settle { token, settlement }) => {
                        if let Some(dl) = self.settle(token, settlement).await {
                            dead_letters.push(dl);
                        }
                    }
                    Some(Command::Close { done }) => {
                        close_done = Some(done);
                        break;
                    }
                    None => break,
                },
                Some((token, result)) = dead_letters.next(), if !dead_letters.is_empty() => {
                    self.dead_lettered(token, result).await;
                }
                _ = sleep_until_opt(next_due) => self.hand_out_due().await,
                _ = tokio::time::sleep(ACK_RETRY), if acks_unsent => self.flush_acks(),
            }
        }
        if let Some(sub) = &self.subscription {
            sub.spec.closed.store(true, Ordering::Release);
        }
        // DISCONNECT goes out after every ack queued before it; wait until it is written so
        // the broker has those acks, and the connection is not reopened. Events are read
        // (and dropped: the broker redelivers what was not acknowledged) meanwhile, so the
        // client keeps polling and takes the acks and the DISCONNECT.
        let _ = tokio::time::timeout(wire::CLOSE_TIMEOUT + Duration::from_secs(1), async {
            loop {
                self.flush_acks();
                if self
                    .subscription
                    .as_ref()
                    .is_none_or(|s| s.unsent_acks.is_empty())
                {
                    break;
                }
                tokio::select! {
                    event = events.recv() => if event.is_none() { break },
                    _ = tokio::time::sleep(ACK_RETRY) => {}
                }
            }
            let disconnect = self.client.disconnect();
            tokio::pin!(disconnect);
            let mut sent = false;
            loop {
                tokio::select! {
                    _ = &mut disconnect, if !sent => sent = true,
                    event = events.recv() => match event {
                        Some(WireEvent::DisconnectSent) | None => break,
                        Some(_) => {}
                    },
                }
            }
        })
        .await;
        for (_, reply, topic) in self.unassigned.drain(..) {
            let _ = reply.send(Err(Error::closed(
                BROKER,
                format!("the publish to {topic}"),
            )));
        }
        for (_, (reply, topic)) in self.waiting_confirm.drain() {
            let _ = reply.send(Err(Error::transient(
                BROKER,
                topic,
                "the connection closed before the broker confirmed",
            )));
        }
        if let Some(done) = close_done {
            let _ = done.send(());
        }
    }

    /// Reports a fatal error to whoever waits: the first connect, pending publishes, the
    /// subscriber.
    fn fail(&mut self, error: Error) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(error));
            return;
        }
        tracing::error!(broker = BROKER, client_id = %self.client_id, error = %error, "MQTT connection stopped");
        if let Some(sub) = &self.subscription {
            let _ = sub.spec.deliveries.try_send(Err(error));
        }
    }

    async fn on_event(&mut self, event: WireEvent) -> Result<()> {
        match event {
            WireEvent::DisconnectSent => Ok(()),
            WireEvent::Connected { session_present } => {
                self.connected_at = Some(Instant::now());
                let resumed = self.connected_before;
                self.connected_before = true;
                if resumed {
                    tracing::info!(broker = BROKER, client_id = %self.client_id, session_present, "reconnected");
                }
                if resumed && !session_present {
                    // The broker lost our session: the client drops the publishes it was
                    // going to retransmit. Fail them so their callers retry.
                    for (_, (reply, topic)) in self.waiting_confirm.drain() {
                        let _ = reply.send(Err(Error::transient(
                            BROKER,
                            topic,
                            "the connection was lost and the broker lost the session before confirming; retry",
                        )));
                    }
                }
                let mut subscribe = None;
                if let Some(sub) = &mut self.subscription {
                    // A shared subscription is sent again even when the session is
                    // present: Mosquitto 2.0.11 restores sessions from its persistence file
                    // without their `$share/` subscriptions. Repeating a SUBSCRIBE replaces
                    // the subscription in place (MQTT 3.8.4), so it is harmless elsewhere.
                    let shared = sub.spec.filter.starts_with("$share/");
                    if !session_present || !resumed || shared {
                        subscribe = Some(sub.spec.filter.clone());
                    }
                }
                match subscribe {
                    Some(filter) => {
                        if let Err(e) = self.client.subscribe(&filter, self.qos).await {
                            return Err(Error::transient(BROKER, filter, e));
                        }
                    }
                    None => {
                        if let Some(ready) = self.ready.take() {
                            let _ = ready.send(Ok(()));
                        }
                    }
                }
                Ok(())
            }
            WireEvent::Subscribed { error } => {
                let filter = self
                    .subscription
                    .as_ref()
                    .map(|s| s.spec.filter.clone())
                    .unwrap_or_default();
                match error {
                    None => {
                        if let Some(ready) = self.ready.take() {
                            let _ = ready.send(Ok(()));
                        }
                        Ok(())
                    }
                    Some(reason) => Err(Error::permanent(BROKER, filter, reason)),
                }
            }
            WireEvent::Refused { reason, auth } => Err(if auth {
                Error::Auth {
                    broker: BROKER,
                    endpoint: self.endpoint.clone(),
                    reason,
                }
            } else {
                Error::Connection {
                    broker: BROKER,
                    endpoint: self.endpoint.clone(),
                    reason,
                    source: None,
                }
            }),
            WireEvent::Disconnected {
                reason,
                taken_over,
                quiesced,
            } => {
                if let Some(sub) = &mut self.subscription {
                    // Deliveries of the lost connection are void from now on: their settling
                    // sends nothing, and a persistent session gets their messages again
                    // from the broker.
                    sub.epoch += 1;
                    sub.arrived.clear();
                    sub.unsent_acks.clear();
                    sub.messages.clear();
                    sub.waiting.clear();
                    sub.delayed.clear();
                    sub.handed = 0;
                }
                if let Some(quiesced) = quiesced {
                    let _ = quiesced.send(());
                }
                let clash = || Error::Permanent {
                    broker: BROKER,
                    destination: self.client_id.clone(),
                    reason: format!(
                        "another client connected with client id {:?} and took over its session; \
                         give each connection its own client_id",
                        self.client_id
                    ),
                    source: None,
                };
                if taken_over {
                    return Err(clash());
                }
                if self.ready.is_some() {
                    // Not connected yet: the broker is down or refuses us. Keep trying
                    // until `start` gives up.
                    tracing::debug!(broker = BROKER, %reason, "connecting");
                    return Ok(());
                }
                let quick = self
                    .connected_at
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(2));
                self.quick_drops = if quick { self.quick_drops + 1 } else { 0 };
                if self.quick_drops >= 5 {
                    return Err(clash());
                }
                tracing::warn!(broker = BROKER, client_id = %self.client_id, %reason, "connection lost; reconnecting");
                Ok(())
            }
            WireEvent::Sent(pkid) => {
                if pkid != 0 && self.waiting_confirm.contains_key(&pkid) {
                    return Ok(()); // a retransmission
                }
                if let Some((qos, reply, topic)) = self.unassigned.pop_front() {
                    if qos == 0 || pkid == 0 {
                        let _ = reply.send(Ok(()));
                    } else {
                        self.waiting_confirm.insert(pkid, (reply, topic));
                    }
                }
                Ok(())
            }
            WireEvent::Confirmed { pkid, error } => {
                if let Some((reply, topic)) = self.waiting_confirm.remove(&pkid) {
                    let _ = reply.send(match error {
                        None => Ok(()),
                        Some(reason) => Err(Error::permanent(BROKER, topic, reason)),
                    });
                }
                Ok(())
            }
            WireEvent::Publish {
                topic,
                payload,
                qos,
                dup,
                properties,
                raw,
            } => {
                self.received(topic, payload, qos, dup, properties, raw)
                    .await;
                Ok(())
            }
        }
    }

    async fn publish(
        &mut self,
        topic: String,
        payload: Bytes,
        properties: Properties,
        qos: u8,
        retain: bool,
        reply: oneshot::Sender<Result<()>>,
    ) {
        // Queue the reply first: the packet id event cannot come before it.
        self.unassigned.push_back((qos, reply, topic.clone()));
        let queued = self
            .client
            .publish(topic.clone(), qos, retain, payload, properties)
            .await;
        self.fail_unqueued(topic, queued);
    }

    /// Like [`Session::publish`] without waiting for room in the client's queue: used by the
    /// subscription's own dead-letter publishes (see the module docs); a full queue fails the
    /// publish at once.
    fn publish_now(
        &mut self,
        topic: String,
        payload: Bytes,
        properties: Properties,
        qos: u8,
        reply: oneshot::Sender<Result<()>>,
    ) {
        self.unassigned.push_back((qos, reply, topic.clone()));
        let queued = self
            .client
            .try_publish(topic.clone(), qos, false, payload, properties);
        self.fail_unqueued(topic, queued);
    }

    /// When the client did not take the publish whose reply was queued last, answers that
    /// reply with the error.
    fn fail_unqueued(&mut self, topic: String, queued: std::result::Result<(), String>) {
        if let Err(e) = queued {
            if let Some((_, reply, _)) = self.unassigned.pop_back() {
                let _ = reply.send(Err(Error::transient(BROKER, topic, e)));
            }
        }
    }

    async fn received(
        &mut self,
        topic: String,
        payload: Bytes,
        qos: u8,
        dup: bool,
        properties: Properties,
        raw: RawPublish,
    ) {
        let Some(sub) = &mut self.subscription else {
            return;
        };
        let (message, attempt) = mapping::from_mqtt(payload, properties);
        tracing::trace!(broker = BROKER, %topic, qos, dup, id = %message.id, "received");
        let token = (sub.epoch << 40) | sub.next_seq;
        sub.next_seq += 1;
        if qos > 0 {
            sub.arrived.push_back((token, raw, false));
        }
        sub.messages.insert(
            token,
            Received {
                message,
                topic,
                attempt: if dup { attempt.max(2) } else { attempt },
            },
        );
        sub.waiting.push_back(token);
        self.hand_out().await;
    }

    /// Hands out waiting messages while the in-flight limit allows.
    async fn hand_out(&mut self) {
        let Some(sub) = &mut self.subscription else {
            return;
        };
        let Some(acker) = sub.acker.clone() else {
            return;
        };
        while sub.handed < sub.spec.max_in_flight {
            let Some(token) = sub.waiting.pop_front() else {
                break;
            };
            let Some(received) = sub.messages.get(&token) else {
                continue;
            };
            let delivery = Delivery {
                message: received.message.clone(),
                info: DeliveryInfo {
                    topic: received.topic.clone(),
                    attempt: received.attempt,
                    redelivered: received.attempt > 1,
                    position: None,
                    partition: None,
                },
                handle: AckHandle::new(acker.clone(), token),
            };
            sub.handed += 1;
            if sub.spec.deliveries.send(Ok(delivery)).await.is_err() {
                return;
            }
        }
    }

    async fn hand_out_due(&mut self) {
        if let Some(sub) = &mut self.subscription {
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut sub.delayed)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            sub.delayed = later;
            for (_, token) in due {
                sub.waiting.push_front(token);
            }
        }
        self.hand_out().await;
    }

    /// Applies a settlement; returns the dead-letter publish to wait for, for a reject.
    async fn settle(
        &mut self,
        token: u64,
        settlement: Settlement,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = DeadLetterResult> + Send>>> {
        let sub = self.subscription.as_mut()?;
        if token >> 40 != sub.epoch || !sub.messages.contains_key(&token) {
            // A delivery of an earlier connection: the broker redelivers it.
            return None;
        }
        sub.handed = sub.handed.saturating_sub(1);
        tracing::trace!(
            broker = BROKER,
            token,
            ?settlement,
            handed = sub.handed,
            arrived = sub.arrived.len(),
            waiting = sub.waiting.len(),
            "settle"
        );
        match settlement {
            Settlement::Ack => {
                self.acknowledge(token);
                self.hand_out().await;
                None
            }
            Settlement::Nack { delay } => {
                if let Some(r) = sub.messages.get_mut(&token) {
                    r.attempt += 1;
                }
                match delay {
                    None => sub.waiting.push_front(token),
                    Some(d) => sub.delayed.push((Instant::now() + d, token)),
                }
                self.hand_out().await;
                None
            }
            Settlement::Reject { reason } => {
                let received = sub.messages.get(&token)?;
                let mut message = received.message.clone();
                message.headers.set(well_known::REJECT_REASON, reason);
                message
                    .headers
                    .set(well_known::ORIGINAL_TOPIC, received.topic.as_str());
                message
                    .headers
                    .set(well_known::ATTEMPTS, received.attempt.to_string());
                let dead_letter = sub.spec.dead_letter.replace("{topic}", &received.topic);
                if !self.carries_metadata {
                    tracing::warn!(broker = BROKER, topic = %dead_letter, "dead-lettering on MQTT 3.1.1 without envelopes: the reason headers cannot travel");
                }
                let (payload, properties) = mapping::to_mqtt(&self.config, &message);
                let (reply_tx, reply_rx) = oneshot::channel();
                let qos = self.qos.max(1);
                self.publish_now(dead_letter, payload, properties, qos, reply_tx);
                Some(Box::pin(async move {
                    (
                        token,
                        reply_rx
                            .await
                            .unwrap_or_else(|_| Err(Error::closed(BROKER, "the connection"))),
                    )
                }))
            }
        }
    }

    async fn dead_lettered(&mut self, token: u64, result: Result<()>) {
        let Some(sub) = &mut self.subscription else {
            return;
        };
        if token >> 40 != sub.epoch {
            return;
        }
        match result {
            Ok(()) => self.acknowledge(token),
            Err(e) => {
                tracing::warn!(broker = BROKER, error = %e, "cannot dead-letter a rejected message; handing it out again in 1s");
                sub.delayed
                    .push((Instant::now() + Duration::from_secs(1), token));
            }
        }
    }

    /// Marks `token` settled and queues the PUBACKs that are now in order.
    fn acknowledge(&mut self, token: u64) {
        let Some(sub) = &mut self.subscription else {
            return;
        };
        sub.messages.remove(&token);
        if let Some(entry) = sub.arrived.iter_mut().find(|(t, _, _)| *t == token) {
            entry.2 = true;
        }
        while sub.arrived.front().is_some_and(|(_, _, settled)| *settled) {
            if let Some((token, raw, _)) = sub.arrived.pop_front() {
                tracing::trace!(broker = BROKER, token, "puback");
                sub.unsent_acks.push_back(raw.into_ack_only());
            }
        }
        self.flush_acks();
    }

    /// Hands the client the acknowledgements it will take now, in order.
    fn flush_acks(&mut self) {
        let Some(sub) = &mut self.subscription else {
            return;
        };
        while let Some(raw) = sub.unsent_acks.front() {
            if !self.client.try_ack(raw) {
                break;
            }
            sub.unsent_acks.pop_front();
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
