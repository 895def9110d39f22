//! `[[webhooks]]` (outbound endpoints), `[[webhooks_in]]` (inbound sources)
//! and `[webhook_queue]` (the outbox shared by every endpoint), with their
//! validation.

use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, REDACTED};

/// `[[webhooks]]`: one outbound endpoint. Its `Debug` hides the URL and
/// the secrets.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Name (metrics label, dead letters, logs): 1 to 64 of `a-z 0-9 _ -`.
    pub name: String,
    /// `http://` or `https://` URL POSTed to (never logged: it may hold a secret).
    pub url: String,
    /// Signing secrets, `whsec_<base64>`; every one signs (rotation).
    pub secrets: Vec<String>,
    /// Topic patterns (`*` matches any run of characters).
    pub topics: Vec<String>,
    /// Timeout of one attempt (connect to last byte of the answer).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts before a message goes to the dead letters.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Longest retry delay (also caps `Retry-After`).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Full jitter on retry delays (off only for tests).
    pub jitter: bool,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Messages of one topic delivered one at a time, in id order.
    pub ordered: bool,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before one probe attempt.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            name: String::new(),
            url: String::new(),
            secrets: Vec::new(),
            topics: Vec::new(),
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
            jitter: true,
            concurrency: 16,
            ordered: false,
            breaker_failures: 10,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

/// `[[webhooks_in]]`: one inbound source, `POST /v1/webhooks/{name}`. Its
/// `Debug` hides the secrets.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSourceConfig {
    /// The `{source}` of the URL: 1 to 64 of `a-z 0-9 _ -`.
    pub name: String,
    /// Secrets (`whsec_<base64>`); a signature by any one is accepted.
    pub secrets: Vec<String>,
    /// Topic the verified body is published to.
    pub topic: String,
    /// How far `webhook-timestamp` may be from now, either way.
    #[serde(with = "humantime_serde")]
    pub tolerance: Duration,
}

impl Default for WebhookSourceConfig {
    fn default() -> Self {
        WebhookSourceConfig {
            name: String::new(),
            secrets: Vec::new(),
            topic: String::new(),
            tolerance: Duration::from_secs(300),
        }
    }
}

/// `[webhook_queue]`: the outbox every endpoint reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookQueueConfig {
    /// Entries the outbox holds (Redis: per key group); a publish of a
    /// routed topic past it is refused (`unavailable`).
    pub max_len: usize,
    /// How long a delivery may sit unattended before another process takes
    /// it over (its process died).
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// How often workers look for entries other processes recorded.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Deliveries one endpoint holds at once (attempts and waiting retries).
    pub max_in_flight: usize,
}

