//! `[[topics]]` (topic policies, contract §11) and `[presence]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};
use crate::core::pattern::Pattern;
use crate::core::policy::{Delivery, Policies, PresenceMode, Retention, TopicPolicy};

/// One `[[topics]]` entry: the policy of the topics `pattern` matches (the
/// first matching entry wins).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic name in which `*` matches any run of characters.
    pub pattern: String,
    /// History retention; unset keys take `[history]`'s values.
    #[serde(default)]
    pub history: TopicHistoryConfig,
    /// `lossless` (default), `latest` or `drop`.
    #[serde(default)]
    pub delivery: Delivery,
    /// `false` (default), `true`, or `"count"` (the number of users only).
    #[serde(default)]
    pub presence: PresenceMode,
    /// Whether clients may publish (not only API keys and server requests).
    #[serde(default = "yes")]
    pub client_publish: bool,
}

fn yes() -> bool {
    true
}

/// `history` of a `[[topics]]` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicHistoryConfig {
    /// Messages kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    /// Age after which messages are trimmed.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
}

/// `[presence]`: leases of presence entries (contract §11).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// How long a cleanly closed connection stays present: a client back
    /// within it causes neither a leave nor a join.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How long an entry lives without being refreshed: a process that
    /// dies takes its entries with it within this.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Joins and leaves within this window go out as one `presence_diff`.
    #[serde(with = "humantime_serde")]
    pub batch: Duration,
    /// Members listed by one presence answer at most (`users` still counts
    /// all).
    pub max_list: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            grace: Duration::from_secs(5),
            ttl: Duration::from_secs(30),
            batch: Duration::from_millis(100),
            max_list: 1000,
        }
    }
}

/// Longest `[[topics]]` list.
const MAX_RULES: usize = 1000;

impl Config {
    /// The policies `[[topics]]` and `[history]` describe (validated first:
    /// see [`Config::validate`]).
    pub fn policies(&self) -> Policies {
        let base = Retention { max_len: self.history.max_len, max_age: self.history.max_age };
        let rules = self
            .topics
            .iter()
            .filter_map(|t| {
                let pattern = Pattern::parse(&t.pattern).ok()?;
                let history = Retention {
                    max_len: t.history.max_len.unwrap_or(base.max_len),
                    max_age: t.history.max_age.unwrap_or(base.max_age),
                };
                let policy = TopicPolicy {
                    history,
                    delivery: t.delivery,
                    presence: t.presence,
                    client_publish: t.client_publish,
                };
                Some((pattern, policy))
            })
            .collect();
        Policies::new(rules, TopicPolicy::defaults(base))
    }

    pub(super) fn validate_topics(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.topics.len() > MAX_RULES {
            return bad("topics", format!("at most {MAX_RULES} entries"));
        }
        for (i, t) in self.topics.iter().enumerate() {
            let at = |what: &str| format!("entry {} (pattern {:?}): {what}", i + 1, t.pattern);
            if Pattern::parse(&t.pattern).is_err() {
                return bad(
                    "topics.pattern",
                    at("a pattern is 1 to 128 characters of A-Z a-z 0-9 _ . : @ - and *"),
                );
            }
            if self.topics[..i].iter().any(|o| o.pattern == t.pattern) {
                return bad("topics.pattern", at("repeats an earlier entry's pattern, which always wins"));
            }
            if t.history.max_len == Some(0) {
                return bad("topics.history.max_len", at("must be at least 1"));
            }
            if t.history.max_age.is_some_and(|a| a.is_zero()) {
                return bad("topics.history.max_age", at("must be more than 0s"));
            }
        }
        let p = &self.presence;
        if p.grace > Duration::from_secs(3600) {
            return bad("presence.grace", "must be at most 1h".into());
        }
        if p.ttl < Duration::from_secs(2) || p.ttl > Duration::from_secs(3600) {
            return bad("presence.ttl", "must be 2s to 1h".into());
        }
        if p.batch.is_zero() || p.batch > Duration::from_secs(10) {
            return bad("presence.batch", "must be more than 0s and at most 10s".into());
        }
        if !(1..=100_000).contains(&p.max_list) {
            return bad("presence.max_list", "must be 1 to 100000".into());
        }
        Ok(())
    }
}
