//! Subscriptions: one librdkafka consumer per subscription, driven by a thread of its own.
//!
//! The thread owns the consumer and polls it. Deliveries go to the subscription's bounded
//! channel; settlements come back over a bounded channel and are applied by the thread, so
//! the async side never blocks on librdkafka. Offsets are tracked per partition
//! ([`Watermarks`]) and only the contiguous acknowledged watermark is committed. Rebalance
//! callbacks run on the same thread, inside `poll`, and share the tracking state through a
//! mutex that only this thread takes (never contended, never held across `poll`).
//!
//! Closing is bounded: the thread commits, closes the consumer (which leaves the group) and
//! destroys it, and the stream's `close` waits for that at most `close_timeout`; a consumer
//! that does not close in time is abandoned (leaked) rather than destroyed, because
//! `rd_kafka_destroy` can block forever on some brokers (seen with Tansu).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use polybridge_core::{
    new_message_id, well_known, AckHandle, Acknowledger, Deadline, Delivery, DeliveryInfo,
    DeliveryStream, Error, Message, Position, Result, Settlement, StartPosition, Subscription,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use crate::config::{DefaultStart, KafkaConfig};
use crate::{mapping, publisher, BROKER};

/// How long one `poll` waits for a message before the thread looks at settlements again.
const POLL: Duration = Duration::from_millis(20);
/// The most records one step hands out while librdkafka has them ready, so the step's own
/// work (settlements, the clock, the commit check) is done once per burst, not per record.
const BURST: usize = 64;
/// How often the consumer is polled (for rebalances) while the stash holds a full window.
const STASHED_POLL: Duration = Duration::from_millis(100);
/// Timeout of the broker round trips done inside a rebalance (committed offsets,
/// watermarks, commits).
const REBALANCE_IO: Duration = Duration::from_secs(10);
/// Prefix of the metadata committed with each offset: `pb:<delivered-until>`.
const METADATA_PREFIX: &str = "pb:";

/// A partition: its topic (shared, so the per-record bookkeeping clones a pointer, not the
/// name) and its number.
type Tp = (Arc<str>, i32);

/// The maps the consumer thread looks up for every record and every settlement: foldhash
/// instead of SipHash (the keys are this thread's own tokens and the assigned partitions,
/// not input an attacker chooses; SipHash was a tenth of the thread's time).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// A set of the same kind (the topics the consumer thread has seen).
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Where partitions without a committed offset start.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Start {
    Latest,
    Earliest,
    /// Milliseconds since the Unix epoch.
    Time(i64),
    Offset(i64),
}

fn start_for(subscription: &Subscription, config: &KafkaConfig, target: &str) -> Result<Start> {
    Ok(match &subscription.start {
        StartPosition::Latest => match config.start {
            DefaultStart::Latest => Start::Latest,
            DefaultStart::Earliest => Start::Earliest,
        },
        StartPosition::Earliest => Start::Earliest,
        StartPosition::Time(t) => Start::Time(mapping::system_time_millis(*t)),
        StartPosition::Position(p) => Start::Offset(p.trim().parse().map_err(|_| {
            Error::config(
                BROKER,
                format!("start position {p:?} for {target}: a Kafka position is an offset (0 or more), applied to every partition"),
            )
        })?),
    })
}

