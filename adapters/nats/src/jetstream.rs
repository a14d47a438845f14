//! JetStream subscriptions: a durable pull consumer per group, pulled in batches as large as
//! the free in-flight slots, acked only when a delivery is acked.
//!
//! One task per subscription owns everything mutable (its pull inbox, the pull requests sent,
//! the reply subjects of the deliveries in flight, where their settlements are published):
//! deliveries are settled by sending `(token, settlement)` to it over a bounded channel, so
//! the hot path has no lock.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType, Stream};
use async_nats::jetstream::Context;
use async_nats::StatusCode;
use futures::StreamExt;
use polybridge_core::{
    new_message_id, well_known, AckHandle, Acknowledger, Delivery, DeliveryInfo, DeliveryStream,
    Error, Position, Result, Settlement, StartPosition, Subscription,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{NatsConfig, Storage};
use crate::{mapping, Reconnects, BROKER};

/// Creates the stream named by the URL when it does not exist yet.
pub(crate) async fn ensure_stream(context: &Context, config: &NatsConfig) -> Result<()> {
    let Some(name) = &config.stream else {
        return Ok(());
    };
    let stream_config = StreamConfig {
        name: name.clone(),
        subjects: config.stream_subjects.clone(),
        storage: match config.storage {
            Storage::File => StorageType::File,
            Storage::Memory => StorageType::Memory,
        },
        ..Default::default()
    };
    context
        .get_or_create_stream(stream_config)
        .await
        .map(|_| ())
        .map_err(|e| Error::Permanent {
            broker: BROKER,
            destination: name.clone(),
            reason: format!(
                "cannot create stream {name} for subjects {}: {e}",
                config.stream_subjects.join(",")
            ),
            source: Some(Box::new(e)),
        })
}

/// Binds `subscription` to its stream's pull consumer and starts the task that serves it.
/// With `create_stream`, creates the stream again if it is gone (a memory stream after a
/// restart).
pub(crate) async fn subscribe(
    client: &async_nats::Client,
    context: &Context,
    config: &NatsConfig,
    reconnects: Reconnects,
    subscription: Subscription,
) -> Result<DeliveryStream> {
    let filter = subscription.pattern.to_nats()?;
    if config.create_stream {
        ensure_stream(context, config).await?;
    }
    let stream_name = match &config.stream {
        Some(name) => name.clone(),
        None => context
            .stream_by_subject(filter.clone())
            .await
            .map_err(|e| {
                Error::permanent(
                    BROKER,
                    &filter,
                    format!(
                        "no JetStream stream captures this subject ({e}): create one, or \
                         connect with stream=NAME&create_stream=true&stream_subjects=…"
                    ),
                )
            })?,
    };
    let stream = context
        .get_stream(&stream_name)
        .await
        .map_err(|e| Error::Permanent {
            broker: BROKER,
            destination: filter.clone(),
            reason: format!("stream {stream_name}: {e}"),
            source: Some(Box::new(e)),
        })?;
    let (consumer_name, temporary) = match &subscription.group {
        Some(group) => (consumer_name_for(group), false),
        None => (
            format!("pb-{}", new_message_id().replace(['.', ':'], "-")),
            true,
        ),
    };
    let max_in_flight = subscription.max_in_flight.max(1);
    let consumer_config = PullConfig {
        durable_name: Some(consumer_name.clone()),
        filter_subject: filter.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: config.max_deliver.unwrap_or(-1),
        max_ack_pending: i64::try_from(max_in_flight.saturating_mul(config.group_members))
            .unwrap_or(i64::MAX),
        deliver_policy: deliver_policy(&subscription.start, &filter)?,
        inactive_threshold: if temporary {
            config.inactive_threshold
        } else {
            Duration::ZERO
        },
        ..Default::default()
    };
    let consumer: PullConsumer = stream
        .get_or_create_consumer(&consumer_name, consumer_config.clone())
        .await
        .map_err(|e| Error::Permanent {
            broker: BROKER,
            destination: filter.clone(),
            reason: format!(
                "cannot create or bind consumer {consumer_name} on stream {stream_name}: {e}"
            ),
            source: Some(Box::new(e)),
        })?;
    let existing_filter = consumer.cached_info().config.filter_subject.clone();
    if existing_filter != filter {
        return Err(Error::permanent(
            BROKER,
            &filter,
            format!(
                "consumer group {consumer_name:?} already exists on stream {stream_name} for \
                 subject {existing_filter:?}; use another group name for {filter:?}"
            ),
        ));
    }
    let unacked = Unacked::from_consumer(consumer.cached_info());
    let stream_created = stream.cached_info().created;
    let (deliveries_tx, deliveries_rx) = mpsc::channel(max_in_flight);
    let (settle_tx, settle_rx) = mpsc::channel(max_in_flight);
    let (close_tx, close_rx) = oneshot::channel();
    let (closed_tx, closed_rx) = oneshot::channel();
    let closed = Arc::new(AtomicBool::new(false));
    let acker: Arc<dyn Acknowledger> = Arc::new(SubscriptionAcker {
        settle: settle_tx,
        closed: closed.clone(),
        pattern: filter.clone(),
    });
    let pump = Pump {
        client: client.clone(),
        context: context.clone(),
        consumer,
        consumer_config,
        config: config.clone(),
        stream_created,
        stream_name,
        consumer_name,
        temporary,
        filter,
        max_in_flight,
        fetch_wait: config.fetch_wait,
        ack_wait: config.ack_wait,
        dead_letter: subscription.dead_letter,
        acker,
        closed,
        deliveries: deliveries_tx,
        in_flight: HashMap::new(),
        next_token: 0,
        first_deliveries: FirstDeliveries::default(),
        unacked,
    };
    tokio::spawn(pump.run(settle_rx, reconnects, close_rx, closed_tx));
    Ok(DeliveryStream::new(deliveries_rx, close_tx, closed_rx))
}

/// A durable consumer name from a group name: `.`, `*`, `>` and white space are not
/// allowed in consumer names, so they become `_`.
fn consumer_name_for(group: &str) -> String {
    group
        .chars()
        .map(|c| {
            if c == '.' || c == '*' || c == '>' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

fn deliver_policy(start: &StartPosition, filter: &str) -> Result<DeliverPolicy> {
    Ok(match start {
        StartPosition::Latest => DeliverPolicy::New,
        StartPosition::Earliest => DeliverPolicy::All,
        StartPosition::Time(t) => {
            let nanos = t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::try_from(nanos).unwrap_or_default(),
            )
            .map_err(|e| Error::config(BROKER, format!("start time for {filter}: {e}")))?;
            DeliverPolicy::ByStartTime { start_time }
        }
        StartPosition::Position(p) => DeliverPolicy::ByStartSequence {
            start_sequence: p.parse().map_err(|_| {
                Error::config(
                    BROKER,
                    format!("start position {p:?} for {filter}: a JetStream position is a stream sequence number"),
                )
            })?,
        },
    })
}

/// Hands settlements to the subscription's task.
struct SubscriptionAcker {
    settle: mpsc::Sender<(u64, Settlement)>,
    closed: Arc<AtomicBool>,
    pattern: String,
}

impl Acknowledger for SubscriptionAcker {
    fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let closed = || Error::closed(BROKER, format!("the subscription to {}", self.pattern));
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        // At most `max_in_flight` deliveries are unsettled and each settles once, so the
        // channel (of that capacity) is never full.
        self.settle
            .try_send((token, settlement))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Closed(_) => closed(),
                mpsc::error::TrySendError::Full(_) => Error::transient(
                    BROKER,
                    &self.pattern,
                    "settlement queue full (more settlements than deliveries)",
                ),
            })
    }
}

