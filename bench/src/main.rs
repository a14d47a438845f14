//! `polybridge-bench`: each benchmarked route side by side with the raw client crates.
//!
//! See `docs/benchmarks/README.md` for what is measured and how. In short, per route and
//! payload size, alternating over `--rounds`:
//! - **raw limit** = min(raw consume rate of the source, raw publish rate of the sink), with
//!   the client crates the adapters use ([`raw`]);
//! - **bridged rate**: the source is pre-filled with `--messages` messages, then a
//!   [`Bridge`] is started in this process from a rule file and timed until its route has
//!   acknowledged every source delivery (each after the sink confirmed its publish);
//! - peak RSS (`VmHWM`, reset before the bridged run) and CPU per message (`getrusage`)
//!   of that bridged run;
//! - end-to-end latency at a fixed 1k msg/s through the bridge (HDR histogram, open-loop
//!   publisher; the bridge in this process, or with `--latency-bridge process` the
//!   `polybridge` binary in its own), and the raw one-hop latency on the source and on the
//!   sink broker at the same rate and time, in `--rounds` alternating rounds, from which
//!   the latency added by the bridge is estimated;
//! - memory of the real bridge binary ([`memory`]): idle RSS, and RSS while the sink
//!   broker is frozen for `--outage-secs` (every message must arrive afterwards).
//!
//! Allocations per message in the bridge's hot path are counted by the separate binary
//! `polybridge-allocs` (`src/allocs.rs`).

mod bridge_process;
mod machine;
mod memory;
mod raw;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use polybridge_bridge::metrics::HistogramSnapshot;
use polybridge_bridge::route::Route;
use polybridge_bridge::Bridge;
use polybridge_testkit::{url_with, BrokerKind, Endpoint as TkEndpoint};
use raw::{Endpoint, Kind};
use serde_json::json;

/// Side-by-side benchmark of polybridge routes against the raw client crates.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Messages per throughput run (at least; see `--min-run-secs`).
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Fast routes get more messages, so that their slower raw run lasts about this long
    /// (a run of a few milliseconds measures the scheduler, not the route).
    #[arg(long, default_value_t = 1.0)]
    min_run_secs: f64,
    /// The most messages per throughput run (the memory broker keeps 100 000 per topic).
    #[arg(long, default_value_t = 90_000)]
    max_messages: u64,
    /// Rounds of (raw consume, raw publish, bridged), alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Messages of each latency series (published at `--rate` per second; `--rounds` rounds).
    #[arg(long, default_value_t = 3_000)]
    latency_messages: u64,
    /// Publish rate of the latency run, messages per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [256usize, 4096])]
    sizes: Vec<usize>,
    /// Only routes whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Tiny counts, one round, no result files; exit 0 if everything ran.
    #[arg(long)]
    smoke: bool,
    /// The route's `max_in_flight` (default: the bridge's default, 256), and the raw
    /// clients' window: both sides of a ratio keep the same number of messages in flight.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// The route's `max_batch` (default: the bridge's default, 64; 1 turns batching off).
    #[arg(long)]
    max_batch: Option<usize>,
    /// Where results go.
    #[arg(long, default_value = "docs/benchmarks")]
    out: std::path::PathBuf,
    /// Only the memory runs of the bridge binary (idle RSS, RSS under a sink outage).
    #[arg(long)]
    memory_only: bool,
    /// No memory runs.
    #[arg(long)]
    skip_memory: bool,
    /// Seconds the bridge binary idles before its idle RSS is read (with `--only`, the
    /// idle and outage runs use the matching routes only).
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Seconds the sink broker is frozen (SIGSTOP) in the outage runs; 0: no outage runs.
    #[arg(long, default_value_t = 60)]
    outage_secs: u64,
    /// Messages per second published to the source during the outage runs.
    #[arg(long, default_value_t = 1_000)]
    outage_rate: u64,
    /// Payload bytes of the messages of the outage runs.
    #[arg(long, default_value_t = 256)]
    outage_bytes: usize,
    /// An option added to the URL of every endpoint whose scheme starts with SCHEME, raw
    /// clients and bridge alike: `SCHEME:KEY=VALUE`, e.g. `stomp:group_commit=0`
    /// (repeatable).
    #[arg(long, value_name = "SCHEME:KEY=VALUE")]
    url_option: Vec<String>,
    /// The `polybridge` binary (default: next to this program).
    #[arg(long)]
    bridge_bin: Option<std::path::PathBuf>,
    /// Where the bridge of the latency series runs (default, and the committed table:
    /// `process`, the binary as deployed).
    #[arg(long, value_enum, default_value_t = LatencyBridge::Process)]
    latency_bridge: LatencyBridge,
    /// Writes every latency series' messages to a CSV file in this directory (send time,
    /// arrival time and latency of each, µs), for `scripts/latency-trace.py`: which
    /// messages a tail is made of, one stall or many.
    #[arg(long)]
    trace_dir: Option<std::path::PathBuf>,
    /// Where the brokers this benchmark starts keep their data: each gets a new directory
    /// under this one (it sets `POLYBRIDGE_BROKER_DIR` for the harness; default: that
    /// variable, else the system's temporary directory). On `/dev/shm`, a tmpfs, the
    /// brokers' syncs wait for no disk, so the disk's stalls stay out of the raw and the
    /// bridged series alike. Each result records the directory and its filesystem.
    #[arg(long)]
    broker_dir: Option<std::path::PathBuf>,
}

/// Where the bridge of a latency series runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LatencyBridge {
    /// A `Bridge` in this process, on the runtime of the publisher and subscriber.
    InProcess,
    /// The `polybridge` binary as a subprocess, as it is deployed: it does not share a
    /// tokio runtime with the benchmark's publisher and subscriber. A route with the
    /// memory broker (in this process) runs in-process whatever this says.
    Process,
}

/// The routes of issue 11.
const ROUTES: &[(Kind, Kind)] = &[
    (Kind::JetStream, Kind::Kafka),
    (Kind::Mqtt, Kind::Amqp),
    (Kind::Redis, Kind::JetStream),
    (Kind::Kafka, Kind::Redis),
    (Kind::Amqp, Kind::Stomp),
    (Kind::Memory, Kind::Memory),
];

/// One round's measurements.
#[derive(Clone, Debug, Default)]
struct Round {
    raw_consume: f64,
    raw_publish: f64,
    bridged: f64,
    rss_mib: f64,
    cpu_us_per_msg: f64,
    /// Machine CPU (all processes, brokers included) per message, µs: raw consume run.
    machine_consume_us: f64,
    /// … raw publish run.
    machine_publish_us: f64,
    /// … bridged run.
    machine_bridged_us: f64,
    /// Average cores busy during the bridged run.
    bridged_busy_cores: f64,
    /// Average cores idle waiting for the disk during the bridged run.
    bridged_iowait_cores: f64,
    /// Average cores taken by the hypervisor (steal) during the bridged run.
    bridged_steal_cores: f64,
}

impl Round {
    /// min(raw consume, raw publish): the physical limit.
    fn raw_limit(&self) -> f64 {
        self.raw_consume.min(self.raw_publish)
    }

    /// The rate at which the machine's cores would be saturated by the two halves of a
    /// route's work (consuming at the source, publishing to the sink: brokers and clients),
    /// with no bridge work at all: cores / (CPU per consumed + CPU per published message).
    fn cpu_limit(&self, cores: f64) -> f64 {
        cores * 1e6 / (self.machine_consume_us + self.machine_publish_us)
    }

    /// Machine CPU per message of the bridged run beyond the two raw halves: the bridge's
    /// own work (and any extra broker work the bridged run causes).
    fn bridge_own_us(&self) -> f64 {
        self.machine_bridged_us - self.machine_consume_us - self.machine_publish_us
    }
}

