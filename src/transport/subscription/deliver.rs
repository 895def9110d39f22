//! The driver's delivery side: the next event from the replay or the
//! outbox, each checked against the cursor (see the parent module's docs),
//! and the coalescing of replayed `delivery = "latest"` pages.

use std::sync::Arc;

use tokio::time::Instant;

use super::{Event, GapReport, Pending, Subscription};
use crate::core::engine::EngineError;
use crate::core::mailbox::Entry;
use crate::core::policy::Delivery;
use crate::core::replay::{Gap, Resume, Step};
use crate::core::{Close, Message};
use crate::metrics;

impl Subscription {
    /// The next event, waiting for one: the replay's first, then live ones.
    pub(crate) async fn next(&mut self) -> Event {
        // Boxed: a replay is rare next to live delivery, and its (large)
        // state would otherwise be reserved in every stream's future.
        if let Some(event) = Box::pin(self.next_replayed()).await {
            return event;
        }
        self.next_live().await
    }

    /// The next live event: waits on the outbox and the close flag only, so
    /// it may be raced against client input and timers. Call it once the
    /// replay is done (`!replaying()`); until then it would skip ahead of
    /// the replay.
    pub(crate) async fn next_live(&mut self) -> Event {
        loop {
            tokio::select! {
                biased;
                reason = self.session.wait_closed() => return Event::Closed(reason),
                e = self.sub.outbox.recv() => {
                    if let Some(event) = self.take(e) {
                        return event;
                    }
                }
            }
        }
    }

