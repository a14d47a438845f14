//! Webhook out: POST `<base>/<destination>`, retried with backoff until a 2xx answer.
//!
//! | answer | meaning |
//! |---|---|
//! | 2xx | confirmed |
//! | 413 | [`Error::PayloadTooLarge`], not retried |
//! | 401 | [`Error::Auth`] (credentials missing or refused), not retried |
//! | 408, 429, 5xx, connection error, no answer within `request_timeout` | transient: retried after `x-pb-retry-after-ms` or `retry-after` if the server sent one, else after the backoff |
//! | other 4xx | [`Error::Permanent`] with the status and the start of the body |

use std::time::Duration;

use bytes::Bytes;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use polybridge_core::{Error, Message, Receipt, Result};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::HttpConfig;
use crate::mapping;
use crate::BROKER;

/// Sends webhooks.
/// A message waiting in the `publish=queue` queue, with its place in the queue.
pub(crate) struct Queued {
    pub destination: String,
    pub message: Message,
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

/// Starts the queued messages in order: the next one's request starts once hyper took the
/// previous one's body; each is then retried on its own task.
pub(crate) async fn run_queue(
    sender: std::sync::Arc<Sender>,
    mut queue: tokio::sync::mpsc::Receiver<Queued>,
) {
    while let Some(Queued {
        destination,
        message,
        permit,
    }) = queue.recv().await
    {
        let (taken, taken_rx) = oneshot::channel();
        let sender = sender.clone();
        let until = Instant::now() + sender.config.retry_for;
        tokio::spawn(async move {
            if let Err(e) = sender
                .send(&destination, &message, until, Some(taken))
                .await
            {
                tracing::error!(%destination, id = %message.id, error = %e, "http: a queued webhook was not delivered");
            }
            drop(permit);
        });
        let _ = taken_rx.await;
    }
}

pub(crate) struct Sender {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, SignalBody>,
    pub config: std::sync::Arc<HttpConfig>,
}

/// Percent-encodes a destination for the request path (`/` kept: it separates path
/// segments and the server gives the topic back with it).
pub(crate) fn path_encode(destination: &str) -> String {
    let mut out = String::with_capacity(destination.len());
    for &b in destination.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A request body that says when hyper took it (to start the next queued request only
/// then, so queued messages reach the receiver in publish order as far as one process can
/// arrange it).
pub(crate) struct SignalBody {
    data: Option<Bytes>,
    len: u64,
    taken: Option<oneshot::Sender<()>>,
}

impl Body for SignalBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(taken) = this.taken.take() {
            let _ = taken.send(());
        }
        Poll::Ready(this.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

enum Attempt {
    Done(Result<Receipt>),
    Retry(Error, Option<Duration>),
}

impl Sender {
    pub fn new(config: std::sync::Arc<HttpConfig>) -> Result<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.request_timeout));
        connector.enforce_http(false);
        let tls = polybridge_core::tls::client_config(
            crate::BROKER,
            &polybridge_core::tls::TlsFiles {
                ca_file: config.ca_file.as_ref().map(Into::into),
                client_cert: None,
            },
            polybridge_core::tls::DefaultRoots::MozillaPlusCaFile,
        )?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Sender { client, config })
    }

