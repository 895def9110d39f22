//! Abuse limits (contract §8): connection attempts per client IP and
//! globally (token buckets), open streams per IP and per user, publishes per
//! connection (and per client IP for HTTP and gRPC `Publish`), and the
//! client IP behind trusted proxies. Every refusal is `rate_limited` with a
//! retry hint, and counted by reason (`rtgate_rejections_total`).
//!
//! # Memory
//!
//! The keyed token buckets ([`governor`] over a sharded map) hold an entry
//! per address seen recently; every [`CLEANUP_EVERY`] checks the entries
//! whose bucket is full again (indistinguishable from a fresh one) are
//! dropped, so a storm from many distinct addresses holds no more than the
//! addresses of the last moments. The open-stream counters hold an entry per
//! address (and user) with at least one open stream: an entry goes when its
//! count drops to 0. A per-connection publish limiter is 40 bytes,
//! allocated by the caller on the connection's first publish.

mod client_ip;
#[cfg(test)]
mod tests;

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::config::AbuseConfig;
use crate::error::{ApiError, Code};
use crate::metrics;

/// Checks of a keyed limiter between two cleanups of its idle entries.
pub const CLEANUP_EVERY: u32 = 1024;

/// Rejection reasons (`rtgate_rejections_total{reason}`) of this module.
pub mod reason {
    /// Connection attempts of one client IP over `abuse.connect_rate_per_ip`.
    pub const CONNECT_RATE_IP: &str = "connect_rate_ip";
    /// Connection attempts over `abuse.connect_rate_global`.
    pub const CONNECT_RATE_GLOBAL: &str = "connect_rate_global";
    /// Open streams of one client IP at `abuse.max_connections_per_ip`.
    pub const CONNECTIONS_PER_IP: &str = "connections_per_ip";
    /// Open streams of one user at `abuse.max_connections_per_user`.
    pub const CONNECTIONS_PER_USER: &str = "connections_per_user";
    /// Publishes over `abuse.publish_rate_per_connection`.
    pub const PUBLISH_RATE: &str = "publish_rate";
}

/// The limits of one process, shared by every connection.
#[derive(Debug)]
pub struct Abuse {
    connect_ip: Option<Keyed>,
    connect_global: Option<DefaultDirectRateLimiter>,
    publish_ip: Option<Keyed>,
    publish_quota: Option<Quota>,
    ephemeral_quota: Option<Quota>,
    max_per_ip: u32,
    max_per_user: u32,
    open_ip: DashMap<IpAddr, u32>,
    open_user: DashMap<Box<str>, u32>,
    trusted: Vec<IpNet>,
    exempt: Vec<IpNet>,
}

impl Abuse {
    /// Limits from `cfg` (validated by `Config::validate`; an entry of
    /// `trusted_proxies` that does not parse is ignored here).
    pub fn new(cfg: &AbuseConfig) -> Abuse {
        let trusted = cfg.trusted_nets().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "abuse.trusted_proxies: ignoring the list");
            Vec::new()
        });
        let exempt = cfg.exempt_nets().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "abuse.exempt: ignoring the list");
            Vec::new()
        });
        Abuse {
            exempt,
            connect_ip: quota(cfg.connect_rate_per_ip, cfg.connect_burst_per_ip).map(Keyed::new),
            connect_global: quota(cfg.connect_rate_global, cfg.connect_burst_global).map(RateLimiter::direct),
            publish_ip: quota(cfg.publish_rate_per_connection, cfg.publish_burst_per_connection)
                .map(Keyed::new),
            publish_quota: quota(cfg.publish_rate_per_connection, cfg.publish_burst_per_connection),
            ephemeral_quota: quota(cfg.ephemeral_rate_per_connection, cfg.ephemeral_burst_per_connection),
            max_per_ip: cfg.max_connections_per_ip,
            max_per_user: cfg.max_connections_per_user,
            open_ip: DashMap::new(),
            open_user: DashMap::new(),
            trusted,
        }
    }

    /// The client's address: `peer`, or, when `peer` is a trusted proxy
    /// (`abuse.trusted_proxies`), the rightmost address of
    /// `X-Forwarded-For` that is not a trusted proxy. A malformed header
    /// counts as none (the peer). IPv4-mapped IPv6 addresses are given as
    /// IPv4.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        client_ip::resolve(&self.trusted, peer.ip(), headers)
    }

    /// Whether `ip` is in `abuse.exempt`: no per-IP or per-connection limit.
    pub fn exempt(&self, ip: IpAddr) -> bool {
        self.exempt.iter().any(|net| net.contains(&ip))
    }

    /// One connection attempt from `ip`: `Err(wait)` when over the per-IP
    /// (unless exempt) or the global rate (`wait`: when a token is back).
    pub fn attempt(&self, ip: IpAddr) -> Result<(), Duration> {
        if let Some(limiter) = self.connect_ip.as_ref().filter(|_| !self.exempt(ip)) {
            limiter.check(ip).inspect_err(|_| metrics::rejected(reason::CONNECT_RATE_IP))?;
        }
        if let Some(limiter) = &self.connect_global {
            limiter.check().map_err(|not_until| {
                metrics::rejected(reason::CONNECT_RATE_GLOBAL);
                not_until.wait_time_from(limiter.clock().now())
            })?;
        }
        Ok(())
    }

    /// One HTTP or gRPC `Publish` request from `ip`: `Err(wait)` when over
    /// `abuse.publish_rate_per_connection` for that address.
    pub fn publish_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        match self.publish_ip.as_ref().filter(|_| !self.exempt(ip)) {
            Some(limiter) => limiter.check(ip).inspect_err(|_| metrics::rejected(reason::PUBLISH_RATE)),
            None => Ok(()),
        }
    }

    /// Counts one open stream of `ip` (and `user`) until the guard drops;
    /// `rate_limited` over `max_connections_per_ip` / `_per_user`.
    pub fn open(self: &Arc<Self>, ip: IpAddr, user: Option<&str>) -> Result<OpenGuard, ApiError> {
        let ip = if self.max_per_ip > 0 && !self.exempt(ip) {
            if !acquire(&self.open_ip, ip, self.max_per_ip) {
                metrics::rejected(reason::CONNECTIONS_PER_IP);
                return Err(ApiError::new(
                    Code::RateLimited,
                    "too many open connections from this address (abuse.max_connections_per_ip)",
                ));
            }
            Some(ip)
        } else {
            None
        };
        // From here on the guard undoes what it counted, also on refusal.
        let mut guard = OpenGuard { abuse: Arc::clone(self), ip, user: None };
        if let Some(user) = user.filter(|_| self.max_per_user > 0) {
            let user: Box<str> = user.into();
            if !acquire(&self.open_user, user.clone(), self.max_per_user) {
                metrics::rejected(reason::CONNECTIONS_PER_USER);
                return Err(ApiError::new(
                    Code::RateLimited,
                    "too many open connections of this user (abuse.max_connections_per_user)",
                ));
            }
            guard.user = Some(user);
        }
        Ok(guard)
    }

    /// A fresh per-connection publish limiter (`None` when off).
    pub fn publish_limiter(&self) -> Option<PublishLimiter> {
        self.publish_quota.map(|q| PublishLimiter(RateLimiter::direct_with_clock(q, MonotonicClock), false))
    }

    /// A fresh per-connection limiter of ephemeral publishes (`None` when off).
    pub fn ephemeral_limiter(&self) -> Option<PublishLimiter> {
        self.ephemeral_quota.map(|q| PublishLimiter(RateLimiter::direct_with_clock(q, MonotonicClock), true))
    }

    /// Streams open now from `ip` (0 when not counted).
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        self.open_ip.get(&ip).map_or(0, |c| *c)
    }

    /// Streams open now of `user` (0 when not counted).
    pub fn open_of(&self, user: &str) -> u32 {
        self.open_user.get(user).map_or(0, |c| *c)
    }

    /// Addresses the per-IP connection-attempt buckets hold now.
    pub fn tracked_addresses(&self) -> usize {
        self.connect_ip.as_ref().map_or(0, |k| k.limiter.len())
    }
}

