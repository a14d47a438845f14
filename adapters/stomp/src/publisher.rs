//! Publishing: one connection, every SEND with a `receipt`, resolved on its RECEIPT.
//!
//! A single task owns the connection. It writes SEND frames as requests arrive (several
//! requests in one write when they queue up), keeps a map `receipt id → waiting publish`,
//! and resolves each on its RECEIPT. An ERROR naming a receipt fails that publish with the
//! broker's message; an ERROR without one, or a broken connection, fails every publish
//! still waiting with a retryable error (the broker may or may not have stored those). The
//! next publish reconnects.

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

type Waiting = HashMap<String, (String, oneshot::Sender<Result<Receipt>>)>;

fn fail_all(waiting: &mut Waiting, error: &Error) {
    for (_, (destination, reply)) in waiting.drain() {
        let e = match error {
            Error::Connection { reason, .. } => Error::Transient {
                broker: BROKER,
                destination: destination.clone(),
                reason: format!(
                    "the connection broke before the broker confirmed the message (it may or may not be stored): {reason}"
                ),
                source: None,
            },
            other => Error::transient(BROKER, destination.clone(), other.to_string()),
        };
        let _ = reply.send(Err(e));
    }
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
                let mut wrote = false;
                for cmd in batch {
                    match cmd {
                        Command::Close { reply } => closing = Some(reply),
                        Command::Publish { destination, mut frame, reply } => {
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
                            let Some(l) = link.as_mut() else { continue };
                            next_id += 1;
                            let id = format!("p{next_id}");
                            frame.header_push("receipt", id.clone());
                            match l.feed(frame).await {
                                Ok(()) => {
                                    wrote = true;
                                    waiting.insert(id, (destination, reply));
                                    if waiting.len().is_multiple_of(1024) {
                                        // Forget publishes whose callers gave up (deadline).
                                        waiting.retain(|_, (_, r)| !r.is_closed());
                                    }
                                }
                                Err(e @ Error::Permanent { .. }) => {
                                    let _ = reply.send(Err(e));
                                }
                                Err(e) => {
                                    let _ = reply.send(Err(Error::transient(BROKER, destination, e.to_string())));
                                    fail_all(&mut waiting, &e);
                                    link = None;
                                }
                            }
                        }
                    }
                }
                if wrote {
                    if let Some(l) = link.as_mut() {
                        if let Err(e) = l.flush().await {
                            fail_all(&mut waiting, &e);
                            link = None;
                        }
                    }
                }
            }
            frame = next_frame(&mut link) => {
                match frame {
                    Ok(f) if f.command == "RECEIPT" => {
                        if let Some((_, reply)) = f.header("receipt-id").and_then(|id| waiting.remove(id)) {
                            let _ = reply.send(Ok(Receipt::default()));
                        }
                    }
                    Ok(f) if f.command == "ERROR" => {
                        let text = error_text(&f);
                        match f.header("receipt-id").and_then(|id| waiting.remove(id)) {
                            Some((destination, reply)) => {
                                let _ = reply.send(Err(Error::permanent(BROKER, destination, format!("the broker refused the message: {text}"))));
                            }
                            None => {
                                tracing::warn!(endpoint = %config.url, error = %text, "stomp publisher connection got an ERROR frame");
                                // No receipt-id (RabbitMQ closes the channel, e.g. for a
                                // missing exchange): blame the publishes whose destination
                                // the text names, or the only one waiting.
                                let single = waiting.len() == 1;
                                let blamed: Vec<String> = waiting
                                    .iter()
                                    .filter(|(_, (d, _))| single || names(&text, d))
                                    .map(|(id, _)| id.clone())
                                    .collect();
                                for id in blamed {
                                    if let Some((destination, reply)) = waiting.remove(&id) {
                                        let _ = reply.send(Err(Error::permanent(BROKER, destination, format!("the broker refused the message: {text}"))));
                                    }
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
