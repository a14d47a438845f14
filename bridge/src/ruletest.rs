//! `polybridge test FILE`: rule tests. Given input messages on a source, assert what the
//! routes send where — run on in-memory brokers, so no broker is needed.
//!
//! ```yaml
//! rules: rules.yaml            # the rule file under test, relative to this file
//! tests:
//!   - name: hot kitchen readings become alerts
//!     input:
//!       - broker: sensors      # a broker name of the rule file
//!         topic: sensors.kitchen.temp
//!         payload: '{"celsius": 31.0}'
//!         key: kitchen         # optional
//!         headers: { unit: C } # optional
//!     expect:                  # every message the routes publish, in any order
//!       - broker: out
//!         destination: alerts.kitchen
//!         payload: '{"celsius": 31.0}'  # optional: exact payload (UTF-8)
//!         key: kitchen                  # optional
//!         headers: { unit: C }          # optional: these headers, with these values
//!   - name: cold readings go nowhere
//!     input: [ { broker: sensors, topic: sensors.hall.temp, payload: '{"celsius": 3.0}' } ]
//!     expect: []
//! ```
//!
//! Every broker of the rule file is replaced by an in-memory broker of its own for each
//! case. Topics of MQTT brokers are written with `/` in inputs and expectations, and seen
//! with `/` by the routes (`{topic}`, captures), as on a real MQTT broker; inside, the
//! memory broker carries them with `.` levels, so an MQTT topic level containing `.` is not
//! supported by the test runner.
//! The rule file is checked exactly as `validate` checks it, against the real brokers'
//! capabilities. A case passes when the published messages and the expected ones match
//! one to one; otherwise the runner prints the difference. Exit code: 0 all passed, 1 a
//! case failed, 2 the test file or rule file is invalid.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use polybridge::{Broker, Deadline, DeliveryStream, HeaderValue, Message, Subscription};
use serde::Deserialize;

use crate::config::{self, Config};
use crate::Bridge;

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The rule file, relative to the test file.
    pub rules: String,
    /// The cases.
    pub tests: Vec<TestCase>,
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// Name, printed in the report.
    pub name: String,
    /// Messages published, in order.
    pub input: Vec<Input>,
    /// Messages the routes must publish, in any order; nothing else may be published.
    pub expect: Vec<Expected>,
}

/// An input message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Broker name in the rule file.
    pub broker: String,
    /// Topic, in the broker's syntax.
    pub topic: String,
    /// Payload (UTF-8).
    #[serde(default)]
    pub payload: String,
    /// Key.
    pub key: Option<String>,
    /// Headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Content type.
    pub content_type: Option<String>,
}

/// An expected output message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// Broker name in the rule file.
    pub broker: String,
    /// Rendered destination.
    pub destination: String,
    /// Exact payload, if given.
    pub payload: Option<String>,
    /// Key, if given.
    pub key: Option<String>,
    /// Headers that must be present with these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A message a route published, as observed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Broker name.
    pub broker: String,
    /// Destination.
    pub destination: String,
    /// The message.
    pub message: Message,
}

impl Expected {
    fn matches(&self, o: &Output) -> bool {
        self.broker == o.broker
            && self.destination == o.destination
            && self
                .payload
                .as_ref()
                .is_none_or(|p| p.as_bytes() == &o.message.payload[..])
            && self
                .key
                .as_ref()
                .is_none_or(|k| o.message.key.as_deref() == Some(k.as_bytes()))
            && self
                .headers
                .iter()
                .all(|(n, v)| o.message.headers.get_str(n) == Some(v.as_str()))
    }

    fn describe(&self) -> String {
        let mut s = format!("{}: {}", self.broker, self.destination);
        if let Some(k) = &self.key {
            s.push_str(&format!(" key={k:?}"));
        }
        for (n, v) in &self.headers {
            s.push_str(&format!(" {n}={v:?}"));
        }
        if let Some(p) = &self.payload {
            s.push_str(&format!(" payload={p:?}"));
        }
        s
    }
}