/// With the `jemalloc` feature, the bridge binary's opt-in allocator: the bridged
/// throughput runs start the bridge in this process, so they measure it as that build
/// ships; the raw clients run on the same allocator.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.messages = args.messages.min(500);
        args.rounds = 1;
        args.latency_messages = args.latency_messages.min(100);
        args.idle_secs = args.idle_secs.min(1);
        args.outage_secs = args.outage_secs.min(3);
    }
    raw::set_window(
        args.max_in_flight
            .unwrap_or(polybridge::DEFAULT_MAX_IN_FLIGHT),
    );
    if let Some(dir) = &args.broker_dir {
        if !dir.is_dir() {
            bail!("--broker-dir {}: no such directory", dir.display());
        }
        // Before the runtime starts: no other thread reads the environment yet.
        std::env::set_var("POLYBRIDGE_BROKER_DIR", dir);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let kafka_built = true;
    let mut endpoints: BTreeMap<&'static str, Endpoint> = BTreeMap::new();
    let mut results = Vec::new();
    let mut failures = 0usize;
    if let Some(dir) = &args.trace_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the trace directory {}", dir.display()))?;
    }
    for (src, dst) in ROUTES {
        if args.memory_only {
            break;
        }
        let name = format!("{}→{}", src.label(), dst.label());
        if let Some(only) = &args.only {
            if !name.contains(only.as_str()) {
                continue;
            }
        }
        if (*src == Kind::Kafka || *dst == Kind::Kafka) && !kafka_built {
            println!("{name}: not built yet (the Kafka adapter is not merged)");
            for size in &args.sizes {
                results.push(json!({
                    "route": name, "payload_bytes": size, "status": "not built yet",
                    "raw_limit_msgs_per_s": null, "bridged_msgs_per_s": null, "ratio": null,
                    "p50_us": null, "p99_us": null, "p999_us": null, "peak_rss_mib": null,
                    "cpu_us_per_msg": null,
                }));
            }
            continue;
        }
        if let Some(reason) = [*src, *dst].iter().find_map(|k| skip_reason(*k)) {
            println!("{name}: {reason}");
            continue;
        }
        let source = endpoint(&mut endpoints, *src, &args.url_option)?;
        let sink = endpoint(&mut endpoints, *dst, &args.url_option)?;
        for &size in &args.sizes {
            match bench_route(&args, &name, &source, &sink, size).await {
                Ok(r) => {
                    println!("{}", serde_json::to_string(&r)?);
                    results.push(r);
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("{name} {size} B: FAILED: {e:#}");
                    results.push(json!({
                        "route": name, "payload_bytes": size, "status": format!("failed: {e:#}"),
                        "raw_limit_msgs_per_s": null, "bridged_msgs_per_s": null, "ratio": null,
                        "p50_us": null, "p99_us": null, "p999_us": null, "peak_rss_mib": null,
                        "cpu_us_per_msg": null,
                    }));
                }
            }
        }
    }
    let mut memory_results = Vec::new();
    if !args.skip_memory {
        match memory_runs(&args, &mut endpoints).await {
            Ok(r) => memory_results = r,
            Err(e) => {
                failures += 1;
                eprintln!("memory runs: FAILED: {e:#}");
            }
        }
    }
    println!("finished in {:.0} s", started.elapsed().as_secs_f64());
    if args.smoke {
        if failures > 0 {
            bail!("{failures} route runs failed");
        }
        println!("smoke run: every route ran; no result files written");
        return Ok(());
    }
    if !args.memory_only {
        write_results(&args, &results)?;
    }
    if !memory_results.is_empty() {
        std::fs::create_dir_all(&args.out)?;
        let path = args.out.join("memory.json");
        std::fs::write(&path, serde_json::to_string_pretty(&memory_results)? + "\n")?;
        println!("wrote {}", path.display());
    }
    if failures > 0 {
        bail!("{failures} route runs failed (recorded in results.json)");
    }
    Ok(())
}

/// Idle RSS of the bridge binary on the benchmark's routes, then RSS under a sink outage
/// on Redis streams→NATS(JetStream), MQTT(QoS1)→RabbitMQ and Kafka→Redis streams (the sink
/// a private broker, frozen with SIGSTOP). Routes with a skipped broker are left out.
async fn memory_runs(
    args: &Args,
    endpoints: &mut BTreeMap<&'static str, Endpoint>,
) -> Result<Vec<serde_json::Value>> {
    let bin = bridge_process::bridge_bin(args.bridge_bin.as_deref())?;
    let mut out = Vec::new();
    let mut pairs = Vec::new();
    let selected = |src: Kind, dst: Kind| {
        let name = format!("{}→{}", src.label(), dst.label());
        args.only.as_deref().is_none_or(|o| name.contains(o))
            && [src, dst].iter().all(|k| skip_reason(*k).is_none())
    };
    for (src, dst) in ROUTES {
        if !selected(*src, *dst) {
            continue;
        }
        pairs.push((
            endpoint(endpoints, *src, &args.url_option)?,
            endpoint(endpoints, *dst, &args.url_option)?,
        ));
    }
    if pairs.is_empty() {
        return Ok(out);
    }
    let idle = memory::idle_rss(&bin, &pairs, Duration::from_secs(args.idle_secs))
        .await
        .context("idle RSS")?;
    println!("{}", serde_json::to_string(&json!({ "idle": idle }))?);
    out.push(json!({ "idle": idle }));
    let o = memory::Outage {
        rate: args.outage_rate,
        payload_bytes: args.outage_bytes,
        before: Duration::from_secs(if args.smoke { 1 } else { 5 }),
        outage: Duration::from_secs(args.outage_secs),
        after: Duration::from_secs(if args.smoke { 1 } else { 5 }),
    };
    for (src, dst, bk) in [
        (Kind::Redis, Kind::JetStream, BrokerKind::Nats),
        (Kind::Mqtt, Kind::Amqp, BrokerKind::RabbitMq),
        (Kind::Kafka, Kind::Redis, BrokerKind::Redis),
    ] {
        if !selected(src, dst) || args.outage_secs == 0 {
            continue;
        }
        let source = endpoint(endpoints, src, &args.url_option)?;
        eprintln!("starting a private {} for the outage run …", bk.name());
        let broker = polybridge_testkit::private(bk)?;
        let (_, tk) = broker_kind(dst).ok_or_else(|| anyhow!("no broker for {dst:?}"))?;
        let url = endpoint_url(
            dst,
            broker
                .url(tk)
                .ok_or_else(|| anyhow!("{} serves no {tk:?} endpoint", bk.name()))?,
            &args.url_option,
        )?;
        let sink = Endpoint { kind: dst, url };
        let r = memory::outage(&bin, &source, &sink, &broker, &o)
            .await
            .with_context(|| format!("outage {}→{}", src.label(), dst.label()))?;
        let mut brief = r.clone();
        if let Some(m) = brief.as_object_mut() {
            m.remove("rss_samples_mib");
        }
        println!("{}", serde_json::to_string(&json!({ "outage": brief }))?);
        out.push(json!({ "outage": r }));
    }
    Ok(out)
}

/// The harness broker of `kind` (none for memory).
fn broker_kind(kind: Kind) -> Option<(BrokerKind, TkEndpoint)> {
    match kind {
        Kind::JetStream => Some((BrokerKind::Nats, TkEndpoint::Nats)),
        Kind::Redis => Some((BrokerKind::Redis, TkEndpoint::Redis)),
        Kind::Mqtt => Some((BrokerKind::Mosquitto, TkEndpoint::Mqtt)),
        Kind::Amqp => Some((BrokerKind::RabbitMq, TkEndpoint::Amqp)),
        Kind::Stomp => Some((BrokerKind::ActiveMq, TkEndpoint::Stomp)),
        Kind::Kafka => Some((BrokerKind::Kafka, TkEndpoint::Kafka)),
        Kind::Memory => None,
    }
}

/// Why a route with an endpoint of `kind` is skipped (`POLYBRIDGE_SKIP_BROKERS`).
fn skip_reason(kind: Kind) -> Option<String> {
    broker_kind(kind).and_then(|(bk, _)| polybridge_testkit::skip_reason(bk))
}

/// Starts (or finds, via `POLYBRIDGE_<X>_URL`) the broker of `kind`.
fn endpoint(
    cache: &mut BTreeMap<&'static str, Endpoint>,
    kind: Kind,
    url_options: &[String],
) -> Result<Endpoint> {
    let key = kind.label();
    if let Some(e) = cache.get(key) {
        return Ok(e.clone());
    }
    let url = match broker_kind(kind) {
        None => "memory://bench".to_string(),
        Some((bk, tk)) => {
            eprintln!("starting {} …", bk.name());
            let b = polybridge_testkit::shared(bk)?;
            let base = b
                .url(tk)
                .ok_or_else(|| anyhow!("{} serves no {tk:?} endpoint", bk.name()))?;
            // `scripts/capture-hops.sh` names the ports of a packet capture from this line.
            eprintln!("{} at {}", bk.name(), polybridge::redact_text(&base));
            endpoint_url(kind, base, url_options)?
        }
    };
    let e = Endpoint { kind, url };
    cache.insert(key, e.clone());
    Ok(e)
}