impl Default for WebhookQueueConfig {
    fn default() -> Self {
        WebhookQueueConfig {
            max_len: 100_000,
            visibility_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(200),
            max_in_flight: 1000,
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &REDACTED)
            .field("secrets", &self.secrets.len())
            .field("topics", &self.topics)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("concurrency", &self.concurrency)
            .field("ordered", &self.ordered)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for WebhookSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSourceConfig")
            .field("name", &self.name)
            .field("secrets", &self.secrets.len())
            .field("topic", &self.topic)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// `whsec_<base64>` → the key bytes.
pub fn decode_secret(s: &str) -> Option<Vec<u8>> {
    let b64 = s.strip_prefix("whsec_")?;
    let key = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (!key.is_empty() && key.len() <= 256).then_some(key)
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn valid_pattern(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:@-*".contains(&b))
}

impl Config {
    /// Replaces every webhook secret with [`REDACTED`] (`--print-config`).
    pub(super) fn redact_webhooks(&mut self) {
        let outbound = self.webhooks.iter_mut().flat_map(|w| w.secrets.iter_mut());
        let inbound = self.webhooks_in.iter_mut().flat_map(|w| w.secrets.iter_mut());
        for secret in outbound.chain(inbound) {
            *secret = REDACTED.into();
        }
    }

    /// Checks `[[webhooks]]`, `[[webhooks_in]]` and `[webhook_queue]`.
    pub(super) fn validate_webhooks(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, reason: String) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { key, reason })
        }
        let mut names = std::collections::HashSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let which = format!("entry {i} ({:?})", w.name);
            if !valid_name(&w.name) {
                return bad("webhooks.name", format!("{which}: must be 1 to 64 of a-z 0-9 _ -"));
            }
            if !names.insert(w.name.as_str()) {
                return bad("webhooks.name", format!("{which}: used twice"));
            }
            let scheme_ok = w.url.starts_with("http://") || w.url.starts_with("https://");
            if !scheme_ok || reqwest::Url::parse(&w.url).is_err() {
                return bad("webhooks.url", format!("{which}: not an http:// or https:// URL"));
            }
            if w.secrets.is_empty() || w.secrets.iter().any(|s| decode_secret(s).is_none()) {
                return bad(
                    "webhooks.secrets",
                    format!("{which}: one or more whsec_<base64> secrets needed"),
                );
            }
            if w.topics.is_empty() || !w.topics.iter().all(|t| valid_pattern(t)) {
                return bad("webhooks.topics", format!("{which}: one or more topic patterns needed"));
            }
            if w.timeout.is_zero() {
                return bad("webhooks.timeout", format!("{which}: must be more than 0s"));
            }
            if !(1..=100).contains(&w.max_attempts) {
                return bad("webhooks.max_attempts", format!("{which}: must be 1 to 100"));
            }
            if w.backoff.is_zero() || w.max_backoff < w.backoff {
                return bad(
                    "webhooks.max_backoff",
                    format!("{which}: must be at least webhooks.backoff, > 0s"),
                );
            }
            if !(1..=1024).contains(&w.concurrency) || w.concurrency > self.webhook_queue.max_in_flight {
                return bad(
                    "webhooks.concurrency",
                    format!("{which}: must be 1 to 1024 and at most webhook_queue.max_in_flight"),
                );
            }
            if w.breaker_failures == 0 {
                return bad("webhooks.breaker_failures", format!("{which}: must be at least 1"));
            }
            if w.breaker_cooldown.is_zero() {
                return bad("webhooks.breaker_cooldown", format!("{which}: must be more than 0s"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.webhooks_in.iter().enumerate() {
            let which = format!("entry {i} ({:?})", s.name);
            if !valid_name(&s.name) || s.name == "dead-letters" {
                return bad(
                    "webhooks_in.name",
                    format!("{which}: must be 1 to 64 of a-z 0-9 _ -, not \"dead-letters\""),
                );
            }
            if !names.insert(s.name.as_str()) {
                return bad("webhooks_in.name", format!("{which}: used twice"));
            }
            if s.secrets.is_empty() || s.secrets.iter().any(|k| decode_secret(k).is_none()) {
                return bad(
                    "webhooks_in.secrets",
                    format!("{which}: one or more whsec_<base64> secrets needed"),
                );
            }
            if !crate::core::Topic::is_valid(&s.topic) {
                return bad("webhooks_in.topic", format!("{which}: not a valid topic"));
            }
            if s.tolerance.is_zero() || s.tolerance > self.idempotency.ttl {
                return bad(
                    "webhooks_in.tolerance",
                    format!("{which}: must be more than 0s and at most idempotency.ttl (replays are caught by it)"),
                );
            }
        }
        let q = &self.webhook_queue;
        if q.max_len == 0 {
            return bad("webhook_queue.max_len", "must be at least 1".into());
        }
        if q.visibility_timeout < Duration::from_secs(1) {
            return bad("webhook_queue.visibility_timeout", "must be at least 1s".into());
        }
        if q.poll_interval.is_zero() || q.poll_interval > Duration::from_secs(60) {
            return bad("webhook_queue.poll_interval", "must be more than 0s and at most 60s".into());
        }
        if q.max_in_flight == 0 {
            return bad("webhook_queue.max_in_flight", "must be at least 1".into());
        }
        Ok(())
    }
}
