//! One route at run time. The data path reads top to bottom in [`Route::process`]:
//! source delivery → rule match → mapping → publish to every sink → settle the source.
//!
//! Guarantees:
//! - The source delivery is acknowledged only after every selected sink confirmed its
//!   publish, or after the message reached the dead-letter destination.
//! - A failed publish is retried with exponential backoff and jitter; after the last
//!   attempt the message is dead-lettered, or, without a dead-letter destination, the
//!   source delivery is nacked and the broker redelivers it later. Nothing is dropped.
//! - Memory is bounded: at most `max_in_flight` source deliveries are in the route, and the
//!   source holds at most `prefetch` more ready for it, so a slow or dead sink holds the
//!   source back instead of growing a queue.
//!
//! Deliveries already waiting at the source (up to `max_batch`) go through
//! [`Route::process_batch`] instead, when every sink pipelines batches: the same steps, with
//! one `publish_batch` per sink; each message keeps its own outcome.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt};
use polybridge::{
    well_known, AckHandle, Broker, Deadline, Delivery, DeliveryInfo, DeliveryStream, Error,
    Message, Outgoing,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{Dispatch, RouteConfig, RouteOrdering};
use crate::mapping;
use crate::metrics::{BrokerMetrics, RouteMetrics};
use crate::slots::Slots;
use crate::template::TemplateInput;

/// How long one publish may take before it counts as a failed attempt.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// A route with its connections.
pub struct Route {
    /// The route's rules.
    pub config: RouteConfig,
    /// The source broker.
    pub source: Arc<dyn Broker>,
    /// The source broker's connection counters.
    pub source_metrics: Arc<BrokerMetrics>,
    /// One broker per `config.sinks` entry.
    pub sinks: Vec<Arc<dyn Broker>>,
    /// The connection counters of each sink broker.
    pub sink_metrics: Vec<Arc<BrokerMetrics>>,
    /// The dead-letter broker, if configured.
    pub dead_letter: Option<Arc<dyn Broker>>,
    /// Counters.
    pub metrics: Arc<RouteMetrics>,
    /// A number unique to this route object in the process: a route left untouched by a
    /// reload keeps it, a restarted one gets a new one (shown by `/api/routes`).
    pub instance: u64,
}

/// The next [`Route::instance`].
pub fn next_instance() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, AtomicOrdering::Relaxed)
}

/// The sinks one message goes to: inline up to 4 (no allocation per message).
type Targets = smallvec::SmallVec<[usize; 4]>;

/// Why a message could not be delivered.
struct Failure {
    reason: String,
    kind: &'static str,
    attempts: u32,
}

/// What one in-flight slot of [`Route::run_concurrent`] carries.
// `One` is the common case and moves straight into the slot's future: boxing it would
// allocate per message.
#[allow(clippy::large_enum_variant)]
enum Work {
    /// One delivery.
    One(Delivery),
    /// Deliveries that were waiting together: one `publish_batch` per sink.
    Batch(Vec<Delivery>),
}

impl Work {
    /// How many deliveries it carries.
    fn len(&self) -> usize {
        match self {
            Work::One(_) => 1,
            Work::Batch(deliveries) => deliveries.len(),
        }
    }
}

/// How a source subscription ended.
enum StreamEnd {
    /// With an error.
    Error(Error),
    /// The adapter closed it.
    Closed,
}

/// What the rule match makes of one message.
enum Plan {
    /// Publish it to these sinks.
    Publish(Targets),
    /// Settle it without publishing.
    Settle(Outcome),
}

/// What becomes of one message.
enum Outcome {
    /// Published to its sinks (so far without failure): acknowledged.
    Published,
    /// Excluded by the filter: acknowledged, not routed.
    Filtered,
    /// Not delivered: dead-lettered or nacked.
    Failed(Failure),
}

