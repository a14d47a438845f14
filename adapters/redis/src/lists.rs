//! Lists as a reliable queue: elements move atomically from the list into a processing list
//! of this consumer (`LMOVE`/`BLMOVE`), leave it when acked, and go back to the list when
//! nacked, when the subscription closes, or when another consumer finds this one dead (its
//! heartbeat key expired).
//!
//! As for streams: a reader task (blocking reads on a connection of its own, bounded by the
//! free in-flight slots) and a pump task that owns the rest; no lock on the hot path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use polybridge_core::{
    new_message_id, well_known, AckHandle, Acknowledger, Delivery, DeliveryInfo, DeliveryStream,
    Error, Result, Settlement, Subscription,
};
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;

use crate::config::Format;
use crate::{command_error, mapping, RedisBroker, BROKER};

/// Moves one element from `KEYS[1]` to `KEYS[2]` (`ARGV[3]` = `R` to the tail, where the
/// queue is read next, or `L` to the head), replacing it by `ARGV[2]`; only if it was still
/// there, so two consumers recovering the same list cannot both requeue it.
const MOVE_ELEMENT: &str = r#"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  if ARGV[3] == 'R' then redis.call('RPUSH', KEYS[2], ARGV[2]) else redis.call('LPUSH', KEYS[2], ARGV[2]) end
  return 1
end
return 0
"#;

