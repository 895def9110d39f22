//! The operator's live view (contract §12): the `GET /admin` page (one
//! HTML file with its script inline, embedded in the binary) and its JSON
//! under `/v1/admin/` — `connections`, `stats`, and
//! `POST connections/{id}/close`, which ends one stream with
//! [`Close::Kicked`]. The JSON needs an API key while auth is on (like the
//! dead-letter endpoints, which the page also uses); with auth off anyone
//! may call it, as the contract lets anyone do everything then. The shapes
//! are in `docs/admin.md`.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::core::rates::{self, Rates};
use crate::core::session::ConnInfo;
use crate::core::Close;
use crate::error::{ApiError, Code};
use crate::state::AppState;
use crate::transport::access;

/// The page.
const PAGE: &str = include_str!("page.html");
/// Connections listed when the request names no `limit`.
const LIST_DEFAULT: usize = 500;
/// Most connections one listing returns.
const LIST_MAX: usize = 10_000;
/// Topics `stats` lists when the request names no `top`.
const TOP_DEFAULT: usize = 20;
/// Dead letters counted at most by `stats`.
const DEAD_LETTERS_COUNTED: usize = 1000;

/// `/admin` and `/v1/admin/…`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(page))
        .route("/v1/admin/connections", get(connections))
        .route("/v1/admin/connections/{id}/close", post(close))
        .route("/v1/admin/stats", get(stats))
}

fn json(status: StatusCode, v: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], v.to_string())
        .into_response()
}

fn operator(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let bearer = access::bearer(headers, None);
    state.auth.operator(bearer.as_deref()).map_err(ApiError::from)
}

/// A `name=N` query parameter within `1..=max`, else `default`.
fn number(query: Option<&str>, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
    let mut n = default;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if k == name {
            n = v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| ApiError::new(Code::BadRequest, format!("{name} must be 1 to {max}")))?;
        }
    }
    Ok(n)
}

/// `GET /admin`: the page (no data in it; it asks for the API key).
async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
        .into_response()
}

fn connection(id: &str, info: &ConnInfo) -> Value {
    // A long poll knows its client's address, not its port.
    let peer = info.peer.map(|p| if p.port() == 0 { p.ip().to_string() } else { p.to_string() });
    let topics: Vec<String> = info.topics().iter().map(|t| t.as_str().to_owned()).collect();
    json!({
        "id": id,
        "transport": info.transport,
        "rpc": info.rpc,
        "peer": peer,
        "user": info.user.as_deref(),
        "topics": topics,
        "opened_at": info.opened_ms,
        "messages_out": info.messages_out(),
    })
}

/// `GET /v1/admin/connections?limit=N` → `{"total", "connections": [...]}`.
async fn connections(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    operator(&state, &headers)?;
    let limit = number(query.as_deref(), "limit", LIST_DEFAULT, LIST_MAX)?;
    let (sessions, total) = state.shutdown.sessions().listed(limit);
    let list: Vec<Value> =
        sessions.iter().filter_map(|s| s.info().map(|i| connection(&s.client_id(), i))).collect();
    Ok(json(StatusCode::OK, &json!({ "total": total, "connections": list })))
}

/// `POST /v1/admin/connections/{id}/close` → `{"closed": ID}`; `not_found`
/// when no live stream has that id, `bad_request` when it is not 16 hex
/// digits.
async fn close(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    operator(&state, &headers)?;
    let parsed = (id.len() == 16)
        .then(|| u64::from_str_radix(&id, 16).ok())
        .flatten()
        .ok_or_else(|| ApiError::new(Code::BadRequest, "a connection id is 16 hex digits"))?;
    if !state.shutdown.sessions().close_one(parsed, Close::Kicked) {
        return Err(ApiError::new(Code::NotFound, "no such connection"));
    }
    tracing::info!(client = %id, "connection closed by an operator");
    Ok(json(StatusCode::OK, &json!({ "closed": id.to_ascii_lowercase() })))
}

/// `GET /v1/admin/stats?top=N`: connections by transport, topics, rates,
/// totals, dead letters, readiness.
async fn stats(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    operator(&state, &headers)?;
    let top = number(query.as_deref(), "top", TOP_DEFAULT, rates::TOPICS_SAMPLED)?;
    let rates: &Arc<Rates> = &state.rates;
    let mut by_transport = serde_json::Map::new();
    for t in ["ws", "sse", "poll", "grpc"] {
        by_transport.insert(t.to_owned(), json!(0));
    }
    let mut total = 0;
    for (t, n) in state.shutdown.sessions().count_by_transport() {
        by_transport.insert(t.to_owned(), json!(n));
        total += n;
    }
    let hub = &state.bus.hub;
    let topics: Vec<Value> = hub
        .top_topics(top)
        .iter()
        .map(|t| {
            json!({
                "topic": t.topic.as_str(),
                "subscribers": t.subscribers,
                "messages": t.messages,
                "rate_per_s": round(rates.topic_rate(t)),
            })
        })
        .collect();
    let throughput = rates.throughput();
    let totals = crate::metrics::totals();
    let dead = match state.webhooks.dead_letters(DEAD_LETTERS_COUNTED).await {
        Ok(items) => json!(items.len()),
        Err(e) => {
            tracing::debug!(error = %e, "dead letters not counted");
            Value::Null
        }
    };
    let v = json!({
        "auth": state.auth.enabled(),
        "engine": state.config.engine.kind_name(),
        "ready": state.is_ready(),
        "connections": { "total": total, "by_transport": by_transport },
        "topics": { "count": hub.topic_count(), "top": topics },
        "rates": {
            "window_s": round(throughput.window_s),
            "published_per_s": round(throughput.published_per_s),
            "delivered_per_s": round(throughput.delivered_per_s),
        },
        "totals": {
            "published": totals.published,
            "delivered": totals.delivered,
            "slow_consumer_closes": totals.slow_consumer_closes,
            "kicked": totals.kicked,
        },
        "dead_letters": dead,
        "dead_letters_counted_max": DEAD_LETTERS_COUNTED,
    });
    Ok(json(StatusCode::OK, &v))
}

/// Two decimals are plenty for a page.
fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
