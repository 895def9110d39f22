//! `rtgate.v1.Gateway`: Publish, History and Subscribe (Connect is in
//! `connect.rs`).

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::pb::{self, gateway_server};
use super::wire::EncodedMessage;
use super::{arm_stall_kill, end_status, peer};
use crate::core::replay::{Gap, Resume, Step};
use crate::core::{Close, Cursor, Message, Subscriber};
use crate::error::ApiError;
use crate::metrics::{self, Transport};
use crate::server::AppState;
use crate::transport;

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

/// Publishes `data` on `topic` after checking it; the one path for the
/// `Publish` rpc and Connect's publish op.
pub(super) async fn publish(
    state: &AppState,
    topic: &str,
    data: Vec<u8>,
    key: &str,
) -> Result<pb::PublishReply, ApiError> {
    let topic = transport::topic(topic)?;
    let data = transport::check_data(Bytes::from(data), state.config.limits.max_message_bytes)?;
    let key = if key.is_empty() {
        None
    } else {
        transport::check_idempotency_key(key.as_bytes())?;
        Some(key)
    };
    let published = state.bus.engine.publish(&topic, data, key).await?;
    if !published.duplicate {
        metrics::published(Transport::Grpc);
    }
    Ok(pb::PublishReply { id: published.id.to_string(), ts: published.ts, topic: topic.as_str().to_owned() })
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
        let stream = super::connect::serve(self.state.clone(), peer, request.into_inner());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.state.check_open()?;
        let peer = peer(&request);
        let req = request.into_inner();
        let state = &self.state;
        let mut topics = Vec::new();
        for name in &req.topics {
            transport::push_topic(&mut topics, name)?;
        }
        transport::check_topic_count(topics.len(), state.config.limits.max_topics_per_connection)?;
        let cursor = if req.cursor.is_empty() { None } else { Some(transport::cursor(&req.cursor)?) };
        let mut sub = state.bus.subscriber();
        let alive = arm_stall_kill(state, peer.as_ref(), sub.session());
        let (cursor, resumes) =
            transport::start_subscription(&mut sub, topics, cursor.as_ref(), state.bus.replay_page).await?;
        let stream = messages(state.clone(), peer.map(|p| p.0), sub, cursor, resumes, alive);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        let req = request.into_inner();
        Ok(Response::new(publish(&self.state, &req.topic, req.data, &req.idempotency_key).await?))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryReply>, Status> {
        let req = request.into_inner();
        let topic = transport::topic(&req.topic)?;
        let after = if req.after.is_empty() { None } else { Some(transport::message_id(&req.after)?) };
        let limit = match req.limit as usize {
            0 => transport::HISTORY_DEFAULT,
            n => n.min(transport::HISTORY_MAX),
        };
        let history = self.state.bus.engine.history(&topic, after, limit).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::HistoryReply {
            messages: history.messages.iter().map(|m| EncodedMessage::plain(m)).collect(),
            truncated: history.truncated,
        }))
    }
}

/// The message stream of one `Subscribe` call: replay each resumed topic,
/// then live messages; ends with a status when the server closes it.
fn messages(
    state: AppState,
    peer: Option<std::net::SocketAddr>,
    mut sub: Subscriber,
    mut cursor: Cursor,
    resumes: Vec<Resume>,
    alive: Arc<()>,
) -> impl Stream<Item = Result<EncodedMessage, Status>> + Send {
    async_stream::stream! {
        let _alive = alive;
        let _registered = state.shutdown.sessions().register(sub.session());
        let session = Arc::clone(sub.session());
        let mut record = transport::StreamRecord::open(Transport::Grpc, Some("subscribe"), peer, Arc::clone(&session));
        // Gaps not yet reported: each goes out on the topic's next message,
        // and the cursor does not move past a gap until then.
        let mut gaps: Vec<Gap> = Vec::new();
        let mut reason = Close::Client;
        'replay: for mut resume in resumes {
            loop {
                match transport::replay_step(&session, &mut resume, &mut sub).await {
                    Err(r) => {
                        reason = r;
                        break 'replay;
                    }
                    Ok(None) => break,
                    Ok(Some(Step::Gap(gap))) => gaps.push(gap),
                    Ok(Some(Step::Messages(ms))) => {
                        let mut written = 0;
                        for m in &ms {
                            if let Some(e) = encode(&mut cursor, &mut gaps, m) {
                                written += 1;
                                yield Ok(e);
                            }
                        }
                        record.sent += written;
                        metrics::delivered(Transport::Grpc, written);
                    }
                }
            }
        }
        if reason == Close::Client {
            let stop = session.wait_closed();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    biased;
                    r = &mut stop => { reason = r; break; }
                    m = sub.outbox.recv() => {
                        let Some(m) = m else { break };
                        if let Some(e) = encode(&mut cursor, &mut gaps, &m) {
                            record.sent += 1;
                            metrics::delivered(Transport::Grpc, 1);
                            metrics::delivery_latency(Transport::Grpc, Instant::now().saturating_duration_since(m.seen));
                            yield Ok(e);
                        }
                    }
                }
            }
        }
        record.reason = reason;
        if let Some(status) = end_status(reason) {
            yield Err(status);
        }
    }
}

/// The encoding of `m` for this stream (advancing the cursor, attaching a
/// pending gap of its topic); `None` when not subscribed or already sent.
fn encode(cursor: &mut Cursor, gaps: &mut Vec<Gap>, m: &Message) -> Option<EncodedMessage> {
    let pos = cursor.get(&m.topic)?;
    if m.id <= pos {
        return None;
    }
    cursor.set(&m.topic, m.id);
    let encoded = EncodedMessage::with_cursor(m, cursor);
    match gaps.iter().position(|g| g.topic == m.topic) {
        Some(i) => Some(encoded.with_gap(&gaps.swap_remove(i))),
        None => Some(encoded),
    }
}
