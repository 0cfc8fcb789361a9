//! The daily reconciliation job. On RECONCILE_CRON (Beijing time; 10:30 by default, after
//! WeChat has made the bills at 09:00) the instance that holds the sweeper's lease reconciles
//! the previous Beijing day, unless that day already has a report that did not fail (an
//! operator re-runs a day through the admin API or `coinpay reconcile`). A day that failed
//! (`Bill Creating`, a timeout, an unreadable file) is tried again every
//! RECONCILE_RETRY_SECONDS until the Beijing day ends.
//!
//! It shares the sweeper's lease (same name, same holder) rather than having one of its own,
//! so that exactly one instance does the periodic work. It never writes the lease: the
//! sweeper's keeper takes, renews and gives it back, and the job reads whether this instance
//! holds it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::reconcile::ReconcileService;
use crate::metrics::Metrics;
use crate::order::number::{BEIJING, beijing_now};
use crate::order::sweeper::LEASE_NAME;
use crate::store::{DbPool, leases, now_ms, reconciliations};

#[derive(Clone)]
pub struct ReconcileJobConfig {
    /// Evaluated in Beijing time.
    pub schedule: cron::Schedule,
    pub retry: Duration,
    /// The sweeper's holder string of this instance.
    pub holder: String,
    pub lease: Duration,
}

pub struct ReconcileJob {
    cancel: CancellationToken,
    task: actix_rt::task::JoinHandle<()>,
}

impl ReconcileJob {
    pub fn start(
        cfg: ReconcileJobConfig,
        service: Arc<ReconcileService>,
        db: DbPool,
        metrics: Arc<Metrics>,
    ) -> ReconcileJob {
        let cancel = CancellationToken::new();
        let task = actix_rt::spawn(on_schedule(cfg, service, db, metrics, cancel.clone()));
        ReconcileJob { cancel, task }
    }

    /// Stops the job; a run in progress is abandoned at its next await (each of its writes is
    /// a transaction of its own, and a credit is the order actor's, which finishes it).
    pub async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the reconciliation task failed");
        }
    }
}

async fn on_schedule(
    cfg: ReconcileJobConfig,
    service: Arc<ReconcileService>,
    db: DbPool,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut retry_at: Option<DateTime<Utc>> = None;
    loop {
        let tick = cfg
            .schedule
            .upcoming(BEIJING)
            .next()
            .map(|t| t.with_timezone(&Utc));
        let Some(wake) = [tick, retry_at].into_iter().flatten().min() else {
            tracing::warn!("RECONCILE_CRON has no future run; reconciliation is idle");
            cancel.cancelled().await;
            return;
        };
        let delay = (wake - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let run = async {
            tokio::time::sleep(delay).await;
            run_scheduled(&cfg, &service, &db, &metrics).await
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            again = run => {
                retry_at = again.then(|| Utc::now() + cfg.retry)
                    .filter(|t| t.with_timezone(&BEIJING).date_naive() == beijing_now().date_naive());
            }
        }
    }
}

/// One scheduled look at yesterday; true when it failed in a way worth trying again.
async fn run_scheduled(
    cfg: &ReconcileJobConfig,
    service: &ReconcileService,
    db: &DbPool,
    metrics: &Metrics,
) -> bool {
    // The sweeper's keeper takes and renews the lease; the job only reads whether this
    // instance holds it (see `leases::held_by`).
    match leases::held_by(db, LEASE_NAME, &cfg.holder, now_ms()).await {
        Ok(true) => {}
        Ok(false) => {
            metrics.reconcile.run("not_leader");
            tracing::debug!("another instance holds the lease; it reconciles");
            return false;
        }
        Err(e) => {
            tracing::warn!(error = %e, "reconciliation could not take the lease");
            return true;
        }
    }
    let Some(date) = beijing_now().date_naive().pred_opt() else {
        return false;
    };
    match reconciliations::get(db, date).await {
        Ok(Some(done)) if done.status.is_settled() => {
            metrics.reconcile.run("skipped");
            tracing::debug!(bill_date = %date, status = %done.status, "already reconciled");
            return false;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not read the day's report");
            return true;
        }
    }
    match service.run(date).await {
        Ok(run) => run.retryable || !run.report.status.is_settled(),
        Err(e) => {
            tracing::error!(bill_date = %date, error = %e, "scheduled reconciliation failed");
            true
        }
    }
}
