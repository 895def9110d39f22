//! Configuration: defaults, then `gateway.toml` (or `--config`), then
//! `RTGATE_…` environment variables, then command-line flags.
//!
//! Environment keys are the TOML path in upper case with `__` between
//! sections: `RTGATE_LISTEN`, `RTGATE_HISTORY__MAX_LEN=500`,
//! `RTGATE_SHUTDOWN__GRACE=5s`. This module never binds or connects;
//! [`Config::validate`] rejects bad values with the key's name.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A configuration that could not be loaded or is invalid.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Parse or type error; the message names the key and the source.
    #[error("{0}")]
    Load(Box<figment::Error>),
    /// A value out of range.
    #[error("invalid config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key path.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The whole configuration; every key is documented in `gateway.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on for every transport: HTTP, WebSocket, SSE, long polling and gRPC.
    pub listen: SocketAddr,
    /// Which engine stores messages.
    pub engine: EngineConfig,
    /// The Redis engine's connection and keys.
    pub redis: RedisConfig,
    /// Retention of each topic's history.
    pub history: HistoryConfig,
    /// The embedded engine's caps.
    pub memory: MemoryConfig,
    /// Sizes and bounds.
    pub limits: LimitsConfig,
    /// Publish deduplication.
    pub idempotency: IdempotencyConfig,
    /// Liveness of long-lived connections.
    pub heartbeat: HeartbeatConfig,
    /// WebSocket library buffers.
    pub websocket: WebSocketConfig,
    /// Server-Sent Events.
    pub sse: SseConfig,
    /// HTTP long polling.
    pub poll: PollConfig,
    /// Plain HTTP endpoints (CORS).
    pub http: HttpConfig,
    /// HTTP/2 connections (gRPC, and h2c clients of the HTTP endpoints).
    pub http2: Http2Config,
    /// The gRPC service.
    pub grpc: GrpcConfig,
    /// The optional admin listener.
    pub admin: AdminConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[engine]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// `memory` (embedded, default).
    pub kind: EngineKind,
}

/// `[redis]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Seed nodes of a Redis Cluster; when set, `url` is not used.
    pub cluster_urls: Vec<String>,
    /// Prefix of every key rtgate writes.
    pub key_prefix: String,
    /// Key groups (one reader connection each); all processes sharing a
    /// Redis must use the same value, and it must not change on existing data.
    pub shards: u16,
    /// Timeout of one Redis command (and of connecting).
    #[serde(with = "humantime_serde")]
    pub op_timeout: Duration,
    /// How long a reader's `XREAD` blocks waiting for new entries.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/".into(),
            cluster_urls: Vec::new(),
            key_prefix: "rtgate:".into(),
            shards: 8,
            op_timeout: Duration::from_secs(2),
            block: Duration::from_secs(5),
        }
    }
}

/// Engine implementations.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// In-process memory: no setup, history lost on restart.
    #[default]
    Memory,
    /// Redis Streams: durable history, several processes share one Redis.
    Redis,
}

/// `[history]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Messages kept per topic.
    pub max_len: usize,
    /// Age after which messages are dropped (`"24h"`, `"90s"`).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Messages read per history page while replaying a resume.
    pub replay_page: usize,
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest `data` accepted, bytes of JSON text.
    pub max_message_bytes: usize,
    /// Messages queued per connection before it is closed as slow.
    pub outbox_capacity: usize,
    /// Concurrent connections accepted (all transports); more wait in the
    /// kernel's accept queue.
    pub max_connections: usize,
    /// Topics one connection may subscribe to.
    pub max_topics_per_connection: usize,
    /// Topics this process holds at once: topics with local subscribers
    /// (either engine) and, separately, topics the memory engine stores. A
    /// subscribe or publish needing one more is refused (`unavailable`).
    pub max_topics: usize,
}

/// `[memory]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Bytes the memory engine retains at once (message data, idempotency
    /// keys, per-message and per-topic overheads); a publish past it is
    /// refused (`unavailable`).
    pub max_retained_bytes: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { max_retained_bytes: 256 << 20 }
    }
}

/// `[idempotency]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// How long an `Idempotency-Key` is remembered.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Keys remembered per topic; the oldest are forgotten first.
    pub max_keys_per_topic: usize,
}

/// `[heartbeat]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// How often the server pings an otherwise quiet connection.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A connection silent this long is closed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// `[websocket]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Initial read buffer per connection, bytes. Small keeps idle
    /// connections cheap; larger frames grow it as needed.
    pub read_buffer_size: usize,
    /// Bytes buffered before a write reaches the socket; 0 writes each frame
    /// at once.
    pub write_buffer_size: usize,
    /// Bytes a connection may have waiting in its write buffer before a send
    /// fails.
    pub max_write_buffer_size: usize,
}

/// `[sse]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// The `retry:` hint: how long a browser waits before reconnecting.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig { retry: Duration::from_secs(2) }
    }
}

/// `[poll]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// How long a poll is held when the client gives no `timeout`.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// The longest `timeout` a client may ask for.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig { default_timeout: Duration::from_secs(25), max_timeout: Duration::from_secs(60) }
    }
}

/// `[http2]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// How often the server pings an HTTP/2 connection (keepalive).
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may stay unanswered before the connection
    /// is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Streams (gRPC calls) one HTTP/2 connection may have open at once.
    pub max_concurrent_streams: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(20),
            max_concurrent_streams: 1024,
        }
    }
}