/// A delivery handed out and not yet settled.
struct InFlight {
    /// Where its settlement goes: the `$JS.ACK.…` subject it came with (moved, not copied).
    reply: async_nats::Subject,
    /// Kept only when the subscription has a dead-letter subject.
    message: Option<polybridge_core::Message>,
    /// The subject it came on, as the client holds it (a shared buffer: no copy).
    topic: async_nats::Subject,
    sequence: u64,
    attempt: u32,
    since: Instant,
}

/// The subscription has ended: its owner got the error that ended it.
struct Ended;

struct Pump {
    client: async_nats::Client,
    context: Context,
    /// The consumer pulled from, for the number of pull requests the server holds.
    consumer: PullConsumer,
    /// What it was created with, to create it again if it is lost.
    consumer_config: PullConfig,
    /// The URL's settings, for `create_stream`.
    config: NatsConfig,
    /// When the stream was created: a stream created again (a memory stream lost in a
    /// restart) has other messages under the same sequence numbers.
    stream_created: time::OffsetDateTime,
    stream_name: String,
    consumer_name: String,
    temporary: bool,
    filter: String,
    max_in_flight: usize,
    fetch_wait: Duration,
    ack_wait: Duration,
    dead_letter: Option<String>,
    acker: Arc<dyn Acknowledger>,
    closed: Arc<AtomicBool>,
    deliveries: mpsc::Sender<Result<Delivery>>,
    in_flight: HashMap<u64, InFlight>,
    next_token: u64,
    first_deliveries: FirstDeliveries,
    unacked: Unacked,
}

/// Watches the first deliveries (delivery count 1) of a consumer for the server delivering
/// again, as new, messages it delivered before: their stream sequences only grow, unless the
/// server went back to an older state of the consumer. nats-server 2.9.10 did so in 1 of
/// 100 graceful restarts under load here (`restart_source_nats_to_amqp` in the chaos
/// tests): it came back with the consumer as it was seconds earlier and delivered
/// everything after that again. At-least-once holds (nothing is lost), but every message in
/// the span is a duplicate the bridge did not cause, so it is worth a warning.
#[derive(Debug, Default)]
struct FirstDeliveries {
    /// The highest stream sequence delivered for the first time.
    highest: u64,
    /// In a replay: first deliveries at or below `highest` already warned about.
    replaying: bool,
}

