//! Memory of the real `polybridge` bridge binary, run as a subprocess:
//! - [`idle_rss`]: `VmRSS` / `VmHWM` after the bridge became ready (`/ready`) on routes
//!   between the benchmark's brokers and idled;
//! - [`outage`]: `VmRSS` sampled every second while a raw publisher feeds the source at a
//!   fixed rate and the sink broker (a private one) is frozen with SIGSTOP; at the end,
//!   every published message must have arrived at the sink (unique sequence numbers).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use serde_json::json;

use crate::bridge_process::{routes_yaml, BridgeProcess};
use crate::raw::{self, Endpoint};

/// Idle RSS of the bridge binary with one route per pair, after `idle` of idling.
pub async fn idle_rss(
    bin: &Path,
    pairs: &[(Endpoint, Endpoint)],
    idle: Duration,
) -> Result<serde_json::Value> {
    let mut named = Vec::new();
    for (src, dst) in pairs {
        let s = crate::unique_name("is");
        let d = crate::unique_name("id");
        raw::prepare(src, &s).await?;
        raw::prepare(dst, &d).await?;
        named.push((src, dst, s, d));
    }
    let yaml = routes_yaml(&named, "");
    let bridge = BridgeProcess::start(bin, &yaml, "idle").await?;
    let (rss_ready, _, _) = bridge.rss()?;
    tokio::time::sleep(idle).await;
    let (rss, hwm, threads) = bridge.rss()?;
    let (anon, file) = bridge.rss_split()?;
    bridge.stop().await;
    for (src, dst, s, d) in &named {
        raw::cleanup(src, s).await;
        raw::cleanup(dst, d).await;
    }
    Ok(json!({
        "routes": pairs.iter().map(|(s, d)| format!("{}→{}", s.kind.label(), d.kind.label())).collect::<Vec<_>>(),
        "idle_s": idle.as_secs_f64(),
        "rss_at_ready_mib": round1(rss_ready),
        "idle_rss_mib": round1(rss),
        "idle_hwm_mib": round1(hwm),
        "idle_rss_anon_mib": round1(anon),
        "idle_rss_file_mib": round1(file),
        "threads": threads,
    }))
}

/// Options of one outage run.
pub struct Outage {
    /// Messages per second published to the source for the whole run.
    pub rate: u64,
    /// Payload bytes of each message (at least 16: the sequence number is in bytes 8..16).
    pub payload_bytes: usize,
    /// Running before the sink is frozen.
    pub before: Duration,
    /// How long the sink broker is frozen (SIGSTOP).
    pub outage: Duration,
    /// Publishing goes on this long after the sink is resumed.
    pub after: Duration,
}

