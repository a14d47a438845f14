//! A sink whose faults a test controls, for tests that run a bridge in-process: a memory
//! broker behind a [`Broker`] that counts publishes, records batch sizes, refuses one
//! payload for good, fails publishes with transient errors and delays them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use polybridge::{
    Broker, BrokerUrl, Capabilities, Deadline, DeliveryStream, Error, Message, Outgoing, Publisher,
    Receipt, Subscriber, Subscription,
};

/// A memory broker named `name` (`memory://name`).
pub fn memory(name: &str) -> Arc<dyn Broker> {
    Arc::new(
        polybridge::memory::MemoryBroker::connect(&format!("memory://{name}").parse().unwrap())
            .unwrap(),
    )
}

/// A memory broker behind a sink with injected faults.
pub struct FaultySink {
    /// The memory broker that stores what gets through.
    pub inner: Arc<dyn Broker>,
    capabilities: Capabilities,
    batch_sizes: Mutex<Vec<usize>>,
    /// Calls of `publish` (one message each; the messages of a batch are not counted).
    pub publishes: AtomicUsize,
    /// The payload refused with a permanent error, if any.
    refused: Option<&'static str>,
    /// The payload that fails transiently while `failures` is above zero; `None`: every
    /// payload does.
    flaky: Option<&'static str>,
    /// Transient failures left to inject (each counts down), or `u32::MAX`: fail until
    /// the test sets it to 0.
    pub failures: AtomicU32,
    /// How long a publish of a message waits before it goes to the memory broker.
    delay: Option<fn(&Message) -> Duration>,
}

impl FaultySink {
    /// A sink without faults, which says whether it pipelines batches.
    pub fn new(name: &str, batched_publish: bool) -> Arc<Self> {
        let inner = memory(name);
        let mut capabilities = inner.capabilities().clone();
        capabilities.batched_publish = batched_publish;
        Arc::new(FaultySink {
            inner,
            capabilities,
            batch_sizes: Mutex::new(Vec::new()),
            publishes: AtomicUsize::new(0),
            refused: None,
            flaky: None,
            failures: AtomicU32::new(0),
            delay: None,
        })
    }

    /// A sink (without batches) whose every publish fails transiently while `failures`
    /// is above zero.
    pub fn failing(name: &str, failures: u32) -> Arc<Self> {
        let sink = Arc::into_inner(Self::new(name, false)).unwrap();
        sink.failures.store(failures, Ordering::SeqCst);
        Arc::new(sink)
    }

    /// A pipelining sink that refuses the payload `refused` for good and fails the
    /// payload `flaky` transiently on its first `failures` attempts.
    pub fn refusing(
        name: &str,
        refused: &'static str,
        flaky: &'static str,
        failures: u32,
    ) -> Arc<Self> {
        let mut sink = Arc::into_inner(Self::new(name, true)).unwrap();
        sink.refused = Some(refused);
        sink.flaky = Some(flaky);
        sink.failures = AtomicU32::new(failures);
        Arc::new(sink)
    }

    /// A sink (without batches) whose publish of each message first waits `delay(message)`.
    pub fn delaying(name: &str, delay: fn(&Message) -> Duration) -> Arc<Self> {
        let mut sink = Arc::into_inner(Self::new(name, false)).unwrap();
        sink.delay = Some(delay);
        Arc::new(sink)
    }

    /// The size of every `publish_batch` so far.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batch_sizes.lock().unwrap().clone()
    }

    async fn publish_one(
        &self,
        destination: &str,
        message: &Message,
        deadline: Deadline,
    ) -> polybridge::Result<Receipt> {
        let payload = &message.payload[..];
        if self.refused.is_some_and(|r| payload == r.as_bytes()) {
            return Err(Error::permanent("faulty", destination, "refused payload"));
        }
        let flaky = self.flaky.is_none_or(|f| payload == f.as_bytes());
        if flaky
            && self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                    0 => None,
                    u32::MAX => Some(n),
                    n => Some(n - 1),
                })
                .is_ok()
        {
            return Err(Error::transient("faulty", destination, "injected failure"));
        }
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay(message)).await;
        }
        self.inner.publish(destination, message, deadline).await
    }
}

#[async_trait]
impl Publisher for FaultySink {
    async fn publish(
        &self,
        destination: &str,
        message: &Message,
        deadline: Deadline,
    ) -> polybridge::Result<Receipt> {
        self.publishes.fetch_add(1, Ordering::SeqCst);
        self.publish_one(destination, message, deadline).await
    }

    async fn publish_batch(
        &self,
        batch: &[Outgoing<'_>],
        deadline: Deadline,
    ) -> Vec<polybridge::Result<Receipt>> {
        self.batch_sizes.lock().unwrap().push(batch.len());
        let mut results = Vec::with_capacity(batch.len());
        for o in batch {
            results.push(self.publish_one(o.destination, o.message, deadline).await);
        }
        results
    }

    async fn close(&self, deadline: Deadline) -> polybridge::Result<()> {
        self.inner.close(deadline).await
    }
}

#[async_trait]
impl Subscriber for FaultySink {
    async fn subscribe(&self, s: Subscription) -> polybridge::Result<DeliveryStream> {
        self.inner.subscribe(s).await
    }
}

impl Broker for FaultySink {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }
    fn url(&self) -> &BrokerUrl {
        self.inner.url()
    }
}
