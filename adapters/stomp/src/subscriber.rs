//! Subscriptions: one connection and one task each.
//!
//! The task owns the connection and selects over: frames from the server, settlements from
//! [`AckHandle`]s, timers of delayed nacks, room in the delivery channel, and the close
//! signal. Deliveries are handed out only while fewer than `max_in_flight` are unsettled;
//! the broker's prefetch is set to the same bound, so the local queue stays small.
//!
//! When the connection breaks the task reconnects with backoff and subscribes again; the
//! broker redelivers what was not acknowledged. Settlements of deliveries from the old
//! connection are dropped (their tokens carry the connection's generation), never sent on
//! the new one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use polybridge_core::{
    well_known, AckHandle, Acknowledger, Delivery, DeliveryInfo, DeliveryStream, Error, Message,
    Position, Result, Settlement, StartPosition, Subscription,
};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Flavor, StompConfig};
use crate::connection::{error_text, Link};
use crate::frame::Frame;
use crate::mapping::{self, SubscribePlan};
use crate::BROKER;

const SUBSCRIPTION_ID: &str = "pb-0";
const GENERATION_SHIFT: u32 = 40;

/// Options a subscription accepts.
const OPTIONS: &[&str] = &["durable"];

struct Acker {
    tx: mpsc::UnboundedSender<(u64, Settlement)>,
}

impl Acknowledger for Acker {
    fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        // Unbounded, but bounded in practice: each token settles once and at most
        // `max_in_flight` tokens are out.
        self.tx
            .send((token, settlement))
            .map_err(|_| Error::closed(BROKER, "the subscription"))
    }
}

/// A received message not yet settled.
struct Held {
    ack_id: String,
    message: Message,
    info: DeliveryInfo,
}

enum HeldState {
    /// Handed to the consumer.
    Out(Held),
    /// Nacked with a delay; the timer brings it back.
    Delayed(Held),
    /// Being dead-lettered; ACKed when the dead-letter SEND's receipt arrives.
    DeadLettering,
}

enum ReceiptAction {
    Subscribed,
    AckAfterDeadLetter { token: u64, ack_id: String },
}

pub(crate) struct Shared {
    pub config: Arc<StompConfig>,
    pub flavor: Flavor,
}

struct Task {
    shared: Arc<Shared>,
    plan: SubscribePlan,
    prefetch: usize,
    max_in_flight: usize,
    dead_letter: Option<String>,
    what: String,
    link: Option<Link>,
    generation: u64,
    seq: u64,
    queue: VecDeque<Held>,
    held: HashMap<u64, HeldState>,
    receipts: HashMap<String, ReceiptAction>,
    next_receipt: u64,
    subscribed: bool,
    acker: Arc<Acker>,
    settle_rx: mpsc::UnboundedReceiver<(u64, Settlement)>,
    timer_tx: mpsc::UnboundedSender<u64>,
    timer_rx: mpsc::UnboundedReceiver<u64>,
    deliveries: mpsc::Sender<Result<Delivery>>,
}

/// Starts a subscription; returns once the broker confirmed the SUBSCRIBE.
pub(crate) async fn subscribe(shared: Arc<Shared>, sub: Subscription) -> Result<DeliveryStream> {
    for name in sub.options.keys() {
        if !OPTIONS.contains(&name.as_str()) {
            return Err(Error::config(
                BROKER,
                format!(
                    "unknown subscription option {name:?}; known options: {}",
                    OPTIONS.join(", ")
                ),
            ));
        }
    }
    let durable = sub.options.get("durable").map(String::as_str);
    let plan = mapping::subscribe_plan(shared.flavor, &sub.pattern, sub.group.as_deref(), durable)?;
    match &sub.start {
        StartPosition::Latest => {}
        StartPosition::Earliest if plan.queue => {}
        other => {
            return Err(Error::unsupported(
                BROKER,
                format!(
                    "start position {other:?} for {}: STOMP brokers do not replay; only a queue keeps what was sent before a consumer came",
                    plan.destination
                ),
            ))
        }
    }
    let max_in_flight = sub.max_in_flight.max(1);
    let prefetch = shared.config.prefetch.unwrap_or(max_in_flight);
    let (settle_tx, settle_rx) = mpsc::unbounded_channel();
    let (timer_tx, timer_rx) = mpsc::unbounded_channel();
    // Room for every unsettled delivery plus a final error.
    let (deliveries, stream_rx) = mpsc::channel(max_in_flight + 1);
    let what = format!("the subscription to {}", plan.destination);
    let mut task = Task {
        dead_letter: sub
            .dead_letter
            .clone()
            .or(shared.config.dead_letter.clone()),
        shared,
        plan,
        prefetch,
        max_in_flight,
        what,
        link: None,
        generation: 0,
        seq: 0,
        queue: VecDeque::new(),
        held: HashMap::new(),
        receipts: HashMap::new(),
        next_receipt: 0,
        subscribed: false,
        acker: Arc::new(Acker { tx: settle_tx }),
        settle_rx,
        timer_tx,
        timer_rx,
        deliveries,
    };
    task.connect_and_subscribe(true).await?;
    let (close_tx, close_rx) = oneshot::channel();
    let (closed_tx, closed_rx) = oneshot::channel();
    tokio::spawn(async move {
        task.run(close_rx).await;
        drop(closed_tx);
    });
    Ok(DeliveryStream::new(stream_rx, close_tx, closed_rx))
}

