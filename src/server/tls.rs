//! Native TLS termination (`[tls]`, rustls with the ring provider): ALPN
//! `h2` and `http/1.1` on the one port, then the same HTTP stack as in
//! clear.
//!
//! Each connection's handshake runs in the connection's own task, never on
//! the accept loop, and must end within `http.handshake_timeout` (the same
//! deadline as the first request's headers). The certificate comes from a
//! [`ResolvesServerCert`] holding the current chain and key: [`Tls::watch`]
//! swaps in new files when they change (checked every
//! `tls.reload_interval`, and on SIGHUP). New connections get the new
//! certificate, open ones go on; files that cannot be used are refused with
//! a warning and the current certificate stays.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{Dispatch, LimitedIo, StreamExecutor};
use crate::config::{ConfigError, TlsConfig};

/// TLS termination for the public port: the acceptor's configuration and
/// the reloadable certificate.
pub struct Tls {
    config: TlsConfig,
    resolver: Arc<Resolver>,
    server: Arc<ServerConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("cert_file", &self.config.cert_file).finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the certificate and key of `config`; `None` when TLS is off,
    /// an error naming the key when the files cannot be used.
    pub fn from_config(config: &TlsConfig) -> Result<Option<Tls>, ConfigError> {
        let Some(key) = config.load()? else {
            return Ok(None);
        };
        let resolver = Arc::new(Resolver { current: RwLock::new(Arc::new(key)) });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Invalid { key: "tls.cert_file", reason: e.to_string() })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        // HTTP/2 first: browsers get it (many SSE streams on one
        // connection), gRPC needs it; HTTP/1.1 for WebSocket and the rest.
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Tls { config: config.clone(), resolver, server: Arc::new(server) }))
    }

    /// An acceptor for the accept loop ([`super::serve`]); it follows
    /// reloads.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.server))
    }

    /// Reloads the certificate and key when their files change (size,
    /// modification time or inode, checked every `tls.reload_interval`)
    /// and on SIGHUP, until `token` is cancelled.
    pub async fn watch(self, token: CancellationToken) {
        let mut files = Files { stamp: Stamp::of(&self.config), tls: self };
        let mut tick = tokio::time::interval(files.tls.config.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut hangup = Hangup::new();
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = tick.tick() => files.check(false),
                () = hangup.recv() => files.check(true),
            }
        }
    }
}

/// What [`Tls::watch`] compares between checks.
struct Files {
    tls: Tls,
    stamp: Stamp,
}

impl Files {
    /// Loads the files when they changed since the last check (or when
    /// `forced`), and swaps them in if they are usable.
    fn check(&mut self, forced: bool) {
        let stamp = Stamp::of(&self.tls.config);
        if stamp == self.stamp && !forced {
            return;
        }
        // Remembered even when the files are refused: a half-written pair
        // is tried again once it changes again, not warned about each tick.
        self.stamp = stamp;
        let cert_file = self.tls.config.cert_file.as_deref().unwrap_or(std::path::Path::new(""));
        match self.tls.config.load() {
            Ok(Some(key)) => {
                *self.tls.resolver.current.write() = Arc::new(key);
                crate::metrics::tls_reload(true);
                tracing::info!(cert_file = %cert_file.display(), "TLS certificate reloaded");
            }
            Ok(None) => {}
            Err(e) => {
                crate::metrics::tls_reload(false);
                tracing::warn!(error = %e, "TLS files changed but cannot be used; keeping the current certificate");
            }
        }
    }
}

/// Size, modification time and inode of both files (`None` for a file
/// that cannot be examined).
#[derive(Debug, PartialEq, Eq)]
struct Stamp([Option<(u64, Option<SystemTime>, u64)>; 2]);

impl Stamp {
    fn of(config: &TlsConfig) -> Stamp {
        let one = |path: Option<&std::path::Path>| {
            let meta = std::fs::metadata(path?).ok()?;
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&meta);
            #[cfg(not(unix))]
            let inode = 0;
            Some((meta.len(), meta.modified().ok(), inode))
        };
        Stamp([one(config.cert_file.as_deref()), one(config.key_file.as_deref())])
    }
}

/// SIGHUP, where there is one.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new() -> Hangup {
        #[cfg(unix)]
        {
            let signal = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS files are still checked periodically");
                    None
                }
            };
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    /// Resolves on the next SIGHUP (never without one).
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
            self.signal = None;
        }
        std::future::pending().await
    }
}

/// The current certificate and key, for every handshake (whatever the
/// client asks for: one certificate per port).
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

/// One TLS connection: the handshake, by `deadline`, in this task, then
/// HTTP over the decrypted stream ([`super::connection`], same deadline
/// for the first request). A failed or late handshake closes the socket.
pub(super) async fn connection(
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<StreamExecutor>>,
    watcher: Watcher,
    io: LimitedIo,
    svc: Dispatch,
    deadline: Instant,
) {
    let peer = svc.peer.0;
    let io = match tokio::time::timeout_at(deadline, io.wrap(|tcp| acceptor.accept(tcp))).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => {
            crate::metrics::tls_handshake_failed(false);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            crate::metrics::tls_handshake_failed(true);
            tracing::debug!(%peer, "closing a connection that did not finish its TLS handshake in time");
            return;
        }
    };
    super::connection(&builder, watcher, io, svc, deadline).await;
}