impl FirstDeliveries {
    /// Notes a delivery. Returns the span of stream sequences the server is about to deliver
    /// again (at most `highest - stream_sequence + 1` messages) when this delivery starts a
    /// replay; `None` otherwise, also for the rest of a replay already reported.
    fn observe(&mut self, delivered: u64, stream_sequence: u64) -> Option<u64> {
        if delivered != 1 {
            return None; // a redelivery: the server knows it delivered it before
        }
        if stream_sequence > self.highest {
            self.highest = stream_sequence;
            self.replaying = false;
            None
        } else if self.replaying {
            None
        } else {
            self.replaying = true;
            Some(self.highest - stream_sequence + 1)
        }
    }
}

/// Where a consumer that was lost (deleted by an operator) must be created again so that
/// nothing this subscription has not seen acknowledged is skipped: the lowest stream
/// sequence that may still be unacknowledged, as far as this subscription can tell. Kept
/// without a lock or a per-message allocation: the deliveries in flight are in
/// `Pump::in_flight`, and only naks, which are rare, add to `nacked`.
#[derive(Debug, Default)]
struct Unacked {
    /// The highest stream sequence the consumer had delivered when the subscription began
    /// (to earlier subscribers); what this subscription received since is counted by
    /// [`FirstDeliveries::highest`].
    delivered_at_start: u64,
    /// Stream sequences nacked (or whose ack could not be sent) and not received again.
    nacked: BTreeSet<u64>,
    /// When the subscription began with deliveries of an earlier subscriber unacknowledged:
    /// the first sequence after the consumer's ack floor then, kept until the server says
    /// its ack floor has reached `delivered_at_start`.
    pending_from: Option<u64>,
}

impl Unacked {
    /// The state of a consumer just bound or created: it delivered up to `delivered` and
    /// everything up to `ack_floor` was acknowledged.
    fn from_consumer(info: &async_nats::jetstream::consumer::Info) -> Unacked {
        let delivered = info.delivered.stream_sequence;
        let ack_floor = info.ack_floor.stream_sequence;
        Unacked {
            delivered_at_start: delivered,
            nacked: BTreeSet::new(),
            pending_from: (ack_floor < delivered).then_some(ack_floor + 1),
        }
    }

    fn received(&mut self, stream_sequence: u64) {
        if !self.nacked.is_empty() {
            self.nacked.remove(&stream_sequence);
        }
    }

    fn nacked(&mut self, stream_sequence: u64) {
        self.nacked.insert(stream_sequence);
    }

    /// The server's ack floor, whenever the subscription asks for the consumer's state.
    fn server_acked_up_to(&mut self, ack_floor: u64) {
        if ack_floor >= self.delivered_at_start {
            self.pending_from = None;
        }
    }

    /// The sequence to create the consumer again from, given the highest sequence this
    /// subscription received as a first delivery and the sequences in flight. (A
    /// redelivery's sequence was first delivered before, here or to an earlier subscriber,
    /// so it is not above both; where it was another member's, starting lower only
    /// delivers more again.)
    fn resume_from(&self, highest_received: u64, in_flight: impl Iterator<Item = u64>) -> u64 {
        let mut from = self
            .delivered_at_start
            .max(highest_received)
            .saturating_add(1);
        for sequence in in_flight
            .chain(self.nacked.first().copied())
            .chain(self.pending_from)
        {
            from = from.min(sequence);
        }
        from.max(1)
    }
}

/// Pull requests sent and not yet finished, oldest first: when each was sent and how many
/// messages it may still bring. The server serves them in order, ends each with a status
/// (408 when it expires) or when it is filled, and forgets them all on a restart, so any
/// older than `fetch_wait` (plus a margin) are over, and after a reconnect only as many as
/// the server says it holds may still be waiting.
#[derive(Default)]
struct Pulls {
    pending: VecDeque<(Instant, usize)>,
}

impl Pulls {
    fn outstanding(&self) -> usize {
        self.pending.iter().map(|(_, n)| n).sum()
    }

    fn received_one(&mut self) {
        if let Some(front) = self.pending.front_mut() {
            front.1 = front.1.saturating_sub(1);
            if front.1 == 0 {
                self.pending.pop_front();
            }
        }
    }

    fn ended_one(&mut self) {
        self.pending.pop_front();
    }

    /// Forgets the requests older than `lifetime`, and says how many: the server ends a
    /// request with a 408 when it expires, so one that outlived it was never answered.
    fn expire(&mut self, lifetime: Duration) -> usize {
        let mut expired = 0;
        while let Some((sent, _)) = self.pending.front() {
            if sent.elapsed() > lifetime {
                self.pending.pop_front();
                expired += 1;
            } else {
                break;
            }
        }
        expired
    }

    /// Forgets all but the newest `waiting` requests. The server holds `waiting` requests
    /// for the consumer (this subscription's and other group members'); it forgets them
    /// all when it restarts and serves the others in order, so ours beyond that many, the
    /// oldest, are gone.
    fn keep_newest(&mut self, waiting: usize) {
        while self.pending.len() > waiting {
            self.pending.pop_front();
        }
    }

