//! The polybridge daemon: routes messages between brokers by declarative YAML rules, at
//! least once.
//!
//! - [`config`]: the rule file, read with every error reported at its line and column.
//! - [`route`]: the data path — source delivery → rule match → mapping → publish to every
//!   sink → settle the source.
//! - [`admin`]: the status page at `/`, `/metrics`, `/health`, `/ready`, `/api/routes`,
//!   `/api/status`.
//!
//! The binary is `polybridge` (`src/main.rs`); this library is what it runs, and what the
//! tests drive.

pub mod admin;
pub mod builtin;
pub mod config;
pub mod filter;
pub mod mapping;
pub mod metrics;
pub mod route;
pub mod ruletest;
pub mod slots;
pub mod template;
pub mod yaml;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use polybridge::Broker;
use tokio::sync::watch;

use crate::config::{BrokerConfig, Config, RouteConfig};
use crate::metrics::{BrokerMetrics, RouteMetrics};
use crate::route::Route;

/// What the admin server shows: the routes and brokers in use now.
#[derive(Default)]
pub struct Snapshot {
    /// The running routes, in file order.
    pub routes: Vec<Arc<Route>>,
    /// The connected brokers: name, URL scheme, counters.
    pub brokers: Vec<(String, String, Arc<BrokerMetrics>)>,
}

/// The bridge's current [`Snapshot`], shared with the admin server (replaced on reload).
pub type RouteTable = Arc<RwLock<Snapshot>>;

/// A connected broker and what it was connected with.
#[derive(Clone)]
pub struct ConnectedBroker {
    /// The connection.
    pub broker: Arc<dyn Broker>,
    /// The full URL it was connected with (password included, never printed): a broker
    /// whose URL changes on reload is connected again.
    pub identity: String,
    /// Connection counters.
    pub metrics: Arc<BrokerMetrics>,
}

/// Connects every broker a config names (once per name).
pub async fn connect_brokers(config: &Config) -> anyhow::Result<BTreeMap<String, Arc<dyn Broker>>> {
    let mut out = BTreeMap::new();
    for (name, b) in &config.brokers {
        out.insert(name.clone(), connect_broker(name, b).await?);
    }
    Ok(out)
}

async fn connect_broker(name: &str, b: &BrokerConfig) -> anyhow::Result<Arc<dyn Broker>> {
    builtin::connect_url(&b.url)
        .await
        .map_err(|e| anyhow::anyhow!("broker {name:?} ({}): {e}", b.url))
}

/// One running route: its task and how to stop it.
struct Running {
    route: Arc<Route>,
    fingerprint: String,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Routes started (new, or changed).
    pub started: Vec<String>,
    /// Routes drained and stopped (removed, or changed).
    pub stopped: Vec<String>,
    /// Routes left running untouched.
    pub unchanged: Vec<String>,
}

/// A running bridge: its routes and how to stop them.
pub struct Bridge {
    running: Vec<Running>,
    brokers: BTreeMap<String, ConnectedBroker>,
    table: RouteTable,
    drain: Duration,
    acked_mark: u64,
}

/// What identifies a route's behaviour: its rules (not its line in the file) and the URLs
/// of the brokers it uses.
fn fingerprint(rc: &mut RouteConfig, brokers: &BTreeMap<String, ConnectedBroker>) -> String {
    let line = rc.line;
    rc.line = 0;
    let mut out = format!("{rc:?}");
    rc.line = line;
    let mut names = vec![rc.source.broker.clone()];
    names.extend(rc.sinks.iter().map(|s| s.broker.clone()));
    if let Some(d) = &rc.on_error.dead_letter {
        names.push(d.broker.clone());
    }
    for n in names {
        out.push('\n');
        out.push_str(&n);
        out.push('=');
        out.push_str(brokers.get(&n).map(|b| b.identity.as_str()).unwrap_or("?"));
    }
    out
}

impl Bridge {
    /// Starts every route of `config` on `brokers`; routes drain for up to `drain` on stop.
    pub fn start(
        config: Config,
        brokers: &BTreeMap<String, Arc<dyn Broker>>,
        drain: Duration,
    ) -> anyhow::Result<Bridge> {
        Self::start_with_acked_mark(config, brokers, drain, 0)
    }