impl Output {
    fn describe(&self) -> String {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut s = format!("{}: {}", self.broker, self.destination);
        if let Some(k) = &self.message.key {
            s.push_str(&format!(" key={:?}", text(k)));
        }
        for (n, v) in self.message.headers.iter() {
            let v = match v {
                HeaderValue::Text(t) => t.clone(),
                HeaderValue::Binary(b) => text(b),
            };
            s.push_str(&format!(" {n}={v:?}"));
        }
        s.push_str(&format!(" payload={:?}", text(&self.message.payload)));
        s
    }
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseResult {
    /// Case name.
    pub name: String,
    /// Empty when it passed; else the report lines.
    pub problems: Vec<String>,
}

/// Runs the test file at `path`, prints a report, and returns the exit code.
pub async fn run_file(path: &Path) -> u8 {
    match run_path(path).await {
        Err(e) => {
            eprintln!("{e}");
            2
        }
        Ok(results) => {
            let failed = results.iter().filter(|r| !r.problems.is_empty()).count();
            for r in &results {
                if r.problems.is_empty() {
                    println!("ok   {}", r.name);
                } else {
                    println!("FAIL {}", r.name);
                    for p in &r.problems {
                        println!("     {p}");
                    }
                }
            }
            println!(
                "{}: {} passed, {} failed",
                path.display(),
                results.len() - failed,
                failed
            );
            u8::from(failed > 0)
        }
    }
}

/// Loads and runs the test file at `path`.
pub async fn run_path(path: &Path) -> Result<Vec<CaseResult>, String> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{file}:1:1: cannot read the file: {e}"))?;
    let tests: TestFile = marked_yaml::from_yaml_with_options(
        0,
        &text,
        marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true),
    )
    .map_err(|e| format!("{file}: not a valid test file: {e}"))?;
    let rules_path = path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(&tests.rules);
    let rules_file = rules_path.display().to_string();
    let rules = std::fs::read_to_string(&rules_path)
        .map_err(|e| format!("{rules_file}:1:1: cannot read the rule file: {e}"))?;
    let env = |name: &str| std::env::var(name).ok();
    config::load(&rules, &rules_file, &env).map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    for (i, case) in tests.tests.iter().enumerate() {
        let config = config::load(&rules, &rules_file, &env).map_err(|e| e.to_string())?;
        results.push(run_case(config, case, i).await);
    }
    Ok(results)
}

