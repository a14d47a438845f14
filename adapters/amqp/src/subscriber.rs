//! Subscribing: one channel and one consumer per subscription, `basic.qos` prefetch, manual
//! acks, and resumption after a lost channel or connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};
use polybridge_core::{
    well_known, AckHandle, Acknowledger, Delivery, DeliveryInfo, DeliveryStream, Error, Position,
    Result, Settlement, StartPosition, Subscriber, Subscription,
};
use tokio::sync::{mpsc, oneshot};

use crate::connection::{lapin_error, queue_arguments, Link};
use crate::mapping;
use crate::publisher::publish_confirmed;
use crate::{AmqpBroker, BROKER};

/// Subscription options this adapter reads (see the crate docs).
const OPTIONS: &[&str] = &["queue", "declare", "exchange"];

/// Delivery tags use the low 48 bits of a token; the high 16 bits are the channel epoch.
const TAG_BITS: u32 = 48;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// Which queue a subscription consumes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum QueueKind {
    /// An existing named queue (declared only with `declare=true`).
    Named { name: String, declare: bool },
    /// A server-named exclusive auto-delete queue: a private subscription.
    Private,
    /// A durable queue shared by the members of a group.
    Group { name: String },
}

/// What a subscription declares and consumes.
#[derive(Clone, Debug)]
struct Plan {
    queue: QueueKind,
    /// Exchange and binding key, for topic subscriptions.
    binding: Option<(String, String)>,
    prefetch: u16,
    dead_letter: Option<String>,
    /// For errors and logs.
    what: String,
}

impl Plan {
    fn new(link: &Link, sub: &Subscription) -> Result<Plan> {
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
        match &sub.start {
            StartPosition::Latest | StartPosition::Earliest => {}
            other => {
                return Err(Error::unsupported(
                    BROKER,
                    format!("start position {other:?}: a RabbitMQ queue has no history to seek in"),
                ))
            }
        }
        let declare = match sub.options.get("declare").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(Error::config(
                    BROKER,
                    format!("subscription option declare={other:?}: expected true or false"),
                ))
            }
        };
        let text = sub.pattern.to_string();
        let named = sub.options.get("queue").cloned().or_else(|| {
            sub.pattern
                .is_literal()
                .then(|| text.strip_prefix("queue:").map(str::to_owned))
                .flatten()
        });
        let exchange = sub
            .options
            .get("exchange")
            .cloned()
            .unwrap_or_else(|| link.config.exchange.clone());
        let (queue, binding) = match named {
            Some(name) if name.is_empty() => {
                return Err(Error::config(BROKER, "an empty queue name"));
            }
            Some(name) => (QueueKind::Named { name, declare }, None),
            None => {
                let key = sub.pattern.to_amqp()?;
                let queue = match &sub.group {
                    Some(group) => {
                        let name = format!("{group}/{key}");
                        if name.len() > 255 {
                            return Err(Error::config(
                                BROKER,
                                format!("group queue name {name:?} is longer than 255 bytes"),
                            ));
                        }
                        QueueKind::Group { name }
                    }
                    None => QueueKind::Private,
                };
                (queue, Some((exchange, key)))
            }
        };
        let prefetch = link
            .config
            .prefetch
            .unwrap_or_else(|| u16::try_from(sub.max_in_flight.max(1)).unwrap_or(u16::MAX));
        Ok(Plan {
            queue,
            binding,
            prefetch,
            dead_letter: sub
                .dead_letter
                .clone()
                .or_else(|| link.config.dead_letter.clone()),
            what: format!("the subscription to {text}"),
        })
    }
}

/// The settling side handed to deliveries.
struct Acker {
    settle: mpsc::Sender<(u64, Settlement)>,
    closed: AtomicBool,
    what: String,
}

