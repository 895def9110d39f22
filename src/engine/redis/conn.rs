//! Connections to Redis: one shared command connection per engine (a
//! reconnecting manager, or a cluster connection), one dedicated connection
//! per blocking reader and one for the health task (so pings never queue
//! behind data), for a single server or a Cluster.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisFuture, Value};

use super::{unavailable, RedisEngine, RedisOptions};
use crate::core::engine::EngineError;

/// One Redis connection of any of the supported kinds.
#[derive(Clone)]
pub(super) enum RedisConn {
    /// The shared command connection to a single server (reconnects by itself).
    Manager(ConnectionManager),
    /// A reader's or the health task's connection to a single server.
    Multiplexed(MultiplexedConnection),
    /// A command, reader or health connection to a Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Manager(c) => c.req_packed_command(cmd),
            RedisConn::Multiplexed(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Manager(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Manager(c) => c.get_db(),
            RedisConn::Multiplexed(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The clients connections are opened from: one for a single server, or one
/// per timeout for a Cluster (readers wait up to a whole `XREAD BLOCK`).
#[allow(clippy::large_enum_variant)] // one per engine, never moved around
pub(super) enum Clients {
    /// A single server.
    Single(redis::Client),
    /// A Cluster: commands with the command timeout, readers with the block
    /// time on top.
    Cluster { commands: ClusterClient, readers: ClusterClient },
}

impl Clients {
    /// Clients for `opts` (nothing connects yet).
    pub(super) fn open(opts: &RedisOptions) -> Result<Clients, redis::RedisError> {
        if opts.cluster_urls.is_empty() {
            return Ok(Clients::Single(redis::Client::open(opts.url.as_str())?));
        }
        let build = |response: Duration| {
            ClusterClient::builder(opts.cluster_urls.iter().map(String::as_str))
                .connection_timeout(opts.op_timeout)
                .response_timeout(response)
                .retries(2)
                .build()
        };
        Ok(Clients::Cluster {
            commands: build(opts.op_timeout)?,
            readers: build(opts.block + opts.op_timeout)?,
        })
    }

    /// The shared command connection (reconnects by itself).
    async fn commands(&self, opts: &RedisOptions) -> Result<RedisConn, redis::RedisError> {
        match self {
            Clients::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(opts.op_timeout))
                    .set_response_timeout(Some(opts.op_timeout))
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(2));
                Ok(RedisConn::Manager(ConnectionManager::new_lazy_with_config(client.clone(), config)?))
            }
            Clients::Cluster { commands, .. } => {
                Ok(RedisConn::Cluster(commands.get_async_connection().await?))
            }
        }
    }

    /// The health task's own connection: nothing else is sent on it, so a
    /// ping is never queued behind a large reply or a held command.
    pub(super) async fn health(&self, opts: &RedisOptions) -> Result<RedisConn, redis::RedisError> {
        match self {
            Clients::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(opts.op_timeout))
                    .set_response_timeout(Some(opts.op_timeout));
                Ok(RedisConn::Multiplexed(
                    client.get_multiplexed_async_connection_with_config(&config).await?,
                ))
            }
            Clients::Cluster { commands, .. } => {
                Ok(RedisConn::Cluster(commands.get_async_connection().await?))
            }
        }
    }

    /// A dedicated connection for one blocking reader.
    pub(super) async fn reader(&self, opts: &RedisOptions) -> Result<RedisConn, redis::RedisError> {
        match self {
            Clients::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(opts.op_timeout))
                    .set_response_timeout(Some(opts.block + opts.op_timeout));
                Ok(RedisConn::Multiplexed(
                    client.get_multiplexed_async_connection_with_config(&config).await?,
                ))
            }
            Clients::Cluster { readers, .. } => Ok(RedisConn::Cluster(readers.get_async_connection().await?)),
        }
    }
}

impl RedisEngine {
    /// The shared command connection, opened on first use (within the
    /// command timeout).
    pub(super) async fn conn(&self) -> Result<RedisConn, EngineError> {
        let inner = &self.inner;
        let conn = tokio::time::timeout(
            inner.opts.op_timeout,
            inner.commands.get_or_try_init(|| inner.clients.commands(&inner.opts)),
        )
        .await
        .map_err(|_| EngineError::Unavailable("redis connect timed out".into()))?
        .map_err(unavailable)?;
        Ok(conn.clone())
    }
}