/// Runs one case on fresh in-memory brokers.
pub async fn run_case(config: Config, case: &TestCase, index: usize) -> CaseResult {
    let mut problems = Vec::new();
    let result = |problems: Vec<String>| CaseResult {
        name: case.name.clone(),
        problems,
    };
    // In memory, every topic has `.` levels.
    let mqtt_like: Vec<String> = config
        .brokers
        .iter()
        .filter(|(_, b)| config::separator_for(b.url.scheme()) == '/')
        .map(|(n, _)| n.clone())
        .collect();
    let mut brokers: BTreeMap<String, Arc<dyn Broker>> = BTreeMap::new();
    for name in config.brokers.keys() {
        let url = format!("memory://pbtest-{}-{index}-{name}", std::process::id());
        match polybridge::connect(&url).await {
            Ok(b) => {
                brokers.insert(name.clone(), b);
            }
            Err(e) => return result(vec![format!("cannot make broker {name:?}: {e}")]),
        }
    }
    // Observe everything published to every broker.
    let mut observers: Vec<(String, DeliveryStream)> = Vec::new();
    for (name, b) in &brokers {
        let sub = match "#".parse() {
            Ok(p) => Subscription::new(p),
            Err(e) => return result(vec![format!("pattern: {e}")]),
        };
        match b.subscribe(sub).await {
            Ok(s) => observers.push((name.clone(), s)),
            Err(e) => return result(vec![format!("cannot observe broker {name:?}: {e}")]),
        }
    }
    for input in &case.input {
        if !brokers.contains_key(&input.broker) {
            problems.push(format!(
                "input on unknown broker {:?}; the rule file has: {}",
                input.broker,
                brokers.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if !problems.is_empty() {
        return result(problems);
    }
    let expected_per_route: Vec<u64> = config
        .routes
        .iter()
        .map(|r| {
            case.input
                .iter()
                .filter(|i| {
                    i.broker == r.source.broker
                        && r.source
                            .subscription
                            .pattern
                            .matches(&memory_topic(i, &mqtt_like), '.')
                })
                .count() as u64
        })
        .collect();
    // The routes see MQTT topics with `/`.
    let route_brokers: BTreeMap<String, Arc<dyn Broker>> = brokers
        .iter()
        .map(|(name, b)| {
            let b = if mqtt_like.contains(name) {
                Arc::new(SlashTopics { inner: b.clone() }) as Arc<dyn Broker>
            } else {
                b.clone()
            };
            (name.clone(), b)
        })
        .collect();
    let bridge = match Bridge::start(config, &route_brokers, Duration::from_secs(2)) {
        Ok(b) => b,
        Err(e) => return result(vec![format!("cannot start the routes: {e:#}")]),
    };
    let routes = bridge.routes();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !routes
        .iter()
        .all(|r| r.metrics.subscribed.load(Ordering::Relaxed))
    {
        if tokio::time::Instant::now() > deadline {
            bridge.stop().await;
            return result(vec!["the routes did not subscribe within 10 s".into()]);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut input_ids = Vec::new();
    for (n, input) in case.input.iter().enumerate() {
        let mut m = Message::new(input.payload.clone()).with_id(format!("input-{n}"));
        if let Some(k) = &input.key {
            m = m.with_key(k.clone());
        }
        for (h, v) in &input.headers {
            m = m.with_header(h.clone(), v.clone());
        }
        m.content_type = input.content_type.clone();
        let topic = memory_topic(input, &mqtt_like);
        input_ids.push((input.broker.clone(), topic.clone(), m.id.clone()));
        if let Err(e) = brokers[&input.broker]
            .publish(&topic, &m, Deadline::after(Duration::from_secs(5)))
            .await
        {
            problems.push(format!("cannot publish input {n}: {e}"));
        }
    }
    // Wait until every route settled every input it matched.
    let settled = |r: &crate::route::Route| {
        let m = &r.metrics;
        m.acked.load(Ordering::Relaxed)
            + m.filtered.load(Ordering::Relaxed)
            + m.dead_lettered.load(Ordering::Relaxed)
            + m.nacked.load(Ordering::Relaxed)
    };
    while !routes
        .iter()
        .zip(&expected_per_route)
        .all(|(r, want)| settled(r) >= *want)
    {
        if tokio::time::Instant::now() > deadline {
            problems.push("timed out waiting for the routes to settle the inputs".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (r, want) in routes.iter().zip(&expected_per_route) {
        let nacked = r.metrics.nacked.load(Ordering::Relaxed);
        if nacked > 0 && *want > 0 {
            problems.push(format!(
                "route {:?} could not deliver {nacked} message(s) (nacked for redelivery)",
                r.config.name
            ));
        }
    }
    bridge.stop().await;
    let mut outputs = Vec::new();
    for (name, mut stream) in observers {
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(50), stream.next()).await
        {
            let is_input = input_ids
                .iter()
                .any(|(b, t, id)| *b == name && *t == d.info.topic && *id == d.message.id);
            let _ = d.handle.ack();
            if !is_input {
                let destination = if mqtt_like.contains(&name) {
                    d.info.topic.replace('.', "/")
                } else {
                    d.info.topic
                };
                outputs.push(Output {
                    broker: name.clone(),
                    destination,
                    message: d.message,
                });
            }
        }
        stream.close().await;
    }
    problems.extend(compare(&case.expect, &outputs));
    result(problems)
}

/// A memory broker seen as an MQTT broker: topics with `/` outside, `.` inside.
struct SlashTopics {
    inner: Arc<dyn Broker>,
}

#[async_trait::async_trait]
impl polybridge::Publisher for SlashTopics {
    async fn publish(
        &self,
        destination: &str,
        message: &Message,
        deadline: Deadline,
    ) -> polybridge::Result<polybridge::Receipt> {
        self.inner
            .publish(&destination.replace('/', "."), message, deadline)
            .await
    }
    async fn close(&self, deadline: Deadline) -> polybridge::Result<()> {
        self.inner.close(deadline).await
    }
}

#[async_trait::async_trait]
impl polybridge::Subscriber for SlashTopics {
    async fn subscribe(&self, subscription: Subscription) -> polybridge::Result<DeliveryStream> {
        let mut inner = self.inner.subscribe(subscription).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (close_tx, mut close_rx) = tokio::sync::oneshot::channel::<()>();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _closed = closed_tx;
            loop {
                tokio::select! {
                    _ = &mut close_rx => break,
                    next = inner.next() => match next {
                        Some(Ok(mut d)) => {
                            d.info.topic = d.info.topic.replace('.', "/");
                            if tx.send(Ok(d)).await.is_err() {
                                break;
                            }
                        }
                        Some(Err(e)) => {
                            let _ = tx.send(Err(e)).await;
                            break;
                        }
                        None => break,
                    },
                }
            }
            inner.close().await;
        });
        Ok(DeliveryStream::new(rx, close_tx, closed_rx))
    }
}

impl Broker for SlashTopics {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn capabilities(&self) -> &polybridge::Capabilities {
        self.inner.capabilities()
    }
    fn url(&self) -> &polybridge::BrokerUrl {
        self.inner.url()
    }
}

fn memory_topic(input: &Input, mqtt_like: &[String]) -> String {
    if mqtt_like.contains(&input.broker) {
        input.topic.replace('/', ".")
    } else {
        input.topic.clone()
    }
}

/// Matches outputs to expectations one to one; returns the differences.
pub fn compare(expect: &[Expected], outputs: &[Output]) -> Vec<String> {
    let mut unmatched: Vec<Option<&Output>> = outputs.iter().map(Some).collect();
    let mut missing = Vec::new();
    for e in expect {
        match unmatched
            .iter_mut()
            .find(|o| o.is_some_and(|o| e.matches(o)))
        {
            Some(slot) => *slot = None,
            None => missing.push(e),
        }
    }
    let extra: Vec<&Output> = unmatched.into_iter().flatten().collect();
    if missing.is_empty() && extra.is_empty() {
        return Vec::new();
    }
    let mut lines = vec![format!(
        "expected {} message(s), routes published {}:",
        expect.len(),
        outputs.len()
    )];
    for e in missing {
        lines.push(format!("- expected, not published: {}", e.describe()));
    }
    for o in extra {
        lines.push(format!("+ published, not expected: {}", o.describe()));
    }
    lines
}