/// RSS of the bridge binary on route `source` → `sink` while the sink broker (`sink_broker`,
/// a private process) is frozen; checks that every message arrived.
pub async fn outage(
    bin: &Path,
    source: &Endpoint,
    sink: &Endpoint,
    sink_broker: &polybridge_testkit::BrokerProcess,
    o: &Outage,
) -> Result<serde_json::Value> {
    let s = crate::unique_name("os");
    let d = crate::unique_name("od");
    raw::prepare(source, &s).await?;
    raw::prepare(sink, &d).await?;
    let mut sub = raw::subscriber(sink, &d).await?;
    let yaml = routes_yaml(&[(source, sink, s.clone(), d.clone())], "");
    let bridge = BridgeProcess::start(bin, &yaml, "outage").await?;
    let (rss_start, _, _) = bridge.rss()?;

    // Receiver: unique sequence numbers (bytes 8..16 of the payload).
    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel((0usize, 0u64));
    let receiver = tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut duplicates = 0u64;
        loop {
            let p = match tokio::time::timeout(Duration::from_secs(120), sub.next()).await {
                Ok(Ok(arrival)) => arrival.payload,
                Ok(Err(e)) => return Err(e.context("sink subscriber")),
                Err(_) => break,
            };
            let seq = p
                .get(8..16)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes);
            if let Some(seq) = seq {
                if !seen.insert(seq) {
                    duplicates += 1;
                }
                let _ = seen_tx.send((seen.len(), duplicates));
            }
        }
        anyhow::Ok(())
    });

    // Publisher at a fixed rate for before + outage + after.
    let total = o.before + o.outage + o.after;
    let rate = o.rate.max(1);
    let size = o.payload_bytes.max(16);
    let mut publisher = raw::publisher(source, &s).await?;
    let publishing = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let end = Instant::now() + total;
        let mut seq = 0u64;
        while Instant::now() < end {
            tick.tick().await;
            let mut v = vec![b'x'; size];
            v[8..16].copy_from_slice(&seq.to_le_bytes());
            publisher.publish(Bytes::from(v)).await?;
            seq += 1;
            if seq.is_multiple_of(64) {
                publisher.flush().await?;
            }
        }
        publisher.flush().await?;
        anyhow::Ok(seq)
    });

    // RSS every second; the sink frozen from `before` to `before + outage`.
    let started = Instant::now();
    let mut samples: Vec<(f64, &'static str, f64)> = Vec::new();
    let mut paused = false;
    let mut resumed = false;
    let mut resumed_at = None;
    let sample = |b: &BridgeProcess, phase, samples: &mut Vec<(f64, &'static str, f64)>| {
        if let Ok((rss, _, _)) = b.rss() {
            samples.push((started.elapsed().as_secs_f64(), phase, rss));
        }
    };
    while started.elapsed() < total {
        let t = started.elapsed();
        if !paused && t >= o.before {
            sink_broker
                .pause()
                .map_err(|e| anyhow!("pausing the sink: {e}"))?;
            paused = true;
        }
        if paused && !resumed && t >= o.before + o.outage {
            sink_broker
                .resume()
                .map_err(|e| anyhow!("resuming the sink: {e}"))?;
            resumed = true;
            resumed_at = Some(Instant::now());
        }
        let phase = match (paused, resumed) {
            (false, _) => "before",
            (true, false) => "outage",
            (true, true) => "after",
        };
        sample(&bridge, phase, &mut samples);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if paused && !resumed {
        sink_broker
            .resume()
            .map_err(|e| anyhow!("resuming the sink: {e}"))?;
        resumed_at = Some(Instant::now());
    }
    let sent = publishing.await??;
    // Drain: sample until every message arrived (or 180 s without completion).
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut next_sample = Instant::now();
    while seen_rx.borrow_and_update().0 < sent as usize && Instant::now() < deadline {
        if Instant::now() >= next_sample {
            sample(&bridge, "after", &mut samples);
            next_sample += Duration::from_secs(1);
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), seen_rx.changed()).await;
    }
    let drained_s = resumed_at.map(|r| r.elapsed().as_secs_f64());
    sample(&bridge, "after", &mut samples);
    let (_, hwm, _) = bridge.rss()?;
    bridge.stop().await;
    receiver.abort();
    let (received, duplicates) = *seen_rx.borrow();
    raw::cleanup(source, &s).await;
    raw::cleanup(sink, &d).await;
    let max_of = |phase: &str| {
        samples
            .iter()
            .filter(|s| s.1 == phase)
            .map(|s| s.2)
            .fold(f64::NAN, f64::max)
    };
    let result = json!({
        "route": format!("{}→{}", source.kind.label(), sink.kind.label()),
        "rate_msgs_per_s": o.rate,
        "payload_bytes": size,
        "outage_s": o.outage.as_secs_f64(),
        "published": sent,
        "received_unique": received,
        "lost": sent.saturating_sub(received as u64),
        "duplicates": duplicates,
        "rss_start_mib": round1(rss_start),
        "max_rss_before_mib": round1(max_of("before")),
        "max_rss_outage_mib": round1(max_of("outage")),
        "max_rss_after_mib": round1(max_of("after")),
        "hwm_mib": round1(hwm),
        "all_arrived_s_after_resume": drained_s.map(round1),
        "rss_samples_mib": samples.iter().map(|s| json!([round1(s.0), s.1, round1(s.2)])).collect::<Vec<_>>(),
    });
    if (received as u64) < sent {
        bail!(
            "{} of {sent} messages arrived at the sink: {result}",
            received
        );
    }
    Ok(result)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
