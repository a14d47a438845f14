//! Fault tests (issue 12): the real `polybridge` binary routes uniquely numbered messages
//! between real private brokers while a broker is restarted or frozen, or the bridge is
//! SIGKILLed; afterwards every message sent must have arrived at least once.
//!
//! Each scenario prints one line
//! `scenario=<name> sent=N received_unique=N lost=0 duplicates=D` and asserts: nothing lost,
//! duplicates bounded by the in-flight window per fault (plus what the source broker itself
//! delivered again and the bridge reported: see `replayed_by_broker`), per-key order (first
//! arrivals of each key in publish order) where the route asks for `ordering: per_key`.
//!
//! Modes (`POLYBRIDGE_CHAOS`): unset or `short` (a few thousand messages per scenario, frozen
//! sink for a few seconds), `long` (100 000 messages, frozen sink for 60 s), `huge`
//! (1 000 000 messages). Scenarios run one at a time (they share two cores with the brokers).
//!
//! Tansu (the Kafka-protocol broker of the harness) keeps data in memory only, so a restart
//! would empty it: Kafka broker faults are SIGSTOP/SIGCONT (pause/resume) instead.
//!
//! Scale-out: two or three bridge processes run the same route and share the source through
//! its consumer group; each instance stamps an `x-instance` header, so the checker sees the
//! split. One instance is SIGKILLed mid-run; the survivors must deliver everything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use polybridge::{Broker, Deadline, Message, StartPosition, Subscription};
use polybridge_testkit::{private, shared, skip_reason, BrokerKind, BrokerProcess, Endpoint};

/// Scenarios run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Short,
    Long,
    Huge,
}

fn mode() -> Mode {
    match std::env::var("POLYBRIDGE_CHAOS").as_deref() {
        Ok("long") => Mode::Long,
        Ok("huge") => Mode::Huge,
        _ => Mode::Short,
    }
}

/// Messages per scenario: `short` is given per scenario (brokers differ a lot in speed on a
/// small machine).
fn messages(short: usize) -> usize {
    match mode() {
        Mode::Short => short,
        Mode::Long => 100_000,
        Mode::Huge => 1_000_000,
    }
}

fn pause_for() -> Duration {
    match mode() {
        Mode::Short => Duration::from_secs(4),
        _ => Duration::from_secs(60),
    }
}

/// How long the checker waits for the last messages after the publisher finished.
fn settle_timeout(n: usize) -> Duration {
    Duration::from_secs(120 + (n / 500) as u64)
}

/// Bridge in-flight window of every chaos route.
const WINDOW: usize = 64;
/// Keys (and publisher lanes): message i has key `k{i % KEYS}`.
const KEYS: usize = 16;

/// A broker for one side of a route.
enum Holder {
    Shared(Arc<polybridge_testkit::SharedBroker>),
    Private(Box<BrokerProcess>),
}

impl Holder {
    fn get(kind: BrokerKind, private_one: bool) -> Option<Holder> {
        if let Some(why) = skip_reason(kind) {
            eprintln!("{why}");
            return None;
        }
        Some(if private_one {
            match private(kind) {
                Ok(p) => Holder::Private(Box::new(p)),
                // External brokers (POLYBRIDGE_<X>_URL) cannot be restarted by a test.
                Err(e @ polybridge_testkit::HarnessError::External { .. }) => {
                    eprintln!("chaos scenario skipped: {e}");
                    return None;
                }
                Err(e) => panic!("{e}"),
            }
        } else {
            Holder::Shared(shared(kind).unwrap())
        })
    }

    fn url(&self, e: Endpoint) -> String {
        match self {
            Holder::Shared(s) => s.url(e).unwrap(),
            Holder::Private(p) => p.url(e).unwrap(),
        }
    }

    /// The last `lines` of a private broker's log (it spans the restart), for a failure
    /// message: what the broker said about its recovered state.
    fn log_tail(&self, lines: usize) -> String {
        match self {
            Holder::Private(p) => std::fs::read_to_string(p.dir().join("broker.log"))
                .map(|log| tail(&log, lines))
                .unwrap_or_else(|e| format!("(no broker log: {e})")),
            Holder::Shared(_) => "(a shared broker: not restarted)".to_owned(),
        }
    }