impl Acknowledger for Acker {
    fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(BROKER, self.what.clone()));
        }
        self.settle
            .try_send((token, settlement))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::transient(
                    BROKER,
                    self.what.clone(),
                    "too many settlements queued; retry",
                ),
                mpsc::error::TrySendError::Closed(_) => Error::closed(BROKER, self.what.clone()),
            })
    }
}

/// What a delivery needs if it is rejected.
struct Pending {
    properties: BasicProperties,
    payload: Bytes,
    routing_key: String,
    attempt: u32,
}

/// The task behind one subscription.
struct Worker {
    link: Arc<Link>,
    plan: Plan,
    deliveries: mpsc::Sender<Result<Delivery>>,
    settlements: mpsc::Receiver<(u64, Settlement)>,
    acker: Arc<Acker>,
    /// Incremented for every new channel; tokens of older channels are stale.
    epoch: u64,
    channel: Option<Channel>,
    consumer: Option<Consumer>,
    pending: HashMap<u64, Pending>,
    /// The subscription's in-flight limit.
    limit: usize,
    /// Deliveries handed out and not yet settled, including those of a lost channel that
    /// the consumer still holds: no new delivery is taken from the broker while this is at
    /// `limit`, whatever the prefetch.
    outstanding: usize,
}

impl Worker {
    /// Opens a channel, declares and binds the queue, and starts consuming.
    async fn start(&mut self) -> Result<()> {
        let plan = &self.plan;
        let connection = self.link.connection().await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| lapin_error(e, &plan.what))?;
        channel
            .basic_qos(plan.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| lapin_error(e, &plan.what))?;
        let config = &self.link.config;
        let arguments = queue_arguments(config);
        let queue = match &plan.queue {
            QueueKind::Named { name, declare } => {
                let (options, arguments) = if *declare {
                    (
                        QueueDeclareOptions {
                            durable: config.durable,
                            ..QueueDeclareOptions::default()
                        },
                        arguments,
                    )
                } else {
                    (
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                };
                channel
                    .queue_declare(name, options, arguments)
                    .await
                    .map_err(|e| lapin_error(e, &format!("queue {name:?}")))?;
                name.clone()
            }
            QueueKind::Private => channel
                .queue_declare(
                    "",
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| lapin_error(e, &plan.what))?
                .name()
                .as_str()
                .to_owned(),
            QueueKind::Group { name } => {
                channel
                    .queue_declare(
                        name,
                        QueueDeclareOptions {
                            durable: config.durable,
                            ..QueueDeclareOptions::default()
                        },
                        arguments,
                    )
                    .await
                    .map_err(|e| lapin_error(e, &format!("queue {name:?}")))?;
                name.clone()
            }
        };
        if let Some((exchange, key)) = &plan.binding {
            channel
                .queue_bind(
                    &queue,
                    exchange,
                    key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| lapin_error(e, &format!("exchange {exchange:?}")))?;
        }
        let consumer = channel
            .basic_consume(
                &queue,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| lapin_error(e, &format!("queue {queue:?}")))?;
        self.epoch = (self.epoch + 1) & 0xffff;
        self.channel = Some(channel);
        self.consumer = Some(consumer);
        self.pending.clear();
        Ok(())
    }

