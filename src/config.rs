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

mod demo;
mod env;
mod security;
mod tls;
mod topics;
mod validate;
mod webhooks;
pub use demo::{DemoConfig, DEMO_PATTERN};
pub use env::Loaded;
use env::{ignored_env, known_keys, names_a_key, ENV_PREFIX};
pub use security::{AbuseConfig, AuthConfig, ReconnectConfig, TlsConfig};
pub use topics::{PresenceConfig, TopicConfig, TopicHistoryConfig};
pub use webhooks::{decode_secret, WebhookConfig, WebhookQueueConfig, WebhookSourceConfig};

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
    /// Tokens, API keys and allowed origins (off unless configured).
    pub auth: AuthConfig,
    /// Abuse limits: connection attempts, open streams, publish rates.
    pub abuse: AbuseConfig,
    /// Server-paced reconnect hints.
    pub reconnect: ReconnectConfig,
    /// Native TLS termination.
    pub tls: TlsConfig,
    /// Outbound webhook endpoints (`[[webhooks]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookConfig>,
    /// Inbound webhook sources (`[[webhooks_in]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub webhooks_in: Vec<WebhookSourceConfig>,
    /// The webhook outbox.
    pub webhook_queue: WebhookQueueConfig,
    /// Topic policies (`[[topics]]`), first match wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<TopicConfig>,
    /// Presence leases.
    pub presence: PresenceConfig,
    /// The chat demo at `/demo/`.
    pub demo: DemoConfig,
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

/// `[websocket]`: no key has an effect any more. The three keys below
/// tuned the WebSocket library's buffers; frames are now read and written
/// by rtgate's own codec, which keeps no buffer between frames. They are
/// still accepted, so older files load, and each one set is named in a
/// warning at startup ([`Config::retired_keys`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Retired (was the library's read buffer size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_buffer_size: Option<usize>,
    /// Retired (was the library's write buffer size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_buffer_size: Option<usize>,
    /// Retired (was the library's largest write buffer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_write_buffer_size: Option<usize>,
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
    /// allows any origin. Empty (the default): `auth.allowed_origins` when
    /// set, otherwise any origin while auth is off and none while it is on.
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
    /// `SO_SNDBUF` of accepted sockets in bytes; 0 (the default) leaves the
    /// kernel's autotuned buffer. A small buffer makes a slow reader's
    /// backlog wait in the gateway's outbox, where `delivery = "latest"`
    /// coalesces and `"drop"` drops, instead of in the kernel.
    pub send_buffer: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let (cors_origins, s) = (Vec::new(), Duration::from_secs);
        HttpConfig {
            cors_origins,
            handshake_timeout: s(10),
            body_timeout: s(10),
            tcp_keepalive: s(60),
            send_buffer: 0,
        }
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
            auth: AuthConfig::default(),
            abuse: AbuseConfig::default(),
            reconnect: ReconnectConfig::default(),
            tls: TlsConfig::default(),
            webhooks: Vec::new(),
            webhooks_in: Vec::new(),
            webhook_queue: WebhookQueueConfig::default(),
            topics: Vec::new(),
            presence: PresenceConfig::default(),
            demo: DemoConfig::default(),
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

    /// The effective configuration as TOML, for people (`--print-config`):
    /// every `auth.hmac_secrets`, `auth.api_keys`, `webhooks.secrets` and
    /// `webhooks_in.secrets` entry shows as `"<redacted>"`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for secret in shown.auth.hmac_secrets.iter_mut().chain(shown.auth.api_keys.iter_mut()) {
            *secret = REDACTED.into();
        }
        shown.redact_webhooks();
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// The origins CORS answers: `http.cors_origins` when set, otherwise
    /// `auth.allowed_origins` when set, otherwise any (`*`) while auth is
    /// off and none while it is on.
    pub fn cors_origins(&self) -> Vec<String> {
        if !self.http.cors_origins.is_empty() {
            self.http.cors_origins.clone()
        } else if !self.auth.allowed_origins.is_empty() {
            self.auth.allowed_origins.clone()
        } else if self.auth.enabled() {
            Vec::new()
        } else {
            vec!["*".into()]
        }
    }

    /// Largest WebSocket frame accepted: a publish frame's envelope around
    /// `max_message_bytes` of data.
    pub fn ws_max_frame(&self) -> usize {
        self.limits.max_message_bytes + 1024
    }

    /// Keys that are set but no longer have an effect (logged at startup).
    pub fn retired_keys(&self) -> Vec<&'static str> {
        let ws = &self.websocket;
        [
            (ws.read_buffer_size.is_some(), "websocket.read_buffer_size"),
            (ws.write_buffer_size.is_some(), "websocket.write_buffer_size"),
            (ws.max_write_buffer_size.is_some(), "websocket.max_write_buffer_size"),
        ]
        .into_iter()
        .filter_map(|(set, key)| set.then_some(key))
        .collect()
    }
}

/// What [`Config::to_toml`] shows instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// Longest credential (token or API key) rtgate considers, in bytes;
/// longer ones are refused before any parsing or crypto.
pub const MAX_CREDENTIAL_LEN: usize = 8192;

#[cfg(test)]
mod tests;
