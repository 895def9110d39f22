//! Abuse limits (contract §8): connection attempts per client IP and
//! globally (token buckets), open streams per IP and per user, publishes per
//! connection, and the client IP behind trusted proxies. Every refusal is
//! `rate_limited` with a retry hint, and counted by reason
//! (`rtgate_rejections_total`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;

use crate::config::AbuseConfig;
use crate::error::{ApiError, Code};

/// The limits of one process, shared by every connection.
#[derive(Debug)]
pub struct Abuse {
    #[allow(dead_code)]
    cfg: AbuseConfig,
}

impl Abuse {
    /// Limits from `cfg` (validated by `Config::validate`).
    pub fn new(cfg: &AbuseConfig) -> Abuse {
        Abuse { cfg: cfg.clone() }
    }

    /// The client's address: `peer`, or, when `peer` is a trusted proxy,
    /// the rightmost untrusted address of `X-Forwarded-For`.
    pub fn client_ip(&self, peer: SocketAddr, _headers: &HeaderMap) -> IpAddr {
        peer.ip()
    }

    /// One connection attempt from `ip`: `Err(wait)` when over the per-IP
    /// or the global rate (`wait`: when a token is back).
    pub fn attempt(&self, _ip: IpAddr) -> Result<(), Duration> {
        Ok(())
    }

    /// Counts one open stream of `ip` (and `user`) until the guard drops;
    /// `rate_limited` over `max_connections_per_ip` / `_per_user`.
    pub fn open(self: &Arc<Self>, _ip: IpAddr, _user: Option<&str>) -> Result<OpenGuard, ApiError> {
        Ok(OpenGuard { _abuse: Arc::clone(self) })
    }

    /// One HTTP or gRPC `Publish` from `ip`: `Err(wait)` over the rate.
    pub fn publish_ip(&self, _ip: IpAddr) -> Result<(), Duration> {
        Ok(())
    }

    /// A fresh per-connection publish limiter (`None` when off).
    pub fn publish_limiter(&self) -> Option<PublishLimiter> {
        None
    }
}

/// One counted open stream; dropping it uncounts.
#[derive(Debug)]
pub struct OpenGuard {
    _abuse: Arc<Abuse>,
}

/// The publish rate of one connection.
#[derive(Debug)]
pub struct PublishLimiter {}

impl PublishLimiter {
    /// One publish: `rate_limited` when over the rate.
    pub fn check(&self) -> Result<(), ApiError> {
        Err(ApiError::new(Code::RateLimited, "publish rate over abuse.publish_rate_per_connection"))
    }
}
