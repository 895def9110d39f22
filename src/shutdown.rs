//! Graceful shutdown: tell (cancel the token), wait (the task tracker), under
//! a deadline (the grace period).
//!
//! Every long-lived task is spawned through [`Shutdown::spawn`] (or tracked
//! with [`Shutdown::track`]) and selects on [`Shutdown::token`] — except
//! connection tasks, which register their session in [`Shutdown::sessions`]
//! and are closed through it, so the per-message loop polls no shared state.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::session::Sessions;
use crate::core::Close;

/// The process's shutdown handle. Clone = `Arc` bumps.
#[derive(Clone, Debug)]
pub struct Shutdown {
    token: CancellationToken,
    sessions: Arc<Sessions>,
    tracker: TaskTracker,
    grace: Duration,
}

impl Shutdown {
    /// A handle whose cancellation is driven by `token`.
    pub fn new(token: CancellationToken, grace: Duration) -> Self {
        Shutdown { token, sessions: Arc::default(), tracker: TaskTracker::new(), grace }
    }

    /// Live connection sessions; [`Shutdown::drain`] closes them all.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// Cancelled when shutdown begins.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// True once shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Spawns a tracked task.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Wraps a future spawned elsewhere (e.g. by the WebSocket upgrade) so
    /// that draining waits for it.
    pub fn track<F: Future>(&self, fut: F) -> tokio_util::task::task_tracker::TrackedFuture<F> {
        self.tracker.track_future(fut)
    }

    /// Waits for tracked tasks for at most the grace period; false when the
    /// deadline passed first.
    pub async fn drain(&self) -> bool {
        self.sessions.close_all(Close::Shutdown);
        self.tracker.close();
        tokio::time::timeout(self.grace, self.tracker.wait()).await.is_ok()
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
