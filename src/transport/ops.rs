//! Client operations, the same whatever carries them: the one publish path
//! (HTTP, WebSocket, gRPC `Publish` and `Connect`) and the one handler of
//! the WebSocket ops (contract §4), which gRPC `Connect` frames share.
//!
//! An adapter decodes its frame into an [`Op`] (keeping its own `ref`),
//! calls [`handle`], and encodes the [`Reply`]s it gets back, in order.

use bytes::Bytes;
use smallvec::SmallVec;

use super::subscription::{SubscribeError, Subscription};
use super::{access, request};
use crate::core::replay::Gap;
use std::sync::Arc;

use crate::core::message::Ephemeral;
use crate::core::{Close, Message, MessageId, PublishOptions, Published, Topic};
use crate::error::{ApiError, Code};
use crate::metrics::{self, Transport};
use crate::state::AppState;

/// One client op.
#[derive(Debug)]
pub(crate) enum Op {
    /// Subscribe to `topic`, from `after` or from now.
    Subscribe {
        /// Topic.
        topic: Topic,
        /// Resume after this id.
        after: Option<MessageId>,
        /// Also the topic's presence events.
        presence: bool,
    },
    /// Leave `topic`.
    Unsubscribe {
        /// Topic.
        topic: Topic,
    },
    /// Publish `data` (JSON text, as sent) on `topic`.
    Publish {
        /// Topic.
        topic: Topic,
        /// The JSON text of `data`.
        data: Bytes,
        /// Keys and flags.
        options: PublishOp,
    },
    /// Who is present in `topic`.
    Presence {
        /// Topic.
        topic: Topic,
    },
    /// Liveness check.
    Ping,
    /// Replace the connection's token: new grants and expiry; topics no
    /// longer allowed are left (each answered `forbidden`).
    Refresh {
        /// The new token.
        token: String,
    },
}

/// A publish's keys and flags, as a wire carries them.
#[derive(Debug, Default)]
pub(crate) struct PublishOp {
    /// Idempotency key.
    pub(crate) idempotency_key: Option<String>,
    /// Coalescing key (`delivery = "latest"`).
    pub(crate) key: Option<String>,
    /// To current subscribers only (contract §11).
    pub(crate) ephemeral: bool,
}

/// What an op answers, in order.
#[derive(Debug)]
pub(crate) enum Reply {
    /// History was trimmed past a subscribe's position (before its ack).
    Gap(Gap),
    /// A subscribe was carried out.
    Subscribed {
        /// False when a gap was reported.
        recovered: bool,
    },
    /// A publish was accepted.
    Published(Published),
    /// An ephemeral publish was handed to every process.
    Broadcast,
    /// An unsubscribe or a refresh was carried out.
    Done,
    /// The answer to a ping.
    Pong,
    /// Who is present in a topic (the presence op).
    Presence {
        /// The topic.
        topic: Topic,
        /// Its users and connections.
        listing: crate::presence::Listing,
    },
    /// The op was refused; the connection goes on.
    Error(ApiError),
}

/// Replies of one op (at most two: a gap and an ack).
pub(crate) type Replies = SmallVec<[Reply; 2]>;

