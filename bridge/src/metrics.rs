//! Per-route counters and two latency histograms, updated with atomics on the hot path (no
//! locks, no allocation) and rendered in the Prometheus text format by the admin server.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Error kinds counted separately (from `polybridge::Error::kind`, plus the bridge's own).
pub const ERROR_KINDS: &[&str] = &[
    "connection",
    "auth",
    "transient",
    "permanent",
    "unsupported",
    "payload_too_large",
    "config",
    "closed",
    "timeout",
    "pattern",
    "filter",
    "template",
    "other",
];

/// The upper bounds of the latency buckets, in seconds: from 10 µs (the route's own steps)
/// to 10 s (a sink that confirms late).
pub const BUCKETS: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram over [`BUCKETS`]: one atomic add to the bucket an observation falls
/// in and one to the sum, whatever the number of buckets.
#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative: index `i` counts latencies in
    /// (`BUCKETS[i - 1]`, `BUCKETS[i]`], the last one those above every bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// The sum of the observations, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records `n` observations of `d` (`n` messages that took the same time).
    pub fn observe_n(&self, d: Duration, n: u64) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos
            .fetch_add(nanos.saturating_mul(n), Ordering::Relaxed);
    }

    /// Records one observation of `d`.
    pub fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }

    /// The counts so far, from one read of every bucket.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0u64; BUCKETS.len() + 1];
        for (c, b) in counts.iter_mut().zip(&self.buckets) {
            *c = b.load(Ordering::Relaxed);
        }
        HistogramSnapshot {
            counts,
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// The counts of a [`Histogram`] at one moment; snapshots subtract (the observations
/// between two moments) and add (several runs pooled).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket of [`BUCKETS`], not cumulative; the last, those above every
    /// bound.
    pub counts: [u64; BUCKETS.len() + 1],
    /// The sum of the observations, in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// How many observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the observations, in seconds.
    pub fn sum_secs(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }

    /// The mean observation, in seconds (`None` without observations).
    pub fn mean_secs(&self) -> Option<f64> {
        let count = self.count();
        (count > 0).then(|| self.sum_secs() / count as f64)
    }

    /// The cumulative count of each bucket of [`BUCKETS`], then the count of all (`+Inf`).
    pub fn cumulative(&self) -> [u64; BUCKETS.len() + 1] {
        let mut cumulative = self.counts;
        let mut total = 0u64;
        for c in cumulative.iter_mut() {
            total += *c;
            *c = total;
        }
        cumulative
    }

    /// The upper bound, in seconds, of the bucket that holds quantile `q` (0 to 1): the
    /// quantile is at most this. `None` without observations; infinity when the quantile is
    /// above the last bound.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let cumulative = self.cumulative();
        let i = cumulative
            .iter()
            .position(|c| *c >= rank)
            .unwrap_or(BUCKETS.len());
        Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY))
    }

    /// The observations since `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let mut counts = self.counts;
        for (c, e) in counts.iter_mut().zip(&earlier.counts) {
            *c = c.saturating_sub(*e);
        }
        HistogramSnapshot {
            counts,
            sum_nanos: self.sum_nanos.saturating_sub(earlier.sum_nanos),
        }
    }

    /// Adds the observations of `other` (pooling runs).
    pub fn add(&mut self, other: &HistogramSnapshot) {
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
        self.sum_nanos += other.sum_nanos;
    }
}

