//! Spawning broker processes in their own process group, each with a watchdog that cleans
//! up when the test process is gone, and signalling them — with the `kill` and `sh`
//! programs, so the crate needs no `unsafe`.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::HarnessError;

/// A free loopback port for `broker` to listen on (bound and released; the broker binds it
/// a moment later).
///
/// The port comes from below the kernel's ephemeral range, never from it: the kernel gives
/// every outgoing connection a local port from that range, and with tests connecting
/// clients in parallel one of them can take a port between this check and the broker's
/// bind. (A RabbitMQ STOMP listener failed with `eaddrinuse` in CI, most likely so: RabbitMQ
/// binds its listeners seconds into its boot.) Ports are handed out in turn from an offset
/// set by the process id, so two calls in one process never return the same port, and two
/// test processes rarely try the same one.
pub fn free_port(broker: &'static str) -> Result<u16, HarnessError> {
    free_loopback_port().map_err(|source| HarnessError::Io {
        broker,
        what: "finding a free port".into(),
        source,
    })
}

/// [`free_port`] for a listener that is not a broker (a bridge's admin port, a webhook).
pub fn free_loopback_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = ephemeral_range_low();
    if ephemeral_low > LOWEST_PORT + 1_000 {
        let span = ephemeral_low - LOWEST_PORT;
        let offset = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let next = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = LOWEST_PORT + offset.wrapping_add(next) % span;
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    // No room below the ephemeral range: let the kernel choose.
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// The lowest port [`free_loopback_port`] hands out: above the registered ports most
/// services use.
const LOWEST_PORT: u32 = 10_000;

/// The first port of the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`;
/// Linux's default, 32768, where it cannot be read).
fn ephemeral_range_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A running broker process group and its watchdog.
#[derive(Debug)]
pub struct Group {
    pub child: Child,
    watchdog: Child,
}

impl Group {
    /// Spawns `command` in a new process group with output to `log`, and a watchdog that,
    /// once this test process has exited, kills the group and runs `cleanup` (shell).
    pub fn spawn(
        broker: &'static str,
        mut command: Command,
        log: &Path,
        cleanup: &str,
    ) -> Result<Group, HarnessError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| HarnessError::Io {
                broker,
                what,
                source,
            }
        };
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io("opening the log"))?;
        let err = out.try_clone().map_err(io("opening the log"))?;
        use std::os::unix::process::CommandExt;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(io("starting it"))?;
        let pgid = child.id();
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 0.2; done; kill -9 -{pgid} 2>/dev/null; {cleanup}",
            parent = std::process::id()
        );
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io("starting its watchdog"))?;
        Ok(Group { child, watchdog })
    }

    /// The process group id (the leader's pid).
    pub fn pgid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM", "KILL", "STOP", "CONT") to the whole group.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args(["-s", signal, "--", &format!("-{}", self.pgid())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Whether the group leader has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits up to `timeout` for the leader to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.exited() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.exited()
    }

    /// Kills the whole group and reaps the leader; stops the watchdog. A frozen group dies
    /// as it is: SIGKILL ends a stopped process, and it is not let run first (a frozen
    /// broker would otherwise handle what waits in its sockets).
    pub fn kill(&mut self) {
        self.signal("KILL");
        self.signal("CONT");
        let _ = self.child.wait();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }

    /// Every pid in the group (from /proc), for checks that nothing is left.
    pub fn pids(&self) -> Vec<u32> {
        group_members(self.pgid())
    }
}

/// The pids whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        if fields.get(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

/// Waits until every thread of every process in group `pgid` is stopped (SIGSTOP takes
/// effect asynchronously: a thread running on another core stops a moment after `kill`
/// returns). Returns whether they all stopped within `timeout`.
pub fn wait_stopped(pgid: u32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        let all_stopped = group_members(pgid).iter().all(|pid| {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return true; // gone
            };
            tasks.flatten().all(|task| {
                std::fs::read_to_string(task.path().join("stat"))
                    .ok()
                    .and_then(|stat| {
                        stat.rsplit_once(')')
                            .and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned))
                    })
                    .is_none_or(|state| matches!(state.as_str(), "T" | "t" | "Z" | "X"))
            })
        });
        if all_stopped {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` is alive (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, r)| !r.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{ephemeral_range_low, free_loopback_port, LOWEST_PORT};

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let ephemeral_low = ephemeral_range_low();
        let ports: Vec<u16> = (0..50).map(|_| free_loopback_port().unwrap()).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            ports.len(),
            "a port handed out twice: {ports:?}"
        );
        for port in ports {
            if ephemeral_low > LOWEST_PORT + 1_000 {
                assert!(
                    (LOWEST_PORT..ephemeral_low).contains(&u32::from(port)),
                    "{port}"
                );
            }
            std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }
}
