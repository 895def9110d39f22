//! `Connect`: the WebSocket protocol of contract §4 over one bidirectional
//! gRPC stream.
//!
//! The stream is polled by hyper's task for the HTTP/2 stream. Each turn of
//! its loop finishes a replay page, or takes one outbox message, or handles
//! one client frame (raced against the session's close flag, as on
//! WebSocket), then yields the frames that produced. Replays go page by
//! page, so a long one never sits in memory at once.

use std::sync::Arc;

use futures_util::Stream;
use tokio::time::Instant;
use tonic::{Status, Streaming};

use super::pb::{self, client_frame::Op, server_frame::Frame};
use super::service::publish;
use super::wire::EncodedMessage;
use super::{arm_stall_kill, end_status};
use crate::core::replay::{Gap, Resume, Step};
use crate::core::{Close, Cursor, Message, Subscriber};
use crate::error::{ApiError, Code};
use crate::metrics::{self, Transport};
use crate::server::{AppState, Peer};
use crate::transport::{self, guard, topic};

/// The frames of one Connect call.
pub(super) fn serve(
    state: AppState,
    peer: Option<Peer>,
    mut inbound: Streaming<pb::ClientFrame>,
) -> impl Stream<Item = Result<pb::ServerFrame, Status>> + Send {
    async_stream::stream! {
        let sub = state.bus.subscriber();
        let _alive = arm_stall_kill(&state, peer.as_ref(), sub.session());
        let _registered = state.shutdown.sessions().register(sub.session());
        let session = Arc::clone(sub.session());
        let mut record =
            transport::StreamRecord::open(Transport::Grpc, Some("connect"), peer.map(|p| p.0), Arc::clone(&session));
        let mut conn = Conn { state, sub, cursor: Cursor::new(), out: Vec::new(), replay: None, sent: 0 };
        let stop = session.wait_closed();
        tokio::pin!(stop);
        let reason = 'conn: loop {
            if let Some(mut resume) = conn.replay.take() {
                loop {
                    let step = transport::replay_step(&session, &mut resume, &mut conn.sub).await;
                    match step {
                        Ok(Some(step)) => conn.step_frames(step),
                        Ok(None) => break,
                        Err(r) => break 'conn r,
                    }
                    for f in conn.out.drain(..) {
                        yield Ok(f);
                    }
                }
            }
            tokio::select! {
                biased;
                r = &mut stop => break 'conn r,
                Some(m) = conn.sub.outbox.recv() => {
                    if let Some(f) = conn.message(&m) {
                        metrics::delivered(Transport::Grpc, 1);
                        metrics::delivery_latency(Transport::Grpc, Instant::now().saturating_duration_since(m.seen));
                        yield Ok(f);
                    }
                }
                frame = inbound.message() => {
                    let frame = match frame {
                        Ok(Some(f)) => f,
                        Ok(None) => break 'conn Close::Client,
                        // Over the decoder's size limit.
                        Err(s) if s.code() == tonic::Code::OutOfRange => break 'conn Close::TooLarge,
                        Err(_) => break 'conn Close::Client,
                    };
                    *record.received.get_or_insert(0) += 1;
                    let handled = guard(stop.as_mut(), Box::pin(conn.handle(frame))).await;
                    for f in conn.out.drain(..) {
                        yield Ok(f);
                    }
                    if let Err(r) = handled {
                        break 'conn r;
                    }
                }
            }
        };
        record.reason = reason;
        record.sent = conn.sent;
        drop(conn);
        if let Some(status) = end_status(reason) {
            yield Err(status);
        }
    }
}

/// One Connect call's state.
struct Conn {
    state: AppState,
    sub: Subscriber,
    cursor: Cursor,
    /// Frames to send, in order.
    out: Vec<pb::ServerFrame>,
    /// A subscribe's replay still in progress.
    replay: Option<Resume>,
    /// Messages sent.
    sent: u64,
}

fn frame(f: Frame) -> pb::ServerFrame {
    pb::ServerFrame { frame: Some(f) }
}

impl Conn {
    /// The frame for `m`, advancing the cursor; `None` when not subscribed
    /// or already delivered.
    fn message(&mut self, m: &Message) -> Option<pb::ServerFrame> {
        let pos = self.cursor.get(&m.topic)?;
        if m.id <= pos {
            return None;
        }
        self.cursor.set(&m.topic, m.id);
        self.sent += 1;
        Some(frame(Frame::Message(EncodedMessage::with_cursor(m, &self.cursor))))
    }

    fn error(&mut self, r: String, e: &ApiError) {
        self.out.push(frame(Frame::Error(pb::Error {
            r#ref: r,
            code: e.code.as_str().to_owned(),
            message: e.message.clone(),
            status: e.code.grpc() as i32,
        })));
    }