/// Starts `subscription` and returns once its consumer has its first partition assignment,
/// so messages published after this returns are received.
pub(crate) async fn subscribe(
    config: &Arc<KafkaConfig>,
    producer: &Arc<FutureProducer>,
    subscription: Subscription,
) -> Result<DeliveryStream> {
    let target = subscription.pattern.to_kafka_regex()?;
    if let Some(name) = subscription.options.keys().next() {
        return Err(Error::config(
            BROKER,
            format!("unknown subscription option {name:?} for {target}: the Kafka adapter takes its options from the URL"),
        ));
    }
    let start = start_for(&subscription, config, &target)?;
    let private = subscription.group.is_none();
    let group = subscription
        .group
        .clone()
        .unwrap_or_else(|| format!("pb-private-{}", new_message_id()));
    if group.is_empty() {
        return Err(Error::config(BROKER, "an empty consumer group name"));
    }
    if let Some(dl) = &subscription.dead_letter {
        publisher::check_topic(dl)?;
    }
    let max_in_flight = subscription.max_in_flight.max(1);
    let group_key = format!("{}|{group}", config.bootstrap.join(","));
    let shared = Arc::new(Mutex::new(Tracker {
        partitions: FastMap::default(),
        tokens: FastMap::default(),
        dead_lettering: FastMap::default(),
        stash: VecDeque::new(),
        capacity_paused: false,
        commit_failed: false,
        ready: None,
        group_key: group_key.clone(),
    }));
    let (ready_tx, ready_rx) = oneshot::channel();
    lock(&shared).ready = Some(ready_tx);
    let context = Ctx {
        shared: shared.clone(),
        start,
        group_key: group_key.clone(),
    };
    let consumer: BaseConsumer<Ctx> = config
        .consumer(&group)
        .create_with_context(context)
        .map_err(|e| {
            Error::config(
                BROKER,
                format!("cannot create a consumer for {target}: {e}"),
            )
        })?;
    let (deliveries_tx, deliveries_rx) = mpsc::channel(max_in_flight);
    let (commands_tx, commands_rx) = sync_channel(max_in_flight.saturating_mul(4) + 64);
    let (close_tx, close_rx) = oneshot::channel::<()>();
    let (closed_tx, closed_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let closing = Arc::new(AtomicBool::new(false));
    let acker: Arc<dyn Acknowledger> = Arc::new(KafkaAcker {
        commands: commands_tx.clone(),
        closed: closing.clone(),
        pattern: target.clone(),
    });
    let worker = Worker {
        consumer,
        shared,
        commands: commands_rx,
        commands_tx,
        deliveries: deliveries_tx,
        unsent: VecDeque::new(),
        acker,
        closing: closing.clone(),
        max_in_flight,
        next_token: 0,
        target: target.clone(),
        literal: subscription.pattern.is_literal(),
        private,
        dead_letter: subscription.dead_letter.clone(),
        config: config.clone(),
        producer: producer.clone(),
        runtime: tokio::runtime::Handle::current(),
        last_commit: Instant::now(),
        last_stashed_poll: Instant::now(),
        topics: FastSet::default(),
    };
    std::thread::Builder::new()
        .name("pb-kafka-consumer".into())
        .spawn(move || {
            worker.run();
            let _ = done_tx.send(());
        })
        .map_err(|e| {
            Error::transient(
                BROKER,
                &target,
                format!("cannot start the consumer thread: {e}"),
            )
        })?;
    let close_timeout = config.close_timeout;
    let closing_flag = closing.clone();
    let what = target.clone();
    tokio::spawn(async move {
        let _ = close_rx.await;
        closing_flag.store(true, Ordering::Release);
        if tokio::time::timeout(close_timeout, done_rx).await.is_err() {
            tracing::warn!(
                broker = BROKER,
                subscription = %what,
                "the consumer did not close within {close_timeout:?}; abandoned it (the group takes its partitions back after the session timeout)"
            );
        }
        drop(closed_tx);
    });
    let stream = DeliveryStream::new(deliveries_rx, close_tx, closed_rx);
    let wait = config.session_timeout.saturating_mul(3) + Duration::from_secs(30);
    match tokio::time::timeout(wait, ready_rx).await {
        Ok(Ok(Ok(()))) => Ok(stream),
        Ok(Ok(Err(e))) => {
            stream.close().await;
            Err(e)
        }
        Ok(Err(_)) => {
            stream.close().await;
            Err(Error::transient(
                BROKER,
                &target,
                "the consumer stopped before it joined its group",
            ))
        }
        Err(_) => {
            stream.close().await;
            Err(Error::Timeout {
                broker: BROKER,
                operation: "subscribe (joining the consumer group)",
                destination: target,
                after: wait,
            })
        }
    }
}

type Registry = HashMap<(String, String, i32), i64>;

/// What the members of each group in this process handed out, per partition: offsets below
/// are redeliveries for the next member. The commit metadata carries the same across
/// processes, on brokers that keep it (Kafka does, Tansu drops it).
fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: std::sync::OnceLock<Mutex<Registry>> = std::sync::OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn registry_get(group_key: &str, topic: &str, partition: i32) -> i64 {
    registry()
        .get(&(group_key.to_owned(), topic.to_owned(), partition))
        .copied()
        .unwrap_or(0)
}

fn registry_put(group_key: &str, tp: &Tp, delivered_until: i64) {
    let mut r = registry();
    let e = r
        .entry((group_key.to_owned(), String::from(&*tp.0), tp.1))
        .or_insert(0);
    *e = (*e).max(delivered_until);
}

/// Forgets a private group (nobody resumes it).
fn registry_forget(group_key: &str) {
    registry().retain(|(g, _, _), _| g != group_key);
}

/// The shared name of `topic` in `topics`, allocated the first time it is seen.
fn shared_name(topics: &mut FastSet<Arc<str>>, topic: &str) -> Arc<str> {
    if let Some(name) = topics.get(topic) {
        return Arc::clone(name);
    }
    let name: Arc<str> = Arc::from(topic);
    topics.insert(Arc::clone(&name));
    name
}

fn lock(shared: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

enum Command {
    Settle(u64, Settlement),
    DeadLettered { token: u64, result: Result<()> },
}

/// Hands settlements to the consumer thread.
struct KafkaAcker {
    commands: SyncSender<Command>,
    closed: Arc<AtomicBool>,
    pattern: String,
}

impl Acknowledger for KafkaAcker {
    fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let closed = || Error::closed(BROKER, format!("the subscription to {}", self.pattern));
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        self.commands
            .try_send(Command::Settle(token, settlement))
            .map_err(|e| match e {
                TrySendError::Disconnected(_) => closed(),
                TrySendError::Full(_) => Error::transient(
                    BROKER,
                    &self.pattern,
                    "settlement queue full (more settlements than deliveries)",
                ),
            })
    }
}

/// One handed-out offset not yet committed past.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    acked: bool,
    /// Deliveries of this offset so far (0 = redelivered, count unknown).
    attempts: u32,
}

