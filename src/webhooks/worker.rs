//! One endpoint's worker: takes entries from the outbox as this process's
//! consumer, POSTs them signed, retries, dead-letters, acknowledges.
//!
//! Isolation: every endpoint has its own worker, HTTP client, window of
//! deliveries in flight (`webhook_queue.max_in_flight`), attempt slots
//! (`concurrency`) and circuit breaker, so a dead or slow endpoint only
//! ever holds its own. Retries take at most half of the attempt slots
//! (rounded down, at least one): first attempts always have the rest.
//! A delivery waiting for its retry holds no slot, only its place in the
//! window.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::metrics;
use super::policy::{backoff, classify, Breaker, Outcome, Permit};
use super::sign::Keys;
use crate::auth::Pattern;
use crate::config::{WebhookConfig, WebhookQueueConfig};
use crate::core::outbox::{DeadLetter, Entry, EntryRef, Outbox};
use crate::core::Topic;
use crate::shutdown::Shutdown;

/// One configured endpoint and its live state.
pub struct Endpoint {
    /// Its name (metrics label, dead letters).
    pub name: String,
    url: reqwest::Url,
    keys: Keys,
    patterns: Vec<Pattern>,
    cfg: WebhookConfig,
    client: reqwest::Client,
    breaker: Breaker,
    disabled: AtomicBool,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("name", &self.name).finish_non_exhaustive()
    }
}

/// An endpoint that cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("webhook endpoint {name}: {reason}")]
pub struct EndpointError {
    name: String,
    reason: String,
}

impl Endpoint {
    /// The endpoint of `cfg` (validated by the config).
    pub fn new(cfg: &WebhookConfig) -> Result<Endpoint, EndpointError> {
        let err = |reason: &str| EndpointError { name: cfg.name.clone(), reason: reason.into() };
        let url = reqwest::Url::parse(&cfg.url).map_err(|_| err("bad url"))?;
        let patterns = cfg.topics.iter().map(|p| Pattern::parse(p)).collect::<Result<Vec<_>, _>>();
        let patterns = patterns.map_err(|_| err("bad topic pattern"))?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.timeout)
            .pool_max_idle_per_host(cfg.concurrency)
            .user_agent(concat!("rtgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| err("cannot build the HTTP client"))?;
        Ok(Endpoint {
            name: cfg.name.clone(),
            url,
            keys: Keys::new(&cfg.secrets),
            patterns,
            cfg: cfg.clone(),
            client,
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
            disabled: AtomicBool::new(false),
        })
    }

    /// Whether `topic` is one of this endpoint's.
    pub fn matches(&self, topic: &Topic) -> bool {
        self.patterns.iter().any(|p| p.matches(topic.as_str()))
    }

    /// Whether a `410 Gone` disabled it (until restart).
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }

    /// One signed POST of `body`.
    async fn attempt(&self, webhook_id: &str, body: &bytes::Bytes) -> Outcome {
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let request = self
            .client
            .post(self.url.clone())
            .timeout(self.cfg.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", self.keys.sign(webhook_id, ts, body))
            .body(body.clone());
        match request.send().await {
            Ok(res) => {
                let ra = res.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
                classify(res.status().as_u16(), ra.as_deref())
            }
            // reqwest's errors name the URL, which may hold a secret: only
            // the kind is kept.
            Err(e) if e.is_timeout() => Outcome::Retry { error: "timeout".into(), after: None },
            Err(e) if e.is_connect() => Outcome::Retry { error: "connect failed".into(), after: None },
            Err(_) => Outcome::Retry { error: "request failed".into(), after: None },
        }
    }
}

/// The worker of one endpoint in this process.
pub struct Worker {
    ep: Arc<Endpoint>,
    outbox: Arc<dyn Outbox>,
    consumer: String,
    queue: WebhookQueueConfig,
    token: CancellationToken,
    window: Arc<Semaphore>,
    attempts: Arc<Semaphore>,
    retries: Arc<Semaphore>,
    /// Entries this process works on (kept from takeover).
    held: Mutex<HashSet<EntryRef>>,
    /// Ordered endpoints: per topic, the entries waiting behind the one
    /// being delivered.
    chains: Mutex<HashMap<Topic, VecDeque<(Entry, OwnedSemaphorePermit)>>>,
}

impl Worker {
    /// Starts the worker of `ep` under `shutdown`.
    pub fn start(
        ep: Arc<Endpoint>,
        outbox: Arc<dyn Outbox>,
        consumer: String,
        queue: WebhookQueueConfig,
        shutdown: &Shutdown,
    ) {
        let concurrency = ep.cfg.concurrency.max(1);
        let worker = Arc::new(Worker {
            window: Arc::new(Semaphore::new(queue.max_in_flight.max(1))),
            attempts: Arc::new(Semaphore::new(concurrency)),
            retries: Arc::new(Semaphore::new((concurrency / 2).max(1))),
            ep,
            outbox,
            consumer,
            queue,
            token: shutdown.token().clone(),
            held: Mutex::default(),
            chains: Mutex::default(),
        });
        metrics::circuit(&worker.ep.name, super::policy::BreakerState::Closed);
        let w = Arc::clone(&worker);
        shutdown.spawn(async move { w.run().await });
        let w = Arc::clone(&worker);
        shutdown.spawn(async move { w.keep_and_reclaim().await });
    }

    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.token.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Registers, then fetches while the window has room.
    async fn run(self: Arc<Self>) {
        let mut wait = Duration::from_millis(100);
        while let Err(e) = self.outbox.register(&self.ep.name).await {
            tracing::warn!(endpoint = %self.ep.name, error = %e, "webhook outbox not ready; retrying");
            if !self.sleep(wait).await {
                return;
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        let mut added = self.outbox.added();
        loop {
            if !self.leased().await {
                if !self.sleep(self.lease_wait()).await {
                    return;
                }
                continue;
            }
            let first = tokio::select! {
                _ = self.token.cancelled() => return,
                p = Arc::clone(&self.window).acquire_owned() => p,
            };
            let Ok(first) = first else { return };
            let mut permits = vec![first];
            while permits.len() < 100 {
                match Arc::clone(&self.window).try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            added.borrow_and_update();
            let entries = match self.outbox.fetch(&self.ep.name, &self.consumer, permits.len()).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(endpoint = %self.ep.name, error = %e, "webhook outbox read failed");
                    Vec::new()
                }
            };
            if entries.is_empty() {
                drop(permits);
                tokio::select! {
                    _ = self.token.cancelled() => return,
                    _ = added.changed() => {}
                    _ = tokio::time::sleep(self.queue.poll_interval) => {}
                }
                continue;
            }
            for (entry, permit) in entries.into_iter().zip(permits) {
                self.dispatch(entry, permit);
            }
        }
    }

    /// Whether this process may read the endpoint: always, unless it is
    /// ordered and another process holds its lease.
    async fn leased(&self) -> bool {
        if !self.ep.cfg.ordered {
            return true;
        }
        match self.outbox.lease(&self.ep.name, &self.consumer, self.queue.visibility_timeout).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(endpoint = %self.ep.name, error = %e, "webhook lease check failed");
                false
            }
        }
    }