    fn ack(&mut self, ack: pb::Ack) {
        self.out.push(frame(Frame::Ack(ack)));
    }

    fn gap(&mut self, gap: &Gap) {
        if let Some(pos) = self.cursor.get(&gap.topic) {
            self.cursor.set(&gap.topic, pos.max(gap.resume_from));
        }
        self.out.push(frame(Frame::Gap(pb::Gap {
            topic: gap.topic.as_str().to_owned(),
            after: gap.after.to_string(),
            oldest: gap.oldest.to_string(),
        })));
    }

    /// Frames for one replay step.
    fn step_frames(&mut self, step: Step) {
        match step {
            Step::Gap(gap) => self.gap(&gap),
            Step::Messages(ms) => {
                let mut written = 0;
                for m in &ms {
                    if let Some(f) = self.message(m) {
                        self.out.push(f);
                        written += 1;
                    }
                }
                metrics::delivered(Transport::Grpc, written);
            }
        }
    }

    async fn handle(&mut self, f: pb::ClientFrame) -> Result<(), Close> {
        let r = f.r#ref;
        match f.op {
            None => {
                self.error(r, &ApiError::new(Code::BadRequest, "unknown or missing op"));
                Ok(())
            }
            Some(Op::Ping(_)) => {
                self.out.push(frame(Frame::Pong(pb::Pong { r#ref: r })));
                Ok(())
            }
            Some(Op::Refresh(_)) => {
                self.ack(pb::Ack { r#ref: r, ..Default::default() });
                Ok(())
            }
            Some(Op::Unsubscribe(op)) => {
                match topic(&op.topic) {
                    Ok(t) => {
                        self.sub.leave(&t);
                        self.cursor.remove(&t);
                        self.ack(pb::Ack { r#ref: r, ..Default::default() });
                    }
                    Err(e) => self.error(r, &e),
                }
                Ok(())
            }
            Some(Op::Publish(op)) => {
                match publish(&self.state, &op.topic, op.data, &op.idempotency_key).await {
                    Ok(p) => self.ack(pb::Ack { r#ref: r, id: p.id, ts: p.ts, recovered: false }),
                    // As on WebSocket (close 1009): the stream ends.
                    Err(e) if e.code == Code::TooLarge => return Err(Close::TooLarge),
                    Err(e) => self.error(r, &e),
                }
                Ok(())
            }
            Some(Op::Subscribe(op)) => self.subscribe(op, r).await,
        }
    }

    async fn subscribe(&mut self, op: pb::SubscribeOp, r: String) -> Result<(), Close> {
        let topic = match topic(&op.topic) {
            Ok(t) => t,
            Err(e) => {
                self.error(r, &e);
                return Ok(());
            }
        };
        let after = match op.after.as_deref().map(transport::message_id) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                self.error(r, &e);
                return Ok(());
            }
        };
        if self.cursor.get(&topic).is_some() {
            self.error(r, &ApiError::new(Code::BadRequest, "already subscribed"));
            return Ok(());
        }
        if self.cursor.len() >= self.state.config.limits.max_topics_per_connection {
            self.error(
                r,
                &ApiError::new(Code::BadRequest, "too many topics (limits.max_topics_per_connection)"),
            );
            return Ok(());
        }
        self.cursor.set(&topic, after.unwrap_or_default());
        if !self.cursor.fits() {
            self.cursor.remove(&topic);
            self.error(r, &ApiError::new(Code::BadRequest, "too many topics for one cursor"));
            return Ok(());
        }
        let Some(after) = after else {
            match Resume::from_now(&mut self.sub, &topic).await {
                Ok(pos) => {
                    self.cursor.set(&topic, pos);
                    self.ack(pb::Ack { r#ref: r, recovered: true, ..Default::default() });
                }
                Err(e) => {
                    self.cursor.remove(&topic);
                    self.error(r, &e.into());
                }
            }
            return Ok(());
        };
        let mut resume = Resume::after(topic.clone(), after, self.state.bus.replay_page);
        let (gap, first) =
            transport::first_steps(&Arc::clone(self.sub.session()), &mut resume, &mut self.sub).await;
        if let Some(gap) = gap {
            self.step_frames(gap);
        }
        let first = match first {
            Ok(first) => first,
            Err(Close::Unavailable) => {
                self.sub.leave(&topic);
                self.cursor.remove(&topic);
                self.error(r, &ApiError::new(Code::Unavailable, "engine unavailable"));
                return Ok(());
            }
            Err(closed) => return Err(closed),
        };
        self.ack(pb::Ack { r#ref: r, recovered: resume.recovered(), ..Default::default() });
        if let Some(step) = first {
            self.step_frames(step);
            self.replay = Some(resume);
        }
        Ok(())
    }
}