/// `[grpc]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// A stream closed as a slow consumer whose client still does not read
    /// (HTTP/2 flow control keeps the stream from ending) for this long gets
    /// its whole connection closed.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig { stall_timeout: Duration::from_secs(10) }
    }
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Origins allowed by CORS on the HTTP, SSE and poll endpoints; `["*"]`
    /// allows any origin.
    pub cors_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { cors_origins: vec!["*".into()] }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// When set, `/metrics` (with `/healthz` and `/readyz`) is served on this
    /// address instead of the public one.
    pub listen: Option<SocketAddr>,
}

/// `[shutdown]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Time allowed to close connections and finish in-flight work.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter; `RUST_LOG` wins when set.
    pub level: String,
    /// OTLP/HTTP endpoint for span export (e.g.
    /// `http://127.0.0.1:4318/v1/traces`); needs the `otlp` cargo feature.
    pub otlp_endpoint: Option<String>,
}

/// Log line formats.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            engine: EngineConfig::default(),
            redis: RedisConfig::default(),
            history: HistoryConfig::default(),
            memory: MemoryConfig::default(),
            limits: LimitsConfig::default(),
            idempotency: IdempotencyConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            websocket: WebSocketConfig::default(),
            sse: SseConfig::default(),
            poll: PollConfig::default(),
            http: HttpConfig::default(),
            http2: Http2Config::default(),
            grpc: GrpcConfig::default(),
            admin: AdminConfig::default(),
            shutdown: ShutdownConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl EngineConfig {
    /// The engine's name for logs.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            EngineKind::Memory => "memory",
            EngineKind::Redis => "redis",
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { kind: EngineKind::Memory }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { max_len: 10_000, max_age: Duration::from_secs(24 * 3600), replay_page: 1000 }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 65_536,
            outbox_capacity: 1024,
            max_connections: 100_000,
            max_topics_per_connection: 64,
            max_topics: 1_000_000,
        }
    }
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig { ttl: Duration::from_secs(24 * 3600), max_keys_per_topic: 10_000 }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig { interval: Duration::from_secs(15), timeout: Duration::from_secs(45) }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig { read_buffer_size: 1024, write_buffer_size: 0, max_write_buffer_size: 1 << 20 }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace: Duration::from_secs(10) }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".into(), otlp_endpoint: None }
    }
}

impl Config {
    /// Loads defaults ← `file` (if given) ← `RTGATE_*` environment, and
    /// validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    reason: format!("file {} does not exist", file.display()),
                });
            }
            fig = fig.merge(Toml::file(file));
        }
        fig = fig.merge(Env::prefixed("RTGATE_").split("__").ignore(&["config"]));
        let config: Config = fig.extract().map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document over the defaults (tests, `--print-config`).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, reason: &str) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { key, reason: reason.into() })
        }
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
        if self.websocket.read_buffer_size < 256 {
            return bad("websocket.read_buffer_size", "must be at least 256");
        }
        if self.websocket.max_write_buffer_size <= self.websocket.write_buffer_size {
            return bad("websocket.max_write_buffer_size", "must be larger than websocket.write_buffer_size");
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
        Ok(())
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Largest WebSocket frame accepted: a publish frame's envelope around
    /// `max_message_bytes` of data.
    pub fn ws_max_frame(&self) -> usize {
        self.limits.max_message_bytes + 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_round_trip() {
        let c = Config::default();
        c.validate().unwrap();
        let back = Config::from_toml(&c.to_toml()).unwrap();
        assert_eq!(back.listen, c.listen);
        assert_eq!(back.history.max_age, c.history.max_age);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[history]\nmax_len = 0\n").unwrap_err().to_string();
        assert!(e.contains("history.max_len"), "{e}");
        let e = Config::from_toml("[history]\nmax_len = \"ten\"\n").unwrap_err().to_string();
        assert!(e.contains("max_len"), "{e}");
        let e = Config::from_toml("[history]\nmax_lenn = 3\n").unwrap_err().to_string();
        assert!(e.contains("max_lenn"), "{e}");
        let e =
            Config::from_toml("[heartbeat]\ninterval = \"10s\"\ntimeout = \"5s\"\n").unwrap_err().to_string();
        assert!(e.contains("heartbeat.timeout"), "{e}");
        let c = Config::from_toml("listen = \"0.0.0.0:9\"\n[history]\nmax_age = \"90s\"\n").unwrap();
        assert_eq!(c.history.max_age, Duration::from_secs(90));
        assert_eq!(c.listen.port(), 9);
    }
}

#[cfg(test)]
mod gateway_toml {
    use super::*;

    /// `gateway.toml` documents every key with its default: loading it gives
    /// exactly the defaults, and every section of the config appears in it.
    #[test]
    fn gateway_toml_matches_the_defaults() {
        let text = include_str!("../gateway.toml");
        let loaded = Config::from_toml(text).unwrap();
        assert_eq!(loaded.to_toml(), Config::default().to_toml());
        let defaults: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
        for (key, value) in &defaults {
            match value {
                toml::Value::Table(t) => {
                    assert!(text.contains(&format!("[{key}]")), "gateway.toml lacks [{key}]");
                    for k in t.keys() {
                        assert!(text.contains(&format!("\n{k} = ")), "gateway.toml lacks {key}.{k}");
                    }
                }
                _ => assert!(text.contains(&format!("\n{key} = ")), "gateway.toml lacks {key}"),
            }
        }
    }
}
