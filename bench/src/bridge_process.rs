//! The real `polybridge` bridge binary, run as a subprocess of the benchmark: started on a
//! rule file with an admin listener on a free port ([`BridgeProcess`]), its memory read
//! from `/proc`, its route histograms read from `/metrics`. Used by the memory runs
//! (`memory.rs`) and, with `--latency-bridge process`, by the latency series.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use polybridge_bridge::metrics::{HistogramSnapshot, BUCKETS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::raw::Endpoint;

/// The bridge binary: `--bridge-bin`, else `polybridge` next to this program (same
/// target directory and profile: build it with `cargo build [--release] -p
/// polybridge-bridge --bin polybridge`).
pub fn bridge_bin(arg: Option<&Path>) -> Result<PathBuf> {
    let path = match arg {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("this program has no directory"))?
            .join("polybridge"),
    };
    if !path.is_file() {
        bail!(
            "bridge binary {} not found: build it first (cargo build [--release] -p polybridge-bridge --bin polybridge) or pass --bridge-bin",
            path.display()
        );
    }
    Ok(path)
}

/// A running bridge subprocess; killed when dropped.
pub struct BridgeProcess {
    child: tokio::process::Child,
    pid: u32,
    admin_port: u16,
    dir: PathBuf,
}

impl BridgeProcess {
    /// Starts `bin run --config <file>` with `routes_yaml` (the `brokers:` and `routes:`
    /// blocks) and an admin listener on a free port, and waits until `/ready` answers 200.
    pub async fn start(bin: &Path, routes_yaml: &str, tag: &str) -> Result<BridgeProcess> {
        let admin_port = free_port()?;
        let dir = std::env::temp_dir().join(format!("pbbench-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("rules.yaml");
        std::fs::write(
            &file,
            format!("{routes_yaml}admin: {{ listen: \"127.0.0.1:{admin_port}\" }}\n"),
        )?;
        let child = tokio::process::Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&file)
            .arg("--watch-interval")
            .arg("0s")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the bridge exited at once"))?;
        let mut p = BridgeProcess {
            child,
            pid,
            admin_port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!("the bridge exited with {status} before it was ready");
            }
            if http_get(admin_port, "/ready")
                .await
                .is_ok_and(|r| r.0 == 200)
            {
                break;
            }
            if Instant::now() > deadline {
                let body = http_get(p.admin_port, "/ready").await.map(|r| r.1);
                bail!("the bridge was not ready within 60 s: {body:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(p)
    }

    /// `VmRSS` and `VmHWM` in MiB, and the thread count.
    pub fn rss(&self) -> Result<(f64, f64, u64)> {
        let status = format!("/proc/{}/status", self.pid);
        let [rss, hwm, threads] = status_fields(&status, ["VmRSS:", "VmHWM:", "Threads:"])?;
        Ok((rss / 1024.0, hwm / 1024.0, threads as u64))
    }

    /// `RssAnon` (heap, stacks) and `RssFile` (mapped pages of the binary and shared
    /// libraries) in MiB.
    pub fn rss_split(&self) -> Result<(f64, f64)> {
        let status = format!("/proc/{}/status", self.pid);
        let [anon, file] = status_fields(&status, ["RssAnon:", "RssFile:"])?;
        Ok((anon / 1024.0, file / 1024.0))
    }

    /// Histogram `name` (e.g. `polybridge_route_handoff_seconds`) of route `route`, as
    /// the bridge's `/metrics` shows it now.
    pub async fn histogram(&self, name: &str, route: &str) -> Result<HistogramSnapshot> {
        let (status, body) = http_get(self.admin_port, "/metrics").await?;
        if status != 200 {
            bail!("the bridge's /metrics answered {status}");
        }
        parse_histogram(&body, name, route)
    }

    /// Stops the bridge (SIGKILL: its state does not matter after a measurement).
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16> {
    Ok(polybridge_testkit::free_loopback_port()?)
}

/// A plain HTTP/1.0 GET on the admin port: (status, body).
async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await??;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP answer: {out:?}"))?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// Histogram `name` of route `route` from the Prometheus text of `/metrics` (cumulative
/// buckets over [`BUCKETS`], then `+Inf`, and the sum in seconds) as a snapshot.
pub fn parse_histogram(metrics: &str, name: &str, route: &str) -> Result<HistogramSnapshot> {
    let bucket = format!("{name}_bucket{{route=\"{route}\",le=\"");
    let sum_line = format!("{name}_sum{{route=\"{route}\"}} ");
    let mut cumulative = Vec::new();
    let mut sum_secs = None;
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix(&bucket) {
            let n = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("not a bucket count: {line:?}"))?;
            cumulative.push(n);
        } else if let Some(v) = line.strip_prefix(&sum_line) {
            sum_secs = Some(
                v.parse::<f64>()
                    .map_err(|e| anyhow!("not a sum: {line:?}: {e}"))?,
            );
        }
    }
    let mut snapshot = HistogramSnapshot::default();
    if cumulative.len() != snapshot.counts.len() {
        bail!(
            "/metrics has {} buckets of {name} for route {route}, not {}",
            cumulative.len(),
            BUCKETS.len() + 1
        );
    }
    let mut below = 0;
    for (count, up_to) in snapshot.counts.iter_mut().zip(&cumulative) {
        *count = up_to
            .checked_sub(below)
            .ok_or_else(|| anyhow!("the buckets of {name} are not cumulative"))?;
        below = *up_to;
    }
    let sum_secs = sum_secs.ok_or_else(|| anyhow!("/metrics has no {name}_sum for {route}"))?;
    snapshot.sum_nanos = (sum_secs * 1e9).round() as u64;
    Ok(snapshot)
}

/// The `brokers:` and `routes:` blocks for routes `pairs` (source, sink, source name, sink
/// name); broker `bN` is the N-th distinct URL. `route_options`: lines added to every
/// route (e.g. `    max_in_flight: 64\n`).
pub fn routes_yaml(
    pairs: &[(&Endpoint, &Endpoint, String, String)],
    route_options: &str,
) -> String {
    let mut urls: Vec<String> = Vec::new();
    let mut id = |url: &str| match urls.iter().position(|u| u == url) {
        Some(i) => format!("b{i}"),
        None => {
            urls.push(url.to_string());
            format!("b{}", urls.len() - 1)
        }
    };
    let mut routes = String::from("routes:\n");
    for (i, (src, dst, s, d)) in pairs.iter().enumerate() {
        let sb = id(&subprocess_url(&src.url));
        let db = id(&subprocess_url(&dst.url));
        routes.push_str(&format!(
            "  - name: r{i}\n{route_options}    from: {}\n    to:\n      - {{ broker: {db}, destination: \"{}\" }}\n",
            src.source_yaml(s).replacen("broker: src", &format!("broker: {sb}"), 1),
            dst.sink_destination(d)
        ));
    }
    let mut brokers = String::from("brokers:\n");
    for (i, u) in urls.iter().enumerate() {
        brokers.push_str(&format!("  b{i}: {{ url: \"{u}\" }}\n"));
    }
    brokers + &routes
}

/// The URL for the bridge subprocess: its own MQTT client id (one MQTT client id per
/// connection, or Mosquitto disconnects the older one).
fn subprocess_url(url: &str) -> String {
    url.replace("client_id=pbbench", "client_id=pbbenchsub")
}

/// The numbers of the lines named `names` of a `/proc/<pid>/status` file (kB for sizes).
pub fn status_fields<const N: usize>(path: &str, names: [&str; N]) -> Result<[f64; N]> {
    let s = std::fs::read_to_string(path)?;
    let mut out = [0.0; N];
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = s
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("no {name} in {path}"))?;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::parse_histogram;
    use polybridge_bridge::metrics::{render, RouteMetrics};
    use std::time::Duration;

    #[test]
    fn a_histogram_read_back_from_metrics_has_the_counts_and_sum_of_the_route() {
        let m = RouteMetrics::default();
        m.handoff.observe(Duration::from_micros(7));
        m.handoff.observe_n(Duration::from_micros(300), 3);
        m.handoff.observe(Duration::from_secs(20));
        m.latency.observe(Duration::from_millis(2));
        let other = RouteMetrics::default();
        other.handoff.observe(Duration::from_micros(40));
        let mut text = String::new();
        render(&[("r0", &m), ("r1", &other)], &mut text);

        let handoff = parse_histogram(&text, "polybridge_route_handoff_seconds", "r0").unwrap();
        assert_eq!(handoff.counts, m.handoff.snapshot().counts);
        assert_eq!(handoff.count(), 5);
        let sum = m.handoff.snapshot().sum_nanos as f64;
        assert!((handoff.sum_nanos as f64 - sum).abs() < 1e-9 * sum);
        let latency = parse_histogram(&text, "polybridge_route_latency_seconds", "r0").unwrap();
        assert_eq!(latency.counts, m.latency.snapshot().counts);
        assert!(parse_histogram(&text, "polybridge_route_handoff_seconds", "r9").is_err());
    }
}