    fn process(&mut self) -> &mut BrokerProcess {
        match self {
            Holder::Private(p) => p,
            Holder::Shared(_) => panic!("fault injection needs a private broker"),
        }
    }
}

/// The adapters, as the chaos routes use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Adapter {
    Amqp,
    Kafka,
    Nats,
    Redis,
    Mqtt,
    Stomp,
}

impl Adapter {
    fn kind(self) -> BrokerKind {
        match self {
            Adapter::Amqp => BrokerKind::RabbitMq,
            Adapter::Kafka => BrokerKind::Kafka,
            Adapter::Nats => BrokerKind::Nats,
            Adapter::Redis => BrokerKind::Redis,
            Adapter::Mqtt => BrokerKind::Mosquitto,
            Adapter::Stomp => BrokerKind::ActiveMq,
        }
    }

    fn endpoint(self) -> Endpoint {
        match self {
            Adapter::Amqp => Endpoint::Amqp,
            Adapter::Kafka => Endpoint::Kafka,
            Adapter::Nats => Endpoint::Nats,
            Adapter::Redis => Endpoint::Redis,
            Adapter::Mqtt => Endpoint::Mqtt,
            Adapter::Stomp => Endpoint::Stomp,
        }
    }

    /// The at-least-once URL of this adapter for a client named `client` using `topics`.
    fn url(self, base: &str, client: &str, topics: &[&str]) -> String {
        let opts = match self {
            // Claim a dead consumer's pending entries quickly (after a SIGKILL).
            Adapter::Redis => "claim_idle=2s".to_owned(),
            // JetStream, one file-stored stream for the scenario's subjects; unacknowledged
            // messages of a dead bridge come back after ack_wait.
            Adapter::Nats => format!(
                "mode=jetstream&stream=S{}&create_stream=true&stream_subjects={}&ack_wait=5s",
                topics[0],
                topics.join(",")
            ),
            // QoS 1 and a persistent session (a client id) resumed after a restart.
            Adapter::Mqtt => format!("version=5&qos=1&client_id={client}"),
            Adapter::Kafka => "start=earliest&session_timeout=6s".to_owned(),
            Adapter::Amqp | Adapter::Stomp => String::new(),
        };
        polybridge_testkit::url_with(base, &opts)
    }
}

/// What the checker saw.
#[derive(Default)]
struct Seen {
    /// Arrivals per message number.
    counts: HashMap<u64, u32>,
    /// When each message arrived, first or repeated, in arrival order.
    arrivals: Vec<Instant>,
    /// Last first-arrival per key, for the order check.
    last_first: HashMap<u64, u64>,
    /// First arrivals out of publish order within a key.
    order_violations: u64,
    /// Arrivals per `x-instance` header.
    by_instance: BTreeMap<String, u64>,
    /// Arrivals per `x-instance` header of messages numbered `late_from` or more.
    late_by_instance: BTreeMap<String, u64>,
    /// See `late_by_instance` (0: not tracked).
    late_from: u64,
    /// Payloads that were not ours.
    foreign: u64,
}

impl Seen {
    fn record(&mut self, prefix: &str, payload: &[u8], instance: Option<&str>) {
        let text = String::from_utf8_lossy(payload);
        let Some(i) = text
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.parse::<u64>().ok())
        else {
            self.foreign += 1;
            return;
        };
        if let Some(inst) = instance {
            *self.by_instance.entry(inst.to_owned()).or_default() += 1;
            if self.late_from > 0 && i >= self.late_from {
                *self.late_by_instance.entry(inst.to_owned()).or_default() += 1;
            }
        }
        self.arrivals.push(Instant::now());
        let c = self.counts.entry(i).or_default();
        *c += 1;
        if *c == 1 {
            let key = i % KEYS as u64;
            if let Some(last) = self.last_first.insert(key, i) {
                if last > i {
                    self.order_violations += 1;
                }
            }
        }
    }

    fn unique(&self) -> usize {
        self.counts.len()
    }

    /// The arrivals, first or repeated, within `window` before `at`.
    fn arrivals_before(&self, at: Instant, window: Duration) -> u64 {
        self.arrivals
            .iter()
            .filter(|t| **t <= at && at.duration_since(**t) <= window)
            .count() as u64
    }

    /// The most arrivals, first or repeated, within any `window`: a bound on what a source
    /// acknowledged in that time (a redelivered message is acknowledged again).
    fn most_within(&self, window: Duration) -> u64 {
        let t = &self.arrivals;
        let (mut most, mut start) = (0, 0);
        for end in 0..t.len() {
            while t[end].duration_since(t[start]) > window {
                start += 1;
            }
            most = most.max(end + 1 - start);
        }
        most as u64
    }

    fn duplicates(&self) -> u64 {
        self.counts.values().map(|c| u64::from(*c - 1)).sum()
    }
}

