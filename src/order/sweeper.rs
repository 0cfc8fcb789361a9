//! The timeout sweeper. On ORDER_SWEEP_CRON it sends Check to the actor of every unpaid order
//! past its expiry, provided this instance holds the `sweeper` lease (ShedLock-style, so one
//! instance sweeps at a time across every instance on the database, Galera cluster included).
//! Runs never overlap.
//!
//! The lease is kept by a task of its own for as long as the sweeper runs, not only during a
//! run: it takes the lease when it is free and renews it every third of its length
//! (`ORDER_SWEEP_LEASE_SECONDS`). While it holds the lease it hands the runs a token; the
//! moment a renewal fails or does not answer within that third, the token is cancelled and a run
//! in progress stops after its current orders, so sweeping stops well before the lease could
//! have passed to another instance. Another instance's keeper asks for it every second (or
//! every third of the lease, when shorter), so after a crash the lease moves on within one lease
//! length and a second. (A restarted instance on the same
//! host and listener is the same holder, see `startup::instance_holder`, and takes it again at
//! once.)
//!
//! It is one task, stopped through a cancellation token: at shutdown the token is cancelled,
//! the run in progress stops after its current orders, the task gives the lease back (so that
//! another instance can take over at once) and ends, and whoever stopped it awaits its handle.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
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
    if cfg.schedule.upcoming(chrono::Utc).next().is_none() {
        // No run to make, so no lease to hold.
        tracing::warn!("ORDER_SWEEP_CRON has no future run; the sweeper is idle");
        cancel.cancelled().await;
        return;
    }
    let (tenure_tx, tenure) = watch::channel(Lease::Theirs);
    let keeper = keep_lease(&cfg, &db, &metrics, &cancel, tenure_tx);
    let schedule = async {
        loop {
            let Some(next) = cfg.schedule.upcoming(chrono::Utc).next() else {
                tracing::warn!("ORDER_SWEEP_CRON has no future run; the sweeper is idle");
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
            let held = tenure.borrow().clone();
            run_once(&cfg, &registry, &db, &metrics, held).await;
            // The ticks that fell inside this run are skipped, not run late.
            let now = chrono::Utc::now();
            for _ in cfg.schedule.after(&started).take_while(|t| *t <= now) {
                tracing::info!("previous sweep still running; skipping this tick");
                metrics.sweeper_run("skipped_overlap");
            }
        }
    };
    // Both end once `cancel` is cancelled, the schedule after its run in progress.
    futures_util::future::join(keeper, schedule).await;
    if let Err(e) = leases::release(&db, LEASE_NAME, &cfg.holder).await {
        tracing::warn!(error = %e, "could not release the sweeper lease");
    }
    metrics.sweeper_lease_held.set(0);
}

/// Where the lease is, as the keeper last found it.
#[derive(Clone, Debug)]
pub enum Lease {
    /// This instance holds it; the token is cancelled the moment that is no longer sure.
    Ours(CancellationToken),
    /// Another instance holds it.
    Theirs,
    /// The database did not say (an error, or no answer in time): not ours, to be safe.
    Unknown,
}

/// Takes or renews the lease; an error or no answer within a third of the lease counts as not
/// holding it (we cannot know that we still do).
async fn hold_lease(cfg: &SweepConfig, db: &DbPool) -> Option<bool> {
    let now = now_ms();
    let attempt = leases::try_acquire(
        db,
        LEASE_NAME,
        &cfg.holder,
        now,
        now + cfg.lease.as_millis() as i64,
    );
    match tokio::time::timeout(cfg.lease / 3, attempt).await {
        Ok(Ok(held)) => Some(held),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "sweeper could not take or renew its lease");
            None
        }
        Err(_) => {
            tracing::warn!(
                "sweeper lease: the database did not answer within a third of the lease"
            );
            None
        }
    }
}

/// Keeps the lease until `cancel`: every third of the lease, takes it (when free or expired) or
/// renews it (when ours). `tenure` is [`Lease::Ours`] while the lease is ours; its token is
/// cancelled as soon as an attempt fails.
async fn keep_lease(
    cfg: &SweepConfig,
    db: &DbPool,
    metrics: &Metrics,
    cancel: &CancellationToken,
    tenure: watch::Sender<Lease>,
) {
    loop {
        let found = hold_lease(cfg, db).await;
        let ours = matches!(*tenure.borrow(), Lease::Ours(_));
        match (found, ours) {
            (Some(true), true) => {}
            (Some(true), false) => {
                tracing::info!(holder = %cfg.holder, "sweeper lease taken");
                metrics.sweeper_lease_held.set(1);
                tenure.send_replace(Lease::Ours(cancel.child_token()));
            }
            (found, _) => {
                if ours {
                    tracing::warn!("sweeper lease lost; sweeping stops");
                }
                metrics.sweeper_lease_held.set(0);
                let now = if found.is_some() {
                    Lease::Theirs
                } else {
                    Lease::Unknown
                };
                if let Lease::Ours(t) = tenure.send_replace(now) {
                    t.cancel();
                }
            }
        }
        // Renewed every third of the lease; while another instance holds it, asked for at least
        // every second, so that a dead holder's lease moves on within about a second of expiring.
        let pause = match *tenure.borrow() {
            Lease::Ours(_) => cfg.lease / 3,
            Lease::Theirs | Lease::Unknown => (cfg.lease / 3).min(Duration::from_secs(1)),
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One sweep, when `lease` is ours; it stops after its current orders once the lease's token
/// is cancelled (the lease was lost, or the sweeper is stopping).
pub async fn run_once(
    cfg: &SweepConfig,
    registry: &OrderRegistry,
    db: &DbPool,
    metrics: &Metrics,
    lease: Lease,
) -> Option<SweepReport> {
    let halt = match lease {
        Lease::Ours(t) if !t.is_cancelled() => t,
        Lease::Ours(_) | Lease::Theirs => {
            metrics.sweeper_run("not_leader");
            tracing::debug!("another instance holds the sweeper lease");
            return None;
        }
        Lease::Unknown => {
            metrics.sweeper_run("error");
            tracing::warn!("not sweeping: the sweeper lease could not be checked");
            return None;
        }
    };
    let (report, completed) = sweep_batches(cfg, registry, db, &halt).await;
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
