//! Stream subscriptions: a consumer in a consumer group.
//!
//! Two tasks per subscription. The reader, on a connection of its own, claims the entries of
//! dead consumers (`XAUTOCLAIM`) and blocks in `XREADGROUP … >`, always for as many entries
//! as there are free in-flight slots (a semaphore); when few are free it waits up to
//! [`BATCH_WAIT`] for a quarter of the window, so reads under load fetch batches rather than
//! an entry or two per round trip. The pump owns everything else: it hands out deliveries,
//! applies settlements sent to it over a bounded channel (the acks queued at once in one
//! `XACK`, `XCLAIM` to redeliver, dead-lettering), redelivers nacked entries after their
//! delay, and keeps held entries from looking idle. No lock on the hot path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use polybridge_core::{
    new_message_id, well_known, AckHandle, Acknowledger, Delivery, DeliveryInfo, DeliveryStream,
    Error, Position, Result, Settlement, StartPosition, Subscription,
};
use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;

use crate::{command_error, mapping, RedisBroker, BROKER};

/// A stream entry: its id and its field/value pairs.
type Entry = (String, Vec<(Vec<u8>, Vec<u8>)>);

pub(crate) async fn subscribe(
    broker: &RedisBroker,
    key: String,
    subscription: Subscription,
) -> Result<DeliveryStream> {
    let (group, temporary) = match &subscription.group {
        Some(g) => (g.clone(), false),
        None => (format!("pb-{}", new_message_id()), true),
    };
    let consumer = format!("pb-{}", new_message_id());
    let start = match &subscription.start {
        StartPosition::Latest => "$".to_owned(),
        StartPosition::Earliest => "0".to_owned(),
        StartPosition::Time(t) => {
            let ms = t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default();
            // Everything from `ms` on: the group starts after the last id before it.
            format!("{}-18446744073709551615", ms.saturating_sub(1))
        }
        StartPosition::Position(id) => id.clone(),
    };
    let mut connection = broker.connection.clone();
    let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(&group)
        .arg(&start)
        .arg("MKSTREAM")
        .query_async(&mut connection)
        .await;
    match created {
        Ok(_) => {}
        Err(e) if e.code() == Some("BUSYGROUP") => {}
        Err(e) => return Err(command_error(e, &key, "create the consumer group")),
    }
    // Where the group is now, for creating it again if it is lost before anything is read.
    let delivered_up_to = group_last_delivered(&mut connection, &key, &group)
        .await
        .unwrap_or(start);
    let reader_connection = broker.dedicated_connection().await?;
    let max_in_flight = subscription.max_in_flight.max(1);
    let (lost_tx, lost_rx) = mpsc::channel(1);
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let (entries_tx, entries_rx) = mpsc::channel(max_in_flight);
    let (stop_tx, stop_rx) = watch::channel(false);
    let reader = tokio::spawn(read_loop(
        reader_connection,
        Reader {
            key: key.clone(),
            group: group.clone(),
            consumer: consumer.clone(),
            block: broker.config.block,
            claim_idle: broker.config.claim_idle,
            batch: (max_in_flight / 4).max(1),
        },
        delivered_up_to,
        permits.clone(),
        entries_tx,
        lost_tx,
        stop_rx,
    ));
    let (deliveries_tx, deliveries_rx) = mpsc::channel(max_in_flight);
    let (settle_tx, settle_rx) = mpsc::channel(max_in_flight);
    let (close_tx, close_rx) = oneshot::channel();
    let (closed_tx, closed_rx) = oneshot::channel();
    let closed = Arc::new(AtomicBool::new(false));
    let acker: Arc<dyn Acknowledger> = Arc::new(StreamAcker {
        settle: settle_tx,
        closed: closed.clone(),
        key: key.clone(),
    });
    let pump = Pump {
        connection,
        dead_letter: subscription
            .dead_letter
            .clone()
            .unwrap_or_else(|| format!("{key}.dlq")),
        key,
        group,
        consumer,
        temporary,
        max_deliveries: broker.config.max_deliveries,
        claim_idle: broker.config.claim_idle,
        acker,
        closed,
        deliveries: deliveries_tx,
        permits,
        held: HashMap::new(),
        delayed: Vec::new(),
        unacked: Vec::new(),
        next_token: 0,
    };
    tokio::spawn(pump.run(
        Inputs {
            entries: entries_rx,
            settlements: settle_rx,
            lost: lost_rx,
            close: close_rx,
        },
        stop_tx,
        reader,
        closed_tx,
    ));
    Ok(DeliveryStream::new(deliveries_rx, close_tx, closed_rx))
}