    async fn run(mut self, mut close: oneshot::Receiver<()>, closed: oneshot::Sender<()>) {
        while let Some(consumer) = self.consumer.as_mut() {
            tokio::select! {
                biased;
                _ = &mut close => break,
                Some((token, settlement)) = self.settlements.recv() => {
                    self.settle(token, settlement).await;
                }
                item = consumer.next(), if self.outstanding < self.limit => match item {
                    Some(Ok(delivery)) => {
                        let delivery = self.delivery(delivery);
                        self.outstanding += 1;
                        let sent = tokio::select! {
                            r = self.deliveries.send(Ok(delivery)) => r.is_ok(),
                            _ = &mut close => false,
                        };
                        if !sent {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(broker = BROKER, subscription = %self.plan.what, error = %e, "consumer lost; resuming");
                        if !self.resume(&mut close).await {
                            break;
                        }
                    }
                    None => {
                        tracing::warn!(broker = BROKER, subscription = %self.plan.what, "consumer ended; resuming");
                        if !self.resume(&mut close).await {
                            break;
                        }
                    }
                },
            }
        }
        self.acker.closed.store(true, Ordering::Release);
        self.consumer = None;
        // Settlements made before the close reach the broker before the channel closes.
        while let Ok((token, settlement)) = self.settlements.try_recv() {
            self.settle(token, settlement).await;
        }
        if let Some(channel) = self.channel.take() {
            // Closing the channel returns every unacknowledged delivery to the queue.
            let _ = channel.close(200, "polybridge: subscription closed").await;
        }
        drop(closed);
    }

    /// Re-opens the subscription after a lost channel or connection, with backoff. Returns
    /// false when it should end (closed, or a failure retrying cannot fix).
    async fn resume(&mut self, close: &mut oneshot::Receiver<()>) -> bool {
        self.consumer = None;
        if let Some(channel) = self.channel.take() {
            // A channel that is still open (the broker cancelled the consumer) is closed so
            // that its unacknowledged deliveries go back to the queue now.
            if channel.status().connected() {
                let _ = channel.close(200, "polybridge: resuming").await;
            }
        }
        self.pending.clear();
        let mut attempt = 0u32;
        loop {
            let pause = self.link.resume_pause(attempt);
            tokio::select! {
                _ = &mut *close => return false,
                _ = tokio::time::sleep(pause) => {}
            }
            match self.start().await {
                Ok(()) => {
                    tracing::info!(broker = BROKER, subscription = %self.plan.what, "resumed");
                    return true;
                }
                Err(e) if e.is_retryable() => {
                    tracing::debug!(broker = BROKER, subscription = %self.plan.what, error = %e, "resume failed; retrying");
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => {
                    tracing::error!(broker = BROKER, subscription = %self.plan.what, error = %e, "cannot resume");
                    tokio::select! {
                        _ = self.deliveries.send(Err(e)) => {}
                        _ = &mut *close => {}
                    }
                    return false;
                }
            }
        }
    }

    fn delivery(&mut self, d: lapin::message::Delivery) -> Delivery {
        let tag = d.delivery_tag & TAG_MASK;
        let token = (self.epoch << TAG_BITS) | tag;
        let payload = Bytes::from(d.data);
        let message = mapping::message(&d.properties, payload.clone());
        let attempt = match mapping::delivery_count(&d.properties) {
            Some(n) => n.saturating_add(1),
            None if d.redelivered => 0,
            None => 1,
        };
        let routing_key = d.routing_key.as_str().to_owned();
        self.pending.insert(
            tag,
            Pending {
                properties: d.properties,
                payload,
                routing_key: routing_key.clone(),
                attempt,
            },
        );
        Delivery {
            message,
            info: DeliveryInfo {
                topic: routing_key,
                attempt,
                redelivered: d.redelivered || attempt > 1,
                position: Some(Position::Tag(tag.to_string())),
                partition: None,
            },
            handle: AckHandle::new(self.acker.clone(), token),
        }
    }

    async fn settle(&mut self, token: u64, settlement: Settlement) {
        self.outstanding = self.outstanding.saturating_sub(1);
        let tag = token & TAG_MASK;
        if token >> TAG_BITS != self.epoch {
            tracing::debug!(
                broker = BROKER,
                tag,
                "settlement of a delivery from a lost channel dropped; the broker redelivers it"
            );
            return;
        }
        let pending = self.pending.remove(&tag);
        let Some(channel) = self.channel.clone() else {
            return;
        };
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        let result = match settlement {
            Settlement::Ack => channel.basic_ack(tag, BasicAckOptions::default()).await,
            Settlement::Nack { delay: None } => channel.basic_nack(tag, requeue).await,
            Settlement::Nack { delay: Some(delay) } => {
                // Emulated: the delivery is held (keeping its prefetch slot) and nacked with
                // requeue once the delay has passed.
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Err(e) = channel.basic_nack(tag, requeue).await {
                        tracing::debug!(broker = BROKER, tag, error = %e, "delayed nack not sent; the broker redelivers when the channel closes");
                    }
                });
                Ok(())
            }
            Settlement::Reject { reason } => match (&self.plan.dead_letter, pending) {
                (Some(destination), Some(pending)) => {
                    let link = self.link.clone();
                    let destination = destination.clone();
                    tokio::spawn(async move {
                        let done = dead_letter(&link, &destination, pending, &reason).await;
                        let r = match done {
                            Ok(()) => channel.basic_ack(tag, BasicAckOptions::default()).await,
                            Err(e) => {
                                tracing::warn!(broker = BROKER, destination = %destination, error = %e, "dead-lettering failed; the message is requeued");
                                channel.basic_nack(tag, requeue).await
                            }
                        };
                        if let Err(e) = r {
                            tracing::debug!(broker = BROKER, tag, error = %e, "settlement after dead-lettering not sent; the broker redelivers");
                        }
                    });
                    Ok(())
                }
                _ => {
                    // No dead-letter destination: `basic.nack` without requeue, which the
                    // broker routes to the queue's dead-letter exchange if it has one.
                    channel
                        .basic_nack(
                            tag,
                            BasicNackOptions {
                                multiple: false,
                                requeue: false,
                            },
                        )
                        .await
                }
            },
        };
        if let Err(e) = result {
            tracing::debug!(broker = BROKER, tag, error = %e, "settlement not sent; the broker redelivers");
        }
    }
}