/// Counters of one route.
#[derive(Default)]
pub struct RouteMetrics {
    /// Deliveries taken from the source.
    pub received: AtomicU64,
    /// Deliveries the filter excluded (acknowledged, not routed).
    pub filtered: AtomicU64,
    /// Publishes confirmed by a sink.
    pub delivered: AtomicU64,
    /// Source deliveries acknowledged after every sink confirmed.
    pub acked: AtomicU64,
    /// Source deliveries nacked for redelivery.
    pub nacked: AtomicU64,
    /// Messages sent to the dead-letter destination.
    pub dead_lettered: AtomicU64,
    /// Retries of a publish.
    pub retries: AtomicU64,
    /// Groups of deliveries the route took from the source together, each published with
    /// one publish (or one batch) per sink; a delivery taken alone counts as one.
    /// `received / batches` is the mean batch size.
    pub batches: AtomicU64,
    /// Errors by kind, indexed like [`ERROR_KINDS`].
    pub errors: [AtomicU64; 13],
    /// Deliveries being processed now.
    pub in_flight: AtomicI64,
    /// Whether the route's subscription is active.
    pub subscribed: AtomicBool,
    /// When the route took its first delivery from the source (set once, by the first one).
    pub first_received_at: OnceLock<Instant>,
    /// An acknowledged count to timestamp (0: none), see [`RouteMetrics::acked_mark_at`].
    pub acked_mark: AtomicU64,
    /// When `acked` reached `acked_mark` (set once, by the delivery that reached it).
    pub acked_mark_at: OnceLock<Instant>,
    /// Time from the source delivery to its acknowledgement, of every acknowledged
    /// delivery that was published (filtered ones are left out).
    pub latency: Histogram,
    /// The route's own time: from taking the delivery from the source to the end of the
    /// first poll of the sink adapter's publish (the adapter has taken the message, or
    /// waits for its connection or for room in its queue). One observation per message
    /// and sink, of the first attempt. What is above it in `latency` is the sink's
    /// confirmation and the source's acknowledgement.
    pub handoff: Histogram,
}

impl RouteMetrics {
    /// Zeroed counters that record when `acked` reaches `mark` (0: never).
    pub fn with_acked_mark(mark: u64) -> RouteMetrics {
        RouteMetrics {
            acked_mark: AtomicU64::new(mark),
            ..RouteMetrics::default()
        }
    }