/// Offset bookkeeping of one partition: what was handed out, what is acknowledged, and the
/// watermark that may be committed.
#[derive(Debug, Default)]
pub(crate) struct Watermarks {
    /// Offset after the last one handed out (the position of this consumer).
    next: i64,
    /// Handed-out offsets not yet committed past, with their state.
    outstanding: BTreeMap<i64, Slot>,
    /// Delivery counts of offsets taken back by a rewind, for their redelivery.
    retried: HashMap<i64, u32>,
    /// Offsets below this were delivered before (by this consumer or, from the commit
    /// metadata, by an earlier member of the group).
    delivered_until: i64,
    /// The last committed watermark (`-1`: none yet).
    committed: i64,
    /// `delivered_until` as last committed (in the commit metadata).
    committed_until: i64,
}

impl Watermarks {
    fn new(start: i64, delivered_until: i64, committed: i64) -> Self {
        let delivered_until = delivered_until.max(start);
        Watermarks {
            next: start,
            delivered_until,
            committed,
            committed_until: delivered_until,
            ..Default::default()
        }
    }

    /// Records offset `offset` as handed out; returns its attempt number (1 = first, 0 =
    /// redelivered with an unknown count).
    fn hand_out(&mut self, offset: i64) -> u32 {
        let attempts = match self.retried.remove(&offset) {
            Some(n) => n.saturating_add(1),
            None if offset < self.delivered_until => 0,
            None => 1,
        };
        self.outstanding.insert(
            offset,
            Slot {
                acked: false,
                attempts: attempts.max(1),
            },
        );
        self.next = offset + 1;
        self.delivered_until = self.delivered_until.max(self.next);
        attempts
    }

    fn ack(&mut self, offset: i64) -> bool {
        match self.outstanding.get_mut(&offset) {
            Some(slot) => {
                slot.acked = true;
                true
            }
            None => false,
        }
    }

    fn contains(&self, offset: i64) -> bool {
        self.outstanding.contains_key(&offset)
    }

    /// Takes back `offset` and everything handed out after it: the next delivery is
    /// `offset` again.
    fn rewind(&mut self, offset: i64) {
        for (o, slot) in self.outstanding.split_off(&offset) {
            self.retried.insert(o, slot.attempts);
        }
        self.next = self.next.min(offset);
    }

    /// The offset that may be committed: the first handed-out offset not acknowledged, or
    /// the position when all are. Forgets the acknowledged offsets below it.
    fn watermark(&mut self) -> i64 {
        while let Some(entry) = self.outstanding.first_entry() {
            if entry.get().acked {
                entry.remove();
            } else {
                break;
            }
        }
        let w = self
            .outstanding
            .first_key_value()
            .map(|(o, _)| *o)
            .unwrap_or(self.next);
        self.retried.retain(|o, _| *o >= w);
        w
    }
}

struct PartitionState {
    marks: Watermarks,
    /// A rewind waiting for its delay, with the partition paused meanwhile.
    rewind: Option<(i64, Instant)>,
}

struct InFlight {
    tp: Tp,
    offset: i64,
    attempt: u32,
    message: Message,
}

/// State shared by the consumer loop and the rebalance callback (same thread).
struct Tracker {
    partitions: FastMap<Tp, PartitionState>,
    tokens: FastMap<u64, InFlight>,
    /// Rejected deliveries whose dead-letter copy is not yet confirmed.
    dead_lettering: FastMap<u64, InFlight>,
    /// Messages polled while the subscription was at its in-flight limit.
    stash: VecDeque<(Tp, i64, Message)>,
    capacity_paused: bool,
    commit_failed: bool,
    ready: Option<oneshot::Sender<Result<()>>>,
    /// Bootstrap servers and group, the key of this group in the delivery registry.
    group_key: String,
}

impl Tracker {
    fn in_flight(&self) -> usize {
        self.tokens.len() + self.dead_lettering.len()
    }

