//! The realtime core: everything between an engine and the transports.
//!
//! # Data flow
//!
//! ```text
//! publish (any transport) ──► Engine::publish ──append──► log
//!                                   │ notify (id order per topic)
//!                                   ▼
//!                         Feed = Hub::fan_out
//!                                   │ try_send (never waits)
//!                    ┌──────────────┼──────────────┐
//!                    ▼              ▼              ▼
//!               outbox (bounded)  outbox         outbox      one per connection
//!                    │
//!                    ▼
//!            transport task: dedupe by cursor position, encode (cached per
//!            wire format), write to its socket
//! ```
//!
//! A resuming subscriber first replays history ([`replay`]) and only then
//! joins the live flow; the hand-over is described there.

pub mod close;
pub mod cursor;
pub mod engine;
pub mod expiry;
pub mod hub;
pub mod mailbox;
pub mod message;
pub mod notice;
pub mod outbox;
pub mod pattern;
pub mod policy;
pub mod rates;
pub mod replay;
pub mod session;
pub mod subscriber;

use std::sync::Arc;

pub use close::Close;
pub use cursor::Cursor;
pub use engine::{Engine, EngineError, Feed, History, PublishOptions, Published};
pub use hub::Hub;
pub use message::{Message, MessageId, Topic};
pub use session::Session;
pub use subscriber::Subscriber;

/// The bus as transports see it: the engine plus the local hub.
#[derive(Clone)]
pub struct Bus {
    /// The message store.
    pub engine: Arc<dyn Engine>,
    /// Local fan-out.
    pub hub: Hub,
    /// Outbox capacity for new subscribers.
    pub outbox_capacity: usize,
    /// Messages per history read during replay.
    pub replay_page: usize,
}

impl Bus {
    /// A subscriber with this bus's outbox capacity.
    pub fn subscriber(&self) -> Subscriber {
        Subscriber::new(self.hub.clone(), Arc::clone(&self.engine), self.outbox_capacity)
    }
}