    /// How long a process without the lease waits before asking again.
    fn lease_wait(&self) -> Duration {
        (self.queue.visibility_timeout / 3).max(Duration::from_millis(100))
    }

    /// Keeps this process's entries from takeover and takes over those a
    /// dead process left.
    async fn keep_and_reclaim(self: Arc<Self>) {
        let every = (self.queue.visibility_timeout / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = self.token.cancelled() => return,
                _ = tick.tick() => {}
            }
            let held: Vec<EntryRef> = self.held.lock().iter().cloned().collect();
            if !held.is_empty() {
                if let Err(e) = self.outbox.keep(&self.ep.name, &self.consumer, &held).await {
                    tracing::warn!(endpoint = %self.ep.name, error = %e, "cannot extend webhook deliveries");
                }
            }
            let room = self.window.available_permits().min(100);
            if room == 0 || !self.leased().await {
                continue;
            }
            let idle = self.queue.visibility_timeout;
            match self.outbox.reclaim(&self.ep.name, &self.consumer, idle, room).await {
                Ok(entries) => {
                    for entry in entries {
                        if self.held.lock().contains(&entry.at) {
                            continue;
                        }
                        let Ok(permit) = Arc::clone(&self.window).try_acquire_owned() else { break };
                        tracing::info!(endpoint = %self.ep.name, entry = %entry.at.id, "webhook delivery taken over");
                        metrics::taken_over(&self.ep.name);
                        self.dispatch(entry, permit);
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.ep.name, error = %e, "webhook takeover check failed")
                }
            }
        }
    }

    fn dispatch(self: &Arc<Self>, entry: Entry, permit: OwnedSemaphorePermit) {
        // Held (kept from takeover) from now on, also while waiting in a chain.
        self.held.lock().insert(entry.at.clone());
        if !self.ep.cfg.ordered {
            self.dispatch_now(entry, permit);
            return;
        }
        let topic = entry.message.topic.clone();
        {
            let mut chains = self.chains.lock();
            if let Some(queue) = chains.get_mut(&topic) {
                queue.push_back((entry, permit));
                return;
            }
            chains.insert(topic.clone(), VecDeque::new());
        }
        let w = Arc::clone(self);
        tokio::spawn(async move {
            let mut next = Some((entry, permit));
            while let Some((entry, permit)) = next.take() {
                w.deliver(entry).await;
                drop(permit);
                let mut chains = w.chains.lock();
                next = chains.get_mut(&topic).and_then(VecDeque::pop_front);
                if next.is_none() {
                    chains.remove(&topic);
                }
            }
        });
    }

    fn dispatch_now(self: &Arc<Self>, entry: Entry, permit: OwnedSemaphorePermit) {
        let w = Arc::clone(self);
        tokio::spawn(async move {
            w.deliver(entry).await;
            drop(permit);
        });
    }

    async fn ack(&self, at: &EntryRef) {
        if let Err(e) = self.outbox.ack(&self.ep.name, at).await {
            // Left pending: delivered again after the visibility timeout
            // (at least once).
            tracing::warn!(endpoint = %self.ep.name, error = %e, "webhook ack failed");
        }
    }

    /// Delivers one entry to the end: delivered, dead-lettered, or left
    /// pending at shutdown (taken over later).
    async fn deliver(&self, entry: Entry) {
        let ep = &self.ep;
        let mine = match &entry.only {
            Some(only) => *only == ep.name,
            None => ep.matches(&entry.message.topic),
        };
        if !mine {
            self.ack(&entry.at).await;
            self.held.lock().remove(&entry.at);
            return;
        }
        metrics::in_flight(&ep.name, 1.0);
        let done = self.attempts_of(&entry).await;
        metrics::in_flight(&ep.name, -1.0);
        let finished = match done {
            Some(Ok(())) => true,
            Some(Err(letter)) => self.dead_letter(letter).await,
            None => false,
        };
        // Unfinished (shutting down): left pending, taken over later.
        if finished {
            self.ack(&entry.at).await;
        }
        self.held.lock().remove(&entry.at);
    }

    /// `Some(Ok)` delivered, `Some(Err)` for the dead letters, `None` when
    /// shutting down (left pending).
    async fn attempts_of(&self, entry: &Entry) -> Option<Result<(), DeadLetter>> {
        let ep = &self.ep;
        let m = &entry.message;
        let webhook_id = format!("{}:{}", m.topic.as_str(), m.id);
        let body = m.json();
        let letter = |attempts: u32, last_error: String| DeadLetter {
            id: format!("{}:{}", ep.name, webhook_id),
            endpoint: ep.name.clone(),
            message: std::str::from_utf8(&body)
                .ok()
                .and_then(|t| serde_json::value::RawValue::from_string(t.to_owned()).ok())
                .unwrap_or_else(|| serde_json::value::RawValue::NULL.to_owned()),
            attempts,
            last_error,
        };
        let mut attempt = 0u32;
        loop {
            if ep.is_disabled() {
                return Some(Err(letter(attempt, "endpoint disabled (HTTP 410)".into())));
            }
            loop {
                match ep.breaker.permit() {
                    Permit::Go => break,
                    Permit::Wait(d) => {
                        if !self.sleep(d).await {
                            return None;
                        }
                    }
                }
            }
            attempt += 1;
            let outcome = {
                let _retry = if attempt > 1 { Some(self.retries.acquire().await.ok()?) } else { None };
                let _slot = self.attempts.acquire().await.ok()?;
                tokio::select! {
                    _ = self.token.cancelled() => return None,
                    o = ep.attempt(&webhook_id, &body) => o,
                }
            };
            metrics::attempt(&ep.name, &outcome);
            let breaker_ok = !matches!(outcome, Outcome::Retry { .. });
            if let Some(state) = ep.breaker.record(breaker_ok) {
                metrics::circuit(&ep.name, state);
                tracing::warn!(endpoint = %ep.name, state = ?state, "webhook circuit breaker changed state");
            }
            match outcome {
                Outcome::Delivered => {
                    let age = crate::core::message::now_ms().saturating_sub(m.ts);
                    metrics::delivered(&ep.name, Duration::from_millis(age));
                    return Some(Ok(()));
                }
                Outcome::Refused(error) => {
                    tracing::warn!(endpoint = %ep.name, webhook_id = %webhook_id, error = %error, "webhook refused: dead letter");
                    return Some(Err(letter(attempt, error)));
                }
                Outcome::Gone => {
                    if !ep.disabled.swap(true, Ordering::AcqRel) {
                        tracing::error!(endpoint = %ep.name, "webhook endpoint answered 410 Gone: disabled until restart");
                        metrics::disabled(&ep.name);
                    }
                    return Some(Err(letter(attempt, "HTTP 410".into())));
                }
                Outcome::Retry { error, after } => {
                    if attempt >= ep.cfg.max_attempts {
                        tracing::warn!(endpoint = %ep.name, webhook_id = %webhook_id, error = %error, attempts = attempt, "webhook retries exhausted: dead letter");
                        return Some(Err(letter(attempt, error)));
                    }
                    let delay = backoff(ep.cfg.backoff, ep.cfg.max_backoff, attempt, ep.cfg.jitter, after);
                    tracing::info!(endpoint = %ep.name, webhook_id = %webhook_id, error = %error, attempt, delay = ?delay, "webhook attempt failed; retrying");
                    if !self.sleep(delay).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Stores `letter`; false when shutting down first (the entry then
    /// stays pending until its dead letter is stored).
    async fn dead_letter(&self, letter: DeadLetter) -> bool {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.outbox.put_dead_letter(&letter).await {
                Ok(()) => {
                    metrics::dead_lettered(&self.ep.name);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.ep.name, error = %e, "cannot store a webhook dead letter; retrying");
                    if !self.sleep(wait).await {
                        return false;
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