    /// The offsets (with metadata) to commit for `which` partitions (all when `None`), only
    /// those that moved unless `force`.
    fn offsets_to_commit(&mut self, which: Option<&[Tp]>, force: bool) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let force = force || std::mem::take(&mut self.commit_failed);
        for (tp, p) in self.partitions.iter_mut() {
            if which.is_some_and(|w| !w.contains(tp)) {
                continue;
            }
            let w = p.marks.watermark();
            let unchanged =
                w == p.marks.committed && p.marks.delivered_until == p.marks.committed_until;
            if w < 0 || (!force && unchanged) {
                continue;
            }
            let mut e = tpl.add_partition(&tp.0, tp.1);
            if e.set_offset(Offset::Offset(w)).is_ok() {
                e.set_metadata(format!("{METADATA_PREFIX}{}", p.marks.delivered_until));
                p.marks.committed = w;
                p.marks.committed_until = p.marks.delivered_until;
                registry_put(&self.group_key, tp, p.marks.delivered_until);
            }
        }
        tpl
    }

    /// Forgets partitions taken away: their deliveries' settlements become no-ops.
    fn drop_partitions(&mut self, gone: &[Tp]) {
        for tp in gone {
            self.partitions.remove(tp);
        }
        self.tokens.retain(|_, f| !gone.contains(&f.tp));
        self.dead_lettering.retain(|_, f| !gone.contains(&f.tp));
        self.stash.retain(|(tp, ..)| !gone.contains(tp));
    }
}

fn commit(consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList, mode: CommitMode) {
    if tpl.count() == 0 {
        return;
    }
    if let Err(e) = consumer.commit(tpl, mode) {
        tracing::warn!(broker = BROKER, error = %e, "commit failed; retried at the next commit");
        lock(&consumer.context().shared).commit_failed = true;
    }
}

struct Ctx {
    shared: Arc<Mutex<Tracker>>,
    start: Start,
    group_key: String,
}

impl ClientContext for Ctx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::warn!(broker = BROKER, facility = fac, "librdkafka: {message}")
            }
            _ => tracing::debug!(broker = BROKER, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(broker = BROKER, error = %error, "consumer: {reason}");
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, tpl, cooperative)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer, tpl, cooperative)
            }
            other => {
                tracing::warn!(broker = BROKER, error = ?other, "rebalance error; dropping the assignment");
                let all: Vec<Tp> = lock(&self.shared).partitions.keys().cloned().collect();
                lock(&self.shared).drop_partitions(&all);
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(broker = BROKER, error = %e, "offset commit failed; retried at the next commit");
            lock(&self.shared).commit_failed = true;
        }
    }
}