/// The adapter URL of `kind` from the harness's base URL, with the `--url-option`s whose
/// scheme prefix it has.
fn endpoint_url(kind: Kind, base: String, url_options: &[String]) -> Result<String> {
    let mut url = match kind {
        Kind::JetStream => url_with(&base, &format!("mode=jetstream&stream={}", raw::JS_STREAM)),
        Kind::Mqtt => url_with(
            &base,
            &format!("qos=1&client_id=pbbench{}", std::process::id()),
        ),
        Kind::Stomp => base.replacen("stomp://", "stomp+activemq://", 1),
        _ => base,
    };
    for option in url_options {
        let Some((scheme, pair)) = option.split_once(':').filter(|(_, p)| p.contains('=')) else {
            bail!("--url-option {option:?}: use SCHEME:KEY=VALUE");
        };
        if url.starts_with(scheme) {
            url = url_with(&url, pair);
        }
    }
    Ok(url)
}

/// A payload of `size` bytes starting with the current time (ns since [`epoch`]).
fn payload(size: usize) -> Bytes {
    stamped_payload(size, epoch().elapsed())
}

/// A payload of `size` bytes starting with `at` (ns since [`epoch`]): the time the latency
/// receiver subtracts from the receive time.
fn stamped_payload(size: usize, at: Duration) -> Bytes {
    let mut v = vec![b'x'; size.max(8)];
    let t = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
    v[..8].copy_from_slice(&t.to_le_bytes());
    Bytes::from(v)
}

/// A warm-up message: stamped 0, received but not recorded (see [`LATENCY_WARMUP`]).
fn warmup_payload(size: usize) -> Bytes {
    let mut v = vec![b'x'; size.max(8)];
    v[..8].fill(0);
    Bytes::from(v)
}

/// Before each latency series, messages stamped 0 are published at the series' rate until
/// the first one arrived, and then until every one sent before that arrived and this many
/// more after them (and at least this many in all): the clients' first-use costs (a new
/// Kafka producer's metadata and producer id, a new subscription's first fetch) stay out of
/// the series, and so does the backlog they leave. A first message that takes 0.9 s leaves
/// 900 warm-up messages in flight; a series begun at their arrival, as before 2026-12-04,
/// queued its first tens of messages behind them (up to 40 ms on NATS(JetStream)→Kafka,
/// over 1% of a 2000-message series, so its p99 measured the backlog's drain). The series
/// measures the steady state at that rate.
const LATENCY_WARMUP: u64 = 100;

fn sent_at(p: &[u8]) -> Option<Duration> {
    let b: [u8; 8] = p.get(..8)?.try_into().ok()?;
    Some(Duration::from_nanos(u64::from_le_bytes(b)))
}

