//! Who is asking, and may they (contract §8): the request's bearer
//! credential (`Authorization: Bearer`, the `access_token` query parameter,
//! gRPC `authorization` metadata), the browser origin, the client address
//! and the [`Grants`], checked the same way on every transport.
//!
//! An [`Access`] travels with a stream: the subscription driver checks each
//! topic against it at subscribe, the op handler at publish (with the
//! connection's publish rate), and a `refresh` replaces its grants.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap};

use crate::abuse::{OpenGuard, PublishLimiter};
use crate::auth::{Grants, Principal};
use crate::core::Topic;
use crate::error::{ApiError, Code};
use crate::state::{AppState, ClientIp};

/// What a stream or request may do, and whose it is.
#[derive(Debug)]
pub(crate) struct Access {
    /// The credential's grants.
    pub(crate) grants: Arc<Grants>,
    /// The client's address (behind trusted proxies: the forwarded one).
    pub(crate) ip: IpAddr,
    /// The stream's place in the per-IP and per-user counts.
    open: Option<OpenGuard>,
    /// The connection's publish rate, made at its first publish.
    limiter: Option<Box<PublishLimiter>>,
    /// Ephemeral publishes of this connection (made on first use).
    ephemeral: Option<Box<PublishLimiter>>,
}

impl Access {
    /// Access with `grants` from `ip`.
    pub(crate) fn new(grants: Arc<Grants>, ip: IpAddr) -> Access {
        Access { grants, ip, open: None, limiter: None, ephemeral: None }
    }

    /// Everything, from nowhere: unit tests and internal streams.
    #[cfg(test)]
    pub(crate) fn anonymous() -> Access {
        Access::new(Arc::new(Grants::anonymous()), IpAddr::from([127, 0, 0, 1]))
    }

    /// Counts this stream against `abuse.max_connections_per_ip` and
    /// `_per_user` for as long as the access lives.
    pub(crate) fn open_stream(&mut self, state: &AppState) -> Result<(), ApiError> {
        if self.open.is_none() {
            let user = self.grants.user.as_deref();
            // A refusal is counted by `Abuse::open`.
            self.open = Some(state.abuse.open(self.ip, user)?);
        }
        Ok(())
    }

    /// `forbidden` unless the grants allow subscribing to `topic`.
    pub(crate) fn may_subscribe(&self, topic: &Topic) -> Result<(), ApiError> {
        if self.grants.can_subscribe(topic.as_str()) {
            return Ok(());
        }
        crate::metrics::rejected("forbidden");
        Err(ApiError::new(
            Code::Forbidden,
            format!("the token does not allow subscribing to {}", topic.as_str()),
        ))
    }

    /// `forbidden` unless the grants allow publishing to `topic`;
    /// `rate_limited` over the connection's publish rate (`per_connection`:
    /// a long-lived connection; otherwise the client address's rate). API
    /// keys and `abuse.exempt` addresses have no publish rate.
    pub(crate) fn may_publish(
        &mut self,
        state: &AppState,
        topic: &Topic,
        per_connection: bool,
    ) -> Result<(), ApiError> {
        self.may_publish_to(state, topic, per_connection)?;
        if self.grants.principal == Principal::ApiKey || state.abuse.exempt(self.ip) {
            return Ok(());
        }
        if per_connection {
            if self.limiter.is_none() {
                self.limiter = state.abuse.publish_limiter().map(Box::new);
            }
            if let Some(limiter) = &self.limiter {
                return limiter.check();
            }
        } else if let Err(wait) = state.abuse.publish_ip(self.ip) {
            return Err(ApiError::new(
                Code::RateLimited,
                "publish rate over abuse.publish_rate_per_connection",
            )
            .with_retry(wait));
        }
        Ok(())
    }

    /// [`Access::may_publish`] for an ephemeral publish (contract §11): the
    /// same grants and policy, then a rate of its own,
    /// `abuse.ephemeral_rate_per_connection` (per connection; for HTTP per
    /// client IP, as stored publishes).
    pub(crate) fn may_publish_ephemeral(
        &mut self,
        state: &AppState,
        topic: &Topic,
        per_connection: bool,
    ) -> Result<(), ApiError> {
        if !per_connection {
            return self.may_publish(state, topic, false);
        }
        self.may_publish_to(state, topic, true)?;
        if self.grants.principal == Principal::ApiKey || state.abuse.exempt(self.ip) {
            return Ok(());
        }
        if self.ephemeral.is_none() {
            self.ephemeral = state.abuse.ephemeral_limiter().map(Box::new);
        }
        match &self.ephemeral {
            Some(limiter) => limiter.check(),
            None => Ok(()),
        }
    }

