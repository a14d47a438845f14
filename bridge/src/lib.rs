//! The polybridge daemon: routes messages between brokers by declarative YAML rules, at
//! least once.
//!
//! - [`config`]: the rule file, read with every error reported at its line and column.
//! - [`route`]: the data path — source delivery → rule match → mapping → publish to every
//!   sink → settle the source.
//! - [`admin`]: `/metrics`, `/health`, `/ready`, `/api/routes`.
//!
//! The binary is `polybridge` (`src/main.rs`); this library is what it runs, and what the
//! tests drive.

pub mod admin;
pub mod config;
pub mod filter;
pub mod mapping;
pub mod metrics;
pub mod route;
pub mod template;
pub mod yaml;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use polybridge::Broker;
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics::RouteMetrics;
use crate::route::Route;

/// A running bridge: its routes and how to stop them.
pub struct Bridge {
    /// The routes, for the admin server and tests.
    pub routes: Vec<Arc<Route>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Connects every broker a config names (once per name).
pub async fn connect_brokers(config: &Config) -> anyhow::Result<BTreeMap<String, Arc<dyn Broker>>> {
    let mut out = BTreeMap::new();
    for (name, b) in &config.brokers {
        let broker = polybridge::connect_url(&b.url)
            .await
            .map_err(|e| anyhow::anyhow!("broker {name:?} ({}): {e}", b.url))?;
        out.insert(name.clone(), broker);
    }
    Ok(out)
}

impl Bridge {
    /// Starts every route of `config` on `brokers`; routes drain for up to `drain` on stop.
    pub fn start(
        config: Config,
        brokers: &BTreeMap<String, Arc<dyn Broker>>,
        drain: Duration,
    ) -> anyhow::Result<Bridge> {
        let get = |name: &str| {
            brokers
                .get(name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("broker {name:?} is not connected"))
        };
        let (shutdown, watcher) = watch::channel(false);
        let mut routes = Vec::new();
        let mut tasks = Vec::new();
        for rc in config.routes {
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
                source,
                sinks,
                dead_letter,
                metrics: Arc::new(RouteMetrics::default()),
            });
            tasks.push(tokio::spawn(route.clone().run(watcher.clone(), drain)));
            routes.push(route);
        }
        Ok(Bridge {
            routes,
            shutdown,
            tasks,
        })
    }

    /// Stops taking deliveries, drains what is in progress, and returns when every route
    /// has stopped.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
