//! Configuration: defaults, then `gateway.toml` (or `--config`), then
//! `RTGATE_…` environment variables, then command-line flags.
//!
//! Environment keys are the TOML path in upper case with `__` between
//! sections: `RTGATE_LISTEN`, `RTGATE_HISTORY__MAX_LEN=500`,
//! `RTGATE_SHUTDOWN__GRACE=5s`; variables that name no key are ignored
//! (and reported by [`Config::load`]). This module never binds or connects;
//! [`Config::validate`] rejects bad values with the key's name.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
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
    /// Every connection (handshake, bodies, TCP keepalive); CORS.
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
    /// (HTTP/2 flow control keeps the stream from ending) for this long is
    /// reset (that stream only).
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
    /// Time to the first request headers (or HTTP/2 preface + SETTINGS).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time from a request's headers (not gRPC) to the end of its body.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Idle time of an accepted socket before TCP keepalive probes.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let (cors_origins, s) = (vec!["*".into()], Duration::from_secs);
        HttpConfig { cors_origins, handshake_timeout: s(10), body_timeout: s(10), tcp_keepalive: s(60) }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// When set, `/metrics` (with `/healthz` and `/readyz`) is served on this
    /// address instead of the public one.
    pub listen: Option<SocketAddr>,
    /// Who may read `/metrics` on the public port while `listen` is unset.
    pub public_metrics: PublicMetrics,
}

/// `admin.public_metrics`: whether the public port answers `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublicMetrics {
    /// Only to peers on a loopback address (a laptop, a sidecar, a local
    /// scraper); anyone else gets `not_found`, as for an unknown route.
    #[default]
    Loopback,
    /// To anyone who reaches the port (a private network).
    All,
    /// Never: `/metrics` only on `admin.listen`, or nowhere.
    Off,
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

/// The prefix of configuration variables.
const ENV_PREFIX: &str = "RTGATE_";

/// What [`Config::load`] found.
#[derive(Debug)]
pub struct Loaded {
    /// The effective, validated configuration.
    pub config: Config,
    /// Names (never values: they may be secrets) of `RTGATE_*` variables
    /// that name no configuration key and were not read.
    pub ignored_env: Vec<String>,
}

/// The tree of every key and section, from the defaults (`null` for unset
/// optional keys, so those are known too).
fn known_keys() -> serde_json::Value {
    serde_json::to_value(Config::default()).unwrap_or_default()
}

/// Whether `dotted` (a variable's name after the prefix, `__` read as `.`)
/// names a key or a section of `tree`, ignoring case.
fn names_a_key(tree: &serde_json::Value, dotted: &str) -> bool {
    let mut node = tree;
    for part in dotted.split('.') {
        match node.get(part.to_ascii_lowercase()) {
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}

/// The `RTGATE_*` names among `vars` that [`names_a_key`] does not know,
/// sorted (`RTGATE_CONFIG` is the `--config` flag's).
fn ignored_env(tree: &serde_json::Value, vars: impl Iterator<Item = std::ffi::OsString>) -> Vec<String> {
    let mut ignored: Vec<String> = vars
        .filter_map(|name| name.into_string().ok())
        .filter(|name| {
            name.get(..ENV_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX)) && {
                let key = name[ENV_PREFIX.len()..].replace("__", ".");
                !key.eq_ignore_ascii_case("config") && !names_a_key(tree, &key)
            }
        })
        .collect();
    ignored.sort();
    ignored
}

impl Config {
    /// Loads defaults ← `file` (if given) ← `RTGATE_*` environment, and
    /// validates.
    ///
    /// Only variables that name a key (or a section) are read. Others are
    /// returned in [`Loaded::ignored_env`] for the caller to warn about, never
    /// an error: platforms put variables of their own under the prefix (a
    /// Kubernetes Service named `rtgate` gives every pod of its namespace
    /// `RTGATE_PORT=tcp://…`, `RTGATE_SERVICE_HOST`, …), and refusing to start
    /// over them would take the gateway down for no fault of its operator. A
    /// variable that names a key with a bad value is still an error.
    pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigError> {
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
        let keys = Arc::new(known_keys());
        let known = Arc::clone(&keys);
        fig = fig.merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .ignore(&["config"])
                .filter(move |key| names_a_key(&known, key.as_str())),
        );
        let config: Config = fig.extract().map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        let ignored_env = ignored_env(&keys, std::env::vars_os().map(|(k, _)| k));
        Ok(Loaded { config, ignored_env })
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
        for (key, d) in [
            ("http.handshake_timeout", self.http.handshake_timeout),
            ("http.body_timeout", self.http.body_timeout),
            ("http.tcp_keepalive", self.http.tcp_keepalive),
        ] {
            if d < Duration::from_secs(1) {
                return bad(key, "must be at least 1s");
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
    fn environment_names_are_matched_against_the_keys() {
        let tree = known_keys();
        for known in
            ["listen", "LISTEN", "history.max_len", "REDIS.URL", "admin.listen", "redis", "log.format"]
        {
            assert!(names_a_key(&tree, known), "{known} is a key");
        }
        for unknown in ["port", "service_host", "port_8080_tcp_addr", "history.nope", "listen.x", ""] {
            assert!(!names_a_key(&tree, unknown), "{unknown} is no key");
        }
        let vars = [
            "RTGATE_PORT",
            "RTGATE_SERVICE_HOST",
            "RTGATE_HISTORY__MAX_LEN",
            "RTGATE_CONFIG",
            "PATH",
            "RTGATE_PORT_8080_TCP_ADDR",
        ]
        .map(std::ffi::OsString::from);
        assert_eq!(
            ignored_env(&tree, vars.into_iter()),
            ["RTGATE_PORT", "RTGATE_PORT_8080_TCP_ADDR", "RTGATE_SERVICE_HOST"]
        );
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
