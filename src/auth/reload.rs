//! The JWKS file: its current key set (swapped atomically on reload) and
//! the watcher that reloads it when the file changes or on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};

use super::keys::{read_jwks, KeySet};
use super::{Auth, AuthError};
use crate::shutdown::Shutdown;

/// What identifies a version of the file: modification time and size.
type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok(), meta.len()))
}

/// A JWKS file and the keys last loaded from it.
pub(crate) struct Jwks {
    path: PathBuf,
    keys: RwLock<Arc<KeySet>>,
    /// The version last read (successfully or not), so a broken file is
    /// reported once, not at every check.
    seen: Mutex<Option<Stamp>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("path", &self.path).field("keys", &*self.keys.read()).finish()
    }
}

impl Jwks {
    /// Loads `path`; unusable is an error (at start).
    pub(crate) fn load(path: &Path) -> Result<Jwks, AuthError> {
        let seen = stamp(path);
        let keys = read_jwks(path)?;
        Ok(Jwks { path: path.to_owned(), keys: RwLock::new(Arc::new(keys)), seen: Mutex::new(seen) })
    }

    /// The current key set (the lock is held only to clone the `Arc`).
    pub(crate) fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read())
    }

    /// Re-reads the file; on success the new keys replace the old ones at
    /// once, on failure the old ones stay. Returns the number of keys.
    pub(crate) fn reload(&self) -> Result<usize, AuthError> {
        *self.seen.lock() = stamp(&self.path);
        let keys = read_jwks(&self.path)?;
        let n = keys.len();
        *self.keys.write() = Arc::new(keys);
        Ok(n)
    }

    /// True when the file's modification time or size differs from the
    /// version last read.
    fn changed(&self) -> bool {
        stamp(&self.path) != *self.seen.lock()
    }

    /// Reloads and logs the outcome (path and key count; never key material).
    fn reload_logged(&self, why: &'static str) {
        let outcome = self.reload();
        crate::metrics::jwks_reload(outcome.is_ok());
        match outcome {
            Ok(keys) => tracing::info!(path = %self.path.display(), keys, why, "JWKS reloaded"),
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                error = %e,
                why,
                "JWKS reload failed; keeping the previous keys"
            ),
        }
    }
}

impl Auth {
    /// Re-reads the JWKS file now (what the watcher does on a change or
    /// SIGHUP). On error the previous keys stay in use. Without a JWKS
    /// file: nothing to do.
    pub fn reload(&self) -> Result<(), AuthError> {
        match &self.jwks {
            Some(jwks) => jwks.reload().map(drop),
            None => Ok(()),
        }
    }

    /// Spawns (tracked by `shutdown`, ending with it) the task that
    /// reloads the JWKS file when its modification time or size changes
    /// (checked every `auth.reload_interval`) and on SIGHUP. A failed
    /// reload keeps the previous keys and logs a warning. Without a JWKS
    /// file no task is spawned. Call it inside the Tokio runtime.
    pub fn watch(self: &Arc<Self>, shutdown: &Shutdown) {
        if self.jwks.is_none() {
            return;
        }
        let auth = Arc::clone(self);
        let token = shutdown.token().clone();
        let every = self.reload_interval.max(Duration::from_millis(10));
        // Registered before returning: a SIGHUP sent after `watch` returns is seen.
        let mut hangup = hangup();
        shutdown.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.reset();
            loop {
                let why = tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => "changed",
                    Some(()) = recv(&mut hangup) => "SIGHUP",
                };
                let auth = Arc::clone(&auth);
                // File reads may block (a network file system): off the runtime threads.
                let done = tokio::task::spawn_blocking(move || {
                    if let Some(jwks) = &auth.jwks {
                        if why == "SIGHUP" || jwks.changed() {
                            jwks.reload_logged(why);
                        }
                    }
                });
                if let Err(e) = done.await {
                    tracing::warn!(error = %e, "JWKS reload task failed");
                }
            }
        });
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup() -> Hangup {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; JWKS reloads on file changes only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup() -> Hangup {
    None
}

/// The next SIGHUP; never, without a listener.
async fn recv(hangup: &mut Hangup) -> Option<()> {
    #[cfg(unix)]
    if let Some(s) = hangup {
        return s.recv().await;
    }
    let _ = hangup;
    std::future::pending().await
}