/// The quota for `rate` per second with a bucket of `burst` (at least 1);
/// `None` when `rate` is 0 (off).
fn quota(rate: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(rate)?;
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Some(Quota::per_second(rate).allow_burst(burst))
}

/// A token bucket per client address, cleaned of idle addresses every
/// [`CLEANUP_EVERY`] checks.
#[derive(Debug)]
struct Keyed {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU32,
}

impl Keyed {
    fn new(quota: Quota) -> Keyed {
        Keyed { limiter: RateLimiter::keyed(quota), checks: AtomicU32::new(0) }
    }

    fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let n = self.checks.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if n.is_multiple_of(CLEANUP_EVERY) {
            self.limiter.retain_recent();
            if n.is_multiple_of(CLEANUP_EVERY * 16) {
                self.limiter.shrink_to_fit();
            }
        }
        self.limiter.check_key(&ip).map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }
}

/// Counts one more for `key` unless it is at `max`.
fn acquire<K: Hash + Eq>(map: &DashMap<K, u32>, key: K, max: u32) -> bool {
    let mut count = map.entry(key).or_insert(0);
    if *count >= max {
        return false;
    }
    *count += 1;
    true
}

/// Counts one less for `key`; the entry goes at 0.
fn release<K: Hash + Eq>(map: &DashMap<K, u32>, key: K) {
    if let Entry::Occupied(mut e) = map.entry(key) {
        if *e.get() <= 1 {
            e.remove();
        } else {
            *e.get_mut() -= 1;
        }
    }
}

/// One counted open stream; dropping it uncounts.
#[derive(Debug)]
pub struct OpenGuard {
    abuse: Arc<Abuse>,
    ip: Option<IpAddr>,
    user: Option<Box<str>>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(ip) = self.ip.take() {
            release(&self.abuse.open_ip, ip);
        }
        if let Some(user) = self.user.take() {
            release(&self.abuse.open_user, user);
        }
    }
}

/// The publish rate of one connection (`abuse.publish_rate_per_connection`,
/// bucket `publish_burst_per_connection`). On governor's std clock, which
/// needs no state of its own (40 bytes in all); nothing here is timed by
/// tokio, so paused test time does not apply.
#[derive(Debug)]
#[allow(clippy::disallowed_types)]
pub struct PublishLimiter(
    RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<std::time::Instant>>,
    /// True for the ephemeral publishes' limiter.
    bool,
);

impl PublishLimiter {
    /// One publish: `rate_limited` when over the rate (its retry hint: when
    /// a token is back).
    pub fn check(&self) -> Result<(), ApiError> {
        self.0.check().map_err(|not_until| {
            metrics::rejected(reason::PUBLISH_RATE);
            let wait = not_until.wait_time_from(self.0.clock().now());
            let what = if self.1 {
                "ephemeral publish rate over abuse.ephemeral_rate_per_connection"
            } else {
                "publish rate over abuse.publish_rate_per_connection"
            };
            ApiError::new(Code::RateLimited, what).with_retry(wait)
        })
    }
}
