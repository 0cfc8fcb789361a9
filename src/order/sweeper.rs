//! The timeout sweeper. On ORDER_SWEEP_CRON it takes the `sweeper` lease (ShedLock-style, so
//! one instance sweeps at a time), then sends Check to the actor of every unpaid order past its
//! expiry. Runs never overlap; the lease is renewed in the background while a run lasts.
//!
//! It is one task, stopped through a cancellation token: at shutdown the token is cancelled,
//! the run in progress stops after its current orders, the task gives the lease back (so that
//! another instance can take over at once) and ends, and whoever stopped it awaits its handle.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::actor::{Check, OrderError, Outcome};
use super::registry::OrderRegistry;
use super::state::{OrderStatus, Stay};
use crate::metrics::Metrics;
use crate::store::{DbPool, leases, now_ms, orders};
pub const LEASE_NAME: &str = "sweeper";
/// Batches per run: a backlog larger than this is finished by the next runs.
const MAX_BATCHES: usize = 50;

#[derive(Clone)]
pub struct SweepConfig {
    pub schedule: cron::Schedule,
    pub holder: String,
    pub lease: Duration,
    pub batch_size: usize,
    pub concurrency: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub looked_at: u64,
    pub expired: u64,
    pub recovered_paid: u64,
    pub left_pending: u64,
    pub failed: u64,
}

/// The running sweeper: its task, and the token that stops it.
pub struct Sweeper {
    cancel: CancellationToken,
    task: actix_rt::task::JoinHandle<()>,
}

impl Sweeper {
    /// Starts the sweeper's task on the current actix runtime (the order actors it wakes start
    /// on this thread).
    pub fn start(
        cfg: SweepConfig,
        registry: OrderRegistry,
        db: DbPool,
        metrics: Arc<Metrics>,
    ) -> Sweeper {
        let cancel = CancellationToken::new();
        let task = actix_rt::spawn(sweep_on_schedule(
            cfg,
            registry,
            db,
            metrics,
            cancel.clone(),
        ));
        Sweeper { cancel, task }
    }

    /// Stops sweeping and waits until the run in progress has stopped after its current orders
    /// and the lease is given back.
    pub async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the sweeper task failed");
        }
    }
}