impl Ctx {
    /// Gives each new partition a concrete start offset (committed, or resolved from the
    /// start position and committed at once, so the group's position is fixed from now on),
    /// then assigns.
    fn assign(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        cooperative: bool,
    ) {
        let committed = match consumer.committed_offsets(tpl.clone(), REBALANCE_IO) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(broker = BROKER, error = %e, "cannot read committed offsets; starting from the start position");
                TopicPartitionList::new()
            }
        };
        let mut fresh = TopicPartitionList::new();
        let mut states = Vec::new();
        for elem in tpl.elements() {
            let (topic, partition) = (elem.topic().to_owned(), elem.partition());
            let found = committed.find_partition(&topic, partition);
            let (committed_offset, delivered_until) = match &found {
                Some(e) => match e.offset() {
                    Offset::Offset(o) if o >= 0 => (
                        Some(o),
                        e.metadata()
                            .strip_prefix(METADATA_PREFIX)
                            .and_then(|m| m.parse::<i64>().ok())
                            .unwrap_or(o),
                    ),
                    _ => (None, 0),
                },
                None => (None, 0),
            };
            let delivered_until =
                delivered_until.max(registry_get(&self.group_key, &topic, partition));
            let start = match committed_offset {
                Some(o) => o,
                None => {
                    let s = self.resolve_start(consumer, &topic, partition);
                    let mut e = fresh.add_partition(&topic, partition);
                    let _ = e.set_offset(Offset::Offset(s));
                    e.set_metadata(format!("{METADATA_PREFIX}{s}"));
                    s
                }
            };
            states.push((
                (Arc::from(topic), partition),
                start,
                delivered_until,
                committed_offset,
            ));
        }
        let mut assignment = TopicPartitionList::new();
        for ((topic, partition), start, _, _) in &states {
            let _ = assignment.add_partition_offset(topic, *partition, Offset::Offset(*start));
        }
        let result = if cooperative {
            consumer.incremental_assign(&assignment)
        } else {
            consumer.assign(&assignment)
        };
        if let Err(e) = result {
            tracing::warn!(broker = BROKER, error = %e, "assign failed");
        }
        let mut tracker = lock(&self.shared);
        for (tp, start, delivered_until, committed_offset) in states {
            tracker.partitions.insert(
                tp,
                PartitionState {
                    marks: Watermarks::new(
                        start,
                        delivered_until,
                        committed_offset.unwrap_or(start),
                    ),
                    rewind: None,
                },
            );
        }
        let pause = tracker.capacity_paused;
        let ready = tracker.ready.take();
        drop(tracker);
        if pause && assignment.count() > 0 {
            let _ = consumer.pause(&assignment);
        }
        if fresh.count() > 0 {
            if let Err(e) = consumer.commit(&fresh, CommitMode::Sync) {
                tracing::warn!(broker = BROKER, error = %e, "cannot commit the start offsets of a new group");
            }
        }
        if let Some(ready) = ready {
            let _ = ready.send(Ok(()));
        }
    }

    fn resolve_start(&self, consumer: &BaseConsumer<Self>, topic: &str, partition: i32) -> i64 {
        let (low, high) = match consumer.fetch_watermarks(topic, partition, REBALANCE_IO) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(broker = BROKER, topic, partition, error = %e, "cannot read the partition's offsets; starting at 0");
                (0, 0)
            }
        };
        match &self.start {
            Start::Latest => high,
            Start::Earliest => low,
            Start::Offset(o) => (*o).clamp(low, high.max(low)),
            Start::Time(ms) => {
                let mut q = TopicPartitionList::new();
                let _ = q.add_partition_offset(topic, partition, Offset::Offset(*ms));
                match consumer.offsets_for_times(q, REBALANCE_IO) {
                    Ok(r) => match r.find_partition(topic, partition).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) if o >= 0 => o,
                        _ => high,
                    },
                    Err(_) => high,
                }
            }
        }
    }

    /// Commits what is acknowledged on the revoked partitions (unless the assignment was
    /// lost), forgets their deliveries, then unassigns.
    fn revoke(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        cooperative: bool,
    ) {
        let gone: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        let offsets = lock(&self.shared).offsets_to_commit(Some(&gone), true);
        if !consumer.assignment_lost() {
            commit(consumer, &offsets, CommitMode::Sync);
        }
        lock(&self.shared).drop_partitions(&gone);
        let result = if cooperative {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = result {
            tracing::warn!(broker = BROKER, error = %e, "unassign failed");
        }
    }
}

struct Worker {
    consumer: BaseConsumer<Ctx>,
    shared: Arc<Mutex<Tracker>>,
    commands: Receiver<Command>,
    commands_tx: SyncSender<Command>,
    deliveries: mpsc::Sender<Result<Delivery>>,
    /// Deliveries the channel had no room for (only after a rebalance dropped tokens whose
    /// deliveries were still queued).
    unsent: VecDeque<Delivery>,
    acker: Arc<dyn Acknowledger>,
    closing: Arc<AtomicBool>,
    max_in_flight: usize,
    next_token: u64,
    target: String,
    literal: bool,
    private: bool,
    dead_letter: Option<String>,
    config: Arc<KafkaConfig>,
    producer: Arc<FutureProducer>,
    runtime: tokio::runtime::Handle,
    last_commit: Instant,
    /// When the consumer was last polled while the stash held a full window.
    last_stashed_poll: Instant,
    /// The names of the topics records came from, each allocated once and shared by the
    /// partition key of every record from that topic. Never pruned: it holds one name per
    /// topic this subscription ever received from.
    topics: FastSet<Arc<str>>,
}

impl Worker {
    fn run(mut self) {
        if let Err(e) = self.start() {
            if let Some(ready) = lock(&self.shared).ready.take() {
                let _ = ready.send(Err(e));
            }
            self.shutdown();
            return;
        }
        while !self.closing.load(Ordering::Acquire) && !self.deliveries.is_closed() {
            self.step();
        }
        self.shutdown();
    }

    /// Checks the topic (for a literal subscription) and subscribes.
    fn start(&self) -> Result<()> {
        if self.literal {
            let metadata = self
                .consumer
                .fetch_metadata(Some(&self.target), REBALANCE_IO)
                .map_err(|e| Error::Connection {
                    broker: BROKER,
                    endpoint: self.config.bootstrap.join(","),
                    reason: format!("cannot read the metadata of {}: {e}", self.target),
                    source: Some(Box::new(e)),
                })?;
            let missing = metadata
                .topics()
                .iter()
                .find(|t| t.name() == self.target)
                .is_none_or(|t| t.error().is_some() || t.partitions().is_empty());
            if missing {
                return Err(Error::permanent(
                    BROKER,
                    &self.target,
                    if self.config.auto_create {
                        "the topic does not exist and the broker did not create it (auto-create is off on the broker)"
                    } else {
                        "the topic does not exist (auto_create=false)"
                    },
                ));
            }
        }
        self.consumer
            .subscribe(&[self.target.as_str()])
            .map_err(|e| Error::permanent(BROKER, &self.target, format!("cannot subscribe: {e}")))
    }