impl Route {
    /// Runs the route until `shutdown` turns true, then stops taking deliveries, lets the
    /// ones in progress finish for up to `drain`, and nacks the rest.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, drain: Duration) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let stream = match self
                .source
                .subscribe(self.config.source.subscription.clone())
                .await
            {
                Ok(stream) => stream,
                Err(e) => {
                    self.metrics.error(e.kind());
                    if e.is_retryable() {
                        self.source_metrics.down();
                    }
                    tracing::error!(route = %self.config.name, error = %e, retry_in = ?backoff, "cannot subscribe to the source");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            self.source_metrics.up();
            self.metrics.subscribed.store(true, AtomicOrdering::Relaxed);
            tracing::info!(route = %self.config.name, source = %self.config.source.broker, topic = %self.config.source.topic, "route running");
            let ended_by_shutdown = match self.config.ordering {
                RouteOrdering::None => {
                    self.clone()
                        .run_concurrent(stream, &mut shutdown, drain)
                        .await
                }
                RouteOrdering::PerKey => {
                    self.clone().run_per_key(stream, &mut shutdown, drain).await
                }
            };
            self.metrics
                .subscribed
                .store(false, AtomicOrdering::Relaxed);
            if ended_by_shutdown {
                return;
            }
            self.source_metrics.down();
            tracing::warn!(route = %self.config.name, "the source subscription ended; subscribing again");
        }
    }

    /// Processes deliveries concurrently, up to `max_in_flight`. Returns true when it ended
    /// because of shutdown.
    async fn run_concurrent(
        self: Arc<Self>,
        mut stream: DeliveryStream,
        shutdown: &mut watch::Receiver<bool>,
        drain: Duration,
    ) -> bool {
        let limit = self.config.max_in_flight.max(1);
        // Batches pay off only where every sink pipelines them.
        let max_batch = if self.sinks.iter().all(|s| s.capabilities().batched_publish) {
            self.config.max_batch.max(1)
        } else {
            1
        };
        let mut in_flight = Slots::new(limit);
        // Deliveries in the route (a slot carries one, or a batch): at most `limit`.
        let mut deliveries = 0usize;
        let (shutdown_check, shutdown_signal) = watch_shutdown(shutdown);
        tokio::pin!(shutdown_signal);
        let by_shutdown = loop {
            if shutdown_requested(&shutdown_check) {
                break true;
            }
            tokio::select! {
                biased;
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    deliveries = deliveries.saturating_sub(done);
                }
                next = stream.next(), if deliveries < limit => match next {
                    Some(Ok(delivery)) => {
                        let room = (limit - deliveries).min(max_batch);
                        let (work, end) = take_waiting(&mut stream, delivery, room);
                        deliveries += work.len();
                        // Fewer slots are busy than deliveries are in flight, and those were
                        // under `limit` (the guard above): `push` cannot give the work back.
                        // If it did, dropping the deliveries would nack them.
                        let _ = in_flight.push(self.clone().process_work(work));
                        match end {
                            None => {}
                            Some(StreamEnd::Error(e)) => {
                                self.source_error(&e);
                                break false;
                            }
                            Some(StreamEnd::Closed) => break false,
                        }
                    }
                    Some(Err(e)) => {
                        self.source_error(&e);
                        break false;
                    }
                    None => break false,
                },
                _ = &mut shutdown_signal => break true,
            }
        };
        let drained =
            tokio::time::timeout(drain, async { while in_flight.next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(route = %self.config.name, left = in_flight.len(), "drain timeout: nacking the deliveries still in progress");
        }
        // Dropping unfinished work drops its ack handles, which nacks them.
        drop(in_flight);
        stream.close().await;
        by_shutdown
    }

    /// Counts and logs an error of the source subscription (which then ends).
    fn source_error(&self, e: &Error) {
        self.metrics.error(e.kind());
        tracing::error!(route = %self.config.name, error = %e, "source error");
    }