    fn next_expiry(&self, lifetime: Duration) -> Option<Instant> {
        self.pending.front().map(|(sent, _)| *sent + lifetime)
    }

    /// How long the naks of a closing subscription must wait so that the server has
    /// dropped every pull request still pending (`None`: nak now, none is left).
    ///
    /// The server keeps a pull request until it expires, even after the inbox is gone,
    /// and nats-server 2.9 mishandles an immediate redelivery while such a request is
    /// queued: it rewinds the consumer, delivers its newest message again as new
    /// (attempt 1) and holds the redelivery back until `ack_wait`. A nak without a delay
    /// right after closing does that every time here. So the naks wait until `lifetime`
    /// (a request's expiry plus a margin for its trip to the server) has passed since the
    /// newest request was sent, and the delay is never zero, which the server takes as
    /// no delay.
    fn gone_in(&self, lifetime: Duration, now: Instant) -> Option<Duration> {
        let (sent, _) = self.pending.back()?;
        let gone = *sent + lifetime;
        Some(gone.saturating_duration_since(now)).filter(|d| !d.is_zero())
    }
}

impl Pump {
    /// Serves the subscription until it is closed.
    async fn run(
        mut self,
        mut settlements: mpsc::Receiver<(u64, Settlement)>,
        mut reconnects: Reconnects,
        mut close: oneshot::Receiver<()>,
        closed: oneshot::Sender<()>,
    ) {
        let request_subject = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            self.stream_name, self.consumer_name
        );
        let inbox = self.client.new_inbox();
        let mut replies = match self.client.subscribe(inbox.clone()).await {
            Ok(s) => s,
            Err(e) => {
                let _ = self
                    .deliveries
                    .send(Err(Error::Transient {
                        broker: BROKER,
                        destination: self.filter.clone(),
                        reason: format!("cannot subscribe to the pull inbox: {e}"),
                        source: Some(Box::new(e)),
                    }))
                    .await;
                self.closed.store(true, Ordering::Release);
                let _ = closed.send(());
                return;
            }
        };
        let lifetime = self.fetch_wait + Duration::from_secs(1);
        let mut pulls = Pulls::default();
        // Ask again once this many slots are free: big batches, never one per round trip.
        let threshold = (self.max_in_flight / 4).max(1);
        let mut keep_alive =
            tokio::time::interval((self.ack_wait / 3).max(Duration::from_millis(50)));
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let expires_nanos = self.fetch_wait.as_nanos();
        let mut reconnected = reconnects.count();
        loop {
            // A request the server never answered: is the consumer still there?
            if pulls.expire(lifetime) > 0 && self.check_consumer(&mut pulls).await.is_err() {
                break;
            }
            let free = self
                .max_in_flight
                .saturating_sub(self.in_flight.len() + pulls.outstanding());
            if free >= threshold || (free > 0 && pulls.pending.is_empty()) {
                let body = format!("{{\"batch\":{free},\"expires\":{expires_nanos}}}");
                match self
                    .client
                    .publish_with_reply(request_subject.clone(), inbox.clone(), body.into())
                    .await
                {
                    Ok(()) => pulls.pending.push_back((Instant::now(), free)),
                    Err(e) => {
                        tracing::warn!(broker = BROKER, subject = %self.filter, error = %e, "cannot send a pull request")
                    }
                }
            }
            let expiry = pulls.next_expiry(lifetime);
            tokio::select! {
                biased;
                _ = &mut close => break,
                Some((token, settlement)) = settlements.recv() => self.settle(token, settlement).await,
                _ = keep_alive.tick() => {
                    self.keep_alive().await;
                    // Until the earlier subscribers' deliveries are acknowledged, see [`Unacked`].
                    if self.unacked.pending_from.is_some() && self.check_consumer(&mut pulls).await.is_err() {
                        break;
                    }
                }
                n = reconnects.after(reconnected) => {
                    reconnected = n;
                    if self.check_consumer(&mut pulls).await.is_err() {
                        break;
                    }
                }
                reply = replies.next() => match reply {
                    None => break,
                    Some(reply) => match reply.status {
                        None => {
                            pulls.received_one();
                            if !self.hand_out(reply).await {
                                break;
                            }
                        }
                        Some(StatusCode::IDLE_HEARTBEAT) => {}
                        Some(status) => {
                            if status != StatusCode::TIMEOUT && status != StatusCode::NOT_FOUND {
                                tracing::warn!(broker = BROKER, subject = %self.filter, %status, description = ?reply.description, "JetStream ended a pull request");
                            }
                            let deleted = status == StatusCode::REQUEST_TERMINATED
                                && reply
                                    .description
                                    .as_deref()
                                    .is_some_and(|d| d.eq_ignore_ascii_case("consumer deleted"));
                            if deleted {
                                // The deleted consumer's requests end one after the other:
                                // asking about the first creates it again and forgets them
                                // all, so the later ones must not end any of the new one's.
                                if self.check_consumer(&mut pulls).await.is_err() {
                                    break;
                                }
                            } else {
                                pulls.ended_one();
                            }
                        }
                    },
                },
                _ = sleep_until_opt(expiry) => {}
            }
        }
        // Withdraw the pull requests first (unsubscribe, and a flush that follows it on the
        // wire), so the naks below are not redelivered into this closing subscription.
        if let Err(e) = replies.unsubscribe().await {
            tracing::debug!(broker = BROKER, error = %e, "unsubscribing the pull inbox failed");
        }
        let _ = self.client.flush().await;
        // Nak only once the server has dropped our pull requests (see `Pulls::gone_in`).
        let requests_gone = pulls.gone_in(lifetime, Instant::now());
        self.shut_down(&mut settlements, requests_gone).await;
        let _ = closed.send(());
    }

    /// Asks the server about the consumer: after a reconnect, a pull request that went
    /// unanswered, a "Consumer Deleted" status, and on keep-alive ticks while an earlier
    /// subscriber's deliveries are unacknowledged (see [`Unacked`]). Forgets the pull requests the server no
    /// longer holds (a restarted server holds none; a consumer created again, none of the old
    /// one's), so that the subscription pulls again now, not once they would have expired
    /// (`fetch_wait` + 1 s after they were sent). The server's count of waiting requests
    /// includes other group members', so this may keep a few of ours that are gone (they
    /// still expire); it never forgets one the server holds, which would let more than
    /// `max_in_flight` deliveries in. When the server cannot say, all are kept. `Err` when
    /// the consumer is gone for good and the subscription ended (see
    /// [`Pump::waiting_on_server`]).
    async fn check_consumer(&mut self, pulls: &mut Pulls) -> std::result::Result<(), Ended> {
        if let Some(waiting) = self.waiting_on_server().await? {
            let ours = pulls.pending.len();
            pulls.keep_newest(waiting);
            tracing::debug!(broker = BROKER, subject = %self.filter, ours, waiting, "forgot the pull requests the server no longer holds");
        }
        Ok(())
    }

    /// How many pull requests the server holds for the consumer; `None` when it cannot say
    /// now. A consumer that no longer exists (deleted by an operator, or with a memory stream
    /// lost in a restart) answers no pull request again: it is created again (see
    /// [`Pump::create_consumer_again`]), holding none. When that fails, the subscription
    /// ends, its owner gets the error, and this is `Err`.
    async fn waiting_on_server(&mut self) -> std::result::Result<Option<usize>, Ended> {
        let lost = match self.consumer.info().await {
            Ok(info) => {
                self.unacked
                    .server_acked_up_to(info.ack_floor.stream_sequence);
                return Ok(Some(info.num_waiting));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                ) =>
            {
                e
            }
            Err(e) => {
                tracing::debug!(broker = BROKER, subject = %self.filter, error = %e, "cannot ask how many pull requests the server holds");
                return Ok(None);
            }
        };
        match self.create_consumer_again().await {
            Ok(()) => Ok(Some(0)),
            Err(e) => {
                let gone = Error::Transient {
                    broker: BROKER,
                    destination: self.filter.clone(),
                    reason: format!(
                        "consumer {} of stream {} no longer exists ({lost}) and cannot be \
                         created again ({e}); subscribing again creates it anew, from the \
                         subscription's start position",
                        self.consumer_name, self.stream_name
                    ),
                    source: Some(Box::new(lost)),
                };
                // The owner gets the error, then the end of the stream, and may subscribe
                // again (the bridge does).
                tracing::warn!(broker = BROKER, subject = %self.filter, error = %gone, "the JetStream subscription ends");
                let _ = self.deliveries.send(Err(gone)).await;
                Err(Ended)
            }
        }
    }

    /// Creates the lost consumer again, with its name and settings, from the first message
    /// this subscription has not seen acknowledged ([`Unacked`]): what came while it was
    /// gone is delivered, and what was in flight is delivered again. A stream that was
    /// created again (a memory stream lost in a restart; with `create_stream`, created here)
    /// holds only messages that came after the loss, so the consumer then starts at its
    /// beginning. With group members in other processes, the first to create it decides
    /// where it starts; a message another member had nacked may then be skipped.
    async fn create_consumer_again(&mut self) -> Result<()> {
        if self.config.create_stream {
            ensure_stream(&self.context, &self.config).await?;
        }
        let stream: Stream = self
            .context
            .get_stream(&self.stream_name)
            .await
            .map_err(|e| {
                Error::transient(
                    BROKER,
                    &self.filter,
                    format!("stream {}: {e}", self.stream_name),
                )
            })?;
        let same_stream = stream.cached_info().created == self.stream_created;
        let from = if same_stream {
            self.unacked.resume_from(
                self.first_deliveries.highest,
                self.in_flight.values().map(|entry| entry.sequence),
            )
        } else {
            1
        };
        let config = PullConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..self.consumer_config.clone()
        };
        self.consumer = stream
            .get_or_create_consumer(&self.consumer_name, config)
            .await
            .map_err(|e| Error::transient(BROKER, &self.filter, e.to_string()))?;
        tracing::warn!(
            broker = BROKER,
            stream = %self.stream_name,
            consumer = %self.consumer_name,
            from_stream_sequence = from,
            stream_created_again = !same_stream,
            "the JetStream consumer was gone and is created again; deliveries in flight come again"
        );
        self.stream_created = stream.cached_info().created;
        self.unacked = Unacked::from_consumer(self.consumer.cached_info());
        self.first_deliveries = FirstDeliveries {
            highest: from - 1,
            replaying: false,
        };
        Ok(())
    }

    /// Turns a JetStream message into a delivery. False when the subscriber is gone.
    async fn hand_out(&mut self, mut message: async_nats::Message) -> bool {
        let Some(reply) = message.reply.take() else {
            tracing::warn!(broker = BROKER, subject = %self.filter, "a message without a reply subject on the pull inbox; skipping it");
            return true;
        };
        let Some(metadata) = AckMetadata::parse(&reply) else {
            tracing::warn!(broker = BROKER, subject = %self.filter, reply = %reply, "a JetStream message without metadata; skipping it (it is redelivered after ack_wait)");
            return true;
        };
        let (stream_sequence, delivered) = (metadata.stream_sequence, metadata.delivered);
        self.unacked.received(stream_sequence);
        if let Some(span) = self.first_deliveries.observe(delivered, stream_sequence) {
            tracing::warn!(
                broker = BROKER,
                stream = %self.stream_name,
                consumer = %self.consumer_name,
                stream_sequence,
                delivered_up_to = self.first_deliveries.highest,
                span,
                "the JetStream server delivers again, as new, messages it delivered before: it went back to an older state of this consumer (seen with nats-server 2.9 after a restart); up to `span` messages are duplicates, nothing is lost"
            );
        }
        let published = mapping::system_time(metadata.published_nanos);
        let stream_name = &self.stream_name;
        let mut polybridge_message =
            mapping::from_nats(message.payload, message.headers.as_ref(), None, || {
                // Sized once (`format!` would grow it as it writes the number).
                let mut id = String::with_capacity(stream_name.len() + 21);
                let _ = write!(id, "{stream_name}:{stream_sequence}");
                id
            });
        if polybridge_message.timestamp.is_none() {
            polybridge_message.timestamp = published;
        }
        let attempt = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
        let token = self.next_token;
        self.next_token += 1;
        // Only a reject to a dead-letter subject needs the message again.
        let kept = self
            .dead_letter
            .as_ref()
            .map(|_| polybridge_message.clone());
        let delivery = Delivery {
            message: polybridge_message,
            info: DeliveryInfo {
                topic: message.subject.as_str().to_owned(),
                attempt,
                redelivered: attempt > 1,
                position: Some(Position::Sequence(stream_sequence)),
                partition: None,
            },
            handle: AckHandle::new(self.acker.clone(), token),
        };
        self.in_flight.insert(
            token,
            InFlight {
                reply,
                message: kept,
                topic: message.subject,
                sequence: stream_sequence,
                attempt,
                since: Instant::now(),
            },
        );
        if self.deliveries.send(Ok(delivery)).await.is_err() {
            return false;
        }
        true
    }

    async fn settle(&mut self, token: u64, settlement: Settlement) {
        let Some(entry) = self.in_flight.remove(&token) else {
            return;
        };
        let kind = match settlement {
            Settlement::Ack => AckKind::Ack,
            Settlement::Nack { delay } => AckKind::Nak(delay),
            Settlement::Reject { reason } => match &self.dead_letter {
                None => {
                    tracing::info!(broker = BROKER, topic = %entry.topic, %reason, "rejected without a dead-letter subject: terminated");
                    AckKind::Term
                }
                Some(dead_letter) => match self.dead_letter(dead_letter, &entry, &reason).await {
                    Ok(()) => AckKind::Term,
                    Err(e) => {
                        tracing::warn!(broker = BROKER, topic = %entry.topic, dead_letter = %dead_letter, error = %e, "cannot dead-letter a rejected message: nacked it instead");
                        AckKind::Nak(Some(Duration::from_secs(1)))
                    }
                },
            },
        };
        if matches!(kind, AckKind::Nak(_)) {
            self.unacked.nacked(entry.sequence);
        }
        if let Err(e) = self.client.publish(entry.reply, kind.into()).await {
            // The server redelivers after ack_wait: at least once still holds.
            self.unacked.nacked(entry.sequence);
            tracing::warn!(broker = BROKER, topic = %entry.topic, error = %e, "cannot send the settlement to JetStream; the message will be redelivered");
        }
    }

    async fn dead_letter(&self, subject: &str, entry: &InFlight, reason: &str) -> Result<()> {
        let Some(mut message) = entry.message.clone() else {
            return Err(Error::permanent(
                BROKER,
                subject,
                "the rejected message was not kept",
            ));
        };
        message.headers.set(well_known::REJECT_REASON, reason);
        message
            .headers
            .set(well_known::ORIGINAL_TOPIC, entry.topic.as_str());
        message
            .headers
            .set(well_known::ATTEMPTS, entry.attempt.to_string());
        // Deduplicated per delivery: the original id is in the stream's duplicate window.
        let dedup = format!("dlq:{}:{}", self.stream_name, entry.sequence);
        let headers = mapping::to_headers_deduplicated_by(&message, true, Some(&dedup));
        let ack = self
            .context
            .publish_with_headers(subject.to_owned(), headers, message.payload)
            .await
            .map_err(|e| Error::transient(BROKER, subject, e.to_string()))?;
        ack.await
            .map(|_| ())
            .map_err(|e| Error::transient(BROKER, subject, e.to_string()))
    }

    /// Tells JetStream that deliveries held for a while are still being worked on.
    async fn keep_alive(&self) {
        let threshold = self.ack_wait / 3;
        for entry in self.in_flight.values() {
            if entry.since.elapsed() >= threshold {
                let progress = AckKind::Progress.into();
                if let Err(e) = self.client.publish(entry.reply.clone(), progress).await {
                    tracing::debug!(broker = BROKER, topic = %entry.topic, error = %e, "in-progress ack failed");
                }
            }
        }
    }

    /// Stops accepting settlements, applies the ones already queued, naks the rest (after
    /// `nak_delay`), and deletes a temporary consumer.
    async fn shut_down(
        &mut self,
        settlements: &mut mpsc::Receiver<(u64, Settlement)>,
        nak_delay: Option<Duration>,
    ) {
        self.closed.store(true, Ordering::Release);
        settlements.close();
        while let Some((token, settlement)) = settlements.recv().await {
            self.settle(token, settlement).await;
        }
        for (_, entry) in self.in_flight.drain() {
            let nak = AckKind::Nak(nak_delay).into();
            if let Err(e) = self.client.publish(entry.reply, nak).await {
                tracing::debug!(broker = BROKER, topic = %entry.topic, error = %e, "nak on close failed; redelivered after ack_wait");
            }
        }
        if self.temporary {
            let deleted = match self.context.get_stream(&self.stream_name).await {
                Ok(stream) => stream
                    .delete_consumer(&self.consumer_name)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = deleted {
                tracing::debug!(broker = BROKER, consumer = %self.consumer_name, error = %e, "cannot delete the subscription's consumer; it expires after inactive_threshold");
            }
        }
        let _ = self.client.flush().await;
    }
}

