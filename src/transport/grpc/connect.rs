//! `Connect`: the WebSocket protocol of contract §4 over one bidirectional
//! gRPC stream.
//!
//! The stream is polled by hyper's task for the HTTP/2 stream. Each turn of
//! its loop writes the driver's next events (a replay runs to its end
//! first), or handles one client frame through the op handler WebSocket
//! uses (run to its end, as on WebSocket: an in-flight publish is always
//! acknowledged, also when the stream is closed meanwhile), then yields the
//! frames that produced. Replays go page by page, so a long one
//! never sits in memory at once.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tonic::{Status, Streaming};

use super::arm_stall_kill;
use super::pb::{self, client_frame::Op as PbOp, server_frame::Frame};
use super::wire::EncodedMessage;
use crate::core::notice::{Notice, NoticeEntry};
use crate::core::replay::Gap;
use crate::core::Close;
use crate::error::{self, ApiError, Code};
use crate::metrics::Transport;
use crate::state::{AppState, Peer};
use crate::transport::access::Access;
use crate::transport::ops::{self, Op, PublishOp, Reply};
use crate::transport::request;
use crate::transport::subscription::{Event, GapReport, Subscription};

/// Events turned into frames per turn of the loop.
const BATCH: usize = 64;

/// The frames of one Connect call.
pub(super) fn serve(
    state: AppState,
    peer: Option<Peer>,
    access: Access,
    mut inbound: Streaming<pb::ClientFrame>,
) -> impl Stream<Item = Result<pb::ServerFrame, Status>> + Send {
    async_stream::stream! {
        let mut sub = Subscription::new(&state, Transport::Grpc, GapReport::Event, access);
        if let Err(e) = sub.admit(&state) {
            yield Err(Status::from(e));
            return;
        }
        let _alive = arm_stall_kill(&state, peer.as_ref(), sub.session());
        sub.open(Some("connect"), peer.map(|p| p.0), true);
        let session = Arc::clone(sub.session());
        let stop = session.wait_closed();
        tokio::pin!(stop);
        let mut out: Vec<pb::ServerFrame> = Vec::new();
        let reason = loop {
            let closed = if sub.replaying() {
                // Boxed: replays are rare; their state would otherwise be
                // reserved in every stream.
                match Box::pin(sub.next_replayed()).await {
                    Some(first) => events(&mut sub, first, &mut out),
                    None => None,
                }
            } else {
                tokio::select! {
                    biased;
                    r = &mut stop => break r,
                    event = sub.next_live() => events(&mut sub, event, &mut out),
                    frame = inbound.message() => {
                        let frame = match frame {
                            Ok(Some(f)) => f,
                            Ok(None) => break Close::Client,
                            // Over the decoder's size limit.
                            Err(s) if s.code() == tonic::Code::OutOfRange => break Close::TooLarge,
                            Err(_) => break Close::Client,
                        };
                        sub.received();
                        // Not raced against the close flag: a publish the
                        // engine may already have stored is finished and its
                        // ack yielded before the stream ends (contract §10);
                        // a subscribe's replay watches the flag itself.
                        Box::pin(handle(&state, &mut sub, frame, &mut out)).await.err()
                    }
                }
            };
            for f in out.drain(..) {
                yield Ok(f);
            }
            if let Some(reason) = closed {
                break reason;
            }
        };
        sub.ended(reason);
        drop(sub);
        if let Some(status) = error::stream_end(reason, &state.pacer) {
            yield Err(status);
        }
    }
}

fn frame(f: Frame) -> pb::ServerFrame {
    pb::ServerFrame { frame: Some(f) }
}

/// Frames for `first` and whatever else is ready; the close reason when the
/// stream must end.
fn events(sub: &mut Subscription, first: Event, out: &mut Vec<pb::ServerFrame>) -> Option<Close> {
    let mut next = Some(first);
    let mut n = 0;
    while let Some(event) = next.take() {
        match event {
            Event::Closed(reason) => return Some(reason),
            Event::Gap(gap) => out.push(gap_frame(&gap)),
            Event::Message { message, skipped, .. } => {
                let m = EncodedMessage::with_cursor(&message, sub.cursor()).with_skipped(skipped);
                out.push(frame(Frame::Message(m)));
            }
            Event::Ephemeral(message) => out.push(frame(Frame::Message(EncodedMessage::ephemeral(&message)))),
            Event::Notice(notice) => out.push(frame(Frame::PresenceEvent(presence_event(&notice)))),
        }
        n += 1;
        if n < BATCH {
            next = sub.try_next();
        }
    }
    None
}