    /// Like [`Bridge::start`], and each route records when its acknowledged count reaches
    /// `acked_mark` (in `RouteMetrics::acked_mark_at`; 0: no mark). Set before any route
    /// runs, so no acknowledgement can come before the mark (used by the benchmark).
    pub fn start_with_acked_mark(
        config: Config,
        brokers: &BTreeMap<String, Arc<dyn Broker>>,
        drain: Duration,
        acked_mark: u64,
    ) -> anyhow::Result<Bridge> {
        let connected = config
            .brokers
            .iter()
            .filter_map(|(name, b)| {
                brokers.get(name).map(|broker| {
                    (
                        name.clone(),
                        ConnectedBroker {
                            broker: broker.clone(),
                            identity: b.url.as_url().as_str().to_owned(),
                            metrics: Arc::new(BrokerMetrics::connected()),
                        },
                    )
                })
            })
            .collect();
        let mut bridge = Bridge {
            running: Vec::new(),
            brokers: connected,
            table: Arc::new(RwLock::new(Snapshot::default())),
            drain,
            acked_mark,
        };
        for rc in config.routes {
            let r = bridge.spawn(rc)?;
            bridge.running.push(r);
        }
        bridge.publish_table();
        Ok(bridge)
    }

    /// Connects the brokers of `config` and starts its routes.
    pub async fn connect_and_start(config: Config, drain: Duration) -> anyhow::Result<Bridge> {
        let mut bridge = Bridge {
            running: Vec::new(),
            brokers: BTreeMap::new(),
            table: Arc::new(RwLock::new(Snapshot::default())),
            drain,
            acked_mark: 0,
        };
        for (name, b) in &config.brokers {
            let broker = connect_broker(name, b).await?;
            tracing::info!(broker = %name, url = %b.url, "connected");
            bridge.brokers.insert(
                name.clone(),
                ConnectedBroker {
                    broker,
                    identity: b.url.as_url().as_str().to_owned(),
                    metrics: Arc::new(BrokerMetrics::connected()),
                },
            );
        }
        for rc in config.routes {
            let r = bridge.spawn(rc)?;
            bridge.running.push(r);
        }
        bridge.publish_table();
        Ok(bridge)
    }

    fn spawn(&self, mut rc: RouteConfig) -> anyhow::Result<Running> {
        let get = |name: &str| {
            self.brokers
                .get(name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("broker {name:?} is not connected"))
        };
        let fingerprint = fingerprint(&mut rc, &self.brokers);
        let source = get(&rc.source.broker)?;
        let sinks = rc
            .sinks
            .iter()
            .map(|s| get(&s.broker))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let dead_letter = match &rc.on_error.dead_letter {
            Some(d) => Some(get(&d.broker)?),
            None => None,
        };
        let route = Arc::new(Route {
            config: rc,
            source: source.broker,
            source_metrics: source.metrics,
            sinks: sinks.iter().map(|s| s.broker.clone()).collect(),
            sink_metrics: sinks.into_iter().map(|s| s.metrics).collect(),
            dead_letter: dead_letter.map(|d| d.broker),
            metrics: Arc::new(RouteMetrics::with_acked_mark(self.acked_mark)),
            instance: route::next_instance(),
        });
        let (shutdown, watcher) = watch::channel(false);
        let task = tokio::spawn(route.clone().run(watcher, self.drain));
        Ok(Running {
            route,
            fingerprint,
            shutdown,
            task,
        })
    }