    /// Counts one acknowledged delivery; the one that brings the count to `acked_mark`
    /// records the instant in `acked_mark_at` (one load per delivery, one clock read once).
    pub fn count_acked(&self) {
        let acked = self.acked.fetch_add(1, Ordering::Relaxed) + 1;
        if acked == self.acked_mark.load(Ordering::Relaxed) {
            let _ = self.acked_mark_at.set(Instant::now());
        }
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: &str) {
        let i = ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(ERROR_KINDS.len() - 1);
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Errors so far, by kind (kinds with none left out), in [`ERROR_KINDS`] order.
    pub fn errors_by_kind(&self) -> Vec<(&'static str, u64)> {
        ERROR_KINDS
            .iter()
            .zip(&self.errors)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Connection state of one broker, as the bridge sees it: connected after a successful
/// connect, subscribe or publish; disconnected after a retryable failure (connection,
/// timeout, transient) of a subscribe or publish, or a subscription that ended. Each
/// return to connected counts as a reconnect.
pub struct BrokerMetrics {
    /// Whether the broker is connected.
    pub connected: AtomicBool,
    /// Times it came back after being disconnected.
    pub reconnects: AtomicU64,
}

impl BrokerMetrics {
    /// A broker just connected.
    pub fn connected() -> Self {
        BrokerMetrics {
            connected: AtomicBool::new(true),
            reconnects: AtomicU64::new(0),
        }
    }

    /// The broker works (again). Called for every confirmed publish: a load, and a write
    /// only when the state changes, so publishes on several threads do not contend for the
    /// flag's cache line.
    pub fn up(&self) {
        if !self.connected.load(Ordering::Relaxed) && !self.connected.swap(true, Ordering::Relaxed)
        {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The broker's connection failed.
    pub fn down(&self) {
        self.connected.store(false, Ordering::Relaxed);
    }
}

/// Writes the Prometheus text exposition of `brokers` (name, scheme, metrics) into `out`.
pub fn render_brokers(brokers: &[(&str, &str, &BrokerMetrics)], out: &mut String) {
    let name = "polybridge_broker_connected";
    let _ = writeln!(
        out,
        "# HELP {name} 1 when the last subscribe or publish on the broker worked, 0 after a retryable failure.\n# TYPE {name} gauge"
    );
    for (broker, scheme, m) in brokers {
        let _ = writeln!(
            out,
            "{name}{{broker=\"{}\",scheme=\"{}\"}} {}",
            escape(broker),
            escape(scheme),
            u8::from(m.connected.load(Ordering::Relaxed))
        );
    }
    let name = "polybridge_broker_reconnects_total";
    let _ = writeln!(
        out,
        "# HELP {name} Times the broker came back after a connection failure.\n# TYPE {name} counter"
    );
    for (broker, scheme, m) in brokers {
        let _ = writeln!(
            out,
            "{name}{{broker=\"{}\",scheme=\"{}\"}} {}",
            escape(broker),
            escape(scheme),
            m.reconnects.load(Ordering::Relaxed)
        );
    }
}

/// A counter's name, help text and where it lives in [`RouteMetrics`].
type CounterSpec = (&'static str, &'static str, fn(&RouteMetrics) -> &AtomicU64);

/// Writes the Prometheus text exposition of `routes` (name, metrics) into `out`.
pub fn render(routes: &[(&str, &RouteMetrics)], out: &mut String) {
    let counters: [CounterSpec; 8] = [
        (
            "polybridge_route_received_total",
            "Deliveries taken from the source.",
            |m| &m.received,
        ),
        (
            "polybridge_route_filtered_total",
            "Deliveries excluded by the filter (acknowledged, not routed).",
            |m| &m.filtered,
        ),
        (
            "polybridge_route_delivered_total",
            "Publishes confirmed by a sink.",
            |m| &m.delivered,
        ),
        (
            "polybridge_route_acked_total",
            "Source deliveries acknowledged after every sink confirmed.",
            |m| &m.acked,
        ),
        (
            "polybridge_route_nacked_total",
            "Source deliveries nacked for redelivery.",
            |m| &m.nacked,
        ),
        (
            "polybridge_route_dead_lettered_total",
            "Messages sent to the dead-letter destination.",
            |m| &m.dead_lettered,
        ),
        ("polybridge_route_retries_total", "Publish retries.", |m| {
            &m.retries
        }),
        (
            "polybridge_route_batches_total",
            "Groups of deliveries taken from the source together (one publish per sink each); received / batches is the mean batch size.",
            |m| &m.batches,
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (route, m) in routes {
            let _ = writeln!(
                out,
                "{name}{{route=\"{}\"}} {}",
                escape(route),
                get(m).load(Ordering::Relaxed)
            );
        }
    }
    let name = "polybridge_route_errors_total";
    let _ = writeln!(out, "# HELP {name} Errors by kind.\n# TYPE {name} counter");
    for (route, m) in routes {
        for (i, kind) in ERROR_KINDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{route=\"{}\",kind=\"{kind}\"}} {}",
                escape(route),
                m.errors[i].load(Ordering::Relaxed)
            );
        }
    }
    let name = "polybridge_route_in_flight";
    let _ = writeln!(
        out,
        "# HELP {name} Deliveries being processed.\n# TYPE {name} gauge"
    );
    for (route, m) in routes {
        let _ = writeln!(
            out,
            "{name}{{route=\"{}\"}} {}",
            escape(route),
            m.in_flight.load(Ordering::Relaxed)
        );
    }
    let name = "polybridge_route_subscribed";
    let _ = writeln!(
        out,
        "# HELP {name} 1 when the route's source subscription is active.\n# TYPE {name} gauge"
    );
    for (route, m) in routes {
        let _ = writeln!(
            out,
            "{name}{{route=\"{}\"}} {}",
            escape(route),
            u8::from(m.subscribed.load(Ordering::Relaxed))
        );
    }
    render_histogram(
        out,
        "polybridge_route_latency_seconds",
        "Time from source delivery to source acknowledgement.",
        routes,
        |m| &m.latency,
    );
    render_histogram(
        out,
        "polybridge_route_handoff_seconds",
        "The route's own time: from taking a source delivery to the sink adapter's publish holding it (per message and sink, first attempt).",
        routes,
        |m| &m.handoff,
    );
}

/// Writes one histogram of every route in `routes`.
fn render_histogram(
    out: &mut String,
    name: &str,
    help: &str,
    routes: &[(&str, &RouteMetrics)],
    get: fn(&RouteMetrics) -> &Histogram,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (route, m) in routes {
        let r = escape(route);
        let snapshot = get(m).snapshot();
        let cumulative = snapshot.cumulative();
        for (bound, n) in BUCKETS.iter().zip(&cumulative) {
            let _ = writeln!(out, "{name}_bucket{{route=\"{r}\",le=\"{bound}\"}} {n}");
        }
        let count = cumulative[BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{route=\"{r}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{route=\"{r}\"}} {}", snapshot.sum_secs());
        let _ = writeln!(out, "{name}_count{{route=\"{r}\"}} {count}");
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_errors_and_histogram() {
        let m = RouteMetrics::default();
        m.received.fetch_add(3, Ordering::Relaxed);
        m.error("timeout");
        m.error("something-new");
        m.latency.observe(Duration::from_micros(700));
        m.handoff.observe(Duration::from_micros(20));
        let mut out = String::new();
        render(&[("r\"1", &m)], &mut out);
        assert!(
            out.contains("polybridge_route_received_total{route=\"r\\\"1\"} 3"),
            "{out}"
        );
        assert!(out.contains("kind=\"timeout\"} 1"));
        assert!(out.contains("kind=\"other\"} 1"));
        assert!(out.contains("latency_seconds_bucket{route=\"r\\\"1\",le=\"0.0005\"} 0"));
        assert!(out.contains("latency_seconds_bucket{route=\"r\\\"1\",le=\"0.001\"} 1"));
        assert!(out.contains("polybridge_route_latency_seconds_count{route=\"r\\\"1\"} 1"));
        assert!(out.contains(
            "polybridge_route_handoff_seconds_bucket{route=\"r\\\"1\",le=\"0.00001\"} 0"
        ));
        assert!(out.contains(
            "polybridge_route_handoff_seconds_bucket{route=\"r\\\"1\",le=\"0.000025\"} 1"
        ));
    }

    /// The value of the line of `out` that starts with `series` (name and labels).
    fn sample(out: &str, series: &str) -> Option<f64> {
        out.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_the_slowest_count_only_in_inf() {
        let m = RouteMetrics::default();
        for micros in [100, 500, 501, 3_000, 3_000, 60_000_000] {
            m.latency.observe(Duration::from_micros(micros));
        }
        let mut out = String::new();
        render(&[("r", &m)], &mut out);
        let bucket = |le: &str| {
            sample(
                &out,
                &format!("polybridge_route_latency_seconds_bucket{{route=\"r\",le=\"{le}\"}}"),
            )
        };
        // A bound is inclusive: 500 µs is in le=0.0005.
        assert_eq!(bucket("0.0005"), Some(2.0), "{out}");
        assert_eq!(bucket("0.001"), Some(3.0));
        assert_eq!(bucket("0.0025"), Some(3.0));
        assert_eq!(bucket("0.005"), Some(5.0));
        assert_eq!(bucket("10"), Some(5.0));
        assert_eq!(bucket("+Inf"), Some(6.0));
        let count = sample(&out, "polybridge_route_latency_seconds_count{route=\"r\"}");
        assert_eq!(count, Some(6.0));
        let sum = sample(&out, "polybridge_route_latency_seconds_sum{route=\"r\"}");
        assert!(sum.is_some_and(|s| (s - 60.007101).abs() < 1e-9), "{out}");
        assert_eq!(m.latency.snapshot().count(), 6);
        // The other histogram saw none of it.
        let handoff = sample(&out, "polybridge_route_handoff_seconds_count{route=\"r\"}");
        assert_eq!(handoff, Some(0.0));
    }

    #[test]
    fn a_snapshot_gives_the_bucket_bound_of_a_quantile_the_counts_between_two_moments_and_pools() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile_upper_bound(0.99), None);
        // 98 messages at 8 µs, one batch of 2 at 40 µs.
        for _ in 0..98 {
            h.observe(Duration::from_micros(8));
        }
        h.observe_n(Duration::from_micros(40), 2);
        let first = h.snapshot();
        assert_eq!(first.count(), 100);
        assert_eq!(first.quantile_upper_bound(0.5), Some(0.00001));
        assert_eq!(first.quantile_upper_bound(0.98), Some(0.00001));
        assert_eq!(first.quantile_upper_bound(0.99), Some(0.00005));
        assert_eq!(first.sum_nanos, 98 * 8_000 + 2 * 40_000);
        // Later: one message slower than the last bound.
        h.observe(Duration::from_secs(11));
        let later = h.snapshot().since(&first);
        assert_eq!(later.count(), 1);
        assert_eq!(later.quantile_upper_bound(0.5), Some(f64::INFINITY));
        assert_eq!(later.mean_secs(), Some(11.0));
        let mut pooled = first;
        pooled.add(&later);
        assert_eq!(pooled, h.snapshot());
    }

    #[test]
    fn a_broker_that_stays_up_counts_no_reconnect() {
        let b = BrokerMetrics::connected();
        b.up();
        b.up();
        assert_eq!(b.reconnects.load(Ordering::Relaxed), 0);
        b.down();
        b.up();
        b.up();
        assert!(b.connected.load(Ordering::Relaxed));
        assert_eq!(b.reconnects.load(Ordering::Relaxed), 1);
    }
}
