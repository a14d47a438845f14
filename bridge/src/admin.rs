//! The admin HTTP server (127.0.0.1:9464 by default): `/metrics` (Prometheus), `/health`
//! (the process is up), `/ready` (every route's source subscription is active),
//! `/api/routes` and `/api/status` (JSON), and a status page at `/` that polls the two
//! JSON endpoints once a second. Broker URLs appear with passwords redacted.
//!
//! The status page is three static files embedded in the binary (`src/status/`): no build
//! step, no external assets, nothing but same-origin requests (its Content-Security-Policy
//! says so).
//!
//! With `admin.token` (or `token_file`) set, every endpoint but `/health` and the page's
//! static files (which carry no data) answers `401 Unauthorized` unless the request carries
//! `Authorization: Bearer <token>`. The page sends the token it finds in its address's
//! fragment: open `http://127.0.0.1:9464/#token=<token>` (a fragment never leaves the
//! browser).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::config::AdminToken;
use crate::route::Route;
use crate::{metrics, RouteTable};

/// What the admin server shows.
pub struct AdminState {
    /// The bridge's routes and brokers, kept current across reloads.
    pub table: RouteTable,
    /// When the bridge started (for the uptime in `/api/status`).
    pub started: Instant,
    /// Bearer token required on every endpoint but `/health` and the page's files, if set.
    pub token: Option<AdminToken>,
}

impl AdminState {
    /// The admin state of `table`, started now, with an optional bearer token.
    pub fn new(table: RouteTable, token: Option<AdminToken>) -> Self {
        AdminState {
            table,
            started: Instant::now(),
            token,
        }
    }

    fn routes(&self) -> Vec<Arc<Route>> {
        match self.table.read() {
            Ok(t) => t.routes.clone(),
            Err(p) => p.into_inner().routes.clone(),
        }
    }
}

/// The admin router.
pub fn router(state: Arc<AdminState>) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/ready", get(ready))
        .route("/api/routes", get(routes))
        .route("/api/status", get(status))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/", get(page))
        .route("/status.js", get(script))
        .route("/status.css", get(style))
        .merge(protected)
        .with_state(state)
}

/// The status page: markup, script and style, embedded at build time.
const PAGE_HTML: &str = include_str!("status/index.html");
const PAGE_JS: &str = include_str!("status/status.js");
const PAGE_CSS: &str = include_str!("status/status.css");

/// Only same-origin scripts, styles and requests; no frames, no plugins.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
        ],
        body,
    )
}

async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", PAGE_HTML)
}

async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", PAGE_JS)
}

async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", PAGE_CSS)
}

async fn authorize(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| token.accepts(v));
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "unauthorized\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

async fn metrics_page(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let (routes, brokers) = match state.table.read() {
        Ok(t) => (t.routes.clone(), t.brokers.clone()),
        Err(p) => {
            let t = p.into_inner();
            (t.routes.clone(), t.brokers.clone())
        }
    };
    let list: Vec<(&str, &metrics::RouteMetrics)> = routes
        .iter()
        .map(|r| (r.config.name.as_str(), r.metrics.as_ref()))
        .collect();
    let mut out = String::new();
    metrics::render(&list, &mut out);
    let blist: Vec<(&str, &str, &metrics::BrokerMetrics)> = brokers
        .iter()
        .map(|(n, s, m)| (n.as_str(), s.as_str(), m.as_ref()))
        .collect();
    metrics::render_brokers(&blist, &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

async fn ready(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let routes = state.routes();
    let waiting: Vec<&str> = routes
        .iter()
        .filter(|r| !r.metrics.subscribed.load(Ordering::Relaxed))
        .map(|r| r.config.name.as_str())
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "routes_not_subscribed": waiting })),
        )
    }
}

