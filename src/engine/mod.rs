//! Engine implementations, chosen once from config. They implement
//! [`crate::core::Engine`]; the core never names them.

mod errors;
pub mod memory;
pub mod outbox;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, EngineKind};
use crate::core::outbox::{Outbox, Routes};
use crate::core::{Engine, EngineError, Feed};
use crate::metrics::EngineOp;
use crate::shutdown::Shutdown;

/// The configured engine and, with webhooks, its outbox.
pub struct Built {
    /// The engine.
    pub engine: Arc<dyn Engine>,
    /// The webhook outbox, when `routes` were given.
    pub outbox: Option<Arc<dyn Outbox>>,
}

/// Builds the configured engine, notifying `listener` of live messages and
/// recording the topics `routes` match in its webhook outbox; the engine
/// starts its own background tasks under `shutdown`.
pub fn build(
    config: &Config,
    listener: Arc<dyn Feed>,
    policies: &Arc<crate::core::policy::Policies>,
    shutdown: &Shutdown,
    routes: Option<Routes>,
) -> Result<Built, EngineError> {
    match config.engine.kind {
        EngineKind::Memory => {
            let opts = memory::MemoryOptions {
                max_len: config.history.max_len,
                max_age: config.history.max_age,
                idempotency_ttl: config.idempotency.ttl,
                idempotency_max_keys: config.idempotency.max_keys_per_topic,
                max_topics: config.limits.max_topics,
                max_retained_bytes: config.memory.max_retained_bytes,
                policies: Some(Arc::clone(policies)),
            };
            let engine: Arc<dyn Engine> = memory::MemoryEngine::start(opts, listener, shutdown);
            Ok(match routes {
                None => Built { engine, outbox: None },
                Some(routes) => {
                    let outbox = outbox::LocalOutbox::new(routes.max_len, &routes.endpoints);
                    let engine = Arc::new(outbox::Enqueuing::new(engine, outbox.clone(), routes));
                    Built { engine, outbox: Some(Arc::new(outbox)) }
                }
            })
        }
        EngineKind::Redis => {
            let r = &config.redis;
            let opts = redis::RedisOptions {
                url: r.url.clone(),
                cluster_urls: r.cluster_urls.clone(),
                key_prefix: r.key_prefix.clone(),
                shards: r.shards,
                max_len: config.history.max_len,
                max_age: config.history.max_age,
                idempotency_ttl: config.idempotency.ttl,
                idempotency_max_keys: config.idempotency.max_keys_per_topic,
                op_timeout: r.op_timeout,
                block: r.block,
                routes: routes.clone(),
                policies: Some(Arc::clone(policies)),
            };
            let engine = redis::RedisEngine::start(opts, listener, shutdown)?;
            let outbox = routes.map(|routes| {
                // Trims every outbox below what every endpoint is done with.
                let trimmer = redis::RedisEngine::clone(&engine);
                let token = shutdown.token().clone();
                shutdown.spawn(async move {
                    let endpoints: Vec<String> = routes.endpoints.to_vec();
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => return,
                            _ = tick.tick() => {}
                        }
                        if let Err(e) = trimmer.trim_outboxes(&endpoints).await {
                            tracing::debug!(error = %e, "webhook outbox trim failed; retried in 1s");
                        }
                    }
                });
                Arc::clone(&engine) as Arc<dyn Outbox>
            });
            Ok(Built { engine, outbox })
        }
    }
}

/// Counts every engine operation by outcome (`rtgate_engine_operations_total`)
/// around the configured engine, so both engines are measured the same way,
/// and logs failures: the one place where engine errors are logged
/// (converting one into a client error has no side effects), once per
/// change of state with counts rather than once per request (see
/// [`errors`]).
pub struct Metered {
    engine: Arc<dyn Engine>,
    errors: Arc<errors::ErrorLog>,
}

impl Metered {
    /// Measures `engine`.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Metered { engine, errors: Arc::new(errors::ErrorLog::new()) }
    }

    fn record<T>(&self, op: EngineOp, r: &Result<T, EngineError>) {
        record(&self.errors, op, r);
    }
}

fn record<T>(errors: &errors::ErrorLog, op: EngineOp, r: &Result<T, EngineError>) {
    crate::metrics::engine_op(op, r.is_ok());
    match r {
        Ok(_) => errors.succeeded(),
        // A cap logs its refusals itself (at most every 10 s, with a
        // count); an error reply to a bad request is the client's, not an
        // outage.
        Err(e @ (EngineError::Full(_) | EngineError::Rejected(_))) => {
            tracing::debug!(op = op.label(), error = %e, "engine refused an operation")
        }
        Err(e) => errors.failed(op, e),
    }
}

#[async_trait::async_trait]
impl Engine for Metered {
    fn name(&self) -> &'static str {
        self.engine.name()
    }

    async fn publish_with(
        &self,
        topic: &crate::core::Topic,
        data: bytes::Bytes,
        options: crate::core::PublishOptions<'_>,
    ) -> Result<crate::core::Published, EngineError> {
        let r = self.engine.publish_with(topic, data, options).await;
        self.record(EngineOp::Publish, &r);
        r
    }

    async fn broadcast(&self, message: Arc<crate::core::Message>) -> Result<(), EngineError> {
        let r = self.engine.broadcast(message).await;
        self.record(EngineOp::Publish, &r);
        r
    }

    async fn history(
        &self,
        topic: &crate::core::Topic,
        after: Option<crate::core::MessageId>,
        limit: usize,
    ) -> Result<crate::core::History, EngineError> {
        let r = self.engine.history(topic, after, limit).await;
        self.record(EngineOp::History, &r);
        r
    }

    async fn last_id(
        &self,
        topic: &crate::core::Topic,
    ) -> Result<Option<crate::core::MessageId>, EngineError> {
        let r = self.engine.last_id(topic).await;
        self.record(EngineOp::LastId, &r);
        r
    }

    fn watch(
        &self,
        topic: &crate::core::Topic,
    ) -> futures_util::future::BoxFuture<'static, Result<(), EngineError>> {
        let fut = self.engine.watch(topic);
        let errors = Arc::clone(&self.errors);
        Box::pin(async move {
            let r = fut.await;
            record(&errors, EngineOp::Watch, &r);
            r
        })
    }

    fn unwatch(&self, topic: &crate::core::Topic) {
        self.engine.unwatch(topic);
    }

    fn is_ready(&self) -> bool {
        self.engine.is_ready()
    }
}
