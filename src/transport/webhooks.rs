//! Webhook HTTP endpoints (contract §9): inbound `POST /v1/webhooks/{source}`
//! (signature-verified, no API key) and the operator's dead letters
//! (`GET /v1/webhooks/dead-letters`, `POST …/{id}/redrive`,
//! `POST …/redrive` for all), which need an API key while auth is on.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{access, ops};
use crate::core::PublishOptions;
use crate::error::{ApiError, Code};
use crate::metrics::Transport;
use crate::state::AppState;
use crate::webhooks::{RedriveError, Refusal};

/// Dead letters listed at most per request.
const LIST_MAX: usize = 1000;

fn json(status: StatusCode, v: &serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn operator(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let bearer = access::bearer(headers, None);
    state.auth.operator(bearer.as_deref()).map_err(ApiError::from)
}

fn redrive_error(e: RedriveError) -> ApiError {
    match e {
        RedriveError::NotFound => ApiError::new(Code::NotFound, "no such dead letter"),
        RedriveError::Engine(e) => e.into(),
    }
}

/// `GET /v1/webhooks/dead-letters?limit=N` → `{"items": [...]}`, oldest first.
pub(crate) async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    operator(&state, &headers)?;
    let mut limit = 100;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if k == "limit" {
            limit =
                v.parse::<usize>().ok().filter(|n| (1..=LIST_MAX).contains(n)).ok_or_else(|| {
                    ApiError::new(Code::BadRequest, format!("limit must be 1 to {LIST_MAX}"))
                })?;
        }
    }
    let items = state.webhooks.dead_letters(limit).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "items": items })))
}

/// `POST /v1/webhooks/dead-letters/{id}/redrive` → 202 `{"redriven": 1}`.
pub(crate) async fn redrive(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    operator(&state, &headers)?;
    state.webhooks.redrive(&id).await.map_err(redrive_error)?;
    Ok(json(StatusCode::ACCEPTED, &serde_json::json!({ "redriven": 1 })))
}

/// `POST /v1/webhooks/dead-letters/redrive` (all) → 202 `{"redriven": N}`.
pub(crate) async fn redrive_all(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    operator(&state, &headers)?;
    let n = state.webhooks.redrive_all().await.map_err(redrive_error)?;
    Ok(json(StatusCode::ACCEPTED, &serde_json::json!({ "redriven": n })))
}

/// `POST /v1/webhooks/{source}`: verifies the Standard Webhooks headers
/// against the source's secrets and tolerance, publishes the body on the
/// source's topic with the `webhook-id` as idempotency key (a repeated id
/// is refused), answers 202 `{"topic", "id", "ts"}`.
pub(crate) async fn inbound(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let hooks = &state.webhooks;
    let Some(source) = hooks.source(&name) else {
        return Err(ApiError::new(Code::NotFound, "no such webhook source"));
    };
    let max = state.config.limits.max_message_bytes;
    let body = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| ApiError::new(Code::TooLarge, format!("body over {max} bytes")))?;
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let id = get("webhook-id");
    if let Err(refusal) = source.verify(id, get("webhook-timestamp"), get("webhook-signature"), &body) {
        let (result, code) = match refusal {
            Refusal::Headers => ("bad_request", Code::BadRequest),
            Refusal::Stale => ("stale", Code::Unauthenticated),
            Refusal::Signature => ("bad_signature", Code::Unauthenticated),
        };
        hooks.count_inbound(&name, result);
        tracing::info!(source = %name, reason = %refusal, "inbound webhook refused");
        return Err(ApiError::new(code, refusal.to_string()));
    }
    let published = match ops::publish(
        &state,
        Transport::Http,
        &source.topic,
        body,
        PublishOptions { idempotency_key: Some(id), key: None },
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            hooks.count_inbound(
                &name,
                if e.code == Code::Unavailable { "unavailable" } else { "bad_request" },
            );
            return Err(e);
        }
    };
    if published.duplicate {
        hooks.count_inbound(&name, "replayed");
        return Err(ApiError::new(Code::BadRequest, "webhook-id already received (replay)"));
    }
    hooks.count_inbound(&name, "accepted");
    let v = serde_json::json!({"topic": source.topic.as_str(), "id": published.id, "ts": published.ts});
    Ok(json(StatusCode::ACCEPTED, &v))
}
