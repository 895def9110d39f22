//! The [`Outbox`] seam: the durable per-endpoint delivery queue webhooks
//! read from, and where dead letters are kept.
//!
//! An engine that accepts a publish for a topic some endpoint's patterns
//! match ([`Routes`]) records the message in its outbox *as part of the
//! publish* (the Redis engine in the same script, the embedded one under the
//! same call, before the id is returned): a message that got an id is
//! delivered to every endpoint it matched, or refused before it got one.
//!
//! Every endpoint reads the outbox as its own consumer: an entry is handed
//! to one consumer (process) of an endpoint at a time, stays pending until
//! [`Outbox::ack`], and is handed to another consumer by
//! [`Outbox::reclaim`] once it was left idle (its process died) for the
//! visibility timeout. A consumer working on an entry for longer (slow
//! retries) keeps it with [`Outbox::keep`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::engine::EngineError;
use super::message::{Message, Topic};

/// Which topics go to the outbox: true when some endpoint's patterns match.
#[derive(Clone)]
pub struct Routes {
    matches: Arc<dyn Fn(&Topic) -> bool + Send + Sync>,
    /// Entries the outbox holds at most (per key group for Redis); a publish
    /// that would need one more is refused (`EngineError::Full`).
    pub max_len: usize,
    /// The endpoints' names: the outbox is trimmed only below what every one
    /// of them is done with.
    pub endpoints: Arc<[String]>,
}

impl Routes {
    /// Routes to `endpoints` by `matches`, bounded by `max_len`.
    pub fn new(
        matches: impl Fn(&Topic) -> bool + Send + Sync + 'static,
        max_len: usize,
        endpoints: Vec<String>,
    ) -> Routes {
        Routes { matches: Arc::new(matches), max_len, endpoints: endpoints.into() }
    }

    /// Whether `topic` goes to the outbox.
    pub fn matches(&self, topic: &Topic) -> bool {
        (self.matches)(topic)
    }
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").field("max_len", &self.max_len).finish_non_exhaustive()
    }
}

/// Where an entry is in the outbox (opaque to the webhooks module).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryRef {
    /// The key group (Redis) or 0.
    pub group: usize,
    /// The entry's id in the outbox.
    pub id: String,
}

/// One message waiting for one endpoint.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where it is (for [`Outbox::ack`]).
    pub at: EntryRef,
    /// The message.
    pub message: Arc<Message>,
    /// `Some(endpoint)` for a redriven dead letter meant for that endpoint
    /// only; every other endpoint acknowledges it without delivering.
    pub only: Option<String>,
}

/// A message an endpoint did not take: a permanent refusal (4xx other than
/// 408, 410, 429) or exhausted retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// `<endpoint>:<topic>:<message id>`.
    pub id: String,
    /// The endpoint's name.
    pub endpoint: String,
    /// The message JSON (contract §1), as delivered.
    pub message: Box<serde_json::value::RawValue>,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure: `"HTTP 400"`, `"timeout"`, …
    pub last_error: String,
}

/// The delivery queue and dead-letter store of an engine.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Prepares `endpoint`'s consumer (idempotent; Redis: the consumer
    /// groups). Entries recorded after the first call are kept for it.
    async fn register(&self, endpoint: &str) -> Result<(), EngineError>;

    /// Up to `max` entries never handed to any consumer of `endpoint`,
    /// oldest first, now given to `consumer`. Does not block.
    async fn fetch(&self, endpoint: &str, consumer: &str, max: usize) -> Result<Vec<Entry>, EngineError>;

    /// Up to `max` entries of `endpoint` pending for longer than `idle`
    /// with any consumer (one that died), now given to `consumer`.
    async fn reclaim(
        &self,
        endpoint: &str,
        consumer: &str,
        idle: Duration,
        max: usize,
    ) -> Result<Vec<Entry>, EngineError>;

    /// Resets the idle time of `entries` (still being worked on by
    /// `consumer`), so that [`Outbox::reclaim`] leaves them alone.
    async fn keep(&self, endpoint: &str, consumer: &str, entries: &[EntryRef]) -> Result<(), EngineError>;

    /// `endpoint` is done with the entry (delivered, dead-lettered or not
    /// meant for it). The outbox may drop it once every endpoint is.
    async fn ack(&self, endpoint: &str, entry: &EntryRef) -> Result<(), EngineError>;

    /// Takes or renews `endpoint`'s lease for `consumer` for `ttl`: true
    /// while `consumer` holds it. Ordered endpoints are read by the lease
    /// holder only, so one process delivers them, in order.
    async fn lease(&self, endpoint: &str, consumer: &str, ttl: Duration) -> Result<bool, EngineError>;

    /// Changes when an entry may have been added in this process (a
    /// wake-up; other processes' entries are found by polling).
    fn added(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Records `message` again for `endpoint` only (a redrive).
    async fn enqueue_for(&self, endpoint: &str, message: &Message) -> Result<(), EngineError>;

    /// Stores a dead letter (same id: replaced).
    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), EngineError>;

    /// Up to `limit` dead letters, oldest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, EngineError>;

    /// Removes and returns the dead letter `id`, if it exists.
    async fn take_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, EngineError>;

    /// How many dead letters are stored.
    async fn dead_letter_count(&self) -> Result<u64, EngineError>;
}
