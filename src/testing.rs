//! Helpers for unit tests: application state on the embedded engine,
//! built the way `run` builds it.

use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::{MessageId, Topic};
use crate::shutdown::Shutdown;
use crate::state::AppState;

/// State for `config` (embedded engine).
pub(crate) fn state(config: Config) -> AppState {
    let shutdown = Shutdown::new(CancellationToken::new(), config.shutdown.grace);
    crate::state(Arc::new(config), shutdown).expect("the embedded engine always builds")
}

/// A topic by name.
pub(crate) fn topic(name: &str) -> Topic {
    Topic::new(name).expect("valid topic")
}

/// Publishes `data` on `topic`; returns the id.
pub(crate) async fn publish(state: &AppState, topic: &str, data: &str) -> MessageId {
    let topic = self::topic(topic);
    state.bus.engine.publish(&topic, Bytes::from(data.to_owned()), None).await.expect("publish").id
}

/// Publishes `0`, `1`, … `n - 1` on `topic`; returns the ids.
pub(crate) async fn publish_numbers(state: &AppState, topic: &str, n: usize) -> Vec<MessageId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(publish(state, topic, &i.to_string()).await);
    }
    ids
}
