//! The refund poller: on the sweeper's schedule (ORDER_SWEEP_CRON) and under the sweeper's
//! lease — so that of several instances only the one sweeping polls — it asks WeChat about
//! refunds still `processing` past REFUND_POLL_AFTER_SECS and settles them by the answer
//! (`RefundService::poll`). It is what recovers a refund whose notification never came, whose
//! call timed out, or whose process was killed between the reservation and WeChat's answer.
//!
//! Like the sweeper it is one task stopped through a cancellation token. It never writes the
//! lease: the sweeper's keeper takes, renews and gives it back, and the poller reads whether
//! this instance holds it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::refunds::RefundService;
use crate::order::sweeper::{LEASE_NAME, SweepConfig};
use crate::store::{DbPool, leases, now_ms};

/// The running poller: its task, and the token that stops it.
pub struct RefundPoller {
    cancel: CancellationToken,
    task: actix_rt::task::JoinHandle<()>,
}

impl RefundPoller {
    pub fn start(cfg: SweepConfig, db: DbPool, refunds: Arc<RefundService>) -> RefundPoller {
        let cancel = CancellationToken::new();
        let task = actix_rt::spawn(poll_on_schedule(cfg, db, refunds, cancel.clone()));
        RefundPoller { cancel, task }
    }

    /// Stops polling; a run in progress ends after the refund it is settling.
    pub async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the refund poller task failed");
        }
    }
}

async fn poll_on_schedule(
    cfg: SweepConfig,
    db: DbPool,
    refunds: Arc<RefundService>,
    cancel: CancellationToken,
) {
    loop {
        let Some(next) = cfg.schedule.upcoming(chrono::Utc).next() else {
            cancel.cancelled().await;
            return;
        };
        let wait = (next - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        // The sweeper's keeper takes and renews the lease; the poller only reads whether this
        // instance holds it (see `leases::held_by`).
        match leases::held_by(&db, LEASE_NAME, &cfg.holder, now_ms()).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "refund poller: lease unavailable");
                continue;
            }
        }
        match refunds.poll(&cancel).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(refunds = n, "refund poller asked about refunds"),
            Err(e) => tracing::warn!(error = %e, "refund poller run failed"),
        }
    }
}
