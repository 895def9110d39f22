//! [`Config::validate`]: ranges of keys and relations between them, each
//! error naming its key.

use std::time::Duration;

use super::{Config, ConfigError, EngineKind, MAX_CREDENTIAL_LEN};

/// Bounds of `http.send_buffer` when set.
const MIN_SEND_BUFFER: usize = 4096;
const MAX_SEND_BUFFER: usize = 64 << 20;

impl Config {
    /// Checks ranges and relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, reason: &str) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { key, reason: reason.into() })
        }
        self.validate_auth()?;
        self.validate_webhooks()?;
        self.validate_topics()?;
        if self.history.max_len == 0 {
            return bad("history.max_len", "must be at least 1");
        }
        if self.history.max_age.is_zero() {
            return bad("history.max_age", "must be more than 0s");
        }
        if !(1..=10_000).contains(&self.history.replay_page) {
            return bad("history.replay_page", "must be 1 to 10000");
        }
        if !(2..=16 << 20).contains(&self.limits.max_message_bytes) {
            return bad("limits.max_message_bytes", "must be 2 bytes to 16 MiB");
        }
        if self.limits.outbox_capacity == 0 {
            return bad("limits.outbox_capacity", "must be at least 1");
        }
        if self.limits.max_connections == 0 {
            return bad("limits.max_connections", "must be at least 1");
        }
        if self.limits.max_topics_per_connection == 0 {
            return bad("limits.max_topics_per_connection", "must be at least 1");
        }
        if self.limits.max_topics == 0 {
            return bad("limits.max_topics", "must be at least 1");
        }
        if self.memory.max_retained_bytes < 4096 {
            return bad("memory.max_retained_bytes", "must be at least 4096");
        }
        if self.heartbeat.interval.is_zero() {
            return bad("heartbeat.interval", "must be more than 0s");
        }
        if self.heartbeat.timeout <= self.heartbeat.interval {
            return bad("heartbeat.timeout", "must be longer than heartbeat.interval");
        }
        if self.redis.shards == 0 || self.redis.shards > 1024 {
            return bad("redis.shards", "must be 1 to 1024");
        }
        if self.redis.op_timeout.is_zero() {
            return bad("redis.op_timeout", "must be more than 0s");
        }
        if self.redis.block.is_zero() || self.redis.block > Duration::from_secs(60) {
            return bad("redis.block", "must be more than 0s and at most 60s");
        }
        if self.engine.kind == EngineKind::Redis {
            if self.redis.cluster_urls.is_empty() {
                if redis::parse_redis_url(&self.redis.url).is_none() {
                    return bad("redis.url", "not a redis:// URL");
                }
            } else if self.redis.cluster_urls.iter().any(|u| redis::parse_redis_url(u).is_none()) {
                return bad("redis.cluster_urls", "not a list of redis:// URLs");
            }
        }
        if self.sse.retry.is_zero() {
            return bad("sse.retry", "must be more than 0s");
        }
        if self.poll.max_timeout.is_zero() || self.poll.default_timeout > self.poll.max_timeout {
            return bad(
                "poll.default_timeout",
                "must be at most poll.max_timeout, which must be more than 0s",
            );
        }
        for origin in &self.http.cors_origins {
            if origin != "*" && axum::http::HeaderValue::from_str(origin).is_err() {
                return bad("http.cors_origins", "an origin is not a valid header value");
            }
        }
        for (key, d) in [
            ("http.handshake_timeout", self.http.handshake_timeout),
            ("http.body_timeout", self.http.body_timeout),
            ("http.tcp_keepalive", self.http.tcp_keepalive),
        ] {
            if d < Duration::from_secs(1) {
                return bad(key, "must be at least 1s");
            }
        }
        let send_buffer = self.http.send_buffer;
        if send_buffer != 0 && !(MIN_SEND_BUFFER..=MAX_SEND_BUFFER).contains(&send_buffer) {
            return bad("http.send_buffer", "must be 0 (the kernel's default) or 4096 to 67108864 bytes");
        }
        if self.http2.keepalive_interval.is_zero() || self.http2.keepalive_timeout.is_zero() {
            return bad("http2.keepalive_interval", "keepalive interval and timeout must be more than 0s");
        }
        if self.http2.max_concurrent_streams == 0 {
            return bad("http2.max_concurrent_streams", "must be at least 1");
        }
        if self.grpc.stall_timeout.is_zero() {
            return bad("grpc.stall_timeout", "must be more than 0s");
        }
        if self.idempotency.ttl.is_zero() {
            return bad("idempotency.ttl", "must be more than 0s");
        }
        if self.tls.reload_interval < Duration::from_millis(100) {
            return bad("tls.reload_interval", "must be at least 100ms");
        }
        // Both files or neither; readable, parseable, and a matching pair.
        self.tls.load()?;
        self.validate_abuse()
    }
}

