//! Topic policies (contract §11): per-topic retention, delivery mode,
//! presence and who may publish, chosen by the first `[[topics]]` pattern
//! that matches a topic name.
//!
//! [`Policies::get`] walks the patterns in order; callers on hot paths
//! resolve a topic once and keep the `Arc` (the hub keeps it per topic with
//! local subscribers, the memory engine per stored topic).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pattern::Pattern;

/// How a subscriber that falls behind is treated (contract §11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Every message, in order; an overflowing outbox closes the
    /// connection, which resumes from its cursor.
    #[default]
    Lossless,
    /// Only the newest message per topic (or per `key`) while behind;
    /// older queued ones are replaced and counted as `skipped`.
    Latest,
    /// While the outbox is full, new messages are dropped for this
    /// subscriber, which then gets a `gap` with `reason: dropped`.
    Drop,
}

impl Delivery {
    /// The config word.
    pub fn label(self) -> &'static str {
        match self {
            Delivery::Lossless => "lossless",
            Delivery::Latest => "latest",
            Delivery::Drop => "drop",
        }
    }
}

/// Whether a topic tracks who is subscribed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PresenceMode {
    /// No presence (default).
    #[default]
    Off,
    /// Members with their info; join/leave events.
    Full,
    /// Only the number of users, updated at most once a second (big rooms).
    Count,
}

impl PresenceMode {
    /// True unless presence is off.
    pub fn is_on(self) -> bool {
        self != PresenceMode::Off
    }
}

impl Serialize for PresenceMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PresenceMode::Off => s.serialize_bool(false),
            PresenceMode::Full => s.serialize_bool(true),
            PresenceMode::Count => s.serialize_str("count"),
        }
    }
}

impl<'de> Deserialize<'de> for PresenceMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(false) => Ok(PresenceMode::Off),
            Raw::Bool(true) => Ok(PresenceMode::Full),
            Raw::Word(w) if w == "count" => Ok(PresenceMode::Count),
            Raw::Word(w) => {
                Err(serde::de::Error::custom(format!("presence is true, false or \"count\", not {w:?}")))
            }
        }
    }
}

/// How long a topic's history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept.
    pub max_len: usize,
    /// Age after which messages are trimmed.
    pub max_age: Duration,
}

/// Everything a topic's policy decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPolicy {
    /// History length and age.
    pub history: Retention,
    /// Slow-subscriber treatment.
    pub delivery: Delivery,
    /// Presence tracking.
    pub presence: PresenceMode,
    /// Whether client credentials (tokens; with auth off, client streams)
    /// may publish, or only API keys and server-to-server requests.
    pub client_publish: bool,
}

impl TopicPolicy {
    /// The policy of topics no rule matches.
    pub fn defaults(history: Retention) -> Self {
        TopicPolicy {
            history,
            delivery: Delivery::Lossless,
            presence: PresenceMode::Off,
            client_publish: true,
        }
    }
}

/// The ordered rules; the first matching pattern wins.
#[derive(Debug)]
pub struct Policies {
    rules: Vec<(Pattern, Arc<TopicPolicy>)>,
    default: Arc<TopicPolicy>,
}

impl Policies {
    /// Rules in order, and the policy of every other topic.
    pub fn new(rules: Vec<(Pattern, TopicPolicy)>, default: TopicPolicy) -> Self {
        Policies {
            rules: rules.into_iter().map(|(p, t)| (p, Arc::new(t))).collect(),
            default: Arc::new(default),
        }
    }

    /// Only the defaults (no rules).
    pub fn uniform(default: TopicPolicy) -> Self {
        Policies::new(Vec::new(), default)
    }

    /// The policy of `topic`.
    pub fn get(&self, topic: &str) -> &Arc<TopicPolicy> {
        self.rules.iter().find(|(p, _)| p.matches(topic)).map_or(&self.default, |(_, t)| t)
    }

    /// The shortest `max_age` of any policy (the memory engine sweeps at
    /// half of it).
    pub fn shortest_max_age(&self) -> Duration {
        self.rules.iter().map(|(_, t)| t.history.max_age).fold(self.default.history.max_age, Duration::min)
    }

    /// True when some rule turns presence on.
    pub fn any_presence(&self) -> bool {
        self.default.presence.is_on() || self.rules.iter().any(|(_, t)| t.presence.is_on())
    }
}

impl Default for Policies {
    fn default() -> Self {
        Policies::uniform(TopicPolicy::defaults(Retention {
            max_len: 10_000,
            max_age: Duration::from_secs(24 * 3600),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(delivery: Delivery) -> TopicPolicy {
        TopicPolicy { delivery, ..Policies::default().get("x").as_ref().clone() }
    }

    #[test]
    fn the_first_matching_rule_wins_and_others_get_the_defaults() {
        let p = Policies::new(
            vec![
                (Pattern::parse("prices.eu").unwrap(), policy(Delivery::Drop)),
                (Pattern::parse("prices.*").unwrap(), policy(Delivery::Latest)),
            ],
            policy(Delivery::Lossless),
        );
        assert_eq!(p.get("prices.eu").delivery, Delivery::Drop);
        assert_eq!(p.get("prices.us").delivery, Delivery::Latest);
        assert_eq!(p.get("chat").delivery, Delivery::Lossless);
    }

    #[test]
    fn presence_reads_true_false_and_count() {
        #[derive(Deserialize)]
        struct T {
            p: PresenceMode,
        }
        let read = |s: &str| toml::from_str::<T>(s).map(|t| t.p);
        assert_eq!(read("p = true").unwrap(), PresenceMode::Full);
        assert_eq!(read("p = false").unwrap(), PresenceMode::Off);
        assert_eq!(read("p = \"count\"").unwrap(), PresenceMode::Count);
        assert!(read("p = \"all\"").is_err());
    }
}