async fn next_frame(link: &mut Option<Link>) -> Result<Frame> {
    match link.as_mut() {
        Some(l) => l.recv().await,
        None => futures::future::pending().await,
    }
}

impl Task {
    fn token(&mut self) -> u64 {
        self.seq += 1;
        (self.generation << GENERATION_SHIFT) | (self.seq & ((1 << GENERATION_SHIFT) - 1))
    }

    fn subscribe_frame(&mut self) -> Frame {
        let mut f = Frame::new("SUBSCRIBE")
            .with_header("id", SUBSCRIPTION_ID)
            .with_header("destination", self.plan.destination.clone())
            .with_header("ack", "client-individual");
        match self.shared.flavor {
            Flavor::ActiveMq => f.header_push("activemq.prefetchSize", self.prefetch.to_string()),
            Flavor::RabbitMq => f.header_push("prefetch-count", self.prefetch.to_string()),
            Flavor::Generic => {}
        }
        for (n, v) in &self.plan.headers {
            f.header_push(n.clone(), v.clone());
        }
        f
    }

    fn receipt_id(&mut self) -> String {
        self.next_receipt += 1;
        format!("s{}", self.next_receipt)
    }

    /// Connects and SUBSCRIBEs. With `wait`, waits for the SUBSCRIBE's RECEIPT (the first
    /// subscribe, so `subscribe` returns once the broker registered it).
    async fn connect_and_subscribe(&mut self, wait: bool) -> Result<()> {
        let config = self.shared.config.clone();
        let mut link = Link::connect(&config, self.plan.client_id.as_deref()).await?;
        let receipt = self.receipt_id();
        let frame = self
            .subscribe_frame()
            .with_header("receipt", receipt.clone());
        link.send(frame).await?;
        self.subscribed = false;
        if wait {
            let within = config.receipt_timeout;
            let outcome = tokio::time::timeout(within, async {
                loop {
                    let f = link.recv().await?;
                    match f.command.as_str() {
                        "RECEIPT" if f.header("receipt-id") == Some(receipt.as_str()) => {
                            return Ok(())
                        }
                        "ERROR" => {
                            return Err(Error::permanent(
                                BROKER,
                                self.plan.destination.clone(),
                                format!("the broker refused SUBSCRIBE: {}", error_text(&f)),
                            ))
                        }
                        "MESSAGE" => self.on_message(&f),
                        _ => {}
                    }
                }
            })
            .await;
            match outcome {
                Err(_) => {
                    return Err(Error::Timeout {
                        broker: BROKER,
                        operation: "subscribe",
                        destination: self.plan.destination.clone(),
                        after: within,
                    })
                }
                Ok(r) => r?,
            }
            self.subscribed = true;
        } else {
            self.receipts.insert(receipt, ReceiptAction::Subscribed);
        }
        self.link = Some(link);
        Ok(())
    }

