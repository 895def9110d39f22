//! The one subscription driver: everything a client stream does between the
//! bus and its wire, the same for WebSocket, SSE, gRPC `Subscribe` and gRPC
//! `Connect`.
//!
//! A [`Subscription`] owns the stream's [`Subscriber`] (outbox and joined
//! topics), its [`Cursor`], the replays in progress and the open/close
//! record. It yields neutral [`Event`]s: a message (the cursor has moved past
//! it), a gap, or the reason the stream must end. An adapter reads its
//! client's input, calls [`Subscription::next`] / [`Subscription::try_next`]
//! and encodes what comes out; it never touches the outbox, the replay or
//! the cursor itself.
//!
//! # Replay → live, in one place
//!
//! A topic resumed from a position is replayed first ([`Resume`]: page by
//! page, join live when caught up, read once more); only when every replay
//! is done does the driver read the outbox. Each message is checked against
//! the cursor before it is handed out: a message of a topic no longer
//! subscribed, or with an id not greater than the position already
//! delivered (the replay/live overlap), is dropped. So each topic reaches
//! the client in id order, each message once.
//!
//! # Gaps
//!
//! A gap either becomes an [`Event::Gap`] at once, the cursor moving past it
//! so a reconnect does not report it again ([`GapReport::Event`]), or rides
//! on the topic's next message, the cursor staying put until then
//! ([`GapReport::OnNextMessage`], for wires with no frame of their own for a
//! gap).
//!
//! # Cancellation
//!
//! While [`Subscription::replaying`], the next event comes from a history
//! read that may join a topic: take it with
//! [`Subscription::next_replayed`], to completion (it races the session's
//! close flag itself), never inside a `select!`. Once live,
//! [`Subscription::next_live`] only waits on the outbox and the close flag
//! and is safe to race against client input and timers.
//! [`Subscription::next`] does both, for streams that only write.

use std::collections::VecDeque;
use std::sync::Arc;

use smallvec::SmallVec;

use super::access::Access;
use crate::auth::Grants;
use crate::core::expiry::ExpiryEntry;
use crate::core::notice::Notice;
use crate::core::replay::{Gap, Resume, Step};
use crate::core::session::{ConnInfo, SessionGuard};
use crate::core::{Close, Cursor, Message, MessageId, Session, Subscriber, Topic};
use crate::error::{ApiError, Code};
use crate::metrics::{self, Transport};
use crate::presence::Membership;
use crate::state::AppState;

/// What a stream delivers next.
#[derive(Debug)]
pub(crate) enum Event {
    /// A message to write; [`Subscription::cursor`] is now the position after
    /// it. `gap` is a pending gap of its topic ([`GapReport::OnNextMessage`]).
    Message {
        /// The message.
        message: Arc<Message>,
        /// A gap reported with this message (boxed: rare, and events are
        /// held in every stream's future).
        gap: Option<Box<Gap>>,
        /// Messages of its topic (and key) not delivered before it
        /// (`delivery = "latest"`); 0 for most.
        skipped: u64,
    },
    /// An ephemeral message (contract §11): no id, the cursor unchanged.
    Ephemeral(Arc<Message>),
    /// A presence event for a topic subscribed with presence.
    Notice(Arc<Notice>),
    /// History no longer reaches back; the cursor has moved past the gap.
    Gap(Box<Gap>),
    /// The stream must end for this reason (slow consumer, shutdown, engine
    /// failure); the client resumes from its last cursor.
    Closed(Close),
}

/// How a stream reports gaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GapReport {
    /// As an [`Event::Gap`] at once.
    Event,
    /// On the topic's next [`Event::Message`].
    OnNextMessage,
}

/// A subscribe op that could not be carried out.
#[derive(Debug)]
pub(crate) enum SubscribeError {
    /// Refused; the stream goes on.
    Refused(ApiError),
    /// The stream was closed meanwhile.
    Closed(Close),
}

/// A subscribe op that was carried out.
#[derive(Debug)]
pub(crate) struct Subscribed {
    /// History was trimmed past the requested position (reported before the
    /// op's acknowledgement).
    pub(crate) gap: Option<Gap>,
    /// False when a gap was reported.
    pub(crate) recovered: bool,
}

/// A replayed item not yet handed out.
#[derive(Debug)]
enum Pending {
    Message(Arc<Message>, u64),
    Gap(Gap),
}

/// What a stream still has to hand out of its replays, and gaps held for
/// a topic's next message. Rare next to live delivery: boxed, and present
/// only while it holds something, so an idle stream's task keeps a pointer.
#[derive(Default)]
struct Backlog {
    /// Topics still replaying, in order; the outbox is read once empty.
    resumes: VecDeque<Resume>,
    /// Replayed items of the current page, handed out one by one so the
    /// cursor is right for each.
    pending: VecDeque<Pending>,
    /// Gaps waiting for their topic's next message (`OnNextMessage`).
    held_gaps: Vec<Gap>,
}

impl Backlog {
    fn is_empty(&self) -> bool {
        self.resumes.is_empty() && self.pending.is_empty() && self.held_gaps.is_empty()
    }
}