impl Config {
    /// `[auth]`. Key files are read (and checked) when the server starts.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, reason: &str) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { key, reason: reason.into() })
        }
        let auth = &self.auth;
        if auth.hmac_secrets.iter().any(String::is_empty) {
            return bad("auth.hmac_secrets", "an entry is empty");
        }
        // An API key travels as `Authorization: Bearer <key>`: visible ASCII,
        // no longer than the longest credential considered.
        let visible = |k: &String| k.bytes().all(|b| b.is_ascii_graphic());
        if auth.api_keys.iter().any(|k| k.is_empty() || k.len() > MAX_CREDENTIAL_LEN || !visible(k)) {
            return bad("auth.api_keys", "an entry is not 1 to 8192 visible ASCII characters (no spaces)");
        }
        for (key, paths) in
            [("auth.rsa_public_keys", &auth.rsa_public_keys), ("auth.ec_public_keys", &auth.ec_public_keys)]
        {
            if paths.iter().any(|p| p.as_os_str().is_empty()) {
                return bad(key, "an entry is an empty path");
            }
        }
        if auth.jwks_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return bad("auth.jwks_file", "is an empty path; leave it unset");
        }
        if auth.reload_interval < Duration::from_millis(100) {
            return bad("auth.reload_interval", "must be at least 100ms");
        }
        if auth.leeway > Duration::from_secs(600) {
            return bad("auth.leeway", "must be at most 10m");
        }
        if auth.issuer.as_ref().is_some_and(String::is_empty) {
            return bad("auth.issuer", "is empty; leave it unset to accept any issuer");
        }
        if auth.audience.as_ref().is_some_and(String::is_empty) {
            return bad("auth.audience", "is empty; leave it unset to accept any audience");
        }
        if auth.allowed_origins.iter().any(|o| o.is_empty() || axum::http::HeaderValue::from_str(o).is_err())
        {
            return bad("auth.allowed_origins", "an origin is not a valid header value");
        }
        Ok(())
    }

    /// `[abuse]` and `[reconnect]`.
    fn validate_abuse(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, reason: &str) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { key, reason: reason.into() })
        }
        let a = &self.abuse;
        for (rate, burst, key) in [
            (a.connect_rate_per_ip, a.connect_burst_per_ip, "abuse.connect_burst_per_ip"),
            (a.connect_rate_global, a.connect_burst_global, "abuse.connect_burst_global"),
            (
                a.publish_rate_per_connection,
                a.publish_burst_per_connection,
                "abuse.publish_burst_per_connection",
            ),
        ] {
            if rate > 0 && burst == 0 {
                return bad(key, "must be at least 1 while its rate is on (more than 0)");
            }
        }
        if let Err(e) = a.trusted_nets() {
            return bad("abuse.trusted_proxies", &e);
        }
        if let Err(e) = a.exempt_nets() {
            return bad("abuse.exempt", &e);
        }
        let r = &self.reconnect;
        if r.window.is_zero() || r.window > Duration::from_secs(600) {
            return bad("reconnect.window", "must be more than 0s and at most 10m");
        }
        if r.window < r.min {
            return bad("reconnect.window", "must be at least reconnect.min");
        }
        Ok(())
    }
}