async fn routes(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let list: Vec<_> = state
        .routes()
        .iter()
        .map(|r| {
            let m = &r.metrics;
            json!({
                "name": r.config.name,
                "instance": r.instance,
                "source": {
                    "broker": r.config.source.broker,
                    "url": r.source.url().to_string(),
                    "topic": r.config.source.topic,
                    "group": r.config.source.subscription.group,
                },
                "sinks": r.config.sinks.iter().zip(&r.sinks).map(|(s, b)| json!({
                    "broker": s.broker,
                    "url": b.url().to_string(),
                    "destination": s.destination.to_string(),
                })).collect::<Vec<_>>(),
                "subscribed": m.subscribed.load(Ordering::Relaxed),
                "received": m.received.load(Ordering::Relaxed),
                "delivered": m.delivered.load(Ordering::Relaxed),
                "acked": m.acked.load(Ordering::Relaxed),
                "nacked": m.nacked.load(Ordering::Relaxed),
                "dead_lettered": m.dead_lettered.load(Ordering::Relaxed),
                "filtered": m.filtered.load(Ordering::Relaxed),
                "in_flight": m.in_flight.load(Ordering::Relaxed),
                "ordering": format!("{:?}", r.config.ordering),
                "max_in_flight": r.config.max_in_flight,
                "prefetch": r.config.prefetch,
                "max_batch": r.config.max_batch,
            })
        })
        .collect();
    Json(json!({ "routes": list }))
}

async fn status(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let (routes, brokers) = match state.table.read() {
        Ok(t) => (t.routes.clone(), t.brokers.clone()),
        Err(p) => {
            let t = p.into_inner();
            (t.routes.clone(), t.brokers.clone())
        }
    };
    let mut totals = [0u64; 5];
    let mut in_flight = 0i64;
    let route_list: Vec<_> = routes
        .iter()
        .map(|r| {
            let m = &r.metrics;
            let errors = m.errors_by_kind();
            let errors_total: u64 = errors.iter().map(|(_, n)| n).sum();
            let latency = m.latency.snapshot();
            let counts = [
                m.received.load(Ordering::Relaxed),
                m.delivered.load(Ordering::Relaxed),
                m.acked.load(Ordering::Relaxed),
                m.dead_lettered.load(Ordering::Relaxed),
                errors_total,
            ];
            for (t, c) in totals.iter_mut().zip(counts) {
                *t = t.saturating_add(c);
            }
            let flight = m.in_flight.load(Ordering::Relaxed);
            in_flight = in_flight.saturating_add(flight);
            json!({
                "name": r.config.name,
                "instance": r.instance,
                "subscribed": m.subscribed.load(Ordering::Relaxed),
                "received": counts[0],
                "filtered": m.filtered.load(Ordering::Relaxed),
                "delivered": counts[1],
                "acked": counts[2],
                "nacked": m.nacked.load(Ordering::Relaxed),
                "dead_lettered": counts[3],
                "retries": m.retries.load(Ordering::Relaxed),
                "errors": errors
                    .iter()
                    .map(|(k, n)| ((*k).to_owned(), json!(n)))
                    .collect::<serde_json::Map<_, _>>(),
                "errors_total": errors_total,
                "in_flight": flight,
                "max_in_flight": r.config.max_in_flight,
                "prefetch": r.config.prefetch,
                "max_batch": r.config.max_batch,
                "latency": { "count": latency.count(), "sum_seconds": latency.sum_secs() },
            })
        })
        .collect();
    let broker_list: Vec<_> = brokers
        .iter()
        .map(|(name, scheme, m)| {
            json!({
                "name": name,
                "scheme": scheme,
                "connected": m.connected.load(Ordering::Relaxed),
                "reconnects": m.reconnects.load(Ordering::Relaxed),
            })
        })
        .collect();
    let ready = routes
        .iter()
        .all(|r| r.metrics.subscribed.load(Ordering::Relaxed));
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": state.started.elapsed().as_secs_f64(),
            "ready": ready,
            "totals": {
                "received": totals[0],
                "delivered": totals[1],
                "acked": totals[2],
                "dead_lettered": totals[3],
                "errors": totals[4],
                "in_flight": in_flight,
            },
            "brokers": broker_list,
            "routes": route_list,
        })),
    )
}
