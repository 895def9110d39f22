//! The contract's error vocabulary (§2) and every projection of a reason
//! onto a wire: [`Code`] → HTTP status and gRPC code, [`ApiError`] → HTTP
//! response, gRPC [`Status`] and the WebSocket close of a refused connect,
//! and [`Close`] (why a stream ends) → the gRPC status it ends with. The
//! WebSocket close codes are [`Close::ws_code`] in `core::close`. These
//! conversions only convert: whoever makes an error logs it.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Status;

use crate::core::{Close, EngineError};
use crate::pacing::{self, Pacer};

/// An error code from contract §2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Malformed JSON, unknown op, bad cursor or id.
    BadRequest,
    /// Topic name not allowed.
    BadTopic,
    /// Missing, bad or expired token.
    Unauthenticated,
    /// Token lacks the topic; origin not allowed.
    Forbidden,
    /// Over the size limit.
    TooLarge,
    /// Too many requests.
    RateLimited,
    /// Engine unreachable.
    Unavailable,
    /// No such route (HTTP only; not in contract §2's table, see README).
    NotFound,
}

impl Code {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::BadTopic => "bad_topic",
            Code::Unauthenticated => "unauthenticated",
            Code::Forbidden => "forbidden",
            Code::TooLarge => "too_large",
            Code::RateLimited => "rate_limited",
            Code::Unavailable => "unavailable",
            Code::NotFound => "not_found",
        }
    }

    /// The gRPC status code (contract §2).
    pub fn grpc(self) -> tonic::Code {
        match self {
            Code::BadRequest | Code::BadTopic => tonic::Code::InvalidArgument,
            Code::Unauthenticated => tonic::Code::Unauthenticated,
            Code::Forbidden => tonic::Code::PermissionDenied,
            Code::TooLarge | Code::RateLimited => tonic::Code::ResourceExhausted,
            Code::Unavailable => tonic::Code::Unavailable,
            Code::NotFound => tonic::Code::NotFound,
        }
    }

    /// The HTTP status.
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::BadRequest | Code::BadTopic => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::NotFound => StatusCode::NOT_FOUND,
        }
    }
}

/// An error answered to a client: a code and a human message. Internal
/// details are logged where the error is made, never put here.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The code.
    pub code: Code,
    /// Text for humans.
    pub message: String,
    /// When the client may try again (`Retry-After`, gRPC
    /// `retry-after-ms`); unset, `rate_limited` and `unavailable` say 1 s.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// Builds an error.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), retry_after: None }
    }

    /// The same error, telling the client to come back after `d` (a
    /// [`Pacer`] hint where many clients are refused at once).
    pub fn with_retry(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// How a WebSocket connect refused with this error is closed: 1013
    /// (try again) when the engine is unavailable or over a limit, 1008
    /// (policy) otherwise, with the code as the close reason for auth.
    pub fn connect_close(&self) -> Close {
        match self.code {
            Code::Unavailable => Close::Unavailable,
            Code::Unauthenticated => Close::Unauthenticated,
            Code::Forbidden => Close::Forbidden,
            Code::RateLimited => Close::RateLimited,
            _ => Close::Policy,
        }
    }

    /// The JSON body `{"error":{"code","message"}}`.
    pub fn body(&self) -> Bytes {
        let body = serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}});
        Bytes::from(body.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Unavailable(_) => ApiError::new(Code::Unavailable, "engine unavailable"),
            EngineError::IdsExhausted => ApiError::new(Code::Unavailable, "topic id space exhausted"),
            EngineError::Full(cap) => {
                ApiError::new(Code::Unavailable, format!("engine full ({cap} reached); nothing was stored"))
            }
            EngineError::Rejected(_) => ApiError::new(Code::BadRequest, "request rejected by the engine"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.code.http_status(), self.body()).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(d) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(pacing::retry_after_secs(d)));
        } else if self.code == Code::RateLimited || self.code == Code::Unavailable {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

/// The gRPC status for a contract error (§2): the message starts with the
/// contract's code; a retry hint goes in `retry-after-ms` and
/// `grpc-retry-pushback-ms`.
impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let message = format!("{}: {}", e.code.as_str(), e.message);
        match e.retry_after {
            Some(d) => Status::with_metadata(e.code.grpc(), message, retry_metadata(d)),
            None => Status::new(e.code.grpc(), message),
        }
    }
}

/// `retry-after-ms` and `grpc-retry-pushback-ms` for a hint of `d`.
pub fn retry_metadata(d: Duration) -> MetadataMap {
    let ms = MetadataValue::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut map = MetadataMap::new();
    map.insert(pacing::RETRY_AFTER_MS, ms.clone());
    map.insert(pacing::GRPC_PUSHBACK_MS, ms);
    map
}

/// The status a gRPC stream ends with when the server closes it for
/// `reason`; `None` when the client went away. A close that hits many
/// clients at once ([`pacing::paced`]: shutdown, engine unavailable)
/// carries a `pacer` hint in its trailers.
pub fn stream_end(reason: Close, pacer: &Pacer) -> Option<Status> {
    use tonic::Code as Grpc;
    let (code, text) = match reason {
        Close::Client => return None,
        Close::Slow => (
            Grpc::ResourceExhausted,
            "slow_consumer: the stream fell behind and its outbox filled; resume from the last cursor",
        ),
        Close::TooLarge => (Grpc::ResourceExhausted, "too_large: message over limits.max_message_bytes"),
        Close::Shutdown => (Grpc::Unavailable, "unavailable: shutting down; resume from the last cursor"),
        Close::Unavailable => {
            (Grpc::Unavailable, "unavailable: engine unavailable; resume from the last cursor")
        }
        Close::Silent => (Grpc::Unavailable, "unavailable: heartbeat timeout"),
        Close::Policy => (Grpc::InvalidArgument, "bad_request: cannot continue"),
        Close::Unauthenticated => (Grpc::Unauthenticated, "unauthenticated: no valid credential"),
        Close::Forbidden => (Grpc::PermissionDenied, "forbidden: not allowed"),
        Close::TokenExpired => (
            Grpc::Unauthenticated,
            "unauthenticated: token_expired; refresh the token and resume from the last cursor",
        ),
        Close::RateLimited => (Grpc::ResourceExhausted, "rate_limited: over an abuse limit"),
        Close::Kicked => (Grpc::Aborted, "kicked: disconnected by an operator"),
    };
    if pacing::paced(reason) {
        return Some(Status::with_metadata(code, text, retry_metadata(pacer.hint())));
    }
    Some(Status::new(code, text))
}

/// The status of a request tonic refused before any handler ran because it
/// was over the decoder's size limit (tonic says `OUT_OF_RANGE`, which no
/// handler of ours returns): the contract's `too_large`.
pub fn decode_limit_status() -> Status {
    Status::new(tonic::Code::ResourceExhausted, "too_large: message over limits.max_message_bytes")
}