    fn step(&mut self) {
        self.drain_commands();
        self.flush_unsent();
        let now = Instant::now();
        self.fire_rewinds(now);
        if now.saturating_duration_since(self.last_commit) >= self.config.commit_interval {
            self.last_commit = now;
            let offsets = lock(&self.shared).offsets_to_commit(None, false);
            commit(&self.consumer, &offsets, CommitMode::Async);
        }
        let (at_capacity, pause, stash_full) = {
            let mut t = lock(&self.shared);
            while t.in_flight() < self.max_in_flight {
                let Some((tp, offset, message)) = t.stash.pop_front() else {
                    break;
                };
                drop(t);
                self.hand_out(tp, offset, message);
                t = lock(&self.shared);
            }
            let at_capacity = t.in_flight() >= self.max_in_flight;
            // Fetching pauses only when two windows' worth of messages wait in the stash
            // (a subscriber that stopped settling) and resumes when the stash is empty, not
            // at every freed slot: a resume drops what librdkafka prefetched and waits for a
            // new fetch, which at the in-flight limit meant a pause and a resume per
            // acknowledged message (≈500 msg/s on Tansu).
            let pause = if t.capacity_paused {
                !t.stash.is_empty()
            } else {
                t.stash.len() >= self.max_in_flight.saturating_mul(2)
            };
            (at_capacity, pause, t.stash.len() >= self.max_in_flight)
        };
        self.set_capacity_pause(pause);
        if at_capacity {
            // Still poll, so rebalances are served; what is fetched goes to the stash. Once
            // it holds a window, only every `STASHED_POLL` (librdkafka's own queue limit
            // holds the rest back meanwhile).
            if let Ok(cmd) = self.commands.recv_timeout(POLL) {
                self.handle(cmd);
            }
            if !stash_full || self.last_stashed_poll.elapsed() >= STASHED_POLL {
                self.last_stashed_poll = Instant::now();
                let _ = self.poll_once(Duration::ZERO);
            }
        } else if self.poll_once(POLL) {
            for _ in 1..BURST {
                if !self.poll_once(Duration::ZERO) {
                    break;
                }
            }
        }
    }

    /// Polls one record (waiting up to `timeout`) and hands it out, or stashes it at the
    /// in-flight limit. True when it handed one out, so there may be room for the next.
    fn poll_once(&mut self, timeout: Duration) -> bool {
        let polled = match self.consumer.poll(timeout) {
            None => return false,
            Some(Ok(record)) => Ok((
                (
                    shared_name(&mut self.topics, record.topic()),
                    record.partition(),
                ),
                record.offset(),
                mapping::from_record(&record),
            )),
            Some(Err(e)) => Err(e),
        };
        match polled {
            Ok((tp, offset, message)) => {
                let full = {
                    let t = lock(&self.shared);
                    t.in_flight() >= self.max_in_flight || !t.stash.is_empty()
                };
                if full {
                    lock(&self.shared).stash.push_back((tp, offset, message));
                    false
                } else {
                    self.hand_out(tp, offset, message);
                    true
                }
            }
            Err(e) => {
                use rdkafka::error::RDKafkaErrorCode as Code;
                let fatal = match e.rdkafka_error_code() {
                    Some(
                        Code::GroupAuthorizationFailed
                        | Code::TopicAuthorizationFailed
                        | Code::InvalidGroupId
                        | Code::Fatal,
                    ) => Some(Error::permanent(
                        BROKER,
                        &self.target,
                        format!("the subscription cannot go on: {e}"),
                    )),
                    Some(Code::SaslAuthenticationFailed | Code::Authentication) => {
                        Some(Error::Auth {
                            broker: BROKER,
                            endpoint: self.config.bootstrap.join(","),
                            reason: e.to_string(),
                        })
                    }
                    _ => None,
                };
                match fatal {
                    Some(error) => {
                        tracing::error!(broker = BROKER, subscription = %self.target, error = %error, "subscription failed");
                        let _ = self.deliveries.try_send(Err(error));
                        self.closing.store(true, Ordering::Release);
                    }
                    None => {
                        tracing::warn!(broker = BROKER, subscription = %self.target, error = %e, "consumer error (librdkafka retries)")
                    }
                }
                false
            }
        }
    }

    fn set_capacity_pause(&mut self, pause: bool) {
        let mut t = lock(&self.shared);
        if t.capacity_paused == pause {
            return;
        }
        t.capacity_paused = pause;
        let mut tpl = TopicPartitionList::new();
        for (tp, p) in &t.partitions {
            if p.rewind.is_none() {
                tpl.add_partition(&tp.0, tp.1);
            }
        }
        drop(t);
        if tpl.count() == 0 {
            return;
        }
        let result = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = result {
            tracing::debug!(broker = BROKER, error = %e, "pause/resume at the in-flight limit");
        }
    }