/// Publishes a rejected message, with reason headers, to `destination` and waits for the
/// confirm.
async fn dead_letter(link: &Link, destination: &str, p: Pending, reason: &str) -> Result<()> {
    let route = mapping::route(destination, &link.config.exchange)?;
    // 0 is "redelivered, count unknown": at least the second delivery.
    let attempts = if p.attempt == 0 { 2 } else { p.attempt }.to_string();
    let properties = mapping::with_text_headers(
        p.properties,
        &[
            (well_known::REJECT_REASON, reason),
            (well_known::ORIGINAL_TOPIC, &p.routing_key),
            (well_known::ATTEMPTS, &attempts),
        ],
    );
    let deadline = polybridge_core::Deadline::after(link.config.confirm_timeout);
    deadline
        .run(
            BROKER,
            "dead-letter publish",
            destination,
            publish_confirmed(link, destination, &route, &p.payload, properties),
        )
        .await
}

#[async_trait]
impl Subscriber for AmqpBroker {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        let plan = Plan::new(&self.link, &subscription)?;
        // At most `limit` deliveries are unsettled, so at most that many settlements can be
        // queued: the settlement queue never refuses one.
        let limit = subscription.max_in_flight.clamp(1, 1 << 20);
        let (deliveries_tx, deliveries_rx) = mpsc::channel(limit.min(usize::from(u16::MAX)) + 16);
        let (settle_tx, settle_rx) = mpsc::channel(limit + 64);
        let acker = Arc::new(Acker {
            settle: settle_tx,
            closed: AtomicBool::new(false),
            what: plan.what.clone(),
        });
        let mut worker = Worker {
            link: self.link.clone(),
            plan,
            deliveries: deliveries_tx,
            settlements: settle_rx,
            acker,
            epoch: 0,
            channel: None,
            consumer: None,
            pending: HashMap::new(),
            limit,
            outstanding: 0,
        };
        worker.start().await?;
        let (close_tx, close_rx) = oneshot::channel();
        let (closed_tx, closed_rx) = oneshot::channel();
        tokio::spawn(worker.run(close_rx, closed_tx));
        Ok(DeliveryStream::new(deliveries_rx, close_tx, closed_rx))
    }
}