    /// Runs one slot's work; returns the number of deliveries it carried.
    ///
    /// Not an `async fn`: that would keep `work` in its state beside the `process` future
    /// it was moved into, and each message's future is moved into a slot.
    fn process_work(self: Arc<Self>, work: Work) -> impl std::future::Future<Output = usize> {
        use futures::future::{Either, FutureExt as _};
        match work {
            Work::One(delivery) => Either::Left(self.process(delivery).map(|()| 1)),
            Work::Batch(deliveries) => {
                let n = deliveries.len();
                // Boxed (one allocation per batch) so the slots, sized for this future, stay
                // as small as `process` needs.
                Either::Right(Box::pin(self.process_batch(deliveries)).map(move |()| n))
            }
        }
    }

    /// Processes deliveries in lanes: one lane per key (or source partition) hash, each lane
    /// in order. Returns true when it ended because of shutdown.
    async fn run_per_key(
        self: Arc<Self>,
        mut stream: DeliveryStream,
        shutdown: &mut watch::Receiver<bool>,
        drain: Duration,
    ) -> bool {
        let lanes = self.config.max_in_flight.clamp(1, 64);
        let mut senders = Vec::with_capacity(lanes);
        let mut workers = FuturesUnordered::new();
        for _ in 0..lanes {
            let (tx, mut rx) = mpsc::channel::<Delivery>(self.config.max_in_flight);
            senders.push(tx);
            let route = self.clone();
            workers.push(tokio::spawn(async move {
                while let Some(delivery) = rx.recv().await {
                    route.clone().process(delivery).await;
                }
            }));
        }
        let (shutdown_check, shutdown_signal) = watch_shutdown(shutdown);
        tokio::pin!(shutdown_signal);
        let by_shutdown = loop {
            if shutdown_requested(&shutdown_check) {
                break true;
            }
            tokio::select! {
                biased;
                next = stream.next() => match next {
                    Some(Ok(delivery)) => {
                        let lane = lane_of(&delivery, lanes);
                        // A full lane holds the source back, but never shutdown: a delivery
                        // not handed over is dropped, which nacks it.
                        tokio::select! {
                            biased;
                            sent = senders[lane].send(delivery) => if sent.is_err() {
                                break false;
                            },
                            _ = &mut shutdown_signal => break true,
                        }
                    }
                    Some(Err(e)) => {
                        self.metrics.error(e.kind());
                        tracing::error!(route = %self.config.name, error = %e, "source error");
                        break false;
                    }
                    None => break false,
                },
                _ = &mut shutdown_signal => break true,
            }
        };
        drop(senders);
        let drained =
            tokio::time::timeout(drain, async { while workers.next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(route = %self.config.name, "drain timeout: nacking the deliveries still in progress");
            for w in workers.iter() {
                w.abort();
            }
        }
        stream.close().await;
        by_shutdown
    }

    /// The data path for one delivery.
    pub async fn process(self: Arc<Self>, delivery: Delivery) {
        let started = Instant::now();
        self.count_received(1, started);
        let Delivery {
            message,
            info,
            handle,
        } = delivery;
        let captures = self.captures(&info);
        let input = self.template_input(&info, &captures, &message);

        // Rule match, then mapping and publish to every selected sink concurrently, each
        // with retries. One sink (the common case) is awaited directly: no join, no
        // allocation.
        let outcome = match self.plan(&input) {
            Plan::Settle(outcome) => outcome,
            Plan::Publish(targets) => {
                let route: &Route = &self;
                let input = &input;
                let publish_to = |i: usize| async move {
                    let prepared = route.prepare(i, input)?;
                    route.publish_with_retry(i, &prepared, started).await
                };
                let failed = match targets.as_slice() {
                    [i] => publish_to(*i).await.err(),
                    _ => futures::future::join_all(targets.iter().map(|i| publish_to(*i)))
                        .await
                        .into_iter()
                        .find_map(Result::err),
                };
                failed.map_or(Outcome::Published, Outcome::Failed)
            }
        };

        self.finish(handle, &message, &info, outcome, started).await;
        self.metrics.in_flight.fetch_sub(1, AtomicOrdering::Relaxed);
    }

    /// The data path for deliveries that were waiting together: the steps of
    /// [`Route::process`] for each, with one `publish_batch` per sink for all the messages
    /// going to it. A message whose publish failed retryably is then retried on its own.
    pub async fn process_batch(self: Arc<Self>, deliveries: Vec<Delivery>) {
        let started = Instant::now();
        let n = deliveries.len();
        self.count_received(n, started);

        // The handles are settled at the end; the messages are borrowed until then.
        let mut handles = Vec::with_capacity(n);
        let mut received = Vec::with_capacity(n);
        for Delivery {
            message,
            info,
            handle,
        } in deliveries
        {
            handles.push(handle);
            received.push((message, info));
        }
        let captures: Vec<_> = received
            .iter()
            .map(|(_, info)| self.captures(info))
            .collect();
        let inputs: Vec<TemplateInput<'_>> = received
            .iter()
            .zip(&captures)
            .map(|((message, info), captures)| self.template_input(info, captures, message))
            .collect();

        // Rule match and mapping of every message; the prepared ones grouped by sink.
        let mut outcomes = Vec::with_capacity(n);
        let mut per_sink: Vec<Vec<(usize, mapping::Prepared<'_>)>> =
            self.sinks.iter().map(|_| Vec::new()).collect();
        for (j, input) in inputs.iter().enumerate() {
            let outcome = match self.plan(input) {
                Plan::Settle(outcome) => outcome,
                Plan::Publish(targets) => {
                    let mut outcome = Outcome::Published;
                    for i in targets {
                        match self.prepare(i, input) {
                            Ok(prepared) => per_sink[i].push((j, prepared)),
                            Err(failure) => {
                                if let Outcome::Published = outcome {
                                    outcome = Outcome::Failed(failure);
                                }
                            }
                        }
                    }
                    outcome
                }
            };
            outcomes.push(outcome);
        }

        // One batch per sink, the sinks concurrently.
        let used: Targets = (0..per_sink.len())
            .filter(|i| !per_sink[*i].is_empty())
            .collect();
        let failures = match used.as_slice() {
            [] => Vec::new(),
            [i] => {
                self.publish_batch_with_retry(*i, &per_sink[*i], started)
                    .await
            }
            _ => futures::future::join_all(
                used.iter()
                    .map(|i| self.publish_batch_with_retry(*i, &per_sink[*i], started)),
            )
            .await
            .into_iter()
            .flatten()
            .collect(),
        };
        for (j, failure) in failures {
            if let Some(outcome @ Outcome::Published) = outcomes.get_mut(j) {
                *outcome = Outcome::Failed(failure);
            }
        }

        for ((handle, outcome), (message, info)) in handles.into_iter().zip(outcomes).zip(&received)
        {
            self.finish(handle, message, info, outcome, started).await;
        }
        self.metrics
            .in_flight
            .fetch_sub(n as i64, AtomicOrdering::Relaxed);
    }

    /// Counts `n` deliveries received together at `started` (one batch) and now in flight.
    fn count_received(&self, n: usize, started: Instant) {
        let m = &self.metrics;
        m.batches.fetch_add(1, AtomicOrdering::Relaxed);
        if m.received.fetch_add(n as u64, AtomicOrdering::Relaxed) == 0 {
            let _ = m.first_received_at.set(started.into_std());
        }
        m.in_flight.fetch_add(n as i64, AtomicOrdering::Relaxed);
    }

    /// The wildcard captures of the source subscription's pattern in `info`'s topic.
    fn captures<'t>(&self, info: &'t DeliveryInfo) -> Vec<&'t str> {
        let source = &self.config.source;
        let pattern = &source.subscription.pattern;
        // A pattern without wildcards captures nothing: no need to match each topic to it.
        if pattern.is_literal() {
            return Vec::new();
        }
        pattern
            .captures(&info.topic, source.separator)
            .unwrap_or_default()
    }