    /// The replay's next event; `None` once every replay is done (the
    /// stream is live). Not to be raced: see the module docs.
    pub(crate) async fn next_replayed(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.take_pending() {
                return Some(event);
            }
            let Some(mut resume) = self.backlog.as_mut().and_then(|b| b.resumes.pop_front()) else {
                self.tidy();
                return None;
            };
            match self.replay_step(&mut resume).await {
                Err(reason) => return Some(Event::Closed(reason)),
                Ok(None) => {}
                Ok(Some(step)) => {
                    self.hold(step);
                    self.backlog().resumes.push_front(resume);
                }
            }
        }
    }

    /// The next event if one is ready without waiting (to batch writes).
    pub(crate) fn try_next(&mut self) -> Option<Event> {
        if let Some(event) = self.take_pending() {
            return Some(event);
        }
        if self.backlog.as_ref().is_some_and(|b| !b.resumes.is_empty()) {
            return None;
        }
        while let Some(e) = self.sub.outbox.try_recv() {
            if let Some(event) = self.take(e) {
                return Some(event);
            }
        }
        None
    }

    /// What an outbox entry becomes, if anything is left of it for this
    /// stream.
    pub(super) fn take(&mut self, entry: Entry) -> Option<Event> {
        match entry {
            Entry::Message(message) => match &message.ephemeral {
                Some(from) => {
                    let mine = from.origin == self.session.id();
                    (!mine && self.cursor.get(&message.topic).is_some()).then_some(Event::Ephemeral(message))
                }
                None => self.accept(message, 0, true),
            },
            Entry::Latest { message, skipped } => self.accept(message, skipped, true),
            Entry::Dropped(d) => {
                let after = self.cursor.get(&d.topic)?;
                if d.last <= after {
                    return None;
                }
                let oldest = d.last.successor().unwrap_or(d.last);
                metrics::dropped_range(self.transport);
                self.gap_now(Gap { topic: d.topic, after, oldest, resume_from: d.last, dropped: true })
            }
            Entry::Notice(n) => self.wants_presence(&n.topic).then_some(Event::Notice(n)),
        }
    }

    pub(super) fn take_pending(&mut self) -> Option<Event> {
        while let Some(p) = self.backlog.as_mut().and_then(|b| b.pending.pop_front()) {
            let event = match p {
                Pending::Message(m, skipped) => self.accept(m, skipped, false),
                Pending::Gap(g) => self.gap_now(g),
            };
            if event.is_some() {
                return event;
            }
        }
        self.tidy();
        None
    }

    pub(super) fn hold(&mut self, step: Step) {
        match step {
            Step::Gap(g) => self.backlog().pending.push_back(Pending::Gap(g)),
            Step::Messages(ms) => {
                let latest = ms
                    .first()
                    .is_some_and(|m| self.sub.policies().get(m.topic.as_str()).delivery == Delivery::Latest);
                if latest {
                    let kept = coalesce(ms);
                    self.backlog().pending.extend(kept.into_iter().map(|(m, n)| Pending::Message(m, n)));
                } else {
                    self.backlog().pending.extend(ms.into_iter().map(|m| Pending::Message(m, 0)));
                }
            }
        }
    }

    /// Hands `m` out if it is new for its topic, advancing the cursor.
    pub(super) fn accept(&mut self, m: Arc<Message>, skipped: u64, live: bool) -> Option<Event> {
        if !self.cursor.advance(&m.topic, m.id) {
            return None;
        }
        if let Some(info) = &self.info {
            info.sent(1);
        }
        metrics::delivered(self.transport, 1);
        if skipped > 0 {
            metrics::skipped(self.transport, skipped);
        }
        if live {
            metrics::delivery_latency(self.transport, Instant::now().saturating_duration_since(m.seen));
        }
        let gap = self.backlog.as_mut().and_then(|b| {
            let i = b.held_gaps.iter().position(|g| g.topic == m.topic)?;
            Some(Box::new(b.held_gaps.swap_remove(i)))
        });
        if gap.is_some() {
            self.tidy();
        }
        Some(Event::Message { message: m, gap, skipped })
    }

    /// Reports `gap` now (moving the cursor past it) or holds it for the
    /// topic's next message.
    pub(super) fn gap_now(&mut self, gap: Gap) -> Option<Event> {
        if self.gap_report == GapReport::OnNextMessage {
            self.backlog().held_gaps.push(gap);
            return None;
        }
        self.cursor.get(&gap.topic)?;
        self.cursor.skip_to(&gap.topic, gap.resume_from);
        Some(Event::Gap(Box::new(gap)))
    }

    /// The next step of `resume`, raced against the close flag. `Ok(None)`
    /// once the topic is live (the replay is then recorded in the metrics);
    /// `Err` with the reason when the session was closed, or
    /// [`Close::Unavailable`] when the engine failed (the client resumes
    /// from its cursor), [`Close::Policy`] when it rejected the read as a
    /// bad request (resuming the same way would fail again).
    pub(super) async fn replay_step(&mut self, resume: &mut Resume) -> Result<Option<Step>, Close> {
        let step = tokio::select! {
            biased;
            r = self.session.wait_closed() => return Err(r),
            step = resume.next(&mut self.sub) => step,
        };
        match step {
            Ok(None) => {
                metrics::replay(resume.recovered(), resume.replayed());
                Ok(None)
            }
            Ok(Some(step)) => Ok(Some(step)),
            Err(e) => {
                // Debug: the engine's own log line covers an outage once.
                tracing::debug!(error = %e, topic = %resume.topic(), "replay failed");
                metrics::engine_error();
                match e {
                    EngineError::Rejected(_) => Err(Close::Policy),
                    _ => Err(Close::Unavailable),
                }
            }
        }
    }
}

/// The newest message per coalescing key of one topic's `messages`
/// (ascending), in id order, each with how many older ones of its key it
/// replaces: what a `delivery = "latest"` reader that fell behind gets.
pub(crate) fn coalesce(messages: Vec<Arc<Message>>) -> Vec<(Arc<Message>, u64)> {
    let mut newest: std::collections::HashMap<Option<&str>, (usize, u64)> = std::collections::HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let e = newest.entry(m.key.as_deref()).or_insert((i, 0));
        if e.0 != i {
            *e = (i, e.1 + 1);
        }
    }
    let mut keep: Vec<(usize, u64)> = newest.into_values().collect();
    keep.sort_unstable();
    let mut skipped = keep.iter().map(|&(i, n)| (i, n)).peekable();
    let mut out = Vec::with_capacity(keep.len());
    for (i, m) in messages.into_iter().enumerate() {
        if let Some(&(j, n)) = skipped.peek() {
            if i == j {
                out.push((m, n));
                skipped.next();
            }
        }
    }
    out
}