    /// POSTs `message` to `destination` until it is confirmed, refused, out of attempts, or
    /// the next retry would start after `until`.
    pub async fn send(
        &self,
        destination: &str,
        message: &Message,
        until: Instant,
        mut taken: Option<oneshot::Sender<()>>,
    ) -> Result<Receipt> {
        let uri = format!("{}/{}", self.config.base, path_encode(destination));
        let mut backoff = self.config.retry_initial;
        let mut attempt: u32 = 1;
        loop {
            let (error, hint) = match self
                .attempt(&uri, destination, message, attempt, until, taken.take())
                .await
            {
                Attempt::Done(result) => return result,
                Attempt::Retry(error, hint) => (error, hint),
            };
            if self.config.max_attempts.is_some_and(|max| attempt >= max) {
                return Err(error);
            }
            let wait = hint.unwrap_or(backoff);
            if Instant::now() + wait >= until {
                return Err(error);
            }
            tracing::debug!(%destination, id = %message.id, attempt, ?wait, error = %error, "http: retrying a webhook");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.config.retry_max);
            attempt = attempt.saturating_add(1);
        }
    }

    async fn attempt(
        &self,
        uri: &str,
        destination: &str,
        message: &Message,
        attempt: u32,
        until: Instant,
        mut taken: Option<oneshot::Sender<()>>,
    ) -> Attempt {
        if message.payload.is_empty() {
            // Nothing for hyper to take: the request may go at once.
            if let Some(taken) = taken.take() {
                let _ = taken.send(());
            }
        }
        let body = SignalBody {
            data: (!message.payload.is_empty()).then(|| message.payload.clone()),
            len: message.payload.len() as u64,
            taken,
        };
        let mut request = match Request::post(uri).body(body) {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Done(Err(Error::Permanent {
                    broker: BROKER,
                    destination: destination.to_owned(),
                    reason: format!("cannot build the request to {uri}: {e}"),
                    source: Some(Box::new(e)),
                }))
            }
        };
        *request.headers_mut() = mapping::to_headers(message, attempt);
        if let Some(auth) = &self.config.auth {
            match HeaderValue::from_str(auth.header_value()) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    request.headers_mut().insert(AUTHORIZATION, value);
                }
                Err(_) => {
                    return Attempt::Done(Err(Error::config(
                        BROKER,
                        format!(
                            "the credentials of user {:?} do not fit an HTTP header",
                            auth.user()
                        ),
                    )))
                }
            }
        }
        let limit = (Instant::now() + self.config.request_timeout).min(until);
        let response = match tokio::time::timeout_at(limit, self.client.request(request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Attempt::Retry(
                    Error::Transient {
                        broker: BROKER,
                        destination: destination.to_owned(),
                        reason: format!("POST {uri} failed: {}", chain(&e)),
                        source: Some(Box::new(e)),
                    },
                    None,
                )
            }
            Err(_) => {
                return Attempt::Retry(
                    Error::transient(
                        BROKER,
                        destination,
                        format!(
                            "POST {uri}: no answer within {:?}",
                            self.config.request_timeout
                        ),
                    ),
                    None,
                )
            }
        };
        classify(uri, destination, message, &self.config, response).await
    }
}

async fn classify(
    uri: &str,
    destination: &str,
    message: &Message,
    config: &HttpConfig,
    response: Response<hyper::body::Incoming>,
) -> Attempt {
    let status = response.status();
    if status.is_success() {
        return Attempt::Done(Ok(Receipt::default()));
    }
    let hint = retry_hint(&response);
    // The start of the body explains the refusal; read at most a little of it.
    let body = tokio::time::timeout(Duration::from_secs(1), response.into_body().collect())
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let text: String = String::from_utf8_lossy(&body[..body.len().min(200)])
        .trim()
        .to_owned();
    let reason = format!("POST {uri} answered {status}: {text}");
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return Attempt::Done(Err(Error::PayloadTooLarge {
            broker: BROKER,
            destination: destination.to_owned(),
            size: message.payload.len(),
            limit: config
                .max_payload
                .min(message.payload.len().saturating_sub(1)),
        }));
    }
    if status == StatusCode::UNAUTHORIZED {
        let reason = match &config.auth {
            Some(auth) => format!(
                "POST {uri} answered {status}: the password of user {:?} was refused",
                auth.user()
            ),
            None => format!("POST {uri} answered {status}: the receiver wants credentials (user:password@ in the URL)"),
        };
        return Attempt::Done(Err(Error::Auth {
            broker: BROKER,
            endpoint: config.base.clone(),
            reason,
        }));
    }
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        return Attempt::Retry(Error::transient(BROKER, destination, reason), hint);
    }
    Attempt::Done(Err(Error::permanent(BROKER, destination, reason)))
}

/// An error with its causes, `a: b: c` (hyper's own message alone says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// `x-pb-retry-after-ms`, else `retry-after` in seconds (an HTTP date is ignored).
fn retry_hint<B>(response: &Response<B>) -> Option<Duration> {
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    header(mapping::RETRY_AFTER_MS)
        .map(Duration::from_millis)
        .or_else(|| header(RETRY_AFTER.as_str()).map(Duration::from_secs))
}
