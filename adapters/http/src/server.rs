//! The webhook server: one per [`crate::HttpBroker`], bound when it first subscribes.
//! A POST to `<base>/<topic>` is offered to every consumer group whose pattern matches the
//! topic and answered once they all settled it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue as HttpValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use polybridge_core::{well_known, Error, Message, Result, Settlement, TopicPattern};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::HttpConfig;
use crate::mapping;
use crate::BROKER;

/// Topics are `.`-separated levels for pattern matching.
pub const SEPARATOR: char = '.';

/// How long a sender is asked to wait when no subscription matches its topic.
const NO_SUBSCRIBER_RETRY: Duration = Duration::from_secs(1);

/// A message waiting for one consumer group to settle it.
pub(crate) struct Job {
    pub message: Message,
    pub topic: String,
    pub attempt: u32,
    pub respond: oneshot::Sender<Settlement>,
}

/// A consumer group (a subscription without a group is a private group of one): a queue
/// its members pull from.
pub(crate) struct Group {
    key: (String, String),
    pattern: TopicPattern,
    pub dead_letter: Option<String>,
    pub tx: async_channel::Sender<Job>,
    pub rx: async_channel::Receiver<Job>,
    members: AtomicU64,
}

/// What the server knows: its config and the groups.
pub(crate) struct State {
    pub config: Arc<HttpConfig>,
    groups: RwLock<Vec<Arc<Group>>>,
    next_private: AtomicU64,
    /// Requests answered 401 (missing or wrong credentials).
    pub unauthorized: AtomicU64,
}

/// The bound server; dropping it stops accepting connections.
pub(crate) struct Server {
    pub state: Arc<State>,
    pub local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// How the groups settled one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Acked,
    Nacked(Option<Duration>),
    Rejected(String),
    NoSubscriber,
    TimedOut,
}

impl Server {
    /// Binds `config.listen` and starts serving.
    pub async fn bind(config: Arc<HttpConfig>) -> Result<Server> {
        let acceptor = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                polybridge_core::tls::server_config(
                    BROKER,
                    ("tls_cert", cert.as_ref()),
                    ("tls_key", key.as_ref()),
                )?,
            ))),
            _ if config.tls => {
                return Err(Error::config(
                    BROKER,
                    "serving https:// needs tls_cert and tls_key (PEM files)",
                ))
            }
            _ => None,
        };
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| Error::Connection {
                broker: BROKER,
                endpoint: config.listen.clone(),
                reason: format!("cannot listen for webhooks: {e}"),
                source: Some(Box::new(e)),
            })?;
        let local_addr = listener.local_addr().map_err(|e| Error::Connection {
            broker: BROKER,
            endpoint: config.listen.clone(),
            reason: e.to_string(),
            source: None,
        })?;
        let state = Arc::new(State {
            config,
            groups: RwLock::new(Vec::new()),
            next_private: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone(), acceptor));
        tracing::info!(listen = %local_addr, "http: webhook server listening");
        Ok(Server {
            state,
            local_addr,
            accept,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let service = hyper::service::service_fn(move |req| handle(state.clone(), peer, req));
            let http = hyper::server::conn::http1::Builder::new();
            let served = match acceptor {
                None => http.serve_connection(TokioIo::new(stream), service).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => http.serve_connection(TokioIo::new(tls), service).await,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "http: TLS handshake failed");
                        return;
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "http: connection ended with an error");
            }
        });
    }
}

fn answer(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn retry_later(status: StatusCode, delay: Duration, body: String) -> Response<Full<Bytes>> {
    let mut r = answer(status, body);
    let secs = delay.as_millis().div_ceil(1000);
    if let Ok(v) = HttpValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(RETRY_AFTER, v);
    }
    if let Ok(v) = HttpValue::from_str(&delay.as_millis().to_string()) {
        r.headers_mut().insert(mapping::RETRY_AFTER_MS, v);
    }
    r
}

