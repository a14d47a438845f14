//! Publishing: core NATS resolves after a flush, JetStream on the stream's PubAck.

use std::sync::atomic::Ordering;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::HeaderMap;
use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use polybridge_core::{Deadline, Error, Message, Outgoing, Position, Publisher, Receipt, Result};

use crate::{mapping, NatsBroker, BROKER};

#[async_trait]
impl Publisher for NatsBroker {
    async fn publish(
        &self,
        destination: &str,
        message: &Message,
        deadline: Deadline,
    ) -> Result<Receipt> {
        self.check_open()?;
        match &self.jetstream {
            None => {
                deadline
                    .run(BROKER, "publish", destination, async {
                        self.send_core(destination, message).await?;
                        self.flush(destination).await?;
                        Ok(Receipt::default())
                    })
                    .await
            }
            Some(_) => deadline
                .run(BROKER, "publish", destination, async {
                    let sent_on = self.reconnects.count();
                    let ack = self.send_jetstream(destination, message).await?;
                    tokio::select! {
                        biased;
                        receipt = self.await_puback(destination, ack) => receipt,
                        () = self.reconnected_since(sent_on) => Err(lost_before_ack(destination)),
                    }
                })
                .await,
        }
    }

    async fn publish_batch(
        &self,
        batch: &[Outgoing<'_>],
        deadline: Deadline,
    ) -> Vec<Result<Receipt>> {
        if self.check_open().is_err() {
            return batch
                .iter()
                .map(|_| Err(Error::closed(BROKER, "the publisher")))
                .collect();
        }
        match &self.jetstream {
            None => {
                // Send everything, then one flush confirms all that were sent.
                let mut results = Vec::with_capacity(batch.len());
                for o in batch {
                    let sent = deadline
                        .run(
                            BROKER,
                            "publish",
                            o.destination,
                            self.send_core(o.destination, o.message),
                        )
                        .await;
                    results.push((o.destination, sent));
                }
                let flushed = match results.iter().find(|(_, r)| r.is_ok()) {
                    Some((destination, _)) => {
                        deadline
                            .run(BROKER, "flush", destination, self.flush(destination))
                            .await
                    }
                    None => Ok(()),
                };
                results
                    .into_iter()
                    .map(|(destination, sent)| match (sent, &flushed) {
                        (Err(e), _) => Err(e),
                        (Ok(()), Ok(())) => Ok(Receipt::default()),
                        (Ok(()), Err(e)) => Err(Error::transient(
                            BROKER,
                            destination,
                            format!("sent, but the flush that confirms it failed: {e}"),
                        )),
                    })
                    .collect()
            }
            Some(_) => {
                // Send every message first, then wait for all the PubAcks together; once the
                // client has reconnected, those not answered yet fail (`lost_before_ack`).
                let sent_on = self.reconnects.count();
                let mut pending = Vec::with_capacity(batch.len());
                for o in batch {
                    let sent = deadline
                        .run(
                            BROKER,
                            "publish",
                            o.destination,
                            self.send_jetstream(o.destination, o.message),
                        )
                        .await;
                    pending.push((o.destination, sent));
                }
                let mut acks: FuturesUnordered<_> = pending
                    .into_iter()
                    .enumerate()
                    .map(|(i, (destination, sent))| async move {
                        let receipt = match sent {
                            Ok(ack) => {
                                deadline
                                    .run(
                                        BROKER,
                                        "publish",
                                        destination,
                                        self.await_puback(destination, ack),
                                    )
                                    .await
                            }
                            Err(e) => Err(e),
                        };
                        (i, receipt)
                    })
                    .collect();
                let mut results: Vec<Option<Result<Receipt>>> =
                    batch.iter().map(|_| None).collect();
                let reconnected = self.reconnected_since(sent_on);
                tokio::pin!(reconnected);
                loop {
                    tokio::select! {
                        biased;
                        next = acks.next() => match next {
                            Some((i, receipt)) => results[i] = Some(receipt),
                            None => break,
                        },
                        () = &mut reconnected => break,
                    }
                }
                results
                    .into_iter()
                    .zip(batch)
                    .map(|(receipt, o)| {
                        receipt.unwrap_or_else(|| Err(lost_before_ack(o.destination)))
                    })
                    .collect()
            }
        }
    }

    async fn close(&self, deadline: Deadline) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        // Everything published was already confirmed (JetStream) or flushed (core); one
        // more flush sends what a cancelled publish may have left in the client's buffer.
        deadline
            .run(
                BROKER,
                "close",
                "the connection",
                self.flush("the connection"),
            )
            .await
    }
}