fn gap_frame(gap: &Gap) -> pb::ServerFrame {
    frame(Frame::Gap(pb::Gap {
        topic: gap.topic.as_str().to_owned(),
        after: gap.after.to_string(),
        oldest: gap.oldest.to_string(),
        reason: if gap.dropped { "dropped".into() } else { String::new() },
    }))
}

fn error_frame(r: String, e: &ApiError) -> pb::ServerFrame {
    frame(Frame::Error(pb::Error {
        r#ref: r,
        code: e.code.as_str().to_owned(),
        message: e.message.clone(),
        status: e.code.grpc() as i32,
    }))
}

/// The op a client frame asks for, or why it cannot be carried out.
fn op(f: Option<PbOp>) -> Result<Op, ApiError> {
    Ok(match f {
        None => return Err(ApiError::new(Code::BadRequest, "unknown or missing op")),
        Some(PbOp::Ping(_)) => Op::Ping,
        Some(PbOp::Refresh(op)) => Op::Refresh { token: op.token },
        Some(PbOp::Unsubscribe(op)) => Op::Unsubscribe { topic: request::topic(&op.topic)? },
        Some(PbOp::Publish(op)) => Op::Publish {
            topic: request::topic(&op.topic)?,
            data: Bytes::from(op.data),
            options: PublishOp {
                idempotency_key: Some(op.idempotency_key).filter(|k| !k.is_empty()),
                key: Some(op.key).filter(|k| !k.is_empty()),
                ephemeral: op.ephemeral,
            },
        },
        Some(PbOp::Subscribe(op)) => Op::Subscribe {
            topic: request::topic(&op.topic)?,
            after: op.after.as_deref().map(request::message_id).transpose()?,
            presence: op.presence,
        },
        Some(PbOp::Presence(op)) => Op::Presence { topic: request::topic(&op.topic)? },
    })
}

/// One client frame: decode, carry out through the shared op handler,
/// answer.
async fn handle(
    state: &AppState,
    sub: &mut Subscription,
    f: pb::ClientFrame,
    out: &mut Vec<pb::ServerFrame>,
) -> Result<(), Close> {
    let r = f.r#ref;
    let op = match op(f.op) {
        Ok(op) => op,
        Err(e) => {
            out.push(error_frame(r, &e));
            return Ok(());
        }
    };
    for reply in ops::handle(state, Transport::Grpc, sub, op).await? {
        out.push(match reply {
            Reply::Gap(gap) => gap_frame(&gap),
            Reply::Subscribed { recovered } => {
                frame(Frame::Ack(pb::Ack { r#ref: r.clone(), recovered, ..Default::default() }))
            }
            Reply::Published(p) => frame(Frame::Ack(pb::Ack {
                r#ref: r.clone(),
                id: p.id.to_string(),
                ts: p.ts,
                ..Default::default()
            })),
            Reply::Done | Reply::Broadcast => {
                frame(Frame::Ack(pb::Ack { r#ref: r.clone(), ..Default::default() }))
            }
            Reply::Pong => frame(Frame::Pong(pb::Pong { r#ref: r.clone() })),
            Reply::Error(e) => error_frame(r.clone(), &e),
            Reply::Presence { topic, listing } => frame(Frame::Ack(pb::Ack {
                r#ref: r.clone(),
                presence: Some(presence_reply(&topic, &listing)),
                ..Default::default()
            })),
        });
    }
    Ok(())
}

/// A presence answer as protobuf.
pub(super) fn presence_reply(
    topic: &crate::core::Topic,
    listing: &crate::presence::Listing,
) -> pb::PresenceReply {
    pb::PresenceReply {
        topic: topic.as_str().to_owned(),
        users: listing.users,
        clients: listing
            .clients
            .iter()
            .map(|e| pb::PresenceEntry {
                user: e.user.to_string(),
                client: e.client.to_string(),
                info: e.info.as_deref().map(|i| i.as_bytes().to_vec()).unwrap_or_default(),
                since: e.since,
            })
            .collect(),
    }
}

/// A presence event as protobuf: kind `join`, `leave`, `presence_diff`, or
/// `count` (`presence = "count"` topics: only `users`).
fn presence_event(n: &Notice) -> pb::PresenceEvent {
    let entries = |list: &[NoticeEntry]| {
        list.iter()
            .map(|e| pb::PresenceEntry {
                user: e.user.to_string(),
                client: e.client.to_string(),
                info: e.info.as_deref().map(|i| i.as_bytes().to_vec()).unwrap_or_default(),
                since: 0,
            })
            .collect()
    };
    pb::PresenceEvent {
        topic: n.topic.as_str().to_owned(),
        kind: if n.event == "presence_count" { "count".into() } else { n.event.to_owned() },
        joins: entries(&n.joins),
        leaves: entries(&n.leaves),
        users: n.users,
    }
}
