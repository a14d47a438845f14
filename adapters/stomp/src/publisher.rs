//! Publishing: one connection, every SEND with a `receipt`, resolved on its RECEIPT.
//!
//! A single task owns the connection. It writes SEND frames as requests arrive (several
//! requests in one write when they queue up), keeps a map `receipt id → waiting publish`,
//! and resolves each on its RECEIPT. An ERROR naming a receipt fails that publish with the
//! broker's message; an ERROR without one, or a broken connection, fails every publish
//! still waiting with a retryable error (the broker may or may not have stored those). The
//! next publish reconnects.
//!
//! Group commit (ActiveMQ, opt-in with `group_commit=N`): when at least N publishes queued
//! up together they go out in one transaction, `BEGIN`, their `SEND`s, `COMMIT` with a
//! receipt, and all resolve on the COMMIT's RECEIPT. ActiveMQ stores a persistent SEND of
//! one connection, and syncs its journal, before it reads the next frame, so a
//! connection's confirmed publishes run at one disk sync each; a transaction is stored
//! with one sync at its COMMIT. It is off by default because ActiveMQ hands a transacted
//! message to consumers only after its COMMIT is stored, while a plain persistent SEND is
//! dispatched as it is being stored: with `group_commit=2` the end-to-end latency at a
//! moderate rate grew from ~1 ms to 7–12 ms at p50 (docs/benchmarks). Each SEND keeps its
//! own receipt, so an ERROR still names the message it is about. A connection that breaks
//! before the COMMIT's receipt rolls the transaction back: its publishes fail retryably,
//! none of them stored. Fewer than N queued publishes are sent each on its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use polybridge_core::{Deadline, Error, Message, Receipt, Result};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{Flavor, StompConfig};
use crate::connection::{error_text, Link};
use crate::frame::Frame;
use crate::mapping;
use crate::BROKER;

/// Requests waiting for the publisher task.
const QUEUE: usize = 1024;
/// After a failed connect, publishes fail at once for this long instead of each trying.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

enum Command {
    Publish {
        destination: String,
        frame: Frame,
        reply: oneshot::Sender<Result<Receipt>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// The publishing half of a [`crate::StompBroker`].
pub(crate) struct StompPublisher {
    tx: mpsc::Sender<Command>,
    closed: AtomicBool,
    flavor: Flavor,
    max_payload: Option<usize>,
}

impl StompPublisher {
    /// Starts the publisher task on an established connection.
    pub fn start(config: Arc<StompConfig>, link: Link) -> StompPublisher {
        let (tx, rx) = mpsc::channel(QUEUE);
        let flavor = link.flavor;
        let max_payload = config.max_payload;
        tokio::spawn(run(config, Some(link), rx));
        StompPublisher {
            tx,
            closed: AtomicBool::new(false),
            flavor,
            max_payload,
        }
    }

    /// The SEND frame for `message` to `destination`.
    pub fn frame(&self, destination: &str, message: &Message) -> Result<Frame> {
        if let Some(limit) = self.max_payload {
            if message.payload.len() > limit {
                return Err(Error::PayloadTooLarge {
                    broker: BROKER,
                    destination: destination.to_owned(),
                    size: message.payload.len(),
                    limit,
                });
            }
        }
        let dest = mapping::destination(self.flavor, destination)?;
        let mut frame = Frame::new("SEND")
            .with_header("destination", dest)
            .with_header("persistent", "true")
            .with_body(message.payload.clone());
        mapping::encode_headers(message, &mut frame);
        Ok(frame)
    }

    pub async fn publish(
        &self,
        destination: &str,
        message: &Message,
        deadline: Deadline,
    ) -> Result<Receipt> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(BROKER, "the publisher"));
        }
        let frame = self.frame(destination, message)?;
        let (reply, answer) = oneshot::channel();
        deadline
            .run(BROKER, "publish", destination, async {
                self.tx
                    .send(Command::Publish {
                        destination: destination.to_owned(),
                        frame,
                        reply,
                    })
                    .await
                    .map_err(|_| Error::closed(BROKER, "the publisher"))?;
                answer
                    .await
                    .map_err(|_| Error::closed(BROKER, "the publisher"))?
            })
            .await
    }

    pub async fn close(&self, deadline: Deadline) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        let (reply, done) = oneshot::channel();
        deadline
            .run(BROKER, "close", "the publisher", async {
                if self.tx.send(Command::Close { reply }).await.is_ok() {
                    let _ = done.await;
                }
                Ok(())
            })
            .await
    }
}

/// A publish waiting for the broker: its destination and its caller.
type Publish = (String, oneshot::Sender<Result<Receipt>>);