/// One client stream's subscription; see the module docs.
pub(crate) struct Subscription {
    sub: Subscriber,
    session: Arc<Session>,
    _registered: SessionGuard,
    cursor: Cursor,
    /// Replays and held gaps (`None` while there are none).
    backlog: Option<Box<Backlog>>,
    gap_report: GapReport,
    transport: Transport,
    replay_page: u32,
    max_topics: u32,
    record: Option<Record>,
    /// Who the stream is and what it may do.
    access: Access,
    /// The close at the token's expiry.
    expiry: Option<ExpiryEntry>,
    /// Topics whose presence events this stream asked for.
    presence: SmallVec<[Topic; 1]>,
    /// What the admin API lists (from [`Subscription::open`]).
    info: Option<Arc<ConnInfo>>,
    /// This stream's presence entries (every subscribed presence topic).
    members: Membership,
}

impl Subscription {
    /// A subscription with no topic yet, registered for shutdown.
    pub(crate) fn new(state: &AppState, transport: Transport, gap_report: GapReport, access: Access) -> Self {
        let sub = state.bus.subscriber();
        let session = Arc::clone(sub.session());
        let registered = state.shutdown.sessions().register(&session);
        Subscription {
            sub,
            session,
            _registered: registered,
            cursor: Cursor::new(),
            backlog: None,
            gap_report,
            transport,
            replay_page: u32::try_from(state.bus.replay_page).unwrap_or(u32::MAX),
            max_topics: u32::try_from(state.config.limits.max_topics_per_connection).unwrap_or(u32::MAX),
            record: None,
            access,
            expiry: None,
            presence: SmallVec::new(),
            info: None,
            members: Membership::new(&state.presence),
        }
    }

    /// The stream's connection id (presence `client`; not echoed its own
    /// ephemeral messages).
    pub(crate) fn id(&self) -> u64 {
        self.session.id()
    }

    /// Marks `topic`'s presence events as wanted (or not).
    pub(crate) fn want_presence(&mut self, topic: &Topic, on: bool) {
        let had = self.presence.iter().position(|t| t == topic);
        match (had, on) {
            (None, true) => {
                self.presence.push(topic.clone());
                self.members.watch(topic, self.session.id(), true);
            }
            (Some(i), false) => {
                self.presence.swap_remove(i);
                self.members.watch(topic, self.session.id(), false);
            }
            _ => {}
        }
    }

    /// True when `topic`'s presence events are wanted.
    pub(crate) fn wants_presence(&self, topic: &Topic) -> bool {
        self.presence.iter().any(|t| t == topic)
    }

    /// Who the stream is.
    pub(crate) fn access(&self) -> &Access {
        &self.access
    }

    /// Who the stream is and what it may do.
    pub(crate) fn access_mut(&mut self) -> &mut Access {
        &mut self.access
    }

    /// Counts the stream against the per-IP and per-user limits and
    /// schedules its close at the token's expiry (`exp` + `auth.leeway`).
    pub(crate) fn admit(&mut self, state: &AppState) -> Result<(), ApiError> {
        self.access.open_stream(state)?;
        self.schedule_expiry(state);
        Ok(())
    }

    fn schedule_expiry(&mut self, state: &AppState) {
        self.expiry = self.access.grants.expires.map(|exp| {
            let at = exp.saturating_mul(1000).saturating_add(state.config.auth.leeway.as_millis() as u64);
            state.expiries.schedule(&self.session, at)
        });
    }

    /// A `refresh`: replaces the grants (same user) and the expiry; the
    /// topics the new grants no longer allow are left and returned.
    pub(crate) fn refresh(&mut self, state: &AppState, grants: Arc<Grants>) -> Result<Vec<Topic>, ApiError> {
        self.access.refresh(grants)?;
        self.schedule_expiry(state);
        let dropped: Vec<Topic> = self
            .cursor
            .iter()
            .map(|(t, _)| t)
            .filter(|t| !self.access.grants.can_subscribe(t.as_str()))
            .cloned()
            .collect();
        for topic in &dropped {
            self.leave(topic);
        }
        Ok(dropped)
    }

    /// Subscribes to `topics`: those `cursor` names are replayed after their
    /// position; the others are joined live now, so anything published after
    /// this returns reaches the stream.
    pub(crate) async fn start(
        &mut self,
        topics: Vec<Topic>,
        cursor: Option<&Cursor>,
    ) -> Result<(), ApiError> {
        for topic in &topics {
            self.access.may_subscribe(topic)?;
        }
        for topic in topics {
            match cursor.and_then(|c| c.get(&topic)) {
                Some(after) => {
                    self.cursor.set(&topic, after);
                    let page = self.replay_page as usize;
                    self.backlog().resumes.push_back(Resume::after(topic, after, page));
                }
                None => {
                    let pos = Resume::from_now(&mut self.sub, &topic).await?;
                    self.cursor.set(&topic, pos);
                }
            }
        }
        self.sync_topics();
        if !self.cursor.fits() {
            return Err(ApiError::new(Code::BadRequest, "too many topics for one cursor"));
        }
        let topics: Vec<Topic> = self.cursor.iter().map(|(t, _)| t.clone()).collect();
        for topic in &topics {
            self.enter_presence(topic);
        }
        Ok(())
    }