    /// The grants and the topic's `client_publish` policy.
    fn may_publish_to(&self, state: &AppState, topic: &Topic, per_connection: bool) -> Result<(), ApiError> {
        if !self.grants.can_publish(topic.as_str()) {
            crate::metrics::rejected("forbidden");
            return Err(ApiError::new(
                Code::Forbidden,
                format!("the token does not allow publishing to {}", topic.as_str()),
            ));
        }
        // `client_publish = false`: API keys only; with auth off, only the
        // server-to-server requests (HTTP, gRPC `Publish`), not client streams.
        let client = match self.grants.principal {
            Principal::ApiKey => false,
            Principal::User => true,
            Principal::Anonymous => per_connection,
        };
        if client && !state.bus.hub.policies().get(topic.as_str()).client_publish {
            crate::metrics::rejected("forbidden");
            return Err(ApiError::new(
                Code::Forbidden,
                format!(
                    "only API keys may publish to {} (topic policy client_publish = false)",
                    topic.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// Replaces the grants (a `refresh`); the user may not change.
    pub(crate) fn refresh(&mut self, grants: Arc<Grants>) -> Result<(), ApiError> {
        if grants.user != self.grants.user {
            return Err(ApiError::new(Code::Forbidden, "a refresh token must be for the same user"));
        }
        self.grants = grants;
        Ok(())
    }
}

/// The bearer credential of an HTTP request: `Authorization: Bearer X`,
/// else the `access_token` query parameter.
pub(crate) fn bearer<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<Cow<'a, str>> {
    if let Some(token) = header_token(headers) {
        return token.map(Cow::Borrowed);
    }
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == "access_token").map(|(_, v)| v)
}

/// The `Authorization` header's verdict: `None` without the header (the
/// query may give a token), `Some(None)` when it is not `Bearer X`.
fn header_token(headers: &HeaderMap) -> Option<Option<&str>> {
    headers.get(header::AUTHORIZATION).map(|v| v.to_str().ok().and_then(strip_bearer))
}

/// The token of an `Authorization` value `Bearer X` (scheme in any case).
pub(crate) fn strip_bearer(v: &str) -> Option<&str> {
    let (scheme, rest) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()).filter(|t| !t.is_empty())
}

/// `forbidden` for a browser request from an origin not in
/// `auth.allowed_origins` (requests without `Origin` are not browsers').
pub(crate) fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let allowed = &state.config.auth.allowed_origins;
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    if allowed.is_empty() || allowed.iter().any(|a| a == "*" || a.as_bytes() == origin.as_bytes()) {
        return Ok(());
    }
    crate::metrics::rejected("origin");
    Err(ApiError::new(Code::Forbidden, "origin not allowed"))
}

/// The access of an HTTP request from client address `ip` (origin checked
/// first when `browser`): its credential's grants, or `unauthenticated`.
pub(crate) fn http(
    state: &AppState,
    ip: IpAddr,
    headers: &HeaderMap,
    query: Option<&str>,
    browser: bool,
) -> Result<Access, ApiError> {
    with_credential(state, ip, headers, bearer(headers, query).as_deref(), browser)
}

/// [`http`] for a caller that parsed the query itself: `query_token` is
/// its `access_token`, used when there is no `Authorization` header.
pub(crate) fn http_with_token(
    state: &AppState,
    ip: IpAddr,
    headers: &HeaderMap,
    query_token: Option<&str>,
    browser: bool,
) -> Result<Access, ApiError> {
    with_credential(state, ip, headers, header_token(headers).unwrap_or(query_token), browser)
}

/// The origin check (for a browser's request), then the grants of
/// `credential`.
fn with_credential(
    state: &AppState,
    ip: IpAddr,
    headers: &HeaderMap,
    credential: Option<&str>,
    browser: bool,
) -> Result<Access, ApiError> {
    if browser {
        check_origin(state, headers)?;
    }
    let grants = authenticate(state, credential)?;
    Ok(Access::new(grants, ip))
}

/// The access of a gRPC call: the `authorization: Bearer` metadata entry
/// (gRPC clients are not browsers: no origin check).
pub(crate) fn grpc<T>(state: &AppState, req: &tonic::Request<T>) -> Result<Access, ApiError> {
    let ClientIp(ip) = ClientIp::of(req.extensions());
    http(state, ip, req.metadata().as_ref(), None, false)
}

/// Grants for `credential`, counting a refusal.
pub(crate) fn authenticate(state: &AppState, credential: Option<&str>) -> Result<Arc<Grants>, ApiError> {
    state.auth.authenticate(credential).map_err(|e| {
        crate::metrics::rejected("unauthenticated");
        tracing::debug!(error = %e, "credential refused");
        ApiError::from(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_comes_from_the_header_first_then_the_query() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h, Some("topic=a&access_token=q%2Bt")).as_deref(), Some("q+t"));
        assert_eq!(bearer(&h, Some("topic=a")), None);
        assert_eq!(bearer(&h, None), None);
        h.insert(header::AUTHORIZATION, "bEaReR  abc ".parse().unwrap());
        assert_eq!(bearer(&h, Some("access_token=q")).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h, Some("access_token=q")), None, "a header that is not Bearer is not a token");
        assert_eq!(strip_bearer("Bearer "), None);
        assert_eq!(strip_bearer("Bearer"), None);
    }
}