/// Carries out `op` for the stream `sub`. `Err` ends the connection: a
/// publish over the size limit, or the stream closed meanwhile.
pub(crate) async fn handle(
    state: &AppState,
    transport: Transport,
    sub: &mut Subscription,
    op: Op,
) -> Result<Replies, Close> {
    let mut out = Replies::new();
    match op {
        Op::Ping => out.push(Reply::Pong),
        Op::Refresh { token } => match access::authenticate(state, Some(&token))
            .and_then(|grants| sub.refresh(state, grants))
        {
            Ok(dropped) => {
                for topic in dropped {
                    let message = format!("the new token does not allow {}; unsubscribed", topic.as_str());
                    out.push(Reply::Error(ApiError::new(Code::Forbidden, message)));
                }
                out.push(Reply::Done);
            }
            Err(e) => out.push(Reply::Error(e)),
        },
        Op::Unsubscribe { topic } => {
            sub.leave(&topic);
            out.push(Reply::Done);
        }
        Op::Publish { topic, data, options } if options.ephemeral => {
            if let Err(e) = sub.access_mut().may_publish_ephemeral(state, &topic, true) {
                out.push(Reply::Error(e));
                return Ok(out);
            }
            // As presence names users: the token's `sub`, else (auth off)
            // the connection id, so receivers can tell senders apart.
            let user =
                sub.access().grants.user.clone().or_else(|| Some(Arc::from(sub.session().client_id())));
            let from = Ephemeral { origin: sub.id(), user };
            match publish_ephemeral(state, transport, &topic, data, from).await {
                Ok(()) => out.push(Reply::Broadcast),
                Err(e) if e.code == Code::TooLarge => return Err(Close::TooLarge),
                Err(e) => out.push(Reply::Error(e)),
            }
        }
        Op::Publish { topic, data, options } => {
            if let Err(e) = sub.access_mut().may_publish(state, &topic, true) {
                out.push(Reply::Error(e));
                return Ok(out);
            }
            let opts = PublishOptions {
                idempotency_key: options.idempotency_key.as_deref(),
                key: options.key.as_deref(),
            };
            match publish(state, transport, &topic, data, opts).await {
                Ok(p) => out.push(Reply::Published(p)),
                // Contract §4: a message over the limit closes the connection.
                Err(e) if e.code == Code::TooLarge => return Err(Close::TooLarge),
                Err(e) => out.push(Reply::Error(e)),
            }
        }
        Op::Presence { topic } => match presence(state, sub.access(), &topic).await {
            Ok(listing) => out.push(Reply::Presence { topic, listing }),
            Err(e) => out.push(Reply::Error(e)),
        },
        Op::Subscribe { topic, after, presence } => match sub.subscribe(topic.clone(), after).await {
            Ok(done) => {
                if presence {
                    sub.want_presence(&topic, true);
                }
                out.extend(done.gap.map(Reply::Gap));
                out.push(Reply::Subscribed { recovered: done.recovered });
            }
            Err(SubscribeError::Refused(e)) => out.push(Reply::Error(e)),
            Err(SubscribeError::Closed(reason)) => return Err(reason),
        },
    }
    Ok(out)
}

/// Who is present in `topic`, for a client with `access`: the one presence
/// path of HTTP, WebSocket and gRPC (subscribe grant needed; a topic
/// without presence is a `bad_request`).
pub(crate) async fn presence(
    state: &AppState,
    access: &access::Access,
    topic: &Topic,
) -> Result<crate::presence::Listing, ApiError> {
    access.may_subscribe(topic)?;
    Ok(state.presence.list(topic).await?)
}

/// Publishes `data` on `topic` after checking it (size, one JSON value, the
/// idempotency key): the one publish path of every transport. The caller
/// has checked the publisher's grants and rate ([`access::Access::may_publish`]).
pub(crate) async fn publish(
    state: &AppState,
    transport: Transport,
    topic: &Topic,
    data: Bytes,
    options: PublishOptions<'_>,
) -> Result<Published, ApiError> {
    if let Some(key) = options.idempotency_key {
        request::check_idempotency_key(key.as_bytes())?;
    }
    if let Some(key) = options.key {
        request::check_coalescing_key(key)?;
    }
    let data = request::check_data(data, state.config.limits.max_message_bytes)?;
    let published = state.bus.engine.publish_with(topic, data, options).await?;
    if !published.duplicate {
        metrics::published(transport);
    }
    Ok(published)
}

/// Delivers `data` on `topic` as an ephemeral message (contract §11) to the
/// current subscribers of every process, after the same checks as
/// [`publish`]; the caller checked grants and rate
/// ([`access::Access::may_publish_ephemeral`]).
pub(crate) async fn publish_ephemeral(
    state: &AppState,
    transport: Transport,
    topic: &Topic,
    data: Bytes,
    from: Ephemeral,
) -> Result<(), ApiError> {
    let data = request::check_data(data, state.config.limits.max_message_bytes)?;
    // Exactly the data's bytes: it may be a slice of a read buffer.
    let data = Bytes::copy_from_slice(&data);
    let message = Arc::new(Message::ephemeral(topic.clone(), data, from));
    state.bus.engine.broadcast(message).await?;
    metrics::published_ephemeral(transport);
    Ok(())
}