/// `401` with the `Basic realm="polybridge"` challenge.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = answer(
        StatusCode::UNAUTHORIZED,
        "polybridge webhook: missing or wrong credentials (HTTP Basic)\n",
    );
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HttpValue::from_static(polybridge_core::basic_auth::CHALLENGE),
    );
    r
}

async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    if let Some(auth) = &state.config.auth {
        let given = req.headers().get(AUTHORIZATION).map(HttpValue::as_bytes);
        if !auth.matches(given) {
            let refused = state.unauthorized.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(%peer, path = req.uri().path(), credentials = given.is_some(), refused, "http: request without valid credentials answered 401");
            return Ok(unauthorized());
        }
    }
    if req.method() != Method::POST {
        return Ok(answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "polybridge webhook: use POST <base>/<topic>\n",
        ));
    }
    let path = req.uri().path();
    let topic = path
        .strip_prefix(state.config.base_path.as_str())
        .and_then(|rest| rest.strip_prefix('/'))
        .map(|t| String::from_utf8_lossy(&mapping::decode(t)).into_owned())
        .filter(|t| !t.is_empty());
    let Some(topic) = topic else {
        return Ok(answer(
            StatusCode::NOT_FOUND,
            format!(
                "polybridge webhook: POST to {}/<topic>\n",
                state.config.base_path
            ),
        ));
    };
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, state.config.max_payload).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Ok(answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "polybridge webhook: the body exceeds {} bytes\n",
                        state.config.max_payload
                    ),
                ));
            }
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                format!("polybridge webhook: cannot read the body: {e}\n"),
            ));
        }
    };
    let (message, attempt) = mapping::from_request(&parts.headers, body);
    let outcome = state.dispatch(&topic, message, attempt).await;
    tracing::trace!(%topic, ?outcome, "http: webhook answered");
    Ok(match outcome {
        Outcome::Acked => answer(StatusCode::NO_CONTENT, Bytes::new()),
        Outcome::Nacked(delay) => retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            delay.unwrap_or(Duration::ZERO),
            "polybridge webhook: the subscriber asked for redelivery\n".into(),
        ),
        Outcome::Rejected(reason) => answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("polybridge webhook: rejected: {reason}\n"),
        ),
        Outcome::NoSubscriber => retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            NO_SUBSCRIBER_RETRY,
            format!("polybridge webhook: no subscription matches {topic:?}\n"),
        ),
        Outcome::TimedOut => answer(
            StatusCode::GATEWAY_TIMEOUT,
            "polybridge webhook: the subscriber did not settle the message in time\n",
        ),
    })
}

impl State {
    /// Offers `message` to every group matching `topic` and waits until all settled it
    /// (or `ack_timeout` passed).
    pub async fn dispatch(
        self: &Arc<Self>,
        topic: &str,
        message: Message,
        attempt: u32,
    ) -> Outcome {
        let groups: Vec<Arc<Group>> = match self.groups.read() {
            Ok(g) => g
                .iter()
                .filter(|g| g.pattern.matches(topic, SEPARATOR))
                .cloned()
                .collect(),
            Err(_) => return Outcome::NoSubscriber,
        };
        if groups.is_empty() {
            return Outcome::NoSubscriber;
        }
        let deadline = Instant::now() + self.config.ack_timeout;
        let mut waits = Vec::with_capacity(groups.len());
        for g in groups {
            let (tx, rx) = oneshot::channel();
            let job = Job {
                message: message.clone(),
                topic: topic.to_owned(),
                attempt,
                respond: tx,
            };
            match tokio::time::timeout_at(deadline, g.tx.send(job)).await {
                Ok(Ok(())) => waits.push((g, Some(rx))),
                // The group closed meanwhile: its members are gone; ask for a retry.
                Ok(Err(_)) => waits.push((g, None)),
                Err(_) => return Outcome::TimedOut,
            }
        }
        let settled = futures::future::join_all(waits.into_iter().map(|(g, rx)| async move {
            let s = match rx {
                Some(rx) => rx.await.ok(),
                None => None,
            };
            (g, s)
        }));
        let Ok(settled) = tokio::time::timeout_at(deadline, settled).await else {
            return Outcome::TimedOut;
        };
        let mut nack: Option<Option<Duration>> = None;
        let mut reject = None;
        for (g, s) in settled {
            match s {
                Some(Settlement::Ack) => {}
                Some(Settlement::Nack { delay }) => {
                    let longest = match (nack.flatten(), delay) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    nack = Some(longest);
                }
                // The member went away without settling: redeliver now.
                None => nack = Some(nack.flatten()),
                Some(Settlement::Reject { reason }) => {
                    if let Some(dl) = &g.dead_letter {
                        self.dead_letter(dl, topic, &message, attempt, &reason);
                    } else {
                        tracing::warn!(%topic, id = %message.id, %reason, "http: rejected; the subscription has no dead_letter topic, the sender gets 422");
                    }
                    reject = Some(reason);
                }
            }
        }
        match (nack, reject) {
            (Some(delay), _) => Outcome::Nacked(delay),
            (None, Some(reason)) => Outcome::Rejected(reason),
            (None, None) => Outcome::Acked,
        }
    }

