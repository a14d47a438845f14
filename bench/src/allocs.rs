//! `polybridge-allocs`: heap allocations per message in the bridge's own hot path.
//!
//! A counting global allocator (`stats_alloc`, in this binary only, so the throughput runs of
//! `polybridge-bench` are not slowed) counts allocations (`alloc` + `realloc`) and bytes
//! while:
//! - **bridged**: a memory→memory route of the bridge (an in-process [`Bridge`], defaults:
//!   at least once, `max_in_flight` 256) takes `n` messages from a pre-filled source topic,
//!   publishes each to the sink topic and acknowledges it at the source; counted from
//!   `Bridge::start` until the route acknowledged all `n` (the pre-fill is not counted);
//! - **raw**: what the client crate (the memory broker) needs for the same work: `n`
//!   publishes of already-built messages to a topic, plus receiving and acknowledging `n`
//!   deliveries of a pre-filled topic (subscription opened before counting).
//!
//! Each is run with `n` and `2n` messages; the per-message figure is the difference divided
//! by `n`, which removes the fixed costs (starting the route, subscribing). The bridge's own
//! allocations per message = bridged − raw.
//!
//! `--smoke` uses tiny counts; the program exits non-zero only if a run failed.
//!
//! `--only bridged` / `--only raw` runs the warm-up and then that one run of `--messages`,
//! for an instruction profile: `valgrind --tool=callgrind` of two such processes, with `n`
//! and `2n` messages, gives the instructions per message of the bridged route and of the
//! raw client work by difference (docs/benchmarks/README.md, "memory→memory").
//!
//! `--mapping` counts instead what each broker source adapter allocates to rebuild one
//! received record as a [`Message`] (its mapping function, called `--messages` times on a
//! record as the benchmark's raw publisher wrote it until 2026-12-07: NATS with its
//! `Nats-Msg-Id`, the others with no id, so the adapter makes one; the record built
//! outside the count):
//! Kafka `from_record`, Redis streams `from_fields`, NATS `from_nats`, AMQP `message`.

use std::alloc::System;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use polybridge::{Deadline, Message, StartPosition, Subscription};
use polybridge_bridge::Bridge;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

/// The system allocator with counters (`stats_alloc`).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations (`alloc` + `realloc`) and bytes allocated while `f` ran.
async fn counted<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<(u64, u64)> {
    let region = Region::new(GLOBAL);
    let r = f.await;
    let stats = region.change();
    r?;
    Ok((
        (stats.allocations + stats.reallocations) as u64,
        stats.bytes_allocated as u64,
    ))
}

/// Heap allocations per message in the bridge's own hot path (memory→memory).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Messages of the smaller run (the larger one has twice as many).
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Tiny counts (CI).
    #[arg(long)]
    smoke: bool,
    /// Only this run, once, after the warm-up (for an instruction profile of the process).
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Count the source adapters' record → `Message` mappings instead of the route.
    #[arg(long)]
    mapping: bool,
}