/// A PubAck is answered on the connection the message went out on: once the client has
/// reconnected, one not yet received never comes. Sending the message again is safe, as
/// JetStream drops a copy by its message id (`Nats-Msg-Id`, within the stream's duplicate
/// window).
fn lost_before_ack(destination: &str) -> Error {
    Error::transient(
        BROKER,
        destination,
        "the connection was lost before JetStream acknowledged; sending it again is safe \
         (JetStream drops the copy by its message id)",
    )
}

impl NatsBroker {
    /// Completes once the client has reconnected since `sent_on` reconnections.
    async fn reconnected_since(&self, sent_on: u64) {
        self.reconnects.clone().after(sent_on).await;
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(BROKER, "the publisher"));
        }
        Ok(())
    }

    /// Validates the subject and the size, and builds the headers.
    fn prepare(
        &self,
        destination: &str,
        message: &Message,
        reply_in_header: bool,
    ) -> Result<HeaderMap> {
        check_subject(destination)?;
        let limit = self.capabilities.max_payload.unwrap_or(usize::MAX);
        let size = message.payload.len();
        if size > limit {
            return Err(Error::PayloadTooLarge {
                broker: BROKER,
                destination: destination.to_owned(),
                size,
                limit,
            });
        }
        let headers = mapping::to_headers(message, reply_in_header);
        let header_bytes = header_size(&headers);
        if size + header_bytes > self.server_max_payload {
            return Err(Error::PayloadTooLarge {
                broker: BROKER,
                destination: destination.to_owned(),
                size,
                limit: self.server_max_payload.saturating_sub(header_bytes),
            });
        }
        Ok(headers)
    }

    async fn send_core(&self, destination: &str, message: &Message) -> Result<()> {
        let headers = self.prepare(destination, message, false)?;
        let subject = destination.to_owned();
        let payload = message.payload.clone();
        let result = match &message.reply_to {
            Some(reply) => {
                self.client
                    .publish_with_reply_and_headers(subject, reply.clone(), headers, payload)
                    .await
            }
            None => {
                self.client
                    .publish_with_headers(subject, headers, payload)
                    .await
            }
        };
        result.map_err(|e| Error::Transient {
            broker: BROKER,
            destination: destination.to_owned(),
            reason: format!("cannot send: {e}"),
            source: Some(Box::new(e)),
        })
    }

    async fn flush(&self, destination: &str) -> Result<()> {
        self.client.flush().await.map_err(|e| Error::Transient {
            broker: BROKER,
            destination: destination.to_owned(),
            reason: format!("cannot flush the connection: {e}"),
            source: Some(Box::new(e)),
        })
    }

    async fn send_jetstream(
        &self,
        destination: &str,
        message: &Message,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture> {
        let headers = self.prepare(destination, message, true)?;
        let Some(js) = &self.jetstream else {
            return Err(Error::unsupported(
                BROKER,
                "JetStream publish on a core connection",
            ));
        };
        js.publish_with_headers(destination.to_owned(), headers, message.payload.clone())
            .await
            .map_err(|e| self.publish_error(destination, e))
    }

    async fn await_puback(
        &self,
        destination: &str,
        ack: async_nats::jetstream::context::PublishAckFuture,
    ) -> Result<Receipt> {
        match ack.await {
            Ok(ack) => Ok(Receipt {
                position: Some(Position::Sequence(ack.sequence)),
                duplicate: ack.duplicate,
            }),
            Err(e)
                if matches!(
                    e.kind(),
                    PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut
                ) =>
            {
                // No answer: no stream captures the subject (a permanent error), or the
                // stream is busy or restarting (retry). Ask which.
                Err(self.no_stream_error(destination).await)
            }
            Err(e) => Err(self.publish_error(destination, e)),
        }
    }

    fn publish_error(
        &self,
        destination: &str,
        e: async_nats::jetstream::context::PublishError,
    ) -> Error {
        let destination = destination.to_owned();
        match e.kind() {
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => Error::Transient {
                broker: BROKER,
                destination,
                reason: format!("JetStream did not acknowledge: {e}"),
                source: Some(Box::new(e)),
            },
            PublishErrorKind::StreamNotFound => Error::transient(
                BROKER,
                destination,
                "JetStream did not answer (no responders)",
            ),
            _ => Error::Permanent {
                broker: BROKER,
                destination,
                reason: format!("JetStream refused the message: {e}"),
                source: Some(Box::new(e)),
            },
        }
    }

    /// Creates the URL's stream again, and says whether it now captures `destination`.
    async fn created_again(&self, js: &async_nats::jetstream::Context, destination: &str) -> bool {
        if let Err(e) = crate::jetstream::ensure_stream(js, &self.config).await {
            tracing::warn!(broker = BROKER, destination, error = %e, "cannot create the stream again");
            return false;
        }
        js.stream_by_subject(destination.to_owned()).await.is_ok()
    }

    /// "No responders" means no stream captures the subject, or JetStream is not up yet
    /// (a server restarting): ask which, so only the first is a permanent error. With
    /// `create_stream`, a stream that is gone is created again (a retryable error).
    async fn no_stream_error(&self, destination: &str) -> Error {
        let Some(js) = &self.jetstream else {
            return Error::unsupported(BROKER, "JetStream publish on a core connection");
        };
        match js.stream_by_subject(destination.to_owned()).await {
            Ok(stream) => Error::transient(
                BROKER,
                destination,
                format!(
                    "stream {stream} captures the subject but did not acknowledge in time; retry"
                ),
            ),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::context::GetStreamByNameErrorKind::NotFound =>
            {
                if self.config.create_stream && self.created_again(js, destination).await {
                    return Error::transient(
                        BROKER,
                        destination,
                        "the stream was gone (a memory stream after a restart?) and is created \
                         again; retry",
                    );
                }
                Error::permanent(
                    BROKER,
                    destination,
                    "no JetStream stream captures this subject: create one, or connect with \
                     stream=NAME&create_stream=true&stream_subjects=… covering it",
                )
            }
            Err(e) => Error::transient(
                BROKER,
                destination,
                format!("JetStream did not answer: {e}"),
            ),
        }
    }
}

