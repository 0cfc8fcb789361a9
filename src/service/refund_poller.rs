//! The refund poller: on the sweeper's schedule (ORDER_SWEEP_CRON) and under the sweeper's
//! lease — so that of several instances only the one sweeping polls — it asks WeChat about
//! refunds still `processing` past REFUND_POLL_AFTER_SECS and settles them by the answer
//! (`RefundService::poll`). It is what recovers a refund whose notification never came, whose
//! call timed out, or whose process was killed between the reservation and WeChat's answer.

use std::sync::Arc;
use std::time::Duration;

use super::refunds::RefundService;
use crate::order::sweeper::{LEASE_NAME, SweepConfig};
use crate::store::{DbPool, leases, now_ms};

/// Runs until the process ends (it holds no state that a stop would have to save: every
/// refund it touches is settled in its own transaction).
pub fn spawn(cfg: SweepConfig, db: DbPool, refunds: Arc<RefundService>) {
    actix_rt::spawn(async move {
        loop {
            let Some(next) = cfg.schedule.upcoming(chrono::Utc).next() else {
                return;
            };
            let wait = (next - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::from_millis(10));
            actix_rt::time::sleep(wait).await;
            let now = now_ms();
            let until = now + i64::try_from(cfg.lease.as_millis()).unwrap_or(i64::MAX / 2);
            match leases::try_acquire(&db, LEASE_NAME, &cfg.holder, now, until).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "refund poller: lease unavailable");
                    continue;
                }
            }
            match refunds.poll().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(refunds = n, "refund poller asked about refunds"),
                Err(e) => tracing::warn!(error = %e, "refund poller run failed"),
            }
        }
    });
}
