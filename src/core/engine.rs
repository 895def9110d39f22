//! The [`Engine`] seam: what the core needs from a message store.
//!
//! Engines (embedded memory, Redis Streams) live in `crate::engine`, above the
//! core; the core never names them.
//!
//! # Contract every engine keeps
//!
//! - **Ids** are `"<ms>-<seq>"` and strictly increase within a topic, also
//!   when the wall clock steps back.
//! - **Append, then notify, in id order.** A message is readable through
//!   [`Engine::history`] before the [`Feed`] hears of it, and the listener
//!   hears of a topic's messages in id order, each once (while the topic is
//!   watched and the engine is healthy).
//! - **Watch covers the future.** Once the future returned by
//!   [`Engine::watch`] resolves, every message appended to that topic later is
//!   delivered to the listener. Together with "append, then notify" this makes
//!   the replay-then-live hand-over in `core::replay` gap-free: join live,
//!   watch, then read history; overlaps are removed by id.
//! - **Trimming is reported, never hidden.** A read after an id some of whose
//!   successors were trimmed returns `truncated = true`; so does a read after
//!   an id the engine no longer knows at all (lost history, see
//!   [`lost_after`]).
//! - **Idempotency.** A publish with a key seen within the TTL returns the
//!   first message's id and ts and appends nothing.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use thiserror::Error;

use super::message::{Message, MessageId, Topic};

/// Errors an engine reports to the core.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The backing store cannot be reached; the contract's `unavailable`.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The store answered this one request with an error (a request it
    /// cannot serve, or a fault of the engine's own commands) while staying
    /// reachable: readiness does not change. The contract's `bad_request`.
    #[error("engine rejected the request: {0}")]
    Rejected(String),
    /// The topic's id space is exhausted (ids at `u64::MAX`).
    #[error("topic id space exhausted")]
    IdsExhausted,
    /// A capacity cap (named by its config key) refuses the publish; nothing
    /// was stored. Answered as `unavailable`; readiness is not affected.
    #[error("engine full: {0} reached")]
    Full(&'static str),
}

/// What a publish carries besides its topic and data.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOptions<'a> {
    /// Deduplicates repeats within the idempotency TTL.
    pub idempotency_key: Option<&'a str>,
    /// Coalescing key, stored with the message (`delivery = "latest"`).
    pub key: Option<&'a str>,
}

/// The answer to a publish.
#[derive(Debug, Clone)]
pub struct Published {
    /// The stored message (for a duplicate: the first one's id and ts).
    pub id: MessageId,
    /// Acceptance time, Unix ms.
    pub ts: u64,
    /// True when an idempotency key matched an earlier publish.
    pub duplicate: bool,
}

/// A page of a topic's history, ascending by id.
#[derive(Debug, Default)]
pub struct History {
    /// The messages, ascending.
    pub messages: Vec<Arc<Message>>,
    /// True when messages after the requested `after` were trimmed.
    pub truncated: bool,
    /// The oldest id still retained, or when nothing is retained, the first
    /// id that could still be delivered (the successor of the last trimmed).
    pub oldest: Option<MessageId>,
    /// The newest id ever trimmed (a real id: a resume continues after it).
    pub trimmed: Option<MessageId>,
    /// True when the page stopped short of `limit` only to bound its size:
    /// more messages follow it now (a short page is "caught up" only
    /// without this).
    pub cut: bool,
}

/// Whether a read after `after` has lost messages, given whether `after` is
/// still in the log and the newest id ever trimmed from it. Every id an
/// engine handed out is either still in its log or at most its newest
/// trimmed id; an `after` that is neither (a cursor from a history that was
/// lost: Redis flushed, a restarted embedded engine) cannot be resumed
/// without loss, and saying so is the contract.
pub fn lost_after(after: MessageId, present: bool, trimmed: Option<MessageId>) -> bool {
    match trimmed {
        Some(t) if t > after => true,
        Some(t) if t == after => false,
        // Zero is "from the beginning": nothing before it to lose.
        _ => after != MessageId::ZERO && !present,
    }
}

/// Receives live messages from an engine (the hub implements it).
pub trait Feed: Send + Sync + 'static {
    /// Called once per message of a watched topic, in id order per topic.
    /// Must not block.
    fn deliver(&self, message: &Arc<Message>);

    /// The engine lost messages of `topic` that live subscribers may not
    /// have received (e.g. Redis lost its data). Subscribers must be ended
    /// so that they resume from their cursors and are told of the gap.
    fn reset(&self, topic: &Topic);
}

/// A message store with live notifications. Chosen once from config and
/// shared as `Arc<dyn Engine>`.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// A short name for logs and metrics labels ("memory", "redis").
    fn name(&self) -> &'static str;

    /// Appends `data` (valid JSON text) to `topic`, applying the topic's
    /// retention; `options.key` is stored with the message and comes back
    /// on every read of it ([`Message::key`]).
    async fn publish_with(
        &self,
        topic: &Topic,
        data: Bytes,
        options: PublishOptions<'_>,
    ) -> Result<Published, EngineError>;

    /// [`Engine::publish_with`] without a coalescing key.
    async fn publish(
        &self,
        topic: &Topic,
        data: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<Published, EngineError> {
        self.publish_with(topic, data, PublishOptions { idempotency_key, key: None }).await
    }

    /// Delivers an ephemeral message (contract §11) to the topic's current
    /// subscribers on every process: never stored, no id. Resolves once the
    /// message is handed to the local feed and, with Redis, to Redis.
    async fn broadcast(&self, message: Arc<Message>) -> Result<(), EngineError>;

    /// Up to `limit` messages after `after` ascending; with `after = None`,
    /// the newest `limit` messages ascending. An engine may answer fewer to
    /// bound the size of one page, and then says so ([`History::cut`]).
    /// Any `after` is valid, also one the engine never handed out (such as
    /// `u64::MAX-u64::MAX`, which nothing follows): see [`lost_after`].
    async fn history(
        &self,
        topic: &Topic,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<History, EngineError>;

    /// The newest id ever assigned in `topic` (even if since trimmed), or
    /// `None` for a topic that never had a message.
    async fn last_id(&self, topic: &Topic) -> Result<Option<MessageId>, EngineError>;

    /// Registers interest in `topic` (idempotent). The registration happens
    /// before this returns; the future resolves once live delivery of every
    /// later append is guaranteed.
    fn watch(&self, topic: &Topic) -> futures_util::future::BoxFuture<'static, Result<(), EngineError>>;

    /// Drops interest in `topic` (the hub's last local subscriber left).
    fn unwatch(&self, topic: &Topic);

    /// True while the engine can serve (readiness).
    fn is_ready(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_after_rules() {
        let id = |ms| MessageId::new(ms, 0);
        // Trimmed past the resume point: lost.
        assert!(lost_after(id(5), true, Some(id(6))));
        assert!(lost_after(MessageId::ZERO, false, Some(id(1))));
        // Resume exactly at the newest trimmed id: nothing after it was lost.
        assert!(!lost_after(id(6), false, Some(id(6))));
        // Still in the log: fine.
        assert!(!lost_after(id(9), true, Some(id(6))));
        assert!(!lost_after(id(9), true, None));
        // Neither in the log nor trimmed: the history it came from is gone.
        assert!(lost_after(id(9), false, Some(id(6))));
        assert!(lost_after(id(9), false, None));
        // From the beginning of an untouched log: nothing lost.
        assert!(!lost_after(MessageId::ZERO, false, None));
    }
}