    fn publish_table(&self) {
        let snapshot = Snapshot {
            routes: self.routes(),
            brokers: self
                .brokers
                .iter()
                .map(|(n, b)| {
                    (
                        n.clone(),
                        b.broker.url().scheme().to_owned(),
                        b.metrics.clone(),
                    )
                })
                .collect(),
        };
        match self.table.write() {
            Ok(mut t) => *t = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }

    /// The running routes, in file order.
    pub fn routes(&self) -> Vec<Arc<Route>> {
        self.running.iter().map(|r| r.route.clone()).collect()
    }

    /// The route table the admin server shows; kept current across reloads.
    pub fn table(&self) -> RouteTable {
        self.table.clone()
    }

    /// The connected brokers, by name.
    pub fn brokers(&self) -> &BTreeMap<String, ConnectedBroker> {
        &self.brokers
    }

    /// Applies a new, already validated config: connects brokers that are new or whose URL
    /// changed, starts new and changed routes, then drains and stops removed and changed
    /// ones; routes whose rules and brokers are the same keep running untouched (same
    /// route object, same subscription, same counters). If a new broker cannot be
    /// connected, nothing changes and the error is returned.
    pub async fn reload(&mut self, config: Config) -> anyhow::Result<ReloadSummary> {
        // Brokers: keep the unchanged ones, connect new and changed ones first, so a
        // connection failure leaves everything as it was.
        let mut brokers = BTreeMap::new();
        for (name, b) in &config.brokers {
            let identity = b.url.as_url().as_str().to_owned();
            match self.brokers.get(name) {
                Some(old) if old.identity == identity => {
                    brokers.insert(name.clone(), old.clone());
                }
                _ => {
                    let broker = connect_broker(name, b).await?;
                    tracing::info!(broker = %name, url = %b.url, "connected");
                    brokers.insert(
                        name.clone(),
                        ConnectedBroker {
                            broker,
                            identity,
                            metrics: Arc::new(BrokerMetrics::connected()),
                        },
                    );
                }
            }
        }
        let old_brokers = std::mem::replace(&mut self.brokers, brokers);
        let mut old: Vec<Option<Running>> = std::mem::take(&mut self.running)
            .into_iter()
            .map(Some)
            .collect();
        let mut summary = ReloadSummary::default();
        let mut next = Vec::new();
        for mut rc in config.routes {
            let fp = fingerprint(&mut rc, &self.brokers);
            let same = old.iter_mut().find(|o| {
                o.as_ref()
                    .is_some_and(|o| o.route.config.name == rc.name && o.fingerprint == fp)
            });
            match same.and_then(Option::take) {
                Some(kept) => {
                    summary.unchanged.push(rc.name.clone());
                    next.push(kept);
                }
                None => {
                    summary.started.push(rc.name.clone());
                    match self.spawn(rc) {
                        Ok(r) => next.push(r),
                        Err(e) => {
                            // Cannot happen after validation (every broker is connected);
                            // keep the old routes running rather than lose them.
                            for r in next
                                .iter()
                                .filter(|r| summary.started.contains(&r.route.config.name))
                            {
                                let _ = r.shutdown.send(true);
                            }
                            let keep: Vec<Running> = old.into_iter().flatten().collect();
                            let mut restored: Vec<Running> = next
                                .into_iter()
                                .filter(|r| !summary.started.contains(&r.route.config.name))
                                .collect();
                            restored.extend(keep);
                            self.running = restored;
                            self.brokers = old_brokers;
                            self.publish_table();
                            return Err(e);
                        }
                    }
                }
            }
        }
        self.running = next;
        self.publish_table();
        // Drain what is no longer wanted, after its replacement started.
        let stopping: Vec<Running> = old.into_iter().flatten().collect();
        for r in &stopping {
            summary.stopped.push(r.route.config.name.clone());
            let _ = r.shutdown.send(true);
        }
        for r in stopping {
            let _ = r.task.await;
        }
        // Close brokers nothing uses any more.
        for (name, b) in old_brokers {
            let still = self
                .brokers
                .get(&name)
                .is_some_and(|n| Arc::ptr_eq(&n.broker, &b.broker));
            if !still {
                if let Err(e) = b
                    .broker
                    .close(polybridge::Deadline::after(self.drain))
                    .await
                {
                    tracing::warn!(broker = %name, error = %e, "closing a broker no longer used");
                }
            }
        }
        Ok(summary)
    }

    /// Stops taking deliveries, drains what is in progress, and returns when every route
    /// has stopped.
    pub async fn stop(self) {
        for r in &self.running {
            let _ = r.shutdown.send(true);
        }
        for r in self.running {
            let _ = r.task.await;
        }
    }

    /// [`Bridge::stop`], then closes every broker (waiting up to the drain time for their
    /// pending publishes).
    pub async fn shutdown(self) {
        let brokers = self.brokers.clone();
        let drain = self.drain;
        self.stop().await;
        for (name, b) in &brokers {
            if let Err(e) = b.broker.close(polybridge::Deadline::after(drain)).await {
                tracing::warn!(broker = %name, error = %e, "closing the broker");
            }
        }
    }
}
