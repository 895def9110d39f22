//! Engine failures as the log sees them. Every failed operation is counted
//! (`rtgate_engine_operations_total{outcome="error"}`) and logged at debug;
//! the log gets one warning when operations start failing, at most one
//! summary a minute while they keep failing, and one line when they succeed
//! again, each with counts. So an outage, where every request fails, does
//! not write a warning per request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::core::EngineError;
use crate::metrics::EngineOp;

/// How often a continuing outage is summarised.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The failing/succeeding state of one engine and its counts.
#[derive(Debug)]
pub(super) struct ErrorLog {
    failing: AtomicBool,
    /// Failures since operations started failing.
    total: AtomicU64,
    /// Failures since the last line written.
    unreported: AtomicU64,
    /// When the last warning was written, in ms since `epoch`.
    last_line_ms: AtomicU64,
    epoch: Instant,
}

impl ErrorLog {
    pub(super) fn new() -> Self {
        ErrorLog {
            failing: AtomicBool::new(false),
            total: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            last_line_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// An operation failed.
    pub(super) fn failed(&self, op: EngineOp, e: &EngineError) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        if !self.failing.swap(true, Ordering::AcqRel) {
            self.last_line_ms.store(now, Ordering::Relaxed);
            self.unreported.store(0, Ordering::Relaxed);
            tracing::warn!(op = op.label(), error = %e, "engine operations failing");
            return;
        }
        tracing::debug!(op = op.label(), error = %e, "engine error");
        let unreported = self.unreported.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.last_line_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= SUMMARY_EVERY.as_millis() as u64;
        // One summary per period, whichever failing call gets there first.
        if due && self.last_line_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.unreported.fetch_sub(unreported, Ordering::Relaxed);
            tracing::warn!(
                op = op.label(),
                error = %e,
                failed = unreported,
                failed_total = self.total.load(Ordering::Relaxed),
                "engine operations still failing"
            );
        }
    }

    /// An operation succeeded: one relaxed load unless this ends an outage.
    pub(super) fn succeeded(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::AcqRel) {
            let failed = self.total.swap(0, Ordering::Relaxed);
            self.unreported.store(0, Ordering::Relaxed);
            tracing::info!(failed, "engine operations succeed again");
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}