/// Hands settlements to the pump.
struct StreamAcker {
    settle: mpsc::Sender<(u64, Settlement)>,
    closed: Arc<AtomicBool>,
    key: String,
}

impl Acknowledger for StreamAcker {
    fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let closed = || Error::closed(BROKER, format!("the subscription to {}", self.key));
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        // At most `max_in_flight` deliveries are unsettled, each settles once: never full.
        self.settle
            .try_send((token, settlement))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Closed(_) => closed(),
                mpsc::error::TrySendError::Full(_) => {
                    Error::transient(BROKER, &self.key, "settlement queue full")
                }
            })
    }
}

/// What the reader reads.
struct Reader {
    key: String,
    group: String,
    consumer: String,
    block: Duration,
    claim_idle: Duration,
    /// Free slots a read waits for (at most [`BATCH_WAIT`]) when fewer are free.
    batch: usize,
}

/// How long a read waits for [`Reader::batch`] free slots before reading with fewer.
const BATCH_WAIT: Duration = Duration::from_millis(2);

/// Reads new entries, and every `claim_idle / 2` first claims abandoned ones, always for at
/// most as many entries as there are free in-flight slots. Sends each with its attempt.
/// `delivered_up_to` is the id of the last entry the group had delivered when the
/// subscription began; the loop keeps it as the last entry it read, to create the group
/// again if it is lost (see [`create_group_again`]), asking the pump over `lost` for the
/// entries it has not seen acknowledged.
async fn read_loop(
    mut connection: ConnectionManager,
    reader: Reader,
    mut delivered_up_to: String,
    permits: Arc<Semaphore>,
    entries: mpsc::Sender<(Entry, u32)>,
    lost: mpsc::Sender<oneshot::Sender<Option<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let key = reader.key.as_str();
    let mut backoff = Duration::from_millis(100);
    let block_ms = u64::try_from(reader.block.as_millis()).unwrap_or(1000);
    let mut next_claim = Instant::now();
    let mut claim_cursor = "0-0".to_owned();
    loop {
        let first = tokio::select! {
            _ = stop.changed() => return,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        first.forget();
        let mut count = 1usize;
        while let Ok(p) = permits.try_acquire() {
            p.forget();
            count += 1;
        }
        // Under load slots free one by one as sinks confirm; reading each time one is free
        // would fetch an entry or two per round trip. Wait briefly for a batch of slots
        // (bounded, so a subscriber that holds most of its window still gets entries).
        if count < reader.batch {
            let more = u32::try_from(reader.batch - count).unwrap_or(u32::MAX);
            tokio::select! {
                _ = stop.changed() => return,
                got = tokio::time::timeout(BATCH_WAIT, permits.acquire_many(more)) => {
                    if let Ok(Ok(p)) = got {
                        p.forget();
                        count = reader.batch;
                    }
                }
            }
            while let Ok(p) = permits.try_acquire() {
                p.forget();
                count += 1;
            }
        }
        if Instant::now() >= next_claim {
            next_claim = Instant::now() + (reader.claim_idle / 2).max(Duration::from_millis(50));
            let claimed = claim_abandoned(&mut connection, &reader, count, &mut claim_cursor).await;
            if *stop.borrow() {
                return;
            }
            if !claimed.is_empty() {
                permits.add_permits(count.saturating_sub(claimed.len()));
                for (entry, attempt) in claimed {
                    tracing::info!(broker = BROKER, key, entry = %entry.0, attempt, "claimed an entry of a consumer that stopped answering");
                    if entries.send((entry, attempt)).await.is_err() {
                        return;
                    }
                }
                continue;
            }
        }
        let mut xreadgroup = redis::cmd("XREADGROUP");
        xreadgroup
            .arg("GROUP")
            .arg(&reader.group)
            .arg(&reader.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(key)
            .arg(">");
        // Never cancelled: a cancelled blocking read still runs on the server and would
        // take entries for a consumer that is gone. Close waits at most `block` for it;
        // what it read stays pending for this consumer and is released on close.
        let read = xreadgroup.query_async::<Value>(&mut connection).await;
        if *stop.borrow() {
            return;
        }
        match read {
            Ok(reply) => {
                backoff = Duration::from_millis(100);
                let got = parse_read(reply);
                if let Some((last, _)) = got.last() {
                    delivered_up_to.clone_from(last);
                }
                permits.add_permits(count.saturating_sub(got.len()));
                for entry in got {
                    if entries.send((entry, 1)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                permits.add_permits(count);
                let error = if e.code() == Some("NOGROUP") {
                    let (ask, answer) = oneshot::channel();
                    if lost.send(ask).await.is_err() {
                        return; // the pump is gone
                    }
                    let Ok(oldest_unsettled) = answer.await else {
                        return;
                    };
                    let from = match oldest_unsettled {
                        Some(oldest) => id_before(&oldest),
                        None => delivered_up_to.clone(),
                    };
                    match create_group_again(&mut connection, &reader, &from).await {
                        Ok(()) => {
                            tracing::warn!(broker = BROKER, key, group = %reader.group, after = %from, "the consumer group was gone (destroyed, or the key deleted or lost in a restart) and is created again: it delivers the entries after the last this subscription saw acknowledged; deliveries in flight come again");
                            claim_cursor = "0-0".to_owned();
                            backoff = Duration::from_millis(100);
                            continue;
                        }
                        Err(e) => command_error(e, key, "create the lost consumer group again"),
                    }
                } else {
                    command_error(e, key, "read")
                };
                tracing::warn!(broker = BROKER, key, error = %error, retry_in = ?backoff, "cannot read the stream");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Creates the group again, delivering the entries after `after`, with `MKSTREAM`: the key
/// may be gone too (deleted, or lost in a restart of a Redis without persistence; a
/// publisher's `XADD` may have created it again since). Entry ids grow with time, so
/// entries added after the loss come after `after` even in a stream created again.
/// Another member of the group may have created it first (`BUSYGROUP`): it then reads on
/// from where that one put it.
async fn create_group_again(
    connection: &mut ConnectionManager,
    reader: &Reader,
    after: &str,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&reader.key)
        .arg(&reader.group)
        .arg(after)
        .arg("MKSTREAM")
        .query_async(connection)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

/// The id of the last entry `group` delivered (`XINFO GROUPS`), `None` when Redis cannot
/// say.
async fn group_last_delivered(
    connection: &mut ConnectionManager,
    key: &str,
    group: &str,
) -> Option<String> {
    let groups: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(connection)
        .await
        .ok()?;
    let Value::Array(groups) = groups else {
        return None;
    };
    groups.iter().find_map(|g| {
        let fields: Vec<(String, &Value)> = match g {
            Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|kv| Some((text(&kv[0])?, kv.get(1)?)))
                .collect(),
            Value::Map(pairs) => pairs
                .iter()
                .filter_map(|(k, v)| Some((text(k)?, v)))
                .collect(),
            _ => return None,
        };
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| text(v))
        };
        (field("name")? == group).then(|| field("last-delivered-id"))?
    })
}

/// A stream entry id (`<ms>-<seq>`) as numbers, to compare ids.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The id just before `id`: a group created at it delivers `id` next.
fn id_before(id: &str) -> String {
    match parse_id(id) {
        Some((ms, seq)) if seq > 0 => format!("{ms}-{}", seq - 1),
        Some((ms, _)) if ms > 0 => format!("{}-{}", ms - 1, u64::MAX),
        _ => "0-0".to_owned(),
    }
}

/// Claims up to `count` entries idle for `claim_idle` (their consumer died, or a read or ack
/// reply was lost) with `XAUTOCLAIM`, each with the delivery count Redis keeps.
async fn claim_abandoned(
    connection: &mut ConnectionManager,
    reader: &Reader,
    count: usize,
    cursor: &mut String,
) -> Vec<(Entry, u32)> {
    let idle_ms = u64::try_from(reader.claim_idle.as_millis()).unwrap_or(u64::MAX);
    let claimed: redis::RedisResult<Value> = redis::cmd("XAUTOCLAIM")
        .arg(&reader.key)
        .arg(&reader.group)
        .arg(&reader.consumer)
        .arg(idle_ms)
        .arg(cursor.as_str())
        .arg("COUNT")
        .arg(count)
        .query_async(connection)
        .await;
    let entries = match claimed {
        Ok(Value::Array(mut parts)) if !parts.is_empty() => {
            let rest = parts.split_off(1);
            *cursor = text(&parts[0]).unwrap_or_else(|| "0-0".into());
            rest.into_iter()
                .next()
                .map(parse_entries)
                .unwrap_or_default()
        }
        Ok(_) => Vec::new(),
        Err(e) => {
            tracing::debug!(broker = BROKER, key = %reader.key, error = %e, "XAUTOCLAIM failed");
            Vec::new()
        }
    };
    if entries.is_empty() {
        return Vec::new();
    }
    let mut pipe = redis::pipe();
    for (id, _) in &entries {
        pipe.cmd("XPENDING")
            .arg(&reader.key)
            .arg(&reader.group)
            .arg(id)
            .arg(id)
            .arg(1);
    }
    let replies: Vec<Value> = pipe.query_async(connection).await.unwrap_or_default();
    let mut counts = HashMap::new();
    for reply in replies {
        if let Value::Array(rows) = reply {
            for row in rows {
                if let Value::Array(cols) = row {
                    if let (Some(id), Some(Value::Int(n))) =
                        (cols.first().and_then(text), cols.get(3))
                    {
                        counts.insert(id, u32::try_from(*n).unwrap_or(u32::MAX));
                    }
                }
            }
        }
    }
    entries
        .into_iter()
        .map(|e| {
            // Claimed entries were delivered before: at least a second attempt.
            let attempt = counts.get(&e.0).copied().unwrap_or(2).max(2);
            (e, attempt)
        })
        .collect()
}

/// A delivery handed out and not yet settled.
struct Held {
    entry_id: String,
    attempt: u32,
    since: Instant,
}

struct Pump {
    connection: ConnectionManager,
    key: String,
    group: String,
    consumer: String,
    temporary: bool,
    dead_letter: String,
    max_deliveries: u32,
    claim_idle: Duration,
    acker: Arc<dyn Acknowledger>,
    closed: Arc<AtomicBool>,
    deliveries: mpsc::Sender<Result<Delivery>>,
    /// One permit per free in-flight slot; taken by the reader or a claim, given back when
    /// a delivery is acked or dead-lettered.
    permits: Arc<Semaphore>,
    held: HashMap<u64, Held>,
    /// Nacked with a delay: when to redeliver.
    delayed: Vec<(Instant, Held)>,
    /// Entry ids whose `XACK` failed (connection lost): retried on every tick.
    unacked: Vec<String>,
    next_token: u64,
}

/// What the pump is sent.
struct Inputs {
    /// Entries the reader read or claimed, with their attempt.
    entries: mpsc::Receiver<(Entry, u32)>,
    settlements: mpsc::Receiver<(u64, Settlement)>,
    /// The reader found the group gone and asks for the oldest entry not acknowledged.
    lost: mpsc::Receiver<oneshot::Sender<Option<String>>>,
    close: oneshot::Receiver<()>,
}

impl Pump {
    async fn run(
        mut self,
        inputs: Inputs,
        stop_reader: watch::Sender<bool>,
        reader: tokio::task::JoinHandle<()>,
        closed: oneshot::Sender<()>,
    ) {
        let Inputs {
            mut entries,
            mut settlements,
            mut lost,
            mut close,
        } = inputs;
        let tick_every = (self.claim_idle / 2).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_due = self.delayed.iter().map(|(due, _)| *due).min();
            tokio::select! {
                biased;
                _ = &mut close => break,
                Some(first) = settlements.recv() => {
                    // Everything already queued settles together: one `XACK` for all acks.
                    let mut batch = vec![first];
                    while let Ok(next) = settlements.try_recv() {
                        batch.push(next);
                    }
                    self.settle_batch(batch).await;
                }
                Some(((id, fields), attempt)) = entries.recv() => {
                    if !self.hand_out(id, fields, attempt).await {
                        break;
                    }
                }
                _ = sleep_until_opt(next_due) => self.redeliver_due().await,
                _ = tick.tick() => self.tick().await,
                Some(answer) = lost.recv() => {
                    let _ = answer.send(self.oldest_unsettled());
                }
            }
        }
        let _ = stop_reader.send(true);
        let _ = reader.await;
        self.closed.store(true, Ordering::Release);
        settlements.close();
        while let Some((token, settlement)) = settlements.recv().await {
            self.settle(token, settlement).await;
        }
        self.retry_acks().await;
        self.release_pending().await;
        if self.temporary {
            let destroyed: redis::RedisResult<Value> = redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(&self.key)
                .arg(&self.group)
                .query_async(&mut self.connection)
                .await;
            if let Err(e) = destroyed {
                tracing::debug!(broker = BROKER, key = %self.key, error = %e, "cannot destroy the subscription's group");
            }
        }
        let _ = closed.send(());
    }

    /// The oldest entry handed out and not acknowledged: held, nacked and waiting for its
    /// redelivery, or acked without the `XACK` getting through.
    fn oldest_unsettled(&self) -> Option<String> {
        self.held
            .values()
            .map(|held| &held.entry_id)
            .chain(self.delayed.iter().map(|(_, held)| &held.entry_id))
            .chain(self.unacked.iter())
            .filter_map(|id| Some((parse_id(id)?, id)))
            .min()
            .map(|(_, id)| id.clone())
    }

    /// Delivers an entry as attempt `attempt`, or dead-letters it past `max_deliveries`.
    /// False when the subscriber is gone.
    async fn hand_out(
        &mut self,
        entry_id: String,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        attempt: u32,
    ) -> bool {
        if self.max_deliveries > 0 && attempt > self.max_deliveries {
            let reason = format!("delivered {} times without being acked", attempt - 1);
            let held = Held {
                entry_id,
                attempt: attempt - 1,
                since: Instant::now(),
            };
            self.dead_letter_or_retry(held, &reason).await;
            return true;
        }
        let message = mapping::from_fields(&entry_id, fields);
        let token = self.next_token;
        self.next_token += 1;
        let delivery = Delivery {
            message,
            info: DeliveryInfo {
                topic: self.key.clone(),
                attempt,
                redelivered: attempt > 1,
                position: Some(Position::StreamId(entry_id.clone())),
                partition: None,
            },
            handle: AckHandle::new(self.acker.clone(), token),
        };
        self.held.insert(
            token,
            Held {
                entry_id,
                attempt,
                since: Instant::now(),
            },
        );
        self.deliveries.send(Ok(delivery)).await.is_ok()
    }

    /// Settles a batch: other settlements one by one, then every ack in one `XACK`; the
    /// acked slots are freed after it.
    async fn settle_batch(&mut self, batch: Vec<(u64, Settlement)>) {
        let mut acks = Vec::new();
        for (token, settlement) in batch {
            match settlement {
                Settlement::Ack => {
                    if let Some(held) = self.held.remove(&token) {
                        acks.push(held.entry_id);
                    }
                }
                other => self.settle(token, other).await,
            }
        }
        if acks.is_empty() {
            return;
        }
        let acked: redis::RedisResult<Value> = redis::cmd("XACK")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&acks)
            .query_async(&mut self.connection)
            .await;
        let n = acks.len();
        if let Err(e) = acked {
            tracing::warn!(broker = BROKER, key = %self.key, entries = n, error = %e, "XACK failed; retrying");
            self.unacked.extend(acks);
        }
        self.permits.add_permits(n);
    }

    async fn settle(&mut self, token: u64, settlement: Settlement) {
        let Some(held) = self.held.remove(&token) else {
            return;
        };
        match settlement {
            Settlement::Ack => {
                self.ack(&held.entry_id).await;
                self.permits.add_permits(1);
            }
            Settlement::Nack { delay: None } => self.redeliver(held).await,
            Settlement::Nack { delay: Some(d) } => self.delayed.push((Instant::now() + d, held)),
            Settlement::Reject { reason } => self.dead_letter_or_retry(held, &reason).await,
        }
    }

    async fn ack(&mut self, entry_id: &str) {
        let acked: redis::RedisResult<Value> = redis::cmd("XACK")
            .arg(&self.key)
            .arg(&self.group)
            .arg(entry_id)
            .query_async(&mut self.connection)
            .await;
        if let Err(e) = acked {
            tracing::warn!(broker = BROKER, key = %self.key, entry = entry_id, error = %e, "XACK failed; retrying");
            self.unacked.push(entry_id.to_owned());
        }
    }

    /// Claims the entry again for this consumer (counting a delivery) and hands it out.
    async fn redeliver(&mut self, held: Held) {
        let claimed: redis::RedisResult<Value> = redis::cmd("XCLAIM")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&held.entry_id)
            .query_async(&mut self.connection)
            .await;
        match claimed {
            Ok(reply) => match parse_entries(reply).into_iter().next() {
                Some((id, fields)) => {
                    self.hand_out(id, fields, held.attempt + 1).await;
                }
                None => {
                    // Deleted from the stream, or taken by another consumer meanwhile.
                    self.permits.add_permits(1);
                }
            },
            Err(e) => {
                tracing::warn!(broker = BROKER, key = %self.key, error = %e, "XCLAIM for a redelivery failed; retrying in 1s");
                self.delayed
                    .push((Instant::now() + Duration::from_secs(1), held));
            }
        }
    }

    async fn redeliver_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.delayed = later;
        for (_, held) in due {
            self.redeliver(held).await;
        }
    }

    /// Adds the entry, with reason headers, to the dead-letter stream and acks it in one
    /// transaction; when that fails the entry is redelivered later instead.
    async fn dead_letter_or_retry(&mut self, held: Held, reason: &str) {
        match self.dead_letter(&held, reason).await {
            Ok(()) => self.permits.add_permits(1),
            Err(e) => {
                tracing::warn!(broker = BROKER, key = %self.key, dead_letter = %self.dead_letter, error = %e, "cannot dead-letter; redelivering later");
                self.delayed
                    .push((Instant::now() + Duration::from_secs(1), held));
            }
        }
    }

    async fn dead_letter(&mut self, held: &Held, reason: &str) -> Result<()> {
        let read: Value = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(&held.entry_id)
            .arg(&held.entry_id)
            .query_async(&mut self.connection)
            .await
            .map_err(|e| command_error(e, &self.key, "read the rejected entry"))?;
        let Some((id, fields)) = parse_entries(read).into_iter().next() else {
            // Gone from the stream (trimmed): nothing to keep, just ack it.
            self.ack(&held.entry_id).await;
            return Ok(());
        };
        let mut message = mapping::from_fields(&id, fields);
        message.headers.set(well_known::REJECT_REASON, reason);
        message
            .headers
            .set(well_known::ORIGINAL_TOPIC, self.key.as_str());
        message
            .headers
            .set(well_known::ATTEMPTS, held.attempt.to_string());
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.dead_letter).arg("*");
        mapping::write_fields(&message, &mut xadd);
        let mut xack = redis::cmd("XACK");
        xack.arg(&self.key).arg(&self.group).arg(&held.entry_id);
        redis::pipe()
            .atomic()
            .add_command(xadd)
            .add_command(xack)
            .query_async::<Value>(&mut self.connection)
            .await
            .map_err(|e| command_error(e, &self.dead_letter, "dead-letter"))?;
        Ok(())
    }

    async fn retry_acks(&mut self) {
        if self.unacked.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.unacked);
        let acked: redis::RedisResult<Value> = redis::cmd("XACK")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&ids)
            .query_async(&mut self.connection)
            .await;
        if acked.is_err() {
            self.unacked = ids;
        }
    }

    async fn tick(&mut self) {
        self.retry_acks().await;
        self.keep_alive().await;
    }

    /// Resets the idle time of entries held for a while, so no other consumer claims them
    /// while this subscription runs (`JUSTID` does not count a delivery).
    async fn keep_alive(&mut self) {
        let threshold = self.claim_idle / 3;
        let now = Instant::now();
        let mut ids = Vec::new();
        for held in self
            .held
            .values_mut()
            .chain(self.delayed.iter_mut().map(|(_, h)| h))
        {
            if now.duration_since(held.since) >= threshold {
                ids.push(held.entry_id.clone());
                held.since = now;
            }
        }
        if ids.is_empty() {
            return;
        }
        let claimed: redis::RedisResult<Value> = redis::cmd("XCLAIM")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&ids)
            .arg("JUSTID")
            .query_async(&mut self.connection)
            .await;
        if let Err(e) = claimed {
            tracing::debug!(broker = BROKER, key = %self.key, error = %e, "keep-alive XCLAIM failed");
        }
    }

    /// Marks every entry this consumer still owns as long idle, so the group's next reader
    /// claims it at once.
    async fn release_pending(&mut self) {
        let pending: redis::RedisResult<Value> = redis::cmd("XPENDING")
            .arg(&self.key)
            .arg(&self.group)
            .arg("-")
            .arg("+")
            .arg(100_000)
            .arg(&self.consumer)
            .query_async(&mut self.connection)
            .await;
        let ids: Vec<String> = match pending {
            Ok(Value::Array(rows)) => rows
                .iter()
                .filter_map(|row| match row {
                    Value::Array(cols) => cols.first().and_then(text),
                    _ => None,
                })
                .collect(),
            _ => return,
        };
        if ids.is_empty() {
            let _: redis::RedisResult<Value> = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&self.key)
                .arg(&self.group)
                .arg(&self.consumer)
                .query_async(&mut self.connection)
                .await;
            return;
        }
        let idle_ms =
            u64::try_from(self.claim_idle.as_millis().saturating_mul(1000)).unwrap_or(u64::MAX / 2);
        let released: redis::RedisResult<Value> = redis::cmd("XCLAIM")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&ids)
            .arg("IDLE")
            .arg(idle_ms)
            .arg("JUSTID")
            .query_async(&mut self.connection)
            .await;
        if let Err(e) = released {
            tracing::debug!(broker = BROKER, key = %self.key, error = %e, "cannot release pending entries; other consumers claim them after claim_idle");
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Like [`text`], keeping the reply's buffer when it is UTF-8 (an entry id always is).
fn into_text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(mapping::owned_text(b)),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// `XREADGROUP` reply: `[[key, [entry…]]]`, or nil when the block timed out.
fn parse_read(reply: Value) -> Vec<Entry> {
    match reply {
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => {
                    kv.pop().map(parse_entries).unwrap_or_default()
                }
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(streams) => streams
            .into_iter()
            .flat_map(|(_, entries)| parse_entries(entries))
            .collect(),
        _ => Vec::new(),
    }
}

/// `[[id, [field, value, …]], …]`; entries deleted from the stream (nil fields) are skipped.
fn parse_entries(reply: Value) -> Vec<Entry> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let Value::Array(mut parts) = e else {
                return None;
            };
            if parts.len() != 2 {
                return None;
            }
            let fields = parts.pop()?;
            let id = into_text(parts.pop()?)?;
            let Value::Array(flat) = fields else {
                return None;
            };
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(f), Some(v)) = (it.next(), it.next()) {
                pairs.push((bytes_of(f), bytes_of(v)));
            }
            Some((id, pairs))
        })
        .collect()
}

fn bytes_of(v: Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::{id_before, parse_id};

    #[test]
    fn a_group_created_at_the_id_before_an_entry_delivers_that_entry_next() {
        assert_eq!(id_before("1700000000000-5"), "1700000000000-4");
        assert_eq!(
            id_before("1700000000000-0"),
            format!("1699999999999-{}", u64::MAX)
        );
        assert_eq!(id_before("0-0"), "0-0");
        assert!(parse_id(&id_before("1700000000000-0")) < parse_id("1700000000000-0"));
        assert_eq!(parse_id("12"), Some((12, 0)), "an id without its sequence");
        assert_eq!(parse_id("$"), None);
    }
}