    fn hand_out(&mut self, tp: Tp, offset: i64, message: Message) {
        let mut t = lock(&self.shared);
        let Some(p) = t.partitions.get_mut(&tp) else {
            return; // a partition no longer ours: its new owner delivers it
        };
        if offset < p.marks.next || p.rewind.is_some() {
            return; // fetched before a rewind of its partition
        }
        let attempt = p.marks.hand_out(offset);
        let token = self.next_token;
        self.next_token += 1;
        t.tokens.insert(
            token,
            InFlight {
                tp: tp.clone(),
                offset,
                attempt: attempt.max(1),
                message: message.clone(),
            },
        );
        drop(t);
        let delivery = Delivery {
            message,
            info: DeliveryInfo {
                topic: String::from(&*tp.0),
                attempt,
                redelivered: attempt != 1,
                position: Some(Position::Offset {
                    partition: tp.1,
                    offset,
                }),
                partition: Some(tp.1),
            },
            handle: AckHandle::new(self.acker.clone(), token),
        };
        if self.unsent.is_empty() {
            if let Err(mpsc::error::TrySendError::Full(Ok(d))) =
                self.deliveries.try_send(Ok(delivery))
            {
                self.unsent.push_back(d);
            }
        } else {
            self.unsent.push_back(delivery);
        }
    }

