//! Webhooks (contract §9): signed outbound delivery of matching messages
//! with retries, a circuit breaker and dead letters, and verification of
//! inbound webhooks. `docs/webhooks.md` is the operator's guide.
//!
//! # Where things are
//!
//! - The outbox itself is the engine's ([`crate::core::outbox::Outbox`]):
//!   the publish records the message for the webhooks before its id is
//!   returned (Redis: in the publish script; embedded: in the same call),
//!   so a message that got an id is never lost for a matching endpoint.
//! - `worker.rs`: one worker per endpoint and process (fetch, attempt,
//!   retry, dead-letter, ack; takeover of a dead process's deliveries).
//! - `policy.rs`: answers → outcomes, backoff with full jitter and
//!   `Retry-After`, the circuit breaker.
//! - `sign.rs`: Standard Webhooks signatures.
//! - `metrics.rs`: the `rtgate_webhook_*` metrics.
//! - The HTTP endpoints (inbound, dead letters) are `transport::webhooks`,
//!   which calls [`Webhooks`].
//!
//! This module imports the core, the config, auth patterns and metrics;
//! the state and the transports import it.

mod metrics;
pub mod policy;
pub mod sign;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::Deserialize;

use crate::auth::Pattern;
use crate::config::Config;
use crate::core::outbox::{DeadLetter, Outbox, Routes};
use crate::core::{EngineError, Message, MessageId, Topic};
use crate::shutdown::Shutdown;
use sign::Keys;
use worker::{Endpoint, EndpointError, Worker};

/// The outbox routes of `config`'s endpoints (`None` without endpoints):
/// what the engine records for the webhooks.
pub fn routes(config: &Config) -> Option<Routes> {
    if config.webhooks.is_empty() {
        return None;
    }
    let patterns: Vec<Pattern> =
        config.webhooks.iter().flat_map(|w| &w.topics).filter_map(|p| Pattern::parse(p).ok()).collect();
    let names = config.webhooks.iter().map(|w| w.name.clone()).collect();
    let matches = move |t: &Topic| patterns.iter().any(|p| p.matches(t.as_str()));
    Some(Routes::new(matches, config.webhook_queue.max_len, names))
}

/// One inbound source.
#[derive(Debug)]
pub struct Source {
    keys: Keys,
    /// Where verified bodies are published.
    pub topic: Topic,
    tolerance: Duration,
}

/// Why an inbound webhook is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A `webhook-*` header is missing or malformed.
    #[error("missing or malformed webhook-id, webhook-timestamp or webhook-signature")]
    Headers,
    /// `webhook-timestamp` is outside the tolerance.
    #[error("webhook-timestamp outside the tolerance")]
    Stale,
    /// No signature matches.
    #[error("no valid signature")]
    Signature,
}

impl Source {
    /// Verifies one request: the timestamp against the tolerance, then the
    /// signatures (constant time).
    pub fn verify(&self, id: &str, ts: &str, signature: &str, body: &[u8]) -> Result<(), Refusal> {
        let ok_id = (1..=256).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic());
        let ts: u64 = ts.trim().parse().map_err(|_| Refusal::Headers)?;
        if !ok_id || signature.is_empty() {
            return Err(Refusal::Headers);
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if now.abs_diff(ts) > self.tolerance.as_secs() {
            return Err(Refusal::Stale);
        }
        if !self.keys.verify(signature, id, ts, body) {
            return Err(Refusal::Signature);
        }
        Ok(())
    }
}

/// A redrive that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// No such dead letter (or no outbound webhooks).
    #[error("no such dead letter")]
    NotFound,
    /// The outbox refused or failed; the dead letter is kept.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The webhooks of one process: endpoints with their workers, sources,
/// the outbox. Shared as `Arc<Webhooks>`.
pub struct Webhooks {
    endpoints: Vec<Arc<Endpoint>>,
    sources: HashMap<String, Source>,
    outbox: Option<Arc<dyn Outbox>>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").field("endpoints", &self.endpoints).finish_non_exhaustive()
    }
}

/// The message JSON of a dead letter.
#[derive(Deserialize)]
struct Stored<'a> {
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    ts: u64,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

