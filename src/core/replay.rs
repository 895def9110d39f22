//! Resuming a topic from a position: replay history, then hand over to live
//! delivery with no gap and no duplicate.
//!
//! # The hand-over
//!
//! 1. Page through history after the resume point while the backlog is
//!    large, without joining live (so a long replay does not fill the outbox).
//! 2. When a page comes back short (caught up), join the hub and wait for the
//!    engine's watch (see `Engine::watch`): from then on every new message
//!    reaches the outbox.
//! 3. Read history once more (until a short page) after the last replayed id.
//!    Anything appended before the join is in that read; anything after is in
//!    the outbox; a message in both is dropped by the transport because its id
//!    is not greater than the position it already delivered. Skipped when
//!    the position is the hub's tip after the join (`Hub::tip`): nothing
//!    newer exists that will not reach the outbox.
//!
//! Trimming is never hidden: a page read after a trimmed position yields a
//! [`Gap`] first, then continues from the oldest retained message.

use std::sync::Arc;

use super::engine::{EngineError, History};
use super::message::{Message, MessageId, Topic};
use super::subscriber::Subscriber;

/// History that no longer reaches back to a resume point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The topic.
    pub topic: Topic,
    /// The position the subscriber resumed from.
    pub after: MessageId,
    /// The first id that can still be delivered.
    pub oldest: MessageId,
    /// Where the replay continues from (a real id: the newest trimmed one,
    /// or `after` itself when the history is gone); the subscriber's cursor
    /// moves here.
    pub resume_from: MessageId,
    /// True when the range was dropped for this subscriber by
    /// `delivery = "drop"` (still in history), not trimmed.
    pub dropped: bool,
}

impl Gap {
    /// The gap's JSON fields, `"topic":T,"after":ID,"oldest":ID`, without
    /// braces: every wire's gap notice is built from them (topic and id
    /// alphabets need no escaping).
    pub fn json_fields(&self) -> String {
        let reason = if self.dropped { ",\"reason\":\"dropped\"" } else { "" };
        format!(
            "\"topic\":\"{}\",\"after\":\"{}\",\"oldest\":\"{}\"{reason}",
            self.topic, self.after, self.oldest
        )
    }

    /// The gap as a JSON object (SSE `event: gap` data, long-poll `gaps`).
    pub fn json(&self) -> String {
        format!("{{{}}}", self.json_fields())
    }

    /// The gap a history read after `after` reports, if it was truncated:
    /// what can still be delivered starts at `oldest`, and the position
    /// moves to the newest trimmed id (`resume_from`).
    pub fn in_history(topic: &Topic, after: MessageId, history: &History) -> Option<Gap> {
        if !history.truncated {
            return None;
        }
        let oldest = history.oldest.or_else(|| after.successor()).unwrap_or(after);
        let resume_from = history.trimmed.map_or(after, |t| after.max(t));
        Some(Gap { topic: topic.clone(), after, oldest, resume_from, dropped: false })
    }
}

/// One step of a replay.
#[derive(Debug)]
pub enum Step {
    /// History was trimmed past the position; continue with what follows.
    Gap(Gap),
    /// The next messages, ascending.
    Messages(Vec<Arc<Message>>),
}

/// A replay of one topic in progress; call [`Resume::next`] until it yields
/// `None`, then the topic is live.
#[derive(Debug)]
pub struct Resume {
    topic: Topic,
    pos: MessageId,
    joined: bool,
    done: bool,
    page: usize,
    recovered: bool,
    /// Position and trim state at which the last gap was reported: an engine
    /// that keeps saying `truncated` in the same state (a lost stream, where
    /// the position cannot advance) is not reported twice; any further trim
    /// is a new gap.
    gap_at: Option<(MessageId, Option<MessageId>)>,
    replayed: u64,
}

impl Resume {
    /// Joins `topic` live from "now": returns the position to record (the
    /// newest id at join time, or zero for an empty topic). When the hub
    /// knows the topic's tip, that is "now" and the engine is not asked:
    /// everything after it reaches the outbox (see [`Hub::tip`](super::Hub::tip)).
    pub async fn from_now(sub: &mut Subscriber, topic: &Topic) -> Result<MessageId, EngineError> {
        sub.join(topic).await?;
        if let Some(tip) = sub.tip(topic) {
            return Ok(tip);
        }
        match sub.engine().last_id(topic).await {
            Ok(last) => Ok(last.unwrap_or(MessageId::ZERO)),
            Err(e) => {
                sub.leave(topic);
                Err(e)
            }
        }
    }

    /// A replay of `topic` after `after`, reading `page` messages at a time.
    pub fn after(topic: Topic, after: MessageId, page: usize) -> Self {
        Resume {
            topic,
            pos: after,
            joined: false,
            done: false,
            page: page.max(1),
            recovered: true,
            gap_at: None,
            replayed: 0,
        }
    }

    /// The last id delivered (or skipped past by a gap).
    pub fn position(&self) -> MessageId {
        self.pos
    }

    /// The topic being replayed.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Messages handed out so far.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// False once a gap was reported.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// The next step, or `None` once caught up and live.
    pub async fn next(&mut self, sub: &mut Subscriber) -> Result<Option<Step>, EngineError> {
        while !self.done {
            let history = sub.engine().history(&self.topic, Some(self.pos), self.page).await?;
            if self.gap_at != Some((self.pos, history.trimmed)) {
                if let Some(gap) = Gap::in_history(&self.topic, self.pos, &history) {
                    self.pos = gap.resume_from;
                    self.gap_at = Some((self.pos, history.trimmed));
                    self.recovered = false;
                    // Re-read from the new position next time; report first.
                    return Ok(Some(Step::Gap(gap)));
                }
            }
            // A page cut to bound its size is not "caught up".
            let short = history.messages.len() < self.page && !history.cut;
            if let Some(last) = history.messages.last() {
                self.pos = last.id;
            }
            if short {
                if self.joined {
                    self.done = true;
                } else {
                    sub.join(&self.topic).await?;
                    self.joined = true;
                    // Caught up with the hub's tip: every later message
                    // reaches the outbox, the read after the join could only
                    // come back empty.
                    self.done = sub.tip(&self.topic) == Some(self.pos);
                }
            }
            if !history.messages.is_empty() {
                self.replayed += history.messages.len() as u64;
                return Ok(Some(Step::Messages(history.messages)));
            }
        }
        Ok(None)
    }
}