/// What a receipt id stands for.
enum Wait {
    /// A SEND outside a transaction: its RECEIPT confirms the publish.
    Publish(Publish),
    /// A SEND inside transaction number `tx` (receipt id `t<tx>` of its COMMIT), at `index`
    /// of its publishes: its RECEIPT only says the broker took it into the transaction; an
    /// ERROR naming it is about this message.
    InTransaction { tx: u64, index: usize },
    /// A COMMIT: its RECEIPT confirms every publish of the transaction (`None` where one
    /// already failed).
    Commit(Vec<Option<Publish>>),
}

impl Wait {
    /// Hands each publish this receipt id confirms to `each` (none for a SEND inside a
    /// transaction).
    fn for_each_publish(self, mut each: impl FnMut(Publish)) {
        match self {
            Wait::Publish(p) => each(p),
            Wait::InTransaction { .. } => {}
            Wait::Commit(publishes) => publishes.into_iter().flatten().for_each(each),
        }
    }

    /// Whether every caller it confirms gave up (deadline): nothing left to wait for.
    fn abandoned(&self) -> bool {
        match self {
            Wait::Publish((_, reply)) => reply.is_closed(),
            Wait::InTransaction { .. } => false,
            Wait::Commit(publishes) => publishes.iter().flatten().all(|(_, r)| r.is_closed()),
        }
    }
}

type Waiting = HashMap<String, Wait>;

/// The id of transaction number `tx`, also the receipt id of its COMMIT.
fn transaction_id(tx: u64) -> String {
    format!("t{tx}")
}

/// Fails with `reason` (the broker refused it) the publish that receipt `id` is about: the
/// SEND's own, or the one a SEND inside a transaction carries. The other publishes of a
/// failed COMMIT fail retryably.
fn refuse(waiting: &mut Waiting, id: &str, reason: &str) {
    let refused = |(destination, reply): Publish| {
        let _ = reply.send(Err(Error::permanent(
            BROKER,
            destination,
            format!("the broker refused the message: {reason}"),
        )));
    };
    match waiting.remove(id) {
        Some(Wait::Publish(p)) => refused(p),
        Some(Wait::InTransaction { tx, index }) => {
            if let Some(Wait::Commit(publishes)) = waiting.get_mut(&transaction_id(tx)) {
                if let Some(p) = publishes.get_mut(index).and_then(Option::take) {
                    refused(p);
                }
            }
        }
        Some(commit @ Wait::Commit(_)) => commit.for_each_publish(|(destination, reply)| {
            let _ = reply.send(Err(Error::transient(
                BROKER,
                destination,
                format!(
                    "the broker refused the transaction this message was in (not stored): {reason}"
                ),
            )));
        }),
        None => {}
    }
}

fn fail_all(waiting: &mut Waiting, error: &Error) {
    for (_, wait) in waiting.drain() {
        wait.for_each_publish(|(destination, reply)| fail(destination, reply, error));
    }
}

/// Fails one publish after `error` broke the connection: retryably, the broker may or may
/// not have stored it.
fn fail(destination: String, reply: oneshot::Sender<Result<Receipt>>, error: &Error) {
    let e = match error {
        Error::Connection { reason, .. } => Error::Transient {
            broker: BROKER,
            destination,
            reason: format!(
                "the connection broke before the broker confirmed the message (it may or may not be stored): {reason}"
            ),
            source: None,
        },
        other => Error::transient(BROKER, destination, other.to_string()),
    };
    let _ = reply.send(Err(e));
}

/// Whether an ERROR text names `destination` (its name without the STOMP prefix).
fn names(text: &str, destination: &str) -> bool {
    let name = ["/exchange/", "/amq/queue/", "/queue/", "/topic/"]
        .iter()
        .find_map(|p| destination.strip_prefix(p))
        .unwrap_or(destination);
    let name = name.split('/').next().unwrap_or(name);
    !name.is_empty() && text.contains(&format!("'{name}'"))
}

async fn next_frame(link: &mut Option<Link>) -> Result<Frame> {
    match link.as_mut() {
        Some(l) => l.recv().await,
        None => futures::future::pending().await,
    }
}

