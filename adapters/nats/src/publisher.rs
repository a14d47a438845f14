//! Publishing: core NATS resolves after a flush, JetStream on the stream's PubAck.

use std::sync::atomic::Ordering;

use async_nats::HeaderMap;
use async_trait::async_trait;
use polybridge_core::{Deadline, Error, Message, Outgoing, Position, Publisher, Receipt, Result};

use crate::puback::{Answer, PubAcks, PUBACK_TIMEOUT};
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
            Some(_) => self
                .publish_jetstream(
                    &[Outgoing {
                        destination,
                        message,
                    }],
                    deadline,
                )
                .await
                .pop()
                .unwrap_or_else(|| Err(lost_before_ack(destination))),
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
            Some(_) => self.publish_jetstream(batch, deadline).await,
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

/// Where one publish of a JetStream batch stands.
enum Slot {
    /// Checked, with its headers; not sent yet.
    Ready(HeaderMap),
    /// Sent; no answer yet.
    Sent,
    /// "No responders", or no answer in time: whether a stream captures the subject tells
    /// which error it is (`no_stream_error`).
    AskForStream,
    /// Settled.
    Done(Result<Receipt>),
}

/// Why a batch stopped waiting for the answers still missing.
enum Unanswered {
    /// JetStream had [`PUBACK_TIMEOUT`] to answer.
    TimedOut,
    /// The client reconnected: the lost connection's answers never come.
    Reconnected,
    /// The client is closed.
    Closed,
    /// The publish's deadline passed.
    PastDeadline,
}

/// What JetStream's answer means for the publish.
fn settled(destination: &str, answer: Answer) -> Slot {
    Slot::Done(match answer {
        Answer::Stored {
            sequence,
            duplicate,
        } => Ok(Receipt {
            position: Some(Position::Sequence(sequence)),
            duplicate,
        }),
        Answer::NoResponders => return Slot::AskForStream,
        // 503: JetStream cannot take it now (a full stream that discards new messages, a
        // stream without quorum); later it may.
        Answer::Refused {
            status: 503,
            code,
            description,
        } => Err(Error::transient(
            BROKER,
            destination,
            format!("JetStream cannot store the message now: {description} (error {code})"),
        )),
        Answer::Refused {
            status,
            code,
            description,
        } => Err(Error::permanent(
            BROKER,
            destination,
            format!("JetStream refused the message: {description} (status {status}, error {code})"),
        )),
        Answer::Unreadable(why) => Err(Error::transient(
            BROKER,
            destination,
            format!(
                "JetStream's answer is no PubAck ({why}); sending it again is safe (JetStream \
                 drops the copy by its message id)"
            ),
        )),
    })
}