    /// What the templates of this route see of one message.
    fn template_input<'a>(
        &'a self,
        info: &'a DeliveryInfo,
        captures: &'a [&'a str],
        message: &'a Message,
    ) -> TemplateInput<'a> {
        TemplateInput {
            route: &self.config.name,
            topic: &info.topic,
            captures,
            message,
        }
    }

    /// The rule match of one message: the sinks it goes to, or why it goes to none.
    fn plan(&self, input: &TemplateInput<'_>) -> Plan {
        match self.select_sinks(input) {
            Err(reason) => Plan::Settle(Outcome::Failed(Failure {
                reason,
                kind: "filter",
                attempts: 1,
            })),
            Ok(targets) if targets.is_empty() => Plan::Settle(Outcome::Filtered),
            Ok(targets) => Plan::Publish(targets),
        }
    }

    /// The mapping of one message for sink `i`: its destination and rewritten message.
    fn prepare<'a>(
        &'a self,
        i: usize,
        input: &TemplateInput<'a>,
    ) -> Result<mapping::Prepared<'a>, Failure> {
        let sink = &self.config.sinks[i];
        mapping::prepare(sink, input).map_err(|e| Failure {
            reason: format!("destination {:?}: {e}", sink.broker),
            kind: "template",
            attempts: 1,
        })
    }

    /// Settles the source delivery of one message by its outcome, and counts it.
    async fn finish(
        &self,
        handle: AckHandle,
        message: &Message,
        info: &DeliveryInfo,
        outcome: Outcome,
        started: Instant,
    ) {
        let m = &self.metrics;
        match outcome {
            Outcome::Published => {
                settle(&self.config.name, handle.ack());
                m.count_acked();
                m.latency.observe(started.elapsed());
            }
            Outcome::Filtered => {
                m.filtered.fetch_add(1, AtomicOrdering::Relaxed);
                settle(&self.config.name, handle.ack());
            }
            // Boxed: failing is rare, and its state inline (about 300 bytes) would grow
            // every message's future, which is moved into a slot.
            Outcome::Failed(failure) => Box::pin(self.fail(handle, message, info, failure)).await,
        }
    }

    /// The sinks this message goes to, by `dispatch` and each sink's `when`.
    fn select_sinks(&self, input: &TemplateInput<'_>) -> Result<Targets, String> {
        if let Some(filter) = &self.config.filter {
            if !filter.matches(input.topic, input.captures, input.message)? {
                return Ok(Targets::new());
            }
        }
        let mut targets = Targets::new();
        for (i, sink) in self.config.sinks.iter().enumerate() {
            let selected = match &sink.when {
                None => true,
                Some(when) => when.matches(input.topic, input.captures, input.message)?,
            };
            if selected {
                targets.push(i);
                if self.config.dispatch == Dispatch::First {
                    break;
                }
            }
        }
        Ok(targets)
    }

    /// Publishes `items` (each with its index in the batch) to sink `i` in one
    /// `publish_batch`, then retries the retryable failures one by one. Returns the
    /// messages that could not be delivered. `received`: when the route took the batch.
    async fn publish_batch_with_retry(
        &self,
        i: usize,
        items: &[(usize, mapping::Prepared<'_>)],
        received: Instant,
    ) -> Vec<(usize, Failure)> {
        let batch: Vec<Outgoing<'_>> = items
            .iter()
            .map(|(_, prepared)| Outgoing {
                destination: &prepared.destination,
                message: &prepared.message,
            })
            .collect();
        let publish = self.sinks[i].publish_batch(&batch, Deadline::after(PUBLISH_TIMEOUT));
        let mut results = self
            .handed_off(received, batch.len(), publish)
            .await
            .into_iter();
        let mut failures = Vec::new();
        let mut retries = Vec::new();
        for (j, prepared) in items {
            let result = results.next().unwrap_or_else(|| {
                Err(Error::transient(
                    "polybridge",
                    prepared.destination.as_ref(),
                    "the sink gave no result for this message of the batch",
                ))
            });
            match result {
                Ok(_) => self.published(i),
                Err(e) => match self.publish_failed(i, &prepared.destination, &e, 1) {
                    Ok(delay) => retries.push(async move {
                        tokio::time::sleep(delay).await;
                        (*j, self.publish_attempts(i, prepared, 1, None).await)
                    }),
                    Err(failure) => failures.push((*j, failure)),
                },
            }
        }
        if !retries.is_empty() {
            for (j, result) in futures::future::join_all(retries).await {
                if let Err(failure) = result {
                    failures.push((j, failure));
                }
            }
        }
        failures
    }

    /// Publishes to sink `i`, retrying retryable errors with backoff and jitter.
    /// `received`: when the route took the delivery.
    async fn publish_with_retry(
        &self,
        i: usize,
        prepared: &mapping::Prepared<'_>,
        received: Instant,
    ) -> Result<(), Failure> {
        self.publish_attempts(i, prepared, 0, Some(received)).await
    }

    /// Runs `publish` (of `n` messages) and, when its first poll returns, records the time
    /// since `received` in the hand-off histogram: the route's own time until the sink
    /// adapter holds the messages (or waits for its connection or for room in its queue).
    /// One clock read per publish; no allocation.
    async fn handed_off<F: std::future::Future>(
        &self,
        received: Instant,
        n: usize,
        publish: F,
    ) -> F::Output {
        let mut publish = std::pin::pin!(publish);
        let mut first_poll = true;
        futures::future::poll_fn(|cx| {
            let poll = publish.as_mut().poll(cx);
            if std::mem::take(&mut first_poll) {
                self.metrics.handoff.observe_n(received.elapsed(), n as u64);
            }
            poll
        })
        .await
    }

    /// Publishes to sink `i` after `attempt` attempts already failed, until it is confirmed
    /// or the error policy gives up. With `received` (when the route took the delivery),
    /// the first attempt's hand-off is recorded.
    async fn publish_attempts(
        &self,
        i: usize,
        prepared: &mapping::Prepared<'_>,
        mut attempt: u32,
        mut received: Option<Instant>,
    ) -> Result<(), Failure> {
        loop {
            attempt += 1;
            let publish = self.sinks[i].publish(
                &prepared.destination,
                &prepared.message,
                Deadline::after(PUBLISH_TIMEOUT),
            );
            let result = match received.take() {
                Some(received) => self.handed_off(received, 1, publish).await,
                None => publish.await,
            };
            match result {
                Ok(_) => {
                    self.published(i);
                    return Ok(());
                }
                Err(e) => {
                    let delay = self.publish_failed(i, &prepared.destination, &e, attempt)?;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Counts a publish that sink `i` confirmed.
    fn published(&self, i: usize) {
        self.sink_metrics[i].up();
        self.metrics.delivered.fetch_add(1, AtomicOrdering::Relaxed);
    }

    /// Counts failed attempt number `attempt` to publish to sink `i`: the backoff before
    /// the next attempt, or the failure when the error is permanent or it was the last.
    fn publish_failed(
        &self,
        i: usize,
        destination: &str,
        e: &Error,
        attempt: u32,
    ) -> Result<Duration, Failure> {
        let policy = &self.config.on_error;
        self.metrics.error(e.kind());
        if e.is_retryable() {
            // Connection, timeout or transient: some adapters (Redis) report a refused or
            // dropped connection as transient.
            self.sink_metrics[i].down();
        }
        if !e.is_retryable() || attempt >= policy.max_attempts {
            tracing::warn!(route = %self.config.name, sink = %self.config.sinks[i].broker, destination, attempts = attempt, error = %e, "publish failed");
            return Err(Failure {
                reason: e.to_string(),
                kind: e.kind(),
                attempts: attempt,
            });
        }
        self.metrics.retries.fetch_add(1, AtomicOrdering::Relaxed);
        let delay = backoff(policy.initial_backoff, policy.max_backoff, attempt);
        tracing::debug!(route = %self.config.name, destination, attempt, ?delay, error = %e, "publish failed, retrying");
        Ok(delay)
    }

    /// A message that could not be delivered: dead-letter it, or nack it for later.
    async fn fail(
        &self,
        handle: AckHandle,
        message: &Message,
        info: &DeliveryInfo,
        failure: Failure,
    ) {
        self.metrics.error(failure.kind);
        let policy = &self.config.on_error;
        if let (Some(dl), Some(broker)) = (&policy.dead_letter, &self.dead_letter) {
            let captures = self.captures(info);
            let input = self.template_input(info, &captures, message);
            match dl.destination.render(&input) {
                Ok(destination) => {
                    let envelope = self.error_envelope(message, info, &failure);
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        match broker
                            .publish(&destination, &envelope, Deadline::after(PUBLISH_TIMEOUT))
                            .await
                        {
                            Ok(_) => {
                                tracing::warn!(route = %self.config.name, id = %message.id, reason = %failure.reason, %destination, "dead-lettered");
                                self.metrics
                                    .dead_lettered
                                    .fetch_add(1, AtomicOrdering::Relaxed);
                                settle(&self.config.name, handle.ack());
                                return;
                            }
                            Err(e) if e.is_retryable() && attempt < policy.max_attempts => {
                                tokio::time::sleep(backoff(
                                    policy.initial_backoff,
                                    policy.max_backoff,
                                    attempt,
                                ))
                                .await;
                            }
                            Err(e) => {
                                self.metrics.error(e.kind());
                                tracing::error!(route = %self.config.name, id = %message.id, error = %e, "cannot dead-letter; nacking the source delivery");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(route = %self.config.name, id = %message.id, error = %e, "cannot render the dead-letter destination; nacking the source delivery");
                }
            }
        } else {
            tracing::warn!(route = %self.config.name, id = %message.id, reason = %failure.reason, "delivery failed and the route has no dead-letter destination; nacking it for redelivery");
        }
        self.metrics.nacked.fetch_add(1, AtomicOrdering::Relaxed);
        settle(&self.config.name, handle.nack_after(policy.max_backoff));
    }

    /// The dead-letter message: a JSON error envelope with the original message inside,
    /// and the reason in headers too (for sinks that carry them).
    fn error_envelope(&self, message: &Message, info: &DeliveryInfo, failure: &Failure) -> Message {
        let body = serde_json::json!({
            "error": {
                "reason": failure.reason,
                "kind": failure.kind,
                "route": self.config.name,
                "attempts": failure.attempts,
                "original_topic": info.topic,
                "source_broker": self.config.source.broker,
            },
            "message": mapping::json_envelope(&info.topic, message),
        });
        let mut dl = Message::new(body.to_string())
            .with_id(message.id.clone())
            .with_content_type("application/json");
        dl.key = message.key.clone();
        dl.headers
            .set(well_known::REJECT_REASON, failure.reason.clone());
        dl.headers
            .set(well_known::ORIGINAL_TOPIC, info.topic.clone());
        dl.headers
            .set(well_known::ATTEMPTS, failure.attempts.to_string());
        dl.headers
            .set("x-polybridge-route", self.config.name.clone());
        dl
    }
}

/// The lane of a delivery: by key, else by source partition, else by topic.
/// `first` and the deliveries already waiting in `stream`, up to `room` in all, without
/// waiting for more; and how the stream ended, if it did meanwhile. One delivery is not
/// put in a `Vec`: a route that keeps up with its source takes them one at a time.
fn take_waiting(
    stream: &mut DeliveryStream,
    first: Delivery,
    room: usize,
) -> (Work, Option<StreamEnd>) {
    let waiting = |stream: &mut DeliveryStream| match stream.next().now_or_never() {
        None => Ok(None),
        Some(Some(Ok(delivery))) => Ok(Some(delivery)),
        Some(Some(Err(e))) => Err(StreamEnd::Error(e)),
        Some(None) => Err(StreamEnd::Closed),
    };
    if room < 2 {
        return (Work::One(first), None);
    }
    let second = match waiting(stream) {
        Ok(Some(delivery)) => delivery,
        Ok(None) => return (Work::One(first), None),
        Err(end) => return (Work::One(first), Some(end)),
    };
    let mut batch = Vec::with_capacity(room);
    batch.push(first);
    batch.push(second);
    let mut end = None;
    while batch.len() < room {
        match waiting(stream) {
            Ok(Some(delivery)) => batch.push(delivery),
            Ok(None) => break,
            Err(e) => {
                end = Some(e);
                break;
            }
        }
    }
    (Work::Batch(batch), end)
}

/// How a route loop watches for shutdown: a receiver to check with one atomic load at the
/// top of every turn, and one future, resolving when `shutdown` changes (or its sender is
/// gone), that the loop's `select!` polls last, i.e. only when nothing else is ready. A
/// new `changed()` per turn registered and dropped a waiter, and every poll of a waiting
/// one takes the channel's lock: together ~800 of the ~11 500 instructions per message of
/// a memory→memory route (callgrind, docs/benchmarks/README.md, "memory→memory").
fn watch_shutdown(
    shutdown: &mut watch::Receiver<bool>,
) -> (
    watch::Receiver<bool>,
    impl std::future::Future<Output = ()> + '_,
) {
    let check = shutdown.clone();
    (check, async move {
        let _ = shutdown.changed().await;
    })
}

/// Whether shutdown was signalled since `check` was made (or its sender is gone).
fn shutdown_requested(check: &watch::Receiver<bool>) -> bool {
    check.has_changed().unwrap_or(true)
}

fn lane_of(delivery: &Delivery, lanes: usize) -> usize {
    let mut h = DefaultHasher::new();
    match (&delivery.message.key, delivery.info.partition) {
        (Some(k), _) => k.hash(&mut h),
        (None, Some(p)) => p.hash(&mut h),
        (None, None) => delivery.info.topic.hash(&mut h),
    }
    usize::try_from(h.finish() % lanes as u64).unwrap_or(0)
}

/// Exponential backoff with full jitter: a random delay in [d/2, d], d = initial × 2^(n-1)
/// capped at `max`.
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(max);
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let half = nanos / 2;
    Duration::from_nanos(half + jitter(half + 1))
}

/// A cheap pseudo-random number below `bound` (jitter needs no cryptographic quality).
fn jitter(bound: u64) -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15)
                | 1,
        );
    }
    STATE.with(|s| {
        // xorshift64*
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    })
}

/// Settling fails only when the subscription already closed, in which case the broker
/// redelivers: worth a debug line, nothing more.
fn settle(route: &str, result: polybridge::Result<()>) {
    if let Err(e) = result {
        if !matches!(e, Error::Closed { .. }) {
            tracing::warn!(route, error = %e, "settling a source delivery failed");
        } else {
            tracing::debug!(route, error = %e, "settled after the subscription closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let i = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..100 {
            let b1 = backoff(i, max, 1);
            assert!(
                b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100),
                "{b1:?}"
            );
            let b3 = backoff(i, max, 3);
            assert!(
                b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400),
                "{b3:?}"
            );
            let b10 = backoff(i, max, 10);
            assert!(b10 >= Duration::from_millis(500) && b10 <= max, "{b10:?}");
        }
    }
}