fn epoch() -> Instant {
    static E: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn unique_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn bench_route(
    args: &Args,
    name: &str,
    source: &Endpoint,
    sink: &Endpoint,
    size: usize,
) -> Result<serde_json::Value> {
    let body = payload(size);
    let cores = machine::cores();
    let mut n = args.messages;
    let mut rounds = Vec::new();
    let mut calibrating = !args.smoke;
    let row_start = machine::MachineCpu::now();
    while rounds.len() < args.rounds {
        let mut r = Round::default();
        (r.raw_consume, r.machine_consume_us) =
            raw_consume(source, n, &body).await.context("raw consume")?;
        (r.raw_publish, r.machine_publish_us) =
            raw_publish(sink, n, &body).await.context("raw publish")?;
        if calibrating {
            // A fast route gets more messages so its slower raw run lasts `--min-run-secs`;
            // this round is then run again with them.
            calibrating = false;
            let wanted = (r.raw_limit() * args.min_run_secs).ceil() as u64;
            let better = wanted.clamp(args.messages, args.max_messages.max(args.messages));
            if better > n {
                eprintln!(
                    "  {name} {size} B: {n} messages take under {} s; using {better}",
                    args.min_run_secs
                );
                n = better;
                continue;
            }
        }
        let b = bridged(source, sink, n, &body, RouteOptions::from(args))
            .await
            .context("bridged")?;
        r.bridged = b.rate;
        r.rss_mib = b.rss_mib;
        r.cpu_us_per_msg = b.process_cpu_us;
        r.machine_bridged_us = b.machine_cpu_us;
        r.bridged_busy_cores = b.busy_cores;
        r.bridged_iowait_cores = b.iowait_cores;
        r.bridged_steal_cores = b.steal_cores;
        eprintln!(
            "  {name} {size} B round {}: raw consume {:.0}/s ({:.1} µs CPU/msg), raw publish {:.0}/s ({:.1} µs), bridged {:.0}/s ({:.1} µs, {:.2} cores busy, {:.2} in iowait, {:.2} stolen; CPU-bound limit {:.0}/s)",
            rounds.len() + 1,
            r.raw_consume,
            r.machine_consume_us,
            r.raw_publish,
            r.machine_publish_us,
            r.bridged,
            r.machine_bridged_us,
            r.bridged_busy_cores,
            r.bridged_iowait_cores,
            r.bridged_steal_cores,
            r.cpu_limit(cores),
        );
        rounds.push(r);
    }
    // Latency: the bridged route, then the two one-hop baselines (raw publisher → raw
    // subscriber on the source broker, and on the sink broker) at the same time, so both
    // brokers are busy as in the bridged run (on a small machine they compete for the
    // cores). Alternated for `rounds` rounds and pooled: a broker stall of tens of ms
    // holds tens of messages at 1k msg/s, which moves the p99 of one short series.
    let mut hist = new_histogram()?;
    let mut hop_src = new_histogram()?;
    let mut hop_dst = new_histogram()?;
    let mut round_added_p99 = Vec::new();
    let mut round_two_p99 = Vec::new();
    let mut handoff = HistogramSnapshot::default();
    let mut ack = HistogramSnapshot::default();
    // The memory broker lives in this process: a route with it cannot run in another.
    let process_bin = match args.latency_bridge {
        LatencyBridge::Process if source.kind != Kind::Memory && sink.kind != Kind::Memory => {
            Some(bridge_process::bridge_bin(args.bridge_bin.as_deref())?)
        }
        _ => None,
    };
    for round in 1..=args.rounds.max(1) {
        let trace = |which: &str| trace_file(args, name, size, round, which);
        let LatencyRun {
            hist: bridged,
            handoff: round_handoff,
            ack: round_ack,
        } = latency(
            source,
            sink,
            Series::of(args, size, trace("bridged")),
            RouteOptions::from(args),
            process_bin.as_deref(),
        )
        .await
        .context("latency")?;
        // The two hops' series start together, after both warm-ups: a Kafka hop's warm-up
        // takes seconds longer (the producer's metadata), and without this its series ran
        // after the other one had ended, on a machine with one broker busy instead of two.
        let hops_start = tokio::sync::Barrier::new(2);
        let (src, dst) = tokio::try_join!(
            raw_latency(
                source,
                Series::of(args, size, trace("source-hop")),
                &hops_start
            ),
            raw_latency(sink, Series::of(args, size, trace("sink-hop")), &hops_start),
        )
        .context("raw latency at the source and the sink together")?;
        // The round's own two hops: how far the baseline alone moves from round to round
        // says how small an added p99 the rounds can tell from zero.
        let round_two_hops_p99 = quantile_us(&two_hops(&src, &dst)?, 0.99);
        round_two_p99.push(round_two_hops_p99.round());
        round_added_p99.push((quantile_us(&bridged, 0.99) - round_two_hops_p99).round());
        handoff.add(&round_handoff);
        ack.add(&round_ack);
        for (pool, h) in [
            (&mut hist, &bridged),
            (&mut hop_src, &src),
            (&mut hop_dst, &dst),
        ] {
            pool.add(h)
                .map_err(|e| anyhow!("pooling latency histograms: {e}"))?;
        }
    }

    // Steal over every run of this row (raw, bridged, latency).
    let row_steal_cores = row_start
        .and_then(machine::MachineCpu::used_since)
        .map(|u| round3(u.steal_cores));
    let pick = |f: &dyn Fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    let limits = pick(&Round::raw_limit);
    let bridged = pick(&|r| r.bridged);
    let ratios = pick(&|r| r.bridged / r.raw_limit());
    let cpu_limits = pick(&|r| r.cpu_limit(cores));
    // The bridged rate against the lower of the two limits: what the route can reach on
    // this machine, where the brokers and the bridge share the cores.
    let ratios_reachable = pick(&|r| r.bridged / r.raw_limit().min(r.cpu_limit(cores)));
    let us = |q: f64| quantile_us(&hist, q);
    // The two hops of a bridge that took no time: the source hop and the sink hop one
    // after the other, their distribution the convolution of the two measured together.
    // Added by the bridge = bridged − two hops, quantile by quantile.
    let two_hops = two_hops(&hop_src, &hop_dst)?;
    let two_us = |q: f64| quantile_us(&two_hops, q);
    let added_to_two_hops = |q: f64| (us(q) - two_us(q)).round();
    let mut result = json!({
        "route": name,
        "payload_bytes": size,
        "status": "ok",
        "messages": n,
        "rounds": args.rounds,
        "raw_limit_msgs_per_s": median(&limits).round(),
        "bridged_msgs_per_s": median(&bridged).round(),
        "ratio": round3(median(&ratios)),
        "p50_us": us(0.5).round(),
        "p99_us": us(0.99).round(),
        "p999_us": us(0.999).round(),
        "peak_rss_mib": round1(median(&pick(&|r| r.rss_mib))),
        "cpu_us_per_msg": round1(median(&pick(&|r| r.cpu_us_per_msg))),
        "cores": cores,
        "machine_cpu_us_per_msg": {
            "raw_consume": round1(median(&pick(&|r| r.machine_consume_us))),
            "raw_publish": round1(median(&pick(&|r| r.machine_publish_us))),
            "bridged": round1(median(&pick(&|r| r.machine_bridged_us))),
            "bridge_own": round1(median(&pick(&Round::bridge_own_us))),
        },
        "bridged_busy_cores": round3(median(&pick(&|r| r.bridged_busy_cores))),
        "bridged_iowait_cores": round3(median(&pick(&|r| r.bridged_iowait_cores))),
        "bridged_steal_cores": round3(median(&pick(&|r| r.bridged_steal_cores))),
        "steal_cores": row_steal_cores,
        "cpu_limit_msgs_per_s": median(&cpu_limits).round(),
        "ratio_reachable": round3(median(&ratios_reachable)),
        "spread": {
            "raw_consume_msgs_per_s": spread(&pick(&|r| r.raw_consume)),
            "raw_publish_msgs_per_s": spread(&pick(&|r| r.raw_publish)),
            "raw_limit_msgs_per_s": spread(&limits),
            "bridged_msgs_per_s": spread(&bridged),
            "cpu_limit_msgs_per_s": spread(&cpu_limits),
            "ratio": ratios.iter().map(|r| round3(*r)).collect::<Vec<_>>(),
            "ratio_reachable": ratios_reachable.iter().map(|r| round3(*r)).collect::<Vec<_>>(),
            "added_to_two_hops_p99_us": round_added_p99,
            "two_hops_p99_us": round_two_p99,
        },
        "latency_messages": hist.len(),
        "latency_bridge": if process_bin.is_some() { "process" } else { "in-process" },
    });
    let (dir, filesystem) = broker_storage([source.kind, sink.kind]);
    result["broker_dir"] = dir;
    result["broker_dir_filesystem"] = filesystem;
    // The window of both the route and the raw clients.
    result["max_in_flight"] = json!(raw::window());
    // Outside the `json!` above: its macro expansion is at the recursion limit.
    for (q, suffix) in [(0.5, "p50_us"), (0.99, "p99_us"), (0.999, "p999_us")] {
        result[format!("raw_source_loaded_{suffix}")] = json!(quantile_us(&hop_src, q).round());
        result[format!("raw_sink_loaded_{suffix}")] = json!(quantile_us(&hop_dst, q).round());
        result[format!("two_hops_{suffix}")] = json!(two_us(q).round());
        result[format!("added_to_two_hops_{suffix}")] = json!(added_to_two_hops(q));
    }
    result["route_handoff"] = bucket_summary(&handoff);
    result["route_delivery_to_ack"] = bucket_summary(&ack);
    Ok(result)
}

/// The items of a JSON array, `a, b, c` (`None` if it is not an array).
fn comma_list(v: &serde_json::Value) -> Option<String> {
    v.as_array().map(|a| {
        a.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// A histogram of the bridge's own (fixed buckets) as JSON: how many observations, their
/// mean, and the upper bound of the bucket of p50, p99 and p99.9, in µs (`null`: above
/// the last bound, 10 s).
fn bucket_summary(h: &HistogramSnapshot) -> serde_json::Value {
    let le_us = |q: f64| {
        h.quantile_upper_bound(q)
            .filter(|b| b.is_finite())
            .map(|b| (b * 1e6).round())
    };
    json!({
        "count": h.count(),
        "mean_us": h.mean_secs().map(|m| round1(m * 1e6)),
        "p50_le_us": le_us(0.5),
        "p99_le_us": le_us(0.99),
        "p999_le_us": le_us(0.999),
    })
}

/// An empty latency histogram: 1 ns to 60 s, 3 significant digits.
fn new_histogram() -> Result<hdrhistogram::Histogram<u64>> {
    hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| anyhow!("creating a latency histogram: {e}"))
}

/// The latency at quantile `q` of `h` (recorded in ns), in µs.
fn quantile_us(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The latency of two hops taken one after the other, each sample of `first` with each
/// of `second` (independent hops): the distribution of their sum.
fn two_hops(
    first: &hdrhistogram::Histogram<u64>,
    second: &hdrhistogram::Histogram<u64>,
) -> Result<hdrhistogram::Histogram<u64>> {
    let mut sum = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3)
        .map_err(|e| anyhow!("{e}"))?;
    for a in first.iter_recorded() {
        for b in second.iter_recorded() {
            sum.saturating_record_n(
                a.value_iterated_to() + b.value_iterated_to(),
                a.count_at_value() * b.count_at_value(),
            );
        }
    }
    Ok(sum)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn spread(v: &[f64]) -> serde_json::Value {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({ "min": min.round(), "max": max.round(), "all": v.iter().map(|x| x.round()).collect::<Vec<_>>() })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Machine CPU µs per message of `n` messages from a reading taken at the start.
fn machine_us_per_msg(start: Option<machine::MachineCpu>, n: u64) -> f64 {
    start
        .and_then(machine::MachineCpu::used_since)
        .map(|u| u.busy_secs * 1e6 / n as f64)
        .unwrap_or(f64::NAN)
}

/// Raw consume rate: the destination is pre-filled with `n` messages, then the time from
/// the first message received to the `n`-th received and acknowledged. The subscriber is
/// opened before the pre-fill where the broker keeps messages only for a subscription
/// that exists, and after it where the broker keeps them anyway (Kafka), so that it reads
/// from the broker and not from what its client prefetched during the pre-fill. Timed
/// from the first arrival, as the bridged rate is timed from the route's first delivery
/// (a new Kafka consumer's group join takes seconds). Returns (msg/s, machine CPU µs per
/// message).
async fn raw_consume(ep: &Endpoint, n: u64, body: &Bytes) -> Result<(f64, f64)> {
    let name = unique_name("rc");
    raw::prepare(ep, &name).await?;
    let after_fill = raw::keeps_messages_without_subscriber(ep);
    let opened_before = if after_fill {
        None
    } else {
        Some(raw::subscriber(ep, &name).await?)
    };
    let mut publisher = raw::publisher(ep, &name).await?;
    for _ in 0..n {
        publisher.publish(body.clone()).await?;
    }
    publisher.flush().await?;
    drop(publisher);
    let mut sub = match opened_before {
        Some(sub) => sub,
        None => raw::subscriber_of_filled(ep, &name).await?,
    };
    tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .context("no first message for 60 s")??;
    let timed = n.saturating_sub(1).max(1);
    let cpu = machine::MachineCpu::now();
    let t = Instant::now();
    for _ in 1..n {
        tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .context("no message for 30 s")??;
    }
    let rate = timed as f64 / t.elapsed().as_secs_f64();
    let cpu_us = machine_us_per_msg(cpu, timed);
    drop(sub);
    raw::cleanup(ep, &name).await;
    Ok((rate, cpu_us))
}

/// Raw publish rate: `n` confirmed publishes, pipelined. Returns (msg/s, machine CPU µs
/// per message).
async fn raw_publish(ep: &Endpoint, n: u64, body: &Bytes) -> Result<(f64, f64)> {
    let name = unique_name("rp");
    raw::prepare(ep, &name).await?;
    let mut publisher = raw::publisher(ep, &name).await?;
    let cpu = machine::MachineCpu::now();
    let t = Instant::now();
    for _ in 0..n {
        publisher.publish(body.clone()).await?;
    }
    publisher.flush().await?;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let cpu_us = machine_us_per_msg(cpu, n);
    drop(publisher);
    raw::cleanup(ep, &name).await;
    Ok((rate, cpu_us))
}

/// The route options a run sets (`None`: the bridge's default).
#[derive(Clone, Copy, Debug)]
struct RouteOptions {
    max_in_flight: Option<usize>,
    max_batch: Option<usize>,
}

impl RouteOptions {
    /// The options' lines of a route in a rule file (none for the bridge's defaults).
    fn yaml(self) -> String {
        let mut lines = self
            .max_in_flight
            .map_or(String::new(), |n| format!("    max_in_flight: {n}\n"));
        if let Some(n) = self.max_batch {
            lines.push_str(&format!("    max_batch: {n}\n"));
        }
        lines
    }
}

impl From<&Args> for RouteOptions {
    fn from(args: &Args) -> Self {
        RouteOptions {
            max_in_flight: args.max_in_flight,
            max_batch: args.max_batch,
        }
    }
}

/// The rule file of one benchmark route.
fn rule_file(
    source: &Endpoint,
    sink: &Endpoint,
    src: &str,
    dst: &str,
    options: RouteOptions,
) -> String {
    let window = options.yaml();
    format!(
        "brokers:\n  src: {{ url: \"{}\" }}\n  dst: {{ url: \"{}\" }}\nroutes:\n  - name: bench\n{window}    from: {}\n    to:\n      - {{ broker: dst, destination: \"{}\" }}\nadmin: {{ enabled: false }}\n",
        source.url,
        sink.url,
        source.source_yaml(src),
        sink.sink_destination(dst)
    )
}

/// Starts a bridge for `yaml` after creating the source subscription's durable state once
/// (consumer group, durable consumer, queue or persistent session) so messages published
/// before the bridge runs wait for it.
async fn prepare_bridge(
    yaml: &str,
) -> Result<(
    polybridge_bridge::config::Config,
    BTreeMap<String, Arc<dyn polybridge::Broker>>,
)> {
    let config = polybridge_bridge::config::load(yaml, "bench.yaml", &|_| None)
        .map_err(|e| anyhow!("rule file:\n{e}\n{yaml}"))?;
    let brokers = polybridge_bridge::connect_brokers(&config).await?;
    let route = config.routes.first().ok_or_else(|| anyhow!("no route"))?;
    let src = brokers
        .get(&route.source.broker)
        .ok_or_else(|| anyhow!("no source broker"))?;
    let stream = src.subscribe(route.source.subscription.clone()).await?;
    stream.close().await;
    Ok((config, brokers))
}

/// What one bridged run measured.
struct BridgedRun {
    /// Messages per second.
    rate: f64,
    /// Peak RSS of this process, MiB.
    rss_mib: f64,
    /// CPU of this process (the bridge) per message, µs.
    process_cpu_us: f64,
    /// CPU of the whole machine (brokers too) per message, µs.
    machine_cpu_us: f64,
    /// Average cores busy while the route ran.
    busy_cores: f64,
    /// Average cores idle waiting for the disk while the route ran.
    iowait_cores: f64,
    /// Average cores taken by the hypervisor (steal) while the route ran.
    steal_cores: f64,
}

/// Bridged rate: pre-fill the source, start the bridge, time until every message was
/// acknowledged at the source after its sink publish was confirmed.
async fn bridged(
    source: &Endpoint,
    sink: &Endpoint,
    n: u64,
    body: &Bytes,
    options: RouteOptions,
) -> Result<BridgedRun> {
    let src = unique_name("bs");
    let dst = unique_name("bd");
    raw::prepare(source, &src).await?;
    raw::prepare(sink, &dst).await?;
    let yaml = rule_file(source, sink, &src, &dst, options);
    let (config, brokers) = prepare_bridge(&yaml).await?;
    {
        let mut publisher = raw::publisher(source, &src).await?;
        for _ in 0..n {
            publisher.publish(body.clone()).await?;
        }
        publisher.flush().await?;
    }
    reset_peak_rss();
    let cpu0 = cpu_time();
    let t = Instant::now();
    let bridge = Bridge::start_with_acked_mark(config, &brokers, Duration::from_secs(5), n)?;
    let route = bridge
        .routes()
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("no route"))?;
    // The clock runs from the route's first delivery to the acknowledgement of the n-th,
    // both instants recorded by the bridge itself (once each, see `RouteMetrics`):
    // subscribing (a Kafka group join takes seconds) is not throughput, and polling the
    // counters would add up to a poll interval to a run of a few milliseconds.
    let deadline = Instant::now() + Duration::from_secs(30).max(Duration::from_millis(n * 10));
    // The machine's CPU is read from the first poll that sees a delivery (the route's
    // subscribe, seconds for a Kafka group join, is left out) to the one that sees the n-th
    // acknowledgement.
    let mut machine_start = None;
    let (polled_end, machine_use) = loop {
        let m = &route.metrics;
        let acked = m.acked.load(std::sync::atomic::Ordering::Relaxed);
        if acked >= n {
            let used = machine_start.and_then(machine::MachineCpu::used_since);
            break (Instant::now(), used);
        }
        if machine_start.is_none() && m.received.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            machine_start = machine::MachineCpu::now();
        }
        if Instant::now() > deadline {
            bridge.stop().await;
            bail!("the bridge acknowledged {acked} of {n} messages before the deadline");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    };
    let first = route.metrics.first_received_at.get().copied().unwrap_or(t);
    // The mark is set before the route runs; a missing one would be a bridge bug.
    let end = match route.metrics.acked_mark_at.get() {
        Some(end) => *end,
        None => {
            eprintln!("  note: the bridge recorded no end instant; polled end used");
            polled_end
        }
    };
    let elapsed = end
        .saturating_duration_since(first)
        .max(Duration::from_nanos(1));
    let cpu = cpu_time().saturating_sub(cpu0);
    let rss = peak_rss_mib();
    bridge.stop().await;
    for b in brokers.values() {
        let _ = b
            .close(polybridge::Deadline::after(Duration::from_secs(5)))
            .await;
    }
    drop(brokers);
    raw::cleanup(source, &src).await;
    raw::cleanup(sink, &dst).await;
    Ok(BridgedRun {
        rate: n as f64 / elapsed.as_secs_f64(),
        rss_mib: rss,
        process_cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
        machine_cpu_us: machine_use.map_or(f64::NAN, |u| u.busy_secs * 1e6 / n as f64),
        busy_cores: machine_use.map_or(f64::NAN, |u| u.busy_cores),
        iowait_cores: machine_use.map_or(f64::NAN, |u| u.iowait_cores),
        steal_cores: machine_use.map_or(f64::NAN, |u| u.steal_cores),
    })
}

/// What one bridged latency series measured.
struct LatencyRun {
    /// End to end, raw publisher to raw subscriber, in ns.
    hist: hdrhistogram::Histogram<u64>,
    /// The route's own time (`polybridge_route_handoff_seconds`) during the series.
    handoff: HistogramSnapshot,
    /// The route's source delivery → source acknowledgement time
    /// (`polybridge_route_latency_seconds`) during the series.
    ack: HistogramSnapshot,
}

/// One latency series: `count` messages of `size` bytes at `rate` per second, each
/// message's times written to `trace` when it is set (`--trace-dir`).
struct Series {
    size: usize,
    count: u64,
    rate: u64,
    trace: Option<std::path::PathBuf>,
}

impl Series {
    /// A series of `--latency-messages` at `--rate`.
    fn of(args: &Args, size: usize, trace: Option<std::path::PathBuf>) -> Series {
        Series {
            size,
            count: args.latency_messages,
            rate: args.rate,
            trace,
        }
    }
}

/// End-to-end latency through the bridge at a fixed rate: raw source publisher → bridge →
/// raw sink subscriber, the send time carried in the payload; and the route's own
/// histograms over the same messages. The bridge is the binary `process_bin` in its own
/// process, or with `None` a [`Bridge`] in this one.
async fn latency(
    source: &Endpoint,
    sink: &Endpoint,
    series: Series,
    options: RouteOptions,
    process_bin: Option<&std::path::Path>,
) -> Result<LatencyRun> {
    let src = unique_name("ls");
    let dst = unique_name("ld");
    raw::prepare(source, &src).await?;
    raw::prepare(sink, &dst).await?;
    let sub = raw::subscriber(sink, &dst).await?;
    let bridge = match process_bin {
        Some(bin) => {
            let yaml = bridge_process::routes_yaml(
                &[(source, sink, src.clone(), dst.clone())],
                &options.yaml(),
            );
            // Returns once `/ready` says the route subscribed.
            SeriesBridge::Process(
                bridge_process::BridgeProcess::start(bin, &yaml, "latency").await?,
            )
        }
        None => {
            SeriesBridge::start_in_process(&rule_file(source, sink, &src, &dst, options)).await?
        }
    };
    let warmups_arrived = Arc::new(AtomicU64::new(0));
    let receiver = record_latencies(
        sub,
        series.count,
        warmups_arrived.clone(),
        "no message at the sink for 30 s",
        series.trace,
    );
    let mut publisher = raw::publisher(source, &src).await?;
    let mut tick = rate_timer(series.rate);
    warm_up(publisher.as_mut(), series.size, &mut tick, &warmups_arrived).await?;
    // The route's histograms from the end of the warm-up on (a few warm-up messages still
    // on their way to the route may count). A tick missed while they are read fires at
    // once; the timer's lateness is not stamped (`publish_at_rate`).
    let (handoff_at_warm, ack_at_warm) = bridge.histograms().await?;
    publish_at_rate(publisher.as_mut(), series.size, series.count, &mut tick).await?;
    let hist = receiver.await??;
    let (handoff_now, ack_now) = bridge.histograms().await?;
    bridge.stop().await;
    raw::cleanup(source, &src).await;
    raw::cleanup(sink, &dst).await;
    Ok(LatencyRun {
        hist,
        handoff: handoff_now.since(&handoff_at_warm),
        ack: ack_now.since(&ack_at_warm),
    })
}

/// The bridge of one latency series.
enum SeriesBridge {
    /// A [`Bridge`] in this process, with its route and brokers.
    InProcess {
        bridge: Bridge,
        route: Arc<Route>,
        brokers: BTreeMap<String, Arc<dyn polybridge::Broker>>,
    },
    /// The `polybridge` binary.
    Process(bridge_process::BridgeProcess),
}

impl SeriesBridge {
    /// Starts a [`Bridge`] in this process on rule file `yaml` and waits until its route
    /// subscribed.
    async fn start_in_process(yaml: &str) -> Result<SeriesBridge> {
        let (config, brokers) = prepare_bridge(yaml).await?;
        let bridge = Bridge::start(config, &brokers, Duration::from_secs(5))?;
        let route = bridge
            .routes()
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("no route"))?;
        let wait = Instant::now() + Duration::from_secs(30);
        while !route
            .metrics
            .subscribed
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            if Instant::now() > wait {
                bail!("the route did not subscribe within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(SeriesBridge::InProcess {
            bridge,
            route,
            brokers,
        })
    }

    /// The route's hand-off and delivery-to-acknowledgement histograms now.
    async fn histograms(&self) -> Result<(HistogramSnapshot, HistogramSnapshot)> {
        match self {
            SeriesBridge::InProcess { route, .. } => Ok((
                route.metrics.handoff.snapshot(),
                route.metrics.latency.snapshot(),
            )),
            // The route of `routes_yaml`'s first pair is `r0`.
            SeriesBridge::Process(p) => Ok((
                p.histogram("polybridge_route_handoff_seconds", "r0")
                    .await?,
                p.histogram("polybridge_route_latency_seconds", "r0")
                    .await?,
            )),
        }
    }

    /// Stops the bridge: the in-process one drained and its brokers closed, the binary
    /// killed.
    async fn stop(self) {
        match self {
            SeriesBridge::InProcess {
                bridge, brokers, ..
            } => {
                bridge.stop().await;
                for b in brokers.values() {
                    let _ = b
                        .close(polybridge::Deadline::after(Duration::from_secs(5)))
                        .await;
                }
            }
            SeriesBridge::Process(p) => p.stop().await,
        }
    }
}

/// One-hop latency at a fixed rate on one broker: raw publisher → raw subscriber, the send
/// time carried in the payload (the baseline the bridged latency is compared with). Its
/// measured messages start when every series waiting at `start` has warmed up.
async fn raw_latency(
    ep: &Endpoint,
    series: Series,
    start: &tokio::sync::Barrier,
) -> Result<hdrhistogram::Histogram<u64>> {
    let name = unique_name("rl");
    raw::prepare(ep, &name).await?;
    let sub = raw::subscriber(ep, &name).await?;
    let warmups_arrived = Arc::new(AtomicU64::new(0));
    let receiver = record_latencies(
        sub,
        series.count,
        warmups_arrived.clone(),
        "no message for 30 s",
        series.trace,
    );
    let mut publisher = raw::publisher(ep, &name).await?;
    let mut tick = rate_timer(series.rate);
    warm_up(publisher.as_mut(), series.size, &mut tick, &warmups_arrived).await?;
    start.wait().await;
    // A new timer: the old one's missed ticks would come as a burst after the wait.
    let mut tick = rate_timer(series.rate);
    publish_at_rate(publisher.as_mut(), series.size, series.count, &mut tick).await?;
    let hist = receiver.await??;
    drop(publisher);
    raw::cleanup(ep, &name).await;
    Ok(hist)
}

/// Receives messages on `sub` (in a task) until `count` were recorded: arrival time (before
/// the acknowledgement) − the time carried in the payload, in an HDR histogram. Warm-up
/// messages (stamped 0) are not recorded but counted in `warmups_arrived`.
fn record_latencies(
    mut sub: Box<dyn raw::RawSub>,
    count: u64,
    warmups_arrived: Arc<AtomicU64>,
    silence: &'static str,
    trace: Option<std::path::PathBuf>,
) -> tokio::task::JoinHandle<Result<hdrhistogram::Histogram<u64>>> {
    tokio::spawn(async move {
        let mut hist = new_histogram()?;
        let mut recorded = 0;
        // When traced: the file, and (send, arrival) of every recorded message since `epoch`.
        let mut trace = trace.map(|path| {
            let capacity = usize::try_from(count).unwrap_or(0);
            (path, Vec::<(Duration, Duration)>::with_capacity(capacity))
        });
        while recorded < count {
            let arrival = tokio::time::timeout(Duration::from_secs(30), sub.next())
                .await
                .context(silence)??;
            let now = arrival.at.saturating_duration_since(epoch());
            match sent_at(&arrival.payload) {
                Some(sent) if sent.is_zero() => {
                    warmups_arrived.fetch_add(1, AtomicOrdering::Release);
                }
                Some(sent) => {
                    let ns = u64::try_from(now.saturating_sub(sent).as_nanos()).unwrap_or(u64::MAX);
                    hist.saturating_record(ns.max(1));
                    recorded += 1;
                    if let Some((_, traced)) = trace.as_mut() {
                        traced.push((sent, now));
                    }
                }
                None => recorded += 1,
            }
        }
        if let Some((path, traced)) = trace {
            write_trace(&path, &traced)?;
        }
        anyhow::Ok(hist)
    })
}

/// The trace file of one latency series (`--trace-dir`): `<route>-<size>B-r<round>-<which>.csv`,
/// the route's name in ASCII (`NATS(JetStream)→Kafka` → `nats-jetstream-kafka`).
fn trace_file(
    args: &Args,
    route: &str,
    size: usize,
    round: usize,
    which: &str,
) -> Option<std::path::PathBuf> {
    let dir = args.trace_dir.as_ref()?;
    let mut slug = String::new();
    for c in route.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    Some(dir.join(format!("{slug}-{size}B-r{round}-{which}.csv")))
}

/// Writes one series' messages in the order they arrived: send time, arrival time (µs
/// since the benchmark started) and latency (µs).
fn write_trace(path: &std::path::Path, traced: &[(Duration, Duration)]) -> Result<()> {
    use std::fmt::Write as _;
    let mut csv = String::from("sent_us,arrival_us,latency_us\n");
    for (sent, arrival) in traced {
        let _ = writeln!(
            csv,
            "{:.1},{:.1},{:.1}",
            sent.as_secs_f64() * 1e6,
            arrival.as_secs_f64() * 1e6,
            arrival.saturating_sub(*sent).as_secs_f64() * 1e6
        );
    }
    std::fs::write(path, csv).with_context(|| format!("writing the trace {}", path.display()))
}

/// The timer of a series at `rate` messages per second (a late tick fires at once).
fn rate_timer(rate: u64) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    tick
}

/// When a warm-up is over ([`LATENCY_WARMUP`]): after the first arrival, once every
/// message sent before it arrived and `LATENCY_WARMUP` more after them (at least
/// `LATENCY_WARMUP` in all). Arrivals are counted, not identified: a redelivered warm-up
/// message counts twice, which only ends the warm-up a little early.
#[derive(Debug, Default)]
struct WarmUp {
    sent: u64,
    /// Set at the first arrival: how many must have arrived before the series starts.
    needed: Option<u64>,
}

impl WarmUp {
    /// Whether the warm-up is over now that `arrived` warm-up messages arrived.
    fn done(&mut self, arrived: u64) -> bool {
        if self.needed.is_none() && arrived > 0 {
            self.needed = Some(self.sent.max(arrived) + LATENCY_WARMUP);
        }
        self.needed.is_some_and(|n| arrived >= n)
    }

    /// Why a warm-up that is not [`done`](Self::done) in time failed.
    fn failure(&self, arrived: u64, within: Duration) -> String {
        match self.needed {
            None => format!(
                "no warm-up message arrived within {within:?} ({} sent)",
                self.sent
            ),
            Some(n) => format!(
                "warm-up: {arrived} of the first {n} messages arrived within {within:?} ({} sent)",
                self.sent
            ),
        }
    }
}

/// Publishes warm-up messages (stamped 0, not recorded) on `tick` until the [`WarmUp`] is
/// over; `warmups_arrived` counts their arrivals at the series' subscriber.
async fn warm_up(
    publisher: &mut dyn raw::RawPub,
    size: usize,
    tick: &mut tokio::time::Interval,
    warmups_arrived: &AtomicU64,
) -> Result<()> {
    let within = Duration::from_secs(30);
    let give_up = Instant::now() + within;
    let mut warm_up = WarmUp::default();
    loop {
        let arrived = warmups_arrived.load(AtomicOrdering::Acquire);
        if warm_up.done(arrived) {
            return Ok(());
        }
        if Instant::now() > give_up {
            bail!("{}", warm_up.failure(arrived, within));
        }
        tick.tick().await;
        publisher.send(warmup_payload(size)).await?;
        warm_up.sent += 1;
    }
}

/// Publishes `count` messages of `size` bytes, one per `tick`, open loop: each is sent
/// without waiting for the confirmations of the ones before it (the publisher's window
/// collects those), and carries the time it was sent minus the time earlier sends held the
/// publisher after it fell due. So a broker that stalls delays every message due during the
/// stall, as it delays the bridge's own publishes, and the stall shows in the histogram
/// instead of only holding up the publisher ("coordinated omission"). The timer's own
/// lateness (tokio's timers have 1 ms resolution) is the load generator's and stays out: it
/// would otherwise be counted once per hop.
async fn publish_at_rate(
    publisher: &mut dyn raw::RawPub,
    size: usize,
    count: u64,
    tick: &mut tokio::time::Interval,
) -> Result<()> {
    // When the earlier sends ran (start, end), newest last: the part of them after a
    // message's due time is time the publisher was held by the system under test.
    let mut sends: std::collections::VecDeque<(Instant, Instant)> = Default::default();
    for _ in 0..count {
        let due = tick.tick().await.into_std();
        let now = Instant::now();
        while sends.front().is_some_and(|(_, end)| *end <= due) {
            sends.pop_front();
        }
        let at = stamp(&sends, due, now);
        publisher
            .send(stamped_payload(size, at.saturating_duration_since(epoch())))
            .await?;
        sends.push_back((now, Instant::now()));
    }
    publisher.flush().await
}

/// The stamp of a message due at `due` and sent at `now`: `now` minus the part of the
/// earlier sends (start, end) that ran after `due`, never before `due`.
fn stamp(
    sends: &std::collections::VecDeque<(Instant, Instant)>,
    due: Instant,
    now: Instant,
) -> Instant {
    let held: Duration = sends
        .iter()
        .map(|(start, end)| (*end).min(now).saturating_duration_since((*start).max(due)))
        .sum();
    now.checked_sub(held).unwrap_or(due).max(due)
}

/// User plus system CPU time of this process (all threads).
fn cpu_time() -> Duration {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::new(
                    u64::try_from(tv.tv_sec()).unwrap_or(0),
                    u32::try_from(tv.tv_usec()).unwrap_or(0) * 1000,
                )
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// Resets `VmHWM` to the current RSS (Linux `clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Where the harness's brokers of a route keep their data: the parent directory and the
/// type of its filesystem; `"external"` for both when a broker of the route was given by
/// `POLYBRIDGE_<X>_URL`, `null` when the route has no broker process (memory).
fn broker_storage(kinds: [Kind; 2]) -> (serde_json::Value, serde_json::Value) {
    let brokers: Vec<_> = kinds
        .iter()
        .filter_map(|k| broker_kind(*k))
        .filter_map(|(bk, _)| polybridge_testkit::shared(bk).ok())
        .collect();
    if brokers.is_empty() {
        (serde_json::Value::Null, serde_json::Value::Null)
    } else if brokers.iter().any(|b| b.is_external()) {
        (json!("external"), json!("external"))
    } else {
        let dir = polybridge_testkit::broker_dir();
        (json!(dir.display().to_string()), json!(filesystem_of(&dir)))
    }
}

/// The type of the filesystem `path` is on (`tmpfs`, `ext4`, …), from the longest mount
/// point of `/proc/self/mounts` that contains it; `unknown` when that file cannot be read.
fn filesystem_of(path: &std::path::Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_device, mount_point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount_point)
                .then_some((mount_point.len(), fs_type))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, fs_type)| fs_type.to_owned())
}

