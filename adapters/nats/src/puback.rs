//! JetStream publishes and their PubAcks, on one subscription per connection.
//!
//! A JetStream publish is a core NATS publish with a reply subject: the stream that stores
//! the message answers there with a PubAck (`{"stream":"S","seq":7}`), or with an error
//! (`{"error":{"code":503,"err_code":10077,"description":"…"}}`), and the server answers
//! "no responders" (status 503) when no stream captures the subject.
//!
//! async-nats's `jetstream::Context::publish` makes about 25 heap allocations per message
//! for this: the request's inbox name, formatted for every message and keyed into a map; a
//! oneshot channel; a boxed future with its timer; the PubAck parsed through an untagged
//! enum that builds and drops a `serde_json` error for every ack. Here the same publish goes
//! out through the client's core `publish_with_reply_and_headers`, and [`PubAcks`] receives
//! every PubAck of the connection on one wildcard subscription, `<inbox>.*.*`:
//! - each batch of publishes gets a number `b`, and its message `i` the reply subject
//!   `<inbox>.<b>.<i>`;
//! - the batch registers a channel for its answers before it sends anything; one task reads
//!   the subscription and hands each answer to its batch's channel ([`Waiting`]);
//! - a batch's subjects are written into one buffer ([`Subjects`]), whose pieces the client
//!   shares instead of copying;
//! - the PubAck is read with borrowed fields ([`Answer::read`]): no allocation for a stored
//!   message.
//!
//! What is left per message is the client's own: the header map, and the answer's message.
//!
//! An answer can still be lost on the way: the client drops messages for a subscription
//! 65 536 behind (its "slow consumer" case), and the task keeps answers seen before their
//! batch's registration for [`EARLY_BATCHES`] batches at most. A publish whose answer is
//! lost is treated as one JetStream did not answer: after [`PUBACK_TIMEOUT`] the publisher
//! asks whether a stream captures the subject, and fails it retryably if one does; sent
//! again, it is dropped by JetStream as a copy (`Nats-Msg-Id`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::{Client, Message, StatusCode, Subject, SubscribeError, Subscriber};
use bytes::BytesMut;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::BROKER;

/// How long JetStream has to answer a publish (as async-nats's `jetstream::Context`):
/// past it, the publisher asks whether a stream still captures the subject.
pub(crate) const PUBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Registrations waiting for the task that hands out the answers.
const REGISTRATIONS: usize = 1024;

/// How often the task forgets batches whose publisher stopped waiting (its deadline passed,
/// or the connection was lost), and answers that came for no batch it knows.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Batches with answers kept for a registration not seen yet, at most. Past it an answer is
/// dropped: its publish times out and is sent again, which JetStream deduplicates.
const EARLY_BATCHES: usize = 4096;

/// The answer to publish `index` of a batch, on the batch's channel.
pub(crate) type Answered = (usize, Answer);

/// What JetStream answered to one publish.
#[derive(Debug, PartialEq)]
pub(crate) enum Answer {
    /// The stream stored the message (or had it already: `duplicate`, by `Nats-Msg-Id`).
    Stored {
        /// The message's stream sequence.
        sequence: u64,
        /// JetStream dropped this publish as a copy of one it has.
        duplicate: bool,
    },
    /// The server found no one to answer: no stream captures the subject, or JetStream is
    /// not up (yet).
    NoResponders,
    /// The stream refused the message.
    Refused {
        /// The HTTP-like status (`503`: JetStream cannot take it now).
        status: u16,
        /// JetStream's error code (`err_code`).
        code: u64,
        /// JetStream's reason.
        description: String,
    },
    /// An answer that is no PubAck.
    Unreadable(String),
}

/// A PubAck, or JetStream's error, as sent; fields borrowed from the message.
#[derive(Deserialize)]
struct PubAckBody<'a> {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default, borrow)]
    error: Option<ApiErrorBody<'a>>,
}

#[derive(Deserialize)]
struct ApiErrorBody<'a> {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default, borrow)]
    description: Cow<'a, str>,
}

