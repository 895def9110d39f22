//! HTTP API (contract §3): publish and history. Both need the credential's
//! grant for the topic (publish / subscribe) while auth is on.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::{access, ops, request};
use crate::core::message::Ephemeral;
use crate::core::PublishOptions;
use crate::error::{ApiError, Code};
use crate::metrics::Transport;
use crate::state::{AppState, ClientIp};

fn json(body: Vec<u8>) -> Response {
    let mut res = Bytes::from(body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// `GET /v1/presence/{topic}` → `{"topic","users","clients":[…]}`
/// (contract §11): needs the subscribe grant; a topic without presence is
/// a `bad_request`.
pub(crate) async fn presence(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let topic = request::topic(&name)?;
    let access = access::http(&state, ip, &headers, query.as_deref(), false)?;
    let listing = ops::presence(&state, &access, &topic).await?;
    Ok(json(listing.json("", &topic).into_bytes()))
}

/// `POST /v1/publish/{topic}`: the body is the message's JSON `data`.
pub(crate) async fn publish(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let topic = request::topic(&name)?;
    let (mut key, mut ephemeral) = (None, false);
    for (k, v) in request::query_pairs(query.as_deref())? {
        match &*k {
            "key" => key = Some(v.into_owned()),
            "ephemeral" => ephemeral = request::flag(&v, "ephemeral")?,
            _ => {}
        }
    }
    let mut access = access::http(&state, ip, &headers, query.as_deref(), false)?;
    if ephemeral {
        access.may_publish_ephemeral(&state, &topic, false)?;
    } else {
        access.may_publish(&state, &topic, false)?;
    }
    let max = state.config.limits.max_message_bytes;
    let too_large = || ApiError::new(Code::TooLarge, format!("body over {max} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    // Checked (with the data) by the one publish path.
    let idem = headers.get("idempotency-key").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = axum::body::to_bytes(body, max).await.map_err(|_| too_large())?;
    if ephemeral {
        let from = Ephemeral { origin: 0, user: access.grants.user.clone() };
        ops::publish_ephemeral(&state, Transport::Http, &topic, body, from).await?;
        let body = serde_json::json!({"topic": topic.as_str(), "ephemeral": true});
        return Ok(json(body.to_string().into_bytes()));
    }
    let options = PublishOptions { idempotency_key: idem.as_deref(), key: key.as_deref() };
    let published = ops::publish(&state, Transport::Http, &topic, body, options).await?;
    let body = serde_json::json!({"topic": topic.as_str(), "id": published.id, "ts": published.ts});
    Ok(json(body.to_string().into_bytes()))
}

/// `GET /v1/history/{topic}?after=ID&limit=N`.
pub(crate) async fn history(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let topic = request::topic(&name)?;
    access::http(&state, ip, &headers, query.as_deref(), false)?.may_subscribe(&topic)?;
    let mut after = None;
    let mut limit = request::HISTORY_DEFAULT;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "after" => after = Some(request::message_id(&v)?),
            "limit" => limit = request::parse_limit(&v, request::HISTORY_MAX)?,
            _ => {}
        }
    }
    let history = state.bus.engine.history(&topic, after, limit).await?;
    let mut out = Vec::with_capacity(64 + history.messages.iter().map(|m| m.data.len() + 80).sum::<usize>());
    out.extend_from_slice(b"{\"messages\":[");
    for (i, m) in history.messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&m.json());
    }
    out.extend_from_slice(b"],\"truncated\":");
    out.extend_from_slice(if history.truncated { b"true" } else { b"false" });
    out.push(b'}');
    Ok(json(out))
}