impl Webhooks {
    /// Starts a worker per endpoint on `outbox` (which the engine built
    /// from [`routes`]) under `shutdown`.
    pub fn start(
        config: &Config,
        outbox: Option<Arc<dyn Outbox>>,
        shutdown: &Shutdown,
    ) -> Result<Arc<Webhooks>, EndpointError> {
        let consumer = format!("{:016x}", rand::rng().random::<u64>());
        let mut endpoints = Vec::new();
        for cfg in &config.webhooks {
            let ep = Arc::new(Endpoint::new(cfg)?);
            if let Some(outbox) = &outbox {
                Worker::start(
                    Arc::clone(&ep),
                    Arc::clone(outbox),
                    consumer.clone(),
                    config.webhook_queue.clone(),
                    shutdown,
                );
            }
            endpoints.push(ep);
        }
        let sources = config
            .webhooks_in
            .iter()
            .filter_map(|s| {
                let topic = Topic::new(&s.topic).ok()?;
                Some((s.name.clone(), Source { keys: Keys::new(&s.secrets), topic, tolerance: s.tolerance }))
            })
            .collect();
        if let Some(outbox) = outbox.as_ref().map(Arc::clone) {
            let token = shutdown.token().clone();
            shutdown.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    if let Ok(n) = outbox.dead_letter_count().await {
                        metrics::dead_letters(n);
                    }
                }
            });
        }
        if !endpoints.is_empty() {
            tracing::info!(endpoints = endpoints.len(), sources = config.webhooks_in.len(), "webhooks on");
        }
        Ok(Arc::new(Webhooks { endpoints, sources, outbox }))
    }

    /// The inbound source `name`.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.get(name)
    }

    /// Records an inbound request's result (`accepted`, `replayed`,
    /// `bad_signature`, `stale`, `bad_request`, `unavailable`).
    pub fn count_inbound(&self, source: &str, result: &'static str) {
        metrics::inbound(source, result);
    }

    /// Up to `limit` dead letters, oldest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, EngineError> {
        match &self.outbox {
            Some(o) => o.dead_letters(limit).await,
            None => Ok(Vec::new()),
        }
    }

    /// Records dead letter `id` again for its endpoint; the dead letter is
    /// removed once the entry is recorded (kept when that fails).
    pub async fn redrive(&self, id: &str) -> Result<(), RedriveError> {
        let outbox = self.outbox.as_ref().ok_or(RedriveError::NotFound)?;
        let letter = outbox.take_dead_letter(id).await?.ok_or(RedriveError::NotFound)?;
        let stored: Option<Stored<'_>> = serde_json::from_str(letter.message.get()).ok();
        let message = stored.and_then(|s| {
            let topic = Topic::new(&s.topic).ok()?;
            let id: MessageId = s.id.parse().ok()?;
            Some(Message::new(topic, id, s.ts, bytes::Bytes::copy_from_slice(s.data.get().as_bytes())))
        });
        let Some(message) = message else {
            tracing::warn!(id = %letter.id, "unreadable dead letter dropped");
            return Err(RedriveError::NotFound);
        };
        if let Err(e) = outbox.enqueue_for(&letter.endpoint, &message).await {
            // Put back: a failed redrive loses nothing.
            let _ = outbox.put_dead_letter(&letter).await;
            return Err(e.into());
        }
        metrics::redriven(&letter.endpoint);
        tracing::info!(endpoint = %letter.endpoint, id = %letter.id, "dead letter redriven");
        Ok(())
    }

    /// Redrives every dead letter (in pages); returns how many.
    pub async fn redrive_all(&self) -> Result<usize, RedriveError> {
        let mut n = 0;
        loop {
            let page = self.dead_letters(500).await?;
            if page.is_empty() {
                return Ok(n);
            }
            for letter in page {
                match self.redrive(&letter.id).await {
                    Ok(()) => n += 1,
                    Err(RedriveError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    #[test]
    fn sources_check_time_then_signature() {
        let secret =
            format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdef"));
        let keys = Keys::new(std::slice::from_ref(&secret));
        let src = Source {
            keys: keys.clone(),
            topic: Topic::new("t").unwrap(),
            tolerance: Duration::from_secs(300),
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let sig = keys.sign("msg_1", now, b"{}");
        assert_eq!(src.verify("msg_1", &now.to_string(), &sig, b"{}"), Ok(()));
        assert_eq!(src.verify("msg_1", &now.to_string(), &sig, b"{ }"), Err(Refusal::Signature));
        let old = now - 301;
        assert_eq!(
            src.verify("msg_1", &old.to_string(), &keys.sign("msg_1", old, b"{}"), b"{}"),
            Err(Refusal::Stale)
        );
        assert_eq!(src.verify("msg_1", "soon", &sig, b"{}"), Err(Refusal::Headers));
        assert_eq!(src.verify("", &now.to_string(), &sig, b"{}"), Err(Refusal::Headers));
    }
}