impl Answer {
    /// Reads the answer the server sent to a publish's reply subject.
    pub(crate) fn read(reply: &Message) -> Answer {
        if reply.status == Some(StatusCode::NO_RESPONDERS) {
            return Answer::NoResponders;
        }
        match serde_json::from_slice::<PubAckBody>(&reply.payload) {
            Ok(PubAckBody {
                error: Some(error), ..
            }) => Answer::Refused {
                status: error.code,
                code: error.err_code,
                description: error.description.into_owned(),
            },
            Ok(PubAckBody {
                seq: Some(sequence),
                duplicate,
                ..
            }) => Answer::Stored {
                sequence,
                duplicate,
            },
            Ok(_) => Answer::Unreadable("neither a sequence nor an error".to_owned()),
            Err(e) => Answer::Unreadable(match reply.status {
                Some(status) => format!("status {status}, {e}"),
                None => e.to_string(),
            }),
        }
    }
}

/// The PubAcks of one connection: one subscription, and the task that hands its answers to
/// the batches waiting for them.
pub(crate) struct PubAcks {
    /// `<inbox prefix>.<unique token>`; replies are `<inbox>.<batch>.<index>`.
    inbox: String,
    next_batch: AtomicU64,
    registrations: mpsc::Sender<Registration>,
}

/// A batch's channel, announced to the task before the batch sends anything.
struct Registration {
    batch: u64,
    expected: usize,
    answers: mpsc::Sender<Answered>,
}

impl PubAcks {
    /// Subscribes to `<inbox>.*.*` and starts the task that hands out the answers. The task
    /// ends when this value is dropped or the client is closed.
    pub(crate) async fn start(client: &Client) -> Result<PubAcks, SubscribeError> {
        let inbox = client.new_inbox();
        let replies = client.subscribe(format!("{inbox}.*.*")).await?;
        let (registrations, registered) = mpsc::channel(REGISTRATIONS);
        tokio::spawn(hand_out(inbox.len() + 1, replies, registered));
        Ok(PubAcks {
            inbox,
            next_batch: AtomicU64::new(0),
            registrations,
        })
    }

    /// Registers a batch that will send `expected` publishes: its number, and the channel
    /// its answers come on. `None` once the task has ended (the client is closed).
    pub(crate) async fn register(
        &self,
        expected: usize,
    ) -> Option<(u64, mpsc::Receiver<Answered>)> {
        let batch = self.next_batch.fetch_add(1, Ordering::Relaxed);
        // Each publish is answered at most once: the channel never fills.
        let (answers, receiver) = mpsc::channel(expected.max(1));
        self.registrations
            .send(Registration {
                batch,
                expected,
                answers,
            })
            .await
            .ok()?;
        Some((batch, receiver))
    }

    /// A buffer for the subjects of a batch of `publishes` whose destinations take
    /// `destination_bytes` together.
    pub(crate) fn subjects(&self, publishes: usize, destination_bytes: usize) -> Subjects {
        // `<inbox>.<batch>.<index>`: a u64 and a usize take at most 20 digits each.
        let replies = publishes * (self.inbox.len() + 2 + 20 + 20);
        Subjects(BytesMut::with_capacity(destination_bytes + replies))
    }

    /// The reply subject of publish `index` of batch `batch`, written into `subjects`.
    pub(crate) fn reply_subject(
        &self,
        subjects: &mut Subjects,
        batch: u64,
        index: usize,
    ) -> Subject {
        subjects.0.extend_from_slice(self.inbox.as_bytes());
        // Writing integers into a BytesMut cannot fail.
        let _ = write!(subjects.0, ".{batch}.{index}");
        subjects.take()
    }
}

/// The subjects of one batch, written one after the other into one buffer. Each subject
/// handed out shares the buffer (a reference count), so the client's copies of it (it
/// takes subjects by reference) allocate nothing.
pub(crate) struct Subjects(BytesMut);

impl Subjects {
    /// `text` as a subject in this buffer.
    pub(crate) fn subject(&mut self, text: &str) -> Subject {
        self.0.extend_from_slice(text.as_bytes());
        self.take()
    }

    /// What was written since the last subject taken, as a subject.
    fn take(&mut self) -> Subject {
        match Subject::from_utf8(self.0.split().freeze()) {
            Ok(subject) => subject,
            // Unreachable: only `&str`s and digits are written.
            Err(_) => Subject::from(""),
        }
    }
}

/// The batches waiting for answers, owned by the task that reads the subscription.
#[derive(Default)]
struct Waiting {
    batches: HashMap<u64, Batch>,
    /// Answers that came before their batch's registration was seen (the registration is
    /// sent before the publishes, but the channel may show it a moment later), and answers
    /// for batches no longer waiting, forgotten at the next sweep.
    early: HashMap<u64, (Instant, Vec<Answered>)>,
}

