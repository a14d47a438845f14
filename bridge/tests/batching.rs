//! Batched publishing: a route whose sinks pipeline batches (`batched_publish`) publishes
//! the deliveries already waiting at its source in one `publish_batch` per sink, and a
//! message refused inside a batch is retried or dead-lettered on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use polybridge::{Broker, Deadline, Message, Subscription};
use polybridge_bridge::config::load;
use polybridge_bridge::Bridge;

mod faulty_sink;
use faulty_sink::{memory, FaultySink};

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(5))
}

/// Waits until `cond` holds, failing after 10 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn config(yaml: &str) -> polybridge_bridge::config::Config {
    match load(yaml, "test.yaml", &|_| None) {
        Ok(c) => c,
        Err(e) => panic!("config does not load:\n{e}"),
    }
}

fn yaml(prefix: &str, route_options: &str) -> String {
    format!(
        r#"
brokers:
  src: {{ url: "memory://{prefix}-src" }}
  out: {{ url: "memory://{prefix}-out" }}
  dlq: {{ url: "memory://{prefix}-dlq" }}
routes:
  - name: r
    from: {{ broker: src, topic: "in", group: bridge }}
    to: [ {{ broker: out, destination: "copy" }} ]
    on_error: {{ max_attempts: 5, initial_backoff: 5ms, max_backoff: 10ms, dead_letter: {{ broker: dlq, destination: "dead" }} }}
{route_options}"#
    )
}

/// Starts the bridge with `sink` as `out`, publishes `n` messages (payloads "0".."n-1")
/// to the source while the route runs, and returns what reached the sink's topic and the
/// dead-letter topic once the route settled all `n`, how many hand-offs to the sink the
/// route's histogram counted, and the route's `batches` counter.
async fn run(
    prefix: &str,
    route_options: &str,
    sink: Arc<FaultySink>,
    n: usize,
) -> (Vec<String>, Vec<String>, u64, u64) {
    let dlq = memory(&format!("{prefix}-dlq"));
    let brokers: BTreeMap<String, Arc<dyn Broker>> = [
        ("src".to_string(), memory(&format!("{prefix}-src"))),
        ("out".to_string(), sink.clone() as Arc<dyn Broker>),
        ("dlq".to_string(), dlq.clone()),
    ]
    .into();
    let mut out = sink
        .inner
        .subscribe(Subscription::new("copy".parse().unwrap()))
        .await
        .unwrap();
    let mut dead = dlq
        .subscribe(Subscription::new("dead".parse().unwrap()))
        .await
        .unwrap();
    let bridge = Bridge::start(
        config(&yaml(prefix, route_options)),
        &brokers,
        Duration::from_secs(5),
    )
    .unwrap();
    let m = bridge.routes()[0].metrics.clone();
    eventually("the route to subscribe", || {
        m.subscribed.load(Ordering::Relaxed)
    })
    .await;
    // Published without yielding: the route finds a backlog when it next runs.
    for i in 0..n {
        brokers["src"]
            .publish("in", &Message::new(i.to_string()), deadline())
            .await
            .unwrap();
    }
    eventually("every source delivery settled", || {
        m.acked.load(Ordering::Relaxed) + m.dead_lettered.load(Ordering::Relaxed) >= n as u64
    })
    .await;
    let mut arrived = Vec::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(200), out.next()).await {
        arrived.push(String::from_utf8(d.message.payload.to_vec()).unwrap());
        d.ack().unwrap();
    }
    let mut dead_lettered = Vec::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(200), dead.next()).await
    {
        dead_lettered.push(d.message.id.clone());
        d.ack().unwrap();
    }
    bridge.stop().await;
    (
        arrived,
        dead_lettered,
        m.handoff.snapshot().count(),
        m.batches.load(Ordering::Relaxed),
    )
}

fn all_once(arrived: &[String], n: usize, except: &[&str]) {
    let unique: HashSet<&str> = arrived.iter().map(String::as_str).collect();
    assert_eq!(unique.len(), arrived.len(), "duplicates in {arrived:?}");
    let expected: HashSet<String> = (0..n)
        .map(|i| i.to_string())
        .filter(|p| !except.contains(&p.as_str()))
        .collect();
    let arrived: HashSet<String> = arrived.iter().cloned().collect();
    assert_eq!(arrived, expected);
}

#[tokio::test]
async fn a_backlog_goes_to_a_pipelining_sink_in_batches_and_arrives_whole() {
    let sink = FaultySink::new("bt1-out", true);
    let (arrived, dead, handoffs, batches) =
        run("bt1", "    max_batch: 32\n", sink.clone(), 500).await;
    all_once(&arrived, 500, &[]);
    assert!(dead.is_empty());
    assert_eq!(
        handoffs, 500,
        "one hand-off per message, in a batch or alone"
    );
    let sizes = sink.batch_sizes();
    assert_eq!(
        sizes.iter().sum::<usize>() + sink.publishes.load(Ordering::SeqCst),
        500,
        "every message published once"
    );
    assert!(
        sizes.iter().any(|&s| s > 1),
        "a backlog of 500 was published one by one: {sizes:?}"
    );
    assert!(
        sizes.iter().all(|&s| (2..=32).contains(&s)),
        "batch sizes outside 2..=max_batch: {sizes:?}"
    );
    assert_eq!(
        batches as usize,
        sizes.len() + sink.publishes.load(Ordering::SeqCst),
        "the route's batches counter: one per batch and one per message taken alone"
    );
}

#[tokio::test]
async fn a_message_refused_in_a_batch_is_dead_lettered_and_a_failed_one_retried_alone() {
    let sink = FaultySink::refusing("bt2-out", "13", "42", 2);
    let (arrived, dead, handoffs, _) = run("bt2", "", sink.clone(), 200).await;
    assert_eq!(handoffs, 200, "a retry is not a second hand-off");
    // "42" failed twice inside its batch, then went through on a retry of its own.
    all_once(&arrived, 200, &["13"]);
    assert_eq!(dead.len(), 1, "only the refused message is dead-lettered");
    assert!(sink.batch_sizes().iter().any(|&s| s > 1));
    assert!(
        sink.publishes.load(Ordering::SeqCst) >= 2,
        "the failed message is retried with single publishes"
    );
}

#[tokio::test]
async fn max_batch_1_or_a_sink_without_pipelining_publishes_one_at_a_time() {
    let off = FaultySink::new("bt3-out", true);
    let (arrived, _, _, batches) = run("bt3", "    max_batch: 1\n", off.clone(), 300).await;
    all_once(&arrived, 300, &[]);
    assert!(off.batch_sizes().is_empty());
    assert_eq!(off.publishes.load(Ordering::SeqCst), 300);
    assert_eq!(batches, 300, "each message a batch of its own");

    let plain = FaultySink::new("bt4-out", false);
    let (arrived, _, _, _) = run("bt4", "", plain.clone(), 300).await;
    all_once(&arrived, 300, &[]);
    assert!(plain.batch_sizes().is_empty());
    assert_eq!(plain.publishes.load(Ordering::SeqCst), 300);
}
