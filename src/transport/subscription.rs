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
use std::net::SocketAddr;
use std::sync::Arc;

use smallvec::SmallVec;
use tokio::time::Instant;

use super::access::Access;
use crate::auth::Grants;
use crate::core::engine::EngineError;
use crate::core::expiry::ExpiryEntry;
use crate::core::mailbox::Entry;
use crate::core::notice::Notice;
use crate::core::policy::{Delivery, Policies};
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

/// One client stream's subscription; see the module docs.
pub(crate) struct Subscription {
    sub: Subscriber,
    session: Arc<Session>,
    _registered: SessionGuard,
    cursor: Cursor,
    /// Topics still replaying, in order; the outbox is read once empty.
    resumes: VecDeque<Resume>,
    /// Replayed items of the current page, handed out one by one so the
    /// cursor is right for each.
    pending: VecDeque<Pending>,
    gap_report: GapReport,
    /// Gaps waiting for their topic's next message (`OnNextMessage`).
    held_gaps: Vec<Gap>,
    transport: Transport,
    replay_page: usize,
    max_topics: usize,
    record: Option<Record>,
    sent: u64,
    /// Who the stream is and what it may do.
    access: Access,
    /// The close at the token's expiry.
    expiry: Option<ExpiryEntry>,
    /// Topic policies (a replay of a `latest` topic is coalesced).
    policies: Arc<Policies>,
    /// Topics whose presence events this stream asked for.
    presence: SmallVec<[Topic; 1]>,
    /// What the admin API lists (from [`Subscription::open`]).
    info: Option<Arc<ConnInfo>>,
    /// This stream's presence entries (every subscribed presence topic).
    members: Membership,
}

/// The open/close accounting of a stream: a log line and metrics at open,
/// and at close however the stream ends (finished, or dropped by hyper
/// because the client left or the connection was killed).
struct Record {
    rpc: Option<&'static str>,
    peer: Option<SocketAddr>,
    opened: Instant,
    received: Option<u64>,
    reason: Close,
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
            resumes: VecDeque::new(),
            pending: VecDeque::new(),
            gap_report,
            held_gaps: Vec::new(),
            transport,
            replay_page: state.bus.replay_page,
            max_topics: state.config.limits.max_topics_per_connection,
            record: None,
            sent: 0,
            access,
            expiry: None,
            policies: Arc::clone(state.bus.hub.policies()),
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
                    self.resumes.push_back(Resume::after(topic, after, self.replay_page));
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
        if self.cursor.len() >= self.max_topics {
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
        let mut resume = Resume::after(topic.clone(), after, self.replay_page);
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
                self.resumes.push_back(resume);
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
        self.resumes.retain(|r| r.topic() != topic);
        self.sync_topics();
    }

    /// Leaves every topic (before a close handshake).
    pub(crate) fn leave_all(&mut self) {
        self.sub.leave_all();
        self.members.exit_all();
        self.resumes.clear();
        self.pending.clear();
    }

    /// True while a replay is in progress (see the module docs on
    /// cancellation).
    pub(crate) fn replaying(&self) -> bool {
        !self.resumes.is_empty() || !self.pending.is_empty()
    }

    /// The position after everything handed out so far.
    pub(crate) fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// The stream's close flag (hub, shutdown and kill switch use it).
    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.session
    }

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
            let mut resume = self.resumes.pop_front()?;
            match self.replay_step(&mut resume).await {
                Err(reason) => return Some(Event::Closed(reason)),
                Ok(None) => {}
                Ok(Some(step)) => {
                    self.hold(step);
                    self.resumes.push_front(resume);
                }
            }
        }
    }

    /// The next event if one is ready without waiting (to batch writes).
    pub(crate) fn try_next(&mut self) -> Option<Event> {
        if let Some(event) = self.take_pending() {
            return Some(event);
        }
        if !self.resumes.is_empty() {
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
    fn take(&mut self, entry: Entry) -> Option<Event> {
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

    /// Starts the open/close record (log line and metrics), when the stream
    /// really begins. A stream that `reads_input` (WebSocket, `Connect`)
    /// logs the frames it received as `msgs_in`.
    pub(crate) fn open(&mut self, rpc: Option<&'static str>, peer: Option<SocketAddr>, reads_input: bool) {
        metrics::connection_opened(self.transport);
        tracing::info!(transport = self.transport.label(), rpc, peer = %Peer(peer), "connection opened");
        let received = reads_input.then_some(0);
        self.record = Some(Record { rpc, peer, opened: Instant::now(), received, reason: Close::Client });
        let info =
            Arc::new(ConnInfo::new(self.transport.label(), rpc, peer, self.access.grants.user.clone()));
        self.session.set_info(Arc::clone(&info));
        self.info = Some(info);
        self.sync_topics();
    }

    /// Counts a frame received from the client (logged as `msgs_in`).
    pub(crate) fn received(&mut self) {
        if let Some(n) = self.record.as_mut().and_then(|r| r.received.as_mut()) {
            *n += 1;
        }
    }

    /// Why the stream ended, when its session has no reason of its own.
    pub(crate) fn ended(&mut self, reason: Close) {
        if let Some(r) = self.record.as_mut() {
            r.reason = reason;
        }
    }

    fn take_pending(&mut self) -> Option<Event> {
        while let Some(p) = self.pending.pop_front() {
            let event = match p {
                Pending::Message(m, skipped) => self.accept(m, skipped, false),
                Pending::Gap(g) => self.gap_now(g),
            };
            if event.is_some() {
                return event;
            }
        }
        None
    }

    fn hold(&mut self, step: Step) {
        match step {
            Step::Gap(g) => self.pending.push_back(Pending::Gap(g)),
            Step::Messages(ms) => {
                let latest = ms
                    .first()
                    .is_some_and(|m| self.policies.get(m.topic.as_str()).delivery == Delivery::Latest);
                if latest {
                    let kept = coalesce(ms);
                    self.pending.extend(kept.into_iter().map(|(m, n)| Pending::Message(m, n)));
                } else {
                    self.pending.extend(ms.into_iter().map(|m| Pending::Message(m, 0)));
                }
            }
        }
    }

    /// Hands `m` out if it is new for its topic, advancing the cursor.
    fn accept(&mut self, m: Arc<Message>, skipped: u64, live: bool) -> Option<Event> {
        if !self.cursor.advance(&m.topic, m.id) {
            return None;
        }
        self.sent += 1;
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
        let gap = match self.held_gaps.iter().position(|g| g.topic == m.topic) {
            Some(i) => Some(Box::new(self.held_gaps.swap_remove(i))),
            None => None,
        };
        Some(Event::Message { message: m, gap, skipped })
    }

    /// Reports `gap` now (moving the cursor past it) or holds it for the
    /// topic's next message.
    fn gap_now(&mut self, gap: Gap) -> Option<Event> {
        if self.gap_report == GapReport::OnNextMessage {
            self.held_gaps.push(gap);
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
    async fn replay_step(&mut self, resume: &mut Resume) -> Result<Option<Step>, Close> {
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

/// A peer address for logs (empty when unknown).
struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => p.fmt(f),
            None => Ok(()),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(r) = self.record.take() else {
            return;
        };
        let reason = self.session.closed().unwrap_or(r.reason);
        metrics::connection_closed(self.transport, reason.label());
        tracing::info!(
            transport = self.transport.label(),
            rpc = r.rpc,
            peer = %Peer(r.peer),
            duration_ms = r.opened.elapsed().as_millis() as u64,
            msgs_in = r.received,
            msgs_out = self.sent,
            reason = reason.label(),
            "connection closed"
        );
    }
}

#[cfg(test)]
mod tests;