/// Sends `sends` on `l`, each with a receipt recorded in `waiting`: in one transaction
/// (group commit, see the module doc) on ActiveMQ when there are at least `group_commit`,
/// else each on its own; then flushes. An error breaks the connection: the publishes not
/// yet written have failed, the ones written wait in `waiting` for the caller to fail them.
async fn send(
    l: &mut Link,
    group_commit: Option<usize>,
    sends: Vec<(String, Frame, oneshot::Sender<Result<Receipt>>)>,
    waiting: &mut Waiting,
    next_id: &mut u64,
) -> Result<()> {
    let mut next = || {
        *next_id += 1;
        *next_id
    };
    // The transaction's number, and its id (also the COMMIT's receipt id).
    let grouped = group_commit.is_some_and(|min| sends.len() >= min);
    let tx = (l.flavor == Flavor::ActiveMq && grouped).then(|| {
        let n = next();
        (n, transaction_id(n))
    });
    let mut written = match &tx {
        Some((_, id)) => {
            l.feed(Frame::new("BEGIN").with_header("transaction", id.clone()))
                .await
        }
        None => Ok(()),
    };
    // The publishes in the transaction, confirmed together by its COMMIT.
    let mut committed = Vec::new();
    for (destination, mut frame, reply) in sends {
        if let Err(e) = &written {
            let _ = reply.send(Err(Error::transient(BROKER, destination, e.to_string())));
            continue;
        }
        let id = format!("p{}", next());
        frame.header_push("receipt", id.clone());
        if let Some((_, tx_id)) = &tx {
            frame.header_push("transaction", tx_id.clone());
        }
        match l.feed(frame).await {
            Ok(()) => {
                let wait = match &tx {
                    Some((n, _)) => {
                        committed.push(Some((destination, reply)));
                        Wait::InTransaction {
                            tx: *n,
                            index: committed.len() - 1,
                        }
                    }
                    None => Wait::Publish((destination, reply)),
                };
                waiting.insert(id, wait);
                if waiting.len().is_multiple_of(1024) {
                    // Forget publishes whose callers gave up (deadline).
                    waiting.retain(|_, w| !w.abandoned());
                }
            }
            // This frame only (e.g. too large to encode): the connection is fine.
            Err(e @ Error::Permanent { .. }) => {
                let _ = reply.send(Err(e));
            }
            Err(e) => {
                let _ = reply.send(Err(Error::transient(BROKER, destination, e.to_string())));
                written = Err(e);
            }
        }
    }
    if let Some((_, tx_id)) = tx {
        if written.is_ok() {
            let commit = Frame::new("COMMIT")
                .with_header("transaction", tx_id.clone())
                .with_header("receipt", tx_id.clone());
            written = l.feed(commit).await;
        }
        waiting.insert(tx_id, Wait::Commit(committed));
    }
    written?;
    l.flush().await
}