    fn on_message(&mut self, f: &Frame) {
        let Some(ack_id) = f.header("ack").or(f.header("message-id")) else {
            tracing::warn!(what = %self.what, "a MESSAGE without ack or message-id header: ignored (the broker redelivers it on reconnect)");
            return;
        };
        let redelivered = f.header("redelivered") == Some("true");
        let destination = f.header("destination").unwrap_or(&self.plan.destination);
        let info = DeliveryInfo {
            topic: mapping::topic_of(self.shared.flavor, destination),
            attempt: if redelivered { 0 } else { 1 },
            redelivered,
            position: Some(Position::Tag(ack_id.to_owned())),
            partition: None,
        };
        self.queue.push_back(Held {
            ack_id: ack_id.to_owned(),
            message: mapping::decode_message(f),
            info,
        });
    }

    async fn send(&mut self, frame: Frame) {
        if let Some(l) = self.link.as_mut() {
            if let Err(e) = l.send(frame).await {
                self.broken(e);
            }
        }
    }

    /// The connection is gone: forget its deliveries (the broker redelivers them).
    fn broken(&mut self, e: Error) {
        tracing::warn!(what = %self.what, error = %e, "stomp subscription connection lost; reconnecting");
        self.link = None;
        self.generation += 1;
        self.queue.clear();
        self.held.clear();
        self.receipts.clear();
    }

    fn ack_frame(ack_id: &str) -> Frame {
        Frame::new("ACK").with_header("id", ack_id)
    }

    /// Nack now: ActiveMQ treats NACK as "poison" (it dead-letters to `ActiveMQ.DLQ`), so
    /// there the message, still unacknowledged at the broker, is handed out again locally;
    /// elsewhere it is a NACK (RabbitMQ requeues).
    async fn nack_now(&mut self, mut held: Held) {
        if self.shared.flavor == Flavor::ActiveMq {
            held.info.redelivered = true;
            if held.info.attempt != 0 {
                held.info.attempt += 1;
            }
            self.queue.push_front(held);
        } else {
            let f = Frame::new("NACK").with_header("id", held.ack_id);
            self.send(f).await;
        }
    }