/// What JetStream says about a delivery in its reply subject (ADR-15):
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<published ns>.<pending>`,
/// or, in the newer form, the same after `<domain>.<account hash>` and with more tokens
/// after it (the client's own parser reads both the same way).
#[derive(Debug, PartialEq, Eq)]
struct AckMetadata {
    /// How many times this message was delivered, this time included.
    delivered: u64,
    stream_sequence: u64,
    /// When the stream stored it, in nanoseconds since the Unix epoch.
    published_nanos: i128,
}

impl AckMetadata {
    /// Parsed from a reply subject; `None` for one that is not a JetStream acknowledgement
    /// subject. Parsed here rather than through the client's `jetstream::Message`, which
    /// would need a copy of the JetStream context for every message.
    fn parse(reply: &str) -> Option<AckMetadata> {
        let tokens = reply.strip_prefix("$JS.ACK.")?.split('.');
        let before_delivered = match tokens.clone().count() {
            7 => 2,           // stream, consumer
            n if n >= 9 => 4, // domain, account hash, stream, consumer
            _ => return None,
        };
        let mut tokens = tokens.skip(before_delivered);
        let delivered = tokens.next()?.parse().ok()?;
        let stream_sequence = tokens.next()?.parse().ok()?;
        let _consumer_sequence = tokens.next()?;
        let published_nanos = tokens.next()?.parse().ok()?;
        Some(AckMetadata {
            delivered,
            stream_sequence,
            published_nanos,
        })
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{AckMetadata, FirstDeliveries, Pulls, Unacked};

    #[test]
    fn a_closing_subscription_naks_after_its_pull_requests_are_gone() {
        let lifetime = Duration::from_secs(6);
        let t0 = Instant::now();
        let mut pulls = Pulls::default();
        assert_eq!(
            pulls.gone_in(lifetime, t0),
            None,
            "nothing pending: nak now"
        );
        pulls.pending.push_back((t0, 10));
        pulls.pending.push_back((t0 + Duration::from_secs(2), 5));
        assert_eq!(
            pulls.gone_in(lifetime, t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(5)),
            "counted from the newest request"
        );
        // Past the newest request's lifetime: never a zero delay (the server's "now").
        assert_eq!(pulls.gone_in(lifetime, t0 + Duration::from_secs(8)), None);
        assert_eq!(pulls.gone_in(lifetime, t0 + Duration::from_secs(9)), None);
    }

    #[test]
    fn a_lost_consumer_resumes_at_the_first_message_not_seen_acknowledged() {
        let mut unacked = Unacked {
            delivered_at_start: 10, // a new consumer (`latest`) at a stream holding 10 messages
            ..Unacked::default()
        };
        assert_eq!(
            unacked.resume_from(0, [].into_iter()),
            11,
            "nothing received: what comes next"
        );
        for sequence in 11..=20 {
            unacked.received(sequence);
        }
        assert_eq!(unacked.resume_from(20, [].into_iter()), 21, "all acked");
        assert_eq!(
            unacked.resume_from(20, [18, 15].into_iter()),
            15,
            "the oldest in flight"
        );
        unacked.nacked(13);
        unacked.nacked(17);
        assert_eq!(
            unacked.resume_from(20, [18].into_iter()),
            13,
            "the oldest nacked"
        );
        unacked.received(13); // redelivered: now in flight, or acked
        assert_eq!(unacked.resume_from(20, [].into_iter()), 17);
        unacked.received(17);
        assert_eq!(unacked.resume_from(20, [].into_iter()), 21);
    }

    #[test]
    fn an_earlier_subscribers_unacknowledged_deliveries_hold_the_resume_point() {
        let mut unacked = Unacked {
            delivered_at_start: 50,
            pending_from: Some(41), // acked up to 40, delivered up to 50
            ..Unacked::default()
        };
        assert_eq!(unacked.resume_from(51, [].into_iter()), 41);
        unacked.server_acked_up_to(49);
        assert_eq!(
            unacked.resume_from(51, [].into_iter()),
            41,
            "not all acked yet"
        );
        unacked.server_acked_up_to(50);
        assert_eq!(unacked.resume_from(51, [].into_iter()), 52);
    }

    #[test]
    fn after_a_reconnect_only_the_newest_requests_the_server_holds_are_counted() {
        let t0 = Instant::now();
        let mut pulls = Pulls::default();
        for (i, batch) in [10, 5, 3].into_iter().enumerate() {
            pulls
                .pending
                .push_back((t0 + Duration::from_secs(i as u64), batch));
        }
        // The server holds more than ours (other members' too): all of ours are kept.
        pulls.keep_newest(5);
        assert_eq!(pulls.outstanding(), 18);
        // It holds one: the oldest two were lost, the newest is still served.
        pulls.keep_newest(1);
        assert_eq!(pulls.outstanding(), 3);
        assert_eq!(
            pulls.next_expiry(Duration::from_secs(6)),
            Some(t0 + Duration::from_secs(8))
        );
        // A restarted server holds none: nothing is outstanding, the next pull goes now.
        pulls.keep_newest(0);
        assert_eq!(pulls.outstanding(), 0);
        assert!(pulls.pending.is_empty());
    }

    #[test]
    fn a_server_that_delivers_again_as_new_is_reported_once_per_replay() {
        let mut first = FirstDeliveries::default();
        // In order, with gaps (a filtered consumer) and a redelivery: nothing to report.
        for (delivered, sequence) in [(1, 1), (1, 2), (1, 5), (2, 3), (1, 6)] {
            assert_eq!(first.observe(delivered, sequence), None);
        }
        // The server restarts from an older state: 3..=6 come again as first deliveries.
        assert_eq!(first.observe(1, 3), Some(4));
        assert_eq!(
            first.observe(1, 4),
            None,
            "the same replay is reported once"
        );
        assert_eq!(first.observe(1, 6), None);
        // Past the old highest: the replay is over; a later one is reported again.
        assert_eq!(first.observe(1, 7), None);
        assert_eq!(first.observe(1, 2), Some(6));
    }

    #[test]
    fn ack_metadata_is_read_from_both_forms_of_the_reply_subject() {
        let expected = AckMetadata {
            delivered: 2,
            stream_sequence: 42,
            published_nanos: 1_764_806_400_123_456_789,
        };
        // Before NATS 2.9: stream, consumer, delivered, stream seq, consumer seq, time, pending.
        assert_eq!(
            AckMetadata::parse("$JS.ACK.ORDERS.pull.2.42.40.1764806400123456789.3"),
            Some(expected)
        );
        // Since 2.9: domain ("_" for none) and account hash first, a random token last.
        assert_eq!(
            AckMetadata::parse("$JS.ACK._.ACCHASH.ORDERS.pull.2.42.40.1764806400123456789.3.x7"),
            AckMetadata::parse("$JS.ACK.hub.ACCHASH.ORDERS.pull.2.42.40.1764806400123456789.3"),
        );
        assert_eq!(
            AckMetadata::parse("$JS.ACK.hub.ACCHASH.ORDERS.pull.2.42.40.1764806400123456789.3")
                .map(|m| (m.delivered, m.stream_sequence)),
            Some((2, 42))
        );
    }

    #[test]
    fn a_reply_subject_that_is_not_a_jetstream_ack_has_no_metadata() {
        for reply in [
            "_INBOX.abc.def",
            "$JS.ACK.ORDERS.pull.2.42",
            "$JS.ACK.ORDERS.pull.two.42.40.1764806400123456789.3",
            "$JS.ACK.ORDERS.pull.2.42.40.1764806400123456789",
            "$JS.API.ORDERS.pull.2.42.40.1764806400123456789.3",
        ] {
            assert_eq!(AckMetadata::parse(reply), None, "{reply}");
        }
    }
}