    /// Shows the subscribed topics in the admin record.
    fn sync_topics(&self) {
        if let Some(info) = &self.info {
            info.set_topics(self.cursor.iter().map(|(t, _)| t.clone()));
        }
    }

    /// Registers the stream in `topic`'s presence (when it has presence).
    fn enter_presence(&mut self, topic: &Topic) {
        let grants = &self.access.grants;
        self.members.enter(topic, self.session.id(), grants.user.as_ref(), grants.info.as_ref());
    }

    /// The subscribe op: adds `topic` from `after` (replayed, its first page
    /// read before this returns) or from now.
    pub(crate) async fn subscribe(
        &mut self,
        topic: Topic,
        after: Option<MessageId>,
    ) -> Result<Subscribed, SubscribeError> {
        let done = self.subscribe_to(topic.clone(), after).await;
        self.sync_topics();
        if done.is_ok() {
            self.enter_presence(&topic);
        }
        done
    }

    async fn subscribe_to(
        &mut self,
        topic: Topic,
        after: Option<MessageId>,
    ) -> Result<Subscribed, SubscribeError> {
        let refuse = |m: &str| Err(SubscribeError::Refused(ApiError::new(Code::BadRequest, m)));
        if let Err(e) = self.access.may_subscribe(&topic) {
            return Err(SubscribeError::Refused(e));
        }
        if self.cursor.get(&topic).is_some() {
            return refuse("already subscribed");
        }
        if self.cursor.len() >= self.max_topics as usize {
            metrics::rejected("topics_per_connection");
            return refuse("too many topics (limits.max_topics_per_connection)");
        }
        self.cursor.set(&topic, after.unwrap_or_default());
        if !self.cursor.fits() {
            self.cursor.remove(&topic);
            return refuse("too many topics for one cursor");
        }
        let Some(after) = after else {
            return match Resume::from_now(&mut self.sub, &topic).await {
                Ok(pos) => {
                    self.cursor.set(&topic, pos);
                    Ok(Subscribed { gap: None, recovered: true })
                }
                Err(e) => {
                    self.cursor.remove(&topic);
                    Err(SubscribeError::Refused(e.into()))
                }
            };
        };
        let mut resume = Resume::after(topic.clone(), after, self.replay_page as usize);
        // A gap goes out before the acknowledgement, then the first page is
        // read so an engine failure can still be answered as an error.
        let mut gap = None;
        let mut first = self.replay_step(&mut resume).await;
        if let Ok(Some(Step::Gap(g))) = first {
            if let Some(Event::Gap(g)) = self.gap_now(g) {
                gap = Some(*g);
            }
            first = self.replay_step(&mut resume).await;
        }
        let recovered = resume.recovered();
        match first {
            Ok(None) => {}
            Ok(Some(step)) => {
                self.hold(step);
                self.backlog().resumes.push_back(resume);
            }
            Err(Close::Unavailable) => {
                self.leave(&topic);
                return Err(SubscribeError::Refused(ApiError::new(Code::Unavailable, "engine unavailable")));
            }
            Err(Close::Policy) => {
                self.leave(&topic);
                return Err(SubscribeError::Refused(ApiError::new(
                    Code::BadRequest,
                    "resume point rejected by the engine",
                )));
            }
            Err(closed) => return Err(SubscribeError::Closed(closed)),
        }
        Ok(Subscribed { gap, recovered })
    }

    /// Leaves `topic` (unsubscribe); what was queued for it is dropped.
    pub(crate) fn leave(&mut self, topic: &Topic) {
        self.sub.leave(topic);
        self.want_presence(topic, false);
        self.members.exit(topic);
        self.cursor.remove(topic);
        if let Some(b) = &mut self.backlog {
            b.resumes.retain(|r| r.topic() != topic);
        }
        self.tidy();
        self.sync_topics();
    }

    /// Leaves every topic (before a close handshake).
    pub(crate) fn leave_all(&mut self) {
        self.sub.leave_all();
        self.members.exit_all();
        if let Some(b) = &mut self.backlog {
            b.resumes.clear();
            b.pending.clear();
        }
        self.tidy();
    }

    /// True while a replay is in progress (see the module docs on
    /// cancellation).
    pub(crate) fn replaying(&self) -> bool {
        self.backlog.as_ref().is_some_and(|b| !b.resumes.is_empty() || !b.pending.is_empty())
    }

    /// The backlog, made when first needed.
    fn backlog(&mut self) -> &mut Backlog {
        self.backlog.get_or_insert_with(Box::default)
    }

    /// Frees the backlog once it holds nothing.
    fn tidy(&mut self) {
        if self.backlog.as_ref().is_some_and(|b| b.is_empty()) {
            self.backlog = None;
        }
    }

    /// The position after everything handed out so far.
    pub(crate) fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// The stream's close flag (hub, shutdown and kill switch use it).
    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

mod deliver;
mod record;

pub(crate) use deliver::coalesce;
use record::Record;

#[cfg(test)]
mod tests;
