//! [`Notice`]: a presence event (`join`, `leave`, `presence_diff`, a
//! count update) for the subscribers of a topic that asked for them,
//! encoded once and shared by every receiver, like a message.

use std::sync::Arc;

use bytes::Bytes;

use super::message::Topic;

/// One connection named by a presence event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeEntry {
    /// The user (JWT `sub`, or the connection id when auth is off).
    pub user: Arc<str>,
    /// The connection id (16 hex digits).
    pub client: Arc<str>,
    /// The token's `info` claim as JSON text, when it had one.
    pub info: Option<Arc<str>>,
}

/// A presence event, already encoded.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The topic it is about.
    pub topic: Topic,
    /// The event's name: `join`, `leave`, `presence_diff` or
    /// `presence_count` (the WebSocket `op`, the SSE `event:`).
    pub event: &'static str,
    /// The WebSocket frame: a JSON object with `op` and `topic` first
    /// (contract §11). SSE sends it as the event's `data:`.
    pub json: Bytes,
    /// The users who joined (the first connection of each), for wires that
    /// encode their own form (gRPC `PresenceEvent`).
    pub joins: Vec<NoticeEntry>,
    /// The users who left (the last connection of each).
    pub leaves: Vec<NoticeEntry>,
    /// Distinct users present after the change.
    pub users: u64,
}
