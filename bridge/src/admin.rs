//! The admin HTTP server (127.0.0.1:9464 by default): `/metrics` (Prometheus), `/health`
//! (the process is up), `/ready` (every route's source subscription is active) and
//! `/api/routes` (JSON). Broker URLs appear with passwords redacted.
//!
//! With `admin.token` (or `token_file`) set, every endpoint but `/health` answers
//! `401 Unauthorized` unless the request carries `Authorization: Bearer <token>`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

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
    /// Bearer token required on every endpoint but `/health`, if set.
    pub token: Option<AdminToken>,
}

impl AdminState {
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
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .merge(protected)
        .with_state(state)
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
            })
        })
        .collect();
    Json(json!({ "routes": list }))
}
