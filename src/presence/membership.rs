//! [`Membership`]: the presence entries of one stream, held by its
//! subscription driver. Entering a presence topic registers the stream's
//! connection; leaving it (unsubscribe, a refresh that drops the topic,
//! the end of the stream) ends the registration, which keeps the entry for
//! `presence.grace`.

use std::sync::Arc;

use smallvec::SmallVec;

use super::Presence;
use crate::core::Topic;

/// One stream's presence registrations (16 bytes until the first).
pub(crate) struct Membership {
    presence: Arc<Presence>,
    joined: Option<Box<Joined>>,
}

struct Joined {
    client: u64,
    topics: SmallVec<[Topic; 2]>,
    /// Topics whose presence frames the stream asked for.
    watched: SmallVec<[Topic; 1]>,
}

impl Membership {
    /// No registration yet.
    pub(crate) fn new(presence: &Arc<Presence>) -> Self {
        Membership { presence: Arc::clone(presence), joined: None }
    }

    /// Registers connection `client` in `topic` when the topic has presence
    /// (once per topic).
    pub(crate) fn enter(
        &mut self,
        topic: &Topic,
        client: u64,
        user: Option<&Arc<str>>,
        info: Option<&Arc<str>>,
    ) {
        if self.joined.as_ref().is_some_and(|j| j.topics.contains(topic)) {
            return;
        }
        if self.presence.enter(topic, client, user.cloned(), info.cloned()) {
            self.joined(client).topics.push(topic.clone());
        }
    }

    fn joined(&mut self, client: u64) -> &mut Joined {
        self.joined.get_or_insert_with(|| {
            Box::new(Joined { client, topics: SmallVec::new(), watched: SmallVec::new() })
        })
    }

    /// Asks for (or stops) `topic`'s presence frames for connection
    /// `client`: only streams that asked get them queued.
    pub(crate) fn watch(&mut self, topic: &Topic, client: u64, on: bool) {
        let watchers = Arc::clone(self.presence.watchers());
        let j = self.joined(client);
        let had = j.watched.iter().position(|t| t == topic);
        match (had, on) {
            (None, true) => {
                j.watched.push(topic.clone());
                watchers.set(topic, client, true);
            }
            (Some(i), false) => {
                j.watched.swap_remove(i);
                watchers.set(topic, client, false);
            }
            _ => {}
        }
    }

    /// Ends the registration in `topic`, if any.
    pub(crate) fn exit(&mut self, topic: &Topic) {
        let Some(j) = self.joined.as_mut() else { return };
        if let Some(i) = j.topics.iter().position(|t| t == topic) {
            j.topics.swap_remove(i);
            self.presence.exit(topic, j.client);
        }
    }

    /// Ends every registration.
    pub(crate) fn exit_all(&mut self) {
        if let Some(j) = self.joined.take() {
            for topic in &j.topics {
                self.presence.exit(topic, j.client);
            }
            for topic in &j.watched {
                self.presence.watchers().set(topic, j.client, false);
            }
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.exit_all();
    }
}