struct Batch {
    answers: mpsc::Sender<Answered>,
    left: usize,
}

impl Waiting {
    fn register(&mut self, registration: Registration) {
        let mut batch = Batch {
            answers: registration.answers,
            left: registration.expected,
        };
        if let Some((_, answers)) = self.early.remove(&registration.batch) {
            for answered in answers {
                if !batch.hand(answered) {
                    return;
                }
            }
        }
        self.batches.insert(registration.batch, batch);
    }

    /// Whether `batch` is registered.
    fn knows(&self, batch: u64) -> bool {
        self.batches.contains_key(&batch)
    }

    /// Hands an answer to its batch, or keeps it for a registration not seen yet.
    fn answer(&mut self, batch: u64, answered: Answered, now: Instant) {
        match self.batches.get_mut(&batch) {
            Some(waiting) => {
                if !waiting.hand(answered) {
                    self.batches.remove(&batch);
                }
            }
            None if self.early.len() >= EARLY_BATCHES && !self.early.contains_key(&batch) => {
                tracing::debug!(
                    broker = BROKER,
                    batch,
                    "an answer for no batch waiting, dropped"
                );
            }
            None => {
                self.early
                    .entry(batch)
                    .or_insert_with(|| (now, Vec::new()))
                    .1
                    .push(answered);
            }
        }
    }

    /// Forgets the batches whose publisher stopped waiting, and early answers older than
    /// one sweep.
    fn sweep(&mut self, now: Instant) {
        self.batches.retain(|_, b| !b.answers.is_closed());
        self.early
            .retain(|_, (since, _)| now.duration_since(*since) < SWEEP_EVERY);
    }
}

impl Batch {
    /// Hands over one answer; false once the batch needs no more (all answered, or its
    /// publisher stopped waiting).
    fn hand(&mut self, answered: Answered) -> bool {
        let delivered = self.answers.try_send(answered).is_ok();
        self.left = self.left.saturating_sub(1);
        delivered && self.left > 0
    }
}

/// The batch and index in a reply subject `<inbox>.<batch>.<index>`.
fn batch_and_index(subject: &str, prefix_len: usize) -> Option<(u64, usize)> {
    let (batch, index) = subject.get(prefix_len..)?.split_once('.')?;
    Some((batch.parse().ok()?, index.parse().ok()?))
}