async fn run(config: Arc<StompConfig>, mut link: Option<Link>, mut rx: mpsc::Receiver<Command>) {
    let mut waiting: Waiting = HashMap::new();
    let mut next_id: u64 = 0;
    let mut closing: Option<oneshot::Sender<()>> = None;
    let mut last_failed: Option<Instant> = None;
    loop {
        if closing.is_some() && waiting.is_empty() {
            if let Some(l) = link.take() {
                l.disconnect(Duration::from_secs(2)).await;
            }
            if let Some(reply) = closing.take() {
                let _ = reply.send(());
            }
            // Refuse whatever still arrives.
            rx.close();
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Command::Publish { reply, .. } => {
                        let _ = reply.send(Err(Error::closed(BROKER, "the publisher")));
                    }
                    Command::Close { reply } => {
                        let _ = reply.send(());
                    }
                }
            }
            return;
        }
        tokio::select! {
            cmd = rx.recv(), if closing.is_none() => {
                let Some(cmd) = cmd else {
                    // Every handle is gone.
                    if let Some(l) = link.take() {
                        l.disconnect(Duration::from_secs(2)).await;
                    }
                    return;
                };
                let mut batch = vec![cmd];
                while batch.len() < 256 {
                    match rx.try_recv() {
                        Ok(c) => batch.push(c),
                        Err(_) => break,
                    }
                }
                // The publishes to send now, after the connection is there.
                let mut sends = Vec::with_capacity(batch.len());
                for cmd in batch {
                    match cmd {
                        Command::Close { reply } => closing = Some(reply),
                        Command::Publish { destination, frame, reply } => {
                            if reply.is_closed() {
                                continue; // the caller gave up (deadline): do not send
                            }
                            if link.is_none() {
                                if last_failed.is_some_and(|t| t.elapsed() < RECONNECT_PAUSE) {
                                    let _ = reply.send(Err(Error::transient(
                                        BROKER,
                                        destination,
                                        format!("not connected to {}; reconnecting", config.url),
                                    )));
                                    continue;
                                }
                                match Link::connect(&config, None).await {
                                    Ok(l) => {
                                        tracing::info!(endpoint = %config.url, "stomp publisher reconnected");
                                        link = Some(l);
                                        last_failed = None;
                                    }
                                    Err(e) => {
                                        last_failed = Some(Instant::now());
                                        let _ = reply.send(Err(e));
                                        continue;
                                    }
                                }
                            }
                            sends.push((destination, frame, reply));
                        }
                    }
                }
                if let (Some(l), false) = (link.as_mut(), sends.is_empty()) {
                    let sent = send(l, config.group_commit, sends, &mut waiting, &mut next_id);
                    if let Err(e) = sent.await {
                        fail_all(&mut waiting, &e);
                        link = None;
                    }
                }
            }
            frame = next_frame(&mut link) => {
                match frame {
                    Ok(f) if f.command == "RECEIPT" => {
                        if let Some(wait) = f.header("receipt-id").and_then(|id| waiting.remove(id)) {
                            wait.for_each_publish(|(_, reply)| {
                                let _ = reply.send(Ok(Receipt::default()));
                            });
                        }
                    }
                    Ok(f) if f.command == "ERROR" => {
                        let text = error_text(&f);
                        match f.header("receipt-id").filter(|id| waiting.contains_key(*id)) {
                            Some(id) => refuse(&mut waiting, id, &text),
                            None => {
                                tracing::warn!(endpoint = %config.url, error = %text, "stomp publisher connection got an ERROR frame");
                                // No receipt-id (RabbitMQ closes the channel, e.g. for a
                                // missing exchange): blame the publishes whose destination
                                // the text names, or the only one waiting.
                                let single = waiting.len() == 1;
                                let blamed: Vec<String> = waiting
                                    .iter()
                                    .filter(|(_, w)| match w {
                                        Wait::Publish((d, _)) => single || names(&text, d),
                                        Wait::InTransaction { .. } | Wait::Commit(_) => false,
                                    })
                                    .map(|(id, _)| id.clone())
                                    .collect();
                                for id in blamed {
                                    refuse(&mut waiting, &id, &text);
                                }
                            }
                        }
                        // The server closes the connection after an ERROR frame.
                        fail_all(&mut waiting, &Error::Connection {
                            broker: BROKER,
                            endpoint: config.url.to_string(),
                            reason: format!("the broker sent ERROR: {text}"),
                            source: None,
                        });
                        link = None;
                    }
                    Ok(f) => tracing::debug!(command = %f.command, "stomp publisher ignored a frame"),
                    Err(e) => {
                        if !waiting.is_empty() {
                            tracing::warn!(error = %e, "stomp publisher connection broke");
                        }
                        fail_all(&mut waiting, &e);
                        link = None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A transaction of three publishes as [`send`] records it: the SENDs p1..p3 in t0.
    fn transaction() -> (Waiting, Vec<oneshot::Receiver<Result<Receipt>>>) {
        let mut waiting = Waiting::new();
        let mut committed = Vec::new();
        let mut answers = Vec::new();
        for index in 0..3 {
            let (reply, answer) = oneshot::channel();
            committed.push(Some((format!("/queue/d{index}"), reply)));
            answers.push(answer);
            waiting.insert(
                format!("p{}", index + 1),
                Wait::InTransaction { tx: 0, index },
            );
        }
        waiting.insert("t0".into(), Wait::Commit(committed));
        (waiting, answers)
    }

    #[test]
    fn an_error_naming_a_send_in_a_transaction_refuses_that_message_and_the_others_are_retryable() {
        let (mut waiting, mut answers) = transaction();
        refuse(&mut waiting, "p2", "bad destination");
        let refused = answers[1].try_recv().unwrap().unwrap_err();
        assert!(matches!(refused, Error::Permanent { .. }), "{refused:?}");
        assert!(refused.to_string().contains("/queue/d1"), "{refused}");
        assert!(answers[0].try_recv().is_err(), "still waiting");
        // The broker then closes the connection: the rest of the transaction is not stored.
        fail_all(&mut waiting, &Error::closed(BROKER, "the connection"));
        for i in [0, 2] {
            let e = answers[i].try_recv().unwrap().unwrap_err();
            assert!(e.is_retryable(), "{e:?}");
        }
        assert!(waiting.is_empty());
    }

    #[test]
    fn the_commit_receipt_confirms_every_publish_and_a_failed_commit_none() {
        let (mut waiting, mut answers) = transaction();
        // RECEIPTs of the SENDs only say the broker took them into the transaction.
        for id in ["p1", "p2", "p3"] {
            waiting
                .remove(id)
                .unwrap()
                .for_each_publish(|_| panic!("{id} confirms nothing"));
        }
        assert!(answers.iter_mut().all(|a| a.try_recv().is_err()));
        waiting
            .remove("t0")
            .unwrap()
            .for_each_publish(|(_, reply)| {
                let _ = reply.send(Ok(Receipt::default()));
            });
        assert!(answers.iter_mut().all(|a| a.try_recv().unwrap().is_ok()));

        let (mut waiting, mut answers) = transaction();
        refuse(&mut waiting, "t0", "commit failed");
        for a in &mut answers {
            let e = a.try_recv().unwrap().unwrap_err();
            assert!(e.is_retryable(), "{e:?}");
        }
    }
}
