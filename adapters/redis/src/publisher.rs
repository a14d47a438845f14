//! Publishing: `XADD` (streams), `PUBLISH` (pub/sub), `LPUSH` (lists). Each resolves when
//! Redis answered; a batch is one pipeline.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use bytes::Bytes;
use polybridge_core::{Deadline, Error, Message, Outgoing, Position, Publisher, Receipt, Result};
use redis::aio::ConnectionLike as _;
use redis::Value;

use crate::config::{Format, Mode};
use crate::{command_error, mapping, RedisBroker, BROKER, MAX_PAYLOAD};

#[async_trait]
impl Publisher for RedisBroker {
    async fn publish(
        &self,
        destination: &str,
        message: &Message,
        deadline: Deadline,
    ) -> Result<Receipt> {
        self.check_open()?;
        let command = self.command_for(destination, message)?;
        let mut connection = self.connection.clone();
        deadline
            .run(BROKER, "publish", destination, async move {
                let reply: Value = command
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| command_error(e, destination, "publish"))?;
                Ok(self.receipt(reply))
            })
            .await
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
        // Refused messages keep their error; the rest go in one pipeline.
        let mut results: Vec<Option<Result<Receipt>>> = Vec::with_capacity(batch.len());
        let mut pipeline = redis::Pipeline::with_capacity(batch.len());
        let mut sent = Vec::with_capacity(batch.len());
        for (i, o) in batch.iter().enumerate() {
            match self.command_for(o.destination, o.message) {
                Ok(cmd) => {
                    pipeline.add_command(cmd);
                    sent.push(i);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if !sent.is_empty() {
            let mut connection = self.connection.clone();
            let first = batch.get(sent[0]).map(|o| o.destination).unwrap_or("");
            // The pipeline's replies one by one (not `query_async`, which turns the first
            // refused command into an error for all): a refused `XADD` fails its message
            // only, and the others keep their stream ids.
            let replies: Result<Vec<Value>> = deadline
                .run(BROKER, "publish", first, async {
                    connection
                        .req_packed_commands(&pipeline, 0, sent.len())
                        .await
                        .map_err(|e| command_error(e, first, "publish"))
                })
                .await;
            match replies {
                Ok(values) => {
                    for (i, v) in sent.iter().zip(values) {
                        results[*i] = Some(match v {
                            Value::ServerError(e) => {
                                Err(command_error(e.into(), batch[*i].destination, "publish"))
                            }
                            v => Ok(self.receipt(v)),
                        });
                    }
                }
                Err(e) => {
                    for i in &sent {
                        let destination = batch[*i].destination;
                        results[*i] = Some(Err(match &e {
                            Error::Timeout { after, .. } => Error::Timeout {
                                broker: BROKER,
                                operation: "publish",
                                destination: destination.to_owned(),
                                after: *after,
                            },
                            other if other.is_retryable() => {
                                Error::transient(BROKER, destination, other.to_string())
                            }
                            other => Error::permanent(BROKER, destination, other.to_string()),
                        }));
                    }
                }
            }
        }
        results
            .into_iter()
            .zip(batch)
            .map(|(r, o)| {
                r.unwrap_or_else(|| {
                    Err(Error::transient(
                        BROKER,
                        o.destination,
                        "the pipeline gave no reply for this command (it may or may not be stored)",
                    ))
                })
            })
            .collect()
    }

    async fn close(&self, _deadline: Deadline) -> Result<()> {
        // Every publish was answered before it returned: nothing is outstanding.
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

impl RedisBroker {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(BROKER, "the publisher"));
        }
        Ok(())
    }

    /// The command that publishes `message` to `destination` in this mode.
    fn command_for(&self, destination: &str, message: &Message) -> Result<redis::Cmd> {
        if destination.is_empty() {
            return Err(Error::permanent(
                BROKER,
                destination,
                "an empty key or channel",
            ));
        }
        let size = message.payload.len();
        if size > MAX_PAYLOAD {
            return Err(Error::PayloadTooLarge {
                broker: BROKER,
                destination: destination.to_owned(),
                size,
                limit: MAX_PAYLOAD,
            });
        }
        let element = || -> Bytes {
            match self.config.format {
                Format::Raw => message.payload.clone(),
                Format::Envelope => mapping::to_envelope(message, 1),
            }
        };
        Ok(match self.config.mode {
            Mode::Streams => {
                // Sized once: the payload is copied into the command without regrowing it.
                // Besides the fields: up to 6 arguments of at most 32 bytes (`XADD`, the
                // key, `MAXLEN ~ n`, `*`) and the key.
                let (field_args, field_bytes) = mapping::fields_size(message);
                let mut cmd =
                    redis::Cmd::with_capacity(field_args + 6, field_bytes + destination.len() + 32);
                cmd.arg("XADD").arg(destination);
                if let Some(maxlen) = self.config.maxlen {
                    cmd.arg("MAXLEN").arg("~").arg(maxlen);
                }
                cmd.arg("*");
                mapping::write_fields(message, &mut cmd);
                cmd
            }
            Mode::PubSub => {
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(destination).arg(&element()[..]);
                cmd
            }
            Mode::Lists => {
                let mut cmd = redis::cmd("LPUSH");
                cmd.arg(destination).arg(&element()[..]);
                cmd
            }
        })
    }

    fn receipt(&self, reply: Value) -> Receipt {
        let position = match (self.config.mode, reply) {
            // The reply's own buffer becomes the id (stream ids are ASCII).
            (Mode::Streams, Value::BulkString(id)) => Some(Position::StreamId(
                String::from_utf8(id)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            )),
            (Mode::Streams, Value::SimpleString(id)) => Some(Position::StreamId(id)),
            _ => None,
        };
        Receipt {
            position,
            duplicate: false,
        }
    }
}
