//! Key naming: which key group a topic belongs to, the group's hash tag and
//! the keys of a topic (see the module docs for the layout).

use super::RedisEngine;
use crate::core::message::{now_ms, Topic};

/// FNV-1a: a stable hash every process agrees on.
fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

impl RedisEngine {
    /// The key group of `topic`: `fnv1a(topic) % shards`.
    pub(super) fn group_of(&self, topic: &Topic) -> usize {
        fnv1a(topic.as_str()) as usize % self.inner.groups.len()
    }

    /// `{prefix}{s<N>}`: the prefix and hash tag of every key of `group`.
    fn tag(&self, group: usize) -> String {
        format!("{}{{s{}}}", self.inner.opts.key_prefix, group)
    }

    /// The topic's stream.
    pub(super) fn stream_key(&self, topic: &Topic) -> String {
        format!("{}:t:{}", self.tag(self.group_of(topic)), topic)
    }

    /// The newest id ever trimmed from the topic's stream.
    pub(super) fn marker_key(&self, topic: &Topic) -> String {
        format!("{}:m:{}", self.tag(self.group_of(topic)), topic)
    }

    /// The idempotency key `key` of `topic`.
    pub(super) fn idempotency_key(&self, topic: &Topic, key: &str) -> String {
        format!("{}:i:{}:{}", self.tag(self.group_of(topic)), topic, key)
    }

    /// The wake-up stream of this process's reader of `group`.
    pub(super) fn wake_key(&self, group: usize) -> String {
        format!("{}:w:{}", self.tag(group), self.inner.process)
    }

    /// The notify stream of `group`: every publish appends its stream's key
    /// (capped); live readers block on it instead of on every stream.
    pub(super) fn notify_key(&self, group: usize) -> String {
        format!("{}:n", self.tag(group))
    }

    /// What the stream keys of `group` start with (`…:t:`, then the topic).
    pub(super) fn stream_prefix(&self, group: usize) -> String {
        format!("{}:t:", self.tag(group))
    }

    /// `XTRIM MINID` argument for age retention.
    pub(super) fn min_id(&self) -> String {
        let min_ms = now_ms().saturating_sub(self.inner.opts.max_age.as_millis() as u64);
        format!("{min_ms}-0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_groups_are_stable() {
        assert_eq!(fnv1a(""), 0x811c_9dc5);
        assert_eq!(fnv1a("a"), 0xe40c_292c);
        assert_eq!(fnv1a("foobar"), 0xbf9c_f968);
    }
}
