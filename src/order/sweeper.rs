//! The timeout sweeper. On ORDER_SWEEP_CRON it takes the `sweeper` lease (ShedLock-style, so
//! one instance sweeps at a time), then sends Timeout to the actor of every unpaid order past
//! its expiry. Runs never overlap; the lease is renewed between batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;

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

pub struct SweeperActor {
    cfg: SweepConfig,
    registry: OrderRegistry,
    db: DbPool,
    metrics: Arc<Metrics>,
    running: Arc<AtomicBool>,
    /// Set at shutdown: the run in progress stops after its current orders.
    stopping: Arc<AtomicBool>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub looked_at: u64,
    pub expired: u64,
    pub recovered_paid: u64,
    pub left_pending: u64,
    pub failed: u64,
}

impl SweeperActor {
    pub fn new(
        cfg: SweepConfig,
        registry: OrderRegistry,
        db: DbPool,
        metrics: Arc<Metrics>,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        SweeperActor {
            cfg,
            registry,
            db,
            metrics,
            running: Arc::new(AtomicBool::new(false)),
            stopping,
        }
    }

    fn schedule_next(&self, ctx: &mut Context<Self>) {
        let Some(next) = self.cfg.schedule.upcoming(chrono::Utc).next() else {
            tracing::warn!("ORDER_SWEEP_CRON has no future run; the sweeper is idle");
            return;
        };
        let delay = (next - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        ctx.run_later(delay, |act, ctx| {
            act.tick(ctx);
            act.schedule_next(ctx);
        });
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.running.load(Ordering::Relaxed) {
            tracing::info!("previous sweep still running; skipping this tick");
            self.metrics.sweeper_run("skipped_overlap");
            return;
        }
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        self.running.store(true, Ordering::Relaxed);
        let job = run_once(
            self.cfg.clone(),
            self.registry.clone(),
            self.db.clone(),
            self.metrics.clone(),
            self.stopping.clone(),
        );
        let running = self.running.clone();
        ctx.spawn(
            job.into_actor(self)
                .map(move |_, _, _| running.store(false, Ordering::Relaxed)),
        );
    }
}

impl Actor for SweeperActor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(holder = %self.cfg.holder, "sweeper started");
        self.schedule_next(ctx);
    }
}

/// Stops sweeping and gives the lease back so another instance can take over at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for SweeperActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> Self::Result {
        self.stopping.store(true, Ordering::Relaxed);
        let running = self.running.clone();
        let db = self.db.clone();
        let holder = self.cfg.holder.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            // The run in progress notices `stopping` after its current orders.
            while running.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Err(e) = leases::release(&db, LEASE_NAME, &holder).await {
                tracing::warn!(error = %e, "could not release the sweeper lease");
            }
            metrics.sweeper_lease_held.set(0);
        })
    }
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

/// One sweep. Public so tests and the bench can drive it directly.
pub async fn run_once(
    cfg: SweepConfig,
    registry: OrderRegistry,
    db: DbPool,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
) -> Option<SweepReport> {
    match hold_lease(&cfg, &db).await {
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
    // lost lease means another instance took over, and this run stops after its current orders.
    let lost = Arc::new(AtomicBool::new(false));
    let renew = {
        let (cfg, db, metrics, lost) = (cfg.clone(), db.clone(), metrics.clone(), lost.clone());
        async move {
            loop {
                tokio::time::sleep(cfg.lease / 3).await;
                if !matches!(hold_lease(&cfg, &db).await, Ok(true)) {
                    tracing::warn!("sweeper lease lost mid-run; stopping");
                    metrics.sweeper_lease_held.set(0);
                    lost.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    };
    let halted = {
        let (stopping, lost) = (stopping.clone(), lost.clone());
        move || stopping.load(Ordering::Relaxed) || lost.load(Ordering::Relaxed)
    };
    let work = sweep_batches(&cfg, &registry, &db, &halted);
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
    halted: &(dyn Fn() -> bool + Sync),
) -> (SweepReport, bool) {
    let mut report = SweepReport::default();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..MAX_BATCHES {
        if halted() {
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
                if halted() {
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
    (report, !halted())
}