/// `VmHWM` of this process in MiB.
fn peak_rss_mib() -> f64 {
    bridge_process::status_fields("/proc/self/status", ["VmHWM:"])
        .map_or(f64::NAN, |[kb]| kb / 1024.0)
}

fn write_results(args: &Args, results: &[serde_json::Value]) -> Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("results.json");
    // With `--only`, the other routes' rows of an earlier run are kept.
    let mut merged: Vec<serde_json::Value> = Vec::new();
    if args.only.is_some() {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(serde_json::Value::Array(old)) = serde_json::from_str(&text) {
                merged = old;
            }
        }
    }
    for r in results {
        match merged
            .iter_mut()
            .find(|o| o["route"] == r["route"] && o["payload_bytes"] == r["payload_bytes"])
        {
            Some(slot) => *slot = r.clone(),
            None => merged.push(r.clone()),
        }
    }
    let results = &merged[..];
    std::fs::write(&path, serde_json::to_string_pretty(results)? + "\n")?;
    println!("wrote {}", path.display());
    let mut table = String::from(
        "| route | payload | raw limit msg/s | bridged msg/s | ratio | ratio per round | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99.9 µs | peak RSS MiB | CPU µs/msg |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let f = |k: &str| match &r[k] {
            serde_json::Value::Null => "—".to_string(),
            v => v.to_string(),
        };
        let per_round = comma_list(&r["spread"]["ratio"])
            .unwrap_or_else(|| r["status"].as_str().unwrap_or("").to_string());
        table.push_str(&format!(
            "| {} | {} B | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["route"].as_str().unwrap_or(""),
            f("payload_bytes"),
            f("raw_limit_msgs_per_s"),
            f("bridged_msgs_per_s"),
            f("ratio"),
            per_round,
            f("p50_us"),
            f("p99_us"),
            f("p999_us"),
            f("added_to_two_hops_p50_us"),
            f("added_to_two_hops_p99_us"),
            f("added_to_two_hops_p999_us"),
            f("peak_rss_mib"),
            f("cpu_us_per_msg"),
        ));
    }
    table.push_str(&format!(
        "\nWhere the CPU goes: the whole machine's busy CPU time (brokers, bridge, clients) per message in each run, the cores busy during the bridged run, the rate at which the raw halves alone would saturate the cores, and the bridged rate against the lower of that and the raw limit. Stolen = cores the hypervisor gave to other guests while this machine wanted them (steal, counted as busy): in the bridged run, and over all of the row's runs; where it is not near 0 the row's rates and CPU times are the host's, not the route's.\n\n| route | payload | consume µs/msg | publish µs/msg | bridged µs/msg | bridge's own µs/msg | cores busy (of {cores}) | cores in iowait | cores stolen: bridged run / whole row | CPU-bound limit msg/s | ratio to min(raw, CPU-bound) |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        cores = machine::cores()
    ));
    for r in results {
        if r["status"] != "ok" {
            continue;
        }
        let m = &r["machine_cpu_us_per_msg"];
        table.push_str(&format!(
            "| {} | {} B | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |\n",
            r["route"].as_str().unwrap_or(""),
            r["payload_bytes"],
            m["raw_consume"],
            m["raw_publish"],
            m["bridged"],
            m["bridge_own"],
            r["bridged_busy_cores"],
            r["bridged_iowait_cores"],
            r["bridged_steal_cores"],
            r["steal_cores"],
            r["cpu_limit_msgs_per_s"],
            r["ratio_reachable"],
        ));
    }
    table.push_str(
        "\nLatency at 1k msg/s, open loop (publishes pipelined; each message stamped with its send time minus the time earlier sends held the publisher after it fell due): the bridged route, and the two raw one-hop baselines run at the same time (both brokers busy, as in the bridged run), alternated round by round and pooled; two hops = the source hop and the sink hop one after the other (the distribution of their sum: a bridge that took no time). Added = bridged − two hops at each quantile. Two hops p99 per round: the baseline alone, round by round; how far it moves between rounds is how small an added p99 the rounds can tell from zero.\n\n| route | payload | bridged p50 / p99 / p99.9 µs | source hop | sink hop | two hops | added p50 / p99 / p99.9 µs | added p99 per round µs | two hops p99 per round µs |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        if r["status"] != "ok" {
            continue;
        }
        let three = |prefix: &str| {
            format!(
                "{} / {} / {}",
                r[format!("{prefix}p50_us")],
                r[format!("{prefix}p99_us")],
                r[format!("{prefix}p999_us")]
            )
        };
        let per_round = |key: &str| comma_list(&r["spread"][key]).unwrap_or_default();
        table.push_str(&format!(
            "| {} | {} B | {} | {} | {} | {} | {} | {} | {} |\n",
            r["route"].as_str().unwrap_or(""),
            r["payload_bytes"],
            three(""),
            three("raw_source_loaded_"),
            three("raw_sink_loaded_"),
            three("two_hops_"),
            three("added_to_two_hops_"),
            per_round("added_to_two_hops_p99_us"),
            per_round("two_hops_p99_us"),
        ));
    }
    table.push_str(
        "\nThe same bridged latency series seen from inside the route (the bridge's histograms, summed over the rounds; quantiles are the upper bounds of their buckets, 10 µs to 10 s): hand-off = from the route taking a source delivery to the sink adapter's publish holding it, the bridge's own step; delivery → ack = from the same moment to the source acknowledgement, after the sink confirmed.\n\n| route | payload | messages | hand-off mean µs | hand-off p50 / p99 / p99.9 ≤ µs | delivery → ack mean µs | delivery → ack p50 / p99 / p99.9 ≤ µs |\n|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        if r["status"] != "ok" || r["route_handoff"].is_null() {
            continue;
        }
        let three = |h: &serde_json::Value| {
            format!(
                "{} / {} / {}",
                h["p50_le_us"], h["p99_le_us"], h["p999_le_us"]
            )
        };
        let (h, a) = (&r["route_handoff"], &r["route_delivery_to_ack"]);
        table.push_str(&format!(
            "| {} | {} B | {} | {} | {} | {} | {} |\n",
            r["route"].as_str().unwrap_or(""),
            r["payload_bytes"],
            h["count"],
            h["mean_us"],
            three(h),
            a["mean_us"],
            three(a),
        ));
    }
    let tpath = args.out.join("table.md");
    std::fs::write(&tpath, table)?;
    println!("wrote {}", tpath.display());
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{stamp, trace_file, two_hops, write_trace, Args, WarmUp};
    use clap::Parser;
    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    #[test]
    fn the_filesystem_of_a_path_is_that_of_its_longest_mount_point() {
        assert_eq!(
            super::filesystem_of(std::path::Path::new("/proc/self")),
            "proc"
        );
        assert_ne!(super::filesystem_of(std::path::Path::new("/")), "proc");
    }

    #[test]
    fn a_warm_up_ends_after_its_backlog_arrived_and_a_hundred_more() {
        // The first message takes 900 ticks: 900 are on their way when it arrives.
        let mut w = WarmUp {
            sent: 900,
            needed: None,
        };
        assert!(!w.done(0));
        assert!(!w.done(1));
        // The backlog arrives; the series may not start until 100 more did.
        w.sent = 950;
        assert!(!w.done(900));
        w.sent = 1000;
        assert!(!w.done(999));
        assert!(w.done(1000));
    }

    #[test]
    fn a_quick_warm_up_still_sends_a_hundred() {
        let mut w = WarmUp {
            sent: 1,
            needed: None,
        };
        assert!(!w.done(1));
        w.sent = 101;
        assert!(!w.done(100));
        assert!(w.done(101));
        assert!(WarmUp::default()
            .failure(0, Duration::from_secs(30))
            .contains("no warm-up message arrived"));
    }

    #[test]
    fn a_send_that_held_the_publisher_past_the_due_time_counts_and_the_timer_does_not() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let due = t0 + ms(10);
        // The timer woke 0.8 ms late after a send that ended before the due time.
        let quick = VecDeque::from([(t0 + ms(9), t0 + ms(9) + Duration::from_micros(100))]);
        let late = due + Duration::from_micros(800);
        assert_eq!(stamp(&quick, due, late), late);
        // A send from 5 ms before the due time until 30 ms after it held this message.
        let stalled = VecDeque::from([(t0 + ms(5), due + ms(30))]);
        assert_eq!(stamp(&stalled, due, due + ms(30)), due);
        // Two sends after the due time: both count.
        let two = VecDeque::from([(due + ms(1), due + ms(4)), (due + ms(4), due + ms(6))]);
        assert_eq!(stamp(&two, due, due + ms(7)), due + ms(2));
    }

    #[test]
    fn a_trace_is_named_by_route_size_round_and_series_and_lists_every_message() {
        let dir = std::env::temp_dir().join(format!("pb-trace-test-{}", std::process::id()));
        let args = Args::parse_from(["polybridge-bench", "--trace-dir", dir.to_str().unwrap()]);
        let path = trace_file(&args, "NATS(JetStream)→Kafka", 4096, 2, "sink-hop").unwrap();
        assert_eq!(path, dir.join("nats-jetstream-kafka-4096B-r2-sink-hop.csv"));
        assert!(trace_file(
            &Args::parse_from(["polybridge-bench"]),
            "x",
            1,
            1,
            "bridged"
        )
        .is_none());

        std::fs::create_dir_all(&dir).unwrap();
        let us = Duration::from_micros;
        write_trace(&path, &[(us(1000), us(1250)), (us(2000), us(2100))]).unwrap();
        let csv = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            csv,
            "sent_us,arrival_us,latency_us\n1000.0,1250.0,250.0\n2000.0,2100.0,100.0\n"
        );
    }

    fn histogram(samples: &[(u64, u64)]) -> hdrhistogram::Histogram<u64> {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for (value, count) in samples {
            h.record_n(*value, *count).unwrap();
        }
        h
    }

    #[test]
    fn two_hops_with_a_one_percent_tail_each_have_a_two_percent_tail() {
        // Each hop: 1 ms, and 10 ms for 1 message in 100. Their p99 is 1 ms, but one
        // message in 50 meets a tail in one of the two hops: the p99 of the sum is 11 ms.
        let hop = histogram(&[(1_000_000, 99), (10_000_000, 1)]);
        assert_eq!(
            hop.value_at_quantile(0.99),
            hop.highest_equivalent(1_000_000)
        );
        let sum = two_hops(&hop, &hop).unwrap();
        assert_eq!(sum.len(), 100 * 100);
        let near = |ns: u64, expected: u64| {
            let error = (ns as f64 - expected as f64).abs() / expected as f64;
            assert!(error < 0.005, "{ns} ns is not {expected} ns");
        };
        near(sum.value_at_quantile(0.5), 2_000_000);
        near(sum.value_at_quantile(0.99), 11_000_000);
        near(sum.max(), 20_000_000);
    }
}