async fn sweep_on_schedule(
    cfg: SweepConfig,
    registry: OrderRegistry,
    db: DbPool,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    tracing::info!(holder = %cfg.holder, "sweeper started");
    loop {
        let Some(next) = cfg.schedule.upcoming(chrono::Utc).next() else {
            tracing::warn!("ORDER_SWEEP_CRON has no future run; the sweeper is idle");
            cancel.cancelled().await;
            break;
        };
        let delay = (next - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        let started = chrono::Utc::now();
        run_once(&cfg, &registry, &db, &metrics, &cancel).await;
        // The ticks that fell inside this run are skipped, not run late.
        let now = chrono::Utc::now();
        for _ in cfg.schedule.after(&started).take_while(|t| *t <= now) {
            tracing::info!("previous sweep still running; skipping this tick");
            metrics.sweeper_run("skipped_overlap");
        }
    }
    if let Err(e) = leases::release(&db, LEASE_NAME, &cfg.holder).await {
        tracing::warn!(error = %e, "could not release the sweeper lease");
    }
    metrics.sweeper_lease_held.set(0);
}

async fn hold_lease(cfg: &SweepConfig, db: &DbPool) -> Result<bool, crate::store::StoreError> {
    let now = now_ms();
    leases::try_acquire(
        db,
        LEASE_NAME,
        &cfg.holder,
        now,
        now + cfg.lease.as_millis() as i64,
    )
    .await
}

/// One sweep, unless another instance holds the lease; it stops after its current orders
/// once `cancel` is cancelled or the lease is lost.
pub async fn run_once(
    cfg: &SweepConfig,
    registry: &OrderRegistry,
    db: &DbPool,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Option<SweepReport> {
    match hold_lease(cfg, db).await {
        Ok(true) => {
            metrics.sweeper_lease_held.set(1);
        }
        Ok(false) => {
            metrics.sweeper_lease_held.set(0);
            metrics.sweeper_run("not_leader");
            tracing::debug!("another instance holds the sweeper lease");
            return None;
        }
        Err(e) => {
            metrics.sweeper_run("error");
            tracing::warn!(error = %e, "sweeper could not take its lease");
            return None;
        }
    }
    // Renewed in the background for as long as the run lasts (slow WeChat calls included); a
    // lost lease means another instance took over, and this run stops after its current orders,
    // as it does at shutdown.
    let halt = cancel.child_token();
    let renew = async {
        loop {
            tokio::time::sleep(cfg.lease / 3).await;
            if !matches!(hold_lease(cfg, db).await, Ok(true)) {
                tracing::warn!("sweeper lease lost mid-run; stopping");
                metrics.sweeper_lease_held.set(0);
                halt.cancel();
                return;
            }
        }
    };
    let work = sweep_batches(cfg, registry, db, &halt);
    let (report, completed) = {
        let (work, renew) = (std::pin::pin!(work), std::pin::pin!(renew));
        match futures_util::future::select(work, renew).await {
            futures_util::future::Either::Left((done, _)) => done,
            futures_util::future::Either::Right(((), work)) => work.await,
        }
    };
    metrics.sweeper_order("looked_at", report.looked_at);
    metrics.sweeper_order("expired", report.expired);
    metrics.sweeper_order("recovered_paid", report.recovered_paid);
    metrics.sweeper_order("left_pending", report.left_pending);
    metrics.sweeper_order("failed", report.failed);
    metrics.sweeper_run(if completed { "ok" } else { "partial" });
    if completed {
        metrics
            .sweeper_last_success
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }
    tracing::info!(
        looked_at = report.looked_at,
        expired = report.expired,
        recovered_paid = report.recovered_paid,
        left_pending = report.left_pending,
        failed = report.failed,
        "sweep finished"
    );
    Some(report)
}

/// The batches of one run: (report, whether it finished rather than being halted).
async fn sweep_batches(
    cfg: &SweepConfig,
    registry: &OrderRegistry,
    db: &DbPool,
    halt: &CancellationToken,
) -> (SweepReport, bool) {
    let mut report = SweepReport::default();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..MAX_BATCHES {
        if halt.is_cancelled() {
            return (report, false);
        }
        let due = match orders::overdue(db, now_ms(), cfg.batch_size as i64).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "sweeper could not list overdue orders");
                return (report, false);
            }
        };
        let fresh: Vec<String> = due.into_iter().filter(|n| seen.insert(n.clone())).collect();
        if fresh.is_empty() {
            return (report, true);
        }
        let results: Vec<_> = futures_util::stream::iter(fresh)
            .map(|order_no| async move {
                if halt.is_cancelled() {
                    return None;
                }
                let r = registry.send(&order_no, Check { may_expire: true }).await;
                Some((order_no, r))
            })
            .buffer_unordered(cfg.concurrency)
            .collect()
            .await;
        for item in results {
            let Some((order_no, r)) = item else {
                continue;
            };
            report.looked_at += 1;
            match r {
                Ok(reply) => match reply.outcome {
                    Outcome::Moved {
                        to: OrderStatus::Expired,
                        ..
                    } => report.expired += 1,
                    Outcome::Moved {
                        to: OrderStatus::Paid,
                        ..
                    } => report.recovered_paid += 1,
                    Outcome::Stayed(Stay::UserPaying) => report.left_pending += 1,
                    _ => {}
                },
                Err(OrderError::NotFound) => {}
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(order_no = %order_no, error = %e, "sweep of order failed; next run retries");
                }
            }
        }
    }
    (report, !halt.is_cancelled())
}
