//! [`Notice`]: a presence event (`join`, `leave`, `presence_diff`, a
//! count update) for the subscribers of a topic that asked for them,
//! encoded once and shared by every receiver, like a message.

use bytes::Bytes;

use super::message::Topic;

/// A presence event, already encoded.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The topic it is about.
    pub topic: Topic,
    /// The event's name: `join`, `leave` or `presence_diff` (the WebSocket
    /// `op`, the SSE `event:`).
    pub event: &'static str,
    /// The WebSocket frame: a JSON object with `op` and `topic` first
    /// (contract §11). SSE sends it as the event's `data:`.
    pub json: Bytes,
}