/// A publish subject: non-empty tokens separated by `.`, no white space, no wildcards.
pub(crate) fn check_subject(subject: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::permanent(
            BROKER,
            subject,
            format!("invalid subject: {why}"),
        ))
    };
    if subject.is_empty() {
        return bad("it is empty");
    }
    if subject.contains(|c: char| c.is_whitespace()) {
        return bad("it contains white space");
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return bad("it has an empty token (leading, trailing or double '.')");
        }
        if token == "*" || token == ">" {
            return bad("wildcards cannot be published to");
        }
    }
    Ok(())
}

/// Bytes the header block takes on the wire: `NATS/1.0\r\n`, `name: value\r\n` per value,
/// and the closing `\r\n`.
fn header_size(headers: &HeaderMap) -> usize {
    let mut size = "NATS/1.0\r\n".len() + 2;
    for (name, values) in headers.iter() {
        for v in values {
            size += AsRef::<[u8]>::as_ref(name).len() + 2 + v.as_str().len() + 2;
        }
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked_before_sending() {
        assert!(check_subject("orders.eu.created").is_ok());
        for (s, why) in [
            ("", "empty"),
            ("a b", "white space"),
            ("a..b", "empty token"),
            ("a.", "empty token"),
            ("a.*", "wildcards"),
            ("a.>", "wildcards"),
        ] {
            let e = check_subject(s)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(why), "{s:?}: {e}");
        }
    }
}
