//! `rtgate.v1.Gateway`: Publish, History and Subscribe (Connect is in
//! `connect.rs`).

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::pb::{self, gateway_server};
use super::wire::EncodedMessage;
use super::{arm_stall_kill, peer};
use crate::core::message::Ephemeral;
use crate::core::PublishOptions;
use crate::error::{self, ApiError};
use crate::metrics::Transport;
use crate::state::AppState;
use crate::transport::request::{self, Topics};
use crate::transport::subscription::{Event, GapReport, Subscription};
use crate::transport::{access, ops};

/// A boxed response stream.
pub(super) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The service implementation.
pub(crate) struct Gateway {
    state: AppState,
}

impl Gateway {
    pub(crate) fn new(state: AppState) -> Self {
        Gateway { state }
    }
}

/// The reply to a publish.
fn publish_reply(topic: &str, p: &crate::core::Published) -> pb::PublishReply {
    pb::PublishReply { id: p.id.to_string(), ts: p.ts, topic: topic.to_owned() }
}

#[tonic::async_trait]
impl gateway_server::Gateway for Gateway {
    type ConnectStream = BoxStream<pb::ServerFrame>;
    type SubscribeStream = BoxStream<EncodedMessage>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ClientFrame>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        self.state.check_open()?;
        let peer = peer(&request);
        let mut access = access::grpc(&self.state, &request)?;
        access.open_stream(&self.state)?;
        let stream = super::connect::serve(self.state.clone(), peer, access, request.into_inner());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.state.check_open()?;
        let peer = peer(&request);
        let access = access::grpc(&self.state, &request)?;
        let req = request.into_inner();
        let state = &self.state;
        let max = state.config.limits.max_topics_per_connection;
        let mut topics = Topics::from_names(req.topics.iter().map(String::as_str), None, 1, max)?;
        if !req.cursor.is_empty() {
            topics.cursor = Some(request::cursor(&req.cursor)?);
        }
        let mut sub = Subscription::new(state, Transport::Grpc, GapReport::OnNextMessage, access);
        let alive = arm_stall_kill(state, peer.as_ref(), sub.session());
        sub.admit(state)?;
        sub.start(topics.topics, topics.cursor.as_ref()).await?;
        let stream = messages(peer.map(|p| p.0), sub, alive, state.pacer);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        let mut access = access::grpc(&self.state, &request)?;
        let req = request.into_inner();
        let topic = request::topic(&req.topic)?;
        if req.ephemeral {
            access.may_publish_ephemeral(&self.state, &topic, false)?;
            let from = Ephemeral { origin: 0, user: access.grants.user.clone() };
            ops::publish_ephemeral(&self.state, Transport::Grpc, &topic, Bytes::from(req.data), from).await?;
            return Ok(Response::new(pb::PublishReply {
                topic: topic.as_str().to_owned(),
                ..Default::default()
            }));
        }
        access.may_publish(&self.state, &topic, false)?;
        let options = PublishOptions {
            idempotency_key: Some(req.idempotency_key.as_str()).filter(|k| !k.is_empty()),
            key: Some(req.key.as_str()).filter(|k| !k.is_empty()),
        };
        let published =
            ops::publish(&self.state, Transport::Grpc, &topic, Bytes::from(req.data), options).await?;
        Ok(Response::new(publish_reply(topic.as_str(), &published)))
    }

    async fn presence(
        &self,
        request: Request<pb::PresenceRequest>,
    ) -> Result<Response<pb::PresenceReply>, Status> {
        let access = access::grpc(&self.state, &request)?;
        let topic = request::topic(&request.get_ref().topic)?;
        let listing = ops::presence(&self.state, &access, &topic).await?;
        Ok(Response::new(super::connect::presence_reply(&topic, &listing)))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryReply>, Status> {
        let access = access::grpc(&self.state, &request)?;
        let req = request.into_inner();
        let topic = request::topic(&req.topic)?;
        access.may_subscribe(&topic)?;
        let after = if req.after.is_empty() { None } else { Some(request::message_id(&req.after)?) };
        let limit = match req.limit as usize {
            0 => request::HISTORY_DEFAULT,
            n => n.min(request::HISTORY_MAX),
        };
        let history = self.state.bus.engine.history(&topic, after, limit).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::HistoryReply {
            messages: history.messages.iter().map(|m| EncodedMessage::plain(m)).collect(),
            truncated: history.truncated,
        }))
    }
}

/// The message stream of one `Subscribe` call: the driver's messages (a
/// gap rides on its topic's next message); ends with a status when the
/// server closes it.
fn messages(
    peer: Option<std::net::SocketAddr>,
    mut sub: Subscription,
    alive: std::sync::Arc<()>,
    pacer: crate::pacing::Pacer,
) -> impl Stream<Item = Result<EncodedMessage, Status>> + Send {
    async_stream::stream! {
        let _alive = alive;
        sub.open(Some("subscribe"), peer, false);
        let reason = loop {
            match sub.next().await {
                Event::Closed(reason) => break reason,
                Event::Message { message, gap, skipped } => {
                    let encoded = EncodedMessage::with_cursor(&message, sub.cursor()).with_skipped(skipped);
                    yield Ok(match gap {
                        Some(gap) => encoded.with_gap(&gap),
                        None => encoded,
                    });
                }
                Event::Ephemeral(message) => yield Ok(EncodedMessage::ephemeral(&message)),
                // Not produced with `GapReport::OnNextMessage`; presence
                // events are carried by `Connect` only.
                Event::Gap(_) | Event::Notice(_) => {}
            }
        };
        sub.ended(reason);
        drop(sub);
        if let Some(status) = error::stream_end(reason, &pacer) {
            yield Err(status);
        }
    }
}