/// Reads `topic` at the sink (own group, from the start, acking) until stopped, recording
/// every arrival; resubscribes when the stream ends (a sink restart).
fn start_checker(
    rt: &tokio::runtime::Runtime,
    broker: Arc<dyn Broker>,
    topic: String,
    group: Option<String>,
    prefix: String,
) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    // Subscribe before returning, so nothing the bridge publishes is missed.
    let sub = move || {
        let mut s = Subscription::new(topic.parse().unwrap())
            .start(StartPosition::Earliest)
            .max_in_flight(256);
        if let Some(g) = &group {
            s = s.group(g.clone());
        }
        s
    };
    let first = rt.block_on(broker.subscribe(sub())).unwrap();
    let task = rt.spawn(async move {
        let mut stream = Some(first);
        loop {
            let mut s = match stream.take() {
                Some(s) => s,
                None => match broker.subscribe(sub()).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("checker: subscribe failed ({e}); retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            while let Some(next) = s.next().await {
                match next {
                    Ok(d) => {
                        out.lock().unwrap().record(
                            &prefix,
                            &d.message.payload,
                            d.message.headers.get_str("x-instance"),
                        );
                        let _ = d.ack();
                    }
                    Err(e) => {
                        eprintln!("checker: stream error ({e})");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (seen, task)
}

/// Publishes `prefix-0..n` to `topic` in KEYS lanes (lane j: the numbers ≡ j mod KEYS, in
/// order, key `k{j}`), retrying each publish until confirmed. Returns the number of retries.
async fn publish_all(broker: Arc<dyn Broker>, topic: String, prefix: String, n: usize) -> u64 {
    publish_range(broker, topic, prefix, 0, n).await
}

/// [`publish_all`] for the numbers `from..n` (`from` a multiple of KEYS).
async fn publish_range(
    broker: Arc<dyn Broker>,
    topic: String,
    prefix: String,
    from: usize,
    n: usize,
) -> u64 {
    let mut lanes = Vec::new();
    for lane in 0..KEYS {
        let (broker, topic, prefix) = (broker.clone(), topic.clone(), prefix.clone());
        lanes.push(tokio::spawn(async move {
            let mut retries = 0u64;
            let mut i = from + lane;
            while i < n {
                let body = format!("{prefix}-{i}");
                let m = Message::new(body.clone())
                    .with_id(body)
                    .with_key(format!("k{}", i % KEYS));
                loop {
                    match broker
                        .publish(&topic, &m, Deadline::after(Duration::from_secs(10)))
                        .await
                    {
                        Ok(_) => break,
                        Err(e) => {
                            retries += 1;
                            if retries % 50 == 1 {
                                eprintln!("publisher: {e}; retrying");
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                i += KEYS;
            }
            retries
        }));
    }
    let mut retries = 0;
    for l in lanes {
        retries += l.await.unwrap();
    }
    retries
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Restart the source broker (graceful stop, start on the same ports and data).
    RestartSource,
    /// Restart the source broker twice, the second time with the consumer state it had
    /// written at the first: a broker that went back to an older consumer state and
    /// delivers again what it delivered before, as nats-server 2.9.10 now and then does
    /// after a restart. NATS only (its consumers' `o.dat` files).
    RestartSourceFromOlderState,
    /// Restart the sink broker.
    RestartSink,
    /// SIGSTOP the source broker for a while, then SIGCONT.
    PauseSource,
    /// SIGSTOP the sink broker for a while, then SIGCONT.
    PauseSink,
    /// SIGKILL the bridge 5 times at random points, starting it again each time.
    KillBridge,
}

impl Fault {
    fn events(self) -> u64 {
        match self {
            Fault::KillBridge => 5,
            Fault::RestartSourceFromOlderState => 2,
            _ => 1,
        }
    }
}

/// A small pseudo-random number below `bound` (where a fault lands).
fn random_below(bound: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos.wrapping_mul(2_654_435_761)) % bound.max(1)
}

struct Scenario {
    name: &'static str,
    from: Adapter,
    to: Adapter,
    fault: Fault,
    per_key: bool,
    short_n: usize,
}

fn rules_for(
    src_url: &str,
    dst_url: &str,
    from: &str,
    to: &str,
    per_key: bool,
    admin: u16,
    instance: Option<&str>,
) -> String {
    let ordering = if per_key { "per_key" } else { "none" };
    let headers = instance
        .map(|i| format!(", headers: {{ set: {{ x-instance: \"{i}\" }} }}"))
        .unwrap_or_default();
    format!(
        "brokers:\n  src: {{ url: \"{src_url}\" }}\n  dst: {{ url: \"{dst_url}\" }}\nroutes:\n  - name: chaos\n    from: {{ broker: src, topic: \"{from}\", group: bridge, start: earliest }}\n    ordering: {ordering}\n    max_in_flight: {WINDOW}\n    to: [ {{ broker: dst, destination: \"{to}\"{headers} }} ]\n    on_error: {{ max_attempts: 1000000, initial_backoff: 50ms, max_backoff: 1s }}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n"
    )
}

fn wait_ready(d: &mut Daemon, port: u16, timeout: Duration) {
    wait_for("/ready", timeout, || {
        if let Ok(Some(s)) = d.child.try_wait() {
            panic!("polybridge exited ({s}):\n{}", d.log());
        }
        http_get(port, "/ready").is_some_and(|(s, _)| s == 200)
    });
}

fn wait_unique(seen: &Arc<Mutex<Seen>>, want: usize, timeout: Duration, what: &str) {
    wait_for(what, timeout, || seen.lock().unwrap().unique() >= want);
}

fn sigkill(d: &mut Daemon) {
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(30));
}

fn run_scenario(s: Scenario) {
    let _serial = serial();
    let sink_faulted = matches!(s.fault, Fault::RestartSink | Fault::PauseSink);
    let source_faulted = matches!(
        s.fault,
        Fault::RestartSource | Fault::RestartSourceFromOlderState | Fault::PauseSource
    );
    let Some(mut src) = Holder::get(s.from.kind(), source_faulted) else {
        return;
    };
    // A route between two brokers of one kind still uses two brokers when one is faulted.
    let Some(mut dst) = Holder::get(s.to.kind(), sink_faulted) else {
        return;
    };
    let rt = runtime();
    let tag = format!("c{}{}", std::process::id(), s.name.replace('_', ""));
    let (from, to) = (format!("{tag}in"), format!("{tag}out"));
    let topics = [from.as_str(), to.as_str()];
    let src_base = src.url(s.from.endpoint());
    let dst_base = dst.url(s.to.endpoint());
    let bridge_src = s.from.url(&src_base, &format!("{tag}b"), &topics);
    let bridge_dst = s.to.url(&dst_base, &format!("{tag}bp"), &topics);
    let n = messages(s.short_n);
    let prefix = tag.clone();

    // The checker subscribes at the sink before anything flows.
    let check_broker = rt
        .block_on(polybridge::connect(&s.to.url(
            &dst_base,
            &format!("{tag}v"),
            &topics,
        )))
        .unwrap();
    let group = (s.to != Adapter::Mqtt).then(|| "verify".to_owned());
    let (seen, checker) = start_checker(&rt, check_broker, to.clone(), group, prefix.clone());

    let dir = temp_dir(&tag);
    let file = dir.join("rules.yaml");
    let admin = free_port();
    std::fs::write(
        &file,
        rules_for(&bridge_src, &bridge_dst, &from, &to, s.per_key, admin, None),
    )
    .unwrap();
    let started = Instant::now();
    let mut d = Daemon::start(&file, &["--drain-timeout", "5s"]);
    wait_ready(&mut d, admin, Duration::from_secs(60));

    let pub_broker = rt
        .block_on(polybridge::connect(&s.from.url(
            &src_base,
            &format!("{tag}p"),
            &topics,
        )))
        .unwrap();
    let publisher = rt.spawn(publish_all(pub_broker, from.clone(), prefix.clone(), n));
    let fault_timeout = Duration::from_secs(120 + (n / 200) as u64);
    let mut kills = Vec::new();

    match s.fault {
        Fault::RestartSource | Fault::RestartSink | Fault::PauseSource | Fault::PauseSink => {
            wait_unique(
                &seen,
                n / 3,
                fault_timeout,
                "a third routed before the fault",
            );
            let b = if source_faulted { &mut src } else { &mut dst };
            match s.fault {
                Fault::RestartSource | Fault::RestartSink => b.process().restart().unwrap(),
                _ => {
                    b.process().pause().unwrap();
                    std::thread::sleep(pause_for());
                    b.process().resume().unwrap();
                }
            }
        }
        Fault::RestartSourceFromOlderState => {
            wait_unique(
                &seen,
                n / 3,
                fault_timeout,
                "a third routed before the fault",
            );
            let b = src.process();
            b.stop().unwrap();
            let saved = save_files_named(b.dir(), "o.dat");
            assert!(
                !saved.is_empty(),
                "no consumer state (o.dat) under {:?}",
                b.dir()
            );
            b.start_again().unwrap();
            wait_unique(&seen, 2 * n / 3, fault_timeout, "two thirds routed");
            b.stop().unwrap();
            for (path, older) in &saved {
                std::fs::write(path, older).unwrap();
            }
            b.start_again().unwrap();
        }
        Fault::KillBridge => {
            for k in 1..=5u64 {
                let at = (n as u64 * k / 7) as usize;
                wait_unique(&seen, at, fault_timeout, "progress before the next kill");
                std::thread::sleep(Duration::from_millis(random_below(300)));
                kills.push(Instant::now());
                sigkill(&mut d);
                d = Daemon::start(&file, &["--drain-timeout", "5s"]);
            }
        }
    }
    let retries = rt.block_on(publisher).unwrap();
    let deadline = settle_timeout(n);
    let end = Instant::now() + deadline;
    while seen.lock().unwrap().unique() < n && Instant::now() < end {
        if let Ok(Some(st)) = d.child.try_wait() {
            panic!("polybridge exited ({st}):\n{}", d.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if s.fault == Fault::RestartSourceFromOlderState {
        // Everything may have arrived before the restored server was back: wait for the
        // bridge to pull from it and report its replay, rather than race it.
        d.wait_log(BROKER_REPLAY_WARNING, 0, Duration::from_secs(60));
    }
    // Give late duplicates a moment to show up, so they are counted.
    std::thread::sleep(Duration::from_millis(500));
    d.signal("TERM");
    let _ = d.wait_exit(Duration::from_secs(60));
    checker.abort();
    let seen = seen.lock().unwrap();
    let unique = seen.unique();
    let lost = n - unique.min(n);
    let dups = seen.duplicates();
    println!(
        "scenario={} sent={n} received_unique={unique} lost={lost} duplicates={dups}",
        s.name
    );
    // At-least-once duplicates come from what was in flight (bridge window plus the
    // checker's own window) at each fault, plus what the source broker delivered again on
    // its own and the bridge reported, plus publishes retried by the test itself.
    let log = d.log();
    let replayed = replayed_by_broker(&log);
    let bound = s.fault.events() * (2 * WINDOW as u64 + 256)
        + kafka_slack(s.from, &seen, &kills)
        + replayed
        + retries * 2;
    eprintln!(
        "scenario={} route={:?}->{:?} fault={:?} per_key={} publish_retries={retries} replayed_by_broker={replayed} duplicate_bound={bound} order_violations={} foreign={} seconds={:.1}",
        s.name,
        s.from,
        s.to,
        s.fault,
        s.per_key,
        seen.order_violations,
        seen.foreign,
        started.elapsed().as_secs_f64()
    );
    for line in log.lines().filter(|l| l.contains(BROKER_REPLAY_WARNING)) {
        eprintln!("bridge: {line}");
    }
    let faulted = if source_faulted { &src } else { &dst };
    if lost > 0 {
        let missing: Vec<u64> = (0..n as u64)
            .filter(|i| !seen.counts.contains_key(i))
            .take(20)
            .collect();
        panic!(
            "scenario {}: {lost} lost, e.g. {missing:?}; bridge log tail:\n{}\nfaulted broker's log tail:\n{}",
            s.name,
            tail(&log, 40),
            faulted.log_tail(60)
        );
    }
    if s.fault == Fault::RestartSourceFromOlderState {
        assert!(
            replayed > 0,
            "scenario {}: the source broker delivered again from an older state, and the bridge did not report it; bridge log tail:\n{}",
            s.name,
            tail(&log, 40)
        );
    }
    assert!(
        dups <= bound,
        "scenario {}: {dups} duplicates, more than the in-flight bound {bound}; bridge log tail:\n{}\nfaulted broker's log tail:\n{}",
        s.name,
        tail(&log, 40),
        faulted.log_tail(60)
    );
    if s.per_key {
        assert_eq!(
            seen.order_violations, 0,
            "scenario {}: per-key order broken",
            s.name
        );
    }
}

/// Kafka commits the acknowledged watermark every `commit_interval` (500 ms): a killed
/// consumer also replays what it acknowledged since its last commit — at most what arrived
/// within one interval plus the commit's own round trip. Bounded here by the arrivals within
/// 1 s before each of `kills`, or, when the fault's time is not known (`kills` empty, one
/// fault), by the most arrivals within any 1 s of the run. Repeated arrivals count: an
/// instance killed while it replays the previous one's uncommitted tail leaves that tail
/// uncommitted again, and the next instance replays it once more. 0 for other sources
/// (they acknowledge each message).
fn kafka_slack(from: Adapter, seen: &Seen, kills: &[Instant]) -> u64 {
    let window = Duration::from_secs(1);
    match from {
        Adapter::Kafka if kills.is_empty() => seen.most_within(window),
        Adapter::Kafka => kills.iter().map(|k| seen.arrivals_before(*k, window)).sum(),
        _ => 0,
    }
}

/// What the NATS source's warning says when JetStream delivers again, as new, messages it
/// delivered before (`polybridge_nats::jetstream`).
const BROKER_REPLAY_WARNING: &str = "delivers again, as new";

/// Messages the source broker itself delivered again as new, which the bridge reports: the
/// NATS source warns when JetStream's first deliveries go back in the stream (nats-server
/// 2.9.10 came back from 1 of 100 restarts here with its consumer's state of seconds
/// earlier), with the span of stream sequences delivered again (`span=N`). Those duplicates
/// are the broker's, not the in-flight window's; 0 when the bridge logged none.
fn replayed_by_broker(bridge_log: &str) -> u64 {
    bridge_log
        .lines()
        .filter(|l| l.contains(BROKER_REPLAY_WARNING))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|field| field.strip_prefix("span="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// The contents of every file called `name` under `dir`, with its path.
fn save_files_named(dir: &std::path::Path, name: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if entry.file_name() == name {
                let contents = std::fs::read(&path).unwrap();
                found.push((path, contents));
            }
        }
    }
    found
}

fn tail(log: &str, lines: usize) -> String {
    let l: Vec<&str> = log.lines().collect();
    l[l.len().saturating_sub(lines)..].join("\n")
}

// ---- Fault scenarios: every adapter is a source and a sink at least once. ----

#[test]
fn restart_source_redis_to_nats() {
    run_scenario(Scenario {
        name: "restart_source_redis_to_nats",
        from: Adapter::Redis,
        to: Adapter::Nats,
        fault: Fault::RestartSource,
        per_key: false,
        short_n: 5000,
    });
}

#[test]
fn restart_source_nats_to_amqp() {
    run_scenario(Scenario {
        name: "restart_source_nats_to_amqp",
        from: Adapter::Nats,
        to: Adapter::Amqp,
        fault: Fault::RestartSource,
        per_key: false,
        short_n: 4000,
    });
}

#[test]
fn restart_source_nats_from_older_state_to_redis() {
    run_scenario(Scenario {
        name: "restart_source_nats_from_older_state_to_redis",
        from: Adapter::Nats,
        to: Adapter::Redis,
        fault: Fault::RestartSourceFromOlderState,
        per_key: false,
        short_n: 4000,
    });
}

#[test]
fn restart_sink_amqp_to_stomp() {
    run_scenario(Scenario {
        name: "restart_sink_amqp_to_stomp",
        from: Adapter::Amqp,
        to: Adapter::Stomp,
        fault: Fault::RestartSink,
        per_key: false,
        short_n: 3000,
    });
}

#[test]
fn restart_sink_stomp_to_mqtt() {
    run_scenario(Scenario {
        name: "restart_sink_stomp_to_mqtt",
        from: Adapter::Stomp,
        to: Adapter::Mqtt,
        fault: Fault::RestartSink,
        per_key: false,
        short_n: 3000,
    });
}

#[test]
fn kill_bridge_kafka_to_redis_per_key() {
    run_scenario(Scenario {
        name: "kill_bridge_kafka_to_redis_per_key",
        from: Adapter::Kafka,
        to: Adapter::Redis,
        fault: Fault::KillBridge,
        per_key: true,
        short_n: 5000,
    });
}

#[test]
fn pause_sink_mqtt_to_kafka() {
    run_scenario(Scenario {
        name: "pause_sink_mqtt_to_kafka",
        from: Adapter::Mqtt,
        to: Adapter::Kafka,
        fault: Fault::PauseSink,
        per_key: false,
        short_n: 3000,
    });
}

#[test]
fn kill_bridge_redis_to_redis() {
    run_scenario(Scenario {
        name: "kill_bridge_redis_to_redis",
        from: Adapter::Redis,
        to: Adapter::Redis,
        fault: Fault::KillBridge,
        per_key: false,
        short_n: 5000,
    });
}

#[test]
fn pause_source_kafka_to_nats() {
    run_scenario(Scenario {
        name: "pause_source_kafka_to_nats",
        from: Adapter::Kafka,
        to: Adapter::Nats,
        fault: Fault::PauseSource,
        per_key: true,
        short_n: 3000,
    });
}

// ---- Scale-out: several bridges share the source through its consumer group. ----

fn scale_out(name: &str, from: Adapter, instances: usize, short_n: usize) {
    let _serial = serial();
    let Some(src) = Holder::get(from.kind(), false) else {
        return;
    };
    let Some(dst) = Holder::get(BrokerKind::Redis, false) else {
        return;
    };
    let rt = runtime();
    let tag = format!("x{}{}", std::process::id(), name.replace('_', ""));
    let (from_t, to_t) = (format!("{tag}in"), format!("{tag}out"));
    let topics = [from_t.as_str(), to_t.as_str()];
    let src_base = src.url(from.endpoint());
    let dst_url = dst.url(Endpoint::Redis);
    let n = messages(short_n);
    let check_broker = rt.block_on(polybridge::connect(&dst_url)).unwrap();
    let (seen, checker) = start_checker(
        &rt,
        check_broker,
        to_t.clone(),
        Some("verify".into()),
        tag.clone(),
    );
    let dir = temp_dir(&tag);
    let mut daemons = Vec::new();
    for i in 0..instances {
        let file = dir.join(format!("rules{i}.yaml"));
        let admin = free_port();
        // Every instance its own client id (MQTT) but the same group.
        let src_url = from.url(&src_base, &format!("{tag}b{i}"), &topics);
        let inst = format!("i{i}");
        std::fs::write(
            &file,
            rules_for(
                &src_url,
                &dst_url,
                &from_t,
                &to_t,
                false,
                admin,
                Some(&inst),
            ),
        )
        .unwrap();
        let mut d = Daemon::start(&file, &["--drain-timeout", "5s"]);
        wait_ready(&mut d, admin, Duration::from_secs(60));
        daemons.push(d);
    }
    let pub_broker = rt
        .block_on(polybridge::connect(&from.url(
            &src_base,
            &format!("{tag}p"),
            &topics,
        )))
        .unwrap();
    // The first half while every instance runs; one instance dies once a quarter arrived;
    // the second half is published after its death, so only survivors can deliver it.
    let half = n / 2 / KEYS * KEYS;
    seen.lock().unwrap().late_from = half as u64;
    let first = rt.spawn(publish_range(
        pub_broker.clone(),
        from_t.clone(),
        tag.clone(),
        0,
        half,
    ));
    let timeout = Duration::from_secs(120 + (n / 200) as u64);
    wait_unique(&seen, n / 4, timeout, "a quarter routed");
    let before_kill = seen.lock().unwrap().by_instance.clone();
    let victim_name = format!("i{}", instances - 1);
    let mut victim = daemons.pop().unwrap();
    sigkill(&mut victim);
    let mut retries = rt.block_on(first).unwrap();
    retries += rt.block_on(publish_range(
        pub_broker,
        from_t.clone(),
        tag.clone(),
        half,
        n,
    ));
    // MQTT: Mosquitto keeps handing the dead member's persistent session its share of the
    // messages, and what it sent there stays there (MQTT 5 §4.8.2: not resent to other
    // members of the shared subscription) until a client with the same id resumes the
    // session: the instance is started again with its stable client id, as a StatefulSet
    // would do.
    let restarted = (from == Adapter::Mqtt).then(|| {
        let file = dir.join(format!("rules{}.yaml", instances - 1));
        Daemon::start(&file, &["--drain-timeout", "5s"])
    });
    daemons.extend(restarted);
    let end = Instant::now() + settle_timeout(n);
    while seen.lock().unwrap().unique() < n && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    for d in &daemons {
        d.signal("TERM");
    }
    for d in &mut daemons {
        let _ = d.wait_exit(Duration::from_secs(60));
    }
    checker.abort();
    let seen = seen.lock().unwrap();
    let unique = seen.unique();
    let lost = n - unique.min(n);
    let dups = seen.duplicates();
    println!("scenario={name} sent={n} received_unique={unique} lost={lost} duplicates={dups}");
    eprintln!(
        "scenario={name} instances={instances} killed={victim_name} seen_before_kill={before_kill:?} total_by_instance={:?} second_half_by_instance={:?} publish_retries={retries}",
        seen.by_instance, seen.late_by_instance
    );
    assert_eq!(lost, 0, "scenario {name}: messages lost");
    for i in 0..instances {
        let inst = format!("i{i}");
        assert!(
            seen.by_instance.get(&inst).copied().unwrap_or(0) > 0,
            "scenario {name}: instance {inst} delivered nothing: {:?}",
            seen.by_instance
        );
    }
    if from != Adapter::Mqtt {
        assert_eq!(
            seen.late_by_instance
                .get(&victim_name)
                .copied()
                .unwrap_or(0),
            0,
            "scenario {name}: the killed instance delivered messages published after its death"
        );
    }
    let survivors_late: u64 = seen
        .late_by_instance
        .iter()
        .filter(|(k, _)| **k != victim_name)
        .map(|(_, v)| *v)
        .sum();
    assert!(
        survivors_late > 0,
        "scenario {name}: the survivors did not take the second half over: {:?}",
        seen.late_by_instance
    );
    let bound = 2 * WINDOW as u64 + 256 + retries * 2 + kafka_slack(from, &seen, &[]);
    assert!(
        dups <= bound,
        "scenario {name}: {dups} duplicates, more than the bound {bound}"
    );
}

#[test]
fn scale_out_redis_stream_group_3_instances() {
    scale_out("scale_out_redis_3", Adapter::Redis, 3, 6000);
}

#[test]
fn scale_out_nats_durable_2_instances() {
    scale_out("scale_out_nats_2", Adapter::Nats, 2, 4000);
}

#[test]
fn scale_out_amqp_shared_queue_2_instances() {
    scale_out("scale_out_amqp_2", Adapter::Amqp, 2, 4000);
}

#[test]
fn scale_out_kafka_group_2_instances() {
    scale_out("scale_out_kafka_2", Adapter::Kafka, 2, 4000);
}

#[test]
fn scale_out_mqtt_shared_subscription_2_instances() {
    scale_out("scale_out_mqtt_2", Adapter::Mqtt, 2, 3000);
}

#[test]
fn scale_out_stomp_queue_3_instances() {
    scale_out("scale_out_stomp_3", Adapter::Stomp, 3, 3000);
}
