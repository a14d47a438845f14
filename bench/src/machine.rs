//! CPU time of the whole machine (every process: the brokers as well as the bridge), read
//! from `/proc/stat`.
//!
//! A route runs its source broker, its sink broker and the bridge on the same cores. When
//! those cores are saturated, the bridged rate is bounded by the CPU time the two halves of
//! the work (consuming at the source, publishing to the sink) need per message, not by the
//! slower half alone: this module measures that CPU time so the benchmark can show it.

use std::time::Instant;

/// A reading of the machine's CPU counters.
#[derive(Clone, Copy, Debug)]
pub struct MachineCpu {
    /// Ticks spent busy (user, nice, system, irq, softirq, steal) on all cores.
    busy: u64,
    /// Ticks spent idle while a disk read or write was outstanding (iowait).
    iowait: u64,
    /// Ticks the hypervisor ran something else while this machine wanted to run (steal;
    /// counted in `busy` too).
    steal: u64,
    /// All ticks (busy plus idle and iowait) on all cores.
    total: u64,
    /// When it was read.
    at: Instant,
}

/// The machine's CPU use between two readings.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    /// CPU seconds spent busy, all cores together.
    pub busy_secs: f64,
    /// The average number of cores busy.
    pub busy_cores: f64,
    /// The average number of cores idle waiting for the disk (iowait).
    pub iowait_cores: f64,
    /// The average number of cores taken by the hypervisor (steal; part of `busy_cores`):
    /// on a shared host, CPU this machine wanted and did not get.
    pub steal_cores: f64,
}

impl MachineCpu {
    /// Reads the counters; `None` where `/proc/stat` cannot be read (not Linux).
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
        let total = busy + field(3) + field(4);
        Some(Self {
            busy,
            iowait: field(4),
            steal: field(7),
            total,
            at: Instant::now(),
        })
    }

    /// The CPU used since `self` (needs no tick rate: busy share × cores × wall time).
    pub fn used_since(self) -> Option<CpuUse> {
        let cores = cores();
        let now = Self::now()?;
        let ticks = now.total.saturating_sub(self.total);
        if ticks == 0 {
            return None;
        }
        let share = now.busy.saturating_sub(self.busy) as f64 / ticks as f64;
        let iowait = now.iowait.saturating_sub(self.iowait) as f64 / ticks as f64;
        let steal = now.steal.saturating_sub(self.steal) as f64 / ticks as f64;
        let wall = now.at.duration_since(self.at).as_secs_f64();
        Some(CpuUse {
            busy_secs: share * cores * wall,
            busy_cores: share * cores,
            iowait_cores: iowait * cores,
            steal_cores: steal * cores,
        })
    }
}

/// The number of cores this process may run on.
pub fn cores() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}
