//! Deadlines: every call that waits on a broker takes one, so no call can hang forever.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// A point in time by which an operation must complete.
///
/// Cancellation is the other half: dropping the future of any call cancels the wait. What
/// the broker already did stays done (a message may have been published), which is why
/// callers that retry after a [`Error::Timeout`] get at-least-once, not exactly-once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Deadline {
            at: Instant::now() + timeout,
        }
    }

    /// A deadline at `at`.
    pub fn at(at: Instant) -> Self {
        Deadline { at }
    }

    /// The instant.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn has_passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Runs `operation` until the deadline; past it, returns [`Error::Timeout`] naming the
    /// broker, the operation and the destination.
    pub async fn run<T, F>(
        self,
        broker: &'static str,
        operation: &'static str,
        destination: &str,
        future: F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        match tokio::time::timeout_at(self.at, future).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                broker,
                operation,
                destination: destination.to_owned(),
                after: self.at.saturating_duration_since(started),
            }),
        }
    }
}

/// Parses a duration written as a whole number and a unit: `250ms`, `5s`, `2m`, `1h`. URL
/// options and rule files use this one syntax everywhere.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let invalid = || format!("invalid duration {s:?}: use e.g. 250ms, 5s, 2m, 1h");
    let n: u64 = num.parse().map_err(|_| invalid())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn run_times_out_with_a_named_error() {
        let d = Deadline::after(Duration::from_millis(50));
        let r: Result<()> = d
            .run("memory", "publish", "t1", std::future::pending())
            .await;
        let e = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.starts_with("memory: publish on t1 did not complete within"),
            "{e}"
        );
        assert!(d.has_passed());
    }

    #[tokio::test]
    async fn run_passes_results_through() {
        let d = Deadline::after(Duration::from_secs(5));
        let r = d.run("memory", "publish", "t1", async { Ok(7) }).await;
        assert_eq!(r.ok(), Some(7));
        assert!(d.remaining() > Duration::from_secs(4));
    }
}
