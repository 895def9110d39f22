//! Key naming: which key group a topic belongs to, the group's hash tag and
//! the keys of a topic (see the module docs for the layout).

use super::RedisEngine;
use crate::core::message::Topic;

/// FNV-1a: a stable hash every process agrees on.
fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// `<len>:<topic>:<key>`: the topic is length-prefixed, so no topic and key
/// pair (both may contain `:`) names another pair's key.
fn idempotency_suffix(topic: &str, key: &str) -> String {
    format!("{}:{topic}:{key}", topic.len())
}

impl RedisEngine {
    /// The key group of `topic`: `fnv1a(topic) % shards`.
    pub(super) fn group_of(&self, topic: &Topic) -> usize {
        fnv1a(topic.as_str()) as usize % self.inner.groups.len()
    }

    /// `{prefix}{s<N>}`: the prefix and hash tag of every key of `group`.
    pub(super) fn tag(&self, group: usize) -> String {
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
        format!("{}:i:{}", self.tag(self.group_of(topic)), idempotency_suffix(topic.as_str(), key))
    }

    /// The index of the topic's idempotency keys (a sorted set by time), which
    /// bounds how many one topic keeps.
    pub(super) fn idempotency_index(&self, topic: &Topic) -> String {
        format!("{}:k:{}", self.tag(self.group_of(topic)), topic)
    }

    /// The age index of `group`: topic → when its oldest entry reaches
    /// `history.max_age` (ms), read by the sweep.
    pub(super) fn age_index(&self, group: usize) -> String {
        format!("{}:a", self.tag(group))
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

    /// The ephemeral channel of `group` (pub/sub; sharded pub/sub on a
    /// Cluster, where the hash tag puts it on the group's slot).
    pub(super) fn ephemeral_channel(&self, group: usize) -> String {
        format!("{}:e", self.tag(group))
    }

    /// The webhook outbox of `group`.
    pub(super) fn outbox_key(&self, group: usize) -> String {
        format!("{}:o", self.tag(group))
    }

    /// The webhook dead letters (hash) and their order (zset): one slot.
    pub(super) fn dead_keys(&self) -> (String, String) {
        let tag = format!("{}{{wh}}", self.inner.opts.key_prefix);
        (format!("{tag}:dl"), format!("{tag}:dlo"))
    }

    /// What the stream keys of `group` start with (`…:t:`, then the topic).
    pub(super) fn stream_prefix(&self, group: usize) -> String {
        format!("{}:t:", self.tag(group))
    }

    /// `history.max_age` in ms, for the scripts' age trimming (which reads
    /// the time from Redis, the clock its ids come from).
    pub(super) fn max_age_ms(&self) -> u64 {
        age_ms(self.inner.opts.max_age)
    }
}

impl RedisEngine {
    /// The topic's retention, `(max_len, max_age ms)`: its `[[topics]]`
    /// policy when policies are configured, else `[history]`.
    pub(super) fn retention(&self, topic: &Topic) -> (usize, u64) {
        let opts = &self.inner.opts;
        match &opts.policies {
            Some(p) => {
                let h = p.get(topic.as_str()).history;
                (h.max_len, age_ms(h.max_age))
            }
            None => (opts.max_len, self.max_age_ms()),
        }
    }

    /// The shortest `max_age` of any topic (the sweep runs at a tenth of it).
    pub(super) fn shortest_max_age(&self) -> std::time::Duration {
        let opts = &self.inner.opts;
        opts.policies.as_ref().map_or(opts.max_age, |p| p.shortest_max_age())
    }
}

/// A max age in ms, in the range the scripts accept.
fn age_ms(age: std::time::Duration) -> u64 {
    u64::try_from(age.as_millis()).unwrap_or(u64::MAX).clamp(1, super::MAX_TTL_MS)
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

    #[test]
    fn idempotency_keys_of_different_topics_differ() {
        // Topic `a` with key `b:c` and topic `a:b` with key `c`.
        assert_ne!(idempotency_suffix("a", "b:c"), idempotency_suffix("a:b", "c"));
        assert_eq!(idempotency_suffix("a:b", "c"), "3:a:b:c");
    }
}