    /// Delivers a rejected message, with the reason headers, to the subscriptions of this
    /// server that match `dead_letter`, in the background, retrying while they nack.
    fn dead_letter(
        self: &Arc<Self>,
        dead_letter: &str,
        topic: &str,
        message: &Message,
        attempt: u32,
        reason: &str,
    ) {
        let mut dead = message.clone();
        dead.headers.set(well_known::REJECT_REASON, reason);
        dead.headers.set(well_known::ORIGINAL_TOPIC, topic);
        dead.headers.set(well_known::ATTEMPTS, attempt.to_string());
        let state = self.clone();
        let dl = dead_letter.to_owned();
        let until = Instant::now() + self.config.retry_for;
        tokio::spawn(async move {
            let mut attempt = 1;
            loop {
                let wait = match state.dispatch(&dl, dead.clone(), attempt).await {
                    Outcome::Acked | Outcome::Rejected(_) => return,
                    Outcome::Nacked(delay) => delay.unwrap_or(state.config.retry_initial),
                    Outcome::NoSubscriber => {
                        tracing::error!(dead_letter = %dl, id = %dead.id, "http: no subscription matches the dead-letter topic; the rejected message is dropped");
                        return;
                    }
                    Outcome::TimedOut => state.config.retry_initial,
                };
                if Instant::now() + wait > until {
                    tracing::error!(dead_letter = %dl, id = %dead.id, "http: the dead-letter subscription did not take the message within retry_for; dropped");
                    return;
                }
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        });
    }

    /// Joins (or creates) the group of `pattern` named `group` (`None`: a private one).
    pub fn join(
        &self,
        pattern: &TopicPattern,
        group: Option<&str>,
        dead_letter: Option<String>,
        queue: usize,
    ) -> Arc<Group> {
        let key = match group {
            Some(name) => (name.to_owned(), pattern.to_string()),
            None => (
                format!(
                    "\0private-{}",
                    self.next_private.fetch_add(1, Ordering::Relaxed)
                ),
                String::new(),
            ),
        };
        let mut groups = match self.groups.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(g) = groups.iter().find(|g| g.key == key) {
            g.members.fetch_add(1, Ordering::Relaxed);
            return g.clone();
        }
        let (tx, rx) = async_channel::bounded(queue.max(1));
        let g = Arc::new(Group {
            key,
            pattern: pattern.clone(),
            dead_letter,
            tx,
            rx,
            members: AtomicU64::new(1),
        });
        groups.push(g.clone());
        g
    }

    /// A member leaves; the last one removes the group and asks the senders of the
    /// messages still queued for it to retry.
    pub fn leave(&self, group: &Arc<Group>) {
        let last = {
            let mut groups = match self.groups.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let last = group.members.fetch_sub(1, Ordering::Relaxed) == 1;
            if last {
                groups.retain(|g| !Arc::ptr_eq(g, group));
            }
            last
        };
        if last {
            group.tx.close();
            while let Ok(job) = group.rx.try_recv() {
                let _ = job.respond.send(Settlement::Nack { delay: None });
            }
        }
    }
}