/// Settles every publish of `slots` not sent yet with `error`.
fn settle_unsent(slots: &mut [Slot], batch: &[Outgoing<'_>], error: impl Fn(&str) -> Error) {
    for (slot, o) in slots.iter_mut().zip(batch) {
        if let Slot::Ready(_) = slot {
            *slot = Slot::Done(Err(error(o.destination)));
        }
    }
}

fn cannot_send(destination: &str, e: async_nats::PublishError) -> Error {
    Error::Transient {
        broker: BROKER,
        destination: destination.to_owned(),
        reason: format!("cannot send: {e}"),
        source: Some(Box::new(e)),
    }
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
        result.map_err(|e| cannot_send(destination, e))
    }

    async fn flush(&self, destination: &str) -> Result<()> {
        self.client.flush().await.map_err(|e| Error::Transient {
            broker: BROKER,
            destination: destination.to_owned(),
            reason: format!("cannot flush the connection: {e}"),
            source: Some(Box::new(e)),
        })
    }

    /// Publishes a batch to JetStream ([`crate::puback`]): checks every message and builds
    /// its headers, registers the batch for its PubAcks, sends each message with its reply
    /// subject, then waits for the answers. A publish is settled by its answer; those still
    /// unanswered when the client reconnects fail as `lost_before_ack` (the lost
    /// connection's answers never come); after [`PUBACK_TIMEOUT`] the publisher asks
    /// whether a stream still captures the subject (`no_stream_error`), as after "no
    /// responders"; at the deadline they time out.
    async fn publish_jetstream(
        &self,
        batch: &[Outgoing<'_>],
        deadline: Deadline,
    ) -> Vec<Result<Receipt>> {
        let mut slots: Vec<Slot> = batch
            .iter()
            .map(|o| match self.prepare(o.destination, o.message, true) {
                Ok(headers) => Slot::Ready(headers),
                Err(e) => Slot::Done(Err(e)),
            })
            .collect();
        self.send_and_wait(batch, &mut slots, deadline).await;
        let mut results = Vec::with_capacity(batch.len());
        for (slot, o) in slots.into_iter().zip(batch) {
            results.push(match slot {
                Slot::Done(result) => result,
                Slot::AskForStream => {
                    let asking = async { Err(self.no_stream_error(o.destination).await) };
                    deadline.run(BROKER, "publish", o.destination, asking).await
                }
                // `send_and_wait` settles every publish it was given.
                Slot::Ready(_) | Slot::Sent => Err(lost_before_ack(o.destination)),
            });
        }
        results
    }

    /// Sends the `Ready` publishes of `slots` and waits for their answers (see
    /// [`Self::publish_jetstream`]); every `Ready` slot ends `Done` or `AskForStream`.
    async fn send_and_wait(&self, batch: &[Outgoing<'_>], slots: &mut [Slot], deadline: Deadline) {
        let ready = slots.iter().filter(|s| matches!(s, Slot::Ready(_))).count();
        if ready == 0 {
            return;
        }
        let started = tokio::time::Instant::now();
        let pub_acks = match self
            .pub_acks
            .get_or_try_init(|| PubAcks::start(&self.client))
            .await
        {
            Ok(pub_acks) => pub_acks,
            Err(e) => {
                let reason = format!("cannot subscribe to JetStream's acknowledgements: {e}");
                return settle_unsent(slots, batch, |d| {
                    Error::transient(BROKER, d, reason.as_str())
                });
            }
        };
        let Some((number, mut answers)) = pub_acks.register(ready).await else {
            return settle_unsent(slots, batch, |_| Error::closed(BROKER, "the publisher"));
        };
        let sent_on = self.reconnects.count();
        let destination_bytes = batch.iter().map(|o| o.destination.len()).sum();
        let mut subjects = pub_acks.subjects(ready, destination_bytes);
        let mut sent = 0;
        for (index, (slot, o)) in slots.iter_mut().zip(batch).enumerate() {
            let headers = match std::mem::replace(slot, Slot::Sent) {
                Slot::Ready(headers) => headers,
                other => {
                    *slot = other;
                    continue;
                }
            };
            let subject = subjects.subject(o.destination);
            let reply = pub_acks.reply_subject(&mut subjects, number, index);
            let payload = o.message.payload.clone();
            let sending = async {
                self.client
                    .publish_with_reply_and_headers(subject, reply, headers, payload)
                    .await
                    .map_err(|e| cannot_send(o.destination, e))
            };
            match deadline
                .run(BROKER, "publish", o.destination, sending)
                .await
            {
                Ok(()) => sent += 1,
                Err(e) => *slot = Slot::Done(Err(e)),
            }
        }
        let answer_timeout = tokio::time::sleep(PUBACK_TIMEOUT);
        let past_deadline = tokio::time::sleep_until(deadline.instant());
        let reconnected = self.reconnected_since(sent_on);
        tokio::pin!(answer_timeout, past_deadline, reconnected);
        let mut answered = 0;
        let unanswered = loop {
            if answered == sent {
                return;
            }
            tokio::select! {
                biased;
                answer = answers.recv() => match answer {
                    Some((index, answer)) => {
                        if let (Some(slot @ Slot::Sent), Some(o)) = (slots.get_mut(index), batch.get(index)) {
                            *slot = settled(o.destination, answer);
                            answered += 1;
                        }
                    }
                    None => break Unanswered::Closed,
                },
                () = &mut reconnected => break Unanswered::Reconnected,
                () = &mut answer_timeout => break Unanswered::TimedOut,
                () = &mut past_deadline => break Unanswered::PastDeadline,
            }
        };
        for (slot, o) in slots.iter_mut().zip(batch) {
            if let Slot::Sent = slot {
                *slot = match unanswered {
                    Unanswered::TimedOut => Slot::AskForStream,
                    Unanswered::Reconnected | Unanswered::Closed => {
                        Slot::Done(Err(lost_before_ack(o.destination)))
                    }
                    Unanswered::PastDeadline => Slot::Done(Err(Error::Timeout {
                        broker: BROKER,
                        operation: "publish",
                        destination: o.destination.to_owned(),
                        after: started.elapsed(),
                    })),
                };
            }
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