    fn flush_unsent(&mut self) {
        while let Some(d) = self.unsent.pop_front() {
            match self.deliveries.try_send(Ok(d)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(Ok(d))) => {
                    self.unsent.push_front(d);
                    return;
                }
                Err(_) => return,
            }
        }
    }

    fn drain_commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            self.handle(cmd);
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Settle(token, settlement) => self.settle(token, settlement),
            Command::DeadLettered { token, result } => {
                let mut t = lock(&self.shared);
                let Some(f) = t.dead_lettering.remove(&token) else {
                    return;
                };
                match result {
                    Ok(()) => {
                        if let Some(p) = t.partitions.get_mut(&f.tp) {
                            p.marks.ack(f.offset);
                        }
                    }
                    Err(e) => {
                        drop(t);
                        tracing::warn!(broker = BROKER, topic = %f.tp.0, partition = f.tp.1, offset = f.offset, error = %e, "dead-lettering failed; the message is delivered again");
                        self.rewind(&f.tp, f.offset, None);
                    }
                }
            }
        }
    }

    fn settle(&mut self, token: u64, settlement: Settlement) {
        let mut t = lock(&self.shared);
        let Some(f) = t.tokens.remove(&token) else {
            return; // its partition was revoked or rewound: it is delivered again
        };
        match settlement {
            Settlement::Ack => {
                if let Some(p) = t.partitions.get_mut(&f.tp) {
                    p.marks.ack(f.offset);
                }
            }
            Settlement::Nack { delay } => {
                drop(t);
                self.rewind(&f.tp, f.offset, delay);
            }
            Settlement::Reject { reason } => {
                let destination = self
                    .dead_letter
                    .clone()
                    .unwrap_or_else(|| self.config.dead_letter_for(&f.tp.0));
                let mut copy = f.message.clone();
                copy.headers.set(well_known::REJECT_REASON, reason);
                copy.headers
                    .set(well_known::ORIGINAL_TOPIC, String::from(&*f.tp.0));
                copy.headers
                    .set(well_known::ATTEMPTS, f.attempt.to_string());
                copy.headers
                    .set("x-polybridge-original-partition", f.tp.1.to_string());
                copy.headers
                    .set("x-polybridge-original-offset", f.offset.to_string());
                t.dead_lettering.insert(token, f);
                drop(t);
                let producer = self.producer.clone();
                let commands = self.commands_tx.clone();
                let max_payload = self.config.max_payload();
                let timeout = self.config.session_timeout.max(Duration::from_secs(30));
                self.runtime.spawn(async move {
                    let result = publisher::produce(
                        &producer,
                        &destination,
                        &copy,
                        None,
                        max_payload,
                        Deadline::after(timeout),
                    )
                    .await
                    .map(|_| ());
                    let _ = commands.try_send(Command::DeadLettered { token, result });
                });
            }
        }
    }

    /// Takes back `offset` and what followed it on its partition; the partition restarts
    /// there, now or after `delay` (paused meanwhile).
    fn rewind(&mut self, tp: &Tp, offset: i64, delay: Option<Duration>) {
        let mut t = lock(&self.shared);
        let Some(p) = t.partitions.get_mut(tp) else {
            return;
        };
        if !p.marks.contains(offset) && p.rewind.is_none() {
            return;
        }
        p.marks.rewind(offset);
        let delay = delay.unwrap_or(Duration::ZERO);
        let target = match p.rewind {
            Some((o, _)) => o.min(offset),
            None => offset,
        };
        let was_paused = p.rewind.is_some();
        p.rewind = Some((target, Instant::now() + delay));
        t.tokens.retain(|_, f| !(f.tp == *tp && f.offset > offset));
        t.stash.retain(|(stp, ..)| stp != tp);
        drop(t);
        if !was_paused {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.0, tp.1);
            if let Err(e) = self.consumer.pause(&tpl) {
                tracing::debug!(broker = BROKER, error = %e, "pause for a rewind");
            }
        }
        self.fire_rewinds(Instant::now());
    }

    /// Seeks and resumes the partitions whose rewind delay is over at `now`.
    fn fire_rewinds(&mut self, now: Instant) {
        let due: Vec<(Tp, i64)> = {
            let t = lock(&self.shared);
            t.partitions
                .iter()
                .filter_map(|(tp, p)| match p.rewind {
                    Some((o, at)) if at <= now => Some((tp.clone(), o)),
                    _ => None,
                })
                .collect()
        };
        for (tp, offset) in due {
            match self
                .consumer
                .seek(&tp.0, tp.1, Offset::Offset(offset), Duration::from_secs(5))
            {
                Ok(()) => {
                    let capacity_paused = {
                        let mut t = lock(&self.shared);
                        if let Some(p) = t.partitions.get_mut(&tp) {
                            p.rewind = None;
                        }
                        t.capacity_paused
                    };
                    if !capacity_paused {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&tp.0, tp.1);
                        let _ = self.consumer.resume(&tpl);
                    }
                }
                Err(e) => {
                    tracing::debug!(broker = BROKER, topic = %tp.0, partition = tp.1, error = %e, "seek for a rewind failed; retrying");
                }
            }
        }
    }

    /// Commits, closes the consumer (leaving the group) within the close timeout, and
    /// destroys it; a consumer that does not close in time is leaked, not destroyed.
    fn shutdown(mut self) {
        self.closing.store(true, Ordering::Release);
        let deadline = Instant::now()
            + self
                .config
                .close_timeout
                .saturating_sub(Duration::from_millis(500));
        // Settlements made before the stream was closed still count.
        self.drain_commands();
        let offsets = lock(&self.shared).offsets_to_commit(None, false);
        commit(&self.consumer, &offsets, CommitMode::Sync);
        {
            let mut t = lock(&self.shared);
            t.tokens.clear();
            t.dead_lettering.clear();
            t.stash.clear();
        }
        let mut closed = false;
        if self.consumer.close_queue().is_ok() {
            while Instant::now() < deadline {
                if self.consumer.closed() {
                    closed = true;
                    break;
                }
                let _ = self.consumer.poll(Duration::from_millis(50));
            }
        }
        if closed {
            drop(self.consumer);
        } else {
            tracing::warn!(broker = BROKER, subscription = %self.target, private = self.private, "the consumer did not close in time; leaking it instead of destroying it");
            std::mem::forget(self.consumer);
        }
        if self.private {
            registry_forget(&lock(&self.shared).group_key);
        }
        drop(self.deliveries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contiguous_acknowledged_watermark_is_committed() {
        let mut w = Watermarks::new(1, 1, 1);
        for o in 1..=10 {
            assert_eq!(w.hand_out(o), 1);
        }
        for o in 2..=10 {
            w.ack(o);
        }
        assert_eq!(w.watermark(), 1, "offset 1 is not acked: nothing past it");
        w.ack(1);
        assert_eq!(w.watermark(), 11);
        assert!(w.outstanding.is_empty());
    }

    #[test]
    fn a_rewind_takes_back_later_offsets_and_counts_attempts() {
        let mut w = Watermarks::new(0, 0, -1);
        for o in 0..5 {
            w.hand_out(o);
        }
        w.ack(0);
        w.ack(3);
        w.rewind(2);
        assert_eq!(w.next, 2);
        assert_eq!(w.watermark(), 1);
        assert_eq!(w.hand_out(2), 2, "second delivery of 2");
        assert_eq!(w.hand_out(3), 2, "3 was taken back with 2");
        w.ack(1);
        w.ack(2);
        assert_eq!(w.watermark(), 3, "3's ack was dropped by the rewind");
    }

    #[test]
    fn offsets_below_the_committed_metadata_are_redeliveries() {
        let mut w = Watermarks::new(5, 8, 5);
        assert_eq!(w.hand_out(5), 0);
        assert_eq!(w.hand_out(7), 0);
        assert_eq!(w.hand_out(8), 1);
    }
}