pub(crate) async fn subscribe(
    broker: &RedisBroker,
    key: String,
    subscription: Subscription,
) -> Result<DeliveryStream> {
    let consumer = format!("pb-{}", new_message_id());
    let processing = format!("{key}:pb-processing:{consumer}");
    let alive = format!("{key}:pb-alive:{consumer}");
    let mut connection = broker.connection.clone();
    // Check the key's type now, so a stream or hash at `key` is a clear error.
    let kind: String = redis::cmd("TYPE")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .map_err(|e| command_error(e, &key, "check the key"))?;
    if kind != "list" && kind != "none" {
        return Err(Error::permanent(
            BROKER,
            &key,
            format!("the key {key:?} holds a {kind}, not a list (mode=lists)"),
        ));
    }
    let timeout = broker.config.consumer_timeout;
    let _: Value = redis::cmd("SET")
        .arg(&alive)
        .arg(1)
        .arg("PX")
        .arg(u64::try_from(timeout.as_millis()).unwrap_or(10_000))
        .query_async(&mut connection)
        .await
        .map_err(|e| command_error(e, &alive, "register the consumer"))?;
    let reader_connection = broker.dedicated_connection().await?;
    let max_in_flight = subscription.max_in_flight.max(1);
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let (elements_tx, elements_rx) = mpsc::channel(max_in_flight);
    let (stop_tx, stop_rx) = watch::channel(false);
    let reader = tokio::spawn(read_loop(
        reader_connection,
        key.clone(),
        processing.clone(),
        broker.config.block,
        permits.clone(),
        elements_tx,
        stop_rx,
    ));
    let (deliveries_tx, deliveries_rx) = mpsc::channel(max_in_flight);
    let (settle_tx, settle_rx) = mpsc::channel(max_in_flight);
    let (close_tx, close_rx) = oneshot::channel();
    let (closed_tx, closed_rx) = oneshot::channel();
    let closed = Arc::new(AtomicBool::new(false));
    let acker: Arc<dyn Acknowledger> = Arc::new(ListAcker {
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
        processing,
        alive,
        envelope: broker.config.format == Format::Envelope,
        max_deliveries: broker.config.max_deliveries,
        consumer_timeout: timeout,
        acker,
        closed,
        deliveries: deliveries_tx,
        permits,
        held: HashMap::new(),
        delayed: Vec::new(),
        next_token: 0,
        move_element: Script::new(MOVE_ELEMENT),
    };
    tokio::spawn(pump.run(elements_rx, settle_rx, close_rx, stop_tx, reader, closed_tx));
    Ok(DeliveryStream::new(deliveries_rx, close_tx, closed_rx))
}

/// What the reader sends the pump.
enum Read {
    /// An element now in this consumer's processing list.
    Element(Bytes),
    /// A read failed: its reply (elements already moved) may be lost. The reader waits
    /// until the pump has requeued whatever is in the processing list and not held; the
    /// answer says whether that worked.
    Recover(oneshot::Sender<bool>),
}

struct ListAcker {
    settle: mpsc::Sender<(u64, Settlement)>,
    closed: Arc<AtomicBool>,
    key: String,
}

impl Acknowledger for ListAcker {
    fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let closed = || Error::closed(BROKER, format!("the subscription to {}", self.key));
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
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

async fn read_loop(
    mut connection: ConnectionManager,
    key: String,
    processing: String,
    block: Duration,
    permits: Arc<Semaphore>,
    elements: mpsc::Sender<Read>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let block_secs = format!("{:.3}", block.as_secs_f64());
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
        // Take what is there without waiting; block for one only when the list is empty.
        let mut pipe = redis::pipe();
        for _ in 0..count {
            pipe.cmd("LMOVE")
                .arg(&key)
                .arg(&processing)
                .arg("RIGHT")
                .arg("LEFT");
        }
        // Never cancelled: a cancelled BLMOVE still runs on the server and would move an
        // element for a consumer that is gone. Close waits at most `block` for it; what it
        // moved is requeued with the rest of the processing list.
        let read = async {
            let moved: Vec<Option<Vec<u8>>> = pipe.query_async(&mut connection).await?;
            let mut got: Vec<Vec<u8>> = moved.into_iter().flatten().collect();
            if got.is_empty() {
                let one: Option<Vec<u8>> = redis::cmd("BLMOVE")
                    .arg(&key)
                    .arg(&processing)
                    .arg("RIGHT")
                    .arg("LEFT")
                    .arg(&block_secs)
                    .query_async(&mut connection)
                    .await?;
                got.extend(one);
            }
            Ok::<_, redis::RedisError>(got)
        }
        .await;
        if *stop.borrow() {
            return;
        }
        match read {
            Ok(got) => {
                backoff = Duration::from_millis(100);
                permits.add_permits(count.saturating_sub(got.len()));
                for element in got {
                    if elements
                        .send(Read::Element(Bytes::from(element)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(e) => {
                permits.add_permits(count);
                let error = command_error(e, &key, "read");
                tracing::warn!(broker = BROKER, key = %key, error = %error, retry_in = ?backoff, "cannot read the list");
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // Until the pump has recovered the orphans of the failed read, read nothing.
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    let (done_tx, done_rx) = oneshot::channel();
                    if elements.send(Read::Recover(done_tx)).await.is_err() {
                        return;
                    }
                    let recovered = tokio::select! {
                        _ = stop.changed() => return,
                        r = done_rx => r.unwrap_or(false),
                    };
                    if recovered {
                        break;
                    }
                }
            }
        }
    }
}

struct Held {
    element: Bytes,
    attempt: u32,
}

struct Pump {
    connection: ConnectionManager,
    key: String,
    processing: String,
    alive: String,
    dead_letter: String,
    envelope: bool,
    max_deliveries: u32,
    consumer_timeout: Duration,
    acker: Arc<dyn Acknowledger>,
    closed: Arc<AtomicBool>,
    deliveries: mpsc::Sender<Result<Delivery>>,
    permits: Arc<Semaphore>,
    held: HashMap<u64, Held>,
    delayed: Vec<(Instant, Held)>,
    next_token: u64,
    move_element: Script,
}

impl Pump {
    async fn run(
        mut self,
        mut elements: mpsc::Receiver<Read>,
        mut settlements: mpsc::Receiver<(u64, Settlement)>,
        mut close: oneshot::Receiver<()>,
        stop_reader: watch::Sender<bool>,
        reader: tokio::task::JoinHandle<()>,
        closed: oneshot::Sender<()>,
    ) {
        let mut tick =
            tokio::time::interval((self.consumer_timeout / 3).max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_due = self.delayed.iter().map(|(due, _)| *due).min();
            tokio::select! {
                biased;
                _ = &mut close => break,
                Some((token, settlement)) = settlements.recv() => self.settle(token, settlement).await,
                Some(read) = elements.recv() => match read {
                    Read::Element(element) => {
                        if !self.hand_out(element).await {
                            break;
                        }
                    }
                    Read::Recover(done) => {
                        let recovered = self.recover_orphans().await;
                        let _ = done.send(recovered);
                    }
                },
                _ = sleep_until_opt(next_due) => self.requeue_due().await,
                _ = tick.tick() => self.tick().await,
            }
        }
        let _ = stop_reader.send(true);
        let _ = reader.await;
        self.closed.store(true, Ordering::Release);
        settlements.close();
        while let Some((token, settlement)) = settlements.recv().await {
            self.settle(token, settlement).await;
        }
        // Everything still in the processing list goes back to the queue.
        let processing = self.processing.clone();
        self.requeue_list(&processing).await;
        let _: redis::RedisResult<Value> = redis::cmd("DEL")
            .arg(&self.alive)
            .query_async(&mut self.connection)
            .await;
        let _ = closed.send(());
    }

    async fn hand_out(&mut self, element: Bytes) -> bool {
        let (message, attempt) = mapping::from_element(element.clone());
        if self.max_deliveries > 0 && attempt > self.max_deliveries {
            let reason = format!("delivered {} times without being acked", attempt - 1);
            self.dead_letter(
                Held {
                    element,
                    attempt: attempt - 1,
                },
                &reason,
            )
            .await;
            return true;
        }
        let token = self.next_token;
        self.next_token += 1;
        let delivery = Delivery {
            message,
            info: DeliveryInfo {
                topic: self.key.clone(),
                attempt,
                redelivered: attempt > 1,
                position: None,
                partition: None,
            },
            handle: AckHandle::new(self.acker.clone(), token),
        };
        self.held.insert(token, Held { element, attempt });
        self.deliveries.send(Ok(delivery)).await.is_ok()
    }

    async fn settle(&mut self, token: u64, settlement: Settlement) {
        let Some(held) = self.held.remove(&token) else {
            return;
        };
        match settlement {
            Settlement::Ack => {
                let removed: redis::RedisResult<Value> = redis::cmd("LREM")
                    .arg(&self.processing)
                    .arg(1)
                    .arg(&held.element[..])
                    .query_async(&mut self.connection)
                    .await;
                if let Err(e) = removed {
                    // It stays in the processing list and is requeued on close or recovery:
                    // a duplicate, never a loss.
                    tracing::warn!(broker = BROKER, key = %self.key, error = %e, "cannot remove an acked element; it may be redelivered");
                }
                self.permits.add_permits(1);
            }
            Settlement::Nack { delay: None } => self.requeue(held).await,
            Settlement::Nack { delay: Some(d) } => self.delayed.push((Instant::now() + d, held)),
            Settlement::Reject { reason } => self.dead_letter(held, &reason).await,
        }
    }

    /// Puts the element back at the tail of the queue (read next), counting the attempt in
    /// an envelope.
    async fn requeue(&mut self, held: Held) {
        let next = self.next_attempt(&held);
        let processing = self.processing.clone();
        let key = self.key.clone();
        if let Err(e) = self
            .move_to(&processing, &key, &held.element, &next, "R")
            .await
        {
            tracing::warn!(broker = BROKER, key = %self.key, error = %e, "cannot requeue a nacked element; retrying in 1s");
            self.delayed
                .push((Instant::now() + Duration::from_secs(1), held));
            return;
        }
        self.permits.add_permits(1);
    }

    async fn requeue_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.delayed = later;
        for (_, held) in due {
            self.requeue(held).await;
        }
    }

    async fn dead_letter(&mut self, held: Held, reason: &str) {
        let dead = if self.envelope || held.element.starts_with(b"{\"polybridge\":1,") {
            let (mut message, _) = mapping::from_element(held.element.clone());
            message.headers.set(well_known::REJECT_REASON, reason);
            message
                .headers
                .set(well_known::ORIGINAL_TOPIC, self.key.as_str());
            message
                .headers
                .set(well_known::ATTEMPTS, held.attempt.to_string());
            mapping::to_envelope(&message, 1)
        } else {
            // A raw element has no room for headers: it moves as it is.
            held.element.clone()
        };
        let processing = self.processing.clone();
        let dead_letter = self.dead_letter.clone();
        match self
            .move_to(&processing, &dead_letter, &held.element, &dead, "L")
            .await
        {
            Ok(_) => self.permits.add_permits(1),
            Err(e) => {
                tracing::warn!(broker = BROKER, key = %self.key, dead_letter = %self.dead_letter, error = %e, "cannot dead-letter; retrying in 1s");
                self.delayed
                    .push((Instant::now() + Duration::from_secs(1), held));
            }
        }
    }

    fn next_attempt(&self, held: &Held) -> Bytes {
        mapping::with_attempt(&held.element, held.attempt + 1)
            .unwrap_or_else(|| held.element.clone())
    }

    async fn move_to(
        &mut self,
        from: &str,
        to: &str,
        old: &[u8],
        new: &[u8],
        end: &str,
    ) -> Result<bool> {
        let moved: i64 = self
            .move_element
            .key(from)
            .key(to)
            .arg(old)
            .arg(new)
            .arg(end)
            .invoke_async(&mut self.connection)
            .await
            .map_err(|e| command_error(e, to, "move an element"))?;
        Ok(moved == 1)
    }

    /// Requeues what is in this consumer's processing list but neither held nor waiting for
    /// a delayed nack: elements a lost read reply moved there. The reader is paused meanwhile.
    async fn recover_orphans(&mut self) -> bool {
        let in_list: Vec<Vec<u8>> = match redis::cmd("LRANGE")
            .arg(&self.processing)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.connection)
            .await
        {
            Ok(e) => e,
            Err(_) => return false,
        };
        let mut known: HashMap<&[u8], usize> = HashMap::new();
        for held in self
            .held
            .values()
            .chain(self.delayed.iter().map(|(_, h)| h))
        {
            *known.entry(&held.element[..]).or_default() += 1;
        }
        let mut orphans = Vec::new();
        for element in in_list.into_iter().rev() {
            match known.get_mut(&element[..]) {
                Some(n) if *n > 0 => *n -= 1,
                _ => orphans.push(Bytes::from(element)),
            }
        }
        let (processing, key) = (self.processing.clone(), self.key.clone());
        for element in orphans {
            tracing::info!(broker = BROKER, key = %self.key, "requeueing an element whose read reply was lost");
            if self
                .move_to(&processing, &key, &element, &element, "R")
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// Moves every element of a processing list back to the queue.
    async fn requeue_list(&mut self, list: &str) {
        let elements: Vec<Vec<u8>> = match redis::cmd("LRANGE")
            .arg(list)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.connection)
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(broker = BROKER, list, error = %e, "cannot read a processing list; another consumer recovers it");
                return;
            }
        };
        let key = self.key.clone();
        // The oldest is at the tail: requeue it first so the order is kept.
        for element in elements.into_iter().rev() {
            let element = Bytes::from(element);
            let (_, attempt) = mapping::from_element(element.clone());
            let next =
                mapping::with_attempt(&element, attempt + 1).unwrap_or_else(|| element.clone());
            if let Err(e) = self.move_to(list, &key, &element, &next, "R").await {
                tracing::warn!(broker = BROKER, list, error = %e, "cannot requeue an element");
            }
        }
    }

    /// Renews this consumer's heartbeat and recovers the processing lists of dead consumers.
    async fn tick(&mut self) {
        let ms = u64::try_from(self.consumer_timeout.as_millis()).unwrap_or(10_000);
        let renewed: redis::RedisResult<Value> = redis::cmd("SET")
            .arg(&self.alive)
            .arg(1)
            .arg("PX")
            .arg(ms)
            .query_async(&mut self.connection)
            .await;
        if renewed.is_err() {
            return;
        }
        let prefix = format!("{}:pb-processing:", self.key);
        let mut cursor = 0u64;
        let mut lists = Vec::new();
        loop {
            let scanned: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", glob_escape(&prefix)))
                .arg("COUNT")
                .arg(200)
                .query_async(&mut self.connection)
                .await;
            let Ok((next, keys)) = scanned else { return };
            lists.extend(keys);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for list in lists {
            if list == self.processing {
                continue;
            }
            let Some(consumer) = list.strip_prefix(&prefix) else {
                continue;
            };
            let alive: redis::RedisResult<i64> = redis::cmd("EXISTS")
                .arg(format!("{}:pb-alive:{consumer}", self.key))
                .query_async(&mut self.connection)
                .await;
            if alive == Ok(0) {
                tracing::warn!(broker = BROKER, key = %self.key, consumer, "a consumer stopped without returning its messages: requeueing them");
                self.requeue_list(&list).await;
            }
        }
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