/// The one run of `--only`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Only {
    /// The memory→memory route of the bridge.
    Bridged,
    /// The memory broker's publishes, receives and acknowledgements alone.
    Raw,
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.messages = args.messages.min(200);
    }
    // One thread: nothing else runs while counting, and the counts are repeatable.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let n = args.messages;
    let payload = Bytes::from(vec![b'x'; args.size]);
    if args.mapping {
        let report = mappings(n, &payload);
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    // Warm-up (lazy statics, first-use allocations of the runtime and the broker).
    bridged(n.min(1000), &payload).await?;
    raw(n.min(1000), &payload).await?;
    if let Some(only) = args.only {
        let (allocs, bytes) = match only {
            Only::Bridged => bridged(n, &payload).await?,
            Only::Raw => raw(n, &payload).await?,
        };
        let report = serde_json::json!({
            "run": format!("{only:?}").to_lowercase(),
            "messages": n,
            "payload_bytes": args.size,
            "allocs": allocs,
            "bytes": bytes,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let (b1, bb1) = bridged(n, &payload).await?;
    let (b2, bb2) = bridged(2 * n, &payload).await?;
    let (r1, rb1) = raw(n, &payload).await?;
    let (r2, rb2) = raw(2 * n, &payload).await?;
    let per = |a: u64, b: u64| (b as f64 - a as f64) / n as f64;
    let bridged_allocs = per(b1, b2);
    let bridged_bytes = per(bb1, bb2);
    let raw_allocs = per(r1, r2);
    let raw_bytes = per(rb1, rb2);
    let report = serde_json::json!({
        "route": "memory→memory",
        "payload_bytes": args.size,
        "messages": [n, 2 * n],
        "bridged_total": { "allocs": [b1, b2], "bytes": [bb1, bb2] },
        "raw_total": { "allocs": [r1, r2], "bytes": [rb1, rb2] },
        "bridged_allocs_per_msg": round2(bridged_allocs),
        "bridged_bytes_per_msg": round2(bridged_bytes),
        "raw_allocs_per_msg": round2(raw_allocs),
        "raw_bytes_per_msg": round2(raw_bytes),
        "bridge_own_allocs_per_msg": round2(bridged_allocs - raw_allocs),
        "bridge_own_bytes_per_msg": round2(bridged_bytes - raw_bytes),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Allocations and bytes per call of `f`, called `n` times (after one uncounted call) on
/// inputs made by `make` outside the count, at most [`CHUNK`] of them at a time.
fn per_call<I>(n: u64, mut make: impl FnMut() -> I, mut f: impl FnMut(I)) -> serde_json::Value {
    /// Inputs made ahead of one counted stretch of calls.
    const CHUNK: u64 = 1024;
    f(make());
    let (mut allocs, mut bytes, mut done) = (0u64, 0u64, 0u64);
    while done < n {
        let inputs: Vec<I> = (0..CHUNK.min(n - done)).map(|_| make()).collect();
        done += inputs.len() as u64;
        let region = Region::new(GLOBAL);
        for input in inputs {
            f(input);
        }
        let stats = region.change();
        allocs += (stats.allocations + stats.reallocations) as u64;
        bytes += stats.bytes_allocated as u64;
    }
    serde_json::json!({
        "allocs_per_msg": round2(allocs as f64 / n as f64),
        "bytes_per_msg": round2(bytes as f64 / n as f64),
    })
}

/// What each source adapter's mapping allocates per received record (`--mapping`).
fn mappings(n: u64, payload: &Bytes) -> serde_json::Value {
    use polybridge::{amqp, kafka, nats, redis};
    // Kafka: a record without headers (the raw `FutureProducer` wrote such records until
    // 2026-12-07; it now adds the adapter's `pb-id`).
    let record = rdkafka::message::OwnedMessage::new(
        Some(payload.to_vec()),
        None,
        "bench".to_string(),
        rdkafka::Timestamp::CreateTime(1_764_806_400_000),
        0,
        42,
        None,
    );
    let kafka = per_call(
        n,
        || (),
        |()| {
            std::hint::black_box(kafka::mapping::from_record(&record));
        },
    );
    // Redis streams: an entry with one `payload` field (the raw `XADD` wrote such entries
    // until 2026-12-07; it now adds the adapter's `id` and `timestamp`); the reply's fields
    // are the client's (built before the count).
    let redis = per_call(
        n,
        || vec![(b"payload".to_vec(), payload.to_vec())],
        |fields| {
            std::hint::black_box(redis::mapping::from_fields("1764806400000-0", fields));
        },
    );
    // NATS JetStream: a message with a `Nats-Msg-Id` header, as the raw publisher sends it.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "raw-1");
    let nats = per_call(
        n,
        || (),
        |()| {
            std::hint::black_box(nats::mapping::from_nats(
                payload.clone(),
                Some(&headers),
                None,
                || "BENCH:1".to_string(),
            ));
        },
    );
    // AMQP: a delivery without properties (the raw `basic_publish` sent such messages until
    // 2026-12-07; it now adds the adapter's message id and timestamp).
    let properties = lapin::BasicProperties::default();
    let amqp = per_call(
        n,
        || (),
        |()| {
            std::hint::black_box(amqp::mapping::message(&properties, payload.clone()));
        },
    );
    serde_json::json!({
        "messages": n,
        "payload_bytes": payload.len(),
        "kafka_from_record": kafka,
        "redis_from_fields": redis,
        "nats_from_nats": nats,
        "amqp_message": amqp,
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{tag}{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Counts one bridged memory→memory run of `n` pre-filled messages.
async fn bridged(n: u64, payload: &Bytes) -> Result<(u64, u64)> {
    let src = unique("as");
    let dst = unique("ad");
    let yaml = format!(
        "brokers:\n  src: {{ url: \"memory://allocs\" }}\n  dst: {{ url: \"memory://allocs\" }}\nroutes:\n  - name: allocs\n    from: {{ broker: src, topic: \"{src}\", group: \"g{src}\", start: earliest }}\n    to:\n      - {{ broker: dst, destination: \"{dst}\" }}\nadmin: {{ enabled: false }}\n"
    );
    let config = polybridge_bridge::config::load(&yaml, "allocs.yaml", &|_| None)
        .map_err(|e| anyhow!("rule file:\n{e}"))?;
    let brokers = polybridge_bridge::connect_brokers(&config).await?;
    let source = brokers
        .get("src")
        .cloned()
        .ok_or_else(|| anyhow!("no source broker"))?;
    for _ in 0..n {
        source
            .publish(&src, &Message::new(payload.clone()), deadline())
            .await?;
    }
    let mut bridge = None;
    let counts = counted(async {
        let b = Bridge::start(config, &brokers, Duration::from_secs(5))?;
        let route = b
            .routes()
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("no route"))?;
        bridge = Some(b);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while route.metrics.acked.load(Ordering::Relaxed) < n {
            if std::time::Instant::now() > deadline {
                bail!(
                    "the bridge acknowledged {} of {n} messages within 120 s",
                    route.metrics.acked.load(Ordering::Relaxed)
                );
            }
            // A timer, not `yield_now`: a spinning check would add work in proportion to
            // the run's length to every count and profile of it.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    })
    .await;
    if let Some(b) = bridge {
        b.stop().await;
    }
    for b in brokers.values() {
        let _ = b.close(deadline()).await;
    }
    counts.context("bridged run")
}

/// Counts the client crate's share of the same work: `n` publishes and `n` receives with
/// acknowledgements.
async fn raw(n: u64, payload: &Bytes) -> Result<(u64, u64)> {
    let broker = polybridge::connect("memory://allocs").await?;
    let pub_topic = unique("rp");
    let sub_topic = unique("rs");
    for _ in 0..n {
        broker
            .publish(&sub_topic, &Message::new(payload.clone()), deadline())
            .await?;
    }
    let mut sub = Subscription::new(sub_topic.parse()?);
    sub.group = Some(format!("g{sub_topic}"));
    sub.start = StartPosition::Earliest;
    let mut stream = broker.subscribe(sub).await?;
    let messages: Vec<Message> = (0..n).map(|_| Message::new(payload.clone())).collect();
    let counts = counted(async {
        for m in messages {
            broker.publish(&pub_topic, &m, deadline()).await?;
        }
        for _ in 0..n {
            let d = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .context("no delivery for 30 s")?
                .ok_or_else(|| anyhow!("the subscription ended"))??;
            d.ack()?;
        }
        Ok(())
    })
    .await;
    stream.close().await;
    let _ = broker.close(deadline()).await;
    counts.context("raw run")
}

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(30))
}