/// Reads the answers off the subscription and hands each to its batch.
async fn hand_out(
    prefix_len: usize,
    mut replies: Subscriber,
    mut registered: mpsc::Receiver<Registration>,
) {
    let mut waiting = Waiting::default();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            registration = registered.recv() => match registration {
                Some(registration) => waiting.register(registration),
                None => break,
            },
            reply = replies.next() => {
                let Some(reply) = reply else { break };
                let Some((batch, index)) = batch_and_index(&reply.subject, prefix_len) else {
                    tracing::debug!(broker = BROKER, subject = %reply.subject, "an answer on the PubAck subscription that names no publish");
                    continue;
                };
                if !waiting.knows(batch) {
                    while let Ok(registration) = registered.try_recv() {
                        waiting.register(registration);
                    }
                }
                waiting.answer(batch, (index, Answer::read(&reply)), Instant::now());
            }
            _ = sweep.tick() => waiting.sweep(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn reply(payload: &'static str, status: Option<StatusCode>) -> Message {
        Message {
            subject: Subject::from("_INBOX.x.0.0"),
            reply: None,
            payload: Bytes::from_static(payload.as_bytes()),
            headers: None,
            status,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn pubacks_and_errors_are_read() {
        assert_eq!(
            Answer::read(&reply(r#"{"stream":"S","seq":7}"#, None)),
            Answer::Stored {
                sequence: 7,
                duplicate: false
            }
        );
        assert_eq!(
            Answer::read(&reply(
                r#"{"stream":"S","domain":"d","seq":8,"duplicate":true}"#,
                None
            )),
            Answer::Stored {
                sequence: 8,
                duplicate: true
            }
        );
        assert_eq!(
            Answer::read(&reply(
                r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"S"}"#,
                None
            )),
            Answer::Refused {
                status: 503,
                code: 10077,
                description: "maximum messages exceeded".to_owned()
            }
        );
        assert_eq!(
            Answer::read(&reply("", Some(StatusCode::NO_RESPONDERS))),
            Answer::NoResponders
        );
        assert!(matches!(
            Answer::read(&reply(r#"{"stream":"S"}"#, None)),
            Answer::Unreadable(_)
        ));
        assert!(matches!(
            Answer::read(&reply("not json", None)),
            Answer::Unreadable(_)
        ));
    }

    #[test]
    fn reply_subjects_name_the_batch_and_the_index() {
        assert_eq!(batch_and_index("_INBOX.abc.12.3", 11), Some((12, 3)));
        assert_eq!(batch_and_index("_INBOX.abc.12", 11), None);
        assert_eq!(batch_and_index("_INBOX.abc.x.3", 11), None);
        assert_eq!(batch_and_index("short", 11), None);
    }

    #[test]
    fn the_subjects_of_a_batch_share_one_buffer() {
        let acks = PubAcks {
            inbox: "_INBOX.abc".to_owned(),
            next_batch: AtomicU64::new(0),
            registrations: mpsc::channel(1).0,
        };
        let mut subjects = acks.subjects(2, "orders.created".len() + "orders.paid".len());
        let first = subjects.subject("orders.created");
        let reply = acks.reply_subject(&mut subjects, 41, 0);
        let second = subjects.subject("orders.paid");
        let second_reply = acks.reply_subject(&mut subjects, 41, 1);
        assert_eq!(first.as_str(), "orders.created");
        assert_eq!(reply.as_str(), "_INBOX.abc.41.0");
        assert_eq!(second.as_str(), "orders.paid");
        assert_eq!(
            batch_and_index(&second_reply, "_INBOX.abc.".len()),
            Some((41, 1))
        );
        // One buffer, sized for the batch: each subject follows the one before.
        assert_eq!(
            reply.as_str().as_ptr() as usize,
            first.as_str().as_ptr() as usize + first.len()
        );
        assert_eq!(
            second.as_str().as_ptr() as usize,
            reply.as_str().as_ptr() as usize + reply.len()
        );
    }

    fn registration(batch: u64, expected: usize) -> (Registration, mpsc::Receiver<Answered>) {
        let (answers, receiver) = mpsc::channel(expected);
        (
            Registration {
                batch,
                expected,
                answers,
            },
            receiver,
        )
    }

    fn stored(sequence: u64) -> Answer {
        Answer::Stored {
            sequence,
            duplicate: false,
        }
    }

    #[test]
    fn answers_reach_their_batch_and_a_finished_batch_is_forgotten() {
        let now = Instant::now();
        let mut waiting = Waiting::default();
        let (r1, mut a1) = registration(1, 2);
        let (r2, mut a2) = registration(2, 1);
        waiting.register(r1);
        waiting.register(r2);
        waiting.answer(2, (0, stored(10)), now);
        waiting.answer(1, (1, stored(11)), now);
        assert!(!waiting.knows(2), "batch 2 had its one answer");
        waiting.answer(1, (0, stored(12)), now);
        assert!(!waiting.knows(1));
        assert_eq!(a2.try_recv().ok(), Some((0, stored(10))));
        assert_eq!(a1.try_recv().ok(), Some((1, stored(11))));
        assert_eq!(a1.try_recv().ok(), Some((0, stored(12))));
        assert!(waiting.early.is_empty());
    }

    #[test]
    fn an_answer_seen_before_its_registration_is_handed_over_at_registration() {
        let now = Instant::now();
        let mut waiting = Waiting::default();
        waiting.answer(5, (1, stored(20)), now);
        let (r5, mut a5) = registration(5, 2);
        waiting.register(r5);
        assert_eq!(a5.try_recv().ok(), Some((1, stored(20))));
        assert!(waiting.knows(5), "one answer is still to come");
        waiting.answer(5, (0, stored(19)), now);
        assert_eq!(a5.try_recv().ok(), Some((0, stored(19))));
        assert!(!waiting.knows(5));
    }

    #[test]
    fn a_batch_no_one_waits_for_and_stray_answers_are_swept() {
        let now = Instant::now();
        let mut waiting = Waiting::default();
        let (r1, a1) = registration(1, 3);
        waiting.register(r1);
        drop(a1);
        waiting.answer(9, (0, stored(1)), now);
        waiting.sweep(now);
        assert!(!waiting.knows(1), "its publisher stopped waiting");
        assert_eq!(waiting.early.len(), 1, "kept for one sweep");
        waiting.sweep(now + SWEEP_EVERY);
        assert!(waiting.early.is_empty());
    }
}