    async fn settle(&mut self, token: u64, settlement: Settlement) {
        if token >> GENERATION_SHIFT != self.generation {
            tracing::debug!(what = %self.what, "a settlement of a delivery from an earlier connection was dropped; the broker redelivers it");
            return;
        }
        let Some(HeldState::Out(held)) = self.held.remove(&token) else {
            return;
        };
        match settlement {
            Settlement::Ack => self.send(Self::ack_frame(&held.ack_id)).await,
            Settlement::Nack { delay: None } => self.nack_now(held).await,
            Settlement::Nack { delay: Some(d) } => {
                self.held.insert(token, HeldState::Delayed(held));
                let tx = self.timer_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = tx.send(token);
                });
            }
            Settlement::Reject { reason } => {
                let dest = self.dead_letter.clone().unwrap_or_else(|| {
                    let topic = held.info.topic.trim_start_matches('/').replace('/', ".");
                    format!("/queue/{topic}.dlq")
                });
                let dest = match mapping::destination(self.shared.flavor, &dest) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(what = %self.what, error = %e, "cannot dead-letter: the message is nacked instead");
                        self.nack_now(held).await;
                        return;
                    }
                };
                let mut message = held.message;
                message.headers.set(well_known::REJECT_REASON, reason);
                message
                    .headers
                    .set(well_known::ORIGINAL_TOPIC, held.info.topic.clone());
                message
                    .headers
                    .set(well_known::ATTEMPTS, held.info.attempt.max(1).to_string());
                let receipt = self.receipt_id();
                let mut frame = Frame::new("SEND")
                    .with_header("destination", dest)
                    .with_header("persistent", "true")
                    .with_header("receipt", receipt.clone())
                    .with_body(message.payload.clone());
                mapping::encode_headers(&message, &mut frame);
                self.held.insert(token, HeldState::DeadLettering);
                self.receipts.insert(
                    receipt,
                    ReceiptAction::AckAfterDeadLetter {
                        token,
                        ack_id: held.ack_id,
                    },
                );
                self.send(frame).await;
                // Bound the wait for the receipt: see `timer`.
                let tx = self.timer_tx.clone();
                let within = self.shared.config.receipt_timeout;
                tokio::spawn(async move {
                    tokio::time::sleep(within).await;
                    let _ = tx.send(token);
                });
            }
        }
    }

    /// A timer fired: a delayed nack is due, or a dead-letter SEND got no receipt in time.
    async fn timer(&mut self, token: u64) {
        if token >> GENERATION_SHIFT != self.generation {
            return;
        }
        match self.held.remove(&token) {
            Some(HeldState::Delayed(held)) => self.nack_now(held).await,
            Some(HeldState::DeadLettering) => {
                // Whether the dead letter was stored is unknown: drop the connection without
                // acknowledging, so the broker redelivers the original (at least once).
                let within = self.shared.config.receipt_timeout;
                self.broken(Error::transient(
                    BROKER,
                    self.plan.destination.clone(),
                    format!(
                        "no RECEIPT for a dead-letter SEND within {within:?} (receipt_timeout)"
                    ),
                ));
            }
            Some(other) => {
                self.held.insert(token, other);
            }
            None => {}
        }
    }

    async fn on_frame(&mut self, f: Frame) {
        match f.command.as_str() {
            "MESSAGE" => self.on_message(&f),
            "RECEIPT" => match f
                .header("receipt-id")
                .and_then(|id| self.receipts.remove(id))
            {
                Some(ReceiptAction::Subscribed) => self.subscribed = true,
                Some(ReceiptAction::AckAfterDeadLetter { token, ack_id }) => {
                    self.held.remove(&token);
                    self.send(Self::ack_frame(&ack_id)).await;
                }
                None => {}
            },
            "ERROR" => {
                let text = error_text(&f);
                self.broken(Error::transient(
                    BROKER,
                    self.plan.destination.clone(),
                    format!("the broker sent ERROR: {text}"),
                ));
            }
            other => tracing::debug!(command = other, "stomp subscription ignored a frame"),
        }
    }

    fn in_flight(&self) -> usize {
        self.held.len()
    }

    async fn run(mut self, mut close_rx: oneshot::Receiver<()>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.link.is_none() {
                // Reconnect with backoff until it works or the consumer closes.
                tokio::select! {
                    _ = &mut close_rx => break,
                    _ = self.deliveries.closed() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match self.connect_and_subscribe(false).await {
                    Ok(()) => {
                        tracing::info!(what = %self.what, "stomp subscription reconnected");
                        backoff = Duration::from_millis(100);
                    }
                    Err(e @ (Error::Auth { .. } | Error::Config { .. })) => {
                        let _ = self.deliveries.try_send(Err(e));
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(what = %self.what, error = %e, "stomp reconnect failed");
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                continue;
            }
            let can_hand_out = !self.queue.is_empty() && self.in_flight() < self.max_in_flight;
            let deliveries = self.deliveries.clone();
            tokio::select! {
                _ = &mut close_rx => break,
                Some((token, s)) = self.settle_rx.recv() => self.settle(token, s).await,
                Some(token) = self.timer_rx.recv() => self.timer(token).await,
                permit = deliveries.reserve(), if can_hand_out => {
                    let Ok(permit) = permit else { break };
                    if let Some(held) = self.queue.pop_front() {
                        let token = self.token();
                        let delivery = Delivery {
                            message: held.message.clone(),
                            info: held.info.clone(),
                            handle: AckHandle::new(self.acker.clone(), token),
                        };
                        self.held.insert(token, HeldState::Out(held));
                        permit.send(Ok(delivery));
                    }
                }
                _ = deliveries.closed(), if !can_hand_out => break,
                frame = next_frame(&mut self.link) => match frame {
                    Ok(f) => self.on_frame(f).await,
                    Err(Error::PayloadTooLarge { size, limit, .. }) => {
                        // Reconnecting would only get the same message again: end the
                        // subscription with the error. The connection is dropped without
                        // acknowledging, so the broker keeps the message.
                        let e = Error::PayloadTooLarge {
                            broker: BROKER,
                            destination: self.plan.destination.clone(),
                            size,
                            limit,
                        };
                        tracing::error!(what = %self.what, error = %e, "stomp subscription ended: a frame exceeds max_frame");
                        self.link = None;
                        let _ = self.deliveries.try_send(Err(e));
                        break;
                    }
                    Err(e) => self.broken(e),
                },
            }
        }
        // Send the acks already made, then DISCONNECT: the broker takes back the rest.
        while let Ok((token, s)) = self.settle_rx.try_recv() {
            if s == Settlement::Ack {
                self.settle(token, s).await;
            }
        }
        if let Some(link) = self.link.take() {
            link.disconnect(Duration::from_secs(2)).await;
        }
    }
}
