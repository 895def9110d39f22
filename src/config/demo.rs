//! `[demo]`: the chat demo at `/demo/` (`rtgate --demo`), and what it needs.

use serde::{Deserialize, Serialize};

use super::{Config, TopicConfig, TopicHistoryConfig};
use crate::core::pattern::Pattern;
use crate::core::policy::{Delivery, PresenceMode};

/// `[demo]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Serve the chat demo (`examples/chat`, embedded) at `/demo/`.
    pub enabled: bool,
}

/// The topics the demo's rooms use (`chat.<room>`).
pub const DEMO_PATTERN: &str = "chat.*";

impl Config {
    /// With the demo on, adds what it needs and the configuration lacks: a
    /// `[[topics]]` policy for `chat.*` with presence on, appended (so the
    /// operator's own rules still match first), unless a rule already
    /// matches the demo's topics. Does nothing with the demo off.
    pub fn apply_demo(&mut self) {
        if !self.demo.enabled {
            return;
        }
        let covered =
            self.topics.iter().any(|t| Pattern::parse(&t.pattern).is_ok_and(|p| p.matches("chat.lobby")));
        if !covered {
            self.topics.push(TopicConfig {
                pattern: DEMO_PATTERN.to_owned(),
                history: TopicHistoryConfig::default(),
                delivery: Delivery::Lossless,
                presence: PresenceMode::Full,
                client_publish: true,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_adds_a_chat_policy_unless_one_matches() {
        let mut c = Config::default();
        c.apply_demo();
        assert!(c.topics.is_empty(), "demo off: nothing added");
        c.demo.enabled = true;
        c.apply_demo();
        c.apply_demo();
        assert_eq!(c.topics.len(), 1, "added once");
        assert_eq!((c.topics[0].pattern.as_str(), c.topics[0].presence), (DEMO_PATTERN, PresenceMode::Full));
        let mut own = Config::from_toml("[demo]\nenabled = true\n[[topics]]\npattern = \"chat.*\"\n")
            .expect("a valid config");
        own.apply_demo();
        assert_eq!(
            (own.topics.len(), own.topics[0].presence),
            (1, PresenceMode::Off),
            "the operator's rule stays"
        );
    }
}
